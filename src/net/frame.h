/* frame.h: the device-cloud wire format (docs/PROTOCOL.md is the full specification). Pure encode/decode
 * of bytes, no I/O. A frame is a 20-byte little-endian header followed by `len` payload bytes whose layout
 * the message type fixes. Every field is written and read one by one, never by casting bytes.
 *
 * Ownership: encoders read the caller's arrays (rows, ids) and write into the caller's buffer; decoders
 * leave variable-length data (rows, ids, error text) inside the caller's payload buffer and point at it, so
 * a decoded frame_msg is valid as long as that buffer is.
 *
 * Errors: every malformed frame gets its own code from enum frame_err (all below -99, so they never collide
 * with enum duet_status), which is also the code an ERROR frame carries back to the peer. Bad arguments to
 * encoders give DUET_EINVAL. */
#ifndef DUET_NET_FRAME_H
#define DUET_NET_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/link.h"

#define FRAME_MAGIC 0x54455544u /* the bytes "DUET" */
/* 1: the first. 2: AUTH (type 14) and FRAME_E_SHUTDOWN (-116), which came to 1 unannounced, are now part of
 * the version, and a cloud may answer a request later than in 1 (it batches sessions): no layout changed,
 * but 1 and 2 do not talk (a header of the other version is refused with FRAME_E_VERSION); an ERROR in
 * version-1 framing is still read, so an old cloud's refusal reaches a new device. */
#define FRAME_VERSION 2
#define FRAME_HEADER_SIZE 20
#define FRAME_MAX_PAYLOAD_DEFAULT (64u << 20)
#define FRAME_ERROR_TEXT_MAX 1024
#define FRAME_KEEP_ALL 0xffffffffu /* REQUEST.kv_keep: no rollback */

enum frame_type {
    FRAME_HELLO = 1,    /* device -> cloud: who I am, what I expect you to hold */
    FRAME_HELLO_OK = 2, /* cloud -> device: what I hold (same layout) */
    FRAME_ERROR = 3,    /* either way: code + text; the sender closes after it */
    FRAME_OPEN = 4,     /* device -> cloud: new session (session id 0) */
    FRAME_OPENED = 5,   /* cloud -> device: its session id in the header */
    FRAME_CLOSE = 6,    /* device -> cloud: end the session; cloud answers CLOSE when it sends no more */
    FRAME_PROMPT = 7,   /* device -> cloud: token ids (cloud and pd modes) */
    FRAME_UPLOAD = 8,   /* device -> cloud: hidden states for positions pos0..pos0+n-1 */
    FRAME_REQUEST = 9,  /* device -> cloud: compute and return tokens or hidden states */
    FRAME_TOKENS = 10,  /* cloud -> device: token ids (+ confidence, top logit) */
    FRAME_HIDDEN = 11,  /* cloud -> device: hidden states */
    FRAME_PING = 12,    /* either way: echo request for RTT and bandwidth probes */
    FRAME_PONG = 13,
    FRAME_AUTH = 14,    /* device -> cloud, before HELLO: the shared-secret token of a cloud that requires one */
};
#define FRAME_TYPE_MAX FRAME_AUTH

enum frame_err {
    FRAME_E_MAGIC = -100,     /* not a duet frame */
    FRAME_E_VERSION = -101,   /* header speaks another protocol version */
    FRAME_E_TYPE = -102,      /* unknown message type */
    FRAME_E_FLAGS = -103,     /* reserved header flag bits set */
    FRAME_E_TOO_BIG = -104,   /* payload length above the frame size limit */
    FRAME_E_LENGTH = -105,    /* payload length does not match the type's layout */
    FRAME_E_TRUNCATED = -106, /* the bytes end before the header or payload does */
    FRAME_E_BOUNDS = -107,    /* a count, dim or position outside the limits */
    FRAME_E_ENCODING = -108,  /* unknown hidden-state encoding */
    FRAME_E_VALUE = -109,     /* a field holds an impossible value (reserved bits, NaN scale, a > b, ...) */
    FRAME_E_SEQ = -110,       /* sequence number is not the previous one + 1 */
    FRAME_E_SESSION = -111,   /* no such session on this connection */
    FRAME_E_REFUSED = -112,   /* handshake mismatch: version, model, part, dim or encodings */
    FRAME_E_STATE = -113,     /* message not allowed now (UPLOAD before OPENED, a second HELLO, ...) */
    FRAME_E_LIMIT = -114,     /* server limit reached: sessions, positions, pending bytes */
    FRAME_E_INTERNAL = -115,  /* the peer failed to compute (engine error) */
    FRAME_E_SHUTDOWN = -116,  /* the cloud is stopping: the session ends now */
};

