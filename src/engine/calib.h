/* calib.h: affine maps between hidden states of one model (DESIGN section 5): y = W x + bias, mapping h_a
 * (the input of layer a; h_0 is the embedding, h_L what the head reads) to an estimate of h_b. An early exit
 * after layer e uses the map (e+1) -> L as its translator; a HAT adapter maps h_A -> h_{L-M}.
 *
 * Maps are fitted by ridge regression in closed form: the caller streams (x, y) rows into a calib_fit, which
 * keeps only the sums it needs (dim x dim, in double), and calib_fit_solve chooses lambda on held-out rows.
 * A set of maps is saved as a small GGUF file tied to one model by its fingerprint, and loaded back with
 * every field checked (a calibration file is untrusted input).
 *
 * Ownership: calib_fit_init/calib_load return objects the caller frees with calib_fit_free/calib_free. */
#ifndef DUET_ENGINE_CALIB_H
#define DUET_ENGINE_CALIB_H

#include <stddef.h>
#include <stdint.h>

#define CALIB_MAX_MAPS 64

typedef struct calib_map {
    int a, b;      /* h_a -> h_b, 0 <= a < b <= n_layers */
    int dim;
    float *w;      /* [dim][dim], row o holds the weights of output o */
    float *bias;   /* [dim] */
    double lambda; /* the ridge penalty it was fitted with (0 in a map made by hand) */
} calib_map;

typedef struct calib {
    uint64_t fingerprint; /* duet_model_fingerprint of the model the maps belong to */
    int n_layers, dim;
    int n_maps;
    calib_map map[CALIB_MAX_MAPS];
} calib;

/* ---- fitting ------------------------------------------------------------------------------------------ */

typedef struct calib_fit calib_fit;

calib_fit *calib_fit_init(int dim, char *err, size_t errlen);
void calib_fit_free(calib_fit *f);
/* Adds n rows x[n][dim] -> y[n][dim]; held rows only judge lambda (and join the final fit). */
void calib_fit_add(calib_fit *f, const float *x, const float *y, int n, int held);
/* Fits W and bias into out (its w and bias must hold dim*dim and dim floats). lambda > 0 fixes the penalty;
 * lambda <= 0 tries a grid scaled by the data and keeps the one with the least held-out squared error, then
 * refits on every row. *held_rel_err (may be NULL) gets the held-out error relative to predicting y = x:
 * ||W x + b - y||^2 / ||x - y||^2 (below 1 means the map beats the identity). */
int calib_fit_solve(calib_fit *f, double lambda, calib_map *out, double *held_rel_err, char *err, size_t errlen);

/* ---- use ---------------------------------------------------------------------------------------------- */

/* y[n][dim] = W x[n][dim] + bias. x and y must not overlap. */
void calib_apply(const calib_map *m, const float *x, float *y, int n);
/* The map a -> b, or NULL. */
const calib_map *calib_find(const calib *c, int a, int b);

/* ---- files -------------------------------------------------------------------------------------------- */

/* Writes c as GGUF (general.architecture "duet-calib"): metadata duet.calib.{fingerprint,n_layers,dim} and
 * for map i the tensors calib.A_B.weight [dim][dim] and calib.A_B.bias [dim], f32. */
int calib_save(const calib *c, const char *path, char *err, size_t errlen);
/* Reads a file written by calib_save (or a buffer: calib_load_mem, for tests and fuzzing) and checks it
 * fully: kind, counts, layer pairs, shapes, types, finite values. NULL with a message on any problem. */
calib *calib_load(const char *path, char *err, size_t errlen);
calib *calib_load_mem(const void *buf, size_t len, char *err, size_t errlen);
/* The file must belong to this model: same fingerprint, layer count and width; names what differs. */
int calib_check_model(const calib *c, uint64_t fingerprint, int n_layers, int dim, char *err, size_t errlen);
void calib_free(calib *c);

#endif
