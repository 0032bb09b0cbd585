/* libFuzzer target for the tokenizer. Input starting with "GGUF" is a whole file: its vocabulary must
 * load or be refused cleanly, and a loaded one must encode a fixed text. Any other input is text for
 * duet_tokenize on the llama SentencePiece vocabulary (tests/data, loaded once; run from the repository
 * root): it must encode without a crash or hang, to ids inside the vocabulary, with the same count
 * whatever the output capacity. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

static void check_text(const duet_tokenizer *t, const uint8_t *data, size_t size) {
    /* at most one token per byte of the normalized text (a space becomes three), plus BOS */
    int cap = 3 * ((int)size + 1) + 1;
    int *ids = malloc((size_t)cap * sizeof *ids);
    int n = duet_tokenize(t, (const char *)data, size, size & 1, ids, cap);
    if (n < 0 || n > cap) __builtin_trap();
    for (int i = 0; i < n; i++) {
        char piece[64];
        if (ids[i] < 0 || ids[i] >= duet_tokenizer_n_vocab(t)) __builtin_trap();
        if (duet_token_piece(t, ids[i], piece, sizeof piece) < 0) __builtin_trap();
    }
    if (duet_tokenize(t, (const char *)data, size, size & 1, ids, n / 2) != n) __builtin_trap();
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    if (size >= 4 && !memcmp(data, "GGUF", 4)) {
        gguf *g = gguf_open_mem(data, size, err, sizeof err);
        duet_tokenizer *t = g ? tokenizer_load(g, err, sizeof err) : NULL;
        if (t) {
            static const char text[] = "Hello world, <s> xy \xe2\x96\x81 caf\xc3\xa9 \xff";
            check_text(t, (const uint8_t *)text, sizeof text - 1);
        }
        tokenizer_free(t);
        gguf_close(g);
        return 0;
    }
    static gguf *spm;
    static duet_tokenizer *t;
    if (!t) {
        spm = gguf_open("tests/data/vocab/ggml-vocab-llama-spm.gguf", err, sizeof err);
        t = spm ? tokenizer_load(spm, err, sizeof err) : NULL;
        if (!t) __builtin_trap();
    }
    check_text(t, data, size);
    return 0;
}
