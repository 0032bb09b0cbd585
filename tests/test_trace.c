/* Decision traces (src/modes/trace.[ch]): the parser refuses malformed files, and `duet run --trace-out` /
 * `--replay` record and replay ee's exits and hat's rounds exactly, with the traffic the decisions imply. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/json.h"
#include "duet.h"
#include "modes/trace.h"
#include "test.h"

#define MODEL "models/stories260K.gguf"
#define CALIB "models/stories260K-calib.gguf"

static int parse(const char *text, trace *t) {
    char err[256];
    return trace_parse(t, text, strlen(text), err, sizeof err);
}

TEST(test_trace_parse_ee_and_hat) {
    trace t;
    REQUIRE(!parse("duet-trace 1 ee\n# a comment\ne1\n\ncloud\r\ne2  \ncloud", &t));
    CHECK_EQ_INT(t.kind, TRACE_EE);
    CHECK_EQ_INT(t.n, 4);
    int want[] = {TRACE_E1, TRACE_CLOUD, TRACE_E2, TRACE_CLOUD};
    for (int i = 0; i < 4 && i < t.n; i++) CHECK_EQ_INT(t.a[i], want[i]);
    int a, b; /* replay cycles */
    for (int i = 0; i < 6; i++) trace_next(&t, &a, &b);
    CHECK_EQ_INT(a, TRACE_CLOUD);
    trace_free(&t);

    REQUIRE(!parse("duet-trace 1 hat\n8 3\n0 0\n64 64\n", &t));
    CHECK_EQ_INT(t.kind, TRACE_HAT);
    CHECK_EQ_INT(t.n, 3);
    CHECK_EQ_INT(t.a[0], 8);
    CHECK_EQ_INT(t.b[0], 3);
    CHECK_EQ_INT(trace_max_a(&t), 64);
    trace_free(&t);
}

TEST(test_trace_write_parse_round_trip) {
    char err[256];
    trace t, u;
    REQUIRE(!trace_init(&t, TRACE_HAT, 3, err, sizeof err));
    CHECK(!trace_add(&t, 5, 2, err, sizeof err));
    CHECK(!trace_add(&t, 1, 1, err, sizeof err));
    CHECK(!trace_add(&t, 0, 0, err, sizeof err));
    CHECK(trace_add(&t, 1, 0, err, sizeof err) != 0); /* full */
    char path[64];
    snprintf(path, sizeof path, "/tmp/duet-test-trace-%d.txt", (int)getpid());
    REQUIRE(!trace_save(&t, "a note", path, err, sizeof err));
    REQUIRE_MSG(!trace_load(&u, path, err, sizeof err), "%s", err);
    CHECK_EQ_INT(u.kind, TRACE_HAT);
    CHECK_EQ_INT(u.n, 3);
    for (int i = 0; i < 3 && i < u.n; i++) {
        CHECK_EQ_INT(u.a[i], t.a[i]);
        CHECK_EQ_INT(u.b[i], t.b[i]);
    }
    trace_free(&t);
    trace_free(&u);
    unlink(path);
    CHECK(trace_load(&u, "/nonexistent/trace", err, sizeof err) == DUET_EIO);
}

TEST(test_trace_add_checks_ranges) {
    char err[256];
    trace t;
    REQUIRE(!trace_init(&t, TRACE_EE, 4, err, sizeof err));
    CHECK(trace_add(&t, 3, 0, err, sizeof err) != 0);
    CHECK(trace_add(&t, -1, 0, err, sizeof err) != 0);
    CHECK(!trace_add(&t, TRACE_CLOUD, 0, err, sizeof err));
    trace_free(&t);
    REQUIRE(!trace_init(&t, TRACE_HAT, 4, err, sizeof err));
    CHECK(trace_add(&t, 2, 3, err, sizeof err) != 0);
    CHECK(trace_add(&t, 65, 0, err, sizeof err) != 0);
    CHECK(trace_add(&t, 1, -1, err, sizeof err) != 0);
    trace_free(&t);
    CHECK(trace_init(&t, 7, 4, err, sizeof err) != 0);
    CHECK(trace_init(&t, TRACE_EE, 0, err, sizeof err) != 0);
}

