#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "duet.h"
#include "net/transport.h"
#include "test.h"

/* A device connection and the cloud connection it was accepted as, over loopback. */
typedef struct pair {
    transport_listener *l;
    transport *dev, *cloud;
} pair;

static int pair_open(pair *p, const link_params *dev_link, const link_params *cloud_link, int io_timeout_ms) {
    char err[256];
    memset(p, 0, sizeof *p);
    p->l = transport_listen("127.0.0.1", 0, err, sizeof err);
    if (!p->l) return test_fail(__FILE__, __LINE__, "listen: %s", err), -1;
    transport_opts d = transport_opts_default(LINK_UP), c = transport_opts_default(LINK_DOWN);
    if (dev_link) d.link = *dev_link;
    if (cloud_link) c.link = *cloud_link;
    d.io_timeout_ms = c.io_timeout_ms = io_timeout_ms;
    p->dev = transport_connect("127.0.0.1", transport_listener_port(p->l), &d, err, sizeof err);
    if (!p->dev) return test_fail(__FILE__, __LINE__, "connect: %s", err), -1;
    if (transport_accept(p->l, &c, 5000, &p->cloud, err, sizeof err) != 0)
        return test_fail(__FILE__, __LINE__, "accept: %s", err), -1;
    return 0;
}

static void pair_close(pair *p) {
    transport_free(p->dev);
    transport_free(p->cloud);
    transport_listener_free(p->l);
}

/* ---- a minimal cloud: handshake (optional), then PING -> PONG, UPLOAD -> noted, CLOSE -> CLOSE ---- */

typedef struct echo {
    transport *t;
    const frame_hello *have; /* NULL: no handshake */
    int hello_rc;
    char hello_err[256];
    int uploads;
    double upload_at; /* clock_now_ms when the last UPLOAD was received */
    int rc;           /* how the loop ended: 0 after CLOSE */
} echo;

static void *echo_main(void *arg) {
    echo *e = arg;
    char err[256];
    if (e->have) {
        e->hello_rc = transport_hello_answer(e->t, e->have, NULL, 5000, e->hello_err, sizeof e->hello_err);
        if (e->hello_rc) return NULL;
    }
    for (;;) {
        frame_msg m;
        int rc = transport_recv(e->t, &m, 10000, err, sizeof err);
        if (rc) {
            e->rc = rc;
            return NULL;
        }
        if (m.type == FRAME_PING) {
            frame_msg r = {.type = FRAME_PONG, .session = m.session};
            r.u.ping.stamp = m.u.ping.stamp;
            r.u.ping.pad = m.u.ping.reply_pad;
            transport_send(e->t, &r, err, sizeof err);
        } else if (m.type == FRAME_UPLOAD) {
            e->upload_at = clock_now_ms();
            e->uploads++;
        } else if (m.type == FRAME_CLOSE) {
            frame_msg r = {.type = FRAME_CLOSE, .session = m.session};
            transport_send(e->t, &r, err, sizeof err);
            transport_flush(e->t, 5000, err, sizeof err);
            e->rc = 0;
            return NULL;
        }
    }
}

static int ping(transport *t, uint64_t stamp, uint32_t reply_pad, char *err, size_t errlen) {
    frame_msg m = {.type = FRAME_PING};
    m.u.ping.stamp = stamp;
    m.u.ping.reply_pad = reply_pad;
    int rc = transport_send(t, &m, err, errlen);
    if (!rc) rc = transport_expect(t, FRAME_PONG, &m, 10000, err, errlen);
    if (!rc && m.u.ping.stamp != stamp) rc = -1;
    return rc;
}

static void close_session(transport *t) {
    char err[256];
    frame_msg m = {.type = FRAME_CLOSE};
    CHECK(transport_send(t, &m, err, sizeof err) == 0);
    CHECK_MSG(transport_expect(t, FRAME_CLOSE, &m, 10000, err, sizeof err) == 0, "%s", err);
}

