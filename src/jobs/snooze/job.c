/* snooze/job.c — collect and apply around snooze_decide (see model.h).
 *
 * Crash safety rests on a completion marker written in the same update that
 * wakes the ticket (outbox/intent.h): `supportd_unsnooze_pending: true` and
 * `supportd_unsnooze: {at, reason, queue: {key, member, score},
 * notifications: [outbox entries]}`. After the update, the tick adds the
 * marked tickets to their queues (ZADD: idempotent) and inserts their outbox
 * entries (unique keys: a repeat is a no-op), then removes the marker. A
 * process killed at any instant leaves either an unchanged snoozed ticket
 * (found again as due) or a marked one (finished by the next tick, by the
 * index on supportd_unsnooze_pending), so no woken ticket misses its queue
 * and no notification is sent twice.
 *
 * Race safety: the wake-up is conditional on what was read ({_id, status:
 * "snoozed", updated_at: <as read>}); the platform bumps updated_at on every
 * change, so a ticket an agent re-snoozed, closed or reassigned meanwhile is
 * left alone (counted as a conflict) and reconsidered next tick. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/seam.h"
#include "jobs/job.h"
#include "jobs/snooze/model.h"
#include "outbox/intent.h"
#include "store/batches.h"
#include "store/mongo.h"

#define BATCH 500
#define MAX_BATCHES 1000        /* a tick's bound: ~500k tickets */
#define CHANGED_SKEW_MS 60000   /* clock skew between platform writers and us */

struct tick {
    struct job_env *env;
    mongoc_collection_t *convs;
    int64_t wall_ms;
    int64_t max_updated;        /* greatest updated_at read by the sweep (-1: none) */
    /* read = due + replied + malformed + not_due + failed;
     * due + replied + malformed = woken + conflicts (README: counters). */
    int64_t read, due, replied, malformed, not_due, failed;
    int64_t woken, conflicts, queued, bad, batches;
    struct intent_counts outbox;
};

static const struct intent_marker unsnooze_marker = {.flag = "supportd_unsnooze_pending",
                                                     .field = "supportd_unsnooze",
                                                     .entries = "supportd_unsnooze.notifications"};

static void counts_to(struct tick *t)
{
    bson_t *c = t->env->counts;
    BSON_APPEND_INT64(c, "read", t->read);
    BSON_APPEND_INT64(c, "due", t->due);
    BSON_APPEND_INT64(c, "replied", t->replied);
    BSON_APPEND_INT64(c, "malformed", t->malformed);
    BSON_APPEND_INT64(c, "not_due", t->not_due);
    BSON_APPEND_INT64(c, "failed", t->failed);
    BSON_APPEND_INT64(c, "woken", t->woken);
    BSON_APPEND_INT64(c, "conflicts", t->conflicts);
    BSON_APPEND_INT64(c, "queued", t->queued);
    BSON_APPEND_INT64(c, "notifications", t->outbox.enqueued);
    BSON_APPEND_INT64(c, "duplicate_notifications", t->outbox.duplicates);
    BSON_APPEND_INT64(c, "bad_documents", t->bad);
    BSON_APPEND_INT64(c, "batches", t->batches);
}

/* { "<room id hex>": room } for the rooms of these tickets, one query. */
static int load_rooms(struct tick *t, bson_t **docs, size_t n, bson_t *rooms,
                      struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, in, ids;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &ids);
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, docs[i], "room_id") && BSON_ITER_HOLDS_OID(&it)) {
            char idx[12];
            snprintf(idx, sizeof idx, "%u", k++);
            BSON_APPEND_OID(&ids, idx, bson_iter_oid(&it));
        }
    }
    bson_append_array_end(&in, &ids);
    bson_append_document_end(&filter, &in);
    bson_t **found = NULL;
    size_t n_found = 0;
    mongoc_collection_t *coll = mongoc_client_get_collection(t->env->mongo, t->env->db, COLL_ROOM);
    int rc = k ? store_find_all(coll, &filter, NULL, &found, &n_found, err) : 0;
    mongoc_collection_destroy(coll);
    bson_destroy(&filter);
    for (size_t i = 0; i < n_found; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, found[i], "_id") && BSON_ITER_HOLDS_OID(&it)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&it), hex);
            BSON_APPEND_DOCUMENT(rooms, hex, found[i]);
        }
    }
    store_docs_free(found, n_found);
    return rc;
}

