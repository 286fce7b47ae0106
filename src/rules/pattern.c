/* pattern.c — Lua 5.4 patterns with a deadline (see pattern.h).
 *
 * A backtracking matcher, written here from the language's definition in the
 * Lua 5.4 manual (§6.4.1) and checked against Lua's own functions by
 * tests/unit/test_pattern.c. Every attempt, expansion step and balance scan
 * counts as a step; every CHECK_EVERY steps the clock is read, and past the
 * deadline the call raises "exceeded its time budget". Limits match Lua's: 32
 * captures, a recursion depth of 200 ("pattern too complex"). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include "rules/pattern.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stddef.h>
#include <string.h>

#define MAX_CAPTURES 32
#define MAX_DEPTH 200
#define CHECK_EVERY 4096
#define CAP_OPEN (-1)     /* capture started, not closed yet */
#define CAP_POSITION (-2) /* "()" */
#define SPECIALS "^$*+?.([%-"

struct matcher {
    const char *src, *src_end; /* subject */
    const char *pat_end;
    lua_State *L;
    struct rules_deadline *d;
    int depth;  /* recursion left */
    int level;  /* captures open or closed */
    struct {
        const char *start;
        ptrdiff_t len; /* or CAP_OPEN / CAP_POSITION */
    } cap[MAX_CAPTURES];
};

static void step(struct matcher *m)
{
    if (++m->d->steps >= CHECK_EVERY) {
        m->d->steps = 0;
        if (rules_deadline_passed(m->d))
            rules_deadline_raise(m->L, m->d);
    }
}

/* %a, %d, ...: lower case is the class, upper case its complement; any other
 * character after % stands for itself. */
static int class_match(int c, int cl)
{
    int in;
    switch (tolower(cl)) {
    case 'a': in = isalpha(c); break;
    case 'c': in = iscntrl(c); break;
    case 'd': in = isdigit(c); break;
    case 'g': in = isgraph(c); break;
    case 'l': in = islower(c); break;
    case 'p': in = ispunct(c); break;
    case 's': in = isspace(c); break;
    case 'u': in = isupper(c); break;
    case 'w': in = isalnum(c); break;
    case 'x': in = isxdigit(c); break;
    case 'z': in = c == 0; break; /* deprecated in 5.2, still accepted by 5.4 */
    default: return cl == c;
    }
    return isupper(cl) ? !in : in != 0;
}

/* The end of the single-character class starting at p: "x", "%x" or "[...]".
 * The first character of a set (after an optional ^) is part of it, so "[]]"
 * is the set of "]". */
static const char *class_end(struct matcher *m, const char *p)
{
    char c = *p++;
    if (c == '%') {
        if (p >= m->pat_end)
            luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c == '[') {
        if (*p == '^')
            p++;
        do {
            if (p >= m->pat_end)
                luaL_error(m->L, "malformed pattern (missing ']')");
            c = *p++;
            if (c == '%' && p < m->pat_end)
                p++;
        } while (*p != ']');
        return p + 1;
    }
    return p;
}

/* c in the set [p .. close], close pointing at its ']'. */
static int set_match(int c, const char *p, const char *close)
{
    int want = 1;
    if (p[1] == '^') {
        want = 0;
        p++;
    }
    while (++p < close) {
        if (*p == '%') {
            p++;
            if (class_match(c, (unsigned char)*p))
                return want;
        } else if (p[1] == '-' && p + 2 < close) {
            p += 2;
            if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p)
                return want;
        } else if ((unsigned char)*p == c) {
            return want;
        }
    }
    return !want;
}

