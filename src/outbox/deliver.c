/* outbox_deliver: claim → send → record, in batches (the contract is in
 * outbox.h; the batch's shape is described above deliver_batch). Updates filter on {_id, status: "pending"} so a
 * late writer never turns a finished entry back; the claim, not the update,
 * is what keeps two deliverers apart (FerretDB updates are not atomic). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "core/seam.h"
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
    int attempts;          /* before this delivery: the entry's version (claim.h) */
    bool written;          /* an outcome that increments attempts joined the batch's writes */
    struct outbox_claim claim;
};

/* The cursor's next document with a usable _id, and that _id as text. */
static bool cursor_next_id(mongoc_cursor_t *cur, const bson_t **doc, char *text, size_t size)
{
    while (mongoc_cursor_next(cur, doc)) {
        bson_value_t id;
        if (!id_text(*doc, text, size, &id))
            continue;
        bson_value_destroy(&id);
        return true;
    }
    return false;
}

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

/* The batch's writes, kept as statements (filter, update) and executed as
 * one unordered bulk once the batch is sent: kept so that a bulk that failed
 * can be built again and retried (flush_execute). NULL where a write must
 * happen at once. */
struct writes {
    bson_t **ops; /* owned: filter, update, filter, update, … */
    int n;        /* statements */
    int cap;
};

static int writes_add(struct writes *w, const bson_t *filter, const bson_t *update,
                      struct sd_error *err)
{
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        bson_t **ops = realloc(w->ops, (size_t)cap * 2 * sizeof *ops);
        if (!ops)
            return sd_error_set(err, "out of memory");
        w->ops = ops;
        w->cap = cap;
    }
    w->ops[2 * w->n] = bson_copy(filter);
    w->ops[2 * w->n + 1] = bson_copy(update);
    w->n++;
    return 0;
}

static void writes_free(struct writes *w)
{
    for (int i = 0; i < 2 * w->n; i++)
        bson_destroy(w->ops[i]);
    free(w->ops);
    memset(w, 0, sizeof *w);
}

/* update_one({_id, status: "pending"}, update); *modified may be NULL. With
 * w, the statement joins the batch's bulk instead (store_bulk_update_doc).
 * An outcome that moves the entry's version (claim.h) sets it->written. */
