/* bench_pd: P/D-Device against device-only and cloud-only on one emulated deployment: a device `slowdown`
 * times slower than this machine, a cloud that is this machine (one compute thread, in-process on loopback:
 * the real server, transport and protocol), and an emulated link. Timing only (synthetic weights).
 *
 * Part 1, per slowdown and prompt length: TTFT, TPOT as the user sees it (mean, p90, max, and the pace), the
 * cloud's busy time per request (the compute time its answers report) and the hand-over point, for
 * cloud-only and for pd with --pd-plan auto (probe, padded PING, cost model). Device-only is measured at full
 * speed and multiplied by the slowdown, which is what --device-slowdown's sleeping would give, without
 * spending minutes asleep on long prompts.
 * Part 2, at the first slowdown: D devices at once share the cloud, each one request, pd against cloud-only:
 * the cloud's busy time per request, the requests per minute that busy time allows (its capacity: the
 * cloud's compute is one thread, shared by every session), and the requests per minute completed.
 *
 * Writes JSON lines on stdout, markdown tables into DIR/pd-tables.md and gnuplot data into DIR/pd-*.dat. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/stats.h"
#include "modes/pdplan.h"

typedef struct bench {
    duet_model *m;
    const char *addr;
    link_params link;
    const char *link_spec;
    int n_tokens;
} bench;

typedef struct result {
    double ttft, tpot_mean, tpot_p90, tpot_max, pace, cloud_ms, total;
    int cloud_tokens, handover_at, chunk;
} result;

static void prompt_ids(int *ids, int n, int vocab, int seed) {
    ids[0] = 1;
    for (int i = 1; i < n; i++) ids[i] = 3 + (seed * 131 + i * 7919) % (vocab - 3);
}

static void summarize(const metrics *mt, result *r) {
    int n = mt->tokens > 1 ? mt->tokens - 1 : 0;
    double *g = malloc(sizeof(double) * (size_t)(n ? n : 1));
    double sum = 0;
    for (int i = 0; i < n; i++) sum += g[i] = mt->t_token[i + 1] - mt->t_token[i];
    stats_sort(g, n);
    r->ttft = mt->tokens ? mt->t_token[0] : 0;
    r->tpot_mean = n ? sum / n : 0;
    r->tpot_p90 = n ? stats_percentile(g, n, 0.9) : 0;
    r->tpot_max = n ? g[n - 1] : 0;
    r->cloud_ms = mt->cloud_compute_ms;
    r->total = mt->total_ms;
    r->cloud_tokens = (int)mt->cloud_tokens;
    r->handover_at = mt->handover_at;
    r->pace = mt->pace_ms;
    free(g);
}

/* The plan pd's CLI would choose for this request on session r (measured network, probed device). */
static int plan_for(const bench *b, remote *r, const pd_costs *dev, double slowdown, int P, pd_plan *p, char *err,
                    size_t errlen) {
    pd_costs c = *dev;
    double net_ms, down_ms = b->link.down_bps ? (FRAME_HEADER_SIZE + FRAME_TOKENS_FIXED + 4) * 8e3 / (double)b->link.down_bps : 0;
    if (pdplan_measure_net(r, P, &net_ms, err, errlen)) return -1;
    pdplan_cloud_estimate(&c, net_ms, down_ms, slowdown, P);
    char note[256];
    return pdplan_auto(&c, P, b->n_tokens, 0, 0, p, NULL, note, sizeof note, err, errlen);
}

/* One request in cloud (pd NULL plan and !is_pd) or pd mode; plan NULL: pd chooses it as the CLI would. */
static int request(const bench *b, int is_pd, const pd_costs *dev, const pd_plan *plan, double slowdown, int P,
                   int seed, result *out, char *err, size_t errlen) {
    int vocab = duet_model_config(b->m)->vocab_size;
    int *ids = malloc(sizeof(int) * (size_t)P);
    if (!ids) return -1;
    prompt_ids(ids, P, vocab, seed);
    mode_request rq = {ids, P, b->n_tokens, {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1}, -1};
    remote_opts o = remote_opts_default();
    o.cloud = b->addr;
    o.link = b->link;
    o.device_slowdown = slowdown;
    o.timeout_ms = 300000;
    remote r;
    duet_pool *pool = duet_pool_init(1, err, errlen);
    metrics mt;
    metrics_start(&mt, is_pd ? "pd" : "cloud");
    pd_plan p = plan ? *plan : (pd_plan){0};
    int rc = pool ? remote_open(&r, b->m, &o, is_pd ? FRAME_MODE_PD : FRAME_MODE_CLOUD, 0, P + b->n_tokens,
                                &rq.sampling, err, errlen)
                  : -1;
    if (!rc && is_pd && !plan) rc = plan_for(b, &r, dev, slowdown, P, &p, err, errlen);
    if (!rc) {
        char note[512] = "";
        metrics_start(&mt, is_pd ? "pd" : "cloud");
        rc = is_pd ? mode_pd_run(b->m, pool, &r, &p, slowdown, &rq, NULL, NULL, &mt, note, sizeof note, err, errlen)
                   : mode_cloud_run(&r, &rq, NULL, NULL, &mt, err, errlen);
        if (!rc && note[0]) fprintf(stderr, "bench_pd: note: %s\n", note);
    }
    if (!rc) rc = remote_close(&r, err, errlen);
    else remote_free(&r);
    if (!rc) {
        summarize(&mt, out);
        out->chunk = p.chunk;
    }
    metrics_free(&mt);
    duet_pool_free(pool);
    free(ids);
    return rc;
}

