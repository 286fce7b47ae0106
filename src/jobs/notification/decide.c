/* notification/decide.c — the pure heart of the notification job (see
 * model.h): compares each conversation with what supportd last
 * notified about, computes its SLA from sla.lua, and plans the outbox
 * entries, the new state record and the SLA fields.
 *
 * Outbox keys are "<type>:<conversation>:<trigger>:<recipient>", the trigger
 * being what caused the mail, never when it was seen:
 *   ticket.created           (nothing: once per conversation)
 *   ticket.assigned          <assignee>:<assigned_at, else the updated_at
 *                            of the state the change was seen against>
 *   ticket.customer_message  <last_customer_message_at>
 *   ticket.status_changed / resolved / closed
 *                            <status>:<resolved_at/closed_at, else the
 *                            updated_at of the previous state>
 *   ticket.sla_warning / sla_breached
 *                            <target>:<deadline ms>
 *   ticket.escalated         <level>:<deadline ms>
 *   ticket.response_reminder <last_customer_message_at>:<n>
 * so a change seen in two ticks, or by two instances, inserts the same key
 * (a no-op), and a moved deadline can warn again. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "core/tz.h"
#include "jobs/notification/model.h"
#include "jobs/notification/sla_calendar.h"
#include "outbox/entry.h"

#define MAX_LEVELS 16

/* ---- reading documents ---------------------------------------------------- */

static bool find(const bson_t *doc, const char *path, bson_iter_t *it)
{
    return doc && bson_iter_init(it, doc) && bson_iter_find_descendant(it, path, it);
}

/* A date or an integer (ms), else 0. */
static int64_t ms_at(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (!find(doc, path, &it))
        return 0;
    if (BSON_ITER_HOLDS_DATE_TIME(&it))
        return bson_iter_date_time(&it);
    if (BSON_ITER_HOLDS_INT(&it))
        return bson_iter_as_int64(&it);
    return 0;
}

static bool sub_doc(const bson_t *doc, const char *key, bson_t *out)
{
    bson_iter_t it;
    if (!doc || !bson_iter_init_find(&it, doc, key) ||
        !(BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it)))
        return false;
    uint32_t len;
    const uint8_t *data;
    if (BSON_ITER_HOLDS_DOCUMENT(&it))
        bson_iter_document(&it, &len, &data);
    else
        bson_iter_array(&it, &len, &data);
    return bson_init_static(out, data, len);
}

/* The SLA bookkeeping as last decided: the notify-state record's, else the
 * conversation's (where builds before 2026-12 kept all of it; the
 * conversation now carries only the SPEC §2 view, see model.h). */
static bool old_sla(const bson_t *record, const bson_t *conv, bson_t *out)
{
    return sub_doc(record, "sla", out) || sub_doc(conv, "sla", out);
}

/* An id (ObjectId or string) as text; "" for none. */
static void id_text(const bson_t *doc, const char *path, char *out, size_t size)
{
    bson_iter_t it;
    out[0] = '\0';
    if (!find(doc, path, &it))
        return;
    if (BSON_ITER_HOLDS_OID(&it) && size >= 25)
        bson_oid_to_string(bson_iter_oid(&it), out);
    else if (BSON_ITER_HOLDS_UTF8(&it))
        snprintf(out, size, "%s", bson_iter_utf8(&it, NULL));
}

static bool list_has(const bson_t *list, const char *s)
{
    bson_iter_t it;
    if (!list || !bson_iter_init(&it, list))
        return false;
    while (bson_iter_next(&it))
        if (BSON_ITER_HOLDS_UTF8(&it) && strcmp(bson_iter_utf8(&it, NULL), s) == 0)
            return true;
    return false;
}

/* ---- calling the rules ---------------------------------------------------- */

struct args {
    bson_t b;
    int n;
};

static const char *next_key(struct args *a, char *buf)
{
    snprintf(buf, 12, "%d", a->n++);
    return buf;
}

static void arg_str(struct args *a, const char *s)
{
    char k[12];
    BSON_APPEND_UTF8(&a->b, next_key(a, k), s);
}

static void arg_int(struct args *a, int64_t v)
{
    char k[12];
    BSON_APPEND_INT64(&a->b, next_key(a, k), v);
}

static void arg_doc(struct args *a, const bson_t *d)
{
    char k[12];
    next_key(a, k);
    if (d)
        BSON_APPEND_DOCUMENT(&a->b, k, d);
    else
        BSON_APPEND_NULL(&a->b, k);
}

struct ctx {
    const struct notification_input *in;
    const bson_t *conv;
    const bson_t *room;       /* NULL: not found */
    const bson_t *channel;    /* the room's SMS channel, or NULL */
    bson_t zone;              /* [{at, offset}] */
    bool have_zone;
    char id[25];
    bson_oid_t oid;
    bson_t *list;             /* outbox entries being planned */
    uint32_t n_entries;
    bool mail;                /* false: record only (baseline, no room) */
    struct sla_calendar cal;  /* the room's, built on first use */
    int cal_state;            /* 0 not built, 1 built, -1 malformed (cal_err) */
    struct sd_error cal_err;
};

