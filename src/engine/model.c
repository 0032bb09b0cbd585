/* Loading the part of a GGUF that a process holds (architectures llama, qwen2, qwen3), with every check
 * done up front so the forward pass can trust shapes and types. */
#include "engine/model.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/err.h"
#include "base/hash.h"
#include "engine/quant.h"
#include "engine/tokenizer.h"

duet_part duet_part_all(void) {
    duet_part p = {0};
    p.n_spans = 1;
    p.span[0].a = 0;
    p.span[0].b = 1 << 30; /* clipped to L at load */
    p.embed = p.head = true;
    return p;
}

bool duet_part_has_layer(const duet_part *p, int layer) {
    for (int i = 0; i < p->n_spans; i++)
        if (layer >= p->span[i].a && layer < p->span[i].b) return true;
    return false;
}

int duet_part_parse(const char *spec, duet_part *out, char *err, size_t errlen) {
    duet_part p = {0};
    const char *s = spec;
    while (*s) {
        size_t len = strcspn(s, ",");
        if (len == 5 && !strncmp(s, "embed", 5)) {
            p.embed = true;
        } else if (len == 4 && !strncmp(s, "head", 4)) {
            p.head = true;
        } else if (len == 3 && !strncmp(s, "all", 3)) {
            p = duet_part_all();
        } else {
            int a, b, used = 0;
            if (sscanf(s, "%d:%d%n", &a, &b, &used) != 2 || (size_t)used != len || a < 0 || b <= a)
                return err_set(err, errlen, DUET_EINVAL,
                               "part '%s': expected layer ranges A:B (0 <= A < B), 'embed', 'head' or 'all', "
                               "separated by commas", spec);
            if (p.n_spans == DUET_MAX_SPANS)
                return err_set(err, errlen, DUET_EINVAL, "part '%s': more than %d layer ranges", spec,
                               DUET_MAX_SPANS);
            p.span[p.n_spans].a = a;
            p.span[p.n_spans].b = b;
            p.n_spans++;
        }
        s += len;
        if (*s == ',') s++;
    }
    *out = p;
    return DUET_OK;
}

/* ---- loading ---------------------------------------------------------------------------------------- */

static int get_int(const gguf *g, const char *key, int *out, int dflt, bool required, char *err, size_t errlen) {
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v);
    if (rc == 1) {
        if (required) return err_set(err, errlen, DUET_EFORMAT, "metadata key '%s' is missing", key);
        *out = dflt;
        return DUET_OK;
    }
    if (rc < 0 || v == 0 || v > (1u << 24))
        return err_set(err, errlen, DUET_EFORMAT, "metadata key '%s' is not a sensible positive integer", key);
    *out = (int)v;
    return DUET_OK;
}

static int get_float(const gguf *g, const char *key, float *out, float dflt, char *err, size_t errlen) {
    int rc = gguf_get_f32(g, key, out);
    if (rc == 1) *out = dflt;
    else if (rc < 0 || !(*out > 0))
        return err_set(err, errlen, DUET_EFORMAT, "metadata key '%s' is not a positive number", key);
    return DUET_OK;
}

static const char *const ARCH_NAMES[] = {"llama", "qwen2", "qwen3"};

