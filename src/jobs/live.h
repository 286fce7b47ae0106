/* live.h — `supportd dry-run --live`: the jobs' own collect and decide on the
 * live database, in plan mode (jobs/job.h, struct job_plan), so the plan is
 * what a tick at the same now would do, read by the same queries in the same
 * batches, and nothing is written.
 *
 * The plan has the fixture dry-run's shape (jobs/dryrun.h) plus "live": true
 * and, per job, "read" (items read) and "limited" (the --limit cut it short):
 *   { now, rules, live, jobs: { snooze: {actions, skipped, read, limited},
 *     notification: {actions, skipped, read, limited} } }
 * Jobs planned: snooze and notification (the jobs whose input is the
 * database). message-status reads its input through a consumer group (a read
 * there is a write) and communication-check asks the providers: neither is
 * planned live; their fixture dry-runs cover them.
 *
 * Ownership: everything in struct live_ctx is borrowed; the plan is the
 * caller's. Errors per core/error.h.
 */
#ifndef SD_JOBS_LIVE_H
#define SD_JOBS_LIVE_H

#include <stdatomic.h>

#include <bson/bson.h>

#include "core/config.h"
#include "rules/engine.h"
#include "store/mongo.h"
#include "store/redis.h"

struct live_ctx {
    const struct config *cfg;
    struct store *store;
    struct rds *redis;
    struct rules *rules;
    int64_t now_ms;
    int64_t limit;        /* per job: stop after the batch reaching this many items; 0 none */
    atomic_bool *stop;    /* SIGINT: the plan so far */
    bool progress;        /* a line per job on stderr */
    /* `supportd explain`: one conversation only, and the notifications decide
     * did not plan, with why, appended to *why (counted in *n_why); see
     * struct job_plan. NULL: the whole database, no reasons. */
    const bson_oid_t *only;
    bson_t *why;
    uint32_t *n_why;
    bson_t *walks;        /* explain: the SLA deadlines' business-time walks */
};

/* True when `job` (a CLI name) can be planned live. */
bool live_supports(const char *job);

/* job NULL: every enabled job that can be planned live. */
int live_plan(const struct live_ctx *c, const char *job, bson_t *plan, struct sd_error *err);

#endif
