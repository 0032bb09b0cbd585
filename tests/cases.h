/* cases.h: the reference requests every mode test runs: llama.cpp's greedy generations on stories260K
 * (tests/data/stories260K-greedy.jsonl), as mode requests, and how to compare a run's output with them; and
 * the handshake of a misbehaving fake cloud. */
#ifndef DUET_TESTS_CASES_H
#define DUET_TESTS_CASES_H

#include "modes/mode.h"

#define CASES_MODEL "models/stories260K.gguf"
#define CASES_N 6

typedef struct ref_case {
    int prompt[64], n_prompt;
    int out[64], n_out;
    char text[128];
} ref_case;

/* Loads up to cap reference cases; returns how many. */
int cases_load(ref_case *c, int cap);
/* A greedy request for c's prompt and n tokens, no EOS stop. */
mode_request cases_request(const ref_case *c, int n);
/* Whether the run delivered exactly want[n]. */
int cases_same_ids(const metrics *mt, const int *want, int n);

/* A fake cloud: accepts one device on l, answers its HELLO and OPEN as a real cloud would (session 7), reads
 * up to its first REQUEST into *q and returns the connection (NULL if the device never came). */
transport *cases_fake_cloud_accept(transport_listener *l, frame_request *q);
/* Unless drop, waits until the device hangs up; then delivers what is queued and closes. */
void cases_fake_cloud_end(transport *t, int drop);

#endif
