#include "store/redis.h"

#include <arpa/inet.h>
#include <hiredis_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cabundle.h"
#include "core/clock.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct rds {
    char *host;
    int port;
    char *username;
    char *password;
    int db;
    int timeout_ms;
    bool tls;
    char *tls_ca_file, *tls_cert_file, *tls_key_file;
    bool from_url;
    redisContext *ctx;
    int64_t next_attempt_ms; /* no reconnect before this */
    uint64_t round_trips;
    bool pipeline_open;      /* replies pending: the next read is a round trip */
    size_t unread;           /* pipelined commands whose replies were not read */
    int backoff_ms;
};

struct rds *rds_new(const struct rds_options *opts)
{
    struct rds *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->host = strdup(opts->host);
    r->port = opts->port;
    r->username = opts->username ? strdup(opts->username) : NULL;
    r->password = opts->password ? strdup(opts->password) : NULL;
    r->db = opts->db;
    r->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 5000;
    r->tls = opts->tls;
    r->tls_ca_file = opts->tls_ca_file ? strdup(opts->tls_ca_file) : NULL;
    r->tls_cert_file = opts->tls_cert_file ? strdup(opts->tls_cert_file) : NULL;
    r->tls_key_file = opts->tls_key_file ? strdup(opts->tls_key_file) : NULL;
    r->from_url = opts->from_url;
    return r;
}

static void drop(struct rds *r)
{
    if (r->ctx) {
        redisFree(r->ctx);
        r->ctx = NULL;
    }
    r->unread = 0;
    r->pipeline_open = false;
}

/* A caller that left a pipeline's replies unread (an early return) would
 * hand them to whoever uses the connection next, each reply one command
 * late from then on. Before a new command or pipeline, such a connection is
 * dropped and made anew. */
static void forget_unread(struct rds *r)
{
    if (r->unread > 0)
        drop(r);
}

