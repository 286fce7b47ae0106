/* message_status — collect and apply around msgstatus_decide (see
 * model.h).
 *
 * Once-only effects rest on event ids, not on the stream: an entry is
 * acknowledged only after its updates are written, so a crash between the
 * two replays it, and its events are then found in status_history and skipped.
 *
 * One writer per message: FerretDB 1.x applies an update by reading the
 * document, changing it in Go and writing it back without a compare-and-swap
 * (reference/ferretdb.md), so two writers to one message could lose a history
 * entry. Every write this job makes happens under its lease, checked right
 * before the write against this process's monotonic clock (lease_valid_for):
 * an instance that was paused past its lease abandons the batch instead of
 * writing, and the entries stay pending for the instance that took over.
 * Writes are also conditional on the updated_at read, so a platform change in
 * between is not overwritten; such entries stay pending and are retried. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "jobs/message_status/tick.h"
#include "jobs/runner.h"
#include "jobs/seam.h"
#include "store/find_in.h"
#include "store/mongo.h"
#include "store/stream.h"

#define GROUP "supportd"
#define BATCH 5000
#define MAX_BATCHES 200          /* a tick's bound: 1,000,000 entries */
#define WRITE_CHUNK 500          /* statements per bulk write */
#define SIDE_MAXLEN 100000       /* status-events:rejected / :unmatched keep about this many */
/* An entry naming a message for which a rule (retry.lua) fails stays pending
 * and is tried again each time it is claimed back; at its 5th failed try it is
 * parked in status-events:rejected with the error. The tries are counted in
 * Redis per entry, not taken from the stream's delivery count: an entry
 * waiting for its message (MSGSTATUS_UNKNOWN_GRACE_MS) is delivered again
 * every lease TTL and would be parked at its first rule failure. */
#define MAX_RULE_TRIES 5
#define RULE_TRIES_TTL_MS (24LL * 3600 * 1000)

static void counts_to(struct ms_tick *t)
{
    bson_t *c = t->env->counts;
    const struct ms_counts *k = &t->c;
    const struct {
        const char *name;
        int64_t v;
    } list[] = {
        {"entries", k->entries},
        {"reclaimed", k->claimed},
        {"acknowledged", k->acknowledged},
        {"deferred", k->deferred},
        {"events", k->events},
        {"applied", k->applied},
        {"duplicates", k->duplicates},
        {"ignored", k->ignored},
        {"history_only", k->history_only},
        {"unknown", k->unknown},
        {"rejected", k->rejected},
        {"rule_failed", k->rule_failed},
        {"unmatched", k->unmatched},
        {"waiting", k->waiting},
        {"conflicts", k->conflicts},
        {"messages_updated", k->messages_updated},
        {"retries_due", k->retries_due},
        {"resent", k->resent},
        {"resend_recovered", k->resend_recovered},
        {"resend_uncertain", k->resend_uncertain},
        {"resend_failed", k->resend_failed},
        {"retry_exhausted", k->retry_exhausted},
        {"polled", k->polled},
        {"poll_failed", k->poll_failed},
        {"trimmed", k->trimmed},
        {"batches", k->batches},
    };
    for (size_t i = 0; i < sizeof list / sizeof *list; i++)
        BSON_APPEND_INT64(c, list[i].name, list[i].v);
}

