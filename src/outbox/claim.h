/* claim.h — per-entry delivery claims in Redis (internal to src/outbox).
 *
 * Key <prefix>outbox:claim:<entry id>, value one of
 *   "claimed:<owner>/<random>"    a deliverer is sending it (PX 5 min)
 *   "sent:<provider>:<message id>" a provider accepted it (PX 7 days)
 * SET NX is atomic on every Redis, which is what makes "each entry sent once"
 * hold across processes (SPEC §6). Release is compare-and-delete on the
 * server, so a deliverer whose claim expired never deletes another's.
 *
 * struct outbox_claim is caller-owned storage; errors follow core/error.h.
 */
#ifndef SD_OUTBOX_CLAIM_H
#define SD_OUTBOX_CLAIM_H

#include <stddef.h>

#include "core/error.h"
#include "store/redis.h"

enum claim_state {
    CLAIM_OURS,   /* we hold it now */
    CLAIM_TAKEN,  /* another deliverer holds it */
    CLAIM_SENT,   /* already accepted by a provider: see sent_provider/sent_id */
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

/* Deletes the claim if it still holds our token. */
int claim_release(struct rds *r, const struct outbox_claim *c, struct sd_error *err);

/* The same for a batch, each in one pipeline (one round trip; two when some
 * claims are held by others and are read back). c has n elements. */
int claim_acquire_many(struct rds *r, const char *prefix, const char *const *entry_ids,
                       const char *owner, int ttl_ms, struct outbox_claim *c, size_t n,
                       struct sd_error *err);
int claim_release_many(struct rds *r, const struct outbox_claim *const *c, size_t n,
                       struct sd_error *err);

#endif
