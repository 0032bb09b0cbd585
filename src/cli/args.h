/* args.h: checked conversion of flag values for the subcommands. Each prints "duet <cmd>: ..." to stderr
 * and returns -1 on a bad value, so a command can `return 2` (usage error). */
#ifndef DUET_CLI_ARGS_H
#define DUET_CLI_ARGS_H

#include <stdint.h>

/* The value after argv[*i] (advancing *i), or NULL with a message when the flag is last. */
const char *args_value(const char *cmd, int argc, char **argv, int *i);
int args_int(const char *cmd, const char *flag, const char *val, long lo, long hi, int *out);
int args_u64(const char *cmd, const char *flag, const char *val, uint64_t *out);
int args_float(const char *cmd, const char *flag, const char *val, double lo, double hi, float *out);

#endif
