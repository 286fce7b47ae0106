/* commcheck/job.c — collect and apply around commcheck_decide (see model.h).
 *
 * Alert keys and FerretDB. SPEC §2 makes `key` ("<channel_id>:<check>")
 * unique, and the unique index on `key` (store/indexes.c) is what keeps one
 * open alert per key even with two instances: opening is an insert, and the
 * loser of a race gets a duplicate-key error and sends nothing. A unique index
 * covers resolved documents too (FerretDB ignores `sparse` and refuses
 * partial indexes), so a resolved alert and a new open one could not share
 * the key. Resolving therefore rewrites the key to
 * "<channel_id>:<check>:resolved:<alert _id>", which frees the open key for
 * the next incident and keeps every incident as its own document. The stable
 * "<channel_id>:<check>" stays in `channel_check` on every alert, open or
 * resolved, for history queries.
 *
 * Notifications are crash-safe like snooze's (outbox/intent.h): the insert or
 * update that opens, escalates or resolves an alert also writes its outbox
 * entries into the alert (`supportd_notifications`, flag
 * `supportd_notify_pending: true`); the tick then inserts them into the outbox
 * (unique keys: a repeat is a no-op) and clears the flag. A tick that died in
 * between is finished by the next one, found by the index on the flag. Keys
 * derive from the alert and
 * the transition: "channel.alert:<key>:opened:<first_seen ms>:<recipient>",
 * "channel.alert:<alert _id>:severity:<severity>:<recipient>",
 * "channel.alert:<alert _id>:resolved:<recipient>".
 *
 * Updates and resolutions are conditional on {_id, status: "open"}; FerretDB
 * applies them non-atomically, so two instances racing can both count an
 * occurrence (documented), but the outbox keys keep every mail single.
 *
 * Redis (under the prefix): commcheck:failures, a hash "<channel_id>:<check>"
 * → consecutive transient failures; commcheck:checked_at, a hash channel id →
 * ms of its last check (stalest first). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "jobs/commcheck/model.h"
#include "jobs/job.h"
#include "outbox/intent.h"
#include "providers/endpoint_probe.h"
#include "store/find_in.h"
#include "store/mongo.h"

#define UPDATE_BULK 50 /* FerretDB: bulks of more update statements deadlock */

struct tick {
    struct job_env *env;
    mongoc_collection_t *alerts;
    int64_t channels, probes, probe_ms, checks_ok, failing, transient, unchecked;
    int64_t opened, updated, resolved, escalated, open_conflicts, stale_writes;
    int64_t bad;
    struct intent_counts outbox;
};

static const struct intent_marker alert_marker = {.flag = "supportd_notify_pending",
                                                  .field = "supportd_notifications",
                                                  .entries = "supportd_notifications"};

static bool oid_of(const bson_t *doc, const char *field, bson_oid_t *out)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_OID(&it)) {
        bson_oid_copy(bson_iter_oid(&it), out);
        return true;
    }
    return false;
}

/* Finds {_id: {$in: ids}} in coll and adds each as map["<id hex>"]. */
static int load_by_ids(struct tick *t, const char *collection, const bson_value_t *ids, size_t n,
                       bson_t *map, struct sd_error *err)
{
    if (n == 0)
        return 0;
    bson_t filter = BSON_INITIALIZER;
    store_append_in(&filter, "_id", ids, n);
    mongoc_collection_t *coll = mongoc_client_get_collection(t->env->mongo, t->env->db, collection);
    bson_t **docs = NULL;
    size_t got = 0;
    int rc = store_find_all(coll, &filter, NULL, &docs, &got, err);
    mongoc_collection_destroy(coll);
    bson_destroy(&filter);
    for (size_t i = 0; i < got; i++) {
        bson_oid_t oid;
        if (oid_of(docs[i], "_id", &oid)) {
            char hex[25];
            bson_oid_to_string(&oid, hex);
            BSON_APPEND_DOCUMENT(map, hex, docs[i]);
        }
    }
    store_docs_free(docs, got);
    return rc;
}

