/* checker.c — what /healthz, /readyz and /metrics say about MongoDB and
 * Redis, kept by two background threads (see checker.h in internal.h).
 *
 * Why not ask at request time: the pool threads that answer probes also take
 * the providers' webhooks. Eight probes while MongoDB hangs (a stopped
 * server, a partition: no answer for as long as the socket timeout) held
 * every pool thread, starved the webhooks, and failed the liveness probe of a
 * process that was fine. Now a request only copies what the checkers last
 * saw; a check that does not come back within CHECK_STALE_MS is reported as
 * no answer, whatever it said before.
 *
 * One thread per source, so a hung MongoDB never delays what Redis reports
 * (and the other way round). Details of a failure (hosts, users, addresses)
 * go to the log when a source's state changes, never into an answer.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/log.h"
#include "http/internal.h"
#include "store/health.h"

#define CHECK_EVERY_MS 2000
#define CHECK_STALE_MS (3 * CHECK_EVERY_MS + 5000)

struct source {
    const char *name;
    bool checked;              /* a check has ended at least once */
    bool ok;                   /* the last check that ended succeeded */
    bool reported_bad;         /* the log has said it is failing */
    int64_t ok_mono;           /* when a check last succeeded (0: never) */
    bson_string_t *metrics;    /* exposition text of the last good read, or NULL */
    bool metrics_ok;
};

struct checker {
    const struct http_ctx *ctx;
    struct rds_options redis_opts;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;
    struct source mongo, redis;
    struct job_health health[JOB_COUNT];
    bool health_ok;
    int64_t health_mono;
    int64_t health_at_ms;      /* wall clock when health[] was read */
    pthread_t threads[2];
    int started;
};

static bool fresh(int64_t at_mono)
{
    return at_mono && clock_monotonic_ms() - at_mono <= CHECK_STALE_MS;
}

/* Records one check's outcome; logs a change of state (with the details). */
static void record(struct checker *c, struct source *s, bool ok, const char *error,
                   bson_string_t *metrics, bool metrics_ok)
{
    pthread_mutex_lock(&c->mu);
    s->checked = true;
    pthread_cond_broadcast(&c->cv);
    s->ok = ok;
    if (ok)
        s->ok_mono = clock_monotonic_ms();
    if (metrics) {
        if (s->metrics)
            bson_string_free(s->metrics, true);
        s->metrics = metrics;
        s->metrics_ok = metrics_ok;
    }
    bool report_bad = !ok && !s->reported_bad, report_good = ok && s->reported_bad;
    s->reported_bad = !ok;
    pthread_mutex_unlock(&c->mu);
    if (report_bad)
        log_msg(LOG_WARN, NULL, "http.dependency_down", NULL,
                "readiness: %s does not answer: %s", s->name, error ? error : "unknown");
    else if (report_good)
        log_msg(LOG_INFO, NULL, "http.dependency_up", NULL, "readiness: %s answers again",
                s->name);
}

/* Waits CHECK_EVERY_MS or until stop; false when stopping. */
static bool pause_round(struct checker *c)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += CHECK_EVERY_MS / 1000;
    pthread_mutex_lock(&c->mu);
    if (!c->stopping)
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    bool go_on = !c->stopping;
    pthread_mutex_unlock(&c->mu);
    return go_on;
}

static void *mongo_main(void *arg)
{
    struct checker *c = arg;
    do {
        struct sd_error err = {""};
        mongoc_client_t *client = store_pop(c->ctx->store);
        bool ok = store_ping(client, store_db(c->ctx->store), &err) == 0;
        store_push(c->ctx->store, client);
        bson_string_t *text = ok ? bson_string_new(NULL) : NULL;
        bool text_ok = ok && exposition_read_mongo(c->ctx, text);
        record(c, &c->mongo, ok, err.message, text, text_ok);
    } while (pause_round(c));
    return NULL;
}

