/* hat mode: token for token device-only's greedy output for every reference prompt, draft length and chunk
 * size; only hidden states cross the link (a proxy captures every frame); fewer round trips than tokens; with
 * temperature the same distribution as device mode; the speculative-sampling rule and the cost models; bad
 * layers, adapters and cloud answers. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/json.h"
#include "modes/hat.h"
#include "test.h"

#define MODEL "models/stories260K.gguf"
#define MAX_CASES 6

typedef struct hcase {
    int prompt[64], n_prompt;
    int out[64], n_out;
} hcase;

/* The reference prompts and llama.cpp's greedy outputs for them (device mode gives the same, test_modes). */
static int read_cases(hcase *c) {
    char err[256], *text = test_read_file(TEST_DATA "/stories260K-greedy.jsonl", NULL);
    int n = 0;
    for (char *line = text, *nl; line && *line && n < MAX_CASES; line = nl + 1) {
        if (!(nl = strchr(line, '\n'))) break;
        json *doc = json_parse(line, (size_t)(nl - line), err, sizeof err);
        if (!doc) break;
        const json_val *ids[2] = {json_get(json_root(doc), "prompt_ids"), json_get(json_root(doc), "output_ids")};
        int *dst[2] = {c[n].prompt, c[n].out}, *len[2] = {&c[n].n_prompt, &c[n].n_out};
        for (int k = 0; k < 2; k++) {
            *len[k] = json_len(ids[k]) < 64 ? (int)json_len(ids[k]) : 64;
            for (int i = 0; i < *len[k]; i++) dst[k][i] = (int)json_num(json_at(ids[k], i));
        }
        json_free(doc);
        n++;
    }
    free(text);
    return n;
}

/* The full model (references), the device's part, and a cloud holding the middle on a loopback port. */
typedef struct rig {
    duet_model *full, *dev, *mid;
    duet_pool *pool;
    cloud_server *srv;
    char addr[64];
    hat_opts o;
} rig;

static int rig_init(rig *g, int A, int M, char *err, size_t errlen) {
    memset(g, 0, sizeof *g);
    if (!(g->full = duet_model_load(MODEL, NULL, 0, err, errlen)) || !(g->pool = duet_pool_init(1, err, errlen)))
        return -1;
    int L = duet_model_config(g->full)->n_layers;
    duet_part p = {.n_spans = 2, .span = {{0, A}, {L - M, L}}, .embed = true, .head = true};
    duet_part mid = {.n_spans = 1, .span = {{A, L - M}}};
    if (!(g->dev = duet_model_load(MODEL, &p, 0, err, errlen)) || !(g->mid = duet_model_load(MODEL, &mid, 0, err, errlen)))
        return -1;
    server_opts so = server_opts_default();
    so.host = "127.0.0.1";
    if (!(g->srv = server_init(g->mid, &so, err, errlen)) || server_start(g->srv, err, errlen)) return -1;
    snprintf(g->addr, sizeof g->addr, "127.0.0.1:%d", server_port(g->srv));
    g->o = hat_opts_default(L);
    g->o.input_layers = A;
    g->o.output_layers = M;
    return 0;
}

static void rig_free(rig *g) {
    if (g->srv) server_free(g->srv);
    duet_model_free(g->mid);
    duet_model_free(g->dev);
    duet_model_free(g->full);
    duet_pool_free(g->pool);
}

static remote_opts ropts(const char *cloud, int enc) {
    remote_opts o = remote_opts_default();
    o.model_path = MODEL;
    o.cloud = cloud;
    o.enc = enc;
    o.timeout_ms = 20000;
    return o;
}

