/* err.h: errors travel as a status code plus a message written into a caller's buffer (antirez style).
 * Library code never prints and never exits; main() decides. */
#ifndef DUET_BASE_ERR_H
#define DUET_BASE_ERR_H

#include <stddef.h>

/* Writes the formatted message into err[errlen] (if err is not NULL) and returns `status`, so that
 * `return err_set(err, errlen, DUET_EFORMAT, "bad magic %x", m);` reads as one statement. */
int err_set(char *err, size_t errlen, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Prefixes an existing message in err with "ctx: " (for adding the file name on the way up). */
void err_prefix(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
