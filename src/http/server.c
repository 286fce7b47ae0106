/* server.c — the libmicrohttpd daemon behind http.h: options and limits,
 * routing, body collection, the slow-request watchdog and the per-thread Redis
 * connections. Handlers live in webhook.c, probes.c and exposition.c.
 *
 * A request's life: MHD parses the request line and calls uri_start (we keep
 * the raw target, path and query as sent, and the arrival time); then
 * on_request runs once when the headers are in, once per body chunk, and once
 * at the end, where the handler runs and the answer is queued; on_completed
 * frees the request.
 */
#include "http/http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "http/internal.h"
#include "http/journal_late.h"
#include "jobs/runner.h"

/* Redis calls from a request thread fail fast: the provider retries a 503,
 * and a pool thread stuck on a hung Redis would stop answering probes. */
#define HTTP_REDIS_TIMEOUT_MS 2000
/* The same for the journal's insert into MongoDB (webhook.c): the stream's
 * copy alone is enough to answer 204, so a hung database costs a webhook at
 * most this long (connect, server selection and socket timeouts), not the
 * 5 minutes of mongoc's default socket timeout. */
#define HTTP_MONGO_TIMEOUT_MS 2000

enum route { R_NONE, R_TWILIO, R_SENDGRID, R_HEALTHZ, R_READYZ, R_METRICS };

static const struct {
    const char *path;
    enum route route;
    bool post;
} routes[] = {
    {"/webhooks/twilio/status", R_TWILIO, true},
    {"/webhooks/sendgrid/events", R_SENDGRID, true},
    {"/healthz", R_HEALTHZ, false},
    {"/readyz", R_READYZ, false},
    {"/metrics", R_METRICS, false},
};

/* One connection, as the watchdog sees it. */
struct watch {
    int fd;
    int64_t deadline_ms;          /* 0: not armed (a request is being answered) */
    struct watch *prev, *next;
};

struct request {
    char *target;                 /* as sent: path?query */
    int64_t received_at;
    char *body;
    size_t len, cap;              /* cap bytes are counted in `buffered` */
    bool too_large, started;
    bool too_busy;                /* the process held HTTP_MAX_BUFFERED already */
};

/* Request bodies held by all connections together. Each body is capped
 * (HTTP_MAX_BODY), but so many connections at once could hold hundreds of
 * MiB; past this total a body is not kept and its request is answered 503
 * (the providers retry). */
#define HTTP_MAX_BUFFERED (32u * 1024 * 1024)
static atomic_size_t buffered;

static void release_body(struct request *r)
{
    atomic_fetch_sub(&buffered, r->cap);
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
}

/* Every Redis connection a pool thread opened, closed at stop. */
struct rds_list {
    struct rds *r;
    struct rds_list *next;
};

struct http_server {
    struct MHD_Daemon *daemon;
    struct http_ctx ctx;
    struct rds_options redis_opts;
    pthread_mutex_t mu;           /* watches, rds list */
    struct watch *watches;
    struct rds_list *conns;
    pthread_t watchdog;
    pthread_cond_t stop_cv;
    bool stopping, watchdog_started;
    int64_t request_timeout_ms;
};

static _Thread_local struct rds *thread_redis;

static struct rds *redis_for_thread(struct http_server *s)
{
    if (thread_redis)
        return thread_redis;
    struct rds_list *n = calloc(1, sizeof *n);
    n->r = rds_new(&s->redis_opts);
    pthread_mutex_lock(&s->mu);
    n->next = s->conns;
    s->conns = n;
    pthread_mutex_unlock(&s->mu);
    thread_redis = n->r;
    return n->r;
}

/* ---- watchdog ---------------------------------------------------------------
 * MHD's own timeout counts silence only, so a client sending one header byte
 * every few seconds (slowloris) would hold its connection for ever. Each
 * connection must deliver a complete request within the request timeout of
 * opening or of its previous answer; past that the watchdog shuts the socket
 * down (MHD sees end-of-file and closes it; the fd stays MHD's to close, and
 * MHD notifies CLOSED, which unlinks the watch, before it closes the fd). */

