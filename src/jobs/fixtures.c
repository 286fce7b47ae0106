#include "jobs/fixtures.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "core/clock.h"
#include "store/mongo.h"

/* The collections, then what stands in for Redis and the providers:
 * status-events (stream entries, message-status) and provider-answers
 * (canned provider answers: message-status polls, communication-check). */
static const char *const collections[] = {COLL_CONVERSATION, COLL_ROOM,         COLL_MESSAGE,
                                          COLL_CHANNEL,      COLL_ALERT,        COLL_NOTIFICATION,
                                          FIXTURE_STATUS_EVENTS, FIXTURE_PROVIDER_ANSWERS,
                                          /* the notification job's own state */
                                          "conversation-notify-state"};
#define N_COLLECTIONS (sizeof collections / sizeof *collections)

struct fixtures {
    bson_t *docs[N_COLLECTIONS]; /* {"docs": [...]} as parsed */
    const bson_t **views[N_COLLECTIONS];
    bson_t *view_storage[N_COLLECTIONS];
    size_t counts[N_COLLECTIONS];
    int64_t now_ms;
    bson_t *meta;
    char prefix[128];
    char **ignored; /* names in the folder that are not fixture files, sorted */
    size_t n_ignored;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_fixture_name(const char *name)
{
    char want[128];
    for (size_t c = 0; c < N_COLLECTIONS; c++) {
        snprintf(want, sizeof want, "%s.json", collections[c]);
        if (strcmp(name, want) == 0)
            return true;
    }
    return strcmp(name, "meta.json") == 0;
}

/* The folder must exist, be readable and hold at least one fixture file: a
 * typo in --fixtures must not look like "my rules plan nothing". Other names
 * are collected for a warning; hidden files are not. */
static int scan_folder(struct fixtures *f, const char *dir, struct sd_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return sd_error_set(err, "%s: %s", dir, strerror(errno));
    size_t known = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (is_fixture_name(e->d_name)) {
            known++;
            continue;
        }
        if (f->n_ignored == cap)
            f->ignored = realloc(f->ignored, (cap = cap ? 2 * cap : 8) * sizeof *f->ignored);
        f->ignored[f->n_ignored++] = strdup(e->d_name);
    }
    closedir(d);
    if (f->n_ignored)
        qsort(f->ignored, f->n_ignored, sizeof *f->ignored, by_name);
    if (known == 0) {
        char found[200] = "";
        size_t used = 0;
        for (size_t i = 0; i < f->n_ignored && used < sizeof found - 1; i++)
            used += (size_t)snprintf(found + used, sizeof found - used, "%s%s", i ? ", " : "",
                                     f->ignored[i]);
        return sd_error_set(err,
                            "%s: no fixture files in this folder (found %s; expected "
                            "<collection>.json such as %s.json, or meta.json)",
                            dir, used ? found : "nothing", COLL_CONVERSATION);
    }
    return 0;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Parses a JSON file, wrapped so a top-level array becomes a document. */
static bson_t *parse(const char *path, const char *text, size_t len, bool wrap,
                     struct sd_error *err)
{
    bson_error_t berr;
    bson_t *doc;
    if (wrap) {
        char *wrapped = malloc(len + 16);
        int n = snprintf(wrapped, 16, "{\"docs\":");
        memcpy(wrapped + n, text, len);
        wrapped[n + len] = '}';
        doc = bson_new_from_json((const uint8_t *)wrapped, (ssize_t)(n + len + 1), &berr);
        free(wrapped);
    } else {
        doc = bson_new_from_json((const uint8_t *)text, (ssize_t)len, &berr);
    }
    if (!doc)
        sd_error_set(err, "%s: not valid Extended JSON: %s", path, berr.message);
    return doc;
}

struct fixtures *fixtures_load(const char *dir, struct sd_error *err)
{
    struct fixtures *f = calloc(1, sizeof *f);
    f->now_ms = -1;
    snprintf(f->prefix, sizeof f->prefix, "qm:support:");
    if (scan_folder(f, dir, err))
        goto fail;
    char path[1024];
    for (size_t c = 0; c < N_COLLECTIONS; c++) {
        snprintf(path, sizeof path, "%s/%s.json", dir, collections[c]);
        size_t len;
        char *text = slurp(path, &len);
        if (!text) {
            if (errno == ENOENT)
                continue;
            sd_error_set(err, "%s: %s", path, strerror(errno));
            goto fail;
        }
        f->docs[c] = parse(path, text, len, true, err);
        free(text);
        if (!f->docs[c])
            goto fail;
        bson_iter_t it, arr;
        if (!bson_iter_init_find(&it, f->docs[c], "docs") || !BSON_ITER_HOLDS_ARRAY(&it)) {
            sd_error_set(err, "%s: must hold a JSON array of documents", path);
            goto fail;
        }
        size_t n = 0;
        bson_iter_recurse(&it, &arr);
        while (bson_iter_next(&arr))
            n++;
        f->view_storage[c] = bson_views_new(n);
        f->views[c] = calloc(n + 1, sizeof(bson_t *));
        bson_iter_recurse(&it, &arr);
        size_t i = 0;
        while (bson_iter_next(&arr)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&arr)) {
                sd_error_set(err, "%s: element %zu is not a document", path, i);
                goto fail;
            }
            uint32_t dlen;
            const uint8_t *data;
            bson_iter_document(&arr, &dlen, &data);
            bson_init_static(&f->view_storage[c][i], data, dlen);
            f->views[c][i] = &f->view_storage[c][i];
            i++;
        }
        f->counts[c] = i;
    }
    snprintf(path, sizeof path, "%s/meta.json", dir);
    size_t len;
    char *text = slurp(path, &len);
    if (text) {
        bson_t *meta = parse(path, text, len, false, err);
        free(text);
        if (!meta)
            goto fail;
        bson_iter_t it;
        if (bson_iter_init_find(&it, meta, "now") && BSON_ITER_HOLDS_UTF8(&it) &&
            clock_parse_iso(bson_iter_utf8(&it, NULL), &f->now_ms, err)) {
            bson_destroy(meta);
            sd_error_prefix(err, "%s: now", path);
            goto fail;
        }
        if (bson_iter_init_find(&it, meta, "redis_prefix") && BSON_ITER_HOLDS_UTF8(&it))
            snprintf(f->prefix, sizeof f->prefix, "%s", bson_iter_utf8(&it, NULL));
        f->meta = meta;
    }
    return f;
