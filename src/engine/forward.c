/* The Llama / Qwen2 / Qwen3 forward pass over a batch of positions and a range of layers:
 *
 *   for each layer l in [a,b):
 *       x  = rmsnorm(h) * attn_norm
 *       q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv   (k, v written straight into the KV cache;
 *                                                         biases: Qwen2)
 *       q, k = rmsnorm of each head * q_norm, k_norm      (Qwen3)
 *       rotate q and k by their positions (RoPE: adjacent pairs for Llama, halves for Qwen)
 *       h += softmax(q K^T / sqrt(head_dim), causal) V  Wo^T
 *       x  = rmsnorm(h) * ffn_norm
 *       h += (silu(x Wgate^T) * (x Wup^T)) Wdown^T
 *
 * Every output of every matrix product accumulates in a fixed order whatever the batch (quant.h), and each
 * position's attention is computed on its own, so a batch gives the same bits as one position at a time and
 * [0,k) then [k,L) the same bits as [0,L).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "engine/kv.h"
#include "engine/model.h"
#include "engine/pool.h"
#include "engine/quant.h"

struct duet_ctx {
    const duet_model *m;
    duet_pool *pool;
    int isa;
    int max_batch;  /* B */
    float *x;       /* [B][dim]    normed input of a block */
    float *q;       /* [B][q_dim]  queries */
    float *att;     /* [B][q_dim]  attention output, before Wo */
    float *gate;    /* [B][ffn]    */
    float *up;      /* [B][ffn]    */
    void *xq;       /* [2][B][xq_row] activations converted to Q8_0 and to Q8_K */
    size_t xq_row;  /* bytes per row of xq */
    float *rope;    /* [B][head_dim/2][2] cos, sin of each position's rotations */
    float *kbuf;    /* [B][kv_dim] keys of a chunk holding several sessions, before they go to each cache */
    float *vbuf;    /* [B][kv_dim] values, the same */
    duet_kv **row_kv; /* [B] the cache of each row of the chunk being run */
    int *row_pos;     /* [B] its position */
    duet_seg *cs;     /* [B] the chunk's segments: one per session with rows in it */
    int n_cs;
    float theta_scale; /* base^(-2/head_dim): ratio of successive rotation frequencies */
    float *scores;  /* [n_threads][group][score_cap] attention weights of one position's query group */
    void *scratch;  /* the block x .. rope live in */
    int score_cap;
};

/* ---- helpers ------------------------------------------------------------------------------------------ */

/* rmsnorm as llama.cpp computes it: the mean of squares summed in double, then (x * scale) * w. */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)(x[i] * x[i]);
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

/* h[t] += add[t] (when add), then x[t] = rmsnorm(h[t]) * w (when w), for rows t < n of dim, split in contiguous
 * row ranges between the threads: done by one thread, a 128-token prefill's norms and residual adds kept the other
 * waiting (TinyLlama F16 at 2 threads, perf: samples in the pool's idle loops 1.4% -> 0.6%). Each row is computed
 * alone, so the split does not change a bit. */
typedef struct norm_job {
    float *h;
    const float *add, *w;
    float *x;
    int n, dim;
    float eps;
} norm_job;

static void norm_work(void *arg, int ith, int nth) {
    const norm_job *j = arg;
    for (int t = j->n * ith / nth; t < j->n * (ith + 1) / nth; t++) {
        float *h = j->h + (size_t)t * j->dim;
        if (j->add)
            for (int i = 0; i < j->dim; i++) h[i] += j->add[(size_t)t * j->dim + i];
        if (j->w) rmsnorm(j->x + (size_t)t * j->dim, h, j->w, j->dim, j->eps);
    }
}

static void add_norm(duet_ctx *c, float *h, const float *add, const float *w, float *x, int n, int dim) {
    norm_job j = {.h = h, .add = add, .w = w, .x = x, .n = n, .dim = dim, .eps = c->m->cfg.rms_eps};
    pool_run(c->pool, (size_t)n * dim < 65536 ? 1 : duet_pool_threads(c->pool), norm_work, &j);
}

