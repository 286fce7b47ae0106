#include "providers/curl_shared.h"

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

/* Where the host starts (after the scheme and any userinfo) and its length. */
static const char *host_span(const char *url, size_t *n)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    *n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', *n); /* userinfo must never reach a message */
    if (at) {
        *n -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    return p;
}

void curl_url_host(const char *url, char *out, size_t size)
{
    size_t n;
    const char *p = host_span(url, &n);
    snprintf(out, size, "%.*s", (int)n, p);
}

bool curl_url_is_loopback(const char *url)
{
    size_t n;
    const char *h = host_span(url, &n);
    return (n >= 4 && strncmp(h, "127.", 4) == 0) ||
           (n >= 9 && strncasecmp(h, "localhost", 9) == 0) ||
           (n >= 5 && strncmp(h, "[::1]", 5) == 0);
}
