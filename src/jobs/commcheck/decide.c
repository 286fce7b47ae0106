/* commcheck_decide — the pure heart of the communication-check job (see
 * model.h): from each check's observation and health.lua, which alerts
 * open, change or resolve, and whom to tell. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/commcheck/model.h"
#include "jobs/commcheck/read.h"
#include "outbox/entry.h"
#include "providers/json.h"

#define ALERT_NOTIFICATION_TYPE "channel.alert"

/* ---- rules ------------------------------------------------------------- */

static int call(struct rules *rules, const char *module, const char *fn, bson_t *args, bson_t *out,
                struct sd_error *err)
{
    int rc = rules_call(rules, module, fn, args, out, err);
    bson_destroy(args);
    return rc;
}

/* ---- alerts -------------------------------------------------------------- */

static int sev_rank(const char *s)
{
    return !s ? 0 : strcmp(s, "critical") == 0 ? 2 : strcmp(s, "warning") == 0 ? 1 : 0;
}

static const bson_t *open_alert(const struct commcheck_input *in, const char *key)
{
    for (size_t i = 0; i < in->n_alerts; i++) {
        const char *k = bson_path_utf8(in->alerts[i], "key");
        if (k && strcmp(k, key) == 0)
            return in->alerts[i];
    }
    return NULL;
}

struct event {
    const char *state;        /* opened | resolved | escalated */
    const char *severity;
    const char *check;
    const char *channel;      /* label */
    const char *message;
    const char *reason;       /* resolve */
    const char *key_basis;    /* unique per transition */
    const bson_t *channel_doc;
    const bson_oid_t *channel_id;
};

/* Renders one outbox entry per manager of the room into list. */
static int add_notifications(const struct commcheck_input *in, const bson_t *room,
                             const struct event *ev, bson_t *list, struct sd_error *err)
{
    if (!room)
        return 0;
    bson_t args = BSON_INITIALIZER, out = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&args, "0", ALERT_NOTIFICATION_TYPE);
    BSON_APPEND_NULL(&args, "1");
    BSON_APPEND_DOCUMENT(&args, "2", room);
    if (call(in->rules, "notify", "recipients", &args, &out, err)) {
        bson_destroy(&out);
        return -1;
    }
    bson_t advice = BSON_INITIALIZER;
    const char *action = NULL;
    struct sd_error ignore;
    if (rules_get(in->rules, "health", "advice", &advice, &ignore) == 0) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, &advice, "result") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
            bson_t a;
            if (json_child(&advice, "result", &a)) {
                bson_iter_t f;
                if (bson_iter_init(&f, &a))
                    while (bson_iter_next(&f))
                        if (strcmp(bson_iter_key(&f), ev->check) == 0 && BSON_ITER_HOLDS_UTF8(&f))
                            action = bson_iter_utf8(&f, NULL);
            }
        }
    }
    bson_t rlist;
    bson_iter_t it;
    uint32_t n = 0;
    bson_iter_t cnt;
    if (bson_iter_init(&cnt, list))
        while (bson_iter_next(&cnt))
            n++;
    int rc = 0;
    if (json_child(&out, "result", &rlist) && bson_iter_init(&it, &rlist)) {
        while (rc == 0 && bson_iter_next(&it)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&it))
                continue;
            bson_t rec;
            uint32_t len;
            const uint8_t *data;
            bson_iter_document(&it, &len, &data);
            bson_init_static(&rec, data, len);
            bson_t ctx = BSON_INITIALIZER, e, rendered = BSON_INITIALIZER, rargs = BSON_INITIALIZER;
            BSON_APPEND_DOCUMENT(&ctx, "room", room);
            BSON_APPEND_DOCUMENT(&ctx, "recipient", &rec);
            if (ev->channel_doc)
                BSON_APPEND_DOCUMENT(&ctx, "channel", ev->channel_doc);
            BSON_APPEND_DOCUMENT_BEGIN(&ctx, "event", &e);
            BSON_APPEND_UTF8(&e, "state", ev->state);
            BSON_APPEND_UTF8(&e, "severity", ev->severity);
            BSON_APPEND_UTF8(&e, "check", ev->check);
            BSON_APPEND_UTF8(&e, "channel", ev->channel);
            BSON_APPEND_UTF8(&e, "message", ev->message ? ev->message : "");
            if (ev->reason)
                BSON_APPEND_UTF8(&e, "reason", ev->reason);
            if (action)
                BSON_APPEND_UTF8(&e, "action", action);
            bson_append_document_end(&ctx, &e);
            BSON_APPEND_INT64(&ctx, "now", in->now_ms);
            BSON_APPEND_UTF8(&rargs, "0", ALERT_NOTIFICATION_TYPE);
            BSON_APPEND_DOCUMENT(&rargs, "1", &ctx);
            bson_destroy(&ctx);
            rc = call(in->rules, "templates", "render", &rargs, &rendered, err);
            if (rc == 0) {
                char key[400], k[12];
                snprintf(key, sizeof key, "channel.alert:%s:%s", ev->key_basis, outbox_recipient_id(&rec));
                idx(k, sizeof k, n++);
                bson_t entry;
                BSON_APPEND_DOCUMENT_BEGIN(list, k, &entry);
                BSON_APPEND_UTF8(&entry, "key", key);
                BSON_APPEND_UTF8(&entry, "type", ALERT_NOTIFICATION_TYPE);
                if (ev->channel_id)
                    BSON_APPEND_OID(&entry, "channel_id", ev->channel_id);
                const char *via = bson_path_utf8(&rec, "via");
                outbox_entry_fill(&entry, &rec, via ? via : "email",
                                  bson_path_utf8(room, "email_from"), &rendered, in->now_ms);
                bson_append_document_end(list, &entry);
            }
            bson_destroy(&rendered);
        }
    }
    bson_destroy(&advice);
    bson_destroy(&out);
    return rc;
}

