/* outbox_deliver: claim → send → record, one due entry at a time (the
 * contract is in outbox.h). Updates filter on {_id, status: "pending"} so a
 * late writer never turns a finished entry back; the claim, not the update,
 * is what keeps two deliverers apart (FerretDB updates are not atomic). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "outbox/claim.h"
#include "outbox/dispatch.h"
#include "outbox/outbox.h"
#include "providers/http.h"
#include "store/mongo.h"

int64_t outbox_backoff_ms(int attempts, double u)
{
    return http_backoff_ms(attempts < 1 ? 0 : attempts - 1, 60 * 1000, 3600 * 1000, u);
}

/* The entry's _id as text, for claim keys and log lines. */
static bool id_text(const bson_t *doc, char *buf, size_t size, bson_value_t *id)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, "_id"))
        return false;
    bson_value_copy(bson_iter_value(&it), id);
    if (BSON_ITER_HOLDS_OID(&it))
        bson_oid_to_string(bson_iter_oid(&it), buf);
    else if (BSON_ITER_HOLDS_UTF8(&it))
        snprintf(buf, size, "%s", bson_iter_utf8(&it, NULL));
    else if (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it))
        snprintf(buf, size, "%lld", (long long)bson_iter_as_int64(&it));
    else {
        bson_value_destroy(id);
        return false;
    }
    return true;
}

struct item {
    bson_t *entry;
    bson_value_t id;
    char id_text[200];
    const char *key;
    int attempts;          /* before this delivery */
    struct outbox_claim claim;
};

static const char *entry_str(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)
               ? bson_iter_utf8(&it, NULL)
               : "";
}

static int entry_attempts(const bson_t *doc)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, "attempts") ? (int)bson_iter_as_int64(&it) : 0;
}

/* update_one({_id, status: "pending"}, update); *modified may be NULL. */
static int update_pending(mongoc_collection_t *coll, const struct item *it, const bson_t *update,
                          int64_t *modified, struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, reply;
    BSON_APPEND_VALUE(&filter, "_id", &it->id);
    BSON_APPEND_UTF8(&filter, "status", "pending");
    bson_error_t berr;
    bool ok = mongoc_collection_update_one(coll, &filter, update, NULL, &reply, &berr);
    bson_iter_t r;
    if (ok && modified)
        *modified = bson_iter_init_find(&r, &reply, "modifiedCount") ? bson_iter_as_int64(&r) : 0;
    bson_destroy(&reply);
    bson_destroy(&filter);
    if (!ok)
        return sd_error_set(err, "updating outbox entry %s: %s", it->id_text, berr.message);
    return 0;
}

/* One line per entry outcome, with the entry's id and key as fields. */
static void log_entry(struct outbox_ctx *ctx, enum log_level level, const char *event,
                      const struct item *it, const char *provider, const char *message_id,
                      const struct provider_status *st, const char *text)
{
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "entry_id", it->id_text);
    BSON_APPEND_UTF8(&f, "key", it->key);
    BSON_APPEND_UTF8(&f, "via", entry_str(it->entry, "via"));
    if (provider)
        BSON_APPEND_UTF8(&f, "provider", provider);
    if (message_id && *message_id)
        BSON_APPEND_UTF8(&f, "provider_message_id", message_id);
    if (st && st->code[0])
        BSON_APPEND_UTF8(&f, "code", st->code);
    if (st && st->http_status)
        BSON_APPEND_INT32(&f, "http_status", (int32_t)st->http_status);
    log_msg(level, ctx->log, event, &f, "outbox entry %s %s", it->id_text, text);
    bson_destroy(&f);
}

/* Marks the entry sent. inc_attempt: this delivery counts as an attempt. */
static int record_sent(mongoc_collection_t *coll, const struct item *it, const char *provider,
                       const char *message_id, int64_t now_ms, bool inc_attempt,
                       int64_t *modified, struct sd_error *err)
{
    bson_t u = BSON_INITIALIZER, set, inc, unset;
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_UTF8(&set, "status", "sent");
    BSON_APPEND_DATE_TIME(&set, "sent_at", now_ms);
    BSON_APPEND_DATE_TIME(&set, "updated_at", now_ms);
    BSON_APPEND_UTF8(&set, "provider", provider);
    if (message_id && *message_id)
        BSON_APPEND_UTF8(&set, "provider_message_id", message_id);
    else
        BSON_APPEND_NULL(&set, "provider_message_id");
    BSON_APPEND_NULL(&set, "error");
    bson_append_document_end(&u, &set);
    if (inc_attempt) {
        BSON_APPEND_DOCUMENT_BEGIN(&u, "$inc", &inc);
        BSON_APPEND_INT32(&inc, "attempts", 1);
        bson_append_document_end(&u, &inc);
    }
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$unset", &unset);
    BSON_APPEND_UTF8(&unset, "send_started_at", "");
    bson_append_document_end(&u, &unset);
    int rc = update_pending(coll, it, &u, modified, err);
    bson_destroy(&u);
    return rc;
}

