#include "providers/curl_shared.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int curl_stop_progress(void *stop, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    atomic_bool *flag = stop;
    return flag && atomic_load(flag) ? 1 : 0; /* non-zero aborts the transfer */
}

enum http_failure curl_failure(CURLcode rc, bool too_large)
{
    if (too_large)
        return HTTP_FAIL_TOO_LARGE;
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
        return HTTP_FAIL_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return HTTP_FAIL_TIMEOUT;
    case CURLE_ABORTED_BY_CALLBACK:
        return HTTP_FAIL_STOPPED;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
        return HTTP_FAIL_TLS;
    default:
        return HTTP_FAIL_OTHER;
    }
}

/* The host of url as curl's URL parser reads it (userinfo, port and path
 * apart: a password holding '@' or ':' never ends up in "the host"), or NULL;
 * the caller frees it with curl_free. */
static char *parsed_host(const char *url)
{
    CURLU *u = curl_url();
    char *host = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        host = NULL;
    curl_url_cleanup(u);
    return host;
}

void curl_url_host(const char *url, char *out, size_t size)
{
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        curl_url_get(u, CURLUPART_PORT, &port, 0); /* only when the URL names one */
    /* An unparseable URL is never quoted: its credentials may be anywhere. */
    if (!host)
        snprintf(out, size, "(an unparseable URL)");
    else
        snprintf(out, size, "%s%s%s", host, port ? ":" : "", port ? port : "");
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
}

void curl_url_redacted(const char *url, char *out, size_t size)
{
    if (!url) {
        snprintf(out, size, "%s", "");
        return;
    }
    CURLU *u = curl_url();
    char *pw = NULL, *text = NULL;
    bool parsed = u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK;
    if (parsed && curl_url_get(u, CURLUPART_PASSWORD, &pw, 0) == CURLUE_OK) {
        if (curl_url_set(u, CURLUPART_PASSWORD, "***", 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_URL, &text, 0) != CURLUE_OK)
            parsed = false;
    }
    if (parsed && !text)
        snprintf(out, size, "%s", url); /* no password in it */
    else if (parsed)
        snprintf(out, size, "%s", text);
    else {
        /* Not a URL curl reads: hide everything from "://" up to its last
         * '@' (no "://": not a URL at all, an address or a number). */
        const char *auth = strstr(url, "://");
        const char *start = auth ? auth + 3 : url;
        const char *at = auth ? strrchr(start, '@') : NULL;
        if (at)
            snprintf(out, size, "%.*s***%s", (int)(start - url), url, at);
        else
            snprintf(out, size, "%s", url);
    }
    curl_free(pw);
    curl_free(text);
    curl_url_cleanup(u);
}

/* Exact loopback names and addresses: a prefix match would let
 * "localhost.mail.example.com" or "127.0.0.1.nip.io" skip STARTTLS. */
bool curl_url_is_loopback(const char *url)
{
    char *host = parsed_host(url);
    bool loop = false;
    if (host) {
        struct in_addr a4;
        if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
            loop = true;
        else if (inet_pton(AF_INET, host, &a4) == 1)
            loop = (ntohl(a4.s_addr) >> 24) == 127;
    }
    curl_free(host);
    return loop;
}
