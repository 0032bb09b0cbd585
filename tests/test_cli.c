/* The duet command as a user runs it: output text against llama.cpp's, JSON metrics, help and errors. */
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "test.h"

TEST(test_cli_generate_text_matches_llamacpp) {
    char err[256];
    FILE *f = fopen(TEST_DATA "/stories260K-greedy.jsonl", "r");
    REQUIRE(f);
    char line[1 << 16];
    REQUIRE(fgets(line, sizeof line, f));
    fclose(f);
    json *doc = json_parse(line, strlen(line), err, sizeof err);
    REQUIRE(doc);
    const char *prompt = json_str(json_get(json_root(doc), "prompt"), NULL);
    const char *want = json_str(json_get(json_root(doc), "output_text"), NULL);
    for (int mmap = 0; mmap < 2; mmap++) { /* weights copied (default) or read in place */
        char args[512];
        snprintf(args, sizeof args, "generate -m models/stories260K.gguf -p '%s' -n 64%s", prompt,
                 mmap ? " --mmap" : "");
        int st;
        char *out = test_run_cli(args, &st, 0);
        REQUIRE(out);
        CHECK_EQ_INT(st, 0);
        size_t plen = strlen(prompt);
        CHECK(!strncmp(out, prompt, plen));
        CHECK_MSG(!strncmp(out + plen, want, strlen(want)), "%s: got: %s", args, out);
        free(out);
    }
    json_free(doc);
}

TEST(test_cli_generate_json_metrics) {
    int st;
    char *out = test_run_cli("generate -m models/stories260K.gguf -p 'Once upon a time' -n 20 --json", &st, 0);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    char err[256];
    json *doc = json_parse(out, strlen(out), err, sizeof err);
    REQUIRE_MSG(doc, "not JSON (%s): %s", err, out);
    const json_val *r = json_root(doc);
    CHECK(!strcmp(json_str(json_get(r, "mode"), NULL), "device"));
    CHECK_EQ_INT(json_num(json_get(r, "tokens")), 20);
    CHECK_EQ_INT(json_num(json_get(r, "prompt_tokens")), 5);
    CHECK(json_num(json_get(r, "ttft_ms")) > 0);
    CHECK(json_num(json_get(r, "total_ms")) >= json_num(json_get(r, "ttft_ms")));
    CHECK(json_num(json_get(r, "decode_tokens_per_s")) > 0);
    const json_val *tbt = json_get(r, "tbt_ms");
    CHECK(tbt && json_num(json_get(tbt, "p50")) <= json_num(json_get(tbt, "max")));
    static const char *names[] = {"device_compute_ms", "cloud_compute_ms", "comm_wait_ms", "bytes_up", "bytes_down",
                                  "round_trips", "tokens_per_s"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) CHECK_MSG(json_get(r, names[i]), "no %s", names[i]);
    CHECK_EQ_INT(json_num(json_get(r, "bytes_up")), 0);
    json_free(doc);
    free(out);
}

TEST(test_cli_help_and_usage_errors) {
    int st;
    char *out = test_run_cli("generate --help", &st, 0);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    static const char *flags[] = {"--model", "--prompt", "--tokens", "--temp", "--top-k", "--top-p", "--seed",
                                  "--threads", "--json"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++) CHECK_MSG(strstr(out, flags[i]), "help lacks %s", flags[i]);
    free(out);
    out = test_run_cli("--help", &st, 0);
    CHECK(out && st == 0 && strstr(out, "generate") && strstr(out, "convert") && strstr(out, "synth"));
    free(out);
    out = test_run_cli("generate -m models/stories260K.gguf --bogus", &st, 1);
    CHECK(out && st == 2 && strstr(out, "unknown option"));
    free(out);
    out = test_run_cli("generate -m models/stories260K.gguf -n many", &st, 1);
    CHECK(out && st == 2 && strstr(out, "not an integer"));
    free(out);
    out = test_run_cli("generate -m tests/data/nothing.gguf", &st, 1);
    CHECK(out && st == 1 && strstr(out, "nothing.gguf"));
    free(out);
    out = test_run_cli("frobnicate", &st, 1);
    CHECK(out && st == 2 && strstr(out, "unknown command"));
    free(out);
}

