/* Cloud server tests: an in-process server on a free loopback port, a well-behaved split-mode device on its own
 * thread whose tokens must equal device-only greedy generation, and raw or protocol-level bad clients served at
 * the same moment. */
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "cloud/server.h"
#include "cloud/session.h"
#include "duet.h"
#include "net/transport.h"
#include "test.h"

#define MODEL "models/stories260K.gguf"
#define N_GEN 24
#define WAIT_MS 5000 /* the longest any test waits for an answer or a log line */

static void sleep_ms(int ms) {
    nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L}, NULL);
}

/* ---- fixture: model, reference output, server, captured log ---- */

typedef struct fixture {
    duet_model *m;
    int L, dim, eos;
    int prompt[16], n_prompt;
    int ref[N_GEN];         /* device-only greedy continuation of prompt, EOS ignored */
    cloud_server *srv;
    int port;
    pthread_mutex_t mu;
    char log[64][640];
    int n_log;
} fixture;

static void fx_log(void *arg, const char *line) {
    fixture *f = arg;
    pthread_mutex_lock(&f->mu);
    if (f->n_log < 64) snprintf(f->log[f->n_log++], sizeof f->log[0], "%s", line);
    pthread_mutex_unlock(&f->mu);
}

/* Waits for a log line holding every one of the (up to two) strings. */
static int fx_log_has(fixture *f, const char *a, const char *b) {
    for (double t0 = clock_now_ms(); clock_now_ms() - t0 < WAIT_MS; sleep_ms(5)) {
        pthread_mutex_lock(&f->mu);
        int found = 0;
        for (int i = 0; i < f->n_log && !found; i++) found = strstr(f->log[i], a) && (!b || strstr(f->log[i], b));
        pthread_mutex_unlock(&f->mu);
        if (found) return 1;
    }
    return 0;
}

/* Device-only greedy generation with the engine: prefill as one batch, then one position per step. */
static int ref_generate(duet_model *m, const int *prompt, int n_prompt, int n_gen, int *out) {
    const duet_config *c = duet_model_config(m);
    char err[256];
    duet_kv *kv = duet_kv_init(m, duet_model_part(m), n_prompt + n_gen, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(m, n_prompt, NULL, err, sizeof err);
    float *h = malloc(sizeof(float) * (size_t)n_prompt * c->dim);  /* [n_prompt][dim] */
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size); /* [vocab] */
    int rc = !kv || !ctx || !h || !logits || duet_embed(ctx, prompt, n_prompt, h, err, sizeof err) ||
             duet_forward(ctx, kv, 0, c->n_layers, h, n_prompt, 0, err, sizeof err) ||
             duet_head(ctx, h + (size_t)(n_prompt - 1) * c->dim, 1, logits, err, sizeof err);
    for (int i = 0; i < n_gen && !rc; i++) {
        out[i] = duet_argmax(logits, c->vocab_size);
        rc = duet_embed(ctx, &out[i], 1, h, err, sizeof err) ||
             duet_forward(ctx, kv, 0, c->n_layers, h, 1, n_prompt + i, err, sizeof err) ||
             duet_head(ctx, h, 1, logits, err, sizeof err);
    }
    free(h);
    free(logits);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    return rc;
}

static int fx_setup(fixture *f, const server_opts *o) {
    char err[256];
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    if (!(f->m = duet_model_load(MODEL, NULL, 0, err, sizeof err))) return test_fail(__FILE__, __LINE__, "%s", err), -1;
    const duet_config *c = duet_model_config(f->m);
    f->L = c->n_layers;
    f->dim = c->dim;
    const duet_tokenizer *tok = duet_model_tokenizer(f->m, err, sizeof err);
    if (!tok) return test_fail(__FILE__, __LINE__, "%s", err), -1;
    f->eos = duet_tokenizer_eos(tok);
    const char *text = "Once upon a time";
    f->n_prompt = duet_tokenize(tok, text, strlen(text), true, f->prompt, 16);
    if (f->n_prompt < 2 || f->n_prompt > 16 || ref_generate(f->m, f->prompt, f->n_prompt, N_GEN, f->ref))
        return test_fail(__FILE__, __LINE__, "reference generation failed"), -1;
    server_opts so = o ? *o : server_opts_default();
    so.host = "127.0.0.1";
    so.port = 0;
    so.log = fx_log;
    so.log_arg = f;
    if (!(f->srv = server_init(f->m, &so, err, sizeof err)) || server_start(f->srv, err, sizeof err))
        return test_fail(__FILE__, __LINE__, "server: %s", err), -1;
    f->port = server_port(f->srv);
    return 0;
}

static void fx_free(fixture *f) {
    server_free(f->srv);
    duet_model_free(f->m);
    pthread_mutex_destroy(&f->mu);
}

/* Sets up the fixture; on failure it has reported why and freed everything, so a test just returns. */
static int fx_init(fixture *f, const server_opts *o) {
    if (fx_setup(f, o) == 0) return 0;
    fx_free(f);
    return -1;
}

static server_stats fx_stats(fixture *f) {
    server_stats st;
    server_stats_get(f->srv, &st);
    return st;
}

/* ---- protocol-level client ---- */

static frame_hello hello_for(fixture *f, uint32_t a, uint32_t b, uint8_t part) {
    frame_hello h;
    memset(&h, 0, sizeof h);
    h.fingerprint = duet_model_fingerprint(f->m);
    h.dim = (uint32_t)f->dim;
    h.layer_a = a;
    h.layer_b = b;
    h.version = FRAME_VERSION;
    h.part = part;
    h.encodings = FRAME_ENC_ALL;
    return h;
}

/* Connects and says HELLO; 0 or the handshake's status (e.g. FRAME_E_REFUSED) with the transport in *out. */
static int tc_hello(fixture *f, const frame_hello *h, transport **out, char *err, size_t errlen) {
    transport_opts o = transport_opts_default(LINK_UP);
    o.io_timeout_ms = WAIT_MS;
    *out = transport_connect("127.0.0.1", f->port, &o, err, errlen);
    if (!*out) return DUET_EIO;
    return transport_hello(*out, h, NULL, WAIT_MS, err, errlen);
}

/* HELLO + OPEN: the session id, or 0 with *rc the failure. */
static uint32_t tc_open(fixture *f, transport **t, uint32_t a, uint32_t b, uint8_t part, uint32_t mode,
                        uint32_t n_ctx, int *rc) {
    char err[256] = "";
    frame_hello h = hello_for(f, a, b, part);
    *rc = tc_hello(f, &h, t, err, sizeof err);
    if (*rc) return 0;
    frame_msg m = {.type = FRAME_OPEN};
    m.u.open = (frame_open){.seed = 1, .n_ctx = n_ctx, .mode = mode, .temperature = 0, .top_p = 1};
    if ((*rc = transport_send(*t, &m, err, sizeof err)) ||
        (*rc = transport_expect(*t, FRAME_OPENED, &m, WAIT_MS, err, sizeof err)))
        return 0;
    return m.session;
}

static int tc_upload(transport *t, uint32_t sid, const float *x, uint32_t pos0, uint32_t n, uint32_t dim) {
    frame_msg m = {.type = FRAME_UPLOAD, .session = sid};
    m.u.rows = (frame_rows){.pos0 = pos0, .n = n, .dim = dim, .enc = FRAME_ENC_F32, .x = x};
    return transport_send(t, &m, NULL, 0);
}

static int tc_request(transport *t, uint32_t sid, uint8_t want, uint32_t pos, uint32_t count, uint32_t kv_keep) {
    frame_msg m = {.type = FRAME_REQUEST, .session = sid};
    m.u.request = (frame_request){.pos = pos, .count = count, .kv_keep = kv_keep, .want = want,
                                  .enc = want == FRAME_WANT_HIDDEN ? FRAME_ENC_F32 : 0};
    return transport_send(t, &m, NULL, 0);
}

