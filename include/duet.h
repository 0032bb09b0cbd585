/* duet.h: the public C API of duet's inference engine.
 *
 * A duet_model is one GGUF file, memory-mapped, of which a process uses a *part*: some layer ranges, and
 * maybe the token embedding and the head (final norm + output matrix). A device in a U-shaped split holds
 * layers [0,a) and [b,L) plus embedding and head; a cloud holds [a,b). Only the tensors of the part are
 * read (and, by default, copied into the process's memory), so the rest of the file is never paged in.
 *
 * The forward pass is three steps over a batch of n positions of one session:
 *     duet_embed(tokens)                 -> h[n][dim]          (h_0)
 *     duet_forward(a, b, h, kv)          -> h[n][dim] in place (h_a -> h_b), appending to the KV cache
 *     duet_head(h)                       -> logits[n][vocab]
 * Running [0,k) then [k,L) gives bit-identical results to [0,L).
 *
 * Ownership: every x_init/x_load returns an object the caller frees with the matching x_free (free of NULL
 * is a no-op). A duet_model must outlive the duet_kv, duet_ctx and duet_tokenizer made from it.
 * Threads: a duet_model and a duet_tokenizer are read-only once loaded and may be shared by threads.
 * A duet_kv, duet_ctx and duet_sampler belong to one thread at a time. A duet_pool may be shared: calls
 * that use it from several threads take turns.
 *
 * Status codes: 0 is success, > 0 a recoverable condition named below, < 0 an error; functions that fail
 * write a one-line message into the caller's err[errlen] (which may be NULL). No function prints or exits.
 */
#ifndef DUET_H
#define DUET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum duet_status {
    DUET_OK = 0,
    DUET_FULL = 1,           /* recoverable: KV cache or buffer full */
    DUET_ERR = -1,           /* generic failure */
    DUET_ENOMEM = -2,        /* allocation failed */
    DUET_EIO = -3,           /* open/read/write/mmap failed */
    DUET_EFORMAT = -4,       /* malformed input (file, frame, text) */
    DUET_EUNSUPPORTED = -5,  /* well-formed but not supported (architecture, tensor type, ...) */
    DUET_EINVAL = -6,        /* bad argument from the caller */
};

/* Tensor types, numbered as in GGUF so files and code agree. */
enum duet_type {
    DUET_TYPE_F32 = 0,
    DUET_TYPE_F16 = 1,
    DUET_TYPE_Q4_0 = 2,
    DUET_TYPE_Q8_0 = 8,
    DUET_TYPE_Q4_K = 12,
    DUET_TYPE_Q6_K = 14,
    DUET_TYPE_Q8_K = 15, /* activations only (the K-quant dot products' other operand) */
};

/* ---- model ---------------------------------------------------------------------------------------- */

/* Llama-architecture hyperparameters, read from the GGUF metadata (llama.*). */
typedef struct duet_config {
    int n_layers;      /* L */
    int dim;           /* residual stream width */
    int n_heads;
    int n_kv_heads;    /* < n_heads: grouped-query attention */
    int head_dim;      /* dim / n_heads */
    int ffn_dim;       /* SwiGLU hidden width */
    int vocab_size;
    int ctx_len;       /* trained context length */
    float rope_base;   /* rope frequency base (theta) */
    float rms_eps;
    bool tied_output;  /* head uses token_embd.weight */
    int weight_type;   /* enum duet_type of the attention/ffn matrices of the first layer held */
} duet_config;

#define DUET_MAX_SPANS 4

/* Which part of a model a process holds. A zeroed duet_part (n_spans == 0, no embed, no head) holds
 * nothing but metadata and the tokenizer. duet_part_all() holds everything. */
typedef struct duet_part {
    int n_spans;
    struct { int a, b; } span[DUET_MAX_SPANS]; /* layer ranges [a,b), disjoint */
    bool embed;                                /* token_embd.weight */
    bool head;                                 /* output_norm.weight + output.weight (or tied embedding) */
} duet_part;

duet_part duet_part_all(void);
/* Parses "a:b[,c:d...]" plus the words "embed" and "head", e.g. "0:3,embed". 0 ok, < 0 error. */
int duet_part_parse(const char *spec, duet_part *out, char *err, size_t errlen);
bool duet_part_has_layer(const duet_part *p, int layer);

typedef struct duet_model duet_model;

