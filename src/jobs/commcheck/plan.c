/* commcheck_plan — which requests a tick makes, and the channel helpers the
 * other commcheck files share (see model.h and read.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/bson_field.h"
#include "jobs/commcheck/model.h"
#include "jobs/commcheck/read.h"
#include "providers/http.h"
#include "providers/json.h"

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
        int64_t v = bson_path_int(&got, path, *f[i].field);
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

const char *commcheck_provider_of(const bson_t *ch)
{
    const char *p = bson_path_utf8(ch, "provider");
    if (has(p))
        return p;
    const char *t = bson_path_utf8(ch, "type");
    return t && strcmp(t, "sms") == 0 ? "twilio" : "sendgrid";
}

/* The channel's authenticated domain: `domain`, else the from_email's. */
const char *commcheck_domain_of(const bson_t *ch)
{
    const char *d = bson_path_utf8(ch, "domain");
    if (has(d))
        return d;
    const char *from = bson_path_utf8(ch, "from_email");
    const char *at = from ? strrchr(from, '@') : NULL;
    return at && at[1] ? at + 1 : NULL;
}

/* "main" for the account the credentials belong to, else the SID. */
const char *commcheck_account_label(const char *sid, const struct commcheck_providers *p)
{
    if (!has(sid) || (p->twilio_main_sid && strcmp(sid, p->twilio_main_sid) == 0))
        return "main";
    return sid;
}

const char *commcheck_label_of(const bson_t *ch, char *buf, size_t size)
{
    const char *prov = commcheck_provider_of(ch), *v = NULL;
    if (strcmp(prov, "twilio") == 0)
        v = bson_path_utf8(ch, "phone_number");
    else if (strcmp(prov, "sendgrid") == 0)
        v = commcheck_domain_of(ch);
    if (!has(v))
        v = bson_path_utf8(ch, "from_email");
    if (!has(v)) {
        char hex[25];
        hex_at(ch, "_id", hex);
        snprintf(buf, size, "channel %s", hex);
        return buf;
    }
    snprintf(buf, size, "%s", v);
    return buf;
}


/* The checks that apply to a channel, with their probe ids. */
int commcheck_checks_of(const bson_t *ch, const struct commcheck_providers *p,
                     const char *checks[COMMCHECK_MAX_CHECKS], char probe_ids[COMMCHECK_MAX_CHECKS][600])
{
    int n = 0;
    const char *prov = commcheck_provider_of(ch);
    if (strcmp(prov, "twilio") == 0) {
        const char *acct = commcheck_account_label(bson_path_utf8(ch, "account_sid"), p);
        checks[n] = "twilio.account";
        snprintf(probe_ids[n++], 600, "twilio.account:%s", acct);
        checks[n] = "twilio.balance";
        probe_ids[n++][0] = '\0'; /* from the account's answer */
        const char *phone = bson_path_utf8(ch, "phone_number");
        checks[n] = "twilio.number";
        snprintf(probe_ids[n++], 600, "twilio.number:%s:%s", acct, phone ? phone : "");
    } else if (strcmp(prov, "sendgrid") == 0) {
        checks[n] = "sendgrid.api_key";
        snprintf(probe_ids[n++], 600, "sendgrid.api_key");
        const char *d = commcheck_domain_of(ch);
        if (has(d)) {
            checks[n] = "sendgrid.domain";
            snprintf(probe_ids[n++], 600, "sendgrid.domain:%s", d);
        }
    } else if (strcmp(prov, "smtp") == 0) {
        checks[n] = "smtp.connect";
        snprintf(probe_ids[n++], 600, "smtp.connect");
    }
    const char *hook = bson_path_utf8(ch, "webhook_url");
    if (has(hook) && n < COMMCHECK_MAX_CHECKS) {
        checks[n] = "webhook.endpoint";
        snprintf(probe_ids[n++], 600, "webhook:%s", hook);
    }
    return n;
}

/* The billing account whose balance a Twilio channel depends on: the owner
 * of its account (a sub-account has no balance of its own; Twilio: "Child
 * accounts do not contain balance information"), from round 1's answer. */
