#include <time.h>

#include "jobs/job.h"

job_fn job_function(int id)
{
    switch (id) {
    case JOB_PROBE:
        return job_probe;
    default:
        return NULL; /* snooze, message-status, notification, communication-check: to come */
    }
}

bool job_should_stop(const struct job_env *env)
{
    return atomic_load(env->stop) || (env->lease && lease_is_lost(env->lease));
}
