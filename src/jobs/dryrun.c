/* dryrun — the one dry-run driver (see dryrun.h): each registered job's
 * fixture loader and decide, in the plan's order, and the plan as text. */
#include "jobs/dryrun.h"

#include <stdio.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"

static const struct dryrun_job *const registered[] = {
    &dryrun_snooze, &dryrun_message_status, &dryrun_communication_check, &dryrun_notification};
#define N_REGISTERED (sizeof registered / sizeof *registered)

static const struct dryrun_job *find(const char *name)
{
    for (size_t i = 0; i < N_REGISTERED; i++)
        if (strcmp(registered[i]->name, name) == 0)
            return registered[i];
    return NULL;
}

bool dryrun_supports(const char *job) { return find(job) != NULL; }

/* One job: collect from the fixtures, then decide into plan.jobs.<name>. */
static int plan_job(const struct dryrun_job *j, const struct dryrun_ctx *c, bson_t *jobs,
                    struct sd_error *err)
{
    void *input = j->load(c, err);
    if (!input)
        return -1;
    bson_t plan;
    BSON_APPEND_DOCUMENT_BEGIN(jobs, j->name, &plan);
    int rc = j->decide(input, c, &plan, err);
    bson_append_document_end(jobs, &plan);
    j->release(input);
    return rc;
}

int dryrun_plan(const struct dryrun_ctx *c, const char *job, bson_t *plan, struct sd_error *err)
{
    if (job && !dryrun_supports(job))
        return sd_error_set(err, "--job %s: no dry-run for this job in this version", job);
    char now_text[40];
    clock_format_iso(c->now_ms, now_text, sizeof now_text);
    BSON_APPEND_UTF8(plan, "now", now_text);
    BSON_APPEND_UTF8(plan, "rules", rules_version(c->rules));
    bson_t jobs;
    BSON_APPEND_DOCUMENT_BEGIN(plan, "jobs", &jobs);
    int rc = 0;
    for (size_t i = 0; i < N_REGISTERED && rc == 0; i++) {
        const struct dryrun_job *j = registered[i];
        bool wanted = job ? strcmp(job, j->name) == 0 : !j->by_default || j->by_default(c->fx);
        if (wanted)
            rc = plan_job(j, c, &jobs, err);
    }
    bson_append_document_end(plan, &jobs);
    return rc;
}

/* ---- text ------------------------------------------------------------------ */

/* The common listing: each action (the job's line), the mails it sends, and
 * a count. */
static void print_actions(const struct dryrun_job *j, const bson_t *plan)
{
    uint32_t n = 0, skipped = 0;
    bson_iter_t list, nl;
    if (bson_path_each(plan, "skipped", &list))
        while (bson_iter_next(&list))
            skipped++;
    if (bson_path_each(plan, "actions", &list)) {
        while (bson_iter_next(&list)) {
            bson_t action, e;
            bson_iter_child(&list, &action);
            n++;
            if (j && j->print_action)
                j->print_action(&action);
            if (bson_path_each(&action, "notifications", &nl)) {
                while (bson_iter_next(&nl)) {
                    bson_iter_child(&nl, &e);
                    const char *to = bson_path_text(&e, "recipient.email");
                    printf("    notify %s: \"%s\"\n", *to ? to : bson_path_text(&e, "recipient.phone"),
                           bson_path_text(&e, "subject"));
                }
            }
        }
    }
    printf("  %u action(s), %u ticket(s) left as they are\n", n, skipped);
}

void dryrun_print_text(const bson_t *plan)
{
    printf("dry-run at %s with rules %s\n", bson_path_text(plan, "now"),
           bson_path_text(plan, "rules"));
    bson_iter_t jobs, it;
    if (!bson_iter_init_find(&jobs, plan, "jobs") || !bson_iter_recurse(&jobs, &it))
        return;
    while (bson_iter_next(&it)) {
        const struct dryrun_job *j = find(bson_iter_key(&it));
        bson_t job;
        printf("\n%s:\n", bson_iter_key(&it));
        if (!bson_iter_child(&it, &job))
            continue;
        if (j && j->print_plan)
            j->print_plan(&job);
        else
            print_actions(j, &job);
    }
}
