#include "store/redis.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct rds {
    char *host;
    int port;
    char *password;
    int db;
    int timeout_ms;
    redisContext *ctx;
    int64_t next_attempt_ms; /* no reconnect before this */
    uint64_t round_trips;
    bool pipeline_open;      /* replies pending: the next read is a round trip */
    int backoff_ms;
};

struct rds *rds_new(const struct rds_options *opts)
{
    struct rds *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->host = strdup(opts->host);
    r->port = opts->port;
    r->password = opts->password ? strdup(opts->password) : NULL;
    r->db = opts->db;
    r->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 5000;
    return r;
}

static void drop(struct rds *r)
{
    if (r->ctx) {
        redisFree(r->ctx);
        r->ctx = NULL;
    }
}

void rds_destroy(struct rds *r)
{
    if (!r)
        return;
    drop(r);
    free(r->host);
    free(r->password);
    free(r);
}

static void failed(struct rds *r)
{
    drop(r);
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (r->backoff_ms > BACKOFF_MAX_MS)
        r->backoff_ms = BACKOFF_MAX_MS;
    r->next_attempt_ms = clock_now_ms() + r->backoff_ms;
}

/* Runs one command on a fresh connection during the handshake. */
static int handshake(struct rds *r, struct sd_error *err, const char *what, redisReply *reply)
{
    if (!reply)
        return sd_error_set(err, "redis %s:%d: %s failed: %s", r->host, r->port, what,
                            r->ctx->errstr);
    int bad = reply->type == REDIS_REPLY_ERROR;
    if (bad)
        sd_error_set(err, "redis %s:%d: %s failed: %s", r->host, r->port, what, reply->str);
    freeReplyObject(reply);
    return bad ? -1 : 0;
}

int rds_ensure(struct rds *r, struct sd_error *err)
{
    if (r->ctx)
        return 0;
    int64_t now = clock_now_ms();
    if (now < r->next_attempt_ms)
        return sd_error_set(err, "redis %s:%d: unavailable (next reconnect attempt in %lld ms)",
                            r->host, r->port, (long long)(r->next_attempt_ms - now));
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    r->ctx = redisConnectWithTimeout(r->host, r->port, tv);
    if (!r->ctx) {
        failed(r);
        return sd_error_set(err, "redis %s:%d: out of memory", r->host, r->port);
    }
    if (r->ctx->err) {
        sd_error_set(err, "redis %s:%d: connect: %s", r->host, r->port, r->ctx->errstr);
        failed(r);
        return -1;
    }
    redisSetTimeout(r->ctx, tv);
    redisEnableKeepAlive(r->ctx);
    if (r->password &&
        handshake(r, err, "AUTH", redisCommand(r->ctx, "AUTH %s", r->password)) != 0)
        goto fail;
    if (r->db && handshake(r, err, "SELECT", redisCommand(r->ctx, "SELECT %d", r->db)) != 0)
        goto fail;
    r->backoff_ms = 0;
    return 0;
fail:
    failed(r);
    return -1;
}

static redisReply *check(struct rds *r, redisReply *reply, struct sd_error *err)
{
    if (!reply) {
        sd_error_set(err, "redis %s:%d: %s", r->host, r->port,
                     r->ctx->errstr[0] ? r->ctx->errstr : "connection lost");
        failed(r);
        return NULL;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        sd_error_set(err, "redis: %s", reply->str);
        freeReplyObject(reply);
        return NULL;
    }
    return reply;
}

/* A connection idle since the server restarted fails on first use; retrying
 * once on a fresh connection hides that without hiding a real outage. Only
 * used for single commands, which are all safe to resend (idempotent by
 * design: SET NX, compare-and-delete scripts, HSET). */
uint64_t rds_round_trips(const struct rds *r) { return r->round_trips; }

redisReply *rds_command(struct rds *r, struct sd_error *err, const char *fmt, ...)
{
    r->round_trips++;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh = r->ctx == NULL;
        if (rds_ensure(r, err))
            return NULL;
        va_list ap;
        va_start(ap, fmt);
        redisReply *reply = redisvCommand(r->ctx, fmt, ap);
        va_end(ap);
        if (reply || fresh)
            return check(r, reply, err);
        drop(r); /* stale connection: reconnect immediately, once */
    }
    return NULL;
}

redisReply *rds_command_argv(struct rds *r, struct sd_error *err, int argc, const char **argv,
                             const size_t *argvlen)
{
    r->round_trips++;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh = r->ctx == NULL;
        if (rds_ensure(r, err))
            return NULL;
        redisReply *reply = redisCommandArgv(r->ctx, argc, argv, argvlen);
        if (reply || fresh)
            return check(r, reply, err);
        drop(r);
    }
    return NULL;
}

int rds_pipeline_append(struct rds *r, struct sd_error *err, const char *fmt, ...)
{
    if (rds_ensure(r, err))
        return -1;
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAppendCommand(r->ctx, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        sd_error_set(err, "redis: %s", r->ctx->errstr);
        failed(r);
        return -1;
    }
    r->pipeline_open = true;
    return 0;
}

int rds_pipeline_append_argv(struct rds *r, struct sd_error *err, int argc, const char **argv,
                             const size_t *argvlen)
{
    if (rds_ensure(r, err))
        return -1;
    if (redisAppendCommandArgv(r->ctx, argc, argv, argvlen) != REDIS_OK) {
        sd_error_set(err, "redis: %s", r->ctx->errstr);
        failed(r);
        return -1;
    }
    r->pipeline_open = true;
    return 0;
}

redisReply *rds_pipeline_read(struct rds *r, struct sd_error *err)
{
    if (!r->ctx) {
        sd_error_set(err, "redis %s:%d: connection lost during pipeline", r->host, r->port);
        return NULL;
    }
    /* The first read flushes the whole pipeline: that is the round trip. */
    if (r->pipeline_open) {
        r->round_trips++;
        r->pipeline_open = false;
    }
    void *reply = NULL;
    if (redisGetReply(r->ctx, &reply) != REDIS_OK)
        reply = NULL;
    return check(r, reply, err);
}
