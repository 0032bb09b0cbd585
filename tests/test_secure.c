/* Issue 13 end to end: TLS and the shared-secret token, every refusal one ERROR, the device's own checks
 * (session ids, PING in every state), emulated links at the CLI's extremes, and split and cloud mode
 * finishing on the device when a real `duet cloud` process is killed, frozen or answers garbage. */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/clock.h"
#include "cloud/server.h"
#include "modes/mode.h"
#include "net/transport.h"
#include "test.h"

#define MODEL "models/stories260K.gguf"
#define N_GEN 20
#define WAIT_MS 5000

extern char **environ;

typedef struct ref {
    duet_model *m;
    int L, dim;
    int prompt[16], n_prompt;
    metrics dev; /* device-only greedy generation of N_GEN tokens, EOS ignored */
} ref;

static mode_request ref_request(const ref *f) {
    mode_request rq = {f->prompt, f->n_prompt, N_GEN, {0, 0, 1, 1}, -1};
    return rq;
}

static int ref_init(ref *f) {
    char err[256];
    memset(f, 0, sizeof *f);
    if (!(f->m = duet_model_load(MODEL, NULL, 0, err, sizeof err))) return test_fail(__FILE__, __LINE__, "%s", err), -1;
    f->L = duet_model_config(f->m)->n_layers;
    f->dim = duet_model_config(f->m)->dim;
    const duet_tokenizer *tok = duet_model_tokenizer(f->m, err, sizeof err);
    f->n_prompt = duet_tokenize(tok, "Once upon a time", 16, true, f->prompt, 16);
    mode_request rq = ref_request(f);
    metrics_start(&f->dev, "device");
    if (mode_device_run(f->m, NULL, &rq, NULL, NULL, &f->dev, err, sizeof err) || f->dev.tokens != N_GEN)
        return test_fail(__FILE__, __LINE__, "reference: %s", err), -1;
    return 0;
}

static void ref_free(ref *f) {
    metrics_free(&f->dev);
    duet_model_free(f->m);
}

static void check_same(const ref *f, const metrics *mt, int line) {
    int same = mt->tokens == f->dev.tokens;
    for (int i = 0; same && i < mt->tokens; i++) same = mt->ids[i] == f->dev.ids[i];
    if (!same) test_fail(__FILE__, line, "%d tokens, not the device-only %d (or different ids)", mt->tokens, f->dev.tokens);
}

/* ---- certificates, made at run time with the openssl CLI ---- */

typedef struct certs {
    char dir[64], ca[96], other_ca[96], cert[96], key[96];
} certs;

static int certs_make(certs *c) {
    snprintf(c->dir, sizeof c->dir, "/tmp/duet-test-tls-%d", (int)getpid());
    snprintf(c->ca, sizeof c->ca, "%s/ca.crt", c->dir);
    snprintf(c->other_ca, sizeof c->other_ca, "%s/other.crt", c->dir);
    snprintf(c->cert, sizeof c->cert, "%s/srv.crt", c->dir);
    snprintf(c->key, sizeof c->key, "%s/srv.key", c->dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "set -e; mkdir -p %1$s; cd %1$s; k='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes';"
             "openssl req -x509 $k -keyout ca.key -out ca.crt -days 1 -subj /CN=duet-test-ca 2>/dev/null;"
             "openssl req -x509 $k -keyout other.key -out other.crt -days 1 -subj /CN=duet-other-ca 2>/dev/null;"
             "openssl req $k -keyout srv.key -out srv.csr -subj /CN=duet-test-cloud 2>/dev/null;"
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext;"
             "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 1 "
             "-extfile ext 2>/dev/null",
             c->dir);
    return system(cmd) == 0 ? 0 : (test_fail(__FILE__, __LINE__, "openssl could not make certificates"), -1);
}

static void certs_free(certs *c) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", c->dir);
    if (system(cmd)) {}
}

/* ---- an in-process cloud ---- */

typedef struct cloud {
    cloud_server *srv;
    char addr[64];
} cloud;

