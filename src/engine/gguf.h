/* gguf.h: GGUF v3 files: a validating, memory-mapping reader and a streaming writer.
 *
 * The reader checks everything before anything is used (magic, version, counts against file size, string
 * lengths, key and value types, tensor dims and types, data offsets inside the file and aligned), copies
 * keys and strings into its own storage with a terminating NUL, and leaves tensor data in the mapping.
 * Errors name the problem and where it is ("tensor 'blk.0.attn_q.weight': data ends at byte 12345 past
 * the end of the file (10000)").
 */
#ifndef DUET_ENGINE_GGUF_H
#define DUET_ENGINE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Value types of metadata, as numbered in the GGUF spec. */
enum gguf_vtype {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5, GGUF_F32 = 6,
    GGUF_BOOL = 7, GGUF_STR = 8, GGUF_ARR = 9, GGUF_U64 = 10, GGUF_I64 = 11, GGUF_F64 = 12,
};

#define GGUF_MAX_DIMS 4

typedef struct gguf_tensor {
    const char *name;
    int type;                 /* enum duet_type numbering (ggml's) */
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ggml order: ne[0] is the row length; unused dims are 1 */
    uint64_t offset;          /* from the start of the data section */
    size_t nbytes;
    const void *data;         /* inside the mapping */
} gguf_tensor;

typedef struct gguf gguf;

/* Opens and maps path read-only. NULL and a message in err on any problem. */
gguf *gguf_open(const char *path, char *err, size_t errlen);
/* Parses a buffer the caller keeps alive for the life of the result (tests, fuzzing). */
gguf *gguf_open_mem(const void *buf, size_t len, char *err, size_t errlen);
void gguf_close(gguf *g);

uint32_t gguf_version(const gguf *g);
size_t gguf_alignment(const gguf *g);
const void *gguf_file_data(const gguf *g, size_t *len); /* the whole mapping */

int gguf_n_kv(const gguf *g);
const char *gguf_kv_key(const gguf *g, int i);
int gguf_kv_type(const gguf *g, int i);  /* enum gguf_vtype */
int gguf_find_key(const gguf *g, const char *key); /* index, or -1 */

/* Typed getters: 0 ok, 1 key absent, < 0 (DUET_EFORMAT) present but of a type that does not convert.
 * Integer getters accept any integer type whose value fits; get_f32 accepts F32 and F64. */
int gguf_get_u32(const gguf *g, const char *key, uint32_t *out);
int gguf_get_i64(const gguf *g, const char *key, int64_t *out);
int gguf_get_f32(const gguf *g, const char *key, float *out);
int gguf_get_bool(const gguf *g, const char *key, bool *out);
int gguf_get_str(const gguf *g, const char *key, const char **out); /* NUL-terminated, owned by g */

/* Arrays: element type and count; 1 absent, < 0 not an array. */
int gguf_get_arr(const gguf *g, const char *key, int *elem_type, size_t *n);
const char *gguf_arr_str(const gguf *g, const char *key, size_t i, size_t *len); /* NULL if not STR array */
/* Numeric array elements converted: 0 ok, < 0 wrong element type. */
int gguf_arr_f32(const gguf *g, const char *key, size_t i, float *out);
int gguf_arr_i64(const gguf *g, const char *key, size_t i, int64_t *out);

int gguf_n_tensors(const gguf *g);
const gguf_tensor *gguf_tensor_at(const gguf *g, int i);
const gguf_tensor *gguf_find_tensor(const gguf *g, const char *name); /* NULL if absent */

/* ---- writer --------------------------------------------------------------------------------------- */

typedef struct gguf_writer gguf_writer;

/* Fills dst[nbytes] with the tensor's data when the writer streams it out; returns 0 or < 0 to abort. */
typedef int (*gguf_fill_fn)(void *ctx, void *dst, size_t nbytes);

gguf_writer *gguf_writer_init(void);
void gguf_writer_free(gguf_writer *w);
/* Setters copy their arguments. They return 0, or < 0 on allocation failure / duplicate key. */
int gguf_set_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_set_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_set_f32(gguf_writer *w, const char *key, float v);
int gguf_set_bool(gguf_writer *w, const char *key, bool v);
int gguf_set_str(gguf_writer *w, const char *key, const char *v);
int gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *v, const size_t *lens, size_t n);
int gguf_set_arr_f32(gguf_writer *w, const char *key, const float *v, size_t n);
int gguf_set_arr_i32(gguf_writer *w, const char *key, const int32_t *v, size_t n);
/* Adds a tensor whose bytes come from data (borrowed until gguf_writer_write returns) or, if data is
 * NULL, from fill(ctx, ...) at write time (so multi-gigabyte files never sit in memory). */
int gguf_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
                    const void *data, gguf_fill_fn fill, void *ctx);
/* Copies the keys of g whose names start with prefix ("" for all) into w: strings, bools, f32, u32/i32 and
 * arrays of strings, i32 or f32 (what models and vocabularies use). 0, or < 0 for another type or no memory. */
int gguf_copy_kv(gguf_writer *w, const gguf *g, const char *prefix);
/* Writes the file (alignment 32); on failure removes the partial file. progress may be NULL. */
int gguf_writer_write(gguf_writer *w, const char *path, void (*progress)(void *arg, size_t done, size_t total),
                      void *arg, char *err, size_t errlen);

#endif
