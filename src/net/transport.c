#include "net/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/err.h"
#include "duet.h"

#define SLOT_MIN 4096 /* first allocation of a send slot; slots grow to the largest frame they carried */

typedef struct slot {
    uint8_t *buf; /* [cap] header + payload */
    size_t cap, len;
    size_t off;   /* bytes already on the socket */
    double deliver_ms; /* emulated delivery time: written to the socket then */
} slot;

struct transport {
    int fd;
    transport_opts o;

    /* sending: send_mu orders producers (seq, pipe, the slot being filled); mu guards the queue, errors, stats */
    pthread_mutex_t send_mu, mu;
    pthread_cond_t cv_ready; /* to the sender thread: a frame is queued, or stop */
    pthread_cond_t cv_space; /* to producers and flush: a slot was written, or the sender failed */
    pthread_t thread;
    slot *slots; /* [n_slots] ring: head is the next to write, count are queued */
    int n_slots, head, count;
    int stop;
    int wstatus; /* sticky sender failure */
    char werr[256];
    link_pipe pipe;
    uint32_t send_seq;

    /* receiving: one reader at a time */
    uint8_t *rbuf; /* [rcap] payload of the last frame received */
    size_t rcap;
    uint32_t recv_seq;
    int rstatus; /* sticky receive failure */
    char rerr[256];

    /* counters, under mu */
    uint64_t bytes_sent, bytes_recv, frames_sent, frames_recv, round_trips;
    int sent_since_recv;
    double wait_ms;
};

struct transport_listener {
    int fd;
    int port;
};

transport_opts transport_opts_default(int send_dir) {
    transport_opts o;
    memset(&o, 0, sizeof o);
    o.send_dir = send_dir;
    o.limits = frame_limits_default();
    o.queue_frames = 16;
    o.io_timeout_ms = 10000;
    return o;
}

/* ---- time ---- */

static void cv_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, double deadline_ms) {
    if (deadline_ms < 0) {
        pthread_cond_wait(cv, mu);
        return;
    }
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ms / 1e3);
    ts.tv_nsec = (long)((deadline_ms - (double)ts.tv_sec * 1e3) * 1e6);
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    if (ts.tv_nsec < 0) ts.tv_nsec = 0;
    pthread_cond_timedwait(cv, mu, &ts);
}

static double deadline_after(int timeout_ms) {
    return timeout_ms < 0 ? -1.0 : clock_now_ms() + timeout_ms;
}

/* poll() timeout left until deadline (-1: none). */
static int ms_left(double deadline) {
    if (deadline < 0) return -1;
    double left = deadline - clock_now_ms();
    return left <= 0 ? 0 : (int)(left + 0.999);
}

/* ---- socket I/O ---- */

/* Waits for fd to be ready for ev: 1 ready, 0 timeout, < 0 error. */
static int wait_fd(int fd, short ev, double deadline) {
    for (;;) {
        struct pollfd p = {fd, ev, 0};
        int r = poll(&p, 1, ms_left(deadline));
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

static int write_all(int fd, const uint8_t *p, size_t n, int io_timeout_ms, char *err, size_t errlen) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(fd, POLLOUT, deadline_after(io_timeout_ms));
            if (r == 0)
                return err_set(err, errlen, DUET_EIO, "transport: peer accepted no data for %d ms", io_timeout_ms);
            if (r < 0) return err_set(err, errlen, DUET_EIO, "transport: poll: %s", strerror(errno));
            continue;
        }
        return err_set(err, errlen, DUET_EIO, "transport: send: %s", strerror(w < 0 ? errno : EPIPE));
    }
    return 0;
}

/* Reads exactly n bytes; each wait for more data may last io_timeout_ms. *got: bytes read before a failure. */
static int read_all(int fd, uint8_t *p, size_t n, int io_timeout_ms, size_t *got, char *err, size_t errlen) {
    size_t have = 0;
    int rc = 0;
    while (have < n) {
        ssize_t r = recv(fd, p + have, n - have, MSG_DONTWAIT);
        if (r > 0) {
            have += (size_t)r;
            continue;
        }
        if (r == 0) {
            rc = err_set(err, errlen, FRAME_E_TRUNCATED, "transport: peer closed the connection");
            break;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd(fd, POLLIN, deadline_after(io_timeout_ms));
            if (w > 0) continue;
            rc = w == 0 ? err_set(err, errlen, DUET_EIO, "transport: peer silent for %d ms", io_timeout_ms)
                        : err_set(err, errlen, DUET_EIO, "transport: poll: %s", strerror(errno));
            break;
        }
        rc = err_set(err, errlen, DUET_EIO, "transport: recv: %s", strerror(errno));
        break;
    }
    *got = have;
    return rc;
}

