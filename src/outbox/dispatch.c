#include "outbox/dispatch.h"

#include <stdio.h>
#include <string.h>

#include "providers/sendgrid.h"
#include "providers/smtp.h"
#include "store/mongo.h"

/* A non-empty string at path, or NULL. */
static const char *str_at(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (!doc || !bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &it) ||
        !BSON_ITER_HOLDS_UTF8(&it))
        return NULL;
    const char *s = bson_iter_utf8(&it, NULL);
    return *s ? s : NULL;
}

static int invalid(struct provider_status *st, struct sd_error *err, const char *what)
{
    st->cls = PROVIDER_PERMANENT;
    snprintf(st->code, sizeof st->code, "invalid_entry");
    return sd_error_set(err, "the entry has no %s", what);
}

static int not_configured(struct provider_status *st, struct sd_error *err, const char *what)
{
    st->cls = PROVIDER_TRANSIENT;
    snprintf(st->code, sizeof st->code, "not_configured");
    return sd_error_set(err, "%s is not set", what);
}

/* The entry's channel (for an SMS's sender, sub-account and callback). */
static bson_t *load_channel(struct outbox_ctx *ctx, const bson_t *entry, struct sd_error *err)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, entry, "channel_id"))
        return NULL;
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_VALUE(&filter, "_id", bson_iter_value(&it));
    mongoc_collection_t *coll = mongoc_client_get_collection(ctx->mongo, ctx->db, COLL_CHANNEL);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, NULL, NULL);
    const bson_t *doc;
    bson_t *found = NULL;
    if (mongoc_cursor_next(cur, &doc))
        found = bson_copy(doc);
    bson_error_t berr;
    if (mongoc_cursor_error(cur, &berr))
        sd_error_set(err, "reading its channel: %s", store_errmsg(&berr));
    mongoc_cursor_destroy(cur);
    mongoc_collection_destroy(coll);
    bson_destroy(&filter);
    return found;
}

static int prepare_email(struct outbox_ctx *ctx, const bson_t *e, struct outbox_message *m,
                         struct provider_status *st, struct sd_error *err)
{
    const struct config *cfg = ctx->cfg;
    struct mail *mail = &m->mail;
    mail->to = str_at(e, "recipient.email");
    mail->to_name = str_at(e, "recipient.name");
    mail->from = str_at(e, "from");
    if (!mail->from)
        mail->from = cfg->email_from;
    mail->from_name = str_at(e, "from_name");
    mail->subject = str_at(e, "subject");
    mail->text = str_at(e, "text");
    mail->html = str_at(e, "html");
    mail->key = str_at(e, "key");
    if (!mail->to)
        return invalid(st, err, "recipient.email");
    if (!mail->text && !mail->html)
        return invalid(st, err, "text or html body");
    if (!mail->from)
        return not_configured(st, err, "QM_SUPPORT_EMAIL_FROM (and the entry has no from)");
    if (cfg->email_provider == EMAIL_SMTP) {
        m->provider = "smtp";
        if (!ctx->smtp)
            return not_configured(st, err, "SMTP_URL");
    } else {
        m->provider = "sendgrid";
        if (!cfg->sendgrid_api_key)
            return not_configured(st, err, "SENDGRID_API_KEY");
    }
    return 0;
}

