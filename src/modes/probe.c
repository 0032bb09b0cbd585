/* Probes. The link: a PING padded one way costs the RTT plus the serialization of the pad on that side,
 * so (t - rtt) / pad is that direction's time per byte. The compute: a forward over n positions costs
 * fixed + n * pos (the weights are read once, then per-position work), measured at n = 1 and n = 32. */
#include "modes/probe.h"

#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/err.h"
#include "base/stats.h"

#define PROBE_N PROBE_BATCH
#define PROBE_REPS 5
#define RTT_REPS 3
#define BW_REPS 2

int probe_ping(remote *r, uint32_t pad, uint32_t reply_pad, double *ms, char *err, size_t errlen) {
    frame_msg m = {.type = FRAME_PING, .session = r->session};
    m.u.ping = (frame_ping){.stamp = 1, .pad = pad, .reply_pad = reply_pad};
    double t0 = clock_now_ms();
    int rc = transport_send(r->t, &m, err, errlen);
    /* the wait covers what the emulated link needs for the pads */
    double wait = r->timeout_ms + link_worst_ms(&r->link, LINK_UP, FRAME_HEADER_SIZE + FRAME_PING_SIZE + pad) +
                  link_worst_ms(&r->link, LINK_DOWN, FRAME_HEADER_SIZE + FRAME_PING_SIZE + reply_pad);
    if (!rc) rc = transport_expect(r->t, FRAME_PONG, &m, wait > 2e9 ? 2000000000 : (int)wait, err, errlen);
    if (rc == TRANSPORT_TIMEOUT) return err_set(err, errlen, DUET_EIO, "the cloud did not answer a PING within %d ms", r->timeout_ms);
    if (rc) return rc;
    *ms = clock_now_ms() - t0;
    return DUET_OK;
}

int probe_link(remote *r, probe_net *out, char *err, size_t errlen) {
    double t[RTT_REPS], up = 0, down = 0;
    int rc;
    for (int i = 0; i < RTT_REPS; i++)
        if ((rc = probe_ping(r, 0, 0, &t[i], err, errlen))) return rc;
    stats_sort(t, RTT_REPS);
    double rtt = t[RTT_REPS / 2];
    for (int i = 0; i < BW_REPS; i++) {
        double u, d;
        if ((rc = probe_ping(r, PROBE_PAD_BYTES, 0, &u, err, errlen)) ||
            (rc = probe_ping(r, 0, PROBE_PAD_BYTES, &d, err, errlen)))
            return rc;
        up = i == 0 || u < up ? u : up;
        down = i == 0 || d < down ? d : down;
    }
    out->rtt_ms = rtt;
    /* the best padded PING less the best empty one (a median would subtract noise); a pad faster than that
     * noise reads as unlimited, never as negative */
    out->up_ms_per_byte = up > t[0] ? (up - t[0]) / PROBE_PAD_BYTES : 0;
    out->down_ms_per_byte = down > t[0] ? (down - t[0]) / PROBE_PAD_BYTES : 0;
    return DUET_OK;
}

void probe_link_nominal(const link_params *lp, probe_net *out) {
    out->rtt_ms = lp->rtt_us / 1e3;
    out->up_ms_per_byte = lp->up_bps ? 8e3 / (double)lp->up_bps : 0;
    out->down_ms_per_byte = lp->down_bps ? 8e3 / (double)lp->down_bps : 0;
}

int probe_cloud(remote *r, int dim, double *one_ms, double *batch_ms, char *err, size_t errlen) {
    float *h = calloc((size_t)PROBE_BATCH * (size_t)dim, sizeof(float)); /* [PROBE_BATCH][dim] zero rows */
    if (!h) return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    if (r->n_ctx < PROBE_BATCH) {
        free(h);
        return err_set(err, errlen, DUET_EINVAL, "the probe session has %d positions, needs %d", r->n_ctx, PROBE_BATCH);
    }
    double best[2] = {1e30, 1e30};
    int rc = 0;
    metrics scratch; /* remote_recv_tokens adds the answer's compute_us here */
    metrics_start(&scratch, "probe");
    for (int rep = 0; rep < 3 && !rc; rep++)
        for (int b = 0; b < 2 && !rc; b++) {
            int n = b ? PROBE_BATCH : 1;
            frame_msg m = {.type = FRAME_UPLOAD, .session = r->session};
            m.u.rows = (frame_rows){.pos0 = 0, .n = (uint32_t)n, .dim = (uint32_t)dim, .enc = (uint32_t)r->enc, .x = h};
            if ((rc = transport_send(r->t, &m, err, errlen))) break;
            m = (frame_msg){.type = FRAME_REQUEST, .session = r->session};
            m.u.request = (frame_request){.pos = (uint32_t)(n - 1), .count = 1, .kv_keep = FRAME_KEEP_ALL,
                                          .want = FRAME_WANT_TOKENS};
            if ((rc = transport_send(r->t, &m, err, errlen))) break;
            scratch.cloud_compute_ms = 0;
            if ((rc = remote_recv_tokens(r, &m, &scratch, err, errlen))) break;
            if (scratch.cloud_compute_ms < best[b]) best[b] = scratch.cloud_compute_ms;
        }
    metrics_free(&scratch);
    free(h);
    if (rc) return rc;
    *one_ms = best[0];
    *batch_ms = best[1];
    return DUET_OK;
}

