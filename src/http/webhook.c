/* webhook.c — POST /webhooks/twilio/status and /webhooks/sendgrid/events.
 *
 * The request is turned into the status-events entry SPEC §2 describes and
 * checked with the very function the message-status job applies to entries
 * (msgstatus_parse_entry): a request the job would reject is answered 403 or
 * 400 here and never stored, and one it would accept is stored before the
 * provider hears 2xx.
 *
 * Stored twice, because a provider that heard 2xx never sends it again and
 * Redis may lose its data (SPEC §3): first in the journal, MongoDB's
 * conversation-status-inbox (_id = the request's digest), then in the stream
 * (with `journal` naming that _id, so message-status deletes the copy once it
 * is done with the entry, and re-appends copies whose entry vanished). Either
 * copy is enough for 204; 503 (Twilio and SendGrid retry on 5xx) only when
 * neither could be written. A copy MongoDB did not take at once is written
 * as soon as it answers again (journal_late.h).
 *
 * Nothing of the request reaches the logs: a rejection is logged with its
 * provider, status, reason label, size and a short hash of the body (to find
 * the same request in a provider's console), at most a few lines a second.
 */
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "http/internal.h"
#include "http/journal_late.h"

/* Twilio's status callbacks carry about 30 parameters. A form with many more
 * is refused before it is parsed (the signature check parses and sorts it,
 * twice): at most this many. */
#define MAX_FORM_PARAMS 100

/* At most this many webhook.rejected lines per second; the rest are counted
 * (/metrics has every one) and summed into the next line. */
#define LOG_PER_SECOND 5

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t log_second;
static int log_used;
static long log_suppressed;

static bool may_log(long *suppressed)
{
    pthread_mutex_lock(&log_mu);
    int64_t sec = clock_now_ms() / 1000;
    if (sec != log_second) {
        log_second = sec;
        log_used = 0;
    }
    bool ok = log_used < LOG_PER_SECOND;
    if (ok) {
        log_used++;
        *suppressed = log_suppressed;
        log_suppressed = 0;
    } else {
        log_suppressed++;
    }
    pthread_mutex_unlock(&log_mu);
    return ok;
}

int webhook_classify(const char *reason, const char **label)
{
    static const struct {
        const char *prefix, *label;
        int status;
    } rules[] = {
        {"bad signature", "bad_signature", 403},
        {"missing signature", "bad_signature", 403},
        /* SendGrid signs timestamp || body: without it nothing can be verified */
        {"missing field: timestamp", "bad_signature", 403},
        {"malformed timestamp", "bad_signature", 403},
        {"stale timestamp", "stale_timestamp", 403},
    };
    for (size_t i = 0; reason && i < sizeof rules / sizeof *rules; i++)
        if (!strncmp(reason, rules[i].prefix, strlen(rules[i].prefix))) {
            *label = rules[i].label;
            return rules[i].status;
        }
    *label = "malformed";
    return 400;
}

static void log_rejected(const struct webhook_request *req, int status, const char *label)
{
    long suppressed = 0;
    if (!may_log(&suppressed))
        return;
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)req->body, req->len, md);
    char hash[17];
    for (int i = 0; i < 8; i++)
        snprintf(hash + 2 * i, 3, "%02x", md[i]);
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "provider", req->provider);
    BSON_APPEND_INT32(&f, "status", status);
    BSON_APPEND_UTF8(&f, "reason", label);
    BSON_APPEND_INT64(&f, "bytes", (int64_t)req->len);
    BSON_APPEND_UTF8(&f, "body_sha256", hash);
    if (suppressed)
        BSON_APPEND_INT64(&f, "suppressed", suppressed);
    log_msg(status >= 500 ? LOG_ERROR : LOG_WARN, NULL, "webhook.rejected", &f,
            "%s webhook answered %d (%s)", req->provider, status, label);
    bson_destroy(&f);
}

/* The URL the provider called: the public base plus the target exactly as
 * sent. Without QM_SUPPORT_PUBLIC_URL (SendGrid only; Twilio needs it to
 * verify) the Host header stands in, for the record. */
static void called_url(const struct http_ctx *ctx, const struct webhook_request *req,
                       bson_string_t *out)
{
    if (ctx->cfg->public_url)
        bson_string_append(out, ctx->cfg->public_url);
    else
        bson_string_append_printf(out, "http://%s", req->host ? req->host : "localhost");
    bson_string_append(out, req->target);
}