/* The code of the ERROR that answers whatever was sent last (a closed connection gives TRANSPORT_CLOSED). */
static int tc_error(transport *t) {
    frame_msg m;
    for (;;) {
        int rc = transport_recv(t, &m, WAIT_MS, NULL, 0);
        if (rc) return rc;
        if (m.type == FRAME_ERROR) return m.u.error.code;
    }
}

/* ---- the well-behaved split-mode device ---- */

typedef struct good {
    fixture *f;
    int split;
    pthread_t thread;
    atomic_int halfway, release; /* it pauses halfway until released, so bad clients meet an open session */
    int started;
    int out[N_GEN];
    int n_out;
    char err[256];
} good;

static void *good_main(void *arg) {
    good *g = arg;
    fixture *f = g->f;
    int A = g->split, n = f->n_prompt, rc;
    transport *t = NULL;
    duet_part dev = {.n_spans = 1, .span = {{0, A}}, .embed = true};
    duet_kv *kv = duet_kv_init(f->m, &dev, n + N_GEN, g->err, sizeof g->err);
    duet_ctx *ctx = duet_ctx_init(f->m, n, NULL, g->err, sizeof g->err);
    float *h = malloc(sizeof(float) * (size_t)n * f->dim); /* [n_prompt][dim] */
    uint32_t sid = tc_open(f, &t, (uint32_t)A, (uint32_t)f->L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 256, &rc);
    if (!kv || !ctx || !h || !sid) {
        if (!g->err[0]) snprintf(g->err, sizeof g->err, "setup failed (%d)", rc);
        goto out;
    }
    int id = 0, pos = 0, rows = n;
    rc = duet_embed(ctx, f->prompt, n, h, g->err, sizeof g->err) ||
         duet_forward(ctx, kv, 0, A, h, n, 0, g->err, sizeof g->err);
    for (int i = 0; i < N_GEN && !rc; i++) {
        if (i == N_GEN / 2) {
            atomic_store(&g->halfway, 1);
            for (double t0 = clock_now_ms(); !atomic_load(&g->release) && clock_now_ms() - t0 < 4 * WAIT_MS;)
                sleep_ms(1);
        }
        frame_msg m;
        if ((rc = tc_upload(t, sid, h, (uint32_t)pos, (uint32_t)rows, (uint32_t)f->dim)) ||
            (rc = tc_request(t, sid, FRAME_WANT_TOKENS, (uint32_t)(pos + rows - 1), 1, FRAME_KEEP_ALL)) ||
            (rc = transport_expect(t, FRAME_TOKENS, &m, WAIT_MS, g->err, sizeof g->err)))
            break;
        if (m.u.tokens.n != 1 || m.u.tokens.pos0 != (uint32_t)(pos + rows - 1)) {
            snprintf(g->err, sizeof g->err, "TOKENS n %u pos0 %u", m.u.tokens.n, m.u.tokens.pos0);
            break;
        }
        frame_tokens_get(&m.u.tokens, &id, NULL, NULL);
        g->out[g->n_out++] = id;
        pos += rows;
        rows = 1;
        rc = duet_embed(ctx, &id, 1, h, g->err, sizeof g->err) ||
             duet_forward(ctx, kv, 0, A, h, 1, pos, g->err, sizeof g->err);
    }
    if (g->n_out == N_GEN) {
        frame_msg m = {.type = FRAME_CLOSE, .session = sid};
        if (transport_send(t, &m, g->err, sizeof g->err) ||
            transport_expect(t, FRAME_CLOSE, &m, WAIT_MS, g->err, sizeof g->err))
            g->n_out = -1;
    }
out:
    atomic_store(&g->halfway, 1);
    transport_free(t);
    free(h);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    return NULL;
}

/* Starts a good device and returns once its session is open and halfway through. */
static int good_start(good *g, fixture *f, int split) {
    memset(g, 0, sizeof *g);
    g->f = f;
    g->split = split;
    if (pthread_create(&g->thread, NULL, good_main, g)) return test_fail(__FILE__, __LINE__, "pthread_create"), -1;
    g->started = 1;
    while (!atomic_load(&g->halfway)) sleep_ms(1);
    return 0;
}

/* Lets it finish and checks its tokens against device-only generation. */
static void good_finish(good *g, int line) {
    if (!g->started) return;
    atomic_store(&g->release, 1);
    pthread_join(g->thread, NULL);
    if (g->n_out != N_GEN) {
        test_fail(__FILE__, line, "good client got %d of %d tokens: %s", g->n_out, N_GEN, g->err);
        return;
    }
    for (int i = 0; i < N_GEN; i++)
        if (g->out[i] != g->f->ref[i]) {
            test_fail(__FILE__, line, "good client token %d is %d, device-only gives %d", i, g->out[i], g->f->ref[i]);
            return;
        }
}

/* ---- raw-byte client ---- */

static int raw_connect(fixture *f) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {WAIT_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static int raw_read(int fd, uint8_t *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, p + got, n - got, 0);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Reads the server's frames until an ERROR: its code; or TRANSPORT_CLOSED if the connection ends first. */
static int raw_error(int fd) {
    frame_limits lim = frame_limits_default();
    static uint8_t payload[1 << 16];
    for (;;) {
        uint8_t hb[FRAME_HEADER_SIZE];
        frame_header h;
        frame_msg m;
        if (raw_read(fd, hb, sizeof hb)) return TRANSPORT_CLOSED;
        if (frame_header_decode(hb, sizeof hb, &lim, &h, NULL, 0) || h.len > sizeof payload) return DUET_EFORMAT;
        if (raw_read(fd, payload, h.len)) return TRANSPORT_CLOSED;
        if (frame_payload_decode(&h, payload, &lim, &m, NULL, 0)) return DUET_EFORMAT;
        if (m.type == FRAME_ERROR) return m.u.error.code;
    }
}

/* A valid HELLO frame's bytes (seq 0). */
static size_t hello_bytes(fixture *f, uint8_t *buf, size_t cap) {
    frame_msg m = {.type = FRAME_HELLO};
    m.u.hello = hello_for(f, 2, (uint32_t)f->L, FRAME_PART_HEAD);
    size_t len = 0;
    frame_encode(&m, 0, buf, cap, &len, NULL, 0);
    return len;
}

/* Connects, sends bytes[n], optionally half-closes, and returns the server's answer (raw_error). */
static int raw_exchange(fixture *f, const uint8_t *bytes, size_t n, int half_close) {
    int fd = raw_connect(f);
    if (fd < 0) return DUET_EIO;
    if (send(fd, bytes, n, MSG_NOSIGNAL) != (ssize_t)n) {
        close(fd);
        return DUET_EIO;
    }
    if (half_close) shutdown(fd, SHUT_WR);
    int code = raw_error(fd);
    close(fd);
    return code;
}

/* ---- tests: correct service ---- */

TEST(test_server_split_matches_device_only) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    good g[3];
    for (int i = 0; i < 3; i++) good_start(&g[i], &f, 1 + i); /* three split points at once */
    for (int i = 0; i < 3; i++) good_finish(&g[i], __LINE__);
    CHECK(fx_log_has(&f, "mode split, layers 3:5,head", "ended: closed"));
    CHECK(fx_log_has(&f, "from 127.0.0.1:", "ended: closed")); /* the log names the peer */
    server_stats st = fx_stats(&f);
    CHECK_EQ_INT(st.sessions_total, 3);
    CHECK_EQ_INT(st.tokens, 3 * N_GEN);
    CHECK_EQ_INT(st.positions, 3 * (f.n_prompt + N_GEN - 1)); /* the last token is never uploaded */
    CHECK_EQ_INT(st.errors, 0);
    CHECK(st.bytes_up > (uint64_t)3 * (f.n_prompt + N_GEN - 1) * f.dim * 4);
    fx_free(&f);
}