/* ---- matrix products ---------------------------------------------------------------------------------- */

/* Up to three products that share one input (q, k, v; gate, up) run as one job, so threads are woken once
 * and the small matrices (k, v under grouped-query attention) do not leave a thread idle. */
#define MM_MAX 3

typedef struct mm_task {
    const model_mat *w;
    const void *x;    /* [nx] rows in w's act_type, x_stride bytes apart */
    size_t x_stride;
    float *y;         /* y[j*ldy + i] for weight row i and input row j */
    size_t ldy;
} mm_task;

typedef struct mm_job {
    int isa, nx, n_tasks;
    int min_rows;                 /* smallest claim, a multiple of 16 */
    mm_task task[MM_MAX];
    int first[MM_MAX + 1];        /* rows of task t are first[t] .. first[t+1]-1 of the tasks laid end to end */
    atomic_int next;              /* first unclaimed row */
} mm_job;

/* Threads claim rows guided-style: a quarter of what is left per thread (with 2 threads 1/4, 3/16, ..) down to
 * min_rows, never across two tasks; one thread alone takes each task whole. Big first claims keep each thread's weight reads long and sequential; the
 * small last ones leave a thread that finishes early less to wait for than fixed items of 1/16 of a product did
 * (TinyLlama F16 pp128 at 2 threads, perf: samples in the pool's idle loops 3.6% -> 1.5%). Where a
 * product is split does not change a bit (quant.h); claims are multiples of 16 rows from the task's start, so a
 * repacked matrix's groups of 8 are never cut. */
static void mm_work(void *arg, int ith, int nth) {
    mm_job *j = arg;
    const int total = j->first[j->n_tasks];
    int r = atomic_load_explicit(&j->next, memory_order_relaxed);
    for (;;) {
        if (r >= total) break;
        int t = 0;
        while (r >= j->first[t + 1]) t++;
        int want = nth == 1 ? total - r : (total - r) / (4 * nth);
        want = want < j->min_rows ? j->min_rows : (want + 15) & ~15;
        const int n = j->first[t + 1] - r < want ? j->first[t + 1] - r : want;
        if (!atomic_compare_exchange_weak_explicit(&j->next, &r, r + n, memory_order_relaxed, memory_order_relaxed))
            continue; /* r now holds the row another thread left */
        const mm_task *k = &j->task[t];
        const int r0 = r - j->first[t];
        quant_gemm(j->isa, k->w->type, k->w->cols, (const char *)k->w->data + (size_t)r0 * k->w->row_bytes,
                   k->w->row_bytes, n, k->x, k->x_stride, j->nx, k->y + r0, k->ldy);
        r = atomic_load_explicit(&j->next, memory_order_relaxed);
    }
}

/* For each i < n_w: y[i][n][ldy[i]] (first w[i]->rows columns) = x[n][cols] w[i]^T. */
static void matmul_n(duet_ctx *c, int n_w, const model_mat *const *w, const float *x, int n, float *const *y,
                     const size_t *ldy) {
    mm_job j = {.isa = c->isa, .nx = n, .n_tasks = n_w};
    int cols = w[0]->cols, converted[MM_MAX] = {0};
    double work = 0;
    j.first[0] = 0;
    for (int i = 0; i < n_w; i++) {
        const quant_traits *tr = quant_traits_get(quant_base_type(w[i]->type));
        mm_task *k = &j.task[i];
        k->w = w[i];
        k->y = y[i];
        k->ldy = ldy[i];
        if (tr->act_type == DUET_TYPE_F32) {
            k->x = x;
            k->x_stride = (size_t)cols * sizeof(float);
        } else { /* convert once per activation type (Q8_0 or Q8_K): mixed-type layers exist (Q4_K_M) */
            int slot = tr->act_type == DUET_TYPE_Q8_0 ? 0 : 1;
            char *xq = (char *)c->xq + (size_t)slot * c->xq_row * c->max_batch;
            if (!converted[slot]) {
                for (int t = 0; t < n; t++)
                    quant_quantize_row(tr->act_type, x + (size_t)t * cols, xq + (size_t)t * c->xq_row, cols);
                converted[slot] = 1;
            }
            k->x = xq;
            k->x_stride = c->xq_row;
        }
        work += (double)w[i]->rows * cols * n;
        j.first[i + 1] = j.first[i] + w[i]->rows;
    }
    /* Small products are not worth waking a thread for (stories260K's matrices are 64 wide). A decode claim is
     * one sequential read of its rows: at least 64 of them. */
    j.min_rows = n > 1 ? 16 : 64;
    atomic_init(&j.next, 0);
    pool_run(c->pool, work < 65536 ? 1 : duet_pool_threads(c->pool), mm_work, &j);
}

