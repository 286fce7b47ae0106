#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "jobs/notification/sla_calendar.h"

/* A room document from JSON: its business_hours and holidays, and a zone. */
struct room {
    bson_t *doc;
    bson_t *zone;
    struct sla_calendar cal;
};

static int room_init(struct room *r, const char *room_json, const char *zone_json,
                     struct sd_error *err)
{
    bson_error_t berr;
    r->doc = bson_new_from_json((const uint8_t *)room_json, -1, &berr);
    assert_non_null(r->doc);
    r->zone = NULL;
    if (zone_json) {
        /* [{at, offset}] as notification_zone builds it */
        bson_t *wrap = bson_new_from_json((const uint8_t *)zone_json, -1, &berr);
        assert_non_null(wrap);
        bson_iter_t it;
        assert_true(bson_iter_init_find(&it, wrap, "z"));
        uint32_t len;
        const uint8_t *data;
        bson_iter_array(&it, &len, &data);
        r->zone = bson_new_from_data(data, len);
        bson_destroy(wrap);
    }
    bson_iter_t hours, holidays;
    bool h = bson_iter_init_find(&hours, r->doc, "business_hours");
    bool d = bson_iter_init_find(&holidays, r->doc, "holidays");
    return sla_calendar_init(&r->cal, h ? &hours : NULL, r->zone, d ? &holidays : NULL, err);
}

static void room_free(struct room *r)
{
    sla_calendar_free(&r->cal);
    bson_destroy(r->doc);
    if (r->zone)
        bson_destroy(r->zone);
}

static int64_t due(const char *room_json, const char *zone_json, int64_t start, int64_t minutes)
{
    struct room r;
    struct sd_error err;
    assert_int_equal(room_init(&r, room_json, zone_json, &err), 0);
    int64_t out = 0;
    assert_int_equal(sla_calendar_due(&r.cal, start, minutes, &out, &err), 0);
    room_free(&r);
    return out;
}

#define WEEKDAYS "{\"mon\": [[\"09:00\", \"17:00\"]], \"tue\": [[\"09:00\", \"17:00\"]]}"

/* The vectors sla.lua's own self-tests had when it counted business time. */
static void test_carries_over_to_the_next_day(void **state)
{
    (void)state;
    /* Monday 2026-03-02 16:30 UTC + 60 business minutes = Tuesday 09:30 */
    assert_int_equal(due("{\"business_hours\": " WEEKDAYS "}", NULL, 1772469000000, 60),
                     1772530200000);
}

static void test_around_the_clock_without_business_hours(void **state)
{
    (void)state;
    assert_int_equal(due("{}", NULL, 0, 90), 5400000);
    assert_int_equal(due("{\"business_hours\": null}", NULL, 0, 90), 5400000);
}

static void test_from_to_spans(void **state)
{
    (void)state;
    assert_int_equal(due("{\"business_hours\": {\"mon\": [{\"from\": \"09:00\", \"to\": \"17:00\"}], "
                         "\"tue\": [{\"from\": \"9:00\", \"to\": \"17:00\"}]}}",
                         NULL, 1772469000000, 60),
                     1772530200000);
}

static void test_skips_the_weekend(void **state)
{
    (void)state;
    /* Friday 2026-03-06 16:30 UTC + 60 = Monday 09:30 */
    assert_int_equal(due("{\"business_hours\": {\"mon\": [[\"09:00\", \"17:00\"]], "
                         "\"fri\": [[\"09:00\", \"17:00\"]]}}",
                         NULL, 1772814600000, 60),
                     1773048600000);
}

static void test_skips_holidays(void **state)
{
    (void)state;
    /* Monday 16:30 UTC, Tuesday a holiday: next Monday 09:30 */
    assert_int_equal(due("{\"business_hours\": " WEEKDAYS ", \"holidays\": [\"2026-03-03\", \"junk\"]}",
                         NULL, 1772469000000, 60),
                     1773048600000);
}

static void test_two_intervals_a_day_in_any_order(void **state)
{
    (void)state;
    assert_int_equal(due("{\"business_hours\": {\"mon\": [[\"13:00\", \"17:00\"], [\"09:00\", \"12:00\"]]}}",
                         NULL, 1772442000000, 300),
                     1772463600000);
}

static void test_daylight_saving(void **state)
{
    (void)state;
    /* Europe/Berlin, clocks forward 2026-03-29 01:00 UTC: Friday 27th 16:30 CET
     * (15:30 UTC) + 60 = Monday 30th 09:30 CEST = 07:30 UTC */
    assert_int_equal(due("{\"business_hours\": {\"mon\": [[\"09:00\", \"17:00\"]], "
                         "\"fri\": [[\"09:00\", \"17:00\"]]}}",
                         "{\"z\": [{\"at\": 0, \"offset\": 60}, {\"at\": 1774746000000, \"offset\": 120}]}",
                         1774625400000, 60),
                     1774855800000);
}

static void test_between(void **state)
{
    (void)state;
    struct room r;
    struct sd_error err;
    assert_int_equal(room_init(&r, "{\"business_hours\": " WEEKDAYS "}", NULL, &err), 0);
    assert_int_equal(sla_calendar_between(&r.cal, 1772469000000, 1772530200000), 60);
    assert_int_equal(sla_calendar_between(&r.cal, 1772530200000, 1772469000000), 0);
    room_free(&r);
    assert_int_equal(room_init(&r, "{}", NULL, &err), 0);
    assert_int_equal(sla_calendar_between(&r.cal, 0, 5400000), 90);
    room_free(&r);
}

static void test_malformed_hours_are_an_error(void **state)
{
    (void)state;
    struct room r;
    struct sd_error err;
    assert_int_not_equal(room_init(&r, "{\"business_hours\": {\"mon\": [[\"9am\", \"17:00\"]]}}", NULL, &err), 0);
    assert_non_null(strstr(err.message, "bad time 9am"));
    room_free(&r);
    assert_int_not_equal(room_init(&r, "{\"business_hours\": {\"mon\": [[\"09:00\"]]}}", NULL, &err), 0);
    room_free(&r);
    /* a calendar with no hours at all */
    assert_int_equal(room_init(&r, "{\"business_hours\": {}}", NULL, &err), 0);
    int64_t out;
    assert_int_not_equal(sla_calendar_due(&r.cal, 0, 60, &out, &err), 0);
    assert_non_null(strstr(err.message, "no business hours within a year"));
    room_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_carries_over_to_the_next_day),
        cmocka_unit_test(test_around_the_clock_without_business_hours),
        cmocka_unit_test(test_from_to_spans),
        cmocka_unit_test(test_skips_the_weekend),
        cmocka_unit_test(test_skips_holidays),
        cmocka_unit_test(test_two_intervals_a_day_in_any_order),
        cmocka_unit_test(test_daylight_saving),
        cmocka_unit_test(test_between),
        cmocka_unit_test(test_malformed_hours_are_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
