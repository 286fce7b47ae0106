/* msgstatus_decide — the pure heart of the message-status job (see
 * model.h): events matched to messages, the status order applied,
 * each event recorded once, retry.lua asked about failures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "jobs/message_status/model.h"

/* SPEC §2: queued < sending < sent < delivered < read; failed and
 * undelivered are accepted only before delivered. */
static int rank(const char *s)
{
    static const struct {
        const char *name;
        int rank;
    } order[] = {{"queued", 0},  {"sending", 10}, {"sent", 20},  {"failed", 25},
                 {"undelivered", 25}, {"delivered", 30}, {"read", 40}};
    for (size_t i = 0; s && i < sizeof order / sizeof *order; i++)
        if (!strcmp(s, order[i].name))
            return order[i].rank;
    return -1;
}

static bool is_failure(const char *s) { return s && (!strcmp(s, "failed") || !strcmp(s, "undelivered")); }

static bool moves_forward(const char *to, const char *from)
{
    return is_failure(to) ? rank(from) < 25 : rank(to) > rank(from);
}

/* One message touched by the batch: its state as it evolves. */
struct mstate {
    const char *key;            /* "<provider>:<provider_message_id>" */
    const bson_t *doc;
    char status[24], before[24];
    bool history_is_array;
    /* Pointers, not bson_t members: bson_t asks for 128-byte alignment, which
     * a realloc'd array of these structs does not give (UBSan traps on it). */
    bson_t *push;               /* new history entries (array) */
    uint32_t n_push;
    bson_t *ids;                /* their event ids (array) */
    int64_t delivered_at, read_at, failed_at, sent_at;
    bson_t *failure;            /* owned copy of the event that moved it to failed/undelivered */
    bool changed;
};

/* A message of the input, found by key in a sorted array (a batch names
 * hundreds of messages; searching the input document per event was most of
 * the job's CPU). */
struct mref {
    const char *key;
    const uint8_t *data;
    uint32_t len;
    long state;                 /* index into work.m, -1 before its first event */
};

struct work {
    const struct msgstatus_input *in;
    struct mstate *m;
    size_t n, cap;
    struct mref *refs;
    size_t n_refs;
};

static int cmp_ref(const void *a, const void *b)
{
    return strcmp(((const struct mref *)a)->key, ((const struct mref *)b)->key);
}

static void index_messages(struct work *w, const bson_t *messages)
{
    bson_iter_t it;
    size_t cap = 64;
    w->refs = malloc(cap * sizeof *w->refs);
    if (!bson_iter_init(&it, messages))
        return;
    while (bson_iter_next(&it)) {
        if (!BSON_ITER_HOLDS_DOCUMENT(&it))
            continue;
        if (w->n_refs == cap)
            w->refs = realloc(w->refs, (cap *= 2) * sizeof *w->refs);
        struct mref *r = &w->refs[w->n_refs++];
        r->key = bson_iter_key(&it);
        bson_iter_document(&it, &r->len, &r->data);
        r->state = -1;
    }
    qsort(w->refs, w->n_refs, sizeof *w->refs, cmp_ref);
}

static struct mref *find_ref(struct work *w, const char *key)
{
    struct mref probe = {.key = key};
    return bsearch(&probe, w->refs, w->n_refs, sizeof *w->refs, cmp_ref);
}

static struct mstate *state_for(struct work *w, struct mref *ref)
{
    if (ref->state >= 0)
        return &w->m[ref->state];
    const char *key = ref->key;
    bson_t *doc = bson_new_from_data(ref->data, ref->len);
    ref->state = (long)w->n;
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 32;
        w->m = realloc(w->m, w->cap * sizeof *w->m);
    }
    struct mstate *s = &w->m[w->n++];
    memset(s, 0, sizeof *s);
    s->key = key;
    s->doc = doc;
    const char *st = bson_field_utf8(doc, "status");
    snprintf(s->status, sizeof s->status, "%s", st ? st : "");
    snprintf(s->before, sizeof s->before, "%s", s->status);
    bson_iter_t it;
    s->history_is_array = bson_iter_init_find(&it, doc, "status_history") &&
                          BSON_ITER_HOLDS_ARRAY(&it);
    s->push = bson_new();
    s->ids = bson_new();
    return s;
}

