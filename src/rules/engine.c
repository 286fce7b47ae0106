#include "rules/engine.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/config.h"
#include "core/seam.h"
#include "core/stall.h"
#include "rules/deadline.h"
#include "rules/marshal.h"
#include "rules/pattern.h"

#define DEFAULT_INSTRUCTIONS 20000000LL
#define DEFAULT_MEMORY (64u << 20)
#define MAX_MOVE 16777216LL /* table.move: elements in one call */
#define HOOK_EVERY 1000
#define MAX_FILE_BYTES (1u << 20)
#define MAX_SHIFT MAX_MOVE  /* table.insert/remove: elements moved in one call */
#define MAX_RESULT_VALUES 200000 /* a rule result's values, keys included */

const char *const rules_files[] = {"templates", "notify", "sla", "health", "retry", "queue"};
const int rules_file_count = 6;

/* What each file must provide: "f:" a function, "t:" a table. */
static const char *const required[][3] = {
    {"f:render", NULL, NULL},     /* templates */
    {"f:recipients", NULL, NULL}, /* notify */
    {"f:policy", NULL, NULL},     /* sla */
    {"t:thresholds", NULL, NULL}, /* health */
    {"f:decide", NULL, NULL},     /* retry */
    {"f:score", NULL, NULL},      /* queue */
};

struct rules {
    lua_State *L;
    pthread_mutex_t mu;
    size_t mem_used, mem_limit;
    long long budget, remaining;
    int timeout_ms;
    struct rules_deadline deadline; /* of the call running now */
    bool failed_running;            /* rules_load: a rule failed while running */
    char version[13];
    /* Where an error outside any lua_pcall lands (see on_panic): set by
     * rules_call and rules_get around their work; NULL: none. */
    jmp_buf *recover;
};

/* The single place rule memory comes from: returning NULL over the cap makes
 * Lua raise a memory error inside the rule instead of growing the process. */
static void *rules_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct rules *r = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        r->mem_used -= old;
        return NULL;
    }
    if (nsize > old && r->mem_used + (nsize - old) > r->mem_limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        r->mem_used = r->mem_used - old + nsize;
    return p;
}

static struct rules *rules_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* Counts instructions and reads the clock; once the budget is spent or the
 * deadline passed it fires on every instruction, so a rule that catches the
 * error with pcall gets it again at once instead of running on (the Redis
 * approach, reference/build.md §5). Time spent inside C functions is not
 * seen here: pattern.c checks the same deadline while it matches. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct rules *r = rules_of(L);
    r->remaining -= HOOK_EVERY;
    if (r->remaining <= 0) {
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "instruction budget of %I exceeded (an endless loop?)",
                   (lua_Integer)r->budget);
    }
    if (rules_deadline_passed(&r->deadline)) {
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
        rules_deadline_raise(L, &r->deadline);
    }
}

/* Budget and deadline start again: one per rule call and per self-test. */
static void arm_call(struct rules *r)
{
    r->remaining = r->budget;
    rules_deadline_arm(&r->deadline, r->timeout_ms);
    lua_sethook(r->L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* Message handler: adds the innermost rules-file location when the message
 * lacks one (errors raised inside C functions such as string.rep). */
static int on_error(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = luaL_typename(L, 1);
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        lua_getinfo(L, "Sl", &ar);
        if (ar.source[0] == '@' && ar.currentline > 0) {
            if (!strstr(msg, ar.short_src))
                lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, msg);
            else
                lua_pushstring(L, msg);
            return 1;
        }
    }
    lua_pushstring(L, msg);
    return 1;
}

static const char *cap_text(const struct rules *r, char *buf, size_t size)
{
    if (r->mem_limit >= (1u << 20))
        snprintf(buf, size, "%zu MiB", r->mem_limit >> 20);
    else
        snprintf(buf, size, "%zu KiB", r->mem_limit >> 10);
    return buf;
}