static bool configured(const struct http_ctx *ctx, const char *provider, const char **what)
{
    if (!strcmp(provider, "twilio")) {
        *what = !ctx->keys.twilio_auth_token ? "TWILIO_AUTH_TOKEN is not set"
                : !ctx->cfg->public_url      ? "QM_SUPPORT_PUBLIC_URL is not set"
                                             : NULL;
    } else {
        *what = !ctx->keys.sendgrid_public_key ? "SENDGRID_WEBHOOK_PUBLIC_KEY is not set" : NULL;
    }
    return *what == NULL;
}

/* The request's digest key, <prefix>webhook:seen:<digest>, the digest (the
 * journal's _id, 32 characters) being the first 16 bytes of SHA-256 of
 * provider, URL, signature, timestamp and body, in hex; false if it cannot be
 * computed. */
static bool seen_key(const struct http_ctx *ctx, const struct webhook_request *req,
                     const char *url, const char *sig, const char *ts, char *key, size_t size,
                     char digest[33])
{
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    const char *parts[] = {req->provider, url, sig, ts};
    bool hashed = sha && EVP_DigestInit_ex(sha, EVP_sha256(), NULL);
    for (size_t i = 0; hashed && i < sizeof parts / sizeof *parts; i++)
        hashed = EVP_DigestUpdate(sha, parts[i], strlen(parts[i]) + 1);
    hashed = hashed && EVP_DigestUpdate(sha, req->body, req->len) &&
             EVP_DigestFinal_ex(sha, md, &md_len) && md_len >= 16;
    EVP_MD_CTX_free(sha);
    if (!hashed)
        return false;
    for (int i = 0; i < 16; i++)
        snprintf(digest + 2 * i, 3, "%02x", md[i]);
    snprintf(key, size, "%swebhook:seen:%s", ctx->cfg->redis_prefix, digest);
    return true;
}

/* ---- the journal ------------------------------------------------------------
 * One document per accepted request, {_id: digest, provider, body, url,
 * signature, timestamp, received_at (date), stream_id (the entry's id, null
 * until the append succeeded)}: what message-status needs to append the entry
 * again. A replay of a request still in the journal hits the unique _id. */

enum journal_result { JOURNAL_STORED, JOURNAL_DUPLICATE, JOURNAL_FAILED };

static void journal_doc(const char *digest, const bson_t *entry, int64_t received_at,
                        bson_t *doc)
{
    bson_init(doc);
    BSON_APPEND_UTF8(doc, "_id", digest);
    bson_iter_t it;
    if (bson_iter_init(&it, entry))
        while (bson_iter_next(&it))
            if (strcmp(bson_iter_key(&it), "received_at"))
                bson_append_iter(doc, bson_iter_key(&it), -1, &it);
    BSON_APPEND_DATE_TIME(doc, "received_at", received_at);
    BSON_APPEND_NULL(doc, "stream_id");
}

static enum journal_result journal_insert(mongoc_client_t *client, const char *db,
                                          const char *digest, const bson_t *entry,
                                          int64_t received_at, bson_error_t *berr)
{
    bson_t doc;
    journal_doc(digest, entry, received_at, &doc);
    mongoc_collection_t *coll = mongoc_client_get_collection(client, db, COLL_STATUS_INBOX);
    bool ok = mongoc_collection_insert_one(coll, &doc, NULL, NULL, berr);
    mongoc_collection_destroy(coll);
    bson_destroy(&doc);
    if (ok)
        return JOURNAL_STORED;
    return berr->code == MONGOC_ERROR_DUPLICATE_KEY ? JOURNAL_DUPLICATE : JOURNAL_FAILED;
}

/* After the append: the entry's id (message-status then knows the entry is
 * there), or, for a request the stream already had, the document goes. Not
 * checked: a document left with stream_id null is appended again by
 * message-status's repair sweep, and the copy applied once (event ids). */
static void journal_after(mongoc_client_t *client, const char *db, const char *digest,
                          const char *stream_id)
{
    mongoc_collection_t *coll = mongoc_client_get_collection(client, db, COLL_STATUS_INBOX);
    bson_t sel = BSON_INITIALIZER, upd = BSON_INITIALIZER, set;
    BSON_APPEND_UTF8(&sel, "_id", digest);
    bson_error_t berr;
    if (stream_id) {
        BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
        BSON_APPEND_UTF8(&set, "stream_id", stream_id);
        bson_append_document_end(&upd, &set);
        mongoc_collection_update_one(coll, &sel, &upd, NULL, NULL, &berr);
    } else {
        mongoc_collection_delete_one(coll, &sel, NULL, NULL, &berr);
    }
    bson_destroy(&sel);
    bson_destroy(&upd);
    mongoc_collection_destroy(coll);
}