static void matmul(duet_ctx *c, const model_mat *w, const float *x, int n, float *y, size_t ldy) {
    matmul_n(c, 1, &w, x, n, &y, &ldy);
}

/* gate[i] = silu(gate[i]) * up[i] over [n][ffn], split in contiguous ranges between the threads: in a 128-token
 * prefill it is 720K expf per layer, some 4% of the work left to one thread otherwise. Each element is computed
 * alone, so the split does not change a bit. */
typedef struct swiglu_job {
    int isa;
    float *gate;
    const float *up;
    size_t n;
} swiglu_job;

static void swiglu_work(void *arg, int ith, int nth) {
    const swiglu_job *j = arg;
    const size_t a = j->n * (size_t)ith / (size_t)nth, b = j->n * (size_t)(ith + 1) / (size_t)nth;
    quant_swiglu_f32(j->isa, j->gate + a, j->up + a, b - a);
}

/* ---- attention ---------------------------------------------------------------------------------------- */

typedef struct att_job {
    duet_ctx *c;
    int layer, n;    /* row t is c->row_pos[t] of the cache c->row_kv[t] */
    atomic_int next; /* next (position, kv head) pair */
} att_job;

/* Causal attention of one position t over keys [0, pos0+t], for the `group` query heads that share one
 * kv head at a time. Scores q.k are a quant_gemm of the cached keys (rows) by the group's queries
 * (columns), so they get the SIMD kernels and the same batch invariance: the value of a score does not
 * depend on how many positions or heads were computed with it. */
static void att_work(void *arg, int ith, int nth) {
    att_job *j = arg;
    duet_ctx *c = j->c;
    const duet_config *cfg = &c->m->cfg;
    const int hd = cfg->head_dim, kv_dim = cfg->n_kv_heads * hd, group = cfg->n_heads / cfg->n_kv_heads;
    const int q_dim = c->m->q_dim;
    float *s = c->scores + (size_t)ith * group * c->score_cap; /* [group][score_cap] */
    const float scale = 1.0f / sqrtf((float)hd);
    const int total = j->n * cfg->n_kv_heads;
    for (;;) {
        int item = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (item >= total) break;
        const int t = item / cfg->n_kv_heads, kvh = item % cfg->n_kv_heads;
        const int n_keys = c->row_pos[t] + 1;
        const float *K = c->row_kv[t]->k[j->layer], *V = c->row_kv[t]->v[j->layer];
        const size_t off = (size_t)kvh * hd;
        const float *q = c->q + (size_t)t * q_dim + (size_t)kvh * group * hd; /* [group][hd] */
        quant_gemm(c->isa, DUET_TYPE_F32, hd, K + off, sizeof(float) * kv_dim, n_keys, q, sizeof(float) * hd,
                   group, s, c->score_cap);
        for (int g = 0; g < group; g++) {
            float *sg = s + (size_t)g * c->score_cap;
            quant_softmax_f32(c->isa, sg, n_keys, scale);
            quant_wsum_f32(c->isa, hd, n_keys, sg, V + off, sizeof(float) * kv_dim,
                           c->att + (size_t)t * q_dim + (size_t)(kvh * group + g) * hd);
        }
    }
}

