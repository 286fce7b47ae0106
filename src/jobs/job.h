/* job.h — what a job is, and the table of jobs.
 *
 * A job is a function run once per tick under its lease. It reads through the
 * environment it is given and never keeps state between ticks: what must
 * survive a crash lives in MongoDB or Redis. Every job is collect → decide →
 * apply, with decide pure so dry-run and tests run the same code.
 *
 * A job checks job_should_stop() between batches: on SIGTERM, or when its lease
 * was lost, it returns after finishing the batch in hand, never half-way
 * through one.
 *
 * Ownership: everything in struct job_env is borrowed for the tick. The job
 * adds its counters to env->counts (int64 members), which the runner logs and
 * records. Errors follow core/error.h; a job returns -1 only when the tick as a
 * whole failed (a bad document is logged and skipped, not a failed tick).
 */
#ifndef SD_JOBS_JOB_H
#define SD_JOBS_JOB_H

#include <bson/bson.h>
#include <mongoc/mongoc.h>
#include <stdatomic.h>

#include "core/config.h"
#include "core/error.h"
#include "core/log.h"
#include "rules/engine.h"
#include "store/lease.h"
#include "store/mongo.h"
#include "store/redis.h"

/* A live dry-run's sink (`supportd dry-run --live`). A job given one collects
 * and decides exactly as its tick would, appends its actions (and, where
 * decide reports them, its skipped items) here, and writes nothing: no
 * document, index or Redis key; it delivers nothing and moves no checkpoint.
 * Borrowed; the arrays are open children of the caller's job document. */
struct job_plan {
    bson_t *actions, *skipped;
    uint32_t n_actions, n_skipped;
    int64_t limit;           /* stop after the batch that reaches this many items read; 0 none */
    int64_t read;            /* items read so far (the job counts) */
    /* `supportd explain`: only this conversation, decided even when a tick
     * would pass it by as unchanged; and what decide did not plan, and why
     * (NULL: not asked), as in notification/model.h. */
    const bson_oid_t *only;
    bson_t *why;
    uint32_t n_why;
    bson_t *walks;           /* explain: the SLA deadlines' business-time walks */
};

struct job_env {
    const struct config *cfg;
    mongoc_client_t *mongo;
    struct store *store;     /* the pool `mongo` came from: more clients for helper threads */
    const char *db;
    struct rds *redis;
    const struct log_ctx *log;
    int64_t now_ms;          /* the tick's "now" (--now overrides it) */
    atomic_bool *stop;       /* process is shutting down */
    struct lease *lease;     /* NULL when run without one */
    struct rules *rules;     /* the rules set of this tick (one version throughout) */
    bson_t *counts;
    struct job_plan *plan;   /* NULL in a tick; set: plan only (see struct job_plan) */
};

typedef int (*job_fn)(struct job_env *env, struct sd_error *err);

/* The job's function, or NULL when this version does not implement it. */
job_fn job_function(int id);

/* Stop requested, the lease lost, or a plan's --limit reached. */
bool job_should_stop(const struct job_env *env);

/* Plan mode: the batch's actions (an array document) appended to the plan,
 * renumbered. */
void job_plan_append(struct job_plan *plan, const bson_t *actions, const bson_t *skipped);

int job_probe(struct job_env *env, struct sd_error *err);
/* Entries one tick delivers (oldest due first); the rest wait for the next.
 * On FerretDB each tick's due query reads every pending entry, so fewer,
 * larger ticks drain a backlog faster (README, outbox benchmark). */
#define JOB_OUTBOX_LIMIT 5000

/* Delivers due outbox entries (up to JOB_OUTBOX_LIMIT), adding outbox_*
 * counters to env->counts. Every job that sends calls it at the end of its
 * tick. */
int job_deliver_outbox(struct job_env *env, struct sd_error *err);
int job_outbox(struct job_env *env, struct sd_error *err);
/* False for jobs safe to run on every instance at once (each item claimed on
 * its own): the runner takes no lease for them. */
bool job_uses_lease(int id);
int job_snooze(struct job_env *env, struct sd_error *err);
int job_message_status(struct job_env *env, struct sd_error *err);
int job_communication_check(struct job_env *env, struct sd_error *err);
int job_notification(struct job_env *env, struct sd_error *err);

#endif
