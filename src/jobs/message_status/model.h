/* message_status/model.h — the message-status job (SPEC §2 conversation-message and
 * status-events, §7): delivery and read events from Twilio and SendGrid
 * applied to messages, failed sends retried, stale messages reconciled.
 *
 * collect  `status-events` through consumer group "supportd": entries left
 *          pending by a dead consumer first (XAUTOCLAIM, idle ≥ the lease
 *          TTL), then new ones (XREADGROUP), in batches; the messages they
 *          name, by {provider_message_id} (one $in query per batch);
 * decide   msgstatus_parse_entry (verify the signature, parse the body into
 *          events) and msgstatus_decide (match events to messages, apply the
 *          status order, dedupe by event id, consult retry.lua): pure;
 * apply    one conditional update per touched message (unordered bulks), then
 *          per entry XACK — with a copy to status-events:rejected or
 *          :unmatched where that is its fate — in one MULTI/EXEC.
 * Then the retry sweep (retry.c) and the reconcile sweep, and the
 * stream is trimmed to what every consumer group has acknowledged. Before
 * all that, the journal's repair sweep (journal.c) appends again what the
 * HTTP door accepted and Redis lost; the journal's copy of an entry goes
 * just before the entry is acknowledged.
 *
 * The files: job.c (the tick: the stream, acknowledgement, the sweeps in
 * turn), journal.c (the webhook journal), apply.c (decide + the fenced, conditional writes to messages, for
 * stream entries and poll answers alike), retry.c (re-sends and polls: the
 * provider calls); events.c (parse), decide.c, select.c: pure; dryrun.c (the
 * job on fixtures, jobs/dryrun.h). They share this header and nothing else.
 *
 * Event ids (what makes an event apply once): Twilio "twilio:<sid>:<status>"
 * ("…:read" for EventType=READ), SendGrid "sendgrid:<sg_event_id>", polls
 * "poll:<sid>:<status>". Each lands in status_history as `event_id`.
 *
 * Ownership: every function appends to caller-owned bson_t; nothing returned
 * needs freeing. Errors follow core/error.h.
 */
#ifndef SD_JOBS_MESSAGE_STATUS_MODEL_H
#define SD_JOBS_MESSAGE_STATUS_MODEL_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/log.h"
#include "jobs/job.h"
#include "rules/engine.h"

/* An event for a message not (yet) in the database waits this long (from the
 * entry's received_at), then goes to status-events:unmatched. */
#define MSGSTATUS_UNKNOWN_GRACE_MS (15 * 60 * 1000)

/* The repair sweep (journal.c) looks at a journal document once it is this
 * old (from its received_at): by then the door that wrote it has appended
 * its entry, or given up (its waits are bounded to a few seconds). */
#define MSGSTATUS_JOURNAL_AGE_MS (30 * 1000)

struct msgstatus_keys {
    const char *twilio_auth_token;      /* NULL: Twilio entries are rejected */
    const char *sendgrid_public_key;    /* NULL: SendGrid entries are rejected */
    int64_t sendgrid_tolerance_ms;      /* |timestamp − received_at| allowed */
};

/* Verifies and parses one stream entry ({id, provider, body, url, signature,
 * timestamp, received_at}) into `out`:
 *   { id, provider, received_at: <ms>, ok: true, events: [ event… ] }  or
 *   { id, provider, received_at, ok: false, reason: "…" }
 * event: { event_id, provider, provider_message_id (absent: none given),
 *          provider_status, status (ours; absent: history only),
 *          code?, error_message?, at: <ms>, source: "webhook" }.
 * Pure. */
void msgstatus_parse_entry(const bson_t *entry, const struct msgstatus_keys *keys,
                           bson_t *out);

/* Maps a provider status to ours (SPEC §7), NULL for history-only ones.
 * sendgrid_type is the bounce `type` (NULL otherwise). */
const char *msgstatus_map_twilio(const char *status);
const char *msgstatus_map_sendgrid(const char *event, const char *sendgrid_type);

struct msgstatus_input {
    const bson_t *const *parsed;  /* msgstatus_parse_entry results (or synthetic
                                     poll entries, whose id starts with "poll:") */
    size_t n_parsed;
    const bson_t *messages;       /* { "<provider>:<provider_message_id>": message } */
    int64_t now_ms;               /* the tick's now: grace periods, retry times */
    int64_t write_ms;             /* the wall clock written as updated_at */
    struct rules *rules;          /* retry.lua */
    const struct log_ctx *log;
};