static int attention(duet_ctx *c, int layer, int n) {
    int need = 0, group = c->m->cfg.n_heads / c->m->cfg.n_kv_heads;
    for (int t = 0; t < n; t++)
        if (c->row_pos[t] + 1 > need) need = c->row_pos[t] + 1;
    if (need > c->score_cap) { /* grows at most a few times per context: never in steady decode */
        int cap = need < 256 ? 256 : need;
        float *s = realloc(c->scores, sizeof(float) * (size_t)cap * group * duet_pool_threads(c->pool));
        if (!s) return DUET_ENOMEM;
        c->scores = s;
        c->score_cap = cap;
    }
    att_job j = {.c = c, .layer = layer, .n = n};
    atomic_init(&j.next, 0);
    pool_run(c->pool, (double)n * need * c->m->cfg.dim < 65536 ? 1 : duet_pool_threads(c->pool), att_work, &j);
    return DUET_OK;
}

/* ---- rotary position embedding ------------------------------------------------------------------------ */

/* cos/sin of each position's rotation angles, computed as ggml does: theta starts at the position and is
 * multiplied by base^(-2/d) once per pair, then divided by Llama 3's per-pair factor when the file has one,
 * then scaled by the linear scaling factor (1 when none: the same bits). */
static void rope_table(duet_ctx *c, int n) {
    int half = c->m->cfg.head_dim / 2;
    const float *factor = c->m->rope_freqs;
    const float scale = c->m->rope_freq_scale;
    for (int t = 0; t < n; t++) {
        float *r = c->rope + (size_t)t * half * 2;
        float theta = (float)c->row_pos[t];
        for (int i = 0; i < half; i++) {
            float angle = (factor ? theta / factor[i] : theta) * scale;
            r[2 * i] = cosf(angle);
            r[2 * i + 1] = sinf(angle);
            theta *= c->theta_scale;
        }
    }
}

/* Pair i of a head is (2i, 2i+1) for Llama (ggml's NORM mode) and (i, i + half) for Qwen (NEOX). */
static void rope_apply(const duet_ctx *c, float *x, size_t stride, int n, int n_heads) {
    int hd = c->m->cfg.head_dim, half = hd / 2;
    for (int t = 0; t < n; t++) {
        const float *r = c->rope + (size_t)t * half * 2;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)t * stride + (size_t)h * hd;
            if (c->m->rope_neox) {
                for (int i = 0; i < half; i++) {
                    float x0 = v[i], x1 = v[i + half];
                    v[i] = x0 * r[2 * i] - x1 * r[2 * i + 1];
                    v[i + half] = x0 * r[2 * i + 1] + x1 * r[2 * i];
                }
                continue;
            }
            for (int i = 0; i < half; i++) {
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * r[2 * i] - x1 * r[2 * i + 1];
                v[2 * i + 1] = x0 * r[2 * i + 1] + x1 * r[2 * i];
            }
        }
    }
}

/* ---- public ------------------------------------------------------------------------------------------- */

