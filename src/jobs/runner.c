#include "jobs/runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/stall.h"
#include "core/metrics.h"
#include "jobs/job.h"
#include "store/health.h"
#include "store/lease.h"

void runner_redis_options(const struct config *cfg, struct rds_options *opts)
{
    *opts = (struct rds_options){.host = cfg->redis_host,
                                 .port = cfg->redis_port,
                                 .username = cfg->redis_username,
                                 .password = cfg->redis_password,
                                 .db = cfg->redis_db,
                                 .timeout_ms = 5000,
                                 .tls = cfg->redis_tls,
                                 .tls_ca_file = cfg->redis_tls_ca_file,
                                 .tls_cert_file = cfg->redis_tls_cert_file,
                                 .tls_key_file = cfg->redis_tls_key_file,
                                 .from_url = cfg->redis_from_url};
}

void runner_instance_id(char *buf, size_t size)
{
    char host[64] = "unknown";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(buf, size, "%s:%d", host, (int)getpid());
}

int runner_init(struct runner *r, const struct config *cfg, struct store *store,
                struct rules_live *rules, atomic_bool *stop, struct sd_error *err)
{
    memset(r, 0, sizeof *r);
    r->rules = rules;
    r->cfg = cfg;
    r->store = store;
    r->stop = stop;
    runner_redis_options(cfg, &r->redis_opts);
    r->redis = rds_new(&r->redis_opts);
    if (!r->redis)
        return sd_error_set(err, "out of memory");
    runner_instance_id(r->instance, sizeof r->instance);
    return 0;
}

void runner_destroy(struct runner *r)
{
    rds_destroy(r->redis);
    r->redis = NULL;
}

static void log_end(const struct log_ctx *ctx, enum tick_outcome outcome, int64_t duration,
                    const bson_t *counts, const char *error)
{
    bson_t fields = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&fields, "outcome", outcome == TICK_OK ? "ok" : "error");
    BSON_APPEND_INT64(&fields, "duration_ms", duration);
    BSON_APPEND_DOCUMENT(&fields, "counts", counts);
    if (error)
        BSON_APPEND_UTF8(&fields, "error", error);
    log_msg(outcome == TICK_OK ? LOG_INFO : LOG_ERROR, ctx, "tick.end", &fields, "%s",
            outcome == TICK_OK ? "tick finished" : error);
    bson_destroy(&fields);
}

enum tick_outcome runner_tick(struct runner *r, int job, int64_t now_ms)
{
    const struct job_spec *spec = &job_specs[job];
    char tick[17], key[300], holder[192] = "";
    struct sd_error err;
    if (clock_random_hex(tick, 8, &err))
        snprintf(tick, sizeof tick, "%016llx", (unsigned long long)clock_now_ms());
    struct log_ctx ctx = {spec->name, tick};
    job_fn fn = job_function(job);
    if (!fn) {
        log_msg(LOG_ERROR, &ctx, "tick.unimplemented", NULL,
                "job %s is not implemented in this version", spec->name);
        return TICK_FAILED;
    }

    snprintf(key, sizeof key, "%slease:%s", r->cfg->redis_prefix, spec->name);
    struct lease lease;
    bool use_lease = job_uses_lease(job);
    bool held = !use_lease;
    if (use_lease && lease_acquire(r->redis, key, r->instance, r->cfg->lease_ttl_ms, &lease,
                                   &held, holder, sizeof holder, &err)) {
        /* Redis is where the health record lives too: only the log can say it. */
        bson_t none = BSON_INITIALIZER;
        log_end(&ctx, TICK_FAILED, 0, &none, err.message);
        bson_destroy(&none);
        metrics_tick(spec->name, METRICS_TICK_ERROR, 0, NULL);
        return TICK_FAILED;
    }
    if (!held) {
        char owner[128];
        lease_token_owner(holder, owner, sizeof owner);
        bson_t f = BSON_INITIALIZER;
        BSON_APPEND_UTF8(&f, "holder", owner);
        log_msg(LOG_INFO, &ctx, "tick.skipped", &f,
                "another instance (%s) is running this job; skipping this slot", owner);
        bson_destroy(&f);
        metrics_tick(spec->name, METRICS_TICK_SKIPPED, 0, NULL);
        return TICK_SKIPPED;
    }
    /* A rule call cannot outlast its deadline by much (the hook and the
     * matcher read the clock); twice it plus 2 s means it never will. */
    struct stall_watch watch;
    stall_attach(&watch, 2LL * r->cfg->rules_timeout_ms + 2000);
    lease.watch = &watch;
    if (use_lease && lease_start_renewal(&lease, &r->redis_opts, &err))
        log_msg(LOG_WARN, &ctx, "lease.renewal", NULL, "%s", err.message);

