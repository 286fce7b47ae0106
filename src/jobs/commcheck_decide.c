/* commcheck_decide — the pure heart of the communication-check job (see
 * commcheck.h): which requests to make, what their answers mean, and which
 * alerts open, change or resolve, with whom to tell. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/clock.h"
#include "jobs/commcheck.h"
#include "providers/http.h"

#define ALERT_NOTIFICATION_TYPE "channel.alert"

/* ---- small readers ------------------------------------------------------- */

static const char *utf8_at(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return NULL;
}

static bool has(const char *s) { return s && *s; }

static int64_t int_at(const bson_t *doc, const char *path, int64_t dflt)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_NUMBER(&it))
        return bson_iter_as_int64(&it);
    return dflt;
}

static bool oid_at(const bson_t *doc, const char *path, bson_oid_t *out)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_OID(&it)) {
        bson_oid_copy(bson_iter_oid(&it), out);
        return true;
    }
    return false;
}

static bool hex_at(const bson_t *doc, const char *path, char hex[25])
{
    bson_oid_t oid;
    if (!oid_at(doc, path, &oid)) {
        snprintf(hex, 25, "?");
        return false;
    }
    bson_oid_to_string(&oid, hex);
    return true;
}

/* Sets *child to the document or array at path. */
static bool child_at(const bson_t *doc, const char *path, bson_t *child)
{
    bson_iter_t it;
    uint32_t len;
    const uint8_t *data;
    if (!doc || !bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &it))
        return false;
    if (BSON_ITER_HOLDS_DOCUMENT(&it))
        bson_iter_document(&it, &len, &data);
    else if (BSON_ITER_HOLDS_ARRAY(&it))
        bson_iter_array(&it, &len, &data);
    else
        return false;
    return bson_init_static(child, data, len);
}

/* A top-level key lookup that allows dots inside the key (URLs, domains). */
static bool entry_of(const bson_t *map, const char *key, bson_t *child)
{
    bson_iter_t it;
    uint32_t len;
    const uint8_t *data;
    if (!map || !bson_iter_init(&it, map))
        return false;
    while (bson_iter_next(&it)) {
        if (strcmp(bson_iter_key(&it), key) != 0)
            continue;
        if (!BSON_ITER_HOLDS_DOCUMENT(&it))
            return false;
        bson_iter_document(&it, &len, &data);
        return bson_init_static(child, data, len);
    }
    return false;
}

static int64_t map_int(const bson_t *map, const char *key)
{
    bson_iter_t it;
    if (!map || !bson_iter_init(&it, map))
        return 0;
    while (bson_iter_next(&it))
        if (strcmp(bson_iter_key(&it), key) == 0 && BSON_ITER_HOLDS_NUMBER(&it))
            return bson_iter_as_int64(&it);
    return 0;
}

static void idx(char *buf, size_t size, uint32_t i) { snprintf(buf, size, "%u", i); }

/* ---- rules ------------------------------------------------------------- */

static int call(struct rules *rules, const char *module, const char *fn, bson_t *args, bson_t *out,
                struct sd_error *err)
{
    int rc = rules_call(rules, module, fn, args, out, err);
    bson_destroy(args);
    return rc;
}

int commcheck_limits_read(struct rules *rules, struct commcheck_limits *out, struct sd_error *err)
{
    *out = (struct commcheck_limits){.consecutive_failures = 2,
                                     .http_timeout_ms = 10000,
                                     .webhook_timeout_ms = 5000,
                                     .concurrency = 8,
                                     .tick_timeout_ms = 60000,
                                     .max_channels = 500};
    bson_t got = BSON_INITIALIZER;
    if (rules_get(rules, "health", "thresholds", &got, err)) {
        bson_destroy(&got);
        return -1;
    }
    struct {
        const char *name;
        int *field;
        int min, max;
    } f[] = {{"consecutive_failures", &out->consecutive_failures, 1, 100},
             {"http_timeout_ms", &out->http_timeout_ms, 100, 300000},
             {"webhook_timeout_ms", &out->webhook_timeout_ms, 100, 300000},
             {"concurrency", &out->concurrency, 1, 256},
             {"tick_timeout_ms", &out->tick_timeout_ms, 1000, 3600000},
             {"max_channels_per_tick", &out->max_channels, 1, 1000000}};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        char path[64];
        snprintf(path, sizeof path, "result.%s", f[i].name);
        int64_t v = int_at(&got, path, *f[i].field);
        if (v < f[i].min || v > f[i].max) {
            bson_destroy(&got);
            return sd_error_set(err, "health.lua: thresholds.%s = %lld is out of range %d-%d",
                                f[i].name, (long long)v, f[i].min, f[i].max);
        }
        *f[i].field = (int)v;
    }
    bson_destroy(&got);
    return 0;
}

/* ---- channels ------------------------------------------------------------ */

static const char *provider_of(const bson_t *ch)
{
    const char *p = utf8_at(ch, "provider");
    if (has(p))
        return p;
    const char *t = utf8_at(ch, "type");
    return t && strcmp(t, "sms") == 0 ? "twilio" : "sendgrid";
}

/* The channel's authenticated domain: `domain`, else the from_email's. */
static const char *domain_of(const bson_t *ch)
{
    const char *d = utf8_at(ch, "domain");
    if (has(d))
        return d;
    const char *from = utf8_at(ch, "from_email");
    const char *at = from ? strrchr(from, '@') : NULL;
    return at && at[1] ? at + 1 : NULL;
}

/* "main" for the account the credentials belong to, else the SID. */
static const char *account_label(const char *sid, const struct commcheck_providers *p)
{
    if (!has(sid) || (p->twilio_main_sid && strcmp(sid, p->twilio_main_sid) == 0))
        return "main";
    return sid;
}

static const char *label_of(const bson_t *ch, char *buf, size_t size)
{
    const char *prov = provider_of(ch), *v = NULL;
    if (strcmp(prov, "twilio") == 0)
        v = utf8_at(ch, "phone_number");
    else if (strcmp(prov, "sendgrid") == 0)
        v = domain_of(ch);
    if (!has(v))
        v = utf8_at(ch, "from_email");
    if (!has(v)) {
        char hex[25];
        hex_at(ch, "_id", hex);
        snprintf(buf, size, "channel %s", hex);
        return buf;
    }
    snprintf(buf, size, "%s", v);
    return buf;
}

#define MAX_CHECKS 4

/* The checks that apply to a channel, with their probe ids. */
static int checks_of(const bson_t *ch, const struct commcheck_providers *p,
                     const char *checks[MAX_CHECKS], char probe_ids[MAX_CHECKS][600])
{
    int n = 0;
    const char *prov = provider_of(ch);
    if (strcmp(prov, "twilio") == 0) {
        const char *acct = account_label(utf8_at(ch, "account_sid"), p);
        checks[n] = "twilio.account";
        snprintf(probe_ids[n++], 600, "twilio.account:%s", acct);
        checks[n] = "twilio.balance";
        probe_ids[n++][0] = '\0'; /* from the account's answer */
        const char *phone = utf8_at(ch, "phone_number");
        checks[n] = "twilio.number";
        snprintf(probe_ids[n++], 600, "twilio.number:%s:%s", acct, phone ? phone : "");
    } else if (strcmp(prov, "sendgrid") == 0) {
        checks[n] = "sendgrid.api_key";
        snprintf(probe_ids[n++], 600, "sendgrid.api_key");
        const char *d = domain_of(ch);
        if (has(d)) {
            checks[n] = "sendgrid.domain";
            snprintf(probe_ids[n++], 600, "sendgrid.domain:%s", d);
        }
    } else if (strcmp(prov, "smtp") == 0) {
        checks[n] = "smtp.connect";
        snprintf(probe_ids[n++], 600, "smtp.connect");
    }
    const char *hook = utf8_at(ch, "webhook_url");
    if (has(hook) && n < MAX_CHECKS) {
        checks[n] = "webhook.endpoint";
        snprintf(probe_ids[n++], 600, "webhook:%s", hook);
    }
    return n;
}

