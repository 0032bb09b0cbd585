#include "engine/calib.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "duet.h"
#include "engine/gguf.h"

#define CALIB_ARCH "duet-calib"
#define CALIB_MAX_DIM 65536
#define CALIB_MAX_LAYERS 4096

/* Ridge regression keeps the training rows as sums (means and the centred Gram matrices follow from them);
 * held-out rows are kept whole, because judging a lambda means predicting each of them. */
struct calib_fit {
    int dim;
    double n;              /* training rows */
    double *sx, *sy;       /* [dim] sums */
    double *sxx, *sxy;     /* [dim][dim]: sum x x^T, sum x y^T */
    float *hx, *hy;        /* [n_held][dim] */
    int n_held, cap_held;
    int oom;               /* a held row could not be stored */
};

calib_fit *calib_fit_init(int dim, char *err, size_t errlen) {
    if (dim < 1 || dim > CALIB_MAX_DIM) {
        err_set(err, errlen, DUET_EINVAL, "calibration width %d is outside 1..%d", dim, CALIB_MAX_DIM);
        return NULL;
    }
    calib_fit *f = calloc(1, sizeof *f);
    size_t d = (size_t)dim;
    if (f) {
        f->dim = dim;
        f->sx = calloc(d, sizeof(double));
        f->sy = calloc(d, sizeof(double));
        f->sxx = calloc(d * d, sizeof(double));
        f->sxy = calloc(d * d, sizeof(double));
    }
    if (!f || !f->sx || !f->sy || !f->sxx || !f->sxy) {
        calib_fit_free(f);
        err_set(err, errlen, DUET_ENOMEM, "out of memory for a %d-wide calibration", dim);
        return NULL;
    }
    return f;
}

void calib_fit_free(calib_fit *f) {
    if (!f) return;
    free(f->sx);
    free(f->sy);
    free(f->sxx);
    free(f->sxy);
    free(f->hx);
    free(f->hy);
    free(f);
}

static int hold_rows(calib_fit *f, const float *x, const float *y, int n) {
    size_t d = (size_t)f->dim;
    if (f->n_held + n > f->cap_held) {
        int cap = f->cap_held ? f->cap_held : 256;
        while (cap < f->n_held + n) cap *= 2;
        float *hx = realloc(f->hx, sizeof(float) * (size_t)cap * d);
        if (!hx) return DUET_ENOMEM;
        f->hx = hx;
        float *hy = realloc(f->hy, sizeof(float) * (size_t)cap * d);
        if (!hy) return DUET_ENOMEM;
        f->hy = hy;
        f->cap_held = cap;
    }
    memcpy(f->hx + (size_t)f->n_held * d, x, sizeof(float) * (size_t)n * d);
    memcpy(f->hy + (size_t)f->n_held * d, y, sizeof(float) * (size_t)n * d);
    f->n_held += n;
    return DUET_OK;
}

/* Adds rows to the sums (the Gram matrix's upper triangle only: it is symmetric). */
static void sum_rows(int dim, const float *x, const float *y, int n, double *cnt, double *sx, double *sy, double *sxx,
                     double *sxy) {
    size_t d = (size_t)dim;
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d, *yr = y + (size_t)r * d;
        for (size_t i = 0; i < d; i++) {
            double xi = xr[i];
            sx[i] += xi;
            sy[i] += yr[i];
            double *gi = sxx + i * d, *ci = sxy + i * d;
            for (size_t j = i; j < d; j++) gi[j] += xi * xr[j];
            for (size_t j = 0; j < d; j++) ci[j] += xi * yr[j];
        }
    }
    *cnt += n;
}

void calib_fit_add(calib_fit *f, const float *x, const float *y, int n, int held) {
    if (n <= 0) return;
    if (held) {
        if (hold_rows(f, x, y, n)) f->oom = 1;
        return;
    }
    sum_rows(f->dim, x, y, n, &f->n, f->sx, f->sy, f->sxx, f->sxy);
}

/* In place: a[d][d] (upper triangle read) becomes L with a = L L^T in its lower triangle. -1 if not
 * positive definite. */
