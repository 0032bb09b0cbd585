/* llama2c.c: llama2.c checkpoint + tokenizer.bin -> GGUF. See llama2c.h.
 *
 * Checkpoint: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
 * a negative vocab_size means a separate classifier follows), then float32 arrays in run.c's
 * read_checkpoint order. Each [out][in] matrix is already a ggml [ne0 = in, ne1 = out] tensor, and llama2.c
 * rotates adjacent pairs as llama.cpp's "normal" rope does, so weights are copied without permutation. */
#include "engine/llama2c.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/mapfile.h"
#include "duet.h"
#include "engine/quant.h"

#define HEADER_INTS 7
#define MAX_DIM (1 << 20) /* any one hyperparameter: keeps every size product far inside 64 bits */
#define ID_UNK 0
#define ID_BOS 1
#define ID_EOS 2

/* llama.cpp's llama_token_type numbers */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_BYTE = 6 };

/* Maps a named input file ("tokenizer", "checkpoint") so errors say which input was wrong. */
static int map_input(const char *path, const char *what, mapfile *m, char *err, size_t errlen) {
    int rc = mapfile_open(path, m, err, errlen);
    if (rc) err_prefix(err, errlen, "%s", what);
    return rc;
}

static int32_t get_i32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---- vocabulary ----------------------------------------------------------------------------------- */

static bool is_hex_upper(uint8_t c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }

/* SentencePiece's byte-fallback pieces are "<0xXX>" with upper-case hex. */
static bool is_byte_piece(const uint8_t *s, int32_t n) {
    return n == 6 && !memcmp(s, "<0x", 3) && is_hex_upper(s[3]) && is_hex_upper(s[4]) && s[5] == '>';
}

/* Walks the pieces once to count and validate them, so the second walk can trust every length. */
static int count_pieces(const mapfile *m, const char *path, int *count, size_t *text_bytes, char *err, size_t errlen) {
    if (m->len < 4 || get_i32(m->p) <= 0)
        return err_set(err, errlen, DUET_EFORMAT, "tokenizer %s: bad header (max_token_length must be > 0)", path);
    size_t pos = 4, bytes = 0;
    int n = 0;
    while (pos < m->len) {
        if (m->len - pos < 8)
            return err_set(err, errlen, DUET_EFORMAT, "tokenizer %s: piece %d truncated at byte %zu", path, n, pos);
        float score;
        memcpy(&score, m->p + pos, 4);
        int32_t len = get_i32(m->p + pos + 4);
        if (!isfinite(score))
            return err_set(err, errlen, DUET_EFORMAT, "tokenizer %s: piece %d has a non-finite score", path, n);
        if (len < 0 || (size_t)len > m->len - pos - 8)
            return err_set(err, errlen, DUET_EFORMAT, "tokenizer %s: piece %d length %d runs past the end (%zu bytes)",
                           path, n, len, m->len);
        if (n == INT32_MAX) return err_set(err, errlen, DUET_EFORMAT, "tokenizer %s: too many pieces", path);
        pos += 8 + (size_t)len;
        bytes += 3 * (size_t)len + 1; /* every byte may be a ' ' that becomes the 3-byte U+2581 */
        n++;
    }
    *count = n;
    *text_bytes = bytes + 16; /* room for the fixed names of ids 0..2 */
    return 0;
}