static int cloud_start(cloud *c, duet_model *m, server_opts o, int tls) {
    char err[256];
    o.host = "127.0.0.1";
    o.port = 0;
    if (!(c->srv = server_init(m, &o, err, sizeof err)) || server_start(c->srv, err, sizeof err))
        return test_fail(__FILE__, __LINE__, "%s", err), -1;
    snprintf(c->addr, sizeof c->addr, "%s127.0.0.1:%d", tls ? "tls://" : "", server_port(c->srv));
    return 0;
}

static int split_run(ref *f, remote_opts *o, metrics *mt, char *err, size_t errlen) {
    remote r;
    mode_request rq = ref_request(f);
    metrics_start(mt, "split");
    int rc = remote_open(&r, f->m, o, FRAME_MODE_SPLIT, 2, f->n_prompt + N_GEN, &rq.sampling, err, errlen);
    if (!rc) rc = mode_split_run(f->m, NULL, &r, &rq, NULL, NULL, mt, err, errlen);
    if (!rc) rc = remote_close(&r, err, errlen);
    remote_free(&r);
    return rc;
}

TEST(test_secure_tls_and_token) {
    ref f;
    certs c;
    if (ref_init(&f) || certs_make(&c)) return;
    char err[512] = "";
    const uint8_t *token = (const uint8_t *)"correct horse battery staple";
    server_opts so = server_opts_default();
    so.token = token;
    so.token_len = strlen((const char *)token);
    REQUIRE_MSG((so.tls = transport_tls_server(c.cert, c.key, err, sizeof err)), "%s", err);
    cloud cl;
    REQUIRE(cloud_start(&cl, f.m, so, 1) == 0);
    remote_opts o = remote_opts_default();
    o.cloud = cl.addr;
    o.tls_ca = c.ca;
    o.token = token;
    o.token_len = so.token_len;
    metrics mt;
    CHECK_MSG(split_run(&f, &o, &mt, err, sizeof err) == 0, "%s", err); /* TLS + token: served exactly */
    check_same(&f, &mt, __LINE__);
    metrics_free(&mt);

    /* megabyte frames both ways over TLS: the device's sender thread writes while its reader waits (a TLS read
     * that blocked inside the I/O lock once deadlocked exactly here) */
    transport_tls *ctls = transport_tls_client(c.ca, err, sizeof err);
    REQUIRE_MSG(ctls, "%s", err);
    transport_opts to = transport_opts_default(LINK_UP);
    to.tls = ctls;
    transport *t = transport_connect("127.0.0.1", server_port(cl.srv), &to, err, sizeof err);
    REQUIRE_MSG(t, "%s", err);
    frame_msg m = {.type = FRAME_AUTH};
    m.u.auth = (frame_auth){.len = (uint32_t)so.token_len, .token = token};
    frame_hello h = {.fingerprint = duet_model_fingerprint(f.m), .dim = (uint32_t)f.dim, .layer_a = 2,
                     .layer_b = (uint32_t)f.L, .version = FRAME_VERSION, .part = FRAME_PART_HEAD, .encodings = 1};
    REQUIRE(transport_send(t, &m, err, sizeof err) == 0);
    REQUIRE_MSG(transport_hello(t, &h, NULL, WAIT_MS, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < 3; i++) {
        m = (frame_msg){.type = FRAME_PING};
        m.u.ping = (frame_ping){.stamp = (uint64_t)i, .pad = 3u << 20, .reply_pad = 2u << 20};
        REQUIRE(transport_send(t, &m, err, sizeof err) == 0);
        CHECK_MSG(transport_expect(t, FRAME_PONG, &m, WAIT_MS, err, sizeof err) == 0, "%s", err);
        CHECK(m.u.ping.stamp == (uint64_t)i && m.u.ping.pad == 2u << 20);
    }
    transport_free(t);
    transport_tls_free(ctls);

    char fp[32];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)duet_model_fingerprint(f.m));
    o.token = (const uint8_t *)"wrong";
    o.token_len = 5;
    CHECK_EQ_INT(split_run(&f, &o, &mt, err, sizeof err), FRAME_E_REFUSED);
    CHECK_MSG(strstr(err, "authentication failed") && !strstr(err, fp), "%s", err);
    metrics_free(&mt);
    o.token = NULL;
    CHECK_EQ_INT(split_run(&f, &o, &mt, err, sizeof err), FRAME_E_REFUSED);
    CHECK_MSG(strstr(err, "requires a token") && !strstr(err, fp), "%s", err);
    metrics_free(&mt);

    o.token = token;
    o.tls_ca = c.other_ca; /* a certificate from a CA the device does not trust */
    CHECK(split_run(&f, &o, &mt, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "not trusted") != NULL, "%s", err);
    metrics_free(&mt);
    o.cloud = cl.addr + 6; /* plain TCP to a TLS cloud: no frames either way */
    CHECK(split_run(&f, &o, &mt, err, sizeof err) != 0);
    metrics_free(&mt);
    o.cloud = cl.addr;
    o.tls_ca = NULL;
    CHECK_EQ_INT(split_run(&f, &o, &mt, err, sizeof err), DUET_EINVAL);
    CHECK_MSG(strstr(err, "--tls-ca") != NULL, "%s", err);
    metrics_free(&mt);

    server_free(cl.srv);
    transport_tls_free(so.tls);
    certs_free(&c);
    ref_free(&f);
}