static bool seen(const struct mstate *s, const char *event_id)
{
    bson_iter_t it, h, e;
    if (s->history_is_array && bson_iter_init_find(&it, s->doc, "status_history") &&
        bson_iter_recurse(&it, &h)) {
        while (bson_iter_next(&h))
            if (BSON_ITER_HOLDS_DOCUMENT(&h) && bson_iter_recurse(&h, &e) &&
                bson_iter_find(&e, "event_id") && BSON_ITER_HOLDS_UTF8(&e) &&
                !strcmp(bson_iter_utf8(&e, NULL), event_id))
                return true;
    }
    if (bson_iter_init(&it, s->ids))
        while (bson_iter_next(&it))
            if (!strcmp(bson_iter_utf8(&it, NULL), event_id))
                return true;
    return false;
}

static void copy_field(bson_t *to, const bson_t *from, const char *key)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, from, key))
        bson_append_iter(to, key, -1, &it);
}

/* Applies one event to a message's state; returns its outcome and fills note. */
static const char *apply_event(struct mstate *s, const bson_t *ev, char *note, size_t size)
{
    const char *event_id = bson_field_utf8(ev, "event_id"), *status = bson_field_utf8(ev, "status"),
               *pstatus = bson_field_utf8(ev, "provider_status"), *source = bson_field_utf8(ev, "source");
    if (seen(s, event_id))
        return "duplicate";
    int64_t at = bson_field_date(ev, "at", 0);
    /* an event of an earlier attempt: the message was re-sent under a new id
     * since (apply.c found it through conversation-message-sids) */
    const char *ev_pmid = bson_field_utf8(ev, "provider_message_id"),
               *cur_pmid = bson_field_utf8(s->doc, "provider_message_id");
    bool earlier = ev_pmid && cur_pmid && strcmp(ev_pmid, cur_pmid) != 0;
    bool applies = status && !earlier && moves_forward(status, s->status);
    char idx[12];
    snprintf(idx, sizeof idx, "%u", s->n_push++);
    bson_t h;
    BSON_APPEND_DOCUMENT_BEGIN(s->push, idx, &h);
    BSON_APPEND_UTF8(&h, "status", status ? status : pstatus);
    BSON_APPEND_DATE_TIME(&h, "at", at);
    BSON_APPEND_UTF8(&h, "source", source ? source : "webhook");
    copy_field(&h, ev, "code");
    BSON_APPEND_UTF8(&h, "provider_status", pstatus);
    BSON_APPEND_UTF8(&h, "event_id", event_id);
    BSON_APPEND_BOOL(&h, "applied", applies);
    bson_append_document_end(s->push, &h);
    BSON_APPEND_UTF8(s->ids, idx, event_id);
    if (earlier) {
        snprintf(note, size, "%s of an earlier attempt (%s; the message is %s now) is recorded "
                 "in the history only", pstatus, ev_pmid, cur_pmid);
        return "history";
    }
    if (!status) {
        snprintf(note, size, "%s is recorded in the history only", pstatus);
        return "history";
    }
    if (!applies) {
        snprintf(note, size, "%s after %s: the status does not move backwards", status,
                 s->status[0] ? s->status : "(none)");
        return "ignored";
    }
    snprintf(s->status, sizeof s->status, "%s", status);
    s->changed = true;
    if (!strcmp(status, "delivered"))
        s->delivered_at = at;
    else if (!strcmp(status, "read"))
        s->read_at = at;
    else if (!strcmp(status, "sent"))
        s->sent_at = at;
    else if (is_failure(status)) {
        s->failed_at = at;
        if (s->failure)
            bson_destroy(s->failure);
        s->failure = bson_copy(ev); /* ev lives only as long as the caller's loop */
    }
    return "applied";
}

