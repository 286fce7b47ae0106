/* endpoint_probe.h — many one-shot checks of remote endpoints at once, on curl multi.
 *
 * The communication-check job asks Twilio, SendGrid, the SMTP server and each
 * channel's webhook whether they work. Those are many small, independent
 * requests, any of which may hang; run one after another, one hanging provider
 * would stall the tick for the sum of the timeouts. probe_run keeps up to
 * `concurrency` transfers in flight on one curl multi handle, gives each its
 * own total timeout, and stops the whole batch at a deadline: a probe not
 * finished by then comes back as a timeout, one never started as not run.
 *
 * Probes are observations, not sends: they are never retried here (the job
 * counts consecutive failures across ticks instead), follow no redirects, and
 * verify TLS always (core/cabundle's bundle, or SSL_CERT_FILE). HTTP answers
 * are capped at 256 KiB; for https the leaf certificate's expiry is reported.
 * SMTP probes connect, STARTTLS (required except to loopback, as in smtp.c)
 * or smtps, AUTH when a user is given, then NOOP and QUIT.
 *
 * Credentials travel in curl's USERNAME/PASSWORD or an Authorization header,
 * never in URLs; error texts are passed through the log redactor.
 *
 * Ownership: the caller owns the probes array and every string it points to;
 * probe_run fills each probe's result, whose body probe_results_free releases.
 * Errors follow core/error.h: probe_run fails (-1) only when curl itself
 * cannot be set up; a failed probe is a result, not an error.
 */
#ifndef SD_PROVIDERS_ENDPOINT_PROBE_H
#define SD_PROVIDERS_ENDPOINT_PROBE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "providers/http.h"

enum probe_kind { PROBE_HTTP = 0, PROBE_SMTP };

struct probe_result {
    bool started;             /* false: the deadline came first (or stop) */
    long status;              /* HTTP status, or the last SMTP reply code; 0 when none */
    enum http_failure failure;/* HTTP_FAIL_NONE when an answer arrived */
    bool login_denied;        /* SMTP AUTH rejected */
    bool starttls_missing;    /* SMTP server offers no STARTTLS */
    char error[300];          /* readable, redacted; "" when none */
    char *body;               /* owned, NUL-terminated; NULL for SMTP */
    size_t body_len;
    int64_t cert_expires_ms;  /* https: the leaf certificate's notAfter; 0 when unknown */
    int64_t elapsed_ms;
};

struct probe {
    enum probe_kind kind;
    const char *url;
    bool post;                /* HTTP: POST with an empty body (else GET) */
    enum http_auth auth;      /* HTTP: none, basic (user/secret) or bearer (secret) */
    const char *user;         /* Basic user, or SMTP user (NULL: no AUTH) */
    const char *secret;
    int timeout_ms;           /* whole transfer */
    struct probe_result result;
};

struct probe_options {
    int concurrency;          /* transfers in flight at once; ≥ 1 */
    int64_t deadline_ms;      /* wall clock (clock_now_ms) when the batch stops; 0: none */
    atomic_bool *stop;        /* may be NULL */
};

int probe_run(struct probe *probes, size_t n, const struct probe_options *opts,
              struct sd_error *err);
void probe_results_free(struct probe *probes, size_t n);

#endif
