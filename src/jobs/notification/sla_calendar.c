#include "jobs/notification/sla_calendar.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>

#include "core/clock.h"

#define DAY_MS 86400000LL

static const char *const day_names[7] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

static int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

/* "H:MM" or "HH:MM" into minutes of the day; -1 if not that shape. */
static int minutes_of(const char *s)
{
    int h = 0, digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 3) {
        h = h * 10 + (*s++ - '0');
        digits++;
    }
    if (digits < 1 || digits > 2 || *s++ != ':')
        return -1;
    if (!(s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9') || s[2])
        return -1;
    return h * 60 + (s[0] - '0') * 10 + (s[1] - '0');
}

static int span_time(const bson_iter_t *it, int *out, struct sd_error *err)
{
    const char *text = BSON_ITER_HOLDS_UTF8(it) ? bson_iter_utf8(it, NULL) : NULL;
    *out = text ? minutes_of(text) : -1;
    if (*out < 0)
        return sd_error_set(err, "business hours: bad time %s",
                            text ? text : "(not a \"HH:MM\" string)");
    return 0;
}

/* One span: ["09:00", "17:00"] or {from: "09:00", to: "17:00"}. */
static int read_span(bson_iter_t *span, int *from, int *to, struct sd_error *err)
{
    bson_iter_t in, f, t;
    if (!(BSON_ITER_HOLDS_ARRAY(span) || BSON_ITER_HOLDS_DOCUMENT(span)) ||
        !bson_iter_recurse(span, &in))
        return sd_error_set(err, "business hours: a span is neither [from, to] nor {from, to}");
    bson_iter_t scan = in;
    if (bson_iter_find(&scan, "from")) {
        f = scan;
        scan = in;
        if (!bson_iter_find(&scan, "to"))
            return sd_error_set(err, "business hours: a span has no \"to\"");
        t = scan;
    } else {
        f = in;
        if (!bson_iter_next(&f))
            return sd_error_set(err, "business hours: an empty span");
        t = f;
        if (!bson_iter_next(&t))
            return sd_error_set(err, "business hours: a span without its end");
    }
    return span_time(&f, from, err) || span_time(&t, to, err);
}

static int read_week(struct sla_calendar *c, const bson_iter_t *hours, struct sd_error *err)
{
    if (!hours || !BSON_ITER_HOLDS_DOCUMENT(hours)) {
        c->always = true;
        return 0;
    }
    for (int d = 0; d < 7; d++) {
        bson_iter_t week, spans;
        if (!bson_iter_recurse(hours, &week) || !bson_iter_find(&week, day_names[d]) ||
            !BSON_ITER_HOLDS_ARRAY(&week) || !bson_iter_recurse(&week, &spans))
            continue;
        while (bson_iter_next(&spans)) {
            if (c->n[d] == SLA_MAX_SPANS)
                return sd_error_set(err, "business hours: more than %d spans on %s",
                                    SLA_MAX_SPANS, day_names[d]);
            int k = c->n[d], from, to;
            if (read_span(&spans, &from, &to, err))
                return -1;
            /* insertion keeps the day sorted by start */
            while (k > 0 && c->from[d][k - 1] > from) {
                c->from[d][k] = c->from[d][k - 1];
                c->to[d][k] = c->to[d][k - 1];
                k--;
            }
            c->from[d][k] = from;
            c->to[d][k] = to;
            c->n[d]++;
        }
    }
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int sla_calendar_init(struct sla_calendar *c, const bson_iter_t *hours, const bson_t *zone,
                      const bson_iter_t *holidays, struct sd_error *err)
{
    memset(c, 0, sizeof *c);
    if (read_week(c, hours, err))
        return -1;
    bson_iter_t it, z;
    if (zone && bson_iter_init(&it, zone)) {
        size_t n = bson_count_keys(zone);
        c->zone_at = calloc(n + 1, sizeof *c->zone_at);
        c->zone_off = calloc(n + 1, sizeof *c->zone_off);
        while (c->zone_at && c->zone_off && bson_iter_next(&it)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &z))
                continue;
            int64_t at = 0, off = 0;
            while (bson_iter_next(&z)) {
                if (!strcmp(bson_iter_key(&z), "at") && BSON_ITER_HOLDS_NUMBER(&z))
                    at = bson_iter_as_int64(&z);
                else if (!strcmp(bson_iter_key(&z), "offset") && BSON_ITER_HOLDS_NUMBER(&z))
                    off = bson_iter_as_int64(&z) * 60000;
            }
            c->zone_at[c->n_zone] = at;
            c->zone_off[c->n_zone++] = off;
        }
    }
    bson_iter_t h;
    if (holidays && BSON_ITER_HOLDS_ARRAY(holidays) && bson_iter_recurse(holidays, &h)) {
        size_t cap = 8;
        c->closed = calloc(cap, sizeof *c->closed);
        while (bson_iter_next(&h)) {
            const char *d = BSON_ITER_HOLDS_UTF8(&h) ? bson_iter_utf8(&h, NULL) : "";
            int64_t ms;
            struct sd_error ignored;
            /* a date that is not YYYY-MM-DD never matches a day */
            if (strlen(d) != 10 || clock_parse_iso(d, &ms, &ignored))
                continue;
            if (!c->closed)
                break;
            if (c->n_closed == cap) {
                int64_t *grown = realloc(c->closed, (cap *= 2) * sizeof *grown);
                if (!grown)
                    break;
                c->closed = grown;
            }
            c->closed[c->n_closed++] = floor_div(ms, DAY_MS);
        }
        qsort(c->closed, c->n_closed, sizeof *c->closed, cmp_i64);
    }
    return 0;
}

