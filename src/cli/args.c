#include "cli/args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

const char *args_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "duet %s: %s needs a value (see duet %s --help)\n", cmd, argv[*i], cmd);
        return NULL;
    }
    return argv[++*i];
}

int args_int(const char *cmd, const char *flag, const char *val, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < lo || v > hi) {
        fprintf(stderr, "duet %s: %s '%s' is not an integer in [%ld, %ld]\n", cmd, flag, val, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int args_u64(const char *cmd, const char *flag, const char *val, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (errno || end == val || *end || val[0] == '-') {
        fprintf(stderr, "duet %s: %s '%s' is not a non-negative integer\n", cmd, flag, val);
        return -1;
    }
    *out = v;
    return 0;
}

int args_float(const char *cmd, const char *flag, const char *val, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "duet %s: %s '%s' is not a number in [%g, %g]\n", cmd, flag, val, lo, hi);
        return -1;
    }
    *out = (float)v;
    return 0;
}