/* ---- a scripted fake cloud for the device's own checks ---- */

enum fake_kind { FAKE_OTHER_SESSION, FAKE_PING_FIRST, FAKE_GARBAGE };

typedef struct fake {
    ref *f;
    transport_listener *l;
    int kind;
    int got_pong;
    pthread_t th;
} fake;

static void *fake_main(void *arg) {
    fake *k = arg;
    char err[256];
    transport *t = NULL;
    transport_opts to = transport_opts_default(LINK_DOWN);
    if (transport_accept(k->l, &to, WAIT_MS, &t, err, sizeof err)) return NULL;
    frame_hello have = {.fingerprint = duet_model_fingerprint(k->f->m), .dim = (uint32_t)k->f->dim, .layer_a = 2,
                        .layer_b = (uint32_t)k->f->L, .version = FRAME_VERSION, .part = FRAME_PART_HEAD,
                        .encodings = 1u << FRAME_ENC_F16};
    frame_msg m;
    if (transport_hello_answer(t, &have, NULL, WAIT_MS, err, sizeof err) ||
        transport_expect(t, FRAME_OPEN, &m, WAIT_MS, err, sizeof err))
        goto out;
    m = (frame_msg){.type = FRAME_OPENED, .session = 7};
    m.u.opened.n_ctx = 256;
    transport_send(t, &m, NULL, 0);
    if (transport_expect(t, FRAME_UPLOAD, &m, WAIT_MS, err, sizeof err) ||
        transport_expect(t, FRAME_REQUEST, &m, WAIT_MS, err, sizeof err))
        goto out;
    uint32_t pos = m.u.request.pos;
    if (k->kind == FAKE_PING_FIRST) {
        m = (frame_msg){.type = FRAME_PING, .session = 7};
        m.u.ping.stamp = 42;
        transport_send(t, &m, NULL, 0);
        k->got_pong = transport_expect(t, FRAME_PONG, &m, WAIT_MS, err, sizeof err) == 0 && m.u.ping.stamp == 42;
    }
    int32_t id = 5, two[2] = {5, 6};
    m = (frame_msg){.type = FRAME_TOKENS, .session = k->kind == FAKE_OTHER_SESSION ? 8 : 7};
    m.u.tokens = (frame_tokens){.pos0 = pos, .n = k->kind == FAKE_GARBAGE ? 2 : 1,
                                .ids = k->kind == FAKE_GARBAGE ? two : &id};
    transport_send(t, &m, NULL, 0);
    transport_flush(t, WAIT_MS, NULL, 0);
    transport_recv(t, &m, 1000, NULL, 0); /* whatever the device does next */
out:
    transport_free(t);
    return NULL;
}

