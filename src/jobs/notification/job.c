/* notification/job.c — collect and apply around notification_decide (see
 * model.h).
 *
 * Exactly once rests on the outbox's unique keys, which notification_decide
 * derives from what triggered each mail: the outbox entries of a batch are
 * inserted first (outbox/intent.h: the decision can be taken again, so
 * nothing is parked), then the conversations' SLA views, then the state
 * records. A process killed anywhere in between leaves the record as it was
 * (the conversation's updated_at is still past the checkpoint, which moves
 * only at the end of a tick, and the record's sla.next_due still due): the
 * next tick decides the same mails again, and their inserts are no-ops. Two
 * instances at once insert the same keys; one wins.
 *
 * The SLA view's write is conditional on updated_at as read and does not
 * change it: a conversation the platform changed meanwhile keeps its old
 * view and is seen again by the next tick's change query. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/seam.h"
#include "jobs/job.h"
#include "jobs/notification/model.h"
#include "outbox/intent.h"
#include "store/batches.h"
#include "store/find_in.h"
#include "store/mongo.h"

#define BATCH 500
#define MAX_BATCHES 20000 /* 10 million conversations: a bound, not a budget */
#define CHANGED_SKEW_MS 60000 /* a write that commits late is still seen */

/* Rooms read so far this tick, sorted by id for bsearch: each is read once
 * however many batches need it. */
struct room_entry {
    char hex[25];
    bson_t *doc;
};

/* What the checkpoint says this tick reads. */
enum sweep_mode {
    SWEEP_CHANGES, /* changed since the checkpoint, or due */
    SWEEP_FIRST,   /* a first install: every conversation, recorded, nobody mailed */
    SWEEP_ALL,     /* no checkpoint, but the database was served: every conversation */
};

struct tick {
    struct job_env *env;
    mongoc_collection_t *convs;
    enum sweep_mode mode;
    int64_t high;         /* the checkpoint: greatest updated_at read so far; -1 none */
    int64_t high_read;    /* greatest updated_at read this tick; -1 none */
    bool legacy;          /* the checkpoint came from Redis (earlier builds) */
    struct room_entry *rooms;
    size_t n_rooms;
    bool baseline;
    int64_t changed, due, unchanged, states, sla_written, sla_conflicts, bad, batches, failed,
        parked;
    struct intent_counts outbox;
};

static void counts_to(struct tick *t)
{
    bson_t *c = t->env->counts;
    BSON_APPEND_BOOL(c, "baseline", t->baseline);
    BSON_APPEND_BOOL(c, "full_sweep", t->mode == SWEEP_ALL);
    BSON_APPEND_INT64(c, "changed", t->changed);
    BSON_APPEND_INT64(c, "due", t->due);
    BSON_APPEND_INT64(c, "unchanged", t->unchanged);
    BSON_APPEND_INT64(c, "notifications", t->outbox.enqueued);
    BSON_APPEND_INT64(c, "duplicate_notifications", t->outbox.duplicates);
    BSON_APPEND_INT64(c, "states", t->states);
    BSON_APPEND_INT64(c, "sla_written", t->sla_written);
    BSON_APPEND_INT64(c, "sla_conflicts", t->sla_conflicts);
    BSON_APPEND_INT64(c, "bad_documents", t->bad);
    BSON_APPEND_INT64(c, "failed", t->failed);
    BSON_APPEND_INT64(c, "parked", t->parked);
    BSON_APPEND_INT64(c, "batches", t->batches);
}

/* The distinct ObjectIds in docs' `from` field (caller frees). */
static bson_value_t *distinct_oids(bson_t **docs, size_t n, const char *from, size_t *k)
{
    bson_value_t *v = calloc(n + 1, sizeof *v);
    *k = 0;
    for (size_t i = 0; v && i < n; i++) {
        bson_iter_t it;
        if (!bson_iter_init_find(&it, docs[i], from) || !BSON_ITER_HOLDS_OID(&it))
            continue;
        const bson_oid_t *oid = bson_iter_oid(&it);
        bool seen = false;
        for (size_t j = 0; j < *k && !seen; j++)
            seen = bson_oid_equal(&v[j].value.v_oid, oid);
        if (!seen) {
            v[*k].value_type = BSON_TYPE_OID;
            bson_oid_copy(oid, &v[(*k)++].value.v_oid);
        }
    }
    return v;
}

static struct store_find_in query_on(struct tick *t, const char *coll, const char *field)
{
    return (struct store_find_in){.store = t->env->store,
                                  .client = t->env->mongo,
                                  .db = t->env->db,
                                  .coll = coll,
                                  .field = field};
}

/* Files each document under the hex of its `by` field (the first one wins). */
static void file_by(bson_t **found, size_t n, const char *by, bson_t *map)
{
    bson_t seen = BSON_INITIALIZER;
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, found[i], by) && BSON_ITER_HOLDS_OID(&it)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&it), hex);
            if (!bson_has_field(&seen, hex)) {
                BSON_APPEND_BOOL(&seen, hex, true);
                BSON_APPEND_DOCUMENT(map, hex, found[i]);
            }
        }
    }
    bson_destroy(&seen);
}

