/* link.h: emulation of a device-cloud network link on one machine (DESIGN section 7).
 *
 * A link is two FIFO pipes: up (device -> cloud) and down (cloud -> device). Each pipe has a serialization
 * rate (a frame of B bytes occupies the sender for B*8/bandwidth, and the next frame cannot start before the
 * previous one finished) and a one-way propagation delay rtt/2 plus jitter, after which the frame is
 * delivered to the reader. Delivery order is kept. This file is pure time arithmetic; transport.c applies it.
 *
 * Specs (link_parse): "none" | "lan" | "wifi" | "wan" | "4g", optionally followed by overrides, or overrides
 * alone: "up=20mbit,down=50mbit,rtt=40ms,jitter=5ms,dist=normal,seed=7". Bandwidth units bit, kbit, mbit,
 * gbit (powers of 1000); time units us, ms, s. Profiles are quoted "down/up" like consumer links:
 * wifi 100/50 Mbit/s means down=100mbit, up=50mbit (so "wan" is exactly the example
 * up=20mbit,down=50mbit,rtt=40ms of DESIGN section 7). */
#ifndef DUET_NET_LINK_H
#define DUET_NET_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum link_jitter { LINK_JITTER_UNIFORM = 0, LINK_JITTER_NORMAL = 1 };
enum link_dir { LINK_UP = 0, LINK_DOWN = 1 };

/* All zero: no emulation. Fixed layout because HELLO carries it (frame.h). */
typedef struct link_params {
    uint64_t up_bps;      /* device -> cloud, bit/s; 0 = unlimited */
    uint64_t down_bps;    /* cloud -> device, bit/s; 0 = unlimited */
    uint32_t rtt_us;      /* propagation round trip; each direction gets rtt/2 */
    uint32_t jitter_us;   /* uniform: one-way delay += U[-j, +j]; normal: += N(0, j^2); never below 0 */
    uint32_t jitter_dist; /* enum link_jitter */
    uint32_t seed;        /* jitter random stream (each direction derives its own) */
} link_params;
_Static_assert(sizeof(link_params) == 32, "link_params travels in HELLO: no padding");

#define LINK_MAX_BPS 1000000000000ull /* 1 Tbit/s: anything above is a typo */
#define LINK_MAX_TIME_US 60000000u    /* a minute of rtt or jitter */
int link_parse(const char *spec, link_params *out, char *err, size_t errlen);
/* The bounds link_parse enforces, for params that arrive any other way (a HELLO): bandwidth 0 (unlimited) or
 * 1..LINK_MAX_BPS, rtt and jitter <= LINK_MAX_TIME_US, a known jitter distribution. 0 or DUET_EINVAL. */
int link_check(const link_params *p, char *err, size_t errlen);
/* Writes a spec that link_parse reads back to the same params ("none" when inactive); returns its length. */
int link_format(const link_params *p, char *buf, size_t cap);
bool link_active(const link_params *p);
/* The longest a frame of `bytes` can take through an idle pipe of direction dir: serialization, rtt/2 and the
 * jitter's bound (4 standard deviations when normal). What a deadline for an answer adds for the link. */
double link_worst_ms(const link_params *p, enum link_dir dir, size_t bytes);

/* One direction of a link, owned by its sender. Times are ms on any one clock (clock_now_ms in transport). */
typedef struct link_pipe {
    double ms_per_byte;   /* 0: unlimited bandwidth */
    double delay_ms;      /* rtt / 2 */
    double jitter_ms;
    int dist;             /* enum link_jitter */
    uint64_t rng;
    double free_at;       /* when the last frame handed over finishes serializing */
    double last_deliver;  /* delivery time of the last frame (keeps FIFO order under jitter) */
} link_pipe;

void link_pipe_init(link_pipe *p, const link_params *lp, enum link_dir dir);
/* A frame of `bytes` handed to the pipe at now_ms. Returns its delivery time; *done_ms (may be NULL) gets
 * the time its serialization ends, i.e. when the pipe is free for the next frame. */
double link_pipe_push(link_pipe *p, double now_ms, size_t bytes, double *done_ms);

#endif
