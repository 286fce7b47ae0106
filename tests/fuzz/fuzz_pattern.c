/* Differential: our pattern matcher (src/rules/pattern.c) against Lua's own
 * lstrlib on the same call — same results, same captures, same errors.
 * Input: byte 0 picks find/match/gmatch/gsub (and plain find), byte 1 the
 * start position (-8..7), then subject '\0' pattern '\0' replacement.
 * Lua's matcher is unbounded, so inputs are kept small (subject ≤ 64 bytes,
 * pattern ≤ 24, at most 4 quantifiers): enough for every feature, and every
 * call of both ends in a bounded time. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/pattern_harness.h"

static lua_State *L;

static const char *part(const char **p, const char *end, size_t *len)
{
    const char *start = *p;
    const char *z = memchr(start, '\0', (size_t)(end - start));
    *len = (size_t)((z ? z : end) - start);
    *p = z ? z + 1 : end;
    return start;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L) {
        L = two_matchers(&no_deadline);
        if (luaL_loadstring(L, harness) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK)
            abort();
    }
    if (size < 2)
        return 0;
    static const char *const fns[] = {"find", "match", "gmatch", "gsub", "find"};
    int which = data[0] % 5;
    int init = (int)(data[1] % 16) - 8;
    const char *p = (const char *)data + 2, *end = (const char *)data + size;
    size_t ls, lp, lr;
    const char *s = part(&p, end, &ls), *pat = part(&p, end, &lp), *rep = part(&p, end, &lr);
    if (ls > 64 || lp > 24 || lr > 16)
        return 0;
    int quantifiers = 0;
    for (size_t i = 0; i < lp; i++)
        quantifiers += pat[i] == '*' || pat[i] == '+' || pat[i] == '-' || pat[i] == '?';
    if (quantifiers > 4)
        return 0;
    int top = lua_gettop(L);
    lua_getglobal(L, "compare");
    lua_pushstring(L, fns[which]);
    lua_pushlstring(L, s, ls);
    lua_pushlstring(L, pat, lp);
    int nargs = 3;
    if (which == 3) {
        /* a replacement string, or the harness's function / table */
        if (lr == 1 && rep[0] == 'F')
            lua_pushliteral(L, "FN");
        else if (lr == 1 && rep[0] == 'T')
            lua_pushliteral(L, "TABLE");
        else
            lua_pushlstring(L, rep, lr);
        lua_pushinteger(L, (init & 3) + 1); /* max replacements */
        nargs += 2;
    } else {
        lua_pushinteger(L, init);
        nargs++;
        if (which == 4) {
            lua_pushboolean(L, 1); /* plain */
            nargs++;
        }
    }
    if (lua_pcall(L, nargs, 1, 0) != LUA_OK) {
        fprintf(stderr, "harness error: %s\n", lua_tostring(L, -1));
        abort();
    }
    if (!lua_isnil(L, -1)) {
        fprintf(stderr, "our matcher differs from Lua's:\n%s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, top);
    return 0;
}
