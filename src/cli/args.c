#include "cli/args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *args_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "duet %s: %s needs a value (see duet %s --help)\n", cmd, argv[*i], cmd);
        return NULL;
    }
    return argv[++*i];
}

int args_int(const char *cmd, const char *flag, const char *val, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < lo || v > hi) {
        fprintf(stderr, "duet %s: %s '%s' is not an integer in [%ld, %ld]\n", cmd, flag, val, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int args_u64(const char *cmd, const char *flag, const char *val, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (errno || end == val || *end || val[0] == '-') {
        fprintf(stderr, "duet %s: %s '%s' is not a non-negative integer\n", cmd, flag, val);
        return -1;
    }
    *out = v;
    return 0;
}

int args_float(const char *cmd, const char *flag, const char *val, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "duet %s: %s '%s' is not a number in [%g, %g]\n", cmd, flag, val, lo, hi);
        return -1;
    }
    *out = (float)v;
    return 0;
}

args_gen args_gen_default(void) {
    args_gen g = {.prompt = "", .n_tokens = 64, .threads = 1, .bos = true};
    g.sampling = (duet_sampling){.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1};
    return g;
}

static bool is(const char *a, const char *shrt, const char *lng) {
    return (shrt && !strcmp(a, shrt)) || !strcmp(a, lng);
}

int args_gen_take(const char *cmd, int argc, char **argv, int *i, args_gen *g) {
    const char *a = argv[*i], *v;
    if (!strcmp(a, "--json")) return g->json = true, 1;
    if (!strcmp(a, "--no-bos")) return g->bos = false, 1;
    if (!strcmp(a, "--mmap")) return g->load_flags |= DUET_LOAD_MMAP, 1;
    if (!is(a, "-m", "--model") && !is(a, "-p", "--prompt") && !is(a, "-n", "--tokens") && !is(a, NULL, "--temp") &&
        !is(a, NULL, "--top-k") && !is(a, NULL, "--top-p") && !is(a, NULL, "--seed") && !is(a, "-t", "--threads"))
        return 0;
    if (!(v = args_value(cmd, argc, argv, i))) return -1;
    int bad = 0;
    if (is(a, "-m", "--model")) g->model = v;
    else if (is(a, "-p", "--prompt")) g->prompt = v;
    else if (is(a, "-n", "--tokens")) bad = args_int(cmd, a, v, 0, 1 << 20, &g->n_tokens);
    else if (is(a, NULL, "--temp")) bad = args_float(cmd, a, v, 0, 100, &g->sampling.temperature);
    else if (is(a, NULL, "--top-k")) bad = args_int(cmd, a, v, 0, 1 << 24, &g->sampling.top_k);
    else if (is(a, NULL, "--top-p")) bad = args_float(cmd, a, v, 0, 1, &g->sampling.top_p);
    else if (is(a, NULL, "--seed")) bad = args_u64(cmd, a, v, &g->sampling.seed);
    else bad = args_int(cmd, a, v, 0, 256, &g->threads);
    return bad ? -1 : 1;
}

int args_token_file(const char *cmd, const char *path, uint8_t *buf, size_t cap, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "duet %s: --token-file %s: %s\n", cmd, path, strerror(errno));
        return -1;
    }
    size_t n = fread(buf, 1, cap, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t')) n--;
    if (more || n == 0) {
        fprintf(stderr, "duet %s: --token-file %s: the token must be 1 to %zu bytes (e.g. openssl rand -hex 32)\n",
                cmd, path, cap);
        return -1;
    }
    *len = n;
    return 0;
}
