/* quant.c: block formats, llama.cpp-exact dequantization, reference quantizers, and the dot-product
 * kernels at three ISA levels (scalar reference, AVX2, AVX-512), picked at run time.
 *
 * ISA rule: QUANT_ISA_AVX2 needs AVX2+FMA+F16C (Haswell, Zen1 and later); QUANT_ISA_AVX512 needs
 * AVX-512 F+BW+VL+VNNI (Ice Lake, Zen4 and later). The AVX-512 level uses VNNI (vpdpbusd/vpdpwssd) for
 * the integer types; a CPU with AVX-512 but without VNNI (Skylake-X), or with AVX-VNNI but without
 * AVX-512 (Alder Lake), runs the AVX2 level.
 * Activation quantizers (Q8_0, Q8_K) run an AVX2 version at either SIMD level; it is bit-identical.
 *
 * Agreement with the scalar reference: the K-quant kernels sum each block's integer products exactly and
 * then do the reference's float operations in the reference's order, so every ISA gives the bit-identical
 * result. F32, F16, Q8_0 and Q4_0 kernels keep SIMD lanes of float partial sums (as llama.cpp does), so they
 * differ from the reference by float reassociation only (tests bound it relative to sum |w_i x_i|).
 */
#include "engine/quant.h"

#include "base/half.h"
#include "duet.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- block layouts (as in ggml-common.h) ----------------------------------------------------------- */

#define QK 32   /* elements of a Q8_0 / Q4_0 block */
#define QK_K 256 /* elements of a K-quant super-block */

typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;   /* x = d * (nibble - 8) */
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;        /* x = d * q */
typedef struct {
    uint16_t d, dmin;       /* super-block scales of the 6-bit sub-block scales and mins */
    uint8_t scales[12];     /* 8 x (6-bit scale, 6-bit min), packed */
    uint8_t qs[QK_K / 2];   /* 4-bit quants; 64-element chunk c: low nibbles = sub 2c, high = sub 2c+1 */
} block_q4_K;                                                    /* x = d*sc*q - dmin*m */
typedef struct {
    uint8_t ql[QK_K / 2];   /* low 4 bits */
    uint8_t qh[QK_K / 4];   /* high 2 bits */
    int8_t scales[QK_K / 16];
    uint16_t d;
} block_q6_K;                                                    /* x = d*sc*(q - 32) */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* sums of 16 consecutive qs, for the K-quants' min / offset terms */
} block_q8_K;

_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

/* ---- traits ---------------------------------------------------------------------------------------- */

/* Every ggml type number up to MXFP4 (39); gaps are numbers ggml retired. Sizes from ggml-common.h. */
static const quant_traits traits[] = {
    [0] = {"F32", 1, 4, DUET_TYPE_F32, true},
    [1] = {"F16", 1, 2, DUET_TYPE_F32, true},
    [2] = {"Q4_0", 32, 18, DUET_TYPE_Q8_0, true},
    [3] = {"Q4_1", 32, 20, 9, false},
    [6] = {"Q5_0", 32, 22, DUET_TYPE_Q8_0, false},
    [7] = {"Q5_1", 32, 24, 9, false},
    [8] = {"Q8_0", 32, 34, DUET_TYPE_Q8_0, true},
    [9] = {"Q8_1", 32, 36, 9, false},
    [10] = {"Q2_K", 256, 84, DUET_TYPE_Q8_K, false},
    [11] = {"Q3_K", 256, 110, DUET_TYPE_Q8_K, false},
    [12] = {"Q4_K", 256, 144, DUET_TYPE_Q8_K, true},
    [13] = {"Q5_K", 256, 176, DUET_TYPE_Q8_K, false},
    [14] = {"Q6_K", 256, 210, DUET_TYPE_Q8_K, true},
    [15] = {"Q8_K", 256, 292, DUET_TYPE_Q8_K, true},
    [16] = {"IQ2_XXS", 256, 66, DUET_TYPE_Q8_K, false},
    [17] = {"IQ2_XS", 256, 74, DUET_TYPE_Q8_K, false},
    [18] = {"IQ3_XXS", 256, 98, DUET_TYPE_Q8_K, false},
    [19] = {"IQ1_S", 256, 50, DUET_TYPE_Q8_K, false},
    [20] = {"IQ4_NL", 32, 18, DUET_TYPE_Q8_0, false},
    [21] = {"IQ3_S", 256, 110, DUET_TYPE_Q8_K, false},
    [22] = {"IQ2_S", 256, 82, DUET_TYPE_Q8_K, false},
    [23] = {"IQ4_XS", 256, 136, DUET_TYPE_Q8_K, false},
    [24] = {"I8", 1, 1, 24, false},
    [25] = {"I16", 1, 2, 25, false},
    [26] = {"I32", 1, 4, 26, false},
    [27] = {"I64", 1, 8, 27, false},
    [28] = {"F64", 1, 8, 28, false},
    [29] = {"IQ1_M", 256, 56, DUET_TYPE_Q8_K, false},
    [30] = {"BF16", 1, 2, 30, false},
    [34] = {"TQ1_0", 256, 54, DUET_TYPE_Q8_K, false},
    [35] = {"TQ2_0", 256, 66, DUET_TYPE_Q8_K, false},
    [39] = {"MXFP4", 32, 17, DUET_TYPE_Q8_0, false},
};

#define N_TRAITS ((int)(sizeof traits / sizeof traits[0]))

const quant_traits *quant_traits_get(int type) {
    if (type < 0 || type >= N_TRAITS || !traits[type].name) return NULL;
    return &traits[type];
}

size_t quant_row_bytes(int type, int64_t n) {
    const quant_traits *t = quant_traits_get(type);
    if (!t || n < 0 || n % t->block) return 0;
    return (size_t)(n / t->block) * t->block_bytes;
}

/* ---- dequantization: the exact float operations of ggml-quants.c's dequantize_row_* ---------------- */

/* The j-th (6-bit scale, 6-bit min) pair of a Q4_K block (ggml's get_scale_min_k4). */
static inline void q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* All 8 scales and 8 mins of a Q4_K block at once, as bytes (sc8 byte j = scale j), by 32-bit masks:
 * the same bit layout as q4k_scale_min, for the SIMD kernels. */
static inline void q4k_unpack_scales(const uint8_t *q, uint64_t *sc8, uint64_t *m8) {
    uint32_t a, b, c;
    memcpy(&a, q, 4);
    memcpy(&b, q + 4, 4);
    memcpy(&c, q + 8, 4);
    const uint32_t lo6 = 0x3f3f3f3f, lo4 = 0x0f0f0f0f, lo2 = 0x03030303;
    *sc8 = (a & lo6) | (uint64_t)((c & lo4) | ((a >> 6) & lo2) << 4) << 32;
    *m8 = (b & lo6) | (uint64_t)(((c >> 4) & lo4) | ((b >> 6) & lo2) << 4) << 32;
}

/* The 6-bit quant (0..63) of element 32*p + l (p < 4, l < 32) of a 128-element half of a Q6_K block. */
static inline int q6k_quant(const uint8_t *ql, const uint8_t *qh, int p, int l) {
    int lo = (p & 1) ? ql[l + 32] : ql[l];
    lo = (p & 2) ? lo >> 4 : lo & 0xF;
    return lo | (((qh[l] >> (2 * p)) & 3) << 4);
}

static void dequant_q4_0(const block_q4_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[i * QK + j + QK / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q8_0(const block_q8_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        for (int j = 0; j < QK; j++) y[i * QK + j] = x[i].qs[j] * d;
    }
}

static void dequant_q4_K(const block_q4_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q = x[i].qs;
        const float d = half_to_float(x[i].d);
        const float min = half_to_float(x[i].dmin);
        for (int j = 0; j < QK_K / 64; j++, q += 32) {
            uint8_t sc, m;
            q4k_scale_min(2 * j, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            q4k_scale_min(2 * j + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

static void dequant_q6_K(const block_q6_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = half_to_float(x[i].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *sc = x[i].scales + 8 * h;
            for (int l = 0; l < 32; l++)
                for (int p = 0; p < 4; p++)
                    y[32 * p + l] = d * sc[l / 16 + 2 * p] * (q6k_quant(ql, qh, p, l) - 32);
            y += 128;
        }
    }
}

static void dequant_q8_K(const block_q8_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < QK_K; j++) *y++ = x[i].d * x[i].qs[j];
}

int quant_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const quant_traits *t = quant_traits_get(type);
    if (!t || !t->supported) return DUET_EUNSUPPORTED;
    if (n < 0 || n % t->block) return DUET_EINVAL;
    int64_t nb = n / t->block;
    switch (type) {
    case DUET_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case DUET_TYPE_F16: {
        const uint8_t *h = src;
        for (int64_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, h + 2 * i, 2);
            dst[i] = half_to_float(v);
        }
        break;
    }
    case DUET_TYPE_Q4_0: dequant_q4_0(src, dst, nb); break;
    case DUET_TYPE_Q8_0: dequant_q8_0(src, dst, nb); break;
    case DUET_TYPE_Q4_K: dequant_q4_K(src, dst, nb); break;
    case DUET_TYPE_Q6_K: dequant_q6_K(src, dst, nb); break;
    case DUET_TYPE_Q8_K: dequant_q8_K(src, dst, nb); break;
    default: return DUET_EUNSUPPORTED;
    }
    return 0;
}

/* ---- quantization -------------------------------------------------------------------------------- */

/* An already rounded (or to-be-truncated) v as an int in [lo, hi]. Converting a NaN or an out-of-range
 * float to int is undefined in C, and a broken model's activations can be either; NaN gives lo, which is
 * what the SIMD quantizers' saturating packs give too. */
static inline int clamp_int(float v, int lo, int hi) { return v >= lo ? (v <= hi ? (int)v : hi) : lo; }

/* Q8_0 as llama.cpp's x86 build quantizes activations (quantize_row_q8_0 in ggml-cpu/arch/x86/quants.c,
 * not the _ref variant): id = 127/amax (not 1/d) and round half to even (vroundps), so our 8-bit
 * activations, and hence the dot products, equal llama.cpp's on this machine. */
static void quant_q8_0(const float *x, block_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        y[i].d = half_from_float(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = (int8_t)clamp_int(rintf(x[j] * id), -128, 127);
    }
}

/* llama.cpp's quantize_row_q4_0_ref: the value of largest magnitude maps to -8 exactly. */
static void quant_q4_0(const float *x, block_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++)
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = half_from_float(d);
        for (int j = 0; j < QK / 2; j++) {
            /* x*id + 8.5 is in [0.5, 16.5]: truncation rounds to nearest, 16 clamps to 15 */
            int q0 = clamp_int(x[j] * id + 8.5f, 0, 15), q1 = clamp_int(x[j + QK / 2] * id + 8.5f, 0, 15);
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* llama.cpp's quantize_row_q8_K_ref (x86 uses it for activations too); bsums feed the K-quants' min and
 * offset terms. */
static void quant_q8_K(const float *x, block_q8_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        memset(y[i].bsums, 0, sizeof y[i].bsums);
        if (amax == 0) {
            y[i].d = 0;
            memset(y[i].qs, 0, QK_K);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            /* rintf = ggml's nearest_int: round half to even (the default rounding mode) */
            y[i].qs[j] = (int8_t)clamp_int(rintf(iscale * x[j]), -128, 127);
            y[i].bsums[j / 16] += y[i].qs[j];
        }
        y[i].d = 1 / iscale;
    }
}

/* The fp16 value closest to v that is >= v (v >= 0), so that scale*qmax still covers the data. */
static uint16_t half_ceil(float v) {
    uint16_t h = half_from_float(v);
    if (half_to_float(h) < v) h++; /* positive halves are ordered like their bit patterns */
    return h;
}

/* Q4_K by min/max per 32-element sub-block (no iterative search): scale rounded *up* to a 6-bit multiple
 * of d so the top of the range never clamps, min rounded to nearest. Per element
 * |err| <= max(step/2, dmin/2) where step = d*sc <= range/15 + d. */
static void quant_q4_K(const float *x, block_q4_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float scale[8], mn[8], max_scale = 0, max_mn = 0;
        for (int j = 0; j < 8; j++) {
            float lo = 0, hi = -INFINITY;
            for (int l = 0; l < 32; l++) {
                lo = fminf(lo, x[32 * j + l]);
                hi = fmaxf(hi, x[32 * j + l]);
            }
            scale[j] = (hi - lo) / 15;
            mn[j] = -lo;
            max_scale = fmaxf(max_scale, scale[j]);
            max_mn = fmaxf(max_mn, mn[j]);
        }
        y[i].d = half_ceil(max_scale / 63);
        y[i].dmin = half_ceil(max_mn / 63);
        const float d = half_to_float(y[i].d), dmin = half_to_float(y[i].dmin);
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; j++) {
            float s = d > 0 ? ceilf(scale[j] / d) : 0, mm = dmin > 0 ? rintf(mn[j] / dmin) : 0;
            sc[j] = (uint8_t)clamp_int(s, 0, 63);
            m[j] = (uint8_t)clamp_int(mm, 0, 63);
        }
        memset(y[i].scales, 0, sizeof y[i].scales);
        for (int j = 0; j < 4; j++) {
            y[i].scales[j] = sc[j];
            y[i].scales[j + 4] = m[j];
            y[i].scales[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
            y[i].scales[j] |= (uint8_t)((sc[j + 4] >> 4) << 6);
            y[i].scales[j + 4] |= (uint8_t)((m[j + 4] >> 4) << 6);
        }
        memset(y[i].qs, 0, sizeof y[i].qs);
        for (int j = 0; j < 8; j++) {
            const float step = d * sc[j], off = dmin * m[j], inv = step > 0 ? 1 / step : 0;
            for (int l = 0; l < 32; l++) {
                int qi = clamp_int(rintf((x[32 * j + l] + off) * inv), 0, 15);
                y[i].qs[32 * (j / 2) + l] |= (uint8_t)(qi << (4 * (j & 1)));
            }
        }
    }
}

