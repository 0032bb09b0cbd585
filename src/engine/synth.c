/* synth.c: random-weight llama GGUFs. See synth.h.
 *
 * Speed matters (a TinyLlama-sized F32 file is 4.4 GB): each weight costs one splitmix64 step, and the
 * normal deviate is the sum of that word's four 16-bit uniforms (Irwin-Hall, n = 4), which has the right
 * mean and variance and a tail cut at 3.5 sigma: close enough for timing and for finite activations.
 * Each tensor has its own stream (seed, tensor index), so its bytes do not depend on anything else. */
#include "engine/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "engine/gguf.h"
#include "engine/llama2c.h"
#include "engine/quant.h"

static const duet_config shapes[] = {
    {.n_layers = 22, .dim = 2048, .n_heads = 32, .n_kv_heads = 4, .head_dim = 64, .ffn_dim = 5632, .ctx_len = 2048,
     .rope_base = 10000.0f, .rms_eps = 1e-5f, .tied_output = false},
    /* Llama 3.2's own context is 131072; 8192 keeps anything that sizes a cache from the file sane. */
    {.n_layers = 16, .dim = 2048, .n_heads = 32, .n_kv_heads = 8, .head_dim = 64, .ffn_dim = 8192, .ctx_len = 8192,
     .rope_base = 500000.0f, .rms_eps = 1e-5f, .tied_output = true},
    {.n_layers = 16, .dim = 1024, .n_heads = 16, .n_kv_heads = 4, .head_dim = 64, .ffn_dim = 2816, .ctx_len = 2048,
     .rope_base = 10000.0f, .rms_eps = 1e-5f, .tied_output = false},
    {.n_layers = 2, .dim = 256, .n_heads = 4, .n_kv_heads = 2, .head_dim = 64, .ffn_dim = 512, .ctx_len = 256,
     .rope_base = 10000.0f, .rms_eps = 1e-5f, .tied_output = false},
};
static const char *const shape_names[] = {"tinyllama", "llama32-1b", "mid", "test"};

const duet_config *synth_shape(const char *name) {
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(name, shape_names[i])) return &shapes[i];
    return NULL;
}

static inline uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct synth_tensor {
    char name[48];
    int type, n_dims;
    int64_t ne0, rows;
    float sigma;      /* 0: a norm, all ones */
    uint64_t stream;
    float *scratch;   /* [ne0] shared by all tensors: fills run one at a time */
} synth_tensor;

static void gen_row(uint64_t *s, float sigma, float *x, int64_t n) {
    /* Sum of four U(0, 65536) has mean 131070 and variance 4 * 65536^2 / 12. */
    const float scale = sigma * sqrtf(3.0f) / 65536.0f;
    for (int64_t i = 0; i < n; i++) {
        uint64_t r = splitmix64(s);
        uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) + (uint32_t)((r >> 32) & 0xffff) +
                       (uint32_t)(r >> 48);
        x[i] = ((float)sum - 131070.0f) * scale;
    }
}

static int fill(void *ctx, void *dst, size_t nbytes) {
    const synth_tensor *t = ctx;
    uint64_t s = t->stream;
    size_t row = quant_row_bytes(t->type, t->ne0);
    for (int64_t r = 0; r < t->rows; r++) {
        uint8_t *out = (uint8_t *)dst + (size_t)r * row;
        float *x = t->type == DUET_TYPE_F32 ? (float *)out : t->scratch;
        if (t->sigma > 0) {
            gen_row(&s, t->sigma, x, t->ne0);
        } else {
            for (int64_t i = 0; i < t->ne0; i++) x[i] = 1.0f;
        }
        if (x == t->scratch) {
            int rc = quant_quantize_row(t->type, x, out, t->ne0);
            if (rc) return rc;
        }
    }
    return 0;
}

