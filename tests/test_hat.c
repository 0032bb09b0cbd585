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