static int call_retry(const struct msgstatus_input *in, const struct mstate *s, bson_t *out,
                      struct sd_error *err)
{
    bson_t args = BSON_INITIALIZER, e;
    BSON_APPEND_DOCUMENT(&args, "0", s->doc);
    BSON_APPEND_DOCUMENT_BEGIN(&args, "1", &e);
    copy_field(&e, s->failure, "code");
    const char *m = bson_field_utf8(s->failure, "error_message");
    if (m)
        BSON_APPEND_UTF8(&e, "message", m);
    bson_append_document_end(&args, &e);
    bson_iter_t it;
    int64_t attempts = bson_iter_init_find(&it, s->doc, "attempts") && BSON_ITER_HOLDS_NUMBER(&it)
                           ? bson_iter_as_int64(&it)
                           : 1;
    BSON_APPEND_INT64(&args, "2", attempts > 0 ? attempts : 1);
    int rc = rules_call(in->rules, "retry", "decide", &args, out, err);
    bson_destroy(&args);
    return rc;
}

static bool flag(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_BOOL(&it) &&
           bson_iter_bool(&it);
}

/* The update of one touched message (see model.h for the shape).
 * retry.lua is asked first, before anything is appended: a rule that fails
 * for this message leaves `updates` as it was (and every document in it
 * closed), so the caller can skip this message and go on with the rest. */
