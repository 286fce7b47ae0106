#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/preview.h"
#include "core/clock.h"
#include "jobs/commcheck/model.h"
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

static void print_entries(const bson_t *d_outer, const char *path)
{
    bson_iter_t a, list;
    uint32_t len;
    const uint8_t *data;
    bson_t d;
    if (!bson_iter_init(&a, d_outer) || !bson_iter_find_descendant(&a, path, &a) ||
        !bson_iter_recurse(&a, &list))
        return;
    while (bson_iter_next(&list)) {
        bson_iter_document(&list, &len, &data);
        bson_init_static(&d, data, len);
        const char *reason = str(&d, "reason");
        printf("  entry %s (%s): %s%s%s\n", str(&d, "id"), str(&d, "provider"),
               str(&d, "outcome"), *reason ? ": " : "", reason);
        bson_iter_t e, evs;
        if (!bson_iter_init(&e, &d) || !bson_iter_find(&e, "events") || !bson_iter_recurse(&e, &evs))
            continue;
        while (bson_iter_next(&evs)) {
            bson_t ev;
            bson_iter_document(&evs, &len, &data);
            bson_init_static(&ev, data, len);
            printf("    %s %s: %s", str(&ev, "provider_message_id"), str(&ev, "provider_status"),
                   str(&ev, "outcome"));
            if (*str(&ev, "after"))
                printf(" %s -> %s", str(&ev, "before"), str(&ev, "after"));
            if (*str(&ev, "note"))
                printf(" (%s)", str(&ev, "note"));
            putchar('\n');
        }
    }
}

static void print_message_status(bson_iter_t *job)
{
    bson_iter_t a, list;
    uint32_t len;
    const uint8_t *data;
    bson_t d, whole;
    bson_iter_document(job, &len, &data);
    bson_init_static(&whole, data, len);
    print_entries(&whole, "entries");
    const char *lists[][2] = {{"polls", "poll twilio %s (%s since long)\n"},
                              {"retries", "send again %s via %s, attempt %s\n"}};
    for (int l = 0; l < 2; l++) {
        if (!bson_iter_recurse(job, &a) || !bson_iter_find(&a, lists[l][0]) ||
            !bson_iter_recurse(&a, &list))
            continue;
        while (bson_iter_next(&list)) {
            bson_iter_document(&list, &len, &data);
            bson_init_static(&d, data, len);
            char attempt[24] = "";
            bson_iter_t at;
            if (bson_iter_init_find(&at, &d, "attempt"))
                snprintf(attempt, sizeof attempt, "%lld", (long long)bson_iter_as_int64(&at));
            printf("  ");
            if (l == 0)
                printf(lists[l][1], str(&d, "provider_message_id"), str(&d, "status"));
            else
                printf(lists[l][1], str(&d, "target"), str(&d, "provider"), attempt);
        }
        if (l == 0)
            print_entries(&whole, "poll_results.entries");
    }
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
        if (!strcmp(bson_iter_key(&job), "message-status")) {
            print_message_status(&job);
            continue;
        }
        if (strcmp(bson_iter_key(&job), "communication-check") == 0) {
            bson_t j;
            uint32_t jlen;
            const uint8_t *jdata;
            bson_iter_document(&job, &jlen, &jdata);
            bson_init_static(&j, jdata, jlen);
            commcheck_print_text(&j);
            continue;
        }
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
                if (!strcmp(str(&action, "kind"), "notify") && *str(&action, "state.failure.error"))
                    printf("  notify %s: failed (%s), %s%s\n", str(&action, "target"),
                           str(&action, "state.failure.error"),
                           strcmp(due, "none") ? "retried from " : "parked",
                           strcmp(due, "none") ? due : "");
                else if (!strcmp(str(&action, "kind"), "notify"))
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
        struct msgstatus_keys keys = {.twilio_auth_token = cfg.twilio_auth_token,
                                      .sendgrid_public_key = cfg.sendgrid_webhook_public_key,
                                      .sendgrid_tolerance_ms = cfg.webhook_tolerance_s * 1000LL};
        if (dryrun_plan(fx, rules, job, now_ms, &keys, &plan, &err)) {
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