/* One hat request over a fresh session (probed first when probe is set). */
static int run_hat(rig *g, const remote_opts *ro, int probe, const mode_request *rq, metrics *mt, char *err,
                   size_t errlen) {
    remote r;
    hat_costs hc;
    int L = duet_model_config(g->dev)->n_layers;
    metrics_start(mt, "hat");
    int rc = remote_open_range(&r, g->dev, ro, FRAME_MODE_HAT, g->o.input_layers, L - g->o.output_layers,
                               rq->n_prompt + rq->max_tokens, &rq->sampling, err, errlen);
    if (!rc && probe) rc = hat_probe(g->dev, g->pool, &r, &g->o, &hc, err, errlen);
    if (!rc) {
        metrics_start(mt, "hat");
        rc = mode_hat_run(g->dev, g->pool, &r, &g->o, probe ? &hc : NULL, rq, NULL, NULL, mt, err, errlen);
    }
    if (!rc) return remote_close(&r, err, errlen);
    remote_free(&r);
    return rc;
}

static mode_request greedy(const hcase *c, int n) {
    return (mode_request){c->prompt, c->n_prompt, n, {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1}, -1};
}

static int same(const metrics *mt, const int *want, int n) {
    if (mt->tokens != n) return 0;
    for (int i = 0; i < n; i++)
        if (mt->ids[i] != want[i]) return 0;
    return 1;
}

TEST(test_hat_greedy_equals_device_every_k) {
    char err[512];
    hcase c[MAX_CASES];
    REQUIRE(read_cases(c) == MAX_CASES);
    int splits[3][2] = {{1, 1}, {2, 2}, {1, 3}}, drafts[4] = {0, 1, 4, HAT_AUTO};
    for (int s = 0; s < 3; s++) {
        rig g;
        REQUIRE_MSG(rig_init(&g, splits[s][0], splits[s][1], err, sizeof err) == 0, "%s", err);
        remote_opts ro = ropts(g.addr, FRAME_ENC_F32);
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < MAX_CASES; i++) {
                g.o.draft = drafts[k];
                g.o.chunk = i % 3 == 0 ? HAT_AUTO : i % 3 == 1 ? 0 : 2; /* chunking must not change the output */
                mode_request rq = greedy(&c[i], c[i].n_out);
                metrics mt;
                int rc = run_hat(&g, &ro, k == 3, &rq, &mt, err, sizeof err);
                CHECK_MSG(rc == 0, "A=%d M=%d k=%d: %s", splits[s][0], splits[s][1], drafts[k], err);
                CHECK_MSG(same(&mt, c[i].out, c[i].n_out), "A=%d M=%d k=%d prompt %d: differs from device-only",
                          splits[s][0], splits[s][1], drafts[k], i);
                if (drafts[k] == 0) { /* U-shape: one round per token after the first */
                    CHECK_EQ_INT(mt.drafted, 0);
                    CHECK_EQ_INT(mt.rounds, mt.tokens - 1);
                } else if (drafts[k] > 0) {
                    CHECK(mt.drafted > 0 && mt.drafted <= (uint64_t)drafts[k] * mt.rounds);
                }
                CHECK(mt.accepted <= mt.drafted);
                metrics_free(&mt);
            }
        rig_free(&g);
    }
}

/* ---- privacy: a proxy between device and cloud decodes every frame both ways ---- */

#define CAP_POS 256

typedef struct capture {
    int lfd, cloud_port, dim;
    int types_up[16], types_down[16];  /* frames seen by type */
    int bad;                            /* a frame that did not decode */
    frame_hello hello;
    int want_other;                     /* REQUESTs that asked for anything but HIDDEN */
    float *rows[2];                     /* [CAP_POS][dim] the last row seen per position: [0] up, [1] down */
    int seen[2][CAP_POS];
} capture;

typedef struct dirbuf { uint8_t *b; size_t n, cap; } dirbuf;

