#include "core/scheduler.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/log.h"

int64_t scheduler_due(const struct cron_expr *cron, int64_t last_fire, int64_t now)
{
    int64_t next = cron_next(cron, last_fire);
    return next <= now ? now : next;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

struct worker {
    struct scheduler *s;
    struct scheduler_job *job;
};

/* Sleeps until `when` (Unix ms, wall clock: cron slots are wall-clock times)
 * or until stop is set. */
static void sleep_until(struct scheduler *s, int64_t when)
{
    struct timespec ts = {.tv_sec = when / 1000, .tv_nsec = (when % 1000) * 1000000L};
    pthread_mutex_lock(&mu);
    while (!atomic_load(&s->stop) && clock_now_ms() < when) {
        int rc = pthread_cond_timedwait(&wake, &mu, &ts);
        if (rc == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&mu);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct scheduler_job *job = w->job;
    while (!atomic_load(&w->s->stop)) {
        int64_t now_s = clock_now_ms() / 1000;
        int64_t due = scheduler_due(&job->cron, job->last_fire, now_s);
        sleep_until(w->s, due * 1000);
        if (atomic_load(&w->s->stop))
            break;
        if (clock_now_ms() < due * 1000)
            continue;
        job->last_fire = due;
        w->s->tick(job->ud, job->id, due * 1000);
    }
    return NULL;
}

static void stop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

void scheduler_block_signals(void)
{
    sigset_t set;
    stop_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int scheduler_run(struct scheduler *s, struct sd_error *err)
{
    sigset_t set;
    stop_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    struct worker *workers = calloc((size_t)s->n_jobs, sizeof *workers);
    pthread_t *threads = calloc((size_t)s->n_jobs, sizeof *threads);
    int started = 0, rc = 0;
    for (int i = 0; i < s->n_jobs; i++) {
        workers[i] = (struct worker){s, &s->jobs[i]};
        if (pthread_create(&threads[i], NULL, worker_main, &workers[i]) != 0) {
            rc = sd_error_set(err, "cannot start the thread of job %d", s->jobs[i].id);
            atomic_store(&s->stop, true);
            break;
        }
        started++;
    }
    while (!atomic_load(&s->stop)) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            log_msg(LOG_INFO, NULL, "signal.hup", NULL, "SIGHUP: reloading rules");
            if (s->reload)
                s->reload(s->reload_ud);
            continue;
        }
        log_msg(LOG_INFO, NULL, "signal.stop", NULL,
                "%s: finishing running ticks, then exiting", sig == SIGINT ? "SIGINT" : "SIGTERM");
        atomic_store(&s->stop, true);
    }
    pthread_mutex_lock(&mu);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    free(workers);
    free(threads);
    return rc;
}