/* Flags of duet_model_load. By default the held weights are copied out of the mapping into memory of the
 * process's own (llama.cpp's --no-mmap): file pages can be reclaimed or sampled by the kernel's memory
 * monitors between tokens, and on the machines we measure that made decode up to 4x slower (README, Speed).
 * DUET_LOAD_MMAP reads them in place instead: faster start, no second copy while the page cache holds the file. */
enum { DUET_LOAD_MMAP = 1 << 0 };

/* Opens and maps path, checks the metadata and every tensor the part needs (presence, shape, type), and
 * loads the held weights as flags say (0: copy). part may be NULL for the whole model. Returns NULL with a
 * message in err on failure. The held weights are locked in memory when the system allows it (set
 * DUET_NO_MLOCK to skip; see duet_model_locked). */
duet_model *duet_model_load(const char *path, const duet_part *part, int flags, char *err, size_t errlen);
void duet_model_free(duet_model *m);
const duet_config *duet_model_config(const duet_model *m);
const duet_part *duet_model_part(const duet_model *m);
/* Bytes of weights that one token's forward over the held part reads (for bandwidth figures). */
size_t duet_model_weight_bytes(const duet_model *m);
/* Whether every held tensor is locked in memory (mlock), so it is never paged out or refaulted. */
bool duet_model_locked(const duet_model *m);
/* 64-bit fingerprint of the whole file's tensor names, types, shapes and data (computed once, on first
 * call; reads the entire file). Two peers agree on a model iff their fingerprints agree. */
uint64_t duet_model_fingerprint(duet_model *m);

/* ---- tokenizer ------------------------------------------------------------------------------------ */

typedef struct duet_tokenizer duet_tokenizer;

/* The tokenizer described by the model's GGUF metadata (tokenizer.ggml.*); owned by the model. NULL
 * (with err) when the file has no usable vocabulary. */
const duet_tokenizer *duet_model_tokenizer(const duet_model *m, char *err, size_t errlen);
/* A tokenizer of its own from a GGUF file's tokenizer.ggml.* metadata alone (a vocabulary-only file with no
 * tensors works, as llama.cpp's vocab files); the caller frees it with duet_tokenizer_free. NULL with err. */
duet_tokenizer *duet_tokenizer_load(const char *path, char *err, size_t errlen);
void duet_tokenizer_free(duet_tokenizer *t);
int duet_tokenizer_n_vocab(const duet_tokenizer *t);
int duet_tokenizer_bos(const duet_tokenizer *t);
int duet_tokenizer_eos(const duet_tokenizer *t);
/* Encodes text[len] into ids[cap]; add_bos prepends BOS. Returns the number of tokens (which may exceed
 * cap: then only cap were written and the caller retries with a larger buffer), or < 0 on error. */
int duet_tokenize(const duet_tokenizer *t, const char *text, size_t len, bool add_bos, int *ids, int cap);
/* The bytes token id stands for when it follows other text (byte-fallback tokens give their byte,
 * control tokens nothing). Writes at most cap bytes, no NUL; returns the byte count or < 0. */
int duet_token_piece(const duet_tokenizer *t, int id, char *buf, size_t cap);

/* Flags of duet_tokenize_ex and duet_token_piece_ex. */
enum {
    DUET_TOK_BOS = 1 << 0,     /* put BOS first (when the vocabulary's add_bos_token allows, as llama.cpp) */
    DUET_TOK_SPECIAL = 1 << 1, /* control tokens written in the text (<|im_start|>, <|eot_id|> ...) are matched
                                  as single tokens, and their pieces are their text (llama.cpp's
                                  parse_special / special); user-defined tokens are always matched */
};
int duet_tokenize_ex(const duet_tokenizer *t, const char *text, size_t len, int flags, int *ids, int cap);
int duet_token_piece_ex(const duet_tokenizer *t, int id, int flags, char *buf, size_t cap);
/* The id of the token whose text is exactly text[len] (e.g. "<|eot_id|>"), or -1. */
int duet_token_find(const duet_tokenizer *t, const char *text, size_t len);
/* tokenizer.chat_template (a Jinja template), or NULL when the file has none. */
const char *duet_tokenizer_chat_template(const duet_tokenizer *t);

/* ---- threads -------------------------------------------------------------------------------------- */

typedef struct duet_pool duet_pool;

/* n_threads <= 0 means the number of online CPUs. The calling thread is one of the workers. */
duet_pool *duet_pool_init(int n_threads, char *err, size_t errlen);
void duet_pool_free(duet_pool *p);
int duet_pool_threads(const duet_pool *p);

