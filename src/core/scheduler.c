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
    if (now < last_fire) {
        int64_t next = cron_next(cron, now);
        return next == last_fire ? cron_next(cron, last_fire) : next;
    }
    int64_t next = cron_next(cron, last_fire);
    return next <= now ? now : next;
}

/* Job threads wait on the monotonic clock: a wait measured on the wall clock
 * would last as long again as the clock stepped back. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake;
static pthread_once_t wake_once = PTHREAD_ONCE_INIT;

static void wake_init(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&wake, &a);
    pthread_condattr_destroy(&a);
}

#define SLICE_MS 1000

struct worker {
    struct scheduler *s;
    struct scheduler_job *job;
};

static int64_t now_ms(const struct scheduler *s)
{
    return s->now_ms ? s->now_ms() : clock_now_ms();
}

/* Sleeps toward `when` (Unix ms, wall clock: cron slots are wall-clock times)
 * for at most SLICE_MS, or until stop is set; the caller looks at the clock
 * again and calls back. */
static void sleep_toward(struct scheduler *s, int64_t when)
{
    int64_t left = when - now_ms(s);
    if (left <= 0)
        return;
    if (left > SLICE_MS)
        left = SLICE_MS;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += left / 1000;
    ts.tv_nsec += (left % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&mu);
    if (!atomic_load(&s->stop))
        pthread_cond_timedwait(&wake, &mu, &ts);
    pthread_mutex_unlock(&mu);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct scheduler_job *job = w->job;
    bool warned = false;
    while (!atomic_load(&w->s->stop)) {
        int64_t now_s = now_ms(w->s) / 1000;
        if (now_s < job->last_fire - 1 && !warned) {
            log_msg(LOG_WARN, NULL, "scheduler.clock_step", NULL,
                    "the clock stepped back %lld s (job %d): its schedule goes on from now",
                    (long long)(job->last_fire - now_s), job->id);
            warned = true;
        }
        int64_t due = scheduler_due(&job->cron, job->last_fire, now_s);
        sleep_toward(w->s, due * 1000);
        if (atomic_load(&w->s->stop))
            break;
        if (now_ms(w->s) < due * 1000)
            continue;
        job->last_fire = due;
        warned = false;
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
    pthread_once(&wake_once, wake_init);

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
