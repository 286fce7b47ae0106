/* metrics.c — see metrics.h. Fixed-size tables under one mutex: supportd has
 * six jobs, two providers and a handful of reasons; a table that fills up
 * folds the rest into one "_other" row so totals stay right. */
#include "core/metrics.h"

#include <pthread.h>
#include <string.h>

#define MAX_JOBS 16
#define MAX_ITEMS 48
#define MAX_PAIRS 48
#define NAME 64

/* Tick durations span 1 ms (an idle probe) to minutes (a large snooze batch). */
static const double bucket_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                   2.5,   5,    10,    30,   60,  120, 300};
#define N_BUCKETS (sizeof bucket_le / sizeof *bucket_le)

struct item {
    char name[NAME];
    int64_t total;
};

struct job_metrics {
    char name[NAME];
    int64_t ticks[3];
    uint64_t buckets[N_BUCKETS]; /* non-cumulative here, cumulated when rendered */
    uint64_t count;
    double sum_s;
    struct item items[MAX_ITEMS];
    int n_items;
};

/* A counter with two labels. */
struct pair {
    char a[NAME], b[NAME];
    int64_t v;
};

struct pairs {
    struct pair rows[MAX_PAIRS];
    int n;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct job_metrics jobs[MAX_JOBS];
static int n_jobs;
static struct pairs webhooks_received, webhooks_rejected, http_requests;
/* by provider (b ""): accepted with one copy only (metrics_webhook_one_copy) */
static struct pairs journal_failures, journal_only;
static int64_t reloads_ok, reloads_failed;

static void copy(char *dst, const char *src)
{
    snprintf(dst, NAME, "%s", src ? src : "");
}

static struct job_metrics *job_locked(const char *name)
{
    for (int i = 0; i < n_jobs; i++)
        if (!strcmp(jobs[i].name, name))
            return &jobs[i];
    if (n_jobs == MAX_JOBS)
        return NULL;
    struct job_metrics *j = &jobs[n_jobs++];
    memset(j, 0, sizeof *j);
    copy(j->name, name);
    return j;
}

static struct item *item_locked(struct job_metrics *j, const char *name)
{
    for (int i = 0; i < j->n_items; i++)
        if (!strcmp(j->items[i].name, name))
            return &j->items[i];
    if (j->n_items >= MAX_ITEMS - 1 && strcmp(name, "_other"))
        return item_locked(j, "_other");
    if (j->n_items == MAX_ITEMS) /* full of _other already */
        return &j->items[MAX_ITEMS - 1];
    struct item *it = &j->items[j->n_items++];
    copy(it->name, name);
    it->total = 0;
    return it;
}

static struct pair *pair_locked(struct pairs *p, const char *a, const char *b)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->rows[i].a, a) && !strcmp(p->rows[i].b, b))
            return &p->rows[i];
    if (p->n >= MAX_PAIRS - 1 && strcmp(b, "_other"))
        return pair_locked(p, a, "_other");
    if (p->n == MAX_PAIRS) /* another label a, past the end: the last row */
        return &p->rows[MAX_PAIRS - 1];
    struct pair *r = &p->rows[p->n++];
    copy(r->a, a);
    copy(r->b, b);
    r->v = 0;
    return r;
}

void metrics_job_declare(const char *job)
{
    pthread_mutex_lock(&mu);
    job_locked(job);
    pthread_mutex_unlock(&mu);
}

void metrics_tick(const char *job, enum metrics_outcome outcome, int64_t duration_ms,
                  const bson_t *counts)
{
    pthread_mutex_lock(&mu);
    struct job_metrics *j = job_locked(job);
    if (j) {
        j->ticks[outcome]++;
        /* A skipped slot did no work: it is counted, but not timed. */
        if (outcome != METRICS_TICK_SKIPPED) {
            double s = (double)duration_ms / 1000.0;
            j->count++;
            j->sum_s += s;
            for (size_t b = 0; b < N_BUCKETS; b++)
                if (s <= bucket_le[b]) {
                    j->buckets[b]++;
                    break;
                }
        }
        bson_iter_t it;
        if (counts && bson_iter_init(&it, counts))
            while (bson_iter_next(&it))
                if (BSON_ITER_HOLDS_INT(&it))
                    item_locked(j, bson_iter_key(&it))->total += bson_iter_as_int64(&it);
    }
    pthread_mutex_unlock(&mu);
}