static int cmp_room(const void *a, const void *b)
{
    return strcmp(((const struct room_entry *)a)->hex, ((const struct room_entry *)b)->hex);
}

static const struct room_entry *cached_room(const struct tick *t, const char *hex)
{
    struct room_entry key;
    snprintf(key.hex, sizeof key.hex, "%s", hex);
    return t->n_rooms ? bsearch(&key, t->rooms, t->n_rooms, sizeof key, cmp_room) : NULL;
}

/* The batch's rooms into `rooms` ({hex: room}), reading only those this
 * tick has not read yet. */
static int load_rooms(struct tick *t, bson_t **docs, size_t n, bson_t *rooms,
                      struct sd_error *err)
{
    size_t k = 0, missing = 0;
    bson_value_t *ids = distinct_oids(docs, n, "room_id", &k);
    bson_value_t *wanted = calloc(k + 1, sizeof *wanted);
    if (!ids || !wanted) {
        free(ids);
        free(wanted);
        return sd_error_set(err, "out of memory");
    }
    for (size_t i = 0; i < k; i++) {
        char hex[25];
        bson_oid_to_string(&ids[i].value.v_oid, hex);
        if (!cached_room(t, hex))
            wanted[missing++] = ids[i];
    }
    bson_t **found = NULL;
    size_t nf = 0;
    struct store_find_in q = query_on(t, COLL_ROOM, "_id");
    int rc = store_find_in(&q, wanted, missing, &found, &nf, err);
    free(wanted);
    struct room_entry *grown = nf ? realloc(t->rooms, (t->n_rooms + nf) * sizeof *grown) : NULL;
    if (nf && !grown) {
        rc = sd_error_set(err, "out of memory");
    } else if (nf) {
        t->rooms = grown;
        /* found holds only rooms not cached, each once (distinct _ids) */
        for (size_t i = 0; i < nf; i++) {
            bson_iter_t it;
            if (!bson_iter_init_find(&it, found[i], "_id") || !BSON_ITER_HOLDS_OID(&it))
                continue;
            struct room_entry *e = &t->rooms[t->n_rooms++];
            bson_oid_to_string(bson_iter_oid(&it), e->hex);
            e->doc = found[i];
            found[i] = NULL;
        }
        qsort(t->rooms, t->n_rooms, sizeof *t->rooms, cmp_room);
    }
    for (size_t i = 0; i < nf; i++)
        if (found[i])
            bson_destroy(found[i]);
    free(found);
    for (size_t i = 0; i < k; i++) {
        char hex[25];
        bson_oid_to_string(&ids[i].value.v_oid, hex);
        const struct room_entry *e = cached_room(t, hex);
        if (e && !bson_has_field(rooms, hex))
            BSON_APPEND_DOCUMENT(rooms, hex, e->doc);
    }
    free(ids);
    return rc;
}

/* The batch's notify-state records into `states` ({conversation hex: record}). */
static int load_states(struct tick *t, bson_t **docs, size_t n, bson_t *states,
                       struct sd_error *err)
{
    size_t k = 0;
    bson_value_t *ids = distinct_oids(docs, n, "_id", &k);
    if (!ids)
        return sd_error_set(err, "out of memory");
    bson_t **found = NULL;
    size_t nf = 0;
    struct store_find_in q = query_on(t, COLL_NOTIFY_STATE, "_id");
    int rc = store_find_in(&q, ids, k, &found, &nf, err);
    file_by(found, nf, "_id", states);
    store_docs_free(found, nf);
    free(ids);
    return rc;
}

/* The active SMS channel of each of the batch's rooms: one {$in} (FerretDB
 * serves the type and active equalities by index and filters the few SMS
 * channels in Go). */
static int load_channels(struct tick *t, bson_t **docs, size_t n, bson_t *channels,
                         struct sd_error *err)
{
    size_t k = 0;
    bson_value_t *ids = distinct_oids(docs, n, "room_id", &k);
    if (!ids)
        return sd_error_set(err, "out of memory");
    int rc = 0;
    if (k) {
        bson_t filter = BSON_INITIALIZER;
        store_append_in(&filter, "room_id", ids, k);
        BSON_APPEND_UTF8(&filter, "type", "sms");
        BSON_APPEND_BOOL(&filter, "active", true);
        bson_t **found = NULL;
        size_t nf = 0;
        mongoc_collection_t *coll =
            mongoc_client_get_collection(t->env->mongo, t->env->db, COLL_CHANNEL);
        rc = store_find_all(coll, &filter, NULL, &found, &nf, err);
        mongoc_collection_destroy(coll);
        file_by(found, nf, "room_id", channels);
        store_docs_free(found, nf);
        bson_destroy(&filter);
    }
    free(ids);
    return rc;
}

/* New inbound messages per conversation since what was last notified, for
 * the coalesced mail's count: one query for the conversations concerned. */