static bool room_of(const struct commcheck_input *in, const bson_t *doc, bson_t *room)
{
    char hex[25];
    return hex_at(doc, "room_id", hex) && entry_of(in->rooms, hex, room);
}

struct ctx {
    const struct commcheck_input *in;
    bson_t *results, *actions, *streaks, *checked;
    uint32_t n_results, n_actions, n_checked;
    int bad;
};

static void details_of(bson_t *d, const struct observation *o, const char *check,
                       const char *provider, int streak)
{
    BSON_APPEND_UTF8(d, "cause", o->cause[0] ? o->cause : "channel_broken");
    BSON_APPEND_UTF8(d, "provider", provider);
    BSON_APPEND_UTF8(d, "target", o->target);
    BSON_APPEND_UTF8(d, "seen", o->message);
    if (o->http_status)
        BSON_APPEND_INT64(d, "http_status", o->http_status);
    bson_iter_t it;
    const char *copy[] = {"balance", "currency", "cert_expires_at", "cert_days_left",
                          "failing_records", "account_status"};
    for (size_t i = 0; i < sizeof copy / sizeof *copy; i++)
        if (bson_iter_init_find(&it, &o->result, copy[i]))
            bson_append_iter(d, NULL, 0, &it);
    if (streak > 0)
        BSON_APPEND_INT32(d, "consecutive_failures", streak);
    (void)check;
}

/* Appends one action (built in a scratch document so that a failure leaves
 * nothing half-made in the plan). */
static void push_action(struct ctx *c, bson_t *action)
{
    char k[12];
    idx(k, sizeof k, c->n_actions++);
    BSON_APPEND_DOCUMENT(c->actions, k, action);
}

