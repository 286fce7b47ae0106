/* The pure parts of src/providers/http.c: Retry-After, backoff with jitter,
 * form encoding, outcome classification. (Requests against a server are in
 * test_clients.c.) */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "providers/http.h"

/* 2026-03-01T09:00:00Z */
#define NOW_MS 1772355600000LL

static void test_retry_after_seconds(void **state)
{
    (void)state;
    assert_int_equal(http_parse_retry_after("1", NOW_MS), 1000);
    assert_int_equal(http_parse_retry_after(" 120 ", NOW_MS), 120000);
    assert_int_equal(http_parse_retry_after("0", NOW_MS), 0);
    assert_int_equal(http_parse_retry_after("-3", NOW_MS), -1);
    assert_int_equal(http_parse_retry_after("1.5", NOW_MS), -1);
    assert_int_equal(http_parse_retry_after("soon", NOW_MS), -1);
    assert_int_equal(http_parse_retry_after("", NOW_MS), -1);
    assert_int_equal(http_parse_retry_after(NULL, NOW_MS), -1);
    /* Absurd values are capped at a year rather than overflowing. */
    assert_int_equal(http_parse_retry_after("99999999999999", NOW_MS), 86400LL * 365 * 1000);
}

static void test_retry_after_http_date(void **state)
{
    (void)state;
    assert_int_equal(http_parse_retry_after("Sun, 01 Mar 2026 09:00:30 GMT", NOW_MS), 30000);
    /* A date in the past means "now". */
    assert_int_equal(http_parse_retry_after("Sun, 01 Mar 2026 08:00:00 GMT", NOW_MS), 0);
}

static void test_backoff(void **state)
{
    (void)state;
    /* d = min(cap, base·2^attempt); result in [d/2, d]. */
    assert_int_equal(http_backoff_ms(0, 250, 4000, 0.0), 125);
    assert_int_equal(http_backoff_ms(0, 250, 4000, 0.999999), 249);
    assert_int_equal(http_backoff_ms(1, 250, 4000, 0.0), 250);
    assert_int_equal(http_backoff_ms(3, 250, 4000, 0.5), 1500);
    assert_int_equal(http_backoff_ms(4, 250, 4000, 0.0), 2000);
    assert_int_equal(http_backoff_ms(40, 250, 4000, 0.0), 2000); /* capped, no overflow */
    assert_int_equal(http_backoff_ms(-1, 250, 4000, 0.0), 125);
    for (int i = 0; i < 100; i++) {
        double u = http_random_unit();
        assert_true(u >= 0.0 && u < 1.0);
        int64_t d = http_backoff_ms(2, 250, 4000, u);
        assert_true(d >= 500 && d <= 1000);
    }
}

static void test_form_encoding(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(http_form_add(&buf, &len, "To", "+15551234567"), 0);
    assert_int_equal(http_form_add(&buf, &len, "Body", "Grüße & a=b\nnext line"), 0);
    assert_int_equal(http_form_add(&buf, &len, "StatusCallback", "https://h.example/cb?x=1"), 0);
    assert_string_equal(buf, "To=%2B15551234567&Body=Gr%C3%BC%C3%9Fe%20%26%20a%3Db%0Anext%20line"
                             "&StatusCallback=https%3A%2F%2Fh.example%2Fcb%3Fx%3D1");
    assert_int_equal(len, strlen(buf));
    free(buf);
    char *e = http_escape("AC123/../x");
    assert_string_equal(e, "AC123%2F..%2Fx");
    free(e);
}

static void classify(int rc, long status, enum http_failure failure, bool sent_body,
                     struct provider_status *st)
{
    struct http_response r = {.status = status, .failure = failure, .retry_after_ms = -1,
                              .attempts = 1};
    http_classify(rc, &r, sent_body, st);
}

static void test_classify(void **state)
{
    (void)state;
    struct provider_status st;
    classify(0, 202, HTTP_FAIL_NONE, true, &st);
    assert_int_equal(st.cls, PROVIDER_OK);
    classify(0, 401, HTTP_FAIL_NONE, true, &st);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    assert_string_equal(st.code, "http_401");
    assert_false(st.maybe_accepted);
    classify(0, 400, HTTP_FAIL_NONE, true, &st);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    classify(0, 429, HTTP_FAIL_NONE, true, &st);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_false(st.maybe_accepted); /* 429: never processed */
    classify(0, 503, HTTP_FAIL_NONE, true, &st);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_true(st.maybe_accepted);
    classify(0, 503, HTTP_FAIL_NONE, false, &st);
    assert_false(st.maybe_accepted); /* a GET creates nothing */
    classify(-1, 0, HTTP_FAIL_TIMEOUT, true, &st);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_string_equal(st.code, "timeout");
    assert_true(st.maybe_accepted);
    classify(-1, 0, HTTP_FAIL_CONNECT, true, &st);
    assert_string_equal(st.code, "connect");
    assert_false(st.maybe_accepted); /* nothing left the building */
    classify(-1, 0, HTTP_FAIL_TOO_LARGE, false, &st);
    assert_string_equal(st.code, "answer_too_large");
    assert_string_equal(http_reason(401), "Unauthorized");
    assert_string_equal(http_reason(429), "Too Many Requests");
    assert_string_equal(http_reason(299), "");
}

static void test_response_json(void **state)
{
    (void)state;
    struct http_response r = {.body = (char *)"{\"sid\":\"SM1\",\"n\":[1,2]}"};
    r.body_len = strlen(r.body);
    bson_t *doc;
    struct sd_error err;
    assert_int_equal(http_response_json(&r, &doc, &err), 0);
    bson_destroy(doc);
    r.body = (char *)"not json{";
    r.body_len = strlen(r.body);
    assert_int_equal(http_response_json(&r, &doc, &err), -1);
    assert_null(doc);
    assert_non_null(strstr(err.message, "not valid JSON"));
    r.body = (char *)"";
    r.body_len = 0;
    assert_int_equal(http_response_json(&r, &doc, &err), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_after_seconds),
        cmocka_unit_test(test_retry_after_http_date),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_form_encoding),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_response_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