TEST(test_server_cloud_stream_matches_device_only) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    transport *t = NULL;
    int rc, n = f.n_prompt;
    uint32_t sid = tc_open(&f, &t, 0, (uint32_t)f.L, FRAME_PART_EMBED | FRAME_PART_HEAD, FRAME_MODE_CLOUD, 256, &rc);
    REQUIRE_MSG(sid, "open: %d", rc);
    frame_msg m = {.type = FRAME_PROMPT, .session = sid};
    m.u.tokens = (frame_tokens){.pos0 = 0, .n = (uint32_t)n, .ids = f.prompt};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(tc_request(t, sid, FRAME_WANT_STREAM, (uint32_t)n, N_GEN, FRAME_KEEP_ALL), 0);
    int got = 0, ended = 0;
    while (!ended && got <= N_GEN) {
        char err[256];
        REQUIRE_MSG(!transport_expect(t, FRAME_TOKENS, &m, WAIT_MS, err, sizeof err), "stream: %s", err);
        if (m.u.tokens.n == 0) {
            CHECK_EQ_INT(m.u.tokens.pos0, n + got);
            ended = 1;
            break;
        }
        int id;
        CHECK_EQ_INT(m.u.tokens.n, 1);
        CHECK_EQ_INT(m.u.tokens.pos0, n + got); /* each streamed token carries its own position */
        frame_tokens_get(&m.u.tokens, &id, NULL, NULL);
        CHECK_EQ_INT(id, f.ref[got]);
        got++;
        if (id == f.eos) break;
    }
    int expect = N_GEN;
    for (int i = 0; i < N_GEN; i++)
        if (f.ref[i] == f.eos) {
            expect = i + 1;
            break;
        }
    CHECK_EQ_INT(got, expect);
    m = (frame_msg){.type = FRAME_CLOSE, .session = sid};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(transport_expect(t, FRAME_CLOSE, &m, WAIT_MS, NULL, 0), 0);
    transport_free(t);
    CHECK(fx_log_has(&f, "mode cloud", "ended: closed"));
    fx_free(&f);
}

/* HAT-style middle part: HIDDEN rows equal the engine's own layers [1,3) bit for bit, and kv_keep rolls back. */
TEST(test_server_hidden_rows_and_rollback) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    const int n = f.n_prompt, dim = f.dim, a = 1, b = 3;
    char err[256];
    duet_kv *kv = duet_kv_init(f.m, duet_model_part(f.m), 64, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(f.m, 16, NULL, err, sizeof err);
    float *ha = malloc(sizeof(float) * (size_t)n * dim), *hb = malloc(sizeof(float) * (size_t)n * dim); /* [n][dim] */
    REQUIRE(kv && ctx && ha && hb);
    CHECK_EQ_INT(duet_embed(ctx, f.prompt, n, ha, err, sizeof err), 0);
    CHECK_EQ_INT(duet_forward(ctx, kv, 0, a, ha, n, 0, err, sizeof err), 0);
    memcpy(hb, ha, sizeof(float) * (size_t)n * dim);
    CHECK_EQ_INT(duet_forward(ctx, kv, a, b, hb, n, 0, err, sizeof err), 0);

    transport *t = NULL;
    int rc;
    uint32_t sid = tc_open(&f, &t, a, b, 0, FRAME_MODE_HAT, 64, &rc);
    REQUIRE_MSG(sid, "open: %d", rc);
    /* {upload from, kv_keep, HIDDEN from}: all rows; a rollback by upload at 1; a rollback by kv_keep to 2 that
     * keeps row 1 readable; then new rows at 2 */
    static const uint32_t rounds[4][3] = {{0, FRAME_KEEP_ALL, 0}, {1, FRAME_KEEP_ALL, 1}, {99, 2, 1}, {2, FRAME_KEEP_ALL, 2}};
    for (int r = 0; r < 4; r++) {
        uint32_t up = rounds[r][0], keep = rounds[r][1], from = rounds[r][2], count = r == 2 ? 1 : (uint32_t)n - from;
        if (up < (uint32_t)n) CHECK_EQ_INT(tc_upload(t, sid, ha + (size_t)up * dim, up, (uint32_t)n - up, (uint32_t)dim), 0);
        frame_msg m = {.type = FRAME_REQUEST, .session = sid};
        m.u.request = (frame_request){.pos = from, .count = count, .kv_keep = keep, .want = FRAME_WANT_HIDDEN,
                                      .enc = FRAME_ENC_F32};
        CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
        REQUIRE_MSG(!transport_expect(t, FRAME_HIDDEN, &m, WAIT_MS, err, sizeof err), "round %d: %s", r, err);
        REQUIRE(m.u.rows.n == count && m.u.rows.dim == (uint32_t)dim && m.u.rows.pos0 == from);
        float *x = malloc(sizeof(float) * count * dim);
        REQUIRE(x);
        frame_rows_get(&m.u.rows, x);
        CHECK_MSG(memcmp(x, hb + (size_t)from * dim, sizeof(float) * count * dim) == 0, "round %d rows differ", r);
        free(x);
    }
    /* a TOKENS request on a part without the head is refused, not crashed */
    CHECK_EQ_INT(tc_request(t, sid, FRAME_WANT_TOKENS, 0, 1, FRAME_KEEP_ALL), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_STATE);
    transport_free(t);
    free(ha);
    free(hb);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    fx_free(&f);
}

/* ---- tests: bad input, each while a good device is being served ---- */

TEST(test_server_bad_garbage_bytes) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    good g;
    good_start(&g, &f, 2);
    uint8_t junk[FRAME_HEADER_SIZE]; /* exactly a header's worth, so the server reads all it was sent */
    for (int i = 0; i < FRAME_HEADER_SIZE; i++) junk[i] = (uint8_t)(i * 37 + 11);
    CHECK_EQ_INT(raw_exchange(&f, junk, sizeof junk, 0), FRAME_E_MAGIC);
    CHECK(fx_log_has(&f, "ended: error: bad magic", NULL));
    good_finish(&g, __LINE__);
    CHECK_EQ_INT(fx_stats(&f).errors, 1);
    fx_free(&f);
}

TEST(test_server_bad_truncated_frame) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    good g;
    good_start(&g, &f, 2);
    uint8_t buf[256];
    size_t len = hello_bytes(&f, buf, sizeof buf);
    REQUIRE(len > FRAME_HEADER_SIZE + 10);
    CHECK_EQ_INT(raw_exchange(&f, buf, len - 10, 1), FRAME_E_TRUNCATED); /* payload cut, then the sender stops */
    CHECK_EQ_INT(raw_exchange(&f, buf, 7, 1), FRAME_E_TRUNCATED);        /* header cut */
    CHECK(fx_log_has(&f, "ended: error: truncated", NULL));
    good_finish(&g, __LINE__);
    fx_free(&f);
}

TEST(test_server_bad_oversized_length) {
    server_opts o = server_opts_default();
    o.max_frame = 1 << 20;
    fixture f;
    if (fx_init(&f, &o)) return;
    good g;
    good_start(&g, &f, 2);
    frame_header h = {FRAME_MAGIC, FRAME_VERSION, FRAME_UPLOAD, 0, 0, 0, (1u << 20) + 1};
    uint8_t hb[FRAME_HEADER_SIZE];
    frame_header_encode(&h, hb);
    CHECK_EQ_INT(raw_exchange(&f, hb, sizeof hb, 0), FRAME_E_TOO_BIG);
    h.len = 0xffffffffu;
    frame_header_encode(&h, hb);
    CHECK_EQ_INT(raw_exchange(&f, hb, sizeof hb, 0), FRAME_E_TOO_BIG);
    CHECK(fx_log_has(&f, "ended: error: too big", NULL));
    good_finish(&g, __LINE__);
    fx_free(&f);
}

