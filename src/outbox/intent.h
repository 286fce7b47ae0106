/* intent.h — effects parked on a document: the outbox entries a change causes
 * (and whatever else a job must do once for it) written into the document it
 * changes, in the same write, then carried out, then cleared.
 *
 * MongoDB and FerretDB give us no transaction between "the ticket is woken" or
 * "the alert is opened" and "its mails are queued"; a single-document write is
 * atomic on both. So a job that must not lose or repeat the effects of a
 * change does it in three steps:
 *   1. park     the write that changes the document also sets `flag: true`
 *               and `field` (the outbox entries, or a document that carries
 *               them at `entries` beside the job's other effects);
 *   2. enqueue  the outbox entries are inserted (unique keys: a repeat is a
 *               no-op), after the job's other idempotent effects;
 *   3. clear    `flag` and `field` are unset, only once step 2 succeeded.
 * A process killed at any instant leaves either the unchanged document (the
 * change is decided again next tick) or a flagged one, which the next tick
 * finds by the index on the flag (intent_finish) and finishes: step 2 again
 * is a no-op, so every effect happens and none twice. The flag is a top-level
 * boolean because FerretDB 1.x pushes only top-level equality down to
 * PostgreSQL; a nested one is decoded and filtered in Go (22.7 s against
 * 0.1 s on 200,000 conversations, scripts/bench).
 *
 * Used by snooze (supportd_unsnooze: the queue and the ticket.unsnoozed mails
 * of a woken ticket) and communication-check (supportd_notifications: the
 * mails of an opened, escalated or resolved alert). Where the decision can be
 * taken again from what is stored, nothing needs parking: notification
 * enqueues first (intent_enqueue_array) and then writes its state records,
 * which play step 3's part: a crash in between decides the same mails again.
 *
 * Ownership: nothing is kept between calls; documents are borrowed. Errors
 * follow core/error.h.
 */
#ifndef SD_OUTBOX_INTENT_H
#define SD_OUTBOX_INTENT_H

#include <bson/bson.h>
#include <mongoc/mongoc.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

/* Where a job parks its effects on its documents. */
struct intent_marker {
    const char *flag;     /* top-level boolean, indexed (store/indexes.c) */
    const char *field;    /* what is parked */
    const char *entries;  /* the outbox entries' array: field itself, or a path in it */
};

/* Outbox entries inserted, and those that were there already (a repeat). */
struct intent_counts {
    int64_t enqueued, duplicates;
};

/* Step 1, inside the write that makes the change: appends `flag: true` and
 * `field: content` to the document being built (a new document, or an
 * update's $set). content is the entries' array when m->entries is m->field,
 * else a document that holds them at m->entries. */
void intent_park(bson_t *into, const struct intent_marker *m, const bson_t *content);

/* Step 2: inserts the outbox entries found at `path` (dotted) in each of
 * docs, in one insertMany; no call when there are none. */
int intent_enqueue(mongoc_client_t *mongo, const char *db, const bson_t *const *docs, size_t n,
                   const char *path, int64_t now_ms, struct intent_counts *c,
                   struct sd_error *err);

/* The same for the documents of a BSON array (a plan's actions). */
int intent_enqueue_array(mongoc_client_t *mongo, const char *db, const bson_t *array,
                         const char *path, int64_t now_ms, struct intent_counts *c,
                         struct sd_error *err);

/* Steps 2 and 3 for every document of coll still flagged: read `batch` at a
 * time (only `field`), each batch's effects done and its flags cleared before
 * the next is read, until a batch comes back short, max_batches were read, or
 * stop says so. */
struct intent_finish {
    mongoc_client_t *mongo;
    const char *db;
    mongoc_collection_t *coll;
    const struct intent_marker *marker;
    const char *what;      /* the markers, for errors: "unsnooze markers" */
    int batch, max_batches;
    int64_t now_ms;        /* the outbox entries' now */
    /* Optional: the job's other effects of a batch, done before its entries
     * are enqueued (idempotent too); -1 stops, flags left in place. */
    int (*before)(void *arg, bson_t **docs, size_t n, struct sd_error *err);
    bool (*stop)(void *arg); /* optional */
    void *arg;
};
int intent_finish(const struct intent_finish *f, struct intent_counts *c, struct sd_error *err);

#endif