TEST(test_cli_sampling_is_seeded) {
    int st1, st2, st3;
    char *a = test_run_cli("generate -m models/stories260K.gguf -n 40 --temp 1.0 --seed 5 --ids", &st1, 0);
    char *b = test_run_cli("generate -m models/stories260K.gguf -n 40 --temp 1.0 --seed 5 --ids", &st2, 0);
    char *c = test_run_cli("generate -m models/stories260K.gguf -n 40 --temp 1.0 --seed 6 --ids", &st3, 0);
    CHECK(a && b && c && st1 == 0 && st2 == 0 && st3 == 0);
    if (a && b && c) {
        CHECK(!strcmp(a, b));
        CHECK(strcmp(a, c));
    }
    free(a);
    free(b);
    free(c);
}

/* duet tokenize on a vocabulary-only file: ids and pieces, BOS as the vocabulary says, --special. */
TEST(test_cli_tokenize) {
    int st;
    char *out = test_run_cli("tokenize -m tests/data/vocab/ggml-vocab-llama3.gguf -p 'Hello world<|eot_id|>' --ids-only",
                             &st, 0);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    CHECK_MSG(!strcmp(out, "128000 9906 1917 27 91 68 354 851 91 29\n"), "%s", out);
    free(out);
    out = test_run_cli("tokenize -m tests/data/vocab/ggml-vocab-llama3.gguf -p 'Hello world<|eot_id|>' --ids-only "
                       "--special --no-bos", &st, 0);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    CHECK_MSG(!strcmp(out, "9906 1917 128009\n"), "%s", out);
    free(out);
    out = test_run_cli("tokenize -m tests/data/vocab/ggml-vocab-qwen2.gguf -p 'Hello world'", &st, 0);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    CHECK_MSG(!strcmp(out, "  9707 -> 'Hello'\n  1879 -> ' world'\n"), "%s", out);
    free(out);
    out = test_run_cli("tokenize -m tests/data/vocab/ggml-vocab-qwen2.gguf", &st, 1);
    REQUIRE(out);
    CHECK_EQ_INT(st, 2);
    CHECK(strstr(out, "-p TEXT or -f FILE") != NULL);
    free(out);
    out = test_run_cli("tokenize -m tests/data/quant/README.md -p x", &st, 1);
    REQUIRE(out);
    CHECK_EQ_INT(st, 1);
    CHECK(strstr(out, "README.md") != NULL);
    free(out);
}

/* Every baseline mode over the real protocol on the Qwen3 reference model prints llama.cpp's greedy text. */
TEST(test_cli_run_modes_on_qwen3_match_llamacpp) {
    char err[256];
    json *doc = json_load_file(TEST_DATA "/arch/qwen3-tiny.gguf.refgen.json", err, sizeof err);
    REQUIRE_MSG(doc, "%s", err);
    const char *want = json_str(json_get(json_root(doc), "output_text"), NULL);
    REQUIRE(want);
    static const char *const modes[] = {"device", "split", "cloud"};
    for (int i = 0; i < 3; i++) {
        char args[256];
        snprintf(args, sizeof args, "run --mode %s -m " TEST_DATA "/arch/qwen3-tiny.gguf -p 'Once upon a time' -n 16",
                 modes[i]);
        int st;
        char *out = test_run_cli(args, &st, 0);
        REQUIRE(out);
        CHECK_EQ_INT(st, 0);
        CHECK_MSG(!strncmp(out, "Once upon a time", 16) && !strncmp(out + 16, want, strlen(want)), "%s: %s", modes[i],
                  out);
        free(out);
    }
    json_free(doc);
}
