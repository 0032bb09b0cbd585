/* HAT: the device runs embed + [0,A) and [B,L) + head (B = L-M), the cloud the middle [A,B).
 *
 * Prefill: the prompt goes up in chunks (UPLOAD h_A + REQUEST HIDDEN each, pipelined); between chunks the
 * device runs its output layers on every answer that has come back. Decode rounds: the device drafts k tokens
 * with input layers -> adapter -> output layers -> head, uploads the h_A of the last verified token and of
 * the k drafts (k+1 rows at the first unverified position, which rolls the cloud back), and runs its output
 * layers and head on the k+1 h_B rows that come back; it keeps the drafts the speculative-sampling rule
 * accepts plus one token of its own.
 *
 * Exactness: the output layers' KV cache holds only rows computed from the cloud's h_B for every verified
 * position. Drafting appends adapter-fed rows after them and the cache is truncated back to the verified length
 * before the cloud's rows of the same positions go in, so a drafted row never reaches a verified one: this is
 * the two caches of the issue (a drafting one, a verifying one) sharing their common verified prefix instead of
 * keeping it twice. Batched and one-position forwards are bit-identical (batch-invariant kernels), so with
 * greedy sampling and fp32 rows the output is device-only's, token for token. */
#include "modes/hat.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/err.h"

#define MAX_BATCH 512
#define PROBE_ROWS 16
#define EWMA 0.3          /* weight of the newest measurement in the running cost estimates */
#define ACCEPT_DECAY 0.9  /* per round: how fast old acceptance observations fade */
#define REPROBE_EVERY 8   /* at k = 0 (auto), every 8th round drafts one token to see whether acceptance is back */

hat_opts hat_opts_default(int n_layers) {
    int e = n_layers >= 8 ? n_layers / 4 : 1;
    return (hat_opts){.input_layers = e, .output_layers = e, .draft = HAT_AUTO, .draft_max = 8, .chunk = HAT_AUTO};
}

int hat_check(const duet_model *m, const hat_opts *o, char *err, size_t errlen) {
    const duet_config *c = duet_model_config(m);
    const duet_part *p = duet_model_part(m);
    int L = c->n_layers, A = o->input_layers, M = o->output_layers;
    if (A < 1 || M < 1 || A + M >= L)
        return err_set(err, errlen, DUET_EINVAL,
                       "hat needs --input-layers A >= 1, --output-layers M >= 1 and A + M < %d (this model has %d "
                       "layers; the cloud must keep at least one), not A=%d, M=%d",
                       L, L, A, M);
    if (o->draft < HAT_AUTO || (o->draft == HAT_AUTO && o->draft_max < 0) || o->chunk < HAT_AUTO)
        return err_set(err, errlen, DUET_EINVAL, "hat: bad draft length or chunk size");
    for (int l = 0; l < L; l++)
        if ((l < A || l >= L - M) && !duet_part_has_layer(p, l))
            return err_set(err, errlen, DUET_EINVAL, "hat needs layers [0,%d) and [%d,%d) on the device, not %d", A,
                           L - M, L, l);
    if (!p->embed || !p->head)
        return err_set(err, errlen, DUET_EINVAL, "hat needs the embedding and the head on the device");
    if (o->calib) {
        int rc = calib_check_model(o->calib, duet_model_fingerprint((duet_model *)m), L, c->dim, err, errlen);
        if (rc) {
            err_prefix(err, errlen, "the adapter");
            return rc;
        }
        if (!calib_find(o->calib, A, L - M))
            return err_set(err, errlen, DUET_EINVAL,
                           "the calibration has no adapter for --input-layers %d --output-layers %d (map %d:%d); run "
                           "duet calibrate --pairs %d:%d",
                           A, M, A, L - M, A, L - M);
    }
    return DUET_OK;
}

/* ---- the request's state ---- */

