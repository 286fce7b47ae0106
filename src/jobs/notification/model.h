/* notification/model.h — the notification job: ticket activity, SLA warnings,
 * breaches and escalation, response reminders and customer updates, each
 * sent once (SPEC §7).
 *
 * What it keeps:
 *   conversation-notify-state  one document per conversation, supportd's
 *       own: what it last notified about (see struct below). _id is the
 *       conversation's _id.
 *       { _id, status, assignee (text: id hex or string, "" for none),
 *         customer_at (ms of the last customer message notified, 0 none),
 *         seen_updated_at (ms: the conversation's updated_at then),
 *         reminder_for (ms: last_customer_message_at reminders count for),
 *         reminders (how many were sent for it), at (ms written),
 *         sla { policy, first_response_due, resolution_due, next_due,
 *           warned: ["<target>:<due ms>"], breached: [...], paused_at?,
 *           paused_minutes } (a failed decision sets next_due to its retry),
 *         sla_pending (next_due is set: a top-level equality FerretDB can
 *           push down; {sla_pending, sla.next_due} is indexed, deadlines are
 *           found through it),
 *         failure? {attempts, error, at, updated_at, retry_at | parked: true}
 *           while its decision fails (a record with only this is no record) }
 *   conversation.sla  SPEC §2's view of it, { policy, first_response_due,
 *       resolution_due }, and conversation.escalation_level: written only
 *       when they change, since on FerretDB every update of a platform
 *       document can revert a platform write landing in the middle
 *       (reference/ferretdb.md). Earlier builds kept the whole sla there; it
 *       is read from there until the record has one.
 *   the checkpoint, in the same collection: { _id: "checkpoint",
 *       changed_since (date: the greatest updated_at read, not past the
 *       tick's now; the change query starts 60 s before it), at,
 *       first_install_at (while a first install's first sweep is unfinished) }.
 *       No checkpoint and no record = a first install: the first sweep
 *       records the present of every conversation and mails nobody. No
 *       checkpoint but records = a database served before (earlier builds kept
 *       the checkpoint only in Redis): every conversation is read, what is
 *       due is mailed.
 *
 * The job is collect → decide → apply:
 *   collect  conversations changed since the checkpoint (updated_at), and
 *            those whose record's sla.next_due is before now (index), in
 *            batches, less those read again unchanged since their decision
 *            and not due, with
 *            their rooms, notify-state records, SMS channels and zone offsets;
 *   decide   notification_decide(): pure, documents and rules in, a plan out;
 *   apply    outbox inserts under keys derived from what triggered each
 *            (exactly once), then the conversations' SLA views where they
 *            changed (conditional on updated_at as read), then the state
 *            records, then delivery.
 *
 * The files: job.c (collect and apply: the only one with I/O), decide.c and
 * sla_calendar.c (business time; pure), dryrun.c (the job on fixtures,
 * jobs/dryrun.h). They share this header.
 *
 * Ownership: notification_decide appends to caller-owned BSON. Errors follow
 * core/error.h.
 */
#ifndef SD_JOBS_NOTIFICATION_MODEL_H
#define SD_JOBS_NOTIFICATION_MODEL_H

#include <bson/bson.h>

#include "core/error.h"
#include "core/log.h"
#include "rules/engine.h"

#define NOTIFY_CHECKPOINT_ID "checkpoint" /* the job's checkpoint, in COLL_NOTIFY_STATE */
#define NOTIFY_MAX_ATTEMPTS 10 /* failed decisions in a row before a conversation is parked */

struct notification_input {
    const bson_t *const *conversations; /* as read */
    size_t n_conversations;
    const bson_t *rooms;     /* { "<room id hex>": room } */
    const bson_t *states;    /* { "<conversation id hex>": notify-state record } */
    const bson_t *channels;  /* { "<room id hex>": the room's active SMS channel } */
    const bson_t *zones;     /* { "<room id hex>": [{at: ms, offset: minutes}, ...] } */
    const bson_t *counts;    /* { "<conversation id hex>": new inbound messages } */
    int64_t now_ms;
    bool baseline;           /* fresh install: record the present, mail nobody */
    struct rules *rules;
    const struct log_ctx *log;
    /* `supportd explain` only (NULL otherwise): each notification decide
     * considered and did not plan, as {job, type, verdict: "suppressed",
     * reason} appended to this array (*n_why counts its members). */
    bson_t *why;
    uint32_t *n_why;
    /* explain only (NULL otherwise): each SLA deadline's business-time walk
     * (sla_calendar_walk) under its target's name, with start, minutes, due. */
    bson_t *walks;
};

/* Appends one action per conversation to `actions` (keys continue from
 * *n_actions):
 *   { kind: "notify", target: <id hex>, conversation_id, read_updated_at?,
 *     state: <the notify-state record fields to set>, clear_failure?: true,
 *     sla: <the whole sla, for the record> (absent: leave it),
 *     escalation_level: <new level> (absent: unchanged),
 *     notifications: [ <outbox entry, SPEC §2, status "pending"> ] }
 * A conversation whose decision failed gets { ..., failed: true, state:
 * {failure}, sla: <as read, next_due = the retry; none once parked>,
 * notifications: [] } (logged: notification.decide_failed / .parked).
 * Returns the number of bad documents met (logged). Pure but for logging. */
int notification_decide(const struct notification_input *in, bson_t *actions,
                        uint32_t *n_actions);

/* Zone offsets of a room for the rules, around now: [{at, offset}] into
 * `out` under key `key`. Logs an unknown zone with the room id (then UTC). */
void notification_zone(const bson_t *room, const char *room_hex, int64_t now_ms,
                       const struct log_ctx *log, bson_t *out, const char *key);

#endif