static int load_counts(struct tick *t, bson_t **docs, size_t n, const bson_t *states,
                       bson_t *counts, struct sd_error *err)
{
    bson_t **want = calloc(n + 1, sizeof *want);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it, s;
        char hex[25];
        if (!bson_iter_init_find(&it, docs[i], "_id") || !BSON_ITER_HOLDS_OID(&it))
            continue;
        bson_oid_to_string(bson_iter_oid(&it), hex);
        int64_t customer = 0, seen = 0;
        if (bson_iter_init_find(&it, docs[i], "last_customer_message_at") &&
            BSON_ITER_HOLDS_DATE_TIME(&it))
            customer = bson_iter_date_time(&it);
        char path[64];
        snprintf(path, sizeof path, "%s.customer_at", hex);
        if (bson_iter_init(&s, states) && bson_iter_find_descendant(&s, path, &s) &&
            BSON_ITER_HOLDS_DATE_TIME(&s))
            seen = bson_iter_date_time(&s);
        else
            continue; /* new ticket: ticket.created covers its messages */
        if (customer > seen)
            want[k++] = docs[i];
    }
    int rc = 0;
    if (k) {
        bson_t extra = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
        BSON_APPEND_UTF8(&extra, "direction", "inbound");
        BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
        BSON_APPEND_INT32(&proj, "conversation_id", 1);
        BSON_APPEND_INT32(&proj, "created_at", 1);
        bson_append_document_end(&opts, &proj);
        size_t nv = 0;
        bson_value_t *ids = distinct_oids(want, k, "_id", &nv);
        bson_t **msgs = NULL;
        size_t n_msgs = 0;
        struct store_find_in q = query_on(t, COLL_MESSAGE, "conversation_id");
        q.extra = &extra;
        q.opts = &opts;
        rc = ids ? store_find_in(&q, ids, nv, &msgs, &n_msgs, err)
                 : sd_error_set(err, "out of memory");
        free(ids);
        bson_destroy(&extra);
        bson_destroy(&opts);
        for (size_t i = 0; i < k && rc == 0; i++) {
            bson_iter_t it, s;
            char hex[25], path[64];
            bson_iter_init_find(&it, want[i], "_id");
            const bson_oid_t *oid = bson_iter_oid(&it);
            bson_oid_to_string(oid, hex);
            snprintf(path, sizeof path, "%s.customer_at", hex);
            bson_iter_init(&s, states);
            bson_iter_find_descendant(&s, path, &s);
            int64_t seen = bson_iter_date_time(&s), count = 0;
            for (size_t j = 0; j < n_msgs; j++) {
                bson_iter_t c, d;
                if (bson_iter_init_find(&c, msgs[j], "conversation_id") &&
                    BSON_ITER_HOLDS_OID(&c) && bson_oid_equal(bson_iter_oid(&c), oid) &&
                    bson_iter_init_find(&d, msgs[j], "created_at") &&
                    BSON_ITER_HOLDS_DATE_TIME(&d) && bson_iter_date_time(&d) > seen)
                    count++;
            }
            if (count)
                BSON_APPEND_INT64(counts, hex, count);
        }
        store_docs_free(msgs, n_msgs);
    }
    free(want);
    return rc;
}

/* The outbox entries of every action: one insertMany, unique keys. */
static int write_outbox(struct tick *t, const bson_t *actions, struct sd_error *err)
{
    return intent_enqueue_array(t->env->mongo, t->env->db, actions, "notifications",
                                t->env->now_ms, &t->outbox, err);
}

static bool sub_doc(const bson_t *doc, const char *key, bson_t *out)
{
    bson_iter_t it;
    uint32_t len;
    const uint8_t *data;
    if (!bson_iter_init_find(&it, doc, key) || !BSON_ITER_HOLDS_DOCUMENT(&it))
        return false;
    bson_iter_document(&it, &len, &data);
    return bson_init_static(out, data, len);
}

/* The conversation's SLA as SPEC §2 shows it to the platform: {policy,
 * first_response_due?, resolution_due} of supportd's whole SLA document.
 * Once the ticket is answered the first-response deadline is no longer
 * tracked; the view keeps the one it showed (the deadline the answer met or
 * missed), which also spares the conversation a write. */
static void sla_view(const bson_t *sla, const bson_t *conv, bson_t *view)
{
    static const char *const fields[] = {"policy", "first_response_due", "resolution_due"};
    bson_init(view);
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, sla, fields[i]) ||
            (i == 1 && conv && bson_iter_init(&it, conv) &&
             bson_iter_find_descendant(&it, "sla.first_response_due", &it) &&
             BSON_ITER_HOLDS_DATE_TIME(&it)))
            bson_append_iter(view, fields[i], -1, &it);
    }
}

/* The conversation's sla holds more than the view: an earlier build's whole
 * SLA, kept there until its record has a copy. */
static bool legacy_sla(const bson_t *conv)
{
    bson_t sla;
    bson_iter_t it;
    if (!conv || !sub_doc(conv, "sla", &sla) || !bson_iter_init(&it, &sla))
        return false;
    while (bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        if (strcmp(k, "policy") && strcmp(k, "first_response_due") && strcmp(k, "resolution_due"))
            return true;
    }
    return false;
}

