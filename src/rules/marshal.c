#include "rules/marshal.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"
#include "rules/deadline.h"

#define MAX_DEPTH 64

void marshal_push_value(lua_State *L, const bson_iter_t *it)
{
    if (!lua_checkstack(L, 3))
        luaL_error(L, "document nested too deeply");
    switch (bson_iter_type(it)) {
    case BSON_TYPE_UTF8: {
        uint32_t len;
        const char *s = bson_iter_utf8(it, &len);
        lua_pushlstring(L, s, len);
        break;
    }
    case BSON_TYPE_INT32:
        lua_pushinteger(L, bson_iter_int32(it));
        break;
    case BSON_TYPE_INT64:
        lua_pushinteger(L, bson_iter_int64(it));
        break;
    case BSON_TYPE_DOUBLE:
        lua_pushnumber(L, bson_iter_double(it));
        break;
    case BSON_TYPE_BOOL:
        lua_pushboolean(L, bson_iter_bool(it));
        break;
    case BSON_TYPE_DATE_TIME:
        lua_pushinteger(L, bson_iter_date_time(it));
        break;
    case BSON_TYPE_OID: {
        char hex[25];
        bson_oid_to_string(bson_iter_oid(it), hex);
        lua_pushstring(L, hex);
        break;
    }
    case BSON_TYPE_DECIMAL128: {
        bson_decimal128_t d;
        char buf[BSON_DECIMAL128_STRING];
        bson_iter_decimal128(it, &d);
        bson_decimal128_to_string(&d, buf);
        lua_pushstring(L, buf);
        break;
    }
    case BSON_TYPE_DOCUMENT:
    case BSON_TYPE_ARRAY: {
        bson_t sub;
        if (bson_iter_child(it, &sub))
            marshal_push_document(L, &sub, BSON_ITER_HOLDS_ARRAY(it));
        else
            lua_pushnil(L);
        break;
    }
    default:
        lua_pushnil(L);
    }
}

void marshal_push_document(lua_State *L, const bson_t *doc, bool as_array)
{
    bson_iter_t it;
    /* Sized up front: a table grown field by field is rehashed at every
     * power of two (marshalling is most of a short rule call's cost). */
    int n_keys = (int)bson_count_keys(doc);
    lua_createtable(L, as_array ? n_keys : 0, as_array ? 0 : n_keys);
    if (!bson_iter_init(&it, doc))
        return;
    lua_Integer n = 0;
    while (bson_iter_next(&it)) {
        marshal_push_value(L, &it);
        if (as_array)
            lua_rawseti(L, -2, ++n);
        else
            lua_setfield(L, -2, bson_iter_key(&it));
    }
}

/* A table is an array when its keys are exactly the integers 1..n. */
static lua_Integer sequence_length(lua_State *L, int idx)
{
    lua_Integer count = 0, max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1)) {
            lua_pop(L, 1);
            return -1;
        }
        lua_Integer k = lua_tointeger(L, -1);
        if (k < 1) {
            lua_pop(L, 1);
            return -1;
        }
        if (k > max)
            max = k;
        count++;
    }
    return count > 0 && count == max ? count : -1;
}

/* One conversion: its limits and what it has used. Only raw access is used
 * (lua_next, lua_rawget): no metamethod — no rule code — runs while a result
 * is read, so a result cannot throw or loop here. */
struct walk {
    lua_State *L;
    const struct marshal_limits *lim;
    size_t nodes;
    struct sd_error *err;
};

static int append_depth(struct walk *w, int idx, bson_t *out, const char *key, int depth);

static int too_large(struct walk *w, const char *key)
{
    return sd_error_set(w->err, "%s: the value is larger than a BSON document may be (16 MiB)",
                        key);
}

/* A value more: within the node cap, and the deadline read every 1,024. */
static int count_node(struct walk *w, const char *key)
{
    w->nodes++;
    if (w->lim && w->lim->max_nodes && w->nodes > w->lim->max_nodes)
        return sd_error_set(w->err, "%s: more than %zu values (a table repeated inside itself?)",
                            key, w->lim->max_nodes);
    if (w->lim && w->lim->deadline && (w->nodes & 1023) == 0 &&
        rules_deadline_passed(w->lim->deadline))
        return sd_error_set(w->err, "%s: reading the result exceeded the time budget of %d ms",
                            key, w->lim->deadline->limit_ms);
    return 0;
}

struct field_key {
    char *text;
    bool integer;
    lua_Integer n;
};

static int compare_keys(const void *a, const void *b)
{
    return strcmp(((const struct field_key *)a)->text, ((const struct field_key *)b)->text);
}

static void free_keys(struct field_key *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(keys[i].text);
    free(keys);
}