/* The plan for one batch:
 *   entries: [ { id, provider, outcome: "done"|"rejected"|"waiting"|"unmatched",
 *                reason?, events: [ { event_id, provider_message_id?, message_id?,
 *                provider_status, outcome: "applied"|"duplicate"|"ignored"|
 *                "history"|"unknown_message"|"no_message_id", before?, after?,
 *                note? } ] } ]
 *   updates: [ { message_id, target, read_updated_at?, set: {…},
 *                push: [history entries], replace_history: bool,
 *                event_ids: [...], retry?: {…} } ]
 *   rule_errors?: { "<message id hex>": "<error>" }   (only when a rule failed)
 * "done" entries are acknowledged, "rejected"/"unmatched" ones copied to their
 * side stream and acknowledged, "waiting" ones left pending. A rule (retry.lua)
 * that fails for a message leaves that message out of `updates` and names it
 * in rule_errors; the rest of the plan is whole. Pure: no I/O besides log
 * lines about what it decided (retry.exhausted). */
int msgstatus_decide(const struct msgstatus_input *in, bson_t *plan, struct sd_error *err);

/* Retry selection: of these failed/undelivered messages, the ones to send
 * again now (outbound, not final, next_retry_at <= now). Appends
 *   { message_id, target, provider, via, to, attempt: n+1, read_updated_at? }
 * to `out` (an array being built, from index *n). Pure. */
void msgstatus_plan_retries(const bson_t *const *messages, size_t n, int64_t now_ms,
                            bson_t *out, uint32_t *n_out);

/* Reconcile selection: of these queued/sending/sent messages, the ones whose
 * status has not moved for longer than retry.lua's reconcile.after_seconds
 * allows and that were not polled within it, at most reconcile.max_per_tick.
 * Appends { message_id, target, provider, provider_message_id, status } to
 * `out`. Pure. */
int msgstatus_plan_polls(const bson_t *const *messages, size_t n, int64_t now_ms,
                         struct rules *rules, bson_t *out, uint32_t *n_out,
                         struct sd_error *err);

/* A poll's answer as a synthetic parsed entry ("poll:<sid>") for
 * msgstatus_decide: status and error code as the provider reported them. */
void msgstatus_poll_entry(const char *provider, const char *provider_message_id,
                          const char *provider_status, const char *error_code,
                          const char *error_message, int64_t at_ms, bson_t *out);

/* ---- the tick: what the I/O files (job.c, apply.c, retry.c) share ----------
 * Ownership: struct ms_tick borrows the job's environment; the collection
 * handle is the tick's. */

struct ms_counts {
    int64_t entries, claimed, acknowledged, deferred, events, applied, duplicates, ignored,
        history_only, unknown, rejected, rule_failed, unmatched, waiting, conflicts, messages_updated, retries_due, resent, resend_recovered,
        resend_uncertain, resend_in_flight, resend_failed, retry_exhausted, polled, poll_failed, trimmed,
        batches, journal_checked, journal_reappended, journal_deleted;
};

struct ms_tick {
    struct job_env *env;
    mongoc_collection_t *msgs;
    int64_t wall_ms;
    struct msgstatus_keys keys;
    char stream[256], rejected[256], unmatched[256], tries[256], journal_cursor[256];
    char consumer[128];
    struct ms_counts c;
};

/* apply.c. Reads the messages the plan's events name and runs decide + apply
 * on them: shared by the stream batches and the reconcile sweep's synthetic
 * entries. not_landed receives {"<message id hex>": true} for messages whose
 * update did not land (a concurrent change): their entries stay pending.
 * Messages for which a rule failed are in plan.rule_errors (msgstatus_decide),
 * unwritten. */
int ms_decide_and_write(struct ms_tick *t, const bson_t *const *parsed, size_t n, bson_t *plan,
                        bson_t *not_landed, struct sd_error *err);

/* apply.c. False (err set) when the lease can no longer be counted on for a
 * write. */
bool ms_fence(struct ms_tick *t, struct sd_error *err);

/* journal.c: the HTTP door's copies of the entries it appended
 * (COLL_STATUS_INBOX; the entry's `journal` field names its copy).
 * ms_journal_forget deletes the copies of these entries (done with: their
 * effect is written, or they are about to be moved to a side stream), one
 * delete for the batch; called before they are acknowledged, so an entry
 * whose copy could not be deleted stays pending and comes back (applying it
 * again changes nothing: event ids). ms_journal_sweep, before the stream is
 * read: copies older than MSGSTATUS_JOURNAL_AGE_MS whose entry is not in the
 * stream (Redis lost it, or it was never appended) are appended again with
 * the same fields and their new id recorded; at most 5 pages of 1,000 a tick,
 * resuming where the last tick stopped. */
int ms_journal_forget(struct ms_tick *t, const bson_t *const *entries, size_t n,
                      struct sd_error *err);
int ms_journal_sweep(struct ms_tick *t, struct sd_error *err);

/* retry.c: the sweeps that call the providers. */
int ms_retry_sweep(struct ms_tick *t, struct sd_error *err);
int ms_reconcile_sweep(struct ms_tick *t, struct sd_error *err);

#endif
