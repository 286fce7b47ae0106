#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

#include "rules/pattern.h"

/* src/rules/pattern.c against Lua's own string.find/match/gmatch/gsub: a
 * state with the standard library keeps Lua's functions in `lua` and ours in
 * `ours`; a Lua harness runs every case through both and compares results,
 * captures passed to replacement functions, and error messages. */

#include "pattern_harness.h"

static void run_lua(lua_State *L, const char *code)
{
    if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
}

static void check(lua_State *L, const char *cases)
{
    run_lua(L, harness);
    lua_pop(L, 1);
    run_lua(L, cases);
    if (!lua_isnil(L, -1))
        fail_msg("%s", lua_tostring(L, -1));
    lua_pop(L, 1);
}

/* Every pattern feature against a set of subjects, each with several start
 * positions (negative, zero, past the end). */
static void test_cross_product(void **state)
{
    (void)state;
    lua_State *L = two_matchers(&no_deadline);
    check(L,
          "local patterns = {\n"
          "  '', 'a', 'b', 'ab', '^a', '^b', 'a$', '$', '^$', '^', 'a$b', '$a', '.', '..', '^.', '.$',\n"
          "  'a*', 'a+', 'a-', 'a?', 'a*b', 'a+b', 'a-b', 'a?b', '.-b', '.*b', '.-', '.*', '.+', 'x*',\n"
          "  '(a)', '(a)(b)', '()', '()a()', '(a*(.)%w(%s*))', '((a)(b))', '(a)%1', '(.)%1', '%((%w+)%)',\n"
          "  '%a+', '%A+', '%d+', '%D', '%l', '%u+', '%s', '%S+', '%w+', '%W', '%x+', '%p', '%c', '%g+',\n"
          "  '%.', '%%', '%-', '%]', '[a]', '[ab]+', '[^a]+', '[a-c]+', '[^a-c]', '[%d%s]+', '[%a_][%w_]*',\n"
          "  '[]]', '[^]]+', '[a-]', '[-a]+', '[%]]', '[%-]', '[a%-z]+', '[z-a]', '[.]', '[%%]',\n"
          "  '%bab', '%b()', '%b((', '%f[%w]%w+', '%f[%W]', '%f[%a]', '%f[^%z]', '%f[%z]',\n"
          "  '(h)(e)(l)(l)(o)', 'a.-a', '(.-)%s*$', '^%s*(.-)%s*$', '{{%s*(.-)%s*}}', '[^%.]+',\n"
          "  '^(%w+):(.+)$', '(%d+)-(%d+)', '%s*', '[%s%p]*', 'b*', '(b*)', 'a?\?', 'a**', 'a++', '.-$',\n"
          "}\n"
          "local subjects = { '', 'a', 'b', 'ab', 'ba', 'aab', 'abab', 'banana', ' a b ',\n"
          "  'hello world', 'x(a(b)c)y', '{{ conversation.subject }} and {{x}}', 'A1_b2 c3',\n"
          "  'tab\\tnew\\nline', ']]a[[', 'a-b', '10-20 30-40', 'key:value:more', '\\0a\\0b',\n"
          "  '%d', 'caf\\195\\169', 'a.b.c', '  padded  ', 'aaa' }\n"
          "local inits = { false, 1, 2, 3, 0, -1, -2, -100, 5, 100 }\n"
          "for _, p in ipairs(patterns) do\n"
          "  for _, s in ipairs(subjects) do\n"
          "    for _, i in ipairs(inits) do\n"
          "      for _, fn in ipairs({ 'find', 'match', 'gmatch' }) do\n"
          "        local e\n"
          "        if i then e = compare(fn, s, p, i) else e = compare(fn, s, p) end\n"
          "        if e then return e end\n"
          "      end\n"
          "    end\n"
          "    local e = compare('find', s, p, 1, true) or compare('find', s, p, -2, true)\n"
          "      or compare('gsub', s, p, '[%0]') or compare('gsub', s, p, '%1-%%', 2)\n"
          "      or compare('gsub', s, p, 'FN') or compare('gsub', s, p, 'TABLE')\n"
          "      or compare('gsub', s, p, 7) or compare('gsub', s, p, '<%0>', 0)\n"
          "      or compare('gsub', s, p, '', -1) or compare('gsub', s, p, '%2')\n"
          "    if e then return e end\n"
          "  end\n"
          "end\n");
    lua_close(L);
}

