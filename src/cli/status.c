#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "jobs/job.h"
#include "jobs/runner.h"
#include "store/health.h"
#include "store/lease.h"

static void fmt_time(int64_t ms, char *buf, size_t size)
{
    if (ms <= 0)
        snprintf(buf, size, "never");
    else
        clock_format_iso(ms, buf, size);
}

int cli_status(int argc, char **argv)
{
    if (argc > 1)
        return cli_usage_error("status", "unexpected argument \"%s\"", argv[1]);
    struct config cfg;
    if (cli_load_config(&cfg) != EXIT_OK)
        return EXIT_USAGE;
    struct rds_options opts;
    runner_redis_options(&cfg, &opts);
    struct rds *r = rds_new(&opts);
    int64_t now = clock_now_ms();
    int unhealthy = 0;
    printf("%-20s %-8s %-16s %-25s %-7s %-25s %s\n", "JOB", "ENABLED", "SCHEDULE", "LAST RUN",
           "RESULT", "NEXT RUN", "LEASE HOLDER");
    for (int i = 0; i < JOB_COUNT; i++) {
        const struct job_config *jc = &cfg.jobs[i];
        if ((i == JOB_PROBE || i == JOB_OUTBOX) && !jc->enabled)
            continue; /* diagnostic job: shown only when enabled */
        struct job_health h;
        struct sd_error err;
        if (health_read(r, cfg.redis_prefix, job_specs[i].name, &h, &err)) {
            fprintf(stderr, "supportd status: %s\n", err.message);
            rds_destroy(r);
            config_free(&cfg);
            return EXIT_RUNTIME;
        }
        char key[300], holder[128] = "-", last[40], next[40];
        snprintf(key, sizeof key, "%slease:%s", cfg.redis_prefix, job_specs[i].name);
        redisReply *rep = rds_command(r, NULL, "GET %s", key);
        if (rep && rep->type == REDIS_REPLY_STRING)
            lease_token_owner(rep->str, holder, sizeof holder);
        if (rep)
            freeReplyObject(rep);
        fmt_time(h.last_start, last, sizeof last);
        fmt_time(jc->enabled ? cron_next(&jc->cron, now / 1000) * 1000 : 0, next, sizeof next);
        if (!jc->enabled)
            snprintf(next, sizeof next, "-");
        const char *result = h.present ? h.last_result : "-";
        printf("%-20s %-8s %-16s %-25s %-7s %-25s %s\n", job_specs[i].name,
               jc->enabled ? "yes" : "no", jc->cron_text, last, result, next, holder);
        if (h.present && !strcmp(h.last_result, "error") && h.last_error[0])
            printf("  last error: %s\n", h.last_error);
        if (jc->enabled && health_overdue(&jc->cron, h.last_success, 0, now)) {
            char ok[40];
            fmt_time(h.last_success, ok, sizeof ok);
            printf("  UNHEALTHY: no successful run within twice its interval (last success: %s)\n",
                   ok);
            unhealthy++;
        }
    }
    rds_destroy(r);
    config_free(&cfg);
    return unhealthy ? EXIT_RUNTIME : EXIT_OK;
}
