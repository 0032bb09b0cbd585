/* autostate.h: what auto mode learns about one model from the requests it ran (docs/AUTO.md): ee's exit
 * counts per (exits, threshold, calibrated), hat's acceptance per (input, output layers, calibrated), how far
 * the cloud's measured compute was from the prediction, and how far each mode's measured time to the first
 * token and between tokens were from theirs (correction factors for the next predictions).
 *
 * Kept in a small JSON file, by default $XDG_STATE_HOME/duet/<fingerprint>.json. The file is untrusted
 * bytes: autostate_parse rejects anything malformed, foreign (another model's fingerprint) or out of range
 * with a message, and the caller then starts afresh. An autostate is a plain value (no allocations). */
#ifndef DUET_MODES_AUTOSTATE_H
#define DUET_MODES_AUTOSTATE_H

#include <stddef.h>
#include <stdint.h>

#define AUTOSTATE_MAX 32     /* entries per list; the oldest entry makes room for a new one */
#define AUTOSTATE_MAX_BYTES (1 << 20)

typedef struct autostate_ee {
    int e1, e2, calibrated;
    float threshold;
    uint64_t tokens, exit1, exit2; /* tokens generated, of which emitted at the first / second exit */
} autostate_ee;

typedef struct autostate_hat {
    int input_layers, output_layers, calibrated;
    uint64_t drafted, accepted;
} autostate_hat;

typedef struct autostate_scale {
    double scale;     /* measured / predicted, averaged over the last few requests; 1 when none */
    uint64_t samples;
} autostate_scale;

/* Time corrections are kept per mode (enum cost_mode's numbers, AUTOSTATE_MODES of them) and per speed class:
 * round(log2(device step / cloud step)) clamped to [0, AUTOSTATE_SPEEDS), because what a model leaves out (two
 * sides contending for one machine's memory, a pace the device sets) weighs differently on a device as fast as its
 * cloud and on one 8x slower. */
#define AUTOSTATE_MODES 6
#define AUTOSTATE_SPEEDS 8
typedef struct autostate_time {
    autostate_scale ttft, tbt; /* measured / predicted time to the first token, and between tokens */
} autostate_time;

typedef struct autostate {
    uint64_t fingerprint;
    autostate_scale cloud;
    autostate_time time[AUTOSTATE_MODES][AUTOSTATE_SPEEDS];
    int n_ee, n_hat;
    autostate_ee ee[AUTOSTATE_MAX];
    autostate_hat hat[AUTOSTATE_MAX];
} autostate;

void autostate_init(autostate *s, uint64_t fingerprint);
/* Parses a state file's bytes for the model `fingerprint`. 0 ok; DUET_EINVAL (message in err) when the bytes
 * are not a valid state of this model. *out is left initialised (empty) on failure. */
int autostate_parse(const char *text, size_t len, uint64_t fingerprint, autostate *out, char *err, size_t errlen);
/* Reads path: a missing file is an empty state (0); unreadable or malformed: DUET_EIO/DUET_EINVAL. */
int autostate_load(const char *path, uint64_t fingerprint, autostate *out, char *err, size_t errlen);
/* Writes the state as JSON into buf[cap]; returns the length (>= cap: truncated). */
int autostate_format(const autostate *s, char *buf, size_t cap);
/* Writes path atomically (a temporary beside it, then rename), creating its directory if missing. */
int autostate_save(const autostate *s, const char *path, char *err, size_t errlen);
/* The default path: $XDG_STATE_HOME/duet/<16 hex>.json, XDG_STATE_HOME defaulting to ~/.local/state. */
int autostate_default_path(uint64_t fingerprint, char *buf, size_t cap, char *err, size_t errlen);

/* Lookups (NULL: never measured) and what a request measured (counts accumulate). */
const autostate_ee *autostate_find_ee(const autostate *s, int e1, int e2, float threshold, int calibrated);
const autostate_hat *autostate_find_hat(const autostate *s, int input_layers, int output_layers, int calibrated);
void autostate_note_ee(autostate *s, int e1, int e2, float threshold, int calibrated, uint64_t tokens,
                       uint64_t exit1, uint64_t exit2);
void autostate_note_hat(autostate *s, int input_layers, int output_layers, int calibrated, uint64_t drafted,
                        uint64_t accepted);
/* A request's measured over predicted compute (ignored when either is not > 0). */
void autostate_note_scale(autostate_scale *sc, double predicted_ms, double measured_ms);
/* The speed class of a device whose step takes dev_ms where the cloud's takes cloud_ms. */
int autostate_speed_class(double dev_ms, double cloud_ms);

#endif
