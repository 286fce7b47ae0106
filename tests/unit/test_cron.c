#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/cron.h"

/* Times are written and compared as "YYYY-MM-DDTHH:MM:SSZ" so a failure shows
 * two readable dates. The conversion walks years and months one by one: slow,
 * but independent of the algorithm under test. */

static int is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int mdays(int y, int m)
{
    static const int n[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : n[m - 1];
}

static int64_t T(const char *iso)
{
    int y, mo, d, h, mi, s;
    if (sscanf(iso, "%d-%d-%dT%d:%d:%dZ", &y, &mo, &d, &h, &mi, &s) != 6)
        fail_msg("bad time literal %s", iso);
    int64_t days = 0;
    for (int i = 1970; i < y; i++)
        days += is_leap(i) ? 366 : 365;
    for (int i = y; i < 1970; i++)
        days -= is_leap(i) ? 366 : 365;
    for (int i = 1; i < mo; i++)
        days += mdays(y, i);
    days += d - 1;
    return days * 86400 + h * 3600 + mi * 60 + s;
}

static const char *fmt(int64_t t, char *buf, size_t n)
{
    if (t == -1)
        return "-1";
    int64_t days = t / 86400, sod = t % 86400;
    if (sod < 0) {
        sod += 86400;
        days--;
    }
    int y = 1970, m = 1;
    while (days < 0)
        days += is_leap(--y) ? 366 : 365;
    while (days >= (is_leap(y) ? 366 : 365))
        days -= is_leap(y++) ? 366 : 365;
    while (days >= mdays(y, m))
        days -= mdays(y, m++);
    snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02dZ", y, m, (int)days + 1,
             (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60));
    return buf;
}

static struct cron_expr parse_ok(const char *text)
{
    struct cron_expr e;
    struct sd_error err = {{0}};
    if (cron_parse(text, &e, &err) != 0)
        fail_msg("cron_parse(\"%s\") failed: %s", text, err.message);
    return e;
}

static void check_next(const char *text, const char *after, const char *want)
{
    struct cron_expr e = parse_ok(text);
    char buf[64];
    const char *got = fmt(cron_next(&e, T(after)), buf, sizeof buf);
    if (strcmp(got, want) != 0)
        fail_msg("\"%s\" after %s: got %s, want %s", text, after, got, want);
}

static void check_error(const char *text, const char *want)
{
    struct cron_expr e;
    struct sd_error err = {{0}};
    if (cron_parse(text, &e, &err) != -1)
        fail_msg("cron_parse(\"%s\") accepted, want error \"%s\"", text, want);
    if (!strstr(err.message, want))
        fail_msg("cron_parse(\"%s\"): message \"%s\" lacks \"%s\"", text,
                 err.message, want);
}

/* ---- fire times --------------------------------------------------------- */

static void test_every_minute(void **state)
{
    (void)state;
    check_next("* * * * *", "2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z");
    check_next("* * * * *", "2024-01-01T00:00:59Z", "2024-01-01T00:01:00Z");
    check_next("* * * * *", "2024-01-01T00:00:01Z", "2024-01-01T00:01:00Z");
    check_next(" \t*  * * *\t*  ", "2024-01-01T00:00:01Z", "2024-01-01T00:01:00Z");
}

