#include "rules/reload.h"

#include "core/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"

#define DEBOUNCE_MS 300
#define POLL_MS 2000

/* A loaded set and how many ticks use it. */
struct slot {
    struct rules *rules;
    int refs;
    struct slot *next; /* retired sets still in use */
};

struct rules_live {
    char *dir;
    struct rules_limits limits;
    pthread_mutex_t mu;
    struct slot *current;
    struct slot *retired;
    pthread_mutex_t reload_mu; /* one reload at a time (watcher vs SIGHUP) */
    pthread_t watcher;
    bool watching;
    atomic_bool stop;
    int wake_fd[2];
};

struct rules_live *rules_live_new(const char *dir, const struct rules_limits *limits,
                                  struct sd_error *err)
{
    struct rules *r = rules_load(dir, limits, err);
    if (!r)
        return NULL;
    struct rules_live *live = calloc(1, sizeof *live);
    live->dir = strdup(dir);
    if (limits)
        live->limits = *limits;
    pthread_mutex_init(&live->mu, NULL);
    pthread_mutex_init(&live->reload_mu, NULL);
    live->current = calloc(1, sizeof *live->current);
    live->current->rules = r;
    live->wake_fd[0] = live->wake_fd[1] = -1;
    atomic_init(&live->stop, false);
    log_msg(LOG_INFO, NULL, "rules.loaded", NULL, "rules %s loaded from %s", rules_version(r),
            dir);
    return live;
}

static struct slot *find_slot(struct rules_live *live, struct rules *r, struct slot ***link)
{
    if (live->current && live->current->rules == r) {
        *link = NULL;
        return live->current;
    }
    for (struct slot **p = &live->retired; *p; p = &(*p)->next) {
        if ((*p)->rules == r) {
            *link = p;
            return *p;
        }
    }
    return NULL;
}

struct rules *rules_live_acquire(struct rules_live *live)
{
    pthread_mutex_lock(&live->mu);
    live->current->refs++;
    struct rules *r = live->current->rules;
    pthread_mutex_unlock(&live->mu);
    return r;
}

void rules_live_release(struct rules_live *live, struct rules *r)
{
    struct slot *dead = NULL;
    pthread_mutex_lock(&live->mu);
    struct slot **link;
    struct slot *s = find_slot(live, r, &link);
    if (s && --s->refs == 0 && link) {
        *link = s->next;
        dead = s;
    }
    pthread_mutex_unlock(&live->mu);
    if (dead) {
        rules_destroy(dead->rules);
        free(dead);
    }
}

int rules_live_reload(struct rules_live *live, struct sd_error *err)
{
    pthread_mutex_lock(&live->reload_mu);
    struct rules *fresh = rules_load(live->dir, &live->limits, err);
    if (!fresh) {
        bson_t f = BSON_INITIALIZER;
        BSON_APPEND_UTF8(&f, "error", err->message);
        log_msg(LOG_ERROR, NULL, "rules.reload_failed", &f,
                "rules in %s are invalid; keeping the last good set: %s", live->dir,
                err->message);
        bson_destroy(&f);
        metrics_rules_reload(false);
        pthread_mutex_unlock(&live->reload_mu);
        return -1;
    }
    struct slot *dead = NULL;
    pthread_mutex_lock(&live->mu);
    struct rules *old = live->current->rules;
    if (strcmp(rules_version(old), rules_version(fresh)) == 0) {
        pthread_mutex_unlock(&live->mu);
        rules_destroy(fresh);
        metrics_rules_reload(true);
        pthread_mutex_unlock(&live->reload_mu);
        return 0;
    }
    struct slot *s = calloc(1, sizeof *s);
    s->rules = fresh;
    struct slot *prev = live->current;
    live->current = s;
    if (prev->refs == 0) {
        dead = prev;
    } else {
        prev->next = live->retired;
        live->retired = prev;
    }
    char old_version[16];
    strcpy(old_version, rules_version(old));
    pthread_mutex_unlock(&live->mu);
    log_msg(LOG_INFO, NULL, "rules.reloaded", NULL, "rules %s replace %s", rules_version(fresh),
            old_version);
    metrics_rules_reload(true);
    if (dead) {
        rules_destroy(dead->rules);
        free(dead);
    }
    pthread_mutex_unlock(&live->reload_mu);
    return 0;
}

/* Newest mtime (ns) of the rule files: the polling fallback's change test. */
static long long newest_mtime(const char *dir)
{
    long long newest = 0;
    for (int i = 0; i < rules_file_count; i++) {
        char path[1024];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s.lua", dir, rules_files[i]);
        if (stat(path, &st) == 0) {
            long long t = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
            if (t > newest)
                newest = t;
        }
    }
    return newest;
}

static void *watch_main(void *arg)
{
    struct rules_live *live = arg;
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd >= 0 && inotify_add_watch(fd, live->dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE |
                                                        IN_DELETE | IN_MODIFY) < 0) {
        close(fd);
        fd = -1;
    }
    if (fd < 0)
        log_msg(LOG_WARN, NULL, "rules.watch", NULL,
                "inotify unavailable for %s (%s); polling every %d ms", live->dir,
                strerror(errno), POLL_MS);
    long long seen = newest_mtime(live->dir);
    bool pending = false;
    while (!atomic_load(&live->stop)) {
        struct pollfd pfd[2] = {{live->wake_fd[0], POLLIN, 0}, {fd, POLLIN, 0}};
        int timeout = pending ? DEBOUNCE_MS : (fd < 0 ? POLL_MS : -1);
        int n = poll(pfd, fd < 0 ? 1 : 2, timeout);
        if (atomic_load(&live->stop))
            break;
        if (n > 0 && fd >= 0 && (pfd[1].revents & POLLIN)) {
            char buf[4096];
            while (read(fd, buf, sizeof buf) > 0)
                ;
            pending = true; /* wait for the editor to finish writing */
            continue;
        }
        if (n == 0 && fd < 0) {
            long long now = newest_mtime(live->dir);
            if (now != seen) {
                seen = now;
                pending = true;
                continue;
            }
        }
        if (n == 0 && pending) {
            pending = false;
            struct sd_error err;
            rules_live_reload(live, &err);
        }
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

int rules_live_watch(struct rules_live *live, struct sd_error *err)
{
    if (pipe2(live->wake_fd, O_CLOEXEC) != 0)
        return sd_error_set(err, "rules watcher: pipe: %s", strerror(errno));
    if (pthread_create(&live->watcher, NULL, watch_main, live) != 0)
        return sd_error_set(err, "rules watcher: cannot start thread");
    live->watching = true;
    return 0;
}

void rules_live_destroy(struct rules_live *live)
{
    if (!live)
        return;
    if (live->watching) {
        atomic_store(&live->stop, true);
        (void)!write(live->wake_fd[1], "x", 1);
        pthread_join(live->watcher, NULL);
    }
    for (int i = 0; i < 2; i++)
        if (live->wake_fd[i] >= 0)
            close(live->wake_fd[i]);
    for (struct slot *s = live->retired, *next; s; s = next) {
        next = s->next;
        rules_destroy(s->rules);
        free(s);
    }
    rules_destroy(live->current->rules);
    free(live->current);
    pthread_mutex_destroy(&live->mu);
    pthread_mutex_destroy(&live->reload_mu);
    free(live->dir);
    free(live);
}
