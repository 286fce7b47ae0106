/* store/redis.c against the test Redis (REDIS_HOST / REDIS_PORT from
 * .services.env, as scripts/test sets them; skipped without them). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "store/redis.h"

static struct rds *connect_or_skip(void)
{
    const char *host = getenv("REDIS_HOST"), *port = getenv("REDIS_PORT");
    if (!host || !port)
        return NULL;
    struct rds_options o = {.host = host, .port = atoi(port)};
    return rds_new(&o);
}

static void test_unread_pipeline_replies_never_reach_a_later_command(void **state)
{
    (void)state;
    struct rds *r = connect_or_skip();
    if (!r)
        skip();
    char key[64], rnd[17];
    struct sd_error err = {""};
    assert_int_equal(clock_random_hex(rnd, 8, &err), 0);
    snprintf(key, sizeof key, "test_redis:%s", rnd);

    /* A caller queues two commands and reads one reply, then gives up (the
     * early returns issue 20 item 12 found in claim.c). */
    assert_int_equal(rds_pipeline_append(r, &err, "SET %s one", key), 0);
    assert_int_equal(rds_pipeline_append(r, &err, "GET %s", key), 0);
    redisReply *rep = rds_pipeline_read(r, &err);
    assert_non_null(rep);
    freeReplyObject(rep);

    /* The next command gets its own reply, not the GET's left behind. */
    rep = rds_command(r, &err, "SET %s two", key);
    assert_non_null(rep);
    if (rep->type != REDIS_REPLY_STATUS)
        fail_msg("SET got a reply of type %d (\"%s\"): a stale pipelined reply", rep->type,
                 rep->str ? rep->str : "");
    freeReplyObject(rep);
    rep = rds_command(r, &err, "GET %s", key);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "two");
    freeReplyObject(rep);

    /* Likewise for the next pipeline. */
    assert_int_equal(rds_pipeline_append(r, &err, "SET %s three", key), 0);
    assert_int_equal(rds_pipeline_append(r, &err, "GET %s", key), 0);
    rep = rds_pipeline_read(r, &err);
    freeReplyObject(rep);
    assert_int_equal(rds_pipeline_append(r, &err, "GET %s", key), 0);
    rep = rds_pipeline_read(r, &err);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "three");
    freeReplyObject(rep);

    rep = rds_command(r, &err, "DEL %s", key);
    freeReplyObject(rep);
    rds_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unread_pipeline_replies_never_reach_a_later_command),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
