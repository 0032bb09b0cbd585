/* libFuzzer target for the JSON reader: any bytes must be parsed or refused without a crash, and an
 * accepted document must be walkable end to end. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/json.h"

static size_t walk(const json_val *v) {
    size_t n = 1, len;
    for (size_t i = 0; i < json_len(v); i++) {
        const char *k = json_key_at(v, i);
        if (k) (void)json_get(v, k);
        n += walk(json_at(v, i));
    }
    const char *s = json_str(v, &len);
    if (s && s[len] != '\0') __builtin_trap();
    (void)json_num(v);
    (void)json_bool(v);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    json *d = json_parse((const char *)data, size, err, sizeof err);
    if (d) walk(json_root(d));
    else if (!memchr(err, '\0', sizeof err)) __builtin_trap();
    json_free(d);
    return 0;
}
