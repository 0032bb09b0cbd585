#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/json.h"
#include "duet.h"
#include "test.h"

static json *parse_str(const char *s, char *err, size_t errlen) { return json_parse(s, strlen(s), err, errlen); }

/* Expects s to be refused with status-bearing message containing `what`. */
static void expect_bad(const char *s, size_t len, const char *what) {
    char err[256] = "";
    json *d = json_parse(s, len, err, sizeof err);
    CHECK_MSG(d == NULL, "accepted malformed input \"%.40s\"", s);
    CHECK_MSG(strstr(err, what) != NULL, "input \"%.40s\": message \"%s\" lacks \"%s\"", s, err, what);
    CHECK_MSG(strstr(err, "byte ") != NULL || strstr(err, "limit") != NULL, "no offset in \"%s\"", err);
    json_free(d);
}
#define BAD(s, what) expect_bad(s, sizeof(s) - 1, what)

TEST(test_json_nested_document) {
    char err[256];
    json *d = parse_str(" {\"a\": [1, 2.5, {\"b\": null}], \"t\": true, \"f\": false, \"s\": \"x\", \"e\": {}, \"z\": []}\n",
                        err, sizeof err);
    REQUIRE_MSG(d, "%s", err);
    const json_val *r = json_root(d);
    CHECK_EQ_INT(json_type_of(r), JSON_OBJ);
    CHECK_EQ_INT(json_len(r), 6);
    CHECK(strcmp(json_key_at(r, 1), "t") == 0);
    const json_val *a = json_get(r, "a");
    CHECK_EQ_INT(json_type_of(a), JSON_ARR);
    CHECK_EQ_INT(json_len(a), 3);
    CHECK(json_num(json_at(a, 0)) == 1.0);
    CHECK(json_num(json_at(a, 1)) == 2.5);
    CHECK(json_at(a, 3) == NULL);
    CHECK_EQ_INT(json_type_of(json_get(json_at(a, 2), "b")), JSON_NULL);
    CHECK(json_get(json_at(a, 2), "c") == NULL);
    CHECK(json_bool(json_get(r, "t")));
    CHECK(!json_bool(json_get(r, "f")));
    CHECK_EQ_INT(json_type_of(json_get(r, "f")), JSON_BOOL);
    size_t n;
    CHECK(strcmp(json_str(json_get(r, "s"), &n), "x") == 0 && n == 1);
    CHECK_EQ_INT(json_len(json_get(r, "e")), 0);
    CHECK_EQ_INT(json_type_of(json_get(r, "z")), JSON_ARR);
    CHECK(json_get(r, "missing") == NULL);
    CHECK(json_key_at(a, 0) == NULL);
    json_free(d);
}

TEST(test_json_scalars_at_root) {
    char err[256];
    json *d = parse_str("\"only\"", err, sizeof err);
    REQUIRE_MSG(d, "%s", err);
    CHECK(strcmp(json_str(json_root(d), NULL), "only") == 0);
    json_free(d);
    d = parse_str(" null ", err, sizeof err);
    REQUIRE_MSG(d, "%s", err);
    CHECK_EQ_INT(json_type_of(json_root(d)), JSON_NULL);
    json_free(d);
}

TEST(test_json_numbers_round_trip) {
    char err[256];
    json *d = parse_str("[1e-7, -0, 4.78125, 0.1, 1.7976931348623157e308, 5e-324, -12E+2, 0.30000000000000004, 123456789012345678]",
                        err, sizeof err);
    REQUIRE_MSG(d, "%s", err);
    const json_val *r = json_root(d);
    CHECK(json_num(json_at(r, 0)) == 1e-7);
    CHECK(json_num(json_at(r, 1)) == 0 && signbit(json_num(json_at(r, 1))));
    CHECK(json_num(json_at(r, 2)) == 4.78125);
    CHECK(json_num(json_at(r, 3)) == 0.1);
    CHECK(json_num(json_at(r, 4)) == 1.7976931348623157e308);
    CHECK(json_num(json_at(r, 5)) == 5e-324);
    CHECK(json_num(json_at(r, 6)) == -1200.0);
    CHECK(json_num(json_at(r, 7)) == 0.30000000000000004);
    CHECK(json_num(json_at(r, 8)) == 123456789012345678.0);
    json_free(d);
}

