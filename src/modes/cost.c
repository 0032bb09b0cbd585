/* The cost model (docs/AUTO.md has the formulas and their assumptions). Notation: lay(x, l, c) is l layers
 * of side x over c positions, l * (fixed + c * pos); up(b), down(b) the serialization of b bytes; frames are
 * counted with their headers, as the transport counts them. hat's and pd's parts are the models those modes
 * already choose their own settings with (spec.h, pdplan.h), fed with the probe instead of their own. */
#include "modes/cost.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/err.h"
#include "modes/spec.h"

#define DRAFT_MAX 8 /* --draft-max's default: the k hat's auto may pick */

const char *const cost_mode_name[] = {"device", "cloud", "split", "ee", "pd", "hat"};
_Static_assert(COST_HAT + 1 == AUTOSTATE_MODES, "the state keeps a time correction per cost mode");

static void set_total(const cost_inputs *in, cost_cand *c) {
    c->total_ms = c->ttft_ms + (in->n_tokens > 1 ? (in->n_tokens - 1) * c->tbt_ms : 0);
}

/* l layers in one forward call over c positions */
static double lay(const probe_compute *x, int l, double c) {
    return x->call_ms + l * (x->layer_fixed_ms + c * x->layer_pos_ms);
}
static double up(const cost_inputs *in, double b) { return b * in->net.up_ms_per_byte; }
static double down(const cost_inputs *in, double b) { return b * in->net.down_ms_per_byte; }
static double tok_frame(int n) { return FRAME_HEADER_SIZE + FRAME_TOKENS_FIXED + 4.0 * n; }
static double rows_frame(const cost_inputs *in, double n) { return FRAME_HEADER_SIZE + FRAME_ROWS_FIXED + n * in->row_bytes; }
#define REQ_FRAME (FRAME_HEADER_SIZE + FRAME_REQUEST_SIZE)

static void predict_device(const cost_inputs *in, cost_cand *c) {
    int L = in->dev.n_layers;
    c->ttft_ms = lay(&in->dev, L, in->n_prompt) + in->dev.head_ms;
    c->tbt_ms = lay(&in->dev, L, 1) + in->dev.head_ms;
}

static void predict_cloud(const cost_inputs *in, cost_cand *c) {
    int L = in->cloud.n_layers, P = in->n_prompt, N = in->n_tokens;
    double first = lay(&in->cloud, L, P) + in->cloud.head_ms, step = lay(&in->cloud, L, 1) + in->cloud.head_ms;
    c->bytes_up = tok_frame(P) + REQ_FRAME;
    c->bytes_down = N * tok_frame(1) + tok_frame(0);
    c->ttft_ms = up(in, c->bytes_up) + in->net.rtt_ms + first + down(in, tok_frame(1));
    /* the cloud streams: the slower of its step and the downlink sets the pace */
    c->tbt_ms = fmax(step, down(in, tok_frame(1)));
    c->cloud_ms = first + (N - 1) * step;
}

static void predict_split(const cost_inputs *in, cost_cand *c) {
    int L = in->dev.n_layers, A = c->split, P = in->n_prompt, N = in->n_tokens;
    double cfirst = lay(&in->cloud, L - A, P) + in->cloud.head_ms, cstep = lay(&in->cloud, L - A, 1) + in->cloud.head_ms;
    c->ttft_ms = lay(&in->dev, A, P) + up(in, rows_frame(in, P) + REQ_FRAME) + in->net.rtt_ms + cfirst +
                 down(in, tok_frame(1));
    c->tbt_ms = lay(&in->dev, A, 1) + up(in, rows_frame(in, 1) + REQ_FRAME) + in->net.rtt_ms + cstep +
                down(in, tok_frame(1));
    c->cloud_ms = cfirst + (N - 1) * cstep;
    c->bytes_up = rows_frame(in, P) + REQ_FRAME + (N - 1) * (rows_frame(in, 1) + REQ_FRAME);
    c->bytes_down = N * tok_frame(1);
}

/* ee: every token runs [0,E1] and the first exit; a share 1 - r1 goes on through (E1,E2] and the second
 * exit; a share q = 1 - r1 - r2 asks the cloud, whose rows went up in the background as they were made, so
 * a request waits for the round trip and the cloud's (E2,L) over the 1/q rows since the last one. */
