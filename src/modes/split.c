/* The split baseline (CE-CoLLM's "naive cloud-edge"): the device runs embed + layers [0,A) and uploads every
 * position's h_A; the cloud runs [A,L) + head on what it was sent and samples with the session's sampler.
 * Prefill uploads all prompt rows in one UPLOAD; then each step uploads one row and waits for one token, so
 * a request of n tokens is n round trips. */
#include <stdlib.h>

#include "base/clock.h"
#include "base/err.h"
#include "modes/mode.h"

#define PREFILL_BATCH 512

/* UPLOAD of h[n][dim] at positions pos0.., then REQUEST for the next token after the last of them. */
static int ask(remote *r, const float *h, int pos0, int n, int dim, char *err, size_t errlen) {
    frame_msg msg = {.type = FRAME_UPLOAD, .session = r->session};
    msg.u.rows = (frame_rows){.pos0 = (uint32_t)pos0, .n = (uint32_t)n, .dim = (uint32_t)dim,
                              .enc = (uint32_t)r->enc, .x = h};
    int rc = transport_send(r->t, &msg, err, errlen);
    if (rc) return rc;
    msg = (frame_msg){.type = FRAME_REQUEST, .session = r->session};
    msg.u.request = (frame_request){.pos = (uint32_t)(pos0 + n - 1), .count = 1, .kv_keep = FRAME_KEEP_ALL,
                                    .want = FRAME_WANT_TOKENS};
    return transport_send(r->t, &msg, err, errlen);
}

int mode_split_run(const duet_model *m, duet_pool *pool, remote *r, const mode_request *rq, mode_emit_fn emit,
                   void *arg, metrics *mt, char *err, size_t errlen) {
    const duet_config *c = duet_model_config(m);
    const duet_part *part = duet_model_part(m);
    int a = r->layer_a;
    if (a < 1 || a >= c->n_layers)
        return err_set(err, errlen, DUET_EINVAL, "split point %d is outside 1..%d", a, c->n_layers - 1);
    for (int l = 0; l < a; l++)
        if (!duet_part_has_layer(part, l))
            return err_set(err, errlen, DUET_EINVAL, "split mode needs layers [0,%d) on the device, not %d", a, l);
    if (!part->embed) return err_set(err, errlen, DUET_EINVAL, "split mode needs the embedding on the device");
    if (rq->n_prompt < 1) return err_set(err, errlen, DUET_EINVAL, "the prompt is empty (add BOS)");

    remote_begin(r);
    duet_part dev = {.n_spans = 1, .span = {{0, a}}, .embed = true};
    int rc = DUET_ENOMEM, lost = 0;
    duet_kv *kv = duet_kv_init(m, &dev, rq->n_prompt + rq->max_tokens, err, errlen);
    duet_ctx *ctx = duet_ctx_init(m, rq->n_prompt < PREFILL_BATCH ? rq->n_prompt : PREFILL_BATCH, pool, err, errlen);
    float *h = malloc(sizeof(float) * (size_t)rq->n_prompt * c->dim); /* [n_prompt][dim] */
    if (!kv || !ctx) goto out;
    if (!h) {
        err_set(err, errlen, DUET_ENOMEM, "out of memory for a %d-token prompt", rq->n_prompt);
        goto out;
    }
    mt->prompt_tokens = rq->n_prompt;

    double t0 = clock_now_ms();
    if ((rc = duet_embed(ctx, rq->prompt, rq->n_prompt, h, err, errlen)) ||
        (rc = duet_forward(ctx, kv, 0, a, h, rq->n_prompt, 0, err, errlen)))
        goto out;
    mt->device_compute_ms += remote_device_step(t0, r->slowdown);
    int pos0 = 0, n = rq->n_prompt; /* the rows to upload next */
    for (int i = 0; i < rq->max_tokens; i++) {
        frame_msg msg;
        if ((rc = ask(r, h, pos0, n, c->dim, err, errlen)) || (rc = remote_recv_tokens(r, &msg, mt, err, errlen))) {
            lost = remote_lost(r, rc);
            goto out;
        }
        mt->cloud_requests++;
        const frame_tokens *tk = &msg.u.tokens;
        if (tk->n != 1 || tk->pos0 != (uint32_t)(pos0 + n - 1)) {
            rc = err_set(err, errlen, FRAME_E_VALUE, "the cloud answered %u tokens at position %u, asked 1 at %d",
                         tk->n, tk->pos0, pos0 + n - 1);
            lost = remote_lost(r, rc);
            goto out;
        }
        int32_t id;
        frame_tokens_get(tk, &id, NULL, NULL);
        if (i == 0) mt->prefill_ms = clock_now_ms() - t0;
        if ((rc = metrics_token(mt, id))) {
            err_set(err, errlen, rc, "out of memory");
            goto out;
        }
        if (emit) emit(arg, id);
        if (id == rq->eos_id || i + 1 == rq->max_tokens) break;
        pos0 += n;
        n = 1;
        double ts = clock_now_ms();
        if ((rc = duet_embed(ctx, &id, 1, h, err, errlen)) || (rc = duet_forward(ctx, kv, 0, a, h, 1, pos0, err, errlen)))
            goto out;
        mt->device_compute_ms += remote_device_step(ts, r->slowdown);
    }
    rc = DUET_OK;
out:;
    const char *path = r->model_path; /* remote_abandon clears r */
    int flags = r->load_flags;
    if (lost) remote_abandon(r, mt);
    else remote_end(r, mt);
    metrics_finish(mt);
    free(h);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    if (lost) rc = mode_device_resume(path, flags, pool, rq, emit, arg, mt, err, errlen);
    return rc;
}
