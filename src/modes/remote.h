/* remote.h: the device side's connection to the cloud, shared by every mode that uses one.
 *
 * remote_open connects (to "HOST:PORT", or with "local" to an in-process cloud it starts on loopback, which
 * then runs the same server and transport code as a separate one), says HELLO (model fingerprint, the part
 * the cloud must hold, the hidden-state encoding and the emulated link, which both ends apply) and OPENs a
 * session for one request. This is the setup of a conversation, so it happens before the request is accepted:
 * a mode's metrics (times, bytes, round trips) cover the request only, from its prompt to its last token,
 * and take the byte and round-trip counts from the transport (remote_begin / remote_end).
 *
 * Ownership: a remote is the caller's struct; remote_close or remote_free frees everything remote_open
 * made (also after a failed remote_open). Threads: one remote belongs to one thread. */
#ifndef DUET_MODES_REMOTE_H
#define DUET_MODES_REMOTE_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "cloud/server.h"
#include "duet.h"
#include "modes/metrics.h"
#include "net/transport.h"

typedef struct remote_opts {
    const char *cloud;       /* "HOST:PORT", or "local": start an in-process cloud on 127.0.0.1 */
    const char *model_path;  /* the GGUF the local cloud loads its part from ("local" only) */
    int load_flags;          /* duet_model_load flags of the local cloud's part */
    link_params link;        /* emulated link; all zero: none */
    int enc;                 /* enum frame_enc of uploaded hidden states */
    double device_slowdown;  /* every device compute step is stretched to this many times its time; <= 1: none */
    int cloud_threads;       /* compute threads of the local cloud */
    int timeout_ms;          /* connect, handshake, and the longest wait for any one reply (plus what the
                              * emulated link needs for it) */
    int fallback;            /* when the cloud is lost mid-request, finish it on the device (mode_device_resume) */
    const char *tls_ca;      /* "tls://HOST:PORT" clouds: the CA file their certificate must chain to */
    const uint8_t *token;    /* the cloud's shared secret (AUTH before HELLO), or NULL */
    size_t token_len;
} remote_opts;

remote_opts remote_opts_default(void); /* cloud "local", no link, fp16, no slowdown, 1 thread, 30 s, no fallback */

typedef struct remote {
    transport *t;
    cloud_server *local;       /* the in-process cloud, or NULL */
    duet_model *local_model;   /* the local cloud's part of the model */
    uint32_t session;
    int opened;                /* OPENED arrived: CLOSE is owed */
    int n_ctx;                 /* positions the session was granted */
    int layer_a, layer_b;      /* the cloud holds layers [layer_a, layer_b), the head too when layer_b is L */
    int enc;
    double slowdown;
    int timeout_ms;
    link_params link;
    transport_tls *tls;        /* the client TLS context of a tls:// cloud */
    int fallback;              /* remote_opts.fallback */
    const char *model_path;    /* for a fallback: the device loads the whole model from here */
    int load_flags;
    transport_stats base;      /* counters at remote_begin */
} remote;

/* remote_parse_addr, also taking a "tls://" prefix; *tls says whether it was there. */
int remote_parse_url(const char *spec, char *host, size_t cap, int *port, int *tls, char *err, size_t errlen);
/* Parses "HOST:PORT" ("[v6addr]:PORT" too) into host[cap] and *port. 0 ok, DUET_EINVAL with a message. */
int remote_parse_addr(const char *spec, char *host, size_t cap, int *port, char *err, size_t errlen);

/* Connects, says HELLO and OPENs a session of `mode` (enum frame_mode) for a request of n_ctx positions
 * sampled with *s. The cloud must hold layers [layer_a, L) and the head, plus the embedding when layer_a is 0.
 * m is the device's model (any part of the same file): its fingerprint and dim go into HELLO. */
int remote_open(remote *r, duet_model *m, const remote_opts *o, int mode, int layer_a, int n_ctx,
                const duet_sampling *s, char *err, size_t errlen);
/* The same for a cloud holding layers [layer_a, layer_b) (0 <= layer_a < layer_b <= L): the head only when
 * layer_b is L, the embedding only when layer_a is 0. HAT's middle part is [A, L-M): neither. */
int remote_open_range(remote *r, duet_model *m, const remote_opts *o, int mode, int layer_a, int layer_b, int n_ctx,
                      const duet_sampling *s, char *err, size_t errlen);
/* Ends the session (CLOSE, answered by CLOSE), then remote_free. */
int remote_close(remote *r, char *err, size_t errlen);
/* Drops the connection without a goodbye (after a failure) and stops the local cloud; no-op when zeroed. */
void remote_free(remote *r);

/* Marks the start of a request; remote_end adds the transport's counters since then (bytes, round trips,
 * time blocked on the network) to mt. cloud_compute_ms is the sum of the compute_us the answers carry. */
void remote_begin(remote *r);
void remote_end(remote *r, metrics *mt);

/* Waits for the next TOKENS frame of the session into *msg (an ERROR becomes its message, silence beyond the
 * timeout an error) and adds the compute time it reports to mt->cloud_compute_ms. */
int remote_recv_tokens(remote *r, frame_msg *msg, metrics *mt, char *err, size_t errlen);

/* Losing the cloud. A mode whose remote call failed with rc asks remote_lost whether the request can go on
 * without it: yes when r->fallback is set and rc came from the cloud or the network (it closed, stalled past
 * the timeout, sent garbage or an ERROR), not from this machine (out of memory, bad arguments). The mode then
 * calls remote_abandon, which records mt->fallback_at (the tokens delivered so far), adds the transport's
 * counters to mt and drops the connection without a goodbye, and finishes with mode_device_resume (mode.h).
 * ee mode can use the same three calls. */
bool remote_lost(const remote *r, int rc);
void remote_abandon(remote *r, metrics *mt);

/* The device-slowdown emulation (DESIGN section 7): a device compute step began at t0_ms and just ended after
 * t ms; sleeps (slowdown - 1) * t more and returns the stretched duration as measured (about slowdown * t). */
double remote_device_step(double t0_ms, double slowdown);

#endif
