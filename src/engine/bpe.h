/* bpe.h: byte-level BPE (tokenizer.ggml.model = "gpt2": GPT-2, Llama 3, Qwen2/2.5/3, SmolLM), behaving as
 * llama.cpp's llm_tokenizer_bpe. The pre-tokenizer named by tokenizer.ggml.pre splits the text with its
 * regexes (PCRE2, UTF + UCP, JIT); each piece's bytes are then merged by the rank of tokenizer.ggml.merges.
 * Special-token splitting, BOS and the token table for decoding stay in tokenizer.c.
 * A bpe is read-only once loaded and may be shared by threads; it copies what it needs from the gguf. */
#ifndef DUET_ENGINE_BPE_H
#define DUET_ENGINE_BPE_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/gguf.h"

typedef struct bpe bpe;

/* Called with each id as it is produced. */
typedef void (*bpe_emit_fn)(void *arg, int id);

/* Loads the merges and the pre-tokenizer of g, whose vocabulary has n_vocab tokens (already checked to be
 * valid UTF-8 by the caller). NULL with a message naming the key on failure. */
bpe *bpe_load(const gguf *g, int n_vocab, char *err, size_t errlen);
void bpe_free(bpe *b);
/* Whether the pre-tokenizer asks for BOS when the file does not say (llama.cpp: Llama 3 does). */
bool bpe_add_bos(const bpe *b);
/* Encodes text[len] (any bytes: invalid UTF-8 becomes U+FFFD, as in llama.cpp). With cache, a text of
 * some kilobytes keeps the tokens of the pieces it has seen (the same ids, faster). 0 or < 0 (DUET_ENOMEM,
 * DUET_ERR if the regex engine fails). */
int bpe_encode(const bpe *b, const char *text, size_t len, bool cache, bpe_emit_fn emit, void *arg);
/* Whether s[n] is well-formed UTF-8 (shortest forms, no surrogates, at most U+10FFFF). */
bool bpe_utf8_valid(const char *s, size_t n);
/* The bytes a byte-level token stands for, or NULL when its text is not made of byte characters. */
const char *bpe_bytes(const bpe *b, int id, size_t *len);

#endif
