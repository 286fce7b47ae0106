/* snooze/decide.c — the pure heart of the snooze job (see model.h). */
#include <stdio.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "jobs/snooze/model.h"
#include "outbox/entry.h"

static const char *const priorities[] = {"low", "normal", "high", "urgent", NULL};

static bool is_one_of(const char *s, const char *const *set)
{
    for (int i = 0; s && set[i]; i++)
        if (strcmp(s, set[i]) == 0)
            return true;
    return false;
}

/* 1: a date (ms in *out); 0: absent or null; -1: present but not a date. */
static int date_at(const bson_t *doc, const char *path, int64_t *out)
{
    bson_iter_t it;
    if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &it) ||
        BSON_ITER_HOLDS_NULL(&it))
        return 0;
    if (!BSON_ITER_HOLDS_DATE_TIME(&it))
        return -1;
    *out = bson_iter_date_time(&it);
    return 1;
}

/* Calls a rule with up to three documents/values as arguments. */
static int call_rule(struct rules *rules, const char *module, const char *fn, const bson_t *a,
                     const bson_t *b, const char *s, int64_t n, bool with_n, bson_t *out,
                     struct sd_error *err)
{
    bson_t args = BSON_INITIALIZER;
    int i = 0;
    char key[4];
    if (s) {
        snprintf(key, sizeof key, "%d", i++);
        BSON_APPEND_UTF8(&args, key, s);
    }
    if (a) {
        snprintf(key, sizeof key, "%d", i++);
        BSON_APPEND_DOCUMENT(&args, key, a);
    }
    if (b) {
        snprintf(key, sizeof key, "%d", i++);
        BSON_APPEND_DOCUMENT(&args, key, b);
    }
    if (with_n) {
        snprintf(key, sizeof key, "%d", i++);
        BSON_APPEND_INT64(&args, key, n);
    }
    int rc = rules_call(rules, module, fn, &args, out, err);
    bson_destroy(&args);
    return rc;
}

static bool wake_on_reply(struct rules *rules)
{
    bson_t out = BSON_INITIALIZER;
    struct sd_error err;
    bool on = true; /* SPEC: on unless the rules switch it off */
    bson_iter_t it;
    if (rules_get(rules, "notify", "snooze", &out, &err) == 0 && bson_iter_init(&it, &out) &&
        bson_iter_find_descendant(&it, "result.wake_on_customer_message", &it) &&
        BSON_ITER_HOLDS_BOOL(&it))
        on = bson_iter_bool(&it);
    bson_destroy(&out);
    return on;
}

static void warn_doc(const struct snooze_input *in, const char *id, const char *fmt,
                     const char *detail)
{
    log_field(LOG_WARN, in->log, "snooze.bad_document", "conversation_id", id, fmt, id, detail);
}

/* Renders and appends one outbox entry per recipient. */
static int add_notifications(const struct snooze_input *in, const bson_t *after,
                             const bson_t *room, const char *id, const char *reason,
                             const char *wake_basis, bson_t *list, struct sd_error *err)
{
    bson_t out = BSON_INITIALIZER;
    if (call_rule(in->rules, "notify", "recipients", after, room, "ticket.unsnoozed", 0, false,
                  &out, err)) {
        bson_destroy(&out);
        return -1;
    }
    bson_iter_t it, rit;
    uint32_t n = 0;
    if (bson_iter_init_find(&it, &out, "result") && BSON_ITER_HOLDS_ARRAY(&it) &&
        bson_iter_recurse(&it, &rit)) {
        while (bson_iter_next(&rit)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&rit))
                continue;
            uint32_t len;
            const uint8_t *data;
            bson_t recipient, ctx = BSON_INITIALIZER, event, rendered = BSON_INITIALIZER;
            bson_iter_document(&rit, &len, &data);
            bson_init_static(&recipient, data, len);
            BSON_APPEND_DOCUMENT(&ctx, "conversation", after);
            BSON_APPEND_DOCUMENT(&ctx, "room", room);
            BSON_APPEND_DOCUMENT(&ctx, "recipient", &recipient);
            BSON_APPEND_DOCUMENT_BEGIN(&ctx, "event", &event);
            BSON_APPEND_UTF8(&event, "reason", reason);
            bson_append_document_end(&ctx, &event);
            BSON_APPEND_INT64(&ctx, "now", in->now_ms);
            int rc = call_rule(in->rules, "templates", "render", &ctx, NULL, "ticket.unsnoozed",
                               0, false, &rendered, err);
            bson_destroy(&ctx);
            if (rc) {
                bson_destroy(&rendered);
                bson_destroy(&out);
                return -1;
            }
            char key[256], idx[12];
            snprintf(key, sizeof key, "ticket.unsnoozed:%s:%s:%s", id, wake_basis,
                     outbox_recipient_id(&recipient));
            snprintf(idx, sizeof idx, "%u", n++);
            const char *via = bson_path_utf8(&recipient, "via");
            bson_oid_t conv_oid;
            bson_t entry;
            BSON_APPEND_DOCUMENT_BEGIN(list, idx, &entry);
            BSON_APPEND_UTF8(&entry, "key", key);
            BSON_APPEND_UTF8(&entry, "type", "ticket.unsnoozed");
            if (bson_path_oid(after, "_id", &conv_oid))
                BSON_APPEND_OID(&entry, "conversation_id", &conv_oid);
            outbox_entry_fill(&entry, &recipient, via ? via : "email",
                              bson_path_utf8(room, "email_from"), &rendered, in->now_ms);
            bson_append_document_end(list, &entry);
            bson_destroy(&rendered);
        }
    }
    bson_destroy(&out);
    return 0;
}

