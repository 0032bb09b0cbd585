#include "modes/trace.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "duet.h"

#define LINE_MAX_LEN 255
#define FILE_MAX ((size_t)TRACE_MAX * 16) /* far above the longest valid file (a "64 64\n" per decision) */

static const char *const KINDS[] = {NULL, "ee", "hat"};
static const char *const WHERE[] = {"e1", "e2", "cloud"};

const char *trace_kind_name(int kind) { return kind == TRACE_EE || kind == TRACE_HAT ? KINDS[kind] : "?"; }

int trace_init(trace *t, int kind, int cap, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    if (kind != TRACE_EE && kind != TRACE_HAT) return err_set(err, errlen, DUET_EINVAL, "trace: unknown kind %d", kind);
    if (cap < 1 || cap > TRACE_MAX)
        return err_set(err, errlen, DUET_EINVAL, "trace: room for %d decisions asked, 1..%d allowed", cap, TRACE_MAX);
    t->kind = kind;
    t->cap = cap;
    t->a = malloc(sizeof(int) * (size_t)cap);
    t->b = malloc(sizeof(int) * (size_t)cap);
    if (!t->a || !t->b) {
        trace_free(t);
        return err_set(err, errlen, DUET_ENOMEM, "trace: out of memory for %d decisions", cap);
    }
    return DUET_OK;
}

void trace_free(trace *t) {
    free(t->a);
    free(t->b);
    memset(t, 0, sizeof *t);
}

int trace_add(trace *t, int a, int b, char *err, size_t errlen) {
    if (t->n >= t->cap) return err_set(err, errlen, DUET_EINVAL, "trace: full (%d decisions)", t->cap);
    if (t->kind == TRACE_EE && (a < TRACE_E1 || a > TRACE_CLOUD || b != 0))
        return err_set(err, errlen, DUET_EINVAL, "trace: ee decision %d is not e1, e2 or cloud", a);
    if (t->kind == TRACE_HAT && (a < 0 || a > TRACE_MAX_DRAFT || b < 0 || b > a))
        return err_set(err, errlen, DUET_EINVAL, "trace: hat round of %d drafted, %d accepted (0 <= A <= K <= %d)", a,
                       b, TRACE_MAX_DRAFT);
    t->a[t->n] = a;
    t->b[t->n] = b;
    t->n++;
    return DUET_OK;
}

/* A decimal in 0..TRACE_MAX_DRAFT at *p (digits only), advancing *p; -1 if there is none or it is too large. */
static int small_uint(const char **p) {
    const char *s = *p;
    int v = 0, n = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s++ - '0');
        if (++n > 3 || v > TRACE_MAX_DRAFT) return -1;
    }
    if (!n) return -1;
    *p = s;
    return v;
}

/* One decision line (NUL-terminated, no newline, trailing spaces removed) into t. */
static int parse_line(trace *t, const char *s, int line, char *err, size_t errlen) {
    if (t->kind == TRACE_EE) {
        for (int w = 0; w < 3; w++)
            if (!strcmp(s, WHERE[w])) return trace_add(t, w, 0, err, errlen);
        return err_set(err, errlen, DUET_EFORMAT, "trace line %d: an ee decision is e1, e2 or cloud", line);
    }
    int k = small_uint(&s);
    if (k < 0 || *s != ' ') goto bad;
    while (*s == ' ') s++;
    int a = small_uint(&s);
    if (a < 0 || *s) goto bad;
    if (a > k)
        return err_set(err, errlen, DUET_EFORMAT, "trace line %d: %d accepted of %d drafted", line, a, k);
    return trace_add(t, k, a, err, errlen);
bad:
    return err_set(err, errlen, DUET_EFORMAT,
                   "trace line %d: a hat decision is 'K A': drafted K and accepted A, 0 <= A <= K <= %d", line,
                   TRACE_MAX_DRAFT);
}

