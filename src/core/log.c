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

/* Caller holds `lock`. */
static void add_secret_locked(const char *secret)
{
    for (int i = 0; i < n_secrets; i++)
        if (strcmp(secrets[i], secret) == 0)
            return;
    if (n_secrets < MAX_SECRETS)
        secrets[n_secrets++] = strdup(secret);
}

/* JSON lines carry strings escaped; a secret holding a quote or a backslash
 * must be found in that form too. */
static char *json_escaped(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++)
        n += (*p == '"' || *p == '\\') ? 2 : 1;
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            *o++ = '\\';
        *o++ = *p;
    }
    *o = '\0';
    return out;
}

void log_add_secret(const char *secret)
{
    if (!secret || strlen(secret) < 4)
        return;
    pthread_mutex_lock(&lock);
    add_secret_locked(secret);
    char *escaped = json_escaped(secret);
    if (escaped && strcmp(escaped, secret) != 0)
        add_secret_locked(escaped);
    free(escaped);
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

/* Finds every occurrence of every secret in the original text, merges the
 * ones that overlap, and replaces each merged stretch once: overlapping or
 * nested secrets leave nothing behind, and the mark itself is never searched
 * again. Caller holds `lock`. */
static char *redact_locked(const char *text)
{
    size_t len = strlen(text);
    if (n_secrets == 0)
        return strdup(text);
    /* ends[i]: the furthest end of a match starting at i (0 = none) */
    size_t *ends = calloc(len + 1, sizeof *ends);
    if (!ends)
        return NULL;
    size_t matches = 0;
    for (int i = 0; i < n_secrets; i++) {
        size_t slen = strlen(secrets[i]);
        for (const char *p = strstr(text, secrets[i]); p; p = strstr(p + 1, secrets[i])) {
            size_t at = (size_t)(p - text);
            if (at + slen > ends[at])
                ends[at] = at + slen;
            matches++;
        }
    }
    static const char mark[] = "[redacted]";
    char *out = malloc(len + matches * (sizeof mark - 1) + 1), *o = out;
    if (!out) {
        free(ends);
        return NULL;
    }
    for (size_t i = 0; i < len;) {
        if (!ends[i]) {
            *o++ = text[i++];
            continue;
        }
        size_t stop = ends[i];
        for (size_t j = i + 1; j < stop; j++)
            if (ends[j] > stop)
                stop = ends[j];
        memcpy(o, mark, sizeof mark - 1);
        o += sizeof mark - 1;
        i = stop;
    }
    *o = '\0';
    free(ends);
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
    /* A message that must be cut is redacted in full first (error.c says
     * why); one that fits is redacted with the whole line below. */
    char msg[2048], *full = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&full, fmt, ap);
    va_end(ap);
    char *clean_msg = n >= (int)sizeof msg ? log_redact_dup(full) : NULL;
    const char *text = clean_msg ? clean_msg : n >= 0 ? full : "(could not format the message)";
    snprintf(msg, sizeof msg, "%s", text);
    free(clean_msg);
    free(full);

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

void log_field(enum log_level level, const struct log_ctx *ctx, const char *event,
               const char *key, const char *value, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, key, value);
    log_msg(level, ctx, event, &f, "%s", n >= 0 ? msg : "(could not format the message)");
    bson_destroy(&f);
    if (n >= 0)
        free(msg);
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
    /* mongoc_init's shared-memory counters (a diagnostics aid) cannot be
     * created when a killed process with the same pid left its segment in
     * /dev/shm: mongoc keeps them in memory instead. Harmless too. */
    if (strstr(message, "Falling back to malloc for counters"))
        ours = LOG_DEBUG;
    log_msg(ours, NULL, "driver.log", NULL, "%s: %s", domain, message);
}

void log_route_mongoc(void) { mongoc_log_set_handler(mongoc_handler, NULL); }
