/* cases.h: what the mode tests share: the reference generations they compare against (llama.cpp's greedy
 * stories260K outputs, tests/data/stories260K-greedy.jsonl) and the handshake of a misbehaving fake cloud. */
#ifndef DUET_TESTS_CASES_H
#define DUET_TESTS_CASES_H

typedef struct ref_case {
    int prompt[64], n_prompt;
    int out[64], n_out;
    char text[128];
} ref_case;

/* Reads up to cap cases into c; returns how many. */
int test_load_cases(ref_case *c, int cap);

#include "net/transport.h"

/* A fake cloud: accepts one device on l, answers its HELLO and OPEN as a real cloud would (session 7), reads
 * up to its first REQUEST into *q and returns the connection (NULL if the device never came). */
transport *test_fake_cloud_accept(transport_listener *l, frame_request *q);
/* Unless drop, waits until the device hangs up; then delivers what is queued and closes. */
void test_fake_cloud_end(transport *t, int drop);

#endif
