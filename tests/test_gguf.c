/* GGUF reader and writer: llama.cpp's files load with the layout files.json and dequant-reference.json
 * record; hand-built corrupt files are refused with the right status and a message naming the problem;
 * what the writer writes reads back equal. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/json.h"
#include "base/sha256.h"
#include "duet.h"
#include "engine/gguf.h"
#include "engine/quant.h"
#include "test.h"

static const char *quant_files[] = {"small-f32.gguf", "small-f16.gguf", "small-q8_0.gguf",
                                    "small-q4_0.gguf", "small-q4_k_m.gguf", "small-q6_k.gguf"};

TEST(test_gguf_reference_files_layout) {
    char err[256];
    json *files = json_load_file(TEST_DATA "/quant/files.json", err, sizeof err);
    json *deq = json_load_file(TEST_DATA "/quant/dequant-reference.json", err, sizeof err);
    REQUIRE_MSG(files && deq, "%s", err);
    for (size_t f = 0; f < sizeof quant_files / sizeof quant_files[0]; f++) {
        char path[256];
        snprintf(path, sizeof path, TEST_DATA "/quant/%s", quant_files[f]);
        const json_val *info = json_get(json_root(files), quant_files[f]);
        const json_val *tens = json_get(json_root(deq), quant_files[f]);
        gguf *g = gguf_open(path, err, sizeof err);
        CHECK_MSG(g, "%s: %s", path, err);
        if (!g || !info || !tens) continue;
        size_t len;
        const uint8_t *base = gguf_file_data(g, &len);
        CHECK_EQ_INT(len, json_num(json_get(info, "size_bytes")));
        CHECK_EQ_INT(gguf_version(g), 3);
        CHECK_EQ_INT(gguf_alignment(g), json_num(json_get(info, "alignment")));
        CHECK_EQ_INT(gguf_n_kv(g), json_num(json_get(info, "n_kv")));
        CHECK_EQ_INT(gguf_n_tensors(g), json_num(json_get(info, "n_tensors")));
        uint32_t ftype = 99;
        CHECK_EQ_INT(gguf_get_u32(g, "general.file_type", &ftype), 0);
        CHECK_EQ_INT(ftype, json_num(json_get(info, "general_file_type")));
        const json_val *order = json_get(info, "tensor_order");
        REQUIRE(json_len(order) == (size_t)gguf_n_tensors(g));
        size_t data_start = len;
        for (int i = 0; i < gguf_n_tensors(g); i++) {
            const gguf_tensor *t = gguf_tensor_at(g, i);
            CHECK_MSG(!strcmp(t->name, json_str(json_at(order, (size_t)i), NULL)), "%s: tensor %d is %s", path, i,
                      t->name);
            CHECK(gguf_find_tensor(g, t->name) == t);
            const json_val *ref = json_get(tens, t->name);
            REQUIRE_MSG(ref, "%s: %s not in dequant-reference.json", path, t->name);
            CHECK(!strcmp(quant_traits_get(t->type)->name, json_str(json_get(ref, "type"), NULL)));
            const json_val *ne = json_get(ref, "ne");
            CHECK_EQ_INT(t->n_dims, json_len(ne));
            for (int d = 0; d < GGUF_MAX_DIMS; d++)
                CHECK_EQ_INT(t->ne[d], d < t->n_dims ? json_num(json_at(ne, (size_t)d)) : 1);
            CHECK_EQ_INT((const uint8_t *)t->data - base, json_num(json_get(ref, "data_offset")));
            CHECK_EQ_INT(t->nbytes, json_num(json_get(ref, "n_bytes")));
            char hex[65];
            sha256_hex(t->data, t->nbytes, hex);
            CHECK_MSG(!strcmp(hex, json_str(json_get(ref, "raw_sha256"), NULL)), "%s: %s raw bytes differ", path,
                      t->name);
            size_t at = (size_t)((const uint8_t *)t->data - base) - (size_t)t->offset;
            if (at < data_start) data_start = at;
        }
        CHECK_EQ_INT(data_start, json_num(json_get(info, "data_section_offset")));
        CHECK(gguf_find_tensor(g, "blk.9.attn_q.weight") == NULL);
        gguf_close(g);
    }
    json_free(files);
    json_free(deq);
}

TEST(test_gguf_reference_metadata) {
    char err[256];
    gguf *g = gguf_open(TEST_DATA "/quant/small-q4_k_m.gguf", err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    const char *arch = NULL;
    uint32_t u = 0;
    int64_t i64 = 0;
    float f = 0;
    CHECK_EQ_INT(gguf_get_str(g, "general.architecture", &arch), 0);
    CHECK(arch && !strcmp(arch, "llama"));
    CHECK_EQ_INT(gguf_get_u32(g, "llama.block_count", &u), 0);
    CHECK_EQ_INT(u, 4);
    CHECK_EQ_INT(gguf_get_i64(g, "llama.embedding_length", &i64), 0);
    CHECK_EQ_INT(i64, 256);
    CHECK_EQ_INT(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
    CHECK_NEAR(f, 1e-5, 1e-12);
    CHECK_EQ_INT(gguf_get_u32(g, "no.such.key", &u), 1);
    CHECK(gguf_get_u32(g, "general.architecture", &u) < 0);   /* a string is no integer */
    CHECK(gguf_get_f32(g, "llama.block_count", &f) < 0);      /* nor an integer a float */
    int et = -1;
    size_t n = 0;
    CHECK_EQ_INT(gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), 0);
    CHECK_EQ_INT(et, GGUF_STR);
    CHECK_EQ_INT(n, 512);
    size_t len = 0;
    const char *tok = gguf_arr_str(g, "tokenizer.ggml.tokens", 1, &len);
    CHECK(tok && len == 3 && !strcmp(tok, "<s>"));
    CHECK(gguf_arr_str(g, "tokenizer.ggml.tokens", 512, &len) == NULL);
    CHECK(gguf_arr_str(g, "tokenizer.ggml.scores", 0, &len) == NULL);
    CHECK_EQ_INT(gguf_arr_i64(g, "tokenizer.ggml.token_type", 0, &i64), 0);
    CHECK_EQ_INT(i64, 2); /* <unk> is the unknown token */
    CHECK_EQ_INT(gguf_arr_i64(g, "tokenizer.ggml.token_type", 3, &i64), 0);
    CHECK_EQ_INT(i64, 6); /* <0x00> is a byte token */
    CHECK(gguf_arr_f32(g, "tokenizer.ggml.token_type", 0, &f) < 0);
    CHECK(gguf_arr_i64(g, "tokenizer.ggml.token_type", 512, &i64) < 0);
    int k = gguf_find_key(g, "llama.block_count");
    CHECK(k >= 0 && !strcmp(gguf_kv_key(g, k), "llama.block_count"));
    CHECK(gguf_find_key(g, "llama.block_coun") == -1);
    gguf_close(g);
}

