/* The metrics registry (src/core/metrics.c) and the webhook receiver's
 * mapping of message-status rejections to HTTP answers (src/http/webhook.c),
 * the latter pinned against msgstatus_parse_entry's real reasons so that a
 * change of their wording cannot silently turn a 403 into a 400. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/metrics.h"
#include "http/internal.h"
#include "providers/signature.h"

static char *render(void)
{
    bson_string_t *s = bson_string_new(NULL);
    metrics_render(s);
    return bson_string_free(s, false);
}

static void test_ticks_histogram_items(void **state)
{
    (void)state;
    metrics_reset();
    metrics_job_declare("snooze");
    char *text = render();
    assert_non_null(strstr(text, "supportd_job_ticks_total{job=\"snooze\",outcome=\"ok\"} 0\n"));
    assert_non_null(strstr(text, "# TYPE supportd_job_tick_duration_seconds histogram\n"));
    bson_free(text);

    bson_t counts = BSON_INITIALIZER;
    BSON_APPEND_INT64(&counts, "woken", 5);
    BSON_APPEND_INT32(&counts, "batches", 1);
    BSON_APPEND_UTF8(&counts, "note", "not a number: ignored");
    metrics_tick("snooze", METRICS_TICK_OK, 30, &counts);      /* 0.03 s: le 0.05 */
    metrics_tick("snooze", METRICS_TICK_ERROR, 2000, &counts); /* 2 s: le 2.5 */
    metrics_tick("snooze", METRICS_TICK_SKIPPED, 0, NULL);     /* counted, not timed */
    bson_destroy(&counts);
    text = render();
    assert_non_null(strstr(text, "supportd_job_ticks_total{job=\"snooze\",outcome=\"ok\"} 1\n"));
    assert_non_null(strstr(text, "supportd_job_ticks_total{job=\"snooze\",outcome=\"error\"} 1\n"));
    assert_non_null(strstr(text, "supportd_job_ticks_total{job=\"snooze\",outcome=\"skipped\"} 1\n"));
    assert_non_null(strstr(text, "_bucket{job=\"snooze\",le=\"0.025\"} 0\n"));
    assert_non_null(strstr(text, "_bucket{job=\"snooze\",le=\"0.05\"} 1\n"));
    assert_non_null(strstr(text, "_bucket{job=\"snooze\",le=\"1\"} 1\n"));
    assert_non_null(strstr(text, "_bucket{job=\"snooze\",le=\"2.5\"} 2\n"));
    assert_non_null(strstr(text, "_bucket{job=\"snooze\",le=\"+Inf\"} 2\n"));
    assert_non_null(strstr(text, "supportd_job_tick_duration_seconds_sum{job=\"snooze\"} 2.03\n"));
    assert_non_null(strstr(text, "supportd_job_tick_duration_seconds_count{job=\"snooze\"} 2\n"));
    assert_non_null(strstr(text, "supportd_job_items_total{job=\"snooze\",counter=\"woken\"} 10\n"));
    assert_non_null(strstr(text, "supportd_job_items_total{job=\"snooze\",counter=\"batches\"} 2\n"));
    assert_null(strstr(text, "counter=\"note\""));
    bson_free(text);
}

static void test_webhooks_reloads_escape(void **state)
{
    (void)state;
    metrics_reset();
    metrics_webhook_declare("twilio");
    metrics_webhook("sendgrid", NULL);
    metrics_webhook("sendgrid", "bad_signature");
    metrics_webhook("sendgrid", "bad_signature");
    metrics_rules_reload(true);
    metrics_rules_reload(false);
    metrics_http_request("/healthz", 503);
    metrics_webhook_one_copy("sendgrid", true);
    metrics_webhook_one_copy("sendgrid", false);
    metrics_webhook_one_copy("sendgrid", false);
    char *text = render();
    assert_non_null(strstr(text, "supportd_webhooks_received_total{provider=\"twilio\"} 0\n"));
    /* declared providers have their journal counters at 0 */
    assert_non_null(strstr(text, "supportd_webhook_journal_failures_total{provider=\"twilio\"} 0\n"));
    assert_non_null(strstr(text, "supportd_webhook_journal_only_total{provider=\"twilio\"} 0\n"));
    assert_non_null(strstr(text, "supportd_webhook_journal_failures_total{provider=\"sendgrid\"} 1\n"));
    assert_non_null(strstr(text, "supportd_webhook_journal_only_total{provider=\"sendgrid\"} 2\n"));
    assert_non_null(strstr(text, "supportd_webhooks_received_total{provider=\"sendgrid\"} 3\n"));
    assert_non_null(strstr(
        text, "supportd_webhooks_rejected_total{provider=\"sendgrid\",reason=\"bad_signature\"} 2\n"));
    assert_non_null(strstr(text, "supportd_rules_reload_failures_total 1\n"));
    assert_non_null(strstr(text, "supportd_rules_reloads_total{result=\"ok\"} 1\n"));
    assert_non_null(strstr(text, "supportd_http_requests_total{handler=\"/healthz\",code=\"503\"} 1\n"));
    bson_free(text);
    bson_string_t *s = bson_string_new(NULL);
    metrics_escape_label(s, "a\"b\\c\nd");
    assert_string_equal(s->str, "a\\\"b\\\\c\\nd");
    bson_string_free(s, true);
}