static int update_pending_w(mongoc_collection_t *coll, struct writes *w, struct item *it,
                            const bson_t *update, int64_t *modified, struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, reply;
    BSON_APPEND_VALUE(&filter, "_id", &it->id);
    BSON_APPEND_UTF8(&filter, "status", "pending");
    if (w) {
        /* Only the version we claimed: a retried bulk (flush_execute) that
         * had reached the database before never adds an attempt twice. */
        if (it->attempts > 0 || bson_has_field(it->entry, "attempts")) {
            BSON_APPEND_INT32(&filter, "attempts", it->attempts);
        } else {
            bson_t ex;
            BSON_APPEND_DOCUMENT_BEGIN(&filter, "attempts", &ex);
            BSON_APPEND_BOOL(&ex, "$exists", false);
            bson_append_document_end(&filter, &ex);
        }
        int rc = writes_add(w, &filter, update, err);
        bson_destroy(&filter);
        if (rc)
            return sd_error_prefix(err, "updating outbox entry %s", it->id_text);
        return 0;
    }
    bson_error_t berr;
    bool ok = mongoc_collection_update_one(coll, &filter, update, NULL, &reply, &berr);
    bson_iter_t r;
    if (ok && modified)
        *modified = bson_iter_init_find(&r, &reply, "modifiedCount") ? bson_iter_as_int64(&r) : 0;
    bson_destroy(&reply);
    bson_destroy(&filter);
    if (!ok)
        return sd_error_set(err, "updating outbox entry %s: %s", it->id_text, store_errmsg(&berr));
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
static int record_sent(mongoc_collection_t *coll, struct writes *w, struct item *it,
                       const char *provider, const char *message_id, int64_t now_ms,
                       bool inc_attempt, int64_t *modified, struct sd_error *err)
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
    it->written = true;
    int rc = update_pending_w(coll, w, it, &u, modified, err);
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

/* The provider cannot be used as configured: not configured at all, or it
 * refuses our credentials (401/403 to a send: a rotated or revoked key, an
 * unverified sender). Nothing is wrong with the entry: it waits for the
 * operator, however long that takes, without using up its attempts. */
static bool waits_for_operator(const struct provider_status *st)
{
    return strcmp(st->code, "not_configured") == 0 ||
           (st->cls == PROVIDER_PERMANENT && (st->http_status == 401 || st->http_status == 403));
}

/* An entry that waits for the operator: its error recorded where they look,
 * attempts untouched. The update does not move the entry's version (claim.h):
 * nothing was sent, so a copy read before it is as good as one read after. A
 * credentials refusal leaves next_attempt_at as it is, so the oldest such
 * entry is the one request per tick that finds out whether the key works
 * again; an unconfigured provider makes no request and looks again in
 * OUTBOX_WAIT_MS. */
static void record_waiting(struct outbox_ctx *ctx, mongoc_collection_t *coll, struct writes *w,
                           struct item *it, const struct outbox_message *msg,
                           const struct provider_status *st, const struct sd_error *why,
                           int64_t now_ms, struct outbox_stats *stats)
{
    bson_t u = BSON_INITIALIZER, set, unset;
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_DATE_TIME(&set, "updated_at", now_ms);
    append_error(&set, st, why->message);
    if (strcmp(st->code, "not_configured") == 0)
        BSON_APPEND_DATE_TIME(&set, "next_attempt_at", now_ms + OUTBOX_WAIT_MS);
    bson_append_document_end(&u, &set);
    if (!(msg && msg->via == VIA_SMS && st->maybe_accepted)) { /* as in record_failure */
        BSON_APPEND_DOCUMENT_BEGIN(&u, "$unset", &unset);
        BSON_APPEND_UTF8(&unset, "send_started_at", "");
        bson_append_document_end(&u, &unset);
    }
    struct sd_error uerr;
    if (update_pending_w(coll, w, it, &u, NULL, &uerr))
        log_msg(LOG_ERROR, ctx->log, "outbox.update", NULL, "%s", uerr.message);
    bson_destroy(&u);
    stats->waiting++;
    log_entry(ctx, LOG_WARN, "outbox.waiting", it, msg ? msg->provider : NULL, NULL, st,
              "waits for the operator (no attempt counted)");
}

/* A failed attempt: reschedule (transient) or give up (permanent, or too many). */
static void record_failure(struct outbox_ctx *ctx, mongoc_collection_t *coll, struct writes *w,
                           struct item *it, const struct outbox_message *msg,
                           const struct provider_status *st, const struct sd_error *why,
                           int64_t now_ms, struct outbox_stats *stats)
{
    if (waits_for_operator(st)) {
        record_waiting(ctx, coll, w, it, msg, st, why, now_ms, stats);
        return;
    }
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
    /* An SMS that may have reached Twilio keeps it: the next attempt asks
     * Twilio first. Otherwise the attempt is over (e-mail cannot be asked). */
    if (!(msg && msg->via == VIA_SMS && st->maybe_accepted)) {
        BSON_APPEND_DOCUMENT_BEGIN(&u, "$unset", &unset);
        BSON_APPEND_UTF8(&unset, "send_started_at", "");
        bson_append_document_end(&u, &unset);
    }
    struct sd_error uerr;
    it->written = true; /* attempts + 1 */
    if (update_pending_w(coll, w, it, &u, NULL, &uerr))
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

/* marked: the worker that sent it has written the claim's "sent:" already. */
static void record_accepted(struct outbox_ctx *ctx, mongoc_collection_t *coll, struct writes *w,
                            struct item *it, const char *provider, const char *message_id,
                            bool found_later, bool marked, int64_t now_ms,
                            struct outbox_stats *stats)
{
    struct sd_error e;
    /* Redis first: from here on no deliverer sends this entry again, even if
     * we die before MongoDB has the news. */
    if (!marked && claim_mark_sent(ctx->redis, &it->claim, provider, message_id,
                                   OUTBOX_SENT_MARK_TTL_MS, &e))
        log_msg(LOG_ERROR, ctx->log, "outbox.claim", NULL, "%s", e.message);
    if (record_sent(coll, w, it, provider, message_id, now_ms, !found_later, NULL, &e))
        log_msg(LOG_ERROR, ctx->log, "outbox.update", NULL, "%s (the send is recorded in Redis)",
                e.message);
    if (found_later)
        stats->recovered++;
    else
        stats->sent++;
    log_entry(ctx, LOG_INFO, found_later ? "outbox.recovered" : "outbox.sent", it, provider,
              message_id, NULL, found_later ? "had reached the provider already" : "sent");
}


/* ---- one batch ----------------------------------------------------------------
 *
 * claims (one Redis pipeline; the copies from the due query are current, see
 * claim.h, unless older than CLAIM_FRESH_MS: then one find re-reads them) →
 * an entry another deliverer is sending is left alone (in_flight) → prepare →
 * SMS: look up an earlier uncertain send → mark send_started_at (one update) → send, at most OUTBOX_IN_FLIGHT at once, each worker with its own
 * HTTP/SMTP connection and Redis connection, writing the claim's "sent:"
 * marker the moment the provider accepts → record every outcome (one bulk
 * write) → the claims become "done:" markers (one pipeline). */

#define OUTBOX_BATCH 100
#define OUTBOX_IN_FLIGHT 16

struct send {
    struct item *it;
    struct outbox_message msg;
    int rc;
    struct provider_status st;
    struct sd_error err;
    char message_id[160];
    bool marked;
    /* The request went out (or started to). A send the stop, a lost claim or
     * an unusable provider kept back was never attempted: no outcome is
     * recorded for it, it stays pending. */
    bool attempted;
    bool claim_lost;   /* its claim was no longer ours right before sending */
    bool held;         /* kept back before the senders: not marked as being sent */
    bool changed;      /* another deliverer marked it since our copy was read */
    bool unusable;     /* its provider refused our credentials earlier in the call */
};

/* Providers by index, for the "refuses our credentials" flags. */
enum { PROV_SENDGRID, PROV_SMTP, PROV_TWILIO, PROV_COUNT };

static int provider_index(const char *provider)
{
    if (!provider)
        return PROV_SENDGRID;
    return strcmp(provider, "twilio") == 0 ? PROV_TWILIO
           : strcmp(provider, "smtp") == 0 ? PROV_SMTP
                                           : PROV_SENDGRID;
}

/* A sender's own connections, made on first use and kept for the call. */
struct worker {
    struct http_client *http;
    struct smtp_client *smtp;
    struct rds *redis;
    bool failed;
    pthread_t thread;
    struct pool *pool;
};

/* A batch's outcomes being written on the writer's client while the next
 * batch is claimed and sent; its claims become "done:" markers once the
 * write has returned. */
struct flush {
    bool active;
    pthread_t thread;
    bool threaded;
    struct writes w;
    mongoc_collection_t *coll;           /* the writer's, or the caller's */
    const struct log_ctx *log;
    int tries;
    bool ok;
    bson_error_t berr;
    uint64_t commands;
    const struct outbox_claim **release; /* owned */
    int *versions;                       /* owned */
    size_t n_release;
};

struct pool {
    struct outbox_ctx *ctx;
    mongoc_client_t *writer;      /* pooled, for struct flush; NULL: write inline */
    mongoc_collection_t *wcoll;
    struct flush flush;
    struct rds_options redis_opts;
    bool have_redis;
    struct send *sends;
    size_t n;
    atomic_size_t next;
    int64_t now_ms;
    /* Set when a provider answers a send 401/403: the rest of this call's
     * entries for it are not sent (each would be refused the same way). */
    atomic_bool unusable[PROV_COUNT];
    bool reported[PROV_COUNT];   /* outbox.provider_unusable logged */
    struct worker workers[OUTBOX_IN_FLIGHT];
};

static int worker_ready(struct pool *p, struct worker *w)
{
    if (w->http || w->failed)
        return w->failed ? -1 : 0;
    const struct config *cfg = p->ctx->cfg;
    struct sd_error err;
    struct http_options hopts = {.timeout_ms = cfg->http_timeout_ms, .stop = p->ctx->stop};
    w->http = http_client_new(&hopts, &err);
    if (w->http && p->ctx->smtp && cfg->smtp_url) {
        struct smtp_options sopts = {.url = cfg->smtp_url,
                                     .user = cfg->smtp_user,
                                     .password = cfg->smtp_password,
                                     .timeout_ms = 2 * cfg->http_timeout_ms,
                                     .stop = p->ctx->stop};
        w->smtp = smtp_client_new(&sopts, &err);
    }
    if (p->have_redis)
        w->redis = rds_new(&p->redis_opts);
    w->failed = !w->http || (p->ctx->smtp && !w->smtp);
    if (w->failed)
        log_msg(LOG_ERROR, p->ctx->log, "outbox.worker", NULL,
                "cannot start a sender: %s; sending with fewer", err.message);
    return w->failed ? -1 : 0;
}

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    struct pool *p = w->pool;
    struct outbox_ctx local = *p->ctx;
    local.http = w->http;
    local.smtp = w->smtp;
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n || (p->ctx->stop && atomic_load(p->ctx->stop)))
            break;
        struct send *s = &p->sends[i];
        int prov = provider_index(s->msg.provider);
        if (atomic_load(&p->unusable[prov])) {
            s->unusable = true;
            continue;
        }
        seam_wait("outbox_before_send");
        /* The claim was taken when the batch began; sends ahead of this one
         * (look-ups, slow providers) may have outlived it, or Redis may have
         * lost it, and another deliverer may be sending the entry now. So
         * right before the request: still ours? Then it gets a fresh TTL.
         * Not ours, or cannot tell: hand it back untouched (the next tick
         * re-reads it). */
        struct sd_error e;
        if (w->redis && claim_extend(w->redis, &s->it->claim, OUTBOX_CLAIM_TTL_MS, &e) != 1) {
            s->claim_lost = true;
            continue;
        }
        if (p->ctx->stop && atomic_load(p->ctx->stop))
            break;
        s->attempted = true;
        s->rc = outbox_message_send(&local, &s->msg, p->now_ms, s->message_id,
                                    sizeof s->message_id, &s->st, &s->err);
        if (s->rc != 0 && waits_for_operator(&s->st))
            atomic_store(&p->unusable[prov], true);
        /* Redis at once: the window in which a crash resends stays as short as
         * one send's. An SMS without an id is looked up first (below). */
        if (s->rc == 0 && w->redis && (s->message_id[0] || s->msg.via != VIA_SMS) &&
            claim_mark_sent(w->redis, &s->it->claim, s->msg.provider, s->message_id,
                            OUTBOX_SENT_MARK_TTL_MS, &e) == 0)
            s->marked = true;
    }
    return NULL;
}