TEST(test_transport_messages_and_counters) {
    pair p;
    REQUIRE(pair_open(&p, NULL, NULL, 5000) == 0);
    char err[256];
    float x[3 * 8];
    for (int i = 0; i < 24; i++) x[i] = (float)i * 0.5f - 3.0f; /* exact in fp16 */
    int32_t ids[4] = {1, 450, 31999, 2};
    frame_msg m = {.type = FRAME_UPLOAD, .session = 7};
    m.u.rows = (frame_rows){.pos0 = 12, .n = 3, .dim = 8, .enc = FRAME_ENC_F16, .x = x};
    REQUIRE(transport_send(p.dev, &m, err, sizeof err) == 0);
    m = (frame_msg){.type = FRAME_PROMPT, .session = 7};
    m.u.tokens = (frame_tokens){.pos0 = 0, .n = 4, .ids = ids};
    REQUIRE(transport_send(p.dev, &m, err, sizeof err) == 0);
    m = (frame_msg){.type = FRAME_REQUEST, .session = 7};
    m.u.request = (frame_request){.pos = 14, .count = 1, .kv_keep = FRAME_KEEP_ALL, .want = FRAME_WANT_TOKENS,
                                  .fields = FRAME_TOK_CONF};
    REQUIRE(transport_send(p.dev, &m, err, sizeof err) == 0);
    REQUIRE(transport_flush(p.dev, 5000, err, sizeof err) == 0);
    uint64_t up = 3 * FRAME_HEADER_SIZE + (20 + 3 * 8 * 2) + (16 + 4 * 4) + 16;

    frame_msg g;
    REQUIRE_MSG(transport_expect(p.cloud, FRAME_UPLOAD, &g, 5000, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(g.session, 7);
    CHECK_EQ_INT(g.u.rows.pos0, 12);
    float y[24];
    frame_rows_get(&g.u.rows, y);
    CHECK(memcmp(x, y, sizeof x) == 0);
    REQUIRE(transport_expect(p.cloud, FRAME_PROMPT, &g, 5000, err, sizeof err) == 0);
    int32_t gi[4];
    frame_tokens_get(&g.u.tokens, gi, NULL, NULL);
    CHECK(memcmp(gi, ids, sizeof ids) == 0);
    REQUIRE(transport_expect(p.cloud, FRAME_REQUEST, &g, 5000, err, sizeof err) == 0);
    CHECK_EQ_INT(g.u.request.pos, 14);

    int32_t tok = 99;
    float conf = 0.75f;
    m = (frame_msg){.type = FRAME_TOKENS, .session = 7};
    m.u.tokens = (frame_tokens){.pos0 = 14, .n = 1, .fields = FRAME_TOK_CONF, .ids = &tok, .conf = &conf};
    REQUIRE(transport_send(p.cloud, &m, err, sizeof err) == 0);
    REQUIRE(transport_expect(p.dev, FRAME_TOKENS, &g, 5000, err, sizeof err) == 0);
    float gc;
    frame_tokens_get(&g.u.tokens, gi, &gc, NULL);
    CHECK(gi[0] == 99 && gc == 0.75f);
    uint64_t down = FRAME_HEADER_SIZE + 16 + 8;

    transport_stats ds, cs;
    transport_stats_get(p.dev, &ds);
    transport_stats_get(p.cloud, &cs);
    CHECK_EQ_INT(ds.bytes_up, up);
    CHECK_EQ_INT(ds.bytes_down, down);
    CHECK_EQ_INT(cs.bytes_up, up); /* the cloud names directions the same way */
    CHECK_EQ_INT(cs.bytes_down, down);
    CHECK_EQ_INT(ds.frames_up, 3);
    CHECK_EQ_INT(ds.frames_down, 1);
    CHECK_EQ_INT(cs.frames_up, 3);
    CHECK_EQ_INT(ds.round_trips, 1); /* three sends, then one receive */
    CHECK_EQ_INT(cs.round_trips, 0); /* the cloud received before it ever sent */
    pair_close(&p);
}

TEST(test_transport_ping_pong_rtt) {
    enum { N = 10 };
    link_params lp = {.rtt_us = 20000};
    pair p;
    REQUIRE(pair_open(&p, &lp, &lp, 5000) == 0);
    echo e = {.t = p.cloud};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, echo_main, &e) == 0);
    char err[256];
    double t0 = clock_now_ms();
    for (int i = 0; i < N; i++) CHECK_MSG(ping(p.dev, (uint64_t)i, 0, err, sizeof err) == 0, "%s", err);
    double ms = clock_now_ms() - t0;
    close_session(p.dev);
    pthread_join(th, NULL);
    CHECK_EQ_INT(e.rc, 0);
    /* Each round trip is rtt/2 up plus rtt/2 down, so N of them take at least N x rtt; a loaded machine only adds. */
    CHECK_MSG(ms >= N * 20.0, "%d round trips at rtt 20 ms took %.1f ms", N, ms);
    transport_stats s;
    transport_stats_get(p.dev, &s);
    CHECK_EQ_INT(s.round_trips, N + 1); /* + the CLOSE exchange */
    CHECK_EQ_INT(s.frames_up, N + 1);
    CHECK_EQ_INT(s.bytes_up, N * (FRAME_HEADER_SIZE + FRAME_PING_SIZE) + FRAME_HEADER_SIZE);
    CHECK_MSG(s.comm_wait_ms >= N * 20.0 - 1.0, "comm_wait_ms %.1f", s.comm_wait_ms);
    pair_close(&p);
}