/* ---- KV cache ------------------------------------------------------------------------------------- */

typedef struct duet_kv duet_kv;

/* A KV cache for one session over the layers of `part` (which must be held by m), n_ctx positions. */
duet_kv *duet_kv_init(const duet_model *m, const duet_part *part, int n_ctx, char *err, size_t errlen);
void duet_kv_free(duet_kv *kv);
/* Positions stored for layer l (layers of one session may lag each other, e.g. early exits). */
int duet_kv_len(const duet_kv *kv, int layer);
int duet_kv_ctx(const duet_kv *kv);
/* Forgets every position >= n in every layer (speculative rollback). */
void duet_kv_truncate(duet_kv *kv, int n);
size_t duet_kv_bytes(const duet_kv *kv);

/* ---- forward pass --------------------------------------------------------------------------------- */

/* Scratch memory for batches of up to max_batch positions, allocated once. One per thread of work. */
typedef struct duet_ctx duet_ctx;

duet_ctx *duet_ctx_init(const duet_model *m, int max_batch, duet_pool *pool, char *err, size_t errlen);
void duet_ctx_free(duet_ctx *c);

/* h[n][dim] = token embeddings of ids[n]. Needs part.embed. */
int duet_embed(duet_ctx *c, const int *ids, int n, float *h, char *err, size_t errlen);

/* Runs layers [a,b) over h[n][dim] in place for positions pos0..pos0+n-1, appending their keys and values
 * to kv. Every layer in [a,b) must be held and have exactly pos0 positions stored. Returns DUET_FULL if
 * pos0 + n exceeds the cache. */
int duet_forward(duet_ctx *c, duet_kv *kv, int a, int b, float *h, int n, int pos0, char *err, size_t errlen);

/* Several sessions in one pass (a cloud serving many devices): h[n][dim] holds the rows of n_seg segments one
 * after another, segment i being seg[i].n rows of the session whose cache is seg[i].kv, at positions
 * seg[i].pos0.. . Runs layers [a,b) over all of them: every matrix product reads the weights once for all n
 * rows; attention stays per row over its own session's cache. Each segment is checked as duet_forward checks
 * its one (layers held, pos0 stored, room in the cache), and two segments may not name one cache (EINVAL);
 * nothing is run if one fails. The result is bit for bit the result of duet_forward on each segment alone.
 * Threads: the caches belong to the caller for the duration of the call, like c. */
typedef struct duet_seg {
    duet_kv *kv; /* the session's cache (caller's) */
    int pos0;    /* position of the segment's first row */
    int n;       /* rows (0 allowed) */
} duet_seg;
int duet_forward_multi(duet_ctx *c, int a, int b, float *h, const duet_seg *seg, int n_seg, char *err,
                       size_t errlen);

/* logits[n][vocab] = output(rmsnorm(h[n][dim])). Needs part.head. */
int duet_head(duet_ctx *c, const float *h, int n, float *logits, char *err, size_t errlen);

/* ---- sampling ------------------------------------------------------------------------------------- */

typedef struct duet_sampling {
    float temperature; /* <= 0: greedy (argmax, lowest id on ties) */
    int top_k;         /* <= 0: off */
    float top_p;       /* >= 1: off */
    uint64_t seed;
} duet_sampling;

typedef struct duet_sampler duet_sampler;

duet_sampler *duet_sampler_init(const duet_sampling *s, int vocab_size, char *err, size_t errlen);
void duet_sampler_free(duet_sampler *s);
/* Picks a token from logits[vocab] (which it may overwrite). */
int duet_sample(duet_sampler *s, float *logits);
/* Advances the generator as n calls of duet_sample would (one draw each with temperature > 0, none when
 * greedy), without logits: a device taking over a stream that a cloud sampled from the same seed (pd mode)
 * continues with the draw the cloud's next token would have used. */
void duet_sampler_skip(duet_sampler *s, uint64_t n);
int duet_argmax(const float *x, int n);
/* probs[vocab] = the distribution duet_sample draws from at logits[vocab] (one-hot at the argmax when greedy),
 * e.g. for speculative sampling's acceptance rule. Draws nothing: the generator is left as it was. */
void duet_sample_probs(duet_sampler *s, const float *logits, float *probs);

#ifdef __cplusplus
}
#endif
#endif
