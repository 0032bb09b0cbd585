/* The context manager keeps one row buffer h that holds, in turn, the pending rows (or the embedded pending
 * tokens at run time) and then the output rows of the batch just run, so a session owns one activation buffer
 * whatever its mode. The buffer grows for a prompt and shrinks back once a small batch follows, so a session
 * holds prompt-sized memory only while it needs it. A scheduler may run the pending positions in pieces
 * (session_piece_in/out): each piece's outputs go back into h where its inputs were, so when the last piece is
 * done h holds the whole batch's outputs as session_run would have left them. */
#include "cloud/session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/err.h"

#define CTX_BATCH 64 /* forward scratch rows: larger batches run in chunks of this (bit-identical) */
#define KEEP_ROWS 64 /* rows the buffer shrinks back to after a larger batch */

struct session {
    session_params p;
    const duet_model *m;
    duet_pool *pool;
    int a, b, dim, vocab;
    duet_kv *kv;
    duet_ctx *ctx;         /* made on first use: sessions run by a scheduler never need their own */
    duet_sampler *smp;     /* NULL without head */
    float *logits;         /* [vocab], NULL without head */
    float *h;              /* [cap][dim] pending rows, then the output rows of the last batch */
    int32_t *ids;          /* [ids_cap] pending token ids (embed sessions) */
    int cap, ids_cap;
    int run_len;           /* positions in the KV cache */
    int n_pend;            /* pending positions run_len..run_len+n_pend-1 */
    int out_pos0, out_n;   /* h holds the outputs of positions out_pos0..out_pos0+out_n-1 */
    int running;           /* a batch is running in pieces: its pending input starts at row out_n, not 0 */
    session_counters cnt;
};

session *session_init(const duet_model *m, duet_pool *pool, const session_params *p, char *err, size_t errlen) {
    const duet_config *c = duet_model_config(m);
    session *s = calloc(1, sizeof *s);
    if (!s) {
        err_set(err, errlen, FRAME_E_INTERNAL, "session: out of memory");
        return NULL;
    }
    s->p = *p;
    s->a = p->part.n_spans ? p->part.span[0].a : 0;
    s->b = p->part.n_spans ? p->part.span[0].b : 0;
    s->dim = c->dim;
    s->vocab = c->vocab_size;
    char e[256] = "";
    s->m = m;
    s->pool = pool;
    int ok = (s->kv = duet_kv_init(m, &p->part, p->n_ctx, e, sizeof e)) != NULL;
    if (ok && p->part.head) {
        ok = (s->smp = duet_sampler_init(&p->sampling, c->vocab_size, e, sizeof e)) &&
             (s->logits = malloc(sizeof(float) * (size_t)c->vocab_size));
        if (!s->logits) snprintf(e, sizeof e, "out of memory for the logits");
    }
    if (!ok) {
        err_set(err, errlen, FRAME_E_INTERNAL, "session: %s", e);
        session_free(s);
        return NULL;
    }
    return s;
}

void session_free(session *s) {
    if (!s) return;
    duet_kv_free(s->kv);
    duet_ctx_free(s->ctx);
    duet_sampler_free(s->smp);
    free(s->logits);
    free(s->h);
    free(s->ids);
    free(s);
}

int session_end(const session *s) {
    return s->run_len + s->n_pend;
}

int session_ctx(const session *s) {
    return s->p.n_ctx;
}

bool session_takes_tokens(const session *s) {
    return s->p.part.embed;
}

static size_t pending_bytes(const session *s, int n) {
    return (size_t)n * (s->p.part.embed ? sizeof(int32_t) : sizeof(float) * (size_t)s->dim);
}

size_t session_pending_bytes(const session *s) {
    return pending_bytes(s, s->n_pend);
}

void session_counters_get(const session *s, session_counters *out) {
    *out = s->cnt;
}

/* Sizes h (and ids) for `rows` rows, keeping their first rows: doubles when it grows (uploads arrive in
 * pieces), and falls back to KEEP_ROWS when a small batch follows a large one. */
static int reserve(session *s, int rows, char *err, size_t errlen) {
    int cap = s->cap;
    if (rows > cap) {
        cap = cap * 2 > rows ? cap * 2 : rows;
        if (cap < KEEP_ROWS) cap = KEEP_ROWS;
        if (cap > s->p.n_ctx) cap = s->p.n_ctx;
    } else if (cap > KEEP_ROWS && rows <= KEEP_ROWS && s->out_n <= KEEP_ROWS) { /* outputs still readable */
        cap = KEEP_ROWS;
    }
    if (cap == s->cap) return 0;
    if (s->p.part.embed && cap > s->ids_cap) { /* ids never shrink: 4 bytes a position */
        int32_t *ids = realloc(s->ids, sizeof(int32_t) * (size_t)cap);
        if (!ids) return err_set(err, errlen, FRAME_E_INTERNAL, "session: out of memory for %d positions", rows);
        s->ids = ids;
        s->ids_cap = cap;
    }
    float *h = realloc(s->h, sizeof(float) * (size_t)cap * s->dim);
    if (!h) return cap < s->cap ? 0 : err_set(err, errlen, FRAME_E_INTERNAL, "session: out of memory for %d positions", rows);
    s->h = h;
    s->cap = cap;
    return 0;
}