bool ms_fence(struct ms_tick *t, struct sd_error *err)
{
    struct lease *l = t->env->lease;
    if (!l)
        return true;
    int64_t margin = l->ttl_ms / 4 < 5000 ? l->ttl_ms / 4 : 5000;
    if (lease_valid_for(l, margin))
        return true;
    sd_error_set(err, "the job's lease can no longer be counted on (expired, taken, or this "
                      "process was paused); batch abandoned before writing, its entries stay "
                      "pending");
    return false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The messages named by the parsed entries' events, keyed
 * "<provider>:<provider_message_id>", by the indexed provider_message_id.
 * One {$in} for the batch on MongoDB, one find per distinct id on FerretDB
 * (store/find_in.h). */
static int load_messages(struct ms_tick *t, const bson_t *const *parsed, size_t n,
                         bson_t *messages, struct sd_error *err)
{
    size_t cap = 64, k = 0;
    const char **ids = malloc(cap * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it, evs, f;
        if (!bson_iter_init_find(&it, parsed[i], "events") || !bson_iter_recurse(&it, &evs))
            continue;
        while (bson_iter_next(&evs))
            if (bson_iter_recurse(&evs, &f) && bson_iter_find(&f, "provider_message_id") &&
                BSON_ITER_HOLDS_UTF8(&f)) {
                if (k == cap)
                    ids = realloc(ids, (cap *= 2) * sizeof *ids);
                ids[k++] = bson_iter_utf8(&f, NULL);
            }
    }
    qsort(ids, k, sizeof *ids, cmp_str);
    size_t distinct = 0;
    for (size_t i = 0; i < k; i++)
        if (i == 0 || strcmp(ids[i], ids[distinct - 1]))
            ids[distinct++] = ids[i];
    bson_value_t *values = calloc(distinct + 1, sizeof *values);
    for (size_t i = 0; i < distinct; i++) {
        values[i].value_type = BSON_TYPE_UTF8;
        values[i].value.v_utf8.str = (char *)ids[i];
        values[i].value.v_utf8.len = (uint32_t)strlen(ids[i]);
    }
    struct store_find_in q = {.store = t->env->store,
                              .client = t->env->mongo,
                              .db = t->env->db,
                              .coll = COLL_MESSAGE,
                              .field = "provider_message_id"};
    bson_t **docs = NULL;
    size_t nd = 0;
    int rc = store_find_in(&q, values, distinct, &docs, &nd, err);
    free(values);
    for (size_t i = 0; i < nd; i++) {
        const char *provider = bson_field_utf8(docs[i], "provider"), *pmid = bson_field_utf8(docs[i], "provider_message_id");
        if (!provider || !pmid)
            continue;
        char key[240];
        snprintf(key, sizeof key, "%s:%s", provider, pmid);
        /* two messages with one provider id: decide uses one of them */
        BSON_APPEND_DOCUMENT(messages, key, docs[i]);
    }
    store_docs_free(docs, nd);
    free(ids);
    return rc;
}

static bool event_landed(const bson_t *doc, const char *event_id)
{
    bson_iter_t it, h, e;
    if (!bson_iter_init_find(&it, doc, "status_history") || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &h))
        return false;
    while (bson_iter_next(&h))
        if (BSON_ITER_HOLDS_DOCUMENT(&h) && bson_iter_recurse(&h, &e) &&
            bson_iter_find(&e, "event_id") && BSON_ITER_HOLDS_UTF8(&e) &&
            !strcmp(bson_iter_utf8(&e, NULL), event_id))
            return true;
    return false;
}

/* After a bulk matched fewer messages than it addressed: which updates did
 * not land? Re-read those messages and look for their first event id. */
static int find_not_landed(struct ms_tick *t, bson_t *const *updates, size_t n,
                           bson_t *not_landed, struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, in, ids;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &ids);
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it;
        char idx[12];
        snprintf(idx, sizeof idx, "%zu", i);
        if (bson_iter_init_find(&it, updates[i], "message_id"))
            bson_append_iter(&ids, idx, -1, &it);
    }
    bson_append_array_end(&in, &ids);
    bson_append_document_end(&filter, &in);
    bson_t **docs = NULL;
    size_t nd = 0;
    int rc = store_find_all(t->msgs, &filter, NULL, &docs, &nd, err);
    bson_destroy(&filter);
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *target = bson_field_utf8(updates[i], "target");
        bson_iter_t it, first;
        const char *event_id = NULL;
        if (bson_iter_init_find(&it, updates[i], "event_ids") && bson_iter_recurse(&it, &first) &&
            bson_iter_next(&first))
            event_id = bson_iter_utf8(&first, NULL);
        bool landed = false;
        for (size_t d = 0; d < nd && event_id && target; d++) {
            bson_iter_t id;
            char hex[25] = "";
            if (bson_iter_init_find(&id, docs[d], "_id") && BSON_ITER_HOLDS_OID(&id))
                bson_oid_to_string(bson_iter_oid(&id), hex);
            if (!strcmp(hex, target))
                landed = event_landed(docs[d], event_id);
        }
        if (!landed && target) {
            BSON_APPEND_BOOL(not_landed, target, true);
            t->c.conflicts++;
        }
    }
    store_docs_free(docs, nd);
    return rc;
}

