/* ee (CE-CoLLM) over the real protocol: lossless at threshold 1, some but not all tokens to the cloud below
 * it, the device KV cache complete whatever exited where, standalone and fallback when the cloud is missing,
 * lies or dies (a real `duet cloud` process killed with SIGKILL and restarted), and clear errors. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cases.h"
#include "engine/kv.h"
#include "test.h"

#define CALIB "models/stories260K-calib.gguf"

typedef struct logbuf {
    char text[2048];
} logbuf;

static void log_to(void *arg, const char *msg) {
    logbuf *b = arg;
    size_t n = strlen(b->text);
    snprintf(b->text + n, sizeof b->text - n, "%s\n", msg);
}

static ee_opts opts(int e1, int e2, float t, const calib *cal, int enc) {
    ee_opts o = ee_opts_default();
    o.e1 = e1;
    o.e2 = e2;
    o.threshold = t;
    o.calib = cal;
    o.sampling = (duet_sampling){.temperature = 0, .top_p = 1, .seed = 1};
    o.remote.model_path = CASES_MODEL;
    o.remote.enc = enc;
    o.remote.timeout_ms = 20000;
    return o;
}

/* The device's part for exits up to e2. */
static duet_model *device_part(int e2, char *err, size_t errlen) {
    duet_part p = {.n_spans = 1, .span = {{0, e2 + 1}}, .embed = true, .head = true};
    return duet_model_load(CASES_MODEL, &p, 0, err, errlen);
}

/* What most tests here need: one thread, the shipped translators, and the device's part for exits up to e2. */
typedef struct fixture {
    duet_pool *pool;
    calib *cal;
    duet_model *m;
} fixture;

static int fixture_init(fixture *f, int e2, char *err, size_t errlen) {
    f->pool = duet_pool_init(1, err, errlen);
    f->cal = f->pool ? calib_load(CALIB, err, errlen) : NULL;
    f->m = f->cal ? device_part(e2, err, errlen) : NULL;
    return f->m ? 0 : -1;
}

static void fixture_free(fixture *f) {
    duet_model_free(f->m);
    calib_free(f->cal);
    duet_pool_free(f->pool);
}

TEST(test_ee_threshold_one_equals_device_only) {
    char err[512];
    ref_case c[CASES_N];
    REQUIRE(cases_load(c, CASES_N) == CASES_N);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    calib *cal = calib_load(CALIB, err, sizeof err);
    REQUIRE_MSG(pool && cal, "%s", err);
    int exits[][2] = {{0, 1}, {1, 2}, {1, 3}, {2, 3}};
    for (size_t e = 0; e < sizeof exits / sizeof exits[0]; e++) {
        duet_model *m = device_part(exits[e][1], err, sizeof err);
        REQUIRE_MSG(m, "%s", err);
        for (int enc = FRAME_ENC_F16; enc <= FRAME_ENC_F32; enc++)
            for (int k = 0; k < CASES_N; k++) {
                mode_request rq = cases_request(&c[k], c[k].n_out);
                ee_opts o = opts(exits[e][0], exits[e][1], 1.0f, e % 2 ? cal : NULL, enc);
                metrics mt;
                metrics_start(&mt, "ee");
                CHECK_MSG(mode_ee_run(m, pool, &o, &rq, NULL, NULL, &mt, err, sizeof err) == 0, "%s", err);
                CHECK_MSG(cases_same_ids(&mt, c[k].out, c[k].n_out), "exits %d,%d enc %d, prompt '%s'", exits[e][0],
                          exits[e][1], enc, c[k].text);
                CHECK_EQ_INT(mt.cloud_requests, mt.tokens); /* nothing exits at 1.0 */
                CHECK_EQ_INT(mt.exit_tokens[0] + mt.exit_tokens[1], 0);
                CHECK_EQ_INT(mt.fallback_at, -1);
                metrics_free(&mt);
            }
        duet_model_free(m);
    }
    calib_free(cal);
    duet_pool_free(pool);
}

/* Below 1 the exits answer some tokens and the cloud the rest; uploads carry every position once, requests
 * only the low-confidence ones. */
