/* entry.h — the parts of a pending outbox entry (outbox.h, SPEC §2) that every
 * job's decide writes the same way, so that an entry reads alike whichever
 * job planned it. Pure: no I/O. Borrowed pointers: valid while the documents
 * are. */
#ifndef SD_OUTBOX_ENTRY_H
#define SD_OUTBOX_ENTRY_H

#include <bson/bson.h>
#include <stdint.h>

/* The recipient's stable id, for an entry's key: user_id, else email, else
 * phone, else "unknown". */
const char *outbox_recipient_id(const bson_t *recipient);

/* Appends, after an entry's key, type and ids: recipient (notify.lua's, without
 * its `via`), via, from (unless NULL), status "pending", attempts 0,
 * next_attempt_at now, subject, text and html from templates.lua's rendering
 * (its `result`; "" where absent), created_at now. */
void outbox_entry_fill(bson_t *entry, const bson_t *recipient, const char *via, const char *from,
                       const bson_t *rendered, int64_t now_ms);

#endif