static int cholesky(double *a, int d) {
    for (int j = 0; j < d; j++) {
        double s = a[(size_t)j * d + j];
        for (int k = 0; k < j; k++) s -= a[(size_t)j * d + k] * a[(size_t)j * d + k];
        if (!(s > 0)) return -1;
        double ljj = sqrt(s);
        a[(size_t)j * d + j] = ljj;
        for (int i = j + 1; i < d; i++) {
            double t = a[(size_t)j * d + i]; /* the symmetric entry (i, j), read from the upper triangle */
            for (int k = 0; k < j; k++) t -= a[(size_t)i * d + k] * a[(size_t)j * d + k];
            a[(size_t)i * d + j] = t / ljj;
        }
    }
    return 0;
}

/* Solves (L L^T) X = B for X[d][m] in place of B: L z = b forwards, then L^T x = z backwards. */
static void cholesky_solve(const double *l, int d, double *b, int m) {
    for (int i = 0; i < d; i++) {
        double *bi = b + (size_t)i * m;
        for (int k = 0; k < i; k++) {
            double lik = l[(size_t)i * d + k];
            const double *bk = b + (size_t)k * m;
            for (int c = 0; c < m; c++) bi[c] -= lik * bk[c];
        }
        double inv = 1 / l[(size_t)i * d + i];
        for (int c = 0; c < m; c++) bi[c] *= inv;
    }
    for (int i = d - 1; i >= 0; i--) {
        double *bi = b + (size_t)i * m;
        for (int k = i + 1; k < d; k++) {
            double lki = l[(size_t)k * d + i];
            const double *bk = b + (size_t)k * m;
            for (int c = 0; c < m; c++) bi[c] -= lki * bk[c];
        }
        double inv = 1 / l[(size_t)i * d + i];
        for (int c = 0; c < m; c++) bi[c] *= inv;
    }
}

/* The sums of one set of rows. */
typedef struct sums {
    double n, *sx, *sy, *sxx, *sxy;
} sums;

/* W, bias from sums and lambda; a and b are [d][d] scratch. -1 if the system is not positive definite. */
static int ridge(const sums *s, int dim, double lambda, double *a, double *b, calib_map *out) {
    size_t d = (size_t)dim;
    double n = s->n;
    for (size_t i = 0; i < d; i++) {
        double mxi = s->sx[i] / n;
        for (size_t j = i; j < d; j++) a[i * d + j] = s->sxx[i * d + j] - n * mxi * (s->sx[j] / n);
        a[i * d + i] += lambda;
        for (size_t j = 0; j < d; j++) b[i * d + j] = s->sxy[i * d + j] - n * mxi * (s->sy[j] / n);
    }
    if (cholesky(a, dim)) return -1;
    cholesky_solve(a, dim, b, dim); /* b = W^T: b[i][o] is the weight of input i in output o */
    for (size_t o = 0; o < d; o++) {
        double bo = s->sy[o] / n;
        for (size_t i = 0; i < d; i++) {
            out->w[o * d + i] = (float)b[i * d + o];
            bo -= b[i * d + o] * (s->sx[i] / n);
        }
        out->bias[o] = (float)bo;
    }
    out->lambda = lambda;
    return 0;
}

/* Squared error of the map on the held rows, and of the identity (y = x) for scale. */
static void held_error(const calib_fit *f, const calib_map *m, float *tmp, double *err_map, double *err_id) {
    size_t d = (size_t)f->dim;
    *err_map = *err_id = 0;
    for (int r = 0; r < f->n_held; r++) {
        const float *x = f->hx + (size_t)r * d, *y = f->hy + (size_t)r * d;
        calib_apply(m, x, tmp, 1);
        for (size_t i = 0; i < d; i++) {
            double e = (double)tmp[i] - y[i], e0 = (double)x[i] - y[i];
            *err_map += e * e;
            *err_id += e0 * e0;
        }
    }
}

