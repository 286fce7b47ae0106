#include "store/find_in.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static void filter_for(const struct store_find_in *q, bson_t *filter)
{
    bson_init(filter);
    if (q->extra)
        bson_concat(filter, q->extra);
}

void store_append_in(bson_t *filter, const char *field, const bson_value_t *values, size_t n)
{
    bson_t in, list;
    BSON_APPEND_DOCUMENT_BEGIN(filter, field, &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &list);
    for (size_t i = 0; i < n; i++) {
        char idx[16];
        snprintf(idx, sizeof idx, "%zu", i);
        BSON_APPEND_VALUE(&list, idx, &values[i]);
    }
    bson_append_array_end(&in, &list);
    bson_append_document_end(filter, &in);
}

size_t store_append_in_of(bson_t *filter, const char *field, bson_t *const *docs, size_t n,
                          const char *key)
{
    bson_t in, list;
    size_t k = 0;
    BSON_APPEND_DOCUMENT_BEGIN(filter, field, &in);
    BSON_APPEND_ARRAY_BEGIN(&in, "$in", &list);
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it;
        char idx[16];
        if (!bson_iter_init_find(&it, docs[i], key))
            continue;
        snprintf(idx, sizeof idx, "%zu", k++);
        bson_append_iter(&list, idx, -1, &it);
    }
    bson_append_array_end(&in, &list);
    bson_append_document_end(filter, &in);
    return k;
}

/* MongoDB: {$in} in chunks. */
static int find_chunks(const struct store_find_in *q, const bson_value_t *values, size_t n,
                       bson_t ***docs, size_t *nd, struct sd_error *err)
{
    mongoc_collection_t *coll = mongoc_client_get_collection(q->client, q->db, q->coll);
    int rc = 0;
    for (size_t from = 0; from < n && rc == 0; from += STORE_FIND_IN_CHUNK) {
        size_t to = n - from < STORE_FIND_IN_CHUNK ? n : from + STORE_FIND_IN_CHUNK;
        bson_t filter;
        filter_for(q, &filter);
        store_append_in(&filter, q->field, values + from, to - from);
        rc = store_find_all(coll, &filter, q->opts, docs, nd, err);
        bson_destroy(&filter);
    }
    mongoc_collection_destroy(coll);
    return rc;
}

struct slice {
    const struct store_find_in *q;
    const bson_value_t *values;
    size_t from, to;
    mongoc_client_t *client;
    bson_t **docs;
    size_t nd;
    uint64_t commands;
    int rc;
    struct sd_error err;
};

static void slice_run(struct slice *s)
{
    uint64_t before = store_thread_commands();
    mongoc_collection_t *coll = mongoc_client_get_collection(s->client, s->q->db, s->q->coll);
    for (size_t i = s->from; i < s->to && s->rc == 0; i++) {
        bson_t filter;
        filter_for(s->q, &filter);
        BSON_APPEND_VALUE(&filter, s->q->field, &s->values[i]);
        s->rc = store_find_all(coll, &filter, s->q->opts, &s->docs, &s->nd, &s->err);
        bson_destroy(&filter);
    }
    mongoc_collection_destroy(coll);
    s->commands = store_thread_commands() - before;
}

static void *slice_thread(void *arg)
{
    slice_run(arg);
    return NULL;
}

/* FerretDB: an equality find per value, on up to STORE_FIND_THREADS threads. */
static int find_each(const struct store_find_in *q, const bson_value_t *values, size_t n,
                     bson_t ***docs, size_t *nd, struct sd_error *err)
{
    struct slice s[STORE_FIND_THREADS];
    pthread_t th[STORE_FIND_THREADS];
    bool started[STORE_FIND_THREADS] = {false};
    size_t k = q->store && n >= 16 ? STORE_FIND_THREADS : 1;
    for (size_t i = 0; i < k; i++) {
        s[i] = (struct slice){.q = q, .values = values, .from = n * i / k, .to = n * (i + 1) / k};
        /* slice 0 runs here on the caller's client; the others on pooled ones */
        s[i].client = i == 0 ? q->client : store_pop(q->store);
        if (i > 0)
            started[i] = pthread_create(&th[i], NULL, slice_thread, &s[i]) == 0;
    }
    slice_run(&s[0]);
    int rc = 0;
    for (size_t i = 0; i < k; i++) {
        if (i > 0) {
            if (started[i])
                pthread_join(th[i], NULL);
            else
                slice_run(&s[i]); /* no thread: do it here */
            store_push(q->store, s[i].client);
            store_thread_commands_add(s[i].commands);
        }
        if (s[i].rc && rc == 0) {
            rc = -1;
            if (err)
                *err = s[i].err;
        }
        if (s[i].nd) {
            bson_t **grown = realloc(*docs, (*nd + s[i].nd) * sizeof **docs);
            if (!grown) {
                store_docs_free(s[i].docs, s[i].nd);
                rc = sd_error_set(err, "out of memory");
                continue;
            }
            *docs = grown;
            for (size_t d = 0; d < s[i].nd; d++)
                (*docs)[(*nd)++] = s[i].docs[d];
        }
        free(s[i].docs);
    }
    return rc;
}

int store_find_in(const struct store_find_in *q, const bson_value_t *values, size_t n,
                  bson_t ***docs, size_t *nd, struct sd_error *err)
{
    if (n == 0)
        return 0;
    return store_is_ferretdb(q->client) ? find_each(q, values, n, docs, nd, err)
                                        : find_chunks(q, values, n, docs, nd, err);
}
