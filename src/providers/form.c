#include "providers/form.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

/* Decodes one form component: '+' is a space, then %XX. */
static char *decode(const char *s, size_t len)
{
    if (!memchr(s, '%', len) && !memchr(s, '+', len)) /* most names and ids */
        return strndup(s, len);
    char *tmp = malloc(len + 1);
    if (!tmp)
        return NULL;
    for (size_t i = 0; i < len; i++)
        tmp[i] = s[i] == '+' ? ' ' : s[i];
    tmp[len] = '\0';
    int outlen = 0;
    char *dec = curl_easy_unescape(NULL, tmp, (int)len, &outlen);
    free(tmp);
    if (!dec)
        return NULL;
    char *copy = malloc((size_t)outlen + 1);
    if (copy) {
        memcpy(copy, dec, (size_t)outlen);
        copy[outlen] = '\0';
    }
    curl_free(dec);
    return copy;
}

int form_parse(const char *body, size_t len, struct form_param **out, size_t *n,
               struct sd_error *err)
{
    size_t cap = 1;
    for (size_t i = 0; i < len; i++)
        cap += body[i] == '&';
    struct form_param *p = calloc(cap, sizeof *p);
    if (!p)
        return sd_error_set(err, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        size_t end = i;
        while (end < len && body[end] != '&')
            end++;
        if (end > i) {
            const char *eq = memchr(body + i, '=', end - i);
            size_t klen = eq ? (size_t)(eq - body - i) : end - i;
            char *name = decode(body + i, klen);
            char *value = eq ? decode(eq + 1, end - i - klen - 1) : strdup("");
            if (!name || !value) {
                free(name);
                free(value);
                form_free(p, k);
                return sd_error_set(err, "out of memory");
            }
            p[k++] = (struct form_param){name, value};
        }
        i = end + 1;
    }
    *out = p;
    *n = k;
    return 0;
}

void form_free(struct form_param *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].name);
        free(p[i].value);
    }
    free(p);
}

const char *form_get(const struct form_param *p, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(p[i].name, name))
            return p[i].value;
    return NULL;
}
