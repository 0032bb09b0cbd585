/* bench_quant: speed of quant_gemm per weight type and ISA level.
 *   decode: nr = 4096 rows x n = 4096, nx = 1, weight GB/s streamed (median of reps; the matrix is copied
 *           until the working set exceeds the last-level cache, and reps rotate through the copies, so
 *           the figure is memory bandwidth, not cache bandwidth); also with 2 threads for the best ISA
 *   batch:  the same matrix times nx = 64 activation rows (prefill-like), GFLOP/s = 2 n nr nx / time
 *   memcpy: plain copy bandwidth of the same working-set size, as the ceiling to compare decode with.
 *   fma peak: GFLOP/s of 12 independent AVX2 FMA chains in registers, on one core alone and on each of two at
 *           once, as the ceiling to compare batch GFLOP/s with (the second figure shows what running two cores
 *           costs each, e.g. a lower clock).
 * Types with a repacked layout are measured twice: as in the file, and repacked (Q8_0x8, Q4_0x8, ...) as a loaded model holds them.
 * Usage: bench_quant [-n COLS] [-r ROWS] [type-name ...]   (default: 4096 x 4096, every supported weight type);
 * COLS a multiple of 256 (the K-quants' block), e.g. -n 2048 -r 5632 for TinyLlama's ffn matrices. */
#include "base/clock.h"
#include "duet.h"
#include "engine/quant.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int N = 4096, NR = 4096; /* row length and rows: -n and -r */
#define NX_BATCH 64
#define WORKING_SET (512u << 20) /* bytes of weights the decode reps rotate through */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static uint64_t rng = 88172645463325252ull;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1p-53 - 0.5);
}

typedef struct {
    int isa, type, nr, nx;
    size_t ws, xs;
    const uint8_t *w, *x;
    float *y;
} job;

static void *run_job(void *p) {
    job *j = p;
    quant_gemm(j->isa, j->type, N, j->w, j->ws, j->nr, j->x, j->xs, j->nx, j->y, NR);
    return NULL;
}

/* One gemm over rows [0, nr) split across nt threads (the calling thread is one); seconds taken. */
static double timed_gemm(int nt, job j) {
    pthread_t th[8];
    job part[8];
    double t0 = clock_now_ms();
    for (int t = 0; t < nt; t++) {
        int a = j.nr * t / nt / 8 * 8, b = t + 1 == nt ? j.nr : j.nr * (t + 1) / nt / 8 * 8; /* whole 8-row groups */
        part[t] = j;
        part[t].w = j.w + (size_t)a * j.ws;
        part[t].nr = b - a;
        part[t].y = j.y + a;
        if (t) pthread_create(&th[t], NULL, run_job, &part[t]);
    }
    run_job(&part[0]);
    for (int t = 1; t < nt; t++) pthread_join(th[t], NULL);
    return (clock_now_ms() - t0) / 1e3;
}

static double memcpy_gbs(void) {
    size_t half = WORKING_SET / 2;
    char *a = malloc(half), *b = malloc(half);
    if (!a || !b) return 0;
    memset(a, 1, half);
    memset(b, 2, half);
    double t[5];
    for (int r = 0; r < 5; r++) {
        double t0 = clock_now_ms();
        memcpy(r & 1 ? a : b, r & 1 ? b : a, half);
        t[r] = (clock_now_ms() - t0) / 1e3;
    }
    free(a);
    free(b);
    return 2.0 * half / median(t, 5) / 1e9; /* read + write */
}

#define FMA(a) a = _mm256_fmadd_ps(a, m, c);
/* GFLOP/s of 12 chains of 8-lane FMAs, 4 cycles of latency each: enough in flight for two FMA units. Each chain
 * starts from its own volatile value so that the compiler cannot merge them. */
__attribute__((target("avx2,fma"))) static void *fma_peak(void *out) {
    volatile float v[13] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0.999f};
    __m256 a0 = _mm256_set1_ps(v[0]), a1 = _mm256_set1_ps(v[1]), a2 = _mm256_set1_ps(v[2]),
           a3 = _mm256_set1_ps(v[3]), a4 = _mm256_set1_ps(v[4]), a5 = _mm256_set1_ps(v[5]),
           a6 = _mm256_set1_ps(v[6]), a7 = _mm256_set1_ps(v[7]), a8 = _mm256_set1_ps(v[8]),
           a9 = _mm256_set1_ps(v[9]), a10 = _mm256_set1_ps(v[10]), a11 = _mm256_set1_ps(v[11]);
    const __m256 m = _mm256_set1_ps(v[12]), c = _mm256_set1_ps(1e-6f);
    const long steps = 50000000;
    double t0 = clock_now_ms();
    for (long i = 0; i < steps; i++) { FMA(a0) FMA(a1) FMA(a2) FMA(a3) FMA(a4) FMA(a5) FMA(a6) FMA(a7) FMA(a8) FMA(a9) FMA(a10) FMA(a11) }
    double s = (clock_now_ms() - t0) / 1e3;
    __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                               _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    v[0] = _mm256_cvtss_f32(sum); /* the chains' results are used */
    *(double *)out = steps * 12 * 16.0 / s / 1e9;
    return NULL;
}
#undef FMA

