#include "core/bson_field.h"
#include "jobs/dryrun.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "jobs/message_status/model.h"
#include "jobs/notification/model.h"
#include "jobs/snooze/model.h"
#include "store/mongo.h"

bool dryrun_supports(const char *job)
{
    return strcmp(job, "snooze") == 0 || strcmp(job, "message-status") == 0 ||
           strcmp(job, "communication-check") == 0 || strcmp(job, "notification") == 0;
}

static int by_id(const void *a, const void *b)
{
    const bson_t *x = *(const bson_t *const *)a, *y = *(const bson_t *const *)b;
    bson_iter_t i, j;
    bool hx = bson_iter_init_find(&i, x, "_id") && BSON_ITER_HOLDS_OID(&i);
    bool hy = bson_iter_init_find(&j, y, "_id") && BSON_ITER_HOLDS_OID(&j);
    if (!hx || !hy)
        return hx - hy;
    return bson_oid_compare(bson_iter_oid(&i), bson_iter_oid(&j));
}

/* Fixture collect for snooze: every snoozed ticket, which is what production
 * reads on its first tick (due ones, plus all snoozed for early wake-up and
 * malformed snoozes). decide leaves the ones not due. */
/* A ticket decide could not plan (a rule failed: an error, its time budget)
 * fails the dry-run: a plan without it would look like "nothing to do". */
static int first_failure(const bson_t *skipped, struct sd_error *err)
{
    bson_iter_t it, f;
    if (!bson_iter_init(&it, skipped))
        return 0;
    while (bson_iter_next(&it)) {
        if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &f))
            continue;
        const char *target = "?", *reason = "?";
        bool failed = false;
        while (bson_iter_next(&f)) {
            if (!strcmp(bson_iter_key(&f), "target") && BSON_ITER_HOLDS_UTF8(&f))
                target = bson_iter_utf8(&f, NULL);
            else if (!strcmp(bson_iter_key(&f), "reason") && BSON_ITER_HOLDS_UTF8(&f))
                reason = bson_iter_utf8(&f, NULL);
            else if (!strcmp(bson_iter_key(&f), "failed"))
                failed = bson_iter_as_bool(&f);
        }
        if (failed && strstr(reason, target))
            return sd_error_set(err, "snooze: %s", reason);
        if (failed)
            return sd_error_set(err, "snooze: conversation %s: %s", target, reason);
    }
    return 0;
}

static int plan_snooze(const struct fixtures *fx, struct rules *rules, int64_t now_ms,
                       bson_t *jobs, struct sd_error *err)
{
    size_t n_convs, n_rooms;
    const bson_t *const *convs = fixtures_docs(fx, COLL_CONVERSATION, &n_convs);
    const bson_t *const *rooms = fixtures_docs(fx, COLL_ROOM, &n_rooms);
    const bson_t **snoozed = calloc(n_convs + 1, sizeof *snoozed);
    size_t n = 0;
    for (size_t i = 0; i < n_convs; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, convs[i], "status") && BSON_ITER_HOLDS_UTF8(&it) &&
            strcmp(bson_iter_utf8(&it, NULL), "snoozed") == 0)
            snoozed[n++] = convs[i];
    }
    qsort(snoozed, n, sizeof *snoozed, by_id);
    bson_t room_map = BSON_INITIALIZER;
    for (size_t i = 0; i < n_rooms; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, rooms[i], "_id") && BSON_ITER_HOLDS_OID(&it)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&it), hex);
            BSON_APPEND_DOCUMENT(&room_map, hex, rooms[i]);
        }
    }
    struct log_ctx ctx = {"snooze", "dry-run"};
    struct snooze_input in = {.conversations = snoozed,
                              .n_conversations = n,
                              .rooms = &room_map,
                              .now_ms = now_ms,
                              .redis_prefix = fixtures_redis_prefix(fx),
                              .rules = rules,
                              .log = &ctx};
    bson_t job, actions, skipped;
    uint32_t n_actions = 0, n_skipped = 0;
    BSON_APPEND_DOCUMENT_BEGIN(jobs, "snooze", &job);
    BSON_APPEND_ARRAY_BEGIN(&job, "actions", &actions);
    bson_t skipped_tmp = BSON_INITIALIZER;
    snooze_decide(&in, &actions, &n_actions, &skipped_tmp, &n_skipped, true);
    bson_append_array_end(&job, &actions);
    BSON_APPEND_ARRAY_BEGIN(&job, "skipped", &skipped);
    bson_concat(&skipped, &skipped_tmp);
    bson_append_array_end(&job, &skipped);
    bson_append_document_end(jobs, &job);
    int rc = first_failure(&skipped_tmp, err);
    bson_destroy(&skipped_tmp);
    bson_destroy(&room_map);
    free(snoozed);
    return rc;
}

