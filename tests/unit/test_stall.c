#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>

#include "core/clock.h"
#include "core/stall.h"

/* A thread without a watch: enter/leave do nothing. */
static void test_no_watch(void **state)
{
    (void)state;
    stall_attach(NULL, 0);
    stall_enter();
    stall_leave();
    assert_false(stall_stuck(NULL, clock_monotonic_ms(), NULL));
}

/* Busy from the outermost enter to the matching leave; stuck only past the
 * limit. */
static void test_busy_and_stuck(void **state)
{
    (void)state;
    struct stall_watch w;
    stall_attach(&w, 1000);
    int64_t busy = -1;
    assert_false(stall_stuck(&w, clock_monotonic_ms() + 5000, &busy));
    assert_int_equal(busy, 0);
    stall_enter();
    stall_enter(); /* nested */
    stall_leave();
    int64_t now = clock_monotonic_ms();
    assert_false(stall_stuck(&w, now + 500, &busy));
    assert_true(busy >= 500 && busy < 1000);
    assert_true(stall_stuck(&w, now + 1500, &busy));
    assert_true(busy >= 1500);
    stall_leave();
    assert_false(stall_stuck(&w, now + 99999, NULL));
    stall_attach(NULL, 0);
}

struct other {
    struct stall_watch *w;
    bool stuck;
};

static void *look(void *arg)
{
    struct other *o = arg;
    o->stuck = stall_stuck(o->w, clock_monotonic_ms() + 60000, NULL);
    return NULL;
}

/* Another thread (the lease renewer) sees this one's state. */
static void test_seen_from_another_thread(void **state)
{
    (void)state;
    struct stall_watch w;
    stall_attach(&w, 10);
    stall_enter();
    struct other o = {&w, false};
    pthread_t t;
    pthread_create(&t, NULL, look, &o);
    pthread_join(t, NULL);
    assert_true(o.stuck);
    stall_leave();
    stall_attach(NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_watch),
        cmocka_unit_test(test_busy_and_stuck),
        cmocka_unit_test(test_seen_from_another_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
