/* msgstatus_events — a status-events entry verified and turned into events
 * (see model.h). Nothing here trusts a body before its signature
 * matched; a failure is a reason, never a partial result. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdarg.h>

#include "core/bson_field.h"
#include "jobs/message_status/model.h"
#include "providers/form.h"
#include "providers/signature.h"
#include "store/stream.h"

const char *msgstatus_map_twilio(const char *s)
{
    static const char *const map[][2] = {
        {"queued", "queued"},   {"accepted", "queued"}, {"scheduled", "queued"},
        {"sending", "sending"}, {"sent", "sent"},       {"delivered", "delivered"},
        {"read", "read"},       {"undelivered", "undelivered"},
        {"failed", "failed"},   {"canceled", "failed"},
    };
    for (size_t i = 0; s && i < sizeof map / sizeof *map; i++)
        if (!strcmp(s, map[i][0]))
            return map[i][1];
    return NULL; /* receiving, received, partially_delivered, new ones: history */
}

const char *msgstatus_map_sendgrid(const char *event, const char *type)
{
    if (!event)
        return NULL;
    if (!strcmp(event, "processed") || !strcmp(event, "deferred"))
        return "sent";
    if (!strcmp(event, "delivered"))
        return "delivered";
    if (!strcmp(event, "open"))
        return "read";
    if (!strcmp(event, "bounce"))
        return type && !strcmp(type, "blocked") ? "undelivered" : "failed";
    if (!strcmp(event, "dropped"))
        return "failed";
    return NULL; /* click, spamreport, unsubscribe, group_*: history only */
}

