/* session.h: the cloud's context manager for one session (CE-CoLLM's "cloud context manager"): the KV cache of
 * the layers the device asked the cloud to run, the positions the device sent but the cloud has not run yet
 * (token ids when the session holds the embedding, else hidden-state rows), and the output rows of the last
 * batch run. Pending positions are run in one batch when an answer needs them, then dropped (consumed).
 *
 * Errors are enum frame_err codes (BOUNDS, LIMIT, STATE; INTERNAL for an engine failure), so the server can
 * put them in an ERROR frame as they are. Ownership: a session belongs to the one connection thread that made
 * it (or, while a scheduler runs a job of it, to the scheduler); the model and pool are the caller's and must
 * outlive it. */
#ifndef DUET_CLOUD_SESSION_H
#define DUET_CLOUD_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"
#include "net/frame.h"

typedef struct session_params {
    duet_part part;           /* one span [a,b) the session runs; embed: input is token ids; head: can predict */
    int n_ctx;                /* positions the session may reach */
    size_t max_pending_bytes; /* uploaded or prompted positions not yet run, as stored (f32 rows, i32 ids) */
    duet_sampling sampling;
} session_params;

typedef struct session_counters {
    uint64_t positions; /* run through the session's layers */
    double compute_ms;  /* embed + layers + head + sampling */
} session_counters;

typedef struct session session;

session *session_init(const duet_model *m, duet_pool *pool, const session_params *p, char *err, size_t errlen);
void session_free(session *s);

/* Positions sent so far (run + pending): where the next PROMPT or UPLOAD must start. */
int session_end(const session *s);
int session_ctx(const session *s);
bool session_takes_tokens(const session *s);
size_t session_pending_bytes(const session *s);
void session_counters_get(const session *s, session_counters *out);

/* Appends ids[n] (PROMPT, or a streamed token fed back) at pos0 <= session_end, after forgetting everything the
 * session holds from pos0 on, computed or pending (speculative rollback). */
int session_push_tokens(session *s, uint32_t pos0, const int32_t *ids, uint32_t n, char *err, size_t errlen);
/* Appends an UPLOAD's rows at r->pos0, as session_push_tokens does. */
int session_push_rows(session *s, const frame_rows *r, char *err, size_t errlen);
/* Forgets every position >= n, computed or pending (REQUEST.kv_keep); n past the end changes nothing. */
void session_truncate(session *s, uint32_t n);
/* Runs every pending position through the session's layers in one batch (nothing to do: 0). */
int session_run(session *s, char *err, size_t errlen);
/* The output rows of positions pos..pos+n-1 (*rows: [n][dim]); they must be in the last batch run. */
int session_rows(const session *s, uint32_t pos, uint32_t n, const float **rows, char *err, size_t errlen);
/* Head and sampler on the output row of position pos: the token that follows it, and where not NULL the
 * maximum softmax probability (conf) and the top logit of the raw logits. */
int session_predict(session *s, uint32_t pos, int32_t *id, float *conf, float *logit, char *err, size_t errlen);

/* The row of position pos the head reads (head held, pos in the last batch run), as session_predict checks. */
int session_head_row(const session *s, uint32_t pos, const float **row, char *err, size_t errlen);
/* The sampler on logits[vocab] computed elsewhere (overwritten); conf and logit as session_predict. */
int32_t session_sample(session *s, float *logits, float *conf, float *logit);

/* A batch run in pieces by a scheduler that puts several sessions in one forward pass (sched.h). Between the
 * first piece and the last, nothing else may change the session. */
int session_pending(const session *s);
void session_span(const session *s, int *a, int *b);
/* The inputs of the next k <= session_pending positions into h[k][dim] (token ids embedded with c), and the
 * segment of the session's cache they run as (duet_forward_multi). */
int session_piece_in(session *s, duet_ctx *c, int k, float *h, duet_seg *seg, char *err, size_t errlen);
/* Takes back the piece's outputs out[k][dim]: the positions are run; once none is pending the whole batch is
 * the last batch run (session_rows). ms: compute time charged to the session. */
void session_piece_out(session *s, int k, const float *out, double ms);
void session_add_ms(session *s, double ms);

#endif
