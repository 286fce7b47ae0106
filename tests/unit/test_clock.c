#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/clock.h"

/* Unix times below were checked with `date -u -d <iso> +%s`. */
#define T_2026_01_31_0930 1769851800LL /* 2026-01-31T09:30:00Z */
#define T_2026_01_31_0000 1769817600LL
#define T_2028_02_29_0000 1835395200LL
#define T_2100_01_01_0000 4102444800LL
#define T_2100_03_01_0000 4107542400LL
#define T_1900_03_01_0000 (-2203891200LL)

static int64_t parse_ok(const char *text)
{
    int64_t ms = 0;
    struct sd_error err = {{0}};
    if (clock_parse_iso(text, &ms, &err) != 0)
        fail_msg("clock_parse_iso(\"%s\") failed: %s", text, err.message);
    return ms;
}

static void check_parse(const char *text, int64_t want_ms)
{
    int64_t got = parse_ok(text);
    if (got != want_ms)
        fail_msg("clock_parse_iso(\"%s\") = %lld, want %lld", text, (long long)got,
                 (long long)want_ms);
}

/* Expects a rejection whose message quotes the text and contains `want`. */
static void check_reject(const char *text, const char *want)
{
    int64_t ms = 0;
    struct sd_error err = {{0}};
    if (clock_parse_iso(text, &ms, &err) != -1)
        fail_msg("clock_parse_iso(\"%s\") accepted (%lld)", text ? text : "(null)",
                 (long long)ms);
    if (text && !strstr(err.message, text))
        fail_msg("clock_parse_iso(\"%s\"): message \"%s\" does not quote the text", text,
                 err.message);
    if (want && !strstr(err.message, want))
        fail_msg("clock_parse_iso(\"%s\"): message \"%s\" lacks \"%s\"", text, err.message, want);
}

static void check_format(int64_t ms, const char *want)
{
    char buf[32];
    clock_format_iso(ms, buf, sizeof buf);
    if (strcmp(buf, want) != 0)
        fail_msg("clock_format_iso(%lld) = %s, want %s", (long long)ms, buf, want);
}

/* ---- clock_parse_iso ---------------------------------------------------- */

static void test_parse_utc(void **state)
{
    (void)state;
    check_parse("2026-01-31T09:30:00Z", T_2026_01_31_0930 * 1000);
    check_parse("2026-01-31t09:30:00z", T_2026_01_31_0930 * 1000);
    check_parse("2026-01-31 09:30:00Z", T_2026_01_31_0930 * 1000);
    check_parse("2026-01-31T09:30Z", T_2026_01_31_0930 * 1000); /* seconds optional */
    check_parse("2026-01-31T09:30:59Z", (T_2026_01_31_0930 + 59) * 1000);
    check_parse("1970-01-01T00:00:00Z", 0);
    check_parse("1969-12-31T23:59:59Z", -1000);
}

static void test_parse_offsets(void **state)
{
    (void)state;
    const int64_t want = T_2026_01_31_0930 * 1000;
    check_parse("2026-01-31T11:30:00+02:00", want);
    check_parse("2026-01-31T11:30:00+0200", want);
    check_parse("2026-01-31T04:00:00-05:30", want);
    check_parse("2026-01-31T04:00:00-0530", want);
    check_parse("2026-01-31T09:30:00+00:00", want);
    check_parse("2026-01-31T09:30:00-00:00", want);
    check_parse("2026-01-31T11:30+02:00", want);
    /* An offset can move the instant to another day. */
    check_parse("2026-01-31T00:30:00+01:00", (T_2026_01_31_0000 - 1800) * 1000);
    check_parse("2026-01-30T23:00:00-10:30", (T_2026_01_31_0930) * 1000);
}

static void test_parse_fraction(void **state)
{
    (void)state;
    const int64_t base = T_2026_01_31_0930 * 1000;
    check_parse("2026-01-31T09:30:00.5Z", base + 500);
    check_parse("2026-01-31T09:30:00.05Z", base + 50);
    check_parse("2026-01-31T09:30:00.123Z", base + 123);
    check_parse("2026-01-31T09:30:00.999+00:00", base + 999);
    check_parse("2026-01-31T09:30:00.123456789Z", base + 123); /* truncated to ms */
    check_parse("2026-01-31T11:30:00.250+02:00", base + 250);
    check_parse("1969-12-31T23:59:59.500Z", -500);
    check_reject("2026-01-31T09:30:00.Z", NULL);
}

