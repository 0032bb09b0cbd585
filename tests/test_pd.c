/* pd mode: the speed controller's schedule against a fake clock; llama.cpp's greedy tokens with the hand-over
 * anywhere (never, after the first token, in the middle, when caught up) and any chunk size; temperature runs
 * equal to device-only from the same seed; a cloud that is unreachable, killed (a real `duet cloud` process,
 * kill -9 mid-stream) or streaming nonsense leaves the device to finish the same tokens alone. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/json.h"
#include "cases.h"
#include "modes/pdplan.h"
#include "test.h"

#define MODEL "models/stories260K.gguf"

/* ---- the speed controller ---- */

typedef struct fake_clock { double t; } fake_clock;
static double fake_now(void *arg) { return ((fake_clock *)arg)->t; }
static void fake_sleep_until(void *arg, double t) {
    fake_clock *f = arg;
    if (t > f->t) f->t = t;
}

/* Drives a pace the way pd's loop does: tokens become known at arrive[i]; a loop busy with other work
 * looks `late` ms after each due time; the release times go to out[]. */
static void drive(double tpot, const double *arrive, int n, double late, double *out) {
    fake_clock fc = {0};
    pace_clock clk = {fake_now, fake_sleep_until, &fc};
    pace p;
    pace_init(&p, tpot);
    int added = 0;
    while (p.released < n) {
        while (added < n && arrive[added] <= clk.now(clk.arg)) pace_add(&p, 1, arrive[added++]);
        int k = pace_take(&p, clk.now(clk.arg));
        for (int i = p.released - k; i < p.released; i++) out[i] = clk.now(clk.arg);
        double due = pace_due(&p), next = added < n ? arrive[added] : 1e30;
        if (due > clk.now(clk.arg) || k == 0) clk.sleep_until(clk.arg, due < next ? due + (p.released ? late : 0) : next);
    }
}

TEST(test_pace_burst_released_at_pace) {
    double arrive[10], out[10];
    for (int i = 0; i < 10; i++) arrive[i] = 5.0; /* a burst: all ten known at 5 ms */
    drive(30, arrive, 10, 0, out);
    for (int i = 0; i < 10; i++) CHECK_NEAR(out[i], 5.0 + 30.0 * i, 1e-9);
    /* without pacing the burst goes out at once */
    drive(0, arrive, 10, 0, out);
    for (int i = 0; i < 10; i++) CHECK_NEAR(out[i], 5.0, 1e-9);
    /* a loop that comes 10 ms late to every release: each is 10 ms late, the lateness does not add up */
    drive(30, arrive, 10, 10, out);
    CHECK_NEAR(out[0], 5.0, 1e-9);
    for (int i = 1; i < 10; i++) CHECK_NEAR(out[i], 5.0 + 30.0 * i + 10, 1e-9);
    /* more than a whole slot late: the schedule starts again from there (no burst after it) */
    drive(30, arrive, 10, 45, out);
    for (int i = 1; i < 10; i++) CHECK_NEAR(out[i] - out[i - 1], 30 + 45, 1e-9);
}

TEST(test_pace_late_tokens_go_at_once_and_never_early_after) {
    /* 0, then a token late for its slot (100 > 0 + 30), then two right behind it: the gap restarts from the
     * late release, so they come 30 ms apart after it, not in a burst */
    double arrive[4] = {0, 100, 101, 102}, out[4];
    drive(30, arrive, 4, 0, out);
    CHECK_NEAR(out[0], 0, 1e-9);
    CHECK_NEAR(out[1], 100, 1e-9);
    CHECK_NEAR(out[2], 130, 1e-9);
    CHECK_NEAR(out[3], 160, 1e-9);
    pace p;
    pace_init(&p, 30);
    CHECK(isinf(pace_due(&p)) && pace_due(&p) > 0); /* nothing waits */
    CHECK_EQ_INT(pace_take(&p, 1e9), 0);
}

