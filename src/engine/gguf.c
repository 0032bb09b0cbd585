/* gguf.c: GGUF v3 (and v2, same layout) reader and streaming writer. See gguf.h.
 *
 * The reader treats the file as hostile: every length and count is checked against the bytes that remain
 * before it is used, so a corrupt or malicious file yields a message, never an out-of-bounds read or a huge
 * allocation. Keys and strings are copied into one growing arena and referred to by offset until parsing
 * ends (the arena moves while it grows). */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/mapfile.h"
#include "duet.h"
#include "engine/quant.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads and writes little-endian files with memcpy: port it before building big-endian"
#endif

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_NAME 64 /* ggml's GGML_MAX_NAME, including the NUL: longer names cannot load in llama.cpp */
#define GGUF_HEADER_BYTES 24 /* magic, version, n_tensors, n_kv */
#define GGUF_MIN_KV_BYTES 13 /* key length, value type, one-byte value */
#define GGUF_MIN_TENSOR_BYTES 32 /* name length, n_dims, one ne, type, offset */

typedef struct gguf_kv {
    size_t key;    /* arena offset */
    int type;      /* enum gguf_vtype */
    int elem_type; /* arrays */
    size_t n;      /* arrays: element count */
    size_t str;    /* strings: arena offset */
    size_t data;   /* numbers and numeric arrays: file offset of the value (element 0) */
    size_t *items; /* string arrays: [n][2] arena offset and length */
} gguf_kv;

/* A number widened from its file type: unsigned integers and bool in u, signed in i, floats in f. */
typedef union gguf_num {
    uint64_t u;
    int64_t i;
    double f;
} gguf_num;

struct gguf {
    const uint8_t *base;
    size_t len;
    size_t map_len; /* > 0: base is our mapping */
    uint32_t version;
    size_t alignment;
    char *arena;
    size_t arena_len, arena_cap;
    gguf_kv *kv;
    int n_kv;
    int *kv_sorted; /* [n_kv] indices by key */
    gguf_tensor *t;
    int n_t;
    int *t_sorted;  /* [n_t] indices by name */
};

/* ---- reader --------------------------------------------------------------------------------------- */

typedef struct rd {
    gguf *g;
    size_t pos;
    char *err;
    size_t errlen;
} rd;

static size_t elem_size(int type) {
    switch (type) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    case GGUF_STR: return 8; /* the length prefix: the least a string element takes */
    default: return 0;
    }
}

static const char *vtype_name(int type) {
    static const char *names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array",
                                  "u64", "i64", "f64"};
    return type >= 0 && type <= GGUF_F64 ? names[type] : "?";
}

static size_t remaining(const rd *r) { return r->g->len - r->pos; }

static int need(rd *r, size_t n, const char *what) {
    if (n <= remaining(r)) return 0;
    return err_set(r->err, r->errlen, DUET_EFORMAT, "truncated: %s needs %zu bytes at offset %zu, file is %zu bytes",
                   what, n, r->pos, r->g->len);
}

static int rd_raw(rd *r, void *dst, size_t n, const char *what) {
    int rc = need(r, n, what);
    if (rc) return rc;
    memcpy(dst, r->g->base + r->pos, n);
    r->pos += n;
    return 0;
}

static int rd_u32(rd *r, uint32_t *v, const char *what) { return rd_raw(r, v, 4, what); }
static int rd_u64(rd *r, uint64_t *v, const char *what) { return rd_raw(r, v, 8, what); }

/* Appends n bytes and a NUL to the arena; *off receives where they start. */
static int arena_put(rd *r, const void *src, size_t n, size_t *off) {
    gguf *g = r->g;
    if (g->arena_cap - g->arena_len < n + 1) {
        size_t cap = g->arena_cap ? g->arena_cap : 4096;
        while (cap - g->arena_len < n + 1) cap *= 2; /* n is bounded by the file size: no overflow */
        char *a = realloc(g->arena, cap);
        if (!a) return err_set(r->err, r->errlen, DUET_ENOMEM, "out of memory for %zu bytes of strings", cap);
        g->arena = a;
        g->arena_cap = cap;
    }
    memcpy(g->arena + g->arena_len, src, n);
    g->arena[g->arena_len + n] = 0;
    *off = g->arena_len;
    g->arena_len += n + 1;
    return 0;
}

static int rd_str(rd *r, size_t *off, size_t *len, const char *what) {
    uint64_t n;
    int rc = rd_u64(r, &n, what);
    if (rc) return rc;
    if (n > remaining(r))
        return err_set(r->err, r->errlen, DUET_EFORMAT,
                       "%s: string of %llu bytes at offset %zu runs past the end of the file (%zu bytes)", what,
                       (unsigned long long)n, r->pos, r->g->len);
    rc = arena_put(r, r->g->base + r->pos, (size_t)n, off);
    if (rc) return rc;
    r->pos += (size_t)n;
    if (len) *len = (size_t)n;
    return 0;
}