duet_ctx *duet_ctx_init(const duet_model *m, int max_batch, duet_pool *pool, char *err, size_t errlen) {
    const duet_config *cfg = &m->cfg;
    if (max_batch <= 0 || max_batch > 65536) {
        err_set(err, errlen, DUET_EINVAL, "ctx: batch of %d positions is out of range", max_batch);
        return NULL;
    }
    duet_ctx *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->m = m;
    c->pool = pool;
    c->isa = quant_isa_best();
    c->max_batch = max_batch;
    size_t B = (size_t)max_batch, kv_dim = (size_t)cfg->n_kv_heads * cfg->head_dim;
    int widest = cfg->dim > cfg->ffn_dim ? cfg->dim : cfg->ffn_dim;
    if (m->q_dim > widest) widest = m->q_dim; /* the attention output is Wo's input */
    c->xq_row = (size_t)widest * 2; /* Q8_0 and Q8_K take under 1.15 bytes per value */
    /* One block for all scratch, each buffer starting on a different cache line within a page: buffers of
     * their own would all start at the same page offset, and a decode step's rows alias in the cache. */
    size_t sizes[] = {sizeof(float) * B * cfg->dim, sizeof(float) * B * m->q_dim, sizeof(float) * B * m->q_dim,
                      sizeof(float) * B * cfg->ffn_dim, sizeof(float) * B * cfg->ffn_dim, c->xq_row * B * 2,
                      sizeof(float) * B * cfg->head_dim, sizeof(float) * B * kv_dim, sizeof(float) * B * kv_dim};
    void **bufs[] = {(void **)&c->x, (void **)&c->q, (void **)&c->att, (void **)&c->gate, (void **)&c->up, &c->xq,
                     (void **)&c->rope, (void **)&c->kbuf, (void **)&c->vbuf};
    size_t total = 0, offs[9];
    for (int i = 0; i < 9; i++) {
        offs[i] = total + (size_t)i * 4 * 64;        /* stagger by 4 cache lines */
        total = (offs[i] + sizes[i] + 4095) & ~(size_t)4095;
    }
    c->scratch = aligned_alloc(4096, total);
    c->row_kv = malloc(sizeof(duet_kv *) * B);
    c->row_pos = malloc(sizeof(int) * B);
    c->cs = malloc(sizeof(duet_seg) * B);
    if (!c->scratch || !c->row_kv || !c->row_pos || !c->cs) goto nomem;
    for (int i = 0; i < 9; i++) *bufs[i] = (char *)c->scratch + offs[i];
    c->theta_scale = powf(cfg->rope_base, -2.0f / cfg->head_dim);
    return c;
nomem:
    duet_ctx_free(c);
    err_set(err, errlen, DUET_ENOMEM, "ctx: out of memory for a batch of %d", max_batch);
    return NULL;
}

void duet_ctx_free(duet_ctx *c) {
    if (!c) return;
    free(c->scratch);
    free(c->scores);
    free(c->row_kv);
    free(c->row_pos);
    free(c->cs);
    free(c);
}

int duet_embed(duet_ctx *c, const int *ids, int n, float *h, char *err, size_t errlen) {
    const duet_model *m = c->m;
    if (!m->part.embed) return err_set(err, errlen, DUET_EINVAL, "embed: this process does not hold the embedding");
    for (int t = 0; t < n; t++) {
        if (ids[t] < 0 || ids[t] >= m->cfg.vocab_size)
            return err_set(err, errlen, DUET_EINVAL, "embed: token id %d is outside the vocabulary (0..%d)", ids[t],
                           m->cfg.vocab_size - 1);
        quant_dequantize_row(m->embd.type, (const char *)m->embd.data + (size_t)ids[t] * m->embd.row_bytes,
                             h + (size_t)t * m->cfg.dim, m->cfg.dim);
    }
    return DUET_OK;
}

/* One layer over the n <= max_batch rows of the chunk c->cs describes (row t: position c->row_pos[t] of the
 * cache c->row_kv[t]). One session's keys and values are written straight into its cache; several sessions'
 * go through kbuf/vbuf and are copied to each cache (the same bits: only where they are stored differs). */
