/* Forward pass against the field: llama.cpp's logits and greedy generations for stories260K and for the
 * quantized reference model, plus the engine's own invariants (layer-range composition, batch vs one at a
 * time, KV truncation). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/json.h"
#include "duet.h"
#include "engine/gguf.h"
#include "engine/kv.h"
#include "engine/model.h"
#include "engine/quant.h"
#include "test.h"

#define STORIES "models/stories260K.gguf"

static duet_model *load(const char *path, const char *part_spec) {
    char err[512];
    duet_part part, *pp = NULL;
    if (part_spec) {
        if (duet_part_parse(part_spec, &part, err, sizeof err)) {
            test_fail(__FILE__, __LINE__, "part %s: %s", part_spec, err);
            return NULL;
        }
        pp = &part;
    }
    duet_model *m = duet_model_load(path, pp, 0, err, sizeof err);
    if (!m) test_fail(__FILE__, __LINE__, "load %s: %s", path, err);
    return m;
}

/* Runs ids[n] through [0,L) as one batch and returns logits[n][vocab] (caller frees). */
static float *logits_batch(duet_model *m, const int *ids, int n, duet_pool *pool) {
    const duet_config *c = duet_model_config(m);
    char err[256];
    duet_part all = duet_part_all();
    duet_kv *kv = duet_kv_init(m, &all, n, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(m, n, pool, err, sizeof err);
    float *h = malloc(sizeof(float) * n * c->dim), *lg = malloc(sizeof(float) * n * c->vocab_size);
    int ok = kv && ctx && h && lg && !duet_embed(ctx, ids, n, h, err, sizeof err) &&
             !duet_forward(ctx, kv, 0, c->n_layers, h, n, 0, err, sizeof err) &&
             !duet_head(ctx, h, n, lg, err, sizeof err);
    if (!ok) {
        test_fail(__FILE__, __LINE__, "forward: %s", err);
        free(lg);
        lg = NULL;
    }
    free(h);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    return lg;
}

static int json_ids(const json_val *arr, int *out, int cap) {
    int n = (int)json_len(arr);
    for (int i = 0; i < n && i < cap; i++) out[i] = (int)json_num(json_at(arr, i));
    return n;
}

TEST(test_forward_stories_logits_match_llamacpp) {
    char err[256];
    json *doc = json_load_file(TEST_DATA "/stories260K-logits.json", err, sizeof err);
    REQUIRE_MSG(doc, "%s", err);
    duet_model *m = load(STORIES, NULL);
    if (!m) { json_free(doc); return; }
    const json_val *root = json_root(doc);
    int ids[16];
    int n = json_ids(json_get(root, "token_ids"), ids, 16);
    float *lg = logits_batch(m, ids, n, NULL);
    const json_val *ref = json_get(root, "logits");
    double worst = 0;
    int vocab = duet_model_config(m)->vocab_size;
    CHECK_EQ_INT(json_len(ref), n);
    for (int t = 0; lg && t < n; t++) {
        const json_val *row = json_at(ref, t);
        CHECK_EQ_INT(json_len(row), vocab);
        for (int v = 0; v < vocab; v++) {
            double d = fabs(lg[t * vocab + v] - json_num(json_at(row, v)));
            if (d > worst) worst = d;
        }
    }
    printf("    max |logit - llama.cpp| = %.3g over %d positions\n", worst, n);
    CHECK(worst < 1e-4);
    free(lg);
    duet_model_free(m);
    json_free(doc);
}

/* Greedy generation from the public API, one position per step, as a user would write it. */
static int greedy(duet_model *m, const int *prompt, int n_prompt, int n_new, int *out) {
    const duet_config *c = duet_model_config(m);
    char err[256];
    duet_part all = duet_part_all();
    duet_kv *kv = duet_kv_init(m, &all, n_prompt + n_new, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(m, n_prompt, NULL, err, sizeof err);
    float *h = malloc(sizeof(float) * n_prompt * c->dim), *lg = malloc(sizeof(float) * c->vocab_size);
    int n = 0;
    if (kv && ctx && h && lg && !duet_embed(ctx, prompt, n_prompt, h, err, sizeof err) &&
        !duet_forward(ctx, kv, 0, c->n_layers, h, n_prompt, 0, err, sizeof err) &&
        !duet_head(ctx, h + (n_prompt - 1) * c->dim, 1, lg, err, sizeof err)) {
        for (; n < n_new; n++) {
            out[n] = duet_argmax(lg, c->vocab_size);
            if (n + 1 == n_new) { n++; break; }
            if (duet_embed(ctx, &out[n], 1, h, err, sizeof err) ||
                duet_forward(ctx, kv, 0, c->n_layers, h, 1, n_prompt + n, err, sizeof err) ||
                duet_head(ctx, h, 1, lg, err, sizeof err))
                break;
        }
    }
    free(h);
    free(lg);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    return n;
}

TEST(test_forward_stories_greedy_matches_llamacpp) {
    FILE *f = fopen(TEST_DATA "/stories260K-greedy.jsonl", "r");
    REQUIRE(f);
    duet_model *m = load(STORIES, NULL);
    if (!m) { fclose(f); return; }
    const duet_tokenizer *tok = duet_model_tokenizer(m, NULL, 0);
    CHECK(tok != NULL);
    char line[1 << 16];
    int n_prompts = 0;
    while (fgets(line, sizeof line, f)) {
        char err[256];
        json *doc = json_parse(line, strlen(line), err, sizeof err);
        REQUIRE_MSG(doc, "%s", err);
        const json_val *r = json_root(doc);
        int prompt[256], want[256], got[256], ids[256];
        int n_prompt = json_ids(json_get(r, "prompt_ids"), prompt, 256);
        int n_want = json_ids(json_get(r, "output_ids"), want, 256);
        size_t plen;
        const char *text = json_str(json_get(r, "prompt"), &plen);
        if (tok) { /* our tokenizer gives llama.cpp's prompt ids */
            int n = duet_tokenize(tok, text, plen, true, ids, 256);
            CHECK_EQ_INT(n, n_prompt);
            for (int i = 0; i < n && i < n_prompt; i++) CHECK_EQ_INT(ids[i], prompt[i]);
        }
        int n_got = greedy(m, prompt, n_prompt, n_want, got);
        CHECK_EQ_INT(n_got, n_want);
        int first_diff = -1;
        for (int i = 0; i < n_want && i < n_got; i++)
            if (got[i] != want[i]) { first_diff = i; break; }
        CHECK_MSG(first_diff < 0, "prompt '%s': token %d is %d, llama.cpp says %d", text, first_diff,
                  got[first_diff < 0 ? 0 : first_diff], want[first_diff < 0 ? 0 : first_diff]);
        n_prompts++;
        json_free(doc);
    }
    fclose(f);
    CHECK_EQ_INT(n_prompts, 6);
    duet_model_free(m);
}

/* Runs the prompt then `steps` single tokens through layers [0,k) and [k,L) held by two models (as a
 * device and a cloud would), returning the final hidden states of every position. */
static float *run_split(const char *path, int k, const int *ids, int n, int steps, duet_pool *pool) {
    char err[256], spec_a[64], spec_b[64];
    duet_model *full = load(path, NULL);
    if (!full) return NULL;
    const duet_config *c = duet_model_config(full);
    int L = c->n_layers, dim = c->dim, total = n + steps;
    snprintf(spec_a, sizeof spec_a, k > 0 ? "0:%d,embed" : "embed", k);
    snprintf(spec_b, sizeof spec_b, k < L ? "%d:%d,head" : "head", k, L);
    duet_model *dev = load(path, spec_a), *cloud = load(path, spec_b);
    float *h = malloc(sizeof(float) * total * dim);
    duet_kv *kv_d = dev ? duet_kv_init(dev, duet_model_part(dev), total, err, sizeof err) : NULL;
    duet_kv *kv_c = cloud ? duet_kv_init(cloud, duet_model_part(cloud), total, err, sizeof err) : NULL;
    duet_ctx *cd = dev ? duet_ctx_init(dev, n, pool, err, sizeof err) : NULL;
    duet_ctx *cc = cloud ? duet_ctx_init(cloud, n, pool, err, sizeof err) : NULL;
    int ok = h && kv_d && kv_c && cd && cc;
    /* Prompt as a batch, then one token at a time feeding back the prompt ids cyclically. */
    for (int t = 0, pos = 0; ok && t <= steps; t++) {
        int nb = t == 0 ? n : 1;
        const int *tid = t == 0 ? ids : &ids[t % n];
        float *hh = h + (size_t)pos * dim;
        ok = !duet_embed(cd, tid, nb, hh, err, sizeof err) &&
             !duet_forward(cd, kv_d, 0, k, hh, nb, pos, err, sizeof err) &&
             !duet_forward(cc, kv_c, k, L, hh, nb, pos, err, sizeof err);
        pos += nb;
    }
    if (!ok) {
        test_fail(__FILE__, __LINE__, "split at %d: %s", k, err);
        free(h);
        h = NULL;
    }
    duet_ctx_free(cd);
    duet_ctx_free(cc);
    duet_kv_free(kv_d);
    duet_kv_free(kv_c);
    duet_model_free(dev);
    duet_model_free(cloud);
    duet_model_free(full);
    return h;
}

/* [0,k) then [k,L) gives the bits of [0,L) for every k. */
static void check_split_composition(const char *path) {
    int ids[] = {1, 403, 407, 261, 378, 432, 383};
    int n = 7, steps = 5;
    duet_model *m = load(path, NULL);
    REQUIRE(m);
    int L = duet_model_config(m)->n_layers, dim = duet_model_config(m)->dim;
    duet_model_free(m);
    float *whole = run_split(path, L, ids, n, steps, NULL);
    REQUIRE(whole);
    for (int k = 0; k < L; k++) {
        float *h = run_split(path, k, ids, n, steps, NULL);
        if (!h) continue;
        CHECK_MSG(!memcmp(h, whole, sizeof(float) * (n + steps) * dim),
                  "%s: layers [0,%d) then [%d,%d) differ from [0,%d)", path, k, k, L, L);
        free(h);
    }
    free(whole);
}

TEST(test_forward_split_composition_bit_identical) { check_split_composition(STORIES); }

/* A batch of positions and the same positions one at a time, for every weight type: the kernels are
 * batch-invariant, so the bits agree (the bar is 1e-4; we hold ourselves to exact). */
static void check_batch_vs_sequential(const char *path, duet_pool *pool) {
    char err[256];
    duet_model *m = load(path, NULL);
    if (!m) return;
    const duet_config *c = duet_model_config(m);
    int ids[] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298};
    int n = 11;
    float *batch = logits_batch(m, ids, n, pool);
    duet_part all = duet_part_all();
    duet_kv *kv = duet_kv_init(m, &all, n, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(m, 1, pool, err, sizeof err);
    float *h = malloc(sizeof(float) * c->dim), *lg = malloc(sizeof(float) * c->vocab_size);
    double worst = 0;
    for (int t = 0; batch && kv && ctx && t < n; t++) {
        if (duet_embed(ctx, &ids[t], 1, h, err, sizeof err) ||
            duet_forward(ctx, kv, 0, c->n_layers, h, 1, t, err, sizeof err) ||
            duet_head(ctx, h, 1, lg, err, sizeof err)) {
            test_fail(__FILE__, __LINE__, "%s: %s", path, err);
            break;
        }
        for (int v = 0; v < c->vocab_size; v++) {
            double d = fabs(lg[v] - batch[t * c->vocab_size + v]);
            if (d > worst) worst = d;
        }
    }
    CHECK_MSG(worst == 0, "%s: batch and sequential logits differ by up to %g", path, worst);
    free(h);
    free(lg);
    free(batch);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    duet_model_free(m);
}

static const char *QUANT_FILES[] = {"small-f32.gguf", "small-f16.gguf", "small-q8_0.gguf",
                                    "small-q4_0.gguf", "small-q4_k_m.gguf", "small-q6_k.gguf"};

TEST(test_forward_batch_equals_sequential) {
    char err[64];
    duet_pool *pool = duet_pool_init(2, err, sizeof err);
    check_batch_vs_sequential(STORIES, NULL);
    for (size_t i = 0; i < sizeof QUANT_FILES / sizeof *QUANT_FILES; i++) {
        char path[256];
        snprintf(path, sizeof path, TEST_DATA "/quant/%s", QUANT_FILES[i]);
        check_batch_vs_sequential(path, NULL);
        check_batch_vs_sequential(path, pool); /* and threads change nothing either */
    }
    duet_pool_free(pool);
}

/* Repacked weights (quant_repack, done at load on AVX2 machines: Q8_0, Q4_0, Q4_K, Q6_K) change the layout, not the
 * result. On llama.cpp's Q8_0, Q4_0, Q4_K_M and Q6_K files, repacked logits equal bit for bit those of the file's
 * layout (DUET_NO_REPACK) under the scalar kernels, and under the best kernels for the K-quants (whose kernels all sum
 * in the reference's order); the plain SIMD kernels of Q8_0 and Q4_0 reassociate their float sums, so there the two
 * agree to rounding. */
TEST(test_forward_repacked_equals_plain) {
    static const char *files[] = {"small-q8_0.gguf", "small-q4_0.gguf", "small-q4_k_m.gguf", "small-q6_k.gguf"};
    if (quant_isa_best() < QUANT_ISA_AVX2) {
        printf("    (skipped: no repacking without AVX2)\n");
        return;
    }
    const char *old_isa = getenv("DUET_ISA");
    int ids[] = {1, 403, 407, 94, 263, 217};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char path[256];
        snprintf(path, sizeof path, TEST_DATA "/quant/%s", files[i]);
        duet_model *fast = load(path, NULL);
        setenv("DUET_NO_REPACK", "1", 1);
        duet_model *plain = load(path, NULL);
        unsetenv("DUET_NO_REPACK");
        REQUIRE(fast && plain);
        CHECK_MSG(fast->layers[0].wq.type & QUANT_REPACK8, "%s: layer 0's wq was not repacked", files[i]);
        CHECK(!(plain->layers[0].wq.type & QUANT_REPACK8));
        CHECK(!(fast->embd.type & QUANT_REPACK8)); /* looked up by rows */
        const size_t n = 6 * (size_t)duet_model_config(fast)->vocab_size;
        for (int scalar = 0; scalar < 2; scalar++) {
            if (scalar) setenv("DUET_ISA", "scalar", 1);
            float *a = logits_batch(fast, ids, 6, NULL), *b = logits_batch(plain, ids, 6, NULL);
            if (old_isa) setenv("DUET_ISA", old_isa, 1);
            else unsetenv("DUET_ISA");
            CHECK_MSG(a && b, "%s: no logits", files[i]);
            if (a && b && (scalar || i > 1)) {
                CHECK_MSG(!memcmp(a, b, sizeof(float) * n), "%s%s", files[i], scalar ? " (scalar)" : "");
            } else if (a && b) {
                float worst = 0, top = 0;
                for (size_t k = 0; k < n; k++) {
                    worst = fmaxf(worst, fabsf(a[k] - b[k]));
                    top = fmaxf(top, fabsf(b[k]));
                }
                CHECK_MSG(worst <= 1e-4f * top, "%s: logits differ by %g (largest %g)", files[i], worst, top);
            }
            free(a);
            free(b);
        }
        duet_model_free(fast);
        duet_model_free(plain);
    }
}

TEST(test_forward_kv_truncate_then_regenerate) {
    char err[256];
    duet_model *m = load(STORIES, NULL);
    REQUIRE(m);
    const duet_config *c = duet_model_config(m);
    int prompt[] = {1, 403, 407, 261, 378}, draft[] = {7, 99, 250}, next = 432;
    duet_part all = duet_part_all();
    duet_kv *kv = duet_kv_init(m, &all, 16, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(m, 8, NULL, err, sizeof err);
    float h[8 * 64], lg_a[512], lg_b[512];
    REQUIRE(kv && ctx && c->dim == 64 && c->vocab_size == 512);
    /* with a rejected draft: prompt, 3 drafted tokens, truncate back to the prompt, then the real token */
    CHECK(!duet_embed(ctx, prompt, 5, h, err, sizeof err));
    CHECK(!duet_forward(ctx, kv, 0, c->n_layers, h, 5, 0, err, sizeof err));
    CHECK(!duet_embed(ctx, draft, 3, h, err, sizeof err));
    CHECK(!duet_forward(ctx, kv, 0, c->n_layers, h, 3, 5, err, sizeof err));
    CHECK_EQ_INT(duet_kv_len(kv, 0), 8);
    duet_kv_truncate(kv, 5);
    CHECK_EQ_INT(duet_kv_len(kv, c->n_layers - 1), 5);
    CHECK(!duet_embed(ctx, &next, 1, h, err, sizeof err));
    CHECK(!duet_forward(ctx, kv, 0, c->n_layers, h, 1, 5, err, sizeof err));
    CHECK(!duet_head(ctx, h, 1, lg_a, err, sizeof err));
    /* never drafted */
    int ids[] = {1, 403, 407, 261, 378, 432};
    float *lg = logits_batch(m, ids, 6, NULL);
    REQUIRE(lg);
    memcpy(lg_b, lg + 5 * 512, sizeof lg_b);
    CHECK(!memcmp(lg_a, lg_b, sizeof lg_a));
    /* writing at the wrong position is refused, not silently accepted */
    CHECK(duet_forward(ctx, kv, 0, c->n_layers, h, 1, 3, err, sizeof err) == DUET_EINVAL);
    CHECK(strstr(err, "holds 6 positions") != NULL);
    free(lg);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    duet_model_free(m);
}

/* llama.cpp's logits for the quantized files, with the tolerances of tests/data/quant/README.md: llama.cpp
 * rounds activations to 8 bits like we do, but in a different summation order. And a numpy float64 forward
 * of the same file: our F32/F16 results must be within ~1e-4 of the float-activation one, our quantized
 * results close to the one that emulates 8-bit activations. */
TEST(test_forward_quant_files_match_references) {
    static const double tol_llamacpp[] = {1e-4, 0.01, 0.3, 0.3, 0.3, 0.3};
    static const double tol_numpy[] = {1e-4, 1e-4, 2e-3, 2e-3, 0.07, 0.07};
    for (size_t f = 0; f < sizeof QUANT_FILES / sizeof *QUANT_FILES; f++) {
        char path[256], err[256];
        snprintf(path, sizeof path, TEST_DATA "/quant/%s.refgen.json", QUANT_FILES[f]);
        json *ref = json_load_file(path, err, sizeof err);
        snprintf(path, sizeof path, TEST_DATA "/quant/%s.numpy-ref.json", QUANT_FILES[f]);
        json *np = json_load_file(path, err, sizeof err);
        snprintf(path, sizeof path, TEST_DATA "/quant/%s", QUANT_FILES[f]);
        duet_model *m = load(path, NULL);
        if (!ref || !np || !m) {
            test_fail(__FILE__, __LINE__, "%s: %s", path, err);
            json_free(ref);
            json_free(np);
            duet_model_free(m);
            continue;
        }
        int vocab = duet_model_config(m)->vocab_size;
        int ids[16];
        int n_pos = json_ids(json_get(json_root(ref), "logits_seq_ids"), ids, 16);
        const json_val *rl = json_get(json_root(ref), "logits_batch");
        const char *np_key = f < 2 ? "logits_float_act" : "logits_act_emulated";
        const json_val *nl = json_get(json_root(np), np_key);
        CHECK_EQ_INT(json_len(rl), n_pos);
        CHECK_EQ_INT(json_len(nl), n_pos);
        float *lg = logits_batch(m, ids, n_pos, NULL);
        double d_ref = 0, d_np = 0;
        for (int t = 0; lg && t < n_pos; t++)
            for (int v = 0; v < vocab; v++) {
                double x = lg[t * vocab + v];
                double a = fabs(x - json_num(json_at(json_at(rl, t), v)));
                double b = fabs(x - json_num(json_at(json_at(nl, t), v)));
                if (a > d_ref) d_ref = a;
                if (b > d_np) d_np = b;
            }
        printf("    %-18s max |d| vs llama.cpp %.3g (tol %g), vs numpy %s %.3g (tol %g)\n", QUANT_FILES[f], d_ref,
               tol_llamacpp[f], np_key, d_np, tol_numpy[f]);
        CHECK_MSG(lg && d_ref <= tol_llamacpp[f], "%s: %g from llama.cpp", QUANT_FILES[f], d_ref);
        CHECK_MSG(lg && d_np <= tol_numpy[f], "%s: %g from numpy", QUANT_FILES[f], d_np);
        free(lg);
        json_free(ref);
        json_free(np);
        duet_model_free(m);
    }
}

TEST(test_forward_f32_quant_file_greedy_matches_llamacpp) {
    char err[256];
    json *ref = json_load_file(TEST_DATA "/quant/small-f32.gguf.refgen.json", err, sizeof err);
    REQUIRE_MSG(ref, "%s", err);
    duet_model *m = load(TEST_DATA "/quant/small-f32.gguf", NULL);
    if (m) {
        int prompt[16], want[32], got[32];
        int n = json_ids(json_get(json_root(ref), "prompt_ids"), prompt, 16);
        int n_want = json_ids(json_get(json_root(ref), "output_ids"), want, 32);
        CHECK_EQ_INT(greedy(m, prompt, n, n_want, got), n_want);
        for (int i = 0; i < n_want; i++) CHECK_EQ_INT(got[i], want[i]);
    }
    duet_model_free(m);
    json_free(ref);
}

TEST(test_forward_part_holds_only_its_layers) {
    char err[256];
    duet_model *m = load(STORIES, "0:2,embed");
    REQUIRE(m);
    const duet_part *p = duet_model_part(m);
    CHECK(duet_part_has_layer(p, 1) && !duet_part_has_layer(p, 2) && p->embed && !p->head);
    duet_ctx *ctx = duet_ctx_init(m, 4, NULL, err, sizeof err);
    duet_kv *kv = duet_kv_init(m, p, 8, err, sizeof err);
    float h[4 * 64], lg[512];
    int ids[] = {1, 2};
    CHECK(!duet_embed(ctx, ids, 2, h, err, sizeof err));
    CHECK(duet_forward(ctx, kv, 0, 3, h, 2, 0, err, sizeof err) == DUET_EINVAL && strstr(err, "layer 2"));
    CHECK(duet_head(ctx, h, 1, lg, err, sizeof err) == DUET_EINVAL && strstr(err, "head"));
    duet_part other;
    CHECK(!duet_part_parse("3:5", &other, err, sizeof err));
    CHECK(duet_kv_init(m, &other, 8, err, sizeof err) == NULL && strstr(err, "not held"));
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    /* the held part's weight bytes are only its own: two layers of 5, no head */
    duet_model *all = load(STORIES, NULL);
    if (all) CHECK(duet_model_weight_bytes(m) < duet_model_weight_bytes(all) / 2);
    CHECK(duet_model_fingerprint(m) == duet_model_fingerprint(all));
    duet_model_free(all);
    duet_model_free(m);
    /* bad part specs and ranges */
    CHECK(duet_part_parse("3:1", &other, err, sizeof err) < 0);
    CHECK(duet_part_parse("0:2,bogus", &other, err, sizeof err) < 0);
    CHECK(!duet_part_parse("0:9", &other, err, sizeof err));
    CHECK(duet_model_load(STORIES, &other, 0, err, sizeof err) == NULL && strstr(err, "outside"));
    CHECK(!duet_part_parse("0:3,2:4", &other, err, sizeof err));
    CHECK(duet_model_load(STORIES, &other, 0, err, sizeof err) == NULL && strstr(err, "overlap"));
    CHECK(duet_model_load("tests/data/no-such-file.gguf", NULL, 0, err, sizeof err) == NULL);
    CHECK(duet_model_load(TEST_DATA "/vocab/ggml-vocab-llama-spm.gguf", NULL, 0, err, sizeof err) == NULL &&
          strstr(err, "missing"));
}

/* Copying the weights out of the mapping (the default) must change where they are read, not what is computed:
 * the same logits bit for bit, the copy outside the file's pages, a tied head still sharing the embedding. */
TEST(test_forward_copied_weights_equal_mapped) {
    char err[256];
    duet_model *copied = duet_model_load(STORIES, NULL, 0, err, sizeof err);
    duet_model *mapped = duet_model_load(STORIES, NULL, DUET_LOAD_MMAP, err, sizeof err);
    REQUIRE(copied && mapped);
    const gguf_tensor *q = gguf_find_tensor(copied->file, "blk.0.attn_q.weight");
    REQUIRE(q);
    CHECK(copied->layers[0].wq.data != q->data && copied->weights);
    CHECK(mapped->layers[0].wq.data == gguf_find_tensor(mapped->file, "blk.0.attn_q.weight")->data);
    CHECK(!mapped->weights);
    CHECK(copied->out.data == copied->embd.data); /* stories260K ties its head to the embedding */
    CHECK(duet_model_weight_bytes(copied) == duet_model_weight_bytes(mapped));
    int ids[] = {1, 403, 407, 94, 263, 217};
    float *a = logits_batch(copied, ids, 6, NULL), *b = logits_batch(mapped, ids, 6, NULL);
    if (a && b) CHECK(!memcmp(a, b, sizeof(float) * 6 * duet_model_config(copied)->vocab_size));
    free(a);
    free(b);
    duet_model_free(copied);
    duet_model_free(mapped);
}

TEST(test_forward_fingerprint_differs_between_models) {
    duet_model *a = load(STORIES, "embed"), *b = load(TEST_DATA "/quant/small-f32.gguf", "embed"),
               *c = load(TEST_DATA "/quant/small-f16.gguf", "embed");
    if (a && b && c) {
        CHECK(duet_model_fingerprint(a) != duet_model_fingerprint(b));
        CHECK(duet_model_fingerprint(b) != duet_model_fingerprint(c));
        CHECK(duet_model_fingerprint(a) == duet_model_fingerprint(a));
    }
    duet_model_free(a);
    duet_model_free(b);
    duet_model_free(c);
}

/* ---- Llama 3.1, Qwen2, Qwen3 ---------------------------------------------------------------------------- */

static const char *const ARCH_MODELS[] = {"llama3-tiny", "qwen2-tiny", "qwen3-tiny"};

/* Reference model a and llama.cpp's run of it (*doc); NULL (test failed) if either is unreadable. */
static duet_model *arch_open(size_t a, json **doc) {
    char path[256], err[256];
    snprintf(path, sizeof path, TEST_DATA "/arch/%s.gguf.refgen.json", ARCH_MODELS[a]);
    *doc = json_load_file(path, err, sizeof err);
    if (!*doc) {
        test_fail(__FILE__, __LINE__, "%s", err);
        return NULL;
    }
    snprintf(path, sizeof path, TEST_DATA "/arch/%s.gguf", ARCH_MODELS[a]);
    duet_model *m = load(path, NULL);
    if (!m) json_free(*doc);
    return m;
}

/* llama.cpp's logits at positions 0 and 5 of "Once upon a time" + its first output, within 1e-4, and the
 * prompt ids from our byte-level BPE tokenizer (BOS only for the Llama 3 file). */
TEST(test_forward_arch_logits_match_llamacpp) {
    for (size_t a = 0; a < 3; a++) {
        char path[256], err[256];
        json *doc;
        duet_model *m = arch_open(a, &doc);
        if (!m) continue;
        const duet_config *c = duet_model_config(m);
        CHECK_EQ_INT(c->vocab_size, 50257);
        CHECK(c->tied_output);
        const json_val *r = json_root(doc);
        int seq[8], prompt[8], ids[16];
        int n = json_ids(json_get(r, "logits_seq_ids"), seq, 8), n_prompt = json_ids(json_get(r, "prompt_ids"), prompt, 8);
        REQUIRE(n == 6);
        const duet_tokenizer *tok = duet_model_tokenizer(m, err, sizeof err);
        REQUIRE_MSG(tok, "%s", err);
        int got = duet_tokenize(tok, "Once upon a time", 16, true, ids, 16);
        CHECK_EQ_INT(got, n_prompt);
        for (int i = 0; i < got && i < n_prompt; i++) CHECK_EQ_INT(ids[i], prompt[i]);
        snprintf(path, sizeof path, TEST_DATA "/arch/%s.gguf.logits-batch-pos0-5.f32", ARCH_MODELS[a]);
        size_t len;
        float *want = (float *)test_read_file(path, &len);
        REQUIRE(want && len == 2 * sizeof(float) * 50257);
        float *lg = logits_batch(m, seq, n, NULL);
        double worst = 0;
        for (int row = 0; lg && row < 2; row++) {
            int pos = row ? 5 : 0;
            for (int v = 0; v < 50257; v++) {
                double d = fabs(lg[(size_t)pos * 50257 + v] - want[(size_t)row * 50257 + v]);
                if (d > worst) worst = d;
            }
        }
        CHECK_MSG(lg && worst <= 1e-4, "%s: logits differ from llama.cpp's by up to %g", ARCH_MODELS[a], worst);
        printf("    %s: max |logit - llama.cpp| = %.2g\n", ARCH_MODELS[a], worst);
        free(lg);
        free(want);
        duet_model_free(m);
        json_free(doc);
    }
}

TEST(test_forward_arch_greedy_matches_llamacpp) {
    for (size_t a = 0; a < 3; a++) {
        json *doc;
        duet_model *m = arch_open(a, &doc);
        if (!m) continue;
        int prompt[8], want[16], got[16];
        int n_prompt = json_ids(json_get(json_root(doc), "prompt_ids"), prompt, 8);
        int n_want = json_ids(json_get(json_root(doc), "output_ids"), want, 16);
        REQUIRE(n_want == 16);
        int n_got = greedy(m, prompt, n_prompt, n_want, got);
        CHECK_EQ_INT(n_got, n_want);
        for (int i = 0; i < n_got && i < n_want; i++)
            CHECK_MSG(got[i] == want[i], "%s: token %d is %d, llama.cpp says %d", ARCH_MODELS[a], i, got[i], want[i]);
        duet_model_free(m);
        json_free(doc);
    }
}

/* Every mode composes layer ranges: they must stay bit-exact, and a batch must equal one at a time. */
TEST(test_forward_arch_split_and_batch_exact) {
    for (size_t a = 0; a < 3; a++) {
        char path[256];
        snprintf(path, sizeof path, TEST_DATA "/arch/%s.gguf", ARCH_MODELS[a]);
        check_split_composition(path);
        check_batch_vs_sequential(path, NULL);
    }
}

/* A copy of path with the bytes `from` (first occurrence) replaced by `to` (same length), loaded: the
 * message must contain `what`. */
#define expect_patched_refused(path, from, to, what) patched_refused(path, from, to, sizeof(from) - 1, what)

static void patched_refused(const char *path, const char *from, const char *to, size_t n, const char *what) {
    size_t len;
    char *buf = test_read_file(path, &len), tmp[64], err[512] = "";
    REQUIRE(buf);
    char *at = memmem(buf, len, from, n);
    REQUIRE_MSG(at, "%s: no '%s'", path, from);
    memcpy(at, to, n);
    strcpy(tmp, "/tmp/duet-test-arch-XXXXXX");
    int fd = mkstemp(tmp);
    REQUIRE(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    REQUIRE(f && fwrite(buf, 1, len, f) == len);
    fclose(f);
    duet_model *m = duet_model_load(tmp, NULL, 0, err, sizeof err);
    CHECK_MSG(!m, "%s with '%s' loaded", path, to);
    CHECK_MSG(strstr(err, what) != NULL, "message \"%s\" lacks \"%s\"", err, what);
    duet_model_free(m);
    unlink(tmp);
    free(buf);
}

TEST(test_forward_arch_missing_tensors_named) {
    expect_patched_refused(TEST_DATA "/arch/qwen2-tiny.gguf", "blk.1.attn_k.bias", "blk.1.attn_k.biaZ",
                           "tensor 'blk.1.attn_k.bias' is missing");
    expect_patched_refused(TEST_DATA "/arch/qwen3-tiny.gguf", "blk.0.attn_q_norm.weight", "blk.0.attn_q_norm.weighZ",
                           "tensor 'blk.0.attn_q_norm.weight' is missing");
    expect_patched_refused(TEST_DATA "/arch/qwen3-tiny.gguf", "\5\0\0\0\0\0\0\0qwen3", "\5\0\0\0\0\0\0\0qwen9",
                           "architecture 'qwen9' is not supported");
    expect_patched_refused(TEST_DATA "/arch/qwen3-tiny.gguf", "qwen3.attention.key_length", "qwen3.attention.key_lengtZ",
                           "'qwen3.attention.value_length' = 16 differs from 'qwen3.attention.key_length' = 8");
}

/* llama3-tiny rewritten with rope scaling keys added (type, factor); 0 ok. */
static int write_scaled(const char *dst, const char *type, float factor, char *err, size_t errlen) {
    gguf *g = gguf_open(TEST_DATA "/arch/llama3-tiny.gguf", err, errlen);
    if (!g) return -1;
    gguf_writer *w = gguf_writer_init();
    int rc = gguf_copy_kv(w, g, "") || gguf_set_str(w, "llama.rope.scaling.type", type) ||
             gguf_set_f32(w, "llama.rope.scaling.factor", factor);
    for (int i = 0; i < gguf_n_tensors(g) && !rc; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        rc = gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, NULL, NULL);
    }
    if (!rc) rc = gguf_writer_write(w, dst, NULL, NULL, err, errlen);
    gguf_writer_free(w);
    gguf_close(g);
    return rc;
}

/* Linear rope scaling divides positions by its factor: 1 changes no bit, 4 changes the logits; a scaling type
 * duet does not implement is refused by name. */
TEST(test_forward_rope_linear_scaling) {
    char path[] = "/tmp/duet-test-rope-XXXXXX", err[512] = "";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    int ids[] = {50256, 7454, 2402, 257, 640, 1361};
    duet_model *base = load(TEST_DATA "/arch/llama3-tiny.gguf", NULL);
    REQUIRE(base);
    float *want = logits_batch(base, ids, 6, NULL);
    duet_model_free(base);
    REQUIRE(want);
    for (int k = 0; k < 2; k++) {
        REQUIRE_MSG(write_scaled(path, "linear", k ? 4.0f : 1.0f, err, sizeof err) == 0, "%s", err);
        duet_model *m = load(path, NULL);
        REQUIRE(m);
        float *lg = logits_batch(m, ids, 6, NULL);
        REQUIRE(lg);
        double worst = 0;
        for (int v = 0; v < 6 * 50257; v++) worst = fmax(worst, fabs(lg[v] - want[v]));
        if (k) CHECK_MSG(worst > 1e-3, "factor 4 moved the logits by only %g", worst);
        else CHECK_MSG(worst == 0, "factor 1 moved the logits by %g", worst);
        free(lg);
        duet_model_free(m);
    }
    REQUIRE_MSG(write_scaled(path, "yarn", 4.0f, err, sizeof err) == 0, "%s", err);
    duet_model *m = duet_model_load(path, NULL, 0, err, sizeof err);
    CHECK(!m);
    CHECK_MSG(strstr(err, "'llama.rope.scaling.type' = 'yarn' is not supported"), "%s", err);
    duet_model_free(m);
    free(want);
    unlink(path);
}

/* ---- several sessions in one pass (duet_forward_multi) ---- */

/* Deterministic input rows in [-1, 1). */
static void fill_rows(float *x, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

/* Four sessions with histories of different lengths advance by 3, 1, 0 and 6 rows over layers [a,b): one
 * duet_forward_multi (scratch of 4 rows, so segments straddle chunks) against duet_forward on each alone, on
 * outputs and on every cached key and value. */
static void check_multi(const char *path, int a, int b, duet_pool *pool) {
    enum { S = 4 };
    const int hist[S] = {0, 7, 3, 2}, step[S] = {3, 1, 0, 6};
    char err[256] = "";
    duet_model *m = load(path, NULL);
    if (!m) return;
    const duet_config *c = duet_model_config(m);
    const int dim = c->dim, kv_dim = c->n_kv_heads * c->head_dim, n_ctx = 16;
    duet_part part = {.n_spans = 1, .span = {{a, b}}};
    duet_kv *kr[S], *km[S];
    duet_ctx *ctx = duet_ctx_init(m, 4, pool, err, sizeof err);
    float *hr = calloc((size_t)10 * dim, sizeof(float)), *hm = calloc((size_t)10 * dim, sizeof(float)); /* [10][dim] */
    duet_seg seg[S];
    int ok = ctx && hr && hm, total = 0;
    for (int s = 0; s < S; s++) {
        kr[s] = duet_kv_init(m, &part, n_ctx, err, sizeof err);
        km[s] = duet_kv_init(m, &part, n_ctx, err, sizeof err);
        ok = ok && kr[s] && km[s];
        float hist_rows[8 * 512];
        REQUIRE(dim <= 512);
        fill_rows(hist_rows, (size_t)hist[s] * dim, 100u + (unsigned)s);
        float copy[8 * 512];
        memcpy(copy, hist_rows, sizeof(float) * (size_t)hist[s] * dim);
        ok = ok && !duet_forward(ctx, kr[s], a, b, hist_rows, hist[s], 0, err, sizeof err) &&
             !duet_forward(ctx, km[s], a, b, copy, hist[s], 0, err, sizeof err);
        if (!ok) break;
        fill_rows(hr + (size_t)total * dim, (size_t)step[s] * dim, 200u + (unsigned)s);
        seg[s] = (duet_seg){.kv = km[s], .pos0 = hist[s], .n = step[s]};
        total += step[s];
    }
    REQUIRE_MSG(ok, "%s: setup: %s", path, err);
    memcpy(hm, hr, sizeof(float) * (size_t)total * dim);
    CHECK_MSG(!duet_forward_multi(ctx, a, b, hm, seg, S, err, sizeof err), "%s: %s", path, err);
    for (int s = 0, t = 0; s < S; t += step[s++])
        CHECK_MSG(!duet_forward(ctx, kr[s], a, b, hr + (size_t)t * dim, step[s], hist[s], err, sizeof err), "%s", err);
    CHECK_MSG(!memcmp(hr, hm, sizeof(float) * (size_t)total * dim), "%s %d:%d: multi-session rows differ", path, a, b);
    for (int s = 0; s < S; s++)
        for (int l = a; l < b; l++) {
            size_t bytes = sizeof(float) * (size_t)(hist[s] + step[s]) * kv_dim;
            CHECK(duet_kv_len(km[s], l) == hist[s] + step[s]);
            CHECK_MSG(!memcmp(kr[s]->k[l], km[s]->k[l], bytes) && !memcmp(kr[s]->v[l], km[s]->v[l], bytes),
                      "%s: session %d layer %d: cached keys or values differ", path, s, l);
        }
    /* refused as a whole: a stale position, or two segments of one cache; nothing is run */
    duet_seg bad[2] = {{km[0], hist[0] + step[0], 1}, {km[1], 0, 1}};
    CHECK(duet_forward_multi(ctx, a, b, hm, bad, 2, err, sizeof err) == DUET_EINVAL && strstr(err, "positions"));
    CHECK(duet_kv_len(km[0], a) == hist[0] + step[0]);
    bad[1] = bad[0];
    CHECK(duet_forward_multi(ctx, a, b, hm, bad, 2, err, sizeof err) == DUET_EINVAL && strstr(err, "share"));
    for (int s = 0; s < S; s++) {
        duet_kv_free(kr[s]);
        duet_kv_free(km[s]);
    }
    free(hr);
    free(hm);
    duet_ctx_free(ctx);
    duet_model_free(m);
}

/* A batch long enough that the threads split every step (SwiGLU's elementwise step too: n * ffn >= 65536 here) gives
 * the one-thread logits bit for bit. */
TEST(test_forward_threads_split_a_long_batch_exactly) {
    char err[64];
    duet_pool *pool = duet_pool_init(2, err, sizeof err);
    duet_model *m = load(TEST_DATA "/quant/small-q8_0.gguf", NULL);
    REQUIRE(pool && m);
    enum { N = 96 };
    REQUIRE((size_t)N * duet_model_config(m)->ffn_dim >= 65536);
    int ids[N];
    for (int t = 0; t < N; t++) ids[t] = (37 * t + 1) % duet_model_config(m)->vocab_size;
    float *one = logits_batch(m, ids, N, NULL), *two = logits_batch(m, ids, N, pool);
    CHECK(one && two);
    if (one && two) CHECK(!memcmp(one, two, sizeof(float) * N * duet_model_config(m)->vocab_size));
    free(one);
    free(two);
    duet_model_free(m);
    duet_pool_free(pool);
}

TEST(test_forward_multi_equals_separate) {
    char err[64];
    duet_pool *pool = duet_pool_init(2, err, sizeof err);
    check_multi(STORIES, 0, 5, NULL);
    check_multi(STORIES, 2, 5, pool); /* a split cloud's range */
    check_multi(STORIES, 1, 3, NULL); /* a middle range (hat) */
    check_multi(TEST_DATA "/quant/small-q8_0.gguf", 0, 2, pool);
    check_multi(TEST_DATA "/quant/small-q4_k_m.gguf", 1, 2, NULL);
    for (size_t i = 0; i < 3; i++) { /* biases (qwen2), q/k norms (qwen3), grouped-query attention */
        char path[256];
        snprintf(path, sizeof path, TEST_DATA "/arch/%s.gguf", ARCH_MODELS[i]);
        check_multi(path, 0, 2, pool);
    }
    duet_pool_free(pool);
}
