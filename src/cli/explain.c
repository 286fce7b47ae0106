/* explain.c — `supportd explain ID`: why a conversation was (or was not)
 * notified, woken or escalated, from the jobs' own decisions.
 *
 * For a conversation: the snooze and notification jobs run in plan mode on
 * it alone (jobs/live.h: the same collect and decide as a tick, nothing
 * written), with every rule call traced (rules_trace_to) and decide's
 * reasons for what it did not plan. Each planned notification is looked up
 * in the outbox by its key: already_sent (with its status, sent_at and
 * provider id) or would_send; the outbox's other entries for the
 * conversation are what earlier ticks sent. For a message: its delivery and
 * status fields and status history.
 *
 *   { id, kind: "conversation", now, rules, conversation: {...}, room: {...}|null,
 *     decisions: [{job, type, key?, recipient?, verdict, reason?, status?,
 *                  sent_at?, provider_message_id?}],
 *     sla: {...}|null, rules_calls: [{file, function, args, result, duration_us, error?}] }
 *   { id, kind: "message", message: {...}, status_history: [...] }
 * Exit 0; 1 when no conversation or message has the id (or a read failed);
 * 2 for a malformed id or a bad configuration. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/bson_field.h"
#include "core/clock.h"
#include "jobs/live.h"
#include "jobs/message_status/model.h"
#include "jobs/runner.h"
#include "store/mongo.h"
#include "store/redis.h"
#include "store/stream.h"

static atomic_bool no_stop;

static const char *const conversation_fields[] = {
    "status", "priority", "room_id", "assignee_id", "assigned_by", "assigned_at", "created_at",
    "updated_at", "first_response_at", "last_customer_message_at", "last_agent_message_at",
    "resolved_at", "closed_at", "snooze", "sla", "escalation_level", "unsnoozed_at"};
static const char *const room_fields[] = {"name", "timezone", "business_hours", "holidays",
                                          "sla_policy"};
/* A message's fields that say where it went and what became of it (not its body). */
static const char *const message_fields[] = {
    "conversation_id", "direction", "channel", "status", "status_updated_at", "provider",
    "provider_message_id", "twilio_sid", "sendgrid_message_id", "error", "error_code",
    "attempts", "retries", "next_retry_at", "send_started_at", "sent_at", "delivered_at",
    "read_at", "failed_at", "retry", "final", "uncertain", "supportd_polled_at",
    "supportd_resend", "created_at", "updated_at"};

#define STREAM_SCAN_MAX 100000 /* entries read from each stream, at most */

static void project(const bson_t *doc, const char *const *fields, size_t n, bson_t *out)
{
    bson_iter_t it;
    for (size_t i = 0; i < n; i++)
        if (bson_iter_init_find(&it, doc, fields[i]))
            bson_append_iter(out, fields[i], -1, &it);
}

static bson_t *find_one(mongoc_client_t *client, const char *db, const char *coll,
                        const bson_t *filter, struct sd_error *err, int *rc)
{
    mongoc_collection_t *c = mongoc_client_get_collection(client, db, coll);
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_INT64(&opts, "limit", 1);
    bson_t **found = NULL;
    size_t n = 0;
    *rc = store_find_all(c, filter, &opts, &found, &n, err);
    bson_destroy(&opts);
    mongoc_collection_destroy(c);
    bson_t *doc = *rc == 0 && n ? bson_copy(found[0]) : NULL;
    store_docs_free(found, n);
    return doc;
}

struct out {
    bson_t decisions;
    uint32_t n;
    bson_t keys; /* planned keys, to tell the history apart */
};

static bson_t *next(struct out *o, bson_t *child)
{
    char idx[16];
    const char *key;
    bson_uint32_to_string(o->n++, &key, idx, sizeof idx);
    BSON_APPEND_DOCUMENT_BEGIN(&o->decisions, key, child);
    return child;
}

static void recipient_of(const bson_t *entry, bson_t *d)
{
    const char *to = bson_path_text(entry, "recipient.email");
    BSON_APPEND_UTF8(d, "recipient", *to ? to : bson_path_text(entry, "recipient.phone"));
}

static void sent_fields(const bson_t *entry, bson_t *d)
{
    static const char *const f[] = {"status", "sent_at", "provider", "provider_message_id",
                                    "attempts", "last_error"};
    project(entry, f, sizeof f / sizeof *f, d);
}

