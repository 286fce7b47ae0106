/* metrics.h — the process's own counters, for GET /metrics (src/http/).
 *
 * A small registry of what happens inside this process: job ticks by outcome,
 * their durations (a histogram), the items each tick counted (the int64
 * members of tick.end's `counts`), webhooks received, rejected and stored
 * with one copy only, rules reloads and HTTP requests. Writers are the tick
 * runner, the rules manager and the HTTP threads; every function is
 * thread-safe (one mutex: each call is a few additions, far from any hot
 * loop). Values that live elsewhere (Redis, MongoDB, /proc) are read at
 * scrape time by src/http/exposition.c instead.
 *
 * metrics_render appends the Prometheus text exposition format (version 0.0.4)
 * of everything registered; names follow Prometheus conventions (supportd_
 * prefix, _total for counters, _seconds for durations).
 *
 * Ownership: nothing is allocated per call; the registry is static and sized
 * for supportd's few jobs and labels (a label set beyond its capacity is
 * counted under counter="_other" rather than dropped silently).
 */
#ifndef SD_CORE_METRICS_H
#define SD_CORE_METRICS_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stdint.h>

enum metrics_outcome { METRICS_TICK_OK, METRICS_TICK_ERROR, METRICS_TICK_SKIPPED };

/* Declares a job so that its series exist (at 0) before its first tick. */
void metrics_job_declare(const char *job);

/* One tick of `job`: its outcome, duration and counts (NULL or the tick.end
 * `counts` document; its integer members are added to the item totals). */
void metrics_tick(const char *job, enum metrics_outcome outcome, int64_t duration_ms,
                  const bson_t *counts);

/* One webhook request to a provider's endpoint: reason NULL when it was
 * accepted into the stream, else a short label ("bad_signature", "malformed",
 * "too_large", "not_configured", "unavailable", "method"). */
void metrics_webhook(const char *provider, const char *reason);

/* Declares a provider so that its received and journal counters exist (at 0). */
void metrics_webhook_declare(const char *provider);

/* A webhook request with one of its two copies not written: journal_failed,
 * its copy in the journal (MongoDB); else its stream entry (it was accepted
 * into the journal only). */
void metrics_webhook_one_copy(const char *provider, bool journal_failed);

/* A rules reload attempt (file change or SIGHUP) and whether it took. */
void metrics_rules_reload(bool ok);

/* One answered HTTP request: handler label (e.g. "/healthz") and status. */
void metrics_http_request(const char *handler, int status);

/* Appends the exposition of the registry to out. */
void metrics_render(bson_string_t *out);

/* Appends a label value escaped as the text format requires (\\, \", \n). */
void metrics_escape_label(bson_string_t *out, const char *value);

/* Forgets everything (unit tests). */
void metrics_reset(void);

#endif