/* The billing account whose balance a Twilio channel depends on: the owner
 * of its account (a sub-account has no balance of its own; Twilio: "Child
 * accounts do not contain balance information"), from round 1's answer. */
static bool billing_label(const struct commcheck_input *in, const bson_t *ch, char *out,
                          size_t size)
{
    char id[600];
    const char *acct = account_label(utf8_at(ch, "account_sid"), in->providers);
    snprintf(id, sizeof id, "twilio.account:%s", acct);
    bson_t ans, body;
    if (!entry_of(in->answers, id, &ans) || int_at(&ans, "status", 0) != 200 ||
        !child_at(&ans, "body", &body))
        return false;
    const char *owner = utf8_at(&body, "owner_account_sid");
    const char *self = utf8_at(&body, "sid");
    if (!has(owner) || (self && strcmp(owner, self) == 0))
        snprintf(out, size, "%s", acct);
    else
        snprintf(out, size, "%s", account_label(owner, in->providers));
    return true;
}

/* ---- probes -------------------------------------------------------------- */

static bool listed(const bson_t *probes, const char *id)
{
    bson_iter_t it;
    if (!bson_iter_init(&it, probes))
        return false;
    while (bson_iter_next(&it)) {
        bson_t p;
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&it, &len, &data);
        bson_init_static(&p, data, len);
        const char *pid = utf8_at(&p, "id");
        if (pid && strcmp(pid, id) == 0)
            return true;
    }
    return false;
}

static void trim_base(const char *base, char *out, size_t size)
{
    snprintf(out, size, "%s", base ? base : "");
    size_t n = strlen(out);
    while (n && out[n - 1] == '/')
        out[--n] = '\0';
}

static void add_probe_m(bson_t *probes, uint32_t *n, const char *id, const char *kind,
                        const char *method, const char *url, const char *auth, int timeout_ms)
{
    char k[12];
    idx(k, sizeof k, (*n)++);
    bson_t p;
    BSON_APPEND_DOCUMENT_BEGIN(probes, k, &p);
    BSON_APPEND_UTF8(&p, "id", id);
    BSON_APPEND_UTF8(&p, "kind", kind);
    BSON_APPEND_UTF8(&p, "method", method);
    BSON_APPEND_UTF8(&p, "url", url);
    BSON_APPEND_UTF8(&p, "auth", auth);
    BSON_APPEND_INT32(&p, "timeout_ms", timeout_ms);
    bson_append_document_end(probes, &p);
}

static void add_probe(bson_t *probes, uint32_t *n, const char *id, const char *kind,
                      const char *url, const char *auth, int timeout_ms)
{
    add_probe_m(probes, n, id, kind, "GET", url, auth, timeout_ms);
}

/* The authenticated-domain entry of the channel in round 1's answer to
 * GET /v3/whitelabel/domains?domain=… (matched by domain_id when the channel
 * has one, else by name). */
static bool domain_entry(const struct commcheck_input *in, const bson_t *ch, const char *probe_id,
                         bson_t *entry)
{
    bson_t ans, body;
    if (!entry_of(in->answers, probe_id, &ans) || int_at(&ans, "status", 0) != 200 ||
        !child_at(&ans, "body", &body))
        return false;
    const char *domain = domain_of(ch);
    int64_t want_id = int_at(ch, "domain_id", -1);
    bson_iter_t it;
    if (!bson_iter_init(&it, &body))
        return false;
    while (bson_iter_next(&it)) {
        if (!BSON_ITER_HOLDS_DOCUMENT(&it))
            continue;
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&it, &len, &data);
        bson_init_static(entry, data, len);
        const char *d = utf8_at(entry, "domain");
        if (want_id >= 0 ? int_at(entry, "id", -2) == want_id
                         : (d && domain && strcasecmp(d, domain) == 0))
            return true;
    }
    return false;
}

static const char *sid_of_label(const char *label, const struct commcheck_providers *p)
{
    return strcmp(label, "main") == 0 && p->twilio_main_sid ? p->twilio_main_sid : label;
}

static bool http_url(const char *u)
{
    return u && (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0);
}

uint32_t commcheck_plan_probes(const struct commcheck_input *in, int round, bson_t *probes)
{
    const struct commcheck_providers *p = in->providers;
    int api_ms = in->limits->http_timeout_ms, hook_ms = in->limits->webhook_timeout_ms;
    char tw[512], sg[512];
    trim_base(p->twilio_base, tw, sizeof tw);
    trim_base(p->sendgrid_base, sg, sizeof sg);
    uint32_t n = 0;
    for (size_t c = 0; c < in->n_channels; c++) {
        const bson_t *ch = in->channels[c];
        const char *checks[MAX_CHECKS];
        char ids[MAX_CHECKS][600];
        int k = checks_of(ch, p, checks, ids);
        for (int i = 0; i < k; i++) {
            char url[1400], id[600];
            bson_t have;
            snprintf(id, sizeof id, "%s", ids[i]);
            if (round == 2 && strcmp(checks[i], "sendgrid.domain") == 0 && p->sendgrid_ready) {
                /* Ask SendGrid to validate now: the listed `valid` flags are
                 * those of the last validation, not of the DNS today. */
                bson_t entry;
                if (!domain_entry(in, ch, ids[i], &entry))
                    continue;
                snprintf(id, sizeof id, "sendgrid.validate:%lld",
                         (long long)int_at(&entry, "id", 0));
                if (entry_of(in->answers, id, &have) || listed(probes, id))
                    continue;
                snprintf(url, sizeof url, "%s/v3/whitelabel/domains/%lld/validate", sg,
                         (long long)int_at(&entry, "id", 0));
                add_probe_m(probes, &n, id, "http", "POST", url, "sendgrid", api_ms);
                continue;
            }
            if (round == 2) {
                if (strcmp(checks[i], "twilio.balance") != 0 || !p->twilio_ready)
                    continue;
                char label[128];
                if (!billing_label(in, ch, label, sizeof label))
                    continue;
                snprintf(id, sizeof id, "twilio.balance:%s", label);
                if (entry_of(in->answers, id, &have) || listed(probes, id))
                    continue;
                char *e = http_escape(sid_of_label(label, p));
                snprintf(url, sizeof url, "%s/2010-04-01/Accounts/%s/Balance.json", tw,
                         e ? e : "");
                free(e);
                add_probe(probes, &n, id, "http", url, "twilio", api_ms);
                continue;
            }
            if (!id[0] || entry_of(in->answers, id, &have) || listed(probes, id))
                continue;
            const char *check = checks[i];
            if (strncmp(check, "twilio.", 7) == 0) {
                if (!p->twilio_ready)
                    continue;
                const char *label = id + strlen(check) + 1;
                char acct[128];
                snprintf(acct, sizeof acct, "%.*s", (int)strcspn(label, ":"), label);
                char *e = http_escape(sid_of_label(acct, p));
                if (strcmp(check, "twilio.number") == 0 && !has(utf8_at(ch, "phone_number"))) {
                    free(e);
                    continue;
                }
                if (strcmp(check, "twilio.account") == 0) {
                    snprintf(url, sizeof url, "%s/2010-04-01/Accounts/%s.json", tw, e ? e : "");
                } else {
                    char *ph = http_escape(utf8_at(ch, "phone_number"));
                    snprintf(url, sizeof url,
                             "%s/2010-04-01/Accounts/%s/IncomingPhoneNumbers.json?PhoneNumber=%s",
                             tw, e ? e : "", ph ? ph : "");
                    free(ph);
                }
                free(e);
                add_probe(probes, &n, id, "http", url, "twilio", api_ms);
            } else if (strcmp(check, "sendgrid.api_key") == 0) {
                if (!p->sendgrid_ready)
                    continue;
                snprintf(url, sizeof url, "%s/v3/scopes", sg);
                add_probe(probes, &n, id, "http", url, "sendgrid", api_ms);
            } else if (strcmp(check, "sendgrid.domain") == 0) {
                if (!p->sendgrid_ready)
                    continue;
                char *e = http_escape(domain_of(ch));
                snprintf(url, sizeof url, "%s/v3/whitelabel/domains?domain=%s", sg, e ? e : "");
                free(e);
                add_probe(probes, &n, id, "http", url, "sendgrid", api_ms);
            } else if (strcmp(check, "smtp.connect") == 0) {
                if (!p->smtp_ready)
                    continue;
                add_probe(probes, &n, id, "smtp", p->smtp_url, "smtp", api_ms);
            } else if (strcmp(check, "webhook.endpoint") == 0 &&
                       http_url(utf8_at(ch, "webhook_url"))) {
                add_probe(probes, &n, id, "http", utf8_at(ch, "webhook_url"), "none", hook_ms);
            }
        }
    }
    return n;
}