/* What explain shows for a notification not planned (model.h, why). */
static void suppressed(struct ctx *c, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void suppressed(struct ctx *c, const char *type, const char *fmt, ...)
{
    if (!c->in->why)
        return;
    char reason[512], idx[16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    const char *key;
    bson_uint32_to_string((*c->in->n_why)++, &key, idx, sizeof idx);
    bson_t w;
    BSON_APPEND_DOCUMENT_BEGIN(c->in->why, key, &w);
    BSON_APPEND_UTF8(&w, "job", "notification");
    BSON_APPEND_UTF8(&w, "type", type);
    BSON_APPEND_UTF8(&w, "verdict", "suppressed");
    BSON_APPEND_UTF8(&w, "reason", reason);
    bson_append_document_end(c->in->why, &w);
}

/* A time for a reason: "2026-03-02T08:30:00.000Z". */
static const char *at_text(int64_t ms, char *buf, size_t size)
{
    clock_format_iso(ms, buf, size);
    return buf;
}

static int call(struct ctx *c, const char *module, const char *fn, struct args *a, bson_t *out,
                struct sd_error *err)
{
    int rc = rules_call(c->in->rules, module, fn, &a->b, out, err);
    bson_destroy(&a->b);
    return rc;
}

static int call_int(struct ctx *c, const char *module, const char *fn, struct args *a,
                    int64_t *v, struct sd_error *err)
{
    bson_t out = BSON_INITIALIZER;
    int rc = call(c, module, fn, a, &out, err);
    bson_iter_t it;
    if (rc == 0) {
        if (bson_iter_init_find(&it, &out, "result") && BSON_ITER_HOLDS_NUMBER(&it))
            *v = bson_iter_as_int64(&it);
        else
            rc = sd_error_set(err, "%s.lua: %s did not return a number", module, fn);
    }
    bson_destroy(&out);
    return rc;
}

/* The room's business calendar (sla_calendar.h), built once per
 * conversation. A malformed one fails every SLA computation alike. */
static const struct sla_calendar *calendar(struct ctx *c, struct sd_error *err)
{
    if (c->cal_state == 0) {
        bson_iter_t hours, holidays;
        bool have_hours = c->room && bson_iter_init_find(&hours, c->room, "business_hours");
        bool have_holidays = c->room && bson_iter_init_find(&holidays, c->room, "holidays");
        c->cal_state = sla_calendar_init(&c->cal, have_hours ? &hours : NULL,
                                         c->have_zone ? &c->zone : NULL,
                                         have_holidays ? &holidays : NULL, &c->cal_err)
                           ? -1
                           : 1;
    }
    if (c->cal_state < 0) {
        *err = c->cal_err;
        return NULL;
    }
    return &c->cal;
}

/* Business minutes after start, in the room's calendar. */
static int sla_due(struct ctx *c, int64_t start, int64_t minutes, int64_t *out,
                   struct sd_error *err)
{
    const struct sla_calendar *cal = calendar(c, err);
    return cal ? sla_calendar_due(cal, start, minutes < 0 ? 0 : minutes, out, err) : -1;
}

/* Business minutes between from and to, in the room's calendar. */
static int sla_between(struct ctx *c, int64_t from, int64_t to, int64_t *out,
                       struct sd_error *err)
{
    const struct sla_calendar *cal = calendar(c, err);
    if (!cal)
        return -1;
    *out = sla_calendar_between(cal, from, to);
    return 0;
}

/* Reads module.field.key as an integer. */
static int64_t rule_number(struct rules *r, const char *module, const char *field,
                           const char *key, int64_t dflt)
{
    bson_t out = BSON_INITIALIZER;
    struct sd_error err;
    char path[96];
    snprintf(path, sizeof path, key ? "result.%s" : "result", key);
    int64_t v = dflt;
    bson_iter_t it;
    if (rules_get(r, module, field, &out, &err) == 0 && find(&out, path, &it) &&
        BSON_ITER_HOLDS_NUMBER(&it))
        v = bson_iter_as_int64(&it);
    bson_destroy(&out);
    return v;
}

/* sla.ladder: minutes overdue at which level i+1 starts. */
static int ladder(struct rules *r, int64_t *steps)
{
    bson_t out = BSON_INITIALIZER, arr;
    struct sd_error err;
    int n = 0;
    if (rules_get(r, "sla", "ladder", &out, &err) == 0 && sub_doc(&out, "result", &arr)) {
        bson_iter_t it;
        bson_iter_init(&it, &arr);
        while (bson_iter_next(&it) && n < MAX_LEVELS)
            if (BSON_ITER_HOLDS_NUMBER(&it))
                steps[n++] = bson_iter_as_int64(&it);
    }
    bson_destroy(&out);
    return n;
}

/* ---- planning mails --------------------------------------------------------- */

/* One outbox entry per recipient notify.lua names for `type`. */
static int emit(struct ctx *c, const char *type, const char *trigger, const bson_t *event,
                struct sd_error *err)
{
    if (!c->mail) {
        if (c->in->baseline)
            suppressed(c, type, "first install: the present is recorded, nobody is mailed");
        else
            suppressed(c, type, "room not found");
        return 0;
    }
    struct args a = {BSON_INITIALIZER, 0};
    arg_str(&a, type);
    arg_doc(&a, c->conv);
    arg_doc(&a, c->room);
    bson_t out = BSON_INITIALIZER, list;
    if (call(c, "notify", "recipients", &a, &out, err)) {
        bson_destroy(&out);
        return -1;
    }
    int rc = 0;
    bson_iter_t rit;
    uint32_t before = c->n_entries;
    if (sub_doc(&out, "result", &list) && bson_iter_init(&rit, &list)) {
        while (rc == 0 && bson_iter_next(&rit)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&rit))
                continue;
            uint32_t len;
            const uint8_t *data;
            bson_t recipient, tctx = BSON_INITIALIZER, rendered = BSON_INITIALIZER;
            bson_iter_document(&rit, &len, &data);
            bson_init_static(&recipient, data, len);
            BSON_APPEND_DOCUMENT(&tctx, "conversation", c->conv);
            BSON_APPEND_DOCUMENT(&tctx, "room", c->room);
            BSON_APPEND_DOCUMENT(&tctx, "recipient", &recipient);
            if (event)
                BSON_APPEND_DOCUMENT(&tctx, "event", event);
            BSON_APPEND_INT64(&tctx, "now", c->in->now_ms);
            struct args r = {BSON_INITIALIZER, 0};
            arg_str(&r, type);
            arg_doc(&r, &tctx);
            rc = call(c, "templates", "render", &r, &rendered, err);
            bson_destroy(&tctx);
            if (rc == 0) {
                const char *via = bson_path_utf8(&recipient, "via");
                bool sms = via && strcmp(via, "sms") == 0;
                char key[512], idx[12];
                snprintf(key, sizeof key, "%s:%s:%s:%s", type, c->id, trigger,
                         outbox_recipient_id(&recipient));
                snprintf(idx, sizeof idx, "%u", c->n_entries++);
                bson_t entry;
                BSON_APPEND_DOCUMENT_BEGIN(c->list, idx, &entry);
                BSON_APPEND_UTF8(&entry, "key", key);
                BSON_APPEND_UTF8(&entry, "type", type);
                BSON_APPEND_OID(&entry, "conversation_id", &c->oid);
                bson_iter_t f;
                if (sms && c->channel && bson_iter_init_find(&f, c->channel, "_id"))
                    bson_append_iter(&entry, "channel_id", -1, &f);
                outbox_entry_fill(&entry, &recipient, sms ? "sms" : "email",
                                  sms ? NULL : bson_path_utf8(c->room, "email_from"), &rendered,
                                  c->in->now_ms);
                bson_append_document_end(c->list, &entry);
            }
            bson_destroy(&rendered);
        }
    }
    if (rc == 0 && c->n_entries == before)
        suppressed(c, type, "nobody to tell: notify.lua recipients() named no one");
    bson_destroy(&out);
    return rc;
}

