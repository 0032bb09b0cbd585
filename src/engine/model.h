/* model.h: the engine side of duet_model: where the weights of each held layer are in the mapping. */
#ifndef DUET_ENGINE_MODEL_H
#define DUET_ENGINE_MODEL_H

#include <pthread.h>
#include <stddef.h>

#include "duet.h"
#include "engine/gguf.h"

/* A weight matrix as the kernels see it: rows of `cols` elements (ggml ne = [cols, rows]). */
typedef struct model_mat {
    int type;          /* enum duet_type */
    int rows, cols;
    size_t row_bytes;
    const void *data;  /* inside the mapping; NULL if not held */
} model_mat;

typedef struct model_layer {
    const float *attn_norm, *ffn_norm; /* [dim] */
    model_mat wq, wk, wv, wo;          /* [q_dim][dim], [kv_dim][dim], [kv_dim][dim], [dim][q_dim] */
    const float *bq, *bk, *bv;         /* [q_dim], [kv_dim], [kv_dim] biases (qwen2), or NULL */
    const float *q_norm, *k_norm;      /* [head_dim] per-head RMSNorm weights (qwen3), or NULL */
    model_mat gate, up, down;          /* [ffn][dim], [ffn][dim], [dim][ffn] */
} model_layer;

/* The architectures duet runs, as general.architecture names them. */
enum model_arch { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3 };

struct duet_model {
    gguf *file;
    duet_config cfg;
    int arch;                 /* enum model_arch */
    int q_dim;                /* n_heads * head_dim: the query width, which may differ from dim (Qwen3) */
    bool rope_neox;           /* rotate pairs (i, i + head_dim/2) (Qwen), not adjacent pairs (Llama) */
    float rope_freq_scale;    /* linear rope scaling: positions times this (1: none) */
    duet_part part;
    model_layer *layers;      /* [n_layers]; zeroed where not held */
    model_mat embd;           /* [vocab][dim] */
    model_mat out;            /* [vocab][dim]; the embedding when tied */
    const float *out_norm;    /* [dim] */
    const float *rope_freqs;  /* [head_dim/2] divisors of each rotation frequency (Llama 3), or NULL */
    void *weights;            /* the held mats read into memory of our own (weights_len bytes), or NULL */
    size_t weights_len;
    float *owned;             /* norms and factors converted to f32, one block */
    duet_tokenizer *tok;      /* NULL if the file has no usable vocabulary */
    char tok_err[256];
    size_t weight_bytes;
    bool locked;              /* every held tensor is mlock()ed */
    pthread_mutex_t fp_lock;
    int fp_done;
    uint64_t fp;
};

#endif
