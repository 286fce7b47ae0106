#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules/marshal.h"


/* Round trips go BSON → marshal_push_document → marshal_append(key "result")
 * → BSON, on a bare Lua state (no sandbox: marshalling does not need one). */

static int setup_state(void **state)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return -1;
    luaL_openlibs(L);
    *state = L;
    return 0;
}

static int teardown_state(void **state)
{
    lua_close(*state);
    return 0;
}

/* Pushes doc, marshals it back as "result" and checks the Lua stack is as it
 * was. Returns marshal_append's status. */
static int round_trip(lua_State *L, const bson_t *doc, bool as_array, bson_t *out,
                      struct sd_error *err)
{
    int top = lua_gettop(L);
    marshal_push_document(L, doc, as_array);
    assert_int_equal(lua_gettop(L), top + 1);
    assert_int_equal(lua_type(L, -1), LUA_TTABLE);
    int rc = marshal_append(L, -1, out, "result", NULL, err);
    assert_int_equal(lua_gettop(L), top + 1);
    lua_settop(L, top);
    return rc;
}

/* Runs `return <expr>` and marshals the value as "result"; the error, if
 * any, lands in err. */
static int marshal_lua(lua_State *L, const char *code, bson_t *out, struct sd_error *err)
{
    int top = lua_gettop(L);
    if (luaL_dostring(L, code) != LUA_OK)
        fail_msg("lua: %s", lua_tostring(L, -1));
    assert_int_equal(lua_gettop(L), top + 1);
    int rc = marshal_append(L, -1, out, "result", NULL, err);
    assert_int_equal(lua_gettop(L), top + 1);
    lua_settop(L, top);
    return rc;
}

static void find(const bson_t *doc, const char *dotted, bson_iter_t *it)
{
    bson_iter_t root;
    if (!bson_iter_init(&root, doc) || !bson_iter_find_descendant(&root, dotted, it)) {
        char *json = bson_as_relaxed_extended_json(doc, NULL);
        fail_msg("no field %s in %s", dotted, json);
    }
}

static bool has(const bson_t *doc, const char *dotted)
{
    bson_iter_t root, it;
    return bson_iter_init(&root, doc) && bson_iter_find_descendant(&root, dotted, &it);
}

static void expect_contains(const char *msg, const char *want)
{
    if (!strstr(msg, want))
        fail_msg("error \"%s\" does not contain \"%s\"", msg, want);
}

static void expect_int64(const bson_t *doc, const char *dotted, int64_t want)
{
    bson_iter_t it;
    find(doc, dotted, &it);
    if (!BSON_ITER_HOLDS_INT64(&it))
        fail_msg("%s: type 0x%02x, want int64", dotted, (int)bson_iter_type(&it));
    if (bson_iter_int64(&it) != want)
        fail_msg("%s: %lld, want %lld", dotted, (long long)bson_iter_int64(&it), (long long)want);
}

static void expect_utf8(const bson_t *doc, const char *dotted, const char *want)
{
    bson_iter_t it;
    find(doc, dotted, &it);
    if (!BSON_ITER_HOLDS_UTF8(&it))
        fail_msg("%s: type 0x%02x, want string", dotted, (int)bson_iter_type(&it));
    uint32_t len;
    const char *s = bson_iter_utf8(&it, &len);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(s, want, len);
}

static void expect_type(const bson_t *doc, const char *dotted, bson_type_t type)
{
    bson_iter_t it;
    find(doc, dotted, &it);
    if (bson_iter_type(&it) != type)
        fail_msg("%s: type 0x%02x, want 0x%02x", dotted, (int)bson_iter_type(&it), (int)type);
}

static uint32_t count_keys(const bson_t *doc, const char *dotted)
{
    bson_iter_t it, child;
    find(doc, dotted, &it);
    assert_true(BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it));
    assert_true(bson_iter_recurse(&it, &child));
    uint32_t n = 0;
    while (bson_iter_next(&child))
        n++;
    return n;
}