int calib_fit_solve(calib_fit *f, double lambda, calib_map *out, double *held_rel_err, char *err, size_t errlen) {
    size_t d = (size_t)f->dim;
    if (f->oom) return err_set(err, errlen, DUET_ENOMEM, "out of memory keeping the held-out rows");
    if (f->n < 2) return err_set(err, errlen, DUET_EINVAL, "calibration needs at least 2 training rows, got %.0f", f->n);
    if (lambda <= 0 && f->n_held < 1)
        return err_set(err, errlen, DUET_EINVAL, "choosing lambda needs held-out rows (or give a lambda)");
    out->dim = f->dim;
    int rc = DUET_ENOMEM;
    double *a = malloc(sizeof(double) * d * d), *b = malloc(sizeof(double) * d * d);
    float *tmp = malloc(sizeof(float) * d);
    sums all = {0};
    all.sx = calloc(d, sizeof(double));
    all.sy = calloc(d, sizeof(double));
    all.sxx = calloc(d * d, sizeof(double));
    all.sxy = calloc(d * d, sizeof(double));
    if (!a || !b || !tmp || !all.sx || !all.sy || !all.sxx || !all.sxy) {
        err_set(err, errlen, rc, "out of memory solving a %d-wide calibration", f->dim);
        goto out;
    }
    sums train = {f->n, f->sx, f->sy, f->sxx, f->sxy};
    if (lambda <= 0) {
        /* The penalty's natural scale is the mean variance of x; search six decades below it. */
        double tr = 0;
        for (size_t i = 0; i < d; i++) tr += f->sxx[i * d + i] - f->sx[i] * f->sx[i] / f->n;
        double base = tr / (double)d > 0 ? tr / (double)d : 1, best = INFINITY;
        for (int k = -6; k <= 0; k++) {
            double lam = base * pow(10, k), em, e0;
            if (ridge(&train, f->dim, lam, a, b, out)) continue;
            held_error(f, out, tmp, &em, &e0);
            if (em < best) {
                best = em;
                lambda = lam;
            }
        }
        if (!(lambda > 0)) {
            rc = err_set(err, errlen, DUET_EINVAL, "no ridge penalty gives a solvable fit (degenerate hidden states?)");
            goto out;
        }
    }
    /* The final fit uses every row. */
    memcpy(all.sx, f->sx, sizeof(double) * d);
    memcpy(all.sy, f->sy, sizeof(double) * d);
    memcpy(all.sxx, f->sxx, sizeof(double) * d * d);
    memcpy(all.sxy, f->sxy, sizeof(double) * d * d);
    all.n = f->n;
    sum_rows(f->dim, f->hx, f->hy, f->n_held, &all.n, all.sx, all.sy, all.sxx, all.sxy);
    if (ridge(&all, f->dim, lambda, a, b, out)) {
        rc = err_set(err, errlen, DUET_EINVAL, "the fit with lambda %g is not solvable", lambda);
        goto out;
    }
    if (held_rel_err) {
        double em, e0;
        held_error(f, out, tmp, &em, &e0);
        *held_rel_err = e0 > 0 ? em / e0 : 0;
    }
    rc = DUET_OK;
out:
    free(a);
    free(b);
    free(tmp);
    free(all.sx);
    free(all.sy);
    free(all.sxx);
    free(all.sxy);
    return rc;
}

void calib_apply(const calib_map *m, const float *x, float *y, int n) {
    size_t d = (size_t)m->dim;
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;
        float *yr = y + (size_t)r * d;
        for (size_t o = 0; o < d; o++) {
            const float *w = m->w + o * d;
            float s = 0;
            for (size_t i = 0; i < d; i++) s += w[i] * xr[i];
            yr[o] = s + m->bias[o];
        }
    }
}

const calib_map *calib_find(const calib *c, int a, int b) {
    for (int i = 0; c && i < c->n_maps; i++)
        if (c->map[i].a == a && c->map[i].b == b) return &c->map[i];
    return NULL;
}

/* ---- files ------------------------------------------------------------------------------------------------ */