static int fake_run(ref *f, int kind, int fallback, fake *k, metrics *mt, char *err, size_t errlen) {
    memset(k, 0, sizeof *k);
    k->f = f;
    k->kind = kind;
    if (!(k->l = transport_listen("127.0.0.1", 0, err, errlen)) || pthread_create(&k->th, NULL, fake_main, k))
        return test_fail(__FILE__, __LINE__, "fake cloud: %s", err), -1;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", transport_listener_port(k->l));
    remote_opts o = remote_opts_default();
    o.cloud = addr;
    o.fallback = fallback;
    o.model_path = MODEL;
    o.timeout_ms = WAIT_MS;
    int rc = split_run(f, &o, mt, err, errlen);
    pthread_join(k->th, NULL);
    transport_listener_free(k->l);
    return rc;
}

TEST(test_secure_device_checks_session_and_answers_ping) {
    ref f;
    if (ref_init(&f)) return;
    char err[512] = "";
    fake k;
    metrics mt;
    CHECK_EQ_INT(fake_run(&f, FAKE_OTHER_SESSION, 0, &k, &mt, err, sizeof err), FRAME_E_SESSION);
    CHECK_MSG(strstr(err, "session 8") != NULL, "%s", err);
    metrics_free(&mt);
    CHECK(fake_run(&f, FAKE_PING_FIRST, 0, &k, &mt, err, sizeof err) != 0); /* the fake ends after one token */
    CHECK_EQ_INT(k.got_pong, 1);
    CHECK_EQ_INT(mt.tokens, 1);
    metrics_free(&mt);
    /* garbage (two tokens where one was asked) with the fallback: finished on the device, exactly */
    CHECK_MSG(fake_run(&f, FAKE_GARBAGE, 1, &k, &mt, err, sizeof err) == 0, "%s", err);
    check_same(&f, &mt, __LINE__);
    CHECK_EQ_INT(mt.fallback_at, 0);
    metrics_free(&mt);
    ref_free(&f);
}

/* ---- a real `duet cloud` process, killed or frozen mid-request ---- */

typedef struct proc {
    pid_t pid;
    int port;
} proc;

static int proc_start(proc *p) {
    const char *bin = getenv("DUET_BIN");
    if (!bin) return test_fail(__FILE__, __LINE__, "DUET_BIN is not set"), -1;
    int fds[2];
    if (pipe(fds)) return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    char *argv[] = {(char *)bin, "cloud", "-m", MODEL, "--host", "127.0.0.1", "--port", "0", "-q", NULL};
    int rc = posix_spawn(&p->pid, bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc) return close(fds[0]), test_fail(__FILE__, __LINE__, "spawn %s", bin), -1;
    FILE *f = fdopen(fds[0], "r");
    char line[512] = "";
    p->port = 0;
    if (f && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "127.0.0.1:");
        if (at) p->port = atoi(at + 10);
    }
    if (f) fclose(f);
    return p->port > 0 ? 0 : (test_fail(__FILE__, __LINE__, "no port in '%s'", line), -1);
}

typedef struct killer {
    pid_t pid;
    int after, sig;
} killer;

static void kill_after(void *arg, int id) {
    killer *k = arg;
    (void)id;
    if (--k->after == 0) kill(k->pid, k->sig);
}