/* Reads the hyper-parameters under the architecture's prefix ("qwen2.embedding_length" ...). */
static int read_config(duet_model *m, char *err, size_t errlen) {
    const gguf *g = m->file;
    duet_config *c = &m->cfg;
    const char *arch = NULL;
    if (gguf_get_str(g, "general.architecture", &arch) != 0)
        return err_set(err, errlen, DUET_EFORMAT, "metadata key 'general.architecture' is missing");
    m->arch = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(arch, ARCH_NAMES[i])) m->arch = i;
    if (m->arch < 0)
        return err_set(err, errlen, DUET_EUNSUPPORTED,
                       "architecture '%.64s' is not supported (duet runs llama, qwen2 and qwen3 models)", arch);
    memset(c, 0, sizeof *c);
    char k[9][96];
    static const char *const suffix[9] = {"embedding_length", "block_count", "attention.head_count",
                                          "feed_forward_length", "attention.head_count_kv", "context_length",
                                          "rope.freq_base", "attention.layer_norm_rms_epsilon",
                                          "rope.dimension_count"};
    for (int i = 0; i < 9; i++) snprintf(k[i], sizeof k[i], "%s.%s", arch, suffix[i]);
    int rc;
    if ((rc = get_int(g, k[0], &c->dim, 0, true, err, errlen)) ||
        (rc = get_int(g, k[1], &c->n_layers, 0, true, err, errlen)) ||
        (rc = get_int(g, k[2], &c->n_heads, 0, true, err, errlen)) ||
        (rc = get_int(g, k[3], &c->ffn_dim, 0, true, err, errlen)) ||
        (rc = get_int(g, k[4], &c->n_kv_heads, c->n_heads, false, err, errlen)) ||
        (rc = get_int(g, k[5], &c->ctx_len, 2048, false, err, errlen)) ||
        (rc = get_float(g, k[6], &c->rope_base, 10000.0f, err, errlen)) ||
        (rc = get_float(g, k[7], &c->rms_eps, 1e-5f, err, errlen)))
        return rc;
    /* head_dim is dim / n_heads unless the file says otherwise (Qwen3: 128 with dim 1024 and 16 heads) */
    char kl[96], vl[96];
    snprintf(kl, sizeof kl, "%s.attention.key_length", arch);
    snprintf(vl, sizeof vl, "%s.attention.value_length", arch);
    if ((rc = get_int(g, kl, &c->head_dim, c->dim % c->n_heads ? 0 : c->dim / c->n_heads, false, err, errlen)))
        return rc;
    if (c->head_dim == 0)
        return err_set(err, errlen, DUET_EFORMAT, "%d heads do not divide dim %d and '%s' is missing", c->n_heads,
                       c->dim, kl);
    if (c->n_heads % c->n_kv_heads)
        return err_set(err, errlen, DUET_EFORMAT, "%d kv heads do not divide %d heads", c->n_kv_heads, c->n_heads);
    int v_len;
    if ((rc = get_int(g, vl, &v_len, c->head_dim, false, err, errlen))) return rc;
    if (v_len != c->head_dim)
        return err_set(err, errlen, DUET_EUNSUPPORTED, "'%s' = %d differs from '%s' = %d: not supported", vl, v_len, kl,
                       c->head_dim);
    if (c->head_dim % 2) return err_set(err, errlen, DUET_EFORMAT, "head dimension %d is odd", c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim > (1 << 20))
        return err_set(err, errlen, DUET_EFORMAT, "%d heads of %d are too wide", c->n_heads, c->head_dim);
    m->q_dim = c->n_heads * c->head_dim;
    int rope_dim;
    if ((rc = get_int(g, k[8], &rope_dim, c->head_dim, false, err, errlen))) return rc;
    if (rope_dim != c->head_dim)
        return err_set(err, errlen, DUET_EUNSUPPORTED, "partial rotary embedding (%d of %d dims) is not supported",
                       rope_dim, c->head_dim);
    m->rope_neox = m->arch != ARCH_LLAMA;
    /* Llama 3.1's scaling comes as the rope_freqs tensor (loaded below); linear scaling as keys. */
    m->rope_freq_scale = 1.0f;
    char sk[96];
    const char *type = NULL;
    snprintf(sk, sizeof sk, "%s.rope.scaling.type", arch);
    if (gguf_get_str(g, sk, &type) < 0) return err_set(err, errlen, DUET_EFORMAT, "'%s' is not a string", sk);
    if (type && !strcmp(type, "linear")) {
        float factor;
        snprintf(sk, sizeof sk, "%s.rope.scaling.factor", arch);
        if ((rc = get_float(g, sk, &factor, 1.0f, err, errlen))) return rc;
        m->rope_freq_scale = 1.0f / factor;
    } else if (type && strcmp(type, "none")) {
        return err_set(err, errlen, DUET_EUNSUPPORTED,
                       "'%s' = '%.32s' is not supported (duet knows none, linear, and Llama 3's rope_freqs tensor)", sk,
                       type);
    }
    return DUET_OK;
}

