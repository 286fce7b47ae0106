/* supportd — entry point: global library set-up and command dispatch. */
#include <curl/curl.h>
#include <mongoc/mongoc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"

static int dispatch(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        cli_help(argc >= 3 && !strcmp(argv[1], "help") ? argv[2] : NULL);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        if (cli_wants_help(argc - 1, argv + 1))
            return cli_help("version"), EXIT_OK;
        return cli_version();
    }
    if (cli_wants_help(argc - 1, argv + 1)) {
        if (cli_help(cmd) == 0)
            return EXIT_OK;
    }
    if (!strcmp(cmd, "run"))
        return cli_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "once"))
        return cli_once(argc - 1, argv + 1);
    if (!strcmp(cmd, "status"))
        return cli_status(argc - 1, argv + 1);
    if (!strcmp(cmd, "rules"))
        return cli_rules(argc - 1, argv + 1);
    if (!strcmp(cmd, "dry-run"))
        return cli_dry_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "explain"))
        return cli_explain(argc - 1, argv + 1);
    fprintf(stderr, "supportd: unknown command \"%s\" (see supportd --help)\n", cmd);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    /* Before mongoc_init: it may already have something to say, and every
     * line on stderr is one of ours (JSON, redacted). */
    log_route_mongoc();
    /* hiredis writes with send(2) without MSG_NOSIGNAL and, over TLS, OpenSSL
     * with write(2): a Redis that went away (seen with a TLS Redis restarted
     * under `run`) would kill the process with SIGPIPE instead of failing the
     * command and reconnecting. EPIPE is handled wherever we write. */
    signal(SIGPIPE, SIG_IGN);
    mongoc_init();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = dispatch(argc, argv);
    curl_global_cleanup();
    mongoc_cleanup();
    return rc;
}
