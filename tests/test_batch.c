/* The cloud's scheduler (issue 10): devices of every mode at once, each device's answers digested (token ids,
 * confidences and top logits, hidden rows: every bit) and compared with the same script run alone against a
 * cloud without batching; the step counter shows that sessions waiting together are served together. */
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/hash.h"
#include "cloud/sched.h"
#include "cloud/server.h"
#include "duet.h"
#include "net/transport.h"
#include "test.h"

#define MODEL "models/stories260K.gguf"
#define WAIT_MS 10000 /* the longest a device waits for one answer (tsan on a shared machine is slow) */

/* ---- the planner alone ---- */

static int plan(int n, const int *rows, const uint64_t *served, int step_rows, int piece, int *give) {
    uint64_t seq[64];
    for (int i = 0; i < n; i++) seq[i] = (uint64_t)i;
    return sched_plan(n, rows, served, seq, step_rows, piece, give);
}

TEST(test_batch_plan_pieces_and_room) {
    int give[8];
    /* a 1000-position prompt beside three streams: the streams get their row, the prompt one piece */
    int rows[] = {1000, 1, 1, 1};
    uint64_t served[] = {0, 0, 0, 0};
    CHECK_EQ_INT(plan(4, rows, served, 64, 32, give), 35);
    CHECK(give[0] == 32 && give[1] == 1 && give[2] == 1 && give[3] == 1);
    /* a small step: single rows leave room for one piece of min(piece, step/2) */
    CHECK_EQ_INT(plan(4, rows, served, 4, 32, give), 4);
    CHECK(give[0] == 2 && give[1] + give[2] + give[3] == 2);
    /* two prompts: the least recently served gets its piece first */
    int two[] = {100, 100};
    uint64_t s2[] = {5, 3};
    CHECK_EQ_INT(plan(2, two, s2, 40, 32, give), 40);
    CHECK(give[1] == 32 && give[0] == 8);
    /* nothing pending: nothing given (a head-only job), and a prompt shorter than a piece runs whole */
    int some[] = {0, 7};
    CHECK_EQ_INT(plan(2, some, served, 64, 32, give), 7);
    CHECK(give[0] == 0 && give[1] == 7);
}

TEST(test_batch_plan_round_robin_no_starvation) {
    enum { N = 40, STEP = 8 };
    int rows[N], give[N], runs[N] = {0};
    uint64_t served[N];
    for (int i = 0; i < N; i++) rows[i] = 1, served[i] = 0;
    rows[7] = 50; /* and one prompt among 39 streams */
    for (uint64_t step = 1; step <= 10; step++) {
        CHECK(plan(N, rows, served, STEP, 16, give) <= STEP);
        for (int i = 0; i < N; i++)
            if (give[i]) {
                served[i] = step, runs[i]++;
                if (rows[i] > 1) rows[i] -= give[i] < rows[i] - 1 ? give[i] : rows[i] - 1;
            }
    }
    /* 10 steps of 8 rows, 4 kept for the prompt: 40 single rows, each of the 39 streams ran at least once */
    for (int i = 0; i < N; i++) CHECK_MSG(runs[i] >= 1, "job %d never ran", i);
    CHECK_MSG(runs[7] == 10, "the prompt ran in %d of 10 steps", runs[7]);
}

/* ---- devices ---- */

enum { K_CLOUD, K_PD, K_SPLIT, K_EE, K_HAT, K_KINDS };
enum { B_GOOD, B_VANISH, B_GARBAGE };

typedef struct dev {
    int i, kind, behave, rounds; /* rounds: 0 = the first request only */
    int port, L, dim, vocab;
    uint64_t fingerprint;
    pthread_t thread;
    atomic_int opened, *gate; /* gate not NULL: after OPEN, wait until it is set */
    int ok;
    uint64_t digest;
    int answers;
    char err[256];
} dev;

