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

/* ---- round trips ---- */

/* U-shape is one round trip per token; drafting needs fewer than tokens on every reference prompt. */
TEST(test_hat_fewer_round_trips_than_tokens) {
    char err[512];
    hcase c[MAX_CASES];
    REQUIRE(read_cases(c) == MAX_CASES);
    rig g;
    REQUIRE_MSG(rig_init(&g, 2, 1, err, sizeof err) == 0, "%s", err);
    remote_opts ro = ropts(g.addr, FRAME_ENC_F16);
    g.o.chunk = 0;
    for (int i = 0; i < MAX_CASES; i++) {
        mode_request rq = greedy(&c[i], c[i].n_out);
        metrics mt;
        g.o.draft = 0;
        REQUIRE_MSG(run_hat(&g, &ro, 0, &rq, &mt, err, sizeof err) == 0, "%s", err);
        CHECK_EQ_INT(mt.round_trips, mt.tokens);
        CHECK_EQ_INT(mt.cloud_requests, mt.tokens);
        metrics_free(&mt);
        g.o.draft = HAT_AUTO;
        REQUIRE_MSG(run_hat(&g, &ro, 1, &rq, &mt, err, sizeof err) == 0, "%s", err);
        CHECK_MSG(mt.round_trips < (uint64_t)mt.tokens, "prompt %d: %llu round trips for %d tokens", i,
                  (unsigned long long)mt.round_trips, mt.tokens);
        CHECK_EQ_INT(mt.round_trips, mt.rounds + 1); /* the prompt, then one per round */
        CHECK(mt.accepted > 0);
        metrics_free(&mt);
    }
    rig_free(&g);
}

/* ---- sampling with temperature keeps device mode's distribution ---- */

/* Chi-square statistic of two samples over the same categories (0..vocab-1), pooling rare ones; *df gets the
 * degrees of freedom. */
static double chi2_two_sample(const int *a, const int *b, int vocab, int *df) {
    double na = 0, nb = 0;
    for (int i = 0; i < vocab; i++) {
        na += a[i];
        nb += b[i];
    }
    double x = 0, ra = 0, rb = 0; /* the pooled rare categories */
    int cats = 0;
    for (int i = 0; i <= vocab; i++) {
        double oa, ob;
        if (i < vocab) {
            if ((a[i] + b[i]) * fmin(na, nb) / (na + nb) < 5) {
                ra += a[i];
                rb += b[i];
                continue;
            }
            oa = a[i];
            ob = b[i];
        } else {
            if (ra + rb == 0) break;
            oa = ra;
            ob = rb;
        }
        double ea = (oa + ob) * na / (na + nb), eb = (oa + ob) * nb / (na + nb);
        x += (oa - ea) * (oa - ea) / ea + (ob - eb) * (ob - eb) / eb;
        cats++;
    }
    *df = cats - 1;
    return x;
}

/* The 99.9th percentile of chi-square with df degrees of freedom (Wilson-Hilferty). */
static double chi2_crit(int df) {
    double h = 2.0 / (9.0 * df);
    return df * pow(1 - h + 3.09 * sqrt(h), 3);
}

/* Samples the 2nd and 3rd tokens of a fixed prompt N times in device mode and in hat mode (k = 2, so both come
 * out of the speculative-sampling rule) and compares the distributions with a chi-square test at p = 0.001.
 * The same test tells temperature 1.0 from 0.8, so it would see a wrong acceptance rule. */
