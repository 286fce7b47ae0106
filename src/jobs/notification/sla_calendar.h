/* sla_calendar.h — business time in a room's calendar, for the SLA clock:
 * the moment N business minutes after a start, and the business minutes
 * between two moments.
 *
 * The calendar is the room's (SPEC §2): `business_hours` { mon: [span, ...],
 * ... } with spans ["09:00", "17:00"] or, where the database rejects nested
 * arrays (FerretDB 1.x), {from: "09:00", to: "17:00"}; several spans a day;
 * none (absent, or not a document) = around the clock. `holidays`
 * ["YYYY-MM-DD", ...] are local dates with no business hours. Local time is
 * the room's zone as its UTC offsets over time (notification_zone: [{at,
 * offset}] in effect from `at` on), so a span on a day the clocks change gets
 * that day's offset. This is counting, not policy: the targets, the warning
 * window and the ladder are sla.lua's (README, Rules). Counted in C because
 * it runs several times per conversation per tick (README, notification
 * benchmark: it was two thirds of the rules' CPU).
 *
 * Ownership: sla_calendar_init fills caller-owned storage that
 * sla_calendar_free releases. Errors follow core/error.h.
 */
#ifndef SD_JOBS_NOTIFICATION_SLA_CALENDAR_H
#define SD_JOBS_NOTIFICATION_SLA_CALENDAR_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

#define SLA_MAX_SPANS 16 /* per day */

struct sla_calendar {
    bool always;                     /* no business hours: around the clock */
    int n[7];                        /* spans per weekday, 0 = Sunday */
    int from[7][SLA_MAX_SPANS];      /* minutes of the local day, sorted by from */
    int to[7][SLA_MAX_SPANS];
    int64_t *zone_at;                /* ms; offsets in effect from zone_at[i] on */
    int64_t *zone_off;               /* ms east of UTC */
    size_t n_zone;                   /* 0: UTC */
    int64_t *closed;                 /* holidays as local day numbers, sorted */
    size_t n_closed;
};

/* hours: the room's business_hours value (NULL: around the clock); zone: the
 * [{at, offset}] array (NULL: UTC); holidays: the room's holidays array (NULL:
 * none). Fails on a malformed time ("business hours: bad time ...") or more
 * than SLA_MAX_SPANS spans in a day. */
int sla_calendar_init(struct sla_calendar *c, const bson_iter_t *hours, const bson_t *zone,
                      const bson_iter_t *holidays, struct sd_error *err);
void sla_calendar_free(struct sla_calendar *c);

/* The moment `minutes` business minutes after start_ms. Fails when the
 * calendar has no business hours within a year. */
int sla_calendar_due(const struct sla_calendar *c, int64_t start_ms, int64_t minutes,
                     int64_t *out, struct sd_error *err);

/* `supportd explain`: the walk behind sla_calendar_due, appended to `out`:
 *   spans: [{day: "YYYY-MM-DD mon", from, to (dates, UTC), minutes,
 *            utc_offset_minutes}]  each business span counted (at most 64),
 *   skipped: [{day, why: "holiday" | "no business hours on sun"}]
 *            the local days between start and due that count nothing,
 *   around_the_clock: true  when the room has no business hours. */
void sla_calendar_walk(const struct sla_calendar *c, int64_t start_ms, int64_t minutes,
                       bson_t *out);

/* Whole business minutes in [from_ms, to_ms). */
int64_t sla_calendar_between(const struct sla_calendar *c, int64_t from_ms, int64_t to_ms);

#endif
