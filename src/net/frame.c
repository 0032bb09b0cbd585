#include "net/frame.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/err.h"
#include "base/half.h"
#include "duet.h"

/* ---- little-endian field access: callers check lengths before, so these never bound-check ---- */

static uint8_t *put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}
static uint8_t *put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p + 4;
}
static uint8_t *put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p + 8;
}
static uint8_t *putf(uint8_t *p, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    return put32(p, v);
}
static uint16_t get16(const uint8_t **p) {
    const uint8_t *b = *p;
    *p += 2;
    return (uint16_t)(b[0] | (b[1] << 8));
}
static uint32_t get32(const uint8_t **p) {
    const uint8_t *b = *p;
    *p += 4;
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}
static uint64_t get64(const uint8_t **p) {
    uint64_t lo = get32(p);
    return lo | ((uint64_t)get32(p) << 32);
}
static float getf(const uint8_t **p) {
    uint32_t v = get32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

static bool is_control(uint8_t c) {
    return c < 0x20 || c == 0x7f;
}

static int popcount3(uint32_t x) {
    return (int)(x & 1) + (int)((x >> 1) & 1) + (int)((x >> 2) & 1);
}

/* ---- bulk conversions of hidden-state rows ---- */

/* Arrays are little-endian on the wire: on a little-endian host they are the in-memory bytes. */
#define LITTLE_HOST (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

#if defined(__x86_64__) && LITTLE_HOST
#include <cpuid.h>
#include <immintrin.h>
#define F16C_PATH 1

static bool cpu_f16c(void) { /* clang 14 does not know __builtin_cpu_supports("f16c") */
    unsigned a, b, c, d;
    return __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

/* Both return how many leading elements they converted (a multiple of 8). */
__attribute__((target("avx,f16c"))) static size_t f16_from_f32_f16c(uint8_t *dst, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + 2 * i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    return i;
}

__attribute__((target("avx,f16c"))) static size_t f16_to_f32_f16c(float *x, const uint8_t *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    return i;
}
#endif

void frame_f16_from_f32(uint8_t *dst, const float *x, size_t n, bool simd) {
    size_t i = 0;
#ifdef F16C_PATH
    if (simd && cpu_f16c()) i = f16_from_f32_f16c(dst, x, n);
#endif
    for (; i < n; i++) put16(dst + 2 * i, half_from_float(x[i]));
}

void frame_f16_to_f32(float *x, const uint8_t *src, size_t n, bool simd) {
    size_t i = 0;
#ifdef F16C_PATH
    if (simd && cpu_f16c()) i = f16_to_f32_f16c(x, src, n);
#endif
    for (; i < n; i++) {
        const uint8_t *p = src + 2 * i;
        x[i] = half_to_float(get16(&p));
    }
}

static void f32_put(uint8_t *dst, const float *x, size_t n) {
#if LITTLE_HOST
    memcpy(dst, x, n * 4);
#else
    for (size_t i = 0; i < n; i++) dst = putf(dst, x[i]);
#endif
}

static void f32_get(float *x, const uint8_t *src, size_t n) {
#if LITTLE_HOST
    memcpy(x, src, n * 4);
#else
    for (size_t i = 0; i < n; i++) x[i] = getf(&src);
#endif
}

/* One int8 row: q[dim] and the returned scale; < 0 if the row holds NaN or infinity. */
static int i8_row(const float *row, uint32_t dim, int8_t *q, float *scale_out) {
    float amax = 0;
    int bad = 0;
    for (uint32_t j = 0; j < dim; j++) {
        float a = fabsf(row[j]);
        bad |= !(a <= FLT_MAX);
        amax = a > amax ? a : amax;
    }
    if (bad) return -1;
    float scale = amax / 127.0f;
    *scale_out = scale;
    if (!(scale > 0)) {
        memset(q, 0, dim);
        return 0;
    }
    for (uint32_t j = 0; j < dim; j++) {
        float v = row[j] / scale;
        float t = truncf(v), r = v - t;                 /* exact: |v| <= 127 */
        t += (float)(r >= 0.5f) - (float)(r <= -0.5f); /* round half away from zero, as roundf */
        t = t > 127 ? 127 : t < -127 ? -127 : t;
        q[j] = (int8_t)t;
    }
    return 0;
}

/* ---- names ---- */

static const char *type_names[] = {"?",     "HELLO",  "HELLO_OK", "ERROR",  "OPEN",   "OPENED", "CLOSE",
                                   "PROMPT", "UPLOAD", "REQUEST",  "TOKENS", "HIDDEN", "PING",   "PONG",
                                   "AUTH"};

const char *frame_type_name(int type) {
    return type >= 1 && type <= FRAME_TYPE_MAX ? type_names[type] : "unknown";
}

const char *frame_err_name(int code) {
    static const char *names[] = {"bad magic",     "bad version",     "bad type",        "bad flags",
                                  "too big",       "bad length",      "truncated",       "out of bounds",
                                  "bad encoding",  "bad value",       "out of sequence", "unknown session",
                                  "refused",       "wrong state",     "limit reached",   "internal error",
                                  "server stopping"};
    int i = FRAME_E_MAGIC - code;
    return i >= 0 && i < (int)(sizeof names / sizeof names[0]) ? names[i] : "error";
}

static const char *enc_name(uint32_t enc) {
    return enc == FRAME_ENC_F16 ? "fp16" : enc == FRAME_ENC_F32 ? "fp32" : enc == FRAME_ENC_I8 ? "int8" : "?";
}

frame_limits frame_limits_default(void) {
    frame_limits l = {FRAME_MAX_PAYLOAD_DEFAULT, 65536, 65536, 1u << 24};
    return l;
}

/* ---- header ---- */

void frame_header_encode(const frame_header *h, uint8_t out[FRAME_HEADER_SIZE]) {
    uint8_t *p = put32(out, h->magic);
    p = put16(p, h->version);
    *p++ = h->type;
    *p++ = h->flags;
    p = put32(p, h->session);
    p = put32(p, h->seq);
    put32(p, h->len);
}

int frame_header_decode(const uint8_t *buf, size_t len, const frame_limits *lim, frame_header *out, char *err,
                        size_t errlen) {
    if (len < FRAME_HEADER_SIZE)
        return err_set(err, errlen, FRAME_E_TRUNCATED, "frame: header needs %d bytes, got %zu", FRAME_HEADER_SIZE, len);
    const uint8_t *p = buf;
    frame_header h;
    h.magic = get32(&p);
    h.version = get16(&p);
    h.type = *p++;
    h.flags = *p++;
    h.session = get32(&p);
    h.seq = get32(&p);
    h.len = get32(&p);
    if (h.magic != FRAME_MAGIC)
        return err_set(err, errlen, FRAME_E_MAGIC, "frame: bad magic %02x %02x %02x %02x (not a duet peer)", buf[0],
                       buf[1], buf[2], buf[3]);
    /* an ERROR keeps its version-1 layout in every version, so an older peer's refusal can still be read */
    if (h.version != FRAME_VERSION && !(h.version == 1 && h.type == FRAME_ERROR))
        return err_set(err, errlen, FRAME_E_VERSION, "frame: peer speaks protocol version %u, this build speaks %d: "
                       "run the same duet release on the device and the cloud", h.version, FRAME_VERSION);
    if (h.type < 1 || h.type > FRAME_TYPE_MAX)
        return err_set(err, errlen, FRAME_E_TYPE, "frame: unknown message type %u", h.type);
    if (h.flags)
        return err_set(err, errlen, FRAME_E_FLAGS, "frame: %s has reserved flags 0x%02x set", frame_type_name(h.type),
                       h.flags);
    if (h.len > lim->max_payload)
        return err_set(err, errlen, FRAME_E_TOO_BIG, "frame: %s payload of %u bytes exceeds the limit of %u",
                       frame_type_name(h.type), h.len, lim->max_payload);
    *out = h;
    return 0;
}

/* ---- sizes ---- */

size_t frame_row_bytes(uint32_t enc, uint32_t dim) {
    switch (enc) {
    case FRAME_ENC_F16: return (size_t)dim * 2;
    case FRAME_ENC_F32: return (size_t)dim * 4;
    case FRAME_ENC_I8: return 4 + (size_t)dim; /* one f32 scale per row */
    default: return 0;
    }
}

static size_t tokens_bytes(uint32_t n, uint32_t fields) {
    return FRAME_TOKENS_FIXED + (size_t)n * 4 * (size_t)(1 + popcount3(fields));
}

int frame_payload_size(const frame_msg *m, size_t *size, char *err, size_t errlen) {
    uint64_t s;
    switch (m->type) {
    case FRAME_HELLO:
    case FRAME_HELLO_OK: s = FRAME_HELLO_SIZE; break;
    case FRAME_OPEN: s = FRAME_OPEN_SIZE; break;
    case FRAME_OPENED: s = FRAME_OPENED_SIZE; break;
    case FRAME_CLOSE: s = 0; break;
    case FRAME_REQUEST: s = FRAME_REQUEST_SIZE; break;
    case FRAME_AUTH:
        if (m->u.auth.len < 1 || m->u.auth.len > FRAME_AUTH_MAX || !m->u.auth.token)
            return err_set(err, errlen, DUET_EINVAL, "frame: AUTH needs a token of 1..%d bytes", FRAME_AUTH_MAX);
        s = FRAME_AUTH_FIXED + (uint64_t)m->u.auth.len;
        break;
    case FRAME_PING:
    case FRAME_PONG: s = FRAME_PING_SIZE + (uint64_t)m->u.ping.pad; break;
    case FRAME_ERROR: {
        const frame_error *e = &m->u.error;
        if (e->len > FRAME_ERROR_TEXT_MAX || (e->len && !e->text) || e->code >= 0)
            return err_set(err, errlen, DUET_EINVAL, "frame: ERROR needs a code < 0 and at most %d bytes of text",
                           FRAME_ERROR_TEXT_MAX);
        s = FRAME_ERROR_FIXED + (uint64_t)e->len;
        break;
    }
    case FRAME_PROMPT:
    case FRAME_TOKENS: {
        const frame_tokens *t = &m->u.tokens;
        uint32_t allowed = m->type == FRAME_TOKENS ? FRAME_TOK_CONF | FRAME_TOK_LOGIT : 0;
        uint32_t min_n = m->type == FRAME_TOKENS ? 0 : 1; /* TOKENS n = 0 ends a stream */
        if (t->n < min_n || (t->n && !t->ids) || (t->fields & ~allowed) || (m->type == FRAME_PROMPT && t->compute_us) || ((t->fields & FRAME_TOK_CONF) && !t->conf) ||
            ((t->fields & FRAME_TOK_LOGIT) && !t->logit))
            return err_set(err, errlen, DUET_EINVAL, "frame: %s needs n >= %u, ids, and an array per field set",
                           frame_type_name(m->type), min_n);
        s = tokens_bytes(t->n, t->fields);
        break;
    }
    case FRAME_UPLOAD:
    case FRAME_HIDDEN: {
        const frame_rows *r = &m->u.rows;
        if (r->n == 0 || r->dim == 0 || !r->x || !frame_row_bytes(r->enc, r->dim) ||
            (m->type == FRAME_UPLOAD && r->compute_us))
            return err_set(err, errlen, DUET_EINVAL, "frame: %s needs n >= 1, dim >= 1, rows, a known encoding",
                           frame_type_name(m->type));
        s = FRAME_ROWS_FIXED + (uint64_t)r->n * frame_row_bytes(r->enc, r->dim);
        break;
    }
    default: return err_set(err, errlen, DUET_EINVAL, "frame: cannot encode message type %u", m->type);
    }
    if (s > UINT32_MAX)
        return err_set(err, errlen, DUET_EINVAL, "frame: %s payload of %llu bytes does not fit a frame",
                       frame_type_name(m->type), (unsigned long long)s);
    *size = (size_t)s;
    return 0;
}

/* ---- payload encoders ---- */

static uint8_t *hello_encode(uint8_t *p, const frame_hello *h) {
    p = put64(p, h->fingerprint);
    p = put64(p, h->link.up_bps);
    p = put64(p, h->link.down_bps);
    p = put32(p, h->link.rtt_us);
    p = put32(p, h->link.jitter_us);
    p = put32(p, h->link.jitter_dist);
    p = put32(p, h->link.seed);
    p = put32(p, h->dim);
    p = put32(p, h->layer_a);
    p = put32(p, h->layer_b);
    p = put16(p, h->version);
    *p++ = h->part;
    *p++ = h->encodings;
    return p;
}

static int rows_encode(uint8_t *p, const frame_rows *r, char *err, size_t errlen) {
    p = put32(p, r->pos0);
    p = put32(p, r->n);
    p = put32(p, r->dim);
    p = put32(p, r->enc);
    p = put32(p, r->compute_us);
    size_t total = (size_t)r->n * r->dim;
    switch (r->enc) {
    case FRAME_ENC_F32: f32_put(p, r->x, total); break;
    case FRAME_ENC_F16: frame_f16_from_f32(p, r->x, total, true); break;
    default: { /* I8: n scales, then n*dim values; scale = max|x|/127 so the row's extreme maps to +-127 */
        int8_t *q = (int8_t *)(p + (size_t)r->n * 4);
        for (uint32_t i = 0; i < r->n; i++, q += r->dim) {
            float scale;
            if (i8_row(r->x + (size_t)i * r->dim, r->dim, q, &scale))
                return err_set(err, errlen, DUET_EINVAL, "frame: int8 rows: row %u holds a non-finite value", i);
            p = putf(p, scale);
        }
    }
    }
    return 0;
}

int frame_payload_encode(const frame_msg *m, uint8_t *p, size_t size, char *err, size_t errlen) {
    size_t need;
    int rc = frame_payload_size(m, &need, err, errlen);
    if (rc) return rc;
    if (size != need)
        return err_set(err, errlen, DUET_EINVAL, "frame: %s payload needs %zu bytes, buffer has %zu",
                       frame_type_name(m->type), need, size);
    switch (m->type) {
    case FRAME_HELLO:
    case FRAME_HELLO_OK: hello_encode(p, &m->u.hello); break;
    case FRAME_OPEN: {
        const frame_open *o = &m->u.open;
        p = put64(p, o->seed);
        p = put32(p, o->n_ctx);
        p = put32(p, o->mode);
        p = putf(p, o->temperature);
        p = putf(p, o->top_p);
        p = put32(p, (uint32_t)o->top_k);
        put32(p, o->reserved);
        break;
    }
    case FRAME_OPENED: put32(p, m->u.opened.n_ctx); break;
    case FRAME_CLOSE: break;
    case FRAME_REQUEST: {
        const frame_request *q = &m->u.request;
        p = put32(p, q->pos);
        p = put32(p, q->count);
        p = put32(p, q->kv_keep);
        p[0] = q->want;
        p[1] = q->enc;
        p[2] = q->fields;
        p[3] = q->reserved;
        break;
    }
    case FRAME_PING:
    case FRAME_PONG:
        p = put64(p, m->u.ping.stamp);
        p = put32(p, m->u.ping.pad);
        p = put32(p, m->u.ping.reply_pad);
        memset(p, 0, m->u.ping.pad);
        break;
    case FRAME_AUTH:
        p = put32(p, m->u.auth.len);
        memcpy(p, m->u.auth.token, m->u.auth.len);
        break;
    case FRAME_ERROR:
        p = put32(p, (uint32_t)m->u.error.code);
        p = put32(p, m->u.error.len);
        for (uint32_t i = 0; i < m->u.error.len; i++) /* control bytes would reach logs and terminals */
            p[i] = is_control((uint8_t)m->u.error.text[i]) ? ' ' : (uint8_t)m->u.error.text[i];
        break;
    case FRAME_PROMPT:
    case FRAME_TOKENS: {
        const frame_tokens *t = &m->u.tokens;
        p = put32(p, t->pos0);
        p = put32(p, t->n);
        p = put32(p, t->fields);
        p = put32(p, t->compute_us);
        for (uint32_t i = 0; i < t->n; i++) p = put32(p, (uint32_t)t->ids[i]);
        if (t->fields & FRAME_TOK_CONF)
            for (uint32_t i = 0; i < t->n; i++) p = putf(p, t->conf[i]);
        if (t->fields & FRAME_TOK_LOGIT)
            for (uint32_t i = 0; i < t->n; i++) p = putf(p, t->logit[i]);
        break;
    }
    default: return rows_encode(p, &m->u.rows, err, errlen); /* UPLOAD, HIDDEN */
    }
    return 0;
}

/* ---- payload decoders: every field is checked before anything is trusted ---- */

static int want_len(const frame_header *h, size_t need, char *err, size_t errlen) {
    if (h->len == need) return 0;
    return err_set(err, errlen, FRAME_E_LENGTH, "frame: %s payload is %u bytes, its layout needs %zu",
                   frame_type_name(h->type), h->len, need);
}

static int want_fixed(const frame_header *h, size_t fixed, char *err, size_t errlen) {
    if (h->len >= fixed) return 0;
    return err_set(err, errlen, FRAME_E_LENGTH, "frame: %s payload is %u bytes, shorter than its %zu-byte fixed part",
                   frame_type_name(h->type), h->len, fixed);
}

static int hello_decode(const uint8_t *p, frame_hello *h, char *err, size_t errlen) {
    h->fingerprint = get64(&p);
    h->link.up_bps = get64(&p);
    h->link.down_bps = get64(&p);
    h->link.rtt_us = get32(&p);
    h->link.jitter_us = get32(&p);
    h->link.jitter_dist = get32(&p);
    h->link.seed = get32(&p);
    h->dim = get32(&p);
    h->layer_a = get32(&p);
    h->layer_b = get32(&p);
    h->version = get16(&p);
    h->part = *p++;
    h->encodings = *p;
    if (h->version < FRAME_VERSION)
        return err_set(err, errlen, FRAME_E_VALUE, "frame: HELLO announces protocol version %u, below this build's %d",
                       h->version, FRAME_VERSION);
    if (h->layer_a > h->layer_b || h->layer_b > 65536)
        return err_set(err, errlen, FRAME_E_VALUE, "frame: HELLO layer range [%u,%u) is not a range", h->layer_a,
                       h->layer_b);
    if (h->part & ~(unsigned)(FRAME_PART_EMBED | FRAME_PART_HEAD))
        return err_set(err, errlen, FRAME_E_VALUE, "frame: HELLO part flags 0x%x has unknown bits", h->part);
    if (!h->encodings || (h->encodings & ~FRAME_ENC_ALL))
        return err_set(err, errlen, FRAME_E_ENCODING, "frame: HELLO encodings 0x%x: none or unknown bits",
                       h->encodings);
    if (h->link.jitter_dist > LINK_JITTER_NORMAL)
        return err_set(err, errlen, FRAME_E_VALUE, "frame: HELLO link jitter distribution %u unknown",
                       h->link.jitter_dist);
    char e[160];
    if (link_check(&h->link, e, sizeof e)) /* the emulated link's bounds are the CLI's (link_parse) */
        return err_set(err, errlen, FRAME_E_BOUNDS, "frame: HELLO %s", e);
    return 0;
}

static int rows_decode(const frame_header *h, const uint8_t *p, const frame_limits *lim, frame_rows *r, char *err,
                       size_t errlen) {
    int rc = want_fixed(h, FRAME_ROWS_FIXED, err, errlen);
    if (rc) return rc;
    const char *tn = frame_type_name(h->type);
    r->pos0 = get32(&p);
    r->n = get32(&p);
    r->dim = get32(&p);
    r->enc = get32(&p);
    r->compute_us = get32(&p);
    r->x = NULL;
    r->wire = p;
    if (r->n == 0 || r->n > lim->max_rows)
        return err_set(err, errlen, FRAME_E_BOUNDS, "frame: %s of %u rows (allowed 1..%u)", tn, r->n, lim->max_rows);
    if (r->dim == 0 || r->dim > lim->max_dim)
        return err_set(err, errlen, FRAME_E_BOUNDS, "frame: %s dim %u (allowed 1..%u)", tn, r->dim, lim->max_dim);
    if ((uint64_t)r->pos0 + r->n > lim->max_pos)
        return err_set(err, errlen, FRAME_E_BOUNDS, "frame: %s positions %u..%llu beyond the limit %u", tn, r->pos0,
                       (unsigned long long)r->pos0 + r->n - 1, lim->max_pos);
    if (h->type == FRAME_UPLOAD && r->compute_us)
        return err_set(err, errlen, FRAME_E_VALUE, "frame: UPLOAD compute_us %u (must be 0)", r->compute_us);
    size_t row = frame_row_bytes(r->enc, r->dim);
    if (!row) return err_set(err, errlen, FRAME_E_ENCODING, "frame: %s encoding %u unknown", tn, r->enc);
    uint64_t need = FRAME_ROWS_FIXED + (uint64_t)r->n * row;
    if (h->len != need)
        return err_set(err, errlen, FRAME_E_LENGTH, "frame: %s payload is %u bytes; %u rows of dim %u in %s need %llu",
                       tn, h->len, r->n, r->dim, enc_name(r->enc), (unsigned long long)need);
    if (r->enc == FRAME_ENC_I8) {
        const uint8_t *s = r->wire;
        for (uint32_t i = 0; i < r->n; i++) {
            float scale = getf(&s);
            if (!(scale >= 0 && scale <= 3.4e38f))
                return err_set(err, errlen, FRAME_E_VALUE, "frame: %s row %u has int8 scale %g", tn, i, (double)scale);
        }
    }
    return 0;
}

static int tokens_decode(const frame_header *h, const uint8_t *p, const frame_limits *lim, frame_tokens *t,
                         char *err, size_t errlen) {
    int rc = want_fixed(h, FRAME_TOKENS_FIXED, err, errlen);
    if (rc) return rc;
    const char *tn = frame_type_name(h->type);
    t->pos0 = get32(&p);
    t->n = get32(&p);
    t->fields = get32(&p);
    t->compute_us = get32(&p);
    t->ids = NULL;
    t->conf = t->logit = NULL;
    t->wire = p;
    uint32_t allowed = h->type == FRAME_TOKENS ? FRAME_TOK_CONF | FRAME_TOK_LOGIT : 0;
    if (t->fields & ~allowed)
        return err_set(err, errlen, FRAME_E_VALUE, "frame: %s fields 0x%x has unknown bits", tn, t->fields);
    if (h->type == FRAME_PROMPT && t->compute_us)
        return err_set(err, errlen, FRAME_E_VALUE, "frame: PROMPT compute_us %u (must be 0)", t->compute_us);
    uint32_t min_n = h->type == FRAME_TOKENS ? 0 : 1; /* TOKENS n = 0 ends a stream */
    if (t->n < min_n || t->n > lim->max_rows)
        return err_set(err, errlen, FRAME_E_BOUNDS, "frame: %s of %u tokens (allowed %u..%u)", tn, t->n, min_n,
                       lim->max_rows);
    if ((uint64_t)t->pos0 + t->n > lim->max_pos)
        return err_set(err, errlen, FRAME_E_BOUNDS, "frame: %s positions %u.. beyond the limit %u", tn, t->pos0,
                       lim->max_pos);
    rc = want_len(h, tokens_bytes(t->n, t->fields), err, errlen);
    if (rc) return rc;
    const uint8_t *q = t->wire;
    for (uint32_t i = 0; i < t->n; i++) {
        int32_t id = (int32_t)get32(&q);
        if (id < 0) return err_set(err, errlen, FRAME_E_VALUE, "frame: %s token %u has negative id %d", tn, i, id);
    }
    return 0;
}

int frame_payload_decode(const frame_header *h, const uint8_t *p, const frame_limits *lim, frame_msg *out,
                         char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    out->type = h->type;
    out->session = h->session;
    int rc;
    switch (h->type) {
    case FRAME_HELLO:
    case FRAME_HELLO_OK:
        if ((rc = want_len(h, FRAME_HELLO_SIZE, err, errlen))) return rc;
        rc = hello_decode(p, &out->u.hello, err, errlen);
        if (!rc && (out->u.hello.dim == 0 || out->u.hello.dim > lim->max_dim))
            rc = err_set(err, errlen, FRAME_E_BOUNDS, "frame: HELLO dim %u (allowed 1..%u)", out->u.hello.dim,
                         lim->max_dim);
        return rc;
    case FRAME_OPEN: {
        if ((rc = want_len(h, FRAME_OPEN_SIZE, err, errlen))) return rc;
        frame_open *o = &out->u.open;
        o->seed = get64(&p);
        o->n_ctx = get32(&p);
        o->mode = get32(&p);
        o->temperature = getf(&p);
        o->top_p = getf(&p);
        o->top_k = (int32_t)get32(&p);
        o->reserved = get32(&p);
        if (o->n_ctx == 0 || o->n_ctx > lim->max_pos)
            return err_set(err, errlen, FRAME_E_BOUNDS, "frame: OPEN n_ctx %u (allowed 1..%u)", o->n_ctx, lim->max_pos);
        if (o->mode < FRAME_MODE_CLOUD || o->mode > FRAME_MODE_PD)
            return err_set(err, errlen, FRAME_E_VALUE, "frame: OPEN mode %u unknown", o->mode);
        if (!isfinite(o->temperature) || !isfinite(o->top_p) || o->reserved)
            return err_set(err, errlen, FRAME_E_VALUE, "frame: OPEN sampling values not finite or reserved set");
        return 0;
    }
    case FRAME_OPENED:
        if ((rc = want_len(h, FRAME_OPENED_SIZE, err, errlen))) return rc;
        out->u.opened.n_ctx = get32(&p);
        if (out->u.opened.n_ctx == 0 || out->u.opened.n_ctx > lim->max_pos)
            return err_set(err, errlen, FRAME_E_BOUNDS, "frame: OPENED n_ctx %u (allowed 1..%u)", out->u.opened.n_ctx,
                           lim->max_pos);
        return 0;
    case FRAME_CLOSE: return want_len(h, 0, err, errlen);
    case FRAME_REQUEST: {
        if ((rc = want_len(h, FRAME_REQUEST_SIZE, err, errlen))) return rc;
        frame_request *q = &out->u.request;
        q->pos = get32(&p);
        q->count = get32(&p);
        q->kv_keep = get32(&p);
        q->want = p[0];
        q->enc = p[1];
        q->fields = p[2];
        q->reserved = p[3];
        if (q->want < FRAME_WANT_TOKENS || q->want > FRAME_WANT_STREAM)
            return err_set(err, errlen, FRAME_E_VALUE, "frame: REQUEST wants %u (1 tokens, 2 hidden, 3 stream)", q->want);
        uint32_t max_count = q->want == FRAME_WANT_STREAM ? lim->max_pos : lim->max_rows;
        if (q->count == 0 || q->count > max_count || q->pos >= lim->max_pos)
            return err_set(err, errlen, FRAME_E_BOUNDS, "frame: REQUEST pos %u count %u (count 1..%u, pos < %u)", q->pos,
                           q->count, max_count, lim->max_pos);
        if (q->kv_keep != FRAME_KEEP_ALL && q->kv_keep > lim->max_pos)
            return err_set(err, errlen, FRAME_E_BOUNDS, "frame: REQUEST kv_keep %u beyond the limit %u", q->kv_keep,
                           lim->max_pos);
        if (q->want == FRAME_WANT_HIDDEN ? !frame_row_bytes(q->enc, 1) : q->enc != 0)
            return err_set(err, errlen, FRAME_E_ENCODING, "frame: REQUEST encoding %u invalid for want %u", q->enc,
                           q->want);
        if ((q->want == FRAME_WANT_HIDDEN ? q->fields != 0 : (q->fields & ~(FRAME_TOK_CONF | FRAME_TOK_LOGIT)) != 0) ||
            q->reserved)
            return err_set(err, errlen, FRAME_E_VALUE, "frame: REQUEST fields 0x%x / reserved 0x%x invalid", q->fields,
                           q->reserved);
        return 0;
    }
    case FRAME_PING:
    case FRAME_PONG: {
        if ((rc = want_fixed(h, FRAME_PING_SIZE, err, errlen))) return rc;
        frame_ping *g = &out->u.ping;
        g->stamp = get64(&p);
        g->pad = get32(&p);
        g->reply_pad = get32(&p);
        if ((rc = want_len(h, FRAME_PING_SIZE + (size_t)g->pad, err, errlen))) return rc;
        if ((uint64_t)g->reply_pad + FRAME_PING_SIZE > lim->max_payload || (h->type == FRAME_PONG && g->reply_pad))
            return err_set(err, errlen, FRAME_E_BOUNDS, "frame: %s asks for a %u-byte reply pad",
                           frame_type_name(h->type), g->reply_pad);
        return 0;
    }
    case FRAME_AUTH: {
        if ((rc = want_fixed(h, FRAME_AUTH_FIXED, err, errlen))) return rc;
        frame_auth *a = &out->u.auth;
        a->len = get32(&p);
        a->token = p;
        if (a->len < 1 || a->len > FRAME_AUTH_MAX)
            return err_set(err, errlen, FRAME_E_BOUNDS, "frame: AUTH token of %u bytes (allowed 1..%d)", a->len,
                           FRAME_AUTH_MAX);
        return want_len(h, FRAME_AUTH_FIXED + (size_t)a->len, err, errlen);
    }
    case FRAME_ERROR: {
        if ((rc = want_fixed(h, FRAME_ERROR_FIXED, err, errlen))) return rc;
        frame_error *e = &out->u.error;
        e->code = (int32_t)get32(&p);
        e->len = get32(&p);
        e->text = (const char *)p;
        if (e->len > FRAME_ERROR_TEXT_MAX)
            return err_set(err, errlen, FRAME_E_BOUNDS, "frame: ERROR text of %u bytes (max %d)", e->len,
                           FRAME_ERROR_TEXT_MAX);
        if ((rc = want_len(h, FRAME_ERROR_FIXED + (size_t)e->len, err, errlen))) return rc;
        if (e->code >= 0) return err_set(err, errlen, FRAME_E_VALUE, "frame: ERROR code %d is not an error", e->code);
        for (uint32_t i = 0; i < e->len; i++)
            if (is_control(p[i]))
                return err_set(err, errlen, FRAME_E_VALUE, "frame: ERROR text has control byte 0x%02x at %u", p[i], i);
        return 0;
    }
    case FRAME_PROMPT:
    case FRAME_TOKENS: return tokens_decode(h, p, lim, &out->u.tokens, err, errlen);
    case FRAME_UPLOAD:
    case FRAME_HIDDEN: return rows_decode(h, p, lim, &out->u.rows, err, errlen);
    default: return err_set(err, errlen, FRAME_E_TYPE, "frame: unknown message type %u", h->type);
    }
}

/* ---- whole frames ---- */

int frame_encode(const frame_msg *m, uint32_t seq, uint8_t *buf, size_t cap, size_t *len, char *err, size_t errlen) {
    size_t size;
    int rc = frame_payload_size(m, &size, err, errlen);
    if (rc) return rc;
    if (cap < FRAME_HEADER_SIZE + size)
        return err_set(err, errlen, DUET_EINVAL, "frame: %s needs %zu bytes, buffer has %zu", frame_type_name(m->type),
                       FRAME_HEADER_SIZE + size, cap);
    frame_header h = {FRAME_MAGIC, FRAME_VERSION, m->type, 0, m->session, seq, (uint32_t)size};
    frame_header_encode(&h, buf);
    rc = frame_payload_encode(m, buf + FRAME_HEADER_SIZE, size, err, errlen);
    if (rc) return rc;
    *len = FRAME_HEADER_SIZE + size;
    return 0;
}

int frame_decode(const uint8_t *buf, size_t len, const frame_limits *lim, frame_header *h, frame_msg *out,
                 char *err, size_t errlen) {
    int rc = frame_header_decode(buf, len, lim, h, err, errlen);
    if (rc) return rc;
    size_t have = len - FRAME_HEADER_SIZE;
    if (have < h->len)
        return err_set(err, errlen, FRAME_E_TRUNCATED, "frame: %s payload is %u bytes, only %zu present",
                       frame_type_name(h->type), h->len, have);
    if (have > h->len)
        return err_set(err, errlen, FRAME_E_LENGTH, "frame: %zu bytes after the end of a %s frame", have - h->len,
                       frame_type_name(h->type));
    return frame_payload_decode(h, buf + FRAME_HEADER_SIZE, lim, out, err, errlen);
}

/* ---- readers of decoded arrays ---- */

void frame_rows_get(const frame_rows *r, float *x) {
    const uint8_t *p = r->wire;
    size_t total = (size_t)r->n * r->dim;
    switch (r->enc) {
    case FRAME_ENC_F32: f32_get(x, p, total); break;
    case FRAME_ENC_F16: frame_f16_to_f32(x, p, total, true); break;
    default: {
        const uint8_t *q = p + (size_t)r->n * 4;
        for (uint32_t i = 0; i < r->n; i++) {
            float scale = getf(&p);
            for (uint32_t j = 0; j < r->dim; j++) *x++ = (float)(int8_t)*q++ * scale;
        }
    }
    }
}

void frame_tokens_get(const frame_tokens *t, int32_t *ids, float *conf, float *logit) {
    const uint8_t *p = t->wire;
    for (uint32_t i = 0; i < t->n; i++) ids[i] = (int32_t)get32(&p);
    if (t->fields & FRAME_TOK_CONF)
        for (uint32_t i = 0; i < t->n; i++) {
            float v = getf(&p);
            if (conf) conf[i] = v;
        }
    if (t->fields & FRAME_TOK_LOGIT)
        for (uint32_t i = 0; i < t->n; i++) {
            float v = getf(&p);
            if (logit) logit[i] = v;
        }
}

void frame_error_msg(frame_msg *m, uint32_t session, int code, const char *text) {
    memset(m, 0, sizeof *m);
    m->type = FRAME_ERROR;
    m->session = session;
    m->u.error.code = code;
    m->u.error.text = text;
    m->u.error.len = (uint32_t)strnlen(text, FRAME_ERROR_TEXT_MAX);
}

static void part_str(char *buf, size_t cap, const frame_hello *h) {
    snprintf(buf, cap, "layers [%u,%u)%s%s", h->layer_a, h->layer_b, (h->part & FRAME_PART_EMBED) ? " + embed" : "",
             (h->part & FRAME_PART_HEAD) ? " + head" : "");
}

int frame_hello_check(const frame_hello *have, const frame_hello *want, char *err, size_t errlen) {
    if (have->fingerprint != want->fingerprint)
        return err_set(err, errlen, FRAME_E_REFUSED, "handshake: model mismatch (expected fingerprint %016llx, held %016llx)",
                       (unsigned long long)want->fingerprint, (unsigned long long)have->fingerprint);
    if (have->dim != want->dim)
        return err_set(err, errlen, FRAME_E_REFUSED, "handshake: hidden dim mismatch (expected %u, held %u)", want->dim,
                       have->dim);
    if (have->layer_a != want->layer_a || have->layer_b != want->layer_b || have->part != want->part) {
        char a[64], b[64];
        part_str(a, sizeof a, want);
        part_str(b, sizeof b, have);
        return err_set(err, errlen, FRAME_E_REFUSED, "handshake: split mismatch (expected %s, held %s)", a, b);
    }
    if (!(have->encodings & want->encodings))
        return err_set(err, errlen, FRAME_E_REFUSED, "handshake: no common hidden-state encoding (0x%x vs 0x%x)",
                       want->encodings, have->encodings);
    return 0;
}
