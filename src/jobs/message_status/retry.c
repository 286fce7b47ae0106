/* msgstatus_retry — the message-status job's two sweeps that talk to
 * providers: failed messages sent again, stale ones looked up.
 *
 * Re-send (SPEC §7): a failed or undelivered outbound message whose
 * next_retry_at has come (retry.lua set it when the failure was applied) goes
 * out again through the outbox's provider code (same sender, recipient, body),
 * under a Redis claim per attempt — <prefix>outbox:claim:resend:<id>:<n> —
 * so two instances never send one attempt twice; the claim turns into
 * "sent:<provider>:<id>" before the database records it, as for the outbox.
 * Before the provider is called the message gets `supportd_resend: {attempt,
 * started_at}` (the outbox's send_started_at discipline); the marker goes when
 * the outcome is recorded. A marker found by a later attempt — an uncertain
 * answer (5xx, timeout: `uncertain: true`), a crash or a lost claim between
 * the provider's acceptance and the record — means "look up first": Twilio is
 * asked whether the send arrived (twilio_find_message: same recipient, sender
 * and whole body, created since started_at, none of the message's known
 * SIDs), and an email (SendGrid and SMTP cannot be asked) is marked final
 * instead of risking a duplicate. When the marker cannot be written, nothing
 * is sent.
 *
 * Reconcile: Twilio is asked for messages whose status has not moved for
 * retry.lua's reconcile.after_seconds; the answer is applied as an event with
 * source "poll" (the same event id as the webhook would carry). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "core/seam.h"
#include "jobs/message_status/model.h"
#include "jobs/runner.h"
#include "outbox/claim.h"
#include "outbox/dispatch.h"
#include "outbox/outbox.h"
#include "providers/http.h"
#include "providers/smtp.h"
#include "providers/twilio.h"
#include "store/mongo.h"

#define RETRY_BATCH 100
#define RESEND_CLAIM_TTL_MS (5 * 60 * 1000)
#define RESEND_SENT_TTL_MS (7LL * 24 * 3600 * 1000)

static void log_message(struct ms_tick *t, enum log_level level, const char *event,
                        const char *target, const char *fmt, const char *detail)
{
    log_field(level, t->env->log, event, "message", target, fmt, target, detail ? detail : "");
}

struct clients {
    struct http_client *http;
    struct smtp_client *smtp;
    struct outbox_ctx ctx;
    char owner[128];
};

static int clients_open(struct ms_tick *t, struct clients *c, struct sd_error *err)
{
    const struct config *cfg = t->env->cfg;
    memset(c, 0, sizeof *c);
    struct http_options hopts = {.timeout_ms = cfg->http_timeout_ms, .stop = t->env->stop};
    if (!(c->http = http_client_new(&hopts, err)))
        return -1;
    if (cfg->email_provider == EMAIL_SMTP && cfg->smtp_url) {
        struct smtp_options sopts = {.url = cfg->smtp_url,
                                     .user = cfg->smtp_user,
                                     .password = cfg->smtp_password,
                                     .timeout_ms = 2 * cfg->http_timeout_ms,
                                     .stop = t->env->stop};
        if (!(c->smtp = smtp_client_new(&sopts, err))) {
            http_client_destroy(c->http);
            return -1;
        }
    }
    runner_instance_id(c->owner, sizeof c->owner);
    c->ctx = (struct outbox_ctx){.mongo = t->env->mongo,
                                 .db = t->env->db,
                                 .redis = t->env->redis,
                                 .prefix = cfg->redis_prefix,
                                 .cfg = cfg,
                                 .http = c->http,
                                 .smtp = c->smtp,
                                 .log = t->env->log,
                                 .stop = t->env->stop,
                                 .owner = c->owner};
    return 0;
}

static void clients_close(struct clients *c)
{
    smtp_client_destroy(c->smtp);
    http_client_destroy(c->http);
}

/* The message as an outbox entry, so the outbox's provider code sends it. */
static void as_entry(const bson_t *m, const char *key, int64_t started, bson_t *e)
{
    const char *channel = bson_field_utf8(m, "channel");
    bool sms = channel && !strcmp(channel, "sms");
    bson_t r;
    BSON_APPEND_UTF8(e, "key", key);
    BSON_APPEND_UTF8(e, "via", sms ? "sms" : "email");
    BSON_APPEND_DOCUMENT_BEGIN(e, "recipient", &r);
    const char *to = bson_field_utf8(m, "to");
    BSON_APPEND_UTF8(&r, sms ? "phone" : "email", to ? to : "");
    bson_append_document_end(e, &r);
    const char *copy[][2] = {{"body", "text"}, {"from", "from"}, {"subject", "subject"},
                             {"account_sid", "account_sid"}, {"status_callback", "status_callback"}};
    for (size_t i = 0; i < sizeof copy / sizeof *copy; i++) {
        const char *v = bson_field_utf8(m, copy[i][0]);
        if (v)
            BSON_APPEND_UTF8(e, copy[i][1], v);
    }
    bson_iter_t it;
    if (bson_iter_init_find(&it, m, "channel_id"))
        bson_append_iter(e, "channel_id", -1, &it);
    if (started)
        BSON_APPEND_DATE_TIME(e, "send_started_at", started);
}

