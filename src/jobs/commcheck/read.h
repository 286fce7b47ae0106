/* commcheck/read.h — the small BSON readers the commcheck files share
 * beyond core/bson_field.h's (missing or mistyped values read as absent). Not
 * for other modules.
 * Borrowed pointers: valid while the document is.
 */
#ifndef SD_JOBS_COMMCHECK_READ_H
#define SD_JOBS_COMMCHECK_READ_H

#include <bson/bson.h>
#include <stdio.h>
#include <string.h>

#include "core/bson_field.h"

static inline bool has(const char *s) { return s && *s; }

static inline bool hex_at(const bson_t *doc, const char *path, char hex[25])
{
    bson_oid_t oid;
    if (!bson_path_oid(doc, path, &oid)) {
        snprintf(hex, 25, "?");
        return false;
    }
    bson_oid_to_string(&oid, hex);
    return true;
}

/* A top-level key lookup that allows dots inside the key (URLs, domains). */
static inline bool entry_of(const bson_t *map, const char *key, bson_t *child)
{
    bson_iter_t it;
    uint32_t len;
    const uint8_t *data;
    if (!map || !bson_iter_init(&it, map))
        return false;
    while (bson_iter_next(&it)) {
        if (strcmp(bson_iter_key(&it), key) != 0)
            continue;
        if (!BSON_ITER_HOLDS_DOCUMENT(&it))
            return false;
        bson_iter_document(&it, &len, &data);
        return bson_init_static(child, data, len);
    }
    return false;
}

static inline int64_t map_int(const bson_t *map, const char *key)
{
    bson_iter_t it;
    if (!map || !bson_iter_init(&it, map))
        return 0;
    while (bson_iter_next(&it))
        if (strcmp(bson_iter_key(&it), key) == 0 && BSON_ITER_HOLDS_NUMBER(&it))
            return bson_iter_as_int64(&it);
    return 0;
}

static inline void idx(char *buf, size_t size, uint32_t i) { snprintf(buf, size, "%u", i); }

#endif
