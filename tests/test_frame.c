#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "duet.h"
#include "net/frame.h"
#include "test.h"

static uint8_t buf[1 << 16];

/* Encodes m into buf (seq 5) and decodes it back; returns the decode status. */
static int roundtrip(const frame_msg *m, frame_msg *out, size_t *len) {
    char err[256];
    frame_header h;
    size_t n;
    int rc = frame_encode(m, 5, buf, sizeof buf, &n, err, sizeof err);
    if (rc) {
        test_fail(__FILE__, __LINE__, "encode %s: %s", frame_type_name(m->type), err);
        return rc;
    }
    if (len) *len = n;
    frame_limits lim = frame_limits_default();
    rc = frame_decode(buf, n, &lim, &h, out, err, sizeof err);
    if (rc) test_fail(__FILE__, __LINE__, "decode %s: %s", frame_type_name(m->type), err);
    CHECK_EQ_INT(h.seq, 5);
    CHECK_EQ_INT(h.len, n - FRAME_HEADER_SIZE);
    return rc;
}

TEST(test_frame_header_bytes) {
    frame_header h = {FRAME_MAGIC, FRAME_VERSION, FRAME_REQUEST, 0, 0x01020304u, 0xa0b0c0d0u, 16};
    uint8_t b[FRAME_HEADER_SIZE];
    frame_header_encode(&h, b);
    static const uint8_t want[FRAME_HEADER_SIZE] = {'D', 'U', 'E', 'T', 2, 0, 9, 0, 4, 3,
                                                    2,   1,   0xd0, 0xc0, 0xb0, 0xa0, 16, 0, 0, 0};
    CHECK(memcmp(b, want, sizeof want) == 0);
    frame_header g;
    frame_limits lim = frame_limits_default();
    REQUIRE(frame_header_decode(b, sizeof b, &lim, &g, NULL, 0) == 0);
    CHECK(memcmp(&g, &h, sizeof g) == 0);
}

