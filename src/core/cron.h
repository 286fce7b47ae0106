/* cron.h — cron expressions, 5 fields (minute hour dom month dow) or 6 fields
 * (second minute hour dom month dow), evaluated in UTC.
 *
 * Supported per field: `*`, numbers, lists `a,b`, ranges `a-b`, steps `*\/n`,
 * `a-b/n` and `a/n` (from a to the field's max), month names JAN-DEC and weekday
 * names SUN-SAT (case-insensitive), 7 as Sunday. Day-of-month and day-of-week
 * follow Vixie cron: when both are restricted (neither is `*`), a day matches if
 * either matches.
 *
 * Ownership: `struct cron_expr` is a plain value (bitsets), no heap memory;
 * copy it freely. Errors follow core/error.h; messages name the field and the
 * bad token, e.g. "minute field: 61 is out of range 0-59".
 */
#ifndef SD_CORE_CRON_H
#define SD_CORE_CRON_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "core/error.h"

struct cron_expr {
    uint64_t seconds;   /* bit n set = second n (0-59) */
    uint64_t minutes;   /* 0-59 */
    uint32_t hours;     /* 0-23 */
    uint32_t days;      /* day of month, bits 1-31 */
    uint16_t months;    /* bits 1-12 */
    uint8_t weekdays;   /* bits 0-6, 0 = Sunday */
    bool dom_any;       /* day-of-month field was a literal `*` (not a step) */
    bool dow_any;       /* day-of-week field was a literal `*` */
    bool has_seconds;   /* the expression had 6 fields */
};

/* Parses text into *out. Returns 0, or -1 with err naming the field. */
int cron_parse(const char *text, struct cron_expr *out, struct sd_error *err);

/* The first fire time strictly after `after` (Unix seconds, UTC). For a 5-field
 * expression fire times are whole minutes. Returns -1 when no time matches
 * within 8 years (e.g. "0 0 30 2 *"), which cron_parse already rejects. */
int64_t cron_next(const struct cron_expr *expr, int64_t after);

#endif
