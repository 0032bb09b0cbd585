#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/json.h"
#include "duet.h"
#include "engine/gguf.h"
#include "engine/bpe.h"
#include "engine/tokenizer.h"
#include "test.h"

#define SPM_VOCAB TEST_DATA "/vocab/ggml-vocab-llama-spm.gguf"
#define STORIES_GGUF "models/stories260K.gguf"
#define GPT2_VOCAB TEST_DATA "/vocab/ggml-vocab-gpt-2.gguf"
#define LLAMA3_VOCAB TEST_DATA "/vocab/ggml-vocab-llama3.gguf"
#define QWEN2_VOCAB TEST_DATA "/vocab/ggml-vocab-qwen2.gguf"

/* A vocabulary together with the gguf it came from (the tokenizer copies what it needs, but keeping
 * both open mirrors how the model holds them). */
typedef struct vocab {
    gguf *g;
    duet_tokenizer *t;
} vocab;

static vocab vocab_open(const char *path, char *err, size_t errlen) {
    vocab v = {gguf_open(path, err, errlen), NULL};
    if (v.g) v.t = tokenizer_load(v.g, err, errlen);
    return v;
}

static void vocab_close(vocab *v) {
    tokenizer_free(v->t);
    gguf_close(v->g);
}

/* Tokenizes s into a malloc'd array (*n ids), growing the buffer as duet_tokenize asks. */
static int *tokenize(const duet_tokenizer *t, const char *s, size_t len, bool bos, int *n) {
    int cap = 4;
    int *ids = malloc(cap * sizeof *ids);
    *n = duet_tokenize(t, s, len, bos, ids, cap);
    if (*n > cap) {
        cap = *n;
        ids = realloc(ids, cap * sizeof *ids);
        int again = duet_tokenize(t, s, len, bos, ids, cap);
        if (again != *n) *n = -100;
    }
    return ids;
}

/* Concatenated pieces of ids[n] into a malloc'd buffer of *len bytes. */
static char *detokenize(const duet_tokenizer *t, const int *ids, int n, size_t *len) {
    size_t cap = 64, used = 0;
    char *out = malloc(cap);
    for (int i = 0; i < n; i++) {
        char piece[256];
        int k = duet_token_piece(t, ids[i], piece, sizeof piece);
        if (k < 0 || k > (int)sizeof piece) {
            free(out);
            return NULL;
        }
        if (used + (size_t)k > cap) out = realloc(out, cap = 2 * (used + (size_t)k));
        memcpy(out + used, piece, (size_t)k);
        used += (size_t)k;
    }
    *len = used;
    return out;
}

/* The llama.cpp test vectors: .inp holds the strings, each followed by "\n__ggml_vocab_test__\n";
 * line i of .out holds the ids of string i (no BOS), space-separated. */
typedef struct vectors {
    char *inp, *out;
    int n;
    const char *text[64];
    size_t len[64];
    const char *ids[64];
} vectors;

static int vectors_load(vectors *v, const char *vocab_path) {
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t ilen, olen;
    memset(v, 0, sizeof *v);
    char path[256];
    snprintf(path, sizeof path, "%s.inp", vocab_path);
    v->inp = test_read_file(path, &ilen);
    snprintf(path, sizeof path, "%s.out", vocab_path);
    v->out = test_read_file(path, &olen);
    if (!v->inp || !v->out) return -1;
    for (char *p = v->inp, *q; (q = strstr(p, sep)) && v->n < 64; p = q + sizeof sep - 1) {
        v->text[v->n] = p;
        v->len[v->n] = (size_t)(q - p);
        v->n++;
    }
    int lines = 0;
    for (char *p = v->out, *nl; (nl = strchr(p, '\n')) && lines < 64; p = nl + 1) {
        *nl = '\0';
        v->ids[lines++] = p;
    }
    return lines == v->n ? 0 : -1;
}

static void vectors_free(vectors *v) {
    free(v->inp);
    free(v->out);
}

