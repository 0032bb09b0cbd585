/* The scheduler thread loops: under the lock it drops cancelled jobs, picks the jobs that can run and plans
 * the step (sched_plan); without the lock it runs the step (the picked jobs' sessions are its own until they
 * are done); under the lock again it publishes tokens, marks finished jobs done and wakes their connections.
 * Only the scheduler thread touches a queued job's session, so the lock guards the queue and the counters,
 * never compute. */
#include "cloud/sched.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/err.h"

#define HEAD_ROWS 32 /* rows per duet_head call (its logits: HEAD_ROWS x vocab floats) */
#define WAIT_SLICE_MS 100

typedef struct head_row {
    sched_job *j;
    uint32_t pos;
    int idx; /* TOKENS: result index */
} head_row;

struct sched {
    const duet_model *m;
    sched_opts o;
    duet_ctx *ctx;
    int dim, vocab;
    float *h;    /* [step_rows][dim] the step's rows, grouped by layer range */
    float *hh;   /* [HEAD_ROWS][dim] rows for the head */
    float *lg;   /* [HEAD_ROWS][vocab] their logits (NULL when the model holds no head) */
    pthread_t thread;
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t work;    /* the scheduler waits on it: new job, cancel, outbox room, unpause, quit */
    pthread_cond_t done_cv; /* connections wait on it: a step ended, a job was released */
    int quit, paused;
    sched_job *first, **last; /* queued jobs in submission order */
    int n_jobs, queued;
    uint64_t seq, step;
    sched_stats st;
    /* per-step scratch, [cap] jobs (grown when more are queued; at most a few times) */
    int cap;
    sched_job **pick;
    int *rows, *give, *made;
    uint64_t *served, *seqs;
    duet_seg *seg;
    int *grp;
    head_row *hq;
    int hq_cap;
};

/* ---- the plan ---- */

/* The unpicked job of class `multi` (more than one position pending) that was served least recently, oldest on
 * ties; -1 if none. */
static int next_job(int n, const int *rows, const uint64_t *served, const uint64_t *seq, const int *taken, int multi) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (taken[i] || (rows[i] > 1) != multi || rows[i] == 0) continue;
        if (best < 0 || served[i] < served[best] || (served[i] == served[best] && seq[i] < seq[best])) best = i;
    }
    return best;
}

int sched_plan(int n, const int *rows, const uint64_t *served, const uint64_t *seq, int step_rows, int piece,
               int *give) {
    int prefill = 0, left = step_rows;
    for (int i = 0; i < n; i++) {
        give[i] = 0;
        prefill |= rows[i] > 1;
    }
    int room = piece < step_rows / 2 ? piece : step_rows / 2;
    int keep = prefill ? (room < 1 ? 1 : room) : 0; /* kept for a prefill piece while single rows are placed */
    /* give[] doubles as "taken": a job is taken once it has rows */
    for (int i; left - keep > 0 && (i = next_job(n, rows, served, seq, give, 0)) >= 0; left--) give[i] = 1;
    for (int i; left > 0 && (i = next_job(n, rows, served, seq, give, 1)) >= 0; left -= give[i]) {
        int g = rows[i] < piece ? rows[i] : piece;
        give[i] = g < left ? g : left;
    }
    return step_rows - left;
}

/* ---- locked helpers ---- */