/* ---- what an answer means ---------------------------------------------- */

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

static void obs_init(struct observation *o)
{
    memset(o, 0, sizeof *o);
    bson_init(&o->result);
}

static void obs_ok(struct observation *o, const char *fmt, const char *a)
{
    BSON_APPEND_BOOL(&o->result, "ok", true);
    snprintf(o->message, sizeof o->message, fmt, a ? a : "");
}

/* A definite problem with the channel. */
static void obs_broken(struct observation *o)
{
    BSON_APPEND_BOOL(&o->result, "ok", false);
    BSON_APPEND_BOOL(&o->result, "definitive", true);
    snprintf(o->cause, sizeof o->cause, "channel_broken");
}

static const char *provider_name(const char *check)
{
    if (strncmp(check, "twilio.", 7) == 0)
        return "Twilio";
    if (strncmp(check, "sendgrid.", 9) == 0)
        return "SendGrid";
    if (strncmp(check, "smtp.", 5) == 0)
        return "the SMTP server";
    return "the webhook endpoint";
}

/* The transport-level part every answer shares. Returns true when it decided
 * the observation (no usable HTTP answer, or an error status). */
static bool obs_transport(struct observation *o, const char *check, const bson_t *ans)
{
    const char *failure = utf8_at(ans, "failure");
    const char *error = utf8_at(ans, "error");
    long status = (long)int_at(ans, "status", 0);
    o->http_status = status;
    bool webhook = strcmp(check, "webhook.endpoint") == 0;
    if (has(failure)) {
        BSON_APPEND_BOOL(&o->result, "ok", false);
        if (strcmp(failure, "tls") == 0 && webhook) {
            BSON_APPEND_BOOL(&o->result, "definitive", true);
            BSON_APPEND_BOOL(&o->result, "tls", true);
            snprintf(o->cause, sizeof o->cause, "channel_broken");
            snprintf(o->message, sizeof o->message,
                     "the webhook's TLS certificate was not accepted: %s", error ? error : "");
            return true;
        }
        if (strcmp(failure, "login_denied") == 0 || strcmp(failure, "no_starttls") == 0) {
            BSON_APPEND_BOOL(&o->result, "definitive", true);
            snprintf(o->cause, sizeof o->cause, "channel_broken");
            snprintf(o->message, sizeof o->message, "%s",
                     strcmp(failure, "login_denied") == 0
                         ? "the SMTP server rejected the login (SMTP_USER / SMTP_PASSWORD)"
                         : "the SMTP server does not offer STARTTLS; mail would go out in clear "
                           "text");
            return true;
        }
        if (strcmp(failure, "timeout") == 0)
            BSON_APPEND_BOOL(&o->result, "timeout", true);
        BSON_APPEND_BOOL(&o->result, "unreachable", true);
        snprintf(o->cause, sizeof o->cause, webhook ? "endpoint_unreachable" : "provider_unreachable");
        snprintf(o->message, sizeof o->message, "%s could not be reached: %s",
                 provider_name(check), error ? error : failure);
        return true;
    }
    if (status)
        BSON_APPEND_INT64(&o->result, "status", status);
    if (webhook || strcmp(check, "smtp.connect") == 0)
        return false; /* their own rules */
    if (status >= 200 && status < 300)
        return false;
    BSON_APPEND_BOOL(&o->result, "ok", false);
    if (status == 401 || status == 403) {
        snprintf(o->cause, sizeof o->cause, "channel_broken");
        if (strncmp(check, "twilio.", 7) == 0)
            snprintf(o->message, sizeof o->message,
                     "Twilio rejected the credentials (%ld %s): TWILIO_ACCOUNT_SID / "
                     "TWILIO_AUTH_TOKEN are wrong or revoked", status, http_reason(status));
        else
            snprintf(o->message, sizeof o->message,
                     "SendGrid rejected the API key (%ld %s): it is invalid, expired or revoked",
                     status, http_reason(status));
        return true;
    }
    if (status == 429 || status >= 500) {
        BSON_APPEND_BOOL(&o->result, "unreachable", true);
        snprintf(o->cause, sizeof o->cause, "provider_unreachable");
        snprintf(o->message, sizeof o->message, "%s answered %ld %s", provider_name(check), status,
                 http_reason(status));
        return true;
    }
    return false; /* 404 and friends: the check's own meaning */
}