/* ---- ticket activity -------------------------------------------------------- */

static const char *status_type(const char *status)
{
    if (strcmp(status, "resolved") == 0)
        return "ticket.resolved";
    if (strcmp(status, "closed") == 0)
        return "ticket.closed";
    return "ticket.status_changed";
}

static int activity(struct ctx *c, const bson_t *state, struct sd_error *err)
{
    const bson_t *conv = c->conv;
    char assignee[128], by[128], trigger[300];
    id_text(conv, "assignee_id", assignee, sizeof assignee);
    id_text(conv, "assigned_by", by, sizeof by);
    /* Self-assignment is not news to the assignee (when the platform says who). */
    bool self = by[0] && strcmp(by, assignee) == 0;
    int64_t assigned_at = ms_at(conv, "assigned_at");
    if (!state) {
        if (emit(c, "ticket.created", "new", NULL, err))
            return -1;
        if (assignee[0] && !self) {
            snprintf(trigger, sizeof trigger, "%s:%lld", assignee,
                     (long long)(assigned_at ? assigned_at : ms_at(conv, "created_at")));
            if (emit(c, "ticket.assigned", trigger, NULL, err))
                return -1;
        } else if (self) {
            suppressed(c, "ticket.assigned", "self-assignment (assigned_by = assignee)");
        }
        return 0;
    }
    int64_t seen = ms_at(state, "seen_updated_at");
    const char *was_assignee = bson_path_utf8(state, "assignee");
    char when[40];
    bool new_assignee = assignee[0] && (!was_assignee || strcmp(was_assignee, assignee) != 0);
    if (new_assignee && !self) {
        snprintf(trigger, sizeof trigger, "%s:%lld", assignee,
                 (long long)(assigned_at ? assigned_at : seen));
        if (emit(c, "ticket.assigned", trigger, NULL, err))
            return -1;
    } else if (new_assignee) {
        suppressed(c, "ticket.assigned", "self-assignment (assigned_by = assignee)");
    } else if (assignee[0]) {
        suppressed(c, "ticket.assigned", "assignee unchanged since the last notification (%s)",
                   at_text(ms_at(state, "at"), when, sizeof when));
    }
    int64_t customer = ms_at(conv, "last_customer_message_at");
    if (customer && customer <= ms_at(state, "customer_at"))
        suppressed(c, "ticket.customer_message",
                   "no customer message since the one already notified (%s)",
                   at_text(ms_at(state, "customer_at"), when, sizeof when));
    if (customer > ms_at(state, "customer_at")) {
        /* Coalesced: one mail for every message up to the latest. */
        bson_t event = BSON_INITIALIZER;
        int64_t count = bson_path_int(c->in->counts, c->id, 0);
        if (count > 0)
            BSON_APPEND_INT64(&event, "count", count);
        BSON_APPEND_DATE_TIME(&event, "at", customer);
        snprintf(trigger, sizeof trigger, "%lld", (long long)customer);
        int rc = emit(c, "ticket.customer_message", trigger, &event, err);
        bson_destroy(&event);
        if (rc)
            return -1;
    }
    const char *status = bson_path_utf8(conv, "status"), *was = bson_path_utf8(state, "status");
    /* Snoozing is internal: the customer hears of neither end of it. */
    if (status && was && strcmp(status, was) != 0 &&
        (strcmp(status, "snoozed") == 0 || strcmp(was, "snoozed") == 0))
        suppressed(c, status_type(strcmp(status, "snoozed") ? status : was),
                   "status %s → %s: snoozing is internal, the customer hears of neither end of it",
                   was, status);
    if (status && was && strcmp(status, was) != 0 && strcmp(status, "snoozed") != 0 &&
        strcmp(was, "snoozed") != 0) {
        int64_t basis = strcmp(status, "resolved") == 0 ? ms_at(conv, "resolved_at")
                        : strcmp(status, "closed") == 0 ? ms_at(conv, "closed_at")
                                                        : 0;
        snprintf(trigger, sizeof trigger, "%s:%lld", status, (long long)(basis ? basis : seen));
        bson_t event = BSON_INITIALIZER;
        BSON_APPEND_UTF8(&event, "from", was);
        BSON_APPEND_UTF8(&event, "to", status);
        int rc = emit(c, status_type(status), trigger, &event, err);
        bson_destroy(&event);
        if (rc)
            return -1;
    }
    return 0;
}