TEST(test_gguf_vocab_file) {
    char err[256];
    gguf *g = gguf_open(TEST_DATA "/vocab/ggml-vocab-llama-spm.gguf", err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    CHECK_EQ_INT(gguf_n_tensors(g), 0);
    size_t n = 0;
    CHECK_EQ_INT(gguf_get_arr(g, "tokenizer.ggml.tokens", NULL, &n), 0);
    CHECK_EQ_INT(n, 32000);
    size_t len;
    const char *tok = gguf_arr_str(g, "tokenizer.ggml.tokens", 31999, &len);
    CHECK(tok && !strcmp(tok, "\xe7\xbb\x99")); /* the last piece of Llama-2's vocabulary */
    float score = 0;
    CHECK_EQ_INT(gguf_arr_f32(g, "tokenizer.ggml.scores", 31999, &score), 0);
    CHECK_EQ_INT(score, -31740);
    gguf_close(g);
}

TEST(test_gguf_open_missing_file) {
    char err[256] = "";
    CHECK(gguf_open("tests/data/no-such-file.gguf", err, sizeof err) == NULL);
    CHECK(strstr(err, "no-such-file.gguf") && strstr(err, "cannot open"));
}

/* ---- malformed input: a small file built by hand, one field at a time made wrong ------------------- */

typedef struct spec {
    const char *magic;
    uint32_t version;
    uint64_t n_t, n_kv;
    const char *key0, *key1;  /* key1 is general.alignment unless renamed */
    const uint8_t *kv1_raw;   /* if set: key 1's type and value, raw */
    size_t kv1_raw_len;
    uint32_t align_type, align;
    uint32_t n_dims_a;
    int64_t ne_a[5];
    uint32_t type_a;
    uint64_t off_a;
    const char *name_b;
    int64_t ne0_b;
    uint64_t off_b;
    size_t cut; /* if set: the file ends here */
} spec;

typedef struct buf {
    uint8_t b[2048];
    size_t n;
} buf;

static void put(buf *o, const void *p, size_t n) {
    if (o->n + n > sizeof o->b) abort(); /* a test bug, not a finding */
    memcpy(o->b + o->n, p, n);
    o->n += n;
}
static void put_u32(buf *o, uint32_t v) { put(o, &v, 4); }
static void put_u64(buf *o, uint64_t v) { put(o, &v, 8); }
static void put_str(buf *o, const char *s) {
    put_u64(o, strlen(s));
    put(o, s, strlen(s));
}

static spec valid_spec(void) {
    return (spec){.magic = "GGUF", .version = 3, .n_t = 2, .n_kv = 2, .key0 = "general.name",
                  .key1 = "general.alignment", .align_type = GGUF_U32, .align = 64, .n_dims_a = 2,
                  .ne_a = {32, 2, 1, 1, 1}, .type_a = DUET_TYPE_F32, .off_a = 0, .name_b = "b", .ne0_b = 64,
                  .off_b = 256};
}

#define NAME_VALUE "a model name long enough that a file cut inside it still has room for its counts, checked first"
#define KEY1_AT (24 + 8 + 12 + 4 + 8 + sizeof NAME_VALUE - 1) /* where key 1 starts in the valid file */

/* Two tensors: "a" F32 and "b" Q8_0, after a 120-byte string so that cuts inside key 0 pass the
 * count-versus-size bounds and reach the truncation checks. */
static void build(const spec *s, buf *o) {
    o->n = 0;
    put(o, s->magic, 4);
    put_u32(o, s->version);
    put_u64(o, s->n_t);
    put_u64(o, s->n_kv);
    put_str(o, s->key0);
    put_u32(o, GGUF_STR);
    put_str(o, NAME_VALUE);
    put_str(o, s->key1);
    if (s->kv1_raw) {
        put(o, s->kv1_raw, s->kv1_raw_len);
    } else {
        put_u32(o, s->align_type);
        put_u32(o, s->align);
    }
    put_str(o, "a");
    put_u32(o, s->n_dims_a);
    for (uint32_t d = 0; d < s->n_dims_a && d < 5; d++) put_u64(o, (uint64_t)s->ne_a[d]);
    put_u32(o, s->type_a);
    put_u64(o, s->off_a);
    put_str(o, s->name_b);
    put_u32(o, 1);
    put_u64(o, (uint64_t)s->ne0_b);
    put_u32(o, DUET_TYPE_Q8_0);
    put_u64(o, s->off_b);
    while (o->n % 64) put(o, "", 1);
    for (int i = 0; i < 256 + 68; i++) put(o, "\x11", 1); /* a: 256 bytes, b: 2 Q8_0 blocks */
    if (s->cut) o->n = s->cut;
}

/* Expects the spec's file refused with a message containing word. gguf_open_mem's contract reports failure
 * as NULL plus the message (the status is not returned), so the message is what can be checked. */
static void expect_bad(const spec *s, const char *word, int line) {
    static buf o;
    build(s, &o);
    char err[256] = "";
    gguf *g = gguf_open_mem(o.b, o.n, err, sizeof err);
    if (g) {
        gguf_close(g);
        test_fail(__FILE__, line, "accepted; expected '%s'", word);
    } else if (!strstr(err, word)) {
        test_fail(__FILE__, line, "message '%s' lacks '%s'", err, word);
    }
}

#define BAD(s, word) expect_bad(&(s), word, __LINE__)

TEST(test_gguf_valid_handmade) {
    spec s = valid_spec();
    static buf o;
    build(&s, &o);
    char err[256] = "";
    gguf *g = gguf_open_mem(o.b, o.n, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    CHECK_EQ_INT(gguf_alignment(g), 64);
    CHECK_EQ_INT(gguf_n_tensors(g), 2);
    const gguf_tensor *b = gguf_find_tensor(g, "b");
    REQUIRE(b);
    CHECK_EQ_INT(b->type, DUET_TYPE_Q8_0);
    CHECK_EQ_INT(b->nbytes, 68);
    CHECK_EQ_INT(b->ne[0], 64);
    CHECK_EQ_INT(b->ne[1], 1);
    CHECK_EQ_INT((const uint8_t *)b->data - o.b, o.n - 68); /* b is the last thing in the file */
    gguf_close(g);
}

/* Scalars of every numeric type, through the typed getters' conversion rules. */
TEST(test_gguf_scalar_types) {
    static const struct {
        uint8_t raw[12];
        size_t len;
        int i64_rc;
        int64_t i64;
        int f32_rc;
        float f32;
    } cases[] = {
        {{GGUF_I8, 0, 0, 0, 0xff}, 5, 0, -1, DUET_EFORMAT, 0},
        {{GGUF_U8, 0, 0, 0, 0xff}, 5, 0, 255, DUET_EFORMAT, 0},
        {{GGUF_I16, 0, 0, 0, 0x01, 0x80}, 6, 0, -32767, DUET_EFORMAT, 0},
        {{GGUF_U16, 0, 0, 0, 0x01, 0x80}, 6, 0, 32769, DUET_EFORMAT, 0},
        {{GGUF_I64, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 12, 0, -2, DUET_EFORMAT, 0},
        {{GGUF_U64, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x80}, 12, DUET_EFORMAT, 0, DUET_EFORMAT, 0}, /* > INT64_MAX */
        {{GGUF_F64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0x40}, 12, DUET_EFORMAT, 0, 0, 2.5f},
        {{GGUF_BOOL, 0, 0, 0, 1}, 5, DUET_EFORMAT, 0, DUET_EFORMAT, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        spec s = valid_spec();
        s.key1 = "x";
        s.kv1_raw = cases[k].raw;
        s.kv1_raw_len = cases[k].len;
        static buf o;
        build(&s, &o);
        char err[256] = "";
        gguf *g = gguf_open_mem(o.b, o.n, err, sizeof err);
        REQUIRE_MSG(g, "case %zu: %s", k, err);
        int64_t i64 = 12345;
        float f = 0;
        bool b = false;
        CHECK_EQ_INT(gguf_get_i64(g, "x", &i64), cases[k].i64_rc);
        if (!cases[k].i64_rc) CHECK_EQ_INT(i64, cases[k].i64);
        CHECK_EQ_INT(gguf_get_f32(g, "x", &f), cases[k].f32_rc);
        if (!cases[k].f32_rc) CHECK(f == cases[k].f32);
        CHECK_EQ_INT(gguf_get_bool(g, "x", &b), cases[k].raw[0] == GGUF_BOOL ? 0 : DUET_EFORMAT);
        CHECK_EQ_INT(gguf_kv_type(g, 1), cases[k].raw[0]);
        gguf_close(g);
    }
}

TEST(test_gguf_bad_magic) {
    spec s = valid_spec();
    s.magic = "GGUG";
    BAD(s, "bad magic");
}

TEST(test_gguf_bad_version) {
    spec s = valid_spec();
    s.version = 4;
    BAD(s, "version 4");
    s.version = 1;
    BAD(s, "version 1");
    s.version = 0x03000000; /* the bytes of a big-endian file */
    BAD(s, "big-endian");
}

TEST(test_gguf_truncated) {
    spec s = valid_spec();
    s.cut = 10;
    BAD(s, "truncated");
    s.cut = KEY1_AT - 10; /* inside key 0's value string */
    BAD(s, "past the end");
    s.cut = KEY1_AT + 8 + 17 + 2; /* inside key 1's value type */
    BAD(s, "truncated: key 1 ('general.alignment')");
}

TEST(test_gguf_string_past_eof) {
    static const uint8_t raw[] = {GGUF_STR, 0, 0, 0, 0x00, 0x00, 0x10, 0, 0, 0, 0, 0}; /* 1 MiB string */
    spec s = valid_spec();
    s.kv1_raw = raw;
    s.kv1_raw_len = sizeof raw;
    s.key1 = "general.comment";
    BAD(s, "runs past the end");
}

TEST(test_gguf_absurd_counts) {
    spec s = valid_spec();
    s.n_t = 1ull << 40;
    BAD(s, "n_tensors");
    s = valid_spec();
    s.n_kv = UINT64_MAX;
    BAD(s, "n_kv");
    s = valid_spec();
    s.n_t = 60; /* small, but more than the bytes could hold */
    BAD(s, "too large");
}

TEST(test_gguf_unknown_value_type) {
    static const uint8_t raw[] = {13, 0, 0, 0, 0, 0, 0, 0};
    spec s = valid_spec();
    s.kv1_raw = raw;
    s.kv1_raw_len = sizeof raw;
    s.key1 = "general.x";
    BAD(s, "unknown value type 13");
}

TEST(test_gguf_arrays_refused) {
    static const uint8_t nested[] = {GGUF_ARR, 0, 0, 0, GGUF_ARR, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t huge[] = {GGUF_ARR, 0, 0, 0, GGUF_U32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    static const uint8_t bad_elem[] = {GGUF_ARR, 0, 0, 0, 77, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    spec s = valid_spec();
    s.key1 = "general.list";
    s.kv1_raw = nested;
    s.kv1_raw_len = sizeof nested;
    BAD(s, "nested array");
    s.kv1_raw = huge;
    s.kv1_raw_len = sizeof huge;
    BAD(s, "runs past the end");
    s.kv1_raw = bad_elem;
    s.kv1_raw_len = sizeof bad_elem;
    BAD(s, "element type 77");
}

TEST(test_gguf_bad_n_dims) {
    spec s = valid_spec();
    s.n_dims_a = 0;
    BAD(s, "n_dims 0");
    s.n_dims_a = 5;
    BAD(s, "n_dims 5");
}

TEST(test_gguf_bad_ne) {
    spec s = valid_spec();
    s.ne_a[1] = 0;
    BAD(s, "ne[1] = 0");
    s.ne_a[1] = -2;
    BAD(s, "must be >= 1");
    s = valid_spec();
    s.n_dims_a = 3;
    s.ne_a[1] = 1ll << 40;
    s.ne_a[2] = 1ll << 40;
    BAD(s, "overflow");
    s = valid_spec();
    s.ne_a[1] = 1ll << 50; /* no overflow, but far more data than the file has */
    BAD(s, "past the end");
}

TEST(test_gguf_unknown_tensor_type) {
    spec s = valid_spec();
    s.type_a = 4; /* a retired ggml number */
    BAD(s, "unknown type 4");
    s.type_a = 1000;
    BAD(s, "tensor 'a'");
}

TEST(test_gguf_unsupported_type_still_parses) {
    spec s = valid_spec();
    s.type_a = 30; /* BF16: a real ggml type the engine does not compute with */
    static buf o;
    build(&s, &o);
    char err[256] = "";
    gguf *g = gguf_open_mem(o.b, o.n, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    const gguf_tensor *a = gguf_find_tensor(g, "a");
    CHECK(a && a->type == 30 && a->nbytes == 128 && !quant_traits_get(30)->supported);
    gguf_close(g);
}

TEST(test_gguf_ne0_not_block_multiple) {
    spec s = valid_spec();
    s.ne0_b = 48;
    BAD(s, "not a multiple of the Q8_0 block");
}

TEST(test_gguf_bad_offsets) {
    spec s = valid_spec();
    s.off_b = 1u << 20;
    BAD(s, "past the end of the file");
    s.off_b = 288; /* a multiple of 32 but not of the file's alignment 64 */
    BAD(s, "not aligned to 64");
    s.off_b = UINT64_MAX - 63;
    BAD(s, "tensor 'b'");
}

TEST(test_gguf_duplicates) {
    spec s = valid_spec();
    s.name_b = "a";
    BAD(s, "duplicate tensor 'a'");
    s = valid_spec();
    s.key1 = "general.name";
    s.kv1_raw = (const uint8_t *)"\x04\0\0\0\x07\0\0\0";
    s.kv1_raw_len = 8;
    BAD(s, "duplicate key 'general.name'");
}

TEST(test_gguf_bad_alignment) {
    spec s = valid_spec();
    s.align = 48;
    BAD(s, "not a power of two");
    s.align = 0;
    BAD(s, "general.alignment 0");
    s = valid_spec();
    s.align_type = GGUF_I32;
    BAD(s, "expected u32");
}

TEST(test_gguf_long_name) {
    spec s = valid_spec();
    s.name_b = "a_name_of_sixty_four_bytes_which_ggml_cannot_hold_0123456789abcd";
    BAD(s, "too long");
}

/* ---- writer ------------------------------------------------------------------------------------- */

typedef struct fill_ctx {
    int calls;
    float base;
} fill_ctx;

static int fill_ramp(void *ctx, void *dst, size_t nbytes) {
    fill_ctx *c = ctx;
    float *x = dst;
    c->calls++;
    for (size_t i = 0; i < nbytes / 4; i++) x[i] = c->base + (float)i;
    return 0;
}

static int fill_fail(void *ctx, void *dst, size_t nbytes) { return DUET_EIO; }

static void tmp_path(char *out, size_t n, const char *name) {
    snprintf(out, n, "/tmp/duet-test-gguf-%d-%s", (int)getpid(), name);
}

TEST(test_gguf_writer_roundtrip) {
    char path[256], err[256] = "";
    tmp_path(path, sizeof path, "rt.gguf");
    gguf_writer *w = gguf_writer_init();
    REQUIRE(w);
    const char *toks[] = {"<unk>", "\xe2\x96\x81the", ""};
    size_t lens[] = {5, 6, 0};
    float scores[] = {0.0f, -1.5f, 3.25f};
    int32_t types[] = {2, 1, -7};
    CHECK_EQ_INT(gguf_set_str(w, "general.architecture", "llama"), 0);
    CHECK_EQ_INT(gguf_set_u32(w, "llama.block_count", 3000000000u), 0);
    CHECK_EQ_INT(gguf_set_i32(w, "x.neg", -5), 0);
    CHECK_EQ_INT(gguf_set_f32(w, "x.f", 0.125f), 0);
    CHECK_EQ_INT(gguf_set_bool(w, "x.b", true), 0);
    CHECK_EQ_INT(gguf_set_arr_str(w, "x.toks", toks, lens, 3), 0);
    CHECK_EQ_INT(gguf_set_arr_f32(w, "x.scores", scores, 3), 0);
    CHECK_EQ_INT(gguf_set_arr_i32(w, "x.types", types, 3), 0);
    CHECK(gguf_set_u32(w, "x.f", 1) < 0); /* duplicate key */
    float a[3 * 32];
    for (int i = 0; i < 3 * 32; i++) a[i] = (float)i * 0.5f - 7.0f;
    uint8_t q[2 * 34];
    for (int i = 0; i < (int)sizeof q; i++) q[i] = (uint8_t)(i * 7);
    int64_t ne_a[] = {32, 3}, ne_q[] = {64}, ne_f[] = {5, 1, 2};
    fill_ctx fc = {0, 100.0f};
    CHECK_EQ_INT(gguf_add_tensor(w, "a", DUET_TYPE_F32, 2, ne_a, a, NULL, NULL), 0);
    CHECK_EQ_INT(gguf_add_tensor(w, "q", DUET_TYPE_Q8_0, 1, ne_q, q, NULL, NULL), 0);
    CHECK_EQ_INT(gguf_add_tensor(w, "filled", DUET_TYPE_F32, 3, ne_f, NULL, fill_ramp, &fc), 0);
    CHECK(gguf_add_tensor(w, "a", DUET_TYPE_F32, 2, ne_a, a, NULL, NULL) < 0);     /* duplicate */
    CHECK(gguf_add_tensor(w, "z", DUET_TYPE_Q8_0, 1, ne_f, q, NULL, NULL) < 0);    /* 5 % 32 */
    CHECK(gguf_add_tensor(w, "z", 4, 1, ne_q, q, NULL, NULL) < 0);                 /* unknown type */
    CHECK(gguf_add_tensor(w, "z", DUET_TYPE_F32, 5, ne_q, q, NULL, NULL) < 0);     /* n_dims */
    CHECK(gguf_add_tensor(w, "z", DUET_TYPE_F32, 1, ne_q, NULL, NULL, NULL) < 0);  /* no data */
    REQUIRE_MSG(gguf_writer_write(w, path, NULL, NULL, err, sizeof err) == 0, "%s", err);
    gguf_writer_free(w);
    CHECK_EQ_INT(fc.calls, 1);

    gguf *g = gguf_open(path, err, sizeof err);
    REQUIRE_MSG(g, "%s", err);
    CHECK_EQ_INT(gguf_n_kv(g), 8);
    CHECK_EQ_INT(gguf_alignment(g), 32);
    const char *s = NULL;
    uint32_t u = 0;
    int64_t i64 = 0;
    float f = 0;
    bool b = false;
    CHECK(gguf_get_str(g, "general.architecture", &s) == 0 && !strcmp(s, "llama"));
    CHECK(gguf_get_u32(g, "llama.block_count", &u) == 0 && u == 3000000000u);
    CHECK(gguf_get_i64(g, "x.neg", &i64) == 0 && i64 == -5);
    CHECK(gguf_get_u32(g, "x.neg", &u) < 0); /* -5 does not fit */
    CHECK(gguf_get_f32(g, "x.f", &f) == 0 && f == 0.125f);
    CHECK(gguf_get_bool(g, "x.b", &b) == 0 && b);
    int et;
    size_t n;
    CHECK(gguf_get_arr(g, "x.toks", &et, &n) == 0 && et == GGUF_STR && n == 3);
    for (size_t i = 0; i < 3; i++) {
        size_t len = 99;
        const char *t = gguf_arr_str(g, "x.toks", i, &len);
        CHECK(t && len == lens[i] && !memcmp(t, toks[i], len) && t[len] == 0);
        CHECK(gguf_arr_f32(g, "x.scores", i, &f) == 0 && f == scores[i]);
        CHECK(gguf_arr_i64(g, "x.types", i, &i64) == 0 && i64 == types[i]);
    }
    CHECK_EQ_INT(gguf_n_tensors(g), 3);
    const gguf_tensor *ta = gguf_tensor_at(g, 0), *tq = gguf_tensor_at(g, 1), *tf = gguf_tensor_at(g, 2);
    REQUIRE(ta && tq && tf);
    CHECK(!strcmp(ta->name, "a") && ta->n_dims == 2 && ta->ne[0] == 32 && ta->ne[1] == 3 && ta->ne[2] == 1);
    CHECK(ta->nbytes == sizeof a && !memcmp(ta->data, a, sizeof a));
    CHECK(!strcmp(tq->name, "q") && tq->type == DUET_TYPE_Q8_0 && tq->nbytes == sizeof q);
    CHECK(!memcmp(tq->data, q, sizeof q));
    CHECK(tf->n_dims == 3 && tf->ne[0] == 5 && tf->ne[1] == 1 && tf->ne[2] == 2 && tf->nbytes == 40);
    const float *fv = tf->data;
    CHECK(fv[0] == 100.0f && fv[9] == 109.0f);
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(gguf_tensor_at(g, i)->offset % 32, 0);
    gguf_close(g);
    unlink(path);
}

static void count_progress(void *arg, size_t done, size_t total) {
    size_t *last = arg;
    if (done > total || done < last[0]) last[1] = 1; /* must rise to total */
    last[0] = done;
    last[2] = total;
}

TEST(test_gguf_writer_progress_and_failure) {
    char path[256], part[300], err[256] = "";
    tmp_path(path, sizeof path, "fail.gguf");
    snprintf(part, sizeof part, "%s.part", path);
    gguf_writer *w = gguf_writer_init();
    int64_t ne[] = {1 << 16};
    fill_ctx fc = {0, 0};
    int64_t ne_tail[] = {5}; /* 20 bytes: the file ends in padding, which progress must count */
    CHECK_EQ_INT(gguf_add_tensor(w, "ok", DUET_TYPE_F32, 1, ne, NULL, fill_ramp, &fc), 0);
    CHECK_EQ_INT(gguf_add_tensor(w, "tail", DUET_TYPE_F32, 1, ne_tail, NULL, fill_ramp, &fc), 0);
    size_t prog[3] = {0, 0, 0};
    REQUIRE_MSG(gguf_writer_write(w, path, count_progress, prog, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(prog[1], 0);
    CHECK(prog[0] == prog[2] && prog[0] > (1u << 18));
    struct stat st;
    CHECK(stat(path, &st) == 0 && (size_t)st.st_size == prog[2]);
    unlink(path);
    CHECK_EQ_INT(gguf_add_tensor(w, "broken", DUET_TYPE_F32, 1, ne, NULL, fill_fail, NULL), 0);
    CHECK_EQ_INT(gguf_writer_write(w, path, NULL, NULL, err, sizeof err), DUET_EIO);
    CHECK(strstr(err, "broken") != NULL);
    CHECK(access(path, F_OK) != 0 && access(part, F_OK) != 0); /* nothing partial left behind */
    CHECK(gguf_writer_write(w, "/nonexistent-dir/x.gguf", NULL, NULL, err, sizeof err) < 0);
    CHECK(strstr(err, "cannot create") != NULL);
    gguf_writer_free(w);
}
