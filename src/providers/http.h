/* http.h — the HTTP layer under the Twilio and SendGrid clients, on libcurl.
 *
 * One struct http_client wraps one curl easy handle, so consecutive requests to
 * the same host reuse the connection (and its TLS session). A client is used by
 * one thread at a time; each thread or tick makes its own.
 *
 * Every request:
 *   - verifies TLS (peer and host name), always; the CA bundle is
 *     core/cabundle's (the static build has no compiled-in path), else
 *     libcurl's default;
 *   - has a connect timeout and a total timeout per attempt;
 *   - is retried with exponential backoff and jitter, honouring Retry-After:
 *       on 429 and on connection failures before anything was sent — always
 *       (the request was never processed);
 *       on 5xx, 408 and timeouts — only when req->idempotent, because a send
 *       that timed out or got a 5xx may still have been accepted;
 *     a Retry-After longer than max_retry_after_ms is not waited out here: the
 *     answer goes back to the caller with retry_after_ms set, to reschedule;
 *   - caps the response body (a larger answer fails as "too large");
 *   - only speaks http/https and follows no redirects;
 *   - aborts promptly (within ~50 ms) once *opts.stop turns true.
 * Credentials travel only in CURLOPT_USERNAME/PASSWORD or an Authorization
 * header, never in URLs, so error texts (curl's included) cannot carry them;
 * errors are still passed through the log redactor before being returned.
 *
 * Ownership: http_client_new/http_client_destroy; http_send fills a
 * caller-owned struct http_response whose body http_response_free releases
 * (also after a failed call). Errors follow core/error.h.
 */
#ifndef SD_PROVIDERS_HTTP_H
#define SD_PROVIDERS_HTTP_H

#include <bson/bson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "providers/provider.h"

struct http_options {
    int connect_timeout_ms;    /* 0: 5000 */
    int timeout_ms;            /* whole attempt; 0: 15000 */
    int max_attempts;          /* 0: 3 */
    int backoff_base_ms;       /* 0: 250 — first retry waits about this */
    int backoff_cap_ms;        /* 0: 4000 */
    int max_retry_after_ms;    /* 0: 10000 — longer Retry-After goes back to the caller */
    size_t max_response_bytes; /* 0: 1 MiB */
    atomic_bool *stop;         /* may be NULL */
};

struct http_client;

struct http_client *http_client_new(const struct http_options *opts, struct sd_error *err);
void http_client_destroy(struct http_client *c);

enum http_auth { HTTP_AUTH_NONE = 0, HTTP_AUTH_BASIC, HTTP_AUTH_BEARER };

struct http_request {
    const char *method;       /* "GET" or "POST" */
    const char *url;          /* no credentials in it */
    const char *content_type; /* of body; NULL when there is none */
    const char *body;
    size_t body_len;
    enum http_auth auth;
    const char *user;         /* Basic: user name */
    const char *secret;       /* Basic: password; Bearer: the token */
    bool idempotent;          /* also retry 5xx, 408 and timeouts */
};

enum http_failure {
    HTTP_FAIL_NONE = 0,   /* an answer arrived (any status) */
    HTTP_FAIL_CONNECT,    /* could not connect or resolve: nothing was sent */
    HTTP_FAIL_TIMEOUT,    /* sent (or connecting) but no complete answer in time */
    HTTP_FAIL_TOO_LARGE,  /* answer over max_response_bytes */
    HTTP_FAIL_TLS,        /* certificate or handshake problem */
    HTTP_FAIL_STOPPED,    /* aborted because *stop turned true */
    HTTP_FAIL_OTHER,
};

struct http_response {
    long status;              /* of the last attempt; 0 when none arrived */
    char *body;               /* owned, NUL-terminated (may be ""), never NULL after http_send */
    size_t body_len;
    char message_id[128];     /* X-Message-Id header, "" if absent */
    int64_t retry_after_ms;   /* Retry-After of the last answer, -1 if absent */
    int attempts;
    enum http_failure failure;
};

/* Performs the request with the retry policy above. Returns 0 when an HTTP
 * answer arrived, whatever its status (check resp->status), and -1 when none
 * did (resp->failure says why, err describes it). */
int http_send(struct http_client *c, const struct http_request *req, struct http_response *resp,
              struct sd_error *err);
void http_response_free(struct http_response *resp);

/* Parses the body as JSON (a top-level array becomes {"0": …, "1": …}).
 * On success *out is a new document the caller destroys. */
int http_response_json(const struct http_response *resp, bson_t **out, struct sd_error *err);

/* Fills st from the outcome of http_send (rc, resp) for a 2xx-is-success call:
 * class, code and retry_after. `sent_body` tells whether the request was a
 * non-idempotent send, for maybe_accepted. */
void http_classify(int rc, const struct http_response *resp, bool sent_body,
                   struct provider_status *st);

/* "Unauthorized" for 401 and so on; "" for unknown codes. */
const char *http_reason(long status);

/* Retry-After: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). Returns the
 * wait in ms from now_ms (0 for a past date), or -1 when unparseable. */
int64_t http_parse_retry_after(const char *value, int64_t now_ms);

/* Exponential backoff with "equal jitter": d = min(cap, base·2^attempt), the
 * result in [d/2, d]. attempt counts from 0; u in [0, 1) is the random draw
 * (a parameter so tests are deterministic). */
int64_t http_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms, double u);

/* A uniform draw in [0, 1) from the OS's CSPRNG (jitter need not be secure,
 * but this avoids seeding a PRNG per thread). */
double http_random_unit(void);

/* application/x-www-form-urlencoded: appends "name=value" (with '&' when buf
 * is not empty) to a bson-free growable string. Returns -1 on OOM. */
int http_form_add(char **buf, size_t *len, const char *name, const char *value);

/* Percent-encodes s for a URL path segment or query value (RFC 3986
 * unreserved characters stay). Returns a malloc'd string the caller frees. */
char *http_escape(const char *s);

#endif