typedef struct job {
    const bench *b;
    int is_pd;
    const pd_plan *plan;
    double slowdown;
    int P, seed, rc;
    result r;
    char err[256];
} job;

static void *job_main(void *arg) {
    job *j = arg;
    j->rc = request(j->b, j->is_pd, NULL, j->plan, j->slowdown, j->P, j->seed, &j->r, j->err, sizeof j->err);
    return NULL;
}

static int parse_list(const char *s, double *out, int cap) {
    int n = 0;
    for (const char *p = s; *p && n < cap;) {
        out[n++] = atof(p);
        p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
    }
    return n;
}

static FILE *open_in(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) fprintf(stderr, "bench_pd: cannot write %s\n", path);
    return f;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : NULL, *slow_s = "4,8", *prompts_s = "32,128,512,2016",
               *devices_s = "1,2,4,8,16", *dir = "build";
    bench b = {.link_spec = "wan", .n_tokens = 64};
    int tp_prompt = 128, long_n = 256;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "-s")) slow_s = v;
        else if (!strcmp(a, "-l")) b.link_spec = v;
        else if (!strcmp(a, "-p")) prompts_s = v;
        else if (!strcmp(a, "-n")) b.n_tokens = atoi(v);
        else if (!strcmp(a, "-d")) devices_s = v;
        else if (!strcmp(a, "--tp-prompt")) tp_prompt = atoi(v);
        else if (!strcmp(a, "--long")) long_n = atoi(v);
        else if (!strcmp(a, "-o")) dir = v;
        else path = NULL;
    }
    if (!path || path[0] == '-' || argc % 2 || b.n_tokens < 2) {
        fprintf(stderr, "usage: bench_pd MODEL [-s 4,8] [-l wan] [-p 32,128,512,2016] [-n 64] [-d 1,2,4,8,16] "
                        "[--tp-prompt 128] [--long 256] [-o DIR]\n");
        return 2;
    }
    char err[512];
    if (link_parse(b.link_spec, &b.link, err, sizeof err)) {
        fprintf(stderr, "bench_pd: %s\n", err);
        return 2;
    }
    double slows[8], prompts[16], devs[16];
    int n_slow = parse_list(slow_s, slows, 8), n_prompt = parse_list(prompts_s, prompts, 16),
        n_dev = parse_list(devices_s, devs, 16);
    b.m = duet_model_load(path, NULL, 0, err, sizeof err);
    server_opts so = server_opts_default();
    so.host = "127.0.0.1";
    cloud_server *srv = b.m ? server_init(b.m, &so, err, sizeof err) : NULL;
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    if (!srv || !pool || server_start(srv, err, sizeof err)) {
        fprintf(stderr, "bench_pd: %s\n", err);
        return 1;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", server_port(srv));
    b.addr = addr;
    duet_model_fingerprint(b.m);
    const duet_config *c = duet_model_config(b.m);
    FILE *md = open_in(dir, "pd-tables.md"), *ttf = open_in(dir, "pd-ttft.dat"), *tpf = open_in(dir, "pd-tpot.dat"),
         *clf = open_in(dir, "pd-cloud.dat"), *thf = open_in(dir, "pd-throughput.dat");
    if (!md || !ttf || !tpf || !clf || !thf) return 1;
    fprintf(stderr, "bench_pd: %s (%d layers, dim %d), link %s, %d generated tokens, greedy\n", path, c->n_layers, c->dim,
            b.link_spec, b.n_tokens);

    /* device-only at full speed: prefill time and decode step per prompt length (the slowdown multiplies them) */
    double dev_ttft[16], dev_step[16];
    for (int k = 0; k < n_prompt; k++) {
        int P = (int)prompts[k], *ids = malloc(sizeof(int) * (size_t)P);
        prompt_ids(ids, P, c->vocab_size, k);
        mode_request rq = {ids, P, 4, {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1}, -1};
        metrics mt;
        metrics_start(&mt, "device");
        if (mode_device_run(b.m, pool, &rq, NULL, NULL, &mt, err, sizeof err)) {
            fprintf(stderr, "bench_pd: device: %s\n", err);
            return 1;
        }
        dev_ttft[k] = mt.t_token[0];
        dev_step[k] = (mt.t_token[mt.tokens - 1] - mt.t_token[0]) / (mt.tokens - 1);
        metrics_free(&mt);
        free(ids);
    }
    /* cloud-only does not depend on the device: once per prompt length */
    result cl[16];
    for (int k = 0; k < n_prompt; k++)
        if (request(&b, 0, NULL, NULL, 1, (int)prompts[k], k, &cl[k], err, sizeof err)) {
            fprintf(stderr, "bench_pd: cloud: %s\n", err);
            return 1;
        }
    fprintf(md, "### TTFT, TPOT and the cloud's busy time per request (link %s, %d tokens generated)\n\n", b.link_spec,
            b.n_tokens);
    fprintf(md, "| slowdown | prompt | device TTFT ms | cloud TTFT ms | pd TTFT ms | pd vs device | pace ms | pd TPOT mean / p90 / max ms | "
                "max vs pace | device TPOT ms | cloud busy ms: cloud-only / pd | ratio | hand-over at (cloud tokens) | chunk |\n");
    fprintf(md, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    fprintf(ttf, "# slowdown prompt device_ttft cloud_ttft pd_ttft\n");
    fprintf(tpf, "# slowdown prompt pace pd_mean pd_p90 pd_max device_step cloud_mean\n");
    fprintf(clf, "# slowdown prompt cloud_only_busy pd_busy handover_at cloud_tokens\n");
    double red_lo = INFINITY, red_hi = -INFINITY, over_hi = -INFINITY, busy_lo = INFINITY, busy_hi = 0;
    for (int si = 0; si < n_slow; si++) {
        double s = slows[si];
        pd_costs dev;
        if (pdplan_probe(b.m, pool, s, &dev, err, sizeof err)) {
            fprintf(stderr, "bench_pd: probe: %s\n", err);
            return 1;
        }
        for (int k = 0; k < n_prompt; k++) {
            int P = (int)prompts[k];
            result pd;
            if (request(&b, 1, &dev, NULL, s, P, k, &pd, err, sizeof err)) {
                fprintf(stderr, "bench_pd: pd: %s\n", err);
                return 1;
            }
            double dt = s * dev_ttft[k], ds = s * dev_step[k];
            printf("{\"bench\":\"pd\",\"part\":\"request\",\"slowdown\":%g,\"link\":\"%s\",\"prompt\":%d,\"tokens\":%d,"
                   "\"device\":{\"ttft_ms\":%.1f,\"tpot_ms\":%.2f},\"cloud\":{\"ttft_ms\":%.1f,\"tpot_mean\":%.2f,"
                   "\"tpot_max\":%.2f,\"cloud_busy_ms\":%.1f},\"pd\":{\"ttft_ms\":%.1f,\"pace_ms\":%.2f,\"tpot_mean\":%.2f,"
                   "\"tpot_p90\":%.2f,\"tpot_max\":%.2f,\"cloud_busy_ms\":%.1f,\"cloud_tokens\":%d,\"handover_at\":%d,"
                   "\"chunk\":%d,\"total_ms\":%.1f}}\n",
                   s, b.link_spec, P, b.n_tokens, dt, ds, cl[k].ttft, cl[k].tpot_mean, cl[k].tpot_max, cl[k].cloud_ms,
                   pd.ttft, pd.pace, pd.tpot_mean, pd.tpot_p90, pd.tpot_max, pd.cloud_ms, pd.cloud_tokens, pd.handover_at,
                   pd.chunk, pd.total);
            fflush(stdout);
            fprintf(md, "| %g | %d | %.0f | %.0f | %.0f | %+.0f%% | %.1f | %.1f / %.1f / %.1f | %+.0f%% | %.1f | %.0f / %.0f | %.1fx | %d (%d) | %d |\n",
                    s, P, dt, cl[k].ttft, pd.ttft, 100 * (pd.ttft / dt - 1), pd.pace, pd.tpot_mean, pd.tpot_p90,
                    pd.tpot_max, pd.pace > 0 ? 100 * (pd.tpot_max / pd.pace - 1) : 0, ds, cl[k].cloud_ms, pd.cloud_ms,
                    pd.cloud_ms > 0 ? cl[k].cloud_ms / pd.cloud_ms : 0, pd.handover_at, pd.cloud_tokens, pd.chunk);
            fprintf(ttf, "%g %d %.1f %.1f %.1f\n", s, P, dt, cl[k].ttft, pd.ttft);
            double red = 100 * (1 - pd.ttft / dt), over = pd.pace > 0 ? 100 * (pd.tpot_max / pd.pace - 1) : 0,
                   ratio = pd.cloud_ms > 0 ? cl[k].cloud_ms / pd.cloud_ms : 0;
            red_lo = fmin(red_lo, red), red_hi = fmax(red_hi, red), over_hi = fmax(over_hi, over);
            busy_lo = fmin(busy_lo, ratio), busy_hi = fmax(busy_hi, ratio);
            fprintf(tpf, "%g %d %.2f %.2f %.2f %.2f %.2f %.2f\n", s, P, pd.pace, pd.tpot_mean, pd.tpot_p90, pd.tpot_max, ds,
                    cl[k].tpot_mean);
            fprintf(clf, "%g %d %.1f %.1f %d %d\n", s, P, cl[k].cloud_ms, pd.cloud_ms, pd.handover_at, pd.cloud_tokens);
        }
        fprintf(ttf, "\n\n");
        fprintf(tpf, "\n\n");
        fprintf(clf, "\n\n");
    }

    /* part 1b: long answers, where the cloud's share is what pd saves, at the first slowdown */
    double s = slows[0], cap_hi = 0;
    b.n_tokens = long_n;
    fprintf(md, "\n### Long answers (slowdown %g, link %s, %d tokens generated)\n\n", s, b.link_spec, long_n);
    fprintf(md, "| prompt | cloud TTFT ms | pd TTFT ms | pace ms | pd TPOT mean / max ms | cloud busy ms: cloud-only / pd | "
                "ratio | hand-over at |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    {
        pd_costs dev;
        if (pdplan_probe(b.m, pool, s, &dev, err, sizeof err)) return 1;
        int lp[2] = {32, tp_prompt};
        for (int k = 0; k < 2; k++) {
            result rc, rp;
            if (request(&b, 0, NULL, NULL, 1, lp[k], 50 + k, &rc, err, sizeof err) ||
                request(&b, 1, &dev, NULL, s, lp[k], 50 + k, &rp, err, sizeof err)) {
                fprintf(stderr, "bench_pd: long: %s\n", err);
                return 1;
            }
            double ratio = rp.cloud_ms > 0 ? rc.cloud_ms / rp.cloud_ms : 0;
            busy_lo = fmin(busy_lo, ratio), busy_hi = fmax(busy_hi, ratio);
            printf("{\"bench\":\"pd\",\"part\":\"long\",\"slowdown\":%g,\"link\":\"%s\",\"prompt\":%d,\"tokens\":%d,"
                   "\"cloud\":{\"ttft_ms\":%.1f,\"cloud_busy_ms\":%.1f},\"pd\":{\"ttft_ms\":%.1f,\"pace_ms\":%.2f,"
                   "\"tpot_mean\":%.2f,\"tpot_max\":%.2f,\"cloud_busy_ms\":%.1f,\"handover_at\":%d}}\n",
                   s, b.link_spec, lp[k], long_n, rc.ttft, rc.cloud_ms, rp.ttft, rp.pace, rp.tpot_mean, rp.tpot_max,
                   rp.cloud_ms, rp.handover_at);
            fflush(stdout);
            fprintf(md, "| %d | %.0f | %.0f | %.1f | %.1f / %.1f | %.0f / %.0f | %.1fx | %d |\n", lp[k], rc.ttft, rp.ttft,
                    rp.pace, rp.tpot_mean, rp.tpot_max, rc.cloud_ms, rp.cloud_ms, ratio, rp.handover_at);
        }
    }

    /* part 2: devices sharing the cloud, at the first slowdown, long answers */
    pd_costs dev;
    pd_plan plan;
    {
        remote r;
        remote_opts o = remote_opts_default();
        o.cloud = addr;
        o.link = b.link;
        duet_sampling smp = {0, 0, 1, 1};
        if (pdplan_probe(b.m, pool, s, &dev, err, sizeof err) ||
            remote_open(&r, b.m, &o, FRAME_MODE_PD, 0, tp_prompt + b.n_tokens, &smp, err, sizeof err) ||
            plan_for(&b, &r, &dev, s, tp_prompt, &plan, err, sizeof err) || remote_close(&r, err, sizeof err)) {
            fprintf(stderr, "bench_pd: plan: %s\n", err);
            return 1;
        }
    }
    fprintf(md, "\n### Devices sharing one cloud (slowdown %g, link %s, prompt %d, %d tokens, one request each)\n\n", s,
            b.link_spec, tp_prompt, b.n_tokens);
    fprintf(md, "| devices | cloud busy ms per request: cloud-only / pd | capacity req/min: cloud-only / pd | ratio | "
                "completed req/min: cloud-only / pd | pd max TPOT ms (pace %.1f) |\n| --- | --- | --- | --- | --- | --- |\n",
            plan.tpot_ms);
    fprintf(thf, "# devices cloud_busy_per_req pd_busy_per_req cap_cloud cap_pd wall_cloud wall_pd\n");
    for (int di = 0; di < n_dev; di++) {
        int D = (int)devs[di];
        double busy[2], wall[2], maxtpot = 0;
        for (int is_pd = 0; is_pd < 2; is_pd++) {
            job *jobs = calloc((size_t)D, sizeof *jobs);
            pthread_t *th = calloc((size_t)D, sizeof *th);
            double t0 = clock_now_ms();
            for (int i = 0; i < D; i++) {
                jobs[i] = (job){.b = &b, .is_pd = is_pd, .plan = &plan, .slowdown = s, .P = tp_prompt, .seed = 100 + i};
                pthread_create(&th[i], NULL, job_main, &jobs[i]);
            }
            busy[is_pd] = 0;
            for (int i = 0; i < D; i++) {
                pthread_join(th[i], NULL);
                if (jobs[i].rc) {
                    fprintf(stderr, "bench_pd: device %d: %s\n", i, jobs[i].err);
                    return 1;
                }
                busy[is_pd] += jobs[i].r.cloud_ms / D;
                if (is_pd && jobs[i].r.tpot_max > maxtpot) maxtpot = jobs[i].r.tpot_max;
            }
            wall[is_pd] = clock_now_ms() - t0;
            free(jobs);
            free(th);
        }
        double cap0 = 60000 / busy[0], cap1 = 60000 / busy[1], w0 = 60000.0 * D / wall[0], w1 = 60000.0 * D / wall[1];
        printf("{\"bench\":\"pd\",\"part\":\"throughput\",\"slowdown\":%g,\"link\":\"%s\",\"devices\":%d,\"prompt\":%d,"
               "\"tokens\":%d,\"cloud\":{\"busy_ms_per_request\":%.1f,\"capacity_per_min\":%.1f,\"completed_per_min\":%.1f},"
               "\"pd\":{\"busy_ms_per_request\":%.1f,\"capacity_per_min\":%.1f,\"completed_per_min\":%.1f,\"tpot_max\":%.1f}}\n",
               s, b.link_spec, D, tp_prompt, b.n_tokens, busy[0], cap0, w0, busy[1], cap1, w1, maxtpot);
        fflush(stdout);
        fprintf(md, "| %d | %.0f / %.0f | %.0f / %.0f | %.1fx | %.1f / %.1f | %.0f |\n", D, busy[0], busy[1], cap0, cap1,
                cap1 / cap0, w0, w1, maxtpot);
        fprintf(thf, "%d %.1f %.1f %.1f %.1f %.1f %.1f\n", D, busy[0], busy[1], cap0, cap1, w0, w1);
        cap_hi = fmax(cap_hi, cap1 / cap0);
    }
    fprintf(md, "\n### Against the paper's figures and the issue's targets\n\n| | paper (abstract) | target | here |\n"
                "| --- | --- | --- | --- |\n"
                "| TTFT vs device-only | at least 60%% lower | at least 70%% lower | %.0f%% to %.0f%% lower |\n"
                "| max TPOT | tens of ms | within 20%% of the pace | at most %+.0f%% of the pace |\n"
                "| cloud per request | throughput up to 15x | busy time 15x lower | busy time %.1fx to %.1fx lower; "
                "capacity up to %.1fx |\n",
            red_lo, red_hi, over_hi, busy_lo, busy_hi, cap_hi);
    fclose(md);
    fclose(ttf);
    fclose(tpf);
    fclose(clf);
    fclose(thf);
    server_free(srv);
    duet_pool_free(pool);
    duet_model_free(b.m);
    return 0;
}
