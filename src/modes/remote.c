#include "modes/remote.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/err.h"

remote_opts remote_opts_default(void) {
    remote_opts o;
    memset(&o, 0, sizeof o);
    o.cloud = "local";
    o.enc = FRAME_ENC_F16;
    o.device_slowdown = 1;
    o.cloud_threads = 1;
    o.timeout_ms = 30000;
    return o;
}

int remote_parse_addr(const char *spec, char *host, size_t cap, int *port, char *err, size_t errlen) {
    const char *colon = spec ? strrchr(spec, ':') : NULL;
    if (!colon || colon == spec || !colon[1])
        return err_set(err, errlen, DUET_EINVAL, "cloud address '%s' is not HOST:PORT (or 'local')", spec ? spec : "");
    const char *h = spec;
    size_t n = (size_t)(colon - spec);
    if (h[0] == '[' && n >= 2 && h[n - 1] == ']') { /* [::1]:7000 */
        h++;
        n -= 2;
    }
    if (n == 0 || n >= cap) return err_set(err, errlen, DUET_EINVAL, "cloud address '%s': bad host", spec);
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || p < 1 || p > 65535)
        return err_set(err, errlen, DUET_EINVAL, "cloud address '%s': port must be 1..65535", spec);
    memcpy(host, h, n);
    host[n] = 0;
    *port = (int)p;
    return DUET_OK;
}

int remote_parse_url(const char *spec, char *host, size_t cap, int *port, int *tls, char *err, size_t errlen) {
    int is_tls = spec && !strncmp(spec, "tls://", 6);
    if (tls) *tls = is_tls;
    return remote_parse_addr(is_tls ? spec + 6 : spec, host, cap, port, err, errlen);
}

/* Starts the in-process cloud holding exactly the part the device will ask for. */
static int start_local(remote *r, const remote_opts *o, const duet_part *part, char *err, size_t errlen) {
    if (!o->model_path) return err_set(err, errlen, DUET_EINVAL, "--cloud local needs the model's path");
    if (!(r->local_model = duet_model_load(o->model_path, part, o->load_flags, err, errlen))) return DUET_ERR;
    server_opts so = server_opts_default();
    so.host = "127.0.0.1";
    so.port = 0;
    so.threads = o->cloud_threads > 0 ? o->cloud_threads : 1;
    if (!(r->local = server_init(r->local_model, &so, err, errlen))) return DUET_ERR;
    int rc = server_start(r->local, err, errlen);
    if (rc) err_prefix(err, errlen, "local cloud");
    return rc;
}

/* The wait for an answer: the timeout, plus the emulated link's time for what is still queued up and for an
 * answer of reply_bytes coming down (so every link the CLI accepts works, however slow). */
static int reply_ms(remote *r, size_t reply_bytes) {
    double ms = r->timeout_ms + transport_backlog_ms(r->t) + link_worst_ms(&r->link, LINK_UP, FRAME_HEADER_SIZE) +
                link_worst_ms(&r->link, LINK_DOWN, FRAME_HEADER_SIZE + reply_bytes);
    return ms > 2e9 ? 2000000000 : (int)ms;
}

int remote_open(remote *r, duet_model *m, const remote_opts *o, int mode, int layer_a, int n_ctx,
                const duet_sampling *s, char *err, size_t errlen) {
    int L = duet_model_config(m)->n_layers;
    if (layer_a < 0 || layer_a >= L) {
        memset(r, 0, sizeof *r);
        return err_set(err, errlen, DUET_EINVAL, "split point %d is outside 0..%d", layer_a, L - 1);
    }
    return remote_open_range(r, m, o, mode, layer_a, L, n_ctx, s, err, errlen);
}

