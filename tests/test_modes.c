/* The baselines over the real protocol: device, cloud and split give llama.cpp's greedy tokens, the metrics
 * count what the transport carried, the link and the device slowdown show up, failures are clear, and one
 * cloud serves 16 devices at once. Every cloud here is an in-process server on a free loopback port. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "base/json.h"
#include "modes/mode.h"
#include "cases.h"
#include "test.h"

#define MODEL CASES_MODEL
#define N_CASES CASES_N

/* One request in cloud (a == 0) or split mode over a fresh session; m is the device's model. */
static int run_remote(duet_model *m, duet_pool *pool, const remote_opts *o, int a, const mode_request *rq,
                      metrics *mt, transport_stats *total, char *err, size_t errlen) {
    remote r;
    metrics_start(mt, a ? "split" : "cloud");
    int rc = remote_open(&r, m, o, a ? FRAME_MODE_SPLIT : FRAME_MODE_CLOUD, a, rq->n_prompt + rq->max_tokens,
                         &rq->sampling, err, errlen);
    if (!rc) {
        metrics_start(mt, a ? "split" : "cloud");
        rc = a ? mode_split_run(m, pool, &r, rq, NULL, NULL, mt, err, errlen)
               : mode_cloud_run(&r, rq, NULL, NULL, mt, err, errlen);
    }
    if (!rc && total) transport_stats_get(r.t, total);
    if (!rc) return remote_close(&r, err, errlen);
    remote_free(&r);
    return rc;
}

static remote_opts local_opts(int enc) {
    remote_opts o = remote_opts_default();
    o.model_path = MODEL;
    o.enc = enc;
    o.timeout_ms = 20000;
    return o;
}

TEST(test_modes_greedy_identical_to_llamacpp) {
    char err[512];
    ref_case c[N_CASES];
    int n_cases = cases_load(c, N_CASES);
    REQUIRE(n_cases == N_CASES);
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    REQUIRE_MSG(m && pool, "%s", err);
    int L = duet_model_config(m)->n_layers;
    REQUIRE(L == 5);
    remote_opts o = local_opts(FRAME_ENC_F32);
    for (int k = 0; k < n_cases; k++) {
        mode_request rq = cases_request(&c[k], c[k].n_out);
        metrics mt;
        metrics_start(&mt, "device");
        CHECK_EQ_INT(mode_device_run(m, pool, &rq, NULL, NULL, &mt, err, sizeof err), 0);
        CHECK_MSG(cases_same_ids(&mt, c[k].out, c[k].n_out), "device, prompt '%s'", c[k].text);
        metrics_free(&mt);
        for (int a = 0; a < L; a++) { /* a == 0: cloud mode; else split at a */
            int rc = run_remote(m, pool, &o, a, &rq, &mt, NULL, err, sizeof err);
            CHECK_MSG(rc == 0, "split %d: %s", a, err);
            CHECK_MSG(cases_same_ids(&mt, c[k].out, c[k].n_out), "%s at %d, prompt '%s': %d tokens", a ? "split" : "cloud",
                      a, c[k].text, mt.tokens);
            metrics_free(&mt);
        }
    }
    duet_pool_free(pool);
    duet_model_free(m);
}

