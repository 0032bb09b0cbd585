/* Tests of src/engine/quant.c (block formats, dequantization against llama.cpp's hashes, quantizers,
 * kernels of every ISA against the scalar reference) and src/base/sha256.c. */
#include "test.h"

#include "base/half.h"
#include "base/json.h"
#include "base/sha256.h"
#include "duet.h"
#include "engine/quant.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }

static double rng_uniform(void) { /* [0, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1p-53;
}

static float rng_normal(void) { /* Box-Muller */
    double u = rng_uniform() + 1e-300, v = rng_uniform();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* x[n] ~ N(0, sigma^2), with a few outliers as real activations have. */
static void fill_normal(float *x, int64_t n, float sigma) {
    for (int64_t i = 0; i < n; i++) x[i] = sigma * rng_normal() * (rng_uniform() < 0.01 ? 8 : 1);
}

static int type_by_name(const char *name) {
    for (int t = 0; t < 64; t++) {
        const quant_traits *tr = quant_traits_get(t);
        if (tr && !strcmp(tr->name, name)) return t;
    }
    return -1;
}

static const int weight_types[] = {DUET_TYPE_F32, DUET_TYPE_F16, DUET_TYPE_Q8_0,
                                   DUET_TYPE_Q4_0, DUET_TYPE_Q4_K, DUET_TYPE_Q6_K};
#define N_WEIGHT_TYPES (int)(sizeof weight_types / sizeof weight_types[0])

/* ---- sha256 ---------------------------------------------------------------------------------------- */

TEST(test_sha256_known_vectors) {
    char hex[65];
    sha256_hex("", 0, hex);
    CHECK(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    sha256_hex("abc", 3, hex);
    CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 448 bits: padding spills */
    sha256_hex(two, strlen(two), hex);
    CHECK(!strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
    /* a million 'a', fed in uneven pieces to exercise the partial-block buffer */
    sha256 s;
    unsigned char d[32];
    char a[997];
    memset(a, 'a', sizeof a);
    sha256_init(&s);
    size_t left = 1000000;
    for (size_t piece = 1; left; piece = piece % 990 + 7) {
        size_t take = piece < left ? piece : left;
        sha256_update(&s, a, take);
        left -= take;
    }
    sha256_final(&s, d);
    sha256_digest_hex(d, hex);
    CHECK(!strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
}

/* ---- traits ---------------------------------------------------------------------------------------- */

TEST(test_quant_traits_sizes) {
    static const struct { int type, block, bytes; bool supported; } want[] = {
        {0, 1, 4, true},     {1, 1, 2, true},      {2, 32, 18, true},    {3, 32, 20, false},
        {6, 32, 22, false},  {7, 32, 24, false},   {8, 32, 34, true},    {9, 32, 36, false},
        {10, 256, 84, false}, {11, 256, 110, false}, {12, 256, 144, true}, {13, 256, 176, false},
        {14, 256, 210, true}, {15, 256, 292, true}, {16, 256, 66, false}, {23, 256, 136, false},
        {30, 1, 2, false},   {39, 32, 17, false},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const quant_traits *t = quant_traits_get(want[i].type);
        REQUIRE_MSG(t, "type %d has no traits", want[i].type);
        CHECK_EQ_INT(t->block, want[i].block);
        CHECK_EQ_INT(t->block_bytes, want[i].bytes);
        CHECK_EQ_INT(t->supported, want[i].supported);
    }
    CHECK(quant_traits_get(4) == NULL); /* retired Q4_2 */
    CHECK(quant_traits_get(-1) == NULL);
    CHECK(quant_traits_get(1000) == NULL);
    CHECK_EQ_INT(quant_traits_get(DUET_TYPE_Q4_K)->act_type, DUET_TYPE_Q8_K);
    CHECK_EQ_INT(quant_traits_get(DUET_TYPE_Q4_0)->act_type, DUET_TYPE_Q8_0);
    CHECK_EQ_INT(quant_traits_get(DUET_TYPE_F16)->act_type, DUET_TYPE_F32);
    CHECK_EQ_INT(quant_row_bytes(DUET_TYPE_Q6_K, 4096), 16 * 210);
    CHECK_EQ_INT(quant_row_bytes(DUET_TYPE_F16, 7), 14);
    CHECK_EQ_INT(quant_row_bytes(DUET_TYPE_Q8_0, 33), 0); /* not a whole number of blocks */
    CHECK_EQ_INT(quant_row_bytes(DUET_TYPE_Q8_0, -32), 0);
    CHECK_EQ_INT(quant_row_bytes(5, 32), 0);
}

TEST(test_quant_rejects_bad_arguments) {
    float f[256] = {0};
    unsigned char buf[1024] = {0};
    CHECK(quant_dequantize_row(DUET_TYPE_Q8_0, buf, f, 31) < 0);
    CHECK(quant_dequantize_row(3, buf, f, 32) == DUET_EUNSUPPORTED); /* Q4_1: sized but not computed */
    CHECK(quant_dequantize_row(4, buf, f, 32) == DUET_EUNSUPPORTED);
    CHECK(quant_quantize_row(DUET_TYPE_Q4_K, f, buf, 255) < 0);
    CHECK(quant_quantize_row(13, f, buf, 256) == DUET_EUNSUPPORTED);
}

/* ---- dequantization vs llama.cpp ----------------------------------------------------------------- */

/* Every tensor of every file in dequant-reference.json: dequantize the bytes at data_offset (absolute in
 * the file: the first tensor starts at files.json's data_section_offset) and compare the sha256 of the
 * float32 values with llama.cpp's. */
TEST(test_quant_dequant_matches_llamacpp) {
    char err[256];
    json *ref = json_load_file(TEST_DATA "/quant/dequant-reference.json", err, sizeof err);
    REQUIRE_MSG(ref, "dequant-reference.json: %s", err);
    json *files = json_load_file(TEST_DATA "/quant/files.json", err, sizeof err);
    REQUIRE_MSG(files, "files.json: %s", err);
    const json_val *root = json_root(ref);
    int n_checked = 0, types_seen = 0;
    for (size_t fi = 0; fi < json_len(root); fi++) {
        const char *fname = json_key_at(root, fi);
        const json_val *tensors = json_at(root, fi);
        char path[512];
        snprintf(path, sizeof path, TEST_DATA "/quant/%s", fname);
        size_t flen = 0;
        char *data = test_read_file(path, &flen);
        REQUIRE_MSG(data, "cannot read %s", path);
        const json_val *finfo = json_get(json_root(files), fname);
        double data_section = json_num(json_get(finfo, "data_section_offset")), min_off = 1e300;
        for (size_t ti = 0; ti < json_len(tensors); ti++) {
            const char *tname = json_key_at(tensors, ti);
            const json_val *t = json_at(tensors, ti);
            int type = type_by_name(json_str(json_get(t, "type"), NULL));
            REQUIRE_MSG(type >= 0, "%s %s: unknown type", fname, tname);
            types_seen |= 1 << type;
            const json_val *ne = json_get(t, "ne");
            int64_t row = (int64_t)json_num(json_at(ne, 0)), n = (int64_t)json_num(json_get(t, "n_elements"));
            size_t off = (size_t)json_num(json_get(t, "data_offset")), nbytes = (size_t)json_num(json_get(t, "n_bytes"));
            if (off < min_off) min_off = (double)off;
            size_t rb = quant_row_bytes(type, row);
            CHECK_MSG(rb * (size_t)(n / row) == nbytes, "%s %s: %zu bytes/row x %lld rows != %zu", fname, tname,
                      rb, (long long)(n / row), nbytes);
            REQUIRE(off + nbytes <= flen);
            float *vals = malloc((size_t)n * sizeof(float));
            REQUIRE(vals);
            int ok = 1;
            for (int64_t r = 0; r < n / row && ok; r++)
                ok = quant_dequantize_row(type, data + off + (size_t)r * rb, vals + r * row, row) == 0;
            CHECK_MSG(ok, "%s %s: dequantize failed", fname, tname);
            char hex[65];
            sha256_hex(vals, (size_t)n * sizeof(float), hex); /* this host is little-endian */
            CHECK_MSG(!strcmp(hex, json_str(json_get(t, "sha256"), NULL)), "%s %s (%s): sha256 differs", fname,
                      tname, json_str(json_get(t, "type"), NULL));
            free(vals);
            n_checked++;
        }
        CHECK_MSG(min_off == data_section, "%s: offsets are not absolute", fname);
        free(data);
    }
    CHECK_EQ_INT(n_checked, 6 * 39);
    int want = 1 << DUET_TYPE_F32 | 1 << DUET_TYPE_F16 | 1 << DUET_TYPE_Q8_0 | 1 << DUET_TYPE_Q4_0 |
               1 << DUET_TYPE_Q4_K | 1 << DUET_TYPE_Q6_K;
    CHECK_EQ_INT(types_seen, want);
    json_free(files);
    json_free(ref);
}

/* ---- quantizers ---------------------------------------------------------------------------------- */

/* Q8_0 activations as llama.cpp's x86 build makes them: d = amax/127 in fp16, q = x*(127/amax) rounded
 * half to even (the _ref quantizer would round 2.5 to 3 and use 1/d). */
TEST(test_quant_q8_0_matches_llamacpp_x86) {
    float x[32] = {0};
    x[0] = 127;  /* amax: id = 1 exactly */
    x[1] = 2.5f; /* tie: even -> 2 */
    x[2] = 3.5f; /* tie: even -> 4 */
    x[3] = -2.5f;
    x[4] = -0.4f;
    unsigned char buf[34];
    REQUIRE(quant_quantize_row(DUET_TYPE_Q8_0, x, buf, 32) == 0);
    uint16_t d;
    memcpy(&d, buf, 2);
    CHECK_EQ_INT(d, half_from_float(1.0f));
    const int8_t *q = (const int8_t *)buf + 2;
    CHECK_EQ_INT(q[0], 127);
    CHECK_EQ_INT(q[1], 2);
    CHECK_EQ_INT(q[2], 4);
    CHECK_EQ_INT(q[3], -2);
    CHECK_EQ_INT(q[4], 0);
    /* an all-zero block has d = 0 and zero quants */
    memset(x, 0, sizeof x);
    REQUIRE(quant_quantize_row(DUET_TYPE_Q8_0, x, buf, 32) == 0);
    for (int i = 0; i < 34; i++) CHECK_EQ_INT(buf[i], 0);
}

/* Q8_K as quantize_row_q8_K_ref: iscale = -127/max maps the value of largest magnitude to -127,
 * d = 1/iscale, and bsums are sums of 16 quants. */
TEST(test_quant_q8_K_matches_llamacpp) {
    float x[256];
    rng_seed(7);
    fill_normal(x, 256, 1.0f);
    x[100] = 10.0f; /* the max magnitude, positive: maps to -127 with a negative d */
    unsigned char buf[292];
    REQUIRE(quant_quantize_row(DUET_TYPE_Q8_K, x, buf, 256) == 0);
    float d;
    memcpy(&d, buf, 4);
    const float iscale = -127.f / 10.0f;
    CHECK(d == 1 / iscale);
    const int8_t *q = (const int8_t *)buf + 4;
    CHECK_EQ_INT(q[100], -127);
    for (int j = 0; j < 256; j++) CHECK_EQ_INT(q[j], (int)nearbyintf(iscale * x[j]));
    for (int g = 0; g < 16; g++) {
        int16_t bs;
        memcpy(&bs, buf + 4 + 256 + 2 * g, 2);
        int s = 0;
        for (int j = 0; j < 16; j++) s += q[16 * g + j];
        CHECK_EQ_INT(bs, s);
    }
}

/* dequantize(quantize(x)) per element, against bounds that follow from each format:
 *   F16:  |err| <= max(2^-11 |x|, 2^-25) (round to nearest; subnormal spacing 2^-24)
 *   Q8_0: |err| <= d/2 + 127 * |d - fp16(d)| <= amax/127 * (1/2 + 127 * 2^-11) per 32-block
 *   Q4_0: |err| <= |d| * (1 + 8 * 2^-11) with |d| = amax/8: the value opposite the max may map to +8,
 *         which clamps to +7 (one step), and fp16(d) moves a quant 8 by <= 8 ulp
 *   Q8_K: |err| <= |d|/2 (d is float: no fp16 rounding)
 *   Q4_K: |err| <= max(step/2, dmin/2), step <= range/15 + d, d ~ max range/(15*63), dmin ~ max -min/63
 *   Q6_K: |err| <= step/2, step <= amax16/31 + d, d ~ max(amax16)/(31*127)
 * (fp16 rounding up of d, dmin adds at most a factor 1 + 2^-10.) */
static double err_bound(int type, const float *x, int64_t i) {
    const double fp = 1 + 0x1p-10;
    if (type == DUET_TYPE_F16) return fmax(fabs(x[i]) * 0x1p-11, 0x1p-25);
    if (type == DUET_TYPE_Q8_0 || type == DUET_TYPE_Q4_0) {
        double amax = 0;
        for (int64_t j = i / 32 * 32; j < i / 32 * 32 + 32; j++) amax = fmax(amax, fabs(x[j]));
        return type == DUET_TYPE_Q8_0 ? amax / 127 * (0.5 + 127 * 0x1p-11) : amax / 8 * (1 + 8 * 0x1p-11);
    }
    const float *blk = x + i / 256 * 256;
    if (type == DUET_TYPE_Q8_K) {
        double amax = 0;
        for (int j = 0; j < 256; j++) amax = fmax(amax, fabs(blk[j]));
        return amax / 127 / 2 * (1 + 1e-6);
    }
    if (type == DUET_TYPE_Q4_K) {
        double maxr = 0, maxm = 0, r = 0;
        for (int s = 0; s < 8; s++) {
            double lo = 0, hi = -1e30;
            for (int l = 0; l < 32; l++) lo = fmin(lo, blk[32 * s + l]), hi = fmax(hi, blk[32 * s + l]);
            maxr = fmax(maxr, hi - lo);
            maxm = fmax(maxm, -lo);
            if (s == i % 256 / 32) r = hi - lo;
        }
        const double d = maxr / 15 / 63 * fp, dmin = maxm / 63 * fp;
        return fmax((r / 15 + d) / 2, dmin / 2) * (1 + 1e-5);
    }
    /* Q6_K */
    double maxa = 0, a = 0;
    for (int g = 0; g < 16; g++) {
        double am = 0;
        for (int l = 0; l < 16; l++) am = fmax(am, fabs(blk[16 * g + l]));
        maxa = fmax(maxa, am);
        if (g == i % 256 / 16) a = am;
    }
    return (a / 31 + maxa / 31 / 127 * fp) / 2 * (1 + 1e-5);
}

TEST(test_quant_roundtrip_error_bounds) {
    static const int types[] = {DUET_TYPE_F16, DUET_TYPE_Q8_0, DUET_TYPE_Q4_0, DUET_TYPE_Q8_K,
                                DUET_TYPE_Q4_K, DUET_TYPE_Q6_K};
    enum { N = 4096 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    unsigned char *q = malloc(N * 4);
    REQUIRE(x && y && q);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int type = types[ti];
        for (int trial = 0; trial < 3; trial++) {
            rng_seed(100 + trial);
            fill_normal(x, N, trial == 0 ? 0.08f : trial == 1 ? 1.0f : 30.0f);
            if (trial == 2) /* an all-positive block and an all-negative one, a zero block and a constant one */
                for (int i = 0; i < 256; i++) {
                    x[i] = fabsf(x[i]);
                    x[256 + i] = -fabsf(x[256 + i]);
                    x[512 + i] = 0;
                    x[768 + i] = -3;
                }
            REQUIRE(quant_quantize_row(type, x, q, N) == 0);
            REQUIRE(quant_dequantize_row(type, q, y, N) == 0);
            int bad = 0;
            double worst = 0;
            for (int i = 0; i < N; i++) {
                double e = fabs((double)y[i] - x[i]), bound = err_bound(type, x, i);
                if (e > bound) bad++;
                if (bound > 0) worst = fmax(worst, e / bound);
            }
            CHECK_MSG(bad == 0, "%s trial %d: %d of %d elements over the bound (worst %.3f x bound)",
                      quant_traits_get(type)->name, trial, bad, N, worst);
        }
    }
    free(x);
    free(y);
    free(q);
}

/* ---- kernels ------------------------------------------------------------------------------------- */

/* Random weights [nr][n] and activations [nx][n] in the formats quant_gemm takes, plus their exact
 * dequantized values, to compare kernels with each other and with plain double math. */
typedef struct {
    int type, act, n, nr, nx;
    size_t ws, xs;
    unsigned char *w, *x;
    float *wf, *xf; /* dequantized: [nr][n], [nx][n] */
} gemm_case;

static int case_make(gemm_case *g, int type, int n, int nr, int nx) {
    g->type = type;
    g->act = quant_traits_get(type)->act_type;
    g->n = n, g->nr = nr, g->nx = nx;
    g->ws = quant_row_bytes(type, n);
    g->xs = quant_row_bytes(g->act, n);
    g->w = malloc(g->ws * nr);
    g->x = malloc(g->xs * nx);
    g->wf = malloc(sizeof(float) * n * nr);
    g->xf = malloc(sizeof(float) * n * nx);
    float *tmp = malloc(sizeof(float) * n);
    if (!g->w || !g->x || !g->wf || !g->xf || !tmp) return -1;
    for (int i = 0; i < nr; i++) {
        fill_normal(tmp, n, 0.08f);
        if (quant_quantize_row(type, tmp, g->w + i * g->ws, n)) return -1;
        quant_dequantize_row(type, g->w + i * g->ws, g->wf + (size_t)i * n, n);
    }
    for (int j = 0; j < nx; j++) {
        fill_normal(tmp, n, 1.0f);
        if (quant_quantize_row(g->act, tmp, g->x + j * g->xs, n)) return -1;
        quant_dequantize_row(g->act, g->x + j * g->xs, g->xf + (size_t)j * n, n);
    }
    free(tmp);
    return 0;
}

static void case_free(gemm_case *g) {
    free(g->w);
    free(g->x);
    free(g->wf);
    free(g->xf);
}

/* sum |w_k x_k| of row i and activation row j: the scale of float rounding in any summation order */
static double abs_dot(const gemm_case *g, int i, int j) {
    double s = 0;
    for (int k = 0; k < g->n; k++) s += fabs((double)g->wf[(size_t)i * g->n + k] * g->xf[(size_t)j * g->n + k]);
    return s;
}

/* Every SIMD ISA this CPU has against the scalar reference, on shapes that are not multiples of the
 * tiles (nr 1..9, nx 1..7). K-quant kernels must agree bit for bit (they add exact integer block sums
 * in the reference's order); the others reassociate float sums, so the bound is the worst case of any
 * summation order: 2 n 2^-24 sum |w_k x_k|. */
TEST(test_quant_gemm_simd_matches_scalar) {
    const int best = quant_isa_best();
    for (int isa = best + 1; isa <= QUANT_ISA_AVX512; isa++)
        printf("    (skipped %s: this CPU lacks it, or DUET_ISA lowered the level)\n", quant_isa_name(isa));
    static const int ns[] = {256, 512, 768};
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int type = weight_types[ti];
        for (int ni = 0; ni < 3; ni++) {
            /* F32/F16 also get a length that is no multiple of 8 or 16, Q8_0/Q4_0 an odd block count */
            int n = ns[ni];
            if (ni == 2 && quant_traits_get(type)->block == 1) n = 263;
            if (ni == 2 && quant_traits_get(type)->block == 32) n = 800 - 32;
            rng_seed(1000 + 10 * type + ni);
            gemm_case g;
            REQUIRE(case_make(&g, type, n, 9, 7) == 0);
            float ref[7][9], got[7][12];
            quant_gemm(QUANT_ISA_SCALAR, type, n, g.w, g.ws, 9, g.x, g.xs, 7, &ref[0][0], 9);
            for (int isa = QUANT_ISA_AVX2; isa <= best; isa++)
                for (int nr = 1; nr <= 9; nr++)
                    for (int nx = 1; nx <= 7; nx++) {
                        memset(got, 0x7f, sizeof got);
                        quant_gemm(isa, type, n, g.w, g.ws, nr, g.x, g.xs, nx, &got[0][0], 12);
                        for (int j = 0; j < nx; j++) {
                            for (int i = 0; i < nr; i++) {
                                bool kq = type == DUET_TYPE_Q4_K || type == DUET_TYPE_Q6_K;
                                double tol = kq ? 0 : 2.0 * n * 0x1p-24 * abs_dot(&g, i, j);
                                CHECK_MSG(fabs((double)got[j][i] - ref[j][i]) <= tol,
                                          "%s %s n=%d nr=%d nx=%d y[%d][%d]: %.9g vs scalar %.9g (tol %.3g)",
                                          quant_traits_get(type)->name, quant_isa_name(isa), n, nr, nx, j, i,
                                          got[j][i], ref[j][i], tol);
                            }
                            for (int i = nr; i < 12; i++) /* nothing outside the tile is written */
                                CHECK(got[j][i] != got[j][i] || got[j][i] > 1e38f);
                        }
                        if (test_failed_now()) break;
                    }
            case_free(&g);
        }
    }
    for (int isa = QUANT_ISA_AVX2; isa <= best; isa++) printf("    (checked %s)\n", quant_isa_name(isa));
}

/* Batch invariance of F32/F16 where the drivers block rows (AVX2: blocks of weight rows that fit in L2, at these
 * long rows 12 (F32) or 28 (F16) rows; AVX-512: blocks of about 20 activation rows): a prompt-sized call crosses
 * block and tile edges, with n no multiple of 8 (the scalar tail) and nr, nx no multiple of any tile; each
 * output must equal its one-row decode bits and the exact sum within the float bound. */
TEST(test_quant_gemm_float_blocks_invariant) {
    static const int types[] = {DUET_TYPE_F32, DUET_TYPE_F16};
    const int n = 4100, nr = 31, nx = 47;
    for (int ti = 0; ti < 2; ti++) {
        rng_seed(4242 + ti);
        gemm_case g;
        REQUIRE(case_make(&g, types[ti], n, nr, nx) == 0);
        float *all = malloc(sizeof(float) * nr * nx), ref[1];
        REQUIRE(all != NULL);
        for (int isa = QUANT_ISA_SCALAR; isa <= quant_isa_best(); isa++) {
            quant_gemm(isa, g.type, n, g.w, g.ws, nr, g.x, g.xs, nx, all, nr);
            for (int j = 0; j < nx; j++)
                for (int i = 0; i < nr; i++) {
                    quant_gemm(isa, g.type, n, g.w + i * g.ws, g.ws, 1, g.x + j * g.xs, g.xs, 1, ref, 1);
                    CHECK_MSG(!memcmp(ref, &all[j * nr + i], sizeof(float)), "%s %s: y[%d][%d] of the %dx%d call differs",
                              quant_traits_get(g.type)->name, quant_isa_name(isa), j, i, nr, nx);
                    double tol = 2.0 * n * 0x1p-24 * abs_dot(&g, i, j), exact = 0;
                    for (int k = 0; k < n; k++) exact += (double)g.wf[(size_t)i * n + k] * g.xf[(size_t)j * n + k];
                    CHECK(fabs(all[j * nr + i] - exact) <= tol);
                }
            if (test_failed_now()) break;
        }
        free(all);
        case_free(&g);
    }
}

/* Batch invariance (quant.h): for every ISA, each output has the same bits whatever tile it lands in,
 * i.e. a 9 x 7 call, every smaller call, and one output at a time all agree exactly. The forward pass relies
 * on it for batched verification to equal one-token decoding. n = 1024 exercises every unrolled path. */
TEST(test_quant_gemm_batch_invariant) {
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int type = weight_types[ti], n = 1024;
        rng_seed(77 + type);
        gemm_case g;
        REQUIRE(case_make(&g, type, n, 9, 7) == 0);
        for (int isa = QUANT_ISA_SCALAR; isa <= quant_isa_best(); isa++) {
            float all[7][9], part[7][9], one;
            quant_gemm(isa, type, n, g.w, g.ws, 9, g.x, g.xs, 7, &all[0][0], 9);
            for (int nr = 1; nr <= 9; nr++)
                for (int nx = 1; nx <= 7; nx++) {
                    quant_gemm(isa, type, n, g.w, g.ws, nr, g.x, g.xs, nx, &part[0][0], 9);
                    for (int j = 0; j < nx; j++)
                        for (int i = 0; i < nr; i++)
                            CHECK_MSG(!memcmp(&part[j][i], &all[j][i], sizeof(float)), "%s %s: y[%d][%d] of a %dx%d call differs",
                                      quant_traits_get(type)->name, quant_isa_name(isa), j, i, nr, nx);
                }
            for (int j = 0; j < 7; j++)
                for (int i = 0; i < 9; i++) {
                    quant_gemm(isa, type, n, g.w + i * g.ws, g.ws, 1, g.x + j * g.xs, g.xs, 1, &one, 1);
                    CHECK_MSG(!memcmp(&one, &all[j][i], sizeof(float)), "%s %s: y[%d][%d] alone differs",
                              quant_traits_get(type)->name, quant_isa_name(isa), j, i);
                }
        }
        case_free(&g);
    }
}

/* The scalar reference against plain double math on the dequantized weights and activations: the
 * integer kernels must compute exactly sum w_k x_k up to float rounding of the block sums. */
TEST(test_quant_gemm_scalar_matches_dequantized_math) {
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int type = weight_types[ti];
        rng_seed(77 + type);
        gemm_case g;
        const int n = 512, nr = 5, nx = 3;
        REQUIRE(case_make(&g, type, n, nr, nx) == 0);
        float y[3][5];
        quant_gemm(QUANT_ISA_SCALAR, type, n, g.w, g.ws, nr, g.x, g.xs, nx, &y[0][0], 5);
        for (int j = 0; j < nx; j++)
            for (int i = 0; i < nr; i++) {
                double want = 0;
                for (int k = 0; k < n; k++) want += (double)g.wf[(size_t)i * n + k] * g.xf[(size_t)j * n + k];
                double tol = 2.0 * n * 0x1p-24 * abs_dot(&g, i, j);
                CHECK_MSG(fabs(y[j][i] - want) <= tol, "%s y[%d][%d] = %.9g, float math %.9g (tol %.3g)",
                          quant_traits_get(type)->name, j, i, y[j][i], want, tol);
            }
        case_free(&g);
    }
}

/* Repacked layouts (quant_repack: Q8_0, Q4_0, Q4_K, Q6_K): at every ISA, every output of every call shape (row groups 1..3,
 * columns 1..7, any column offset) equals the scalar reference on the matrix as the file has it, bit for bit; so
 * batch invariance holds, and a repacked model computes what a plain one does under the scalar kernels. Lengths
 * include an odd block count for Q8_0 and Q4_0 (800 = 25 blocks) and TinyLlama's ffn (5632). */
TEST(test_quant_repacked_equals_plain_reference) {
    static const int types[] = {DUET_TYPE_Q8_0, DUET_TYPE_Q4_0, DUET_TYPE_Q4_K, DUET_TYPE_Q6_K};
    static const int ns[] = {256, 800, 5632};
    enum { NR = 24, NX = 7 };
    for (int ti = 0; ti < 4; ti++)
        for (int ni = 0; ni < 3; ni++) {
            const int type = types[ti], n = quant_traits_get(type)->block == 256 && ni == 1 ? 768 : ns[ni];
            const int rt = QUANT_REPACK8 | type;
            rng_seed(500 + 10 * type + ni);
            gemm_case g;
            REQUIRE(case_make(&g, type, n, NR, NX) == 0);
            if (type == DUET_TYPE_Q6_K) /* llama.cpp's Q6_K scales can be negative; ours are not: flip some */
                for (size_t b = 0; b < g.ws * NR / 210; b++)
                    for (int k = 0; k < 16; k += 3) g.w[210 * b + 192 + k] = (unsigned char)(-(signed char)g.w[210 * b + 192 + k]);
            if (type == DUET_TYPE_Q8_0) { /* the largest products: a file may hold -128 (our quantizer never writes
                                             it), activations reach +-127; a pair of them is what the int16 must hold */
                for (size_t b = 0; b < g.ws * NR / 34; b++)
                    for (int k = 0; k < 32; k++)
                        if (b % 3 < 2) g.w[34 * b + 2 + k] = b % 3 == 0 || k % 4 < 2 ? 0x80 : 0x7f;
                for (size_t b = 0; b < g.xs / 34; b++)
                    for (int k = 0; k < 32; k++) {
                        g.x[34 * b + 2 + k] = b % 2 ? 127 : (unsigned char)-127;
                        g.x[g.xs + 34 * b + 2 + k] = k % 3 ? 127 : (unsigned char)-127;
                    }
            }
            unsigned char *wr = malloc(g.ws * NR);
            REQUIRE(wr);
            memcpy(wr, g.w, g.ws * NR);
            REQUIRE(quant_repack(type, wr, NR, n) == 0);
            CHECK(memcmp(wr, g.w, g.ws * NR) != 0); /* the layout did change */
            float ref[NX][NR], got[NX][NR + 8];
            quant_gemm(QUANT_ISA_SCALAR, type, n, g.w, g.ws, NR, g.x, g.xs, NX, &ref[0][0], NR);
            for (int isa = QUANT_ISA_SCALAR; isa <= quant_isa_best(); isa++)
                for (int g0 = 0; g0 < NR; g0 += 8)
                    for (int nr = 8; g0 + nr <= NR; nr += 8)
                        for (int j0 = 0; j0 < NX; j0 += 3)
                            for (int nx = 1; j0 + nx <= NX; nx++) {
                                memset(got, 0x7f, sizeof got);
                                quant_gemm(isa, rt, n, wr + g0 * g.ws, g.ws, nr, g.x + j0 * g.xs, g.xs, nx, &got[0][0], NR + 8);
                                for (int j = 0; j < nx; j++) {
                                    for (int i = 0; i < nr; i++)
                                        CHECK_MSG(!memcmp(&got[j][i], &ref[j0 + j][g0 + i], sizeof(float)),
                                                  "%s x8 %s n=%d rows %d+%d cols %d+%d: y[%d][%d] = %.9g, plain scalar %.9g",
                                                  quant_traits_get(type)->name, quant_isa_name(isa), n, g0, nr, j0, nx,
                                                  j, i, got[j][i], ref[j0 + j][g0 + i]);
                                    for (int i = nr; i < NR + 8; i++) CHECK(got[j][i] > 1e38f); /* untouched */
                                }
                                if (test_failed_now()) goto next;
                            }
        next:
            free(wr);
            case_free(&g);
        }
}

/* Which matrices get a repacked layout, and that no GGUF type number can name one. */
TEST(test_quant_repack_rules) {
    static unsigned char buf[8 * 18];
    CHECK(quant_traits_get(QUANT_REPACK8 | DUET_TYPE_Q4_0) == NULL);
    CHECK_EQ_INT(quant_base_type(QUANT_REPACK8 | DUET_TYPE_Q4_K), DUET_TYPE_Q4_K);
    CHECK_EQ_INT(quant_base_type(DUET_TYPE_Q8_0), DUET_TYPE_Q8_0);
    const bool simd = quant_isa_best() >= QUANT_ISA_AVX2;
    CHECK_EQ_INT(quant_repack_type(DUET_TYPE_Q4_0, 16, 2048), simd ? (QUANT_REPACK8 | DUET_TYPE_Q4_0) : DUET_TYPE_Q4_0);
    CHECK_EQ_INT(quant_repack_type(DUET_TYPE_Q4_K, 8, 256), simd ? (QUANT_REPACK8 | DUET_TYPE_Q4_K) : DUET_TYPE_Q4_K);
    CHECK_EQ_INT(quant_repack_type(DUET_TYPE_Q4_0, 12, 2048), DUET_TYPE_Q4_0); /* rows not in groups of 8 */
    CHECK_EQ_INT(quant_repack_type(DUET_TYPE_Q8_0, 16, 2048), simd ? (QUANT_REPACK8 | DUET_TYPE_Q8_0) : DUET_TYPE_Q8_0);
    CHECK_EQ_INT(quant_repack_type(DUET_TYPE_F16, 16, 2048), DUET_TYPE_F16); /* no layout for the type */
    CHECK_EQ_INT(quant_repack_type(DUET_TYPE_Q4_0, 8, 1 << 30), DUET_TYPE_Q4_0); /* too long for the aux terms */
    CHECK_EQ_INT(quant_repack(DUET_TYPE_Q4_0, buf, 4, 32), DUET_EINVAL);
    CHECK_EQ_INT(quant_repack(DUET_TYPE_F32, buf, 8, 4), DUET_EINVAL);
    CHECK_EQ_INT(quant_repack(DUET_TYPE_Q4_0, buf, 8, 32), 0);
}

/* Attention's weighted sum of value rows: every ISA within the float bound of the exact sum (each ISA
 * adds in order of p, but SIMD uses FMA), on lengths that leave tails of every size; no write past o[n]. */
TEST(test_quant_wsum_matches_exact) {
    static const int ns[] = {1, 7, 8, 16, 31, 64, 100, 129};
    for (int isa = QUANT_ISA_SCALAR; isa <= quant_isa_best(); isa++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (int nv = 1; nv <= 40; nv += 13) {
                const int n = ns[ni], stride = n + 3;
                float a[40], v[40 * 132], o[132];
                rng_seed(77 + (uint64_t)(n * 41 + nv));
                fill_normal(a, nv, 1);
                fill_normal(v, (int64_t)nv * stride, 1);
                for (int i = 0; i < 132; i++) o[i] = 12345.0f;
                quant_wsum_f32(isa, n, nv, a, v, sizeof(float) * stride, o);
                for (int i = 0; i < n; i++) {
                    double exact = 0, mag = 0;
                    for (int p = 0; p < nv; p++) {
                        exact += (double)a[p] * v[p * stride + i];
                        mag += fabs((double)a[p] * v[p * stride + i]);
                    }
                    CHECK_MSG(fabs(o[i] - exact) <= 2.0 * nv * 0x1p-24 * mag, "%s n=%d nv=%d o[%d] = %.9g, exact %.9g",
                              quant_isa_name(isa), n, nv, i, o[i], exact);
                }
                for (int i = n; i < 132; i++) CHECK_MSG(o[i] == 12345.0f, "%s n=%d wrote o[%d]", quant_isa_name(isa), n, i);
            }
}

/* Softmax and SwiGLU at every ISA: within 4 ulp of the scalar reference (libm's expf) on lengths that leave
 * tails of every size, on inputs that underflow and overflow exp, with no write past n; and one element at a time
 * gives the bits of the whole row (the split of SwiGLU between threads must not change a value). */
TEST(test_quant_softmax_swiglu_match_reference) {
    static const float extreme[] = {-1e30f, -100.0f, -88.5f, -87.4f, -87.2f, -50.0f, -1.0f, -0.0f, 0.0f,
                                    1e-30f, 0.5f, 20.0f, 88.0f, 88.5f, 100.0f, 1e30f};
    const int n_ext = (int)(sizeof extreme / sizeof *extreme);
    for (int isa = QUANT_ISA_SCALAR; isa <= quant_isa_best(); isa++)
        for (int n = 1; n <= 70; n += n < 20 ? 1 : 7) {
            float ref[80], got[80], g[80], u[80], one[80];
            rng_seed(311 + (uint64_t)n);
            fill_normal(ref, n, 6);
            if (n > 4) ref[n / 2] = -1e30f; /* exp underflows to 0 */
            for (int i = n; i < 80; i++) ref[i] = got[i] = 777.0f;
            memcpy(got, ref, sizeof(float) * n);
            quant_softmax_f32(QUANT_ISA_SCALAR, ref, n, 0.35f);
            quant_softmax_f32(isa, got, n, 0.35f);
            double sum = 0;
            for (int i = 0; i < n; i++) {
                sum += got[i];
                CHECK_MSG(fabsf(got[i] - ref[i]) <= 4 * 0x1p-23f * ref[i] + 0x1p-126f,
                          "%s softmax n=%d [%d] = %.9g, scalar %.9g", quant_isa_name(isa), n, i, got[i], ref[i]);
            }
            CHECK_MSG(fabs(sum - 1) < 1e-5, "%s softmax n=%d sums to %.9g", quant_isa_name(isa), n, sum);
            for (int i = n; i < 80; i++) CHECK_MSG(got[i] == 777.0f, "%s softmax n=%d wrote [%d]", quant_isa_name(isa), n, i);

            fill_normal(g, n, 4);
            fill_normal(u, n, 1);
            for (int i = 0; i < n && i < n_ext; i += 2) g[i] = extreme[(i + n) % n_ext];
            for (int i = 0; i < n; i++) {
                one[i] = ref[i] = g[i];
                quant_swiglu_f32(isa, one + i, u + i, 1);
            }
            for (int i = n; i < 80; i++) g[i] = 777.0f;
            quant_swiglu_f32(QUANT_ISA_SCALAR, ref, u, (size_t)n);
            quant_swiglu_f32(isa, g, u, (size_t)n);
            for (int i = 0; i < n; i++) {
                CHECK_MSG(fabsf(g[i] - ref[i]) <= 4 * 0x1p-23f * fabsf(ref[i]) + 0x1p-120f,
                          "%s swiglu n=%d [%d] = %.9g, scalar %.9g", quant_isa_name(isa), n, i, g[i], ref[i]);
                CHECK_MSG(memcmp(&g[i], &one[i], sizeof(float)) == 0, "%s swiglu n=%d [%d]: %.9g alone, %.9g in the row",
                          quant_isa_name(isa), n, i, one[i], g[i]);
            }
            for (int i = n; i < 80; i++) CHECK_MSG(g[i] == 777.0f, "%s swiglu n=%d wrote [%d]", quant_isa_name(isa), n, i);
        }
}

/* DUET_ISA lowers the level, never raises it. */
TEST(test_quant_isa_env_override) {
    const char *old = getenv("DUET_ISA");
    unsetenv("DUET_ISA");
    int best = quant_isa_best();
    setenv("DUET_ISA", "scalar", 1);
    CHECK_EQ_INT(quant_isa_best(), QUANT_ISA_SCALAR);
    setenv("DUET_ISA", "avx2", 1);
    CHECK_EQ_INT(quant_isa_best(), best < QUANT_ISA_AVX2 ? best : QUANT_ISA_AVX2);
    setenv("DUET_ISA", "avx512", 1);
    CHECK_EQ_INT(quant_isa_best(), best);
    if (old)
        setenv("DUET_ISA", old, 1);
    else
        unsetenv("DUET_ISA");
    CHECK(!strcmp(quant_isa_name(QUANT_ISA_AVX512), "avx512"));
}

/* Activation quantization (Q8_0, Q8_K) has SIMD versions that must give the scalar reference's bytes:
 * compare with DUET_ISA=scalar on random rows, rows with exact .5 ties, zero blocks and max ties. */
TEST(test_quant_activation_simd_matches_scalar) {
    enum { N = 2048 };
    float *x = malloc(N * sizeof(float));
    unsigned char *a = malloc(N * 2), *b = malloc(N * 2);
    REQUIRE(x && a && b);
    const char *old = getenv("DUET_ISA");
    for (int trial = 0; trial < 5; trial++) {
        rng_seed(500 + trial);
        fill_normal(x, N, trial == 3 ? 1e-30f : 1.0f);
        if (trial == 1) /* amax 127: id = 1 and iscale = -1, so every k + 0.5 is a tie */
            for (int i = 0; i < N; i++) x[i] = i % 64 == 0 ? 127.0f : (float)((int)(x[i] * 40) % 127) + 0.5f;
        if (trial == 2) {
            memset(x, 0, 256 * sizeof(float)); /* a zero block of both formats */
            x[300] = 50, x[310] = -50;         /* +-amax ties: the first one decides the sign */
        }
        if (trial == 4) { /* a broken model's activations: NaN before and after the largest, infinities */
            x[3] = x[17] = x[40] = x[1001] = NAN;
            x[1000] = 1e4f;
            x[256 + 5] = INFINITY, x[600] = -INFINITY;
            for (int i = 1024; i < 1280; i++) x[i] = NAN; /* a block of nothing else */
        }
        for (int ti = 0; ti < 2; ti++) {
            const int type = ti ? DUET_TYPE_Q8_K : DUET_TYPE_Q8_0;
            setenv("DUET_ISA", "scalar", 1);
            REQUIRE(quant_quantize_row(type, x, a, N) == 0);
            unsetenv("DUET_ISA");
            REQUIRE(quant_quantize_row(type, x, b, N) == 0);
            size_t bytes = quant_row_bytes(type, N), first = 0;
            while (first < bytes && a[first] == b[first]) first++;
            CHECK_MSG(first == bytes, "%s trial %d: SIMD and scalar differ at byte %zu of %zu",
                      quant_traits_get(type)->name, trial, first, bytes);
        }
    }
    if (old) setenv("DUET_ISA", old, 1);
    free(x);
    free(a);
    free(b);
}