static void predict_ee(const cost_inputs *in, cost_cand *c) {
    int L = in->dev.n_layers, P = in->n_prompt, N = in->n_tokens, Lc = L - c->e2 - 1;
    double r1 = c->exit1_rate, q = 1 - c->exit1_rate - c->exit2_rate;
    if (q < 0) q = 0;
    const probe_compute *d = &in->dev, *x = &in->cloud;
    double ask1 = up(in, REQ_FRAME) + in->net.rtt_ms + down(in, tok_frame(1));
    double dev_first = lay(d, c->e1 + 1, P) + d->head_ms + (1 - r1) * (lay(d, c->e2 - c->e1, P) + d->head_ms);
    c->ttft_ms = dev_first + q * (up(in, rows_frame(in, P)) + ask1 + lay(x, Lc, P) + x->head_ms);
    double dev_step = lay(d, c->e1 + 1, 1) + d->head_ms + (1 - r1) * (lay(d, c->e2 - c->e1, 1) + d->head_ms);
    c->tbt_ms = dev_step + (q > 0 ? q * (ask1 + lay(x, Lc, 1 / q) + x->head_ms) : 0);
    if (q > 0) c->tbt_ms = fmax(c->tbt_ms, up(in, rows_frame(in, 1))); /* the uplink carries a row a token */
    c->cloud_ms = q > 0 ? q * N * (x->call_ms + Lc * x->layer_fixed_ms + x->head_ms) + (P + N - 1) * Lc * x->layer_pos_ms : 0;
    c->bytes_up = rows_frame(in, P) + (N - 1) * rows_frame(in, 1) + q * N * REQ_FRAME;
    c->bytes_down = q * N * tok_frame(1);
}

/* hat: spec.h's round and prefill models (the ones hat's own --draft auto and --chunk auto use) with the
 * probe's figures in place of hat_probe's. */
static void predict_hat(const cost_inputs *in, cost_cand *c) {
    int L = in->dev.n_layers, A = c->input_layers, M = c->output_layers, mid = L - A - M, P = in->n_prompt,
        N = in->n_tokens;
    const probe_compute *d = &in->dev, *x = &in->cloud;
    spec_round_costs rc = {
        .draft_ms = lay(d, A, 1) + lay(d, M, 1) + d->head_ms,
        .in_ms = lay(d, A, 1),
        .ver0_ms = d->call_ms + M * d->layer_fixed_ms,
        .ver1_ms = M * d->layer_pos_ms + d->head_ms,
        .wait0_ms = in->net.rtt_ms + up(in, rows_frame(in, 0) + REQ_FRAME) + down(in, rows_frame(in, 0)) +
                    x->call_ms + mid * x->layer_fixed_ms,
        .wait1_ms = up(in, in->row_bytes) + down(in, in->row_bytes) + mid * x->layer_pos_ms,
    };
    spec_prefill_costs pc = {
        .in0_ms = d->call_ms + A * d->layer_fixed_ms, .in1_ms = A * d->layer_pos_ms,
        .out0_ms = d->call_ms + M * d->layer_fixed_ms, .out1_ms = M * d->layer_pos_ms,
        .head_ms = d->head_ms,
        .cloud0_ms = x->call_ms + mid * x->layer_fixed_ms, .cloud1_ms = mid * x->layer_pos_ms,
        .up_row_ms = up(in, in->row_bytes), .down_row_ms = down(in, in->row_bytes),
        .rtt_ms = in->net.rtt_ms + up(in, rows_frame(in, 0) + REQ_FRAME) + down(in, rows_frame(in, 0)),
    };
    c->draft = spec_pick_draft(&rc, c->alpha, DRAFT_MAX);
    c->chunk = P > 0 ? spec_pick_chunk(&pc, P) : 1;
    double per_round = spec_expected_tokens(c->alpha, c->draft);
    c->ttft_ms = P > 0 ? spec_prefill_ms(&pc, P, c->chunk) : rc.in_ms + rc.ver0_ms + rc.ver1_ms;
    c->tbt_ms = spec_round_ms(&rc, c->draft) / per_round;
    double rounds = N > 1 ? (N - 1) / per_round : 0;
    int chunks = P > 0 ? (P + c->chunk - 1) / c->chunk : 0;
    c->cloud_ms = lay(x, mid, P) + rounds * lay(x, mid, c->draft + 1);
    c->bytes_up = chunks * (rows_frame(in, 0) + REQ_FRAME) + P * in->row_bytes + rounds * (rows_frame(in, c->draft + 1) + REQ_FRAME);
    c->bytes_down = chunks * rows_frame(in, 0) + P * in->row_bytes + rounds * rows_frame(in, c->draft + 1);
}