static void test_parse_date_only(void **state)
{
    (void)state;
    check_parse("2026-01-31", T_2026_01_31_0000 * 1000);
    check_parse("1970-01-01", 0);
    check_parse("2028-02-29", T_2028_02_29_0000 * 1000);
}

static void test_parse_requires_zone(void **state)
{
    (void)state;
    check_reject("2026-01-31T09:30:00", "time zone");
    check_reject("2026-01-31T09:30", "time zone");
    check_reject("2026-01-31T09:30:00.123", "time zone");
}

static void test_parse_leap_days(void **state)
{
    (void)state;
    check_parse("2028-02-29T00:00:00Z", T_2028_02_29_0000 * 1000);
    check_parse("2028-03-01T00:00:00Z", (T_2028_02_29_0000 + 86400) * 1000);
    check_reject("2027-02-29T00:00:00Z", "not a valid date");
    check_reject("2027-02-29", "not a valid date");
    check_parse("2000-02-29T12:00:00Z", (951868800LL - 43200) * 1000); /* 400-year rule */
    check_reject("2100-02-29", "not a valid date");                   /* 100-year rule */
    check_reject("2026-04-31", "not a valid date");
}

static void test_parse_garbage(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "hello",
        "2026",
        "2026-01",
        "2026-1-31",
        "26-01-31",
        "2026/01/31",
        "2026-01-31T",
        "2026-01-31T9:30Z",
        "2026-01-31T09Z",
        "2026-01-31T09:30:0Z",
        "2026-01-31T09:30:00ZZ",
        "2026-01-31T09:30:00Z ",
        "2026-01-31T09:30:00+2",
        "2026-01-31T09:30:00+02",
        "2026-01-31T09:30:00+02:0",
        "2026-01-31T09:30:00+24:00",
        "2026-01-31T09:30:00+02:60",
        "2026-01-31X09:30:00Z",
        "2026-01-31junk",
        " 2026-01-31",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        check_reject(bad[i], NULL);
    check_reject("2026-13-01", "not a valid date");
    check_reject("2026-00-10", "not a valid date");
    check_reject("2026-01-32", "not a valid date");
    check_reject("2026-01-00", "not a valid date");
    check_reject("2026-01-31T24:00:00Z", "not a valid time of day");
    check_reject("2026-01-31T09:60:00Z", "not a valid time of day");
    check_reject("2026-01-31T09:30:61Z", "not a valid time of day");
    check_reject(NULL, NULL);
}

static void test_parse_error_keeps_err_optional(void **state)
{
    (void)state;
    int64_t ms = 0;
    assert_int_equal(clock_parse_iso("nope", &ms, NULL), -1);
    assert_int_equal(clock_parse_iso("2026-01-31T09:30:00", &ms, NULL), -1);
    assert_int_equal(clock_parse_iso("2026-01-31T09:30:00Z", &ms, NULL), 0);
    assert_int_equal(ms, T_2026_01_31_0930 * 1000);
}

/* ---- clock_format_iso -------------------------------------------------- */

static void test_format(void **state)
{
    (void)state;
    check_format(0, "1970-01-01T00:00:00.000Z");
    check_format(T_2026_01_31_0930 * 1000 + 7, "2026-01-31T09:30:00.007Z");
    check_format(T_2028_02_29_0000 * 1000, "2028-02-29T00:00:00.000Z");

    /* Before 1970 the millisecond and day parts still count forward. */
    check_format(-1, "1969-12-31T23:59:59.999Z");
    check_format(-1000, "1969-12-31T23:59:59.000Z");
    check_format(-1001, "1969-12-31T23:59:58.999Z");
    check_format(-86400000, "1969-12-31T00:00:00.000Z");
    check_format(-86400001, "1969-12-30T23:59:59.999Z");
    check_format(T_1900_03_01_0000 * 1000 - 1, "1900-02-28T23:59:59.999Z"); /* 1900: no Feb 29 */

    /* 2100 rollovers: new year, and no Feb 29. */
    check_format(T_2100_01_01_0000 * 1000 - 1, "2099-12-31T23:59:59.999Z");
    check_format(T_2100_01_01_0000 * 1000, "2100-01-01T00:00:00.000Z");
    check_format(T_2100_03_01_0000 * 1000 - 1, "2100-02-28T23:59:59.999Z");
    check_format(T_2100_03_01_0000 * 1000, "2100-03-01T00:00:00.000Z");
}

