/* probe — a diagnostic job: one round trip to MongoDB and one to Redis, then
 * (QM_SUPPORT_PROBE_HOLD_MS) keeps its lease for a while. Operators use it to
 * check a deployment's connectivity and leases with `supportd once probe`; the
 * integration tests use the hold to show that two instances never run a job's
 * tick at the same time. */
#include <time.h>

#include "core/clock.h"
#include "jobs/job.h"
#include "store/mongo.h"

int job_probe(struct job_env *env, struct sd_error *err)
{
    int64_t t0 = clock_now_ms();
    if (store_ping(env->mongo, env->db, err))
        return -1;
    int64_t t1 = clock_now_ms();
    redisReply *rep = rds_command(env->redis, err, "PING");
    if (!rep)
        return -1;
    freeReplyObject(rep);
    int64_t t2 = clock_now_ms();
    BSON_APPEND_INT64(env->counts, "mongo_ms", t1 - t0);
    BSON_APPEND_INT64(env->counts, "redis_ms", t2 - t1);

    /* Hold in small steps so SIGTERM still ends the tick promptly. */
    int64_t until = clock_now_ms() + env->cfg->probe_hold_ms;
    while (clock_now_ms() < until && !job_should_stop(env)) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}
