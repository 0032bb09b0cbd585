/* duet calibrate: fits the affine maps of DESIGN section 5 (early-exit translators h_e -> h_L, HAT adapters
 * h_A -> h_B) on hidden states of the full model over a calibration text, and reports how much each map
 * helps: held-out error against the identity and, for maps into h_L, how often the head's greedy token
 * through the map agrees with the full model's, next to the raw exit without a map. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "engine/calib.h"

static const char *USAGE =
    "usage: duet calibrate -m MODEL --text FILE --pairs A:B[,C:D...] -o OUT.gguf [options]\n"
    "\n"
    "Runs the whole model over a calibration text, collects the hidden states h_A and h_B of every pair\n"
    "(h_l is the input of layer l: h_0 the embedding, h_L what the head reads) and fits y = W x + b by ridge\n"
    "regression in closed form (Cholesky). The maps are saved as a small GGUF tied to this model, which\n"
    "`duet run --calib OUT.gguf` loads: an early exit after layer e uses the map (e+1):L, a HAT adapter\n"
    "the map A:(L-M). The text is cut into windows, each run from BOS; the last windows are held out to\n"
    "choose lambda and to report the fit.\n"
    "\n"
    "  -m, --model PATH     GGUF model\n"
    "      --text FILE      calibration text (UTF-8)\n"
    "      --pairs LIST     maps to fit, A:B with 0 <= A < B <= L, comma-separated, e.g. 1:5,2:5,3:5,4:5;\n"
    "                       `exits` means every exit (e+1):L for e = 0..L-2, `all` every A:B with 1 <= A < B\n"
    "  -o, --output PATH    where to write the maps (GGUF)\n"
    "      --window N       tokens per window, BOS included (default min(256, context length))\n"
    "      --holdout F      fraction of the windows held out (default 0.2)\n"
    "      --lambda X       fixed ridge penalty; default: chosen per map on the held-out windows\n"
    "      --max-tokens N   read at most N tokens of the text (default: all)\n"
    "  -t, --threads N      compute threads (default 1; 0 = all CPUs)\n"
    "      --json           print the report as one JSON object on stdout\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 ok, 1 failure (unreadable model or text, a fit that cannot be solved), 2 usage error.\n";

static int usage_error(const char *msg) {
    fprintf(stderr, "duet calibrate: %s (see duet calibrate --help)\n", msg);
    return 2;
}

/* Parses the --pairs list into pairs[][2]; returns the count, or -1 after printing why. */
static int parse_pairs(const char *spec, int n_layers, int (*pairs)[2]) {
    int n = 0;
    if (!strcmp(spec, "exits") || !strcmp(spec, "all")) {
        for (int a = 1; a < n_layers; a++)
            for (int b = a + 1; b <= n_layers; b++)
                if ((b == n_layers || spec[0] == 'a') && n < CALIB_MAX_MAPS) {
                    pairs[n][0] = a;
                    pairs[n++][1] = b;
                }
        return n;
    }
    const char *s = spec;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b;
        if (end == s || *end != ':') goto bad;
        s = end + 1;
        b = strtol(s, &end, 10);
        if (end == s || (*end && *end != ',')) goto bad;
        s = *end ? end + 1 : end;
        if (a < 0 || a >= b || b > n_layers) {
            fprintf(stderr, "duet calibrate: --pairs: %ld:%ld needs 0 <= A < B <= %d (this model's layer count)\n", a, b,
                    n_layers);
            return -1;
        }
        for (int i = 0; i < n; i++)
            if (pairs[i][0] == a && pairs[i][1] == b) {
                fprintf(stderr, "duet calibrate: --pairs: %ld:%ld appears twice\n", a, b);
                return -1;
            }
        if (n == CALIB_MAX_MAPS) {
            fprintf(stderr, "duet calibrate: --pairs: at most %d maps\n", CALIB_MAX_MAPS);
            return -1;
        }
        pairs[n][0] = (int)a;
        pairs[n++][1] = (int)b;
    }
    if (n) return n;
bad:
    fprintf(stderr, "duet calibrate: --pairs '%s' is not a list like 1:5,2:5 (or exits, all)\n", spec);
    return -1;
}

