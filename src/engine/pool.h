/* pool.h: the engine side of duet_pool: run one function on every thread of the pool. */
#ifndef DUET_ENGINE_POOL_H
#define DUET_ENGINE_POOL_H

#include "duet.h"

/* Calls fn(arg, i, n) once for each thread i of n (the caller runs i == 0) and returns when all are done;
 * n is the pool's size, or 1 when max_threads is 1 (work too small to be worth waking threads for).
 * Callers on several threads take turns, so a pool of N threads never runs more than N. A NULL pool runs
 * fn(arg, 0, 1) on the caller. */
void pool_run(duet_pool *p, int max_threads, void (*fn)(void *arg, int ith, int nth), void *arg);

#endif