/* ---- SLA and reminders ------------------------------------------------------ */

struct sla_plan {
    int64_t next_due;     /* 0: none */
    int64_t level;        /* new escalation level */
    const char *level_target; /* the deadline that reached it (when above the old level) */
    int64_t level_due;
    int64_t reminders;
    bson_t warned, breached; /* arrays being built */
    uint32_t n_warned, n_breached;
};

static void add_next(struct sla_plan *p, int64_t t)
{
    if (t > 0 && (p->next_due == 0 || t < p->next_due))
        p->next_due = t;
}

static void push_tag(bson_t *arr, uint32_t *n, const char *tag)
{
    char k[12];
    snprintf(k, sizeof k, "%u", (*n)++);
    BSON_APPEND_UTF8(arr, k, tag);
}

static int sla_event(struct ctx *c, const char *type, const char *target, int64_t due,
                     const char *trigger, struct sd_error *err)
{
    bson_t event = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&event, "target", target);
    BSON_APPEND_DATE_TIME(&event, "due", due);
    int rc = emit(c, type, trigger, &event, err);
    bson_destroy(&event);
    return rc;
}

/* One target (first_response or resolution): warning, breach, escalation. */
static int target(struct ctx *c, struct sla_plan *p, const char *name, int64_t due,
                  int64_t warn_at, const bson_t *old_warned, const bson_t *old_breached,
                  const int64_t *steps, int n_steps, struct sd_error *err)
{
    int64_t now = c->in->now_ms;
    char tag[96];
    snprintf(tag, sizeof tag, "%s:%lld", name, (long long)due);
    bool warned = list_has(old_warned, tag), breached = list_has(old_breached, tag);
    if (warned)
        push_tag(&p->warned, &p->n_warned, tag);
    if (breached)
        push_tag(&p->breached, &p->n_breached, tag);
    char w1[40], w2[40];
    if (now < warn_at) {
        add_next(p, warn_at);
        suppressed(c, "ticket.sla_warning", "%s due %s: not due until %s", name,
                   at_text(due, w1, sizeof w1), at_text(warn_at, w2, sizeof w2));
        return 0;
    }
    if (now < due) {
        add_next(p, due);
        if (!warned && !breached) {
            push_tag(&p->warned, &p->n_warned, tag);
            return sla_event(c, "ticket.sla_warning", name, due, tag, err);
        }
        suppressed(c, "ticket.sla_warning", "already warned for this deadline (%s due %s)",
                   name, at_text(due, w1, sizeof w1));
        return 0;
    }
    if (!breached) {
        push_tag(&p->breached, &p->n_breached, tag);
        if (sla_event(c, "ticket.sla_breached", name, due, tag, err))
            return -1;
    }
    /* The ladder: levels by business minutes overdue; up only. */
    int64_t overdue = 0, level = 0;
    if (sla_between(c, due, now, &overdue, err))
        return -1;
    struct args a = {BSON_INITIALIZER, 0};
    arg_int(&a, overdue);
    if (call_int(c, "sla", "escalation_level", &a, &level, err))
        return -1;
    /* Mailed once for both deadlines, after both (escalate). */
    if (level > p->level) {
        p->level = level;
        p->level_target = name;
        p->level_due = due;
    }
    if (level < n_steps) {
        int64_t next;
        if (sla_due(c, due, steps[level], &next, err))
            return -1;
        add_next(p, next > now ? next : now + 60000);
    }
    return 0;
}

/* One ticket.escalated per recipient for the level reached, however many rungs
 * it climbed since the last look (downtime, a late first look): the key names
 * that level, so a later step up the ladder still mails once. */
static int escalate(struct ctx *c, const struct sla_plan *p, int64_t old_level,
                    struct sd_error *err)
{
    if (p->level <= old_level || !p->level_target)
        return 0;
    char trigger[96];
    snprintf(trigger, sizeof trigger, "%lld:%lld", (long long)p->level, (long long)p->level_due);
    bson_t event = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&event, "target", p->level_target);
    BSON_APPEND_DATE_TIME(&event, "due", p->level_due);
    BSON_APPEND_INT64(&event, "level", p->level);
    BSON_APPEND_INT64(&event, "previous_level", old_level);
    int rc = emit(c, "ticket.escalated", trigger, &event, err);
    bson_destroy(&event);
    return rc;
}

