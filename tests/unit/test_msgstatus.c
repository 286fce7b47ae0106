/* The message-status job's pure parts (src/jobs/message_status/): the status
 * mapping table of SPEC §7, entry verification and parsing, and decide's
 * rules — status order, once-only history, the grace for unknown messages,
 * and retry.lua's verdicts — with the shipped rules. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs/message_status/model.h"
#include "providers/signature.h"

#define NOW 1772442000000LL /* 2026-03-02T09:00:00Z */
#define TOKEN "unit-test-token"
#define HOOK "https://hooks.example.com/twilio"

static struct rules *rules;

static const char *rules_dir(void)
{
    const char *dir = getenv("SUPPORTD_RULES_DIR");
    if (!dir || !*dir)
        dir = access("rules/retry.lua", R_OK) == 0 ? "rules" : "../rules";
    return dir;
}

static int setup(void **state)
{
    (void)state;
    const char *dir = rules_dir();
    struct sd_error err;
    rules = rules_load(dir, NULL, &err);
    if (!rules)
        fprintf(stderr, "rules_load(%s): %s\n", dir, err.message);
    return rules ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rules_destroy(rules);
    return 0;
}

static const char *str_at(const bson_t *doc, const char *path)
{
    bson_iter_t it, f;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &f) &&
        BSON_ITER_HOLDS_UTF8(&f))
        return bson_iter_utf8(&f, NULL);
    return NULL;
}

static bool has(const bson_t *doc, const char *path)
{
    bson_iter_t it, f;
    return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &f);
}

/* ---- mapping ------------------------------------------------------------------ */

static void test_twilio_mapping(void **state)
{
    (void)state;
    const char *rows[][2] = {{"queued", "queued"},   {"accepted", "queued"},
                             {"scheduled", "queued"}, {"sending", "sending"},
                             {"sent", "sent"},       {"delivered", "delivered"},
                             {"read", "read"},       {"undelivered", "undelivered"},
                             {"failed", "failed"},   {"canceled", "failed"}};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        assert_string_equal(msgstatus_map_twilio(rows[i][0]), rows[i][1]);
    assert_null(msgstatus_map_twilio("received"));
    assert_null(msgstatus_map_twilio("partially_delivered"));
    assert_null(msgstatus_map_twilio(NULL));
}

static void test_sendgrid_mapping(void **state)
{
    (void)state;
    assert_string_equal(msgstatus_map_sendgrid("processed", NULL), "sent");
    assert_string_equal(msgstatus_map_sendgrid("deferred", NULL), "sent");
    assert_string_equal(msgstatus_map_sendgrid("delivered", NULL), "delivered");
    assert_string_equal(msgstatus_map_sendgrid("open", NULL), "read");
    assert_string_equal(msgstatus_map_sendgrid("bounce", "blocked"), "undelivered");
    assert_string_equal(msgstatus_map_sendgrid("bounce", "bounce"), "failed");
    assert_string_equal(msgstatus_map_sendgrid("bounce", NULL), "failed");
    assert_string_equal(msgstatus_map_sendgrid("dropped", NULL), "failed");
    const char *history[] = {"click", "spamreport", "unsubscribe", "group_unsubscribe"};
    for (size_t i = 0; i < 4; i++)
        assert_null(msgstatus_map_sendgrid(history[i], NULL));
}

/* ---- parsing --------------------------------------------------------------------- */

static const struct msgstatus_keys keys = {
    .twilio_auth_token = TOKEN, .sendgrid_public_key = NULL, .sendgrid_tolerance_ms = 3600000};

/* A Twilio entry signed over its form parameters. */
static bson_t *twilio_entry(const char *sid, const char *status, const char *code)
{
    struct sig_param p[4] = {{"MessageSid", sid}, {"MessageStatus", status},
                             {"AccountSid", "AC00000000000000000000000000000000"}};
    size_t n = 3;
    char body[512];
    snprintf(body, sizeof body, "MessageSid=%s&MessageStatus=%s&AccountSid=%s", sid, status,
             p[2].value);
    if (code) {
        p[n++] = (struct sig_param){"ErrorCode", code};
        snprintf(body + strlen(body), sizeof body - strlen(body), "&ErrorCode=%s", code);
    }
    char sig[64];
    assert_int_equal(signature_twilio_compute(TOKEN, HOOK, p, n, sig, sizeof sig, NULL), 0);
    bson_t *e = BCON_NEW("id", "1772441000000-0", "provider", "twilio", "body", body, "url", HOOK,
                         "signature", sig, "received_at", "1772441000000");
    return e;
}