/* Makes room for n positions at pos0 <= session_end: everything held from pos0 on, computed or pending, is
 * forgotten first (a device that rolled back sends its accepted length this way). Checks before it changes
 * anything. */
static int check_append(session *s, const char *what, uint32_t pos0, uint32_t n, char *err, size_t errlen) {
    int end = session_end(s);
    if (pos0 > (uint32_t)end)
        return err_set(err, errlen, FRAME_E_STATE, "%s for positions %u.. out of order: the session holds %d positions",
                       what, pos0, end);
    if ((uint64_t)pos0 + n > (uint64_t)s->p.n_ctx)
        return err_set(err, errlen, FRAME_E_LIMIT, "%s of %u positions at %u exceeds the session's %d positions", what,
                       n, pos0, s->p.n_ctx);
    int keep = (int)pos0 > s->run_len ? (int)pos0 - s->run_len : 0;
    if (pending_bytes(s, keep + (int)n) > s->p.max_pending_bytes)
        return err_set(err, errlen, FRAME_E_LIMIT,
                       "%s: %zu bytes would be pending (not yet run), over the limit of %zu bytes", what,
                       pending_bytes(s, keep + (int)n), s->p.max_pending_bytes);
    session_truncate(s, pos0);
    return 0;
}

int session_push_tokens(session *s, uint32_t pos0, const int32_t *ids, uint32_t n, char *err, size_t errlen) {
    if (!s->p.part.embed)
        return err_set(err, errlen, FRAME_E_STATE, "PROMPT: this session starts at layer %d and takes hidden states",
                       s->a);
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->vocab)
            return err_set(err, errlen, FRAME_E_BOUNDS, "PROMPT: token id %d at position %u is outside the vocabulary "
                           "(0..%d)", ids[i], pos0 + i, s->vocab - 1);
    int rc = check_append(s, "PROMPT", pos0, n, err, errlen);
    if (rc) return rc;
    if ((rc = reserve(s, s->n_pend + (int)n, err, errlen))) return rc;
    memcpy(s->ids + s->n_pend, ids, sizeof(int32_t) * n);
    s->n_pend += (int)n;
    return 0;
}

int session_push_rows(session *s, const frame_rows *r, char *err, size_t errlen) {
    if (s->p.part.embed)
        return err_set(err, errlen, FRAME_E_STATE, "UPLOAD: this session holds the embedding and takes token ids");
    if (r->dim != (uint32_t)s->dim)
        return err_set(err, errlen, FRAME_E_BOUNDS, "UPLOAD: rows of dim %u, the model's is %d", r->dim, s->dim);
    int rc = check_append(s, "UPLOAD", r->pos0, r->n, err, errlen);
    if (rc) return rc;
    if (s->n_pend == 0) s->out_n = 0; /* the new rows overwrite the last batch's outputs */
    if ((rc = reserve(s, s->n_pend + (int)r->n, err, errlen))) return rc;
    frame_rows_get(r, s->h + (size_t)s->n_pend * s->dim);
    s->n_pend += (int)r->n;
    return 0;
}

void session_truncate(session *s, uint32_t n) {
    if ((int)n < s->run_len) {
        duet_kv_truncate(s->kv, (int)n);
        s->run_len = (int)n;
        s->n_pend = 0;
    } else if ((int)n - s->run_len < s->n_pend) {
        s->n_pend = (int)n - s->run_len;
    }
    int keep = (int)n - s->out_pos0;
    if (keep < s->out_n) s->out_n = keep < 0 ? 0 : keep;
}

static int own_ctx(session *s, char *err, size_t errlen) {
    char e[256];
    if (!s->ctx && !(s->ctx = duet_ctx_init(s->m, CTX_BATCH, s->pool, e, sizeof e)))
        return err_set(err, errlen, FRAME_E_INTERNAL, "session: %s", e);
    return 0;
}

