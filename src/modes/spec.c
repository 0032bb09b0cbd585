#include "modes/spec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"

int spec_init(spec *s, const duet_sampling *cfg, int vocab, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    s->vocab = vocab;
    s->rng = cfg->seed;
    if (!(s->dist = duet_sampler_init(cfg, vocab, err, errlen))) return DUET_EINVAL;
    if (!(s->resid = malloc(sizeof(float) * (size_t)vocab))) {
        spec_free(s);
        return err_set(err, errlen, DUET_ENOMEM, "speculation: out of memory");
    }
    return DUET_OK;
}

void spec_free(spec *s) {
    duet_sampler_free(s->dist);
    free(s->resid);
    s->dist = NULL;
    s->resid = NULL;
}

int spec_greedy(const spec *s) { return s->cfg.temperature <= 0; }

/* Uniform in [0,1), 53 bits of splitmix64 (Steele, Lea, Flood 2014): the acceptance rule's own stream. */
static double uniform(spec *s) {
    uint64_t z = (s->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

/* duet_sample's own distribution, so hat samples from exactly what device mode samples from. */
void spec_probs(spec *s, const float *logits, float *p) { duet_sample_probs(s->dist, logits, p); }

int spec_draw(spec *s, const float *p) {
    double r = uniform(s), acc = 0;
    int last = 0;
    for (int i = 0; i < s->vocab; i++) {
        if (p[i] <= 0) continue;
        acc += p[i];
        last = i;
        if (r < acc) return i;
    }
    return last; /* rounding left r above the total */
}

int spec_verify(spec *s, const float *p, const float *q, int d, int *out) {
    if (p[d] >= q[d] || uniform(s) * q[d] < p[d]) {
        *out = d;
        return 1;
    }
    double sum = 0;
    for (int i = 0; i < s->vocab; i++) {
        float r = p[i] - q[i];
        s->resid[i] = r > 0 ? r : 0;
        sum += s->resid[i];
    }
    /* p != q here (else d was accepted), so the residual has mass; guard float dust all the same */
    if (sum <= 0) {
        *out = spec_draw(s, p);
        return 0;
    }
    for (int i = 0; i < s->vocab; i++) s->resid[i] = (float)(s->resid[i] / sum);
    *out = spec_draw(s, s->resid);
    return 0;
}

double spec_expected_tokens(double alpha, int k) {
    double e = 0, a = 1;
    for (int i = 0; i <= k; i++, a *= alpha) e += a;
    return e;
}

double spec_round_ms(const spec_round_costs *c, int k) {
    return k * c->draft_ms + c->in_ms + c->wait0_ms + c->wait1_ms * (k + 1) + c->ver0_ms + c->ver1_ms * (k + 1);
}

int spec_pick_draft(const spec_round_costs *c, double alpha, int kmax) {
    int best = 0;
    double best_rate = -1;
    for (int k = 0; k <= kmax; k++) {
        double t = spec_round_ms(c, k);
        double rate = spec_expected_tokens(alpha, k) / (t > 1e-9 ? t : 1e-9);
        if (rate > best_rate * (1 + 1e-9)) {
            best_rate = rate;
            best = k;
        }
    }
    return best;
}

static double maxd(double a, double b) { return a > b ? a : b; }

double spec_prefill_ms(const spec_prefill_costs *c, int n, int chunk) {
    if (n <= 0) return 0;
    if (chunk <= 0 || chunk > n) chunk = n;
    int m = (n + chunk - 1) / chunk;
    double t = 0, up_end = 0, cloud_end = 0, down_end = 0, arrive_prev = 0;
    double arrive[64];
    double *arr = m <= 64 ? arrive : malloc(sizeof(double) * (size_t)m);
    if (!arr) return INFINITY;
    int done = 0; /* answers whose output layers ran */
    for (int i = 0; i < m; i++) {
        int ci = i + 1 < m ? chunk : n - chunk * (m - 1);
        t += c->in0_ms + c->in1_ms * ci;
        up_end = maxd(t, up_end) + c->up_row_ms * ci;
        cloud_end = maxd(up_end + c->rtt_ms / 2, cloud_end) + c->cloud0_ms + c->cloud1_ms * ci;
        down_end = maxd(cloud_end, down_end) + c->down_row_ms * ci;
        arr[i] = arrive_prev = maxd(down_end + c->rtt_ms / 2, arrive_prev);
        for (; done <= i && arr[done] <= t; done++) /* answers already back: the device polls between chunks */
            t += c->out0_ms + c->out1_ms * chunk;
    }
    for (; done < m; done++) {
        int cd = done + 1 < m ? chunk : n - chunk * (m - 1);
        t = maxd(t, arr[done]) + c->out0_ms + c->out1_ms * cd;
    }
    if (arr != arrive) free(arr);
    return t + c->head_ms;
}

int spec_pick_chunk(const spec_prefill_costs *c, int n) {
    double best_t = INFINITY;
    for (int chunk = 1; chunk <= n; chunk++) {
        double t = spec_prefill_ms(c, n, chunk);
        if (t < best_t) best_t = t;
    }
    /* The optimum is flat over a wide range of sizes; within it the largest has the fewest chunks, which is
     * safest when a chunk costs more than the probe saw (every chunk is two frames, a forward pass over all of
     * the device's and the cloud's weights, and on a shared machine a few thread wake-ups). */
    for (int chunk = n; chunk > 1; chunk--)
        if (spec_prefill_ms(c, n, chunk) <= best_t * (1 + SPEC_CHUNK_SLACK)) return chunk;
    return 1;
}