/* ---- BSON → Lua → BSON ---------------------------------------------------- */

static void test_nested_documents_and_arrays(void **state)
{
    lua_State *L = *state;
    bson_t *in = BCON_NEW("a", "{", "b", "{", "c", BCON_INT64(7), "}", "}",
                          "list", "[", BCON_INT64(1), BCON_UTF8("two"), BCON_INT64(3), "]",
                          "docs", "[", "{", "x", BCON_INT64(1), "}", "{", "x", BCON_INT64(2),
                          "tags", "[", BCON_UTF8("p"), "]", "}", "]",
                          "grid", "[", "[", BCON_INT64(1), BCON_INT64(2), "]", "[",
                          BCON_INT64(3), "]", "]");
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(round_trip(L, in, false, &out, &err), 0);

    expect_type(&out, "result", BSON_TYPE_DOCUMENT);
    expect_type(&out, "result.a", BSON_TYPE_DOCUMENT);
    expect_type(&out, "result.a.b", BSON_TYPE_DOCUMENT);
    expect_int64(&out, "result.a.b.c", 7);

    expect_type(&out, "result.list", BSON_TYPE_ARRAY);
    assert_int_equal(count_keys(&out, "result.list"), 3);
    expect_int64(&out, "result.list.0", 1);
    expect_utf8(&out, "result.list.1", "two");
    expect_int64(&out, "result.list.2", 3);

    expect_type(&out, "result.docs", BSON_TYPE_ARRAY);
    assert_int_equal(count_keys(&out, "result.docs"), 2);
    expect_type(&out, "result.docs.0", BSON_TYPE_DOCUMENT);
    expect_int64(&out, "result.docs.0.x", 1);
    expect_int64(&out, "result.docs.1.x", 2);
    expect_type(&out, "result.docs.1.tags", BSON_TYPE_ARRAY);
    expect_utf8(&out, "result.docs.1.tags.0", "p");

    expect_type(&out, "result.grid", BSON_TYPE_ARRAY);
    expect_type(&out, "result.grid.0", BSON_TYPE_ARRAY);
    expect_int64(&out, "result.grid.0.1", 2);
    expect_int64(&out, "result.grid.1.0", 3);
    assert_int_equal(count_keys(&out, "result"), 4);

    bson_destroy(&out);
    bson_destroy(in);
}

/* marshal.h: "an empty table is an empty document" — there is no telling an
 * empty array from an empty document in Lua. */
static void test_empty_array_becomes_empty_document(void **state)
{
    lua_State *L = *state;
    bson_t *in = BCON_NEW("empty", "[", "]", "nothing", "{", "}");
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(round_trip(L, in, false, &out, &err), 0);
    expect_type(&out, "result.empty", BSON_TYPE_DOCUMENT);
    assert_int_equal(count_keys(&out, "result.empty"), 0);
    expect_type(&out, "result.nothing", BSON_TYPE_DOCUMENT);
    assert_int_equal(count_keys(&out, "result.nothing"), 0);
    bson_destroy(&out);
    bson_destroy(in);

    /* A top-level empty array too. */
    bson_t empty = BSON_INITIALIZER;
    bson_init(&out);
    assert_int_equal(round_trip(L, &empty, true, &out, &err), 0);
    expect_type(&out, "result", BSON_TYPE_DOCUMENT);
    assert_int_equal(count_keys(&out, "result"), 0);
    bson_destroy(&out);
}

/* A top-level array (as_array) comes back an array; Lua sees it 1-based. */
static void test_top_level_array(void **state)
{
    lua_State *L = *state;
    bson_t *in = BCON_NEW("0", BCON_UTF8("a"), "1", BCON_UTF8("b"));
    marshal_push_document(L, in, true);
    assert_int_equal(luaL_len(L, -1), 2);
    lua_rawgeti(L, -1, 1);
    assert_string_equal(lua_tostring(L, -1), "a");
    lua_pop(L, 1);
    lua_rawgeti(L, -1, 2);
    assert_string_equal(lua_tostring(L, -1), "b");
    lua_pop(L, 2);

    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(round_trip(L, in, true, &out, &err), 0);
    expect_type(&out, "result", BSON_TYPE_ARRAY);
    expect_utf8(&out, "result.0", "a");
    expect_utf8(&out, "result.1", "b");
    bson_destroy(&out);
    bson_destroy(in);
}

