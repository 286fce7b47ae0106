#include "store/mongo.h"

#include <stdatomic.h>
#include <stdio.h>
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

/* What MONGO_DB_URL points at, for connection errors: hosts (or the SRV name),
 * TLS, user and authSource; never the password. Set by the process's first store
 * (every store of a process has the same URL), read by store_errmsg from any
 * thread afterwards. */
static char target[256];

static void describe_target(const mongoc_uri_t *uri)
{
    char *p = target, *end = target + sizeof target;
    p += snprintf(p, (size_t)(end - p), "MONGO_DB_URL (");
    const char *srv = mongoc_uri_get_srv_hostname(uri);
    if (srv)
        p += snprintf(p, (size_t)(end - p), "mongodb+srv %s", srv);
    for (const mongoc_host_list_t *h = mongoc_uri_get_hosts(uri); !srv && h && p < end;
         h = h->next)
        p += snprintf(p, (size_t)(end - p), "%s%s", h == mongoc_uri_get_hosts(uri) ? "" : ",",
                      h->host_and_port);
    if (p < end && mongoc_uri_get_tls(uri))
        p += snprintf(p, (size_t)(end - p), ", TLS");
    if (p < end && mongoc_uri_get_replica_set(uri))
        p += snprintf(p, (size_t)(end - p), ", replicaSet %s", mongoc_uri_get_replica_set(uri));
    if (p < end && mongoc_uri_get_username(uri))
        p += snprintf(p, (size_t)(end - p), ", user \"%s\", authSource %s",
                      mongoc_uri_get_username(uri), mongoc_uri_get_auth_source(uri));
    if (p < end)
        snprintf(p, (size_t)(end - p), ")");
}

const char *store_errmsg(const bson_error_t *e)
{
    static _Thread_local char buf[sizeof target + sizeof e->message + 96];
    const char *what = NULL;
    if ((e->domain == MONGOC_ERROR_CLIENT && e->code == MONGOC_ERROR_CLIENT_AUTHENTICATE) ||
        (e->domain == MONGOC_ERROR_SERVER && e->code == 18 /* AuthenticationFailed */))
        what = "authentication failed (check the user name, password and authSource)";
    else if (e->domain == MONGOC_ERROR_SERVER_SELECTION || e->domain == MONGOC_ERROR_STREAM)
        what = "cannot connect (check the hosts, tls, tlsCAFile, tlsCertificateKeyFile and "
               "replicaSet)";
    if (!what || !target[0])
        return e->message;
    snprintf(buf, sizeof buf, "%s: %s: %s", target, what, e->message);
    return buf;
}

/* Sets a timeout option to bound_ms unless the URL asks for less. */
static void bound_option(mongoc_uri_t *uri, const char *option, int32_t bound_ms)
{
    int32_t v = mongoc_uri_get_option_as_int32(uri, option, 0);
    if (!mongoc_uri_has_option(uri, option) || v <= 0 || v > bound_ms)
        mongoc_uri_set_option_as_int32(uri, option, bound_ms);
}

struct store *store_new_bounded(const char *url, const char *db, int32_t bound_ms,
                                struct sd_error *err)
{
    bson_error_t berr;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(url, &berr);
    if (!uri) {
        sd_error_set(err, "MONGO_DB_URL: %s", berr.message);
        return NULL;
    }
    if (!target[0])
        describe_target(uri);
    if (bound_ms > 0) {
        /* socketTimeoutMS is what bounds a server that accepted the
         * connection and stopped answering (mongoc's default: 5 minutes) */
        bound_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, bound_ms);
        bound_option(uri, MONGOC_URI_CONNECTTIMEOUTMS, bound_ms);
        bound_option(uri, MONGOC_URI_SOCKETTIMEOUTMS, bound_ms);
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

struct store *store_new(const char *url, const char *db, struct sd_error *err)
{
    return store_new_bounded(url, db, 0, err);
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
        rc = sd_error_set(err, "reading %s: %s", mongoc_collection_get_name(coll), store_errmsg(&berr));
    mongoc_cursor_destroy(cur);
    return rc;
}

int store_find_oldest(mongoc_collection_t *coll, const char *status, const char *field,
                      const char *op, int64_t bound_ms, int64_t limit, bson_t ***docs, size_t *n,
                      struct sd_error *err)
{
    bson_t filter = BSON_INITIALIZER, cond, opts = BSON_INITIALIZER, sort;
    BSON_APPEND_UTF8(&filter, "status", status);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, field, &cond);
    BSON_APPEND_DATE_TIME(&cond, op, bound_ms);
    bson_append_document_end(&filter, &cond);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, field, 1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", limit);
    int rc = store_find_all(coll, &filter, &opts, docs, n, err);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return rc;
}

int store_bulk_update_doc(mongoc_bulk_operation_t *bulk, const bson_t *filter,
                          const bson_t *update, bool upsert, struct sd_error *err)
{
    bson_t opts = BSON_INITIALIZER;
    if (upsert)
        BSON_APPEND_BOOL(&opts, "upsert", true);
    bson_error_t berr;
    bool ok = mongoc_bulk_operation_update_many_with_opts(bulk, filter, update, &opts, &berr);
    bson_destroy(&opts);
    return ok ? 0 : sd_error_set(err, "%s", berr.message);
}

bool store_bulk_run(mongoc_bulk_operation_t *bulk, int64_t *matched, bson_error_t *berr)
{
    bson_t reply;
    bool ok = mongoc_bulk_operation_execute(bulk, &reply, berr);
    bson_iter_t r;
    *matched = bson_iter_init_find(&r, &reply, "nMatched") ? bson_iter_as_int64(&r) : 0;
    bson_destroy(&reply);
    return ok;
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
        return sd_error_set(err, "mongodb ping: %s", store_errmsg(&berr));
    return 0;
}