/* Q6_K by max |x| per 16-element group mapped to +-31 (not llama.cpp's search), group scale rounded up
 * to an 8-bit multiple of d. Per element |err| <= step/2, step = d*sc <= amax/31 + d. */
static void quant_q6_K(const float *x, block_q6_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float s[16], max_s = 0;
        for (int g = 0; g < 16; g++) {
            float amax = 0;
            for (int l = 0; l < 16; l++) amax = fmaxf(amax, fabsf(x[16 * g + l]));
            s[g] = amax / 31;
            max_s = fmaxf(max_s, s[g]);
        }
        y[i].d = half_ceil(max_s / 127);
        const float d = half_to_float(y[i].d);
        uint8_t q[QK_K];
        for (int g = 0; g < 16; g++) {
            float sc = d > 0 ? ceilf(s[g] / d) : 0;
            y[i].scales[g] = (int8_t)clamp_int(sc, 0, 127);
            const float step = d * y[i].scales[g], inv = step > 0 ? 1 / step : 0;
            for (int l = 0; l < 16; l++) {
                q[16 * g + l] = (uint8_t)(clamp_int(rintf(x[16 * g + l] * inv), -32, 31) + 32);
            }
        }
        memset(y[i].ql, 0, sizeof y[i].ql);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int h = 0; h < 2; h++)
            for (int p = 0; p < 4; p++)
                for (int l = 0; l < 32; l++) {
                    int v = q[128 * h + 32 * p + l];
                    y[i].ql[64 * h + l + 32 * (p & 1)] |= (uint8_t)((v & 0xF) << (4 * (p >> 1)));
                    y[i].qh[32 * h + l] |= (uint8_t)((v >> 4) << (2 * p));
                }
    }
}

/* ---- scalar reference dot products ---------------------------------------------------------------- */

/* The float tail of a K-quant block's dot product, shared by every ISA so all agree bit for bit. */
static inline float kq_block(float dw, float dmin, float dx, int32_t isum, int32_t msum) {
    return (dw * dx) * (float)isum - (dmin * dx) * (float)msum;
}

static float dot_f32(int n, const void *vw, const void *vx) {
    const float *w = vw, *x = vx;
    float s = 0;
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static float dot_f16(int n, const void *vw, const void *vx) {
    const uint16_t *w = vw;
    const float *x = vx;
    float s = 0;
    for (int i = 0; i < n; i++) s += half_to_float(w[i]) * x[i];
    return s;
}

static float dot_q8_0(int n, const void *vw, const void *vx) {
    const block_q8_0 *w = vw, *x = vx;
    float s = 0;
    for (int b = 0; b < n / QK; b++) {
        int32_t isum = 0;
        for (int j = 0; j < QK; j++) isum += w[b].qs[j] * x[b].qs[j];
        s += (float)isum * (half_to_float(w[b].d) * half_to_float(x[b].d));
    }
    return s;
}

static float dot_q4_0(int n, const void *vw, const void *vx) {
    const block_q4_0 *w = vw;
    const block_q8_0 *x = vx;
    float s = 0;
    for (int b = 0; b < n / QK; b++) {
        int32_t isum = 0;
        for (int j = 0; j < QK / 2; j++)
            isum += ((w[b].qs[j] & 0xF) - 8) * x[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + QK / 2];
        s += (float)isum * (half_to_float(w[b].d) * half_to_float(x[b].d));
    }
    return s;
}

static float dot_q4_K(int n, const void *vw, const void *vx) {
    const block_q4_K *w = vw;
    const block_q8_K *x = vx;
    float s = 0;
    for (int b = 0; b < n / QK_K; b++) {
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            q4k_scale_min(j, w[b].scales, &sc, &m);
            int32_t sub = 0;
            for (int l = 0; l < 32; l++) sub += ((w[b].qs[32 * (j / 2) + l] >> (4 * (j & 1))) & 0xF) * x[b].qs[32 * j + l];
            isum += sc * sub;
            msum += m * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
        }
        s += kq_block(half_to_float(w[b].d), half_to_float(w[b].dmin), x[b].d, isum, msum);
    }
    return s;
}

static float dot_q6_K(int n, const void *vw, const void *vx) {
    const block_q6_K *w = vw;
    const block_q8_K *x = vx;
    float s = 0;
    for (int b = 0; b < n / QK_K; b++) {
        int32_t isum = 0;
        for (int h = 0; h < 2; h++)
            for (int p = 0; p < 4; p++)
                for (int g = 0; g < 2; g++) {
                    int32_t sub = 0;
                    for (int l = 16 * g; l < 16 * g + 16; l++)
                        sub += (q6k_quant(w[b].ql + 64 * h, w[b].qh + 32 * h, p, l) - 32) * x[b].qs[128 * h + 32 * p + l];
                    isum += w[b].scales[8 * h + 2 * p + g] * sub;
                }
        s += kq_block(half_to_float(w[b].d), 0, x[b].d, isum, 0);
    }
    return s;
}

typedef float dot_fn(int n, const void *w, const void *x);
static dot_fn *dot_scalar(int type);

/* ---- repacked layouts (quant.h): where byte `byte` of row r's block lands in its group's 8-block unit ------- */

/* Q4_0 x 8: per block, the 8 rows' d (16 bytes), then the quants as 4 chunks of 8 rows x 4 bytes (so a 32-byte
 * load is 4 quant bytes of every row). Q8_0 x 8: likewise, the 8 d then 8 chunks of 8 rows x 4 quant bytes. Q4_K x 8: per super-block, the 8 d, the 8 dmin, then the 12 scale bytes
 * (the 32-bit words q4k_unpack_scales reads) and the 128 quant bytes, both as chunks of 8 rows x 4 bytes.
 * Q6_K x 8: the 8 d, then ql, qh and scales (the block's first 208 bytes) as chunks of 8 rows x 4 bytes. */
/* A block's fp16 scales (d; Q4_K: d, dmin): r8_head bytes from byte r8_head_at. The rest is its body. */
static inline int r8_head(int type) { return type == DUET_TYPE_Q4_K ? 4 : 2; }
static inline int r8_head_at(int type) { return type == DUET_TYPE_Q6_K ? (int)offsetof(block_q6_K, d) : 0; }
static size_t r8_offset(int type, int r, int byte) {
    const int hb = r8_head(type), hs = r8_head_at(type);
    if (byte >= hs && byte < hs + hb) return (size_t)(16 * ((byte - hs) / 2) + 2 * r + (byte - hs) % 2);
    const int j = byte < hs ? byte : byte - hb;
    return (size_t)(8 * hb + 32 * (j / 4) + 4 * r + j % 4);
}

/* Row r's block b of the group at g, as the file has it, into out. */
static void r8_block(int type, const uint8_t *g, int b, int r, uint8_t *out) {
    const size_t bb = traits[type].block_bytes;
    for (int k = 0; k < (int)bb; k++) out[k] = g[(size_t)b * 8 * bb + r8_offset(type, r, k)];
}

/* The scalar reference on a repacked group: block by block through the file type's dot product, whose
 * one-block result is 0 + that block's term, so the sum is the plain reference's, bit for bit. */
static float dot_r8(int type, int n, const uint8_t *g, int r, const uint8_t *x) {
    const int bl = traits[type].block, nb = n / bl;
    const size_t xb = traits[traits[type].act_type].block_bytes;
    uint8_t blk[sizeof(block_q6_K)];
    float s = 0;
    for (int b = 0; b < nb; b++) {
        r8_block(type, g, b, r, blk);
        s += dot_scalar(type)(bl, blk, x + (size_t)b * xb);
    }
    return s;
}

/* o[n] = sum over p < nv of a[p] * v[p][.], each element summed in order of p. */
static void wsum_scalar(int n, int nv, const float *a, const float *v, size_t vs, float *o) {
    for (int i = 0; i < n; i++) o[i] = 0;
    for (int p = 0; p < nv; p++) {
        const float *vp = (const float *)((const char *)v + (size_t)p * vs);
        for (int i = 0; i < n; i++) o[i] += a[p] * vp[i];
    }
}

/* s[n] = softmax(scale * s): max subtracted, the sum in double. */
static void softmax_scalar(float *s, int n, float scale) {
    float mx = -INFINITY;
    for (int p = 0; p < n; p++) {
        s[p] *= scale;
        if (s[p] > mx) mx = s[p];
    }
    double sum = 0;
    for (int p = 0; p < n; p++) {
        s[p] = expf(s[p] - mx);
        sum += s[p];
    }
    const float inv = (float)(1.0 / sum);
    for (int p = 0; p < n; p++) s[p] *= inv;
}

