/* The state file. Strict where it matters (numbers in range, counts consistent, the model's fingerprint),
 * lenient where it does not (unknown keys are skipped, so a later version can add fields). */
#include "modes/autostate.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/json.h"
#include "duet.h"

#define MAX_COUNT 9007199254740992.0 /* 2^53: counts stay exact as JSON numbers */
#define MAX_LAYER 4096
#define SCALE_WINDOW 8               /* a correction follows about the last 8 requests */
#define SCALE_MIN 0.01
#define SCALE_MAX 100.0

void autostate_init(autostate *s, uint64_t fingerprint) {
    memset(s, 0, sizeof *s);
    s->fingerprint = fingerprint;
    s->cloud.scale = 1;
    for (int m = 0; m < AUTOSTATE_MODES; m++)
        for (int v = 0; v < AUTOSTATE_SPEEDS; v++) s->time[m][v].ttft.scale = s->time[m][v].tbt.scale = 1;
}

int autostate_speed_class(double dev_ms, double cloud_ms) {
    if (!(dev_ms > 0) || !(cloud_ms > 0)) return 0;
    double c = round(log2(dev_ms / cloud_ms));
    return c < 0 ? 0 : c >= AUTOSTATE_SPEEDS ? AUTOSTATE_SPEEDS - 1 : (int)c;
}

/* A number member of o in [lo, hi] (integral when integral); absent: *out = dflt. */
static int num(const json_val *o, const char *key, double lo, double hi, int integral, double dflt, double *out,
               char *err, size_t errlen) {
    const json_val *v = json_get(o, key);
    if (!v) {
        *out = dflt;
        return 0;
    }
    double x = json_num(v);
    if (json_type_of(v) != JSON_NUM || !(x >= lo && x <= hi) || (integral && x != floor(x)))
        return err_set(err, errlen, DUET_EINVAL, "\"%s\" must be a%s number in [%g, %g]", key,
                       integral ? "n integral" : "", lo, hi);
    *out = x;
    return 0;
}

static int scale(const json_val *root, const char *key, autostate_scale *sc, char *err, size_t errlen) {
    const json_val *o = json_get(root, key);
    if (!o) return 0;
    double s, n;
    if (json_type_of(o) != JSON_OBJ) return err_set(err, errlen, DUET_EINVAL, "\"%s\" must be an object", key);
    if (num(o, "scale", SCALE_MIN, SCALE_MAX, 0, 1, &s, err, errlen) ||
        num(o, "samples", 0, MAX_COUNT, 1, 0, &n, err, errlen)) {
        err_prefix(err, errlen, "%s", key);
        return DUET_EINVAL;
    }
    sc->scale = s;
    sc->samples = (uint64_t)n;
    return 0;
}

/* The array member key of root (absent: n = 0), at most max objects. */
static int list(const json_val *root, const char *key, size_t max, const json_val **arr, size_t *n, char *err,
                size_t errlen) {
    *arr = json_get(root, key);
    *n = 0;
    if (!*arr) return 0;
    if (json_type_of(*arr) != JSON_ARR) return err_set(err, errlen, DUET_EINVAL, "\"%s\" must be an array", key);
    *n = json_len(*arr);
    if (*n > max) return err_set(err, errlen, DUET_EINVAL, "\"%s\" has %zu entries, at most %zu", key, *n, max);
    for (size_t i = 0; i < *n; i++)
        if (json_type_of(json_at(*arr, i)) != JSON_OBJ)
            return err_set(err, errlen, DUET_EINVAL, "\"%s\"[%zu] must be an object", key, i);
    return 0;
}