/* The plan's updates as unordered bulks of conditional writes. */
static int write_updates(struct ms_tick *t, const bson_t *plan, bson_t *not_landed,
                         struct sd_error *err)
{
    bson_iter_t it, list;
    if (!bson_iter_init_find(&it, plan, "updates") || !bson_iter_recurse(&it, &list))
        return 0;
    bson_t *chunk[WRITE_CHUNK];
    bson_t views[WRITE_CHUNK];
    bool more = bson_iter_next(&list);
    while (more) {
        size_t n = 0;
        bson_t opts = BSON_INITIALIZER;
        BSON_APPEND_BOOL(&opts, "ordered", false);
        mongoc_bulk_operation_t *bulk =
            mongoc_collection_create_bulk_operation_with_opts(t->msgs, &opts);
        bson_destroy(&opts);
        for (; more && n < WRITE_CHUNK; more = bson_iter_next(&list)) {
            uint32_t len;
            const uint8_t *data;
            bson_iter_document(&list, &len, &data);
            bson_init_static(&views[n], data, len);
            const bson_t *u = &views[n];
            chunk[n] = &views[n];
            n++;
            bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, sub, each;
            bson_iter_t f;
            bson_iter_init_find(&f, u, "message_id");
            bson_append_iter(&filter, "_id", -1, &f);
            if (bson_iter_init_find(&f, u, "read_updated_at")) {
                bson_append_iter(&filter, "updated_at", -1, &f);
            } else {
                BSON_APPEND_DOCUMENT_BEGIN(&filter, "updated_at", &sub);
                BSON_APPEND_BOOL(&sub, "$exists", false);
                bson_append_document_end(&filter, &sub);
            }
            bson_iter_init_find(&f, u, "set");
            bson_append_iter(&update, "$set", -1, &f);
            bson_iter_t r;
            if (!(bson_iter_init_find(&r, u, "replace_history") && bson_iter_as_bool(&r))) {
                BSON_APPEND_DOCUMENT_BEGIN(&update, "$push", &sub);
                BSON_APPEND_DOCUMENT_BEGIN(&sub, "status_history", &each);
                bson_iter_init_find(&f, u, "push");
                bson_append_iter(&each, "$each", -1, &f);
                bson_append_document_end(&sub, &each);
                bson_append_document_end(&update, &sub);
            }
            int brc = store_bulk_update_doc(bulk, &filter, &update, false, err);
            bson_destroy(&filter);
            bson_destroy(&update);
            if (brc) {
                mongoc_bulk_operation_destroy(bulk);
                return sd_error_prefix(err, "building the message updates");
            }
        }
        seam_wait("message_status_before_write");
        if (!ms_fence(t, err)) {
            mongoc_bulk_operation_destroy(bulk);
            return -1;
        }
        bson_t reply;
        bson_error_t berr;
        bool ok = mongoc_bulk_operation_execute(bulk, &reply, &berr);
        int64_t matched = 0;
        bson_iter_t r;
        if (bson_iter_init_find(&r, &reply, "nMatched"))
            matched = bson_iter_as_int64(&r);
        bson_destroy(&reply);
        mongoc_bulk_operation_destroy(bulk);
        if (!ok)
            return sd_error_set(err, "updating %zu messages: %s", n, store_errmsg(&berr));
        t->c.messages_updated += matched;
        if (matched < (int64_t)n && find_not_landed(t, chunk, n, not_landed, err))
            return -1;
    }
    return 0;
}