static void take_frames(capture *cp, dirbuf *d, int down) {
    frame_limits lim = frame_limits_default();
    for (;;) {
        if (d->n < FRAME_HEADER_SIZE) return;
        uint32_t len;
        memcpy(&len, d->b + 16, 4);
        size_t total = FRAME_HEADER_SIZE + (size_t)len;
        if (d->n < total) return;
        frame_header h;
        frame_msg m;
        if (frame_decode(d->b, total, &lim, &h, &m, NULL, 0)) {
            cp->bad++;
        } else {
            (down ? cp->types_down : cp->types_up)[m.type & 15]++;
            if (m.type == FRAME_HELLO) cp->hello = m.u.hello;
            if (m.type == FRAME_REQUEST && m.u.request.want != FRAME_WANT_HIDDEN) cp->want_other++;
            if ((m.type == FRAME_UPLOAD || m.type == FRAME_HIDDEN) && m.u.rows.dim == (uint32_t)cp->dim &&
                m.u.rows.pos0 + m.u.rows.n <= CAP_POS) {
                float *x = malloc(sizeof(float) * m.u.rows.n * cp->dim);
                frame_rows_get(&m.u.rows, x);
                memcpy(cp->rows[down] + (size_t)m.u.rows.pos0 * cp->dim, x, sizeof(float) * m.u.rows.n * cp->dim);
                for (uint32_t i = 0; i < m.u.rows.n; i++) cp->seen[down][m.u.rows.pos0 + i] = 1;
                free(x);
            }
        }
        memmove(d->b, d->b + total, d->n - total);
        d->n -= total;
    }
}

