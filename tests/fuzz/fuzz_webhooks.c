/* A status-events entry as the door and the job read it: provider, then the
 * raw body, URL, signature and timestamp from the input, through
 * msgstatus_parse_entry (Twilio form or JSON + HMAC; SendGrid JSON + ECDSA).
 * Input: byte 0 picks the provider, the rest is split at the first four
 * '\n' into url, signature, timestamp, body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/message_status/model.h"

/* A valid P-256 public key (SPKI, base64): signatures fail, parsing runs. */
static const char SG_KEY[] =
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAES4ZfShyLu8oorwf5ic+PBZ013oGFuO0vqWhQxN7s5Axzu1VXyp4wQTPa4w7PFrUQCp3o6d34lp1GzugdviZ+RA==";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *provider = data[0] & 1 ? "sendgrid" : "twilio";
    char *rest = strndup((const char *)data + 1, size - 1);
    const char *parts[4] = {"", "", "", ""};
    char *p = rest;
    for (int i = 0; i < 4 && p; i++) {
        parts[i] = p;
        char *nl = strchr(p, '\n');
        if (nl)
            *nl++ = '\0';
        p = nl;
    }
    const char *body = p ? p : "";
    bson_t entry = BSON_INITIALIZER, parsed = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&entry, "provider", provider);
    BSON_APPEND_UTF8(&entry, "url", parts[0]);
    BSON_APPEND_UTF8(&entry, "signature", parts[1]);
    BSON_APPEND_UTF8(&entry, "timestamp", parts[2]);
    BSON_APPEND_UTF8(&entry, "received_at", parts[3]);
    BSON_APPEND_UTF8(&entry, "body", body);
    struct msgstatus_keys keys = {.twilio_auth_token = "fuzz-token-0123456789abcdef",
                                  .sendgrid_public_key = SG_KEY,
                                  .sendgrid_tolerance_ms = 6LL * 3600 * 1000};
    msgstatus_parse_entry(&entry, &keys, &parsed);
    bson_destroy(&entry);
    bson_destroy(&parsed);
    free(rest);
    return 0;
}