/* A date in ms, and the days from now to it (negative when past). */
static void observe_webhook(struct observation *o, const bson_t *ans, const char *url,
                            int64_t now_ms)
{
    long status = (long)int_at(ans, "status", 0);
    if (status >= 500) {
        BSON_APPEND_BOOL(&o->result, "ok", false);
        BSON_APPEND_BOOL(&o->result, "unreachable", true);
        snprintf(o->cause, sizeof o->cause, "endpoint_unreachable");
        snprintf(o->message, sizeof o->message, "the webhook %s answered %ld %s", url, status,
                 http_reason(status));
        return;
    }
    /* Any status below 500 counts (SPEC §7): endpoints commonly answer an
     * unsigned probe with 403 or 405. */
    bson_iter_t it;
    if (bson_iter_init_find(&it, ans, "cert_expires_at") && BSON_ITER_HOLDS_DATE_TIME(&it)) {
        int64_t exp = bson_iter_date_time(&it);
        int64_t days = (exp - now_ms) / 86400000;
        char when[40];
        clock_format_iso(exp, when, sizeof when);
        BSON_APPEND_INT64(&o->result, "cert_days_left", days);
        BSON_APPEND_DATE_TIME(&o->result, "cert_expires_at", exp);
        snprintf(o->message, sizeof o->message,
                 "the webhook %s answered %ld; its TLS certificate expires on %.10s (in %lld "
                 "day%s)", url, status, when, (long long)days, days == 1 ? "" : "s");
        snprintf(o->cause, sizeof o->cause, "channel_broken");
    } else {
        snprintf(o->message, sizeof o->message, "the webhook %s answered %ld", url, status);
    }
    BSON_APPEND_BOOL(&o->result, "ok", true);
}

static void observe(const struct commcheck_input *in, const bson_t *ch, const char *check,
                    const char *probe_id, struct observation *o)
{
    obs_init(o);
    bson_t ans;
    char label[128];
    /* What the channel document itself gets wrong needs no request. */
    if (strcmp(check, "twilio.number") == 0 && !has(utf8_at(ch, "phone_number"))) {
        obs_broken(o);
        snprintf(o->message, sizeof o->message, "the channel has no phone_number");
        return;
    }
    if (strcmp(check, "webhook.endpoint") == 0 && !http_url(utf8_at(ch, "webhook_url"))) {
        obs_broken(o);
        snprintf(o->target, sizeof o->target, "%s", utf8_at(ch, "webhook_url"));
        snprintf(o->message, sizeof o->message, "the webhook_url %s is not an http(s) URL",
                 o->target);
        return;
    }
    if (strcmp(check, "twilio.balance") == 0) {
        if (!billing_label(in, ch, label, sizeof label)) {
            o->unchecked = true;
            snprintf(o->message, sizeof o->message,
                     "not checked: the account fetch gave no billing account");
            return;
        }
        char id[200];
        snprintf(id, sizeof id, "twilio.balance:%s", label);
        snprintf(o->target, sizeof o->target, "%s", sid_of_label(label, in->providers));
        if (!entry_of(in->answers, id, &ans)) {
            o->unchecked = true;
            snprintf(o->message, sizeof o->message, "not checked this tick");
            return;
        }
    } else if (!entry_of(in->answers, probe_id, &ans)) {
        o->unchecked = true;
        snprintf(o->message, sizeof o->message, "%s",
                 strncmp(check, "twilio.", 7) == 0 && !in->providers->twilio_ready
                     ? "not checked: TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN are not set"
                 : strncmp(check, "sendgrid.", 9) == 0 && !in->providers->sendgrid_ready
                     ? "not checked: SENDGRID_API_KEY is not set"
                 : strncmp(check, "smtp.", 5) == 0 && !in->providers->smtp_ready
                     ? "not checked: SMTP_URL is not set"
                     : "not checked this tick");
        return;
    }
    if (!o->target[0]) {
        const char *colon = strchr(probe_id, ':');
        snprintf(o->target, sizeof o->target, "%s", colon ? colon + 1 : "");
        if (strcmp(check, "twilio.number") == 0 || strcmp(check, "twilio.account") == 0) {
            const char *v = strcmp(check, "twilio.number") == 0 ? utf8_at(ch, "phone_number")
                                                                : utf8_at(ch, "account_sid");
            snprintf(o->target, sizeof o->target, "%s",
                     has(v) ? v : (in->providers->twilio_main_sid ? in->providers->twilio_main_sid
                                                                  : "main account"));
        } else if (strcmp(check, "sendgrid.api_key") == 0) {
            snprintf(o->target, sizeof o->target, "SENDGRID_API_KEY");
        } else if (strcmp(check, "smtp.connect") == 0) {
            snprintf(o->target, sizeof o->target, "SMTP_URL");
        }
    }
    if (strcmp(check, "sendgrid.domain") == 0 && (int_at(&ans, "status", 0) == 401 ||
                                                  int_at(&ans, "status", 0) == 403)) {
        /* The key itself is refused: sendgrid.api_key reports that once. */
        o->unchecked = true;
        snprintf(o->message, sizeof o->message, "not checked: SendGrid refused the API key");
        return;
    }
    if (obs_transport(o, check, &ans))
        return;
    long status = (long)int_at(&ans, "status", 0);
    bson_t body;
    bool have_body = child_at(&ans, "body", &body);
    if (strcmp(check, "webhook.endpoint") == 0) {
        observe_webhook(o, &ans, utf8_at(ch, "webhook_url"), in->now_ms);
    } else if (strcmp(check, "smtp.connect") == 0) {
        if (status >= 500) {
            obs_broken(o);
            snprintf(o->message, sizeof o->message, "the SMTP server refused the session (reply "
                     "%ld)", status);
        } else if (status >= 400) {
            BSON_APPEND_BOOL(&o->result, "ok", false);
            BSON_APPEND_BOOL(&o->result, "unreachable", true);
            snprintf(o->cause, sizeof o->cause, "provider_unreachable");
            snprintf(o->message, sizeof o->message, "the SMTP server is temporarily refusing "
                     "(reply %ld)", status);
        } else {
            obs_ok(o, "the SMTP server accepted the session%s", "");
        }
    } else if (strcmp(check, "twilio.account") == 0) {
        const char *st = have_body ? utf8_at(&body, "status") : NULL;
        if (status == 404) {
            obs_broken(o);
            snprintf(o->message, sizeof o->message, "Twilio has no account %s (404)", o->target);
        } else if (st && strcmp(st, "active") == 0) {
            obs_ok(o, "the account is active%s", "");
        } else {
            obs_broken(o);
            snprintf(o->message, sizeof o->message, "the Twilio account %s is %s", o->target,
                     st ? st : "in an unknown state");
        }
        if (st)
            BSON_APPEND_UTF8(&o->result, "account_status", st);
    } else if (strcmp(check, "twilio.balance") == 0) {
        char text[64] = "";
        const char *b = have_body ? utf8_at(&body, "balance") : NULL;
        const char *cur = have_body ? utf8_at(&body, "currency") : NULL;
        char *end = NULL;
        double amount = b ? strtod(b, &end) : 0;
        if (status == 404 || !b || end == b) {
            o->unchecked = true;
            snprintf(o->message, sizeof o->message, "Twilio gave no balance for %s", o->target);
            bson_reinit(&o->result);
            return;
        }
        snprintf(text, sizeof text, "%s %s", b, cur ? cur : "");
        BSON_APPEND_DOUBLE(&o->result, "balance", amount);
        if (cur)
            BSON_APPEND_UTF8(&o->result, "currency", cur);
        BSON_APPEND_BOOL(&o->result, "ok", true); /* health.lua judges the amount */
        snprintf(o->message, sizeof o->message, "the Twilio balance is %s", text);
        snprintf(o->cause, sizeof o->cause, "channel_broken");
    } else if (strcmp(check, "twilio.number") == 0) {
        bson_t first;
        const char *want = utf8_at(ch, "webhook_url");
        if (!have_body || !child_at(&body, "incoming_phone_numbers.0", &first)) {
            obs_broken(o);
            snprintf(o->message, sizeof o->message, "the number %s is not on the Twilio account",
                     o->target);
        } else {
            bson_iter_t it;
            bool sms = bson_iter_init(&it, &first) &&
                       bson_iter_find_descendant(&it, "capabilities.sms", &it) &&
                       bson_iter_as_bool(&it);
            const char *url = utf8_at(&first, "sms_url");
            const char *app = utf8_at(&first, "sms_application_sid");
            size_t wl = want ? strlen(want) : 0, ul = url ? strlen(url) : 0;
            while (wl && want[wl - 1] == '/')
                wl--;
            while (ul && url[ul - 1] == '/')
                ul--;
            if (!sms) {
                obs_broken(o);
                snprintf(o->message, sizeof o->message, "the number %s is not SMS-capable",
                         o->target);
            } else if (has(app) || has(utf8_at(ch, "messaging_service_sid"))) {
                obs_ok(o, "the number is SMS-capable; its messages are routed by %s",
                       has(app) ? app : utf8_at(ch, "messaging_service_sid"));
            } else if (want && !(wl == ul && strncmp(want, url, wl) == 0)) {
                obs_broken(o);
                snprintf(o->message, sizeof o->message,
                         "the number %s sends incoming SMS to %s, not to the channel's webhook "
                         "%s", o->target, has(url) ? url : "(no sms_url)", want);
            } else {
                obs_ok(o, "the number is SMS-capable and points at the webhook%s", "");
            }
        }
    } else if (strcmp(check, "sendgrid.api_key") == 0) {
        bool mail_send = false;
        bson_t scopes;
        bson_iter_t it;
        if (have_body && child_at(&body, "scopes", &scopes) && bson_iter_init(&it, &scopes))
            while (bson_iter_next(&it))
                if (BSON_ITER_HOLDS_UTF8(&it) && strcmp(bson_iter_utf8(&it, NULL), "mail.send") == 0)
                    mail_send = true;
        if (mail_send) {
            obs_ok(o, "the API key works and may send mail%s", "");
        } else {
            obs_broken(o);
            snprintf(o->message, sizeof o->message, "%s",
                     status == 200 ? "the API key works but lacks the mail.send scope"
                                   : "SendGrid did not accept the key check");
        }
    } else if (strcmp(check, "sendgrid.domain") == 0) {
        const char *domain = domain_of(ch);
        bson_t entry;
        if (!domain_entry(in, ch, probe_id, &entry)) {
            obs_broken(o);
            snprintf(o->message, sizeof o->message,
                     "%s is not an authenticated domain in SendGrid", domain ? domain : "?");
            return;
        }
        /* The live validation when it answered, else the listed state. Each
         * record on its own: SendGrid's own example pairs valid:true with an
         * invalid mail_cname (reference/providers.md §7). */
        char vid[64];
        snprintf(vid, sizeof vid, "sendgrid.validate:%lld", (long long)int_at(&entry, "id", 0));
        bson_t vans, vbody, results;
        bool live = entry_of(in->answers, vid, &vans) && int_at(&vans, "status", 0) == 200 &&
                    child_at(&vans, "body", &vbody) &&
                    child_at(&vbody, "validation_results", &results);
        bson_t dns;
        bool have_dns = child_at(&entry, "dns", &dns);
        char bad[450] = "";
        bson_iter_t r;
        if ((live || have_dns) && bson_iter_init(&r, live ? &results : &dns)) {
            while (bson_iter_next(&r)) {
                if (!BSON_ITER_HOLDS_DOCUMENT(&r))
                    continue;
                bson_t rec, listed_rec;
                uint32_t len;
                const uint8_t *data;
                bson_iter_document(&r, &len, &data);
                bson_init_static(&rec, data, len);
                bson_iter_t v;
                if (!bson_iter_init_find(&v, &rec, "valid") || bson_iter_as_bool(&v))
                    continue;
                const char *name = bson_iter_key(&r);
                char path[80];
                snprintf(path, sizeof path, "dns.%s", name);
                bool has_listed = child_at(&entry, path, &listed_rec);
                const char *type = has_listed ? utf8_at(&listed_rec, "type") : NULL;
                const char *host = has_listed ? utf8_at(&listed_rec, "host") : NULL;
                const char *val = has_listed ? utf8_at(&listed_rec, "data") : NULL;
                const char *reason = live ? utf8_at(&rec, "reason") : NULL;
                size_t l = strlen(bad);
                if (host)
                    snprintf(bad + l, sizeof bad - l, "%s%s (%s %s → %s)%s%s", l ? "; " : "",
                             name, type ? type : "?", host, val ? val : "?",
                             has(reason) ? ": " : "", has(reason) ? reason : "");
                else
                    snprintf(bad + l, sizeof bad - l, "%s%s%s%s", l ? "; " : "", name,
                             has(reason) ? ": " : "", has(reason) ? reason : "");
            }
        }
        bson_iter_t v;
        bool valid = live ? bson_iter_init_find(&v, &vbody, "valid") && bson_iter_as_bool(&v)
                          : bson_iter_init_find(&v, &entry, "valid") && bson_iter_as_bool(&v);
        if (valid && !bad[0]) {
            obs_ok(o, "the domain %s is authenticated and every DNS record valid", domain);
        } else {
            obs_broken(o);
            if (bad[0])
                BSON_APPEND_UTF8(&o->result, "failing_records", bad);
            snprintf(o->message, sizeof o->message,
                     "the authenticated domain %s is not valid%s%s", domain ? domain : "?",
                     bad[0] ? ": failing DNS record " : "", bad);
        }
    }
}