static int parse_root(const json_val *root, uint64_t fingerprint, autostate *s, char *err, size_t errlen) {
    if (json_type_of(root) != JSON_OBJ) return err_set(err, errlen, DUET_EINVAL, "not a JSON object");
    double version;
    if (num(root, "duet_state", 1, 1, 1, 0, &version, err, errlen) || version != 1)
        return err_set(err, errlen, DUET_EINVAL, "not a duet state file (\"duet_state\": 1 missing)");
    const char *fp = json_str(json_get(root, "fingerprint"), NULL);
    char want[17];
    snprintf(want, sizeof want, "%016" PRIx64, fingerprint);
    if (!fp) return err_set(err, errlen, DUET_EINVAL, "\"fingerprint\" missing");
    if (strcmp(fp, want)) return err_set(err, errlen, DUET_EINVAL, "belongs to another model (fingerprint %.20s, this one %s)", fp, want);
    if (scale(root, "cloud", &s->cloud, err, errlen)) return DUET_EINVAL;
    const json_val *arr;
    size_t n;
    if (list(root, "ee", AUTOSTATE_MAX, &arr, &n, err, errlen)) return DUET_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const json_val *o = json_at(arr, i);
        double e1, e2, thr, cal, tok, x1, x2;
        if (num(o, "e1", 0, MAX_LAYER, 1, -1, &e1, err, errlen) || num(o, "e2", 1, MAX_LAYER, 1, -1, &e2, err, errlen) ||
            num(o, "threshold", 0, 1, 0, -1, &thr, err, errlen) || num(o, "calibrated", 0, 1, 1, 0, &cal, err, errlen) ||
            num(o, "tokens", 0, MAX_COUNT, 1, 0, &tok, err, errlen) || num(o, "exit1", 0, MAX_COUNT, 1, 0, &x1, err, errlen) ||
            num(o, "exit2", 0, MAX_COUNT, 1, 0, &x2, err, errlen)) {
            err_prefix(err, errlen, "ee[%zu]", i);
            return DUET_EINVAL;
        }
        if (e1 < 0 || e2 < 0 || thr < 0 || e1 >= e2)
            return err_set(err, errlen, DUET_EINVAL, "ee[%zu]: needs e1 < e2 and a threshold", i);
        if (x1 + x2 > tok) return err_set(err, errlen, DUET_EINVAL, "ee[%zu]: more exits than tokens", i);
        s->ee[s->n_ee++] = (autostate_ee){(int)e1, (int)e2, (int)cal, (float)thr, (uint64_t)tok, (uint64_t)x1, (uint64_t)x2};
    }
    if (list(root, "hat", AUTOSTATE_MAX, &arr, &n, err, errlen)) return DUET_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const json_val *o = json_at(arr, i);
        double a, m, cal, dr, ac;
        if (num(o, "input_layers", 1, MAX_LAYER, 1, -1, &a, err, errlen) ||
            num(o, "output_layers", 1, MAX_LAYER, 1, -1, &m, err, errlen) ||
            num(o, "calibrated", 0, 1, 1, 0, &cal, err, errlen) || num(o, "drafted", 0, MAX_COUNT, 1, 0, &dr, err, errlen) ||
            num(o, "accepted", 0, MAX_COUNT, 1, 0, &ac, err, errlen)) {
            err_prefix(err, errlen, "hat[%zu]", i);
            return DUET_EINVAL;
        }
        if (a < 0 || m < 0) return err_set(err, errlen, DUET_EINVAL, "hat[%zu]: needs input_layers and output_layers", i);
        if (ac > dr) return err_set(err, errlen, DUET_EINVAL, "hat[%zu]: more accepted than drafted", i);
        s->hat[s->n_hat++] = (autostate_hat){(int)a, (int)m, (int)cal, (uint64_t)dr, (uint64_t)ac};
    }
    if (list(root, "time", AUTOSTATE_MODES * AUTOSTATE_SPEEDS, &arr, &n, err, errlen)) return DUET_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const json_val *o = json_at(arr, i);
        double m = -1, v = -1;
        if (num(o, "mode", 0, AUTOSTATE_MODES - 1, 1, -1, &m, err, errlen) ||
            num(o, "speed", 0, AUTOSTATE_SPEEDS - 1, 1, -1, &v, err, errlen)) {
            err_prefix(err, errlen, "time[%zu]", i);
            return DUET_EINVAL;
        }
        if (m < 0 || v < 0) return err_set(err, errlen, DUET_EINVAL, "time[%zu]: needs \"mode\" and \"speed\"", i);
        autostate_time *t = &s->time[(int)m][(int)v];
        if (scale(o, "ttft", &t->ttft, err, errlen) || scale(o, "tbt", &t->tbt, err, errlen)) {
            err_prefix(err, errlen, "time[%zu]", i);
            return DUET_EINVAL;
        }
    }
    return 0;
}

int autostate_parse(const char *text, size_t len, uint64_t fingerprint, autostate *out, char *err, size_t errlen) {
    autostate_init(out, fingerprint);
    if (len > AUTOSTATE_MAX_BYTES)
        return err_set(err, errlen, DUET_EINVAL, "state: %zu bytes, at most %d", len, AUTOSTATE_MAX_BYTES);
    json *doc = json_parse(text, len, err, errlen);
    if (!doc) {
        err_prefix(err, errlen, "state");
        return DUET_EINVAL;
    }
    int rc = parse_root(json_root(doc), fingerprint, out, err, errlen);
    json_free(doc);
    if (rc) {
        err_prefix(err, errlen, "state");
        autostate_init(out, fingerprint);
    }
    return rc;
}

