/* probe.h: what a device measures before choosing how to answer (auto mode, pd's plan): the link to the
 * cloud over the real protocol (padded PINGs) and the speed of its own layers (docs/AUTO.md).
 *
 * Compute is a line per layer: one layer over c positions takes fixed + c * pos ms; the head on one row
 * head ms; every forward call (a run of consecutive layers) call ms on top (dispatch, embedding; what
 * dominates a tiny model). The cloud's figures have the same shape (auto fills them, see cost.h). Pure measurement: no
 * state; the caller caches what it measured for the connection. */
#ifndef DUET_MODES_PROBE_H
#define DUET_MODES_PROBE_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"
#include "modes/remote.h"
#include "net/link.h"

typedef struct probe_net {
    double rtt_ms;           /* an empty PING answered by an empty PONG (median) */
    double up_ms_per_byte;   /* serialization device -> cloud; 0: too fast to see */
    double down_ms_per_byte; /* cloud -> device */
} probe_net;

typedef struct probe_compute {
    int n_layers;
    double layer_fixed_ms; /* one layer over c positions: fixed + c * pos */
    double layer_pos_ms;
    double head_ms;        /* the head on one row */
    double call_ms;        /* each forward call */
} probe_compute;

/* Time of one PING carrying pad bytes up, answered by a PONG carrying reply_pad bytes down, on the open
 * session r, into *ms. */
int probe_ping(remote *r, uint32_t pad, uint32_t reply_pad, double *ms, char *err, size_t errlen);

/* RTT (median of 3 empty PINGs), then the uplink and downlink (the better of 2 PINGs padded by
 * PROBE_PAD_BYTES one way, less the best empty one, per byte). */
#define PROBE_PAD_BYTES 65536
int probe_link(remote *r, probe_net *out, char *err, size_t errlen);

/* The same figures from an emulated link's parameters, without a connection (deterministic). */
void probe_link_nominal(const link_params *lp, probe_net *out);

/* The cloud's own account of its speed: on a session r of mode split (the cloud holds layers [layer_a, L)
 * and the head), UPLOADs zero rows at position 0 (each rolls the previous ones back) and asks for the token
 * after the last, with 1 and 32 rows, the better of 3 each; the compute_us the cloud reports in its answers
 * give *one_ms (its layers over 1 row, and the head) and *batch_ms (over 32 rows, and the head). */
#define PROBE_BATCH 32
int probe_cloud(remote *r, int dim, double *one_ms, double *batch_ms, char *err, size_t errlen);

/* Times forwards (embedding, every layer, the head on the last row) of 1 and 32 positions, one layer on 1
 * position and the head alone on a scratch cache of m (which must hold the whole model), median of 5 after a warm-up, stretched by
 * slowdown as the device's steps are. */
int probe_device(const duet_model *m, duet_pool *pool, double slowdown, probe_compute *out, char *err,
                 size_t errlen);

#endif
