/* log.h — JSON-lines (or plain text) logging to stderr.
 *
 * One line per call, written with a single write(2) so lines from several
 * threads never interleave. Every line passes through the redactor: any string
 * registered with log_add_secret() is replaced by "[redacted]" wherever it
 * appears, including inside URLs and error texts from libraries.
 *
 * Ownership: the logger copies what it is given; callers keep their buffers.
 */
#ifndef SD_CORE_LOG_H
#define SD_CORE_LOG_H

#include <bson/bson.h>
#include <stdbool.h>

#include "core/error.h"

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Where a line comes from: the job and the tick id, both optional. */
struct log_ctx {
    const char *job;
    const char *tick;
};

int log_parse_level(const char *text, enum log_level *out);
void log_init(enum log_level min_level, bool json);
enum log_level log_min_level(void);

/* Registers a secret (copied). Secrets shorter than 4 characters are ignored:
 * redacting them would shred ordinary words. */
void log_add_secret(const char *secret);
/* Forgets all secrets (tests). */
void log_clear_secrets(void);

/* Replaces every registered secret in text (NUL-terminated, modified in place
 * when it fits, otherwise a new string). Returns a malloc'd copy; caller frees. */
char *log_redact_dup(const char *text);

/* Writes one line. `event` is a short dotted name ("tick.end"); `fields` (may be
 * NULL) adds structured members; fmt is the human message. */
void log_msg(enum log_level level, const struct log_ctx *ctx, const char *event,
             const bson_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* log_msg with one structured member, key: value (the id a line is about). */
void log_field(enum log_level level, const struct log_ctx *ctx, const char *event,
               const char *key, const char *value, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Routes libmongoc/libbson's own log messages through log_msg. */
void log_route_mongoc(void);

#endif
