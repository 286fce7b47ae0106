#include "providers/twilio.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "providers/json.h"

#define API "2010-04-01"

static const char *account_of(const struct twilio *t, const char *sid)
{
    return sid && *sid ? sid : t->account_sid;
}

/* base + "/2010-04-01/Accounts/{sid}" + rest; sid escaped. NULL on OOM. */
static char *url_for(const struct twilio *t, const char *sid, const char *rest)
{
    char *esid = http_escape(sid ? sid : "");
    if (!esid)
        return NULL;
    size_t blen = strlen(t->base);
    while (blen && t->base[blen - 1] == '/')
        blen--;
    size_t n = blen + strlen(esid) + strlen(rest) + 64;
    char *url = malloc(n);
    if (url)
        snprintf(url, n, "%.*s/" API "/Accounts/%s%s", (int)blen, t->base, esid, rest);
    free(esid);
    return url;
}

/* A readable message for a non-2xx Twilio answer: its JSON error when it sent
 * one ({code, message, more_info, status}). */
static int answer_error(const char *what, const char *sid, const struct http_response *resp,
                        struct provider_status *st, struct sd_error *err)
{
    bson_t *doc = NULL;
    char code[16] = "", msg[300] = "";
    if (http_response_json(resp, &doc, NULL) == 0) {
        json_str(doc, "code", code, sizeof code);
        json_str(doc, "message", msg, sizeof msg);
        bson_destroy(doc);
    }
    if (code[0] && strcmp(code, "0") != 0)
        snprintf(st->code, sizeof st->code, "twilio_%s", code);
    long s = resp->status;
    char *clean = log_redact_dup(msg);
    const char *m = clean ? clean : "";
    if (s == 401 || s == 403)
        sd_error_set(err, "Twilio rejected the credentials for account %s on %s (%ld %s)%s%s",
                     sid, what, s, http_reason(s), *m ? ": " : "", m);
    else if (s == 429)
        sd_error_set(err, "Twilio is rate limiting %s (429 Too Many Requests, %d attempts)", what,
                     resp->attempts);
    else
        sd_error_set(err, "Twilio %s for account %s: %ld %s%s%s%s%s%s", what, sid, s,
                     http_reason(s), code[0] ? " (error " : "", code, code[0] ? ")" : "",
                     *m ? ": " : "", m);
    free(clean);
    return -1;
}

/* One call: request → classified outcome → parsed JSON in *doc on 2xx. */
static int call(const struct twilio *t, const char *what, const char *sid, const char *method,
                const char *url, const char *form, bool idempotent, bson_t **doc,
                struct provider_status *st, struct sd_error *err)
{
    struct http_request req = {.method = method,
                               .url = url,
                               .auth = HTTP_AUTH_BASIC,
                               .user = t->account_sid,
                               .secret = t->auth_token,
                               .idempotent = idempotent};
    if (form) {
        req.content_type = "application/x-www-form-urlencoded";
        req.body = form;
        req.body_len = strlen(form);
    }
    struct http_response resp;
    *doc = NULL;
    int rc = http_send(t->http, &req, &resp, err);
    http_classify(rc, &resp, !idempotent, st);
    if (rc != 0) {
        sd_error_prefix(err, "Twilio %s for account %s", what, sid);
    } else if (st->cls != PROVIDER_OK) {
        rc = answer_error(what, sid, &resp, st, err);
    } else if (http_response_json(&resp, doc, err) != 0) {
        /* A 2xx we cannot read. For a send it still means "accepted" (the
         * caller decides); anything else failed, perhaps only this once. */
        snprintf(st->code, sizeof st->code, "bad_answer");
        st->cls = PROVIDER_TRANSIENT;
        sd_error_prefix(err, "Twilio %s for account %s answered %ld but", what, sid, resp.status);
        rc = -1;
    }
    http_response_free(&resp);
    return rc;
}

static void read_message(const bson_t *doc, struct twilio_message *out)
{
    memset(out, 0, sizeof *out);
    char date[64];
    json_str(doc, "sid", out->sid, sizeof out->sid);
    json_str(doc, "status", out->status, sizeof out->status);
    json_str(doc, "error_code", out->error_code, sizeof out->error_code);
    json_str(doc, "error_message", out->error_message, sizeof out->error_message);
    json_str(doc, "to", out->to, sizeof out->to);
    json_str(doc, "from", out->from, sizeof out->from);
    /* RFC 2822 ("Wed, 18 Aug 2021 20:01:03 +0000"), which curl_getdate reads. */
    if (json_str(doc, "date_created", date, sizeof date) && date[0]) {
        time_t tt = curl_getdate(date, NULL);
        if (tt != (time_t)-1)
            out->date_created_ms = (int64_t)tt * 1000;
    }
}