int ms_decide_and_write(struct ms_tick *t, const bson_t *const *parsed, size_t n, bson_t *plan,
                        bson_t *not_landed, struct sd_error *err)
{
    bson_t messages = BSON_INITIALIZER;
    int rc = load_messages(t, parsed, n, &messages, err);
    if (rc == 0) {
        struct msgstatus_input in = {.parsed = parsed,
                                     .n_parsed = n,
                                     .messages = &messages,
                                     .now_ms = t->env->now_ms,
                                     .write_ms = t->wall_ms,
                                     .rules = t->env->rules,
                                     .log = t->env->log};
        rc = msgstatus_decide(&in, plan, err);
    }
    if (rc == 0)
        rc = write_updates(t, plan, not_landed, err);
    bson_destroy(&messages);
    return rc;
}

static void log_entry(struct ms_tick *t, enum log_level level, const char *event,
                      const bson_t *e, const char *what)
{
    const char *id = bson_field_utf8(e, "id"), *provider = bson_field_utf8(e, "provider"), *reason = bson_field_utf8(e, "reason");
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "entry", id ? id : "");
    BSON_APPEND_UTF8(&f, "provider", provider ? provider : "");
    if (reason)
        BSON_APPEND_UTF8(&f, "reason", reason);
    log_msg(level, t->env->log, event, &f, "status-events entry %s (%s) %s: %s", id ? id : "",
            provider && *provider ? provider : "no provider", what, reason ? reason : "");
    bson_destroy(&f);
}

/* Counts a plan entry's events and says whether any touches a message whose
 * update did not land. */
static bool tally(struct ms_tick *t, const bson_t *e, const bson_t *not_landed)
{
    bson_iter_t it, evs, f;
    bool blocked = false;
    if (!bson_iter_init_find(&it, e, "events") || !bson_iter_recurse(&it, &evs))
        return false;
    while (bson_iter_next(&evs)) {
        bson_t ev;
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&evs, &len, &data);
        bson_init_static(&ev, data, len);
        const char *o = bson_field_utf8(&ev, "outcome");
        t->c.events++;
        if (bson_iter_init_find(&f, &ev, "message_id") && BSON_ITER_HOLDS_OID(&f)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&f), hex);
            blocked = blocked || bson_has_field(not_landed, hex);
        }
        if (!o)
            continue;
        if (!strcmp(o, "applied"))
            t->c.applied++;
        else if (!strcmp(o, "duplicate"))
            t->c.duplicates++;
        else if (!strcmp(o, "ignored"))
            t->c.ignored++;
        else if (!strcmp(o, "history"))
            t->c.history_only++;
        else
            t->c.unknown++; /* unknown_message, no_message_id */
    }
    return blocked;
}

/* The rule error of the first message named by a plan entry's events whose
 * update was skipped because a rule failed for it (plan.rule_errors), or
 * NULL; target receives that message's id. */
static const char *rule_error_of(const bson_t *e, const bson_t *rule_errors, char *target)
{
    bson_iter_t it, evs, f;
    if (bson_empty(rule_errors) || !bson_iter_init_find(&it, e, "events") ||
        !bson_iter_recurse(&it, &evs))
        return NULL;
    while (bson_iter_next(&evs)) {
        if (!bson_iter_recurse(&evs, &f) || !bson_iter_find(&f, "message_id") ||
            !BSON_ITER_HOLDS_OID(&f))
            continue;
        bson_oid_to_string(bson_iter_oid(&f), target);
        const char *why = bson_field_utf8(rule_errors, target);
        if (why)
            return why;
    }
    return NULL;
}

/* An entry held back by a rule error: counts the try; true when it is the
 * last one allowed and the entry is to be parked (reason then filled). */
