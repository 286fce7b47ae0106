/* Unit tests of src/jobs/commcheck/decide.c with the shipped rules: which
 * requests are planned, and what alert actions, streaks and notifications the
 * answers lead to. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs/commcheck/model.h"
#include "rules/engine.h"

#define CID "65e2f00000000000000000c1"
#define ROOM "65e2f00000000000000000a1"
#define NOW 1772442000000LL /* 2026-03-02T09:00:00Z */

static struct rules *rules;

static const char *shipped_dir(void)
{
    const char *env = getenv("SUPPORTD_RULES_DIR");
    if (env && *env)
        return env;
    return access("rules/health.lua", R_OK) == 0 ? "rules" : "../rules";
}

static int setup(void **state)
{
    (void)state;
    struct sd_error err;
    struct rules_limits lim = {0};
    rules = rules_load(shipped_dir(), &lim, &err);
    if (!rules)
        fail_msg("rules_load: %s", err.message);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rules_destroy(rules);
    return 0;
}

static bson_t *json(const char *text)
{
    bson_error_t e;
    bson_t *b = bson_new_from_json((const uint8_t *)text, -1, &e);
    if (!b)
        fail_msg("bad JSON in test: %s: %s", e.message, text);
    return b;
}

static const char *str(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return "";
}

static int count(const bson_t *doc, const char *path)
{
    bson_iter_t it, sub;
    int n = 0;
    if (!bson_iter_init(&it, doc) || (path && !bson_iter_find_descendant(&it, path, &it)))
        return 0;
    if (!path) {
        while (bson_iter_next(&it))
            n++;
        return n;
    }
    if (!bson_iter_recurse(&it, &sub))
        return 0;
    while (bson_iter_next(&sub))
        n++;
    return n;
}

struct world {
    bson_t *channel, *alert, *known, *rooms, *answers, *streaks;
    bson_t results, actions, new_streaks, checked;
    struct commcheck_providers prov;
    struct commcheck_limits lim;
    struct commcheck_input in;
    const bson_t *chs[1], *als[1];
};

static void world_init(struct world *w, const char *channel, const char *alert,
                       const char *answers, const char *streaks, bool channel_checked)
{
    memset(w, 0, sizeof *w);
    w->channel = json(channel);
    w->alert = alert ? json(alert) : NULL;
    w->rooms = json("{\"" ROOM "\": {\"_id\": {\"$oid\": \"" ROOM "\"}, \"name\": \"Berlin\","
                    " \"email_from\": \"support@acme.example\", \"members\": ["
                    "{\"user_id\": \"m1\", \"name\": \"Petra\", \"email\": \"petra@acme.example\","
                    " \"role\": \"manager\"}, {\"user_id\": \"a1\", \"name\": \"Anna\","
                    " \"email\": \"anna@acme.example\", \"role\": \"agent\"}]}}");
    w->answers = json(answers ? answers : "{}");
    w->streaks = json(streaks ? streaks : "{}");
    w->known = bson_new();
    if (!channel_checked)
        BSON_APPEND_DOCUMENT(w->known, CID, w->channel);
    bson_init(&w->results);
    bson_init(&w->actions);
    bson_init(&w->new_streaks);
    bson_init(&w->checked);
    w->prov = (struct commcheck_providers){.twilio_base = "https://api.twilio.com",
                                           .twilio_main_sid = "AC11111111111111111111111111111111",
                                           .twilio_ready = true,
                                           .sendgrid_base = "https://api.sendgrid.com",
                                           .sendgrid_ready = true,
                                           .smtp_url = "smtp://mail.example",
                                           .smtp_ready = true};
    struct sd_error err;
    assert_int_equal(commcheck_limits_read(rules, &w->lim, &err), 0);
    w->chs[0] = w->channel;
    w->als[0] = w->alert;
    w->in = (struct commcheck_input){.channels = w->chs,
                                     .n_channels = channel_checked ? 1 : 0,
                                     .alerts = w->als,
                                     .n_alerts = alert ? 1 : 0,
                                     .known_channels = w->known,
                                     .rooms = w->rooms,
                                     .answers = w->answers,
                                     .streaks = w->streaks,
                                     .providers = &w->prov,
                                     .limits = &w->lim,
                                     .now_ms = NOW,
                                     .rules = rules};
}

static void world_decide(struct world *w)
{
    assert_int_equal(commcheck_decide(&w->in, &w->results, &w->actions, &w->new_streaks,
                                      &w->checked),
                     0);
}

static void world_free(struct world *w)
{
    bson_destroy(w->channel);
    if (w->alert)
        bson_destroy(w->alert);
    bson_destroy(w->known);
    bson_destroy(w->rooms);
    bson_destroy(w->answers);
    bson_destroy(w->streaks);
    bson_destroy(&w->results);
    bson_destroy(&w->actions);
    bson_destroy(&w->new_streaks);
    bson_destroy(&w->checked);
}