static void test_scalars(void **state)
{
    lua_State *L = *state;
    const int64_t big = (INT64_C(1) << 53) + 1; /* not representable as a double */
    bson_oid_t oid;
    bson_oid_init_from_string(&oid, "65f0a1b2c3d4e5f60718293a");
    bson_t in = BSON_INITIALIZER;
    BSON_APPEND_INT32(&in, "i32", -123456);
    BSON_APPEND_INT32(&in, "i32max", INT32_MAX);
    BSON_APPEND_INT64(&in, "big", big);
    BSON_APPEND_INT64(&in, "min", INT64_MIN);
    BSON_APPEND_DOUBLE(&in, "dbl", 3.25);
    BSON_APPEND_DOUBLE(&in, "whole", 2.0);
    BSON_APPEND_BOOL(&in, "yes", true);
    BSON_APPEND_BOOL(&in, "no", false);
    BSON_APPEND_UTF8(&in, "text", "Grüße aus Köln — 東京 🎉");
    BSON_APPEND_UTF8(&in, "blank", "");
    BSON_APPEND_DATE_TIME(&in, "when", INT64_C(1772469000000));
    BSON_APPEND_DATE_TIME(&in, "before_epoch", INT64_C(-86400000));
    BSON_APPEND_OID(&in, "id", &oid);
    BSON_APPEND_NULL(&in, "gone");
    BSON_APPEND_UNDEFINED(&in, "undef");

    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(round_trip(L, &in, false, &out, &err), 0);

    expect_int64(&out, "result.i32", -123456); /* int32 comes back int64 */
    expect_int64(&out, "result.i32max", INT32_MAX);
    expect_int64(&out, "result.big", big);
    expect_int64(&out, "result.min", INT64_MIN);

    bson_iter_t it;
    find(&out, "result.dbl", &it);
    assert_true(BSON_ITER_HOLDS_DOUBLE(&it));
    assert_true(bson_iter_double(&it) == 3.25);
    find(&out, "result.whole", &it); /* a float stays a float in Lua 5.4 */
    assert_true(BSON_ITER_HOLDS_DOUBLE(&it));
    assert_true(bson_iter_double(&it) == 2.0);

    find(&out, "result.yes", &it);
    assert_true(BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it));
    find(&out, "result.no", &it);
    assert_true(BSON_ITER_HOLDS_BOOL(&it) && !bson_iter_bool(&it));

    expect_utf8(&out, "result.text", "Grüße aus Köln — 東京 🎉");
    expect_utf8(&out, "result.blank", "");
    expect_int64(&out, "result.when", INT64_C(1772469000000)); /* date → ms */
    expect_int64(&out, "result.before_epoch", INT64_C(-86400000));
    expect_utf8(&out, "result.id", "65f0a1b2c3d4e5f60718293a");

    assert_false(has(&out, "result.gone")); /* null → absent */
    assert_false(has(&out, "result.undef"));
    assert_int_equal(count_keys(&out, "result"), 13);

    bson_destroy(&out);
    bson_destroy(&in);
}

