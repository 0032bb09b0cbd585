/* pd's settings. The cost model (docs/PD.md): a device forward over c positions costs fixed + c * pos (reading
 * the weights once, then per-position work); the cloud's first token arrives at T_c and the user is shown
 * token i at T_c + i * tpot. The device takes over at token H once it has run P + H positions, in chunks of
 * c, continuously from the request on: D(H) = floor((P+H)/c) * (fixed + c*pos) + (rest ? fixed + rest*pos : 0).
 * The hand-over is invisible when D(H) <= T_c + H * tpot and the device's own step fits the pace. */
#include "modes/pdplan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/err.h"
#include "modes/probe.h"

#define MAX_CHUNK 512
#define SLACK 0.15      /* without --max-tpot: how late a release may be, as a share of the pace */
#define PACE_MARGIN 1.1 /* pace over the device's decode step: its own tokens keep the pace despite jitter */

int pdplan_probe(const duet_model *m, duet_pool *pool, double slowdown, pd_costs *c, char *err, size_t errlen) {
    probe_compute pc;
    int rc = probe_device(m, pool, slowdown, &pc, err, errlen);
    if (rc) return rc;
    pdplan_from_probe(&pc, c);
    return DUET_OK;
}

void pdplan_from_probe(const probe_compute *dev, pd_costs *c) {
    c->dev_fixed_ms = dev->call_ms + dev->n_layers * dev->layer_fixed_ms + dev->head_ms;
    c->dev_pos_ms = dev->n_layers * dev->layer_pos_ms;
    c->n_layers = dev->n_layers;
}

void pdplan_cloud_estimate(pd_costs *c, double net_ms, double down_ms_per_token, double slowdown, int n_prompt) {
    double sl = slowdown > 1 ? slowdown : 1;
    pdplan_cloud_costs(c, net_ms, down_ms_per_token, c->dev_fixed_ms / sl, c->dev_pos_ms / sl, n_prompt);
}

void pdplan_cloud_costs(pd_costs *c, double net_ms, double down_ms_per_token, double fixed, double pos, int n_prompt) {
    c->cloud_pos_ms = pos;
    c->cloud_ttft_ms = net_ms + fixed + n_prompt * pos + down_ms_per_token;
    c->cloud_tpot_ms = fixed + pos > down_ms_per_token ? fixed + pos : down_ms_per_token;
}

/* Device time to run positions 0..n-1 in chunks of `chunk`. */
static double catch_up_ms(const pd_costs *c, int n, int chunk) {
    int full = n / chunk, rest = n % chunk;
    return full * (c->dev_fixed_ms + chunk * c->dev_pos_ms) + (rest ? c->dev_fixed_ms + rest * c->dev_pos_ms : 0);
}