static int reminders(struct ctx *c, struct sla_plan *p, const bson_t *state, int64_t customer,
                     struct sd_error *err)
{
    struct rules *r = c->in->rules;
    int64_t after = rule_number(r, "notify", "reminder", "after_minutes", 60);
    int64_t every = rule_number(r, "notify", "reminder", "repeat_every_minutes", 120);
    int64_t max = rule_number(r, "notify", "reminder", "max_repeats", 3);
    int64_t sent =
        ms_at(state, "reminder_for") == customer ? bson_path_int(state, "reminders", 0) : 0;
    int64_t k = sent, at = 0;
    while (k < max) {
        if (sla_due(c, customer, after + k * every, &at, err))
            return -1;
        if (c->in->now_ms < at)
            break;
        k++;
    }
    if (k > sent) {
        /* Only the latest one due: after an outage, one mail, not a burst. */
        char trigger[64];
        snprintf(trigger, sizeof trigger, "%lld:%lld", (long long)customer, (long long)k);
        bson_t event = BSON_INITIALIZER;
        BSON_APPEND_INT64(&event, "n", k);
        BSON_APPEND_INT64(&event, "of", max);
        int rc = emit(c, "ticket.response_reminder", trigger, &event, err);
        bson_destroy(&event);
        if (rc)
            return -1;
    }
    if (k == sent && k < max)
        suppressed(c, "ticket.response_reminder",
                   "customer waiting %lld min, reminder %lld of %lld after %lld min (at %s)",
                   (long long)((c->in->now_ms - customer) / 60000), (long long)k + 1,
                   (long long)max, (long long)(after + k * every),
                   at_text(at, (char[40]){0}, 40));
    else if (k == sent)
        suppressed(c, "ticket.response_reminder", "all %lld reminders sent for this customer "
                   "message", (long long)max);
    if (k < max)
        add_next(p, at);
    p->reminders = k;
    return 0;
}

static bool is(const char *s, const char *v) { return s && strcmp(s, v) == 0; }

/* Computes the SLA, plans warnings, breaches, escalations and reminders, and
 * appends sla / sla_unset / escalation_level / the reminder state to action
 * and state. */
static int sla(struct ctx *c, const bson_t *state, bson_t *action, bson_t *new_state,
               struct sd_error *err)
{
    const bson_t *conv = c->conv;
    int64_t now = c->in->now_ms;
    const char *status = bson_path_utf8(conv, "status");
    bool active = is(status, "open");
    bson_t old = BSON_INITIALIZER, old_warned, old_breached;
    bool has_old = old_sla(state, conv, &old);
    bool has_warned = has_old && sub_doc(&old, "warned", &old_warned);
    bool has_breached = has_old && sub_doc(&old, "breached", &old_breached);

    struct args a = {BSON_INITIALIZER, 0};
    arg_doc(&a, conv);
    arg_doc(&a, c->room);
    bson_t pol = BSON_INITIALIZER;
    if (call(c, "sla", "policy", &a, &pol, err)) {
        bson_destroy(&pol);
        return -1;
    }
    const char *policy = bson_path_utf8(&pol, "result.name");
    int64_t first = bson_path_int(&pol, "result.first_response", 0);
    int64_t resolution = bson_path_int(&pol, "result.resolution", 0);
    int64_t warn_before = bson_path_int(&pol, "result.warn_before", 0);

    /* The clock stops while pending, snoozed, resolved or closed: the time
     * between the pause (seen at the updated_at of the change) and the
     * resume, in business minutes, moves both deadlines. */
    int64_t changed = ms_at(conv, "updated_at");
    if (!changed || changed > now)
        changed = now;
    int64_t paused_at = has_old ? ms_at(&old, "paused_at") : 0;
    int64_t paused = has_old ? bson_path_int(&old, "paused_minutes", 0) : 0;
    if (!active && !paused_at)
        paused_at = changed;
    if (active && paused_at) {
        int64_t m = 0;
        if (sla_between(c, paused_at, changed > paused_at ? changed : paused_at, &m, err)) {
            bson_destroy(&pol);
            return -1;
        }
        paused += m;
        paused_at = 0;
    }
    int64_t created = ms_at(conv, "created_at");
    if (!created)
        created = changed;
    bool responded = ms_at(conv, "first_response_at") != 0;
    int64_t fr_due = 0, fr_warn = 0, res_due = 0, res_warn = 0;
    int rc = 0;
    if (!responded)
        rc = sla_due(c, created, first + paused, &fr_due, err) ||
             sla_due(c, created, first + paused - warn_before, &fr_warn, err);
    if (rc == 0)
        rc = sla_due(c, created, resolution + paused, &res_due, err) ||
             sla_due(c, created, resolution + paused - warn_before, &res_warn, err);
    if (rc) {
        bson_destroy(&pol);
        return -1;
    }

