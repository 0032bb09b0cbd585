/* pool.h: the engine side of duet_pool: run one function on every thread of the pool. */
#ifndef DUET_ENGINE_POOL_H
#define DUET_ENGINE_POOL_H

#include "duet.h"

/* Calls fn(arg, i, n) once for each thread i of n (the caller runs i == 0) and returns when all are done;
 * n is the pool's size, or 1 when max_threads is 1 (work too small to be worth waking threads for).
 * Callers on several threads take turns, so a pool of N threads never runs more than N. A NULL pool runs
 * fn(arg, 0, 1) on the caller. */
void pool_run(duet_pool *p, int max_threads, void (*fn)(void *arg, int ith, int nth), void *arg);

/* Between pool_hold and its pool_release (nestable, from any thread) idle workers poll for the next job
 * instead of sleeping after a short spin. A forward pass holds the pool: its jobs come back to back with
 * serial work between them that can outlast the spin (and a thread done with its share of a product waits
 * for the slowest), and waking a sleeping worker costs more than that, most of all on a VM whose idle vCPU
 * halts. TinyLlama F16 at 2 threads, bench_engine -p 128 -n 32: 2362 futex calls a run -> 93, and medians of
 * 8 alternating runs pp 68.0 -> 69.5 tok/s, tg 12.4 -> 12.8. Outside a hold, idle workers sleep, so a process
 * waiting on the network burns no core. */
void pool_hold(duet_pool *p);
void pool_release(duet_pool *p);

#endif