typedef struct hat {
    const duet_model *m;
    duet_pool *pool;
    remote *r;
    const hat_opts *o;
    const calib_map *adapter; /* NULL: identity */
    metrics *mt;
    int L, A, B, dim, vocab, kmax;
    duet_kv *kv_in, *kv_out;  /* layers [0,A); layers [B,L), verified positions only between rounds */
    duet_ctx *ctx;
    float *up;      /* [rows][dim] h_A to upload */
    float *down;    /* [rows][dim] h_B from the cloud */
    float *x;       /* [dim] a drafted position's row */
    float *logits;  /* [max(kmax+1, PROBE_ROWS)][vocab] */
    float *q;       /* [kmax][vocab] draft distributions (sampling with temperature) */
    float *p;       /* [vocab] target distribution */
    int *toks;      /* [kmax+1] the last verified token, then the drafts */
    spec sp;
    spec_round_costs rc;  /* running estimates for --draft auto */
    double acc_w, trials_w;
    int zero_rounds;
    int forced_accept;    /* replay: the accepted count of the round choose_k took from the trace */
} hat;

/* The adapter: h_A[dim] -> estimate of h_B (identity without a calibration). */
static void adapt(const calib_map *ad, const float *in, float *out, int dim) {
    if (ad) calib_apply(ad, in, out, 1);
    else memcpy(out, in, sizeof(float) * (size_t)dim);
}

static void ewma(double *est, double v) { *est = *est > 0 ? (1 - EWMA) * *est + EWMA * v : v; }

/* The cloud gave an answer the device cannot use: tell it why (one ERROR frame) and return the error; the
 * caller then closes the connection. */
static int refuse(hat *h, int code, char *err, size_t errlen) {
    frame_msg msg;
    frame_error_msg(&msg, h->r->session, code, err);
    transport_send(h->r->t, &msg, NULL, 0);
    transport_flush(h->r->t, 1000, NULL, 0);
    return code;
}

/* UPLOAD of up[n] at pos, then REQUEST HIDDEN for the same rows. */
static int ask(hat *h, int pos, int n, char *err, size_t errlen) {
    frame_msg msg = {.type = FRAME_UPLOAD, .session = h->r->session};
    msg.u.rows = (frame_rows){.pos0 = (uint32_t)pos, .n = (uint32_t)n, .dim = (uint32_t)h->dim,
                              .enc = (uint32_t)h->r->enc, .x = h->up};
    int rc = transport_send(h->r->t, &msg, err, errlen);
    if (rc) return rc;
    msg = (frame_msg){.type = FRAME_REQUEST, .session = h->r->session};
    msg.u.request = (frame_request){.pos = (uint32_t)pos, .count = (uint32_t)n, .kv_keep = FRAME_KEEP_ALL,
                                    .want = FRAME_WANT_HIDDEN, .enc = (uint8_t)h->r->enc};
    h->mt->cloud_requests++;
    return transport_send(h->r->t, &msg, err, errlen);
}

/* The HIDDEN answer for rows pos..pos+n-1 into down[n][dim]. timeout_ms 0 polls: TRANSPORT_TIMEOUT when
 * nothing has arrived. */
static int answer(hat *h, int timeout_ms, int pos, int n, char *err, size_t errlen) {
    frame_msg msg;
    remote *r = h->r;
    int rc = transport_expect(r->t, FRAME_HIDDEN, &msg, timeout_ms, err, errlen);
    if (rc == TRANSPORT_TIMEOUT) {
        if (timeout_ms == 0) return rc;
        return err_set(err, errlen, DUET_EIO, "the cloud sent no answer within %d ms", timeout_ms);
    }
    if (rc == TRANSPORT_CLOSED) return err_set(err, errlen, DUET_EIO, "the cloud closed the connection");
    if (rc) {
        err_prefix(err, errlen, "waiting for hidden states from the cloud");
        return rc;
    }
    const frame_rows *w = &msg.u.rows;
    if (w->dim != (uint32_t)h->dim) {
        err_set(err, errlen, FRAME_E_VALUE, "the cloud answered hidden states %u wide, this model's are %d wide",
                w->dim, h->dim);
        return refuse(h, FRAME_E_VALUE, err, errlen);
    }
    if (w->pos0 != (uint32_t)pos || w->n != (uint32_t)n) {
        err_set(err, errlen, FRAME_E_VALUE, "the cloud answered %u rows at position %u, asked %d at %d", w->n, w->pos0,
                n, pos);
        return refuse(h, FRAME_E_VALUE, err, errlen);
    }
    frame_rows_get(w, h->down);
    for (size_t i = 0; i < (size_t)n * h->dim; i++)
        if (!isfinite(h->down[i])) {
            err_set(err, errlen, FRAME_E_VALUE, "the cloud answered a hidden state that is not finite (row %zu)",
                    i / h->dim);
            return refuse(h, FRAME_E_VALUE, err, errlen);
        }
    h->mt->cloud_compute_ms += w->compute_us / 1e3;
    return DUET_OK;
}