enum frame_enc { FRAME_ENC_F16 = 0, FRAME_ENC_F32 = 1, FRAME_ENC_I8 = 2 }; /* F16 is the default */
#define FRAME_ENC_ALL 0x7u /* HELLO.encodings bitmask of every encoding: bit e = 1 << e */

enum frame_part { FRAME_PART_EMBED = 1, FRAME_PART_HEAD = 2 };
enum frame_mode { FRAME_MODE_CLOUD = 1, FRAME_MODE_SPLIT = 2, FRAME_MODE_EE = 3, FRAME_MODE_HAT = 4, FRAME_MODE_PD = 5 };
enum frame_want {
    FRAME_WANT_TOKENS = 1, /* TOKENS: the next-token prediction at each of positions pos..pos+count-1 */
    FRAME_WANT_HIDDEN = 2, /* HIDDEN: the cloud part's output rows for positions pos..pos+count-1 */
    FRAME_WANT_STREAM = 3, /* generate up to count tokens, the first at position pos: one TOKENS frame per
                            * token (pos0 = the position it takes), then a TOKENS frame with n = 0 */
};
enum frame_tok_field { FRAME_TOK_CONF = 1, FRAME_TOK_LOGIT = 2 }; /* TOKENS extras: max softmax prob, top logit */

/* The wire header, field for field (packed by construction: no padding). */
typedef struct frame_header {
    uint32_t magic;   /* FRAME_MAGIC */
    uint16_t version; /* FRAME_VERSION */
    uint8_t type;     /* enum frame_type */
    uint8_t flags;    /* reserved, 0 */
    uint32_t session; /* 0 until OPENED names one */
    uint32_t seq;     /* per direction: 0 for the first frame, then +1 */
    uint32_t len;     /* payload bytes that follow */
} frame_header;
_Static_assert(sizeof(frame_header) == FRAME_HEADER_SIZE, "frame_header has padding");

/* What a decoder accepts. */
typedef struct frame_limits {
    uint32_t max_payload; /* bytes after the header */
    uint32_t max_rows;    /* n of UPLOAD/HIDDEN/PROMPT/TOKENS, count of REQUEST */
    uint32_t max_dim;     /* hidden width */
    uint32_t max_pos;     /* positions (and n_ctx) are < max_pos */
} frame_limits;
frame_limits frame_limits_default(void); /* 64 MiB, 65536 rows, 65536 dim, 2^24 positions */

/* HELLO and HELLO_OK (56 bytes). In HELLO the part fields say what the sender expects the receiver to hold;
 * in HELLO_OK what the sender holds. link is the emulated link the cloud must apply to its sends. */
typedef struct frame_hello {
    uint64_t fingerprint;        /* duet_model_fingerprint */
    link_params link;            /* all zero: none */
    uint32_t dim;                /* hidden width */
    uint32_t layer_a, layer_b;   /* layers [a,b) */
    uint16_t version;            /* highest protocol version the sender speaks (>= the header's) */
    uint8_t part;                /* enum frame_part bits */
    uint8_t encodings;           /* 1 << enum frame_enc for each encoding the sender reads and writes */
} frame_hello;
#define FRAME_HELLO_SIZE 56
_Static_assert(sizeof(frame_hello) == FRAME_HELLO_SIZE, "frame_hello has padding");

