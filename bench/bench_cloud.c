/* bench_cloud: how one cloud scales with the devices it serves. For each device count N, N device threads each
 * open a split-mode session to one in-process cloud on loopback (real server, transport and protocol) and
 * generate T tokens at once; reports the cloud's throughput (tokens/s over all sessions) and the per-token
 * latency each device sees (p50/p99 of the gaps between its tokens, and of its time to first token).
 *
 * The devices run on the same cores as the cloud, so the split is at layer 1 by default: the device part is
 * one layer, the cloud's is everything else, and the measurement is mostly the cloud's. */
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
    int split, n_prompt, n_tokens, seed;
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
    j->rc = pool ? remote_open(&r, j->m, &j->o, FRAME_MODE_SPLIT, j->split, j->n_prompt + j->n_tokens, &rq.sampling,
                               j->err, sizeof j->err)
                 : -1;
    pthread_barrier_wait(j->go); /* every session is open: generation starts together */
    metrics_start(&j->mt, "split");
    uint64_t up0 = 0, down0 = 0, up1 = 0, down1 = 0;
    if (!j->rc) transport_wire_bytes(r.t, &up0, &down0);
    if (!j->rc) j->rc = mode_split_run(j->m, pool, &r, &rq, NULL, NULL, &j->mt, j->err, sizeof j->err);
    j->t_done = clock_now_ms();
    if (!j->rc && !transport_wire_bytes(r.t, &up1, &down1)) j->wire_up = up1 - up0, j->wire_down = down1 - down0;
    if (!j->rc) j->rc = remote_close(&r, j->err, sizeof j->err);
    else if (pool) remote_free(&r);
    duet_pool_free(pool);
    return NULL;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_cloud MODEL [-d 1,2,4,8,16,32] [-n TOKENS] [-p PROMPT] [--split A] [-t CLOUD_THREADS]\n"
                    "       [--tls DIR (ca.crt, srv.crt, srv.key: TLS 1.3)]\n"
                    "  split-mode sessions against one in-process cloud; JSON lines on stdout, a table on stderr\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        usage();
        return 2;
    }
    const char *path = argv[1], *devices = "1,2,4,8,16,32";
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
        else {
            usage();
            return 2;
        }
    }
    if (argc % 2 || n_tokens < 2 || n_prompt < 1 || n_prompt > 4096 || cloud_threads < 1) {
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
    duet_part dpart = {.n_spans = 1, .span = {{0, split}}, .embed = true};
    duet_part cpart = {.n_spans = 1, .span = {{split, L}}, .head = true};
    duet_model *dev = duet_model_load(path, &dpart, 0, err, sizeof err);
    duet_model *cm = dev ? duet_model_load(path, &cpart, 0, err, sizeof err) : NULL;
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
    cloud_server *srv = cm ? server_init(cm, &so, err, sizeof err) : NULL;
    if (!srv || server_start(srv, err, sizeof err)) {
        fprintf(stderr, "bench_cloud: %s\n", err);
        return 1;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "%s127.0.0.1:%d", tls_dir ? "tls://" : "", server_port(srv));
    duet_model_fingerprint(dev); /* read the file once, before the threads share the model */
    fprintf(stderr,
            "cloud on loopback, %d compute thread%s; model %s (%d layers, dim %d); split mode at layer %d: each device "
            "runs [0,%d), the cloud [%d,%d) + head; prompt %d tokens, %d generated per device, greedy; no link emulation; "
            "%s\n", cloud_threads, cloud_threads == 1 ? "" : "s", path, L, c->dim, split, split, split, L, n_prompt, n_tokens,
            tls_dir ? "TLS 1.3" : "plain TCP");
    fprintf(stderr, "%8s %12s %12s %12s %12s %12s %14s %14s\n", "devices", "tok/s", "tok_p50_ms", "tok_p99_ms",
            "ttft_p50_ms", "ttft_p99_ms", "wire_B/tok_up", "wire_B/tok_dn");
    int status = 0;
    for (const char *d = devices; *d && !status;) {
        int n = atoi(d);
        d = strchr(d, ',') ? strchr(d, ',') + 1 : d + strlen(d);
        if (n < 1 || n > 1024) continue;
        job *jobs = calloc((size_t)n, sizeof *jobs);
        pthread_t *th = calloc((size_t)n, sizeof *th);
        double *gaps = malloc(sizeof(double) * (size_t)n * n_tokens), *ttft = malloc(sizeof(double) * (size_t)n);
        if (!jobs || !th || !gaps || !ttft) return 1;
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, (unsigned)n + 1);
        for (int i = 0; i < n; i++) {
            jobs[i] = (job){.m = dev, .o = remote_opts_default(), .split = split, .n_prompt = n_prompt,
                            .n_tokens = n_tokens, .seed = i, .go = &go};
            jobs[i].o.cloud = addr;
            jobs[i].o.tls_ca = tls_dir ? ca : NULL;
            pthread_create(&th[i], NULL, device_main, &jobs[i]);
        }
        pthread_barrier_wait(&go);
        double t0 = clock_now_ms(), t_end = t0;
        int n_gaps = 0;
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
            for (int k = 1; k < j->mt.tokens; k++) gaps[n_gaps++] = j->mt.t_token[k] - j->mt.t_token[k - 1];
            metrics_free(&j->mt);
        }
        stats_sort(gaps, n_gaps);
        stats_sort(ttft, n);
        double tps = t_end > t0 ? tokens * 1e3 / (t_end - t0) : 0;
        double per = tokens ? 1.0 / (double)tokens : 0;
        fprintf(stderr, "%8d %12.1f %12.2f %12.2f %12.2f %12.2f %14.1f %14.1f\n", n, tps, stats_percentile(gaps, n_gaps, 0.5),
                stats_percentile(gaps, n_gaps, 0.99), stats_percentile(ttft, n, 0.5), stats_percentile(ttft, n, 0.99),
                (double)wire_up * per, (double)wire_down * per);
        printf("{\"bench\":\"cloud\",\"model\":\"%s\",\"layers\":%d,\"split\":%d,\"cloud_threads\":%d,\"devices\":%d,"
               "\"prompt_tokens\":%d,\"tokens_per_device\":%d,\"tokens\":%ld,\"wall_ms\":%.1f,\"tokens_per_s\":%.2f,"
               "\"token_ms\":{\"p50\":%.3f,\"p99\":%.3f},\"ttft_ms\":{\"p50\":%.3f,\"p99\":%.3f},\"tls\":%s,"
               "\"frame_bytes_per_token\":{\"up\":%.1f,\"down\":%.1f},\"wire_bytes_per_token\":{\"up\":%.1f,\"down\":%.1f}}\n",
               path, L, split, cloud_threads, n, n_prompt, n_tokens, tokens, t_end - t0, tps, stats_percentile(gaps, n_gaps, 0.5),
               stats_percentile(gaps, n_gaps, 0.99), stats_percentile(ttft, n, 0.5), stats_percentile(ttft, n, 0.99),
               tls_dir ? "true" : "false", (double)frame_up * per, (double)frame_down * per, (double)wire_up * per,
               (double)wire_down * per);
        fflush(stdout);
        pthread_barrier_destroy(&go);
        free(jobs);
        free(th);
        free(gaps);
        free(ttft);
    }
    server_free(srv);
    transport_tls_free(so.tls);
    duet_model_free(cm);
    duet_model_free(dev);
    duet_model_free(meta);
    return status;
}
