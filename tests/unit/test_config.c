#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <mongoc/mongoc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"

/* config_load reads variables through a getenv callback; the tests hand it a
 * small name -> value table instead of the process environment. */

struct kv {
    const char *name, *value;
};

#define ENV(...) ((const struct kv[]){__VA_ARGS__, {NULL, NULL}})
#define NO_ENV ((const struct kv[]){{NULL, NULL}})

static const char *fake_getenv(const char *name, void *ud)
{
    for (const struct kv *e = ud; e->name; e++)
        if (strcmp(e->name, name) == 0)
            return e->value;
    return NULL;
}

static void load_ok(const struct kv *env, struct config *cfg)
{
    struct sd_error err = {{0}};
    if (config_load(cfg, fake_getenv, (void *)env, &err) != 0)
        fail_msg("config_load failed: %s", err.message);
}

/* Expects config_load to fail with a message that starts with "<var>:" and
 * contains `want`. */
static void load_err(const struct kv *env, const char *var, const char *want)
{
    struct config cfg;
    struct sd_error err = {{0}};
    if (config_load(&cfg, fake_getenv, (void *)env, &err) != -1) {
        config_free(&cfg);
        fail_msg("config_load accepted, want an error naming %s", var);
    }
    size_t n = strlen(var);
    if (strncmp(err.message, var, n) != 0 || err.message[n] != ':')
        fail_msg("message \"%s\" does not start with \"%s:\"", err.message, var);
    if (want && !strstr(err.message, want))
        fail_msg("message \"%s\" lacks \"%s\"", err.message, want);
}

static int clear_secrets(void **state)
{
    (void)state;
    log_clear_secrets();
    return 0;
}

static void assert_redacts(const char *text, const char *want)
{
    char *got = log_redact_dup(text);
    assert_non_null(got);
    char copy[512];
    snprintf(copy, sizeof copy, "%s", got);
    free(got);
    if (strcmp(copy, want) != 0)
        fail_msg("log_redact_dup(\"%s\") = \"%s\", want \"%s\"", text, copy, want);
}

/* 2024-01-01T00:00:00Z, a Monday. */
#define JAN_1_2024 1704067200

/* ---- defaults ----------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(NO_ENV, &cfg);

    assert_null(cfg.mongo_url);
    assert_null(cfg.mongo_db);
    assert_string_equal(cfg.redis_host, "localhost");
    assert_int_equal(cfg.redis_port, 6379);
    assert_null(cfg.redis_password);
    assert_int_equal(cfg.redis_db, 0);
    assert_string_equal(cfg.rules_dir, "./rules");
    assert_string_equal(cfg.redis_prefix, "qm:support:");
    assert_int_equal(cfg.email_provider, EMAIL_SENDGRID);
    assert_null(cfg.email_from);
    assert_null(cfg.twilio_account_sid);
    assert_null(cfg.twilio_auth_token);
    assert_string_equal(cfg.twilio_api_base, "https://api.twilio.com");
    assert_null(cfg.sendgrid_api_key);
    assert_string_equal(cfg.sendgrid_api_base, "https://api.sendgrid.com");
    assert_null(cfg.sendgrid_webhook_public_key);
    assert_null(cfg.smtp_url);
    assert_null(cfg.smtp_user);
    assert_null(cfg.smtp_password);
    assert_int_equal(cfg.log_level, LOG_INFO);
    assert_true(cfg.log_json);
    assert_int_equal(cfg.lease_ttl_ms, 60000);
    assert_int_equal(cfg.probe_hold_ms, 0);

    static const char *const want_cron[JOB_COUNT] = {
        [JOB_SNOOZE] = "*/5 * * * *",
        [JOB_MESSAGE_STATUS] = "*/30 * * * * *",
        [JOB_NOTIFICATION] = "*/1 * * * *",
        [JOB_COMMUNICATION_CHECK] = "*/10 * * * *",
        [JOB_PROBE] = "*/1 * * * *",
        [JOB_OUTBOX] = "*/1 * * * *",
    };
    for (int i = 0; i < JOB_COUNT; i++) {
        assert_false(cfg.jobs[i].enabled);
        assert_string_equal(cfg.jobs[i].cron_text, want_cron[i]);
    }
    /* The texts are parsed, not just copied. */
    assert_int_equal(cron_next(&cfg.jobs[JOB_SNOOZE].cron, JAN_1_2024), JAN_1_2024 + 300);
    assert_true(cfg.jobs[JOB_MESSAGE_STATUS].cron.has_seconds);
    assert_int_equal(cron_next(&cfg.jobs[JOB_MESSAGE_STATUS].cron, JAN_1_2024), JAN_1_2024 + 30);
    assert_int_equal(cron_next(&cfg.jobs[JOB_NOTIFICATION].cron, JAN_1_2024), JAN_1_2024 + 60);
    assert_int_equal(cron_next(&cfg.jobs[JOB_COMMUNICATION_CHECK].cron, JAN_1_2024),
                     JAN_1_2024 + 600);
    config_free(&cfg);
}

static void test_job_specs_and_find(void **state)
{
    (void)state;
    assert_string_equal(job_specs[JOB_MESSAGE_STATUS].flag_env, "QM_SUPPORT_MESSAGE_STATUS");
    assert_string_equal(job_specs[JOB_MESSAGE_STATUS].cron_env, "QM_SUPPORT_MESSAGE_STATUS_CRON");
    assert_int_equal(job_find("snooze"), JOB_SNOOZE);
    assert_int_equal(job_find("message-status"), JOB_MESSAGE_STATUS);
    assert_int_equal(job_find("notification"), JOB_NOTIFICATION);
    assert_int_equal(job_find("communication-check"), JOB_COMMUNICATION_CHECK);
    assert_int_equal(job_find("probe"), JOB_PROBE);
    assert_int_equal(job_find("message_status"), -1);
    assert_int_equal(job_find(""), -1);
}