TEST(test_hat_temperature_same_distribution_as_device) {
    enum { N = 3000, TOK = 3 };
    char err[512];
    hcase c[MAX_CASES];
    REQUIRE(read_cases(c) == MAX_CASES);
    rig g;
    REQUIRE_MSG(rig_init(&g, 1, 1, err, sizeof err) == 0, "%s", err);
    int V = duet_model_config(g.full)->vocab_size;
    int *cnt = calloc((size_t)V * 6, sizeof(int)); /* [hat, device, device at 0.8][token 2, token 3][V] */
    REQUIRE(cnt);
    remote_opts ro = ropts(g.addr, FRAME_ENC_F32);
    g.o.draft = 2;
    g.o.chunk = 0;
    mode_request rq = {c[0].prompt, c[0].n_prompt, TOK, {.temperature = 1.0f, .top_k = 0, .top_p = 1, .seed = 1}, -1};
    remote r;
    REQUIRE_MSG(remote_open_range(&r, g.dev, &ro, FRAME_MODE_HAT, 1, duet_model_config(g.full)->n_layers - 1,
                                  c[0].n_prompt + TOK, &rq.sampling, err, sizeof err) == 0,
                "%s", err);
    uint64_t drafted = 0, accepted = 0;
    for (int i = 0; i < N; i++) { /* one session: each request's prompt upload at 0 rolls the cloud back */
        metrics mt;
        rq.sampling.seed = 1000 + (uint64_t)i;
        metrics_start(&mt, "hat");
        int rc = mode_hat_run(g.dev, g.pool, &r, &g.o, NULL, &rq, NULL, NULL, &mt, err, sizeof err);
        REQUIRE_MSG(rc == 0 && mt.tokens == TOK, "%s", err);
        drafted += mt.drafted;
        accepted += mt.accepted;
        cnt[0 * V + mt.ids[1]]++;
        cnt[1 * V + mt.ids[2]]++;
        metrics_free(&mt);
        for (int d = 0; d < (i % 3 ? 1 : 2); d++) { /* the control on a third of the seeds */
            mode_request dq = rq;
            dq.sampling.temperature = d ? 0.8f : 1.0f;
            metrics_start(&mt, "device");
            REQUIRE(mode_device_run(g.full, g.pool, &dq, NULL, NULL, &mt, err, sizeof err) == 0);
            cnt[(2 + 2 * d) * V + mt.ids[1]]++;
            cnt[(3 + 2 * d) * V + mt.ids[2]]++;
            metrics_free(&mt);
        }
    }
    CHECK(remote_close(&r, err, sizeof err) == 0);
    CHECK_MSG(accepted > 0 && accepted < drafted, "accepted %llu of %llu drafts: the rule was not exercised",
              (unsigned long long)accepted, (unsigned long long)drafted);
    for (int t = 0; t < 2; t++) {
        int df;
        double x = chi2_two_sample(cnt + (size_t)t * V, cnt + (size_t)(2 + t) * V, V, &df);
        CHECK_MSG(df >= 5 && x < chi2_crit(df), "token %d: chi2 %.1f with %d df (critical %.1f)", t + 2, x, df,
                  chi2_crit(df));
        double y = chi2_two_sample(cnt + (size_t)(2 + t) * V, cnt + (size_t)(4 + t) * V, V, &df);
        CHECK_MSG(y > chi2_crit(df), "token %d: temperature 0.8 not told from 1.0 (chi2 %.1f, %d df)", t + 2, y, df);
    }
    free(cnt);
    rig_free(&g);
}

/* ---- the arithmetic ---- */

/* Draft d ~ q, then the rule: the emitted token is distributed as p, for p and q far apart. */
TEST(test_hat_spec_rule_keeps_target_distribution) {
    char err[256];
    enum { V = 5, N = 400000 };
    duet_sampling s = {.temperature = 1, .top_p = 1, .seed = 7};
    spec sp;
    REQUIRE(spec_init(&sp, &s, V, err, sizeof err) == 0);
    float p[V] = {0.5f, 0.2f, 0.15f, 0.1f, 0.05f}, q[V] = {0.05f, 0.1f, 0.15f, 0.2f, 0.5f};
    int cnt[V] = {0}, acc = 0;
    for (int i = 0; i < N; i++) {
        int d = spec_draw(&sp, q), out;
        acc += spec_verify(&sp, p, q, d, &out);
        cnt[out]++;
    }
    for (int i = 0; i < V; i++) CHECK_NEAR((double)cnt[i] / N, p[i], 0.004);
    double want_acc = 0; /* sum min(p, q) */
    for (int i = 0; i < V; i++) want_acc += fmin(p[i], q[i]);
    CHECK_NEAR((double)acc / N, want_acc, 0.004);
    spec_free(&sp);
}