TEST(test_transport_upload_bandwidth) {
    enum { ROWS = 1000, DIM = 500 }; /* fp32: 2,000,000 bytes of rows */
    link_params lp = {.up_bps = 20000000, .down_bps = 50000000, .rtt_us = 20000};
    pair p;
    REQUIRE(pair_open(&p, &lp, &lp, 5000) == 0);
    float *x = calloc((size_t)ROWS * DIM, sizeof *x);
    REQUIRE(x);
    echo e = {.t = p.cloud};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, echo_main, &e) == 0);
    char err[256];
    frame_msg m = {.type = FRAME_UPLOAD, .session = 1};
    m.u.rows = (frame_rows){.pos0 = 0, .n = ROWS, .dim = DIM, .enc = FRAME_ENC_F32, .x = x};
    size_t bytes = FRAME_HEADER_SIZE + 20 + (size_t)ROWS * DIM * 4;
    double expect = bytes * 8.0 / 20e6 * 1e3 + 10.0; /* serialization + rtt/2 */
    double t0 = clock_now_ms();
    REQUIRE_MSG(transport_send(p.dev, &m, err, sizeof err) == 0, "%s", err);
    double handed = clock_now_ms() - t0;
    REQUIRE(transport_flush(p.dev, 10000, err, sizeof err) == 0);
    close_session(p.dev);
    pthread_join(th, NULL);
    CHECK_EQ_INT(e.uploads, 1);
    double took = e.upload_at - t0;
    /* The link can never deliver early; how late it is depends on the machine's load, so only the floor is a
     * test. The caller got control back before the upload was delivered (parallel upload): compared with the
     * delivery time itself, not with a fixed budget, so that a loaded machine slows both alike. */
    CHECK_MSG(took >= expect, "2 MB at 20 Mbit/s arrived after %.1f ms, expected >= %.1f", took, expect);
    CHECK_MSG(handed < took / 2, "send blocked %.1f ms of the %.1f ms the upload took", handed, took);
    transport_stats s;
    transport_stats_get(p.dev, &s);
    CHECK_EQ_INT(s.bytes_up, bytes + FRAME_HEADER_SIZE);
    transport_stats_get(p.cloud, &s);
    CHECK_EQ_INT(s.bytes_up, bytes + FRAME_HEADER_SIZE);
    free(x);
    pair_close(&p);
}

static frame_hello hello_of(uint64_t fp) {
    frame_hello h = {.fingerprint = fp, .dim = 64, .layer_a = 1, .layer_b = 4, .version = FRAME_VERSION,
                     .part = FRAME_PART_HEAD, .encodings = 1u << FRAME_ENC_F16};
    return h;
}

