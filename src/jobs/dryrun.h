/* dryrun.h — the jobs' collect → decide on fixtures instead of the databases:
 * the same decide functions production runs, a fixture source for collect,
 * and the plan as the sink. No database, Redis or network is touched.
 *
 * One driver (dryrun.c) for every job: a job registers an adapter
 * (jobs/<job>/dryrun.c) with its fixture loader, its decide and what its text
 * output says; the driver builds the plan and prints it.
 *
 * Plan: { now, rules, jobs: { snooze: { actions: [...], skipped: [...] },
 * "message-status": { entries, updates, polls, poll_results, retries } } };
 * snooze's actions and skipped in ascending target id, message-status's
 * entries in stream (file) order, so the same input gives the same bytes. Ownership: appends to a caller-owned plan; errors per core/error.h.
 */
#ifndef SD_JOBS_DRYRUN_H
#define SD_JOBS_DRYRUN_H

#include <bson/bson.h>

#include "core/config.h"
#include "core/log.h"
#include "jobs/fixtures.h"
#include "rules/engine.h"

/* What a dry-run reads: everything borrowed. */
struct dryrun_ctx {
    const struct fixtures *fx;
    struct rules *rules;
    int64_t now_ms;
    const struct config *cfg; /* the environment (message-status: its webhook keys win
                                 over meta.json's) */
};

/* What a job registers. */
struct dryrun_job {
    const char *name; /* as in the job table, --job and the plan */
    /* collect: the job's input from the fixtures, owned by the caller until
     * release; NULL (err set) when it cannot be read. */
    void *(*load)(const struct dryrun_ctx *c, struct sd_error *err);
    /* decide: the job's plan into `plan` (its document under plan.jobs).
     * Fails (-1) when a document could not be planned because a rule failed
     * on it: the message names the document and the rule. */
    int (*decide)(void *input, const struct dryrun_ctx *c, bson_t *plan, struct sd_error *err);
    void (*release)(void *input);
    /* Planned when no --job names a job; NULL: always. */
    bool (*by_default)(const struct fixtures *fx);
    /* --format text: the whole job plan, or (NULL) the common listing of its
     * actions, with this one's line for each action above its mails. */
    void (*print_plan)(const bson_t *plan);
    void (*print_action)(const bson_t *action);
};

/* The adapters, in the order the plan lists them (jobs/<job>/dryrun.c). */
extern const struct dryrun_job dryrun_snooze, dryrun_message_status, dryrun_communication_check,
    dryrun_notification;

/* job NULL = every job planned by default. Fails (-1) as decide does. */
int dryrun_plan(const struct dryrun_ctx *c, const char *job, bson_t *plan, struct sd_error *err);

/* The plan as text (dry-run --format text). */
void dryrun_print_text(const bson_t *plan);

/* True when the job can be dry-run in this version. */
bool dryrun_supports(const char *job);

#endif
