/* engine.h — one loaded, validated set of rules: the Lua files of the rules
 * folder compiled into one sandboxed Lua state.
 *
 * Files and what each must return (a table; SPEC §4):
 *   templates.lua  render(type, ctx) -> {subject, text, html}
 *   notify.lua     recipients(type, conversation, room) -> list of recipients
 *   sla.lua        policy(conversation, room) -> {first_response, resolution, ...}
 *   health.lua     thresholds table (and optional functions)
 *   retry.lua      decide(message, error, attempts) -> {retry, delay_seconds, final}
 *   queue.lua      score(conversation, now_ms) -> number
 * A file may also return `tests = { {fn=, args={...}, expect=...}, ... }`: each
 * is run at load, and a failing one rejects the whole set.
 *
 * Sandbox: base library without dofile/loadfile/load/require/collectgarbage,
 * plus string, table, math, utf8, and os.time/os.date/os.clock only; text
 * chunks only (no bytecode); one environment per file. Each call runs under an
 * instruction budget and a wall-clock deadline (also enforced inside string
 * matching, which pattern.c does instead of Lua's C matcher), and the state
 * under a memory cap; exceeding any is an error ("exceeded its time budget"),
 * never a hang or an exhausted process. Errors name file:line and the
 * function (module.fn, or the self-test and the function it called).
 * While a call runs, the calling thread is marked busy (core/stall.h), so its
 * lease renewer can tell a call stuck past every bound.
 *
 * Concurrency: a rules set is used by several job threads; calls into it are
 * serialized by its own mutex (they are short).
 *
 * Ownership: rules_load returns a set freed by rules_destroy (reload.h manages
 * sharing between threads). Results are written into caller-owned bson_t.
 * Errors follow core/error.h.
 */
#ifndef SD_RULES_ENGINE_H
#define SD_RULES_ENGINE_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

struct rules;

struct rules_limits {
    long long instructions;   /* per call; 0 = default (20,000,000) */
    size_t memory_bytes;      /* per rules set; 0 = default (64 MiB) */
    int timeout_ms;           /* wall clock per call and per self-test; 0 = default (2000) */
};

/* Loads every rule file of dir, validates it and runs the self-tests. */
struct rules *rules_load(const char *dir, const struct rules_limits *limits,
                         struct sd_error *err);

/* The same; on failure *failed_running tells a runtime failure (a rule raised,
 * failed a self-test, or ran out of time, instructions or memory while
 * running) from a malformed set (a file missing or unreadable, a syntax error,
 * a required function missing). */
struct rules *rules_load_checked(const char *dir, const struct rules_limits *limits,
                                 bool *failed_running, struct sd_error *err);
void rules_destroy(struct rules *r);

/* Content hash of the set (SHA-256 of the files, first 12 hex digits). */
const char *rules_version(const struct rules *r);

/* Calls module.fn(args...) where args is a BSON array whose elements become
 * the Lua arguments. The return value lands in out as field "result" (absent
 * when the function returned nil). */
int rules_call(struct rules *r, const char *module, const char *fn, const bson_t *args,
               bson_t *out, struct sd_error *err);

/* CPU time the calling thread has spent in rule calls (arguments in, the
 * function, the result out) since it started: templates.lua's separately
 * from the other files'. For the tick.end counters rules_cpu_us and
 * render_cpu_us (thread-local; CLOCK_THREAD_CPUTIME_ID). */
struct rules_cpu {
    uint64_t render_ns;
    uint64_t other_ns;
    uint64_t calls;
};
void rules_thread_cpu(struct rules_cpu *out);

/* `supportd explain`: while a sink is set on the calling thread, every
 * rules_call appends { file, function, args, result, duration_us, error? }
 * to it (an array; args and result as relaxed JSON cut to 240 bytes). The
 * sink is borrowed; NULL stops tracing. */
void rules_trace_to(bson_t *sink);

/* Reads module.field (any value) into out as field "result". */
int rules_get(struct rules *r, const char *module, const char *field, bson_t *out,
              struct sd_error *err);

/* The rule files, in load order. */
extern const char *const rules_files[];
extern const int rules_file_count;

#endif
