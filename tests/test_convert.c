/* duet convert (llama2.c -> GGUF) and duet synth (random weights): the files they write carry the right
 * metadata, shapes and bytes; the vocabulary equals llama.cpp's; bad inputs are refused with clear errors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "duet.h"
#include "engine/gguf.h"
#include "engine/llama2c.h"
#include "engine/quant.h"
#include "engine/synth.h"
#include "engine/tokenizer.h"
#include "test.h"

#define CKPT TEST_DATA "/stories260K.bin"
#define TOK TEST_DATA "/tok512.bin"

static void tmp_path(char *out, size_t n, const char *name) {
    snprintf(out, n, "/tmp/duet-test-convert-%d-%s", (int)getpid(), name);
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n);
    if (b && fread(b, 1, *n, f) != *n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

/* The checkpoint's floats, after its 7-int header: *n of them at (float *)(*buf + 28). */
static const float *load_ckpt(uint8_t **buf, size_t *n) {
    size_t len = 0;
    *buf = read_all(CKPT, &len);
    *n = len > 28 ? (len - 28) / 4 : 0;
    return *buf ? (const float *)(*buf + 28) : NULL;
}

static void check_u32(const gguf *g, const char *key, uint32_t want) {
    uint32_t v = 0;
    int rc = gguf_get_u32(g, key, &v);
    CHECK_MSG(rc == 0 && v == want, "%s: rc %d, %u != %u", key, rc, v, want);
}

static void check_shape(const gguf *g, const char *name, int type, int64_t ne0, int64_t ne1) {
    const gguf_tensor *t = gguf_find_tensor(g, name);
    CHECK_MSG(t, "%s missing", name);
    if (!t) return;
    CHECK_MSG(t->type == type && t->ne[0] == ne0 && t->ne[1] == ne1 && t->n_dims == (ne1 > 1 ? 2 : 1),
              "%s: type %d [%lld, %lld]", name, t->type, (long long)t->ne[0], (long long)t->ne[1]);
}