static void test_strictly_after(void **state)
{
    (void)state;
    check_next("0 * * * *", "2024-01-01T01:00:00Z", "2024-01-01T02:00:00Z");
    check_next("0 * * * *", "2024-01-01T00:59:59Z", "2024-01-01T01:00:00Z");
    check_next("30 30 12 * * *", "2024-01-01T12:30:30Z", "2024-01-02T12:30:30Z");
    check_next("30 12 * * * *", "2024-01-01T12:30:30Z", "2024-01-01T13:12:30Z");
    check_next("0 0 1 1 *", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z");
}

static void test_steps(void **state)
{
    (void)state;
    struct cron_expr e = parse_ok("*/15 */6 */10 */4 */2");
    assert_int_equal(e.minutes, 1ull << 0 | 1ull << 15 | 1ull << 30 | 1ull << 45);
    assert_int_equal(e.hours, 1u << 0 | 1u << 6 | 1u << 12 | 1u << 18);
    assert_int_equal(e.days, 1u << 1 | 1u << 11 | 1u << 21 | 1u << 31);
    assert_int_equal(e.months, 1u << 1 | 1u << 5 | 1u << 9);
    assert_int_equal(e.weekdays, 1u << 0 | 1u << 2 | 1u << 4 | 1u << 6);

    e = parse_ok("10-30/10 5/20 * * *"); /* a/n runs from a to the max */
    assert_int_equal(e.minutes, 1ull << 10 | 1ull << 20 | 1ull << 30);
    assert_int_equal(e.hours, 1u << 5);
    e = parse_ok("0 5/7 * * *");
    assert_int_equal(e.hours, 1u << 5 | 1u << 12 | 1u << 19);
    e = parse_ok("*/90 * * * *"); /* a step beyond the range keeps the start */
    assert_int_equal(e.minutes, 1ull);

    check_next("*/15 * * * *", "2024-01-01T00:44:59Z", "2024-01-01T00:45:00Z");
    check_next("*/15 * * * *", "2024-01-01T00:45:00Z", "2024-01-01T01:00:00Z");
    check_next("0 5/7 * * *", "2024-01-01T19:00:00Z", "2024-01-02T05:00:00Z");
}

static void test_ranges_and_lists(void **state)
{
    (void)state;
    struct cron_expr e = parse_ok("0,30 8-10,20 1-3,15 * *");
    assert_int_equal(e.minutes, 1ull << 0 | 1ull << 30);
    assert_int_equal(e.hours, 1u << 8 | 1u << 9 | 1u << 10 | 1u << 20);
    assert_int_equal(e.days, 1u << 1 | 1u << 2 | 1u << 3 | 1u << 15);
    assert_false(e.dom_any);
    assert_true(e.dow_any);
    assert_false(e.has_seconds);

    check_next("0 9-17 * * *", "2024-01-01T17:00:00Z", "2024-01-02T09:00:00Z");
    check_next("0 9-17 * * *", "2024-01-01T12:34:00Z", "2024-01-01T13:00:00Z");
    check_next("0,30 8,20 * * *", "2024-01-01T08:30:00Z", "2024-01-01T20:00:00Z");
    check_next("0,30 8,20 * * *", "2024-01-01T20:30:00Z", "2024-01-02T08:00:00Z");
    check_next("5 4 1-3,15 * *", "2024-01-03T04:05:00Z", "2024-01-15T04:05:00Z");
}

static void test_names(void **state)
{
    (void)state;
    struct cron_expr e = parse_ok("0 0 1 jan,Jul,DEC sun,Wed");
    assert_int_equal(e.months, 1u << 1 | 1u << 7 | 1u << 12);
    assert_int_equal(e.weekdays, 1u << 0 | 1u << 3);
    e = parse_ok("0 0 * JAN-MAR MON-FRI");
    assert_int_equal(e.months, 1u << 1 | 1u << 2 | 1u << 3);
    assert_int_equal(e.weekdays, 0x3e);
    e = parse_ok("0 0 * feb-12/3 *");
    assert_int_equal(e.months, 1u << 2 | 1u << 5 | 1u << 8 | 1u << 11);

    /* 2024-01-05 is a Friday. */
    check_next("0 9 * * MON-FRI", "2024-01-05T10:00:00Z", "2024-01-08T09:00:00Z");
    check_next("0 9 * * MON-FRI", "2024-01-05T08:00:00Z", "2024-01-05T09:00:00Z");
    check_next("0 0 1 jul *", "2024-01-05T08:00:00Z", "2024-07-01T00:00:00Z");
}

static void test_seven_is_sunday(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("0 0 * * 7").weekdays, 1u);
    assert_int_equal(parse_ok("0 0 * * 0,7").weekdays, 1u);
    assert_int_equal(parse_ok("0 0 * * 5-7").weekdays, 1u << 0 | 1u << 5 | 1u << 6);
    /* `*` covers 0-6 only, so a step does not land on 7 twice. */
    assert_int_equal(parse_ok("0 0 * * */7").weekdays, 1u);
    /* 2024-01-03 is a Wednesday. */
    check_next("0 0 * * 7", "2024-01-03T00:00:00Z", "2024-01-07T00:00:00Z");
}

