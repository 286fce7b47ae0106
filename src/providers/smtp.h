/* smtp.h — email over SMTP with libcurl (SMTP_URL, SMTP_USER, SMTP_PASSWORD).
 *
 *   smtps://host[:465]  TLS from the first byte.
 *   smtp://host[:587]   STARTTLS, required: a server that does not offer it is
 *                       a permanent error, so neither credentials nor mail go
 *                       out in clear text. Exception: a loopback host (a local
 *                       relay, Mailpit in tests) where STARTTLS is used only if
 *                       offered.
 * Certificates are always verified. AUTH is used when SMTP_USER is set.
 *
 * The message is built with curl's MIME API: multipart/alternative with a
 * text/plain and a text/html part (quoted-printable, UTF-8) inside curl's
 * top-level multipart/mixed (curl gives that one no other type); headers Date,
 * From, To, Subject (RFC 2047 encoded-words when not plain ASCII) and a
 * Message-ID we generate, which is the provider_message_id. curl does the
 * SMTP dot-stuffing of the DATA stream.
 *
 * Outcomes (providers/provider.h): 5xx replies and rejected logins are
 * permanent; 4xx replies, timeouts and connection failures transient (a
 * timeout after DATA sets maybe_accepted).
 *
 * Ownership: smtp_client_new/smtp_client_destroy; one client per thread (it
 * keeps one curl handle, so a tick's mails share the connection when the
 * server allows). Errors follow core/error.h.
 */
#ifndef SD_PROVIDERS_SMTP_H
#define SD_PROVIDERS_SMTP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "providers/mail.h"
#include "providers/provider.h"

struct smtp_options {
    const char *url;          /* smtp://… or smtps://… */
    const char *user;         /* NULL: no AUTH */
    const char *password;     /* secret */
    int connect_timeout_ms;   /* 0: 5000 */
    int timeout_ms;           /* whole message; 0: 30000 */
    atomic_bool *stop;        /* may be NULL */
};

struct smtp_client;

struct smtp_client *smtp_client_new(const struct smtp_options *opts, struct sd_error *err);
void smtp_client_destroy(struct smtp_client *c);

/* Sends m. message_id (size ≥ 160) receives the Message-ID without angle
 * brackets. now_ms is the Date header. */
int smtp_send(struct smtp_client *c, const struct mail *m, int64_t now_ms, char *message_id,
              size_t size, struct provider_status *st, struct sd_error *err);

/* A header value as RFC 2047 encoded-words ("=?UTF-8?B?…?=", each at most 75
 * characters, split on character boundaries, folded with CRLF SP) when it is
 * not printable ASCII; otherwise a copy. CR and LF in the input become spaces
 * (header injection). Returns malloc'd text, NULL on OOM. */
char *smtp_encode_header(const char *text);

/* "Tue, 03 Mar 2026 09:00:00 +0000" (RFC 5322 §3.3) into buf (≥ 32 bytes). */
void smtp_format_date(int64_t ms, char *buf, size_t size);

/* `"Name" <addr>` / `=?UTF-8?B?…?= <addr>` / `<addr>` for a From or To header.
 * Returns malloc'd text, NULL on OOM. */
char *smtp_format_address(const char *name, const char *addr);

#endif