/* pd: pdplan_auto's own model (docs/PD.md), the cloud's side from the probe rather than assumed. */
static int predict_pd(const cost_inputs *in, cost_cand *c, char *err, size_t errlen) {
    int L = in->dev.n_layers, P = in->n_prompt, N = in->n_tokens;
    pd_costs pc;
    pdplan_from_probe(&in->dev, &pc);
    double sent = FRAME_HEADER_SIZE + FRAME_TOKENS_FIXED + 4.0 * P + REQ_FRAME;
    pdplan_cloud_costs(&pc, in->net.rtt_ms + up(in, sent), down(in, tok_frame(1)),
                       in->cloud.call_ms + L * in->cloud.layer_fixed_ms + in->cloud.head_ms, L * in->cloud.layer_pos_ms, P);
    pd_forecast fc;
    char note[256];
    int rc = pdplan_auto(&pc, P, N, 0, 0, &c->plan, &fc, note, sizeof note, err, errlen);
    if (rc) return rc;
    int H = !c->plan.cloud_tokens ? 0 : fc.handover_at >= 0 ? fc.handover_at : N;
    c->ttft_ms = fc.ttft_ms;
    c->tbt_ms = c->plan.tpot_ms;
    c->cloud_ms = fc.cloud_busy_ms;
    c->bytes_up = H ? sent : 0;
    c->bytes_down = H * tok_frame(1);
    return 0;
}

int cost_predict(const cost_inputs *in, cost_cand *c, char *err, size_t errlen) {
    int L = in->dev.n_layers;
    c->ttft_ms = c->tbt_ms = c->cloud_ms = c->bytes_up = c->bytes_down = 0;
    c->ttft_scale = c->tbt_scale = 1;
    c->is_private = c->mode == COST_DEVICE || c->mode == COST_HAT;
    c->lossless = c->mode != COST_EE || c->threshold >= 1;
    switch (c->mode) {
    case COST_DEVICE: predict_device(in, c); break;
    case COST_CLOUD: predict_cloud(in, c); break;
    case COST_SPLIT:
        if (c->split < 1 || c->split >= L) return err_set(err, errlen, DUET_EINVAL, "split %d is outside 1..%d", c->split, L - 1);
        predict_split(in, c);
        break;
    case COST_EE:
        if (c->e1 < 0 || c->e1 >= c->e2 || c->e2 > L - 2)
            return err_set(err, errlen, DUET_EINVAL, "exits %d,%d do not fit %d layers", c->e1, c->e2, L);
        predict_ee(in, c);
        break;
    case COST_HAT:
        if (c->input_layers < 1 || c->output_layers < 1 || c->input_layers + c->output_layers >= L)
            return err_set(err, errlen, DUET_EINVAL, "hat layers %d+%d do not fit %d layers", c->input_layers,
                           c->output_layers, L);
        predict_hat(in, c);
        break;
    case COST_PD: {
        int rc = predict_pd(in, c, err, errlen);
        if (rc) return rc;
        break;
    }
    default: return err_set(err, errlen, DUET_EINVAL, "unknown mode %d", c->mode);
    }
    set_total(in, c);
    return 0;
}

int cost_speed_class(const cost_inputs *in) {
    int L = in->dev.n_layers;
    return autostate_speed_class(lay(&in->dev, L, 1) + in->dev.head_ms, lay(&in->cloud, L, 1) + in->cloud.head_ms);
}

/* Predicts c and corrects it by what requests of its mode measured against their predictions at this speed */
static int add(const cost_inputs *in, const autostate *st, cost_cand *out, int n, int cap, cost_cand c) {
    char err[128];
    if (n >= cap || cost_predict(in, &c, err, sizeof err)) return n;
    if (st) {
        const autostate_time *t = &st->time[c.mode][in->speed];
        c.ttft_scale = t->ttft.scale, c.tbt_scale = t->tbt.scale;
        c.ttft_ms *= c.ttft_scale, c.tbt_ms *= c.tbt_scale;
        set_total(in, &c);
    }
    out[n] = c;
    return n + 1;
}