int calib_save(const calib *c, const char *path, char *err, size_t errlen) {
    gguf_writer *w = gguf_writer_init();
    if (!w) return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    char fp[32], name[64];
    snprintf(fp, sizeof fp, "%016" PRIx64, c->fingerprint);
    int32_t pairs[2 * CALIB_MAX_MAPS];
    float lambdas[CALIB_MAX_MAPS];
    for (int i = 0; i < c->n_maps; i++) {
        pairs[2 * i] = c->map[i].a;
        pairs[2 * i + 1] = c->map[i].b;
        lambdas[i] = (float)c->map[i].lambda;
    }
    int bad = gguf_set_str(w, "general.architecture", CALIB_ARCH) || gguf_set_str(w, "duet.calib.fingerprint", fp) ||
              gguf_set_u32(w, "duet.calib.n_layers", (uint32_t)c->n_layers) ||
              gguf_set_u32(w, "duet.calib.dim", (uint32_t)c->dim) ||
              gguf_set_arr_i32(w, "duet.calib.pairs", pairs, (size_t)c->n_maps * 2) ||
              gguf_set_arr_f32(w, "duet.calib.lambda", lambdas, (size_t)c->n_maps);
    for (int i = 0; !bad && i < c->n_maps; i++) {
        int64_t ne_w[2] = {c->dim, c->dim}, ne_b[1] = {c->dim};
        snprintf(name, sizeof name, "calib.%d_%d.weight", c->map[i].a, c->map[i].b);
        bad = gguf_add_tensor(w, name, DUET_TYPE_F32, 2, ne_w, c->map[i].w, NULL, NULL);
        snprintf(name, sizeof name, "calib.%d_%d.bias", c->map[i].a, c->map[i].b);
        bad = bad || gguf_add_tensor(w, name, DUET_TYPE_F32, 1, ne_b, c->map[i].bias, NULL, NULL);
    }
    int rc = bad ? err_set(err, errlen, DUET_ENOMEM, "out of memory building the calibration file")
                 : gguf_writer_write(w, path, NULL, NULL, err, errlen);
    gguf_writer_free(w);
    return rc;
}

static int get_dim(const gguf *g, const char *key, uint32_t lo, uint32_t hi, int *out, char *err, size_t errlen) {
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v);
    if (rc) return err_set(err, errlen, DUET_EFORMAT, "%s is %s", key, rc > 0 ? "missing" : "not an integer");
    if (v < lo || v > hi) return err_set(err, errlen, DUET_EFORMAT, "%s = %u is outside %u..%u", key, v, lo, hi);
    *out = (int)v;
    return DUET_OK;
}

/* The tensor `name`, which must be f32 of exactly ne0 x ne1 (ne1 = 0: one dimension). Checked before anything
 * is allocated for it, so a file cannot make the loader reserve more than the data it holds. */
static const gguf_tensor *find_f32(const gguf *g, const char *name, int64_t ne0, int64_t ne1, char *err, size_t errlen) {
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) {
        err_set(err, errlen, DUET_EFORMAT, "tensor '%s' is missing", name);
        return NULL;
    }
    int dims = ne1 ? 2 : 1;
    if (t->type != DUET_TYPE_F32 || t->n_dims != dims || t->ne[0] != ne0 || (ne1 && t->ne[1] != ne1)) {
        err_set(err, errlen, DUET_EFORMAT, "tensor '%s' must be f32 of shape [%" PRId64 "%s], not type %d with %d dims",
                name, ne0, ne1 ? " x dim" : "", t->type, t->n_dims);
        return NULL;
    }
    return t;
}

/* Copies t's values into dst and checks they are finite. The bytes are copied before they are read as
 * floats: a file may align its data to any boundary. */
