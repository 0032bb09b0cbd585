/* libFuzzer target for the model loader: metadata checks, tensor shapes and types, the weight copy, and a
 * forward pass over whatever loads. Random bytes almost never make a GGUF that reaches the loader, so each
 * input edits a valid small model instead:
 *
 *   byte 0         which base model (one per weight type, written once with synth at start-up)
 *   byte 1         bit 0: load with DUET_LOAD_MMAP; bit 1: cut the file at the u32 in bytes 2..5
 *   then 5-byte    u32 offset (little-endian) and the byte to store there; an offset with its top bit set
 *   records        lands in the header (metadata and tensor table), others anywhere in the file
 *
 * A model that loads must embed, run every layer and the head on two tokens without a sanitizer report
 * (garbage weights may give NaNs: the values are not checked, only that the arithmetic stays in bounds).
 * Run from the repository root: the vocabulary is tests/data/tok512.bin. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "duet.h"
#include "engine/gguf.h"
#include "engine/synth.h"

/* Two layers, two heads sharing one kv head: GQA, rope and every matrix, at a size that loads in
 * microseconds. The K-quants need rows of 256, so their bases are one layer of the wider shape. */
static const duet_config small = {.n_layers = 2, .dim = 64, .n_heads = 2, .n_kv_heads = 1, .head_dim = 32,
                                  .ffn_dim = 96, .ctx_len = 64, .rope_base = 10000.0f, .rms_eps = 1e-5f};
static const duet_config wide = {.n_layers = 1, .dim = 256, .n_heads = 4, .n_kv_heads = 2, .head_dim = 64,
                                 .ffn_dim = 256, .ctx_len = 64, .rope_base = 10000.0f, .rms_eps = 1e-5f,
                                 .tied_output = true};
static const int base_types[] = {DUET_TYPE_F32, DUET_TYPE_F16, DUET_TYPE_Q8_0,
                                 DUET_TYPE_Q4_0, DUET_TYPE_Q4_K, DUET_TYPE_Q6_K};
#define N_BASES (sizeof base_types / sizeof base_types[0])

static struct {
    uint8_t *bytes;
    size_t len, header; /* header: bytes before the first tensor's data */
} bases[N_BASES];
static uint8_t *work;
static size_t work_cap;
static int fd = -1;
static char path[64];

static void make_bases(void) {
    char err[256], tmp[64];
    setenv("DUET_NO_MLOCK", "1", 1); /* a lock per input would only add system calls */
    for (size_t i = 0; i < N_BASES; i++) {
        const duet_config *c = base_types[i] == DUET_TYPE_Q4_K || base_types[i] == DUET_TYPE_Q6_K ? &wide : &small;
        snprintf(tmp, sizeof tmp, "/tmp/fuzz_model-%d-%zu.gguf", (int)getpid(), i);
        if (synth_write(c, base_types[i], 1, "tests/data/tok512.bin", tmp, NULL, NULL, err, sizeof err)) {
            fprintf(stderr, "fuzz_model: cannot write a base model (run from the repository root): %s\n", err);
            abort();
        }
        FILE *f = fopen(tmp, "rb");
        if (!f || fseek(f, 0, SEEK_END)) abort();
        bases[i].len = (size_t)ftell(f);
        bases[i].bytes = malloc(bases[i].len);
        rewind(f);
        if (!bases[i].bytes || fread(bases[i].bytes, 1, bases[i].len, f) != bases[i].len) abort();
        fclose(f);
        unlink(tmp);
        gguf *g = gguf_open_mem(bases[i].bytes, bases[i].len, err, sizeof err);
        if (!g) abort();
        bases[i].header = bases[i].len;
        for (int t = 0; t < gguf_n_tensors(g); t++) {
            size_t at = (size_t)((const uint8_t *)gguf_tensor_at(g, t)->data - bases[i].bytes);
            if (at < bases[i].header) bases[i].header = at;
        }
        gguf_close(g);
        if (bases[i].len > work_cap) work_cap = bases[i].len;
    }
    work = malloc(work_cap);
    fd = memfd_create("fuzz_model", 0);
    if (!work || fd < 0) abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
}

static uint32_t u32_at(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

/* Embed two tokens, run every layer and the head. */
static void run(duet_model *m) {
    char err[256];
    const duet_config *c = duet_model_config(m);
    duet_ctx *ctx = duet_ctx_init(m, 2, NULL, err, sizeof err);
    duet_kv *kv = duet_kv_init(m, duet_model_part(m), 8, err, sizeof err);
    float *h = malloc(2 * (size_t)c->dim * sizeof *h);              /* [2][dim] */
    float *logits = malloc(2 * (size_t)c->vocab_size * sizeof *logits); /* [2][vocab] */
    int ids[2] = {0, c->vocab_size - 1};
    if (ctx && kv && h && logits && !duet_embed(ctx, ids, 2, h, err, sizeof err) &&
        !duet_forward(ctx, kv, 0, c->n_layers, h, 2, 0, err, sizeof err))
        duet_head(ctx, h, 2, logits, err, sizeof err);
    const duet_tokenizer *t = duet_model_tokenizer(m, err, sizeof err);
    if (t) {
        int out[32];
        duet_tokenize(t, "Once upon a time", 16, true, out, 32);
    }
    free(logits);
    free(h);
    duet_kv_free(kv);
    duet_ctx_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fd < 0) make_bases();
    if (size < 2) return 0;
    const size_t b = data[0] % N_BASES;
    const int flags = data[1];
    size_t len = bases[b].len, header = bases[b].header;
    memcpy(work, bases[b].bytes, len);
    data += 2, size -= 2;
    if (flags & 2 && size >= 4) {
        size_t cut = u32_at(data) % (len + 1);
        len = cut;
        data += 4, size -= 4;
    }
    for (; size >= 5 && len > 0; data += 5, size -= 5) {
        uint32_t off = u32_at(data);
        size_t at = off & 0x80000000u ? (off & 0x7fffffffu) % (header < len ? header : len) : off % len;
        work[at] = data[4];
    }
    if (ftruncate(fd, 0) || pwrite(fd, work, len, 0) != (ssize_t)len) abort();
    char err[256];
    duet_model *m = duet_model_load(path, NULL, flags & 1 ? DUET_LOAD_MMAP : 0, err, sizeof err);
    if (m) run(m);
    duet_model_free(m);
    return 0;
}
