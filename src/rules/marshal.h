/* marshal.h — BSON ↔ Lua values, the one way data crosses into the rules.
 *
 * BSON → Lua:
 *   document → table with string keys; array → sequence table (1-based)
 *   string → string; int32, int64 → integer; double → float; bool → boolean
 *   date → integer, Unix milliseconds (UTC)
 *   ObjectId → 24-character lowercase hex string
 *   null, undefined → nil (the key is absent from the Lua table)
 *   decimal128 → string; other types (binary, regex, …) → nil
 * Lua → BSON:
 *   table whose keys are exactly 1..n (n > 0) → array; any other table →
 *   document (an empty table is an empty document); integer → int64;
 *   float → double; string → UTF-8 string; boolean → bool; nil → absent.
 *   Functions, userdata and threads are an error naming the key.
 * Nesting deeper than 64 levels is an error (a rule returning a cyclic table).
 * Lua → BSON reads tables raw (no metamethod runs: a result's metatable can
 * neither throw nor loop), counts the values it visits against a cap (a table
 * repeated inside itself is exponential: t = {t, t} forty times is 2^40
 * values), reads the call's deadline every 1,024 values, and checks every
 * append (a result over 16 MiB is an error, not a truncated document).
 *
 * Ownership: marshal_push leaves one value on the Lua stack; marshal_to_bson
 * appends to a caller-owned bson_t. Errors follow core/error.h.
 */
#ifndef SD_RULES_MARSHAL_H
#define SD_RULES_MARSHAL_H

#include <bson/bson.h>
#include <lua.h>

#include "core/error.h"

/* Pushes the document (or array, when as_array) as a table. */
void marshal_push_document(lua_State *L, const bson_t *doc, bool as_array);

/* Pushes the value the iterator points at. */
void marshal_push_value(lua_State *L, const bson_iter_t *it);

struct rules_deadline;

/* Bounds of one Lua → BSON conversion; zero / NULL: none. */
struct marshal_limits {
    size_t max_nodes;                 /* values visited, keys included */
    struct rules_deadline *deadline;  /* the rule call's, already armed */
};

/* Appends the Lua value at stack index idx to out under key. On an error out
 * is unchanged. lim may be NULL. Raises no Lua error and runs no Lua code. */
int marshal_append(lua_State *L, int idx, bson_t *out, const char *key,
                   const struct marshal_limits *lim, struct sd_error *err);

#endif