/* The conversation whose _id is oid among the batch's documents. */
static const bson_t *conv_of(bson_t **docs, size_t n, const bson_oid_t *oid)
{
    for (size_t i = 0; i < n; i++) {
        bson_iter_t id;
        if (bson_iter_init_find(&id, docs[i], "_id") && BSON_ITER_HOLDS_OID(&id) &&
            bson_oid_equal(bson_iter_oid(&id), oid))
            return docs[i];
    }
    return NULL;
}

/* The conversations' SLA views and levels where they changed (conditional on
 * updated_at as read), then the state records (upserts), which hold the
 * whole SLA. In that order: a record written means its decision's
 * conversation write was made or lost to a platform change, which the
 * next tick sees; a conversation written without its record is decided
 * again. But a conversation that still holds an earlier build's whole SLA
 * is rewritten last, once its record has the copy: written first, a crash
 * before the record would lose its deadlines and paused minutes (until it
 * is rewritten, unchanged() decides it again whenever it is read).
 *
 * The conversation is written only when what the platform shows changes: on
 * FerretDB an update reads the document and writes all of it back without a
 * compare-and-swap, so a platform write landing in between is reverted
 * (reference/ferretdb.md; a 30-minute chaos run lost a snooze that way to
 * the SLA bookkeeping that used to live here). */
static int write_state(struct tick *t, bson_t **docs, size_t n, const bson_t *actions,
                       struct sd_error *err)
{
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&opts, "ordered", false);
    mongoc_collection_t *states =
        mongoc_client_get_collection(t->env->mongo, t->env->db, COLL_NOTIFY_STATE);
    mongoc_bulk_operation_t *sb = mongoc_collection_create_bulk_operation_with_opts(states, &opts);
    mongoc_bulk_operation_t *cb = mongoc_collection_create_bulk_operation_with_opts(t->convs, &opts);
    mongoc_bulk_operation_t *lb = mongoc_collection_create_bulk_operation_with_opts(t->convs, &opts);
    bson_destroy(&opts);
    int n_states = 0, n_sla = 0, n_legacy = 0, rc = 0;
    bson_iter_t it;
    bson_iter_init(&it, actions);
    while (bson_iter_next(&it) && rc == 0) {
        uint32_t len;
        const uint8_t *data;
        bson_t action, state, sla;
        bson_iter_document(&it, &len, &data);
        bson_init_static(&action, data, len);
        bson_iter_t f;
        bson_iter_init_find(&f, &action, "conversation_id");
        const bson_oid_t *oid = bson_iter_oid(&f);
        if (bson_iter_init_find(&f, &action, "failed")) {
            bson_iter_t p;
            t->failed++;
            if (bson_iter_init(&p, &action) && bson_iter_find_descendant(&p, "state.failure.parked", &p))
                t->parked++;
        }
        bool has_sla = sub_doc(&action, "sla", &sla);
        if (sub_doc(&action, "state", &state)) {
            bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, set, unset;
            BSON_APPEND_OID(&filter, "_id", oid);
            BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
            bson_concat(&set, &state);
            if (has_sla) {
                BSON_APPEND_DOCUMENT(&set, "sla", &sla);
                BSON_APPEND_BOOL(&set, "sla_pending", bson_has_field(&sla, "next_due"));
            }
            bson_append_document_end(&update, &set);
            if (bson_iter_init_find(&f, &action, "clear_failure")) {
                BSON_APPEND_DOCUMENT_BEGIN(&update, "$unset", &unset);
                BSON_APPEND_UTF8(&unset, "failure", "");
                bson_append_document_end(&update, &unset);
            }
            if (store_bulk_update_doc(sb, &filter, &update, true, err))
                rc = sd_error_prefix(err, "building the state write");
            n_states++;
            bson_destroy(&filter);
            bson_destroy(&update);
        }
        const bson_t *conv = conv_of(docs, n, oid);
        bson_t view = BSON_INITIALIZER, old;
        if (has_sla) {
            bson_destroy(&view);
            sla_view(&sla, conv, &view);
        }
        bool level = bson_iter_init_find(&f, &action, "escalation_level");
        bool same = !has_sla || bson_empty(&view) ||
                    (conv && sub_doc(conv, "sla", &old) && bson_equal(&old, &view));
        if (rc == 0 && conv && (!same || level)) {
            bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, set;
            BSON_APPEND_OID(&filter, "_id", oid);
            bson_iter_t u;
            if (bson_iter_init_find(&u, &action, "read_updated_at"))
                BSON_APPEND_DATE_TIME(&filter, "updated_at", bson_iter_date_time(&u));
            BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
            if (!same)
                BSON_APPEND_DOCUMENT(&set, "sla", &view);
            if (level)
                BSON_APPEND_INT64(&set, "escalation_level", bson_iter_as_int64(&f));
            bson_append_document_end(&update, &set);
            bool legacy = legacy_sla(conv);
            if (store_bulk_update_doc(legacy ? lb : cb, &filter, &update, false, err))
                rc = sd_error_prefix(err, "building the SLA write");
            if (legacy)
                n_legacy++;
            else
                n_sla++;
            bson_destroy(&filter);
            bson_destroy(&update);
        }
        bson_destroy(&view);
    }
    bson_error_t berr;
    int64_t matched;
    if (rc == 0 && n_sla) {
        bool ok = store_bulk_run(cb, &matched, &berr);
        if (!ok)
            rc = sd_error_set(err, "writing the SLA of %d conversations: %s", n_sla, store_errmsg(&berr));
        t->sla_written += matched;
        t->sla_conflicts += n_sla - matched;
    }
    seam_wait("notification_before_records");
    if (rc == 0 && n_states) {
        if (!store_bulk_run(sb, &matched, &berr))
            rc = sd_error_set(err, "writing %d notify-state records: %s", n_states, store_errmsg(&berr));
        else
            t->states += n_states;
    }
    if (rc == 0 && n_legacy) {
        bool ok = store_bulk_run(lb, &matched, &berr);
        if (!ok)
            rc = sd_error_set(err, "writing the SLA of %d conversations: %s", n_legacy,
                              store_errmsg(&berr));
        t->sla_written += matched;
        t->sla_conflicts += n_legacy - matched;
    }
    mongoc_bulk_operation_destroy(sb);
    mongoc_bulk_operation_destroy(cb);
    mongoc_bulk_operation_destroy(lb);
    mongoc_collection_destroy(states);
    return rc;
}

