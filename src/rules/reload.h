/* reload.h — the live rules: the set in use, replaced as a whole when the
 * files change (inotify on the rules folder, with a polling fallback) or on
 * SIGHUP. A new set is compiled and validated beside the old one and swapped
 * in atomically; on any error the last good set stays and the error (file:line)
 * is logged. A tick takes a reference at its start and keeps that set to its
 * end, so a swap lands between ticks.
 *
 * Ownership: the manager owns every set; rules_live_acquire lends one that
 * must be given back with rules_live_release. Errors follow core/error.h.
 */
#ifndef SD_RULES_RELOAD_H
#define SD_RULES_RELOAD_H

#include "core/error.h"
#include "rules/engine.h"

struct rules_live;

/* Loads dir; fails (and returns NULL) when the first load fails. */
struct rules_live *rules_live_new(const char *dir, const struct rules_limits *limits,
                                  struct sd_error *err);
void rules_live_destroy(struct rules_live *live);

struct rules *rules_live_acquire(struct rules_live *live);
void rules_live_release(struct rules_live *live, struct rules *r);

/* Reloads now. Returns 0 when the new set is in use (or nothing changed), -1
 * when the old one stays. Logs either way. */
int rules_live_reload(struct rules_live *live, struct sd_error *err);

/* Starts the watcher thread (debounced reload on file changes). */
int rules_live_watch(struct rules_live *live, struct sd_error *err);

#endif
