/* auto mode's probing and bookkeeping; the model and the choice are cost.c's. */
#include "modes/auto.h"

#include <string.h>

#include "base/err.h"

static const char *const OBJECTIVES[] = {"latency", "cloud-cost", "privacy"};
static const char *const RATES[] = {"none", "prior", "measured"};

/* Opens a short split session on a cloud holding only the last layer and the head (cheap for a local
 * cloud), measures the link over it and asks the cloud for its compute on 1 and 32 rows. Every layer is
 * taken to cost what the last one does (a llama's layers have one shape); the one-row time is split between
 * the layer's fixed part and the head in the device's proportions. */
static int measure_cloud(duet_model *m, const auto_opts *o, const probe_compute *dev, probe_net *net,
                         probe_compute *cloud, char *err, size_t errlen) {
    const duet_config *cf = duet_model_config(m);
    int L = cf->n_layers;
    if (L < 2) return err_set(err, errlen, DUET_EUNSUPPORTED, "a one-layer model has no split to probe");
    duet_sampling greedy = {.temperature = 0, .top_p = 1};
    remote r;
    double one, batch;
    int rc = remote_open(&r, m, &o->remote, FRAME_MODE_SPLIT, L - 1, PROBE_BATCH, &greedy, err, errlen);
    if (!rc) rc = probe_link(&r, net, err, errlen);
    if (!rc) rc = probe_cloud(&r, cf->dim, &one, &batch, err, errlen);
    if (!rc) rc = remote_close(&r, err, errlen);
    remote_free(&r);
    if (rc) return rc;
    double pos = (batch - one) / (PROBE_BATCH - 1);
    if (pos < 0) pos = batch / PROBE_BATCH;
    /* one = call + fixed + pos + head: the fixed parts in the device's proportions */
    double rest = one - pos > 0 ? one - pos : 0, sum = dev->call_ms + dev->layer_fixed_ms + dev->head_ms;
    double f = sum > 0 ? dev->layer_fixed_ms / sum : 1, hd = sum > 0 ? dev->head_ms / sum : 0, c = sum > 0 ? dev->call_ms / sum : 0;
    *cloud = (probe_compute){L, rest * f, pos, rest * hd, rest * c};
    return DUET_OK;
}

int auto_decide(duet_model *m, duet_pool *pool, const auto_opts *o, int n_prompt, int n_tokens, auto_decision *d,
                char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    const duet_config *cf = duet_model_config(m);
    cost_inputs *in = &d->in;
    int rc = probe_device(m, pool, o->slowdown, &in->dev, err, errlen);
    if (rc) return rc;
    in->row_bytes = o->remote.enc == FRAME_ENC_F32 ? 4.0 * cf->dim : o->remote.enc == FRAME_ENC_I8 ? cf->dim + 4.0 : 2.0 * cf->dim;
    in->n_prompt = n_prompt;
    in->n_tokens = n_tokens;
    d->have_cloud = 1;
    if (!o->nominal_net && measure_cloud(m, o, &in->dev, &in->net, &in->cloud, d->cloud_err, sizeof d->cloud_err))
        d->have_cloud = 0; /* the predictions are still shown, from the nominal figures */
    else
        d->net_measured = !o->nominal_net;
    if (!d->net_measured) {
        /* this machine at full speed: exact when the cloud is local and the device's slowdown emulated */
        double s = o->slowdown > 1 ? o->slowdown : 1;
        probe_link_nominal(&o->remote.link, &in->net);
        in->cloud = in->dev;
        in->cloud.layer_fixed_ms /= s;
        in->cloud.layer_pos_ms /= s;
        in->cloud.head_ms /= s;
        in->cloud.call_ms /= s;
    }
    /* the speed class from the probes alone: the cloud's correction below must not move a device between classes */
    in->speed = d->speed = cost_speed_class(in);
    /* corrected by what earlier requests measured against their predictions */
    double k = o->state ? o->state->cloud.scale : 1;
    in->cloud.layer_fixed_ms *= k;
    in->cloud.layer_pos_ms *= k;
    in->cloud.head_ms *= k;
    in->cloud.call_ms *= k;
    d->n = cost_candidates(in, o->state, o->calibrated, d->cand, COST_MAX_CANDS);
    d->chosen = cost_pick(d->cand, d->n, o->objective, o->budget, o->margin, o->allow_lossy, d->have_cloud);
    return DUET_OK;
}

