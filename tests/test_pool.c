/* The thread pool runs every share of a job exactly once, many times in a row, from several callers. */
#include <pthread.h>
#include <stdatomic.h>

#include "duet.h"
#include "engine/pool.h"
#include "test.h"

typedef struct { atomic_int hits[8]; atomic_long sum; } job;

static void work(void *arg, int ith, int nth) {
    job *j = arg;
    atomic_fetch_add(&j->hits[ith], 1);
    atomic_fetch_add(&j->sum, ith + nth * 100);
}

TEST(test_pool_runs_each_share_once) {
    char err[128];
    duet_pool *p = duet_pool_init(3, err, sizeof err);
    REQUIRE_MSG(p, "%s", err);
    CHECK_EQ_INT(duet_pool_threads(p), 3);
    job j = {0};
    for (int r = 0; r < 2000; r++) pool_run(p, work, &j);
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(atomic_load(&j.hits[i]), 2000);
    CHECK_EQ_INT(atomic_load(&j.sum), 2000L * (0 + 1 + 2 + 3 * 300));
    duet_pool_free(p);
    job k = {0};
    pool_run(NULL, work, &k); /* no pool: the caller alone */
    CHECK_EQ_INT(atomic_load(&k.hits[0]), 1);
    CHECK_EQ_INT(atomic_load(&k.sum), 100);
}

typedef struct { duet_pool *p; job *j; } caller_arg;

static void *caller(void *a) {
    caller_arg *c = a;
    for (int r = 0; r < 500; r++) pool_run(c->p, work, c->j);
    return NULL;
}

TEST(test_pool_callers_on_several_threads_take_turns) {
    char err[128];
    duet_pool *p = duet_pool_init(2, err, sizeof err);
    REQUIRE(p);
    job j = {0};
    caller_arg ca = {p, &j};
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, caller, &ca);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    CHECK_EQ_INT(atomic_load(&j.hits[0]), 1500);
    CHECK_EQ_INT(atomic_load(&j.hits[1]), 1500);
    duet_pool_free(p);
}