#define SMTP_CHANNEL                                                                          \
    "{\"_id\": {\"$oid\": \"" CID "\"}, \"room_id\": {\"$oid\": \"" ROOM "\"}, \"type\": "     \
    "\"email\", \"provider\": \"smtp\", \"from_email\": \"help@acme.example\", \"active\": %s}"
#define TWILIO_CHANNEL                                                                        \
    "{\"_id\": {\"$oid\": \"" CID "\"}, \"room_id\": {\"$oid\": \"" ROOM "\"}, \"type\": "     \
    "\"sms\", \"provider\": \"twilio\", \"phone_number\": \"+4930123456\", \"active\": true}"
#define TIMEOUT "{\"smtp.connect\": {\"status\": 0, \"failure\": \"timeout\", \"error\": \"x\"}}"

static char *fmt(const char *f, const char *a)
{
    static char buf[2048];
    snprintf(buf, sizeof buf, f, a);
    return buf;
}

static void transient_below_threshold_only_counts(void **state)
{
    (void)state;
    struct world w;
    world_init(&w, fmt(SMTP_CHANNEL, "true"), NULL, TIMEOUT, NULL, true);
    world_decide(&w);
    assert_string_equal(str(&w.results, "0.outcome"), "transient");
    assert_int_equal(count(&w.actions, NULL), 0);
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, &w.new_streaks, CID ":smtp.connect"));
    assert_int_equal(bson_iter_as_int64(&it), 1);
    assert_string_equal(str(&w.checked, "0"), CID);
    world_free(&w);
}

static void transient_at_threshold_opens(void **state)
{
    (void)state;
    struct world w;
    world_init(&w, fmt(SMTP_CHANNEL, "true"), NULL, TIMEOUT,
               "{\"" CID ":smtp.connect\": 1}", true);
    world_decide(&w);
    assert_string_equal(str(&w.actions, "0.kind"), "open");
    assert_string_equal(str(&w.actions, "0.alert.key"), CID ":smtp.connect");
    assert_string_equal(str(&w.actions, "0.alert.details.cause"), "provider_unreachable");
    assert_string_equal(str(&w.actions, "0.alert.severity"), "critical");
    assert_int_equal(count(&w.actions, "0.notifications"), 1); /* the manager, not the agent */
    assert_string_equal(str(&w.actions, "0.notifications.0.recipient.email"),
                        "petra@acme.example");
    assert_non_null(strstr(str(&w.actions, "0.notifications.0.key"),
                           "channel.alert:" CID ":smtp.connect:opened:"));
    assert_non_null(strstr(str(&w.actions, "0.notifications.0.subject"), "help@acme.example"));
    world_free(&w);
}

static void definitive_opens_at_once(void **state)
{
    (void)state;
    struct world w;
    world_init(&w, fmt(SMTP_CHANNEL, "true"), NULL,
               "{\"smtp.connect\": {\"status\": 535, \"failure\": \"login_denied\"}}", NULL, true);
    world_decide(&w);
    assert_string_equal(str(&w.actions, "0.kind"), "open");
    assert_string_equal(str(&w.actions, "0.alert.details.cause"), "channel_broken");
    assert_int_equal(count(&w.new_streaks, NULL), 0);
    world_free(&w);
}

#define BALANCE_ALERT                                                                          \
    "{\"_id\": {\"$oid\": \"65e2f00000000000000000d1\"}, \"key\": \"" CID ":twilio.balance\", " \
    "\"channel_id\": {\"$oid\": \"" CID "\"}, \"room_id\": {\"$oid\": \"" ROOM "\"}, "          \
    "\"check\": \"twilio.balance\", \"severity\": \"warning\", \"status\": \"open\", "          \
    "\"message\": \"low\", \"occurrences\": 1}"

static const char *balance_answers(const char *amount)
{
    static char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"twilio.account:main\": {\"status\": 200, \"body\": {\"sid\": "
             "\"AC11111111111111111111111111111111\", \"owner_account_sid\": "
             "\"AC11111111111111111111111111111111\", \"status\": \"active\"}},"
             " \"twilio.balance:main\": {\"status\": 200, \"body\": {\"balance\": \"%s\", "
             "\"currency\": \"USD\"}}}",
             amount);
    return buf;
}

static const bson_t *action_for(struct world *w, const char *check, bson_t *out)
{
    bson_iter_t it;
    bson_iter_init(&it, &w->actions);
    while (bson_iter_next(&it)) {
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&it, &len, &data);
        bson_init_static(out, data, len);
        const char *t = str(out, "target");
        if (strlen(t) > strlen(check) && strcmp(t + strlen(t) - strlen(check), check) == 0)
            return out;
    }
    return NULL;
}