static void *redis_main(void *arg)
{
    struct checker *c = arg;
    struct rds *r = rds_new(&c->redis_opts);
    do {
        struct sd_error err = {""};
        redisReply *rep = rds_command(r, &err, "PING");
        bool ok = rep != NULL;
        if (rep)
            freeReplyObject(rep);
        struct job_health h[JOB_COUNT];
        memset(h, 0, sizeof h);
        int64_t read_at = clock_now_ms();
        bool health_ok = ok;
        for (int i = 0; health_ok && i < JOB_COUNT; i++)
            if (c->ctx->cfg->jobs[i].enabled &&
                health_read(r, c->ctx->cfg->redis_prefix, job_specs[i].name, &h[i], &err))
                health_ok = false;
        pthread_mutex_lock(&c->mu);
        c->health_ok = health_ok;
        if (health_ok) {
            memcpy(c->health, h, sizeof h);
            c->health_mono = clock_monotonic_ms();
            c->health_at_ms = read_at;
        }
        pthread_mutex_unlock(&c->mu);
        bson_string_t *text = ok ? bson_string_new(NULL) : NULL;
        bool text_ok = ok && exposition_read_redis(c->ctx, r, text);
        record(c, &c->redis, ok, err.message, text, text_ok);
    } while (pause_round(c));
    rds_destroy(r);
    return NULL;
}

struct checker *checker_start(const struct http_ctx *ctx, const struct rds_options *redis_opts)
{
    struct checker *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ctx = ctx;
    c->redis_opts = *redis_opts;
    c->mongo.name = "mongodb";
    c->redis.name = "redis";
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&c->threads[c->started], NULL, mongo_main, c) == 0)
        c->started++;
    if (pthread_create(&c->threads[c->started], NULL, redis_main, c) == 0)
        c->started++;
    return c;
}

void checker_wait_first(struct checker *c, int timeout_ms)
{
    if (!c)
        return;
    int64_t until = clock_monotonic_ms() + timeout_ms;
    pthread_mutex_lock(&c->mu);
    while (!(c->mongo.checked && c->redis.checked) && clock_monotonic_ms() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    pthread_mutex_unlock(&c->mu);
}

void checker_stop(struct checker *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stopping = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < c->started; i++)
        pthread_join(c->threads[i], NULL);
    if (c->mongo.metrics)
        bson_string_free(c->mongo.metrics, true);
    if (c->redis.metrics)
        bson_string_free(c->redis.metrics, true);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static void view_source(const struct source *s, struct checker_source *out, bool with_metrics)
{
    out->up = s->ok && fresh(s->ok_mono);
    out->never = s->ok_mono == 0;
    out->silent_s = s->ok_mono ? (clock_monotonic_ms() - s->ok_mono) / 1000 : 0;
    out->metrics = NULL;
    if (with_metrics && out->up && s->metrics && s->metrics_ok)
        out->metrics = strdup(s->metrics->str);
}

/* A check that hangs never ends, so record() cannot say so: the first look
 * that finds a source silent past the bound logs it (once). Under c->mu;
 * returns whether to log. */
static bool newly_silent(struct source *s)
{
    if (s->reported_bad || !s->ok_mono || fresh(s->ok_mono))
        return false;
    s->reported_bad = true;
    return true;
}

void checker_view(struct checker *c, struct checker_view *v, bool with_metrics)
{
    memset(v, 0, sizeof *v);
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    view_source(&c->mongo, &v->mongo, with_metrics);
    view_source(&c->redis, &v->redis, with_metrics);
    v->health_ok = c->health_ok && fresh(c->health_mono);
    memcpy(v->health, c->health, sizeof v->health);
    v->health_at_ms = c->health_at_ms;
    bool silent[2] = {newly_silent(&c->mongo), newly_silent(&c->redis)};
    pthread_mutex_unlock(&c->mu);
    const struct checker_source *views[2] = {&v->mongo, &v->redis};
    for (int i = 0; i < 2; i++)
        if (silent[i])
            log_msg(LOG_WARN, NULL, "http.dependency_down", NULL,
                    "readiness: %s has not answered for %lld s (its check is still waiting)",
                    i == 0 ? "mongodb" : "redis", (long long)views[i]->silent_s);
}

void checker_view_free(struct checker_view *v)
{
    free(v->mongo.metrics);
    free(v->redis.metrics);
    v->mongo.metrics = v->redis.metrics = NULL;
}

void checker_describe(const struct checker_source *s, const char *name, bson_string_t *out)
{
    if (s->up)
        bson_string_append_printf(out, "%s: ok\n", name);
    else if (s->never)
        bson_string_append_printf(out, "%s: not answering (not reached yet)\n", name);
    else
        bson_string_append_printf(out, "%s: not answering (last answer %lld s ago)\n", name,
                                  (long long)s->silent_s);
}