/* The conditional wake-up of every planned ticket, one unordered bulk write. */
static int write_wakeups(struct tick *t, const bson_t *actions, struct sd_error *err)
{
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&opts, "ordered", false);
    mongoc_bulk_operation_t *bulk =
        mongoc_collection_create_bulk_operation_with_opts(t->convs, &opts);
    bson_destroy(&opts);
    bson_iter_t it;
    int planned = 0;
    bson_iter_init(&it, actions);
    while (bson_iter_next(&it)) {
        bson_t action, filter = BSON_INITIALIZER, update = BSON_INITIALIZER, set, unset;
        bson_t marker = BSON_INITIALIZER;
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&it, &len, &data);
        bson_init_static(&action, data, len);
        bson_iter_t f;
        bson_iter_init_find(&f, &action, "conversation_id");
        BSON_APPEND_OID(&filter, "_id", bson_iter_oid(&f));
        BSON_APPEND_UTF8(&filter, "status", "snoozed");
        if (bson_iter_init_find(&f, &action, "read_updated_at")) {
            BSON_APPEND_DATE_TIME(&filter, "updated_at", bson_iter_date_time(&f));
        } else {
            bson_t exists;
            BSON_APPEND_DOCUMENT_BEGIN(&filter, "updated_at", &exists);
            BSON_APPEND_BOOL(&exists, "$exists", false);
            bson_append_document_end(&filter, &exists);
        }
        BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
        bson_iter_t a;
        bson_iter_init_find(&a, &action, "after");
        bson_iter_t sub;
        bson_iter_recurse(&a, &sub);
        while (bson_iter_next(&sub))
            bson_append_iter(&set, NULL, 0, &sub);
        BSON_APPEND_DATE_TIME(&set, "unsnoozed_at", t->wall_ms);
        BSON_APPEND_DATE_TIME(&set, "updated_at", t->wall_ms);
        BSON_APPEND_DATE_TIME(&marker, "at", t->wall_ms);
        const char *copy[] = {"reason", "queue", "notifications"};
        for (int i = 0; i < 3; i++)
            if (bson_iter_init_find(&a, &action, copy[i]))
                bson_append_iter(&marker, NULL, 0, &a);
        intent_park(&set, &unsnooze_marker, &marker);
        bson_destroy(&marker);
        bson_append_document_end(&update, &set);
        BSON_APPEND_DOCUMENT_BEGIN(&update, "$unset", &unset);
        BSON_APPEND_UTF8(&unset, "snooze", "");
        bson_append_document_end(&update, &unset);
        int brc = store_bulk_update_doc(bulk, &filter, &update, false, err);
        bson_destroy(&filter);
        bson_destroy(&update);
        if (brc) {
            mongoc_bulk_operation_destroy(bulk);
            return sd_error_prefix(err, "building the wake-up write");
        }
        planned++;
    }
    if (planned == 0) {
        mongoc_bulk_operation_destroy(bulk);
        return 0;
    }
    seam_wait("snooze_before_write");
    bson_error_t berr;
    int64_t matched;
    bool ok = store_bulk_run(bulk, &matched, &berr);
    mongoc_bulk_operation_destroy(bulk);
    if (!ok)
        return sd_error_set(err, "waking %d tickets: %s", planned, store_errmsg(&berr));
    t->woken += matched;
    t->conflicts += planned - matched;
    return 0;
}

/* A batch of marked tickets into their queues, one pipeline: before their
 * outbox entries (intent_finish). */
static int queue_marked(void *arg, bson_t **docs, size_t n, struct sd_error *err)
{
    struct tick *t = arg;
    seam_wait("snooze_before_finish");
    struct sd_error rerr;
    int rc = 0, appended = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        bson_iter_t it, q;
        const char *key = NULL, *member = NULL;
        double score = 0;
        if (bson_iter_init(&it, docs[i]) &&
            bson_iter_find_descendant(&it, "supportd_unsnooze.queue", &q) &&
            BSON_ITER_HOLDS_DOCUMENT(&q)) {
            bson_iter_t f;
            bson_iter_recurse(&q, &f);
            while (bson_iter_next(&f)) {
                if (!strcmp(bson_iter_key(&f), "key") && BSON_ITER_HOLDS_UTF8(&f))
                    key = bson_iter_utf8(&f, NULL);
                else if (!strcmp(bson_iter_key(&f), "member") && BSON_ITER_HOLDS_UTF8(&f))
                    member = bson_iter_utf8(&f, NULL);
                else if (!strcmp(bson_iter_key(&f), "score") && BSON_ITER_HOLDS_NUMBER(&f))
                    score = bson_iter_as_double(&f);
            }
        }
        if (key && member) {
            if (rds_pipeline_append(t->env->redis, &rerr, "ZADD %s %.17g %s", key, score,
                                    member))
                rc = sd_error_set(err, "queue: %s", rerr.message);
            else
                appended++;
        }
    }
    for (int i = 0; i < appended; i++) {
        redisReply *rep = rds_pipeline_read(t->env->redis, &rerr);
        if (!rep) {
            rc = sd_error_set(err, "queue: %s", rerr.message);
            break;
        }
        freeReplyObject(rep);
    }
    if (rc == 0)
        t->queued += appended;
    return rc;
}

