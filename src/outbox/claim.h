/* claim.h — per-entry delivery claims in Redis (internal to src/outbox).
 *
 * Key <prefix>outbox:claim:<entry id>, value one of
 *   "claimed:<owner>/<random>"    a deliverer is sending it (PX 5 min)
 *   "sent:<provider>:<message id>" a provider accepted it (PX 7 days)
 *   "done:<attempts>"             a deliverer finished with it and left the
 *                                 entry at that `attempts` (PX CLAIM_DONE_TTL_MS)
 * SET NX is atomic on every Redis, which is what makes "each entry sent once"
 * hold across processes (SPEC §6). Release is compare-and-set on the server,
 * so a deliverer whose claim expired never touches another's.
 *
 * The "done:" marker is what lets a deliverer send from the copy its due query
 * returned, without re-reading each entry after claiming it: a copy read
 * before another deliverer's outcome write has a lower `attempts` than the
 * marker that deliverer left, so claiming it is refused (CLAIM_STALE) for as
 * long as the marker lives; a copy read after it carries the new count and
 * takes the claim over (compare-and-set from the marker). Every outcome write
 * increments `attempts`, so the count is the entry's version. A copy older
 * than CLAIM_FRESH_MS could predate a marker that has expired since: the
 * caller re-reads those (CLAIM_FRESH_MS <= CLAIM_DONE_TTL_MS).
 *
 * struct outbox_claim is caller-owned storage; errors follow core/error.h.
 */
#ifndef SD_OUTBOX_CLAIM_H
#define SD_OUTBOX_CLAIM_H

#include <stddef.h>

#include "core/error.h"
#include "store/redis.h"

#define CLAIM_DONE_TTL_MS (2 * 60 * 1000)
#define CLAIM_FRESH_MS (60 * 1000)

enum claim_state {
    CLAIM_OURS,   /* we hold it now */
    CLAIM_TAKEN,  /* another deliverer holds it */
    CLAIM_SENT,   /* already accepted by a provider: see sent_provider/sent_id */
    CLAIM_STALE,  /* finished by another deliverer after our copy was read */
};

struct outbox_claim {
    char key[320];
    char token[160];
    enum claim_state state;
    char sent_provider[16];
    char sent_id[160];
};

int claim_acquire(struct rds *r, const char *prefix, const char *entry_id, const char *owner,
                  int ttl_ms, struct outbox_claim *c, struct sd_error *err);

/* Records the provider's acceptance (unconditionally: even if our claim
 * expired meanwhile, "sent" is the truth every later deliverer must see). */
int claim_mark_sent(struct rds *r, const struct outbox_claim *c, const char *provider,
                    const char *message_id, long long ttl_ms, struct sd_error *err);

/* Right before a send: if the claim still holds our token, gives it a fresh
 * ttl_ms and returns 1; returns 0 when it does not (expired, taken over by
 * another deliverer, lost by Redis), -1 on a Redis error (err set). */
int claim_extend(struct rds *r, const struct outbox_claim *c, int ttl_ms, struct sd_error *err);

/* Deletes the claim if it still holds our token. */
int claim_release(struct rds *r, const struct outbox_claim *c, struct sd_error *err);

/* The same for a batch, each in one pipeline: one round trip; one more when
 * some keys exist (read back), and one more when some of those are "done:"
 * markers at or below the copy's attempts (taken over). versions[i] is the
 * `attempts` of the caller's copy of entry i. c has n elements. */
int claim_acquire_many(struct rds *r, const char *prefix, const char *const *entry_ids,
                       const int *versions, const char *owner, int ttl_ms,
                       struct outbox_claim *c, size_t n, struct sd_error *err);

/* Ends a batch's claims in one pipeline: each still holding our token becomes
 * "done:<versions[i]>" (the entry's attempts as we left it) for
 * CLAIM_DONE_TTL_MS; others (a "sent:" marker, another's claim) are left. */
int claim_finish_many(struct rds *r, const struct outbox_claim *const *c, const int *versions,
                      size_t n, struct sd_error *err);

#endif