void metrics_webhook(const char *provider, const char *reason)
{
    pthread_mutex_lock(&mu);
    pair_locked(&webhooks_received, provider, "")->v++;
    if (reason)
        pair_locked(&webhooks_rejected, provider, reason)->v++;
    pthread_mutex_unlock(&mu);
}

void metrics_webhook_declare(const char *provider)
{
    pthread_mutex_lock(&mu);
    pair_locked(&webhooks_received, provider, "");
    pair_locked(&journal_failures, provider, "");
    pair_locked(&journal_only, provider, "");
    pthread_mutex_unlock(&mu);
}

void metrics_webhook_one_copy(const char *provider, bool journal_failed)
{
    pthread_mutex_lock(&mu);
    pair_locked(journal_failed ? &journal_failures : &journal_only, provider, "")->v++;
    pthread_mutex_unlock(&mu);
}

void metrics_rules_reload(bool ok)
{
    pthread_mutex_lock(&mu);
    if (ok)
        reloads_ok++;
    else
        reloads_failed++;
    pthread_mutex_unlock(&mu);
}

void metrics_http_request(const char *handler, int status)
{
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    pthread_mutex_lock(&mu);
    pair_locked(&http_requests, handler, code)->v++;
    pthread_mutex_unlock(&mu);
}

void metrics_escape_label(bson_string_t *out, const char *value)
{
    for (const char *p = value ? value : ""; *p; p++) {
        if (*p == '\\')
            bson_string_append(out, "\\\\");
        else if (*p == '"')
            bson_string_append(out, "\\\"");
        else if (*p == '\n')
            bson_string_append(out, "\\n");
        else
            bson_string_append_c(out, *p);
    }
}

