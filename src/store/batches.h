/* batches.h — reading a cursor in batches: each batch decided, written and
 * finished before the next is read (the jobs' sweeps: one query, one cursor,
 * so FerretDB decodes the collection once a tick and MongoDB gets getMores
 * instead of one query per page).
 *
 * Ownership: `each` borrows the batch's
 * documents (owned copies, freed when it returns). Errors follow
 * core/error.h: the first error of `each` or of the cursor (naming `what`)
 * ends the read.
 */
#ifndef SD_STORE_BATCHES_H
#define SD_STORE_BATCHES_H

#include <mongoc/mongoc.h>
#include <stdbool.h>

#include "core/error.h"

struct store_batches {
    size_t size;        /* documents per batch */
    int max_batches;    /* a bound on one read */
    int (*each)(void *arg, bson_t **docs, size_t n, struct sd_error *err);
    /* called for every document as it is read (counting), may be NULL */
    void (*seen)(void *arg, const bson_t *doc);
    bool (*stop)(void *arg); /* checked before each batch, may be NULL */
    void *arg;
};

/* find(filter) on coll (batchSize = b->size), read in batches. *complete:
 * the cursor was read to its end (not stopped by max_batches, a stop request
 * or an error). */
int store_sweep(mongoc_collection_t *coll, const bson_t *filter, const struct store_batches *b,
                bool *complete, struct sd_error *err);

/* Appends {$or: [{f1: {op1: date v1}}, {f2: {op2: date v2}}]} to filter. */
void store_append_either(bson_t *filter, const char *f1, const char *op1, int64_t v1,
                         const char *f2, const char *op2, int64_t v2);

#endif
