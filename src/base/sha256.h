/* sha256.h: SHA-256 (FIPS 180-4), streaming. Used to compare tensors and files with reference hashes. */
#ifndef DUET_BASE_SHA256_H
#define DUET_BASE_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sha256 {
    uint32_t h[8];
    uint64_t total;         /* bytes consumed */
    unsigned char buf[64];  /* a partial block */
    size_t n_buf;
} sha256;

void sha256_init(sha256 *s);
void sha256_update(sha256 *s, const void *data, size_t len);
void sha256_final(sha256 *s, unsigned char out[32]);
/* out = the 64 lowercase hex digits of the digest of data[len], NUL-terminated. */
void sha256_hex(const void *data, size_t len, char out[65]);
/* Same, of a finished digest. */
void sha256_digest_hex(const unsigned char digest[32], char out[65]);

#endif
