/* ee: CE-CoLLM (seed 003). The device holds layers [0,E2], the embedding and the head, with early exits after
 * layers E1 and E2; the cloud holds (E2,L) and the head.
 *
 * Each step runs the new position through [0,E1]. If the head (through the exit's translator, when one is
 * loaded) is confident enough at E1, that token is emitted and the position's layers (E1,E2] wait: they run
 * batched with the next position that needs them, so the device's KV cache stays complete and nothing is
 * dropped. Otherwise the waiting positions and the new one run through (E1,E2] together, their h_{E2+1} rows
 * go up at once (the sender thread paces them over the link while the device goes on), and the exit at E2
 * decides; below the threshold there too, a REQUEST carrying only the position asks the cloud, which runs
 * every uploaded row it has not run yet in one batch and answers one token.
 *
 * The device keeps every row it uploaded. When the cloud is unreachable, closes, stalls past the timeout or
 * answers nonsense, the step's token comes from the E2 exit (standalone), the position is recorded as
 * fallback_at, and the device reconnects with backoff; a new or restarted cloud gets the kept rows again
 * and serves requests from then on. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/err.h"
#include "modes/mode.h"

#define EE_MAX_BACKOFF_MS 30000
#define EE_REUPLOAD_ROWS 4096 /* rows per UPLOAD when bringing a new cloud up to date */

ee_opts ee_opts_default(void) {
    ee_opts o;
    memset(&o, 0, sizeof o);
    o.e1 = -1;
    o.e2 = -1;
    o.threshold = 0.8f;
    o.background_upload = true;
    o.reconnect_ms = 1000;
    o.remote = remote_opts_default();
    return o;
}

typedef struct ee_state {
    const ee_opts *o;
    const duet_config *c;
    duet_model *m;
    duet_ctx *ctx;
    duet_kv *kv;
    duet_sampler *smp;
    metrics *mt;
    remote r;
    bool connected;
    int n_ctx;
    float *h;        /* [n_ctx][dim] work rows */
    float *deferred; /* [n_ctx][dim] h_{E1+1} of positions def0..pos-1, still waiting for (E1,E2] */
    int def0, n_def;
    float *kept;     /* [n_ctx][dim] h_{E2+1} of positions 0..n_kept-1: what the cloud has been (or will be) sent */
    int n_kept, n_sent; /* rows computed through E2; rows sent to the current cloud */
    float *x, *last, *logits; /* [dim] translator output, [dim] h_{E2+1} of the newest row, [vocab] */
    double next_try_ms; /* when to try reconnecting; < 0: never */
    int backoff_ms;
    int forced;         /* replay: this step's enum trace_where; -1: the exits decide */
} ee_state;

static void ee_log(const ee_state *s, const char *fmt, const char *detail) {
    if (!s->o->log) return;
    char msg[640];
    snprintf(msg, sizeof msg, fmt, detail);
    s->o->log(s->o->log_arg, msg);
}

/* The head's view of an exit: logits of h (through the exit's translator when there is one), and the top
 * softmax probability at temperature 1. */
static int exit_logits(ee_state *s, int exit_layer, const float *h, float *conf, char *err, size_t errlen) {
    const calib_map *t = s->o->calib ? calib_find(s->o->calib, exit_layer + 1, s->c->n_layers) : NULL;
    if (t) {
        calib_apply(t, h, s->x, 1);
        h = s->x;
    }
    int rc = duet_head(s->ctx, h, 1, s->logits, err, errlen);
    if (rc) return rc;
    int n = s->c->vocab_size, top = duet_argmax(s->logits, n);
    double z = 0, mx = s->logits[top];
    for (int i = 0; i < n; i++) z += exp((double)s->logits[i] - mx);
    *conf = (float)(1 / z);
    return DUET_OK;
}

static bool confident(const ee_state *s, float conf) { return s->o->threshold < 1 && conf >= s->o->threshold; }