fail:
    fixtures_destroy(f);
    return NULL;
}

const char *fixtures_meta_str(const struct fixtures *f, const char *key)
{
    bson_iter_t it;
    return f->meta && bson_iter_init_find(&it, f->meta, key) && BSON_ITER_HOLDS_UTF8(&it)
               ? bson_iter_utf8(&it, NULL)
               : NULL;
}

void fixtures_destroy(struct fixtures *f)
{
    if (!f)
        return;
    if (f->meta)
        bson_destroy(f->meta);
    for (size_t c = 0; c < N_COLLECTIONS; c++) {
        free(f->views[c]);
        bson_free(f->view_storage[c]);
        if (f->docs[c])
            bson_destroy(f->docs[c]);
    }
    for (size_t i = 0; i < f->n_ignored; i++)
        free(f->ignored[i]);
    free(f->ignored);
    free(f);
}

const bson_t *const *fixtures_docs(const struct fixtures *f, const char *collection, size_t *n)
{
    for (size_t c = 0; c < N_COLLECTIONS; c++) {
        if (strcmp(collections[c], collection) == 0) {
            *n = f->counts[c];
            return f->views[c];
        }
    }
    *n = 0;
    return NULL;
}

static int by_id(const void *a, const void *b)
{
    const bson_t *x = *(const bson_t *const *)a, *y = *(const bson_t *const *)b;
    bson_iter_t i, j;
    bool hx = bson_iter_init_find(&i, x, "_id") && BSON_ITER_HOLDS_OID(&i);
    bool hy = bson_iter_init_find(&j, y, "_id") && BSON_ITER_HOLDS_OID(&j);
    if (!hx || !hy)
        return hx - hy;
    return bson_oid_compare(bson_iter_oid(&i), bson_iter_oid(&j));
}

const bson_t **fixtures_sorted(const struct fixtures *f, const char *collection,
                               bool (*keep)(const bson_t *doc), size_t *n)
{
    size_t all;
    const bson_t *const *docs = fixtures_docs(f, collection, &all);
    const bson_t **out = calloc(all + 1, sizeof *out);
    *n = 0;
    for (size_t i = 0; i < all; i++)
        if (!keep || keep(docs[i]))
            out[(*n)++] = docs[i];
    qsort(out, *n, sizeof *out, by_id);
    return out;
}

void fixtures_map_by_id(const struct fixtures *f, const char *collection, bson_t *map)
{
    size_t n;
    const bson_t *const *docs = fixtures_docs(f, collection, &n);
    for (size_t i = 0; i < n; i++) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, docs[i], "_id") && BSON_ITER_HOLDS_OID(&it)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&it), hex);
            BSON_APPEND_DOCUMENT(map, hex, docs[i]);
        }
    }
}

int64_t fixtures_now(const struct fixtures *f) { return f->now_ms; }
const char *fixtures_redis_prefix(const struct fixtures *f) { return f->prefix; }

const char *const *fixtures_ignored(const struct fixtures *f, size_t *n)
{
    *n = f->n_ignored;
    return (const char *const *)f->ignored;
}
