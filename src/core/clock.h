/* clock.h — wall-clock time in Unix milliseconds (UTC), ISO 8601 parsing and
 * formatting, civil-date arithmetic, and random ids. Pure except clock_now_ms,
 * clock_monotonic_ms and clock_random_hex. Errors follow core/error.h.
 */
#ifndef SD_CORE_CLOCK_H
#define SD_CORE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

int64_t clock_now_ms(void);

/* Milliseconds on CLOCK_MONOTONIC (durations; never jumps with the wall clock). */
int64_t clock_monotonic_ms(void);

/* Days since 1970-01-01 for a proleptic Gregorian date (month 1-12). */
int64_t clock_days_from_civil(int64_t y, unsigned m, unsigned d);
void clock_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);

/* Parses "YYYY-MM-DDTHH:MM[:SS[.fff]](Z|±HH:MM)" or "YYYY-MM-DD" (midnight UTC).
 * A time without zone is rejected: ambiguity is how ticks fire at the wrong hour. */
int clock_parse_iso(const char *text, int64_t *out_ms, struct sd_error *err);

/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" into buf (at least 25 bytes). */
void clock_format_iso(int64_t ms, char *buf, size_t size);

/* Fills buf with 2*nbytes lowercase hex characters from the OS's CSPRNG,
 * NUL-terminated; buf must hold 2*nbytes+1. */
int clock_random_hex(char *buf, size_t nbytes, struct sd_error *err);

#endif