/* Finds a tensor and checks its shape is ne = [cols, rows] (rows 0: 1-D). */
static const gguf_tensor *find(const gguf *g, const char *name, int64_t cols, int64_t rows, char *err,
                               size_t errlen) {
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) {
        err_set(err, errlen, DUET_EFORMAT, "tensor '%s' is missing", name);
        return NULL;
    }
    int want_dims = rows ? 2 : 1;
    if (t->n_dims != want_dims || t->ne[0] != cols || (rows && t->ne[1] != rows)) {
        err_set(err, errlen, DUET_EFORMAT, "tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", name,
                (long long)t->ne[0], (long long)(t->n_dims > 1 ? t->ne[1] : 1), (long long)cols,
                (long long)(rows ? rows : 1));
        return NULL;
    }
    const quant_traits *tr = quant_traits_get(t->type);
    if (!tr || !tr->supported || t->type == DUET_TYPE_Q8_K) {
        err_set(err, errlen, DUET_EUNSUPPORTED,
                "tensor '%s' has type %s, which duet cannot compute with (supported: F32, F16, Q8_0, Q4_0, Q4_K, Q6_K)",
                name, tr ? tr->name : "unknown");
        return NULL;
    }
    return t;
}

static int load_mat(const gguf *g, const char *name, int cols, int rows, model_mat *m, char *err, size_t errlen) {
    const gguf_tensor *t = find(g, name, cols, rows, err, errlen);
    if (!t) return DUET_EFORMAT;
    m->type = t->type;
    m->rows = rows;
    m->cols = cols;
    m->row_bytes = quant_row_bytes(t->type, cols);
    m->data = t->data;
    return DUET_OK;
}

/* Vectors (norms, rope factors) are converted to f32 once, whatever their stored type. */
static int load_vec(const gguf *g, const char *name, int n, float *dst, char *err, size_t errlen) {
    const gguf_tensor *t = find(g, name, n, 0, err, errlen);
    if (!t) return DUET_EFORMAT;
    if (quant_dequantize_row(t->type, t->data, dst, n) != 0)
        return err_set(err, errlen, DUET_EUNSUPPORTED, "tensor '%s': cannot convert its type to f32", name);
    return DUET_OK;
}

enum { LAYER_TENSORS = 9 }; /* what load_layer reads at least: seven matrices and two norms */

/* f32 values a layer keeps of its own: two norms, the q/k/v biases and the q/k norms */
static size_t layer_floats(const duet_model *m) {
    const duet_config *c = &m->cfg;
    return 2 * (size_t)c->dim + (size_t)m->q_dim + 2 * (size_t)c->n_kv_heads * c->head_dim + 2 * (size_t)c->head_dim;
}

/* An optional vector: absent leaves *out NULL unless required (then a message naming the tensor). */
static int load_opt_vec(const gguf *g, const char *name, int n, bool required, float *dst, const float **out,
                        char *err, size_t errlen) {
    if (!required && !gguf_find_tensor(g, name)) return DUET_OK;
    int rc = load_vec(g, name, n, dst, err, errlen);
    if (!rc) *out = dst;
    return rc;
}

static int load_layer(duet_model *m, int l, float *norms, char *err, size_t errlen) {
    const duet_config *c = &m->cfg;
    model_layer *L = &m->layers[l];
    int kv_dim = c->n_kv_heads * c->head_dim, q_dim = m->q_dim;
    char name[64];
    int rc;
#define MAT(field, suffix, cols, rows)                                                   \
    snprintf(name, sizeof name, "blk.%d.%s.weight", l, suffix);                          \
    if ((rc = load_mat(m->file, name, cols, rows, &L->field, err, errlen))) return rc;
    MAT(wq, "attn_q", c->dim, q_dim)
    MAT(wk, "attn_k", c->dim, kv_dim)
    MAT(wv, "attn_v", c->dim, kv_dim)
    MAT(wo, "attn_output", q_dim, c->dim)
    MAT(gate, "ffn_gate", c->dim, c->ffn_dim)
    MAT(up, "ffn_up", c->dim, c->ffn_dim)
    MAT(down, "ffn_down", c->ffn_dim, c->dim)
#undef MAT
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
    if ((rc = load_vec(m->file, name, c->dim, norms, err, errlen))) return rc;
    snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
    if ((rc = load_vec(m->file, name, c->dim, norms + c->dim, err, errlen))) return rc;
    L->attn_norm = norms;
    L->ffn_norm = norms + c->dim;
    /* qwen2 has q/k/v biases (llama may: llama.cpp reads them when present); qwen3 per-head q/k norms */
    float *at = norms + 2 * c->dim;
    const bool bias = m->arch == ARCH_QWEN2;
    static const char *const bname[3] = {"attn_q", "attn_k", "attn_v"};
    const float **bdst[3] = {&L->bq, &L->bk, &L->bv};
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "blk.%d.%s.bias", l, bname[i]);
        int n = i ? kv_dim : q_dim;
        if ((rc = load_opt_vec(m->file, name, n, bias, at, bdst[i], err, errlen))) return rc;
        at += n;
    }
    const bool qk_norm = m->arch == ARCH_QWEN3;
    snprintf(name, sizeof name, "blk.%d.attn_q_norm.weight", l);
    if ((rc = load_opt_vec(m->file, name, c->head_dim, qk_norm, at, &L->q_norm, err, errlen))) return rc;
    snprintf(name, sizeof name, "blk.%d.attn_k_norm.weight", l);
    if ((rc = load_opt_vec(m->file, name, c->head_dim, qk_norm, at + c->head_dim, &L->k_norm, err, errlen))) return rc;
    const model_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
    for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
        m->weight_bytes += mats[i]->row_bytes * (size_t)mats[i]->rows;
    return DUET_OK;
}