int twilio_send_sms(const struct twilio *t, const struct twilio_sms *sms,
                    struct twilio_message *out, struct provider_status *st, struct sd_error *err)
{
    const char *sid = account_of(t, sms->account_sid);
    provider_status_init(st);
    memset(out, 0, sizeof *out);
    char *form = NULL;
    size_t len = 0;
    bool ok = http_form_add(&form, &len, "To", sms->to) == 0 &&
              /* A Messaging Service SID goes in its own parameter. */
              http_form_add(&form, &len,
                            strncmp(sms->from, "MG", 2) == 0 ? "MessagingServiceSid" : "From",
                            sms->from) == 0 &&
              http_form_add(&form, &len, "Body", sms->body) == 0 &&
              (!sms->status_callback ||
               http_form_add(&form, &len, "StatusCallback", sms->status_callback) == 0);
    char *url = url_for(t, sid, "/Messages.json");
    if (!ok || !url) {
        free(form);
        free(url);
        st->cls = PROVIDER_TRANSIENT;
        return sd_error_set(err, "out of memory");
    }
    bson_t *doc;
    int rc = call(t, "message send", sid, "POST", url, form, false, &doc, st, err);
    if (rc == 0) {
        read_message(doc, out);
        bson_destroy(doc);
    } else if (st->http_status >= 200 && st->http_status < 300) {
        /* Accepted, whatever the body says: never report it as a failure to
         * retry, or the recipient gets the message twice. */
        st->cls = PROVIDER_OK;
        rc = 0;
    }
    free(form);
    free(url);
    return rc;
}

int twilio_fetch_message(const struct twilio *t, const char *account_sid, const char *msid,
                         struct twilio_message *out, struct provider_status *st,
                         struct sd_error *err)
{
    const char *sid = account_of(t, account_sid);
    memset(out, 0, sizeof *out);
    char *esid = http_escape(msid), rest[200];
    snprintf(rest, sizeof rest, "/Messages/%s.json", esid ? esid : "");
    free(esid);
    char *url = url_for(t, sid, rest);
    bson_t *doc;
    int rc = url ? call(t, "message fetch", sid, "GET", url, NULL, true, &doc, st, err)
                 : sd_error_set(err, "out of memory");
    if (rc == 0) {
        read_message(doc, out);
        bson_destroy(doc);
    }
    free(url);
    return rc;
}

static bool excluded(const char *sid, const char *const *exclude, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (exclude[i] && !strcmp(exclude[i], sid))
            return true;
    return false;
}

int twilio_find_message(const struct twilio *t, const struct twilio_sms *sms, int64_t since_ms,
                        const char *const *exclude, size_t n_exclude, struct twilio_message *out,
                        bool *found, struct provider_status *st, struct sd_error *err)
{
    const char *sid = account_of(t, sms->account_sid);
    *found = false;
    memset(out, 0, sizeof *out);
    provider_status_init(st);
    /* A Messaging Service send's `from` is the number Twilio picked from the
     * service's pool, never the MG… SID: list by To alone and match the
     * service on each message. No DateSent filter: it is by UTC date and on
     * date_sent, which a message still queued does not have yet. */
    bool service = strncmp(sms->from, "MG", 2) == 0;
    char *q = NULL;
    size_t len = 0;
    if (http_form_add(&q, &len, "To", sms->to) ||
        (!service && http_form_add(&q, &len, "From", sms->from)) ||
        http_form_add(&q, &len, "PageSize", "50")) {
        free(q);
        return sd_error_set(err, "out of memory");
    }
    size_t rn = len + 32;
    char *rest = malloc(rn);
    if (rest)
        snprintf(rest, rn, "/Messages.json?%s", q);
    free(q);
    char *url = rest ? url_for(t, sid, rest) : NULL;
    free(rest);
    if (!url)
        return sd_error_set(err, "out of memory");
    bson_t *doc;
    int rc = call(t, "message lookup", sid, "GET", url, NULL, true, &doc, st, err);
    free(url);
    if (rc)
        return rc;
    /* date_created has whole seconds: the window opens at the second the send
     * started, less TWILIO_CLOCK_SKEW_MS for our clock being ahead of Twilio's. */
    int64_t from_ms = since_ms / 1000 * 1000 - TWILIO_CLOCK_SKEW_MS;
    size_t body_len = strlen(sms->body);
    bson_t list;
    bson_iter_t it;
    if (json_child(doc, "messages", &list) && bson_iter_init(&it, &list)) {
        /* Twilio lists newest first: the first match is the latest send. */
        while (bson_iter_next(&it) && !*found) {
            bson_t m;
            bson_iter_t b;
            uint32_t blen = 0;
            if (!bson_iter_child(&it, &m) || !bson_iter_init_find(&b, &m, "body") ||
                !BSON_ITER_HOLDS_UTF8(&b))
                continue;
            /* the whole body, byte for byte (up to 1,600 characters: 6,400
             * bytes of UTF-8), as Twilio stores what it was sent */
            const char *body = bson_iter_utf8(&b, &blen);
            struct twilio_message cand;
            read_message(&m, &cand);
            char msid[64];
            json_str(&m, "messaging_service_sid", msid, sizeof msid);
            if (blen == body_len && memcmp(body, sms->body, body_len) == 0 &&
                cand.date_created_ms >= from_ms && !excluded(cand.sid, exclude, n_exclude) &&
                (!service || strcmp(msid, sms->from) == 0)) {
                *out = cand;
                *found = true;
            }
        }
    }
    bson_destroy(doc);
    return 0;
}

