/* tokenizer.h: the engine side of duet_tokenizer (declared in duet.h): building it from GGUF metadata.
 * Supports tokenizer.ggml.model = "llama" (SentencePiece BPE with byte fallback, as llama.cpp's
 * llm_tokenizer_spm); other models get DUET_EUNSUPPORTED with the model name in the message. */
#ifndef DUET_ENGINE_TOKENIZER_H
#define DUET_ENGINE_TOKENIZER_H

#include <stddef.h>

#include "duet.h"
#include "engine/gguf.h"

duet_tokenizer *tokenizer_load(const gguf *g, char *err, size_t errlen);
void tokenizer_free(duet_tokenizer *t);

#endif