/* ---- alerts -------------------------------------------------------------- */

static int sev_rank(const char *s)
{
    return !s ? 0 : strcmp(s, "critical") == 0 ? 2 : strcmp(s, "warning") == 0 ? 1 : 0;
}

static const bson_t *open_alert(const struct commcheck_input *in, const char *key)
{
    for (size_t i = 0; i < in->n_alerts; i++) {
        const char *k = utf8_at(in->alerts[i], "key");
        if (k && strcmp(k, key) == 0)
            return in->alerts[i];
    }
    return NULL;
}

static const char *recipient_id(const bson_t *r)
{
    const char *v;
    if ((v = utf8_at(r, "user_id")) || (v = utf8_at(r, "email")) || (v = utf8_at(r, "phone")))
        return v;
    return "unknown";
}

struct event {
    const char *state;        /* opened | resolved | escalated */
    const char *severity;
    const char *check;
    const char *channel;      /* label */
    const char *message;
    const char *reason;       /* resolve */
    const char *key_basis;    /* unique per transition */
    const bson_t *channel_doc;
    const bson_oid_t *channel_id;
};

/* Renders one outbox entry per manager of the room into list. */
static int add_notifications(const struct commcheck_input *in, const bson_t *room,
                             const struct event *ev, bson_t *list, struct sd_error *err)
{
    if (!room)
        return 0;
    bson_t args = BSON_INITIALIZER, out = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&args, "0", ALERT_NOTIFICATION_TYPE);
    BSON_APPEND_NULL(&args, "1");
    BSON_APPEND_DOCUMENT(&args, "2", room);
    if (call(in->rules, "notify", "recipients", &args, &out, err)) {
        bson_destroy(&out);
        return -1;
    }
    bson_t advice = BSON_INITIALIZER;
    char path[64];
    snprintf(path, sizeof path, "result");
    const char *action = NULL;
    struct sd_error ignore;
    if (rules_get(in->rules, "health", "advice", &advice, &ignore) == 0) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, &advice, "result") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
            bson_t a;
            if (child_at(&advice, "result", &a)) {
                bson_iter_t f;
                if (bson_iter_init(&f, &a))
                    while (bson_iter_next(&f))
                        if (strcmp(bson_iter_key(&f), ev->check) == 0 && BSON_ITER_HOLDS_UTF8(&f))
                            action = bson_iter_utf8(&f, NULL);
            }
        }
    }
    bson_t rlist;
    bson_iter_t it;
    uint32_t n = 0;
    bson_iter_t cnt;
    if (bson_iter_init(&cnt, list))
        while (bson_iter_next(&cnt))
            n++;
    int rc = 0;
    if (child_at(&out, "result", &rlist) && bson_iter_init(&it, &rlist)) {
        while (rc == 0 && bson_iter_next(&it)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&it))
                continue;
            bson_t rec;
            uint32_t len;
            const uint8_t *data;
            bson_iter_document(&it, &len, &data);
            bson_init_static(&rec, data, len);
            bson_t ctx = BSON_INITIALIZER, e, rendered = BSON_INITIALIZER, rargs = BSON_INITIALIZER;
            BSON_APPEND_DOCUMENT(&ctx, "room", room);
            BSON_APPEND_DOCUMENT(&ctx, "recipient", &rec);
            if (ev->channel_doc)
                BSON_APPEND_DOCUMENT(&ctx, "channel", ev->channel_doc);
            BSON_APPEND_DOCUMENT_BEGIN(&ctx, "event", &e);
            BSON_APPEND_UTF8(&e, "state", ev->state);
            BSON_APPEND_UTF8(&e, "severity", ev->severity);
            BSON_APPEND_UTF8(&e, "check", ev->check);
            BSON_APPEND_UTF8(&e, "channel", ev->channel);
            BSON_APPEND_UTF8(&e, "message", ev->message ? ev->message : "");
            if (ev->reason)
                BSON_APPEND_UTF8(&e, "reason", ev->reason);
            if (action)
                BSON_APPEND_UTF8(&e, "action", action);
            bson_append_document_end(&ctx, &e);
            BSON_APPEND_INT64(&ctx, "now", in->now_ms);
            BSON_APPEND_UTF8(&rargs, "0", ALERT_NOTIFICATION_TYPE);
            BSON_APPEND_DOCUMENT(&rargs, "1", &ctx);
            bson_destroy(&ctx);
            rc = call(in->rules, "templates", "render", &rargs, &rendered, err);
            if (rc == 0) {
                char key[400], k[12];
                snprintf(key, sizeof key, "channel.alert:%s:%s", ev->key_basis, recipient_id(&rec));
                idx(k, sizeof k, n++);
                bson_t entry, r;
                BSON_APPEND_DOCUMENT_BEGIN(list, k, &entry);
                BSON_APPEND_UTF8(&entry, "key", key);
                BSON_APPEND_UTF8(&entry, "type", ALERT_NOTIFICATION_TYPE);
                if (ev->channel_id)
                    BSON_APPEND_OID(&entry, "channel_id", ev->channel_id);
                BSON_APPEND_DOCUMENT_BEGIN(&entry, "recipient", &r);
                bson_iter_t f;
                if (bson_iter_init(&f, &rec))
                    while (bson_iter_next(&f))
                        if (strcmp(bson_iter_key(&f), "via") != 0)
                            bson_append_iter(&r, NULL, 0, &f);
                bson_append_document_end(&entry, &r);
                const char *via = utf8_at(&rec, "via");
                BSON_APPEND_UTF8(&entry, "via", via ? via : "email");
                const char *from = utf8_at(room, "email_from");
                if (from)
                    BSON_APPEND_UTF8(&entry, "from", from);
                BSON_APPEND_UTF8(&entry, "status", "pending");
                BSON_APPEND_INT32(&entry, "attempts", 0);
                BSON_APPEND_DATE_TIME(&entry, "next_attempt_at", in->now_ms);
                const char *fields[] = {"subject", "text", "html"};
                for (int i = 0; i < 3; i++) {
                    snprintf(path, sizeof path, "result.%s", fields[i]);
                    const char *v = utf8_at(&rendered, path);
                    BSON_APPEND_UTF8(&entry, fields[i], v ? v : "");
                }
                BSON_APPEND_DATE_TIME(&entry, "created_at", in->now_ms);
                bson_append_document_end(list, &entry);
            }
            bson_destroy(&rendered);
        }
    }
    bson_destroy(&advice);
    bson_destroy(&out);
    return rc;
}