static int prepare_sms(struct outbox_ctx *ctx, const bson_t *e, struct outbox_message *m,
                       struct provider_status *st, struct sd_error *err)
{
    const struct config *cfg = ctx->cfg;
    struct twilio_sms *sms = &m->sms;
    m->provider = "twilio";
    sms->to = str_at(e, "recipient.phone");
    sms->body = str_at(e, "text");
    sms->from = str_at(e, "from");
    sms->account_sid = str_at(e, "account_sid");
    sms->status_callback = str_at(e, "status_callback");
    if (!sms->to)
        return invalid(st, err, "recipient.phone");
    if (!sms->body)
        return invalid(st, err, "text (the SMS body)");
    if (!sms->from || !sms->account_sid || !sms->status_callback) {
        struct sd_error cerr = {""};
        m->channel = load_channel(ctx, e, &cerr);
        if (cerr.message[0]) {
            st->cls = PROVIDER_TRANSIENT;
            snprintf(st->code, sizeof st->code, "database");
            return sd_error_set(err, "%s", cerr.message);
        }
        if (!sms->from)
            sms->from = str_at(m->channel, "phone_number");
        if (!sms->account_sid)
            sms->account_sid = str_at(m->channel, "account_sid");
        if (!sms->status_callback)
            sms->status_callback = str_at(m->channel, "webhook_url");
    }
    if (!sms->from)
        return invalid(st, err, "from (nor a channel with a phone_number)");
    if (!cfg->twilio_account_sid || !cfg->twilio_auth_token)
        return not_configured(st, err, "TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN");
    bson_iter_t it;
    if (bson_iter_init_find(&it, e, "send_started_at") && BSON_ITER_HOLDS_DATE_TIME(&it))
        m->send_started_at = bson_iter_date_time(&it);
    return 0;
}

int outbox_message_prepare(struct outbox_ctx *ctx, const bson_t *entry,
                           struct outbox_message *msg, struct provider_status *st,
                           struct sd_error *err)
{
    memset(msg, 0, sizeof *msg);
    provider_status_init(st);
    const char *via = str_at(entry, "via");
    if (via && strcmp(via, "email") == 0) {
        msg->via = VIA_EMAIL;
        return prepare_email(ctx, entry, msg, st, err);
    }
    if (via && strcmp(via, "sms") == 0) {
        msg->via = VIA_SMS;
        return prepare_sms(ctx, entry, msg, st, err);
    }
    st->cls = PROVIDER_PERMANENT;
    snprintf(st->code, sizeof st->code, "invalid_entry");
    return sd_error_set(err, "via is \"%s\", not email or sms", via ? via : "");
}

void outbox_message_free(struct outbox_message *msg)
{
    if (msg->channel)
        bson_destroy(msg->channel);
    msg->channel = NULL;
}

static struct twilio twilio_of(struct outbox_ctx *ctx)
{
    return (struct twilio){.http = ctx->http,
                           .base = ctx->cfg->twilio_api_base,
                           .account_sid = ctx->cfg->twilio_account_sid,
                           .auth_token = ctx->cfg->twilio_auth_token};
}

int outbox_message_send(struct outbox_ctx *ctx, const struct outbox_message *msg, int64_t now_ms,
                        char *message_id, size_t size, struct provider_status *st,
                        struct sd_error *err)
{
    message_id[0] = '\0';
    if (msg->via == VIA_SMS) {
        struct twilio tw = twilio_of(ctx);
        struct twilio_message out;
        if (twilio_send_sms(&tw, &msg->sms, &out, st, err))
            return -1;
        snprintf(message_id, size, "%s", out.sid);
        return 0;
    }
    if (strcmp(msg->provider, "smtp") == 0)
        return smtp_send(ctx->smtp, &msg->mail, now_ms, message_id, size, st, err);
    struct sendgrid sg = {.http = ctx->http,
                          .base = ctx->cfg->sendgrid_api_base,
                          .api_key = ctx->cfg->sendgrid_api_key};
    return sendgrid_send(&sg, &msg->mail, message_id, size, st, err);
}

int outbox_message_find_sent(struct outbox_ctx *ctx, const struct outbox_message *msg,
                             bool *found, char *message_id, size_t size,
                             struct provider_status *st, struct sd_error *err)
{
    struct twilio tw = twilio_of(ctx);
    struct twilio_message out;
    message_id[0] = '\0';
    if (twilio_find_message(&tw, &msg->sms, msg->send_started_at, msg->known_sids,
                            msg->n_known_sids, &out, found, st, err))
        return -1;
    if (*found)
        snprintf(message_id, size, "%s", out.sid);
    return 0;
}
