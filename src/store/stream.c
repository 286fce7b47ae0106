/* stream — see stream.h. Reply shapes are Redis 7's (XAUTOCLAIM answers
 * [cursor, entries, deleted ids]; 6.2 answered the first two, which works too). */
#include "store/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void stream_batch_clear(struct stream_batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        bson_destroy(b->entries[i]);
    free(b->entries);
    *b = (struct stream_batch){0};
}

static int push(struct stream_batch *b, bson_t *doc)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        bson_t **e = realloc(b->entries, cap * sizeof *e);
        if (!e)
            return -1;
        b->entries = e;
        b->cap = cap;
    }
    b->entries[b->n++] = doc;
    return 0;
}

int64_t stream_id_ms(const char *id)
{
    char *end;
    long long v = strtoll(id, &end, 10);
    return end != id && (*end == '-' || *end == '\0') && v >= 0 ? (int64_t)v : -1;
}

/* One [id, [field, value, …]] element; a deleted entry (nil fields) is skipped. */
static int add_entry(const redisReply *e, struct stream_batch *out, struct sd_error *err)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING)
        return sd_error_set(err, "unexpected stream entry shape in the Redis reply");
    const redisReply *fields = e->element[1];
    if (fields->type == REDIS_REPLY_NIL)
        return 0;
    if (fields->type != REDIS_REPLY_ARRAY)
        return sd_error_set(err, "stream entry %s: fields are not an array", e->element[0]->str);
    bson_t *doc = bson_new();
    BSON_APPEND_UTF8(doc, "id", e->element[0]->str);
    const char *bad = NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        /* "id" is ours; a field named so by the writer would shadow it. */
        if (!strcmp(k->str, "id") || !bson_utf8_validate(k->str, k->len, false))
            continue;
        if (bson_utf8_validate(v->str, v->len, false)) {
            bson_append_utf8(doc, k->str, (int)k->len, v->str, (int)v->len);
        } else {
            bson_append_utf8(doc, k->str, (int)k->len, "", 0);
            bad = bad ? bad : k->str;
        }
    }
    if (bad)
        BSON_APPEND_UTF8(doc, "_invalid_utf8", bad);
    if (push(out, doc)) {
        bson_destroy(doc);
        return sd_error_set(err, "out of memory");
    }
    return 0;
}

static int add_entries(const redisReply *list, struct stream_batch *out, struct sd_error *err)
{
    if (list->type != REDIS_REPLY_ARRAY)
        return sd_error_set(err, "unexpected Redis reply for stream entries");
    for (size_t i = 0; i < list->elements; i++)
        if (add_entry(list->element[i], out, err))
            return -1;
    return 0;
}

int stream_group_ensure(struct rds *r, const char *key, const char *group, struct sd_error *err)
{
    struct sd_error e;
    redisReply *rep = rds_command(r, &e, "XGROUP CREATE %s %s 0 MKSTREAM", key, group);
    if (rep) {
        freeReplyObject(rep);
        return 0;
    }
    if (strstr(e.message, "BUSYGROUP"))
        return 0;
    if (err)
        *err = e;
    return -1;
}

int stream_read(struct rds *r, const char *key, const char *group, const char *consumer,
                int count, struct stream_batch *out, struct sd_error *err)
{
    redisReply *rep = rds_command(r, err, "XREADGROUP GROUP %s %s COUNT %d STREAMS %s >", group,
                                  consumer, count, key);
    if (!rep)
        return -1;
    int rc = 0;
    /* nil: nothing new; else [[key, entries]] */
    if (rep->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < rep->elements && rc == 0; i++) {
            const redisReply *s = rep->element[i];
            if (s->type == REDIS_REPLY_ARRAY && s->elements == 2)
                rc = add_entries(s->element[1], out, err);
            else
                rc = sd_error_set(err, "unexpected XREADGROUP reply shape");
        }
    } else if (rep->type != REDIS_REPLY_NIL) {
        rc = sd_error_set(err, "unexpected XREADGROUP reply type %d", rep->type);
    }
    freeReplyObject(rep);
    return rc;
}

