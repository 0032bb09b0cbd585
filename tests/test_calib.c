/* Calibration maps: the ridge fit recovers a known affine map, files round-trip, and every kind of broken or
 * foreign calibration file is refused with a message naming the problem. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "duet.h"
#include "engine/calib.h"
#include "engine/gguf.h"
#include "test.h"

static float frand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1;
}

/* A random map of width d with its own bias. */
static calib *random_calib(int d, int n_maps, uint64_t seed) {
    calib *c = calloc(1, sizeof *c);
    c->fingerprint = 0x0123456789abcdefull;
    c->n_layers = 5;
    c->dim = d;
    for (int i = 0; i < n_maps; i++) {
        calib_map *m = &c->map[c->n_maps++];
        m->a = i + 1;
        m->b = 5;
        m->dim = d;
        m->w = malloc(sizeof(float) * (size_t)d * d);
        m->bias = malloc(sizeof(float) * (size_t)d);
        for (int k = 0; k < d * d; k++) m->w[k] = frand(&seed);
        for (int k = 0; k < d; k++) m->bias[k] = frand(&seed);
        m->lambda = 0.5;
    }
    return c;
}

TEST(test_calib_fit_recovers_affine_map) {
    enum { D = 12, N = 600 };
    uint64_t seed = 7;
    calib *truth = random_calib(D, 1, 3);
    float *x = malloc(sizeof(float) * N * D), *y = malloc(sizeof(float) * N * D);
    for (int i = 0; i < N * D; i++) x[i] = frand(&seed) * 3;
    calib_apply(&truth->map[0], x, y, N);
    for (int i = 0; i < N * D; i++) y[i] += frand(&seed) * 1e-3f; /* a little noise: the fit is not exact */
    char err[256];
    calib_fit *f = calib_fit_init(D, err, sizeof err);
    REQUIRE_MSG(f, "%s", err);
    calib_fit_add(f, x, y, N - 100, 0);
    calib_fit_add(f, x + (size_t)(N - 100) * D, y + (size_t)(N - 100) * D, 100, 1);
    float w[D * D], b[D];
    calib_map out = {.w = w, .bias = b};
    double rel;
    REQUIRE_MSG(!calib_fit_solve(f, 0, &out, &rel, err, sizeof err), "%s", err);
    double maxd = 0;
    for (int i = 0; i < D * D; i++) maxd = fmax(maxd, fabs(w[i] - truth->map[0].w[i]));
    for (int i = 0; i < D; i++) maxd = fmax(maxd, fabs(b[i] - truth->map[0].bias[i]));
    CHECK_MSG(maxd < 1e-2, "fitted map is %g away from the true one", maxd);
    CHECK_MSG(rel < 1e-4, "held-out error %g of the identity's", rel);
    CHECK(out.lambda > 0);
    /* A fixed lambda is used as given. */
    REQUIRE(!calib_fit_solve(f, 2.5, &out, NULL, err, sizeof err));
    CHECK(out.lambda == 2.5);
    calib_fit_free(f);

    /* Without held-out rows lambda cannot be chosen; without rows nothing can be fitted. */
    f = calib_fit_init(D, err, sizeof err);
    calib_fit_add(f, x, y, N, 0);
    CHECK(calib_fit_solve(f, 0, &out, NULL, err, sizeof err) == DUET_EINVAL && strstr(err, "held-out"));
    calib_fit_free(f);
    f = calib_fit_init(D, err, sizeof err);
    CHECK(calib_fit_solve(f, 1, &out, NULL, err, sizeof err) == DUET_EINVAL && strstr(err, "training rows"));
    calib_fit_free(f);
    CHECK(!calib_fit_init(0, err, sizeof err) && strstr(err, "width"));
    free(x);
    free(y);
    calib_free(truth);
}