/* ---- sender thread ---- */

static void *sender_main(void *arg) {
    transport *t = arg;
    char err[256];
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        if (!t->count) {
            pthread_cond_wait(&t->cv_ready, &t->mu);
            continue;
        }
        slot *s = &t->slots[t->head];
        if (clock_now_ms() < s->deliver_ms) { /* the frame is still "on the wire" */
            cv_wait_until(&t->cv_ready, &t->mu, s->deliver_ms);
            continue;
        }
        pthread_mutex_unlock(&t->mu);
        int rc = write_all(t->fd, s->buf + s->off, s->len - s->off, t->o.io_timeout_ms, err, sizeof err);
        pthread_mutex_lock(&t->mu);
        if (rc) {
            t->wstatus = rc;
            snprintf(t->werr, sizeof t->werr, "%s", err);
            pthread_cond_broadcast(&t->cv_space);
            break;
        }
        t->bytes_sent += s->len;
        t->frames_sent++;
        t->head = (t->head + 1) % t->n_slots;
        t->count--;
        pthread_cond_broadcast(&t->cv_space);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ---- setup ---- */

static transport *transport_new(int fd, const transport_opts *o, char *err, size_t errlen) {
    transport *t = calloc(1, sizeof *t);
    if (!t) {
        close(fd);
        err_set(err, errlen, DUET_ENOMEM, "transport: out of memory");
        return NULL;
    }
    t->fd = fd;
    t->o = o ? *o : transport_opts_default(LINK_UP);
    if (t->o.queue_frames <= 0) t->o.queue_frames = 16;
    if (t->o.io_timeout_ms <= 0) t->o.io_timeout_ms = 10000;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    link_pipe_init(&t->pipe, &t->o.link, (enum link_dir)t->o.send_dir);
    t->n_slots = t->o.queue_frames;
    t->slots = calloc((size_t)t->n_slots, sizeof *t->slots);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* deadlines come from clock_now_ms */
    pthread_mutex_init(&t->send_mu, NULL);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv_ready, &ca);
    pthread_cond_init(&t->cv_space, &ca);
    pthread_condattr_destroy(&ca);
    if (!t->slots || pthread_create(&t->thread, NULL, sender_main, t) != 0) {
        err_set(err, errlen, t->slots ? DUET_ERR : DUET_ENOMEM, "transport: cannot start the sender thread");
        pthread_cond_destroy(&t->cv_ready);
        pthread_cond_destroy(&t->cv_space);
        pthread_mutex_destroy(&t->mu);
        pthread_mutex_destroy(&t->send_mu);
        free(t->slots);
        close(fd);
        free(t);
        return NULL;
    }
    return t;
}

void transport_free(transport *t) {
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->cv_ready);
    pthread_mutex_unlock(&t->mu);
    shutdown(t->fd, SHUT_RDWR); /* wakes a sender thread blocked on a full socket */
    pthread_join(t->thread, NULL);
    close(t->fd);
    for (int i = 0; i < t->n_slots; i++) free(t->slots[i].buf);
    free(t->slots);
    free(t->rbuf);
    pthread_cond_destroy(&t->cv_ready);
    pthread_cond_destroy(&t->cv_space);
    pthread_mutex_destroy(&t->mu);
    pthread_mutex_destroy(&t->send_mu);
    free(t);
}

static struct addrinfo *resolve(const char *host, int port, int passive, char *err, size_t errlen) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc) {
        err_set(err, errlen, DUET_EIO, "transport: cannot resolve %s:%d: %s", host ? host : "*", port, gai_strerror(rc));
        return NULL;
    }
    return ai;
}

