/* trace.h: a run's data-dependent decisions, recorded on a trained model and replayed on a synthetic shape
 * (random weights), so that compute and traffic are real-size while the decision pattern is a real model's.
 *
 * ee records, per generated token, where it came from (the E1 exit, the E2 exit, or the cloud); hat records,
 * per decode round, how many tokens were drafted and how many of them were accepted. pd has no data-dependent
 * decision (its plan and hand-over follow the clock and the link, never the tokens), so it has no trace.
 *
 * File format (text, docs/RESULTS.md "Decision traces"): a first line `duet-trace 1 ee` or `duet-trace 1 hat`,
 * then one decision per line: ee `e1`, `e2` or `cloud`; hat `K A` (drafted K in 0..64, accepted A <= K).
 * Lines starting with '#' and blank lines are comments. At most TRACE_MAX decisions, lines of at most 255
 * bytes. Everything else is refused with the line number: a trace is untrusted input.
 *
 * Replay takes the decisions in order and starts over when they run out.
 * Ownership: a trace owns its arrays; trace_free releases them. One thread at a time. */
#ifndef DUET_MODES_TRACE_H
#define DUET_MODES_TRACE_H

#include <stddef.h>
#include <stdio.h>

enum trace_kind { TRACE_EE = 1, TRACE_HAT = 2 };
enum trace_where { TRACE_E1 = 0, TRACE_E2 = 1, TRACE_CLOUD = 2 }; /* ee: where a token came from */

#define TRACE_MAX (1 << 20)
#define TRACE_MAX_DRAFT 64

typedef struct trace {
    int kind;      /* enum trace_kind */
    int n, cap;    /* decisions held, room for */
    int *a, *b;    /* [cap] ee: a = enum trace_where, b = 0; hat: a = drafted, b = accepted */
    int cursor;    /* replay: the next decision */
} trace;

/* An empty trace of kind with room for cap decisions (recording allocates once, before the request). */
int trace_init(trace *t, int kind, int cap, char *err, size_t errlen);
void trace_free(trace *t);
/* Appends one decision; DUET_EINVAL when it is out of range for the kind, or the trace is full. */
int trace_add(trace *t, int a, int b, char *err, size_t errlen);
/* Parses a whole trace file's bytes (need not be NUL-terminated). */
int trace_parse(trace *t, const char *buf, size_t len, char *err, size_t errlen);
int trace_load(trace *t, const char *path, char *err, size_t errlen);
/* Writes t in the file format, with `note` (may be NULL) as a comment line after the first. */
int trace_write(const trace *t, const char *note, FILE *f);
int trace_save(const trace *t, const char *note, const char *path, char *err, size_t errlen);
/* The next decision for replay (cycling); t must hold at least one. */
void trace_next(trace *t, int *a, int *b);
/* The largest a in t (hat: the longest draft), 0 when empty. */
int trace_max_a(const trace *t);
const char *trace_kind_name(int kind);

#endif
