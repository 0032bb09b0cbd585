#include <math.h>
#include <string.h>

#include "duet.h"
#include "net/link.h"
#include "test.h"

TEST(test_link_profiles) {
    /* DESIGN section 7 quotes profiles down/up: wan is exactly its example up=20mbit,down=50mbit,rtt=40ms. */
    static const struct {
        const char *spec;
        uint64_t up, down;
        uint32_t rtt_us;
    } cases[] = {
        {"lan", 1000000000u, 1000000000u, 1000},
        {"wifi", 50000000u, 100000000u, 10000},
        {"wan", 20000000u, 50000000u, 40000},
        {"4g", 5000000u, 20000000u, 60000},
        {"WAN", 20000000u, 50000000u, 40000},
    };
    char err[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        link_params p;
        REQUIRE_MSG(link_parse(cases[i].spec, &p, err, sizeof err) == 0, "%s: %s", cases[i].spec, err);
        CHECK_EQ_INT(p.up_bps, cases[i].up);
        CHECK_EQ_INT(p.down_bps, cases[i].down);
        CHECK_EQ_INT(p.rtt_us, cases[i].rtt_us);
        CHECK_EQ_INT(p.jitter_us, 0);
        CHECK(link_active(&p));
    }
    link_params none;
    REQUIRE(link_parse("none", &none, err, sizeof err) == 0);
    CHECK(!link_active(&none));
}