TEST(test_ee_some_but_not_all_tokens_to_the_cloud) {
    char err[512];
    ref_case c[CASES_N];
    REQUIRE(cases_load(c, CASES_N) == CASES_N);
    fixture fx;
    REQUIRE_MSG(!fixture_init(&fx, 3, err, sizeof err), "%s", err);
    duet_pool *pool = fx.pool;
    calib *cal = fx.cal;
    duet_model *m = fx.m;
    uint64_t tokens = 0, requests = 0, exits = 0, round_trips = 0;
    for (int k = 0; k < CASES_N; k++) {
        mode_request rq = cases_request(&c[k], 48);
        ee_opts o = opts(2, 3, 0.8f, cal, FRAME_ENC_F16);
        metrics mt;
        metrics_start(&mt, "ee");
        REQUIRE_MSG(mode_ee_run(m, pool, &o, &rq, NULL, NULL, &mt, err, sizeof err) == 0, "%s", err);
        CHECK_EQ_INT(mt.tokens, 48);
        CHECK_EQ_INT(mt.cloud_requests + mt.exit_tokens[0] + mt.exit_tokens[1], mt.tokens);
        tokens += (uint64_t)mt.tokens;
        requests += mt.cloud_requests;
        exits += mt.exit_tokens[0] + mt.exit_tokens[1];
        round_trips += mt.round_trips;
        metrics_free(&mt);
    }
    CHECK_MSG(requests > 0 && requests < tokens, "%llu of %llu tokens went to the cloud", (unsigned long long)requests,
              (unsigned long long)tokens);
    CHECK(exits > 0);
    CHECK_EQ_INT(round_trips, requests); /* uploads never wait for an answer */
    fixture_free(&fx);
}

/* A token that exits at E1 still gets layers (E1,E2] later: after a run with many E1 exits, the device's KV
 * cache equals one computed by running the same tokens through [0,E2] in one batch, bit for bit. */
TEST(test_ee_device_kv_stays_complete) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    fixture fx;
    REQUIRE_MSG(!fixture_init(&fx, 3, err, sizeof err), "%s", err);
    duet_pool *pool = fx.pool;
    calib *cal = fx.cal;
    duet_model *m = fx.m;
    const duet_config *cfg = duet_model_config(m);
    int n = 40, n_ctx = c[0].n_prompt + n;
    duet_part dev = {.n_spans = 1, .span = {{0, 4}}};
    duet_kv *kv = duet_kv_init(m, &dev, n_ctx, err, sizeof err), *ref = duet_kv_init(m, &dev, n_ctx, err, sizeof err);
    REQUIRE(kv && ref);
    mode_request rq = cases_request(&c[0], n);
    ee_opts o = opts(1, 3, 0.3f, cal, FRAME_ENC_F16);
    o.standalone = true; /* the cloud plays no part in the device's cache */
    o.kv = kv;
    metrics mt;
    metrics_start(&mt, "ee");
    REQUIRE_MSG(mode_ee_run(m, pool, &o, &rq, NULL, NULL, &mt, err, sizeof err) == 0, "%s", err);
    CHECK_MSG(mt.exit_tokens[0] > 5, "only %llu tokens exited at E1", (unsigned long long)mt.exit_tokens[0]);
    /* The reference: prompt + every emitted token but the last, one batch through [0,3]. */
    int ids[128], len = 0;
    for (int i = 0; i < c[0].n_prompt; i++) ids[len++] = c[0].prompt[i];
    for (int i = 0; i + 1 < mt.tokens; i++) ids[len++] = mt.ids[i];
    float *h = malloc(sizeof(float) * (size_t)len * cfg->dim);
    duet_ctx *ctx = duet_ctx_init(m, len, pool, err, sizeof err);
    REQUIRE(h && ctx);
    REQUIRE(!duet_embed(ctx, ids, len, h, err, sizeof err) && !duet_forward(ctx, ref, 0, 4, h, len, 0, err, sizeof err));
    size_t row = (size_t)kv->kv_dim;
    for (int l = 0; l < 4; l++) {
        CHECK_EQ_INT(duet_kv_len(kv, l), len);
        CHECK_MSG(!memcmp(kv->k[l], ref->k[l], sizeof(float) * row * (size_t)len) &&
                      !memcmp(kv->v[l], ref->v[l], sizeof(float) * row * (size_t)len),
                  "layer %d of the KV cache differs from a run without exits", l);
    }
    metrics_free(&mt);
    free(h);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    duet_kv_free(ref);
    fixture_free(&fx);
}

/* Standalone: the E2 exit always emits, so at threshold 1 the output is greedy decoding of the truncated
 * model [0,E2] + translator + head, computed here independently. */
