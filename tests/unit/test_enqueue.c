/* outbox_enqueue (src/outbox/enqueue.c) against the real database in
 * MONGO_DB_URL (FerretDB in the test services), in a database of its own,
 * dropped afterwards: defaults, a duplicate key is a no-op, bad entries are
 * refused. Skipped when MONGO_DB_URL is unset (scripts/test sets it). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "outbox/outbox.h"
#include "store/mongo.h"

static struct store *store;
static mongoc_client_t *client;
static char db[64];

static int setup(void **state)
{
    (void)state;
    const char *url = getenv("MONGO_DB_URL");
    if (!url)
        return 0;
    char hex[17];
    clock_random_hex(hex, 8, NULL);
    snprintf(db, sizeof db, "unit_enqueue_%s", hex);
    struct sd_error err;
    store = store_new(url, db, &err);
    if (!store || store_ensure_indexes(store, &err)) {
        fprintf(stderr, "test_enqueue: %s\n", err.message);
        return -1;
    }
    client = store_pop(store);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (!store)
        return 0;
    mongoc_database_t *d = mongoc_client_get_database(client, db);
    mongoc_database_drop(d, NULL);
    mongoc_database_destroy(d);
    store_push(store, client);
    store_destroy(store);
    return 0;
}

static bson_t *entry(const char *key)
{
    return BCON_NEW("key", BCON_UTF8(key), "type", BCON_UTF8("ticket.created"), "via",
                    BCON_UTF8("email"), "recipient", "{", "role", BCON_UTF8("agent"), "email",
                    BCON_UTF8("a@example.org"), "}", "subject", BCON_UTF8("s"), "text",
                    BCON_UTF8("t"));
}

static int64_t count(const char *key)
{
    mongoc_collection_t *c = mongoc_client_get_collection(client, db, COLL_NOTIFICATION);
    bson_t *f = BCON_NEW("key", BCON_UTF8(key));
    int64_t n = mongoc_collection_count_documents(c, f, NULL, NULL, NULL, NULL);
    bson_destroy(f);
    mongoc_collection_destroy(c);
    return n;
}

static void test_enqueue_defaults_and_duplicates(void **state)
{
    (void)state;
    if (!store)
        skip();
    const int64_t now = 1772355600000LL;
    bson_t *a = entry("k:a"), *b = entry("k:b"), *a2 = entry("k:a");
    const bson_t *batch[] = {a, b, a2}; /* a duplicate inside the batch, too */
    int inserted = -1;
    struct sd_error err;
    assert_int_equal(outbox_enqueue(client, db, batch, 3, now, &inserted, &err), 0);
    assert_int_equal(inserted, 2);
    assert_int_equal(count("k:a"), 1);
    /* Enqueued again (a re-run tick, another instance): a no-op. */
    assert_int_equal(outbox_enqueue(client, db, batch, 3, now + 1000, &inserted, &err), 0);
    assert_int_equal(inserted, 0);
    assert_int_equal(count("k:a"), 1);
    assert_int_equal(count("k:b"), 1);

    mongoc_collection_t *c = mongoc_client_get_collection(client, db, COLL_NOTIFICATION);
    bson_t *f = BCON_NEW("key", BCON_UTF8("k:b"));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, f, NULL, NULL);
    const bson_t *doc;
    assert_true(mongoc_cursor_next(cur, &doc));
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, doc, "status"));
    assert_string_equal(bson_iter_utf8(&it, NULL), "pending");
    assert_true(bson_iter_init_find(&it, doc, "attempts"));
    assert_int_equal(bson_iter_as_int64(&it), 0);
    assert_true(bson_iter_init_find(&it, doc, "next_attempt_at"));
    assert_int_equal(bson_iter_date_time(&it), now);
    assert_true(bson_iter_init_find(&it, doc, "created_at"));
    assert_true(bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_OID(&it));
    mongoc_cursor_destroy(cur);
    bson_destroy(f);
    mongoc_collection_destroy(c);
    bson_destroy(a);
    bson_destroy(b);
    bson_destroy(a2);
}

static void test_enqueue_refuses_bad_entries(void **state)
{
    (void)state;
    if (!store)
        skip();
    struct sd_error err;
    int inserted = -1;
    bson_t *nokey = BCON_NEW("via", BCON_UTF8("email"));
    const bson_t *b1[] = {nokey};
    assert_int_equal(outbox_enqueue(client, db, b1, 1, 0, &inserted, &err), -1);
    assert_non_null(strstr(err.message, "no key"));
    bson_t *novia = BCON_NEW("key", BCON_UTF8("k:novia"));
    const bson_t *b2[] = {novia};
    assert_int_equal(outbox_enqueue(client, db, b2, 1, 0, &inserted, &err), -1);
    assert_non_null(strstr(err.message, "k:novia"));
    assert_int_equal(count("k:novia"), 0);
    assert_int_equal(outbox_enqueue(client, db, NULL, 0, 0, &inserted, &err), 0);
    assert_int_equal(inserted, 0);
    bson_destroy(nokey);
    bson_destroy(novia);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enqueue_defaults_and_duplicates),
        cmocka_unit_test(test_enqueue_refuses_bad_entries),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
