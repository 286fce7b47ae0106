#include "jobs/dryrun.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "jobs/snooze.h"
#include "store/mongo.h"

bool dryrun_supports(const char *job)
{
    return strcmp(job, "snooze") == 0 || strcmp(job, "communication-check") == 0;
}

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

/* Fixture collect for snooze: every snoozed ticket, which is what production
 * reads on its first tick (due ones, plus all snoozed for early wake-up and
 * malformed snoozes). decide leaves the ones not due. */
static int plan_snooze(const struct fixtures *fx, struct rules *rules, int64_t now_ms,
                       bson_t *jobs)
{
    size_t n_convs, n_rooms;
    const bson_t *const *convs = fixtures_docs(fx, COLL_CONVERSATION, &n_convs);
    const bson_t *const *rooms = fixtures_docs(fx, COLL_ROOM, &n_rooms);
    const bson_t **snoozed = calloc(n_convs + 1, sizeof *snoozed);
    size_t n = 0;
    for (size_t i = 0; i < n_convs; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, convs[i], "status") && BSON_ITER_HOLDS_UTF8(&it) &&
            strcmp(bson_iter_utf8(&it, NULL), "snoozed") == 0)
            snoozed[n++] = convs[i];
    }
    qsort(snoozed, n, sizeof *snoozed, by_id);
    bson_t room_map = BSON_INITIALIZER;
    for (size_t i = 0; i < n_rooms; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, rooms[i], "_id") && BSON_ITER_HOLDS_OID(&it)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&it), hex);
            BSON_APPEND_DOCUMENT(&room_map, hex, rooms[i]);
        }
    }
    struct log_ctx ctx = {"snooze", "dry-run"};
    struct snooze_input in = {.conversations = snoozed,
                              .n_conversations = n,
                              .rooms = &room_map,
                              .now_ms = now_ms,
                              .redis_prefix = fixtures_redis_prefix(fx),
                              .rules = rules,
                              .log = &ctx};
    bson_t job, actions, skipped;
    uint32_t n_actions = 0, n_skipped = 0;
    BSON_APPEND_DOCUMENT_BEGIN(jobs, "snooze", &job);
    BSON_APPEND_ARRAY_BEGIN(&job, "actions", &actions);
    bson_t skipped_tmp = BSON_INITIALIZER;
    snooze_decide(&in, &actions, &n_actions, &skipped_tmp, &n_skipped, true);
    bson_append_array_end(&job, &actions);
    BSON_APPEND_ARRAY_BEGIN(&job, "skipped", &skipped);
    bson_concat(&skipped, &skipped_tmp);
    bson_append_array_end(&job, &skipped);
    bson_append_document_end(jobs, &job);
    bson_destroy(&skipped_tmp);
    bson_destroy(&room_map);
    free(snoozed);
    return 0;
}

int dryrun_plan(const struct fixtures *fx, struct rules *rules, const char *job, int64_t now_ms,
                bson_t *plan, struct sd_error *err)
{
    if (job && !dryrun_supports(job))
        return sd_error_set(err, "--job %s: no dry-run for this job in this version", job);
    char now_text[40];
    clock_format_iso(now_ms, now_text, sizeof now_text);
    BSON_APPEND_UTF8(plan, "now", now_text);
    BSON_APPEND_UTF8(plan, "rules", rules_version(rules));
    bson_t jobs;
    BSON_APPEND_DOCUMENT_BEGIN(plan, "jobs", &jobs);
    int rc = 0;
    if (!job || strcmp(job, "snooze") == 0)
        rc = plan_snooze(fx, rules, now_ms, &jobs);
    if (rc == 0 && (!job || strcmp(job, "communication-check") == 0))
        rc = dryrun_commcheck(fx, rules, now_ms, &jobs, err);
    bson_append_document_end(plan, &jobs);
    return rc;
}