static int check_part(duet_part *p, int n_layers, char *err, size_t errlen) {
    for (int i = 0; i < p->n_spans; i++) {
        if (p->span[i].b > n_layers && p->span[i].b == (1 << 30)) p->span[i].b = n_layers; /* duet_part_all */
        if (p->span[i].a < 0 || p->span[i].b > n_layers || p->span[i].a >= p->span[i].b)
            return err_set(err, errlen, DUET_EINVAL, "layer range %d:%d is outside the model's %d layers",
                           p->span[i].a, p->span[i].b, n_layers);
        for (int j = 0; j < i; j++)
            if (p->span[i].a < p->span[j].b && p->span[j].a < p->span[i].b)
                return err_set(err, errlen, DUET_EINVAL, "layer ranges %d:%d and %d:%d overlap", p->span[j].a,
                               p->span[j].b, p->span[i].a, p->span[i].b);
    }
    return DUET_OK;
}

static int load(duet_model *m, const char *path, const duet_part *part, char *err, size_t errlen) {
    int rc;
    m->file = gguf_open(path, err, errlen);
    if (!m->file) return DUET_EFORMAT;
    if ((rc = read_config(m, err, errlen))) return rc;
    duet_config *c = &m->cfg;
    m->part = part ? *part : duet_part_all();
    if ((rc = check_part(&m->part, c->n_layers, err, errlen))) return rc;

    const gguf_tensor *embd = gguf_find_tensor(m->file, "token_embd.weight");
    if (!embd || embd->n_dims != 2 || embd->ne[1] < 1 || embd->ne[1] > (1 << 24))
        return err_set(err, errlen, DUET_EFORMAT, "tensor 'token_embd.weight' is missing or not [dim, vocab]");
    c->vocab_size = (int)embd->ne[1];
    /* Sizes from metadata are checked against the tensors before anything is allocated by them. */
    if (embd->ne[0] != c->dim)
        return err_set(err, errlen, DUET_EFORMAT, "tensor 'token_embd.weight' has rows of %lld, but dim is %d",
                       (long long)embd->ne[0], c->dim);
    if ((int64_t)c->n_layers * LAYER_TENSORS > gguf_n_tensors(m->file))
        return err_set(err, errlen, DUET_EFORMAT, "block_count %d needs %d tensors per layer; the file has %d in all",
                       c->n_layers, LAYER_TENSORS, gguf_n_tensors(m->file));
    /* ffn_dim sizes every context's scratch, whichever layers this part holds */
    if (!find(m->file, "blk.0.ffn_up.weight", c->dim, c->ffn_dim, err, errlen)) return DUET_EFORMAT;
    c->tied_output = gguf_find_tensor(m->file, "output.weight") == NULL;
    const gguf_tensor *freqs = gguf_find_tensor(m->file, "rope_freqs.weight");

    const size_t per_layer = layer_floats(m);
    size_t n_owned = (size_t)c->n_layers * per_layer + c->dim + (size_t)c->head_dim / 2;
    m->owned = calloc(n_owned, sizeof(float));
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->owned || !m->layers) return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    c->weight_type = -1;
    for (int l = 0; l < c->n_layers; l++) {
        if (!duet_part_has_layer(&m->part, l)) continue;
        if ((rc = load_layer(m, l, m->owned + (size_t)l * per_layer, err, errlen))) return rc;
        if (c->weight_type < 0) c->weight_type = m->layers[l].wq.type;
    }
    if (m->part.embed || (m->part.head && c->tied_output)) {
        if ((rc = load_mat(m->file, "token_embd.weight", c->dim, c->vocab_size, &m->embd, err, errlen))) return rc;
    }
    if (m->part.head) {
        float *norm = m->owned + (size_t)c->n_layers * per_layer;
        if ((rc = load_vec(m->file, "output_norm.weight", c->dim, norm, err, errlen))) return rc;
        m->out_norm = norm;
        if (c->tied_output) m->out = m->embd;
        else if ((rc = load_mat(m->file, "output.weight", c->dim, c->vocab_size, &m->out, err, errlen))) return rc;
        m->weight_bytes += m->out.row_bytes * (size_t)m->out.rows;
        if (c->weight_type < 0) c->weight_type = m->out.type;
    }
    if (freqs) {
        float *f = m->owned + (size_t)c->n_layers * per_layer + c->dim;
        if ((rc = load_vec(m->file, "rope_freqs.weight", c->head_dim / 2, f, err, errlen))) return rc;
        m->rope_freqs = f;
    }
    if (c->weight_type < 0) c->weight_type = embd->type;

    m->tok = tokenizer_load(m->file, m->tok_err, sizeof m->tok_err);
    if (m->tok && duet_tokenizer_n_vocab(m->tok) != c->vocab_size) {
        snprintf(m->tok_err, sizeof m->tok_err, "the vocabulary has %d tokens but the embedding has %d rows",
                 duet_tokenizer_n_vocab(m->tok), c->vocab_size);
        tokenizer_free(m->tok);
        m->tok = NULL;
    }
    pthread_mutex_init(&m->fp_lock, NULL);
    return DUET_OK;
}