/* Whether the exit (TRACE_E1 or TRACE_E2) emits this step's token: the trace's decision when replaying. */
static bool exits_here(const ee_state *s, int where, float conf) {
    if (s->forced < 0) return confident(s, conf);
    return where == TRACE_E1 ? s->forced == TRACE_E1 : s->forced != TRACE_CLOUD;
}

/* Sends kept rows [n_sent, n_kept) to the cloud in UPLOAD frames (the sender thread paces them). */
static int upload_pending(ee_state *s, char *err, size_t errlen) {
    while (s->n_sent < s->n_kept) {
        int n = s->n_kept - s->n_sent < EE_REUPLOAD_ROWS ? s->n_kept - s->n_sent : EE_REUPLOAD_ROWS;
        frame_msg msg = {.type = FRAME_UPLOAD, .session = s->r.session};
        msg.u.rows = (frame_rows){.pos0 = (uint32_t)s->n_sent, .n = (uint32_t)n, .dim = (uint32_t)s->c->dim,
                                  .enc = (uint32_t)s->r.enc, .x = s->kept + (size_t)s->n_sent * s->c->dim};
        int rc = transport_send(s->r.t, &msg, err, errlen);
        if (rc) return rc;
        s->n_sent += n;
    }
    return DUET_OK;
}

/* Counts what the cloud's transport saw and drops the connection. */
static void drop_cloud(ee_state *s) {
    if (!s->connected) return;
    remote_end(&s->r, s->mt);
    remote_free(&s->r);
    s->connected = false;
}

/* The cloud is gone (or useless): drop it and plan the next attempt. */
static void lose_cloud(ee_state *s, const char *why, int token_index) {
    drop_cloud(s);
    if (s->mt->fallback_at < 0) s->mt->fallback_at = token_index;
    ee_log(s, "lost the cloud (%s): going on standalone from the E2 exit", why);
    if (s->o->reconnect_ms > 0) {
        s->next_try_ms = clock_now_ms() + s->backoff_ms;
        s->backoff_ms = s->backoff_ms * 2 < EE_MAX_BACKOFF_MS ? s->backoff_ms * 2 : EE_MAX_BACKOFF_MS;
    } else {
        s->next_try_ms = -1;
    }
}

/* Connects (again) and brings the cloud up to date with every kept row. 0 connected; else a message. */
static int connect_cloud(ee_state *s, char *err, size_t errlen) {
    int rc = remote_open(&s->r, s->m, &s->o->remote, FRAME_MODE_EE, s->o->e2 + 1, s->n_ctx, &s->o->sampling, err,
                         errlen);
    if (rc) {
        remote_free(&s->r);
        return rc;
    }
    remote_begin(&s->r);
    s->connected = true;
    s->n_sent = 0;
    if (!s->o->background_upload) return DUET_OK;
    if ((rc = upload_pending(s, err, errlen))) drop_cloud(s);
    return rc;
}

static void maybe_reconnect(ee_state *s, int token_index) {
    if (s->connected || s->o->standalone || s->next_try_ms < 0 || clock_now_ms() < s->next_try_ms) return;
    char why[256];
    if (connect_cloud(s, why, sizeof why)) {
        lose_cloud(s, why, token_index);
        return;
    }
    s->mt->reconnects++;
    s->backoff_ms = s->o->reconnect_ms;
    ee_log(s, "reconnected to the cloud%s", "");
}

/* Asks the cloud for the token at position pos (rows up to pos are sent or queued). 0 with *id; > 0 the
 * cloud failed (closed: 1, stalled: 2, nonsense: 3) with the reason in why; < 0 never. */
