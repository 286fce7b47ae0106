/* sendgrid.h — the SendGrid v3 calls supportd makes.
 *
 * Authentication is "Authorization: Bearer SENDGRID_API_KEY"; the base URL is
 * SENDGRID_API_BASE (https://api.sendgrid.com, or the EU host, or a test fake).
 *
 * Mail send answers 202 with no body and an X-Message-Id header, which is the
 * prefix of every sg_message_id in the events that follow
 * (reference/providers.md §5-6); it is what supportd stores as
 * provider_message_id. A 5xx or timeout on a send is reported transient with
 * maybe_accepted set: SendGrid offers no lookup by our own id (the Email
 * Activity API is a paid add-on limited to 6 requests a minute), so the outbox
 * retries such a send and accepts the small risk of a duplicate.
 *
 * Results land in caller-owned structs; errors follow providers/provider.h.
 */
#ifndef SD_PROVIDERS_SENDGRID_H
#define SD_PROVIDERS_SENDGRID_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "providers/http.h"
#include "providers/mail.h"
#include "providers/provider.h"

struct sendgrid {
    struct http_client *http; /* borrowed */
    const char *base;         /* SENDGRID_API_BASE */
    const char *api_key;      /* secret */
};

struct sendgrid_scopes {
    int count;
    bool mail_send;           /* "mail.send" is among them */
};

struct sendgrid_domain {
    bool found;
    int64_t id;
    char domain[256];
    char subdomain[128];
    bool valid;
    char invalid_records[128]; /* names of dns records not valid: "dkim1, mail_cname" */
};

struct sendgrid_validation {
    bool valid;                /* overall and every record valid */
    char problems[512];        /* "dkim1: <reason>; …" for each invalid record */
};

/* POST /v3/mail/send. On success message_id (size ≥ 128 recommended) receives
 * X-Message-Id, or "" when the answer had none (st->code "no_message_id"). */
int sendgrid_send(const struct sendgrid *sg, const struct mail *m, char *message_id,
                  size_t size, struct provider_status *st, struct sd_error *err);

/* The JSON body of a mail send (plain JSON). Caller frees with bson_free. */
char *sendgrid_mail_json(const struct mail *m);

/* GET /v3/scopes: 200 means the key works; 401 invalid/revoked, 403 not
 * permitted (both permanent). */
int sendgrid_scopes(const struct sendgrid *sg, struct sendgrid_scopes *out,
                    struct provider_status *st, struct sd_error *err);

/* GET /v3/whitelabel/domains?domain=…: the authenticated domain entry for
 * `domain` (out->found false when there is none). */
int sendgrid_find_domain(const struct sendgrid *sg, const char *domain,
                         struct sendgrid_domain *out, struct provider_status *st,
                         struct sd_error *err);

/* POST /v3/whitelabel/domains/{id}/validate. Every record is checked on its
 * own: SendGrid's example pairs valid:true with an invalid mail_cname. */
int sendgrid_validate_domain(const struct sendgrid *sg, int64_t id,
                             struct sendgrid_validation *out, struct provider_status *st,
                             struct sd_error *err);

#endif
