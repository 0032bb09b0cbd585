/* The cloud server: an accept loop, one thread per connection and one scheduler (sched.h). A connection is at
 * most one session; its thread owns the transport, the session (context manager, session.h) and every byte it
 * reads, except while the scheduler holds the session's job (from sched_submit until the job is done: the thread
 * then only waits, takes streamed tokens and sends). Sessions share nothing else but the read-only model, the
 * pool and the counters under mu. Every wait is sliced into SLICE_MS pieces so that server_stop, which only sets
 * a flag, is seen promptly; a connection that ends with a job queued cancels it before freeing the session. */
#include "cloud/server.h"

#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/err.h"
#include "base/sha256.h"
#include "cloud/sched.h"
#include "cloud/session.h"
#include "net/transport.h"

#define SLICE_MS 100        /* longest a thread waits before looking at the stop flag */
#define CONN_SLACK 16       /* connections allowed beyond max_sessions (still handshaking, or about to be refused) */
#define ERROR_FLUSH_MS 1000 /* how long a failing connection waits for its ERROR frame to leave (plus the link's) */
#define STOP_FLUSH_MS 300   /* the same while the server is stopping: a stop takes at most about 1 s */
#define SERVE_STOP 200      /* recv_sliced: the server is stopping */

typedef struct conn {
    cloud_server *srv;
    transport *t;
    int id;
    char addr[64];   /* the peer's address without its port (per-address cap) */
    double t_accept;
    pthread_t thread;
    atomic_int done; /* the thread has finished and may be joined */
    struct conn *next;
} conn;

struct cloud_server {
    duet_model *m;
    server_opts o;
    uint64_t fingerprint;
    int eos;                   /* the tokenizer's end of sequence, -1 without one: ends a stream */
    duet_pool *pool;
    transport_listener *l;
    atomic_int stop;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;        /* guards the fields below */
    conn *conns;
    int n_conns, next_conn;
    int active;                /* connection threads still serving */
    uint32_t next_session;
    server_stats st;
    transport_budget budget;   /* shared by every connection */
    sched *q;                  /* NULL without batching */
    atomic_ullong solo_steps;  /* forward passes of connections running their own (no batching) */
};

/* One connection's state, on its thread's stack. */
typedef struct serve {
    cloud_server *srv;
    transport *t;
    double t_accept;
    size_t charged;            /* budget bytes held for the session's pending input */
    frame_hello want;          /* what the device asked this side to hold (valid once hello is set) */
    int hello;
    session *s;
    uint32_t sid;
    uint32_t mode;
    int counted;               /* this connection holds one of sessions_open */
    uint64_t tokens;
    int32_t *ids;              /* [cap] token scratch for PROMPT and TOKENS */
    float *conf, *logit;       /* [cap] */
    uint32_t cap;
    double t0;
    int failed;                /* ended by an error, counted in server_stats.errors */
    sched_job job;             /* the session's work while the scheduler holds it */
    int inflight;              /* job is submitted and may not be done */
    char end[FRAME_ERROR_TEXT_MAX + 64]; /* how the connection ended, for the log line */
} serve;

server_opts server_opts_default(void) {
    server_opts o;
    memset(&o, 0, sizeof o);
    o.threads = 1;
    o.max_sessions = 64;
    o.max_frame = FRAME_MAX_PAYLOAD_DEFAULT;
    o.max_pending_bytes = (size_t)256 << 20;
    o.idle_timeout_ms = 60000;
    o.handshake_timeout_ms = 5000;
    o.max_per_address = 16;
    o.memory_budget = (size_t)1 << 30;
    o.step_rows = 256;
    o.piece = 64;
    o.max_queued = 4096;
    return o;
}

