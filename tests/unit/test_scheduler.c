#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/cron.h"
#include "core/scheduler.h"

/* scheduler_due works in Unix seconds. Times are written as ISO strings and
 * shown as ISO strings on failure. */

static int64_t T(const char *iso)
{
    int64_t ms;
    struct sd_error err = {{0}};
    if (clock_parse_iso(iso, &ms, &err) != 0)
        fail_msg("bad time literal %s: %s", iso, err.message);
    return ms / 1000;
}

static const char *fmt(int64_t t, char *buf, size_t n)
{
    clock_format_iso(t * 1000, buf, n);
    return buf;
}

static struct cron_expr cron(const char *text)
{
    struct cron_expr e;
    struct sd_error err = {{0}};
    if (cron_parse(text, &e, &err) != 0)
        fail_msg("cron_parse(\"%s\") failed: %s", text, err.message);
    return e;
}

static void check_due(const char *expr, const char *last_fire, const char *now, const char *want)
{
    struct cron_expr e = cron(expr);
    int64_t got = scheduler_due(&e, T(last_fire), T(now));
    if (got != T(want)) {
        char g[32];
        fail_msg("\"%s\" last_fire %s now %s: due %s, want %s", expr, last_fire, now,
                 fmt(got, g, sizeof g), want);
    }
}

/* ---- the next slot ------------------------------------------------------ */

static void test_next_slot_in_future(void **state)
{
    (void)state;
    check_due("*/5 * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:02:10Z",
              "2024-01-01T12:05:00Z");
    /* Supervision just began: last_fire is "now". */
    check_due("*/5 * * * *", "2024-01-01T12:02:10Z", "2024-01-01T12:02:10Z",
              "2024-01-01T12:05:00Z");
    check_due("0 3 * * *", "2024-01-01T03:00:00Z", "2024-01-01T17:45:00Z",
              "2024-01-02T03:00:00Z");
    check_due("*/10 * * * *", "2024-12-31T23:50:00Z", "2024-12-31T23:55:00Z",
              "2025-01-01T00:00:00Z");
}

static void test_one_second_before_slot(void **state)
{
    (void)state;
    check_due("*/5 * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:04:59Z",
              "2024-01-01T12:05:00Z");
}

/* ---- exactly on a slot ----------------------------------------------------- */

static void test_exactly_on_slot(void **state)
{
    (void)state;
    /* The slot is now: fire now (due == now, nothing to wait for). */
    check_due("*/5 * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:05:00Z",
              "2024-01-01T12:05:00Z");
    /* Once it fired (last_fire = the slot), the same second does not fire again. */
    check_due("*/5 * * * *", "2024-01-01T12:05:00Z", "2024-01-01T12:05:00Z",
              "2024-01-01T12:10:00Z");
    /* Supervision starting exactly on a slot waits for the next one. */
    check_due("0 * * * *", "2024-01-01T13:00:00Z", "2024-01-01T13:00:00Z",
              "2024-01-01T14:00:00Z");
}

/* ---- catch-up ------------------------------------------------------------- */

static void test_catch_up_once(void **state)
{
    (void)state;
    struct cron_expr e = cron("*/5 * * * *");
    /* Ten slots (12:05 ... 12:50) passed while nothing ran. */
    int64_t last_fire = T("2024-01-01T12:00:00Z");
    int64_t now = T("2024-01-01T12:52:07Z");

    int64_t due = scheduler_due(&e, last_fire, now);
    assert_int_equal(due, now); /* exactly now, not the oldest missed slot */

    /* The caller records the catch-up; the next answer is the next real slot,
     * not another catch-up for the other nine. */
    last_fire = due;
    assert_int_equal(scheduler_due(&e, last_fire, now), T("2024-01-01T12:55:00Z"));
    assert_int_equal(scheduler_due(&e, last_fire, now + 60), T("2024-01-01T12:55:00Z"));
}

