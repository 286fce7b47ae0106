/* form.h — application/x-www-form-urlencoded bodies, as Twilio posts its
 * webhooks: `name=value&…`, '+' a space, %XX escapes (decoded by curl).
 * Values are kept exactly as sent (never trimmed): the signature covers them.
 *
 * Ownership: form_parse returns an array of n owned pairs, freed with
 * form_free. Errors follow core/error.h (only out of memory).
 */
#ifndef SD_PROVIDERS_FORM_H
#define SD_PROVIDERS_FORM_H

#include <stddef.h>

#include "core/error.h"

struct form_param {
    char *name;
    char *value;
};

int form_parse(const char *body, size_t len, struct form_param **out, size_t *n,
               struct sd_error *err);
void form_free(struct form_param *p, size_t n);

/* The first value of name, or NULL. */
const char *form_get(const struct form_param *p, size_t n, const char *name);

#endif
