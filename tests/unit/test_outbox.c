/* The pure parts of the outbox and the SendGrid payload: retry backoff and
 * the mail-send JSON (plain JSON, text/plain first). Delivery itself is an
 * integration test (tests/integration/test_outbox*.py). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "outbox/outbox.h"
#include "providers/json.h"
#include "providers/sendgrid.h"

#define MIN 60000LL

static void test_backoff_doubles_and_caps(void **state)
{
    (void)state;
    /* After the n-th failure: d = min(1 h, 1 min · 2^(n-1)), in [d/2, d]. */
    assert_int_equal(outbox_backoff_ms(1, 0.0), MIN / 2);
    assert_in_range(outbox_backoff_ms(1, 0.999999), MIN - 2, MIN);
    assert_int_equal(outbox_backoff_ms(2, 0.0), MIN);
    assert_int_equal(outbox_backoff_ms(3, 0.0), 2 * MIN);
    assert_int_equal(outbox_backoff_ms(7, 0.0), 30 * MIN);
    assert_int_equal(outbox_backoff_ms(8, 0.0), 30 * MIN); /* 128 min capped to 60 */
    assert_in_range(outbox_backoff_ms(100, 0.999999), 60 * MIN - 10, 60 * MIN);
    assert_int_equal(outbox_backoff_ms(0, 0.0), MIN / 2); /* nonsense in, first step out */
    for (int n = 1; n < OUTBOX_MAX_ATTEMPTS; n++)
        assert_true(outbox_backoff_ms(n + 1, 0.5) >= outbox_backoff_ms(n, 0.5));
}

static void test_sendgrid_json(void **state)
{
    (void)state;
    struct mail m = {.from = "support@example.com",
                     .from_name = "Support",
                     .to = "ann@example.org",
                     .to_name = "Ann",
                     .subject = "Grüße \"quoted\"",
                     .text = "line 1\n.line 2",
                     .html = "<p>hi</p>",
                     .key = "ticket.created:abc:u1"};
    char *json = sendgrid_mail_json(&m);
    assert_non_null(json);
    /* Plain JSON: no extended-JSON wrappers. */
    assert_null(strstr(json, "$"));
    bson_error_t e;
    bson_t *doc = bson_new_from_json((const uint8_t *)json, -1, &e);
    assert_non_null(doc);
    char buf[128];
    json_str(doc, "personalizations.0.to.0.email", buf, sizeof buf);
    assert_string_equal(buf, "ann@example.org");
    json_str(doc, "personalizations.0.to.0.name", buf, sizeof buf);
    assert_string_equal(buf, "Ann");
    json_str(doc, "from.email", buf, sizeof buf);
    assert_string_equal(buf, "support@example.com");
    json_str(doc, "subject", buf, sizeof buf);
    assert_string_equal(buf, "Grüße \"quoted\"");
    json_str(doc, "content.0.type", buf, sizeof buf);
    assert_string_equal(buf, "text/plain");
    json_str(doc, "content.0.value", buf, sizeof buf);
    assert_string_equal(buf, "line 1\n.line 2");
    json_str(doc, "content.1.type", buf, sizeof buf);
    assert_string_equal(buf, "text/html");
    json_str(doc, "custom_args.supportd_key", buf, sizeof buf);
    assert_string_equal(buf, "ticket.created:abc:u1");
    bson_destroy(doc);
    bson_free(json);

    /* HTML only; no names; no key. */
    struct mail h = {.from = "s@example.com", .to = "t@example.com", .html = "<b>x</b>"};
    json = sendgrid_mail_json(&h);
    doc = bson_new_from_json((const uint8_t *)json, -1, &e);
    assert_non_null(doc);
    json_str(doc, "content.0.type", buf, sizeof buf);
    assert_string_equal(buf, "text/html");
    assert_false(json_str(doc, "content.1.type", buf, sizeof buf));
    assert_false(json_str(doc, "from.name", buf, sizeof buf));
    assert_false(json_str(doc, "custom_args.supportd_key", buf, sizeof buf));
    json_str(doc, "subject", buf, sizeof buf);
    assert_string_equal(buf, "(no subject)");
    bson_destroy(doc);
    bson_free(json);
}

/* The configuration this module added: the outbox job, the provider
 * timeout, and the password inside SMTP_URL being treated as a secret. */
static const char *const *env_vars;
static const char *lookup(const char *name, void *ud)
{
    (void)ud;
    for (const char *const *p = env_vars; *p; p += 2)
        if (strcmp(p[0], name) == 0)
            return p[1];
    return NULL;
}

static void test_config(void **state)
{
    (void)state;
    struct config cfg;
    struct sd_error err;
    static const char *const none[] = {NULL};
    env_vars = none;
    assert_int_equal(config_load(&cfg, lookup, NULL, &err), 0);
    assert_int_equal(cfg.http_timeout_ms, 15000);
    assert_false(cfg.jobs[JOB_OUTBOX].enabled);
    assert_int_equal(job_find("outbox"), JOB_OUTBOX);
    assert_string_equal(job_specs[JOB_OUTBOX].flag_env, "QM_SUPPORT_OUTBOX");
    config_free(&cfg);

    static const char *const set[] = {
        "QM_SUPPORT_HTTP_TIMEOUT_MS", "800", "QM_SUPPORT_OUTBOX", "true",
        "SMTP_URL", "smtps://mailer:pw-in-url-77@smtp.example.com", NULL};
    env_vars = set;
    assert_int_equal(config_load(&cfg, lookup, NULL, &err), 0);
    assert_int_equal(cfg.http_timeout_ms, 800);
    assert_true(cfg.jobs[JOB_OUTBOX].enabled);
    char *clean = log_redact_dup("connecting to smtps://mailer:pw-in-url-77@smtp.example.com");
    assert_null(strstr(clean, "pw-in-url-77"));
    free(clean);
    config_free(&cfg);
    log_clear_secrets();

    static const char *const bad[] = {"QM_SUPPORT_HTTP_TIMEOUT_MS", "50", NULL};
    env_vars = bad;
    assert_int_equal(config_load(&cfg, lookup, NULL, &err), -1);
    assert_non_null(strstr(err.message, "QM_SUPPORT_HTTP_TIMEOUT_MS"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_doubles_and_caps),
        cmocka_unit_test(test_sendgrid_json),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
