/* libFuzzer target for duet_tokenize on the llama SentencePiece vocabulary (tests/data, loaded once;
 * run from the repository root). Any text must encode without a crash or hang, to ids inside the
 * vocabulary, with the same count whatever the output capacity. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static gguf *g;
    static duet_tokenizer *t;
    if (!t) {
        char err[256];
        g = gguf_open("tests/data/vocab/ggml-vocab-llama-spm.gguf", err, sizeof err);
        t = g ? tokenizer_load(g, err, sizeof err) : NULL;
        if (!t) __builtin_trap();
    }
    /* at most one token per byte of the normalized text (a space becomes three), plus BOS */
    int cap = 3 * ((int)size + 1) + 1;
    int *ids = malloc((size_t)cap * sizeof *ids);
    int n = duet_tokenize(t, (const char *)data, size, size & 1, ids, cap);
    if (n < 0 || n > cap) __builtin_trap();
    for (int i = 0; i < n; i++) {
        char piece[64];
        int k = duet_token_piece(t, ids[i], piece, sizeof piece);
        if (ids[i] < 0 || ids[i] >= duet_tokenizer_n_vocab(t) || k < 0 || k > (int)sizeof piece) __builtin_trap();
    }
    if (duet_tokenize(t, (const char *)data, size, size & 1, ids, n / 2) != n) __builtin_trap();
    free(ids);
    return 0;
}