int trace_parse(trace *t, const char *buf, size_t len, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    if (len > FILE_MAX) return err_set(err, errlen, DUET_EFORMAT, "trace: %zu bytes is too large for a trace", len);
    int lines = 0; /* decisions can be at most the number of lines: size the arrays once */
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    lines++;
    if (lines > TRACE_MAX + 1024) lines = TRACE_MAX + 1024;
    char s[LINE_MAX_LEN + 1];
    int line = 0, rc = DUET_OK;
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && buf[j] != '\n') j++;
        line++;
        size_t n = j - i;
        if (n && buf[j - 1] == '\r') n--; /* CRLF files */
        if (n > LINE_MAX_LEN) {
            rc = err_set(err, errlen, DUET_EFORMAT, "trace line %d: longer than %d bytes", line, LINE_MAX_LEN);
            goto fail;
        }
        memcpy(s, buf + i, n);
        s[n] = 0;
        if (memchr(s, 0, n)) {
            rc = err_set(err, errlen, DUET_EFORMAT, "trace line %d: a NUL byte", line);
            goto fail;
        }
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
        i = j + 1;
        if (line == 1) {
            int kind = !strcmp(s, "duet-trace 1 ee") ? TRACE_EE : !strcmp(s, "duet-trace 1 hat") ? TRACE_HAT : 0;
            if (!kind) {
                rc = err_set(err, errlen, DUET_EFORMAT,
                             "not a duet trace: the first line must be 'duet-trace 1 ee' or 'duet-trace 1 hat'");
                goto fail;
            }
            if ((rc = trace_init(t, kind, lines < TRACE_MAX ? lines : TRACE_MAX, err, errlen))) return rc;
            continue;
        }
        if (!n || s[0] == '#') continue;
        if (t->n >= TRACE_MAX) {
            rc = err_set(err, errlen, DUET_EFORMAT, "trace line %d: more than %d decisions", line, TRACE_MAX);
            goto fail;
        }
        if ((rc = parse_line(t, s, line, err, errlen))) {
            if (rc != DUET_EFORMAT) err_prefix(err, errlen, "trace line %d", line);
            rc = DUET_EFORMAT;
            goto fail;
        }
    }
    if (!t->kind) return err_set(err, errlen, DUET_EFORMAT, "not a duet trace: the file is empty");
    if (!t->n) {
        rc = err_set(err, errlen, DUET_EFORMAT, "the trace holds no decision");
        goto fail;
    }
    return DUET_OK;
fail:
    trace_free(t);
    return rc;
}

int trace_load(trace *t, const char *path, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, errlen, DUET_EIO, "cannot open trace %s: %s", path, strerror(errno));
    long size = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET)) {
        fclose(f);
        return err_set(err, errlen, DUET_EIO, "cannot read trace %s (not a regular file?)", path);
    }
    size_t cap = (size_t)size < FILE_MAX ? (size_t)size + 1 : FILE_MAX + 1; /* + 1: a file over the limit shows */
    char *buf = malloc(cap);
    size_t len = buf ? fread(buf, 1, cap, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf) return err_set(err, errlen, DUET_ENOMEM, "out of memory reading trace %s", path);
    int rc = bad ? err_set(err, errlen, DUET_EIO, "cannot read trace %s", path) : trace_parse(t, buf, len, err, errlen);
    if (rc && !bad) err_prefix(err, errlen, "%s", path);
    free(buf);
    return rc;
}

int trace_write(const trace *t, const char *note, FILE *f) {
    fprintf(f, "duet-trace 1 %s\n", trace_kind_name(t->kind));
    if (note) fprintf(f, "# %s\n", note);
    for (int i = 0; i < t->n; i++) {
        if (t->kind == TRACE_EE) fprintf(f, "%s\n", WHERE[t->a[i]]);
        else fprintf(f, "%d %d\n", t->a[i], t->b[i]);
    }
    return ferror(f) ? DUET_EIO : DUET_OK;
}

int trace_save(const trace *t, const char *note, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "w");
    if (!f) return err_set(err, errlen, DUET_EIO, "cannot write trace %s: %s", path, strerror(errno));
    int rc = trace_write(t, note, f);
    if (fclose(f) || rc) return err_set(err, errlen, DUET_EIO, "cannot write trace %s", path);
    return DUET_OK;
}

void trace_next(trace *t, int *a, int *b) {
    if (t->cursor >= t->n) t->cursor = 0;
    *a = t->a[t->cursor];
    *b = t->b[t->cursor];
    t->cursor++;
}

int trace_max_a(const trace *t) {
    int mx = 0;
    for (int i = 0; i < t->n; i++)
        if (t->a[i] > mx) mx = t->a[i];
    return mx;
}