int probe_device(const duet_model *m, duet_pool *pool, double slowdown, probe_compute *out, char *err,
                 size_t errlen) {
    const duet_config *cf = duet_model_config(m);
    const duet_part *part = duet_model_part(m);
    int rc = DUET_ENOMEM;
    duet_kv *kv = duet_kv_init(m, part, PROBE_N + 1, err, errlen);
    duet_ctx *ctx = duet_ctx_init(m, PROBE_N, pool, err, errlen);
    float *h = malloc(sizeof(float) * PROBE_N * (size_t)cf->dim); /* [PROBE_N][dim] */
    float *logits = malloc(sizeof(float) * (size_t)cf->vocab_size);
    int ids[PROBE_N];
    for (int i = 0; i < PROBE_N; i++) ids[i] = 1 + i % (cf->vocab_size - 1);
    double t1[PROBE_REPS], tn[PROBE_REPS], th[PROBE_REPS], tl[PROBE_REPS];
    if (!kv || !ctx) goto out;
    if (!h || !logits) {
        err_set(err, errlen, DUET_ENOMEM, "out of memory");
        goto out;
    }
    /* the first round is a warm-up; then the median of the rest, as a shared machine's typical step */
    for (int rep = -1; rep < PROBE_REPS; rep++) {
        for (int n = 1; n <= PROBE_N; n += PROBE_N - 1) {
            duet_kv_truncate(kv, 0);
            double t0 = clock_now_ms();
            if ((rc = duet_embed(ctx, ids, n, h, err, errlen)) ||
                (rc = duet_forward(ctx, kv, 0, cf->n_layers, h, n, 0, err, errlen)) ||
                (rc = duet_head(ctx, h + (size_t)(n - 1) * cf->dim, 1, logits, err, errlen)))
                goto out;
            double t = clock_now_ms() - t0;
            if (rep >= 0) (n == 1 ? t1 : tn)[rep] = t;
        }
        double t0 = clock_now_ms();
        if ((rc = duet_head(ctx, h, 1, logits, err, errlen))) goto out;
        if (rep >= 0) th[rep] = clock_now_ms() - t0;
        duet_kv_truncate(kv, 0);
        t0 = clock_now_ms();
        if ((rc = duet_forward(ctx, kv, 0, 1, h, 1, 0, err, errlen))) goto out;
        if (rep >= 0) tl[rep] = clock_now_ms() - t0;
    }
    stats_sort(t1, PROBE_REPS);
    stats_sort(tn, PROBE_REPS);
    stats_sort(th, PROBE_REPS);
    stats_sort(tl, PROBE_REPS);
    int L = cf->n_layers;
    double s = slowdown > 1 ? slowdown : 1, m1 = t1[PROBE_REPS / 2], mn = tn[PROBE_REPS / 2], head = th[PROBE_REPS / 2],
           one = tl[PROBE_REPS / 2];
    double pos = (mn - m1) / (PROBE_N - 1); /* every layer's, per position */
    if (pos < 0) pos = mn / PROBE_N;
    if (head > m1 - pos) head = m1 - pos > 0 ? m1 - pos : 0;
    /* m1 = call + L * layer + head and one = call + layer, a layer over 1 position being fixed + pos / L */
    double layer = L > 1 ? (m1 - head - one) / (L - 1) : m1 - head;
    if (layer <= 0) layer = (m1 - head) / L;
    double call = m1 - head - L * layer;
    if (call < 0) call = 0;
    /* a noisy slope steeper than the whole one-position step would make the fixed part negative: the step
     * (what decoding costs) is kept exact and the slope capped */
    double lpos = pos / L < layer ? pos / L : layer;
    out->n_layers = L;
    out->layer_fixed_ms = (layer - lpos) * s;
    out->layer_pos_ms = lpos * s;
    out->head_ms = head * s;
    out->call_ms = call * s;
    rc = DUET_OK;
out:
    free(h);
    free(logits);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    return rc;
}