int autostate_load(const char *path, uint64_t fingerprint, autostate *out, char *err, size_t errlen) {
    autostate_init(out, fingerprint);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return 0;
        return err_set(err, errlen, DUET_EIO, "cannot read %s: %s", path, strerror(errno));
    }
    char *buf = malloc(AUTOSTATE_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, AUTOSTATE_MAX_BYTES + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc = bad ? err_set(err, errlen, DUET_EIO, "cannot read %s", path)
                 : autostate_parse(buf, n, fingerprint, out, err, errlen);
    free(buf);
    if (rc && !bad) err_prefix(err, errlen, "%s", path);
    return rc;
}

int autostate_format(const autostate *s, char *buf, size_t cap) {
    size_t n = 0;
#define PUT(...) n += (size_t)snprintf(buf + (n < cap ? n : cap), n < cap ? cap - n : 0, __VA_ARGS__)
    PUT("{\"duet_state\":1,\"fingerprint\":\"%016" PRIx64 "\",", s->fingerprint);
    PUT("\"cloud\":{\"scale\":%.6g,\"samples\":%" PRIu64 "},\n\"ee\":[", s->cloud.scale, s->cloud.samples);
    for (int i = 0; i < s->n_ee; i++) {
        const autostate_ee *e = &s->ee[i];
        PUT("%s{\"e1\":%d,\"e2\":%d,\"threshold\":%.6g,\"calibrated\":%d,\"tokens\":%" PRIu64 ",\"exit1\":%" PRIu64
            ",\"exit2\":%" PRIu64 "}", i ? ",\n" : "\n", e->e1, e->e2, (double)e->threshold, e->calibrated, e->tokens,
            e->exit1, e->exit2);
    }
    PUT("],\n\"hat\":[");
    for (int i = 0; i < s->n_hat; i++) {
        const autostate_hat *h = &s->hat[i];
        PUT("%s{\"input_layers\":%d,\"output_layers\":%d,\"calibrated\":%d,\"drafted\":%" PRIu64 ",\"accepted\":%" PRIu64
            "}", i ? ",\n" : "\n", h->input_layers, h->output_layers, h->calibrated, h->drafted, h->accepted);
    }
    PUT("],\n\"time\":[");
    int first = 1;
    for (int m = 0; m < AUTOSTATE_MODES; m++)
        for (int v = 0; v < AUTOSTATE_SPEEDS; v++) {
            const autostate_time *t = &s->time[m][v];
            if (!t->ttft.samples && !t->tbt.samples) continue;
            PUT("%s{\"mode\":%d,\"speed\":%d,\"ttft\":{\"scale\":%.6g,\"samples\":%" PRIu64 "},\"tbt\":{\"scale\":%.6g,"
                "\"samples\":%" PRIu64 "}}", first ? "\n" : ",\n", m, v, t->ttft.scale, t->ttft.samples, t->tbt.scale,
                t->tbt.samples);
            first = 0;
        }
    PUT("]}\n");
#undef PUT
    return (int)n;
}

/* mkdir -p of path's directory. */
static int make_parent(const char *path, char *err, size_t errlen) {
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) return err_set(err, errlen, DUET_EINVAL, "path too long");
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = 0;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(dir, 0700) && errno != EEXIST) return err_set(err, errlen, DUET_EIO, "cannot create %s: %s", dir, strerror(errno));
        *p = '/';
    }
    if (mkdir(dir, 0700) && errno != EEXIST) return err_set(err, errlen, DUET_EIO, "cannot create %s: %s", dir, strerror(errno));
    return 0;
}

int autostate_save(const autostate *s, const char *path, char *err, size_t errlen) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof tmp)
        return err_set(err, errlen, DUET_EINVAL, "state path too long");
    if (make_parent(path, err, errlen)) return DUET_EIO;
    size_t cap = 8192 + (size_t)AUTOSTATE_MAX * 2 * 256;
    char *buf = malloc(cap);
    if (!buf) return err_set(err, errlen, DUET_ENOMEM, "out of memory");
    int n = autostate_format(s, buf, cap);
    FILE *f = fopen(tmp, "wb");
    int ok = f && n < (int)cap && fwrite(buf, 1, (size_t)n, f) == (size_t)n;
    if (f && fclose(f)) ok = 0;
    free(buf);
    if (!ok || rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return err_set(err, errlen, DUET_EIO, "cannot write %s: %s", path, strerror(e));
    }
    return 0;
}