TEST(test_frame_fixed_types_roundtrip) {
    frame_msg m = {.type = FRAME_HELLO, .session = 0}, o;
    m.u.hello = (frame_hello){.fingerprint = 0x1122334455667788ull,
                              .link = {20000000, 50000000, 40000, 5000, LINK_JITTER_NORMAL, 99},
                              .dim = 2048, .layer_a = 3, .layer_b = 19, .version = FRAME_VERSION,
                              .part = FRAME_PART_HEAD, .encodings = FRAME_ENC_ALL};
    size_t n;
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + FRAME_HELLO_SIZE);
    CHECK(memcmp(&o.u.hello, &m.u.hello, sizeof m.u.hello) == 0);
    /* the layout of docs/PROTOCOL.md: fingerprint first, dim at 40, version at 52 */
    CHECK(buf[20] == 0x88 && buf[27] == 0x11);
    CHECK(buf[20 + 40] == 0x00 && buf[20 + 41] == 0x08);
    CHECK(buf[20 + 52] == FRAME_VERSION && buf[20 + 54] == FRAME_PART_HEAD && buf[20 + 55] == 7);

    m = (frame_msg){.type = FRAME_OPEN};
    m.u.open = (frame_open){.seed = 77, .n_ctx = 512, .mode = FRAME_MODE_EE, .temperature = 0.7f, .top_p = 0.9f,
                            .top_k = 40};
    REQUIRE(roundtrip(&m, &o, NULL) == 0);
    CHECK(memcmp(&o.u.open, &m.u.open, sizeof m.u.open) == 0);

    m = (frame_msg){.type = FRAME_OPENED, .session = 42};
    m.u.opened.n_ctx = 256;
    REQUIRE(roundtrip(&m, &o, NULL) == 0);
    CHECK_EQ_INT(o.session, 42);
    CHECK_EQ_INT(o.u.opened.n_ctx, 256);

    m = (frame_msg){.type = FRAME_CLOSE, .session = 42};
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE);
    CHECK_EQ_INT(o.type, FRAME_CLOSE);

    m = (frame_msg){.type = FRAME_REQUEST, .session = 7};
    m.u.request = (frame_request){.pos = 100, .count = 4, .kv_keep = 98, .want = FRAME_WANT_HIDDEN,
                                  .enc = FRAME_ENC_I8};
    REQUIRE(roundtrip(&m, &o, NULL) == 0);
    CHECK(memcmp(&o.u.request, &m.u.request, sizeof m.u.request) == 0);

    m = (frame_msg){.type = FRAME_PING};
    m.u.ping = (frame_ping){.stamp = 123456789012345ull, .pad = 1000, .reply_pad = 5000};
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + FRAME_PING_SIZE + 1000);
    CHECK(memcmp(&o.u.ping, &m.u.ping, sizeof m.u.ping) == 0);

    m = (frame_msg){.type = FRAME_AUTH};
    m.u.auth = (frame_auth){.len = 5, .token = (const uint8_t *)"s3cr\n"};
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + FRAME_AUTH_FIXED + 5);
    CHECK(o.u.auth.len == 5 && memcmp(o.u.auth.token, "s3cr\n", 5) == 0);
    size_t asz;
    m.u.auth.len = FRAME_AUTH_MAX + 1;
    CHECK_EQ_INT(frame_payload_size(&m, &asz, NULL, 0), DUET_EINVAL);

    frame_error_msg(&m, 3, FRAME_E_REFUSED, "model mismatch");
    REQUIRE(roundtrip(&m, &o, NULL) == 0);
    CHECK_EQ_INT(o.u.error.code, FRAME_E_REFUSED);
    CHECK(o.u.error.len == 14 && memcmp(o.u.error.text, "model mismatch", 14) == 0);
    frame_error_msg(&m, 3, DUET_EIO, "line\tone\nline two");
    REQUIRE(roundtrip(&m, &o, NULL) == 0); /* control bytes travel as spaces */
    CHECK(o.u.error.len == 17 && memcmp(o.u.error.text, "line one line two", 17) == 0);
}

TEST(test_frame_tokens_roundtrip) {
    int32_t ids[3] = {1, 31999, 0};
    float conf[3] = {0.5f, 0.25f, 1.0f}, logit[3] = {12.5f, -3.0f, 7.0f};
    frame_msg m = {.type = FRAME_TOKENS, .session = 9}, o;
    m.u.tokens = (frame_tokens){.pos0 = 17, .n = 3, .fields = FRAME_TOK_CONF | FRAME_TOK_LOGIT, .ids = ids,
                                .conf = conf, .logit = logit, .compute_us = 777};
    size_t n;
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + 16 + 3 * 12);
    int32_t gi[3];
    float gc[3], gl[3];
    frame_tokens_get(&o.u.tokens, gi, gc, gl);
    CHECK_EQ_INT(o.u.tokens.pos0, 17);
    CHECK_EQ_INT(o.u.tokens.compute_us, 777);
    CHECK(memcmp(gi, ids, sizeof ids) == 0 && memcmp(gc, conf, sizeof conf) == 0 && memcmp(gl, logit, sizeof logit) == 0);
    /* ids sit right after the fixed part, little-endian */
    CHECK(buf[36] == 1 && buf[40] == 0xff && buf[41] == 0x7c);

    m.type = FRAME_PROMPT;
    m.u.tokens.fields = 0;
    m.u.tokens.compute_us = 0;
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + 16 + 3 * 4);
    frame_tokens_get(&o.u.tokens, gi, NULL, NULL);
    CHECK(memcmp(gi, ids, sizeof ids) == 0);

    /* The end of a stream: TOKENS with no tokens; a PROMPT cannot be empty. */
    m = (frame_msg){.type = FRAME_TOKENS, .session = 9};
    m.u.tokens = (frame_tokens){.pos0 = 40, .n = 0};
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + 16);
    CHECK(o.u.tokens.n == 0 && o.u.tokens.pos0 == 40);
    m.type = FRAME_PROMPT;
    CHECK_EQ_INT(frame_encode(&m, 0, buf, sizeof buf, &n, NULL, 0), DUET_EINVAL);
    buf[6] = FRAME_PROMPT; /* the TOKENS frame above, retyped */
    frame_limits lim = frame_limits_default();
    frame_header h;
    CHECK_EQ_INT(frame_decode(buf, FRAME_HEADER_SIZE + 16, &lim, &h, &o, NULL, 0), FRAME_E_BOUNDS);
}