/* g[n] = silu(g) * u. */
static void swiglu_scalar(float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

typedef void gemm_fn(int n, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs, int nx,
                     float *y, size_t ldy);

static dot_fn *dot_scalar(int type) {
    switch (type) {
    case DUET_TYPE_F32: return dot_f32;
    case DUET_TYPE_F16: return dot_f16;
    case DUET_TYPE_Q8_0: return dot_q8_0;
    case DUET_TYPE_Q4_0: return dot_q4_0;
    case DUET_TYPE_Q4_K: return dot_q4_K;
    case DUET_TYPE_Q6_K: return dot_q6_K;
    default: return NULL;
    }
}

/* ---- tiling: every SIMD kernel computes an R x C tile (R weight rows, C activation rows) with R and C
 * compile-time constants, so the accumulators live in registers; a driver walks the tiles. ---------- */

#define RMAX 8
#define TILE_CASE(t, r, c) case (r) * 16 + (c): t(r, c, n, wt, ws, xt, xs, yt, ldy); break;
#define TILE_COLS1(t, r) TILE_CASE(t, r, 1)
#define TILE_COLS2(t, r) TILE_COLS1(t, r) TILE_CASE(t, r, 2)
#define TILE_COLS3(t, r) TILE_COLS2(t, r) TILE_CASE(t, r, 3)
#define TILE_COLS4(t, r) TILE_COLS3(t, r) TILE_CASE(t, r, 4)
#define TILE_COLS5(t, r) TILE_COLS4(t, r) TILE_CASE(t, r, 5)
#define TILE_COLS6(t, r) TILE_COLS5(t, r) TILE_CASE(t, r, 6)
#define TILE_COLS8(t, r) TILE_COLS6(t, r) TILE_CASE(t, r, 7) TILE_CASE(t, r, 8)
#define TILE_ROWS2(t, cm) TILE_COLS##cm(t, 1) TILE_COLS##cm(t, 2)
#define TILE_ROWS3(t, cm) TILE_ROWS2(t, cm) TILE_COLS##cm(t, 3)
#define TILE_ROWS4(t, cm) TILE_ROWS3(t, cm) TILE_COLS##cm(t, 4)
#define TILE_ROWS6(t, cm) TILE_ROWS4(t, cm) TILE_COLS##cm(t, 5) TILE_COLS##cm(t, 6)
#define TILE_ROWS8(t, cm) TILE_ROWS6(t, cm) TILE_COLS##cm(t, 7) TILE_COLS##cm(t, 8)
/* Activation rows per column block: as many whole tiles as fit in COL_BLOCK_BYTES, so the block stays in
 * L2 while every weight tile passes over it (without it a 128-token prompt re-read its 1-3 MB of activations
 * from L3 for every 4 weight rows). */
#define COL_BLOCK_BYTES (384u << 10)
static inline int col_block(size_t xs, int cmax) {
    size_t c = COL_BLOCK_BYTES / xs / (size_t)cmax * (size_t)cmax;
    return c < (size_t)cmax ? cmax : c > 1024 ? 1024 : (int)c;
}

/* Defines gemm_fn `name` from the tile function `tile`: tiles of at most rbat (<= RMAX) weight rows by cmax
 * activation rows. Weight tiles are the outer loop so that a tile's rows stay in L1/L2 while a column block
 * of activation rows streams by. Decode (nx = 1) walks down the matrix in tiles of rdec rows (1, 4, 6 or
 * 8; rdec <= RMAX): 1 where the weights then stream as one sequential read, which measured 1.2-2x the DRAM
 * bandwidth of 4 interleaved row streams (block types), more where one row would be a single FMA chain
 * (F32/F16: AVX-512 F32 4 rows ~32 GB/s, F16 8 rows ~29 vs 4 rows ~27 GB/s in alternating runs). */
#define DEC_CASE(t, r) case r: t(r, 1, n, wt, ws, x, xs, yt, ldy); break;
#define DEC_CASES1(t)
#define DEC_CASES4(t) DEC_CASE(t, 1) DEC_CASE(t, 2) DEC_CASE(t, 3)
#define DEC_CASES6(t) DEC_CASES4(t) DEC_CASE(t, 4) DEC_CASE(t, 5)
#define DEC_CASES8(t) DEC_CASES6(t) DEC_CASE(t, 6) DEC_CASE(t, 7)
#define GEMM_DRIVER(name, tile, rbat, cmax, rdec, attr)                                                   \
    attr static void name(int n, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs, int nx, \
                          float *y, size_t ldy) {                                                         \
        if (nx == 1) { /* decode: rdec-row tiles down the matrix, then the rows left over */              \
            for (int i = 0; i < nr; i += rdec) {                                                          \
                const uint8_t *wt = w + i * ws;                                                           \
                float *yt = y + i;                                                                        \
                switch (nr - i < rdec ? nr - i : rdec) { DEC_CASE(tile, rdec) DEC_CASES##rdec(tile) }     \
            }                                                                                             \
            return;                                                                                       \
        }                                                                                                 \
        const int cb = col_block(xs, cmax);                                                               \
        for (int j0 = 0; j0 < nx; j0 += cb)                                                              \
            for (int i = 0; i < nr; i += rbat) {                                                          \
                const int R = nr - i < rbat ? nr - i : rbat;                                              \
                for (int j = j0; j < nx && j < j0 + cb; j += cmax) {                                      \
                    const int C = nx - j < cmax ? nx - j : cmax;                                          \
                    const uint8_t *wt = w + i * ws, *xt = x + j * xs;                                     \
                    float *yt = y + j * ldy + i;                                                          \
                    switch (R * 16 + C) { TILE_ROWS##rbat(tile, cmax) }                                   \
                }                                                                                         \
            }                                                                                             \
    }

#define UNROLL _Pragma("GCC unroll 8")
/* Pins v in a register at this point of the program. gcc's reassociation of integer vector adds otherwise
 * regroups a running sum (computing every product first, then adding them up), which keeps all the products
 * live at once and spills them to the stack. The integer sums are exact either way. */
#define PIN(v) __asm__("" : "+x"(v))

/* ---- AVX2 + FMA + F16C ---------------------------------------------------------------------------- */

#define AVX2_TARGET "avx2,fma,f16c"
#define AVX2_FN __attribute__((target(AVX2_TARGET)))
#define AVX2_INL static inline __attribute__((always_inline, target(AVX2_TARGET)))

AVX2_INL float hsum_ps_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The largest lane. max_ps keeps its second operand where either is NaN, so a NaN lane is skipped unless it comes
 * first in a pair; the callers keep NaN out of their lanes. */
AVX2_INL float hmax_ps_avx2(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

AVX2_INL int32_t hsum_i32_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

AVX2_INL float h2f_avx2(uint16_t h) { return _cvtsh_ss(h); }

/* w rows are F32 (f16 = false) or F16 (f16 = true); x rows are F32. Every output keeps one 8-lane FMA chain
 * over k in ascending order, then hsum_ps_avx2, then the scalar tail in order (float_out_avx2): the same for
 * every R x C tile and for the k-blocked batch driver (which parks the chains in memory between blocks, exactly),
 * so where an output lands does not change its bits. */
#define FT_W(r) (f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + (r) * ws + 2 * k))) \
                     : _mm256_loadu_ps((const float *)(w + (r) * ws) + k))
#define FT_X(c) _mm256_loadu_ps((const float *)(x + (c) * xs) + k)
/* acc[r][c] += w[r][k..k+8) * x[c][k..k+8) for k = 0, 8, .. < nk. Batch tiles hold the vectors of their
 * shorter side in registers (PIN: gcc otherwise folds the load into every FMA that uses it) and stream the
 * other side: a 4x3 tile loads 7 vectors per 12 FMAs instead of 16 (F16, n = 2048, 5632 rows x 128: ~58 ->
 * ~75 GFLOP/s on the shared Zen 3 VM). */
AVX2_INL void float_steps_avx2(const int R, const int C, const bool f16, int nk, const uint8_t *w, size_t ws,
                               const uint8_t *x, size_t xs, __m256 acc[RMAX][4]) {
    int k = 0;
    if (C == 1) { /* decode: as many weight rows in flight as the tile has, x as a memory operand */
        for (; k < nk; k += 8) {
            __m256 wv[RMAX];
            UNROLL for (int r = 0; r < R; r++) wv[r] = FT_W(r);
            const __m256 xv = FT_X(0);
            UNROLL for (int r = 0; r < R; r++) acc[r][0] = _mm256_fmadd_ps(wv[r], xv, acc[r][0]);
        }
    } else if (C <= R) {
        for (; k < nk; k += 8) {
            __m256 xv[4];
            UNROLL for (int c = 0; c < C; c++) {
                xv[c] = FT_X(c);
                PIN(xv[c]);
            }
            UNROLL for (int r = 0; r < R; r++) {
                __m256 wv = FT_W(r);
                PIN(wv);
                UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
            }
        }
    } else {
        for (; k < nk; k += 8) {
            __m256 wv[RMAX];
            UNROLL for (int r = 0; r < R; r++) wv[r] = FT_W(r);
            UNROLL for (int c = 0; c < C; c++) {
                __m256 xv = FT_X(c);
                PIN(xv);
                UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
            }
        }
    }
}
#undef FT_W
#undef FT_X

/* One output: its chain's lanes summed, then the elements from k on (n not a multiple of 8). */
AVX2_INL float float_out_avx2(const bool f16, __m256 acc, int k, int n, const uint8_t *wr, const float *xr) {
    float s = hsum_ps_avx2(acc);
    for (; k < n; k++) {
        float wk;
        if (f16) {
            uint16_t h;
            memcpy(&h, wr + 2 * k, 2);
            wk = h2f_avx2(h);
        } else {
            wk = ((const float *)wr)[k];
        }
        s += wk * xr[k];
    }
    return s;
}

AVX2_INL void float_tile_avx2(const int R, const int C, const bool f16, int n, const uint8_t *w, size_t ws,
                              const uint8_t *x, size_t xs, float *y, size_t ldy) {
    __m256 acc[RMAX][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    float_steps_avx2(R, C, f16, n / 8 * 8, w, ws, x, xs, acc);
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++)
        y[c * ldy + r] = float_out_avx2(f16, acc[r][c], n / 8 * 8, n, w + r * ws, (const float *)(x + c * xs));
}

AVX2_INL void f32_tile_avx2(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                            size_t xs, float *y, size_t ldy) {
    float_tile_avx2(R, C, false, n, w, ws, x, xs, y, ldy);
}
AVX2_INL void f16_tile_avx2(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                            size_t xs, float *y, size_t ldy) {
    float_tile_avx2(R, C, true, n, w, ws, x, xs, y, ldy);
}

/* Q8_0 (q4 = false) or Q4_0 (q4 = true) weights times Q8_0 activations; per block the 32 products are
 * summed in int32 lanes, scaled by d_w*d_x and accumulated in float lanes. */
AVX2_INL void q32_tile_avx2(const int R, const int C, const bool q4, int n, const uint8_t *w, size_t ws,
                            const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0xF), eight = _mm256_set1_epi8(8);
    __m256 acc[RMAX][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int b = 0; b < n / QK; b++) {
        __m256i wq[RMAX], aw[RMAX]; /* Q8_0: |w| (unsigned) and w itself (for its sign); Q4_0: nibbles */
        __m256 dw[RMAX];
        UNROLL for (int r = 0; r < R; r++) {
            if (q4) {
                const block_q4_0 *bw = (const block_q4_0 *)(w + r * ws) + b;
                const __m128i q = _mm_loadu_si128((const __m128i *)bw->qs);
                aw[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
                dw[r] = _mm256_set1_ps(h2f_avx2(bw->d));
            } else {
                const block_q8_0 *bw = (const block_q8_0 *)(w + r * ws) + b;
                wq[r] = _mm256_loadu_si256((const __m256i *)bw->qs);
                aw[r] = _mm256_sign_epi8(wq[r], wq[r]);
                dw[r] = _mm256_set1_ps(h2f_avx2(bw->d));
            }
        }
        UNROLL for (int c = 0; c < C; c++) {
            const block_q8_0 *bx = (const block_q8_0 *)(x + c * xs) + b;
            const __m256i xq = _mm256_loadu_si256((const __m256i *)bx->qs);
            const __m256 dx = _mm256_set1_ps(h2f_avx2(bx->d));
            const __m256i xs8 = q4 ? _mm256_maddubs_epi16(eight, xq) : _mm256_setzero_si256(); /* Q4_0: 8 * pair sums of x */
            UNROLL for (int r = 0; r < R; r++) {
                __m256i p16 = q4 ? _mm256_sub_epi16(_mm256_maddubs_epi16(aw[r], xq), xs8)
                                 : _mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(xq, wq[r]));
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[r][c] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw[r], dx), acc[r][c]);
            }
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) y[c * ldy + r] = hsum_ps_avx2(acc[r][c]);
}

AVX2_INL void q8_0_tile_avx2(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                             size_t xs, float *y, size_t ldy) {
    q32_tile_avx2(R, C, false, n, w, ws, x, xs, y, ldy);
}
AVX2_INL void q4_0_tile_avx2(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                             size_t xs, float *y, size_t ldy) {
    q32_tile_avx2(R, C, true, n, w, ws, x, xs, y, ldy);
}

/* sum_j m_j * (bsums[2j] + bsums[2j+1]) of a Q4_K block's mins m8 (bytes) and a Q8_K block. */
AVX2_INL int32_t q4k_minsum_avx2(uint64_t m8, const int16_t *bsums) {
    const __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums), _mm_loadu_si128((const __m128i *)(bsums + 8)));
    __m128i s = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)m8)), pairs);
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/* Q4_K x Q8_K: exact int32 sums per block (sub-block scales applied with vpmaddwd), then kq_block. */
AVX2_INL void q4_K_tile_avx2(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                             size_t xs, float *y, size_t ldy) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    float sum[RMAX][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) sum[r][c] = 0;
    for (int b = 0; b < n / QK_K; b++) {
        const block_q4_K *bw[RMAX];
        const block_q8_K *bx[4];
        uint64_t sc8[RMAX], m8[RMAX];
        UNROLL for (int r = 0; r < R; r++) {
            bw[r] = (const block_q4_K *)(w + r * ws) + b;
            q4k_unpack_scales(bw[r]->scales, &sc8[r], &m8[r]);
        }
        UNROLL for (int c = 0; c < C; c++) bx[c] = (const block_q8_K *)(x + c * xs) + b;
        __m256i isum[RMAX][4];
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
        UNROLL for (int k = 0; k < 4; k++) {
            __m256i lo[RMAX], hi[RMAX], sl[RMAX], sh[RMAX];
            UNROLL for (int r = 0; r < R; r++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(bw[r]->qs + 32 * k));
                lo[r] = _mm256_and_si256(q, m4);
                hi[r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                sl[r] = _mm256_set1_epi16((int16_t)(sc8[r] >> (16 * k) & 0xFF));
                sh[r] = _mm256_set1_epi16((int16_t)(sc8[r] >> (16 * k + 8) & 0xFF));
            }
            UNROLL for (int c = 0; c < C; c++) {
                const __m256i xl = _mm256_loadu_si256((const __m256i *)(bx[c]->qs + 64 * k));
                const __m256i xh = _mm256_loadu_si256((const __m256i *)(bx[c]->qs + 64 * k + 32));
                UNROLL for (int r = 0; r < R; r++) {
                    const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[r], xl), sl[r]);
                    const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[r], xh), sh[r]);
                    isum[r][c] = _mm256_add_epi32(isum[r][c], _mm256_add_epi32(pl, ph));
                }
            }
        }
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++)
            sum[r][c] += kq_block(h2f_avx2(bw[r]->d), h2f_avx2(bw[r]->dmin), bx[c]->d, hsum_i32_avx2(isum[r][c]),
                                  q4k_minsum_avx2(m8[r], bx[c]->bsums));
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) y[c * ldy + r] = sum[r][c];
}