static int deliver(hat *h, const mode_request *rq, mode_emit_fn emit, void *arg, int id, char *err, size_t errlen) {
    int rc = metrics_token(h->mt, id);
    if (rc) return err_set(err, errlen, rc, "out of memory");
    if (emit) emit(arg, id);
    return DUET_OK;
}

static int pick_token(hat *h, const float *logits) {
    if (spec_greedy(&h->sp)) return duet_argmax(logits, h->vocab);
    spec_probs(&h->sp, logits, h->p);
    return spec_draw(&h->sp, h->p);
}

/* ---- prefill: pipelined chunks ---- */

/* Output layers on the rows of the chunk at pos (n rows) that came back; the head on the prompt's last row. */
static int chunk_back(hat *h, int pos, int n, int n_prompt, char *err, size_t errlen) {
    double t0 = clock_now_ms();
    int rc = duet_forward(h->ctx, h->kv_out, h->B, h->L, h->down, n, pos, err, errlen);
    if (!rc && pos + n == n_prompt) rc = duet_head(h->ctx, h->down + (size_t)(n - 1) * h->dim, 1, h->logits, err, errlen);
    h->mt->device_compute_ms += remote_device_step(t0, h->r->slowdown);
    return rc;
}

static int prefill(hat *h, const mode_request *rq, int chunk, char *err, size_t errlen) {
    int n = rq->n_prompt, sent = 0, got = 0, rc;
    while (got < n) {
        if (sent < n) {
            int c = n - sent < chunk ? n - sent : chunk;
            double t0 = clock_now_ms();
            if ((rc = duet_embed(h->ctx, rq->prompt + sent, c, h->up, err, errlen)) ||
                (rc = duet_forward(h->ctx, h->kv_in, 0, h->A, h->up, c, sent, err, errlen)))
                return rc;
            h->mt->device_compute_ms += remote_device_step(t0, h->r->slowdown);
            if ((rc = ask(h, sent, c, err, errlen))) return rc;
            sent += c;
        }
        /* answers that are back now (all of them, waiting, once everything is sent) */
        while (got < sent) {
            int c = n - got < chunk ? n - got : chunk;
            rc = answer(h, sent < n ? 0 : h->r->timeout_ms, got, c, err, errlen);
            if (rc == TRANSPORT_TIMEOUT) break;
            if (rc || (rc = chunk_back(h, got, c, n, err, errlen))) return rc;
            got += c;
        }
    }
    return DUET_OK;
}

/* ---- decode: one round of k drafts ---- */

static int choose_k(hat *h, int remaining) {
    int k = h->o->draft;
    if (h->o->replay) {
        trace_next(h->o->replay, &k, &h->forced_accept);
    } else if (k == HAT_AUTO) {
        double alpha = (h->acc_w + 1) / (h->trials_w + 2); /* Laplace: 1/2 before anything is seen */
        k = spec_pick_draft(&h->rc, alpha, h->kmax);
        if (k > 0) h->zero_rounds = 0;
        else if (++h->zero_rounds % REPROBE_EVERY == 0) k = 1;
    }
    if (k > remaining - 1) k = remaining - 1;
    return k < 0 ? 0 : k;
}