static void fill_rows(float *x, int n, int dim, unsigned seed) {
    srand(seed);
    for (int i = 0; i < n * dim; i++) x[i] = ((float)rand() / RAND_MAX - 0.5f) * (float)(1 + i % 7) * 3.0f;
}

TEST(test_frame_rows_fp32_fp16) {
    enum { N = 5, D = 96 };
    float x[N * D], y[N * D];
    fill_rows(x, N, D, 1);
    x[3] = 70000.0f; /* beyond fp16: becomes inf, as F16C does */
    frame_msg m = {.type = FRAME_UPLOAD, .session = 1}, o;
    m.u.rows = (frame_rows){.pos0 = 10, .n = N, .dim = D, .enc = FRAME_ENC_F32, .x = x};
    size_t n;
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + 20 + N * D * 4);
    frame_rows_get(&o.u.rows, y);
    CHECK(memcmp(x, y, sizeof x) == 0);

    m.type = FRAME_HIDDEN;
    m.u.rows.enc = FRAME_ENC_F16;
    m.u.rows.compute_us = 4321;
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(o.u.rows.compute_us, 4321);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + 20 + N * D * 2);
    CHECK_EQ_INT(o.u.rows.pos0, 10);
    frame_rows_get(&o.u.rows, y);
    int exact = 1;
    for (int i = 0; i < N * D; i++) exact &= y[i] == half_to_float(half_from_float(x[i]));
    CHECK(exact);
    CHECK(isinf(y[3]));
}

TEST(test_frame_rows_int8_error_bound) {
    enum { N = 8, D = 257 };
    float x[N * D], y[N * D];
    fill_rows(x, N, D, 2);
    for (int j = 0; j < D; j++) x[2 * D + j] = 0;     /* an all-zero row: scale 0 */
    x[5 * D + 7] = -100.0f;                           /* a row whose extreme is negative */
    frame_msg m = {.type = FRAME_UPLOAD}, o;
    m.u.rows = (frame_rows){.pos0 = 0, .n = N, .dim = D, .enc = FRAME_ENC_I8, .x = x};
    size_t n;
    REQUIRE(roundtrip(&m, &o, &n) == 0);
    CHECK_EQ_INT(n, FRAME_HEADER_SIZE + 20 + N * (4 + D));
    frame_rows_get(&o.u.rows, y);
    /* Bound: scale = max|x|/127 and round to nearest, so |x - q*scale| <= scale/2 = max|x|/254 (+ float rounding). */
    for (int i = 0; i < N; i++) {
        float amax = 0, worst = 0;
        for (int j = 0; j < D; j++) amax = fmaxf(amax, fabsf(x[i * D + j]));
        for (int j = 0; j < D; j++) worst = fmaxf(worst, fabsf(x[i * D + j] - y[i * D + j]));
        CHECK_MSG(worst <= amax / 254.0f * 1.0001f, "row %d: error %g > max/254 = %g", i, worst, amax / 254.0f);
        if (amax == 0) CHECK(worst == 0);
    }
    CHECK_NEAR(y[5 * D + 7], -100.0f, 1e-4);          /* the extreme maps to -127 * scale */
    CHECK(buf[20 + 20 + N * 4 + 5 * D + 7] == (uint8_t)(int8_t)-127);
}