static int layer_forward(duet_ctx *c, int l, float *h, int n) {
    const duet_config *cfg = &c->m->cfg;
    const model_layer *L = &c->m->layers[l];
    int dim = cfg->dim, ffn = cfg->ffn_dim, kv_dim = cfg->n_kv_heads * cfg->head_dim, q_dim = c->m->q_dim;
    int hd = cfg->head_dim;
    const int one = c->n_cs == 1;
    float *kc = one ? c->cs[0].kv->k[l] + (size_t)c->cs[0].pos0 * kv_dim : c->kbuf; /* [n][kv_dim] */
    float *vc = one ? c->cs[0].kv->v[l] + (size_t)c->cs[0].pos0 * kv_dim : c->vbuf;

    add_norm(c, h, NULL, L->attn_norm, c->x, n, dim);
    const model_mat *qkv[] = {&L->wq, &L->wk, &L->wv};
    float *qkv_out[] = {c->q, kc, vc};
    size_t qkv_ld[] = {(size_t)q_dim, (size_t)kv_dim, (size_t)kv_dim};
    matmul_n(c, 3, qkv, c->x, n, qkv_out, qkv_ld);
    const float *bias[3] = {L->bq, L->bk, L->bv};
    for (int i = 0; i < 3; i++) {
        if (!bias[i]) continue;
        const int w = (int)qkv_ld[i];
        for (int t = 0; t < n; t++)
            for (int j = 0; j < w; j++) qkv_out[i][(size_t)t * w + j] += bias[i][j];
    }
    if (L->q_norm) /* in place: rmsnorm reads all of a head before writing it */
        for (int t = 0; t < n; t++) {
            for (int qh_i = 0; qh_i < cfg->n_heads; qh_i++) {
                float *qh = c->q + (size_t)t * q_dim + (size_t)qh_i * hd;
                rmsnorm(qh, qh, L->q_norm, hd, cfg->rms_eps);
            }
            for (int kh_i = 0; kh_i < cfg->n_kv_heads; kh_i++) {
                float *kh = kc + (size_t)t * kv_dim + (size_t)kh_i * hd;
                rmsnorm(kh, kh, L->k_norm, hd, cfg->rms_eps);
            }
        }
    rope_apply(c, c->q, q_dim, n, cfg->n_heads);
    rope_apply(c, kc, kv_dim, n, cfg->n_kv_heads);
    for (int i = 0, t = 0; i < c->n_cs; t += c->cs[i++].n) {
        duet_kv *kv = c->cs[i].kv;
        if (!one) {
            size_t at = (size_t)c->cs[i].pos0 * kv_dim, rows = sizeof(float) * (size_t)c->cs[i].n * kv_dim;
            memcpy(kv->k[l] + at, kc + (size_t)t * kv_dim, rows);
            memcpy(kv->v[l] + at, vc + (size_t)t * kv_dim, rows);
        }
        kv->len[l] = c->cs[i].pos0 + c->cs[i].n;
    }
    int rc = attention(c, l, n);
    if (rc) return rc;
    matmul(c, &L->wo, c->att, n, c->x, dim);
    add_norm(c, h, c->x, L->ffn_norm, c->x, n, dim); /* row by row: a row of x is read before it is rewritten */
    const model_mat *gu[] = {&L->gate, &L->up};
    float *gu_out[] = {c->gate, c->up};
    size_t gu_ld[] = {(size_t)ffn, (size_t)ffn};
    matmul_n(c, 2, gu, c->x, n, gu_out, gu_ld);
    swiglu_job sj = {.isa = c->isa, .gate = c->gate, .up = c->up, .n = (size_t)n * ffn};
    pool_run(c->pool, sj.n < 65536 ? 1 : duet_pool_threads(c->pool), swiglu_work, &sj);
    matmul(c, &L->down, c->gate, n, c->x, dim);
    add_norm(c, h, c->x, NULL, NULL, n, dim);
    return DUET_OK;
}

int duet_forward(duet_ctx *c, duet_kv *kv, int a, int b, float *h, int n, int pos0, char *err, size_t errlen) {
    duet_seg seg = {.kv = kv, .pos0 = pos0, .n = n};
    return duet_forward_multi(c, a, b, h, &seg, 1, err, errlen);
}