static void deadline_in(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += (long)ms * 1000000L;
    ts->tv_sec += ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

static void release(sched *q, sched_job *j) {
    for (sched_job **pp = &q->first; *pp; pp = &(*pp)->link)
        if (*pp == j) {
            *pp = j->link;
            if (q->last == &j->link) q->last = pp;
            break;
        }
    j->link = NULL;
    j->done = 1;
    q->n_jobs--;
    q->st.jobs_done++;
}

static void recount(sched *q) {
    q->queued = 0;
    for (sched_job *j = q->first; j; j = j->link) q->queued += session_pending(j->s);
}

/* Drops the cancelled jobs (all jobs with rc when `all`): 1 if any. */
static int release_cancelled(sched *q, int all, int rc) {
    int any = 0;
    for (sched_job *j = q->first, *nx; j; j = nx) {
        nx = j->link;
        if (!all && !j->cancel) continue;
        if (all && !j->rc) {
            j->rc = rc;
            snprintf(j->err, sizeof j->err, "the cloud server is stopping");
        }
        release(q, j);
        any = 1;
    }
    if (any) {
        recount(q);
        pthread_cond_broadcast(&q->done_cv);
    }
    return any;
}

static int can_run(const sched_job *j) {
    return !j->cancel && (j->kind != SCHED_STREAM || j->made - j->taken < SCHED_OUTBOX);
}

static int grow(sched *q, int n) {
    if (n <= q->cap) return 0;
    int cap = n < 2 * q->cap ? 2 * q->cap : n;
    void *p[9] = {realloc(q->pick, sizeof(void *) * cap), realloc(q->rows, sizeof(int) * cap),
                  realloc(q->give, sizeof(int) * cap), realloc(q->made, sizeof(int) * cap),
                  realloc(q->served, sizeof(uint64_t) * cap), realloc(q->seqs, sizeof(uint64_t) * cap),
                  realloc(q->seg, sizeof(duet_seg) * cap), realloc(q->grp, sizeof(int) * cap), NULL};
    /* whatever moved is kept, so a failure leaves every array valid at the old size */
    if (p[0]) q->pick = p[0];
    if (p[1]) q->rows = p[1];
    if (p[2]) q->give = p[2];
    if (p[3]) q->made = p[3];
    if (p[4]) q->served = p[4];
    if (p[5]) q->seqs = p[5];
    if (p[6]) q->seg = p[6];
    if (p[7]) q->grp = p[7];
    for (int i = 0; i < 8; i++)
        if (!p[i]) return -1;
    q->cap = cap;
    return 0;
}

/* ---- a step (unlocked: the picked jobs' sessions are the scheduler's) ---- */

static void job_fail(sched_job *j, int rc, const char *what, const char *e) {
    if (j->rc) return;
    j->rc = rc;
    snprintf(j->err, sizeof j->err, "%.40s%.200s", what, e);
}

/* Runs the planned positions: one duet_forward_multi per layer range. */
static void run_rows(sched *q, int n) {
    char e[256];
    for (int i = 0; i < n; i++) q->grp[i] = q->give[i] > 0 ? 0 : -1; /* -1: nothing to run */
    for (int i = 0; i < n; i++) {
        if (q->grp[i] != 0) continue;
        int a, b, ns = 0, rows = 0;
        session_span(q->pick[i]->s, &a, &b);
        int *members = q->rows; /* reused: the plan is made */
        for (int k = i; k < n; k++) {
            int ka, kb;
            if (q->grp[k] != 0) continue;
            session_span(q->pick[k]->s, &ka, &kb);
            if (ka != a || kb != b) continue;
            q->grp[k] = 1;
            int rc = session_piece_in(q->pick[k]->s, q->ctx, q->give[k], q->h + (size_t)rows * q->dim, &q->seg[ns], e,
                                      sizeof e);
            if (rc) {
                job_fail(q->pick[k], rc, "", e);
                continue;
            }
            members[ns++] = k;
            rows += q->give[k];
        }
        int rc = duet_forward_multi(q->ctx, a, b, q->h, q->seg, ns, e, sizeof e);
        for (int s = 0, off = 0; s < ns; off += q->give[members[s++]]) {
            sched_job *j = q->pick[members[s]];
            if (rc) job_fail(j, FRAME_E_INTERNAL, "session: ", e);
            else session_piece_out(j->s, q->give[members[s]], q->h + (size_t)off * q->dim, 0);
        }
    }
}

static int queue_head(sched *q, int *nh, sched_job *j, uint32_t pos, int idx) {
    if (*nh == q->hq_cap) {
        int cap = q->hq_cap ? 2 * q->hq_cap : 64;
        head_row *hq = realloc(q->hq, sizeof(head_row) * cap);
        if (!hq) return -1;
        q->hq = hq;
        q->hq_cap = cap;
    }
    q->hq[(*nh)++] = (head_row){j, pos, idx};
    return 0;
}

/* One token of a stream: into the outbox slot that sched_take reads once made counts it, then fed back. */
static void stream_token(sched *q, sched_job *j, int32_t id, float conf, float logit, int k) {
    uint32_t slot = (j->made + (uint32_t)q->made[k]) % SCHED_OUTBOX;
    j->box_id[slot] = id;
    j->box_conf[slot] = conf;
    j->box_logit[slot] = logit;
    q->made[k]++;
    char e[256];
    int rc = session_push_tokens(j->s, j->next, &id, 1, e, sizeof e);
    if (rc) job_fail(j, rc, "", e);
    j->next++;
}

/* Head and sampler for every picked job whose positions have all run: TOKENS' positions, a stream's last. */
static int run_heads(sched *q, int n) {
    int nh = 0;
    char e[256];
    for (int k = 0; k < n; k++) {
        sched_job *j = q->pick[k];
        q->made[k] = 0;
        if (j->rc || session_pending(j->s) > 0) continue;
        if (j->kind == SCHED_TOKENS) {
            for (uint32_t i = 0; i < j->count && !j->rc; i++)
                if (queue_head(q, &nh, j, j->pos + i, (int)i)) job_fail(j, FRAME_E_INTERNAL, "out of memory", "");
        } else if (j->kind == SCHED_STREAM && queue_head(q, &nh, j, j->next - 1, k))
            job_fail(j, FRAME_E_INTERNAL, "out of memory", "");
    }
    for (int h0 = 0; h0 < nh; h0 += HEAD_ROWS) {
        int nb = nh - h0 < HEAD_ROWS ? nh - h0 : HEAD_ROWS, ok[HEAD_ROWS];
        for (int r = 0; r < nb; r++) {
            head_row *x = &q->hq[h0 + r];
            const float *row;
            int rc = x->j->rc ? x->j->rc : session_head_row(x->j->s, x->pos, &row, e, sizeof e);
            if (rc) job_fail(x->j, rc, x->j->kind == SCHED_TOKENS ? "TOKENS: " : "", e);
            else memcpy(q->hh + (size_t)r * q->dim, row, sizeof(float) * q->dim);
            ok[r] = !rc;
        }
        if (!q->lg || duet_head(q->ctx, q->hh, nb, q->lg, e, sizeof e)) {
            for (int r = 0; r < nb; r++) job_fail(q->hq[h0 + r].j, FRAME_E_INTERNAL, "session: ", q->lg ? e : "no head");
            continue;
        }
        for (int r = 0; r < nb; r++) {
            head_row *x = &q->hq[h0 + r];
            sched_job *j = x->j;
            if (!ok[r] || j->rc) continue;
            float conf = 0, logit = 0, *lg = q->lg + (size_t)r * q->vocab;
            int32_t id = session_sample(j->s, lg, j->conf ? &conf : NULL, j->logit ? &logit : NULL);
            if (j->kind == SCHED_STREAM) {
                stream_token(q, j, id, conf, logit, x->idx);
                continue;
            }
            j->ids[x->idx] = id;
            if (j->conf) j->confs[x->idx] = conf;
            if (j->logit) j->logits[x->idx] = logit;
        }
    }
    return nh;
}

/* Whether job k of the step is finished (its outbox counts already include this step's token). */
static int finished(sched *q, int k) {
    sched_job *j = q->pick[k];
    if (j->rc || j->cancel) return 1;
    if (j->kind != SCHED_STREAM) return session_pending(j->s) == 0;
    if (!q->made[k]) return 0; /* (its token is fed back: one position is pending again) */
    int32_t last = j->box_id[(j->made - 1) % SCHED_OUTBOX];
    return last == j->eos || j->made >= j->count || j->next >= (uint32_t)j->n_ctx;
}

static void *sched_main(void *arg) {
    sched *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        release_cancelled(q, 0, 0);
        if (q->quit) break;
        int n = 0;
        if (!q->paused && grow(q, q->n_jobs) == 0)
            for (sched_job *j = q->first; j; j = j->link) {
                if (!can_run(j)) continue;
                q->pick[n] = j;
                q->rows[n] = session_pending(j->s);
                q->served[n] = j->served;
                q->seqs[n] = j->seq;
                n++;
            }
        if (n == 0) {
            struct timespec ts;
            deadline_in(&ts, WAIT_SLICE_MS);
            pthread_cond_timedwait(&q->work, &q->mu, &ts);
            continue;
        }
        int rows = sched_plan(n, q->rows, q->served, q->seqs, q->o.step_rows, q->o.piece, q->give);
        uint64_t step = ++q->step;
        pthread_mutex_unlock(&q->mu);

        double t0 = clock_now_ms();
        run_rows(q, n);
        int heads = run_heads(q, n);
        double ms = clock_now_ms() - t0;
        for (int k = 0; k < n; k++) { /* the step's time, shared by the positions each job ran (or its head) */
            int share = q->give[k] ? q->give[k] : q->made[k];
            if (share && rows + heads) session_add_ms(q->pick[k]->s, ms * share / (rows ? rows : heads));
        }

        pthread_mutex_lock(&q->mu);
        int jobs = 0;
        for (int k = 0; k < n; k++) {
            sched_job *j = q->pick[k];
            if (q->give[k]) j->served = step, jobs++;
            if (q->give[k] || session_pending(j->s) == 0) j->busy_ms += ms; /* it ran, or had its head */
            j->made += (uint32_t)q->made[k];
            if (finished(q, k)) release(q, j);
        }
        if (rows || heads) {
            q->st.steps++;
            q->st.rows += (uint64_t)rows;
            if (rows > q->st.step_rows_max) q->st.step_rows_max = rows;
            if (jobs > q->st.step_jobs_max) q->st.step_jobs_max = jobs;
        }
        recount(q);
        pthread_cond_broadcast(&q->done_cv);
    }
    release_cancelled(q, 1, FRAME_E_SHUTDOWN);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* ---- public ---- */

sched *sched_init(const duet_model *m, duet_pool *pool, const sched_opts *o, char *err, size_t errlen) {
    sched *q = calloc(1, sizeof *q);
    if (!q) {
        err_set(err, errlen, DUET_ENOMEM, "scheduler: out of memory");
        return NULL;
    }
    const duet_config *c = duet_model_config(m);
    q->m = m;
    q->o = *o;
    if (q->o.step_rows < 2) q->o.step_rows = 2;
    if (q->o.piece < 1) q->o.piece = 1;
    if (q->o.max_queued < 1) q->o.max_queued = 1;
    q->dim = c->dim;
    q->vocab = c->vocab_size;
    q->last = &q->first;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->work, NULL);
    pthread_cond_init(&q->done_cv, NULL);
    int head = duet_model_part(m)->head;
    if (!(q->ctx = duet_ctx_init(m, q->o.step_rows, pool, err, errlen))) goto fail;
    q->h = malloc(sizeof(float) * (size_t)q->o.step_rows * q->dim);
    q->hh = malloc(sizeof(float) * HEAD_ROWS * (size_t)q->dim);
    q->lg = head ? malloc(sizeof(float) * HEAD_ROWS * (size_t)q->vocab) : NULL;
    if (!q->h || !q->hh || (head && !q->lg) || grow(q, 64)) {
        err_set(err, errlen, DUET_ENOMEM, "scheduler: out of memory for a step of %d positions", q->o.step_rows);
        goto fail;
    }
    if (pthread_create(&q->thread, NULL, sched_main, q)) {
        err_set(err, errlen, DUET_ERR, "scheduler: cannot start its thread");
        goto fail;
    }
    return q;
fail:
    q->quit = 1;
    sched_free(q);
    return NULL;
}