static const char *kv_key(const gguf *g, const gguf_kv *kv) { return g->arena + kv->key; }

static int rd_scalar(rd *r, gguf_kv *kv, const char *what) {
    if (kv->type == GGUF_STR) return rd_str(r, &kv->str, NULL, what);
    size_t es = elem_size(kv->type);
    if (!es) return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: unknown value type %d", what, kv->type);
    int rc = need(r, es, what);
    if (rc) return rc;
    kv->data = r->pos;
    r->pos += es;
    return 0;
}

static gguf_num decode(int type, const uint8_t *p) {
    gguf_num v = {0};
    switch (type) {
    case GGUF_U8: case GGUF_BOOL: v.u = p[0]; break;
    case GGUF_I8: v.i = (int8_t)p[0]; break;
    case GGUF_U16: { uint16_t x; memcpy(&x, p, 2); v.u = x; break; }
    case GGUF_I16: { int16_t x; memcpy(&x, p, 2); v.i = x; break; }
    case GGUF_U32: { uint32_t x; memcpy(&x, p, 4); v.u = x; break; }
    case GGUF_I32: { int32_t x; memcpy(&x, p, 4); v.i = x; break; }
    case GGUF_F32: { float x; memcpy(&x, p, 4); v.f = x; break; }
    case GGUF_U64: memcpy(&v.u, p, 8); break;
    case GGUF_I64: memcpy(&v.i, p, 8); break;
    case GGUF_F64: memcpy(&v.f, p, 8); break;
    default: break;
    }
    return v;
}

static int rd_array(rd *r, gguf_kv *kv, const char *what) {
    uint32_t et;
    uint64_t n;
    int rc = rd_u32(r, &et, what);
    if (!rc) rc = rd_u64(r, &n, what);
    if (rc) return rc;
    if (et == GGUF_ARR) return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: nested array (not allowed)", what);
    size_t es = elem_size((int)et);
    if (!es) return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: unknown array element type %u", what, et);
    if (n > remaining(r) / es)
        return err_set(r->err, r->errlen, DUET_EFORMAT,
                       "%s: array of %llu %s elements runs past the end of the file (%zu bytes left)", what,
                       (unsigned long long)n, vtype_name((int)et), remaining(r));
    kv->elem_type = (int)et;
    kv->n = (size_t)n;
    if (et != GGUF_STR) {
        kv->data = r->pos;
        r->pos += kv->n * es;
        return 0;
    }
    kv->items = malloc((kv->n ? kv->n : 1) * 2 * sizeof *kv->items);
    if (!kv->items) return err_set(r->err, r->errlen, DUET_ENOMEM, "%s: out of memory for %zu strings", what, kv->n);
    for (size_t i = 0; i < kv->n; i++)
        if ((rc = rd_str(r, &kv->items[2 * i], &kv->items[2 * i + 1], what))) return rc;
    return 0;
}

static int rd_kv(rd *r, int idx) {
    gguf *g = r->g;
    gguf_kv *kv = &g->kv[idx];
    char what[160];
    snprintf(what, sizeof what, "key %d", idx);
    int rc = rd_str(r, &kv->key, NULL, what);
    if (rc) return rc;
    g->n_kv = idx + 1; /* from here on gguf_close frees what this kv owns */
    snprintf(what, sizeof what, "key %d ('%.100s')", idx, kv_key(g, kv));
    uint32_t type;
    if ((rc = rd_u32(r, &type, what))) return rc;
    kv->type = (int)type;
    if (type == GGUF_ARR) return rd_array(r, kv, what);
    return rd_scalar(r, kv, what);
}

static int is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

/* x rounded up to a multiple of a (a power of two); callers keep x far from overflow. */
static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

static int rd_alignment(rd *r) {
    gguf *g = r->g;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int i = gguf_find_key(g, "general.alignment");
    if (i < 0) return 0;
    const gguf_kv *kv = &g->kv[i];
    if (kv->type != GGUF_U32)
        return err_set(r->err, r->errlen, DUET_EFORMAT, "general.alignment has type %s, expected u32",
                       vtype_name(kv->type));
    uint64_t a = decode(GGUF_U32, g->base + kv->data).u;
    if (!is_pow2(a))
        return err_set(r->err, r->errlen, DUET_EFORMAT, "general.alignment %llu is not a power of two",
                       (unsigned long long)a);
    g->alignment = (size_t)a;
    return 0;
}