/* A conditional single-message write under the fence; false when it did not
 * land (a concurrent change: the next tick looks again). */
static int write_message(struct ms_tick *t, const bson_t *item, const bson_t *update,
                         bool *landed, struct sd_error *err)
{
    *landed = false;
    if (!ms_fence(t, err))
        return -1;
    bson_t filter = BSON_INITIALIZER, reply, sub;
    bson_iter_t it;
    bson_iter_init_find(&it, item, "message_id");
    bson_append_iter(&filter, "_id", -1, &it);
    if (bson_iter_init_find(&it, item, "read_updated_at")) {
        bson_append_iter(&filter, "updated_at", -1, &it);
    } else {
        BSON_APPEND_DOCUMENT_BEGIN(&filter, "updated_at", &sub);
        BSON_APPEND_BOOL(&sub, "$exists", false);
        bson_append_document_end(&filter, &sub);
    }
    bson_error_t berr;
    bool ok = mongoc_collection_update_one(t->msgs, &filter, update, NULL, &reply, &berr);
    if (ok && bson_iter_init_find(&it, &reply, "matchedCount"))
        *landed = bson_iter_as_int64(&it) > 0;
    bson_destroy(&filter);
    bson_destroy(&reply);
    return ok ? 0 : sd_error_set(err, "updating message %s: %s", bson_field_utf8(item, "target"),
                                 store_errmsg(&berr));
}

static void history(bson_t *push, const char *status, int64_t at, const char *pstatus,
                    const char *event_id, const char *code)
{
    bson_t h;
    BSON_APPEND_DOCUMENT_BEGIN(push, "status_history", &h);
    BSON_APPEND_UTF8(&h, "status", status);
    BSON_APPEND_DATE_TIME(&h, "at", at);
    BSON_APPEND_UTF8(&h, "source", "retry");
    if (code && *code)
        BSON_APPEND_UTF8(&h, "code", code);
    if (pstatus)
        BSON_APPEND_UTF8(&h, "provider_status", pstatus);
    BSON_APPEND_UTF8(&h, "event_id", event_id);
    BSON_APPEND_BOOL(&h, "applied", true);
    bson_append_document_end(push, &h);
}

/* The message's current provider id, before the re-send replaces it, in
 * conversation-message-sids ({_id: "<provider>:<id>", message_id, at}), so
 * that its late events still find the message (apply.c) and go to the
 * history only (decide.c). Found by the chaos run: a Twilio event for the
 * first SID came back from the webhook journal after the re-send and waited
 * out the grace unmatched. An upsert: a re-send retried is harmless; a
 * failure only costs those late events their match (logged). */
