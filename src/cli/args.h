/* args.h: checked conversion of flag values for the subcommands. Each prints "duet <cmd>: ..." to stderr
 * and returns -1 on a bad value, so a command can `return 2` (usage error). */
#ifndef DUET_CLI_ARGS_H
#define DUET_CLI_ARGS_H

#include <stdbool.h>
#include <stdint.h>

#include "duet.h"

/* The value after argv[*i] (advancing *i), or NULL with a message when the flag is last. */
const char *args_value(const char *cmd, int argc, char **argv, int *i);
int args_int(const char *cmd, const char *flag, const char *val, long lo, long hi, int *out);
int args_u64(const char *cmd, const char *flag, const char *val, uint64_t *out);
int args_float(const char *cmd, const char *flag, const char *val, double lo, double hi, float *out);
/* A shared-secret token file (--token-file): its bytes without trailing whitespace, 1..cap of them, into
 * buf; *len gets the count. */
int args_token_file(const char *cmd, const char *path, uint8_t *buf, size_t cap, size_t *len);

/* The flags every generating command shares (-m -p -n --temp --top-k --top-p --seed -t --json --no-bos
 * --mmap). */
typedef struct args_gen {
    const char *model, *prompt;
    int n_tokens, threads;
    int load_flags; /* duet_model_load flags: DUET_LOAD_MMAP with --mmap */
    bool json, bos;
    duet_sampling sampling;
} args_gen;

args_gen args_gen_default(void); /* no model, empty prompt, 64 tokens, 1 thread, greedy, seed 1, BOS */
/* Takes argv[*i] (and its value, advancing *i) if it is one of those flags: 1 taken, 0 not one of them,
 * -1 bad or missing value (message printed). */
int args_gen_take(const char *cmd, int argc, char **argv, int *i, args_gen *g);

#endif
