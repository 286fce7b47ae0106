#include "store/batches.h"

#include <stdlib.h>

#include "store/mongo.h"

void store_append_either(bson_t *filter, const char *f1, const char *op1, int64_t v1,
                         const char *f2, const char *op2, int64_t v2)
{
    bson_t or, branch, cond;
    BSON_APPEND_ARRAY_BEGIN(filter, "$or", &or);
    for (int i = 0; i < 2; i++) {
        BSON_APPEND_DOCUMENT_BEGIN(&or, i ? "1" : "0", &branch);
        BSON_APPEND_DOCUMENT_BEGIN(&branch, i ? f2 : f1, &cond);
        BSON_APPEND_DATE_TIME(&cond, i ? op2 : op1, i ? v2 : v1);
        bson_append_document_end(&branch, &cond);
        bson_append_document_end(&or, &branch);
    }
    bson_append_array_end(filter, &or);
}

int store_sweep(mongoc_collection_t *coll, const bson_t *filter, const struct store_batches *b,
                bool *complete, struct sd_error *err)
{
    *complete = false;
    bson_t **docs = calloc(b->size, sizeof *docs);
    if (!docs)
        return sd_error_set(err, "out of memory");
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_INT32(&opts, "batchSize", (int32_t)b->size);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, filter, &opts, NULL);
    bson_destroy(&opts);
    const char *what = mongoc_collection_get_name(coll);
    int rc = 0;
    bool more = true;
    for (int round = 0; rc == 0 && more && round < b->max_batches && !(b->stop && b->stop(b->arg));
         round++) {
        const bson_t *doc;
        size_t n = 0;
        while (n < b->size && (more = mongoc_cursor_next(cur, &doc))) {
            docs[n++] = bson_copy(doc);
            if (b->seen)
                b->seen(b->arg, doc);
        }
        bson_error_t berr;
        if (!more && mongoc_cursor_error(cur, &berr))
            rc = sd_error_set(err, "reading %s: %s", what, store_errmsg(&berr));
        if (rc == 0 && n)
            rc = b->each(b->arg, docs, n, err);
        for (size_t i = 0; i < n; i++)
            bson_destroy(docs[i]);
    }
    *complete = rc == 0 && !more;
    mongoc_cursor_destroy(cur);
    free(docs);
    return rc;
}