/* What Lua sees, checked on the Lua side. */
static void test_lua_view(void **state)
{
    lua_State *L = *state;
    bson_oid_t oid;
    bson_oid_init_from_string(&oid, "00FF00ff00ff00ff00ff00FF");
    bson_t in = BSON_INITIALIZER;
    BSON_APPEND_INT32(&in, "i32", 5);
    BSON_APPEND_DOUBLE(&in, "dbl", 5.0);
    BSON_APPEND_DATE_TIME(&in, "when", 1000);
    BSON_APPEND_OID(&in, "id", &oid);
    BSON_APPEND_NULL(&in, "gone");
    bson_t *arr = BCON_NEW("0", BCON_INT32(10), "1", BCON_INT32(20));
    BSON_APPEND_ARRAY(&in, "arr", arr);

    marshal_push_document(L, &in, false);
    lua_setglobal(L, "doc");
    const char *check =
        "assert(math.type(doc.i32) == 'integer', 'i32 ' .. math.type(doc.i32))\n"
        "assert(math.type(doc.dbl) == 'float', 'dbl')\n"
        "assert(math.type(doc.when) == 'integer' and doc.when == 1000, 'when')\n"
        "assert(doc.id == '00ff00ff00ff00ff00ff00ff', 'id ' .. tostring(doc.id))\n"
        "assert(doc.gone == nil, 'gone')\n"
        "local seen = 0 for k in pairs(doc) do seen = seen + 1 end\n"
        "assert(seen == 5, 'keys ' .. seen)\n"
        "assert(#doc.arr == 2 and doc.arr[1] == 10 and doc.arr[2] == 20, 'arr')\n"
        "assert(doc.arr[0] == nil, 'arr[0]')\n";
    if (luaL_dostring(L, check) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    lua_pushnil(L);
    lua_setglobal(L, "doc");
    bson_destroy(arr);
    bson_destroy(&in);
}

/* decimal128 → string; binary and other types → nil. */
static void test_other_types(void **state)
{
    lua_State *L = *state;
    bson_decimal128_t dec;
    assert_true(bson_decimal128_from_string("12.50", &dec));
    bson_t in = BSON_INITIALIZER;
    BSON_APPEND_DECIMAL128(&in, "price", &dec);
    BSON_APPEND_BINARY(&in, "blob", BSON_SUBTYPE_BINARY, (const uint8_t *)"\x01\x02", 2);
    BSON_APPEND_REGEX(&in, "re", "^a", "i");
    BSON_APPEND_INT32(&in, "kept", 1);
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(round_trip(L, &in, false, &out, &err), 0);
    expect_utf8(&out, "result.price", "12.50");
    assert_false(has(&out, "result.blob"));
    assert_false(has(&out, "result.re"));
    expect_int64(&out, "result.kept", 1);
    bson_destroy(&out);
    bson_destroy(&in);
}

/* A null inside an array leaves a hole: the table is no longer a sequence, so
 * it comes back as a document keyed by the 1-based Lua indices. Pinned here
 * so a change is deliberate. */
static void test_null_in_array_leaves_a_hole(void **state)
{
    lua_State *L = *state;
    bson_t *in = BCON_NEW("arr", "[", BCON_INT64(1), BCON_NULL, BCON_INT64(3), "]");
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(round_trip(L, in, false, &out, &err), 0);
    expect_type(&out, "result.arr", BSON_TYPE_DOCUMENT);
    expect_int64(&out, "result.arr.1", 1);
    expect_int64(&out, "result.arr.3", 3);
    assert_int_equal(count_keys(&out, "result.arr"), 2);
    bson_destroy(&out);
    bson_destroy(in);
}

/* ---- Lua → BSON ------------------------------------------------------------ */

static void test_lua_values(void **state)
{
    lua_State *L = *state;
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(marshal_lua(L,
                                 "return { n = 42, f = 0.5, big = math.maxinteger, s = 'ü',"
                                 " t = true, seq = {'a', 'b'}, sparse = {[1] = 'x', [3] = 'y'},"
                                 " mixed = {'a', k = 'v'}, zero = {[0] = 'z'}, neg = {[-1] = 1},"
                                 " nested = {{{}}} }",
                                 &out, &err),
                     0);
    expect_int64(&out, "result.n", 42);
    expect_type(&out, "result.f", BSON_TYPE_DOUBLE);
    expect_int64(&out, "result.big", INT64_MAX);
    expect_utf8(&out, "result.s", "ü");
    expect_type(&out, "result.t", BSON_TYPE_BOOL);
    expect_type(&out, "result.seq", BSON_TYPE_ARRAY);
    expect_utf8(&out, "result.seq.1", "b");
    expect_type(&out, "result.sparse", BSON_TYPE_DOCUMENT); /* keys not exactly 1..n */
    expect_utf8(&out, "result.sparse.1", "x");
    expect_utf8(&out, "result.sparse.3", "y");
    expect_type(&out, "result.mixed", BSON_TYPE_DOCUMENT);
    expect_utf8(&out, "result.mixed.1", "a");
    expect_utf8(&out, "result.mixed.k", "v");
    expect_type(&out, "result.zero", BSON_TYPE_DOCUMENT);
    expect_utf8(&out, "result.zero.0", "z");
    expect_type(&out, "result.neg", BSON_TYPE_DOCUMENT);
    expect_int64(&out, "result.neg.-1", 1);
    expect_type(&out, "result.nested", BSON_TYPE_ARRAY);
    expect_type(&out, "result.nested.0", BSON_TYPE_ARRAY);
    expect_type(&out, "result.nested.0.0", BSON_TYPE_DOCUMENT);
    bson_destroy(&out);

    /* nil → absent; scalars at the top level. */
    bson_init(&out);
    assert_int_equal(marshal_lua(L, "return nil", &out, &err), 0);
    assert_true(bson_empty(&out));
    assert_int_equal(marshal_lua(L, "return 'plain'", &out, &err), 0);
    expect_utf8(&out, "result", "plain");
    bson_destroy(&out);
}

/* A table nested exactly 64 levels below the top is still fine. */
static void test_depth_limit_boundary(void **state)
{
    lua_State *L = *state;
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_true(lua_checkstack(L, 200)); /* the marshaller itself does not grow the stack */
    assert_int_equal(marshal_lua(L,
                                 "local t = {v = 1} for i = 1, 64 do t = {t} end return t",
                                 &out, &err),
                     0);
    bson_destroy(&out);
    bson_init(&out);
    assert_int_equal(marshal_lua(L,
                                 "local t = {v = 1} for i = 1, 65 do t = {t} end return t",
                                 &out, &err),
                     -1);
    expect_contains(err.message, "deeper than 64 levels");
    bson_destroy(&out);
}

static void test_error_function_names_key(void **state)
{
    lua_State *L = *state;
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(marshal_lua(L, "return { outer = { callback = function() end } }", &out, &err),
                     -1);
    expect_contains(err.message, "callback");
    expect_contains(err.message, "function");
    expect_contains(err.message, "outer");
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(marshal_lua(L, "return { list = { 1, print } }", &out, &err), -1);
    expect_contains(err.message, "list");
    expect_contains(err.message, "function");
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(marshal_lua(L, "return { co = coroutine.create(print) }", &out, &err), -1);
    expect_contains(err.message, "co: a thread");
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(marshal_lua(L, "return { f = io.stdout }", &out, &err), -1);
    expect_contains(err.message, "f: a userdata");
    bson_destroy(&out);
}

static void test_error_non_utf8_string(void **state)
{
    lua_State *L = *state;
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(marshal_lua(L, "return { name = 'ok', raw = 'a\\xff\\xfeb' }", &out, &err), -1);
    expect_contains(err.message, "raw");
    expect_contains(err.message, "not valid UTF-8");
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(marshal_lua(L, "return { 'x', 'a\\0b' }", &out, &err), -1);
    expect_contains(err.message, "not valid UTF-8"); /* embedded NUL is rejected too */
    bson_destroy(&out);
}

static void test_error_cycle(void **state)
{
    lua_State *L = *state;
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_true(lua_checkstack(L, 200));
    assert_int_equal(marshal_lua(L, "local t = { a = 1 } t.self = t return t", &out, &err), -1);
    expect_contains(err.message, "deeper than 64 levels");
    expect_contains(err.message, "self");
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(marshal_lua(L, "local t = {} t[1] = t return t", &out, &err), -1);
    expect_contains(err.message, "deeper than 64 levels");
    bson_destroy(&out);
}

static void test_error_boolean_key(void **state)
{
    lua_State *L = *state;
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    assert_int_equal(marshal_lua(L, "return { flags = { [true] = 'yes' } }", &out, &err), -1);
    expect_contains(err.message, "flags");
    expect_contains(err.message, "boolean");
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(marshal_lua(L, "return { [1.5] = 'x' }", &out, &err), -1);
    expect_contains(err.message, "number");
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(marshal_lua(L, "return { [{}] = 'x' }", &out, &err), -1);
    expect_contains(err.message, "table");
    bson_destroy(&out);
}

/* ---- Lua stack discipline ------------------------------------------------- */

/* An allocator that pads every block with a guard zone and checks it when the
 * block is resized or freed: catches writes past the end of the Lua stack,
 * which marshalling must grow with lua_checkstack before deep recursion. */
#define GUARD 8192
static int guard_broken;

static void *guard_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    if (ptr) {
        const unsigned char *g = (const unsigned char *)ptr + osize;
        for (size_t i = 0; i < GUARD; i++)
            if (g[i] != 0xA5) {
                guard_broken = 1;
                break;
            }
    }
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    unsigned char *p = realloc(ptr, nsize + GUARD);
    if (p)
        memset(p + nsize, 0xA5, GUARD);
    return p;
}

