/* message_status/tick.h — what the message-status job's I/O files share (internal
 * to the job: job.c consumes the stream, retry.c sends
 * again and polls). Ownership: struct ms_tick borrows the job's environment;
 * the collection handle is the tick's. Errors follow core/error.h. */
#ifndef SD_JOBS_MESSAGE_STATUS_TICK_H
#define SD_JOBS_MESSAGE_STATUS_TICK_H

#include <mongoc/mongoc.h>

#include "jobs/job.h"
#include "jobs/message_status/model.h"

struct ms_counts {
    int64_t entries, claimed, acknowledged, deferred, events, applied, duplicates, ignored,
        history_only, unknown, rejected, rule_failed, unmatched, waiting, conflicts, messages_updated, retries_due, resent, resend_recovered,
        resend_uncertain, resend_failed, retry_exhausted, polled, poll_failed, trimmed,
        batches;
};

struct ms_tick {
    struct job_env *env;
    mongoc_collection_t *msgs;
    int64_t wall_ms;
    struct msgstatus_keys keys;
    char stream[256], rejected[256], unmatched[256], tries[256];
    char consumer[128];
    struct ms_counts c;
};

/* Reads the messages the plan's events name and runs decide + apply on them:
 * shared by the stream batches and the reconcile sweep's synthetic entries.
 * not_landed receives {"<message id hex>": true} for messages whose update
 * did not land (a concurrent change): their entries stay pending. Messages for
 * which a rule failed are in plan.rule_errors (msgstatus_decide), unwritten. */
int ms_decide_and_write(struct ms_tick *t, const bson_t *const *parsed, size_t n, bson_t *plan,
                        bson_t *not_landed, struct sd_error *err);

/* False (err set) when the lease can no longer be counted on for a write. */
bool ms_fence(struct ms_tick *t, struct sd_error *err);

int ms_retry_sweep(struct ms_tick *t, struct sd_error *err);
int ms_reconcile_sweep(struct ms_tick *t, struct sd_error *err);

#endif