static int resolve(struct ctx *c, const bson_t *alert, const bson_t *room, const char *label,
                   const char *reason, const bson_t *channel_doc, struct sd_error *err)
{
    const struct commcheck_input *in = c->in;
    char id[25], key_basis[80], newkey[200];
    bson_oid_t aoid, coid;
    bson_path_oid(alert, "_id", &aoid);
    bson_oid_to_string(&aoid, id);
    bool has_cid = bson_path_oid(alert, "channel_id", &coid);
    const char *key = bson_path_utf8(alert, "key");
    const char *check = bson_path_utf8(alert, "check");
    snprintf(key_basis, sizeof key_basis, "%s:resolved", id);
    /* The open key is freed for the next incident (FerretDB keeps a unique
     * index even on resolved documents: see job.c). */
    snprintf(newkey, sizeof newkey, "%s:resolved:%s", key ? key : "?", id);
    bson_t a = BSON_INITIALIZER, set, list;
    BSON_APPEND_UTF8(&a, "kind", "resolve");
    BSON_APPEND_UTF8(&a, "target", key ? key : id);
    BSON_APPEND_OID(&a, "alert_id", &aoid);
    BSON_APPEND_UTF8(&a, "channel", label);
    BSON_APPEND_UTF8(&a, "reason", reason);
    BSON_APPEND_DOCUMENT_BEGIN(&a, "set", &set);
    BSON_APPEND_UTF8(&set, "status", "resolved");
    BSON_APPEND_UTF8(&set, "key", newkey);
    BSON_APPEND_DATE_TIME(&set, "resolved_at", in->now_ms);
    BSON_APPEND_UTF8(&set, "resolve_reason", reason);
    BSON_APPEND_DATE_TIME(&set, "updated_at", in->now_ms);
    bson_append_document_end(&a, &set);
    BSON_APPEND_ARRAY_BEGIN(&a, "notifications", &list);
    char why[300];
    snprintf(why, sizeof why, "Resolved: %s.", reason);
    struct event ev = {.state = "resolved",
                       .severity = bson_path_utf8(alert, "severity")
                                       ? bson_path_utf8(alert, "severity")
                                       : "warning",
                       .check = check ? check : "?",
                       .channel = label,
                       .message = bson_path_utf8(alert, "message"),
                       .reason = why,
                       .key_basis = key_basis,
                       .channel_doc = channel_doc,
                       .channel_id = has_cid ? &coid : NULL};
    int rc = add_notifications(in, room, &ev, &list, err);
    bson_append_array_end(&a, &list);
    if (rc == 0)
        push_action(c, &a);
    bson_destroy(&a);
    return rc;
}

static void add_result(struct ctx *c, const char *cid, const char *check,
                       const struct observation *o, const char *outcome, const char *severity,
                       int streak)
{
    char k[12];
    idx(k, sizeof k, c->n_results++);
    bson_t r;
    BSON_APPEND_DOCUMENT_BEGIN(c->results, k, &r);
    BSON_APPEND_UTF8(&r, "channel_id", cid);
    BSON_APPEND_UTF8(&r, "check", check);
    BSON_APPEND_UTF8(&r, "target", o->target);
    BSON_APPEND_UTF8(&r, "outcome", outcome);
    if (severity)
        BSON_APPEND_UTF8(&r, "severity", severity);
    if (o->cause[0] && strcmp(outcome, "ok") != 0)
        BSON_APPEND_UTF8(&r, "cause", o->cause);
    if (streak > 0)
        BSON_APPEND_INT32(&r, "consecutive_failures", streak);
    BSON_APPEND_UTF8(&r, "message", o->message);
    bson_append_document_end(c->results, &r);
}

static void set_streak(struct ctx *c, const char *key, int n, int before)
{
    if (n == before)
        return;
    BSON_APPEND_INT32(c->streaks, key, n);
}

