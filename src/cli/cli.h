/* cli.h — the commands of SPEC §1. Each returns the process exit code:
 * 0 ok, 1 runtime failure, 2 usage or configuration error. Arguments are the
 * command's own (argv[0] is the command name). Messages go to stderr (logs)
 * or stdout (help, version, status). */
#ifndef SD_CLI_CLI_H
#define SD_CLI_CLI_H

#include "core/config.h"
#include "rules/reload.h"

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

int cli_run(int argc, char **argv);
int cli_once(int argc, char **argv);
int cli_status(int argc, char **argv);
int cli_rules(int argc, char **argv);
int cli_dry_run(int argc, char **argv);
int cli_explain(int argc, char **argv);
/* supportd's version and those of the libraries it was built with (src/cli/version.c). */
int cli_version(void);

/* Shared start-up: load the configuration, set up logging. Prints the error
 * and returns EXIT_USAGE on failure. */
int cli_load_config(struct config *cfg);

/* cli_load_config, then a database required (MONGO_DB_URL): the commands that
 * read MongoDB. Prints the error and returns EXIT_USAGE on failure (cfg freed). */
int cli_load_config_mongo(struct config *cfg);

/* A rule set loaded and checked as a reload checks it (dry-run, explain):
 * NULL when it cannot be used, printed as "supportd COMMAND: rules in DIR:
 * file:line …", with *rc EXIT_USAGE (malformed) or EXIT_RUNTIME (failed while
 * running: a self-test, its time budget). */
struct rules *cli_load_rules_checked(const char *command, const char *dir,
                                     const struct config *cfg, int *rc);

/* Loads the rules of cfg->rules_dir; prints the error (file:line) and returns
 * NULL when they are invalid: with no last good set there is nothing to run. */
struct rules_live *cli_load_rules(const struct config *cfg);

/* Prints the help of `command` (NULL: the overview) to stdout. Returns 0, or
 * -1 when there is no such command. */
int cli_help(const char *command);

/* True when argv holds --help or -h. */
int cli_wants_help(int argc, char **argv);

/* Reports a usage error naming the command, and returns EXIT_USAGE. */
int cli_usage_error(const char *command, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
