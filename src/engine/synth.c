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
    /* The models people put on devices, with their real vocabularies (the embedding and the tied head are a
     * large share of their weights). Contexts capped at 8192 as above. */
    {.n_layers = 16, .dim = 2048, .n_heads = 32, .n_kv_heads = 8, .head_dim = 64, .ffn_dim = 8192, .ctx_len = 8192,
     .rope_base = 500000.0f, .rms_eps = 1e-5f, .tied_output = true},
    {.n_layers = 24, .dim = 896, .n_heads = 14, .n_kv_heads = 2, .head_dim = 64, .ffn_dim = 4864, .ctx_len = 8192,
     .rope_base = 1000000.0f, .rms_eps = 1e-6f, .tied_output = true},
    {.n_layers = 28, .dim = 1024, .n_heads = 16, .n_kv_heads = 8, .head_dim = 128, .ffn_dim = 3072, .ctx_len = 8192,
     .rope_base = 1000000.0f, .rms_eps = 1e-6f, .tied_output = true},
};
static const char *const shape_names[] = {"tinyllama", "llama32-1b", "mid", "test", "llama3.2-1b", "qwen2.5-0.5b",
                                          "qwen3-0.6b"};
static const synth_extra LLAMA = {"llama", false, false, 0, NULL};
static const synth_extra extras[] = {
    {"llama", false, false, 32.0f, "tests/data/vocab/ggml-vocab-llama3.gguf"},
    {"qwen2", true, false, 0, "tests/data/vocab/ggml-vocab-qwen2.gguf"},
    {"qwen3", false, true, 0, "tests/data/vocab/ggml-vocab-qwen2.gguf"},
};

const duet_config *synth_shape(const char *name) {
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(name, shape_names[i])) return &shapes[i];
    return NULL;
}

const synth_extra *synth_shape_extra(const char *name) {
    for (size_t i = 4; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(name, shape_names[i])) return &extras[i - 4];
    return &LLAMA;
}

/* Copies every tokenizer.* key of the GGUF at path (a vocabulary-only file works); *n_vocab gets its size. */
static int copy_vocab(gguf_writer *w, const char *path, int *n_vocab, char *err, size_t errlen) {
    gguf *g = gguf_open(path, err, errlen);
    if (!g) return DUET_EIO;
    int et;
    size_t n = 0;
    int rc = gguf_copy_kv(w, g, "tokenizer.");
    if (!rc && gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n) == 0) *n_vocab = (int)n;
    gguf_close(g);
    if (rc) return err_set(err, errlen, DUET_ENOMEM, "synth: cannot copy the vocabulary of %s", path);
    if (!n) return err_set(err, errlen, DUET_EFORMAT, "synth: %s has no tokenizer.ggml.tokens", path);
    return 0;
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
    const float *data; /* fixed values instead (rope_freqs), or NULL */
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
    return synth_write_arch(shape, &LLAMA, type, seed, vocab_path, out_path, progress, arg, err, errlen);
}

/* Llama 3.1's rope_freqs as llama.cpp's converter computes them (low_freq_factor 1, high_freq_factor 4, original
 * context 8192): 1 for high frequencies, factor for low ones, a blend between. */
static void llama3_rope_freqs(float *f, int head_dim, float base, float factor) {
    const float lo = 1.0f, hi = 4.0f, old_ctx = 8192.0f;
    const float low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
    for (int i = 0; i < head_dim / 2; i++) {
        float freq = 1.0f / powf(base, (float)(2 * i) / (float)head_dim), wavelen = 2.0f * (float)M_PI / freq;
        if (wavelen < high_wavelen) f[i] = 1.0f;
        else if (wavelen > low_wavelen) f[i] = factor;
        else {
            float smooth = (old_ctx / wavelen - lo) / (hi - lo);
            f[i] = 1.0f / ((1.0f - smooth) / factor + smooth);
        }
    }
}

