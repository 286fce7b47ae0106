/* REDIS_URL and SMTP_URL as configuration reads them (config_load), and the
 * URL helpers messages use. A password the parser registered never appears
 * in the error it returns. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "core/redis_url.h"
#include "providers/curl_shared.h"

struct env {
    const char *name, *value;
};

static const char *getenv_fake(const char *name, void *ud)
{
    const struct env *e = ud;
    for (; e->name; e++)
        if (!strcmp(e->name, name))
            return e->value;
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = strndup((const char *)data, size);
    struct redis_url u;
    struct sd_error err = {""};
    redis_url_parse(url, &u, &err);
    if (u.password && strlen(u.password) >= 4) {
        /* the decoded password quoted where it stood ("…:<password>@…") */
        size_t n = strlen(u.password) + 3;
        char *quoted = malloc(n);
        snprintf(quoted, n, ":%s@", u.password);
        if (strstr(err.message, quoted))
            abort();
        free(quoted);
    }
    redis_url_free(&u);

    struct env redis_env[] = {{"REDIS_URL", url}, {NULL, NULL}};
    struct env smtp_env[] = {{"SMTP_URL", url}, {"QM_SUPPORT_EMAIL_PROVIDER", "smtp"}, {NULL, NULL}};
    struct config cfg;
    if (config_load(&cfg, getenv_fake, redis_env, &err) == 0)
        config_free(&cfg);
    char *clean = log_redact_dup(err.message);
    free(clean);
    if (config_load(&cfg, getenv_fake, smtp_env, &err) == 0)
        config_free(&cfg);
    log_clear_secrets();

    char out[512];
    curl_url_host(url, out, sizeof out);
    curl_url_redacted(url, out, sizeof out);
    (void)curl_url_is_loopback(url);
    free(url);
    return 0;
}