/* spec_probs is the distribution duet_sample draws from, with top-k and top-p. */
TEST(test_hat_spec_probs_match_sampler) {
    char err[256];
    enum { V = 12, N = 200000 };
    float logits[V] = {1.0f, 2.5f, 0.3f, 2.5f, -1, 0.7f, 1.9f, 0.1f, -0.5f, 1.2f, 3.0f, 0.0f};
    duet_sampling cfgs[3] = {{.temperature = 0.9f, .top_p = 1, .seed = 3},
                             {.temperature = 1.3f, .top_k = 4, .top_p = 1, .seed = 4},
                             {.temperature = 1.0f, .top_p = 0.8f, .seed = 5}};
    for (int c = 0; c < 3; c++) {
        spec sp;
        REQUIRE(spec_init(&sp, &cfgs[c], V, err, sizeof err) == 0);
        float p[V], lg[V];
        spec_probs(&sp, logits, p);
        duet_sampler *sm = duet_sampler_init(&cfgs[c], V, err, sizeof err);
        REQUIRE(sm);
        int cnt[V] = {0};
        for (int i = 0; i < N; i++) {
            memcpy(lg, logits, sizeof lg);
            cnt[duet_sample(sm, lg)]++;
        }
        double sum = 0;
        for (int i = 0; i < V; i++) {
            sum += p[i];
            CHECK_MSG(fabs((double)cnt[i] / N - p[i]) < 0.005, "config %d token %d: sampled %.4f, spec %.4f", c, i,
                      (double)cnt[i] / N, p[i]);
        }
        CHECK_NEAR(sum, 1.0, 1e-5);
        duet_sampler_free(sm);
        spec_free(&sp);
    }
}

TEST(test_hat_draft_rule) {
    spec_round_costs c = {.draft_ms = 1, .in_ms = 0.3, .ver0_ms = 0.5, .ver1_ms = 0.2, .wait0_ms = 80, .wait1_ms = 0.1};
    CHECK_NEAR(spec_expected_tokens(0.5, 2), 1.75, 1e-12);
    CHECK_EQ_INT(spec_pick_draft(&c, 0.0, 8), 0);  /* acceptance collapsed: U-shape */
    CHECK_EQ_INT(spec_pick_draft(&c, 0.95, 8), 8); /* long round trips, good drafts: draft all allowed */
    int prev = 0;
    for (double a = 0; a <= 0.99; a += 0.03) { /* more acceptance never means shorter drafts */
        int k = spec_pick_draft(&c, a, 16);
        CHECK(k >= prev);
        prev = k;
    }
    spec_round_costs lan = c;
    lan.wait0_ms = 0.2; /* a near link: drafting costs more than it saves unless acceptance is high */
    lan.draft_ms = 0.3;
    CHECK_EQ_INT(spec_pick_draft(&lan, 0.2, 8), 0);
    CHECK(spec_pick_draft(&lan, 0.99, 8) > 0);
    CHECK(spec_pick_draft(&lan, 0.9, 8) < spec_pick_draft(&c, 0.9, 8));
}

