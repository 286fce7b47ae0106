/* seam.h — deterministic interleaving points for tests.
 *
 * When QM_SUPPORT_TEST_SEAMS names a folder holding <name>.arm, seam_wait
 * ("name") creates <folder>/<name>.reached and blocks until <folder>/<name>.go
 * exists (at most 60 s), so a test can change a document between a job's read
 * and its write, or kill -9 the process at an exact step. Unset (production),
 * or not armed, it does nothing. Compiled in only with SD_TEST_SEAMS (the
 * development and sanitized builds); the static release build has none.
 */
#ifndef SD_CORE_SEAM_H
#define SD_CORE_SEAM_H

void seam_wait(const char *name);

#endif