static void append_error(bson_t *set, const struct provider_status *st, const char *message)
{
    bson_t e;
    char *clean = log_redact_dup(message);
    BSON_APPEND_DOCUMENT_BEGIN(set, "error", &e);
    BSON_APPEND_UTF8(&e, "code", st->code[0] ? st->code : "error");
    BSON_APPEND_UTF8(&e, "message", clean ? clean : "");
    if (st->http_status)
        BSON_APPEND_INT32(&e, "http_status", (int32_t)st->http_status);
    bson_append_document_end(set, &e);
    free(clean);
}

/* A failed attempt: reschedule (transient) or give up (permanent, or too many). */
static void record_failure(struct outbox_ctx *ctx, mongoc_collection_t *coll, struct item *it,
                           const struct outbox_message *msg, const struct provider_status *st,
                           const struct sd_error *why, int64_t now_ms, struct outbox_stats *stats)
{
    int attempts = it->attempts + 1;
    bool give_up = st->cls != PROVIDER_TRANSIENT || attempts >= OUTBOX_MAX_ATTEMPTS;
    char message[600];
    if (st->cls == PROVIDER_TRANSIENT && give_up)
        snprintf(message, sizeof message, "gave up after %d attempts: %s", attempts,
                 why->message);
    else
        snprintf(message, sizeof message, "%s", why->message);

    bson_t u = BSON_INITIALIZER, set, inc, unset;
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_DATE_TIME(&set, "updated_at", now_ms);
    append_error(&set, st, message);
    int64_t wait = 0;
    if (give_up) {
        BSON_APPEND_UTF8(&set, "status", "failed");
        BSON_APPEND_DATE_TIME(&set, "failed_at", now_ms);
    } else {
        wait = outbox_backoff_ms(attempts, http_random_unit());
        if (st->retry_after_ms > wait)
            wait = st->retry_after_ms;
        BSON_APPEND_DATE_TIME(&set, "next_attempt_at", now_ms + wait);
    }
    bson_append_document_end(&u, &set);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$inc", &inc);
    BSON_APPEND_INT32(&inc, "attempts", 1);
    bson_append_document_end(&u, &inc);
    /* The request provably never got through: no lookup needed next time. */
    if (msg && msg->via == VIA_SMS && !st->maybe_accepted) {
        BSON_APPEND_DOCUMENT_BEGIN(&u, "$unset", &unset);
        BSON_APPEND_UTF8(&unset, "send_started_at", "");
        bson_append_document_end(&u, &unset);
    }
    struct sd_error uerr;
    if (update_pending(coll, it, &u, NULL, &uerr))
        log_msg(LOG_ERROR, ctx->log, "outbox.update", NULL, "%s", uerr.message);
    bson_destroy(&u);

    const char *provider = msg ? msg->provider : NULL;
    if (give_up) {
        stats->failed++;
        char text[700];
        snprintf(text, sizeof text, "failed: %s", message);
        log_entry(ctx, LOG_ERROR, "outbox.failed", it, provider, NULL, st, text);
    } else {
        stats->retried++;
        char text[700];
        snprintf(text, sizeof text, "will be retried: %s (attempt %d, next in %lld s)", message,
                 attempts, (long long)(wait / 1000));
        log_entry(ctx, LOG_WARN, "outbox.retry", it, provider, NULL, st, text);
    }
}

