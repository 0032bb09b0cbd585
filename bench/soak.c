/* soak: N minutes of legitimate devices (cloud and split mode, with and without an emulated link) mixed with
 * hostile ones against one real `duet cloud` process on loopback. Checks that every legitimate request got
 * exactly the device-only greedy output, counts every refusal the hostile clients got by its ERROR code, and
 * that the cloud's RSS, threads and open file descriptors return to their idle level; then stops the cloud
 * with SIGTERM while hostile clients are connected and times its exit (at most 2 s).
 *
 *     soak DUET_BIN MODEL [-t MINUTES (default 10; fractions allowed)] [-l LEGIT_THREADS] [-x HOSTILE_THREADS]
 *
 * Bounded in count and time: a fixed number of threads, each one request or attack at a time, every wait
 * with a deadline. Exit status 0 when every check holds. */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "modes/mode.h"

extern char **environ;

#define N_PROMPTS 4
#define N_TOK 16
#define N_CODES 32 /* ERROR codes -100..-131 counted by name, others together */

static const char *PROMPTS[N_PROMPTS] = {"Once upon a time", "The cat", "Lily wanted to", "One day, a little"};

typedef struct shared {
    duet_model *m;
    const char *model_path;
    int port;
    int prompt[N_PROMPTS][32], n_prompt[N_PROMPTS];
    int ref[N_PROMPTS][N_TOK], n_ref[N_PROMPTS];
    atomic_int stop;
    atomic_int cloud_gone; /* SIGTERM sent: a request the cloud no longer opens is not counted */
    atomic_long legit_ok, legit_bad, legit_err, legit_fallback;
    atomic_long hostile_runs, refusals[N_CODES + 1], hostile_closed, closed_kind[6];
    pthread_mutex_t mu;
    char first_bad[512];
} shared;

static shared g;

static void sleep_ms(int ms) { nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L}, NULL); }

/* ---- the cloud process ---- */

static FILE *g_cloud_out; /* the cloud's stdout, kept open so its summary line does not meet a closed pipe */

static pid_t cloud_start(const char *bin, const char *model, int *port) {
    int fds[2];
    if (pipe(fds)) return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", 0, 0);
    char *argv[] = {(char *)bin, "cloud", "-m", (char *)model, "--host", "127.0.0.1", "--port", "0", "-q",
                    "--idle-timeout", "4000", "--handshake-timeout", "2000", "--max-per-address", "64",
                    "--memory-budget", "268435456", NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc) return close(fds[0]), -1;
    FILE *f = fdopen(fds[0], "r");
    char line[512] = "";
    *port = 0;
    if (f && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "127.0.0.1:");
        if (at) *port = atoi(at + 10);
    }
    g_cloud_out = f;
    return *port ? pid : -1;
}

typedef struct usage {
    long rss_kb;
    int threads, fds;
} usage;

static usage usage_of(pid_t pid) {
    usage u = {0, 0, 0};
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) u.rss_kb = atol(line + 6);
        if (!strncmp(line, "Threads:", 8)) u.threads = atoi(line + 8);
    }
    if (f) fclose(f);
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d));) u.fds += e->d_name[0] != '.';
    if (d) closedir(d);
    return u;
}

/* ---- legitimate devices ---- */