static void srv_log(cloud_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void srv_log(cloud_server *s, const char *fmt, ...) {
    if (!s->o.log) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->o.log(s->o.log_arg, line);
}

static const char *mode_name(uint32_t mode) {
    static const char *names[] = {"none", "cloud", "split", "ee", "hat", "pd"};
    return mode <= FRAME_MODE_PD ? names[mode] : "?";
}

/* ---- per-connection helpers ---- */

/* How long a last frame (ERROR, CLOSE) may take to leave: a second, plus what the emulated link still holds
 * (so a 2 s rtt link gets its CLOSE delivered), at most the idle timeout; short once the server is stopping. */
static int grace_ms(serve *v) {
    if (atomic_load(&v->srv->stop)) return STOP_FLUSH_MS;
    double g = ERROR_FLUSH_MS + transport_backlog_ms(v->t);
    return g > v->srv->o.idle_timeout_ms ? v->srv->o.idle_timeout_ms : (int)g;
}

/* Sends ERROR (code, text) and marks the connection ended by that error. Returns -1: stop serving. */
static int fail(serve *v, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(serve *v, int code, const char *fmt, ...) {
    char text[FRAME_ERROR_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    frame_msg m;
    frame_error_msg(&m, v->sid, code, text);
    if (transport_send_last(v->t, &m, NULL, 0) == 0) transport_flush(v->t, grace_ms(v), NULL, 0);
    snprintf(v->end, sizeof v->end, "error: %s: %s", frame_err_name(code), text);
    v->failed = 1;
    return -1;
}

/* Ends the connection after a failed send: the peer is gone or not reading. */
static int send_failed(serve *v, const char *e) {
    snprintf(v->end, sizeof v->end, "error: send: %s", e);
    v->failed = 1;
    return -1;
}

static int stop_session(serve *v);

/* A send the transport refused (a budget or link limit, a frame it cannot encode) still gets its ERROR; one
 * that failed on the socket (DUET_EIO) cannot. */
static int send_msg(serve *v, const frame_msg *m) {
    char e[256];
    int rc = transport_send(v->t, m, e, sizeof e);
    if (!rc) return 0;
    if (rc == DUET_EIO) return atomic_load(&v->srv->stop) ? stop_session(v) : send_failed(v, e); /* cancelled */
    return fail(v, rc < 0 ? rc : FRAME_E_INTERNAL, "cannot send %s: %s", frame_type_name(m->type), e);
}

/* transport_recv in SLICE_MS pieces: 0, TRANSPORT_TIMEOUT after timeout_ms, TRANSPORT_CLOSED, SERVE_STOP, < 0. */
static int recv_sliced(serve *v, frame_msg *m, int timeout_ms, char *e, size_t elen) {
    double deadline = clock_now_ms() + timeout_ms;
    for (;;) {
        if (atomic_load(&v->srv->stop)) return SERVE_STOP;
        int left = (int)(deadline - clock_now_ms());
        if (left <= 0) return TRANSPORT_TIMEOUT;
        int rc = transport_recv(v->t, m, left < SLICE_MS ? left : SLICE_MS, e, elen);
        if (rc != TRANSPORT_TIMEOUT) return rc < 0 && atomic_load(&v->srv->stop) ? SERVE_STOP : rc;
    }
}

static int reserve_tokens(serve *v, uint32_t n) {
    if (n <= v->cap) return 0;
    int32_t *ids = realloc(v->ids, sizeof(int32_t) * n);
    if (ids) v->ids = ids;
    float *conf = ids ? realloc(v->conf, sizeof(float) * n) : NULL;
    if (conf) v->conf = conf;
    float *logit = conf ? realloc(v->logit, sizeof(float) * n) : NULL;
    if (logit) v->logit = logit;
    if (!logit) return fail(v, FRAME_E_INTERNAL, "out of memory for %u tokens", n);
    v->cap = n;
    return 0;
}

/* ---- handshake ---- */

/* The device may ask for less than this process holds (a cloud holding the whole model serves split devices
 * at any split point), so this is frame_hello_check with "holds at least" in place of "holds exactly". */
static int hello_check(const cloud_server *s, const frame_hello *w, char *e, size_t elen) {
    const duet_config *c = duet_model_config(s->m);
    const duet_part *held = duet_model_part(s->m);
    if (w->fingerprint != s->fingerprint) /* the held fingerprint stays here: a caller learns nothing about it */
        return err_set(e, elen, FRAME_E_REFUSED, "handshake: model mismatch (expected fingerprint %016llx; this "
                       "cloud holds another model)", (unsigned long long)w->fingerprint);
    if (w->dim != (uint32_t)c->dim)
        return err_set(e, elen, FRAME_E_REFUSED, "handshake: hidden dim mismatch (expected %u, held %d)", w->dim, c->dim);
    if (w->layer_b > (uint32_t)c->n_layers)
        return err_set(e, elen, FRAME_E_REFUSED, "handshake: layers %u:%u asked, the model has %d", w->layer_a,
                       w->layer_b, c->n_layers);
    for (uint32_t l = w->layer_a; l < w->layer_b; l++)
        if (!duet_part_has_layer(held, (int)l))
            return err_set(e, elen, FRAME_E_REFUSED, "handshake: layers %u:%u asked, layer %u is not held here",
                           w->layer_a, w->layer_b, l);
    if ((w->part & FRAME_PART_EMBED) && !held->embed)
        return err_set(e, elen, FRAME_E_REFUSED, "handshake: the embedding was asked for and is not held here");
    if ((w->part & FRAME_PART_HEAD) && !held->head)
        return err_set(e, elen, FRAME_E_REFUSED, "handshake: the head was asked for and is not held here");
    if (!(w->encodings & FRAME_ENC_ALL))
        return err_set(e, elen, FRAME_E_REFUSED, "handshake: no common hidden-state encoding (0x%x vs 0x%x)",
                       w->encodings, FRAME_ENC_ALL);
    return 0;
}

/* Equal tokens, in time that depends on neither token: both are hashed, and the digests compared whole. */
static int token_equal(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
    unsigned char da[32], db[32];
    sha256 h;
    sha256_init(&h);
    sha256_update(&h, a, an);
    sha256_final(&h, da);
    sha256_init(&h);
    sha256_update(&h, b, bn);
    sha256_final(&h, db);
    volatile unsigned char diff = 0;
    for (int i = 0; i < 32; i++) diff |= da[i] ^ db[i];
    return diff == 0;
}

static int handshake(serve *v) {
    cloud_server *s = v->srv;
    frame_msg m;
    char e[512];
    /* one deadline for the whole handshake (TLS, AUTH, HELLO), not per frame or per read */
    double deadline = v->t_accept + s->o.handshake_timeout_ms;
    transport_set_deadline(v->t, deadline);
    int rc = transport_tls_accept(v->t, (int)(deadline - clock_now_ms()), e, sizeof e);
    if (rc) { /* no channel to send an ERROR on */
        v->failed = 1;
        return snprintf(v->end, sizeof v->end, "error: %s", e), -1;
    }
    rc = recv_sliced(v, &m, s->o.handshake_timeout_ms, e, sizeof e);
    if (rc == 0 && m.type == FRAME_AUTH) {
        /* a cloud without a token accepts AUTH and ignores it; one with a token compares it */
        if (s->o.token && !token_equal(m.u.auth.token, m.u.auth.len, s->o.token, s->o.token_len))
            return fail(v, FRAME_E_REFUSED, "authentication failed: wrong token");
        rc = recv_sliced(v, &m, (int)(deadline - clock_now_ms()), e, sizeof e);
    } else if (rc == 0 && s->o.token) {
        return fail(v, FRAME_E_REFUSED, "this cloud requires a token: send AUTH before HELLO (--token-file)");
    }
    if (rc == SERVE_STOP) return stop_session(v);
    if (rc == TRANSPORT_TIMEOUT || (rc == DUET_EIO && clock_now_ms() >= v->t_accept + s->o.handshake_timeout_ms))
        return fail(v, FRAME_E_STATE, "no HELLO within %d ms of connecting", s->o.handshake_timeout_ms);
    if (rc == TRANSPORT_CLOSED) {
        v->failed = 1;
        return snprintf(v->end, sizeof v->end, "error: closed before HELLO"), -1;
    }
    if (rc) return fail(v, rc, "%s", e);
    if (m.type != FRAME_HELLO) return fail(v, FRAME_E_STATE, "expected HELLO first, got %s", frame_type_name(m.type));
    if (m.session != 0) return fail(v, FRAME_E_SESSION, "HELLO carries session %u, must be 0", m.session);
    v->want = m.u.hello;
    if ((rc = hello_check(s, &v->want, e, sizeof e))) return fail(v, rc, "%s", e);
    /* a link that cannot deliver even HELLO_OK within the idle timeout is refused before it is applied */
    double ms = link_worst_ms(&v->want.link, LINK_DOWN, FRAME_HEADER_SIZE + FRAME_HELLO_SIZE);
    if (ms > s->o.idle_timeout_ms)
        return fail(v, FRAME_E_LIMIT, "the emulated link asked for needs %.0f ms for one HELLO_OK, over the idle "
                    "timeout of %d ms", ms, s->o.idle_timeout_ms);
    v->hello = 1;
    transport_set_deadline(v->t, -1);
    transport_set_link(v->t, &v->want.link);
    /* HELLO_OK names the part this connection is served with, which the device checks against its HELLO. */
    m.type = FRAME_HELLO_OK;
    m.session = 0;
    m.u.hello = v->want;
    m.u.hello.version = FRAME_VERSION;
    m.u.hello.encodings = FRAME_ENC_ALL;
    return send_msg(v, &m);
}

/* ---- session messages ---- */

static int open_session(serve *v, const frame_msg *m) {
    cloud_server *s = v->srv;
    const frame_open *o = &m->u.open;
    if (v->s) return fail(v, FRAME_E_STATE, "a second OPEN: one session per connection");
    if (m->session != 0) return fail(v, FRAME_E_SESSION, "OPEN carries session %u, must be 0", m->session);
    int embed = (v->want.part & FRAME_PART_EMBED) != 0, head = (v->want.part & FRAME_PART_HEAD) != 0;
    int tokens_in = o->mode == FRAME_MODE_CLOUD || o->mode == FRAME_MODE_PD;
    if (tokens_in ? !(embed && head) : embed || (o->mode != FRAME_MODE_HAT && !head))
        return fail(v, FRAME_E_STATE, "mode %s does not fit the part asked in HELLO (layers %u:%u%s%s)",
                    mode_name(o->mode), v->want.layer_a, v->want.layer_b, embed ? ",embed" : "", head ? ",head" : "");
    if (s->q && sched_full(s->q))
        return fail(v, FRAME_E_LIMIT, "the cloud's queue is full (%d positions waiting to run): try again later",
                    s->o.max_queued);
    pthread_mutex_lock(&s->mu);
    int full = s->st.sessions_open >= (uint64_t)s->o.max_sessions;
    if (!full) {
        s->st.sessions_open++;
        s->st.sessions_total++;
        v->sid = ++s->next_session;
        v->counted = 1;
    }
    pthread_mutex_unlock(&s->mu);
    if (full) return fail(v, FRAME_E_LIMIT, "the server is at its limit of %d sessions", s->o.max_sessions);
    v->mode = o->mode;
    session_params p;
    memset(&p, 0, sizeof p);
    p.part.n_spans = v->want.layer_a < v->want.layer_b;
    p.part.span[0].a = (int)v->want.layer_a;
    p.part.span[0].b = (int)v->want.layer_b;
    p.part.embed = embed;
    p.part.head = head;
    p.n_ctx = o->n_ctx < (uint32_t)s->o.max_ctx ? (int)o->n_ctx : s->o.max_ctx;
    p.max_pending_bytes = s->o.max_pending_bytes;
    p.sampling = (duet_sampling){o->temperature, o->top_k, o->top_p, o->seed};
    char e[512];
    if (!(v->s = session_init(s->m, s->pool, &p, e, sizeof e))) return fail(v, FRAME_E_INTERNAL, "%s", e);
    frame_msg r = {.type = FRAME_OPENED, .session = v->sid};
    r.u.opened.n_ctx = (uint32_t)p.n_ctx;
    return send_msg(v, &r);
}

static int answer_close(serve *v) {
    frame_msg r = {.type = FRAME_CLOSE, .session = v->sid};
    char e[256];
    if (transport_send(v->t, &r, e, sizeof e) || transport_flush(v->t, grace_ms(v), e, sizeof e))
        return send_failed(v, e);
    snprintf(v->end, sizeof v->end, "closed");
    return 1;
}

static int pong(serve *v, const frame_msg *m) {
    frame_msg r = {.type = FRAME_PONG, .session = m->session};
    r.u.ping.stamp = m->u.ping.stamp;
    r.u.ping.pad = m->u.ping.reply_pad;
    return send_msg(v, &r);
}

static uint32_t elapsed_us(double t0) {
    double us = (clock_now_ms() - t0) * 1e3;
    return us > 4e9 ? UINT32_MAX : (uint32_t)us;
}

/* The server is stopping: one ERROR tells the device so (it may finish the request on its own). */
static int stop_session(serve *v) {
    frame_msg r;
    frame_error_msg(&r, v->sid, FRAME_E_SHUTDOWN, "the cloud server is stopping; the session ends now");
    if (transport_send_last(v->t, &r, NULL, 0) == 0) transport_flush(v->t, STOP_FLUSH_MS, NULL, 0);
    snprintf(v->end, sizeof v->end, "shutdown");
    return -1;
}

/* Between streamed tokens: a CLOSE ends the stream, a PING is answered, anything else is out of place. */
static int stream_poll(serve *v) {
    frame_msg m;
    char e[512];
    if (atomic_load(&v->srv->stop)) return stop_session(v);
    int rc = transport_recv(v->t, &m, 0, e, sizeof e);
    if (rc == TRANSPORT_TIMEOUT) return 0;
    if (rc == TRANSPORT_CLOSED) {
        v->failed = 1;
        return snprintf(v->end, sizeof v->end, "error: peer disconnected while streaming"), -1;
    }
    if (rc) return fail(v, rc, "%s", e);
    if (m.type == FRAME_PING) return pong(v, &m);
    if (m.type == FRAME_CLOSE && m.session == v->sid) return answer_close(v);
    return fail(v, FRAME_E_STATE, "%s (session %u) while streaming: only CLOSE or PING may come", frame_type_name(m.type),
                m.session);
}

/* A STREAM needs the embedding and the head, and starts where the session ends. */
static int stream_check(serve *v, const frame_request *q) {
    session *ss = v->s;
    if (!session_takes_tokens(ss) || !(v->want.part & FRAME_PART_HEAD))
        return fail(v, FRAME_E_STATE, "STREAM needs a session holding the embedding and the head");
    if (q->pos != (uint32_t)session_end(ss) || q->pos == 0)
        return fail(v, FRAME_E_STATE, "STREAM from position %u: the session holds %d positions, so it must be %d",
                    q->pos, session_end(ss), session_end(ss));
    return 0;
}

/* STREAM: pos is the position the first new token takes, which must be where the session ends. Each token is
 * sent as it is sampled and fed back as the next position; a TOKENS frame with n = 0 ends the stream. */
static int stream(serve *v, const frame_request *q) {
    session *ss = v->s;
    char e[512];
    int rc;
    if ((rc = stream_check(v, q))) return rc;
    uint32_t p = q->pos;
    for (uint32_t i = 0; i < q->count && p < (uint32_t)session_ctx(ss); i++, p++) {
        double t0 = clock_now_ms();
        int32_t id;
        float conf, logit;
        atomic_fetch_add(&v->srv->solo_steps, 1);
        if ((rc = session_run(ss, e, sizeof e)) ||
            (rc = session_predict(ss, p - 1, &id, q->fields & FRAME_TOK_CONF ? &conf : NULL,
                                  q->fields & FRAME_TOK_LOGIT ? &logit : NULL, e, sizeof e)))
            return fail(v, rc, "%s", e);
        frame_msg r = {.type = FRAME_TOKENS, .session = v->sid};
        r.u.tokens = (frame_tokens){.pos0 = p, .n = 1, .fields = q->fields, .compute_us = elapsed_us(t0),
                                    .ids = &id, .conf = &conf, .logit = &logit};
        if ((rc = send_msg(v, &r))) return rc;
        v->tokens++;
        if ((rc = session_push_tokens(ss, p, &id, 1, e, sizeof e))) return fail(v, rc, "%s", e);
        if (id == v->srv->eos) {
            p++;
            break;
        }
        if ((rc = stream_poll(v))) return rc;
    }
    int32_t none = 0;
    frame_msg r = {.type = FRAME_TOKENS, .session = v->sid};
    r.u.tokens = (frame_tokens){.pos0 = p, .n = 0, .ids = &none};
    return send_msg(v, &r);
}

/* ---- the same through the scheduler ---- */

/* Hands the session's job to the scheduler: 0, or the stop answered. While it waits for room in the queue the
 * connection is not read (backpressure). */
static int submit(serve *v) {
    if (sched_submit(v->srv->q, &v->job, &v->srv->stop)) return stop_session(v);
    v->inflight = 1;
    return 0;
}

/* Waits until the job is done: 0 (its rc says how it went), or the stop answered (the job dropped first). */
static int await_job(serve *v) {
    for (;;) {
        uint32_t first;
        int done;
        sched_take(v->srv->q, &v->job, NULL, NULL, NULL, 0, &first, &done);
        if (done) {
            v->inflight = 0;
            return 0;
        }
        if (atomic_load(&v->srv->stop)) {
            sched_cancel(v->srv->q, &v->job);
            v->inflight = 0;
            return stop_session(v);
        }
        sched_wait(v->srv->q, &v->job, SLICE_MS);
    }
}

static void job_for(serve *v, int kind, const frame_request *q) {
    sched_job *j = &v->job;
    j->s = v->s;
    j->kind = kind;
    j->pos = j->next = q->pos;
    j->count = q->count;
    j->n_ctx = session_ctx(v->s);
    j->eos = v->srv->eos;
    j->conf = (q->fields & FRAME_TOK_CONF) != 0;
    j->logit = (q->fields & FRAME_TOK_LOGIT) != 0;
    j->ids = v->ids;
    j->confs = v->conf;
    j->logits = v->logit;
}

/* STREAM through the scheduler: it makes the tokens (one per step, fed back), this thread sends them as they
 * come and polls the connection between them, as stream() does. */
static int stream_batched(serve *v, const frame_request *q) {
    session *ss = v->s;
    int rc;
    if ((rc = stream_check(v, q))) return rc;
    uint32_t end = q->pos;
    if (q->count > 0 && q->pos < (uint32_t)session_ctx(ss)) {
        job_for(v, SCHED_STREAM, q);
        if ((rc = submit(v))) return rc;
        double t0 = clock_now_ms();
        for (;;) {
            int32_t ids[SCHED_OUTBOX];
            float conf[SCHED_OUTBOX], logit[SCHED_OUTBOX];
            uint32_t first;
            int done, k = sched_take(v->srv->q, &v->job, ids, conf, logit, SCHED_OUTBOX, &first, &done);
            for (int i = 0; i < k; i++) {
                frame_msg r = {.type = FRAME_TOKENS, .session = v->sid};
                r.u.tokens = (frame_tokens){.pos0 = q->pos + first + (uint32_t)i, .n = 1, .fields = q->fields,
                                            .compute_us = elapsed_us(t0), .ids = &ids[i], .conf = &conf[i],
                                            .logit = &logit[i]};
                if ((rc = send_msg(v, &r))) return rc;
                v->tokens++;
                t0 = clock_now_ms();
            }
            if (done) {
                v->inflight = 0;
                if (v->job.rc) return fail(v, v->job.rc, "%s", v->job.err);
                end = v->job.next;
                break;
            }
            if ((rc = stream_poll(v))) return rc; /* the job is dropped when the connection ends */
            if (!k) sched_wait(v->srv->q, &v->job, SLICE_MS);
        }
    }
    int32_t none = 0;
    frame_msg r = {.type = FRAME_TOKENS, .session = v->sid};
    r.u.tokens = (frame_tokens){.pos0 = end, .n = 0, .ids = &none};
    return send_msg(v, &r);
}

static int request(serve *v, const frame_request *q) {
    session *ss = v->s;
    cloud_server *s = v->srv;
    char e[512];
    int rc;
    if (q->kv_keep != FRAME_KEEP_ALL) session_truncate(ss, q->kv_keep);
    if (q->want == FRAME_WANT_STREAM) return s->q ? stream_batched(v, q) : stream(v, q);
    double t0 = clock_now_ms();
    if (q->want == FRAME_WANT_TOKENS && (rc = reserve_tokens(v, q->count))) return rc;
    if (s->q) {
        job_for(v, q->want == FRAME_WANT_TOKENS ? SCHED_TOKENS : SCHED_RUN, q);
        if ((rc = submit(v)) || (rc = await_job(v))) return rc;
        if (v->job.rc) return fail(v, v->job.rc, "%s", v->job.err);
        t0 = clock_now_ms() - v->job.busy_ms; /* compute_us: the steps that ran it, not the waits between them */
    } else {
        atomic_fetch_add(&s->solo_steps, 1);
        if ((rc = session_run(ss, e, sizeof e))) return fail(v, rc, "%s", e);
    }
    frame_msg r = {.session = v->sid};
    if (q->want == FRAME_WANT_HIDDEN) {
        const float *rows;
        if ((rc = session_rows(ss, q->pos, q->count, &rows, e, sizeof e))) return fail(v, rc, "HIDDEN: %s", e);
        if (q->enc == FRAME_ENC_I8) /* int8 has no code for inf or NaN: say so rather than close */
            for (size_t i = 0; i < (size_t)q->count * v->want.dim; i++)
                if (!isfinite(rows[i]))
                    return fail(v, FRAME_E_VALUE, "HIDDEN: row %zu holds NaN or infinity, which int8 cannot carry; "
                                "ask for fp16 or fp32", i / v->want.dim + q->pos);
        r.type = FRAME_HIDDEN;
        r.u.rows = (frame_rows){.pos0 = q->pos, .n = q->count, .dim = v->want.dim, .enc = q->enc,
                                .compute_us = elapsed_us(t0), .x = rows};
        return send_msg(v, &r);
    }
    for (uint32_t i = 0; i < q->count && !s->q; i++)
        if ((rc = session_predict(ss, q->pos + i, &v->ids[i], q->fields & FRAME_TOK_CONF ? &v->conf[i] : NULL,
                                  q->fields & FRAME_TOK_LOGIT ? &v->logit[i] : NULL, e, sizeof e)))
            return fail(v, rc, "TOKENS: %s", e);
    r.type = FRAME_TOKENS;
    r.u.tokens = (frame_tokens){.pos0 = q->pos, .n = q->count, .fields = q->fields, .compute_us = elapsed_us(t0),
                                .ids = v->ids, .conf = v->conf, .logit = v->logit};
    if ((rc = send_msg(v, &r))) return rc;
    v->tokens += q->count;
    return 0;
}

/* Charges the session's pending input to the server's memory budget (after every frame that changes it). */
static int charge_pending(serve *v) {
    size_t now = v->s ? session_pending_bytes(v->s) : 0;
    if (now > v->charged) {
        if (transport_budget_take(&v->srv->budget, now - v->charged))
            return fail(v, FRAME_E_LIMIT, "pending input of %zu bytes is over the server's memory budget (%zu bytes)",
                        now, v->srv->budget.cap);
    } else {
        transport_budget_give(&v->srv->budget, v->charged - now);
    }
    v->charged = now;
    return 0;
}

/* One frame after the handshake: 0 go on, 1 ended cleanly, < 0 ended by an error. */
static int dispatch_frame(serve *v, const frame_msg *m);
static int dispatch(serve *v, const frame_msg *m) {
    int rc = dispatch_frame(v, m);
    int crc = v->s && !rc ? charge_pending(v) : 0;
    return rc ? rc : crc;
}

static int dispatch_frame(serve *v, const frame_msg *m) {
    char e[512];
    int rc;
    switch (m->type) {
    case FRAME_PING: return pong(v, m);
    case FRAME_OPEN: return open_session(v, m);
    case FRAME_HELLO: return fail(v, FRAME_E_STATE, "a second HELLO");
    case FRAME_ERROR:
        v->failed = 1;
        snprintf(v->end, sizeof v->end, "error from the device: %s: %.*s", frame_err_name(m->u.error.code),
                 (int)m->u.error.len, m->u.error.text);
        return -1;
    case FRAME_CLOSE:
    case FRAME_PROMPT:
    case FRAME_UPLOAD:
    case FRAME_REQUEST: break;
    default: return fail(v, FRAME_E_STATE, "%s is not a message a device sends", frame_type_name(m->type));
    }
    if (!v->s) return fail(v, FRAME_E_STATE, "%s before OPEN", frame_type_name(m->type));
    if (m->session != v->sid)
        return fail(v, FRAME_E_SESSION, "%s for unknown session %u (this connection's is %u)", frame_type_name(m->type),
                    m->session, v->sid);
    switch (m->type) {
    case FRAME_CLOSE: return answer_close(v);
    case FRAME_PROMPT:
        if ((rc = reserve_tokens(v, m->u.tokens.n))) return rc;
        frame_tokens_get(&m->u.tokens, v->ids, NULL, NULL);
        rc = session_push_tokens(v->s, m->u.tokens.pos0, v->ids, m->u.tokens.n, e, sizeof e);
        return rc ? fail(v, rc, "%s", e) : 0;
    case FRAME_UPLOAD:
        rc = session_push_rows(v->s, &m->u.rows, e, sizeof e);
        return rc ? fail(v, rc, "%s", e) : 0;
    default: return request(v, &m->u.request);
    }
}

/* ---- connection thread ---- */

static void serve_loop(serve *v) {
    cloud_server *s = v->srv;
    if (handshake(v)) return;
    for (;;) {
        frame_msg m;
        char e[512];
        int rc = recv_sliced(v, &m, s->o.idle_timeout_ms, e, sizeof e);
        if (rc == SERVE_STOP) {
            stop_session(v);
            return;
        }
        if (rc == TRANSPORT_TIMEOUT) {
            fail(v, FRAME_E_LIMIT, "idle timeout: nothing received for %d ms, session closed", s->o.idle_timeout_ms);
            snprintf(v->end, sizeof v->end, "idle timeout (%d ms)", s->o.idle_timeout_ms);
            return;
        }
        if (rc == TRANSPORT_CLOSED) {
            v->failed = 1;
            snprintf(v->end, sizeof v->end, "error: peer disconnected without CLOSE");
            return;
        }
        if (rc) {
            fail(v, rc, "%s", e);
            return;
        }
        if (dispatch(v, &m)) return;
    }
}

static void *conn_main(void *arg) {
    conn *c = arg;
    cloud_server *s = c->srv;
    serve v;
    memset(&v, 0, sizeof v);
    v.srv = s;
    v.t = c->t;
    v.t0 = clock_now_ms();
    v.t_accept = c->t_accept;
    serve_loop(&v);

    transport_stats ts;
    transport_stats_get(v.t, &ts);
    if (v.inflight) sched_cancel(s->q, &v.job); /* the session is the scheduler's until it lets go */
    session_counters sc = {0, 0};
    if (v.s) session_counters_get(v.s, &sc);
    session_free(v.s);
    transport_budget_give(&s->budget, v.charged);
    free(v.ids);
    free(v.conf);
    free(v.logit);
    /* counters before the log line, so whoever reads the line sees them */
    pthread_mutex_lock(&s->mu);
    if (v.counted) s->st.sessions_open--;
    s->st.tokens += v.tokens;
    s->st.positions += sc.positions;
    s->st.bytes_up += ts.bytes_up;
    s->st.bytes_down += ts.bytes_down;
    s->st.compute_ms += sc.compute_ms;
    s->st.errors += (uint64_t)v.failed;
    pthread_mutex_unlock(&s->mu);
    char sid[16] = "-", part[64] = "-";
    if (v.sid) snprintf(sid, sizeof sid, "%u", v.sid);
    if (v.hello)
        snprintf(part, sizeof part, "%u:%u%s%s", v.want.layer_a, v.want.layer_b,
                 v.want.part & FRAME_PART_EMBED ? ",embed" : "", v.want.part & FRAME_PART_HEAD ? ",head" : "");
    char peer[64];
    transport_peer(c->t, peer, sizeof peer);
    srv_log(s,
            "session %s conn %d from %s: mode %s, layers %s, %llu positions, %llu tokens, up %llu B, down %llu B, "
            "cloud %.1f ms, wall %.1f ms, ended: %s",
            sid, c->id, peer, mode_name(v.mode), part, (unsigned long long)sc.positions, (unsigned long long)v.tokens,
            (unsigned long long)ts.bytes_up, (unsigned long long)ts.bytes_down, sc.compute_ms,
            clock_now_ms() - v.t0, v.end);
    transport_free(c->t);
    c->t = NULL;
    pthread_mutex_lock(&s->mu);
    int idle = --s->active == 0;
    pthread_mutex_unlock(&s->mu);
    /* the last connection is gone: hand what the allocator keeps in its per-thread arenas back to the system,
     * so an idle cloud returns to its idle footprint after a burst (make soak checks it) */
    if (idle) malloc_trim(0);
    atomic_store(&c->done, 1);
    return NULL;
}

/* ---- server ---- */

cloud_server *server_init(duet_model *m, const server_opts *o, char *err, size_t errlen) {
    cloud_server *s = calloc(1, sizeof *s);
    if (!s) {
        err_set(err, errlen, DUET_ENOMEM, "server: out of memory");
        return NULL;
    }
    const duet_config *c = duet_model_config(m);
    s->m = m;
    s->o = o ? *o : server_opts_default();
    if (s->o.threads <= 0) s->o.threads = 1;
    if (s->o.max_sessions <= 0) s->o.max_sessions = 64;
    if (s->o.max_frame == 0) s->o.max_frame = FRAME_MAX_PAYLOAD_DEFAULT;
    if (s->o.max_pending_bytes == 0) s->o.max_pending_bytes = (size_t)256 << 20;
    if (s->o.max_ctx <= 0 || s->o.max_ctx > c->ctx_len) s->o.max_ctx = c->ctx_len;
    if (s->o.idle_timeout_ms <= 0) s->o.idle_timeout_ms = 60000;
    if (s->o.handshake_timeout_ms <= 0) s->o.handshake_timeout_ms = 5000;
    if (s->o.max_per_address <= 0) s->o.max_per_address = 16;
    if (s->o.memory_budget == 0) s->o.memory_budget = (size_t)1 << 30;
    s->budget.cap = s->o.memory_budget;
    const duet_tokenizer *tok = duet_model_tokenizer(m, NULL, 0);
    s->eos = tok ? duet_tokenizer_eos(tok) : -1;
    s->fingerprint = duet_model_fingerprint(m);
    pthread_mutex_init(&s->mu, NULL);
    if (s->o.step_rows <= 0) s->o.step_rows = 256;
    if (s->o.piece <= 0) s->o.piece = 64;
    if (s->o.max_queued <= 0) s->o.max_queued = 4096;
    sched_opts so = {.step_rows = s->o.step_rows, .piece = s->o.piece, .max_queued = s->o.max_queued};
    if (!(s->pool = duet_pool_init(s->o.threads, err, errlen)) ||
        (!s->o.no_batching && !(s->q = sched_init(m, s->pool, &so, err, errlen))) ||
        !(s->l = transport_listen(s->o.host, s->o.port, err, errlen))) {
        server_free(s);
        return NULL;
    }
    return s;
}

int server_port(const cloud_server *s) {
    return transport_listener_port(s->l);
}

/* Joins and frees the connections whose threads have finished (all of them when `all`). */
static void reap(cloud_server *s, int all) {
    conn *dead = NULL;
    pthread_mutex_lock(&s->mu);
    for (conn **pp = &s->conns; *pp;) {
        conn *c = *pp;
        if (all || atomic_load(&c->done)) {
            *pp = c->next;
            c->next = dead;
            dead = c;
            s->n_conns--;
        } else {
            pp = &c->next;
        }
    }
    pthread_mutex_unlock(&s->mu);
    while (dead) {
        conn *c = dead;
        dead = c->next;
        pthread_join(c->thread, NULL);
        free(c);
    }
}

/* A connection over a limit hears why and is closed at once. */
static void refuse(cloud_server *s, transport *t, const char *text) {
    /* over TLS the refusal needs the handshake first; a short one, since this is the accept thread */
    if (transport_tls_accept(t, SLICE_MS, NULL, 0)) {
        transport_free(t);
        srv_log(s, "connection refused (TLS handshake not done in %d ms): %s", SLICE_MS, text);
        pthread_mutex_lock(&s->mu);
        s->st.errors++;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    frame_msg m;
    frame_error_msg(&m, 0, FRAME_E_LIMIT, text);
    if (transport_send(t, &m, NULL, 0) == 0) transport_flush(t, SLICE_MS, NULL, 0);
    transport_free(t);
    srv_log(s, "connection refused: %s", text);
    pthread_mutex_lock(&s->mu);
    s->st.errors++;
    pthread_mutex_unlock(&s->mu);
}

/* The transport options of every connection. */
static transport_opts conn_opts(cloud_server *s) {
    transport_opts to = transport_opts_default(LINK_DOWN);
    to.limits.max_payload = s->o.max_frame;
    to.cancel = &s->stop;
    to.budget = &s->budget;
    to.tls = s->o.tls;
    /* a frame the device's emulated link would deliver later than this is refused: a device asking for a
     * 1 bit/s link cannot pin a thread and its memory for days */
    to.max_backlog_ms = s->o.idle_timeout_ms;
    /* the longest a whole frame may take once its first byte arrived */
    if (to.io_timeout_ms > s->o.idle_timeout_ms) to.io_timeout_ms = s->o.idle_timeout_ms;
    if (to.io_timeout_ms > s->o.handshake_timeout_ms) to.io_timeout_ms = s->o.handshake_timeout_ms;
    return to;
}

/* Gives a new connection its thread, or refuses it (connection and per-address caps). */
static void serve_new(cloud_server *s, transport *t) {
    conn *c = calloc(1, sizeof *c);
    char addr[64], text[160] = "";
    transport_peer(t, addr, sizeof addr);
    char *colon = strrchr(addr, ':'); /* "host:port" or "[v6]:port" */
    if (colon) *colon = 0;
    pthread_mutex_lock(&s->mu);
    int n = s->n_conns, same = 0;
    for (conn *o = s->conns; o; o = o->next) same += !atomic_load(&o->done) && !strcmp(o->addr, addr);
    if (n >= s->o.max_sessions + CONN_SLACK)
        snprintf(text, sizeof text, "the server has %d connections open, its limit", n);
    else if (same >= s->o.max_per_address)
        snprintf(text, sizeof text, "%d connections from %s are open, the limit per address", same, addr);
    if (c && !text[0]) {
        c->srv = s;
        c->t = t;
        c->id = ++s->next_conn;
        c->t_accept = clock_now_ms();
        snprintf(c->addr, sizeof c->addr, "%s", addr);
        atomic_init(&c->done, 0);
        s->active++;
        if (pthread_create(&c->thread, NULL, conn_main, c) != 0) s->active--;
        else {
            c->next = s->conns;
            s->conns = c;
            s->n_conns++;
            c = NULL;
            t = NULL;
        }
    }
    pthread_mutex_unlock(&s->mu);
    free(c);
    if (t) refuse(s, t, text[0] ? text : "the server cannot start a connection thread");
}

int server_adopt(cloud_server *s, int fd, char *err, size_t errlen) {
    reap(s, 0);
    transport_opts to = conn_opts(s);
    transport *t = transport_adopt(fd, &to, err, errlen);
    if (!t) return DUET_ERR;
    serve_new(s, t);
    return 0;
}

int server_run(cloud_server *s) {
    transport_opts to = conn_opts(s);
    while (!atomic_load(&s->stop)) {
        reap(s, 0);
        transport *t;
        char e[256];
        int rc = transport_accept(s->l, &to, SLICE_MS, &t, e, sizeof e);
        if (rc == TRANSPORT_TIMEOUT) continue;
        if (rc) { /* e.g. out of file descriptors: say so, let connections finish, try again */
            srv_log(s, "accept: %s", e);
            nanosleep(&(struct timespec){0, SLICE_MS * 1000000L}, NULL);
            continue;
        }
        serve_new(s, t);
    }
    reap(s, 1);
    return 0;
}

static void *run_main(void *arg) {
    server_run(arg);
    return NULL;
}

int server_start(cloud_server *s, char *err, size_t errlen) {
    if (s->started) return err_set(err, errlen, DUET_EINVAL, "server: already started");
    if (pthread_create(&s->thread, NULL, run_main, s) != 0)
        return err_set(err, errlen, DUET_ERR, "server: cannot start the accept thread");
    s->started = 1;
    return 0;
}

void server_stop(cloud_server *s) {
    atomic_store(&s->stop, 1);
}

void server_stats_get(cloud_server *s, server_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
    out->steps = atomic_load(&s->solo_steps);
    out->memory_used = atomic_load(&s->budget.used);
    if (s->q) {
        sched_stats q;
        sched_stats_get(s->q, &q);
        out->steps += q.steps;
        out->backpressure = q.backpressure;
        out->step_rows_max = q.step_rows_max;
        out->step_jobs_max = q.step_jobs_max;
        out->queued_jobs = q.queued_jobs;
        out->queued_positions = q.queued_positions;
        out->waiting = q.waiting;
    }
}

void server_pause(cloud_server *s, int paused) {
    if (s->q) sched_pause(s->q, paused != 0);
}

void server_free(cloud_server *s) {
    if (!s) return;
    server_stop(s);
    if (s->started) pthread_join(s->thread, NULL);
    reap(s, 1); /* connections of a server_run that the caller ran and left */
    transport_listener_free(s->l);
    sched_free(s->q); /* after every connection: none holds a job any more */
    duet_pool_free(s->pool);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