static double queue_score(const struct snooze_input *in, const bson_t *after, struct sd_error *err,
                          int *rc)
{
    bson_t out = BSON_INITIALIZER;
    double score = 0;
    *rc = call_rule(in->rules, "queue", "score", after, NULL, NULL, in->now_ms, true, &out, err);
    bson_iter_t it;
    if (*rc == 0) {
        if (bson_iter_init_find(&it, &out, "result") && BSON_ITER_HOLDS_NUMBER(&it))
            score = bson_iter_as_double(&it);
        else
            *rc = sd_error_set(err, "queue.lua: score did not return a number");
    }
    bson_destroy(&out);
    return score;
}

/* Decides one ticket. Returns 1 (wake: action appended), 0 (leave), -1 (error). */
static int decide_one(const struct snooze_input *in, const bson_t *conv, bool reply_wakes,
                      bson_t *actions, uint32_t *n_actions, int *bad, struct sd_error *err)
{
    char id[25] = "?";
    bson_oid_t oid;
    if (bson_path_oid(conv, "_id", &oid))
        bson_oid_to_string(&oid, id);

    int64_t until = 0, snoozed_at = 0, last_customer = 0;
    const char *reason = NULL;
    char basis[64];
    bson_iter_t it;
    bool has_snooze = bson_iter_init(&it, conv) && bson_iter_find(&it, "snooze") &&
                      BSON_ITER_HOLDS_DOCUMENT(&it);
    int until_kind = has_snooze ? date_at(conv, "snooze.until", &until) : 0;
    int at_kind = has_snooze ? date_at(conv, "snooze.at", &snoozed_at) : 0;
    if (!has_snooze || until_kind != 1) {
        reason = !has_snooze ? "snooze missing" : "snooze.until missing or not a date";
        warn_doc(in, id, "conversation %s: %s; woken now so it is not lost", reason);
        (*bad)++;
        snprintf(basis, sizeof basis, "malformed");
    } else if (until <= in->now_ms) {
        reason = "snooze ended";
    } else if (reply_wakes && at_kind == 1 &&
               date_at(conv, "last_customer_message_at", &last_customer) == 1 &&
               last_customer > snoozed_at) {
        reason = "customer replied";
    } else {
        return 0;
    }
    if (reason && until_kind == 1)
        snprintf(basis, sizeof basis, "%lld", (long long)(at_kind == 1 ? snoozed_at : until));

    const char *status = bson_path_utf8(conv, "status");
    const char *priority = bson_path_utf8(conv, "priority");
    const char *orig_status = has_snooze ? bson_path_utf8(conv, "snooze.original_status") : NULL;
    const char *orig_priority =
        has_snooze ? bson_path_utf8(conv, "snooze.original_priority") : NULL;
    static const char *const statuses[] = {"open", "pending", NULL};
    const char *new_status = is_one_of(orig_status, statuses) ? orig_status : "open";
    if (orig_status && !is_one_of(orig_status, statuses)) {
        warn_doc(in, id, "conversation %s: snooze.original_status \"%s\" is not open or pending; "
                         "reopened as open", orig_status);
        (*bad)++;
    }
    const char *new_priority = priority ? priority : "normal";
    if (is_one_of(orig_priority, priorities)) {
        new_priority = orig_priority;
    } else if (has_snooze && bson_iter_init(&it, conv) &&
               bson_iter_find_descendant(&it, "snooze.original_priority", &it) &&
               !BSON_ITER_HOLDS_NULL(&it)) {
        warn_doc(in, id, "conversation %s: snooze.original_priority %s is not a priority; "
                         "the current one stays",
                 orig_priority ? orig_priority : "(not a string)");
        (*bad)++;
    }

    bson_t after = BSON_INITIALIZER;
    bson_copy_to_excluding_noinit(conv, &after, "status", "priority", "snooze", NULL);
    BSON_APPEND_UTF8(&after, "status", new_status);
    BSON_APPEND_UTF8(&after, "priority", new_priority);
    BSON_APPEND_DATE_TIME(&after, "unsnoozed_at", in->now_ms);

    int rc = 0;
    double score = queue_score(in, &after, err, &rc);
    bson_oid_t room_oid;
    char room_hex[25] = "";
    bool has_room = bson_path_oid(conv, "room_id", &room_oid);
    if (has_room)
        bson_oid_to_string(&room_oid, room_hex);
    bson_t room;
    bool room_found = false;
    if (has_room && bson_iter_init_find(&it, in->rooms, room_hex) && BSON_ITER_HOLDS_DOCUMENT(&it)) {
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&it, &len, &data);
        room_found = bson_init_static(&room, data, len);
    }
    if (rc == 0 && !room_found) {
        warn_doc(in, id, "conversation %s: room %s not found; woken and queued without a "
                         "notification",
                 has_room ? room_hex : "(no room_id)");
        (*bad)++;
    }

    char idx[12];
    snprintf(idx, sizeof idx, "%u", *n_actions);
    bson_t action, sub, list;
    BSON_APPEND_DOCUMENT_BEGIN(actions, idx, &action);
    BSON_APPEND_UTF8(&action, "kind", "unsnooze");
    BSON_APPEND_UTF8(&action, "target", id);
    BSON_APPEND_OID(&action, "conversation_id", &oid);
    BSON_APPEND_UTF8(&action, "reason", reason);
    int64_t read_updated;
    if (date_at(conv, "updated_at", &read_updated) == 1)
        BSON_APPEND_DATE_TIME(&action, "read_updated_at", read_updated);
    BSON_APPEND_DOCUMENT_BEGIN(&action, "before", &sub);
    BSON_APPEND_UTF8(&sub, "status", status ? status : "snoozed");
    if (priority)
        BSON_APPEND_UTF8(&sub, "priority", priority);
    bson_append_document_end(&action, &sub);
    BSON_APPEND_DOCUMENT_BEGIN(&action, "after", &sub);
    BSON_APPEND_UTF8(&sub, "status", new_status);
    BSON_APPEND_UTF8(&sub, "priority", new_priority);
    bson_append_document_end(&action, &sub);
    if (has_room) {
        char key[300];
        snprintf(key, sizeof key, "%squeue:%s", in->redis_prefix, room_hex);
        BSON_APPEND_OID(&action, "room_id", &room_oid);
        BSON_APPEND_DOCUMENT_BEGIN(&action, "queue", &sub);
        BSON_APPEND_UTF8(&sub, "key", key);
        BSON_APPEND_UTF8(&sub, "member", id);
        BSON_APPEND_DOUBLE(&sub, "score", score);
        bson_append_document_end(&action, &sub);
    }
    BSON_APPEND_ARRAY_BEGIN(&action, "notifications", &list);
    if (rc == 0 && room_found)
        rc = add_notifications(in, &after, &room, id, reason, basis, &list, err);
    bson_append_array_end(&action, &list);
    bson_append_document_end(actions, &action);
    bson_destroy(&after);
    if (rc) {
        sd_error_prefix(err, "conversation %s", id);
        return -1;
    }
    (*n_actions)++;
    return 1;
}

