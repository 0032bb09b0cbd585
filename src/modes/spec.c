#include "modes/spec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"

typedef struct cand { float v; int id; } cand;

int spec_init(spec *s, const duet_sampling *cfg, int vocab, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    if (vocab <= 0) return err_set(err, errlen, DUET_EINVAL, "speculation: vocabulary size %d", vocab);
    s->cfg = *cfg;
    s->vocab = vocab;
    s->rng = cfg->seed ^ 0x9E3779B97F4A7C15ull;
    if (!s->rng) s->rng = 1;
    s->cand = malloc(sizeof(cand) * (size_t)vocab);
    s->resid = malloc(sizeof(float) * (size_t)vocab);
    if (!s->cand || !s->resid) {
        spec_free(s);
        return err_set(err, errlen, DUET_ENOMEM, "speculation: out of memory");
    }
    return DUET_OK;
}

void spec_free(spec *s) {
    free(s->cand);
    free(s->resid);
    s->cand = NULL;
    s->resid = NULL;
}

int spec_greedy(const spec *s) { return s->cfg.temperature <= 0; }

/* Uniform in [0,1), 53 bits. */
static double uniform(spec *s) {
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (double)((s->rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

static int by_value_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return x->id - y->id;
}

/* The same steps as duet_sample (sampler.c), so hat draws from the distribution device mode draws from. */
void spec_probs(spec *s, const float *logits, float *p) {
    int n = s->vocab;
    memset(p, 0, sizeof(float) * (size_t)n);
    if (spec_greedy(s)) {
        p[duet_argmax(logits, n)] = 1;
        return;
    }
    cand *c = s->cand;
    for (int i = 0; i < n; i++) c[i] = (cand){logits[i], i};
    qsort(c, (size_t)n, sizeof(cand), by_value_desc);
    if (s->cfg.top_k > 0 && s->cfg.top_k < n) n = s->cfg.top_k;
    float mx = c[0].v;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        c[i].v = expf((c[i].v - mx) / s->cfg.temperature);
        sum += c[i].v;
    }
    if (s->cfg.top_p < 1.0f) {
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += c[i].v / sum;
            if (cum >= s->cfg.top_p) {
                n = i + 1;
                break;
            }
        }
        sum = 0;
        for (int i = 0; i < n; i++) sum += c[i].v;
    }
    for (int i = 0; i < n; i++) p[c[i].id] = (float)(c[i].v / sum);
}

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
    return t;
}

int spec_pick_chunk(const spec_prefill_costs *c, int n) {
    int best = n;
    double best_t = spec_prefill_ms(c, n, n);
    for (int chunk = n - 1; chunk >= 1; chunk--) {
        double t = spec_prefill_ms(c, n, chunk);
        if (t < best_t * (1 - 1e-9)) {
            best_t = t;
            best = chunk;
        }
    }
    return best;
}