TEST(test_transport_handshake_applies_link) {
    pair p;
    REQUIRE(pair_open(&p, NULL, NULL, 5000) == 0); /* the cloud starts with no link: HELLO brings it */
    frame_hello have = hello_of(0x5eed);
    echo e = {.t = p.cloud, .have = &have};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, echo_main, &e) == 0);
    char err[256];
    frame_hello want = hello_of(0x5eed), got;
    want.link.rtt_us = 30000;
    want.encodings = FRAME_ENC_ALL;
    REQUIRE_MSG(transport_hello(p.dev, &want, &got, 5000, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(got.link.rtt_us, 30000);
    CHECK_EQ_INT(got.encodings, 1u << FRAME_ENC_F16);
    double t0 = clock_now_ms();
    for (int i = 0; i < 3; i++) CHECK(ping(p.dev, 1, 0, err, sizeof err) == 0);
    double ms = clock_now_ms() - t0;
    close_session(p.dev);
    pthread_join(th, NULL);
    CHECK_EQ_INT(e.hello_rc, 0);
    /* 90 ms needs both halves: the device adds rtt/2 on the way up, the cloud (from HELLO) rtt/2 down. */
    CHECK_MSG(ms >= 90.0, "3 round trips at rtt 30 ms took %.1f ms", ms);
    pair_close(&p);
}

TEST(test_transport_handshake_refused) {
    pair p;
    REQUIRE(pair_open(&p, NULL, NULL, 5000) == 0);
    frame_hello have = hello_of(0x1111);
    echo e = {.t = p.cloud, .have = &have};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, echo_main, &e) == 0);
    char err[256] = "";
    frame_hello want = hello_of(0x2222);
    int rc = transport_hello(p.dev, &want, NULL, 5000, err, sizeof err);
    pthread_join(th, NULL);
    CHECK_EQ_INT(rc, FRAME_E_REFUSED);
    CHECK_MSG(strstr(err, "peer: handshake: model mismatch (expected fingerprint 0000000000002222") != NULL, "%s", err);
    CHECK_EQ_INT(e.hello_rc, FRAME_E_REFUSED);
    CHECK_MSG(strstr(e.hello_err, "model mismatch") != NULL, "%s", e.hello_err);
    pair_close(&p);
}

/* ---- a raw peer that writes whatever bytes a test wants ---- */

typedef struct rawpair {
    transport_listener *l;
    transport *cloud;
    int fd;
} rawpair;

static int raw_open(rawpair *r, int io_timeout_ms, uint32_t max_payload) {
    char err[256];
    r->l = transport_listen("127.0.0.1", 0, err, sizeof err);
    if (!r->l) return -1;
    r->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)transport_listener_port(r->l))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(r->fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
    transport_opts o = transport_opts_default(LINK_DOWN);
    o.io_timeout_ms = io_timeout_ms;
    if (max_payload) o.limits.max_payload = max_payload;
    return transport_accept(r->l, &o, 5000, &r->cloud, err, sizeof err);
}

static void raw_close(rawpair *r) {
    if (r->fd >= 0) close(r->fd);
    transport_free(r->cloud);
    transport_listener_free(r->l);
}

static size_t raw_frame(uint8_t *b, size_t cap, int type, uint32_t seq) {
    frame_msg m = {.type = (uint8_t)type};
    m.u.ping.stamp = 1;
    size_t n = 0;
    frame_encode(&m, seq, b, cap, &n, NULL, 0);
    return n;
}

/* Writes b[n] from the raw peer (closing it after when close_after), then receives on the cloud. */
static int raw_case(const uint8_t *b, size_t n, int close_after, uint32_t max_payload, int io_timeout_ms, char *err,
                    size_t errlen) {
    rawpair r;
    if (raw_open(&r, io_timeout_ms, max_payload) != 0) return test_fail(__FILE__, __LINE__, "raw_open"), 0;
    if (n && write(r.fd, b, n) != (ssize_t)n) test_fail(__FILE__, __LINE__, "write");
    if (close_after) {
        close(r.fd);
        r.fd = -1;
    }
    frame_msg m;
    int rc = transport_recv(r.cloud, &m, 5000, err, errlen);
    int again = transport_recv(r.cloud, &m, 0, NULL, 0); /* errors stick */
    if (rc < 0 && again != rc) test_fail(__FILE__, __LINE__, "error %d did not stick (then %d)", rc, again);
    raw_close(&r);
    return rc;
}

