/* message_status/journal.c — the webhook journal's side of the tick (see
 * model.h): the HTTP door writes each request it accepts to
 * conversation-status-inbox before it appends the entry (src/http/webhook.c),
 * so that the stream, which Redis may lose (SPEC §3), is never the only copy
 * of an accepted event.
 *
 * A copy lives until its entry is done with, and no longer: its deletion
 * comes before the acknowledgement, so an entry whose copy is gone has had
 * its effect written. The repair sweep appends again copies whose entry is
 * not in the stream; an entry appended twice (the door's append landed after
 * all, or the copy outlived its entry) applies once, by its events' ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "jobs/message_status/model.h"
#include "store/find_in.h"
#include "store/mongo.h"

#define PAGE 1000
#define PAGES_PER_TICK 5
/* the sweep's resume point ("<received_at ms> <_id>") outlives a tick, not a
 * day: a lost one only means the next sweep starts at the oldest copy */
#define CURSOR_TTL_MS (24LL * 3600 * 1000)

int ms_journal_forget(struct ms_tick *t, const bson_t *const *entries, size_t n,
                      struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, in, list;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &list);
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        /* entries the platform appended itself have no copy */
        const char *id = bson_field_utf8(entries[i], "journal");
        if (!id || !*id)
            continue;
        char idx[16];
        snprintf(idx, sizeof idx, "%u", k++);
        BSON_APPEND_UTF8(&list, idx, id);
    }
    bson_append_array_end(&in, &list);
    bson_append_document_end(&filter, &in);
    int rc = 0;
    if (k) {
        mongoc_collection_t *coll =
            mongoc_client_get_collection(t->env->mongo, t->env->db, COLL_STATUS_INBOX);
        bson_t reply;
        bson_error_t berr;
        if (mongoc_collection_delete_many(coll, &filter, NULL, &reply, &berr)) {
            bson_iter_t it;
            if (bson_iter_init_find(&it, &reply, "deletedCount"))
                t->c.journal_deleted += bson_iter_as_int64(&it);
        } else {
            rc = sd_error_set(err, "deleting %u copies from %s (their entries stay pending): %s",
                              k, COLL_STATUS_INBOX, store_errmsg(&berr));
        }
        bson_destroy(&reply);
        mongoc_collection_destroy(coll);
    }
    bson_destroy(&filter);
    return rc;
}

/* The sweep's query: copies received before `before`, after the cursor (the
 * last one looked at; NULL from the oldest), oldest first, without their
 * bodies (up to 1 MiB each: read only for the copies to append). */
static void page_query(int64_t before, const char *cursor, bson_t *filter, bson_t *opts)
{
    bson_t range, alts, alt, gt, sort, proj;
    bson_init(filter);
    bson_init(opts);
    BSON_APPEND_DOCUMENT_BEGIN(filter, "received_at", &range);
    BSON_APPEND_DATE_TIME(&range, "$lt", before);
    bson_append_document_end(filter, &range);
    long long at = 0;
    char id[64];
    if (cursor && sscanf(cursor, "%lld %63s", &at, id) == 2) {
        BSON_APPEND_ARRAY_BEGIN(filter, "$or", &alts);
        BSON_APPEND_DOCUMENT_BEGIN(&alts, "0", &alt);
        BSON_APPEND_DOCUMENT_BEGIN(&alt, "received_at", &gt);
        BSON_APPEND_DATE_TIME(&gt, "$gt", at);
        bson_append_document_end(&alt, &gt);
        bson_append_document_end(&alts, &alt);
        BSON_APPEND_DOCUMENT_BEGIN(&alts, "1", &alt);
        BSON_APPEND_DATE_TIME(&alt, "received_at", at);
        BSON_APPEND_DOCUMENT_BEGIN(&alt, "_id", &gt);
        BSON_APPEND_UTF8(&gt, "$gt", id);
        bson_append_document_end(&alt, &gt);
        bson_append_document_end(&alts, &alt);
        bson_append_array_end(filter, &alts);
    }
    BSON_APPEND_DOCUMENT_BEGIN(opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, "received_at", 1);
    BSON_APPEND_INT32(&sort, "_id", 1);
    bson_append_document_end(opts, &sort);
    BSON_APPEND_INT64(opts, "limit", PAGE);
    BSON_APPEND_DOCUMENT_BEGIN(opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "received_at", 1);
    BSON_APPEND_INT32(&proj, "stream_id", 1);
    bson_append_document_end(opts, &proj);
}

/* Marks in missing[] the copies whose entry is not in the stream: no
 * stream_id, or no entry of that id naming this copy (ids start again after
 * Redis lost the stream, so an old id may name another entry). One pipeline
 * of XRANGE id id. */