static void arm(struct http_server *s, struct watch *w)
{
    pthread_mutex_lock(&s->mu);
    w->deadline_ms = clock_now_ms() + s->request_timeout_ms;
    pthread_mutex_unlock(&s->mu);
}

static void disarm(struct http_server *s, struct watch *w)
{
    pthread_mutex_lock(&s->mu);
    w->deadline_ms = 0;
    pthread_mutex_unlock(&s->mu);
}

static void *watchdog_main(void *arg)
{
    struct http_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        int64_t now = clock_now_ms();
        long closed = 0;
        for (struct watch *w = s->watches; w; w = w->next)
            if (w->deadline_ms && now >= w->deadline_ms) {
                shutdown(w->fd, SHUT_RDWR);
                w->deadline_ms = 0;
                closed++;
            }
        if (closed) {
            pthread_mutex_unlock(&s->mu);
            for (long i = 0; i < closed; i++)
                metrics_http_request("timeout", 408);
            bson_t f = BSON_INITIALIZER;
            BSON_APPEND_INT64(&f, "connections", closed);
            log_msg(LOG_WARN, NULL, "http.timeout", &f,
                    "closed %ld connection(s) that sent no complete request within %lld s",
                    closed, (long long)s->request_timeout_ms / 1000);
            bson_destroy(&f);
            pthread_mutex_lock(&s->mu);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->stop_cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct http_server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        struct watch *w = calloc(1, sizeof *w);
        if (!w || !info)
            return free(w);
        w->fd = info->connect_fd;
        pthread_mutex_lock(&s->mu);
        w->deadline_ms = clock_now_ms() + s->request_timeout_ms;
        w->next = s->watches;
        if (s->watches)
            s->watches->prev = w;
        s->watches = w;
        pthread_mutex_unlock(&s->mu);
        *socket_context = w;
    } else if (*socket_context) {
        struct watch *w = *socket_context;
        pthread_mutex_lock(&s->mu);
        if (w->prev)
            w->prev->next = w->next;
        else
            s->watches = w->next;
        if (w->next)
            w->next->prev = w->prev;
        pthread_mutex_unlock(&s->mu);
        free(w);
        *socket_context = NULL;
    }
}

static struct watch *watch_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

/* ---- requests ---------------------------------------------------------------- */

static void *uri_start(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)cls;
    (void)c;
    struct request *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->target = strdup(uri ? uri : "/");
    r->received_at = clock_now_ms();
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_server *s = cls;
    (void)toe;
    struct request *r = *con_cls;
    if (r) {
        free(r->target);
        release_body(r);
        free(r);
        *con_cls = NULL;
    }
    /* keep-alive: the next request on this connection has its own deadline */
    struct watch *w = watch_of(c);
    if (w)
        arm(s, w);
}

static enum MHD_Result queue(struct MHD_Connection *c, const char *handler,
                             struct http_answer *ans, const char *allow)
{
    const char *text = ans->body ? ans->body->str : "";
    size_t len = ans->body ? ans->body->len : 0;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (ans->body)
        bson_string_free(ans->body, true);
    ans->body = NULL;
    if (!resp)
        return MHD_NO;
    if (len || ans->content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                ans->content_type ? ans->content_type : "text/plain");
    if (ans->retry_after)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ans->retry_after);
    if (allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)ans->status, resp);
    MHD_destroy_response(resp);
    metrics_http_request(handler, ans->status);
    return ret;
}

static enum MHD_Result simple(struct MHD_Connection *c, const char *handler, int status,
                              const char *text, const char *allow)
{
    struct http_answer ans = {0};
    http_answer_text(&ans, status, "%s", text);
    return queue(c, handler, &ans, allow);
}

static enum route find_route(const char *path, bool *post, const char **handler)
{
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
        if (!strcmp(path, routes[i].path)) {
            *post = routes[i].post;
            *handler = routes[i].path;
            return routes[i].route;
        }
    *handler = "other";
    return R_NONE;
}