static bool room_of(const struct commcheck_input *in, const bson_t *doc, bson_t *room)
{
    char hex[25];
    return hex_at(doc, "room_id", hex) && entry_of(in->rooms, hex, room);
}

struct ctx {
    const struct commcheck_input *in;
    bson_t *results, *actions, *streaks, *checked;
    uint32_t n_results, n_actions, n_checked;
    int bad;
};

static void details_of(bson_t *d, const struct observation *o, const char *check,
                       const char *provider, int streak)
{
    BSON_APPEND_UTF8(d, "cause", o->cause[0] ? o->cause : "channel_broken");
    BSON_APPEND_UTF8(d, "provider", provider);
    BSON_APPEND_UTF8(d, "target", o->target);
    BSON_APPEND_UTF8(d, "seen", o->message);
    if (o->http_status)
        BSON_APPEND_INT64(d, "http_status", o->http_status);
    bson_iter_t it;
    const char *copy[] = {"balance", "currency", "cert_expires_at", "cert_days_left",
                          "failing_records", "account_status"};
    for (size_t i = 0; i < sizeof copy / sizeof *copy; i++)
        if (bson_iter_init_find(&it, &o->result, copy[i]))
            bson_append_iter(d, NULL, 0, &it);
    if (streak > 0)
        BSON_APPEND_INT32(d, "consecutive_failures", streak);
    (void)check;
}

/* Appends one action (built in a scratch document so that a failure leaves
 * nothing half-made in the plan). */
static void push_action(struct ctx *c, bson_t *action)
{
    char k[12];
    idx(k, sizeof k, c->n_actions++);
    BSON_APPEND_DOCUMENT(c->actions, k, action);
}

