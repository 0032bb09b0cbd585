/* P/D-Device. One thread does everything, in a loop: read whatever the cloud has streamed (without waiting),
 * release what the speed controller says is due, then one step of device work: one layer of the catch-up
 * chunk in flight (the prompt, then the tokens known so far), or the head and sampler once the device has
 * caught up. Slicing the work by layer bounds how late a release can be by one layer of one chunk, whatever
 * the chunk size, so chunks can be large enough to catch up fast. Running layers [0,k) then [k,L), and a
 * chunk instead of single positions, is bit-identical (duet.h), so the device's tokens are device-only's. */
#include "modes/pd.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/err.h"

#define CATCH_UP_MARGIN 1.25 /* the device's catch-up may run this much slower than measured so far */

enum cloud_state {
    CLOUD_NONE,      /* not asked (no cloud in the plan, or no connection) */
    CLOUD_STREAMING, /* STREAM sent: tokens come */
    CLOUD_CLOSING,   /* CLOSE sent: tokens still on their way are discarded until the CLOSE answer */
    CLOUD_CLOSED,    /* the session is closed */
    CLOUD_LOST,      /* unreachable, dropped, or misbehaving: nothing more is read or sent */
};

typedef struct pd_run {
    const duet_config *c;
    remote *r;
    const pd_plan *plan;
    const mode_request *rq;
    double slowdown;
    mode_emit_fn emit;
    void *arg;
    metrics *mt;
    char *note;
    size_t notelen;
    double t0;

    int *seq;       /* [P + N] the prompt, then each output token once it is known */
    int P, N;
    int known;      /* output tokens known: from the cloud, then from the device */
    int total;      /* output tokens of the request: N, or up to the EOS token once it is known */
    pace pc;

    duet_kv *kv;
    duet_ctx *ctx;
    duet_sampler *smp;
    float *h;       /* [chunk][dim] the chunk in flight */
    float *logits;  /* [vocab] */
    int dev_pos;    /* positions run through every layer */
    int ck_pos0, ck_n, ck_layer; /* chunk in flight (ck_n 0: none) and its next layer */
    int handed;     /* the device makes every token from mt->handover_at on */
    double cu_ms;   /* device time spent on catch-up chunks so far, and their positions: its measured speed */
    int cu_pos;

    int cloud;      /* enum cloud_state */
    int cloud_got;  /* tokens taken from the stream */
    double last_frame_ms;
} pd_run;