static int rd_tensor(rd *r, int idx, size_t *name_off) {
    gguf_tensor *t = &r->g->t[idx];
    char what[160];
    snprintf(what, sizeof what, "tensor %d", idx);
    size_t nlen;
    int rc = rd_str(r, name_off, &nlen, what);
    if (rc) return rc;
    const char *name = r->g->arena + *name_off;
    if (nlen >= GGUF_MAX_NAME)
        return err_set(r->err, r->errlen, DUET_EFORMAT, "tensor %d: name of %zu bytes is too long (max %d)", idx, nlen,
                       GGUF_MAX_NAME - 1);
    if (strlen(name) != nlen)
        return err_set(r->err, r->errlen, DUET_EFORMAT, "tensor %d: name contains a NUL byte", idx);
    snprintf(what, sizeof what, "tensor '%s'", name);
    uint32_t n_dims, type;
    if ((rc = rd_u32(r, &n_dims, what))) return rc;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: n_dims %u not in 1..%d", what, n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    int64_t nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        int64_t ne = 1;
        if (d < (int)n_dims && (rc = rd_raw(r, &ne, 8, what))) return rc;
        if (ne < 1)
            return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: ne[%d] = %lld, must be >= 1", what, d, (long long)ne);
        if (ne > INT64_MAX / nel)
            return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: element count overflows at ne[%d] = %lld", what, d,
                           (long long)ne);
        nel *= ne;
        t->ne[d] = ne;
    }
    if ((rc = rd_u32(r, &type, what))) return rc;
    const quant_traits *qt = quant_traits_get((int)type);
    if (!qt) return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: unknown type %u", what, type);
    t->type = (int)type;
    if (t->ne[0] % qt->block)
        return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: ne[0] = %lld is not a multiple of the %s block (%d)",
                       what, (long long)t->ne[0], qt->name, qt->block);
    size_t row = quant_row_bytes(t->type, t->ne[0]);
    int64_t rows = nel / t->ne[0];
    if (!row || (uint64_t)rows > SIZE_MAX / row)
        return err_set(r->err, r->errlen, DUET_EFORMAT, "%s: byte size overflows", what);
    t->nbytes = row * (size_t)rows;
    return rd_u64(r, &t->offset, what);
}

/* Data offsets are checked only once the data section's start is known. */
static int check_tensor_data(rd *r, size_t data_start, int idx) {
    gguf *g = r->g;
    gguf_tensor *t = &g->t[idx];
    if (t->offset % g->alignment)
        return err_set(r->err, r->errlen, DUET_EFORMAT, "tensor '%s': offset %llu is not aligned to %zu", t->name,
                       (unsigned long long)t->offset, g->alignment);
    size_t avail = g->len - data_start;
    if (t->offset > avail || t->nbytes > avail - t->offset)
        return err_set(r->err, r->errlen, DUET_EFORMAT,
                       "tensor '%s': data ends at byte %llu past the end of the file (%zu)", t->name,
                       (unsigned long long)data_start + t->offset + t->nbytes, g->len);
    t->data = g->base + data_start + t->offset;
    return 0;
}

/* qsort has no context argument: the arena and record arrays it compares through live here. */
static _Thread_local const gguf *sort_g;

static int cmp_kv(const void *a, const void *b) {
    return strcmp(kv_key(sort_g, &sort_g->kv[*(const int *)a]), kv_key(sort_g, &sort_g->kv[*(const int *)b]));
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp(sort_g->t[*(const int *)a].name, sort_g->t[*(const int *)b].name);
}

/* Sorts indices 0..n-1 by name; returns the index of a duplicate or -1. */
static int sort_names(gguf *g, int *idx, int n, int (*cmp)(const void *, const void *)) {
    for (int i = 0; i < n; i++) idx[i] = i;
    sort_g = g;
    qsort(idx, (size_t)n, sizeof *idx, cmp);
    for (int i = 1; i < n; i++)
        if (!cmp(&idx[i - 1], &idx[i])) return idx[i];
    return -1;
}