/* The 32 6-bit quants (0..63) of part p (< 4) of the half of a Q6_K block at ql, qh. */
AVX2_INL __m256i q6k_part_avx2(const uint8_t *ql, const uint8_t *qh, const int p) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m2h = _mm256_set1_epi8(0x30);
    const __m256i l = _mm256_loadu_si256((const __m256i *)(ql + 32 * (p & 1)));
    const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
    const __m256i lo = _mm256_and_si256(p & 2 ? _mm256_srli_epi16(l, 4) : l, m4);
    /* bits 2p, 2p+1 of qh to bits 4, 5 (16-bit shifts: the mask drops what crosses a byte) */
    const __m256i hs = p == 0 ? _mm256_slli_epi16(h, 4) : p == 1 ? _mm256_slli_epi16(h, 2) : p == 2 ? h : _mm256_srli_epi16(h, 2);
    return _mm256_or_si256(lo, _mm256_and_si256(hs, m2h));
}

/* Q6_K x Q8_K: sum sc*q*x with the unsigned quants, minus 32*sum sc*bsums for the -32 offset. */
AVX2_INL void q6_K_tile_avx2(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                             size_t xs, float *y, size_t ldy) {
    float sum[RMAX][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) sum[r][c] = 0;
    for (int b = 0; b < n / QK_K; b++) {
        const block_q6_K *bw[RMAX];
        const block_q8_K *bx[4];
        __m256i scv[RMAX][8]; /* part 4h+p: scale of its first 16 in the low 8 lanes, second 16 in the high */
        __m256i sc16[RMAX];
        UNROLL for (int r = 0; r < R; r++) {
            bw[r] = (const block_q6_K *)(w + r * ws) + b;
            for (int i = 0; i < 8; i++)
                scv[r][i] = _mm256_set_m128i(_mm_set1_epi16(bw[r]->scales[2 * i + 1]), _mm_set1_epi16(bw[r]->scales[2 * i]));
            sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)bw[r]->scales));
        }
        UNROLL for (int c = 0; c < C; c++) bx[c] = (const block_q8_K *)(x + c * xs) + b;
        __m256i isum[RMAX][4];
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
        UNROLL for (int h = 0; h < 2; h++) UNROLL for (int p = 0; p < 4; p++) {
            __m256i q[RMAX];
            UNROLL for (int r = 0; r < R; r++) q[r] = q6k_part_avx2(bw[r]->ql + 64 * h, bw[r]->qh + 32 * h, p);
            UNROLL for (int c = 0; c < C; c++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(bx[c]->qs + 128 * h + 32 * p));
                UNROLL for (int r = 0; r < R; r++)
                    isum[r][c] = _mm256_add_epi32(isum[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], xv), scv[r][4 * h + p]));
            }
        }
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) {
            const __m256i off = _mm256_madd_epi16(sc16[r], _mm256_loadu_si256((const __m256i *)bx[c]->bsums));
            const int32_t is = hsum_i32_avx2(isum[r][c]) - 32 * hsum_i32_avx2(off);
            sum[r][c] += kq_block(h2f_avx2(bw[r]->d), 0, bx[c]->d, is, 0);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) y[c * ldy + r] = sum[r][c];
}

GEMM_DRIVER(gemm_f32_avx2_dec, f32_tile_avx2, 4, 3, 4, AVX2_FN)
GEMM_DRIVER(gemm_f16_avx2_dec, f16_tile_avx2, 4, 3, 4, AVX2_FN)
/* Batch F32/F16 (GEMM_DRIVER's loops inverted): a block of weight rows stays in L2 while each activation tile
 * (F32: 3 rows, n = 2048: 24 KB; F16: 4 rows), held in L1, passes over all of its weight tiles (F32: 4 rows;
 * F16: 3), so per 12 FMAs only the 4 (3) weight vectors come from L2. GEMM_DRIVER's order (a weight tile in L1,
 * activation blocks streaming from L2) fetched 3 F32 activation vectors per step from L2: quant_gemm F16 n=2048 x 5632 x 128 ~76 -> ~84 GFLOP/s, F16
 * n=5632 x 2048 ~73 -> ~83, F32 n=1024 x 2816 ~72 -> ~75 (best of 5 interleaved runs, shared Zen 3 VM;
 * 128 and 384 KB blocks measured no better than 256). The first activation tile's pass over a block read it from
 * DRAM at the pace of the FMAs (one core cannot stream that fast), so each block's passes prefetch the next block
 * into L2 a few lines per tile: quant_gemm F16 n=2048 x 5632 x 128 with weights 6x past the L3, best of 38,
 * ~87 -> ~90 GFLOP/s; TinyLlama F16 pp128 at 1 thread 37.0 -> 37.7 tok/s (medians of 3 interleaved runs). */
#define FLOAT_WBLOCK (256u << 10)
AVX2_INL void float_gemm_avx2(const bool f16, int n, const uint8_t *w, size_t ws, int nr, const uint8_t *x,
                              size_t xs, int nx, float *y, size_t ldy) {
    /* F16 tiles are 3 weight rows by 4 activation rows: 3 conversions per 12 FMAs instead of 4. quant_gemm F16,
     * 128 columns, 5 alternating runs in a slow spell, medians: n=2048 x 5632 rows 64.2 -> 78.3 GFLOP/s, n=5632 x
     * 2048 60.5 -> 79.6; TinyLlama F16 pp128 (bench_engine, 4-5 alternating runs) 35.2 -> 36.2 tok/s at 1 thread,
     * 69.1 -> 71.9 at 2. F32 has no conversion and measured no better at 3x4, so it keeps 4x3. */
    const int TR = f16 ? 3 : 4, TC = f16 ? 4 : 3;
    const size_t wb0 = FLOAT_WBLOCK / ws / (size_t)TR * (size_t)TR;
    const int wb = wb0 < (size_t)TR ? TR : wb0 > 4095 ? 4095 / TR * TR : (int)wb0;
    for (int i0 = 0; i0 < nr; i0 += wb) {
        const int i1 = nr - i0 < wb ? nr : i0 + wb, i2 = nr - i1 < wb ? nr : i1 + wb;
        /* the next block's rows, up to the end of its last row (rows may be strided: attention's keys) */
        const uint8_t *pf = w + (size_t)i1 * ws, *const pf_end = i2 > i1 ? w + (size_t)(i2 - 1) * ws + (f16 ? 2 : 4) * (size_t)n : pf;
        const size_t steps = (size_t)((nx + TC - 1) / TC) * (size_t)((i1 - i0 + TR - 1) / TR);
        const size_t per_step = ((size_t)(pf_end - pf) / 64 + steps - 1) / steps;
        for (int j = 0; j < nx; j += TC) {
            const int C = nx - j < TC ? nx - j : TC;
            const uint8_t *xt = x + j * xs;
            for (int i = i0; i < i1; i += TR) {
                for (size_t p = 0; p < per_step && pf < pf_end; p++, pf += 64) _mm_prefetch((const char *)pf, _MM_HINT_T1);
                const int R = i1 - i < TR ? i1 - i : TR;
                const uint8_t *wt = w + i * ws;
                float *yt = y + j * ldy + i;
#define FLOAT_TILE(r, c) case (r) * 8 + (c): float_tile_avx2(r, c, f16, n, wt, ws, xt, xs, yt, ldy); break;
#define FLOAT_TILE_ROW(r) FLOAT_TILE(r, 1) FLOAT_TILE(r, 2) FLOAT_TILE(r, 3) FLOAT_TILE(r, 4)
                switch (R * 8 + C) { FLOAT_TILE_ROW(1) FLOAT_TILE_ROW(2) FLOAT_TILE_ROW(3) FLOAT_TILE_ROW(4) }
#undef FLOAT_TILE_ROW
#undef FLOAT_TILE
            }
        }
    }
}
AVX2_FN static void gemm_f32_avx2(int n, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs, int nx,
                                  float *y, size_t ldy) {
    if (nx == 1) gemm_f32_avx2_dec(n, w, ws, nr, x, xs, nx, y, ldy);
    else float_gemm_avx2(false, n, w, ws, nr, x, xs, nx, y, ldy);
}
AVX2_FN static void gemm_f16_avx2(int n, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs, int nx,
                                  float *y, size_t ldy) {
    if (nx == 1) gemm_f16_avx2_dec(n, w, ws, nr, x, xs, nx, y, ldy);
    else float_gemm_avx2(true, n, w, ws, nr, x, xs, nx, y, ldy);
}
GEMM_DRIVER(gemm_q8_0_avx2, q8_0_tile_avx2, 4, 2, 4, AVX2_FN)
GEMM_DRIVER(gemm_q4_0_avx2, q4_0_tile_avx2, 4, 2, 1, AVX2_FN)
GEMM_DRIVER(gemm_q4_K_avx2, q4_K_tile_avx2, 4, 2, 1, AVX2_FN)
GEMM_DRIVER(gemm_q6_K_avx2, q6_K_tile_avx2, 4, 2, 4, AVX2_FN)

/* ---- AVX2 kernels of the repacked layouts: 8 rows per 256-bit vector, one row per 32-bit lane ---------- */

/* Decode reads a repacked matrix as one sequential stream, but the hardware prefetcher stops at each 4 KB page
 * and ramps up again: so while a group's block at g is read, the bytes R8_PREFETCH further on are requested.
 * bench_quant -n 2048 -r 5632 decode, medians of 5 alternating runs on the shared 2-core EPYC (load 2.8-3.5):
 * Q4_0x8 1 thread 11.8 -> 15.4 GB/s, 2 threads 9.7 -> 13.3; Q8_0x8 13.2 -> 13.7 and 11.6 -> 13.7 (1024 bytes ahead
 * was no better). A prefetch never faults, so the last blocks may ask past the matrix. */
#define R8_PREFETCH 2048
AVX2_INL void r8_prefetch_avx2(const uint8_t *g, size_t len) {
    for (size_t o = 0; o < len; o += 64) _mm_prefetch((const char *)g + R8_PREFETCH + o, _MM_HINT_T0);
}

/* Four quant bytes of an activation row at p, in every 32-bit lane. */
AVX2_INL __m256i bcast4_avx2(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Q4_0 x 8 rows by C columns of Q8_0. Per block and column: vpmaddubsw of unsigned nibbles by 4 broadcast
 * activation bytes (eight 4-element steps summed in int16: at most 8 * 2 * 15 * 128 = 30720), vpmaddwd to
 * int32, then the -8 * sum(x) of the nibbles' offset (precomputed per column and block in aux, with d_x as a
 * float): lane r holds row r's exact block sum. Then the reference's float steps, in its order:
 * s += isum * (d_w * d_x). */
AVX2_INL void q4_0x8_tile_avx2(const int C, int nb, const uint8_t *g, const uint8_t *x, size_t xs,
                               const int32_t *aux, float *y, size_t ldy) {
    const __m256i m4 = _mm256_set1_epi8(0xF), ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    UNROLL for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, g += 8 * sizeof(block_q4_0)) {
        if (C == 1) r8_prefetch_avx2(g, 8 * sizeof(block_q4_0));
        /* each 4-element step's nibbles are used by all C columns right away, so only the C int16 sums stay
         * live (the 8 unpacked quant vectors of a block held across the columns spilled with 4 columns) */
        __m256i s16[4];
        UNROLL for (int k = 0; k < 4; k++) { /* elements 4k..4k+3 (low nibbles) and 16+4k.. (high) of each row */
            const __m256i v = _mm256_loadu_si256((const __m256i *)(g + 16 + 32 * k));
            const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            UNROLL for (int c = 0; c < C; c++) {
                const int8_t *xq = ((const block_q8_0 *)(x + c * xs) + b)->qs + 4 * k;
                const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4_avx2(xq)),
                                                   _mm256_maddubs_epi16(hi, bcast4_avx2(xq + 16)));
                s16[c] = k ? _mm256_add_epi16(s16[c], p) : p;
                PIN(s16[c]);
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));
        UNROLL for (int c = 0; c < C; c++) {
            const int32_t *ab = aux + 2 * (c * nb + b); /* -8 * sum(x), d_x as float bits */
            const __m256i is = _mm256_add_epi32(_mm256_madd_epi16(s16[c], ones), _mm256_set1_epi32(ab[0]));
            const __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss((const float *)(ab + 1)));
            acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(_mm256_cvtepi32_ps(is), d));
        }
    }
    UNROLL for (int c = 0; c < C; c++) _mm256_storeu_ps(y + c * ldy, acc[c]);
}