void rds_destroy(struct rds *r)
{
    if (!r)
        return;
    drop(r);
    free(r->host);
    free(r->username);
    free(r->password);
    free(r->tls_ca_file);
    free(r->tls_cert_file);
    free(r->tls_key_file);
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

/* Runs one command on a fresh connection during the handshake; `hint` says
 * which settings to check when the server refuses it. */
static int handshake(struct rds *r, struct sd_error *err, const char *what, const char *hint,
                     redisReply *reply)
{
    /* TLS 1.3 finishes the client's side of the handshake before the server
     * has judged the client certificate: a refusal shows up as the first
     * command's connection being closed. */
    if (!reply)
        return sd_error_set(err, "redis %s:%d: %s failed: %s%s", r->host, r->port, what,
                            r->ctx->errstr,
                            r->tls ? " (just after the TLS handshake: did the server refuse the "
                                     "client certificate? see REDIS_TLS_CERT_FILE)"
                                   : "");
    int bad = reply->type == REDIS_REPLY_ERROR;
    if (bad)
        sd_error_set(err, "redis %s:%d: %s failed: %s (check %s)", r->host, r->port, what,
                     reply->str, hint);
    freeReplyObject(reply);
    return bad ? -1 : 0;
}

/* The variable that names the server (the host a certificate must name). */
static const char *host_var(const struct rds *r) { return r->from_url ? "REDIS_URL" : "REDIS_HOST"; }

/* OpenSSL's queued errors, oldest first, as one line. */
static void openssl_errors(char *buf, size_t size)
{
    buf[0] = '\0';
    unsigned long e;
    size_t used = 0;
    while ((e = ERR_get_error()) != 0 && used + 2 < size) {
        char one[256];
        ERR_error_string_n(e, one, sizeof one);
        used += (size_t)snprintf(buf + used, size - used, "%s%s", used ? "; " : "", one);
    }
    if (!buf[0])
        snprintf(buf, size, "unknown OpenSSL error");
}

/* An OpenSSL client context for one connection: peer verification always on,
 * the CA from REDIS_TLS_CA_FILE or the system's bundle, the optional client
 * certificate. NULL with err naming the variable whose file was refused. */
static SSL_CTX *tls_context(struct rds *r, struct sd_error *err)
{
    char why[512];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        openssl_errors(why, sizeof why);
        sd_error_set(err, "redis %s:%d: TLS: %s", r->host, r->port, why);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    const char *ca = r->tls_ca_file ? r->tls_ca_file : cabundle_path();
    int ok = ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL)
                : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        openssl_errors(why, sizeof why);
        if (r->tls_ca_file)
            sd_error_set(err, "REDIS_TLS_CA_FILE: cannot load \"%s\": %s", ca, why);
        else
            sd_error_set(err, "redis %s:%d: TLS: cannot load the system's CA bundle %s (set "
                              "REDIS_TLS_CA_FILE): %s", r->host, r->port, ca ? ca : "", why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (r->tls_cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, r->tls_cert_file) != 1) {
            openssl_errors(why, sizeof why);
            sd_error_set(err, "REDIS_TLS_CERT_FILE: cannot load \"%s\": %s", r->tls_cert_file,
                         why);
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, r->tls_key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            openssl_errors(why, sizeof why);
            sd_error_set(err, "REDIS_TLS_KEY_FILE: cannot load \"%s\" (or it is not the key of "
                              "REDIS_TLS_CERT_FILE): %s", r->tls_key_file, why);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

/* TLS on the fresh TCP connection r->ctx. The server name goes out as SNI
 * (host names only: RFC 6066 has no IP form) and the certificate must name it
 * (DNS name, or IP address for a literal): hiredis_ssl 1.2 sends SNI but checks
 * no name, so the SSL object is made here and handed to redisInitiateSSL. */
static int tls_start(struct rds *r, struct sd_error *err)
{
    SSL_CTX *sctx = tls_context(r, err);
    if (!sctx)
        return -1;
    SSL *ssl = SSL_new(sctx);
    SSL_CTX_free(sctx); /* the SSL holds its own reference */
    if (!ssl)
        return sd_error_set(err, "redis %s:%d: TLS: out of memory", r->host, r->port);
    unsigned char addr[16];
    bool literal = inet_pton(AF_INET, r->host, addr) == 1 || inet_pton(AF_INET6, r->host, addr) == 1;
    int named = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), r->host)
                        : SSL_set_tlsext_host_name(ssl, r->host) == 1 &&
                              SSL_set1_host(ssl, r->host) == 1;
    if (named != 1) {
        SSL_free(ssl);
        return sd_error_set(err, "redis %s:%d: TLS: cannot check the server name \"%s\" (%s)",
                            r->host, r->port, r->host, host_var(r));
    }
    ERR_clear_error();
    if (redisInitiateSSL(r->ctx, ssl) == REDIS_OK)
        return 0; /* the context owns ssl now */
    long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
        const char *check = verify == X509_V_ERR_HOSTNAME_MISMATCH ||
                                    verify == X509_V_ERR_IP_ADDRESS_MISMATCH
                                ? host_var(r)
                                : "REDIS_TLS_CA_FILE and the server's certificate";
        sd_error_set(err, "redis %s:%d: TLS handshake failed: the server's certificate was "
                          "refused: %s (check %s)", r->host, r->port,
                     X509_verify_cert_error_string(verify), check);
    } else {
        sd_error_set(err, "redis %s:%d: TLS handshake failed: %s (is the server speaking TLS on "
                          "this port? a client certificate needs REDIS_TLS_CERT_FILE and "
                          "REDIS_TLS_KEY_FILE)", r->host, r->port, r->ctx->errstr);
    }
    SSL_free(ssl);
    return -1;
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
    /* The command timeout is set before the TLS handshake, so a server that
     * accepts TCP but never answers the handshake costs one timeout. */
    redisOptions o = {0};
    REDIS_OPTIONS_SET_TCP(&o, r->host, r->port);
    o.connect_timeout = &tv;
    o.command_timeout = &tv;
    r->ctx = redisConnectWithOptions(&o);
    if (!r->ctx) {
        failed(r);
        return sd_error_set(err, "redis %s:%d: out of memory", r->host, r->port);
    }
    if (r->ctx->err) {
        sd_error_set(err, "redis %s:%d: connect: %s", r->host, r->port, r->ctx->errstr);
        failed(r);
        return -1;
    }
    redisEnableKeepAlive(r->ctx);
    if (r->tls && tls_start(r, err) != 0)
        goto fail;
    const char *auth_hint = r->from_url ? "the user and password in REDIS_URL"
                            : r->username ? "REDIS_USERNAME and REDIS_PASSWORD"
                                          : "REDIS_PASSWORD";
    if (r->password && r->username &&
        handshake(r, err, "AUTH", auth_hint,
                  redisCommand(r->ctx, "AUTH %s %s", r->username, r->password)) != 0)
        goto fail;
    if (r->password && !r->username &&
        handshake(r, err, "AUTH", auth_hint, redisCommand(r->ctx, "AUTH %s", r->password)) != 0)
        goto fail;
    if (r->db && handshake(r, err, "SELECT", r->from_url ? "the database in REDIS_URL" : "REDIS_DB",
                           redisCommand(r->ctx, "SELECT %d", r->db)) != 0)
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
        /* The server wants a password we were not given: say where it goes. */
        bool noauth = strncmp(reply->str, "NOAUTH", 6) == 0;
        sd_error_set(err, "redis: %s%s", reply->str,
                     !noauth ? "" : r->from_url ? " (put the password in REDIS_URL)"
                                                : " (set REDIS_PASSWORD)");
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
    forget_unread(r);
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
    forget_unread(r);
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
    if (!r->pipeline_open)
        forget_unread(r);
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
    r->unread++;
    return 0;
}

int rds_pipeline_append_argv(struct rds *r, struct sd_error *err, int argc, const char **argv,
                             const size_t *argvlen)
{
    if (!r->pipeline_open)
        forget_unread(r);
    if (rds_ensure(r, err))
        return -1;
    if (redisAppendCommandArgv(r->ctx, argc, argv, argvlen) != REDIS_OK) {
        sd_error_set(err, "redis: %s", r->ctx->errstr);
        failed(r);
        return -1;
    }
    r->pipeline_open = true;
    r->unread++;
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
    else if (r->unread > 0)
        r->unread--;
    return check(r, reply, err);
}
