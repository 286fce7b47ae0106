#include "core/log.h"

#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"

#define MAX_SECRETS 32

static enum log_level min_level = LOG_INFO;
static bool as_json = true;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *secrets[MAX_SECRETS];
static int n_secrets;

static const char *level_names[] = {"debug", "info", "warn", "error"};

int log_parse_level(const char *text, enum log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(text, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcasecmp(text, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -1;
}

void log_init(enum log_level level, bool json)
{
    min_level = level;
    as_json = json;
}

enum log_level log_min_level(void) { return min_level; }

void log_add_secret(const char *secret)
{
    if (!secret || strlen(secret) < 4)
        return;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_secrets; i++) {
        if (strcmp(secrets[i], secret) == 0) {
            pthread_mutex_unlock(&lock);
            return;
        }
    }
    if (n_secrets < MAX_SECRETS)
        secrets[n_secrets++] = strdup(secret);
    pthread_mutex_unlock(&lock);
}

void log_clear_secrets(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_secrets; i++)
        free(secrets[i]);
    n_secrets = 0;
    pthread_mutex_unlock(&lock);
}

/* Caller holds `lock`. */
static char *redact_locked(const char *text)
{
    char *out = strdup(text);
    for (int i = 0; i < n_secrets && out; i++) {
        const char *s = secrets[i];
        size_t slen = strlen(s);
        const char *hit;
        while ((hit = strstr(out, s)) != NULL) {
            static const char mark[] = "[redacted]";
            size_t pre = (size_t)(hit - out), post = strlen(hit + slen);
            char *next = malloc(pre + sizeof mark - 1 + post + 1);
            if (!next)
                break;
            memcpy(next, out, pre);
            memcpy(next + pre, mark, sizeof mark - 1);
            memcpy(next + pre + sizeof mark - 1, hit + slen, post + 1);
            free(out);
            out = next;
        }
    }
    return out;
}

char *log_redact_dup(const char *text)
{
    pthread_mutex_lock(&lock);
    char *out = redact_locked(text);
    pthread_mutex_unlock(&lock);
    return out;
}

static void write_line(const char *line)
{
    size_t len = strlen(line);
    char *buf = malloc(len + 2);
    if (!buf)
        return;
    memcpy(buf, line, len);
    buf[len] = '\n';
    size_t off = 0;
    while (off < len + 1) {
        ssize_t n = write(STDERR_FILENO, buf + off, len + 1 - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    free(buf);
}

void log_msg(enum log_level level, const struct log_ctx *ctx, const char *event,
             const bson_t *fields, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    char ts[40];
    clock_format_iso(clock_now_ms(), ts, sizeof ts);

    char *line = NULL;
    if (as_json) {
        bson_t doc = BSON_INITIALIZER;
        BSON_APPEND_UTF8(&doc, "ts", ts);
        BSON_APPEND_UTF8(&doc, "level", level_names[level]);
        if (event)
            BSON_APPEND_UTF8(&doc, "event", event);
        if (ctx && ctx->job)
            BSON_APPEND_UTF8(&doc, "job", ctx->job);
        if (ctx && ctx->tick)
            BSON_APPEND_UTF8(&doc, "tick", ctx->tick);
        BSON_APPEND_UTF8(&doc, "msg", msg);
        if (fields)
            bson_concat(&doc, fields);
        char *json = bson_as_relaxed_extended_json(&doc, NULL);
        bson_destroy(&doc);
        if (!json)
            return;
        line = json;
    } else {
        char *extra = fields ? bson_as_relaxed_extended_json(fields, NULL) : NULL;
        size_t cap = strlen(msg) + (extra ? strlen(extra) : 0) + 256;
        line = bson_malloc(cap);
        snprintf(line, cap, "%s %-5s %s%s%s%s%s %s%s%s", ts, level_names[level],
                 ctx && ctx->job ? ctx->job : "-", ctx && ctx->tick ? "/" : "",
                 ctx && ctx->tick ? ctx->tick : "", event ? " " : "", event ? event : "", msg,
                 extra ? " " : "", extra ? extra : "");
        bson_free(extra);
    }
    pthread_mutex_lock(&lock);
    char *clean = redact_locked(line);
    if (clean)
        write_line(clean);
    pthread_mutex_unlock(&lock);
    free(clean);
    bson_free(line);
}

static void mongoc_handler(mongoc_log_level_t level, const char *domain, const char *message,
                           void *ud)
{
    (void)ud;
    enum log_level ours = LOG_DEBUG;
    if (level <= MONGOC_LOG_LEVEL_ERROR)
        ours = LOG_ERROR;
    else if (level == MONGOC_LOG_LEVEL_WARNING)
        ours = LOG_WARN;
    else if (level <= MONGOC_LOG_LEVEL_INFO)
        ours = LOG_INFO;
    /* FerretDB has no endSessions; mongoc warns about it on every pool
     * teardown. Harmless (reference/ferretdb.md §3), so keep it out of warn. */
    if (strstr(message, "endSessions"))
        ours = LOG_DEBUG;
    log_msg(ours, NULL, "driver.log", NULL, "%s: %s", domain, message);
}

void log_route_mongoc(void) { mongoc_log_set_handler(mongoc_handler, NULL); }