static void lose_cloud(ref *f, int mode_cloud, int sig) {
    proc p;
    if (proc_start(&p)) return;
    char addr[64], err[512] = "";
    snprintf(addr, sizeof addr, "127.0.0.1:%d", p.port);
    remote_opts o = remote_opts_default();
    o.cloud = addr;
    o.fallback = 1;
    o.model_path = MODEL;
    o.timeout_ms = 500; /* a frozen cloud is given up after this */
    o.link.rtt_us = 10000; /* paces the stream, so cloud mode is killed mid-stream */
    mode_request rq = ref_request(f);
    killer k = {p.pid, 5, sig};
    remote r;
    metrics mt;
    metrics_start(&mt, "x");
    int rc = remote_open(&r, f->m, &o, mode_cloud ? FRAME_MODE_CLOUD : FRAME_MODE_SPLIT, mode_cloud ? 0 : 2,
                         f->n_prompt + N_GEN, &rq.sampling, err, sizeof err);
    if (!rc) {
        metrics_start(&mt, "x");
        rc = mode_cloud ? mode_cloud_run(&r, &rq, kill_after, &k, &mt, err, sizeof err)
                        : mode_split_run(f->m, NULL, &r, &rq, kill_after, &k, &mt, err, sizeof err);
    }
    remote_free(&r);
    kill(p.pid, SIGKILL);
    waitpid(p.pid, NULL, 0);
    CHECK_MSG(rc == 0, "%s mode, signal %d: %s", mode_cloud ? "cloud" : "split", sig, err);
    check_same(f, &mt, __LINE__);
    CHECK_MSG(mt.fallback_at >= 5 && mt.fallback_at < N_GEN, "fallback_at %d", mt.fallback_at);
    metrics_free(&mt);
}

TEST(test_secure_fallback_when_the_cloud_is_killed_or_frozen) {
    ref f;
    if (ref_init(&f)) return;
    lose_cloud(&f, 0, SIGKILL);
    lose_cloud(&f, 0, SIGSTOP);
    lose_cloud(&f, 1, SIGKILL);
    lose_cloud(&f, 1, SIGSTOP);
    ref_free(&f);
}

/* Without the fallback the loss is an error, and the tokens so far are still in the metrics. */
TEST(test_secure_no_fallback_is_an_error) {
    ref f;
    if (ref_init(&f)) return;
    proc p;
    if (proc_start(&p) == 0) {
        char addr[64], err[512] = "";
        snprintf(addr, sizeof addr, "127.0.0.1:%d", p.port);
        remote_opts o = remote_opts_default();
        o.cloud = addr;
        mode_request rq = ref_request(&f);
        killer k = {p.pid, 3, SIGKILL};
        remote r;
        metrics mt;
        metrics_start(&mt, "split");
        int rc = remote_open(&r, f.m, &o, FRAME_MODE_SPLIT, 2, f.n_prompt + N_GEN, &rq.sampling, err, sizeof err);
        if (!rc) rc = mode_split_run(f.m, NULL, &r, &rq, kill_after, &k, &mt, err, sizeof err);
        remote_free(&r);
        waitpid(p.pid, NULL, 0);
        CHECK(rc != 0);
        CHECK_EQ_INT(mt.tokens, 3);
        CHECK_EQ_INT(mt.fallback_at, -1);
        metrics_free(&mt);
    }
    ref_free(&f);
}

/* Link emulation at values the CLI accepts that used to fail: a 2.1 s rtt (the CLOSE answer outlived the
 * server's 1 s closing grace) and a 100 bit/s uplink (HELLO alone took 6 s against a 5 s handshake). */
TEST(test_secure_slow_links_work) {
    ref f;
    if (ref_init(&f)) return;
    const char *specs[] = {"rtt=2100ms", "up=100bit"};
    for (int i = 0; i < 2; i++) {
        char err[512] = "";
        remote_opts o = remote_opts_default();
        o.model_path = MODEL;
        REQUIRE(link_parse(specs[i], &o.link, err, sizeof err) == 0);
        mode_request rq = ref_request(&f);
        rq.max_tokens = 2;
        remote r;
        metrics mt;
        metrics_start(&mt, "cloud");
        int rc = remote_open(&r, f.m, &o, FRAME_MODE_CLOUD, 0, f.n_prompt + 2, &rq.sampling, err, sizeof err);
        if (!rc && i == 0) rc = mode_cloud_run(&r, &rq, NULL, NULL, &mt, err, sizeof err);
        if (!rc && i == 0) rc = remote_close(&r, err, sizeof err); /* at 100 bit/s the open is enough (4 s) */
        remote_free(&r);
        CHECK_MSG(rc == 0, "--link %s: %s", specs[i], err);
        if (i == 0) CHECK(mt.tokens == 2 && mt.ids[0] == f.dev.ids[0] && mt.ids[1] == f.dev.ids[1]);
        metrics_free(&mt);
    }
    ref_free(&f);
}

