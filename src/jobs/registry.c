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
    return atomic_load(env->stop) || (env->lease && lease_is_lost(env->lease));
}
