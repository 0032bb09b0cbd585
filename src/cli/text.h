/* text.h: between the user's text and tokens, for every command that generates: the prompt in, the
 * generated pieces streamed out as they arrive. */
#ifndef DUET_CLI_TEXT_H
#define DUET_CLI_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "duet.h"

typedef struct cli_text {
    const duet_tokenizer *tok;
    FILE *f;
    bool ids; /* print token ids instead of text */
} cli_text;

/* A mode_emit_fn: writes token id's piece (or id) to the stream and flushes, so text appears as made. */
void cli_text_emit(void *arg, int id);

/* *ids (malloc'd; the caller frees) gets the prompt's tokens, BOS first when bos. 0 ok; else a message in
 * err (the text cannot be tokenized, or nothing is left to start from). */
int cli_tokenize_prompt(const duet_tokenizer *tok, const char *prompt, bool bos, int **ids, int *n, char *err,
                        size_t errlen);
/* The same with duet_tokenize_ex flags (DUET_TOK_BOS, DUET_TOK_SPECIAL for a chat template's tokens). */
int cli_tokenize_flags(const duet_tokenizer *tok, const char *prompt, int flags, int **ids, int *n, char *err,
                       size_t errlen);

#endif