static int parse(gguf *g, char *err, size_t errlen) {
    rd r = {g, 0, err, errlen};
    char magic[4];
    uint32_t version;
    uint64_t n_tensors, n_kv;
    int rc = rd_raw(&r, magic, 4, "header");
    if (rc) return rc;
    if (memcmp(magic, GGUF_MAGIC, 4))
        return err_set(err, errlen, DUET_EFORMAT, "bad magic %02x %02x %02x %02x (not a GGUF file)",
                       (uint8_t)magic[0], (uint8_t)magic[1], (uint8_t)magic[2], (uint8_t)magic[3]);
    if ((rc = rd_u32(&r, &version, "header"))) return rc;
    if (version != 2 && version != 3)
        return err_set(err, errlen, DUET_EFORMAT, "unsupported GGUF version %u (2 and 3 are read)%s", version,
                       version >= 0x01000000u ? "; a big-endian file?" : "");
    g->version = version;
    if ((rc = rd_u64(&r, &n_tensors, "header")) || (rc = rd_u64(&r, &n_kv, "header"))) return rc;
    size_t left = remaining(&r);
    if (n_kv > left / GGUF_MIN_KV_BYTES || n_kv > INT_MAX)
        return err_set(err, errlen, DUET_EFORMAT, "n_kv %llu is too large for a file of %zu bytes",
                       (unsigned long long)n_kv, g->len);
    left -= (size_t)n_kv * GGUF_MIN_KV_BYTES;
    if (n_tensors > left / GGUF_MIN_TENSOR_BYTES || n_tensors > INT_MAX)
        return err_set(err, errlen, DUET_EFORMAT, "n_tensors %llu is too large for a file of %zu bytes",
                       (unsigned long long)n_tensors, g->len);

    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->kv_sorted = malloc((n_kv ? n_kv : 1) * sizeof *g->kv_sorted);
    g->t = calloc(n_tensors ? n_tensors : 1, sizeof *g->t);
    g->t_sorted = malloc((n_tensors ? n_tensors : 1) * sizeof *g->t_sorted);
    size_t *names = malloc((n_tensors ? n_tensors : 1) * sizeof *names); /* arena offsets until it stops moving */
    if (!g->kv || !g->kv_sorted || !g->t || !g->t_sorted || !names) {
        free(names);
        return err_set(err, errlen, DUET_ENOMEM, "out of memory for %llu keys and %llu tensors",
                       (unsigned long long)n_kv, (unsigned long long)n_tensors);
    }
    for (int i = 0; i < (int)n_kv && !rc; i++) rc = rd_kv(&r, i);
    if (!rc) {
        int dup = sort_names(g, g->kv_sorted, g->n_kv, cmp_kv);
        if (dup >= 0) rc = err_set(err, errlen, DUET_EFORMAT, "duplicate key '%s'", kv_key(g, &g->kv[dup]));
    }
    if (!rc) rc = rd_alignment(&r);
    for (int i = 0; i < (int)n_tensors && !rc; i++) rc = rd_tensor(&r, i, &names[i]);
    if (!rc) {
        g->n_t = (int)n_tensors;
        for (int i = 0; i < g->n_t; i++) g->t[i].name = g->arena + names[i];
        int dup = sort_names(g, g->t_sorted, g->n_t, cmp_tensor);
        if (dup >= 0) rc = err_set(err, errlen, DUET_EFORMAT, "duplicate tensor '%s'", g->t[dup].name);
    }
    free(names);
    if (rc || !g->n_t) return rc;
    uint64_t data_start = align_up(r.pos, g->alignment);
    if (data_start > g->len)
        return err_set(err, errlen, DUET_EFORMAT, "data section starts at %llu, past the end of the file (%zu)",
                       (unsigned long long)data_start, g->len);
    for (int i = 0; i < g->n_t && !rc; i++) rc = check_tensor_data(&r, (size_t)data_start, i);
    return rc;
}

static gguf *open_parsed(gguf *g, char *err, size_t errlen) {
    if (parse(g, err, errlen)) {
        gguf_close(g);
        return NULL;
    }
    return g;
}

gguf *gguf_open_mem(const void *buf, size_t len, char *err, size_t errlen) {
    gguf *g = calloc(1, sizeof *g);
    if (!g) {
        err_set(err, errlen, DUET_ENOMEM, "out of memory");
        return NULL;
    }
    g->base = buf;
    g->len = len;
    return open_parsed(g, err, errlen);
}

gguf *gguf_open(const char *path, char *err, size_t errlen) {
    mapfile mf;
    if (mapfile_open(path, &mf, err, errlen)) return NULL;
    gguf *g = gguf_open_mem(mf.p, mf.len, err, errlen);
    if (!g) {
        mapfile_close(&mf);
        err_prefix(err, errlen, "%s", path);
        return NULL;
    }
    g->map_len = mf.len;
    return g;
}

void gguf_close(gguf *g) {
    if (!g) return;
    for (int i = 0; i < g->n_kv; i++) free(g->kv[i].items);
    free(g->kv);
    free(g->kv_sorted);
    free(g->t);
    free(g->t_sorted);
    free(g->arena);
    if (g->map_len) munmap((void *)g->base, g->map_len);
    free(g);
}

uint32_t gguf_version(const gguf *g) { return g->version; }
size_t gguf_alignment(const gguf *g) { return g->alignment; }

const void *gguf_file_data(const gguf *g, size_t *len) {
    if (len) *len = g->len;
    return g->base;
}

int gguf_n_kv(const gguf *g) { return g->n_kv; }
const char *gguf_kv_key(const gguf *g, int i) { return i >= 0 && i < g->n_kv ? kv_key(g, &g->kv[i]) : NULL; }
int gguf_kv_type(const gguf *g, int i) { return i >= 0 && i < g->n_kv ? g->kv[i].type : -1; }