static int resolve(struct ctx *c, const bson_t *alert, const bson_t *room, const char *label,
                   const char *reason, const bson_t *channel_doc, struct sd_error *err)
{
    const struct commcheck_input *in = c->in;
    char id[25], key_basis[80], newkey[200];
    bson_oid_t aoid, coid;
    oid_at(alert, "_id", &aoid);
    bson_oid_to_string(&aoid, id);
    bool has_cid = oid_at(alert, "channel_id", &coid);
    const char *key = utf8_at(alert, "key");
    const char *check = utf8_at(alert, "check");
    snprintf(key_basis, sizeof key_basis, "%s:resolved", id);
    /* The open key is freed for the next incident (FerretDB keeps a unique
     * index even on resolved documents: see commcheck.c). */
    snprintf(newkey, sizeof newkey, "%s:resolved:%s", key ? key : "?", id);
    bson_t a = BSON_INITIALIZER, set, list;
    BSON_APPEND_UTF8(&a, "kind", "resolve");
    BSON_APPEND_UTF8(&a, "target", key ? key : id);
    BSON_APPEND_OID(&a, "alert_id", &aoid);
    BSON_APPEND_UTF8(&a, "channel", label);
    BSON_APPEND_UTF8(&a, "reason", reason);
    BSON_APPEND_DOCUMENT_BEGIN(&a, "set", &set);
    BSON_APPEND_UTF8(&set, "status", "resolved");
    BSON_APPEND_UTF8(&set, "key", newkey);
    BSON_APPEND_DATE_TIME(&set, "resolved_at", in->now_ms);
    BSON_APPEND_UTF8(&set, "resolve_reason", reason);
    BSON_APPEND_DATE_TIME(&set, "updated_at", in->now_ms);
    bson_append_document_end(&a, &set);
    BSON_APPEND_ARRAY_BEGIN(&a, "notifications", &list);
    char why[300];
    snprintf(why, sizeof why, "Resolved: %s.", reason);
    struct event ev = {.state = "resolved",
                       .severity = utf8_at(alert, "severity") ? utf8_at(alert, "severity")
                                                              : "warning",
                       .check = check ? check : "?",
                       .channel = label,
                       .message = utf8_at(alert, "message"),
                       .reason = why,
                       .key_basis = key_basis,
                       .channel_doc = channel_doc,
                       .channel_id = has_cid ? &coid : NULL};
    int rc = add_notifications(in, room, &ev, &list, err);
    bson_append_array_end(&a, &list);
    if (rc == 0)
        push_action(c, &a);
    bson_destroy(&a);
    return rc;
}

static void add_result(struct ctx *c, const char *cid, const char *check,
                       const struct observation *o, const char *outcome, const char *severity,
                       int streak)
{
    char k[12];
    idx(k, sizeof k, c->n_results++);
    bson_t r;
    BSON_APPEND_DOCUMENT_BEGIN(c->results, k, &r);
    BSON_APPEND_UTF8(&r, "channel_id", cid);
    BSON_APPEND_UTF8(&r, "check", check);
    BSON_APPEND_UTF8(&r, "target", o->target);
    BSON_APPEND_UTF8(&r, "outcome", outcome);
    if (severity)
        BSON_APPEND_UTF8(&r, "severity", severity);
    if (o->cause[0] && strcmp(outcome, "ok") != 0)
        BSON_APPEND_UTF8(&r, "cause", o->cause);
    if (streak > 0)
        BSON_APPEND_INT32(&r, "consecutive_failures", streak);
    BSON_APPEND_UTF8(&r, "message", o->message);
    bson_append_document_end(c->results, &r);
}

static void set_streak(struct ctx *c, const char *key, int n, int before)
{
    if (n == before)
        return;
    BSON_APPEND_INT32(c->streaks, key, n);
}

/* One check of one channel: observation → health.lua → alert action. */
static int decide_check(struct ctx *c, const bson_t *ch, const char *cid, const bson_oid_t *coid,
                        const char *check, const char *probe_id, const bson_t *room,
                        const char *label, struct sd_error *err)
{
    const struct commcheck_input *in = c->in;
    struct observation o;
    observe(in, ch, check, probe_id, &o);
    char key[200];
    snprintf(key, sizeof key, "%s:%s", cid, check);
    const bson_t *alert = open_alert(in, key);
    int before = (int)map_int(in->streaks, key);
    if (o.unchecked) {
        add_result(c, cid, check, &o, "unchecked", NULL, before);
        bson_destroy(&o.result);
        return 0;
    }
    bson_t args = BSON_INITIALIZER, out = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&args, "0", check);
    BSON_APPEND_DOCUMENT(&args, "1", &o.result);
    if (call(in->rules, "health", "assess", &args, &out, err)) {
        bson_destroy(&out);
        bson_destroy(&o.result);
        return -1;
    }
    const char *cls = utf8_at(&out, "result.class");
    const char *sev = utf8_at(&out, "result.severity");
    char cls_buf[16], sev_buf[16];
    snprintf(cls_buf, sizeof cls_buf, "%s", cls ? cls : "");
    snprintf(sev_buf, sizeof sev_buf, "%s", sev_rank(sev) ? sev : "warning");
    bson_destroy(&out);
    int rc = 0;
    if (strcmp(cls_buf, "ok") == 0) {
        add_result(c, cid, check, &o, "ok", NULL, 0);
        set_streak(c, key, 0, before);
        if (alert)
            rc = resolve(c, alert, room, label, "the check passes again", ch, err);
        bson_destroy(&o.result);
        return rc;
    }
    if (strcmp(cls_buf, "transient") != 0 && strcmp(cls_buf, "definitive") != 0) {
        bson_destroy(&o.result);
        return sd_error_set(err, "health.lua: assess(\"%s\") returned class \"%s\", not "
                                 "ok/transient/definitive", check, cls_buf);
    }
    bool transient = strcmp(cls_buf, "transient") == 0;
    int streak = transient ? before + 1 : 0;
    set_streak(c, key, streak, before);
    const char *provider = provider_of(ch);
    if (!alert && transient && streak < in->limits->consecutive_failures) {
        add_result(c, cid, check, &o, "transient", sev_buf, streak);
        bson_destroy(&o.result);
        return 0;
    }
    add_result(c, cid, check, &o, transient ? "transient" : "failing", sev_buf, streak);
    bson_t a = BSON_INITIALIZER, list, details = BSON_INITIALIZER;
    details_of(&details, &o, check, provider, transient ? streak : 0);
    char message[800];
    if (transient)
        snprintf(message, sizeof message, "%s (%d failed checks in a row)", o.message, streak);
    else
        snprintf(message, sizeof message, "%s", o.message);
    if (!alert) {
        bson_t doc, d2;
        char basis[300];
        snprintf(basis, sizeof basis, "%s:opened:%lld", key, (long long)in->now_ms);
        BSON_APPEND_UTF8(&a, "kind", "open");
        BSON_APPEND_UTF8(&a, "target", key);
        BSON_APPEND_UTF8(&a, "channel", label);
        BSON_APPEND_DOCUMENT_BEGIN(&a, "alert", &doc);
        BSON_APPEND_UTF8(&doc, "key", key);
        BSON_APPEND_UTF8(&doc, "channel_check", key);
        BSON_APPEND_OID(&doc, "channel_id", coid);
        bson_oid_t room_oid;
        if (oid_at(ch, "room_id", &room_oid))
            BSON_APPEND_OID(&doc, "room_id", &room_oid);
        BSON_APPEND_UTF8(&doc, "check", check);
        BSON_APPEND_UTF8(&doc, "severity", sev_buf);
        BSON_APPEND_UTF8(&doc, "status", "open");
        BSON_APPEND_UTF8(&doc, "message", message);
        BSON_APPEND_DOCUMENT_BEGIN(&doc, "details", &d2);
        bson_concat(&d2, &details);
        bson_append_document_end(&doc, &d2);
        BSON_APPEND_DATE_TIME(&doc, "first_seen_at", in->now_ms);
        BSON_APPEND_DATE_TIME(&doc, "last_seen_at", in->now_ms);
        BSON_APPEND_NULL(&doc, "resolved_at");
        BSON_APPEND_INT32(&doc, "occurrences", 1);
        BSON_APPEND_DATE_TIME(&doc, "created_at", in->now_ms);
        BSON_APPEND_DATE_TIME(&doc, "updated_at", in->now_ms);
        bson_append_document_end(&a, &doc);
        BSON_APPEND_ARRAY_BEGIN(&a, "notifications", &list);
        struct event ev = {.state = "opened", .severity = sev_buf, .check = check,
                           .channel = label, .message = message, .key_basis = basis,
                           .channel_doc = ch, .channel_id = coid};
        rc = add_notifications(in, room, &ev, &list, err);
        bson_append_array_end(&a, &list);
    } else {
        bson_oid_t aoid;
        char aid[25], basis[120];
        oid_at(alert, "_id", &aoid);
        bson_oid_to_string(&aoid, aid);
        const char *was = utf8_at(alert, "severity");
        /* A transient failure of an alert opened for something definite does
         * not tell whether that is fixed: the alert stays as it was, only
         * seen again. */
        bool keep = transient && was;
        const char *now_sev = keep ? was : sev_buf;
        bson_t set, d2;
        BSON_APPEND_UTF8(&a, "kind", "update");
        BSON_APPEND_UTF8(&a, "target", key);
        BSON_APPEND_OID(&a, "alert_id", &aoid);
        BSON_APPEND_UTF8(&a, "channel", label);
        if (was)
            BSON_APPEND_UTF8(&a, "severity_before", was);
        BSON_APPEND_DOCUMENT_BEGIN(&a, "set", &set);
        BSON_APPEND_UTF8(&set, "severity", now_sev);
        if (!keep)
            BSON_APPEND_UTF8(&set, "message", message);
        BSON_APPEND_DOCUMENT_BEGIN(&set, keep ? "details.latest" : "details", &d2);
        bson_concat(&d2, &details);
        bson_append_document_end(&set, &d2);
        BSON_APPEND_DATE_TIME(&set, "last_seen_at", in->now_ms);
        BSON_APPEND_DATE_TIME(&set, "updated_at", in->now_ms);
        bson_append_document_end(&a, &set);
        BSON_APPEND_BOOL(&a, "inc_occurrences", true);
        BSON_APPEND_ARRAY_BEGIN(&a, "notifications", &list);
        if (sev_rank(now_sev) > sev_rank(was)) {
            snprintf(basis, sizeof basis, "%s:severity:%s", aid, now_sev);
            struct event ev = {.state = "escalated", .severity = now_sev, .check = check,
                               .channel = label, .message = message, .key_basis = basis,
                               .channel_doc = ch, .channel_id = coid};
            rc = add_notifications(in, room, &ev, &list, err);
        }
        bson_append_array_end(&a, &list);
    }
    if (rc == 0)
        push_action(c, &a);
    bson_destroy(&a);
    bson_destroy(&details);
    bson_destroy(&o.result);
    return rc;
}

