#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"
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
    return EXIT_OK;
}
