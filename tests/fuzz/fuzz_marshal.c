/* BSON → Lua → BSON: any bytes that libbson accepts as a document (or as
 * extended JSON) go into a Lua table and back; what comes back must be a
 * valid document. Then the input as a Lua expression, run in a plain state,
 * whose value (metatables, cycles, functions included) is converted raw with
 * the caps of a rule result: an error or a document, never a crash. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rules/deadline.h"
#include "rules/marshal.h"

static void budget(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, budget, LUA_MASKCOUNT, 1);
    luaL_error(L, "instruction budget");
}

static int push_doc(lua_State *L)
{
    marshal_push_document(L, lua_touserdata(L, 1), false);
    return 1;
}

/* The value on top, converted as a rule's result is: an error or valid BSON. */
static void convert_top(lua_State *L)
{
    bson_t out = BSON_INITIALIZER;
    struct sd_error err;
    struct rules_deadline d;
    rules_deadline_arm(&d, 2000);
    struct marshal_limits lim = {.max_nodes = 200000, .deadline = &d};
    if (marshal_append(L, -1, &out, "result", &lim, &err) == 0 &&
        !bson_validate(&out, BSON_VALIDATE_NONE, NULL))
        abort();
    bson_destroy(&out);
}

static void round_trip(lua_State *L, const bson_t *doc)
{
    int top = lua_gettop(L);
    lua_pushcfunction(L, push_doc);
    lua_pushlightuserdata(L, (void *)doc);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK)
        convert_top(L);
    lua_settop(L, top);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    bson_t doc;
    if (bson_init_static(&doc, data, size) && bson_validate(&doc, BSON_VALIDATE_NONE, NULL))
        round_trip(L, &doc);
    bson_error_t berr;
    bson_t *json = bson_new_from_json(data, (ssize_t)size, &berr);
    if (json) {
        round_trip(L, json);
        bson_destroy(json);
    }
    /* Lua values, metatables included: short inputs run as a chunk under a
     * count hook (an endless loop ends the run, not the fuzzer); whatever it
     * returns is converted like a rule's result. */
    if (size < 512 && luaL_loadbuffer(L, (const char *)data, size, "=fuzz") == LUA_OK) {
        lua_sethook(L, budget, LUA_MASKCOUNT, 100000);
        if (lua_pcall(L, 0, 1, 0) == LUA_OK) {
            lua_sethook(L, NULL, 0, 0);
            convert_top(L);
        }
    }
    lua_close(L);
    return 0;
}
