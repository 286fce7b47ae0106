/* fixtures.h — the JSON fixtures dry-run reads instead of MongoDB, Redis and
 * the providers.
 *
 * A fixtures folder holds one file per collection, named after it
 * (conversation-conversation.json, conversation-room.json,
 * conversation-message.json, conversation-channel.json, …), each a JSON array
 * of documents in MongoDB Extended JSON ({"$oid": …}, {"$date": …}); and
 * optionally meta.json: {"now": "<ISO 8601>", "redis_prefix": "…", …}, whose
 * "now" is used when --now is not given, so a fixture set plans the same way
 * whenever it runs. A missing collection file is an empty collection, but a
 * folder that is missing, unreadable or holds no fixture file at all is an
 * error naming it; other files in it are listed by fixtures_ignored (hidden
 * ones excepted) for the caller to warn about.
 *
 * Ownership: fixtures_load returns a set freed by fixtures_destroy; the
 * documents it lends stay valid until then. Errors name the file and the
 * position libbson reports.
 */
#ifndef SD_JOBS_FIXTURES_H
#define SD_JOBS_FIXTURES_H

#include <bson/bson.h>
#include <stddef.h>

#include "core/error.h"

struct fixtures;

struct fixtures *fixtures_load(const char *dir, struct sd_error *err);
void fixtures_destroy(struct fixtures *f);

/* The documents of a collection (NULL, 0 when it has none). */
const bson_t *const *fixtures_docs(const struct fixtures *f, const char *collection, size_t *n);

/* The documents of a collection that keep() accepts (NULL: all), sorted by
 * _id (those without an ObjectId first): the order a plan lists them in, the
 * same on every run. A new array, NULL-terminated (the caller frees it; the
 * documents are lent as fixtures_docs lends them). */
const bson_t **fixtures_sorted(const struct fixtures *f, const char *collection,
                               bool (*keep)(const bson_t *doc), size_t *n);

/* Appends {"<_id hex>": document} to map for each document of a collection
 * whose _id is an ObjectId, as production keys what it reads by id. */
void fixtures_map_by_id(const struct fixtures *f, const char *collection, bson_t *map);

/* meta.json's "now", in ms; -1 when absent. */
int64_t fixtures_now(const struct fixtures *f);
const char *fixtures_redis_prefix(const struct fixtures *f);

/* Names in the folder that are not fixture files, sorted (borrowed). */
const char *const *fixtures_ignored(const struct fixtures *f, size_t *n);
/* A string of meta.json (e.g. the webhook keys a fixture set was signed
 * with: twilio_auth_token, sendgrid_webhook_public_key), or NULL. */
const char *fixtures_meta_str(const struct fixtures *f, const char *key);

/* Fixture files that are not collections (message-status): status-events.json
 * holds stream entries {id, provider, body, url, signature, timestamp,
 * received_at}; provider-answers.json the providers' canned answers,
 * [{probe: "<what was asked>", status: <HTTP status>, body: <answer>}] (a
 * message-status poll is "twilio.message:<sid>"; communication-check's are
 * in its README section). */
#define FIXTURE_STATUS_EVENTS "status-events"
#define FIXTURE_PROVIDER_ANSWERS "provider-answers"

#endif
