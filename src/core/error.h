/* error.h — the one error convention of supportd.
 *
 * Fallible functions return 0 on success and -1 on failure, and fill a
 * caller-provided `struct sd_error` (which may be NULL when the caller does not
 * care). The message names the thing that failed and its id, e.g.
 * "QM_SUPPORT_SNOOZE_CRON: minute field: 61 is out of range 0-59".
 * The struct owns no heap memory: it can live on the stack and needs no free.
 */
#ifndef SD_CORE_ERROR_H
#define SD_CORE_ERROR_H

#include <stdarg.h>

struct sd_error {
    char message[512];
};

/* Formats into err (when non-NULL) and returns -1, so code can say
 * `return sd_error_set(err, "...", ...)`. */
int sd_error_set(struct sd_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefixes the existing message with "prefix: " and returns -1. */
int sd_error_prefix(struct sd_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
