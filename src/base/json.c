/* json.c: strict RFC 8259 reader. A recursive-descent parser bounded to JSON_MAX_DEPTH levels; the
 * children of an array/object are gathered on one shared scratch stack and, when the container closes,
 * copied into the document's arena as one contiguous block (so a document is a handful of large
 * allocations, freed together). */
#include "base/json.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "duet.h"

#define JSON_MAX_DEPTH 256
#define JSON_MAX_INPUT ((size_t)256 << 20)
#define ARENA_CHUNK ((size_t)64 << 10)

struct json_val {
    const char *key; /* member name when the value sits in an object, else NULL */
    union {
        double num;
        const char *str;       /* [n + 1] bytes, NUL-terminated */
        const json_val *items; /* [n] array elements or object members */
    } u;
    size_t n;
    uint32_t klen; /* bytes of key (keys may hold \u0000, so strlen is not enough) */
    uint8_t type;
    bool b;
};

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(max_align_t) unsigned char data[];
} chunk;

struct json {
    chunk *chunks; /* newest first */
    json_val root;
};

typedef struct parser {
    const unsigned char *s;
    size_t len, pos;
    json *doc;
    json_val *stack; /* [cap] children of the containers being parsed, innermost last */
    size_t top, cap;
    char *num;       /* [numcap] scratch for strtod, which needs a NUL-terminated copy */
    size_t numcap;
    char *err;
    size_t errlen;
} parser;