static void add_unique(bson_value_t **ids, size_t *n, const bson_oid_t *oid)
{
    for (size_t i = 0; i < *n; i++)
        if (bson_oid_equal(&(*ids)[i].value.v_oid, oid))
            return;
    *ids = realloc(*ids, (*n + 1) * sizeof **ids);
    (*ids)[*n].value_type = BSON_TYPE_OID;
    bson_oid_copy(oid, &(*ids)[(*n)++].value.v_oid);
}

/* A Redis hash as {"field": int64}. */
static int read_hash(struct tick *t, const char *name, bson_t *out, struct sd_error *err)
{
    char key[300];
    snprintf(key, sizeof key, "%s%s", t->env->cfg->redis_prefix, name);
    redisReply *rep = rds_command(t->env->redis, err, "HGETALL %s", key);
    if (!rep)
        return -1;
    if (rep->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i + 1 < rep->elements; i += 2)
            if (rep->element[i]->type == REDIS_REPLY_STRING &&
                rep->element[i + 1]->type == REDIS_REPLY_STRING)
                BSON_APPEND_INT64(out, rep->element[i]->str,
                                  strtoll(rep->element[i + 1]->str, NULL, 10));
    freeReplyObject(rep);
    return 0;
}

/* ---- notifications left in alerts ---------------------------------------- */

/* Inserts the outbox entries carried by alerts flagged supportd_notify_pending,
 * then clears the flags. */
static int finish_pending(struct tick *t, struct sd_error *err)
{
    struct intent_finish f = {.mongo = t->env->mongo,
                              .db = t->env->db,
                              .coll = t->alerts,
                              .marker = &alert_marker,
                              .what = "alert notification markers",
                              .batch = 200,
                              .max_batches = 100,
                              .now_ms = clock_now_ms()};
    return intent_finish(&f, &t->outbox, err);
}

/* ---- probes ---------------------------------------------------------------- */

