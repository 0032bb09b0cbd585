/* spec.h: the arithmetic of HAT's speculative decoding and chunked prefill, apart from the network so that
 * it can be tested exactly.
 *
 * - spec_probs gives the distribution duet_sample draws from (top-k, temperature, top-p) as a full vector;
 *   spec_verify is the speculative-sampling rule over two of them (Leviathan et al., Chen et al.): accept the
 *   draft d with probability min(1, p(d)/q(d)), else draw from norm(max(0, p - q)). The emitted token is then
 *   distributed exactly as p, whatever q is.
 * - spec_pick_draft chooses the draft length that maximises expected tokens per millisecond of a round;
 *   spec_pick_chunk the prompt chunk size that minimises the simulated pipelined prefill (docs/HAT.md).
 *
 * Ownership: a spec is the caller's struct; spec_free frees what spec_init allocated. One thread at a time. */
#ifndef DUET_MODES_SPEC_H
#define DUET_MODES_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

typedef struct spec {
    duet_sampling cfg;
    int vocab;
    uint64_t rng;         /* splitmix64 state */
    duet_sampler *dist;   /* gives the distributions (duet_sample_probs) */
    float *resid;         /* [vocab] residual distribution scratch */
} spec;

int spec_init(spec *s, const duet_sampling *cfg, int vocab, char *err, size_t errlen);
void spec_free(spec *s);
int spec_greedy(const spec *s);
/* p[vocab] = the distribution duet_sample with s->cfg draws from logits[vocab] (one-hot at the argmax when
 * greedy). */
void spec_probs(spec *s, const float *logits, float *p);
/* A token drawn from p[vocab]. */
int spec_draw(spec *s, const float *p);
/* The draft token d was drawn from q; p is the target. Returns 1 and sets *out = d when accepted, else 0 with
 * *out drawn from the residual norm(max(0, p - q)). */
int spec_verify(spec *s, const float *p, const float *q, int d, int *out);

/* Expected tokens one round yields with k drafts at per-token acceptance alpha: 1 + alpha + ... + alpha^k. */
double spec_expected_tokens(double alpha, int k);

/* What a decode round costs, in ms: drafting k tokens, then the input layers of the last one, the wait from
 * sending k+1 rows to their answer (RTT, transfers, cloud) and the output layers + head on them. */
typedef struct spec_round_costs {
    double draft_ms;          /* device: one drafted token (input layers, adapter, output layers, head) */
    double in_ms;             /* device: input layers of one token */
    double ver0_ms, ver1_ms;  /* device: output layers + head on n rows = ver0 + ver1 * n */
    double wait0_ms, wait1_ms;/* send -> answer for n rows = wait0 + wait1 * n */
} spec_round_costs;

double spec_round_ms(const spec_round_costs *c, int k);
/* The k in 0..kmax with the most expected tokens per ms (the smallest such k on ties). */
int spec_pick_draft(const spec_round_costs *c, double alpha, int kmax);

/* Costs of the pieces of a pipelined prefill, in ms (a chunk of c positions). */
typedef struct spec_prefill_costs {
    double in0_ms, in1_ms;        /* device input layers: in0 + in1 * c */
    double out0_ms, out1_ms;      /* device output layers: out0 + out1 * c */
    double head_ms;               /* device head on the prompt's last row, once */
    double cloud0_ms, cloud1_ms;  /* cloud middle layers: cloud0 + cloud1 * c */
    double up_row_ms, down_row_ms;/* serialization of one row on the uplink / downlink */
    double rtt_ms;
} spec_prefill_costs;

/* Simulated time of HAT's pipelined prefill of n positions in chunks of `chunk` (the last one shorter): the
 * device runs each chunk's input layers and sends it, and between chunks runs the output layers of every
 * answer that has arrived; uplink, cloud and downlink each serve chunks in order. */
double spec_prefill_ms(const spec_prefill_costs *c, int n, int chunk);
/* The largest chunk size in 1..n whose simulated prefill is within SPEC_CHUNK_SLACK of the fastest. */
#define SPEC_CHUNK_SLACK 0.02
int spec_pick_chunk(const spec_prefill_costs *c, int n);

#endif