/* ---- the mode ---- */

/* What most tests need: the shipped model, a one-thread pool, the reference cases, message buffers. */
typedef struct fx {
    char err[512], note[512];
    ref_case c[6];
    duet_model *m;
    duet_pool *pool;
} fx;

static int fx_init(fx *f) {
    memset(f, 0, sizeof *f);
    if (cases_load(f->c, 6) != 6) return 0;
    f->m = duet_model_load(MODEL, NULL, 0, f->err, sizeof f->err);
    f->pool = f->m ? duet_pool_init(1, f->err, sizeof f->err) : NULL;
    return f->pool != NULL;
}

static void fx_free(fx *f) {
    duet_pool_free(f->pool);
    duet_model_free(f->m);
}

static mode_request request(const ref_case *c, int n, float temp, uint64_t seed) {
    mode_request rq = {c->prompt, c->n_prompt, n, {.temperature = temp, .top_k = 0, .top_p = 1, .seed = seed}, -1};
    return rq;
}

static remote_opts local_opts(void) {
    remote_opts o = remote_opts_default();
    o.model_path = MODEL;
    o.timeout_ms = 20000;
    return o;
}

/* One pd request: a fresh session when the plan asks the cloud (o NULL: no cloud at all). */
static int run_pd(duet_model *m, duet_pool *pool, const remote_opts *o, const pd_plan *plan, const mode_request *rq,
                  mode_emit_fn emit, void *arg, metrics *mt, char *note, size_t notelen, char *err, size_t errlen) {
    remote r = {0};
    int rc = 0;
    if (o && plan->cloud_tokens > 0)
        rc = remote_open(&r, m, o, FRAME_MODE_PD, 0, rq->n_prompt + rq->max_tokens, &rq->sampling, err, errlen);
    metrics_start(mt, "pd");
    if (!rc) rc = mode_pd_run(m, pool, o ? &r : NULL, plan, 1, rq, emit, arg, mt, note, notelen, err, errlen);
    if (!rc && o && plan->cloud_tokens > 0) return remote_close(&r, err, errlen);
    remote_free(&r);
    return rc;
}

TEST(test_pd_greedy_identical_to_llamacpp_at_any_handover) {
    fx f;
    REQUIRE_MSG(fx_init(&f), "%s", f.err);
    remote_opts o = local_opts();
    struct { pd_plan p; int handover_at; } plans[] = {
        {{0, 7, PD_NEVER, 1000}, -1},   /* the cloud makes every token */
        {{0, 64, PD_FIXED, 1}, 1},      /* after the first token */
        {{0, 3, PD_FIXED, 5}, 5},       /* small chunks: the prompt takes several */
        {{0, 1, PD_FIXED, 17}, 17},     /* one position at a time */
        {{0, 64, PD_FIXED, 0}, 0},      /* no cloud: the device alone */
        {{0, 4, PD_CAUGHT_UP, 40}, -2}, /* whenever the device has caught up (at most 40) */
    };
    for (int k = 0; k < 6; k++) {
        mode_request rq = request(&f.c[k], f.c[k].n_out, 0, 1);
        for (size_t i = 0; i < sizeof plans / sizeof plans[0]; i++) {
            metrics mt;
            int rc = run_pd(f.m, f.pool, &o, &plans[i].p, &rq, NULL, NULL, &mt, f.note, sizeof f.note, f.err, sizeof f.err);
            CHECK_MSG(rc == 0, "plan %zu: %s", i, f.err);
            CHECK_MSG(cases_same_ids(&mt, f.c[k].out, f.c[k].n_out), "plan %zu, prompt '%s': %d tokens", i, f.c[k].text, mt.tokens);
            CHECK_MSG(f.note[0] == 0, "plan %zu: %s", i, f.note);
            CHECK_EQ_INT(mt.fallback_at, -1);
            if (plans[i].handover_at >= -1) CHECK_EQ_INT(mt.handover_at, plans[i].handover_at);
            else CHECK(mt.handover_at >= 0 && mt.handover_at <= 40);
            if (plans[i].p.handover == PD_FIXED) CHECK_EQ_INT(mt.cloud_tokens, plans[i].p.cloud_tokens);
            if (plans[i].p.handover == PD_NEVER) CHECK_EQ_INT(mt.cloud_tokens, f.c[k].n_out);
            CHECK_EQ_INT(mt.cloud_requests, plans[i].p.cloud_tokens > 0);
            CHECK((mt.bytes_up > 0) == (plans[i].p.cloud_tokens > 0));
            CHECK(plans[i].p.handover == PD_NEVER || mt.device_compute_ms > 0);
            metrics_free(&mt);
        }
    }
    fx_free(&f);
}

