/* signature.h — verifying provider webhooks (reference/providers.md §2, §6).
 *
 * Twilio (X-Twilio-Signature): base64(HMAC-SHA1(AuthToken, URL + every POST
 * parameter's name and value, sorted by name then value)). The URL is the one
 * Twilio called, query string included, userinfo dropped; like the official
 * SDK we also try it with the default port added or removed, because Twilio
 * signs SMS callbacks inconsistently there. Values are used exactly as
 * received (never trimmed). A JSON body is not signed as parameters: the URL's
 * bodySHA256 query parameter must equal the hex SHA-256 of the raw body.
 *
 * SendGrid (X-Twilio-Email-Event-Webhook-Signature / -Timestamp): ECDSA P-256
 * with SHA-256 over timestamp || raw body; the signature is base64 DER, the
 * public key base64 DER SubjectPublicKeyInfo (SENDGRID_WEBHOOK_PUBLIC_KEY, no
 * PEM armour). The body must be the bytes as received, trailing CRLF included.
 *
 * All comparisons are constant-time. Functions return 0 when the signature is
 * valid and -1 otherwise, err saying why (never quoting the token or key).
 * No ownership: inputs are borrowed, outputs are caller buffers.
 */
#ifndef SD_PROVIDERS_SIGNATURE_H
#define SD_PROVIDERS_SIGNATURE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

struct sig_param {
    const char *name;
    const char *value;
};

/* The expected X-Twilio-Signature for url and params (any order) into out
 * (≥ 29 bytes). */
int signature_twilio_compute(const char *auth_token, const char *url,
                             const struct sig_param *params, size_t n, char *out, size_t size,
                             struct sd_error *err);

/* A form-encoded POST body (application/x-www-form-urlencoded, raw). */
int signature_twilio_verify_form(const char *auth_token, const char *url, const char *body,
                                 size_t len, const char *signature, struct sd_error *err);

/* The same over parameters already decoded (a caller that needs them anyway). */
int signature_twilio_verify_params(const char *auth_token, const char *url,
                                   const struct sig_param *params, size_t n,
                                   const char *signature, struct sd_error *err);

/* A JSON body: URL signed alone, plus the bodySHA256 check. */
int signature_twilio_verify_json(const char *auth_token, const char *url, const char *body,
                                 size_t len, const char *signature, struct sd_error *err);

int signature_sendgrid_verify(const char *public_key_b64, const char *timestamp,
                              const char *body, size_t len, const char *signature_b64,
                              struct sd_error *err);

/* Standard base64 decoding (whitespace ignored, padding required as
 * produced by EVP). Returns the decoded length, or -1. out needs ≥ 3/4 of
 * the input length. */
int signature_base64_decode(const char *in, unsigned char *out, size_t out_size);

#endif