static void reject(bson_t *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reject(bson_t *out, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    BSON_APPEND_BOOL(out, "ok", false);
    BSON_APPEND_UTF8(out, "reason", reason);
}

/* An error code as a number when it is one (Twilio's are), else as text. */
static void append_code(bson_t *ev, const char *code)
{
    if (!code || !*code)
        return;
    char *end;
    long long v = strtoll(code, &end, 10);
    if (*end == '\0')
        BSON_APPEND_INT64(ev, "code", v);
    else if (bson_utf8_validate(code, strlen(code), false))
        BSON_APPEND_UTF8(ev, "code", code);
}

/* ---- Twilio ---------------------------------------------------------------- */

/* A JSON callback's parameters (bodySHA256 variant) as form pairs. */
static int json_params(const char *body, size_t len, struct form_param **out, size_t *n,
                       char *why, size_t size)
{
    bson_error_t berr;
    bson_t *doc = bson_new_from_json((const uint8_t *)body, (ssize_t)len, &berr);
    if (!doc) {
        snprintf(why, size, "malformed body: JSON: %s", berr.message);
        return -1;
    }
    size_t cap = bson_count_keys(doc) + 1, k = 0;
    struct form_param *p = calloc(cap, sizeof *p);
    bson_iter_t it;
    bson_iter_init(&it, doc);
    while (p && bson_iter_next(&it)) {
        char num[32];
        const char *v = NULL;
        if (BSON_ITER_HOLDS_UTF8(&it))
            v = bson_iter_utf8(&it, NULL);
        else if (BSON_ITER_HOLDS_INT(&it)) {
            snprintf(num, sizeof num, "%lld", (long long)bson_iter_as_int64(&it));
            v = num;
        }
        if (v)
            p[k++] = (struct form_param){strdup(bson_iter_key(&it)), strdup(v)};
    }
    bson_destroy(doc);
    *out = p;
    *n = k;
    return p ? 0 : -1;
}

static void parse_twilio(const bson_t *entry, const struct msgstatus_keys *keys, int64_t at,
                         bson_t *out)
{
    const char *body = bson_field_utf8(entry, "body"), *url = bson_field_utf8(entry, "url"),
               *sig = bson_field_utf8(entry, "signature");
    if (!body)
        return reject(out, "missing field: body");
    if (!url || !*url)
        return reject(out, "missing field: url (the URL Twilio called, needed to check the signature)");
    if (!sig || !*sig)
        return reject(out, "missing signature (X-Twilio-Signature)");
    struct sd_error err;
    size_t len = strlen(body), n = 0;
    bool json = len && body[0] == '{';
    struct form_param *p = NULL;
    if (json) {
        if (signature_twilio_verify_json(keys->twilio_auth_token, url, body, len, sig, &err))
            return reject(out, "bad signature: %s", err.message);
        char why[300];
        if (json_params(body, len, &p, &n, why, sizeof why))
            return reject(out, "%s", why);
    } else {
        /* parsed once: the signature covers these very pairs */
        if (form_parse(body, len, &p, &n, &err))
            return reject(out, "malformed body: %s", err.message);
        struct sig_param sp[64];
        bool small = n <= 64;
        for (size_t i = 0; small && i < n; i++)
            sp[i] = (struct sig_param){p[i].name, p[i].value};
        int bad = small ? signature_twilio_verify_params(keys->twilio_auth_token, url, sp, n, sig,
                                                         &err)
                        : signature_twilio_verify_form(keys->twilio_auth_token, url, body, len,
                                                       sig, &err);
        if (bad) {
            form_free(p, n);
            return reject(out, "bad signature: %s", err.message);
        }
    }
    const char *sid = form_get(p, n, "MessageSid");
    if (!sid)
        sid = form_get(p, n, "SmsSid");
    const char *status = form_get(p, n, "MessageStatus");
    if (!status)
        status = form_get(p, n, "SmsStatus");
    const char *event_type = form_get(p, n, "EventType");
    bool read = event_type && !strcasecmp(event_type, "READ");
    if (!sid || !*sid || !bson_utf8_validate(sid, strlen(sid), false)) {
        form_free(p, n);
        return reject(out, "missing field: MessageSid");
    }
    if ((!status || !*status || !bson_utf8_validate(status, strlen(status), false)) && !read) {
        reject(out, "missing field: MessageStatus (message %s)", sid);
        form_free(p, n);
        return;
    }
    const char *provider_status = read ? "read" : status;
    bson_t events, ev;
    BSON_APPEND_BOOL(out, "ok", true);
    BSON_APPEND_ARRAY_BEGIN(out, "events", &events);
    BSON_APPEND_DOCUMENT_BEGIN(&events, "0", &ev);
    char id[200];
    snprintf(id, sizeof id, "twilio:%s:%s", sid, provider_status);
    BSON_APPEND_UTF8(&ev, "event_id", id);
    BSON_APPEND_UTF8(&ev, "provider", "twilio");
    BSON_APPEND_UTF8(&ev, "provider_message_id", sid);
    BSON_APPEND_UTF8(&ev, "provider_status", provider_status);
    const char *ours = msgstatus_map_twilio(provider_status);
    if (ours)
        BSON_APPEND_UTF8(&ev, "status", ours);
    append_code(&ev, form_get(p, n, "ErrorCode"));
    const char *emsg = form_get(p, n, "ErrorMessage");
    if (emsg && bson_utf8_validate(emsg, strlen(emsg), false))
        BSON_APPEND_UTF8(&ev, "error_message", emsg);
    BSON_APPEND_DATE_TIME(&ev, "at", at);
    BSON_APPEND_UTF8(&ev, "source", "webhook");
    bson_append_document_end(&events, &ev);
    bson_append_array_end(out, &events);
    form_free(p, n);
}

/* ---- SendGrid -------------------------------------------------------------- */

static void parse_sendgrid(const bson_t *entry, const struct msgstatus_keys *keys,
                           int64_t received_at, bson_t *out)
{
    const char *body = bson_field_utf8(entry, "body"), *sig = bson_field_utf8(entry, "signature"),
               *ts = bson_field_utf8(entry, "timestamp");
    if (!body)
        return reject(out, "missing field: body");
    if (!sig || !*sig)
        return reject(out, "missing signature (X-Twilio-Email-Event-Webhook-Signature)");
    if (!ts || !*ts)
        return reject(out, "missing field: timestamp (X-Twilio-Email-Event-Webhook-Timestamp)");
    char *end;
    long long t = strtoll(ts, &end, 10);
    if (*end || end == ts)
        return reject(out, "malformed timestamp \"%.40s\"", ts);
    struct sd_error err;
    size_t len = strlen(body);
    if (signature_sendgrid_verify(keys->sendgrid_public_key, ts, body, len, sig, &err))
        return reject(out, "bad signature: %s", err.message);
    /* SPEC §7: freshness against when the request arrived, not when we got to it. */
    int64_t skew = received_at - t * 1000;
    if (skew > keys->sendgrid_tolerance_ms || -skew > keys->sendgrid_tolerance_ms)
        return reject(out, "stale timestamp: signed %lld s %s the request arrived (tolerance %lld s)",
                      (long long)(skew < 0 ? -skew : skew) / 1000, skew < 0 ? "after" : "before",
                      (long long)keys->sendgrid_tolerance_ms / 1000);
    bson_error_t berr;
    size_t start = strspn(body, " \t\r\n");
    if (body[start] != '[')
        return reject(out, "malformed body: a JSON array of events was expected");
    bson_t *arr = bson_new_from_json((const uint8_t *)body, (ssize_t)len, &berr);
    if (!arr)
        return reject(out, "malformed body: JSON: %s", berr.message);
    bson_t events = BSON_INITIALIZER;
    bson_iter_t it;
    bson_iter_init(&it, arr);
    uint32_t k = 0;
    char bad[300] = "";
    while (bson_iter_next(&it) && !bad[0]) {
        bson_iter_t f;
        bson_t e;
        uint32_t elen;
        const uint8_t *edata;
        if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            snprintf(bad, sizeof bad, "malformed body: event %u is not an object", k);
            break;
        }
        bson_iter_document(&it, &elen, &edata);
        bson_init_static(&e, edata, elen);
        const char *event = bson_field_utf8(&e, "event"), *eid = bson_field_utf8(&e, "sg_event_id");
        if (!event || !*event) {
            snprintf(bad, sizeof bad, "missing field: event (event %u)", k);
            break;
        }
        if (!eid || !*eid) {
            snprintf(bad, sizeof bad, "missing field: sg_event_id (event %u, %s)", k, event);
            break;
        }
        char key[12], id[200];
        snprintf(key, sizeof key, "%u", k++);
        bson_t ev;
        BSON_APPEND_DOCUMENT_BEGIN(&events, key, &ev);
        snprintf(id, sizeof id, "sendgrid:%s", eid);
        BSON_APPEND_UTF8(&ev, "event_id", id);
        BSON_APPEND_UTF8(&ev, "provider", "sendgrid");
        const char *smid = bson_field_utf8(&e, "sg_message_id");
        if (smid && *smid) /* X-Message-Id is the part before the first '.' */
            bson_append_utf8(&ev, "provider_message_id", -1, smid, (int)strcspn(smid, "."));
        BSON_APPEND_UTF8(&ev, "provider_status", event);
        const char *type = bson_field_utf8(&e, "type");
        const char *ours = msgstatus_map_sendgrid(event, type);
        if (ours)
            BSON_APPEND_UTF8(&ev, "status", ours);
        if (!strcmp(event, "bounce") || !strcmp(event, "dropped") || !strcmp(event, "deferred")) {
            /* retry.lua keys SendGrid on these words: "blocked", "bounce", "dropped" */
            append_code(&ev, !strcmp(event, "bounce") ? (type ? type : "bounce") : event);
            const char *reason = bson_field_utf8(&e, "reason");
            if (!reason)
                reason = bson_field_utf8(&e, "response");
            if (reason)
                BSON_APPEND_UTF8(&ev, "error_message", reason);
        }
        int64_t at = received_at;
        if (bson_iter_init_find(&f, &e, "timestamp") && BSON_ITER_HOLDS_NUMBER(&f))
            at = bson_iter_as_int64(&f) * 1000;
        BSON_APPEND_DATE_TIME(&ev, "at", at);
        BSON_APPEND_UTF8(&ev, "source", "webhook");
        bson_append_document_end(&events, &ev);
    }
    bson_destroy(arr);
    if (bad[0] || k == 0) {
        bson_destroy(&events);
        return reject(out, "%s", bad[0] ? bad : "malformed body: no events");
    }
    BSON_APPEND_BOOL(out, "ok", true);
    BSON_APPEND_ARRAY(out, "events", &events);
    bson_destroy(&events);
}

