/* cron.c — cron expression parsing and next-fire-time search, in UTC.
 *
 * cron_next() walks the calendar field by field (month, day, hour, minute,
 * second), jumping to the next allowed value of each, so a search costs at
 * most a few thousand steps however far away the next fire time is. Dates
 * use Howard Hinnant's civil calendar algorithms instead of timegm() or
 * gmtime(), so the result never depends on TZ or on libc's time_t range.
 */
#include "core/cron.h"

#include <ctype.h>
#include <stddef.h>
#include <string.h>

/* Feb 29 of a year divisible by 100 but not 400 is skipped, so the longest
 * gap between fire times of a parse-accepted expression is 8 years (e.g.
 * 2096-02-29 to 2104-02-29). */
#define HORIZON_YEARS 8

static const char *const month_names[] = {
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN",
    "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
};
static const char *const weekday_names[] = {
    "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT",
};

struct field {
    const char *name;
    int min, max;
    int star_max;             /* `*` and `a/n` end here: 7 is only an alias */
    const char *const *names; /* names[i] means min + i */
    int nnames;
};

static const struct field fields[6] = {
    {"second", 0, 59, 59, NULL, 0},
    {"minute", 0, 59, 59, NULL, 0},
    {"hour", 0, 23, 23, NULL, 0},
    {"day-of-month", 1, 31, 31, NULL, 0},
    {"month", 1, 12, 12, month_names, 12},
    {"day-of-week", 0, 7, 6, weekday_names, 7},
};

/* ---- parsing ---------------------------------------------------------- */

/* Reads one number or name at *p. Numbers saturate so a huge value still
 * reports as out of range instead of overflowing. */
static int parse_value(const struct field *f, const char **p, const char *end,
                       const char *item, int ilen, int *out,
                       struct sd_error *err)
{
    const char *s = *p, *q = s;
    while (q < end && isalnum((unsigned char)*q))
        q++;
    int len = (int)(q - s);
    if (len == 0)
        return sd_error_set(err, "%s field: \"%.*s\" is missing a value",
                            f->name, ilen, item);

    int v = 0, digits = 1;
    for (const char *c = s; c < q; c++) {
        if (!isdigit((unsigned char)*c)) {
            digits = 0;
            break;
        }
        v = v > 100000 ? v : v * 10 + (*c - '0');
    }
    if (!digits) {
        v = -1;
        for (int i = 0; i < f->nnames && len == 3; i++) {
            const char *n = f->names[i];
            if (toupper((unsigned char)s[0]) == n[0] &&
                toupper((unsigned char)s[1]) == n[1] &&
                toupper((unsigned char)s[2]) == n[2])
                v = f->min + i;
        }
        if (v < 0)
            return sd_error_set(err, "%s field: \"%.*s\" is not a number or name",
                                f->name, len, s);
    }
    if (v < f->min || v > f->max)
        return sd_error_set(err, "%s field: %.*s is out of range %d-%d",
                            f->name, len, s, f->min, f->max);
    *p = q;
    *out = v;
    return 0;
}

/* One list item: `*`, `a`, or `a-b`, optionally followed by `/step`. */
static int parse_item(const struct field *f, const char *item, const char *end,
                      uint64_t *bits, struct sd_error *err)
{
    int ilen = (int)(end - item);
    const char *p = item;
    int lo, hi, step = 1;
    int open = 1; /* `*` or a bare `a`, which `/n` extends to the max */

    if (*p == '*') {
        p++;
        lo = f->min;
        hi = f->star_max;
    } else {
        if (parse_value(f, &p, end, item, ilen, &lo, err) < 0)
            return -1;
        hi = lo;
        if (p < end && *p == '-') {
            p++;
            if (parse_value(f, &p, end, item, ilen, &hi, err) < 0)
                return -1;
            if (hi < lo)
                return sd_error_set(err, "%s field: %.*s is a reversed range",
                                    f->name, ilen, item);
            open = 0;
        }
    }

    if (p < end && *p == '/') {
        const char *s = ++p;
        step = 0;
        while (p < end && isdigit((unsigned char)*p)) {
            step = step > 100000 ? step : step * 10 + (*p - '0');
            p++;
        }
        if (p == s)
            return sd_error_set(err, "%s field: \"%.*s\" is missing a step",
                                f->name, ilen, item);
        if (step == 0)
            return sd_error_set(err, "%s field: step 0 in \"%.*s\" must be at least 1",
                                f->name, ilen, item);
        if (open)
            hi = f->star_max > lo ? f->star_max : lo;
    }

    if (p != end)
        return sd_error_set(err, "%s field: unexpected \"%.*s\" in \"%.*s\"",
                            f->name, (int)(end - p), p, ilen, item);

    for (int v = lo; v <= hi; v += step)
        *bits |= (uint64_t)1 << v;
    return 0;
}

