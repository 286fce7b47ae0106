/* endpoint_probe — one-shot checks on curl multi (see endpoint_probe.h). */
#include "providers/endpoint_probe.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/cabundle.h"
#include "core/clock.h"
#include "core/log.h"
#include "providers/curl_shared.h"

#define MAX_BODY (256u * 1024u)

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;
static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

struct slot {
    CURL *h;
    struct probe *p;
    struct curl_slist *headers;
    char *bearer;
    char errbuf[CURL_ERROR_SIZE];
    bool too_large;
    bool deadline;
    size_t cap;
    int64_t started_ms;
};

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    struct slot *s = ud;
    struct probe_result *r = &s->p->result;
    size_t add = size * n;
    if (s->p->kind == PROBE_SMTP)
        return add; /* NOOP/HELP text: not needed */
    if (r->body_len + add > MAX_BODY) {
        s->too_large = true;
        return 0;
    }
    if (r->body_len + add + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < r->body_len + add + 1)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b)
            return 0;
        r->body = b;
        s->cap = cap;
    }
    memcpy(r->body + r->body_len, data, add);
    r->body_len += add;
    r->body[r->body_len] = '\0';
    return add;
}

static void slot_setup(struct slot *s, const struct probe_options *o)
{
    CURL *h = s->h;
    struct probe *p = s->p;
    curl_easy_reset(h);
    s->errbuf[0] = '\0';
    s->too_large = false;
    s->deadline = false;
    s->cap = 0;
    s->headers = NULL;
    s->bearer = NULL;
    curl_easy_setopt(h, CURLOPT_URL, p->url);
    curl_easy_setopt(h, CURLOPT_PRIVATE, s);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    const char *ca = cabundle_path();
    if (ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, ca);
    long timeout = p->timeout_ms > 0 ? p->timeout_ms : 10000;
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout < 5000 ? timeout : 5000L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, s->errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, curl_stop_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, o->stop);
    if (p->kind == PROBE_SMTP) {
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
#else
        curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_SMTP | CURLPROTO_SMTPS));
#endif
        curl_easy_setopt(h, CURLOPT_USE_SSL,
                         strncasecmp(p->url, "smtps://", 8) == 0 || !curl_url_is_loopback(p->url)
                             ? (long)CURLUSESSL_ALL
                             : (long)CURLUSESSL_TRY);
        if (p->user && *p->user) {
            curl_easy_setopt(h, CURLOPT_USERNAME, p->user);
            curl_easy_setopt(h, CURLOPT_PASSWORD, p->secret ? p->secret : "");
        }
        /* Without recipients curl sends this command after EHLO, STARTTLS and
         * AUTH (else HELP): a harmless round trip that proves the session. */
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "NOOP");
        return;
    }
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_USERAGENT, "supportd-check");
    if (strncasecmp(p->url, "https://", 8) == 0)
        curl_easy_setopt(h, CURLOPT_CERTINFO, 1L);
    s->headers = curl_slist_append(s->headers, "Accept: application/json");
    if (p->auth == HTTP_AUTH_BASIC) {
        curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(h, CURLOPT_USERNAME, p->user ? p->user : "");
        curl_easy_setopt(h, CURLOPT_PASSWORD, p->secret ? p->secret : "");
    } else if (p->auth == HTTP_AUTH_BEARER) {
        size_t n = strlen(p->secret ? p->secret : "") + 32;
        s->bearer = malloc(n);
        if (s->bearer) {
            snprintf(s->bearer, n, "Authorization: Bearer %s", p->secret ? p->secret : "");
            s->headers = curl_slist_append(s->headers, s->bearer);
        }
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, s->headers);
    if (p->post) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
    }
}

/* The leaf certificate's "Expire date" (OpenSSL prints it as
 * "Jan  1 00:00:00 2027 GMT", which curl_getdate reads). */
static int64_t leaf_expiry(CURL *h)
{
    struct curl_certinfo *ci = NULL;
    if (curl_easy_getinfo(h, CURLINFO_CERTINFO, &ci) != CURLE_OK || !ci || ci->num_of_certs < 1)
        return 0;
    for (struct curl_slist *l = ci->certinfo[0]; l; l = l->next) {
        if (strncasecmp(l->data, "Expire date:", 12) == 0) {
            time_t t = curl_getdate(l->data + 12, NULL);
            return t == (time_t)-1 ? 0 : (int64_t)t * 1000;
        }
    }
    return 0;
}

