#include "store/lease.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/log.h"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char RENEW_SCRIPT[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
static const char RELEASE_SCRIPT[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end";

int lease_acquire(struct rds *r, const char *key, const char *owner, int ttl_ms,
                  struct lease *out, bool *acquired, char *holder, size_t holder_size,
                  struct sd_error *err)
{
    char rnd[41];
    memset(out, 0, sizeof *out);
    *acquired = false;
    if (clock_random_hex(rnd, 20, err))
        return -1;
    snprintf(out->key, sizeof out->key, "%s", key);
    snprintf(out->token, sizeof out->token, "%s/%s", owner, rnd);
    out->ttl_ms = ttl_ms;
    atomic_init(&out->lost, false);
    int64_t sent = mono_ms();
    redisReply *rep = rds_command(r, err, "SET %s %s NX PX %d", out->key, out->token, ttl_ms);
    if (!rep)
        return sd_error_prefix(err, "lease %s", key);
    *acquired = rep->type == REDIS_REPLY_STATUS;
    atomic_init(&out->valid_until, *acquired ? sent + ttl_ms : 0);
    freeReplyObject(rep);
    if (!*acquired && holder) {
        holder[0] = '\0';
        rep = rds_command(r, NULL, "GET %s", out->key);
        if (rep && rep->type == REDIS_REPLY_STRING)
            snprintf(holder, holder_size, "%s", rep->str);
        if (rep)
            freeReplyObject(rep);
    }
    return 0;
}

static void *renewer(void *arg)
{
    struct lease *l = arg;
    int period = l->ttl_ms / 3 > 0 ? l->ttl_ms / 3 : 1;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += period / 1000;
        until.tv_nsec += (long)(period % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        int rc = 0;
        while (!l->stop && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&l->cv, &l->mu, &until);
        if (l->stop)
            break;
        if (l->abandoned)
            continue;
        int64_t busy_ms;
        if (stall_stuck(l->watch, clock_monotonic_ms(), &busy_ms)) {
            /* Renewing for a thread that cannot be stopped would keep the job
             * from running anywhere, for good. */
            l->abandoned = true;
            atomic_store(&l->lost, true);
            bson_t f = BSON_INITIALIZER;
            BSON_APPEND_INT64(&f, "busy_ms", busy_ms);
            log_msg(LOG_ERROR, NULL, "lease.abandoned", &f,
                    "lease %s: the tick has been inside one rule call for %lld ms (limit %lld); "
                    "no longer renewing, so another instance takes the job over after the TTL",
                    l->key, (long long)busy_ms, (long long)l->watch->limit_ms);
            bson_destroy(&f);
            continue;
        }
        pthread_mutex_unlock(&l->mu);
        struct sd_error err;
        int64_t sent = mono_ms();
        redisReply *rep = rds_command(l->conn, &err, "EVAL %s 1 %s %s %d", RENEW_SCRIPT, l->key,
                                      l->token, l->ttl_ms);
        if (!rep) {
            /* Redis unreachable: keep trying until the TTL could have run out. */
            log_msg(LOG_WARN, NULL, "lease.renew_failed", NULL, "lease %s: %s", l->key,
                    err.message);
        } else {
            if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 0) {
                atomic_store(&l->lost, true);
                log_msg(LOG_WARN, NULL, "lease.lost", NULL,
                        "lease %s expired or was taken by another instance", l->key);
            } else if (rep->type == REDIS_REPLY_INTEGER) {
                atomic_store(&l->valid_until, sent + l->ttl_ms);
            }
            freeReplyObject(rep);
        }
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

int lease_start_renewal(struct lease *l, const struct rds_options *opts, struct sd_error *err)
{
    l->conn = rds_new(opts);
    if (!l->conn)
        return sd_error_set(err, "lease %s: out of memory", l->key);
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &attr);
    pthread_condattr_destroy(&attr);
    l->stop = false;
    if (pthread_create(&l->thread, NULL, renewer, l) != 0) {
        rds_destroy(l->conn);
        l->conn = NULL;
        return sd_error_set(err, "lease %s: cannot start renewer thread", l->key);
    }
    l->renewing = true;
    return 0;
}

bool lease_is_lost(struct lease *l) { return atomic_load(&l->lost); }

bool lease_valid_for(struct lease *l, int64_t margin_ms)
{
    return !atomic_load(&l->lost) && mono_ms() + margin_ms < atomic_load(&l->valid_until);
}

int lease_release(struct rds *r, struct lease *l, struct sd_error *err)
{
    if (l->renewing) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
        rds_destroy(l->conn);
        l->conn = NULL;
        l->renewing = false;
    }
    redisReply *rep = rds_command(r, err, "EVAL %s 1 %s %s", RELEASE_SCRIPT, l->key, l->token);
    if (!rep)
        return sd_error_prefix(err, "lease %s: release", l->key);
    freeReplyObject(rep);
    return 0;
}

void lease_token_owner(const char *token, char *buf, size_t size)
{
    const char *slash = strrchr(token, '/');
    size_t n = slash ? (size_t)(slash - token) : strlen(token);
    if (n >= size)
        n = size - 1;
    memcpy(buf, token, n);
    buf[n] = '\0';
}