/* Every string of a vocabulary's .inp gives exactly the ids of its .out (no BOS, no special parsing). */
static void check_vectors(const char *path, int n_vocab, int bos, int eos) {
    char err[256];
    vocab v = vocab_open(path, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    CHECK_EQ_INT(duet_tokenizer_n_vocab(v.t), n_vocab);
    CHECK_EQ_INT(duet_tokenizer_bos(v.t), bos);
    CHECK_EQ_INT(duet_tokenizer_eos(v.t), eos);
    vectors vec;
    REQUIRE(vectors_load(&vec, path) == 0);
    CHECK_EQ_INT(vec.n, 46);
    for (int i = 0; i < vec.n; i++) {
        int n;
        int *ids = tokenize(v.t, vec.text[i], vec.len[i], false, &n);
        char got[4096] = "";
        size_t used = 0;
        for (int j = 0; j < n && used < sizeof got - 16; j++) used += (size_t)sprintf(got + used, " %d", ids[j]);
        CHECK_MSG(strcmp(got, vec.ids[i]) == 0, "%s string %d \"%.*s\":\n      got  %s\n      want %s", path, i,
                  (int)(vec.len[i] < 40 ? vec.len[i] : 40), vec.text[i], got, vec.ids[i]);
        free(ids);
    }
    vectors_free(&vec);
    vocab_close(&v);
}

TEST(test_tokenizer_llama_spm_vectors) { check_vectors(SPM_VOCAB, 32000, 1, 2); }

/* Decoding the encoding gives the text back with the space the encoder prefixed. */
TEST(test_tokenizer_piece_round_trip) {
    char err[256];
    vocab v = vocab_open(SPM_VOCAB, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    vectors vec;
    REQUIRE(vectors_load(&vec, SPM_VOCAB) == 0);
    for (int i = 0; i < vec.n; i++) {
        int n;
        int *ids = tokenize(v.t, vec.text[i], vec.len[i], true, &n);
        REQUIRE(n >= 1 && ids[0] == 1);
        size_t len = 0;
        char *back = detokenize(v.t, ids, n, &len);
        REQUIRE(back);
        bool same = vec.len[i] == 0 ? len == 0
                                    : len == vec.len[i] + 1 && back[0] == ' ' && !memcmp(back + 1, vec.text[i], vec.len[i]);
        CHECK_MSG(same, "string %d does not round-trip: \"%.*s\"", i, (int)len, back);
        free(back);
        free(ids);
    }
    vectors_free(&vec);
    vocab_close(&v);
}

TEST(test_tokenizer_pieces_and_capacity) {
    char err[256];
    vocab v = vocab_open(SPM_VOCAB, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    char buf[64];
    CHECK_EQ_INT(duet_token_piece(v.t, 1, buf, sizeof buf), 0);       /* <s>: control */
    CHECK_EQ_INT(duet_token_piece(v.t, 2, buf, sizeof buf), 0);       /* </s> */
    CHECK_EQ_INT(duet_token_piece(v.t, 3 + 0xC3, buf, sizeof buf), 1); /* <0xC3> */
    CHECK_EQ_INT((unsigned char)buf[0], 0xC3);
    CHECK_EQ_INT(duet_token_piece(v.t, 15043, buf, sizeof buf), 6);   /* "▁Hello" */
    CHECK(memcmp(buf, " Hello", 6) == 0);
    /* too small a buffer: the full length comes back, only cap bytes are written */
    memset(buf, 'x', sizeof buf);
    CHECK_EQ_INT(duet_token_piece(v.t, 15043, buf, 3), 6);
    CHECK(memcmp(buf, " Hex", 4) == 0);
    CHECK(duet_token_piece(v.t, 32000, buf, sizeof buf) < 0);
    CHECK(duet_token_piece(v.t, -1, buf, sizeof buf) < 0);

    int ids[3] = {-7, -7, -7};
    CHECK_EQ_INT(duet_tokenize(v.t, "Hello world", 11, true, ids, 2), 3);
    CHECK(ids[0] == 1 && ids[1] == 15043 && ids[2] == -7);
    CHECK_EQ_INT(duet_tokenize(v.t, "Hello world", 11, true, NULL, 0), 3);
    CHECK_EQ_INT(duet_tokenize(v.t, "", 0, true, ids, 3), 1);
    CHECK_EQ_INT(duet_tokenize(v.t, "", 0, false, ids, 3), 0);
    CHECK(duet_tokenize(v.t, "abc", 3, false, NULL, 3) < 0);
    CHECK(duet_tokenize(v.t, NULL, 3, false, ids, 3) < 0);
    vocab_close(&v);
}

/* Invalid UTF-8 splits by lead byte and falls back to byte tokens, as llama.cpp does. */
TEST(test_tokenizer_invalid_utf8_bytes) {
    char err[256];
    vocab v = vocab_open(SPM_VOCAB, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    int ids[16];
    /* "\xc3 " : C3 swallows the first byte of the U+2581 the space became, leaving 96 and 81 */
    int n = duet_tokenize(v.t, "\xc3 ", 2, false, ids, 16);
    REQUIRE(n == 5);
    CHECK_EQ_INT(ids[0], 29871);    /* ▁ */
    CHECK_EQ_INT(ids[1], 3 + 0xC3); /* C3 E2 is no piece: bytes */
    CHECK_EQ_INT(ids[2], 3 + 0xE2);
    CHECK_EQ_INT(ids[3], 3 + 0x96);
    CHECK_EQ_INT(ids[4], 3 + 0x81);
    n = duet_tokenize(v.t, "\xff", 1, false, ids, 16);
    REQUIRE(n == 2);
    CHECK_EQ_INT(ids[1], 3 + 0xFF);
    vocab_close(&v);
}

/* A small vocabulary written with the GGUF writer; `edit` may change or drop keys to break it. */
typedef struct spec {
    const char *model;
    int n_tokens, n_scores, n_types;
    int bad_type_at, nan_score_at, bad_byte_text;
    int bos;
    bool scores_as_strings;
    bool equal_scores;
} spec;

static const char *small_pieces[] = {"<unk>", "<s>", "</s>", "<0x41>", "<0xC3>", "<0xA9>", "\xe2\x96\x81", "a",
                                     "b", "aa", "ab", "\xe2\x96\x81" "a", "\xe2\x96\x81" "ab", "c", "xy"};
static const int small_types[] = {2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1, 1, 4};
#define N_SMALL 15

static gguf *write_vocab(const spec *s, char *path, char *err, size_t errlen) {
    gguf_writer *w = gguf_writer_init();
    const char *pieces[N_SMALL];
    size_t lens[N_SMALL];
    float scores[N_SMALL];
    int32_t types[N_SMALL];
    for (int i = 0; i < N_SMALL; i++) {
        pieces[i] = small_pieces[i];
        lens[i] = strlen(pieces[i]);
        scores[i] = s->equal_scores ? -1.0f : -(float)i;
        types[i] = small_types[i];
    }
    if (s->bad_byte_text) pieces[4] = "<0xZZ>", lens[4] = 6;
    if (s->nan_score_at) scores[s->nan_score_at] = NAN;
    if (s->bad_type_at) types[s->bad_type_at] = 9;
    int rc = 0;
    if (s->model) rc |= gguf_set_str(w, "tokenizer.ggml.model", s->model);
    rc |= gguf_set_arr_str(w, "tokenizer.ggml.tokens", pieces, lens, (size_t)s->n_tokens);
    if (s->scores_as_strings) rc |= gguf_set_arr_str(w, "tokenizer.ggml.scores", pieces, lens, (size_t)s->n_scores);
    else if (s->n_scores >= 0) rc |= gguf_set_arr_f32(w, "tokenizer.ggml.scores", scores, (size_t)s->n_scores);
    if (s->n_types >= 0) rc |= gguf_set_arr_i32(w, "tokenizer.ggml.token_type", types, (size_t)s->n_types);
    if (s->bos) rc |= gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)s->bos);
    strcpy(path, "/tmp/duet-test-vocab-XXXXXX");
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    gguf *g = NULL;
    if (rc == 0 && fd >= 0 && gguf_writer_write(w, path, NULL, NULL, err, errlen) == 0) g = gguf_open(path, err, errlen);
    gguf_writer_free(w);
    if (fd >= 0) unlink(path);
    return g;
}

static spec good_spec(void) { return (spec){"llama", N_SMALL, N_SMALL, N_SMALL, 0, 0, 0, 0, false, false}; }

/* Loads the vocabulary of spec s expecting failure with `what` in the message. */
static void expect_refused(spec s, const char *what) {
    char path[64], err[256] = "";
    gguf *g = write_vocab(&s, path, err, sizeof err);
    REQUIRE_MSG(g, "could not write the test vocabulary: %s", err);
    duet_tokenizer *t = tokenizer_load(g, err, sizeof err);
    CHECK_MSG(t == NULL, "malformed vocabulary accepted (expected \"%s\")", what);
    CHECK_MSG(strstr(err, what) != NULL, "message \"%s\" lacks \"%s\"", err, what);
    tokenizer_free(t);
    gguf_close(g);
}

TEST(test_tokenizer_malformed_vocab) {
    spec s = good_spec();
    s.model = "bert";
    expect_refused(s, "'bert' is not supported");
    s = good_spec();
    s.model = NULL;
    expect_refused(s, "no tokenizer.ggml.model");
    s = good_spec();
    s.n_scores = N_SMALL - 1;
    expect_refused(s, "scores has 14 entries for 15 tokens");
    s = good_spec();
    s.n_types = N_SMALL - 2;
    expect_refused(s, "token_type has 13 entries for 15 tokens");
    s = good_spec();
    s.n_tokens = s.n_scores = s.n_types = 0;
    expect_refused(s, "empty vocabulary");
    s = good_spec();
    s.bos = 99;
    expect_refused(s, "bos_token_id = 99 is outside the vocabulary of 15");
    s = good_spec();
    s.bad_type_at = 7;
    expect_refused(s, "token 7 has an invalid token type");
    s = good_spec();
    s.nan_score_at = 5;
    expect_refused(s, "score of token 5");
    s = good_spec();
    s.bad_byte_text = 1;
    expect_refused(s, "byte token 4 is '<0xZZ>'");
    s = good_spec();
    s.scores_as_strings = true;
    expect_refused(s, "score of token 0");
}

TEST(test_tokenizer_merge_order_and_fallback) {
    char path[64], err[256];
    spec s = good_spec();
    gguf *g = write_vocab(&s, path, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    duet_tokenizer *t = tokenizer_load(g, err, sizeof err);
    REQUIRE_MSG(t, "%s", err);
    int ids[16];
    /* "▁aab": "aa" (score -9) beats "ab" (-10) and "▁a" (-11), and nothing merges after it */
    int n = duet_tokenize(t, "aab", 3, false, ids, 16);
    REQUIRE(n == 3);
    CHECK(ids[0] == 6 && ids[1] == 9 && ids[2] == 8);
    /* "ab" merges first, then "▁" + "ab" is the piece "▁ab" */
    n = duet_tokenize(t, "ab", 2, false, ids, 16);
    REQUIRE(n == 1);
    CHECK_EQ_INT(ids[0], 12);
    /* é is no piece: its two bytes; 'A' has only its byte token; 'z' has nothing: unknown */
    n = duet_tokenize(t, "\xc3\xa9" "Az", 4, false, ids, 16);
    REQUIRE(n == 5);
    CHECK(ids[0] == 6 && ids[1] == 4 && ids[2] == 5 && ids[3] == 3 && ids[4] == 0);
    char piece[8];
    CHECK_EQ_INT(duet_token_piece(t, 0, piece, sizeof piece), 0); /* unknown prints nothing */
    CHECK_EQ_INT(duet_token_piece(t, 14, piece, sizeof piece), 2); /* user-defined: verbatim */
    CHECK(memcmp(piece, "xy", 2) == 0);
    tokenizer_free(t);
    gguf_close(g);

    /* Equal scores: the leftmost pair merges first, so "baaa" is ▁ b aa a, not ▁ b a aa. */
    s.equal_scores = true;
    g = write_vocab(&s, path, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    t = tokenizer_load(g, err, sizeof err);
    REQUIRE_MSG(t, "%s", err);
    n = duet_tokenize(t, "baaa", 4, false, ids, 16);
    REQUIRE(n == 4);
    CHECK(ids[0] == 6 && ids[1] == 8 && ids[2] == 9 && ids[3] == 7);
    tokenizer_free(t);
    gguf_close(g);
}

/* User-defined tokens are split out before encoding, and the text after one gets a space prefix again,
 * as in llama.cpp: "axyb" is ▁a xy ▁ b. */
TEST(test_tokenizer_user_defined_split) {
    char path[64], err[256];
    spec s = good_spec();
    gguf *g = write_vocab(&s, path, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    duet_tokenizer *t = tokenizer_load(g, err, sizeof err);
    REQUIRE_MSG(t, "%s", err);
    int ids[16];
    int n = duet_tokenize(t, "axyb", 4, false, ids, 16);
    REQUIRE(n == 4);
    CHECK(ids[0] == 11 && ids[1] == 14 && ids[2] == 6 && ids[3] == 8);
    n = duet_tokenize(t, "xyxy", 4, true, ids, 16);
    REQUIRE(n == 3);
    CHECK(ids[0] == 1 && ids[1] == 14 && ids[2] == 14);
    n = duet_tokenize(t, "xxyy", 4, false, ids, 16); /* unknown x, then xy, then ▁ + unknown y */
    REQUIRE(n == 5);
    CHECK(ids[0] == 6 && ids[1] == 0 && ids[2] == 14 && ids[3] == 6 && ids[4] == 0);
    tokenizer_free(t);
    gguf_close(g);
}

/* llama.cpp's greedy generations with stories260K: their ids detokenize to the recorded text, and the
 * prompts tokenize to the recorded prompt ids. Needs models/stories260K.gguf (made by `duet convert`). */
TEST(test_tokenizer_stories260k_greedy) {
    if (access(STORIES_GGUF, R_OK) != 0) {
        printf("    note: %s not present yet; skipping\n", STORIES_GGUF);
        return;
    }
    char err[256];
    vocab v = vocab_open(STORIES_GGUF, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    CHECK_EQ_INT(duet_tokenizer_n_vocab(v.t), 512);
    FILE *f = fopen(TEST_DATA "/stories260K-greedy.jsonl", "rb");
    REQUIRE(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lines = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        json *d = json_parse(line, (size_t)len, err, sizeof err);
        REQUIRE_MSG(d, "%s", err);
        const json_val *r = json_root(d), *out = json_get(r, "output_ids"), *pids = json_get(r, "prompt_ids");
        int ids[64];
        for (int i = 0; i < 64; i++) ids[i] = (int)json_num(json_at(out, (size_t)i));
        size_t tlen = 0, want_len;
        char *text = detokenize(v.t, ids, 64, &tlen);
        const char *want = json_str(json_get(r, "output_text"), &want_len);
        CHECK_MSG(text && tlen == want_len && !memcmp(text, want, tlen), "line %d: output text differs: \"%.*s\"",
                  lines + 1, (int)tlen, text ? text : "");
        free(text);
        size_t plen;
        const char *prompt = json_str(json_get(r, "prompt"), &plen);
        int n;
        int *p = tokenize(v.t, prompt, plen, true, &n);
        CHECK_EQ_INT(n, json_len(pids));
        for (int i = 0; i < n && i < (int)json_len(pids); i++)
            CHECK_EQ_INT(p[i], json_num(json_at(pids, (size_t)i)));
        free(p);
        json_free(d);
        lines++;
    }
    free(line);
    fclose(f);
    CHECK_EQ_INT(lines, 6);
    vocab_close(&v);
}

/* About 100 KB of English in one call must encode and decode back; the time is printed, not asserted. */
TEST(test_tokenizer_100k_in_one_call) {
    char err[256];
    vocab v = vocab_open(SPM_VOCAB, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    static const char para[] =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
        "One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n";
    size_t len = 0, plen = sizeof para - 1;
    char *text = malloc(100 * 1024 + plen);
    while (len < 100 * 1024) memcpy(text + len, para, plen), len += plen;
    int cap = (int)len + 1;
    int *ids = malloc((size_t)cap * sizeof *ids);
    double t0 = clock_now_ms();
    int n = duet_tokenize(v.t, text, len, false, ids, cap);
    double ms = clock_now_ms() - t0;
    REQUIRE(n > 0 && n <= cap);
    printf("    %zu bytes -> %d tokens in %.2f ms\n", len, n, ms);
    size_t blen = 0;
    char *back = detokenize(v.t, ids, n, &blen);
    CHECK(back && blen == len + 1 && !memcmp(back + 1, text, len));
    free(back);
    free(ids);
    free(text);
    vocab_close(&v);
}

/* ---- byte-level BPE ----------------------------------------------------------------------------------- */

TEST(test_bpe_gpt2_vectors) { check_vectors(GPT2_VOCAB, 50257, 50256, 50256); }
TEST(test_bpe_llama3_vectors) { check_vectors(LLAMA3_VOCAB, 128256, 128000, 128001); }
TEST(test_bpe_qwen2_vectors) { check_vectors(QWEN2_VOCAB, 151936, 151643, 151645); }

static const char *const BPE_VOCABS[] = {GPT2_VOCAB, LLAMA3_VOCAB, QWEN2_VOCAB};

/* Decoding gives every test string back byte for byte (byte-level BPE adds no space). */
TEST(test_bpe_round_trip) {
    for (size_t k = 0; k < 3; k++) {
        char err[256];
        vocab v = vocab_open(BPE_VOCABS[k], err, sizeof err);
        REQUIRE_MSG(v.t, "%s", err);
        vectors vec;
        REQUIRE(vectors_load(&vec, BPE_VOCABS[k]) == 0);
        for (int i = 0; i < vec.n; i++) {
            int n;
            int *ids = tokenize(v.t, vec.text[i], vec.len[i], false, &n);
            size_t len = 0;
            char *back = detokenize(v.t, ids, n, &len);
            CHECK_MSG(back && len == vec.len[i] && !memcmp(back, vec.text[i], len), "%s: string %d does not round-trip",
                      BPE_VOCABS[k], i);
            free(back);
            free(ids);
        }
        vectors_free(&vec);
        vocab_close(&v);
    }
}

/* ids of text with flags, as " 1 2 3" */
static void ids_str(const duet_tokenizer *t, const char *text, int flags, char *out, size_t cap) {
    int ids[64];
    int n = duet_tokenize_ex(t, text, strlen(text), flags, ids, 64);
    size_t used = 0;
    out[0] = '\0';
    if (n < 0 || n > 64) snprintf(out, cap, "error %d", n);
    for (int j = 0; j < n && j < 64 && used + 16 < cap; j++) used += (size_t)sprintf(out + used, " %d", ids[j]);
}

#define CHECK_IDS(t, text, flags, want)                                                       \
    do {                                                                                      \
        char got_[1024];                                                                      \
        ids_str(t, text, flags, got_, sizeof got_);                                           \
        CHECK_MSG(!strcmp(got_, want), "\"%s\": got%s, want %s", text, got_, want);          \
    } while (0)

/* llama.cpp's ids for the README's probes: control tokens are text unless DUET_TOK_SPECIAL, user-defined
 * ones (Qwen's <think>) always single tokens; BOS only where the vocabulary adds it; no NFC. */
TEST(test_bpe_special_tokens_and_bos) {
    char err[256];
    vocab g2 = vocab_open(GPT2_VOCAB, err, sizeof err), l3 = vocab_open(LLAMA3_VOCAB, err, sizeof err),
          q2 = vocab_open(QWEN2_VOCAB, err, sizeof err);
    REQUIRE_MSG(g2.t && l3.t && q2.t, "%s", err);
    CHECK_IDS(g2.t, "text <|endoftext|> more", 0, " 5239 1279 91 437 1659 5239 91 29 517");
    CHECK_IDS(g2.t, "text <|endoftext|> more", DUET_TOK_SPECIAL, " 5239 220 50256 517");
    CHECK_IDS(l3.t, "x <|begin_of_text|> y <|eot_id|>", 0, " 87 83739 7413 3659 4424 91 29 379 83739 68 354 851 91 29");
    CHECK_IDS(l3.t, "x <|begin_of_text|> y <|eot_id|>", DUET_TOK_SPECIAL, " 87 220 128000 379 220 128009");
    CHECK_IDS(q2.t, "text <|endoftext|> more", 0, " 1318 82639 8691 723 427 91 29 803");
    CHECK_IDS(q2.t, "text <|endoftext|> more", DUET_TOK_SPECIAL, " 1318 220 151643 803");
    CHECK_IDS(q2.t, "cafe\xcc\x81 vs caf\xc3\xa9", 0, " 924 1859 53839 6165 51950");
    CHECK_IDS(q2.t, "a<think>b", 0, " 64 151667 65");
    /* Llama 3 adds BOS (its pre-tokenizer and add_bos_token say so), Qwen and GPT-2 do not */
    CHECK_IDS(l3.t, "Hi", DUET_TOK_BOS, " 128000 13347");
    CHECK_IDS(q2.t, "Hi", DUET_TOK_BOS, " 13048");
    CHECK_IDS(g2.t, "Hi", DUET_TOK_BOS, " 17250");
    char buf[32];
    CHECK_EQ_INT(duet_token_piece(l3.t, 128009, buf, sizeof buf), 0);
    CHECK_EQ_INT(duet_token_piece_ex(l3.t, 128009, DUET_TOK_SPECIAL, buf, sizeof buf), 10);
    CHECK(!memcmp(buf, "<|eot_id|>", 10));
    CHECK_EQ_INT(duet_token_piece(q2.t, 151667, buf, sizeof buf), 7); /* user-defined: its text */
    CHECK_EQ_INT(duet_token_piece(q2.t, 151700, buf, sizeof buf), 0); /* [PAD151700], unused */
    CHECK_EQ_INT(duet_token_find(l3.t, "<|eot_id|>", 10), 128009);
    CHECK_EQ_INT(duet_token_find(q2.t, "<|im_end|>", 10), 151645);
    CHECK_EQ_INT(duet_token_find(q2.t, "<|nope|>", 8), -1);
    CHECK(duet_tokenizer_chat_template(l3.t) && strstr(duet_tokenizer_chat_template(l3.t), "<|start_header_id|>"));
    vocab_close(&g2);
    vocab_close(&l3);
    vocab_close(&q2);
}

/* Bytes that are not UTF-8 become U+FFFD before splitting, as in llama.cpp; overlong forms are read as the
 * code point they spell. */
TEST(test_bpe_invalid_utf8) {
    char err[256], a[1024], b[1024];
    vocab v = vocab_open(LLAMA3_VOCAB, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    static const char *const pairs[][2] = {
        {"\xff", "\xef\xbf\xbd"},           {"ab\xc3", "ab\xef\xbf\xbd"},
        {"\xc3(x", "\xef\xbf\xbd(x"},       {"\x80\x80 z", "\xef\xbf\xbd\xef\xbf\xbd z"},
        {"\xc1\x81", "A"},                  {"\xed\xa0\x80!", "\xef\xbf\xbd!"},
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd"}, {"x\xe2\x82", "x\xef\xbf\xbd\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        ids_str(v.t, pairs[i][0], 0, a, sizeof a);
        ids_str(v.t, pairs[i][1], 0, b, sizeof b);
        CHECK_MSG(!strcmp(a, b) && a[0], "case %zu: %s vs %s", i, a, b);
    }
    vocab_close(&v);
}

/* A small byte-level vocabulary: the 256 byte characters (id = byte), then "aa", "aaaa", "a8" = a x 8,
 * "12", "123", "Ġa" (" a") and "hello" (no merge makes it), a control token and a user-defined one.
 * Merges by rank: "a a", "aa aa", "aaaa aaaa", "1 2", "12 3", "Ġ a". `bad` breaks one thing. */
enum { BPE_OK, BPE_NO_MERGES, BPE_MERGE_NO_SPACE, BPE_MERGE_NOT_BYTES, BPE_BAD_UTF8, BPE_NO_PRE };

static size_t byte_char(int b, char *out) { /* GPT-2's byte -> character, as UTF-8 */
    int cp = b, n = 0;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
        for (int i = 0; i < b; i++) n += !((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || i >= 174);
        cp = 256 + n;
    }
    if (cp < 0x80) return out[0] = (char)cp, 1;
    out[0] = (char)(0xc0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

static duet_tokenizer *bpe_vocab(const char *pre, int bad, gguf **gp, char *err, size_t errlen) {
    enum { N = 256 + 9 };
    static char store[N][16];
    const char *tok[N];
    size_t len[N];
    int32_t type[N];
    for (int b = 0; b < 256; b++) {
        len[b] = byte_char(b, store[b]);
        tok[b] = store[b];
        type[b] = 1;
    }
    const char *extra[] = {"aa", "aaaa", "aaaaaaaa", "12", "123", "\xc4\xa0" "a", "hello", "<|end|>", "<u>"};
    for (int i = 0; i < 9; i++) {
        tok[256 + i] = extra[i];
        len[256 + i] = strlen(extra[i]);
        type[256 + i] = i == 7 ? 3 : i == 8 ? 4 : 1;
    }
    if (bad == BPE_BAD_UTF8) tok[262] = "hel\xfflo";
    const char *merges[] = {"a a", "aa aa", "aaaa aaaa", "1 2", "12 3", "\xc4\xa0 a"};
    size_t mlen[6];
    for (int i = 0; i < 6; i++) mlen[i] = strlen(merges[i]);
    if (bad == BPE_MERGE_NO_SPACE) merges[4] = "123", mlen[4] = 3;
    if (bad == BPE_MERGE_NOT_BYTES) merges[4] = "1 \xe4\xb8\x80", mlen[4] = 5; /* U+4E00 is no byte character */
    gguf_writer *w = gguf_writer_init();
    int rc = gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (bad != BPE_NO_PRE) rc |= gguf_set_str(w, "tokenizer.ggml.pre", pre);
    rc |= gguf_set_arr_str(w, "tokenizer.ggml.tokens", tok, len, N);
    rc |= gguf_set_arr_i32(w, "tokenizer.ggml.token_type", type, N);
    if (bad != BPE_NO_MERGES) rc |= gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, mlen, 6);
    rc |= gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 263);
    char path[64];
    strcpy(path, "/tmp/duet-test-bpe-XXXXXX");
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    *gp = NULL;
    if (rc == 0 && fd >= 0 && gguf_writer_write(w, path, NULL, NULL, err, errlen) == 0) *gp = gguf_open(path, err, errlen);
    gguf_writer_free(w);
    if (fd >= 0) unlink(path);
    return *gp ? tokenizer_load(*gp, err, errlen) : NULL;
}

static void expect_bpe_refused(const char *pre, int bad, const char *what) {
    char err[256] = "";
    gguf *g;
    duet_tokenizer *t = bpe_vocab(pre, bad, &g, err, sizeof err);
    CHECK_MSG(g != NULL, "could not write the vocabulary: %s", err);
    CHECK_MSG(t == NULL, "malformed vocabulary accepted (expected \"%s\")", what);
    CHECK_MSG(strstr(err, what) != NULL, "message \"%s\" lacks \"%s\"", err, what);
    tokenizer_free(t);
    gguf_close(g);
}

TEST(test_bpe_malformed_vocab) {
    expect_bpe_refused("gpt-2", BPE_NO_MERGES, "tokenizer.ggml.merges is missing");
    expect_bpe_refused("gpt-2", BPE_MERGE_NO_SPACE, "merge 4 ('123')");
    expect_bpe_refused("gpt-2", BPE_MERGE_NOT_BYTES, "merge 4");
    expect_bpe_refused("gpt-2", BPE_BAD_UTF8, "token 262 in tokenizer.ggml.tokens is not valid UTF-8");
    expect_bpe_refused("gpt-2", BPE_NO_PRE, "tokenizer.ggml.pre is missing");
    expect_bpe_refused("tekken", BPE_OK, "pre-tokenizer 'tekken' (tokenizer.ggml.pre) is not one duet knows");
}

/* Merges go by rank, leftmost first on ties, also over a 100000-byte piece (which the naive loop would take
 * quadratic time over): a x 11 is a8 aa a. */
TEST(test_bpe_merge_order_long_piece) {
    char err[256];
    gguf *g;
    duet_tokenizer *t = bpe_vocab("gpt-2", BPE_OK, &g, err, sizeof err);
    REQUIRE_MSG(t, "%s", err);
    CHECK_IDS(t, "aaaaaaaaaaa", 0, " 258 256 97");
    CHECK_IDS(t, "a aa 123 1234 b a", 0, " 97 32 256 32 260 32 260 52 32 98 261");
    CHECK_IDS(t, "hello", 0, " 104 101 108 108 111"); /* a token, but no merge makes it */
    CHECK_IDS(t, "x<|end|>y<u>", 0, " 120 60 124 101 110 100 124 62 121 264");
    CHECK_IDS(t, "x<|end|>y<u>", DUET_TOK_SPECIAL, " 120 263 121 264");
    size_t n = 100000 + 3;
    char *text = malloc(n + 1);
    memset(text, 'a', n);
    text[n] = '\0';
    int *ids = malloc(sizeof(int) * (n / 8 + 8));
    double t0 = clock_now_ms();
    int k = duet_tokenize(t, text, n, false, ids, (int)(n / 8 + 8));
    printf("    one piece of %zu bytes in %.1f ms\n", n, clock_now_ms() - t0);
    REQUIRE(k == 12500 + 2);
    int bad = 0;
    for (int i = 0; i < 12500; i++) bad += ids[i] != 258;
    CHECK_EQ_INT(bad, 0);
    CHECK(ids[12500] == 256 && ids[12501] == 97);
    free(ids);
    free(text);
    tokenizer_free(t);
    gguf_close(g);
}

/* llama-bpe takes a piece that is a token whole (ignore_merges) and adds BOS; smollm splits every digit
 * before the GPT-2 regex, so "123" does not merge. */
TEST(test_bpe_pre_tokenizers) {
    static const struct {
        const char *pre, *text;
        int flags;
        const char *want;
    } cases[] = {
        {"llama-bpe", "hello", DUET_TOK_BOS, " 263 262"}, {"llama-bpe", "1234", 0, " 260 52"},
        {"smollm", "hello", DUET_TOK_BOS, " 104 101 108 108 111"}, {"smollm", "a123 aa", 0, " 97 49 50 51 32 256"},
        {"qwen2", "123", 0, " 49 50 51"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256];
        gguf *g;
        duet_tokenizer *t = bpe_vocab(cases[i].pre, BPE_OK, &g, err, sizeof err);
        REQUIRE_MSG(t, "%s", err);
        CHECK_IDS(t, cases[i].text, cases[i].flags, cases[i].want);
        tokenizer_free(t);
        gguf_close(g);
    }
}

typedef struct id_list {
    int *ids;
    size_t n, cap;
} id_list;

static void id_push(void *arg, int id) {
    id_list *l = arg;
    if (l->n == l->cap) l->ids = realloc(l->ids, (l->cap = 2 * l->cap + 64) * sizeof *l->ids);
    l->ids[l->n++] = id;
}

/* The piece cache of long texts changes nothing: 40 KB of the test strings give the same ids with and
 * without it, for a vocabulary that merges (GPT-2) and one that takes known pieces whole (Llama 3). */
TEST(test_bpe_cache_same_ids) {
    for (size_t k = 0; k < 2; k++) {
        char err[256];
        gguf *g = gguf_open(BPE_VOCABS[k], err, sizeof err);
        REQUIRE_MSG(g, "%s", err);
        int64_t n_vocab = 0;
        size_t n_tok;
        int et;
        REQUIRE(gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok) == 0);
        n_vocab = (int64_t)n_tok;
        bpe *b = bpe_load(g, (int)n_vocab, err, sizeof err);
        REQUIRE_MSG(b, "%s", err);
        vectors vec;
        REQUIRE(vectors_load(&vec, BPE_VOCABS[k]) == 0);
        size_t len = 0;
        char *text = malloc(64 * 1024);
        for (int r = 0; len < 40 * 1024; r++) {
            const int i = (r * 7) % vec.n;
            memcpy(text + len, vec.text[i], vec.len[i]);
            len += vec.len[i];
        }
        id_list a = {0}, c = {0};
        CHECK_EQ_INT(bpe_encode(b, text, len, true, id_push, &a), 0);
        CHECK_EQ_INT(bpe_encode(b, text, len, false, id_push, &c), 0);
        CHECK(a.n == c.n && a.n > 1000 && !memcmp(a.ids, c.ids, a.n * sizeof *a.ids));
        free(a.ids);
        free(c.ids);
        free(text);
        vectors_free(&vec);
        bpe_free(b);
        gguf_close(g);
    }
}
