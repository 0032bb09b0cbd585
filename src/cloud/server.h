/* server.h: the cloud: serves many devices at once, each connection one session with its own KV cache for
 * the layers this process holds and its own context manager (hidden states uploaded but not yet run).
 *
 * Threads: one thread per connection parses, checks and answers, so a slow or stalled device only ever blocks
 * its own thread; one scheduler thread (sched.h) runs the compute of every session together, in steps, on the
 * shared duet_pool. With no_batching each connection runs its own forward passes with its own duet_ctx and
 * the sessions take turns on the pool per forward call. Ownership: the model is the caller's and must outlive the server; server_free stops and frees
 * everything else. Library code: the server never prints; it hands one line per session to opts.log. */
#ifndef DUET_CLOUD_SERVER_H
#define DUET_CLOUD_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

typedef struct server_opts {
    const char *host;          /* NULL: all local addresses */
    int port;                  /* 0: a free port (server_port tells which) */
    int threads;               /* compute threads of the shared pool (default 1) */
    int max_sessions;          /* concurrent sessions (default 64); more get ERROR LIMIT */
    uint32_t max_frame;        /* largest payload accepted, bytes (default 64 MiB) */
    size_t max_pending_bytes;  /* per session: uploaded hidden states not yet consumed (default 256 MiB) */
    int max_ctx;               /* positions per session (default: the model's context length) */
    int idle_timeout_ms;       /* a session silent this long is closed and freed (default 60000) */
    int handshake_timeout_ms;  /* a connection must complete TLS, AUTH and HELLO within this (default 5000) */
    int max_per_address;       /* connections at once from one peer address (default 16) */
    size_t memory_budget;      /* all connections together: pending input, queued output and large receive
                                * buffers (default 1 GiB); beyond it ERROR LIMIT */
    struct transport_tls *tls; /* TLS 1.3 on every connection (transport_tls_server), or NULL: plain TCP */
    const uint8_t *token;      /* shared secret every device must send in AUTH before HELLO, or NULL */
    size_t token_len;          /* 1..FRAME_AUTH_MAX */
    int no_batching;           /* 1: each connection runs its own forward passes, taking turns on the pool (the
                                * baseline); 0: one scheduler batches every session's work (sched.h) */
    int step_rows;             /* positions per scheduler step, all sessions together (default 256) */
    int piece;                 /* positions of one prefill per step (default 64) */
    int max_queued;            /* positions queued before REQUESTs wait (backpressure) and OPEN gets ERROR LIMIT
                                * (default 4096) */
    void (*log)(void *arg, const char *line); /* one line per session at its end, and errors; NULL: silent */
    void *log_arg;
} server_opts;

server_opts server_opts_default(void);

typedef struct server_stats {
    uint64_t sessions_total, sessions_open;
    uint64_t tokens, positions;        /* tokens returned, positions run through the cloud layers */
    uint64_t bytes_up, bytes_down;
    uint64_t errors;                   /* connections ended by an error (bad frames, limits, timeouts) */
    double compute_ms;
    uint64_t steps;                    /* forward passes: scheduler steps, or (no batching) one per request or
                                        * streamed token */
    uint64_t backpressure;             /* REQUESTs that waited for room in the queue */
    int step_rows_max, step_jobs_max;  /* the largest step: positions, sessions */
    int queued_jobs, queued_positions; /* now */
    int waiting;                       /* REQUESTs waiting for room now (their connections unread) */
    size_t memory_used;                /* of memory_budget, now: 0 when no connection holds anything */
} server_stats;

typedef struct cloud_server cloud_server;

/* Binds the listening socket (so server_port is known at once). */
cloud_server *server_init(duet_model *m, const server_opts *o, char *err, size_t errlen);
int server_port(const cloud_server *s);
/* Serves until server_stop: 0, or < 0 if the listener failed. */
int server_run(cloud_server *s);
/* Serves one connection on a socket the caller made (a socketpair end, for the protocol fuzzer); the server
 * owns fd from now on. Also frees connections that have ended. 0 or < 0. */
int server_adopt(cloud_server *s, int fd, char *err, size_t errlen);
/* server_run on a background thread (for `--cloud local` and tests). */
int server_start(cloud_server *s, char *err, size_t errlen);
/* Asks the server to stop: it refuses new connections, closes sessions and returns from server_run.
 * Async-signal-safe (sets an atomic flag). */
void server_stop(cloud_server *s);
void server_stats_get(cloud_server *s, server_stats *out);
/* For tests: the scheduler starts no step while paused (no-op without batching). */
void server_pause(cloud_server *s, int paused);
/* Stops if running, joins every thread, frees every session. */
void server_free(cloud_server *s);

#endif
