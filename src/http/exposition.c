/* exposition.c — GET /metrics: the registry of this process (core/metrics.h)
 * plus what is read at scrape time from where it lives:
 *   Redis    each enabled job's last success (its health record, any
 *            instance), status-events length, the group's pending entries and
 *            lag (XINFO GROUPS);
 *   MongoDB  outbox entries by status (three counts on the indexed status
 *            field), open alerts by check and severity;
 *   rules    the version in use;
 *   /proc    this process's resident memory, open fds and CPU time.
 * A source that cannot be read is left out and reported by
 * supportd_scrape_source_up{source} 0, so a scrape never fails as a whole.
 * Redis and MongoDB are read by the checker's threads every 2 s (checker.c),
 * never on the request's thread: a scrape is answered at once whatever they
 * do, from what they said at most a few seconds ago.
 */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/metrics.h"
#include "http/internal.h"
#include "store/health.h"

static void head(bson_string_t *out, const char *name, const char *type, const char *help)
{
    bson_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

bool exposition_read_redis(const struct http_ctx *ctx, struct rds *redis, bson_string_t *out)
{
    struct job_health h[JOB_COUNT];
    struct sd_error err;
    for (int i = 0; i < JOB_COUNT; i++)
        if (ctx->cfg->jobs[i].enabled &&
            health_read(redis, ctx->cfg->redis_prefix, job_specs[i].name, &h[i], &err))
            return false;
    redisReply *len = rds_command(redis, &err, "XLEN %s", ctx->stream_key);
    if (!len)
        return false;
    long long pending = 0, lag = 0;
    bool lag_known = false;
    /* No group yet (the job has not run) is an error reply: nothing pending. */
    redisReply *groups = rds_command(redis, NULL, "XINFO GROUPS %s", ctx->stream_key);
    for (size_t g = 0; groups && groups->type == REDIS_REPLY_ARRAY && g < groups->elements;
         g++) {
        redisReply *grp = groups->element[g];
        bool ours = false;
        long long p = 0, l = 0;
        bool has_lag = false;
        for (size_t k = 0; grp->type == REDIS_REPLY_ARRAY && k + 1 < grp->elements; k += 2) {
            const char *key = grp->element[k]->str;
            redisReply *v = grp->element[k + 1];
            if (!key)
                continue;
            if (!strcmp(key, "name") && v->str && !strcmp(v->str, "supportd"))
                ours = true;
            else if (!strcmp(key, "pending") && v->type == REDIS_REPLY_INTEGER)
                p = v->integer;
            else if (!strcmp(key, "lag") && v->type == REDIS_REPLY_INTEGER) {
                l = v->integer;
                has_lag = true;
            }
        }
        if (ours) {
            pending = p;
            lag = l;
            lag_known = has_lag;
        }
    }
    if (!groups || groups->type != REDIS_REPLY_ARRAY || !lag_known)
        lag = len->integer; /* no group: every entry is waiting */
    if (groups)
        freeReplyObject(groups);

    head(out, "supportd_job_last_success_timestamp_seconds", "gauge",
         "Unix time of the job's last successful tick by any instance (0: never), enabled jobs.");
    for (int i = 0; i < JOB_COUNT; i++)
        if (ctx->cfg->jobs[i].enabled)
            bson_string_append_printf(out,
                                      "supportd_job_last_success_timestamp_seconds{job=\"%s\"} "
                                      "%.3f\n",
                                      job_specs[i].name, (double)h[i].last_success / 1000.0);
    head(out, "supportd_status_events_length", "gauge", "Entries in the status-events stream.");
    bson_string_append_printf(out, "supportd_status_events_length %lld\n", len->integer);
    head(out, "supportd_status_events_pending", "gauge",
         "status-events entries delivered to the supportd group and not yet acknowledged.");
    bson_string_append_printf(out, "supportd_status_events_pending %lld\n", pending);
    head(out, "supportd_status_events_lag", "gauge",
         "status-events entries not yet delivered to the supportd group.");
    bson_string_append_printf(out, "supportd_status_events_lag %lld\n", lag);
    freeReplyObject(len);
    return true;
}

bool exposition_read_mongo(const struct http_ctx *ctx, bson_string_t *out)
{
    static const char *const statuses[] = {"pending", "sent", "failed"};
    mongoc_client_t *client = store_pop(ctx->store);
    const char *db = store_db(ctx->store);
    mongoc_collection_t *outbox = mongoc_client_get_collection(client, db, COLL_NOTIFICATION);
    int64_t counts[3];
    bool ok = true;
    for (int i = 0; i < 3 && ok; i++) {
        bson_t filter = BSON_INITIALIZER;
        BSON_APPEND_UTF8(&filter, "status", statuses[i]);
        counts[i] = mongoc_collection_count_documents(outbox, &filter, NULL, NULL, NULL, NULL);
        ok = counts[i] >= 0;
        bson_destroy(&filter);
    }
    mongoc_collection_destroy(outbox);
    bson_string_t *alerts = bson_string_new(NULL);
    if (ok) {
        /* Open alerts are few (one per channel and check): read and tally. */
        mongoc_collection_t *coll = mongoc_client_get_collection(client, db, COLL_ALERT);
        bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
        BSON_APPEND_UTF8(&filter, "status", "open");
        BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
        BSON_APPEND_INT32(&proj, "check", 1);
        BSON_APPEND_INT32(&proj, "severity", 1);
        bson_append_document_end(&opts, &proj);
        bson_t **docs = NULL;
        size_t n = 0;
        struct sd_error err;
        ok = store_find_all(coll, &filter, &opts, &docs, &n, &err) == 0;
        struct {
            char check[64], severity[16];
            long long n;
        } rows[64];
        size_t nrows = 0;
        for (size_t i = 0; ok && i < n; i++) {
            bson_iter_t it;
            const char *check = bson_iter_init_find(&it, docs[i], "check") &&
                                        BSON_ITER_HOLDS_UTF8(&it)
                                    ? bson_iter_utf8(&it, NULL)
                                    : "unknown";
            const char *sev = bson_iter_init_find(&it, docs[i], "severity") &&
                                      BSON_ITER_HOLDS_UTF8(&it)
                                  ? bson_iter_utf8(&it, NULL)
                                  : "unknown";
            size_t r = 0;
            while (r < nrows && (strcmp(rows[r].check, check) || strcmp(rows[r].severity, sev)))
                r++;
            if (r == nrows) {
                if (nrows == sizeof rows / sizeof *rows)
                    continue;
                snprintf(rows[r].check, sizeof rows[r].check, "%s", check);
                snprintf(rows[r].severity, sizeof rows[r].severity, "%s", sev);
                rows[r].n = 0;
                nrows++;
            }
            rows[r].n++;
        }
        for (size_t r = 0; r < nrows; r++) {
            bson_string_append(alerts, "supportd_alerts_open{check=\"");
            metrics_escape_label(alerts, rows[r].check);
            bson_string_append(alerts, "\",severity=\"");
            metrics_escape_label(alerts, rows[r].severity);
            bson_string_append_printf(alerts, "\"} %lld\n", rows[r].n);
        }
        store_docs_free(docs, n);
        bson_destroy(&filter);
        bson_destroy(&opts);
        mongoc_collection_destroy(coll);
    }
    store_push(ctx->store, client);
    if (ok) {
        head(out, "supportd_outbox_entries", "gauge",
             "conversation-notification (outbox) entries by status.");
        for (int i = 0; i < 3; i++)
            bson_string_append_printf(out, "supportd_outbox_entries{status=\"%s\"} %lld\n",
                                      statuses[i], (long long)counts[i]);
        head(out, "supportd_alerts_open", "gauge", "Open alerts by check and severity.");
        bson_string_append(out, alerts->str);
    }
    bson_string_free(alerts, true);
    return ok;
}

static void process_part(bson_string_t *out)
{
    long page = sysconf(_SC_PAGESIZE), ticks = sysconf(_SC_CLK_TCK);
    unsigned long long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu %llu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    long fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
        fds--; /* the one opendir holds */
    }
    unsigned long long utime = 0, stime = 0, start = 0;
    f = fopen("/proc/self/stat", "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        /* fields after the ")" that ends comm: state is field 3; utime 14,
         * stime 15, starttime 22 */
        const char *p = strrchr(buf, ')');
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d "
                               "%*d %*d %*d %*d %llu",
                        &utime, &stime, &start) != 3)
            utime = stime = start = 0;
    }
    double boot = 0;
    f = fopen("/proc/stat", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "btime %lf", &boot) == 1)
                break;
        fclose(f);
    }
    /* The standard process collector's names (what process dashboards and
     * alerts read), then the same values under the names of earlier
     * releases (deprecated: kept for one release). */
    static const char *const prefixes[] = {"", "supportd_"};
    for (int i = 0; i < 2; i++) {
        const char *p = prefixes[i], *dep = i ? " Deprecated: use the unprefixed name." : "";
        char name[96], help[160];
        snprintf(name, sizeof name, "%sprocess_resident_memory_bytes", p);
        snprintf(help, sizeof help, "Resident memory size in bytes.%s", dep);
        head(out, name, "gauge", help);
        bson_string_append_printf(out, "%s %llu\n", name, resident * (unsigned long long)page);
        snprintf(name, sizeof name, "%sprocess_open_fds", p);
        snprintf(help, sizeof help, "Number of open file descriptors.%s", dep);
        head(out, name, "gauge", help);
        bson_string_append_printf(out, "%s %ld\n", name, fds);
        snprintf(name, sizeof name, "%sprocess_cpu_seconds_total", p);
        snprintf(help, sizeof help, "Total user and system CPU time spent in seconds.%s", dep);
        head(out, name, "counter", help);
        bson_string_append_printf(out, "%s %.2f\n", name, (double)(utime + stime) / (double)ticks);
        snprintf(name, sizeof name, "%sprocess_start_time_seconds", p);
        snprintf(help, sizeof help, "Start time of the process since unix epoch in seconds.%s",
                 dep);
        head(out, name, "gauge", help);
        bson_string_append_printf(out, "%s %.2f\n", name, boot + (double)start / (double)ticks);
    }
}

