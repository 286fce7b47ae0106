/* find_in.h — the documents whose `field` equals one of a list of values,
 * read the way each database serves by index (README, Compatibility):
 *   MongoDB: one {field: {$in: [...]}} per 5,000 values;
 *   FerretDB 1.24: never pushes $in down (it decodes the whole collection and
 *     compares each document with the whole list in Go: 50,000 documents,
 *     3 s for 100 values), while an equality is served by the index in about
 *     a millisecond — so one equality find per value, STORE_FIND_THREADS at a
 *     time, each helper thread on a pooled client of its own.
 * Chosen by store_is_ferretdb(): the same documents either way.
 *
 * Ownership: the query's pointers are borrowed; found documents are appended
 * to *docs as owned copies (*nd counts them and may start non-zero), freed by
 * store_docs_free. The values should be distinct (each costs a find on
 * FerretDB). Database commands sent by helper threads are added to the
 * calling thread's count. Errors follow core/error.h: the first failing find
 * fails the call; what was found is still appended.
 */
#ifndef SD_STORE_FIND_IN_H
#define SD_STORE_FIND_IN_H

#include <mongoc/mongoc.h>

#include "core/error.h"
#include "store/mongo.h"

#define STORE_FIND_THREADS 4
#define STORE_FIND_IN_CHUNK 5000

struct store_find_in {
    struct store *store;      /* pooled clients for helper threads; NULL: this thread only */
    mongoc_client_t *client;  /* the caller's */
    const char *db;
    const char *coll;
    const char *field;
    const bson_t *extra;      /* further conditions, ANDed; may be NULL */
    const bson_t *opts;       /* find options (a projection); may be NULL */
};

int store_find_in(const struct store_find_in *q, const bson_value_t *values, size_t n,
                  bson_t ***docs, size_t *nd, struct sd_error *err);

/* Appends {field: {$in: [values...]}} to filter: for a query that must be one
 * $in on both databases (a handful of values, no index to serve them). */
void store_append_in(bson_t *filter, const char *field, const bson_value_t *values, size_t n);

/* The same with the values read from docs: {field: {$in: [docs[i].key ...]}},
 * documents without `key` left out. Returns how many values went in. */
size_t store_append_in_of(bson_t *filter, const char *field, bson_t *const *docs, size_t n,
                          const char *key);

#endif