static void record_accepted(struct outbox_ctx *ctx, mongoc_collection_t *coll, struct item *it,
                            const char *provider, const char *message_id, bool found_later,
                            int64_t now_ms, struct outbox_stats *stats)
{
    struct sd_error e;
    /* Redis first: from here on no deliverer sends this entry again, even if
     * we die before MongoDB has the news. */
    if (claim_mark_sent(ctx->redis, &it->claim, provider, message_id, OUTBOX_SENT_MARK_TTL_MS, &e))
        log_msg(LOG_ERROR, ctx->log, "outbox.claim", NULL, "%s", e.message);
    if (record_sent(coll, it, provider, message_id, now_ms, !found_later, NULL, &e))
        log_msg(LOG_ERROR, ctx->log, "outbox.update", NULL, "%s (the send is recorded in Redis)",
                e.message);
    if (found_later)
        stats->recovered++;
    else
        stats->sent++;
    log_entry(ctx, LOG_INFO, found_later ? "outbox.recovered" : "outbox.sent", it, provider,
              message_id, NULL, found_later ? "had reached the provider already" : "sent");
}

/* Re-reads the entry under our claim: still pending and due? */
static bool still_due(mongoc_collection_t *coll, struct item *it, int64_t now_ms)
{
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_VALUE(&filter, "_id", &it->id);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, NULL, NULL);
    const bson_t *doc;
    bool due = false;
    if (mongoc_cursor_next(cur, &doc)) {
        bson_iter_t t;
        due = strcmp(entry_str(doc, "status"), "pending") == 0 &&
              bson_iter_init_find(&t, doc, "next_attempt_at") &&
              (!BSON_ITER_HOLDS_DATE_TIME(&t) || bson_iter_date_time(&t) <= now_ms);
        if (due) {
            bson_destroy(it->entry);
            it->entry = bson_copy(doc);
            it->key = entry_str(it->entry, "key");
            it->attempts = entry_attempts(it->entry);
        }
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    return due;
}

static int mark_send_started(mongoc_collection_t *coll, struct item *it, int64_t now_ms,
                             struct sd_error *err)
{
    bson_t u = BSON_INITIALIZER, set;
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_DATE_TIME(&set, "send_started_at", now_ms);
    BSON_APPEND_DATE_TIME(&set, "updated_at", now_ms);
    bson_append_document_end(&u, &set);
    int rc = update_pending(coll, it, &u, NULL, err);
    bson_destroy(&u);
    return rc;
}

/* Under our claim: prepare, maybe look up, send, record. */
static void deliver_claimed(struct outbox_ctx *ctx, mongoc_collection_t *coll, struct item *it,
                            int64_t now_ms, struct outbox_stats *stats)
{
    struct outbox_message msg;
    struct provider_status st;
    struct sd_error err = {""};
    char message_id[160] = "";
    if (outbox_message_prepare(ctx, it->entry, &msg, &st, &err)) {
        record_failure(ctx, coll, it, &msg, &st, &err, now_ms, stats);
        outbox_message_free(&msg);
        return;
    }
    if (msg.via == VIA_SMS && msg.send_started_at) {
        bool found = false;
        if (outbox_message_find_sent(ctx, &msg, &found, message_id, sizeof message_id, &st,
                                     &err)) {
            /* Cannot tell whether it went out: do not send blind. */
            st.cls = PROVIDER_TRANSIENT;
            st.maybe_accepted = true;
            sd_error_prefix(&err, "checking whether an earlier send arrived");
            record_failure(ctx, coll, it, &msg, &st, &err, now_ms, stats);
            outbox_message_free(&msg);
            return;
        }
        if (found) {
            record_accepted(ctx, coll, it, msg.provider, message_id, true, now_ms, stats);
            outbox_message_free(&msg);
            return;
        }
    }
    /* Wall-clock time, not the tick's (maybe --now) time: it is compared with
     * Twilio's date_created. */
    if (msg.via == VIA_SMS && mark_send_started(coll, it, clock_now_ms(), &err)) {
        provider_status_init(&st);
        st.cls = PROVIDER_TRANSIENT;
        snprintf(st.code, sizeof st.code, "database");
        record_failure(ctx, coll, it, &msg, &st, &err, now_ms, stats);
        outbox_message_free(&msg);
        return;
    }
    if (outbox_message_send(ctx, &msg, now_ms, message_id, sizeof message_id, &st, &err) == 0) {
        if (!message_id[0] && msg.via == VIA_SMS) {
            /* Accepted with an unreadable answer: ask Twilio for the SID, so
             * status callbacks can still be matched. */
            struct outbox_message since = msg;
            struct provider_status lst;
            struct sd_error lerr;
            bool found = false;
            since.send_started_at = clock_now_ms();
            outbox_message_find_sent(ctx, &since, &found, message_id, sizeof message_id, &lst,
                                     &lerr);
        }
        if (!message_id[0]) /* accepted, but the answer lacked the id */
            log_entry(ctx, LOG_WARN, "outbox.no_message_id", it, msg.provider, NULL, &st,
                      "was accepted but the provider's answer carried no message id");
        record_accepted(ctx, coll, it, msg.provider, message_id, false, now_ms, stats);
    } else {
        record_failure(ctx, coll, it, &msg, &st, &err, now_ms, stats);
    }
    outbox_message_free(&msg);
}