/* The digest check, the XADD and the digest's SET in one script, in that
 * order: a script runs alone but is not rolled back, so the digest is written
 * only once the entry is, and a request whose append failed is not taken for
 * a duplicate when the provider retries it. Returns the entry id, or nil for
 * a duplicate. KEYS: seen key, stream; ARGV: ttl ms (0: no digest), then the
 * six fields' values, then the journal's _id ("": no `journal` field). */
static const char append_once_lua[] =
    "if ARGV[1] ~= '0' and redis.call('EXISTS', KEYS[1]) == 1 then return false end "
    "local f = {'provider', ARGV[2], 'body', ARGV[3], 'url', ARGV[4], 'signature', ARGV[5], "
    "'timestamp', ARGV[6], 'received_at', ARGV[7]} "
    "if ARGV[8] ~= '' then f[#f + 1] = 'journal'; f[#f + 1] = ARGV[8] end "
    "local id = redis.call('XADD', KEYS[2], '*', unpack(f)) "
    "if ARGV[1] ~= '0' then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end "
    "return id";

void webhook_handle(const struct http_ctx *ctx, struct rds *redis,
                    const struct webhook_request *req, struct http_answer *ans,
                    const char **reason)
{
    const char *missing;
    /* Not yet configured: 503 makes the provider retry until it is. */
    if (!configured(ctx, req->provider, &missing)) {
        *reason = "not_configured";
        http_answer_text(ans, 503, "%s webhooks are not configured here (%s)\n", req->provider,
                         missing);
        ans->retry_after = "60";
        log_rejected(req, 503, *reason);
        return;
    }
    /* The stream holds text and the job reads it as UTF-8: a body it could
     * not read back byte for byte is refused here, by name. */
    if (memchr(req->body, '\0', req->len) || !bson_utf8_validate(req->body, req->len, false)) {
        *reason = "malformed";
        http_answer_text(ans, 400, "malformed body: not UTF-8 text\n");
        log_rejected(req, 400, *reason);
        return;
    }
    if (!strcmp(req->provider, "twilio")) {
        size_t params = 1;
        for (const char *p = memchr(req->body, '&', req->len); p;
             p = memchr(p + 1, '&', req->len - (size_t)(p + 1 - req->body)))
            params++;
        if (params > MAX_FORM_PARAMS) {
            *reason = "malformed";
            http_answer_text(ans, 400, "malformed body: more than %d form parameters\n",
                             MAX_FORM_PARAMS);
            log_rejected(req, 400, *reason);
            return;
        }
    }
    bson_string_t *url = bson_string_new(NULL);
    called_url(ctx, req, url);
    char received[24];
    snprintf(received, sizeof received, "%lld", (long long)req->received_at);
    const char *sig = req->signature ? req->signature : "";
    const char *ts = req->timestamp ? req->timestamp : "";

    bson_t entry = BSON_INITIALIZER, parsed = BSON_INITIALIZER;
    mongoc_client_t *client = NULL; /* the journal's, once there is a digest */
    BSON_APPEND_UTF8(&entry, "provider", req->provider);
    bson_append_utf8(&entry, "body", 4, req->body, (int)req->len);
    BSON_APPEND_UTF8(&entry, "url", url->str);
    BSON_APPEND_UTF8(&entry, "signature", sig);
    BSON_APPEND_UTF8(&entry, "timestamp", ts);
    BSON_APPEND_UTF8(&entry, "received_at", received);
    msgstatus_parse_entry(&entry, &ctx->keys, &parsed);
    bson_iter_t it;
    bool ok = bson_iter_init_find(&it, &parsed, "ok") && bson_iter_as_bool(&it);
    if (!ok) {
        const char *why = bson_iter_init_find(&it, &parsed, "reason") && BSON_ITER_HOLDS_UTF8(&it)
                              ? bson_iter_utf8(&it, NULL)
                              : "rejected";
        int status = webhook_classify(why, reason);
        /* The reason goes back to the caller only (it may quote the request). */
        if (status == 403)
            http_answer_text(ans, 403, "%s\n", *reason);
        else
            http_answer_text(ans, status, "%s\n", why);
        log_rejected(req, status, *reason);
        goto out;
    }

    /* A replay (a captured callback sent again, a provider's retry of one we
     * stored) is dropped here: every copy would be stored, and re-read for
     * 15 minutes while its message is unknown. Same provider, URL, signature,
     * timestamp and body within the tolerance = the same request; it is
     * answered 204 (it is stored already) and counted as "duplicate".
     * SPEC §2's six fields, the body as received, and `journal`. */
    char key[400] = "", ttl[24] = "0", digest[33] = "";
    if (seen_key(ctx, req, url->str, sig, ts, key, sizeof key, digest))
        snprintf(ttl, sizeof ttl, "%lld",
                 ctx->keys.sendgrid_tolerance_ms > 0 ? (long long)ctx->keys.sendgrid_tolerance_ms
                                                     : 6LL * 3600 * 1000);

    /* The journal first: once the entry is in the stream message-status may
     * finish with it at any moment, and then deletes the journal's copy. */
    if (digest[0] && ctx->journal)
        client = store_pop(ctx->journal);
    bson_error_t berr = {0};
    enum journal_result journal = JOURNAL_FAILED;
    if (client)
        journal = journal_insert(client, store_db(ctx->journal), digest, &entry,
                                 req->received_at, &berr);
    else
        bson_set_error(&berr, 0, 0, "%s", digest[0] ? "no MongoDB client" : "no digest");
    if (journal == JOURNAL_DUPLICATE) {
        /* the same request is in the journal, not yet applied: stored */
        *reason = "duplicate";
        ans->status = 204;
        goto out;
    }
    if (journal == JOURNAL_FAILED) {
        metrics_webhook_one_copy(req->provider, true);
        long suppressed = 0;
        if (may_log(&suppressed))
            log_msg(LOG_WARN, NULL, "webhook.journal_failed", NULL,
                    "%s webhook: cannot write its copy to %s (the stream's is the only one): %s",
                    req->provider, COLL_STATUS_INBOX, store_errmsg(&berr));
    }

    const char *argv[] = {"EVAL", append_once_lua, "2", key, ctx->stream_key, ttl,
                          req->provider, req->body, url->str, sig, ts, received, digest};
    size_t argvlen[sizeof argv / sizeof *argv];
    for (size_t i = 0; i < sizeof argv / sizeof *argv; i++)
        argvlen[i] = strlen(argv[i]);
    argvlen[7] = req->len;
    struct sd_error err;
    redisReply *rep = rds_command_argv(redis, &err, (int)(sizeof argv / sizeof *argv), argv,
                                       argvlen);
    if (!rep && journal == JOURNAL_STORED) {
        /* message-status appends it from the journal */
        metrics_webhook_one_copy(req->provider, false);
        long suppressed = 0;
        if (may_log(&suppressed))
            log_msg(LOG_WARN, NULL, "webhook.journal_only", NULL,
                    "%s webhook answered 204 with its copy in %s only (message-status appends "
                    "it): cannot append to status-events: %s",
                    req->provider, COLL_STATUS_INBOX, err.message);
        *reason = NULL;
        ans->status = 204;
        goto out;
    }
    if (!rep) {
        *reason = "unavailable";
        http_answer_text(ans, 503, "status-events is unavailable; retry later\n");
        ans->retry_after = "5";
        long suppressed = 0;
        if (may_log(&suppressed))
            log_msg(LOG_ERROR, NULL, "webhook.unavailable", NULL,
                    "%s webhook answered 503: cannot append to status-events (%s) nor write "
                    "its copy to %s",
                    req->provider, err.message, COLL_STATUS_INBOX);
        goto out;
    }
    bool duplicate = rep->type == REDIS_REPLY_NIL;
    if (journal == JOURNAL_STORED && (duplicate || rep->type == REDIS_REPLY_STRING))
        journal_after(client, store_db(ctx->journal), digest, duplicate ? NULL : rep->str);
    if (journal == JOURNAL_FAILED && digest[0] && rep->type == REDIS_REPLY_STRING) {
        /* In the stream alone: its copy is written once MongoDB answers. */
        bson_t doc;
        journal_doc(digest, &entry, req->received_at, &doc);
        bool queued = journal_late_add(ctx->late, &doc);
        bson_destroy(&doc);
        long suppressed = 0;
        if (!queued && may_log(&suppressed))
            log_msg(LOG_WARN, NULL, "webhook.journal_late_full", NULL,
                    "%s webhook: its copy cannot wait for %s either (at most %d copies or %u "
                    "bytes wait, or the late writer is not running): the stream's is the only "
                    "one",
                    req->provider, COLL_STATUS_INBOX, JOURNAL_LATE_MAX_DOCS,
                    JOURNAL_LATE_MAX_BYTES);
    }
    freeReplyObject(rep);
    *reason = duplicate ? "duplicate" : NULL;
    ans->status = 204;
out:
    if (client)
        store_push(ctx->journal, client);
    bson_destroy(&entry);
    bson_destroy(&parsed);
    bson_string_free(url, true);
}
