/* auto.h: `duet run --mode auto` (docs/AUTO.md). auto_decide probes this device's layers and, over a short
 * probe session, the link (padded PINGs) and the cloud's layers (the compute time it reports for 1 and 32
 * rows); with nominal_net there is no session: the link's figures are taken as they are and the cloud is
 * estimated as this machine at full speed. The cloud's figures are corrected by what earlier requests
 * measured (the state), then every candidate is predicted with cost.h and one picked for the objective. The caller runs the pick like any fixed mode, then
 * auto_learn records what the run measured and autostate_save keeps it.
 *
 * Ownership: an auto_decision is the caller's (large) struct; nothing to free. */
#ifndef DUET_MODES_AUTO_H
#define DUET_MODES_AUTO_H

#include <stdio.h>

#include "modes/cost.h"
#include "modes/mode.h"

typedef struct auto_opts {
    int objective;          /* enum cost_objective */
    double budget;          /* cloud-cost: candidates within budget x the fastest prediction */
    double margin;          /* latency, privacy: device-only wins within (1 + margin) x the fastest (cost_pick) */
    int allow_lossy;        /* ee below threshold 1 may win */
    int nominal_net;        /* take the link from remote.link's figures instead of measuring it */
    int calibrated;         /* a --calib file goes with ee and hat */
    double slowdown;        /* the emulated device slowdown (>= 1) */
    remote_opts remote;     /* where the cloud is and the emulated link */
    const autostate *state; /* rates and corrections from earlier requests, or NULL */
} auto_opts;

typedef struct auto_decision {
    cost_inputs in;
    int net_measured;        /* the link and the cloud were measured (else nominal and estimated) */
    int have_cloud;          /* the probe session opened (always 1 with nominal_net) */
    char cloud_err[256];     /* why not */
    cost_cand cand[COST_MAX_CANDS];
    int n;
    int chosen;              /* index into cand; -1: none eligible */
    int speed;               /* the speed class the state's time corrections were taken at */
} auto_decision;

/* m must hold the whole model. 0 ok (d->chosen may still be -1: nothing fits the objective); an unreachable
 * cloud is not an error (d->have_cloud = 0: the device answers). */
int auto_decide(duet_model *m, duet_pool *pool, const auto_opts *o, int n_prompt, int n_tokens, auto_decision *d,
                char *err, size_t errlen);

/* The decision as one JSON object on one line (docs/AUTO.md names the fields). */
void auto_print_json(const auto_decision *d, const auto_opts *o, const char *link_spec, FILE *f);

/* The prediction for a mode run with fixed settings (want: its mode and settings as the run uses them), from the
 * probes auto_decide makes (d is filled as auto_decide fills it): *c is d's candidate with those settings, or want
 * itself predicted when d has none. So a fixed-mode run given a state teaches auto its mode's time corrections. */
int auto_predict(duet_model *m, duet_pool *pool, const auto_opts *o, int n_prompt, int n_tokens, const cost_cand *want,
                 auto_decision *d, cost_cand *c, char *err, size_t errlen);

/* What a run of candidate c measured, into st: ee's and hat's rates, the cloud's compute against c's prediction,
 * and the run's time to the first token and between tokens against c's uncorrected predictions at speed class
 * `speed` (only where the prediction rested on measured rates, and the run kept its cloud). */
void auto_learn(autostate *st, const cost_cand *c, int speed, const metrics *mt);

#endif
