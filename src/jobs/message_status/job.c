/* message_status/job.c — the tick (see model.h): the journal's repair sweep
 * (journal.c); collect from the stream, apply (apply.c), forget the journal's
 * copies, acknowledge; then the sweeps of retry.c and the trim.
 *
 * Once-only effects rest on event ids, not on the stream: an entry is
 * acknowledged only after its updates are written, so a crash between the
 * two replays it, and its events are then found in status_history and skipped.
 * Every write goes through apply.c: fenced by the lease, conditional on what
 * was read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "core/seam.h"
#include "jobs/message_status/model.h"
#include "jobs/runner.h"
#include "store/mongo.h"
#include "store/stream.h"

#define GROUP "supportd"
#define BATCH 5000
#define MAX_BATCHES 200          /* a tick's bound: 1,000,000 entries */
#define SIDE_MAXLEN 100000       /* status-events:rejected / :unmatched keep about this many */
/* An entry naming a message for which a rule (retry.lua) fails stays pending
 * and is tried again each time it is claimed back; at its 5th failed try it is
 * parked in status-events:rejected with the error. The tries are counted in
 * Redis per entry, not taken from the stream's delivery count: an entry
 * waiting for its message (MSGSTATUS_UNKNOWN_GRACE_MS) is delivered again
 * every lease TTL and would be parked at its first rule failure. */
#define MAX_RULE_TRIES 5
#define RULE_TRIES_TTL_MS (24LL * 3600 * 1000)

static void counts_to(struct ms_tick *t)
{
    bson_t *c = t->env->counts;
    const struct ms_counts *k = &t->c;
    const struct {
        const char *name;
        int64_t v;
    } list[] = {
        {"entries", k->entries},
        {"reclaimed", k->claimed},
        {"acknowledged", k->acknowledged},
        {"deferred", k->deferred},
        {"events", k->events},
        {"applied", k->applied},
        {"duplicates", k->duplicates},
        {"ignored", k->ignored},
        {"history_only", k->history_only},
        {"unknown", k->unknown},
        {"rejected", k->rejected},
        {"rule_failed", k->rule_failed},
        {"unmatched", k->unmatched},
        {"waiting", k->waiting},
        {"conflicts", k->conflicts},
        {"messages_updated", k->messages_updated},
        {"retries_due", k->retries_due},
        {"resent", k->resent},
        {"resend_recovered", k->resend_recovered},
        {"resend_uncertain", k->resend_uncertain},
        {"resend_in_flight", k->resend_in_flight},
        {"resend_failed", k->resend_failed},
        {"retry_exhausted", k->retry_exhausted},
        {"polled", k->polled},
        {"poll_failed", k->poll_failed},
        {"trimmed", k->trimmed},
        {"batches", k->batches},
        {"journal_checked", k->journal_checked},
        {"journal_reappended", k->journal_reappended},
        {"journal_deleted", k->journal_deleted},
    };
    for (size_t i = 0; i < sizeof list / sizeof *list; i++)
        BSON_APPEND_INT64(c, list[i].name, list[i].v);
}

static void log_entry(struct ms_tick *t, enum log_level level, const char *event,
                      const bson_t *e, const char *what)
{
    const char *id = bson_field_utf8(e, "id"), *provider = bson_field_utf8(e, "provider"), *reason = bson_field_utf8(e, "reason");
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "entry", id ? id : "");
    BSON_APPEND_UTF8(&f, "provider", provider ? provider : "");
    if (reason)
        BSON_APPEND_UTF8(&f, "reason", reason);
    log_msg(level, t->env->log, event, &f, "status-events entry %s (%s) %s: %s", id ? id : "",
            provider && *provider ? provider : "no provider", what, reason ? reason : "");
    bson_destroy(&f);
}

/* Counts a plan entry's events and says whether any touches a message whose
 * update did not land. */
static bool tally(struct ms_tick *t, const bson_t *e, const bson_t *not_landed)
{
    bson_iter_t it, evs, f;
    bool blocked = false;
    if (!bson_iter_init_find(&it, e, "events") || !bson_iter_recurse(&it, &evs))
        return false;
    while (bson_iter_next(&evs)) {
        bson_t ev;
        bson_iter_child(&evs, &ev);
        const char *o = bson_field_utf8(&ev, "outcome");
        t->c.events++;
        if (bson_iter_init_find(&f, &ev, "message_id") && BSON_ITER_HOLDS_OID(&f)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&f), hex);
            blocked = blocked || bson_has_field(not_landed, hex);
        }
        if (!o)
            continue;
        if (!strcmp(o, "applied"))
            t->c.applied++;
        else if (!strcmp(o, "duplicate"))
            t->c.duplicates++;
        else if (!strcmp(o, "ignored"))
            t->c.ignored++;
        else if (!strcmp(o, "history"))
            t->c.history_only++;
        else
            t->c.unknown++; /* unknown_message, no_message_id */
    }
    return blocked;
}