static int find_missing(struct ms_tick *t, bson_t **docs, size_t n, bool *missing,
                        struct sd_error *err)
{
    size_t queued = 0;
    for (size_t i = 0; i < n; i++) {
        const char *sid = bson_field_utf8(docs[i], "stream_id");
        unsigned long long ms, seq;
        char end;
        /* anything but an entry id would fail the XRANGE, and the tick */
        missing[i] = !sid || sscanf(sid, "%llu-%llu%c", &ms, &seq, &end) != 2;
        if (!missing[i]) {
            if (rds_pipeline_append(t->env->redis, err, "XRANGE %s %s %s", t->stream, sid, sid))
                return -1;
            queued++;
        }
    }
    int rc = 0;
    for (size_t i = 0; i < n && queued; i++) {
        if (missing[i])
            continue;
        queued--;
        struct sd_error e;
        redisReply *rep = rds_pipeline_read(t->env->redis, &e);
        if (!rep) {
            if (rc == 0 && err)
                *err = e;
            rc = -1;
            continue;
        }
        const char *id = bson_field_utf8(docs[i], "_id"), *named = NULL;
        /* [[id, [field, value, …]]], or [] */
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 &&
            rep->element[0]->type == REDIS_REPLY_ARRAY && rep->element[0]->elements == 2) {
            const redisReply *fields = rep->element[0]->element[1];
            for (size_t f = 0; fields->type == REDIS_REPLY_ARRAY && f + 1 < fields->elements;
                 f += 2)
                if (fields->element[f]->type == REDIS_REPLY_STRING &&
                    fields->element[f + 1]->type == REDIS_REPLY_STRING &&
                    !strcmp(fields->element[f]->str, "journal"))
                    named = fields->element[f + 1]->str;
        }
        missing[i] = !named || !id || strcmp(named, id);
        freeReplyObject(rep);
    }
    return rc;
}

/* Appends the copies (full documents) again, then records their new ids. */
static int reappend(struct ms_tick *t, bson_t **docs, size_t n, struct sd_error *err)
{
    static const char *const fields[] = {"provider", "body", "url", "signature", "timestamp"};
    if (!ms_fence(t, err))
        return -1;
    size_t queued = 0;
    for (size_t i = 0; i < n; i++) {
        const char *argv[4 + 2 * 7];
        size_t lens[4 + 2 * 7];
        int argc = 0;
        argv[argc++] = "XADD";
        argv[argc++] = t->stream;
        argv[argc++] = "*";
        for (size_t f = 0; f < sizeof fields / sizeof *fields; f++) {
            const char *v = bson_field_utf8(docs[i], fields[f]);
            if (v) {
                argv[argc++] = fields[f];
                argv[argc++] = v;
            }
        }
        char received[24];
        bson_iter_t it;
        if (bson_iter_init_find(&it, docs[i], "received_at") && BSON_ITER_HOLDS_DATE_TIME(&it)) {
            snprintf(received, sizeof received, "%lld", (long long)bson_iter_date_time(&it));
            argv[argc++] = "received_at";
            argv[argc++] = received;
        }
        argv[argc++] = "journal";
        argv[argc++] = bson_field_utf8(docs[i], "_id");
        for (int a = 0; a < argc; a++)
            lens[a] = strlen(argv[a]);
        if (rds_pipeline_append_argv(t->env->redis, err, argc, argv, lens))
            return -1;
        queued++;
    }
    mongoc_collection_t *coll =
        mongoc_client_get_collection(t->env->mongo, t->env->db, COLL_STATUS_INBOX);
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(coll, NULL);
    int rc = 0;
    size_t appended = 0;
    for (size_t i = 0; i < queued; i++) {
        struct sd_error e;
        redisReply *rep = rds_pipeline_read(t->env->redis, &e);
        if (!rep) {
            if (rc == 0 && err)
                *err = e;
            rc = -1;
            continue;
        }
        if (rep->type == REDIS_REPLY_STRING) {
            appended++;
            bson_t sel = BSON_INITIALIZER, upd = BSON_INITIALIZER, set;
            BSON_APPEND_UTF8(&sel, "_id", bson_field_utf8(docs[i], "_id"));
            BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
            BSON_APPEND_UTF8(&set, "stream_id", rep->str);
            bson_append_document_end(&upd, &set);
            if (rc == 0)
                rc = store_bulk_update_doc(bulk, &sel, &upd, false, err);
            bson_destroy(&sel);
            bson_destroy(&upd);
        }
        freeReplyObject(rep);
    }
    t->c.journal_reappended += (int64_t)appended;
    if (appended) {
        const char *first = bson_field_utf8(docs[0], "_id");
        bson_t f = BSON_INITIALIZER;
        BSON_APPEND_INT64(&f, "reappended", (int64_t)appended);
        BSON_APPEND_UTF8(&f, "first", first ? first : "");
        log_msg(LOG_WARN, t->env->log, "status_event.reappended", &f,
                "appended %zu accepted webhook(s) to status-events again from %s (their entries "
                "were not in the stream), the first %s",
                appended, COLL_STATUS_INBOX, first ? first : "");
        bson_destroy(&f);
    }
    /* Not recorded, a copy is appended once more next time: applied once. */
    if (appended && rc == 0) {
        int64_t matched;
        bson_error_t berr;
        if (!store_bulk_run(bulk, &matched, &berr))
            rc = sd_error_set(err, "recording re-appended entries in %s: %s", COLL_STATUS_INBOX,
                              store_errmsg(&berr));
    }
    mongoc_bulk_operation_destroy(bulk);
    mongoc_collection_destroy(coll);
    return rc;
}