static void truncated_greedy(const ref_case *c, int e2, const calib *cal, int n, int *out) {
    char err[256];
    duet_model *m = device_part(e2, err, sizeof err);
    duet_pool *pool = duet_pool_init(1, err, sizeof err);
    const duet_config *cfg = duet_model_config(m);
    duet_part dev = {.n_spans = 1, .span = {{0, e2 + 1}}};
    duet_kv *kv = duet_kv_init(m, &dev, c->n_prompt + n, err, sizeof err);
    duet_ctx *ctx = duet_ctx_init(m, c->n_prompt, pool, err, sizeof err);
    float *h = malloc(sizeof(float) * (size_t)c->n_prompt * cfg->dim), *x = malloc(sizeof(float) * (size_t)cfg->dim);
    float *lg = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    const calib_map *t = calib_find(cal, e2 + 1, cfg->n_layers);
    duet_embed(ctx, c->prompt, c->n_prompt, h, err, sizeof err);
    duet_forward(ctx, kv, 0, e2 + 1, h, c->n_prompt, 0, err, sizeof err);
    const float *last = h + (size_t)(c->n_prompt - 1) * cfg->dim;
    for (int i = 0; i < n; i++) {
        calib_apply(t, last, x, 1);
        duet_head(ctx, x, 1, lg, err, sizeof err);
        out[i] = duet_argmax(lg, cfg->vocab_size);
        duet_embed(ctx, &out[i], 1, h, err, sizeof err);
        duet_forward(ctx, kv, 0, e2 + 1, h, 1, c->n_prompt + i, err, sizeof err);
        last = h;
    }
    free(h);
    free(x);
    free(lg);
    duet_ctx_free(ctx);
    duet_kv_free(kv);
    duet_pool_free(pool);
    duet_model_free(m);
}

TEST(test_ee_standalone_and_unreachable_cloud) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    fixture fx;
    REQUIRE_MSG(!fixture_init(&fx, 3, err, sizeof err), "%s", err);
    duet_pool *pool = fx.pool;
    calib *cal = fx.cal;
    duet_model *m = fx.m;
    int want[32];
    truncated_greedy(&c[0], 3, cal, 32, want);
    mode_request rq = cases_request(&c[0], 32);
    ee_opts o = opts(2, 3, 1.0f, cal, FRAME_ENC_F16);
    o.standalone = true;
    metrics mt;
    metrics_start(&mt, "ee");
    REQUIRE_MSG(mode_ee_run(m, pool, &o, &rq, NULL, NULL, &mt, err, sizeof err) == 0, "%s", err);
    CHECK(cases_same_ids(&mt, want, 32));
    CHECK_EQ_INT(mt.bytes_up + mt.bytes_down + mt.cloud_requests, 0);
    CHECK_EQ_INT(mt.exit_tokens[1], 32);
    metrics_free(&mt);

    /* Nothing listens there: the same tokens, standalone from token 0, and a message saying so. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    REQUIRE(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &al) == 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(a.sin_port));
    o.standalone = false;
    o.remote.cloud = addr;
    o.reconnect_ms = 0;
    logbuf lb = {""};
    o.log = log_to;
    o.log_arg = &lb;
    metrics_start(&mt, "ee");
    REQUIRE_MSG(mode_ee_run(m, pool, &o, &rq, NULL, NULL, &mt, err, sizeof err) == 0, "%s", err);
    close(fd);
    CHECK(cases_same_ids(&mt, want, 32));
    CHECK_EQ_INT(mt.fallback_at, 0);
    CHECK_MSG(strstr(lb.text, "lost the cloud") && strstr(lb.text, addr), "log: %s", lb.text);
    metrics_free(&mt);
    fixture_free(&fx);
}

/* A cloud that answers the wrong position: the device says so and carries on standalone. */
typedef struct liar {
    transport_listener *l;
} liar;

static void *liar_main(void *arg) {
    liar *f = arg;
    frame_request q;
    transport *t = cases_fake_cloud_accept(f->l, &q);
    if (!t) return NULL;
    int32_t id = 7;
    frame_msg m = {.type = FRAME_TOKENS, .session = 7};
    m.u.tokens = (frame_tokens){.pos0 = q.pos + 3, .n = 1, .ids = &id};
    transport_send(t, &m, NULL, 0);
    cases_fake_cloud_end(t, 0);
    return NULL;
}

