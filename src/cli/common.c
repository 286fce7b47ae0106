#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"
#include <mongoc/mongoc.h>

#include "core/log.h"

struct rules_live *cli_load_rules(const struct config *cfg)
{
    struct sd_error err;
    struct rules_limits limits = {.timeout_ms = cfg->rules_timeout_ms};
    struct rules_live *live = rules_live_new(cfg->rules_dir, &limits, &err);
    if (!live)
        fprintf(stderr, "supportd: QM_SUPPORT_RULES_DIR: rules in %s are invalid: %s\n",
                cfg->rules_dir, err.message);
    return live;
}

int cli_load_config_mongo(struct config *cfg)
{
    if (cli_load_config(cfg) != EXIT_OK)
        return EXIT_USAGE;
    struct sd_error err;
    if (config_require_mongo(cfg, &err)) {
        fprintf(stderr, "supportd: configuration error: %s\n", err.message);
        config_free(cfg);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

struct rules *cli_load_rules_checked(const char *command, const char *dir,
                                     const struct config *cfg, int *rc)
{
    struct rules_limits limits = {.timeout_ms = cfg->rules_timeout_ms};
    bool failed_running = false;
    struct sd_error err;
    struct rules *rules = rules_load_checked(dir, &limits, &failed_running, &err);
    if (!rules) {
        fprintf(stderr, "supportd %s: rules in %s: %s\n", command, dir, err.message);
        *rc = failed_running ? EXIT_RUNTIME : EXIT_USAGE;
    }
    return rules;
}

/* Verification is always on for everything supportd connects to, except
 * where MONGO_DB_URL turns it off with mongoc's own options: accepted (a
 * test cluster with a self-signed certificate needs it), but never silently. */
static void warn_unverified_tls(const struct config *cfg)
{
    if (!cfg->mongo_url)
        return;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(cfg->mongo_url, NULL);
    if (!uri)
        return;
    static const char *const off[] = {MONGOC_URI_TLSINSECURE, MONGOC_URI_TLSALLOWINVALIDCERTIFICATES,
                                      MONGOC_URI_TLSALLOWINVALIDHOSTNAMES};
    for (size_t i = 0; i < sizeof off / sizeof *off; i++)
        if (mongoc_uri_get_option_as_bool(uri, off[i], false)) {
            bson_t f = BSON_INITIALIZER;
            BSON_APPEND_UTF8(&f, "option", off[i]);
            log_msg(LOG_WARN, NULL, "config.tls_unverified", &f,
                    "MONGO_DB_URL sets %s=true: the database server's certificate is not "
                    "verified, so anyone in the path can read and change the data; remove it "
                    "and name the CA with tlsCAFile",
                    off[i]);
            bson_destroy(&f);
        }
    mongoc_uri_destroy(uri);
}

int cli_load_config(struct config *cfg)
{
    struct sd_error err;
    if (config_load(cfg, config_getenv_process, NULL, &err)) {
        /* Logging is not set up yet; the message is redacted all the same. */
        char *clean = log_redact_dup(err.message);
        fprintf(stderr, "supportd: configuration error: %s\n", clean ? clean : err.message);
        free(clean);
        return EXIT_USAGE;
    }
    log_init(cfg->log_level, cfg->log_json);
    log_route_mongoc();
    warn_unverified_tls(cfg);
    return EXIT_OK;
}