TEST(test_convert_stories260K_f32) {
    char out[256], err[512] = "";
    tmp_path(out, sizeof out, "s.gguf");
    llama2c_config c;
    REQUIRE_MSG(llama2c_convert(CKPT, TOK, out, DUET_TYPE_F32, &c, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(c.dim == 64 && c.hidden_dim == 172 && c.n_layers == 5 && c.n_heads == 8 && c.n_kv_heads == 4);
    CHECK(c.vocab_size == 512 && c.seq_len == 512 && c.shared_classifier);
    gguf *g = gguf_open(out, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    const char *s = NULL;
    CHECK(gguf_get_str(g, "general.architecture", &s) == 0 && !strcmp(s, "llama"));
    check_u32(g, "general.file_type", 0);
    check_u32(g, "llama.context_length", 512);
    check_u32(g, "llama.embedding_length", 64);
    check_u32(g, "llama.block_count", 5);
    check_u32(g, "llama.feed_forward_length", 172);
    check_u32(g, "llama.rope.dimension_count", 8);
    check_u32(g, "llama.attention.head_count", 8);
    check_u32(g, "llama.attention.head_count_kv", 4);
    check_u32(g, "tokenizer.ggml.bos_token_id", 1);
    check_u32(g, "tokenizer.ggml.eos_token_id", 2);
    check_u32(g, "tokenizer.ggml.unknown_token_id", 0);
    float f = 0;
    CHECK(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f) == 0 && f == 1e-5f);
    CHECK(gguf_get_f32(g, "llama.rope.freq_base", &f) == 0 && f == 10000.0f);
    CHECK(gguf_get_str(g, "tokenizer.ggml.model", &s) == 0 && !strcmp(s, "llama"));

    CHECK_EQ_INT(gguf_n_tensors(g), 2 + 9 * 5); /* output shares the embedding: no output.weight */
    CHECK(gguf_find_tensor(g, "output.weight") == NULL);
    check_shape(g, "token_embd.weight", DUET_TYPE_F32, 64, 512);
    check_shape(g, "output_norm.weight", DUET_TYPE_F32, 64, 1);
    check_shape(g, "blk.0.attn_norm.weight", DUET_TYPE_F32, 64, 1);
    check_shape(g, "blk.0.attn_q.weight", DUET_TYPE_F32, 64, 64);
    check_shape(g, "blk.3.attn_k.weight", DUET_TYPE_F32, 64, 32);
    check_shape(g, "blk.4.attn_v.weight", DUET_TYPE_F32, 64, 32);
    check_shape(g, "blk.2.attn_output.weight", DUET_TYPE_F32, 64, 64);
    check_shape(g, "blk.1.ffn_gate.weight", DUET_TYPE_F32, 64, 172);
    check_shape(g, "blk.1.ffn_down.weight", DUET_TYPE_F32, 172, 64);
    check_shape(g, "blk.1.ffn_up.weight", DUET_TYPE_F32, 64, 172);

    /* The bytes are the checkpoint's: embedding first, w2 of layer 4 and rms_final at their read_checkpoint
     * offsets (emb 32768, rms_att 320, wq 20480, wk 10240, wv 10240, wo 20480, rms_ffn 320, w1 55040, w2 55040). */
    size_t n;
    uint8_t *ck;
    const float *x = load_ckpt(&ck, &n);
    REQUIRE(x && n == 264128);
    const gguf_tensor *t = gguf_find_tensor(g, "token_embd.weight");
    CHECK(t && !memcmp(t->data, x, 512 * 64 * 4));
    size_t w2 = 32768 + 320 + 20480 + 10240 + 10240 + 20480 + 320 + 55040;
    t = gguf_find_tensor(g, "blk.4.ffn_down.weight");
    CHECK(t && !memcmp(t->data, x + w2 + 4 * 64 * 172, 64 * 172 * 4));
    t = gguf_find_tensor(g, "output_norm.weight");
    CHECK(t && !memcmp(t->data, x + w2 + 55040 + 55040, 64 * 4));
    free(ck);

    size_t len = 0;
    const char *tok = gguf_arr_str(g, "tokenizer.ggml.tokens", 259, &len);
    CHECK(tok && !strcmp(tok, "\xe2\x96\x81t")); /* llama2.c's " t" back as SentencePiece's "▁t" */
    tok = gguf_arr_str(g, "tokenizer.ggml.tokens", 2, &len);
    CHECK(tok && !strcmp(tok, "</s>")); /* not llama2.c's "\n</s>\n" */
    int64_t ty = 0;
    CHECK(gguf_arr_i64(g, "tokenizer.ggml.token_type", 3 + 0x41, &ty) == 0 && ty == 6); /* <0x41> */
    CHECK(gguf_arr_i64(g, "tokenizer.ggml.token_type", 1, &ty) == 0 && ty == 3);
    CHECK(gguf_arr_i64(g, "tokenizer.ggml.token_type", 300, &ty) == 0 && ty == 1);
    gguf_close(g);
    unlink(out);
}

TEST(test_convert_tokenizes_like_llamacpp) {
    char out[256], err[512] = "";
    tmp_path(out, sizeof out, "tok.gguf");
    REQUIRE_MSG(llama2c_convert(CKPT, TOK, out, DUET_TYPE_F32, NULL, NULL, NULL, err, sizeof err) == 0, "%s", err);
    gguf *g = gguf_open(out, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    duet_tokenizer *t = tokenizer_load(g, err, sizeof err);
    CHECK_MSG(t, "%s", err);
    if (t) {
        int ids[16];
        const char *text = "Once upon a time";
        int n = duet_tokenize(t, text, strlen(text), true, ids, 16);
        const int want[] = {1, 403, 407, 261, 378}; /* llama.cpp's prompt_ids in stories260K-greedy.jsonl */
        CHECK_EQ_INT(n, 5);
        for (int i = 0; i < 5 && i < n; i++) CHECK_EQ_INT(ids[i], want[i]);
        tokenizer_free(t);
    }
    gguf_close(g);
    unlink(out);
}

/* The Llama-2 vocabulary, converted from llama2.c's tokenizer.bin, equals the one llama.cpp's own converter
 * wrote from the SentencePiece model (tests/data/vocab): every piece, score and token type. */
TEST(test_convert_vocab_equals_llamacpp) {
    char out[256], err[512] = "";
    tmp_path(out, sizeof out, "vocab.gguf");
    gguf_writer *w = gguf_writer_init();
    int n = 0;
    REQUIRE_MSG(llama2c_add_vocab(w, "models/llama2-tokenizer.bin", 0, &n, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(n, 32000);
    REQUIRE_MSG(gguf_writer_write(w, out, NULL, NULL, err, sizeof err) == 0, "%s", err);
    gguf_writer_free(w);
    gguf *g = gguf_open(out, err, sizeof err);
    gguf *ref = gguf_open(TEST_DATA "/vocab/ggml-vocab-llama-spm.gguf", err, sizeof err);
    REQUIRE(g && ref);
    int bad = 0;
    for (size_t i = 0; i < 32000 && bad < 5; i++) {
        size_t la = 0, lb = 0;
        const char *a = gguf_arr_str(g, "tokenizer.ggml.tokens", i, &la);
        const char *b = gguf_arr_str(ref, "tokenizer.ggml.tokens", i, &lb);
        float sa = 1, sb = 2;
        int64_t ta = -1, tb = -2;
        gguf_arr_f32(g, "tokenizer.ggml.scores", i, &sa);
        gguf_arr_f32(ref, "tokenizer.ggml.scores", i, &sb);
        gguf_arr_i64(g, "tokenizer.ggml.token_type", i, &ta);
        gguf_arr_i64(ref, "tokenizer.ggml.token_type", i, &tb);
        if (!a || !b || la != lb || memcmp(a, b, la) || sa != sb || ta != tb) {
            bad++;
            test_fail(__FILE__, __LINE__, "token %zu: '%s' %g %lld vs llama.cpp '%s' %g %lld", i, a ? a : "?",
                      (double)sa, (long long)ta, b ? b : "?", (double)sb, (long long)tb);
        }
    }
    gguf_close(g);
    gguf_close(ref);
    unlink(out);
}

TEST(test_convert_quantized_types) {
    char out[256], err[512] = "";
    tmp_path(out, sizeof out, "q8.gguf");
    REQUIRE_MSG(llama2c_convert(CKPT, TOK, out, DUET_TYPE_Q8_0, NULL, NULL, NULL, err, sizeof err) == 0, "%s", err);
    gguf *g = gguf_open(out, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    check_u32(g, "general.file_type", 7);
    check_shape(g, "blk.0.attn_q.weight", DUET_TYPE_Q8_0, 64, 64);
    check_shape(g, "blk.0.ffn_down.weight", DUET_TYPE_F16, 172, 64); /* 172 is no multiple of 32 */
    check_shape(g, "blk.0.ffn_norm.weight", DUET_TYPE_F32, 64, 1);
    size_t n;
    uint8_t *ck;
    const float *x = load_ckpt(&ck, &n);
    const gguf_tensor *t = gguf_find_tensor(g, "token_embd.weight");
    REQUIRE(x && t && t->type == DUET_TYPE_Q8_0);
    float row[64];
    double max_err = 0, max_abs = 0;
    for (int r = 0; r < 512; r++) {
        REQUIRE(quant_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)r * 68, row, 64) == 0);
        for (int i = 0; i < 64; i++) {
            double e = fabs(row[i] - x[r * 64 + i]);
            if (e > max_err) max_err = e;
            if (fabs(x[r * 64 + i]) > max_abs) max_abs = fabs(x[r * 64 + i]);
        }
    }
    CHECK_MSG(max_err > 0 && max_err <= max_abs / 127.0, "q8_0 error %g of max %g", max_err, max_abs);
    free(ck);
    gguf_close(g);
    unlink(out);
    /* K-quants need rows of 256: every stories260K matrix falls back to F16. */
    REQUIRE_MSG(llama2c_convert(CKPT, TOK, out, DUET_TYPE_Q4_K, NULL, NULL, NULL, err, sizeof err) == 0, "%s", err);
    g = gguf_open(out, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    check_shape(g, "blk.0.attn_q.weight", DUET_TYPE_F16, 64, 64);
    gguf_close(g);
    unlink(out);
}

/* Writes the first n bytes of the checkpoint, then `tail` (may be NULL) of tail_len bytes, to path. */
static int write_ckpt_variant(const char *path, size_t n, const void *head, size_t head_len) {
    FILE *in = fopen(CKPT, "rb"), *o = fopen(path, "wb");
    if (!in || !o) return -1;
    char *buf = malloc(n);
    size_t got = fread(buf, 1, n, in);
    if (head) memcpy(buf, head, head_len);
    fwrite(buf, 1, got, o);
    free(buf);
    fclose(in);
    return fclose(o);
}

static void expect_convert_fails(const char *ckpt, const char *tok, const char *word, int line) {
    char out[256], err[512] = "";
    tmp_path(out, sizeof out, "bad.gguf");
    int rc = llama2c_convert(ckpt, tok, out, DUET_TYPE_F32, NULL, NULL, NULL, err, sizeof err);
    if (rc >= 0) test_fail(__FILE__, line, "accepted; expected '%s'", word);
    else if (!strstr(err, word)) test_fail(__FILE__, line, "message '%s' lacks '%s'", err, word);
    if (access(out, F_OK) == 0) test_fail(__FILE__, line, "left %s behind", out);
}

TEST(test_convert_bad_inputs) {
    char bad[256];
    tmp_path(bad, sizeof bad, "bad.bin");
    REQUIRE(write_ckpt_variant(bad, 1056540 - 4, NULL, 0) == 0); /* one float short */
    expect_convert_fails(bad, TOK, "needs exactly 1056540", __LINE__);
    REQUIRE(write_ckpt_variant(bad, 20, NULL, 0) == 0);
    expect_convert_fails(bad, TOK, "shorter than its header", __LINE__);
    const int32_t garbage[7] = {64, 172, 5, 8, 3, 512, 512}; /* 8 heads cannot share 3 kv heads */
    REQUIRE(write_ckpt_variant(bad, 1056540, garbage, sizeof garbage) == 0);
    expect_convert_fails(bad, TOK, "kv heads", __LINE__);
    const int32_t text[2] = {0x6c6c6548, 0x6f77206f}; /* "Hello wo": a text file */
    REQUIRE(write_ckpt_variant(bad, 1056540, text, sizeof text) == 0);
    expect_convert_fails(bad, TOK, "not a llama2.c file", __LINE__);
    const int32_t untied[7] = {64, 172, 5, 8, 4, -512, 512}; /* says a classifier follows: 128 KiB missing */
    REQUIRE(write_ckpt_variant(bad, 1056540, untied, sizeof untied) == 0);
    expect_convert_fails(bad, TOK, "+ classifier", __LINE__);
    const int32_t most_negative[7] = {64, 172, 5, 8, 4, INT32_MIN, 512}; /* has no positive counterpart */
    REQUIRE(write_ckpt_variant(bad, 1056540, most_negative, sizeof most_negative) == 0);
    expect_convert_fails(bad, TOK, "vocab_size = -2147483648", __LINE__);
    unlink(bad);
    expect_convert_fails("tests/data/missing.bin", TOK, "cannot open", __LINE__);
    expect_convert_fails(CKPT, "models/llama2-tokenizer.bin", "has 32000 pieces", __LINE__);
    FILE *f = fopen(bad, "wb");
    REQUIRE(f);
    const int32_t tok_head[3] = {7, 0, 100}; /* max length, then a piece of score 0 and 100 bytes: cut short */
    fwrite(tok_head, 4, 3, f);
    fclose(f);
    expect_convert_fails(CKPT, bad, "runs past the end", __LINE__);
    unlink(bad);
}

/* Runs `$DUET_BIN args` with output discarded; returns its exit status. */
static int run_cli(const char *args) {
    int st;
    free(test_run_cli(args, &st, 0));
    return st;
}

TEST(test_convert_cli) {
    char out[256], args[768];
    tmp_path(out, sizeof out, "cli.gguf");
    snprintf(args, sizeof args, "convert --checkpoint %s --tokenizer %s -o %s --type q8_0", CKPT, TOK, out);
    CHECK_EQ_INT(run_cli(args), 0);
    char err[256];
    gguf *g = gguf_open(out, err, sizeof err);
    CHECK_MSG(g && gguf_find_tensor(g, "blk.0.attn_q.weight")->type == DUET_TYPE_Q8_0, "%s", err);
    gguf_close(g);
    unlink(out);
    CHECK_EQ_INT(run_cli("convert --help"), 0);
    CHECK_EQ_INT(run_cli("convert --checkpoint x.bin"), 2);       /* missing flags */
    CHECK_EQ_INT(run_cli("convert --frobnicate"), 2);
    snprintf(args, sizeof args, "convert -c %s -k %s -o %s --type q5_0", CKPT, TOK, out);
    CHECK_EQ_INT(run_cli(args), 2);
    snprintf(args, sizeof args, "convert -c %s -k %s -o %s", TOK, TOK, out);
    CHECK_EQ_INT(run_cli(args), 1); /* a tokenizer is no checkpoint */
    CHECK_EQ_INT(run_cli("synth --help"), 0);
    CHECK_EQ_INT(run_cli("synth --shape nosuch --type f32 -o /tmp/x.gguf"), 2);
    CHECK_EQ_INT(run_cli("synth --shape mid --type q3_k -o /tmp/x.gguf"), 2);
    CHECK_EQ_INT(run_cli("synth --shape mid --type f32"), 2);
    CHECK_EQ_INT(run_cli("synth --shape mid --type f32 -o /tmp/x.gguf --layers 0"), 2);
}

/* ---- synth ---------------------------------------------------------------------------------------- */

TEST(test_convert_synth_shape_and_determinism) {
    char a[256], b[256], err[512] = "";
    tmp_path(a, sizeof a, "synth-a.gguf");
    tmp_path(b, sizeof b, "synth-b.gguf");
    const duet_config *shape = synth_shape("test");
    REQUIRE(shape && !synth_shape("nosuch"));
    REQUIRE_MSG(synth_write(shape, DUET_TYPE_Q4_K, 7, TOK, a, NULL, NULL, err, sizeof err) == 0, "%s", err);
    REQUIRE_MSG(synth_write(shape, DUET_TYPE_Q4_K, 7, TOK, b, NULL, NULL, err, sizeof err) == 0, "%s", err);
    size_t na, nb;
    uint8_t *fa = read_all(a, &na), *fb = read_all(b, &nb);
    CHECK(fa && fb && na == nb && !memcmp(fa, fb, na));
    free(fb);
    REQUIRE_MSG(synth_write(shape, DUET_TYPE_Q4_K, 8, TOK, b, NULL, NULL, err, sizeof err) == 0, "%s", err);
    fb = read_all(b, &nb);
    CHECK(fa && fb && na == nb && memcmp(fa, fb, na)); /* another seed, other weights */
    free(fa);
    free(fb);

    gguf *g = gguf_open(a, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    check_u32(g, "llama.embedding_length", 256);
    check_u32(g, "llama.block_count", 2);
    check_u32(g, "llama.attention.head_count", 4);
    check_u32(g, "llama.attention.head_count_kv", 2);
    check_u32(g, "llama.feed_forward_length", 512);
    check_u32(g, "llama.rope.dimension_count", 64);
    check_u32(g, "general.file_type", 14);
    CHECK_EQ_INT(gguf_n_tensors(g), 3 + 9 * 2);
    check_shape(g, "token_embd.weight", DUET_TYPE_Q4_K, 256, 512);
    check_shape(g, "output.weight", DUET_TYPE_Q4_K, 256, 512);
    check_shape(g, "blk.1.attn_k.weight", DUET_TYPE_Q4_K, 256, 128);
    check_shape(g, "blk.1.ffn_down.weight", DUET_TYPE_Q4_K, 512, 256);
    check_shape(g, "blk.0.ffn_norm.weight", DUET_TYPE_F32, 256, 1);
    const gguf_tensor *t = gguf_find_tensor(g, "blk.0.ffn_norm.weight");
    CHECK(t && ((const float *)t->data)[0] == 1.0f && ((const float *)t->data)[255] == 1.0f);
    size_t n;
    CHECK(gguf_get_arr(g, "tokenizer.ggml.tokens", NULL, &n) == 0 && n == 512);
    gguf_close(g);
    unlink(a);
    unlink(b);
}

/* F32 weights have the advertised spread: attn_q ~ N(0, 1/256), ffn_down ~ N(0, 1/(512 * 2 * 2)). */
TEST(test_convert_synth_weight_scale) {
    char a[256], err[512] = "";
    tmp_path(a, sizeof a, "synth-f32.gguf");
    REQUIRE_MSG(synth_write(synth_shape("test"), DUET_TYPE_F32, 1, TOK, a, NULL, NULL, err, sizeof err) == 0, "%s",
                err);
    gguf *g = gguf_open(a, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    const char *names[] = {"blk.0.attn_q.weight", "blk.1.ffn_down.weight"};
    const double sigma[] = {1.0 / 16, 1.0 / sqrt(512.0 * 4)};
    for (int k = 0; k < 2; k++) {
        const gguf_tensor *t = gguf_find_tensor(g, names[k]);
        REQUIRE(t);
        const float *x = t->data;
        size_t n = t->nbytes / 4;
        double s = 0, s2 = 0;
        for (size_t i = 0; i < n; i++) {
            s += x[i];
            s2 += (double)x[i] * x[i];
        }
        double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
        CHECK_MSG(fabs(mean) < 0.02 * sigma[k] * 10 && fabs(sd / sigma[k] - 1) < 0.02, "%s: mean %g sd %g want %g",
                  names[k], mean, sd, sigma[k]);
    }
    gguf_close(g);
    unlink(a);
}

/* The engine runs a synthetic model through every layer to finite, non-degenerate logits. */
TEST(test_convert_synth_runs_finite) {
    char a[256], err[512] = "";
    tmp_path(a, sizeof a, "synth-run.gguf");
    duet_config shape = *synth_shape("test");
    shape.n_layers = 8;
    REQUIRE_MSG(synth_write(&shape, DUET_TYPE_Q8_0, 3, TOK, a, NULL, NULL, err, sizeof err) == 0, "%s", err);
    duet_model *m = duet_model_load(a, NULL, 0, err, sizeof err);
    REQUIRE_MSG(m, "%s", err);
    const duet_config *c = duet_model_config(m);
    CHECK_EQ_INT(c->n_layers, 8);
    duet_ctx *ctx = duet_ctx_init(m, 8, NULL, err, sizeof err);
    duet_part all = duet_part_all();
    duet_kv *kv = duet_kv_init(m, &all, 16, err, sizeof err);
    float *h = malloc(sizeof(float) * 8 * (size_t)c->dim), *logits = malloc(sizeof(float) * 8 * (size_t)c->vocab_size);
    REQUIRE_MSG(ctx && kv && h && logits, "%s", err);
    const int ids[8] = {1, 403, 407, 261, 378, 13, 300, 2};
    CHECK_EQ_INT(duet_embed(ctx, ids, 8, h, err, sizeof err), 0);
    CHECK_EQ_INT(duet_forward(ctx, kv, 0, 8, h, 8, 0, err, sizeof err), 0);
    CHECK_EQ_INT(duet_head(ctx, h, 8, logits, err, sizeof err), 0);
    double s2 = 0;
    int finite = 1;
    for (int i = 0; i < 8 * c->vocab_size; i++) {
        finite &= isfinite(logits[i]) != 0;
        s2 += (double)logits[i] * logits[i];
    }
    double rms = sqrt(s2 / (8.0 * c->vocab_size));
    CHECK(finite);
    CHECK_MSG(rms > 0.1 && rms < 10, "logit rms %g", rms);
    free(h);
    free(logits);
    duet_kv_free(kv);
    duet_ctx_free(ctx);
    duet_model_free(m);
    unlink(a);
}

/* The device shapes: their real dimensions, and a small file of each (their extras, 2 layers, dims cut
 * down) loads as its architecture and decodes finite logits; the Llama 3.2 file carries a vocabulary copied
 * from a GGUF and rope_freqs, the Qwen3 one a query wider than dim. */
TEST(test_convert_synth_device_shapes) {
    const duet_config *l = synth_shape("llama3.2-1b"), *q2 = synth_shape("qwen2.5-0.5b"), *q3 = synth_shape("qwen3-0.6b");
    REQUIRE(l && q2 && q3);
    CHECK(l->dim == 2048 && l->n_layers == 16 && l->n_kv_heads == 8 && l->tied_output);
    CHECK(q2->dim == 896 && q2->n_layers == 24 && q2->n_heads == 14 && q2->n_kv_heads == 2 && q2->ffn_dim == 4864);
    CHECK(q3->dim == 1024 && q3->n_layers == 28 && q3->head_dim == 128 && q3->n_kv_heads == 8 && q3->ffn_dim == 3072);
    CHECK(synth_shape_extra("qwen2.5-0.5b")->qkv_bias && synth_shape_extra("qwen3-0.6b")->qk_norm);
    CHECK(synth_shape_extra("llama3.2-1b")->rope_factor == 32.0f && !synth_shape_extra("mid")->qkv_bias);
    const char *names[] = {"llama3.2-1b", "qwen2.5-0.5b", "qwen3-0.6b"};
    const char *vocabs[] = {TEST_DATA "/vocab/ggml-vocab-gpt-2.gguf", TOK, TOK};
    const char *must[] = {"rope_freqs.weight", "blk.1.attn_v.bias", "blk.1.attn_k_norm.weight"};
    for (int i = 0; i < 3; i++) {
        char path[256], err[512] = "";
        tmp_path(path, sizeof path, "synth-dev.gguf");
        duet_config c = *synth_shape(names[i]);
        c.n_layers = 2, c.dim = 64, c.n_heads = 4, c.n_kv_heads = 2, c.ffn_dim = 96;
        c.head_dim = i == 2 ? 32 : 16;
        REQUIRE_MSG(synth_write_arch(&c, synth_shape_extra(names[i]), DUET_TYPE_F32, 3, vocabs[i], path, NULL, NULL,
                                     err, sizeof err) == 0, "%s: %s", names[i], err);
        gguf *g = gguf_open(path, err, sizeof err);
        REQUIRE_MSG(g, "%s", err);
        CHECK_MSG(gguf_find_tensor(g, must[i]) != NULL, "%s lacks %s", names[i], must[i]);
        gguf_close(g);
        duet_model *m = duet_model_load(path, NULL, 0, err, sizeof err);
        REQUIRE_MSG(m, "%s: %s", names[i], err);
        const duet_config *mc = duet_model_config(m);
        CHECK_EQ_INT(mc->head_dim, c.head_dim);
        CHECK_EQ_INT(mc->vocab_size, i == 0 ? 50257 : 512);
        CHECK(duet_model_tokenizer(m, NULL, 0) != NULL);
        duet_part all = duet_part_all();
        duet_kv *kv = duet_kv_init(m, &all, 4, err, sizeof err);
        duet_ctx *ctx = duet_ctx_init(m, 4, NULL, err, sizeof err);
        float h[4 * 64], *lg = malloc(sizeof(float) * 4 * mc->vocab_size);
        int ids[4] = {1, 2, 3, 4};
        REQUIRE(kv && ctx && lg);
        CHECK(!duet_embed(ctx, ids, 4, h, err, sizeof err) && !duet_forward(ctx, kv, 0, 2, h, 4, 0, err, sizeof err) &&
              !duet_head(ctx, h, 4, lg, err, sizeof err));
        int finite = 1;
        for (int v = 0; v < 4 * mc->vocab_size; v++) finite &= isfinite(lg[v]);
        CHECK_MSG(finite, "%s: logits not finite", names[i]);
        free(lg);
        duet_ctx_free(ctx);
        duet_kv_free(kv);
        duet_model_free(m);
        unlink(path);
    }
}