static void test_parse_twilio(void **state)
{
    (void)state;
    bson_t *e = twilio_entry("SM0001", "undelivered", "30003");
    bson_t out = BSON_INITIALIZER;
    msgstatus_parse_entry(e, &keys, &out);
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, &out, "ok") && bson_iter_bool(&it));
    assert_string_equal(str_at(&out, "events.0.event_id"), "twilio:SM0001:undelivered");
    assert_string_equal(str_at(&out, "events.0.status"), "undelivered");
    assert_true(bson_iter_init(&it, &out) && bson_iter_find_descendant(&it, "events.0.code", &it));
    assert_int_equal(bson_iter_as_int64(&it), 30003);
    bson_destroy(&out);
    bson_destroy(e);
}

static void expect_rejected(bson_t *e, const char *reason_part)
{
    bson_t out = BSON_INITIALIZER;
    msgstatus_parse_entry(e, &keys, &out);
    bson_iter_t it;
    if (!(bson_iter_init_find(&it, &out, "ok") && !bson_iter_bool(&it))) {
        char *j = bson_as_relaxed_extended_json(&out, NULL);
        fail_msg("not rejected: %s", j); /* the process ends here: no free */
    }
    const char *reason = str_at(&out, "reason");
    if (!reason || !strstr(reason, reason_part))
        fail_msg("reason \"%s\" lacks \"%s\"", reason ? reason : "(none)", reason_part);
    assert_false(has(&out, "events"));
    bson_destroy(&out);
    bson_destroy(e);
}

/* An entry of string fields, NULL-terminated name/value list (BCON would read
 * a "[]" body as an array). */
static bson_t *fields(const char *first, ...)
{
    bson_t *e = bson_new();
    va_list ap;
    va_start(ap, first);
    for (const char *k = first; k; k = va_arg(ap, const char *)) {
        const char *v = va_arg(ap, const char *); /* the macro names its value twice */
        BSON_APPEND_UTF8(e, k, v);
    }
    va_end(ap);
    return e;
}

static void test_parse_rejections(void **state)
{
    (void)state;
    bson_t *e = twilio_entry("SM0001", "delivered", NULL);
    bson_iter_t it;
    /* tamper with the body after signing */
    bson_t *t = bson_new();
    bson_iter_init(&it, e);
    while (bson_iter_next(&it))
        if (strcmp(bson_iter_key(&it), "body"))
            bson_append_iter(t, NULL, 0, &it);
    BSON_APPEND_UTF8(t, "body", "MessageSid=SM0001&MessageStatus=read&AccountSid=AC00000000000000000000000000000000");
    expect_rejected(t, "X-Twilio-Signature does not match");
    bson_destroy(e);
    expect_rejected(fields("provider", "mailgun", "body", "x", NULL), "unknown provider");
    expect_rejected(fields("body", "x", NULL), "missing field: provider");
    expect_rejected(fields("provider", "twilio", "body", "MessageSid=SM1", "url", HOOK, NULL),
                    "missing signature");
    expect_rejected(fields("provider", "twilio", "body", "x", "url", HOOK, "signature", "abc",
                           "received_at", "yesterday", NULL),
                    "malformed received_at");
    expect_rejected(fields("provider", "sendgrid", "body", "[]", "signature", "abc",
                           "timestamp", "1772441000", NULL),
                    "SENDGRID_WEBHOOK_PUBLIC_KEY is not set");
    expect_rejected(fields("provider", "sendgrid", "body", "[]", "signature", "abc",
                           "timestamp", "soon", NULL),
                    "malformed timestamp");
}

/* ---- decide ------------------------------------------------------------------------ */

