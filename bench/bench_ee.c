/* bench_ee: CE-CoLLM's Tables 2 and 4 on stories260K (make bench-ee). Every prompt of a prompt file runs in
 * every configuration, configurations interleaved per prompt, over the emulated link and device slowdown
 * given: device, cloud and split baselines; ee at thresholds 0.5..1.0 with the calibrated translators, and
 * the same sweep without them; ee standalone; and at threshold 0.8 the paper's ablations (fp32 instead of
 * fp16, no early exit, no background upload). Fidelity is against a device-only greedy run of each prompt.
 *
 * Writes a markdown table to -o FILE and the threshold curves to FILE.dat (for gnuplot). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duet.h"
#include "engine/calib.h"
#include "modes/mode.h"

enum kind { K_DEVICE, K_CLOUD, K_SPLIT, K_EE };

typedef struct cfg {
    const char *name;
    int kind;
    float threshold;
    int calibrated, enc, background, standalone;
    /* sums over prompts */
    double total, device, cloud, comm, rouge, exact;
    unsigned long long tokens, requests, bytes_up, bytes_down;
    int runs;
} cfg;

static void add(cfg *c, const metrics *mt) {
    c->total += mt->total_ms;
    c->device += mt->device_compute_ms;
    c->cloud += mt->cloud_compute_ms;
    c->comm += mt->comm_wait_ms;
    c->rouge += mt->rouge_l_f1;
    c->exact += mt->exact_match_rate;
    c->tokens += (unsigned long long)mt->tokens;
    c->requests += mt->cloud_requests;
    c->bytes_up += mt->bytes_up;
    c->bytes_down += mt->bytes_down;
    c->runs++;
}

