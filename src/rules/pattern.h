/* pattern.h — string.find, string.match, string.gmatch and string.gsub for the
 * rules sandbox: Lua 5.4's pattern language (manual §6.4.1), matched by code
 * of our own that counts its steps and reads the call's deadline every few
 * thousand of them.
 *
 * Why: Lua's own matcher is C code that backtracks without bound (".-.-.-.-b"
 * over 20,000 characters runs for hours) and that no hook can interrupt; the
 * instruction budget never sees it. Ours has the same results (tests/unit/
 * test_pattern.c compares both on a corpus) and raises "exceeded its time
 * budget" once the deadline has passed. Plain finds use memmem (linear).
 *
 * Ownership: pattern_install stores the functions, as closures over the
 * borrowed deadline `d`, in the table at index `table`; d must outlive the
 * Lua state. Errors are Lua errors, with Lua's own messages.
 */
#ifndef SD_RULES_PATTERN_H
#define SD_RULES_PATTERN_H

#include <lua.h>

#include "rules/deadline.h"

void pattern_install(lua_State *L, int table, struct rules_deadline *d);

#endif
