/* mongo.h — the MongoDB side: a client pool for the configured database, and
 * the indexes supportd needs, created at start-up.
 *
 * mongoc reconnects by itself: a client whose server went away fails its
 * operations (after serverSelectionTimeoutMS, 5 s unless the URL says
 * otherwise) and works again once the server is back, so a database restart
 * costs failed ticks, never the process.
 *
 * Ownership: store_new returns a store freed by store_destroy. store_pop lends a
 * client that must go back with store_push from the same thread.
 * Errors follow core/error.h.
 */
#ifndef SD_STORE_MONGO_H
#define SD_STORE_MONGO_H

#include <mongoc/mongoc.h>

#include "core/error.h"

/* Collection names (SPEC §2). */
#define COLL_CONVERSATION "conversation-conversation"
#define COLL_MESSAGE "conversation-message"
#define COLL_ROOM "conversation-room"
#define COLL_CHANNEL "conversation-channel"
#define COLL_ALERT "conversation-alert"
#define COLL_NOTIFICATION "conversation-notification"
/* supportd's own: the HTTP door's copy of each webhook request it accepted,
 * until message-status has applied it (README, The message-status job). */
#define COLL_STATUS_INBOX "conversation-status-inbox"
#define COLL_MESSAGE_SIDS "conversation-message-sids"
#define COLL_NOTIFY_STATE "conversation-notify-state" /* the notification job's records */

struct store;

struct store *store_new(const char *url, const char *db, struct sd_error *err);

/* The same with every wait bounded by bound_ms (server selection, connect and
 * socket timeouts; lower ones the URL sets are kept): for callers that must
 * answer within a deadline whatever the database does (the HTTP door). */
struct store *store_new_bounded(const char *url, const char *db, int32_t bound_ms,
                                struct sd_error *err);
void store_destroy(struct store *s);

mongoc_client_t *store_pop(struct store *s);
void store_push(struct store *s, mongoc_client_t *client);
const char *store_db(const struct store *s);

/* Database commands this thread has sent (counted by mongoc's APM started
 * callback), so a tick can report its own. */
uint64_t store_thread_commands(void);

/* Adds commands a helper thread sent on this thread's behalf (the tick's
 * count covers the work it farmed out). */
void store_thread_commands_add(uint64_t n);

/* Runs a find and appends every document to *docs (owned copies; *n counts
 * them, and may start non-zero). Free with store_docs_free. */
int store_find_all(mongoc_collection_t *coll, const bson_t *filter, const bson_t *opts,
                   bson_t ***docs, size_t *n, struct sd_error *err);
void store_docs_free(bson_t **docs, size_t n);

/* The documents {status, field: {op: bound_ms}} (op "$lte", "$lt", ...), the
 * oldest `field` first, at most `limit`: the queue-shaped query of the outbox
 * and the message retries, served by a {status, field} index. Appends to
 * *docs as store_find_all does. */
int store_find_oldest(mongoc_collection_t *coll, const char *status, const char *field,
                      const char *op, int64_t bound_ms, int64_t limit, bson_t ***docs, size_t *n,
                      struct sd_error *err);

/* True when the server is FerretDB (its buildInfo carries ferretdbVersion).
 * Asked once per process; false when it cannot be asked. Only for choosing
 * between query shapes that both databases answer alike but serve at very
 * different cost (README, Compatibility): never for correctness.
 * QM_SUPPORT_TEST_FLAVOR=mongodb|ferretdb (tests only) overrides the answer. */
bool store_is_ferretdb(mongoc_client_t *client);

/* The message of a mongoc error, for an sd_error. A connection-level failure
 * (server selection, the network, TLS, authentication) also names MONGO_DB_URL
 * and what it points at (hosts, TLS, user, authSource; never the password) so
 * the operator knows which setting to check. The string lives in a thread-local
 * buffer (or is e->message): use it before the next call on the same thread. */
const char *store_errmsg(const bson_error_t *e);

/* Adds one document's update to a bulk: as update_many on a filter that
 * holds its _id (so at most that document), never update_one — FerretDB 1.24
 * holds a PostgreSQL connection per multi:false statement until the bulk
 * ends, and a bulk of more of them than its pool (50) deadlocks the server
 * (README, Compatibility). upsert: insert when nothing matches. */
int store_bulk_update_doc(mongoc_bulk_operation_t *bulk, const bson_t *filter,
                          const bson_t *update, bool upsert, struct sd_error *err);

/* Executes a bulk (the caller still destroys it). *matched: the documents
 * its updates matched (nMatched; also after a partial failure). False, with
 * berr set, when it failed. */
bool store_bulk_run(mongoc_bulk_operation_t *bulk, int64_t *matched, bson_error_t *berr);

/* Round trip to the server ({ping: 1}). */
int store_ping(mongoc_client_t *client, const char *db, struct sd_error *err);

/* Creates every index in store/indexes.c. Idempotent; an index that already
 * exists under another name is accepted (it serves the same queries). */
int store_ensure_indexes(struct store *s, struct sd_error *err);

#endif
