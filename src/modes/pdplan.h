/* pdplan.h: pd mode's settings (pd_plan): parsed from --pd-plan, or chosen by pdplan_auto from measured
 * device speed, the measured link and an estimate of the cloud's speed. The cost model is in docs/PD.md. */
#ifndef DUET_MODES_PDPLAN_H
#define DUET_MODES_PDPLAN_H

#include <stddef.h>

#include "modes/pd.h"
#include "modes/probe.h"

typedef struct pd_costs {
    double dev_fixed_ms;  /* a device forward over c positions (every layer, as slowed) takes fixed + c * pos */
    double dev_pos_ms;
    int n_layers;
    double cloud_ttft_ms; /* from the request to the cloud's first token at the device */
    double cloud_tpot_ms; /* the cloud's time per streamed token */
    double cloud_pos_ms;  /* the cloud's prefill time per prompt position (for its busy time) */
} pd_costs;

/* What the plan expects (for reports and docs/results). */
typedef struct pd_forecast {
    int handover_at;      /* the first token the device is forecast to make itself */
    double ttft_ms;       /* the cloud's first token, or the device's if it comes first */
    double catch_up_ms;   /* when the device has caught up and takes over */
    double cloud_busy_ms; /* prefill + cloud_tokens streamed */
} pd_forecast;

/* probe_device (probe.h), then pdplan_from_probe: fills dev_fixed_ms, dev_pos_ms and n_layers. */
int pdplan_probe(const duet_model *m, duet_pool *pool, double slowdown, pd_costs *c, char *err, size_t errlen);
/* The device's side of c from a per-layer probe: the call, every layer and the head on one row are the fixed
 * part. */
void pdplan_from_probe(const probe_compute *dev, pd_costs *c);

/* The cloud's side of c: net_ms is the measured time to send the prompt and get an answer (a PING padded to
 * the prompt's size); its compute is estimated as this machine's unslowed speed (dev / slowdown), which is
 * exact for the emulation (the cloud is this machine) and a stated assumption otherwise. */
void pdplan_cloud_estimate(pd_costs *c, double net_ms, double down_ms_per_token, double slowdown, int n_prompt);
/* The same with the cloud's whole-model forward given as fixed + c * pos ms (auto mode's cloud figures). */
void pdplan_cloud_costs(pd_costs *c, double net_ms, double down_ms_per_token, double fixed, double pos, int n_prompt);

/* Measures the network part of the cloud's first token on the open session r: one PING padded to the
 * prompt's size, answered by an empty PONG (upload + round trip), into *net_ms. */
int pdplan_measure_net(remote *r, int n_prompt, double *net_ms, char *err, size_t errlen);

/* Chooses the plan for a request of n_prompt + max_tokens. tpot_ms > 0: the pace asked (else 1.1 x the
 * device's decode step, so its own tokens keep the pace); max_tpot_ms > 0: the bound on any gap the user
 * sees. What cannot be met is said in note (the plan then does the nearest thing it can); DUET_EINVAL when
 * nothing can meet it. fc may be NULL. */
int pdplan_auto(const pd_costs *c, int n_prompt, int max_tokens, double tpot_ms, double max_tpot_ms, pd_plan *out,
                pd_forecast *fc, char *note, size_t notelen, char *err, size_t errlen);

/* Parses --pd-plan: "auto", or a comma list of "never", "caught-up", "handover=N" (the cloud makes exactly N
 * tokens), "cloud=N" (with caught-up: at most N), "chunk=C". *is_auto is set for "auto". Fields not given
 * keep out's values. */
int pdplan_parse(const char *spec, pd_plan *out, int *is_auto, char *err, size_t errlen);

#endif