static int emit_update(const struct msgstatus_input *in, struct mstate *s, bson_t *updates,
                       uint32_t *n, struct sd_error *err)
{
    const char *direction = bson_field_utf8(s->doc, "direction");
    bool ask = s->changed && is_failure(s->status) && s->failure && direction &&
               !strcmp(direction, "outbound") && !flag(s->doc, "final");
    bson_t out = BSON_INITIALIZER;
    if (ask && call_retry(in, s, &out, err)) {
        bson_destroy(&out);
        return sd_error_prefix(err, "retry.lua decide for message %s", s->key);
    }
    char idx[12];
    snprintf(idx, sizeof idx, "%u", (*n)++);
    bson_t u, set, retry;
    BSON_APPEND_DOCUMENT_BEGIN(updates, idx, &u);
    bson_iter_t it;
    if (bson_iter_init_find(&it, s->doc, "_id"))
        bson_append_iter(&u, "message_id", -1, &it);
    if (bson_iter_init_find(&it, s->doc, "_id") && BSON_ITER_HOLDS_OID(&it)) {
        char hex[25];
        bson_oid_to_string(bson_iter_oid(&it), hex);
        BSON_APPEND_UTF8(&u, "target", hex);
    }
    BSON_APPEND_UTF8(&u, "key", s->key);
    if (bson_iter_init_find(&it, s->doc, "updated_at") && BSON_ITER_HOLDS_DATE_TIME(&it))
        BSON_APPEND_DATE_TIME(&u, "read_updated_at", bson_iter_date_time(&it));
    BSON_APPEND_UTF8(&u, "before", s->before);
    BSON_APPEND_UTF8(&u, "after", s->status);
    BSON_APPEND_DOCUMENT_BEGIN(&u, "set", &set);
    bson_init(&retry);
    bool has_retry = false;
    if (s->changed) {
        BSON_APPEND_UTF8(&set, "status", s->status);
        if (s->delivered_at)
            BSON_APPEND_DATE_TIME(&set, "delivered_at", s->delivered_at);
        if (s->read_at)
            BSON_APPEND_DATE_TIME(&set, "read_at", s->read_at);
        if (s->sent_at && !bson_has_field(s->doc, "sent_at"))
            BSON_APPEND_DATE_TIME(&set, "sent_at", s->sent_at);
        if (is_failure(s->status) && s->failure) {
            bson_t e;
            BSON_APPEND_DATE_TIME(&set, "failed_at", s->failed_at);
            BSON_APPEND_DOCUMENT_BEGIN(&set, "error", &e);
            bson_iter_t c;
            if (bson_iter_init_find(&c, s->failure, "code"))
                bson_append_iter(&e, "code", -1, &c);
            else
                BSON_APPEND_NULL(&e, "code");
            const char *m = bson_field_utf8(s->failure, "error_message");
            if (m)
                BSON_APPEND_UTF8(&e, "message", m);
            else
                BSON_APPEND_NULL(&e, "message");
            bson_append_document_end(&set, &e);
            if (ask) {
                bson_iter_t r, f;
                bool again = false, final = false;
                int64_t delay = 0;
                const char *reason = NULL;
                if (bson_iter_init_find(&r, &out, "result") && BSON_ITER_HOLDS_DOCUMENT(&r)) {
                    bson_iter_recurse(&r, &f);
                    while (bson_iter_next(&f)) {
                        const char *k = bson_iter_key(&f);
                        if (!strcmp(k, "retry") && BSON_ITER_HOLDS_BOOL(&f))
                            again = bson_iter_bool(&f);
                        else if (!strcmp(k, "final") && BSON_ITER_HOLDS_BOOL(&f))
                            final = bson_iter_bool(&f);
                        else if (!strcmp(k, "delay_seconds") && BSON_ITER_HOLDS_NUMBER(&f))
                            delay = bson_iter_as_int64(&f);
                        else if (!strcmp(k, "reason") && BSON_ITER_HOLDS_UTF8(&f))
                            reason = bson_iter_utf8(&f, NULL);
                    }
                }
                has_retry = true;
                BSON_APPEND_BOOL(&retry, "retry", again);
                if (again) {
                    if (delay < 0)
                        delay = 0;
                    BSON_APPEND_DATE_TIME(&set, "next_retry_at", in->now_ms + delay * 1000);
                    BSON_APPEND_BOOL(&set, "final", false);
                    BSON_APPEND_INT64(&retry, "delay_seconds", delay);
                } else {
                    BSON_APPEND_NULL(&set, "next_retry_at");
                    BSON_APPEND_BOOL(&set, "final", final || !again);
                }
                if (reason)
                    BSON_APPEND_UTF8(&retry, "reason", reason);
                if (!again) {
                    /* retry.lua says why: out of attempts, or a code never retried */
                    bool exhausted = reason && strstr(reason, "gave up");
                    bson_t f = BSON_INITIALIZER;
                    BSON_APPEND_UTF8(&f, "message", s->key);
                    BSON_APPEND_UTF8(&f, "reason", reason ? reason : "");
                    log_msg(exhausted ? LOG_WARN : LOG_INFO, in->log,
                            exhausted ? "retry.exhausted" : "retry.not_retryable", &f,
                            "message %s is final: %s", s->key, reason ? reason : "retry.lua said no");
                    bson_destroy(&f);
                }
            }
        } else if (bson_has_field(s->doc, "next_retry_at")) {
            /* delivered after all: a scheduled retry would duplicate it */
            BSON_APPEND_NULL(&set, "next_retry_at");
        }
    }
    if (!s->history_is_array)
        BSON_APPEND_ARRAY(&set, "status_history", s->push);
    BSON_APPEND_DATE_TIME(&set, "updated_at", in->write_ms);
    bson_append_document_end(&u, &set);
    BSON_APPEND_BOOL(&u, "replace_history", !s->history_is_array);
    BSON_APPEND_ARRAY(&u, "push", s->push);
    BSON_APPEND_ARRAY(&u, "event_ids", s->ids);
    if (has_retry)
        BSON_APPEND_DOCUMENT(&u, "retry", &retry);
    bson_append_document_end(updates, &u);
    bson_destroy(&retry);
    bson_destroy(&out);
    return 0;
}

