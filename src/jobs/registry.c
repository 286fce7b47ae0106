#include <time.h>

#include "jobs/job.h"

job_fn job_function(int id)
{
    switch (id) {
    case JOB_PROBE:
        return job_probe;
    case JOB_OUTBOX:
        return job_outbox;
    case JOB_SNOOZE:
        return job_snooze;
    case JOB_MESSAGE_STATUS:
        return job_message_status;
    case JOB_NOTIFICATION:
        return job_notification;
    case JOB_COMMUNICATION_CHECK:
        return job_communication_check;
    default:
        return NULL;
    }
}

bool job_uses_lease(int id)
{
    /* Outbox delivery claims each entry in Redis: a job lease would only make
     * instances take turns. */
    return id != JOB_OUTBOX;
}

bool job_should_stop(const struct job_env *env)
{
    return atomic_load(env->stop) || (env->lease && lease_is_lost(env->lease)) ||
           (env->plan && env->plan->limit > 0 && env->plan->read >= env->plan->limit);
}

static void append_all(bson_t *to, uint32_t *n, const bson_t *from)
{
    bson_iter_t it;
    if (!from || !bson_iter_init(&it, from))
        return;
    while (bson_iter_next(&it)) {
        char idx[16];
        const char *key;
        bson_uint32_to_string((*n)++, &key, idx, sizeof idx);
        bson_append_iter(to, key, -1, &it);
    }
}

void job_plan_append(struct job_plan *plan, const bson_t *actions, const bson_t *skipped)
{
    append_all(plan->actions, &plan->n_actions, actions);
    append_all(plan->skipped, &plan->n_skipped, skipped);
}