TEST(test_calib_save_load_roundtrip) {
    calib *c = random_calib(8, 3, 11);
    char path[] = "/tmp/duet-calib-XXXXXX", err[256];
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    REQUIRE_MSG(!calib_save(c, path, err, sizeof err), "%s", err);
    calib *r = calib_load(path, err, sizeof err);
    REQUIRE_MSG(r, "%s", err);
    CHECK(r->fingerprint == c->fingerprint && r->n_layers == 5 && r->dim == 8 && r->n_maps == 3);
    for (int i = 0; i < 3; i++) {
        const calib_map *m = calib_find(r, i + 1, 5);
        REQUIRE(m);
        CHECK(!memcmp(m->w, c->map[i].w, sizeof(float) * 64) && !memcmp(m->bias, c->map[i].bias, sizeof(float) * 8));
        CHECK(m->lambda == 0.5);
    }
    CHECK(!calib_find(r, 4, 5));
    CHECK(!calib_check_model(r, c->fingerprint, 5, 8, err, sizeof err));
    CHECK(calib_check_model(r, 42, 5, 8, err, sizeof err) && strstr(err, "another model"));
    CHECK(calib_check_model(r, c->fingerprint, 6, 8, err, sizeof err) && strstr(err, "6 of 8"));
    CHECK(!calib_load("/nonexistent/calib.gguf", err, sizeof err) && strstr(err, "/nonexistent/calib.gguf"));
    calib_free(r);
    calib_free(c);
    unlink(path);
}

/* Writes a calibration file by hand with one thing wrong and checks the message. */
typedef struct bad_case {
    const char *arch;
    int n_layers, dim;
    int32_t pairs[4];
    int n_pairs;          /* array elements */
    int wtype;            /* tensor type of the weight */
    int64_t wrows;        /* rows of the weight */
    int nan;              /* put a NaN in the bias */
    int drop_bias;
    const char *fp;
    const char *expect;
} bad_case;

static calib *load_case(const bad_case *bc, char *err, size_t errlen) {
    gguf_writer *w = gguf_writer_init();
    gguf_set_str(w, "general.architecture", bc->arch);
    gguf_set_str(w, "duet.calib.fingerprint", bc->fp ? bc->fp : "0123456789abcdef");
    gguf_set_u32(w, "duet.calib.n_layers", (uint32_t)bc->n_layers);
    gguf_set_u32(w, "duet.calib.dim", (uint32_t)bc->dim);
    gguf_set_arr_i32(w, "duet.calib.pairs", bc->pairs, (size_t)bc->n_pairs);
    static float wdata[4 * 8], bdata[4];
    for (int i = 0; i < 4 * 8; i++) wdata[i] = 0.25f;
    for (int i = 0; i < 4; i++) bdata[i] = bc->nan && i == 2 ? NAN : 1;
    int64_t ne_w[2] = {4, bc->wrows}, ne_b[1] = {4};
    char name[64];
    for (int i = 0; i + 1 < bc->n_pairs && i < 4; i += 2) {
        snprintf(name, sizeof name, "calib.%d_%d.weight", bc->pairs[i], bc->pairs[i + 1]);
        gguf_add_tensor(w, name, bc->wtype, 2, ne_w, wdata, NULL, NULL);
        snprintf(name, sizeof name, "calib.%d_%d.bias", bc->pairs[i], bc->pairs[i + 1]);
        if (!bc->drop_bias) gguf_add_tensor(w, name, DUET_TYPE_F32, 1, ne_b, bdata, NULL, NULL);
    }
    char path[] = "/tmp/duet-calib-bad-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(!gguf_writer_write(w, path, NULL, NULL, err, errlen));
    gguf_writer_free(w);
    calib *c = calib_load(path, err, errlen);
    unlink(path);
    return c;
}

static void check_bad(const bad_case *bc) {
    char err[256] = "";
    calib *c = load_case(bc, err, sizeof err);
    CHECK_MSG(!c && strstr(err, bc->expect), "expected an error with '%s', got '%s'", bc->expect, c ? "(loaded)" : err);
    calib_free(c);
}