/* Q8_0 x 8 rows by C columns of Q8_0. vpmaddubsw needs an unsigned operand: |w| (a -128 weight becomes the
 * unsigned byte 128) times x carrying w's sign; the activations are the quantizer's, within +-127, so flipping
 * their sign is exact. Each vpmaddubsw pair is at most 2 * 128 * 127 = 32512, which fits int16 but two of them
 * need not: every 4-element step goes to int32 through vpmaddwd at once. Lane r holds row r's exact block sum;
 * then the reference's float steps, in its order: s += isum * (d_w * d_x), d_x from aux. */
AVX2_INL void q8_0x8_tile_avx2(const int C, int nb, const uint8_t *g, const uint8_t *x, size_t xs,
                               const int32_t *aux, float *y, size_t ldy) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    UNROLL for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, g += 8 * sizeof(block_q8_0)) {
        if (C == 1) r8_prefetch_avx2(g, 8 * sizeof(block_q8_0));
        __m256i is[4];
        UNROLL for (int k = 0; k < 8; k++) { /* elements 4k..4k+3 of each row */
            const __m256i v = _mm256_loadu_si256((const __m256i *)(g + 16 + 32 * k));
            const __m256i a = _mm256_sign_epi8(v, v);
            UNROLL for (int c = 0; c < C; c++) {
                const int8_t *xq = ((const block_q8_0 *)(x + c * xs) + b)->qs + 4 * k;
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, _mm256_sign_epi8(bcast4_avx2(xq), v)), ones);
                is[c] = k ? _mm256_add_epi32(is[c], p) : p;
                PIN(is[c]);
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));
        UNROLL for (int c = 0; c < C; c++) {
            const __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss((const float *)(aux + c * nb + b)));
            acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(_mm256_cvtepi32_ps(is[c]), d));
        }
    }
    UNROLL for (int c = 0; c < C; c++) _mm256_storeu_ps(y + c * ldy, acc[c]);
}

/* vpshufb control that makes each 32-bit lane the int16 pair (byte b0, byte b1) of that lane. */
AVX2_INL __m256i pair_ctrl_avx2(int b0, int b1, __m256i lane) {
    return _mm256_add_epi8(_mm256_set1_epi32((int)((uint32_t)b0 | 0x8000u | (uint32_t)b1 << 16 | 0x80000000u)), lane);
}

/* Q4_K x 8 rows by C columns of Q8_K. Per 64-element chunk: nibbles by broadcast activation bytes summed in
 * int16 per sub-block (as for Q4_0), then vpmaddwd by that sub-block's scale of each row; the mins term by
 * vpmaddwd of each row's mins (pairs) and the activation's 32-element sums (pairs, precomputed per column and
 * super-block in bp); then kq_block's float steps per lane. Exact integer sums: bit-identical to the reference. */
AVX2_INL void q4_Kx8_tile_avx2(const int C, int nb, const uint8_t *g, const uint8_t *x, size_t xs,
                               const int32_t *bp, float *y, size_t ldy) {
    const __m256i m4 = _mm256_set1_epi8(0xF), lo6 = _mm256_set1_epi8(0x3F), lo2 = _mm256_set1_epi8(3);
    /* byte offset of each 32-bit lane inside its 128-bit half, for vpshufb controls */
    const __m256i lane = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12,
                                          0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
    /* The float sums live in y between blocks (a load and a store per block and column): in registers they,
     * the int16 and int32 sums of 4 columns and the scales need more than 16 and the inner loop spilled. */
    UNROLL for (int c = 0; c < C; c++) _mm256_storeu_ps(y + c * ldy, _mm256_setzero_ps());
    for (int b = 0; b < nb; b++, g += 8 * sizeof(block_q4_K)) {
        if (C == 1) r8_prefetch_avx2(g, 8 * sizeof(block_q4_K));
        const __m256i a = _mm256_loadu_si256((const __m256i *)(g + 32)), cm = _mm256_loadu_si256((const __m256i *)(g + 96));
        /* q4k_unpack_scales on 8 rows at once: bytes 0-3 of a lane are scales 0-3, of sc_hi 4-7 */
        const __m256i sc_lo = _mm256_and_si256(a, lo6);
        const __m256i sc_hi = _mm256_or_si256(_mm256_and_si256(cm, m4),
                                              _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(a, 6), lo2), 4));
        __m256i isum[4], msum[4];
        /* one 32-element sub-block at a time (low nibbles of a 64-element chunk, then its high nibbles), so that
         * only C int16 sums are live (both halves of a chunk at once spilled too) */
        UNROLL for (int sb = 0; sb < 8; sb++) {
            const uint8_t *qk = g + 128 + 256 * (sb / 2);
            __m256i s16[4];
            UNROLL for (int e = 0; e < 8; e++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(qk + 32 * e));
                const __m256i q = _mm256_and_si256(sb & 1 ? _mm256_srli_epi16(v, 4) : v, m4);
                UNROLL for (int c = 0; c < C; c++) {
                    const int8_t *xq = ((const block_q8_K *)(x + c * xs) + b)->qs + 32 * sb + 4 * e;
                    const __m256i p = _mm256_maddubs_epi16(q, bcast4_avx2(xq));
                    s16[c] = e ? _mm256_add_epi16(s16[c], p) : p;
                    PIN(s16[c]);
                }
            }
            /* scale of sub-block sb of each row as an int16 pair per lane */
            const __m256i scp = _mm256_shuffle_epi8(sb < 4 ? sc_lo : sc_hi, pair_ctrl_avx2(sb % 4, sb % 4, lane));
            UNROLL for (int c = 0; c < C; c++) {
                const __m256i t = _mm256_madd_epi16(s16[c], scp);
                isum[c] = sb ? _mm256_add_epi32(isum[c], t) : t;
                PIN(isum[c]);
            }
        }
        const __m256i bm = _mm256_loadu_si256((const __m256i *)(g + 64));
        const __m256i m_lo = _mm256_and_si256(bm, lo6);
        const __m256i m_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(cm, 4), m4),
                                             _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(bm, 6), lo2), 4));
        UNROLL for (int i = 0; i < 4; i++) { /* mins 2i, 2i+1 of each row as an int16 pair per lane */
            const int j = 2 * (i & 1);
            const __m256i mp = _mm256_shuffle_epi8(i < 2 ? m_lo : m_hi, pair_ctrl_avx2(j, j + 1, lane));
            UNROLL for (int c = 0; c < C; c++) {
                const __m256i t = _mm256_madd_epi16(mp, _mm256_set1_epi32(bp[(c * nb + b) * 4 + i]));
                msum[c] = i ? _mm256_add_epi32(msum[c], t) : t;
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));
        const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16)));
        UNROLL for (int c = 0; c < C; c++) {
            const __m256 dx = _mm256_set1_ps(((const block_q8_K *)(x + c * xs) + b)->d);
            const __m256 t = _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[c])),
                                           _mm256_mul_ps(_mm256_mul_ps(dm, dx), _mm256_cvtepi32_ps(msum[c])));
            _mm256_storeu_ps(y + c * ldy, _mm256_add_ps(_mm256_loadu_ps(y + c * ldy), t));
        }
    }
}

/* vpshufb control that makes each 32-bit lane the int16 pair (byte b0 << 8, byte b1 << 8) of that lane; an
 * arithmetic shift right by 8 then sign-extends the two bytes (Q6_K's scales are signed). */
AVX2_INL __m256i pair_hi_ctrl_avx2(int b0, int b1, __m256i lane) {
    return _mm256_add_epi8(_mm256_set1_epi32((int)(0x80u | (uint32_t)b0 << 8 | 0x800000u | (uint32_t)b1 << 24)), lane);
}

/* Q6_K x 8 rows by C columns of Q8_K. Per 32-element part: the 6-bit quants (0..63) of 8 rows, 4 elements per
 * lane, by broadcast activation bytes; two steps summed in int16 (at most 2 * 2 * 63 * 128 = 32256), then
 * vpmaddwd by the 16-element group's scale of each row (sign-extended). The -32 offset: 32 * sum over groups of
 * scale times the activations' group sum (bsums pairs, read in place). Exact sums, then kq_block's float steps
 * (dmin = 0) per lane: bit-identical to the reference. */
AVX2_INL void q6_Kx8_tile_avx2(const int C, int nb, const uint8_t *g, const uint8_t *x, size_t xs,
                               const int32_t *aux, float *y, size_t ldy) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m2h = _mm256_set1_epi8(0x30);
    const __m256i lane = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12,
                                          0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
    const __m256 zero = _mm256_setzero_ps();
    /* float sums in y between blocks, scale bytes read where used: registers go to the int16 and int32 sums
     * (held in registers with the scales, the 4-column tile spilled) */
    UNROLL for (int c = 0; c < C; c++) _mm256_storeu_ps(y + c * ldy, zero);
    for (int b = 0; b < nb; b++, g += 8 * sizeof(block_q6_K)) {
        if (C == 1) r8_prefetch_avx2(g, 8 * sizeof(block_q6_K));
        const uint8_t *body = g + 16; /* 4-byte piece j of every row: body + 32 j */
        const uint8_t *scb8 = body + 32 * 48; /* scale bytes 4s..4s+3 of each row: scb8 + 32 s */
        __m256i isum[4];
        UNROLL for (int h = 0; h < 2; h++) UNROLL for (int p = 0; p < 4; p++) {
            const int ga = 8 * h + 2 * p; /* groups ga (elements 0-15 of the part) and ga + 1 */
            __m256i s16[4];
            UNROLL for (int e = 0; e < 8; e++) {
                const __m256i ql = _mm256_loadu_si256((const __m256i *)(body + 32 * (16 * h + 8 * (p & 1) + e)));
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(body + 32 * (32 + 8 * h + e)));
                const __m256i lo = _mm256_and_si256(p & 2 ? _mm256_srli_epi16(ql, 4) : ql, m4);
                const __m256i hs = p == 0 ? _mm256_slli_epi16(qh, 4) : p == 1 ? _mm256_slli_epi16(qh, 2) : p == 2 ? qh : _mm256_srli_epi16(qh, 2);
                const __m256i q = _mm256_or_si256(lo, _mm256_and_si256(hs, m2h));
                __m256i sc = _mm256_setzero_si256();
                if (e & 1) { /* the scale of this 16-element group of each row, sign-extended to an int16 pair */
                    const int gi = e < 4 ? ga : ga + 1;
                    sc = _mm256_srai_epi16(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(scb8 + 32 * (gi / 4))),
                                                               pair_hi_ctrl_avx2(gi % 4, gi % 4, lane)), 8);
                }
                UNROLL for (int c = 0; c < C; c++) {
                    const int8_t *xq = ((const block_q8_K *)(x + c * xs) + b)->qs + 128 * h + 32 * p + 4 * e;
                    const __m256i t = _mm256_maddubs_epi16(q, bcast4_avx2(xq));
                    if (e & 1) {
                        const __m256i m = _mm256_madd_epi16(_mm256_add_epi16(s16[c], t), sc);
                        isum[c] = h || p || e > 1 ? _mm256_add_epi32(isum[c], m) : m;
                        PIN(isum[c]);
                    } else {
                        s16[c] = t;
                    }
                }
            }
        }
        UNROLL for (int i = 0; i < 8; i++) { /* scales 2i, 2i+1 of each row by the group sums 2i, 2i+1 */
            const __m256i sp = _mm256_srai_epi16(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(scb8 + 32 * (i / 2))),
                                                                     pair_hi_ctrl_avx2(2 * (i & 1), 2 * (i & 1) + 1, lane)), 8);
            UNROLL for (int c = 0; c < C; c++) {
                int32_t pair;
                memcpy(&pair, ((const block_q8_K *)(x + c * xs) + b)->bsums + 2 * i, 4);
                isum[c] = _mm256_sub_epi32(isum[c], _mm256_slli_epi32(_mm256_madd_epi16(sp, _mm256_set1_epi32(pair)), 5));
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));
        UNROLL for (int c = 0; c < C; c++) {
            const __m256 dx = _mm256_set1_ps(((const block_q8_K *)(x + c * xs) + b)->d);
            const __m256 t = _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[c])),
                                           _mm256_mul_ps(_mm256_mul_ps(zero, dx), zero)); /* kq_block with dmin = 0 */
            _mm256_storeu_ps(y + c * ldy, _mm256_add_ps(_mm256_loadu_ps(y + c * ldy), t));
        }
    }
    (void)aux;
}