TEST(test_ee_cloud_answering_the_wrong_position) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    fixture fx;
    REQUIRE_MSG(!fixture_init(&fx, 3, err, sizeof err), "%s", err);
    duet_pool *pool = fx.pool;
    calib *cal = fx.cal;
    duet_model *m = fx.m;
    int want[16];
    truncated_greedy(&c[0], 3, cal, 16, want);
    liar f = {transport_listen("127.0.0.1", 0, err, sizeof err)};
    REQUIRE(f.l);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, liar_main, &f) == 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", transport_listener_port(f.l));
    mode_request rq = cases_request(&c[0], 16);
    ee_opts o = opts(2, 3, 1.0f, cal, FRAME_ENC_F16);
    o.remote.cloud = addr;
    o.reconnect_ms = 0;
    logbuf lb = {""};
    o.log = log_to;
    o.log_arg = &lb;
    metrics mt;
    metrics_start(&mt, "ee");
    REQUIRE_MSG(mode_ee_run(m, pool, &o, &rq, NULL, NULL, &mt, err, sizeof err) == 0, "%s", err);
    CHECK(cases_same_ids(&mt, want, 16)); /* the lie was not delivered: the E2 exit answered */
    CHECK_EQ_INT(mt.fallback_at, 0);
    CHECK_MSG(strstr(lb.text, "asked 1 at"), "log: %s", lb.text);
    metrics_free(&mt);
    pthread_join(th, NULL);
    transport_listener_free(f.l);
    fixture_free(&fx);
}

/* ---- a real cloud process, killed and restarted -------------------------------------------------------- */

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int port = -1;
    if (!bind(fd, (struct sockaddr *)&a, sizeof a) && !getsockname(fd, (struct sockaddr *)&a, &al)) port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Starts `duet cloud` on port and waits (at most 10 s) until it listens. */
static pid_t start_cloud(int port) {
    const char *bin = getenv("DUET_BIN") ? getenv("DUET_BIN") : "build/duet";
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 1);
        dup2(nul, 2);
        execl(bin, bin, "cloud", "-m", CASES_MODEL, "--host", "127.0.0.1", "--port", ps, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 1000 && pid > 0; i++) {
        if (port_open(port)) return pid;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    return -1;
}

typedef struct chaos {
    int port;
    pid_t pid;
    int kill_at, restart_at; /* token indices (emit calls) */
    int sig;                 /* SIGKILL: the cloud dies; SIGSTOP: it freezes (and is killed at the end) */
    int seen;
    int pace_ms; /* the user reads slowly: time passes between tokens, so backoff can run its course */
} chaos;