/* Runs one window through the whole model, keeping h_l for every l marked in want[]: hs[l] = [n][dim]. */
static int run_window(duet_ctx *ctx, duet_kv *kv, int n_layers, int dim, const int *ids, int n, const bool *want,
                      float **hs, float *h, char *err, size_t errlen) {
    duet_kv_truncate(kv, 0);
    int rc = duet_embed(ctx, ids, n, h, err, errlen);
    for (int l = 0; !rc && l <= n_layers; l++) {
        if (want[l]) memcpy(hs[l], h, sizeof(float) * (size_t)n * dim);
        if (l < n_layers) rc = duet_forward(ctx, kv, l, l + 1, h, n, 0, err, errlen);
    }
    return rc;
}

/* Progress on stderr: a line rewritten in place on a terminal, every tenth of the way in a log. */
static void progress(const char *what, int done, int total) {
    int tty = isatty(2), step = total >= 10 ? total / 10 : 1;
    if (tty) fprintf(stderr, "\rcalibrate: %s %d/%d%s", what, done, total, done == total ? "\n" : "");
    else if (done % step == 0 || done == total) fprintf(stderr, "calibrate: %s %d/%d\n", what, done, total);
}

typedef struct report {
    double rel_err;       /* held-out squared error / the identity's */
    long agree_raw, agree_map, rows; /* maps into h_L: greedy token agreements with the full model */
} report;

