/* fuzz_frame: arbitrary bytes as one frame (header + payload). A frame that decodes must read out and
 * re-encode to the same bytes, except int8 and fp16 rows and NaN-carrying floats, whose values only
 * round-trip through the lossy encoders. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/frame.h"

/* m, encoded again, must be exactly the size bytes at data it was decoded from. */
static void reencodes_to(const frame_msg *m, uint32_t seq, const uint8_t *data, size_t size) {
    char err[256];
    uint8_t *out = malloc(size);
    size_t len;
    if (out && frame_encode(m, seq, out, size, &len, err, sizeof err) == 0 && (len != size || memcmp(out, data, size)))
        abort();
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    frame_limits lim = frame_limits_default();
    lim.max_rows = 4096; /* keep rows_get allocations small */
    lim.max_dim = 4096;
    frame_header h;
    frame_msg m;
    char err[256];
    if (frame_decode(data, size, &lim, &h, &m, err, sizeof err) != 0) return 0;
    if (m.type == FRAME_UPLOAD || m.type == FRAME_HIDDEN) {
        float *x = malloc((size_t)m.u.rows.n * m.u.rows.dim * sizeof *x);
        if (!x) return 0;
        frame_rows_get(&m.u.rows, x);
        if (m.u.rows.enc == FRAME_ENC_F32) { /* lossless: must re-encode to the same bytes */
            m.u.rows.x = x;
            reencodes_to(&m, h.seq, data, size);
        }
        free(x);
    } else if (m.type == FRAME_PROMPT || m.type == FRAME_TOKENS) {
        uint32_t n = m.u.tokens.n;
        int32_t *ids = malloc(n * sizeof *ids);
        float *conf = malloc(n * sizeof *conf), *logit = malloc(n * sizeof *logit);
        if (ids && conf && logit) {
            frame_tokens_get(&m.u.tokens, ids, conf, logit);
            m.u.tokens.ids = ids;
            m.u.tokens.conf = conf;
            m.u.tokens.logit = logit;
            reencodes_to(&m, h.seq, data, size);
        }
        free(ids), free(conf), free(logit);
    } else if (m.type != FRAME_PING && m.type != FRAME_PONG) { /* PING pad content is not kept */
        reencodes_to(&m, h.seq, data, size);
    }
    return 0;
}
