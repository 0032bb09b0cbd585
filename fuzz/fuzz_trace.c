/* libFuzzer target for decision traces (duet run --replay, untrusted input): parse, and if the trace is
 * accepted, check every decision is in range, replay it past its end, and write it back out and parse that
 * again (it must give the same decisions). Seed it with a file from duet run --trace-out. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "modes/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    trace t, u;
    if (trace_parse(&t, (const char *)data, size, err, sizeof err)) return 0;
    if (t.n < 1 || t.n > TRACE_MAX) __builtin_trap();
    for (int i = 0; i < t.n; i++) {
        if (t.kind == TRACE_EE && (t.a[i] < TRACE_E1 || t.a[i] > TRACE_CLOUD)) __builtin_trap();
        if (t.kind == TRACE_HAT && (t.b[i] < 0 || t.b[i] > t.a[i] || t.a[i] > TRACE_MAX_DRAFT)) __builtin_trap();
    }
    int a, b;
    for (int i = 0; i <= t.n; i++) trace_next(&t, &a, &b);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f) {
        trace_write(&t, "again", f);
        fclose(f);
        if (trace_parse(&u, buf, len, err, sizeof err) || u.n != t.n || u.kind != t.kind) __builtin_trap();
        for (int i = 0; i < t.n; i++)
            if (u.a[i] != t.a[i] || u.b[i] != t.b[i]) __builtin_trap();
        trace_free(&u);
    }
    free(buf);
    trace_free(&t);
    return 0;
}