/* Each planned notification: in the outbox under its key, or to be sent. */
static int planned(struct out *o, const bson_t *plan, mongoc_client_t *client, const char *db,
                   struct sd_error *err)
{
    bson_iter_t jobs, job, acts, notes;
    if (!bson_iter_init_find(&jobs, plan, "jobs") || !bson_iter_recurse(&jobs, &job))
        return 0;
    while (bson_iter_next(&job)) {
        bson_t jd;
        if (!bson_iter_child(&job, &jd) || !bson_path_each(&jd, "actions", &acts))
            continue;
        while (bson_iter_next(&acts)) {
            bson_t ad;
            if (!bson_iter_child(&acts, &ad) || !bson_path_each(&ad, "notifications", &notes))
                continue;
            while (bson_iter_next(&notes)) {
                bson_t e, filter = BSON_INITIALIZER, d;
                if (!bson_iter_child(&notes, &e))
                    continue;
                const char *key = bson_path_text(&e, "key");
                BSON_APPEND_UTF8(&filter, "key", key);
                int rc;
                bson_t *sent = find_one(client, db, COLL_NOTIFICATION, &filter, err, &rc);
                bson_destroy(&filter);
                if (rc)
                    return -1;
                BSON_APPEND_BOOL(&o->keys, key, true);
                next(o, &d);
                BSON_APPEND_UTF8(&d, "job", bson_iter_key(&job));
                BSON_APPEND_UTF8(&d, "type", bson_path_text(&e, "type"));
                BSON_APPEND_UTF8(&d, "key", key);
                recipient_of(&e, &d);
                BSON_APPEND_UTF8(&d, "verdict", sent ? "already_sent" : "would_send");
                if (sent)
                    sent_fields(sent, &d);
                else
                    BSON_APPEND_UTF8(&d, "subject", bson_path_text(&e, "subject"));
                bson_append_document_end(&o->decisions, &d);
                if (sent)
                    bson_destroy(sent);
            }
        }
    }
    return 0;
}

/* The outbox's entries for the conversation that this decision did not plan
 * again: what earlier ticks decided. */
static int history(struct out *o, const bson_oid_t *oid, mongoc_client_t *client, const char *db,
                   struct sd_error *err)
{
    mongoc_collection_t *c = mongoc_client_get_collection(client, db, COLL_NOTIFICATION);
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort;
    BSON_APPEND_OID(&filter, "conversation_id", oid);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, "created_at", 1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", 1000);
    bson_t **found = NULL;
    size_t n = 0;
    int rc = store_find_all(c, &filter, &opts, &found, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *key = bson_path_text(found[i], "key");
        if (bson_has_field(&o->keys, key))
            continue;
        const char *type = bson_path_text(found[i], "type");
        bson_t d;
        next(o, &d);
        BSON_APPEND_UTF8(&d, "job", strcmp(type, "ticket.unsnoozed") ? "notification" : "snooze");
        BSON_APPEND_UTF8(&d, "type", type);
        BSON_APPEND_UTF8(&d, "key", key);
        recipient_of(found[i], &d);
        BSON_APPEND_UTF8(&d, "verdict", "already_sent");
        sent_fields(found[i], &d);
        bson_append_document_end(&o->decisions, &d);
    }
    store_docs_free(found, n);
    bson_destroy(&filter);
    bson_destroy(&opts);
    mongoc_collection_destroy(c);
    return rc;
}

static void suppressed(struct out *o, const char *job, const char *type, const char *reason)
{
    bson_t d;
    next(o, &d);
    BSON_APPEND_UTF8(&d, "job", job);
    BSON_APPEND_UTF8(&d, "type", type);
    BSON_APPEND_UTF8(&d, "verdict", "suppressed");
    BSON_APPEND_UTF8(&d, "reason", reason);
    bson_append_document_end(&o->decisions, &d);
}

/* What the snooze job made of it when it planned nothing. */
static void snooze_reasons(struct out *o, const bson_t *conv, const bson_t *plan)
{
    bson_iter_t it;
    bool any = false;
    if (bson_iter_init(&it, plan) && bson_iter_find_descendant(&it, "jobs.snooze.skipped", &it) &&
        bson_iter_recurse(&it, &it)) {
        while (bson_iter_next(&it)) {
            bson_t s;
            if (bson_iter_child(&it, &s)) {
                suppressed(o, "snooze", "ticket.unsnoozed", bson_path_text(&s, "reason"));
                any = true;
            }
        }
    }
    if (any)
        return;
    const char *status = bson_path_text(conv, "status");
    if (strcmp(status, "snoozed")) {
        char reason[160];
        snprintf(reason, sizeof reason, "not snoozed (status %s)", *status ? status : "missing");
        suppressed(o, "snooze", "ticket.unsnoozed", reason);
    }
}