/* With temperature the cloud samples from the request's seed and the device continues with the next draw, so
 * every hand-over point gives device-only's tokens for that seed. */
TEST(test_pd_temperature_same_as_device_only) {
    fx f;
    REQUIRE_MSG(fx_init(&f), "%s", f.err);
    remote_opts o = local_opts();
    int handovers[] = {1, 6, 23, 1000};
    for (int k = 0; k < 2; k++) {
        mode_request rq = request(&f.c[k], 48, 1.0f, 7 + (uint64_t)k);
        metrics ref, other;
        metrics_start(&ref, "device");
        REQUIRE(mode_device_run(f.m, f.pool, &rq, NULL, NULL, &ref, f.err, sizeof f.err) == 0);
        mode_request rq2 = request(&f.c[k], 48, 1.0f, 8 + (uint64_t)k);
        metrics_start(&other, "device");
        REQUIRE(mode_device_run(f.m, f.pool, &rq2, NULL, NULL, &other, f.err, sizeof f.err) == 0);
        CHECK_MSG(!cases_same_ids(&other, ref.ids, ref.tokens), "another seed gives the same tokens: the test would prove nothing");
        CHECK_MSG(!cases_same_ids(&ref, f.c[k].out, ref.tokens < f.c[k].n_out ? ref.tokens : f.c[k].n_out), "temperature 1 is greedy?");
        for (int i = 0; i < 4; i++) {
            pd_plan p = {0, 5, handovers[i] == 1000 ? PD_NEVER : PD_FIXED, handovers[i]};
            metrics mt;
            int rc = run_pd(f.m, f.pool, &o, &p, &rq, NULL, NULL, &mt, f.note, sizeof f.note, f.err, sizeof f.err);
            CHECK_MSG(rc == 0, "%s", f.err);
            CHECK_MSG(cases_same_ids(&mt, ref.ids, ref.tokens), "prompt '%s', hand-over at %d: %d tokens", f.c[k].text,
                      handovers[i], mt.tokens);
            metrics_free(&mt);
        }
        metrics_free(&ref);
        metrics_free(&other);
    }
    fx_free(&f);
}

/* The releases the user sees keep the pace: token i never before the first + i * tpot. */
TEST(test_pd_releases_keep_the_pace) {
    fx f;
    REQUIRE_MSG(fx_init(&f), "%s", f.err);
    remote_opts o = local_opts();
    pd_plan p = {8, 16, PD_FIXED, 6}; /* the cloud bursts 6 tokens in well under 8 ms each; the device the rest */
    mode_request rq = request(&f.c[0], 12, 0, 1);
    metrics mt;
    REQUIRE_MSG(run_pd(f.m, f.pool, &o, &p, &rq, NULL, NULL, &mt, f.note, sizeof f.note, f.err, sizeof f.err) == 0, "%s", f.err);
    CHECK(cases_same_ids(&mt, f.c[0].out, 12));
    for (int i = 1; i < mt.tokens; i++) /* slots are 8 ms apart (a release may be late, never early) */
        CHECK_MSG(mt.t_token[i] - mt.t_token[0] >= 8.0 * i - 0.01, "token %d at %.3f ms", i, mt.t_token[i] - mt.t_token[0]);
    CHECK_NEAR(mt.pace_ms, 8, 0);
    CHECK(mt.has_pd);
    metrics_free(&mt);
    fx_free(&f);
}

