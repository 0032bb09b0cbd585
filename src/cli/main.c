/* duet: the command-line tool. Dispatches to one subcommand per file. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"generate", cmd_generate, "generate text on this machine alone (device-only)"},
    {"run", cmd_run, "one request in any mode (device, cloud, split, ee, ...) over the real protocol, with metrics"},
    {"convert", cmd_convert, "import a llama2.c checkpoint + tokenizer.bin as GGUF"},
    {"synth", cmd_synth, "write a random-weight GGUF with a real model's shape (for timing)"},
    {"calibrate", cmd_calibrate, "fit early-exit translators and HAT adapters (affine maps) on a model's hidden states"},
    {"cloud", cmd_cloud, "serve a model part to devices (the cloud side of every collaborative mode)"},
    {"tokenize", cmd_tokenize, "print the token ids of a text with a model's vocabulary (vocabulary-only files work)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: duet <command> [options]    (duet <command> --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "duet: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
