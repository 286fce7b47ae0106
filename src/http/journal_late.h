/* journal_late.h — the webhook journal's copies the door could not write at
 * once, written later (journal_late.c).
 *
 * When MongoDB does not answer the door stores a request in the stream alone
 * and answers 204; were Redis to lose its data before MongoDB came back, the
 * event would be gone (found by the chaos run, seed 22). The copy waits here,
 * in memory, and is written as soon as MongoDB answers: the repair sweep of
 * message-status then appends it again if its entry is gone, and it applies
 * once (by its events' ids). Lost only if this process ends before MongoDB
 * came back, with Redis's data gone too.
 *
 * Ownership: journal_late_start borrows the store for the writer's life;
 * journal_late_add copies the document. Thread-safe. */
#ifndef SD_HTTP_JOURNAL_LATE_H
#define SD_HTTP_JOURNAL_LATE_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>

#include "store/mongo.h"

/* What waits at most: past either bound a copy is refused (the stream's is
 * then the only one, as before). */
#define JOURNAL_LATE_MAX_DOCS 10000
#define JOURNAL_LATE_MAX_BYTES (16u * 1024 * 1024)

struct journal_late;

/* Starts the writer thread; NULL when it cannot (out of memory, no thread):
 * then journal_late_add refuses every copy. */
struct journal_late *journal_late_start(struct store *journal);

/* Queues a copy of doc (a journal document, its _id the request's digest);
 * false if refused (full, or l is NULL). */
bool journal_late_add(struct journal_late *l, const bson_t *doc);

/* Tries once more to write what waits (within the store's bound), then stops
 * the thread and frees everything; copies still waiting are logged as lost.
 * NULL is a no-op. */
void journal_late_stop(struct journal_late *l);

#endif