int llama2c_add_vocab(gguf_writer *w, const char *tok_path, int n_vocab, int *n_read, char *err, size_t errlen) {
    mapfile m = {0};
    int n = 0, rc = map_input(tok_path, "tokenizer", &m, err, errlen);
    size_t text_bytes = 0;
    if (!rc) rc = count_pieces(&m, tok_path, &n, &text_bytes, err, errlen);
    if (!rc && n <= ID_EOS)
        rc = err_set(err, errlen, DUET_EFORMAT, "tokenizer %s: %d pieces, fewer than <unk>, <s>, </s>", tok_path, n);
    if (!rc && n_vocab > 0 && n != n_vocab)
        rc = err_set(err, errlen, DUET_EFORMAT, "tokenizer %s has %d pieces, the model's vocabulary is %d", tok_path,
                     n, n_vocab);
    if (rc) {
        mapfile_close(&m);
        return rc;
    }
    const char **piece = malloc((size_t)n * sizeof *piece);
    size_t *lens = malloc((size_t)n * sizeof *lens);
    float *scores = malloc((size_t)n * sizeof *scores);
    int32_t *types = malloc((size_t)n * sizeof *types);
    char *text = malloc(text_bytes);
    if (!piece || !lens || !scores || !types || !text) {
        rc = err_set(err, errlen, DUET_ENOMEM, "out of memory for %d pieces", n);
        goto done;
    }
    size_t pos = 4, used = 0;
    for (int i = 0; i < n; i++) {
        memcpy(&scores[i], m.p + pos, 4);
        int32_t len = get_i32(m.p + pos + 4);
        const uint8_t *s = m.p + pos + 8;
        pos += 8 + (size_t)len;
        char *out = text + used;
        /* llama2.c's exporter decorates BOS/EOS as "\n<s>\n"; SentencePiece's names are the plain ones. */
        static const char *const fixed[] = {"<unk>", "<s>", "</s>"};
        if (i <= ID_EOS) {
            lens[i] = strlen(fixed[i]);
            memcpy(out, fixed[i], lens[i]);
            types[i] = i == ID_UNK ? TOK_UNKNOWN : TOK_CONTROL;
        } else {
            size_t k = 0;
            for (int32_t j = 0; j < len; j++) {
                if (s[j] == ' ') {
                    memcpy(out + k, "\xe2\x96\x81", 3);
                    k += 3;
                } else {
                    out[k++] = (char)s[j];
                }
            }
            lens[i] = k;
            types[i] = is_byte_piece(s, len) ? TOK_BYTE : TOK_NORMAL;
        }
        out[lens[i]] = 0;
        piece[i] = out;
        used += lens[i] + 1;
    }
    if (gguf_set_str(w, "tokenizer.ggml.model", "llama") ||
        gguf_set_arr_str(w, "tokenizer.ggml.tokens", piece, lens, (size_t)n) ||
        gguf_set_arr_f32(w, "tokenizer.ggml.scores", scores, (size_t)n) ||
        gguf_set_arr_i32(w, "tokenizer.ggml.token_type", types, (size_t)n) ||
        gguf_set_u32(w, "tokenizer.ggml.bos_token_id", ID_BOS) || gguf_set_u32(w, "tokenizer.ggml.eos_token_id", ID_EOS) ||
        gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", ID_UNK) ||
        gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true) ||
        gguf_set_bool(w, "tokenizer.ggml.add_eos_token", false))
        rc = err_set(err, errlen, DUET_ENOMEM, "cannot add the vocabulary (out of memory or keys already set)");
    else if (n_read)
        *n_read = n;
done:
    free(piece);
    free(lens);
    free(scores);
    free(types);
    free(text);
    mapfile_close(&m);
    return rc;
}

/* ---- checkpoint ----------------------------------------------------------------------------------- */

int llama2c_matrix_type(int type, long long ne0) {
    if (type == DUET_TYPE_F32) return type;
    return quant_row_bytes(type, ne0) ? type : DUET_TYPE_F16;
}

int llama2c_file_type(int type) {
    switch (type) {
    case DUET_TYPE_F32: return 0;
    case DUET_TYPE_F16: return 1;
    case DUET_TYPE_Q4_0: return 2;
    case DUET_TYPE_Q8_0: return 7;
    case DUET_TYPE_Q4_K: return 14; /* LLAMA_FTYPE_MOSTLY_Q4_K_S */
    case DUET_TYPE_Q6_K: return 18;
    default: return -1;
    }
}

int llama2c_type_parse(const char *name) {
    static const int types[] = {DUET_TYPE_F32, DUET_TYPE_F16, DUET_TYPE_Q8_0, DUET_TYPE_Q4_0, DUET_TYPE_Q4_K,
                                DUET_TYPE_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(name, quant_traits_get(types[i])->name)) return types[i];
    return -1;
}

static int check_header(const int32_t *h, const char *path, llama2c_config *c, char *err, size_t errlen) {
    static const char *names[HEADER_INTS] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                                             "seq_len"};
    for (int i = 0; i < HEADER_INTS; i++) {
        int64_t v = i == 5 && h[i] < 0 ? -(int64_t)h[i] : h[i]; /* a negative vocab_size flags an untied classifier */
        if (v <= 0 || v > MAX_DIM)
            return err_set(err, errlen, DUET_EFORMAT, "checkpoint %s: %s = %d is not in 1..%d (not a llama2.c file?)",
                           path, names[i], h[i], MAX_DIM);
    }
    *c = (llama2c_config){h[0], h[1], h[2], h[3], h[4], h[5] < 0 ? -h[5] : h[5], h[6], h[5] > 0};
    if (c->dim % c->n_heads || (c->dim / c->n_heads) % 2)
        return err_set(err, errlen, DUET_EFORMAT, "checkpoint %s: dim %d does not split into %d heads of even size",
                       path, c->dim, c->n_heads);
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads)
        return err_set(err, errlen, DUET_EFORMAT, "checkpoint %s: %d heads do not share %d kv heads evenly", path,
                       c->n_heads, c->n_kv_heads);
    return 0;
}

