/* duet run: one request in any mode (the baselines and the collaborative modes) over the real protocol,
 * streaming the text, with DESIGN section 6 metrics; --compare adds fidelity against a device-only run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "cli/text.h"
#include "modes/auto.h"
#include "modes/hat.h"
#include "modes/mode.h"
#include "modes/pdplan.h"

static const char *USAGE =
    "usage: duet run --mode device|cloud|split|ee|pd|hat|auto -m MODEL [-p TEXT] [-n N] [options]\n"
    "\n"
    "Answers one request in a baseline mode, streaming the text as it is made, then prints a summary line\n"
    "(and with --json the metrics of DESIGN section 6). Greedy outputs of the three modes are identical.\n"
    "  device  every layer on this machine\n"
    "  cloud   the prompt's tokens go up, the cloud runs every layer and streams the tokens down\n"
    "  split   this machine runs layers [0,A) and uploads each position's hidden state; the cloud runs [A,L)\n"
    "          and the head and sends each token down (one round trip per token)\n"
    "  ee      CE-CoLLM: this machine runs layers [0,E2] with early exits after layers E1 and E2 and uploads\n"
    "          every position's hidden state in the background; only tokens no exit is confident about go\n"
    "          to the cloud, which runs (E2,L) and the head. Lossless at --threshold 1\n"
    "  pd      P/D-Device: both hold every layer; the cloud answers first and streams the tokens, which reach\n"
    "          the user at a steady pace; this machine runs the prompt and the streamed tokens meanwhile and\n"
    "          takes over once it has caught up; if the cloud is unreachable or drops, it finishes alone\n"
    "  hat     U-shape: this machine runs the embedding, layers [0,A), layers [L-M,L) and the head; the cloud\n"
    "          only the middle [A,L-M). Token ids never leave this machine: h_A goes up, h_(L-M) comes down.\n"
    "          This machine drafts tokens (input layers -> adapter -> output layers -> head) and the cloud\n"
    "          verifies a whole draft in one round trip (docs/HAT.md)\n"
    "  auto    probes the link (padded PINGs) and this device's layers, predicts the time to the first token,\n"
    "          the time between tokens and the cloud's compute of every mode and setting above (cost model in\n"
    "          docs/AUTO.md, fed by the exit and acceptance rates of earlier requests in --state), picks the best\n"
    "          for --objective and runs it; only lossless settings, so greedy output equals device-only\n"
    "Connecting and opening the session come before the request; the metrics cover the request, from its\n"
    "prompt to its last token. Bytes and round trips are the transport's counts (frame headers included).\n"
    "\n"
    "  --mode MODE            device, cloud, split, ee, pd, hat or auto (required)\n"
    "  -m, --model PATH       GGUF model (e.g. models/stories260K.gguf)\n"
    "  -p, --prompt TEXT      prompt (default: empty, i.e. BOS alone)\n"
    "  -n, --tokens N         tokens to generate (default 64); stops early at end-of-sequence\n"
    "      --split A          split mode: the device holds layers [0,A), the cloud [A,L); 1 <= A < L\n"
    "                         (default L/2)\n"
    "      --cloud WHERE      HOST:PORT of a running `duet cloud` (plain TCP: for loopback experiments),\n"
    "                         tls://HOST:PORT for one serving TLS 1.3 (needs --tls-ca), or `local` (default):\n"
    "                         an in-process cloud on 127.0.0.1, same server and protocol code, holding\n"
    "                         exactly the part needed\n"
    "      --tls-ca FILE      CA certificate (PEM) the tls:// cloud's certificate must chain to; the\n"
    "                         certificate must also name the host (DNS or IP SAN)\n"
    "      --token-file FILE  shared secret the cloud requires (sent in AUTH before HELLO)\n"
    "      --fallback WHAT    device (default): if the cloud is lost mid-request (closed, killed, silent past\n"
    "                         --cloud-timeout, or answering garbage) load the whole model here, rebuild the\n"
    "                         state from the tokens so far and finish the request on the device (greedy\n"
    "                         output equals device-only; --json reports fallback_at); none: fail instead\n"
    "      --cloud-timeout MS the longest wait for any one answer from the cloud, on top of what the\n"
    "                         emulated link needs for it (default 30000)\n"
    "      --link SPEC        emulated link, applied at both ends: none (default), lan, wifi, wan, 4g, or\n"
    "                         overrides like up=20mbit,down=50mbit,rtt=40ms,jitter=5ms (after a profile too)\n"
    "      --device-slowdown X  emulate a device X times slower: after each device compute step that took\n"
    "                         t ms, sleep (X-1)*t ms (default 1: none)\n"
    "      --hidden-enc ENC   split, ee and hat: hidden states travel as fp16 (default), fp32 or int8\n"
    "      --exits E1,E2      ee: early exits after layers E1 < E2, 0 <= E1 < E2 <= L-2; the device holds\n"
    "                         [0,E2], the cloud (E2,L) (default L/2-1 and 3L/4-1, e.g. 1,2 for 5 layers)\n"
    "      --threshold T      ee: an exit emits its token when its top softmax probability is >= T, in\n"
    "                         [0,1]; 1 never exits, so the output equals device-only (default 0.8)\n"
    "      --calib FILE       ee: exit translators from `duet calibrate` (maps (E+1):L of this model),\n"
    "                         e.g. models/stories260K-calib.gguf; default: the head reads the exit as is.\n"
    "                         hat: the adapter, map A:(L-M) of such a file; default: identity (h_A taken for\n"
    "                         h_(L-M))\n"
    "      --standalone       ee: no cloud at all; the E2 exit always emits\n"
    "      --reconnect-ms MS  ee: after losing the cloud (closed, silent past --cloud-timeout, or answering\n"
    "                         garbage), the E2 exit emits and the device tries again after MS, doubling up\n"
    "                         to 30 s. 0: stay standalone (default 1000). ee ignores --fallback\n"
    "      --no-background-upload  ee: send the hidden states with each cloud request instead of as soon as\n"
    "                         they exist (the paper's ablation)\n"
    "      --input-layers A   hat: layers [0,A) run here before the cloud (default 1; L/4 from 8 layers)\n"
    "      --output-layers M  hat: layers [L-M,L) run here after the cloud (default as A); A + M < L\n"
    "      --draft K|auto     hat: tokens drafted per round; 0 = U-shape without speculation (one round trip\n"
    "                         per token); auto (default) picks k each round for the most expected tokens/s\n"
    "                         from the measured acceptance, round trip and device speed\n"
    "      --draft-max K      hat: the largest k --draft auto may pick (default 8)\n"
    "      --chunk N|auto     hat: prompt chunk size; the chunks are pipelined (this machine computes the next\n"
    "                         while the cloud computes one); 0 = the whole prompt at once; auto (default)\n"
    "                         picks it from a cost model of prompt length, link and device/cloud speed\n"
    "      --tpot MS          pd: release one token every MS ms (default: 1.1 x this device's measured decode\n"
    "                         step, so its own tokens keep the pace after the hand-over)\n"
    "      --max-tpot MS      pd: bound on any gap between tokens the user sees; auto keeps the catch-up\n"
    "                         steps inside it, and lets the cloud make every token if this device cannot\n"
    "      --pd-plan PLAN     pd: auto (default: pace, chunk and hand-over from the measured device speed and\n"
    "                         link, docs/PD.md), or a comma list: never (the cloud makes every token),\n"
    "                         handover=N (the cloud makes N, this machine the rest), caught-up (this machine\n"
    "                         stops the cloud once the tokens it has last until it has run them, then takes\n"
    "                         over; cloud=N: the cloud makes at most N), chunk=C (positions per catch-up\n"
    "                         forward, default 64)\n"
    "      --objective OBJ    auto: latency (default: least predicted ttft + (n-1) x tbt), cloud-cost (least\n"
    "                         predicted cloud compute among candidates within --latency-budget of the fastest)\n"
    "                         or privacy (only modes where token ids never leave this machine: device, hat)\n"
    "      --latency-budget X auto, cloud-cost: how many times the fastest prediction a pick may take (default 1.5)\n"
    "      --device-margin F  auto, latency and privacy: keep the request on the device when it is predicted within\n"
    "                         (1 + F) x the fastest candidate (default 0.1; 0 = the fastest, however small the\n"
    "                         gain): a smaller gain is within the model's error and not worth the network\n"
    "      --predict-only     auto: probe and print the predictions and the pick (with --json: one JSON line)\n"
    "                         without running the request\n"
    "      --allow-lossy      auto: let ee below threshold 1 win (its measured exit rates from --state); greedy\n"
    "                         output may then differ from device-only\n"
    "      --net HOW          auto: measure (default: RTT and bandwidth by padded PINGs on a probe session) or\n"
    "                         nominal (the --link profile's figures: deterministic, no probe session); also\n"
    "                         for another mode given --state, whose prediction is made the same way\n"
    "      --state FILE|none  per-model file of what earlier requests measured (ee exit rates, hat acceptance, the\n"
    "                         cloud's compute and each mode's time to the first token and between tokens against\n"
    "                         their predictions); auto reads and updates it, other modes update it when given\n"
    "                         (they probe first, as auto does, to have a prediction to compare with). Default\n"
    "                         for auto: $XDG_STATE_HOME/duet/<fingerprint>.json\n"
    "                         (~/.local/state/duet/...); none: neither read nor written. A malformed file is\n"
    "                         ignored with a warning and rewritten\n"
    "      --trace-out FILE   ee, hat: record the run's decisions (ee: where each token came from, e1, e2 or\n"
    "                         cloud; hat: drafted and accepted tokens of each round) into FILE (format in\n"
    "                         src/modes/trace.h and docs/RESULTS.md); record on a trained model\n"
    "      --replay TRACE     ee, hat: take the decisions from TRACE (made by --trace-out) instead of the exits'\n"
    "                         confidence or the acceptance rule, in order, starting over when they run out; the\n"
    "                         layers, uploads and requests still run, so a synthetic shape (`duet synth`) gets\n"
    "                         real-size compute and traffic with a trained model's decision pattern. Generation\n"
    "                         then ignores end-of-sequence, so -n tokens are made\n"
    "      --temp T           sampling temperature; 0 = greedy (default 0)\n"
    "      --top-k K          keep the K most likely tokens; 0 = all (default 0)\n"
    "      --top-p P          keep the smallest set with probability >= P; 1 = all (default 1)\n"
    "      --seed S           random seed for sampling (default 1); the cloud samples in cloud, split and pd mode\n"
    "  -t, --threads N        device compute threads (default 1; 0 = all CPUs)\n"
    "      --cloud-threads N  compute threads of the local cloud (default 1)\n"
    "      --no-bos           do not put BOS before the prompt\n"
    "      --mmap             read the weights in place from the mapped file instead of copying them into\n"
    "                         memory first (both sides of a local cloud): starts faster, may decode slower\n"
    "      --compare          first run the request device-only on this machine and report fidelity\n"
    "                         (exact token match rate and ROUGE-L F1 against it)\n"
    "      --json             print the metrics as one JSON object on stdout; the text then goes to stderr\n"
    "  -h, --help             this text\n"
    "\n"
    "Exit status: 0 ok, 1 runtime failure (cloud unreachable or refusing, model error), 2 usage error.\n";

static void log_warning(void *arg, const char *msg) { fprintf(stderr, "duet run: %s\n", msg); }

static int usage_error(const char *msg) {
    fprintf(stderr, "duet run: %s (see duet run --help)\n", msg);
    return 2;
}

enum { RUN_DEVICE, RUN_CLOUD, RUN_SPLIT, RUN_EE, RUN_PD, RUN_HAT, RUN_AUTO };
static const char *MODES[] = {"device", "cloud", "split", "ee", "pd", "hat", "auto"}; /* by RUN_*, = enum cost_mode */
static const char *OBJECTIVES[] = {"latency", "cloud-cost", "privacy"}; /* enum cost_objective order */
_Static_assert((int)RUN_DEVICE == (int)COST_DEVICE && (int)RUN_CLOUD == (int)COST_CLOUD &&
                   (int)RUN_SPLIT == (int)COST_SPLIT && (int)RUN_EE == (int)COST_EE && (int)RUN_PD == (int)COST_PD &&
                   (int)RUN_HAT == (int)COST_HAT,
               "auto's pick is run as the RUN_* mode of the same number");