static enum MHD_Result run_webhook(struct http_server *s, struct MHD_Connection *c,
                                   struct request *r, enum route route, const char *handler)
{
    const char *provider = route == R_TWILIO ? "twilio" : "sendgrid";
    struct http_answer ans = {0};
    const char *reason = NULL;
    if (r->too_large) {
        reason = "too_large";
        http_answer_text(&ans, 413, "request body larger than %d bytes\n", HTTP_MAX_BODY);
    } else if (r->too_busy) {
        reason = "busy";
        http_answer_text(&ans, 503, "too many request bodies in flight; retry later\n");
        ans.retry_after = "5";
    } else {
        struct webhook_request req = {
            .provider = provider,
            .target = r->target,
            .host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST),
            .body = r->body ? r->body : "",
            .len = r->len,
            .signature = MHD_lookup_connection_value(
                c, MHD_HEADER_KIND,
                route == R_TWILIO ? "X-Twilio-Signature" : "X-Twilio-Email-Event-Webhook-Signature"),
            .timestamp = route == R_SENDGRID
                             ? MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                           "X-Twilio-Email-Event-Webhook-Timestamp")
                             : NULL,
            .received_at = r->received_at,
        };
        webhook_handle(&s->ctx, redis_for_thread(s), &req, &ans, &reason);
    }
    metrics_webhook(provider, reason);
    return queue(c, handler, &ans, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    struct http_server *s = cls;
    (void)version;
    struct request *r = *con_cls;
    if (!r)
        return MHD_NO; /* out of memory in uri_start: drop the connection */
    bool post = false;
    const char *handler;
    enum route route = find_route(url, &post, &handler);
    bool is_post = !strcmp(method, MHD_HTTP_METHOD_POST);

    if (!r->started) {
        r->started = true;
        if (route == R_NONE)
            return simple(c, handler, 404, "not found\n", NULL);
        if (post && !is_post) {
            if (route == R_TWILIO || route == R_SENDGRID)
                metrics_webhook(route == R_TWILIO ? "twilio" : "sendgrid", "method");
            return simple(c, handler, 405, "use POST\n", "POST");
        }
        if (!post && strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
            return simple(c, handler, 405, "use GET\n", "GET, HEAD");
        if (post) {
            /* Refuse a declared oversized body before reading it (and before
             * MHD sends 100 Continue to a client that asked). */
            const char *cl =
                MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > HTTP_MAX_BODY) {
                r->too_large = true;
                return run_webhook(s, c, r, route, handler);
            }
            return MHD_YES; /* the body comes next */
        }
    }
    if (post) {
        if (*upload_size) {
            /* A chunked body has no declared length: read it, keep at most
             * the limit, answer 413 at its end (the watchdog bounds how long
             * that may take). */
            size_t n = *upload_size;
            if (!r->too_large && r->len + n > HTTP_MAX_BODY) {
                r->too_large = true;
                release_body(r);
            }
            if (!r->too_large && !r->too_busy && r->len + n + 1 > r->cap) {
                size_t cap = r->cap ? r->cap : 4096;
                while (cap < r->len + n + 1)
                    cap *= 2;
                size_t more = cap - r->cap;
                if (atomic_fetch_add(&buffered, more) + more > HTTP_MAX_BUFFERED) {
                    atomic_fetch_sub(&buffered, more);
                    r->too_busy = true;
                    release_body(r);
                } else {
                    char *nb = realloc(r->body, cap);
                    if (!nb) {
                        atomic_fetch_sub(&buffered, more);
                        return MHD_NO;
                    }
                    r->body = nb;
                    r->cap = cap;
                }
            }
            if (!r->too_large && !r->too_busy) {
                memcpy(r->body + r->len, upload_data, n);
                r->len += n;
                r->body[r->len] = '\0';
            }
            *upload_size = 0;
            return MHD_YES;
        }
        struct watch *w = watch_of(c);
        if (w)
            disarm(s, w);
        return run_webhook(s, c, r, route, handler);
    }

    struct watch *w = watch_of(c);
    if (w)
        disarm(s, w);
    struct http_answer ans = {0};
    struct rds *redis = redis_for_thread(s);
    if (route == R_HEALTHZ)
        probes_healthz(&s->ctx, redis, &ans);
    else if (route == R_READYZ)
        probes_readyz(&s->ctx, redis, &ans);
    else
        exposition_metrics(&s->ctx, redis, &ans);
    return queue(c, handler, &ans, NULL);
}