/* Where one matrix of the checkpoint is and what it becomes. */
typedef struct conv_tensor {
    char name[48];
    const float *x; /* [rows][ne0] */
    int n_dims, type;
    int64_t ne0, rows;
} conv_tensor;

static int fill_rows(void *ctx, void *dst, size_t nbytes) {
    const conv_tensor *t = ctx;
    size_t row = quant_row_bytes(t->type, t->ne0);
    for (int64_t r = 0; r < t->rows; r++) {
        int rc = quant_quantize_row(t->type, t->x + r * t->ne0, (uint8_t *)dst + (size_t)r * row, t->ne0);
        if (rc) return rc;
    }
    return 0;
}

static const char *file_stem(const char *path, char *buf, size_t n) {
    const char *s = strrchr(path, '/');
    snprintf(buf, n, "%s", s ? s + 1 : path);
    char *dot = strrchr(buf, '.');
    if (dot && dot != buf) *dot = 0;
    return buf;
}

int llama2c_add_config(gguf_writer *w, const duet_config *c, const char *name) {
    return llama2c_add_config_arch(w, c, name, "llama");
}

int llama2c_add_config_arch(gguf_writer *w, const duet_config *c, const char *name, const char *arch) {
    int ftype = llama2c_file_type(c->weight_type);
    if (ftype < 0 || strlen(arch) > 32) return DUET_EINVAL;
    char k[12][64];
    static const char *const suffix[12] = {"context_length", "embedding_length", "block_count", "feed_forward_length",
                                           "rope.dimension_count", "attention.head_count", "attention.head_count_kv",
                                           "attention.layer_norm_rms_epsilon", "rope.freq_base", "vocab_size",
                                           "attention.key_length", "attention.value_length"};
    for (int i = 0; i < 12; i++) snprintf(k[i], sizeof k[i], "%s.%s", arch, suffix[i]);
    if (gguf_set_str(w, "general.architecture", arch) || gguf_set_str(w, "general.name", name) ||
        gguf_set_u32(w, "general.file_type", (uint32_t)ftype) || gguf_set_u32(w, k[0], (uint32_t)c->ctx_len) ||
        gguf_set_u32(w, k[1], (uint32_t)c->dim) || gguf_set_u32(w, k[2], (uint32_t)c->n_layers) ||
        gguf_set_u32(w, k[3], (uint32_t)c->ffn_dim) || gguf_set_u32(w, k[4], (uint32_t)c->head_dim) ||
        gguf_set_u32(w, k[5], (uint32_t)c->n_heads) || gguf_set_u32(w, k[6], (uint32_t)c->n_kv_heads) ||
        gguf_set_f32(w, k[7], c->rms_eps) || gguf_set_f32(w, k[8], c->rope_base) ||
        gguf_set_u32(w, k[9], (uint32_t)c->vocab_size))
        return DUET_ENOMEM;
    /* head_dim decoupled from dim (Qwen3) is said with the key and value lengths, as llama.cpp reads it */
    if (c->head_dim * c->n_heads != c->dim &&
        (gguf_set_u32(w, k[10], (uint32_t)c->head_dim) || gguf_set_u32(w, k[11], (uint32_t)c->head_dim)))
        return DUET_ENOMEM;
    return 0;
}

/* Lays out every array of the checkpoint in read_checkpoint order; returns the float count it spans
 * (including the rope tables llama.cpp recomputes, which are skipped). t may be NULL to only count. */
static uint64_t layout(const llama2c_config *c, const float *base, int type, conv_tensor *t, int *n_t) {
    uint64_t dim = (uint64_t)c->dim, hid = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
    uint64_t kv_dim = dim / (uint64_t)c->n_heads * (uint64_t)c->n_kv_heads, vocab = (uint64_t)c->vocab_size;
    struct { const char *name; uint64_t ne0, rows; bool per_layer; } arrays[] = {
        {"token_embd", dim, vocab, false}, {"attn_norm", dim, 1, true},    {"attn_q", dim, dim, true},
        {"attn_k", dim, kv_dim, true},     {"attn_v", dim, kv_dim, true},  {"attn_output", dim, dim, true},
        {"ffn_norm", dim, 1, true},        {"ffn_gate", dim, hid, true},   {"ffn_down", hid, dim, true},
        {"ffn_up", dim, hid, true},        {"output_norm", dim, 1, false}, {NULL, (uint64_t)c->seq_len, dim / (uint64_t)c->n_heads, false},
        {"output", dim, vocab, false},
    }; /* the unnamed entry: freq_cis_real and _imag, [seq_len][head_size / 2] each, which llama.cpp recomputes */
    int n_arrays = c->shared_classifier ? 12 : 13;
    uint64_t off = 0;
    int k = 0;
    for (int a = 0; a < n_arrays; a++) {
        uint64_t per = arrays[a].ne0 * arrays[a].rows, reps = arrays[a].per_layer ? L : 1;
        for (uint64_t l = 0; l < reps && arrays[a].name; l++, k++) {
            if (!t) continue;
            conv_tensor *x = &t[k];
            if (arrays[a].per_layer) snprintf(x->name, sizeof x->name, "blk.%d.%s.weight", (int)l, arrays[a].name);
            else snprintf(x->name, sizeof x->name, "%s.weight", arrays[a].name);
            x->x = base + off + l * per;
            x->ne0 = (int64_t)arrays[a].ne0;
            x->rows = (int64_t)arrays[a].rows;
            x->n_dims = x->rows == 1 ? 1 : 2;
            x->type = x->n_dims == 1 ? DUET_TYPE_F32 : llama2c_matrix_type(type, x->ne0);
        }
        off += per * reps;
    }
    *n_t = k;
    return off;
}