static int ask_cloud(ee_state *s, int pos, int *id, char *why, size_t whylen) {
    int rc = s->o->background_upload ? DUET_OK : upload_pending(s, why, whylen);
    frame_msg msg = {.type = FRAME_REQUEST, .session = s->r.session};
    msg.u.request = (frame_request){.pos = (uint32_t)pos, .count = 1, .kv_keep = FRAME_KEEP_ALL,
                                    .want = FRAME_WANT_TOKENS, .fields = FRAME_TOK_CONF};
    if (!rc) rc = transport_send(s->r.t, &msg, why, whylen);
    if (rc) return 1;
    rc = transport_expect(s->r.t, FRAME_TOKENS, &msg, s->r.timeout_ms, why, whylen);
    if (rc == TRANSPORT_TIMEOUT) {
        snprintf(why, whylen, "no answer within %d ms", s->r.timeout_ms);
        return 2;
    }
    if (rc == TRANSPORT_CLOSED) snprintf(why, whylen, "the cloud closed the connection");
    if (rc) return 1;
    s->mt->cloud_compute_ms += msg.u.tokens.compute_us / 1e3;
    const frame_tokens *tk = &msg.u.tokens;
    float conf = 0;
    if (tk->n == 1) frame_tokens_get(tk, id, (tk->fields & FRAME_TOK_CONF) ? &conf : NULL, NULL);
    if (tk->n != 1 || tk->pos0 != (uint32_t)pos || *id < 0 || *id >= s->c->vocab_size || !(conf >= 0 && conf <= 1)) {
        snprintf(why, whylen, "the cloud answered %u tokens at position %u (id %d, confidence %g), asked 1 at %d", tk->n,
                 tk->pos0, tk->n == 1 ? *id : -1, conf, pos);
        return 3;
    }
    return 0;
}

/* Runs the waiting positions and rows h[n] (positions pos..pos+n-1, already through [0,E1]) through (E1,E2],
 * and keeps their h_{E2+1} (sent by the caller). The last row's h_{E2+1} ends in s->last. */
static int finish_layers(ee_state *s, const float *h, int n, int pos, char *err, size_t errlen) {
    size_t d = (size_t)s->c->dim;
    float *rows = s->deferred; /* waiting rows first, then the new ones: one batch */
    memcpy(rows + (size_t)s->n_def * d, h, sizeof(float) * (size_t)n * d);
    int p0 = s->n_def ? s->def0 : pos, total = s->n_def + n;
    int rc = duet_forward(s->ctx, s->kv, s->o->e1 + 1, s->o->e2 + 1, rows, total, p0, err, errlen);
    if (rc) return rc;
    memcpy(s->kept + (size_t)p0 * d, rows, sizeof(float) * (size_t)total * d);
    s->n_kept = p0 + total;
    s->n_def = 0;
    memcpy(s->last, rows + (size_t)(total - 1) * d, sizeof(float) * d);
    return DUET_OK;
}