int msgstatus_decide(const struct msgstatus_input *in, bson_t *plan, struct sd_error *err)
{
    (void)err; /* kept for the contract: a rule failing for one message is in plan.rule_errors */
    struct work w = {.in = in};
    index_messages(&w, in->messages);
    bson_t entries, updates;
    BSON_APPEND_ARRAY_BEGIN(plan, "entries", &entries);
    int rc = 0;
    for (size_t i = 0; i < in->n_parsed; i++) {
        const bson_t *p = in->parsed[i];
        char idx[12];
        snprintf(idx, sizeof idx, "%zu", i);
        bson_t e, evs;
        BSON_APPEND_DOCUMENT_BEGIN(&entries, idx, &e);
        copy_field(&e, p, "id");
        copy_field(&e, p, "provider");
        bson_iter_t it;
        if (!(bson_iter_init_find(&it, p, "ok") && bson_iter_as_bool(&it))) {
            BSON_APPEND_UTF8(&e, "outcome", "rejected");
            copy_field(&e, p, "reason");
            bson_append_document_end(&entries, &e);
            continue;
        }
        int64_t received = bson_field_date(p, "received_at", in->now_ms);
        bool waiting = false;
        char unmatched[400] = "";
        BSON_APPEND_ARRAY_BEGIN(&e, "events", &evs);
        bson_iter_t list;
        uint32_t k = 0;
        if (bson_iter_init_find(&it, p, "events") && bson_iter_recurse(&it, &list)) {
            while (bson_iter_next(&list)) {
                bson_t ev, o;
                uint32_t len;
                const uint8_t *data;
                bson_iter_document(&list, &len, &data);
                bson_init_static(&ev, data, len);
                char key[12], mkey[240], note[200] = "";
                snprintf(key, sizeof key, "%u", k++);
                BSON_APPEND_DOCUMENT_BEGIN(&evs, key, &o);
                copy_field(&o, &ev, "event_id");
                copy_field(&o, &ev, "provider_message_id");
                copy_field(&o, &ev, "provider_status");
                const char *pmid = bson_field_utf8(&ev, "provider_message_id");
                const char *outcome;
                bson_iter_t m;
                if (!pmid) {
                    outcome = "no_message_id";
                    snprintf(unmatched + strlen(unmatched), sizeof unmatched - strlen(unmatched),
                             "%s%s has no message id", unmatched[0] ? "; " : "",
                             bson_field_utf8(&ev, "event_id"));
                } else {
                    snprintf(mkey, sizeof mkey, "%s:%s", bson_field_utf8(&ev, "provider"), pmid);
                    struct mref *ref = find_ref(&w, mkey);
                    if (ref) {
                        struct mstate *s = state_for(&w, ref);
                        char before[24];
                        snprintf(before, sizeof before, "%s", s->status);
                        outcome = apply_event(s, &ev, note, sizeof note);
                        if (bson_iter_init_find(&m, s->doc, "_id"))
                            bson_append_iter(&o, "message_id", -1, &m);
                        if (!strcmp(outcome, "applied")) {
                            BSON_APPEND_UTF8(&o, "before", before);
                            BSON_APPEND_UTF8(&o, "after", s->status);
                        }
                    } else {
                        outcome = "unknown_message";
                        if (in->now_ms - received < MSGSTATUS_UNKNOWN_GRACE_MS)
                            waiting = true;
                        else
                            snprintf(unmatched + strlen(unmatched),
                                     sizeof unmatched - strlen(unmatched),
                                     "%sno %s message %s after %d minutes",
                                     unmatched[0] ? "; " : "", bson_field_utf8(&ev, "provider"), pmid,
                                     MSGSTATUS_UNKNOWN_GRACE_MS / 60000);
                    }
                }
                BSON_APPEND_UTF8(&o, "outcome", outcome);
                if (note[0])
                    BSON_APPEND_UTF8(&o, "note", note);
                bson_append_document_end(&evs, &o);
            }
        }
        bson_append_array_end(&e, &evs);
        if (waiting)
            BSON_APPEND_UTF8(&e, "outcome", "waiting");
        else if (unmatched[0]) {
            BSON_APPEND_UTF8(&e, "outcome", "unmatched");
            BSON_APPEND_UTF8(&e, "reason", unmatched);
        } else
            BSON_APPEND_UTF8(&e, "outcome", "done");
        bson_append_document_end(&entries, &e);
    }
    bson_append_array_end(plan, &entries);
    BSON_APPEND_ARRAY_BEGIN(plan, "updates", &updates);
    uint32_t n = 0;
    bson_t rule_errors = BSON_INITIALIZER;
    for (size_t i = 0; i < w.n; i++) {
        struct mstate *s = &w.m[i];
        struct sd_error e = {""};
        if (!s->n_push || emit_update(in, s, &updates, &n, &e) == 0)
            continue;
        /* A rule failing for one message: this message is not written and the
         * entries naming it stay pending (the caller's bound); the rest of the
         * batch goes on. */
        bson_iter_t id;
        char hex[25] = "";
        if (bson_iter_init_find(&id, s->doc, "_id") && BSON_ITER_HOLDS_OID(&id))
            bson_oid_to_string(bson_iter_oid(&id), hex);
        BSON_APPEND_UTF8(&rule_errors, hex[0] ? hex : s->key, e.message);
    }
    bson_append_array_end(plan, &updates);
    if (!bson_empty(&rule_errors))
        BSON_APPEND_DOCUMENT(plan, "rule_errors", &rule_errors);
    bson_destroy(&rule_errors);
    for (size_t i = 0; i < w.n; i++) {
        bson_destroy(w.m[i].push);
        bson_destroy(w.m[i].ids);
        if (w.m[i].failure)
            bson_destroy(w.m[i].failure);
        bson_destroy((bson_t *)w.m[i].doc);
    }
    free(w.m);
    free(w.refs);
    return rc;
}

