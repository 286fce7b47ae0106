/* commcheck_observe — what a provider's answer means for one check: the
 * observation health.lua's assess() judges (see read.h). Pure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/clock.h"
#include "jobs/commcheck/model.h"
#include "jobs/commcheck/read.h"
#include "providers/curl_shared.h"
#include "providers/http.h"
#include "providers/json.h"

/* ---- what an answer means ---------------------------------------------- */


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
    const char *failure = bson_path_utf8(ans, "failure");
    const char *error = bson_path_utf8(ans, "error");
    long status = (long)bson_path_int(ans, "status", 0);
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
static void observe_webhook(struct observation *o, const bson_t *ans, const char *raw_url,
                            int64_t now_ms)
{
    /* Quoted in the alert, its mail and the log: never its credentials. */
    char url[512];
    curl_url_redacted(raw_url, url, sizeof url);
    long status = (long)bson_path_int(ans, "status", 0);
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

void commcheck_observe(const struct commcheck_input *in, const bson_t *ch, const char *check,
                    const char *probe_id, struct observation *o)
{
    obs_init(o);
    bson_t ans;
    char label[128];
    /* What the channel document itself gets wrong needs no request. */
    if (strcmp(check, "twilio.number") == 0 &&
        !has(bson_path_utf8(ch, "phone_number"))) {
        obs_broken(o);
        snprintf(o->message, sizeof o->message, "the channel has no phone_number");
        return;
    }
    if (strcmp(check, "webhook.endpoint") == 0 &&
        !commcheck_http_url(bson_path_utf8(ch, "webhook_url"))) {
        obs_broken(o);
        curl_url_redacted(bson_path_utf8(ch, "webhook_url"), o->target, sizeof o->target);
        snprintf(o->message, sizeof o->message, "the webhook_url %s is not an http(s) URL",
                 o->target);
        return;
    }
    if (strcmp(check, "twilio.balance") == 0) {
        if (!commcheck_billing_label(in, ch, label, sizeof label)) {
            o->unchecked = true;
            snprintf(o->message, sizeof o->message,
                     "not checked: the account fetch gave no billing account");
            return;
        }
        char id[200];
        snprintf(id, sizeof id, "twilio.balance:%s", label);
        snprintf(o->target, sizeof o->target, "%s", commcheck_sid_of_label(label, in->providers));
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
        /* a URL (the webhook) is stored and mailed without its password */
        curl_url_redacted(colon ? colon + 1 : "", o->target, sizeof o->target);
        if (strcmp(check, "twilio.number") == 0 || strcmp(check, "twilio.account") == 0) {
            const char *v = strcmp(check, "twilio.number") == 0 ? bson_path_utf8(ch, "phone_number")
                                                                : bson_path_utf8(ch, "account_sid");
            snprintf(o->target, sizeof o->target, "%s",
                     has(v) ? v : (in->providers->twilio_main_sid ? in->providers->twilio_main_sid
                                                                  : "main account"));
        } else if (strcmp(check, "sendgrid.api_key") == 0) {
            snprintf(o->target, sizeof o->target, "SENDGRID_API_KEY");
        } else if (strcmp(check, "smtp.connect") == 0) {
            snprintf(o->target, sizeof o->target, "SMTP_URL");
        }
    }
    if (strcmp(check, "sendgrid.domain") == 0 && (bson_path_int(&ans, "status", 0) == 401 ||
                                                  bson_path_int(&ans, "status", 0) == 403)) {
        /* The key itself is refused: sendgrid.api_key reports that once. */
        o->unchecked = true;
        snprintf(o->message, sizeof o->message, "not checked: SendGrid refused the API key");
        return;
    }
    if (obs_transport(o, check, &ans))
        return;
    long status = (long)bson_path_int(&ans, "status", 0);
    bson_t body;
    bool have_body = json_child(&ans, "body", &body);
    if (strcmp(check, "webhook.endpoint") == 0) {
        observe_webhook(o, &ans, bson_path_utf8(ch, "webhook_url"), in->now_ms);
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
        const char *st = have_body ? bson_path_utf8(&body, "status") : NULL;
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
        const char *b = have_body ? bson_path_utf8(&body, "balance") : NULL;
        const char *cur = have_body ? bson_path_utf8(&body, "currency") : NULL;
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
        const char *want = bson_path_utf8(ch, "webhook_url");
        if (!have_body || !json_child(&body, "incoming_phone_numbers.0", &first)) {
            obs_broken(o);
            snprintf(o->message, sizeof o->message, "the number %s is not on the Twilio account",
                     o->target);
        } else {
            bson_iter_t it;
            bool sms = bson_iter_init(&it, &first) &&
                       bson_iter_find_descendant(&it, "capabilities.sms", &it) &&
                       bson_iter_as_bool(&it);
            const char *url = bson_path_utf8(&first, "sms_url");
            const char *app = bson_path_utf8(&first, "sms_application_sid");
            size_t wl = want ? strlen(want) : 0, ul = url ? strlen(url) : 0;
            while (wl && want[wl - 1] == '/')
                wl--;
            while (ul && url[ul - 1] == '/')
                ul--;
            if (!sms) {
                obs_broken(o);
                snprintf(o->message, sizeof o->message, "the number %s is not SMS-capable",
                         o->target);
            } else if (has(app) || has(bson_path_utf8(ch, "messaging_service_sid"))) {
                obs_ok(o, "the number is SMS-capable; its messages are routed by %s",
                       has(app) ? app : bson_path_utf8(ch, "messaging_service_sid"));
            } else if (want && !(wl == ul && strncmp(want, url, wl) == 0)) {
                obs_broken(o);
                char shown_url[512], shown_want[512];
                curl_url_redacted(has(url) ? url : "(no sms_url)", shown_url, sizeof shown_url);
                curl_url_redacted(want, shown_want, sizeof shown_want);
                snprintf(o->message, sizeof o->message,
                         "the number %s sends incoming SMS to %s, not to the channel's webhook "
                         "%s", o->target, shown_url, shown_want);
            } else {
                obs_ok(o, "the number is SMS-capable and points at the webhook%s", "");
            }
        }
    } else if (strcmp(check, "sendgrid.api_key") == 0) {
        bool mail_send = false;
        bson_t scopes;
        bson_iter_t it;
        if (have_body && json_child(&body, "scopes", &scopes) && bson_iter_init(&it, &scopes))
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
        const char *domain = commcheck_domain_of(ch);
        bson_t entry;
        if (!commcheck_domain_entry(in, ch, probe_id, &entry)) {
            obs_broken(o);
            snprintf(o->message, sizeof o->message,
                     "%s is not an authenticated domain in SendGrid", domain ? domain : "?");
            return;
        }
        /* The live validation when it answered, else the listed state. Each
         * record on its own: SendGrid's own example pairs valid:true with an
         * invalid mail_cname (reference/providers.md §7). */
        char vid[64];
        snprintf(vid, sizeof vid, "sendgrid.validate:%lld",
                 (long long)bson_path_int(&entry, "id", 0));
        bson_t vans, vbody, results;
        bool live = entry_of(in->answers, vid, &vans) && bson_path_int(&vans, "status", 0) == 200 &&
                    json_child(&vans, "body", &vbody) &&
                    json_child(&vbody, "validation_results", &results);
        bson_t dns;
        bool have_dns = json_child(&entry, "dns", &dns);
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
                bool has_listed = json_child(&entry, path, &listed_rec);
                const char *type = has_listed ? bson_path_utf8(&listed_rec, "type") : NULL;
                const char *host = has_listed ? bson_path_utf8(&listed_rec, "host") : NULL;
                const char *val = has_listed ? bson_path_utf8(&listed_rec, "data") : NULL;
                const char *reason = live ? bson_path_utf8(&rec, "reason") : NULL;
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
