/* duet tokenize: text to token ids with a model's vocabulary, like llama.cpp's llama-tokenize. Needs only
 * the tokenizer.ggml.* metadata, so a vocabulary-only GGUF works. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"

static const char *USAGE =
    "usage: duet tokenize -m MODEL (-p TEXT | -f FILE) [--ids-only] [--no-bos] [--special]\n"
    "\n"
    "Prints the tokens of TEXT, one per line as `id -> 'piece'` (the piece escaped where it is not printable),\n"
    "as llama.cpp's llama-tokenize does. MODEL may be any GGUF with a vocabulary, including vocabulary-only\n"
    "files with no tensors.\n"
    "\n"
    "  -m, --model PATH     GGUF file\n"
    "  -p, --prompt TEXT    text to tokenize\n"
    "  -f, --file PATH      read the text from a file instead (exactly its bytes)\n"
    "      --ids-only       print only the ids, space-separated on one line\n"
    "      --no-bos         do not put BOS first (by default it is put first when the vocabulary's\n"
    "                       add_bos_token says so: Llama, Llama 3; not GPT-2 or Qwen)\n"
    "      --special        match control tokens written in the text (<|im_start|>, <|eot_id|> ...) as single\n"
    "                       tokens; without it they are tokenized as plain text (user-defined tokens always match)\n"
    "  -h, --help           this text\n";

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (*len == cap) {
            char *nb = realloc(buf, cap = 2 * cap + 65536);
            if (!nb) break;
            buf = nb;
        }
        size_t got = fread(buf + *len, 1, cap - *len, f);
        if (!got) break;
        *len += got;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    return buf ? buf : calloc(1, 1);
}

/* piece bytes, with quote, backslash and bytes outside printable ASCII (UTF-8 included) escaped as \xNN
 * except valid UTF-8 multibyte characters, which print as they are */
static void print_piece(const char *p, int n) {
    for (int i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\'' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !(c >= 0xc2 && c < 0xf5))) printf("\\x%02x", c);
        else if (c >= 0x80) { /* a lead byte: print the character if its continuation bytes are all here */
            int k = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2, ok = i + k <= n;
            for (int j = 1; ok && j < k; j++) ok = ((unsigned char)p[i + j] & 0xc0) == 0x80;
            if (ok) {
                fwrite(p + i, 1, (size_t)k, stdout);
                i += k - 1;
            } else {
                printf("\\x%02x", c);
            }
        } else putchar(c);
    }
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL;
    int ids_only = 0, flags = DUET_TOK_BOS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = args_value("tokenize", argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!(prompt = args_value("tokenize", argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!(file = args_value("tokenize", argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--ids-only")) {
            ids_only = 1;
        } else if (!strcmp(a, "--no-bos")) {
            flags &= ~DUET_TOK_BOS;
        } else if (!strcmp(a, "--special")) {
            flags |= DUET_TOK_SPECIAL;
        } else {
            fprintf(stderr, "duet tokenize: unknown option '%s' (see duet tokenize --help)\n", a);
            return 2;
        }
    }
    if (!model || (!prompt == !file)) {
        fprintf(stderr, "duet tokenize: -m MODEL and one of -p TEXT or -f FILE are required (see duet tokenize --help)\n");
        return 2;
    }
    size_t len = prompt ? strlen(prompt) : 0;
    char *text = file ? read_all(file, &len) : NULL;
    if (file && !text) {
        fprintf(stderr, "duet tokenize: cannot read %s\n", file);
        return 1;
    }
    char err[512];
    duet_tokenizer *t = duet_tokenizer_load(model, err, sizeof err);
    if (!t) {
        fprintf(stderr, "duet tokenize: %s\n", err);
        free(text);
        return 1;
    }
    const char *s = text ? text : prompt;
    int cap = (int)(len < (1u << 26) ? len : 1u << 26) + 8, n = -1;
    int *ids = NULL;
    for (int tries = 0; tries < 2; tries++) { /* the count comes back even when cap is too small */
        free(ids);
        ids = malloc((size_t)cap * sizeof *ids);
        n = ids ? duet_tokenize_ex(t, s, len, flags, ids, cap) : -1;
        if (n <= cap) break;
        cap = n;
    }
    int status = 0;
    if (n < 0) {
        fprintf(stderr, "duet tokenize: cannot tokenize the text (%d; at most 16 MiB)\n", n);
        status = 1;
    }
    for (int i = 0; i < n; i++) {
        if (ids_only) {
            printf(i ? " %d" : "%d", ids[i]);
            continue;
        }
        char buf[512];
        int k = duet_token_piece_ex(t, ids[i], DUET_TOK_SPECIAL, buf, sizeof buf);
        printf("%6d -> '", ids[i]);
        print_piece(buf, k < (int)sizeof buf ? k : (int)sizeof buf);
        fputs("'\n", stdout);
    }
    if (ids_only && n >= 0) putchar('\n');
    free(ids);
    free(text);
    duet_tokenizer_free(t);
    return status;
}