int remote_open_range(remote *r, duet_model *m, const remote_opts *o, int mode, int layer_a, int layer_b, int n_ctx,
                      const duet_sampling *s, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    const duet_config *c = duet_model_config(m);
    if (layer_a < 0 || layer_b <= layer_a || layer_b > c->n_layers)
        return err_set(err, errlen, DUET_EINVAL, "the cloud's layers [%d,%d) are not a non-empty range of 0..%d",
                       layer_a, layer_b, c->n_layers);
    int head = layer_b == c->n_layers; /* a middle part ends before the head and hands hidden states back */
    r->layer_a = layer_a;
    r->layer_b = layer_b;
    r->enc = o->enc;
    r->slowdown = o->device_slowdown;
    r->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 30000;
    r->link = o->link;
    r->fallback = o->fallback;
    r->model_path = o->model_path;
    r->load_flags = o->load_flags;

    duet_part cloud_part = {.n_spans = 1, .span = {{layer_a, layer_b}}, .embed = layer_a == 0, .head = head};
    char host[256];
    int port, rc, tls = 0;
    const char *where = o->cloud;
    if (!strcmp(o->cloud, "local")) {
        if ((rc = start_local(r, o, &cloud_part, err, errlen))) return rc;
        snprintf(host, sizeof host, "127.0.0.1");
        port = server_port(r->local);
        where = "the local cloud";
    } else if ((rc = remote_parse_url(o->cloud, host, sizeof host, &port, &tls, err, errlen))) {
        return rc;
    }
    if (tls && !o->tls_ca)
        return err_set(err, errlen, DUET_EINVAL, "cloud %s: tls:// needs the CA file that signed its certificate "
                       "(--tls-ca FILE)", o->cloud);
    if (tls && !(r->tls = transport_tls_client(o->tls_ca, err, errlen))) return DUET_EINVAL;

    transport_opts to = transport_opts_default(LINK_UP);
    to.io_timeout_ms = r->timeout_ms; /* no link yet: the handshake is not emulated (transport_hello) */
    to.tls = r->tls;
    if (!(r->t = transport_connect(host, port, &to, err, errlen))) {
        err_prefix(err, errlen, "cannot reach the cloud at %s", where);
        return DUET_EIO;
    }
    frame_hello want = {
        .fingerprint = duet_model_fingerprint(m),
        .link = o->link,
        .dim = (uint32_t)c->dim,
        .layer_a = (uint32_t)layer_a,
        .layer_b = (uint32_t)layer_b,
        .version = FRAME_VERSION,
        .part = (uint8_t)((head ? FRAME_PART_HEAD : 0) | (layer_a == 0 ? FRAME_PART_EMBED : 0)),
        .encodings = (uint8_t)(1u << o->enc),
    };
    if (o->token) { /* a cloud that requires a token reads AUTH before anything else */
        frame_msg a = {.type = FRAME_AUTH};
        a.u.auth = (frame_auth){.len = (uint32_t)o->token_len, .token = o->token};
        if ((rc = transport_send(r->t, &a, err, errlen))) return rc;
    }
    if ((rc = transport_hello(r->t, &want, NULL, r->timeout_ms, err, errlen))) {
        err_prefix(err, errlen, "handshake with the cloud at %s failed", where);
        return rc;
    }
    frame_msg msg = {.type = FRAME_OPEN};
    msg.u.open = (frame_open){.seed = s->seed, .n_ctx = (uint32_t)n_ctx, .mode = (uint32_t)mode,
                              .temperature = s->temperature, .top_p = s->top_p, .top_k = s->top_k};
    if ((rc = transport_send(r->t, &msg, err, errlen)) ||
        (rc = transport_expect(r->t, FRAME_OPENED, &msg, reply_ms(r, 0), err, errlen))) {
        err_prefix(err, errlen, "the cloud at %s did not open a session", where);
        return rc;
    }
    r->session = msg.session;
    r->opened = 1;
    r->n_ctx = (int)msg.u.opened.n_ctx;
    if (msg.u.opened.n_ctx < (uint32_t)n_ctx)
        return err_set(err, errlen, FRAME_E_LIMIT, "the cloud at %s grants %u positions, the request needs %d", where,
                       msg.u.opened.n_ctx, n_ctx);
    return DUET_OK;
}

int remote_close(remote *r, char *err, size_t errlen) {
    int rc = DUET_OK;
    if (r->opened) {
        frame_msg msg = {.type = FRAME_CLOSE, .session = r->session};
        if (!(rc = transport_send(r->t, &msg, err, errlen)))
            rc = transport_expect(r->t, FRAME_CLOSE, &msg, reply_ms(r, 0), err, errlen);
        if (!rc && msg.session != r->session)
            rc = err_set(err, errlen, FRAME_E_SESSION, "the cloud closed session %u, this one is %u", msg.session,
                         r->session);
        if (rc) err_prefix(err, errlen, "closing the session");
    }
    remote_free(r);
    return rc;
}

void remote_free(remote *r) {
    transport_free(r->t);
    transport_tls_free(r->tls);
    if (r->local) server_free(r->local);
    duet_model_free(r->local_model);
    memset(r, 0, sizeof *r);
}

void remote_begin(remote *r) { transport_stats_get(r->t, &r->base); }

void remote_end(remote *r, metrics *mt) {
    transport_stats now;
    transport_stats_get(r->t, &now);
    mt->bytes_up += now.bytes_up - r->base.bytes_up;
    mt->bytes_down += now.bytes_down - r->base.bytes_down;
    mt->round_trips += now.round_trips - r->base.round_trips;
    mt->comm_wait_ms += now.comm_wait_ms - r->base.comm_wait_ms;
}

int remote_recv_tokens(remote *r, frame_msg *msg, metrics *mt, char *err, size_t errlen) {
    int rc = transport_expect(r->t, FRAME_TOKENS, msg, reply_ms(r, 4096), err, errlen);
    if (!rc && msg->session != r->session)
        return err_set(err, errlen, FRAME_E_SESSION, "the cloud sent TOKENS for session %u, this one is %u",
                       msg->session, r->session);
    if (rc == TRANSPORT_TIMEOUT)
        return err_set(err, errlen, DUET_EIO, "the cloud sent no answer within %d ms", r->timeout_ms);
    if (rc == TRANSPORT_CLOSED) return err_set(err, errlen, DUET_EIO, "the cloud closed the connection");
    if (rc) {
        err_prefix(err, errlen, "waiting for tokens from the cloud");
        return rc;
    }
    mt->cloud_compute_ms += msg->u.tokens.compute_us / 1e3;
    return DUET_OK;
}

bool remote_lost(const remote *r, int rc) {
    /* local failures are not the cloud's: out of memory, bad arguments, a model that does not load */
    return r->fallback && r->t && rc != 0 && rc != DUET_ENOMEM && rc != DUET_EINVAL && rc != DUET_EUNSUPPORTED;
}

void remote_abandon(remote *r, metrics *mt) {
    mt->fallback_at = mt->tokens;
    remote_end(r, mt);
    remote_free(r);
}

double remote_device_step(double t0_ms, double slowdown) {
    double t = clock_now_ms() - t0_ms;
    if (slowdown > 1 && t > 0) {
        double extra = (slowdown - 1) * t;
        struct timespec ts = {(time_t)(extra / 1e3), (long)(fmod(extra, 1e3) * 1e6)};
        while (nanosleep(&ts, &ts) && errno == EINTR) {}
        return clock_now_ms() - t0_ms;
    }
    return t;
}
