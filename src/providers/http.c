#include "providers/http.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/cabundle.h"
#include "core/clock.h"
#include "core/log.h"
#include "providers/curl_shared.h"

struct http_client {
    CURL *curl;
    struct http_options opts;
};

/* curl_global_init is not thread-safe on every libcurl we may link: once. */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;
static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

struct http_client *http_client_new(const struct http_options *opts, struct sd_error *err)
{
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK) {
        sd_error_set(err, "libcurl initialisation failed: %s", curl_easy_strerror(global_rc));
        return NULL;
    }
    struct http_client *c = calloc(1, sizeof *c);
    if (!c) {
        sd_error_set(err, "out of memory");
        return NULL;
    }
    c->opts = opts ? *opts : (struct http_options){0};
    struct http_options *o = &c->opts;
    if (o->connect_timeout_ms <= 0)
        o->connect_timeout_ms = 5000;
    if (o->timeout_ms <= 0)
        o->timeout_ms = 15000;
    if (o->connect_timeout_ms > o->timeout_ms)
        o->connect_timeout_ms = o->timeout_ms;
    if (o->max_attempts <= 0)
        o->max_attempts = 3;
    if (o->backoff_base_ms <= 0)
        o->backoff_base_ms = 250;
    if (o->backoff_cap_ms <= 0)
        o->backoff_cap_ms = 4000;
    if (o->max_retry_after_ms <= 0)
        o->max_retry_after_ms = 10000;
    if (o->max_response_bytes == 0)
        o->max_response_bytes = 1u << 20;
    c->curl = curl_easy_init();
    if (!c->curl) {
        free(c);
        sd_error_set(err, "libcurl: could not create a handle");
        return NULL;
    }
    return c;
}

void http_client_destroy(struct http_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    free(c);
}

void http_response_free(struct http_response *resp)
{
    if (!resp)
        return;
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
}

/* ---- one attempt ----------------------------------------------------------- */

struct sink {
    char *buf;
    size_t len, cap, max;
    bool too_large;
    struct http_response *resp;
};

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    struct sink *s = ud;
    size_t add = size * n;
    if (s->len + add > s->max) {
        s->too_large = true;
        return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    }
    if (s->len + add + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 1024;
        while (cap < s->len + add + 1)
            cap *= 2;
        char *p = realloc(s->buf, cap);
        if (!p)
            return 0;
        s->buf = p;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, add);
    s->len += add;
    s->buf[s->len] = '\0';
    return add;
}

/* Copies the value of header `name` from one raw header line, trimmed. */
static bool header_value(const char *line, size_t len, const char *name, char *out, size_t size)
{
    size_t nlen = strlen(name);
    if (len <= nlen || strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
        return false;
    const char *v = line + nlen + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vlen = (size_t)(end - v) < size - 1 ? (size_t)(end - v) : size - 1;
    memcpy(out, v, vlen);
    out[vlen] = '\0';
    return true;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    struct sink *s = ud;
    size_t len = size * n;
    char value[128];
    /* A new status line starts a new header block (e.g. after 100 Continue). */
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        s->resp->message_id[0] = '\0';
        s->resp->retry_after_ms = -1;
    } else if (header_value(data, len, "X-Message-Id", value, sizeof value)) {
        snprintf(s->resp->message_id, sizeof s->resp->message_id, "%s", value);
    } else if (header_value(data, len, "Retry-After", value, sizeof value)) {
        s->resp->retry_after_ms = http_parse_retry_after(value, clock_now_ms());
    }
    return len;
}

/* A send's body, read by curl through body_read. A request that is not
 * idempotent must never go out twice from one call: on a reused connection
 * that dies before the first byte of an answer, libcurl sends the request
 * again on a fresh connection by itself ("Connection died, retrying a fresh
 * connect"), yet the provider may have accepted the first (found by the chaos
 * run: a Twilio re-send reset after it was created went out twice). curl has
 * to rewind the body for that, and body_seek refuses once any of it was read:
 * the call ends with CURLE_SEND_FAIL_REWIND, an uncertain send (looked up
 * before any re-send). Curl 8.16's CURLOPT_FORBID_RETRY_ON_REUSE says the
 * same; the versions built here predate it. */
struct body_reader {
    const char *data;
    size_t len, pos;
};

static size_t body_read(char *buf, size_t size, size_t nitems, void *arg)
{
    struct body_reader *r = arg;
    size_t n = size * nitems, left = r->len - r->pos;
    if (n > left)
        n = left;
    memcpy(buf, r->data + r->pos, n);
    r->pos += n;
    return n;
}

static int body_seek(void *arg, curl_off_t offset, int origin)
{
    const struct body_reader *r = arg;
    return r->pos == 0 && offset == 0 && origin == SEEK_SET ? CURL_SEEKFUNC_OK
                                                              : CURL_SEEKFUNC_CANTSEEK;
}