static bool stop_requested(void *arg) { return job_should_stop(((struct tick *)arg)->env); }

/* Queues and notifies every marked ticket, then removes the markers. */
static int finish_marked(struct tick *t, struct sd_error *err)
{
    struct intent_finish f = {.mongo = t->env->mongo,
                              .db = t->env->db,
                              .coll = t->convs,
                              .marker = &unsnooze_marker,
                              .what = "unsnooze markers",
                              .batch = BATCH,
                              .max_batches = MAX_BATCHES,
                              .now_ms = t->wall_ms,
                              .before = queue_marked,
                              .stop = stop_requested,
                              .arg = t};
    return intent_finish(&f, &t->outbox, err);
}

/* Sorts one batch's decisions into the tick's counters. Without verbose
 * skips, decide lists only the tickets it failed on. */
static void count_reasons(struct tick *t, const bson_t *actions, size_t n_read, uint32_t n_failed)
{
    int64_t planned = 0;
    bson_iter_t it, r;
    if (bson_iter_init(&it, actions)) {
        while (bson_iter_next(&it)) {
            planned++;
            const char *reason = "";
            if (bson_iter_recurse(&it, &r) && bson_iter_find(&r, "reason") &&
                BSON_ITER_HOLDS_UTF8(&r))
                reason = bson_iter_utf8(&r, NULL);
            if (!strcmp(reason, "snooze ended"))
                t->due++;
            else if (!strcmp(reason, "customer replied"))
                t->replied++;
            else
                t->malformed++;
        }
    }
    t->read += (int64_t)n_read;
    t->failed += n_failed;
    t->not_due += (int64_t)n_read - planned - n_failed;
}

/* decide + conditional write for one batch of read tickets. */
static int process(struct tick *t, bson_t **docs, size_t n, struct sd_error *err)
{
    bson_t rooms = BSON_INITIALIZER, actions = BSON_INITIALIZER, skipped = BSON_INITIALIZER;
    int rc = load_rooms(t, docs, n, &rooms, err);
    if (rc == 0) {
        uint32_t n_actions = 0, n_skipped = 0;
        struct snooze_input in = {.conversations = (const bson_t *const *)docs,
                                  .n_conversations = n,
                                  .rooms = &rooms,
                                  .now_ms = t->env->now_ms,
                                  .redis_prefix = t->env->cfg->redis_prefix,
                                  .rules = t->env->rules,
                                  .log = t->env->log};
        struct job_plan *plan = t->env->plan;
        t->bad += snooze_decide(&in, &actions, &n_actions, &skipped, &n_skipped, plan != NULL);
        count_reasons(t, &actions, n, plan ? 0 : n_skipped);
        if (plan)
            job_plan_append(plan, &actions, &skipped);
        else
            rc = write_wakeups(t, &actions, err);
    }
    bson_destroy(&rooms);
    bson_destroy(&actions);
    bson_destroy(&skipped);
    t->batches++;
    return rc;
}

/* a batch: decided and written, then its markers finished */
static int process_batch(void *arg, bson_t **docs, size_t n, struct sd_error *err)
{
    struct tick *t = arg;
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, docs[i], "updated_at") && BSON_ITER_HOLDS_DATE_TIME(&it) &&
            bson_iter_date_time(&it) > t->max_updated)
            t->max_updated = bson_iter_date_time(&it);
    }
    if (t->env->plan)
        t->env->plan->read += (int64_t)n;
    int rc = process(t, docs, n, err);
    return rc || t->env->plan ? rc : finish_marked(t, err);
}