static bool action_part(const bson_t *plan, const char *job, const char *field, bson_t *out)
{
    char path[96];
    snprintf(path, sizeof path, "jobs.%s.actions.0.%s", job, field);
    bson_iter_t it;
    return bson_iter_init(&it, plan) && bson_iter_find_descendant(&it, path, &it) &&
           bson_iter_child(&it, out);
}

static void print_json(const bson_t *doc)
{
    char *json = bson_as_relaxed_extended_json(doc, NULL);
    puts(json);
    bson_free(json);
}

static const char *date_text(const bson_t *doc, const char *path, char *buf, size_t size)
{
    bson_iter_t it;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_DATE_TIME(&it))
        clock_format_iso(bson_iter_date_time(&it), buf, size);
    else
        snprintf(buf, size, "none");
    return buf;
}

static void print_list_of(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    bool first = true;
    printf("[");
    if (bson_path_each(doc, path, &it))
        while (bson_iter_next(&it)) {
            printf("%s%s", first ? "" : ", ", BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : "?");
            first = false;
        }
    printf("]");
}

/* The SLA as the job stores it, then each deadline's walk through the
 * room's business hours. */
static void print_sla(const bson_t *s)
{
    char a[40], b[40];
    printf("sla: policy %s, first response due %s, resolution due %s, next due %s\n",
           bson_path_text(s, "policy"), date_text(s, "first_response_due", a, sizeof a),
           date_text(s, "resolution_due", b, sizeof b),
           date_text(s, "next_due", (char[40]){0}, 40));
    printf("  warned ");
    print_list_of(s, "warned");
    printf(", breached ");
    print_list_of(s, "breached");
    printf(", paused %lld business min\n", (long long)bson_path_int(s, "paused_minutes", 0));
    bson_iter_t walks, w;
    if (!bson_iter_init(&walks, s) || !bson_iter_find_descendant(&walks, "walk", &walks) ||
        !bson_iter_recurse(&walks, &walks))
        return;
    while (bson_iter_next(&walks)) {
        bson_t d, x;
        if (!bson_iter_child(&walks, &d))
            continue;
        printf("  %s: %lld business min from %s → due %s\n", bson_iter_key(&walks),
               (long long)bson_path_int(&d, "business_minutes", 0), date_text(&d, "start", a, sizeof a),
               date_text(&d, "due", b, sizeof b));
        bson_iter_t f;
        if (bson_iter_init_find(&f, &d, "around_the_clock"))
            printf("    around the clock (the room has no business hours)\n");
        if (bson_path_each(&d, "spans", &w))
            while (bson_iter_next(&w))
                if (bson_iter_child(&w, &x))
                    printf("    %s  %s – %s  %lld min (UTC%+lld min)\n", bson_path_text(&x, "day"),
                           date_text(&x, "from", a, sizeof a), date_text(&x, "to", b, sizeof b),
                           (long long)bson_path_int(&x, "minutes", 0),
                           (long long)bson_path_int(&x, "utc_offset_minutes", 0));
        if (bson_path_each(&d, "skipped", &w))
            while (bson_iter_next(&w))
                if (bson_iter_child(&w, &x))
                    printf("    %s  skipped: %s\n", bson_path_text(&x, "day"),
                           bson_path_text(&x, "why"));
    }
}

