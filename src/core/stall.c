#include "core/stall.h"

#include <stddef.h>

#include "core/clock.h"

static _Thread_local struct stall_watch *current;

void stall_attach(struct stall_watch *w, int64_t limit_ms)
{
    if (w) {
        atomic_store(&w->busy_since_ms, 0);
        w->limit_ms = limit_ms;
        w->depth = 0;
    }
    current = w;
}

void stall_enter(void)
{
    struct stall_watch *w = current;
    if (w && w->depth++ == 0)
        atomic_store(&w->busy_since_ms, clock_monotonic_ms());
}

void stall_leave(void)
{
    struct stall_watch *w = current;
    if (w && --w->depth == 0)
        atomic_store(&w->busy_since_ms, 0);
}

bool stall_stuck(struct stall_watch *w, int64_t now_ms, int64_t *busy_ms)
{
    int64_t since = w ? atomic_load(&w->busy_since_ms) : 0;
    int64_t busy = since ? now_ms - since : 0;
    if (busy_ms)
        *busy_ms = busy;
    return since && busy > w->limit_ms;
}
