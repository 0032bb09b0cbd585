/* bench_cloud: how one cloud scales with the devices it serves. For each device count N, N device threads each
 * open a session (split or cloud mode) to one in-process cloud on loopback (real server, transport and protocol)
 * and generate T tokens at once; reports the cloud's throughput (tokens/s over all sessions) and the per-token
 * latency the devices see (p50/p99 of the gaps between tokens over every device, the worst device's own p99, and
 * the time to first token), with the cloud's scheduler batching the sessions and without (--no-batching), the
 * two measured alternately at each device count.
 *
 * The devices run on the same cores as the cloud, so the split is at layer 1 by default: the device part is
 * one layer, the cloud's is everything else, and the measurement is mostly the cloud's. In cloud mode the
 * devices compute nothing. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/stats.h"
#include "modes/mode.h"

typedef struct job {
    duet_model *m;
    remote_opts o;
    int mode, split, n_prompt, n_tokens, seed; /* mode: FRAME_MODE_SPLIT or FRAME_MODE_CLOUD */
    pthread_barrier_t *go;
    metrics mt;
    uint64_t wire_up, wire_down; /* TCP bytes of the request (after the handshake), TLS records included */
    double t_done;
    int rc;
    char err[256];
} job;

static void *device_main(void *arg) {
    job *j = arg;
    int prompt[4096]; /* [n_prompt] ids: BOS, then a different stretch of the vocabulary per device */
    int vocab = duet_model_config(j->m)->vocab_size;
    prompt[0] = 1;
    for (int i = 1; i < j->n_prompt; i++) prompt[i] = 3 + (j->seed * 131 + i * 7) % (vocab - 3);
    mode_request rq = {prompt, j->n_prompt, j->n_tokens, {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1}, -1};
    remote r;
    duet_pool *pool = duet_pool_init(1, j->err, sizeof j->err);
    int split = j->mode == FRAME_MODE_SPLIT;
    j->rc = pool ? remote_open(&r, j->m, &j->o, j->mode, split ? j->split : 0, j->n_prompt + j->n_tokens,
                               &rq.sampling, j->err, sizeof j->err)
                 : -1;
    pthread_barrier_wait(j->go); /* every session is open: generation starts together */
    metrics_start(&j->mt, split ? "split" : "cloud");
    uint64_t up0 = 0, down0 = 0, up1 = 0, down1 = 0;
    if (!j->rc) transport_wire_bytes(r.t, &up0, &down0);
    if (!j->rc)
        j->rc = split ? mode_split_run(j->m, pool, &r, &rq, NULL, NULL, &j->mt, j->err, sizeof j->err)
                      : mode_cloud_run(&r, &rq, NULL, NULL, &j->mt, j->err, sizeof j->err);
    j->t_done = clock_now_ms();
    if (!j->rc && !transport_wire_bytes(r.t, &up1, &down1)) j->wire_up = up1 - up0, j->wire_down = down1 - down0;
    if (!j->rc) j->rc = remote_close(&r, j->err, sizeof j->err);
    else if (pool) remote_free(&r);
    duet_pool_free(pool);
    return NULL;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_cloud MODEL [-d 1,2,4,8,16,32] [-n TOKENS] [-p PROMPT] [--split A] [-t CLOUD_THREADS]\n"
                    "       [--modes split,cloud] [--batching on|off|both] [--tls DIR (ca.crt, srv.crt, srv.key: TLS 1.3)]\n"
                    "  sessions against one in-process cloud (batching: its scheduler; off: --no-batching; both: the two\n"
                    "  alternately at each device count); JSON lines on stdout, a table on stderr\n");
}

/* One measurement: n devices of `mode` against srv at addr. Prints a table row and a JSON line; 0 or 1. */
typedef struct setup {
    duet_model *dev;
    const char *path, *tls_dir, *ca;
    int L, split, n_prompt, n_tokens, threads;
} setup;