/* The rule error of the first message named by a plan entry's events whose
 * update was skipped because a rule failed for it (plan.rule_errors), or
 * NULL; target receives that message's id. */
static const char *rule_error_of(const bson_t *e, const bson_t *rule_errors, char *target)
{
    bson_iter_t it, evs, f;
    if (bson_empty(rule_errors) || !bson_iter_init_find(&it, e, "events") ||
        !bson_iter_recurse(&it, &evs))
        return NULL;
    while (bson_iter_next(&evs)) {
        if (!bson_iter_recurse(&evs, &f) || !bson_iter_find(&f, "message_id") ||
            !BSON_ITER_HOLDS_OID(&f))
            continue;
        bson_oid_to_string(bson_iter_oid(&f), target);
        const char *why = bson_field_utf8(rule_errors, target);
        if (why)
            return why;
    }
    return NULL;
}

/* An entry held back by a rule error: counts the try; true when it is the
 * last one allowed and the entry is to be parked (reason then filled). */
static bool rule_failure_exhausted(struct ms_tick *t, const bson_t *e, const char *target,
                                   const char *why, char *reason, size_t size)
{
    const char *id = bson_field_utf8(e, "id");
    long long tries = 0;
    struct sd_error err;
    if (stream_count_try(t->env->redis, t->tries, id ? id : "", RULE_TRIES_TTL_MS, &tries, &err))
        tries = 0; /* uncounted: held this time; Redis failing fails the batch's ack anyway */
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "entry", id ? id : "");
    BSON_APPEND_UTF8(&f, "message", target);
    BSON_APPEND_UTF8(&f, "reason", why);
    BSON_APPEND_INT64(&f, "tries", tries);
    bool last = tries >= MAX_RULE_TRIES;
    log_msg(LOG_WARN, t->env->log, last ? "status_event.rejected" : "status_event.rule_failed",
            &f, "status-events entry %s %s: %s (try %lld of %d)", id ? id : "",
            last ? "parked in status-events:rejected" : "left pending", why, tries,
            MAX_RULE_TRIES);
    bson_destroy(&f);
    if (last)
        snprintf(reason, size, "%s (message %s; gave up after %lld tries)", why, target, tries);
    return last;
}

/* One batch of stream entries: parse, decide, write, then acknowledge. */
static int process_batch(struct ms_tick *t, struct stream_batch *b, struct sd_error *err)
{
    bson_t **parsed = calloc(b->n, sizeof *parsed);
    for (size_t i = 0; i < b->n; i++) {
        parsed[i] = bson_new();
        msgstatus_parse_entry(b->entries[i], &t->keys, parsed[i]);
    }
    bson_t plan = BSON_INITIALIZER, not_landed = BSON_INITIALIZER;
    int rc = ms_decide_and_write(t, (const bson_t *const *)parsed, b->n, &plan, &not_landed, err);
    struct stream_done *done = calloc(b->n, sizeof *done);
    char **reasons = calloc(b->n, sizeof *reasons); /* parked entries' reasons */
    size_t nd = 0;
    bson_iter_t it, list;
    bson_t rule_errors = BSON_INITIALIZER;
    if (rc == 0 && bson_iter_init_find(&it, &plan, "rule_errors") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&it, &len, &data);
        bson_destroy(&rule_errors);
        bson_init_static(&rule_errors, data, len);
    }
    if (rc == 0 && bson_iter_init_find(&it, &plan, "entries") && bson_iter_recurse(&it, &list)) {
        for (size_t i = 0; bson_iter_next(&list) && i < b->n; i++) {
            bson_t e;
            bson_iter_child(&list, &e);
            const char *outcome = bson_field_utf8(&e, "outcome"), *id = bson_field_utf8(&e, "id");
            bool blocked = tally(t, &e, &not_landed);
            char target[25] = "";
            const char *why = rule_error_of(&e, &rule_errors, target);
            struct stream_done d = {.id = id, .entry = b->entries[i]};
            if (why) {
                char reason[1400];
                if (!rule_failure_exhausted(t, &e, target, why, reason, sizeof reason)) {
                    t->c.rule_failed++; /* tried again when claimed back */
                    continue;
                }
                d.side_stream = t->rejected;
                d.reason = reasons[i] = strdup(reason);
                t->c.rejected++;
                done[nd++] = d;
                continue;
            }
            if (blocked) {
                t->c.deferred++; /* retried once the message settles */
                continue;
            }
            if (!strcmp(outcome, "rejected")) {
                d.side_stream = t->rejected;
                d.reason = bson_field_utf8(&e, "reason");
                t->c.rejected++;
                log_entry(t, LOG_WARN, "status_event.rejected", &e, "rejected");
            } else if (!strcmp(outcome, "unmatched")) {
                d.side_stream = t->unmatched;
                d.reason = bson_field_utf8(&e, "reason");
                t->c.unmatched++;
                log_entry(t, LOG_WARN, "status_event.unmatched", &e, "moved to unmatched");
            } else if (!strcmp(outcome, "waiting")) {
                t->c.waiting++;
                continue;
            } else {
                t->c.acknowledged++;
            }
            done[nd++] = d;
        }
    }
    if (rc == 0 && nd) {
        /* done with: their journal copies go first (an entry is acknowledged
         * only once nothing of it is left to do) */
        const bson_t **finished = calloc(nd, sizeof *finished);
        for (size_t i = 0; i < nd; i++)
            finished[i] = done[i].entry;
        rc = ms_journal_forget(t, finished, nd, err);
        free(finished);
    }
    if (rc == 0) {
        seam_wait("message_status_before_ack");
        rc = stream_finish(t->env->redis, t->stream, GROUP, done, nd, SIDE_MAXLEN, err);
    }
    free(done);
    for (size_t i = 0; i < b->n; i++)
        free(reasons[i]);
    free(reasons);
    bson_destroy(&plan);
    bson_destroy(&not_landed);
    for (size_t i = 0; i < b->n; i++)
        bson_destroy(parsed[i]);
    free(parsed);
    t->c.batches++;
    return rc;
}