static int run_one(cfg *c, duet_model *full, duet_model *dev, duet_model *dev_split, duet_pool *pool,
                   const calib *cal, const remote_opts *ro, int e1, int e2, const mode_request *rq, const metrics *ref,
                   char *err, size_t errlen) {
    metrics mt;
    metrics_start(&mt, c->name);
    int rc;
    if (c->kind == K_DEVICE) {
        rc = mode_device_run_slowed(full, pool, ro->device_slowdown, rq, NULL, NULL, &mt, err, errlen);
    } else if (c->kind == K_EE) {
        ee_opts o = ee_opts_default();
        o.e1 = e1;
        o.e2 = e2;
        o.threshold = c->threshold;
        o.calib = c->calibrated ? cal : NULL;
        o.standalone = c->standalone;
        o.background_upload = c->background;
        o.sampling = rq->sampling;
        o.remote = *ro;
        o.remote.enc = c->enc;
        rc = mode_ee_run(dev, pool, &o, rq, NULL, NULL, &mt, err, errlen);
    } else {
        remote r;
        int a = c->kind == K_CLOUD ? 0 : e2 + 1;
        remote_opts o = *ro;
        o.enc = c->enc;
        rc = remote_open(&r, c->kind == K_CLOUD ? full : dev_split, &o, c->kind == K_CLOUD ? FRAME_MODE_CLOUD : FRAME_MODE_SPLIT,
                         a, rq->n_prompt + rq->max_tokens, &rq->sampling, err, errlen);
        if (!rc) {
            metrics_start(&mt, c->name);
            rc = c->kind == K_CLOUD ? mode_cloud_run(&r, rq, NULL, NULL, &mt, err, errlen)
                                    : mode_split_run(dev_split, pool, &r, rq, NULL, NULL, &mt, err, errlen);
        }
        if (!rc) rc = remote_close(&r, err, errlen);
        remote_free(&r);
    }
    if (!rc) {
        metrics_fidelity(&mt, ref->ids, ref->tokens);
        add(c, &mt);
    }
    metrics_free(&mt);
    return rc;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_ee MODEL CALIB PROMPTS -o OUT.md [--link SPEC] [--slowdown X] [-n TOKENS] "
                    "[--exits E1,E2] [--max-prompts N] [--machine TEXT]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 4) usage();
    const char *model = argv[1], *calib_path = argv[2], *prompts = argv[3], *out = NULL, *link_spec = "wan",
               *machine = "unknown";
    int n_tokens = 32, e1 = 2, e2 = 3, max_prompts = 1000;
    double slowdown = 4;
    for (int i = 4; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-o")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--link")) link_spec = argv[i + 1];
        else if (!strcmp(argv[i], "--slowdown")) slowdown = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "-n")) n_tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-prompts")) max_prompts = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--machine")) machine = argv[i + 1];
        else if (!strcmp(argv[i], "--exits")) sscanf(argv[i + 1], "%d,%d", &e1, &e2);
        else usage();
    }
    if (!out) usage();
    char err[512];
    duet_part pd = {.n_spans = 1, .span = {{0, e2 + 1}}, .embed = true, .head = true};
    duet_part ps = {.n_spans = 1, .span = {{0, e2 + 1}}, .embed = true};
    duet_model *full = duet_model_load(model, NULL, 0, err, sizeof err);
    duet_model *dev = full ? duet_model_load(model, &pd, 0, err, sizeof err) : NULL;
    duet_model *dev_split = dev ? duet_model_load(model, &ps, 0, err, sizeof err) : NULL;
    calib *cal = dev_split ? calib_load(calib_path, err, sizeof err) : NULL;
    duet_pool *pool = cal ? duet_pool_init(1, err, sizeof err) : NULL;
    FILE *pf = pool ? fopen(prompts, "r") : NULL;
    if (!pf) {
        fprintf(stderr, "bench_ee: %s\n", pool ? "cannot open the prompt file" : err);
        return 1;
    }
    remote_opts ro = remote_opts_default();
    ro.model_path = model;
    ro.device_slowdown = slowdown;
    ro.timeout_ms = 30000;
    if (link_parse(link_spec, &ro.link, err, sizeof err)) {
        fprintf(stderr, "bench_ee: --link: %s\n", err);
        return 2;
    }
    const duet_tokenizer *tok = duet_model_tokenizer(full, err, sizeof err);

    static const float T[] = {0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1.0f};
    enum { NT = 6 };
    cfg cfgs[32];
    int nc = 0;
    cfgs[nc++] = (cfg){.name = "device", .kind = K_DEVICE};
    cfgs[nc++] = (cfg){.name = "cloud", .kind = K_CLOUD, .enc = FRAME_ENC_F16};
    cfgs[nc++] = (cfg){.name = "split (naive cloud-edge, fp16)", .kind = K_SPLIT, .enc = FRAME_ENC_F16};
    cfgs[nc++] = (cfg){.name = "ee standalone", .kind = K_EE, .threshold = 1, .calibrated = 1, .enc = FRAME_ENC_F16,
                       .background = 1, .standalone = 1};
    int first_cal = nc;
    for (int t = 0; t < NT; t++)
        cfgs[nc++] = (cfg){.name = "ee", .kind = K_EE, .threshold = T[t], .calibrated = 1, .enc = FRAME_ENC_F16, .background = 1};
    int first_raw = nc;
    for (int t = 0; t < NT; t++)
        cfgs[nc++] = (cfg){.name = "ee, no translators", .kind = K_EE, .threshold = T[t], .enc = FRAME_ENC_F16, .background = 1};
    int first_abl = nc;
    cfgs[nc++] = (cfg){.name = "ablation: fp32 rows", .kind = K_EE, .threshold = 0.8f, .calibrated = 1, .enc = FRAME_ENC_F32,
                       .background = 1};
    cfgs[nc++] = (cfg){.name = "ablation: no early exit", .kind = K_EE, .threshold = 1.0f, .calibrated = 1,
                       .enc = FRAME_ENC_F16, .background = 1};
    cfgs[nc++] = (cfg){.name = "ablation: no background upload", .kind = K_EE, .threshold = 0.8f, .calibrated = 1,
                       .enc = FRAME_ENC_F16, .background = 0};

    char line[1024];
    int n_prompts = 0;
    while (n_prompts < max_prompts && fgets(line, sizeof line, pf)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        int ids[512];
        int n = duet_tokenize(tok, line, strlen(line), true, ids, 512);
        if (n < 1 || n > 512) continue;
        mode_request rq = {ids, n, n_tokens, {.temperature = 0, .top_p = 1, .seed = 1}, -1};
        metrics ref;
        metrics_start(&ref, "device");
        if (mode_device_run(full, pool, &rq, NULL, NULL, &ref, err, sizeof err)) goto fail;
        for (int c = 0; c < nc; c++)
            if (run_one(&cfgs[c], full, dev, dev_split, pool, cal, &ro, e1, e2, &rq, &ref, err, sizeof err)) {
                fprintf(stderr, "bench_ee: %s: %s\n", cfgs[c].name, err);
                goto fail;
            }
        metrics_free(&ref);
        n_prompts++;
        fprintf(stderr, "\rbench_ee: prompt %d done", n_prompts);
    }
    fputc('\n', stderr);
    fclose(pf);

    FILE *f = fopen(out, "w");
    if (!f) goto fail;
    fprintf(f, "| configuration | threshold | total s | device s | cloud s | comm s | cloud request rate | bytes up / token | "
               "ROUGE-L vs device | exact match |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (int c = 0; c < nc; c++) {
        cfg *x = &cfgs[c];
        char th[16] = "-";
        if (x->kind == K_EE && !x->standalone) snprintf(th, sizeof th, "%.1f", x->threshold);
        char rate[16] = "-";
        if (x->kind != K_DEVICE && x->kind != K_CLOUD) snprintf(rate, sizeof rate, "%.1f%%", 100.0 * x->requests / x->tokens);
        fprintf(f, "| %s | %s | %.3f | %.3f | %.3f | %.3f | %s | %.1f | %.4f | %.4f |\n", x->name, th, x->total / 1e3,
                x->device / 1e3, x->cloud / 1e3, x->comm / 1e3, rate, (double)x->bytes_up / x->tokens, x->rouge / x->runs,
                x->exact / x->runs);
    }
    fprintf(f, "\n%d prompts x %d tokens; exits after layers %d and %d; link %s; device slowdown %g; %s\n", n_prompts,
            n_tokens, e1, e2, link_spec, slowdown, machine);
    /* The paper's headline, our way: the fewest cloud requests (and least cloud compute) at ROUGE-L >= 0.97. */
    int best = -1;
    for (int c = first_cal; c < first_cal + NT; c++)
        if (cfgs[c].rouge / cfgs[c].runs >= 0.97 && (best < 0 || cfgs[c].requests < cfgs[best].requests)) best = c;
    if (best >= 0) {
        cfg *b = &cfgs[best], *cl = &cfgs[1];
        fprintf(f, "\nAt ROUGE-L >= 0.97 the fewest cloud requests come at threshold %.1f (calibrated): %.1f%% of tokens, "
                   "i.e. %.1f%% fewer requests than split or ee at 1.0 (every token), at ROUGE-L %.4f; cloud compute "
                   "%.1f%% below cloud-only (%.3f s against %.3f s).\n",
                b->threshold, 100.0 * b->requests / b->tokens, 100 - 100.0 * b->requests / b->tokens, b->rouge / b->runs,
                100 - 100 * b->cloud / cl->cloud, b->cloud / 1e3, cl->cloud / 1e3);
    } else {
        fprintf(f, "\nNo calibrated threshold below 1.0 reaches ROUGE-L >= 0.97.\n");
    }
    fclose(f);
    char dat[1024];
    snprintf(dat, sizeof dat, "%s.dat", out);
    if (!(f = fopen(dat, "w"))) goto fail;
    fprintf(f, "# threshold  request_rate_calibrated  rouge_calibrated  request_rate_raw  rouge_raw\n");
    for (int t = 0; t < NT; t++) {
        cfg *a = &cfgs[first_cal + t], *b = &cfgs[first_raw + t];
        fprintf(f, "%.2f %.4f %.4f %.4f %.4f\n", T[t], (double)a->requests / a->tokens, a->rouge / a->runs,
                (double)b->requests / b->tokens, b->rouge / b->runs);
    }
    fclose(f);
    (void)first_abl;
    calib_free(cal);
    duet_pool_free(pool);
    duet_model_free(dev_split);
    duet_model_free(dev);
    duet_model_free(full);
    return 0;
fail:
    fprintf(stderr, "bench_ee: %s\n", err);
    return 1;
}