static void severity_rise_notifies_once_and_resolve_rewrites_the_key(void **state)
{
    (void)state;
    bson_t a;
    struct world w;
    world_init(&w, TWILIO_CHANNEL, BALANCE_ALERT, balance_answers("2.00"), NULL, true);
    world_decide(&w);
    assert_non_null(action_for(&w, "twilio.balance", &a));
    assert_string_equal(str(&a, "kind"), "update");
    assert_string_equal(str(&a, "severity_before"), "warning");
    assert_string_equal(str(&a, "set.severity"), "critical");
    assert_int_equal(count(&a, "notifications"), 1);
    assert_string_equal(str(&a, "notifications.0.key"),
                        "channel.alert:65e2f00000000000000000d1:severity:critical:m1");
    world_free(&w);

    world_init(&w, TWILIO_CHANNEL, BALANCE_ALERT, balance_answers("12.00"), NULL, true);
    world_decide(&w);
    assert_non_null(action_for(&w, "twilio.balance", &a));
    assert_string_equal(str(&a, "kind"), "update");
    assert_int_equal(count(&a, "notifications"), 0); /* still warning: nothing repeats */
    world_free(&w);

    world_init(&w, TWILIO_CHANNEL, BALANCE_ALERT, balance_answers("50.00"), NULL, true);
    world_decide(&w);
    assert_non_null(action_for(&w, "twilio.balance", &a));
    assert_string_equal(str(&a, "kind"), "resolve");
    assert_string_equal(str(&a, "set.key"),
                        CID ":twilio.balance:resolved:65e2f00000000000000000d1");
    assert_string_equal(str(&a, "notifications.0.key"),
                        "channel.alert:65e2f00000000000000000d1:resolved:m1");
    world_free(&w);
}

static void inactive_channel_alert_resolves(void **state)
{
    (void)state;
    struct world w;
    const char *alert =
        "{\"_id\": {\"$oid\": \"65e2f00000000000000000d2\"}, \"key\": \"" CID ":smtp.connect\", "
        "\"channel_id\": {\"$oid\": \"" CID "\"}, \"room_id\": {\"$oid\": \"" ROOM "\"}, "
        "\"check\": \"smtp.connect\", \"severity\": \"critical\", \"status\": \"open\"}";
    world_init(&w, fmt(SMTP_CHANNEL, "false"), alert, NULL, NULL, false);
    world_decide(&w);
    assert_int_equal(count(&w.results, NULL), 0);
    assert_string_equal(str(&w.actions, "0.kind"), "resolve");
    assert_string_equal(str(&w.actions, "0.reason"), "the channel is inactive");
    assert_int_equal(count(&w.actions, "0.notifications"), 1);
    world_free(&w);
}

static void shared_account_is_planned_once(void **state)
{
    (void)state;
    bson_t *a = json(TWILIO_CHANNEL);
    bson_t *b = json("{\"_id\": {\"$oid\": \"65e2f00000000000000000c2\"}, \"room_id\": "
                     "{\"$oid\": \"" ROOM "\"}, \"type\": \"sms\", \"provider\": \"twilio\", "
                     "\"phone_number\": \"+4930999999\", \"account_sid\": "
                     "\"AC11111111111111111111111111111111\", \"active\": true}");
    struct world w;
    world_init(&w, TWILIO_CHANNEL, NULL, NULL, NULL, true);
    const bson_t *chs[2] = {a, b};
    w.in.channels = chs;
    w.in.n_channels = 2;
    bson_t planned = BSON_INITIALIZER;
    /* The main account named by SID is the same account as "main". */
    assert_int_equal(commcheck_plan_probes(&w.in, 1, &planned), 3);
    assert_string_equal(str(&planned, "0.id"), "twilio.account:main");
    assert_string_equal(str(&planned, "0.url"),
                        "https://api.twilio.com/2010-04-01/Accounts/"
                        "AC11111111111111111111111111111111.json");
    bson_destroy(&planned);
    bson_t *answers = json(balance_answers("30"));
    bson_t only_account = BSON_INITIALIZER;
    bson_copy_to_excluding_noinit(answers, &only_account, "twilio.balance:main", NULL);
    w.in.answers = &only_account;
    bson_init(&planned);
    assert_int_equal(commcheck_plan_probes(&w.in, 2, &planned), 1);
    assert_string_equal(str(&planned, "0.id"), "twilio.balance:main");
    bson_destroy(&planned);
    bson_destroy(&only_account);
    bson_destroy(answers);
    bson_destroy(a);
    bson_destroy(b);
    world_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(transient_below_threshold_only_counts),
        cmocka_unit_test(transient_at_threshold_opens),
        cmocka_unit_test(definitive_opens_at_once),
        cmocka_unit_test(severity_rise_notifies_once_and_resolve_rewrites_the_key),
        cmocka_unit_test(inactive_channel_alert_resolves),
        cmocka_unit_test(shared_account_is_planned_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
