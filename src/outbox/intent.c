/* intent — effects parked on a document, carried out, cleared (see intent.h). */
#include "outbox/intent.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "outbox/outbox.h"
#include "store/find_in.h"
#include "store/mongo.h"

void intent_park(bson_t *into, const struct intent_marker *m, const bson_t *content)
{
    BSON_APPEND_BOOL(into, m->flag, true);
    if (strcmp(m->field, m->entries) == 0)
        BSON_APPEND_ARRAY(into, m->field, content);
    else
        BSON_APPEND_DOCUMENT(into, m->field, content);
}

/* The outbox entries at path in doc: how many, and (with views) a read-only
 * view of each into views[] and its address into entries[]. */
static size_t entries_at(const bson_t *doc, const char *path, bson_t *views,
                         const bson_t **entries)
{
    bson_iter_t it, e;
    size_t k = 0;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &e)) {
        while (bson_iter_next(&e)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&e))
                continue;
            if (views) {
                bson_iter_child(&e, &views[k]);
                entries[k] = &views[k];
            }
            k++;
        }
    }
    return k;
}

int intent_enqueue(mongoc_client_t *mongo, const char *db, const bson_t *const *docs, size_t n,
                   const char *path, int64_t now_ms, struct intent_counts *c,
                   struct sd_error *err)
{
    /* Counted first: a view must not move once made (bson_views_new). */
    size_t cap = 0, m = 0;
    for (size_t i = 0; i < n; i++)
        cap += entries_at(docs[i], path, NULL, NULL);
    if (cap == 0)
        return 0;
    const bson_t **entries = calloc(cap, sizeof *entries);
    bson_t *views = bson_views_new(cap);
    for (size_t i = 0; i < n; i++)
        m += entries_at(docs[i], path, views + m, entries + m);
    int inserted = 0;
    int rc = outbox_enqueue(mongo, db, entries, m, now_ms, &inserted, err);
    if (rc == 0) {
        c->enqueued += inserted;
        c->duplicates += (int64_t)m - inserted;
    }
    free(entries);
    bson_free(views);
    return rc;
}

int intent_enqueue_array(mongoc_client_t *mongo, const char *db, const bson_t *array,
                         const char *path, int64_t now_ms, struct intent_counts *c,
                         struct sd_error *err)
{
    bson_iter_t it;
    size_t n = 0, k = 0;
    if (bson_iter_init(&it, array))
        while (bson_iter_next(&it))
            n++;
    bson_t *views = bson_views_new(n);
    const bson_t **docs = calloc(n + 1, sizeof *docs);
    if (bson_iter_init(&it, array))
        while (bson_iter_next(&it) && k < n)
            if (bson_iter_child(&it, &views[k])) {
                docs[k] = &views[k];
                k++;
            }
    int rc = intent_enqueue(mongo, db, docs, k, path, now_ms, c, err);
    free(docs);
    bson_free(views);
    return rc;
}

/* Step 3 for a batch: the markers of docs go, where still set. */
static int clear(const struct intent_finish *f, bson_t **docs, size_t n, struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, unset;
    store_append_in_of(&filter, "_id", docs, n, "_id");
    BSON_APPEND_BOOL(&filter, f->marker->flag, true);
    BSON_APPEND_DOCUMENT_BEGIN(&update, "$unset", &unset);
    BSON_APPEND_UTF8(&unset, f->marker->field, "");
    BSON_APPEND_UTF8(&unset, f->marker->flag, "");
    bson_append_document_end(&update, &unset);
    bson_error_t berr;
    int rc = 0;
    if (!mongoc_collection_update_many(f->coll, &filter, &update, NULL, NULL, &berr))
        rc = sd_error_set(err, "clearing %s: %s", f->what, store_errmsg(&berr));
    bson_destroy(&filter);
    bson_destroy(&update);
    return rc;
}

int intent_finish(const struct intent_finish *f, struct intent_counts *c, struct sd_error *err)
{
    for (int round = 0; round < f->max_batches && !(f->stop && f->stop(f->arg)); round++) {
        bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
        BSON_APPEND_BOOL(&filter, f->marker->flag, true);
        BSON_APPEND_INT64(&opts, "limit", f->batch);
        BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
        BSON_APPEND_INT32(&proj, f->marker->field, 1);
        bson_append_document_end(&opts, &proj);
        bson_t **docs = NULL;
        size_t n = 0;
        int rc = store_find_all(f->coll, &filter, &opts, &docs, &n, err);
        bson_destroy(&filter);
        bson_destroy(&opts);
        if (rc == 0 && n && f->before)
            rc = f->before(f->arg, docs, n, err);
        if (rc == 0 && n)
            rc = intent_enqueue(f->mongo, f->db, (const bson_t *const *)docs, n,
                                f->marker->entries, f->now_ms, c, err);
        /* Markers go only once everything they carried is done. */
        if (rc == 0 && n)
            rc = clear(f, docs, n, err);
        store_docs_free(docs, n);
        if (rc || n < (size_t)f->batch)
            return rc;
    }
    return 0;
}
