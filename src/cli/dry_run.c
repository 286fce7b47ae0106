#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/preview.h"
#include "core/bson_field.h"
#include "core/clock.h"
#include "jobs/dryrun.h"
#include "jobs/live.h"
#include "jobs/plan_diff.h"
#include "jobs/runner.h"
#include "store/mongo.h"
#include "store/redis.h"

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

struct args {
    const char *dir, *job, *now_text, *format, *preview, *rules_dir, *against, *limit_text;
    bool live;
    int64_t now_ms, limit;
};

static atomic_bool interrupted;

static void on_interrupt(int sig)
{
    (void)sig;
    atomic_store(&interrupted, true);
}

/* The plan (and diff) on stdout, the preview into its folder. */
static int emit(const struct args *a, bson_t *plan)
{
    if (!strcmp(a->format, "text")) {
        dryrun_print_text(plan);
        bson_iter_t it;
        bson_t diff;
        if (bson_iter_init_find(&it, plan, "diff") && bson_iter_child(&it, &diff))
            plan_diff_print_text(&diff, bson_path_text(plan, "rules"),
                                 bson_path_text(plan, "against"));
    } else {
        char *json = bson_as_relaxed_extended_json(plan, NULL);
        print_pretty(json);
        bson_free(json);
    }
    if (!a->preview)
        return EXIT_OK;
    struct preview_counts pc;
    struct sd_error err;
    if (preview_write(plan, a->preview, &pc, &err)) {
        fprintf(stderr, "supportd dry-run: %s\n", err.message);
        return EXIT_RUNTIME;
    }
    fprintf(stderr, "supportd dry-run: preview of %zu email(s) and %zu SMS: %s/index.html\n",
            pc.mails, pc.sms, a->preview);
    return EXIT_OK;
}

static int fixture_dry_run(struct args *a, const struct config *cfg)
{
    struct sd_error err;
    struct fixtures *fx = fixtures_load(a->dir, &err);
    if (!fx) {
        fprintf(stderr, "supportd dry-run: %s\n", err.message);
        return EXIT_USAGE;
    }
    size_t n_ignored;
    const char *const *ignored = fixtures_ignored(fx, &n_ignored);
    for (size_t i = 0; i < n_ignored; i++)
        fprintf(stderr,
                "supportd dry-run: warning: %s/%s is not a fixture file (expected "
                "<collection>.json or meta.json); ignored\n",
                a->dir, ignored[i]);
    if (a->now_ms < 0)
        a->now_ms = fixtures_now(fx) >= 0 ? fixtures_now(fx) : clock_now_ms();
    int rc = EXIT_USAGE;
    const char *dir = a->rules_dir ? a->rules_dir : cfg->rules_dir;
    struct rules *rules = cli_load_rules_checked("dry-run", dir, cfg, &rc);
    if (rules) {
        bson_t plan = BSON_INITIALIZER;
        struct dryrun_ctx ctx = {.fx = fx, .rules = rules, .now_ms = a->now_ms, .cfg = cfg};
        if (dryrun_plan(&ctx, a->job, &plan, &err)) {
            fprintf(stderr, "supportd dry-run: %s\n", err.message);
            rc = EXIT_RUNTIME;
        } else {
            rc = emit(a, &plan);
        }
        bson_destroy(&plan);
        rules_destroy(rules);
    }
    fixtures_destroy(fx);
    return rc;
}

/* --live: the jobs' own collect on the database, read-only; with --against,
 * a second plan with the other rule set and the diff of the two. */