/* Runs the planned probes and adds their answers to `answers`. */
static int run_probes(struct tick *t, const bson_t *planned, uint32_t n,
                      const struct commcheck_limits *lim, int64_t deadline, bson_t *answers,
                      struct sd_error *err)
{
    if (n == 0)
        return 0;
    const struct config *cfg = t->env->cfg;
    struct probe *probes = calloc(n, sizeof *probes);
    const char **ids = calloc(n, sizeof *ids);
    bson_iter_t it;
    uint32_t k = 0;
    bson_iter_init(&it, planned);
    while (bson_iter_next(&it) && k < n) {
        bson_t p;
        bson_iter_child(&it, &p);
        bson_iter_t f;
        const char *kind = "", *auth = "";
        struct probe *pr = &probes[k];
        if (bson_iter_init(&f, &p)) {
            while (bson_iter_next(&f)) {
                const char *name = bson_iter_key(&f);
                if (!strcmp(name, "id"))
                    ids[k] = bson_iter_utf8(&f, NULL);
                else if (!strcmp(name, "kind"))
                    kind = bson_iter_utf8(&f, NULL);
                else if (!strcmp(name, "url"))
                    pr->url = bson_iter_utf8(&f, NULL);
                else if (!strcmp(name, "auth"))
                    auth = bson_iter_utf8(&f, NULL);
                else if (!strcmp(name, "method"))
                    pr->post = strcmp(bson_iter_utf8(&f, NULL), "POST") == 0;
                else if (!strcmp(name, "timeout_ms"))
                    pr->timeout_ms = (int)bson_iter_as_int64(&f);
            }
        }
        pr->kind = strcmp(kind, "smtp") == 0 ? PROBE_SMTP : PROBE_HTTP;
        /* Secrets join here, from the configuration, never from the plan. */
        if (!strcmp(auth, "twilio")) {
            pr->auth = HTTP_AUTH_BASIC;
            pr->user = cfg->twilio_account_sid;
            pr->secret = cfg->twilio_auth_token;
        } else if (!strcmp(auth, "sendgrid")) {
            pr->auth = HTTP_AUTH_BEARER;
            pr->secret = cfg->sendgrid_api_key;
        } else if (!strcmp(auth, "smtp")) {
            pr->user = cfg->smtp_user;
            pr->secret = cfg->smtp_password;
        }
        k++;
    }
    struct probe_options po = {.concurrency = lim->concurrency, .deadline_ms = deadline,
                               .stop = t->env->stop};
    int64_t started = clock_now_ms();
    int rc = probe_run(probes, k, &po, err);
    t->probe_ms += clock_now_ms() - started;
    for (uint32_t i = 0; rc == 0 && i < k; i++) {
        struct probe_result *r = &probes[i].result;
        if (!r->started || !ids[i])
            continue; /* deadline: not checked this tick */
        t->probes++;
        bson_t a;
        BSON_APPEND_DOCUMENT_BEGIN(answers, ids[i], &a);
        BSON_APPEND_INT64(&a, "status", r->status);
        if (r->failure != HTTP_FAIL_NONE) {
            const char *f = r->login_denied           ? "login_denied"
                            : r->starttls_missing     ? "no_starttls"
                            : r->failure == HTTP_FAIL_TIMEOUT ? "timeout"
                            : r->failure == HTTP_FAIL_CONNECT ? "connect"
                            : r->failure == HTTP_FAIL_TLS     ? "tls"
                                                              : "other";
            /* curl reports a rejected login as a reply code over 500; with the
             * SMTP reply code known, a 5xx/4xx answer is the server's own. */
            if (probes[i].kind == PROBE_SMTP && !r->login_denied && !r->starttls_missing &&
                r->status >= 400 && r->failure == HTTP_FAIL_OTHER)
                f = NULL;
            if (f)
                BSON_APPEND_UTF8(&a, "failure", f);
            BSON_APPEND_UTF8(&a, "error", r->error);
        }
        if (r->body && r->body_len) {
            bson_error_t berr;
            bson_t *doc = bson_new_from_json((const uint8_t *)r->body, (ssize_t)r->body_len, &berr);
            if (doc) {
                size_t i0 = 0;
                while (i0 < r->body_len && (r->body[i0] == ' ' || r->body[i0] == '\n' ||
                                            r->body[i0] == '\r' || r->body[i0] == '\t'))
                    i0++;
                if (r->body[i0] == '[')
                    BSON_APPEND_ARRAY(&a, "body", doc);
                else
                    BSON_APPEND_DOCUMENT(&a, "body", doc);
                bson_destroy(doc);
            }
        }
        if (r->cert_expires_ms)
            BSON_APPEND_DATE_TIME(&a, "cert_expires_at", r->cert_expires_ms);
        BSON_APPEND_INT64(&a, "elapsed_ms", r->elapsed_ms);
        bson_append_document_end(answers, &a);
    }
    probe_results_free(probes, k);
    free(probes);
    free(ids);
    return rc;
}

/* ---- apply ----------------------------------------------------------------- */

/* The action's outbox entries (a view), when it has any. */
static bool has_notifications(const bson_t *action, bson_t *entries)
{
    bson_iter_t list;
    return bson_iter_init_find(&list, action, "notifications") && BSON_ITER_HOLDS_ARRAY(&list) &&
           bson_iter_child(&list, entries) && !bson_empty(entries);
}

static int apply_open(struct tick *t, const bson_t *action, struct sd_error *err)
{
    bson_t alert;
    bson_iter_t it;
    uint32_t len;
    const uint8_t *data;
    if (!bson_iter_init_find(&it, action, "alert") || !BSON_ITER_HOLDS_DOCUMENT(&it))
        return 0;
    bson_iter_document(&it, &len, &data);
    bson_init_static(&alert, data, len);
    bson_t doc = BSON_INITIALIZER;
    bson_oid_t oid;
    bson_oid_init(&oid, NULL);
    BSON_APPEND_OID(&doc, "_id", &oid);
    bson_concat(&doc, &alert);
    bson_t entries;
    if (has_notifications(action, &entries))
        intent_park(&doc, &alert_marker, &entries);
    bson_error_t berr;
    bson_t reply;
    /* One insert per alert: opening is rare, and the unique key decides a
     * race between instances (the loser's notifications never land). */
    bool ok = mongoc_collection_insert_one(t->alerts, &doc, NULL, &reply, &berr);
    bson_destroy(&doc);
    bson_destroy(&reply);
    if (ok) {
        t->opened++;
        return 0;
    }
    if (berr.code == 11000) {
        t->open_conflicts++;
        return 0;
    }
    return sd_error_set(err, "opening alert %s: %s",
                        bson_iter_init_find(&it, action, "target") ? bson_iter_utf8(&it, NULL)
                                                                   : "?",
                        store_errmsg(&berr));
}