TEST(test_transport_bad_streams) {
    char err[256];
    uint8_t b[256];
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_EQ_INT(raw_case((const uint8_t *)http, strlen(http), 0, 0, 1000, err, sizeof err), FRAME_E_MAGIC);

    size_t n = raw_frame(b, sizeof b, FRAME_PING, 0);
    b[4] = 7; /* version */
    CHECK_EQ_INT(raw_case(b, n, 0, 0, 1000, err, sizeof err), FRAME_E_VERSION);
    CHECK_MSG(strstr(err, "version 7") != NULL, "%s", err);

    n = raw_frame(b, sizeof b, FRAME_PING, 0);
    b[16] = 0, b[17] = 0, b[18] = 0x10, b[19] = 0; /* 1 MiB payload against a 64 KiB limit */
    CHECK_EQ_INT(raw_case(b, n, 0, 65536, 1000, err, sizeof err), FRAME_E_TOO_BIG);

    n = raw_frame(b, sizeof b, FRAME_PING, 0);
    CHECK_EQ_INT(raw_case(b, 11, 1, 0, 1000, err, sizeof err), FRAME_E_TRUNCATED); /* closes mid-header */
    CHECK_MSG(strstr(err, "after 11 of 20 bytes") != NULL, "%s", err);
    CHECK_EQ_INT(raw_case(b, n - 5, 1, 0, 1000, err, sizeof err), FRAME_E_TRUNCATED); /* mid-payload */
    CHECK_MSG(strstr(err, "PING payload after 11 of 16 bytes") != NULL, "%s", err);

    CHECK_EQ_INT(raw_case(b, 0, 1, 0, 1000, err, sizeof err), TRANSPORT_CLOSED); /* clean close */
    CHECK_EQ_INT(raw_case(b, n, 0, 0, 1000, err, sizeof err), 0);                 /* the intact frame is fine */

    /* A peer that stalls mid-frame without closing: an error after io_timeout_ms, not a hang. */
    double t0 = clock_now_ms();
    CHECK_EQ_INT(raw_case(b, n - 5, 0, 0, 200, err, sizeof err), DUET_EIO);
    double ms = clock_now_ms() - t0;
    CHECK_MSG(strstr(err, "did not arrive whole") != NULL, "%s", err);
    CHECK_MSG(ms >= 200 && ms < 3000, "stall detected after %.0f ms", ms);

    /* Sequence numbers: 0 then 2. */
    n = raw_frame(b, sizeof b, FRAME_PING, 0);
    size_t n2 = raw_frame(b + n, sizeof b - n, FRAME_PING, 2);
    rawpair r;
    REQUIRE(raw_open(&r, 1000, 0) == 0);
    REQUIRE(write(r.fd, b, n + n2) == (ssize_t)(n + n2));
    frame_msg m;
    CHECK_EQ_INT(transport_recv(r.cloud, &m, 5000, err, sizeof err), 0);
    CHECK_EQ_INT(transport_recv(r.cloud, &m, 5000, err, sizeof err), FRAME_E_SEQ);
    CHECK_MSG(strstr(err, "sequence number 2, expected 1") != NULL, "%s", err);
    raw_close(&r);

    /* A malformed payload after a good header. */
    frame_msg bad = {.type = FRAME_OPEN};
    bad.u.open = (frame_open){.n_ctx = 16, .mode = FRAME_MODE_SPLIT};
    frame_encode(&bad, 0, b, sizeof b, &n, NULL, 0);
    b[FRAME_HEADER_SIZE + 12] = 77; /* mode */
    CHECK_EQ_INT(raw_case(b, n, 0, 0, 1000, err, sizeof err), FRAME_E_VALUE);
}

TEST(test_transport_timeouts_and_vanished_peer) {
    pair p;
    REQUIRE(pair_open(&p, NULL, NULL, 5000) == 0);
    char err[256];
    frame_msg m;
    CHECK_EQ_INT(transport_recv(p.dev, &m, 50, err, sizeof err), TRANSPORT_TIMEOUT);
    /* a timeout is not sticky */
    m = (frame_msg){.type = FRAME_PING};
    REQUIRE(transport_send(p.dev, &m, err, sizeof err) == 0);
    REQUIRE(transport_expect(p.cloud, FRAME_PING, &m, 5000, err, sizeof err) == 0);
    m.type = FRAME_PONG;
    REQUIRE(transport_send(p.cloud, &m, err, sizeof err) == 0);
    CHECK_EQ_INT(transport_expect(p.dev, FRAME_PONG, &m, 5000, err, sizeof err), 0);
    CHECK_EQ_INT(transport_expect(p.cloud, FRAME_PING, &m, 50, err, sizeof err), TRANSPORT_TIMEOUT);

    /* The cloud goes away: the device learns it at its next receive. */
    transport_free(p.cloud);
    p.cloud = NULL;
    m = (frame_msg){.type = FRAME_PING};
    transport_send(p.dev, &m, err, sizeof err);
    int rc = transport_recv(p.dev, &m, 5000, err, sizeof err);
    CHECK_MSG(rc == TRANSPORT_CLOSED || rc == DUET_EIO, "rc %d: %s", rc, err);
    pair_close(&p);

    /* Nobody listening. */
    transport_listener *l = transport_listen("127.0.0.1", 0, err, sizeof err);
    REQUIRE(l);
    int port = transport_listener_port(l);
    transport_listener_free(l);
    transport_opts o = transport_opts_default(LINK_UP);
    CHECK(transport_connect("127.0.0.1", port, &o, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "cannot connect") != NULL, "%s", err);
}