    if (c->in->walks) {
        const struct sla_calendar *cal = calendar(c, err);
        const char *names[2] = {"first_response", "resolution"};
        int64_t mins[2] = {first + paused, resolution + paused}, dues[2] = {fr_due, res_due};
        for (int i = 0; cal && i < 2; i++) {
            if (!dues[i] || bson_has_field(c->in->walks, names[i]))
                continue;
            bson_t w;
            BSON_APPEND_DOCUMENT_BEGIN(c->in->walks, names[i], &w);
            BSON_APPEND_DATE_TIME(&w, "start", created);
            BSON_APPEND_INT64(&w, "business_minutes", mins[i]);
            BSON_APPEND_INT64(&w, "paused_minutes", paused);
            BSON_APPEND_DATE_TIME(&w, "due", dues[i]);
            sla_calendar_walk(cal, created, mins[i], &w);
            bson_append_document_end(c->in->walks, &w);
        }
    }
    struct sla_plan p = {0};
    p.level = bson_path_int(conv, "escalation_level", 0);
    int64_t old_level = p.level;
    bson_init(&p.warned);
    bson_init(&p.breached);
    int64_t steps[MAX_LEVELS];
    int n_steps = ladder(c->in->rules, steps);
    if (active) {
        if (fr_due)
            rc = target(c, &p, "first_response", fr_due, fr_warn, has_warned ? &old_warned : NULL,
                        has_breached ? &old_breached : NULL, steps, n_steps, err);
        if (rc == 0)
            rc = target(c, &p, "resolution", res_due, res_warn, has_warned ? &old_warned : NULL,
                        has_breached ? &old_breached : NULL, steps, n_steps, err);
        if (rc == 0)
            rc = escalate(c, &p, old_level, err);
        int64_t customer = ms_at(conv, "last_customer_message_at");
        if (rc == 0 && customer && customer > ms_at(conv, "last_agent_message_at"))
            rc = reminders(c, &p, state, customer, err);
        else if (rc == 0 && customer)
            suppressed(c, "ticket.response_reminder",
                       "an agent answered after the customer's last message");
        if (rc == 0 && customer) {
            BSON_APPEND_DATE_TIME(new_state, "reminder_for", customer);
            BSON_APPEND_INT64(new_state, "reminders", p.reminders);
        }
    } else {
        suppressed(c, "ticket.sla_warning", "the SLA clock is stopped while the ticket is %s",
                   status ? status : "(no status)");
        /* Paused or stopped: nothing is due; what was warned or breached
         * stays recorded (a resume with the same deadline does not repeat). */
        bson_iter_t it;
        if (has_warned && bson_iter_init(&it, &old_warned))
            while (bson_iter_next(&it))
                if (BSON_ITER_HOLDS_UTF8(&it))
                    push_tag(&p.warned, &p.n_warned, bson_iter_utf8(&it, NULL));
        if (has_breached && bson_iter_init(&it, &old_breached))
            while (bson_iter_next(&it))
                if (BSON_ITER_HOLDS_UTF8(&it))
                    push_tag(&p.breached, &p.n_breached, bson_iter_utf8(&it, NULL));
        if (state && ms_at(state, "reminder_for")) {
            BSON_APPEND_DATE_TIME(new_state, "reminder_for", ms_at(state, "reminder_for"));
            BSON_APPEND_INT64(new_state, "reminders", bson_path_int(state, "reminders", 0));
        }
    }
    if (rc == 0) {
        bson_t doc;
        BSON_APPEND_DOCUMENT_BEGIN(action, "sla", &doc);
        BSON_APPEND_UTF8(&doc, "policy", policy ? policy : "default");
        if (fr_due)
            BSON_APPEND_DATE_TIME(&doc, "first_response_due", fr_due);
        BSON_APPEND_DATE_TIME(&doc, "resolution_due", res_due);
        if (p.next_due)
            BSON_APPEND_DATE_TIME(&doc, "next_due", p.next_due);
        BSON_APPEND_ARRAY(&doc, "warned", &p.warned);
        BSON_APPEND_ARRAY(&doc, "breached", &p.breached);
        if (paused_at)
            BSON_APPEND_DATE_TIME(&doc, "paused_at", paused_at);
        BSON_APPEND_INT64(&doc, "paused_minutes", paused);
        bson_append_document_end(action, &doc);
        if (p.level > old_level)
            BSON_APPEND_INT64(action, "escalation_level", p.level);
    }
    bson_destroy(&p.warned);
    bson_destroy(&p.breached);
    bson_destroy(&pol);
    return rc;
}

/* ---- one conversation --------------------------------------------------------- */

static void warn_doc(const struct notification_input *in, const char *id, const char *msg,
                     const char *detail)
{
    log_field(LOG_WARN, in->log, "notification.bad_document", "conversation_id", id,
              "conversation %s: %s%s", id, msg, detail);
}