TEST(test_frame_encode_rejects) {
    char err[256];
    float x[4] = {1, NAN, 2, 3};
    frame_msg m = {.type = FRAME_UPLOAD};
    m.u.rows = (frame_rows){.n = 1, .dim = 4, .enc = FRAME_ENC_I8, .x = x};
    size_t n;
    CHECK_EQ_INT(frame_encode(&m, 0, buf, sizeof buf, &n, err, sizeof err), DUET_EINVAL);
    CHECK(strstr(err, "non-finite") != NULL);
    m.u.rows.enc = 9;
    CHECK_EQ_INT(frame_encode(&m, 0, buf, sizeof buf, &n, err, sizeof err), DUET_EINVAL);
    m.u.rows.enc = FRAME_ENC_F32;
    CHECK_EQ_INT(frame_encode(&m, 0, buf, 30, &n, err, sizeof err), DUET_EINVAL); /* buffer too small */
    frame_error_msg(&m, 0, 3, "positive code");
    CHECK_EQ_INT(frame_encode(&m, 0, buf, sizeof buf, &n, err, sizeof err), DUET_EINVAL);
    m = (frame_msg){.type = 0};
    CHECK_EQ_INT(frame_encode(&m, 0, buf, sizeof buf, &n, err, sizeof err), DUET_EINVAL);
    int32_t ids[1] = {5};
    m = (frame_msg){.type = FRAME_PROMPT};
    m.u.tokens = (frame_tokens){.n = 1, .ids = ids, .fields = FRAME_TOK_CONF}; /* PROMPT has no extras */
    CHECK_EQ_INT(frame_encode(&m, 0, buf, sizeof buf, &n, err, sizeof err), DUET_EINVAL);
}

/* ---- malformed input: each defect gives its own code ---- */

static void put32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* A valid frame of m in buf; returns its length. */
static size_t make(const frame_msg *m) {
    size_t n = 0;
    char err[256];
    if (frame_encode(m, 0, buf, sizeof buf, &n, err, sizeof err)) test_fail(__FILE__, __LINE__, "%s", err);
    return n;
}

static int decode(size_t n, char *err, size_t errlen) {
    frame_limits lim = frame_limits_default();
    frame_header h;
    frame_msg o;
    return frame_decode(buf, n, &lim, &h, &o, err, errlen);
}

#define EXPECT_DECODE(n, code, says)                                                                   \
    do {                                                                                               \
        char e_[256] = "";                                                                             \
        int rc_ = decode((n), e_, sizeof e_);                                                          \
        CHECK_MSG(rc_ == (code), "got %d (%s), want %d (%s): %s", rc_, frame_err_name(rc_), (int)(code), \
                  frame_err_name(code), e_);                                                           \
        CHECK_MSG(strstr(e_, (says)) != NULL, "message '%s' lacks '%s'", e_, (says));                  \
    } while (0)