typedef struct frame_open { /* OPEN (32 bytes) */
    uint64_t seed;              /* sampling seed */
    uint32_t n_ctx;             /* positions the session may reach */
    uint32_t mode;              /* enum frame_mode */
    float temperature;          /* <= 0: greedy */
    float top_p;                /* >= 1: off */
    int32_t top_k;              /* <= 0: off */
    uint32_t reserved;          /* 0 */
} frame_open;
#define FRAME_OPEN_SIZE 32
_Static_assert(sizeof(frame_open) == FRAME_OPEN_SIZE, "frame_open has padding");

typedef struct frame_opened { /* OPENED (4 bytes); the session id is the header's */
    uint32_t n_ctx;             /* granted, <= asked */
} frame_opened;
#define FRAME_OPENED_SIZE 4
_Static_assert(sizeof(frame_opened) == FRAME_OPENED_SIZE, "frame_opened has padding");

typedef struct frame_request { /* REQUEST (16 bytes) */
    uint32_t pos;               /* first position asked about */
    uint32_t count;             /* positions (TOKENS, HIDDEN) or tokens to generate (STREAM) */
    uint32_t kv_keep;           /* before anything else, forget cloud positions >= kv_keep; FRAME_KEEP_ALL: none */
    uint8_t want;               /* enum frame_want */
    uint8_t enc;                /* HIDDEN: encoding of the reply; else 0 */
    uint8_t fields;             /* TOKENS/STREAM: enum frame_tok_field bits; else 0 */
    uint8_t reserved;           /* 0 */
} frame_request;
#define FRAME_REQUEST_SIZE 16
_Static_assert(sizeof(frame_request) == FRAME_REQUEST_SIZE, "frame_request has padding");

typedef struct frame_ping { /* PING and PONG: 16 bytes + pad bytes (ignored content) */
    uint64_t stamp;             /* sender's value, echoed in PONG */
    uint32_t pad;               /* bytes that follow (bandwidth probes) */
    uint32_t reply_pad;         /* PING: pad the PONG must carry; PONG: 0 */
} frame_ping;
#define FRAME_PING_SIZE 16
_Static_assert(sizeof(frame_ping) == FRAME_PING_SIZE, "frame_ping has padding");

typedef struct frame_auth { /* AUTH: u32 len, then len token bytes (1..FRAME_AUTH_MAX) */
    uint32_t len;
    const uint8_t *token;       /* [len] */
} frame_auth;
#define FRAME_AUTH_FIXED 4
#define FRAME_AUTH_MAX 256

/* Variable-length types: the scalar prefix of each struct mirrors the wire's fixed part (asserted below). */
typedef struct frame_error { /* ERROR: i32 code, u32 len, then len bytes of UTF-8 text */
    int32_t code;               /* enum frame_err or enum duet_status, < 0 */
    uint32_t len;
    const char *text;           /* [len], not NUL-terminated */
} frame_error;
#define FRAME_ERROR_FIXED 8

/* compute_us (TOKENS, HIDDEN): microseconds the cloud computed for this answer, so the device can report
 * cloud_compute_ms; 0 in PROMPT and UPLOAD. */
typedef struct frame_tokens { /* PROMPT and TOKENS: u32 pos0, n, fields, compute_us; i32 ids[n]; extras */
    uint32_t pos0;              /* position of ids[0] (PROMPT, streamed TOKENS); TOKENS answering
                                 * FRAME_WANT_TOKENS: the position whose prediction ids[0] is */
    uint32_t n;                 /* PROMPT >= 1; TOKENS >= 0 (0: end of a stream) */
    uint32_t fields;            /* TOKENS: enum frame_tok_field bits; PROMPT: 0 */
    uint32_t compute_us;
    const int32_t *ids;         /* encode: [n] */
    const float *conf, *logit;  /* encode: [n] each, when its field bit is set */
    const uint8_t *wire;        /* decode: the arrays in the payload; read them with frame_tokens_get */
} frame_tokens;
#define FRAME_TOKENS_FIXED 16

typedef struct frame_rows { /* UPLOAD and HIDDEN: u32 pos0, n, dim, enc, compute_us; then the rows */
    uint32_t pos0;
    uint32_t n;
    uint32_t dim;
    uint32_t enc;               /* enum frame_enc */
    uint32_t compute_us;
    const float *x;             /* encode: [n][dim] */
    const uint8_t *wire;        /* decode: encoded rows in the payload; read them with frame_rows_get */
} frame_rows;
#define FRAME_ROWS_FIXED 20