/* One check of one channel: observation → health.lua → alert action. */
static int decide_check(struct ctx *c, const bson_t *ch, const char *cid, const bson_oid_t *coid,
                        const char *check, const char *probe_id, const bson_t *room,
                        const char *label, struct sd_error *err)
{
    const struct commcheck_input *in = c->in;
    struct observation o;
    commcheck_observe(in, ch, check, probe_id, &o);
    char key[200];
    snprintf(key, sizeof key, "%s:%s", cid, check);
    const bson_t *alert = open_alert(in, key);
    int before = (int)map_int(in->streaks, key);
    if (o.unchecked) {
        add_result(c, cid, check, &o, "unchecked", NULL, before);
        bson_destroy(&o.result);
        return 0;
    }
    bson_t args = BSON_INITIALIZER, out = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&args, "0", check);
    BSON_APPEND_DOCUMENT(&args, "1", &o.result);
    if (call(in->rules, "health", "assess", &args, &out, err)) {
        bson_destroy(&out);
        bson_destroy(&o.result);
        return -1;
    }
    const char *cls = bson_path_utf8(&out, "result.class");
    const char *sev = bson_path_utf8(&out, "result.severity");
    char cls_buf[16], sev_buf[16];
    snprintf(cls_buf, sizeof cls_buf, "%s", cls ? cls : "");
    snprintf(sev_buf, sizeof sev_buf, "%s", sev_rank(sev) ? sev : "warning");
    bson_destroy(&out);
    int rc = 0;
    if (strcmp(cls_buf, "ok") == 0) {
        add_result(c, cid, check, &o, "ok", NULL, 0);
        set_streak(c, key, 0, before);
        if (alert)
            rc = resolve(c, alert, room, label, "the check passes again", ch, err);
        bson_destroy(&o.result);
        return rc;
    }
    if (strcmp(cls_buf, "transient") != 0 && strcmp(cls_buf, "definitive") != 0) {
        bson_destroy(&o.result);
        return sd_error_set(err, "health.lua: assess(\"%s\") returned class \"%s\", not "
                                 "ok/transient/definitive", check, cls_buf);
    }
    bool transient = strcmp(cls_buf, "transient") == 0;
    int streak = transient ? before + 1 : 0;
    set_streak(c, key, streak, before);
    const char *provider = commcheck_provider_of(ch);
    if (!alert && transient && streak < in->limits->consecutive_failures) {
        add_result(c, cid, check, &o, "transient", sev_buf, streak);
        bson_destroy(&o.result);
        return 0;
    }
    add_result(c, cid, check, &o, transient ? "transient" : "failing", sev_buf, streak);
    bson_t a = BSON_INITIALIZER, list, details = BSON_INITIALIZER;
    details_of(&details, &o, check, provider, transient ? streak : 0);
    char message[800];
    if (transient)
        snprintf(message, sizeof message, "%s (%d failed checks in a row)", o.message, streak);
    else
        snprintf(message, sizeof message, "%s", o.message);
    if (!alert) {
        bson_t doc, d2;
        char basis[300];
        snprintf(basis, sizeof basis, "%s:opened:%lld", key, (long long)in->now_ms);
        BSON_APPEND_UTF8(&a, "kind", "open");
        BSON_APPEND_UTF8(&a, "target", key);
        BSON_APPEND_UTF8(&a, "channel", label);
        BSON_APPEND_DOCUMENT_BEGIN(&a, "alert", &doc);
        BSON_APPEND_UTF8(&doc, "key", key);
        BSON_APPEND_UTF8(&doc, "channel_check", key);
        BSON_APPEND_OID(&doc, "channel_id", coid);
        bson_oid_t room_oid;
        if (bson_path_oid(ch, "room_id", &room_oid))
            BSON_APPEND_OID(&doc, "room_id", &room_oid);
        BSON_APPEND_UTF8(&doc, "check", check);
        BSON_APPEND_UTF8(&doc, "severity", sev_buf);
        BSON_APPEND_UTF8(&doc, "status", "open");
        BSON_APPEND_UTF8(&doc, "message", message);
        BSON_APPEND_DOCUMENT_BEGIN(&doc, "details", &d2);
        bson_concat(&d2, &details);
        bson_append_document_end(&doc, &d2);
        BSON_APPEND_DATE_TIME(&doc, "first_seen_at", in->now_ms);
        BSON_APPEND_DATE_TIME(&doc, "last_seen_at", in->now_ms);
        BSON_APPEND_NULL(&doc, "resolved_at");
        BSON_APPEND_INT32(&doc, "occurrences", 1);
        BSON_APPEND_DATE_TIME(&doc, "created_at", in->now_ms);
        BSON_APPEND_DATE_TIME(&doc, "updated_at", in->now_ms);
        bson_append_document_end(&a, &doc);
        BSON_APPEND_ARRAY_BEGIN(&a, "notifications", &list);
        struct event ev = {.state = "opened", .severity = sev_buf, .check = check,
                           .channel = label, .message = message, .key_basis = basis,
                           .channel_doc = ch, .channel_id = coid};
        rc = add_notifications(in, room, &ev, &list, err);
        bson_append_array_end(&a, &list);
    } else {
        bson_oid_t aoid;
        char aid[25], basis[120];
        bson_path_oid(alert, "_id", &aoid);
        bson_oid_to_string(&aoid, aid);
        const char *was = bson_path_utf8(alert, "severity");
        /* A transient failure of an alert opened for something definite does
         * not tell whether that is fixed: the alert stays as it was, only
         * seen again. */
        bool keep = transient && was;
        const char *now_sev = keep ? was : sev_buf;
        bson_t set, d2;
        BSON_APPEND_UTF8(&a, "kind", "update");
        BSON_APPEND_UTF8(&a, "target", key);
        BSON_APPEND_OID(&a, "alert_id", &aoid);
        BSON_APPEND_UTF8(&a, "channel", label);
        if (was)
            BSON_APPEND_UTF8(&a, "severity_before", was);
        BSON_APPEND_DOCUMENT_BEGIN(&a, "set", &set);
        BSON_APPEND_UTF8(&set, "severity", now_sev);
        if (!keep)
            BSON_APPEND_UTF8(&set, "message", message);
        BSON_APPEND_DOCUMENT_BEGIN(&set, keep ? "details.latest" : "details", &d2);
        bson_concat(&d2, &details);
        bson_append_document_end(&set, &d2);
        BSON_APPEND_DATE_TIME(&set, "last_seen_at", in->now_ms);
        BSON_APPEND_DATE_TIME(&set, "updated_at", in->now_ms);
        bson_append_document_end(&a, &set);
        BSON_APPEND_BOOL(&a, "inc_occurrences", true);
        BSON_APPEND_ARRAY_BEGIN(&a, "notifications", &list);
        if (sev_rank(now_sev) > sev_rank(was)) {
            snprintf(basis, sizeof basis, "%s:severity:%s", aid, now_sev);
            struct event ev = {.state = "escalated", .severity = now_sev, .check = check,
                               .channel = label, .message = message, .key_basis = basis,
                               .channel_doc = ch, .channel_id = coid};
            rc = add_notifications(in, room, &ev, &list, err);
        }
        bson_append_array_end(&a, &list);
    }
    if (rc == 0)
        push_action(c, &a);
    bson_destroy(&a);
    bson_destroy(&details);
    bson_destroy(&o.result);
    return rc;
}

