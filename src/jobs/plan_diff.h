/* plan_diff.h — what a candidate rule set would change: two plans of the same
 * world (dry-run --live --rules A --against B) compared by outbox key.
 *
 *   diff: { added:   [entry...]   planned with --rules only,
 *           removed: [entry...]   planned with --against only,
 *           changed: [{key, type, job, fields: [names], rules: entry, against: entry}],
 *           counts:  { <job>: { <type>: {added, removed, changed} } } }
 * An entry is the outbox entry as planned, with "job" added. Fields compared:
 * recipient, via, subject, text, html, body. Lists are in key order, so the
 * same plans give the same bytes.
 *
 * Pure. Ownership: appends to a caller-owned document.
 */
#ifndef SD_JOBS_PLAN_DIFF_H
#define SD_JOBS_PLAN_DIFF_H

#include <bson/bson.h>

void plan_diff(const bson_t *rules_plan, const bson_t *against_plan, bson_t *diff);

/* The diff as text: a count line per job and type, then the keys. */
void plan_diff_print_text(const bson_t *diff, const char *rules_version,
                          const char *against_version);

#endif