_Static_assert(offsetof(frame_error, len) + 4 == FRAME_ERROR_FIXED, "ERROR fixed part");
_Static_assert(offsetof(frame_tokens, compute_us) + 4 == FRAME_TOKENS_FIXED, "PROMPT/TOKENS fixed part");
_Static_assert(offsetof(frame_rows, compute_us) + 4 == FRAME_ROWS_FIXED, "UPLOAD/HIDDEN fixed part");

typedef struct frame_msg {
    uint8_t type;               /* enum frame_type */
    uint32_t session;
    union {
        frame_hello hello;      /* HELLO, HELLO_OK */
        frame_error error;      /* ERROR */
        frame_open open;        /* OPEN */
        frame_opened opened;    /* OPENED */
        frame_tokens tokens;    /* PROMPT, TOKENS */
        frame_rows rows;        /* UPLOAD, HIDDEN */
        frame_request request;  /* REQUEST */
        frame_ping ping;        /* PING, PONG */
        frame_auth auth;        /* AUTH */
    } u;                        /* CLOSE: empty */
} frame_msg;

const char *frame_type_name(int type);
const char *frame_err_name(int code);

void frame_header_encode(const frame_header *h, uint8_t out[FRAME_HEADER_SIZE]);
/* Checks magic, version, type, flags and len against lim->max_payload (not seq: that is the transport's). */
int frame_header_decode(const uint8_t *buf, size_t len, const frame_limits *lim, frame_header *out, char *err,
                        size_t errlen);

/* Bytes of m's payload; DUET_EINVAL if m cannot be encoded (bad type, encoding, count). */
int frame_payload_size(const frame_msg *m, size_t *size, char *err, size_t errlen);
/* Writes m's payload into p[size] (size from frame_payload_size). */
int frame_payload_encode(const frame_msg *m, uint8_t *p, size_t size, char *err, size_t errlen);
/* Validates the payload p[h->len] of a frame whose header decoded, and fills out (pointing into p). */
int frame_payload_decode(const frame_header *h, const uint8_t *p, const frame_limits *lim, frame_msg *out,
                         char *err, size_t errlen);

/* A whole frame in a buffer: header + payload. *len gets the frame's size; buf must hold cap bytes. */
int frame_encode(const frame_msg *m, uint32_t seq, uint8_t *buf, size_t cap, size_t *len, char *err, size_t errlen);
/* buf[len] must be exactly one frame. */
int frame_decode(const uint8_t *buf, size_t len, const frame_limits *lim, frame_header *h, frame_msg *out,
                 char *err, size_t errlen);

/* Reads decoded rows into x[n][dim] as floats. */
void frame_rows_get(const frame_rows *r, float *x);
/* Reads decoded tokens; conf and logit may be NULL, and are left alone when their field is absent. */
void frame_tokens_get(const frame_tokens *t, int32_t *ids, float *conf, float *logit);
/* fp16 arrays as on the wire (n little-endian IEEE halves). simd: use F16C where the CPU has it (the
 * encoders do); false runs the portable scalar reference, which gives the same bits. */
void frame_f16_from_f32(uint8_t *dst, const float *x, size_t n, bool simd);
void frame_f16_to_f32(float *x, const uint8_t *src, size_t n, bool simd);
/* Bytes one row takes in an encoding (0 for an unknown one). */
size_t frame_row_bytes(uint32_t enc, uint32_t dim);

/* Fills m as an ERROR frame; text is NUL-terminated and cut at FRAME_ERROR_TEXT_MAX. */
void frame_error_msg(frame_msg *m, uint32_t session, int code, const char *text);
/* Handshake check: `have` is what this side holds, `want` what the peer expects it to hold (the peer's
 * HELLO, or for the device the cloud's HELLO_OK against its own HELLO). FRAME_E_REFUSED names the mismatch. */
int frame_hello_check(const frame_hello *have, const frame_hello *want, char *err, size_t errlen);

#endif