static void test_vixie_dom_dow(void **state)
{
    (void)state;
    /* Both restricted: the 13th OR any Friday. 2024-09-01 is a Sunday; the
     * first Friday is the 6th, and Friday the 13th fires once. */
    check_next("0 0 13 * FRI", "2024-09-01T00:00:00Z", "2024-09-06T00:00:00Z");
    check_next("0 0 13 * FRI", "2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z");
    check_next("0 0 13 * FRI", "2024-09-13T00:00:00Z", "2024-09-20T00:00:00Z");
    check_next("0 0 13 * MON", "2024-09-09T00:00:00Z", "2024-09-13T00:00:00Z");
    /* Only one restricted: only that one counts. */
    check_next("0 0 13 * *", "2024-09-01T00:00:00Z", "2024-09-13T00:00:00Z");
    check_next("0 0 * * FRI", "2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z");
    /* `*` is the only unrestricted spelling: `*\/1` counts as restricted. */
    struct cron_expr e = parse_ok("0 0 */1 * *");
    assert_false(e.dom_any);
    assert_true(e.dow_any);
    e = parse_ok("0 0 * * *");
    assert_true(e.dom_any);
    assert_true(e.dow_any);
    /* A day that never occurs is fine when the weekday can fire instead. */
    check_next("0 0 30 2 MON", "2024-02-01T00:00:00Z", "2024-02-05T00:00:00Z");
}

static void test_feb_29(void **state)
{
    (void)state;
    check_next("0 0 29 2 *", "2025-03-01T00:00:00Z", "2028-02-29T00:00:00Z");
    check_next("0 0 29 2 *", "2024-02-28T23:59:59Z", "2024-02-29T00:00:00Z");
    check_next("0 0 29 2 *", "2024-02-29T00:00:00Z", "2028-02-29T00:00:00Z");
    /* 2100 is not a leap year: the longest possible gap, 8 years. */
    check_next("0 0 29 2 *", "2096-03-01T00:00:00Z", "2104-02-29T00:00:00Z");
    check_next("0 0 29 2 *", "1999-03-01T00:00:00Z", "2000-02-29T00:00:00Z");
    check_next("0 0 * 2 *", "2023-02-28T00:00:00Z", "2024-02-01T00:00:00Z");
}

static void test_end_of_month(void **state)
{
    (void)state;
    check_next("0 0 31 * *", "2024-04-01T00:00:00Z", "2024-05-31T00:00:00Z");
    check_next("0 0 31 * *", "2024-05-31T00:00:00Z", "2024-07-31T00:00:00Z");
    check_next("0 0 31 * *", "2024-07-31T00:00:00Z", "2024-08-31T00:00:00Z");
    check_next("0 0 30 * *", "2024-01-30T00:00:00Z", "2024-03-30T00:00:00Z");
    check_next("0 0 31 4,6,9,11,12 *", "2024-01-01T00:00:00Z", "2024-12-31T00:00:00Z");
}

static void test_year_rollover(void **state)
{
    (void)state;
    check_next("0 0 1 1 *", "2024-12-31T23:59:59Z", "2025-01-01T00:00:00Z");
    check_next("59 23 31 12 *", "2024-12-31T23:59:00Z", "2025-12-31T23:59:00Z");
    check_next("* * * * * *", "2024-12-31T23:59:59Z", "2025-01-01T00:00:00Z");
    check_next("0 0 1 1 *", "1969-06-01T00:00:00Z", "1970-01-01T00:00:00Z");
    check_next("0 12 * * *", "1900-02-28T13:00:00Z", "1900-03-01T12:00:00Z");
}

static void test_six_fields(void **state)
{
    (void)state;
    struct cron_expr e = parse_ok("*/30 * * * * *");
    assert_true(e.has_seconds);
    assert_int_equal(e.seconds, 1ull << 0 | 1ull << 30);
    check_next("*/30 * * * * *", "2024-01-01T00:00:00Z", "2024-01-01T00:00:30Z");
    check_next("*/30 * * * * *", "2024-01-01T00:00:29Z", "2024-01-01T00:00:30Z");
    check_next("*/30 * * * * *", "2024-01-01T00:00:30Z", "2024-01-01T00:01:00Z");
    check_next("*/30 * * * * *", "2024-01-01T23:59:45Z", "2024-01-02T00:00:00Z");
    check_next("15 30 12 * * *", "2024-01-01T12:30:16Z", "2024-01-02T12:30:15Z");
    /* 5 fields fire on whole minutes even though seconds are not given. */
    e = parse_ok("* * * * *");
    assert_false(e.has_seconds);
    assert_int_equal(e.seconds, 1ull);
}

