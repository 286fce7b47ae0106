/* message_status/apply.c — decide and write: the messages a batch of parsed
 * entries names are read, msgstatus_decide plans their updates, and the
 * updates are written (see model.h). The stream batches (job.c) and the
 * reconcile sweep's poll answers (retry.c) both come here.
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
#include "core/seam.h"
#include "jobs/message_status/model.h"
#include "store/find_in.h"
#include "store/mongo.h"

#define WRITE_CHUNK 500          /* statements per bulk write */

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

/* Events whose id no message holds now may name a message's earlier attempt
 * (a re-send replaced it): conversation-message-sids maps "<provider>:<id>"
 * to the message (retry.c), which goes into messages under that key too —
 * decide sees the id differ and records the event in the history only. Two
 * finds by _id, only for such ids (rare: late events, or events before their
 * message exists). */
static int load_earlier(struct ms_tick *t, const bson_t *const *parsed, size_t n,
                        bson_t *messages, struct sd_error *err)
{
    /* The keys messages holds, sorted once and searched per event: a find in
     * the document per event scans it, and a batch has thousands of each
     * (quadratic: it had doubled the tick's CPU). Keys are compared as they
     * are: SendGrid ids may hold dots. */
    size_t nk = 0, kcap = 64;
    const char **known = malloc(kcap * sizeof *known);
    bson_iter_t m;
    if (bson_iter_init(&m, messages))
        while (bson_iter_next(&m)) {
            if (nk == kcap)
                known = realloc(known, (kcap *= 2) * sizeof *known);
            known[nk++] = bson_iter_key(&m);
        }
    qsort(known, nk, sizeof *known, cmp_str);
    size_t cap = 16, k = 0;
    char **keys = malloc(cap * sizeof *keys);
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it, evs;
        if (!bson_iter_init_find(&it, parsed[i], "events") || !bson_iter_recurse(&it, &evs))
            continue;
        while (bson_iter_next(&evs)) {
            bson_t ev;
            if (!bson_iter_child(&evs, &ev))
                continue;
            const char *provider = bson_field_utf8(&ev, "provider"),
                       *pmid = bson_field_utf8(&ev, "provider_message_id");
            char key[240];
            if (!provider || !pmid)
                continue;
            snprintf(key, sizeof key, "%s:%s", provider, pmid);
            const char *probe = key;
            if (bsearch(&probe, known, nk, sizeof *known, cmp_str))
                continue;
            if (k == cap)
                keys = realloc(keys, (cap *= 2) * sizeof *keys);
            keys[k++] = strdup(key);
        }
    }
    free(known); /* before messages grows: the keys point into it */
    qsort(keys, k, sizeof *keys, cmp_str);
    size_t distinct = 0;
    for (size_t i = 0; i < k; i++) {
        if (distinct && !strcmp(keys[i], keys[distinct - 1]))
            free(keys[i]);
        else
            keys[distinct++] = keys[i];
    }
    k = distinct;
    int rc = 0;
    bson_t **maps = NULL, **docs = NULL;
    size_t nm = 0, nd = 0;
    if (k) {
        bson_value_t *values = calloc(k, sizeof *values);
        for (size_t i = 0; i < k; i++) {
            values[i].value_type = BSON_TYPE_UTF8;
            values[i].value.v_utf8.str = keys[i];
            values[i].value.v_utf8.len = (uint32_t)strlen(keys[i]);
        }
        struct store_find_in q = {.store = t->env->store, .client = t->env->mongo,
                                  .db = t->env->db, .coll = COLL_MESSAGE_SIDS, .field = "_id"};
        rc = store_find_in(&q, values, k, &maps, &nm, err);
        free(values);
    }
    if (rc == 0 && nm) {
        bson_value_t *values = calloc(nm, sizeof *values);
        size_t nv = 0;
        for (size_t i = 0; i < nm; i++) {
            bson_iter_t it;
            if (bson_iter_init_find(&it, maps[i], "message_id"))
                bson_value_copy(bson_iter_value(&it), &values[nv++]);
        }
        struct store_find_in q = {.store = t->env->store, .client = t->env->mongo,
                                  .db = t->env->db, .coll = COLL_MESSAGE, .field = "_id"};
        rc = store_find_in(&q, values, nv, &docs, &nd, err);
        for (size_t i = 0; i < nv; i++)
            bson_value_destroy(&values[i]);
        free(values);
    }
    for (size_t i = 0; rc == 0 && i < nm; i++) {
        bson_iter_t a, b;
        if (!bson_iter_init_find(&a, maps[i], "message_id"))
            continue;
        for (size_t j = 0; j < nd; j++)
            if (bson_iter_init_find(&b, docs[j], "_id") &&
                bson_iter_type(&a) == bson_iter_type(&b) &&
                bson_iter_type(&a) == BSON_TYPE_OID &&
                bson_oid_equal(bson_iter_oid(&a), bson_iter_oid(&b))) {
                BSON_APPEND_DOCUMENT(messages, bson_field_utf8(maps[i], "_id"), docs[j]);
                break;
            }
    }
    if (rc)
        sd_error_prefix(err, "reading the messages of earlier provider ids (%s)",
                        COLL_MESSAGE_SIDS);
    store_docs_free(maps, nm);
    store_docs_free(docs, nd);
    for (size_t i = 0; i < k; i++)
        free(keys[i]);
    free(keys);
    return rc;
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
    if (rc == 0)
        rc = load_earlier(t, parsed, n, messages, err);
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
    bson_t filter = BSON_INITIALIZER;
    store_append_in_of(&filter, "_id", updates, n, "message_id");
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
        bson_error_t berr;
        int64_t matched;
        bool ok = store_bulk_run(bulk, &matched, &berr);
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