static double mbps(double ms_per_byte) { return ms_per_byte > 0 ? 8e-3 / ms_per_byte : 0; }

/* A string from a fixed alphabet (our own args and messages): no escaping needed beyond quotes. */
static void put_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++)
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s >= 0x20) fputc(*s, f);
    fputc('"', f);
}

void auto_print_json(const auto_decision *d, const auto_opts *o, const char *link_spec, FILE *f) {
    const cost_inputs *in = &d->in;
    char args[256] = "";
    if (d->chosen >= 0) cost_args(&d->cand[d->chosen], args, sizeof args);
    fprintf(f, "{\"auto\":{\"objective\":\"%s\",\"device_margin\":%g,\"chosen\":%d,\"chosen_mode\":",
            OBJECTIVES[o->objective], o->margin, d->chosen);
    put_str(f, d->chosen >= 0 ? cost_mode_name[d->cand[d->chosen].mode] : "");
    fputs(",\"chosen_args\":", f);
    put_str(f, args);
    fprintf(f, ",\"prompt_tokens\":%d,\"tokens\":%d,\"slowdown\":%g,\"link\":", in->n_prompt, in->n_tokens,
            o->slowdown > 1 ? o->slowdown : 1);
    put_str(f, link_spec);
    fprintf(f, ",\"have_cloud\":%s,\"speed_class\":%d", d->have_cloud ? "true" : "false", d->speed);
    if (!d->have_cloud) {
        fputs(",\"cloud_error\":", f);
        put_str(f, d->cloud_err);
    }
    fprintf(f, ",\"probe\":{\"source\":\"%s\",\"rtt_ms\":%.4f,\"up_mbps\":%.3f,\"down_mbps\":%.3f,"
               "\"device_layer_fixed_ms\":%.5f,\"device_layer_pos_ms\":%.5f,\"device_head_ms\":%.5f,\"device_call_ms\":%.5f,"
               "\"cloud_layer_fixed_ms\":%.5f,\"cloud_layer_pos_ms\":%.5f,\"cloud_head_ms\":%.5f,\"cloud_call_ms\":%.5f,"
               "\"cloud_source\":\"%s\","
               "\"cloud_scale\":%.4f}",
            d->net_measured ? "measured" : "nominal", in->net.rtt_ms, mbps(in->net.up_ms_per_byte),
            mbps(in->net.down_ms_per_byte), in->dev.layer_fixed_ms, in->dev.layer_pos_ms, in->dev.head_ms,
            in->dev.call_ms, in->cloud.layer_fixed_ms, in->cloud.layer_pos_ms, in->cloud.head_ms, in->cloud.call_ms,
            d->net_measured ? "measured" : "estimate", o->state ? o->state->cloud.scale : 1.0);
    fputs(",\"candidates\":[", f);
    for (int i = 0; i < d->n; i++) {
        const cost_cand *c = &d->cand[i];
        cost_args(c, args, sizeof args);
        fprintf(f, "%s{\"mode\":\"%s\",\"args\":", i ? "," : "", cost_mode_name[c->mode]);
        put_str(f, args);
        fprintf(f, ",\"ttft_ms\":%.4f,\"tbt_ms\":%.4f,\"total_ms\":%.4f,\"cloud_compute_ms\":%.4f,\"bytes_up\":%.0f,"
                   "\"bytes_down\":%.0f,\"private\":%s,\"lossless\":%s,\"eligible\":%s,\"why\":",
                c->ttft_ms, c->tbt_ms, c->total_ms, c->cloud_ms, c->bytes_up, c->bytes_down,
                c->is_private ? "true" : "false", c->lossless ? "true" : "false", c->eligible ? "true" : "false");
        put_str(f, c->why);
        fprintf(f, ",\"ttft_scale\":%.4f,\"tbt_scale\":%.4f", c->ttft_scale, c->tbt_scale);
        if (c->mode == COST_EE)
            fprintf(f, ",\"rates\":\"%s\",\"exit1_rate\":%.4f,\"exit2_rate\":%.4f", RATES[c->rates], c->exit1_rate,
                    c->exit2_rate);
        if (c->mode == COST_HAT)
            fprintf(f, ",\"rates\":\"%s\",\"acceptance\":%.4f,\"draft\":%d,\"chunk\":%d", RATES[c->rates], c->alpha,
                    c->draft, c->chunk);
        if (c->mode == COST_PD)
            fprintf(f, ",\"pace_ms\":%.4f,\"cloud_tokens\":%d", c->plan.tpot_ms, c->plan.cloud_tokens);
        fputc('}', f);
    }
    fputs("]}}\n", f);
}

