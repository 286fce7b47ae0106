#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/preview.h"
#include "core/clock.h"
#include "jobs/dryrun.h"

/* Re-indents libbson's one-line JSON, two spaces a level, so plans read well
 * and diff line by line. String-aware; the values are untouched. */
static void print_pretty(const char *json)
{
    int depth = 0;
    bool in_str = false;
    for (const char *p = json; *p; p++) {
        char c = *p;
        if (in_str) {
            putchar(c);
            if (c == '\\' && p[1])
                putchar(*++p);
            else if (c == '"')
                in_str = false;
            continue;
        }
        switch (c) {
        case '"':
            in_str = true;
            putchar(c);
            break;
        case '{':
        case '[':
            if ((p[1] == ' ' && (p[2] == '}' || p[2] == ']'))) {
                printf("%c%c", c, p[2]);
                p += 2;
                break;
            }
            printf("%c\n%*s", c, 2 * ++depth, "");
            while (p[1] == ' ')
                p++;
            break;
        case '}':
        case ']':
            printf("\n%*s%c", 2 * --depth, "", c);
            break;
        case ',':
            printf(",\n%*s", 2 * depth, "");
            while (p[1] == ' ')
                p++;
            break;
        case ' ':
            if (p[1] == '}' || p[1] == ']' || p[1] == ':' || p[-1] == ':')
                break;
            putchar(c);
            break;
        case ':':
            printf(": ");
            while (p[1] == ' ')
                p++;
            break;
        default:
            putchar(c);
        }
    }
    putchar('\n');
}

int cli_dry_run(int argc, char **argv)
{
    const char *dir = NULL, *job = NULL, *now_text = NULL, *format = "json", *preview = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = !strcmp(argv[i], "--fixtures") ? &dir
                            : !strcmp(argv[i], "--job")    ? &job
                            : !strcmp(argv[i], "--now")    ? &now_text
                            : !strcmp(argv[i], "--format") ? &format
                            : !strcmp(argv[i], "--preview") ? &preview
                                                            : NULL;
        if (!slot)
            return cli_usage_error("dry-run", "unknown argument \"%s\"", argv[i]);
        if (++i >= argc)
            return cli_usage_error("dry-run", "%s needs a value", argv[i - 1]);
        *slot = argv[i];
    }
    if (!dir)
        return cli_usage_error("dry-run", "--fixtures DIR is required");
    if (strcmp(format, "json") && strcmp(format, "text"))
        return cli_usage_error("dry-run", "--format must be json or text");
    if (job && job_find(job) < 0)
        return cli_usage_error("dry-run", "unknown job \"%s\"", job);
    if (job && !dryrun_supports(job))
        return cli_usage_error("dry-run", "job %s has no dry-run in this version", job);
    struct sd_error err;
    int64_t now_ms = -1;
    if (now_text && clock_parse_iso(now_text, &now_ms, &err))
        return cli_usage_error("dry-run", "--now: %s", err.message);
    if (preview && preview_check_dir(preview, &err))
        return cli_usage_error("dry-run", "%s", err.message);

    struct config cfg;
    if (cli_load_config(&cfg) != EXIT_OK)
        return EXIT_USAGE;
    struct fixtures *fx = fixtures_load(dir, &err);
    if (!fx) {
        fprintf(stderr, "supportd dry-run: %s\n", err.message);
        config_free(&cfg);
        return EXIT_USAGE;
    }
    size_t n_ignored;
    const char *const *ignored = fixtures_ignored(fx, &n_ignored);
    for (size_t i = 0; i < n_ignored; i++)
        fprintf(stderr,
                "supportd dry-run: warning: %s/%s is not a fixture file (expected "
                "<collection>.json or meta.json); ignored\n",
                dir, ignored[i]);
    if (now_ms < 0)
        now_ms = fixtures_now(fx) >= 0 ? fixtures_now(fx) : clock_now_ms();
    struct rules_limits limits = {.timeout_ms = cfg.rules_timeout_ms};
    bool failed_running = false;
    struct rules *rules = rules_load_checked(cfg.rules_dir, &limits, &failed_running, &err);
    int rc = EXIT_USAGE;
    if (!rules) {
        /* A rule that fails while running (its time budget, say) is a
         * runtime failure; a malformed set is a configuration error. */
        fprintf(stderr, "supportd dry-run: rules in %s: %s\n", cfg.rules_dir, err.message);
        if (failed_running)
            rc = EXIT_RUNTIME;
    } else {
        bson_t plan = BSON_INITIALIZER;
        struct dryrun_ctx ctx = {.fx = fx, .rules = rules, .now_ms = now_ms, .cfg = &cfg};
        if (dryrun_plan(&ctx, job, &plan, &err)) {
            fprintf(stderr, "supportd dry-run: %s\n", err.message);
            rc = EXIT_RUNTIME;
        } else {
            if (!strcmp(format, "text")) {
                dryrun_print_text(&plan);
            } else {
                char *json = bson_as_relaxed_extended_json(&plan, NULL);
                print_pretty(json);
                bson_free(json);
            }
            rc = EXIT_OK;
            struct preview_counts pc;
            if (preview && preview_write(&plan, preview, &pc, &err)) {
                fprintf(stderr, "supportd dry-run: %s\n", err.message);
                rc = EXIT_RUNTIME;
            } else if (preview) {
                fprintf(stderr,
                        "supportd dry-run: preview of %zu email(s) and %zu SMS: %s/index.html\n",
                        pc.mails, pc.sms, preview);
            }
        }
        bson_destroy(&plan);
        rules_destroy(rules);
    }
    fixtures_destroy(fx);
    config_free(&cfg);
    return rc;
}