/* ---- job flags and crons ------------------------------------------------ */

static void test_job_flags(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool want;
    } cases[] = {
        {"true", true}, {"TRUE", true}, {"True", true}, {"1", true},
        {"false", false}, {"FALSE", false}, {"0", false},
    };
    for (int job = 0; job < JOB_COUNT; job++) {
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            struct config cfg;
            load_ok(ENV({job_specs[job].flag_env, cases[c].text}), &cfg);
            for (int other = 0; other < JOB_COUNT; other++) {
                bool want = other == job ? cases[c].want : false;
                if (cfg.jobs[other].enabled != want)
                    fail_msg("%s=%s: job %s enabled=%d, want %d", job_specs[job].flag_env,
                             cases[c].text, job_specs[other].name, cfg.jobs[other].enabled,
                             want);
            }
            config_free(&cfg);
        }
    }
}

static void test_job_flag_invalid(void **state)
{
    (void)state;
    load_err(ENV({"QM_SUPPORT_SNOOZE", "yes"}), "QM_SUPPORT_SNOOZE", "\"yes\"");
    load_err(ENV({"QM_SUPPORT_SNOOZE", "2"}), "QM_SUPPORT_SNOOZE", "not a boolean");
    load_err(ENV({"QM_SUPPORT_SNOOZE", "on"}), "QM_SUPPORT_SNOOZE", "not a boolean");
    load_err(ENV({"QM_SUPPORT_SNOOZE", " true"}), "QM_SUPPORT_SNOOZE", "not a boolean");
    for (int job = 0; job < JOB_COUNT; job++)
        load_err(ENV({job_specs[job].flag_env, "no"}), job_specs[job].flag_env, "\"no\"");
}

static void test_cron_override(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"QM_SUPPORT_SNOOZE_CRON", "0 3 * * *"},
                {"QM_SUPPORT_NOTIFICATION_CRON", "15 * * * * *"},
                {"QM_SUPPORT_MESSAGE_STATUS_CRON", "*/2 * * * *"}),
            &cfg);
    assert_string_equal(cfg.jobs[JOB_SNOOZE].cron_text, "0 3 * * *");
    assert_int_equal(cron_next(&cfg.jobs[JOB_SNOOZE].cron, JAN_1_2024), JAN_1_2024 + 3 * 3600);

    /* 6 fields: the first is seconds. */
    assert_string_equal(cfg.jobs[JOB_NOTIFICATION].cron_text, "15 * * * * *");
    assert_true(cfg.jobs[JOB_NOTIFICATION].cron.has_seconds);
    assert_int_equal(cron_next(&cfg.jobs[JOB_NOTIFICATION].cron, JAN_1_2024), JAN_1_2024 + 15);

    /* A 5-field override of a 6-field default loses the seconds. */
    assert_false(cfg.jobs[JOB_MESSAGE_STATUS].cron.has_seconds);
    assert_int_equal(cron_next(&cfg.jobs[JOB_MESSAGE_STATUS].cron, JAN_1_2024), JAN_1_2024 + 120);

    /* Untouched jobs keep their defaults. */
    assert_string_equal(cfg.jobs[JOB_COMMUNICATION_CHECK].cron_text, "*/10 * * * *");
    config_free(&cfg);
}

static void test_cron_invalid(void **state)
{
    (void)state;
    load_err(ENV({"QM_SUPPORT_SNOOZE_CRON", "61 * * * *"}), "QM_SUPPORT_SNOOZE_CRON", "minute");
    load_err(ENV({"QM_SUPPORT_SNOOZE_CRON", "61 * * * *"}), "QM_SUPPORT_SNOOZE_CRON",
             "61 is out of range 0-59");
    load_err(ENV({"QM_SUPPORT_MESSAGE_STATUS_CRON", "60 * * * * *"}),
             "QM_SUPPORT_MESSAGE_STATUS_CRON", "second");
    load_err(ENV({"QM_SUPPORT_NOTIFICATION_CRON", "* 24 * * *"}), "QM_SUPPORT_NOTIFICATION_CRON",
             "hour");
    load_err(ENV({"QM_SUPPORT_COMMUNICATION_CHECK_CRON", "* * * *"}),
             "QM_SUPPORT_COMMUNICATION_CHECK_CRON", "expected 5 or 6 fields");
    load_err(ENV({"QM_SUPPORT_PROBE_CRON", "0 0 30 2 *"}), "QM_SUPPORT_PROBE_CRON",
             "day-of-month");
    /* The bad text is quoted so the operator sees what was read. */
    load_err(ENV({"QM_SUPPORT_SNOOZE_CRON", "*/0 * * * *"}), "QM_SUPPORT_SNOOZE_CRON",
             "\"*/0 * * * *\"");
}

/* ---- Redis ---------------------------------------------------------------- */

