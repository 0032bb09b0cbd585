/* Sampling: greedy, or top-k, then softmax at the temperature, then top-p (nucleus) over those
 * probabilities, drawn from a seeded generator so a run can be repeated exactly. */
#include <math.h>
#include <stdlib.h>

#include "base/err.h"
#include "duet.h"

typedef struct cand { float p; int id; } cand;

struct duet_sampler {
    duet_sampling cfg;
    int vocab;
    uint64_t rng; /* xorshift64* state, never 0 */
    cand *c;      /* [vocab] scratch, allocated once */
};

duet_sampler *duet_sampler_init(const duet_sampling *s, int vocab_size, char *err, size_t errlen) {
    if (vocab_size <= 0) {
        err_set(err, errlen, DUET_EINVAL, "sampler: vocabulary size %d", vocab_size);
        return NULL;
    }
    if (isnan(s->temperature) || isnan(s->top_p)) {
        err_set(err, errlen, DUET_EINVAL, "sampler: temperature and top-p must be numbers");
        return NULL;
    }
    duet_sampler *sm = calloc(1, sizeof *sm);
    if (sm) sm->c = malloc(sizeof(cand) * (size_t)vocab_size);
    if (!sm || !sm->c) {
        if (sm) free(sm);
        err_set(err, errlen, DUET_ENOMEM, "sampler: out of memory");
        return NULL;
    }
    sm->cfg = *s;
    sm->vocab = vocab_size;
    sm->rng = s->seed ^ 0x9E3779B97F4A7C15ull;
    if (!sm->rng) sm->rng = 1;
    return sm;
}

void duet_sampler_free(duet_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s);
}

int duet_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Uniform in [0,1) from the top 24 bits. */
static float next_uniform(duet_sampler *s) {
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (float)((s->rng * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static int by_prob_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

/* Leaves the candidates duet_sample draws from in s->c[0..n) with unnormalized weights summing to *sum
 * (top-k, then softmax at the temperature, then top-p); returns n. Not for greedy. */
static int candidates(duet_sampler *s, const float *logits, double *sum_out) {
    const duet_sampling *cfg = &s->cfg;
    int n = s->vocab;
    for (int i = 0; i < n; i++) s->c[i] = (cand){logits[i], i};
    /* A full sort costs ~1 ms on a 32000 vocabulary against tens of ms per token: simplicity wins. */
    qsort(s->c, (size_t)n, sizeof(cand), by_prob_desc);
    if (cfg->top_k > 0 && cfg->top_k < n) n = cfg->top_k;
    float mx = s->c[0].p;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        s->c[i].p = expf((s->c[i].p - mx) / cfg->temperature);
        sum += s->c[i].p;
    }
    if (cfg->top_p < 1.0f) {
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += s->c[i].p / sum;
            if (cum >= cfg->top_p) {
                n = i + 1;
                break;
            }
        }
        sum = 0;
        for (int i = 0; i < n; i++) sum += s->c[i].p;
    }
    *sum_out = sum;
    return n;
}

int duet_sample(duet_sampler *s, float *logits) {
    if (s->cfg.temperature <= 0) return duet_argmax(logits, s->vocab);
    double sum;
    int n = candidates(s, logits, &sum);
    double r = next_uniform(s) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += s->c[i].p;
        if (r < acc) return s->c[i].id;
    }
    return s->c[n - 1].id;
}

void duet_sample_probs(duet_sampler *s, const float *logits, float *probs) {
    for (int i = 0; i < s->vocab; i++) probs[i] = 0;
    if (s->cfg.temperature <= 0) {
        probs[duet_argmax(logits, s->vocab)] = 1;
        return;
    }
    double sum;
    int n = candidates(s, logits, &sum);
    for (int i = 0; i < n; i++) probs[s->c[i].id] = (float)(s->c[i].p / sum);
}

void duet_sampler_skip(duet_sampler *s, uint64_t n) {
    if (s->cfg.temperature <= 0) return; /* greedy draws nothing */
    for (uint64_t i = 0; i < n; i++) next_uniform(s);
}