static void slot_finish(struct slot *s, CURLcode rc)
{
    struct probe *p = s->p;
    struct probe_result *r = &p->result;
    CURL *h = s->h;
    r->elapsed_ms = clock_now_ms() - s->started_ms;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    if (p->kind == PROBE_HTTP && rc == CURLE_OK)
        r->cert_expires_ms = leaf_expiry(h);
    if (rc == CURLE_OK || (p->kind == PROBE_HTTP && rc == CURLE_WRITE_ERROR && s->too_large &&
                           r->status > 0)) {
        /* A webhook answering with a huge page still answered. */
        r->failure = HTTP_FAIL_NONE;
    } else {
        r->failure = curl_failure(rc, s->too_large);
        r->login_denied = rc == CURLE_LOGIN_DENIED;
        r->starttls_missing = rc == CURLE_USE_SSL_FAILED;
        if (p->kind == PROBE_HTTP)
            r->status = 0;
        char host[256];
        curl_url_host(p->url, host, sizeof host);
        char *clean = log_redact_dup(s->errbuf[0] ? s->errbuf : curl_easy_strerror(rc));
        if (s->deadline)
            snprintf(r->error, sizeof r->error, "%s: no answer before the tick's check deadline",
                     host);
        else if (r->failure == HTTP_FAIL_TIMEOUT)
            snprintf(r->error, sizeof r->error, "%s: no answer within %d ms", host, p->timeout_ms);
        else
            snprintf(r->error, sizeof r->error, "%s: %s", host,
                     clean ? clean : curl_easy_strerror(rc));
        free(clean);
    }
    if (p->kind == PROBE_HTTP && !r->body)
        r->body = strdup("");
    curl_slist_free_all(s->headers);
    s->headers = NULL;
    if (s->bearer) {
        memset(s->bearer, 0, strlen(s->bearer));
        free(s->bearer);
        s->bearer = NULL;
    }
    s->p = NULL;
}

int probe_run(struct probe *probes, size_t n, const struct probe_options *opts,
              struct sd_error *err)
{
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        return sd_error_set(err, "libcurl initialisation failed: %s",
                            curl_easy_strerror(global_rc));
    for (size_t i = 0; i < n; i++)
        probes[i].result = (struct probe_result){.failure = HTTP_FAIL_OTHER};
    if (n == 0)
        return 0;
    int conc = opts->concurrency > 0 ? opts->concurrency : 1;
    if ((size_t)conc > n)
        conc = (int)n;
    CURLM *m = curl_multi_init();
    struct slot *slots = calloc((size_t)conc, sizeof *slots);
    if (!m || !slots) {
        curl_multi_cleanup(m);
        free(slots);
        return sd_error_set(err, "libcurl: could not create a multi handle");
    }
    for (int i = 0; i < conc; i++)
        slots[i].h = curl_easy_init();
    size_t next = 0;
    int running = 0, busy = 0;
    for (;;) {
        bool stopping = (opts->stop && atomic_load(opts->stop)) ||
                        (opts->deadline_ms && clock_now_ms() >= opts->deadline_ms);
        for (int i = 0; i < conc && !stopping && next < n; i++) {
            if (slots[i].p || !slots[i].h)
                continue;
            slots[i].p = &probes[next++];
            slots[i].p->result.started = true;
            slots[i].started_ms = clock_now_ms();
            slot_setup(&slots[i], opts);
            curl_multi_add_handle(m, slots[i].h);
            busy++;
        }
        if (busy == 0)
            break;
        if (stopping) {
            /* The batch's time is up: what is still in flight is a timeout. */
            for (int i = 0; i < conc; i++) {
                if (!slots[i].p)
                    continue;
                curl_multi_remove_handle(m, slots[i].h);
                slots[i].too_large = false;
                slots[i].deadline = true;
                slot_finish(&slots[i], CURLE_OPERATION_TIMEDOUT);
                busy--;
            }
            break;
        }
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            struct slot *s = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            CURLcode rc = msg->data.result;
            curl_multi_remove_handle(m, msg->easy_handle);
            if (s && s->p) {
                slot_finish(s, rc);
                busy--;
            }
        }
        if (busy > 0)
            curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    for (int i = 0; i < conc; i++)
        curl_easy_cleanup(slots[i].h);
    free(slots);
    curl_multi_cleanup(m);
    return 0;
}

void probe_results_free(struct probe *probes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(probes[i].result.body);
        probes[i].result.body = NULL;
    }
}