static void print_text(const bson_t *r)
{
    printf("%s %s at %s (rules %s)\n", bson_path_text(r, "kind"), bson_path_text(r, "id"),
           bson_path_text(r, "now"), bson_path_text(r, "rules"));
    bson_iter_t it;
    bson_t d;
    if (!strcmp(bson_path_text(r, "kind"), "message")) {
        bson_t m;
        if (bson_iter_init_find(&it, r, "message") && bson_iter_child(&it, &m)) {
            char *json = bson_as_relaxed_extended_json(&m, NULL);
            printf("  %s\n", json);
            bson_free(json);
        }
        printf("status history:\n");
        if (bson_path_each(r, "status_history", &it))
            while (bson_iter_next(&it))
                if (bson_iter_child(&it, &d))
                    printf("  %-12s %-12s %s%s%s\n", bson_path_text(&d, "verdict"),
                           bson_path_text(&d, "status"), bson_path_text(&d, "event_id"),
                           *bson_path_text(&d, "reason") ? ": " : "",
                           bson_path_text(&d, "reason"));
        printf("events in the streams:\n");
        if (bson_path_each(r, "events", &it))
            while (bson_iter_next(&it))
                if (bson_iter_child(&it, &d))
                    printf("  %-12s %s %s (%s %s)%s%s\n", bson_path_text(&d, "verdict"),
                           bson_path_text(&d, "event_id"), bson_path_text(&d, "provider_status"),
                           bson_path_text(&d, "stream"), bson_path_text(&d, "entry_id"),
                           *bson_path_text(&d, "reason") ? ": " : "",
                           bson_path_text(&d, "reason"));
        return;
    }
    printf("  status %s, priority %s, escalation level %lld\n",
           bson_path_text(r, "conversation.status"), bson_path_text(r, "conversation.priority"),
           (long long)bson_path_int(r, "conversation.escalation_level", 0));
    if (bson_iter_init_find(&it, r, "room") && BSON_ITER_HOLDS_DOCUMENT(&it))
        printf("  room %s, zone %s\n", bson_path_text(r, "room.name"),
               bson_path_text(r, "room.timezone"));
    else
        printf("  room not found\n");
    printf("decisions:\n");
    if (bson_path_each(r, "decisions", &it))
        while (bson_iter_next(&it)) {
            if (!bson_iter_child(&it, &d))
                continue;
            const char *v = bson_path_text(&d, "verdict");
            printf("  %-12s %-13s %-26s", v, bson_path_text(&d, "job"),
                   bson_path_text(&d, "type"));
            if (!strcmp(v, "suppressed"))
                printf(" %s\n", bson_path_text(&d, "reason"));
            else if (!strcmp(v, "already_sent"))
                printf(" to %s (%s)\n", bson_path_text(&d, "recipient"),
                       bson_path_text(&d, "status"));
            else
                printf(" to %s: \"%s\"\n", bson_path_text(&d, "recipient"),
                       bson_path_text(&d, "subject"));
        }
    if (bson_iter_init_find(&it, r, "sla") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
        bson_t s;
        bson_iter_child(&it, &s);
        print_sla(&s);
    }
    printf("rule calls:\n");
    if (bson_path_each(r, "rules_calls", &it))
        while (bson_iter_next(&it))
            if (bson_iter_child(&it, &d))
                printf("  %s %s → %s (%lld µs)%s%s\n", bson_path_text(&d, "file"),
                       bson_path_text(&d, "function"), bson_path_text(&d, "result"),
                       (long long)bson_path_int(&d, "duration_us", 0),
                       *bson_path_text(&d, "error") ? " error: " : "",
                       bson_path_text(&d, "error"));
}

static int explain_conversation(const struct live_ctx *base, const bson_t *conv,
                                mongoc_client_t *client, const char *db, bson_t *r,
                                struct sd_error *err)
{
    bson_iter_t it;
    bson_iter_init_find(&it, conv, "_id");
    const bson_oid_t *oid = bson_iter_oid(&it);
    bson_t part = BSON_INITIALIZER;
    project(conv, conversation_fields, sizeof conversation_fields / sizeof *conversation_fields,
            &part);
    BSON_APPEND_DOCUMENT(r, "conversation", &part);
    bson_reinit(&part);
    int rc = 0;
    bson_t *room = NULL;
    if (bson_iter_init_find(&it, conv, "room_id")) {
        bson_t filter = BSON_INITIALIZER;
        bson_append_iter(&filter, "_id", -1, &it);
        room = find_one(client, db, COLL_ROOM, &filter, err, &rc);
        bson_destroy(&filter);
    }
    if (room) {
        project(room, room_fields, sizeof room_fields / sizeof *room_fields, &part);
        BSON_APPEND_DOCUMENT(r, "room", &part);
        bson_destroy(room);
    } else {
        BSON_APPEND_NULL(r, "room");
    }
    bson_destroy(&part);
    if (rc)
        return -1;