/* Drafts toks[1..k] after toks[0] at position pos, leaving up[0..k] = h_A of toks[0..k]. */
static int draft(hat *h, int pos, int k, char *err, size_t errlen) {
    int rc;
    for (int j = 0; j <= k; j++) {
        float *hj = h->up + (size_t)j * h->dim;
        if ((rc = duet_embed(h->ctx, &h->toks[j], 1, hj, err, errlen)) ||
            (rc = duet_forward(h->ctx, h->kv_in, 0, h->A, hj, 1, pos + j, err, errlen)))
            return rc;
        if (j == k) break;
        adapt(h->adapter, hj, h->x, h->dim);
        if ((rc = duet_forward(h->ctx, h->kv_out, h->B, h->L, h->x, 1, pos + j, err, errlen)) ||
            (rc = duet_head(h->ctx, h->x, 1, h->logits, err, errlen)))
            return rc;
        if (spec_greedy(&h->sp)) {
            h->toks[j + 1] = duet_argmax(h->logits, h->vocab);
        } else {
            float *q = h->q + (size_t)j * h->vocab;
            spec_probs(&h->sp, h->logits, q);
            h->toks[j + 1] = spec_draw(&h->sp, q);
        }
    }
    duet_kv_truncate(h->kv_out, pos); /* the drafted rows go; the cloud's rows of the same positions come next */
    return DUET_OK;
}

/* Runs one round from the verified token toks[0] at pos; delivers the accepted drafts and one more token.
 * Returns the number of tokens delivered in *n_out and whether EOS ended the request in *ended. */
static int round_run(hat *h, const mode_request *rq, mode_emit_fn emit, void *arg, int pos, int k, int *n_out,
                     int *ended, char *err, size_t errlen) {
    int rc;
    double t0 = clock_now_ms();
    if ((rc = draft(h, pos, k, err, errlen))) return rc;
    double t_draft = remote_device_step(t0, h->r->slowdown);
    h->mt->device_compute_ms += t_draft;
    double t_send = clock_now_ms();
    if ((rc = ask(h, pos, k + 1, err, errlen)) || (rc = answer(h, h->r->timeout_ms, pos, k + 1, err, errlen)))
        return rc;
    double t_wait = clock_now_ms() - t_send;
    t0 = clock_now_ms();
    if ((rc = duet_forward(h->ctx, h->kv_out, h->B, h->L, h->down, k + 1, pos, err, errlen)) ||
        (rc = duet_head(h->ctx, h->down, k + 1, h->logits, err, errlen)))
        return rc;
    double t_ver = remote_device_step(t0, h->r->slowdown);
    h->mt->device_compute_ms += t_ver;

    /* logits row j is the cloud-verified prediction for position pos+j+1, where toks[j+1] was drafted */
    int a = 0, next = -1;
    for (; a < k; a++) {
        const float *lg = h->logits + (size_t)a * h->vocab;
        int d = h->toks[a + 1];
        if (spec_greedy(&h->sp)) {
            int t = duet_argmax(lg, h->vocab);
            if (t != d) {
                next = t;
                break;
            }
        } else {
            spec_probs(&h->sp, lg, h->p);
            if (!spec_verify(&h->sp, h->p, h->q + (size_t)a * h->vocab, d, &next)) break;
        }
    }
    if (a == k) next = pick_token(h, h->logits + (size_t)k * h->vocab);
    if (h->o->replay) { /* the trace's acceptance (capped when the tail of the request shortened k) */
        a = h->forced_accept < k ? h->forced_accept : k;
        next = pick_token(h, h->logits + (size_t)a * h->vocab);
    }
    if (h->o->record && (rc = trace_add(h->o->record, k, a, err, errlen))) return rc;

    h->mt->rounds++;
    h->mt->drafted += (uint64_t)k;
    h->mt->accepted += (uint64_t)a;
    if (k > 0) {
        h->acc_w = ACCEPT_DECAY * h->acc_w + a;
        h->trials_w = ACCEPT_DECAY * h->trials_w + a + (a < k);
        ewma(&h->rc.draft_ms, (t_draft - h->rc.in_ms) / k);
    }
    double w0 = t_wait - h->rc.wait1_ms * (k + 1), v0 = t_ver - h->rc.ver1_ms * (k + 1);
    ewma(&h->rc.wait0_ms, w0 > 0 ? w0 : 1e-3);
    ewma(&h->rc.ver0_ms, v0 > 0 ? v0 : 1e-3);

    /* rows of toks[0..a] are the true sequence's: keep them on both sides (the cloud forgets the rest when
     * the next upload starts at pos+a+1) */
    duet_kv_truncate(h->kv_in, pos + a + 1);
    duet_kv_truncate(h->kv_out, pos + a + 1);
    *n_out = 0;
    *ended = 0;
    for (int j = 1; j <= a + 1; j++) {
        int id = j <= a ? h->toks[j] : next;
        if ((rc = deliver(h, rq, emit, arg, id, err, errlen))) return rc;
        ++*n_out;
        if (id == rq->eos_id || h->mt->tokens == rq->max_tokens) {
            *ended = 1;
            break;
        }
    }
    h->toks[0] = next;
    return DUET_OK;
}