/* Appends the documents of `docs` whose status is one of `statuses`. */
static size_t with_status(const bson_t *const *docs, size_t n, const char *const *statuses,
                          const bson_t **out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = bson_field_utf8(docs[i], "status");
        for (int j = 0; s && statuses[j]; j++)
            if (!strcmp(s, statuses[j])) {
                out[k++] = docs[i];
                break;
            }
    }
    return k;
}

/* Fixture collect for message-status: the entries of status-events.json in
 * file order (the stream's), messages keyed as production keys them, polls
 * answered from provider-answers.json's {"probe": "twilio.message:<sid>",
 * "status": 200, "body": <Twilio's message resource>}. */
static int plan_message_status(const struct fixtures *fx, struct rules *rules, int64_t now_ms,
                               const struct msgstatus_keys *env_keys, bson_t *jobs,
                               struct sd_error *err)
{
    size_t n_entries, n_msgs, n_answers;
    const bson_t *const *entries = fixtures_docs(fx, FIXTURE_STATUS_EVENTS, &n_entries);
    const bson_t *const *msgs = fixtures_docs(fx, COLL_MESSAGE, &n_msgs);
    const bson_t *const *answers = fixtures_docs(fx, FIXTURE_PROVIDER_ANSWERS, &n_answers);
    /* A fixture set may carry the (test) keys its webhooks were signed with;
     * the environment's win, as in production. */
    struct msgstatus_keys keys = *env_keys;
    if (!keys.twilio_auth_token)
        keys.twilio_auth_token = fixtures_meta_str(fx, "twilio_auth_token");
    if (!keys.sendgrid_public_key)
        keys.sendgrid_public_key = fixtures_meta_str(fx, "sendgrid_webhook_public_key");
    bson_t messages = BSON_INITIALIZER;
    for (size_t i = 0; i < n_msgs; i++) {
        const char *provider = bson_field_utf8(msgs[i], "provider"),
                   *pmid = bson_field_utf8(msgs[i], "provider_message_id");
        char key[240];
        if (!provider || !pmid)
            continue;
        snprintf(key, sizeof key, "%s:%s", provider, pmid);
        if (!bson_has_field(&messages, key))
            BSON_APPEND_DOCUMENT(&messages, key, msgs[i]);
    }
    bson_t **parsed = calloc(n_entries + 1, sizeof *parsed);
    for (size_t i = 0; i < n_entries; i++) {
        parsed[i] = bson_new();
        msgstatus_parse_entry(entries[i], &keys, parsed[i]);
    }
    struct log_ctx ctx = {"message-status", "dry-run"};
    struct msgstatus_input in = {.parsed = (const bson_t *const *)parsed,
                                 .n_parsed = n_entries,
                                 .messages = &messages,
                                 .now_ms = now_ms,
                                 .write_ms = now_ms,
                                 .rules = rules,
                                 .log = &ctx};
    bson_t job, events_plan = BSON_INITIALIZER;
    int rc = msgstatus_decide(&in, &events_plan, err);
    BSON_APPEND_DOCUMENT_BEGIN(jobs, "message-status", &job);
    bson_concat(&job, &events_plan);
    /* polls: stale messages, and what each answer would change */
    static const char *const stale[] = {"queued", "sending", "sent", NULL};
    static const char *const failed[] = {"failed", "undelivered", NULL};
    const bson_t **sel = calloc(n_msgs + 1, sizeof *sel);
    size_t n_sel = with_status(msgs, n_msgs, stale, sel);
    bson_t polls = BSON_INITIALIZER, poll_entries = BSON_INITIALIZER;
    uint32_t n_polls = 0;
    if (rc == 0)
        rc = msgstatus_plan_polls(sel, n_sel, now_ms, rules, &polls, &n_polls, err);
    BSON_APPEND_ARRAY(&job, "polls", &polls);
    bson_t **answered = calloc(n_polls + 1, sizeof *answered);
    size_t n_answered = 0;
    bson_iter_t it;
    if (rc == 0 && bson_iter_init(&it, &polls)) {
        while (bson_iter_next(&it)) {
            bson_iter_t f;
            const char *sid = NULL;
            if (bson_iter_recurse(&it, &f) && bson_iter_find(&f, "provider_message_id"))
                sid = bson_iter_utf8(&f, NULL);
            char probe[200];
            snprintf(probe, sizeof probe, "twilio.message:%s", sid ? sid : "");
            for (size_t a = 0; sid && a < n_answers; a++) {
                const char *p = bson_field_utf8(answers[a], "probe");
                bson_iter_t b, v;
                if (!p || strcmp(p, probe) || !bson_iter_init_find(&b, answers[a], "body") ||
                    !BSON_ITER_HOLDS_DOCUMENT(&b))
                    continue;
                /* the body as Twilio's message fetch answers it */
                uint32_t blen;
                const uint8_t *bdata;
                bson_t body;
                bson_iter_document(&b, &blen, &bdata);
                bson_init_static(&body, bdata, blen);
                char code[32] = "";
                if (bson_iter_init_find(&v, &body, "error_code") && BSON_ITER_HOLDS_NUMBER(&v))
                    snprintf(code, sizeof code, "%lld", (long long)bson_iter_as_int64(&v));
                answered[n_answered] = bson_new();
                msgstatus_poll_entry("twilio", sid, bson_field_utf8(&body, "status") ? bson_field_utf8(&body, "status") : "",
                                     code, bson_field_utf8(&body, "error_message"), now_ms,
                                     answered[n_answered]);
                n_answered++;
                break;
            }
        }
        in.parsed = (const bson_t *const *)answered;
        in.n_parsed = n_answered;
        rc = msgstatus_decide(&in, &poll_entries, err);
    }
    BSON_APPEND_DOCUMENT(&job, "poll_results", &poll_entries);
    /* retries due */
    n_sel = with_status(msgs, n_msgs, failed, sel);
    bson_t retries = BSON_INITIALIZER;
    uint32_t n_retries = 0;
    msgstatus_plan_retries(sel, n_sel, now_ms, &retries, &n_retries);
    BSON_APPEND_ARRAY(&job, "retries", &retries);
    bson_append_document_end(jobs, &job);
    for (size_t i = 0; i < n_answered; i++)
        bson_destroy(answered[i]);
    for (size_t i = 0; i < n_entries; i++)
        bson_destroy(parsed[i]);
    free(answered);
    free(parsed);
    free(sel);
    bson_destroy(&retries);
    bson_destroy(&poll_entries);
    bson_destroy(&polls);
    bson_destroy(&events_plan);
    bson_destroy(&messages);
    return rc;
}

