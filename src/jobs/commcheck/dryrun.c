/* commcheck/dryrun.c — communication-check on fixtures: the same planning and
 * decide code as production, with canned provider answers instead of the
 * network.
 *
 * Fixtures: conversation-channel.json (active ones are checked),
 * conversation-alert.json (the open ones count), conversation-room.json, and
 * provider-answers.json: [{probe: "<probe id>", status, body, failure, error,
 * cert_expires_at}, ...] (probe ids in model.h). A request with no canned
 * answer is "unchecked". Failure streaks start at zero. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "jobs/commcheck/model.h"
#include "jobs/dryrun.h"
#include "store/mongo.h"

#define FIXTURE_ANSWERS "provider-answers"

static const struct log_ctx log_dry = {"communication-check", "dry-run"};

static bool is_true(const bson_t *d, const char *f)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, d, f) && BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it);
}

static bool utf8_is(const bson_t *d, const char *f, const char *v)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, d, f) && BSON_ITER_HOLDS_UTF8(&it) &&
           strcmp(bson_iter_utf8(&it, NULL), v) == 0;
}

/* Moves the canned answers that the planned probes ask for into answers. */
static void answer(const bson_t *planned, const bson_t *const *canned, size_t n_canned,
                   bson_t *answers, bson_t *requests, uint32_t *n_requests)
{
    bson_iter_t it;
    if (!bson_iter_init(&it, planned))
        return;
    while (bson_iter_next(&it)) {
        bson_t p;
        bson_iter_child(&it, &p);
        bson_iter_t f;
        const char *id = bson_iter_init_find(&f, &p, "id") ? bson_iter_utf8(&f, NULL) : "";
        char k[12];
        snprintf(k, sizeof k, "%u", (*n_requests)++);
        bson_t r;
        BSON_APPEND_DOCUMENT_BEGIN(requests, k, &r);
        BSON_APPEND_UTF8(&r, "probe", id);
        if (bson_iter_init_find(&f, &p, "url"))
            bson_append_iter(&r, "url", -1, &f);
        bool found = false;
        for (size_t i = 0; i < n_canned && !found; i++) {
            if (!utf8_is(canned[i], "probe", id))
                continue;
            found = true;
            bson_t a;
            BSON_APPEND_DOCUMENT_BEGIN(answers, id, &a);
            bson_copy_to_excluding_noinit(canned[i], &a, "probe", NULL);
            bson_append_document_end(answers, &a);
        }
        BSON_APPEND_BOOL(&r, "canned_answer", found);
        bson_append_document_end(requests, &r);
    }
}

static bool is_active(const bson_t *ch) { return is_true(ch, "active"); }
static bool is_open(const bson_t *alert) { return utf8_is(alert, "status", "open"); }

struct input {
    struct commcheck_limits lim;
    struct commcheck_providers prov;
    const bson_t **active, **open;
    size_t n_active, n_open;
    const bson_t *const *canned;
    size_t n_canned;
    bson_t *known, *rooms;
};

static void *load(const struct dryrun_ctx *c, struct sd_error *err)
{
    struct commcheck_limits lim;
    if (commcheck_limits_read(c->rules, &lim, err))
        return NULL;
    struct input *in = calloc(1, sizeof *in);
    in->lim = lim;
    in->canned = fixtures_docs(c->fx, FIXTURE_ANSWERS, &in->n_canned);
    /* Production checks the stalest first; fixtures have no check times, so
     * id order (deterministic output). */
    in->active = fixtures_sorted(c->fx, COLL_CHANNEL, is_active, &in->n_active);
    in->open = fixtures_sorted(c->fx, COLL_ALERT, is_open, &in->n_open);
    if (in->n_active > (size_t)lim.max_channels)
        in->n_active = (size_t)lim.max_channels;
    in->known = bson_new();
    in->rooms = bson_new();
    fixtures_map_by_id(c->fx, COLL_CHANNEL, in->known);
    fixtures_map_by_id(c->fx, COLL_ROOM, in->rooms);
    in->prov = (struct commcheck_providers){.twilio_base = "https://api.twilio.com",
                                            .twilio_ready = true,
                                            .sendgrid_base = "https://api.sendgrid.com",
                                            .sendgrid_ready = true,
                                            .smtp_url = "SMTP_URL",
                                            .smtp_ready = true};
    /* The main account's SID is what the canned answer for "main" says. */
    for (size_t i = 0; i < in->n_canned; i++) {
        bson_iter_t it;
        if (utf8_is(in->canned[i], "probe", "twilio.account:main") &&
            bson_iter_init(&it, in->canned[i]) &&
            bson_iter_find_descendant(&it, "body.sid", &it) && BSON_ITER_HOLDS_UTF8(&it))
            in->prov.twilio_main_sid = bson_iter_utf8(&it, NULL);
    }
    return in;
}

static void release(void *arg)
{
    struct input *in = arg;
    bson_destroy(in->known);
    bson_destroy(in->rooms);
    free(in->active);
    free(in->open);
    free(in);
}