static void warn_doc(const struct commcheck_input *in, const char *what, const char *id,
                     const char *msg)
{
    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, what, id);
    log_msg(LOG_WARN, in->log, "commcheck.bad_document", &f, "%s %s: %s", what, id, msg);
    bson_destroy(&f);
}

static void decide_channel(struct ctx *c, const bson_t *ch)
{
    const struct commcheck_input *in = c->in;
    char cid[25], label[300];
    bson_oid_t coid;
    if (!oid_at(ch, "_id", &coid)) {
        warn_doc(in, "channel_id", "?", "channel without an ObjectId _id; skipped");
        c->bad++;
        return;
    }
    bson_oid_to_string(&coid, cid);
    label_of(ch, label, sizeof label);
    bson_t room;
    bool have_room = room_of(in, ch, &room);
    if (!have_room) {
        warn_doc(in, "channel_id", cid, "room not found; checked, but nobody is notified");
        c->bad++;
    }
    const char *checks[MAX_CHECKS];
    char ids[MAX_CHECKS][600];
    int k = checks_of(ch, in->providers, checks, ids);
    for (int i = 0; i < k; i++) {
        struct sd_error err;
        if (decide_check(c, ch, cid, &coid, checks[i], ids[i], have_room ? &room : NULL, label,
                         &err)) {
            bson_t f = BSON_INITIALIZER;
            BSON_APPEND_UTF8(&f, "channel_id", cid);
            BSON_APPEND_UTF8(&f, "check", checks[i]);
            log_msg(LOG_ERROR, in->log, "commcheck.decide_failed", &f,
                    "channel %s, check %s: %s; left as it was", cid, checks[i], err.message);
            bson_destroy(&f);
            c->bad++;
        }
    }
    /* Open alerts of checks that no longer apply (a webhook_url removed, the
     * provider changed) resolve. */
    for (size_t a = 0; a < in->n_alerts; a++) {
        char acid[25];
        const char *check = utf8_at(in->alerts[a], "check");
        if (!hex_at(in->alerts[a], "channel_id", acid) || strcmp(acid, cid) != 0 || !check)
            continue;
        bool applies = false;
        for (int i = 0; i < k; i++)
            applies = applies || strcmp(checks[i], check) == 0;
        struct sd_error err;
        if (!applies &&
            resolve(c, in->alerts[a], have_room ? &room : NULL, label,
                    "the check no longer applies to this channel", ch, &err))
            c->bad++;
    }
    char kk[12];
    idx(kk, sizeof kk, c->n_checked++);
    BSON_APPEND_UTF8(c->checked, kk, cid);
}

int commcheck_decide(const struct commcheck_input *in, bson_t *results, bson_t *actions,
                     bson_t *streaks, bson_t *checked)
{
    struct ctx c = {.in = in, .results = results, .actions = actions, .streaks = streaks,
                    .checked = checked};
    for (size_t i = 0; i < in->n_channels; i++)
        decide_channel(&c, in->channels[i]);
    /* Alerts of channels not checked this tick: inactive or removed ones
     * resolve; active ones beyond this tick's cap wait. */
    for (size_t a = 0; a < in->n_alerts; a++) {
        const bson_t *alert = in->alerts[a];
        char acid[25];
        hex_at(alert, "channel_id", acid);
        bool checked_now = false;
        for (size_t i = 0; i < in->n_channels && !checked_now; i++) {
            char cid[25];
            checked_now = hex_at(in->channels[i], "_id", cid) && strcmp(cid, acid) == 0;
        }
        if (checked_now)
            continue;
        bson_t ch;
        bool known = entry_of(in->known_channels, acid, &ch);
        bson_iter_t it;
        bool active = known && bson_iter_init_find(&it, &ch, "active") && bson_iter_as_bool(&it);
        if (active)
            continue;
        char label[300];
        if (known)
            label_of(&ch, label, sizeof label);
        else
            snprintf(label, sizeof label, "channel %s", acid);
        bson_t room;
        bool have_room = room_of(in, alert, &room);
        struct sd_error err;
        if (resolve(&c, alert, have_room ? &room : NULL, label,
                    known ? "the channel is inactive" : "the channel no longer exists",
                    known ? &ch : NULL, &err)) {
            warn_doc(in, "alert_channel_id", acid, err.message);
            c.bad++;
        }
    }
    return c.bad;
}
