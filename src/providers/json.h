/* json.h — small readers for provider answers parsed into bson (via
 * http_response_json). Missing or mistyped members read as empty / 0 / false:
 * provider answers grow new fields and drop optional ones, and a caller checks
 * the one member it cannot do without. Header-only; no ownership involved.
 */
#ifndef SD_PROVIDERS_JSON_H
#define SD_PROVIDERS_JSON_H

#include <bson/bson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/bson_field.h"

/* Copies a string member (dotted paths allowed) into out; "" when absent. A
 * number is formatted, since providers are not consistent (Twilio's balance is
 * a string, an error code a number). Returns true when the member was there. */
static inline bool json_str(const bson_t *doc, const char *path, char *out, size_t size)
{
    bson_iter_t it;
    out[0] = '\0';
    if (!doc || !bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &it))
        return false;
    if (BSON_ITER_HOLDS_UTF8(&it))
        snprintf(out, size, "%s", bson_iter_utf8(&it, NULL));
    else if (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it))
        snprintf(out, size, "%lld", (long long)bson_iter_as_int64(&it));
    else if (BSON_ITER_HOLDS_DOUBLE(&it))
        snprintf(out, size, "%g", bson_iter_double(&it));
    else
        return false;
    return true;
}

static inline long long json_int(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (!doc || !bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &it))
        return 0;
    if (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it) || BSON_ITER_HOLDS_DOUBLE(&it)
        || BSON_ITER_HOLDS_BOOL(&it))
        return (long long)bson_iter_as_int64(&it);
    if (BSON_ITER_HOLDS_UTF8(&it))
        return strtoll(bson_iter_utf8(&it, NULL), NULL, 10);
    return 0;
}

static inline bool json_bool(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (!doc || !bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &it))
        return false;
    return bson_iter_as_bool(&it);
}

/* Sets *child to the embedded document or array at path; false when absent. */
static inline bool json_child(const bson_t *doc, const char *path, bson_t *child)
{
    bson_iter_t it;
    return doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
           bson_iter_child(&it, child);
}

#endif