/* Fixture collect for notification: every conversation, compared with the
 * records of conversation-notify-state.json (a conversation without one is a
 * new ticket), rooms, their active SMS channels and zones, and the new
 * inbound messages of conversation-message.json. */
static int plan_notification(const struct fixtures *fx, struct rules *rules, int64_t now_ms,
                             bson_t *jobs)
{
    size_t n_convs, n_rooms, n_states, n_channels, n_msgs;
    const bson_t *const *convs = fixtures_docs(fx, COLL_CONVERSATION, &n_convs);
    const bson_t *const *rooms = fixtures_docs(fx, COLL_ROOM, &n_rooms);
    const bson_t *const *states = fixtures_docs(fx, COLL_NOTIFY_STATE, &n_states);
    const bson_t *const *channels = fixtures_docs(fx, COLL_CHANNEL, &n_channels);
    const bson_t *const *msgs = fixtures_docs(fx, COLL_MESSAGE, &n_msgs);
    const bson_t **sorted = calloc(n_convs + 1, sizeof *sorted);
    for (size_t i = 0; i < n_convs; i++)
        sorted[i] = convs[i];
    qsort(sorted, n_convs, sizeof *sorted, by_id);
    struct log_ctx ctx = {"notification", "dry-run"};
    bson_t room_map = BSON_INITIALIZER, state_map = BSON_INITIALIZER, chan_map = BSON_INITIALIZER,
           zones = BSON_INITIALIZER, counts = BSON_INITIALIZER;
    bson_iter_t it;
    char hex[25];
    for (size_t i = 0; i < n_rooms; i++)
        if (bson_iter_init_find(&it, rooms[i], "_id") && BSON_ITER_HOLDS_OID(&it)) {
            bson_oid_to_string(bson_iter_oid(&it), hex);
            BSON_APPEND_DOCUMENT(&room_map, hex, rooms[i]);
            notification_zone(rooms[i], hex, now_ms, &ctx, &zones, hex);
        }
    for (size_t i = 0; i < n_states; i++)
        if (bson_iter_init_find(&it, states[i], "_id") && BSON_ITER_HOLDS_OID(&it)) {
            bson_oid_to_string(bson_iter_oid(&it), hex);
            BSON_APPEND_DOCUMENT(&state_map, hex, states[i]);
        }
    for (size_t i = 0; i < n_channels; i++) {
        bson_iter_t t, a;
        if (bson_iter_init_find(&it, channels[i], "room_id") && BSON_ITER_HOLDS_OID(&it) &&
            bson_iter_init_find(&t, channels[i], "type") && BSON_ITER_HOLDS_UTF8(&t) &&
            strcmp(bson_iter_utf8(&t, NULL), "sms") == 0 &&
            bson_iter_init_find(&a, channels[i], "active") && bson_iter_as_bool(&a)) {
            bson_oid_to_string(bson_iter_oid(&it), hex);
            if (!bson_has_field(&chan_map, hex))
                BSON_APPEND_DOCUMENT(&chan_map, hex, channels[i]);
        }
    }
    for (size_t i = 0; i < n_convs; i++) {
        bson_iter_t s;
        char path[64];
        int64_t count = 0, seen;
        if (!bson_iter_init_find(&it, sorted[i], "_id") || !BSON_ITER_HOLDS_OID(&it))
            continue;
        const bson_oid_t *oid = bson_iter_oid(&it);
        bson_oid_to_string(oid, hex);
        snprintf(path, sizeof path, "%s.customer_at", hex);
        if (!bson_iter_init(&s, &state_map) || !bson_iter_find_descendant(&s, path, &s) ||
            !BSON_ITER_HOLDS_DATE_TIME(&s))
            continue;
        seen = bson_iter_date_time(&s);
        for (size_t j = 0; j < n_msgs; j++) {
            bson_iter_t c, d, dir;
            if (bson_iter_init_find(&c, msgs[j], "conversation_id") && BSON_ITER_HOLDS_OID(&c) &&
                bson_oid_equal(bson_iter_oid(&c), oid) &&
                bson_iter_init_find(&dir, msgs[j], "direction") && BSON_ITER_HOLDS_UTF8(&dir) &&
                strcmp(bson_iter_utf8(&dir, NULL), "inbound") == 0 &&
                bson_iter_init_find(&d, msgs[j], "created_at") && BSON_ITER_HOLDS_DATE_TIME(&d) &&
                bson_iter_date_time(&d) > seen)
                count++;
        }
        if (count)
            BSON_APPEND_INT64(&counts, hex, count);
    }
    struct notification_input in = {.conversations = sorted,
                                    .n_conversations = n_convs,
                                    .rooms = &room_map,
                                    .states = &state_map,
                                    .channels = &chan_map,
                                    .zones = &zones,
                                    .counts = &counts,
                                    .now_ms = now_ms,
                                    .rules = rules,
                                    .log = &ctx};
    bson_t job, actions, skipped;
    uint32_t n_actions = 0;
    BSON_APPEND_DOCUMENT_BEGIN(jobs, "notification", &job);
    BSON_APPEND_ARRAY_BEGIN(&job, "actions", &actions);
    notification_decide(&in, &actions, &n_actions);
    bson_append_array_end(&job, &actions);
    BSON_APPEND_ARRAY_BEGIN(&job, "skipped", &skipped);
    bson_append_array_end(&job, &skipped);
    bson_append_document_end(jobs, &job);
    bson_destroy(&room_map);
    bson_destroy(&state_map);
    bson_destroy(&chan_map);
    bson_destroy(&zones);
    bson_destroy(&counts);
    free(sorted);
    return 0;
}