static void *capture_main(void *arg) {
    capture *cp = arg;
    int dev = accept(cp->lfd, NULL, NULL);
    int cl = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cp->cloud_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (dev < 0 || cl < 0 || connect(cl, (struct sockaddr *)&sa, sizeof sa)) {
        cp->bad++;
        return NULL;
    }
    dirbuf d[2] = {{0}, {0}};
    int fds[2] = {dev, cl};
    for (int open_ = 1; open_;) {
        struct pollfd p[2] = {{dev, POLLIN, 0}, {cl, POLLIN, 0}};
        if (poll(p, 2, 10000) <= 0) break;
        for (int s = 0; s < 2 && open_; s++) {
            if (!(p[s].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            uint8_t buf[65536];
            ssize_t n = read(fds[s], buf, sizeof buf);
            if (n <= 0) {
                open_ = 0;
                break;
            }
            for (ssize_t w = 0, k; w < n; w += k)
                if ((k = write(fds[1 - s], buf + w, (size_t)(n - w))) <= 0) {
                    open_ = 0;
                    break;
                }
            if (d[s].n + (size_t)n > d[s].cap) {
                d[s].cap = (d[s].n + (size_t)n) * 2;
                d[s].b = realloc(d[s].b, d[s].cap);
            }
            memcpy(d[s].b + d[s].n, buf, (size_t)n);
            d[s].n += (size_t)n;
            take_frames(cp, &d[s], s);
        }
    }
    close(dev);
    close(cl);
    free(d[0].b);
    free(d[1].b);
    return NULL;
}

/* Every frame of a probed hat run with drafting: only HELLO, OPEN, UPLOAD, REQUEST (for HIDDEN), CLOSE go up;
 * only HELLO_OK, OPENED, HIDDEN, CLOSE come down; the rows that went up are h_A of the final sequence and the
 * rows that came down its h_(L-M), as the full model computes them. */
TEST(test_hat_privacy_only_hidden_states_cross) {
    char err[512];
    hcase c[MAX_CASES];
    REQUIRE(read_cases(c) == MAX_CASES);
    const int A = 2, M = 1;
    rig g;
    REQUIRE_MSG(rig_init(&g, A, M, err, sizeof err) == 0, "%s", err);
    const duet_config *cf = duet_model_config(g.full);
    int L = cf->n_layers, dim = cf->dim;
    capture cp = {.dim = dim, .cloud_port = server_port(g.srv)};
    cp.rows[0] = calloc((size_t)CAP_POS * dim, sizeof(float));
    cp.rows[1] = calloc((size_t)CAP_POS * dim, sizeof(float));
    cp.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    REQUIRE(cp.lfd >= 0 && bind(cp.lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(cp.lfd, 1) == 0 &&
            getsockname(cp.lfd, (struct sockaddr *)&sa, &sl) == 0);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, capture_main, &cp) == 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(sa.sin_port));
    remote_opts ro = ropts(addr, FRAME_ENC_F32);
    g.o.draft = 4;
    g.o.chunk = 2;
    const hcase *k = &c[0];
    mode_request rq = greedy(k, 40);
    metrics mt;
    int rc = run_hat(&g, &ro, 1, &rq, &mt, err, sizeof err);
    pthread_join(th, NULL);
    close(cp.lfd);
    CHECK_MSG(rc == 0, "%s", err);
    CHECK(same(&mt, k->out, 40));
    CHECK(mt.accepted > 0); /* drafts were verified, and rolled back where rejected */
    CHECK_EQ_INT(cp.bad, 0);
    for (int t = 1; t < 16; t++) {
        int up_ok = t == FRAME_HELLO || t == FRAME_OPEN || t == FRAME_UPLOAD || t == FRAME_REQUEST || t == FRAME_CLOSE;
        int down_ok = t == FRAME_HELLO_OK || t == FRAME_OPENED || t == FRAME_HIDDEN || t == FRAME_CLOSE;
        CHECK_MSG(up_ok || cp.types_up[t] == 0, "%d %s frames went up", cp.types_up[t], frame_type_name(t));
        CHECK_MSG(down_ok || cp.types_down[t] == 0, "%d %s frames came down", cp.types_down[t], frame_type_name(t));
    }
    CHECK_EQ_INT(cp.types_up[FRAME_PROMPT] + cp.types_down[FRAME_TOKENS], 0);
    CHECK(cp.types_up[FRAME_UPLOAD] > 0 && cp.types_down[FRAME_HIDDEN] == cp.types_up[FRAME_REQUEST]);
    CHECK_EQ_INT(cp.want_other, 0);
    CHECK_EQ_INT(cp.hello.layer_a, A);
    CHECK_EQ_INT(cp.hello.layer_b, L - M);
    CHECK_EQ_INT(cp.hello.part, 0); /* neither embedding nor head on the cloud */

    /* the final sequence through the full model: h_A and h_(L-M) of every position but the last */
    int n = k->n_prompt + 40 - 1, seq[128];
    memcpy(seq, k->prompt, sizeof(int) * (size_t)k->n_prompt);
    memcpy(seq + k->n_prompt, k->out, sizeof(int) * 39);
    duet_kv *kv = duet_kv_init(g.full, duet_model_part(g.full), n, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(g.full, n, g.pool, err, sizeof err);
    float *hA = malloc(sizeof(float) * (size_t)n * dim), *hB = malloc(sizeof(float) * (size_t)n * dim);
    REQUIRE(kv && ctx && hA && hB);
    REQUIRE(duet_embed(ctx, seq, n, hA, err, sizeof err) == 0 &&
            duet_forward(ctx, kv, 0, A, hA, n, 0, err, sizeof err) == 0);
    memcpy(hB, hA, sizeof(float) * (size_t)n * dim);
    REQUIRE(duet_forward(ctx, kv, A, L - M, hB, n, 0, err, sizeof err) == 0);
    double du = 0, dd = 0;
    for (int p = 0; p < n; p++) {
        CHECK_MSG(cp.seen[0][p] && cp.seen[1][p], "position %d never crossed", p);
        for (int j = 0; j < dim; j++) {
            du = fmax(du, fabs(cp.rows[0][(size_t)p * dim + j] - hA[(size_t)p * dim + j]));
            dd = fmax(dd, fabs(cp.rows[1][(size_t)p * dim + j] - hB[(size_t)p * dim + j]));
        }
    }
    CHECK_MSG(du <= 1e-4 && dd <= 1e-4, "uploaded rows differ from h_A by %g, downloaded from h_B by %g", du, dd);
    free(hA);
    free(hB);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    free(cp.rows[0]);
    free(cp.rows[1]);
    metrics_free(&mt);
    rig_free(&g);
}
