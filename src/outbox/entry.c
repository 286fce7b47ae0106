/* entry — the common parts of a planned outbox entry (see entry.h). */
#include "outbox/entry.h"

#include <stdio.h>
#include <string.h>

static const char *utf8_of(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return NULL;
}

const char *outbox_recipient_id(const bson_t *r)
{
    const char *v;
    if ((v = utf8_of(r, "user_id")) || (v = utf8_of(r, "email")) || (v = utf8_of(r, "phone")))
        return v;
    return "unknown";
}

void outbox_entry_fill(bson_t *entry, const bson_t *recipient, const char *via, const char *from,
                       const bson_t *rendered, int64_t now_ms)
{
    bson_t rec;
    bson_iter_t f;
    BSON_APPEND_DOCUMENT_BEGIN(entry, "recipient", &rec);
    if (bson_iter_init(&f, recipient))
        while (bson_iter_next(&f))
            if (strcmp(bson_iter_key(&f), "via") != 0)
                bson_append_iter(&rec, NULL, 0, &f);
    bson_append_document_end(entry, &rec);
    BSON_APPEND_UTF8(entry, "via", via);
    if (from)
        BSON_APPEND_UTF8(entry, "from", from);
    BSON_APPEND_UTF8(entry, "status", "pending");
    BSON_APPEND_INT32(entry, "attempts", 0);
    BSON_APPEND_DATE_TIME(entry, "next_attempt_at", now_ms);
    const char *fields[] = {"subject", "text", "html"};
    for (int i = 0; i < 3; i++) {
        char path[32];
        snprintf(path, sizeof path, "result.%s", fields[i]);
        const char *v = utf8_of(rendered, path);
        BSON_APPEND_UTF8(entry, fields[i], v ? v : "");
    }
    BSON_APPEND_DATE_TIME(entry, "created_at", now_ms);
}