int llama2c_convert(const char *ckpt_path, const char *tok_path, const char *out_path, int type,
                    llama2c_config *cfg, void (*progress)(void *arg, size_t done, size_t total), void *arg,
                    char *err, size_t errlen) {
    if (llama2c_file_type(type) < 0)
        return err_set(err, errlen, DUET_EINVAL, "cannot convert to tensor type %d (F32, F16, Q8_0, Q4_0, Q4_K, Q6_K)",
                       type);
    mapfile m = {0};
    int rc = map_input(ckpt_path, "checkpoint", &m, err, errlen);
    if (rc) return rc;
    llama2c_config c;
    int32_t h[HEADER_INTS];
    conv_tensor *t = NULL;
    gguf_writer *w = NULL;
    if (m.len < sizeof h) {
        rc = err_set(err, errlen, DUET_EFORMAT, "checkpoint %s: %zu bytes, shorter than its header", ckpt_path, m.len);
        goto done;
    }
    memcpy(h, m.p, sizeof h);
    if ((rc = check_header(h, ckpt_path, &c, err, errlen))) goto done;
    int n_t;
    uint64_t n_floats = layout(&c, NULL, type, NULL, &n_t);
    if (m.len != sizeof h + 4 * n_floats) {
        rc = err_set(err, errlen, DUET_EFORMAT,
                     "checkpoint %s is %zu bytes; its header (dim %d, hidden %d, %d layers, %d heads, %d kv heads, "
                     "vocab %d%s, seq_len %d) needs exactly %llu",
                     ckpt_path, m.len, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
                     c.shared_classifier ? " shared" : " + classifier", c.seq_len,
                     (unsigned long long)(sizeof h + 4 * n_floats));
        goto done;
    }
    t = calloc((size_t)n_t, sizeof *t);
    w = gguf_writer_init();
    if (!t || !w) {
        rc = err_set(err, errlen, DUET_ENOMEM, "out of memory");
        goto done;
    }
    layout(&c, (const float *)(m.p + sizeof h), type, t, &n_t);
    char name[64];
    duet_config dc = {.n_layers = c.n_layers, .dim = c.dim, .n_heads = c.n_heads, .n_kv_heads = c.n_kv_heads,
                      .head_dim = c.dim / c.n_heads, .ffn_dim = c.hidden_dim, .vocab_size = c.vocab_size,
                      .ctx_len = c.seq_len, .rope_base = 10000.0f, .rms_eps = 1e-5f,
                      .tied_output = c.shared_classifier, .weight_type = type};
    if (llama2c_add_config(w, &dc, file_stem(ckpt_path, name, sizeof name))) {
        rc = err_set(err, errlen, DUET_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = llama2c_add_vocab(w, tok_path, c.vocab_size, NULL, err, errlen))) goto done;
    for (int i = 0; i < n_t && !rc; i++) {
        int64_t ne[2] = {t[i].ne0, t[i].rows};
        bool raw = t[i].type == DUET_TYPE_F32; /* copied straight from the mapping */
        if (gguf_add_tensor(w, t[i].name, t[i].type, t[i].n_dims, ne, raw ? t[i].x : NULL, raw ? NULL : fill_rows,
                            &t[i]))
            rc = err_set(err, errlen, DUET_ERR, "cannot add tensor '%s'", t[i].name);
    }
    if (!rc) rc = gguf_writer_write(w, out_path, progress, arg, err, errlen);
    if (!rc && cfg) *cfg = c;
done:
    gguf_writer_free(w);
    free(t);
    mapfile_close(&m);
    return rc;
}