/* The held weight matrices, into out[2 + 7 * n_layers]; returns how many. A tied head counts once. */
static int held_mats(duet_model *m, model_mat **out) {
    int n = 0;
    if (m->embd.data) out[n++] = &m->embd;
    if (m->out.data && m->out.data != m->embd.data) out[n++] = &m->out;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        model_layer *L = &m->layers[l];
        model_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            if (mats[i]->data) out[n++] = mats[i];
    }
    return n;
}

static size_t mat_bytes(const model_mat *a) { return a->row_bytes * (size_t)a->rows; }

/* Locks the pages of [p, p+n); false if the system refuses (RLIMIT_MEMLOCK). */
static bool lock_range(const void *p, size_t n) {
    if (!p || !n) return true;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p & ~(page - 1);
    return mlock((const void *)a, (uintptr_t)p + n - a) == 0;
}

/* Weights are read in full for every token, yet pages can still be reclaimed or have their accessed bits
 * sampled by the kernel's memory monitors. Locking the held part keeps it resident; when the limit
 * refuses, the model simply stays unlocked. */
static void lock_part(duet_model *m, model_mat **mats, int n) {
    bool ok = true;
    for (int i = 0; ok && i < n; i++) ok = lock_range(mats[i]->data, mat_bytes(mats[i]));
    m->locked = ok;
}

/* Reads len bytes at offset off of fd into dst, through short reads and interruptions. */
static int read_at(int fd, uint8_t *dst, size_t len, size_t off) {
    while (len) {
        ssize_t got = pread(fd, dst, len, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got == 0) errno = 0; /* end of file: the caller says so */
        if (got <= 0) return -1;
        dst += got;
        off += (size_t)got;
        len -= (size_t)got;
    }
    return 0;
}

/* Reads the held mats from path into one block of the process's own memory and points the mats at it.
 * The block is populated in one call and filled with pread, not copied out of the mapping: touching the
 * mapping and the block page by page took ~11 s for TinyLlama F16 (2.2 GB) against ~1.7 s to map it.
 * It is kept off transparent huge pages: on the VM we measure, TinyLlama decode from a huge-page copy ran at
 * 10.6-12.5 tok/s (Q8_0) against 23.1-24.7 from small pages (bench_engine, side by side). */