static void test_catch_up_counts(void **state)
{
    (void)state;
    /* The caller's loop: fire whatever is due at `now`, record it, repeat.
     * However many slots were missed, that is one fire. */
    static const struct {
        const char *expr, *last_fire, *now;
    } cases[] = {
        {"*/5 * * * *", "2024-01-01T11:10:00Z", "2024-01-01T12:00:30Z"},
        {"0 3 * * *", "2023-12-29T03:00:00Z", "2024-01-01T09:00:00Z"},
        {"*/30 * * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:09:45Z"},
        {"0 0 1 1 *", "2019-01-01T00:00:00Z", "2024-06-01T00:00:00Z"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct cron_expr e = cron(cases[i].expr);
        int64_t last_fire = T(cases[i].last_fire), now = T(cases[i].now);
        int fires = 0;
        for (int guard = 0; guard < 1000; guard++) {
            int64_t due = scheduler_due(&e, last_fire, now);
            if (due > now)
                break;
            assert_int_equal(due, now);
            fires++;
            last_fire = due;
        }
        if (fires != 1)
            fail_msg("\"%s\" from %s to %s: %d fires, want 1", cases[i].expr,
                     cases[i].last_fire, cases[i].now, fires);
    }
}

static void test_long_tick_catch_up(void **state)
{
    (void)state;
    /* The 12:05 tick ran until 12:11:30 and so missed 12:10: run it now, once. */
    check_due("*/5 * * * *", "2024-01-01T12:05:00Z", "2024-01-01T12:11:30Z",
              "2024-01-01T12:11:30Z");
    check_due("*/5 * * * *", "2024-01-01T12:11:30Z", "2024-01-01T12:11:30Z",
              "2024-01-01T12:15:00Z");
}

/* ---- 6 fields ------------------------------------------------------------- */

static void test_six_fields(void **state)
{
    (void)state;
    check_due("*/30 * * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:00:10Z",
              "2024-01-01T12:00:30Z");
    check_due("*/30 * * * * *", "2024-01-01T12:00:30Z", "2024-01-01T12:00:30Z",
              "2024-01-01T12:01:00Z");
    check_due("*/30 * * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:00:30Z",
              "2024-01-01T12:00:30Z");
    /* Missed 12:00:30 ... 12:01:30: catch up now, then back on the 30 s grid. */
    check_due("*/30 * * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:01:45Z",
              "2024-01-01T12:01:45Z");
    check_due("*/30 * * * * *", "2024-01-01T12:01:45Z", "2024-01-01T12:01:45Z",
              "2024-01-01T12:02:00Z");
    check_due("15 * * * * *", "2024-01-01T12:00:15Z", "2024-01-01T12:00:20Z",
              "2024-01-01T12:01:15Z");
    /* A 5-field expression never fires mid-minute. */
    check_due("* * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:00:01Z",
              "2024-01-01T12:01:00Z");
}

/* ---- a simulated run -------------------------------------------------------- */

/* Steps a clock one second at a time through the caller's loop and checks
 * that a punctual scheduler fires exactly on every slot, once. */
static void simulate(const char *expr, const char *from, const char *to, int64_t step,
                     int want_fires)
{
    struct cron_expr e = cron(expr);
    int64_t last_fire = T(from), end = T(to), prev = last_fire;
    int fires = 0;
    for (int64_t now = T(from); now <= end; now++) {
        int64_t due = scheduler_due(&e, last_fire, now);
        if (due > now)
            continue;
        if (due != cron_next(&e, prev) || due - prev != step) {
            char d[32], p[32];
            fail_msg("\"%s\": fired at %s after %s, want one step of %lld s", expr,
                     fmt(due, d, sizeof d), fmt(prev, p, sizeof p), (long long)step);
        }
        fires++;
        prev = last_fire = due;
    }
    if (fires != want_fires)
        fail_msg("\"%s\" from %s to %s: %d fires, want %d", expr, from, to, fires, want_fires);
}

static void test_simulated_run(void **state)
{
    (void)state;
    simulate("*/5 * * * *", "2024-01-01T12:00:00Z", "2024-01-01T13:00:00Z", 300, 12);
    simulate("*/30 * * * * *", "2024-01-01T12:00:00Z", "2024-01-01T12:10:00Z", 30, 20);
    simulate("*/1 * * * *", "2024-02-28T23:30:00Z", "2024-02-29T00:30:00Z", 60, 60);
}


/* ---- clock steps (issue 20 item 9) -------------------------------------- */

static void test_step_back_goes_on_from_now(void **state)
{
    (void)state;
    /* Fired 12:05; the clock steps back an hour: next is 11:10, not 12:10. */
    check_due("*/5 * * * *", "2024-01-01T12:05:00Z", "2024-01-01T11:05:10Z",
              "2024-01-01T11:10:00Z");
    /* A step back of seconds does not fire the slot just fired again. */
    check_due("*/5 * * * *", "2024-01-01T12:05:00Z", "2024-01-01T12:04:58Z",
              "2024-01-01T12:10:00Z");
}

/* The scheduler's own loop under a clock a test steps: real monotonic time
 * plus an offset. */
static atomic_llong clock_offset_ms;
static int64_t stepped_clock(void)
{
    return clock_monotonic_ms() + 1700000000000LL + atomic_load(&clock_offset_ms);
}

static atomic_int fires;
static void count_tick(void *ud, int id, int64_t fire_ms)
{
    (void)ud, (void)id, (void)fire_ms;
    atomic_fetch_add(&fires, 1);
}

static void *run_scheduler(void *arg)
{
    struct sd_error err;
    scheduler_run(arg, &err);
    return NULL;
}

/* Waits up to `seconds` (real time) for fires to reach `want`. */
static bool fires_reach(int want, int seconds)
{
    for (int i = 0; i < seconds * 20; i++) {
        if (atomic_load(&fires) >= want)
            return true;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return atomic_load(&fires) >= want;
}

static void test_scheduler_survives_clock_steps(void **state)
{
    (void)state;
    atomic_store(&clock_offset_ms, 0);
    atomic_store(&fires, 0);
    struct scheduler_job job = {.id = 0, .cron = cron("* * * * * *"),
                                .last_fire = stepped_clock() / 1000};
    struct scheduler s = {.jobs = &job, .n_jobs = 1, .tick = count_tick,
                          .now_ms = stepped_clock};
    atomic_init(&s.stop, false);
    scheduler_block_signals();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_scheduler, &s), 0);
    if (!fires_reach(2, 10))
        fail_msg("no ticks before any step");

    /* An hour back: the next tick comes within seconds, not in an hour. */
    atomic_fetch_sub(&clock_offset_ms, 3600 * 1000LL);
    int before = atomic_load(&fires);
    if (!fires_reach(before + 2, 10))
        fail_msg("after the clock stepped back an hour: %d ticks in 10 s",
                 atomic_load(&fires) - before);

    /* An hour forward: one catch-up tick, not 3,600. */
    before = atomic_load(&fires);
    atomic_fetch_add(&clock_offset_ms, 2 * 3600 * 1000LL);
    struct timespec ts = {2, 0};
    nanosleep(&ts, NULL);
    int burst = atomic_load(&fires) - before;
    if (burst > 4)
        fail_msg("after the clock stepped forward an hour: %d ticks in 2 s", burst);
    if (!fires_reach(before + 1, 5))
        fail_msg("no tick after the clock stepped forward");

    pthread_kill(t, SIGTERM);
    pthread_join(t, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_slot_in_future),
        cmocka_unit_test(test_one_second_before_slot),
        cmocka_unit_test(test_exactly_on_slot),
        cmocka_unit_test(test_catch_up_once),
        cmocka_unit_test(test_catch_up_counts),
        cmocka_unit_test(test_long_tick_catch_up),
        cmocka_unit_test(test_six_fields),
        cmocka_unit_test(test_simulated_run),
        cmocka_unit_test(test_step_back_goes_on_from_now),
        cmocka_unit_test(test_scheduler_survives_clock_steps),
    };
    return cmocka_run_group_tests_name("scheduler", tests, NULL, NULL);
}