static int copy_f32(const gguf_tensor *t, float *dst, char *err, size_t errlen) {
    size_t n = t->nbytes / sizeof(float);
    memcpy(dst, t->data, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return err_set(err, errlen, DUET_EFORMAT, "tensor '%s' holds a non-finite value at %zu", t->name, i);
    return DUET_OK;
}

static calib *from_gguf(gguf *g, char *err, size_t errlen) {
    calib *c = calloc(1, sizeof *c);
    if (!c) {
        err_set(err, errlen, DUET_ENOMEM, "out of memory");
        return NULL;
    }
    const char *s;
    int et;
    size_t n;
    if (gguf_get_str(g, "general.architecture", &s) || strcmp(s, CALIB_ARCH)) {
        err_set(err, errlen, DUET_EFORMAT, "not a duet calibration file (general.architecture is not '%s')", CALIB_ARCH);
        goto fail;
    }
    char *end;
    if (gguf_get_str(g, "duet.calib.fingerprint", &s) || strlen(s) != 16 ||
        (c->fingerprint = strtoull(s, &end, 16), *end)) {
        err_set(err, errlen, DUET_EFORMAT, "duet.calib.fingerprint is missing or not 16 hex digits");
        goto fail;
    }
    if (get_dim(g, "duet.calib.n_layers", 1, CALIB_MAX_LAYERS, &c->n_layers, err, errlen) ||
        get_dim(g, "duet.calib.dim", 1, CALIB_MAX_DIM, &c->dim, err, errlen))
        goto fail;
    if (gguf_get_arr(g, "duet.calib.pairs", &et, &n) || et != GGUF_I32 || n == 0 || n % 2 || n > 2 * CALIB_MAX_MAPS) {
        err_set(err, errlen, DUET_EFORMAT, "duet.calib.pairs must be an i32 array of 2..%d layer numbers in pairs",
                2 * CALIB_MAX_MAPS);
        goto fail;
    }
    size_t nl;
    int lt;
    bool have_lambda = !gguf_get_arr(g, "duet.calib.lambda", &lt, &nl) && lt == GGUF_F32 && nl == n / 2;
    size_t d = (size_t)c->dim;
    for (size_t i = 0; i < n / 2; i++) {
        int64_t a, b;
        gguf_arr_i64(g, "duet.calib.pairs", 2 * i, &a);
        gguf_arr_i64(g, "duet.calib.pairs", 2 * i + 1, &b);
        if (a < 0 || a >= b || b > c->n_layers) {
            err_set(err, errlen, DUET_EFORMAT, "map %zu maps h_%" PRId64 " to h_%" PRId64 ": needs 0 <= a < b <= %d", i,
                    a, b, c->n_layers);
            goto fail;
        }
        if (calib_find(c, (int)a, (int)b)) {
            err_set(err, errlen, DUET_EFORMAT, "map %" PRId64 ":%" PRId64 " appears twice", a, b);
            goto fail;
        }
        calib_map *m = &c->map[c->n_maps];
        char wn[64], bn[64];
        snprintf(wn, sizeof wn, "calib.%d_%d.weight", (int)a, (int)b);
        snprintf(bn, sizeof bn, "calib.%d_%d.bias", (int)a, (int)b);
        const gguf_tensor *tw = find_f32(g, wn, c->dim, c->dim, err, errlen);
        const gguf_tensor *tb = tw ? find_f32(g, bn, c->dim, 0, err, errlen) : NULL;
        if (!tb) goto fail;
        m->w = malloc(sizeof(float) * d * d);
        m->bias = malloc(sizeof(float) * d);
        c->n_maps++; /* counted at once, so calib_free releases a half-made map */
        if (!m->w || !m->bias) {
            err_set(err, errlen, DUET_ENOMEM, "out of memory for %d-wide maps", c->dim);
            goto fail;
        }
        if (copy_f32(tw, m->w, err, errlen) || copy_f32(tb, m->bias, err, errlen)) goto fail;
        m->a = (int)a;
        m->b = (int)b;
        m->dim = c->dim;
        float lam = 0;
        if (have_lambda) gguf_arr_f32(g, "duet.calib.lambda", i, &lam);
        m->lambda = lam;
    }
    gguf_close(g);
    return c;
fail:
    gguf_close(g);
    calib_free(c);
    return NULL;
}

calib *calib_load(const char *path, char *err, size_t errlen) {
    gguf *g = gguf_open(path, err, errlen);
    calib *c = g ? from_gguf(g, err, errlen) : NULL;
    if (!c) err_prefix(err, errlen, "%s", path);
    return c;
}

calib *calib_load_mem(const void *buf, size_t len, char *err, size_t errlen) {
    gguf *g = gguf_open_mem(buf, len, err, errlen);
    return g ? from_gguf(g, err, errlen) : NULL;
}

int calib_check_model(const calib *c, uint64_t fingerprint, int n_layers, int dim, char *err, size_t errlen) {
    if (c->fingerprint != fingerprint)
        return err_set(err, errlen, DUET_EINVAL,
                       "the calibration file belongs to another model (fingerprint %016" PRIx64 ", this model %016" PRIx64
                       "): run duet calibrate on this model",
                       c->fingerprint, fingerprint);
    if (c->n_layers != n_layers || c->dim != dim)
        return err_set(err, errlen, DUET_EINVAL, "the calibration file is for %d layers of width %d, the model has %d of %d",
                       c->n_layers, c->dim, n_layers, dim);
    return DUET_OK;
}

void calib_free(calib *c) {
    if (!c) return;
    for (int i = 0; i < c->n_maps; i++) {
        free(c->map[i].w);
        free(c->map[i].bias);
    }
    free(c);
}