static int measure(const setup *u, cloud_server *srv, const char *addr, int batching, int mode, int n) {
    job *jobs = calloc((size_t)n, sizeof *jobs);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    double *gaps = malloc(sizeof(double) * (size_t)n * u->n_tokens), *ttft = malloc(sizeof(double) * (size_t)n);
    double *mine = malloc(sizeof(double) * (size_t)u->n_tokens);
    if (!jobs || !th || !gaps || !ttft || !mine) return 1;
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        jobs[i] = (job){.m = u->dev, .o = remote_opts_default(), .mode = mode, .split = u->split,
                        .n_prompt = u->n_prompt, .n_tokens = u->n_tokens, .seed = i, .go = &go};
        jobs[i].o.cloud = addr;
        jobs[i].o.timeout_ms = 600000; /* 32 devices on a big model queue for far longer than remote's 30 s */
        jobs[i].o.tls_ca = u->tls_dir ? u->ca : NULL;
        pthread_create(&th[i], NULL, device_main, &jobs[i]);
    }
    server_stats s0;
    server_stats_get(srv, &s0);
    pthread_barrier_wait(&go);
    double t0 = clock_now_ms(), t_end = t0, worst = 0;
    int n_gaps = 0, status = 0;
    long tokens = 0;
    uint64_t wire_up = 0, wire_down = 0, frame_up = 0, frame_down = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        job *j = &jobs[i];
        if (j->rc) {
            fprintf(stderr, "bench_cloud: device %d: %s\n", i, j->err);
            status = 1;
            continue;
        }
        if (j->t_done > t_end) t_end = j->t_done;
        tokens += j->mt.tokens;
        wire_up += j->wire_up;
        wire_down += j->wire_down;
        frame_up += j->mt.bytes_up;
        frame_down += j->mt.bytes_down;
        ttft[i] = j->mt.tokens ? j->mt.t_token[0] : 0;
        int n_mine = 0;
        for (int k = 1; k < j->mt.tokens; k++) {
            double g = j->mt.t_token[k] - j->mt.t_token[k - 1];
            gaps[n_gaps++] = g;
            mine[n_mine++] = g;
        }
        stats_sort(mine, n_mine);
        double p99 = stats_percentile(mine, n_mine, 0.99);
        if (p99 > worst) worst = p99;
        metrics_free(&j->mt);
    }
    server_stats s1;
    server_stats_get(srv, &s1);
    stats_sort(gaps, n_gaps);
    stats_sort(ttft, n);
    double tps = t_end > t0 ? tokens * 1e3 / (t_end - t0) : 0;
    double per = tokens ? 1.0 / (double)tokens : 0;
    const char *mname = mode == FRAME_MODE_SPLIT ? "split" : "cloud";
    fprintf(stderr, "%6s %5s %8d %10.1f %11.2f %11.2f %11.2f %11.2f %11.2f %8llu %14.1f %14.1f\n", mname,
            batching ? "on" : "off", n, tps, stats_percentile(gaps, n_gaps, 0.5), stats_percentile(gaps, n_gaps, 0.99),
            worst, stats_percentile(ttft, n, 0.5), stats_percentile(ttft, n, 0.99),
            (unsigned long long)(s1.steps - s0.steps), (double)wire_up * per, (double)wire_down * per);
    printf("{\"bench\":\"cloud\",\"model\":\"%s\",\"layers\":%d,\"mode\":\"%s\",\"batching\":%s,\"split\":%d,"
           "\"cloud_threads\":%d,\"devices\":%d,\"prompt_tokens\":%d,\"tokens_per_device\":%d,\"tokens\":%ld,"
           "\"wall_ms\":%.1f,\"tokens_per_s\":%.2f,\"token_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"worst_device_p99\":%.3f},"
           "\"ttft_ms\":{\"p50\":%.3f,\"p99\":%.3f},\"cloud_steps\":%llu,\"tls\":%s,"
           "\"frame_bytes_per_token\":{\"up\":%.1f,\"down\":%.1f},\"wire_bytes_per_token\":{\"up\":%.1f,\"down\":%.1f}}\n",
           u->path, u->L, mname, batching ? "true" : "false", mode == FRAME_MODE_SPLIT ? u->split : 0, u->threads, n,
           u->n_prompt, u->n_tokens, tokens, t_end - t0, tps, stats_percentile(gaps, n_gaps, 0.5),
           stats_percentile(gaps, n_gaps, 0.99), worst, stats_percentile(ttft, n, 0.5), stats_percentile(ttft, n, 0.99),
           (unsigned long long)(s1.steps - s0.steps), u->tls_dir ? "true" : "false", (double)frame_up * per,
           (double)frame_down * per, (double)wire_up * per, (double)wire_down * per);
    fflush(stdout);
    pthread_barrier_destroy(&go);
    free(jobs);
    free(th);
    free(gaps);
    free(ttft);
    free(mine);
    return status;
}

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        usage();
        return 2;
    }
    const char *path = argv[1], *devices = "1,2,4,8,16,32", *modes = "split", *batching = "both";
    int n_tokens = 32, n_prompt = 32, split = 1, cloud_threads = 1;
    const char *tls_dir = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "-d")) devices = v;
        else if (!strcmp(a, "-n")) n_tokens = atoi(v);
        else if (!strcmp(a, "-p")) n_prompt = atoi(v);
        else if (!strcmp(a, "--split")) split = atoi(v);
        else if (!strcmp(a, "-t")) cloud_threads = atoi(v);
        else if (!strcmp(a, "--tls")) tls_dir = v;
        else if (!strcmp(a, "--modes")) modes = v;
        else if (!strcmp(a, "--batching")) batching = v;
        else {
            usage();
            return 2;
        }
    }
    int on = !strcmp(batching, "on") || !strcmp(batching, "both"), off = !strcmp(batching, "off") || !strcmp(batching, "both");
    int m_split = strstr(modes, "split") != NULL, m_cloud = strstr(modes, "cloud") != NULL;
    if (argc % 2 || n_tokens < 2 || n_prompt < 1 || n_prompt > 4096 || cloud_threads < 1 || !(on || off) ||
        !(m_split || m_cloud)) {
        usage();
        return 2;
    }
    char err[512];
    duet_part none = {0};
    duet_model *meta = duet_model_load(path, &none, 0, err, sizeof err);
    if (!meta) {
        fprintf(stderr, "bench_cloud: %s\n", err);
        return 1;
    }
    const duet_config *c = duet_model_config(meta);
    int L = c->n_layers;
    if (split < 1 || split >= L) {
        fprintf(stderr, "bench_cloud: --split must be in 1..%d\n", L - 1);
        return 2;
    }
    /* the cloud holds everything (split devices ask for [A,L) + head, cloud-mode devices for all of it) */
    duet_part dpart = {.n_spans = 1, .span = {{0, split}}, .embed = true};
    duet_model *dev = duet_model_load(path, &dpart, 0, err, sizeof err);
    duet_model *cm = dev ? duet_model_load(path, NULL, 0, err, sizeof err) : NULL;
    server_opts so = server_opts_default();
    so.host = "127.0.0.1";
    so.threads = cloud_threads;
    so.max_per_address = 1 << 16; /* every device is on loopback */
    char cert[512], key[512], ca[512];
    if (tls_dir) {
        snprintf(cert, sizeof cert, "%s/srv.crt", tls_dir);
        snprintf(key, sizeof key, "%s/srv.key", tls_dir);
        snprintf(ca, sizeof ca, "%s/ca.crt", tls_dir);
        if (!(so.tls = transport_tls_server(cert, key, err, sizeof err))) {
            fprintf(stderr, "bench_cloud: %s\n", err);
            return 1;
        }
    }
    /* two clouds on the one model, batching and not; the idle one only sleeps in accept */
    cloud_server *srv[2] = {NULL, NULL};
    char addr[2][64];
    for (int b = 0; b < 2 && cm; b++) {
        if (!(b ? on : off)) continue;
        so.no_batching = !b;
        if (!(srv[b] = server_init(cm, &so, err, sizeof err)) || server_start(srv[b], err, sizeof err)) {
            fprintf(stderr, "bench_cloud: %s\n", err);
            return 1;
        }
        snprintf(addr[b], sizeof addr[b], "%s127.0.0.1:%d", tls_dir ? "tls://" : "", server_port(srv[b]));
    }
    if (!cm) {
        fprintf(stderr, "bench_cloud: %s\n", err);
        return 1;
    }
    duet_model_fingerprint(dev); /* read the file once, before the threads share the model */
    fprintf(stderr,
            "cloud on loopback, %d compute thread%s; model %s (%d layers, dim %d); split mode at layer %d: each device "
            "runs [0,%d), the cloud [%d,%d) + head; cloud mode: the cloud runs everything; prompt %d tokens, %d "
            "generated per device, greedy; no link emulation; %s\n", cloud_threads, cloud_threads == 1 ? "" : "s", path, L,
            c->dim, split, split, split, L, n_prompt, n_tokens, tls_dir ? "TLS 1.3" : "plain TCP");
    fprintf(stderr, "%6s %5s %8s %10s %11s %11s %11s %11s %11s %8s %14s %14s\n", "mode", "batch", "devices", "tok/s",
            "tok_p50_ms", "tok_p99_ms", "worst_p99", "ttft_p50_ms", "ttft_p99_ms", "steps", "wire_B/tok_up",
            "wire_B/tok_dn");
    setup u = {.dev = dev, .path = path, .tls_dir = tls_dir, .ca = ca, .L = L, .split = split, .n_prompt = n_prompt,
               .n_tokens = n_tokens, .threads = cloud_threads};
    int status = 0;
    for (int mi = 0; mi < 2 && !status; mi++) {
        int mode = mi ? FRAME_MODE_CLOUD : FRAME_MODE_SPLIT;
        if (!(mi ? m_cloud : m_split)) continue;
        for (const char *d = devices; *d && !status;) {
            int n = atoi(d);
            d = strchr(d, ',') ? strchr(d, ',') + 1 : d + strlen(d);
            if (n < 1 || n > 1024) continue;
            for (int b = 1; b >= 0 && !status; b--) /* batching first, then the baseline, at each count */
                if (srv[b]) status = measure(&u, srv[b], addr[b], b, mode, n);
        }
    }
    server_free(srv[0]);
    server_free(srv[1]);
    transport_tls_free(so.tls);
    duet_model_free(cm);
    duet_model_free(dev);
    duet_model_free(meta);
    return status;
}