void exposition_metrics(const struct http_ctx *ctx, struct rds *redis, struct http_answer *ans)
{
    (void)redis;
    bson_string_t *out = bson_string_new(NULL);
    metrics_render(out);
    /* Read by the checker (checker.c), not on this request's thread. */
    struct checker_view v;
    checker_view(ctx->checker, &v, true);
    bool redis_ok = v.redis.metrics != NULL, mongo_ok = v.mongo.metrics != NULL;
    if (redis_ok)
        bson_string_append(out, v.redis.metrics);
    if (mongo_ok)
        bson_string_append(out, v.mongo.metrics);
    checker_view_free(&v);
    struct rules *rules = rules_live_acquire(ctx->rules);
    head(out, "supportd_rules_info", "gauge", "The rules set in use: its version (a hash).");
    bson_string_append(out, "supportd_rules_info{version=\"");
    metrics_escape_label(out, rules_version(rules));
    bson_string_append(out, "\"} 1\n");
    rules_live_release(ctx->rules, rules);
    process_part(out);
    head(out, "supportd_scrape_source_up", "gauge",
         "1 when the scrape could read the source (redis: job health and stream; mongodb: "
         "outbox and alerts).");
    bson_string_append_printf(out, "supportd_scrape_source_up{source=\"redis\"} %d\n",
                              redis_ok ? 1 : 0);
    bson_string_append_printf(out, "supportd_scrape_source_up{source=\"mongodb\"} %d\n",
                              mongo_ok ? 1 : 0);
    ans->status = 200;
    ans->content_type = "text/plain; version=0.0.4; charset=utf-8";
    ans->body = out;
}