/* Sends p->sends: inline for one, else on up to OUTBOX_IN_FLIGHT threads. */
static void send_all(struct pool *p)
{
    atomic_store(&p->next, 0);
    size_t want = p->n < OUTBOX_IN_FLIGHT ? p->n : OUTBOX_IN_FLIGHT;
    size_t started = 0;
    if (p->n > 1 && p->ctx->cfg) {
        for (size_t k = 0; k < want; k++) {
            struct worker *w = &p->workers[k];
            w->pool = p;
            if (worker_ready(p, w) == 0 && pthread_create(&w->thread, NULL, worker_run, w) == 0)
                started++;
            else
                w->failed = true;
        }
    }
    if (started == 0) {
        /* One entry, or no threads: this thread, its own connections. */
        struct worker inline_w = {
            .http = p->ctx->http, .smtp = p->ctx->smtp, .redis = p->ctx->redis, .pool = p};
        worker_run(&inline_w);
        return;
    }
    for (size_t k = 0; k < want; k++)
        if (!p->workers[k].failed)
            pthread_join(p->workers[k].thread, NULL);
}

static void pool_destroy(struct pool *p)
{
    for (int k = 0; k < OUTBOX_IN_FLIGHT; k++) {
        http_client_destroy(p->workers[k].http);
        smtp_client_destroy(p->workers[k].smtp);
        if (p->workers[k].redis)
            rds_destroy(p->workers[k].redis);
    }
}