static void *legit_main(void *arg) {
    long k = (long)arg;
    char addr[64], err[512];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", g.port);
    for (long i = k; !atomic_load(&g.stop); i++) {
        int p = (int)(i % N_PROMPTS), cloud_mode = i % 2 == 0;
        int n = g.n_ref[p];
        mode_request rq = {g.prompt[p], g.n_prompt[p], N_TOK, {0, 0, 1, 1}, -1};
        remote_opts o = remote_opts_default();
        o.cloud = addr;
        o.timeout_ms = 20000;
        o.fallback = 1; /* a lost cloud is finished on the device: counted, and a failure while the cloud runs */
        o.model_path = g.model_path;
        if (i % 3 == 0) o.link.rtt_us = 5000; /* some over an emulated 5 ms link */
        if (i % 5 == 1) o.enc = FRAME_ENC_I8;
        remote r;
        metrics mt;
        metrics_start(&mt, cloud_mode ? "cloud" : "split");
        int a = cloud_mode ? 0 : 1 + (int)(i % 4);
        int rc = remote_open(&r, g.m, &o, cloud_mode ? FRAME_MODE_CLOUD : FRAME_MODE_SPLIT, a, rq.n_prompt + N_TOK,
                             &rq.sampling, err, sizeof err);
        int was_open = rc == 0;
        if (!rc) rc = cloud_mode ? mode_cloud_run(&r, &rq, NULL, NULL, &mt, err, sizeof err)
                                 : mode_split_run(g.m, NULL, &r, &rq, NULL, NULL, &mt, err, sizeof err);
        if (!rc) rc = remote_close(&r, err, sizeof err);
        remote_free(&r);
        /* int8 hidden states are lossy: split-mode int8 output is not held to the device-only reference */
        int exact = !(o.enc == FRAME_ENC_I8 && !cloud_mode);
        int same = !rc && mt.tokens == n;
        for (int j = 0; same && j < n; j++) same = mt.ids[j] == g.ref[p][j];
        if (rc && !was_open && atomic_load(&g.cloud_gone)) { /* never opened: the cloud was already stopping */
            metrics_free(&mt);
            continue;
        }
        if (!rc && mt.fallback_at >= 0) atomic_fetch_add(&g.legit_fallback, 1);
        if (rc) atomic_fetch_add(&g.legit_err, 1);
        else if (same || !exact) atomic_fetch_add(&g.legit_ok, 1);
        else atomic_fetch_add(&g.legit_bad, 1);
        if ((rc || (!same && exact)) && !g.first_bad[0]) {
            pthread_mutex_lock(&g.mu);
            snprintf(g.first_bad, sizeof g.first_bad, "%s mode, prompt %d: %.400s", cloud_mode ? "cloud" : "split", p,
                     rc ? err : "tokens differ from device-only");
            pthread_mutex_unlock(&g.mu);
        }
        metrics_free(&mt);
    }
    return NULL;
}

/* ---- hostile devices ---- */

