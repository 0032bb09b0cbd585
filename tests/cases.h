/* cases.h: the reference generations the mode tests compare against (llama.cpp's greedy stories260K outputs,
 * tests/data/stories260K-greedy.jsonl). */
#ifndef DUET_TESTS_CASES_H
#define DUET_TESTS_CASES_H

typedef struct ref_case {
    int prompt[64], n_prompt;
    int out[64], n_out;
    char text[128];
} ref_case;

/* Reads up to cap cases into c; returns how many. */
int test_load_cases(ref_case *c, int cap);

#endif
