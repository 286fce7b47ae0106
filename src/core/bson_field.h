/* bson_field.h — reading one field of a document (top-level, or a dotted
 * path where the name says so), typed, with the absent-or-wrong-type case
 * folded into one answer. Borrowed pointers: valid while the document is. */
#ifndef SD_CORE_BSON_FIELD_H
#define SD_CORE_BSON_FIELD_H

#include <bson/bson.h>
#include <stdbool.h>

/* The string at key, or NULL when absent or not a string. */
static inline const char *bson_field_utf8(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)
               ? bson_iter_utf8(&it, NULL)
               : NULL;
}

/* The string at a dotted path, or NULL when doc is NULL, or the value is
 * absent or not a string. */
static inline const char *bson_path_utf8(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return NULL;
}

/* The number at a dotted path as an int64, or dflt. */
static inline int64_t bson_path_int(const bson_t *doc, const char *path, int64_t dflt)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_NUMBER(&it))
        return bson_iter_as_int64(&it);
    return dflt;
}

/* The ObjectId at a dotted path into *out; false when there is none. */
static inline bool bson_path_oid(const bson_t *doc, const char *path, bson_oid_t *out)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_OID(&it)) {
        bson_oid_copy(bson_iter_oid(&it), out);
        return true;
    }
    return false;
}

/* The string at a dotted path, or "" when absent or not a string: for text
 * that prints a field whether it is there or not. */
static inline const char *bson_path_text(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return "";
}

/* The date at key in ms, or dflt when absent or not a date. */
static inline int64_t bson_field_date(const bson_t *doc, const char *key, int64_t dflt)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_DATE_TIME(&it)
               ? bson_iter_date_time(&it)
               : dflt;
}

/* The document or array the iterator is on, as a read-only bson_t over its
 * bytes (valid while the outer document is); false for any other type. */
static inline bool bson_iter_child(const bson_iter_t *it, bson_t *out)
{
    uint32_t len;
    const uint8_t *data;
    if (BSON_ITER_HOLDS_DOCUMENT(it))
        bson_iter_document(it, &len, &data);
    else if (BSON_ITER_HOLDS_ARRAY(it))
        bson_iter_array(it, &len, &data);
    else
        return false;
    return bson_init_static(out, data, len);
}

/* An iterator over the members of the array or document at a dotted path;
 * false when absent or of another type. */
static inline bool bson_path_each(const bson_t *doc, const char *path, bson_iter_t *members)
{
    bson_iter_t it;
    return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
           bson_iter_recurse(&it, members);
}

/* Room for n read-only views (bson_init_static) in one block, aligned as libbson
 * declares bson_t (128 bytes; malloc promises 16). A view must not move once
 * made: it points into itself. Zeroed; free with bson_free. */
static inline bson_t *bson_views_new(size_t n)
{
    return (bson_t *)bson_aligned_alloc0(BSON_ALIGNOF(bson_t), (n ? n : 1) * sizeof(bson_t));
}

#endif