TEST(test_trace_malformed) {
    const char *bad[] = {
        "",                                  /* empty */
        "\n\n",                              /* no header */
        "duet-trace 2 ee\ne1\n",             /* unknown version */
        "duet-trace 1 pd\n1 1\n",            /* no such kind */
        "duet-trace 1 ee\n",                 /* no decision */
        "duet-trace 1 ee\n# only a comment\n",
        "duet-trace 1 ee\ne3\n",             /* not a place */
        "duet-trace 1 ee\nE1\n",
        "duet-trace 1 ee\n3 1\n",            /* a hat line in an ee trace */
        "duet-trace 1 hat\ncloud\n",         /* an ee line in a hat trace */
        "duet-trace 1 hat\n3 4\n",           /* accepted more than drafted */
        "duet-trace 1 hat\n65 0\n",          /* draft too long */
        "duet-trace 1 hat\n99999999999999999999 1\n",
        "duet-trace 1 hat\n-1 0\n",
        "duet-trace 1 hat\n3\n",
        "duet-trace 1 hat\n3 1 1\n",
        "duet-trace 1 hat\n3 1x\n",
        "duet-trace 1 hat\n 3 1\n",
        "duet-trace 1 hat\n3\t1\n",
        "duet-trace 1 hat\n+3 1\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        trace t;
        char err[256] = "";
        int rc = trace_parse(&t, bad[i], strlen(bad[i]), err, sizeof err);
        CHECK_MSG(rc != 0, "accepted malformed trace %zu: '%s'", i, bad[i]);
        CHECK_MSG(rc == 0 || err[0], "no message for malformed trace %zu", i);
        CHECK(t.a == NULL && t.n == 0); /* nothing left to free */
    }
    /* a NUL byte inside a line, and a line over the limit */
    trace t;
    char err[256];
    const char nul[] = "duet-trace 1 ee\ne1\0\n";
    CHECK(trace_parse(&t, nul, sizeof nul - 1, err, sizeof err) != 0);
    char *lng = malloc(1024);
    REQUIRE(lng);
    strcpy(lng, "duet-trace 1 ee\n#");
    memset(lng + 17, 'x', 400);
    strcpy(lng + 417, "\ne1\n");
    CHECK(trace_parse(&t, lng, strlen(lng), err, sizeof err) != 0);
    free(lng);
}

/* ---- through the CLI ---- */

static json *run_json(const char *args, int *st) {
    char *out = test_run_cli(args, st, 0), err[256];
    json *doc = NULL;
    char *line = out ? strstr(out, "{\"mode\"") : NULL; /* the metrics line; the text went to stderr */
    if (line) doc = json_parse(line, strlen(line), err, sizeof err);
    free(out);
    return doc;
}

static double num(const json *d, const char *key) { return json_num(json_get(json_root(d), key)); }
static double exit_tokens(const json *d, int i) {
    return json_num(json_get(json_at(json_get(json_root(d), "exits"), (size_t)i), "tokens"));
}

/* Counts of each decision in a trace file. */
static int count_trace(const char *path, int *c, long *drafted, long *accepted) {
    char err[256];
    trace t;
    if (trace_load(&t, path, err, sizeof err)) return -1;
    c[0] = c[1] = c[2] = 0;
    *drafted = *accepted = 0;
    for (int i = 0; i < t.n; i++) {
        if (t.kind == TRACE_EE) c[t.a[i]]++;
        else *drafted += t.a[i], *accepted += t.b[i];
    }
    int n = t.n;
    trace_free(&t);
    return n;
}

TEST(test_trace_ee_record_replay) {
    char tr[64], args[1024];
    snprintf(tr, sizeof tr, "/tmp/duet-test-ee-%d.trace", (int)getpid());
    int st, c[3];
    long dr, ac;
    snprintf(args, sizeof args,
             "run --mode ee -m " MODEL " -p 'Once upon a time' -n 48 --exits 2,3 --threshold 0.9 --calib " CALIB
             " --trace-out %s --json", tr);
    json *rec = run_json(args, &st);
    REQUIRE_MSG(rec && st == 0, "recording failed (%d)", st);
    int n = count_trace(tr, c, &dr, &ac);
    CHECK_EQ_INT(n, (int)num(rec, "tokens"));
    CHECK_EQ_INT(c[TRACE_E1], (int)exit_tokens(rec, 0));
    CHECK_EQ_INT(c[TRACE_E2], (int)exit_tokens(rec, 1));
    CHECK_EQ_INT(c[TRACE_CLOUD], (int)num(rec, "cloud_requests"));
    CHECK(c[TRACE_E1] > 0 && c[TRACE_CLOUD] > 0); /* a pattern worth replaying */

    /* threshold 1 never exits on its own: the exits a replay shows are the trace's */
    snprintf(args, sizeof args, "run --mode ee -m " MODEL " -p 'Once upon a time' -n 48 --exits 2,3 --threshold 1 "
             "--replay %s --json", tr);
    json *rep = run_json(args, &st);
    REQUIRE_MSG(rep && st == 0, "replay failed (%d)", st);
    CHECK_EQ_INT((int)num(rep, "tokens"), n);
    CHECK_EQ_INT((int)exit_tokens(rep, 0), c[TRACE_E1]);
    CHECK_EQ_INT((int)exit_tokens(rep, 1), c[TRACE_E2]);
    CHECK_EQ_INT((int)num(rep, "cloud_requests"), c[TRACE_CLOUD]);
    CHECK_EQ_INT((int)num(rep, "round_trips"), c[TRACE_CLOUD]); /* one round trip per cloud token, no more */
    /* the same request replayed at the opposite threshold moves exactly the same bytes: the trace decides */
    snprintf(args, sizeof args, "run --mode ee -m " MODEL " -p 'Once upon a time' -n 48 --exits 2,3 --threshold 0 "
             "--replay %s --json", tr);
    json *rep0 = run_json(args, &st);
    REQUIRE(rep0 && st == 0);
    CHECK_EQ_INT((long long)num(rep0, "bytes_up"), (long long)num(rep, "bytes_up"));
    CHECK_EQ_INT((long long)num(rep0, "bytes_down"), (long long)num(rep, "bytes_down"));
    CHECK_EQ_INT((int)exit_tokens(rep0, 0), c[TRACE_E1]);
    json_free(rec);
    json_free(rep);
    json_free(rep0);
    unlink(tr);
}

