#include "cli/text.h"

#include <stdlib.h>
#include <string.h>

void cli_text_emit(void *arg, int id) {
    cli_text *o = arg;
    if (o->ids) {
        fprintf(o->f, "%d ", id);
    } else {
        char buf[256];
        int n = duet_token_piece(o->tok, id, buf, sizeof buf);
        if (n > (int)sizeof buf) n = (int)sizeof buf; /* the count is the piece's length, even past cap */
        if (n > 0) fwrite(buf, 1, (size_t)n, o->f);
    }
    fflush(o->f);
}

int cli_tokenize_prompt(const duet_tokenizer *tok, const char *prompt, bool bos, int **ids, int *n, char *err,
                        size_t errlen) {
    return cli_tokenize_flags(tok, prompt, bos ? DUET_TOK_BOS : 0, ids, n, err, errlen);
}

int cli_tokenize_flags(const duet_tokenizer *tok, const char *prompt, int flags, int **ids, int *n, char *err,
                       size_t errlen) {
    size_t len = strlen(prompt);
    int cap = (int)len + 2; /* SentencePiece: one token per byte, BOS, space prefix; BPE: U+FFFD can exceed it */
    *ids = malloc(sizeof(int) * (size_t)cap);
    *n = *ids ? duet_tokenize_ex(tok, prompt, len, flags, *ids, cap) : -1;
    if (*n > cap) {
        int *more = realloc(*ids, sizeof(int) * (size_t)*n);
        if (more) *ids = more;
        cap = more ? *n : cap;
        *n = more ? duet_tokenize_ex(tok, prompt, len, flags, *ids, cap) : -1;
    }
    if (*n < 0 || *n > cap) {
        snprintf(err, errlen, "cannot tokenize the prompt");
        return -1;
    }
    if (*n == 0) {
        snprintf(err, errlen, "the prompt is empty and --no-bos was given: nothing to start from");
        return -1;
    }
    return 0;
}