int cost_candidates(const cost_inputs *in, const autostate *st, int calibrated, cost_cand *out, int cap) {
    int L = in->dev.n_layers, n = 0;
    cost_cand base;
    memset(&base, 0, sizeof base);
    base.calibrated = calibrated;
    for (int m = COST_DEVICE; m <= COST_CLOUD; m++) {
        cost_cand c = base;
        c.mode = m;
        n = add(in, st, out, n, cap, c);
    }
    for (int a = 1; a < L; a++) {
        cost_cand c = base;
        c.mode = COST_SPLIT, c.split = a;
        n = add(in, st, out, n, cap, c);
    }
    if (L >= 3) {
        /* ee: duet run's default exits at the lossless threshold, then every setting st has measured */
        cost_cand c = base;
        c.mode = COST_EE, c.e1 = L / 2 - 1 > 0 ? L / 2 - 1 : 0;
        c.e2 = 3 * L / 4 - 1 > c.e1 ? 3 * L / 4 - 1 : c.e1 + 1;
        c.threshold = 1, c.rates = COST_RATES_NONE;
        n = add(in, st, out, n, cap, c);
        for (int i = 0; st && i < st->n_ee; i++) {
            const autostate_ee *e = &st->ee[i];
            if (e->calibrated != calibrated || e->threshold >= 1 || !e->tokens) continue;
            c = base;
            c.mode = COST_EE, c.e1 = e->e1, c.e2 = e->e2, c.threshold = e->threshold;
            c.exit1_rate = (double)e->exit1 / e->tokens, c.exit2_rate = (double)e->exit2 / e->tokens;
            c.rates = COST_RATES_MEASURED;
            n = add(in, st, out, n, cap, c);
        }
        /* hat: its default layers, then every pair st has measured */
        int A = L >= 8 ? L / 4 : 1;
        c = base;
        c.mode = COST_HAT, c.input_layers = A, c.output_layers = A;
        const autostate_hat *h = st ? autostate_find_hat(st, A, A, calibrated) : NULL;
        c.rates = h && h->drafted ? COST_RATES_MEASURED : COST_RATES_PRIOR;
        c.alpha = h && h->drafted ? (double)h->accepted / h->drafted : 0;
        n = add(in, st, out, n, cap, c);
        for (int i = 0; st && i < st->n_hat; i++) {
            h = &st->hat[i];
            if (h->calibrated != calibrated || !h->drafted || (h->input_layers == A && h->output_layers == A)) continue;
            c = base;
            c.mode = COST_HAT, c.input_layers = h->input_layers, c.output_layers = h->output_layers;
            c.alpha = (double)h->accepted / h->drafted, c.rates = COST_RATES_MEASURED;
            n = add(in, st, out, n, cap, c);
        }
    }
    cost_cand c = base;
    c.mode = COST_PD;
    return add(in, st, out, n, cap, c);
}

int cost_pick(cost_cand *c, int n, int objective, double budget, double margin, int allow_lossy, int have_cloud) {
    double fastest = INFINITY;
    for (int i = 0; i < n; i++) {
        c[i].eligible = 1;
        c[i].why[0] = 0;
        if (!have_cloud && c[i].mode != COST_DEVICE)
            snprintf(c[i].why, sizeof c[i].why, "no cloud");
        else if (!c[i].lossless && !allow_lossy)
            snprintf(c[i].why, sizeof c[i].why, "lossy (threshold < 1): needs --allow-lossy");
        else if (objective == COST_PRIVACY && !c[i].is_private)
            snprintf(c[i].why, sizeof c[i].why, "token ids reach the cloud");
        else if (!isfinite(c[i].total_ms))
            snprintf(c[i].why, sizeof c[i].why, "no finite prediction");
        c[i].eligible = !c[i].why[0];
        if (c[i].eligible && c[i].total_ms < fastest) fastest = c[i].total_ms;
    }
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (!c[i].eligible) continue;
        if (objective == COST_CLOUD_COST) {
            if (c[i].total_ms > budget * fastest) continue;
            if (best < 0 || c[i].cloud_ms < c[best].cloud_ms ||
                (c[i].cloud_ms == c[best].cloud_ms && c[i].total_ms < c[best].total_ms))
                best = i;
        } else if (best < 0 || c[i].total_ms < c[best].total_ms) {
            best = i;
        }
    }
    if (objective != COST_CLOUD_COST && best >= 0)
        for (int i = 0; i < n; i++)
            if (c[i].eligible && c[i].mode == COST_DEVICE && c[i].total_ms <= (1 + margin) * c[best].total_ms) return i;
    return best;
}

void cost_args(const cost_cand *c, char *buf, size_t cap) {
    switch (c->mode) {
    case COST_SPLIT: snprintf(buf, cap, "--mode split --split %d", c->split); break;
    case COST_EE: snprintf(buf, cap, "--mode ee --exits %d,%d --threshold %g", c->e1, c->e2, (double)c->threshold); break;
    case COST_HAT:
        snprintf(buf, cap, "--mode hat --input-layers %d --output-layers %d --draft auto --chunk %d", c->input_layers,
                 c->output_layers, c->chunk);
        break;
    case COST_PD:
        if (c->plan.handover == PD_NEVER) snprintf(buf, cap, "--mode pd --pd-plan never,chunk=%d --tpot %.3f", c->plan.chunk, c->plan.tpot_ms);
        else snprintf(buf, cap, "--mode pd --pd-plan caught-up,cloud=%d,chunk=%d --tpot %.3f", c->plan.cloud_tokens, c->plan.chunk, c->plan.tpot_ms);
        break;
    default: snprintf(buf, cap, "--mode %s", cost_mode_name[c->mode]);
    }
}