static void hat_free(hat *h) {
    free(h->up);
    free(h->down);
    free(h->x);
    free(h->logits);
    free(h->q);
    free(h->p);
    free(h->toks);
    spec_free(&h->sp);
    duet_ctx_free(h->ctx);
    duet_kv_free(h->kv_in);
    duet_kv_free(h->kv_out);
}

static int hat_init(hat *h, const duet_model *m, duet_pool *pool, remote *r, const hat_opts *o, int rows, int n_ctx,
                    const duet_sampling *s, metrics *mt, char *err, size_t errlen) {
    const duet_config *c = duet_model_config(m);
    memset(h, 0, sizeof *h);
    h->m = m;
    h->pool = pool;
    h->r = r;
    h->o = o;
    h->mt = mt;
    h->L = c->n_layers;
    h->A = o->input_layers;
    h->B = c->n_layers - o->output_layers;
    h->dim = c->dim;
    h->vocab = c->vocab_size;
    h->kmax = o->draft == HAT_AUTO ? o->draft_max : o->draft;
    if (o->replay && trace_max_a(o->replay) > h->kmax) h->kmax = trace_max_a(o->replay);
    h->adapter = o->calib ? calib_find(o->calib, h->A, h->B) : NULL;
    if (rows < h->kmax + 1) rows = h->kmax + 1;
    duet_part in = {.n_spans = 1, .span = {{0, h->A}}}, out = {.n_spans = 1, .span = {{h->B, h->L}}};
    int rc;
    if ((rc = spec_init(&h->sp, s, h->vocab, err, errlen))) return rc;
    if (!(h->kv_in = duet_kv_init(m, &in, n_ctx, err, errlen)) || !(h->kv_out = duet_kv_init(m, &out, n_ctx, err, errlen)) ||
        !(h->ctx = duet_ctx_init(m, rows < MAX_BATCH ? rows : MAX_BATCH, pool, err, errlen)))
        return DUET_ENOMEM;
    size_t d = (size_t)h->dim, v = (size_t)h->vocab, k1 = (size_t)(h->kmax > 1 ? h->kmax : 1) + 1; /* probe drafts 1 */
    h->up = malloc(sizeof(float) * (size_t)rows * d);
    h->down = malloc(sizeof(float) * (size_t)rows * d);
    h->x = malloc(sizeof(float) * d);
    h->logits = malloc(sizeof(float) * (k1 > PROBE_ROWS ? k1 : PROBE_ROWS) * v); /* hat_probe's heads too */
    h->q = spec_greedy(&h->sp) ? NULL : malloc(sizeof(float) * k1 * v);
    h->p = malloc(sizeof(float) * v);
    h->toks = malloc(sizeof(int) * k1);
    if (!h->up || !h->down || !h->x || !h->logits || (!spec_greedy(&h->sp) && !h->q) || !h->p || !h->toks)
        return err_set(err, errlen, DUET_ENOMEM, "hat: out of memory for %d rows", rows);
    return DUET_OK;
}