/* Runs the function below nargs arguments under budget; leaves one result. */
static int protected_call(struct rules *r, int nargs, struct sd_error *err)
{
    int base = lua_gettop(r->L) - nargs;
    lua_pushcfunction(r->L, on_error);
    lua_insert(r->L, base);
    arm_call(r);
    int status = lua_pcall(r->L, nargs, 1, base);
    lua_sethook(r->L, NULL, 0, 0);
    lua_remove(r->L, base);
    if (status == LUA_OK)
        return 0;
    char cap[32];
    if (status == LUA_ERRMEM)
        sd_error_set(err, "memory cap of %s exceeded", cap_text(r, cap, sizeof cap));
    else
        sd_error_set(err, "%s", lua_tostring(r->L, -1) ? lua_tostring(r->L, -1) : "error");
    lua_pop(r->L, 1);
    lua_gc(r->L, LUA_GCCOLLECT);
    return -1;
}

static int rawget_gc(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_pushliteral(L, "__gc");
    return lua_rawget(L, idx);
}

static const char xpcall_lua[] =
    "local pcall, pack, unpack = pcall, table.pack, table.unpack\n"
    "return function(f, h, ...)\n"
    "  local r = pack(pcall(f, ...))\n"
    "  if r[1] then return unpack(r, 1, r.n) end\n"
    "  return false, h(r[2])\n"
    "end\n";

/* Finalizers run with hooks off (also in lua_close on a reload): no deadline
 * could stop one. Read raw: lua_getfield would run the metatable's own
 * __index, which can rawset __gc and answer nil. Lua decides whether a table
 * is finalized when setmetatable is called, so a __gc added later is inert. */