/* Updates and resolutions, conditional on the alert still being open, in
 * bulks of at most UPDATE_BULK statements. */
static int apply_updates(struct tick *t, const bson_t *actions, struct sd_error *err)
{
    bson_iter_t it;
    bson_iter_init(&it, actions);
    bool more = true;
    while (more) {
        bson_t opts = BSON_INITIALIZER;
        BSON_APPEND_BOOL(&opts, "ordered", false);
        mongoc_bulk_operation_t *bulk =
            mongoc_collection_create_bulk_operation_with_opts(t->alerts, &opts);
        bson_destroy(&opts);
        int planned = 0, resolves = 0, escalations = 0;
        while (planned < UPDATE_BULK && (more = bson_iter_next(&it))) {
            bson_t action;
            bson_iter_child(&it, &action);
            bson_iter_t f;
            const char *kind = bson_iter_init_find(&f, &action, "kind") ? bson_iter_utf8(&f, NULL)
                                                                       : "";
            if (strcmp(kind, "update") && strcmp(kind, "resolve"))
                continue;
            bson_oid_t aid;
            if (!oid_of(&action, "alert_id", &aid))
                continue;
            bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, set, inc;
            BSON_APPEND_OID(&filter, "_id", &aid);
            BSON_APPEND_UTF8(&filter, "status", "open");
            BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
            bson_iter_t s, sub;
            if (bson_iter_init_find(&s, &action, "set") && bson_iter_recurse(&s, &sub))
                while (bson_iter_next(&sub))
                    bson_append_iter(&set, NULL, 0, &sub);
            bson_t entries;
            bool notify = has_notifications(&action, &entries);
            if (notify)
                intent_park(&set, &alert_marker, &entries);
            bson_append_document_end(&update, &set);
            if (bson_iter_init_find(&f, &action, "inc_occurrences") && bson_iter_as_bool(&f)) {
                BSON_APPEND_DOCUMENT_BEGIN(&update, "$inc", &inc);
                BSON_APPEND_INT32(&inc, "occurrences", 1);
                bson_append_document_end(&update, &inc);
            }
            int brc = store_bulk_update_doc(bulk, &filter, &update, false, err);
            bson_destroy(&filter);
            bson_destroy(&update);
            if (brc) {
                mongoc_bulk_operation_destroy(bulk);
                return sd_error_prefix(err, "building the alert updates");
            }
            planned++;
            if (!strcmp(kind, "resolve"))
                resolves++;
            else if (notify)
                escalations++;
        }
        if (planned == 0) {
            mongoc_bulk_operation_destroy(bulk);
            break;
        }
        bson_error_t berr;
        int64_t matched;
        bool ok = store_bulk_run(bulk, &matched, &berr);
        mongoc_bulk_operation_destroy(bulk);
        if (!ok)
            return sd_error_set(err, "updating %d alerts: %s", planned, store_errmsg(&berr));
        t->resolved += resolves;
        t->escalated += escalations;
        t->updated += planned - resolves;
        t->stale_writes += planned - matched;
    }
    return 0;
}