void sched_free(sched *q) {
    if (!q) return;
    pthread_mutex_lock(&q->mu);
    int running = !q->quit;
    q->quit = 1;
    pthread_cond_signal(&q->work);
    pthread_mutex_unlock(&q->mu);
    if (running) pthread_join(q->thread, NULL);
    duet_ctx_free(q->ctx);
    free(q->h);
    free(q->hh);
    free(q->lg);
    free(q->pick);
    free(q->rows);
    free(q->give);
    free(q->made);
    free(q->served);
    free(q->seqs);
    free(q->seg);
    free(q->grp);
    free(q->hq);
    pthread_cond_destroy(&q->work);
    pthread_cond_destroy(&q->done_cv);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

int sched_submit(sched *q, sched_job *j, const atomic_int *stop) {
    int rows = session_pending(j->s), waited = 0;
    j->made = j->taken = 0;
    j->done = j->cancel = j->rc = 0;
    j->busy_ms = 0;
    j->err[0] = 0;
    j->link = NULL;
    pthread_mutex_lock(&q->mu);
    while (q->queued > 0 && q->queued + rows > q->o.max_queued) {
        if ((stop && atomic_load(stop)) || q->quit) {
            q->st.waiting -= waited;
            pthread_mutex_unlock(&q->mu);
            return 1;
        }
        if (!waited) q->st.waiting++;
        waited = 1;
        struct timespec ts;
        deadline_in(&ts, WAIT_SLICE_MS);
        pthread_cond_timedwait(&q->done_cv, &q->mu, &ts);
    }
    q->st.backpressure += (uint64_t)waited;
    q->st.waiting -= waited;
    j->seq = ++q->seq;
    j->served = q->step; /* behind every job already waiting */
    *q->last = j;
    q->last = &j->link;
    q->n_jobs++;
    q->queued += rows;
    pthread_cond_signal(&q->work);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

void sched_wait(sched *q, sched_job *j, int ms) {
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&q->mu);
    while (!j->done && j->made == j->taken)
        if (pthread_cond_timedwait(&q->done_cv, &q->mu, &ts)) break;
    pthread_mutex_unlock(&q->mu);
}

int sched_take(sched *q, sched_job *j, int32_t *ids, float *conf, float *logit, int cap, uint32_t *first, int *done) {
    pthread_mutex_lock(&q->mu);
    int k = (int)(j->made - j->taken) < cap ? (int)(j->made - j->taken) : cap;
    *first = j->taken;
    for (int i = 0; i < k; i++) {
        uint32_t slot = (j->taken + (uint32_t)i) % SCHED_OUTBOX;
        ids[i] = j->box_id[slot];
        conf[i] = j->box_conf[slot];
        logit[i] = j->box_logit[slot];
    }
    if (k && j->made - j->taken >= SCHED_OUTBOX) pthread_cond_signal(&q->work); /* room again */
    j->taken += (uint32_t)k;
    *done = j->done && j->taken == j->made;
    pthread_mutex_unlock(&q->mu);
    return k;
}

void sched_cancel(sched *q, sched_job *j) {
    pthread_mutex_lock(&q->mu);
    if (!j->done) {
        j->cancel = 1;
        pthread_cond_signal(&q->work);
        while (!j->done) pthread_cond_wait(&q->done_cv, &q->mu);
    }
    pthread_mutex_unlock(&q->mu);
}

bool sched_full(sched *q) {
    pthread_mutex_lock(&q->mu);
    bool full = q->queued >= q->o.max_queued;
    pthread_mutex_unlock(&q->mu);
    return full;
}

void sched_stats_get(sched *q, sched_stats *out) {
    pthread_mutex_lock(&q->mu);
    *out = q->st;
    out->queued_jobs = q->n_jobs;
    out->queued_positions = q->queued;
    pthread_mutex_unlock(&q->mu);
}

void sched_pause(sched *q, bool paused) {
    pthread_mutex_lock(&q->mu);
    q->paused = paused;
    pthread_cond_signal(&q->work);
    pthread_mutex_unlock(&q->mu);
}
