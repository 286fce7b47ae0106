/* bench_patterns — our pattern matcher (src/rules/pattern.c) against Lua's
 * own string.find/match/gmatch/gsub, in the same run: the shipped
 * templates.lua rendering every notification type, then the pattern calls it
 * makes, one by one. Run by `scripts/bench patterns`; not a test.
 *
 *   bench_patterns RULES_DIR [ROUNDS]
 *
 * Each round times both variants back to back (the order alternates), and the
 * medians are reported with their ratio. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rules/pattern.h"

static struct rules_deadline deadline;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A state with templates.lua loaded as T; ours = use pattern.c. */
static lua_State *state(const char *dir, int ours)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (ours) {
        lua_getglobal(L, "string");
        pattern_install(L, -1, &deadline);
        lua_pop(L, 1);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/templates.lua", dir);
    if (luaL_loadfile(L, path) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "bench_patterns: %s\n", lua_tostring(L, -1));
        exit(2);
    }
    lua_setglobal(L, "T");
    return L;
}

static const char workloads[] =
    "local ctx = { conversation = { subject = 'Fish & <chips> for 50 seats', priority = 'high',\n"
    "    status = 'open', contact = { name = 'Lena Example' }, last_customer_message_at = 1772460000000 },\n"
    "  room = { name = 'Berlin' }, recipient = { name = 'Anna' },\n"
    "  event = { reason = 'snooze ended', due = 1772469000000, target = 'first_response', level = 2,\n"
    "    count = 3, severity = 'warning', state = 'raised', check = 'twilio.balance',\n"
    "    channel = 'sms-berlin', message = 'Balance is low' } }\n"
    "local types = {}\n"
    "for k in pairs(T.templates) do types[#types + 1] = k end\n"
    "table.sort(types)\n"
    "local text = T.templates['ticket.unsnoozed'].text\n"
    "local W = {}\n"
    "W.render = function(n) for i = 1, n do for _, t in ipairs(types) do T.render(t, ctx) end end end\n"
    "W.gsub_fill = function(n) for i = 1, n do text:gsub('{{%s*(.-)%s*}}', 'x') end end\n"
    "W.gmatch_path = function(n) for i = 1, n do for p in ('conversation.contact.name'):gmatch('[^%.]+') do end end end\n"
    "W.match_when = function(n) for i = 1, n do ('when:event.due'):match('^(%w+):(.+)$') end end\n"
    "W.escape = function(n) for i = 1, n do T.escape('Fish & <chips> \"quoted\"') end end\n"
    "W.find_plain = function(n) for i = 1, n do text:find('queue', 1, true) end end\n"
    "return W\n";

static const char *const names[] = {"render", "gsub_fill", "gmatch_path", "match_when", "escape",
                                    "find_plain"};
static const int iterations[] = {2000, 20000, 50000, 50000, 50000, 100000};
#define N_WORK 6

static double run(lua_State *L, int w)
{
    lua_getglobal(L, "W");
    lua_getfield(L, -1, names[w]);
    lua_pushinteger(L, iterations[w]);
    double t0 = now_s();
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "bench_patterns: %s: %s\n", names[w], lua_tostring(L, -1));
        exit(2);
    }
    double t = now_s() - t0;
    lua_pop(L, 1);
    return t;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_patterns RULES_DIR [ROUNDS]\n");
        return 2;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    if (rounds < 1 || rounds > 1000)
        rounds = 7;
    /* A deadline far away, read as in production (every 4096 steps). */
    rules_deadline_arm(&deadline, 600000);
    lua_State *S[2] = {state(argv[1], 0), state(argv[1], 1)};
    for (int v = 0; v < 2; v++) {
        if (luaL_loadstring(S[v], workloads) != LUA_OK || lua_pcall(S[v], 0, 1, 0) != LUA_OK) {
            fprintf(stderr, "bench_patterns: %s\n", lua_tostring(S[v], -1));
            return 2;
        }
        lua_setglobal(S[v], "W");
    }
    printf("%-12s %10s %12s %12s %8s\n", "workload", "loops", "lua (ms)", "ours (ms)", "ratio");
    for (int w = 0; w < N_WORK; w++) {
        double t[2][1000];
        run(S[0], w); /* warm-up */
        run(S[1], w);
        for (int r = 0; r < rounds; r++) {
            int first = r % 2;
            t[first][r] = run(S[first], w);
            t[!first][r] = run(S[!first], w);
        }
        qsort(t[0], (size_t)rounds, sizeof(double), by_value);
        qsort(t[1], (size_t)rounds, sizeof(double), by_value);
        double lua = t[0][rounds / 2], ours = t[1][rounds / 2];
        printf("%-12s %10d %12.1f %12.1f %7.2fx\n", names[w],
               iterations[w], lua * 1e3, ours * 1e3, ours / lua);
    }
    lua_close(S[0]);
    lua_close(S[1]);
    return 0;
}