/* One find for claimed entries whose copy is older than CLAIM_FRESH_MS: still
 * pending and due? Replaces each item's entry with the fresh copy (flags in
 * due). The status equality is what FerretDB can serve by index. */
static int reread(mongoc_collection_t *coll, struct item **mine, size_t n, int64_t now_ms,
                  bool *due, struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, in, ids;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &ids);
    for (size_t i = 0; i < n; i++) {
        char k[12];
        snprintf(k, sizeof k, "%zu", i);
        BSON_APPEND_VALUE(&ids, k, &mine[i]->id);
        due[i] = false;
    }
    bson_append_array_end(&in, &ids);
    bson_append_document_end(&filter, &in);
    BSON_APPEND_UTF8(&filter, "status", "pending");
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, NULL, NULL);
    const bson_t *doc;
    char text[200];
    while (cursor_next_id(cur, &doc, text, sizeof text)) {
        for (size_t i = 0; i < n; i++) {
            if (due[i] || strcmp(mine[i]->id_text, text) != 0)
                continue;
            bson_iter_t t;
            mine[i]->attempts = entry_attempts(doc); /* the version our marker leaves */
            due[i] = strcmp(entry_str(doc, "status"), "pending") == 0 &&
                     bson_iter_init_find(&t, doc, "next_attempt_at") &&
                     (!BSON_ITER_HOLDS_DATE_TIME(&t) || bson_iter_date_time(&t) <= now_ms);
            if (due[i]) {
                bson_destroy(mine[i]->entry);
                mine[i]->entry = bson_copy(doc);
                mine[i]->key = entry_str(mine[i]->entry, "key");
                mine[i]->attempts = entry_attempts(mine[i]->entry);
            }
            break;
        }
    }
    bson_error_t berr;
    int rc = 0;
    if (mongoc_cursor_error(cur, &berr))
        rc = sd_error_set(err, "outbox: re-reading claimed entries: %s", store_errmsg(&berr));
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    return rc;
}

/* send_started_at on every entry about to go out: the mark that keeps
 * another deliverer off an entry whose claim Redis lost (in_flight), and an
 * SMS's cue to ask Twilio before it is sent again. One unordered bulk, each
 * statement a compare-and-set on the mark our copy holds (or its absence):
 * a copy read before another deliverer marked the entry — the claim that
 * would have told us went with Redis's data, and copies younger than
 * CLAIM_FRESH_MS are not re-read — does not match, and is not ours to send
 * (found in review). When fewer than all matched, one find tells which did.
 * Sets sends[i].changed for the others; -1 if it cannot tell (then none is
 * sent). */
static int mark_started(mongoc_collection_t *coll, struct send *sends, size_t n,
                        int64_t *mark, struct sd_error *err)
{
    /* Wall-clock time, not the tick's (maybe --now) time: it is compared with
     * Twilio's date_created. */
    int64_t now = clock_now_ms();
    *mark = now;
    bson_t bopts = BSON_INITIALIZER, u = BSON_INITIALIZER, set;
    BSON_APPEND_BOOL(&bopts, "ordered", false);
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(coll,
                                                                                      &bopts);
    bson_destroy(&bopts);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_DATE_TIME(&set, "send_started_at", now);
    BSON_APPEND_DATE_TIME(&set, "updated_at", now);
    bson_append_document_end(&u, &set);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        bson_t filter = BSON_INITIALIZER, absent;
        BSON_APPEND_VALUE(&filter, "_id", &sends[i].it->id);
        BSON_APPEND_UTF8(&filter, "status", "pending");
        int64_t seen = bson_field_date(sends[i].it->entry, "send_started_at", 0);
        if (seen) {
            BSON_APPEND_DATE_TIME(&filter, "send_started_at", seen);
        } else {
            BSON_APPEND_DOCUMENT_BEGIN(&filter, "send_started_at", &absent);
            BSON_APPEND_BOOL(&absent, "$exists", false);
            bson_append_document_end(&filter, &absent);
        }
        rc = store_bulk_update_doc(bulk, &filter, &u, false, err);
        bson_destroy(&filter);
    }
    bson_error_t berr;
    int64_t matched = -1;
    if (rc == 0 && !store_bulk_run(bulk, &matched, &berr))
        rc = sd_error_set(err, "marking %zu entries as being sent: %s", n, store_errmsg(&berr));
    mongoc_bulk_operation_destroy(bulk);
    bson_destroy(&u);
    if (rc || matched == (int64_t)n)
        return rc;

    /* Which are ours: those holding our mark. */
    bson_t filter = BSON_INITIALIZER, in, ids, opts = BSON_INITIALIZER, proj;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &ids);
    for (size_t i = 0; i < n; i++) {
        char key[12];
        snprintf(key, sizeof key, "%zu", i);
        BSON_APPEND_VALUE(&ids, key, &sends[i].it->id);
        sends[i].changed = true;
    }
    bson_append_array_end(&in, &ids);
    bson_append_document_end(&filter, &in);
    BSON_APPEND_DATE_TIME(&filter, "send_started_at", now);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "_id", 1);
    bson_append_document_end(&opts, &proj);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
    const bson_t *doc;
    char text[200];
    while (cursor_next_id(cur, &doc, text, sizeof text))
        for (size_t i = 0; i < n; i++)
            if (!strcmp(sends[i].it->id_text, text))
                sends[i].changed = false;
    if (mongoc_cursor_error(cur, &berr))
        rc = sd_error_set(err, "reading which of %zu entries were marked as being sent: %s", n,
                          store_errmsg(&berr));
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return rc;
}