static void test_redis_overrides(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"REDIS_HOST", "redis.internal"}, {"REDIS_PORT", "6380"}, {"REDIS_DB", "3"},
                {"REDIS_PASSWORD", "r3dis-pass"}, {"QM_SUPPORT_RULES_DIR", "/etc/rules"},
                {"QM_SUPPORT_REDIS_PREFIX", "test:"}),
            &cfg);
    assert_string_equal(cfg.redis_host, "redis.internal");
    assert_int_equal(cfg.redis_port, 6380);
    assert_int_equal(cfg.redis_db, 3);
    assert_string_equal(cfg.redis_password, "r3dis-pass");
    assert_string_equal(cfg.rules_dir, "/etc/rules");
    assert_string_equal(cfg.redis_prefix, "test:");
    config_free(&cfg);

    load_ok(ENV({"REDIS_PORT", "1"}), &cfg);
    assert_int_equal(cfg.redis_port, 1);
    config_free(&cfg);
    load_ok(ENV({"REDIS_PORT", "65535"}), &cfg);
    assert_int_equal(cfg.redis_port, 65535);
    config_free(&cfg);
}

/* ---- REDIS_URL, ACL users, TLS -------------------------------------------- */

static void test_redis_url(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"REDIS_URL", "rediss://ops:p%40ss%3Aw0rd@redis.example.com:6380/2"}), &cfg);
    assert_true(cfg.redis_tls);
    assert_string_equal(cfg.redis_host, "redis.example.com");
    assert_int_equal(cfg.redis_port, 6380);
    assert_string_equal(cfg.redis_username, "ops");
    assert_string_equal(cfg.redis_password, "p@ss:w0rd");
    assert_int_equal(cfg.redis_db, 2);
    config_free(&cfg);
    /* both spellings of the password are secrets */
    assert_redacts("auth p@ss:w0rd / p%40ss%3Aw0rd", "auth [redacted] / [redacted]");

    load_ok(ENV({"REDIS_URL", "redis://:only-a-password@cache"}), &cfg);
    assert_false(cfg.redis_tls);
    assert_string_equal(cfg.redis_host, "cache");
    assert_int_equal(cfg.redis_port, 6379);
    assert_null(cfg.redis_username);
    assert_string_equal(cfg.redis_password, "only-a-password");
    assert_int_equal(cfg.redis_db, 0);
    config_free(&cfg);

    load_ok(ENV({"REDIS_URL", "REDIS://[::1]:7000/15"}), &cfg);
    assert_string_equal(cfg.redis_host, "::1");
    assert_int_equal(cfg.redis_port, 7000);
    assert_int_equal(cfg.redis_db, 15);
    assert_null(cfg.redis_password);
    config_free(&cfg);

    load_ok(ENV({"REDIS_URL", "redis://localhost/"}), &cfg);
    assert_int_equal(cfg.redis_db, 0);
    config_free(&cfg);
}

static void test_redis_url_invalid(void **state)
{
    (void)state;
    load_err(ENV({"REDIS_URL", "http://cache:6379"}), "REDIS_URL", "redis:// or rediss://");
    load_err(ENV({"REDIS_URL", "redis://"}), "REDIS_URL", "names no host");
    load_err(ENV({"REDIS_URL", "redis://cache:0"}), "REDIS_URL", "1-65535");
    load_err(ENV({"REDIS_URL", "redis://cache:65536"}), "REDIS_URL", "1-65535");
    load_err(ENV({"REDIS_URL", "redis://cache:x/1"}), "REDIS_URL", "1-65535");
    load_err(ENV({"REDIS_URL", "redis://cache/one"}), "REDIS_URL", "database number");
    load_err(ENV({"REDIS_URL", "redis://cache/-1"}), "REDIS_URL", "database number");
    load_err(ENV({"REDIS_URL", "redis://cache?ssl_cert_reqs=none"}), "REDIS_URL", "query");
    load_err(ENV({"REDIS_URL", "redis://[::1:6379"}), "REDIS_URL", "unbalanced");
    load_err(ENV({"REDIS_URL", "redis://ops@cache"}), "REDIS_URL", "needs a password");
    load_err(ENV({"REDIS_URL", "redis://ops:%zz@cache"}), "REDIS_URL", "bad %-escape");
}

/* A failing URL is quoted with its password masked, and the password is a
 * registered secret before anything can print it. */
static void test_redis_url_error_hides_password(void **state)
{
    (void)state;
    struct config cfg;
    struct sd_error err = {{0}};
    assert_int_equal(config_load(&cfg, fake_getenv,
                                 (void *)ENV({"REDIS_URL", "redis://ops:t0p-s3cret@cache:99999"}),
                                 &err),
                     -1);
    assert_null(strstr(err.message, "t0p-s3cret"));
    assert_non_null(strstr(err.message, "redis://ops:***@cache:99999"));
    assert_redacts("t0p-s3cret", "[redacted]");
    /* an unescaped '@' in the password: refused, and no part of it shown */
    memset(&err, 0, sizeof err);
    assert_int_equal(config_load(&cfg, fake_getenv,
                                 (void *)ENV({"REDIS_URL", "redis://ops:ab@cd@cache"}), &err), -1);
    assert_non_null(strstr(err.message, "unescaped '@'"));
    assert_null(strstr(err.message, "ab@cd"));
    assert_null(strstr(err.message, "cd@"));
}

/* Issue 22: generated passwords hold '/', '?' and '#' unescaped. Such a URL
 * is read with the whole password (the userinfo ends at the last '@'); when it
 * fails for another reason, its error never shows the password. */