/* The field-by-field walk against a naive scan over the parsed bitsets, for
 * awkward expressions at pseudo-random start times. The scan skips whole
 * days that do not match only to keep the test fast. */
static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b < 0);
}

static int64_t naive_next(const struct cron_expr *e, int64_t after)
{
    for (int64_t t = (floor_div(after, 60) + 1) * 60;;) {
        char buf[64];
        int y, mo, d, h, mi, s;
        sscanf(fmt(t, buf, sizeof buf), "%d-%d-%dT%d:%d:%dZ", &y, &mo, &d, &h, &mi, &s);
        int wday = (int)((floor_div(t, 86400) % 7 + 7 + 4) % 7); /* 1970-01-01: Thursday */
        int dom = e->days >> d & 1, dow = e->weekdays >> wday & 1;
        int day = e->dom_any ? (e->dow_any || dow) : e->dow_any ? dom : (dom || dow);
        if (!(e->months >> mo & 1) || !day)
            t = (floor_div(t, 86400) + 1) * 86400;
        else if ((e->hours >> h & 1) && (e->minutes >> mi & 1))
            return t;
        else
            t += 60;
    }
}

static void test_against_naive_scan(void **state)
{
    (void)state;
    static const char *const exprs[] = {
        "*/7 3-5 * * *", "0 0 13 * FRI", "30 23 31 * *", "0 0 29 2 *",
        "0 0 * * 7", "*/20 * 30 * *",
        "1-59/29 */5 1,15 jan-mar,oct sun-tue", "0 12 * 6-8 6,7", "59 23 28-31 * *",
    };
    uint64_t seed = 12345;
    for (size_t i = 0; i < sizeof exprs / sizeof *exprs; i++) {
        struct cron_expr e = parse_ok(exprs[i]);
        for (int k = 0; k < 20; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            int64_t after = T("2020-01-01T00:00:00Z") + (int64_t)(seed >> 33) % (6 * 366 * 86400);
            int64_t want = naive_next(&e, after);
            int64_t got = cron_next(&e, after);
            if (got != want) {
                char a[64], g[64], w[64];
                fail_msg("\"%s\" after %s: got %s, want %s", exprs[i],
                         fmt(after, a, sizeof a), fmt(got, g, sizeof g),
                         fmt(want, w, sizeof w));
            }
        }
    }
}

/* ---- errors ------------------------------------------------------------- */

static void test_error_field_count(void **state)
{
    (void)state;
    check_error("* * * *", "expected 5 or 6 fields, got 4");
    check_error("* * * * * * *", "expected 5 or 6 fields, got 7");
    check_error("* * * * * * * * * *", "expected 5 or 6 fields, got 10");
    check_error("", "empty cron expression");
    check_error("  \t ", "empty cron expression");
    check_error(NULL, "empty cron expression");
}

static void test_error_out_of_range(void **state)
{
    (void)state;
    check_error("61 * * * *", "minute field: 61 is out of range 0-59");
    check_error("* 24 * * *", "hour field: 24 is out of range 0-23");
    check_error("* * 0 * *", "day-of-month field: 0 is out of range 1-31");
    check_error("* * 32 * *", "day-of-month field: 32 is out of range 1-31");
    check_error("* * * 13 *", "month field: 13 is out of range 1-12");
    check_error("* * * 0 *", "month field: 0 is out of range 1-12");
    check_error("* * * * 8", "day-of-week field: 8 is out of range 0-7");
    check_error("60 * * * * *", "second field: 60 is out of range 0-59");
    check_error("1-99 * * * *", "minute field: 99 is out of range 0-59");
    check_error("99999999999999999999 * * * *",
                "minute field: 99999999999999999999 is out of range 0-59");
}

