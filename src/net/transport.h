/* transport.h: one TCP connection between a device and the cloud, carrying frames (frame.h) over an emulated
 * link (link.h). Used by both sides.
 *
 * Sending is asynchronous: transport_send encodes the frame into a slot of a bounded queue and returns; a
 * sender thread writes each frame to the socket at its emulated delivery time (serialization paced by the
 * bandwidth of this side's direction, then rtt/2 + jitter), so a caller can hand off a large upload and keep
 * computing. The receiver therefore sees each frame exactly at its delivery time, without a shared clock.
 * (A frame that is due at once and finds the queue empty is written by the caller itself, saving two thread
 * handoffs per round trip; whatever the socket does not take at once still goes through the thread.)
 * Receiving is synchronous, with a timeout; once a frame's first byte arrived, the rest must follow within
 * io_timeout_ms, so a peer that vanishes mid-frame gives an error, never a hang.
 *
 * Threads: send, flush and stats may be called from any threads; recv/expect/hello from one thread at a time.
 * Ownership: transport_connect/accept return a connection the caller frees with transport_free, which drops
 * frames not yet written (call transport_flush first to deliver them). A frame_msg filled by recv points into
 * the connection's receive buffer and is valid until the next recv.
 *
 * Status: 0 ok; TRANSPORT_TIMEOUT and TRANSPORT_CLOSED are recoverable conditions; < 0 errors (enum
 * duet_status, or enum frame_err for a malformed or out-of-sequence frame; they stick: every later recv
 * returns the same error). */
#ifndef DUET_NET_TRANSPORT_H
#define DUET_NET_TRANSPORT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "net/frame.h"
#include "net/link.h"

#define TRANSPORT_TIMEOUT 100 /* nothing arrived within the timeout */
#define TRANSPORT_CLOSED 101  /* the peer closed the connection cleanly between frames */

/* A memory budget shared by many connections (the cloud's): bytes of queued output frames and of receive
 * buffers beyond their first TRANSPORT_SMALL bytes. A frame that would pass cap is refused (FRAME_E_LIMIT). */
typedef struct transport_budget {
    atomic_size_t used;
    size_t cap;
} transport_budget;
#define TRANSPORT_SMALL 65536 /* buffers up to this size are not charged and are kept after a frame */
/* Takes n bytes: 0, or FRAME_E_LIMIT (nothing taken) past the cap. b NULL: no budget. */
int transport_budget_take(transport_budget *b, size_t n);
void transport_budget_give(transport_budget *b, size_t n);

/* TLS 1.3 settings (OpenSSL), shared by many connections: a server's certificate and key, or a client's CA. */
typedef struct transport_tls transport_tls;
transport_tls *transport_tls_server(const char *cert_file, const char *key_file, char *err, size_t errlen);
/* The client checks the server's certificate chain against ca_file and its name against the host connected to. */
transport_tls *transport_tls_client(const char *ca_file, char *err, size_t errlen);
void transport_tls_free(transport_tls *tls);

typedef struct transport_opts {
    link_params link;   /* emulated link; all zero: none */
    int send_dir;       /* enum link_dir of this side's sends: LINK_UP on the device, LINK_DOWN on the cloud */
    frame_limits limits; /* what recv accepts */
    int queue_frames;   /* sender queue depth */
    int io_timeout_ms;  /* connect and TLS handshake; a whole frame once its first byte arrived; a whole frame's
                         * write once it is due; a send waiting for queue space beyond the emulated link's delay */
    int max_backlog_ms; /* > 0: a send whose emulated delivery lies further ahead is refused (FRAME_E_LIMIT);
                         * ERROR frames are exempt (they are small, and the last thing sent) */
    const atomic_int *cancel; /* not NULL: every wait in recv, connect and a send on a full queue ends within
                               * 100 ms of it becoming non-zero (DUET_EIO "cancelled") */
    transport_budget *budget; /* NULL: none */
    transport_tls *tls;       /* NULL: plain TCP */
} transport_opts;
transport_opts transport_opts_default(int send_dir); /* no link, default limits, 16 frames, 10 s, no TLS */

/* Counters for DESIGN section 6. up/down name the link direction (device -> cloud is up), whichever side
 * this connection is; bytes are real socket bytes including headers. */
typedef struct transport_stats {
    uint64_t bytes_up, bytes_down;
    uint64_t frames_up, frames_down;
    uint64_t round_trips;   /* receives that followed at least one send since the previous receive */
    double comm_wait_ms;    /* time callers spent blocked: in recv, in flush, and in send on a full queue */
} transport_stats;

typedef struct transport transport;
typedef struct transport_listener transport_listener;

