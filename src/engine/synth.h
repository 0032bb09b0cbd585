/* synth.h: random-weight GGUFs with the shapes of real Llama models, for timing at real scale.
 * Weights are deterministic for a seed; nothing is held in memory beyond one tensor at a time. */
#ifndef DUET_ENGINE_SYNTH_H
#define DUET_ENGINE_SYNTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "duet.h"

/* The named shape ("tinyllama", "llama32-1b", "mid", "llama3.2-1b", "qwen2.5-0.5b", "qwen3-0.6b", and "test":
 * 2 small layers for tests) as a config
 * whose vocab_size and weight_type are left 0 for synth_write to fill; NULL if unknown. */
const duet_config *synth_shape(const char *name);

/* Writes a GGUF of shape c (its n_layers may be overridden by the caller) with 2-D weights in `type`
 * (llama2c_matrix_type), norms 1, and the vocabulary of the llama2.c tokenizer.bin at vocab_path. Matrix
 * weights are approximately N(0, sigma^2) with sigma = 1/sqrt(fan_in), and the two projections back into the
 * residual stream (attn_output, ffn_down) scaled by 1/sqrt(2 n_layers), so activations stay O(1) through
 * every layer. progress as in gguf_writer_write (may be NULL). */
int synth_write(const duet_config *c, int type, uint64_t seed, const char *vocab_path, const char *out_path,
                void (*progress)(void *arg, size_t done, size_t total), void *arg, char *err, size_t errlen);

/* What a shape has beyond its duet_config: the architecture and its extra tensors, and the vocabulary a
 * file of it carries by default (a GGUF whose tokenizer.* keys are copied, or a llama2.c tokenizer.bin). */
typedef struct synth_extra {
    const char *arch;       /* "llama", "qwen2", "qwen3" */
    bool qkv_bias;          /* blk.N.attn_{q,k,v}.bias (Qwen2) */
    bool qk_norm;           /* blk.N.attn_{q,k}_norm.weight (Qwen3) */
    float rope_factor;      /* > 0: Llama 3.1 rope scaling with this factor, as the rope_freqs tensor */
    const char *vocab;      /* default vocabulary path */
} synth_extra;

/* The extras of a named shape (plain llama and the caller's vocabulary for the older shapes). */
const synth_extra *synth_shape_extra(const char *name);
/* synth_write for any architecture; vocab_path ending in .gguf copies that file's tokenizer.* keys, and the
 * embedding then has as many rows as its vocabulary. */
int synth_write_arch(const duet_config *c, const synth_extra *x, int type, uint64_t seed, const char *vocab_path,
                     const char *out_path, void (*progress)(void *arg, size_t done, size_t total), void *arg,
                     char *err, size_t errlen);

#endif