static const char *ENCS[] = {"fp16", "fp32", "int8"}; /* enum frame_enc order */

static double max_gap(const metrics *mt) {
    double mx = 0;
    for (int i = 1; i < mt->tokens; i++)
        if (mt->t_token[i] - mt->t_token[i - 1] > mx) mx = mt->t_token[i] - mt->t_token[i - 1];
    return mx;
}

/* pd: connects (or says the device answers alone), measures what --pd-plan auto needs and chooses the plan.
 * 0 ok, 2 a --tpot/--max-tpot that nothing can meet, else a runtime failure; messages in err. */
static int pd_setup(duet_model *full, duet_pool *pool, remote *r, const remote_opts *ro, double slowdown, int plan_auto,
                    double max_tpot, pd_plan *plan, const mode_request *rq, char *err, size_t errlen) {
    if ((plan_auto || plan->cloud_tokens > 0) &&
        remote_open(r, full, ro, FRAME_MODE_PD, 0, rq->n_prompt + rq->max_tokens, &rq->sampling, err, errlen)) {
        fprintf(stderr, "duet run: %s: the device answers alone\n", err);
        remote_free(r);
    }
    if (!plan_auto && plan->tpot_ms > 0) return 0;
    pd_costs costs;
    if (pdplan_probe(full, pool, slowdown, &costs, err, errlen)) return 1;
    if (!plan_auto) { /* an explicit plan without --tpot: the device's own pace */
        plan->tpot_ms = 1.1 * (costs.dev_fixed_ms + costs.dev_pos_ms);
        return 0;
    }
    const link_params *lp = &ro->link;
    double net_ms = lp->rtt_us / 1e3 + (lp->up_bps ? (4.0 * rq->n_prompt + 48) * 8e3 / (double)lp->up_bps : 0);
    if (r->t && pdplan_measure_net(r, rq->n_prompt, &net_ms, err, errlen)) return 1;
    double down_ms = lp->down_bps ? (FRAME_HEADER_SIZE + FRAME_TOKENS_FIXED + 4) * 8e3 / (double)lp->down_bps : 0;
    pdplan_cloud_estimate(&costs, net_ms, down_ms, slowdown, rq->n_prompt);
    char note[512];
    pd_forecast fc;
    if (pdplan_auto(&costs, rq->n_prompt, rq->max_tokens, plan->tpot_ms, max_tpot, plan, &fc, note, sizeof note, err, errlen))
        return 2;
    if (note[0]) fprintf(stderr, "duet run: %s\n", note);
    fprintf(stderr, "duet run: pd plan: pace %.1f ms, chunk %d, %s (device step %.1f ms + %.2f ms/position, cloud "
                    "first token in ~%.1f ms); forecast: hand-over at token %d (%.0f ms), cloud busy %.1f ms\n",
            plan->tpot_ms, plan->chunk,
            !plan->cloud_tokens ? "no cloud: this device is first"
            : plan->handover == PD_NEVER ? "the cloud makes every token" : "the cloud streams until this device has caught up",
            costs.dev_fixed_ms + costs.dev_pos_ms, costs.dev_pos_ms, costs.cloud_ttft_ms, fc.handover_at, fc.catch_up_ms,
            fc.cloud_busy_ms);
    return 0;
}

