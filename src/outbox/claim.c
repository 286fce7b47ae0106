#include "outbox/claim.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"

/* reference/providers.md §9: never DEL a key another client may now hold. */
static const char release_script[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end";

/* Compare-and-set: our claim becomes the "done:" marker, a "done:" marker no
 * newer than our copy becomes our claim; a key that changed meanwhile is left. */
static const char cas_script[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) else return 0 end";

static const char extend_script[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

static void parse_sent(const char *value, struct outbox_claim *c)
{
    const char *p = value + strlen("sent:");
    const char *colon = strchr(p, ':');
    if (!colon) {
        snprintf(c->sent_provider, sizeof c->sent_provider, "unknown");
        snprintf(c->sent_id, sizeof c->sent_id, "%s", p);
        return;
    }
    snprintf(c->sent_provider, sizeof c->sent_provider, "%.*s", (int)(colon - p), p);
    snprintf(c->sent_id, sizeof c->sent_id, "%s", colon + 1);
}

/* The next reply of a pipeline, or NULL (the first failure goes to err and
 * *rc; the pipeline's remaining replies are still read by the caller). */
static redisReply *next_reply(struct rds *r, int *rc, struct sd_error *err, const char *what)
{
    struct sd_error scratch;
    redisReply *rep = rds_pipeline_read(r, *rc ? &scratch : err);
    if (!rep && *rc == 0)
        *rc = sd_error_prefix(err, "%s", what);
    return rep;
}

int claim_acquire(struct rds *r, const char *prefix, const char *entry_id, const char *owner,
                  int ttl_ms, struct outbox_claim *c, struct sd_error *err)
{
    memset(c, 0, sizeof *c);
    snprintf(c->key, sizeof c->key, "%soutbox:claim:%s", prefix, entry_id);
    char rnd[17];
    if (clock_random_hex(rnd, 8, err))
        return -1;
    snprintf(c->token, sizeof c->token, "claimed:%s/%s", owner, rnd);
    redisReply *rep = rds_command(r, err, "SET %s %s NX PX %d", c->key, c->token, ttl_ms);
    if (!rep)
        return sd_error_prefix(err, "claiming outbox entry %s", entry_id);
    bool ours = rep->type == REDIS_REPLY_STATUS;
    freeReplyObject(rep);
    if (ours) {
        c->state = CLAIM_OURS;
        return 0;
    }
    rep = rds_command(r, err, "GET %s", c->key);
    if (!rep)
        return sd_error_prefix(err, "reading the claim of outbox entry %s", entry_id);
    c->state = CLAIM_TAKEN;
    if (rep->type == REDIS_REPLY_STRING && strncmp(rep->str, "sent:", 5) == 0) {
        c->state = CLAIM_SENT;
        parse_sent(rep->str, c);
    }
    freeReplyObject(rep);
    return 0;
}

int claim_mark_sent(struct rds *r, const struct outbox_claim *c, const char *provider,
                    const char *message_id, long long ttl_ms, struct sd_error *err)
{
    char value[256];
    snprintf(value, sizeof value, "sent:%s:%s", provider, message_id ? message_id : "");
    redisReply *rep = rds_command(r, err, "SET %s %s PX %lld", c->key, value, ttl_ms);
    if (!rep)
        return sd_error_prefix(err, "recording the send in %s", c->key);
    freeReplyObject(rep);
    return 0;
}

int claim_extend(struct rds *r, const struct outbox_claim *c, int ttl_ms, struct sd_error *err)
{
    redisReply *rep =
        rds_command(r, err, "EVAL %s 1 %s %s %d", extend_script, c->key, c->token, ttl_ms);
    if (!rep)
        return sd_error_prefix(err, "checking %s", c->key);
    int ours = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return ours;
}

int claim_release(struct rds *r, const struct outbox_claim *c, struct sd_error *err)
{
    redisReply *rep = rds_command(r, err, "EVAL %s 1 %s %s", release_script, c->key, c->token);
    if (!rep)
        return sd_error_prefix(err, "releasing %s", c->key);
    freeReplyObject(rep);
    return 0;
}

int claim_acquire_many(struct rds *r, const char *prefix, const char *const *entry_ids,
                       const int *versions, const char *owner, int ttl_ms,
                       struct outbox_claim *c, size_t n, struct sd_error *err)
{
    /* Every token before the first command: no early return may leave part
     * of a pipeline queued (redis.h). */
    for (size_t i = 0; i < n; i++) {
        memset(&c[i], 0, sizeof c[i]);
        snprintf(c[i].key, sizeof c[i].key, "%soutbox:claim:%s", prefix, entry_ids[i]);
        char rnd[17];
        if (clock_random_hex(rnd, 8, err))
            return -1;
        snprintf(c[i].token, sizeof c[i].token, "claimed:%s/%s", owner, rnd);
    }
    for (size_t i = 0; i < n; i++)
        if (rds_pipeline_append(r, err, "SET %s %s NX PX %d", c[i].key, c[i].token, ttl_ms))
            return sd_error_prefix(err, "claiming outbox entries");
    size_t taken = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = next_reply(r, &rc, err, "claiming outbox entries");
        if (!rep)
            continue;
        c[i].state = rep->type == REDIS_REPLY_STATUS ? CLAIM_OURS : CLAIM_TAKEN;
        freeReplyObject(rep);
        if (c[i].state == CLAIM_TAKEN && rc == 0)
            taken++;
    }
    if (rc || taken == 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (c[i].state == CLAIM_TAKEN && rds_pipeline_append(r, err, "GET %s", c[i].key))
            return sd_error_prefix(err, "reading outbox claims");
    /* done[i]: the "done:" value to take over, or "" */
    char(*done)[32] = calloc(n, sizeof *done);
    if (!done)
        return sd_error_set(err, "out of memory");
    size_t takeover = 0;
    for (size_t i = 0; i < n; i++) {
        if (c[i].state != CLAIM_TAKEN)
            continue;
        redisReply *rep = next_reply(r, &rc, err, "reading outbox claims");
        if (!rep)
            continue;
        if (rep->type == REDIS_REPLY_STRING && strncmp(rep->str, "sent:", 5) == 0) {
            c[i].state = CLAIM_SENT;
            parse_sent(rep->str, &c[i]);
        } else if (rep->type == REDIS_REPLY_STRING && strncmp(rep->str, "done:", 5) == 0 &&
                   rep->len < sizeof done[i]) {
            char *end = NULL;
            long v = strtol(rep->str + 5, &end, 10);
            if (end && *end == '\0' && v <= versions[i]) {
                memcpy(done[i], rep->str, rep->len + 1);
                takeover++;
            } else {
                c[i].state = CLAIM_STALE;
            }
        }
        freeReplyObject(rep);
    }
    for (size_t i = 0; rc == 0 && takeover && i < n; i++)
        if (done[i][0] && rds_pipeline_append(r, err, "EVAL %s 1 %s %s %s %d", cas_script,
                                              c[i].key, done[i], c[i].token, ttl_ms))
            rc = sd_error_prefix(err, "claiming outbox entries");
    for (size_t i = 0; rc == 0 && takeover && i < n; i++) {
        if (!done[i][0])
            continue;
        redisReply *rep = next_reply(r, &rc, err, "claiming outbox entries");
        if (!rep)
            continue;
        /* 0: it changed between GET and EVAL; left for the next tick */
        if (rep->type == REDIS_REPLY_STATUS)
            c[i].state = CLAIM_OURS;
        freeReplyObject(rep);
    }
    free(done);
    return rc;
}

int claim_finish_many(struct rds *r, const struct outbox_claim *const *c, const int *versions,
                      size_t n, struct sd_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (rds_pipeline_append(r, err, "EVAL %s 1 %s %s done:%d %d", cas_script, c[i]->key,
                                c[i]->token, versions[i], CLAIM_DONE_TTL_MS))
            return sd_error_prefix(err, "releasing outbox claims");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = next_reply(r, &rc, err, "releasing outbox claims");
        if (!rep)
            continue;
        freeReplyObject(rep);
    }
    return rc;
}