int duet_forward_multi(duet_ctx *c, int a, int b, float *h, const duet_seg *seg, int n_seg, char *err,
                       size_t errlen) {
    const duet_model *m = c->m;
    long total = 0;
    if (a < 0 || b > m->cfg.n_layers || a > b || n_seg < 0)
        return err_set(err, errlen, DUET_EINVAL, "forward: layers %d:%d or %d segments out of range", a, b, n_seg);
    for (int l = a; l < b; l++)
        if (!duet_part_has_layer(&m->part, l))
            return err_set(err, errlen, DUET_EINVAL, "forward: layer %d is not held by this process", l);
    for (int i = 0; i < n_seg; i++) {
        const duet_kv *kv = seg[i].kv;
        int pos0 = seg[i].pos0, n = seg[i].n;
        if (n < 0 || !kv) return err_set(err, errlen, DUET_EINVAL, "forward: batch %d (segment %d) out of range", n, i);
        for (int l = a; l < b; l++) {
            if (kv->len[l] < 0) return err_set(err, errlen, DUET_EINVAL, "forward: the KV cache has no layer %d", l);
            if (kv->len[l] != pos0)
                return err_set(err, errlen, DUET_EINVAL, "forward: layer %d holds %d positions, not %d", l, kv->len[l],
                               pos0);
        }
        if ((long)pos0 + n > kv->n_ctx)
            return err_set(err, errlen, DUET_FULL, "forward: positions up to %d do not fit the %d-position context",
                           pos0 + n, kv->n_ctx);
        for (int j = 0; j < i; j++) /* two segments of one cache would write the same positions */
            if (seg[j].kv == kv && n && seg[j].n)
                return err_set(err, errlen, DUET_EINVAL, "forward: segments %d and %d share one KV cache", j, i);
        total += n;
    }
    /* chunks of max_batch rows; a segment may straddle two (its first rows then run every layer first) */
    int si = 0, done = 0, rc = DUET_OK; /* segment si's first `done` rows are in earlier chunks */
    pool_hold(c->pool);
    for (long t0 = 0; t0 < total && !rc; t0 += c->max_batch) {
        int nb = total - t0 < c->max_batch ? (int)(total - t0) : c->max_batch;
        c->n_cs = 0;
        for (int t = 0; t < nb;) {
            while (seg[si].n == done) si++, done = 0;
            int k = seg[si].n - done < nb - t ? seg[si].n - done : nb - t;
            c->cs[c->n_cs++] = (duet_seg){.kv = seg[si].kv, .pos0 = seg[si].pos0 + done, .n = k};
            for (int r = 0; r < k; r++) {
                c->row_kv[t + r] = seg[si].kv;
                c->row_pos[t + r] = seg[si].pos0 + done + r;
            }
            t += k;
            done += k;
        }
        rope_table(c, nb);
        for (int l = a; l < b && !rc; l++) rc = layer_forward(c, l, h + (size_t)t0 * m->cfg.dim, nb);
    }
    pool_release(c->pool);
    return rc ? err_set(err, errlen, rc, "forward: out of memory") : DUET_OK;
}

int duet_head(duet_ctx *c, const float *h, int n, float *logits, char *err, size_t errlen) {
    const duet_model *m = c->m;
    if (!m->part.head) return err_set(err, errlen, DUET_EINVAL, "head: this process does not hold the output head");
    int dim = m->cfg.dim;
    pool_hold(c->pool);
    for (int t0 = 0; t0 < n; t0 += c->max_batch) {
        int nb = n - t0 < c->max_batch ? n - t0 : c->max_batch;
        for (int t = 0; t < nb; t++)
            rmsnorm(c->x + (size_t)t * dim, h + (size_t)(t0 + t) * dim, m->out_norm, dim, m->cfg.rms_eps);
        matmul(c, &m->out, c->x, nb, logits + (size_t)t0 * m->cfg.vocab_size, m->cfg.vocab_size);
    }
    pool_release(c->pool);
    return DUET_OK;
}