TEST(test_frame_bad_header) {
    frame_msg m = {.type = FRAME_CLOSE};
    size_t n = make(&m);
    EXPECT_DECODE(n - 1, FRAME_E_TRUNCATED, "header needs 20 bytes");
    buf[0] = 'X';
    EXPECT_DECODE(n, FRAME_E_MAGIC, "bad magic");
    n = make(&m);
    buf[4] = 1; /* version 1 (before AUTH and batching): refused with a message naming both versions */
    EXPECT_DECODE(n, FRAME_E_VERSION, "peer speaks protocol version 1, this build speaks 2");
    n = make(&m);
    buf[4] = 3;
    EXPECT_DECODE(n, FRAME_E_VERSION, "peer speaks protocol version 3");
    m = (frame_msg){.type = FRAME_ERROR}; /* except an ERROR in version-1 framing: an old peer's refusal */
    frame_error_msg(&m, 0, FRAME_E_VERSION, "frame: peer speaks protocol version 2, this build speaks 1");
    n = make(&m);
    buf[4] = 1;
    frame_header hv;
    frame_limits lv = frame_limits_default();
    CHECK_EQ_INT(frame_header_decode(buf, n, &lv, &hv, NULL, 0), 0);
    m = (frame_msg){.type = FRAME_CLOSE};
    n = make(&m);
    buf[6] = 0;
    EXPECT_DECODE(n, FRAME_E_TYPE, "unknown message type 0");
    buf[6] = FRAME_TYPE_MAX + 1;
    EXPECT_DECODE(n, FRAME_E_TYPE, "unknown message type 15");
    n = make(&m);
    buf[7] = 0x80;
    EXPECT_DECODE(n, FRAME_E_FLAGS, "reserved flags 0x80");
    n = make(&m);
    put32le(buf + 16, FRAME_MAX_PAYLOAD_DEFAULT + 1);
    EXPECT_DECODE(n, FRAME_E_TOO_BIG, "exceeds the limit");
    put32le(buf + 16, 4);
    EXPECT_DECODE(n, FRAME_E_TRUNCATED, "only 0 present");
    memset(buf + n, 0, 3);
    put32le(buf + 16, 0);
    EXPECT_DECODE(n + 3, FRAME_E_LENGTH, "3 bytes after the end");

    /* The frame size limit is settable. */
    float x[64] = {0};
    m = (frame_msg){.type = FRAME_UPLOAD};
    m.u.rows = (frame_rows){.n = 1, .dim = 64, .enc = FRAME_ENC_F32, .x = x};
    n = make(&m);
    frame_limits lim = frame_limits_default();
    lim.max_payload = 100;
    frame_header h;
    frame_msg o;
    CHECK_EQ_INT(frame_decode(buf, n, &lim, &h, &o, NULL, 0), FRAME_E_TOO_BIG);
    lim.max_payload = 20 + 256;
    CHECK_EQ_INT(frame_decode(buf, n, &lim, &h, &o, NULL, 0), 0);
}