static int safe_setmetatable(lua_State *L)
{
    if (lua_istable(L, 2) && rawget_gc(L, 2) != LUA_TNIL)
        return luaL_error(L, "__gc metamethods are not allowed in rules");
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* string.rep of an empty string and separator loops n times in C producing
 * nothing (string.rep("", 1e15) runs for days); anything else is bounded by
 * the memory cap, which refuses the result's buffer up front. */
static int safe_rep(lua_State *L)
{
    size_t l, lsep = 0;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* table.move copies element by element in C; over a range of nils (no memory
 * used) it could run for days. More than MAX_MOVE elements cannot fit under
 * the memory cap anyway. */
static int safe_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    bool overflow = e >= f && f <= 0 && e >= LUA_MAXINTEGER + f;
    if (e >= f && (overflow || e - f >= MAX_MOVE))
        return luaL_error(L, "table.move: more than %I elements", (lua_Integer)MAX_MOVE);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* table.insert and table.remove shift elements one by one in C from #t, and
 * a __len can claim 2^62 elements: assigning nil allocates nothing, so
 * neither the memory cap nor the count hook would ever stop them. These are
 * Lua 5.4's own (ltablib.c), with the shift bounded and the deadline read. */
static void shift_step(lua_State *L, lua_Integer done)
{
    if ((done & 1023) == 0) {
        struct rules *r = rules_of(L);
        if (rules_deadline_passed(&r->deadline))
            rules_deadline_raise(L, &r->deadline);
    }
}

static lua_Integer table_len(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TTABLE) {
        /* ltablib's checktab also admits values whose metatable has the
         * fields; rules get plain tables. */
        luaL_checktype(L, 1, LUA_TTABLE);
    }
    return luaL_len(L, 1);
}

static int safe_insert(lua_State *L)
{
    lua_Integer e = table_len(L);
    e = (lua_Integer)((lua_Unsigned)e + 1u); /* first empty element */
    lua_Integer pos;
    switch (lua_gettop(L)) {
    case 2:
        pos = e;
        break;
    case 3: {
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        if (e > pos && (lua_Unsigned)e - (lua_Unsigned)pos > MAX_SHIFT)
            return luaL_error(L, "table.insert: more than %I elements to move",
                              (lua_Integer)MAX_SHIFT);
        for (lua_Integer i = e; i > pos; i--) {
            shift_step(L, e - i);
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    }
    default:
        return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int safe_remove(lua_State *L)
{
    lua_Integer size = table_len(L);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2,
                      "position out of bounds");
    if (size > pos && (lua_Unsigned)size - (lua_Unsigned)pos > MAX_SHIFT)
        return luaL_error(L, "table.remove: more than %I elements to move",
                          (lua_Integer)MAX_SHIFT);
    lua_geti(L, 1, pos);
    for (; pos < size; pos++) {
        shift_step(L, pos);
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

/* Replaces lib[name] by a closure of fn over the original. */
static void wrap(lua_State *L, const char *lib, const char *name, lua_CFunction fn)
{
    lua_getglobal(L, lib);
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

static int open_sandbox_p(lua_State *L);
static void open_sandbox(lua_State *L)
{
    lua_pushcfunction(L, open_sandbox_p);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK)
        lua_pop(L, 1);
}

static int open_sandbox_p(lua_State *L)
{
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},     {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_OSLIBNAME, luaopen_os}};
    for (size_t i = 0; i < sizeof libs / sizeof *libs; i++) {
        luaL_requiref(L, libs[i].name, libs[i].func, 1);
        lua_pop(L, 1);
    }
    /* print would write into dry-run's JSON on stdout. */
    static const char *const removed[] = {"dofile", "loadfile", "load",  "require",
                                          "collectgarbage", "print", NULL};
    for (int i = 0; removed[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    lua_getglobal(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump"); /* bytecode out is as unwanted as bytecode in */
    /* Lua's matcher cannot be interrupted: ours reads the deadline. */
    pattern_install(L, -1, &rules_of(L)->deadline);
    lua_pop(L, 1);
    wrap(L, LUA_STRLIBNAME, "rep", safe_rep);
    wrap(L, LUA_TABLIBNAME, "move", safe_move);
    lua_getglobal(L, LUA_TABLIBNAME);
    lua_pushcfunction(L, safe_insert);
    lua_setfield(L, -2, "insert");
    lua_pushcfunction(L, safe_remove);
    lua_setfield(L, -2, "remove");
    lua_pop(L, 1);
    /* os: time, date and clock only. */
    lua_getglobal(L, LUA_OSLIBNAME);
    lua_createtable(L, 0, 3);
    static const char *const kept[] = {"time", "date", "clock"};
    for (int i = 0; i < 3; i++) {
        lua_getfield(L, -2, kept[i]);
        lua_setfield(L, -2, kept[i]);
    }
    lua_setglobal(L, LUA_OSLIBNAME);
    lua_pop(L, 1);
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, safe_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    luaL_loadbuffer(L, xpcall_lua, sizeof xpcall_lua - 1, "=xpcall");
    lua_call(L, 0, 1);
    lua_setglobal(L, "xpcall");
    return 0;
}

static char *read_file(const char *path, size_t *len, struct sd_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        sd_error_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MAX_FILE_BYTES + 1);
    *len = fread(buf, 1, MAX_FILE_BYTES + 1, f);
    fclose(f);
    if (*len > MAX_FILE_BYTES) {
        free(buf);
        sd_error_set(err, "%s: larger than %u bytes", path, MAX_FILE_BYTES);
        return NULL;
    }
    buf[*len] = '\0';
    return buf;
}

/* Trusted helper, loaded by us (not a rule): runs a module's self-tests.
 * A test is {name=, fn=, args={...}, expect=<value>}; tables in expect are
 * compared on the keys they name, strings in expect_match are Lua patterns. */
static const char self_test_lua[] =
    "local M, file, arm, cur = ...\n"
    "local function same(want, got, path)\n"
    "  if type(want) ~= 'table' then\n"
    "    if want ~= got then return path .. ': expected ' .. tostring(want) .. ', got ' .. tostring(got) end\n"
    "    return nil\n"
    "  end\n"
    "  if type(got) ~= 'table' then return path .. ': expected a table, got ' .. tostring(got) end\n"
    "  for k, v in pairs(want) do\n"
    "    local e = same(v, got[k], path .. '.' .. tostring(k)); if e then return e end\n"
    "  end\n"
    "end\n"
    "for i, t in ipairs(M.tests or {}) do\n"
    "  local name = t.name or ('#' .. i)\n"
    "  local fn = M[t.fn]\n"
    "  if type(fn) ~= 'function' then error(file .. ': self-test ' .. name .. ': no function ' .. tostring(t.fn), 0) end\n"
    "  arm(); cur.name = name; cur.fn = tostring(t.fn); cur.running = true\n"
    "  local got = fn(table.unpack(t.args or {}))\n"
    "  cur.running = false\n"
    "  local e = nil\n"
    "  if t.expect ~= nil then e = same(t.expect, got, 'result') end\n"
    "  if not e and t.expect_match then\n"
    "    for k, pat in pairs(t.expect_match) do\n"
    "      local v = type(got) == 'table' and got[k] or nil\n"
    "      if type(v) ~= 'string' or not v:find(pat) then e = 'result.' .. k .. ': ' .. tostring(v) .. ' does not match ' .. pat; break end\n"
    "    end\n"
    "  end\n"
    "  if e then error(file .. ': self-test ' .. name .. ' failed: ' .. e, 0) end\n"
    "end\n";

/* Given to the self-test runner: each test gets its own deadline (the
 * instruction budget stays the file's). */
static int arm_self_test(lua_State *L)
{
    struct rules *r = rules_of(L);
    rules_deadline_arm(&r->deadline, r->timeout_ms);
    return 0;
}

/* A self-test whose function raised (or ran out of time or memory): the
 * message says which test and which function, after the file. */
static void name_self_test(lua_State *L, const char *path, struct sd_error *err)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "supportd.self_test");
    if (lua_getfield(L, -1, "running") == LUA_TBOOLEAN && lua_toboolean(L, -1)) {
        lua_getfield(L, -2, "name");
        lua_getfield(L, -3, "fn");
        const char *name = lua_tostring(L, -2), *fn = lua_tostring(L, -1);
        sd_error_prefix(err, "%s: self-test %s calling %s", path, name ? name : "?",
                        fn ? fn : "?");
        lua_pop(L, 2);
    } else if (!strstr(err->message, path)) {
        sd_error_prefix(err, "%s", path);
    }
    lua_pop(L, 2);
}

static int load_module(struct rules *r, const char *dir, int index, EVP_MD_CTX *md,
                       struct sd_error *err)
{
    const char *name = rules_files[index];
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.lua", dir, name);
    size_t len;
    char *src = read_file(path, &len, err);
    if (!src)
        return -1;
    EVP_DigestUpdate(md, name, strlen(name) + 1);
    EVP_DigestUpdate(md, src, len);

    lua_State *L = r->L;
    char chunkname[1100];
    snprintf(chunkname, sizeof chunkname, "@%s", path);
    int status = luaL_loadbufferx(L, src, len, chunkname, "t");
    free(src);
    if (status != LUA_OK) {
        sd_error_set(err, "%s", lua_tostring(L, -1));
        if (!strstr(err->message, path))
            sd_error_prefix(err, "%s", path);
        lua_pop(L, 1);
        return -1;
    }
    /* Own environment per file, reading through to the sandbox globals. */
    lua_createtable(L, 0, 8);
    lua_createtable(L, 0, 1);
    lua_pushglobaltable(L);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setupvalue(L, -2, 1);
    if (protected_call(r, 0, err)) {
        if (!strstr(err->message, path)) /* memory errors carry no location */
            sd_error_prefix(err, "%s", path);
        r->failed_running = true;
        return -1;
    }
    if (!lua_istable(L, -1)) {
        sd_error_set(err, "%s: must return a table (got %s)", path, luaL_typename(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    for (int i = 0; i < 3 && required[index][i]; i++) {
        const char *want = required[index][i];
        lua_getfield(L, -1, want + 2);
        bool ok = want[0] == 'f' ? lua_isfunction(L, -1) : lua_istable(L, -1);
        lua_pop(L, 1);
        if (!ok) {
            lua_pop(L, 1);
            return sd_error_set(err, "%s: the returned table has no %s `%s`", path,
                                want[0] == 'f' ? "function" : "table", want + 2);
        }
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "supportd.modules");
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
    /* Self-tests run with the module table as argument. */
    if (luaL_loadbufferx(L, self_test_lua, sizeof self_test_lua - 1, "=self-test", "t") != LUA_OK) {
        lua_pop(L, 2);
        return sd_error_set(err, "%s: cannot run the self-tests (memory cap too small?)", path);
    }
    lua_insert(L, -2);
    lua_pushstring(L, path);
    lua_getfield(L, LUA_REGISTRYINDEX, "supportd.arm");
    lua_getfield(L, LUA_REGISTRYINDEX, "supportd.self_test");
    if (protected_call(r, 4, err)) {
        name_self_test(L, path, err);
        r->failed_running = true;
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

static int init_registry(lua_State *L)
{
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "supportd.modules");
    lua_pushcfunction(L, arm_self_test);
    lua_setfield(L, LUA_REGISTRYINDEX, "supportd.arm");
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "supportd.self_test");
    return 0;
}

/* An error outside any lua_pcall would make Lua abort the process. Every
 * entry point runs under lua_pcall, so this is the net under that: the call
 * in progress fails (rules_call/rules_get set `recover`); with none in
 * progress there is nowhere to go, and Lua aborts as it would have. */
static int on_panic(lua_State *L)
{
    struct rules *r = rules_of(L);
    if (r->recover)
        longjmp(*r->recover, 1);
    return 0;
}

struct rules *rules_load(const char *dir, const struct rules_limits *limits, struct sd_error *err)
{
    return rules_load_checked(dir, limits, NULL, err);
}

struct rules *rules_load_checked(const char *dir, const struct rules_limits *limits,
                                 bool *failed_running, struct sd_error *err)
{
    if (failed_running)
        *failed_running = false;
    struct rules *r = calloc(1, sizeof *r);
    r->mem_limit = limits && limits->memory_bytes ? limits->memory_bytes : DEFAULT_MEMORY;
    r->budget = limits && limits->instructions ? limits->instructions : DEFAULT_INSTRUCTIONS;
    r->timeout_ms = limits && limits->timeout_ms ? limits->timeout_ms : CONFIG_RULES_TIMEOUT_MS;
    r->L = lua_newstate(rules_alloc, r);
    if (!r->L) {
        free(r);
        sd_error_set(err, "%s: cannot create a Lua state", dir);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    lua_atpanic(r->L, on_panic);
    open_sandbox(r->L);
    lua_pushcfunction(r->L, init_registry);
    if (lua_pcall(r->L, 0, 0, 0) != LUA_OK) {
        rules_destroy(r);
        sd_error_set(err, "%s: memory cap too small", dir);
        return NULL;
    }

    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (int i = 0; i < rules_file_count; i++) {
        if (load_module(r, dir, i, md, err)) {
            if (failed_running)
                *failed_running = r->failed_running;
            EVP_MD_CTX_free(md);
            rules_destroy(r);
            return NULL;
        }
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_DigestFinal_ex(md, digest, &dlen);
    EVP_MD_CTX_free(md);
    for (int i = 0; i < 6; i++)
        snprintf(r->version + 2 * i, 3, "%02x", digest[i]);
    return r;
}

void rules_destroy(struct rules *r)
{
    if (!r)
        return;
    lua_close(r->L);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

const char *rules_version(const struct rules *r) { return r->version; }

/* Pushes modules[module][field], read raw: a module table's metatable
 * never runs outside a protected, budgeted call. Returns its Lua type. */
static int push_member(lua_State *L, const char *module, const char *field)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "supportd.modules");
    lua_getfield(L, -1, module);
    lua_remove(L, -2);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L);
        return LUA_TNIL;
    }
    lua_pushstring(L, field);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    return lua_type(L, -1);
}

/* Converts the value below the top (a rule's result) into ctx->out, under
 * lua_pcall and the call's deadline, with a cap on its size (marshal.h). */
struct convert {
    struct rules *r;
    bson_t *out;
    struct sd_error *err;
    int rc;
};

static int convert_p(lua_State *L)
{
    struct convert *c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    struct marshal_limits lim = {.max_nodes = MAX_RESULT_VALUES, .deadline = &c->r->deadline};
    c->rc = marshal_append(L, -1, c->out, "result", &lim, c->err);
    return 0;
}

static int convert_result(struct rules *r, bson_t *out, struct sd_error *err)
{
    lua_State *L = r->L;
    struct convert c = {r, out, err, -1};
    /* The conversion's own few Lua allocations (a long key pushed to look it
     * up) are not the rule's: the cap does not apply to them. */
    size_t cap = r->mem_limit;
    r->mem_limit = (size_t)-1;
    lua_pushvalue(L, -1);
    lua_pushcfunction(L, convert_p);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, &c);
    int st = lua_pcall(L, 2, 0, 0);
    r->mem_limit = cap;
    if (st != LUA_OK) {
        sd_error_set(err, "reading the result: %s",
                     lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        lua_pop(L, 1);
        return -1;
    }
    return c.rc;
}

static int push_args(lua_State *L)
{
    const bson_t *args = lua_touserdata(L, 1);
    lua_pop(L, 1);
    int nargs = 0;
    bson_iter_t it;
    if (args && bson_iter_init(&it, args)) {
        while (bson_iter_next(&it)) {
            luaL_checkstack(L, 2, "too many arguments");
            marshal_push_value(L, &it);
            nargs++;
        }
    }
    return nargs;
}

static _Thread_local struct rules_cpu thread_cpu;

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void rules_thread_cpu(struct rules_cpu *out) { *out = thread_cpu; }

static _Thread_local bson_t *trace_sink;
static _Thread_local uint32_t trace_n;

void rules_trace_to(bson_t *sink)
{
    trace_sink = sink;
    trace_n = 0;
}

/* JSON of a document cut to a readable length (on a UTF-8 boundary). */
static void append_abbrev(bson_t *to, const char *key, const bson_t *doc)
{
    char *json = doc ? bson_as_relaxed_extended_json(doc, NULL) : NULL;
    if (!json) {
        BSON_APPEND_NULL(to, key);
        return;
    }
    size_t len = strlen(json), max = 240;
    if (len > max) {
        while (max > 0 && ((unsigned char)json[max] & 0xC0) == 0x80)
            max--;
        memcpy(json + max, "…", sizeof "…");
    }
    BSON_APPEND_UTF8(to, key, json);
    bson_free(json);
}

static void trace_call(const char *module, const char *fn, const bson_t *args, const bson_t *out,
                       int rc, const struct sd_error *err, uint64_t wall_ns)
{
    char idx[16], file[96];
    const char *key;
    bson_uint32_to_string(trace_n++, &key, idx, sizeof idx);
    snprintf(file, sizeof file, "%s.lua", module);
    bson_t call;
    BSON_APPEND_DOCUMENT_BEGIN(trace_sink, key, &call);
    BSON_APPEND_UTF8(&call, "file", file);
    BSON_APPEND_UTF8(&call, "function", fn);
    append_abbrev(&call, "args", args);
    bson_iter_t it;
    if (rc == 0 && out && bson_iter_init_find(&it, out, "result")) {
        bson_t one = BSON_INITIALIZER;
        bson_append_iter(&one, "result", -1, &it);
        append_abbrev(&call, "result", &one);
        bson_destroy(&one);
    } else {
        BSON_APPEND_NULL(&call, "result");
    }
    BSON_APPEND_INT64(&call, "duration_us", (int64_t)(wall_ns / 1000));
    if (rc)
        BSON_APPEND_UTF8(&call, "error", err->message);
    bson_append_document_end(trace_sink, &call);
}

static uint64_t wall_ns_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int rules_call(struct rules *r, const char *module, const char *fn, const bson_t *args,
               bson_t *out, struct sd_error *err)
{
    uint64_t cpu0 = thread_cpu_ns(), wall0 = trace_sink ? wall_ns_now() : 0;
    /* Waiting for the mutex counts: a thread stuck behind a stuck call is
     * stuck too. */
    stall_enter();
    pthread_mutex_lock(&r->mu);
    seam_wait("rules_call");
    lua_State *L = r->L;
    int top = lua_gettop(L), rc = 0;
    jmp_buf recover;
    r->recover = &recover;
    if (setjmp(recover)) {
        rc = sd_error_set(err, "%s.lua: %s: error outside a protected call: %s", module, fn,
                          lua_tostring(L, -1) ? lua_tostring(L, -1) : "unknown");
        goto done;
    }
    if (push_member(L, module, fn) != LUA_TFUNCTION) {
        rc = sd_error_set(err, "%s.lua: no function %s", module, fn);
        goto done;
    }
    int before = lua_gettop(L);
    lua_pushcfunction(L, push_args);
    lua_pushlightuserdata(L, (void *)args);
    int st = lua_pcall(L, 1, LUA_MULTRET, 0);
    if (st != LUA_OK) {
        char cap[32];
        if (st == LUA_ERRMEM)
            rc = sd_error_set(err, "%s.%s: arguments exceed the memory cap of %s", module, fn,
                              cap_text(r, cap, sizeof cap));
        else
            rc = sd_error_set(err, "%s.%s: %s", module, fn, lua_tostring(L, -1));
        goto done;
    }
    int nargs = lua_gettop(L) - before;
    if (protected_call(r, nargs, err)) {
        rc = sd_error_prefix(err, "%s.%s", module, fn);
        /* A memory error carries no file:line (Lua calls no message handler
         * for it): name the file all the same. */
        if (!strstr(err->message, ".lua"))
            sd_error_prefix(err, "%s.lua", module);
        goto done;
    }
    if (convert_result(r, out, err))
        rc = sd_error_prefix(err, "%s.lua: %s returned", module, fn);
done:
    r->recover = NULL;
    lua_sethook(L, NULL, 0, 0);
    lua_settop(L, top);
    pthread_mutex_unlock(&r->mu);
    stall_leave();
    uint64_t spent = thread_cpu_ns() - cpu0;
    if (strcmp(module, "templates") == 0)
        thread_cpu.render_ns += spent;
    else
        thread_cpu.other_ns += spent;
    thread_cpu.calls++;
    if (trace_sink)
        trace_call(module, fn, args, out, rc, err, wall_ns_now() - wall0);
    return rc;
}

int rules_get(struct rules *r, const char *module, const char *field, bson_t *out,
              struct sd_error *err)
{
    pthread_mutex_lock(&r->mu);
    int top = lua_gettop(r->L), rc;
    jmp_buf recover;
    r->recover = &recover;
    if (setjmp(recover)) {
        rc = sd_error_set(err, "%s.lua: %s: error outside a protected call", module, field);
    } else {
        push_member(r->L, module, field);
        rules_deadline_arm(&r->deadline, r->timeout_ms);
        rc = convert_result(r, out, err);
        if (rc)
            sd_error_prefix(err, "%s.lua: %s", module, field);
    }
    r->recover = NULL;
    lua_settop(r->L, top);
    pthread_mutex_unlock(&r->mu);
    return rc;
}
