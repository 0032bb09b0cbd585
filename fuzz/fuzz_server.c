/* fuzz_server: the cloud server's per-connection state machine, driven by sequences of frames. Each input is
 * one connection (a socketpair end handed to server_adopt) and a script of records, each one frame: a
 * well-formed frame of any type whose fields come from the input (so sequences reach OPENED sessions,
 * uploads, requests and streams), a frame with a raw payload, raw garbage, or a frame with a wrong sequence
 * number or session. The fuzzer reads the server's answers as it writes, learns the session id from OPENED,
 * then closes its end; the server must end the connection (EOF) within 3 s whatever came before, and
 * ASan/UBSan watch everything in between. Run from the repository root (it loads models/stories260K.gguf):
 *     build-fuzz/fuzz_server -max_total_time=600 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/clock.h"
#include "cloud/server.h"
#include "duet.h"
#include "net/frame.h"

static duet_model *g_model;
static cloud_server *g_srv;
static uint64_t g_fp;
static int g_dim, g_layers, g_vocab, g_trace;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char err[256];
    if (!(g_model = duet_model_load("models/stories260K.gguf", NULL, 0, err, sizeof err))) {
        fprintf(stderr, "fuzz_server: %s (run from the repository root)\n", err);
        exit(1);
    }
    const duet_config *c = duet_model_config(g_model);
    g_dim = c->dim;
    g_layers = c->n_layers;
    g_vocab = c->vocab_size;
    g_fp = duet_model_fingerprint(g_model);
    g_trace = getenv("FUZZ_SERVER_TRACE") != NULL;
    server_opts o = server_opts_default();
    o.host = "127.0.0.1";
    o.max_ctx = 64;
    o.max_frame = 1 << 20;
    o.max_pending_bytes = 16 << 10;
    o.memory_budget = 4 << 20;
    o.idle_timeout_ms = 2000;
    o.handshake_timeout_ms = 1000;
    if (!(g_srv = server_init(g_model, &o, err, sizeof err))) {
        fprintf(stderr, "fuzz_server: %s\n", err);
        exit(1);
    }
    return 0;
}

/* ---- reading the input ---- */

typedef struct in {
    const uint8_t *p;
    size_t n;
} in;

static uint32_t take(in *r, int bytes) {
    uint32_t v = 0;
    for (int i = 0; i < bytes && r->n; i++, r->p++, r->n--) v |= (uint32_t)*r->p << (8 * i);
    return v;
}

static float take_float(in *r) {
    uint8_t b = (uint8_t)take(r, 1);
    if (b == 255) return NAN;
    if (b == 254) return INFINITY;
    return ((int)b - 128) / 16.0f;
}

/* ---- the connection ---- */

typedef struct conn {
    int fd;
    uint8_t out[1 << 16]; /* [n_out] bytes still to write */
    size_t n_out, off;
    uint8_t resp[1 << 17]; /* [n_resp] the server's answers not yet parsed */
    size_t n_resp;
    size_t skip;           /* bytes of a too-large frame still to drop */
    uint32_t sid;          /* from OPENED */
    int answered;          /* an OPENED or ERROR was parsed since the last OPEN */
    int eof;
} conn;

/* Parses the whole frames at the front of c->resp. A frame too big to hold (a large PONG: its bytes are not
 * interesting) is skipped byte for byte as it arrives, so parsing stays aligned on frame boundaries. */
static void parse(conn *c) {
    frame_limits lim = frame_limits_default();
    for (;;) {
        if (c->skip) {
            size_t k = c->skip < c->n_resp ? c->skip : c->n_resp;
            memmove(c->resp, c->resp + k, c->n_resp - k);
            c->n_resp -= k;
            c->skip -= k;
            if (c->skip) return;
        }
        if (c->n_resp < FRAME_HEADER_SIZE) return;
        frame_header h;
        if (frame_header_decode(c->resp, c->n_resp, &lim, &h, NULL, 0)) abort(); /* the server sends valid frames */
        size_t whole = FRAME_HEADER_SIZE + (size_t)h.len;
        if (whole > sizeof c->resp) {
            c->skip = whole;
            continue;
        }
        if (c->n_resp < whole) return;
        frame_msg m;
        if (frame_payload_decode(&h, c->resp + FRAME_HEADER_SIZE, &lim, &m, NULL, 0)) abort();
        if (m.type == FRAME_OPENED) c->sid = m.session;
        if (m.type == FRAME_OPENED || m.type == FRAME_ERROR) c->answered = 1;
        if (g_trace) /* FUZZ_SERVER_TRACE=1: what the server answered, to check that seeds go deep */
            fprintf(stderr, "<- %s%s%.*s\n", frame_type_name(m.type), m.type == FRAME_ERROR ? ": " : "",
                    m.type == FRAME_ERROR ? (int)m.u.error.len : 0, m.type == FRAME_ERROR ? m.u.error.text : "");
        memmove(c->resp, c->resp + whole, c->n_resp - whole);
        c->n_resp -= whole;
    }
}