static bool rule_failure_exhausted(struct ms_tick *t, const bson_t *e, const char *target,
                                   const char *why, char *reason, size_t size)
{
    const char *id = bson_field_utf8(e, "id");
    long long tries = 0;
    struct sd_error err;
    if (stream_count_try(t->env->redis, t->tries, id ? id : "", RULE_TRIES_TTL_MS, &tries, &err))
        tries = 0; /* uncounted: held this time; Redis failing fails the batch's ack anyway */
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "entry", id ? id : "");
    BSON_APPEND_UTF8(&f, "message", target);
    BSON_APPEND_UTF8(&f, "reason", why);
    BSON_APPEND_INT64(&f, "tries", tries);
    bool last = tries >= MAX_RULE_TRIES;
    log_msg(LOG_WARN, t->env->log, last ? "status_event.rejected" : "status_event.rule_failed",
            &f, "status-events entry %s %s: %s (try %lld of %d)", id ? id : "",
            last ? "parked in status-events:rejected" : "left pending", why, tries,
            MAX_RULE_TRIES);
    bson_destroy(&f);
    if (last)
        snprintf(reason, size, "%s (message %s; gave up after %lld tries)", why, target, tries);
    return last;
}

/* One batch of stream entries: parse, decide, write, then acknowledge. */
static int process_batch(struct ms_tick *t, struct stream_batch *b, struct sd_error *err)
{
    bson_t **parsed = calloc(b->n, sizeof *parsed);
    for (size_t i = 0; i < b->n; i++) {
        parsed[i] = bson_new();
        msgstatus_parse_entry(b->entries[i], &t->keys, parsed[i]);
    }
    bson_t plan = BSON_INITIALIZER, not_landed = BSON_INITIALIZER;
    int rc = ms_decide_and_write(t, (const bson_t *const *)parsed, b->n, &plan, &not_landed, err);
    struct stream_done *done = calloc(b->n, sizeof *done);
    char **reasons = calloc(b->n, sizeof *reasons); /* parked entries' reasons */
    size_t nd = 0;
    bson_iter_t it, list;
    bson_t rule_errors = BSON_INITIALIZER;
    if (rc == 0 && bson_iter_init_find(&it, &plan, "rule_errors") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&it, &len, &data);
        bson_destroy(&rule_errors);
        bson_init_static(&rule_errors, data, len);
    }
    if (rc == 0 && bson_iter_init_find(&it, &plan, "entries") && bson_iter_recurse(&it, &list)) {
        for (size_t i = 0; bson_iter_next(&list) && i < b->n; i++) {
            bson_t e;
            uint32_t len;
            const uint8_t *data;
            bson_iter_document(&list, &len, &data);
            bson_init_static(&e, data, len);
            const char *outcome = bson_field_utf8(&e, "outcome"), *id = bson_field_utf8(&e, "id");
            bool blocked = tally(t, &e, &not_landed);
            char target[25] = "";
            const char *why = rule_error_of(&e, &rule_errors, target);
            struct stream_done d = {.id = id, .entry = b->entries[i]};
            if (why) {
                char reason[1400];
                if (!rule_failure_exhausted(t, &e, target, why, reason, sizeof reason)) {
                    t->c.rule_failed++; /* tried again when claimed back */
                    continue;
                }
                d.side_stream = t->rejected;
                d.reason = reasons[i] = strdup(reason);
                t->c.rejected++;
                done[nd++] = d;
                continue;
            }
            if (blocked) {
                t->c.deferred++; /* retried once the message settles */
                continue;
            }
            if (!strcmp(outcome, "rejected")) {
                d.side_stream = t->rejected;
                d.reason = bson_field_utf8(&e, "reason");
                t->c.rejected++;
                log_entry(t, LOG_WARN, "status_event.rejected", &e, "rejected");
            } else if (!strcmp(outcome, "unmatched")) {
                d.side_stream = t->unmatched;
                d.reason = bson_field_utf8(&e, "reason");
                t->c.unmatched++;
                log_entry(t, LOG_WARN, "status_event.unmatched", &e, "moved to unmatched");
            } else if (!strcmp(outcome, "waiting")) {
                t->c.waiting++;
                continue;
            } else {
                t->c.acknowledged++;
            }
            done[nd++] = d;
        }
    }
    if (rc == 0) {
        seam_wait("message_status_before_ack");
        rc = stream_finish(t->env->redis, t->stream, GROUP, done, nd, SIDE_MAXLEN, err);
    }
    free(done);
    for (size_t i = 0; i < b->n; i++)
        free(reasons[i]);
    free(reasons);
    bson_destroy(&plan);
    bson_destroy(&not_landed);
    for (size_t i = 0; i < b->n; i++)
        bson_destroy(parsed[i]);
    free(parsed);
    t->c.batches++;
    return rc;
}