TEST(test_json_escapes_to_utf8) {
    char err[256];
    const char *s = "\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t \\u00e9 \\u20AC \\ud83d\\ude00 \\u0000z \xc3\xa9\"";
    json *d = parse_str(s, err, sizeof err);
    REQUIRE_MSG(d, "%s", err);
    size_t n;
    const char *v = json_str(json_root(d), &n);
    const char want[] = "a\"b\\c/d\b\f\n\r\t \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \0z \xc3\xa9";
    CHECK_EQ_INT(n, sizeof want - 1);
    CHECK(v && memcmp(v, want, sizeof want) == 0);
    json_free(d);
    /* a key holding \u0000 must not match its prefix */
    d = parse_str("{\"k\\u0000x\": 1, \"k\": 2}", err, sizeof err);
    REQUIRE_MSG(d, "%s", err);
    CHECK(json_num(json_get(json_root(d), "k")) == 2);
    json_free(d);
}

TEST(test_json_malformed) {
    BAD("", "empty input");
    BAD("  \n ", "empty input");
    BAD("[1,]", "unexpected character");
    BAD("{\"a\":1,}", "expected a string key");
    BAD("[01]", "leading zero");
    BAD("-01", "leading zero");
    BAD("[1.]", "no digits after '.'");
    BAD("[.5]", "unexpected character");
    BAD("[1e]", "no digits in exponent");
    BAD("[+1]", "unexpected character");
    BAD("[-]", "bad number");
    BAD("0x10", "trailing characters");
    BAD("1e400", "out of range");
    BAD("\"a\\x\"", "bad escape");
    BAD("\"\\u12G4\"", "bad \\u escape");
    BAD("\"\\u12\"", "bad \\u escape");
    BAD("\"abc", "unterminated string");
    BAD("\"abc\\\"", "unterminated string");
    BAD("\"a\nb\"", "control character");
    BAD("\"a\tb\"", "control character");
    BAD("\"\\ud800\"", "lone high surrogate");
    BAD("\"\\ud800\\u0041\"", "lone high surrogate");
    BAD("\"\\udc00\"", "lone low surrogate");
    BAD("\"\xff\"", "invalid UTF-8");
    BAD("\"\xc0\xaf\"", "invalid UTF-8");          /* overlong '/' */
    BAD("\"\xed\xa0\x80\"", "invalid UTF-8");      /* encoded surrogate */
    BAD("\"\xf4\x90\x80\x80\"", "invalid UTF-8");  /* above U+10FFFF */
    BAD("\"\xe2\x82\"", "invalid UTF-8");          /* truncated */
    BAD("[1] x", "trailing characters");
    BAD("{} {}", "trailing characters");
    BAD("[1 2]", "expected ',' or ']'");
    BAD("{\"a\" 1}", "expected ':'");
    BAD("{1:2}", "expected a string key");
    BAD("[1", "unterminated array");
    BAD("{\"a\":1", "unterminated object");
    BAD("[tru]", "unexpected character");
    BAD("nul", "unexpected character");
    BAD("[NaN]", "unexpected character");
    BAD("\"a\"\0", "trailing characters");
    char err[256];
    CHECK(json_parse("[]", (size_t)300 << 20, err, sizeof err) == NULL);
    CHECK(strstr(err, "256 MiB") != NULL);
}

TEST(test_json_error_offset) {
    char err[256];
    json *d = parse_str("[1, 2,\n 3,, 4]", err, sizeof err);
    CHECK(d == NULL);
    CHECK_MSG(strstr(err, "byte 10:") != NULL, "message: %s", err);
}

static char *nested(int depth) {
    char *s = malloc(2 * (size_t)depth + 1);
    memset(s, '[', depth);
    memset(s + depth, ']', depth);
    s[2 * depth] = '\0';
    return s;
}

TEST(test_json_depth_limit) {
    char err[256];
    char *s = nested(256);
    json *d = parse_str(s, err, sizeof err);
    CHECK_MSG(d != NULL, "depth 256 refused: %s", err);
    json_free(d);
    free(s);
    s = nested(257);
    d = parse_str(s, err, sizeof err);
    CHECK(d == NULL && strstr(err, "nesting deeper than 256"));
    free(s);
    s = nested(1000);
    d = parse_str(s, err, sizeof err);
    CHECK(d == NULL && strstr(err, "nesting deeper than 256"));
    free(s);
}

