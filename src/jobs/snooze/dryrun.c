/* snooze/dryrun.c — the snooze job on fixtures (jobs/dryrun.h).
 *
 * Collect: every snoozed ticket, which is what production reads on its first
 * tick (due ones, plus all snoozed for early wake-up and malformed snoozes),
 * and the rooms; decide leaves the ones not due. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "jobs/dryrun.h"
#include "jobs/snooze/model.h"
#include "store/mongo.h"

static const struct log_ctx log_dry = {"snooze", "dry-run"};

struct input {
    const bson_t **snoozed;
    size_t n;
    bson_t *rooms;
};

static bool is_snoozed(const bson_t *doc)
{
    const char *s = bson_field_utf8(doc, "status");
    return s && strcmp(s, "snoozed") == 0;
}

static void *load(const struct dryrun_ctx *c, struct sd_error *err)
{
    (void)err;
    struct input *in = calloc(1, sizeof *in);
    in->snoozed = fixtures_sorted(c->fx, COLL_CONVERSATION, is_snoozed, &in->n);
    in->rooms = bson_new();
    fixtures_map_by_id(c->fx, COLL_ROOM, in->rooms);
    return in;
}

static void release(void *arg)
{
    struct input *in = arg;
    bson_destroy(in->rooms);
    free(in->snoozed);
    free(in);
}

/* A ticket decide could not plan (a rule failed: an error, its time budget)
 * fails the dry-run: a plan without it would look like "nothing to do". */
static int first_failure(const bson_t *skipped, struct sd_error *err)
{
    bson_iter_t it, f;
    if (!bson_iter_init(&it, skipped))
        return 0;
    while (bson_iter_next(&it)) {
        if (!BSON_ITER_HOLDS_DOCUMENT(&it) || !bson_iter_recurse(&it, &f))
            continue;
        const char *target = "?", *reason = "?";
        bool failed = false;
        while (bson_iter_next(&f)) {
            if (!strcmp(bson_iter_key(&f), "target") && BSON_ITER_HOLDS_UTF8(&f))
                target = bson_iter_utf8(&f, NULL);
            else if (!strcmp(bson_iter_key(&f), "reason") && BSON_ITER_HOLDS_UTF8(&f))
                reason = bson_iter_utf8(&f, NULL);
            else if (!strcmp(bson_iter_key(&f), "failed"))
                failed = bson_iter_as_bool(&f);
        }
        if (failed && strstr(reason, target))
            return sd_error_set(err, "snooze: %s", reason);
        if (failed)
            return sd_error_set(err, "snooze: conversation %s: %s", target, reason);
    }
    return 0;
}

static int decide(void *arg, const struct dryrun_ctx *c, bson_t *job, struct sd_error *err)
{
    struct input *in = arg;
    struct snooze_input si = {.conversations = in->snoozed,
                              .n_conversations = in->n,
                              .rooms = in->rooms,
                              .now_ms = c->now_ms,
                              .redis_prefix = fixtures_redis_prefix(c->fx),
                              .rules = c->rules,
                              .log = &log_dry};
    bson_t actions, skipped, skipped_tmp = BSON_INITIALIZER;
    uint32_t n_actions = 0, n_skipped = 0;
    BSON_APPEND_ARRAY_BEGIN(job, "actions", &actions);
    snooze_decide(&si, &actions, &n_actions, &skipped_tmp, &n_skipped, true);
    bson_append_array_end(job, &actions);
    BSON_APPEND_ARRAY_BEGIN(job, "skipped", &skipped);
    bson_concat(&skipped, &skipped_tmp);
    bson_append_array_end(job, &skipped);
    int rc = first_failure(&skipped_tmp, err);
    bson_destroy(&skipped_tmp);
    return rc;
}

static void print_action(const bson_t *a)
{
    printf("  %s %s (%s): %s/%s -> %s/%s\n", bson_path_text(a, "kind"),
           bson_path_text(a, "target"), bson_path_text(a, "reason"),
           bson_path_text(a, "before.status"), bson_path_text(a, "before.priority"),
           bson_path_text(a, "after.status"), bson_path_text(a, "after.priority"));
    bson_iter_t q;
    if (bson_iter_init(&q, a) && bson_iter_find_descendant(&q, "queue.score", &q))
        printf("    queue %s score %.0f\n", bson_path_text(a, "queue.key"), bson_iter_as_double(&q));
}

const struct dryrun_job dryrun_snooze = {.name = "snooze",
                                         .load = load,
                                         .decide = decide,
                                         .release = release,
                                         .print_action = print_action};