static void kill_cloud(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* The device's emit callback: kills the cloud after token kill_at, starts a new one after restart_at. */
static void chaos_emit(void *arg, int id) {
    chaos *ch = arg;
    (void)id;
    if (ch->seen == ch->kill_at && ch->sig == SIGSTOP) {
        kill(ch->pid, SIGSTOP);
        waitpid(ch->pid, NULL, WUNTRACED); /* a signal is delivered when the target next runs: wait till it has */
    }
    else if (ch->seen == ch->kill_at) kill_cloud(ch->pid);
    if (ch->seen == ch->restart_at) ch->pid = start_cloud(ch->port);
    ch->seen++;
    if (ch->pace_ms) nanosleep(&(struct timespec){0, ch->pace_ms * 1000000L}, NULL);
}

TEST(test_ee_cloud_killed_and_restarted) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    fixture fx;
    REQUIRE_MSG(!fixture_init(&fx, 2, err, sizeof err), "%s", err);
    duet_pool *pool = fx.pool;
    calib *cal = fx.cal;
    duet_model *m = fx.m;
    int n = c[0].n_out;
    chaos ch = {.port = free_port(), .kill_at = 10, .restart_at = 10, .sig = SIGKILL};
    REQUIRE(ch.port > 0);
    ch.pid = start_cloud(ch.port);
    REQUIRE_MSG(ch.pid > 0, "duet cloud did not start");
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ch.port);

    /* Killed with SIGKILL after token 10 and restarted at once: the device reconnects, re-sends every row it
     * kept, and at threshold 1 the output is the uninterrupted one. */
    mode_request rq = cases_request(&c[0], n);
    ee_opts o = opts(1, 2, 1.0f, cal, FRAME_ENC_F16);
    o.remote.cloud = addr;
    o.remote.timeout_ms = 5000;
    o.reconnect_ms = 20;
    logbuf lb = {""};
    o.log = log_to;
    o.log_arg = &lb;
    metrics mt;
    metrics_start(&mt, "ee");
    CHECK_MSG(mode_ee_run(m, pool, &o, &rq, chaos_emit, &ch, &mt, err, sizeof err) == 0, "%s", err);
    CHECK_MSG(cases_same_ids(&mt, c[0].out, n), "restarted cloud: output differs from the uninterrupted run");
    CHECK_EQ_INT(mt.reconnects, 1);
    CHECK_EQ_INT(mt.fallback_at, -1);
    CHECK_EQ_INT(mt.cloud_requests, n);
    CHECK_MSG(strstr(lb.text, "reconnected"), "log: %s", lb.text);
    metrics_free(&mt);

    /* Killed after token 5, back after token 20: tokens 6.. come from the E2 exit until the device
     * reconnects, then from the cloud again; none lost or repeated. */
    ch.kill_at = 5;
    ch.restart_at = 20;
    ch.seen = 0;
    ch.pace_ms = 5;
    lb.text[0] = 0;
    metrics_start(&mt, "ee");
    CHECK_MSG(mode_ee_run(m, pool, &o, &rq, chaos_emit, &ch, &mt, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(mt.tokens, n);
    CHECK_EQ_INT(mt.fallback_at, 6);
    CHECK(mt.reconnects >= 1);
    CHECK_MSG(mt.cloud_requests > 6 && mt.exit_tokens[1] >= 14, "requests %llu, E2 exits %llu",
              (unsigned long long)mt.cloud_requests, (unsigned long long)mt.exit_tokens[1]);
    CHECK_EQ_INT(mt.cloud_requests + mt.exit_tokens[1], n);
    for (int i = 0; i < 6; i++) CHECK_EQ_INT(mt.ids[i], c[0].out[i]);
    metrics_free(&mt);

    /* Frozen (SIGSTOP) after token 8: the request stalls past the timeout, and the device goes on alone. */
    ch = (chaos){.port = ch.port, .pid = ch.pid, .kill_at = 8, .restart_at = -1, .sig = SIGSTOP};
    o.remote.timeout_ms = 300;
    o.reconnect_ms = 0;
    lb.text[0] = 0;
    metrics_start(&mt, "ee");
    CHECK_MSG(mode_ee_run(m, pool, &o, &rq, chaos_emit, &ch, &mt, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(mt.tokens, n);
    CHECK_EQ_INT(mt.fallback_at, 9);
    CHECK_EQ_INT(mt.cloud_requests, 9);
    for (int i = 0; i < 9; i++) CHECK_EQ_INT(mt.ids[i], c[0].out[i]);
    CHECK_MSG(strstr(lb.text, "no answer within 300 ms"), "log: %s", lb.text);
    metrics_free(&mt);
    if (ch.pid > 0) {
        kill(ch.pid, SIGCONT);
        kill_cloud(ch.pid);
    }
    fixture_free(&fx);
}

TEST(test_ee_cli_and_bad_input) {
    int st;
    struct { const char *cmd, *flags[12]; } helps[] = {
        {"run --help", {"--exits", "--threshold", "--calib", "--standalone", "--reconnect-ms", "--cloud-timeout",
                        "--no-background-upload", "--hidden-enc", "ee"}},
        {"calibrate --help", {"--model", "--text", "--pairs", "--output", "--window", "--holdout", "--lambda",
                              "--max-tokens", "--threads", "--json"}},
        {"--help", {"calibrate"}},
    };
    for (size_t h = 0; h < sizeof helps / sizeof helps[0]; h++) {
        char *txt = test_run_cli(helps[h].cmd, &st, 0);
        CHECK(txt && st == 0);
        for (int i = 0; txt && helps[h].flags[i]; i++)
            CHECK_MSG(strstr(txt, helps[h].flags[i]), "%s lacks %s", helps[h].cmd, helps[h].flags[i]);
        free(txt);
    }
    char *out = test_run_cli("run --mode ee -m " CASES_MODEL " -p \"Once upon a time\" -n 24 --exits 2,3 --threshold 0.8 "
                             "--calib " CALIB " --json --compare",
                             &st, 0);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    CHECK_MSG(strstr(out, "\"mode\":\"ee\"") && strstr(out, "\"exits\":[{\"after_layer\":2") &&
                  strstr(out, "\"cloud_request_rate\"") && strstr(out, "\"rouge_l_f1\""),
              "%s", out);
    free(out);
    struct { const char *args, *msg; } bad[] = {
        {"--exits 3,2", "need 0 <= E1 < E2 <= 3"},
        {"--exits 1,4", "need 0 <= E1 < E2 <= 3"},
        {"--exits 1", "two layer numbers"},
        {"--threshold 1.5", "--threshold"},
        {"--threshold -0.1", "--threshold"},
        {"--calib /nonexistent.gguf", "/nonexistent.gguf"},
        {"--calib models/stories260K.gguf", "not a duet calibration file"},
        {"--mode split --threshold 0.5", "applies to --mode ee only"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[512];
        snprintf(args, sizeof args, "run %s -m %s -n 4 %s", strstr(bad[i].args, "--mode") ? "" : "--mode ee",
                 CASES_MODEL, bad[i].args);
        out = test_run_cli(args, &st, 1);
        CHECK_MSG(out && st != 0 && strstr(out, bad[i].msg), "'%s': status %d, %s", bad[i].args, st, out ? out : "");
        free(out);
    }
}

/* A calibration file of another model, or without the exits asked for, is refused by name. */
TEST(test_ee_foreign_calibration_refused) {
    char err[512];
    calib *cal = calib_load(CALIB, err, sizeof err);
    REQUIRE_MSG(cal, "%s", err);
    cal->fingerprint ^= 1;
    REQUIRE(!calib_save(cal, "/tmp/duet-test-foreign.gguf", err, sizeof err));
    int st;
    char *out = test_run_cli("run --mode ee -m " CASES_MODEL " -n 4 --calib /tmp/duet-test-foreign.gguf", &st, 1);
    CHECK_MSG(out && st == 1 && strstr(out, "another model"), "%s", out ? out : "");
    free(out);
    cal->fingerprint ^= 1;
    cal->n_maps = 1; /* only the map 1:2 */
    REQUIRE(!calib_save(cal, "/tmp/duet-test-foreign.gguf", err, sizeof err));
    cal->n_maps = 10;
    out = test_run_cli("run --mode ee -m " CASES_MODEL " -n 4 --exits 2,3 --calib /tmp/duet-test-foreign.gguf", &st, 1);
    CHECK_MSG(out && st == 1 && strstr(out, "no translator for the exit after layer 2 (map 3:5)"), "%s", out ? out : "");
    free(out);
    unlink("/tmp/duet-test-foreign.gguf");
    calib_free(cal);
}

/* With temperature each token is sampled from the distribution of the head that answered it (an exit's on the
 * device, the cloud's session sampler otherwise), both seeded: a run repeats exactly, another seed differs. */
TEST(test_ee_sampling_is_seeded) {
    char err[512];
    ref_case c[1];
    REQUIRE(cases_load(c, 1) == 1);
    fixture fx;
    REQUIRE_MSG(!fixture_init(&fx, 3, err, sizeof err), "%s", err);
    duet_pool *pool = fx.pool;
    calib *cal = fx.cal;
    duet_model *m = fx.m;
    int out[3][40];
    uint64_t seeds[3] = {5, 5, 6}, from_exits = 0, from_cloud = 0;
    for (int r = 0; r < 3; r++) {
        mode_request rq = cases_request(&c[0], 40);
        rq.sampling = (duet_sampling){.temperature = 1.0f, .top_p = 1, .seed = seeds[r]};
        ee_opts o = opts(2, 3, 0.7f, cal, FRAME_ENC_F32);
        o.sampling = rq.sampling;
        metrics mt;
        metrics_start(&mt, "ee");
        REQUIRE_MSG(mode_ee_run(m, pool, &o, &rq, NULL, NULL, &mt, err, sizeof err) == 0, "%s", err);
        REQUIRE(mt.tokens == 40);
        memcpy(out[r], mt.ids, sizeof out[r]);
        from_exits += mt.exit_tokens[0] + mt.exit_tokens[1];
        from_cloud += mt.cloud_requests;
        metrics_free(&mt);
    }
    CHECK(!memcmp(out[0], out[1], sizeof out[0]));
    CHECK(memcmp(out[0], out[2], sizeof out[0]));
    CHECK(from_exits > 0 && from_cloud > 0); /* both kinds of head were sampled */
    fixture_free(&fx);
}