TEST(test_frame_bad_payloads) {
    float x[8 * 4] = {1, 2, 3, 4};
    frame_msg m = {.type = FRAME_UPLOAD};
    m.u.rows = (frame_rows){.pos0 = 0, .n = 2, .dim = 4, .enc = FRAME_ENC_I8, .x = x};
    size_t n = make(&m);
    uint8_t *p = buf + FRAME_HEADER_SIZE;
    put32le(p + 4, 0);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "of 0 rows");
    n = make(&m);
    put32le(p + 8, 70000);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "dim 70000");
    n = make(&m);
    put32le(p + 0, (1u << 24) - 1);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "beyond the limit");
    n = make(&m);
    put32le(p + 12, 3);
    EXPECT_DECODE(n, FRAME_E_ENCODING, "encoding 3 unknown");
    n = make(&m);
    put32le(p + 4, 3); /* claims 3 rows, carries 2 */
    EXPECT_DECODE(n, FRAME_E_LENGTH, "3 rows of dim 4 in int8 need 44");
    n = make(&m);
    put32le(p + 20 + 4, 0x7fc00000u); /* NaN scale of row 1 */
    EXPECT_DECODE(n, FRAME_E_VALUE, "row 1 has int8 scale");
    n = make(&m);
    put32le(p + 20, 0xbf800000u); /* negative scale */
    EXPECT_DECODE(n, FRAME_E_VALUE, "row 0 has int8 scale -1");
    n = make(&m);
    put32le(p + 16, 5);
    EXPECT_DECODE(n, FRAME_E_VALUE, "UPLOAD compute_us 5");
    EXPECT_DECODE(FRAME_HEADER_SIZE, FRAME_E_TRUNCATED, "only 0 present");

    int32_t ids[2] = {4, 5};
    m = (frame_msg){.type = FRAME_TOKENS};
    m.u.tokens = (frame_tokens){.n = 2, .ids = ids};
    n = make(&m);
    put32le(p + 16 + 4, 0xffffffffu);
    EXPECT_DECODE(n, FRAME_E_VALUE, "token 1 has negative id -1");
    n = make(&m);
    put32le(p + 8, 4);
    EXPECT_DECODE(n, FRAME_E_VALUE, "fields 0x4");
    n = make(&m);
    put32le(p + 8, FRAME_TOK_CONF); /* claims confidences it does not carry */
    EXPECT_DECODE(n, FRAME_E_LENGTH, "layout needs 32");
    m.type = FRAME_PROMPT;
    n = make(&m);
    put32le(p + 8, FRAME_TOK_CONF);
    EXPECT_DECODE(n, FRAME_E_VALUE, "PROMPT fields");
    n = make(&m);
    put32le(p + 12, 9);
    EXPECT_DECODE(n, FRAME_E_VALUE, "PROMPT compute_us 9");
    n = make(&m);
    put32le(p + 4, 70000);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "70000 tokens");
    EXPECT_DECODE(FRAME_HEADER_SIZE + 11, FRAME_E_TRUNCATED, "only 11 present");

    m = (frame_msg){.type = FRAME_REQUEST};
    m.u.request = (frame_request){.pos = 1, .count = 1, .kv_keep = FRAME_KEEP_ALL, .want = FRAME_WANT_TOKENS};
    n = make(&m);
    p[12] = 9;
    EXPECT_DECODE(n, FRAME_E_VALUE, "REQUEST wants 9");
    n = make(&m);
    p[12] = FRAME_WANT_HIDDEN;
    p[13] = 5;
    EXPECT_DECODE(n, FRAME_E_ENCODING, "encoding 5 invalid");
    n = make(&m);
    put32le(p + 4, 0);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "count 0");
    n = make(&m);
    put32le(p + 8, 1u << 25);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "kv_keep");
    n = make(&m);
    p[15] = 1;
    EXPECT_DECODE(n, FRAME_E_VALUE, "reserved 0x1");

    m = (frame_msg){.type = FRAME_HELLO};
    m.u.hello = (frame_hello){.dim = 64, .layer_a = 0, .layer_b = 5, .version = FRAME_VERSION, .encodings = 1};
    n = make(&m);
    put32le(p + 44, 6);
    EXPECT_DECODE(n, FRAME_E_VALUE, "[6,5) is not a range");
    n = make(&m);
    p[55] = 0x10;
    EXPECT_DECODE(n, FRAME_E_ENCODING, "encodings 0x10");
    n = make(&m);
    p[54] = 4;
    EXPECT_DECODE(n, FRAME_E_VALUE, "part flags 0x4");
    n = make(&m);
    put32le(p + 40, 0);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "HELLO dim 0");
    n = make(&m);
    put32le(p + 32, 2);
    EXPECT_DECODE(n, FRAME_E_VALUE, "jitter distribution 2");
    /* the emulated link a HELLO asks the cloud to apply is bounded like `--link` (issue 13) */
    n = make(&m);
    put32le(p + 24, LINK_MAX_TIME_US + 1);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "rtt 60000001 us");
    n = make(&m);
    put32le(p + 28, LINK_MAX_TIME_US + 1);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "jitter 60000001 us");
    n = make(&m);
    put32le(p + 16, 0xffffffffu); /* down_bps low word: 2^32-1 is fine, 2^40 is not */
    put32le(p + 20, 0x100);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "down bandwidth");
    n = make(&m);
    put32le(p + 24, LINK_MAX_TIME_US);
    frame_header hh;
    frame_msg oo;
    frame_limits ll = frame_limits_default();
    CHECK_EQ_INT(frame_decode(buf, n, &ll, &hh, &oo, NULL, 0), 0); /* the CLI's maximum itself is accepted */
    n = make(&m);
    put32le(buf + 16, FRAME_HELLO_SIZE - 1);
    EXPECT_DECODE(n - 1, FRAME_E_LENGTH, "payload is 55 bytes, its layout needs 56");

    m = (frame_msg){.type = FRAME_AUTH};
    m.u.auth = (frame_auth){.len = 3, .token = (const uint8_t *)"abc"};
    n = make(&m);
    put32le(p, 0);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "AUTH token of 0 bytes");
    n = make(&m);
    put32le(p, 4);
    EXPECT_DECODE(n, FRAME_E_LENGTH, "AUTH payload is 7 bytes");
    n = make(&m);
    put32le(buf + 16, 2);
    EXPECT_DECODE(n - 5, FRAME_E_LENGTH, "shorter than its 4-byte fixed part");

    m = (frame_msg){.type = FRAME_OPEN};
    m.u.open = (frame_open){.n_ctx = 64, .mode = FRAME_MODE_HAT};
    n = make(&m);
    put32le(p + 12, 0);
    EXPECT_DECODE(n, FRAME_E_VALUE, "mode 0 unknown");
    n = make(&m);
    put32le(p + 8, 0);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "n_ctx 0");
    n = make(&m);
    put32le(p + 16, 0x7f800000u);
    EXPECT_DECODE(n, FRAME_E_VALUE, "not finite");

    frame_error_msg(&m, 0, FRAME_E_LIMIT, "too many sessions");
    n = make(&m);
    put32le(p, 1);
    EXPECT_DECODE(n, FRAME_E_VALUE, "code 1 is not an error");
    n = make(&m);
    put32le(p + 4, 2000);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "2000 bytes");
    n = make(&m);
    put32le(p + 4, 5);
    EXPECT_DECODE(n, FRAME_E_LENGTH, "its layout needs 13");
    n = make(&m);
    p[8 + 3] = 0x1b; /* a terminal escape */
    EXPECT_DECODE(n, FRAME_E_VALUE, "control byte 0x1b at 3");

    m = (frame_msg){.type = FRAME_PONG};
    n = make(&m);
    put32le(p + 12, 8);
    EXPECT_DECODE(n, FRAME_E_BOUNDS, "PONG asks for a 8-byte reply pad");
    m.type = FRAME_PING;
    n = make(&m);
    put32le(p + 8, 1);
    EXPECT_DECODE(n, FRAME_E_LENGTH, "layout needs 17");

    m = (frame_msg){.type = FRAME_CLOSE};
    n = make(&m);
    put32le(buf + 16, 1);
    buf[n] = 0;
    EXPECT_DECODE(n + 1, FRAME_E_LENGTH, "CLOSE payload is 1 bytes");
}

