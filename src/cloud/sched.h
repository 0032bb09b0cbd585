/* sched.h: the cloud's compute scheduler. Connection threads parse, check and queue jobs (a REQUEST's
 * pending positions, a stream); one scheduler thread runs steps: each step takes pending positions of many
 * jobs at once and runs them as one duet_forward_multi per layer range (sessions asking the same [a,b) share
 * every matrix product; different ranges are separate passes of the same step), then one duet_head over
 * every row that needs a token, then each session's own sampler. Jobs join at any step and leave when done
 * (continuous batching).
 *
 * Which positions a step runs (sched_plan): at most step_rows in all. Jobs with one position pending (a
 * stream's next token, a one-row upload) come first, least recently served first, leaving room for one
 * prefill piece when a prefill waits (min(piece, step_rows / 2) positions); jobs with more pending positions
 * (prefills) share the rest, least recently served first, at most `piece` positions each per step, so a long
 * prompt runs in pieces and never stalls the streams beside it. Ties go to the oldest job. Both orders are
 * round-robin: no job starves.
 *
 * Bounds: positions queued (pending in jobs not yet done) are at most max_queued: a job that would pass it
 * waits in sched_submit (its connection stops reading: backpressure) unless the queue is empty; sched_full
 * tells the server to refuse new sessions. A stream whose connection has not taken its last SCHED_OUTBOX
 * tokens (a slow or stalled device) sits out steps until it does; it never holds a step up.
 *
 * Threads: sched_submit, sched_wait, sched_take, sched_cancel, sched_full, sched_stats_get and sched_pause may
 * be called from any thread; a job and its session belong to the scheduler from sched_submit until done (the
 * submitter reads only what sched_take hands out). Ownership: sched_free stops the thread; the model and
 * pool are the caller's. */
#ifndef DUET_CLOUD_SCHED_H
#define DUET_CLOUD_SCHED_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cloud/session.h"
#include "duet.h"

#define SCHED_OUTBOX 32 /* streamed tokens a connection may leave untaken */

typedef struct sched_opts {
    int step_rows;  /* positions per step, all sessions together (default 256) */
    int piece;      /* positions of one prefill per step (default 64) */
    int max_queued; /* positions queued before new work waits and new sessions are refused (default 4096) */
} sched_opts;

enum sched_kind {
    SCHED_RUN = 1,    /* run the pending positions (HIDDEN answers read them afterwards) */
    SCHED_TOKENS = 2, /* run, then head + sampler at positions pos..pos+count-1 */
    SCHED_STREAM = 3, /* run, then up to count tokens, each fed back (FRAME_WANT_STREAM) */
};

typedef struct sched_job {
    /* the submitter's */
    session *s;
    int kind;
    uint32_t pos, count; /* TOKENS: positions; STREAM: the first token's position, most tokens */
    int n_ctx, eos;      /* STREAM ends when the context is full or after eos (-1: none) */
    bool conf, logit;    /* fields wanted */
    int32_t *ids;        /* TOKENS: [count] results */
    float *confs, *logits; /* TOKENS: [count] results where wanted */
    /* the scheduler's, read through sched_take and after done */
    int32_t box_id[SCHED_OUTBOX]; /* STREAM outbox, a ring indexed by token number */
    float box_conf[SCHED_OUTBOX], box_logit[SCHED_OUTBOX];
    uint32_t made, taken;         /* tokens put in the outbox, taken by the connection */
    uint32_t next;                /* STREAM: the position the next token takes (the end marker's pos0 at done) */
    int done, cancel, rc;         /* rc: 0 or an enum frame_err, with err */
    double busy_ms;               /* the durations of the steps that ran it (not the waits between them) */
    char err[256];
    uint64_t seq, served;         /* submission order, the last step that ran it */
    struct sched_job *link;
} sched_job;

typedef struct sched_stats {
    uint64_t steps;          /* steps that ran a forward pass or a head */
    uint64_t rows;           /* positions run */
    uint64_t jobs_done;
    int queued_jobs, queued_positions;
    int step_rows_max, step_jobs_max; /* largest step so far: positions, jobs */
    uint64_t backpressure;   /* submits that had to wait for the queue */
    int waiting;             /* submits waiting now */
} sched_stats;

typedef struct sched sched;

sched *sched_init(const duet_model *m, duet_pool *pool, const sched_opts *o, char *err, size_t errlen);
void sched_free(sched *q);
/* Queues j (its session's pending positions as they are now). Waits while the queue is over max_queued and
 * not empty, checking *stop every 100 ms: 0 queued, 1 stopped first (not queued). */
int sched_submit(sched *q, sched_job *j, const atomic_int *stop);
/* Waits up to ms for j to be done or to have untaken tokens. */
void sched_wait(sched *q, sched_job *j, int ms);
/* Copies up to cap untaken stream tokens (their first token number in *first): how many. *done: j is done
 * and everything is taken. */
int sched_take(sched *q, sched_job *j, int32_t *ids, float *conf, float *logit, int cap, uint32_t *first, int *done);
/* Asks the scheduler to drop j and waits until it has (at most one step). */
void sched_cancel(sched *q, sched_job *j);
bool sched_full(sched *q);
void sched_stats_get(sched *q, sched_stats *out);
/* For tests: no step starts while paused, so jobs submitted meanwhile meet in the next one. */
void sched_pause(sched *q, bool paused);

/* The rule above, alone (for tests): job i has rows[i] positions pending, was last run at step served[i] and
 * queued seq[i]; give[i] gets what it runs this step. Returns the total. */
int sched_plan(int n, const int *rows, const uint64_t *served, const uint64_t *seq, int step_rows, int piece,
               int *give);

#endif
