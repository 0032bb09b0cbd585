/* duet cloud: serve a part of a model to many devices until SIGINT or SIGTERM. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cloud/server.h"
#include "net/transport.h"

static const char *USAGE =
    "usage: duet cloud -m MODEL [--layers A:B] [--port P] [options]\n"
    "\n"
    "Serves layers [A,B) of MODEL to devices over the duet protocol (docs/PROTOCOL.md), each connection one\n"
    "session with its own KV cache, until SIGINT or SIGTERM; then closes every session and prints a summary.\n"
    "It holds the token embedding when A is 0 and the head when B is the layer count, and serves any device\n"
    "that asks for a part of what it holds: with every layer (the default) it serves cloud mode and split\n"
    "mode at any split point.\n"
    "\n"
    "  -m, --model PATH         GGUF model; devices must use the same file (its fingerprint is checked)\n"
    "      --layers A:B         layers to hold (default: all)\n"
    "      --host H             address to listen on (default: every local address)\n"
    "  -p, --port P             TCP port (default 7070; 0 = any free port, printed at start)\n"
    "  -t, --threads N          compute threads shared by all sessions (default 1; 0 = all CPUs)\n"
    "      --max-sessions N     sessions at once; more get ERROR LIMIT (default 64)\n"
    "      --max-frame BYTES    largest frame payload accepted (default 67108864)\n"
    "      --max-pending BYTES  per session: hidden states uploaded but not yet run (default 268435456)\n"
    "      --max-ctx N          positions per session (default: the model's context length)\n"
    "      --idle-timeout MS    close a session whose device is silent this long (default 60000)\n"
    "      --handshake-timeout MS  a connection must finish TLS, AUTH and HELLO within this, as a whole\n"
    "                           (default 5000)\n"
    "      --max-per-address N  connections at once from one address (default 16)\n"
    "      --memory-budget BYTES  all connections together: pending input, queued output and large receive\n"
    "                           buffers; beyond it ERROR LIMIT (default 1073741824)\n"
    "      --tls-cert FILE      serve TLS 1.3 with this certificate (PEM chain); needs --tls-key. Without it\n"
    "                           the cloud speaks plain TCP: anyone on the path reads token ids and hidden\n"
    "                           states, so keep plain TCP for loopback experiments\n"
    "      --tls-key FILE       the certificate's private key (PEM)\n"
    "      --token-file FILE    shared secret (1..256 bytes, trailing whitespace ignored): a device must send\n"
    "                           it (AUTH) before HELLO, else it is refused before it learns anything about\n"
    "                           the model; compared in constant time. Use it with TLS: plain TCP carries it\n"
    "                           in clear\n"
    "      --no-batching        each connection runs its own forward passes, taking turns on the threads\n"
    "                           (the old behaviour, a baseline for make bench-cloud). By default one scheduler\n"
    "                           runs every session's pending work together, one batch per step\n"
    "      --step-rows N        positions one step runs, all sessions together (default 256)\n"
    "      --piece N            positions of one prompt per step: a longer prefill runs in pieces beside the\n"
    "                           streams (default 64)\n"
    "      --max-queued N       positions waiting to run, all sessions; past it a REQUEST waits unread (the\n"
    "                           device's sends back up) and OPEN gets ERROR LIMIT (default 4096)\n"
    "      --mmap               read the weights in place from the mapped file instead of copying them into\n"
    "                           memory first: starts faster, may decode slower\n"
    "Also bounded (docs/PROTOCOL.md section 14 lists every limit): a whole frame must arrive within\n"
    "min(10 s, idle timeout, handshake timeout) of its first byte; a frame the device's emulated link would\n"
    "deliver more than the idle timeout ahead is refused; the link in a HELLO is bounded like --link.\n"
    "SIGINT or SIGTERM stops within about a second: every session gets ERROR \"the cloud server is stopping\".\n"
    "\n"
    "  -q, --quiet              no line per session (errors, the start line and the summary still print)\n"
    "  -h, --help               this text\n";

static cloud_server *g_server; /* for the signal handler */