/* One message: twilio, outbound, with the given status and history ids. */
static bson_t *message(const char *sid, const char *status, const char *history_event_id,
                       int attempts)
{
    bson_oid_t oid;
    bson_oid_init(&oid, NULL);
    bson_t *m = BCON_NEW("_id", BCON_OID(&oid), "provider", "twilio", "provider_message_id", sid,
                         "direction", "outbound", "status", status, "attempts",
                         BCON_INT32(attempts), "updated_at", BCON_DATE_TIME(NOW - 60000));
    bson_t h, e;
    BSON_APPEND_ARRAY_BEGIN(m, "status_history", &h);
    BSON_APPEND_DOCUMENT_BEGIN(&h, "0", &e);
    BSON_APPEND_UTF8(&e, "status", status);
    if (history_event_id)
        BSON_APPEND_UTF8(&e, "event_id", history_event_id);
    bson_append_document_end(&h, &e);
    bson_append_array_end(m, &h);
    return m;
}

static void decide(bson_t **entries, size_t n, bson_t *const *msgs, size_t nm, bson_t *plan)
{
    bson_t map = BSON_INITIALIZER;
    for (size_t i = 0; i < nm; i++) {
        char key[128];
        snprintf(key, sizeof key, "twilio:%s", str_at(msgs[i], "provider_message_id"));
        BSON_APPEND_DOCUMENT(&map, key, msgs[i]);
    }
    struct log_ctx ctx = {"message-status", "unit"};
    struct msgstatus_input in = {.parsed = (const bson_t *const *)entries, .n_parsed = n,
                                 .messages = &map, .now_ms = NOW, .write_ms = NOW,
                                 .rules = rules, .log = &ctx};
    struct sd_error err;
    if (msgstatus_decide(&in, plan, &err))
        fail_msg("decide: %s", err.message);
    bson_destroy(&map);
}

static bson_t *event(const char *sid, const char *status, const char *code, int64_t at)
{
    bson_t *e = bson_new();
    msgstatus_poll_entry("twilio", sid, status, code, NULL, at, e);
    return e;
}

static void free_all(bson_t **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        bson_destroy(v[i]);
}

static void test_status_only_moves_forward(void **state)
{
    (void)state;
    bson_t *m[] = {message("SMa", "delivered", NULL, 1)};
    bson_t *e[] = {event("SMa", "sent", NULL, NOW), event("SMa", "failed", "30003", NOW),
                   event("SMa", "read", NULL, NOW)};
    bson_t plan = BSON_INITIALIZER;
    decide(e, 3, m, 1, &plan);
    assert_string_equal(str_at(&plan, "entries.0.events.0.outcome"), "ignored");
    assert_string_equal(str_at(&plan, "entries.1.events.0.outcome"), "ignored"); /* failed after delivered */
    assert_string_equal(str_at(&plan, "entries.2.events.0.outcome"), "applied");
    assert_string_equal(str_at(&plan, "updates.0.set.status"), "read");
    assert_false(has(&plan, "updates.0.set.error")); /* the late failure changed nothing */
    /* every distinct event is recorded, once */
    assert_string_equal(str_at(&plan, "updates.0.push.0.event_id"), "twilio:SMa:sent");
    assert_string_equal(str_at(&plan, "updates.0.push.2.event_id"), "twilio:SMa:read");
    assert_false(has(&plan, "updates.1"));
    bson_destroy(&plan);
    free_all(e, 3);
    free_all(m, 1);
}

static void test_duplicates_apply_once(void **state)
{
    (void)state;
    bson_t *m[] = {message("SMb", "sent", "twilio:SMb:delivered", 1)};
    bson_t *e[] = {event("SMb", "delivered", NULL, NOW), event("SMb", "read", NULL, NOW),
                   event("SMb", "read", NULL, NOW)};
    bson_t plan = BSON_INITIALIZER;
    decide(e, 3, m, 1, &plan);
    assert_string_equal(str_at(&plan, "entries.0.events.0.outcome"), "duplicate"); /* in history */
    assert_string_equal(str_at(&plan, "entries.1.events.0.outcome"), "applied");
    assert_string_equal(str_at(&plan, "entries.2.events.0.outcome"), "duplicate"); /* same batch */
    assert_true(has(&plan, "updates.0.push.0") && !has(&plan, "updates.0.push.1"));
    bson_destroy(&plan);
    free_all(e, 3);
    free_all(m, 1);
}