static void remember_sid(struct ms_tick *t, const bson_t *item)
{
    const char *provider = bson_field_utf8(item, "provider"),
               *pmid = bson_field_utf8(item, "provider_message_id");
    bson_iter_t id;
    if (!provider || !pmid || !*pmid || !bson_iter_init_find(&id, item, "message_id"))
        return;
    char key[240];
    snprintf(key, sizeof key, "%s:%s", provider, pmid);
    bson_t sel = BSON_INITIALIZER, u = BSON_INITIALIZER, on_insert, opts = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&sel, "_id", key);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$setOnInsert", &on_insert);
    bson_append_iter(&on_insert, "message_id", -1, &id);
    BSON_APPEND_DATE_TIME(&on_insert, "at", t->wall_ms);
    bson_append_document_end(&u, &on_insert);
    BSON_APPEND_BOOL(&opts, "upsert", true);
    mongoc_collection_t *coll =
        mongoc_client_get_collection(t->env->mongo, t->env->db, COLL_MESSAGE_SIDS);
    bson_error_t berr;
    if (!mongoc_collection_update_one(coll, &sel, &u, &opts, NULL, &berr) &&
        berr.code != MONGOC_ERROR_DUPLICATE_KEY)
        log_msg(LOG_WARN, t->env->log, "message.sid_not_kept", NULL,
                "message %s: cannot keep its earlier id %s in %s (its late events will not "
                "find it): %s",
                bson_field_utf8(item, "target") ? bson_field_utf8(item, "target") : "?", pmid,
                COLL_MESSAGE_SIDS, store_errmsg(&berr));
    mongoc_collection_destroy(coll);
    bson_destroy(&sel);
    bson_destroy(&u);
    bson_destroy(&opts);
}

/* The re-send was accepted: a new attempt starts over at "queued". */
static int record_resent(struct ms_tick *t, const bson_t *item, const char *provider,
                         const char *message_id, int64_t attempt, struct sd_error *err)
{
    remember_sid(t, item);
    bson_t u = BSON_INITIALIZER, set, unset, push;
    char event_id[200];
    snprintf(event_id, sizeof event_id, "retry:%s:%lld", bson_field_utf8(item, "target"), (long long)attempt);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_UTF8(&set, "status", "queued");
    BSON_APPEND_UTF8(&set, "provider", provider);
    BSON_APPEND_UTF8(&set, "provider_message_id", message_id);
    BSON_APPEND_INT64(&set, "attempts", attempt);
    BSON_APPEND_NULL(&set, "next_retry_at");
    BSON_APPEND_NULL(&set, "error");
    BSON_APPEND_DATE_TIME(&set, "updated_at", t->wall_ms);
    bson_append_document_end(&u, &set);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$unset", &unset);
    BSON_APPEND_UTF8(&unset, "supportd_resend", "");
    bson_append_document_end(&u, &unset);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$push", &push);
    history(&push, "queued", t->wall_ms, "queued", event_id, NULL);
    bson_append_document_end(&u, &push);
    bool landed;
    int rc = write_message(t, item, &u, &landed, err);
    bson_destroy(&u);
    if (rc == 0 && !landed)
        t->c.conflicts++;
    return rc;
}

/* retry.lua's delay before the next attempt after `attempts` sends. */
static int64_t retry_delay_s(struct ms_tick *t, int64_t attempts)
{
    bson_t args = BSON_INITIALIZER, out = BSON_INITIALIZER;
    BSON_APPEND_INT64(&args, "0", attempts);
    struct sd_error err;
    int64_t d = 60;
    bson_iter_t it;
    if (rules_call(t->env->rules, "retry", "delay", &args, &out, &err) == 0 &&
        bson_iter_init_find(&it, &out, "result") && BSON_ITER_HOLDS_NUMBER(&it))
        d = bson_iter_as_int64(&it);
    bson_destroy(&args);
    bson_destroy(&out);
    return d > 0 ? d : 60;
}

/* The outcome of a re-send that was not accepted. give_up: final now. Else
 * next_retry_at from the backoff, and the "started" marker: kept, with
 * uncertain: true, when the provider may have accepted it (5xx, timeout);
 * removed when it certainly did not and no earlier send of this attempt is
 * unresolved (had_marker false). */