static int lookup(const char *v, const char **names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(v, names[i])) return i;
    return -1;
}

int cmd_run(int argc, char **argv) {
    const char *link_spec = "none";
    int mode = -1, split = -1, compare = 0;
    ee_opts eo = ee_opts_default();
    const char *ee_flag = NULL, *calib_path = NULL;
    int hat_a = -1, hat_m = -1, draft = HAT_AUTO, draft_max = 8, chunk = HAT_AUTO;
    int hat_flag = 0; /* a hat-only flag was given */
    float slowdown = 1, tpot = 0, max_tpot = 0;
    const char *pd_spec = NULL;
    auto_opts ao = {.objective = COST_LATENCY, .budget = 1.5, .margin = 0.1};
    const char *state_path = NULL, *auto_flag = NULL, *net_flag = NULL;
    int predict_only = 0;
    float budget = 1.5f;
    const char *trace_out = NULL, *replay_path = NULL;
    trace rec = {0}, rep = {0};
    args_gen g = args_gen_default();
    remote_opts ro = remote_opts_default();
    ro.fallback = 1; /* the device has the model file: it can always finish alone */
    uint8_t token[FRAME_AUTH_MAX];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int took = args_gen_take("run", argc, argv, &i, &g);
        if (took < 0) return 2;
        if (took) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "--compare")) {
            compare = 1;
        } else if (!strcmp(a, "--predict-only")) {
            predict_only = 1;
            auto_flag = a;
        } else if (!strcmp(a, "--allow-lossy")) {
            ao.allow_lossy = 1;
            auto_flag = a;
        } else if (!strcmp(a, "--standalone")) {
            eo.standalone = true;
            ee_flag = a;
        } else if (!strcmp(a, "--no-background-upload")) {
            eo.background_upload = false;
            ee_flag = a;
        } else {
            if (a[0] != '-' || !(v = args_value("run", argc, argv, &i))) {
                if (a[0] != '-') fprintf(stderr, "duet run: unexpected argument '%s' (see duet run --help)\n", a);
                return 2;
            }
            int bad = 0;
            if (!strcmp(a, "--mode")) {
                if ((mode = lookup(v, MODES, 7)) < 0) return usage_error("--mode must be device, cloud, split, ee, pd, hat or auto");
            } else if (!strcmp(a, "--objective")) {
                if ((ao.objective = lookup(v, OBJECTIVES, 3)) < 0) return usage_error("--objective must be latency, cloud-cost or privacy");
                auto_flag = a;
            } else if (!strcmp(a, "--latency-budget")) {
                bad = args_float("run", a, v, 1, 1000, &budget);
                auto_flag = a;
            } else if (!strcmp(a, "--device-margin")) {
                float mg;
                bad = args_float("run", a, v, 0, 10, &mg);
                ao.margin = mg;
                auto_flag = a;
            } else if (!strcmp(a, "--net")) {
                if (strcmp(v, "measure") && strcmp(v, "nominal")) return usage_error("--net must be measure or nominal");
                ao.nominal_net = !strcmp(v, "nominal");
                net_flag = a;
            } else if (!strcmp(a, "--state")) {
                state_path = v;
            } else if (!strcmp(a, "--split")) {
                bad = args_int("run", a, v, 0, 1 << 20, &split);
            } else if (!strcmp(a, "--input-layers")) {
                bad = args_int("run", a, v, 0, 1 << 20, &hat_a);
                hat_flag = 1;
            } else if (!strcmp(a, "--output-layers")) {
                bad = args_int("run", a, v, 0, 1 << 20, &hat_m);
                hat_flag = 1;
            } else if (!strcmp(a, "--draft")) {
                if (strcmp(v, "auto")) bad = args_int("run", a, v, 0, 64, &draft);
                else draft = HAT_AUTO;
                hat_flag = 1;
            } else if (!strcmp(a, "--draft-max")) {
                bad = args_int("run", a, v, 0, 64, &draft_max);
                hat_flag = 1;
            } else if (!strcmp(a, "--chunk")) {
                if (strcmp(v, "auto")) bad = args_int("run", a, v, 0, 1 << 20, &chunk);
                else chunk = HAT_AUTO;
                hat_flag = 1;
            } else if (!strcmp(a, "--cloud")) {
                ro.cloud = v;
            } else if (!strcmp(a, "--tls-ca")) {
                ro.tls_ca = v;
            } else if (!strcmp(a, "--token-file")) {
                bad = args_token_file("run", v, token, sizeof token, &ro.token_len);
                ro.token = token;
            } else if (!strcmp(a, "--fallback")) {
                if (strcmp(v, "device") && strcmp(v, "none")) return usage_error("--fallback must be device or none");
                ro.fallback = !strcmp(v, "device");
            } else if (!strcmp(a, "--cloud-timeout")) {
                bad = args_int("run", a, v, 1, 1 << 30, &ro.timeout_ms);
            } else if (!strcmp(a, "--link")) {
                link_spec = v;
            } else if (!strcmp(a, "--device-slowdown")) {
                bad = args_float("run", a, v, 1, 1000, &slowdown);
            } else if (!strcmp(a, "--hidden-enc")) {
                if ((ro.enc = lookup(v, ENCS, 3)) < 0) return usage_error("--hidden-enc must be fp16, fp32 or int8");
            } else if (!strcmp(a, "--exits")) {
                char *end;
                eo.e1 = (int)strtol(v, &end, 10);
                if (end == v || *end != ',' || (eo.e2 = (int)strtol(end + 1, &end, 10), *end))
                    return usage_error("--exits takes two layer numbers, E1,E2 (e.g. 1,3)");
                ee_flag = a;
            } else if (!strcmp(a, "--threshold")) {
                bad = args_float("run", a, v, 0, 1, &eo.threshold);
                ee_flag = a;
            } else if (!strcmp(a, "--calib")) { /* ee or hat */
                calib_path = v;
            } else if (!strcmp(a, "--reconnect-ms")) {
                bad = args_int("run", a, v, 0, 3600000, &eo.reconnect_ms);
                ee_flag = a;
            } else if (!strcmp(a, "--tpot")) {
                bad = args_float("run", a, v, 0.001, 1e6, &tpot);
            } else if (!strcmp(a, "--max-tpot")) {
                bad = args_float("run", a, v, 0.001, 1e6, &max_tpot);
            } else if (!strcmp(a, "--trace-out")) {
                trace_out = v;
            } else if (!strcmp(a, "--replay")) {
                replay_path = v;
            } else if (!strcmp(a, "--pd-plan")) {
                pd_spec = v;
            } else if (!strcmp(a, "--cloud-threads")) {
                bad = args_int("run", a, v, 1, 256, &ro.cloud_threads);
            } else {
                fprintf(stderr, "duet run: unknown option '%s' (see duet run --help)\n", a);
                return 2;
            }
            if (bad) return 2;
        }
    }
    const char *model = g.model, *prompt = g.prompt;
    int n_tokens = g.n_tokens, threads = g.threads, json = g.json, bos = g.bos;
    duet_sampling s = g.sampling;
    char err[512];
    if (mode < 0) return usage_error("--mode device|cloud|split|ee|pd|hat|auto is required");
    if (auto_flag && mode != RUN_AUTO) {
        fprintf(stderr, "duet run: %s applies to --mode auto only (see duet run --help)\n", auto_flag);
        return 2;
    }
    if (net_flag && mode != RUN_AUTO && (!state_path || !strcmp(state_path, "none")))
        return usage_error("--net applies to --mode auto, or to another mode given --state (its prediction)");
    if (mode == RUN_AUTO && (split >= 0 || ee_flag || hat_flag || tpot > 0 || max_tpot > 0 || pd_spec))
        return usage_error("--mode auto chooses the mode's settings itself: drop --split, the ee, hat and pd flags");
    ao.budget = budget;
    if (!model) return usage_error("-m MODEL is required, e.g. -m models/stories260K.gguf");
    if (split >= 0 && mode != RUN_SPLIT) return usage_error("--split applies to --mode split only");
    if (ee_flag && mode != RUN_EE) {
        fprintf(stderr, "duet run: %s applies to --mode ee only (see duet run --help)\n", ee_flag);
        return 2;
    }
    if (hat_flag && mode != RUN_HAT)
        return usage_error("--input-layers, --output-layers, --draft, --draft-max and --chunk apply to --mode hat only");
    if (calib_path && mode != RUN_EE && mode != RUN_HAT && mode != RUN_AUTO)
        return usage_error("--calib applies to --mode ee or hat only (or auto, which passes it to them)");
    if ((tpot > 0 || max_tpot > 0 || pd_spec) && mode != RUN_PD)
        return usage_error("--tpot, --max-tpot and --pd-plan apply to --mode pd only");
    if ((trace_out || replay_path) && mode != RUN_EE && mode != RUN_HAT)
        return usage_error("--trace-out and --replay apply to --mode ee or hat only (no other mode makes data-dependent "
                           "decisions)");
    if (tpot > 0 && max_tpot > 0 && tpot > max_tpot)
        return usage_error("--tpot is above --max-tpot: no pace can meet both (make --tpot <= --max-tpot)");
    pd_plan plan = {tpot, 64, PD_CAUGHT_UP, g.n_tokens};
    int plan_auto = 1;
    if (pd_spec && pdplan_parse(pd_spec, &plan, &plan_auto, err, sizeof err)) return usage_error(err);
    if (link_parse(link_spec, &ro.link, err, sizeof err)) {
        fprintf(stderr, "duet run: --link: %s\n", err);
        return 2;
    }
    char host[256];
    int port;
    if (mode != RUN_DEVICE && strcmp(ro.cloud, "local") &&
        remote_parse_url(ro.cloud, host, sizeof host, &port, NULL, err, sizeof err)) {
        fprintf(stderr, "duet run: --cloud: %s\n", err);
        return 2;
    }
    ro.model_path = model;
    ro.load_flags = g.load_flags;
    ro.device_slowdown = slowdown;

    int status = 1;
    duet_part none = {0};
    duet_model *meta = duet_model_load(model, &none, 0, err, sizeof err); /* config, tokenizer, fingerprint */
    duet_model *dev = NULL, *full = NULL;
    duet_pool *pool = NULL;
    int *prompt_ids = NULL;
    remote r = {0};
    calib *cal = NULL;
    autostate st;
    char state_file[4096] = "";
    int use_state = 0;
    auto_decision *dec = NULL;
    cost_cand ran = {.mode = -1};
    metrics mt, ref;
    metrics_start(&mt, MODES[mode]);
    metrics_start(&ref, "device");
    if (!meta) goto fail;
    const duet_config *c = duet_model_config(meta);
    if (mode == RUN_SPLIT && split < 0) split = c->n_layers / 2;
    if (mode == RUN_EE && eo.e1 < 0 && eo.e2 < 0) {
        eo.e1 = c->n_layers / 2 - 1 > 0 ? c->n_layers / 2 - 1 : 0;
        eo.e2 = 3 * c->n_layers / 4 - 1 > eo.e1 ? 3 * c->n_layers / 4 - 1 : eo.e1 + 1;
    }
    if (mode == RUN_EE && (eo.e1 < 0 || eo.e2 > c->n_layers - 2 || eo.e1 >= eo.e2)) {
        fprintf(stderr, "duet run: --exits %d,%d: this model has %d layers, so exits need 0 <= E1 < E2 <= %d\n", eo.e1,
                eo.e2, c->n_layers, c->n_layers - 2);
        status = 2;
        goto out;
    }
    if (mode == RUN_SPLIT && (split < 1 || split >= c->n_layers)) {
        fprintf(stderr, "duet run: --split %d: this model has %d layers, so the split must be in 1..%d\n", split,
                c->n_layers, c->n_layers - 1);
        status = 2;
        goto out;
    }
    hat_opts ho = hat_opts_default(c->n_layers);
    hat_costs hc = {0};
    if (hat_a >= 0) ho.input_layers = hat_a;
    if (hat_m >= 0) ho.output_layers = hat_m;
    else if (hat_a >= 0) ho.output_layers = hat_a;
    ho.draft = draft;
    ho.draft_max = draft_max;
    ho.chunk = chunk;
    int hat_b = c->n_layers - ho.output_layers;
    if (mode == RUN_HAT && (ho.input_layers < 1 || ho.output_layers < 1 || ho.input_layers + ho.output_layers >= c->n_layers)) {
        fprintf(stderr,
                "duet run: --input-layers %d --output-layers %d leave no layer for the cloud: this model has %d layers, "
                "so A >= 1, M >= 1 and A + M <= %d\n",
                ho.input_layers, ho.output_layers, c->n_layers, c->n_layers - 1);
        status = 2;
        goto out;
    }
    const duet_tokenizer *tok = duet_model_tokenizer(meta, err, sizeof err);
    if (!tok || !(pool = duet_pool_init(threads, err, sizeof err))) goto fail;
    int n_prompt;
    if (cli_tokenize_prompt(tok, prompt, bos, &prompt_ids, &n_prompt, err, sizeof err)) goto fail;
    mode_request rq = {prompt_ids, n_prompt, n_tokens, s, duet_tokenizer_eos(tok)};
    use_state = state_path ? strcmp(state_path, "none") != 0 : mode == RUN_AUTO;
    if (use_state) {
        uint64_t fp = duet_model_fingerprint(meta);
        if (state_path) snprintf(state_file, sizeof state_file, "%s", state_path);
        else if (autostate_default_path(fp, state_file, sizeof state_file, err, sizeof err)) goto fail;
        if (autostate_load(state_file, fp, &st, err, sizeof err))
            fprintf(stderr, "duet run: ignoring the state file (it will be rewritten): %s\n", err);
    }
    if (mode == RUN_AUTO || use_state) { /* auto decides; a run given a state is predicted as auto would predict it */
        if (!(full = duet_model_load(model, NULL, g.load_flags, err, sizeof err))) goto fail;
        if (!(dec = malloc(sizeof *dec))) {
            snprintf(err, sizeof err, "out of memory");
            goto fail;
        }
        ao.calibrated = calib_path != NULL;
        ao.slowdown = slowdown;
        ao.remote = ro;
        ao.state = use_state ? &st : NULL;
    }
    if (mode == RUN_AUTO) {
        /* decide, then run the pick exactly as `duet run` with the pick's flags would */
        if (auto_decide(full, pool, &ao, n_prompt, n_tokens, dec, err, sizeof err)) goto fail;
        if (json) auto_print_json(dec, &ao, link_spec, stdout);
        if (!dec->have_cloud) fprintf(stderr, "duet run: auto: no cloud (%s): only device mode is possible\n", dec->cloud_err);
        if (dec->chosen < 0) {
            snprintf(err, sizeof err, "auto: no candidate fits --objective %s", OBJECTIVES[ao.objective]);
            goto fail;
        }
        ran = dec->cand[dec->chosen];
        char args[256];
        cost_args(&ran, args, sizeof args);
        fprintf(stderr, "duet run: auto (%s, %d candidates): %s; predicted ttft %.1f ms, tbt %.2f ms, total %.1f ms, "
                        "cloud %.1f ms\n", OBJECTIVES[ao.objective], dec->n, args, ran.ttft_ms, ran.tbt_ms, ran.total_ms,
                ran.cloud_ms);
        if (predict_only) {
            status = 0;
            goto out;
        }
        mode = ran.mode;
        if (mode == RUN_SPLIT) split = ran.split;
        if (mode == RUN_EE) eo.e1 = ran.e1, eo.e2 = ran.e2, eo.threshold = ran.threshold;
        if (mode == RUN_HAT) {
            ho.input_layers = ran.input_layers;
            ho.output_layers = ran.output_layers;
            hat_b = c->n_layers - ho.output_layers;
            ho.draft = HAT_AUTO;
            ho.chunk = ran.chunk;
        }
        if (mode == RUN_PD) plan = ran.plan, plan_auto = 0;
    }
    if (use_state && ran.mode < 0) {
        /* the prediction auto would make for these settings: the run's measured times correct the next ones */
        cost_cand want = {.mode = mode, .split = split, .e1 = eo.e1, .e2 = eo.e2, .threshold = eo.threshold,
                          .input_layers = ho.input_layers, .output_layers = ho.output_layers, .calibrated = calib_path != NULL};
        if (auto_predict(full, pool, &ao, n_prompt, n_tokens, &want, dec, &ran, err, sizeof err)) {
            fprintf(stderr, "duet run: no prediction to learn from (%s)\n", err);
            ran.mode = -1;
        }
    }
    int trace_kind = mode == RUN_EE ? TRACE_EE : TRACE_HAT;
    if (replay_path) {
        if (trace_load(&rep, replay_path, err, sizeof err)) {
            err_prefix(err, sizeof err, "--replay");
            goto fail;
        }
        if (rep.kind != trace_kind) {
            snprintf(err, sizeof err, "--replay %s is a %s trace; --mode %s needs a %s one", replay_path,
                     trace_kind_name(rep.kind), MODES[mode], trace_kind_name(trace_kind));
            status = 2;
            goto fail;
        }
        rq.eos_id = -1; /* the trace's pattern plays out over all -n tokens */
        eo.replay = ho.replay = &rep;
    }
    if (trace_out) {
        if (trace_init(&rec, trace_kind, n_tokens > 0 ? n_tokens : 1, err, sizeof err)) goto fail;
        eo.record = ho.record = &rec;
    }
    if (!full && (mode == RUN_DEVICE || mode == RUN_PD || compare) && !(full = duet_model_load(model, NULL, g.load_flags, err, sizeof err))) goto fail;
    if (compare && mode_device_run_slowed(full, pool, slowdown, &rq, NULL, NULL, &ref, err, sizeof err)) goto fail;
    if (mode == RUN_SPLIT) {
        duet_part part = {.n_spans = 1, .span = {{0, split}}, .embed = true};
        if (!(dev = duet_model_load(model, &part, g.load_flags, err, sizeof err))) goto fail;
    }
    if (mode == RUN_EE) {
        duet_part part = {.n_spans = 1, .span = {{0, eo.e2 + 1}}, .embed = true, .head = true};
        if (!(dev = duet_model_load(model, &part, g.load_flags, err, sizeof err))) goto fail;
        if (calib_path) {
            if (!(cal = calib_load(calib_path, err, sizeof err))) goto fail;
            if (calib_check_model(cal, duet_model_fingerprint(dev), c->n_layers, c->dim, err, sizeof err)) {
                err_prefix(err, sizeof err, "--calib %s", calib_path);
                goto fail;
            }
            for (int e = 0; e < 2; e++)
                if (!calib_find(cal, (e ? eo.e2 : eo.e1) + 1, c->n_layers)) {
                    snprintf(err, sizeof err, "--calib %s has no translator for the exit after layer %d (map %d:%d); "
                             "run duet calibrate --pairs %d:%d", calib_path, e ? eo.e2 : eo.e1, (e ? eo.e2 : eo.e1) + 1,
                             c->n_layers, (e ? eo.e2 : eo.e1) + 1, c->n_layers);
                    goto fail;
                }
        }
        eo.calib = cal;
        eo.sampling = s;
        eo.remote = ro;
        eo.log = log_warning;
    }
    if (mode == RUN_HAT) {
        duet_part part = {.n_spans = 2, .span = {{0, ho.input_layers}, {hat_b, c->n_layers}}, .embed = true, .head = true};
        if (!(dev = duet_model_load(model, &part, g.load_flags, err, sizeof err))) goto fail;
        if (calib_path && !(cal = calib_load(calib_path, err, sizeof err))) goto fail;
        ho.calib = cal;
        if (hat_check(dev, &ho, err, sizeof err)) {
            if (calib_path) err_prefix(err, sizeof err, "--calib %s", calib_path);
            goto fail;
        }
        /* the last token generated never runs through the cloud: a prompt may fill the model's context */
        int hat_ctx = n_prompt + (n_tokens > 0 ? n_tokens - 1 : 0);
        if (remote_open_range(&r, dev, &ro, FRAME_MODE_HAT, ho.input_layers, hat_b, hat_ctx, &s, err, sizeof err) ||
            hat_probe(dev, pool, &r, &ho, &hc, err, sizeof err))
            goto fail;
    }
    if (mode != RUN_DEVICE && mode != RUN_EE && mode != RUN_PD && mode != RUN_HAT && remote_open(&r, dev ? dev : meta, &ro, mode == RUN_CLOUD ? FRAME_MODE_CLOUD : FRAME_MODE_SPLIT,
                                          mode == RUN_CLOUD ? 0 : split, n_prompt + n_tokens, &s, err, sizeof err))
        goto fail;
    char note[512] = "";
    int pd_status = mode == RUN_PD ? pd_setup(full, pool, &r, &ro, slowdown, plan_auto, max_tpot, &plan, &rq, err, sizeof err) : 0;
    if (pd_status == 2) {
        fprintf(stderr, "duet run: %s\n", err);
        status = 2;
        goto out;
    }
    if (pd_status) goto fail;

    cli_text o = {tok, json ? stderr : stdout, false};
    fputs(prompt, o.f);
    metrics_start(&mt, MODES[mode]);
    int rc = mode == RUN_DEVICE  ? mode_device_run_slowed(full, pool, slowdown, &rq, cli_text_emit, &o, &mt, err, sizeof err)
             : mode == RUN_CLOUD ? mode_cloud_run(&r, &rq, cli_text_emit, &o, &mt, err, sizeof err)
             : mode == RUN_EE    ? mode_ee_run(dev, pool, &eo, &rq, cli_text_emit, &o, &mt, err, sizeof err)
             : mode == RUN_PD    ? mode_pd_run(full, pool, r.t ? &r : NULL, &plan, slowdown, &rq, cli_text_emit, &o, &mt,
                                               note, sizeof note, err, sizeof err)
             : mode == RUN_HAT   ? mode_hat_run(dev, pool, &r, &ho, &hc, &rq, cli_text_emit, &o, &mt, err, sizeof err)
                                 : mode_split_run(dev, pool, &r, &rq, cli_text_emit, &o, &mt, err, sizeof err);
    fputc('\n', o.f);
    fflush(o.f);
    if (note[0]) fprintf(stderr, "duet run: %s\n", note);
    if (rc || remote_close(&r, err, sizeof err)) goto fail;
    if (use_state) { /* what this run measured, for auto's next predictions */
        if (ran.mode < 0) { /* no prediction to correct, only rates */
            ran = (cost_cand){.mode = mode, .e1 = eo.e1, .e2 = eo.e2, .threshold = eo.threshold,
                              .input_layers = ho.input_layers, .output_layers = ho.output_layers,
                              .calibrated = cal != NULL, .ttft_scale = 1, .tbt_scale = 1};
        }
        auto_learn(&st, &ran, dec ? dec->speed : 0, &mt);
        if (autostate_save(&st, state_file, err, sizeof err)) fprintf(stderr, "duet run: state not saved: %s\n", err);
    }
    if (compare) metrics_fidelity(&mt, ref.ids, ref.tokens);
    if (trace_out) {
        char tnote[384];
        snprintf(tnote, sizeof tnote, "duet run --mode %s -m %.160s, %d prompt tokens, %d generated", MODES[mode], model,
                 n_prompt, mt.tokens);
        if (trace_save(&rec, tnote, trace_out, err, sizeof err)) goto fail;
    }

    char where[192] = "";
    if (mode == RUN_CLOUD || mode == RUN_PD) snprintf(where, sizeof where, " over link %.64s", link_spec);
    if (mode == RUN_SPLIT) snprintf(where, sizeof where, " at layer %d over link %.64s", split, link_spec);
    if (mode == RUN_EE)
        snprintf(where, sizeof where, " with exits %d,%d at threshold %g%s over link %.64s", eo.e1, eo.e2, eo.threshold,
                 cal ? " (calibrated)" : "", eo.standalone ? "none (standalone)" : link_spec);
    if (mode == RUN_HAT)
        snprintf(where, sizeof where, " with cloud layers [%d,%d)%s over link %.64s", ho.input_layers, hat_b,
                 cal ? ", calibrated adapter," : "", link_spec);
    fprintf(stderr, "%s%s: %d tokens, ttft %.1f ms, %.1f tok/s; up %llu B, down %llu B, %llu round trips; "
                    "device %.1f ms, cloud %.1f ms, waiting %.1f ms",
            MODES[mode], where, mt.tokens, mt.tokens ? mt.t_token[0] : 0, mt.total_ms > 0 ? mt.tokens * 1e3 / mt.total_ms : 0,
            (unsigned long long)mt.bytes_up, (unsigned long long)mt.bytes_down, (unsigned long long)mt.round_trips,
            mt.device_compute_ms, mt.cloud_compute_ms, mt.comm_wait_ms);
    if (mode == RUN_EE) {
        fprintf(stderr, "; exits %llu+%llu, cloud requests %llu (rate %.3f)", (unsigned long long)mt.exit_tokens[0],
                (unsigned long long)mt.exit_tokens[1], (unsigned long long)mt.cloud_requests,
                mt.tokens ? (double)mt.cloud_requests / mt.tokens : 0);
        if (mt.fallback_at >= 0) fprintf(stderr, "; standalone from token %d", mt.fallback_at);
    }
    if (mode == RUN_PD)
        fprintf(stderr, "; cloud made %llu tokens, hand-over at %d%s, tpot mean %.1f max %.1f ms (pace %.1f)",
                (unsigned long long)mt.cloud_tokens, mt.handover_at, mt.fallback_at >= 0 ? " (the cloud was lost)" : "",
                mt.tokens > 1 ? (mt.t_token[mt.tokens - 1] - mt.t_token[0]) / (mt.tokens - 1) : 0, max_gap(&mt),
                mt.pace_ms);
    if (mode == RUN_HAT && mt.rounds)
        fprintf(stderr, "; %llu rounds, %.2f drafted and %.2f accepted per round", (unsigned long long)mt.rounds,
                (double)mt.drafted / mt.rounds, (double)mt.accepted / mt.rounds);
    if (compare) fprintf(stderr, "; vs device-only: exact %.4f, ROUGE-L F1 %.4f", mt.exact_match_rate, mt.rouge_l_f1);
    fputc('\n', stderr);
    if (json) metrics_print_json(&mt, stdout);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "duet run: %s\n", err);
out:
    trace_free(&rec);
    trace_free(&rep);
    remote_free(&r);
    free(dec);
    calib_free(cal);
    metrics_free(&mt);
    metrics_free(&ref);
    free(prompt_ids);
    duet_pool_free(pool);
    duet_model_free(full);
    duet_model_free(dev);
    duet_model_free(meta);
    return status;
}
