/* runner.h — one tick of one job, wrapped in what every tick needs: a tick id,
 * the job's lease, its health record, a MongoDB client, timing and the
 * tick.start / tick.end log lines. Used by both `run` (scheduler threads) and
 * `once`.
 *
 * Ownership: a runner borrows cfg, store and the stop flag; it owns its Redis
 * connection (one per runner, so one per thread). runner_destroy frees it.
 */
#ifndef SD_JOBS_RUNNER_H
#define SD_JOBS_RUNNER_H

#include <stdatomic.h>

#include "core/config.h"
#include "store/mongo.h"
#include "store/redis.h"
#include "rules/reload.h"

enum tick_outcome { TICK_OK, TICK_FAILED, TICK_SKIPPED };

struct runner {
    const struct config *cfg;
    struct store *store;
    struct rds_options redis_opts;
    struct rds *redis;
    char instance[128];      /* "<host>:<pid>" */
    atomic_bool *stop;
    struct rules_live *rules;  /* borrowed */
};

int runner_init(struct runner *r, const struct config *cfg, struct store *store,
                struct rules_live *rules, atomic_bool *stop, struct sd_error *err);
void runner_destroy(struct runner *r);

/* Fills opts from cfg (strings borrowed from cfg). */
void runner_redis_options(const struct config *cfg, struct rds_options *opts);

/* "<host>:<pid>" of this process. */
void runner_instance_id(char *buf, size_t size);

enum tick_outcome runner_tick(struct runner *r, int job, int64_t now_ms);

#endif