static void on_signal(int sig) {
    (void)sig;
    if (g_server) server_stop(g_server);
}

static void log_line(void *arg, const char *line) {
    int quiet = *(const int *)arg;
    if (quiet && !strstr(line, "error")) return;
    fprintf(stderr, "duet cloud: %s\n", line);
}

int cmd_cloud(int argc, char **argv) {
    const char *model = NULL, *layers = NULL, *cert = NULL, *key = NULL;
    uint8_t token[FRAME_AUTH_MAX];
    size_t token_len = 0;
    int quiet = 0, load_flags = 0;
    server_opts o = server_opts_default();
    o.port = 7070;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = 1;
            continue;
        } else if (!strcmp(a, "--no-batching")) {
            o.no_batching = 1;
            continue;
        } else if (!strcmp(a, "--mmap")) {
            load_flags |= DUET_LOAD_MMAP;
            continue;
        }
        static const char *valued[] = {"-m", "--model", "--layers", "--host", "-p", "--port", "-t", "--threads",
                                       "--max-sessions", "--max-frame", "--max-pending", "--max-ctx", "--idle-timeout",
                                       "--handshake-timeout", "--max-per-address", "--memory-budget", "--tls-cert",
                                       "--tls-key", "--token-file", "--step-rows", "--piece", "--max-queued"};
        int known = 0;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++) known |= !strcmp(a, valued[k]);
        if (!known) {
            fprintf(stderr, "duet cloud: unknown option '%s' (see duet cloud --help)\n", a);
            return 2;
        }
        if (!(v = args_value("cloud", argc, argv, &i))) return 2;
        int bad = 0;
        uint64_t u = 0;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--layers")) layers = v;
        else if (!strcmp(a, "--tls-cert")) cert = v;
        else if (!strcmp(a, "--tls-key")) key = v;
        else if (!strcmp(a, "--token-file")) bad = args_token_file("cloud", v, token, sizeof token, &token_len);
        else if (!strcmp(a, "--host")) o.host = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--port")) bad = args_int("cloud", a, v, 0, 65535, &o.port);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) bad = args_int("cloud", a, v, 0, 256, &o.threads);
        else if (!strcmp(a, "--max-sessions")) bad = args_int("cloud", a, v, 1, 1 << 16, &o.max_sessions);
        else if (!strcmp(a, "--max-ctx")) bad = args_int("cloud", a, v, 1, 1 << 24, &o.max_ctx);
        else if (!strcmp(a, "--idle-timeout")) bad = args_int("cloud", a, v, 1, 1 << 30, &o.idle_timeout_ms);
        else if (!strcmp(a, "--handshake-timeout")) bad = args_int("cloud", a, v, 1, 1 << 30, &o.handshake_timeout_ms);
        else if (!strcmp(a, "--step-rows")) bad = args_int("cloud", a, v, 2, 65536, &o.step_rows);
        else if (!strcmp(a, "--piece")) bad = args_int("cloud", a, v, 1, 65536, &o.piece);
        else if (!strcmp(a, "--max-queued")) bad = args_int("cloud", a, v, 1, 1 << 30, &o.max_queued);
        else if (!strcmp(a, "--max-per-address")) bad = args_int("cloud", a, v, 1, 1 << 16, &o.max_per_address);
        else if (!(bad = args_u64("cloud", a, v, &u)) && (u == 0 || (!strcmp(a, "--max-frame") && u > UINT32_MAX))) {
            fprintf(stderr, "duet cloud: %s '%s' must be between 1 and %s\n", a, v,
                    !strcmp(a, "--max-frame") ? "4294967295" : "2^64-1");
            bad = 1;
        } else if (!strcmp(a, "--max-frame")) o.max_frame = (uint32_t)u;
        else if (!strcmp(a, "--memory-budget")) o.memory_budget = (size_t)u;
        else o.max_pending_bytes = (size_t)u;
        if (bad) return 2;
    }
    if (!model) {
        fprintf(stderr, "duet cloud: -m MODEL is required, e.g. -m models/stories260K.gguf\n");
        return 2;
    }
    int a = 0, b = -1, used = 0;
    if (layers && (sscanf(layers, "%d:%d%n", &a, &b, &used) != 2 || layers[used] || a < 0 || b <= a)) {
        fprintf(stderr, "duet cloud: --layers '%s' is not A:B with 0 <= A < B\n", layers);
        return 2;
    }

    if (!cert != !key) {
        fprintf(stderr, "duet cloud: --tls-cert and --tls-key go together\n");
        return 2;
    }
    char err[512];
    int status = 1;
    if (cert && !(o.tls = transport_tls_server(cert, key, err, sizeof err))) {
        fprintf(stderr, "duet cloud: %s\n", err);
        return 2;
    }
    if (token_len) {
        o.token = token;
        o.token_len = token_len;
    }
    duet_part none = {0};
    duet_model *m = duet_model_load(model, &none, 0, err, sizeof err); /* metadata only: the layer count */
    cloud_server *s = NULL;
    if (!m) goto fail;
    int n_layers = duet_model_config(m)->n_layers;
    duet_model_free(m);
    m = NULL;
    if (b < 0) b = n_layers;
    if (b > n_layers) {
        fprintf(stderr, "duet cloud: --layers %d:%d, but the model has %d layers\n", a, b, n_layers);
        return 2;
    }
    duet_part part = {.n_spans = 1, .span = {{a, b}}, .embed = a == 0, .head = b == n_layers};
    if (!(m = duet_model_load(model, &part, load_flags, err, sizeof err))) goto fail;
    o.log = log_line;
    o.log_arg = &quiet;
    /* Frame buffers over 64 KiB live for one frame: a fixed mmap threshold gives each its own mapping, returned
     * on free. glibc's default threshold follows the largest block freed, so after one 48 MiB PONG every later
     * large buffer came from the heap and the idle footprint crept up (make soak: 7 MB to 29 MB in 10 min). */
    mallopt(M_MMAP_THRESHOLD, TRANSPORT_SMALL);
    if (!(s = server_init(m, &o, err, sizeof err))) goto fail;
    /* The handlers go in before "serving" is printed: whoever waits for that line may signal at once. */
    g_server = s;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    printf("duet cloud: serving %s layers %d:%d on %s%s:%d (fingerprint %016llx)%s\n", model, a, b, o.tls ? "tls://" : "",
           o.host ? o.host : "*", server_port(s), (unsigned long long)duet_model_fingerprint(m),
           token_len ? ", token required" : "");
    fflush(stdout);

    int rc = server_run(s);
    server_stats st;
    server_stats_get(s, &st);
    printf("duet cloud: stopped: %llu sessions, %llu tokens, %llu positions, up %llu B, down %llu B, "
           "cloud compute %.1f ms, %llu errors, %llu forward steps (largest: %d positions of %d sessions)\n",
           (unsigned long long)st.sessions_total, (unsigned long long)st.tokens, (unsigned long long)st.positions,
           (unsigned long long)st.bytes_up, (unsigned long long)st.bytes_down, st.compute_ms,
           (unsigned long long)st.errors, (unsigned long long)st.steps, st.step_rows_max, st.step_jobs_max);
    g_server = NULL;
    server_free(s);
    s = NULL;
    if (rc) {
        snprintf(err, sizeof err, "the listener failed");
        goto fail;
    }
    status = 0;
    goto out;
fail:
    fprintf(stderr, "duet cloud: %s\n", err);
out:
    server_free(s);
    duet_model_free(m);
    transport_tls_free(o.tls);
    return status;
}
