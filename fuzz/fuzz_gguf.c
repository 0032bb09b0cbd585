/* libFuzzer target for the GGUF reader: parse the input, then read back every key and tensor through the
 * public accessors, so a header the parser accepted but recorded wrongly shows up as a sanitizer report. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/gguf.h"

static volatile uint64_t sink;

static void touch_kv(const gguf *g, int i) {
    const char *key = gguf_kv_key(g, i);
    sink += strlen(key) + (uint64_t)gguf_kv_type(g, i);
    if (gguf_find_key(g, key) != i) __builtin_trap(); /* keys are unique, so lookup finds this one */
    uint32_t u;
    int64_t i64;
    float f;
    bool b;
    const char *s;
    if (!gguf_get_u32(g, key, &u)) sink += u;
    if (!gguf_get_i64(g, key, &i64)) sink += (uint64_t)i64;
    if (!gguf_get_f32(g, key, &f)) sink += (uint64_t)(f == f);
    if (!gguf_get_bool(g, key, &b)) sink += b;
    if (!gguf_get_str(g, key, &s)) sink += strlen(s);
    int et;
    size_t n;
    if (gguf_get_arr(g, key, &et, &n)) return;
    for (size_t j = 0; j < n; j++) {
        size_t len;
        const char *e = gguf_arr_str(g, key, j, &len);
        if (e) sink += len + (uint64_t)(e[len] == 0);
        if (!gguf_arr_f32(g, key, j, &f)) sink += (uint64_t)(f == f);
        if (!gguf_arr_i64(g, key, j, &i64)) sink += (uint64_t)i64;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    gguf *g = gguf_open_mem(data, size, err, sizeof err);
    if (!g) return 0;
    sink += gguf_version(g) + gguf_alignment(g);
    for (int i = 0; i < gguf_n_kv(g); i++) touch_kv(g, i);
    for (int i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        if (gguf_find_tensor(g, t->name) != t) __builtin_trap();
        const uint8_t *p = t->data;
        if (t->nbytes) sink += p[0] + p[t->nbytes - 1]; /* the whole range must lie inside the input */
    }
    gguf_close(g);
    return 0;
}
