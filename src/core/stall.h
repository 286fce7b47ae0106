/* stall.h — lets one thread see that another is stuck in work that should be
 * bounded.
 *
 * A tick thread attaches a watch (stall_attach); code whose running time has a
 * deadline — a rule call — brackets itself with stall_enter / stall_leave; the
 * tick's lease renewer asks stall_stuck. The deadlines (rules/deadline.h) make
 * a stuck call an impossibility we know of; this is the net under them: a tick
 * thread that cannot be stopped must not keep its job's lease alive, or the
 * job would stop on every instance.
 *
 * Ownership: the watch is caller-owned storage and must outlive the attach.
 * Threads without a watch pay one thread-local read per call.
 */
#ifndef SD_CORE_STALL_H
#define SD_CORE_STALL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct stall_watch {
    _Atomic int64_t busy_since_ms; /* 0 when not inside a bounded call */
    int64_t limit_ms;              /* longer than this counts as stuck */
    int depth;                     /* nesting, owner thread only */
};

/* Attaches w (NULL detaches) to the calling thread. */
void stall_attach(struct stall_watch *w, int64_t limit_ms);

void stall_enter(void);
void stall_leave(void);

/* True when w's thread has been inside a bounded call longer than its limit;
 * *busy_ms (if non-NULL) says how long. Safe from any thread. */
bool stall_stuck(struct stall_watch *w, int64_t now_ms, int64_t *busy_ms);

#endif