void msgstatus_poll_entry(const char *provider, const char *pmid, const char *pstatus,
                          const char *code, const char *emsg, int64_t at, bson_t *out)
{
    char id[240];
    snprintf(id, sizeof id, "poll:%s", pmid);
    BSON_APPEND_UTF8(out, "id", id);
    BSON_APPEND_UTF8(out, "provider", provider);
    BSON_APPEND_DATE_TIME(out, "received_at", at);
    BSON_APPEND_BOOL(out, "ok", true);
    bson_t evs, ev;
    BSON_APPEND_ARRAY_BEGIN(out, "events", &evs);
    BSON_APPEND_DOCUMENT_BEGIN(&evs, "0", &ev);
    /* the webhook's id for the same sid and status: either applies once */
    snprintf(id, sizeof id, "%s:%s:%s", provider, pmid, pstatus);
    BSON_APPEND_UTF8(&ev, "event_id", id);
    BSON_APPEND_UTF8(&ev, "provider", provider);
    BSON_APPEND_UTF8(&ev, "provider_message_id", pmid);
    BSON_APPEND_UTF8(&ev, "provider_status", pstatus);
    const char *ours = !strcmp(provider, "twilio") ? msgstatus_map_twilio(pstatus) : NULL;
    if (ours)
        BSON_APPEND_UTF8(&ev, "status", ours);
    if (code && *code) {
        char *end;
        long long v = strtoll(code, &end, 10);
        if (*end == '\0')
            BSON_APPEND_INT64(&ev, "code", v);
        else
            BSON_APPEND_UTF8(&ev, "code", code);
    }
    if (emsg && *emsg)
        BSON_APPEND_UTF8(&ev, "error_message", emsg);
    BSON_APPEND_DATE_TIME(&ev, "at", at);
    BSON_APPEND_UTF8(&ev, "source", "poll");
    bson_append_document_end(&evs, &ev);
    bson_append_array_end(out, &evs);
}