    bson_t why = BSON_INITIALIZER, calls = BSON_INITIALIZER, snooze = BSON_INITIALIZER,
           notify = BSON_INITIALIZER, walks = BSON_INITIALIZER;
    uint32_t n_why = 0;
    struct live_ctx c = *base;
    c.only = oid;
    c.why = &why;
    c.n_why = &n_why;
    c.walks = &walks;
    rules_trace_to(&calls);
    rc = live_plan(&c, "snooze", &snooze, err);
    if (rc == 0)
        rc = live_plan(&c, "notification", &notify, err);
    rules_trace_to(NULL);
    struct out o = {.n = 0};
    bson_init(&o.decisions);
    bson_init(&o.keys);
    if (rc == 0)
        rc = planned(&o, &snooze, client, db, err);
    if (rc == 0)
        rc = planned(&o, &notify, client, db, err);
    if (rc == 0) {
        snooze_reasons(&o, conv, &snooze);
        if (bson_iter_init(&it, &why))
            while (bson_iter_next(&it)) {
                bson_t w;
                bson_iter_child(&it, &w);
                suppressed(&o, bson_path_text(&w, "job"), bson_path_text(&w, "type"),
                           bson_path_text(&w, "reason"));
            }
        rc = history(&o, oid, client, db, err);
    }
    if (rc == 0) {
        BSON_APPEND_ARRAY(r, "decisions", &o.decisions);
        bson_t sla, out;
        if (action_part(&notify, "notification", "sla", &sla)) {
            BSON_APPEND_DOCUMENT_BEGIN(r, "sla", &out);
            bson_concat(&out, &sla);
            BSON_APPEND_DOCUMENT(&out, "walk", &walks);
            bson_append_document_end(r, &out);
        } else {
            BSON_APPEND_NULL(r, "sla");
        }
        BSON_APPEND_ARRAY(r, "rules_calls", &calls);
    }
    bson_destroy(&o.decisions);
    bson_destroy(&o.keys);
    bson_destroy(&why);
    bson_destroy(&walks);
    bson_destroy(&calls);
    bson_destroy(&snooze);
    bson_destroy(&notify);
    return rc;
}

/* A provider status that maps to none of ours: kept in the history only. */
static bool history_only(const bson_t *msg, const char *provider_status)
{
    const char *provider = bson_path_text(msg, "provider");
    if (!*provider_status)
        return false;
    return !strcmp(provider, "twilio")     ? msgstatus_map_twilio(provider_status) == NULL
           : !strcmp(provider, "sendgrid") ? msgstatus_map_sendgrid(provider_status, NULL) == NULL
                                           : false;
}

/* status_history with what each entry did: the job records every event
 * (applied: false for one that did not move the status). */
static void annotated_history(const bson_t *msg, bson_t *r)
{
    bson_t out;
    uint32_t n = 0;
    char last[64] = "";
    BSON_APPEND_ARRAY_BEGIN(r, "status_history", &out);
    bson_iter_t it;
    if (bson_iter_init_find(&it, msg, "status_history") && bson_iter_recurse(&it, &it)) {
        while (bson_iter_next(&it)) {
            bson_t h, e;
            if (!bson_iter_child(&it, &h))
                continue;
            char idx[16], reason[200] = "";
            const char *key, *verdict = "recorded";
            bson_iter_t a;
            const char *status = bson_path_text(&h, "status");
            if (bson_iter_init_find(&a, &h, "applied") && BSON_ITER_HOLDS_BOOL(&a)) {
                if (bson_iter_bool(&a)) {
                    verdict = "applied";
                    snprintf(last, sizeof last, "%s", status);
                } else if (history_only(msg, bson_path_text(&h, "provider_status"))) {
                    verdict = "history_only";
                    snprintf(reason, sizeof reason, "%s is recorded in the history only", status);
                } else {
                    verdict = "ignored";
                    snprintf(reason, sizeof reason,
                             "%s after %s: the status does not move backwards", status,
                             *last ? last : "(none)");
                }
            }
            bson_uint32_to_string(n++, &key, idx, sizeof idx);
            BSON_APPEND_DOCUMENT_BEGIN(&out, key, &e);
            bson_concat(&e, &h);
            BSON_APPEND_UTF8(&e, "verdict", verdict);
            if (*reason)
                BSON_APPEND_UTF8(&e, "reason", reason);
            bson_append_document_end(&out, &e);
        }
    }
    bson_append_array_end(r, &out);
}

