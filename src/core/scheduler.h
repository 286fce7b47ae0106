/* scheduler.h — runs every enabled job on its cron schedule in one process.
 *
 * One thread per job: a job's ticks run one after another in its thread, so two
 * runs of the same job never overlap within a process (the Redis lease covers
 * other processes). A slot missed while a tick ran long, or while no instance
 * was up, is run once when noticed, not once per missed slot.
 *
 * Signals are handled by the thread that calls scheduler_run: SIGTERM/SIGINT
 * set the stop flag (ticks see it and stop at a batch boundary) and the call
 * returns when every job thread has finished; SIGHUP calls the reload hook.
 *
 * Ownership: the caller owns the jobs array and everything the user data
 * pointers reach; the scheduler only borrows them until scheduler_run returns.
 */
#ifndef SD_CORE_SCHEDULER_H
#define SD_CORE_SCHEDULER_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/cron.h"
#include "core/error.h"

/* When to fire next, in Unix seconds, given the slot last fired (or the time
 * supervision began) and the current time: the next cron slot after
 * last_fire, or `now` itself when that slot has already passed (catch-up, at
 * most once: the caller then records `now` as last_fire; so a step of the
 * clock forwards fires one tick, not one per skipped slot). A `now` before
 * last_fire means the clock stepped back: the schedule goes on from `now`
 * (the next slot after it, unless that is the slot last fired), so a step
 * back never stalls a job for the length of the step. */
int64_t scheduler_due(const struct cron_expr *cron, int64_t last_fire, int64_t now);

/* Runs one tick of job `id` for the slot at fire_ms; returns when done. */
typedef void (*scheduler_tick_fn)(void *job_ud, int id, int64_t fire_ms);
typedef void (*scheduler_reload_fn)(void *ud);

struct scheduler_job {
    int id;
    struct cron_expr cron;
    int64_t last_fire;   /* Unix seconds; set by the caller before the run */
    void *ud;            /* passed to tick */
};

struct scheduler {
    struct scheduler_job *jobs;
    int n_jobs;
    scheduler_tick_fn tick;
    scheduler_reload_fn reload;  /* may be NULL */
    void *reload_ud;
    atomic_bool stop;            /* set on SIGTERM/SIGINT; ticks poll it */
    /* Wall clock in Unix ms; NULL: clock_now_ms. (Tests step it.) Job
     * threads sleep in slices of at most a second on the monotonic clock and
     * look at it again after each, so a step either way is seen at once. */
    int64_t (*now_ms)(void);
};

/* Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (threads it creates
 * later inherit the mask), so they wait for scheduler_run's sigwait. */
void scheduler_block_signals(void);

/* Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and so in the job
 * threads it creates), runs until SIGTERM/SIGINT, joins the job threads.
 * Returns 0, or -1 if a thread could not be started. */
int scheduler_run(struct scheduler *s, struct sd_error *err);

#endif
