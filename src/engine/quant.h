/* quant.h: tensor block formats (F32, F16, Q8_0, Q4_0, Q4_K, Q6_K and the Q8_K activation format):
 * dequantization bit-identical to llama.cpp's, reference quantizers, and dot-product kernels.
 *
 * Weights of a quantized type are multiplied with activations converted to that type's act_type
 * (Q8_0 for Q8_0/Q4_0, Q8_K for Q4_K/Q6_K, F32 for F32 and F16), as llama.cpp does, so the integer
 * kernels can run. Every kernel has a portable scalar version that is the tested reference; AVX2 and
 * AVX-512 versions are chosen at run time (quant_isa_best) and tested against it.
 */
#ifndef DUET_ENGINE_QUANT_H
#define DUET_ENGINE_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct quant_traits {
    const char *name;   /* "Q4_K" */
    int block;          /* elements per block */
    size_t block_bytes; /* bytes per block */
    int act_type;       /* type activations are converted to for the dot product */
    bool supported;     /* false: known to GGUF (size is right) but the engine cannot compute with it */
} quant_traits;

/* Traits of a GGUF tensor type; NULL if the number is not a ggml type at all. */
const quant_traits *quant_traits_get(int type);
/* Bytes of a row of n elements (n must be a multiple of the block); 0 if not. */
size_t quant_row_bytes(int type, int64_t n);

/* dst[n] = the exact values src encodes. 0 ok, < 0 unsupported type or bad n. */
int quant_dequantize_row(int type, const void *src, float *dst, int64_t n);
/* Encodes src[n] in type (round to nearest like llama.cpp's reference quantizers; used for activations,
 * synthetic models and tests). 0 ok, < 0 unsupported. */
int quant_quantize_row(int type, const float *src, void *dst, int64_t n);

enum quant_isa { QUANT_ISA_SCALAR = 0, QUANT_ISA_AVX2 = 1, QUANT_ISA_AVX512 = 2 };
int quant_isa_best(void);          /* the best this CPU runs (DUET_ISA=scalar|avx2|avx512 overrides, lower only) */
const char *quant_isa_name(int isa);

/* y[j*ldy + i] = dot(row i of w, row j of x) for i < nr, j < nx, where rows of w are quant_row_bytes(type, n)
 * apart (stride w_stride bytes), rows of x are already in act_type, x_stride bytes apart. The matrix-matrix
 * tile kernel: implementations keep w rows in registers/cache across the x rows. isa picks the kernel
 * (must be <= quant_isa_best()).
 * Batch invariance (required, tested): y[j*ldy+i] is bit-identical whatever nr, nx and the position of row i
 * and column j inside the call, i.e. every output accumulates its products in one fixed order per (isa, type, n).
 * That makes a batched forward equal to one-token-at-a-time decoding bit for bit, so speculative verification
 * (HAT) and the lossless modes are exactly lossless, not merely close. Register-block across rows and columns,
 * never split one output's reduction differently depending on the tile. */
void quant_gemm(int isa, int type, int n, const void *w, size_t w_stride, int nr,
                const void *x, size_t x_stride, int nx, float *y, size_t ldy);

/* Repacked layouts (weights in memory only, never in a file): a Q8_0, Q4_0, Q4_K or Q6_K matrix whose rows come in
 * groups of 8 can be rewritten so that each group's blocks are interleaved (block b of the 8 rows side by side, quants
 * 4 bytes of a row at a time), which lets one vector load feed 8 rows and keeps each output's sum in one SIMD lane:
 * the batch kernels then do a third of the work per product (Q8_0: about half), and decode needs no horizontal sums. Same bytes per row as the file's type; every output is
 * summed in the scalar reference's order, so a repacked matrix gives bit for bit what quant_gemm(QUANT_ISA_SCALAR,
 * file type) gives on the rows as the file has them, at every ISA. quant_gemm takes a repacked type like any other,
 * with w at the first row of a group, nr a multiple of 8 and w_stride the row bytes. quant_traits_get refuses
 * repacked types (a GGUF file cannot carry them); quant_base_type gives the file's type. */
#define QUANT_REPACK8 0x100
int quant_base_type(int type);
/* The type a rows x cols matrix of `type` is best kept in for this CPU: QUANT_REPACK8 | type where a repacked
 * layout exists, rows is a multiple of 8 and the CPU runs its kernel (AVX2); else type itself. */
int quant_repack_type(int type, int rows, int cols);
/* Rewrites the rows x cols matrix of `type` at data in place into the layout of QUANT_REPACK8 | type, whatever
 * the CPU. 0 ok; DUET_EINVAL where no such layout exists (see quant_repack_type), DUET_ENOMEM: data untouched. */
int quant_repack(int type, void *data, int rows, int cols);

/* o[i] = sum over p < nv of a[p] * v[p][i] for i < n, rows of v v_stride bytes apart (attention's weighted
 * sum of values). Each o[i] is summed in order of p, so the result does not depend on which other outputs
 * were computed with it; isa picks the kernel as for quant_gemm. */
void quant_wsum_f32(int isa, int n, int nv, const float *a, const float *v, size_t v_stride, float *o);
/* s[n] = softmax(scale * s) (the max subtracted first, the sum in double), and g[n] = silu(g) * u = g / (1 + e^-g) * u.
 * The scalar level uses libm's expf; SIMD levels their own exp, within 2 ulp of it. Each element's value depends
 * only on its inputs (and, for softmax, on the row it is in), never on n or on where a caller's range ends. */
void quant_softmax_f32(int isa, float *s, int n, float scale);
void quant_swiglu_f32(int isa, float *g, const float *u, size_t n);

#endif