static void test_redis_url_password_with_delimiters(void **state)
{
    (void)state;
    static const char *const pw[] = {"s3cr/et", "s3cr?et", "s3cr#et", "a/b?c#d"};
    for (size_t i = 0; i < sizeof pw / sizeof *pw; i++) {
        char url[128];
        struct config cfg;
        snprintf(url, sizeof url, "redis://:%s@cache:6380/1", pw[i]);
        load_ok(ENV({"REDIS_URL", url}), &cfg);
        assert_string_equal(cfg.redis_password, pw[i]);
        assert_string_equal(cfg.redis_host, "cache");
        assert_int_equal(cfg.redis_port, 6380);
        assert_int_equal(cfg.redis_db, 1);
        config_free(&cfg);
        log_clear_secrets();

        snprintf(url, sizeof url, "redis://ops:%s@cache:99999", pw[i]);
        struct sd_error err = {{0}};
        assert_int_equal(config_load(&cfg, fake_getenv, (void *)ENV({"REDIS_URL", url}), &err),
                         -1);
        if (strstr(err.message, "s3cr") || strstr(err.message, "b?c"))
            fail_msg("the password of %s is in the error: %s", url, err.message);
        assert_non_null(strstr(err.message, "1-65535"));
        char line[256];
        snprintf(line, sizeof line, "x %s y", pw[i]);
        assert_redacts(line, "x [redacted] y");
        log_clear_secrets();
    }
}

static void test_redis_url_excludes_split_variables(void **state)
{
    (void)state;
    const char *split[] = {"REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB",
                           "REDIS_USERNAME"};
    const char *values[] = {"cache", "6379", "pw", "1", "ops"};
    for (size_t i = 0; i < sizeof split / sizeof *split; i++)
        load_err(ENV({"REDIS_URL", "redis://cache"}, {split[i], values[i]}), "REDIS_URL",
                 split[i]);
}

static void test_redis_username(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"REDIS_USERNAME", "supportd"}, {"REDIS_PASSWORD", "acl-pass"}), &cfg);
    assert_string_equal(cfg.redis_username, "supportd");
    assert_string_equal(cfg.redis_password, "acl-pass");
    assert_false(cfg.redis_tls);
    config_free(&cfg);
    load_err(ENV({"REDIS_USERNAME", "supportd"}), "REDIS_USERNAME", "REDIS_PASSWORD");
}

static void test_redis_tls(void **state)
{
    (void)state;
    char ca[] = "/tmp/test_config_ca_XXXXXX", key[] = "/tmp/test_config_key_XXXXXX";
    int fd1 = mkstemp(ca), fd2 = mkstemp(key);
    assert_true(fd1 >= 0 && fd2 >= 0);
    close(fd1);
    close(fd2);
    struct config cfg;

    load_ok(ENV({"REDIS_HOST", "cache"}), &cfg);
    assert_false(cfg.redis_tls); /* off unless asked for */
    config_free(&cfg);

    load_ok(ENV({"REDIS_TLS", "true"}, {"REDIS_TLS_CA_FILE", ca}), &cfg);
    assert_true(cfg.redis_tls);
    assert_string_equal(cfg.redis_tls_ca_file, ca);
    assert_null(cfg.redis_tls_cert_file);
    config_free(&cfg);

    load_ok(ENV({"REDIS_URL", "rediss://cache"}, {"REDIS_TLS_CERT_FILE", ca},
                {"REDIS_TLS_KEY_FILE", key}, {"REDIS_TLS", "true"}),
            &cfg);
    assert_true(cfg.redis_tls);
    assert_null(cfg.redis_tls_ca_file); /* the system's bundle, found at connect time */
    assert_string_equal(cfg.redis_tls_cert_file, ca);
    assert_string_equal(cfg.redis_tls_key_file, key);
    config_free(&cfg);

    load_err(ENV({"REDIS_TLS", "yes please"}), "REDIS_TLS", "not a boolean");
    load_err(ENV({"REDIS_URL", "rediss://cache"}, {"REDIS_TLS", "false"}), "REDIS_TLS",
             "contradicts");
    load_err(ENV({"REDIS_URL", "redis://cache"}, {"REDIS_TLS", "true"}), "REDIS_TLS",
             "contradicts");
    load_err(ENV({"REDIS_TLS_CA_FILE", ca}), "REDIS_TLS_CA_FILE", "TLS is off");
    load_err(ENV({"REDIS_TLS", "true"}, {"REDIS_TLS_CA_FILE", "/nonexistent/ca.pem"}),
             "REDIS_TLS_CA_FILE", "cannot read \"/nonexistent/ca.pem\"");
    load_err(ENV({"REDIS_TLS", "true"}, {"REDIS_TLS_CERT_FILE", ca}), "REDIS_TLS_KEY_FILE",
             "REDIS_TLS_CERT_FILE");
    load_err(ENV({"REDIS_TLS", "true"}, {"REDIS_TLS_KEY_FILE", key}), "REDIS_TLS_CERT_FILE",
             "REDIS_TLS_KEY_FILE");
    unlink(ca);
    unlink(key);
}

static void test_redis_port_invalid(void **state)
{
    (void)state;
    load_err(ENV({"REDIS_PORT", "redis"}), "REDIS_PORT", "not an integer");
    load_err(ENV({"REDIS_PORT", "6379x"}), "REDIS_PORT", "not an integer");
    load_err(ENV({"REDIS_PORT", "63.79"}), "REDIS_PORT", "not an integer");
    load_err(ENV({"REDIS_PORT", "0"}), "REDIS_PORT", "out of range");
    load_err(ENV({"REDIS_PORT", "70000"}), "REDIS_PORT", "70000 is out of range");
    load_err(ENV({"REDIS_PORT", "-1"}), "REDIS_PORT", "out of range");
    load_err(ENV({"REDIS_PORT", "99999999999999999999"}), "REDIS_PORT", NULL);
}