static int same_setting(const cost_cand *a, const cost_cand *b) {
    if (a->mode != b->mode) return 0;
    switch (a->mode) {
    case COST_SPLIT: return a->split == b->split;
    case COST_EE: return a->e1 == b->e1 && a->e2 == b->e2 && a->threshold == b->threshold && a->calibrated == b->calibrated;
    case COST_HAT:
        return a->input_layers == b->input_layers && a->output_layers == b->output_layers && a->calibrated == b->calibrated;
    default: return 1;
    }
}

int auto_predict(duet_model *m, duet_pool *pool, const auto_opts *o, int n_prompt, int n_tokens, const cost_cand *want,
                 auto_decision *d, cost_cand *c, char *err, size_t errlen) {
    int rc = auto_decide(m, pool, o, n_prompt, n_tokens, d, err, errlen);
    if (rc) return rc;
    for (int i = 0; i < d->n; i++)
        if (same_setting(&d->cand[i], want)) {
            *c = d->cand[i];
            return DUET_OK;
        }
    *c = *want;
    return cost_predict(&d->in, c, err, errlen);
}

void auto_learn(autostate *st, const cost_cand *c, int speed, const metrics *mt) {
    if (c->mode == COST_EE && mt->tokens > 0)
        autostate_note_ee(st, c->e1, c->e2, c->threshold, c->calibrated, (uint64_t)mt->tokens, mt->exit_tokens[0],
                          mt->exit_tokens[1]);
    if (c->mode == COST_HAT && mt->drafted > 0)
        autostate_note_hat(st, c->input_layers, c->output_layers, c->calibrated, mt->drafted, mt->accepted);
    /* the prediction used st's correction; what is averaged is measured over the uncorrected estimate. A request
     * that lost its cloud measured only part of the cloud's work */
    if (c->mode != COST_DEVICE && mt->fallback_at < 0)
        autostate_note_scale(&st->cloud, c->cloud_ms / st->cloud.scale, mt->cloud_compute_ms);
    /* a prediction from prior rates (no exits, nothing accepted) says nothing about the model's error */
    int informed = (c->mode != COST_EE || c->threshold >= 1 || c->rates == COST_RATES_MEASURED) &&
                   (c->mode != COST_HAT || c->rates == COST_RATES_MEASURED);
    if (!informed || mt->fallback_at >= 0 || mt->tokens < 1 || c->mode < 0 || c->mode >= AUTOSTATE_MODES) return;
    autostate_time *t = &st->time[c->mode][speed];
    autostate_note_scale(&t->ttft, c->ttft_ms / c->ttft_scale, mt->t_token[0]);
    if (mt->tokens > 1)
        autostate_note_scale(&t->tbt, c->tbt_ms / c->tbt_scale,
                             (mt->t_token[mt->tokens - 1] - mt->t_token[0]) / (mt->tokens - 1));
}