static void test_many_counters_fold_into_other(void **state)
{
    (void)state;
    metrics_reset();
    bson_t counts = BSON_INITIALIZER;
    for (int i = 0; i < 100; i++) {
        char k[16];
        snprintf(k, sizeof k, "c%d", i);
        BSON_APPEND_INT32(&counts, k, 1);
    }
    metrics_tick("probe", METRICS_TICK_OK, 1, &counts);
    bson_destroy(&counts);
    char *text = render();
    const char *other = strstr(text, "counter=\"_other\"} ");
    assert_non_null(other);
    long folded = strtol(other + strlen("counter=\"_other\"} "), NULL, 10);
    int rows = 0;
    for (const char *p = text; (p = strstr(p, "supportd_job_items_total{")); p++)
        rows++;
    assert_int_equal(rows - 1 + folded, 100); /* nothing lost */
    bson_free(text);
}

/* ---- webhook_classify against msgstatus_parse_entry's reasons ---------------- */

static int classify_entry(const bson_t *entry, const struct msgstatus_keys *keys,
                          const char **label)
{
    bson_t out = BSON_INITIALIZER;
    msgstatus_parse_entry(entry, keys, &out);
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, &out, "ok"));
    if (bson_iter_as_bool(&it)) {
        bson_destroy(&out);
        return 0;
    }
    assert_true(bson_iter_init_find(&it, &out, "reason"));
    int status = webhook_classify(bson_iter_utf8(&it, NULL), label);
    bson_destroy(&out);
    return status;
}

#define URL "https://hooks.example.com/webhooks/twilio/status"

static void twilio_entry(bson_t *e, const char *body, const char *sig)
{
    BSON_APPEND_UTF8(e, "provider", "twilio");
    BSON_APPEND_UTF8(e, "body", body);
    BSON_APPEND_UTF8(e, "url", URL);
    BSON_APPEND_UTF8(e, "signature", sig);
    BSON_APPEND_UTF8(e, "timestamp", "");
    BSON_APPEND_UTF8(e, "received_at", "1700000000000");
}

static void test_classify_real_reasons(void **state)
{
    (void)state;
    struct msgstatus_keys keys = {.twilio_auth_token = "tok",
                                  .sendgrid_public_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
                                  .sendgrid_tolerance_ms = 3600000};
    const char *label;
    const struct sig_param ok_params[] = {{"MessageSid", "SM1"}, {"MessageStatus", "delivered"}};
    const struct sig_param bad_params[] = {{"MessageStatus", "delivered"}};
    char sig[64], sig_bad[64];
    assert_int_equal(signature_twilio_compute("tok", URL, ok_params, 2, sig, sizeof sig, NULL), 0);
    assert_int_equal(signature_twilio_compute("tok", URL, bad_params, 1, sig_bad, sizeof sig_bad,
                                              NULL),
                     0);

    bson_t e = BSON_INITIALIZER;
    twilio_entry(&e, "MessageSid=SM1&MessageStatus=delivered", sig);
    assert_int_equal(classify_entry(&e, &keys, &label), 0); /* accepted */
    bson_reinit(&e);
    twilio_entry(&e, "MessageSid=SM1&MessageStatus=read", sig);
    assert_int_equal(classify_entry(&e, &keys, &label), 403);
    assert_string_equal(label, "bad_signature");
    bson_reinit(&e);
    twilio_entry(&e, "MessageSid=SM1&MessageStatus=delivered", "");
    assert_int_equal(classify_entry(&e, &keys, &label), 403);
    bson_reinit(&e);
    twilio_entry(&e, "MessageStatus=delivered", sig_bad); /* signed, no MessageSid */
    assert_int_equal(classify_entry(&e, &keys, &label), 400);
    assert_string_equal(label, "malformed");

    const char *sendgrid[][2] = {{"", "c2ln"}, {"12x", "c2ln"}, {"1700000000", ""},
                                 {"1700000000", "c2ln"}};
    for (size_t i = 0; i < 4; i++) {
        bson_reinit(&e);
        BSON_APPEND_UTF8(&e, "provider", "sendgrid");
        BSON_APPEND_UTF8(&e, "body", "[]");
        BSON_APPEND_UTF8(&e, "url", "");
        BSON_APPEND_UTF8(&e, "signature", sendgrid[i][1]);
        BSON_APPEND_UTF8(&e, "timestamp", sendgrid[i][0]);
        BSON_APPEND_UTF8(&e, "received_at", "1700000000000");
        assert_int_equal(classify_entry(&e, &keys, &label), 403);
        assert_string_equal(label, "bad_signature");
    }
    bson_destroy(&e);
    /* the job's wording for the two remaining SendGrid cases (signed, then
     * judged): see parse_sendgrid */
    assert_int_equal(webhook_classify("stale timestamp: signed 28800 s before the request "
                                      "arrived (tolerance 21600 s)",
                                      &label),
                     403);
    assert_string_equal(label, "stale_timestamp");
    assert_int_equal(webhook_classify("malformed body: JSON: x", &label), 400);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ticks_histogram_items),
        cmocka_unit_test(test_webhooks_reloads_escape),
        cmocka_unit_test(test_many_counters_fold_into_other),
        cmocka_unit_test(test_classify_real_reasons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
