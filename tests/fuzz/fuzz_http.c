/* The webhook request path behind the HTTP server: a request as
 * libmicrohttpd hands it over (provider, target, Host, body, signature and
 * timestamp headers, from the input split at '\n') through webhook_handle:
 * size and UTF-8 checks, the form-parameter cap, called-URL building,
 * verification and parsing. Redis is unreachable here (port 1): a request
 * that verified would be answered 503, never stored. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "http/internal.h"

static const char SG_KEY[] =
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAES4ZfShyLu8oorwf5ic+PBZ013oGFuO0vqWhQxN7s5Axzu1VXyp4wQTPa4w7PFrUQCp3o6d34lp1GzugdviZ+RA==";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct config cfg;
    static struct rds *redis;
    if (!redis) {
        cfg.redis_prefix = "fuzz:";
        cfg.public_url = "https://hooks.example.com";
        cfg.twilio_auth_token = "fuzz-token-0123456789abcdef";
        struct rds_options o = {.host = "127.0.0.1", .port = 1, .timeout_ms = 100};
        redis = rds_new(&o);
    }
    if (size < 1)
        return 0;
    char *copy = malloc(size);
    memcpy(copy, data + 1, size - 1);
    const char *parts[4] = {"", "", "", ""};
    char *p = copy, *end = copy + size - 1;
    for (int i = 0; i < 4 && p < end; i++) {
        parts[i] = p;
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            p = end;
            break;
        }
        *nl = '\0';
        p = nl + 1;
    }
    /* the body is what is left, binary as it came (NUL bytes included) */
    size_t body_len = (size_t)(end - p);
    char *body = malloc(body_len + 1);
    memcpy(body, p, body_len);
    body[body_len] = '\0';
    char *fields[4];
    for (int i = 0; i < 4; i++)
        fields[i] = strndup(parts[i], (size_t)(end - parts[i]));
    struct http_ctx ctx = {.cfg = &cfg,
                           .keys = {.twilio_auth_token = cfg.twilio_auth_token,
                                    .sendgrid_public_key = SG_KEY,
                                    .sendgrid_tolerance_ms = 6LL * 3600 * 1000}};
    snprintf(ctx.stream_key, sizeof ctx.stream_key, "fuzz:status-events");
    struct webhook_request req = {
        .provider = data[0] & 1 ? "sendgrid" : "twilio",
        .target = fields[0],
        .host = fields[1],
        .body = body,
        .len = body_len,
        .signature = fields[2],
        .timestamp = fields[3],
        .received_at = 1700000000000,
    };
    struct http_answer ans = {0};
    const char *reason = NULL;
    webhook_handle(&ctx, redis, &req, &ans, &reason);
    if (ans.body)
        bson_string_free(ans.body, true);
    for (int i = 0; i < 4; i++)
        free(fields[i]);
    free(body);
    free(copy);
    return 0;
}
