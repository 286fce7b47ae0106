/* probes.c — GET /healthz (liveness) and GET /readyz (readiness).
 *
 * /healthz applies `supportd status`'s rule to every enabled job: its last
 * success, by any instance, is within twice its interval (store/health.h).
 * A process younger than that counts its start instead, so a fresh
 * deployment is not restarted before its first tick. Answer 200, or 503
 * naming each overdue job.
 * /readyz: MongoDB answers ping, Redis answers PING, and a rules set is
 * loaded (its version is named). Answer 200, or 503 naming what is not.
 * Both answer from the checker's last look (checker.c): no request waits
 * for MongoDB or Redis; /healthz judges the jobs as of that look.
 */
#include <stdio.h>
#include <string.h>

#include "core/clock.h"
#include "http/internal.h"
#include "store/health.h"

void probes_healthz(const struct http_ctx *ctx, struct rds *redis, struct http_answer *ans)
{
    (void)redis;
    struct checker_view v;
    checker_view(ctx->checker, &v, false);
    if (!v.health_ok) {
        http_answer_text(ans, 503, "unhealthy: cannot read job health (redis is not answering)\n");
        return;
    }
    bson_string_t *out = bson_string_new(NULL);
    /* Judged as of the checker's read, not now: the snapshot is up to one
     * check period old, and a job with a one-second cron would otherwise
     * look overdue for a success the snapshot could not yet have seen. A
     * snapshot too old to trust is refused above. */
    int64_t now = v.health_at_ms;
    int overdue = 0, enabled = 0;
    for (int i = 0; i < JOB_COUNT; i++) {
        const struct job_config *jc = &ctx->cfg->jobs[i];
        if (!jc->enabled)
            continue;
        enabled++;
        const struct job_health *h = &v.health[i];
        if (health_overdue(&jc->cron, h->last_success, ctx->started_ms, now)) {
            char last[40] = "never";
            if (h->last_success > 0)
                clock_format_iso(h->last_success, last, sizeof last);
            bson_string_append_printf(out,
                                      "job %s: no successful tick within twice its interval "
                                      "(last success: %s)\n",
                                      job_specs[i].name, last);
            overdue++;
        } else {
            bson_string_append_printf(out, "job %s: ok\n", job_specs[i].name);
        }
    }
    if (!enabled)
        bson_string_append(out, "no job is enabled\n");
    ans->status = overdue ? 503 : 200;
    ans->content_type = "text/plain; charset=utf-8";
    bson_string_t *body = bson_string_new(overdue ? "unhealthy\n" : "ok\n");
    bson_string_append(body, out->str);
    bson_string_free(out, true);
    ans->body = body;
}

void probes_readyz(const struct http_ctx *ctx, struct rds *redis, struct http_answer *ans)
{
    (void)redis;
    struct checker_view v;
    checker_view(ctx->checker, &v, false);
    bson_string_t *out = bson_string_new(NULL);
    int bad = !v.mongo.up + !v.redis.up;
    /* Which dependency, never its address, user or error: anyone who can reach
     * the webhook listener can read this. The log has the details. */
    checker_describe(&v.mongo, "mongodb", out);
    checker_describe(&v.redis, "redis", out);
    struct rules *rules = ctx->rules ? rules_live_acquire(ctx->rules) : NULL;
    if (!rules) {
        bson_string_append(out, "rules: not loaded\n");
        bad++;
    } else {
        bson_string_append_printf(out, "rules: %s\n", rules_version(rules));
        rules_live_release(ctx->rules, rules);
    }
    ans->status = bad ? 503 : 200;
    ans->content_type = "text/plain; charset=utf-8";
    bson_string_t *body = bson_string_new(bad ? "not ready\n" : "ready\n");
    bson_string_append(body, out->str);
    bson_string_free(out, true);
    ans->body = body;
}