/* The date (ms) at path, 0 when absent, null or not a date. */
static int64_t date_at(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
                   BSON_ITER_HOLDS_DATE_TIME(&it)
               ? bson_iter_date_time(&it)
               : 0;
}

/* Read again only because a query still covers it (the change query's
 * margin, a deadline the record holds): not changed since its last decision
 * and not due. One whose decision failed waits likewise for its retry, or,
 * parked, for a change. A record without an SLA, or a conversation still
 * holding an earlier build's whole SLA, is decided again, which moves it. */
static bool unchanged(const bson_t *doc, const bson_t *states, int64_t now)
{
    bson_iter_t it;
    char hex[25], path[64];
    if (!bson_iter_init_find(&it, doc, "_id") || !BSON_ITER_HOLDS_OID(&it) || legacy_sla(doc))
        return false;
    bson_oid_to_string(bson_iter_oid(&it), hex);
    int64_t updated = date_at(doc, "updated_at");
    snprintf(path, sizeof path, "%s.sla.next_due", hex);
    int64_t next_due = date_at(states, path);
    snprintf(path, sizeof path, "%s.failure", hex);
    if (bson_iter_init(&it, states) && bson_iter_find_descendant(&it, path, &it)) {
        snprintf(path, sizeof path, "%s.failure.updated_at", hex);
        if (!updated || date_at(states, path) != updated)
            return false;
        snprintf(path, sizeof path, "%s.failure.parked", hex);
        if (bson_iter_init(&it, states) && bson_iter_find_descendant(&it, path, &it) &&
            bson_iter_as_bool(&it))
            return true;
        return next_due > now;
    }
    snprintf(path, sizeof path, "%s.seen_updated_at", hex);
    if (!updated || date_at(states, path) != updated)
        return false;
    snprintf(path, sizeof path, "%s.sla", hex);
    if (!bson_iter_init(&it, states) || !bson_iter_find_descendant(&it, path, &it))
        return false;
    return next_due == 0 || next_due > now;
}

/* collect the rest of a batch (the conversations that need a decision, with
 * what deciding them needs), decide, apply. */
static int process(struct tick *t, bson_t **all, size_t n_all, struct sd_error *err)
{
    bson_t rooms = BSON_INITIALIZER, states = BSON_INITIALIZER, channels = BSON_INITIALIZER,
           zones = BSON_INITIALIZER, counts = BSON_INITIALIZER, actions = BSON_INITIALIZER;
    bson_t **docs = calloc(n_all + 1, sizeof *docs);
    size_t n = 0;
    int rc = docs ? load_states(t, all, n_all, &states, err) : sd_error_set(err, "out of memory");
    for (size_t i = 0; rc == 0 && i < n_all; i++) {
        int64_t updated = date_at(all[i], "updated_at");
        bool explain = t->env->plan && t->env->plan->only;
        if (!explain && unchanged(all[i], &states, t->env->now_ms)) {
            t->unchanged++;
            continue;
        }
        if (t->mode != SWEEP_CHANGES || (updated && updated >= t->high - CHANGED_SKEW_MS))
            t->changed++;
        else
            t->due++;
        docs[n++] = all[i];
    }
    if (rc == 0 && n)
        rc = load_rooms(t, docs, n, &rooms, err);
    if (rc == 0 && !bson_empty(&rooms))
        rc = load_channels(t, docs, n, &channels, err);
    if (rc == 0 && !t->baseline)
        rc = load_counts(t, docs, n, &states, &counts, err);
    bson_iter_t it;
    if (rc == 0 && bson_iter_init(&it, &rooms)) {
        while (bson_iter_next(&it)) {
            bson_t room;
            bson_iter_child(&it, &room);
            notification_zone(&room, bson_iter_key(&it), t->env->now_ms, t->env->log, &zones,
                              bson_iter_key(&it));
        }
    }
    if (rc == 0 && n) {
        uint32_t n_actions = 0;
        struct notification_input in = {.conversations = (const bson_t *const *)docs,
                                        .n_conversations = n,
                                        .rooms = &rooms,
                                        .states = &states,
                                        .channels = &channels,
                                        .zones = &zones,
                                        .counts = &counts,
                                        .now_ms = t->env->now_ms,
                                        .baseline = t->baseline,
                                        .rules = t->env->rules,
                                        .log = t->env->log};
        if (t->env->plan && t->env->plan->why) {
            in.why = t->env->plan->why;
            in.n_why = &t->env->plan->n_why;
            in.walks = t->env->plan->walks;
        }
        t->bad += notification_decide(&in, &actions, &n_actions);
        if (t->env->plan) {
            job_plan_append(t->env->plan, &actions, NULL);
        } else {
            rc = write_outbox(t, &actions, err);
            seam_wait("notification_after_enqueue");
            if (rc == 0)
                rc = write_state(t, docs, n, &actions, err);
        }
    }
    bson_destroy(&rooms);
    bson_destroy(&states);
    bson_destroy(&channels);
    bson_destroy(&zones);
    bson_destroy(&counts);
    bson_destroy(&actions);
    free(docs);
    t->batches++;
    return rc;
}

