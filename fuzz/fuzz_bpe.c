/* libFuzzer target for the byte-level BPE tokenizer. Input starting with "GGUF" is a whole file whose
 * merges and pre-tokenizer go straight to bpe_load (fuzz_tokenizer covers the same files through
 * tokenizer_load): they must load or be refused cleanly, and a loaded one must encode a fixed text. Any
 * other input is text for the Llama 3 vocabulary (tests/data, loaded once; run from the repository root),
 * with special tokens parsed when the first byte is odd: every id must be inside the vocabulary, the count
 * the same whatever the capacity and with or without the piece cache, and valid UTF-8 read without special
 * tokens must decode back to itself byte for byte. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "duet.h"
#include "engine/bpe.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"

static void count(void *arg, int id) {
    (void)id;
    (*(size_t *)arg)++;
}

static void check_text(const duet_tokenizer *t, const uint8_t *data, size_t size, int flags) {
    int cap = (int)size + 2;
    int *ids = malloc((size_t)cap * sizeof *ids);
    int n = duet_tokenize_ex(t, (const char *)data, size, flags, ids, cap);
    if (n < 0 || n > cap) __builtin_trap();
    char *back = malloc(size + 1);
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= duet_tokenizer_n_vocab(t)) __builtin_trap();
        char piece[256];
        int k = duet_token_piece(t, ids[i], piece, sizeof piece);
        if (k < 0) __builtin_trap();
        if (used + (size_t)k <= size) memcpy(back + used, piece, (size_t)k);
        used += (size_t)k;
    }
    if (flags == 0 && bpe_utf8_valid((const char *)data, size) && (used != size || memcmp(back, data, size)))
        __builtin_trap();
    if (duet_tokenize_ex(t, (const char *)data, size, flags, ids, n / 2) != n) __builtin_trap();
    free(back);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    if (size >= 4 && !memcmp(data, "GGUF", 4)) {
        gguf *g = gguf_open_mem(data, size, err, sizeof err);
        int et;
        size_t n;
        /* bpe_load's contract: a string array of tokens (the tokenizer checks it first) */
        bpe *b1 = g && gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n) == 0 && et == GGUF_STR && n < (1u << 24)
                      ? bpe_load(g, (int)n, err, sizeof err)
                      : NULL;
        static const char text[] = "Hello world, <|endoftext|> 123 caf\xc3\xa9  \n\n x \xff";
        size_t got = 0;
        if (b1 && bpe_encode(b1, text, sizeof text - 1, false, count, &got)) __builtin_trap();
        bpe_free(b1);
        gguf_close(g);
        return 0;
    }
    static gguf *g;
    static duet_tokenizer *t;
    static bpe *b;
    if (!t) {
        g = gguf_open("tests/data/vocab/ggml-vocab-llama3.gguf", err, sizeof err);
        t = g ? tokenizer_load(g, err, sizeof err) : NULL;
        b = g ? bpe_load(g, 128256, err, sizeof err) : NULL;
        if (!t || !b) __builtin_trap();
    }
    check_text(t, data, size, size && (data[0] & 1) ? DUET_TOK_SPECIAL : 0);
    size_t with = 0, without = 0;
    if (bpe_encode(b, (const char *)data, size, true, count, &with) ||
        bpe_encode(b, (const char *)data, size, false, count, &without) || with != without)
        __builtin_trap();
    return 0;
}
