/* pattern_harness.h — Lua's own matcher and ours side by side in one state
 * ("lua" and "ours" tables), and a Lua harness whose compare(fn, ...) runs
 * both and describes any difference (results, captures passed to replacement
 * functions, error messages). Shared by tests/unit/test_pattern.c and
 * tests/fuzz/fuzz_pattern.c (the differential fuzz target). */
#ifndef SD_TESTS_PATTERN_HARNESS_H
#define SD_TESTS_PATTERN_HARNESS_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "rules/pattern.h"

static struct rules_deadline no_deadline;

static lua_State *two_matchers(struct rules_deadline *d)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "string");
    lua_createtable(L, 0, 4);
    static const char *const names[] = {"find", "match", "gmatch", "gsub"};
    for (int i = 0; i < 4; i++) {
        lua_getfield(L, -2, names[i]);
        lua_setfield(L, -2, names[i]);
    }
    lua_setglobal(L, "lua");
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    pattern_install(L, -1, d);
    lua_setglobal(L, "ours");
    return L;
}

/* The harness: compare(fn, ...) returns nil when both agree, else a
 * description; check(cases) fails on the first disagreement. */
static const char harness[] =
    "local function show(v)\n"
    "  local t = type(v)\n"
    "  if t == 'number' then return math.type(v) .. ':' .. tostring(v) end\n"
    "  if t == 'string' then return string.format('%q', v) end\n"
    "  return t .. ':' .. tostring(v)\n"
    "end\n"
    "local function norm(msg) return (tostring(msg):gsub(\"to '[^']*'\", 'to F')) end\n"
    "local function run(lib, fn, args)\n"
    "  local log = {}\n"
    "  local a = table.pack(table.unpack(args, 1, args.n))\n"
    "  if fn == 'gsub' and a[3] == 'FN' then\n"
    "    a[3] = function(...) local c = table.pack(...); local s = {}\n"
    "      for i = 1, c.n do s[#s + 1] = show(c[i]) end\n"
    "      log[#log + 1] = table.concat(s, ',')\n"
    "      local k = c[1]; if k == 'x' then return false end\n"
    "      if type(k) == 'number' then return k * 10 end\n"
    "      return '<' .. tostring(k) .. '>' end\n"
    "  elseif fn == 'gsub' and a[3] == 'TABLE' then\n"
    "    a[3] = { a = 'A', b = false, ab = 'AB', [1] = 'one', [3] = 3.5 }\n"
    "  end\n"
    "  local r\n"
    "  if fn == 'gmatch' then\n"
    "    r = table.pack(pcall(function()\n"
    "      local out, n = {}, 0\n"
    "      for x, y, z in lib.gmatch(table.unpack(a, 1, a.n)) do\n"
    "        out[#out + 1] = show(x) .. '|' .. show(y) .. '|' .. show(z); n = n + 1\n"
    "        if n > 200 then break end\n"
    "      end\n"
    "      return table.concat(out, ' ')\n"
    "    end))\n"
    "  else\n"
    "    r = table.pack(pcall(lib[fn], table.unpack(a, 1, a.n)))\n"
    "  end\n"
    "  local s = {}\n"
    "  for i = 1, r.n do s[#s + 1] = (i == 2 and not r[1]) and norm(r[i]) or show(r[i]) end\n"
    "  return table.concat(s, ', ') .. ' calls: ' .. table.concat(log, ' ; ')\n"
    "end\n"
    "function compare(fn, ...)\n"
    "  local args = table.pack(...)\n"
    "  local want, got = run(lua, fn, args), run(ours, fn, args)\n"
    "  if want ~= got then\n"
    "    local s = {}\n"
    "    for i = 1, args.n do s[#s + 1] = show(args[i]) end\n"
    "    return fn .. '(' .. table.concat(s, ', ') .. '):\\n  lua:  ' .. want .. '\\n  ours: ' .. got\n"
    "  end\n"
    "end\n"
    "return true\n";

#endif