/* Reads what the server sent, parsing as it arrives (to learn the session id). */
static void drain(conn *c) {
    for (;;) {
        ssize_t r = recv(c->fd, c->resp + c->n_resp, sizeof c->resp - c->n_resp, MSG_DONTWAIT);
        if (r == 0) c->eof = 1;
        if (r <= 0) break;
        c->n_resp += (size_t)r;
        parse(c);
    }
}

/* Writes c->out while reading answers; then waits up to ms for an answer to begin (0: just what is there). */
static void pump(conn *c, int ms) {
    double end = clock_now_ms() + 3000;
    while (!c->eof && c->off < c->n_out && clock_now_ms() < end) {
        struct pollfd p = {c->fd, POLLIN | POLLOUT, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) drain(c);
        if (p.revents & POLLOUT) {
            ssize_t w = send(c->fd, c->out + c->off, c->n_out - c->off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) c->off += (size_t)w;
            else if (w < 0 && errno != EAGAIN) c->eof = 1;
        }
    }
    drain(c);
    for (double until = clock_now_ms() + ms; !c->eof && !c->answered && clock_now_ms() < until;) {
        struct pollfd p = {c->fd, POLLIN, 0};
        if (poll(&p, 1, (int)(until - clock_now_ms()) + 1) > 0) drain(c);
    }
}

static float g_rows[8 * 64];
static int32_t g_ids[16];

