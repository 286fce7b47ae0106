#include "store/mongo.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/cabundle.h"

static _Thread_local uint64_t thread_commands;

static void on_command_started(const mongoc_apm_command_started_t *event)
{
    (void)event;
    thread_commands++;
}

uint64_t store_thread_commands(void) { return thread_commands; }

void store_thread_commands_add(uint64_t n) { thread_commands += n; }

struct store {
    mongoc_client_pool_t *pool;
    char *db;
};

struct store *store_new(const char *url, const char *db, struct sd_error *err)
{
    bson_error_t berr;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(url, &berr);
    if (!uri) {
        sd_error_set(err, "MONGO_DB_URL: %s", berr.message);
        return NULL;
    }
    if (!mongoc_uri_get_appname(uri))
        mongoc_uri_set_appname(uri, "supportd");
    /* mongoc waits 30 s by default; a tick should fail sooner when the
     * database is away, and try again on its next run. */
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS))
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 5000);
    if (!mongoc_uri_has_option(uri, MONGOC_URI_CONNECTTIMEOUTMS))
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, 5000);
    /* The static binary has no compiled-in CA store: unless the URL names a
     * tlsCAFile, verify against the system's bundle (core/cabundle.h). */
    if (mongoc_uri_get_tls(uri) && !mongoc_uri_has_option(uri, MONGOC_URI_TLSCAFILE)) {
        const char *ca = cabundle_path();
        if (ca)
            mongoc_uri_set_option_as_utf8(uri, MONGOC_URI_TLSCAFILE, ca);
    }
    struct store *s = calloc(1, sizeof *s);
    s->pool = mongoc_client_pool_new_with_error(uri, &berr);
    mongoc_uri_destroy(uri);
    if (!s->pool) {
        free(s);
        sd_error_set(err, "MONGO_DB_URL: %s", berr.message);
        return NULL;
    }
    mongoc_client_pool_set_error_api(s->pool, MONGOC_ERROR_API_VERSION_2);
    mongoc_apm_callbacks_t *apm = mongoc_apm_callbacks_new();
    mongoc_apm_set_command_started_cb(apm, on_command_started);
    mongoc_client_pool_set_apm_callbacks(s->pool, apm, NULL);
    mongoc_apm_callbacks_destroy(apm);
    s->db = strdup(db);
    return s;
}

void store_destroy(struct store *s)
{
    if (!s)
        return;
    mongoc_client_pool_destroy(s->pool);
    free(s->db);
    free(s);
}

mongoc_client_t *store_pop(struct store *s) { return mongoc_client_pool_pop(s->pool); }
void store_push(struct store *s, mongoc_client_t *client)
{
    mongoc_client_pool_push(s->pool, client);
}
const char *store_db(const struct store *s) { return s->db; }

int store_find_all(mongoc_collection_t *coll, const bson_t *filter, const bson_t *opts,
                   bson_t ***docs, size_t *n, struct sd_error *err)
{
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, filter, opts, NULL);
    const bson_t *doc;
    size_t cap = *n + 64;
    *docs = realloc(*docs, cap * sizeof **docs);
    while (mongoc_cursor_next(cur, &doc)) {
        if (*n == cap)
            *docs = realloc(*docs, (cap *= 2) * sizeof **docs);
        (*docs)[(*n)++] = bson_copy(doc);
    }
    bson_error_t berr;
    int rc = 0;
    if (mongoc_cursor_error(cur, &berr))
        rc = sd_error_set(err, "reading %s: %s", mongoc_collection_get_name(coll), berr.message);
    mongoc_cursor_destroy(cur);
    return rc;
}

void store_docs_free(bson_t **docs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        bson_destroy(docs[i]);
    free(docs);
}

bool store_is_ferretdb(mongoc_client_t *client)
{
    static _Atomic int flavor = -1; /* -1 not asked yet, 0 MongoDB, 1 FerretDB */
    int f = atomic_load(&flavor);
    if (f >= 0)
        return f == 1;
    /* Tests only: run the other database's query shapes against the test server. */
    const char *forced = getenv("QM_SUPPORT_TEST_FLAVOR");
    if (forced && (!strcmp(forced, "mongodb") || !strcmp(forced, "ferretdb"))) {
        atomic_store(&flavor, !strcmp(forced, "ferretdb"));
        return !strcmp(forced, "ferretdb");
    }
    bson_t cmd = BSON_INITIALIZER, reply;
    BSON_APPEND_INT32(&cmd, "buildInfo", 1);
    bson_error_t berr;
    bool ok = mongoc_client_command_simple(client, "admin", &cmd, NULL, &reply, &berr);
    if (ok) {
        f = bson_has_field(&reply, "ferretdbVersion") ? 1 : 0;
        atomic_store(&flavor, f);
    }
    bson_destroy(&cmd);
    bson_destroy(&reply);
    return ok && f == 1;
}

int store_ping(mongoc_client_t *client, const char *db, struct sd_error *err)
{
    bson_t cmd = BSON_INITIALIZER, reply;
    bson_error_t berr;
    BSON_APPEND_INT32(&cmd, "ping", 1);
    bool ok = mongoc_client_command_simple(client, db, &cmd, NULL, &reply, &berr);
    bson_destroy(&cmd);
    bson_destroy(&reply);
    if (!ok)
        return sd_error_set(err, "mongodb ping: %s", berr.message);
    return 0;
}