TEST(test_frame_error_codes_distinct) {
    static const int codes[] = {FRAME_E_MAGIC, FRAME_E_VERSION, FRAME_E_TYPE,   FRAME_E_FLAGS,    FRAME_E_TOO_BIG,
                                FRAME_E_LENGTH, FRAME_E_TRUNCATED, FRAME_E_BOUNDS, FRAME_E_ENCODING, FRAME_E_VALUE,
                                FRAME_E_SEQ,   FRAME_E_SESSION, FRAME_E_REFUSED, FRAME_E_STATE,   FRAME_E_LIMIT,
                                FRAME_E_INTERNAL};
    int n = (int)(sizeof codes / sizeof codes[0]);
    for (int i = 0; i < n; i++) {
        CHECK(codes[i] < DUET_EINVAL); /* never a duet_status */
        for (int j = 0; j < i; j++) {
            CHECK(codes[i] != codes[j]);
            CHECK(strcmp(frame_err_name(codes[i]), frame_err_name(codes[j])) != 0);
        }
    }
    CHECK(strcmp(frame_err_name(FRAME_E_SEQ), "out of sequence") == 0);
}

TEST(test_frame_hello_check) {
    frame_hello have = {.fingerprint = 0xabc, .dim = 64, .layer_a = 2, .layer_b = 5, .version = 1,
                        .part = FRAME_PART_HEAD, .encodings = 1u << FRAME_ENC_F16 | 1u << FRAME_ENC_I8};
    frame_hello want = have;
    want.encodings = 1u << FRAME_ENC_I8;
    char err[256];
    CHECK_EQ_INT(frame_hello_check(&have, &want, err, sizeof err), 0);
    want = have;
    want.fingerprint = 0xabd;
    CHECK_EQ_INT(frame_hello_check(&have, &want, err, sizeof err), FRAME_E_REFUSED);
    CHECK_MSG(strstr(err, "model mismatch (expected fingerprint 0000000000000abd, held 0000000000000abc)"), "%s", err);
    want = have;
    want.dim = 128;
    CHECK_EQ_INT(frame_hello_check(&have, &want, err, sizeof err), FRAME_E_REFUSED);
    CHECK_MSG(strstr(err, "dim mismatch (expected 128, held 64)"), "%s", err);
    want = have;
    want.layer_b = 6;
    want.part = 0;
    CHECK_EQ_INT(frame_hello_check(&have, &want, err, sizeof err), FRAME_E_REFUSED);
    CHECK_MSG(strstr(err, "expected layers [2,6), held layers [2,5) + head"), "%s", err);
    want = have;
    want.encodings = 1u << FRAME_ENC_F32;
    CHECK_EQ_INT(frame_hello_check(&have, &want, err, sizeof err), FRAME_E_REFUSED);
    CHECK_MSG(strstr(err, "no common hidden-state encoding"), "%s", err);
}