int gguf_find_key(const gguf *g, const char *key) {
    int lo = 0, hi = g->n_kv - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, k = g->kv_sorted[mid];
        int c = strcmp(key, kv_key(g, &g->kv[k]));
        if (!c) return k;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return -1;
}

static const gguf_kv *find_kv(const gguf *g, const char *key) {
    int i = gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kv[i];
}

static int is_int_type(int t) {
    return t == GGUF_U8 || t == GGUF_I8 || t == GGUF_U16 || t == GGUF_I16 || t == GGUF_U32 || t == GGUF_I32 ||
           t == GGUF_U64 || t == GGUF_I64;
}
static int is_unsigned(int t) { return t == GGUF_U8 || t == GGUF_U16 || t == GGUF_U32 || t == GGUF_U64; }

/* Conversions shared by scalar getters and array elements: DUET_EFORMAT when the type does not convert. */
static int num_to_i64(int type, gguf_num v, int64_t *out) {
    if (!is_int_type(type) || (is_unsigned(type) && v.u > INT64_MAX)) return DUET_EFORMAT;
    *out = is_unsigned(type) ? (int64_t)v.u : v.i;
    return 0;
}

static int num_to_f32(int type, gguf_num v, float *out) {
    if (type != GGUF_F32 && type != GGUF_F64) return DUET_EFORMAT;
    *out = (float)v.f;
    return 0;
}

/* A scalar number: 1 absent, DUET_EFORMAT if the key holds a string or an array. */
static int scalar(const gguf *g, const char *key, int *type, gguf_num *v) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv) return 1;
    if (kv->type == GGUF_STR || kv->type == GGUF_ARR) return DUET_EFORMAT;
    *type = kv->type;
    *v = decode(kv->type, g->base + kv->data);
    return 0;
}

int gguf_get_i64(const gguf *g, const char *key, int64_t *out) {
    int type;
    gguf_num v;
    int rc = scalar(g, key, &type, &v);
    return rc ? rc : num_to_i64(type, v, out);
}

int gguf_get_u32(const gguf *g, const char *key, uint32_t *out) {
    int64_t v;
    int rc = gguf_get_i64(g, key, &v);
    if (rc) return rc;
    if (v < 0 || v > UINT32_MAX) return DUET_EFORMAT;
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_f32(const gguf *g, const char *key, float *out) {
    int type;
    gguf_num v;
    int rc = scalar(g, key, &type, &v);
    return rc ? rc : num_to_f32(type, v, out);
}

int gguf_get_bool(const gguf *g, const char *key, bool *out) {
    int type;
    gguf_num v;
    int rc = scalar(g, key, &type, &v);
    if (rc) return rc;
    if (type != GGUF_BOOL) return DUET_EFORMAT;
    *out = v.u != 0;
    return 0;
}

int gguf_get_str(const gguf *g, const char *key, const char **out) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv) return 1;
    if (kv->type != GGUF_STR) return DUET_EFORMAT;
    *out = g->arena + kv->str;
    return 0;
}

int gguf_get_arr(const gguf *g, const char *key, int *elem_type, size_t *n) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv) return 1;
    if (kv->type != GGUF_ARR) return DUET_EFORMAT;
    if (elem_type) *elem_type = kv->elem_type;
    if (n) *n = kv->n;
    return 0;
}

const char *gguf_arr_str(const gguf *g, const char *key, size_t i, size_t *len) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != GGUF_ARR || kv->elem_type != GGUF_STR || i >= kv->n) return NULL;
    if (len) *len = kv->items[2 * i + 1];
    return g->arena + kv->items[2 * i];
}

/* Element i of a numeric array. */
static int arr_elem(const gguf *g, const char *key, size_t i, int *type, gguf_num *v) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != GGUF_ARR || kv->elem_type == GGUF_STR || i >= kv->n) return DUET_EINVAL;
    *type = kv->elem_type;
    *v = decode(kv->elem_type, g->base + kv->data + i * elem_size(kv->elem_type));
    return 0;
}

int gguf_arr_f32(const gguf *g, const char *key, size_t i, float *out) {
    int type;
    gguf_num v;
    int rc = arr_elem(g, key, i, &type, &v);
    return rc ? rc : num_to_f32(type, v, out);
}

int gguf_arr_i64(const gguf *g, const char *key, size_t i, int64_t *out) {
    int type;
    gguf_num v;
    int rc = arr_elem(g, key, i, &type, &v);
    return rc ? rc : num_to_i64(type, v, out);
}

int gguf_n_tensors(const gguf *g) { return g->n_t; }
const gguf_tensor *gguf_tensor_at(const gguf *g, int i) { return i >= 0 && i < g->n_t ? &g->t[i] : NULL; }

