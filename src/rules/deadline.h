/* deadline.h — the wall-clock deadline of one rule call.
 *
 * The instruction budget counts Lua instructions; it cannot see time spent
 * inside C functions, where a pattern such as ".-.-.-.-b" over a long string
 * runs for hours. So every call also carries a deadline on CLOCK_MONOTONIC,
 * read by the count hook (engine.c) and by our own pattern matcher
 * (pattern.c) every few thousand steps. Once the deadline has passed the call
 * is `tripped`: the hook then fires on every instruction, so a rule that
 * catches the error with pcall gets it again at once.
 *
 * Ownership: plain caller-owned data; nothing to free.
 */
#ifndef SD_RULES_DEADLINE_H
#define SD_RULES_DEADLINE_H

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct rules_deadline {
    int64_t at_ns;     /* CLOCK_MONOTONIC; 0 = no deadline */
    int limit_ms;      /* for the message */
    bool tripped;      /* the deadline passed during this call */
    uint32_t steps;    /* matcher steps since the clock was last read */
};

static inline int64_t rules_deadline_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Starts the deadline limit_ms from now (0 = none). */
static inline void rules_deadline_arm(struct rules_deadline *d, int limit_ms)
{
    d->limit_ms = limit_ms;
    d->at_ns = limit_ms > 0 ? rules_deadline_now_ns() + (int64_t)limit_ms * 1000000LL : 0;
    d->tripped = false;
    d->steps = 0;
}

/* Reads the clock; true (and tripped) once the deadline has passed. */
static inline bool rules_deadline_passed(struct rules_deadline *d)
{
    if (d->tripped)
        return true;
    if (d->at_ns && rules_deadline_now_ns() >= d->at_ns)
        d->tripped = true;
    return d->tripped;
}

/* Raises the Lua error every caller of a rule recognises. Without a position:
 * the engine's message handler adds the innermost rules-file line, which is
 * where the time went (the hook may fire in a trusted helper). */
static inline int rules_deadline_raise(lua_State *L, const struct rules_deadline *d)
{
    lua_pushfstring(L, "exceeded its time budget of %d ms (QM_SUPPORT_RULES_TIMEOUT_MS)",
                    d->limit_ms);
    return lua_error(L);
}

#endif