int mode_hat_run(const duet_model *m, duet_pool *pool, remote *r, const hat_opts *o, const hat_costs *costs,
                 const mode_request *rq, mode_emit_fn emit, void *arg, metrics *mt, char *err, size_t errlen) {
    int rc = hat_check(m, o, err, errlen);
    if (rc) return rc;
    const duet_config *c = duet_model_config(m);
    if (r->layer_a != o->input_layers || r->layer_b != c->n_layers - o->output_layers)
        return err_set(err, errlen, DUET_EINVAL, "hat: the session's cloud part is [%d,%d), the request needs [%d,%d)",
                       r->layer_a, r->layer_b, o->input_layers, c->n_layers - o->output_layers);
    if (rq->n_prompt < 1) return err_set(err, errlen, DUET_EINVAL, "the prompt is empty (add BOS)");
    mt->prompt_tokens = rq->n_prompt;
    if (rq->max_tokens < 1) { /* nothing to ask the cloud for */
        metrics_finish(mt);
        return DUET_OK;
    }
    int chunk = o->chunk == HAT_AUTO ? (costs && costs->measured ? spec_pick_chunk(&costs->prefill, rq->n_prompt)
                                                                 : rq->n_prompt)
                : o->chunk == 0 || o->chunk > rq->n_prompt ? rq->n_prompt
                                                            : o->chunk;
    mt->prefill_chunk = chunk;
    hat h;
    remote_begin(r);
    if ((rc = hat_init(&h, m, pool, r, o, chunk, rq->n_prompt + rq->max_tokens, &rq->sampling, mt, err, errlen)))
        goto out;
    if (costs && costs->measured) h.rc = costs->round;

    double t0 = clock_now_ms();
    if ((rc = prefill(&h, rq, chunk, err, errlen))) goto out;
    mt->prefill_ms = clock_now_ms() - t0;
    int id = pick_token(&h, h.logits);
    if ((rc = deliver(&h, rq, emit, arg, id, err, errlen))) goto out;
    h.toks[0] = id;
    int pos = rq->n_prompt, ended = id == rq->eos_id || rq->max_tokens == 1;
    while (!ended) {
        int k = choose_k(&h, rq->max_tokens - mt->tokens), n;
        if ((rc = round_run(&h, rq, emit, arg, pos, k, &n, &ended, err, errlen))) goto out;
        pos += n;
    }
    rc = DUET_OK;
out:
    remote_end(r, mt);
    metrics_finish(mt);
    hat_free(&h);
    return rc;
}

/* ---- measuring the costs ---- */

static double min2(double a, double b) { return a < b ? a : b; }
static double pos0(double x) { return x > 0 ? x : 0; }

/* One UPLOAD of n_up rows at 0 and REQUEST HIDDEN of the last n_down of them: wall and cloud ms. */
static int exchange(hat *h, int n_up, int n_down, double *wall, double *cloud, char *err, size_t errlen) {
    remote *r = h->r;
    frame_msg msg = {.type = FRAME_UPLOAD, .session = r->session};
    msg.u.rows = (frame_rows){.pos0 = 0, .n = (uint32_t)n_up, .dim = (uint32_t)h->dim, .enc = (uint32_t)r->enc,
                              .x = h->up};
    double t0 = clock_now_ms();
    int rc = transport_send(r->t, &msg, err, errlen);
    if (rc) return rc;
    msg = (frame_msg){.type = FRAME_REQUEST, .session = r->session};
    msg.u.request = (frame_request){.pos = (uint32_t)(n_up - n_down), .count = (uint32_t)n_down,
                                    .kv_keep = FRAME_KEEP_ALL, .want = FRAME_WANT_HIDDEN, .enc = (uint8_t)r->enc};
    if ((rc = transport_send(r->t, &msg, err, errlen))) return rc;
    metrics scratch;
    metrics_start(&scratch, "probe");
    h->mt = &scratch;
    rc = answer(h, r->timeout_ms, n_up - n_down, n_down, err, errlen);
    *wall = clock_now_ms() - t0;
    *cloud = scratch.cloud_compute_ms;
    return rc;
}

