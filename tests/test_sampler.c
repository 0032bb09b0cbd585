/* Sampling: greedy is argmax; seeded sampling repeats; top-k/top-p restrict the support; temperature
 * shapes the distribution as softmax says. */
#include <stdlib.h>
#include <string.h>

#include "duet.h"
#include "test.h"

static duet_sampler *make(float temp, int top_k, float top_p, uint64_t seed, int vocab) {
    duet_sampling s = {temp, top_k, top_p, seed};
    char err[128];
    duet_sampler *sm = duet_sampler_init(&s, vocab, err, sizeof err);
    if (!sm) test_fail(__FILE__, __LINE__, "%s", err);
    return sm;
}

TEST(test_sampler_greedy_is_argmax_lowest_on_ties) {
    float x[] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f};
    duet_sampler *s = make(0, 0, 1, 1, 5);
    REQUIRE(s);
    CHECK_EQ_INT(duet_sample(s, x), 1);
    CHECK_EQ_INT(duet_argmax(x, 5), 1);
    duet_sampler_free(s);
}

TEST(test_sampler_seeded_runs_repeat_and_seeds_differ) {
    float base[64];
    for (int i = 0; i < 64; i++) base[i] = (float)((i * 37) % 11) * 0.3f;
    int a[200], b[200], c[200];
    duet_sampler *s1 = make(1.0f, 0, 1, 42, 64), *s2 = make(1.0f, 0, 1, 42, 64), *s3 = make(1.0f, 0, 1, 43, 64);
    REQUIRE(s1 && s2 && s3);
    int differ = 0;
    for (int i = 0; i < 200; i++) {
        float x[64];
        memcpy(x, base, sizeof x); a[i] = duet_sample(s1, x);
        memcpy(x, base, sizeof x); b[i] = duet_sample(s2, x);
        memcpy(x, base, sizeof x); c[i] = duet_sample(s3, x);
        CHECK_EQ_INT(a[i], b[i]);
        differ += a[i] != c[i];
    }
    CHECK(differ > 50);
    duet_sampler_free(s1);
    duet_sampler_free(s2);
    duet_sampler_free(s3);
}

TEST(test_sampler_top_k_and_top_p_restrict_support) {
    float base[8] = {3.0f, 2.9f, 2.8f, 0.1f, 0.0f, -1.0f, 0.2f, 0.3f};
    duet_sampler *k2 = make(5.0f, 2, 1, 7, 8), *p = make(1.0f, 0, 0.5f, 7, 8), *k1 = make(1.0f, 1, 1, 7, 8);
    REQUIRE(k2 && p && k1);
    int seen[8] = {0};
    for (int i = 0; i < 500; i++) {
        float x[8];
        memcpy(x, base, sizeof x);
        int id = duet_sample(k2, x);
        CHECK(id == 0 || id == 1);
        seen[id]++;
        memcpy(x, base, sizeof x);
        id = duet_sample(p, x); /* p(0) ~ 0.31, p(0)+p(1) ~ 0.59 >= 0.5: only the top two */
        CHECK(id == 0 || id == 1);
        memcpy(x, base, sizeof x);
        CHECK_EQ_INT(duet_sample(k1, x), 0);
    }
    CHECK(seen[0] > 150 && seen[1] > 150); /* at T = 5 the two are close to even */
    duet_sampler_free(k2);
    duet_sampler_free(p);
    duet_sampler_free(k1);
}

TEST(test_sampler_frequencies_follow_softmax) {
    /* logits log(1), log(2), log(3), log(4) at T = 1: probabilities 0.1, 0.2, 0.3, 0.4 */
    float base[4] = {0.0f, 0.6931472f, 1.0986123f, 1.3862944f};
    duet_sampler *s = make(1.0f, 0, 1, 123, 4);
    REQUIRE(s);
    int count[4] = {0}, n = 20000;
    for (int i = 0; i < n; i++) {
        float x[4];
        memcpy(x, base, sizeof x);
        count[duet_sample(s, x)]++;
    }
    for (int i = 0; i < 4; i++) CHECK_NEAR((double)count[i] / n, 0.1 * (i + 1), 0.015);
    duet_sampler_free(s);
}

TEST(test_sampler_rejects_bad_settings) {
    duet_sampling s = {NAN, 0, 1, 1};
    char err[128];
    CHECK(duet_sampler_init(&s, 10, err, sizeof err) == NULL);
    s.temperature = 1;
    CHECK(duet_sampler_init(&s, 0, err, sizeof err) == NULL);
}

/* skip(n) leaves the generator where n samples would: the next token is the same. */
TEST(test_sampler_skip_equals_sampling) {
    char err[128];
    duet_sampling s = {.temperature = 0.9f, .top_k = 0, .top_p = 1, .seed = 42};
    duet_sampler *a = duet_sampler_init(&s, 8, err, sizeof err), *b = duet_sampler_init(&s, 8, err, sizeof err);
    REQUIRE(a && b);
    float logits[8];
    for (int n = 0; n < 20; n++) {
        for (int i = 0; i < 8; i++) logits[i] = (float)(i % 3);
        duet_sample(a, logits);
    }
    duet_sampler_skip(b, 20);
    int same = 0;
    for (int n = 0; n < 50; n++) {
        float la[8], lb[8];
        for (int i = 0; i < 8; i++) la[i] = lb[i] = (float)(i % 3);
        same += duet_sample(a, la) == duet_sample(b, lb);
    }
    CHECK_EQ_INT(same, 50);
    duet_sampler_free(a);
    duet_sampler_free(b);
    /* greedy draws nothing: skipping changes nothing either */
    s.temperature = 0;
    a = duet_sampler_init(&s, 8, err, sizeof err);
    duet_sampler_skip(a, 1000);
    float l[8] = {0, 5, 1, 2, 3, 4, 0, 0};
    CHECK_EQ_INT(duet_sample(a, l), 1);
    duet_sampler_free(a);
}