transport *transport_connect(const char *host, int port, const transport_opts *o, char *err, size_t errlen) {
    if (port <= 0 || port > 65535) {
        err_set(err, errlen, DUET_EINVAL, "transport: port %d out of range", port);
        return NULL;
    }
    struct addrinfo *ai = resolve(host, port, 0, err, errlen);
    if (!ai) return NULL;
    int timeout = o && o->io_timeout_ms > 0 ? o->io_timeout_ms : 10000;
    int fd = -1, last = 0;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int ok = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
        if (!ok && errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline_after(timeout)) > 0) {
            int so = 0;
            socklen_t sl = sizeof so;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl);
            ok = so == 0;
            last = so ? so : ETIMEDOUT;
        } else if (!ok) {
            last = errno == EINPROGRESS ? ETIMEDOUT : errno;
        }
        if (!ok) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        err_set(err, errlen, DUET_EIO, "transport: cannot connect to %s:%d: %s", host ? host : "localhost", port,
                strerror(last));
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK); /* I/O uses MSG_DONTWAIT + poll explicitly */
    return transport_new(fd, o, err, errlen);
}

transport_listener *transport_listen(const char *host, int port, char *err, size_t errlen) {
    if (port < 0 || port > 65535) {
        err_set(err, errlen, DUET_EINVAL, "transport: port %d out of range", port);
        return NULL;
    }
    struct addrinfo *ai = resolve(host, port, 1, err, errlen);
    if (!ai) return NULL;
    int fd = -1, last = 0;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
            last = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        err_set(err, errlen, DUET_EIO, "transport: cannot listen on %s:%d: %s", host ? host : "*", port, strerror(last));
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    transport_listener *l = malloc(sizeof *l);
    if (!l) {
        close(fd);
        err_set(err, errlen, DUET_ENOMEM, "transport: out of memory");
        return NULL;
    }
    l->fd = fd;
    l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    return l;
}

int transport_listener_port(const transport_listener *l) {
    return l->port;
}

void transport_listener_free(transport_listener *l) {
    if (!l) return;
    close(l->fd);
    free(l);
}

int transport_accept(transport_listener *l, const transport_opts *o, int timeout_ms, transport **out, char *err,
                     size_t errlen) {
    *out = NULL;
    int r = wait_fd(l->fd, POLLIN, deadline_after(timeout_ms));
    if (r == 0) return err_set(err, errlen, TRANSPORT_TIMEOUT, "transport: no connection within %d ms", timeout_ms);
    int fd = r > 0 ? accept4(l->fd, NULL, NULL, SOCK_CLOEXEC) : -1;
    if (fd < 0) return err_set(err, errlen, DUET_EIO, "transport: accept: %s", strerror(errno));
    *out = transport_new(fd, o, err, errlen);
    return *out ? 0 : DUET_ERR;
}

/* ---- frames ---- */

void transport_set_link(transport *t, const link_params *lp) {
    pthread_mutex_lock(&t->send_mu);
    t->o.link = *lp;
    link_pipe_init(&t->pipe, lp, (enum link_dir)t->o.send_dir);
    pthread_mutex_unlock(&t->send_mu);
}