/* One page: which copies lack their entry, and those appended again. *last
 * receives the page's last copy as a cursor. */
static int sweep_page(struct ms_tick *t, int64_t before, const char *cursor, size_t *n_out,
                      char *last, size_t last_size, struct sd_error *err)
{
    bson_t filter, opts;
    page_query(before, cursor, &filter, &opts);
    mongoc_collection_t *coll =
        mongoc_client_get_collection(t->env->mongo, t->env->db, COLL_STATUS_INBOX);
    bson_t **docs = NULL;
    size_t n = 0;
    int rc = store_find_all(coll, &filter, &opts, &docs, &n, err);
    mongoc_collection_destroy(coll);
    bson_destroy(&filter);
    bson_destroy(&opts);
    *n_out = n;
    t->c.journal_checked += (int64_t)n;
    bool *missing = calloc(n + 1, sizeof *missing);
    if (rc == 0 && n)
        rc = find_missing(t, docs, n, missing, err);
    size_t k = 0;
    bson_value_t *ids = calloc(n + 1, sizeof *ids);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        bson_iter_t it;
        if (missing[i] && bson_iter_init_find(&it, docs[i], "_id") && BSON_ITER_HOLDS_UTF8(&it))
            bson_value_copy(bson_iter_value(&it), &ids[k++]);
    }
    if (rc == 0 && k) {
        struct store_find_in q = {.store = t->env->store,
                                  .client = t->env->mongo,
                                  .db = t->env->db,
                                  .coll = COLL_STATUS_INBOX,
                                  .field = "_id"};
        bson_t **full = NULL;
        size_t nf = 0;
        rc = store_find_in(&q, ids, k, &full, &nf, err);
        if (rc == 0 && nf)
            rc = reappend(t, full, nf, err);
        store_docs_free(full, nf);
    }
    for (size_t i = 0; i < k; i++)
        bson_value_destroy(&ids[i]);
    free(ids);
    if (n) {
        bson_iter_t it;
        const char *id = bson_field_utf8(docs[n - 1], "_id");
        int64_t at = bson_iter_init_find(&it, docs[n - 1], "received_at") &&
                             BSON_ITER_HOLDS_DATE_TIME(&it)
                         ? bson_iter_date_time(&it)
                         : 0;
        snprintf(last, last_size, "%lld %s", (long long)at, id ? id : "");
    }
    free(missing);
    store_docs_free(docs, n);
    return rc;
}

int ms_journal_sweep(struct ms_tick *t, struct sd_error *err)
{
    char cursor[128] = "";
    redisReply *rep = rds_command(t->env->redis, err, "GET %s", t->journal_cursor);
    if (!rep)
        return -1;
    if (rep->type == REDIS_REPLY_STRING)
        snprintf(cursor, sizeof cursor, "%s", rep->str);
    freeReplyObject(rep);
    int64_t before = t->env->now_ms - MSGSTATUS_JOURNAL_AGE_MS;
    int rc = 0;
    for (int page = 0; page < PAGES_PER_TICK && rc == 0 && !job_should_stop(t->env); page++) {
        size_t n = 0;
        char last[128] = "";
        rc = sweep_page(t, before, cursor[0] ? cursor : NULL, &n, last, sizeof last, err);
        if (rc)
            break;
        if (n < PAGE) {
            /* the end: the next sweep starts at the oldest copy again */
            rep = cursor[0] ? rds_command(t->env->redis, err, "DEL %s", t->journal_cursor) : NULL;
            if (cursor[0] && !rep)
                rc = -1;
            if (rep)
                freeReplyObject(rep);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", last);
        rep = rds_command(t->env->redis, err, "SET %s %s PX %lld", t->journal_cursor, cursor,
                          CURSOR_TTL_MS);
        if (!rep)
            rc = -1;
        else
            freeReplyObject(rep);
    }
    return rc;
}
