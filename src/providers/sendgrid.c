#include "providers/sendgrid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "providers/json.h"

static char *url_for(const struct sendgrid *sg, const char *path)
{
    size_t blen = strlen(sg->base);
    while (blen && sg->base[blen - 1] == '/')
        blen--;
    size_t n = blen + strlen(path) + 1;
    char *url = malloc(n);
    if (url)
        snprintf(url, n, "%.*s%s", (int)blen, sg->base, path);
    return url;
}

/* Readable text for a non-2xx answer, from {"errors":[{"message","field"}]}. */
static int answer_error(const char *what, const struct http_response *resp,
                        struct provider_status *st, struct sd_error *err)
{
    bson_t *doc = NULL;
    char msg[300] = "", field[100] = "";
    if (http_response_json(resp, &doc, NULL) == 0) {
        json_str(doc, "errors.0.message", msg, sizeof msg);
        json_str(doc, "errors.0.field", field, sizeof field);
        bson_destroy(doc);
    }
    char *clean = log_redact_dup(msg);
    const char *m = clean ? clean : "";
    long s = resp->status;
    char detail[420] = "";
    if (*m)
        snprintf(detail, sizeof detail, ": %s%s%s%s", m, field[0] ? " (field " : "", field,
                 field[0] ? ")" : "");
    if (s == 401)
        sd_error_set(err, "SendGrid rejected the API key (401 Unauthorized) for the %s%s", what,
                     detail);
    else if (s == 403)
        sd_error_set(err, "SendGrid refused the %s (403 Forbidden)%s", what, detail);
    else if (s == 429)
        sd_error_set(err, "SendGrid is rate limiting the %s (429 Too Many Requests, %d attempts)",
                     what, resp->attempts);
    else if (s >= 500)
        sd_error_set(err, "SendGrid failed on the %s (%ld %s, %d attempt%s)%s", what, s,
                     http_reason(s), resp->attempts, resp->attempts == 1 ? "" : "s", detail);
    else
        sd_error_set(err, "SendGrid rejected the %s (%ld %s)%s", what, s, http_reason(s),
                     detail);
    free(clean);
    (void)st;
    return -1;
}

/* One call; on 2xx and want_json, *doc holds the parsed answer. */
static int call(const struct sendgrid *sg, const char *what, const char *method,
                const char *path, const char *json, bool idempotent, bool want_json, bson_t **doc,
                char *message_id, size_t mid_size, struct provider_status *st,
                struct sd_error *err)
{
    char *url = url_for(sg, path);
    if (!url) {
        provider_status_init(st);
        st->cls = PROVIDER_TRANSIENT;
        return sd_error_set(err, "out of memory");
    }
    struct http_request req = {.method = method,
                               .url = url,
                               .auth = HTTP_AUTH_BEARER,
                               .secret = sg->api_key,
                               .idempotent = idempotent};
    if (json) {
        req.content_type = "application/json";
        req.body = json;
        req.body_len = strlen(json);
    }
    struct http_response resp;
    if (doc)
        *doc = NULL;
    int rc = http_send(sg->http, &req, &resp, err);
    http_classify(rc, &resp, !idempotent, st);
    if (rc != 0) {
        sd_error_prefix(err, "SendGrid %s", what);
    } else if (st->cls != PROVIDER_OK) {
        rc = answer_error(what, &resp, st, err);
    } else {
        if (message_id)
            snprintf(message_id, mid_size, "%s", resp.message_id);
        if (want_json && http_response_json(&resp, doc, err) != 0) {
            snprintf(st->code, sizeof st->code, "bad_answer");
            st->cls = PROVIDER_TRANSIENT;
            sd_error_prefix(err, "SendGrid %s answered %ld but", what, resp.status);
            rc = -1;
        }
    }
    http_response_free(&resp);
    free(url);
    return rc;
}