static int record_resend_failure(struct ms_tick *t, const bson_t *item, int64_t attempt,
                                 const struct provider_status *st, const struct sd_error *perr,
                                 int64_t started, bool had_marker, bool give_up,
                                 struct sd_error *err)
{
    bson_t u = BSON_INITIALIZER, set, e, push, unset;
    const char *target = bson_field_utf8(item, "target");
    bool keep_marker = !give_up && (st->maybe_accepted || had_marker);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_DATE_TIME(&set, "updated_at", t->wall_ms);
    if (give_up) {
        BSON_APPEND_BOOL(&set, "final", true);
        BSON_APPEND_NULL(&set, "next_retry_at");
        BSON_APPEND_DOCUMENT_BEGIN(&set, "error", &e);
        BSON_APPEND_UTF8(&e, "code", st->code);
        BSON_APPEND_UTF8(&e, "message", perr->message);
        bson_append_document_end(&set, &e);
    } else {
        /* The backoff counts from now, when the send has failed, not from the
         * tick's start: after a send slower than the backoff (a timeout), the
         * next attempt's look-up would otherwise come at once, before a
         * provider that accepted late shows the message, and send a second
         * one (found by the chaos run). Elapsed wall time moves the tick's
         * now (maybe --now) along. */
        int64_t since = clock_now_ms() - t->wall_ms;
        BSON_APPEND_DATE_TIME(&set, "next_retry_at",
                              t->env->now_ms + (since > 0 ? since : 0) +
                                  retry_delay_s(t, attempt - 1) * 1000);
        if (keep_marker) {
            bson_t r;
            BSON_APPEND_DOCUMENT_BEGIN(&set, "supportd_resend", &r);
            BSON_APPEND_INT64(&r, "attempt", attempt);
            BSON_APPEND_DATE_TIME(&r, "started_at", started);
            BSON_APPEND_BOOL(&r, "uncertain", true);
            bson_append_document_end(&set, &r);
        }
    }
    bson_append_document_end(&u, &set);
    if (!keep_marker) {
        BSON_APPEND_DOCUMENT_BEGIN(&u, "$unset", &unset);
        BSON_APPEND_UTF8(&unset, "supportd_resend", "");
        bson_append_document_end(&u, &unset);
    }
    if (give_up) {
        char event_id[200];
        snprintf(event_id, sizeof event_id, "retry:%s:%lld", target, (long long)attempt);
        BSON_APPEND_DOCUMENT_BEGIN(&u, "$push", &push);
        history(&push, bson_field_utf8(item, "status") ? bson_field_utf8(item, "status") : "failed",
                t->wall_ms, NULL, event_id, st->code);
        bson_append_document_end(&u, &push);
        t->c.resend_failed++;
        log_message(t, LOG_WARN, "retry.exhausted", target,
                    "message %s will not be sent again: %s", perr->message);
        t->c.retry_exhausted++;
    } else {
        if (st->maybe_accepted)
            t->c.resend_uncertain++;
        log_message(t, LOG_WARN, "retry.send_failed", target,
                    "re-sending message %s failed, tried again later: %s", perr->message);
    }
    bool landed;
    int rc = write_message(t, item, &u, &landed, err);
    bson_destroy(&u);
    return rc;
}

/* A copy of the plan item expecting the message's updated_at to be `at` (after
 * this tick wrote it). */
static void item_written(const bson_t *item, int64_t at, bson_t *out)
{
    bson_copy_to_excluding_noinit(item, out, "read_updated_at", NULL);
    BSON_APPEND_DATE_TIME(out, "read_updated_at", at);
}

/* "A re-send of this attempt started at `started`", written before the
 * provider is called, so that a crash, a lost claim or a lost answer after
 * Twilio's acceptance is followed by a look-up, never by a blind send. The
 * write is conditional like every other (a concurrent change: not landed,
 * nothing is sent this tick) and fenced by the lease. */
static int mark_resend_started(struct ms_tick *t, const bson_t *item, int64_t attempt,
                               int64_t started, bool *landed, struct sd_error *err)
{
    bson_t u = BSON_INITIALIZER, set, r;
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_DOCUMENT_BEGIN(&set, "supportd_resend", &r);
    BSON_APPEND_INT64(&r, "attempt", attempt);
    BSON_APPEND_DATE_TIME(&r, "started_at", started);
    bson_append_document_end(&set, &r);
    BSON_APPEND_DATE_TIME(&set, "updated_at", t->wall_ms);
    bson_append_document_end(&u, &set);
    seam_wait("message_status_before_resend_mark");
    int rc = write_message(t, item, &u, landed, err);
    bson_destroy(&u);
    return rc;
}

/* The SIDs this message already had: its provider_message_id and those its
 * history's Twilio events name ("twilio:<sid>:<status>"). None of them is a
 * new attempt's send. Owned strings; free with free_sids. */