TEST(test_server_bad_version) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    good g;
    good_start(&g, &f, 2);
    uint8_t buf[256];
    size_t len = hello_bytes(&f, buf, sizeof buf);
    REQUIRE(len > FRAME_HEADER_SIZE);
    buf[4] = 1; /* an older header version, little-endian u16 at offset 4; only the header is sent: the server reads no more */
    CHECK_EQ_INT(raw_exchange(&f, buf, FRAME_HEADER_SIZE, 0), FRAME_E_VERSION);
    CHECK(fx_log_has(&f, "ended: error: bad version", NULL));
    good_finish(&g, __LINE__);
    fx_free(&f);
}

TEST(test_server_bad_handshake_refused) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    good g;
    good_start(&g, &f, 2);
    char err[256];
    transport *t;
    frame_hello h = hello_for(&f, 2, (uint32_t)f.L, FRAME_PART_HEAD);
    h.fingerprint ^= 1;
    CHECK_EQ_INT(tc_hello(&f, &h, &t, err, sizeof err), FRAME_E_REFUSED);
    char held[32];
    snprintf(held, sizeof held, "%016llx", (unsigned long long)duet_model_fingerprint(f.m));
    CHECK_MSG(strstr(err, "model mismatch") && !strstr(err, held), "%s", err); /* the held one is not told */
    transport_free(t);
    h = hello_for(&f, 2, (uint32_t)f.L + 1, FRAME_PART_HEAD); /* more layers than the model has */
    CHECK_EQ_INT(tc_hello(&f, &h, &t, err, sizeof err), FRAME_E_REFUSED);
    transport_free(t);
    h = hello_for(&f, 2, (uint32_t)f.L, FRAME_PART_HEAD);
    h.dim++;
    CHECK_EQ_INT(tc_hello(&f, &h, &t, err, sizeof err), FRAME_E_REFUSED);
    transport_free(t);
    CHECK(fx_log_has(&f, "ended: error: refused: handshake: model mismatch", NULL));
    good_finish(&g, __LINE__);
    CHECK_EQ_INT(fx_stats(&f).errors, 3);
    fx_free(&f);
}

TEST(test_server_bad_unknown_session) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    good g;
    good_start(&g, &f, 2);
    transport *t = NULL;
    int rc;
    uint32_t sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 64, &rc);
    REQUIRE_MSG(sid, "open: %d", rc);
    CHECK_EQ_INT(tc_request(t, sid + 1000, FRAME_WANT_TOKENS, 0, 1, FRAME_KEEP_ALL), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_SESSION);
    transport_free(t);
    /* a session frame before any OPEN */
    char err[256];
    frame_hello h = hello_for(&f, 2, (uint32_t)f.L, FRAME_PART_HEAD);
    REQUIRE(tc_hello(&f, &h, &t, err, sizeof err) == 0);
    CHECK_EQ_INT(tc_request(t, 1, FRAME_WANT_TOKENS, 0, 1, FRAME_KEEP_ALL), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_STATE);
    transport_free(t);
    CHECK(fx_log_has(&f, "ended: error: unknown session", NULL));
    good_finish(&g, __LINE__);
    fx_free(&f);
}

TEST(test_server_bad_positions) {
    server_opts o = server_opts_default();
    o.max_pending_bytes = 8 * 64 * sizeof(float); /* 8 rows of stories260K's dim 64 */
    fixture f;
    if (fx_init(&f, &o)) return;
    REQUIRE(f.dim == 64);
    good g;
    good_start(&g, &f, 2);
    float x[16 * 64] = {0};
    transport *t = NULL;
    frame_msg m;
    int rc;
    uint32_t sid;
    /* out of order: a gap after position 1 */
    REQUIRE((sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc)));
    CHECK_EQ_INT(tc_upload(t, sid, x, 0, 2, 64), 0);
    CHECK_EQ_INT(tc_upload(t, sid, x, 5, 1, 64), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_STATE);
    transport_free(t);
    /* a REQUEST for a position not uploaded yet, and one already consumed */
    REQUIRE((sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc)));
    CHECK_EQ_INT(tc_upload(t, sid, x, 0, 3, 64), 0);
    CHECK_EQ_INT(tc_request(t, sid, FRAME_WANT_TOKENS, 3, 1, FRAME_KEEP_ALL), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_STATE);
    transport_free(t);
    REQUIRE((sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc)));
    CHECK_EQ_INT(tc_upload(t, sid, x, 0, 3, 64), 0);
    CHECK_EQ_INT(tc_request(t, sid, FRAME_WANT_TOKENS, 2, 1, FRAME_KEEP_ALL), 0);
    CHECK_EQ_INT(transport_expect(t, FRAME_TOKENS, &m, WAIT_MS, NULL, 0), 0);
    CHECK_EQ_INT(tc_upload(t, sid, x, 3, 1, 64), 0);
    CHECK_EQ_INT(tc_request(t, sid, FRAME_WANT_TOKENS, 1, 1, FRAME_KEEP_ALL), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_STATE);
    transport_free(t);
    /* beyond the session's context, and over the pending-bytes limit */
    REQUIRE((sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 4, &rc)));
    CHECK_EQ_INT(tc_upload(t, sid, x, 0, 5, 64), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_LIMIT);
    transport_free(t);
    REQUIRE((sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc)));
    CHECK_EQ_INT(tc_upload(t, sid, x, 0, 8, 64), 0);
    CHECK_EQ_INT(tc_upload(t, sid, x, 8, 1, 64), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_LIMIT);
    transport_free(t);
    CHECK(fx_log_has(&f, "ended: error: limit reached", "pending"));
    good_finish(&g, __LINE__);
    CHECK_EQ_INT(fx_stats(&f).errors, 5);
    fx_free(&f);
}

TEST(test_server_bad_silent_client) {
    server_opts o = server_opts_default();
    o.handshake_timeout_ms = 300;
    fixture f;
    if (fx_init(&f, &o)) return;
    good g;
    good_start(&g, &f, 2);
    int fd = raw_connect(&f);
    REQUIRE(fd >= 0);
    CHECK_EQ_INT(raw_error(fd), FRAME_E_STATE); /* "no HELLO within 300 ms" */
    uint8_t b;
    CHECK(recv(fd, &b, 1, 0) == 0);             /* then the connection is closed */
    close(fd);
    CHECK(fx_log_has(&f, "no HELLO within 300 ms", NULL));
    good_finish(&g, __LINE__);
    fx_free(&f);
}

TEST(test_server_bad_vanish_mid_frame) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    good g;
    good_start(&g, &f, 2);
    uint8_t buf[256];
    size_t len = hello_bytes(&f, buf, sizeof buf);
    int fd = raw_connect(&f);
    REQUIRE(fd >= 0);
    CHECK(send(fd, buf, len - 20, MSG_NOSIGNAL) == (ssize_t)(len - 20));
    close(fd);
    CHECK(fx_log_has(&f, "ended: error: truncated", "HELLO payload"));
    good_finish(&g, __LINE__);
    server_stats st = fx_stats(&f);
    CHECK_EQ_INT(st.errors, 1);
    CHECK_EQ_INT(st.sessions_open, 0);
    fx_free(&f);
}

/* ---- tests: limits and lifetime ---- */