int transport_send(transport *t, const frame_msg *m, char *err, size_t errlen) {
    size_t size;
    int rc = frame_payload_size(m, &size, err, errlen);
    if (rc) return rc;
    double t0 = clock_now_ms();
    pthread_mutex_lock(&t->send_mu);
    pthread_mutex_lock(&t->mu);
    while (t->count == t->n_slots && !t->wstatus) pthread_cond_wait(&t->cv_space, &t->mu);
    rc = t->wstatus;
    if (rc) err_set(err, errlen, rc, "%s", t->werr);
    /* The slot past the queued ones is ours: the sender thread only touches queued slots. */
    slot *s = &t->slots[(t->head + t->count) % t->n_slots];
    pthread_mutex_unlock(&t->mu);
    double waited = clock_now_ms() - t0;
    size_t need = FRAME_HEADER_SIZE + size;
    if (!rc && need > s->cap) {
        size_t cap = s->cap ? s->cap : SLOT_MIN;
        while (cap < need) cap *= 2;
        uint8_t *b = realloc(s->buf, cap);
        if (!b) rc = err_set(err, errlen, DUET_ENOMEM, "transport: no memory for a %zu-byte frame", need);
        else s->buf = b, s->cap = cap;
    }
    if (!rc) {
        frame_header h = {FRAME_MAGIC, FRAME_VERSION, m->type, 0, m->session, t->send_seq, (uint32_t)size};
        frame_header_encode(&h, s->buf);
        rc = frame_payload_encode(m, s->buf + FRAME_HEADER_SIZE, size, err, errlen);
    }
    if (!rc) {
        s->len = need;
        s->off = 0;
        s->deliver_ms = link_pipe_push(&t->pipe, clock_now_ms(), need, NULL);
        t->send_seq++;
    }
    pthread_mutex_lock(&t->mu);
    t->wait_ms += waited;
    if (!rc && t->count == 0 && !t->wstatus && s->deliver_ms <= clock_now_ms()) {
        /* Due now and the sender thread is idle (nothing queued; send_mu keeps other producers out): write
         * what the socket takes at once, which saves two thread handoffs per round trip. */
        pthread_mutex_unlock(&t->mu);
        ssize_t w = send(t->fd, s->buf, s->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        pthread_mutex_lock(&t->mu);
        if (w > 0) s->off = (size_t)w;
        if (s->off == s->len) {
            t->bytes_sent += s->len;
            t->frames_sent++;
            t->sent_since_recv = 1;
            pthread_mutex_unlock(&t->mu);
            pthread_mutex_unlock(&t->send_mu);
            return 0;
        }
    }
    if (!rc) { /* the sender thread writes the rest, and reports a socket error if there is one */
        t->count++;
        t->sent_since_recv = 1;
        pthread_cond_signal(&t->cv_ready);
    }
    pthread_mutex_unlock(&t->mu);
    pthread_mutex_unlock(&t->send_mu);
    return rc;
}

int transport_flush(transport *t, int timeout_ms, char *err, size_t errlen) {
    double t0 = clock_now_ms(), deadline = deadline_after(timeout_ms);
    pthread_mutex_lock(&t->mu);
    while (t->count && !t->wstatus && (deadline < 0 || clock_now_ms() < deadline))
        cv_wait_until(&t->cv_space, &t->mu, deadline);
    int rc = t->wstatus ? err_set(err, errlen, t->wstatus, "%s", t->werr)
             : t->count ? err_set(err, errlen, TRANSPORT_TIMEOUT, "transport: %d frames still queued after %d ms",
                                  t->count, timeout_ms)
                        : 0;
    t->wait_ms += clock_now_ms() - t0;
    pthread_mutex_unlock(&t->mu);
    return rc;
}

static int recv_fail(transport *t, int rc, const char *msg) {
    t->rstatus = rc;
    snprintf(t->rerr, sizeof t->rerr, "%s", msg);
    return rc;
}

static int recv_frame(transport *t, frame_msg *m, int timeout_ms, char *err, size_t errlen) {
    if (t->rstatus) return err_set(err, errlen, t->rstatus, "%s", t->rerr);
    int r = wait_fd(t->fd, POLLIN, deadline_after(timeout_ms));
    if (r == 0) return err_set(err, errlen, TRANSPORT_TIMEOUT, "transport: nothing received within %d ms", timeout_ms);
    if (r < 0) return recv_fail(t, err_set(err, errlen, DUET_EIO, "transport: poll: %s", strerror(errno)), err);
    uint8_t hb[FRAME_HEADER_SIZE];
    size_t got;
    int rc = read_all(t->fd, hb, sizeof hb, t->o.io_timeout_ms, &got, err, errlen);
    if (rc == FRAME_E_TRUNCATED && got == 0)
        return recv_fail(t, err_set(err, errlen, TRANSPORT_CLOSED, "transport: peer closed the connection"), err);
    if (rc) {
        err_prefix(err, errlen, "in a frame header after %zu of %d bytes", got, FRAME_HEADER_SIZE);
        return recv_fail(t, rc, err);
    }
    frame_header h;
    rc = frame_header_decode(hb, sizeof hb, &t->o.limits, &h, err, errlen);
    if (rc) return recv_fail(t, rc, err);
    if (h.seq != t->recv_seq)
        return recv_fail(t, err_set(err, errlen, FRAME_E_SEQ, "transport: %s has sequence number %u, expected %u",
                                    frame_type_name(h.type), h.seq, t->recv_seq), err);
    if (h.len > t->rcap) {
        uint8_t *b = realloc(t->rbuf, h.len);
        if (!b) return recv_fail(t, err_set(err, errlen, DUET_ENOMEM, "transport: no memory for %u bytes", h.len), err);
        t->rbuf = b;
        t->rcap = h.len;
    }
    rc = read_all(t->fd, t->rbuf, h.len, t->o.io_timeout_ms, &got, err, errlen);
    if (rc) {
        err_prefix(err, errlen, "in a %s payload after %zu of %u bytes", frame_type_name(h.type), got, h.len);
        return recv_fail(t, rc, err);
    }
    rc = frame_payload_decode(&h, t->rbuf, &t->o.limits, m, err, errlen);
    if (rc) return recv_fail(t, rc, err);
    t->recv_seq++;
    pthread_mutex_lock(&t->mu);
    t->bytes_recv += FRAME_HEADER_SIZE + (size_t)h.len;
    t->frames_recv++;
    if (t->sent_since_recv) t->round_trips++;
    t->sent_since_recv = 0;
    pthread_mutex_unlock(&t->mu);
    return 0;
}

int transport_recv(transport *t, frame_msg *m, int timeout_ms, char *err, size_t errlen) {
    double t0 = clock_now_ms();
    char e[256] = ""; /* always formatted, so a sticky error keeps its message even for err == NULL callers */
    int rc = recv_frame(t, m, timeout_ms, e, sizeof e);
    if (rc) err_set(err, errlen, rc, "%s", e);
    double waited = clock_now_ms() - t0;
    pthread_mutex_lock(&t->mu);
    t->wait_ms += waited;
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int transport_expect(transport *t, int type, frame_msg *m, int timeout_ms, char *err, size_t errlen) {
    int rc = transport_recv(t, m, timeout_ms, err, errlen);
    if (rc) return rc;
    if (m->type == type) return 0;
    if (m->type == FRAME_ERROR)
        return err_set(err, errlen, m->u.error.code, "peer: %.*s", (int)m->u.error.len, m->u.error.text);
    return err_set(err, errlen, FRAME_E_STATE, "transport: expected %s, got %s", frame_type_name(type),
                   frame_type_name(m->type));
}

int transport_hello(transport *t, const frame_hello *want, frame_hello *got, int timeout_ms, char *err,
                    size_t errlen) {
    frame_msg m = {.type = FRAME_HELLO};
    m.u.hello = *want;
    transport_set_link(t, &want->link);
    int rc = transport_send(t, &m, err, errlen);
    if (!rc) rc = transport_expect(t, FRAME_HELLO_OK, &m, timeout_ms, err, errlen);
    if (rc) return rc;
    if (got) *got = m.u.hello;
    return frame_hello_check(&m.u.hello, want, err, errlen);
}

int transport_hello_answer(transport *t, const frame_hello *have, frame_hello *got, int timeout_ms, char *err,
                           size_t errlen) {
    frame_msg m;
    int rc = transport_expect(t, FRAME_HELLO, &m, timeout_ms, err, errlen);
    if (rc) return rc;
    frame_hello peer = m.u.hello;
    if (got) *got = peer;
    char e[256];
    rc = frame_hello_check(have, &peer, e, sizeof e);
    if (rc) { /* both sides learn why */
        frame_error_msg(&m, 0, rc, e);
        if (transport_send(t, &m, NULL, 0) == 0) transport_flush(t, t->o.io_timeout_ms, NULL, 0);
        return err_set(err, errlen, rc, "%s", e);
    }
    transport_set_link(t, &peer.link);
    m.type = FRAME_HELLO_OK;
    m.session = 0;
    m.u.hello = *have;
    m.u.hello.link = peer.link;
    return transport_send(t, &m, err, errlen);
}

void transport_stats_get(transport *t, transport_stats *out) {
    pthread_mutex_lock(&t->mu);
    int up = t->o.send_dir == LINK_UP;
    out->bytes_up = up ? t->bytes_sent : t->bytes_recv;
    out->bytes_down = up ? t->bytes_recv : t->bytes_sent;
    out->frames_up = up ? t->frames_sent : t->frames_recv;
    out->frames_down = up ? t->frames_recv : t->frames_sent;
    out->round_trips = t->round_trips;
    out->comm_wait_ms = t->wait_ms;
    pthread_mutex_unlock(&t->mu);
}

void transport_peer(const transport *t, char *buf, size_t cap) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    char host[INET6_ADDRSTRLEN] = "?";
    snprintf(buf, cap, "?");
    if (getpeername(t->fd, (struct sockaddr *)&sa, &len)) return;
    if (sa.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(buf, cap, "%s:%d", host, ntohs(in->sin_port));
    } else if (sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(buf, cap, "[%s]:%d", host, ntohs(in6->sin6_port));
    }
}
