#include "jobs/dryrun.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "jobs/notification.h"
#include "jobs/snooze.h"
#include "store/mongo.h"

bool dryrun_supports(const char *job)
{
    return strcmp(job, "snooze") == 0 || strcmp(job, "notification") == 0;
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
static int plan_snooze(const struct fixtures *fx, struct rules *rules, int64_t now_ms,
                       bson_t *jobs)
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
    bson_destroy(&skipped_tmp);
    bson_destroy(&room_map);
    free(snoozed);
    return 0;
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
                bson_t *plan, struct sd_error *err)
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
    if (!job || strcmp(job, "snooze") == 0)
        rc = plan_snooze(fx, rules, now_ms, &jobs);
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