static int parse_field(const struct field *f, const char *s, const char *end,
                       uint64_t *bits, struct sd_error *err)
{
    const char *p = s;
    *bits = 0;
    for (;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        if (item_end == p)
            return sd_error_set(err, "%s field: empty list item in \"%.*s\"",
                                f->name, (int)(end - s), s);
        if (parse_item(f, p, item_end, bits, err) < 0)
            return -1;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

static const int max_mdays[13] = {0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

int cron_parse(const char *text, struct cron_expr *out, struct sd_error *err)
{
    const char *start[7], *stop[7];
    int n = 0;

    for (const char *p = text ? text : ""; *p;) {
        if (isspace((unsigned char)*p)) {
            p++;
            continue;
        }
        const char *s = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (n < 7) {
            start[n] = s;
            stop[n] = p;
        }
        n++;
    }
    if (n == 0)
        return sd_error_set(err, "empty cron expression");
    if (n != 5 && n != 6)
        return sd_error_set(err, "expected 5 or 6 fields, got %d", n);

    /* Filled locally so *out is untouched on error. */
    struct cron_expr e = {0};
    uint64_t bits[6] = {1, 0, 0, 0, 0, 0}; /* 5 fields: fire at second 0 */
    int first = n == 5 ? 1 : 0;
    for (int i = 0; i < n; i++) {
        const struct field *f = &fields[first + i];
        if (parse_field(f, start[i], stop[i], &bits[first + i], err) < 0)
            return -1;
    }

    if (bits[5] & 0x80) /* 7 is Sunday */
        bits[5] = (bits[5] & 0x7f) | 1;

    e.seconds = bits[0];
    e.minutes = bits[1];
    e.hours = (uint32_t)bits[2];
    e.days = (uint32_t)bits[3];
    e.months = (uint16_t)bits[4];
    e.weekdays = (uint8_t)bits[5];
    e.has_seconds = n == 6;
    e.dom_any = stop[n - 3] - start[n - 3] == 1 && *start[n - 3] == '*';
    e.dow_any = stop[n - 1] - start[n - 1] == 1 && *start[n - 1] == '*';

    /* Only day-of-month alone can rule out every day; a restricted weekday
     * matches every week, and OR-ing it in makes the day set non-empty. */
    if (!e.dom_any && e.dow_any) {
        int first_day = 0, ok = 0;
        for (int d = 31; d >= 1; d--)
            if (e.days >> d & 1)
                first_day = d;
        for (int m = 1; m <= 12; m++)
            if ((e.months >> m & 1) && first_day <= max_mdays[m])
                ok = 1;
        if (!ok)
            return sd_error_set(err, "day-of-month field: day %d never occurs in "
                                "the months selected", first_day);
    }

    *out = e;
    return 0;
}

/* ---- evaluation ------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b < 0);
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Hinnant). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int days_in_month(int64_t y, int m)
{
    if (m != 2)
        return max_mdays[m];
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 ? 29 : 28;
}

static int day_matches(const struct cron_expr *e, int64_t y, int m, int d)
{
    /* 1970-01-01 was a Thursday; +7 keeps the remainder of earlier days >= 0. */
    int wday = (int)((days_from_civil(y, m, d) % 7 + 7 + 4) % 7);
    int dom = e->days >> d & 1;
    int dow = e->weekdays >> wday & 1;
    if (e->dom_any)
        return dow || e->dow_any;
    if (e->dow_any)
        return dom;
    return dom || dow;
}

/* Lowest set bit of mask at or above `from`, or -1. */
static int next_bit(uint64_t mask, int from, int max)
{
    for (int v = from; v <= max; v++)
        if (mask >> v & 1)
            return v;
    return -1;
}

int64_t cron_next(const struct cron_expr *e, int64_t after)
{
    /* A 5-field expression fires on whole minutes, whatever a caller put in
     * `seconds`. */
    uint64_t seconds = e->has_seconds ? e->seconds : 1;
    if (!seconds || !e->minutes || !e->hours || !e->months ||
        (!e->days && !e->weekdays))
        return -1;
    /* Keeps the arithmetic below far from int64 overflow. */
    const int64_t limit = INT64_C(1) << 60;
    if (after < -limit || after > limit)
        return -1;

    int64_t t = after + 1;
    int64_t day = floor_div(t, 86400);
    int sod = (int)(t - day * 86400);
    int64_t y;
    int m, d;
    civil_from_days(day, &y, &m, &d);
    int H = sod / 3600, M = sod / 60 % 60, S = sod % 60;
    int64_t last_year = y + HORIZON_YEARS;

    /* Each `continue` moves to the start of the next candidate unit, with
     * the lower fields reset. A unit pushed past its end (hour 24, minute 60)
     * finds no next_bit() and so carries into the unit above. */
    while (y <= last_year) {
        if (!(e->months >> m & 1) || d > days_in_month(y, m)) {
            if (++m > 12) {
                m = 1;
                y++;
            }
            d = 1;
            H = M = S = 0;
            continue;
        }
        int h = day_matches(e, y, m, d) ? next_bit(e->hours, H, 23) : -1;
        if (h < 0) {
            d++;
            H = M = S = 0;
            continue;
        }
        if (h != H) {
            H = h;
            M = S = 0;
        }
        int mi = next_bit(e->minutes, M, 59);
        if (mi < 0) {
            H++;
            M = S = 0;
            continue;
        }
        if (mi != M) {
            M = mi;
            S = 0;
        }
        int s = next_bit(seconds, S, 59);
        if (s < 0) {
            M++;
            S = 0;
            continue;
        }
        return days_from_civil(y, m, d) * 86400 + H * 3600 + M * 60 + s;
    }
    return -1;
}