TEST(test_trace_hat_record_replay_on_synthetic) {
    char tr[64], syn[64], args[1024];
    int pid = (int)getpid(), st, c[3];
    long dr, ac;
    snprintf(tr, sizeof tr, "/tmp/duet-test-hat-%d.trace", pid);
    snprintf(syn, sizeof syn, "/tmp/duet-test-syn-%d.gguf", pid);
    snprintf(args, sizeof args,
             "run --mode hat -m " MODEL " -p 'Once upon a time' -n 40 --draft 4 --calib " CALIB " --trace-out %s --json",
             tr); /* a fixed k: auto's choice follows the machine's speed, the acceptance must not */
    json *rec = run_json(args, &st);
    REQUIRE_MSG(rec && st == 0, "recording failed (%d)", st);
    int n = count_trace(tr, c, &dr, &ac);
    CHECK_EQ_INT(n, (int)num(rec, "rounds"));
    CHECK_EQ_INT(dr, llround(num(rec, "draft_len_mean") * n)); /* the JSON's means have 3 decimals */
    CHECK_EQ_INT(ac, llround(num(rec, "accepted_per_round") * n));
    CHECK(ac > 0);

    snprintf(args, sizeof args, "synth --shape test --type q8_0 --layers 4 -o %s", syn);
    char *o = test_run_cli(args, &st, 1);
    free(o);
    REQUIRE_MSG(st == 0, "duet synth failed");
    /* random weights: on its own this model's drafts are (almost) never accepted; replayed, the rounds are the
     * trace's, each one uploading k+1 rows and getting k+1 back */
    snprintf(args, sizeof args, "run --mode hat -m %s -p 'Once upon a time' -n 40 --chunk 0 --replay %s --json", syn,
             tr);
    json *rep = run_json(args, &st);
    REQUIRE_MSG(rep && st == 0, "replay failed (%d)", st);
    CHECK_EQ_INT((int)num(rep, "tokens"), 40);
    CHECK_EQ_INT((int)num(rep, "rounds"), n);
    CHECK_EQ_INT(llround(num(rep, "draft_len_mean") * n), dr);
    CHECK_EQ_INT(llround(num(rep, "accepted_per_round") * n), ac);
    CHECK_EQ_INT((int)num(rep, "round_trips"), n + 1); /* the prompt in one chunk, then one per round */
    /* a second replay at a fixed --draft still plays the trace: same rounds, same bytes */
    snprintf(args, sizeof args, "run --mode hat -m %s -p 'Once upon a time' -n 40 --chunk 0 --draft 1 --replay %s --json",
             syn, tr);
    json *rep2 = run_json(args, &st);
    REQUIRE(rep2 && st == 0);
    CHECK_EQ_INT((long long)num(rep2, "bytes_up"), (long long)num(rep, "bytes_up"));
    CHECK_EQ_INT((long long)num(rep2, "bytes_down"), (long long)num(rep, "bytes_down"));
    json_free(rec);
    json_free(rep);
    json_free(rep2);
    unlink(tr);
    unlink(syn);
}

TEST(test_trace_cli_refusals) {
    char tr[64], args[512];
    snprintf(tr, sizeof tr, "/tmp/duet-test-bad-%d.trace", (int)getpid());
    FILE *f = fopen(tr, "w");
    REQUIRE(f);
    fputs("duet-trace 1 hat\n3 1\n", f);
    fclose(f);
    int st;
    snprintf(args, sizeof args, "run --mode ee -m " MODEL " -n 4 --replay %s", tr); /* wrong kind */
    char *out = test_run_cli(args, &st, 1);
    CHECK(st == 2 && out && strstr(out, "hat trace"));
    free(out);
    out = test_run_cli("run --mode split -m " MODEL " -n 4 --trace-out /tmp/x.trace", &st, 1);
    CHECK(st == 2 && out && strstr(out, "--trace-out"));
    free(out);
    f = fopen(tr, "w");
    REQUIRE(f);
    fputs("duet-trace 1 hat\n3 9\n", f);
    fclose(f);
    snprintf(args, sizeof args, "run --mode hat -m " MODEL " -n 4 --replay %s", tr);
    out = test_run_cli(args, &st, 1);
    CHECK(st != 0 && out && strstr(out, "line 2"));
    free(out);
    unlink(tr);
}