/* One step: rows for ids[n] at positions pos.. enter the model; *id gets the next token. */
static int ee_step(ee_state *s, const int *ids, int n, int pos, int token_index, int *id, char *err, size_t errlen) {
    size_t d = (size_t)s->c->dim;
    const ee_opts *o = s->o;
    float conf;
    double t0 = clock_now_ms();
    int rc = duet_embed(s->ctx, ids, n, s->h, err, errlen);
    if (!rc) rc = duet_forward(s->ctx, s->kv, 0, o->e1 + 1, s->h, n, pos, err, errlen);
    if (!rc) rc = exit_logits(s, o->e1, s->h + (size_t)(n - 1) * d, &conf, err, errlen);
    if (rc) return rc;
    if (exits_here(s, TRACE_E1, conf)) {
        if (!s->n_def) s->def0 = pos;
        memcpy(s->deferred + (size_t)s->n_def * d, s->h, sizeof(float) * (size_t)n * d);
        s->n_def += n;
        s->mt->device_compute_ms += remote_device_step(t0, s->o->remote.device_slowdown);
        s->mt->exit_tokens[0]++;
        *id = duet_sample(s->smp, s->logits);
        return DUET_OK;
    }
    if ((rc = finish_layers(s, s->h, n, pos, err, errlen))) return rc;
    s->mt->device_compute_ms += remote_device_step(t0, s->o->remote.device_slowdown);
    char why[512];
    if (s->connected && o->background_upload && upload_pending(s, why, sizeof why)) lose_cloud(s, why, token_index);
    t0 = clock_now_ms();
    rc = exit_logits(s, o->e2, s->last, &conf, err, errlen);
    s->mt->device_compute_ms += remote_device_step(t0, s->o->remote.device_slowdown);
    if (rc) return rc;
    if (exits_here(s, TRACE_E2, conf) || !s->connected) {
        s->mt->exit_tokens[1]++;
        *id = duet_sample(s->smp, s->logits);
        return DUET_OK;
    }
    int last = s->n_kept - 1, got = ask_cloud(s, last, id, why, sizeof why);
    if (got == 1 && o->reconnect_ms > 0) {
        /* Closed or reset: a restarted cloud may already be listening, so try once at once. */
        drop_cloud(s);
        char why2[256];
        if (!connect_cloud(s, why2, sizeof why2)) {
            s->mt->reconnects++;
            ee_log(s, "the cloud connection dropped; reconnected and re-sent the kept rows%s", "");
            got = ask_cloud(s, last, id, why, sizeof why);
        }
    }
    if (!got) {
        s->mt->cloud_requests++; /* answered ones: a request lost with its cloud is answered by the E2 exit */
    } else {
        lose_cloud(s, why, token_index);
        s->mt->exit_tokens[1]++;
        *id = duet_sample(s->smp, s->logits); /* the E2 exit's logits are still in s->logits */
    }
    return DUET_OK;
}