static int decide_one(const struct notification_input *in, const bson_t *conv, bson_t *actions,
                      uint32_t idx, int *bad, struct sd_error *err)
{
    struct ctx c = {.in = in, .conv = conv};
    bson_iter_t it;
    if (!bson_iter_init_find(&it, conv, "_id") || !BSON_ITER_HOLDS_OID(&it)) {
        (*bad)++;
        return 0;
    }
    bson_oid_copy(bson_iter_oid(&it), &c.oid);
    bson_oid_to_string(&c.oid, c.id);
    char room_hex[128];
    id_text(conv, "room_id", room_hex, sizeof room_hex);
    bson_t room, channel, state_doc;
    if (room_hex[0] && sub_doc(in->rooms, room_hex, &room))
        c.room = &room;
    if (room_hex[0] && sub_doc(in->channels, room_hex, &channel))
        c.channel = &channel;
    c.have_zone = room_hex[0] && sub_doc(in->zones, room_hex, &c.zone);
    /* A record holding only a failure (a new ticket whose decision failed) is
     * no record: the ticket is still news. */
    const bson_t *state =
        sub_doc(in->states, c.id, &state_doc) && bson_path_utf8(&state_doc, "status")
            ? &state_doc
            : NULL;
    const char *status = bson_path_utf8(conv, "status");
    if (!c.room) {
        warn_doc(in, c.id, "room not found: ", room_hex[0] ? room_hex : "(no room_id)");
        (*bad)++;
    }
    if (!status) {
        warn_doc(in, c.id, "status missing or not a string", "");
        (*bad)++;
    }
    c.mail = !in->baseline && c.room;

    char key[12];
    snprintf(key, sizeof key, "%u", idx);
    bson_t action, list, new_state;
    BSON_APPEND_DOCUMENT_BEGIN(actions, key, &action);
    BSON_APPEND_UTF8(&action, "kind", "notify");
    BSON_APPEND_UTF8(&action, "target", c.id);
    BSON_APPEND_OID(&action, "conversation_id", &c.oid);
    if (bson_iter_init_find(&it, conv, "updated_at") && BSON_ITER_HOLDS_DATE_TIME(&it))
        BSON_APPEND_DATE_TIME(&action, "read_updated_at", bson_iter_date_time(&it));
    BSON_APPEND_ARRAY_BEGIN(&action, "notifications", &list);
    c.list = &list;
    int rc = activity(&c, state, err);
    bson_init(&new_state);
    char assignee[128];
    id_text(conv, "assignee_id", assignee, sizeof assignee);
    BSON_APPEND_UTF8(&new_state, "status", status ? status : "");
    BSON_APPEND_UTF8(&new_state, "assignee", assignee);
    int64_t customer = ms_at(conv, "last_customer_message_at"), was = ms_at(state, "customer_at");
    BSON_APPEND_DATE_TIME(&new_state, "customer_at", customer > was ? customer : was);
    BSON_APPEND_DATE_TIME(&new_state, "seen_updated_at", ms_at(conv, "updated_at"));
    bson_t sla_part = BSON_INITIALIZER, old, kept;
    if (rc == 0 && c.room && status) {
        rc = sla(&c, state, &sla_part, &new_state, err);
    } else if (rc == 0 && old_sla(sub_doc(in->states, c.id, &state_doc) ? &state_doc : NULL,
                                  conv, &old)) {
        /* A bad document keeps its SLA but is not looked at again until it
         * changes: without next_due its record is no longer found as due. */
        BSON_APPEND_DOCUMENT_BEGIN(&sla_part, "sla", &kept);
        bson_copy_to_excluding_noinit(&old, &kept, "next_due", NULL);
        bson_append_document_end(&sla_part, &kept);
    }
    bson_append_array_end(&action, &list);
    BSON_APPEND_DATE_TIME(&new_state, "at", in->now_ms);
    BSON_APPEND_DOCUMENT(&action, "state", &new_state);
    char failure[48];
    snprintf(failure, sizeof failure, "%s.failure", c.id);
    if (find(in->states, failure, &it))
        BSON_APPEND_BOOL(&action, "clear_failure", true);
    bson_concat(&action, &sla_part);
    bson_destroy(&sla_part);
    bson_destroy(&new_state);
    bson_append_document_end(actions, &action);
    sla_calendar_free(&c.cal);
    if (rc) {
        sd_error_prefix(err, "conversation %s", c.id);
        return -1;
    }
    return 1;
}

/* Minutes from a failure to the retry: the next tick, then 1, 3, 7, 15, 31,
 * then hourly. */
static int64_t retry_after_minutes(int64_t attempts)
{
    return attempts >= 7 ? 60 : (INT64_C(1) << (attempts - 1)) - 1;
}

/* The action for a conversation whose decision failed: its record keeps the
 * failure (attempts, error), and its sla.next_due is set to the retry, so
 * that the next ticks' sweep finds it through its index whether or not the
 * platform changes it; after NOTIFY_MAX_ATTEMPTS failures in a row it is
 * parked: next_due removed, looked at again only when it changes. */