static int apply_redis(struct tick *t, const bson_t *streaks, const bson_t *checked,
                       int64_t wall, struct sd_error *err)
{
    char fkey[300], ckey[300];
    snprintf(fkey, sizeof fkey, "%scommcheck:failures", t->env->cfg->redis_prefix);
    snprintf(ckey, sizeof ckey, "%scommcheck:checked_at", t->env->cfg->redis_prefix);
    int appended = 0;
    bson_iter_t it;
    struct sd_error rerr;
    if (bson_iter_init(&it, streaks)) {
        while (bson_iter_next(&it)) {
            int64_t n = bson_iter_as_int64(&it);
            int rc = n > 0 ? rds_pipeline_append(t->env->redis, &rerr, "HSET %s %s %lld", fkey,
                                                 bson_iter_key(&it), (long long)n)
                           : rds_pipeline_append(t->env->redis, &rerr, "HDEL %s %s", fkey,
                                                 bson_iter_key(&it));
            if (rc)
                return sd_error_set(err, "failure streaks: %s", rerr.message);
            appended++;
        }
    }
    if (bson_iter_init(&it, checked)) {
        while (bson_iter_next(&it)) {
            if (rds_pipeline_append(t->env->redis, &rerr, "HSET %s %s %lld", ckey,
                                    bson_iter_utf8(&it, NULL), (long long)wall))
                return sd_error_set(err, "check times: %s", rerr.message);
            appended++;
        }
    }
    for (int i = 0; i < appended; i++) {
        redisReply *rep = rds_pipeline_read(t->env->redis, &rerr);
        if (!rep)
            return sd_error_set(err, "failure streaks: %s", rerr.message);
        freeReplyObject(rep);
    }
    return 0;
}

/* ---- the tick -------------------------------------------------------------- */

struct stale_sort {
    const bson_t *doc;
    int64_t checked_at;
    bson_oid_t id;
};

static int by_staleness(const void *a, const void *b)
{
    const struct stale_sort *x = a, *y = b;
    if (x->checked_at != y->checked_at)
        return x->checked_at < y->checked_at ? -1 : 1;
    return bson_oid_compare(&x->id, &y->id);
}

static void counts_to(struct tick *t, const struct commcheck_limits *lim)
{
    bson_t *c = t->env->counts;
    BSON_APPEND_INT64(c, "channels", t->channels);
    BSON_APPEND_INT64(c, "requests", t->probes);
    BSON_APPEND_INT64(c, "check_ms", t->probe_ms);
    BSON_APPEND_INT64(c, "checks_ok", t->checks_ok);
    BSON_APPEND_INT64(c, "checks_failing", t->failing);
    BSON_APPEND_INT64(c, "checks_transient", t->transient);
    BSON_APPEND_INT64(c, "checks_unchecked", t->unchecked);
    BSON_APPEND_INT64(c, "alerts_opened", t->opened);
    BSON_APPEND_INT64(c, "alerts_updated", t->updated);
    BSON_APPEND_INT64(c, "alerts_escalated", t->escalated);
    BSON_APPEND_INT64(c, "alerts_resolved", t->resolved);
    BSON_APPEND_INT64(c, "open_conflicts", t->open_conflicts);
    BSON_APPEND_INT64(c, "stale_writes", t->stale_writes);
    BSON_APPEND_INT64(c, "notifications", t->outbox.enqueued);
    BSON_APPEND_INT64(c, "duplicate_notifications", t->outbox.duplicates);
    BSON_APPEND_INT64(c, "bad_documents", t->bad);
    BSON_APPEND_INT64(c, "concurrency", lim->concurrency);
}

static void count_results(struct tick *t, const bson_t *results)
{
    bson_iter_t it, f;
    if (!bson_iter_init(&it, results))
        return;
    while (bson_iter_next(&it)) {
        if (!bson_iter_recurse(&it, &f) || !bson_iter_find(&f, "outcome"))
            continue;
        const char *o = bson_iter_utf8(&f, NULL);
        if (!strcmp(o, "ok"))
            t->checks_ok++;
        else if (!strcmp(o, "failing"))
            t->failing++;
        else if (!strcmp(o, "transient"))
            t->transient++;
        else
            t->unchecked++;
    }
}

