/* pool.h: the engine side of duet_pool: run one function on every thread of the pool. */
#ifndef DUET_ENGINE_POOL_H
#define DUET_ENGINE_POOL_H

#include "duet.h"

/* Calls fn(arg, i, n) once for each thread i of n (the caller runs i == 0) and returns when all are done.
 * A NULL pool runs fn(arg, 0, 1). Callers on several threads take turns. */
void pool_run(duet_pool *p, void (*fn)(void *arg, int ith, int nth), void *arg);

#endif