void msgstatus_parse_entry(const bson_t *entry, const struct msgstatus_keys *keys, bson_t *out)
{
    const char *id = bson_field_utf8(entry, "id"), *provider = bson_field_utf8(entry, "provider"),
               *received = bson_field_utf8(entry, "received_at"), *bad_utf8 = bson_field_utf8(entry, "_invalid_utf8");
    BSON_APPEND_UTF8(out, "id", id ? id : "");
    BSON_APPEND_UTF8(out, "provider", provider ? provider : "");
    /* received_at is the receiver's clock; the entry id's time is Redis's, as
     * good a witness when the field is missing. */
    int64_t at = -1;
    if (received && *received) {
        char *end;
        long long v = strtoll(received, &end, 10);
        if (!*end && v > 0)
            at = v;
    }
    bool bad_received = received && *received && at < 0;
    if (at < 0)
        at = id ? stream_id_ms(id) : 0;
    BSON_APPEND_DATE_TIME(out, "received_at", at);
    if (bad_utf8)
        return reject(out, "malformed entry: field %s is not valid UTF-8", bad_utf8);
    if (bad_received)
        return reject(out, "malformed received_at \"%.40s\"", received);
    if (!provider || !*provider)
        return reject(out, "missing field: provider");
    if (!strcmp(provider, "twilio"))
        return parse_twilio(entry, keys, at, out);
    if (!strcmp(provider, "sendgrid"))
        return parse_sendgrid(entry, keys, at, out);
    reject(out, "unknown provider \"%.40s\"", provider);
}