/* A HIDDEN answer in int8 of rows holding inf/NaN is refused with one ERROR, not a silent close. */
TEST(test_secure_int8_hidden_of_nonfinite_rows_is_one_error) {
    ref f;
    if (ref_init(&f)) return;
    cloud cl;
    REQUIRE(cloud_start(&cl, f.m, server_opts_default(), 0) == 0);
    char err[256];
    transport_opts to = transport_opts_default(LINK_UP);
    transport *t = transport_connect("127.0.0.1", server_port(cl.srv), &to, err, sizeof err);
    REQUIRE(t);
    frame_hello h = {.fingerprint = duet_model_fingerprint(f.m), .dim = (uint32_t)f.dim, .layer_a = 1, .layer_b = 3,
                     .version = FRAME_VERSION, .part = 0, .encodings = FRAME_ENC_ALL};
    REQUIRE_MSG(transport_hello(t, &h, NULL, WAIT_MS, err, sizeof err) == 0, "%s", err);
    frame_msg m = {.type = FRAME_OPEN};
    m.u.open = (frame_open){.seed = 1, .n_ctx = 16, .mode = FRAME_MODE_HAT, .top_p = 1};
    REQUIRE(transport_send(t, &m, NULL, 0) == 0 && transport_expect(t, FRAME_OPENED, &m, WAIT_MS, NULL, 0) == 0);
    uint32_t sid = m.session;
    float x[2 * 64];
    for (int i = 0; i < 2 * 64; i++) x[i] = INFINITY;
    m = (frame_msg){.type = FRAME_UPLOAD, .session = sid};
    m.u.rows = (frame_rows){.pos0 = 0, .n = 2, .dim = (uint32_t)f.dim, .enc = FRAME_ENC_F32, .x = x};
    REQUIRE(transport_send(t, &m, NULL, 0) == 0);
    m = (frame_msg){.type = FRAME_REQUEST, .session = sid};
    m.u.request = (frame_request){.pos = 0, .count = 2, .kv_keep = FRAME_KEEP_ALL, .want = FRAME_WANT_HIDDEN,
                                  .enc = FRAME_ENC_I8};
    REQUIRE(transport_send(t, &m, NULL, 0) == 0);
    CHECK_EQ_INT(transport_expect(t, FRAME_HIDDEN, &m, WAIT_MS, err, sizeof err), FRAME_E_VALUE);
    CHECK_MSG(strstr(err, "int8") != NULL, "%s", err);
    transport_free(t);
    server_free(cl.srv);
    ref_free(&f);
}

/* The CLI end to end: `duet cloud` with TLS and a token, `duet run` with and without the right token; and a
 * `duet run` whose cloud is killed mid-request finishing on the device (--json shows fallback_at). */
static int sh(const char *fmt, const char *a, const char *b, const char *c, const char *d) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, a, b, c, d);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int slurp(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[n] = 0;
    if (f) fclose(f);
    return f ? 0 : -1;
}

