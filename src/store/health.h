/* health.h — each job's last outcome, where any instance can read it.
 *
 * Redis hash `<prefix>job:<name>` with fields:
 *   last_start, last_end, last_success   Unix ms
 *   last_result    running | ok | error
 *   last_error     message of the last failure ("" after a success)
 *   last_duration_ms, last_instance ("<host>:<pid>"), last_tick (tick id)
 *   last_counts    JSON object of the tick's counters
 *   runs, failures running totals
 * `supportd status` reads it; the scheduler reads last_start at start-up to
 * run a tick missed while no instance was up.
 *
 * Ownership: struct job_health is a plain value.
 */
#ifndef SD_STORE_HEALTH_H
#define SD_STORE_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/cron.h"
#include "core/error.h"
#include "store/redis.h"

struct job_health {
    bool present;
    int64_t last_start, last_end, last_success, last_duration_ms;
    char last_result[16];
    char last_error[512];
    char last_instance[128];
    char last_tick[40];
    char last_counts[512];
    int64_t runs, failures;
};

int health_record_start(struct rds *r, const char *prefix, const char *job, const char *tick,
                        const char *instance, int64_t start_ms, struct sd_error *err);

/* error_message NULL means success. counts_json may be NULL. */
int health_record_end(struct rds *r, const char *prefix, const char *job, int64_t end_ms,
                      int64_t duration_ms, const char *error_message, const char *counts_json,
                      struct sd_error *err);

int health_read(struct rds *r, const char *prefix, const char *job, struct job_health *out,
                struct sd_error *err);

/* The gap between the job's next two slots after now_s: its interval as the
 * cron expression means it. */
int64_t health_interval_ms(const struct cron_expr *cron, int64_t now_s);

/* The liveness rule of `supportd status` and /healthz: an enabled job is
 * overdue when its last success (any instance's) is older than twice its
 * interval. since_ms, when later than the last success, stands in for it (a
 * process that started a moment ago has not had its chance yet); 0 = none. */
bool health_overdue(const struct cron_expr *cron, int64_t last_success_ms, int64_t since_ms,
                    int64_t now_ms);

#endif
