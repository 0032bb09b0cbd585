/* Files that are valid GGUF but not a model duet can run: each case edits one field of stories260K.gguf in
 * place (same size, so the GGUF reader still accepts it) and the loader must refuse it with a message that
 * names the problem. The GGUF reader's own corruptions are in test_gguf.c. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "duet.h"
#include "test.h"

#define STORIES "models/stories260K.gguf"

/* Where a length-prefixed GGUF string (a key or a tensor name) ends in buf, or 0 if it is not there. */
static size_t after_string(const uint8_t *buf, size_t len, const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i + 8 + n <= len; i++) {
        uint64_t l;
        memcpy(&l, buf + i, 8);
        if (l == n && !memcmp(buf + i + 8, s, n)) return i + 8 + n;
    }
    return 0;
}

typedef struct {
    const char *what;   /* key or tensor name to find */
    int skip;           /* bytes from its end to the patch: 4 past a key's value type, -1 its last letter */
    const void *bytes;  /* what to write there */
    size_t n;
    const char *expect; /* in the error message */
} patch;

/* Loads part_spec (NULL: everything) of the edited file and expects it refused. */
static void expect_refused(const uint8_t *orig, size_t len, const patch *p, const char *part_spec, int line) {
    char path[64], err[512];
    snprintf(path, sizeof path, "/tmp/duet-test-model-%d.gguf", (int)getpid());
    uint8_t *buf = malloc(len);
    if (!buf) return test_fail(__FILE__, line, "out of memory");
    memcpy(buf, orig, len);
    size_t at = after_string(buf, len, p->what);
    if (!at) {
        free(buf);
        return test_fail(__FILE__, line, "'%s' not found in %s", p->what, STORIES);
    }
    memcpy(buf + (ptrdiff_t)at + p->skip, p->bytes, p->n);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len) test_fail(__FILE__, line, "cannot write %s", path);
    if (f) fclose(f);
    free(buf);
    duet_part part;
    if (part_spec && duet_part_parse(part_spec, &part, err, sizeof err)) test_fail(__FILE__, line, "%s", err);
    duet_model *m = duet_model_load(path, part_spec ? &part : NULL, 0, err, sizeof err);
    if (m) test_fail(__FILE__, line, "%s edited: loaded, expected an error with '%s'", p->what, p->expect);
    else if (!strstr(err, p->expect))
        test_fail(__FILE__, line, "%s edited: error '%s' does not say '%s'", p->what, err, p->expect);
    duet_model_free(m);
    unlink(path);
}

TEST(test_model_invalid_files_refused) {
    size_t len;
    uint8_t *orig = (uint8_t *)test_read_file(STORIES, &len);
    REQUIRE(orig);
    char err[512];
    duet_model *m = duet_model_load(STORIES, NULL, 0, err, sizeof err); /* the unedited file loads */
    REQUIRE_MSG(m, "%s", err);
    duet_model_free(m);
    /* a u32 value after its 4-byte type; stories260K has dim 64, 8 heads, 4 kv heads, 5 layers, ffn 172 */
    const uint32_t seven = 7, three = 3, zero = 0, six = 6, four = 4, f32_type = 6, i32_type = 26, million = 1000000;
    const float minus_one = -1.0f;
    const int64_t swapped[2] = {64, 172}; /* blk.0.ffn_down.weight is [172, 64]: same bytes, transposed */
    const patch cases[] = {
        {"general.architecture", 12, "gemma", 5, "architecture 'gemma' is not supported"},
        {"llama.attention.head_count", 4, &seven, 4, "heads do not divide dim 64"},
        {"llama.attention.head_count_kv", 4, &three, 4, "3 kv heads do not divide"},
        {"llama.context_length", 4, &zero, 4, "'llama.context_length' is not a sensible positive integer"},
        {"llama.block_count", 4, &six, 4, "block_count 6 needs 9 tensors per layer; the file has 47"},
        {"llama.block_count", 4, &million, 4, "block_count 1000000 needs"}, /* before allocating by it */
        {"llama.rope.dimension_count", 4, &four, 4, "partial rotary embedding (4 of 8 dims)"},
        {"llama.attention.layer_norm_rms_epsilon", 4, &minus_one, 4, "is not a positive number"},
        /* the value's type, not the value: the ffn length as a float */
        {"llama.feed_forward_length", 0, &f32_type, 4, "'llama.feed_forward_length' is not a sensible positive"},
        {"token_embd.weight", -1, "z", 1, "'token_embd.weight' is missing"},
        {"blk.1.ffn_up.weight", -1, "z", 1, "tensor 'blk.1.ffn_up.weight' is missing"},
        {"blk.0.ffn_down.weight", 4, swapped, sizeof swapped, "has shape [64, 172], expected [172, 64]"},
        /* a norm's type after its n_dims and one ne: I32 has F32's size, so the file still parses */
        {"blk.0.attn_norm.weight", 12, &i32_type, 4, "has type I32, which duet cannot compute with"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_refused(orig, len, &cases[i], NULL, __LINE__);
    /* a process holding no layer still sizes its scratch by the ffn length, so that is checked too */
    const patch ffn = {"llama.feed_forward_length", 4, &million, 4,
                       "'blk.0.ffn_up.weight' has shape [64, 172], expected [64, 1000000]"};
    expect_refused(orig, len, &ffn, "embed", __LINE__);
    free(orig);
}
