/* bench_engine: prefill and decode speed of one GGUF, llama-bench style (pp = a prompt of P tokens as one
 * batch, tg = T tokens decoded one at a time), median of R repetitions after a warm-up, plus the bandwidth
 * decode achieves (weight bytes per token x tokens/s). With --memcpy it measures the machine's copy bandwidth
 * instead, the ceiling decode can approach.
 *
 * The weights are copied into memory at load, duet's default; --mmap reads them in place from the file.
 * load_s is the time duet_model_load took (read, repack, lock); DUET_NO_REPACK=1 keeps Q4_0/Q4_K/Q6_K matrices in
 * the file's layout, for before/after measurements of the repacked kernels and of load time.
 *
 *   bench_engine MODEL [-t THREADS] [-p 128] [-n 32] [-r 5] [--mmap] [--json]
 *   bench_engine --memcpy [-t THREADS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/stats.h"
#include "duet.h"
#include "engine/pool.h"

typedef struct copy_job { char *src, *dst; size_t n; } copy_job;

static void copy_work(void *arg, int ith, int nth) {
    copy_job *j = arg;
    size_t share = j->n / nth, off = share * ith;
    memcpy(j->dst + off, j->src + off, ith == nth - 1 ? j->n - off : share);
}

/* GB/s of a 1 GiB memcpy split across the pool, counting bytes read plus bytes written. */
static int bench_memcpy(duet_pool *pool, int reps, int json) {
    size_t n = (size_t)1 << 30;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) {
        fprintf(stderr, "bench_engine: out of memory\n");
        return 1;
    }
    memset(a, 1, n);
    memset(b, 2, n);
    copy_job j = {a, b, n};
    double t[16];
    for (int r = 0; r < reps; r++) {
        double t0 = clock_now_ms();
        pool_run(pool, 0, copy_work, &j);
        t[r] = clock_now_ms() - t0;
    }
    double gbs = 2.0 * n / (stats_median(t, reps) * 1e6);
    if (json) printf("{\"bench\":\"memcpy\",\"threads\":%d,\"gb_per_s\":%.2f}\n", duet_pool_threads(pool), gbs);
    else printf("memcpy  %d thread(s): %.1f GB/s (read + write)\n", duet_pool_threads(pool), gbs);
    free(a);
    free(b);
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL;
    int threads = 1, n_prompt = 128, n_gen = 32, reps = 5, json = 0, memcpy_mode = 0, load_flags = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-p") && i + 1 < argc) n_prompt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) n_gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--memcpy")) memcpy_mode = 1;
        else if (!strcmp(argv[i], "--mmap")) load_flags |= DUET_LOAD_MMAP;
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "usage: bench_engine MODEL [-t THREADS] [-p PROMPT] [-n GEN] [-r REPS] [--mmap] [--json]\n"
                            "       bench_engine --memcpy [-t THREADS]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 16 || n_prompt < 1 || n_gen < 1) {
        fprintf(stderr, "bench_engine: need 1..16 repetitions and positive token counts\n");
        return 2;
    }
    char err[512];
    duet_pool *pool = duet_pool_init(threads, err, sizeof err);
    if (!pool) {
        fprintf(stderr, "bench_engine: %s\n", err);
        return 1;
    }
    if (memcpy_mode) {
        int rc = bench_memcpy(pool, reps, json);
        duet_pool_free(pool);
        return rc;
    }
    if (!path) {
        fprintf(stderr, "bench_engine: no model given\n");
        return 2;
    }
    const double load0 = clock_now_ms();
    duet_model *m = duet_model_load(path, NULL, load_flags, err, sizeof err);
    const double load_s = (clock_now_ms() - load0) / 1e3;
    if (!m) {
        fprintf(stderr, "bench_engine: %s\n", err);
        return 1;
    }
    const duet_config *c = duet_model_config(m);
    duet_part all = duet_part_all();
    int n_ctx = n_prompt + n_gen;
    duet_kv *kv = duet_kv_init(m, &all, n_ctx, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(m, n_prompt, pool, err, sizeof err);
    float *h = malloc(sizeof(float) * (size_t)n_prompt * c->dim);
    float *lg = malloc(sizeof(float) * c->vocab_size);
    int *ids = malloc(sizeof(int) * (size_t)n_prompt);
    if (!kv || !ctx || !h || !lg || !ids) {
        fprintf(stderr, "bench_engine: %s\n", kv && ctx ? "out of memory" : err);
        return 1;
    }
    for (int i = 0; i < n_prompt; i++) ids[i] = 1 + (i * 7919) % (c->vocab_size - 1);
    double pp[17], tg[17];
    /* Repetition 0 is the warm-up (page faults, caches) and is not counted. It repeats for at least 200 ms:
     * stories260K's whole pp64 takes ~1 ms, and a VM's idle second vCPU measured 4x slower for its first
     * few milliseconds of work (2-thread pp64 10.5-12.8k tok/s right after a 1-thread run, ~48k after). */
    const double warm_until = clock_now_ms() + 200;
    for (int r = 0; r <= reps; r++) {
        duet_kv_truncate(kv, 0);
        double t0 = clock_now_ms();
        if (duet_embed(ctx, ids, n_prompt, h, err, sizeof err) ||
            duet_forward(ctx, kv, 0, c->n_layers, h, n_prompt, 0, err, sizeof err) ||
            duet_head(ctx, h + (size_t)(n_prompt - 1) * c->dim, 1, lg, err, sizeof err))
            goto fail;
        pp[r] = n_prompt * 1e3 / (clock_now_ms() - t0);
        duet_kv_truncate(kv, 0);
        int id = 1;
        t0 = clock_now_ms();
        for (int i = 0; i < n_gen; i++) {
            if (duet_embed(ctx, &id, 1, h, err, sizeof err) ||
                duet_forward(ctx, kv, 0, c->n_layers, h, 1, i, err, sizeof err) ||
                duet_head(ctx, h, 1, lg, err, sizeof err))
                goto fail;
            id = duet_argmax(lg, c->vocab_size);
        }
        tg[r] = n_gen * 1e3 / (clock_now_ms() - t0);
        if (r == 0 && clock_now_ms() < warm_until) r--; /* warm up once more */
    }
    double pp_med = stats_median(pp + 1, reps), tg_med = stats_median(tg + 1, reps);
    double gbs = tg_med * duet_model_weight_bytes(m) / 1e9;
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (json)
        printf("{\"bench\":\"engine\",\"model\":\"%s\",\"threads\":%d,\"pp\":%d,\"pp_tokens_per_s\":%.2f,"
               "\"tg\":%d,\"tg_tokens_per_s\":%.2f,\"weight_bytes\":%zu,\"decode_gb_per_s\":%.2f,\"locked\":%s,\"mmap\":%s,"
               "\"load_s\":%.3f,\"load_s_per_gb\":%.3f}\n",
               name, threads, n_prompt, pp_med, n_gen, tg_med, duet_model_weight_bytes(m), gbs,
               duet_model_locked(m) ? "true" : "false", load_flags & DUET_LOAD_MMAP ? "true" : "false", load_s,
               load_s / (duet_model_weight_bytes(m) / 1e9));
    else
        printf("%-28s t=%d  pp%d %9.1f tok/s  tg%d %8.1f tok/s  decode %.1f GB/s (%.2f GB/token)  load %.2f s%s%s\n",
               name, threads, n_prompt, pp_med, n_gen, tg_med, gbs, duet_model_weight_bytes(m) / 1e9, load_s,
               duet_model_locked(m) ? "" : "  [weights not locked]", load_flags & DUET_LOAD_MMAP ? "  [mmap]" : "");
    duet_kv_free(kv);
    duet_ctx_free(ctx);
    duet_model_free(m);
    duet_pool_free(pool);
    free(h);
    free(lg);
    free(ids);
    return 0;
fail:
    fprintf(stderr, "bench_engine: %s\n", err);
    return 1;
}