TEST(test_server_idle_timeout_frees_session) {
    server_opts o = server_opts_default();
    o.idle_timeout_ms = 300;
    fixture f;
    if (fx_init(&f, &o)) return;
    transport *t = NULL;
    int rc;
    float x[3 * 64] = {0};
    uint32_t sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc);
    REQUIRE_MSG(sid, "open: %d", rc);
    CHECK_EQ_INT(tc_upload(t, sid, x, 0, 3, (uint32_t)f.dim), 0); /* pending rows the timeout must free */
    CHECK_EQ_INT(fx_stats(&f).sessions_open, 1);
    CHECK_EQ_INT(tc_error(t), FRAME_E_LIMIT);
    CHECK(fx_log_has(&f, "ended: idle timeout", NULL));
    CHECK_EQ_INT(fx_stats(&f).sessions_open, 0);
    transport_free(t);
    fx_free(&f);
}

TEST(test_server_max_sessions) {
    server_opts o = server_opts_default();
    o.max_sessions = 2;
    fixture f;
    if (fx_init(&f, &o)) return;
    transport *t[3] = {NULL, NULL, NULL};
    int rc;
    uint32_t sid[3];
    for (int i = 0; i < 2; i++)
        CHECK((sid[i] = tc_open(&f, &t[i], 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc)) != 0);
    CHECK(sid[0] != sid[1]);
    CHECK_EQ_INT(tc_open(&f, &t[2], 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc), 0);
    CHECK_EQ_INT(rc, FRAME_E_LIMIT);
    transport_free(t[2]);
    frame_msg m = {.type = FRAME_CLOSE, .session = sid[0]};
    CHECK_EQ_INT(transport_send(t[0], &m, NULL, 0), 0);
    CHECK_EQ_INT(transport_expect(t[0], FRAME_CLOSE, &m, WAIT_MS, NULL, 0), 0);
    transport_free(t[0]);
    for (double t0 = clock_now_ms(); fx_stats(&f).sessions_open > 1 && clock_now_ms() - t0 < WAIT_MS;) sleep_ms(2);
    CHECK((sid[2] = tc_open(&f, &t[2], 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc)) != 0);
    CHECK_EQ_INT(fx_stats(&f).sessions_open, 2);
    CHECK(fx_log_has(&f, "limit of 2 sessions", NULL));
    transport_free(t[1]);
    transport_free(t[2]);
    fx_free(&f);
}

TEST(test_server_stop_with_open_sessions) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    transport *t[3] = {NULL, NULL, NULL};
    float x[4 * 64] = {0};
    int rc;
    for (int i = 0; i < 3; i++) {
        uint32_t sid = tc_open(&f, &t[i], 1 + i, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 64, &rc);
        CHECK(sid != 0);
        CHECK_EQ_INT(tc_upload(t[i], sid, x, 0, 4, (uint32_t)f.dim), 0);
    }
    for (double t0 = clock_now_ms(); fx_stats(&f).sessions_open < 3 && clock_now_ms() - t0 < WAIT_MS;) sleep_ms(2);
    CHECK_EQ_INT(fx_stats(&f).sessions_open, 3);
    server_stop(f.srv);
    server_free(f.srv); /* joins every thread and frees every session (ASan: no leaks) */
    f.srv = NULL;
    for (int i = 0; i < 3; i++) {
        frame_msg m;
        char err[256] = "";
        CHECK_EQ_INT(transport_expect(t[i], FRAME_CLOSE, &m, WAIT_MS, err, sizeof err), FRAME_E_SHUTDOWN);
        CHECK_MSG(strstr(err, "server is stopping") != NULL, "%s", err); /* the cloud says why it is done */
        transport_free(t[i]);
    }
    CHECK(fx_log_has(&f, "ended: shutdown", NULL));
    fx_free(&f);
}

TEST(test_server_cli) {
    const char *bin = getenv("DUET_BIN");
    REQUIRE_MSG(bin, "DUET_BIN is not set");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s cloud --help | grep -q -- --idle-timeout", bin);
    CHECK_EQ_INT(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s cloud -m %s --layers 4:2 2>/dev/null", bin, MODEL);
    CHECK_EQ_INT(WEXITSTATUS(system(cmd)), 2);
    snprintf(cmd, sizeof cmd, "%s cloud -m %s --max-sessions x 2>/dev/null", bin, MODEL);
    CHECK_EQ_INT(WEXITSTATUS(system(cmd)), 2);
    char path[64];
    snprintf(path, sizeof path, "/tmp/duet-test-cloud-%d.out", (int)getpid());
    snprintf(cmd, sizeof cmd, "%s cloud -m %s --port 0 --layers 2:5 --mmap > %s 2>&1 & p=$!; "
                              "for i in $(seq 50); do grep -q serving %s && break; sleep 0.1; done; kill -TERM $p; wait $p",
             bin, MODEL, path, path);
    CHECK_EQ_INT(system(cmd), 0);
    FILE *fp = fopen(path, "r");
    REQUIRE(fp);
    char out[2048] = "";
    size_t n = fread(out, 1, sizeof out - 1, fp);
    out[n] = 0;
    fclose(fp);
    remove(path);
    CHECK_MSG(strstr(out, "serving " MODEL " layers 2:5 on *:") && strstr(out, "(fingerprint "), "%s", out);
    CHECK_MSG(strstr(out, "stopped: 0 sessions"), "%s", out);
}

TEST(test_server_close_stops_a_stream) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    for (int i = 0; i < N_GEN; i++) REQUIRE_MSG(f.ref[i] != f.eos, "the reference ends early: pick another prompt");
    transport *t = NULL;
    char err[256];
    frame_hello h = hello_for(&f, 0, (uint32_t)f.L, FRAME_PART_EMBED | FRAME_PART_HEAD);
    /* a slow downlink paces the stream, so the CLOSE arrives while most tokens are still to come */
    REQUIRE(link_parse("down=100kbit", &h.link, err, sizeof err) == 0);
    REQUIRE_MSG(tc_hello(&f, &h, &t, err, sizeof err) == 0, "%s", err);
    frame_msg m = {.type = FRAME_OPEN};
    m.u.open = (frame_open){.seed = 1, .n_ctx = 256, .mode = FRAME_MODE_PD, .temperature = 0, .top_p = 1};
    REQUIRE(transport_send(t, &m, NULL, 0) == 0 && transport_expect(t, FRAME_OPENED, &m, WAIT_MS, NULL, 0) == 0);
    uint32_t sid = m.session;
    m = (frame_msg){.type = FRAME_PROMPT, .session = sid};
    m.u.tokens = (frame_tokens){.pos0 = 0, .n = (uint32_t)f.n_prompt, .ids = f.prompt};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(tc_request(t, sid, FRAME_WANT_STREAM, (uint32_t)f.n_prompt, 200, FRAME_KEEP_ALL), 0);
    REQUIRE(transport_expect(t, FRAME_TOKENS, &m, WAIT_MS, NULL, 0) == 0 && m.u.tokens.n == 1);
    int id, got = 1;
    frame_tokens_get(&m.u.tokens, &id, NULL, NULL);
    CHECK_EQ_INT(id, f.ref[0]);
    m = (frame_msg){.type = FRAME_CLOSE, .session = sid};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    for (;;) { /* tokens already on their way, then CLOSE, and no end-of-stream marker */
        REQUIRE(transport_recv(t, &m, WAIT_MS, NULL, 0) == 0);
        if (m.type == FRAME_CLOSE) break;
        REQUIRE(m.type == FRAME_TOKENS && m.u.tokens.n == 1);
        frame_tokens_get(&m.u.tokens, &id, NULL, NULL);
        if (got < N_GEN) CHECK_EQ_INT(id, f.ref[got]);
        got++;
    }
    CHECK_MSG(got < 100, "%d of 200 tokens streamed after CLOSE", got);
    transport_free(t);
    CHECK(fx_log_has(&f, "mode pd", "ended: closed"));
    fx_free(&f);
}

