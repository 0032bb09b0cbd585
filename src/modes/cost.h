/* cost.h: auto mode's cost model (docs/AUTO.md). From the probe (link, device and cloud speed per layer) and
 * the rates measured on earlier requests, it predicts for each mode and setting the time to the first token,
 * the time between tokens, the cloud's compute and the bytes each way; cost_pick chooses the best candidate
 * for an objective. Pure arithmetic: the same inputs give the same pick (tests feed fixed probes). */
#ifndef DUET_MODES_COST_H
#define DUET_MODES_COST_H

#include <stddef.h>

#include "modes/autostate.h"
#include "modes/pdplan.h"
#include "modes/probe.h"

enum cost_mode { COST_DEVICE, COST_CLOUD, COST_SPLIT, COST_EE, COST_PD, COST_HAT };
extern const char *const cost_mode_name[]; /* by enum cost_mode: "device", "cloud", ... (duet run --mode) */
enum cost_objective { COST_LATENCY, COST_CLOUD_COST, COST_PRIVACY };
enum cost_rates { COST_RATES_NONE, COST_RATES_PRIOR, COST_RATES_MEASURED }; /* where ee's/hat's rates came from */

typedef struct cost_inputs {
    probe_net net;
    probe_compute dev;   /* this device, slowdown included */
    probe_compute cloud; /* the cloud */
    double row_bytes;    /* one hidden state as it travels (encoding included) */
    int n_prompt, n_tokens;
    int speed;           /* the speed class whose time corrections apply (cost_speed_class of the probes) */
} cost_inputs;

typedef struct cost_cand {
    int mode;                       /* enum cost_mode */
    int split;                      /* split: the device holds [0,split) */
    int e1, e2, calibrated;         /* ee exits; ee and hat: a calibration file is used */
    float threshold;
    double exit1_rate, exit2_rate;  /* ee: share of tokens emitted at each exit */
    int input_layers, output_layers;/* hat */
    double alpha;                   /* hat: per-token acceptance */
    int draft, chunk;               /* hat: chosen by the model (spec_pick_draft, spec_pick_chunk) */
    pd_plan plan;                   /* pd: chosen by pdplan_auto */
    int rates;                      /* enum cost_rates */
    /* predictions */
    double ttft_ms, tbt_ms, total_ms; /* total = ttft + (tokens - 1) * tbt */
    double cloud_ms, bytes_up, bytes_down;
    double ttft_scale, tbt_scale;   /* the state's corrections already applied to ttft_ms, tbt_ms (1: none) */
    int is_private;                 /* token ids never leave the device */
    int lossless;                   /* greedy output equals device-only */
    int eligible;
    char why[96];                   /* why not eligible */
} cost_cand;

/* Fills c's predictions (and hat's draft and chunk, pd's plan) from its setting. 0 ok, DUET_EINVAL when the
 * setting does not fit the model (message in err). */
int cost_predict(const cost_inputs *in, cost_cand *c, char *err, size_t errlen);

/* The speed class (autostate.h) of in's device against its cloud: one step of the whole model on each. */
int cost_speed_class(const cost_inputs *in);

/* Every candidate for a model of in->dev.n_layers layers: device, cloud, split at every layer, ee at the
 * default exits (threshold 1, and the thresholds st has measured), hat at its default layers (and those st
 * has measured), pd; each predicted, then corrected by st's time factors for its mode at in->speed.
 * st may be NULL (prior rates: no exits, no accepted draft; no corrections). Returns how many were written
 * (at most cap). */
#define COST_MAX_CANDS 256
int cost_candidates(const cost_inputs *in, const autostate *st, int calibrated, cost_cand *out, int cap);

/* Marks eligibility (lossless unless allow_lossy; private for COST_PRIVACY; no cloud: device only) and returns
 * the index of the best: least total_ms (latency, privacy), or least cloud_ms among those within
 * budget x the least total_ms (cloud-cost; ties by total_ms). Ties keep the earlier candidate. For latency and
 * privacy an eligible device-only candidate within (1 + margin) x the best's total is the pick: a gain smaller
 * than the model's error is not worth the network's risks, cloud compute and data sent. -1: none. */
int cost_pick(cost_cand *c, int n, int objective, double budget, double margin, int allow_lossy, int have_cloud);

/* The `duet run` flags that run c as a fixed mode, into buf[cap]. */
void cost_args(const cost_cand *c, char *buf, size_t cap);

#endif
