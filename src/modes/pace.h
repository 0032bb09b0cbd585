/* pace.h: pd mode's speed controller. Tokens become known in bursts (a cloud stream running ahead, a device
 * catching up) and are released to the user one per tpot_ms on a schedule of slots, so the user sees a steady
 * pace instead of bursts. A release the caller makes late (it was busy) does not move the later slots, so
 * lateness never adds up; a token that becomes known after its slot starts the schedule again from when it
 * was known; a release more than one tpot late does too (so no burst follows it).
 *
 * The clock is the caller's (times in ms), so the schedule can be tested against a fake clock (pace_clock).
 * Pure state and arithmetic: a pace belongs to one thread. */
#ifndef DUET_MODES_PACE_H
#define DUET_MODES_PACE_H

typedef struct pace_clock {
    double (*now)(void *arg);                 /* ms, monotonic */
    void (*sleep_until)(void *arg, double t); /* returns at or after t (ms) */
    void *arg;
} pace_clock;

pace_clock pace_clock_real(void); /* clock_now_ms and nanosleep */

typedef struct pace {
    double tpot_ms;    /* target gap between releases; <= 0: release each token as soon as it is known */
    int known;         /* tokens made available so far (pace_add) */
    int released;      /* tokens released so far */
    double slot_ms;    /* the slot of the last release */
    double head_known; /* when the first waiting token became known */
} pace;

void pace_init(pace *p, double tpot_ms);
/* n more tokens are known at `now` and wait to be released. */
void pace_add(pace *p, int n, double now);
/* When the next token may go out: the first as soon as known, then the next slot (the last one + tpot, or
 * when the token became known if later); INFINITY when none waits. */
double pace_due(const pace *p);
/* Releases what is due at `now` (at most one per call when pacing): returns how many; the caller hands
 * tokens released-n .. released-1 to the user. */
int pace_take(pace *p, double now);

#endif