static void test_redis_db_invalid(void **state)
{
    (void)state;
    load_err(ENV({"REDIS_DB", "-1"}), "REDIS_DB", "out of range");
    load_err(ENV({"REDIS_DB", "zero"}), "REDIS_DB", "not an integer");
}

static void test_webhook_tolerance(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(NO_ENV, &cfg);
    assert_int_equal(cfg.webhook_tolerance_s, 6 * 3600);
    config_free(&cfg);
    load_ok(ENV({"QM_SUPPORT_WEBHOOK_TOLERANCE", "86400"}), &cfg);
    assert_int_equal(cfg.webhook_tolerance_s, 86400);
    config_free(&cfg);
    load_err(ENV({"QM_SUPPORT_WEBHOOK_TOLERANCE", "10"}), "QM_SUPPORT_WEBHOOK_TOLERANCE",
             "out of range");
    load_err(ENV({"QM_SUPPORT_WEBHOOK_TOLERANCE", "6h"}), "QM_SUPPORT_WEBHOOK_TOLERANCE",
             "not an integer");
}

/* ---- logging ------------------------------------------------------------- */

static void test_log_settings(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        enum log_level want;
    } levels[] = {
        {"debug", LOG_DEBUG}, {"INFO", LOG_INFO}, {"warn", LOG_WARN},
        {"Warning", LOG_WARN}, {"error", LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof levels / sizeof *levels; i++) {
        struct config cfg;
        load_ok(ENV({"LOG_LEVEL", levels[i].text}), &cfg);
        assert_int_equal(cfg.log_level, levels[i].want);
        config_free(&cfg);
    }
    struct config cfg;
    load_ok(ENV({"LOG_FORMAT", "text"}), &cfg);
    assert_false(cfg.log_json);
    config_free(&cfg);
    load_ok(ENV({"LOG_FORMAT", "JSON"}), &cfg);
    assert_true(cfg.log_json);
    config_free(&cfg);
}

static void test_log_settings_invalid(void **state)
{
    (void)state;
    load_err(ENV({"LOG_LEVEL", "verbose"}), "LOG_LEVEL", "\"verbose\"");
    load_err(ENV({"LOG_LEVEL", "trace"}), "LOG_LEVEL", NULL);
    load_err(ENV({"LOG_FORMAT", "xml"}), "LOG_FORMAT", "\"xml\"");
}

/* ---- providers ------------------------------------------------------------ */

static void test_email_provider(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"QM_SUPPORT_EMAIL_PROVIDER", "SendGrid"}), &cfg);
    assert_int_equal(cfg.email_provider, EMAIL_SENDGRID);
    config_free(&cfg);

    load_ok(ENV({"QM_SUPPORT_EMAIL_PROVIDER", "smtp"}, {"SMTP_URL", "smtps://mail.example:465"},
                {"SMTP_USER", "bot"}),
            &cfg);
    assert_int_equal(cfg.email_provider, EMAIL_SMTP);
    assert_string_equal(cfg.smtp_url, "smtps://mail.example:465");
    assert_string_equal(cfg.smtp_user, "bot");
    config_free(&cfg);

    load_ok(ENV({"QM_SUPPORT_EMAIL_PROVIDER", "smtp"}, {"SMTP_URL", "smtp://localhost:1025"}),
            &cfg);
    assert_int_equal(cfg.email_provider, EMAIL_SMTP);
    config_free(&cfg);
}

static void test_email_provider_invalid(void **state)
{
    (void)state;
    load_err(ENV({"QM_SUPPORT_EMAIL_PROVIDER", "mailgun"}), "QM_SUPPORT_EMAIL_PROVIDER",
             "\"mailgun\"");
    load_err(ENV({"QM_SUPPORT_EMAIL_PROVIDER", "smtp"}), "SMTP_URL",
             "QM_SUPPORT_EMAIL_PROVIDER=smtp");
}

static void test_url_schemes(void **state)
{
    (void)state;
    load_err(ENV({"SMTP_URL", "http://mail.example"}), "SMTP_URL", "smtp://");
    load_err(ENV({"SMTP_URL", "smtp://"}), "SMTP_URL", NULL); /* a scheme and nothing else */
    load_err(ENV({"TWILIO_API_BASE", "ftp://api.twilio.com"}), "TWILIO_API_BASE", "https://");
    load_err(ENV({"TWILIO_API_BASE", "api.twilio.com"}), "TWILIO_API_BASE", "\"api.twilio.com\"");
    load_err(ENV({"SENDGRID_API_BASE", "ws://api.sendgrid.com"}), "SENDGRID_API_BASE", NULL);

    struct config cfg;
    load_ok(ENV({"TWILIO_API_BASE", "http://127.0.0.1:8025"},
                {"SENDGRID_API_BASE", "HTTPS://sendgrid.test"}),
            &cfg);
    assert_string_equal(cfg.twilio_api_base, "http://127.0.0.1:8025");
    assert_string_equal(cfg.sendgrid_api_base, "HTTPS://sendgrid.test");
    config_free(&cfg);
}

static void test_other_provider_values(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"QM_SUPPORT_EMAIL_FROM", "support@example.com"},
                {"TWILIO_ACCOUNT_SID", "AC0123456789"},
                {"SENDGRID_WEBHOOK_PUBLIC_KEY", "MFkwEwYHKoZI"}),
            &cfg);
    assert_string_equal(cfg.email_from, "support@example.com");
    assert_string_equal(cfg.twilio_account_sid, "AC0123456789");
    assert_string_equal(cfg.sendgrid_webhook_public_key, "MFkwEwYHKoZI");
    config_free(&cfg);

    load_err(ENV({"QM_SUPPORT_EMAIL_FROM", "support"}), "QM_SUPPORT_EMAIL_FROM", NULL);
    load_err(ENV({"TWILIO_ACCOUNT_SID", "XY0123"}), "TWILIO_ACCOUNT_SID", "AC");
}

