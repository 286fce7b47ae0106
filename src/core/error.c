#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

/* Formats in full, redacts the registered secrets, then cuts to size: cut
 * first, a secret across the cut would keep its start, which no redactor
 * can recognise any more. */
static void format_redacted(char *out, size_t size, const char *fmt, va_list ap)
{
    char *full = NULL;
    if (vasprintf(&full, fmt, ap) < 0) {
        snprintf(out, size, "(could not format the message)");
        return;
    }
    char *clean = log_redact_dup(full);
    snprintf(out, size, "%s", clean ? clean : "(could not redact the message)");
    free(clean);
    free(full);
}

int sd_error_set(struct sd_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        format_redacted(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int sd_error_prefix(struct sd_error *err, const char *fmt, ...)
{
    if (err) {
        char prefix[256], old[sizeof err->message];
        va_list ap;
        va_start(ap, fmt);
        format_redacted(prefix, sizeof prefix, fmt, ap);
        va_end(ap);
        memcpy(old, err->message, sizeof old);
        /* Truncation is fine here: the start of a message names the thing. */
        int n = snprintf(err->message, sizeof err->message, "%s: ", prefix);
        if (n > 0 && (size_t)n < sizeof err->message)
            memcpy(err->message + n, old, strnlen(old, sizeof err->message - (size_t)n - 1) + 1);
        err->message[sizeof err->message - 1] = '\0';
    }
    return -1;
}