int pdplan_auto(const pd_costs *c, int n_prompt, int max_tokens, double tpot_ms, double max_tpot_ms, pd_plan *out,
                pd_forecast *fc, char *note, size_t notelen, char *err, size_t errlen) {
    if (note && notelen) note[0] = 0;
    if (tpot_ms > 0 && max_tpot_ms > 0 && tpot_ms > max_tpot_ms)
        return err_set(err, errlen, DUET_EINVAL, "--tpot %.1f ms is above --max-tpot %.1f ms: no pace can meet both",
                       tpot_ms, max_tpot_ms);
    int P = n_prompt, N = max_tokens;
    double step = c->dev_fixed_ms + c->dev_pos_ms; /* the device's decode step */
    pd_plan p = {.handover = PD_CAUGHT_UP, .chunk = 1};
    if (max_tpot_ms > 0 && step > max_tpot_ms) {
        /* the device cannot keep the bound once it takes over: the cloud makes every token, if it can */
        if (c->cloud_tpot_ms > max_tpot_ms)
            return err_set(err, errlen, DUET_EINVAL,
                           "--max-tpot %.1f ms cannot be met: this device decodes a token in %.1f ms and the cloud "
                           "streams one every %.1f ms; raise --max-tpot to at least %.1f",
                           max_tpot_ms, step, c->cloud_tpot_ms, c->cloud_tpot_ms);
        if (note)
            snprintf(note, notelen, "--max-tpot %.1f ms is below this device's decode step (%.1f ms): the cloud makes every token",
                     max_tpot_ms, step);
        p = (pd_plan){.tpot_ms = tpot_ms > 0 ? tpot_ms : 0, .chunk = 64, .handover = PD_NEVER, .cloud_tokens = N};
    } else {
        double tpot = tpot_ms > 0 ? tpot_ms : PACE_MARGIN * step;
        if (max_tpot_ms > 0 && tpot > max_tpot_ms) tpot = max_tpot_ms;
        if (tpot < step) {
            if (note)
                snprintf(note, notelen, "--tpot %.1f ms is faster than this device decodes (%.1f ms a token): pacing at "
                         "%.1f ms so that its own tokens keep the pace", tpot, step, step);
            tpot = max_tpot_ms > 0 && PACE_MARGIN * step > max_tpot_ms ? max_tpot_ms : PACE_MARGIN * step;
        }
        p.tpot_ms = tpot;
        /* a release waits at most one layer of one chunk: keep that inside the slack the bound leaves */
        double slack = max_tpot_ms > 0 ? max_tpot_ms - tpot : SLACK * tpot;
        double per_layer_pos = c->dev_pos_ms / c->n_layers, per_layer_fixed = c->dev_fixed_ms / c->n_layers;
        int chunk = per_layer_pos > 0 ? (int)floor((slack - per_layer_fixed) / per_layer_pos) : MAX_CHUNK;
        if (chunk > MAX_CHUNK) chunk = MAX_CHUNK;
        if (chunk > P + N) chunk = P + N;
        p.chunk = chunk < 1 ? 1 : chunk;
        /* the first hand-over point the device reaches in time; the cloud makes the tokens before it */
        int H = 0;
        while (H < N && catch_up_ms(c, P + H, p.chunk) > c->cloud_ttft_ms + H * tpot) H++;
        /* the device stops the cloud itself once it has measured that it will be in time (pd.c), so the
         * cloud is not capped at the forecast: a device slower than probed then costs cloud time, not a gap */
        p.cloud_tokens = H ? N : 0;
        if (fc) fc->handover_at = H < N ? H : -1;
    }
    if (fc) {
        int H = p.handover == PD_NEVER ? N : fc->handover_at >= 0 ? fc->handover_at : N;
        if (p.handover == PD_NEVER) fc->handover_at = -1;
        double dev_first = catch_up_ms(c, P, p.chunk);
        fc->ttft_ms = H ? (c->cloud_ttft_ms < dev_first ? c->cloud_ttft_ms : dev_first) : dev_first;
        fc->catch_up_ms = p.handover == PD_NEVER ? INFINITY : catch_up_ms(c, P + H, p.chunk);
        fc->cloud_busy_ms = H ? P * c->cloud_pos_ms + H * (c->cloud_tpot_ms) : 0;
    }
    *out = p;
    return DUET_OK;
}

int pdplan_parse(const char *spec, pd_plan *out, int *is_auto, char *err, size_t errlen) {
    *is_auto = 0;
    if (!strcmp(spec, "auto")) {
        *is_auto = 1;
        return DUET_OK;
    }
    pd_plan p = *out;
    char buf[256];
    if (snprintf(buf, sizeof buf, "%s", spec) >= (int)sizeof buf) return err_set(err, errlen, DUET_EINVAL, "--pd-plan is too long");
    int said = 0;
    for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(w, '=');
        long v = 0;
        if (eq) {
            char *end;
            v = strtol(eq + 1, &end, 10);
            if (end == eq + 1 || *end || v < 0 || v > 1 << 24)
                return err_set(err, errlen, DUET_EINVAL, "--pd-plan: '%s' needs a count (0..16777216)", w);
            *eq = 0;
        }
        if (!strcmp(w, "never") && !eq) p.handover = PD_NEVER, said = 1;
        else if (!strcmp(w, "caught-up") && !eq) p.handover = PD_CAUGHT_UP, said = 1;
        else if (!strcmp(w, "handover") && eq) p.handover = PD_FIXED, p.cloud_tokens = (int)v, said = 1;
        else if (!strcmp(w, "cloud") && eq) p.cloud_tokens = (int)v;
        else if (!strcmp(w, "chunk") && eq && v >= 1) p.chunk = (int)v;
        else
            return err_set(err, errlen, DUET_EINVAL,
                           "--pd-plan: '%s' is not auto, never, caught-up, handover=N, cloud=N or chunk=C (C >= 1)", w);
    }
    if (!said) return err_set(err, errlen, DUET_EINVAL, "--pd-plan '%s' says no hand-over: add never, caught-up or handover=N", spec);
    *out = p;
    return DUET_OK;
}

int pdplan_measure_net(remote *r, int n_prompt, double *net_ms, char *err, size_t errlen) {
    /* as many bytes up as the prompt and its request take, nothing extra down */
    return probe_ping(r, (uint32_t)(4 * n_prompt + FRAME_TOKENS_FIXED + FRAME_REQUEST_SIZE), 0, net_ms, err, errlen);
}
