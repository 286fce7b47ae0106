/* The indexes behind every query the jobs make, so that a tick's cost follows
 * its due work, not the collection size (SPEC §3). Names are prefixed
 * "supportd_" so operators can tell ours from the platform's. No TTL or partial
 * indexes: FerretDB 1.x answers NotImplemented to both (reference/ferretdb.md). */
#include <stdio.h>

#include "core/log.h"
#include "store/mongo.h"

struct index_spec {
    const char *collection;
    const char *name;
    const char *keys_json;
    bool unique;
};

static const struct index_spec indexes[] = {
    /* snooze: status = snoozed AND snooze.until <= now */
    {COLL_CONVERSATION, "supportd_snooze_due", "{\"status\": 1, \"snooze.until\": 1}", false},
    /* snooze: snoozed tickets changed since the last tick */
    {COLL_CONVERSATION, "supportd_status_updated", "{\"status\": 1, \"updated_at\": 1}", false},
    /* snooze: wake-ups whose queue and outbox effects are not written yet */
    {COLL_CONVERSATION, "supportd_unsnooze_pending", "{\"supportd_unsnooze_pending\": 1}", false},
    /* notification: changed since the checkpoint */
    {COLL_CONVERSATION, "supportd_updated_at", "{\"updated_at\": 1}", false},
    /* notification: deadlines found without scanning (the records hold them;
     * the conversation's index serves what earlier builds wrote there) */
    {COLL_NOTIFY_STATE, "supportd_sla_due", "{\"sla_pending\": 1, \"sla.next_due\": 1}", false},
    {COLL_CONVERSATION, "supportd_sla_next_due", "{\"sla.next_due\": 1}", false},
    /* notification: a conversation's new customer messages, counted */
    {COLL_MESSAGE, "supportd_conversation_direction", "{\"conversation_id\": 1, \"direction\": 1}", false},
    /* message-status: webhook events matched by provider id */
    {COLL_MESSAGE, "supportd_provider_message_id", "{\"provider_message_id\": 1}", false},
    /* message-status: retries due */
    {COLL_MESSAGE, "supportd_retry_due", "{\"status\": 1, \"next_retry_at\": 1}", false},
    /* message-status: what reconcile can poll, least recently polled first */
    {COLL_MESSAGE, "supportd_reconcile",
     "{\"provider\": 1, \"status\": 1, \"supportd_polled_at\": 1, \"updated_at\": 1}", false},
    /* outbox: once-only delivery rests on this unique key */
    {COLL_NOTIFICATION, "supportd_key", "{\"key\": 1}", true},
    {COLL_NOTIFICATION, "supportd_pending", "{\"status\": 1, \"next_attempt_at\": 1}", false},
    /* communication-check: one open alert per channel and check */
    {COLL_ALERT, "supportd_key", "{\"key\": 1}", true},
    {COLL_ALERT, "supportd_status", "{\"status\": 1}", false},
    /* communication-check: alerts whose notifications are not in the outbox yet */
    {COLL_ALERT, "supportd_notify_pending", "{\"supportd_notify_pending\": 1}", false},
    {COLL_CHANNEL, "supportd_active", "{\"active\": 1}", false},
    /* message-status: the webhook journal's repair sweep, oldest first, by pages */
    {COLL_STATUS_INBOX, "supportd_received_at", "{\"received_at\": 1, \"_id\": 1}", false},
};

/* 85 IndexOptionsConflict / 86 IndexKeySpecsConflict: an equivalent index is
 * already there under another name or options; it serves our queries. */
static bool is_conflict(const bson_error_t *e) { return e->code == 85 || e->code == 86; }

int store_ensure_indexes(struct store *s, struct sd_error *err)
{
    mongoc_client_t *client = store_pop(s);
    int rc = 0;
    for (size_t i = 0; i < sizeof indexes / sizeof *indexes && rc == 0; i++) {
        const struct index_spec *ix = &indexes[i];
        bson_error_t berr;
        bson_t *keys = bson_new_from_json((const uint8_t *)ix->keys_json, -1, &berr);
        bson_t cmd = BSON_INITIALIZER, list, spec, reply;
        BSON_APPEND_UTF8(&cmd, "createIndexes", ix->collection);
        BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &list);
        BSON_APPEND_DOCUMENT_BEGIN(&list, "0", &spec);
        BSON_APPEND_DOCUMENT(&spec, "key", keys);
        BSON_APPEND_UTF8(&spec, "name", ix->name);
        if (ix->unique)
            BSON_APPEND_BOOL(&spec, "unique", true);
        bson_append_document_end(&list, &spec);
        bson_append_array_end(&cmd, &list);
        bool ok = mongoc_client_write_command_with_opts(client, store_db(s), &cmd, NULL, &reply,
                                                        &berr);
        if (!ok && is_conflict(&berr)) {
            log_msg(LOG_WARN, NULL, "index.conflict", NULL,
                    "index %s on %s: an equivalent index exists already (%s); using it",
                    ix->name, ix->collection, store_errmsg(&berr));
        } else if (!ok) {
            rc = sd_error_set(err, "creating index %s on %s: %s", ix->name, ix->collection,
                              store_errmsg(&berr));
        }
        bson_destroy(keys);
        bson_destroy(&cmd);
        bson_destroy(&reply);
    }
    store_push(s, client);
    return rc;
}