static void test_unknown_message_waits_then_is_unmatched(void **state)
{
    (void)state;
    bson_t *e[] = {event("SMnew", "delivered", NULL, NOW - 60000),
                   event("SMold", "delivered", NULL, NOW - 16 * 60000)};
    bson_t plan = BSON_INITIALIZER;
    decide(e, 2, NULL, 0, &plan);
    assert_string_equal(str_at(&plan, "entries.0.outcome"), "waiting");
    assert_string_equal(str_at(&plan, "entries.1.outcome"), "unmatched");
    assert_non_null(strstr(str_at(&plan, "entries.1.reason"), "SMold"));
    assert_false(has(&plan, "updates.0"));
    bson_destroy(&plan);
    free_all(e, 2);
}

static void test_retry_verdicts_of_the_shipped_rules(void **state)
{
    (void)state;
    bson_t *m[] = {message("SMr", "sent", NULL, 1), message("SMp", "sent", NULL, 1),
                   message("SMx", "sent", NULL, 4)};
    bson_t *e[] = {event("SMr", "undelivered", "30003", NOW), event("SMp", "failed", "30006", NOW),
                   event("SMx", "failed", "30003", NOW)};
    bson_t plan = BSON_INITIALIZER;
    decide(e, 3, m, 3, &plan);
    bson_iter_t it;
    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof path, "updates.%d.key", i);
        const char *key = str_at(&plan, path);
        snprintf(path, sizeof path, "updates.%d.set.final", i);
        assert_true(bson_iter_init(&it, &plan) && bson_iter_find_descendant(&it, path, &it));
        bool final = bson_iter_bool(&it);
        snprintf(path, sizeof path, "updates.%d.set.next_retry_at", i);
        assert_true(bson_iter_init(&it, &plan) && bson_iter_find_descendant(&it, path, &it));
        if (!strcmp(key, "twilio:SMr")) { /* 30003: retried after retry.lua's first delay */
            assert_false(final);
            assert_int_equal(bson_iter_date_time(&it), NOW + 60000);
        } else { /* 30006: never; 30003 at the maximum: given up */
            assert_true(final);
            assert_true(BSON_ITER_HOLDS_NULL(&it));
        }
    }
    bson_destroy(&plan);
    free_all(e, 3);
    free_all(m, 3);
}

static void test_delivery_cancels_a_scheduled_retry(void **state)
{
    (void)state;
    bson_t *msg = message("SMc", "failed", NULL, 1);
    BSON_APPEND_DATE_TIME(msg, "next_retry_at", NOW + 60000);
    bson_t *m[] = {msg};
    bson_t *e[] = {event("SMc", "delivered", NULL, NOW)};
    bson_t plan = BSON_INITIALIZER;
    decide(e, 1, m, 1, &plan);
    assert_string_equal(str_at(&plan, "updates.0.set.status"), "delivered");
    bson_iter_t it;
    assert_true(bson_iter_init(&it, &plan) &&
                bson_iter_find_descendant(&it, "updates.0.set.next_retry_at", &it) &&
                BSON_ITER_HOLDS_NULL(&it));
    bson_destroy(&plan);
    free_all(e, 1);
    free_all(m, 1);
}

static void test_missing_history_is_written_whole(void **state)
{
    (void)state;
    bson_oid_t oid;
    bson_oid_init(&oid, NULL);
    bson_t *msg = BCON_NEW("_id", BCON_OID(&oid), "provider", "twilio", "provider_message_id",
                           "SMh", "status", "sent", "status_history", BCON_NULL);
    bson_t *m[] = {msg};
    bson_t *e[] = {event("SMh", "delivered", NULL, NOW)};
    bson_t plan = BSON_INITIALIZER;
    decide(e, 1, m, 1, &plan);
    bson_iter_t it;
    assert_true(bson_iter_init(&it, &plan) &&
                bson_iter_find_descendant(&it, "updates.0.replace_history", &it) &&
                bson_iter_bool(&it));
    assert_string_equal(str_at(&plan, "updates.0.set.status_history.0.event_id"),
                        "twilio:SMh:delivered");
    assert_false(has(&plan, "updates.0.read_updated_at")); /* no updated_at: none to match */
    bson_destroy(&plan);
    free_all(e, 1);
    free_all(m, 1);
}

/* ---- a rule that fails for one message ------------------------------------------ */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(*len + 1);
    assert_int_equal(fread(buf, 1, *len, f), *len);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* The shipped rules, with retry.lua's decide raising for one phone number. */