void sla_calendar_free(struct sla_calendar *c)
{
    free(c->zone_at);
    free(c->zone_off);
    free(c->closed);
    memset(c, 0, sizeof *c);
}

/* ms east of UTC in effect at t: the first entry's before any, then the last
 * one whose `at` has passed. */
static int64_t offset_at(const struct sla_calendar *c, int64_t t)
{
    if (c->n_zone == 0)
        return 0;
    int64_t off = c->zone_off[0];
    for (size_t i = 0; i < c->n_zone && c->zone_at[i] <= t; i++)
        off = c->zone_off[i];
    return off;
}

/* Local wall time to UTC: the offset of the guess, refined once, so a day on
 * which the clocks change gets the offset in effect at that hour. */
static int64_t to_utc(const struct sla_calendar *c, int64_t local)
{
    int64_t guess = local - offset_at(c, local);
    return local - offset_at(c, guess);
}

static bool closed(const struct sla_calendar *c, int64_t day_number)
{
    return c->n_closed &&
           bsearch(&day_number, c->closed, c->n_closed, sizeof *c->closed, cmp_i64) != NULL;
}

/* The business spans (UTC) that end after start, in order, clipped to begin
 * at start at the earliest; at most a year of local days. Iterator state: */
struct walk {
    const struct sla_calendar *c;
    int64_t start, day;
    int days, wday, span;
};

static void walk_begin(struct walk *w, const struct sla_calendar *c, int64_t start)
{
    int64_t lt = start + offset_at(c, start);
    *w = (struct walk){.c = c, .start = start, .day = floor_div(lt, DAY_MS) * DAY_MS};
    w->wday = (int)((floor_div(w->day, DAY_MS) + 4) % 7); /* 1970-01-01 was a Thursday */
    if (w->wday < 0)
        w->wday += 7;
}

static bool walk_next(struct walk *w, int64_t *from, int64_t *to)
{
    const struct sla_calendar *c = w->c;
    while (w->days < 367) {
        if (!closed(c, floor_div(w->day, DAY_MS))) {
            while (w->span < c->n[w->wday]) {
                int k = w->span++;
                int64_t f = to_utc(c, w->day + c->from[w->wday][k] * 60000LL);
                int64_t t = to_utc(c, w->day + c->to[w->wday][k] * 60000LL);
                if (t > w->start) {
                    *from = f > w->start ? f : w->start;
                    *to = t;
                    return true;
                }
            }
        }
        w->day += DAY_MS;
        w->wday = (w->wday + 1) % 7;
        w->span = 0;
        w->days++;
    }
    return false;
}

