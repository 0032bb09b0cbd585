/* pd.h: P/D-Device mode (seed 002). The device holds every layer and so does the cloud. The device sends the
 * prompt; the cloud prefills it and streams tokens from the first one on, which the speed controller
 * (pace.h) releases to the user at a steady pace. Meanwhile the device runs the prompt and then the tokens
 * received so far through its own layers, in chunks, one layer at a time between releases; once it has
 * caught up it sends CLOSE, the cloud stops and frees the session, and the device decodes alone. Tokens are
 * the same as device-only (greedy, or with temperature from the same seed: the device skips the draws the
 * cloud made, duet_sampler_skip). If the cloud is unreachable, drops, or streams nonsense, the device
 * finishes alone: no token lost or repeated, and metrics.fallback_at says where. */
#ifndef DUET_MODES_PD_H
#define DUET_MODES_PD_H

#include "modes/mode.h"
#include "modes/pace.h"

enum pd_handover {
    PD_CAUGHT_UP = 0, /* the device takes over as soon as it has run every token known (cloud_tokens at most) */
    PD_FIXED = 1,     /* the cloud makes exactly cloud_tokens tokens, the device the rest */
    PD_NEVER = 2,     /* the cloud makes every token; the device computes only if the cloud is lost */
};

typedef struct pd_plan {
    double tpot_ms;   /* release pace; <= 0: release each token as soon as it is known */
    int chunk;        /* most positions per catch-up forward (>= 1) */
    int handover;     /* enum pd_handover */
    int cloud_tokens; /* the STREAM's count: the most tokens the cloud makes; 0: the cloud is not asked */
} pd_plan;

/* Answers rq over the session r (opened with FRAME_MODE_PD and layer_a 0), or alone when r is NULL or
 * plan->cloud_tokens is 0. m must hold the whole model; every device compute step is stretched `slowdown`
 * times (remote_device_step). Losing the cloud is not an error: the request is
 * answered, mt->fallback_at is set and note[notelen] says why (note is "" otherwise). When it returns,
 * the session is closed (or lost) and remote_close only frees r. Errors are the device's own (engine,
 * memory). */
int mode_pd_run(const duet_model *m, duet_pool *pool, remote *r, const pd_plan *plan, double slowdown,
                const mode_request *rq, mode_emit_fn emit, void *arg, metrics *mt, char *note, size_t notelen,
                char *err, size_t errlen);

#endif
