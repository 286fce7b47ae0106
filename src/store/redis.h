/* redis.h — one Redis connection that survives the server going away.
 *
 * A `struct rds` is used by one thread at a time (hiredis contexts are not
 * thread-safe); each thread that talks to Redis owns its own. When a command
 * fails on I/O, the connection is dropped and re-established on the next call,
 * at most once per backoff delay (100 ms doubling to 5 s), so a Redis restart
 * costs failed ticks, never a crash or a busy loop.
 *
 * With tls set, every connection (the first and each reconnect) is TLS through
 * hiredis_ssl on an OpenSSL context built for it: the server's certificate is
 * verified against tls_ca_file (else the system's bundle, core/cabundle.h) and
 * must name `host` (SNI and host name or IP check); there is no unverified mode.
 * The context is built anew for each connection, so rotated certificate files
 * are picked up by the next reconnect. Handshake failures say which setting to
 * check (REDIS_TLS_CA_FILE, the host in REDIS_URL/REDIS_HOST) and why
 * (OpenSSL's verify result: expired, wrong host name, unknown CA).
 *
 * Ownership: rds_new copies the options; rds_destroy frees everything.
 * rds_command returns a reply the caller frees with freeReplyObject(), or NULL
 * with err filled. A Redis error reply (REDIS_REPLY_ERROR) is also turned into
 * NULL + err, so callers handle one failure path.
 */
#ifndef SD_STORE_REDIS_H
#define SD_STORE_REDIS_H

#include <hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

struct rds_options {
    const char *host;
    int port;
    const char *username; /* NULL: AUTH password; else AUTH username password (ACL) */
    const char *password; /* NULL: no AUTH */
    int db;
    int timeout_ms;       /* connect and command timeout; 0 = 5000 */
    bool tls;
    const char *tls_ca_file;   /* NULL: the system's CA bundle */
    const char *tls_cert_file; /* client certificate + key, both or neither */
    const char *tls_key_file;
    bool from_url;        /* settings came from REDIS_URL (error messages name it) */
};

struct rds;

struct rds *rds_new(const struct rds_options *opts);
void rds_destroy(struct rds *r);

redisReply *rds_command(struct rds *r, struct sd_error *err, const char *fmt, ...);
redisReply *rds_command_argv(struct rds *r, struct sd_error *err, int argc, const char **argv,
                             const size_t *argvlen);

/* Pipelining: append n commands, then read n replies with rds_pipeline_read.
 * If any append or read fails, the connection is reset and the whole pipeline
 * must be considered failed. Replies left unread (a caller that gave up half
 * way) are never handed to a later command: the connection is dropped and
 * made anew before the next command or pipeline. */
int rds_pipeline_append(struct rds *r, struct sd_error *err, const char *fmt, ...);
int rds_pipeline_append_argv(struct rds *r, struct sd_error *err, int argc, const char **argv,
                             const size_t *argvlen);
redisReply *rds_pipeline_read(struct rds *r, struct sd_error *err);

/* Round trips made on this connection (a command, or one pipeline read). */
uint64_t rds_round_trips(const struct rds *r);

/* Makes sure a connection is up (connects if needed, honouring backoff). */
int rds_ensure(struct rds *r, struct sd_error *err);

#endif