static void warn_doc(const struct commcheck_input *in, const char *what, const char *id,
                     const char *msg)
{
    log_field(LOG_WARN, in->log, "commcheck.bad_document", what, id, "%s %s: %s", what, id, msg);
}

static void decide_channel(struct ctx *c, const bson_t *ch)
{
    const struct commcheck_input *in = c->in;
    char cid[25], label[300];
    bson_oid_t coid;
    if (!bson_path_oid(ch, "_id", &coid)) {
        warn_doc(in, "channel_id", "?", "channel without an ObjectId _id; skipped");
        c->bad++;
        return;
    }
    bson_oid_to_string(&coid, cid);
    commcheck_label_of(ch, label, sizeof label);
    bson_t room;
    bool have_room = room_of(in, ch, &room);
    if (!have_room) {
        warn_doc(in, "channel_id", cid, "room not found; checked, but nobody is notified");
        c->bad++;
    }
    const char *checks[COMMCHECK_MAX_CHECKS];
    char ids[COMMCHECK_MAX_CHECKS][600];
    int k = commcheck_checks_of(ch, in->providers, checks, ids);
    for (int i = 0; i < k; i++) {
        struct sd_error err;
        if (decide_check(c, ch, cid, &coid, checks[i], ids[i], have_room ? &room : NULL, label,
                         &err)) {
            bson_t f = BSON_INITIALIZER;
            BSON_APPEND_UTF8(&f, "channel_id", cid);
            BSON_APPEND_UTF8(&f, "check", checks[i]);
            log_msg(LOG_ERROR, in->log, "commcheck.decide_failed", &f,
                    "channel %s, check %s: %s; left as it was", cid, checks[i], err.message);
            bson_destroy(&f);
            c->bad++;
        }
    }
    /* Open alerts of checks that no longer apply (a webhook_url removed, the
     * provider changed) resolve. */
    for (size_t a = 0; a < in->n_alerts; a++) {
        char acid[25];
        const char *check = bson_path_utf8(in->alerts[a], "check");
        if (!hex_at(in->alerts[a], "channel_id", acid) || strcmp(acid, cid) != 0 || !check)
            continue;
        bool applies = false;
        for (int i = 0; i < k; i++)
            applies = applies || strcmp(checks[i], check) == 0;
        struct sd_error err;
        if (!applies &&
            resolve(c, in->alerts[a], have_room ? &room : NULL, label,
                    "the check no longer applies to this channel", ch, &err))
            c->bad++;
    }
    char kk[12];
    idx(kk, sizeof kk, c->n_checked++);
    BSON_APPEND_UTF8(c->checked, kk, cid);
}