int cmd_calibrate(int argc, char **argv) {
    const char *model = NULL, *text_path = NULL, *pairs_spec = NULL, *out_path = NULL;
    int window = 0, max_tokens = 0, threads = 1, json = 0;
    float holdout = 0.2f, lambda = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (a[0] != '-') {
            fprintf(stderr, "duet calibrate: unexpected argument '%s' (see duet calibrate --help)\n", a);
            return 2;
        }
        if (!(v = args_value("calibrate", argc, argv, &i))) return 2;
        int bad = 0;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--text")) text_path = v;
        else if (!strcmp(a, "--pairs")) pairs_spec = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out_path = v;
        else if (!strcmp(a, "--window")) bad = args_int("calibrate", a, v, 2, 1 << 20, &window);
        else if (!strcmp(a, "--holdout")) bad = args_float("calibrate", a, v, 0.01, 0.9, &holdout);
        else if (!strcmp(a, "--lambda")) bad = args_float("calibrate", a, v, 1e-30, 1e30, &lambda);
        else if (!strcmp(a, "--max-tokens")) bad = args_int("calibrate", a, v, 2, 1 << 30, &max_tokens);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) bad = args_int("calibrate", a, v, 0, 1024, &threads);
        else {
            fprintf(stderr, "duet calibrate: unknown option '%s' (see duet calibrate --help)\n", a);
            return 2;
        }
        if (bad) return 2;
    }
    if (!model) return usage_error("-m MODEL is required");
    if (!text_path) return usage_error("--text FILE is required (the calibration text)");
    if (!pairs_spec) return usage_error("--pairs A:B[,...] is required");
    if (!out_path) return usage_error("-o OUT.gguf is required");

    char err[512];
    int status = 1, n_tok = 0;
    duet_model *m = duet_model_load(model, NULL, 0, err, sizeof err);
    duet_pool *pool = NULL;
    duet_ctx *ctx = NULL;
    duet_kv *kv = NULL;
    calib *cal = NULL;
    calib_fit *fits[CALIB_MAX_MAPS] = {0};
    report rep[CALIB_MAX_MAPS] = {{0}};
    float *hs[4097] = {0}, *h = NULL, *tmp = NULL, *logits = NULL;
    int *ids = NULL, *win = NULL;
    char *text = NULL;
    int pairs[CALIB_MAX_MAPS][2], n_pairs = 0;
    if (!m) goto fail;
    const duet_config *c = duet_model_config(m);
    const duet_tokenizer *tok = duet_model_tokenizer(m, err, sizeof err);
    if (!tok) goto fail;
    if (c->n_layers > 4096) {
        snprintf(err, sizeof err, "%d layers: calibrate handles at most 4096", c->n_layers);
        goto fail;
    }
    if ((n_pairs = parse_pairs(pairs_spec, c->n_layers, pairs)) < 0) {
        status = 2;
        goto out;
    }
    if (window == 0) window = c->ctx_len < 256 ? c->ctx_len : 256;
    if (window > c->ctx_len) {
        fprintf(stderr, "duet calibrate: --window %d is longer than the model's context (%d)\n", window, c->ctx_len);
        status = 2;
        goto out;
    }

    FILE *f = fopen(text_path, "rb");
    if (!f) {
        snprintf(err, sizeof err, "cannot open the calibration text %s", text_path);
        goto fail;
    }
    size_t len = 0, cap = 1 << 16;
    text = malloc(cap);
    for (size_t got; text && (got = fread(text + len, 1, cap - len, f)) > 0;) {
        len += got;
        if (len == cap) {
            char *t = realloc(text, cap *= 2);
            if (!t) free(text);
            text = t;
        }
    }
    fclose(f);
    if (!text) {
        snprintf(err, sizeof err, "out of memory reading %s", text_path);
        goto fail;
    }
    n_tok = duet_tokenize(tok, text, len, false, NULL, 0);
    if (n_tok < 0 || !(ids = malloc(sizeof(int) * ((size_t)n_tok + 1))) ||
        duet_tokenize(tok, text, len, false, ids, n_tok + 1) != n_tok) {
        snprintf(err, sizeof err, "cannot tokenize %s", text_path);
        goto fail;
    }
    if (max_tokens && n_tok > max_tokens) n_tok = max_tokens;
    int per = window - 1, n_win = n_tok / per;
    int n_held = (int)(n_win * holdout + 0.5);
    if (n_held < 1) n_held = 1;
    if (n_win - n_held < 1) {
        snprintf(err, sizeof err, "%s has %d tokens: too little for %d-token windows with %d held out (give more text)",
                 text_path, n_tok, window, n_held);
        goto fail;
    }

    bool want[4097] = {0};
    size_t d = (size_t)c->dim, rows = (size_t)window * d;
    for (int p = 0; p < n_pairs; p++) want[pairs[p][0]] = want[pairs[p][1]] = true;
    for (int l = 0; l <= c->n_layers; l++)
        if (want[l] && !(hs[l] = malloc(sizeof(float) * rows))) goto oom;
    if (!(h = malloc(sizeof(float) * rows)) || !(tmp = malloc(sizeof(float) * rows)) ||
        !(win = malloc(sizeof(int) * (size_t)window)) || !(logits = malloc(sizeof(float) * 3 * (size_t)c->vocab_size)))
        goto oom;
    for (int p = 0; p < n_pairs; p++)
        if (!(fits[p] = calib_fit_init(c->dim, err, sizeof err))) goto fail;
    if (!(pool = duet_pool_init(threads, err, sizeof err)) || !(ctx = duet_ctx_init(m, window, pool, err, sizeof err)) ||
        !(kv = duet_kv_init(m, duet_model_part(m), window, err, sizeof err)))
        goto fail;

    fprintf(stderr, "calibrate: %d tokens of %s in %d windows of %d (%d held out), %d maps\n", n_tok, text_path, n_win,
            window, n_held, n_pairs);
    win[0] = duet_tokenizer_bos(tok);
    /* Row 0 of every window is BOS, whose hidden states are unlike any generated position's: left out. */
    for (int w = 0; w < n_win; w++) {
        memcpy(win + 1, ids + (size_t)w * per, sizeof(int) * (size_t)per);
        if (run_window(ctx, kv, c->n_layers, c->dim, win, window, want, hs, h, err, sizeof err)) goto fail;
        for (int p = 0; p < n_pairs; p++)
            calib_fit_add(fits[p], hs[pairs[p][0]] + d, hs[pairs[p][1]] + d, per, w >= n_win - n_held);
        progress("window", w + 1, n_win);
    }

    if (!(cal = calloc(1, sizeof *cal))) goto oom;
    cal->fingerprint = duet_model_fingerprint(m);
    cal->n_layers = c->n_layers;
    cal->dim = c->dim;
    for (int p = 0; p < n_pairs; p++) {
        calib_map *mp = &cal->map[p];
        mp->a = pairs[p][0];
        mp->b = pairs[p][1];
        if (!(mp->w = malloc(sizeof(float) * d * d)) || !(mp->bias = malloc(sizeof(float) * d))) goto oom;
        cal->n_maps++;
        if (calib_fit_solve(fits[p], lambda, mp, &rep[p].rel_err, err, sizeof err)) goto fail;
        calib_fit_free(fits[p]);
        fits[p] = NULL;
        progress("fitted map", p + 1, n_pairs);
    }

    /* Exit accuracy on the held-out windows, for the maps into h_L. */
    for (int w = n_win - n_held; w < n_win; w++) {
        memcpy(win + 1, ids + (size_t)w * per, sizeof(int) * (size_t)per);
        if (run_window(ctx, kv, c->n_layers, c->dim, win, window, want, hs, h, err, sizeof err)) goto fail;
        for (int p = 0; p < n_pairs; p++) {
            if (pairs[p][1] != c->n_layers) continue;
            const calib_map *mp = &cal->map[p];
            for (int r = 1; r < window; r++) {
                const float *x = hs[mp->a] + (size_t)r * d;
                calib_apply(mp, x, tmp, 1);
                float *lg = logits, *vocab2 = logits + c->vocab_size, *vocab3 = vocab2 + c->vocab_size;
                if (duet_head(ctx, hs[c->n_layers] + (size_t)r * d, 1, lg, err, sizeof err) ||
                    duet_head(ctx, x, 1, vocab2, err, sizeof err) || duet_head(ctx, tmp, 1, vocab3, err, sizeof err))
                    goto fail;
                int ref = duet_argmax(lg, c->vocab_size);
                rep[p].agree_raw += duet_argmax(vocab2, c->vocab_size) == ref;
                rep[p].agree_map += duet_argmax(vocab3, c->vocab_size) == ref;
                rep[p].rows++;
            }
        }
    }
    if (calib_save(cal, out_path, err, sizeof err)) goto fail;

    if (json) printf("{\"model\":\"%s\",\"tokens\":%d,\"windows\":%d,\"held_out\":%d,\"maps\":[", model, n_tok, n_win, n_held);
    else fprintf(stderr, "wrote %s: %d maps for %s (fingerprint %016" PRIx64 ")\n", out_path, n_pairs, model, cal->fingerprint);
    if (!json)
        printf("%-8s %-10s %-22s %-14s %-14s\n", "map", "lambda", "held-out err vs id", "exit acc raw", "exit acc mapped");
    for (int p = 0; p < n_pairs; p++) {
        const calib_map *mp = &cal->map[p];
        double raw = rep[p].rows ? (double)rep[p].agree_raw / rep[p].rows : -1;
        double mapped = rep[p].rows ? (double)rep[p].agree_map / rep[p].rows : -1;
        if (json) {
            printf("%s{\"a\":%d,\"b\":%d,\"lambda\":%g,\"held_rel_err\":%.5f", p ? "," : "", mp->a, mp->b, mp->lambda,
                   rep[p].rel_err);
            if (rep[p].rows) printf(",\"exit_acc_raw\":%.4f,\"exit_acc_mapped\":%.4f,\"rows\":%ld", raw, mapped, rep[p].rows);
            printf("}");
        } else {
            char mapname[24], accr[16] = "-", accm[16] = "-";
            snprintf(mapname, sizeof mapname, "%d:%d", mp->a, mp->b);
            if (rep[p].rows) {
                snprintf(accr, sizeof accr, "%.4f", raw);
                snprintf(accm, sizeof accm, "%.4f", mapped);
            }
            printf("%-8s %-10.3g %-22.4f %-14s %-14s\n", mapname, mp->lambda, rep[p].rel_err, accr, accm);
        }
    }
    if (json) printf("]}\n");
    status = 0;
    goto out;
oom:
    snprintf(err, sizeof err, "out of memory");
fail:
    fprintf(stderr, "duet calibrate: %s\n", err);
out:
    for (int p = 0; p < n_pairs; p++) calib_fit_free(fits[p]);
    for (int l = 0; l <= 4096; l++) free(hs[l]);
    calib_free(cal);
    free(h);
    free(tmp);
    free(logits);
    free(win);
    free(ids);
    free(text);
    duet_kv_free(kv);
    duet_ctx_free(ctx);
    duet_pool_free(pool);
    duet_model_free(m);
    return status;
}