TEST(test_hat_chunk_model) {
    spec_prefill_costs one = {.in0_ms = 1, .in1_ms = 0.5, .out0_ms = 1, .out1_ms = 0.2, .cloud0_ms = 2,
                              .cloud1_ms = 0.1, .up_row_ms = 0.3, .down_row_ms = 0.1, .rtt_ms = 40};
    /* one chunk is the sum of the stages */
    CHECK_NEAR(spec_prefill_ms(&one, 100, 100), 1 + 50 + 30 + 40 + 2 + 10 + 10 + 1 + 20, 1e-9);
    /* slow device, slow uplink: pipelining pays, and the pick is the best of every fixed size */
    int n = 512, best = spec_pick_chunk(&one, n);
    CHECK(best > 1 && best < n);
    double fastest = INFINITY; /* the pick is within the slack of the fastest size, and no larger size is */
    for (int ch = 1; ch <= n; ch++) fastest = fmin(fastest, spec_prefill_ms(&one, n, ch));
    CHECK(spec_prefill_ms(&one, n, best) <= (1 + SPEC_CHUNK_SLACK) * fastest);
    for (int ch = best + 1; ch <= n; ch++) CHECK(spec_prefill_ms(&one, n, ch) > (1 + SPEC_CHUNK_SLACK) * fastest);
    CHECK(spec_prefill_ms(&one, n, best) < 0.8 * spec_prefill_ms(&one, n, n));
    /* a big cost per chunk and nothing to overlap: one chunk */
    spec_prefill_costs fixed = {.in0_ms = 5, .cloud0_ms = 5, .out0_ms = 5, .rtt_ms = 1};
    CHECK_EQ_INT(spec_pick_chunk(&fixed, 300), 300);
}

/* ---- bad input ---- */

TEST(test_hat_bad_layers_and_adapters) {
    char err[512];
    rig g;
    REQUIRE_MSG(rig_init(&g, 1, 1, err, sizeof err) == 0, "%s", err);
    int ab[][2] = {{0, 1}, {1, 0}, {2, 3}, {4, 1}, {3, 1}}; /* the last leaves [3,4) but the device lacks layer 1..2 */
    const char *msg[] = {"A >= 1", "M >= 1", "A + M < 5", "A + M < 5", "on the device"};
    for (int i = 0; i < 5; i++) {
        hat_opts o = g.o;
        o.input_layers = ab[i][0];
        o.output_layers = ab[i][1];
        err[0] = 0;
        CHECK(hat_check(g.dev, &o, err, sizeof err) != 0);
        CHECK_MSG(strstr(err, msg[i]), "A=%d M=%d: %s", ab[i][0], ab[i][1], err);
    }
    /* the shipped calibration of stories260K has every map a:b; take it apart to make wrong ones */
    calib *cal = calib_load("models/stories260K-calib.gguf", err, sizeof err);
    REQUIRE_MSG(cal, "%s", err);
    g.o.calib = cal;
    CHECK_MSG(hat_check(g.dev, &g.o, err, sizeof err) == 0, "%s", err);
    calib other = *cal;
    other.fingerprint ^= 1; /* fitted on another model */
    calib narrow = *cal;
    narrow.dim = 32;
    calib few = *cal; /* no map 1:4 */
    few.n_maps = 0;
    for (int i = 0; i < cal->n_maps; i++)
        if (!(cal->map[i].a == 1 && cal->map[i].b == 4)) few.map[few.n_maps++] = cal->map[i];
    const calib *bad[3] = {&other, &narrow, &few};
    const char *amsg[3] = {"another model", "width 32", "map 1:4"};
    for (int i = 0; i < 3; i++) {
        g.o.calib = bad[i];
        err[0] = 0;
        CHECK(hat_check(g.dev, &g.o, err, sizeof err) != 0);
        CHECK_MSG(strstr(err, amsg[i]), "adapter %d: %s", i, err);
    }
    calib_free(cal);
    rig_free(&g);
}

enum { HFAKE_WIDTH, HFAKE_POS, HFAKE_NAN, HFAKE_TOKENS, HFAKE_SILENT, HFAKE_DROP };

typedef struct hfake {
    transport_listener *l;
    int act, dim;
    frame_hello have;      /* the part it claims: the middle [1,4) of the model */
    int got_error, closed; /* what the device did after the bad answer */
} hfake;