int sla_calendar_due(const struct sla_calendar *c, int64_t start_ms, int64_t minutes,
                     int64_t *out, struct sd_error *err)
{
    if (c->always) {
        *out = start_ms + minutes * 60000;
        return 0;
    }
    int64_t left = minutes * 60000, from, to;
    struct walk w;
    walk_begin(&w, c, start_ms);
    while (walk_next(&w, &from, &to)) {
        if (from + left <= to) {
            *out = from + left;
            return 0;
        }
        left -= to - from;
    }
    return sd_error_set(err, "no business hours within a year");
}

int64_t sla_calendar_between(const struct sla_calendar *c, int64_t from_ms, int64_t to_ms)
{
    if (to_ms <= from_ms)
        return 0;
    if (c->always)
        return floor_div(to_ms - from_ms, 60000);
    int64_t total = 0, a, b;
    struct walk w;
    walk_begin(&w, c, from_ms);
    while (walk_next(&w, &a, &b)) {
        if (a >= to_ms)
            break;
        total += (b < to_ms ? b : to_ms) - a;
        if (b >= to_ms)
            break;
    }
    return floor_div(total, 60000);
}

static void day_text(int64_t local_day_ms, int wday, char *buf, size_t size)
{
    time_t t = (time_t)(local_day_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, size, "%04d-%02d-%02d %s", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             day_names[wday]);
}

void sla_calendar_walk(const struct sla_calendar *c, int64_t start_ms, int64_t minutes,
                       bson_t *out)
{
    if (c->always) {
        BSON_APPEND_BOOL(out, "around_the_clock", true);
        return;
    }
    bson_t spans, skipped;
    uint32_t n = 0, n_skipped = 0;
    int64_t left = minutes * 60000, from, to, end = start_ms;
    struct walk w;
    walk_begin(&w, c, start_ms);
    int64_t first_day = w.day;
    int first_wday = w.wday;
    BSON_APPEND_ARRAY_BEGIN(out, "spans", &spans);
    while (left > 0 && walk_next(&w, &from, &to)) {
        int64_t used = to - from < left ? to - from : left;
        end = from + used;
        left -= used;
        if (n >= 64)
            continue;
        char idx[16], day[32];
        const char *key;
        bson_uint32_to_string(n++, &key, idx, sizeof idx);
        day_text(w.day, w.wday, day, sizeof day);
        bson_t s;
        BSON_APPEND_DOCUMENT_BEGIN(&spans, key, &s);
        BSON_APPEND_UTF8(&s, "day", day);
        BSON_APPEND_DATE_TIME(&s, "from", from);
        BSON_APPEND_DATE_TIME(&s, "to", from + used);
        BSON_APPEND_INT64(&s, "minutes", used / 60000);
        BSON_APPEND_INT64(&s, "utc_offset_minutes", offset_at(c, from) / 60000);
        bson_append_document_end(&spans, &s);
    }
    bson_append_array_end(out, &spans);
    /* the local days up to the due day that count nothing */
    int64_t last_day = floor_div(end + offset_at(c, end), DAY_MS) * DAY_MS;
    BSON_APPEND_ARRAY_BEGIN(out, "skipped", &skipped);
    int wday = first_wday;
    for (int64_t day = first_day; day <= last_day && n_skipped < 64; day += DAY_MS) {
        const char *why = closed(c, floor_div(day, DAY_MS)) ? "holiday"
                          : c->n[wday] == 0                   ? "no business hours"
                                                              : NULL;
        if (why) {
            char idx[16], text[32], reason[48];
            const char *key;
            bson_uint32_to_string(n_skipped++, &key, idx, sizeof idx);
            day_text(day, wday, text, sizeof text);
            snprintf(reason, sizeof reason, "%s%s%s", why, c->n[wday] || *why == 'h' ? "" : " on ",
                     c->n[wday] || *why == 'h' ? "" : day_names[wday]);
            bson_t d;
            BSON_APPEND_DOCUMENT_BEGIN(&skipped, key, &d);
            BSON_APPEND_UTF8(&d, "day", text);
            BSON_APPEND_UTF8(&d, "why", reason);
            bson_append_document_end(&skipped, &d);
        }
        wday = (wday + 1) % 7;
    }
    bson_append_array_end(out, &skipped);
}