/* Per-column block terms the repacked tiles share, computed once per column block: Q4_0: -8 * sum of the
 * block's 32 activations (int32) and its d as a float; Q8_0: its d as a float; Q4_K: the 8 sums of 32 activations (int16, from bsums) as 4 pairs. */
#define R8_AUX_INTS 16384
static inline int r8_aux_ints(int type) { /* no target: r8_fits asks it too */
    return type == DUET_TYPE_Q8_0 ? 1 : type == DUET_TYPE_Q4_0 ? 2 : type == DUET_TYPE_Q4_K ? 4 : 0;
}

AVX2_INL void r8_aux_avx2(int type, int nb, const uint8_t *x, size_t xs, int ncol, int32_t *aux) {
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int c = 0; c < ncol; c++)
        for (int b = 0; b < nb; b++) {
            if (type == DUET_TYPE_Q6_K) {
                return; /* reads its terms (bsums) in place */
            } else if (type == DUET_TYPE_Q8_0) {
                const float dx = h2f_avx2(((const block_q8_0 *)(x + c * xs) + b)->d);
                memcpy(&aux[c * nb + b], &dx, 4);
            } else if (type == DUET_TYPE_Q4_0) {
                const block_q8_0 *bx = (const block_q8_0 *)(x + c * xs) + b;
                const __m256i v = _mm256_loadu_si256((const __m256i *)bx->qs);
                aux[2 * (c * nb + b)] = -8 * hsum_i32_avx2(_mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16));
                const float dx = h2f_avx2(bx->d);
                memcpy(&aux[2 * (c * nb + b) + 1], &dx, 4);
            } else {
                const block_q8_K *bx = (const block_q8_K *)(x + c * xs) + b;
                const __m128i s = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bx->bsums),
                                                 _mm_loadu_si128((const __m128i *)(bx->bsums + 8)));
                _mm_storeu_si128((__m128i *)(aux + (c * nb + b) * 4), s);
            }
        }
}

/* The driver of both: column blocks whose terms fit aux (and whose activations stay in L2), 8-row groups,
 * then tiles of up to cmax columns. quant_repack_type guarantees nb * r8_aux_ints <= R8_AUX_INTS. */
#define R8_TILE_CASES(tile) case 1: tile(1, nb, g, xt, xs, at, yt, ldy); break; \
    case 2: tile(2, nb, g, xt, xs, at, yt, ldy); break; case 3: tile(3, nb, g, xt, xs, at, yt, ldy); break; \
    case 4: tile(4, nb, g, xt, xs, at, yt, ldy); break;
#define R8_DRIVER(name, type, tile, cmax)                                                                  \
    AVX2_FN static void name(int n, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs, int nx, \
                             float *y, size_t ldy) {                                                        \
        const int nb = n / traits[type].block, per = r8_aux_ints(type);                                    \
        int32_t aux[R8_AUX_INTS];                                                                           \
        int cb = col_block(xs, cmax);                                                                       \
        if (per && cb > R8_AUX_INTS / (nb * per)) cb = R8_AUX_INTS / (nb * per);                                   \
        for (int j0 = 0; j0 < nx; j0 += cb) {                                                               \
            const int ncol = nx - j0 < cb ? nx - j0 : cb;                                                   \
            r8_aux_avx2(type, nb, x + j0 * xs, xs, ncol, aux);                                              \
            for (int i = 0; i < nr; i += 8)                                                                 \
                for (int j = 0; j < ncol; j += cmax) {                                                      \
                    const uint8_t *g = w + i * ws, *xt = x + (j0 + j) * xs;                                 \
                    const int32_t *at = aux + j * nb * per;                                                 \
                    float *yt = y + (j0 + j) * ldy + i;                                                     \
                    switch (ncol - j < cmax ? ncol - j : cmax) { R8_TILE_CASES(tile) }                      \
                }                                                                                           \
        }                                                                                                   \
    }

#ifndef R8_COLS
#define R8_COLS 4 /* columns per tile (<= 4) */
#endif
R8_DRIVER(gemm_q8_0x8_avx2, DUET_TYPE_Q8_0, q8_0x8_tile_avx2, R8_COLS)
R8_DRIVER(gemm_q4_0x8_avx2, DUET_TYPE_Q4_0, q4_0x8_tile_avx2, R8_COLS)
R8_DRIVER(gemm_q4_Kx8_avx2, DUET_TYPE_Q4_K, q4_Kx8_tile_avx2, R8_COLS)
R8_DRIVER(gemm_q6_Kx8_avx2, DUET_TYPE_Q6_K, q6_Kx8_tile_avx2, R8_COLS)

/* wsum_scalar's sums, 32 elements at a time in four registers (the chains of p stay in order), then 8 at a
 * time: heads of 8 or 16 values (stories260K's are 8) would otherwise all go to the scalar loop. */
AVX2_FN static void wsum_avx2(int n, int nv, const float *a, const float *v, size_t vs, float *o) {
    int i0 = 0;
    for (; i0 + 32 <= n; i0 += 32) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int p = 0; p < nv; p++) {
            const float *vp = (const float *)((const char *)v + (size_t)p * vs) + i0;
            const __m256 ap = _mm256_set1_ps(a[p]);
            UNROLL for (int u = 0; u < 4; u++) acc[u] = _mm256_fmadd_ps(ap, _mm256_loadu_ps(vp + 8 * u), acc[u]);
        }
        UNROLL for (int u = 0; u < 4; u++) _mm256_storeu_ps(o + i0 + 8 * u, acc[u]);
    }
    for (; i0 + 8 <= n; i0 += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int p = 0; p < nv; p++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(a[p]),
                                  _mm256_loadu_ps((const float *)((const char *)v + (size_t)p * vs) + i0), acc);
        _mm256_storeu_ps(o + i0, acc);
    }
    if (i0 < n) wsum_scalar(n - i0, nv, a, v + i0, vs, o + i0); /* a tail narrower than a register */
}

/* e^x in each lane: x = k ln2 + r with |r| <= ln2/2 (ln2 in two parts, so k ln2's first part is exact), e^r
 * from its Taylor series to r^7 (truncation under 1e-8, below half an ulp), times 2^k as two powers of two put in
 * the exponent bits, so that subnormal results and overflow to inf round as one multiplication would. Within 2 ulp
 * of expf; x is clamped to +-110 first (e^x is 0 or inf well before), which keeps NaN. */
AVX2_INL __m256 exp_ps_avx2(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-110.0f), _mm256_min_ps(_mm256_set1_ps(110.0f), x)); /* NaN: x */
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.42860677e-6f), r);
    static const float c[] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
    __m256 e = _mm256_set1_ps(c[0]);
    UNROLL for (int i = 1; i < 8; i++) e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(c[i]));
    const __m256i ki = _mm256_cvtps_epi32(k), k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
    const __m256i bias = _mm256_set1_epi32(127);
    e = _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23)));
    return _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23)));
}

/* The first min(left, 8) lanes at p; the others load as 0 and are not stored. Whole vectors take plain loads and
 * stores: masked stores are slow on AMD cores. */
AVX2_INL __m256i tail_mask_avx2(int left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
AVX2_INL __m256 load_part_avx2(const float *p, int left) {
    return left >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail_mask_avx2(left));
}
AVX2_INL void store_part_avx2(float *p, int left, __m256 v) {
    if (left >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, tail_mask_avx2(left), v);
}

/* softmax_scalar with exp_ps_avx2; the tail is masked rather than scalar, so that every element takes the same
 * exp whatever n. The scaled scores are recomputed rather than stored (the same bits). The max is exact in any
 * order; the double sum in 8 lanes differs from the in-order sum only in its last bits. */
AVX2_FN static void softmax_avx2(float *s, int n, float scale) {
    const __m256 vs = _mm256_set1_ps(scale);
    __m256 mv = _mm256_set1_ps(-INFINITY);
    for (int p = 0; p < n; p += 8) {
        const __m256 v = _mm256_mul_ps(load_part_avx2(s + p, n - p), vs);
        /* max_ps(v, m) keeps m where v is NaN; lanes past n keep m */
        mv = n - p >= 8 ? _mm256_max_ps(v, mv)
                        : _mm256_blendv_ps(mv, _mm256_max_ps(v, mv), _mm256_castsi256_ps(tail_mask_avx2(n - p)));
    }
    const __m256 mx = _mm256_set1_ps(hmax_ps_avx2(mv));
    __m256d sum0 = _mm256_setzero_pd(), sum1 = _mm256_setzero_pd();
    for (int p = 0; p < n; p += 8) {
        __m256 e = exp_ps_avx2(_mm256_sub_ps(_mm256_mul_ps(load_part_avx2(s + p, n - p), vs), mx));
        if (n - p < 8) e = _mm256_and_ps(e, _mm256_castsi256_ps(tail_mask_avx2(n - p)));
        store_part_avx2(s + p, n - p, e);
        sum0 = _mm256_add_pd(sum0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        sum1 = _mm256_add_pd(sum1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    sum0 = _mm256_add_pd(sum0, sum1);
    __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(sum0), _mm256_extractf128_pd(sum0, 1));
    const __m256 inv = _mm256_set1_ps((float)(1.0 / _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)))));
    for (int p = 0; p < n; p += 8) store_part_avx2(s + p, n - p, _mm256_mul_ps(load_part_avx2(s + p, n - p), inv));
}

/* swiglu_scalar with exp_ps_avx2, the tail masked (an element's bits must not depend on where a range ends). */
AVX2_FN static void swiglu_avx2(float *g, const float *u, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (size_t i = 0; i < n; i += 8) {
        const int left = n - i < 8 ? (int)(n - i) : 8;
        const __m256 gv = load_part_avx2(g + i, left);
        const __m256 e = exp_ps_avx2(_mm256_xor_ps(gv, neg));
        store_part_avx2(g + i, left, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), load_part_avx2(u + i, left)));
    }
}

/* Activation quantizers, bit-identical to quant_q8_0 / quant_q8_K: max, one division, products and
 * round-half-even conversions are exact IEEE operations in any order. */
AVX2_FN static void quant_q8_0_avx2(const float *x, block_q8_0 *y, int64_t nb) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undoes the lane-wise packs */
    for (int64_t i = 0; i < nb; i++, x += QK) {
        __m256 v[4], m = _mm256_setzero_ps();
        UNROLL for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), m); /* this order skips NaN, like fmaxf */
        }
        const float amax = hmax_ps_avx2(m);
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        y[i].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT); /* = half_from_float */
        __m256i q[4];
        UNROLL for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], _mm256_set1_ps(id)),
                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)y[i].qs, _mm256_permutevar8x32_epi32(p, order));
    }
}

AVX2_FN static void quant_q8_K_avx2(const float *x, block_q8_K *y, int64_t nb) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), top = _mm256_set1_epi32(127);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        /* this operand order skips NaN, as the reference's `>` does, so amax is one of the |x| below */
        for (int k = 0; k < QK_K / 8; k++) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)), m);
        const float amax = hmax_ps_avx2(m);
        if (amax == 0) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        int first = 0; /* the reference keeps the first element of largest magnitude */
        while (fabsf(x[first]) != amax) first++;
        const float iscale = -127.f / x[first];
        const __m256 s = _mm256_set1_ps(iscale);
        for (int k = 0; k < QK_K / 32; k++) {
            __m256i q[4];
            UNROLL for (int j = 0; j < 4; j++)
                q[j] = _mm256_min_epi32(top, _mm256_cvtps_epi32(_mm256_round_ps(
                           _mm256_mul_ps(s, _mm256_loadu_ps(x + 32 * k + 8 * j)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p = _mm256_permutevar8x32_epi32(p, order);
            _mm256_storeu_si256((__m256i *)(y[i].qs + 32 * k), p);
            /* groups 2k (low 128 bits) and 2k+1 (high): pair sums, then two horizontal adds per lane */
            __m256i g = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, p), ones16);
            g = _mm256_hadd_epi32(g, g);
            g = _mm256_hadd_epi32(g, g);
            y[i].bsums[2 * k] = (int16_t)_mm256_extract_epi32(g, 0);
            y[i].bsums[2 * k + 1] = (int16_t)_mm256_extract_epi32(g, 4);
        }
        y[i].d = 1 / iscale;
    }
}

