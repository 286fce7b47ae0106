/* tz.h — IANA time zones for the rules: UTC offsets of a zone over time.
 *
 * Zone data is TZif (RFC 8536, version 2+ 64-bit section). The release
 * binary carries its own copy, compiled with zic from the pinned tzdata
 * source package (vendor/manifest.txt; scripts/build-static-deps generates
 * the table, built in with -DSD_TZ_EMBEDDED), so it is right in an empty
 * root. The development build has no embedded copy and reads
 * /usr/share/zoneinfo (TZDIR overrides the folder). The data is compiled
 * "fat" (explicit transitions up to 2037); after the last transition the
 * last offset stays.
 *
 * Each zone is read once and kept for the life of the process (thread-safe).
 *
 * Ownership: tz_get returns a zone owned by the cache; never free it.
 * Errors: tz_get returns NULL for an unknown or unreadable zone name.
 */
#ifndef SD_CORE_TZ_H
#define SD_CORE_TZ_H

#include <stddef.h>
#include <stdint.h>

struct tz_zone;

const struct tz_zone *tz_get(const char *name);

/* Seconds east of UTC in effect at t (Unix seconds). */
int32_t tz_offset_at(const struct tz_zone *z, int64_t t);

/* The offset in effect at from_s, then every change in (from_s, to_s]:
 * at[i] (Unix seconds; at[0] = from_s) and off[i] (seconds east of UTC).
 * Returns the number written (at most cap, at least 1 when cap ≥ 1). */
size_t tz_changes(const struct tz_zone *z, int64_t from_s, int64_t to_s, int64_t *at,
                  int32_t *off, size_t cap);

/* Where the zone data comes from: "embedded" or the system folder. */
const char *tz_source(void);

/* The tzdata release of that data ("2026b"): the embedded one's, else the one named
 * by the system folder's tzdata.zi ("# version 2026b"); NULL when it cannot tell.
 * Static storage; not thread-safe on its first call. */
const char *tz_data_version(void);

/* For tests: parses TZif bytes into a zone the caller frees with tz_free. */
struct tz_zone *tz_parse(const unsigned char *data, size_t len);
void tz_free(struct tz_zone *z);

#endif