/* Two threads send concurrently; the receiver sees every frame, in sequence, each thread's in its order. */
typedef struct sender_arg {
    transport *t;
    int32_t base;
    int rc;
} sender_arg;

static void *sender_main(void *arg) {
    sender_arg *a = arg;
    char err[256];
    for (int32_t i = 0; i < 50 && !a->rc; i++) {
        int32_t id = a->base + i;
        frame_msg m = {.type = FRAME_PROMPT};
        m.u.tokens = (frame_tokens){.pos0 = (uint32_t)i, .n = 1, .ids = &id};
        a->rc = transport_send(a->t, &m, err, sizeof err);
    }
    return NULL;
}

static void concurrent_senders(const link_params *lp) {
    pair p;
    REQUIRE(pair_open(&p, lp, NULL, 5000) == 0);
    sender_arg a = {p.dev, 0, 0}, b = {p.dev, 1000, 0};
    pthread_t ta, tb;
    REQUIRE(pthread_create(&ta, NULL, sender_main, &a) == 0);
    REQUIRE(pthread_create(&tb, NULL, sender_main, &b) == 0);
    int32_t next[2] = {0, 1000};
    char err[256];
    for (int i = 0; i < 100; i++) {
        frame_msg m;
        REQUIRE_MSG(transport_expect(p.cloud, FRAME_PROMPT, &m, 5000, err, sizeof err) == 0, "%s", err);
        int32_t id;
        frame_tokens_get(&m.u.tokens, &id, NULL, NULL);
        int k = id >= 1000;
        CHECK_EQ_INT(id, next[k]);
        next[k] = id + 1;
    }
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(a.rc == 0 && b.rc == 0);
    transport_stats s;
    transport_stats_get(p.cloud, &s);
    CHECK_EQ_INT(s.frames_up, 100);
    pair_close(&p);
}

TEST(test_transport_concurrent_senders) {
    link_params paced = {.up_bps = 1000000}; /* 0.3 ms per frame: the queue fills and producers wait */
    concurrent_senders(&paced);
    concurrent_senders(NULL); /* due at once: frames go straight to the socket when the queue is empty */
}

/* The cloud's sends take the down direction: 500 KB at 50 Mbit/s is 80 ms (at the uplink's 20 Mbit/s it
 * would be 200 ms). */
TEST(test_transport_download_bandwidth) {
    enum { ROWS = 500, DIM = 250 };
    link_params lp = {.up_bps = 20000000, .down_bps = 50000000, .rtt_us = 20000};
    pair p;
    REQUIRE(pair_open(&p, &lp, &lp, 5000) == 0);
    float *x = calloc((size_t)ROWS * DIM, sizeof *x);
    REQUIRE(x);
    char err[256];
    frame_msg m = {.type = FRAME_HIDDEN, .session = 1};
    m.u.rows = (frame_rows){.pos0 = 0, .n = ROWS, .dim = DIM, .enc = FRAME_ENC_F32, .x = x};
    size_t bytes = FRAME_HEADER_SIZE + 20 + (size_t)ROWS * DIM * 4;
    double expect = bytes * 8.0 / 50e6 * 1e3 + 10.0;
    double t0 = clock_now_ms();
    REQUIRE_MSG(transport_send(p.cloud, &m, err, sizeof err) == 0, "%s", err);
    REQUIRE_MSG(transport_expect(p.dev, FRAME_HIDDEN, &m, 5000, err, sizeof err) == 0, "%s", err);
    double took = clock_now_ms() - t0;
    CHECK_MSG(took >= expect && took <= expect * 1.5, "500 KB at 50 Mbit/s took %.1f ms, expected ~%.1f", took,
              expect);
    transport_stats s;
    transport_stats_get(p.dev, &s);
    CHECK_EQ_INT(s.bytes_down, bytes);
    CHECK_EQ_INT(s.bytes_up, 0);
    CHECK(s.comm_wait_ms >= expect - 1.0);
    free(x);
    pair_close(&p);
}