static int process_batch(void *arg, bson_t **docs, size_t n, struct sd_error *err)
{
    struct tick *t = arg;
    if (t->env->plan)
        t->env->plan->read += (int64_t)n;
    return process(t, docs, n, err);
}

/* The greatest updated_at read: the next checkpoint. */
static void note_read(void *arg, const bson_t *doc)
{
    struct tick *t = arg;
    int64_t updated = date_at(doc, "updated_at");
    if (updated > t->high_read)
        t->high_read = updated;
}

static bool stop_requested(void *arg) { return job_should_stop(((struct tick *)arg)->env); }

static mongoc_collection_t *states_coll(const struct tick *t)
{
    return mongoc_client_get_collection(t->env->mongo, t->env->db, COLL_NOTIFY_STATE);
}

/* What the change query matches: changed since the checkpoint (less the
 * margin), or a deadline on the conversation (where earlier builds wrote
 * it). Its filter, for one document read otherwise. */
static bool by_changes(const struct tick *t, const bson_t *doc)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, "updated_at") && BSON_ITER_HOLDS_DATE_TIME(&it) &&
        bson_iter_date_time(&it) >= t->high - CHANGED_SKEW_MS)
        return true;
    return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, "sla.next_due", &it) &&
           BSON_ITER_HOLDS_DATE_TIME(&it) && bson_iter_date_time(&it) <= t->env->now_ms;
}

static void change_filter(const struct tick *t, bson_t *filter)
{
    store_append_either(filter, "updated_at", "$gte", t->high - CHANGED_SKEW_MS, "sla.next_due",
                        "$lte", t->env->now_ms);
}

/* Due records whose conversation is gone (the platform deleted it): their
 * deadline is dropped, conditional on the one read, so that they are not
 * read again every tick. */
static int drop_gone(struct tick *t, bson_t **records, size_t n, bson_t **found, size_t nf,
                     struct sd_error *err)
{
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&opts, "ordered", false);
    mongoc_collection_t *states = states_coll(t);
    mongoc_bulk_operation_t *b = mongoc_collection_create_bulk_operation_with_opts(states, &opts);
    bson_destroy(&opts);
    int gone = 0, rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        bson_iter_t id, due;
        if (!bson_iter_init_find(&id, records[i], "_id") || !BSON_ITER_HOLDS_OID(&id) ||
            conv_of(found, nf, bson_iter_oid(&id)) || !bson_iter_init(&due, records[i]) ||
            !bson_iter_find_descendant(&due, "sla.next_due", &due) ||
            !BSON_ITER_HOLDS_DATE_TIME(&due))
            continue;
        char hex[25];
        bson_oid_to_string(bson_iter_oid(&id), hex);
        log_field(LOG_WARN, t->env->log, "notification.conversation_gone", "conversation_id", hex,
                  "conversation %s: its record has a deadline but the conversation no longer "
                  "exists; deadline dropped",
                  hex);
        bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, set;
        BSON_APPEND_OID(&filter, "_id", bson_iter_oid(&id));
        BSON_APPEND_DATE_TIME(&filter, "sla.next_due", bson_iter_date_time(&due));
        BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
        BSON_APPEND_BOOL(&set, "sla_pending", false);
        bson_append_document_end(&update, &set);
        if (store_bulk_update_doc(b, &filter, &update, false, err))
            rc = sd_error_prefix(err, "building the record write");
        gone++;
        bson_destroy(&filter);
        bson_destroy(&update);
    }
    bson_error_t berr;
    int64_t matched;
    if (rc == 0 && gone && !store_bulk_run(b, &matched, &berr))
        rc = sd_error_set(err, "dropping the deadlines of %d records: %s", gone, store_errmsg(&berr));
    mongoc_bulk_operation_destroy(b);
    mongoc_collection_destroy(states);
    return rc;
}

/* The conversations of a batch of due records (sla.next_due at or before
 * now), less those the change query read this tick (each is decided once a
 * tick). */
