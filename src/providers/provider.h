/* provider.h — how every provider call (Twilio, SendGrid, SMTP) reports its
 * outcome, so callers decide retry-or-give-up in one place.
 *
 * A call returns 0 on success, or -1 with a readable message in struct sd_error
 * (secrets already redacted) and a classification in struct provider_status:
 *
 *   PROVIDER_TRANSIENT  worth trying again later: 429, 5xx, 408, timeouts,
 *                       connection failures. retry_after_ms carries the
 *                       provider's Retry-After when it gave one.
 *   PROVIDER_PERMANENT  trying again will not help: 4xx other than 408/429
 *                       (bad credentials, invalid recipient, rejected payload).
 *
 * maybe_accepted marks a transient failure of a *send* after the request may
 * have reached the provider (5xx, timeout while waiting for the answer): the
 * message may exist, so a careful caller looks it up before sending again
 * (reference/providers.md §4: "retrying a message POST can make the recipient
 * receive multiple messages").
 *
 * The struct owns no heap memory.
 */
#ifndef SD_PROVIDERS_PROVIDER_H
#define SD_PROVIDERS_PROVIDER_H

#include <stdbool.h>
#include <stdint.h>

enum provider_class { PROVIDER_OK = 0, PROVIDER_TRANSIENT, PROVIDER_PERMANENT };

struct provider_status {
    enum provider_class cls;
    long http_status;       /* last HTTP status; 0 when no answer arrived */
    char code[48];          /* short machine-readable cause: "http_401", "timeout",
                               "connect", "twilio_21211", "bad_answer", "smtp_550" */
    int64_t retry_after_ms; /* from Retry-After; -1 when none */
    bool maybe_accepted;
    int attempts;           /* HTTP attempts made (the layer's own retries included) */
};

static inline void provider_status_init(struct provider_status *st)
{
    *st = (struct provider_status){.cls = PROVIDER_OK, .retry_after_ms = -1};
}

static inline const char *provider_class_name(enum provider_class c)
{
    return c == PROVIDER_OK ? "ok" : c == PROVIDER_TRANSIENT ? "transient" : "permanent";
}

#endif