static void append_address(bson_t *parent, const char *key, const char *email, const char *name)
{
    bson_t a;
    BSON_APPEND_DOCUMENT_BEGIN(parent, key, &a);
    BSON_APPEND_UTF8(&a, "email", email);
    if (name && *name)
        BSON_APPEND_UTF8(&a, "name", name);
    bson_append_document_end(parent, &a);
}

char *sendgrid_mail_json(const struct mail *m)
{
    /* Only strings, documents and arrays: relaxed extended JSON of these is
     * plain JSON, which is what SendGrid wants. */
    bson_t doc = BSON_INITIALIZER, pers, p0, to, content, part, args;
    BSON_APPEND_ARRAY_BEGIN(&doc, "personalizations", &pers);
    BSON_APPEND_DOCUMENT_BEGIN(&pers, "0", &p0);
    BSON_APPEND_ARRAY_BEGIN(&p0, "to", &to);
    append_address(&to, "0", m->to, m->to_name);
    bson_append_array_end(&p0, &to);
    bson_append_document_end(&pers, &p0);
    bson_append_array_end(&doc, &pers);
    append_address(&doc, "from", m->from, m->from_name);
    /* SendGrid requires a subject (unless a template supplies one). */
    BSON_APPEND_UTF8(&doc, "subject", m->subject && *m->subject ? m->subject : "(no subject)");
    BSON_APPEND_ARRAY_BEGIN(&doc, "content", &content);
    int i = 0;
    /* text/plain must come first when both are present (SendGrid's rule). */
    const char *types[] = {"text/plain", "text/html"};
    const char *values[] = {m->text, m->html};
    for (int k = 0; k < 2; k++) {
        if (!values[k] || !*values[k])
            continue;
        char idx[4];
        snprintf(idx, sizeof idx, "%d", i++);
        BSON_APPEND_DOCUMENT_BEGIN(&content, idx, &part);
        BSON_APPEND_UTF8(&part, "type", types[k]);
        BSON_APPEND_UTF8(&part, "value", values[k]);
        bson_append_document_end(&content, &part);
    }
    bson_append_array_end(&doc, &content);
    if (m->key && *m->key) {
        /* Come back as top-level keys of every event of this message. */
        BSON_APPEND_DOCUMENT_BEGIN(&doc, "custom_args", &args);
        BSON_APPEND_UTF8(&args, "supportd_key", m->key);
        bson_append_document_end(&doc, &args);
    }
    char *json = bson_as_relaxed_extended_json(&doc, NULL);
    bson_destroy(&doc);
    return json;
}

int sendgrid_send(const struct sendgrid *sg, const struct mail *m, char *message_id,
                  size_t size, struct provider_status *st, struct sd_error *err)
{
    message_id[0] = '\0';
    char *json = sendgrid_mail_json(m);
    if (!json) {
        provider_status_init(st);
        st->cls = PROVIDER_TRANSIENT;
        return sd_error_set(err, "out of memory");
    }
    int rc = call(sg, "mail send", "POST", "/v3/mail/send", json, false, false, NULL,
                  message_id, size, st, err);
    bson_free(json);
    if (rc == 0 && !message_id[0])
        snprintf(st->code, sizeof st->code, "no_message_id");
    return rc;
}

int sendgrid_scopes(const struct sendgrid *sg, struct sendgrid_scopes *out,
                    struct provider_status *st, struct sd_error *err)
{
    memset(out, 0, sizeof *out);
    bson_t *doc;
    if (call(sg, "scopes check", "GET", "/v3/scopes", NULL, true, true, &doc, NULL, 0, st,
             err))
        return -1;
    bson_t list;
    bson_iter_t it;
    if (json_child(doc, "scopes", &list) && bson_iter_init(&it, &list)) {
        while (bson_iter_next(&it)) {
            out->count++;
            if (BSON_ITER_HOLDS_UTF8(&it) && strcmp(bson_iter_utf8(&it, NULL), "mail.send") == 0)
                out->mail_send = true;
        }
    }
    bson_destroy(doc);
    return 0;
}