/* ---- AVX-512 F+BW+VL+VNNI -------------------------------------------------------------------------- */

#define AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
#define AVX512_FN __attribute__((target(AVX512_TARGET)))
#define AVX512_INL static inline __attribute__((always_inline, target(AVX512_TARGET)))

/* One 16-lane step at element k of every row and column of the tile; masked (a constant) only for the tail. */
AVX512_INL void float_step_avx512(const int R, const int C, const bool f16, const bool masked, __mmask16 m, int k,
                                  const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, __m512 acc[RMAX][8]) {
    __m512 wv[RMAX];
    UNROLL for (int r = 0; r < R; r++) {
        const uint8_t *p = w + r * ws + (f16 ? 2 : 4) * (size_t)k;
        if (f16)
            wv[r] = _mm512_cvtph_ps(masked ? _mm256_maskz_loadu_epi16(m, p) : _mm256_loadu_si256((const __m256i *)p));
        else
            wv[r] = masked ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
        __asm__("" : "+v"(wv[r])); /* one load per weight vector, kept in a register for every column */
    }
    UNROLL for (int c = 0; c < C; c++) {
        const float *p = (const float *)(x + c * xs) + k;
        __m512 xv = masked ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
        __asm__("" : "+v"(xv)); /* likewise: gcc would fold these loads into each FMA */
        UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
    }
}

/* The order every F32/F16 output is summed in, whatever the tile: one chain over the row's 16-lane steps,
 * then the horizontal sum; the tail step uses masked loads and continues the chain. Batch tiles hold 24
 * accumulators: F32 4 rows x 6 columns, F16 6 x 4 (bench_quant-style runs at n=2048: F16 6x4 ~178,
 * 4x6 ~165, 3x8 ~124 GFLOP/s; F32 4x6 and 6x4 within noise). The former 4 x 3 tile with two chains per
 * output loaded 14 vectors per 24 FMAs instead of 10 (F16 batch ~120 GFLOP/s). Decode takes 4-row (F32)
 * or 8-row (F16) tiles, so enough chains are in flight that one chain per output costs it nothing. */
AVX512_INL void float_tile_avx512(const int R, const int C, const bool f16, int n, const uint8_t *w,
                                  size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    __m512 acc[RMAX][8];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int k = 0;
    _Pragma("GCC unroll 4") /* F16 decode: 21 -> 26 GB/s in bench_quant (a row's full cache line per pass) */
    for (; k + 16 <= n; k += 16) float_step_avx512(R, C, f16, false, 0xFFFF, k, w, ws, x, xs, acc);
    if (k < n) float_step_avx512(R, C, f16, true, (__mmask16)((1u << (n - k)) - 1), k, w, ws, x, xs, acc);
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++)
        y[c * ldy + r] = _mm512_reduce_add_ps(acc[r][c]);
}

AVX512_INL void f32_tile_avx512(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                                size_t xs, float *y, size_t ldy) {
    float_tile_avx512(R, C, false, n, w, ws, x, xs, y, ldy);
}
AVX512_INL void f16_tile_avx512(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                                size_t xs, float *y, size_t ldy) {
    float_tile_avx512(R, C, true, n, w, ws, x, xs, y, ldy);
}

/* Two 32-byte block payloads at p0 and p1 side by side (p1 NULL: zeros). */
AVX512_INL __m512i load2x32_avx512(const void *p0, const void *p1) {
    const __m256i lo = _mm256_loadu_si256((const __m256i *)p0);
    return p1 ? _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_loadu_si256((const __m256i *)p1), 1)
              : _mm512_zextsi256_si512(lo);
}

/* fp16 scales d0 in the low 8 lanes, d1 in the high 8, as floats (one conversion for both). */
AVX512_INL __m512 scale2_avx512(uint16_t d0, uint16_t d1) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)d0)),
                                                   _mm_set1_epi16((short)d1), 1));
}

/* Decode walks a quantized matrix R rows at a time, and a row of a 2048-wide model is only 2-4 KB: too short
 * for the hardware prefetcher to ramp up on each of R streams before the tile moves on. So while a tile
 * reads bytes [at, at + len) of its rows, the same bytes of the next R rows are requested. A prefetch never
 * faults, so the last tile may ask past the matrix. */
AVX512_INL void prefetch_next_rows(const int R, const uint8_t *w, size_t ws, size_t at, size_t len) {
    UNROLL for (int r = 0; r < R; r++)
        for (size_t o = 0; o < len; o += 64) _mm_prefetch((const char *)w + (size_t)(R + r) * ws + at + o, _MM_HINT_T0);
}

/* Q8_0 (q4 = false) or Q4_0 (q4 = true) x Q8_0, two blocks per 512-bit vector. vpdpbusd wants an
 * unsigned operand: Q8_0 weights are biased by +128 (w ^ 0x80) and Q4_0 nibbles are already unsigned;
 * the bias (128 or 8) times sum(x) is subtracted by starting the accumulation from -bias*sum(x). */
AVX512_INL void q32_tile_avx512(const int R, const int C, const bool q4, int n, const uint8_t *w, size_t ws,
                                const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const __m512i bias = _mm512_set1_epi8(q4 ? 8 : (char)0x80), m4 = _mm512_set1_epi8(0xF);
    const int nb = n / QK;
    __m512 acc[RMAX][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        const bool two = b + 1 < nb;
        if (C == 1) {
            const size_t bytes = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
            prefetch_next_rows(R, w, ws, (size_t)b * bytes, 2 * bytes);
        }
        __m512i uw[RMAX];
        __m512 dw[RMAX];
        UNROLL for (int r = 0; r < R; r++) {
            if (q4) {
                const block_q4_0 *bw = (const block_q4_0 *)(w + r * ws) + b;
                /* 128-bit lanes: block b's bytes twice, then block b+1's twice; odd lanes take high nibbles */
                const __m256i q0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)bw[0].qs));
                const __m256i q1 = two ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)bw[1].qs))
                                       : _mm256_setzero_si256();
                const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
                uw[r] = _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, q, _mm512_srli_epi16(q, 4)), m4);
                dw[r] = scale2_avx512(bw[0].d, two ? bw[1].d : 0);
            } else {
                const block_q8_0 *bw = (const block_q8_0 *)(w + r * ws) + b;
                uw[r] = _mm512_xor_si512(load2x32_avx512(bw[0].qs, two ? bw[1].qs : NULL), bias);
                dw[r] = scale2_avx512(bw[0].d, two ? bw[1].d : 0);
            }
        }
        UNROLL for (int c = 0; c < C; c++) {
            const block_q8_0 *bx = (const block_q8_0 *)(x + c * xs) + b;
            const __m512i xq = load2x32_avx512(bx[0].qs, two ? bx[1].qs : NULL);
            const __m512 dx = scale2_avx512(bx[0].d, two ? bx[1].d : 0);
            const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, xq));
            UNROLL for (int r = 0; r < R; r++) {
                const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, uw[r], xq));
                acc[r][c] = _mm512_fmadd_ps(p, _mm512_mul_ps(dw[r], dx), acc[r][c]);
            }
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) y[c * ldy + r] = _mm512_reduce_add_ps(acc[r][c]);
}

AVX512_INL void q8_0_tile_avx512(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                                 size_t xs, float *y, size_t ldy) {
    q32_tile_avx512(R, C, false, n, w, ws, x, xs, y, ldy);
}
AVX512_INL void q4_0_tile_avx512(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                                 size_t xs, float *y, size_t ldy) {
    q32_tile_avx512(R, C, true, n, w, ws, x, xs, y, ldy);
}

/* Q4_K x Q8_K, a 64-element chunk (two sub-blocks) per 512-bit vector: low nibbles in the low half, high
 * nibbles in the high half, vpmaddubsw then vpdpwssd with sub-block scale 2k in the low 16 lanes and
 * 2k+1 in the high 16. Exact int32 block sums, then kq_block: bit-identical to the reference. */
AVX512_INL void q4_K_tile_avx512(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                                 size_t xs, float *y, size_t ldy) {
    const __m512i m4 = _mm512_set1_epi8(0xF);
    float sum[RMAX][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) sum[r][c] = 0;
    for (int b = 0; b < n / QK_K; b++) {
        if (C == 1) prefetch_next_rows(R, w, ws, (size_t)b * sizeof(block_q4_K), sizeof(block_q4_K));
        const block_q4_K *bw[RMAX];
        const block_q8_K *bx[4];
        uint64_t sc8[RMAX], m8[RMAX];
        __m512i sc[RMAX]; /* int16 lanes 0..7: the 8 sub-block scales */
        UNROLL for (int r = 0; r < R; r++) {
            bw[r] = (const block_q4_K *)(w + r * ws) + b;
            q4k_unpack_scales(bw[r]->scales, &sc8[r], &m8[r]);
            sc[r] = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc8[r])));
        }
        UNROLL for (int c = 0; c < C; c++) bx[c] = (const block_q8_K *)(x + c * xs) + b;
        __m512i isum[RMAX][4];
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm512_setzero_si512();
        UNROLL for (int k = 0; k < 4; k++) {
            const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * k)), _mm256_set1_epi16((short)(2 * k + 1)), 1);
            __m512i wv[RMAX], sv[RMAX];
            UNROLL for (int r = 0; r < R; r++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(bw[r]->qs + 32 * k));
                wv[r] = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m4);
                sv[r] = _mm512_permutexvar_epi16(idx, sc[r]);
            }
            UNROLL for (int c = 0; c < C; c++) {
                const __m512i xv = _mm512_loadu_si512(bx[c]->qs + 64 * k);
                UNROLL for (int r = 0; r < R; r++)
                    isum[r][c] = _mm512_dpwssd_epi32(isum[r][c], _mm512_maddubs_epi16(wv[r], xv), sv[r]);
            }
        }
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++)
            sum[r][c] += kq_block(h2f_avx2(bw[r]->d), h2f_avx2(bw[r]->dmin), bx[c]->d,
                                  _mm512_reduce_add_epi32(isum[r][c]), q4k_minsum_avx2(m8[r], bx[c]->bsums));
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) y[c * ldy + r] = sum[r][c];
}

/* Q6_K x Q8_K, 64 elements per 512-bit vector: half h, part 0 = quants 0..63 (low nibbles of ql[64h..],
 * qh bits 0-1 | 2-3), part 1 = quants 64..127 (high nibbles, qh bits 4-5 | 6-7); the four 16-element
 * groups' scales go to int16 lanes 0-7, 8-15, 16-23, 24-31. Bit-identical to the reference. */
AVX512_INL void q6_K_tile_avx512(const int R, const int C, int n, const uint8_t *w, size_t ws, const uint8_t *x,
                                 size_t xs, float *y, size_t ldy) {
    const __m512i m4 = _mm512_set1_epi8(0xF), m2h = _mm512_set1_epi8(0x30);
    /* per 256-bit half: shift the qh bits of that part to bits 4-5 (left for part 0, right for part 1) */
    const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    float sum[RMAX][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) sum[r][c] = 0;
    for (int b = 0; b < n / QK_K; b++) {
        if (C == 1) prefetch_next_rows(R, w, ws, (size_t)b * sizeof(block_q6_K), sizeof(block_q6_K));
        const block_q6_K *bw[RMAX];
        const block_q8_K *bx[4];
        __m256i sc16[RMAX];
        UNROLL for (int r = 0; r < R; r++) {
            bw[r] = (const block_q6_K *)(w + r * ws) + b;
            sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)bw[r]->scales));
        }
        UNROLL for (int c = 0; c < C; c++) bx[c] = (const block_q8_K *)(x + c * xs) + b;
        __m512i isum[RMAX][4];
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm512_setzero_si512();
        UNROLL for (int h = 0; h < 2; h++) UNROLL for (int part = 0; part < 2; part++) {
            const int g0 = 8 * h + 4 * part; /* first of the four groups */
            const __m512i idx = _mm512_set_epi16(g0 + 3, g0 + 3, g0 + 3, g0 + 3, g0 + 3, g0 + 3, g0 + 3, g0 + 3,
                                                 g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 2,
                                                 g0 + 1, g0 + 1, g0 + 1, g0 + 1, g0 + 1, g0 + 1, g0 + 1, g0 + 1,
                                                 g0, g0, g0, g0, g0, g0, g0, g0);
            __m512i wv[RMAX], sv[RMAX];
            UNROLL for (int r = 0; r < R; r++) {
                const __m512i ql = _mm512_loadu_si512(bw[r]->ql + 64 * h);
                const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(bw[r]->qh + 32 * h)));
                const __m512i lo = _mm512_and_si512(part ? _mm512_srli_epi16(ql, 4) : ql, m4);
                const __m512i hi = _mm512_and_si512(part ? _mm512_srlv_epi16(qh, shr) : _mm512_sllv_epi16(qh, shl), m2h);
                wv[r] = _mm512_or_si512(lo, hi);
                sv[r] = _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(sc16[r]));
            }
            UNROLL for (int c = 0; c < C; c++) {
                const __m512i xv = _mm512_loadu_si512(bx[c]->qs + 128 * h + 64 * part);
                UNROLL for (int r = 0; r < R; r++)
                    isum[r][c] = _mm512_dpwssd_epi32(isum[r][c], _mm512_maddubs_epi16(wv[r], xv), sv[r]);
            }
        }
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) {
            const __m256i off = _mm256_madd_epi16(sc16[r], _mm256_loadu_si256((const __m256i *)bx[c]->bsums));
            const int32_t is = _mm512_reduce_add_epi32(isum[r][c]) - 32 * hsum_i32_avx2(off);
            sum[r][c] += kq_block(h2f_avx2(bw[r]->d), 0, bx[c]->d, is, 0);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) y[c * ldy + r] = sum[r][c];
}

