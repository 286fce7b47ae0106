#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "jobs/dryrun.h"
#include "jobs/fixtures.h"

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

static const char *str(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return "";
}

static void print_text(const bson_t *plan)
{
    printf("dry-run at %s with rules %s\n", str(plan, "now"), str(plan, "rules"));
    bson_iter_t jobs, job;
    if (!bson_iter_init_find(&jobs, plan, "jobs") || !bson_iter_recurse(&jobs, &job))
        return;
    while (bson_iter_next(&job)) {
        bson_iter_t a, list;
        uint32_t n = 0, skipped = 0;
        bson_iter_t s;
        if (bson_iter_recurse(&job, &s) && bson_iter_find(&s, "skipped") &&
            bson_iter_recurse(&s, &list))
            while (bson_iter_next(&list))
                skipped++;
        printf("\n%s:\n", bson_iter_key(&job));
        if (bson_iter_recurse(&job, &a) && bson_iter_find(&a, "actions") &&
            bson_iter_recurse(&a, &list)) {
            while (bson_iter_next(&list)) {
                uint32_t len;
                const uint8_t *data;
                bson_t action;
                bson_iter_document(&list, &len, &data);
                bson_init_static(&action, data, len);
                n++;
                bson_iter_t nd;
                char due[40] = "none";
                if (bson_iter_init(&nd, &action) &&
                    bson_iter_find_descendant(&nd, "sla.next_due", &nd) &&
                    BSON_ITER_HOLDS_DATE_TIME(&nd))
                    clock_format_iso(bson_iter_date_time(&nd), due, sizeof due);
                if (!strcmp(str(&action, "kind"), "notify"))
                    printf("  notify %s: status %s, sla next_due %s\n", str(&action, "target"),
                           str(&action, "state.status"), due);
                else
                    printf("  %s %s (%s): %s/%s -> %s/%s\n", str(&action, "kind"),
                           str(&action, "target"), str(&action, "reason"),
                           str(&action, "before.status"), str(&action, "before.priority"),
                           str(&action, "after.status"), str(&action, "after.priority"));
                bson_iter_t q, nl;
                if (bson_iter_init(&q, &action) && bson_iter_find_descendant(&q, "queue.score", &q))
                    printf("    queue %s score %.0f\n", str(&action, "queue.key"),
                           bson_iter_as_double(&q));
                if (bson_iter_init(&nl, &action) && bson_iter_find(&nl, "notifications") &&
                    bson_iter_recurse(&nl, &nl)) {
                    while (bson_iter_next(&nl)) {
                        bson_t e;
                        bson_iter_document(&nl, &len, &data);
                        bson_init_static(&e, data, len);
                        const char *to = str(&e, "recipient.email");
                        printf("    notify %s: \"%s\"\n", *to ? to : str(&e, "recipient.phone"),
                               str(&e, "subject"));
                    }
                }
            }
        }
        printf("  %u action(s), %u ticket(s) left as they are\n", n, skipped);
    }
}

int cli_dry_run(int argc, char **argv)
{
    const char *dir = NULL, *job = NULL, *now_text = NULL, *format = "json";
    for (int i = 1; i < argc; i++) {
        const char **slot = !strcmp(argv[i], "--fixtures") ? &dir
                            : !strcmp(argv[i], "--job")    ? &job
                            : !strcmp(argv[i], "--now")    ? &now_text
                            : !strcmp(argv[i], "--format") ? &format
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

    struct config cfg;
    if (cli_load_config(&cfg) != EXIT_OK)
        return EXIT_USAGE;
    struct fixtures *fx = fixtures_load(dir, &err);
    if (!fx) {
        fprintf(stderr, "supportd dry-run: %s\n", err.message);
        config_free(&cfg);
        return EXIT_USAGE;
    }
    if (now_ms < 0)
        now_ms = fixtures_now(fx) >= 0 ? fixtures_now(fx) : clock_now_ms();
    struct rules *rules = rules_load(cfg.rules_dir, NULL, &err);
    int rc = EXIT_USAGE;
    if (!rules) {
        fprintf(stderr, "supportd dry-run: rules in %s: %s\n", cfg.rules_dir, err.message);
    } else {
        bson_t plan = BSON_INITIALIZER;
        if (dryrun_plan(fx, rules, job, now_ms, &plan, &err)) {
            fprintf(stderr, "supportd dry-run: %s\n", err.message);
            rc = EXIT_RUNTIME;
        } else {
            if (!strcmp(format, "text")) {
                print_text(&plan);
            } else {
                char *json = bson_as_relaxed_extended_json(&plan, NULL);
                print_pretty(json);
                bson_free(json);
            }
            rc = EXIT_OK;
        }
        bson_destroy(&plan);
        rules_destroy(rules);
    }
    fixtures_destroy(fx);
    config_free(&cfg);
    return rc;
}