/* BSON → Lua: a document nested 60 levels (libbson and MongoDB allow 100). */
static void test_deep_bson_stays_in_lua_stack(void **state)
{
    (void)state;
    guard_broken = 0;
    lua_State *L = lua_newstate(guard_alloc, NULL);
    assert_non_null(L);
    bson_t *docs[61];
    docs[60] = BCON_NEW("leaf", BCON_INT32(1));
    for (int i = 59; i >= 0; i--) {
        docs[i] = bson_new();
        BSON_APPEND_DOCUMENT(docs[i], "d", docs[i + 1]);
    }
    marshal_push_document(L, docs[0], false);
    lua_close(L);
    for (int i = 0; i <= 60; i++)
        bson_destroy(docs[i]);
    if (guard_broken)
        fail_msg("marshal_push_document wrote past the end of the Lua stack (no lua_checkstack)");
}

/* Lua → BSON: a cycle runs to the 64-level limit, which must not take more
 * Lua stack than there is. */
static void test_cycle_stays_in_lua_stack(void **state)
{
    (void)state;
    guard_broken = 0;
    lua_State *L = lua_newstate(guard_alloc, NULL);
    assert_non_null(L);
    luaL_openlibs(L);
    bson_t out = BSON_INITIALIZER;
    struct sd_error err = {{0}};
    int rc = marshal_lua(L, "local t = {} t.self = t return t", &out, &err);
    bson_destroy(&out);
    lua_close(L);
    assert_int_equal(rc, -1);
    if (guard_broken)
        fail_msg("marshal_append wrote past the end of the Lua stack (no lua_checkstack)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nested_documents_and_arrays, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_empty_array_becomes_empty_document, setup_state,
                                        teardown_state),
        cmocka_unit_test_setup_teardown(test_top_level_array, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_scalars, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_lua_view, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_other_types, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_null_in_array_leaves_a_hole, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_lua_values, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_depth_limit_boundary, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_error_function_names_key, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_error_non_utf8_string, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_error_cycle, setup_state, teardown_state),
        cmocka_unit_test_setup_teardown(test_error_boolean_key, setup_state, teardown_state),
        cmocka_unit_test(test_deep_bson_stays_in_lua_stack),
        cmocka_unit_test(test_cycle_stays_in_lua_stack),
    };
    return cmocka_run_group_tests_name("marshal", tests, NULL, NULL);
}
