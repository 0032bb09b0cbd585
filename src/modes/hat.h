/* hat.h: HAT (seeds 000/001), the U-shaped split with device drafting and cloud verification.
 *
 * The device holds the embedding, layers [0,A), layers [B,L) with B = L-M, the head and an adapter; the
 * cloud holds only the middle [A,B). Token ids never cross the link: h_A goes up, h_B comes down. The
 * device's small model (input layers -> adapter -> output layers -> head) drafts k tokens; their h_A go up in
 * one UPLOAD, the cloud returns their h_B, the device runs its output layers and head on them and keeps the
 * longest accepted prefix plus one token of its own (docs/HAT.md has the rules for k and the prompt chunks).
 *
 * Ownership: hat_opts points at the caller's calib. Threads: one request at a time per remote. */
#ifndef DUET_MODES_HAT_H
#define DUET_MODES_HAT_H

#include "engine/calib.h"
#include "modes/mode.h"
#include "modes/spec.h"
#include "modes/trace.h"

#define HAT_AUTO -1

typedef struct hat_opts {
    int input_layers;   /* A >= 1 */
    int output_layers;  /* M >= 1; A + M < L, so the cloud holds at least one layer */
    int draft;          /* k >= 0 drafted tokens per round (0: U-shape, one round trip per token); HAT_AUTO */
    int draft_max;      /* the largest k auto may pick */
    int chunk;          /* prompt chunk size > 0; 0: the whole prompt in one UPLOAD; HAT_AUTO */
    const calib *calib; /* the adapter is its map A:(L-M) (`duet calibrate`); NULL: identity, h_A taken for h_B */
    trace *record;      /* NULL, or a TRACE_HAT trace that gets (drafted, accepted) of every decode round */
    trace *replay;      /* NULL, or a TRACE_HAT trace whose rounds are played instead of choosing k and accepting
                         * by the rule: the drafts and rows are computed and sent as usual, only the decisions
                         * are the trace's (src/modes/trace.h) */
} hat_opts;

hat_opts hat_opts_default(int n_layers); /* A = M = 1 (L/4 when L >= 8), draft auto up to 8, chunk auto */

/* Measured costs (docs/HAT.md): device steps on this device (slowdown included), the cloud's compute per
 * batch, and the link, each as intercept + slope per row. */
typedef struct hat_costs {
    int measured;
    spec_round_costs round;     /* decode: draft and verification costs */
    spec_prefill_costs prefill; /* prefill: the pipeline's stages */
} hat_costs;

/* Checks A and M against the model and the device's part (embedding, head, [0,A) and [L-M,L) held), and that
 * the calibration belongs to this model and has the map A:(L-M). */
int hat_check(const duet_model *m, const hat_opts *o, char *err, size_t errlen);

/* Measures *out over an opened session r before a request (it uploads probe rows at position 0, which the
 * request's first upload rolls back): three UPLOAD + REQUEST HIDDEN exchanges (1 row up and down, 16 up and
 * 1 down, 16 up and down, each twice, minimum taken) and the device's layers on 1 and 16 rows. */
int hat_probe(const duet_model *m, duet_pool *pool, remote *r, const hat_opts *o, hat_costs *out, char *err,
              size_t errlen);

/* Answers rq over r (opened with remote_open_range(.., A, L-M, ..), mode FRAME_MODE_HAT). costs may be NULL:
 * auto choices then start from defaults and learn from the rounds they measure. mt gets the section 6 metrics
 * plus rounds, drafted and accepted. */
int mode_hat_run(const duet_model *m, duet_pool *pool, remote *r, const hat_opts *o, const hat_costs *costs,
                 const mode_request *rq, mode_emit_fn emit, void *arg, metrics *mt, char *err, size_t errlen);

#endif
