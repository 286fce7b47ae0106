/* internal.h — what the HTTP server's parts share (not used outside src/http/).
 *
 * A handler gets the server's context and the calling pool thread's Redis
 * connection, and fills a struct http_answer (answer.h). */
#ifndef SD_HTTP_INTERNAL_H
#define SD_HTTP_INTERNAL_H

#include <bson/bson.h>
#include <stdint.h>

#include "core/config.h"
#include "http/answer.h"
#include "jobs/message_status/model.h"
#include "rules/reload.h"
#include "store/mongo.h"
#include "store/health.h"
#include "store/redis.h"

struct checker;
struct journal_late;

struct http_ctx {
    const struct config *cfg;
    struct store *store;
    struct store *journal;        /* the door's own pool: every wait bounded (server.c) */
    struct journal_late *late;    /* copies the journal could not take at once (journal_late.h) */
    struct rules_live *rules;
    struct msgstatus_keys keys;   /* what message-status verifies with */
    int64_t started_ms;           /* process start: /healthz's grace */
    char stream_key[300];         /* <prefix>status-events */
    struct checker *checker;      /* what the probes and /metrics report */
};

/* ---- checker.c: MongoDB and Redis as the background checks last saw them */

struct checker_source {
    bool up;                      /* answered within the staleness bound */
    bool never;                   /* has not answered since the start */
    int64_t silent_s;             /* seconds since its last answer */
    char *metrics;                /* owned: its exposition text, NULL unless up */
};

struct checker_view {
    struct checker_source mongo, redis;
    bool health_ok;               /* health[] was read recently */
    struct job_health health[JOB_COUNT];
    int64_t health_at_ms;         /* when health[] was read (wall clock, Unix ms) */
};

/* Starts the two checking threads (ctx is borrowed for the checker's life). */
struct checker *checker_start(const struct http_ctx *ctx, const struct rds_options *redis_opts);
void checker_stop(struct checker *c);

/* Waits (at most timeout_ms) until both sources have been checked once, so
 * the first probes after the start answer from a real look. */
void checker_wait_first(struct checker *c, int timeout_ms);

/* A copy of the last state; with_metrics also copies the exposition texts
 * (free them with checker_view_free). c may be NULL: everything down. */
void checker_view(struct checker *c, struct checker_view *v, bool with_metrics);
void checker_view_free(struct checker_view *v);

/* "name: ok" or "name: not answering (…)": what an answer may say; the
 * failure's details are only logged. */
void checker_describe(const struct checker_source *s, const char *name, bson_string_t *out);

/* exposition.c: the parts read from Redis and MongoDB, for the checker. */
bool exposition_read_redis(const struct http_ctx *ctx, struct rds *redis, bson_string_t *out);
bool exposition_read_mongo(const struct http_ctx *ctx, bson_string_t *out);

/* One webhook request as it arrived. Everything borrowed. */
struct webhook_request {
    const char *provider;         /* "twilio" | "sendgrid" */
    const char *target;           /* request target as sent: path and query */
    const char *host;             /* Host header, or NULL */
    const char *body;
    size_t len;
    const char *signature;        /* the provider's signature header, or NULL */
    const char *timestamp;        /* SendGrid's timestamp header, or NULL */
    int64_t received_at;          /* ms, when the request arrived */
};

/* Verifies, writes the journal's copy (conversation-status-inbox) and appends
 * to status-events: 204 when either copy was stored, or 400/403/503 with the
 * reason in the answer's body. *reason gets the metrics label (NULL when
 * accepted). */
void webhook_handle(const struct http_ctx *ctx, struct rds *redis,
                    const struct webhook_request *req, struct http_answer *ans,
                    const char **reason);

/* Maps a message-status rejection reason (msgstatus_parse_entry's `reason`)
 * to the answer: 403 for a missing, bad or stale signature, else 400. */
int webhook_classify(const char *reason, const char **label);

void probes_healthz(const struct http_ctx *ctx, struct rds *redis, struct http_answer *ans);
void probes_readyz(const struct http_ctx *ctx, struct rds *redis, struct http_answer *ans);
void exposition_metrics(const struct http_ctx *ctx, struct rds *redis, struct http_answer *ans);

#endif