/* Does the subject character at s match the class [p, ep)? */
static int single_match(struct matcher *m, const char *s, const char *p, const char *ep)
{
    if (s >= m->src_end)
        return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.': return 1;
    case '%': return class_match(c, (unsigned char)p[1]);
    case '[': return set_match(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

static const char *do_match(struct matcher *m, const char *s, const char *p);

/* %bxy at p (pointing at x). */
static const char *match_balance(struct matcher *m, const char *s, const char *p)
{
    if (p >= m->pat_end - 1)
        luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != *p)
        return NULL;
    char open = p[0], close = p[1];
    int depth = 1;
    while (++s < m->src_end) {
        step(m);
        if (*s == close) {
            if (--depth == 0)
                return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* x* and x+: the longest run first, then shorter ones. */
static const char *max_expand(struct matcher *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t n = 0;
    while (single_match(m, s + n, p, ep)) {
        step(m);
        n++;
    }
    for (; n >= 0; n--) {
        const char *r = do_match(m, s + n, ep + 1);
        if (r)
            return r;
    }
    return NULL;
}

/* x-: the shortest run first. */
static const char *min_expand(struct matcher *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = do_match(m, s, ep + 1);
        if (r)
            return r;
        if (!single_match(m, s, p, ep))
            return NULL;
        s++;
    }
}

static const char *open_capture(struct matcher *m, const char *s, const char *p, ptrdiff_t what)
{
    if (m->level >= MAX_CAPTURES)
        luaL_error(m->L, "too many captures");
    m->cap[m->level].start = s;
    m->cap[m->level].len = what;
    m->level++;
    const char *r = do_match(m, s, p);
    if (!r)
        m->level--;
    return r;
}

static const char *close_capture(struct matcher *m, const char *s, const char *p)
{
    int l = m->level - 1;
    while (l >= 0 && m->cap[l].len != CAP_OPEN)
        l--;
    if (l < 0)
        luaL_error(m->L, "invalid pattern capture");
    m->cap[l].len = s - m->cap[l].start;
    const char *r = do_match(m, s, p);
    if (!r)
        m->cap[l].len = CAP_OPEN;
    return r;
}

/* %1 .. %9 in a pattern: the text of a closed capture again. */
static const char *back_reference(struct matcher *m, const char *s, int digit)
{
    int l = digit - '1';
    if (l < 0 || l >= m->level || m->cap[l].len == CAP_OPEN)
        luaL_error(m->L, "invalid capture index %%%d", l + 1);
    size_t len = (size_t)m->cap[l].len;
    if ((size_t)(m->src_end - s) >= len && memcmp(m->cap[l].start, s, len) == 0)
        return s + len;
    return NULL;
}

/* Matches pattern [p, pat_end) at s; returns the end of the match or NULL.
 * Single-character items without a quantifier loop here instead of
 * recursing, so the depth grows only with captures and quantifiers. */
static const char *do_match(struct matcher *m, const char *s, const char *p)
{
    if (m->depth-- == 0)
        luaL_error(m->L, "pattern too complex");
    step(m);
    while (s && p != m->pat_end) {
        /* A step per pattern item, not per call: an optional item that does
         * not match ("a?" a million times) moves on without a call. */
        step(m);
        switch (*p) {
        case '(':
            s = p + 1 < m->pat_end && p[1] == ')' ? open_capture(m, s, p + 2, CAP_POSITION)
                                                 : open_capture(m, s, p + 1, CAP_OPEN);
            goto out;
        case ')':
            s = close_capture(m, s, p + 1);
            goto out;
        case '$':
            if (p + 1 != m->pat_end)
                break; /* a literal $ */
            s = s == m->src_end ? s : NULL;
            goto out;
        case '%':
            if (p + 1 >= m->pat_end)
                break; /* class_end reports it */
            if (p[1] == 'b') {
                s = match_balance(m, s, p + 2);
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                p += 2;
                if (*p != '[')
                    luaL_error(m->L, "missing '[' after '%%f' in pattern");
                const char *ep = class_end(m, p);
                int before = s == m->src ? '\0' : (unsigned char)s[-1];
                int at = s < m->src_end ? (unsigned char)*s : '\0';
                if (set_match(before, p, ep - 1) || !set_match(at, p, ep - 1))
                    s = NULL;
                p = ep;
                continue;
            }
            if (isdigit((unsigned char)p[1])) {
                s = back_reference(m, s, (unsigned char)p[1]);
                p += 2;
                continue;
            }
            break;
        default:
            break;
        }
        /* A single-character class, maybe with a quantifier. */
        const char *ep = class_end(m, p);
        char q = ep < m->pat_end ? *ep : '\0';
        if (!single_match(m, s, p, ep)) {
            if (q == '*' || q == '?' || q == '-') {
                p = ep + 1; /* zero occurrences are fine */
                continue;
            }
            s = NULL;
            break;
        }
        switch (q) {
        case '?': {
            const char *r = do_match(m, s + 1, ep + 1);
            if (r) {
                s = r;
                goto out;
            }
            p = ep + 1;
            continue;
        }
        case '+':
            s = max_expand(m, s + 1, p, ep);
            goto out;
        case '*':
            s = max_expand(m, s, p, ep);
            goto out;
        case '-':
            s = min_expand(m, s, p, ep);
            goto out;
        default:
            s++;
            p = ep;
        }
    }
out:
    m->depth++;
    return s;
}

static void matcher_init(struct matcher *m, lua_State *L, const char *s, size_t ls,
                         const char *p, size_t lp)
{
    m->L = L;
    m->src = s;
    m->src_end = s + ls;
    m->pat_end = p + lp;
    m->d = lua_touserdata(L, lua_upvalueindex(1));
}

static void matcher_reset(struct matcher *m)
{
    m->level = 0;
    m->depth = MAX_DEPTH;
}

/* Pushes capture i (or the whole match [s, e) when there are none and i is
 * 0). */
static void push_capture(struct matcher *m, int i, const char *s, const char *e)
{
    if (i >= m->level) {
        if (i != 0)
            luaL_error(m->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(m->L, s, (size_t)(e - s));
        return;
    }
    ptrdiff_t len = m->cap[i].len;
    if (len == CAP_OPEN)
        luaL_error(m->L, "unfinished capture");
    if (len == CAP_POSITION)
        lua_pushinteger(m->L, (lua_Integer)(m->cap[i].start - m->src) + 1);
    else
        lua_pushlstring(m->L, m->cap[i].start, (size_t)len);
}

/* Pushes every capture, or the whole match when there is none and s is not
 * NULL; returns how many. */
static int push_captures(struct matcher *m, const char *s, const char *e)
{
    int n = m->level == 0 && s ? 1 : m->level;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(m, i, s, e);
    return n;
}

/* A 1-based start position, negative counting from the end, as 0-based. */
static size_t start_offset(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 0;
    return len + (size_t)pos;
}

static int has_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (p[i] && strchr(SPECIALS, p[i]))
            return 1;
    return 0;
}

static int find_or_match(lua_State *L, int find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        /* memmem is linear (two-way); a naive search is not. */
        const char *at = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
        if (at) {
            lua_pushinteger(L, (lua_Integer)(at - s) + 1);
            lua_pushinteger(L, (lua_Integer)(at - s) + (lua_Integer)lp);
            return 2;
        }
        luaL_pushfail(L);
        return 1;
    }
    struct matcher m;
    int anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    matcher_init(&m, L, s, ls, p, lp);
    const char *from = s + init;
    do {
        matcher_reset(&m);
        const char *e = do_match(&m, from, p);
        if (e) {
            if (!find)
                return push_captures(&m, from, e);
            lua_pushinteger(L, (lua_Integer)(from - s) + 1);
            lua_pushinteger(L, (lua_Integer)(e - s));
            return push_captures(&m, NULL, NULL) + 2;
        }
    } while (from++ < m.src_end && !anchor);
    luaL_pushfail(L);
    return 1;
}

static int sd_find(lua_State *L) { return find_or_match(L, 1); }
static int sd_match(lua_State *L) { return find_or_match(L, 0); }

/* gmatch's iterator state: offsets into the subject (upvalue 2). */
struct gmatch_state {
    size_t from;
    ptrdiff_t last_end; /* end of the previous match, -1 before the first */
};

static int gmatch_next(lua_State *L)
{
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(3), &lp);
    struct gmatch_state *g = lua_touserdata(L, lua_upvalueindex(4));
    struct matcher m;
    matcher_init(&m, L, s, ls, p, lp);
    for (const char *from = s + g->from; from <= m.src_end; from++) {
        matcher_reset(&m);
        const char *e = do_match(&m, from, p);
        /* An empty match right where the previous one ended is skipped. */
        if (e && (g->last_end < 0 || e != s + g->last_end)) {
            g->from = (size_t)(e - s);
            g->last_end = e - s;
            return push_captures(&m, from, e);
        }
    }
    g->from = ls + 1;
    return 0;
}

static int sd_gmatch(lua_State *L)
{
    size_t ls;
    luaL_checklstring(L, 1, &ls);
    luaL_checkstring(L, 2);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls)
        init = ls + 1;
    lua_settop(L, 2);
    struct gmatch_state *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->from = init;
    g->last_end = -1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1); /* deadline, s, p, state */
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* The replacement string of gsub: %0 the match, %1-%9 captures, %% a %. */
static void add_string(struct matcher *m, luaL_Buffer *b, const char *s, const char *e)
{
    size_t l;
    const char *r = lua_tolstring(m->L, 3, &l);
    const char *end = r + l;
    for (; r < end; r++) {
        const char *pct = memchr(r, '%', (size_t)(end - r));
        if (!pct) {
            luaL_addlstring(b, r, (size_t)(end - r));
            break;
        }
        luaL_addlstring(b, r, (size_t)(pct - r));
        r = pct + 1;
        if (*r == '%') {
            luaL_addchar(b, '%');
        } else if (*r == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit((unsigned char)*r)) {
            push_capture(m, *r - '1', s, e);
            luaL_tolstring(m->L, -1, NULL);
            lua_remove(m->L, -2);
            luaL_addvalue(b);
        } else {
            luaL_error(m->L, "invalid use of '%c' in replacement string", '%');
        }
    }
}