bool commcheck_billing_label(const struct commcheck_input *in, const bson_t *ch, char *out,
                          size_t size)
{
    char id[600];
    const char *acct = commcheck_account_label(bson_path_utf8(ch, "account_sid"), in->providers);
    snprintf(id, sizeof id, "twilio.account:%s", acct);
    bson_t ans, body;
    if (!entry_of(in->answers, id, &ans) || bson_path_int(&ans, "status", 0) != 200 ||
        !json_child(&ans, "body", &body))
        return false;
    const char *owner = bson_path_utf8(&body, "owner_account_sid");
    const char *self = bson_path_utf8(&body, "sid");
    if (!has(owner) || (self && strcmp(owner, self) == 0))
        snprintf(out, size, "%s", acct);
    else
        snprintf(out, size, "%s", commcheck_account_label(owner, in->providers));
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
        bson_iter_child(&it, &p);
        const char *pid = bson_path_utf8(&p, "id");
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
bool commcheck_domain_entry(const struct commcheck_input *in, const bson_t *ch, const char *probe_id,
                         bson_t *entry)
{
    bson_t ans, body;
    if (!entry_of(in->answers, probe_id, &ans) || bson_path_int(&ans, "status", 0) != 200 ||
        !json_child(&ans, "body", &body))
        return false;
    const char *domain = commcheck_domain_of(ch);
    int64_t want_id = bson_path_int(ch, "domain_id", -1);
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
        const char *d = bson_path_utf8(entry, "domain");
        if (want_id >= 0 ? bson_path_int(entry, "id", -2) == want_id
                         : (d && domain && strcasecmp(d, domain) == 0))
            return true;
    }
    return false;
}

const char *commcheck_sid_of_label(const char *label, const struct commcheck_providers *p)
{
    return strcmp(label, "main") == 0 && p->twilio_main_sid ? p->twilio_main_sid : label;
}

bool commcheck_http_url(const char *u)
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
        const char *checks[COMMCHECK_MAX_CHECKS];
        char ids[COMMCHECK_MAX_CHECKS][600];
        int k = commcheck_checks_of(ch, p, checks, ids);
        for (int i = 0; i < k; i++) {
            char url[1400], id[600];
            bson_t have;
            snprintf(id, sizeof id, "%s", ids[i]);
            if (round == 2 && strcmp(checks[i], "sendgrid.domain") == 0 && p->sendgrid_ready) {
                /* Ask SendGrid to validate now: the listed `valid` flags are
                 * those of the last validation, not of the DNS today. */
                bson_t entry;
                if (!commcheck_domain_entry(in, ch, ids[i], &entry))
                    continue;
                snprintf(id, sizeof id, "sendgrid.validate:%lld",
                         (long long)bson_path_int(&entry, "id", 0));
                if (entry_of(in->answers, id, &have) || listed(probes, id))
                    continue;
                snprintf(url, sizeof url, "%s/v3/whitelabel/domains/%lld/validate", sg,
                         (long long)bson_path_int(&entry, "id", 0));
                add_probe_m(probes, &n, id, "http", "POST", url, "sendgrid", api_ms);
                continue;
            }
            if (round == 2) {
                if (strcmp(checks[i], "twilio.balance") != 0 || !p->twilio_ready)
                    continue;
                char label[128];
                if (!commcheck_billing_label(in, ch, label, sizeof label))
                    continue;
                snprintf(id, sizeof id, "twilio.balance:%s", label);
                if (entry_of(in->answers, id, &have) || listed(probes, id))
                    continue;
                char *e = http_escape(commcheck_sid_of_label(label, p));
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
                char *e = http_escape(commcheck_sid_of_label(acct, p));
                if (strcmp(check, "twilio.number") == 0 &&
                    !has(bson_path_utf8(ch, "phone_number"))) {
                    free(e);
                    continue;
                }
                if (strcmp(check, "twilio.account") == 0) {
                    snprintf(url, sizeof url, "%s/2010-04-01/Accounts/%s.json", tw, e ? e : "");
                } else {
                    char *ph = http_escape(bson_path_utf8(ch, "phone_number"));
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
                char *e = http_escape(commcheck_domain_of(ch));
                snprintf(url, sizeof url, "%s/v3/whitelabel/domains?domain=%s", sg, e ? e : "");
                free(e);
                add_probe(probes, &n, id, "http", url, "sendgrid", api_ms);
            } else if (strcmp(check, "smtp.connect") == 0) {
                if (!p->smtp_ready)
                    continue;
                add_probe(probes, &n, id, "smtp", p->smtp_url, "smtp", api_ms);
            } else if (strcmp(check, "webhook.endpoint") == 0 &&
                       commcheck_http_url(bson_path_utf8(ch, "webhook_url"))) {
                add_probe(probes, &n, id, "http", bson_path_utf8(ch, "webhook_url"), "none",
                          hook_ms);
            }
        }
    }
    return n;
}