/* The tickets to look at, in one query: snoozed and due (`snooze.until <=
 * now`), or snoozed and changed since the checkpoint (a customer reply can
 * wake them early; a malformed snooze that no date query finds is caught
 * here) — every snoozed ticket when there is no checkpoint (first tick, rules
 * changed). Read through one cursor in batches of BATCH, each decided,
 * written and finished before the next is read.
 *
 * One query, not one per kind or per batch: FerretDB pushes only the
 * top-level equality (status) down to PostgreSQL and evaluates ranges and
 * $or in Go after decoding every snoozed ticket, so each query costs a decode
 * of all of them (0.5 s at 4,000 snoozed, scripts/bench); MongoDB (4.4+)
 * serves the $or's branches from {status, snooze.until} and {status,
 * updated_at} and returns each ticket once. *complete: the cursor was read to
 * its end (not stopped by MAX_BATCHES or a stop request). */
static int sweep(struct tick *t, int64_t since, bool *complete, struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, "status", "snoozed");
    if (t->env->plan && t->env->plan->only)
        BSON_APPEND_OID(&filter, "_id", t->env->plan->only);
    else if (since >= 0)
        store_append_either(&filter, "snooze.until", "$lte", t->env->now_ms, "updated_at",
                            "$gte", since);
    struct store_batches b = {.size = BATCH,
                              .max_batches = MAX_BATCHES,
                              .each = process_batch,
                              .stop = stop_requested,
                              .arg = t};
    int rc = store_sweep(t->convs, &filter, &b, complete, err);
    bson_destroy(&filter);
    return rc;
}

/* "<ms> <rules version>": the sweep's "changed since" starts from there. A different
 * rules version means a full sweep, so that switching wake-on-reply back on
 * also wakes tickets whose reply came while it was off. */
static int64_t read_checkpoint(struct tick *t, char *key, size_t size)
{
    snprintf(key, size, "%ssnooze:changed_since", t->env->cfg->redis_prefix);
    struct sd_error err;
    redisReply *rep = rds_command(t->env->redis, &err, "GET %s", key);
    int64_t v = -1;
    char *end;
    if (rep && rep->type == REDIS_REPLY_STRING) {
        v = strtoll(rep->str, &end, 10);
        if (*end != ' ' || strcmp(end + 1, rules_version(t->env->rules)) != 0)
            v = -1;
    }
    if (rep)
        freeReplyObject(rep);
    return v;
}

int job_snooze(struct job_env *env, struct sd_error *err)
{
    struct tick t = {.env = env, .wall_ms = clock_now_ms(), .max_updated = -1};
    t.convs = mongoc_client_get_collection(env->mongo, env->db, COLL_CONVERSATION);
    char key[300];
    int64_t checkpoint = read_checkpoint(&t, key, sizeof key);
    /* Markers left by a tick that died first, then the sweep. A plan only
     * reads: the markers' effects were decided by an earlier tick. */
    int rc = env->plan ? 0 : finish_marked(&t, err);
    bool complete = false;
    if (rc == 0)
        rc = sweep(&t, checkpoint < 0 ? -1 : checkpoint - CHANGED_SKEW_MS, &complete, err);
    /* The checkpoint moves only past a sweep read to its end: the changed
     * tickets it did not reach are looked at again next tick. It moves to
     * the greatest updated_at read (SPEC §3: from what was read, not from the
     * local clock alone — a clock running fast would otherwise skip the
     * replies written meanwhile until their snooze ends), never past our
     * clock, never back. Nothing read, nothing learned: it stays. */
    int64_t next = t.max_updated < t.wall_ms ? t.max_updated : t.wall_ms;
    if (rc == 0 && !env->plan && complete && !job_should_stop(env) && next >= 0 &&
        next > checkpoint) {
        char value[64];
        snprintf(value, sizeof value, "%lld %s", (long long)next, rules_version(env->rules));
        redisReply *rep = rds_command(env->redis, err, "SET %s %s", key, value);
        if (!rep)
            rc = -1;
        else
            freeReplyObject(rep);
    }
    counts_to(&t);
    /* SPEC §2: the job that enqueues delivers in the same tick. */
    if (rc == 0 && !env->plan && !job_should_stop(env))
        rc = job_deliver_outbox(env, err);
    mongoc_collection_destroy(t.convs);
    return rc;
}
