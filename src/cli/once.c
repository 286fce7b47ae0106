#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "core/log.h"
#include "jobs/job.h"
#include "jobs/runner.h"
#include "store/mongo.h"

static atomic_bool stop_requested;

static void on_stop(int sig)
{
    (void)sig;
    atomic_store(&stop_requested, true);
}

int cli_once(int argc, char **argv)
{
    const char *job_name = NULL, *now_text = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--now")) {
            if (++i >= argc)
                return cli_usage_error("once", "--now needs a time, e.g. 2026-03-01T09:00:00Z");
            now_text = argv[i];
        } else if (!strncmp(argv[i], "--now=", 6)) {
            now_text = argv[i] + 6;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("once", "unknown flag %s", argv[i]);
        } else if (!job_name) {
            job_name = argv[i];
        } else {
            return cli_usage_error("once", "unexpected argument \"%s\"", argv[i]);
        }
    }
    if (!job_name)
        return cli_usage_error("once", "which job? (snooze, message-status, notification, "
                                       "communication-check, probe)");
    int job = job_find(job_name);
    if (job < 0)
        return cli_usage_error("once", "unknown job \"%s\"", job_name);
    if (!job_function(job)) {
        fprintf(stderr, "supportd once: job %s is not implemented in this version\n", job_name);
        return EXIT_USAGE;
    }
    struct sd_error err;
    int64_t now_ms = clock_now_ms();
    if (now_text && clock_parse_iso(now_text, &now_ms, &err))
        return cli_usage_error("once", "--now: %s", err.message);

    struct config cfg;
    if (cli_load_config_mongo(&cfg) != EXIT_OK)
        return EXIT_USAGE;
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int rc = EXIT_RUNTIME;
    struct store *store = store_new(cfg.mongo_url, cfg.mongo_db, &err);
    if (!store) {
        fprintf(stderr, "supportd: configuration error: %s\n", err.message);
        config_free(&cfg);
        return EXIT_USAGE;
    }
    struct runner runner;
    struct rules_live *rules = cli_load_rules(&cfg);
    if (!rules) {
        rc = EXIT_USAGE;
    } else {
        /* As in `run`: an absent database fails the tick (logged and recorded
         * where `status` sees it), not start-up. */
        if (store_ensure_indexes(store, &err))
            log_msg(LOG_ERROR, NULL, "startup.indexes", NULL, "%s", err.message);
        if (runner_init(&runner, &cfg, store, rules, &stop_requested, &err) == 0) {
            rc = runner_tick(&runner, job, now_ms) == TICK_OK ? EXIT_OK : EXIT_RUNTIME;
            runner_destroy(&runner);
        }
    }
    rules_live_destroy(rules);
    store_destroy(store);
    config_free(&cfg);
    return rc;
}
