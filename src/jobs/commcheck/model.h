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
 * The files: job.c (collect, the probes, apply: the only one with I/O);
 * plan.c, observe.c, decide.c: pure; read.h: their BSON readers; dryrun.c:
 * the job on fixtures (jobs/dryrun.h). They share this header.
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

/* ---- channels (plan.c) ----------------------------------------------------- */

#define COMMCHECK_MAX_CHECKS 4

/* The channel's provider: `provider`, else twilio for sms, sendgrid for email. */
const char *commcheck_provider_of(const bson_t *ch);
/* The channel's authenticated domain: `domain`, else the from_email's. */
const char *commcheck_domain_of(const bson_t *ch);
/* "main" for the account the credentials belong to, else the SID. */
const char *commcheck_account_label(const char *sid, const struct commcheck_providers *p);
/* The real SID behind a label ("main" → TWILIO_ACCOUNT_SID when known). */
const char *commcheck_sid_of_label(const char *label, const struct commcheck_providers *p);
/* The number, domain or address the managers know the channel by (into buf). */
const char *commcheck_label_of(const bson_t *ch, char *buf, size_t size);
/* The checks that apply to a channel, with their probe ids ("" for the
 * balance, which depends on the account's answer). Returns how many. */
int commcheck_checks_of(const bson_t *ch, const struct commcheck_providers *p,
                        const char *checks[COMMCHECK_MAX_CHECKS],
                        char probe_ids[COMMCHECK_MAX_CHECKS][600]);
/* The billing account label of a Twilio channel, from round 1's answer. */
bool commcheck_billing_label(const struct commcheck_input *in, const bson_t *ch, char *out,
                             size_t size);
/* The channel's entry in round 1's domain listing (entry borrows the answer). */
bool commcheck_domain_entry(const struct commcheck_input *in, const bson_t *ch,
                            const char *probe_id, bson_t *entry);
bool commcheck_http_url(const char *u);

/* ---- one check's observation (observe.c) --------------------------------- */

/* One check's observation: the `result` table health.lua's assess() reads,
 * plus what the alert says. */
struct observation {
    bool unchecked;           /* no answer to judge (not configured, deadline, dependency) */
    bson_t result;            /* {ok, status, timeout, unreachable, definitive, ...} */
    char message[600];        /* what was seen */
    char cause[32];           /* channel_broken | provider_unreachable | endpoint_unreachable */
    char target[600];         /* the number, domain, account or URL checked */
    long http_status;
};

/* Reads the answers for one check of one channel into o (o->result is
 * initialised here; the caller destroys it). Pure. */
void commcheck_observe(const struct commcheck_input *in, const bson_t *ch, const char *check,
                       const char *probe_id, struct observation *o);

#endif