/* Handshakes like a cloud holding the middle, then answers the first REQUEST wrongly and watches the device. */
static void *hfake_main(void *arg) {
    hfake *f = arg;
    transport_opts o = transport_opts_default(LINK_DOWN);
    transport *t = NULL;
    frame_msg m;
    if (transport_accept(f->l, &o, 5000, &t, NULL, 0)) return NULL;
    if (transport_hello_answer(t, &f->have, NULL, 5000, NULL, 0)) {
        transport_free(t);
        return NULL;
    }
    if (transport_expect(t, FRAME_OPEN, &m, 5000, NULL, 0) == 0) {
        uint32_t n_ctx = m.u.open.n_ctx;
        m = (frame_msg){.type = FRAME_OPENED, .session = 3};
        m.u.opened.n_ctx = n_ctx;
        transport_send(t, &m, NULL, 0);
    }
    while (transport_recv(t, &m, 5000, NULL, 0) == 0 && m.type != FRAME_REQUEST) {}
    frame_request q = m.u.request;
    float *rows = calloc((size_t)q.count * (f->dim + 1), sizeof(float));
    if (f->act == HFAKE_NAN) rows[1] = NAN;
    m = (frame_msg){.type = FRAME_HIDDEN, .session = 3};
    m.u.rows = (frame_rows){.pos0 = q.pos + (f->act == HFAKE_POS), .n = q.count,
                            .dim = (uint32_t)(f->dim + (f->act == HFAKE_WIDTH)), .enc = FRAME_ENC_F32, .x = rows};
    int32_t id = 5;
    if (f->act == HFAKE_TOKENS) {
        m.type = FRAME_TOKENS;
        m.u.tokens = (frame_tokens){.pos0 = q.pos, .n = 1, .ids = &id};
    }
    if (f->act != HFAKE_SILENT && f->act != HFAKE_DROP) transport_send(t, &m, NULL, 0);
    if (f->act != HFAKE_DROP) {
        int rc;
        while ((rc = transport_recv(t, &m, 5000, NULL, 0)) == 0)
            if (m.type == FRAME_ERROR) f->got_error = 1;
        f->closed = rc == TRANSPORT_CLOSED;
    }
    free(rows);
    transport_flush(t, 1000, NULL, 0);
    transport_free(t);
    return NULL;
}

/* A cloud that answers the wrong width, position, a non-finite row, tokens, nothing, or hangs up: a clear error,
 * no hang, and for a bad answer an ERROR frame to the cloud before the device closes the connection. */
TEST(test_hat_bad_cloud_answers) {
    char err[512];
    hcase c[MAX_CASES];
    REQUIRE(read_cases(c) == MAX_CASES);
    rig g;
    REQUIRE_MSG(rig_init(&g, 1, 1, err, sizeof err) == 0, "%s", err);
    struct { int act; const char *msg; int tells; } cases[] = {
        {HFAKE_WIDTH, "65 wide, this model's are 64 wide", 1},
        {HFAKE_POS, "asked 5 at 0", 1},
        {HFAKE_NAN, "not finite", 1},
        {HFAKE_TOKENS, "TOKENS", 0},
        {HFAKE_SILENT, "no answer within", 0},
        {HFAKE_DROP, "closed the connection", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hfake f = {.l = transport_listen("127.0.0.1", 0, err, sizeof err), .act = cases[i].act, .dim = 64};
        f.have = (frame_hello){.fingerprint = duet_model_fingerprint(g.dev), .dim = 64, .layer_a = 1, .layer_b = 4,
                               .version = FRAME_VERSION, .encodings = FRAME_ENC_ALL};
        REQUIRE(f.l);
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, hfake_main, &f) == 0);
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", transport_listener_port(f.l));
        remote_opts ro = ropts(addr, FRAME_ENC_F32);
        ro.timeout_ms = 500;
        g.o.chunk = 0;
        mode_request rq = greedy(&c[0], 4);
        metrics mt;
        err[0] = 0;
        int rc = run_hat(&g, &ro, 0, &rq, &mt, err, sizeof err); /* frees the connection on failure */
        pthread_join(th, NULL);
        CHECK_MSG(rc != 0, "case %zu: no error", i);
        CHECK_MSG(strstr(err, cases[i].msg) != NULL, "case %zu: %s", i, err);
        if (cases[i].tells) CHECK_MSG(f.got_error && f.closed, "case %zu: error %d closed %d", i, f.got_error, f.closed);
        else if (cases[i].act != HFAKE_DROP) CHECK_MSG(f.closed, "case %zu: not closed", i);
        metrics_free(&mt);
        transport_listener_free(f.l);
    }
    rig_free(&g);
}

