/* llama2c.h: importing llama2.c checkpoints (karpathy/llama2.c run.c format) and tokenizer.bin vocabularies
 * as GGUF, laid out as llama.cpp's own llama2c converter lays them out, so both engines read the same model.
 * Nothing here keeps memory past a call; the writer copies what it is given. */
#ifndef DUET_ENGINE_LLAMA2C_H
#define DUET_ENGINE_LLAMA2C_H

#include <stdbool.h>
#include <stddef.h>

#include "duet.h"
#include "engine/gguf.h"

typedef struct llama2c_config {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    bool shared_classifier; /* the header's vocab_size was positive: no separate wcls */
} llama2c_config;

/* Adds tokenizer.ggml.* (model "llama", tokens with ' ' turned back into U+2581, scores, token types,
 * bos 1, eos 2, unk 0) from a llama2.c tokenizer.bin. n_vocab > 0: the file must hold exactly that many
 * pieces; n_vocab <= 0 takes all it holds. *n_read (may be NULL) gets the count. */
int llama2c_add_vocab(gguf_writer *w, const char *tok_path, int n_vocab, int *n_read, char *err, size_t errlen);

/* The ggml type a 2-D matrix with rows of ne0 elements gets when `type` is asked for: `type` if ne0 divides
 * into its blocks, else F16 (F32 stays F32). */
int llama2c_matrix_type(int type, long long ne0);

/* The general.file_type (llama_ftype) that says "mostly `type`"; -1 for a type we do not write. */
int llama2c_file_type(int type);

/* Adds general.architecture "llama", general.name, general.file_type (from c->weight_type) and the llama.*
 * hyperparameters of c, as llama.cpp's converters write them. */
int llama2c_add_config(gguf_writer *w, const duet_config *c, const char *name);
/* The same under another architecture's key prefix ("qwen2.block_count" ...), with key/value lengths when
 * head_dim is not dim / n_heads. */
int llama2c_add_config_arch(gguf_writer *w, const duet_config *c, const char *name, const char *arch);

/* The type named by name ("f32", "f16", "q8_0", "q4_0", "q4_k", "q6_k", any case); -1 if not one of them. */
int llama2c_type_parse(const char *name);

/* Converts checkpoint + tokenizer into a GGUF at out_path: norms F32, matrices in llama2c_matrix_type(type).
 * cfg (may be NULL) receives the checkpoint's header. progress as in gguf_writer_write (may be NULL). */
int llama2c_convert(const char *ckpt_path, const char *tok_path, const char *out_path, int type,
                    llama2c_config *cfg, void (*progress)(void *arg, size_t done, size_t total), void *arg,
                    char *err, size_t errlen);

#endif