static size_t known_sids(const bson_t *msg, char ***out)
{
    size_t n = 0, cap = 8;
    char **v = malloc(cap * sizeof *v);
    const char *pmid = bson_field_utf8(msg, "provider_message_id");
    if (pmid && *pmid)
        v[n++] = strdup(pmid);
    bson_iter_t it, h, e;
    if (bson_iter_init_find(&it, msg, "status_history") && BSON_ITER_HOLDS_ARRAY(&it) &&
        bson_iter_recurse(&it, &h)) {
        while (bson_iter_next(&h)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&h) || !bson_iter_recurse(&h, &e) ||
                !bson_iter_find(&e, "event_id") || !BSON_ITER_HOLDS_UTF8(&e))
                continue;
            const char *id = bson_iter_utf8(&e, NULL);
            if (strncmp(id, "twilio:", 7))
                continue;
            id += 7;
            size_t len = strcspn(id, ":");
            if (n == cap)
                v = realloc(v, (cap *= 2) * sizeof *v);
            v[n++] = strndup(id, len);
        }
    }
    *out = v;
    return n;
}

static void free_sids(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Sends one due message again, under its attempt's claim. -1 only when the
 * sweep cannot go on (Redis or the database down, the lease gone). */
static int resend_one(struct ms_tick *t, struct clients *c, const bson_t *item_read,
                      const bson_t *msg, struct sd_error *err)
{
    const char *target = bson_field_utf8(item_read, "target");
    bson_iter_t it;
    int64_t attempt = bson_iter_init_find(&it, item_read, "attempt") ? bson_iter_as_int64(&it) : 2;
    char claim_id[120], key[160];
    snprintf(claim_id, sizeof claim_id, "resend:%s:%lld", target, (long long)attempt);
    snprintf(key, sizeof key, "retry:%s:%lld", target, (long long)attempt);
    struct outbox_claim claim;
    if (claim_acquire(t->env->redis, t->env->cfg->redis_prefix, claim_id, c->owner,
                      RESEND_CLAIM_TTL_MS, &claim, err))
        return -1;
    if (claim.state == CLAIM_TAKEN)
        return 0;
    if (claim.state == CLAIM_SENT) { /* a sender died after the provider accepted */
        t->c.resend_recovered++;
        return record_resent(t, item_read, claim.sent_provider, claim.sent_id, attempt, err);
    }
    /* A send of this message started earlier and its outcome was never
     * recorded (an uncertain answer, a crash, a lost claim)? "at": the marker
     * of earlier versions. The earliest start is kept, so every later look-up
     * covers every unresolved send. */
    int64_t started = 0;
    if (bson_iter_init(&it, msg) && (bson_iter_find_descendant(&it, "supportd_resend.started_at", &it) ||
                                     (bson_iter_init(&it, msg) &&
                                      bson_iter_find_descendant(&it, "supportd_resend.at", &it))) &&
        BSON_ITER_HOLDS_DATE_TIME(&it))
        started = bson_iter_date_time(&it);
    bool had_marker = started != 0;
    /* A send started, with no outcome recorded (no `uncertain`), less than a
     * claim's lifetime ago: its sender may still be waiting for Twilio, which
     * has not created the message yet, so a look-up now would not find it.
     * We hold the claim only because the sender's ended (released when its
     * lease was lost, or gone with Redis's data). Left alone until the window
     * has passed; the look-up then sees what Twilio accepted. Found by the
     * chaos run (seed 23): a re-send's answer came after 3 s, its tick lost
     * its lease before recording it, and another instance looked up at once
     * and sent a second SMS. The tick's now, so that tests can move it. */
    if (had_marker && !(bson_iter_init(&it, msg) &&
                        bson_iter_find_descendant(&it, "supportd_resend.uncertain", &it) &&
                        bson_iter_as_bool(&it)) &&
        t->env->now_ms - started < RESEND_CLAIM_TTL_MS) {
        t->c.resend_in_flight++;
        log_message(t, LOG_WARN, "retry.in_flight", target,
                    "message %s: a re-send started less than 5 minutes ago and has no outcome "
                    "recorded; left alone until its answer can have come (%s)",
                    "then Twilio is asked whether it arrived");
        if (claim.state == CLAIM_OURS)
            claim_release(t->env->redis, &claim, NULL);
        return 0;
    }
    bson_t entry = BSON_INITIALIZER, item; /* item: the plan item, as the message stands */
    bson_copy_to(item_read, &item);
    as_entry(msg, key, started, &entry);
    struct outbox_message om;
    struct provider_status st;
    struct sd_error perr = {""};
    char message_id[160] = "";
    char **sids = NULL;
    size_t n_sids = known_sids(msg, &sids);
    int rc = 0;
    if (outbox_message_prepare(&c->ctx, &entry, &om, &st, &perr)) {
        rc = record_resend_failure(t, &item, attempt, &st, &perr, started, had_marker,
                                   st.cls == PROVIDER_PERMANENT, err);
        goto done;
    }
    om.known_sids = (const char *const *)sids;
    om.n_known_sids = n_sids;
    if (had_marker) {
        if (om.via != VIA_SMS) {
            st.cls = PROVIDER_PERMANENT;
            snprintf(st.code, sizeof st.code, "resend_uncertain");
            sd_error_set(&perr, "the last re-send ended without an answer and %s cannot be "
                                "asked whether it arrived; not sent again to avoid a duplicate",
                         om.provider);
            rc = record_resend_failure(t, &item, attempt, &st, &perr, started, true, true, err);
            goto done;
        }
        bool found = false;
        if (outbox_message_find_sent(&c->ctx, &om, &found, message_id, sizeof message_id, &st,
                                     &perr)) {
            message_id[0] = '\0';
            st.maybe_accepted = true;
            rc = record_resend_failure(t, &item, attempt, &st, &perr, started, true, false, err);
            goto done;
        }
        if (found) {
            claim_mark_sent(t->env->redis, &claim, om.provider, message_id, RESEND_SENT_TTL_MS,
                            NULL);
            t->c.resend_recovered++;
            rc = record_resent(t, &item, om.provider, message_id, attempt, err);
            goto done;
        }
    }
    /* Wall-clock time, not the tick's (maybe --now) time: a look-up compares
     * it with Twilio's date_created. */
    if (!started)
        started = clock_now_ms();
    bool landed = false;
    rc = mark_resend_started(t, &item, attempt, started, &landed, err);
    if (rc || !landed) {
        if (rc == 0) {
            t->c.conflicts++; /* changed since read: looked at again next tick */
            log_message(t, LOG_INFO, "retry.conflict", target,
                        "message %s changed since it was read: not sent this tick (%s)",
                        "its re-send marker did not land; looked at again next tick");
        }
        goto done;
    }
    bson_reinit(&item);
    item_written(item_read, t->wall_ms, &item);
    if (!ms_fence(t, err)) {
        rc = -1;
        goto done;
    }
    if (outbox_message_send(&c->ctx, &om, t->env->now_ms, message_id, sizeof message_id, &st,
                            &perr) == 0) {
        struct sd_error merr;
        if (claim_mark_sent(t->env->redis, &claim, om.provider, message_id, RESEND_SENT_TTL_MS,
                            &merr))
            log_message(t, LOG_WARN, "retry.claim", target,
                        "message %s: recording the re-send in Redis failed: %s", merr.message);
        t->c.resent++;
        rc = record_resent(t, &item, om.provider, message_id, attempt, err);
    } else {
        message_id[0] = '\0';
        rc = record_resend_failure(t, &item, attempt, &st, &perr, started, had_marker,
                                   st.cls == PROVIDER_PERMANENT, err);
    }
done:
    if (claim.state == CLAIM_OURS && !message_id[0])
        claim_release(t->env->redis, &claim, NULL);
    outbox_message_free(&om);
    free_sids(sids, n_sids);
    bson_destroy(&entry);
    bson_destroy(&item);
    return rc;
}

int ms_retry_sweep(struct ms_tick *t, struct sd_error *err)
{
    static const char *const statuses[] = {"failed", "undelivered"};
    struct clients c;
    bool open = false;
    int rc = 0;
    for (size_t s = 0; s < 2 && rc == 0 && !job_should_stop(t->env); s++) {
        bson_t **docs = NULL;
        size_t n = 0;
        rc = store_find_oldest(t->msgs, statuses[s], "next_retry_at", "$lte", t->env->now_ms,
                               RETRY_BATCH, &docs, &n, err);
        bson_t plan = BSON_INITIALIZER;
        uint32_t np = 0;
        if (rc == 0)
            msgstatus_plan_retries((const bson_t *const *)docs, n, t->env->now_ms, &plan, &np);
        t->c.retries_due += np;
        if (rc == 0 && np && !open) {
            rc = clients_open(t, &c, err);
            open = rc == 0;
        }
        bson_iter_t it;
        if (rc == 0 && np && bson_iter_init(&it, &plan)) {
            while (rc == 0 && bson_iter_next(&it) && !job_should_stop(t->env)) {
                bson_t item;
                bson_iter_child(&it, &item);
                const char *target = bson_field_utf8(&item, "target");
                for (size_t i = 0; i < n && target; i++) {
                    bson_iter_t id;
                    char hex[25] = "";
                    if (bson_iter_init_find(&id, docs[i], "_id") && BSON_ITER_HOLDS_OID(&id))
                        bson_oid_to_string(bson_iter_oid(&id), hex);
                    if (!strcmp(hex, target)) {
                        rc = resend_one(t, &c, &item, docs[i], err);
                        break;
                    }
                }
            }
        }
        bson_destroy(&plan);
        store_docs_free(docs, n);
    }
    if (open)
        clients_close(&c);
    return rc;
}

/* ---- reconcile --------------------------------------------------------------- */

/* The candidates to poll in one status: only what can be polled (Twilio, with
 * a SID), stale for the rule's period, least recently polled first — never
 * polled (no supportd_polled_at) before the rest, then by updated_at — so that
 * neither messages of other providers nor ones just polled fill the page
 * ahead of those due. Served by {provider, status, supportd_polled_at,
 * updated_at} (src/store/indexes.c). Appends to *docs. */
static int find_pollable(struct ms_tick *t, const char *status, int64_t cutoff_ms, int64_t limit,
                         bson_t ***docs, size_t *n, struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, cond, opts = BSON_INITIALIZER, sort;
    BSON_APPEND_UTF8(&filter, "provider", "twilio");
    BSON_APPEND_UTF8(&filter, "status", status);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "provider_message_id", &cond);
    BSON_APPEND_UTF8(&cond, "$gt", ""); /* a non-empty string */
    bson_append_document_end(&filter, &cond);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "updated_at", &cond);
    BSON_APPEND_DATE_TIME(&cond, "$lt", cutoff_ms);
    bson_append_document_end(&filter, &cond);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, "supportd_polled_at", 1);
    BSON_APPEND_INT32(&sort, "updated_at", 1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", limit);
    int rc = store_find_all(t->msgs, &filter, &opts, docs, n, err);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return rc;
}