/* The cloud is gone for this request: the device finishes alone from the tokens it kept. */
static void cloud_lost(pd_run *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cloud_lost(pd_run *R, const char *fmt, ...) {
    int was = R->cloud;
    R->cloud = CLOUD_LOST;
    if (was != CLOUD_STREAMING && was != CLOUD_NONE) return; /* after the hand-over it no longer matters */
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    R->mt->fallback_at = R->known;
    if (R->note) snprintf(R->note, R->notelen, "%s: the device finishes alone from token %d", why, R->known);
}

/* A stream the device cannot use: say so to the cloud (best effort) and go on alone. */
static void cloud_bad(pd_run *R, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void cloud_bad(pd_run *R, int code, const char *fmt, ...) {
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    frame_msg m;
    frame_error_msg(&m, R->r->session, code, why);
    transport_send(R->r->t, &m, NULL, 0);
    cloud_lost(R, "%s", why);
}

static void send_close(pd_run *R) {
    frame_msg m = {.type = FRAME_CLOSE, .session = R->r->session};
    char e[256];
    if (transport_send(R->r->t, &m, e, sizeof e)) cloud_lost(R, "closing the cloud's session: %s", e);
    else R->cloud = CLOUD_CLOSING;
}

static void token_known(pd_run *R, int id) {
    R->seq[R->P + R->known++] = id;
    if (R->known == 1) R->mt->prefill_ms = clock_now_ms() - R->t0;
    if (id == R->rq->eos_id) R->total = R->known;
    pace_add(&R->pc, 1, clock_now_ms());
}

/* One streamed TOKENS frame. While streaming it must be the next position, one token, inside the request. */
static void cloud_tokens(pd_run *R, const frame_tokens *tk) {
    uint32_t want = (uint32_t)(R->P + R->cloud_got);
    R->mt->cloud_compute_ms += tk->compute_us / 1e3;
    R->mt->cloud_tokens += tk->n;
    if (R->cloud != CLOUD_STREAMING) return; /* on its way before our CLOSE: discarded */
    if (tk->n == 0) {                         /* the stream ended: the cloud made all it was asked */
        if (tk->pos0 != want)
            return cloud_bad(R, FRAME_E_VALUE, "the cloud ended its stream at position %u, expected %u", tk->pos0, want);
        return send_close(R);
    }
    if (tk->n != 1 || tk->pos0 != want)
        return cloud_bad(R, FRAME_E_VALUE, "the cloud streamed %u token(s) at position %u, expected one at %u (out of order)",
                         tk->n, tk->pos0, want);
    if (R->cloud_got >= R->plan->cloud_tokens || R->known >= R->total)
        return cloud_bad(R, FRAME_E_VALUE, "the cloud streamed past the request (position %u, after %s)", tk->pos0,
                         R->known >= R->total && R->known < R->N ? "end-of-sequence" : "the tokens asked");
    int32_t id;
    frame_tokens_get(tk, &id, NULL, NULL);
    if (id >= R->c->vocab_size)
        return cloud_bad(R, FRAME_E_BOUNDS, "the cloud streamed token id %d, outside the vocabulary of %d", id,
                         R->c->vocab_size);
    R->cloud_got++;
    token_known(R, id);
}

/* Reads one frame of the cloud if one comes within timeout_ms: 1 read, 0 nothing. */
static int cloud_poll(pd_run *R, int timeout_ms) {
    if (R->cloud != CLOUD_STREAMING && R->cloud != CLOUD_CLOSING) return 0;
    frame_msg m;
    char e[512];
    int rc = transport_recv(R->r->t, &m, timeout_ms, e, sizeof e);
    if (rc == TRANSPORT_TIMEOUT) return 0;
    if (rc == TRANSPORT_CLOSED) {
        if (R->cloud == CLOUD_CLOSING) R->cloud = CLOUD_CLOSED;
        else cloud_lost(R, "the cloud closed the connection");
        return 0;
    }
    if (rc) {
        cloud_lost(R, "the cloud's connection failed (%s)", e);
        return 0;
    }
    R->last_frame_ms = clock_now_ms();
    if (m.session != R->r->session && m.type != FRAME_ERROR) {
        cloud_bad(R, FRAME_E_SESSION, "the cloud sent %s for session %u, ours is %u", frame_type_name(m.type), m.session,
                  R->r->session);
        return 0;
    }
    switch (m.type) {
    case FRAME_TOKENS: cloud_tokens(R, &m.u.tokens); break;
    case FRAME_PONG: break;
    case FRAME_CLOSE:
        if (R->cloud == CLOUD_CLOSING) R->cloud = CLOUD_CLOSED;
        else cloud_lost(R, "the cloud ended the session");
        break;
    case FRAME_ERROR:
        cloud_lost(R, "the cloud reported %s: %.*s", frame_err_name(m.u.error.code), (int)m.u.error.len, m.u.error.text);
        break;
    default: cloud_bad(R, FRAME_E_STATE, "the cloud sent %s during a stream", frame_type_name(m.type)); break;
    }
    return 1;
}

static int release_due(pd_run *R) {
    int n = pace_take(&R->pc, clock_now_ms());
    for (int i = R->pc.released - n; i < R->pc.released; i++) {
        int id = R->seq[R->P + i];
        if (metrics_token(R->mt, id)) return DUET_ENOMEM;
        if (R->emit) R->emit(R->arg, id);
    }
    return DUET_OK;
}

/* May the device make the next token itself once it has run every known one? */
static int may_take_over(const pd_run *R) {
    if (R->handed || R->cloud != CLOUD_STREAMING) return 1;
    if (R->plan->handover == PD_CAUGHT_UP) return 1;
    return 0; /* PD_FIXED: until the stream's end; PD_NEVER: the cloud makes them all */
}

static int device_has_work(const pd_run *R) {
    if (R->ck_n) return 1;
    if (R->known >= R->total) return 0; /* every token is known */
    if (R->plan->handover == PD_NEVER && R->cloud == CLOUD_STREAMING) return 0;
    if (R->dev_pos < R->P + R->known) return 1;
    return may_take_over(R);
}

/* One step of device work: one layer of the chunk in flight (starting a chunk if none), or, caught up, the
 * head and the sampler for the next token (the hand-over, the first time). */
static int device_step(pd_run *R, char *err, size_t errlen) {
    const duet_config *c = R->c;
    double t0 = clock_now_ms();
    int rc, done = 0; /* positions a chunk completed in this step */
    if (!R->ck_n && R->dev_pos == R->P + R->known) { /* caught up: the next token is the device's */
        if (!R->handed) {
            R->handed = 1;
            R->mt->handover_at = R->known;
            duet_sampler_skip(R->smp, (uint64_t)R->known); /* the draws the cloud made for the tokens it gave */
            if (R->cloud == CLOUD_STREAMING) send_close(R);
        }
        /* the last chunk, which ended at the last known position, left its rows in h */
        const float *row = R->h + (size_t)(R->dev_pos - 1 - R->ck_pos0) * c->dim;
        if ((rc = duet_head(R->ctx, row, 1, R->logits, err, errlen))) return rc;
        token_known(R, duet_sample(R->smp, R->logits));
    } else {
        if (!R->ck_n) {
            int n = R->P + R->known - R->dev_pos;
            R->ck_n = n < R->plan->chunk ? n : R->plan->chunk;
            R->ck_pos0 = R->dev_pos;
            R->ck_layer = 0;
            if ((rc = duet_embed(R->ctx, R->seq + R->ck_pos0, R->ck_n, R->h, err, errlen))) return rc;
        }
        if ((rc = duet_forward(R->ctx, R->kv, R->ck_layer, R->ck_layer + 1, R->h, R->ck_n, R->ck_pos0, err, errlen)))
            return rc;
        if (++R->ck_layer == c->n_layers) {
            R->dev_pos += R->ck_n;
            done = R->ck_n;
            R->ck_n = 0;
        }
    }
    double t = remote_device_step(t0, R->slowdown);
    R->mt->device_compute_ms += t;
    if (!R->handed) {
        R->cu_ms += t;
        R->cu_pos += done;
    }
    return DUET_OK;
}

/* PD_CAUGHT_UP while the cloud streams: is it time to stop the cloud? Yes once the tokens already known last
 * the user until the device, at the speed it has measured catching up, will have run them all (with a margin),
 * so its first own token is ready by its slot. The device then catches up through them and takes over. */
static int enough_known(const pd_run *R) {
    if (R->plan->handover != PD_CAUGHT_UP || R->cloud != CLOUD_STREAMING || R->plan->tpot_ms <= 0) return 0;
    if (R->pc.released < 1 || R->cu_pos < 1) return 0;
    double per_pos = R->cu_ms / R->cu_pos, left = R->P + R->known - R->dev_pos;
    if (R->ck_n) left -= (double)R->ck_n * R->ck_layer / R->c->n_layers;
    double ready = clock_now_ms() + CATCH_UP_MARGIN * left * per_pos;
    double slot = R->pc.slot_ms + (R->known - R->pc.released + 1) * R->plan->tpot_ms; /* of token `known` */
    return ready <= slot;
}

/* Nothing to compute: wait for the cloud, or until the next release is due. */
static int idle_wait(pd_run *R, char *err, size_t errlen) {
    double now = clock_now_ms(), due = pace_due(&R->pc);
    if (R->cloud == CLOUD_STREAMING || R->cloud == CLOUD_CLOSING) {
        double wait = due - now;
        if (R->cloud == CLOUD_STREAMING) {
            double stall = R->last_frame_ms + R->r->timeout_ms - now;
            if (stall <= 0) {
                cloud_lost(R, "the cloud sent nothing for %d ms", R->r->timeout_ms);
                return DUET_OK;
            }
            if (stall < wait) wait = stall;
        } else if (isinf(wait)) {
            wait = 0; /* only the CLOSE answer is awaited and nothing else to do: never happens while a request runs */
        }
        cloud_poll(R, wait > 0 ? (int)ceil(wait) : 0);
        return DUET_OK;
    }
    if (isinf(due)) /* no work, no cloud, nothing to release, not finished: a bug */
        return err_set(err, errlen, DUET_ERR, "pd: stalled at token %d of %d", R->pc.released, R->total);
    double left = due - now;
    if (left > 0) {
        pace_clock clk = pace_clock_real();
        clk.sleep_until(clk.arg, due);
    }
    return DUET_OK;
}

/* After the request: the CLOSE answer (and the tokens on their way before it) are read so the session ends
 * cleanly and the bytes are counted. */
static void finish_cloud(pd_run *R) {
    if (R->cloud == CLOUD_STREAMING) send_close(R);
    double end = clock_now_ms() + R->r->timeout_ms;
    while (R->cloud == CLOUD_CLOSING && clock_now_ms() < end) cloud_poll(R, (int)(end - clock_now_ms()) + 1);
    if (R->cloud == CLOUD_CLOSING) R->cloud = CLOUD_LOST;
    if (R->cloud != CLOUD_NONE) R->r->opened = 0; /* closed or lost: remote_close only frees */
}

int mode_pd_run(const duet_model *m, duet_pool *pool, remote *r, const pd_plan *plan, double slowdown,
                const mode_request *rq, mode_emit_fn emit, void *arg, metrics *mt, char *note, size_t notelen,
                char *err, size_t errlen) {
    const duet_config *c = duet_model_config(m);
    const duet_part *part = duet_model_part(m);
    if (note && notelen) note[0] = 0;
    if (!part->embed || !part->head || part->n_spans != 1 || part->span[0].a != 0 || part->span[0].b != c->n_layers)
        return err_set(err, errlen, DUET_EINVAL, "pd mode needs the whole model on the device");
    if (rq->n_prompt < 1) return err_set(err, errlen, DUET_EINVAL, "the prompt is empty (add BOS)");
    if (plan->chunk < 1 || plan->cloud_tokens < 0)
        return err_set(err, errlen, DUET_EINVAL, "pd plan: chunk %d, cloud tokens %d", plan->chunk, plan->cloud_tokens);
    if (r && r->t && r->layer_a != 0) return err_set(err, errlen, DUET_EINVAL, "pd mode needs a cloud holding every layer");
    mt->has_pd = 1;
    mt->pace_ms = plan->tpot_ms > 0 ? plan->tpot_ms : 0;
    mt->prompt_tokens = rq->n_prompt;
    if (rq->max_tokens < 1) {
        metrics_finish(mt);
        return DUET_OK;
    }
    pd_run R = {.c = c, .r = r && r->t ? r : NULL, .plan = plan, .rq = rq, .slowdown = slowdown, .emit = emit,
                .arg = arg, .mt = mt, .note = note, .notelen = notelen, .P = rq->n_prompt, .N = rq->max_tokens,
                .total = rq->max_tokens};
    pace_init(&R.pc, plan->tpot_ms);
    int chunk = plan->chunk < R.P + R.N ? plan->chunk : R.P + R.N;
    int rc = DUET_ENOMEM;
    R.seq = malloc(sizeof(int) * (size_t)(R.P + R.N));
    R.h = malloc(sizeof(float) * (size_t)chunk * c->dim);
    R.logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    R.kv = duet_kv_init(m, part, R.P + R.N, err, errlen);
    R.ctx = duet_ctx_init(m, chunk, pool, err, errlen);
    R.smp = duet_sampler_init(&rq->sampling, c->vocab_size, err, errlen);
    if (!R.kv || !R.ctx || !R.smp) goto out;
    if (!R.seq || !R.h || !R.logits) {
        err_set(err, errlen, DUET_ENOMEM, "out of memory for a %d-token prompt", R.P);
        goto out;
    }
    memcpy(R.seq, rq->prompt, sizeof(int) * (size_t)R.P);

    if (R.r) remote_begin(R.r);
    R.t0 = clock_now_ms();
    if (plan->cloud_tokens > 0 && !R.r) {
        cloud_lost(&R, "no connection to the cloud");
    } else if (plan->cloud_tokens > 0) {
        frame_msg msg = {.type = FRAME_PROMPT, .session = R.r->session};
        msg.u.tokens = (frame_tokens){.pos0 = 0, .n = (uint32_t)R.P, .ids = rq->prompt};
        char e[256];
        int count = plan->cloud_tokens < R.N ? plan->cloud_tokens : R.N;
        int src = transport_send(R.r->t, &msg, e, sizeof e);
        if (!src) {
            msg = (frame_msg){.type = FRAME_REQUEST, .session = R.r->session};
            msg.u.request = (frame_request){.pos = (uint32_t)R.P, .count = (uint32_t)count, .kv_keep = FRAME_KEEP_ALL,
                                            .want = FRAME_WANT_STREAM};
            src = transport_send(R.r->t, &msg, e, sizeof e);
        }
        mt->cloud_requests = 1;
        R.cloud = CLOUD_STREAMING;
        R.last_frame_ms = clock_now_ms();
        if (src) cloud_lost(&R, "sending the prompt to the cloud: %s", e);
    }
    while (R.pc.released < R.total) {
        while (cloud_poll(&R, 0)) {}
        if ((rc = release_due(&R))) {
            err_set(err, errlen, rc, "out of memory");
            goto out;
        }
        if (R.pc.released >= R.total) break;
        if (enough_known(&R)) send_close(&R);
        if (device_has_work(&R)) rc = device_step(&R, err, errlen);
        else rc = idle_wait(&R, err, errlen);
        if (rc) goto out;
    }
    rc = DUET_OK;
out:
    metrics_finish(mt);
    if (R.r) { /* the wait for the CLOSE answer is not the user's: its bytes count, its time does not */
        remote_end(R.r, mt);
        transport_stats a, b;
        transport_stats_get(R.r->t, &a);
        finish_cloud(&R);
        transport_stats_get(R.r->t, &b);
        mt->bytes_up += b.bytes_up - a.bytes_up;
        mt->bytes_down += b.bytes_down - a.bytes_down;
    }
    free(R.seq);
    free(R.h);
    free(R.logits);
    duet_sampler_free(R.smp);
    duet_ctx_free(R.ctx);
    duet_kv_free(R.kv);
    return rc;
}