static void fill(float *x, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

static int d_send(dev *d, transport *t, frame_msg *m) {
    return transport_send(t, m, d->err, sizeof d->err);
}

static int d_request(dev *d, transport *t, uint32_t sid, int want, uint32_t pos, uint32_t count, uint32_t keep) {
    frame_msg m = {.type = FRAME_REQUEST, .session = sid};
    m.u.request = (frame_request){.pos = pos, .count = count, .kv_keep = keep, .want = (uint8_t)want,
                                  .enc = want == FRAME_WANT_HIDDEN ? FRAME_ENC_F32 : 0,
                                  .fields = want == FRAME_WANT_HIDDEN ? 0 : FRAME_TOK_CONF | FRAME_TOK_LOGIT};
    return d_send(d, t, &m);
}

/* Reads one answer (TOKENS or HIDDEN) into the digest: the number of tokens or rows, or -1. */
static int d_answer(dev *d, transport *t, hash64 *h) {
    frame_msg m;
    int rc = transport_recv(t, &m, WAIT_MS, d->err, sizeof d->err);
    if (rc) return -1;
    if (m.type == FRAME_HIDDEN) {
        float x[64 * 64];
        if (m.u.rows.n * m.u.rows.dim > 64 * 64) return snprintf(d->err, sizeof d->err, "too many rows"), -1;
        frame_rows_get(&m.u.rows, x);
        hash64_update(h, &m.u.rows.pos0, sizeof m.u.rows.pos0);
        hash64_update(h, x, sizeof(float) * m.u.rows.n * m.u.rows.dim);
        return (int)m.u.rows.n;
    }
    if (m.type != FRAME_TOKENS) return snprintf(d->err, sizeof d->err, "got %s", frame_type_name(m.type)), -1;
    int32_t ids[64];
    float conf[64], logit[64];
    uint32_t n = m.u.tokens.n;
    if (n > 64) return snprintf(d->err, sizeof d->err, "%u tokens", n), -1;
    frame_tokens_get(&m.u.tokens, ids, conf, logit);
    hash64_update(h, &m.u.tokens.pos0, sizeof m.u.tokens.pos0);
    hash64_update(h, ids, sizeof(int32_t) * n);
    hash64_update(h, conf, sizeof(float) * n);
    hash64_update(h, logit, sizeof(float) * n);
    return (int)n;
}

/* A stream: TOKENS frames until the n = 0 marker; the tokens' count or -1. */
static int d_stream(dev *d, transport *t, hash64 *h) {
    int got = 0, n;
    while ((n = d_answer(d, t, h)) > 0) got += n;
    return n < 0 ? -1 : got;
}

static int d_upload(dev *d, transport *t, uint32_t sid, uint32_t pos0, uint32_t n, unsigned seed) {
    float x[40 * 64];
    if (n * (uint32_t)d->dim > sizeof x / sizeof *x) return -1;
    fill(x, (size_t)n * d->dim, seed);
    frame_msg m = {.type = FRAME_UPLOAD, .session = sid};
    m.u.rows = (frame_rows){.pos0 = pos0, .n = n, .dim = (uint32_t)d->dim, .enc = FRAME_ENC_F32, .x = x};
    return d_send(d, t, &m);
}

static int d_prompt(dev *d, transport *t, uint32_t sid, uint32_t pos0, uint32_t n, unsigned seed) {
    int32_t ids[64];
    for (uint32_t k = 0; k < n && k < 64; k++) ids[k] = 1 + (int32_t)((seed + k * 2654435761u) % (unsigned)(d->vocab - 1));
    frame_msg m = {.type = FRAME_PROMPT, .session = sid};
    m.u.tokens = (frame_tokens){.pos0 = pos0, .n = n, .ids = ids};
    return d_send(d, t, &m);
}

/* Garbage: random bytes on a raw socket, or (odd devices) a valid session then a frame a device never sends. */
static void d_garbage(dev *d) {
    if (d->i % 2) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        struct timeval tv = {WAIT_MS / 1000, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (fd >= 0 && !connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
            uint8_t junk[200];
            for (size_t k = 0; k < sizeof junk; k++) junk[k] = (uint8_t)(k * 37 + (unsigned)d->i);
            if (send(fd, junk, sizeof junk, MSG_NOSIGNAL) > 0)
                while (recv(fd, junk, sizeof junk, 0) > 0) {
                }
        }
        if (fd >= 0) close(fd);
    }
}

static void *dev_main(void *arg) {
    dev *d = arg;
    hash64 h;
    hash64_init(&h, 1);
    if (d->behave == B_GARBAGE && d->i % 2) {
        d_garbage(d);
        d->ok = 1;
        return NULL;
    }
    transport_opts o = transport_opts_default(LINK_UP);
    o.io_timeout_ms = WAIT_MS;
    transport *t = transport_connect("127.0.0.1", d->port, &o, d->err, sizeof d->err);
    if (!t) return NULL;
    int k = d->kind, tokens_in = k == K_CLOUD || k == K_PD;
    uint32_t a = tokens_in ? 0 : k == K_HAT ? 1 : (uint32_t)(1 + d->i % (d->L - 1)), b = k == K_HAT ? 3 : (uint32_t)d->L;
    frame_hello hl = {.fingerprint = d->fingerprint, .dim = (uint32_t)d->dim, .layer_a = a, .layer_b = b,
                      .version = FRAME_VERSION, .encodings = FRAME_ENC_ALL,
                      .part = (uint8_t)((tokens_in ? FRAME_PART_EMBED : 0) | (k == K_HAT ? 0 : FRAME_PART_HEAD))};
    static const uint32_t modes[] = {FRAME_MODE_CLOUD, FRAME_MODE_PD, FRAME_MODE_SPLIT, FRAME_MODE_EE, FRAME_MODE_HAT};
    frame_msg m = {.type = FRAME_OPEN};
    m.u.open = (frame_open){.seed = (uint64_t)d->i + 1, .n_ctx = 256, .mode = modes[k], .temperature = k == K_PD ? 0.9f : 0,
                            .top_p = k == K_PD ? 0.95f : 1, .top_k = k == K_PD ? 40 : 0};
    if (transport_hello(t, &hl, NULL, WAIT_MS, d->err, sizeof d->err) || d_send(d, t, &m) ||
        transport_expect(t, FRAME_OPENED, &m, WAIT_MS, d->err, sizeof d->err))
        goto out;
    atomic_store(&d->opened, 1);
    for (double t0 = clock_now_ms(); d->gate && !atomic_load(d->gate) && clock_now_ms() - t0 < WAIT_MS;)
        nanosleep(&(struct timespec){0, 1000000L}, NULL);
    uint32_t sid = m.session, n = 2 + (uint32_t)(d->i * 7) % 30, pos = 0;
    unsigned seed = 1000u * (unsigned)d->i;
    if (d->behave == B_GARBAGE) { /* a HELLO_OK is not a device's message */
        m = (frame_msg){.type = FRAME_HELLO_OK};
        m.u.hello = hl;
        if (!d_send(d, t, &m) && transport_recv(t, &m, WAIT_MS, NULL, 0) == 0 && m.type == FRAME_ERROR) d->ok = 1;
        goto out;
    }
    int rc = 0;
    if (tokens_in) { /* a prompt, a stream, then a second prompt continuing at the end and a shorter stream */
        uint32_t count = d->rounds ? 4 + (uint32_t)d->i % 13 : 1;
        rc = d_prompt(d, t, sid, 0, n, seed) || d_request(d, t, sid, FRAME_WANT_STREAM, n, count, FRAME_KEEP_ALL);
        if (!rc && d->behave == B_VANISH) { /* one token, then gone without CLOSE */
            rc = d_answer(d, t, &h) < 0;
            d->ok = !rc;
            goto out;
        }
        int got = rc ? -1 : d_stream(d, t, &h);
        rc = got < 0;
        pos = n + (uint32_t)got;
        for (int r = 0; r < d->rounds && !rc; r++) {
            rc = d_prompt(d, t, sid, pos, 2, seed + 7u * (unsigned)r) ||
                 d_request(d, t, sid, FRAME_WANT_STREAM, pos + 2, 3, FRAME_KEEP_ALL) || (got = d_stream(d, t, &h)) < 0;
            pos += 2 + (uint32_t)(got < 0 ? 0 : got);
        }
    } else { /* rows, every position's answer, then one-row rounds; ee also rolls back two positions */
        int want = k == K_HAT ? FRAME_WANT_HIDDEN : FRAME_WANT_TOKENS;
        rc = d_upload(d, t, sid, 0, n, seed) || d_request(d, t, sid, want, 0, n, FRAME_KEEP_ALL);
        if (!rc && d->behave == B_VANISH) {
            d->ok = 1;
            goto out;
        }
        rc = rc || d_answer(d, t, &h) != (int)n;
        pos = n;
        for (int r = 0; r < d->rounds && !rc; r++) {
            uint32_t at = k == K_EE && r == 1 ? pos - 2 : pos, cnt = k == K_EE && r == 1 ? 3 : 1;
            rc = d_upload(d, t, sid, at, cnt, seed + 1u + (unsigned)r) ||
                 d_request(d, t, sid, want, at, cnt, FRAME_KEEP_ALL) || d_answer(d, t, &h) != (int)cnt;
            pos = at + cnt;
        }
    }
    if (!rc) {
        m = (frame_msg){.type = FRAME_CLOSE, .session = sid};
        rc = d_send(d, t, &m) || transport_expect(t, FRAME_CLOSE, &m, WAIT_MS, d->err, sizeof d->err);
    }
    d->ok = !rc;
    d->digest = hash64_final(&h);
out:
    transport_free(t);
    return NULL;
}

/* ---- fixture: a model and a cloud ---- */

typedef struct fx {
    duet_model *m;
    cloud_server *srv;
    int port, L, dim, vocab;
    uint64_t fp;
} fx;

static int fx_open(fx *f, duet_model *m, const server_opts *o) {
    char err[256];
    memset(f, 0, sizeof *f);
    f->m = m;
    server_opts so = *o;
    so.host = "127.0.0.1";
    so.port = 0;
    so.max_per_address = 200;
    if (!(f->srv = server_init(m, &so, err, sizeof err)) || server_start(f->srv, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "server: %s", err);
        server_free(f->srv);
        return -1;
    }
    const duet_config *c = duet_model_config(m);
    f->port = server_port(f->srv);
    f->L = c->n_layers;
    f->dim = c->dim;
    f->vocab = c->vocab_size;
    f->fp = duet_model_fingerprint(m);
    return 0;
}

/* The model and a cloud with opts o for a test: the model, or NULL (reported, nothing left open). */
static duet_model *fx_model(fx *f, const server_opts *o) {
    char err[256];
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    if (!m) test_fail(__FILE__, __LINE__, "%s", err);
    if (m && fx_open(f, m, o)) {
        duet_model_free(m);
        m = NULL;
    }
    return m;
}

static server_stats stats(fx *f) {
    server_stats st;
    server_stats_get(f->srv, &st);
    return st;
}

static void dev_init(dev *d, fx *f, int i, int kind, int behave, int rounds) {
    *d = (dev){.i = i, .kind = kind, .behave = behave, .rounds = rounds, .port = f->port, .L = f->L, .dim = f->dim,
               .vocab = f->vocab, .fingerprint = f->fp};
}

/* Each device's script alone, one after another, against a cloud without batching: the reference digests. */
static void references(duet_model *m, dev *ds, int n, uint64_t *ref) {
    server_opts o = server_opts_default();
    o.no_batching = 1;
    fx f;
    if (fx_open(&f, m, &o)) return;
    for (int i = 0; i < n; i++) {
        if (ds[i].behave != B_GOOD) continue;
        dev d;
        dev_init(&d, &f, ds[i].i, ds[i].kind, B_GOOD, ds[i].rounds);
        dev_main(&d);
        CHECK_MSG(d.ok, "device %d alone: %s", i, d.err);
        ref[i] = d.digest;
    }
    server_free(f.srv);
}

/* Waits (bounded) until cond holds of the server's counters. */
#define WAIT_FOR(f, st, cond)                                                                   \
    do {                                                                                        \
        double t0_ = clock_now_ms();                                                            \
        for (st = stats(f); !(cond) && clock_now_ms() - t0_ < WAIT_MS; st = stats(f))           \
            nanosleep(&(struct timespec){0, 2000000L}, NULL);                                   \
    } while (0)

static void start_all(dev *ds, int n) {
    for (int i = 0; i < n; i++)
        if (pthread_create(&ds[i].thread, NULL, dev_main, &ds[i])) test_fail(__FILE__, __LINE__, "pthread_create");
}

static void join_all(dev *ds, int n, const uint64_t *ref) {
    for (int i = 0; i < n; i++) {
        pthread_join(ds[i].thread, NULL);
        CHECK_MSG(ds[i].ok, "device %d (kind %d, behaviour %d): %s", i, ds[i].kind, ds[i].behave, ds[i].err);
        if (ref && ds[i].ok && ds[i].behave == B_GOOD)
            CHECK_MSG(ds[i].digest == ref[i], "device %d (kind %d): answers differ from the same script alone", i,
                      ds[i].kind);
    }
}

/* Runs the devices alone for the references, then all at once with their first requests held until every one
 * is queued; checks their answers and returns the cloud's counters. */
static server_stats together(fx *f, duet_model *m, dev *ds, int n, uint64_t *ref) {
    references(m, ds, n, ref);
    server_pause(f->srv, 1);
    start_all(ds, n);
    server_stats st;
    WAIT_FOR(f, st, st.queued_jobs == n);
    CHECK_EQ_INT(st.queued_jobs, n);
    server_pause(f->srv, 0);
    join_all(ds, n, ref);
    return stats(f);
}

/* ---- tests ---- */

/* 16 devices of five modes, prompts and lengths; their first requests wait together and run in one step. */
TEST(test_batch_16_sessions_bit_exact) {
    enum { N = 16 };
    dev ds[N];
    uint64_t ref[N] = {0};
    fx f;
    server_opts o = server_opts_default();
    o.threads = 2;
    duet_model *m = fx_model(&f, &o);
    if (!m) return;
    for (int i = 0; i < N; i++) dev_init(&ds[i], &f, i, i % K_KINDS, B_GOOD, 3);
    server_stats st = together(&f, m, ds, N, ref);
    CHECK_MSG(st.step_jobs_max == N, "the largest step ran %d sessions, not %d", st.step_jobs_max, N);
    CHECK(st.step_rows_max <= o.step_rows);
    server_free(f.srv);
    duet_model_free(m);
}

/* N sessions waiting at once take one forward step with batching, N without (the baseline). */
static uint64_t steps_for_waiting(duet_model *m, int no_batching, int n) {
    dev ds[8];
    fx f;
    server_opts o = server_opts_default();
    o.no_batching = no_batching;
    if (fx_open(&f, m, &o)) return 0;
    for (int i = 0; i < n; i++) dev_init(&ds[i], &f, i, K_SPLIT, B_GOOD, 0);
    server_pause(f.srv, 1);
    server_stats st;
    uint64_t s0 = stats(&f).steps;
    start_all(ds, n);
    if (!no_batching) WAIT_FOR(&f, st, st.queued_jobs == n);
    server_pause(f.srv, 0);
    join_all(ds, n, NULL);
    uint64_t steps = stats(&f).steps - s0;
    server_free(f.srv);
    return steps;
}

TEST(test_batch_waiting_sessions_take_one_step) {
    char err[256];
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    REQUIRE_MSG(m, "%s", err);
    CHECK_EQ_INT((int)steps_for_waiting(m, 0, 8), 1);
    CHECK_EQ_INT((int)steps_for_waiting(m, 1, 8), 8);
    duet_model_free(m);
}

/* A long prompt runs in pieces within the step limit, beside streams, and still gives the same bits. */
TEST(test_batch_long_prefill_in_pieces) {
    enum { N = 5 };
    dev ds[N];
    uint64_t ref[N] = {0};
    fx f;
    server_opts o = server_opts_default();
    o.step_rows = 8;
    o.piece = 3;
    duet_model *m = fx_model(&f, &o);
    if (!m) return;
    for (int i = 0; i < N; i++) dev_init(&ds[i], &f, i + 4, i % 2 ? K_CLOUD : K_SPLIT, B_GOOD, 2);
    server_stats st = together(&f, m, ds, N, ref);
    CHECK_MSG(st.step_rows_max <= 8, "a step ran %d positions, over the limit of 8", st.step_rows_max);
    CHECK(st.step_jobs_max >= 3);
    server_free(f.srv);
    duet_model_free(m);
}

/* Over max_queued: a REQUEST waits unread (backpressure) and OPEN is refused with LIMIT; both clear once the
 * queue drains, and the waiting device still gets exact answers. */
TEST(test_batch_queue_limit_backpressure) {
    char err[256];
    dev ds[2];
    uint64_t ref[2] = {0};
    fx f;
    server_opts o = server_opts_default();
    o.max_queued = 20;
    duet_model *m = fx_model(&f, &o);
    if (!m) return;
    dev_init(&ds[0], &f, 3, K_SPLIT, B_GOOD, 1);  /* 23 rows: over the limit alone, admitted to an empty queue */
    dev_init(&ds[1], &f, 15, K_CLOUD, B_GOOD, 1); /* 17 positions: must wait */
    references(m, ds, 2, ref);
    server_pause(f.srv, 1);
    atomic_int gate = 0;
    ds[1].gate = &gate; /* opens its session while the queue is empty, then waits */
    start_all(ds + 1, 1);
    for (double t0 = clock_now_ms(); !atomic_load(&ds[1].opened) && clock_now_ms() - t0 < WAIT_MS;)
        nanosleep(&(struct timespec){0, 1000000L}, NULL);
    start_all(ds, 1);
    server_stats st;
    WAIT_FOR(&f, st, st.queued_jobs == 1);
    atomic_store(&gate, 1);
    WAIT_FOR(&f, st, st.waiting == 1);
    CHECK_EQ_INT(st.waiting, 1);
    CHECK_EQ_INT(st.queued_jobs, 1);
    /* a new session now: ERROR LIMIT */
    transport_opts to = transport_opts_default(LINK_UP);
    transport *t = transport_connect("127.0.0.1", f.port, &to, err, sizeof err);
    frame_hello hl = {.fingerprint = f.fp, .dim = (uint32_t)f.dim, .layer_a = 2, .layer_b = (uint32_t)f.L,
                      .version = FRAME_VERSION, .part = FRAME_PART_HEAD, .encodings = FRAME_ENC_ALL};
    frame_msg msg = {.type = FRAME_OPEN};
    msg.u.open = (frame_open){.n_ctx = 64, .mode = FRAME_MODE_SPLIT, .top_p = 1};
    REQUIRE(t && !transport_hello(t, &hl, NULL, WAIT_MS, err, sizeof err) && !transport_send(t, &msg, NULL, 0));
    CHECK_EQ_INT(transport_expect(t, FRAME_OPENED, &msg, WAIT_MS, err, sizeof err), FRAME_E_LIMIT);
    CHECK(strstr(err, "queue is full"));
    transport_free(t);
    server_pause(f.srv, 0);
    join_all(ds, 2, ref);
    st = stats(&f);
    CHECK_EQ_INT((int)st.backpressure, 1);
    CHECK_EQ_INT(st.waiting, 0);
    server_free(f.srv);
    duet_model_free(m);
}

/* 64 devices at once: every mode, some vanishing mid-request, some sending garbage. Every well-behaved one gets
 * its exact answers, and the cloud ends with nothing held: no session, no queued work, no budgeted bytes. */
TEST(test_batch_64_devices_under_load) {
    enum { N = 64 };
    static dev ds[N];
    uint64_t ref[N] = {0};
    fx f;
    server_opts o = server_opts_default();
    o.threads = 2;
    duet_model *m = fx_model(&f, &o);
    if (!m) return;
    for (int i = 0; i < N; i++) dev_init(&ds[i], &f, i, i % K_KINDS, i % 8 == 3 ? B_VANISH : i % 8 == 6 ? B_GARBAGE : B_GOOD, 2);
    references(m, ds, N, ref);
    start_all(ds, N);
    join_all(ds, N, ref);
    server_stats st;
    WAIT_FOR(&f, st, st.sessions_open == 0 && st.queued_jobs == 0 && st.memory_used == 0);
    CHECK_EQ_INT((int)st.sessions_open, 0);
    CHECK_EQ_INT(st.queued_jobs, 0);
    CHECK_EQ_INT(st.queued_positions, 0);
    CHECK_EQ_INT((int)st.memory_used, 0);
    CHECK_MSG(st.errors >= 16, "%llu connections ended by errors, 16 misbehaved", (unsigned long long)st.errors);
    CHECK(st.step_jobs_max > 1);
    server_free(f.srv);
    duet_model_free(m);
}