static int append_table(struct walk *w, int idx, bson_t *out, const char *key, int depth)
{
    lua_State *L = w->L;
    if (depth > MAX_DEPTH)
        return sd_error_set(w->err, "table nested deeper than %d levels at \"%s\" (a cycle?)",
                            MAX_DEPTH, key);
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 3))
        return sd_error_set(w->err, "%s: out of Lua stack", key);
    bson_t child;
    lua_Integer n = sequence_length(L, idx);
    if (n > 0) {
        if (!bson_append_array_begin(out, key, -1, &child))
            return too_large(w, key);
        int rc = 0;
        for (lua_Integer i = 1; rc == 0 && i <= n; i++) {
            char k[24];
            snprintf(k, sizeof k, "%lld", (long long)(i - 1));
            lua_rawgeti(L, idx, i);
            rc = append_depth(w, -1, &child, k, depth + 1);
            lua_pop(L, 1);
        }
        /* Closed on every path: a parent left "in child" makes libbson abort
         * on the next append to it. */
        if (!bson_append_array_end(out, &child) && rc == 0)
            rc = too_large(w, key);
        return rc ? sd_error_prefix(w->err, "%s", key) : 0;
    }
    /* Lua's table order changes from run to run (string hashes are seeded);
     * fields go out sorted so the same rules give the same bytes. */
    size_t n_keys = 0, cap = 16;
    struct field_key *keys = malloc(cap * sizeof *keys);
    if (!keys)
        return sd_error_set(w->err, "%s: out of memory", key);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        struct field_key fk = {0};
        char numkey[24];
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t klen;
            const char *k = lua_tolstring(L, -1, &klen);
            /* A field name is a C string of valid UTF-8: anything else would make a
             * document libbson itself rejects (found by fuzz_marshal). */
            if (!bson_utf8_validate(k, klen, false)) {
                sd_error_set(w->err, "%s: a field name is not valid UTF-8 (or holds a NUL)", key);
                lua_pop(L, 1);
                free_keys(keys, n_keys);
                return -1;
            }
            fk.text = strdup(k);
        } else if (lua_isinteger(L, -1)) {
            fk.integer = true;
            fk.n = lua_tointeger(L, -1);
            snprintf(numkey, sizeof numkey, "%lld", (long long)fk.n);
            fk.text = strdup(numkey);
        } else {
            sd_error_set(w->err, "%s: a key of type %s cannot become a field name", key,
                         luaL_typename(L, -1));
            lua_pop(L, 1);
            free_keys(keys, n_keys);
            return -1;
        }
        if (n_keys == cap) {
            struct field_key *more = realloc(keys, (cap *= 2) * sizeof *keys);
            if (!more) {
                free(fk.text);
                lua_pop(L, 1);
                free_keys(keys, n_keys);
                return sd_error_set(w->err, "%s: out of memory", key);
            }
            keys = more;
        }
        keys[n_keys++] = fk;
        if (count_node(w, key)) {
            lua_pop(L, 1);
            free_keys(keys, n_keys);
            return -1;
        }
    }
    qsort(keys, n_keys, sizeof *keys, compare_keys);
    if (!bson_append_document_begin(out, key, -1, &child)) {
        free_keys(keys, n_keys);
        return too_large(w, key);
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n_keys; i++) {
        if (keys[i].integer)
            lua_rawgeti(L, idx, keys[i].n);
        else {
            lua_pushstring(L, keys[i].text);
            lua_rawget(L, idx);
        }
        rc = append_depth(w, -1, &child, keys[i].text, depth + 1);
        lua_pop(L, 1);
    }
    free_keys(keys, n_keys);
    if (!bson_append_document_end(out, &child) && rc == 0)
        rc = too_large(w, key);
    return rc ? sd_error_prefix(w->err, "%s", key) : 0;
}

static int append_depth(struct walk *w, int idx, bson_t *out, const char *key, int depth)
{
    lua_State *L = w->L;
    if (count_node(w, key))
        return -1;
    bool ok = true;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return 0;
    case LUA_TBOOLEAN:
        ok = bson_append_bool(out, key, -1, lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            ok = bson_append_int64(out, key, -1, lua_tointeger(L, idx));
        else
            ok = bson_append_double(out, key, -1, lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (!bson_utf8_validate(s, len, false))
            return sd_error_set(w->err, "%s: string is not valid UTF-8", key);
        if (len > INT32_MAX)
            return too_large(w, key);
        ok = bson_append_utf8(out, key, -1, s, (int)len);
        break;
    }
    case LUA_TTABLE:
        return append_table(w, idx, out, key, depth);
    default:
        return sd_error_set(w->err, "%s: a %s cannot leave the rules (only tables, strings, "
                                    "numbers and booleans)",
                            key, luaL_typename(L, idx));
    }
    return ok ? 0 : too_large(w, key);
}

int marshal_append(lua_State *L, int idx, bson_t *out, const char *key,
                   const struct marshal_limits *lim, struct sd_error *err)
{
    struct walk w = {.L = L, .lim = lim, .err = err};
    /* Into a scratch document first: on an error, out is left as it was. */
    bson_t *tmp = bson_new();
    int rc = append_depth(&w, lua_absindex(L, idx), tmp, key, 0);
    if (rc == 0 && !bson_concat(out, tmp))
        rc = too_large(&w, key);
    bson_destroy(tmp);
    return rc;
}