/* How long a batch's outcomes are tried before they are left to the claims'
 * "sent:" markers alone. Through a database restart or failover (seconds)
 * they reach MongoDB; had they been given up at the first error, Redis losing
 * its data meanwhile would have had the next tick send them again (found by
 * the chaos run). Each statement names the entry's version, so a bulk that
 * reached the database in part before it failed is harmless to repeat. */
#define OUTCOME_RETRY_MS (30 * 1000)

static bool bulk_once(struct flush *f)
{
    bson_t bopts = BSON_INITIALIZER, reply;
    BSON_APPEND_BOOL(&bopts, "ordered", false);
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(f->coll,
                                                                                      &bopts);
    bson_destroy(&bopts);
    struct sd_error e;
    for (int i = 0; i < f->w.n; i++)
        if (store_bulk_update_doc(bulk, f->w.ops[2 * i], f->w.ops[2 * i + 1], false, &e)) {
            bson_set_error(&f->berr, MONGOC_ERROR_BSON, MONGOC_ERROR_BSON_INVALID, "%s",
                           e.message);
            mongoc_bulk_operation_destroy(bulk);
            return false;
        }
    bool ok = mongoc_bulk_operation_execute(bulk, &reply, &f->berr);
    bson_destroy(&reply);
    mongoc_bulk_operation_destroy(bulk);
    return ok;
}