int synth_write_arch(const duet_config *shape, const synth_extra *xa, int type, uint64_t seed, const char *vocab_path,
                     const char *out_path, void (*progress)(void *arg, size_t done, size_t total), void *arg,
                     char *err, size_t errlen) {
    duet_config c = *shape;
    c.weight_type = type;
    const bool decoupled = !strcmp(xa->arch, "qwen3"); /* Qwen3 sets head_dim apart from dim / n_heads */
    if (c.n_layers < 1 || c.dim < 1 || c.n_heads < 1 || c.n_kv_heads < 1 || c.head_dim < 2 ||
        (!decoupled && c.dim != c.n_heads * c.head_dim) || c.n_heads % c.n_kv_heads)
        return err_set(err, errlen, DUET_EINVAL, "synth: inconsistent shape (%d layers, dim %d, %d heads, %d kv)",
                       c.n_layers, c.dim, c.n_heads, c.n_kv_heads);
    if (llama2c_file_type(type) < 0)
        return err_set(err, errlen, DUET_EINVAL, "synth: cannot write tensor type %d", type);
    gguf_writer *w = gguf_writer_init();
    int n_t = 4 + 14 * c.n_layers;
    synth_tensor *t = calloc((size_t)n_t, sizeof *t);
    const int64_t q_dim = (int64_t)c.n_heads * c.head_dim;
    int64_t max_ne0 = c.dim > c.ffn_dim ? c.dim : c.ffn_dim;
    if (q_dim > max_ne0) max_ne0 = q_dim;
    float *scratch = malloc((size_t)max_ne0 * sizeof *scratch);
    int rc = 0;
    if (!w || !t || !scratch) {
        rc = err_set(err, errlen, DUET_ENOMEM, "synth: out of memory");
        goto done;
    }
    size_t vl = strlen(vocab_path);
    if ((rc = vl > 5 && !strcmp(vocab_path + vl - 5, ".gguf") ? copy_vocab(w, vocab_path, &c.vocab_size, err, errlen)
                                                               : llama2c_add_vocab(w, vocab_path, 0, &c.vocab_size, err,
                                                                                   errlen)))
        goto done;
    char name[64];
    snprintf(name, sizeof name, "synth-%s-%dL-%d", xa->arch, c.n_layers, c.dim);
    if (llama2c_add_config_arch(w, &c, name, xa->arch)) {
        rc = err_set(err, errlen, DUET_ENOMEM, "synth: out of memory");
        goto done;
    }
    int64_t kv_dim = (int64_t)c.n_kv_heads * c.head_dim;
    float in_dim = 1.0f / sqrtf((float)c.dim), in_ffn = 1.0f / sqrtf((float)c.ffn_dim);
    float resid = 1.0f / sqrtf(2.0f * (float)c.n_layers);
    struct { const char *name; int64_t ne0, rows; float sigma; } per_layer[] = {
        {"attn_norm", c.dim, 1, 0},          {"attn_q", c.dim, q_dim, in_dim},
        {"attn_k", c.dim, kv_dim, in_dim},   {"attn_v", c.dim, kv_dim, in_dim},
        {"attn_output", q_dim, c.dim, in_dim * resid}, {"ffn_norm", c.dim, 1, 0},
        {"ffn_gate", c.dim, c.ffn_dim, in_dim}, {"ffn_down", c.ffn_dim, c.dim, in_ffn * resid},
        {"ffn_up", c.dim, c.ffn_dim, in_dim},
        /* the extras: biases small random, q/k norms ones */
        {"attn_q.bias", q_dim, 1, 0.02f},     {"attn_k.bias", kv_dim, 1, 0.02f},
        {"attn_v.bias", kv_dim, 1, 0.02f},    {"attn_q_norm", c.head_dim, 1, 0},
        {"attn_k_norm", c.head_dim, 1, 0},
    };
    float freqs[512];
    int k = 0;
    synth_tensor *x = &t[k++];
    *x = (synth_tensor){"token_embd.weight", 0, 2, c.dim, c.vocab_size, in_dim, 0, NULL, NULL};
    x = &t[k++];
    *x = (synth_tensor){"output_norm.weight", 0, 1, c.dim, 1, 0, 0, NULL, NULL};
    if (!c.tied_output) {
        x = &t[k++];
        *x = (synth_tensor){"output.weight", 0, 2, c.dim, c.vocab_size, in_dim, 0, NULL, NULL};
    }
    if (xa->rope_factor > 0 && c.head_dim / 2 <= 512) {
        llama3_rope_freqs(freqs, c.head_dim, c.rope_base, xa->rope_factor);
        x = &t[k++];
        *x = (synth_tensor){"rope_freqs.weight", 0, 1, c.head_dim / 2, 1, -1, 0, NULL, NULL};
        x->data = freqs;
    }
    for (int l = 0; l < c.n_layers; l++) {
        for (size_t j = 0; j < sizeof per_layer / sizeof per_layer[0]; j++) {
            if ((j >= 9 && j < 12 && !xa->qkv_bias) || (j >= 12 && !xa->qk_norm)) continue;
            x = &t[k++];
            snprintf(x->name, sizeof x->name, j >= 9 && j < 12 ? "blk.%d.%s" : "blk.%d.%s.weight", l, per_layer[j].name);
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
        if (gguf_add_tensor(w, x->name, x->type, x->n_dims, ne, x->data, x->data ? NULL : fill, x))
            rc = err_set(err, errlen, DUET_ERR, "synth: cannot add tensor '%s'", x->name);
    }
    if (!rc) rc = gguf_writer_write(w, out_path, progress, arg, err, errlen);
done:
    gguf_writer_free(w);
    free(t);
    free(scratch);
    return rc;
}