TEST(test_secure_cli_tls_token_and_fallback) {
    const char *bin = getenv("DUET_BIN");
    REQUIRE_MSG(bin, "DUET_BIN is not set");
    certs c;
    if (certs_make(&c)) return;
    char tok[128], out[128], cl[128];
    snprintf(tok, sizeof tok, "%s/token", c.dir);
    snprintf(out, sizeof out, "%s/run.out", c.dir);
    snprintf(cl, sizeof cl, "%s/cloud.out", c.dir);
    FILE *f = fopen(tok, "w");
    REQUIRE(f);
    fputs("s3cret-token\n", f);
    fclose(f);
    /* a TLS cloud with a token; the device asks with the right token, then with a wrong one */
    CHECK_EQ_INT(sh("%1$s cloud -m " MODEL " --host 127.0.0.1 --port 0 --tls-cert %2$s --tls-key %3$s "
                    "--token-file %4$s/token > %4$s/cloud.out 2>&1 & echo $! > %4$s/pid; "
                    "for i in $(seq 100); do grep -q serving %4$s/cloud.out && break; sleep 0.05; done",
                    bin, c.cert, c.key, c.dir), 0);
    char text[4096];
    REQUIRE(slurp(cl, text, sizeof text) == 0);
    const char *at = strstr(text, "tls://127.0.0.1:");
    REQUIRE_MSG(at && strstr(text, "token required"), "%s", text);
    char url[64];
    snprintf(url, sizeof url, "tls://127.0.0.1:%d", atoi(at + 16));
    CHECK_EQ_INT(sh("%1$s run --mode split -m " MODEL " -n 8 --cloud %2$s --tls-ca %3$s --token-file %4$s/token "
                    "--json > %4$s/run.out 2>/dev/null", bin, url, c.ca, c.dir), 0);
    REQUIRE(slurp(out, text, sizeof text) == 0);
    CHECK_MSG(strstr(text, "\"tokens\":8") && !strstr(text, "fallback_at"), "%s", text);
    f = fopen(tok, "w");
    fputs("wrong\n", f);
    fclose(f);
    CHECK_EQ_INT(sh("%1$s run --mode split -m " MODEL " -n 8 --cloud %2$s --tls-ca %3$s --token-file %4$s/token "
                    "--fallback none > %4$s/run.out 2>&1", bin, url, c.ca, c.dir), 1);
    REQUIRE(slurp(out, text, sizeof text) == 0);
    CHECK_MSG(strstr(text, "authentication failed"), "%s", text);
    /* SIGTERM: the cloud stops and says what it served */
    CHECK_EQ_INT(sh("kill -TERM $(cat %1$s/pid); for i in $(seq 60); do kill -0 $(cat %1$s/pid) 2>/dev/null || "
                    "exit 0; sleep 0.05; done; exit 1", c.dir, "", "", ""), 0);
    REQUIRE(slurp(cl, text, sizeof text) == 0);
    CHECK_MSG(strstr(text, "stopped: 1 sessions"), "%s", text);

    /* a plain cloud killed after the device's first tokens: --fallback device (the default) finishes */
    CHECK_EQ_INT(sh("%1$s cloud -m " MODEL " --host 127.0.0.1 --port 0 > %2$s/cloud.out 2>&1 & echo $! > %2$s/pid; "
                    "for i in $(seq 100); do grep -q serving %2$s/cloud.out && break; sleep 0.05; done",
                    bin, c.dir, "", ""), 0);
    REQUIRE(slurp(cl, text, sizeof text) == 0);
    at = strstr(text, "127.0.0.1:");
    REQUIRE_MSG(at, "%s", text);
    snprintf(url, sizeof url, "127.0.0.1:%d", atoi(at + 10));
    /* 60 tokens at rtt 60 ms take ~4 s; the cloud is killed once the first tokens' text has appeared */
    CHECK_EQ_INT(sh("%1$s run --mode split -m " MODEL " -n 60 --cloud %2$s --link rtt=60ms --compare --json "
                    "> %3$s/run.out 2> %3$s/run.err & r=$!; "
                    "for i in $(seq 400); do [ $(cat %3$s/run.err 2>/dev/null | wc -c) -ge 12 ] && break; sleep 0.02; done; "
                    "kill -KILL $(cat %3$s/pid); wait $r",
                    bin, url, c.dir, ""), 0);
    REQUIRE(slurp(out, text, sizeof text) == 0);
    CHECK_MSG(strstr(text, "\"tokens\":60") && strstr(text, "fallback_at") && strstr(text, "\"exact_match_rate\":1.0000"),
              "%s", text);
    certs_free(&c);
}