static int live_dry_run(struct args *a, const struct config *cfg)
{
    struct sd_error err;
    if (a->now_ms < 0)
        a->now_ms = clock_now_ms();
    int rc = EXIT_USAGE;
    const char *dir = a->rules_dir ? a->rules_dir : cfg->rules_dir;
    struct rules *rules = cli_load_rules_checked("dry-run", dir, cfg, &rc);
    struct rules *against =
        rules && a->against ? cli_load_rules_checked("dry-run", a->against, cfg, &rc) : NULL;
    if (!rules || (a->against && !against)) {
        if (rules)
            rules_destroy(rules);
        return rc;
    }
    struct store *store = store_new(cfg->mongo_url, cfg->mongo_db, &err);
    if (!store) {
        fprintf(stderr, "supportd: configuration error: %s\n", err.message);
        rules_destroy(rules);
        if (against)
            rules_destroy(against);
        return EXIT_USAGE;
    }
    struct sigaction sa = {.sa_handler = on_interrupt};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct rds_options opts;
    runner_redis_options(cfg, &opts);
    struct rds *redis = rds_new(&opts);
    struct live_ctx ctx = {.cfg = cfg,
                           .store = store,
                           .redis = redis,
                           .rules = rules,
                           .now_ms = a->now_ms,
                           .limit = a->limit,
                           .stop = &interrupted,
                           .progress = true};
    bson_t plan = BSON_INITIALIZER, other = BSON_INITIALIZER;
    rc = EXIT_RUNTIME;
    if (live_plan(&ctx, a->job, &plan, &err)) {
        fprintf(stderr, "supportd dry-run: %s\n", err.message);
    } else if (against) {
        ctx.rules = against;
        if (live_plan(&ctx, a->job, &other, &err)) {
            fprintf(stderr, "supportd dry-run: --against %s: %s\n", a->against, err.message);
        } else {
            bson_t diff;
            BSON_APPEND_UTF8(&plan, "against", rules_version(against));
            BSON_APPEND_DOCUMENT_BEGIN(&plan, "diff", &diff);
            plan_diff(&plan, &other, &diff);
            bson_append_document_end(&plan, &diff);
            rc = EXIT_OK;
        }
    } else {
        rc = EXIT_OK;
    }
    if (rc == EXIT_OK && atomic_load(&interrupted)) {
        fprintf(stderr, "supportd dry-run: interrupted: the plan is partial\n");
        rc = EXIT_RUNTIME;
    }
    if (rc == EXIT_OK)
        rc = emit(a, &plan);
    bson_destroy(&plan);
    bson_destroy(&other);
    rds_destroy(redis);
    store_destroy(store);
    rules_destroy(rules);
    if (against)
        rules_destroy(against);
    return rc;
}

int cli_dry_run(int argc, char **argv)
{
    struct args a = {.format = "json", .now_ms = -1};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--live")) {
            a.live = true;
            continue;
        }
        const char **slot = !strcmp(argv[i], "--fixtures")  ? &a.dir
                            : !strcmp(argv[i], "--job")     ? &a.job
                            : !strcmp(argv[i], "--now")     ? &a.now_text
                            : !strcmp(argv[i], "--format")  ? &a.format
                            : !strcmp(argv[i], "--preview") ? &a.preview
                            : !strcmp(argv[i], "--rules")   ? &a.rules_dir
                            : !strcmp(argv[i], "--against") ? &a.against
                            : !strcmp(argv[i], "--limit")   ? &a.limit_text
                                                            : NULL;
        if (!slot)
            return cli_usage_error("dry-run", "unknown argument \"%s\"", argv[i]);
        if (++i >= argc)
            return cli_usage_error("dry-run", "%s needs a value", argv[i - 1]);
        *slot = argv[i];
    }
    if (!a.dir == !a.live)
        return cli_usage_error("dry-run", "one of --fixtures DIR or --live is required");
    if (!a.live && (a.against || a.limit_text))
        return cli_usage_error("dry-run", "%s needs --live", a.against ? "--against" : "--limit");
    if (strcmp(a.format, "json") && strcmp(a.format, "text"))
        return cli_usage_error("dry-run", "--format must be json or text");
    if (a.job && job_find(a.job) < 0)
        return cli_usage_error("dry-run", "unknown job \"%s\"", a.job);
    if (a.job && !a.live && !dryrun_supports(a.job))
        return cli_usage_error("dry-run", "job %s has no dry-run in this version", a.job);
    if (a.job && a.live && !live_supports(a.job))
        return cli_usage_error("dry-run",
                               "job %s is not planned live (its input is not the database: "
                               "use --fixtures)",
                               a.job);
    if (a.limit_text) {
        char *end;
        long long v = strtoll(a.limit_text, &end, 10);
        if (*end || end == a.limit_text || v < 1)
            return cli_usage_error("dry-run", "--limit must be a positive number, not \"%s\"",
                                   a.limit_text);
        a.limit = v;
    }
    struct sd_error err;
    if (a.now_text && clock_parse_iso(a.now_text, &a.now_ms, &err))
        return cli_usage_error("dry-run", "--now: %s", err.message);
    if (a.preview && preview_check_dir(a.preview, &err))
        return cli_usage_error("dry-run", "%s", err.message);

    struct config cfg;
    if ((a.live ? cli_load_config_mongo(&cfg) : cli_load_config(&cfg)) != EXIT_OK)
        return EXIT_USAGE;
    int rc = a.live ? live_dry_run(&a, &cfg) : fixture_dry_run(&a, &cfg);
    config_free(&cfg);
    return rc;
}
