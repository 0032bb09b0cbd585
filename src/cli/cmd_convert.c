/* duet convert: a llama2.c checkpoint and its tokenizer.bin, written as one GGUF. */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "engine/llama2c.h"
#include "engine/quant.h"

static const char *USAGE =
    "usage: duet convert --checkpoint MODEL.bin --tokenizer TOKENIZER.bin -o OUT.gguf [--type TYPE]\n"
    "\n"
    "Imports a llama2.c checkpoint (karpathy/llama2.c run.c format) and its llama2.c tokenizer.bin as a GGUF\n"
    "with llama.cpp's names and metadata (architecture \"llama\", SentencePiece vocabulary inside).\n"
    "\n"
    "  -c, --checkpoint PATH  llama2.c checkpoint: 7 int32 header then float32 weights\n"
    "  -k, --tokenizer PATH   llama2.c tokenizer.bin with exactly the checkpoint's vocabulary size\n"
    "  -o, --output PATH      GGUF to write (replaced only once it is complete)\n"
    "      --type TYPE        f32 (default, exact), f16, q8_0, q4_0, q4_k or q6_k for the 2-D matrices;\n"
    "                         norms stay f32, and a matrix whose rows do not divide into the type's blocks\n"
    "                         is written f16\n"
    "  -h, --help             this text\n";

int cmd_convert(int argc, char **argv) {
    const char *ckpt = NULL, *tok = NULL, *out = NULL, *type_name = "f32";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        }
        const char **dst = !strcmp(a, "-c") || !strcmp(a, "--checkpoint") ? &ckpt
                           : !strcmp(a, "-k") || !strcmp(a, "--tokenizer") ? &tok
                           : !strcmp(a, "-o") || !strcmp(a, "--output")    ? &out
                           : !strcmp(a, "--type")                          ? &type_name
                                                                           : NULL;
        if (!dst) {
            fprintf(stderr, "duet convert: unknown option '%s' (see duet convert --help)\n", a);
            return 2;
        }
        if (!(v = args_value("convert", argc, argv, &i))) return 2;
        *dst = v;
    }
    if (!ckpt || !tok || !out) {
        fprintf(stderr, "duet convert: --checkpoint, --tokenizer and -o are required (see duet convert --help)\n");
        return 2;
    }
    int type = llama2c_type_parse(type_name);
    if (type < 0) {
        fprintf(stderr, "duet convert: --type '%s' is not one of f32, f16, q8_0, q4_0, q4_k, q6_k\n", type_name);
        return 2;
    }
    char err[512];
    llama2c_config c;
    if (llama2c_convert(ckpt, tok, out, type, &c, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "duet convert: %s\n", err);
        return 1;
    }
    fprintf(stderr, "duet convert: wrote %s: dim %d, ffn %d, %d layers, %d heads (%d kv), vocab %d, ctx %d, %s%s\n",
            out, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len,
            quant_traits_get(type)->name, c.shared_classifier ? ", output tied to the embedding" : "");
    return 0;
}