/* ---- the CLI ---- */

TEST(test_hat_cli) {
    int st;
    char *out = test_run_cli("run --mode hat -m " MODEL " -p 'Once upon a time' -n 48 --input-layers 2 --output-layers 1 "
                             "--hidden-enc fp32 --link lan --compare --json",
                             &st, 0);
    REQUIRE(out);
    CHECK_MSG(st == 0, "%s", out);
    char err[256];
    json *doc = json_parse(out, strlen(out), err, sizeof err);
    REQUIRE_MSG(doc, "not JSON (%s): %s", err, out);
    const json_val *r = json_root(doc);
    CHECK_EQ_INT(json_num(json_get(r, "tokens")), 48);
    CHECK_NEAR(json_num(json_get(json_get(r, "fidelity"), "exact_match_rate")), 1.0, 0);
    CHECK(json_num(json_get(r, "rounds")) >= 1);
    CHECK(json_num(json_get(r, "round_trips")) < 48);
    CHECK(json_num(json_get(r, "acceptance_rate")) > 0);
    CHECK(json_get(r, "draft_len_mean") && json_get(r, "accepted_per_round"));
    json_free(doc);
    free(out);
    out = test_run_cli("run --mode hat -m " MODEL " -p 'Once upon a time' -n 24 --draft 0 --chunk 2 "
                       "--calib models/stories260K-calib.gguf",
                       &st, 0);
    REQUIRE(out);
    const char *want = "Once upon a time, there was a little girl named Lily.";
    CHECK_MSG(st == 0 && !strncmp(out, want, strlen(want)), "%s", out);
    free(out);

    /* usage errors and failures of --mode hat are rows of test_modes_cli_errors */
}

/* The calibrated adapter (the shipped map 1:4 of stories260K) drafts better than the identity, and the output is
 * still device-only's: the adapter only ever shapes drafts. */
TEST(test_hat_calibrated_adapter_raises_acceptance) {
    char err[512];
    hcase c[MAX_CASES];
    REQUIRE(read_cases(c) == MAX_CASES);
    rig g;
    REQUIRE_MSG(rig_init(&g, 1, 1, err, sizeof err) == 0, "%s", err);
    calib *cal = calib_load("models/stories260K-calib.gguf", err, sizeof err);
    REQUIRE_MSG(cal, "%s", err);
    remote_opts ro = ropts(g.addr, FRAME_ENC_F32);
    g.o.draft = 4;
    uint64_t acc[2] = {0, 0}, drafted[2] = {0, 0};
    for (int a = 0; a < 2; a++) {
        g.o.calib = a ? cal : NULL;
        for (int i = 0; i < MAX_CASES; i++) {
            mode_request rq = greedy(&c[i], c[i].n_out);
            metrics mt;
            REQUIRE_MSG(run_hat(&g, &ro, 0, &rq, &mt, err, sizeof err) == 0, "%s", err);
            CHECK_MSG(same(&mt, c[i].out, c[i].n_out), "%s adapter, prompt %d", a ? "calibrated" : "identity", i);
            acc[a] += mt.accepted;
            drafted[a] += mt.drafted;
            metrics_free(&mt);
        }
    }
    CHECK_MSG(acc[1] * drafted[0] > 2 * acc[0] * drafted[1], "acceptance: identity %llu/%llu, calibrated %llu/%llu",
              (unsigned long long)acc[0], (unsigned long long)drafted[0], (unsigned long long)acc[1],
              (unsigned long long)drafted[1]);
    calib_free(cal);
    rig_free(&g);
}