/* ---- issue 13: bounded resources ---- */

typedef struct trickler {
    int fd;
    const uint8_t *b;
    size_t n;
    int gap_ms;
} trickler;

static void *trickle_main(void *arg) {
    trickler *k = arg;
    for (size_t i = 0; i < k->n; i++) {
        if (send(k->fd, k->b + i, 1, MSG_NOSIGNAL) != 1) break;
        nanosleep(&(struct timespec){0, (long)k->gap_ms * 1000000L}, NULL);
    }
    return NULL;
}

/* A peer that sends one byte at a time, each well within io_timeout_ms of the last, still has to deliver the
 * whole frame within io_timeout_ms of its first byte. */
TEST(test_transport_trickling_peer_meets_the_whole_frame_deadline) {
    uint8_t b[64];
    frame_msg m = {.type = FRAME_PING};
    m.u.ping.pad = 20;
    size_t n = 0;
    REQUIRE(frame_encode(&m, 0, b, sizeof b, &n, NULL, 0) == 0); /* 56 bytes: 2.2 s at one byte per 40 ms */
    rawpair r;
    REQUIRE(raw_open(&r, 300, 0) == 0);
    trickler k = {r.fd, b, n, 40};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, trickle_main, &k) == 0);
    char err[256];
    int rc = transport_recv(r.cloud, &m, 5000, err, sizeof err);
    CHECK_MSG(rc == DUET_EIO && strstr(err, "did not arrive whole"), "rc %d: %s", rc, err);
    shutdown(r.fd, SHUT_RDWR); /* ends the trickle early */
    pthread_join(th, NULL);
    raw_close(&r);
}

/* Buffers for a large frame are charged to the budget and given back once the frame is done with; frames past
 * the budget are refused with FRAME_E_LIMIT, in both directions. */
TEST(test_transport_budget_and_large_buffers_released) {
    transport_budget b = {.cap = 1u << 20};
    char err[256];
    transport_listener *l = transport_listen("127.0.0.1", 0, err, sizeof err);
    REQUIRE(l);
    transport_opts d = transport_opts_default(LINK_UP), c = transport_opts_default(LINK_DOWN);
    c.budget = &b;
    transport *dev = transport_connect("127.0.0.1", transport_listener_port(l), &d, err, sizeof err), *cl = NULL;
    REQUIRE(dev && transport_accept(l, &c, 5000, &cl, err, sizeof err) == 0);
    frame_msg m = {.type = FRAME_PING};
    m.u.ping.pad = 512 << 10;
    REQUIRE(transport_send(dev, &m, err, sizeof err) == 0);
    REQUIRE_MSG(transport_recv(cl, &m, 5000, err, sizeof err) == 0, "%s", err);
    CHECK(atomic_load(&b.used) >= (512u << 10)); /* held while the frame is the caller's */
    CHECK_EQ_INT(transport_recv(cl, &m, 0, err, sizeof err), TRANSPORT_TIMEOUT);
    CHECK_EQ_INT(atomic_load(&b.used), 0); /* the next recv shrank the buffer back */

    /* output: a large PONG is charged until written, one past the budget is refused */
    m = (frame_msg){.type = FRAME_PONG};
    m.u.ping.pad = 600 << 10;
    REQUIRE(transport_send(cl, &m, err, sizeof err) == 0);
    REQUIRE(transport_expect(dev, FRAME_PONG, &m, 5000, err, sizeof err) == 0);
    REQUIRE(transport_flush(cl, 5000, err, sizeof err) == 0);
    CHECK_EQ_INT(atomic_load(&b.used), 0);
    m = (frame_msg){.type = FRAME_PONG};
    m.u.ping.pad = 2u << 20;
    CHECK_EQ_INT(transport_send(cl, &m, err, sizeof err), FRAME_E_LIMIT);
    CHECK_MSG(strstr(err, "memory budget") != NULL, "%s", err);

    /* input past the budget: refused after the header, before anything is allocated */
    m = (frame_msg){.type = FRAME_PING};
    m.u.ping.pad = 2u << 20;
    REQUIRE(transport_send(dev, &m, err, sizeof err) == 0);
    CHECK_EQ_INT(transport_recv(cl, &m, 5000, err, sizeof err), FRAME_E_LIMIT);
    CHECK_EQ_INT(atomic_load(&b.used), 0);
    transport_free(dev);
    transport_free(cl);
    CHECK_EQ_INT(atomic_load(&b.used), 0);
    transport_listener_free(l);
}