static bool history_has(const bson_t *msg, const char *event_id)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, msg, "status_history") || !bson_iter_recurse(&it, &it))
        return false;
    while (bson_iter_next(&it)) {
        bson_t h;
        if (bson_iter_child(&it, &h) && !strcmp(bson_path_text(&h, "event_id"), event_id))
            return true;
    }
    return false;
}

/* The events naming this message in status-events (read, not consumed) and
 * in its rejected and unmatched side streams, each with its fate. */
static int stream_events(const struct config *cfg, struct rds *redis, const bson_t *msg,
                         bson_t *r, struct sd_error *err)
{
    const char *provider = bson_path_text(msg, "provider"),
               *pmid = bson_path_text(msg, "provider_message_id");
    struct msgstatus_keys keys = {.twilio_auth_token = cfg->twilio_auth_token,
                                  .sendgrid_public_key = cfg->sendgrid_webhook_public_key,
                                  .sendgrid_tolerance_ms = cfg->webhook_tolerance_s * 1000LL};
    static const char *const streams[] = {"status-events", "status-events:rejected",
                                          "status-events:unmatched"};
    bson_t out;
    uint32_t n = 0;
    int rc = 0;
    BSON_APPEND_ARRAY_BEGIN(r, "events", &out);
    for (size_t s = 0; *pmid && rc == 0 && s < 3; s++) {
        char key[300], after[64] = "-";
        snprintf(key, sizeof key, "%s%s", cfg->redis_prefix, streams[s]);
        for (int read = 0; rc == 0 && read < STREAM_SCAN_MAX;) {
            struct stream_batch b = {0};
            rc = stream_range(redis, key, after, 1000, &b, err);
            for (size_t i = 0; rc == 0 && i < b.n; i++) {
                bson_t parsed = BSON_INITIALIZER;
                msgstatus_parse_entry(b.entries[i], &keys, &parsed);
                bson_iter_t it;
                if (bson_iter_init_find(&it, &parsed, "events") && bson_iter_recurse(&it, &it)) {
                    while (bson_iter_next(&it)) {
                        bson_t ev, d;
                        if (!bson_iter_child(&it, &ev) ||
                            strcmp(bson_path_text(&ev, "provider_message_id"), pmid) ||
                            (*provider && strcmp(bson_path_text(&ev, "provider"), provider)))
                            continue;
                        const char *event_id = bson_path_text(&ev, "event_id");
                        char idx[16];
                        const char *k;
                        bson_uint32_to_string(n++, &k, idx, sizeof idx);
                        BSON_APPEND_DOCUMENT_BEGIN(&out, k, &d);
                        BSON_APPEND_UTF8(&d, "stream", streams[s]);
                        BSON_APPEND_UTF8(&d, "entry_id", bson_path_text(b.entries[i], "id"));
                        BSON_APPEND_UTF8(&d, "event_id", event_id);
                        BSON_APPEND_UTF8(&d, "provider_status",
                                         bson_path_text(&ev, "provider_status"));
                        if (s == 1 || s == 2) {
                            BSON_APPEND_UTF8(&d, "verdict", s == 1 ? "rejected" : "unmatched");
                            BSON_APPEND_UTF8(&d, "reason",
                                             bson_path_text(b.entries[i], "reason"));
                        } else if (history_has(msg, event_id)) {
                            BSON_APPEND_UTF8(&d, "verdict", "in_history");
                        } else {
                            BSON_APPEND_UTF8(&d, "verdict", "waiting");
                            BSON_APPEND_UTF8(&d, "reason",
                                             "not applied yet: the next message-status tick "
                                             "reads it (or it waits for a failing rule's retry)");
                        }
                        bson_append_document_end(&out, &d);
                    }
                }
                bson_destroy(&parsed);
            }
            read += (int)b.n;
            if (b.n)
                snprintf(after, sizeof after, "%s", bson_path_text(b.entries[b.n - 1], "id"));
            bool more = b.n == 1000;
            stream_batch_clear(&b);
            if (!more)
                break;
        }
    }
    bson_append_array_end(r, &out);
    return rc;
}

