#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/config.h"
#include "rules/engine.h"

/* supportd rules check [DIR] */
int cli_rules(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "check") != 0)
        return cli_usage_error("rules", "expected `rules check [DIR]`");
    if (argc > 3)
        return cli_usage_error("rules", "unexpected argument \"%s\"", argv[3]);
    const char *dir = argc == 3 ? argv[2] : getenv("QM_SUPPORT_RULES_DIR");
    if (!dir || !*dir)
        dir = "./rules";
    struct sd_error err;
    struct rules_limits limits = {0};
    if (config_rules_timeout(config_getenv_process, NULL, &limits.timeout_ms, &err))
        return cli_usage_error("rules", "%s", err.message);
    struct rules *r = rules_load(dir, &limits, &err);
    if (!r) {
        fprintf(stderr, "%s\n", err.message);
        return EXIT_RUNTIME;
    }
    printf("rules %s in %s: ok (", rules_version(r), dir);
    for (int i = 0; i < rules_file_count; i++)
        printf("%s%s.lua", i ? ", " : "", rules_files[i]);
    printf(")\n");
    rules_destroy(r);
    return EXIT_OK;
}