static void head(bson_string_t *out, const char *name, const char *type, const char *help)
{
    bson_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void label(bson_string_t *out, const char *name, const char *value, bool first)
{
    bson_string_append_printf(out, "%s%s=\"", first ? "" : ",", name);
    metrics_escape_label(out, value);
    bson_string_append(out, "\"");
}

/* A float as Prometheus reads it (Go's ParseFloat); the bucket bounds are
 * short decimals, sums need no more than microseconds. */
static void number(bson_string_t *out, double v)
{
    bson_string_append_printf(out, "%.9g", v);
}

void metrics_render(bson_string_t *out)
{
    static const char *const outcomes[] = {"ok", "error", "skipped"};
    pthread_mutex_lock(&mu);

    head(out, "supportd_job_ticks_total", "counter",
         "Ticks run by this process, by job and outcome (skipped: another instance held the lease).");
    for (int i = 0; i < n_jobs; i++)
        for (int o = 0; o < 3; o++) {
            bson_string_append(out, "supportd_job_ticks_total{");
            label(out, "job", jobs[i].name, true);
            label(out, "outcome", outcomes[o], false);
            bson_string_append_printf(out, "} %lld\n", (long long)jobs[i].ticks[o]);
        }

    head(out, "supportd_job_tick_duration_seconds", "histogram",
         "Duration of the ticks this process ran (ok and error), by job.");
    for (int i = 0; i < n_jobs; i++) {
        uint64_t cum = 0;
        for (size_t b = 0; b < N_BUCKETS; b++) {
            cum += jobs[i].buckets[b];
            bson_string_append(out, "supportd_job_tick_duration_seconds_bucket{");
            label(out, "job", jobs[i].name, true);
            bson_string_append(out, ",le=\"");
            number(out, bucket_le[b]);
            bson_string_append_printf(out, "\"} %llu\n", (unsigned long long)cum);
        }
        bson_string_append(out, "supportd_job_tick_duration_seconds_bucket{");
        label(out, "job", jobs[i].name, true);
        bson_string_append_printf(out, ",le=\"+Inf\"} %llu\n",
                                  (unsigned long long)jobs[i].count);
        bson_string_append(out, "supportd_job_tick_duration_seconds_sum{");
        label(out, "job", jobs[i].name, true);
        bson_string_append(out, "} ");
        number(out, jobs[i].sum_s);
        bson_string_append(out, "\nsupportd_job_tick_duration_seconds_count{");
        label(out, "job", jobs[i].name, true);
        bson_string_append_printf(out, "} %llu\n", (unsigned long long)jobs[i].count);
    }

    head(out, "supportd_job_items_total", "counter",
         "Sum over this process's ticks of each counter in tick.end's counts, by job and counter.");
    for (int i = 0; i < n_jobs; i++)
        for (int k = 0; k < jobs[i].n_items; k++) {
            bson_string_append(out, "supportd_job_items_total{");
            label(out, "job", jobs[i].name, true);
            label(out, "counter", jobs[i].items[k].name, false);
            bson_string_append_printf(out, "} %lld\n", (long long)jobs[i].items[k].total);
        }

    head(out, "supportd_webhooks_received_total", "counter",
         "Webhook requests received on /webhooks/<provider>/..., by provider.");
    for (int i = 0; i < webhooks_received.n; i++) {
        bson_string_append(out, "supportd_webhooks_received_total{");
        label(out, "provider", webhooks_received.rows[i].a, true);
        bson_string_append_printf(out, "} %lld\n", (long long)webhooks_received.rows[i].v);
    }
    head(out, "supportd_webhooks_rejected_total", "counter",
         "Webhook requests not appended to status-events, by provider and reason.");
    for (int i = 0; i < webhooks_rejected.n; i++) {
        bson_string_append(out, "supportd_webhooks_rejected_total{");
        label(out, "provider", webhooks_rejected.rows[i].a, true);
        label(out, "reason", webhooks_rejected.rows[i].b, false);
        bson_string_append_printf(out, "} %lld\n", (long long)webhooks_rejected.rows[i].v);
    }

    head(out, "supportd_webhook_journal_failures_total", "counter",
         "Webhook requests whose copy in the journal (conversation-status-inbox) could not be "
         "written, by provider: the stream held the only copy (503 if it failed too).");
    for (int i = 0; i < journal_failures.n; i++) {
        bson_string_append(out, "supportd_webhook_journal_failures_total{");
        label(out, "provider", journal_failures.rows[i].a, true);
        bson_string_append_printf(out, "} %lld\n", (long long)journal_failures.rows[i].v);
    }
    head(out, "supportd_webhook_journal_only_total", "counter",
         "Webhook requests accepted into the journal only (status-events could not be "
         "appended to; message-status appends them), by provider.");
    for (int i = 0; i < journal_only.n; i++) {
        bson_string_append(out, "supportd_webhook_journal_only_total{");
        label(out, "provider", journal_only.rows[i].a, true);
        bson_string_append_printf(out, "} %lld\n", (long long)journal_only.rows[i].v);
    }

    head(out, "supportd_rules_reloads_total", "counter",
         "Rules reload attempts (file change or SIGHUP), by result.");
    bson_string_append_printf(out, "supportd_rules_reloads_total{result=\"ok\"} %lld\n",
                              (long long)reloads_ok);
    bson_string_append_printf(out, "supportd_rules_reloads_total{result=\"failed\"} %lld\n",
                              (long long)reloads_failed);
    head(out, "supportd_rules_reload_failures_total", "counter",
         "Rules reloads that failed (the last good rules stayed in use).");
    bson_string_append_printf(out, "supportd_rules_reload_failures_total %lld\n",
                              (long long)reloads_failed);

    head(out, "supportd_http_requests_total", "counter",
         "HTTP requests answered, by handler and status code.");
    for (int i = 0; i < http_requests.n; i++) {
        bson_string_append(out, "supportd_http_requests_total{");
        label(out, "handler", http_requests.rows[i].a, true);
        label(out, "code", http_requests.rows[i].b, false);
        bson_string_append_printf(out, "} %lld\n", (long long)http_requests.rows[i].v);
    }
    pthread_mutex_unlock(&mu);
}

void metrics_reset(void)
{
    pthread_mutex_lock(&mu);
    n_jobs = 0;
    memset(&webhooks_received, 0, sizeof webhooks_received);
    memset(&webhooks_rejected, 0, sizeof webhooks_rejected);
    memset(&journal_failures, 0, sizeof journal_failures);
    memset(&journal_only, 0, sizeof journal_only);
    memset(&http_requests, 0, sizeof http_requests);
    reloads_ok = reloads_failed = 0;
    pthread_mutex_unlock(&mu);
}