static int decide(void *arg, const struct dryrun_ctx *c, bson_t *job, struct sd_error *err)
{
    (void)err;
    struct input *fx = arg;
    bson_t answers = BSON_INITIALIZER, streaks = BSON_INITIALIZER;
    struct commcheck_input in = {.channels = fx->active,
                                 .n_channels = fx->n_active,
                                 .alerts = fx->open,
                                 .n_alerts = fx->n_open,
                                 .known_channels = fx->known,
                                 .rooms = fx->rooms,
                                 .answers = &answers,
                                 .streaks = &streaks,
                                 .providers = &fx->prov,
                                 .limits = &fx->lim,
                                 .now_ms = c->now_ms,
                                 .rules = c->rules,
                                 .log = &log_dry};
    bson_t requests, results, actions, new_streaks, checked, skipped;
    uint32_t n_requests = 0;
    BSON_APPEND_ARRAY_BEGIN(job, "requests", &requests);
    for (int round = 1; round <= 2; round++) {
        bson_t planned = BSON_INITIALIZER;
        commcheck_plan_probes(&in, round, &planned);
        answer(&planned, fx->canned, fx->n_canned, &answers, &requests, &n_requests);
        bson_destroy(&planned);
    }
    bson_append_array_end(job, &requests);
    bson_t r_tmp = BSON_INITIALIZER, a_tmp = BSON_INITIALIZER, s_tmp = BSON_INITIALIZER,
           c_tmp = BSON_INITIALIZER;
    commcheck_decide(&in, &r_tmp, &a_tmp, &s_tmp, &c_tmp);
    BSON_APPEND_ARRAY_BEGIN(job, "results", &results);
    bson_concat(&results, &r_tmp);
    bson_append_array_end(job, &results);
    BSON_APPEND_ARRAY_BEGIN(job, "actions", &actions);
    bson_concat(&actions, &a_tmp);
    bson_append_array_end(job, &actions);
    BSON_APPEND_DOCUMENT_BEGIN(job, "streaks", &new_streaks);
    bson_concat(&new_streaks, &s_tmp);
    bson_append_document_end(job, &new_streaks);
    BSON_APPEND_ARRAY_BEGIN(job, "checked", &checked);
    bson_concat(&checked, &c_tmp);
    bson_append_array_end(job, &checked);
    BSON_APPEND_ARRAY_BEGIN(job, "skipped", &skipped);
    bson_append_array_end(job, &skipped);
    bson_destroy(&r_tmp);
    bson_destroy(&a_tmp);
    bson_destroy(&s_tmp);
    bson_destroy(&c_tmp);
    bson_destroy(&answers);
    bson_destroy(&streaks);
    return 0;
}

/* ---- text ------------------------------------------------------------------ */

static const char *str(const bson_t *doc, const char *path) { return bson_path_text(doc, path); }

static void print_plan(const bson_t *job)
{
    bson_iter_t it;
    uint32_t n_results = 0, n_actions = 0, n_notes = 0;
    if (bson_path_each(job, "results", &it)) {
        while (bson_iter_next(&it)) {
            bson_t r;
            bson_iter_child(&it, &r);
            n_results++;
            const char *sev = str(&r, "severity");
            printf("  %-9s %-16s %s %s: %s%s%s%s\n", str(&r, "outcome"), str(&r, "check"),
                   str(&r, "channel_id"), str(&r, "target"), str(&r, "message"),
                   *sev ? " [" : "", sev, *sev ? "]" : "");
        }
    }
    if (bson_path_each(job, "actions", &it)) {
        while (bson_iter_next(&it)) {
            bson_t a;
            bson_iter_child(&it, &a);
            n_actions++;
            const char *kind = str(&a, "kind");
            if (!strcmp(kind, "open"))
                printf("  open alert %s (%s): %s\n", str(&a, "target"), str(&a, "alert.severity"),
                       str(&a, "alert.message"));
            else if (!strcmp(kind, "resolve"))
                printf("  resolve alert %s: %s\n", str(&a, "target"), str(&a, "reason"));
            else
                printf("  update alert %s (%s -> %s)\n", str(&a, "target"),
                       str(&a, "severity_before"), str(&a, "set.severity"));
            bson_iter_t nl;
            if (bson_path_each(&a, "notifications", &nl)) {
                while (bson_iter_next(&nl)) {
                    bson_t e;
                    bson_iter_child(&nl, &e);
                    n_notes++;
                    printf("    notify %s: \"%s\"\n", str(&e, "recipient.email"),
                           str(&e, "subject"));
                }
            }
        }
    }
    printf("  %u check(s), %u alert action(s), %u notification(s)\n", n_results, n_actions,
           n_notes);
}

const struct dryrun_job dryrun_communication_check = {.name = "communication-check",
                                                      .load = load,
                                                      .decide = decide,
                                                      .release = release,
                                                      .print_plan = print_plan};