TEST(test_frame_f16_simd_matches_scalar) {
    enum { N = 4099 }; /* not a multiple of 8: the tail takes the scalar path */
    static float x[N], a[N], b[N];
    static uint8_t s[2 * N], v[2 * N];
    srand(7);
    for (int i = 0; i < N; i++) { /* every exponent range: subnormal halves, normal, overflow */
        float m = (float)rand() / RAND_MAX;
        x[i] = ldexpf(m, rand() % 50 - 30) * (rand() & 1 ? -1.0f : 1.0f);
    }
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65520.0f, 65519.99f, 5.96e-8f,
                             2.98e-8f, 2.99e-8f, 6.1035156e-05f, 1.0f + 0x1p-11f, 1.0f + 0x1p-11f + 0x1p-23f};
    memcpy(x + 100, special, sizeof special);
    frame_f16_from_f32(s, x, N, false);
    frame_f16_from_f32(v, x, N, true);
    CHECK(memcmp(s, v, sizeof s) == 0);
    /* spot values of the reference: 1 + 2^-11 is a tie that rounds to even (1.0), 65520 overflows to inf */
    CHECK(s[2 * 112] == 0x00 && s[2 * 112 + 1] == 0x3c);
    CHECK(s[2 * 113] == 0x01 && s[2 * 113 + 1] == 0x3c);
    CHECK(s[2 * 106] == 0x00 && s[2 * 106 + 1] == 0x7c);
    frame_f16_to_f32(a, s, N, false);
    frame_f16_to_f32(b, s, N, true);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(a[100 + 5] == 65504.0f && isnan(a[104]));
}

TEST(test_frame_int8_rounding) {
    /* scale = 127/127 = 1: halves round away from zero, just below a half rounds down */
    float x[6] = {127.0f, 2.5f, -2.5f, 0.49999997f, 1.5f, -126.5f};
    frame_msg m = {.type = FRAME_UPLOAD}, o;
    m.u.rows = (frame_rows){.n = 1, .dim = 6, .enc = FRAME_ENC_I8, .x = x};
    REQUIRE(roundtrip(&m, &o, NULL) == 0);
    const uint8_t *q = buf + FRAME_HEADER_SIZE + FRAME_ROWS_FIXED + 4;
    static const int8_t want[6] = {127, 3, -3, 0, 2, -127};
    for (int i = 0; i < 6; i++) CHECK_MSG((int8_t)q[i] == want[i], "x=%g -> %d, want %d", (double)x[i], (int8_t)q[i], want[i]);
}