static int attempt(struct http_client *c, const struct http_request *req,
                   struct http_response *resp, struct sd_error *err)
{
    CURL *h = c->curl;
    const struct http_options *o = &c->opts;
    curl_easy_reset(h); /* keeps live connections: that is the reuse */
    struct sink sink = {.max = o->max_response_bytes, .resp = resp};
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    char *bearer = NULL;

    curl_easy_setopt(h, CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    /* The static build has no compiled-in CA path: look where the distro keeps it. */
    const char *ca = cabundle_path();
    if (ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, ca);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "supportd");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &sink);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, curl_stop_progress);
    /* A send (not idempotent) is never cut by a stop: once its request may
     * have arrived, only its answer tells whether it was accepted, and a cut
     * send would be recorded as uncertain (SPEC §3). It ends within
     * timeout_ms. Reads and look-ups stop at once. */
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, req->idempotent ? o->stop : NULL);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, ""); /* whatever curl can decode */

    headers = curl_slist_append(headers, "Accept: application/json");
    headers = curl_slist_append(headers, "Expect:"); /* no 100-continue round trip */
    if (req->auth == HTTP_AUTH_BASIC) {
        curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(h, CURLOPT_USERNAME, req->user ? req->user : "");
        curl_easy_setopt(h, CURLOPT_PASSWORD, req->secret ? req->secret : "");
    } else if (req->auth == HTTP_AUTH_BEARER) {
        size_t n = strlen(req->secret ? req->secret : "") + 32;
        bearer = malloc(n);
        if (bearer) {
            snprintf(bearer, n, "Authorization: Bearer %s", req->secret ? req->secret : "");
            headers = curl_slist_append(headers, bearer);
        }
    }
    if (req->content_type) {
        char ct[128];
        snprintf(ct, sizeof ct, "Content-Type: %s", req->content_type);
        headers = curl_slist_append(headers, ct);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    struct body_reader reader = {req->body ? req->body : "", req->body ? req->body_len : 0, 0};
    if (strcmp(req->method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        if (req->idempotent) {
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, reader.data);
        } else {
            curl_easy_setopt(h, CURLOPT_READFUNCTION, body_read);
            curl_easy_setopt(h, CURLOPT_READDATA, &reader);
            curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, body_seek);
            curl_easy_setopt(h, CURLOPT_SEEKDATA, &reader);
        }
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)reader.len);
    } else if (strcmp(req->method, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
    }

    resp->status = 0;
    resp->message_id[0] = '\0';
    resp->retry_after_ms = -1;
    CURLcode rc = curl_easy_perform(h);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
    free(resp->body);
    resp->body = sink.buf ? sink.buf : strdup("");
    resp->body_len = sink.len;

    /* Wipe the secret from our copy before freeing. */
    if (bearer) {
        memset(bearer, 0, strlen(bearer));
        free(bearer);
    }
    curl_slist_free_all(headers);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    if (rc == CURLE_OK) {
        resp->failure = HTTP_FAIL_NONE;
        return 0;
    }
    resp->status = 0;
    resp->failure = curl_failure(rc, sink.too_large);
    char host[256];
    curl_url_host(req->url, host, sizeof host);
    if (resp->failure == HTTP_FAIL_TOO_LARGE) {
        sd_error_set(err, "%s: answer larger than %zu bytes", host, o->max_response_bytes);
    } else if (resp->failure == HTTP_FAIL_TIMEOUT) {
        sd_error_set(err, "%s: no answer within %d ms", host, o->timeout_ms);
    } else if (rc == CURLE_SEND_FAIL_REWIND) {
        sd_error_set(err, "%s: the connection closed after the request went out, before any "
                          "answer (not sent again: it may have arrived)", host);
    } else {
        char *clean = log_redact_dup(errbuf[0] ? errbuf : curl_easy_strerror(rc));
        sd_error_set(err, "%s: %s", host, clean ? clean : curl_easy_strerror(rc));
        free(clean);
    }
    return -1;
}

/* ---- policy -------------------------------------------------------------- */

static bool should_retry(const struct http_request *req, int rc, const struct http_response *r)
{
    if (rc != 0) {
        if (r->failure == HTTP_FAIL_CONNECT)
            return true; /* nothing reached the server */
        return req->idempotent && r->failure == HTTP_FAIL_TIMEOUT;
    }
    if (r->status == 429)
        return true; /* "never processed and is always safe to retry" (Twilio 20429) */
    return req->idempotent && (r->status >= 500 || r->status == 408);
}

/* Sleeps ms in small steps; false when *stop turned true meanwhile. */
static bool nap(int64_t ms, atomic_bool *stop)
{
    int64_t until = clock_now_ms() + ms;
    while (clock_now_ms() < until) {
        if (stop && atomic_load(stop))
            return false;
        int64_t left = until - clock_now_ms();
        int64_t step = left < 50 ? left : 50;
        if (step <= 0)
            break;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
    }
    return !(stop && atomic_load(stop));
}