/* A frame the emulated link would deliver beyond max_backlog_ms is refused at once, and a cancelled wait ends
 * a recv that would otherwise wait its whole timeout. */
TEST(test_transport_backlog_limit_and_cancel) {
    atomic_int stop = 0;
    link_params slow = {.down_bps = 1000}; /* 1 kbit/s: a 1 KiB frame takes 8 s */
    pair p;
    REQUIRE(pair_open(&p, NULL, &slow, 5000) == 0);
    transport_free(p.cloud);
    p.cloud = NULL;
    char err[256];
    transport_opts c = transport_opts_default(LINK_DOWN);
    c.link = slow;
    c.max_backlog_ms = 1000;
    c.cancel = &stop;
    transport *dev2 = transport_connect("127.0.0.1", transport_listener_port(p.l), NULL, err, sizeof err);
    REQUIRE(dev2 && transport_accept(p.l, &c, 5000, &p.cloud, err, sizeof err) == 0);
    frame_msg m = {.type = FRAME_PONG};
    m.u.ping.pad = 1024;
    CHECK_EQ_INT(transport_send(p.cloud, &m, err, sizeof err), FRAME_E_LIMIT);
    CHECK_MSG(strstr(err, "emulated link") != NULL, "%s", err);
    m.u.ping.pad = 16; /* 52 bytes: 416 ms */
    CHECK_EQ_INT(transport_send(p.cloud, &m, err, sizeof err), 0);
    CHECK(transport_backlog_ms(p.cloud) > 100);
    atomic_store(&stop, 1);
    CHECK_EQ_INT(transport_recv(p.cloud, &m, 60000, err, sizeof err), DUET_EIO);
    CHECK_MSG(strstr(err, "cancelled") != NULL, "%s", err);
    transport_free(dev2);
    pair_close(&p);
}

/* The handshake's deadline follows the emulated link: with a 1.5 s rtt a 300 ms timeout is still enough,
 * because HELLO is not delayed and HELLO_OK's wait adds the down link's time. */
TEST(test_transport_handshake_deadline_follows_link) {
    pair p;
    REQUIRE(pair_open(&p, NULL, NULL, 5000) == 0);
    frame_hello have = hello_of(0x5eed);
    echo e = {.t = p.cloud, .have = &have};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, echo_main, &e) == 0);
    char err[256];
    frame_hello want = hello_of(0x5eed);
    want.link.rtt_us = 1500000;
    want.link.up_bps = 100; /* HELLO alone would take 6 s at 100 bit/s */
    want.encodings = FRAME_ENC_ALL;
    CHECK_MSG(transport_hello(p.dev, &want, NULL, 300, err, sizeof err) == 0, "%s", err);
    transport_free(p.dev); /* the echo ends on the closed connection */
    p.dev = NULL;
    pthread_join(th, NULL);
    CHECK_EQ_INT(e.hello_rc, 0);
    pair_close(&p);
}

/* transport_expect answers a PING on the way to the frame it waits for. */
TEST(test_transport_expect_answers_ping) {
    pair p;
    REQUIRE(pair_open(&p, NULL, NULL, 5000) == 0);
    char err[256];
    frame_msg m = {.type = FRAME_PING, .session = 3};
    m.u.ping = (frame_ping){.stamp = 99, .reply_pad = 8};
    REQUIRE(transport_send(p.cloud, &m, err, sizeof err) == 0);
    m = (frame_msg){.type = FRAME_CLOSE, .session = 3};
    REQUIRE(transport_send(p.cloud, &m, err, sizeof err) == 0);
    CHECK_MSG(transport_expect(p.dev, FRAME_CLOSE, &m, 5000, err, sizeof err) == 0, "%s", err);
    CHECK_MSG(transport_recv(p.cloud, &m, 5000, err, sizeof err) == 0, "%s", err);
    CHECK(m.type == FRAME_PONG && m.u.ping.stamp == 99 && m.u.ping.pad == 8);
    pair_close(&p);
}