static int due_batch(void *arg, bson_t **records, size_t n, struct sd_error *err)
{
    struct tick *t = arg;
    size_t k = 0;
    bson_value_t *ids = distinct_oids(records, n, "_id", &k);
    if (!ids)
        return sd_error_set(err, "out of memory");
    bson_t **found = NULL, **keep = NULL;
    size_t nf = 0, m = 0;
    struct store_find_in q = query_on(t, COLL_CONVERSATION, "_id");
    int rc = k ? store_find_in(&q, ids, k, &found, &nf, err) : 0;
    if (rc == 0 && nf && !(keep = calloc(nf, sizeof *keep)))
        rc = sd_error_set(err, "out of memory");
    for (size_t i = 0; rc == 0 && i < nf; i++)
        if (!by_changes(t, found[i]))
            keep[m++] = found[i];
    if (rc == 0 && nf < k && !t->env->plan)
        rc = drop_gone(t, records, n, found, nf, err);
    if (rc == 0 && m && t->env->plan)
        t->env->plan->read += (int64_t)m;
    if (rc == 0 && m)
        rc = process(t, keep, m, err);
    free(keep);
    store_docs_free(found, nf);
    free(ids);
    return rc;
}

/* The conversations to look at, in one query through one cursor, BATCH at a
 * time (each decided, written and finished before the next is read):
 * changed since the checkpoint — every conversation when there is no
 * checkpoint — then those whose deadline is due, found through their
 * records' sla.next_due. The change query is one query, not one per page:
 * FerretDB 1.24 pushes no range down and decodes the whole collection for
 * every query, so each query costs a scan there (README, notification job);
 * the records are small and few are due. *complete: read to its end. */
static int sweep(struct tick *t, bool *complete, struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER;
    bool due = false;
    if (t->env->plan && t->env->plan->only)
        BSON_APPEND_OID(&filter, "_id", t->env->plan->only);
    else if ((due = t->mode == SWEEP_CHANGES))
        change_filter(t, &filter);
    struct store_batches b = {.size = BATCH,
                              .max_batches = MAX_BATCHES,
                              .each = process_batch,
                              .seen = note_read,
                              .stop = stop_requested,
                              .arg = t};
    int rc = store_sweep(t->convs, &filter, &b, complete, err);
    bson_destroy(&filter);
    if (rc == 0 && *complete && due) {
        /* At or before now (ticks run on whole minutes, and so do many
         * deadlines); `at` not this tick's: a record this tick wrote (a first
         * retry is due at now) is not read again by the same cursor.
         * sla_pending: an equality FerretDB pushes down, so only the records
         * with a deadline (the open tickets) are decoded, not every one. */
        bson_t dfilter = BSON_INITIALIZER, range;
        BSON_APPEND_BOOL(&dfilter, "sla_pending", true);
        BSON_APPEND_DOCUMENT_BEGIN(&dfilter, "sla.next_due", &range);
        BSON_APPEND_DATE_TIME(&range, "$lte", t->env->now_ms);
        bson_append_document_end(&dfilter, &range);
        BSON_APPEND_DOCUMENT_BEGIN(&dfilter, "at", &range);
        BSON_APPEND_DATE_TIME(&range, "$ne", t->env->now_ms);
        bson_append_document_end(&dfilter, &range);
        mongoc_collection_t *states = states_coll(t);
        b.each = due_batch;
        b.seen = NULL;
        rc = store_sweep(states, &dfilter, &b, complete, err);
        mongoc_collection_destroy(states);
        bson_destroy(&dfilter);
    }
    return rc;
}

/* ---- the checkpoint --------------------------------------------------------
 *
 * In conversation-notify-state beside the records it goes with (_id
 * "checkpoint"), not in Redis: Redis may lose it (restart without
 * persistence, eviction, flush), and a lost checkpoint must not look like a
 * first install, which records the present and mails nobody. */

/* The checkpoint of earlier builds, in Redis only: read when
 * MongoDB has none, deleted once MongoDB has it. *ms -1: none. */
static int legacy_checkpoint(struct tick *t, bool del, int64_t *ms, struct sd_error *err)
{
    char key[300];
    snprintf(key, sizeof key, "%snotification:changed_since", t->env->cfg->redis_prefix);
    redisReply *rep = rds_command(t->env->redis, err, del ? "DEL %s" : "GET %s", key);
    if (!rep)
        return -1;
    if (ms)
        *ms = rep->type == REDIS_REPLY_STRING ? strtoll(rep->str, NULL, 10) : -1;
    freeReplyObject(rep);
    return 0;
}

/* Which conversations this tick reads (t->mode, t->high). Without a
 * checkpoint, supportd's own records tell a database served before (read
 * everything, mail what is due) from a first install, which is marked as
 * begun before it reads anything, so that one stopped half-way is finished
 * as a first install. */
