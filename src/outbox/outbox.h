/* outbox.h — the notification outbox (SPEC §2 `conversation-notification`):
 * every email or SMS supportd sends is first an entry here, then delivered
 * once through the configured provider.
 *
 * Entry fields. SPEC §2: _id, key (unique idempotency key), type,
 * conversation_id?, channel_id?, recipient {role, user_id?, name?, email|phone},
 * via ("email"|"sms"), status ("pending"|"sent"|"failed"), attempts,
 * next_attempt_at, subject, created_at, sent_at, provider_message_id, error
 * {code, message}. Added by supportd:
 *   text, html        rendered bodies (SMS uses text; email needs text or html)
 *   from, from_name   sender; email falls back to QM_SUPPORT_EMAIL_FROM, SMS
 *                     to the channel's phone_number
 *   account_sid       Twilio sub-account (else the channel's, else the main one)
 *   status_callback   Twilio StatusCallback URL (else the channel's webhook_url)
 *   provider          "sendgrid" | "smtp" | "twilio", set when sent
 *   send_started_at   set (with updated_at) just before each send, removed
 *                     with the outcome; while it is less than a claim's
 *                     lifetime old and updated_at equals it, the send may be
 *                     in flight: a deliverer that got the claim only because
 *                     Redis lost it leaves the entry alone. Set by a
 *                     compare-and-set on the value the deliverer's copy
 *                     holds, so a copy read before another deliverer marked
 *                     the entry is not sent; an entry that cannot be marked
 *                     (database error) is handed back unsent. An SMS whose
 *                     attempt may have reached Twilio (5xx, timeout, crash)
 *                     keeps it, so Twilio is asked first next time
 *   failed_at, updated_at
 *
 * Delivery (outbox_deliver), per due entry, oldest next_attempt_at first:
 *   1. claim it in Redis: SET <prefix>outbox:claim:<_id> claimed:<token> NX PX
 *      5 min. FerretDB's findAndModify is not atomic (reference/ferretdb.md),
 *      Redis SET NX is, so two deliverers never both hold an entry. A claim
 *      already holding "sent:<provider>:<id>" means a deliverer crashed after
 *      the provider accepted it: the entry is only recorded as sent;
 *   2. send it from the copy the due query returned: the claim proves it
 *      current (a "done:<attempts>" marker left by the last deliverer refuses
 *      older copies, claim.h); a copy older than CLAIM_FRESH_MS is re-read;
 *   3. accepted → SET the claim to "sent:<provider>:<id>" for 7 days first,
 *      then mark the entry sent (sent_at, provider, provider_message_id,
 *      attempts+1); a crash between the two never resends;
 *      transient failure (429, 5xx, timeout, after the HTTP layer's own
 *      retries) → attempts+1, next_attempt_at = now + outbox_backoff_ms (or
 *      the provider's Retry-After if longer), error recorded, claim turned
 *      into the "done:" marker;
 *      after OUTBOX_MAX_ATTEMPTS → failed;
 *      permanent failure (400, invalid entry…) → status "failed",
 *      failed_at, error {code, message} readable, claim turned into the marker;
 *      provider not configured, or refusing our credentials (401/403) → the
 *      entry waits for the operator: pending, error recorded, attempts not
 *      counted; after a 401/403 the call sends nothing more to that provider.
 * Right before each request the claim is checked and extended (compare-and-
 * PEXPIRE): a batch can outlive the 5-minute TTL (look-ups, slow providers),
 * and Redis can lose the key; an entry whose claim is no longer ours is not
 * sent and not touched (the next tick re-reads it).
 * On a stop (SIGTERM), requests in flight are finished, not cut (their outcome
 * is then known and recorded); entries not yet sent are handed back untouched:
 * pending, their claims released, their send_started_at removed.
 * Remaining duplicate risks, by provider: a crash between the provider's
 * answer and the Redis SET (microseconds) resends; a 5xx/timeout on a
 * SendGrid or SMTP send is retried and may duplicate (neither can be asked
 * whether the message exists). Twilio sends are looked up before resending.
 *
 * Redis keys: <prefix>outbox:claim:<entry _id>.
 *
 * Ownership: struct outbox_ctx borrows everything it points to. Errors follow
 * core/error.h; outbox_deliver fails (-1) only when the batch as a whole
 * cannot go on (MongoDB query or Redis down); a bad entry is marked failed
 * and logged with its id.
 */
#ifndef SD_OUTBOX_OUTBOX_H
#define SD_OUTBOX_OUTBOX_H

#include <bson/bson.h>
#include <mongoc/mongoc.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/error.h"
#include "core/log.h"
#include "providers/http.h"
#include "providers/smtp.h"
#include "store/redis.h"

#define OUTBOX_MAX_ATTEMPTS 8
#define OUTBOX_CLAIM_TTL_MS (5 * 60 * 1000)
#define OUTBOX_SENT_MARK_TTL_MS (7LL * 24 * 3600 * 1000)
/* How soon an entry whose provider is not configured is looked at again. */
#define OUTBOX_WAIT_MS (5 * 60 * 1000)

struct outbox_ctx {
    mongoc_client_t *mongo;
    const char *db;
    struct rds *redis;
    const char *prefix;         /* QM_SUPPORT_REDIS_PREFIX */
    const struct config *cfg;   /* providers, QM_SUPPORT_EMAIL_FROM */
    struct http_client *http;   /* Twilio and SendGrid */
    struct smtp_client *smtp;   /* NULL unless QM_SUPPORT_EMAIL_PROVIDER=smtp */
    const struct log_ctx *log;
    atomic_bool *stop;          /* checked between entries */
    const char *owner;          /* "<host>:<pid>", part of claim tokens */
    /* Where concurrent senders connect to Redis to record an accepted send at
     * once; NULL: the calling thread records it after the batch. */
    const struct rds_options *redis_opts;
    /* Pooled clients: a batch's outcomes are written on one while the next
     * batch is sent; NULL: written before the next batch starts. */
    struct store *store;
};

struct outbox_stats {
    int64_t due;        /* entries the query returned */
    int64_t sent;       /* accepted by a provider in this call */
    int64_t recovered;  /* found already sent (claim marker or Twilio lookup) */
    int64_t retried;    /* transient failure, rescheduled */
    int64_t failed;     /* marked failed */
    int64_t skipped;    /* claimed by another deliverer, or no longer due */
    int64_t waiting;    /* left pending for the operator: provider not configured, or
                           refusing our credentials (401/403); no attempt counted */
    int64_t handed_back;/* not attempted because the process is stopping: untouched */
};

/* Inserts entries (one unordered insertMany). Missing fields get defaults:
 * _id, status "pending", attempts 0, next_attempt_at = created_at =
 * updated_at = now. Every entry needs a string `key` and `via`. An entry whose
 * key exists already is a no-op (duplicate key 11000); *inserted counts the
 * new ones. Any other write error fails the call. */
int outbox_enqueue(mongoc_client_t *client, const char *db, const bson_t *const *entries,
                   size_t n, int64_t now_ms, int *inserted, struct sd_error *err);

/* Delivers up to `limit` due pending entries (see above). Adds to *stats. */
int outbox_deliver(struct outbox_ctx *ctx, int64_t now_ms, int limit, struct outbox_stats *stats,
                   struct sd_error *err);

/* Wait before the next attempt after `attempts` failed ones (≥ 1):
 * d = min(1 h, 1 min · 2^(attempts-1)), jittered into [d/2, d] by u ∈ [0,1). */
int64_t outbox_backoff_ms(int attempts, double u);

#endif
