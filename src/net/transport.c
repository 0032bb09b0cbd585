#include "net/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* struct tcp_info with the byte counters (TCP_NODELAY too) */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/err.h"
#include "duet.h"

#define SLOT_MIN 4096  /* first allocation of a send slot; small slots grow to the largest frame they carried */
#define CANCEL_MS 100  /* longest a cancellable wait goes without looking at the cancel flag */

typedef struct slot {
    uint8_t *buf; /* [cap] header + payload */
    size_t cap, len;
    size_t off;   /* bytes already on the socket */
    size_t charged; /* budget bytes this slot holds (cap, when cap > TRANSPORT_SMALL) */
    double deliver_ms; /* emulated delivery time: written to the socket then */
} slot;

struct transport_tls {
    SSL_CTX *ctx;
    int server;
};

struct transport {
    int fd;
    transport_opts o;
    SSL *ssl;            /* NULL: plain TCP */
    pthread_mutex_t io_mu; /* one SSL call at a time (the reader and the writers share the SSL object) */

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
    double last_deliver; /* under mu: emulated delivery of the last frame queued */

    /* receiving: one reader at a time */
    uint8_t *rbuf; /* [rcap] payload of the last frame received */
    size_t rcap, rcharged;
    uint32_t recv_seq;
    double deadline; /* absolute bound on every recv (< 0: none) */
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

/* ---- memory budget ---- */

int transport_budget_take(transport_budget *b, size_t n) {
    if (!b || !n) return 0;
    size_t used = atomic_load(&b->used);
    do {
        if (used + n > b->cap || used + n < used) return FRAME_E_LIMIT;
    } while (!atomic_compare_exchange_weak(&b->used, &used, used + n));
    return 0;
}

void transport_budget_give(transport_budget *b, size_t n) {
    if (b && n) atomic_fetch_sub(&b->used, n);
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

/* The earlier of two deadlines (< 0: none). */
static double earlier(double a, double b) {
    return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

/* poll() timeout left until deadline (-1: none). */
static int ms_left(double deadline) {
    if (deadline < 0) return -1;
    double left = deadline - clock_now_ms();
    return left <= 0 ? 0 : (int)(left + 0.999);
}

static int cancelled(const transport *t) {
    return t->o.cancel && atomic_load(t->o.cancel);
}

/* ---- socket I/O, plain or TLS ---- */

#define WAIT_CANCELLED (-2)

/* Waits for the socket to be ready for ev: 1 ready, 0 deadline passed, -1 poll error, WAIT_CANCELLED. */
static int wait_io(transport *t, short ev, double deadline, int cancellable) {
    for (;;) {
        if (cancellable && cancelled(t)) return WAIT_CANCELLED;
        int left = ms_left(deadline);
        if (cancellable && t->o.cancel && (left < 0 || left > CANCEL_MS)) left = CANCEL_MS;
        struct pollfd p = {t->fd, ev, 0};
        int r = poll(&p, 1, left);
        if (r > 0) return 1;
        if (r == 0) {
            if (deadline >= 0 && clock_now_ms() >= deadline) return 0;
            continue;
        }
        if (errno != EINTR) return -1;
    }
}

static int tls_error(char *err, size_t errlen, const char *what) {
    char buf[160] = "";
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    else snprintf(buf, sizeof buf, "%s", errno ? strerror(errno) : "connection reset");
    return err_set(err, errlen, DUET_EIO, "transport: TLS %s: %s", what, buf);
}

/* One non-blocking SSL_read or SSL_write under the I/O lock: > 0 bytes; 0 nothing now (*ev: what to wait
 * for, either way round: TLS may need to write to read); < 0 an error, FRAME_E_TRUNCATED when the peer closed. */
static ssize_t tls_io(transport *t, int out, uint8_t *p, size_t n, short *ev, char *err, size_t errlen) {
    int len = n > INT32_MAX ? INT32_MAX : (int)n;
    pthread_mutex_lock(&t->io_mu);
    ERR_clear_error();
    errno = 0;
    int r = out ? SSL_write(t->ssl, p, len) : SSL_read(t->ssl, p, len);
    int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
    int saved = errno;
    pthread_mutex_unlock(&t->io_mu);
    if (r > 0) return r;
    if (e == SSL_ERROR_WANT_READ) return *ev = POLLIN, 0;
    if (e == SSL_ERROR_WANT_WRITE) return *ev = POLLOUT, 0;
    if (!out && (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && saved == 0)))
        return err_set(err, errlen, FRAME_E_TRUNCATED, "transport: peer closed the connection");
    errno = saved;
    return tls_error(err, errlen, out ? "write" : "read");
}

/* One non-blocking read: > 0 bytes; 0 nothing now (*ev: what to wait for); < 0 an error, FRAME_E_TRUNCATED
 * when the peer closed. */
static ssize_t io_read(transport *t, uint8_t *p, size_t n, short *ev, char *err, size_t errlen) {
    if (t->ssl) return tls_io(t, 0, p, n, ev, err, errlen);
    for (;;) {
        ssize_t r = recv(t->fd, p, n, MSG_DONTWAIT);
        if (r > 0) return r;
        if (r == 0) return err_set(err, errlen, FRAME_E_TRUNCATED, "transport: peer closed the connection");
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return *ev = POLLIN, 0;
        return err_set(err, errlen, DUET_EIO, "transport: recv: %s", strerror(errno));
    }
}

static ssize_t io_write(transport *t, const uint8_t *p, size_t n, short *ev, char *err, size_t errlen) {
    if (t->ssl) return tls_io(t, 1, (uint8_t *)p, n, ev, err, errlen);
    for (;;) {
        ssize_t w = send(t->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) return w;
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return *ev = POLLOUT, 0;
        return err_set(err, errlen, DUET_EIO, "transport: send: %s", strerror(w < 0 ? errno : EPIPE));
    }
}

/* Writes p[n] whole before deadline (the whole frame's bound, not each wait's). */
static int write_all(transport *t, const uint8_t *p, size_t n, double deadline, char *err, size_t errlen) {
    while (n) {
        short ev = 0;
        ssize_t w = io_write(t, p, n, &ev, err, errlen);
        if (w < 0) return (int)w;
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        int r = wait_io(t, ev, deadline, 0);
        if (r == 0)
            return err_set(err, errlen, DUET_EIO, "transport: the peer did not take a frame within %d ms",
                           t->o.io_timeout_ms);
        if (r < 0) return err_set(err, errlen, DUET_EIO, "transport: poll: %s", strerror(errno));
    }
    return 0;
}

/* Reads exactly n bytes before deadline. *got: bytes read before a failure. */
static int read_all(transport *t, uint8_t *p, size_t n, double deadline, size_t *got, char *err, size_t errlen) {
    size_t have = 0;
    int rc = 0;
    while (have < n) {
        short ev = 0;
        ssize_t r = io_read(t, p + have, n - have, &ev, err, errlen);
        if (r > 0) {
            have += (size_t)r;
            continue;
        }
        if (r < 0) {
            rc = (int)r;
            break;
        }
        int w = wait_io(t, ev, deadline, 1);
        if (w > 0) continue;
        rc = w == WAIT_CANCELLED ? err_set(err, errlen, DUET_EIO, "transport: cancelled")
             : w == 0 ? err_set(err, errlen, DUET_EIO, "transport: the frame did not arrive whole within its deadline")
                      : err_set(err, errlen, DUET_EIO, "transport: poll: %s", strerror(errno));
        break;
    }
    *got = have;
    return rc;
}

/* Waits for a socket that is not a transport yet (connect, accept): 1 ready, 0 timeout, < 0 error. */
static int wait_fd(int fd, short ev, double deadline) {
    for (;;) {
        struct pollfd p = {fd, ev, 0};
        int r = poll(&p, 1, ms_left(deadline));
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* ---- TLS setup ---- */

static transport_tls *tls_new(int server, char *err, size_t errlen) {
    transport_tls *tls = calloc(1, sizeof *tls);
    if (!tls) {
        err_set(err, errlen, DUET_ENOMEM, "transport: out of memory");
        return NULL;
    }
    tls->server = server;
    ERR_clear_error();
    tls->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!tls->ctx || !SSL_CTX_set_min_proto_version(tls->ctx, TLS1_3_VERSION)) {
        tls_error(err, errlen, "setup");
        transport_tls_free(tls);
        return NULL;
    }
    /* the sender thread retries a write from wherever the last one stopped */
    SSL_CTX_set_mode(tls->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return tls;
}

transport_tls *transport_tls_server(const char *cert_file, const char *key_file, char *err, size_t errlen) {
    transport_tls *tls = tls_new(1, err, errlen);
    if (!tls) return NULL;
    /* no session tickets: nothing is sent after the handshake that a device did not ask for */
    SSL_CTX_set_num_tickets(tls->ctx, 0);
    if (SSL_CTX_use_certificate_chain_file(tls->ctx, cert_file) != 1) {
        tls_error(err, errlen, "certificate");
        err_prefix(err, errlen, "%s", cert_file);
    } else if (SSL_CTX_use_PrivateKey_file(tls->ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
               SSL_CTX_check_private_key(tls->ctx) != 1) {
        tls_error(err, errlen, "private key");
        err_prefix(err, errlen, "%s", key_file);
    } else {
        return tls;
    }
    transport_tls_free(tls);
    return NULL;
}

transport_tls *transport_tls_client(const char *ca_file, char *err, size_t errlen) {
    transport_tls *tls = tls_new(0, err, errlen);
    if (!tls) return NULL;
    if (SSL_CTX_load_verify_locations(tls->ctx, ca_file, NULL) != 1) {
        tls_error(err, errlen, "CA file");
        err_prefix(err, errlen, "%s", ca_file);
        transport_tls_free(tls);
        return NULL;
    }
    SSL_CTX_set_verify(tls->ctx, SSL_VERIFY_PEER, NULL);
    return tls;
}

void transport_tls_free(transport_tls *tls) {
    if (!tls) return;
    SSL_CTX_free(tls->ctx);
    free(tls);
}

/* Runs the TLS handshake to its end before deadline. */
static int tls_handshake(transport *t, double deadline, char *err, size_t errlen) {
    for (;;) {
        pthread_mutex_lock(&t->io_mu);
        ERR_clear_error();
        errno = 0;
        int r = SSL_do_handshake(t->ssl);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
        long verify = SSL_get_verify_result(t->ssl);
        pthread_mutex_unlock(&t->io_mu);
        if (r == 1) return 0;
        short ev;
        if (e == SSL_ERROR_WANT_READ) ev = POLLIN;
        else if (e == SSL_ERROR_WANT_WRITE) ev = POLLOUT;
        else if (verify != X509_V_OK)
            return err_set(err, errlen, DUET_EIO, "transport: TLS: the peer's certificate is not trusted: %s",
                           X509_verify_cert_error_string(verify));
        else return tls_error(err, errlen, "handshake");
        int w = wait_io(t, ev, deadline, 1);
        if (w == 0) return err_set(err, errlen, DUET_EIO, "transport: TLS handshake not done within its deadline");
        if (w < 0) return err_set(err, errlen, DUET_EIO, "transport: TLS handshake %s", w == WAIT_CANCELLED ? "cancelled" : "failed: poll");
    }
}

int transport_tls_accept(transport *t, int timeout_ms, char *err, size_t errlen) {
    if (!t->ssl) return 0;
    return tls_handshake(t, earlier(deadline_after(timeout_ms), t->deadline), err, errlen);
}

/* ---- sender thread ---- */

/* A slot whose frame is on the socket gives a large buffer back (and its budget), keeping small ones. Under mu
 * or while the slot is the sender's. */
static void slot_release(transport *t, slot *s) {
    if (s->cap > TRANSPORT_SMALL) {
        free(s->buf);
        s->buf = NULL;
        s->cap = 0;
    }
    transport_budget_give(t->o.budget, s->charged);
    s->charged = 0;
}

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
        int rc = write_all(t, s->buf + s->off, s->len - s->off, deadline_after(t->o.io_timeout_ms), err, sizeof err);
        if (!rc) slot_release(t, s);
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
    t->deadline = -1;
    if (t->o.queue_frames <= 0) t->o.queue_frames = 16;
    if (t->o.io_timeout_ms <= 0) t->o.io_timeout_ms = 10000;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* non-blocking: OpenSSL reads and writes the socket with plain read/write, and a TLS read that blocked
     * inside the I/O lock would stop the sender thread (the plain path passes MSG_DONTWAIT anyway) */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    link_pipe_init(&t->pipe, &t->o.link, (enum link_dir)t->o.send_dir);
    t->n_slots = t->o.queue_frames;
    t->slots = calloc((size_t)t->n_slots, sizeof *t->slots);
    if (t->o.tls) {
        ERR_clear_error();
        if ((t->ssl = SSL_new(t->o.tls->ctx)) && SSL_set_fd(t->ssl, fd) == 1) {
            if (t->o.tls->server) SSL_set_accept_state(t->ssl);
            else SSL_set_connect_state(t->ssl);
        } else {
            tls_error(err, errlen, "setup");
            SSL_free(t->ssl);
            free(t->slots);
            close(fd);
            free(t);
            return NULL;
        }
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* deadlines come from clock_now_ms */
    pthread_mutex_init(&t->io_mu, NULL);
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
        pthread_mutex_destroy(&t->io_mu);
        SSL_free(t->ssl);
        free(t->slots);
        close(fd);
        free(t);
        return NULL;
    }
    return t;
}

transport *transport_adopt(int fd, const transport_opts *o, char *err, size_t errlen) {
    return transport_new(fd, o, err, errlen);
}

void transport_free(transport *t) {
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->cv_ready);
    pthread_mutex_unlock(&t->mu);
    shutdown(t->fd, SHUT_RDWR); /* wakes a sender thread blocked on a full socket */
    pthread_join(t->thread, NULL);
    SSL_free(t->ssl);
    close(t->fd);
    for (int i = 0; i < t->n_slots; i++) {
        transport_budget_give(t->o.budget, t->slots[i].charged);
        free(t->slots[i].buf);
    }
    free(t->slots);
    transport_budget_give(t->o.budget, t->rcharged);
    free(t->rbuf);
    pthread_cond_destroy(&t->cv_ready);
    pthread_cond_destroy(&t->cv_space);
    pthread_mutex_destroy(&t->mu);
    pthread_mutex_destroy(&t->send_mu);
    pthread_mutex_destroy(&t->io_mu);
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
    transport *t = transport_new(fd, o, err, errlen);
    if (!t || !t->ssl) return t;
    const char *name = host ? host : "localhost";
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    /* the certificate must name the host connected to: an IP address in its IP SANs, a name in its DNS SANs */
    int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name) == 1
                   : SSL_set_tlsext_host_name(t->ssl, name) == 1 && SSL_set1_host(t->ssl, name) == 1;
    int rc = ok ? tls_handshake(t, deadline_after(timeout), err, errlen) : tls_error(err, errlen, "host name");
    if (rc) {
        err_prefix(err, errlen, "%s:%d", name, port);
        transport_free(t);
        return NULL;
    }
    return t;
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

void transport_set_deadline(transport *t, double deadline_ms) {
    t->deadline = deadline_ms;
}

double transport_backlog_ms(transport *t) {
    pthread_mutex_lock(&t->mu);
    double left = t->count ? t->last_deliver - clock_now_ms() : 0;
    pthread_mutex_unlock(&t->mu);
    return left > 0 ? left : 0;
}

int transport_send(transport *t, const frame_msg *m, char *err, size_t errlen) {
    size_t size;
    int rc = frame_payload_size(m, &size, err, errlen);
    if (rc) return rc;
    size_t need = FRAME_HEADER_SIZE + size;
    double t0 = clock_now_ms();
    pthread_mutex_lock(&t->send_mu);
    /* The emulated delivery time first: a frame the link would deliver too late is refused before it costs
     * anything (an emulated 1 bit/s link must not pin memory and a thread for days). */
    link_pipe pipe = t->pipe; /* a copy: the estimate must not move the real pipe */
    double deliver = link_pipe_push(&pipe, clock_now_ms(), need, NULL);
    if (t->o.max_backlog_ms > 0 && m->type != FRAME_ERROR && deliver - clock_now_ms() > t->o.max_backlog_ms) {
        pthread_mutex_unlock(&t->send_mu);
        return err_set(err, errlen, FRAME_E_LIMIT,
                       "transport: a %zu-byte %s would take %.0f ms over the emulated link (limit %d ms)", need,
                       frame_type_name(m->type), deliver - clock_now_ms(), t->o.max_backlog_ms);
    }
    size_t charge = need > TRANSPORT_SMALL ? need : 0;
    if (transport_budget_take(t->o.budget, charge)) {
        pthread_mutex_unlock(&t->send_mu);
        return err_set(err, errlen, FRAME_E_LIMIT, "transport: a %zu-byte %s is over the memory budget (%zu bytes)",
                       need, frame_type_name(m->type), t->o.budget->cap);
    }
    pthread_mutex_lock(&t->mu);
    /* The queue drains at the emulated link's pace, and the sender thread fails a frame not written within
     * io_timeout_ms of being due, so this wait is bounded; cancel ends it sooner. */
    while (t->count == t->n_slots && !t->wstatus && !cancelled(t))
        cv_wait_until(&t->cv_space, &t->mu, t->o.cancel ? clock_now_ms() + CANCEL_MS : -1);
    rc = t->wstatus;
    if (rc) err_set(err, errlen, rc, "%s", t->werr);
    else if (t->count == t->n_slots) rc = err_set(err, errlen, DUET_EIO, "transport: cancelled");
    /* The slot past the queued ones is ours: the sender thread only touches queued slots. */
    slot *s = &t->slots[(t->head + t->count) % t->n_slots];
    pthread_mutex_unlock(&t->mu);
    double waited = clock_now_ms() - t0;
    if (!rc && need > s->cap) {
        /* small frames: a slot grows by doubling and keeps its buffer; large ones get exactly what they need,
         * released once written */
        size_t cap = need;
        if (need <= TRANSPORT_SMALL) {
            cap = s->cap ? s->cap : SLOT_MIN;
            while (cap < need) cap *= 2;
        }
        uint8_t *b = realloc(s->buf, cap);
        if (!b) rc = err_set(err, errlen, DUET_ENOMEM, "transport: no memory for a %zu-byte frame", need);
        else s->buf = b, s->cap = cap;
    }
    if (!rc) {
        frame_header h = {FRAME_MAGIC, FRAME_VERSION, m->type, 0, m->session, t->send_seq, (uint32_t)size};
        frame_header_encode(&h, s->buf);
        rc = frame_payload_encode(m, s->buf + FRAME_HEADER_SIZE, size, err, errlen);
    }
    if (rc) {
        transport_budget_give(t->o.budget, charge);
        if (s->cap > TRANSPORT_SMALL) slot_release(t, s);
    } else {
        s->charged = charge;
        s->len = need;
        s->off = 0;
        /* handed over now that it is encoded (the estimate above only guarded the backlog limit) */
        deliver = link_pipe_push(&t->pipe, clock_now_ms(), need, NULL);
        s->deliver_ms = deliver;
        t->send_seq++;
    }
    pthread_mutex_lock(&t->mu);
    t->wait_ms += waited;
    if (!rc) t->last_deliver = deliver;
    if (!rc && t->count == 0 && !t->wstatus && s->deliver_ms <= clock_now_ms()) {
        /* Due now and the sender thread is idle (nothing queued; send_mu keeps other producers out): write
         * what the socket takes at once, which saves two thread handoffs per round trip. */
        pthread_mutex_unlock(&t->mu);
        short ev;
        ssize_t w = io_write(t, s->buf, s->len, &ev, NULL, 0);
        pthread_mutex_lock(&t->mu);
        if (w > 0) s->off = (size_t)w;
        if (s->off == s->len) {
            t->bytes_sent += s->len;
            t->frames_sent++;
            t->sent_since_recv = 1;
            slot_release(t, s);
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

int transport_send_last(transport *t, const frame_msg *m, char *err, size_t errlen) {
    pthread_mutex_lock(&t->send_mu);
    pthread_mutex_lock(&t->mu);
    /* the head may be on its way to the socket: it stays; the frames behind it go, and m takes the sequence
     * number of the first of them, so the peer sees no gap */
    for (int k = t->count - 1; k >= 1; k--) {
        slot *q = &t->slots[(t->head + k) % t->n_slots];
        const uint8_t *h = q->buf + 12;
        t->send_seq = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
        slot_release(t, q);
        t->count--;
    }
    pthread_mutex_unlock(&t->mu);
    pthread_mutex_unlock(&t->send_mu);
    return transport_send(t, m, err, errlen);
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
    if (t->rcap > TRANSPORT_SMALL) { /* the last frame was large: the buffer does not stay that size */
        free(t->rbuf);
        t->rbuf = NULL;
        t->rcap = 0;
        transport_budget_give(t->o.budget, t->rcharged);
        t->rcharged = 0;
    }
    /* Nothing of a frame yet: wait up to timeout_ms for its first bytes. */
    uint8_t hb[FRAME_HEADER_SIZE];
    size_t got = 0;
    double first = earlier(deadline_after(timeout_ms), t->deadline);
    for (;;) {
        short ev = 0;
        ssize_t r = io_read(t, hb, sizeof hb, &ev, err, errlen);
        if (r > 0) {
            got = (size_t)r;
            break;
        }
        if (r == FRAME_E_TRUNCATED)
            return recv_fail(t, err_set(err, errlen, TRANSPORT_CLOSED, "transport: peer closed the connection"), err);
        if (r < 0) return recv_fail(t, (int)r, err);
        int w = wait_io(t, ev, first, 1);
        if (w == 0)
            return err_set(err, errlen, TRANSPORT_TIMEOUT, "transport: nothing received within %d ms", timeout_ms);
        if (w < 0)
            return recv_fail(t, err_set(err, errlen, DUET_EIO, "transport: %s",
                                        w == WAIT_CANCELLED ? "cancelled" : "poll failed"), err);
    }
    /* The whole frame, header and payload, must arrive within io_timeout_ms of its first bytes: a peer that
     * trickles a byte at a time cannot hold the connection longer than that. */
    double whole = earlier(deadline_after(t->o.io_timeout_ms), t->deadline);
    size_t more;
    int rc = read_all(t, hb + got, sizeof hb - got, whole, &more, err, errlen);
    if (rc) {
        err_prefix(err, errlen, "in a frame header after %zu of %d bytes", got + more, FRAME_HEADER_SIZE);
        return recv_fail(t, rc, err);
    }
    frame_header h;
    rc = frame_header_decode(hb, sizeof hb, &t->o.limits, &h, err, errlen);
    if (rc) return recv_fail(t, rc, err);
    if (h.seq != t->recv_seq)
        return recv_fail(t, err_set(err, errlen, FRAME_E_SEQ, "transport: %s has sequence number %u, expected %u",
                                    frame_type_name(h.type), h.seq, t->recv_seq), err);
    if (h.len > t->rcap) {
        size_t charge = h.len > TRANSPORT_SMALL ? h.len : 0;
        if (transport_budget_take(t->o.budget, charge))
            return recv_fail(t, err_set(err, errlen, FRAME_E_LIMIT, "transport: a %u-byte %s is over the memory "
                                        "budget (%zu bytes)", h.len, frame_type_name(h.type), t->o.budget->cap), err);
        uint8_t *b = realloc(t->rbuf, h.len);
        if (!b) {
            transport_budget_give(t->o.budget, charge);
            return recv_fail(t, err_set(err, errlen, DUET_ENOMEM, "transport: no memory for %u bytes", h.len), err);
        }
        t->rbuf = b;
        t->rcap = h.len;
        transport_budget_give(t->o.budget, t->rcharged);
        t->rcharged = charge;
    }
    rc = read_all(t, t->rbuf, h.len, whole, &got, err, errlen);
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
    double deadline = deadline_after(timeout_ms);
    int rc;
    for (;;) {
        int left = timeout_ms < 0 ? -1 : ms_left(deadline);
        if ((rc = transport_recv(t, m, left, err, errlen))) return rc;
        if (m->type != FRAME_PING || type == FRAME_PING) break;
        frame_msg r = {.type = FRAME_PONG, .session = m->session}; /* PING is answered in every state */
        r.u.ping = (frame_ping){.stamp = m->u.ping.stamp, .pad = m->u.ping.reply_pad};
        if ((rc = transport_send(t, &r, err, errlen))) return rc;
    }
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
    link_params none = {0};
    transport_set_link(t, &none);
    int rc = transport_send(t, &m, err, errlen);
    transport_set_link(t, &want->link); /* after HELLO: the cloud's deadline for it is link-independent */
    if (timeout_ms >= 0) /* HELLO_OK travels over the emulated down link */
        timeout_ms += (int)link_worst_ms(&want->link, LINK_DOWN, FRAME_HEADER_SIZE + FRAME_HELLO_SIZE);
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

int transport_wire_bytes(const transport *t, uint64_t *sent, uint64_t *received) {
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(t->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) || len < offsetof(struct tcp_info, tcpi_bytes_received) + 8)
        return DUET_EUNSUPPORTED;
    *sent = ti.tcpi_bytes_acked;
    *received = ti.tcpi_bytes_received;
    return 0;
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
