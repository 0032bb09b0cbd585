/* libFuzzer target for auto mode's state file (duet run --state, untrusted bytes): parse for a fixed
 * fingerprint (the first 8 input bytes choose it, so a matching "fingerprint" can be found); an accepted
 * state must keep its invariants, format back into text that parses to the same counts, and take more
 * counts without breaking them. Seed it with a state file (docs/AUTO.md has one) behind the 8 little-endian
 * bytes of its fingerprint. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "modes/autostate.h"

static void check(const autostate *s) {
    if (s->n_ee < 0 || s->n_ee > AUTOSTATE_MAX || s->n_hat < 0 || s->n_hat > AUTOSTATE_MAX) __builtin_trap();
    for (int i = 0; i < s->n_ee; i++)
        if (s->ee[i].exit1 + s->ee[i].exit2 > s->ee[i].tokens || s->ee[i].e1 >= s->ee[i].e2) __builtin_trap();
    for (int i = 0; i < s->n_hat; i++)
        if (s->hat[i].accepted > s->hat[i].drafted) __builtin_trap();
    if (!(s->cloud.scale >= 0.01 && s->cloud.scale <= 100)) __builtin_trap();
    for (int m = 0; m < AUTOSTATE_MODES; m++)
        for (int v = 0; v < AUTOSTATE_SPEEDS; v++)
            if (!(s->time[m][v].ttft.scale >= 0.01 && s->time[m][v].ttft.scale <= 100) ||
                !(s->time[m][v].tbt.scale >= 0.01 && s->time[m][v].tbt.scale <= 100))
                __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint64_t fp = 0;
    if (size >= 8) {
        memcpy(&fp, data, 8);
        data += 8, size -= 8;
    }
    char err[256];
    static autostate s, back;
    if (autostate_parse((const char *)data, size, fp, &s, err, sizeof err)) return 0;
    check(&s);
    static char buf[1 << 16];
    int n = autostate_format(&s, buf, sizeof buf);
    if (n <= 0 || n >= (int)sizeof buf || autostate_parse(buf, (size_t)n, fp, &back, err, sizeof err)) __builtin_trap();
    if (back.n_ee != s.n_ee || back.n_hat != s.n_hat) __builtin_trap();
    for (int i = 0; i < s.n_ee; i++)
        if (back.ee[i].tokens != s.ee[i].tokens || back.ee[i].exit1 != s.ee[i].exit1) __builtin_trap();
    for (int m = 0; m < AUTOSTATE_MODES; m++)
        for (int v = 0; v < AUTOSTATE_SPEEDS; v++)
            if (back.time[m][v].ttft.samples != s.time[m][v].ttft.samples ||
                back.time[m][v].tbt.samples != s.time[m][v].tbt.samples)
                __builtin_trap();
    autostate_note_ee(&s, 0, 1, 0.5f, 0, 10, 3, 3);
    autostate_note_hat(&s, 1, 1, 0, 10, 4);
    autostate_note_scale(&s.cloud, 1, 1000);
    autostate_note_scale(&s.time[AUTOSTATE_MODES - 1][AUTOSTATE_SPEEDS - 1].tbt, 1e-300, 1e300);
    check(&s);
    return 0;
}