/* ---- MongoDB --------------------------------------------------------------- */

static void test_mongo(void **state)
{
    (void)state;
    struct config cfg;
    struct sd_error err = {{0}};
    load_ok(ENV({"MONGO_DB_URL", "mongodb://db.internal:27017/support"}), &cfg);
    assert_string_equal(cfg.mongo_url, "mongodb://db.internal:27017/support");
    assert_string_equal(cfg.mongo_db, "support");
    assert_int_equal(config_require_mongo(&cfg, &err), 0);
    config_free(&cfg);

    /* MONGO_DB_NAME wins over the URL's path... */
    load_ok(ENV({"MONGO_DB_URL", "mongodb://db.internal:27017/support"},
                {"MONGO_DB_NAME", "support_test"}),
            &cfg);
    assert_string_equal(cfg.mongo_db, "support_test");
    config_free(&cfg);

    /* ...and supplies the database when the URL names none. */
    load_ok(ENV({"MONGO_DB_URL", "mongodb://db.internal:27017"}, {"MONGO_DB_NAME", "other"}),
            &cfg);
    assert_string_equal(cfg.mongo_db, "other");
    config_free(&cfg);
}

static void test_mongo_invalid(void **state)
{
    (void)state;
    load_err(ENV({"MONGO_DB_URL", "mongodb://db.internal:notaport/support"}), "MONGO_DB_URL",
             "not a valid MongoDB connection string");
    load_err(ENV({"MONGO_DB_URL", "postgres://db.internal/support"}), "MONGO_DB_URL", NULL);
    load_err(ENV({"MONGO_DB_URL", "mongodb://db.internal:27017"}), "MONGO_DB_URL",
             "MONGO_DB_NAME");
    load_err(ENV({"MONGO_DB_URL", "mongodb://db.internal:27017/"}), "MONGO_DB_URL", "database");
}

static void test_require_mongo(void **state)
{
    (void)state;
    struct config cfg;
    struct sd_error err = {{0}};
    load_ok(NO_ENV, &cfg); /* loading succeeds: only run/once need MongoDB */
    assert_int_equal(config_require_mongo(&cfg, &err), -1);
    assert_true(strncmp(err.message, "MONGO_DB_URL:", 13) == 0);
    config_free(&cfg);

    /* A database name alone is not a connection. */
    load_ok(ENV({"MONGO_DB_NAME", "support"}), &cfg);
    assert_null(cfg.mongo_url);
    assert_string_equal(cfg.mongo_db, "support");
    assert_int_equal(config_require_mongo(&cfg, &err), -1);
    assert_true(strncmp(err.message, "MONGO_DB_URL:", 13) == 0);
    config_free(&cfg);
}

/* ---- general rules ---------------------------------------------------------- */

static void test_empty_is_unset(void **state)
{
    (void)state;
    struct config cfg;
    struct sd_error err = {{0}};
    load_ok(ENV({"MONGO_DB_URL", ""}, {"MONGO_DB_NAME", ""}, {"REDIS_HOST", ""},
                {"REDIS_PORT", ""}, {"REDIS_DB", ""}, {"REDIS_PASSWORD", ""},
                {"QM_SUPPORT_SNOOZE", ""}, {"QM_SUPPORT_SNOOZE_CRON", ""},
                {"QM_SUPPORT_RULES_DIR", ""}, {"QM_SUPPORT_REDIS_PREFIX", ""},
                {"QM_SUPPORT_EMAIL_PROVIDER", ""}, {"TWILIO_API_BASE", ""}, {"SMTP_URL", ""},
                {"LOG_LEVEL", ""}, {"LOG_FORMAT", ""}, {"QM_SUPPORT_LEASE_TTL", ""}),
            &cfg);
    assert_null(cfg.mongo_url);
    assert_null(cfg.mongo_db);
    assert_int_equal(config_require_mongo(&cfg, &err), -1);
    assert_string_equal(cfg.redis_host, "localhost");
    assert_int_equal(cfg.redis_port, 6379);
    assert_int_equal(cfg.redis_db, 0);
    assert_null(cfg.redis_password);
    assert_false(cfg.jobs[JOB_SNOOZE].enabled);
    assert_string_equal(cfg.jobs[JOB_SNOOZE].cron_text, "*/5 * * * *");
    assert_string_equal(cfg.rules_dir, "./rules");
    assert_string_equal(cfg.redis_prefix, "qm:support:");
    assert_int_equal(cfg.email_provider, EMAIL_SENDGRID);
    assert_string_equal(cfg.twilio_api_base, "https://api.twilio.com");
    assert_null(cfg.smtp_url);
    assert_int_equal(cfg.log_level, LOG_INFO);
    assert_true(cfg.log_json);
    assert_int_equal(cfg.lease_ttl_ms, 60000);
    config_free(&cfg);

    /* An empty SMTP_URL does not satisfy the smtp provider. */
    load_err(ENV({"QM_SUPPORT_EMAIL_PROVIDER", "smtp"}, {"SMTP_URL", ""}), "SMTP_URL", NULL);
}

