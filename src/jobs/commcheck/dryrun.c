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

#include "jobs/commcheck/model.h"
#include "jobs/dryrun.h"
#include "store/mongo.h"

#define FIXTURE_ANSWERS "provider-answers"

static int by_id(const void *a, const void *b)
{
    const bson_t *x = *(const bson_t *const *)a, *y = *(const bson_t *const *)b;
    bson_iter_t i, j;
    bool hx = bson_iter_init_find(&i, x, "_id") && BSON_ITER_HOLDS_OID(&i);
    bool hy = bson_iter_init_find(&j, y, "_id") && BSON_ITER_HOLDS_OID(&j);
    if (!hx || !hy)
        return hx - hy;
    return bson_oid_compare(bson_iter_oid(&i), bson_iter_oid(&j));
}

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

static void map_by_id(const bson_t *const *docs, size_t n, bson_t *map)
{
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, docs[i], "_id") && BSON_ITER_HOLDS_OID(&it)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&it), hex);
            BSON_APPEND_DOCUMENT(map, hex, docs[i]);
        }
    }
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
        uint32_t len;
        const uint8_t *data;
        bson_iter_document(&it, &len, &data);
        bson_init_static(&p, data, len);
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

int dryrun_commcheck(const struct fixtures *fx, struct rules *rules, int64_t now_ms, bson_t *jobs,
                     struct sd_error *err)
{
    size_t n_ch, n_al, n_rooms, n_canned;
    const bson_t *const *chs = fixtures_docs(fx, COLL_CHANNEL, &n_ch);
    const bson_t *const *als = fixtures_docs(fx, COLL_ALERT, &n_al);
    const bson_t *const *rms = fixtures_docs(fx, COLL_ROOM, &n_rooms);
    const bson_t *const *canned = fixtures_docs(fx, FIXTURE_ANSWERS, &n_canned);
    struct commcheck_limits lim;
    if (commcheck_limits_read(rules, &lim, err))
        return -1;
    const bson_t **active = calloc(n_ch + 1, sizeof *active);
    const bson_t **open = calloc(n_al + 1, sizeof *open);
    size_t n_active = 0, n_open = 0;
    for (size_t i = 0; i < n_ch; i++)
        if (is_true(chs[i], "active"))
            active[n_active++] = chs[i];
    for (size_t i = 0; i < n_al; i++)
        if (utf8_is(als[i], "status", "open"))
            open[n_open++] = als[i];
    /* Production checks the stalest first; fixtures have no check times, so
     * id order (deterministic output). */
    qsort(active, n_active, sizeof *active, by_id);
    qsort(open, n_open, sizeof *open, by_id);
    if (n_active > (size_t)lim.max_channels)
        n_active = (size_t)lim.max_channels;
    bson_t known = BSON_INITIALIZER, rooms = BSON_INITIALIZER, answers = BSON_INITIALIZER;
    bson_t streaks = BSON_INITIALIZER;
    map_by_id(chs, n_ch, &known);
    map_by_id(rms, n_rooms, &rooms);
    struct commcheck_providers prov = {.twilio_base = "https://api.twilio.com",
                                       .twilio_ready = true,
                                       .sendgrid_base = "https://api.sendgrid.com",
                                       .sendgrid_ready = true,
                                       .smtp_url = "SMTP_URL",
                                       .smtp_ready = true};
    /* The main account's SID is what the canned answer for "main" says. */
    for (size_t i = 0; i < n_canned; i++) {
        bson_iter_t it;
        if (utf8_is(canned[i], "probe", "twilio.account:main") &&
            bson_iter_init(&it, canned[i]) && bson_iter_find_descendant(&it, "body.sid", &it) &&
            BSON_ITER_HOLDS_UTF8(&it))
            prov.twilio_main_sid = bson_iter_utf8(&it, NULL);
    }
    struct log_ctx ctx = {"communication-check", "dry-run"};
    struct commcheck_input in = {.channels = active,
                                 .n_channels = n_active,
                                 .alerts = open,
                                 .n_alerts = n_open,
                                 .known_channels = &known,
                                 .rooms = &rooms,
                                 .answers = &answers,
                                 .streaks = &streaks,
                                 .providers = &prov,
                                 .limits = &lim,
                                 .now_ms = now_ms,
                                 .rules = rules,
                                 .log = &ctx};
    bson_t job, requests, results, actions, new_streaks, checked, skipped;
    uint32_t n_requests = 0;
    BSON_APPEND_DOCUMENT_BEGIN(jobs, "communication-check", &job);
    BSON_APPEND_ARRAY_BEGIN(&job, "requests", &requests);
    for (int round = 1; round <= 2; round++) {
        bson_t planned = BSON_INITIALIZER;
        commcheck_plan_probes(&in, round, &planned);
        answer(&planned, canned, n_canned, &answers, &requests, &n_requests);
        bson_destroy(&planned);
    }
    bson_append_array_end(&job, &requests);
    bson_t r_tmp = BSON_INITIALIZER, a_tmp = BSON_INITIALIZER, s_tmp = BSON_INITIALIZER,
           c_tmp = BSON_INITIALIZER;
    commcheck_decide(&in, &r_tmp, &a_tmp, &s_tmp, &c_tmp);
    BSON_APPEND_ARRAY_BEGIN(&job, "results", &results);
    bson_concat(&results, &r_tmp);
    bson_append_array_end(&job, &results);
    BSON_APPEND_ARRAY_BEGIN(&job, "actions", &actions);
    bson_concat(&actions, &a_tmp);
    bson_append_array_end(&job, &actions);
    BSON_APPEND_DOCUMENT_BEGIN(&job, "streaks", &new_streaks);
    bson_concat(&new_streaks, &s_tmp);
    bson_append_document_end(&job, &new_streaks);
    BSON_APPEND_ARRAY_BEGIN(&job, "checked", &checked);
    bson_concat(&checked, &c_tmp);
    bson_append_array_end(&job, &checked);
    BSON_APPEND_ARRAY_BEGIN(&job, "skipped", &skipped);
    bson_append_array_end(&job, &skipped);
    bson_append_document_end(jobs, &job);
    bson_destroy(&r_tmp);
    bson_destroy(&a_tmp);
    bson_destroy(&s_tmp);
    bson_destroy(&c_tmp);
    bson_destroy(&known);
    bson_destroy(&rooms);
    bson_destroy(&answers);
    bson_destroy(&streaks);
    free(active);
    free(open);
    return 0;
}