/* GET <account>/<suffix> and parse the JSON answer into *doc (caller frees). */
static int get_json(const struct twilio *t, const char *what, const char *sid,
                    const char *suffix, bson_t **doc, struct provider_status *st,
                    struct sd_error *err)
{
    char *url = url_for(t, sid, suffix);
    int rc = url ? call(t, what, sid, "GET", url, NULL, true, doc, st, err)
                 : sd_error_set(err, "out of memory");
    free(url);
    return rc;
}

int twilio_fetch_account(const struct twilio *t, const char *account_sid,
                         struct twilio_account *out, struct provider_status *st,
                         struct sd_error *err)
{
    const char *sid = account_of(t, account_sid);
    memset(out, 0, sizeof *out);
    bson_t *doc;
    int rc = get_json(t, "account fetch", sid, ".json", &doc, st, err);
    if (rc)
        return rc;
    json_str(doc, "sid", out->sid, sizeof out->sid);
    json_str(doc, "status", out->status, sizeof out->status);
    json_str(doc, "type", out->type, sizeof out->type);
    json_str(doc, "friendly_name", out->friendly_name, sizeof out->friendly_name);
    bson_destroy(doc);
    return 0;
}

int twilio_fetch_balance(const struct twilio *t, const char *account_sid,
                         struct twilio_balance *out, struct provider_status *st,
                         struct sd_error *err)
{
    const char *sid = account_of(t, account_sid);
    memset(out, 0, sizeof *out);
    bson_t *doc;
    int rc = get_json(t, "balance fetch", sid, "/Balance.json", &doc, st, err);
    if (rc)
        return rc;
    json_str(doc, "currency", out->currency, sizeof out->currency);
    bool have = json_str(doc, "balance", out->balance, sizeof out->balance);
    bson_destroy(doc);
    char *end = NULL;
    out->amount = have ? strtod(out->balance, &end) : 0;
    if (!have || end == out->balance) {
        snprintf(st->code, sizeof st->code, "bad_answer");
        st->cls = PROVIDER_TRANSIENT;
        return sd_error_set(err, "Twilio balance fetch for account %s: the answer has no "
                                 "numeric balance", sid);
    }
    return 0;
}

int twilio_lookup_number(const struct twilio *t, const char *account_sid, const char *phone,
                         struct twilio_number *out, struct provider_status *st,
                         struct sd_error *err)
{
    const char *sid = account_of(t, account_sid);
    memset(out, 0, sizeof *out);
    char *q = NULL;
    size_t len = 0;
    if (http_form_add(&q, &len, "PhoneNumber", phone)) {
        free(q);
        return sd_error_set(err, "out of memory");
    }
    size_t rn = len + 48;
    char *rest = malloc(rn);
    if (rest)
        snprintf(rest, rn, "/IncomingPhoneNumbers.json?%s", q);
    free(q);
    char *url = rest ? url_for(t, sid, rest) : NULL;
    free(rest);
    bson_t *doc;
    int rc = url ? call(t, "number lookup", sid, "GET", url, NULL, true, &doc, st, err)
                 : sd_error_set(err, "out of memory");
    free(url);
    if (rc)
        return rc;
    bson_t n;
    if (json_child(doc, "incoming_phone_numbers.0", &n)) {
        out->found = true;
        json_str(&n, "sid", out->sid, sizeof out->sid);
        json_str(&n, "phone_number", out->phone_number, sizeof out->phone_number);
        json_str(&n, "sms_url", out->sms_url, sizeof out->sms_url);
        json_str(&n, "sms_application_sid", out->sms_application_sid,
                 sizeof out->sms_application_sid);
        json_str(&n, "status", out->status, sizeof out->status);
        out->sms = json_bool(&n, "capabilities.sms");
        out->mms = json_bool(&n, "capabilities.mms");
        out->voice = json_bool(&n, "capabilities.voice");
    }
    bson_destroy(doc);
    return 0;
}