TEST(test_server_bad_message_order) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    good g;
    good_start(&g, &f, 2);
    char err[256];
    transport *t = NULL;
    int rc;
    /* PING is answered in any state after the handshake, with the pad asked for */
    frame_hello h = hello_for(&f, 2, (uint32_t)f.L, FRAME_PART_HEAD);
    REQUIRE(tc_hello(&f, &h, &t, err, sizeof err) == 0);
    frame_msg m = {.type = FRAME_PING};
    m.u.ping = (frame_ping){.stamp = 12345, .reply_pad = 100};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    REQUIRE(transport_expect(t, FRAME_PONG, &m, WAIT_MS, NULL, 0) == 0);
    CHECK_EQ_INT(m.u.ping.stamp, 12345);
    CHECK_EQ_INT(m.u.ping.pad, 100);
    m = (frame_msg){.type = FRAME_HELLO}; /* a second HELLO */
    m.u.hello = h;
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_STATE);
    transport_free(t);
    /* a second OPEN on one connection */
    REQUIRE(tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc));
    m = (frame_msg){.type = FRAME_OPEN};
    m.u.open = (frame_open){.n_ctx = 32, .mode = FRAME_MODE_SPLIT, .top_p = 1};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_STATE);
    transport_free(t);
    /* cloud mode on a part without the embedding; PROMPT to a session that takes hidden states */
    CHECK_EQ_INT(tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_CLOUD, 32, &rc), 0);
    CHECK_EQ_INT(rc, FRAME_E_STATE);
    transport_free(t);
    uint32_t sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 32, &rc);
    REQUIRE(sid);
    m = (frame_msg){.type = FRAME_PROMPT, .session = sid};
    m.u.tokens = (frame_tokens){.pos0 = 0, .n = (uint32_t)f.n_prompt, .ids = f.prompt};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_STATE);
    transport_free(t);
    /* a frame out of sequence (raw: HELLO numbered 5) */
    uint8_t buf[256];
    m = (frame_msg){.type = FRAME_HELLO};
    m.u.hello = h;
    size_t len = 0;
    REQUIRE(frame_encode(&m, 5, buf, sizeof buf, &len, NULL, 0) == 0);
    CHECK_EQ_INT(raw_exchange(&f, buf, FRAME_HEADER_SIZE, 0), FRAME_E_SEQ); /* the header alone: the server reads all */
    /* a token id outside the vocabulary */
    sid = tc_open(&f, &t, 0, (uint32_t)f.L, FRAME_PART_EMBED | FRAME_PART_HEAD, FRAME_MODE_CLOUD, 32, &rc);
    REQUIRE(sid);
    int bad_id = 1 << 20;
    m = (frame_msg){.type = FRAME_PROMPT, .session = sid};
    m.u.tokens = (frame_tokens){.pos0 = 0, .n = 1, .ids = &bad_id};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_BOUNDS);
    transport_free(t);
    CHECK(fx_log_has(&f, "ended: error: out of sequence", NULL));
    good_finish(&g, __LINE__);
    CHECK_EQ_INT(fx_stats(&f).errors, 6);
    fx_free(&f);
}

/* A device stalled inside a frame and one that never reads its stream hold only their own threads. */
TEST(test_server_stalled_devices_do_not_delay_others) {
    server_opts o = server_opts_default();
    o.handshake_timeout_ms = 2000; /* also bounds the wait inside a frame, so the stop below is prompt */
    fixture f;
    if (fx_init(&f, &o)) return;
    good g;
    good_start(&g, &f, 3);
    uint8_t buf[256];
    size_t len = hello_bytes(&f, buf, sizeof buf);
    int stalled = raw_connect(&f);
    REQUIRE(stalled >= 0);
    CHECK(send(stalled, buf, len - 8, MSG_NOSIGNAL) == (ssize_t)(len - 8)); /* and then nothing, socket open */
    /* a stream paced by a 10 kbit/s downlink: its server thread soon blocks on a full send queue */
    transport *t = NULL;
    char err[256];
    frame_hello h = hello_for(&f, 0, (uint32_t)f.L, FRAME_PART_EMBED | FRAME_PART_HEAD);
    REQUIRE(link_parse("down=10kbit", &h.link, err, sizeof err) == 0);
    REQUIRE_MSG(tc_hello(&f, &h, &t, err, sizeof err) == 0, "%s", err);
    frame_msg m = {.type = FRAME_OPEN};
    m.u.open = (frame_open){.seed = 1, .n_ctx = 256, .mode = FRAME_MODE_PD, .temperature = 0, .top_p = 1};
    REQUIRE(transport_send(t, &m, NULL, 0) == 0 && transport_expect(t, FRAME_OPENED, &m, WAIT_MS, NULL, 0) == 0);
    uint32_t sid = m.session;
    m = (frame_msg){.type = FRAME_PROMPT, .session = sid};
    m.u.tokens = (frame_tokens){.pos0 = 0, .n = 1, .ids = f.prompt};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(tc_request(t, sid, FRAME_WANT_STREAM, 1, 200, FRAME_KEEP_ALL), 0); /* never read */
    sleep_ms(50);
    good_finish(&g, __LINE__);
    server_stats st = fx_stats(&f);
    CHECK_EQ_INT(st.sessions_open, 1); /* the paced stream is still being served */
    CHECK_EQ_INT(st.sessions_total, 2);
    CHECK_EQ_INT(st.tokens, N_GEN);
    server_stop(f.srv); /* while one thread waits inside a frame and one on its send queue */
    server_free(f.srv);
    f.srv = NULL;
    CHECK(fx_log_has(&f, "mode pd", "ended: shutdown"));
    close(stalled);
    transport_free(t);
    fx_free(&f);
}

/* TOKENS extras equal the engine's logits; a stream ends with the session's context, marker included. */
TEST(test_server_token_fields_and_context_end) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    const duet_config *c = duet_model_config(f.m);
    const int n = f.n_prompt;
    char err[256];
    duet_kv *kv = duet_kv_init(f.m, duet_model_part(f.m), 64, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(f.m, 16, NULL, err, sizeof err);
    float *h = malloc(sizeof(float) * (size_t)n * c->dim), *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    REQUIRE(kv && ctx && h && logits);
    CHECK_EQ_INT(duet_embed(ctx, f.prompt, n, h, err, sizeof err), 0);
    CHECK_EQ_INT(duet_forward(ctx, kv, 0, c->n_layers, h, n, 0, err, sizeof err), 0);
    CHECK_EQ_INT(duet_head(ctx, h + (size_t)(n - 1) * c->dim, 1, logits, err, sizeof err), 0);
    float top = logits[0];
    for (int i = 1; i < c->vocab_size; i++) top = logits[i] > top ? logits[i] : top;
    double sum = 0;
    for (int i = 0; i < c->vocab_size; i++) sum += exp((double)(logits[i] - top));

    transport *t = NULL;
    int rc;
    uint32_t sid = tc_open(&f, &t, 0, (uint32_t)f.L, FRAME_PART_EMBED | FRAME_PART_HEAD, FRAME_MODE_CLOUD,
                           (uint32_t)n + 5, &rc);
    REQUIRE_MSG(sid, "open: %d", rc);
    frame_msg m = {.type = FRAME_PROMPT, .session = sid};
    m.u.tokens = (frame_tokens){.pos0 = 0, .n = (uint32_t)n, .ids = f.prompt};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    m = (frame_msg){.type = FRAME_REQUEST, .session = sid};
    m.u.request = (frame_request){.pos = (uint32_t)n - 1, .count = 1, .kv_keep = FRAME_KEEP_ALL,
                                  .want = FRAME_WANT_TOKENS, .fields = FRAME_TOK_CONF | FRAME_TOK_LOGIT};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    REQUIRE(transport_expect(t, FRAME_TOKENS, &m, WAIT_MS, NULL, 0) == 0 && m.u.tokens.n == 1);
    int32_t id;
    float conf = -1, logit = -1;
    frame_tokens_get(&m.u.tokens, &id, &conf, &logit);
    CHECK_EQ_INT(id, f.ref[0]);
    CHECK(logit == top);
    CHECK_NEAR(conf, 1.0 / sum, 1e-6);
    CHECK(conf > 0 && conf <= 1);
    /* n_ctx is n + 5: a stream asked for 100 tokens gives 5, then the end marker at position n + 5 */
    CHECK_EQ_INT(tc_request(t, sid, FRAME_WANT_STREAM, (uint32_t)n, 100, FRAME_KEEP_ALL), 0);
    for (int i = 0;; i++) {
        REQUIRE(transport_expect(t, FRAME_TOKENS, &m, WAIT_MS, NULL, 0) == 0);
        if (m.u.tokens.n == 0) {
            CHECK_EQ_INT(i, 5);
            CHECK_EQ_INT(m.u.tokens.pos0, n + 5);
            break;
        }
        REQUIRE(i < 5);
        frame_tokens_get(&m.u.tokens, &id, NULL, NULL);
        CHECK_EQ_INT(id, f.ref[i]);
    }
    /* the session now holds all n + 5 positions: more input is over its context */
    m = (frame_msg){.type = FRAME_PROMPT, .session = sid};
    m.u.tokens = (frame_tokens){.pos0 = (uint32_t)n + 5, .n = 1, .ids = f.prompt};
    CHECK_EQ_INT(transport_send(t, &m, NULL, 0), 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_LIMIT);
    transport_free(t);
    free(h);
    free(logits);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    fx_free(&f);
}