static int explain_message(const struct config *cfg, struct rds *redis, const bson_t *msg,
                           bson_t *r, struct sd_error *err)
{
    bson_t part = BSON_INITIALIZER;
    project(msg, message_fields, sizeof message_fields / sizeof *message_fields, &part);
    BSON_APPEND_DOCUMENT(r, "message", &part);
    bson_destroy(&part);
    annotated_history(msg, r);
    return stream_events(cfg, redis, msg, r, err);
}

int cli_explain(int argc, char **argv)
{
    const char *id = NULL, *now_text = NULL, *format = "text";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--now") || !strcmp(argv[i], "--format")) {
            if (i + 1 >= argc)
                return cli_usage_error("explain", "%s needs a value", argv[i]);
            *(!strcmp(argv[i], "--now") ? &now_text : &format) = argv[i + 1];
            i++;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("explain", "unknown flag %s", argv[i]);
        } else if (!id) {
            id = argv[i];
        } else {
            return cli_usage_error("explain", "unexpected argument \"%s\"", argv[i]);
        }
    }
    if (!id)
        return cli_usage_error("explain", "which conversation or message? (its id)");
    if (!bson_oid_is_valid(id, strlen(id)) || strlen(id) != 24)
        return cli_usage_error("explain", "\"%s\" is not an id (24 hexadecimal digits)", id);
    if (strcmp(format, "json") && strcmp(format, "text"))
        return cli_usage_error("explain", "--format must be json or text");
    struct sd_error err;
    int64_t now_ms = clock_now_ms();
    if (now_text && clock_parse_iso(now_text, &now_ms, &err))
        return cli_usage_error("explain", "--now: %s", err.message);

    struct config cfg;
    if (cli_load_config_mongo(&cfg) != EXIT_OK)
        return EXIT_USAGE;
    int rules_rc;
    struct rules *rules = cli_load_rules_checked("explain", cfg.rules_dir, &cfg, &rules_rc);
    if (!rules) {
        config_free(&cfg);
        return rules_rc;
    }
    struct store *store = store_new(cfg.mongo_url, cfg.mongo_db, &err);
    if (!store) {
        fprintf(stderr, "supportd: configuration error: %s\n", err.message);
        rules_destroy(rules);
        config_free(&cfg);
        return EXIT_USAGE;
    }
    struct rds_options opts;
    runner_redis_options(&cfg, &opts);
    struct rds *redis = rds_new(&opts);
    struct live_ctx ctx = {
        .cfg = &cfg, .store = store, .redis = redis, .rules = rules, .now_ms = now_ms,
        .stop = &no_stop};

    bson_oid_t oid;
    bson_oid_init_from_string(&oid, id);
    bson_t filter = BSON_INITIALIZER, r = BSON_INITIALIZER;
    BSON_APPEND_OID(&filter, "_id", &oid);
    mongoc_client_t *client = store_pop(store);
    const char *db = store_db(store);
    int rc = 0, exit_code = EXIT_RUNTIME;
    char now_iso[40];
    clock_format_iso(now_ms, now_iso, sizeof now_iso);
    BSON_APPEND_UTF8(&r, "id", id);
    bson_t *conv = find_one(client, db, COLL_CONVERSATION, &filter, &err, &rc);
    bson_t *msg = rc == 0 && !conv ? find_one(client, db, COLL_MESSAGE, &filter, &err, &rc) : NULL;
    if (rc) {
        fprintf(stderr, "supportd explain: %s\n", err.message);
    } else if (!conv && !msg) {
        fprintf(stderr, "supportd explain: no conversation or message has the id %s\n", id);
    } else {
        BSON_APPEND_UTF8(&r, "kind", conv ? "conversation" : "message");
        BSON_APPEND_UTF8(&r, "now", now_iso);
        BSON_APPEND_UTF8(&r, "rules", rules_version(rules));
        if (conv)
            rc = explain_conversation(&ctx, conv, client, db, &r, &err);
        else
            rc = explain_message(&cfg, redis, msg, &r, &err);
        if (rc) {
            fprintf(stderr, "supportd explain: %s\n", err.message);
        } else {
            if (!strcmp(format, "json"))
                print_json(&r);
            else
                print_text(&r);
            exit_code = EXIT_OK;
        }
    }
    if (conv)
        bson_destroy(conv);
    if (msg)
        bson_destroy(msg);
    bson_destroy(&filter);
    bson_destroy(&r);
    store_push(store, client);
    rds_destroy(redis);
    store_destroy(store);
    rules_destroy(rules);
    config_free(&cfg);
    return exit_code;
}
