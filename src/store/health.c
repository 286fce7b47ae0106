#include "store/health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void key_for(char *buf, size_t size, const char *prefix, const char *job)
{
    snprintf(buf, size, "%sjob:%s", prefix, job);
}

int health_record_start(struct rds *r, const char *prefix, const char *job, const char *tick,
                        const char *instance, int64_t start_ms, struct sd_error *err)
{
    char key[256];
    key_for(key, sizeof key, prefix, job);
    redisReply *rep = rds_command(r, err,
                                  "HSET %s last_start %lld last_result running last_tick %s "
                                  "last_instance %s",
                                  key, (long long)start_ms, tick, instance);
    if (!rep)
        return sd_error_prefix(err, "job health %s", key);
    freeReplyObject(rep);
    return 0;
}

int health_record_end(struct rds *r, const char *prefix, const char *job, int64_t end_ms,
                      int64_t duration_ms, const char *error_message, const char *counts_json,
                      struct sd_error *err)
{
    char key[256];
    key_for(key, sizeof key, prefix, job);
    const char *counts = counts_json ? counts_json : "{}";
    if (rds_pipeline_append(r, err, "HSET %s last_end %lld last_duration_ms %lld last_result %s "
                                    "last_error %s last_counts %s",
                            key, (long long)end_ms, (long long)duration_ms,
                            error_message ? "error" : "ok", error_message ? error_message : "",
                            counts) ||
        rds_pipeline_append(r, err, "HINCRBY %s runs 1", key) ||
        (error_message ? rds_pipeline_append(r, err, "HINCRBY %s failures 1", key)
                       : rds_pipeline_append(r, err, "HSET %s last_success %lld", key,
                                             (long long)end_ms)))
        return sd_error_prefix(err, "job health %s", key);
    for (int i = 0; i < 3; i++) {
        redisReply *rep = rds_pipeline_read(r, err);
        if (!rep)
            return sd_error_prefix(err, "job health %s", key);
        freeReplyObject(rep);
    }
    return 0;
}

static int64_t to_i64(const char *s) { return s ? strtoll(s, NULL, 10) : 0; }

int health_read(struct rds *r, const char *prefix, const char *job, struct job_health *out,
                struct sd_error *err)
{
    char key[256];
    key_for(key, sizeof key, prefix, job);
    memset(out, 0, sizeof *out);
    redisReply *rep = rds_command(r, err, "HGETALL %s", key);
    if (!rep)
        return sd_error_prefix(err, "job health %s", key);
    out->present = rep->elements > 0;
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *f = rep->element[i]->str, *v = rep->element[i + 1]->str;
        if (!f || !v)
            continue;
        if (!strcmp(f, "last_start"))
            out->last_start = to_i64(v);
        else if (!strcmp(f, "last_end"))
            out->last_end = to_i64(v);
        else if (!strcmp(f, "last_success"))
            out->last_success = to_i64(v);
        else if (!strcmp(f, "last_duration_ms"))
            out->last_duration_ms = to_i64(v);
        else if (!strcmp(f, "runs"))
            out->runs = to_i64(v);
        else if (!strcmp(f, "failures"))
            out->failures = to_i64(v);
        else if (!strcmp(f, "last_result"))
            snprintf(out->last_result, sizeof out->last_result, "%s", v);
        else if (!strcmp(f, "last_error"))
            snprintf(out->last_error, sizeof out->last_error, "%s", v);
        else if (!strcmp(f, "last_instance"))
            snprintf(out->last_instance, sizeof out->last_instance, "%s", v);
        else if (!strcmp(f, "last_tick"))
            snprintf(out->last_tick, sizeof out->last_tick, "%s", v);
        else if (!strcmp(f, "last_counts"))
            snprintf(out->last_counts, sizeof out->last_counts, "%s", v);
    }
    freeReplyObject(rep);
    return 0;
}

int64_t health_interval_ms(const struct cron_expr *cron, int64_t now_s)
{
    int64_t a = cron_next(cron, now_s), b = cron_next(cron, a);
    return (b - a) * 1000;
}

bool health_overdue(const struct cron_expr *cron, int64_t last_success_ms, int64_t since_ms,
                    int64_t now_ms)
{
    int64_t ref = last_success_ms > since_ms ? last_success_ms : since_ms;
    return now_ms - ref > 2 * health_interval_ms(cron, now_ms / 1000);
}
