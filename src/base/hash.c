#include "base/hash.h"

#include <string.h>

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t mix(uint64_t acc, uint64_t v) { return rotl(acc + v * P2, 31) * P1; }

void hash64_init(hash64 *h, uint64_t seed) {
    memset(h, 0, sizeof *h);
    h->lane[0] = seed + P1 + P2;
    h->lane[1] = seed + P2;
    h->lane[2] = seed;
    h->lane[3] = seed - P1;
}

static void stride(hash64 *h, const unsigned char *p) {
    for (int i = 0; i < 4; i++) {
        uint64_t v;
        memcpy(&v, p + 8 * i, 8);
        h->lane[i] = mix(h->lane[i], v);
    }
}

void hash64_update(hash64 *h, const void *data, size_t len) {
    const unsigned char *p = data;
    h->total += len;
    if (h->n_tail) {
        size_t take = 32 - h->n_tail < len ? 32 - h->n_tail : len;
        memcpy(h->tail + h->n_tail, p, take);
        h->n_tail += take;
        p += take;
        len -= take;
        if (h->n_tail < 32) return;
        stride(h, h->tail);
        h->n_tail = 0;
    }
    for (; len >= 32; p += 32, len -= 32) stride(h, p);
    memcpy(h->tail, p, len);
    h->n_tail = len;
}

uint64_t hash64_final(const hash64 *h) {
    uint64_t acc = rotl(h->lane[0], 1) + rotl(h->lane[1], 7) + rotl(h->lane[2], 12) + rotl(h->lane[3], 18);
    for (int i = 0; i < 4; i++) acc = (acc ^ mix(0, h->lane[i])) * P1 + P2;
    acc += h->total;
    for (size_t i = 0; i < h->n_tail; i++) acc = rotl(acc ^ (h->tail[i] * P1), 11) * P2;
    acc ^= acc >> 33;
    acc *= P2;
    acc ^= acc >> 29;
    acc *= P1;
    acc ^= acc >> 32;
    return acc;
}