/* Bytes and round trips are the transport's counts and follow from the frames the protocol sends. */
TEST(test_modes_bytes_and_round_trips) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    REQUIRE_MSG(m && pool, "%s", err);
    const uint64_t H = FRAME_HEADER_SIZE, P = (uint64_t)c[0].n_prompt, dim = (uint64_t)duet_model_config(m)->dim;
    /* connection setup, outside the request: HELLO and OPEN up, HELLO_OK and OPENED down */
    const uint64_t setup_up = 2 * H + FRAME_HELLO_SIZE + FRAME_OPEN_SIZE, setup_down = 2 * H + FRAME_HELLO_SIZE + FRAME_OPENED_SIZE;
    mode_request rq = cases_request(&c[0], 12);
    metrics mt;
    transport_stats tot;

    remote_opts o = local_opts(FRAME_ENC_F32);
    REQUIRE_MSG(run_remote(m, pool, &o, 2, &rq, &mt, &tot, err, sizeof err) == 0, "%s", err);
    uint64_t T = (uint64_t)mt.tokens;
    CHECK_EQ_INT(T, 12);
    CHECK_EQ_INT(mt.round_trips, T); /* one per token */
    CHECK_EQ_INT(mt.cloud_requests, T);
    CHECK_EQ_INT(mt.bytes_up, (H + FRAME_ROWS_FIXED + P * dim * 4) + (T - 1) * (H + FRAME_ROWS_FIXED + dim * 4) +
                                  T * (H + FRAME_REQUEST_SIZE));
    CHECK(mt.bytes_up >= (P + T - 1) * dim * 4);
    CHECK_EQ_INT(mt.bytes_down, T * (H + FRAME_TOKENS_FIXED + 4));
    CHECK_EQ_INT(tot.bytes_up, setup_up + mt.bytes_up);
    CHECK_EQ_INT(tot.bytes_down, setup_down + mt.bytes_down);
    CHECK(mt.cloud_compute_ms > 0);
    CHECK(mt.device_compute_ms > 0);
    metrics_free(&mt);

    o.enc = FRAME_ENC_F16; /* half the row bytes */
    REQUIRE_MSG(run_remote(m, pool, &o, 2, &rq, &mt, NULL, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(mt.bytes_up, (H + FRAME_ROWS_FIXED + P * dim * 2) + (T - 1) * (H + FRAME_ROWS_FIXED + dim * 2) +
                                  T * (H + FRAME_REQUEST_SIZE));
    metrics_free(&mt);

    /* cloud: the prompt up, one stream down ended by an empty TOKENS frame; one round trip */
    REQUIRE_MSG(run_remote(m, pool, &o, 0, &rq, &mt, &tot, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(mt.tokens, 12);
    CHECK_EQ_INT(mt.round_trips, 1);
    CHECK_EQ_INT(mt.cloud_requests, 1);
    CHECK_EQ_INT(mt.bytes_up, (H + FRAME_TOKENS_FIXED + 4 * P) + (H + FRAME_REQUEST_SIZE));
    CHECK_EQ_INT(mt.bytes_down, T * (H + FRAME_TOKENS_FIXED + 4) + (H + FRAME_TOKENS_FIXED));
    CHECK_EQ_INT(tot.bytes_up, setup_up + mt.bytes_up);
    CHECK_EQ_INT(tot.bytes_down, setup_down + mt.bytes_down);
    CHECK_EQ_INT(mt.device_compute_ms, 0);
    metrics_free(&mt);
    duet_pool_free(pool);
    duet_model_free(m);
}

/* fp16 and int8 hidden states are lossy: split reports its fidelity against device-only, which stays high. */
TEST(test_modes_split_lossy_fidelity) {
    char err[512];
    ref_case c[N_CASES];
    REQUIRE(cases_load(c, N_CASES) == N_CASES);
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    REQUIRE_MSG(m && pool, "%s", err);
    int encs[2] = {FRAME_ENC_F16, FRAME_ENC_I8};
    for (int e = 0; e < 2; e++) {
        double sum = 0;
        remote_opts o = local_opts(encs[e]);
        for (int k = 0; k < N_CASES; k++) {
            mode_request rq = cases_request(&c[k], c[k].n_out);
            metrics mt;
            REQUIRE_MSG(run_remote(m, pool, &o, 3, &rq, &mt, NULL, err, sizeof err) == 0, "%s", err);
            metrics_fidelity(&mt, c[k].out, c[k].n_out);
            CHECK(mt.has_reference);
            CHECK(mt.exact_match_rate >= 0 && mt.exact_match_rate <= 1 && mt.rouge_l_f1 <= 1);
            CHECK_EQ_INT(mt.ids[0], c[k].out[0]); /* the first token comes from a well-separated top logit */
            sum += mt.rouge_l_f1;
            metrics_free(&mt);
        }
        CHECK_MSG(sum / N_CASES > 0.5, "%s: mean ROUGE-L F1 %.3f", e ? "int8" : "fp16", sum / N_CASES);
    }
    duet_pool_free(pool);
    duet_model_free(m);
}

/* Each of 10 steps waits for one emulated round trip of 20 ms. */
TEST(test_modes_link_rtt_shows) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    REQUIRE_MSG(m && pool, "%s", err);
    remote_opts o = local_opts(FRAME_ENC_F32);
    REQUIRE(link_parse("rtt=20ms", &o.link, err, sizeof err) == 0);
    mode_request rq = cases_request(&c[0], 10);
    metrics mt;
    REQUIRE_MSG(run_remote(m, pool, &o, 2, &rq, &mt, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(cases_same_ids(&mt, c[0].out, 10));
    CHECK_MSG(mt.total_ms >= 10 * 20.0, "total %.1f ms", mt.total_ms);
    CHECK_MSG(mt.comm_wait_ms >= 10 * 20.0 * 0.9, "waited %.1f ms", mt.comm_wait_ms);
    CHECK_MSG(mt.t_token[0] >= 20.0, "ttft %.1f ms", mt.t_token[0]);
    metrics_free(&mt);
    duet_pool_free(pool);
    duet_model_free(m);
}

/* --device-slowdown 3: device compute comes out about 3x (loose bounds: the machine is shared). */
TEST(test_modes_device_slowdown) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    REQUIRE_MSG(m && pool, "%s", err);
    mode_request rq = cases_request(&c[0], 64);
    double base = 1e30;
    metrics mt;
    for (int i = 0; i < 2; i++) {
        metrics_start(&mt, "device");
        CHECK_EQ_INT(mode_device_run(m, pool, &rq, NULL, NULL, &mt, err, sizeof err), 0);
        if (mt.device_compute_ms < base) base = mt.device_compute_ms;
        metrics_free(&mt);
    }
    metrics_start(&mt, "device");
    CHECK_EQ_INT(mode_device_run_slowed(m, pool, 3, &rq, NULL, NULL, &mt, err, sizeof err), 0);
    CHECK(cases_same_ids(&mt, c[0].out, 64));
    /* Only a lower bound: sleeping is never shorter than asked, but a loaded machine can stretch any run. */
    CHECK_MSG(mt.device_compute_ms >= 1.5 * base, "%.3f ms vs %.3f ms", mt.device_compute_ms, base);
    CHECK(mt.total_ms >= mt.device_compute_ms);
    metrics_free(&mt);

    remote_opts o = local_opts(FRAME_ENC_F32); /* split applies it to the device's layers */
    o.device_slowdown = 4;
    REQUIRE_MSG(run_remote(m, pool, &o, 4, &rq, &mt, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(cases_same_ids(&mt, c[0].out, 64));
    CHECK_MSG(mt.device_compute_ms >= 1.5 * base * 4 / 5, "split device %.3f ms", mt.device_compute_ms);
    metrics_free(&mt);
    duet_pool_free(pool);
    duet_model_free(m);
}

TEST(test_modes_cloud_missing_or_silent) {
    char err[512] = "";
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    REQUIRE_MSG(m, "%s", err);
    mode_request rq = cases_request(&c[0], 4);
    /* a port nobody listens on any more */
    transport_listener *l = transport_listen("127.0.0.1", 0, err, sizeof err);
    REQUIRE(l);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", transport_listener_port(l));
    transport_listener_free(l);
    remote_opts o = local_opts(FRAME_ENC_F32);
    o.cloud = addr;
    remote r;
    CHECK(remote_open(&r, m, &o, FRAME_MODE_SPLIT, 2, 16, &rq.sampling, err, sizeof err) < 0);
    CHECK_MSG(strstr(err, "cannot reach the cloud at 127.0.0.1:") != NULL, "%s", err);
    remote_free(&r);

    /* a listener that accepts (backlog) and never answers: the handshake times out */
    l = transport_listen("127.0.0.1", 0, err, sizeof err);
    REQUIRE(l);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", transport_listener_port(l));
    o.timeout_ms = 200;
    CHECK(remote_open(&r, m, &o, FRAME_MODE_SPLIT, 2, 16, &rq.sampling, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "handshake") != NULL, "%s", err);
    remote_free(&r);
    transport_listener_free(l);

    o.cloud = "nohost";
    CHECK_EQ_INT(remote_open(&r, m, &o, FRAME_MODE_SPLIT, 2, 16, &rq.sampling, err, sizeof err), DUET_EINVAL);
    remote_free(&r);
    duet_model_free(m);
}

/* A device whose model differs in one byte of weights is refused by the cloud's handshake. */
TEST(test_modes_fingerprint_refused) {
    char err[512] = "";
    FILE *f = fopen(MODEL, "rb");
    REQUIRE(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    REQUIRE(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    buf[n - 1] ^= 1; /* the last tensor's last byte */
    char path[] = "/tmp/duet-test-modes-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    FILE *g = fdopen(fd, "wb");
    REQUIRE(g && fwrite(buf, 1, (size_t)n, g) == (size_t)n);
    fclose(g);
    free(buf);
    duet_model *m = duet_model_load(path, NULL, 0, err, sizeof err);
    REQUIRE_MSG(m, "%s", err);
    remote_opts o = local_opts(FRAME_ENC_F32);
    remote r;
    duet_sampling s = {0, 0, 1, 1};
    CHECK(remote_open(&r, m, &o, FRAME_MODE_SPLIT, 2, 16, &s, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "model mismatch") != NULL, "%s", err);
    remote_free(&r);
    duet_model_free(m);
    remove(path);
}

typedef struct device_job {
    duet_model *m;
    const char *cloud;
    const ref_case *c;
    int ok, tokens;
    char err[256];
} device_job;

static void *device_thread(void *arg) {
    device_job *j = arg;
    char err[256] = "";
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    remote_opts o = local_opts(FRAME_ENC_F32);
    o.cloud = j->cloud;
    mode_request rq = cases_request(j->c, 24);
    metrics mt;
    int rc = pool ? run_remote(j->m, pool, &o, 2, &rq, &mt, NULL, err, sizeof err) : -1;
    j->ok = rc == 0 && cases_same_ids(&mt, j->c->out, 24);
    j->tokens = rc == 0 ? mt.tokens : -1;
    snprintf(j->err, sizeof j->err, "%s", err);
    if (rc == 0) metrics_free(&mt);
    duet_pool_free(pool);
    return NULL;
}

/* 16 devices at once against one cloud, each with its own prompt, all correct. */
TEST(test_modes_sixteen_devices_at_once) {
    char err[512];
    ref_case c[N_CASES];
    REQUIRE(cases_load(c, N_CASES) == N_CASES);
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    REQUIRE_MSG(m && pool, "%s", err);
    duet_tokenizer const *tok = duet_model_tokenizer(m, err, sizeof err);
    REQUIRE(tok);
    /* 16 different prompts: the 6 reference ones, then 10 more whose device-only output is the reference */
    enum { N = 16 };
    ref_case cases[N];
    const char *extra[N - N_CASES] = {"A cat", "The sun was hot", "Mom said", "He ran", "They played ball",
                                      "Once there was a frog", "Sam had a red car", "The bird sang", "It was night",
                                      "Anna liked cake"};
    for (int i = 0; i < N; i++) {
        if (i < N_CASES) {
            cases[i] = c[i];
            continue;
        }
        ref_case *k = &cases[i];
        k->n_prompt = duet_tokenize(tok, extra[i - N_CASES], strlen(extra[i - N_CASES]), true, k->prompt, 64);
        REQUIRE(k->n_prompt > 1 && k->n_prompt <= 64);
        snprintf(k->text, sizeof k->text, "%s", extra[i - N_CASES]);
        mode_request rq = cases_request(k, 24);
        metrics mt;
        metrics_start(&mt, "device");
        REQUIRE(mode_device_run(m, pool, &rq, NULL, NULL, &mt, err, sizeof err) == 0);
        k->n_out = mt.tokens;
        memcpy(k->out, mt.ids, sizeof(int) * (size_t)mt.tokens);
        metrics_free(&mt);
    }
    duet_part part = {.n_spans = 1, .span = {{2, 5}}, .head = true};
    duet_model *cm = duet_model_load(MODEL, &part, 0, err, sizeof err);
    REQUIRE_MSG(cm, "%s", err);
    server_opts so = server_opts_default();
    so.host = "127.0.0.1";
    cloud_server *srv = server_init(cm, &so, err, sizeof err);
    REQUIRE_MSG(srv && server_start(srv, err, sizeof err) == 0, "%s", err);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", server_port(srv));
    duet_model_fingerprint(m); /* once, before the threads share it */
    device_job jobs[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        jobs[i] = (device_job){.m = m, .cloud = addr, .c = &cases[i]};
        REQUIRE(pthread_create(&th[i], NULL, device_thread, &jobs[i]) == 0);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++)
        CHECK_MSG(jobs[i].ok, "device %d ('%s'): %d tokens %s", i, cases[i].text, jobs[i].tokens, jobs[i].err);
    server_stats st;
    server_stats_get(srv, &st);
    CHECK_EQ_INT(st.sessions_total, N); /* (its token count is added when a session's thread ends: racy here) */
    server_free(srv);
    duet_model_free(cm);
    duet_pool_free(pool);
    duet_model_free(m);
}

/* ---- the CLI ---- */

TEST(test_modes_cli_three_baselines_same_text) {
    const char *modes[3] = {"--mode device", "--mode cloud --link wan", "--mode split --split 3 --hidden-enc fp32 --link lan --mmap"};
    char *first = NULL;
    for (int i = 0; i < 3; i++) {
        char args[512];
        snprintf(args, sizeof args, "run %s -m " MODEL " -p 'Once upon a time' -n 48 --compare --json",
                 modes[i]);
        int st;
        char *out = test_run_cli(args, &st, 0);
        REQUIRE(out);
        CHECK_MSG(st == 0, "%s: %s", modes[i], out);
        char err[256];
        json *doc = json_parse(out, strlen(out), err, sizeof err);
        REQUIRE_MSG(doc, "%s: not JSON (%s): %s", modes[i], err, out);
        const json_val *r = json_root(doc);
        CHECK_EQ_INT(json_num(json_get(r, "tokens")), 48);
        CHECK_NEAR(json_num(json_get(json_get(r, "fidelity"), "exact_match_rate")), 1.0, 0);
        CHECK(json_num(json_get(r, "bytes_up")) > (i ? 0 : -1));
        CHECK_EQ_INT(json_num(json_get(r, "round_trips")), i == 0 ? 0 : i == 1 ? 1 : 48);
        json_free(doc);
        free(out);
        /* the streamed text itself */
        snprintf(args, sizeof args, "run %s -m " MODEL " -p 'Once upon a time' -n 48", modes[i]);
        out = test_run_cli(args, &st, 0);
        REQUIRE(out);
        const char *want = "Once upon a time, there was a little girl named Lily.";
        CHECK_MSG(!strncmp(out, want, strlen(want)), "%s: %s", modes[i], out);
        if (!first) first = out;
        else {
            CHECK_MSG(!strcmp(out, first), "%s: %s", modes[i], out);
            free(out);
        }
    }
    free(first);
}

TEST(test_modes_cli_errors) {
    struct { const char *args, *msg; int status; } cases[] = {
        {"run --help", "--device-slowdown", 0},
        {"run -m " MODEL, "--mode", 2},
        {"run --mode fog -m " MODEL, "--mode", 2},
        {"run --mode split --split 5 -m " MODEL, "1..4", 2},
        {"run --mode split --split 0 -m " MODEL, "1..4", 2},
        {"run --mode cloud --split 2 -m " MODEL, "--split", 2},
        {"run --mode split --link 'up=fast' -m " MODEL, "--link", 2},
        {"run --mode split --hidden-enc fp8 -m " MODEL, "--hidden-enc", 2},
        {"run --mode cloud --cloud nowhere -m " MODEL, "HOST:PORT", 2},
        {"run --mode cloud --cloud 127.0.0.1:1 -m " MODEL, "cannot reach the cloud", 1},
        {"run --mode device -m /nonexistent.gguf", "nonexistent", 1},
        {"run --mode cloud -n 0 -m " MODEL, "0 tokens", 0}, /* nothing to ask the cloud */
        {"run --mode split -n 0 -m " MODEL, "0 tokens", 0},
        {"run --help", "--output-layers", 0}, /* hat */
        {"run --mode hat --input-layers 2 --output-layers 3 -m " MODEL, "leave no layer for the cloud", 2},
        {"run --mode hat --input-layers 0 -m " MODEL, "A >= 1", 2},
        {"run --mode split --draft 2 -m " MODEL, "--mode hat only", 2},
        {"run --mode hat --draft many -m " MODEL, "--draft", 2},
        {"run --mode hat --chunk -3 -m " MODEL, "--chunk", 2},
        {"run --mode hat --input-layers 2 --output-layers 2 --calib /nonexistent.gguf -m " MODEL, "nonexistent", 1},
        {"run --mode split --calib models/stories260K-calib.gguf -m " MODEL, "--mode ee or hat only", 2},
        {"run --mode hat --cloud 127.0.0.1:1 -m " MODEL, "cannot reach the cloud", 1},
        {"run --mode hat -n 0 -m " MODEL, "0 tokens", 0},
        /* pd (tests/test_pd.c has the rest) */
        {"run --help", "--pd-plan", 0},
        {"run --mode pd --tpot 50 --max-tpot 10 -m " MODEL, "--tpot is above --max-tpot", 2},
        {"run --mode pd --tpot 0 -m " MODEL, "--tpot", 2},
        {"run --mode pd --pd-plan fast -m " MODEL, "not auto, never, caught-up", 2},
        {"run --mode cloud --tpot 5 -m " MODEL, "--mode pd only", 2},
        {"run --mode pd --max-tpot 0.001 -m " MODEL, "--max-tpot 0.0 ms cannot be met", 2},
        {"run --mode pd --pd-plan handover=4 --cloud 127.0.0.1:1 -n 8 -m " MODEL, "the device answers alone", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st;
        char *out = test_run_cli(cases[i].args, &st, 1);
        REQUIRE(out);
        CHECK_MSG(st == cases[i].status, "%s: status %d: %s", cases[i].args, st, out);
        CHECK_MSG(strstr(out, cases[i].msg) != NULL, "%s: %s", cases[i].args, out);
        free(out);
    }
}

/* ---- a misbehaving cloud ---- */

enum fake_act { FAKE_BAD_POS, FAKE_EXTRA, FAKE_DROP, FAKE_ERROR };

typedef struct fake_cloud {
    transport_listener *l;
    int act;
} fake_cloud;

/* Speaks the handshake like a real cloud, then answers the first REQUEST wrongly. */
static void *fake_main(void *arg) {
    fake_cloud *f = arg;
    frame_request q;
    transport *t = cases_fake_cloud_accept(f->l, &q);
    if (!t) return NULL;
    int32_t id = 42;
    frame_msg m = {.type = FRAME_TOKENS, .session = 7};
    m.u.tokens = (frame_tokens){.pos0 = q.pos + 1, .n = 1, .ids = &id};
    if (f->act == FAKE_BAD_POS) transport_send(t, &m, NULL, 0);
    for (uint32_t i = 0; f->act == FAKE_EXTRA && i <= q.count; i++) transport_send(t, &m, NULL, 0);
    if (f->act == FAKE_ERROR) {
        frame_error_msg(&m, 7, FRAME_E_INTERNAL, "out of cheese");
        transport_send(t, &m, NULL, 0);
    }
    cases_fake_cloud_end(t, f->act == FAKE_DROP);
    return NULL;
}

TEST(test_modes_bad_cloud_answers) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    duet_model *m = duet_model_load(MODEL, NULL, 0, err, sizeof err);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    REQUIRE_MSG(m && pool, "%s", err);
    struct { int act, split; const char *msg; } cases[] = {
        {FAKE_BAD_POS, 2, "asked 1 at"},
        {FAKE_EXTRA, 0, "more tokens than asked"},
        {FAKE_DROP, 2, "closed the connection"},
        {FAKE_DROP, 0, "closed the connection"},
        {FAKE_ERROR, 2, "out of cheese"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fake_cloud f = {transport_listen("127.0.0.1", 0, err, sizeof err), cases[i].act};
        REQUIRE(f.l);
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, fake_main, &f) == 0);
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", transport_listener_port(f.l));
        remote_opts o = local_opts(FRAME_ENC_F32);
        o.cloud = addr;
        o.timeout_ms = 3000;
        mode_request rq = cases_request(&c[0], 4);
        metrics mt;
        err[0] = 0;
        int rc = run_remote(m, pool, &o, cases[i].split, &rq, &mt, NULL, err, sizeof err);
        CHECK_MSG(rc != 0, "case %zu: no error", i);
        CHECK_MSG(strstr(err, cases[i].msg) != NULL, "case %zu: %s", i, err);
        metrics_free(&mt);
        pthread_join(th, NULL);
        transport_listener_free(f.l);
    }
    duet_pool_free(pool);
    duet_model_free(m);
}
