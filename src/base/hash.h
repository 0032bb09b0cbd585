/* hash.h: a fast non-cryptographic 64-bit hash (four multiply-rotate lanes over 32-byte strides, then a
 * murmur-style finalizer). Used for model fingerprints, where speed over gigabytes matters and collisions
 * only need to be unlikely, not adversarially hard. Streaming: hash64_update may be called repeatedly. */
#ifndef DUET_BASE_HASH_H
#define DUET_BASE_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct hash64 {
    uint64_t lane[4];
    uint64_t total;      /* bytes consumed */
    unsigned char tail[32];
    size_t n_tail;
} hash64;

void hash64_init(hash64 *h, uint64_t seed);
void hash64_update(hash64 *h, const void *data, size_t len);
uint64_t hash64_final(const hash64 *h);

#endif