static int checkpoint_read(struct tick *t, struct sd_error *err)
{
    mongoc_collection_t *coll = states_coll(t);
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, "_id", NOTIFY_CHECKPOINT_ID);
    BSON_APPEND_INT64(&opts, "limit", 1);
    bson_t **found = NULL;
    size_t nf = 0;
    int rc = store_find_all(coll, &filter, &opts, &found, &nf, err);
    t->high = -1;
    if (rc == 0 && nf) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, found[0], "changed_since") && BSON_ITER_HOLDS_DATE_TIME(&it)) {
            t->mode = SWEEP_CHANGES;
            t->high = bson_iter_date_time(&it);
        } else {
            t->mode = SWEEP_FIRST;
        }
    } else if (rc == 0) {
        int64_t legacy = -1;
        rc = legacy_checkpoint(t, false, &legacy, err);
        if (rc == 0 && legacy >= 0) {
            t->mode = SWEEP_CHANGES;
            t->high = legacy;
            t->legacy = true;
        } else if (rc == 0) {
            bson_t any = BSON_INITIALIZER;
            store_docs_free(found, nf);
            found = NULL;
            nf = 0;
            rc = store_find_all(coll, &any, &opts, &found, &nf, err);
            bson_destroy(&any);
            t->mode = nf ? SWEEP_ALL : SWEEP_FIRST;
        }
        if (rc == 0 && t->mode == SWEEP_FIRST && !t->env->plan) {
            bson_t update = BSON_INITIALIZER, set, uopts = BSON_INITIALIZER;
            BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
            BSON_APPEND_DATE_TIME(&set, "first_install_at", t->env->now_ms);
            bson_append_document_end(&update, &set);
            BSON_APPEND_BOOL(&uopts, "upsert", true);
            bson_error_t berr;
            if (!mongoc_collection_update_one(coll, &filter, &update, &uopts, NULL, &berr))
                rc = sd_error_set(err, "marking the first install in %s: %s", COLL_NOTIFY_STATE,
                                  store_errmsg(&berr));
            bson_destroy(&update);
            bson_destroy(&uopts);
        } else if (rc == 0 && t->mode == SWEEP_ALL) {
            log_msg(LOG_WARN, t->env->log, "notification.checkpoint_missing", NULL,
                    "no checkpoint, but notify-state records exist: reading every conversation, "
                    "mailing what is due");
        }
    }
    /* One from a clock that ran ahead (or an earlier build's --now) starts no
     * later than now. */
    if (t->high > t->env->now_ms)
        t->high = t->env->now_ms;
    store_docs_free(found, nf);
    bson_destroy(&filter);
    bson_destroy(&opts);
    mongoc_collection_destroy(coll);
    if (rc)
        sd_error_prefix(err, "reading the checkpoint");
    return rc;
}

/* After a complete sweep: the greatest updated_at read so far. Derived from
 * the platform's writes, not from the local clock, so a clock running ahead
 * or `once --now <future>` cannot move it past changes not yet made; but
 * never past the tick's now either, so that an updated_at in the future does
 * not hold it there. Lower is only slower (more read again), never a change
 * missed. 0 when nothing was ever read: the next tick reads everything. */
static int checkpoint_write(struct tick *t, struct sd_error *err)
{
    int64_t high = t->high_read > t->high ? t->high_read : t->high;
    if (high > t->env->now_ms)
        high = t->env->now_ms;
    if (high < 0)
        high = 0;
    mongoc_collection_t *coll = states_coll(t);
    bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, doc, opts = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, "_id", NOTIFY_CHECKPOINT_ID);
    BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &doc);
    BSON_APPEND_DATE_TIME(&doc, "changed_since", high);
    BSON_APPEND_DATE_TIME(&doc, "at", t->env->now_ms);
    bson_append_document_end(&update, &doc);
    BSON_APPEND_DOCUMENT_BEGIN(&update, "$unset", &doc);
    BSON_APPEND_UTF8(&doc, "first_install_at", "");
    bson_append_document_end(&update, &doc);
    BSON_APPEND_BOOL(&opts, "upsert", true);
    bson_error_t berr;
    int rc = 0;
    if (!mongoc_collection_update_one(coll, &filter, &update, &opts, NULL, &berr))
        rc = sd_error_set(err, "writing the checkpoint to %s: %s", COLL_NOTIFY_STATE,
                          store_errmsg(&berr));
    bson_destroy(&filter);
    bson_destroy(&update);
    bson_destroy(&opts);
    mongoc_collection_destroy(coll);
    if (rc == 0 && t->legacy)
        rc = legacy_checkpoint(t, true, NULL, err);
    return rc;
}

int job_notification(struct job_env *env, struct sd_error *err)
{
    struct tick t = {.env = env, .high_read = -1};
    t.convs = mongoc_client_get_collection(env->mongo, env->db, COLL_CONVERSATION);
    int rc = checkpoint_read(&t, err);
    t.baseline = rc == 0 && t.mode == SWEEP_FIRST;
    bool complete = false;
    if (rc == 0)
        rc = sweep(&t, &complete, err);
    if (rc == 0 && complete && !env->plan)
        rc = checkpoint_write(&t, err);
    counts_to(&t);
    /* The job delivers what it enqueued, and what any job left pending. */
    if (rc == 0 && !env->plan && !job_should_stop(env))
        rc = job_deliver_outbox(env, err);
    mongoc_collection_destroy(t.convs);
    for (size_t i = 0; i < t.n_rooms; i++)
        bson_destroy(t.rooms[i].doc);
    free(t.rooms);
    return rc;
}