TEST(test_json_greedy_jsonl) {
    FILE *f = fopen(TEST_DATA "/stories260K-greedy.jsonl", "rb");
    REQUIRE(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lines = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        char err[256];
        json *d = json_parse(line, (size_t)n, err, sizeof err);
        CHECK_MSG(d, "line %d: %s", lines + 1, err);
        if (!d) break;
        const json_val *r = json_root(d);
        const json_val *out = json_get(r, "output_ids");
        CHECK_EQ_INT(json_len(out), 64);
        CHECK_EQ_INT(json_len(json_get(r, "output_pieces")), 64);
        CHECK(json_num(json_get(r, "n_new_tokens")) == 64);
        CHECK_EQ_INT(json_type_of(json_get(r, "stopped_at_eog")), JSON_BOOL);
        if (lines == 0) {
            CHECK(strcmp(json_str(json_get(r, "prompt"), NULL), "Once upon a time") == 0);
            const json_val *p = json_get(r, "prompt_ids");
            CHECK_EQ_INT(json_len(p), 5);
            CHECK(json_num(json_at(p, 0)) == 1 && json_num(json_at(p, 4)) == 378);
            CHECK(json_num(json_at(out, 0)) == 432 && json_num(json_at(out, 63)) == 336);
            size_t len;
            const char *text = json_str(json_get(r, "output_text"), &len);
            CHECK(text && len == strlen(text) && strstr(text, "too high.\nLily's mom said"));
            CHECK(strcmp(json_str(json_at(json_get(r, "output_pieces"), 57), NULL), "\n") == 0);
        }
        if (lines == 5) CHECK(strcmp(json_str(json_get(r, "prompt"), NULL), "") == 0);
        json_free(d);
        lines++;
    }
    free(line);
    fclose(f);
    CHECK_EQ_INT(lines, 6);
}

TEST(test_json_logits_file) {
    char err[256];
    json *d = json_load_file(TEST_DATA "/stories260K-logits.json", err, sizeof err);
    REQUIRE_MSG(d, "%s", err);
    const json_val *r = json_root(d);
    CHECK(json_num(json_get(r, "n_vocab")) == 512);
    const json_val *lg = json_get(r, "logits"), *am = json_get(r, "argmax_per_position");
    REQUIRE(json_len(lg) == 8 && json_len(am) == 8);
    CHECK(json_num(json_at(json_at(lg, 0), 0)) == -6.2229147);
    CHECK(json_num(json_at(json_at(lg, 0), 1)) == 8.40434265);
    CHECK(json_num(json_at(json_at(lg, 7), 511)) == -7.12343121);
    for (size_t i = 0; i < 8; i++) {
        const json_val *row = json_at(lg, i);
        REQUIRE(json_len(row) == 512);
        size_t best = 0;
        for (size_t j = 1; j < 512; j++)
            if (json_num(json_at(row, j)) > json_num(json_at(row, best))) best = j;
        CHECK_EQ_INT(best, json_num(json_at(am, i)));
    }
    json_free(d);
}

TEST(test_json_load_file_errors) {
    char err[256];
    CHECK(json_load_file(TEST_DATA "/no-such-file.json", err, sizeof err) == NULL);
    CHECK(strstr(err, "no-such-file.json") != NULL);
    /* a binary file is refused with its name and an offset */
    CHECK(json_load_file(TEST_DATA "/tok512.bin", err, sizeof err) == NULL);
    CHECK(strstr(err, "tok512.bin") && strstr(err, "byte "));
}

/* A 10 MB document shaped like the dequantization reference: objects of ~40 keys holding arrays of
 * numbers. Prints the parse time (speed is not asserted in tests). */
TEST(test_json_large_document) {
    size_t cap = 11u << 20, n = 0;
    char *s = malloc(cap);
    REQUIRE(s);
    n += (size_t)sprintf(s + n, "{");
    int objs = 0;
    while (n < (10u << 20)) {
        n += (size_t)sprintf(s + n, "%s\"t%d\": {", objs ? "," : "", objs);
        for (int k = 0; k < 40; k++) {
            n += (size_t)sprintf(s + n, "%s\"k%d\": [", k ? "," : "", k);
            for (int j = 0; j < 16; j++) n += (size_t)sprintf(s + n, "%s%.17g", j ? "," : "", (objs * 40 + k) * 0.001 + j);
            n += (size_t)sprintf(s + n, "]");
        }
        n += (size_t)sprintf(s + n, "}");
        objs++;
    }
    n += (size_t)sprintf(s + n, "}");
    char err[256];
    double t0 = clock_now_ms();
    json *d = json_parse(s, n, err, sizeof err);
    double ms = clock_now_ms() - t0;
    REQUIRE_MSG(d, "%s", err);
    printf("    parsed %.1f MB in %.1f ms\n", n / 1e6, ms);
    const json_val *r = json_root(d);
    CHECK_EQ_INT(json_len(r), objs);
    const json_val *last = json_get(json_get(r, "t5"), "k39");
    CHECK(json_num(json_at(last, 15)) == (5 * 40 + 39) * 0.001 + 15);
    json_free(d);
    free(s);
}