/* An UPLOAD of x[n][dim] at pos0 as the server's session sees it: encoded, then decoded (rows point into buf). */
static int rows_frame(uint8_t *buf, size_t cap, const float *x, uint32_t pos0, uint32_t n, uint32_t dim,
                      frame_msg *out) {
    frame_msg m = {.type = FRAME_UPLOAD, .session = 1};
    m.u.rows = (frame_rows){.pos0 = pos0, .n = n, .dim = dim, .enc = FRAME_ENC_F32, .x = x};
    size_t len;
    frame_header h;
    frame_limits lim = frame_limits_default();
    return frame_encode(&m, 0, buf, cap, &len, NULL, 0) || frame_decode(buf, len, &lim, &h, out, NULL, 0);
}

/* The context manager under a random mix of valid and invalid uploads, rollbacks, runs and reads: only the
 * documented codes, limits kept, and after it all a rollback to 0 gives the exact device-only token. */
TEST(test_server_session_random_ops) {
    char err[256];
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    REQUIRE_MSG(m, "%s", err);
    const duet_config *c = duet_model_config(m);
    const int dim = c->dim, A = 2, n_ctx = 24;
    const duet_tokenizer *tok = duet_model_tokenizer(m, err, sizeof err);
    int prompt[16], ref[1];
    int n = duet_tokenize(tok, "Once upon a time", 16, true, prompt, 16);
    REQUIRE(n > 1 && n <= 16 && ref_generate(m, prompt, n, 1, ref) == 0);
    float ha[16 * 64], x[8 * 64]; /* h_A of the prompt; random rows */
    REQUIRE(dim == 64);
    duet_part dev = {.n_spans = 1, .span = {{0, A}}, .embed = true};
    duet_kv *kv = duet_kv_init(m, &dev, 16, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(m, 16, NULL, err, sizeof err);
    REQUIRE(kv && ctx && duet_embed(ctx, prompt, n, ha, err, sizeof err) == 0 &&
            duet_forward(ctx, kv, 0, A, ha, n, 0, err, sizeof err) == 0);
    session_params p = {.part = {.n_spans = 1, .span = {{A, c->n_layers}}, .head = true}, .n_ctx = n_ctx,
                        .max_pending_bytes = 10 * 64 * sizeof(float), .sampling = {.top_p = 1}};
    session *ss = session_init(m, NULL, &p, err, sizeof err);
    REQUIRE_MSG(ss, "%s", err);
    static uint8_t buf[1 << 16];
    uint64_t rng = 42;
    int counts[4] = {0}; /* ok, STATE, LIMIT, other */
    for (int op = 0; op < 3000; op++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t r = (uint32_t)(rng >> 33), end = (uint32_t)session_end(ss);
        uint32_t pos = r % (end + 3), cnt = 1 + (r >> 8) % 7;
        frame_msg fm;
        const float *rows;
        int32_t id;
        float conf, logit;
        int rc = 0;
        switch ((r >> 16) % 5) {
        case 0:
        case 1:
            for (uint32_t i = 0; i < cnt * 64; i++) x[i] = (float)((r >> (i % 17)) % 7) * 0.25f - 0.75f;
            REQUIRE(rows_frame(buf, sizeof buf, x, pos, cnt, 64, &fm) == 0);
            rc = session_push_rows(ss, &fm.u.rows, err, sizeof err);
            break;
        case 2: session_truncate(ss, pos); break;
        case 3: rc = session_run(ss, err, sizeof err); break;
        default:
            rc = session_run(ss, err, sizeof err);
            if (!rc) rc = (r & 1) ? session_rows(ss, pos, cnt, &rows, err, sizeof err)
                                  : session_predict(ss, pos, &id, &conf, &logit, err, sizeof err);
            if (!rc && !(r & 1)) CHECK(id >= 0 && id < c->vocab_size && conf > 0 && conf <= 1);
        }
        CHECK_MSG(rc == 0 || rc == FRAME_E_STATE || rc == FRAME_E_LIMIT, "op %d: %d %s", op, rc, err);
        counts[rc == 0 ? 0 : rc == FRAME_E_STATE ? 1 : rc == FRAME_E_LIMIT ? 2 : 3]++;
        CHECK(session_end(ss) <= n_ctx && session_pending_bytes(ss) <= p.max_pending_bytes);
    }
    CHECK(counts[0] > 1000 && counts[1] > 50 && counts[2] > 10); /* every path was taken */
    session_truncate(ss, 0);
    frame_msg fm;
    int32_t id;
    REQUIRE(rows_frame(buf, sizeof buf, ha, 0, (uint32_t)n, 64, &fm) == 0);
    CHECK_EQ_INT(session_push_rows(ss, &fm.u.rows, err, sizeof err), 0);
    CHECK_EQ_INT(session_run(ss, err, sizeof err), 0);
    CHECK_EQ_INT(session_predict(ss, (uint32_t)n - 1, &id, NULL, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(id, ref[0]);
    session_counters sc;
    session_counters_get(ss, &sc);
    CHECK(sc.positions >= (uint64_t)n);
    session_free(ss);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    duet_model_free(m);
}

/* ---- issue 13: bounded resources, prompt shutdown ---- */

typedef struct trickle {
    int fd;
    uint8_t b[128];
    size_t n;
    int gap_ms;
} trickle;

static void *trickle_main(void *arg) {
    trickle *k = arg;
    for (size_t i = 0; i < k->n; i++) {
        if (send(k->fd, k->b + i, 1, MSG_NOSIGNAL) != 1) break;
        sleep_ms(k->gap_ms);
    }
    return NULL;
}

/* A HELLO trickled a byte every 100 ms (each read well within any per-read timeout) is cut off by the
 * whole-handshake deadline, with an ERROR, while a real device is served. */
TEST(test_server_trickled_hello_meets_the_handshake_deadline) {
    server_opts o = server_opts_default();
    o.handshake_timeout_ms = 400;
    fixture f;
    if (fx_init(&f, &o)) return;
    good g;
    good_start(&g, &f, 2);
    trickle k = {.fd = raw_connect(&f), .gap_ms = 100};
    REQUIRE(k.fd >= 0);
    k.n = hello_bytes(&f, k.b, sizeof k.b); /* 76 bytes: 7.6 s at this pace */
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, trickle_main, &k) == 0);
    CHECK_EQ_INT(raw_error(k.fd), FRAME_E_STATE); /* "no HELLO within 400 ms" */
    shutdown(k.fd, SHUT_RDWR);
    pthread_join(th, NULL);
    close(k.fd);
    CHECK(fx_log_has(&f, "no HELLO within 400 ms", NULL));
    good_finish(&g, __LINE__);
    fx_free(&f);
}

TEST(test_server_per_address_cap) {
    server_opts o = server_opts_default();
    o.max_per_address = 2;
    fixture f;
    if (fx_init(&f, &o)) return;
    int fd[3];
    for (int i = 0; i < 2; i++) REQUIRE((fd[i] = raw_connect(&f)) >= 0); /* accepted in order, before the third */
    REQUIRE((fd[2] = raw_connect(&f)) >= 0);
    CHECK_EQ_INT(raw_error(fd[2]), FRAME_E_LIMIT);
    CHECK(fx_log_has(&f, "connection refused", "limit per address"));
    for (int i = 0; i < 3; i++) close(fd[i]);
    fx_free(&f);
}

/* Link parameters in a HELLO are bounded like --link; a frame the requested link could not deliver within
 * the idle timeout is refused at once (1 bit/s and a 1 MiB PONG used to pin the thread and the memory). */
TEST(test_server_hello_link_bounds_and_slow_link_refusals) {
    fixture f;
    if (fx_init(&f, NULL)) return;
    transport *t = NULL;
    char err[256] = "";
    frame_hello h = hello_for(&f, 2, (uint32_t)f.L, FRAME_PART_HEAD);
    h.link.rtt_us = LINK_MAX_TIME_US + 1;
    CHECK_EQ_INT(tc_hello(&f, &h, &t, err, sizeof err), FRAME_E_BOUNDS);
    CHECK_MSG(strstr(err, "rtt 60000001 us") != NULL, "%s", err);
    transport_free(t);

    h = hello_for(&f, 2, (uint32_t)f.L, FRAME_PART_HEAD);
    h.link.down_bps = 1; /* HELLO_OK alone would take 608 s */
    CHECK_EQ_INT(tc_hello(&f, &h, &t, err, sizeof err), FRAME_E_LIMIT);
    CHECK_MSG(strstr(err, "emulated link") != NULL, "%s", err);
    transport_free(t);

    h.link.down_bps = 8000; /* 1 kB/s: HELLO_OK fits, a 1 MiB PONG would take 17 minutes */
    REQUIRE_MSG(tc_hello(&f, &h, &t, err, sizeof err) == 0, "%s", err);
    frame_msg m = {.type = FRAME_PING};
    m.u.ping.reply_pad = 1 << 20;
    REQUIRE(transport_send(t, &m, NULL, 0) == 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_LIMIT);
    transport_free(t);
    CHECK(fx_log_has(&f, "cannot send PONG", "emulated link"));
    CHECK_EQ_INT(fx_stats(&f).sessions_open, 0);
    fx_free(&f);
}

/* The memory budget covers output (a huge PONG), input (a huge PING) and pending input across sessions. */
TEST(test_server_memory_budget) {
    server_opts o = server_opts_default();
    o.memory_budget = 100 << 10;
    fixture f;
    if (fx_init(&f, &o)) return;
    transport *t = NULL;
    char err[256] = "";
    frame_hello h = hello_for(&f, 2, (uint32_t)f.L, FRAME_PART_HEAD);
    REQUIRE(tc_hello(&f, &h, &t, err, sizeof err) == 0);
    frame_msg m = {.type = FRAME_PING};
    m.u.ping.reply_pad = 1 << 20;
    REQUIRE(transport_send(t, &m, NULL, 0) == 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_LIMIT);
    transport_free(t);
    CHECK(fx_log_has(&f, "cannot send PONG", "memory budget"));

    REQUIRE(tc_hello(&f, &h, &t, err, sizeof err) == 0);
    m = (frame_msg){.type = FRAME_PING};
    m.u.ping.pad = 1 << 20;
    REQUIRE(transport_send(t, &m, NULL, 0) == 0);
    CHECK_EQ_INT(tc_error(t), FRAME_E_LIMIT);
    transport_free(t);

    int rc;
    uint32_t sid = tc_open(&f, &t, 2, (uint32_t)f.L, FRAME_PART_HEAD, FRAME_MODE_SPLIT, 500, &rc);
    REQUIRE_MSG(sid, "open: %d", rc);
    static float x[250 * 64];
    CHECK_EQ_INT(tc_upload(t, sid, x, 0, 250, (uint32_t)f.dim), 0);   /* 64000 bytes pending: fits */
    CHECK_EQ_INT(tc_upload(t, sid, x, 250, 250, (uint32_t)f.dim), 0); /* 128000: over 102400 */
    CHECK_EQ_INT(tc_error(t), FRAME_E_LIMIT);
    CHECK(fx_log_has(&f, "pending input of 128000 bytes", NULL));
    transport_free(t);
    for (double t0 = clock_now_ms(); fx_stats(&f).sessions_open && clock_now_ms() - t0 < WAIT_MS;) sleep_ms(2);
    CHECK_EQ_INT(fx_stats(&f).sessions_open, 0);
    fx_free(&f);
}

/* server_stop ends every connection promptly whatever its client does: silent in the handshake, trickling a
 * frame, never reading its huge answers. The idle and handshake timeouts are a minute and a frame in progress
 * may take 10 s, so only the stop flag in every wait explains a prompt end; the 5 s bound is loose on purpose
 * (it takes ~0.1-0.4 s; the CLI's 2 s is checked by `make soak`). */
TEST(test_server_stop_is_prompt_whatever_clients_do) {
    server_opts o = server_opts_default();
    o.idle_timeout_ms = o.handshake_timeout_ms = 60000;
    fixture f;
    if (fx_init(&f, &o)) return;
    int silent = raw_connect(&f);
    REQUIRE(silent >= 0);
    transport *reader = NULL, *tr = NULL;
    char err[256] = "";
    frame_hello h = hello_for(&f, 2, (uint32_t)f.L, FRAME_PART_HEAD);
    REQUIRE(tc_hello(&f, &h, &reader, err, sizeof err) == 0);
    for (int i = 0; i < 24; i++) { /* 24 PONGs of 4 MiB that are never read: queue and socket full */
        frame_msg m = {.type = FRAME_PING};
        m.u.ping.reply_pad = 4 << 20;
        REQUIRE(transport_send(reader, &m, NULL, 0) == 0);
    }
    REQUIRE(tc_hello(&f, &h, &tr, err, sizeof err) == 0);
    frame_msg p = {.type = FRAME_PING};
    p.u.ping.pad = 1000;
    REQUIRE(transport_send(tr, &p, NULL, 0) == 0);
    transport_flush(tr, WAIT_MS, NULL, 0);
    /* the trickler: a PING header claiming more bytes than ever come */
    trickle k = {.fd = raw_connect(&f), .gap_ms = 200};
    REQUIRE(k.fd >= 0);
    k.n = hello_bytes(&f, k.b, sizeof k.b);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, trickle_main, &k) == 0);
    sleep_ms(300);
    double t0 = clock_now_ms();
    server_stop(f.srv);
    server_free(f.srv);
    double ms = clock_now_ms() - t0;
    f.srv = NULL;
    CHECK_MSG(ms < 5000, "the stop took %.0f ms", ms); /* without the stop flag in every wait: 10 s (io timeout) */
    CHECK(fx_log_has(&f, "ended: shutdown", NULL));
    shutdown(k.fd, SHUT_RDWR);
    pthread_join(th, NULL);
    close(k.fd);
    close(silent);
    transport_free(reader);
    transport_free(tr);
    fx_free(&f);
}
