/* mode.h: what every mode answers (a request) and how it hands tokens to the user (an emit callback).
 * Each mode lives in its own src/modes/<mode>.c and fills the same metrics. */
#ifndef DUET_MODES_MODE_H
#define DUET_MODES_MODE_H

#include <stdbool.h>
#include <stddef.h>

#include "duet.h"
#include "modes/metrics.h"
#include "modes/remote.h"

typedef struct mode_request {
    const int *prompt;       /* [n_prompt] token ids, BOS included if wanted */
    int n_prompt;
    int max_tokens;          /* tokens to generate (fewer if eos_id is produced) */
    duet_sampling sampling;
    int eos_id;              /* generation stops after this token; -1: never */
} mode_request;

/* Called once per token as it becomes available to the user. */
typedef void (*mode_emit_fn)(void *arg, int id);

/* Device-only generation: every layer on this machine. The model must hold everything. */
int mode_device_run(const duet_model *m, duet_pool *pool, const mode_request *rq, mode_emit_fn emit, void *arg,
                    metrics *mt, char *err, size_t errlen);
/* The same on an emulated device `slowdown` times slower than this machine (remote_device_step). */
int mode_device_run_slowed(const duet_model *m, duet_pool *pool, double slowdown, const mode_request *rq,
                           mode_emit_fn emit, void *arg, metrics *mt, char *err, size_t errlen);

/* The remote modes answer a request over a session r opened by remote_open with their enum frame_mode.
 * cloud: the device holds only the tokenizer; the prompt goes up, the cloud runs every layer and streams the
 * tokens down (one round trip). r must be opened with layer_a 0. */
int mode_cloud_run(remote *r, const mode_request *rq, mode_emit_fn emit, void *arg, metrics *mt, char *err,
                   size_t errlen);
/* split (CE-CoLLM's naive cloud-edge baseline): the device runs embed + [0,A) and uploads each position's h_A,
 * the cloud runs [A,L) + head and samples; one round trip per token. A is r->layer_a; m must hold [0,A) and
 * the embedding. */
int mode_split_run(const duet_model *m, duet_pool *pool, remote *r, const mode_request *rq, mode_emit_fn emit,
                   void *arg, metrics *mt, char *err, size_t errlen);

#endif
