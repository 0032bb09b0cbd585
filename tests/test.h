/* test.h: the project's test harness. A test is a function declared with TEST(name) in any tests/ file;
 * it registers itself before main() runs. CHECK* record a failure with file:line and let the test go on;
 * REQUIRE* also end the test. The runner prints one line per test and "N passed, N failed" last. */
#ifndef DUET_TEST_H
#define DUET_TEST_H

#include <math.h>
#include <stddef.h>
#include <stdio.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int test_failed_now(void); /* 1 if the running test has recorded a failure */

/* The whole file at path, NUL-terminated (caller frees); NULL if it cannot be read. */
char *test_read_file(const char *path, size_t *len);
/* Runs `$DUET_BIN args` (default build/duet) and returns its stdout (caller frees), with stderr mixed in
 * when keep_stderr; *status gets its exit status (-1 if it did not exit). */
char *test_run_cli(const char *args, int *status, int keep_stderr);

/* Directory of the test data copied from ../shared (tests/data), relative to the repository root. */
#define TEST_DATA "tests/data"

#define TEST(name)                                                              \
    static void name(void);                                                     \
    __attribute__((constructor)) static void name##_register(void) {            \
        test_register(#name, name);                                             \
    }                                                                           \
    static void name(void)

#define CHECK(cond)                                                             \
    do { if (!(cond)) test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond); } while (0)
#define CHECK_MSG(cond, ...)                                                    \
    do { if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define CHECK_EQ_INT(a, b)                                                      \
    do { long long a_ = (long long)(a), b_ = (long long)(b);                    \
         if (a_ != b_) test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_, b_); } while (0)
#define CHECK_NEAR(a, b, tol)                                                   \
    do { double a_ = (double)(a), b_ = (double)(b);                             \
         if (!(fabs(a_ - b_) <= (tol)))                                         \
             test_fail(__FILE__, __LINE__, "|%s - %s| = |%g - %g| > %g", #a, #b, a_, b_, (double)(tol)); } while (0)
#define REQUIRE(cond)                                                           \
    do { if (!(cond)) { test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond); return; } } while (0)
#define REQUIRE_MSG(cond, ...)                                                  \
    do { if (!(cond)) { test_fail(__FILE__, __LINE__, __VA_ARGS__); return; } } while (0)

#endif