/* host NULL: every local address; port 0: a free port (read it with transport_listener_port). */
transport_listener *transport_listen(const char *host, int port, char *err, size_t errlen);
int transport_listener_port(const transport_listener *l);
void transport_listener_free(transport_listener *l);
/* Waits up to timeout_ms (< 0: forever) for a connection: 0 with *out, TRANSPORT_TIMEOUT, or < 0. */
int transport_accept(transport_listener *l, const transport_opts *o, int timeout_ms, transport **out, char *err,
                     size_t errlen);
/* With o->tls, also runs the TLS handshake (within io_timeout_ms) and checks the certificate for `host`. */
transport *transport_connect(const char *host, int port, const transport_opts *o, char *err, size_t errlen);
/* Server side of TLS on an accepted connection (a no-op without TLS); accept leaves it to the connection's own
 * thread so a slow handshake holds only that thread. Nothing may be sent before it succeeded. */
int transport_tls_accept(transport *t, int timeout_ms, char *err, size_t errlen);
/* A connection on a socket the caller made (e.g. one end of a socketpair); the transport owns fd. */
transport *transport_adopt(int fd, const transport_opts *o, char *err, size_t errlen);
void transport_free(transport *t);

/* The emulated link for frames sent from now on (the cloud applies the one the device's HELLO carries). */
void transport_set_link(transport *t, const link_params *lp);
/* Queues m (the caller's arrays may be reused on return); blocks only while the queue is full. Numbers the
 * frame with this direction's next sequence number. Fails if the sender thread has failed. */
int transport_send(transport *t, const frame_msg *m, char *err, size_t errlen);
/* A last frame (an ERROR before closing): drops the queued frames that have not started to leave, then sends
 * m in their place, so a peer that stopped reading still gets it first. For the connection's only producer. */
int transport_send_last(transport *t, const frame_msg *m, char *err, size_t errlen);
/* Waits up to timeout_ms (< 0: forever) until every queued frame is on the socket: 0, TRANSPORT_TIMEOUT, < 0. */
int transport_flush(transport *t, int timeout_ms, char *err, size_t errlen);
/* How long, in ms from now, until the frames queued so far are delivered over the emulated link (0 without
 * one): what a closing grace or a reply deadline adds for the link. */
double transport_backlog_ms(transport *t);
/* An absolute deadline (clock_now_ms; < 0: none) that bounds every recv as a whole, e.g. a handshake. */
void transport_set_deadline(transport *t, double deadline_ms);
/* Next frame into *m, checked against the limits and the sequence: 0, TRANSPORT_TIMEOUT (nothing started
 * within timeout_ms; < 0 waits forever), TRANSPORT_CLOSED, or < 0. An ERROR frame is returned as a frame. */
int transport_recv(transport *t, frame_msg *m, int timeout_ms, char *err, size_t errlen);
/* recv wanting one type: a peer's ERROR becomes its code and "peer: <text>", another type FRAME_E_STATE. A PING
 * on the way is answered with a PONG (either side answers PING in any state) and skipped. */
int transport_expect(transport *t, int type, frame_msg *m, int timeout_ms, char *err, size_t errlen);

/* Device side of the handshake: sends HELLO `want` (what the cloud should hold, and the link) at once, then
 * applies want->link to this side's later sends; expects HELLO_OK within timeout_ms plus the emulated down
 * link's time for it, and checks it against want. *got (may be NULL) gets it. The HELLO itself is never
 * delayed by emulation, so the cloud's handshake deadline is independent of the link. */
int transport_hello(transport *t, const frame_hello *want, frame_hello *got, int timeout_ms, char *err,
                    size_t errlen);
/* Cloud side: expects HELLO, checks it against `have` (what this side holds); on a mismatch sends ERROR and
 * returns FRAME_E_REFUSED; else applies the HELLO's link to this side's sends and answers HELLO_OK (have,
 * with that link). *got (may be NULL) gets the device's HELLO. */
int transport_hello_answer(transport *t, const frame_hello *have, frame_hello *got, int timeout_ms, char *err,
                           size_t errlen);

void transport_stats_get(transport *t, transport_stats *out);
/* Bytes TCP carried on this connection since it opened (the kernel's TCP_INFO: sent and acknowledged,
 * received), TLS records and handshake included: what TLS costs on the wire. 0 or DUET_EUNSUPPORTED. */
int transport_wire_bytes(const transport *t, uint64_t *sent, uint64_t *received);
/* The peer's address as "host:port" ("[v6]:port" for IPv6), or "?" if the socket cannot tell. */
void transport_peer(const transport *t, char *buf, size_t cap);

#endif