    int64_t start = clock_now_ms();
    struct rules *rules = rules_live_acquire(r->rules);
    char now_text[40];
    clock_format_iso(now_ms, now_text, sizeof now_text);
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "now", now_text);
    BSON_APPEND_UTF8(&f, "instance", r->instance);
    BSON_APPEND_UTF8(&f, "rules", rules_version(rules));
    log_msg(LOG_INFO, &ctx, "tick.start", &f, "tick started");
    bson_destroy(&f);
    if (health_record_start(r->redis, r->cfg->redis_prefix, spec->name, tick, r->instance, start,
                            &err))
        log_msg(LOG_WARN, &ctx, "health.write", NULL, "%s", err.message);

    bson_t counts = BSON_INITIALIZER;
    mongoc_client_t *client = store_pop(r->store);
    struct job_env env = {.cfg = r->cfg,
                          .mongo = client,
                          .store = r->store,
                          .db = store_db(r->store),
                          .redis = r->redis,
                          .log = &ctx,
                          .now_ms = now_ms,
                          .stop = r->stop,
                          .lease = use_lease ? &lease : NULL,
                          .rules = rules,
                          .counts = &counts};
    uint64_t commands0 = store_thread_commands(), trips0 = rds_round_trips(r->redis);
    struct rules_cpu cpu0, cpu1;
    rules_thread_cpu(&cpu0);
    int rc = fn(&env, &err);
    rules_thread_cpu(&cpu1);
    BSON_APPEND_INT64(&counts, "db_commands", (int64_t)(store_thread_commands() - commands0));
    BSON_APPEND_INT64(&counts, "redis_round_trips", (int64_t)(rds_round_trips(r->redis) - trips0));
    BSON_APPEND_INT64(&counts, "rule_calls", (int64_t)(cpu1.calls - cpu0.calls));
    BSON_APPEND_INT64(&counts, "rules_cpu_us", (int64_t)((cpu1.other_ns - cpu0.other_ns) / 1000));
    BSON_APPEND_INT64(&counts, "render_cpu_us",
                      (int64_t)((cpu1.render_ns - cpu0.render_ns) / 1000));
    rules_live_release(r->rules, rules);
    store_push(r->store, client);

    int64_t end = clock_now_ms();
    enum tick_outcome outcome = rc == 0 ? TICK_OK : TICK_FAILED;
    char *counts_json = bson_as_relaxed_extended_json(&counts, NULL);
    log_end(&ctx, outcome, end - start, &counts, rc ? err.message : NULL);
    metrics_tick(spec->name, outcome == TICK_OK ? METRICS_TICK_OK : METRICS_TICK_ERROR,
                 end - start, &counts);
    struct sd_error herr;
    /* The record is read by other tools: scrub secrets as the logger does. */
    char *error_text = rc ? log_redact_dup(err.message) : NULL;
    if (health_record_end(r->redis, r->cfg->redis_prefix, spec->name, end, end - start,
                          error_text, counts_json, &herr))
        log_msg(LOG_WARN, &ctx, "health.write", NULL, "%s", herr.message);
    free(error_text);
    bson_free(counts_json);
    bson_destroy(&counts);
    if (use_lease && lease_release(r->redis, &lease, &herr))
        log_msg(LOG_WARN, &ctx, "lease.release", NULL, "%s (it expires by itself)",
                herr.message);
    stall_attach(NULL, 0);
    return outcome;
}