static struct rules *rules_failing_for(const char *phone, char *tmp)
{
    const char *hook = "function M.decide(message, err, attempts)\n";
    DIR *d = opendir(rules_dir());
    assert_non_null(d);
    assert_non_null(mkdtemp(tmp));
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 4, ".lua"))
            continue;
        char from[512], to[512];
        snprintf(from, sizeof from, "%s/%s", rules_dir(), de->d_name);
        snprintf(to, sizeof to, "%s/%s", tmp, de->d_name);
        size_t len;
        char *src = slurp(from, &len);
        FILE *f = fopen(to, "wb");
        assert_non_null(f);
        char *at = strcmp(de->d_name, "retry.lua") ? NULL : strstr(src, hook);
        if (at) {
            at += strlen(hook);
            fwrite(src, 1, (size_t)(at - src), f);
            fprintf(f, "  if message.to == \"%s\" then error(\"no policy for %s\") end\n", phone,
                    phone);
            fwrite(at, 1, len - (size_t)(at - src), f);
        } else {
            assert_true(strcmp(de->d_name, "retry.lua"));
            fwrite(src, 1, len, f);
        }
        fclose(f);
        free(src);
    }
    closedir(d);
    struct sd_error err;
    struct rules *r = rules_load(tmp, NULL, &err);
    if (!r)
        fail_msg("rules_load(%s): %s", tmp, err.message);
    return r;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

static void test_rule_error_for_one_message_leaves_the_rest_whole(void **state)
{
    (void)state;
    char tmp[] = "/tmp/test_msgstatus_rules_XXXXXX";
    struct rules *shipped = rules;
    rules = rules_failing_for("+15559990000", tmp);
    bson_t *m[] = {message("SMok", "sent", NULL, 1), message("SMbad", "sent", NULL, 1),
                   message("SMd", "sent", NULL, 1)};
    BSON_APPEND_UTF8(m[0], "to", "+15551230000");
    BSON_APPEND_UTF8(m[1], "to", "+15559990000");
    BSON_APPEND_UTF8(m[2], "to", "+15559990000");
    bson_t *e[] = {event("SMbad", "undelivered", "30003", NOW),
                   event("SMok", "undelivered", "30003", NOW),
                   event("SMd", "delivered", NULL, NOW)}; /* no rule asked: written */
    bson_t plan = BSON_INITIALIZER;
    decide(e, 3, m, 3, &plan);
    /* every document of the plan is closed: it can be read back whole */
    char *json = bson_as_canonical_extended_json(&plan, NULL);
    assert_non_null(json);
    bson_free(json);
    assert_string_equal(str_at(&plan, "updates.0.key"), "twilio:SMok");
    assert_string_equal(str_at(&plan, "updates.1.key"), "twilio:SMd");
    assert_false(has(&plan, "updates.2"));
    bson_iter_t it;
    char hex[25], path[64];
    assert_true(bson_iter_init_find(&it, m[1], "_id"));
    bson_oid_to_string(bson_iter_oid(&it), hex);
    snprintf(path, sizeof path, "rule_errors.%s", hex);
    assert_non_null(strstr(str_at(&plan, path), "no policy for +15559990000"));
    assert_non_null(strstr(str_at(&plan, path), "twilio:SMbad"));
    assert_true(bson_iter_init(&it, &plan) && bson_iter_find_descendant(&it, "rule_errors", &it));
    assert_int_equal(bson_count_keys(&plan), 3); /* entries, updates, rule_errors */
    bson_destroy(&plan);
    free_all(e, 3);
    free_all(m, 3);
    rules_destroy(rules);
    rules = shipped;
    remove_dir(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_twilio_mapping),
        cmocka_unit_test(test_sendgrid_mapping),
        cmocka_unit_test(test_parse_twilio),
        cmocka_unit_test(test_parse_rejections),
        cmocka_unit_test(test_status_only_moves_forward),
        cmocka_unit_test(test_duplicates_apply_once),
        cmocka_unit_test(test_unknown_message_waits_then_is_unmatched),
        cmocka_unit_test(test_retry_verdicts_of_the_shipped_rules),
        cmocka_unit_test(test_delivery_cancels_a_scheduled_retry),
        cmocka_unit_test(test_missing_history_is_written_whole),
        cmocka_unit_test(test_rule_error_for_one_message_leaves_the_rest_whole),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