static int raw_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {6, 0}; /* every read of a hostile client is bounded */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int raw_read(int fd, uint8_t *p, size_t n) {
    for (size_t got = 0; got < n;) {
        ssize_t r = recv(fd, p + got, n - got, 0);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Reads frames until an ERROR (its code) or the end of the connection (0). Large payloads are skipped. */
static int read_error(int fd) {
    frame_limits lim = frame_limits_default();
    static _Thread_local uint8_t payload[1 << 16];
    for (;;) {
        uint8_t hb[FRAME_HEADER_SIZE];
        frame_header h;
        if (raw_read(fd, hb, sizeof hb) || frame_header_decode(hb, sizeof hb, &lim, &h, NULL, 0)) return 0;
        if (h.len > sizeof payload) {
            for (uint32_t left = h.len; left;) {
                uint32_t n = left < sizeof payload ? left : sizeof payload;
                if (raw_read(fd, payload, n)) return 0;
                left -= n;
            }
            continue;
        }
        frame_msg m;
        if (raw_read(fd, payload, h.len) || frame_payload_decode(&h, payload, &lim, &m, NULL, 0)) return 0;
        if (m.type == FRAME_ERROR) return m.u.error.code;
    }
}

static void count_refusal(int code, int kind) {
    if (code == 0) atomic_fetch_add(&g.hostile_closed, 1), atomic_fetch_add(&g.closed_kind[kind], 1);
    else atomic_fetch_add(&g.refusals[code <= -100 && code > -100 - N_CODES ? -100 - code : N_CODES], 1);
}

static size_t frame_bytes(const frame_msg *m, uint32_t seq, uint8_t *buf, size_t cap) {
    size_t n = 0;
    frame_encode(m, seq, buf, cap, &n, NULL, 0);
    return n;
}

static size_t hello_bytes(uint8_t *buf, size_t cap, uint32_t a) {
    const duet_config *c = duet_model_config(g.m);
    frame_msg m = {.type = FRAME_HELLO};
    m.u.hello = (frame_hello){.fingerprint = duet_model_fingerprint(g.m), .dim = (uint32_t)c->dim, .layer_a = a,
                              .layer_b = (uint32_t)c->n_layers, .version = FRAME_VERSION,
                              .part = (uint8_t)(FRAME_PART_HEAD | (a ? 0 : FRAME_PART_EMBED)), .encodings = 7};
    return frame_bytes(&m, 0, buf, cap);
}

static void hostile_once(long i, unsigned *seed) {
    uint8_t b[4096];
    int fd = raw_connect();
    if (fd < 0) return;
    size_t n = 0;
    int code = 0;
    switch (i % 6) {
    case 0: /* garbage */
        for (n = 0; n < 512; n++) b[n] = (uint8_t)rand_r(seed);
        if (send(fd, b, n, MSG_NOSIGNAL) > 0) code = read_error(fd);
        break;
    case 1: /* trickling HELLO: a byte every 300 ms, against a 2 s handshake deadline */
        n = hello_bytes(b, sizeof b, 2);
        for (size_t k = 0; k < n && !atomic_load(&g.stop); k++) {
            if (send(fd, b + k, 1, MSG_NOSIGNAL) != 1) break;
            struct timeval tv = {0, 300000};
            fd_set rs;
            FD_ZERO(&rs);
            FD_SET(fd, &rs);
            if (select(fd + 1, &rs, NULL, NULL, &tv) > 0) break; /* the server answered: read it */
        }
        code = read_error(fd);
        break;
    case 2: { /* huge PING pads: 48 MiB PONGs asked for, more than the 256 MiB budget together */
        n = hello_bytes(b, sizeof b, 2);
        for (uint32_t s = 1; s <= 6; s++) {
            frame_msg m = {.type = FRAME_PING};
            m.u.ping.reply_pad = 48u << 20;
            n += frame_bytes(&m, s, b + n, sizeof b - n);
        }
        if (send(fd, b, n, MSG_NOSIGNAL) > 0) code = read_error(fd);
        break;
    }
    case 3: { /* slow reader: 4 MiB PONGs read a little at a time, then gone */
        n = hello_bytes(b, sizeof b, 2);
        for (uint32_t s = 1; s <= 8; s++) {
            frame_msg m = {.type = FRAME_PING};
            m.u.ping.reply_pad = 4u << 20;
            n += frame_bytes(&m, s, b + n, sizeof b - n);
        }
        if (send(fd, b, n, MSG_NOSIGNAL) > 0)
            for (int k = 0; k < 10 && !atomic_load(&g.stop); k++) {
                if (recv(fd, b, 256, 0) <= 0) break;
                sleep_ms(200);
            }
        break;
    }
    case 4: { /* mid-request disconnect: a cloud-mode stream asked for, then the socket closed */
        n = hello_bytes(b, sizeof b, 0);
        frame_msg m = {.type = FRAME_OPEN};
        m.u.open = (frame_open){.seed = 1, .n_ctx = 64, .mode = FRAME_MODE_CLOUD, .top_p = 1};
        n += frame_bytes(&m, 1, b + n, sizeof b - n);
        if (send(fd, b, n, MSG_NOSIGNAL) <= 0 || raw_read(fd, b, 76)) break; /* HELLO_OK */
        uint8_t ob[24];
        if (raw_read(fd, ob, sizeof ob)) break; /* OPENED */
        uint32_t sid = (uint32_t)ob[8] | (uint32_t)ob[9] << 8 | (uint32_t)ob[10] << 16 | (uint32_t)ob[11] << 24;
        int32_t ids[3] = {1, 400, 50};
        m = (frame_msg){.type = FRAME_PROMPT, .session = sid};
        m.u.tokens = (frame_tokens){.pos0 = 0, .n = 3, .ids = ids};
        n = frame_bytes(&m, 2, b, sizeof b);
        m = (frame_msg){.type = FRAME_REQUEST, .session = sid};
        m.u.request = (frame_request){.pos = 3, .count = 40, .kv_keep = FRAME_KEEP_ALL, .want = FRAME_WANT_STREAM};
        n += frame_bytes(&m, 3, b + n, sizeof b - n);
        if (send(fd, b, n, MSG_NOSIGNAL) > 0) recv(fd, b, 100, 0);
        break;
    }
    default: /* silent: connects and says nothing */
        code = read_error(fd);
        break;
    }
    close(fd);
    if (i % 6 != 3 && i % 6 != 4) count_refusal(code, (int)(i % 6));
    atomic_fetch_add(&g.hostile_runs, 1);
}

static void *hostile_main(void *arg) {
    long k = (long)arg;
    unsigned seed = (unsigned)k * 7919u + 1;
    for (long i = k; !atomic_load(&g.stop); i++) hostile_once(i, &seed);
    return NULL;
}

/* Runs nl legit and nx hostile threads for ms. */
static void run_for(int nl, int nx, double ms) {
    pthread_t th[64];
    int n = 0;
    atomic_store(&g.stop, 0);
    for (long i = 0; i < nl && n < 64; i++) pthread_create(&th[n++], NULL, legit_main, (void *)i);
    for (long i = 0; i < nx && n < 64; i++) pthread_create(&th[n++], NULL, hostile_main, (void *)i);
    for (double t0 = clock_now_ms(); clock_now_ms() - t0 < ms;) sleep_ms(100);
    atomic_store(&g.stop, 1);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
}

static const char *code_name(int i) {
    return i < N_CODES ? frame_err_name(-100 - i) : "other";
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: soak DUET_BIN MODEL [-t MINUTES] [-l LEGIT_THREADS] [-x HOSTILE_THREADS]\n");
        return 2;
    }
    double minutes = 10;
    int nl = 3, nx = 3;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-t")) minutes = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "-l")) nl = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-x")) nx = atoi(argv[i + 1]);
    }
    char err[512];
    pthread_mutex_init(&g.mu, NULL);
    g.model_path = argv[2];
    if (!(g.m = duet_model_load(argv[2], NULL, 0, err, sizeof err))) {
        fprintf(stderr, "soak: %s\n", err);
        return 1;
    }
    const duet_tokenizer *tok = duet_model_tokenizer(g.m, err, sizeof err);
    for (int p = 0; p < N_PROMPTS; p++) { /* the device-only references */
        g.n_prompt[p] = duet_tokenize(tok, PROMPTS[p], strlen(PROMPTS[p]), true, g.prompt[p], 32);
        mode_request rq = {g.prompt[p], g.n_prompt[p], N_TOK, {0, 0, 1, 1}, -1};
        metrics mt;
        metrics_start(&mt, "device");
        if (mode_device_run(g.m, NULL, &rq, NULL, NULL, &mt, err, sizeof err)) return fprintf(stderr, "soak: %s\n", err), 1;
        memcpy(g.ref[p], mt.ids, sizeof(int) * (size_t)mt.tokens);
        g.n_ref[p] = mt.tokens;
        metrics_free(&mt);
    }
    pid_t pid = cloud_start(argv[1], argv[2], &g.port);
    if (pid < 0) return fprintf(stderr, "soak: cannot start %s cloud\n", argv[1]), 1;
    char cpu[128] = "?";
    FILE *ci = fopen("/proc/cpuinfo", "r");
    for (char line[256]; ci && fgets(line, sizeof line, ci);)
        if (!strncmp(line, "model name", 10)) {
            snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
            cpu[strcspn(cpu, "\n")] = 0;
            break;
        }
    if (ci) fclose(ci);
    printf("soak: %.1f min, %d legitimate + %d hostile threads against duet cloud (pid %d, port %d), %s\n", minutes,
           nl, nx, (int)pid, g.port, cpu);
    fflush(stdout);

    run_for(nl, 0, 3000); /* warm-up, then the idle level */
    sleep_ms(1000);
    usage idle = usage_of(pid);
    long warm_ok = atomic_load(&g.legit_ok);
    double t0 = clock_now_ms();
    run_for(nl, nx, minutes * 60e3);
    double ran = (clock_now_ms() - t0) / 1e3;
    usage peak = usage_of(pid);
    usage after = peak;
    for (double t1 = clock_now_ms(); clock_now_ms() - t1 < 15000; sleep_ms(250)) { /* hostile ones time out */
        after = usage_of(pid);
        if (after.threads <= idle.threads && after.fds <= idle.fds) break;
    }
    sleep_ms(500);
    after = usage_of(pid);

    long ok = atomic_load(&g.legit_ok), bad = atomic_load(&g.legit_bad), errs = atomic_load(&g.legit_err);
    long fb = atomic_load(&g.legit_fallback), closed = atomic_load(&g.hostile_closed);
    printf("legitimate requests: %ld exact, %ld wrong, %ld failed, %ld finished on the device (after %ld warm-up "
           "ones)\n", ok - warm_ok, bad, errs, fb, warm_ok);
    if (g.first_bad[0]) printf("  first problem: %s\n", g.first_bad);
    printf("hostile clients: %ld runs over %.0f s; refusals:", atomic_load(&g.hostile_runs), ran);
    for (int i = 0; i <= N_CODES; i++)
        if (atomic_load(&g.refusals[i])) printf(" %s %ld,", code_name(i), atomic_load(&g.refusals[i]));
    printf(" closed without ERROR %ld (garbage %ld, trickle %ld, huge PING %ld, silent %ld)\n", closed,
           atomic_load(&g.closed_kind[0]), atomic_load(&g.closed_kind[1]), atomic_load(&g.closed_kind[2]),
           atomic_load(&g.closed_kind[5]));
    printf("cloud RSS/threads/fds: idle %ld kB/%d/%d, end of load %ld kB/%d/%d, after %ld kB/%d/%d\n", idle.rss_kb,
           idle.threads, idle.fds, peak.rss_kb, peak.threads, peak.fds, after.rss_kb, after.threads, after.fds);
    fflush(stdout);

    /* the stop: SIGTERM while hostile clients are connected and legitimate ones mid-request */
    long stop_ok0 = atomic_load(&g.legit_ok), stop_fb0 = atomic_load(&g.legit_fallback);
    atomic_store(&g.stop, 0);
    pthread_t th[8];
    int n = 0;
    for (long i = 0; i < 2; i++) pthread_create(&th[n++], NULL, legit_main, (void *)i);
    for (long i = 0; i < 6; i++) pthread_create(&th[n++], NULL, hostile_main, (void *)(i + 1000 - (1000 % 6)));
    sleep_ms(800);
    usage busy = usage_of(pid);
    double ts = clock_now_ms();
    atomic_store(&g.cloud_gone, 1);
    kill(pid, SIGTERM);
    int status = 0;
    double stop_ms = -1;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            stop_ms = clock_now_ms() - ts;
            break;
        }
        if (clock_now_ms() - ts > 10000) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        sleep_ms(5);
    }
    atomic_store(&g.stop, 1);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);

    if (g_cloud_out) fclose(g_cloud_out);
    printf("SIGTERM with %d threads busy in the cloud (idle %d): exit after %.0f ms, status %d; the legitimate "
           "devices then: %ld exact (%ld finished on the device), %ld wrong, %ld failed in all\n", busy.threads,
           idle.threads, stop_ms, WIFEXITED(status) ? WEXITSTATUS(status) : -1, atomic_load(&g.legit_ok) - stop_ok0,
           atomic_load(&g.legit_fallback) - stop_fb0, atomic_load(&g.legit_bad), atomic_load(&g.legit_err));
    bad = atomic_load(&g.legit_bad);
    errs = atomic_load(&g.legit_err);
    /* back to idle: within 4 MiB (allocator bookkeeping, cached thread stacks) */
    int mem_ok = after.rss_kb <= idle.rss_kb + 4096;
    int pass = bad == 0 && errs == 0 && after.threads == idle.threads && after.fds == idle.fds && mem_ok &&
               stop_ms >= 0 && stop_ms <= 2000 && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
               closed == 0 && fb == 0;
    printf("soak: %s\n", pass ? "PASS" : "FAIL");
    duet_model_free(g.m);
    return pass ? 0 : 1;
}