static void test_format_fits_25_bytes(void **state)
{
    (void)state;
    char buf[25];
    memset(buf, 'x', sizeof buf);
    clock_format_iso(T_2026_01_31_0930 * 1000 + 999, buf, sizeof buf);
    assert_string_equal(buf, "2026-01-31T09:30:00.999Z");
}

static void test_format_parse_round_trip(void **state)
{
    (void)state;
    static const int64_t samples[] = {
        0, 1, -1, 999, -999, 1000, -1000, -1001, 86399999, -86400000, -86400001,
        T_1900_03_01_0000 * 1000 - 1, T_1900_03_01_0000 * 1000,
        T_2100_01_01_0000 * 1000 - 1, T_2100_01_01_0000 * 1000,
        T_2100_03_01_0000 * 1000 - 1, T_2100_03_01_0000 * 1000,
        T_2028_02_29_0000 * 1000 + 86399999,
        -62135596800000LL, /* 0001-01-01T00:00:00.000Z */
        253402300799999LL, /* 9999-12-31T23:59:59.999Z */
    };
    for (size_t i = 0; i < sizeof samples / sizeof *samples; i++) {
        char buf[32];
        clock_format_iso(samples[i], buf, sizeof buf);
        int64_t back = parse_ok(buf);
        if (back != samples[i])
            fail_msg("%lld -> %s -> %lld", (long long)samples[i], buf, (long long)back);
    }
    /* And a sweep across a few centuries at an odd stride. */
    for (int64_t ms = -3000000000000LL; ms < 5000000000000LL; ms += 7777777777LL + 13) {
        char buf[32];
        clock_format_iso(ms, buf, sizeof buf);
        if (parse_ok(buf) != ms)
            fail_msg("%lld -> %s does not parse back", (long long)ms, buf);
    }
}

/* ---- civil calendar ---------------------------------------------------- */

