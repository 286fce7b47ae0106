/* dryrun.h — the jobs' collect → decide on fixtures instead of the databases:
 * the same decide functions production runs, a fixture source for collect,
 * and the plan as the sink. No database, Redis or network is touched.
 *
 * Plan: { now, rules, jobs: { snooze: { actions: [...], skipped: [...] },
 * "message-status": { entries, updates, polls, poll_results, retries } } };
 * snooze's actions and skipped in ascending target id, message-status's
 * entries in stream (file) order, so the same input gives the same bytes. Ownership: appends to a caller-owned plan; errors per core/error.h.
 */
#ifndef SD_JOBS_DRYRUN_H
#define SD_JOBS_DRYRUN_H

#include <bson/bson.h>

#include "core/log.h"
#include "jobs/fixtures.h"
#include "jobs/message_status/model.h"
#include "rules/engine.h"

/* job NULL = every job that has a decide step in this version. keys: the
 * webhook keys from the environment (NULL members: meta.json's, if any).
 * Fails (-1) when a document could not be planned because a rule failed on
 * it (an error, its time budget, its memory cap): the message names the
 * document and the rule. */
int dryrun_plan(const struct fixtures *fx, struct rules *rules, const char *job, int64_t now_ms,
                const struct msgstatus_keys *keys, bson_t *plan, struct sd_error *err);

/* communication-check on fixtures (jobs/commcheck/dryrun.c). */
int dryrun_commcheck(const struct fixtures *fx, struct rules *rules, int64_t now_ms, bson_t *jobs,
                     struct sd_error *err);

/* True when the job can be dry-run in this version. */
bool dryrun_supports(const char *job);

#endif
