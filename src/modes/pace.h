/* pace.h: pd mode's speed controller. Tokens become known in bursts (a cloud stream running ahead, a device
 * catching up) and are released to the user no faster than one per tpot_ms, so the user sees a steady pace
 * instead of bursts; a token that becomes known later than its slot is released at once. The gap is counted
 * from the previous release as it happened, so a late release never makes the next one early.
 *
 * The clock is injectable (pace_clock) so the release schedule can be tested against a fake clock. Pure state
 * and arithmetic: a pace belongs to one thread. */
#ifndef DUET_MODES_PACE_H
#define DUET_MODES_PACE_H

typedef struct pace_clock {
    double (*now)(void *arg);                 /* ms, monotonic */
    void (*sleep_until)(void *arg, double t); /* returns at or after t (ms) */
    void *arg;
} pace_clock;

pace_clock pace_clock_real(void); /* clock_now_ms and nanosleep */

typedef struct pace {
    double tpot_ms;  /* target gap between releases; <= 0: release each token as soon as it is known */
    int known;       /* tokens made available so far (pace_add) */
    int released;    /* tokens released so far */
    double last_ms;  /* time of the last release */
} pace;

void pace_init(pace *p, double tpot_ms);
/* n more tokens are known and wait to be released. */
void pace_add(pace *p, int n);
/* When the next token may go out: the first at once, then last release + tpot; INFINITY when none waits. */
double pace_due(const pace *p);
/* Releases what is due at `now` (at most one per call when pacing): returns how many; the caller hands
 * tokens released-n .. released-1 to the user. */
int pace_take(pace *p, double now);

#endif
