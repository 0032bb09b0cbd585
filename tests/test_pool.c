/* The thread pool runs every share of a job exactly once, many times in a row, from several callers. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

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
    for (int r = 0; r < 2000; r++) pool_run(p, 0, work, &j);
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(atomic_load(&j.hits[i]), 2000);
    CHECK_EQ_INT(atomic_load(&j.sum), 2000L * (0 + 1 + 2 + 3 * 300));
    duet_pool_free(p);
    job k = {0};
    pool_run(NULL, 0, work, &k); /* no pool: the caller alone */
    CHECK_EQ_INT(atomic_load(&k.hits[0]), 1);
    CHECK_EQ_INT(atomic_load(&k.sum), 100);
}

typedef struct { duet_pool *p; job *j; } caller_arg;

static void *caller(void *a) {
    caller_arg *c = a;
    for (int r = 0; r < 500; r++) pool_run(c->p, 0, work, c->j);
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

typedef struct { atomic_int inside, most, calls; } overlap;

static void busy(void *arg, int ith, int nth) {
    overlap *o = arg;
    int now = atomic_fetch_add(&o->inside, 1) + 1;
    int m = atomic_load(&o->most);
    while (now > m && !atomic_compare_exchange_weak(&o->most, &m, now)) {}
    atomic_fetch_add(&o->calls, 1);
    for (volatile int i = 0; i < 2000; i++) {}
    atomic_fetch_sub(&o->inside, 1);
}

typedef struct { duet_pool *p; overlap *o; int max_threads; } busy_arg;

static void *busy_caller(void *a) {
    busy_arg *b = a;
    for (int r = 0; r < 300; r++) pool_run(b->p, b->max_threads, busy, b->o);
    return NULL;
}

/* A server gives its sessions one shared pool: with one thread, or work capped at one thread, calls from
 * many session threads must still run one at a time (one core), never side by side. */
TEST(test_pool_one_thread_means_one_at_a_time) {
    char err[128];
    duet_pool *one = duet_pool_init(1, err, sizeof err), *two = duet_pool_init(2, err, sizeof err);
    REQUIRE(one && two);
    duet_pool *pools[] = {one, two};
    for (int k = 0; k < 2; k++) {
        overlap o = {0};
        busy_arg ba = {pools[k], &o, 1};
        pthread_t t[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, busy_caller, &ba);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        CHECK_EQ_INT(atomic_load(&o.most), 1);
        CHECK_EQ_INT(atomic_load(&o.calls), 1200);
    }
    duet_pool_free(one);
    duet_pool_free(two);
}

typedef struct { atomic_int tid; } who;

static void note_worker(void *arg, int ith, int nth) {
    if (ith == 1) atomic_store(&((who *)arg)->tid, (int)gettid());
}

/* Voluntary context switches of thread tid of this process: one each time it blocked (slept on a futex). */
static long voluntary_switches(int tid) {
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
    FILE *f = fopen(path, "r");
    long n = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1) break;
    fclose(f);
    return n;
}

/* Gaps of 2 ms between jobs: an idle worker sleeps in each one, unless the pool is held (a forward pass), when it
 * keeps polling and never blocks. */
TEST(test_pool_held_workers_do_not_sleep_between_jobs) {
    char err[128];
    duet_pool *p = duet_pool_init(2, err, sizeof err);
    REQUIRE(p);
    who w = {0};
    long blocked[2];
    for (int held = 0; held < 2; held++) {
        pool_run(p, 0, note_worker, &w);
        if (held) pool_hold(p);
        long before = voluntary_switches(atomic_load(&w.tid));
        REQUIRE(before >= 0);
        for (int r = 0; r < 20; r++) {
            pool_run(p, 0, note_worker, &w);
            usleep(2000);
        }
        blocked[held] = voluntary_switches(atomic_load(&w.tid)) - before;
        if (held) pool_release(p);
    }
    CHECK_MSG(blocked[0] >= 10, "a free worker slept %ld times in 20 gaps of 2 ms", blocked[0]);
    CHECK_MSG(blocked[1] <= 2, "a held worker slept %ld times in 20 gaps of 2 ms", blocked[1]);
    duet_pool_free(p);
}