int mode_ee_run(duet_model *m, duet_pool *pool, const ee_opts *o, const mode_request *rq, mode_emit_fn emit,
                void *arg, metrics *mt, char *err, size_t errlen) {
    const duet_config *c = duet_model_config(m);
    const duet_part *part = duet_model_part(m);
    int L = c->n_layers;
    if (o->e1 < 0 || o->e2 > L - 2 || o->e1 >= o->e2)
        return err_set(err, errlen, DUET_EINVAL, "exits %d,%d: need 0 <= E1 < E2 <= %d (the last layer has no exit)",
                       o->e1, o->e2, L - 2);
    if (!(o->threshold >= 0 && o->threshold <= 1))
        return err_set(err, errlen, DUET_EINVAL, "threshold %g is outside [0,1]", o->threshold);
    for (int l = 0; l <= o->e2; l++)
        if (!duet_part_has_layer(part, l))
            return err_set(err, errlen, DUET_EINVAL, "ee mode needs layers [0,%d] on the device, not %d", o->e2, l);
    if (!part->embed || !part->head) return err_set(err, errlen, DUET_EINVAL, "ee mode needs the embedding and the head");
    if (rq->n_prompt < 1) return err_set(err, errlen, DUET_EINVAL, "the prompt is empty (add BOS)");
    if (o->calib) {
        int rc = calib_check_model(o->calib, duet_model_fingerprint(m), L, c->dim, err, errlen);
        if (rc) return rc;
    }

    ee_state s = {.o = o, .c = c, .m = m, .mt = mt, .backoff_ms = o->reconnect_ms, .next_try_ms = -1};
    s.n_ctx = rq->n_prompt + rq->max_tokens;
    size_t d = (size_t)c->dim, rows = (size_t)s.n_ctx * d;
    duet_part dev = {.n_spans = 1, .span = {{0, o->e2 + 1}}};
    int rc = DUET_ENOMEM;
    s.kv = o->kv ? o->kv : duet_kv_init(m, &dev, s.n_ctx, err, errlen);
    s.ctx = duet_ctx_init(m, rq->n_prompt < 512 ? rq->n_prompt + 1 : 512, pool, err, errlen);
    s.smp = duet_sampler_init(&o->sampling, c->vocab_size, err, errlen);
    s.h = malloc(sizeof(float) * rows);
    s.deferred = malloc(sizeof(float) * rows);
    s.kept = malloc(sizeof(float) * rows);
    s.x = malloc(sizeof(float) * d);
    s.last = malloc(sizeof(float) * d);
    s.logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    if (!s.kv || !s.ctx || !s.smp) goto out;
    if (!s.h || !s.deferred || !s.kept || !s.x || !s.last || !s.logits) {
        err_set(err, errlen, DUET_ENOMEM, "out of memory for a %d-position request", s.n_ctx);
        goto out;
    }
    if (duet_kv_ctx(s.kv) < s.n_ctx) {
        rc = err_set(err, errlen, DUET_EINVAL, "the KV cache holds %d positions, the request needs %d",
                     duet_kv_ctx(s.kv), s.n_ctx);
        goto out;
    }
    mt->prompt_tokens = rq->n_prompt;
    mt->n_exit_points = 2;
    mt->exit_layer[0] = o->e1;
    mt->exit_layer[1] = o->e2;

    if (!o->standalone) {
        char why[512];
        if (connect_cloud(&s, why, sizeof why)) lose_cloud(&s, why, 0);
    }
    /* As in every remote mode, the connection and the session are set up before the request is accepted. */
    mt->t_start = clock_now_ms();
    int pos = 0, id;
    const int *in = rq->prompt;
    int n_in = rq->n_prompt;
    for (int i = 0; i < rq->max_tokens; i++) {
        maybe_reconnect(&s, i);
        int b, where;
        s.forced = -1;
        if (o->replay) trace_next(o->replay, &s.forced, &b);
        uint64_t at_e1 = mt->exit_tokens[0], at_e2 = mt->exit_tokens[1];
        if ((rc = ee_step(&s, in, n_in, pos, i, &id, err, errlen))) goto out;
        where = mt->exit_tokens[0] > at_e1 ? TRACE_E1 : mt->exit_tokens[1] > at_e2 ? TRACE_E2 : TRACE_CLOUD;
        if (o->record && (rc = trace_add(o->record, where, 0, err, errlen))) goto out;
        if (i == 0) mt->prefill_ms = clock_now_ms() - mt->t_start;
        if ((rc = metrics_token(mt, id))) {
            err_set(err, errlen, rc, "out of memory");
            goto out;
        }
        if (emit) emit(arg, id);
        if (id == rq->eos_id) break;
        pos += n_in;
        in = &id;
        n_in = 1;
        if (i + 1 == rq->max_tokens) break;
    }
    /* Positions still waiting at E1 get their layers now, so the KV cache is complete for what follows. */
    if (s.n_def) {
        double t0 = clock_now_ms();
        int n = s.n_def;
        memcpy(s.h, s.deferred, sizeof(float) * (size_t)n * d);
        s.n_def = 0; /* handed to finish_layers as new rows */
        if ((rc = finish_layers(&s, s.h, n, s.def0, err, errlen))) goto out;
        mt->device_compute_ms += remote_device_step(t0, o->remote.device_slowdown);
    }
    rc = DUET_OK;
out:
    metrics_finish(mt); /* the request ends with its last token; saying goodbye to the cloud is not part of it */
    if (s.connected) {
        remote_end(&s.r, mt);
        char cerr[256];
        if (rc == DUET_OK && remote_close(&s.r, cerr, sizeof cerr)) ee_log(&s, "closing the cloud session: %s", cerr);
        remote_free(&s.r);
    }
    free(s.h);
    free(s.deferred);
    free(s.kept);
    free(s.x);
    free(s.last);
    free(s.logits);
    duet_sampler_free(s.smp);
    duet_ctx_free(s.ctx);
    if (!o->kv) duet_kv_free(s.kv);
    return rc;
}