const gguf_tensor *gguf_find_tensor(const gguf *g, const char *name) {
    int lo = 0, hi = g->n_t - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, k = g->t_sorted[mid];
        int c = strcmp(name, g->t[k].name);
        if (!c) return &g->t[k];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

/* ---- writer --------------------------------------------------------------------------------------- */

typedef struct wtensor {
    char *name;
    int type, n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    size_t nbytes;
    uint64_t offset;
    const void *data;
    gguf_fill_fn fill;
    void *ctx;
} wtensor;

struct gguf_writer {
    uint8_t *meta; /* the serialized key/value section, grown as keys are set */
    size_t meta_len, meta_cap;
    char **keys;
    int n_kv, keys_cap;
    wtensor *t;
    int n_t, t_cap;
    uint64_t data_len; /* running size of the data section, each tensor padded to the alignment */
};

gguf_writer *gguf_writer_init(void) { return calloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->keys);
    free(w->t);
    free(w->meta);
    free(w);
}

/* Grows *buf (of *cap elements of size es) to hold n; 0 or DUET_ENOMEM. */
static int grow(void **buf, int *cap, int n, size_t es) {
    if (n <= *cap) return 0;
    int c = *cap ? *cap * 2 : 16;
    void *p = realloc(*buf, (size_t)c * es);
    if (!p) return DUET_ENOMEM;
    *buf = p;
    *cap = c;
    return 0;
}

static int meta_put(gguf_writer *w, const void *src, size_t n) {
    if (w->meta_cap - w->meta_len < n) {
        size_t cap = w->meta_cap ? w->meta_cap : 4096;
        while (cap - w->meta_len < n) cap *= 2;
        uint8_t *m = realloc(w->meta, cap);
        if (!m) return DUET_ENOMEM;
        w->meta = m;
        w->meta_cap = cap;
    }
    memcpy(w->meta + w->meta_len, src, n);
    w->meta_len += n;
    return 0;
}

static int meta_u32(gguf_writer *w, uint32_t v) { return meta_put(w, &v, 4); }

static int meta_str(gguf_writer *w, const char *s, size_t n) {
    uint64_t len = n;
    int rc = meta_put(w, &len, 8);
    return rc ? rc : meta_put(w, s, n);
}

/* Registers key (refusing duplicates) and serializes it with its value type; the caller appends the value.
 * On a later failure the meta section is rolled back to where it was. */
static int begin_kv(gguf_writer *w, const char *key, int type, size_t *mark) {
    for (int i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) return DUET_EINVAL;
    if (grow((void **)&w->keys, &w->keys_cap, w->n_kv + 1, sizeof *w->keys)) return DUET_ENOMEM;
    *mark = w->meta_len;
    if (meta_str(w, key, strlen(key)) || meta_u32(w, (uint32_t)type)) {
        w->meta_len = *mark;
        return DUET_ENOMEM;
    }
    return 0;
}

static int end_kv(gguf_writer *w, const char *key, size_t mark, int rc) {
    char *k = rc ? NULL : strdup(key);
    if (!k) {
        w->meta_len = mark;
        return rc ? rc : DUET_ENOMEM;
    }
    w->keys[w->n_kv++] = k;
    return 0;
}

static int set_scalar(gguf_writer *w, const char *key, int type, const void *v, size_t n) {
    size_t mark;
    int rc = begin_kv(w, key, type, &mark);
    return rc ? rc : end_kv(w, key, mark, meta_put(w, v, n));
}

int gguf_set_u32(gguf_writer *w, const char *key, uint32_t v) { return set_scalar(w, key, GGUF_U32, &v, 4); }
int gguf_set_i32(gguf_writer *w, const char *key, int32_t v) { return set_scalar(w, key, GGUF_I32, &v, 4); }
int gguf_set_f32(gguf_writer *w, const char *key, float v) { return set_scalar(w, key, GGUF_F32, &v, 4); }

int gguf_set_bool(gguf_writer *w, const char *key, bool v) {
    uint8_t b = v;
    return set_scalar(w, key, GGUF_BOOL, &b, 1);
}

int gguf_set_str(gguf_writer *w, const char *key, const char *v) {
    size_t mark;
    int rc = begin_kv(w, key, GGUF_STR, &mark);
    return rc ? rc : end_kv(w, key, mark, meta_str(w, v, strlen(v)));
}

static int arr_header(gguf_writer *w, const char *key, int elem_type, size_t n, size_t *mark) {
    int rc = begin_kv(w, key, GGUF_ARR, mark);
    if (rc) return rc;
    uint64_t n64 = n;
    rc = meta_u32(w, (uint32_t)elem_type);
    if (!rc) rc = meta_put(w, &n64, 8);
    if (rc) w->meta_len = *mark;
    return rc;
}

int gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *v, const size_t *lens, size_t n) {
    size_t mark;
    int rc = arr_header(w, key, GGUF_STR, n, &mark);
    if (rc) return rc;
    for (size_t i = 0; i < n && !rc; i++) rc = meta_str(w, v[i], lens ? lens[i] : strlen(v[i]));
    return end_kv(w, key, mark, rc);
}

static int set_arr_num(gguf_writer *w, const char *key, int elem_type, const void *v, size_t n) {
    size_t mark;
    int rc = arr_header(w, key, elem_type, n, &mark);
    if (rc) return rc;
    return end_kv(w, key, mark, meta_put(w, v, n * 4));
}

int gguf_set_arr_f32(gguf_writer *w, const char *key, const float *v, size_t n) {
    return set_arr_num(w, key, GGUF_F32, v, n);
}

int gguf_set_arr_i32(gguf_writer *w, const char *key, const int32_t *v, size_t n) {
    return set_arr_num(w, key, GGUF_I32, v, n);
}

int gguf_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne, const void *data,
                    gguf_fill_fn fill, void *ctx) {
    const quant_traits *qt = quant_traits_get(type);
    if (!qt || n_dims < 1 || n_dims > GGUF_MAX_DIMS || strlen(name) >= GGUF_MAX_NAME || (!data && !fill))
        return DUET_EINVAL;
    for (int i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return DUET_EINVAL;
    wtensor t = {.type = type, .n_dims = n_dims, .data = data, .fill = fill, .ctx = ctx, .offset = w->data_len};
    int64_t nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] < 1 || t.ne[d] > INT64_MAX / nel) return DUET_EINVAL;
        nel *= t.ne[d];
    }
    size_t row = quant_row_bytes(type, t.ne[0]);
    if (!row || (uint64_t)(nel / t.ne[0]) > (SIZE_MAX - GGUF_DEFAULT_ALIGNMENT) / row) return DUET_EINVAL;
    t.nbytes = row * (size_t)(nel / t.ne[0]);
    if (grow((void **)&w->t, &w->t_cap, w->n_t + 1, sizeof *w->t) || !(t.name = strdup(name))) return DUET_ENOMEM;
    w->data_len += align_up(t.nbytes, GGUF_DEFAULT_ALIGNMENT);
    w->t[w->n_t++] = t;
    return 0;
}

/* Zeros from pos up to the next multiple of the alignment. */
static int put_pad(FILE *f, uint64_t pos) {
    static const uint8_t zeros[GGUF_DEFAULT_ALIGNMENT];
    size_t pad = (size_t)(align_up(pos, GGUF_DEFAULT_ALIGNMENT) - pos);
    return fwrite(zeros, 1, pad, f) == pad ? 0 : -1;
}

/* Writes header, metadata and tensor infos; returns the position reached (before padding) or 0 on error. */
static uint64_t write_head(gguf_writer *w, FILE *f) {
    uint32_t version = 3;
    uint64_t n_t = (uint64_t)w->n_t, n_kv = (uint64_t)w->n_kv;
    uint64_t pos = GGUF_HEADER_BYTES + w->meta_len;
    if (fwrite(GGUF_MAGIC, 1, 4, f) != 4 || fwrite(&version, 4, 1, f) != 1 || fwrite(&n_t, 8, 1, f) != 1 ||
        fwrite(&n_kv, 8, 1, f) != 1 || (w->meta_len && fwrite(w->meta, 1, w->meta_len, f) != w->meta_len))
        return 0;
    for (int i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        uint64_t len = strlen(t->name);
        uint32_t n_dims = (uint32_t)t->n_dims, type = (uint32_t)t->type;
        if (fwrite(&len, 8, 1, f) != 1 || fwrite(t->name, 1, len, f) != len || fwrite(&n_dims, 4, 1, f) != 1 ||
            fwrite(t->ne, 8, n_dims, f) != n_dims || fwrite(&type, 4, 1, f) != 1 || fwrite(&t->offset, 8, 1, f) != 1)
            return 0;
        pos += 8 + len + 4 + 8 * n_dims + 4 + 8;
    }
    return pos;
}

static int write_all(gguf_writer *w, FILE *f, void *buf, void (*progress)(void *, size_t, size_t), void *arg,
                     char *err, size_t errlen) {
    uint64_t pos = write_head(w, f);
    if (!pos || put_pad(f, pos)) return err_set(err, errlen, DUET_EIO, "write failed in the header");
    size_t head = (size_t)align_up(pos, GGUF_DEFAULT_ALIGNMENT);
    size_t total = head + (size_t)w->data_len;
    for (int i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        const void *src = t->data;
        if (!src) {
            int rc = t->fill(t->ctx, buf, t->nbytes);
            if (rc < 0)
                return err_set(err, errlen, rc, "tensor '%s': producing its data failed (status %d)", t->name, rc);
            src = buf;
        }
        if (fwrite(src, 1, t->nbytes, f) != t->nbytes || put_pad(f, t->nbytes))
            return err_set(err, errlen, DUET_EIO, "tensor '%s': write failed", t->name);
        if (progress) progress(arg, head + (size_t)align_up(t->offset + t->nbytes, GGUF_DEFAULT_ALIGNMENT), total);
    }
    return 0;
}

