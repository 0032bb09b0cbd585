/* bench_tokenizer: encoding speed of one vocabulary on one core, in MB of input text per second (median of
 * R runs after a warm-up), over text files (default: the repository's English docs, README.md and
 * the .md files of docs/, concatenated; never repeated, since the encoder caches the pieces it has seen). --long adds a second measurement on one 1 MB piece
 * with no spaces (a run of letters the pre-tokenizers keep whole), where a quadratic merge loop would show.
 *
 *   bench_tokenizer VOCAB.gguf [-r 9] [--long] [--json] [TEXT_FILE...]
 */
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/stats.h"
#include "duet.h"

static int append_file(const char *path, char **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        char *nb = realloc(*buf, *len + got);
        if (!nb) break;
        memcpy(nb + *len, chunk, got);
        *buf = nb;
        *len += got;
    }
    fclose(f);
    return 0;
}

/* Median MB/s of reps encodings of text[len]; *n_tok gets the token count. */
static double measure(const duet_tokenizer *t, const char *text, size_t len, int reps, int *n_tok) {
    int cap = (int)len + 16;
    int *ids = malloc((size_t)cap * sizeof *ids);
    double ms[32];
    *n_tok = duet_tokenize(t, text, len, false, ids, cap); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = clock_now_ms();
        duet_tokenize(t, text, len, false, ids, cap);
        ms[r] = clock_now_ms() - t0;
    }
    free(ids);
    return len / (stats_median(ms, reps) * 1e3);
}

int main(int argc, char **argv) {
    const char *vocab = NULL;
    int reps = 9, json = 0, lng = 0;
    char *text = NULL;
    size_t len = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--long")) lng = 1;
        else if (!vocab) vocab = argv[i];
        else if (append_file(argv[i], &text, &len)) {
            fprintf(stderr, "bench_tokenizer: cannot read %s\n", argv[i]);
            return 1;
        }
    }
    if (!vocab || reps < 1 || reps > 32) {
        fprintf(stderr, "usage: bench_tokenizer VOCAB.gguf [-r 1..32] [--long] [--json] [TEXT_FILE...]\n");
        return 2;
    }
    if (!len) {
        glob_t gl;
        append_file("README.md", &text, &len);
        if (glob("docs/*.md", 0, NULL, &gl) == 0) {
            for (size_t i = 0; i < gl.gl_pathc; i++) append_file(gl.gl_pathv[i], &text, &len);
            globfree(&gl);
        }
        if (!len) {
            fprintf(stderr, "bench_tokenizer: no text (run from the repository root or name files)\n");
            return 1;
        }
    }
    char err[512];
    duet_tokenizer *t = duet_tokenizer_load(vocab, err, sizeof err);
    if (!t) {
        fprintf(stderr, "bench_tokenizer: %s\n", err);
        return 1;
    }
    const char *name = strrchr(vocab, '/') ? strrchr(vocab, '/') + 1 : vocab;
    int n_tok;
    double mbs = measure(t, text, len, reps, &n_tok);
    if (json) printf("{\"bench\":\"tokenize\",\"vocab\":\"%s\",\"bytes\":%zu,\"tokens\":%d,\"mb_per_s\":%.2f}\n", name, len, n_tok, mbs);
    else printf("tokenize %-28s %zu bytes -> %d tokens: %.1f MB/s (1 thread)\n", name, len, n_tok, mbs);
    if (lng) {
        size_t n = 1u << 20;
        char *w = malloc(n);
        for (size_t i = 0; i < n; i++) w[i] = "abcdefghijklmnopqrstuvwxyz"[(i * 7 + i / 26) % 26];
        mbs = measure(t, w, n, reps, &n_tok);
        if (json) printf("{\"bench\":\"tokenize_long_piece\",\"vocab\":\"%s\",\"bytes\":%zu,\"tokens\":%d,\"mb_per_s\":%.2f}\n", name, n, n_tok, mbs);
        else printf("tokenize %-28s one %zu-byte piece -> %d tokens: %.1f MB/s\n", name, n, n_tok, mbs);
        free(w);
    }
    duet_tokenizer_free(t);
    free(text);
    return 0;
}
