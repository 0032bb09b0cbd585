/* Chat templates: recognised from the real files' tokenizer.chat_template, written as llama.cpp writes
 * them, tokenized with their special tokens, and `duet generate --chat` end to end. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "duet.h"
#include "engine/chat.h"
#include "engine/synth.h"
#include "test.h"

#define LLAMA3_VOCAB TEST_DATA "/vocab/ggml-vocab-llama3.gguf"
#define QWEN2_VOCAB TEST_DATA "/vocab/ggml-vocab-qwen2.gguf"

TEST(test_chat_detect_and_apply) {
    char err[256];
    duet_tokenizer *l3 = duet_tokenizer_load(LLAMA3_VOCAB, err, sizeof err);
    duet_tokenizer *q2 = duet_tokenizer_load(QWEN2_VOCAB, err, sizeof err);
    REQUIRE_MSG(l3 && q2, "%s", err);
    CHECK_EQ_INT(chat_detect(duet_tokenizer_chat_template(l3), err, sizeof err), CHAT_LLAMA3);
    CHECK_EQ_INT(chat_detect(duet_tokenizer_chat_template(q2), err, sizeof err), CHAT_CHATML);
    CHECK(chat_detect("{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}", err, sizeof err) < 0);
    CHECK_MSG(strstr(err, "not one duet knows") && strstr(err, "starts '{% for m in messages %}[INST]"), "%s", err);
    CHECK(chat_detect(NULL, err, sizeof err) < 0 && strstr(err, "no chat template"));

    char *p = chat_apply(CHAT_LLAMA3, " Be brief. ", "Hello\n");
    CHECK_MSG(p && !strcmp(p, "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                              "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                              "<|start_header_id|>assistant<|end_header_id|>\n\n"), "%s", p);
    /* its special tokens are single tokens when parsed, and BOS comes first */
    int ids[32];
    int n = duet_tokenize_ex(l3, p, strlen(p), DUET_TOK_BOS | DUET_TOK_SPECIAL, ids, 32);
    REQUIRE(n > 4 && n <= 32);
    CHECK_EQ_INT(ids[0], 128000);
    CHECK_EQ_INT(ids[1], 128006); /* <|start_header_id|> */
    CHECK_EQ_INT(ids[n - 1], 271); /* "\n\n" */
    CHECK_EQ_INT(ids[n - 2], 128007); /* <|end_header_id|> */
    free(p);
    p = chat_apply(CHAT_CHATML, NULL, "Hi there");
    CHECK_MSG(p && !strcmp(p, "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"), "%s", p);
    n = duet_tokenize_ex(q2, p, strlen(p), DUET_TOK_BOS | DUET_TOK_SPECIAL, ids, 32);
    REQUIRE(n > 4 && n <= 32);
    CHECK_EQ_INT(ids[0], 151644); /* <|im_start|>, no BOS for Qwen */
    CHECK_EQ_INT(duet_token_find(q2, chat_eot(CHAT_CHATML), 10), 151645);
    CHECK_EQ_INT(duet_token_find(l3, chat_eot(CHAT_LLAMA3), 10), 128009);
    free(p);
    duet_tokenizer_free(l3);
    duet_tokenizer_free(q2);
}

/* --chat on a small Qwen3-shaped file carrying the Qwen vocabulary and template: the prompt is the template's
 * (18 tokens with the system message); a file with no template or a lone --system are refused clearly. */
TEST(test_chat_cli_generate) {
    char path[] = "/tmp/duet-test-chat-XXXXXX", err[512] = "", args[512];
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    duet_config c = *synth_shape("qwen3-0.6b");
    c.n_layers = 1, c.dim = 64, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 64, c.ffn_dim = 64;
    REQUIRE_MSG(synth_write_arch(&c, synth_shape_extra("qwen3-0.6b"), DUET_TYPE_Q8_0, 1, QWEN2_VOCAB, path, NULL,
                                 NULL, err, sizeof err) == 0, "%s", err);
    int st;
    snprintf(args, sizeof args, "generate -m %s -p 'Hello there' --chat --system 'Be brief.' -n 2 --json", path);
    char *out = test_run_cli(args, &st, 0);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    CHECK_MSG(strstr(out, "\"prompt_tokens\":18,") != NULL, "%s", out);
    free(out);
    out = test_run_cli("generate -m " TEST_DATA "/arch/qwen2-tiny.gguf -p hi --chat -n 2", &st, 1);
    REQUIRE(out);
    CHECK_EQ_INT(st, 1);
    CHECK_MSG(strstr(out, "no chat template") != NULL, "%s", out);
    free(out);
    snprintf(args, sizeof args, "generate -m %s -p hi --system x", path);
    out = test_run_cli(args, &st, 1);
    REQUIRE(out);
    CHECK_EQ_INT(st, 2);
    CHECK(strstr(out, "--system needs --chat") != NULL);
    free(out);
    unlink(path);
}