static int copy_part(duet_model *m, const char *path, model_mat **mats, int n, char *err, size_t errlen) {
    size_t total = 0, flen;
    for (int i = 0; i < n; i++) total += (mat_bytes(mats[i]) + 63) & ~(size_t)63;
    if (!total) return DUET_OK;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (total + page - 1) / page * page;
    uint8_t *block = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (block == MAP_FAILED)
        return err_set(err, errlen, DUET_ENOMEM, "out of memory for %zu bytes of weights (--mmap reads them in "
                                                 "place)", total);
    m->weights = block;
    m->weights_len = len;
    madvise(block, len, MADV_NOHUGEPAGE);      /* hints: without them the reads below fault page by page */
    madvise(block, len, MADV_POPULATE_WRITE);
    const uint8_t *base = gguf_file_data(m->file, &flen);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(err, errlen, DUET_EIO, "cannot reopen to read weights: %s", strerror(errno));
    const bool tied = m->out.data && m->out.data == m->embd.data;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const size_t at = (size_t)((const uint8_t *)mats[i]->data - base);
        if (read_at(fd, block + off, mat_bytes(mats[i]), at)) {
            close(fd);
            return err_set(err, errlen, DUET_EIO, "reading weights at offset %zu: %s", at,
                           errno ? strerror(errno) : "file shorter than its tensors");
        }
        mats[i]->data = block + off;
        off += (mat_bytes(mats[i]) + 63) & ~(size_t)63;
    }
    close(fd);
    if (tied) m->out.data = m->embd.data;
    return DUET_OK;
}

/* Copies (unless flags say map) and locks the held weights. */
static int place_part(duet_model *m, const char *path, int flags, char *err, size_t errlen) {
    model_mat **mats = malloc(sizeof *mats * (2 + 7 * (size_t)m->cfg.n_layers));
    if (!mats) return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    const int n = held_mats(m, mats);
    int rc = flags & DUET_LOAD_MMAP ? DUET_OK : copy_part(m, path, mats, n, err, errlen);
    if (rc == DUET_OK && !getenv("DUET_NO_MLOCK")) lock_part(m, mats, n);
    free(mats);
    return rc;
}

duet_model *duet_model_load(const char *path, const duet_part *part, int flags, char *err, size_t errlen) {
    duet_model *m = calloc(1, sizeof *m);
    if (!m) {
        err_set(err, errlen, DUET_ENOMEM, "out of memory");
        return NULL;
    }
    if (load(m, path, part, err, errlen) != DUET_OK) {
        if (m->file) err_prefix(err, errlen, "%s", path); /* gguf's own messages already name the file */
        gguf_close(m->file);
        free(m->owned);
        free(m->layers);
        free(m);
        return NULL;
    }
    if (place_part(m, path, flags, err, errlen) != DUET_OK) {
        duet_model_free(m);
        return NULL;
    }
    return m;
}

void duet_model_free(duet_model *m) {
    if (!m) return;
    tokenizer_free(m->tok);
    pthread_mutex_destroy(&m->fp_lock);
    gguf_close(m->file);
    free(m->owned);
    if (m->weights) munmap(m->weights, m->weights_len);
    free(m->layers);
    free(m);
}

const duet_config *duet_model_config(const duet_model *m) { return &m->cfg; }
const duet_part *duet_model_part(const duet_model *m) { return &m->part; }
size_t duet_model_weight_bytes(const duet_model *m) { return m->weight_bytes; }
bool duet_model_locked(const duet_model *m) { return m->locked; }

const duet_tokenizer *duet_model_tokenizer(const duet_model *m, char *err, size_t errlen) {
    if (!m->tok) err_set(err, errlen, DUET_EFORMAT, "no usable vocabulary: %s", m->tok_err);
    return m->tok;
}

uint64_t duet_model_fingerprint(duet_model *m) {
    pthread_mutex_lock(&m->fp_lock);
    if (!m->fp_done) {
        hash64 h;
        hash64_init(&h, 0x64756574 /* "duet" */);
        for (int i = 0; i < gguf_n_tensors(m->file); i++) {
            const gguf_tensor *t = gguf_tensor_at(m->file, i);
            int32_t head[2] = {t->type, t->n_dims};
            hash64_update(&h, t->name, strlen(t->name) + 1);
            hash64_update(&h, head, sizeof head);
            hash64_update(&h, t->ne, sizeof t->ne);
            hash64_update(&h, t->data, t->nbytes);
        }
        m->fp = hash64_final(&h);
        m->fp_done = 1;
    }
    uint64_t fp = m->fp;
    pthread_mutex_unlock(&m->fp_lock);
    return fp;
}