/* A function's or table's answer for the match [s, e): false or nil keep the
 * original text. */
static void add_lookup(struct matcher *m, luaL_Buffer *b, const char *s, const char *e,
                       int type)
{
    lua_State *L = m->L;
    if (type == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e);
        lua_call(L, n, 1);
    } else {
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return;
    }
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
}

static int sd_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int type = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L, type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION ||
                            type == LUA_TTABLE,
                     3, "string/function/table");
    int anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    struct matcher m;
    matcher_init(&m, L, s, ls, p, lp);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *from = s, *last_end = NULL;
    lua_Integer n = 0;
    while (n < max) {
        matcher_reset(&m);
        const char *e = do_match(&m, from, p);
        if (e && e != last_end) {
            n++;
            if (type == LUA_TFUNCTION || type == LUA_TTABLE)
                add_lookup(&m, &b, from, e, type);
            else
                add_string(&m, &b, from, e);
            from = last_end = e;
        } else if (from < m.src_end) {
            luaL_addchar(&b, *from++);
        } else {
            break;
        }
        if (anchor)
            break;
    }
    luaL_addlstring(&b, from, (size_t)(m.src_end - from));
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}

void pattern_install(lua_State *L, int table, struct rules_deadline *d)
{
    static const luaL_Reg fns[] = {
        {"find", sd_find}, {"match", sd_match}, {"gmatch", sd_gmatch}, {"gsub", sd_gsub}};
    table = lua_absindex(L, table);
    for (size_t i = 0; i < sizeof fns / sizeof *fns; i++) {
        lua_pushlightuserdata(L, d);
        lua_pushcclosure(L, fns[i].func, 1);
        lua_setfield(L, table, fns[i].name);
    }
}