/* MHD's own messages (bind failures, resource limits): into our log, at warn.
 * They name sockets and limits, never request contents. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    log_msg(LOG_WARN, NULL, "http.server", NULL, "%s", buf);
}

struct http_server *http_server_start(const struct config *cfg, struct store *store,
                                      struct rules_live *rules, struct sd_error *err)
{
    char port[8];
    snprintf(port, sizeof port, "%d", cfg->http_port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(cfg->http_host, port, &hints, &ai);
    if (gai)
        return sd_error_set(err, "QM_SUPPORT_HTTP_LISTEN: cannot resolve \"%s\": %s",
                            cfg->http_host, gai_strerror(gai)),
               NULL;

    struct http_server *s = calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->stop_cv, NULL);
    s->request_timeout_ms = cfg->http_request_timeout_s * 1000LL;
    s->ctx = (struct http_ctx){
        .cfg = cfg,
        .store = store,
        .rules = rules,
        .keys = {.twilio_auth_token = cfg->twilio_auth_token,
                 .sendgrid_public_key = cfg->sendgrid_webhook_public_key,
                 .sendgrid_tolerance_ms = cfg->webhook_tolerance_s * 1000LL},
        .started_ms = clock_now_ms(),
    };
    snprintf(s->ctx.stream_key, sizeof s->ctx.stream_key, "%sstatus-events", cfg->redis_prefix);
    /* the URL was accepted by the process's store already: NULL only when out
     * of memory, and then every request counts a journal failure */
    s->ctx.journal = store_new_bounded(cfg->mongo_url, cfg->mongo_db, HTTP_MONGO_TIMEOUT_MS, err);
    s->ctx.late = journal_late_start(s->ctx.journal);
    runner_redis_options(cfg, &s->redis_opts);
    s->redis_opts.timeout_ms = HTTP_REDIS_TIMEOUT_MS;
    for (int i = 0; i < JOB_COUNT; i++)
        if (cfg->jobs[i].enabled)
            metrics_job_declare(job_specs[i].name);
    metrics_webhook_declare("twilio");
    metrics_webhook_declare("sendgrid");

    s->ctx.checker = checker_start(&s->ctx, &s->redis_opts);
    checker_wait_first(s->ctx.checker, 3000);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s,
        /* first, so that MHD's messages about the other options reach it */
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->http_max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->http_idle_timeout_s,
        MHD_OPTION_URI_LOG_CALLBACK, uri_start, s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
        MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        sd_error_set(err, "QM_SUPPORT_HTTP_LISTEN: cannot listen on %s:%d (%s)", cfg->http_host,
                     cfg->http_port, errno ? strerror(errno) : "see http.server above");
        http_server_stop(s);
        return NULL;
    }
    if (pthread_create(&s->watchdog, NULL, watchdog_main, s) == 0)
        s->watchdog_started = true;
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "host", cfg->http_host);
    BSON_APPEND_INT32(&f, "port", cfg->http_port);
    BSON_APPEND_INT32(&f, "threads", cfg->http_threads);
    log_msg(LOG_INFO, NULL, "http.listening", &f, "HTTP server listening on %s:%d",
            cfg->http_host, cfg->http_port);
    bson_destroy(&f);
    return s;
}

void http_server_stop(struct http_server *s)
{
    if (!s)
        return;
    if (s->daemon)
        MHD_stop_daemon(s->daemon); /* joins the pool; every connection is closed */
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->stop_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->watchdog_started)
        pthread_join(s->watchdog, NULL);
    checker_stop(s->ctx.checker);
    journal_late_stop(s->ctx.late); /* no request adds one any more */
    store_destroy(s->ctx.journal);
    for (struct rds_list *n = s->conns, *next; n; n = next) {
        next = n->next;
        rds_destroy(n->r);
        free(n);
    }
    pthread_cond_destroy(&s->stop_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