/* Errors and argument handling: both raise the same message. */
static void test_errors_and_arguments(void **state)
{
    (void)state;
    lua_State *L = two_matchers(&no_deadline);
    check(L,
          "local bad = { '%', 'a%', '[a', '[^', '[]', '[^]', '(', 'a)', '(()', '%1', '(a)%2', '(a%1)',\n"
          "  '%b', '%ba', '%f', '%fa', '%f[a', string.rep('(a)', 33), string.rep('a?', 300),\n"
          "  '[%', '%g%' }\n"
          "for _, p in ipairs(bad) do\n"
          "  for _, fn in ipairs({ 'find', 'match', 'gmatch', 'gsub' }) do\n"
          "    local e = compare(fn, 'aaa', p, fn == 'gsub' and 'x' or nil)\n"
          "    if e then return e end\n"
          "  end\n"
          "end\n"
          "local calls = {\n"
          "  { 'find' }, { 'find', 'a' }, { 'find', 'a', {} }, { 'find', 'abc', 'b', 'x' },\n"
          "  { 'find', 123, 2 }, { 'find', 'a1', 1 }, { 'match', 12.5, '%.' }, { 'gmatch', nil, 'a' },\n"
          "  { 'gsub', 'abc', 'b' }, { 'gsub', 'abc', 'b', true }, { 'gsub', 'abc', 'b', 'x', 'y' },\n"
          "  { 'gsub', 'abc', '(b)', '%9' }, { 'gsub', 'abc', 'b', '%' }, { 'gsub', 'abc', 'b', '%x' },\n"
          "  { 'gsub', 'abc', '()', '%1' }, { 'gsub', 'abc', '(b)()', '%2%1' },\n"
          "  { 'gsub', 'abc', '(b', '%1' }, { 'gsub', 'abc', 'b', 'x', 1.5 },\n"
          "  { 'gsub', 'a b c', '%w', 'FN', 2 }, { 'gsub', 'aXa', '%u', 'TABLE' },\n"
          "  { 'gsub', 'abc', '%w', function() return {} end },\n"
          "  { 'gsub', 'abc', '%w', { a = true } }, { 'gsub', 'abc', '(%w)', { a = 1 } },\n"
          "  { 'gsub', 'hello', '', '-' }, { 'gsub', 'hello', 'l*', '-' }, { 'gsub', '', '', 'x' },\n"
          "  { 'gsub', 'abc', '^', '>' }, { 'gsub', 'abc', '$', '<' }, { 'gsub', 'abc', '^$', '!' },\n"
          "  { 'match', 'abc', '(', 1 }, { 'find', 'abc', '', 4 }, { 'find', 'abc', '', 5 },\n"
          "  { 'match', 'abc', '()', 4 }, { 'match', 'abc', '()', 5 }, { 'gmatch', 'abc', '', 4 },\n"
          "  { 'gmatch', 'abc', '', 9 }, { 'gmatch', 'abc', '.', -1 }, { 'gmatch', 'a,b,,c', '([^,]*)' },\n"
          "  { 'gmatch', 'abc', '^a' }, { 'gmatch', '^abc', '^a' }, { 'find', 'a^b', '^', 1, true },\n"
          "  { 'find', 'a.b', '.', 1, true }, { 'find', 'a.b', '.', 1, false }, { 'find', 'x', '', -9 },\n"
          "  { 'find', 'abc', 'c', math.mininteger }, { 'find', 'abc', 'a', math.maxinteger },\n"
          "  { 'match', '\\255\\128x', '[\\128-\\255]+' }, { 'match', 'a\\0b', '%z' },\n"
          "  { 'match', 'a\\0b', 'a%zb' }, { 'find', 'a\\0b.', '\\0b.' }, { 'find', 'a\\0b.', '\\0b%.' },\n"
          "}\n"
          "for _, c in ipairs(calls) do\n"
          "  local e = compare(table.unpack(c, 1, 5))\n"
          "  if e then return e end\n"
          "end\n");
    lua_close(L);
}

/* Random short patterns from the language's pieces over random subjects,
 * with a fixed seed: what the hand-written cases did not think of. */
static void test_random_patterns(void **state)
{
    (void)state;
    lua_State *L = two_matchers(&no_deadline);
    check(L,
          "math.randomseed(20261129)\n"
          "local pieces = { 'a', 'b', '.', '%a', '%d', '%s', '[ab]', '[^a]', '[a-c]', '%bab', '%f[a]',\n"
          "  '(', ')', '()', '%1', '*', '+', '-', '?', '^', '$', '%%', '%.', '[%d%s]', 'c', '%W' }\n"
          "local chars = { 'a', 'b', 'c', ' ', '1', '.', '%', '(', ')' }\n"
          "for n = 1, 6000 do\n"
          "  local p, s = {}, {}\n"
          "  for i = 1, math.random(1, 6) do p[i] = pieces[math.random(#pieces)] end\n"
          "  for i = 1, math.random(0, 10) do s[i] = chars[math.random(#chars)] end\n"
          "  p, s = table.concat(p), table.concat(s)\n"
          "  local init = math.random(-4, 6)\n"
          "  local e = compare('find', s, p, init) or compare('match', s, p) or compare('gmatch', s, p)\n"
          "    or compare('gsub', s, p, '<%0>') or compare('gsub', s, p, 'FN')\n"
          "  if e then return e end\n"
          "end\n");
    lua_close(L);
}

/* The pathological patterns of issue #15 stop at the deadline with the
 * message every caller recognises, and the state stays usable. */
static void test_deadline_stops_backtracking(void **state)
{
    (void)state;
    struct rules_deadline d;
    lua_State *L = two_matchers(&d);
    static const char *const cases[] = {
        "return ours.find(string.rep('a', 20000), '.-.-.-.-b')",
        "return ours.gsub(string.rep('a', 20000), '.-.-.-.-b', 'x')",
        "return ours.match(string.rep('a', 20000), '(.*)(.*)(.*)(.*)b')",
        "for x in ours.gmatch(string.rep('a', 20000), 'a*a*a*a*b') do end",
        "return ours.find(string.rep('(', 20000), '%b()%b()%b()x')",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rules_deadline_arm(&d, 50);
        assert_int_equal(luaL_loadstring(L, cases[i]), LUA_OK);
        assert_int_not_equal(lua_pcall(L, 0, 0, 0), LUA_OK);
        const char *msg = lua_tostring(L, -1);
        if (!strstr(msg, "exceeded its time budget of 50 ms"))
            fail_msg("%s: %s", cases[i], msg);
        assert_true(d.tripped);
        lua_pop(L, 1);
    }
    /* Without a deadline, normal work is unaffected. */
    rules_deadline_arm(&d, 0);
    run_lua(L, "return ours.gsub(string.rep('ab', 5000), '(a)(b)', '%2%1')");
    assert_int_equal(lua_rawlen(L, -1), 10000);
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cross_product),
        cmocka_unit_test(test_errors_and_arguments),
        cmocka_unit_test(test_random_patterns),
        cmocka_unit_test(test_deadline_stops_backtracking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
