/* message_status/dryrun.c — the message-status job on fixtures
 * (jobs/dryrun.h).
 *
 * Collect: the entries of status-events.json in file order (the stream's),
 * messages keyed as production keys them, polls answered from
 * provider-answers.json's {"probe": "twilio.message:<sid>", "status": 200,
 * "body": <Twilio's message resource>}. The webhook keys are the
 * environment's, else those a fixture set carries (meta.json). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "jobs/dryrun.h"
#include "jobs/message_status/model.h"
#include "store/mongo.h"

static const struct log_ctx log_dry = {"message-status", "dry-run"};

struct input {
    const bson_t *const *entries, *const *msgs, *const *answers;
    size_t n_entries, n_msgs, n_answers;
    struct msgstatus_keys keys;
    bson_t *messages; /* {"<provider>:<provider_message_id>": message} */
};

static void *load(const struct dryrun_ctx *c, struct sd_error *err)
{
    (void)err;
    struct input *in = calloc(1, sizeof *in);
    in->entries = fixtures_docs(c->fx, FIXTURE_STATUS_EVENTS, &in->n_entries);
    in->msgs = fixtures_docs(c->fx, COLL_MESSAGE, &in->n_msgs);
    in->answers = fixtures_docs(c->fx, FIXTURE_PROVIDER_ANSWERS, &in->n_answers);
    /* A fixture set may carry the (test) keys its webhooks were signed with;
     * the environment's win, as in production. */
    in->keys = (struct msgstatus_keys){.twilio_auth_token = c->cfg->twilio_auth_token,
                                       .sendgrid_public_key = c->cfg->sendgrid_webhook_public_key,
                                       .sendgrid_tolerance_ms = c->cfg->webhook_tolerance_s * 1000LL};
    if (!in->keys.twilio_auth_token)
        in->keys.twilio_auth_token = fixtures_meta_str(c->fx, "twilio_auth_token");
    if (!in->keys.sendgrid_public_key)
        in->keys.sendgrid_public_key = fixtures_meta_str(c->fx, "sendgrid_webhook_public_key");
    in->messages = bson_new();
    for (size_t i = 0; i < in->n_msgs; i++) {
        const char *provider = bson_field_utf8(in->msgs[i], "provider"),
                   *pmid = bson_field_utf8(in->msgs[i], "provider_message_id");
        char key[240];
        if (!provider || !pmid)
            continue;
        snprintf(key, sizeof key, "%s:%s", provider, pmid);
        if (!bson_has_field(in->messages, key))
            BSON_APPEND_DOCUMENT(in->messages, key, in->msgs[i]);
    }
    return in;
}

static void release(void *arg)
{
    struct input *in = arg;
    bson_destroy(in->messages);
    free(in);
}

/* Appends the documents of `docs` whose status is one of `statuses`. */
static size_t with_status(const bson_t *const *docs, size_t n, const char *const *statuses,
                          const bson_t **out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = bson_field_utf8(docs[i], "status");
        for (int j = 0; s && statuses[j]; j++)
            if (!strcmp(s, statuses[j])) {
                out[k++] = docs[i];
                break;
            }
    }
    return k;
}