/* supportd_polled_at on every polled message, so that the next look waits a
 * period and the next page starts with those not polled. Conditional on the
 * updated_at read, like every write of this job (one bulk): a message the
 * poll's answer changed has a fresh updated_at and is not stale anyway. */
static int record_polls(struct ms_tick *t, const bson_t *plan, struct sd_error *err)
{
    if (!ms_fence(t, err))
        return -1;
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&opts, "ordered", false);
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(t->msgs, &opts);
    bson_destroy(&opts);
    bson_t u = BSON_INITIALIZER, set;
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
    BSON_APPEND_DATE_TIME(&set, "supportd_polled_at", t->env->now_ms);
    bson_append_document_end(&u, &set);
    bson_iter_t p, m;
    int rc = 0, n = 0;
    if (bson_iter_init(&p, plan)) {
        while (rc == 0 && bson_iter_next(&p)) {
            bson_t filter = BSON_INITIALIZER;
            if (bson_iter_recurse(&p, &m) && bson_iter_find(&m, "message_id"))
                bson_append_iter(&filter, "_id", -1, &m);
            if (bson_iter_recurse(&p, &m) && bson_iter_find(&m, "read_updated_at"))
                bson_append_iter(&filter, "updated_at", -1, &m);
            if (bson_has_field(&filter, "_id") && bson_has_field(&filter, "updated_at")) {
                rc = store_bulk_update_doc(bulk, &filter, &u, false, err);
                n++;
            }
            bson_destroy(&filter);
        }
    }
    bson_error_t berr;
    int64_t matched;
    if (rc == 0 && n && !store_bulk_run(bulk, &matched, &berr))
        rc = sd_error_set(err, "recording polls of %d messages: %s", n, store_errmsg(&berr));
    mongoc_bulk_operation_destroy(bulk);
    bson_destroy(&u);
    return rc;
}

