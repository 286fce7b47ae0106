#include "rules/marshal.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"

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

static int append_depth(lua_State *L, int idx, bson_t *out, const char *key, int depth,
                        struct sd_error *err);

static int compare_keys(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int append_table(lua_State *L, int idx, bson_t *out, const char *key, int depth,
                        struct sd_error *err)
{
    if (depth > MAX_DEPTH)
        return sd_error_set(err, "table nested deeper than %d levels at \"%s\" (a cycle?)",
                            MAX_DEPTH, key);
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 3))
        return sd_error_set(err, "%s: out of Lua stack", key);
    bson_t child;
    lua_Integer n = sequence_length(L, idx);
    if (n > 0) {
        bson_append_array_begin(out, key, -1, &child);
        for (lua_Integer i = 1; i <= n; i++) {
            char k[24];
            snprintf(k, sizeof k, "%lld", (long long)(i - 1));
            lua_rawgeti(L, idx, i);
            int rc = append_depth(L, -1, &child, k, depth + 1, err);
            lua_pop(L, 1);
            if (rc)
                return sd_error_prefix(err, "%s", key);
        }
        bson_append_array_end(out, &child);
        return 0;
    }
    /* Lua's table order changes from run to run (string hashes are seeded);
     * fields go out sorted so the same rules give the same bytes. */
    size_t n_keys = 0, cap = 16;
    char **keys = malloc(cap * sizeof *keys);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        char numkey[24];
        const char *k;
        if (lua_type(L, -1) == LUA_TSTRING) {
            k = lua_tostring(L, -1);
        } else if (lua_isinteger(L, -1)) {
            snprintf(numkey, sizeof numkey, "%lld", (long long)lua_tointeger(L, -1));
            k = numkey;
        } else {
            sd_error_set(err, "%s: a key of type %s cannot become a field name", key,
                         luaL_typename(L, -1));
            lua_pop(L, 1);
            for (size_t i = 0; i < n_keys; i++)
                free(keys[i]);
            free(keys);
            return -1;
        }
        if (n_keys == cap)
            keys = realloc(keys, (cap *= 2) * sizeof *keys);
        keys[n_keys++] = strdup(k);
    }
    qsort(keys, n_keys, sizeof *keys, compare_keys);
    bson_append_document_begin(out, key, -1, &child);
    int rc = 0;
    for (size_t i = 0; i < n_keys; i++) {
        if (rc == 0) {
            char *end;
            long long num = strtoll(keys[i], &end, 10);
            lua_getfield(L, idx, keys[i]);
            if (lua_isnil(L, -1) && *end == '\0') {
                lua_pop(L, 1);
                lua_rawgeti(L, idx, num);
            }
            rc = append_depth(L, -1, &child, keys[i], depth + 1, err);
            lua_pop(L, 1);
            if (rc)
                sd_error_prefix(err, "%s", key);
        }
        free(keys[i]);
    }
    free(keys);
    if (rc)
        return -1;
    bson_append_document_end(out, &child);
    return 0;
}

static int append_depth(lua_State *L, int idx, bson_t *out, const char *key, int depth,
                        struct sd_error *err)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return 0;
    case LUA_TBOOLEAN:
        bson_append_bool(out, key, -1, lua_toboolean(L, idx));
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            bson_append_int64(out, key, -1, lua_tointeger(L, idx));
        else
            bson_append_double(out, key, -1, lua_tonumber(L, idx));
        return 0;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (!bson_utf8_validate(s, len, false))
            return sd_error_set(err, "%s: string is not valid UTF-8", key);
        bson_append_utf8(out, key, -1, s, (int)len);
        return 0;
    }
    case LUA_TTABLE:
        return append_table(L, idx, out, key, depth, err);
    default:
        return sd_error_set(err, "%s: a %s cannot leave the rules (only tables, strings, "
                                 "numbers and booleans)",
                            key, luaL_typename(L, idx));
    }
}

int marshal_append(lua_State *L, int idx, bson_t *out, const char *key, struct sd_error *err)
{
    return append_depth(L, idx, out, key, 0, err);
}