static void log_results(struct tick *t, const bson_t *results)
{
    bson_iter_t it;
    if (!bson_iter_init(&it, results))
        return;
    while (bson_iter_next(&it)) {
        bson_t r;
        bson_iter_child(&it, &r);
        bson_iter_t f;
        const char *outcome = bson_iter_init_find(&f, &r, "outcome") ? bson_iter_utf8(&f, NULL)
                                                                     : "";
        if (!strcmp(outcome, "ok"))
            continue;
        const char *msg = bson_iter_init_find(&f, &r, "message") ? bson_iter_utf8(&f, NULL) : "";
        /* Unchecked (a provider not configured, the deadline) is in the
         * tick's counts; per check it is only worth a debug line. */
        log_msg(strcmp(outcome, "unchecked") ? LOG_WARN : LOG_DEBUG, t->env->log,
                "commcheck.result", &r, "%s", msg);
    }
}

int job_communication_check(struct job_env *env, struct sd_error *err)
{
    struct tick t = {.env = env};
    const struct config *cfg = env->cfg;
    struct commcheck_limits lim;
    if (commcheck_limits_read(env->rules, &lim, err))
        return -1;
    int64_t wall = clock_now_ms();
    int64_t deadline = wall + lim.tick_timeout_ms;
    t.alerts = mongoc_client_get_collection(env->mongo, env->db, COLL_ALERT);
    bson_t **channels = NULL, **alerts = NULL;
    size_t n_channels = 0, n_alerts = 0;
    bson_t checked_at = BSON_INITIALIZER, streaks = BSON_INITIALIZER, known = BSON_INITIALIZER;
    bson_t rooms = BSON_INITIALIZER, answers = BSON_INITIALIZER, results = BSON_INITIALIZER;
    bson_t actions = BSON_INITIALIZER, new_streaks = BSON_INITIALIZER, checked = BSON_INITIALIZER;
    struct stale_sort *order = NULL;
    const bson_t **picked = NULL;
    bson_value_t *ids = NULL;
    size_t n_ids = 0;

    /* A tick that died after writing alerts but before the outbox. */
    int rc = finish_pending(&t, err);
    if (rc == 0) {
        mongoc_collection_t *chc =
            mongoc_client_get_collection(env->mongo, env->db, COLL_CHANNEL);
        bson_t filter = BSON_INITIALIZER;
        BSON_APPEND_BOOL(&filter, "active", true);
        rc = store_find_all(chc, &filter, NULL, &channels, &n_channels, err);
        bson_destroy(&filter);
        mongoc_collection_destroy(chc);
    }
    if (rc == 0) {
        bson_t filter = BSON_INITIALIZER;
        BSON_APPEND_UTF8(&filter, "status", "open");
        rc = store_find_all(t.alerts, &filter, NULL, &alerts, &n_alerts, err);
        bson_destroy(&filter);
    }
    if (rc == 0)
        rc = read_hash(&t, "commcheck:checked_at", &checked_at, err);
    if (rc == 0)
        rc = read_hash(&t, "commcheck:failures", &streaks, err);
    /* Stalest first, capped: the rest are first in line next tick. */
    size_t n_picked = 0;
    if (rc == 0) {
        order = calloc(n_channels + 1, sizeof *order);
        for (size_t i = 0; i < n_channels; i++) {
            order[i].doc = channels[i];
            oid_of(channels[i], "_id", &order[i].id);
            char hex[25];
            bson_oid_to_string(&order[i].id, hex);
            bson_iter_t it;
            order[i].checked_at = bson_iter_init_find(&it, &checked_at, hex)
                                      ? bson_iter_as_int64(&it)
                                      : 0;
        }
        qsort(order, n_channels, sizeof *order, by_staleness);
        n_picked = n_channels < (size_t)lim.max_channels ? n_channels : (size_t)lim.max_channels;
        picked = calloc(n_picked + 1, sizeof *picked);
        for (size_t i = 0; i < n_picked; i++)
            picked[i] = order[i].doc;
        t.channels = (int64_t)n_picked;
        /* Channels of open alerts that are not checked now (inactive ones). */
        for (size_t a = 0; a < n_alerts; a++) {
            bson_oid_t cid;
            if (!oid_of(alerts[a], "channel_id", &cid))
                continue;
            bool in_picked = false;
            for (size_t i = 0; i < n_picked && !in_picked; i++)
                in_picked = bson_oid_equal(&order[i].id, &cid);
            if (!in_picked)
                add_unique(&ids, &n_ids, &cid);
        }
        rc = load_by_ids(&t, COLL_CHANNEL, ids, n_ids, &known, err);
    }
    if (rc == 0) {
        free(ids);
        ids = NULL;
        n_ids = 0;
        for (size_t i = 0; i < n_picked; i++) {
            bson_oid_t r;
            if (oid_of(picked[i], "room_id", &r))
                add_unique(&ids, &n_ids, &r);
        }
        for (size_t a = 0; a < n_alerts; a++) {
            bson_oid_t r;
            if (oid_of(alerts[a], "room_id", &r))
                add_unique(&ids, &n_ids, &r);
        }
        rc = load_by_ids(&t, COLL_ROOM, ids, n_ids, &rooms, err);
    }
    struct commcheck_providers prov = {
        .twilio_base = cfg->twilio_api_base,
        .twilio_main_sid = cfg->twilio_account_sid,
        .twilio_ready = cfg->twilio_account_sid && cfg->twilio_auth_token,
        .sendgrid_base = cfg->sendgrid_api_base,
        .sendgrid_ready = cfg->sendgrid_api_key != NULL,
        .smtp_url = cfg->smtp_url,
        .smtp_ready = cfg->smtp_url != NULL,
    };
    struct commcheck_input in = {.channels = picked,
                                 .n_channels = n_picked,
                                 .alerts = (const bson_t *const *)alerts,
                                 .n_alerts = n_alerts,
                                 .known_channels = &known,
                                 .rooms = &rooms,
                                 .answers = &answers,
                                 .streaks = &streaks,
                                 .providers = &prov,
                                 .limits = &lim,
                                 .now_ms = env->now_ms,
                                 .rules = env->rules,
                                 .log = env->log};
    for (int round = 1; rc == 0 && round <= 2 && !job_should_stop(env); round++) {
        bson_t planned = BSON_INITIALIZER;
        uint32_t n = commcheck_plan_probes(&in, round, &planned);
        rc = run_probes(&t, &planned, n, &lim, deadline, &answers, err);
        bson_destroy(&planned);
    }
    if (rc == 0 && !job_should_stop(env)) {
        t.bad += commcheck_decide(&in, &results, &actions, &new_streaks, &checked);
        count_results(&t, &results);
        log_results(&t, &results);
        bson_iter_t it;
        bson_iter_init(&it, &actions);
        while (rc == 0 && bson_iter_next(&it)) {
            bson_t action;
            bson_iter_child(&it, &action);
            bson_iter_t k;
            if (bson_iter_init_find(&k, &action, "kind") &&
                strcmp(bson_iter_utf8(&k, NULL), "open") == 0)
                rc = apply_open(&t, &action, err);
        }
        if (rc == 0)
            rc = apply_updates(&t, &actions, err);
        if (rc == 0)
            rc = apply_redis(&t, &new_streaks, &checked, wall, err);
        if (rc == 0)
            rc = finish_pending(&t, err);
    }
    counts_to(&t, &lim);
    /* SPEC §2: the job that enqueues delivers in the same tick. */
    if (rc == 0 && !job_should_stop(env))
        rc = job_deliver_outbox(env, err);
    free(order);
    free(picked);
    free(ids);
    store_docs_free(channels, n_channels);
    store_docs_free(alerts, n_alerts);
    bson_destroy(&checked_at);
    bson_destroy(&streaks);
    bson_destroy(&known);
    bson_destroy(&rooms);
    bson_destroy(&answers);
    bson_destroy(&results);
    bson_destroy(&actions);
    bson_destroy(&new_streaks);
    bson_destroy(&checked);
    mongoc_collection_destroy(t.alerts);
    return rc;
}