int synth_write(const duet_config *shape, int type, uint64_t seed, const char *vocab_path, const char *out_path,
                void (*progress)(void *arg, size_t done, size_t total), void *arg, char *err, size_t errlen) {
    duet_config c = *shape;
    c.weight_type = type;
    if (c.n_layers < 1 || c.dim < 1 || c.n_heads < 1 || c.n_kv_heads < 1 || c.dim != c.n_heads * c.head_dim ||
        c.n_heads % c.n_kv_heads)
        return err_set(err, errlen, DUET_EINVAL, "synth: inconsistent shape (%d layers, dim %d, %d heads, %d kv)",
                       c.n_layers, c.dim, c.n_heads, c.n_kv_heads);
    if (llama2c_file_type(type) < 0)
        return err_set(err, errlen, DUET_EINVAL, "synth: cannot write tensor type %d", type);
    gguf_writer *w = gguf_writer_init();
    int n_t = 3 + 9 * c.n_layers;
    synth_tensor *t = calloc((size_t)n_t, sizeof *t);
    int64_t max_ne0 = c.dim > c.ffn_dim ? c.dim : c.ffn_dim;
    float *scratch = malloc((size_t)max_ne0 * sizeof *scratch);
    int rc = 0;
    if (!w || !t || !scratch) {
        rc = err_set(err, errlen, DUET_ENOMEM, "synth: out of memory");
        goto done;
    }
    if ((rc = llama2c_add_vocab(w, vocab_path, 0, &c.vocab_size, err, errlen))) goto done;
    char name[64];
    snprintf(name, sizeof name, "synth-%dL-%d", c.n_layers, c.dim);
    if (llama2c_add_config(w, &c, name)) {
        rc = err_set(err, errlen, DUET_ENOMEM, "synth: out of memory");
        goto done;
    }
    int64_t kv_dim = (int64_t)c.n_kv_heads * c.head_dim;
    float in_dim = 1.0f / sqrtf((float)c.dim), in_ffn = 1.0f / sqrtf((float)c.ffn_dim);
    float resid = 1.0f / sqrtf(2.0f * (float)c.n_layers);
    struct { const char *name; int64_t ne0, rows; float sigma; } per_layer[] = {
        {"attn_norm", c.dim, 1, 0},          {"attn_q", c.dim, c.dim, in_dim},
        {"attn_k", c.dim, kv_dim, in_dim},   {"attn_v", c.dim, kv_dim, in_dim},
        {"attn_output", c.dim, c.dim, in_dim * resid}, {"ffn_norm", c.dim, 1, 0},
        {"ffn_gate", c.dim, c.ffn_dim, in_dim}, {"ffn_down", c.ffn_dim, c.dim, in_ffn * resid},
        {"ffn_up", c.dim, c.ffn_dim, in_dim},
    };
    int k = 0;
    synth_tensor *x = &t[k++];
    *x = (synth_tensor){"token_embd.weight", 0, 2, c.dim, c.vocab_size, in_dim, 0, NULL};
    x = &t[k++];
    *x = (synth_tensor){"output_norm.weight", 0, 1, c.dim, 1, 0, 0, NULL};
    if (!c.tied_output) {
        x = &t[k++];
        *x = (synth_tensor){"output.weight", 0, 2, c.dim, c.vocab_size, in_dim, 0, NULL};
    }
    for (int l = 0; l < c.n_layers; l++) {
        for (size_t j = 0; j < sizeof per_layer / sizeof per_layer[0]; j++) {
            x = &t[k++];
            snprintf(x->name, sizeof x->name, "blk.%d.%s.weight", l, per_layer[j].name);
            x->ne0 = per_layer[j].ne0;
            x->rows = per_layer[j].rows;
            x->sigma = per_layer[j].sigma;
            x->n_dims = x->rows == 1 ? 1 : 2;
        }
    }
    for (int i = 0; i < k && !rc; i++) {
        x = &t[i];
        x->type = x->n_dims == 1 ? DUET_TYPE_F32 : llama2c_matrix_type(type, x->ne0);
        x->scratch = scratch;
        uint64_t s = seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(i + 1));
        x->stream = splitmix64(&s);
        int64_t ne[2] = {x->ne0, x->rows};
        if (gguf_add_tensor(w, x->name, x->type, x->n_dims, ne, NULL, fill, x))
            rc = err_set(err, errlen, DUET_ERR, "synth: cannot add tensor '%s'", x->name);
    }
    if (!rc) rc = gguf_writer_write(w, out_path, progress, arg, err, errlen);
done:
    gguf_writer_free(w);
    free(t);
    free(scratch);
    return rc;
}