int ms_reconcile_sweep(struct ms_tick *t, struct sd_error *err)
{
    static const char *const statuses[] = {"queued", "sending", "sent"};
    const struct config *cfg = t->env->cfg;
    bson_t cfgv = BSON_INITIALIZER;
    int rc = rules_get(t->env->rules, "retry", "reconcile", &cfgv, err);
    bson_iter_t it, f;
    bool configured = rc == 0 && bson_iter_init_find(&it, &cfgv, "result");
    int64_t max = 50;
    if (configured && bson_iter_init(&f, &cfgv) &&
        bson_iter_find_descendant(&f, "result.max_per_tick", &f) && BSON_ITER_HOLDS_NUMBER(&f))
        max = bson_iter_as_int64(&f);
    if (rc || !configured || !cfg->twilio_account_sid || !cfg->twilio_auth_token) {
        bson_destroy(&cfgv);
        return rc;
    }
    /* collect: at most max_per_tick in all, the three statuses in turn */
    bson_t plan = BSON_INITIALIZER;
    uint32_t np = 0;
    for (size_t s = 0; s < 3 && rc == 0 && (int64_t)np < max; s++) {
        char path[80];
        snprintf(path, sizeof path, "result.after_seconds.%s", statuses[s]);
        if (!bson_iter_init(&f, &cfgv) || !bson_iter_find_descendant(&f, path, &f) ||
            !BSON_ITER_HOLDS_NUMBER(&f))
            continue;
        int64_t after_ms = bson_iter_as_int64(&f) * 1000;
        bson_t **docs = NULL;
        size_t n = 0;
        rc = find_pollable(t, statuses[s], t->env->now_ms - after_ms, max - np, &docs, &n, err);
        if (rc == 0)
            rc = msgstatus_plan_polls((const bson_t *const *)docs, n, t->env->now_ms,
                                      t->env->rules, &plan, &np, err);
        store_docs_free(docs, n);
    }
    bson_destroy(&cfgv);
    struct clients c;
    bool open = false;
    if (rc == 0 && np) {
        rc = clients_open(t, &c, err);
        open = rc == 0;
    }
    /* poll */
    bson_t **entries = calloc(np + 1, sizeof *entries);
    size_t ne = 0;
    bson_iter_t p;
    if (rc == 0 && np && bson_iter_init(&p, &plan)) {
        struct twilio tw = {.http = c.http,
                            .base = cfg->twilio_api_base,
                            .account_sid = cfg->twilio_account_sid,
                            .auth_token = cfg->twilio_auth_token};
        while (bson_iter_next(&p) && !job_should_stop(t->env)) {
            bson_t item;
            bson_iter_child(&p, &item);
            struct twilio_message tm;
            struct provider_status st;
            struct sd_error perr;
            const char *sid = bson_field_utf8(&item, "provider_message_id");
            if (twilio_fetch_message(&tw, NULL, sid, &tm, &st, &perr)) {
                t->c.poll_failed++;
                log_message(t, LOG_WARN, "reconcile.failed", bson_field_utf8(&item, "target"),
                            "looking message %s up at Twilio failed: %s", perr.message);
                continue;
            }
            t->c.polled++;
            entries[ne] = bson_new();
            msgstatus_poll_entry("twilio", sid, tm.status, tm.error_code, tm.error_message,
                                 t->wall_ms, entries[ne]);
            ne++;
        }
    }
    /* apply the answers, then remember the polls */
    if (rc == 0 && ne) {
        bson_t out = BSON_INITIALIZER, not_landed = BSON_INITIALIZER;
        rc = ms_decide_and_write(t, (const bson_t *const *)entries, ne, &out, &not_landed, err);
        /* A rule failing for one polled message: logged; the poll is
         * recorded below like the others, so it is asked again a period later. */
        bson_iter_t re;
        if (rc == 0 && bson_iter_init_find(&re, &out, "rule_errors") &&
            bson_iter_recurse(&re, &re))
            while (bson_iter_next(&re))
                log_message(t, LOG_WARN, "reconcile.rule_failed", bson_iter_key(&re),
                            "the poll of message %s was not applied: %s",
                            bson_iter_utf8(&re, NULL));
        bson_destroy(&out);
        bson_destroy(&not_landed);
    }
    if (rc == 0 && np)
        rc = record_polls(t, &plan, err);
    for (size_t i = 0; i < ne; i++)
        bson_destroy(entries[i]);
    free(entries);
    bson_destroy(&plan);
    if (open)
        clients_close(&c);
    return rc;
}