int http_send(struct http_client *c, const struct http_request *req, struct http_response *resp,
              struct sd_error *err)
{
    *resp = (struct http_response){.retry_after_ms = -1};
    const struct http_options *o = &c->opts;
    int rc = -1;
    for (int i = 0; i < o->max_attempts; i++) {
        resp->attempts = i + 1;
        rc = attempt(c, req, resp, err);
        if (i + 1 >= o->max_attempts || !should_retry(req, rc, resp))
            break;
        int64_t wait = http_backoff_ms(i, o->backoff_base_ms, o->backoff_cap_ms,
                                       http_random_unit());
        if (rc == 0 && resp->retry_after_ms >= 0) {
            if (resp->retry_after_ms > o->max_retry_after_ms)
                break; /* too long to hold a tick for: the caller reschedules */
            wait = resp->retry_after_ms;
        }
        if (!nap(wait, o->stop))
            break;
    }
    if (!resp->body)
        resp->body = strdup("");
    return rc;
}

int http_response_json(const struct http_response *resp, bson_t **out, struct sd_error *err)
{
    bson_error_t berr;
    *out = NULL;
    if (!resp->body || resp->body_len == 0)
        return sd_error_set(err, "empty answer where JSON was expected");
    *out = bson_new_from_json((const uint8_t *)resp->body, (ssize_t)resp->body_len, &berr);
    if (!*out)
        return sd_error_set(err, "answer is not valid JSON (%s)", berr.message);
    return 0;
}

void http_classify(int rc, const struct http_response *resp, bool sent_body,
                   struct provider_status *st)
{
    provider_status_init(st);
    st->attempts = resp->attempts;
    st->http_status = resp->status;
    st->retry_after_ms = resp->retry_after_ms;
    if (rc != 0) {
        static const char *const names[] = {
            [HTTP_FAIL_NONE] = "http", [HTTP_FAIL_CONNECT] = "connect",
            [HTTP_FAIL_TIMEOUT] = "timeout", [HTTP_FAIL_TOO_LARGE] = "answer_too_large",
            [HTTP_FAIL_TLS] = "tls", [HTTP_FAIL_STOPPED] = "stopped", [HTTP_FAIL_OTHER] = "network",
        };
        st->cls = PROVIDER_TRANSIENT;
        snprintf(st->code, sizeof st->code, "%s", names[resp->failure]);
        /* Only a failed connect proves the request never arrived. */
        st->maybe_accepted = sent_body && resp->failure != HTTP_FAIL_CONNECT;
        return;
    }
    if (resp->status >= 200 && resp->status < 300)
        return;
    snprintf(st->code, sizeof st->code, "http_%ld", resp->status);
    if (resp->status == 429 || resp->status == 408 || resp->status >= 500) {
        st->cls = PROVIDER_TRANSIENT;
        st->maybe_accepted = sent_body && resp->status >= 500;
    } else {
        st->cls = PROVIDER_PERMANENT;
    }
}

const char *http_reason(long status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
    }
}

int64_t http_parse_retry_after(const char *value, int64_t now_ms)
{
    if (!value)
        return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (*value >= '0' && *value <= '9') {
        char *end;
        long long s = strtoll(value, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (*end != '\0' || s < 0)
            return -1;
        if (s > 86400LL * 365)
            s = 86400LL * 365;
        return (int64_t)s * 1000;
    }
    time_t t = curl_getdate(value, NULL);
    if (t == (time_t)-1)
        return -1;
    int64_t ms = (int64_t)t * 1000 - now_ms;
    return ms < 0 ? 0 : ms;
}

int64_t http_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms, double u)
{
    if (attempt < 0)
        attempt = 0;
    int64_t d = base_ms;
    for (int i = 0; i < attempt && d < cap_ms; i++)
        d *= 2;
    if (d > cap_ms)
        d = cap_ms;
    if (u < 0)
        u = 0;
    if (u >= 1)
        u = 0.999999;
    return d / 2 + (int64_t)((double)(d - d / 2) * u);
}

double http_random_unit(void)
{
    char hex[9];
    if (clock_random_hex(hex, 4, NULL))
        return 0.5;
    return (double)strtoul(hex, NULL, 16) / 4294967296.0;
}

char *http_escape(const char *s)
{
    pthread_once(&global_once, global_init);
    char *e = curl_easy_escape(NULL, s ? s : "", 0);
    if (!e)
        return NULL;
    char *copy = strdup(e);
    curl_free(e);
    return copy;
}

int http_form_add(char **buf, size_t *len, const char *name, const char *value)
{
    char *n = http_escape(name), *v = http_escape(value);
    if (!n || !v) {
        free(n);
        free(v);
        return -1;
    }
    size_t add = strlen(n) + strlen(v) + 2;
    char *p = realloc(*buf, *len + add + 1);
    if (!p) {
        free(n);
        free(v);
        return -1;
    }
    *buf = p;
    *len += (size_t)snprintf(p + *len, add + 1, "%s%s=%s", *len ? "&" : "", n, v);
    free(n);
    free(v);
    return 0;
}