/* repack: the same matrix in its repacked layout (quant_repack), as a loaded model holds it */
static void bench_type(int type, bool repack) {
    const quant_traits *tr = quant_traits_get(type), *at = quant_traits_get(tr->act_type);
    size_t ws = quant_row_bytes(type, N), xs = quant_row_bytes(tr->act_type, N), mat = ws * NR;
    int copies = (int)((WORKING_SET + mat - 1) / mat);
    uint8_t *w = malloc(mat * (size_t)copies), *x = malloc(xs * NX_BATCH);
    float *row = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * NR * NX_BATCH);
    if (!w || !x || !row || !y) {
        fprintf(stderr, "bench_quant: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < NR; i++) {
        for (int k = 0; k < N; k++) row[k] = 0.16f * frand();
        quant_quantize_row(type, row, w + (size_t)i * ws, N);
    }
    if (repack && quant_repack(type, w, NR, N)) exit(1);
    for (int c = 1; c < copies; c++) memcpy(w + mat * (size_t)c, w, mat);
    for (int j = 0; j < NX_BATCH; j++) {
        for (int k = 0; k < N; k++) row[k] = 2 * frand();
        quant_quantize_row(tr->act_type, row, x + (size_t)j * xs, N);
    }
    const int best = quant_isa_best();
    for (int isa = repack ? QUANT_ISA_AVX2 : QUANT_ISA_SCALAR; isa <= best; isa++) {
        double t[16];
        int reps = isa == QUANT_ISA_SCALAR ? 3 : copies < 8 ? 8 : copies > 16 ? 16 : copies;
        job j = {isa, repack ? QUANT_REPACK8 | type : type, NR, 1, ws, xs, w, x, y};
        for (int r = 0; r < reps; r++) {
            j.w = w + mat * (size_t)(r % copies);
            t[r] = timed_gemm(1, j);
        }
        double dec1 = mat / median(t, reps) / 1e9, dec2 = 0;
        if (isa == best) {
            for (int r = 0; r < reps; r++) {
                j.w = w + mat * (size_t)(r % copies);
                t[r] = timed_gemm(2, j);
            }
            dec2 = mat / median(t, reps) / 1e9;
        }
        /* batch: the scalar reference gets 1/16 of the rows to keep the run short (a rate either way) */
        j.w = w;
        j.nx = NX_BATCH;
        j.nr = isa == QUANT_ISA_SCALAR ? NR / 16 : NR;
        for (int r = 0; r < 3; r++) t[r] = timed_gemm(1, j);
        double gflops = 2.0 * N * j.nr * NX_BATCH / median(t, 3) / 1e9;
        char name[16];
        snprintf(name, sizeof name, "%s%s", tr->name, repack ? "x8" : "");
        printf("%-6s x %-5s %-7s decode %6.1f GB/s 1t", name, at->name, quant_isa_name(isa), dec1);
        if (dec2 > 0)
            printf(", %6.1f GB/s 2t", dec2);
        else
            printf("                 ");
        printf("   batch%d %7.1f GFLOP/s 1t\n", NX_BATCH, gflops);
        fflush(stdout);
    }
    free(w);
    free(x);
    free(row);
    free(y);
}

int main(int argc, char **argv) {
    static const int types[] = {DUET_TYPE_F32, DUET_TYPE_F16, DUET_TYPE_Q8_0,
                                DUET_TYPE_Q4_0, DUET_TYPE_Q4_K, DUET_TYPE_Q6_K};
    int a = 1;
    for (; a + 1 < argc && (!strcmp(argv[a], "-n") || !strcmp(argv[a], "-r")); a += 2)
        *(argv[a][1] == 'n' ? &N : &NR) = atoi(argv[a + 1]);
    if (N <= 0 || N % 256 || NR <= 0 || NR > (1 << 20)) {
        fprintf(stderr, "usage: bench_quant [-n COLS] [-r ROWS] [type-name ...]  (COLS a multiple of 256)\n");
        return 2;
    }
    printf("bench_quant: n=%d, nr=%d, decode nx=1 (weights streamed from a %u MiB working set), batch nx=%d; "
           "best ISA %s\n", N, NR, WORKING_SET >> 20, NX_BATCH, quant_isa_name(quant_isa_best()));
    printf("memcpy %.1f GB/s (read + write, 1 thread)\n", memcpy_gbs());
    if (quant_isa_best() >= QUANT_ISA_AVX2) { /* medians of 5 alternating runs, one core then two */
        double one[5], two[2][5];
        for (int r = 0; r < 5; r++) {
            pthread_t th;
            fma_peak(&one[r]);
            if (pthread_create(&th, NULL, fma_peak, &two[1][r]) != 0) return 1;
            fma_peak(&two[0][r]);
            pthread_join(th, NULL);
        }
        printf("fma peak %.1f GFLOP/s 1t, %.1f + %.1f GFLOP/s 2t\n", median(one, 5), median(two[0], 5),
               median(two[1], 5));
    }
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        int pick = a >= argc;
        for (int k = a; k < argc; k++) pick |= !strcmp(argv[k], quant_traits_get(types[i])->name);
        if (pick) bench_type(types[i], false);
        if (pick && quant_repack_type(types[i], NR, N) != types[i]) bench_type(types[i], true);
    }
    return 0;
}