int gguf_writer_write(gguf_writer *w, const char *path, void (*progress)(void *arg, size_t done, size_t total),
                      void *arg, char *err, size_t errlen) {
    size_t fill_max = 0;
    for (int i = 0; i < w->n_t; i++)
        if (!w->t[i].data && w->t[i].nbytes > fill_max) fill_max = w->t[i].nbytes;
    void *buf = fill_max ? malloc(fill_max) : NULL; /* one tensor's bytes: the most a fill ever needs */
    if (fill_max && !buf) return err_set(err, errlen, DUET_ENOMEM, "out of memory for a %zu-byte tensor", fill_max);
    /* Written beside the target and renamed over it at the end, so a failure never leaves a partial file. */
    size_t plen = strlen(path) + 8;
    char *tmp = malloc(plen);
    if (!tmp) {
        free(buf);
        return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    }
    snprintf(tmp, plen, "%s.part", path);
    FILE *f = fopen(tmp, "wb");
    int rc;
    if (!f) {
        rc = err_set(err, errlen, DUET_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    } else {
        rc = write_all(w, f, buf, progress, arg, err, errlen);
        if (fclose(f) && !rc) rc = err_set(err, errlen, DUET_EIO, "%s: write failed: %s", tmp, strerror(errno));
        if (!rc && rename(tmp, path))
            rc = err_set(err, errlen, DUET_EIO, "%s: cannot rename into place: %s", path, strerror(errno));
        if (rc) remove(tmp);
    }
    if (rc && f) err_prefix(err, errlen, "%s", path);
    free(tmp);
    free(buf);
    return rc;
}

int gguf_copy_kv(gguf_writer *w, const gguf *g, const char *prefix) {
    int rc = 0;
    const size_t plen = strlen(prefix);
    for (int i = 0; i < gguf_n_kv(g) && !rc; i++) {
        const char *k = gguf_kv_key(g, i);
        if (strncmp(k, prefix, plen)) continue;
        int type = gguf_kv_type(g, i), et = 0;
        size_t n = 0;
        if (type == GGUF_ARR) gguf_get_arr(g, k, &et, &n);
        if (type == GGUF_STR) {
            const char *v;
            rc = gguf_get_str(g, k, &v) || gguf_set_str(w, k, v);
        } else if (type == GGUF_BOOL) {
            bool v;
            rc = gguf_get_bool(g, k, &v) || gguf_set_bool(w, k, v);
        } else if (type == GGUF_F32) {
            float v;
            rc = gguf_get_f32(g, k, &v) || gguf_set_f32(w, k, v);
        } else if (type == GGUF_U32 || type == GGUF_I32) {
            int64_t v;
            rc = gguf_get_i64(g, k, &v) ||
                 (type == GGUF_U32 ? gguf_set_u32(w, k, (uint32_t)v) : gguf_set_i32(w, k, (int32_t)v));
        } else if (type == GGUF_ARR && et == GGUF_STR) {
            const char **v = malloc(n * sizeof *v + 1);
            size_t *lens = malloc(n * sizeof *lens + 1);
            rc = !v || !lens;
            for (size_t j = 0; j < n && !rc; j++) v[j] = gguf_arr_str(g, k, j, &lens[j]);
            if (!rc) rc = gguf_set_arr_str(w, k, v, lens, n);
            free(v);
            free(lens);
        } else if (type == GGUF_ARR && (et == GGUF_I32 || et == GGUF_F32)) {
            int32_t *iv = malloc(n * sizeof *iv + 1);
            float *fv = malloc(n * sizeof *fv + 1);
            rc = !iv || !fv;
            for (size_t j = 0; j < n && !rc; j++) {
                int64_t x = 0;
                rc = et == GGUF_I32 ? gguf_arr_i64(g, k, j, &x) : gguf_arr_f32(g, k, j, &fv[j]);
                iv[j] = (int32_t)x;
            }
            if (!rc) rc = et == GGUF_I32 ? gguf_set_arr_i32(w, k, iv, n) : gguf_set_arr_f32(w, k, fv, n);
            free(iv);
            free(fv);
        } else {
            rc = DUET_EUNSUPPORTED;
        }
    }
    return rc ? (rc < 0 ? rc : DUET_ENOMEM) : 0;
}
