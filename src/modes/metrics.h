/* metrics.h: the per-request measurements every mode reports, with the same names everywhere (DESIGN
 * section 6): JSON output, benchmarks and later the HTTP /metrics. A mode fills the counters; the user-facing
 * delivery times come from metrics_token, called when a token becomes available to the user. */
#ifndef DUET_MODES_METRICS_H
#define DUET_MODES_METRICS_H

#include <stdint.h>
#include <stdio.h>

typedef struct metrics {
    const char *mode;
    double t_start;           /* clock_now_ms() when the request was accepted */
    int prompt_tokens;
    int tokens;               /* generated tokens delivered */
    int *ids;                 /* [tokens] delivered token ids (fidelity) */
    double *t_token;          /* [tokens] delivery times, ms since t_start */
    int cap;
    double total_ms;
    double prefill_ms;        /* time to run the prompt (device part, or as seen by the device) */
    double device_compute_ms, cloud_compute_ms, comm_wait_ms;
    uint64_t bytes_up, bytes_down, round_trips, cloud_requests, cloud_tokens;
    uint64_t drafted, accepted, rounds; /* speculative modes */
    int prefill_chunk;        /* hat: prompt chunk size used (0: not chunked by a mode that could) */
    int n_exit_points;        /* ee: exits on the device */
    int exit_layer[2];        /* ee: the layer each exit follows */
    uint64_t exit_tokens[2];  /* ee: tokens emitted at each exit (the rest came from the cloud) */
    uint64_t reconnects;      /* times the device reconnected to a cloud after losing one */
    int fallback_at;          /* index of the first token produced without the cloud after losing it; -1: never */
    int has_pd;               /* pd mode: the fields below go into the JSON */
    int handover_at;          /* pd: output index of the first token the device made itself; -1: none */
    double pace_ms;           /* pd: the speed controller's target time per output token */
    int has_reference;        /* fidelity computed against a device-only run */
    double exact_match_rate, rouge_l_f1;
} metrics;

void metrics_start(metrics *m, const char *mode);
void metrics_free(metrics *m);
/* Records that token id was delivered to the user now. 0 ok, < 0 out of memory. */
int metrics_token(metrics *m, int id);
void metrics_finish(metrics *m);
/* Fidelity of the delivered ids against reference ids (a device-only run of the same request). */
void metrics_fidelity(metrics *m, const int *ref, int n_ref);
/* One JSON object on one line, every DESIGN section 6 name. */
void metrics_print_json(const metrics *m, FILE *f);

#endif