int stream_range(struct rds *r, const char *key, const char *after, int count,
                 struct stream_batch *out, struct sd_error *err)
{
    char start[64];
    snprintf(start, sizeof start, "%s%s", strcmp(after, "-") ? "(" : "", after);
    redisReply *rep = rds_command(r, err, "XRANGE %s %s + COUNT %d", key, start, count);
    if (!rep)
        return -1;
    int rc = add_entries(rep, out, err);
    freeReplyObject(rep);
    return rc;
}

int stream_claim(struct rds *r, const char *key, const char *group, const char *consumer,
                 int64_t min_idle_ms, char *cursor, int count, struct stream_batch *out,
                 struct sd_error *err)
{
    redisReply *rep = rds_command(r, err, "XAUTOCLAIM %s %s %s %lld %s COUNT %d", key, group,
                                  consumer, (long long)min_idle_ms, cursor, count);
    if (!rep)
        return -1;
    int rc = 0;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        rc = sd_error_set(err, "unexpected XAUTOCLAIM reply shape");
    else {
        snprintf(cursor, 48, "%s", rep->element[0]->str);
        rc = add_entries(rep->element[1], out, err);
    }
    freeReplyObject(rep);
    return rc;
}

#define MAX_FIELDS 32

int stream_finish(struct rds *r, const char *key, const char *group,
                  const struct stream_done *items, size_t n, long side_maxlen,
                  struct sd_error *err)
{
    if (n == 0)
        return 0;
    int queued = 0;
    if (rds_pipeline_append(r, err, "MULTI"))
        return -1;
    queued++;
    char maxlen[24];
    snprintf(maxlen, sizeof maxlen, "%ld", side_maxlen);
    for (size_t i = 0; i < n; i++) {
        if (items[i].side_stream) {
            const char *argv[8 + 2 * MAX_FIELDS];
            size_t lens[8 + 2 * MAX_FIELDS];
            int argc = 0;
            argv[argc++] = "XADD";
            argv[argc++] = items[i].side_stream;
            argv[argc++] = "MAXLEN";
            argv[argc++] = "~";
            argv[argc++] = maxlen;
            argv[argc++] = "*";
            bson_iter_t it;
            int fields = 0;
            if (items[i].entry && bson_iter_init(&it, items[i].entry)) {
                while (bson_iter_next(&it) && fields < MAX_FIELDS - 2) {
                    const char *k = bson_iter_key(&it);
                    if (!BSON_ITER_HOLDS_UTF8(&it) || !strcmp(k, "id") || !strcmp(k, "reason") ||
                        !strcmp(k, "origin_id"))
                        continue;
                    argv[argc++] = k;
                    argv[argc++] = bson_iter_utf8(&it, NULL);
                    fields++;
                }
            }
            argv[argc++] = "reason";
            argv[argc++] = items[i].reason ? items[i].reason : "";
            argv[argc++] = "origin_id";
            argv[argc++] = items[i].id;
            for (int a = 0; a < argc; a++)
                lens[a] = strlen(argv[a]);
            if (rds_pipeline_append_argv(r, err, argc, argv, lens))
                return -1;
            queued++;
        }
        if (rds_pipeline_append(r, err, "XACK %s %s %s", key, group, items[i].id))
            return -1;
        queued++;
    }
    if (rds_pipeline_append(r, err, "EXEC"))
        return -1;
    queued++;
    int rc = 0;
    for (int i = 0; i < queued; i++) {
        struct sd_error e;
        redisReply *rep = rds_pipeline_read(r, &e);
        if (!rep) {
            if (rc == 0 && err)
                *err = e;
            rc = -1;
            if (strstr(e.message, "connection") || strstr(e.message, "unavailable"))
                break;
            continue;
        }
        if (i == queued - 1 && rep->type == REDIS_REPLY_NIL && rc == 0)
            rc = sd_error_set(err, "redis: MULTI/EXEC was aborted");
        freeReplyObject(rep);
    }
    return rc;
}