TEST(test_link_parse_values) {
    char err[256];
    link_params p;
    REQUIRE_MSG(link_parse("up=20mbit,down=50mbit,rtt=40ms,jitter=5ms", &p, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(p.up_bps, 20000000);
    CHECK_EQ_INT(p.down_bps, 50000000);
    CHECK_EQ_INT(p.rtt_us, 40000);
    CHECK_EQ_INT(p.jitter_us, 5000);
    CHECK_EQ_INT(p.jitter_dist, LINK_JITTER_UNIFORM);

    REQUIRE_MSG(link_parse("wan,jitter=2500us,dist=normal,seed=7", &p, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(p.up_bps, 20000000); /* the profile stays, overrides apply */
    CHECK_EQ_INT(p.jitter_us, 2500);
    CHECK_EQ_INT(p.jitter_dist, LINK_JITTER_NORMAL);
    CHECK_EQ_INT(p.seed, 7);

    REQUIRE_MSG(link_parse("up=1.5mbit,down=64kbit,rtt=0.25s", &p, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(p.up_bps, 1500000);
    CHECK_EQ_INT(p.down_bps, 64000);
    CHECK_EQ_INT(p.rtt_us, 250000);

    REQUIRE_MSG(link_parse("down=2gbit,up=300bit", &p, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(p.down_bps, 2000000000);
    CHECK_EQ_INT(p.up_bps, 300);
    CHECK_EQ_INT(p.rtt_us, 0);
}

TEST(test_link_parse_errors) {
    static const struct {
        const char *spec, *says;
    } cases[] = {
        {"", "empty spec"},
        {"dialup", "neither a profile"},
        {"up=20", "unit"},
        {"up=20mb", "unit in '20mb'"},
        {"up=-1mbit", "non-negative"},
        {"rtt=abc", "non-negative"},
        {"rtt=40", "use us, ms, s"},
        {"up=1mbit,up=2mbit", "'up' given twice"},
        {"lan,wan", "neither a profile"},
        {"jitter=5ms,dist=gauss", "uniform or normal"},
        {"up=0mbit", "at least 1 bit/s"},
        {"speed=1mbit", "unknown key 'speed'"},
        {"up=20mbit,,rtt=1ms", "empty item"},
        {"rtt=2min", "unit"},
        {"rtt=100s", "too large"},
        {"seed=x", "seed"},
        {"up=nanmbit", "non-negative"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        link_params p;
        int rc = link_parse(cases[i].spec, &p, err, sizeof err);
        CHECK_MSG(rc == DUET_EINVAL, "'%s' gave %d", cases[i].spec, rc);
        CHECK_MSG(strstr(err, cases[i].says) != NULL, "'%s': message '%s' lacks '%s'", cases[i].spec, err,
                  cases[i].says);
    }
}

TEST(test_link_format_roundtrip) {
    const char *specs[] = {"none", "lan", "4g", "up=1500kbit,rtt=3ms,jitter=1ms,dist=normal,seed=9", "down=7bit"};
    char err[256], buf[256];
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        link_params a, b;
        REQUIRE(link_parse(specs[i], &a, err, sizeof err) == 0);
        link_format(&a, buf, sizeof buf);
        REQUIRE_MSG(link_parse(buf, &b, err, sizeof err) == 0, "%s -> %s: %s", specs[i], buf, err);
        CHECK_MSG(memcmp(&a, &b, sizeof a) == 0, "%s -> %s does not read back the same", specs[i], buf);
    }
    link_params p;
    REQUIRE(link_parse("wan", &p, err, sizeof err) == 0);
    link_format(&p, buf, sizeof buf);
    CHECK_MSG(strncmp(buf, "up=20mbit,down=50mbit,rtt=40000us", 33) == 0, "%s", buf);
}

TEST(test_link_pipe_pacing) {
    link_params lp = {.up_bps = 20000000, .down_bps = 50000000, .rtt_us = 40000};
    link_pipe up, down;
    link_pipe_init(&up, &lp, LINK_UP);
    link_pipe_init(&down, &lp, LINK_DOWN);
    double done;
    /* 2 MB at 20 Mbit/s serializes for 800 ms, then travels rtt/2 = 20 ms. */
    double d1 = link_pipe_push(&up, 1000.0, 2000000, &done);
    CHECK_NEAR(done, 1800.0, 1e-9);
    CHECK_NEAR(d1, 1820.0, 1e-9);
    /* A frame handed over meanwhile waits for the pipe: starts at 1800, 1000 bytes take 0.4 ms. */
    double d2 = link_pipe_push(&up, 1100.0, 1000, &done);
    CHECK_NEAR(done, 1800.4, 1e-9);
    CHECK_NEAR(d2, 1820.4, 1e-9);
    /* An idle pipe starts at once. */
    double d3 = link_pipe_push(&up, 5000.0, 1000, &done);
    CHECK_NEAR(done, 5000.4, 1e-9);
    CHECK_NEAR(d3, 5020.4, 1e-9);
    /* The other direction has its own rate: 2 MB at 50 Mbit/s = 320 ms. */
    CHECK_NEAR(link_pipe_push(&down, 0.0, 2000000, NULL), 340.0, 1e-9);

    link_params none = {0};
    link_pipe free_pipe;
    link_pipe_init(&free_pipe, &none, LINK_UP);
    CHECK_NEAR(link_pipe_push(&free_pipe, 123.0, 1 << 30, &done), 123.0, 0);
    CHECK_NEAR(done, 123.0, 0);
}

static void jitter_stats(int dist, double *mean, double *sd, double *lo, double *hi, int *ordered) {
    link_params lp = {.rtt_us = 40000, .jitter_us = 5000, .jitter_dist = (uint32_t)dist, .seed = 42};
    link_pipe p;
    link_pipe_init(&p, &lp, LINK_UP);
    enum { N = 20000 };
    double s = 0, s2 = 0, prev = 0;
    *lo = 1e9, *hi = -1e9, *ordered = 1;
    for (int i = 0; i < N; i++) {
        double now = i * 100.0; /* far apart: order never binds, so the raw delay shows */
        double d = link_pipe_push(&p, now, 0, NULL);
        if (d < prev) *ordered = 0;
        prev = d;
        d -= now;
        s += d, s2 += d * d;
        if (d < *lo) *lo = d;
        if (d > *hi) *hi = d;
    }
    *mean = s / N;
    *sd = sqrt(s2 / N - *mean * *mean);
}

TEST(test_link_pipe_jitter) {
    double mean, sd, lo, hi;
    int ordered;
    jitter_stats(LINK_JITTER_UNIFORM, &mean, &sd, &lo, &hi, &ordered);
    CHECK(ordered);
    CHECK_NEAR(mean, 20.0, 0.1);
    CHECK_NEAR(sd, 5.0 / sqrt(3.0), 0.05); /* uniform on [15, 25] */
    CHECK(lo >= 15.0 && hi <= 25.0);
    CHECK(lo < 15.1 && hi > 24.9);
    jitter_stats(LINK_JITTER_NORMAL, &mean, &sd, &lo, &hi, &ordered);
    CHECK(ordered);
    CHECK_NEAR(mean, 20.0, 0.15);
    CHECK_NEAR(sd, 5.0, 0.15);
    CHECK(lo >= 0.0);

    /* Same seed, same delays; the two directions draw different streams. */
    link_params lp = {.rtt_us = 40000, .jitter_us = 5000, .seed = 3};
    link_pipe a, b, c;
    link_pipe_init(&a, &lp, LINK_UP);
    link_pipe_init(&b, &lp, LINK_UP);
    link_pipe_init(&c, &lp, LINK_DOWN);
    int same = 1, differ = 0;
    for (int i = 0; i < 8; i++) {
        double x = link_pipe_push(&a, i * 100.0, 10, NULL), y = link_pipe_push(&b, i * 100.0, 10, NULL);
        double z = link_pipe_push(&c, i * 100.0, 10, NULL);
        same &= x == y;
        differ |= x != z;
    }
    CHECK(same);
    CHECK(differ);

    /* Back-to-back frames under jitter are delivered in order. */
    lp.jitter_us = 20000;
    link_pipe_init(&a, &lp, LINK_UP);
    double prev = 0;
    for (int i = 0; i < 1000; i++) {
        double d = link_pipe_push(&a, i * 0.01, 10, NULL);
        CHECK(d >= prev);
        prev = d;
    }
}
