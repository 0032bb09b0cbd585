/* mode.h: what every mode answers (a request) and how it hands tokens to the user (an emit callback).
 * Each mode lives in its own src/modes/<mode>.c and fills the same metrics. */
#ifndef DUET_MODES_MODE_H
#define DUET_MODES_MODE_H

#include <stdbool.h>
#include <stddef.h>

#include "duet.h"
#include "engine/calib.h"
#include "modes/metrics.h"
#include "modes/remote.h"
#include "modes/trace.h"

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

/* Finishes rq on this machine after the cloud was lost: mt->tokens tokens were delivered already (mt->ids).
 * Loads the whole model from model_path, runs the prompt and those tokens as one prefill (bit-identical to
 * decoding them one by one, so greedy output equals device-only) and generates the rest, emitting and recording
 * each token in mt as the mode would. Nothing to do after EOS or max_tokens. */
int mode_device_resume(const char *model_path, int load_flags, duet_pool *pool, const mode_request *rq,
                       mode_emit_fn emit, void *arg, metrics *mt, char *err, size_t errlen);

/* The remote modes answer a request over a session r opened by remote_open with their enum frame_mode.
 * cloud: the device holds only the tokenizer; the prompt goes up, the cloud runs every layer and streams the
 * tokens down (one round trip). r must be opened with layer_a 0. */
int mode_cloud_run(remote *r, const mode_request *rq, mode_emit_fn emit, void *arg, metrics *mt, char *err,
                   size_t errlen);
/* With r->fallback, both finish on the device when the cloud is lost (remote_lost, mode_device_resume).
 * split (CE-CoLLM's naive cloud-edge baseline): the device runs embed + [0,A) and uploads each position's h_A,
 * the cloud runs [A,L) + head and samples; one round trip per token. A is r->layer_a; m must hold [0,A) and
 * the embedding. */
int mode_split_run(const duet_model *m, duet_pool *pool, remote *r, const mode_request *rq, mode_emit_fn emit,
                   void *arg, metrics *mt, char *err, size_t errlen);

/* Messages a mode has for the user while it carries on (e.g. it lost the cloud); the CLI prints them. */
typedef void (*mode_log_fn)(void *arg, const char *msg);

/* ee (CE-CoLLM): early exits after layers e1 < e2 on the device, background upload of every h_{e2+1}, the
 * cloud (layers (e2,L) + head) asked only for low-confidence tokens; standalone when there is no cloud. */
typedef struct ee_opts {
    int e1, e2;              /* exits after these layers: 0 <= e1 < e2 <= L-2 */
    float threshold;         /* emit at an exit when its top probability is >= this; 1: never exit */
    const calib *calib;      /* translators (e+1):L of the exits, or NULL: the head reads h_{e+1} as is */
    bool standalone;         /* no cloud at all: the E2 exit always emits */
    bool background_upload;  /* rows go up as soon as they exist (default); false: with each request */
    int reconnect_ms;        /* first wait before reconnecting to a lost cloud, doubling to 30 s; 0: never */
    duet_sampling sampling;  /* the device's exits and the cloud's session sample with this */
    remote_opts remote;      /* where the cloud is; remote.timeout_ms bounds every wait for it */
    duet_kv *kv;             /* the device's KV cache over [0,e2] (NULL: the mode makes its own); lets a caller
                              * inspect or continue it */
    mode_log_fn log;
    void *log_arg;
    trace *record;           /* NULL, or a TRACE_EE trace that gets where each token came from */
    trace *replay;           /* NULL, or a TRACE_EE trace whose decisions replace the exits' confidence tests:
                              * the same layers, heads, uploads and requests run, as the trace says */
} ee_opts;

ee_opts ee_opts_default(void); /* no exits chosen, threshold 0.8, background upload, reconnect after 1 s */
/* m holds layers [0,e2], the embedding and the head (a model of the same file as the cloud's). */
int mode_ee_run(duet_model *m, duet_pool *pool, const ee_opts *o, const mode_request *rq, mode_emit_fn emit,
                void *arg, metrics *mt, char *err, size_t errlen);

#endif