static void failed_one(const struct notification_input *in, const bson_t *conv,
                       const struct sd_error *err, bson_t *action)
{
    bson_iter_t it;
    char hex[25] = "?";
    const bson_oid_t *oid = NULL;
    if (bson_iter_init_find(&it, conv, "_id") && BSON_ITER_HOLDS_OID(&it)) {
        oid = bson_iter_oid(&it);
        bson_oid_to_string(oid, hex);
    }
    char path[48];
    snprintf(path, sizeof path, "%s.failure.attempts", hex);
    int64_t attempts = bson_path_int(in->states, path, 0) + 1;
    bool parked = attempts >= NOTIFY_MAX_ATTEMPTS;
    int64_t retry_at = in->now_ms + retry_after_minutes(attempts) * 60000;

    bson_t f = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&f, "conversation_id", hex);
    BSON_APPEND_INT64(&f, "attempts", attempts);
    if (parked) {
        log_msg(LOG_ERROR, in->log, "notification.parked", &f,
                "%s; failed %lld times in a row: parked until the conversation changes",
                err->message, (long long)attempts);
    } else {
        char when[32];
        clock_format_iso(retry_at, when, sizeof when);
        log_msg(LOG_ERROR, in->log, "notification.decide_failed", &f,
                "%s; attempt %lld of %d, retried from %s", err->message, (long long)attempts,
                NOTIFY_MAX_ATTEMPTS, when);
    }
    bson_destroy(&f);
    if (!oid)
        return; /* not reached: decide_one fails only with an _id */

    bson_t state, failure, list;
    BSON_APPEND_UTF8(action, "kind", "notify");
    BSON_APPEND_UTF8(action, "target", hex);
    BSON_APPEND_OID(action, "conversation_id", oid);
    if (bson_iter_init_find(&it, conv, "updated_at") && BSON_ITER_HOLDS_DATE_TIME(&it))
        BSON_APPEND_DATE_TIME(action, "read_updated_at", bson_iter_date_time(&it));
    BSON_APPEND_BOOL(action, "failed", true);
    BSON_APPEND_ARRAY_BEGIN(action, "notifications", &list);
    bson_append_array_end(action, &list);
    BSON_APPEND_DOCUMENT_BEGIN(action, "state", &state);
    BSON_APPEND_DATE_TIME(&state, "at", in->now_ms); /* this tick's due query passes it by */
    BSON_APPEND_DOCUMENT_BEGIN(&state, "failure", &failure);
    BSON_APPEND_INT64(&failure, "attempts", attempts);
    BSON_APPEND_UTF8(&failure, "error", err->message);
    BSON_APPEND_DATE_TIME(&failure, "at", in->now_ms);
    if (bson_iter_init_find(&it, conv, "updated_at") && BSON_ITER_HOLDS_DATE_TIME(&it))
        BSON_APPEND_DATE_TIME(&failure, "updated_at", bson_iter_date_time(&it));
    if (parked)
        BSON_APPEND_BOOL(&failure, "parked", true);
    else
        BSON_APPEND_DATE_TIME(&failure, "retry_at", retry_at);
    bson_append_document_end(&state, &failure);
    bson_append_document_end(action, &state);
    /* The sla as it was, but for next_due. */
    bson_t old, sla, record;
    bool has_old = old_sla(sub_doc(in->states, hex, &record) ? &record : NULL, conv, &old);
    BSON_APPEND_DOCUMENT_BEGIN(action, "sla", &sla);
    if (has_old)
        bson_copy_to_excluding_noinit(&old, &sla, "next_due", NULL);
    if (!parked)
        BSON_APPEND_DATE_TIME(&sla, "next_due", retry_at);
    bson_append_document_end(action, &sla);
}

int notification_decide(const struct notification_input *in, bson_t *actions,
                        uint32_t *n_actions)
{
    int bad = 0;
    for (size_t i = 0; i < in->n_conversations; i++) {
        struct sd_error err;
        /* Built aside so that a conversation failing half-way adds nothing. */
        bson_t scratch = BSON_INITIALIZER;
        int rc = decide_one(in, in->conversations[i], &scratch, 0, &bad, &err);
        bson_iter_t it;
        if (rc == 1 && bson_iter_init(&it, &scratch) && bson_iter_next(&it)) {
            char idx[12];
            snprintf(idx, sizeof idx, "%u", (*n_actions)++);
            bson_append_iter(actions, idx, -1, &it);
        } else if (rc < 0) {
            bson_t action = BSON_INITIALIZER;
            failed_one(in, in->conversations[i], &err, &action);
            if (!bson_empty(&action)) {
                char idx[12];
                snprintf(idx, sizeof idx, "%u", (*n_actions)++);
                BSON_APPEND_DOCUMENT(actions, idx, &action);
            }
            bson_destroy(&action);
            bad++;
        }
        bson_destroy(&scratch);
    }
    return bad;
}

void notification_zone(const bson_t *room, const char *room_hex, int64_t now_ms,
                       const struct log_ctx *log, bson_t *out, const char *key)
{
    const char *name = bson_path_utf8(room, "timezone");
    const struct tz_zone *z = name ? tz_get(name) : NULL;
    bson_t arr, e;
    BSON_APPEND_ARRAY_BEGIN(out, key, &arr);
    if (!z) {
        if (name && strcmp(name, "UTC") != 0) {
            bson_t f = BSON_INITIALIZER;
            BSON_APPEND_UTF8(&f, "room_id", room_hex);
            BSON_APPEND_UTF8(&f, "timezone", name);
            log_msg(LOG_WARN, log, "notification.unknown_timezone", &f,
                    "room %s: unknown time zone \"%s\"; treated as UTC", room_hex, name);
            bson_destroy(&f);
        }
        BSON_APPEND_DOCUMENT_BEGIN(&arr, "0", &e);
        BSON_APPEND_INT64(&e, "at", 0);
        BSON_APPEND_INT64(&e, "offset", 0);
        bson_append_document_end(&arr, &e);
    } else {
        /* Two years either side of now: tickets older than that keep the
         * offset in effect at the start. */
        int64_t at[64];
        int32_t off[64];
        int64_t now_s = now_ms / 1000, span = 2 * 366 * 86400LL;
        size_t n = tz_changes(z, now_s - span, now_s + span, at, off, 64);
        for (size_t i = 0; i < n; i++) {
            char k[12];
            snprintf(k, sizeof k, "%zu", i);
            BSON_APPEND_DOCUMENT_BEGIN(&arr, k, &e);
            BSON_APPEND_INT64(&e, "at", i == 0 ? INT64_MIN / 2 : at[i] * 1000);
            BSON_APPEND_INT64(&e, "offset", off[i] / 60);
            bson_append_document_end(&arr, &e);
        }
    }
    bson_append_array_end(out, &arr);
}