int sendgrid_find_domain(const struct sendgrid *sg, const char *domain,
                         struct sendgrid_domain *out, struct provider_status *st,
                         struct sd_error *err)
{
    memset(out, 0, sizeof *out);
    char *q = http_escape(domain);
    if (!q)
        return sd_error_set(err, "out of memory");
    char path[600];
    snprintf(path, sizeof path, "/v3/whitelabel/domains?domain=%s", q);
    free(q);
    bson_t *doc;
    if (call(sg, "domain lookup", "GET", path, NULL, true, true, &doc, NULL, 0, st, err))
        return sd_error_prefix(err, "domain %s", domain);
    /* The answer is an array (read as {"0": …}); the filter may still match
     * sub-domains, so take the exact domain. */
    bson_iter_t it;
    bson_iter_init(&it, doc);
    while (!out->found && bson_iter_next(&it)) {
        bson_t d, dns;
        const uint8_t *data;
        uint32_t len;
        if (!BSON_ITER_HOLDS_DOCUMENT(&it))
            continue;
        bson_iter_document(&it, &len, &data);
        if (!bson_init_static(&d, data, len))
            continue;
        json_str(&d, "domain", out->domain, sizeof out->domain);
        if (strcasecmp(out->domain, domain) != 0)
            continue;
        out->found = true;
        out->id = json_int(&d, "id");
        out->valid = json_bool(&d, "valid");
        json_str(&d, "subdomain", out->subdomain, sizeof out->subdomain);
        bson_iter_t r;
        if (json_child(&d, "dns", &dns) && bson_iter_init(&r, &dns)) {
            while (bson_iter_next(&r)) {
                bson_t rec;
                if (!BSON_ITER_HOLDS_DOCUMENT(&r))
                    continue;
                bson_iter_document(&r, &len, &data);
                if (bson_init_static(&rec, data, len) && !json_bool(&rec, "valid")) {
                    size_t n = strlen(out->invalid_records);
                    snprintf(out->invalid_records + n, sizeof out->invalid_records - n, "%s%s",
                             n ? ", " : "", bson_iter_key(&r));
                }
            }
        }
    }
    if (!out->found)
        out->domain[0] = '\0';
    bson_destroy(doc);
    return 0;
}

int sendgrid_validate_domain(const struct sendgrid *sg, int64_t id,
                             struct sendgrid_validation *out, struct provider_status *st,
                             struct sd_error *err)
{
    memset(out, 0, sizeof *out);
    char path[96];
    snprintf(path, sizeof path, "/v3/whitelabel/domains/%lld/validate", (long long)id);
    bson_t *doc;
    /* Validation changes nothing on SendGrid's side: safe to retry. */
    if (call(sg, "domain validation", "POST", path, NULL, true, true, &doc, NULL, 0, st, err))
        return sd_error_prefix(err, "domain id %lld", (long long)id);
    out->valid = json_bool(doc, "valid");
    bson_t results;
    bson_iter_t it;
    if (json_child(doc, "validation_results", &results) && bson_iter_init(&it, &results)) {
        while (bson_iter_next(&it)) {
            bson_t rec;
            const uint8_t *data;
            uint32_t len;
            if (!BSON_ITER_HOLDS_DOCUMENT(&it))
                continue;
            bson_iter_document(&it, &len, &data);
            if (!bson_init_static(&rec, data, len) || json_bool(&rec, "valid"))
                continue;
            out->valid = false;
            char reason[200];
            json_str(&rec, "reason", reason, sizeof reason);
            size_t n = strlen(out->problems);
            snprintf(out->problems + n, sizeof out->problems - n, "%s%s: %s", n ? "; " : "",
                     bson_iter_key(&it), reason[0] ? reason : "not valid");
        }
    }
    bson_destroy(doc);
    return 0;
}
