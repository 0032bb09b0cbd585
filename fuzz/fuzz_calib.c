/* libFuzzer target for calibration files (duet run --calib, untrusted input): parse, and if the file is
 * accepted, apply every map once, so a shape the loader accepted but recorded wrongly shows up under ASan.
 * Seed it with models/stories260K-calib.gguf. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/calib.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    calib *c = calib_load_mem(data, size, err, sizeof err);
    if (!c) return 0;
    if (c->dim <= 4096) {
        float *x = calloc((size_t)c->dim, sizeof(float)), *y = malloc(sizeof(float) * (size_t)c->dim);
        for (int i = 0; x && y && i < c->n_maps; i++) {
            if (c->map[i].dim != c->dim || calib_find(c, c->map[i].a, c->map[i].b) != &c->map[i]) __builtin_trap();
            calib_apply(&c->map[i], x, y, 1);
        }
        free(x);
        free(y);
    }
    calib_free(c);
    return 0;
}