int session_run(session *s, char *err, size_t errlen) {
    int n = s->n_pend;
    if (n == 0) return 0;
    double t0 = clock_now_ms();
    char e[256];
    int rc = own_ctx(s, err, errlen);
    if (rc) return rc;
    if (s->p.part.embed) {
        s->out_n = 0;
        if ((rc = reserve(s, n, err, errlen))) return rc;
        rc = duet_embed(s->ctx, s->ids, n, s->h, e, sizeof e);
    }
    if (!rc) rc = duet_forward(s->ctx, s->kv, s->a, s->b, s->h, n, s->run_len, e, sizeof e);
    if (rc) {
        s->out_n = 0;
        return err_set(err, errlen, FRAME_E_INTERNAL, "session: %s", e);
    }
    s->out_pos0 = s->run_len;
    s->out_n = n;
    s->run_len += n;
    s->n_pend = 0;
    s->cnt.positions += (uint64_t)n;
    s->cnt.compute_ms += clock_now_ms() - t0;
    return 0;
}

int session_rows(const session *s, uint32_t pos, uint32_t n, const float **rows, char *err, size_t errlen) {
    uint64_t last = (uint64_t)pos + n;
    if (last > (uint64_t)session_end(s))
        return err_set(err, errlen, FRAME_E_STATE, "positions %u..%llu asked, the session holds %d", pos,
                       (unsigned long long)last - 1, session_end(s));
    if (pos < (uint32_t)s->out_pos0 || last > (uint64_t)s->out_pos0 + (uint64_t)s->out_n)
        return err_set(err, errlen, FRAME_E_STATE,
                       "positions %u..%llu asked, the last batch run holds only %d..%d (earlier ones were consumed)",
                       pos, (unsigned long long)last - 1, s->out_pos0, s->out_pos0 + s->out_n - 1);
    *rows = s->h + (size_t)(pos - (uint32_t)s->out_pos0) * s->dim;
    return 0;
}

int session_head_row(const session *s, uint32_t pos, const float **row, char *err, size_t errlen) {
    if (!s->p.part.head)
        return err_set(err, errlen, FRAME_E_STATE, "this session ends at layer %d without the head: no tokens", s->b);
    return session_rows(s, pos, 1, row, err, errlen);
}

int32_t session_sample(session *s, float *logits, float *conf, float *logit) {
    if (conf || logit) { /* from the raw logits, before the sampler's temperature and filters overwrite them */
        float top = logits[0];
        for (int i = 1; i < s->vocab; i++)
            if (logits[i] > top) top = logits[i];
        if (logit) *logit = top;
        if (conf) {
            double sum = 0;
            for (int i = 0; i < s->vocab; i++) sum += exp((double)(logits[i] - top));
            *conf = (float)(1.0 / sum);
        }
    }
    return duet_sample(s->smp, logits);
}

int session_predict(session *s, uint32_t pos, int32_t *id, float *conf, float *logit, char *err, size_t errlen) {
    const float *row;
    int rc = session_head_row(s, pos, &row, err, errlen);
    if (rc || (rc = own_ctx(s, err, errlen))) return rc;
    double t0 = clock_now_ms();
    char e[256];
    if (duet_head(s->ctx, row, 1, s->logits, e, sizeof e))
        return err_set(err, errlen, FRAME_E_INTERNAL, "session: %s", e);
    *id = session_sample(s, s->logits, conf, logit);
    s->cnt.compute_ms += clock_now_ms() - t0;
    return 0;
}

/* ---- a batch in pieces, for a scheduler ---- */

int session_pending(const session *s) {
    return s->n_pend;
}

void session_span(const session *s, int *a, int *b) {
    *a = s->a;
    *b = s->b;
}

int session_piece_in(session *s, duet_ctx *c, int k, float *h, duet_seg *seg, char *err, size_t errlen) {
    if (k <= 0 || k > s->n_pend)
        return err_set(err, errlen, FRAME_E_INTERNAL, "session: a piece of %d of %d pending positions", k, s->n_pend);
    if (!s->running) { /* the batch's first piece: its outputs replace the last batch's */
        s->out_pos0 = s->run_len;
        s->out_n = 0;
        if (s->p.part.embed) {
            int rc = reserve(s, s->n_pend, err, errlen);
            if (rc) return rc;
        }
        s->running = 1;
    }
    char e[256];
    if (s->p.part.embed) {
        if (duet_embed(c, s->ids + s->out_n, k, h, e, sizeof e))
            return err_set(err, errlen, FRAME_E_INTERNAL, "session: %s", e);
    } else {
        memcpy(h, s->h + (size_t)s->out_n * s->dim, sizeof(float) * (size_t)k * s->dim);
    }
    *seg = (duet_seg){.kv = s->kv, .pos0 = s->run_len, .n = k};
    return 0;
}

void session_piece_out(session *s, int k, const float *out, double ms) {
    memcpy(s->h + (size_t)s->out_n * s->dim, out, sizeof(float) * (size_t)k * s->dim);
    s->out_n += k;
    s->run_len += k;
    s->n_pend -= k;
    if (s->n_pend == 0) s->running = 0;
    s->cnt.positions += (uint64_t)k;
    s->cnt.compute_ms += ms;
}

void session_add_ms(session *s, double ms) {
    s->cnt.compute_ms += ms;
}
