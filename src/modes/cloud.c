/* The cloud-only baseline: the device holds only the tokenizer. The prompt goes up in one PROMPT, one REQUEST
 * asks for a stream, and the cloud sends one TOKENS frame per token as it makes it (stopping after EOS), then
 * an empty TOKENS frame; so a whole request is one round trip. */
#include <stdlib.h>

#include "base/clock.h"
#include "base/err.h"
#include "modes/mode.h"

int mode_cloud_run(remote *r, const mode_request *rq, mode_emit_fn emit, void *arg, metrics *mt, char *err,
                   size_t errlen) {
    if (r->layer_a != 0) return err_set(err, errlen, DUET_EINVAL, "cloud mode needs a cloud holding every layer");
    if (rq->n_prompt < 1) return err_set(err, errlen, DUET_EINVAL, "the prompt is empty (add BOS)");
    mt->prompt_tokens = rq->n_prompt;
    if (rq->max_tokens < 1) { /* nothing to ask for (a STREAM asks for at least one token) */
        metrics_finish(mt);
        return DUET_OK;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)rq->max_tokens); /* [max_tokens] of one TOKENS frame */
    if (!ids) return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    remote_begin(r);
    double t0 = clock_now_ms();
    frame_msg msg = {.type = FRAME_PROMPT, .session = r->session};
    msg.u.tokens = (frame_tokens){.pos0 = 0, .n = (uint32_t)rq->n_prompt, .ids = rq->prompt};
    int rc = transport_send(r->t, &msg, err, errlen);
    if (!rc) {
        msg = (frame_msg){.type = FRAME_REQUEST, .session = r->session};
        msg.u.request = (frame_request){.pos = (uint32_t)rq->n_prompt, .count = (uint32_t)rq->max_tokens,
                                        .kv_keep = FRAME_KEEP_ALL, .want = FRAME_WANT_STREAM};
        rc = transport_send(r->t, &msg, err, errlen);
        mt->cloud_requests = 1;
    }
    int ended = 0; /* EOS delivered: only the end marker may follow */
    while (!rc && !(rc = remote_recv_tokens(r, &msg, mt, err, errlen))) {
        const frame_tokens *tk = &msg.u.tokens;
        if (tk->n == 0) break;
        if (ended || tk->n > (uint32_t)(rq->max_tokens - mt->tokens)) {
            rc = err_set(err, errlen, FRAME_E_VALUE, "the cloud streamed more tokens than asked");
            break;
        }
        frame_tokens_get(tk, ids, NULL, NULL);
        if (mt->tokens == 0) mt->prefill_ms = clock_now_ms() - t0;
        for (uint32_t i = 0; i < tk->n && !rc; i++) {
            if (ended) rc = err_set(err, errlen, FRAME_E_VALUE, "the cloud streamed tokens after end-of-sequence");
            else if ((rc = metrics_token(mt, ids[i]))) err_set(err, errlen, rc, "out of memory");
            else if (emit) emit(arg, ids[i]);
            ended = ids[i] == rq->eos_id;
        }
    }
    free(ids);
    if (rc && remote_lost(r, rc)) { /* the tokens delivered so far stand; the device makes the rest */
        const char *path = r->model_path; /* remote_abandon clears r */
        int flags = r->load_flags;
        remote_abandon(r, mt);
        return mode_device_resume(path, flags, NULL, rq, emit, arg, mt, err, errlen);
    }
    remote_end(r, mt);
    metrics_finish(mt);
    return rc;
}