/* A device far slower at catching up than the cloud streams would never catch up while the cloud runs ahead:
 * it stops the cloud itself once the tokens it knows last the user until it has run them (measured speed). */
TEST(test_pd_device_stops_the_cloud_once_in_time) {
    fx f;
    REQUIRE_MSG(fx_init(&f), "%s", f.err);
    remote_opts o = local_opts();
    /* a token every 20 ms for 480 ms, and a device slowed to 12 ms a position as the probe measures it (whatever
     * the build). Caught up a layer at a time between polls of the cloud, with caches gone cold over each
     * stretched step, a position cost about 4x what the probe's warm decode measured (stories260K, 2026-12-01): the
     * device never catches up with the stream on its own, and the 200 ms pace leaves room for it to run 13x
     * slower than probed (a margin of 1.25 on 96 ms a position still fits a 200 ms slot) */
    REQUIRE(link_parse("down=16kbit", &o.link, f.err, sizeof f.err) == 0);
    pd_costs dev;
    REQUIRE_MSG(pdplan_probe(f.m, f.pool, 1, &dev, f.err, sizeof f.err) == 0, "%s", f.err);
    double slowdown = 12 / (dev.dev_fixed_ms + dev.dev_pos_ms);
    mode_request rq = request(&f.c[0], 24, 0, 1);
    pd_plan p = {200, 1, PD_CAUGHT_UP, 24};
    remote r;
    REQUIRE_MSG(remote_open(&r, f.m, &o, FRAME_MODE_PD, 0, rq.n_prompt + 24, &rq.sampling, f.err, sizeof f.err) == 0,
                "%s", f.err);
    metrics mt;
    metrics_start(&mt, "pd");
    int rc = mode_pd_run(f.m, f.pool, &r, &p, slowdown > 1 ? slowdown : 1, &rq, NULL, NULL, &mt, f.note, sizeof f.note, f.err, sizeof f.err);
    CHECK_MSG(rc == 0, "%s", f.err);
    CHECK_EQ_INT(remote_close(&r, f.err, sizeof f.err), 0);
    CHECK(cases_same_ids(&mt, f.c[0].out, 24));
    CHECK_MSG(mt.handover_at >= 1 && mt.handover_at < 24, "hand-over at %d", mt.handover_at);
    CHECK_EQ_INT(mt.fallback_at, -1);
    metrics_free(&mt);
    fx_free(&f);
}

/* ---- losing the cloud ---- */

TEST(test_pd_no_cloud_device_alone) {
    fx f;
    REQUIRE_MSG(fx_init(&f), "%s", f.err);
    pd_plan p = {0, 16, PD_CAUGHT_UP, 32};
    mode_request rq = request(&f.c[0], f.c[0].n_out, 0, 1);
    metrics mt;
    REQUIRE_MSG(run_pd(f.m, f.pool, NULL, &p, &rq, NULL, NULL, &mt, f.note, sizeof f.note, f.err, sizeof f.err) == 0, "%s", f.err);
    CHECK(cases_same_ids(&mt, f.c[0].out, f.c[0].n_out));
    CHECK_EQ_INT(mt.fallback_at, 0);
    CHECK_EQ_INT(mt.handover_at, 0);
    CHECK_EQ_INT(mt.cloud_tokens, 0);
    CHECK_MSG(strstr(f.note, "no connection to the cloud") && strstr(f.note, "finishes alone from token 0"), "%s", f.note);
    metrics_free(&mt);
    fx_free(&f);
}

typedef struct killer {
    pid_t pid;
    int at, seen;
} killer;