/* Entries a consumer took and never acknowledged (it died, or they wait for
 * their message) come back once idle for a lease TTL: by then no live holder
 * of the job's lease can still be working on them. */
static int sweep_pending(struct ms_tick *t, struct sd_error *err)
{
    char cursor[48] = "0-0";
    for (int round = 0; round < MAX_BATCHES && !job_should_stop(t->env); round++) {
        struct stream_batch b = {0};
        int rc = stream_claim(t->env->redis, t->stream, GROUP, t->consumer,
                              t->env->cfg->lease_ttl_ms, cursor, BATCH, &b, err);
        if (rc == 0 && b.n) {
            t->c.entries += (int64_t)b.n;
            t->c.claimed += (int64_t)b.n;
            rc = process_batch(t, &b, err);
        }
        stream_batch_clear(&b);
        if (rc || !strcmp(cursor, "0-0"))
            return rc;
    }
    return 0;
}

static int sweep_new(struct ms_tick *t, struct sd_error *err)
{
    for (int round = 0; round < MAX_BATCHES && !job_should_stop(t->env); round++) {
        struct stream_batch b = {0};
        int rc = stream_read(t->env->redis, t->stream, GROUP, t->consumer, BATCH, &b, err);
        size_t n = b.n;
        if (rc == 0 && n) {
            t->c.entries += (int64_t)n;
            rc = process_batch(t, &b, err);
        }
        stream_batch_clear(&b);
        if (rc || n < BATCH)
            return rc;
    }
    return 0;
}

int job_message_status(struct job_env *env, struct sd_error *err)
{
    const struct config *cfg = env->cfg;
    struct ms_tick t = {.env = env, .wall_ms = clock_now_ms()};
    t.keys = (struct msgstatus_keys){.twilio_auth_token = cfg->twilio_auth_token,
                                     .sendgrid_public_key = cfg->sendgrid_webhook_public_key,
                                     .sendgrid_tolerance_ms = cfg->webhook_tolerance_s * 1000LL};
    snprintf(t.stream, sizeof t.stream, "%sstatus-events", cfg->redis_prefix);
    snprintf(t.rejected, sizeof t.rejected, "%sstatus-events:rejected", cfg->redis_prefix);
    snprintf(t.unmatched, sizeof t.unmatched, "%sstatus-events:unmatched", cfg->redis_prefix);
    snprintf(t.tries, sizeof t.tries, "%sstatus-events:tries:", cfg->redis_prefix);
    runner_instance_id(t.consumer, sizeof t.consumer);
    t.msgs = mongoc_client_get_collection(env->mongo, env->db, COLL_MESSAGE);
    int rc = stream_group_ensure(env->redis, t.stream, GROUP, err);
    if (rc == 0)
        rc = sweep_pending(&t, err);
    if (rc == 0)
        rc = sweep_new(&t, err);
    if (rc == 0 && !job_should_stop(env))
        rc = ms_reconcile_sweep(&t, err);
    if (rc == 0 && !job_should_stop(env))
        rc = ms_retry_sweep(&t, err);
    if (rc == 0 && !job_should_stop(env))
        rc = stream_trim_acknowledged(env->redis, t.stream, &t.c.trimmed, err);
    counts_to(&t);
    mongoc_collection_destroy(t.msgs);
    return rc;
}