int stream_count_try(struct rds *r, const char *tries_prefix, const char *id, long long ttl_ms,
                     long long *tries, struct sd_error *err)
{
    char key[512];
    snprintf(key, sizeof key, "%s%s", tries_prefix, id);
    *tries = 0;
    if (rds_pipeline_append(r, err, "INCR %s", key) ||
        rds_pipeline_append(r, err, "PEXPIRE %s %lld", key, ttl_ms))
        return -1;
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        struct sd_error e;
        redisReply *rep = rds_pipeline_read(r, &e);
        if (!rep) {
            if (rc == 0 && err)
                *err = e;
            rc = -1;
            continue;
        }
        if (i == 0 && rep->type == REDIS_REPLY_INTEGER)
            *tries = rep->integer;
        freeReplyObject(rep);
    }
    return rc;
}

/* XINFO GROUPS answers, per group, a flat [name, v, consumers, v, pending, v,
 * last-delivered-id, v, …] map. */
static const redisReply *field_of(const redisReply *g, const char *name)
{
    for (size_t i = 0; g->type == REDIS_REPLY_ARRAY && i + 1 < g->elements; i += 2)
        if (g->element[i]->type == REDIS_REPLY_STRING && !strcmp(g->element[i]->str, name))
            return g->element[i + 1];
    return NULL;
}

/* a < b for stream ids "<ms>-<seq>" */
static bool id_less(const char *a, const char *b)
{
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    sscanf(a, "%llu-%llu", &am, &as);
    sscanf(b, "%llu-%llu", &bm, &bs);
    return am < bm || (am == bm && as < bs);
}

int stream_trim_acknowledged(struct rds *r, const char *key, int64_t *trimmed,
                             struct sd_error *err)
{
    *trimmed = 0;
    redisReply *groups = rds_command(r, err, "XINFO GROUPS %s", key);
    if (!groups)
        return strstr(err ? err->message : "", "no such key") ? 0 : -1;
    char min[64] = "";
    int rc = 0;
    for (size_t i = 0; groups->type == REDIS_REPLY_ARRAY && i < groups->elements && rc == 0;
         i++) {
        const redisReply *g = groups->element[i];
        const redisReply *name = field_of(g, "name"), *last = field_of(g, "last-delivered-id");
        if (!name || !last || name->type != REDIS_REPLY_STRING || last->type != REDIS_REPLY_STRING)
            continue;
        char bound[64];
        snprintf(bound, sizeof bound, "%s", last->str);
        /* XPENDING summary: [count, smallest id, greatest id, consumers] */
        redisReply *p = rds_command(r, err, "XPENDING %s %s", key, name->str);
        if (!p) {
            rc = -1;
            break;
        }
        if (p->type == REDIS_REPLY_ARRAY && p->elements >= 2 &&
            p->element[1]->type == REDIS_REPLY_STRING && id_less(p->element[1]->str, bound))
            snprintf(bound, sizeof bound, "%s", p->element[1]->str);
        freeReplyObject(p);
        if (!min[0] || id_less(bound, min))
            snprintf(min, sizeof min, "%s", bound);
    }
    freeReplyObject(groups);
    if (rc || !min[0] || !strcmp(min, "0-0"))
        return rc;
    /* MINID keeps ids >= min: the oldest still pending (or the last delivered,
     * whose successors nobody has read) stays. */
    redisReply *t = rds_command(r, err, "XTRIM %s MINID %s", key, min);
    if (!t)
        return -1;
    if (t->type == REDIS_REPLY_INTEGER)
        *trimmed = t->integer;
    freeReplyObject(t);
    return 0;
}