static void kill_at(void *arg, int id) {
    (void)id;
    killer *k = arg;
    if (++k->seen == k->at && k->pid > 0) {
        kill(k->pid, SIGKILL);
        waitpid(k->pid, NULL, 0);
        k->pid = 0;
    }
}

/* Starts `duet cloud` on a free port; returns its pid and writes "127.0.0.1:PORT" into addr. */
static pid_t spawn_cloud(char *addr, size_t cap) {
    const char *bin = getenv("DUET_BIN") ? getenv("DUET_BIN") : "build/duet";
    char path[64];
    snprintf(path, sizeof path, "/tmp/duet-test-pd-%d.out", (int)getpid());
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (!freopen(path, "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(127);
        execl(bin, bin, "cloud", "-m", MODEL, "--port", "0", "-q", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) { /* up to 10 s for "serving ... on *:PORT" */
        usleep(100000);
        char *out = test_read_file(path, NULL);
        const char *on = out ? strstr(out, " on *:") : NULL;
        if (on) {
            snprintf(addr, cap, "127.0.0.1:%d", atoi(on + 6));
            free(out);
            remove(path);
            return pid;
        }
        free(out);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    remove(path);
    return -1;
}

/* A real cloud process killed with SIGKILL in the middle of its stream: the device keeps every token it
 * received, runs them and the prompt itself and finishes with exactly device-only's tokens. */
TEST(test_pd_cloud_process_killed_mid_stream) {
    fx f;
    REQUIRE_MSG(fx_init(&f), "%s", f.err);
    char addr[64];
    REQUIRE(f.c[0].n_out == 64);
    pd_plan plans[2] = {{0, 16, PD_NEVER, 64}, {0, 16, PD_FIXED, 40}};
    for (int i = 0; i < 2; i++) {
        killer k = {spawn_cloud(addr, sizeof addr), 5, 0};
        REQUIRE_MSG(k.pid > 0, "duet cloud did not start");
        remote_opts o = local_opts();
        o.cloud = addr;
        /* a slow downlink (40-byte frames at 16 kbit/s: 20 ms each) keeps the stream going when the kill comes */
        REQUIRE(link_parse("down=16kbit", &o.link, f.err, sizeof f.err) == 0);
        mode_request rq = request(&f.c[0], 64, 0, 1);
        metrics mt;
        int rc = run_pd(f.m, f.pool, &o, &plans[i], &rq, kill_at, &k, &mt, f.note, sizeof f.note, f.err, sizeof f.err);
        CHECK_MSG(rc == 0, "%s", f.err);
        CHECK_MSG(cases_same_ids(&mt, f.c[0].out, 64), "plan %d: %d tokens", i, mt.tokens);
        CHECK_MSG(mt.fallback_at >= 5 && mt.fallback_at < 40, "plan %d: fallback at %d", i, mt.fallback_at);
        CHECK_EQ_INT(mt.handover_at, mt.fallback_at);
        CHECK_MSG(strstr(f.note, "the cloud") && strstr(f.note, "finishes alone"), "%s", f.note);
        metrics_free(&mt);
        if (k.pid > 0) {
            kill(k.pid, SIGKILL);
            waitpid(k.pid, NULL, 0);
        }
    }
    fx_free(&f);
}

/* ---- a misbehaving cloud ---- */

enum { BAD_ORDER, BAD_PAST, BAD_ID, BAD_ERROR, BAD_DROP };

typedef struct bad_cloud {
    transport_listener *l;
    int act;
    const int *ids; /* the right tokens, to stream before misbehaving */
} bad_cloud;

static void send_tok(transport *t, uint32_t pos, int32_t id) {
    frame_msg m = {.type = FRAME_TOKENS, .session = 7};
    m.u.tokens = (frame_tokens){.pos0 = pos, .n = 1, .ids = &id};
    transport_send(t, &m, NULL, 0);
}

/* Speaks the handshake like a real cloud, streams 3 right tokens, then misbehaves. */
static void *bad_main(void *arg) {
    bad_cloud *f = arg;
    frame_request q;
    transport *t = cases_fake_cloud_accept(f->l, &q);
    if (!t) return NULL;
    for (uint32_t i = 0; i < 3; i++) send_tok(t, q.pos + i, f->ids[i]);
    if (f->act == BAD_ORDER) send_tok(t, q.pos + 4, f->ids[4]);
    if (f->act == BAD_ID) send_tok(t, q.pos + 3, 1 << 20);
    if (f->act == BAD_PAST)
        for (uint32_t i = 3; i <= q.count; i++) send_tok(t, q.pos + i, f->ids[i]);
    if (f->act == BAD_ERROR) {
        frame_msg m;
        frame_error_msg(&m, 7, FRAME_E_INTERNAL, "out of cheese");
        transport_send(t, &m, NULL, 0);
    }
    cases_fake_cloud_end(t, f->act == BAD_DROP);
    return NULL;
}

TEST(test_pd_bad_cloud_device_finishes) {
    fx f;
    REQUIRE_MSG(fx_init(&f), "%s", f.err);
    struct { int act, n, keep; const char *msg; } cases[] = {
        {BAD_ORDER, 16, 3, "out of order"},
        {BAD_PAST, 6, 5, "past the request (position"},
        {BAD_ID, 16, 3, "outside the vocabulary"},
        {BAD_ERROR, 16, 3, "out of cheese"},
        {BAD_DROP, 16, 3, "closed the connection"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bad_cloud b = {transport_listen("127.0.0.1", 0, f.err, sizeof f.err), cases[i].act, f.c[0].out};
        REQUIRE(b.l);
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, bad_main, &b) == 0);
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", transport_listener_port(b.l));
        remote_opts o = local_opts();
        o.cloud = addr;
        o.timeout_ms = 3000;
        mode_request rq = request(&f.c[0], cases[i].n, 0, 1);
        pd_plan p = {0, 16, PD_NEVER, cases[i].act == BAD_PAST ? 5 : 1000};
        metrics mt;
        f.note[0] = 0;
        int rc = run_pd(f.m, f.pool, &o, &p, &rq, NULL, NULL, &mt, f.note, sizeof f.note, f.err, sizeof f.err);
        CHECK_MSG(rc == 0, "case %zu: %s", i, f.err);
        CHECK_MSG(strstr(f.note, cases[i].msg) != NULL, "case %zu: %s", i, f.note);
        CHECK_EQ_INT(mt.fallback_at, cases[i].keep);
        CHECK_MSG(cases_same_ids(&mt, f.c[0].out, cases[i].n), "case %zu: %d tokens", i, mt.tokens);
        metrics_free(&mt);
        pthread_join(th, NULL);
        transport_listener_free(b.l);
    }
    fx_free(&f);
}

/* ---- the settings ---- */

/* The cost model's device time for n positions in chunks (docs/PD.md), written out independently. */
static double model_catch_up(const pd_costs *c, int n, int chunk) {
    double t = 0;
    for (int done = 0; done < n; done += chunk) t += c->dev_fixed_ms + (n - done < chunk ? n - done : chunk) * c->dev_pos_ms;
    return t;
}

TEST(test_pdplan_auto_meets_its_constraints) {
    char err[256], note[256];
    pd_costs c = {.dev_fixed_ms = 30, .dev_pos_ms = 2, .n_layers = 16, .cloud_ttft_ms = 300, .cloud_tpot_ms = 10,
                  .cloud_pos_ms = 0.5};
    pd_plan p;
    pd_forecast fc;
    int P = 128, N = 200;
    REQUIRE_MSG(pdplan_auto(&c, P, N, 0, 0, &p, &fc, note, sizeof note, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(p.handover, PD_CAUGHT_UP);
    CHECK_NEAR(p.tpot_ms, 1.1 * 32, 1e-9); /* the device's own step, with a margin */
    CHECK(note[0] == 0);
    /* one layer of one chunk fits in 15% of the pace, one more position would not */
    CHECK((c.dev_fixed_ms + p.chunk * c.dev_pos_ms) / 16 <= 0.15 * p.tpot_ms);
    CHECK((c.dev_fixed_ms + (p.chunk + 1) * c.dev_pos_ms) / 16 > 0.15 * p.tpot_ms);
    int H = fc.handover_at;
    CHECK_EQ_INT(p.cloud_tokens, N); /* not capped: the device stops the cloud when it measures it is in time */
    CHECK_MSG(H > 0 && H < N, "H %d", H);
    /* the first hand-over in time */
    CHECK(model_catch_up(&c, P + H, p.chunk) <= c.cloud_ttft_ms + H * p.tpot_ms);
    CHECK(model_catch_up(&c, P + H - 1, p.chunk) > c.cloud_ttft_ms + (H - 1) * p.tpot_ms);
    CHECK_NEAR(fc.cloud_busy_ms, P * 0.5 + H * 10, 1e-6);
    CHECK_NEAR(fc.ttft_ms, 300, 1e-9);

    /* --max-tpot bounds the chunk: a layer of it fits in max - pace */
    REQUIRE(pdplan_auto(&c, P, N, 40, 50, &p, &fc, note, sizeof note, err, sizeof err) == 0);
    CHECK_NEAR(p.tpot_ms, 40, 0);
    CHECK((c.dev_fixed_ms + p.chunk * c.dev_pos_ms) / 16 <= 10);
    CHECK((c.dev_fixed_ms + (p.chunk + 1) * c.dev_pos_ms) / 16 > 10);

    /* a pace faster than the device decodes: said, and paced at what it can keep */
    REQUIRE(pdplan_auto(&c, P, N, 5, 0, &p, &fc, note, sizeof note, err, sizeof err) == 0);
    CHECK_MSG(strstr(note, "--tpot 5.0 ms is faster than this device decodes (32.0 ms"), "%s", note);
    CHECK(p.tpot_ms >= 32);
    /* a bound the device cannot keep but the cloud can: the cloud makes every token */
    REQUIRE(pdplan_auto(&c, P, N, 0, 20, &p, &fc, note, sizeof note, err, sizeof err) == 0);
    CHECK_EQ_INT(p.handover, PD_NEVER);
    CHECK_EQ_INT(p.cloud_tokens, N);
    CHECK_MSG(strstr(note, "the cloud makes every token"), "%s", note);
    /* a bound nobody can keep, and contradictory flags */
    CHECK_EQ_INT(pdplan_auto(&c, P, N, 0, 5, &p, &fc, note, sizeof note, err, sizeof err), DUET_EINVAL);
    CHECK_MSG(strstr(err, "--max-tpot 5.0 ms cannot be met") && strstr(err, "at least 10.0"), "%s", err);
    CHECK_EQ_INT(pdplan_auto(&c, P, N, 60, 50, &p, &fc, note, sizeof note, err, sizeof err), DUET_EINVAL);
    CHECK_MSG(strstr(err, "above --max-tpot"), "%s", err);

    /* a device that beats the cloud's first token needs no cloud; one that never catches up gets it all */
    c.cloud_ttft_ms = 1e6;
    REQUIRE(pdplan_auto(&c, P, N, 0, 0, &p, &fc, note, sizeof note, err, sizeof err) == 0);
    CHECK_EQ_INT(p.cloud_tokens, 0);
    c.cloud_ttft_ms = 300;
    c.dev_pos_ms = 40;
    REQUIRE(pdplan_auto(&c, P, N, 0, 0, &p, &fc, note, sizeof note, err, sizeof err) == 0);
    CHECK_EQ_INT(p.cloud_tokens, N);
    CHECK_EQ_INT(fc.handover_at, -1);
}

TEST(test_pdplan_parse) {
    char err[256];
    pd_plan p = {10, 64, PD_CAUGHT_UP, 50};
    int is_auto;
    CHECK(pdplan_parse("auto", &p, &is_auto, err, sizeof err) == 0 && is_auto);
    CHECK(pdplan_parse("never", &p, &is_auto, err, sizeof err) == 0 && !is_auto && p.handover == PD_NEVER);
    CHECK(pdplan_parse("handover=5,chunk=3", &p, &is_auto, err, sizeof err) == 0);
    CHECK(p.handover == PD_FIXED && p.cloud_tokens == 5 && p.chunk == 3 && p.tpot_ms == 10);
    CHECK(pdplan_parse("caught-up,cloud=7", &p, &is_auto, err, sizeof err) == 0);
    CHECK(p.handover == PD_CAUGHT_UP && p.cloud_tokens == 7 && p.chunk == 3);
    const char *bad[] = {"", "fast", "chunk=0", "handover=-1", "handover=x", "handover=", "chunk=4", "never=3",
                         "handover=99999999999", ",,,", "auto,never"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pd_plan q = p;
        err[0] = 0;
        CHECK_MSG(pdplan_parse(bad[i], &q, &is_auto, err, sizeof err) == DUET_EINVAL, "'%s' taken", bad[i]);
        CHECK_MSG(strstr(err, "--pd-plan"), "'%s': %s", bad[i], err);
        CHECK(!memcmp(&q, &p, sizeof p));
    }
}

/* ---- the CLI ---- */

static json *run_json(const char *args, int *status) {
    char *out = test_run_cli(args, status, 0);
    if (!out) return NULL;
    char err[256];
    json *doc = json_parse(out, strlen(out), err, sizeof err);
    if (!doc) test_fail(__FILE__, __LINE__, "%s: not JSON (%s): %s", args, err, out);
    free(out);
    return doc;
}

TEST(test_pd_cli) {
    struct { const char *args; int handover, cloud_tokens, fallback; } cases[] = {
        {"--pd-plan handover=5 --tpot 1", 5, 5, -1},
        {"--pd-plan never,chunk=3 --link lan", -1, 48, -1},
        {"--pd-plan handover=10 --cloud 127.0.0.1:1", 0, 0, 0}, /* unreachable: the device answers alone */
        {"", -2, -2, -1},                                      /* auto */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[512];
        snprintf(args, sizeof args, "run --mode pd -m " MODEL " -p 'Once upon a time' -n 48 --compare --json %s",
                 cases[i].args);
        int st;
        json *doc = run_json(args, &st);
        REQUIRE(doc);
        CHECK_MSG(st == 0, "%s: status %d", args, st);
        const json_val *r = json_root(doc);
        CHECK_EQ_INT(json_num(json_get(r, "tokens")), 48);
        CHECK_NEAR(json_num(json_get(json_get(r, "fidelity"), "exact_match_rate")), 1.0, 0);
        if (cases[i].handover > -2) CHECK_EQ_INT(json_num(json_get(r, "handover_at")), cases[i].handover);
        if (cases[i].cloud_tokens > -2) CHECK_EQ_INT(json_num(json_get(r, "cloud_tokens")), cases[i].cloud_tokens);
        if (cases[i].fallback < 0) CHECK(!json_get(r, "fallback_at")); /* printed only when the cloud was lost */
        else CHECK_EQ_INT(json_num(json_get(r, "fallback_at")), cases[i].fallback);
        CHECK(json_get(r, "pace_ms") && json_get(json_get(r, "tbt_ms"), "p90") && json_get(json_get(r, "tbt_ms"), "max"));
        json_free(doc);
    }
    int st;
    char *out = test_run_cli("run --mode pd -m " MODEL " -p 'Once upon a time' -n 48 --pd-plan handover=3 --tpot 1", &st, 0);
    REQUIRE(out);
    const char *want = "Once upon a time, there was a little girl named Lily.";
    CHECK_MSG(st == 0 && !strncmp(out, want, strlen(want)), "%s", out);
    free(out);
}
