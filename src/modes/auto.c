/* auto mode's probing and bookkeeping; the model and the choice are cost.c's. */
#include "modes/auto.h"

#include <string.h>

#include "base/err.h"

static const char *const OBJECTIVES[] = {"latency", "cloud-cost", "privacy"};
static const char *const RATES[] = {"none", "prior", "measured"};

/* Opens a short session on a cloud holding only the last layer (cheap for a local cloud) and measures the
 * link over it. */
static int measure_net(duet_model *m, const auto_opts *o, probe_net *net, char *err, size_t errlen) {
    int L = duet_model_config(m)->n_layers;
    duet_sampling greedy = {.temperature = 0, .top_p = 1};
    remote r;
    int rc = remote_open(&r, m, &o->remote, L > 1 ? FRAME_MODE_SPLIT : FRAME_MODE_CLOUD, L > 1 ? L - 1 : 0, 2,
                         &greedy, err, errlen);
    if (!rc) rc = probe_link(&r, net, err, errlen);
    if (!rc) rc = remote_close(&r, err, errlen);
    remote_free(&r);
    return rc;
}

int auto_decide(duet_model *m, duet_pool *pool, const auto_opts *o, int n_prompt, int n_tokens, auto_decision *d,
                char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    const duet_config *cf = duet_model_config(m);
    cost_inputs *in = &d->in;
    int rc = probe_device(m, pool, o->slowdown, &in->dev, err, errlen);
    if (rc) return rc;
    /* the cloud: this machine at full speed (exact when the cloud is local and the device emulated), as
     * corrected by earlier requests' measured cloud compute */
    double s = o->slowdown > 1 ? o->slowdown : 1, k = o->state ? o->state->cloud.scale : 1;
    in->cloud = in->dev;
    in->cloud.layer_fixed_ms *= k / s;
    in->cloud.layer_pos_ms *= k / s;
    in->cloud.head_ms *= k / s;
    in->row_bytes = o->remote.enc == FRAME_ENC_F32 ? 4.0 * cf->dim : o->remote.enc == FRAME_ENC_I8 ? cf->dim + 4.0 : 2.0 * cf->dim;
    in->n_prompt = n_prompt;
    in->n_tokens = n_tokens;
    d->have_cloud = 1;
    if (o->nominal_net) {
        probe_link_nominal(&o->remote.link, &in->net);
    } else if (measure_net(m, o, &in->net, d->cloud_err, sizeof d->cloud_err)) {
        d->have_cloud = 0;
        probe_link_nominal(&o->remote.link, &in->net); /* predictions still shown, for what they are worth */
    } else {
        d->net_measured = 1;
    }
    d->n = cost_candidates(in, o->state, o->calibrated, d->cand, COST_MAX_CANDS);
    d->chosen = cost_pick(d->cand, d->n, o->objective, o->budget, o->allow_lossy, d->have_cloud);
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
    fprintf(f, "{\"auto\":{\"objective\":\"%s\",\"chosen\":%d,\"chosen_mode\":", OBJECTIVES[o->objective], d->chosen);
    put_str(f, d->chosen >= 0 ? cost_mode_name[d->cand[d->chosen].mode] : "");
    fputs(",\"chosen_args\":", f);
    put_str(f, args);
    fprintf(f, ",\"prompt_tokens\":%d,\"tokens\":%d,\"slowdown\":%g,\"link\":", in->n_prompt, in->n_tokens,
            o->slowdown > 1 ? o->slowdown : 1);
    put_str(f, link_spec);
    fprintf(f, ",\"have_cloud\":%s", d->have_cloud ? "true" : "false");
    if (!d->have_cloud) {
        fputs(",\"cloud_error\":", f);
        put_str(f, d->cloud_err);
    }
    fprintf(f, ",\"probe\":{\"source\":\"%s\",\"rtt_ms\":%.4f,\"up_mbps\":%.3f,\"down_mbps\":%.3f,"
               "\"device_layer_fixed_ms\":%.5f,\"device_layer_pos_ms\":%.5f,\"device_head_ms\":%.5f,"
               "\"cloud_layer_fixed_ms\":%.5f,\"cloud_layer_pos_ms\":%.5f,\"cloud_head_ms\":%.5f,\"cloud_source\":\"%s\"}",
            d->net_measured ? "measured" : "nominal", in->net.rtt_ms, mbps(in->net.up_ms_per_byte),
            mbps(in->net.down_ms_per_byte), in->dev.layer_fixed_ms, in->dev.layer_pos_ms, in->dev.head_ms,
            in->cloud.layer_fixed_ms, in->cloud.layer_pos_ms, in->cloud.head_ms,
            o->state && o->state->cloud.samples ? "learned" : "estimate");
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

void auto_learn(autostate *st, const cost_cand *c, const metrics *mt) {
    if (c->mode == COST_EE && mt->tokens > 0)
        autostate_note_ee(st, c->e1, c->e2, c->threshold, c->calibrated, (uint64_t)mt->tokens, mt->exit_tokens[0],
                          mt->exit_tokens[1]);
    if (c->mode == COST_HAT && mt->drafted > 0)
        autostate_note_hat(st, c->input_layers, c->output_layers, c->calibrated, mt->drafted, mt->accepted);
    /* the prediction used st's correction; what is averaged is measured over the uncorrected estimate. A request
     * that lost its cloud measured only part of the cloud's work */
    if (c->mode != COST_DEVICE && mt->fallback_at < 0)
        autostate_note_scale(&st->cloud, c->cloud_ms / st->cloud.scale, mt->cloud_compute_ms);
}