GEMM_DRIVER(gemm_f32_avx512, f32_tile_avx512, 4, 6, 4, AVX512_FN)
GEMM_DRIVER(gemm_f16_avx512, f16_tile_avx512, 6, 4, 8, AVX512_FN)
GEMM_DRIVER(gemm_q8_0_avx512, q8_0_tile_avx512, 4, 4, 4, AVX512_FN)
GEMM_DRIVER(gemm_q4_0_avx512, q4_0_tile_avx512, 4, 4, 4, AVX512_FN)
GEMM_DRIVER(gemm_q4_K_avx512, q4_K_tile_avx512, 4, 4, 4, AVX512_FN)
GEMM_DRIVER(gemm_q6_K_avx512, q6_K_tile_avx512, 4, 4, 4, AVX512_FN)

/* wsum_scalar's sums, 64 elements at a time in four registers; the last chunk masked. */
AVX512_FN static void wsum_avx512(int n, int nv, const float *a, const float *v, size_t vs, float *o) {
    for (int i0 = 0; i0 < n; i0 += 64) {
        __mmask16 m[4];
        UNROLL for (int u = 0; u < 4; u++) {
            const int left = n - i0 - 16 * u;
            m[u] = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
        }
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int p = 0; p < nv; p++) {
            const float *vp = (const float *)((const char *)v + (size_t)p * vs) + i0;
            const __m512 ap = _mm512_set1_ps(a[p]);
            UNROLL for (int u = 0; u < 4; u++)
                acc[u] = _mm512_fmadd_ps(ap, _mm512_maskz_loadu_ps(m[u], vp + 16 * u), acc[u]);
        }
        UNROLL for (int u = 0; u < 4; u++) _mm512_mask_storeu_ps(o + i0 + 16 * u, m[u], acc[u]);
    }
}

/* ---- dispatch ------------------------------------------------------------------------------------- */

int quant_quantize_row(int type, const float *src, void *dst, int64_t n) {
    const quant_traits *t = quant_traits_get(type);
    if (!t || !t->supported) return DUET_EUNSUPPORTED;
    if (n < 0 || n % t->block) return DUET_EINVAL;
    int64_t nb = n / t->block;
    /* activations are quantized for every matmul: SIMD here, bit-identical to the scalar versions */
    const bool simd = (type == DUET_TYPE_Q8_0 || type == DUET_TYPE_Q8_K) && quant_isa_best() >= QUANT_ISA_AVX2;
    switch (type) {
    case DUET_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case DUET_TYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = half_from_float(src[i]);
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
        break;
    case DUET_TYPE_Q4_0: quant_q4_0(src, dst, nb); break;
    case DUET_TYPE_Q8_0: (simd ? quant_q8_0_avx2 : quant_q8_0)(src, dst, nb); break;
    case DUET_TYPE_Q4_K: quant_q4_K(src, dst, nb); break;
    case DUET_TYPE_Q6_K: quant_q6_K(src, dst, nb); break;
    case DUET_TYPE_Q8_K: (simd ? quant_q8_K_avx2 : quant_q8_K)(src, dst, nb); break;
    default: return DUET_EUNSUPPORTED;
    }
    return 0;
}

static void gemm_scalar(int type, int n, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs,
                        int nx, float *y, size_t ldy) {
    if (type & QUANT_REPACK8) {
        const int base = type & ~QUANT_REPACK8;
        for (int j = 0; j < nx; j++)
            for (int i = 0; i < nr; i++) y[j * ldy + i] = dot_r8(base, n, w + (i & ~7) * ws, i & 7, x + j * xs);
        return;
    }
    dot_fn *dot = dot_scalar(type);
    if (!dot) return; /* not a weight type: callers check traits->supported when they load a model */
    for (int j = 0; j < nx; j++)
        for (int i = 0; i < nr; i++) y[j * ldy + i] = dot(n, w + i * ws, x + j * xs);
}

static gemm_fn *gemm_simd(int isa, int type) {
    static gemm_fn *const avx2[] = {
        [DUET_TYPE_F32] = gemm_f32_avx2, [DUET_TYPE_F16] = gemm_f16_avx2, [DUET_TYPE_Q8_0] = gemm_q8_0_avx2,
        [DUET_TYPE_Q4_0] = gemm_q4_0_avx2, [DUET_TYPE_Q4_K] = gemm_q4_K_avx2, [DUET_TYPE_Q6_K] = gemm_q6_K_avx2,
    };
    static gemm_fn *const avx512[] = {
        [DUET_TYPE_F32] = gemm_f32_avx512, [DUET_TYPE_F16] = gemm_f16_avx512, [DUET_TYPE_Q8_0] = gemm_q8_0_avx512,
        [DUET_TYPE_Q4_0] = gemm_q4_0_avx512, [DUET_TYPE_Q4_K] = gemm_q4_K_avx512, [DUET_TYPE_Q6_K] = gemm_q6_K_avx512,
    };
    /* AVX-512 CPUs run the AVX2 kernels of the repacked layouts */
    if (type == (QUANT_REPACK8 | DUET_TYPE_Q8_0)) return isa >= QUANT_ISA_AVX2 ? gemm_q8_0x8_avx2 : NULL;
    if (type == (QUANT_REPACK8 | DUET_TYPE_Q4_0)) return isa >= QUANT_ISA_AVX2 ? gemm_q4_0x8_avx2 : NULL;
    if (type == (QUANT_REPACK8 | DUET_TYPE_Q4_K)) return isa >= QUANT_ISA_AVX2 ? gemm_q4_Kx8_avx2 : NULL;
    if (type == (QUANT_REPACK8 | DUET_TYPE_Q6_K)) return isa >= QUANT_ISA_AVX2 ? gemm_q6_Kx8_avx2 : NULL;
    if (type < 0 || type > DUET_TYPE_Q6_K) return NULL;
    return isa == QUANT_ISA_AVX512 ? avx512[type] : isa == QUANT_ISA_AVX2 ? avx2[type] : NULL;
}

void quant_gemm(int isa, int type, int n, const void *w, size_t w_stride, int nr, const void *x,
                size_t x_stride, int nx, float *y, size_t ldy) {
    gemm_fn *fn = isa > QUANT_ISA_SCALAR ? gemm_simd(isa, type) : NULL;
    if (fn)
        fn(n, w, w_stride, nr, x, x_stride, nx, y, ldy);
    else
        gemm_scalar(type, n, w, w_stride, nr, x, x_stride, nx, y, ldy);
}

int quant_base_type(int type) { return type & ~QUANT_REPACK8; }

static bool r8_fits(int type, int rows, int cols) {
    const bool layout = type == DUET_TYPE_Q8_0 || type == DUET_TYPE_Q4_0 || type == DUET_TYPE_Q4_K || type == DUET_TYPE_Q6_K;
    const int per = r8_aux_ints(type); /* the driver's per-column terms must fit its aux */
    return layout && rows > 0 && rows % 8 == 0 && cols > 0 && cols % traits[type].block == 0 &&
           (int64_t)cols / traits[type].block * per <= R8_AUX_INTS;
}

int quant_repack_type(int type, int rows, int cols) {
    return r8_fits(type, rows, cols) && quant_isa_best() >= QUANT_ISA_AVX2 ? QUANT_REPACK8 | type : type;
}

int quant_repack(int type, void *data, int rows, int cols) {
    if (!r8_fits(type, rows, cols)) return DUET_EINVAL;
    const size_t rb = quant_row_bytes(type, cols), bb = traits[type].block_bytes;
    const int nb = cols / traits[type].block, hb = r8_head(type), hs = r8_head_at(type);
    /* r8_offset of row 0 for each 2-byte piece of the head and 4-byte piece of the body (row r: + 2r, + 4r):
     * looked up per piece, not per byte, because load time is per GB */
    int head[2], nbody = 0;
    struct { int from, to; } body[sizeof(block_q6_K) / 4];
    for (int k = 0; k < hb / 2; k++) head[k] = (int)r8_offset(type, 0, hs + 2 * k);
    for (int j = 0; j < (int)bb - hb; j += 4, nbody++) { /* no 4-byte piece straddles the head */
        body[nbody].from = j < hs ? j : j + hb;
        body[nbody].to = (int)r8_offset(type, 0, body[nbody].from);
    }
    uint8_t *tmp = malloc(8 * rb); /* one group as the file has it */
    if (!tmp) return DUET_ENOMEM;
    for (int i = 0; i < rows; i += 8) {
        uint8_t *g = (uint8_t *)data + (size_t)i * rb;
        memcpy(tmp, g, 8 * rb);
        for (int b = 0; b < nb; b++)
            for (int r = 0; r < 8; r++) {
                const uint8_t *src = tmp + r * rb + (size_t)b * bb;
                uint8_t *dst = g + (size_t)b * 8 * bb;
                for (int k = 0; k < hb / 2; k++) memcpy(dst + 2 * r + head[k], src + hs + 2 * k, 2);
                for (int k = 0; k < nbody; k++) memcpy(dst + 4 * r + body[k].to, src + body[k].from, 4);
            }
    }
    free(tmp);
    return 0;
}

void quant_wsum_f32(int isa, int n, int nv, const float *a, const float *v, size_t v_stride, float *o) {
    (isa == QUANT_ISA_AVX512 ? wsum_avx512 : isa == QUANT_ISA_AVX2 ? wsum_avx2 : wsum_scalar)(n, nv, a, v, v_stride, o);
}

void quant_softmax_f32(int isa, float *s, int n, float scale) {
    (isa >= QUANT_ISA_AVX2 ? softmax_avx2 : softmax_scalar)(s, n, scale);
}

void quant_swiglu_f32(int isa, float *g, const float *u, size_t n) {
    (isa >= QUANT_ISA_AVX2 ? swiglu_avx2 : swiglu_scalar)(g, u, n);
}

/* F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c". */
static bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int cpu_isa(void) {
    __builtin_cpu_init();
    int best = QUANT_ISA_SCALAR;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c()) {
        best = QUANT_ISA_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            best = QUANT_ISA_AVX512;
    }
    return best;
}

int quant_isa_best(void) {
    /* CPUID traps to the hypervisor in a VM (microseconds): asked once, not per quantized row, where it
     * was 5% of a TinyLlama Q8_0 prefill. Racing first calls store the same value. */
    static atomic_int cached = -1;
    int best = atomic_load_explicit(&cached, memory_order_relaxed);
    if (best < 0) atomic_store_explicit(&cached, best = cpu_isa(), memory_order_relaxed);
    const char *env = getenv("DUET_ISA");
    if (env) {
        int want = !strcmp(env, "scalar") ? QUANT_ISA_SCALAR : !strcmp(env, "avx2") ? QUANT_ISA_AVX2
                 : !strcmp(env, "avx512") ? QUANT_ISA_AVX512 : best;
        if (want < best) best = want;
    }
    return best;
}

const char *quant_isa_name(int isa) {
    switch (isa) {
    case QUANT_ISA_SCALAR: return "scalar";
    case QUANT_ISA_AVX2: return "avx2";
    case QUANT_ISA_AVX512: return "avx512";
    default: return "?";
    }
}