static const char *str(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return "";
}

static bool each(const bson_t *doc, const char *field, bson_iter_t *it)
{
    bson_iter_t f;
    return bson_iter_init_find(&f, doc, field) &&
           (BSON_ITER_HOLDS_ARRAY(&f) || BSON_ITER_HOLDS_DOCUMENT(&f)) && bson_iter_recurse(&f, it);
}

static void view(const bson_iter_t *it, bson_t *out)
{
    uint32_t len;
    const uint8_t *data;
    bson_iter_document(it, &len, &data);
    bson_init_static(out, data, len);
}

void commcheck_print_text(const bson_t *job)
{
    bson_iter_t it;
    uint32_t n_results = 0, n_actions = 0, n_notes = 0;
    if (each(job, "results", &it)) {
        while (bson_iter_next(&it)) {
            bson_t r;
            view(&it, &r);
            n_results++;
            const char *sev = str(&r, "severity");
            printf("  %-9s %-16s %s %s: %s%s%s%s\n", str(&r, "outcome"), str(&r, "check"),
                   str(&r, "channel_id"), str(&r, "target"), str(&r, "message"),
                   *sev ? " [" : "", sev, *sev ? "]" : "");
        }
    }
    if (each(job, "actions", &it)) {
        while (bson_iter_next(&it)) {
            bson_t a;
            view(&it, &a);
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
            if (each(&a, "notifications", &nl)) {
                while (bson_iter_next(&nl)) {
                    bson_t e;
                    view(&nl, &e);
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