/* Entries a consumer took and never acknowledged (it died, or they wait for
 * their message) come back once idle for a lease TTL: by then no live holder
 * of the job's lease can still be working on them. */
static int sweep_pending(struct ms_tick *t, struct sd_error *err)
{
    char cursor[48] = "0-0";
    for (int round = 0; round < MAX_BATCHES && !job_should_stop(t->env); round++) {
        struct stream_batch b = {0};
        int rc = stream_claim(t->env->redis, t->stream, GROUP, t->consumer,
                              t->env->cfg->lease_ttl_ms, cursor, BATCH, &b, err);
        if (rc == 0 && b.n) {
            t->c.entries += (int64_t)b.n;
            t->c.claimed += (int64_t)b.n;
            rc = process_batch(t, &b, err);
        }
        stream_batch_clear(&b);
        if (rc || !strcmp(cursor, "0-0"))
            return rc;
    }
    return 0;
}

static int sweep_new(struct ms_tick *t, struct sd_error *err)
{
    for (int round = 0; round < MAX_BATCHES && !job_should_stop(t->env); round++) {
        struct stream_batch b = {0};
        int rc = stream_read(t->env->redis, t->stream, GROUP, t->consumer, BATCH, &b, err);
        size_t n = b.n;
        if (rc == 0 && n) {
            t->c.entries += (int64_t)n;
            rc = process_batch(t, &b, err);
        }
        stream_batch_clear(&b);
        if (rc || n < BATCH)
            return rc;
    }
    return 0;
}

int job_message_status(struct job_env *env, struct sd_error *err)
{
    const struct config *cfg = env->cfg;
    struct ms_tick t = {.env = env, .wall_ms = clock_now_ms()};
    t.keys = (struct msgstatus_keys){.twilio_auth_token = cfg->twilio_auth_token,
                                     .sendgrid_public_key = cfg->sendgrid_webhook_public_key,
                                     .sendgrid_tolerance_ms = cfg->webhook_tolerance_s * 1000LL};
    snprintf(t.stream, sizeof t.stream, "%sstatus-events", cfg->redis_prefix);
    snprintf(t.rejected, sizeof t.rejected, "%sstatus-events:rejected", cfg->redis_prefix);
    snprintf(t.unmatched, sizeof t.unmatched, "%sstatus-events:unmatched", cfg->redis_prefix);
    snprintf(t.tries, sizeof t.tries, "%sstatus-events:tries:", cfg->redis_prefix);
    snprintf(t.journal_cursor, sizeof t.journal_cursor, "%sstatus-events:journal-cursor",
             cfg->redis_prefix);
    runner_instance_id(t.consumer, sizeof t.consumer);
    t.msgs = mongoc_client_get_collection(env->mongo, env->db, COLL_MESSAGE);
    int rc = stream_group_ensure(env->redis, t.stream, GROUP, err);
    /* before the stream is read: what is appended again is read this tick */
    if (rc == 0)
        rc = ms_journal_sweep(&t, err);
    if (rc == 0)
        rc = sweep_pending(&t, err);
    if (rc == 0)
        rc = sweep_new(&t, err);
    if (rc == 0 && !job_should_stop(env))
        rc = ms_reconcile_sweep(&t, err);
    if (rc == 0 && !job_should_stop(env))
        rc = ms_retry_sweep(&t, err);
    if (rc == 0 && !job_should_stop(env))
        rc = stream_trim_acknowledged(env->redis, t.stream, &t.c.trimmed, err);
    counts_to(&t);
    mongoc_collection_destroy(t.msgs);
    return rc;
}