static void *arena_alloc(json *doc, size_t n) {
    n = (n + 15) & ~(size_t)15;
    chunk *c = doc->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->next = doc->chunks;
        c->used = 0;
        c->cap = cap;
        doc->chunks = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

static int fail(parser *p, int status, const char *what) {
    return err_set(p->err, p->errlen, status, "json: byte %zu: %s", p->pos, what);
}

static int nomem(parser *p) { return fail(p, DUET_ENOMEM, "out of memory"); }

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int push(parser *p, const json_val *v) {
    if (p->top == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        json_val *s = realloc(p->stack, cap * sizeof *s);
        if (!s) return nomem(p);
        p->stack = s;
        p->cap = cap;
    }
    p->stack[p->top++] = *v;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at s[0..avail), or 0 if it is not one (overlong forms,
 * surrogates and code points above U+10FFFF are refused, as RFC 3629 requires). */
static size_t utf8_seq(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    if (avail < n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return n;
}

static int hex4(const unsigned char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parses the string starting at the opening quote into arena memory. Escapes only shrink text, so the
 * raw span bounds the decoded size. */
static int parse_string(parser *p, const char **out, size_t *outlen) {
    size_t start = ++p->pos, end = start;
    while (end < p->len && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->len) return fail(p, DUET_EFORMAT, "unterminated string");
    char *o = arena_alloc(p->doc, end - start + 1);
    if (!o) return nomem(p);
    size_t n = 0;
    while (p->pos < end) {
        unsigned char c = p->s[p->pos];
        if (c < 0x20) return fail(p, DUET_EFORMAT, "control character in string");
        if (c != '\\') {
            size_t k = utf8_seq(p->s + p->pos, end - p->pos);
            if (!k) return fail(p, DUET_EFORMAT, "invalid UTF-8 in string");
            memcpy(o + n, p->s + p->pos, k);
            n += k;
            p->pos += k;
            continue;
        }
        char e = (char)p->s[p->pos + 1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            o[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            p->pos += 2;
            continue;
        }
        if (e != 'u') return fail(p, DUET_EFORMAT, "bad escape in string");
        unsigned cp, lo;
        if (end - p->pos < 6 || hex4(p->s + p->pos + 2, &cp))
            return fail(p, DUET_EFORMAT, "bad \\u escape in string");
        if (cp >= 0xdc00 && cp <= 0xdfff) return fail(p, DUET_EFORMAT, "lone low surrogate in string");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            const unsigned char *q = p->s + p->pos + 6;
            if (end - p->pos < 12 || q[0] != '\\' || q[1] != 'u' || hex4(q + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                return fail(p, DUET_EFORMAT, "lone high surrogate in string");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p->pos += 6;
        }
        n += put_utf8(o + n, cp);
        p->pos += 6;
    }
    o[n] = '\0';
    p->pos = end + 1;
    *out = o;
    *outlen = n;
    return 0;
}

static size_t digits(parser *p) {
    size_t n = 0;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++, n++;
    return n;
}

/* Checks the RFC grammar itself (strtod alone would take hex, "inf", leading zeros and "1."), then lets
 * strtod do the correctly rounded conversion. */
static int parse_number(parser *p, double *out) {
    size_t start = p->pos;
    if (p->s[p->pos] == '-') p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '0') {
        p->pos++;
        if (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            return fail(p, DUET_EFORMAT, "leading zero in number");
    } else if (!digits(p)) return fail(p, DUET_EFORMAT, "bad number");
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (!digits(p)) return fail(p, DUET_EFORMAT, "bad number: no digits after '.'");
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (!digits(p)) return fail(p, DUET_EFORMAT, "bad number: no digits in exponent");
    }
    size_t n = p->pos - start;
    if (n + 1 > p->numcap) {
        char *b = realloc(p->num, n + 1);
        if (!b) return nomem(p);
        p->num = b;
        p->numcap = n + 1;
    }
    memcpy(p->num, p->s + start, n);
    p->num[n] = '\0';
    *out = strtod(p->num, NULL);
    if (isinf(*out)) {
        p->pos = start;
        return fail(p, DUET_EFORMAT, "number out of range");
    }
    return 0;
}

static int literal(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n)) return fail(p, DUET_EFORMAT, "unexpected character");
    p->pos += n;
    return 0;
}

static int parse_value(parser *p, json_val *v, int depth);

/* Parses '[' ... ']' or '{' ... '}' (p->pos at the opening bracket). */
static int parse_container(parser *p, json_val *v, int depth) {
    if (depth >= JSON_MAX_DEPTH) return fail(p, DUET_EFORMAT, "nesting deeper than 256");
    bool obj = p->s[p->pos] == '{';
    char close = obj ? '}' : ']';
    v->type = obj ? JSON_OBJ : JSON_ARR;
    size_t base = p->top;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        v->u.items = NULL;
        v->n = 0;
        return 0;
    }
    for (;;) {
        json_val child = {0};
        int rc;
        if (obj) {
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != '"') return fail(p, DUET_EFORMAT, "expected a string key");
            size_t klen;
            if ((rc = parse_string(p, &child.key, &klen))) return rc;
            if (klen > UINT32_MAX) return fail(p, DUET_EFORMAT, "key too long");
            child.klen = (uint32_t)klen;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') return fail(p, DUET_EFORMAT, "expected ':'");
            p->pos++;
        }
        const char *key = child.key;
        uint32_t klen = child.klen;
        if ((rc = parse_value(p, &child, depth + 1))) return rc;
        child.key = key;
        child.klen = klen;
        if ((rc = push(p, &child))) return rc;
        skip_ws(p);
        if (p->pos >= p->len) return fail(p, DUET_EFORMAT, obj ? "unterminated object" : "unterminated array");
        if (p->s[p->pos] == close) break;
        if (p->s[p->pos] != ',') return fail(p, DUET_EFORMAT, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        p->pos++;
    }
    p->pos++;
    size_t n = p->top - base;
    json_val *items = arena_alloc(p->doc, n * sizeof *items);
    if (!items) return nomem(p);
    memcpy(items, p->stack + base, n * sizeof *items);
    p->top = base;
    v->u.items = items;
    v->n = n;
    return 0;
}

static int parse_value(parser *p, json_val *v, int depth) {
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, DUET_EFORMAT, "unexpected end of input");
    unsigned char c = p->s[p->pos];
    *v = (json_val){0};
    switch (c) {
    case '{':
    case '[': return parse_container(p, v, depth);
    case '"': v->type = JSON_STR; return parse_string(p, &v->u.str, &v->n);
    case 't': v->type = JSON_BOOL; v->b = true; return literal(p, "true");
    case 'f': v->type = JSON_BOOL; return literal(p, "false");
    case 'n': v->type = JSON_NULL; return literal(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            v->type = JSON_NUM;
            return parse_number(p, &v->u.num);
        }
        return fail(p, DUET_EFORMAT, "unexpected character");
    }
}

json *json_parse(const char *text, size_t len, char *err, size_t errlen) {
    if (len > JSON_MAX_INPUT) {
        err_set(err, errlen, DUET_EINVAL, "json: input of %zu bytes exceeds the 256 MiB limit", len);
        return NULL;
    }
    json *doc = calloc(1, sizeof *doc);
    if (!doc) {
        err_set(err, errlen, DUET_ENOMEM, "json: out of memory");
        return NULL;
    }
    parser p = {.s = (const unsigned char *)text, .len = len, .doc = doc, .err = err, .errlen = errlen};
    skip_ws(&p);
    int rc = p.pos >= len ? fail(&p, DUET_EFORMAT, "empty input") : parse_value(&p, &doc->root, 0);
    if (!rc) {
        skip_ws(&p);
        if (p.pos < len) rc = fail(&p, DUET_EFORMAT, "trailing characters after the document");
    }
    free(p.stack);
    free(p.num);
    if (rc) {
        json_free(doc);
        return NULL;
    }
    return doc;
}

json *json_load_file(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(err, errlen, DUET_EIO, "json: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    json *doc = NULL;
    for (;;) {
        if (len == cap) {
            /* One byte past the limit is enough to tell an oversized file. */
            if (cap > JSON_MAX_INPUT) {
                err_set(err, errlen, DUET_EINVAL, "json: %s exceeds the 256 MiB limit", path);
                goto out;
            }
            cap = cap ? cap * 2 : 1 << 16;
            if (cap > JSON_MAX_INPUT) cap = JSON_MAX_INPUT + 1;
            char *b = realloc(buf, cap);
            if (!b) {
                err_set(err, errlen, DUET_ENOMEM, "json: out of memory reading %s", path);
                goto out;
            }
            buf = b;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        err_set(err, errlen, DUET_EIO, "json: read error on %s", path);
        goto out;
    }
    doc = json_parse(buf, len, err, errlen);
    if (!doc) err_prefix(err, errlen, "%s", path);
out:
    free(buf);
    fclose(f);
    return doc;
}

void json_free(json *doc) {
    if (!doc) return;
    for (chunk *c = doc->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(doc);
}

const json_val *json_root(const json *doc) { return doc ? &doc->root : NULL; }

int json_type_of(const json_val *v) { return v ? v->type : JSON_NULL; }

size_t json_len(const json_val *v) { return v && (v->type == JSON_ARR || v->type == JSON_OBJ) ? v->n : 0; }

const json_val *json_at(const json_val *v, size_t i) { return i < json_len(v) ? &v->u.items[i] : NULL; }

const char *json_key_at(const json_val *v, size_t i) {
    return v && v->type == JSON_OBJ && i < v->n ? v->u.items[i].key : NULL;
}

const json_val *json_get(const json_val *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJ || !key) return NULL;
    size_t klen = strlen(key);
    for (size_t i = 0; i < obj->n; i++) {
        const json_val *m = &obj->u.items[i];
        if (m->klen == klen && !memcmp(m->key, key, klen)) return m;
    }
    return NULL;
}

double json_num(const json_val *v) { return v && v->type == JSON_NUM ? v->u.num : 0; }

const char *json_str(const json_val *v, size_t *len) {
    if (!v || v->type != JSON_STR) return NULL;
    if (len) *len = v->n;
    return v->u.str;
}

bool json_bool(const json_val *v) { return v && v->type == JSON_BOOL && v->b; }
