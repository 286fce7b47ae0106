/* live.c — the live dry-run (see live.h): each job's tick function, given a
 * plan sink instead of writes, outside the runner (no lease, no health
 * record: those are writes too). */
#include "jobs/live.h"

#include <stdio.h>
#include <string.h>

#include "core/clock.h"
#include "jobs/job.h"

static const int planned_live[] = {JOB_SNOOZE, JOB_NOTIFICATION};
#define N_LIVE (sizeof planned_live / sizeof *planned_live)

bool live_supports(const char *job)
{
    int id = job_find(job);
    for (size_t i = 0; i < N_LIVE; i++)
        if (planned_live[i] == id)
            return true;
    return false;
}

static int plan_job(const struct live_ctx *c, int id, bson_t *jobs, struct sd_error *err)
{
    const char *name = job_specs[id].name;
    struct log_ctx log = {name, "dry-run"};
    bson_t job, actions, skipped, counts = BSON_INITIALIZER;
    BSON_APPEND_DOCUMENT_BEGIN(jobs, name, &job);
    BSON_APPEND_ARRAY_BEGIN(&job, "actions", &actions);
    /* skipped gathers apart: a document has one open child at a time */
    bson_t skipped_tmp = BSON_INITIALIZER;
    struct job_plan plan = {.actions = &actions,
                            .skipped = &skipped_tmp,
                            .limit = c->limit,
                            .only = c->only,
                            .why = c->why,
                            .walks = c->walks,
                            .n_why = c->n_why ? *c->n_why : 0};
    mongoc_client_t *client = store_pop(c->store);
    struct job_env env = {.cfg = c->cfg,
                          .mongo = client,
                          .store = c->store,
                          .db = store_db(c->store),
                          .redis = c->redis,
                          .log = &log,
                          .now_ms = c->now_ms,
                          .stop = c->stop,
                          .rules = c->rules,
                          .counts = &counts,
                          .plan = &plan};
    int64_t started = clock_monotonic_ms();
    int rc = job_function(id)(&env, err);
    store_push(c->store, client);
    if (c->n_why)
        *c->n_why = plan.n_why;
    bson_append_array_end(&job, &actions);
    BSON_APPEND_ARRAY_BEGIN(&job, "skipped", &skipped);
    bson_iter_t it;
    if (bson_iter_init(&it, &skipped_tmp))
        while (bson_iter_next(&it))
            bson_append_iter(&skipped, bson_iter_key(&it), -1, &it);
    bson_append_array_end(&job, &skipped);
    BSON_APPEND_INT64(&job, "read", plan.read);
    BSON_APPEND_BOOL(&job, "limited", c->limit > 0 && plan.read >= c->limit);
    bson_append_document_end(jobs, &job);
    if (c->progress)
        fprintf(stderr, "supportd dry-run: %s: %lld item(s) read, %u action(s) planned in %lld ms%s\n",
                name, (long long)plan.read, plan.n_actions,
                (long long)(clock_monotonic_ms() - started),
                c->limit > 0 && plan.read >= c->limit ? " (--limit reached)" : "");
    bson_destroy(&skipped_tmp);
    bson_destroy(&counts);
    if (rc)
        sd_error_prefix(err, "planning %s", name);
    return rc;
}

int live_plan(const struct live_ctx *c, const char *job, bson_t *plan, struct sd_error *err)
{
    if (job && !live_supports(job))
        return sd_error_set(err, "--job %s: not planned live (its input is not the database); "
                                 "use --fixtures", job);
    char now_text[40];
    clock_format_iso(c->now_ms, now_text, sizeof now_text);
    BSON_APPEND_UTF8(plan, "now", now_text);
    BSON_APPEND_UTF8(plan, "rules", rules_version(c->rules));
    BSON_APPEND_BOOL(plan, "live", true);
    bson_t jobs;
    BSON_APPEND_DOCUMENT_BEGIN(plan, "jobs", &jobs);
    int rc = 0, planned = 0;
    for (size_t i = 0; i < N_LIVE && rc == 0; i++) {
        int id = planned_live[i];
        bool wanted = job ? job_find(job) == id : c->cfg->jobs[id].enabled;
        if (wanted) {
            rc = plan_job(c, id, &jobs, err);
            planned++;
        }
    }
    bson_append_document_end(plan, &jobs);
    if (rc == 0 && !planned)
        rc = sd_error_set(err, "no job to plan: neither %s nor %s is enabled (or name one "
                               "with --job)",
                          job_specs[JOB_SNOOZE].flag_env, job_specs[JOB_NOTIFICATION].flag_env);
    return rc;
}