/* A cloud that answers nothing until every chunk of the prompt has arrived: only a device that sends chunk i+1
 * before it has the answer to chunk i gets through (a stop-and-wait device would time out). */
typedef struct pipe_cloud {
    transport_listener *l;
    frame_hello have;
    int dim, requests, closed_ok;
} pipe_cloud;

static void *pipe_main(void *arg) {
    pipe_cloud *f = arg;
    transport_opts o = transport_opts_default(LINK_DOWN);
    transport *t = NULL;
    frame_msg m;
    if (transport_accept(f->l, &o, 5000, &t, NULL, 0)) return NULL;
    if (transport_hello_answer(t, &f->have, NULL, 5000, NULL, 0) == 0 &&
        transport_expect(t, FRAME_OPEN, &m, 5000, NULL, 0) == 0) {
        uint32_t n_ctx = m.u.open.n_ctx;
        m = (frame_msg){.type = FRAME_OPENED, .session = 9};
        m.u.opened.n_ctx = n_ctx;
        transport_send(t, &m, NULL, 0);
        frame_request q[8];
        while (f->requests < 3 && transport_recv(t, &m, 5000, NULL, 0) == 0)
            if (m.type == FRAME_REQUEST) q[f->requests++] = m.u.request;
        float rows[4 * 64] = {0};
        for (int i = 0; i < f->requests; i++) {
            m = (frame_msg){.type = FRAME_HIDDEN, .session = 9};
            m.u.rows = (frame_rows){.pos0 = q[i].pos, .n = q[i].count, .dim = (uint32_t)f->dim, .enc = FRAME_ENC_F32,
                                    .x = rows};
            transport_send(t, &m, NULL, 0);
        }
        if (transport_expect(t, FRAME_CLOSE, &m, 5000, NULL, 0) == 0) {
            m = (frame_msg){.type = FRAME_CLOSE, .session = 9};
            f->closed_ok = transport_send(t, &m, NULL, 0) == 0;
        }
    }
    transport_flush(t, 1000, NULL, 0);
    transport_free(t);
    return NULL;
}

TEST(test_hat_prompt_chunks_are_pipelined) {
    char err[512];
    hcase c[MAX_CASES];
    REQUIRE(read_cases(c) == MAX_CASES);
    REQUIRE(c[0].n_prompt == 5);
    rig g;
    REQUIRE_MSG(rig_init(&g, 1, 1, err, sizeof err) == 0, "%s", err);
    pipe_cloud f = {.l = transport_listen("127.0.0.1", 0, err, sizeof err), .dim = 64};
    REQUIRE(f.l);
    f.have = (frame_hello){.fingerprint = duet_model_fingerprint(g.dev), .dim = 64, .layer_a = 1, .layer_b = 4,
                           .version = FRAME_VERSION, .encodings = FRAME_ENC_ALL};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, pipe_main, &f) == 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", transport_listener_port(f.l));
    remote_opts ro = ropts(addr, FRAME_ENC_F32);
    ro.timeout_ms = 3000;
    g.o.chunk = 2; /* 5 positions: chunks of 2, 2, 1 */
    mode_request rq = greedy(&c[0], 1);
    metrics mt;
    int rc = run_hat(&g, &ro, 0, &rq, &mt, err, sizeof err);
    pthread_join(th, NULL);
    CHECK_MSG(rc == 0, "%s", err);
    CHECK_EQ_INT(f.requests, 3);
    CHECK(f.closed_ok);
    CHECK_EQ_INT(mt.prefill_chunk, 2);
    CHECK_EQ_INT(mt.cloud_requests, 3);
    metrics_free(&mt);
    transport_listener_free(f.l);
    rig_free(&g);
}