static void test_error_not_a_number(void **state)
{
    (void)state;
    check_error("0 x * * *", "hour field: \"x\" is not a number or name");
    check_error("0 0 * FOO *", "month field: \"FOO\" is not a number or name");
    check_error("0 0 * MON *", "month field: \"MON\" is not a number or name");
    check_error("0 0 * * JAN", "day-of-week field: \"JAN\" is not a number or name");
    check_error("0 0 * * MONDAY", "day-of-week field: \"MONDAY\" is not a number or name");
    check_error("0 0 * * MON-fr", "day-of-week field: \"fr\" is not a number or name");
    check_error("5x * * * *", "minute field: \"5x\" is not a number or name");
}

static void test_error_step(void **state)
{
    (void)state;
    check_error("*/0 * * * *", "minute field: step 0 in \"*/0\" must be at least 1");
    check_error("0 1-5/0 * * *", "hour field: step 0");
    check_error("*/ * * * *", "minute field: \"*/\" is missing a step");
    check_error("*/x * * * *", "minute field: \"*/x\" is missing a step");
}

static void test_error_reversed_range(void **state)
{
    (void)state;
    check_error("5-2 * * * *", "minute field: 5-2 is a reversed range");
    check_error("0 0 * DEC-JAN *", "month field: DEC-JAN is a reversed range");
    check_error("0 0 * * FRI-SUN", "day-of-week field: FRI-SUN is a reversed range");
}

static void test_error_empty_list_item(void **state)
{
    (void)state;
    check_error(",5 * * * *", "minute field: empty list item in \",5\"");
    check_error("1,,2 * * * *", "minute field: empty list item in \"1,,2\"");
    check_error("0 1, * * *", "hour field: empty list item in \"1,\"");
}

static void test_error_trailing_garbage(void **state)
{
    (void)state;
    check_error("1-2-3 * * * *", "minute field: unexpected \"-3\" in \"1-2-3\"");
    check_error("*/5/2 * * * *", "minute field: unexpected \"/2\" in \"*/5/2\"");
    check_error("5.5 * * * *", "minute field: unexpected \".5\" in \"5.5\"");
    check_error("** * * * *", "minute field: unexpected \"*\" in \"**\"");
    check_error("*-5 * * * *", "minute field: unexpected \"-5\" in \"*-5\"");
    check_error("1- * * * *", "minute field: \"1-\" is missing a value");
    check_error("-1 * * * *", "minute field: \"-1\" is missing a value");
}

static void test_error_never_fires(void **state)
{
    (void)state;
    check_error("0 0 30 2 *", "day-of-month field: day 30 never occurs in the months selected");
    check_error("0 0 31 4 *", "day-of-month field: day 31 never occurs in the months selected");
    check_error("0 0 31 4,6,9,11 *", "day-of-month field: day 31 never occurs");
    check_error("0 0 30,31 feb *", "day-of-month field: day 30 never occurs");
    check_error("0 0 0 30 2 *", "day-of-month field: day 30 never occurs");
}

static void test_error_leaves_output_alone(void **state)
{
    (void)state;
    struct cron_expr e = parse_ok("1 2 3 4 5");
    struct cron_expr before = e;
    assert_int_equal(cron_parse("61 * * * *", &e, NULL), -1); /* err may be NULL */
    assert_memory_equal(&e, &before, sizeof e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_minute),
        cmocka_unit_test(test_strictly_after),
        cmocka_unit_test(test_steps),
        cmocka_unit_test(test_ranges_and_lists),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_seven_is_sunday),
        cmocka_unit_test(test_vixie_dom_dow),
        cmocka_unit_test(test_feb_29),
        cmocka_unit_test(test_end_of_month),
        cmocka_unit_test(test_year_rollover),
        cmocka_unit_test(test_six_fields),
        cmocka_unit_test(test_against_naive_scan),
        cmocka_unit_test(test_error_field_count),
        cmocka_unit_test(test_error_out_of_range),
        cmocka_unit_test(test_error_not_a_number),
        cmocka_unit_test(test_error_step),
        cmocka_unit_test(test_error_reversed_range),
        cmocka_unit_test(test_error_empty_list_item),
        cmocka_unit_test(test_error_trailing_garbage),
        cmocka_unit_test(test_error_never_fires),
        cmocka_unit_test(test_error_leaves_output_alone),
    };
    return cmocka_run_group_tests_name("cron", tests, NULL, NULL);
}