int snooze_decide(const struct snooze_input *in, bson_t *actions, uint32_t *n_actions,
                  bson_t *skipped, uint32_t *n_skipped, bool verbose_skips)
{
    bool reply_wakes = wake_on_reply(in->rules);
    int bad = 0;
    for (size_t i = 0; i < in->n_conversations; i++) {
        struct sd_error err;
        /* An action that fails half-way is built in a scratch array so that
         * nothing of it reaches the plan. */
        bson_t scratch = BSON_INITIALIZER;
        uint32_t n = 0;
        int rc = decide_one(in, in->conversations[i], reply_wakes, &scratch, &n, &bad, &err);
        bson_iter_t it;
        if (rc == 1 && bson_iter_init(&it, &scratch) && bson_iter_next(&it)) {
            char idx[12];
            snprintf(idx, sizeof idx, "%u", (*n_actions)++);
            bson_append_iter(actions, idx, -1, &it);
        } else if (rc < 0 || (rc == 0 && verbose_skips)) {
            char id[25] = "?", idx[12];
            bson_oid_t oid;
            if (bson_path_oid(in->conversations[i], "_id", &oid))
                bson_oid_to_string(&oid, id);
            if (rc < 0) {
                bson_t f = BSON_INITIALIZER;
                BSON_APPEND_UTF8(&f, "conversation_id", id);
                log_msg(LOG_ERROR, in->log, "snooze.decide_failed", &f, "%s; left snoozed",
                        err.message);
                bson_destroy(&f);
                bad++;
            }
            snprintf(idx, sizeof idx, "%u", (*n_skipped)++);
            bson_t s;
            BSON_APPEND_DOCUMENT_BEGIN(skipped, idx, &s);
            BSON_APPEND_UTF8(&s, "target", id);
            BSON_APPEND_UTF8(&s, "reason", rc < 0 ? err.message : "not due");
            if (rc < 0)
                BSON_APPEND_BOOL(&s, "failed", true);
            bson_append_document_end(skipped, &s);
        }
        bson_destroy(&scratch);
    }
    return bad;
}
