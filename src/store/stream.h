/* stream.h — the Redis stream calls the message-status job makes on
 * `status-events` (SPEC §2): consumer-group reads, claims of abandoned
 * entries, acknowledgement together with a copy to a side stream, and
 * trimming of what every group has acknowledged.
 *
 * An entry comes back as a BSON document { id: "<ms>-<seq>", <field>: <value>,
 * … } with every field a UTF-8 string (a value that is not valid UTF-8 is
 * replaced by "" and the entry gets `_invalid_utf8: <field name>`, so the
 * caller can reject it by name instead of printing bytes).
 *
 * Ownership: stream_read/stream_claim append owned documents to a caller-owned
 * struct stream_batch, freed by stream_batch_clear. Errors follow
 * core/error.h; a Redis error reply (other than BUSYGROUP on create) fails the
 * call.
 */
#ifndef SD_STORE_STREAM_H
#define SD_STORE_STREAM_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "store/redis.h"

struct stream_batch {
    bson_t **entries;
    size_t n, cap;
};

void stream_batch_clear(struct stream_batch *b);

/* XGROUP CREATE key group 0 MKSTREAM; an existing group is fine. */
int stream_group_ensure(struct rds *r, const char *key, const char *group, struct sd_error *err);

/* XREADGROUP GROUP group consumer COUNT count STREAMS key > (new entries,
 * non-blocking). */
int stream_read(struct rds *r, const char *key, const char *group, const char *consumer,
                int count, struct stream_batch *out, struct sd_error *err);

/* XRANGE key (after + COUNT count: up to count entries after the id `after`
 * ("-" from the start), read-only (no group). */
int stream_range(struct rds *r, const char *key, const char *after, int count,
                 struct stream_batch *out, struct sd_error *err);

/* XAUTOCLAIM key group consumer min_idle_ms cursor COUNT count: entries pending
 * longer than min_idle_ms with any consumer become ours. cursor (in/out, size
 * ≥ 48) starts at "0-0" and is "0-0" again when the pending list is done. */
int stream_claim(struct rds *r, const char *key, const char *group, const char *consumer,
                 int64_t min_idle_ms, char *cursor, int count, struct stream_batch *out,
                 struct sd_error *err);

/* What happens to one entry at the end of its batch. */
struct stream_done {
    const char *id;
    const bson_t *entry;      /* the entry as read (its fields are copied) */
    const char *side_stream;  /* NULL, or a stream key to append the entry to first */
    const char *reason;       /* with side_stream: the `reason` field added */
};

/* For each item: [XADD side * <entry fields> reason … origin_id <id>] then
 * XACK, all inside one MULTI/EXEC so that a copy and its acknowledgement happen
 * together (a crash never leaves a copy without the ack, nor the reverse).
 * side_maxlen bounds each side stream (XADD MAXLEN ~). One round trip. */
int stream_finish(struct rds *r, const char *key, const char *group,
                  const struct stream_done *items, size_t n, long side_maxlen,
                  struct sd_error *err);

/* One more failed try of an entry that stays pending: INCR <tries_prefix><id>,
 * the key kept for ttl_ms (a count outlives a crash and a claim-back, not the
 * entry's life). *tries receives the count, this try included. */
int stream_count_try(struct rds *r, const char *tries_prefix, const char *id, long long ttl_ms,
                     long long *tries, struct sd_error *err);

/* Trims key up to what every consumer group has acknowledged: XTRIM MINID at
 * the smallest of, over all groups, the oldest pending id and the last
 * delivered id. A stream with no group is left alone. *trimmed = entries
 * removed. */
int stream_trim_acknowledged(struct rds *r, const char *key, int64_t *trimmed,
                             struct sd_error *err);

/* The ms part of an entry id ("1700000000000-0" → 1700000000000), or -1. */
int64_t stream_id_ms(const char *id);

#endif
