/* dispatch.h — turning one outbox entry into a provider call (internal to
 * src/outbox): resolve the sender, recipient and bodies (from the entry, the
 * configuration and, for SMS, the entry's channel), then send through
 * SendGrid, SMTP or Twilio.
 *
 * Ownership: struct outbox_message borrows strings from the entry document
 * (keep it alive) and owns the channel document it may have loaded;
 * outbox_message_free releases that. Errors follow providers/provider.h: a
 * field the entry lacks is permanent ("invalid_entry"); a provider that is not
 * configured is transient ("not_configured"), so entries wait for the operator
 * instead of failing.
 */
#ifndef SD_OUTBOX_DISPATCH_H
#define SD_OUTBOX_DISPATCH_H

#include <bson/bson.h>

#include "outbox/outbox.h"
#include "providers/mail.h"
#include "providers/provider.h"
#include "providers/twilio.h"

enum outbox_via { VIA_EMAIL, VIA_SMS };

struct outbox_message {
    enum outbox_via via;
    const char *provider;      /* "sendgrid" | "smtp" | "twilio" */
    struct mail mail;          /* VIA_EMAIL */
    struct twilio_sms sms;     /* VIA_SMS */
    int64_t send_started_at;   /* VIA_SMS: from the entry, 0 when absent */
    /* VIA_SMS: SIDs that are known not to be the send looked for (a re-sent
     * message's earlier attempts); borrowed, set by the caller after prepare. */
    const char *const *known_sids;
    size_t n_known_sids;
    bson_t *channel;           /* owned; NULL unless loaded */
};

int outbox_message_prepare(struct outbox_ctx *ctx, const bson_t *entry,
                           struct outbox_message *msg, struct provider_status *st,
                           struct sd_error *err);
void outbox_message_free(struct outbox_message *msg);

/* Sends; on success message_id (size ≥ 160) holds the provider's id. */
int outbox_message_send(struct outbox_ctx *ctx, const struct outbox_message *msg, int64_t now_ms,
                        char *message_id, size_t size, struct provider_status *st,
                        struct sd_error *err);

/* SMS whose last send may have reached Twilio: is it there? A message with
 * the same recipient, sender and whole body, created since the send started
 * (msg->send_started_at), that is none of msg->known_sids
 * (twilio_find_message). Returns 0 and *found; message_id receives its SID.
 * -1 when Twilio could not be asked. */
int outbox_message_find_sent(struct outbox_ctx *ctx, const struct outbox_message *msg,
                             bool *found, char *message_id, size_t size,
                             struct provider_status *st, struct sd_error *err);

#endif
