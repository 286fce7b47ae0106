#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/scheduler.h"
#include "http/http.h"
#include "jobs/job.h"
#include "jobs/runner.h"
#include "store/health.h"
#include "store/mongo.h"

static void on_tick(void *ud, int id, int64_t fire_ms)
{
    runner_tick(ud, id, fire_ms);
}

static void on_reload(void *ud)
{
    struct sd_error err;
    rules_live_reload(ud, &err); /* logs the outcome either way */
}

/* A slot missed while no instance ran (the last recorded start is older than
 * the slot before now) runs once at start-up; otherwise supervision starts now. */
static int64_t first_reference(struct runner *r, int job, const struct cron_expr *cron,
                               int64_t now_s)
{
    struct job_health h;
    struct sd_error err;
    if (health_read(r->redis, r->cfg->redis_prefix, job_specs[job].name, &h, &err) ||
        !h.present || h.last_start <= 0)
        return now_s;
    int64_t last = h.last_start / 1000;
    return cron_next(cron, last) <= now_s ? last : now_s;
}

int cli_run(int argc, char **argv)
{
    if (argc > 1)
        return cli_usage_error("run", "unexpected argument \"%s\"", argv[1]);
    struct config cfg;
    struct sd_error err;
    if (cli_load_config(&cfg) != EXIT_OK)
        return EXIT_USAGE;
    if (config_require_mongo(&cfg, &err))
        goto usage;
    int enabled = 0;
    for (int i = 0; i < JOB_COUNT; i++) {
        if (!cfg.jobs[i].enabled)
            continue;
        if (!job_function(i)) {
            sd_error_set(&err, "%s: job %s is not implemented in this version; unset the flag",
                         job_specs[i].flag_env, job_specs[i].name);
            goto usage;
        }
        enabled++;
    }

    struct rules_live *rules = cli_load_rules(&cfg);
    if (!rules) {
        config_free(&cfg);
        return EXIT_USAGE;
    }
    struct store *store = store_new(cfg.mongo_url, cfg.mongo_db, &err);
    if (!store) {
        rules_live_destroy(rules);
        goto usage;
    }
    /* From here on SIGTERM must end cleanly: hold it until the scheduler
     * waits for it, even while start-up waits on an absent database. */
    scheduler_block_signals();
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_INT32(&f, "enabled_jobs", enabled);
    log_msg(LOG_INFO, NULL, "startup", &f, "supportd starting");
    bson_destroy(&f);
    if (enabled == 0)
        log_msg(LOG_WARN, NULL, "startup.no_jobs", NULL,
                "no job is enabled (set QM_SUPPORT_SNOOZE=true or another job flag); idling");
    /* The database may still be starting; the jobs retry on every tick, and
     * index creation is retried at the next start. Not fatal. */
    if (store_ensure_indexes(store, &err))
        log_msg(LOG_ERROR, NULL, "startup.indexes", NULL, "%s", err.message);

    /* After the signal mask is set: the server's threads inherit it. */
    struct http_server *http = NULL;
    if (cfg.http_host && !(http = http_server_start(&cfg, store, rules, &err))) {
        log_msg(LOG_ERROR, NULL, "startup.http", NULL, "%s", err.message);
        store_destroy(store);
        rules_live_destroy(rules);
        config_free(&cfg);
        return EXIT_RUNTIME;
    }
    if (rules_live_watch(rules, &err))
        log_msg(LOG_WARN, NULL, "rules.watch", NULL, "%s; reload with SIGHUP", err.message);
    struct scheduler s = {.tick = on_tick, .reload = on_reload, .reload_ud = rules};
    atomic_init(&s.stop, false);
    struct scheduler_job *jobs = calloc(JOB_COUNT, sizeof *jobs);
    struct runner *runners = calloc(JOB_COUNT, sizeof *runners);
    int64_t now_s = clock_now_ms() / 1000;
    for (int i = 0; i < JOB_COUNT; i++) {
        if (!cfg.jobs[i].enabled)
            continue;
        struct runner *r = &runners[s.n_jobs];
        runner_init(r, &cfg, store, rules, &s.stop, &err);
        jobs[s.n_jobs] = (struct scheduler_job){
            .id = i, .cron = cfg.jobs[i].cron, .ud = r,
            .last_fire = first_reference(r, i, &cfg.jobs[i].cron, now_s)};
        bson_t jf = BSON_INITIALIZER;
        BSON_APPEND_UTF8(&jf, "schedule", cfg.jobs[i].cron_text);
        log_msg(LOG_INFO, &(struct log_ctx){job_specs[i].name, NULL}, "job.scheduled", &jf,
                "scheduled");
        bson_destroy(&jf);
        s.n_jobs++;
    }
    s.jobs = jobs;
    int rc = scheduler_run(&s, &err) == 0 ? EXIT_OK : EXIT_RUNTIME;
    if (rc != EXIT_OK)
        log_msg(LOG_ERROR, NULL, "scheduler", NULL, "%s", err.message);
    /* The jobs have stopped; the probes would now say so: stop answering. */
    http_server_stop(http);
    for (int i = 0; i < s.n_jobs; i++)
        runner_destroy(&runners[i]);
    free(runners);
    free(jobs);
    store_destroy(store);
    rules_live_destroy(rules);
    log_msg(LOG_INFO, NULL, "shutdown", NULL, "supportd stopped");
    config_free(&cfg);
    return rc;
usage:
    fprintf(stderr, "supportd: configuration error: %s\n", err.message);
    config_free(&cfg);
    return EXIT_USAGE;
}