static int is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned mdays(int64_t y, unsigned m)
{
    static const unsigned n[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : n[m - 1];
}

static void test_civil_anchors(void **state)
{
    (void)state;
    assert_int_equal(clock_days_from_civil(1970, 1, 1), 0);
    assert_int_equal(clock_days_from_civil(1970, 1, 2), 1);
    assert_int_equal(clock_days_from_civil(1969, 12, 31), -1);
    assert_int_equal(clock_days_from_civil(2000, 3, 1), 951868800 / 86400);
    assert_int_equal(clock_days_from_civil(2028, 2, 29), T_2028_02_29_0000 / 86400);
    assert_int_equal(clock_days_from_civil(2100, 3, 1), T_2100_03_01_0000 / 86400);
    assert_int_equal(clock_days_from_civil(1900, 3, 1), T_1900_03_01_0000 / 86400);
    assert_int_equal(clock_days_from_civil(1600, 1, 1), -135140);

    int64_t y;
    unsigned m, d;
    clock_civil_from_days(-1, &y, &m, &d);
    assert_int_equal(y, 1969);
    assert_int_equal(m, 12);
    assert_int_equal(d, 31);
    clock_civil_from_days(T_2100_03_01_0000 / 86400 - 1, &y, &m, &d);
    assert_int_equal(y, 2100);
    assert_int_equal(m, 2);
    assert_int_equal(d, 28);
}

/* Walks day by day from 1600-01-01 to 2500-12-31 with an independent
 * calendar, checking both conversions at every step. */
static void test_civil_walk(void **state)
{
    (void)state;
    int64_t y = 1600;
    unsigned m = 1, d = 1;
    for (int64_t z = -135140; y <= 2500; z++) {
        int64_t gy;
        unsigned gm, gd;
        clock_civil_from_days(z, &gy, &gm, &gd);
        if (gy != y || gm != m || gd != d)
            fail_msg("civil_from_days(%lld) = %lld-%u-%u, want %lld-%u-%u", (long long)z,
                     (long long)gy, gm, gd, (long long)y, m, d);
        int64_t back = clock_days_from_civil(y, m, d);
        if (back != z)
            fail_msg("days_from_civil(%lld-%u-%u) = %lld, want %lld", (long long)y, m, d,
                     (long long)back, (long long)z);
        if (++d > mdays(y, m)) {
            d = 1;
            if (++m > 12) {
                m = 1;
                y++;
            }
        }
    }
}

/* Round trip far outside the walk, including negative years. */
static void test_civil_round_trip_wide(void **state)
{
    (void)state;
    for (int64_t z = -100000000; z <= 100000000; z += 9973) {
        int64_t y;
        unsigned m, d;
        clock_civil_from_days(z, &y, &m, &d);
        if (m < 1 || m > 12 || d < 1 || d > mdays(y, m))
            fail_msg("civil_from_days(%lld) = %lld-%u-%u is not a date", (long long)z,
                     (long long)y, m, d);
        if (clock_days_from_civil(y, m, d) != z)
            fail_msg("round trip of day %lld via %lld-%u-%u failed", (long long)z,
                     (long long)y, m, d);
    }
}

/* ---- clock_random_hex ------------------------------------------------------ */

static const char hex_digits[] = "0123456789abcdef";

static void check_hex(const char *s, size_t want_len)
{
    assert_int_equal(strlen(s), want_len);
    for (size_t i = 0; i < want_len; i++)
        if (!s[i] || !strchr(hex_digits, s[i]))
            fail_msg("\"%s\": '%c' at %zu is not lowercase hex", s, s[i], i);
}

static void test_random_hex(void **state)
{
    (void)state;
    char a[33], b[33];
    memset(a, 'X', sizeof a);
    memset(b, 'X', sizeof b);
    assert_int_equal(clock_random_hex(a, 16, NULL), 0);
    assert_int_equal(clock_random_hex(b, 16, NULL), 0);
    check_hex(a, 32);
    check_hex(b, 32);
    assert_string_not_equal(a, b);

    char one[3];
    assert_int_equal(clock_random_hex(one, 1, NULL), 0);
    check_hex(one, 2);

    char big[129];
    assert_int_equal(clock_random_hex(big, 64, NULL), 0);
    check_hex(big, 128);
}

static void test_random_hex_uses_all_digits(void **state)
{
    (void)state;
    /* 64 random bytes x 8 rounds: every hex digit shows up (a miss has
     * probability ~16 * (15/16)^1024, far below 1e-20). */
    int seen[16] = {0};
    for (int round = 0; round < 8; round++) {
        char buf[129];
        assert_int_equal(clock_random_hex(buf, 64, NULL), 0);
        check_hex(buf, 128);
        for (size_t i = 0; i < 128; i++)
            seen[strchr(hex_digits, buf[i]) - hex_digits] = 1;
    }
    for (int i = 0; i < 16; i++)
        if (!seen[i])
            fail_msg("hex digit %x never produced", i);
}

static void test_random_hex_limits(void **state)
{
    (void)state;
    char buf[200];
    struct sd_error err = {{0}};
    assert_int_equal(clock_random_hex(buf, 65, &err), -1);
    assert_non_null(strstr(err.message, "65"));

    /* Zero bytes: an empty, still NUL-terminated string. */
    memset(buf, 'X', sizeof buf);
    assert_int_equal(clock_random_hex(buf, 0, NULL), 0);
    if (buf[0] != '\0')
        fail_msg("clock_random_hex(buf, 0) left buf[0] = '%c', want the terminating NUL",
                 buf[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_utc),
        cmocka_unit_test(test_parse_offsets),
        cmocka_unit_test(test_parse_fraction),
        cmocka_unit_test(test_parse_date_only),
        cmocka_unit_test(test_parse_requires_zone),
        cmocka_unit_test(test_parse_leap_days),
        cmocka_unit_test(test_parse_garbage),
        cmocka_unit_test(test_parse_error_keeps_err_optional),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_fits_25_bytes),
        cmocka_unit_test(test_format_parse_round_trip),
        cmocka_unit_test(test_civil_anchors),
        cmocka_unit_test(test_civil_walk),
        cmocka_unit_test(test_civil_round_trip_wide),
        cmocka_unit_test(test_random_hex),
        cmocka_unit_test(test_random_hex_uses_all_digits),
        cmocka_unit_test(test_random_hex_limits),
    };
    return cmocka_run_group_tests_name("clock", tests, NULL, NULL);
}
