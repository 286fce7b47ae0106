/* snooze/model.h — the snooze job: wake snoozed tickets that are due.
 *
 * A ticket wakes when `snooze.until <= now` (however long ago), or — unless
 * notify.lua's snooze.wake_on_customer_message is false — when the customer
 * wrote after it was snoozed (`last_customer_message_at > snooze.at`).
 * Waking restores `status` from snooze.original_status (open unless that is
 * "open" or "pending") and `priority` from snooze.original_priority (when it
 * is one of low/normal/high/urgent; otherwise the current priority stays),
 * removes `snooze`, sets `unsnoozed_at` and `updated_at`, adds the ticket to
 * queue:<room_id> with queue.lua's score, and sends `ticket.unsnoozed` to the
 * recipients notify.lua names (the assignee, else the room's agents).
 *
 * Bad documents are logged with their id and handled by these rules:
 *   snooze missing, or snooze.until missing or not a date → woken now
 *     (a ticket nobody can wake would be lost; reason says why);
 *   unknown original_priority → the current priority stays;
 *   unknown original_status → open;
 *   room not found → woken and queued, no notification.
 *
 * The job is collect → decide → apply:
 *   collect  one query, read in batches: snoozed tickets that are due
 *            ({status, snooze.until}) or changed since the last tick (early
 *            wake-up, malformed snoozes; {status, updated_at});
 *   decide   snooze_decide(): pure, documents and rules in, a plan out;
 *   apply    see job.c: a conditional bulk update that also writes a
 *            completion marker, then queue and outbox from the marker.
 *
 * The files: job.c (collect and apply: the only one with I/O), decide.c
 * (pure), dryrun.c (the job on fixtures, jobs/dryrun.h). They share this
 * header.
 *
 * Ownership: snooze_decide appends to a caller-owned plan. Errors follow
 * core/error.h.
 */
#ifndef SD_JOBS_SNOOZE_MODEL_H
#define SD_JOBS_SNOOZE_MODEL_H

#include <bson/bson.h>

#include "core/error.h"
#include "core/log.h"
#include "rules/engine.h"

struct snooze_input {
    const bson_t *const *conversations; /* snoozed tickets, as read */
    size_t n_conversations;
    const bson_t *rooms;                /* { "<room id hex>": room document, ... } */
    int64_t now_ms;
    const char *redis_prefix;           /* for the queue key in the plan */
    struct rules *rules;
    const struct log_ctx *log;
};

/* Appends one action per ticket to wake to `actions` (a BSON array being
 * built, keys "0", "1", …, continuing from *n_actions), one entry per ticket
 * left as it is to `skipped` (only when verbose_skips), and returns the number
 * of bad documents met. Each action:
 *   { kind: "unsnooze", target: <id hex>, conversation_id: ObjectId,
 *     reason, read_updated_at: <date or absent>,
 *     before: {status, priority}, after: {status, priority},
 *     queue: {key, member, score}, room_id,
 *     notifications: [ <outbox entry, SPEC §2, status "pending"> ] }
 * Pure: no I/O besides logging the bad documents it meets. */
int snooze_decide(const struct snooze_input *in, bson_t *actions, uint32_t *n_actions,
                  bson_t *skipped, uint32_t *n_skipped, bool verbose_skips);

#endif
