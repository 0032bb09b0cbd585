#include "modes/pace.h"

#include <errno.h>
#include <math.h>
#include <time.h>

#include "base/clock.h"

static double real_now(void *arg) {
    (void)arg;
    return clock_now_ms();
}

static void real_sleep_until(void *arg, double t) {
    (void)arg;
    double left;
    while ((left = t - clock_now_ms()) > 0) {
        struct timespec ts = {(time_t)(left / 1e3), (long)(fmod(left, 1e3) * 1e6)};
        if (nanosleep(&ts, NULL) && errno != EINTR) return;
    }
}

pace_clock pace_clock_real(void) { return (pace_clock){real_now, real_sleep_until, NULL}; }

void pace_init(pace *p, double tpot_ms) { *p = (pace){.tpot_ms = tpot_ms > 0 ? tpot_ms : 0}; }

void pace_add(pace *p, int n, double now) {
    if (n <= 0) return;
    if (p->released == p->known) p->head_known = now;
    p->known += n;
}

double pace_due(const pace *p) {
    if (p->released >= p->known) return INFINITY;
    if (p->tpot_ms <= 0) return -INFINITY;
    if (p->released == 0) return p->head_known;
    double next = p->slot_ms + p->tpot_ms;
    return next > p->head_known ? next : p->head_known;
}

int pace_take(pace *p, double now) {
    int n = 0;
    double due;
    while ((due = pace_due(p)) <= now) {
        p->slot_ms = p->released == 0 || now - due > p->tpot_ms ? now : due;
        p->released++;
        p->head_known = now; /* the next one, if known, was known by now */
        n++;
        if (p->tpot_ms > 0) break; /* the next one is due a slot later */
    }
    return n;
}