/* One frame of `type` with fields from the input. */
static void build(in *r, conn *c, int type, frame_msg *m) {
    memset(m, 0, sizeof *m);
    m->type = (uint8_t)type;
    uint32_t pick = take(r, 1);
    m->session = (pick & 3) == 0 ? 0 : (pick & 3) == 1 ? c->sid : (pick & 3) == 2 ? c->sid + 1 : take(r, 4);
    switch (type) {
    case FRAME_HELLO:
    case FRAME_HELLO_OK: {
        frame_hello *h = &m->u.hello;
        static const uint32_t parts[][3] = {{0, 0, 3}, {2, 0, 2}, {1, 3, 0}, {0, 0, 2}, {3, 0, 1}};
        const uint32_t *pp = parts[take(r, 1) % 5];
        h->fingerprint = take(r, 1) == 7 ? g_fp ^ 1 : g_fp;
        h->dim = take(r, 1) == 9 ? (uint32_t)g_dim + 1 : (uint32_t)g_dim;
        h->layer_a = pp[0];
        h->layer_b = pp[1] ? pp[1] : (uint32_t)g_layers;
        h->part = (uint8_t)pp[2];
        h->version = FRAME_VERSION;
        h->encodings = (uint8_t)(take(r, 1) & 7);
        if (take(r, 1) == 3) { /* a small emulated link: timing paths, no long waits */
            h->link.rtt_us = take(r, 1) * 10;
            h->link.jitter_us = take(r, 1) * 5;
            h->link.down_bps = 1000000;
        }
        break;
    }
    case FRAME_OPEN:
        m->u.open = (frame_open){.seed = take(r, 2), .n_ctx = take(r, 1) % 80 + 1, .mode = take(r, 1) % 7,
                                 .temperature = take(r, 1) % 3 ? 0 : 0.8f, .top_p = take(r, 1) % 2 ? 1 : 0.9f,
                                 .top_k = (int32_t)(take(r, 1) % 8)};
        break;
    case FRAME_PROMPT:
    case FRAME_TOKENS: {
        uint32_t n = take(r, 1) % 8 + 1;
        for (uint32_t i = 0; i < n; i++) g_ids[i] = (int32_t)(take(r, 1) % 4 == 0 ? take(r, 2) : take(r, 1)) % (g_vocab + 8);
        m->u.tokens = (frame_tokens){.pos0 = take(r, 1) % 72, .n = n, .ids = g_ids};
        break;
    }
    case FRAME_UPLOAD:
    case FRAME_HIDDEN: {
        uint32_t n = take(r, 1) % 8 + 1, dim = take(r, 1) == 5 ? (uint32_t)g_dim / 2 : (uint32_t)g_dim;
        for (uint32_t i = 0; i < n * dim; i++) g_rows[i] = i < 16 ? take_float(r) : g_rows[i % 16];
        uint32_t enc = take(r, 1) % 3;
        if (enc == FRAME_ENC_I8)
            for (uint32_t i = 0; i < n * dim; i++)
                if (!isfinite(g_rows[i])) g_rows[i] = 1;
        m->u.rows = (frame_rows){.pos0 = take(r, 1) % 72, .n = n, .dim = dim, .enc = enc, .x = g_rows};
        break;
    }
    case FRAME_REQUEST: {
        uint8_t want = (uint8_t)(take(r, 1) % 3 + 1);
        uint32_t keep = take(r, 1);
        m->u.request = (frame_request){.pos = take(r, 1) % 72, .count = take(r, 1) % 16 + 1,
                                       .kv_keep = keep < 200 ? FRAME_KEEP_ALL : keep % 72, .want = want,
                                       .enc = want == FRAME_WANT_HIDDEN ? (uint8_t)(take(r, 1) % 3) : 0,
                                       .fields = want == FRAME_WANT_HIDDEN ? 0 : (uint8_t)(take(r, 1) % 4)};
        break;
    }
    case FRAME_PING:
    case FRAME_PONG: {
        uint32_t big = take(r, 1);
        m->u.ping = (frame_ping){.stamp = take(r, 4), .pad = take(r, 1),
                                 .reply_pad = type == FRAME_PONG ? 0 : big == 255 ? (8u << 20) : big * 64};
        break;
    }
    case FRAME_ERROR: frame_error_msg(m, m->session, -100 - (int)(take(r, 1) % 20), "fuzz"); break;
    case FRAME_OPENED: m->u.opened.n_ctx = take(r, 1) + 1; break;
    case FRAME_AUTH: m->u.auth = (frame_auth){.len = 4, .token = (const uint8_t *)"fuzz"}; break;
    default: break; /* CLOSE */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) return 0;
    char err[256];
    if (server_adopt(g_srv, sv[1], err, sizeof err)) {
        close(sv[0]);
        return 0;
    }
    static conn c;
    memset(&c, 0, sizeof c);
    c.fd = sv[0];
    in r = {data, size};
    uint32_t seq = 0;
    for (int frames = 0; r.n && frames < 32 && !c.eof; frames++) {
        uint32_t op = take(&r, 1);
        c.n_out = c.off = 0;
        if ((op & 15) == 14) { /* raw garbage */
            uint32_t n = take(&r, 1);
            for (uint32_t i = 0; i < n && r.n; i++) c.out[c.n_out++] = (uint8_t)take(&r, 1);
        } else if ((op & 15) == 15) { /* a valid header over a payload of raw bytes */
            uint32_t n = take(&r, 1), type = take(&r, 1) % 15;
            frame_header h = {FRAME_MAGIC, FRAME_VERSION, (uint8_t)type, 0, c.sid, seq++, n};
            frame_header_encode(&h, c.out);
            c.n_out = FRAME_HEADER_SIZE;
            for (uint32_t i = 0; i < n && r.n; i++) c.out[c.n_out++] = (uint8_t)take(&r, 1);
        } else {
            frame_msg m;
            build(&r, &c, (int)(op & 15) % 14 + 1, &m);
            c.answered = 0;
            size_t len = 0;
            uint32_t s = op & 0x40 ? seq + (op >> 7) + 1 : seq; /* now and then out of sequence */
            if (frame_encode(&m, s, c.out, sizeof c.out, &len, NULL, 0)) continue;
            c.n_out = len;
            seq++;
        }
        /* after an OPEN wait for its answer (OPENED's session id), unless the input says not to */
        pump(&c, (op & 15) % 14 + 1 == FRAME_OPEN && (op & 15) < 14 && !(op & 0x20) ? 200 : 0);
    }
    shutdown(c.fd, SHUT_WR);
    /* the device is gone: the server must close within 3 s whatever state the connection was in */
    double end = clock_now_ms() + 3000;
    while (!c.eof && clock_now_ms() < end) {
        struct pollfd p = {c.fd, POLLIN, 0};
        if (poll(&p, 1, 50) > 0) drain(&c);
    }
    if (!c.eof) {
        fprintf(stderr, "fuzz_server: the connection was not closed 3 s after the device closed its end\n");
        abort();
    }
    close(c.fd);
    return 0;
}
