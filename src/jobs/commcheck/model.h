/* commcheck/model.h — the communication-check job: validate every active SMS and
 * email channel, open, update and resolve alerts, tell the room's managers.
 *
 * Checks (per channel, by provider):
 *   twilio    twilio.account   the account (or sub-account) exists and is active
 *             twilio.balance   the billing account's balance against health.lua
 *                              (fetched once per account per tick)
 *             twilio.number    the number is on the account, SMS-capable, and its
 *                              sms_url is the channel's webhook_url
 *   sendgrid  sendgrid.api_key /v3/scopes answers 200 and includes mail.send
 *             sendgrid.domain  the authenticated domain and each DNS record valid
 *                              (validated live, POST …/validate)
 *   smtp      smtp.connect     connect, STARTTLS or smtps, AUTH, NOOP
 *   any       webhook.endpoint webhook_url answers (< 500) in time; https:
 *                              certificate verified and not expiring within
 *                              health.lua's window
 *
 * The job is collect → decide → apply:
 *   collect  active channels (stalest first, capped), open alerts, rooms, the
 *            failure streaks; then the provider answers: commcheck_plan_probes
 *            (pure) names the requests, job.c runs them on curl multi
 *            (providers/endpoint_probe.h), in two rounds (balances need the account's
 *            owner, i.e. its billing account; a domain's validation its id);
 *   decide   commcheck_decide: pure, documents + answers + rules in, a plan out;
 *            (plan.c plans the requests, observe.c reads
 *            an answer, decide.c turns observations into alerts);
 *   apply    see job.c: alert inserts and conditional updates that carry
 *            their notifications, Redis streaks, outbox.
 *
 * Probe ids (the keys of `answers`, also in dry-run fixtures):
 *   twilio.account:<sid|main>, twilio.balance:<sid|main>,
 *   twilio.number:<sid|main>:<E.164>, sendgrid.api_key, sendgrid.domain:<domain>
 *   (the listing), sendgrid.validate:<domain id> (round 2: a live validation),
 *   smtp.connect, webhook:<url>.
 * An answer: {status: <int, 0 when none>, failure: "timeout"|"connect"|"tls"|
 *   "login_denied"|"no_starttls"|"other" (absent when an answer arrived),
 *   error: <text>, body: <parsed JSON: document or array>, cert_expires_at:
 *   <date>, elapsed_ms}.
 *
 * Ownership: the plan functions append to caller-owned BSON; nothing is kept.
 * Errors follow core/error.h.
 */
#ifndef SD_JOBS_COMMCHECK_MODEL_H
#define SD_JOBS_COMMCHECK_MODEL_H

#include <bson/bson.h>

#include "core/error.h"
#include "core/log.h"
#include "rules/engine.h"

/* What supportd knows of the providers (no secrets: those stay in the config). */
struct commcheck_providers {
    const char *twilio_base;      /* TWILIO_API_BASE */
    const char *twilio_main_sid;  /* TWILIO_ACCOUNT_SID; NULL in dry-run */
    bool twilio_ready;            /* credentials configured */
    const char *sendgrid_base;
    bool sendgrid_ready;
    const char *smtp_url;
    bool smtp_ready;
};

/* health.lua's numbers, read once per tick (defaults when absent). */
struct commcheck_limits {
    int consecutive_failures;     /* 2 */
    int http_timeout_ms;          /* 10000: provider APIs and SMTP */
    int webhook_timeout_ms;       /* 5000 */
    int concurrency;              /* 8: requests in flight at once */
    int tick_timeout_ms;          /* 60000: the whole check phase of a tick */
    int max_channels;             /* 500: per tick, stalest first */
};

int commcheck_limits_read(struct rules *rules, struct commcheck_limits *out,
                          struct sd_error *err);

struct commcheck_input {
    const bson_t *const *channels;  /* active channels to check, in order */
    size_t n_channels;
    const bson_t *const *alerts;    /* every open alert */
    size_t n_alerts;
    const bson_t *known_channels;   /* {"<id hex>": channel} for alerts whose channel
                                       is not among `channels` (inactive ones) */
    const bson_t *rooms;            /* {"<room id hex>": room} */
    const bson_t *answers;          /* {"<probe id>": answer} */
    const bson_t *streaks;          /* {"<channel_id>:<check>": consecutive transient failures} */
    const struct commcheck_providers *providers;
    const struct commcheck_limits *limits;
    int64_t now_ms;
    struct rules *rules;
    const struct log_ctx *log;
};

/* Appends the requests round 1 (everything but balances and validations) or
 * round 2 (the balances of the billing accounts, the validations of the
 * domains named in round 1's answers) needs that are not in in->answers yet:
 * {id, kind: "http"|"smtp", method: "GET"|"POST", url, auth:
 * "twilio"|"sendgrid"|"smtp"|"none", timeout_ms}. Returns how many. Pure. */
uint32_t commcheck_plan_probes(const struct commcheck_input *in, int round, bson_t *probes);

/* The plan:
 *   results  [{channel_id, check, target, outcome: "ok"|"failing"|"transient"|
 *             "unchecked", severity?, message, cause?}]
 *   actions  [{kind: "open"|"update"|"resolve", target: <key>, ...}]
 *            open:    alert: <the whole new document, without _id>
 *            update:  alert_id, set: {...}, inc_occurrences, severity_before?
 *            resolve: alert_id, set: {...} (key rewritten, see job.c)
 *            each with notifications: [<outbox entries>]
 *   streaks  {"<channel_id>:<check>": n}  (0 = clear)
 *   checked  [<channel id hex>]           (channels whose checks ran)
 * Returns the number of bad documents met (logged with their id). Pure: no
 * I/O besides those logs. */
int commcheck_decide(const struct commcheck_input *in, bson_t *results, bson_t *actions,
                     bson_t *streaks, bson_t *checked);

/* Prints a plan of this job (dry-run --format text). */
void commcheck_print_text(const bson_t *job_plan);

#endif