TEST(test_calib_malformed_files_refused) {
    const bad_case ok = {"duet-calib", 5, 4, {1, 5}, 2, DUET_TYPE_F32, 4, 0, 0, NULL, ""};
    bad_case b;
    b = ok, b.arch = "llama", b.expect = "not a duet calibration file";
    check_bad(&b);
    b = ok, b.fp = "xyz", b.expect = "fingerprint";
    check_bad(&b);
    b = ok, b.n_layers = 0, b.expect = "n_layers = 0";
    check_bad(&b);
    b = ok, b.dim = 70000, b.expect = "dim = 70000";
    check_bad(&b);
    b = ok, b.pairs[0] = 5, b.pairs[1] = 3, b.expect = "needs 0 <= a < b <= 5";
    check_bad(&b);
    b = ok, b.pairs[1] = 6, b.expect = "needs 0 <= a < b <= 5";
    check_bad(&b);
    b = ok, b.n_pairs = 1, b.expect = "duet.calib.pairs";
    check_bad(&b);
    b = ok, b.n_pairs = 4, b.pairs[2] = 1, b.pairs[3] = 5, b.expect = "appears twice";
    check_bad(&b);
    b = ok, b.wtype = DUET_TYPE_F16, b.expect = "must be f32";
    check_bad(&b);
    b = ok, b.wrows = 8, b.expect = "must be f32 of shape";
    check_bad(&b);
    b = ok, b.dim = 65536, b.expect = "must be f32 of shape"; /* found by fuzz_calib: 16 GiB were reserved first */
    check_bad(&b);
    b = ok, b.nan = 1, b.expect = "non-finite";
    check_bad(&b);
    b = ok, b.drop_bias = 1, b.expect = "calib.1_5.bias' is missing";
    check_bad(&b);
    /* The unedited case loads, so each case above fails for its own reason. */
    char err[256];
    calib *c = load_case(&ok, err, sizeof err);
    CHECK_MSG(c && c->n_maps == 1 && c->map[0].w[0] == 0.25f, "%s", err);
    calib_free(c);
}

/* The shipped calibration file belongs to the shipped model, and the translators it holds help its exits. */
TEST(test_calib_shipped_stories260K) {
    char err[256];
    calib *c = calib_load("models/stories260K-calib.gguf", err, sizeof err);
    REQUIRE_MSG(c, "%s", err);
    duet_model *m = duet_model_load("models/stories260K.gguf", NULL, 0, err, sizeof err);
    REQUIRE_MSG(m, "%s", err);
    const duet_config *cfg = duet_model_config(m);
    CHECK_MSG(!calib_check_model(c, duet_model_fingerprint(m), cfg->n_layers, cfg->dim, err, sizeof err), "%s", err);
    for (int e = 0; e + 1 < cfg->n_layers; e++) CHECK_MSG(calib_find(c, e + 1, cfg->n_layers), "no exit map after layer %d", e);
    calib_free(c);
    duet_model_free(m);
}

/* duet calibrate end to end on a slice of the calibration text: the translator of every exit agrees with the
 * full model more often than the raw exit does (trained weights, held-out windows). */
TEST(test_calib_cli_translators_help_exits) {
    int st;
    char *out = test_run_cli("calibrate -m models/stories260K.gguf --text models/stories260K-calib.txt --pairs exits "
                             "--max-tokens 8000 --window 128 -o /tmp/duet-test-exits.gguf --json",
                             &st, 0);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    int n = 0;
    for (const char *p = out; (p = strstr(p, "\"exit_acc_raw\":")); n++) {
        double raw = atof(p + 15), mapped = atof(strstr(p, "\"exit_acc_mapped\":") + 18);
        CHECK_MSG(mapped > raw, "exit %d: mapped %.4f <= raw %.4f", n, mapped, raw);
        p++;
    }
    CHECK_EQ_INT(n, 4);
    free(out);
    calib *c = calib_load("/tmp/duet-test-exits.gguf", (char[256]){0}, 256);
    CHECK(c && c->n_maps == 4);
    calib_free(c);
    unlink("/tmp/duet-test-exits.gguf");
    /* Bad arguments name the value. */
    out = test_run_cli("calibrate -m models/stories260K.gguf --text models/stories260K-calib.txt --pairs 3:2 -o /tmp/x.gguf",
                       &st, 1);
    CHECK(st == 2 && out && strstr(out, "3:2 needs 0 <= A < B <= 5"));
    free(out);
}
