/* outbox_enqueue: idempotent inserts under the unique `key` index
 * (store/indexes.c, supportd_key). An insert under a unique index is atomic on
 * MongoDB and FerretDB alike, so a key enqueued twice — by a re-run tick or by
 * two instances — exists once (SPEC §3). */
#include <stdlib.h>
#include <string.h>

#include "outbox/outbox.h"
#include "store/mongo.h"

static bool has(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key);
}

static bool string_field(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it) &&
           bson_iter_utf8(&it, NULL)[0] != '\0';
}

/* A copy of the entry with the defaults added. */
static bson_t *with_defaults(const bson_t *e, int64_t now_ms)
{
    bson_t *d = bson_new();
    if (!has(e, "_id")) {
        bson_oid_t oid;
        bson_oid_init(&oid, NULL);
        BSON_APPEND_OID(d, "_id", &oid);
    }
    bson_concat(d, e);
    if (!has(e, "status"))
        BSON_APPEND_UTF8(d, "status", "pending");
    if (!has(e, "attempts"))
        BSON_APPEND_INT32(d, "attempts", 0);
    if (!has(e, "next_attempt_at"))
        BSON_APPEND_DATE_TIME(d, "next_attempt_at", now_ms);
    if (!has(e, "created_at"))
        BSON_APPEND_DATE_TIME(d, "created_at", now_ms);
    if (!has(e, "updated_at"))
        BSON_APPEND_DATE_TIME(d, "updated_at", now_ms);
    return d;
}

/* True when every write error in the reply is a duplicate key. */
static bool only_duplicates(const bson_t *reply)
{
    bson_iter_t it, errs;
    if (!bson_iter_init_find(&it, reply, "writeErrors") || !BSON_ITER_HOLDS_ARRAY(&it))
        return false;
    if (!bson_iter_recurse(&it, &errs))
        return false;
    bool any = false;
    while (bson_iter_next(&errs)) {
        bson_iter_t code;
        if (!BSON_ITER_HOLDS_DOCUMENT(&errs) || !bson_iter_recurse(&errs, &code) ||
            !bson_iter_find(&code, "code") || bson_iter_as_int64(&code) != 11000)
            return false;
        any = true;
    }
    /* A write-concern error is a failure even when the inserts went in. */
    return any && !bson_iter_init_find(&it, reply, "writeConcernErrors");
}

int outbox_enqueue(mongoc_client_t *client, const char *db, const bson_t *const *entries,
                   size_t n, int64_t now_ms, int *inserted, struct sd_error *err)
{
    if (inserted)
        *inserted = 0;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!string_field(entries[i], "key"))
            return sd_error_set(err, "outbox entry %zu has no key", i);
        bson_iter_t k;
        if (!string_field(entries[i], "via") && bson_iter_init_find(&k, entries[i], "key"))
            return sd_error_set(err, "outbox entry %zu (key %s) has no via", i,
                                bson_iter_utf8(&k, NULL));
    }
    bson_t **docs = calloc(n, sizeof *docs);
    if (!docs)
        return sd_error_set(err, "out of memory");
    for (size_t i = 0; i < n; i++)
        docs[i] = with_defaults(entries[i], now_ms);
    mongoc_collection_t *coll = mongoc_client_get_collection(client, db, COLL_NOTIFICATION);
    bson_t opts = BSON_INITIALIZER, reply;
    BSON_APPEND_BOOL(&opts, "ordered", false);
    bson_error_t berr;
    bool ok = mongoc_collection_insert_many(coll, (const bson_t **)docs, n, &opts, &reply, &berr);
    int rc = 0;
    if (!ok && !only_duplicates(&reply))
        rc = sd_error_set(err, "outbox: inserting %zu entries into %s: %s", n, COLL_NOTIFICATION,
                          store_errmsg(&berr));
    bson_iter_t it;
    if (rc == 0 && inserted && bson_iter_init_find(&it, &reply, "insertedCount"))
        *inserted = (int)bson_iter_as_int64(&it);
    bson_destroy(&reply);
    bson_destroy(&opts);
    mongoc_collection_destroy(coll);
    for (size_t i = 0; i < n; i++)
        bson_destroy(docs[i]);
    free(docs);
    return rc;
}