/* -1 only when Redis cannot be asked (the batch stops). */
static int deliver_one(struct outbox_ctx *ctx, mongoc_collection_t *coll, struct item *it,
                       int64_t now_ms, struct outbox_stats *stats, struct sd_error *err)
{
    if (claim_acquire(ctx->redis, ctx->prefix, it->id_text, ctx->owner, OUTBOX_CLAIM_TTL_MS,
                      &it->claim, err))
        return -1;
    if (it->claim.state == CLAIM_TAKEN) {
        stats->skipped++;
        return 0;
    }
    if (it->claim.state == CLAIM_SENT) {
        /* A deliverer crashed between the provider's answer and MongoDB. */
        int64_t modified = 0;
        struct sd_error e;
        if (record_sent(coll, it, it->claim.sent_provider, it->claim.sent_id, now_ms, true,
                        &modified, &e))
            log_msg(LOG_ERROR, ctx->log, "outbox.update", NULL, "%s", e.message);
        if (modified > 0) {
            stats->recovered++;
            log_entry(ctx, LOG_INFO, "outbox.recovered", it, it->claim.sent_provider,
                      it->claim.sent_id, NULL, "had been sent (claim says so); recorded it");
        } else {
            stats->skipped++;
        }
        return 0;
    }
    if (still_due(coll, it, now_ms))
        deliver_claimed(ctx, coll, it, now_ms, stats);
    else
        stats->skipped++;
    /* Compare-and-delete: an accepted entry's "sent:" marker no longer holds
     * our token and stays. */
    struct sd_error e;
    if (claim_release(ctx->redis, &it->claim, &e))
        log_msg(LOG_WARN, ctx->log, "outbox.claim", NULL, "%s (expires by itself)", e.message);
    return 0;
}

int outbox_deliver(struct outbox_ctx *ctx, int64_t now_ms, int limit, struct outbox_stats *stats,
                   struct sd_error *err)
{
    if (limit <= 0)
        limit = 100;
    mongoc_collection_t *coll = mongoc_client_get_collection(ctx->mongo, ctx->db,
                                                             COLL_NOTIFICATION);
    bson_t filter = BSON_INITIALIZER, lte, opts = BSON_INITIALIZER, sort;
    BSON_APPEND_UTF8(&filter, "status", "pending");
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "next_attempt_at", &lte);
    BSON_APPEND_DATE_TIME(&lte, "$lte", now_ms);
    bson_append_document_end(&filter, &lte);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, "next_attempt_at", 1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", limit);

    /* Read the batch first: sends are slow, and a cursor held across them
     * could time out on the server. */
    struct item *items = calloc((size_t)limit, sizeof *items);
    size_t n = 0;
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
    const bson_t *doc;
    while (items && n < (size_t)limit && mongoc_cursor_next(cur, &doc)) {
        struct item *it = &items[n];
        if (!id_text(doc, it->id_text, sizeof it->id_text, &it->id)) {
            log_msg(LOG_ERROR, ctx->log, "outbox.bad_entry", NULL,
                    "skipping an outbox entry whose _id is neither an ObjectId, a string nor "
                    "an integer");
            continue;
        }
        it->entry = bson_copy(doc);
        it->key = entry_str(it->entry, "key");
        it->attempts = entry_attempts(it->entry);
        n++;
    }
    bson_error_t berr;
    int rc = 0;
    if (!items)
        rc = sd_error_set(err, "out of memory");
    else if (mongoc_cursor_error(cur, &berr))
        rc = sd_error_set(err, "outbox: querying due entries: %s", berr.message);
    mongoc_cursor_destroy(cur);
    stats->due += (int64_t)n;

    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (ctx->stop && atomic_load(ctx->stop))
            break;
        rc = deliver_one(ctx, coll, &items[i], now_ms, stats, err);
    }
    for (size_t i = 0; i < n; i++) {
        bson_destroy(items[i].entry);
        bson_value_destroy(&items[i].id);
    }
    free(items);
    bson_destroy(&filter);
    bson_destroy(&opts);
    mongoc_collection_destroy(coll);
    return rc;
}