int hat_probe(const duet_model *m, duet_pool *pool, remote *r, const hat_opts *o, hat_costs *out, char *err,
              size_t errlen) {
    memset(out, 0, sizeof *out);
    int rc = hat_check(m, o, err, errlen);
    if (rc) return rc;
    duet_sampling greedy = {.temperature = 0, .top_p = 1};
    metrics scratch;
    metrics_start(&scratch, "probe");
    hat h;
    if ((rc = hat_init(&h, m, pool, r, o, PROBE_ROWS, PROBE_ROWS + 1, &greedy, &scratch, err, errlen))) goto done;
    memset(h.up, 0, sizeof(float) * PROBE_ROWS * (size_t)h.dim);
    memset(h.down, 0, sizeof(float) * PROBE_ROWS * (size_t)h.dim);
    double sd = r->slowdown > 1 ? r->slowdown : 1;
    double in[2] = {1e30, 1e30}, outl[2] = {1e30, 1e30}, hd[2] = {1e30, 1e30}, dr = 1e30; /* [1, PROBE_ROWS rows] */
    for (int rep = 0; rep < 3; rep++)
        for (int s = 0; s < 2; s++) {
            int n = s ? PROBE_ROWS : 1;
            duet_kv_truncate(h.kv_in, 0);
            duet_kv_truncate(h.kv_out, 0);
            double t0 = clock_now_ms();
            if ((rc = duet_forward(h.ctx, h.kv_in, 0, h.A, h.down, n, 0, err, errlen))) goto done;
            double t1 = clock_now_ms();
            if ((rc = duet_forward(h.ctx, h.kv_out, h.B, h.L, h.down, n, 0, err, errlen))) goto done;
            double t2 = clock_now_ms();
            if ((rc = duet_head(h.ctx, h.down, n, h.logits, err, errlen))) goto done;
            double t3 = clock_now_ms();
            in[s] = min2(in[s], (t1 - t0) * sd);
            outl[s] = min2(outl[s], (t2 - t1) * sd);
            hd[s] = min2(hd[s], (t3 - t2) * sd);
        }
    for (int rep = 0; rep < 3; rep++) {
        duet_kv_truncate(h.kv_in, 0);
        duet_kv_truncate(h.kv_out, 0);
        h.toks[0] = 0;
        double t0 = clock_now_ms();
        if ((rc = draft(&h, 0, 1, err, errlen))) goto done;
        dr = min2(dr, (clock_now_ms() - t0) * sd);
    }
    /* link and cloud: wall = rtt + cloud + rows * serialization, for (1 up, 1 down), (P, 1), (P, P) with P
     * rows as far as the session's context allows */
    int P = r->n_ctx < PROBE_ROWS ? r->n_ctx : PROBE_ROWS;
    double w[3] = {1e30, 1e30, 1e30}, cl[3] = {1e30, 1e30, 1e30};
    int nu[3] = {1, P, P}, nd[3] = {1, 1, P};
    for (int rep = 0; rep < 2; rep++)
        for (int i = 0; i < (P > 1 ? 3 : 1); i++) {
            double wall, cloud;
            if ((rc = exchange(&h, nu[i], nd[i], &wall, &cloud, err, errlen))) {
                err_prefix(err, errlen, "measuring the link");
                goto done;
            }
            w[i] = min2(w[i], wall);
            cl[i] = min2(cl[i], cloud);
        }
    spec_prefill_costs *p = &out->prefill;
    p->in1_ms = pos0((in[1] - in[0]) / (PROBE_ROWS - 1));
    p->in0_ms = pos0(in[0] - p->in1_ms);
    p->out1_ms = pos0((outl[1] - outl[0]) / (PROBE_ROWS - 1));
    p->out0_ms = pos0(outl[0] - p->out1_ms);
    p->head_ms = hd[0]; /* a prefill runs the head on its last row only; a verification on every row */
    double head1 = pos0((hd[1] - hd[0]) / (PROBE_ROWS - 1));
    if (P > 1) { /* else the slopes stay 0: a one-position session has nothing to pipeline */
        p->cloud1_ms = pos0((cl[1] - cl[0]) / (P - 1));
        p->up_row_ms = pos0(((w[1] - cl[1]) - (w[0] - cl[0])) / (P - 1));
        p->down_row_ms = pos0(((w[2] - cl[2]) - (w[1] - cl[1])) / (P - 1));
    }
    p->cloud0_ms = pos0(cl[0] - p->cloud1_ms);
    p->rtt_ms = pos0(w[0] - cl[0] - p->up_row_ms - p->down_row_ms);
    spec_round_costs *q = &out->round;
    q->in_ms = in[0];
    q->draft_ms = pos0(dr - in[0]); /* dr drafted one token and ran the input layers of the next */
    q->ver1_ms = p->out1_ms + head1;
    q->ver0_ms = pos0(p->out0_ms + hd[0] - head1);
    q->wait1_ms = p->cloud1_ms + p->up_row_ms + p->down_row_ms;
    q->wait0_ms = p->rtt_ms + p->cloud0_ms;
    out->measured = 1;
    rc = DUET_OK;
done:
    hat_free(&h);
    metrics_free(&scratch);
    return rc;
}