static void test_lease_ttl(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"QM_SUPPORT_LEASE_TTL", "120"}), &cfg);
    assert_int_equal(cfg.lease_ttl_ms, 120000);
    config_free(&cfg);
    load_ok(ENV({"QM_SUPPORT_LEASE_TTL", "86400"}), &cfg);
    assert_int_equal(cfg.lease_ttl_ms, 86400000);
    config_free(&cfg);
    load_ok(ENV({"QM_SUPPORT_PROBE_HOLD_MS", "2500"}), &cfg);
    assert_int_equal(cfg.probe_hold_ms, 2500);
    config_free(&cfg);

    load_err(ENV({"QM_SUPPORT_LEASE_TTL", "0"}), "QM_SUPPORT_LEASE_TTL", "out of range");
    load_err(ENV({"QM_SUPPORT_LEASE_TTL", "86401"}), "QM_SUPPORT_LEASE_TTL", "out of range");
    load_err(ENV({"QM_SUPPORT_LEASE_TTL", "60s"}), "QM_SUPPORT_LEASE_TTL", "not an integer");
    load_err(ENV({"QM_SUPPORT_PROBE_HOLD_MS", "-5"}), "QM_SUPPORT_PROBE_HOLD_MS", NULL);
}

static void test_http(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(NO_ENV, &cfg);
    assert_null(cfg.http_host); /* off by default */
    assert_null(cfg.public_url);
    assert_int_equal(cfg.http_threads, 4);
    assert_int_equal(cfg.http_max_connections, 256);
    assert_int_equal(cfg.http_idle_timeout_s, 10);
    assert_int_equal(cfg.http_request_timeout_s, 10);
    config_free(&cfg);
    load_ok(ENV({"QM_SUPPORT_HTTP_LISTEN", "0.0.0.0:8080"},
                {"QM_SUPPORT_PUBLIC_URL", "https://hooks.example.com/supportd//"},
                {"QM_SUPPORT_HTTP_THREADS", "2"}, {"QM_SUPPORT_HTTP_REQUEST_TIMEOUT", "3"}),
            &cfg);
    assert_string_equal(cfg.http_host, "0.0.0.0");
    assert_int_equal(cfg.http_port, 8080);
    assert_string_equal(cfg.public_url, "https://hooks.example.com/supportd");
    assert_int_equal(cfg.http_threads, 2);
    assert_int_equal(cfg.http_request_timeout_s, 3);
    config_free(&cfg);
    load_ok(ENV({"QM_SUPPORT_HTTP_LISTEN", "[::1]:9000"}), &cfg);
    assert_string_equal(cfg.http_host, "::1");
    assert_int_equal(cfg.http_port, 9000);
    config_free(&cfg);

    load_err(ENV({"QM_SUPPORT_HTTP_LISTEN", "8080"}), "QM_SUPPORT_HTTP_LISTEN", "host:port");
    load_err(ENV({"QM_SUPPORT_HTTP_LISTEN", "host:0"}), "QM_SUPPORT_HTTP_LISTEN", "1-65535");
    load_err(ENV({"QM_SUPPORT_HTTP_LISTEN", "host:80x"}), "QM_SUPPORT_HTTP_LISTEN", "1-65535");
    load_err(ENV({"QM_SUPPORT_HTTP_LISTEN", "[::1:80"}), "QM_SUPPORT_HTTP_LISTEN", "[ ]");
    load_err(ENV({"QM_SUPPORT_HTTP_THREADS", "0"}), "QM_SUPPORT_HTTP_THREADS", "out of range");
    load_err(ENV({"QM_SUPPORT_PUBLIC_URL", "hooks.example.com"}), "QM_SUPPORT_PUBLIC_URL",
             "https://");
    load_err(ENV({"QM_SUPPORT_PUBLIC_URL", "https://h.example.com/?a=1"}),
             "QM_SUPPORT_PUBLIC_URL", "query");
    /* Twilio signs the public URL: without it its webhooks cannot be verified */
    load_err(ENV({"QM_SUPPORT_HTTP_LISTEN", "127.0.0.1:8080"}, {"TWILIO_AUTH_TOKEN", "t"}),
             "QM_SUPPORT_PUBLIC_URL", "required");
}

static void test_failed_load_leaves_nothing_to_free(void **state)
{
    (void)state;
    struct config cfg;
    struct sd_error err = {{0}};
    /* Fails late, after most strings were allocated. */
    assert_int_equal(config_load(&cfg, fake_getenv,
                                 (void *)ENV({"MONGO_DB_URL", "mongodb://h/support"},
                                             {"REDIS_HOST", "r"},
                                             {"QM_SUPPORT_EMAIL_PROVIDER", "smtp"}),
                                 &err),
                     -1);
    assert_null(cfg.mongo_url);
    assert_null(cfg.mongo_db);
    assert_null(cfg.redis_host);
    assert_null(cfg.rules_dir);
    assert_null(cfg.twilio_api_base);
    for (int i = 0; i < JOB_COUNT; i++)
        assert_null(cfg.jobs[i].cron_text);
    config_free(&cfg); /* harmless */

    assert_int_equal(config_load(&cfg, fake_getenv, (void *)ENV({"REDIS_PORT", "x"}), NULL), -1);
}

/* ---- secrets ------------------------------------------------------------------ */