int commcheck_decide(const struct commcheck_input *in, bson_t *results, bson_t *actions,
                     bson_t *streaks, bson_t *checked)
{
    struct ctx c = {.in = in, .results = results, .actions = actions, .streaks = streaks,
                    .checked = checked};
    for (size_t i = 0; i < in->n_channels; i++)
        decide_channel(&c, in->channels[i]);
    /* Alerts of channels not checked this tick: inactive or removed ones
     * resolve; active ones beyond this tick's cap wait. */
    for (size_t a = 0; a < in->n_alerts; a++) {
        const bson_t *alert = in->alerts[a];
        char acid[25];
        hex_at(alert, "channel_id", acid);
        bool checked_now = false;
        for (size_t i = 0; i < in->n_channels && !checked_now; i++) {
            char cid[25];
            checked_now = hex_at(in->channels[i], "_id", cid) && strcmp(cid, acid) == 0;
        }
        if (checked_now)
            continue;
        bson_t ch;
        bool known = entry_of(in->known_channels, acid, &ch);
        bson_iter_t it;
        bool active = known && bson_iter_init_find(&it, &ch, "active") && bson_iter_as_bool(&it);
        if (active)
            continue;
        char label[300];
        if (known)
            commcheck_label_of(&ch, label, sizeof label);
        else
            snprintf(label, sizeof label, "channel %s", acid);
        bson_t room;
        bool have_room = room_of(in, alert, &room);
        struct sd_error err;
        if (resolve(&c, alert, have_room ? &room : NULL, label,
                    known ? "the channel is inactive" : "the channel no longer exists",
                    known ? &ch : NULL, &err)) {
            warn_doc(in, "alert_channel_id", acid, err.message);
            c.bad++;
        }
    }
    return c.bad;
}
