/* A fork-join thread pool. Workers spin briefly before sleeping because decode dispatches a job every
 * few tens of microseconds: waking a sleeping thread costs more than the job. While the pool is held
 * (a forward pass runs) they do not sleep at all: see pool_hold. */
#include "engine/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <immintrin.h>

#include "base/clock.h"
#include "base/err.h"

#define SPIN_MS 0.2 /* how long an idle worker polls before it sleeps */

struct duet_pool {
    int n_threads;
    pthread_t *threads; /* [n_threads - 1]: the caller is thread 0 */
    pthread_mutex_t turn; /* one job at a time */
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    atomic_uint generation; /* bumped to start a job */
    atomic_int running;     /* workers still inside the current job */
    atomic_int holds;       /* pool_hold calls not yet released: while > 0 nobody sleeps */
    atomic_bool stop;
    void (*fn)(void *arg, int ith, int nth);
    void *arg;
};

typedef struct { duet_pool *pool; int ith; } worker_arg;

static void *worker_main(void *p_) {
    worker_arg wa = *(worker_arg *)p_;
    free(p_);
    duet_pool *p = wa.pool;
    unsigned seen = 0;
    for (;;) {
        double t0 = clock_now_ms();
        while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen && !atomic_load(&p->stop)) {
            if (clock_now_ms() - t0 > SPIN_MS && !atomic_load_explicit(&p->holds, memory_order_relaxed)) {
                pthread_mutex_lock(&p->lock);
                while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->wake, &p->lock);
                pthread_mutex_unlock(&p->lock);
                break;
            }
            _mm_pause();
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        p->fn(p->arg, wa.ith, p->n_threads);
        if (atomic_fetch_sub_explicit(&p->running, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
}

duet_pool *duet_pool_init(int n_threads, char *err, size_t errlen) {
    if (n_threads <= 0) n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_threads <= 0) n_threads = 1;
    if (n_threads > 256) {
        err_set(err, errlen, DUET_EINVAL, "pool: %d threads is more than the 256 supported", n_threads);
        return NULL;
    }
    duet_pool *p = calloc(1, sizeof *p);
    if (!p) goto nomem;
    p->n_threads = n_threads;
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) goto nomem;
    pthread_mutex_init(&p->turn, NULL);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) goto fail_threads;
        wa->pool = p;
        wa->ith = i;
        if (pthread_create(&p->threads[i - 1], NULL, worker_main, wa) != 0) {
            free(wa);
            goto fail_threads;
        }
        p->n_threads = i + 1; /* threads that exist, for cleanup */
    }
    p->n_threads = n_threads;
    return p;
fail_threads:
    duet_pool_free(p);
    err_set(err, errlen, DUET_ERR, "pool: cannot start %d threads", n_threads);
    return NULL;
nomem:
    if (p) free(p->threads);
    free(p);
    err_set(err, errlen, DUET_ENOMEM, "pool: out of memory");
    return NULL;
}

void duet_pool_free(duet_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i - 1], NULL);
    pthread_mutex_destroy(&p->turn);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int duet_pool_threads(const duet_pool *p) { return p ? p->n_threads : 1; }

void pool_hold(duet_pool *p) {
    if (p) atomic_fetch_add_explicit(&p->holds, 1, memory_order_relaxed);
}

void pool_release(duet_pool *p) {
    if (p) atomic_fetch_sub_explicit(&p->holds, 1, memory_order_relaxed);
}

void pool_run(duet_pool *p, int max_threads, void (*fn)(void *arg, int ith, int nth), void *arg) {
    if (!p) {
        fn(arg, 0, 1);
        return;
    }
    /* Callers take turns even on a one-thread pool: a cloud given one compute thread uses one core,
     * however many sessions it serves. */
    pthread_mutex_lock(&p->turn);
    if (p->n_threads == 1 || max_threads == 1) {
        fn(arg, 0, 1);
        pthread_mutex_unlock(&p->turn);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->running, p->n_threads - 1);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    fn(arg, 0, p->n_threads);
    double t0 = clock_now_ms();
    while (atomic_load_explicit(&p->running, memory_order_acquire) > 0) {
        if (clock_now_ms() - t0 > SPIN_MS && !atomic_load_explicit(&p->holds, memory_order_relaxed)) {
            pthread_mutex_lock(&p->lock);
            while (atomic_load(&p->running) > 0) pthread_cond_wait(&p->done, &p->lock);
            pthread_mutex_unlock(&p->lock);
            break;
        }
        _mm_pause();
    }
    pthread_mutex_unlock(&p->turn);
}
