/* duet synth: a random-weight GGUF with a real model's shape, for timing at real scale. */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "engine/llama2c.h"
#include "engine/synth.h"

static const char *USAGE =
    "usage: duet synth --shape SHAPE --type TYPE -o OUT.gguf [--seed N] [--vocab TOKENIZER.bin] [--layers N]\n"
    "\n"
    "Writes a GGUF with random weights and the shape of a real model, so speed can be measured at real scale\n"
    "without its weights. The text it generates is noise; its activations stay finite through every layer.\n"
    "\n"
    "  -s, --shape SHAPE   tinyllama   TinyLlama-1.1B: dim 2048, 22 layers, 32 heads, 4 kv heads, ffn 5632\n"
    "                      llama32-1b  Llama-3.2-1B: dim 2048, 16 layers, 32 heads, 8 kv heads, ffn 8192,\n"
    "                                  output tied to the embedding, rope base 500000\n"
    "                      mid         dim 1024, 16 layers, 16 heads, 4 kv heads, ffn 2816\n"
    "                      llama3.2-1b  Llama-3.2-1B as llama32-1b, plus Llama 3.1 rope scaling (rope_freqs, factor\n"
    "                                  32) and the Llama 3 vocabulary (128256 tokens)\n"
    "                      qwen2.5-0.5b Qwen2.5-0.5B: qwen2, dim 896, 24 layers, 14 heads, 2 kv heads, ffn 4864, q/k/v\n"
    "                                  biases, tied output, rope base 1e6, Qwen vocabulary (151936 tokens)\n"
    "                      qwen3-0.6b  Qwen3-0.6B: qwen3, dim 1024, 28 layers, 16 heads of 128, 8 kv heads, ffn 3072,\n"
    "                                  q/k norms, tied output, rope base 1e6, Qwen vocabulary\n"
    "      --type TYPE     f32, f16, q8_0, q4_0, q4_k or q6_k for the 2-D matrices (norms are f32)\n"
    "  -o, --output PATH   GGUF to write (replaced only once it is complete)\n"
    "      --seed N        random seed; the same seed gives the same file (default 1)\n"
    "      --vocab PATH    llama2.c tokenizer.bin, or a GGUF whose tokenizer the file carries (default: the\n"
    "                      shape's own under tests/data/vocab for the three above, else\n"
    "                      models/llama2-tokenizer.bin, Llama-2's 32000 tokens)\n"
    "      --layers N      override the shape's layer count (e.g. 2 for a quick file)\n"
    "  -h, --help          this text\n"
    "\n"
    "Progress goes to stderr.\n";

typedef struct progress_state {
    int last_pct;
} progress_state;

static void show_progress(void *arg, size_t done, size_t total) {
    progress_state *p = arg;
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    if (pct == p->last_pct) return;
    p->last_pct = pct;
    fprintf(stderr, "\rsynth: %3d%% (%.1f/%.1f GB)", pct, (double)done / 1e9, (double)total / 1e9);
    if (done == total) fputc('\n', stderr);
}

int cmd_synth(int argc, char **argv) {
    const char *shape_name = NULL, *type_name = NULL, *out = NULL, *vocab = NULL;
    uint64_t seed = 1;
    int layers = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        }
        int is_seed = !strcmp(a, "--seed"), is_layers = !strcmp(a, "--layers");
        const char **dst = !strcmp(a, "-s") || !strcmp(a, "--shape") ? &shape_name
                           : !strcmp(a, "--type")                    ? &type_name
                           : !strcmp(a, "-o") || !strcmp(a, "--output") ? &out
                           : !strcmp(a, "--vocab")                   ? &vocab
                                                                     : NULL;
        if (!dst && !is_seed && !is_layers) {
            fprintf(stderr, "duet synth: unknown option '%s' (see duet synth --help)\n", a);
            return 2;
        }
        if (!(v = args_value("synth", argc, argv, &i))) return 2;
        if (is_seed && args_u64("synth", a, v, &seed)) return 2;
        if (is_layers && args_int("synth", a, v, 1, 4096, &layers)) return 2;
        if (dst) *dst = v;
    }
    if (!shape_name || !type_name || !out) {
        fprintf(stderr, "duet synth: --shape, --type and -o are required (see duet synth --help)\n");
        return 2;
    }
    const duet_config *shape = synth_shape(shape_name);
    if (!shape) {
        fprintf(stderr, "duet synth: unknown --shape '%s' (tinyllama, llama32-1b, mid, llama3.2-1b, qwen2.5-0.5b, "
                        "qwen3-0.6b)\n", shape_name);
        return 2;
    }
    int type = llama2c_type_parse(type_name);
    if (type < 0) {
        fprintf(stderr, "duet synth: --type '%s' is not one of f32, f16, q8_0, q4_0, q4_k, q6_k\n", type_name);
        return 2;
    }
    duet_config c = *shape;
    if (layers) c.n_layers = layers;
    char err[512];
    progress_state p = {-1};
    const synth_extra *x = synth_shape_extra(shape_name);
    if (!vocab) vocab = x->vocab ? x->vocab : "models/llama2-tokenizer.bin";
    if (synth_write_arch(&c, x, type, seed, vocab, out, show_progress, &p, err, sizeof err)) {
        if (p.last_pct >= 0) fputc('\n', stderr);
        fprintf(stderr, "duet synth: %s\n", err);
        return 1;
    }
    return 0;
}