static void flush_execute(struct flush *f)
{
    uint64_t before = store_thread_commands();
    int64_t t0 = clock_monotonic_ms();
    long wait_ms = 250;
    seam_wait("outbox_before_outcomes");
    for (f->tries = 1;; f->tries++) {
        if ((f->ok = bulk_once(f)))
            break;
        if (f->berr.domain == MONGOC_ERROR_BSON ||
            clock_monotonic_ms() - t0 + wait_ms > OUTCOME_RETRY_MS)
            break;
        if (f->tries == 1)
            log_msg(LOG_WARN, f->log, "outbox.update", NULL,
                    "recording %d outbox outcomes: %s; trying again for up to %d s (sends are "
                    "recorded in Redis meanwhile)",
                    f->w.n, store_errmsg(&f->berr), OUTCOME_RETRY_MS / 1000);
        struct timespec ts = {wait_ms / 1000, (wait_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        if (wait_ms < 4000)
            wait_ms *= 2;
    }
    f->commands = store_thread_commands() - before;
}

static void *flush_thread(void *arg)
{
    flush_execute(arg);
    return NULL;
}

/* The batch's claims released (claim_finish_many). A connection dropped at
 * that moment (Redis restarted, a failover: found by the chaos run) would
 * leave them held for their full claim, and an entry due for a retry
 * unsendable by anyone until then; the compare-and-set is idempotent, so it
 * is tried again once the connection's reconnect delay (0.1 s, doubling) has
 * passed, three times in about 1.5 s. */
static void release_claims(struct outbox_ctx *ctx, struct flush *f)
{
    seam_wait("outbox_before_release");
    struct sd_error e;
    for (int attempt = 0; attempt < 4; attempt++) {
        if (attempt) {
            struct timespec ts = {0, (long)(100L << attempt) * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (claim_finish_many(ctx->redis, f->release, f->versions, f->n_release, &e) == 0)
            return;
    }
    log_msg(LOG_WARN, ctx->log, "outbox.claim", NULL, "%s (they expire by themselves)",
            e.message);
}

/* Waits for the batch being written, then turns its claims into "done:"
 * markers (compare-and-set; an accepted entry's "sent:" marker no longer
 * holds our token and stays). */
static void flush_finish(struct outbox_ctx *ctx, struct pool *pool)
{
    struct flush *f = &pool->flush;
    if (!f->active)
        return;
    if (f->threaded) {
        pthread_join(f->thread, NULL);
        store_thread_commands_add(f->commands);
    }
    if (f->w.n && !f->ok)
        log_msg(LOG_ERROR, ctx->log, "outbox.update", NULL,
                "recording %d outbox outcomes: %s (%d tries; sends are recorded in Redis)",
                f->w.n, store_errmsg(&f->berr), f->tries);
    else if (f->tries > 1)
        log_msg(LOG_INFO, ctx->log, "outbox.update", NULL,
                "recorded %d outbox outcomes at try %d", f->w.n, f->tries);
    writes_free(&f->w);
    if (f->n_release)
        release_claims(ctx, f);
    free(f->release);
    free(f->versions);
    memset(f, 0, sizeof *f);
}

/* Starts writing a batch's outcomes: on the writer's thread when there is
 * one (the next batch's sends overlap the database's work), else here. */
static void flush_start(struct pool *pool, struct flush *f)
{
    f->active = true;
    f->ok = true;
    if (f->w.n && pool->writer &&
        pthread_create(&f->thread, NULL, flush_thread, f) == 0) {
        f->threaded = true;
        return;
    }
    if (f->w.n)
        flush_execute(f);
}

static bool stopping(const struct outbox_ctx *ctx)
{
    return ctx->stop && atomic_load(ctx->stop);
}

/* Removes the send_started_at that mark_started set (at mark) on an entry
 * that was then not sent, unless another deliverer marked it since (it got
 * the claim ours lost). Attempts stay: the entry's version does not move
 * (claim.h). */
static void forget_started(struct writes *w, struct item *it, int64_t mark)
{
    bson_t filter = BSON_INITIALIZER, u = BSON_INITIALIZER, unset;
    BSON_APPEND_VALUE(&filter, "_id", &it->id);
    BSON_APPEND_UTF8(&filter, "status", "pending");
    BSON_APPEND_DATE_TIME(&filter, "send_started_at", mark);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$unset", &unset);
    BSON_APPEND_UTF8(&unset, "send_started_at", "");
    bson_append_document_end(&u, &unset);
    struct sd_error e;
    writes_add(w, &filter, &u, &e);
    bson_destroy(&filter);
    bson_destroy(&u);
}

/* One error line per provider and call when it refuses our credentials: the
 * operator's cue (also counted as outbox_waiting in tick.end and /metrics). */
static void report_unusable(struct outbox_ctx *ctx, struct pool *pool, const struct send *s)
{
    int prov = provider_index(s->msg.provider);
    if (pool->reported[prov])
        return;
    pool->reported[prov] = true;
    char text[700];
    snprintf(text, sizeof text,
             "got %s: %s; mail through %s stays pending (no attempts counted) until the "
             "credentials work again",
             s->st.code, s->err.message, s->msg.provider ? s->msg.provider : "it");
    log_entry(ctx, LOG_ERROR, "outbox.provider_unusable", s->it, s->msg.provider, NULL, &s->st,
              text);
}

/* An entry whose send started (mark_started: send_started_at and updated_at
 * set together) and got no outcome since, less than a claim's lifetime ago:
 * the deliverer that started it may still be waiting for the provider's
 * answer, or for the rest of its batch before it writes the outcomes. We got
 * its claim only because Redis lost it (a restart without its data, a
 * flush) — with the claim went its "sent:" marker — and a Twilio look-up now
 * would not see a message Twilio has not created yet. Found by the chaos
 * run: an SMS (seed 21) and 20 e-mails (seed 22) sent twice. A deliverer
 * that crashed left its claim for as long anyway. */
static bool in_flight(const struct item *it, int64_t started)
{
    int64_t updated = bson_field_date(it->entry, "updated_at", -1);
    int64_t age = clock_now_ms() - started;
    return updated == started && age >= 0 && age < OUTBOX_CLAIM_TTL_MS;
}

/* read_mono: clock_monotonic_ms() before the due query that read items. */
static int deliver_batch(struct outbox_ctx *ctx, mongoc_collection_t *coll, struct pool *pool,
                         struct item *items, size_t n, int64_t now_ms, int64_t read_mono,
                         struct outbox_stats *stats, struct sd_error *err)
{
    const char **ids = calloc(n, sizeof *ids);
    struct outbox_claim *claims = calloc(n, sizeof *claims);
    struct item **mine = calloc(n, sizeof *mine);
    bool *due = calloc(n, sizeof *due);
    struct send *sends = calloc(n, sizeof *sends);
    const struct outbox_claim **release = calloc(n, sizeof *release);
    int *versions = calloc(n, sizeof *versions);
    for (size_t i = 0; i < n; i++) {
        ids[i] = items[i].id_text;
        versions[i] = items[i].attempts;
    }
    int64_t t_start = clock_monotonic_ms(), t_sent = t_start;
    seam_wait("outbox_before_claims");
    int rc = claim_acquire_many(ctx->redis, ctx->prefix, ids, versions, ctx->owner,
                                OUTBOX_CLAIM_TTL_MS, claims, n, err);
    size_t n_mine = 0, n_sends = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct item *it = &items[i];
        it->claim = claims[i];
        if (it->claim.state == CLAIM_TAKEN || it->claim.state == CLAIM_STALE) {
            stats->skipped++;
        } else if (it->claim.state == CLAIM_SENT) {
            /* A deliverer crashed between the provider's answer and MongoDB. */
            int64_t modified = 0;
            struct sd_error e;
            if (record_sent(coll, NULL, it, it->claim.sent_provider, it->claim.sent_id, now_ms,
                            true, &modified, &e))
                log_msg(LOG_ERROR, ctx->log, "outbox.update", NULL, "%s", e.message);
            if (modified > 0) {
                stats->recovered++;
                log_entry(ctx, LOG_INFO, "outbox.recovered", it, it->claim.sent_provider,
                          it->claim.sent_id, NULL, "had been sent (claim says so); recorded it");
            } else {
                stats->skipped++;
            }
        } else {
            mine[n_mine] = it;
            release[n_mine++] = &it->claim;
        }
    }
    /* A copy read less than CLAIM_FRESH_MS ago whose claim we got is current
     * (claim.h): no re-read. */
    if (rc == 0 && n_mine && clock_monotonic_ms() - read_mono > CLAIM_FRESH_MS)
        rc = reread(coll, mine, n_mine, now_ms, due, err);
    else
        for (size_t i = 0; i < n_mine; i++)
            due[i] = true;

    /* The previous batch's outcomes are in (its claims finished) before this
     * one's are built on the same writer client. */
    flush_finish(ctx, pool);
    struct writes w = {0};
    for (size_t i = 0; rc == 0 && i < n_mine; i++) {
        struct item *it = mine[i];
        if (!due[i]) {
            stats->skipped++;
            continue;
        }
        if (stopping(ctx)) {
            stats->handed_back++; /* untouched: its claim ends below */
            continue;
        }
        int64_t started = bson_field_date(it->entry, "send_started_at", 0);
        if (started && in_flight(it, started)) {
            stats->skipped++;
            log_entry(ctx, LOG_WARN, "outbox.in_flight", it, NULL, NULL, NULL,
                      "left alone: a send of it started less than the claim's 5 minutes ago "
                      "and has no outcome yet, and its claim is gone (Redis lost it?): another "
                      "deliverer may be waiting for the provider's answer right now");
            continue;
        }
        struct send *s = &sends[n_sends];
        s->it = it;
        struct sd_error e = {""};
        if (outbox_message_prepare(ctx, it->entry, &s->msg, &s->st, &e)) {
            /* Nothing was sent now: an earlier uncertain SMS's mark stays,
             * so the next attempt still asks Twilio first (found in review). */
            if (started)
                s->st.maybe_accepted = true;
            record_failure(ctx, coll, &w, it, &s->msg, &s->st, &e, now_ms, stats);
            outbox_message_free(&s->msg);
            continue;
        }
        if (s->msg.via == VIA_SMS && s->msg.send_started_at) {
            bool found = false;
            char message_id[160] = "";
            if (outbox_message_find_sent(ctx, &s->msg, &found, message_id, sizeof message_id,
                                         &s->st, &e)) {
                if (stopping(ctx)) {
                    /* The look-up was cut by the stop: nothing was sent. */
                    stats->handed_back++;
                    outbox_message_free(&s->msg);
                    continue;
                }
                /* Cannot tell whether it went out: do not send blind. */
                s->st.cls = PROVIDER_TRANSIENT;
                s->st.maybe_accepted = true;
                sd_error_prefix(&e, "checking whether an earlier send arrived");
                record_failure(ctx, coll, &w, it, &s->msg, &s->st, &e, now_ms, stats);
                outbox_message_free(&s->msg);
                continue;
            }
            if (found) {
                record_accepted(ctx, coll, &w, it, s->msg.provider, message_id, true, false,
                                now_ms, stats);
                outbox_message_free(&s->msg);
                continue;
            }
        }
        n_sends++;
    }
    if (rc == 0 && n_sends) {
        struct sd_error e;
        int64_t mark = 0;
        if (mark_started(coll, sends, n_sends, &mark, &e)) {
            /* Without the mark a lost claim or a crash could resend blind:
             * these entries are handed back, no attempt counted (a mark
             * that landed in part is removed with the outcomes). */
            log_msg(LOG_ERROR, ctx->log, "outbox.update", NULL,
                    "%s; %zu entries handed back unsent", e.message, n_sends);
            for (size_t i = 0; i < n_sends; i++)
                sends[i].held = true;
        }
        for (size_t i = 0; i < n_sends; i++)
            if (sends[i].changed)
                sends[i].held = true;
        /* Only what may go out goes to the senders. */
        struct send *go = calloc(n_sends, sizeof *go);
        size_t n_go = 0;
        for (size_t i = 0; i < n_sends; i++)
            if (sends[i].rc == 0 && !sends[i].held)
                go[n_go++] = sends[i];
        pool->sends = go;
        pool->n = n_go;
        pool->now_ms = now_ms;
        t_sent = clock_monotonic_ms();
        int64_t send_wall = clock_now_ms(); /* no send below started earlier */
        send_all(pool);
        t_sent = clock_monotonic_ms() - t_sent;
        for (size_t i = 0, j = 0; i < n_sends; i++)
            if (sends[i].rc == 0 && !sends[i].held)
                sends[i] = go[j++];
        free(go);
        for (size_t i = 0; i < n_sends; i++) {
            struct send *s = &sends[i];
            if (s->rc == 0 && !s->attempted) {
                /* Kept back (no mark, stop, lost claim, unusable provider):
                 * pending as it was. It loses the send_started_at set above,
                 * so the next deliverer neither waits nor asks Twilio first;
                 * an entry another deliverer marked or claimed is its own
                 * now: nothing else of it is touched (and its mark stays). */
                forget_started(&w, s->it, mark);
                if (s->changed) {
                    stats->skipped++;
                    log_entry(ctx, LOG_WARN, "outbox.in_flight", s->it, NULL, NULL, NULL,
                              "not sent: another deliverer marked it as being sent after our "
                              "copy was read (its claim is gone: Redis lost it?)");
                } else if (s->claim_lost) {
                    stats->skipped++;
                    log_entry(ctx, LOG_WARN, "outbox.claim_lost", s->it, s->msg.provider, NULL,
                              NULL, "not sent: its claim expired or vanished before the send "
                                    "(left for the next tick, which re-reads it)");
                } else {
                    if (s->unusable)
                        stats->waiting++;
                    else
                        stats->handed_back++;
                }
                outbox_message_free(&s->msg);
                continue;
            }
            if (s->rc == 0) {
                if (!s->message_id[0] && s->msg.via == VIA_SMS) {
                    /* Accepted with an unreadable answer: ask Twilio for the
                     * SID, so status callbacks can still be matched. */
                    struct outbox_message since = s->msg;
                    struct provider_status lst;
                    struct sd_error lerr;
                    bool found = false;
                    since.send_started_at = send_wall;
                    outbox_message_find_sent(ctx, &since, &found, s->message_id,
                                             sizeof s->message_id, &lst, &lerr);
                }
                if (!s->message_id[0])
                    log_entry(ctx, LOG_WARN, "outbox.no_message_id", s->it, s->msg.provider,
                              NULL, &s->st,
                              "was accepted but the provider's answer carried no message id");
                record_accepted(ctx, coll, &w, s->it, s->msg.provider, s->message_id, false,
                                s->marked, now_ms, stats);
            } else {
                if (waits_for_operator(&s->st))
                    report_unusable(ctx, pool, s);
                record_failure(ctx, coll, &w, s->it, &s->msg, &s->st, &s->err, now_ms, stats);
            }
            outbox_message_free(&s->msg);
        }
    }
    /* where a slow batch spent its time (operators tuning, and benchmarks) */
    log_msg(LOG_DEBUG, ctx->log, "outbox.batch", NULL,
            "batch of %zu: %zu sent in %lld ms, %d outcomes to write, %lld ms before writing", n,
            n_sends, (long long)t_sent, w.n, (long long)(clock_monotonic_ms() - t_start));
    for (size_t i = 0; i < n_mine; i++)
        versions[i] = mine[i]->attempts + (mine[i]->written ? 1 : 0);
    /* Ownership of the bulk, the claims to finish and their versions moves
     * to the flush. */
    pool->flush = (struct flush){.w = w,
                                 .coll = pool->wcoll ? pool->wcoll : coll,
                                 .log = ctx->log,
                                 .release = release,
                                 .versions = versions,
                                 .n_release = n_mine};
    flush_start(pool, &pool->flush);
    free(ids);
    free(claims);
    free(mine);
    free(due);
    free(sends);
    return rc;
}

int outbox_deliver(struct outbox_ctx *ctx, int64_t now_ms, int limit, struct outbox_stats *stats,
                   struct sd_error *err)
{
    if (limit <= 0)
        limit = 100;
    mongoc_collection_t *coll = mongoc_client_get_collection(ctx->mongo, ctx->db,
                                                             COLL_NOTIFICATION);
    /* Read the batch first: sends are slow, and a cursor held across them
     * could time out on the server. */
    int64_t read_mono = clock_monotonic_ms();
    bson_t **docs = NULL;
    size_t n_docs = 0, n = 0;
    int rc = store_find_oldest(coll, "pending", "next_attempt_at", "$lte", now_ms, limit, &docs,
                               &n_docs, err);
    if (rc)
        sd_error_prefix(err, "outbox: querying due entries");
    struct item *items = calloc(n_docs + 1, sizeof *items);
    if (!items && rc == 0)
        rc = sd_error_set(err, "out of memory");
    for (size_t i = 0; items && i < n_docs; i++) {
        struct item *it = &items[n];
        if (!id_text(docs[i], it->id_text, sizeof it->id_text, &it->id)) {
            log_msg(LOG_ERROR, ctx->log, "outbox.bad_entry", NULL,
                    "skipping an outbox entry whose _id is neither an ObjectId, a string nor "
                    "an integer");
            continue;
        }
        it->entry = docs[i]; /* owned by the item from here */
        docs[i] = NULL;
        it->key = entry_str(it->entry, "key");
        it->attempts = entry_attempts(it->entry);
        n++;
    }
    for (size_t i = 0; i < n_docs; i++)
        if (docs[i])
            bson_destroy(docs[i]);
    free(docs);
    stats->due += (int64_t)n;

    struct pool *pool = calloc(1, sizeof *pool);
    pool->ctx = ctx;
    if (ctx->store && n > OUTBOX_BATCH) {
        pool->writer = store_pop(ctx->store);
        pool->wcoll = mongoc_client_get_collection(pool->writer, ctx->db, COLL_NOTIFICATION);
    }
    if (ctx->redis_opts) {
        pool->redis_opts = *ctx->redis_opts;
        pool->have_redis = true;
    }
    for (size_t i = 0; rc == 0 && i < n; i += OUTBOX_BATCH) {
        if (ctx->stop && atomic_load(ctx->stop))
            break;
        size_t m = n - i < OUTBOX_BATCH ? n - i : OUTBOX_BATCH;
        rc = deliver_batch(ctx, coll, pool, items + i, m, now_ms, read_mono, stats, err);
    }
    flush_finish(ctx, pool);
    if (pool->writer) {
        mongoc_collection_destroy(pool->wcoll);
        store_push(ctx->store, pool->writer);
    }
    pool_destroy(pool);
    free(pool);
    for (size_t i = 0; i < n; i++) {
        bson_destroy(items[i].entry);
        bson_value_destroy(&items[i].id);
    }
    free(items);
    mongoc_collection_destroy(coll);
    return rc;
}