static int decide(void *arg, const struct dryrun_ctx *c, bson_t *job, struct sd_error *err)
{
    struct input *fx = arg;
    int64_t now_ms = c->now_ms;
    struct rules *rules = c->rules;
    size_t n_entries = fx->n_entries, n_msgs = fx->n_msgs, n_answers = fx->n_answers;
    const bson_t *const *entries = fx->entries, *const *msgs = fx->msgs,
                        *const *answers = fx->answers;
    bson_t **parsed = calloc(n_entries + 1, sizeof *parsed);
    for (size_t i = 0; i < n_entries; i++) {
        parsed[i] = bson_new();
        msgstatus_parse_entry(entries[i], &fx->keys, parsed[i]);
    }
    struct msgstatus_input in = {.parsed = (const bson_t *const *)parsed,
                                 .n_parsed = n_entries,
                                 .messages = fx->messages,
                                 .now_ms = now_ms,
                                 .write_ms = now_ms,
                                 .rules = rules,
                                 .log = &log_dry};
    bson_t events_plan = BSON_INITIALIZER;
    int rc = msgstatus_decide(&in, &events_plan, err);
    bson_concat(job, &events_plan);
    /* polls: stale messages, and what each answer would change */
    static const char *const stale[] = {"queued", "sending", "sent", NULL};
    static const char *const failed[] = {"failed", "undelivered", NULL};
    const bson_t **sel = calloc(n_msgs + 1, sizeof *sel);
    size_t n_sel = with_status(msgs, n_msgs, stale, sel);
    bson_t polls = BSON_INITIALIZER, poll_entries = BSON_INITIALIZER;
    uint32_t n_polls = 0;
    if (rc == 0)
        rc = msgstatus_plan_polls(sel, n_sel, now_ms, rules, &polls, &n_polls, err);
    BSON_APPEND_ARRAY(job, "polls", &polls);
    bson_t **answered = calloc(n_polls + 1, sizeof *answered);
    size_t n_answered = 0;
    bson_iter_t it;
    if (rc == 0 && bson_iter_init(&it, &polls)) {
        while (bson_iter_next(&it)) {
            bson_iter_t f;
            const char *sid = NULL;
            if (bson_iter_recurse(&it, &f) && bson_iter_find(&f, "provider_message_id"))
                sid = bson_iter_utf8(&f, NULL);
            char probe[200];
            snprintf(probe, sizeof probe, "twilio.message:%s", sid ? sid : "");
            for (size_t a = 0; sid && a < n_answers; a++) {
                const char *p = bson_field_utf8(answers[a], "probe");
                bson_iter_t b, v;
                if (!p || strcmp(p, probe) || !bson_iter_init_find(&b, answers[a], "body") ||
                    !BSON_ITER_HOLDS_DOCUMENT(&b))
                    continue;
                /* the body as Twilio's message fetch answers it */
                bson_t body;
                bson_iter_child(&b, &body);
                char code[32] = "";
                if (bson_iter_init_find(&v, &body, "error_code") && BSON_ITER_HOLDS_NUMBER(&v))
                    snprintf(code, sizeof code, "%lld", (long long)bson_iter_as_int64(&v));
                answered[n_answered] = bson_new();
                msgstatus_poll_entry("twilio", sid, bson_field_utf8(&body, "status") ? bson_field_utf8(&body, "status") : "",
                                     code, bson_field_utf8(&body, "error_message"), now_ms,
                                     answered[n_answered]);
                n_answered++;
                break;
            }
        }
        in.parsed = (const bson_t *const *)answered;
        in.n_parsed = n_answered;
        rc = msgstatus_decide(&in, &poll_entries, err);
    }
    BSON_APPEND_DOCUMENT(job, "poll_results", &poll_entries);
    /* retries due */
    n_sel = with_status(msgs, n_msgs, failed, sel);
    bson_t retries = BSON_INITIALIZER;
    uint32_t n_retries = 0;
    msgstatus_plan_retries(sel, n_sel, now_ms, &retries, &n_retries);
    BSON_APPEND_ARRAY(job, "retries", &retries);
    for (size_t i = 0; i < n_answered; i++)
        bson_destroy(answered[i]);
    for (size_t i = 0; i < n_entries; i++)
        bson_destroy(parsed[i]);
    free(answered);
    free(parsed);
    free(sel);
    bson_destroy(&retries);
    bson_destroy(&poll_entries);
    bson_destroy(&polls);
    bson_destroy(&events_plan);
    return rc;
}

/* ---- text ------------------------------------------------------------------ */

static void print_entries(const bson_t *job, const char *path)
{
    bson_iter_t list, evs;
    bson_t d, ev;
    if (!bson_path_each(job, path, &list))
        return;
    while (bson_iter_next(&list)) {
        bson_iter_child(&list, &d);
        const char *reason = bson_path_text(&d, "reason");
        printf("  entry %s (%s): %s%s%s\n", bson_path_text(&d, "id"),
               bson_path_text(&d, "provider"), bson_path_text(&d, "outcome"),
               *reason ? ": " : "", reason);
        if (!bson_path_each(&d, "events", &evs))
            continue;
        while (bson_iter_next(&evs)) {
            bson_iter_child(&evs, &ev);
            printf("    %s %s: %s", bson_path_text(&ev, "provider_message_id"),
                   bson_path_text(&ev, "provider_status"), bson_path_text(&ev, "outcome"));
            if (*bson_path_text(&ev, "after"))
                printf(" %s -> %s", bson_path_text(&ev, "before"), bson_path_text(&ev, "after"));
            if (*bson_path_text(&ev, "note"))
                printf(" (%s)", bson_path_text(&ev, "note"));
            putchar('\n');
        }
    }
}

static void print_plan(const bson_t *job)
{
    bson_iter_t list;
    bson_t d;
    print_entries(job, "entries");
    const char *lists[][2] = {{"polls", "poll twilio %s (%s since long)\n"},
                              {"retries", "send again %s via %s, attempt %s\n"}};
    for (int l = 0; l < 2; l++) {
        if (!bson_path_each(job, lists[l][0], &list))
            continue;
        while (bson_iter_next(&list)) {
            bson_iter_child(&list, &d);
            char attempt[24] = "";
            bson_iter_t at;
            if (bson_iter_init_find(&at, &d, "attempt"))
                snprintf(attempt, sizeof attempt, "%lld", (long long)bson_iter_as_int64(&at));
            printf("  ");
            if (l == 0)
                printf(lists[l][1], bson_path_text(&d, "provider_message_id"),
                       bson_path_text(&d, "status"));
            else
                printf(lists[l][1], bson_path_text(&d, "target"), bson_path_text(&d, "provider"),
                       attempt);
        }
        if (l == 0)
            print_entries(job, "poll_results.entries");
    }
}

const struct dryrun_job dryrun_message_status = {.name = "message-status",
                                                 .load = load,
                                                 .decide = decide,
                                                 .release = release,
                                                 .print_plan = print_plan};
