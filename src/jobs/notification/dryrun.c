/* notification/dryrun.c — the notification job on fixtures (jobs/dryrun.h).
 *
 * Collect: every conversation, compared with the records of
 * conversation-notify-state.json (a conversation without one is a new
 * ticket), rooms, their active SMS channels and zones, and the new inbound
 * messages of conversation-message.json. Without notify-state records every
 * conversation would plan as a new ticket: the job is planned when asked for
 * or when the fixture set carries conversation-notify-state.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "jobs/dryrun.h"
#include "jobs/notification/model.h"
#include "store/mongo.h"

static const struct log_ctx log_dry = {"notification", "dry-run"};

struct input {
    const bson_t **convs;
    size_t n;
    bson_t *rooms, *states, *channels, *zones, *counts;
};

/* { "<room id hex>": the room's first active SMS channel } */
static void sms_channels(const struct fixtures *fx, bson_t *map)
{
    size_t n;
    const bson_t *const *channels = fixtures_docs(fx, COLL_CHANNEL, &n);
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it, t, a;
        if (bson_iter_init_find(&it, channels[i], "room_id") && BSON_ITER_HOLDS_OID(&it) &&
            bson_iter_init_find(&t, channels[i], "type") && BSON_ITER_HOLDS_UTF8(&t) &&
            strcmp(bson_iter_utf8(&t, NULL), "sms") == 0 &&
            bson_iter_init_find(&a, channels[i], "active") && bson_iter_as_bool(&a)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&it), hex);
            if (!bson_has_field(map, hex))
                BSON_APPEND_DOCUMENT(map, hex, channels[i]);
        }
    }
}

/* { "<conversation id hex>": inbound messages since the record's customer_at } */
static void new_messages(const struct fixtures *fx, const struct input *in, bson_t *counts)
{
    size_t n_msgs;
    const bson_t *const *msgs = fixtures_docs(fx, COLL_MESSAGE, &n_msgs);
    for (size_t i = 0; i < in->n; i++) {
        bson_iter_t it, s;
        char hex[25], path[64];
        int64_t count = 0, seen;
        if (!bson_iter_init_find(&it, in->convs[i], "_id") || !BSON_ITER_HOLDS_OID(&it))
            continue;
        const bson_oid_t *oid = bson_iter_oid(&it);
        bson_oid_to_string(oid, hex);
        snprintf(path, sizeof path, "%s.customer_at", hex);
        if (!bson_iter_init(&s, in->states) || !bson_iter_find_descendant(&s, path, &s) ||
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
            BSON_APPEND_INT64(counts, hex, count);
    }
}

static void *load(const struct dryrun_ctx *c, struct sd_error *err)
{
    (void)err;
    struct input *in = calloc(1, sizeof *in);
    in->convs = fixtures_sorted(c->fx, COLL_CONVERSATION, NULL, &in->n);
    in->rooms = bson_new();
    in->states = bson_new();
    in->channels = bson_new();
    in->zones = bson_new();
    in->counts = bson_new();
    fixtures_map_by_id(c->fx, COLL_ROOM, in->rooms);
    bson_iter_t it;
    bson_t room;
    if (bson_iter_init(&it, in->rooms))
        while (bson_iter_next(&it))
            if (bson_iter_child(&it, &room))
                notification_zone(&room, bson_iter_key(&it), c->now_ms, &log_dry, in->zones,
                                  bson_iter_key(&it));
    fixtures_map_by_id(c->fx, COLL_NOTIFY_STATE, in->states);
    sms_channels(c->fx, in->channels);
    new_messages(c->fx, in, in->counts);
    return in;
}

static void release(void *arg)
{
    struct input *in = arg;
    bson_destroy(in->rooms);
    bson_destroy(in->states);
    bson_destroy(in->channels);
    bson_destroy(in->zones);
    bson_destroy(in->counts);
    free(in->convs);
    free(in);
}

static int decide(void *arg, const struct dryrun_ctx *c, bson_t *job, struct sd_error *err)
{
    (void)err;
    struct input *in = arg;
    struct notification_input ni = {.conversations = in->convs,
                                    .n_conversations = in->n,
                                    .rooms = in->rooms,
                                    .states = in->states,
                                    .channels = in->channels,
                                    .zones = in->zones,
                                    .counts = in->counts,
                                    .now_ms = c->now_ms,
                                    .rules = c->rules,
                                    .log = &log_dry};
    bson_t actions, skipped;
    uint32_t n_actions = 0;
    BSON_APPEND_ARRAY_BEGIN(job, "actions", &actions);
    notification_decide(&ni, &actions, &n_actions);
    bson_append_array_end(job, &actions);
    BSON_APPEND_ARRAY_BEGIN(job, "skipped", &skipped);
    bson_append_array_end(job, &skipped);
    return 0;
}

static bool has_records(const struct fixtures *fx)
{
    size_t n;
    fixtures_docs(fx, COLL_NOTIFY_STATE, &n);
    return n > 0;
}

static void print_action(const bson_t *a)
{
    bson_iter_t nd;
    char due[40] = "none";
    if (bson_iter_init(&nd, a) && bson_iter_find_descendant(&nd, "sla.next_due", &nd) &&
        BSON_ITER_HOLDS_DATE_TIME(&nd))
        clock_format_iso(bson_iter_date_time(&nd), due, sizeof due);
    if (*bson_path_text(a, "state.failure.error"))
        printf("  notify %s: failed (%s), %s%s\n", bson_path_text(a, "target"),
               bson_path_text(a, "state.failure.error"),
               strcmp(due, "none") ? "retried from " : "parked", strcmp(due, "none") ? due : "");
    else
        printf("  notify %s: status %s, sla next_due %s\n", bson_path_text(a, "target"),
               bson_path_text(a, "state.status"), due);
}

const struct dryrun_job dryrun_notification = {.name = "notification",
                                               .load = load,
                                               .decide = decide,
                                               .release = release,
                                               .by_default = has_records,
                                               .print_action = print_action};