int autostate_default_path(uint64_t fingerprint, char *buf, size_t cap, char *err, size_t errlen) {
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    int n;
    if (xdg && xdg[0] == '/') n = snprintf(buf, cap, "%s/duet/%016" PRIx64 ".json", xdg, fingerprint);
    else if (home && home[0]) n = snprintf(buf, cap, "%s/.local/state/duet/%016" PRIx64 ".json", home, fingerprint);
    else return err_set(err, errlen, DUET_EINVAL, "neither XDG_STATE_HOME nor HOME is set: give --state FILE or --state none");
    if (n < 0 || (size_t)n >= cap) return err_set(err, errlen, DUET_EINVAL, "state path too long");
    return 0;
}

static int same_thr(float a, float b) { return fabsf(a - b) < 1e-6f; }

const autostate_ee *autostate_find_ee(const autostate *s, int e1, int e2, float threshold, int calibrated) {
    for (int i = 0; i < s->n_ee; i++)
        if (s->ee[i].e1 == e1 && s->ee[i].e2 == e2 && same_thr(s->ee[i].threshold, threshold) &&
            s->ee[i].calibrated == calibrated)
            return &s->ee[i];
    return NULL;
}

const autostate_hat *autostate_find_hat(const autostate *s, int input_layers, int output_layers, int calibrated) {
    for (int i = 0; i < s->n_hat; i++)
        if (s->hat[i].input_layers == input_layers && s->hat[i].output_layers == output_layers &&
            s->hat[i].calibrated == calibrated)
            return &s->hat[i];
    return NULL;
}

/* Counts stay below 2^53 (the parser's bound): halving keeps the rates. */
static void halve_if_big(uint64_t *a, uint64_t *b, uint64_t *c) {
    while (*a > (1ull << 52) || *b > (1ull << 52) || (c && *c > (1ull << 52))) {
        *a /= 2, *b /= 2;
        if (c) *c /= 2;
    }
}

void autostate_note_ee(autostate *s, int e1, int e2, float threshold, int calibrated, uint64_t tokens,
                       uint64_t exit1, uint64_t exit2) {
    autostate_ee *e = (autostate_ee *)autostate_find_ee(s, e1, e2, threshold, calibrated);
    if (!e) {
        if (s->n_ee == AUTOSTATE_MAX) memmove(s->ee, s->ee + 1, sizeof s->ee[0] * --s->n_ee);
        e = &s->ee[s->n_ee++];
        *e = (autostate_ee){e1, e2, calibrated, threshold, 0, 0, 0};
    }
    e->tokens += tokens, e->exit1 += exit1, e->exit2 += exit2;
    halve_if_big(&e->tokens, &e->exit1, &e->exit2);
}

void autostate_note_hat(autostate *s, int input_layers, int output_layers, int calibrated, uint64_t drafted,
                        uint64_t accepted) {
    autostate_hat *h = (autostate_hat *)autostate_find_hat(s, input_layers, output_layers, calibrated);
    if (!h) {
        if (s->n_hat == AUTOSTATE_MAX) memmove(s->hat, s->hat + 1, sizeof s->hat[0] * --s->n_hat);
        h = &s->hat[s->n_hat++];
        *h = (autostate_hat){input_layers, output_layers, calibrated, 0, 0};
    }
    h->drafted += drafted, h->accepted += accepted;
    halve_if_big(&h->drafted, &h->accepted, NULL);
}

void autostate_note_scale(autostate_scale *sc, double predicted_ms, double measured_ms) {
    if (!(predicted_ms > 0) || !(measured_ms > 0)) return;
    double r = measured_ms / predicted_ms;
    r = r < SCALE_MIN ? SCALE_MIN : r > SCALE_MAX ? SCALE_MAX : r;
    uint64_t w = sc->samples + 1 < SCALE_WINDOW ? sc->samples + 1 : SCALE_WINDOW;
    sc->scale += (r - sc->scale) / (double)w;
    sc->scale = sc->scale < SCALE_MIN ? SCALE_MIN : sc->scale > SCALE_MAX ? SCALE_MAX : sc->scale;
    sc->samples++;
}