static void test_secrets_registered(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"MONGO_DB_URL", "mongodb://app:m0ngo-pw@db.internal:27017/support"},
                {"REDIS_PASSWORD", "r3dis-pw"}, {"SENDGRID_API_KEY", "SG.sendgrid-key"},
                {"TWILIO_AUTH_TOKEN", "twilio-token"}, {"SMTP_PASSWORD", "smtp-pw"},
                {"TWILIO_ACCOUNT_SID", "AC0123456789"}, {"SMTP_USER", "mailer"}),
            &cfg);
    assert_redacts("mongodb://app:m0ngo-pw@db.internal:27017/support",
                   "mongodb://app:[redacted]@db.internal:27017/support");
    assert_redacts("redis r3dis-pw sendgrid SG.sendgrid-key twilio twilio-token smtp smtp-pw",
                   "redis [redacted] sendgrid [redacted] twilio [redacted] smtp [redacted]");
    /* Identifiers and user names are not secrets. */
    assert_redacts("AC0123456789 mailer app", "AC0123456789 mailer app");
    config_free(&cfg);

    /* A fresh state between tests: nothing is redacted any more. */
    log_clear_secrets();
    assert_redacts("r3dis-pw", "r3dis-pw");
}

static void test_secret_in_error_is_redacted(void **state)
{
    (void)state;
    /* SMTP_PASSWORD is read before SMTP_URL is checked, so a URL that embeds it
     * is quoted redacted. */
    load_err(ENV({"SMTP_PASSWORD", "smtp-s3cret"}, {"SMTP_URL", "http://bot:smtp-s3cret@mail"}),
             "SMTP_URL", "http://bot:[redacted]@mail");
}

/* Passwords with reserved characters must be percent-encoded in a MongoDB
 * URL; the URL (as logged or quoted) then holds the encoded form, so that is
 * the form that must be redacted too. */
static void test_mongo_password_percent_encoded(void **state)
{
    (void)state;
    struct config cfg;
    const char *url = "mongodb://app:p%40ss%2Fw0rd@db.internal:27017/support";
    load_ok(ENV({"MONGO_DB_URL", url}), &cfg);
    config_free(&cfg); /* the secret stays registered */
    assert_redacts("password p@ss/w0rd", "password [redacted]");
    assert_redacts(url, "mongodb://app:[redacted]@db.internal:27017/support");
}

/* Issue 22: an SMTP_URL password is a secret in both spellings, as written
 * and as decoded (the README says so; only the written one was registered). */
static void test_smtp_url_password_both_spellings(void **state)
{
    (void)state;
    struct config cfg;
    load_ok(ENV({"SMTP_URL", "smtps://bot:m%40il%2Fpw-9@mail.example.com:465"},
                {"QM_SUPPORT_EMAIL_PROVIDER", "smtp"}),
            &cfg);
    config_free(&cfg);
    assert_redacts("login m@il/pw-9 failed", "login [redacted] failed");
    assert_redacts("url m%40il%2Fpw-9", "url [redacted]");
    log_clear_secrets();
}

int main(void)
{
    mongoc_init();
    mongoc_log_set_handler(NULL, NULL); /* the URI parser logs its complaints */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_defaults, clear_secrets),
        cmocka_unit_test_teardown(test_job_specs_and_find, clear_secrets),
        cmocka_unit_test_teardown(test_job_flags, clear_secrets),
        cmocka_unit_test_teardown(test_job_flag_invalid, clear_secrets),
        cmocka_unit_test_teardown(test_cron_override, clear_secrets),
        cmocka_unit_test_teardown(test_cron_invalid, clear_secrets),
        cmocka_unit_test_teardown(test_redis_overrides, clear_secrets),
        cmocka_unit_test_teardown(test_redis_port_invalid, clear_secrets),
        cmocka_unit_test_teardown(test_redis_url, clear_secrets),
        cmocka_unit_test_teardown(test_redis_url_password_with_delimiters, clear_secrets),
        cmocka_unit_test_teardown(test_smtp_url_password_both_spellings, clear_secrets),
        cmocka_unit_test_teardown(test_redis_url_invalid, clear_secrets),
        cmocka_unit_test_teardown(test_redis_url_error_hides_password, clear_secrets),
        cmocka_unit_test_teardown(test_redis_url_excludes_split_variables, clear_secrets),
        cmocka_unit_test_teardown(test_redis_username, clear_secrets),
        cmocka_unit_test_teardown(test_redis_tls, clear_secrets),
        cmocka_unit_test_teardown(test_redis_db_invalid, clear_secrets),
        cmocka_unit_test_teardown(test_webhook_tolerance, clear_secrets),
        cmocka_unit_test_teardown(test_log_settings, clear_secrets),
        cmocka_unit_test_teardown(test_log_settings_invalid, clear_secrets),
        cmocka_unit_test_teardown(test_email_provider, clear_secrets),
        cmocka_unit_test_teardown(test_email_provider_invalid, clear_secrets),
        cmocka_unit_test_teardown(test_url_schemes, clear_secrets),
        cmocka_unit_test_teardown(test_other_provider_values, clear_secrets),
        cmocka_unit_test_teardown(test_mongo, clear_secrets),
        cmocka_unit_test_teardown(test_mongo_invalid, clear_secrets),
        cmocka_unit_test_teardown(test_require_mongo, clear_secrets),
        cmocka_unit_test_teardown(test_empty_is_unset, clear_secrets),
        cmocka_unit_test_teardown(test_lease_ttl, clear_secrets),
        cmocka_unit_test_teardown(test_http, clear_secrets),
        cmocka_unit_test_teardown(test_failed_load_leaves_nothing_to_free, clear_secrets),
        cmocka_unit_test_teardown(test_secrets_registered, clear_secrets),
        cmocka_unit_test_teardown(test_secret_in_error_is_redacted, clear_secrets),
        cmocka_unit_test_teardown(test_mongo_password_percent_encoded, clear_secrets),
    };
    int failed = cmocka_run_group_tests_name("config", tests, NULL, NULL);
    mongoc_cleanup();
    return failed;
}
