/* The device-only baseline and the reference output for every lossless mode. Prefill runs the whole
 * prompt as one batch; decode runs one position per step. */
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/err.h"
#include "modes/mode.h"

#define PREFILL_BATCH 512

int mode_device_run(const duet_model *m, duet_pool *pool, const mode_request *rq, mode_emit_fn emit, void *arg,
                    metrics *mt, char *err, size_t errlen) {
    return mode_device_run_slowed(m, pool, 1, rq, emit, arg, mt, err, errlen);
}

int mode_device_run_slowed(const duet_model *m, duet_pool *pool, double slowdown, const mode_request *rq,
                           mode_emit_fn emit, void *arg, metrics *mt, char *err, size_t errlen) {
    const duet_config *c = duet_model_config(m);
    const duet_part *part = duet_model_part(m);
    if (!part->embed || !part->head || part->n_spans != 1 || part->span[0].a != 0 || part->span[0].b != c->n_layers)
        return err_set(err, errlen, DUET_EINVAL, "device mode needs the whole model");
    if (rq->n_prompt < 1) return err_set(err, errlen, DUET_EINVAL, "the prompt is empty (add BOS)");
    int n_ctx = rq->n_prompt + rq->max_tokens;
    int rc = DUET_ENOMEM;
    duet_kv *kv = duet_kv_init(m, part, n_ctx, err, errlen);
    duet_ctx *ctx = duet_ctx_init(m, rq->n_prompt < PREFILL_BATCH ? rq->n_prompt : PREFILL_BATCH, pool, err, errlen);
    duet_sampler *smp = duet_sampler_init(&rq->sampling, c->vocab_size, err, errlen);
    float *h = malloc(sizeof(float) * (size_t)rq->n_prompt * c->dim);   /* [n_prompt][dim] */
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);       /* [vocab] */
    if (!kv || !ctx || !smp) goto out;
    if (!h || !logits) {
        err_set(err, errlen, DUET_ENOMEM, "out of memory for a %d-token prompt", rq->n_prompt);
        goto out;
    }
    mt->prompt_tokens = rq->n_prompt;

    double t0 = clock_now_ms();
    if ((rc = duet_embed(ctx, rq->prompt, rq->n_prompt, h, err, errlen)) ||
        (rc = duet_forward(ctx, kv, 0, c->n_layers, h, rq->n_prompt, 0, err, errlen)) ||
        (rc = duet_head(ctx, h + (size_t)(rq->n_prompt - 1) * c->dim, 1, logits, err, errlen)))
        goto out;
    mt->prefill_ms = remote_device_step(t0, slowdown);
    mt->device_compute_ms += mt->prefill_ms;

    int pos = rq->n_prompt;
    for (int i = 0; i < rq->max_tokens; i++) {
        int id = duet_sample(smp, logits);
        if ((rc = metrics_token(mt, id))) {
            err_set(err, errlen, rc, "out of memory");
            goto out;
        }
        if (emit) emit(arg, id);
        if (id == rq->eos_id || i + 1 == rq->max_tokens) break;
        t0 = clock_now_ms();
        if ((rc = duet_embed(ctx, &id, 1, h, err, errlen)) ||
            (rc = duet_forward(ctx, kv, 0, c->n_layers, h, 1, pos, err, errlen)) ||
            (rc = duet_head(ctx, h, 1, logits, err, errlen)))
            goto out;
        mt->device_compute_ms += remote_device_step(t0, slowdown);
        pos++;
    }
    rc = DUET_OK;
out:
    metrics_finish(mt);
    free(h);
    free(logits);
    duet_sampler_free(smp);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    return rc;
}

int mode_device_resume(const char *model_path, int load_flags, duet_pool *pool, const mode_request *rq,
                       mode_emit_fn emit, void *arg, metrics *mt, char *err, size_t errlen) {
    int done = mt->tokens;
    if (done >= rq->max_tokens || (done && mt->ids[done - 1] == rq->eos_id)) {
        metrics_finish(mt);
        return DUET_OK;
    }
    if (!model_path) return err_set(err, errlen, DUET_EINVAL, "no model file to finish the request on the device");
    int n = rq->n_prompt + done;
    int *prefix = malloc(sizeof(int) * (size_t)n); /* [n_prompt + done]: the prompt, then the tokens delivered */
    if (!prefix) return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    memcpy(prefix, rq->prompt, sizeof(int) * (size_t)rq->n_prompt);
    if (done) memcpy(prefix + rq->n_prompt, mt->ids, sizeof(int) * (size_t)done);
    duet_model *m = duet_model_load(model_path, NULL, load_flags, err, errlen);
    int rc = DUET_ERR;
    if (m) {
        mode_request rest = *rq;
        rest.prompt = prefix;
        rest.n_prompt = n;
        rest.max_tokens = rq->max_tokens - done;
        int prompt_tokens = mt->prompt_tokens; /* the request's, not the rebuilt prefix's */
        double prefill_ms = mt->prefill_ms;
        rc = mode_device_run(m, pool, &rest, emit, arg, mt, err, errlen);
        mt->prompt_tokens = prompt_tokens;
        if (prefill_ms > 0) mt->prefill_ms = prefill_ms;
    }
    if (rc) err_prefix(err, errlen, "finishing on the device after the cloud was lost");
    duet_model_free(m);
    free(prefix);
    return rc;
}
