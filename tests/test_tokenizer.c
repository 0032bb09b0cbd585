#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/json.h"
#include "duet.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "test.h"

#define SPM_VOCAB TEST_DATA "/vocab/ggml-vocab-llama-spm.gguf"
#define STORIES_GGUF "models/stories260K.gguf"

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

static int vectors_load(vectors *v) {
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t ilen, olen;
    memset(v, 0, sizeof *v);
    v->inp = test_read_file(SPM_VOCAB ".inp", &ilen);
    v->out = test_read_file(SPM_VOCAB ".out", &olen);
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

TEST(test_tokenizer_llama_spm_vectors) {
    char err[256];
    vocab v = vocab_open(SPM_VOCAB, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    CHECK_EQ_INT(duet_tokenizer_n_vocab(v.t), 32000);
    CHECK_EQ_INT(duet_tokenizer_bos(v.t), 1);
    CHECK_EQ_INT(duet_tokenizer_eos(v.t), 2);
    vectors vec;
    REQUIRE(vectors_load(&vec) == 0);
    CHECK_EQ_INT(vec.n, 46);
    for (int i = 0; i < vec.n; i++) {
        int n;
        int *ids = tokenize(v.t, vec.text[i], vec.len[i], false, &n);
        char got[4096] = "";
        size_t used = 0;
        for (int j = 0; j < n && used < sizeof got - 16; j++) used += (size_t)sprintf(got + used, " %d", ids[j]);
        CHECK_MSG(strcmp(got, vec.ids[i]) == 0, "string %d \"%.*s\":\n      got  %s\n      want %s", i,
                  (int)(vec.len[i] < 40 ? vec.len[i] : 40), vec.text[i], got, vec.ids[i]);
        free(ids);
    }
    vectors_free(&vec);
    vocab_close(&v);
}

/* Decoding the encoding gives the text back with the space the encoder prefixed. */
TEST(test_tokenizer_piece_round_trip) {
    char err[256];
    vocab v = vocab_open(SPM_VOCAB, err, sizeof err);
    REQUIRE_MSG(v.t, "%s", err);
    vectors vec;
    REQUIRE(vectors_load(&vec) == 0);
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
    s.model = "gpt2";
    expect_refused(s, "'gpt2' is not supported");
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