int dryrun_plan(const struct fixtures *fx, struct rules *rules, const char *job, int64_t now_ms,
                const struct msgstatus_keys *keys, bson_t *plan, struct sd_error *err)
{
    if (job && !dryrun_supports(job))
        return sd_error_set(err, "--job %s: no dry-run for this job in this version", job);
    char now_text[40];
    clock_format_iso(now_ms, now_text, sizeof now_text);
    BSON_APPEND_UTF8(plan, "now", now_text);
    BSON_APPEND_UTF8(plan, "rules", rules_version(rules));
    bson_t jobs;
    BSON_APPEND_DOCUMENT_BEGIN(plan, "jobs", &jobs);
    int rc = 0;
    if (!job || !strcmp(job, "snooze"))
        rc = plan_snooze(fx, rules, now_ms, &jobs, err);
    if (rc == 0 && (!job || !strcmp(job, "message-status")))
        rc = plan_message_status(fx, rules, now_ms, keys, &jobs, err);
    if (rc == 0 && (!job || strcmp(job, "communication-check") == 0))
        rc = dryrun_commcheck(fx, rules, now_ms, &jobs, err);
    /* Without notify-state records every conversation would plan as a new
     * ticket: notification is planned when asked for or when the fixture set
     * carries conversation-notify-state.json. */
    size_t n_states;
    fixtures_docs(fx, COLL_NOTIFY_STATE, &n_states);
    if (rc == 0 && ((job && strcmp(job, "notification") == 0) || (!job && n_states)))
        rc = plan_notification(fx, rules, now_ms, &jobs);
    bson_append_document_end(plan, &jobs);
    return rc;
}
