#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rules/engine.h"
#include "rules/reload.h"


/* The shipped rules folder: $SUPPORTD_RULES_DIR, else rules/ (cwd = repo
 * root, as scripts/test and `zig build test` run), else ../rules. Sandbox and
 * reload tests work on a copy in a mkdtemp folder with one file changed. */

static const char *shipped_dir(void)
{
    const char *env = getenv("SUPPORTD_RULES_DIR");
    if (env && *env)
        return env;
    if (access("rules/queue.lua", R_OK) == 0)
        return "rules";
    return "../rules";
}

/* ---- files ---------------------------------------------------------------- */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void write_bytes(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("cannot write %s", path);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void file_path(char *buf, size_t n, const char *dir, const char *module)
{
    snprintf(buf, n, "%s/%s.lua", dir, module);
}

/* Replaces every `from` (which must occur) by `to` in s; returns a new string. */
static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), count = 0;
    for (const char *p = s; (p = strstr(p, from)); p += fl)
        count++;
    if (count == 0)
        fail_msg("\"%s\" not found", from);
    char *out = malloc(strlen(s) + count * tl + 1), *o = out;
    for (const char *p = s, *q; ; p = q + fl) {
        q = strstr(p, from);
        if (!q) {
            strcpy(o, p);
            break;
        }
        memcpy(o, p, (size_t)(q - p));
        o += q - p;
        memcpy(o, to, tl);
        o += tl;
    }
    return out;
}

/* Rewrites dir/module.lua: optional replacement, then prepend and append. */
static void edit(const char *dir, const char *module, const char *prepend, const char *from,
                 const char *to, const char *append)
{
    char path[512];
    file_path(path, sizeof path, dir, module);
    char *text = read_text(path);
    if (from) {
        char *r = replace_all(text, from, to);
        free(text);
        text = r;
    }
    size_t n = strlen(text) + (prepend ? strlen(prepend) : 0) + (append ? strlen(append) : 0);
    char *out = malloc(n + 1);
    snprintf(out, n + 1, "%s%s%s", prepend ? prepend : "", text, append ? append : "");
    write_bytes(path, out, n);
    free(out);
    free(text);
}

/* A mkdtemp copy of the six shipped files; *state holds its path. */
static int copy_setup(void **state)
{
    const char *base = getenv("TMPDIR");
    char *dir = malloc(512);
    snprintf(dir, 512, "%s/supportd-rules-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        free(dir);
        return -1;
    }
    for (int i = 0; i < rules_file_count; i++) {
        char src[512], dst[512];
        file_path(src, sizeof src, shipped_dir(), rules_files[i]);
        file_path(dst, sizeof dst, dir, rules_files[i]);
        char *text = read_text(src);
        write_bytes(dst, text, strlen(text));
        free(text);
    }
    *state = dir;
    return 0;
}

static int copy_teardown(void **state)
{
    char *dir = *state;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
    free(dir);
    return 0;
}

/* ---- assertions ----------------------------------------------------------- */

static void expect_contains(const char *msg, const char *want)
{
    if (!strstr(msg, want))
        fail_msg("error \"%s\" does not contain \"%s\"", msg, want);
}

/* msg names file (e.g. "queue.lua") followed by ":<line>:"; returns the line. */
static int expect_file_line(const char *msg, const char *file)
{
    size_t fl = strlen(file);
    for (const char *p = msg; (p = strstr(p, file)); p += fl) {
        const char *q = p + fl;
        if (*q != ':' || q[1] < '0' || q[1] > '9')
            continue;
        char *end;
        long line = strtol(q + 1, &end, 10);
        if (*end == ':')
            return (int)line;
    }
    fail_msg("error \"%s\" does not name %s:<line>:", msg, file);
    return -1;
}

static void find(const bson_t *doc, const char *dotted, bson_iter_t *it)
{
    bson_iter_t root;
    if (!bson_iter_init(&root, doc) || !bson_iter_find_descendant(&root, dotted, it)) {
        char *json = bson_as_relaxed_extended_json(doc, NULL);
        fail_msg("no field %s in %s", dotted, json);
    }
}

static bool has(const bson_t *doc, const char *dotted)
{
    bson_iter_t root, it;
    return bson_iter_init(&root, doc) && bson_iter_find_descendant(&root, dotted, &it);
}

static const char *str(const bson_t *doc, const char *dotted)
{
    bson_iter_t it;
    find(doc, dotted, &it);
    if (!BSON_ITER_HOLDS_UTF8(&it))
        fail_msg("%s is not a string", dotted);
    return bson_iter_utf8(&it, NULL);
}

static double num(const bson_t *doc, const char *dotted)
{
    bson_iter_t it;
    find(doc, dotted, &it);
    if (!BSON_ITER_HOLDS_NUMBER(&it))
        fail_msg("%s is not a number", dotted);
    return bson_iter_as_double(&it);
}

static bool boolean(const bson_t *doc, const char *dotted)
{
    bson_iter_t it;
    find(doc, dotted, &it);
    if (!BSON_ITER_HOLDS_BOOL(&it))
        fail_msg("%s is not a boolean", dotted);
    return bson_iter_bool(&it);
}

static uint32_t count_keys(const bson_t *doc, const char *dotted)
{
    bson_iter_t it, child;
    find(doc, dotted, &it);
    assert_true(BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it));
    assert_true(bson_iter_recurse(&it, &child));
    uint32_t n = 0;
    while (bson_iter_next(&child))
        n++;
    return n;
}

static struct rules *load_ok(const char *dir, const struct rules_limits *limits)
{
    struct sd_error err = {{0}};
    struct rules *r = rules_load(dir, limits, &err);
    if (!r)
        fail_msg("rules_load(%s): %s", dir, err.message);
    return r;
}

/* rules_load must fail; returns the error (static buffer). */
static const char *load_error(const char *dir, const struct rules_limits *limits)
{
    static struct sd_error err;
    memset(&err, 0, sizeof err);
    struct rules *r = rules_load(dir, limits, &err);
    if (r) {
        rules_destroy(r);
        fail_msg("rules_load(%s) succeeded; an error was expected", dir);
    }
    assert_true(err.message[0] != '\0');
    return err.message;
}

/* Calls module.fn and fails the test on error; out is (re)initialised. */
static void call_ok(struct rules *r, const char *module, const char *fn, bson_t *args, bson_t *out)
{
    struct sd_error err = {{0}};
    bson_init(out);
    if (rules_call(r, module, fn, args, out, &err) != 0)
        fail_msg("%s.%s: %s", module, fn, err.message);
}

/* ---- the shipped rules ---------------------------------------------------- */

static struct rules *shipped;

static int shipped_setup(void **state)
{
    (void)state;
    struct sd_error err = {{0}};
    shipped = rules_load(shipped_dir(), NULL, &err);
    if (!shipped) {
        fprintf(stderr, "rules_load(%s): %s\n", shipped_dir(), err.message);
        return -1;
    }
    return 0;
}

static int shipped_teardown(void **state)
{
    (void)state;
    rules_destroy(shipped);
    shipped = NULL;
    return 0;
}

static void test_version_format(void **state)
{
    (void)state;
    const char *v = rules_version(shipped);
    assert_int_equal(strlen(v), 12);
    for (const char *p = v; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            fail_msg("version %s is not lowercase hex", v);
}

static double score(const char *priority, int64_t created_at, int64_t last_msg, int64_t now)
{
    bson_t conv = BSON_INITIALIZER;
    if (priority)
        BSON_APPEND_UTF8(&conv, "priority", priority);
    if (created_at)
        BSON_APPEND_DATE_TIME(&conv, "created_at", created_at);
    if (last_msg)
        BSON_APPEND_DATE_TIME(&conv, "last_customer_message_at", last_msg);
    bson_t args = BSON_INITIALIZER;
    BSON_APPEND_DOCUMENT(&args, "0", &conv);
    BSON_APPEND_DATE_TIME(&args, "1", now);
    bson_t out;
    call_ok(shipped, "queue", "score", &args, &out);
    double s = num(&out, "result");
    bson_destroy(&out);
    bson_destroy(&args);
    bson_destroy(&conv);
    return s;
}

static void test_queue_score_order(void **state)
{
    (void)state;
    const int64_t now = INT64_C(1772469000000); /* 2026-03-02 16:30 UTC */
    const int64_t t = now - 3600000;
    double urgent = score("urgent", t, 0, now), high = score("high", t, 0, now);
    double normal = score("normal", t, 0, now), low = score("low", t, 0, now);
    assert_true(urgent < high);
    assert_true(high < normal);
    assert_true(normal < low);

    /* Within a priority the longer-waiting one first. */
    assert_true(score("normal", t - 60000, 0, now) < score("normal", t, 0, now));
    assert_true(score("low", t - 1, 0, now) < score("low", t, 0, now)); /* 1 ms is visible */
    /* Priority outweighs any wait: a brand-new urgent before a year-old low. */
    assert_true(score("urgent", now, 0, now) < score("high", now - INT64_C(31536000000), 0, now));
    /* The last customer message counts, not the creation. */
    assert_true(score("normal", t - 60000, t, now) > score("normal", t - 1000, 0, now));
    /* Unknown or missing priority counts as normal; no dates → now. */
    assert_true(score("whatever", t, 0, now) == normal);
    assert_true(score(NULL, t, 0, now) == normal);
    /* No dates: waiting since now, so after anyone of its priority who waits. */
    assert_true(score("normal", 0, 0, now) > normal);
    assert_true(score("normal", 0, 0, now) < low);
}

static bson_t *sample_ctx(void)
{
    return BCON_NEW("conversation", "{", "subject", BCON_UTF8("Fish & <chips> \"x\""), "contact",
                    "{", "name", BCON_UTF8("Lena"), "}", "priority", BCON_UTF8("high"), "}",
                    "room", "{", "name", BCON_UTF8("Berlin"), "}",
                    "recipient", "{", "name", BCON_UTF8("Anna"), "}",
                    "event", "{", "reason", BCON_UTF8("snooze ended"), "}");
}

static void test_templates_render_unsnoozed(void **state)
{
    (void)state;
    bson_t *ctx = sample_ctx();
    bson_t args = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&args, "0", "ticket.unsnoozed");
    BSON_APPEND_DOCUMENT(&args, "1", ctx);
    bson_t out;
    call_ok(shipped, "templates", "render", &args, &out);
    assert_string_equal(str(&out, "result.subject"), "Back from snooze: Fish & <chips> \"x\"");
    const char *text = str(&out, "result.text"); /* plain text: not escaped either */
    expect_contains(text, "Hello Anna");
    expect_contains(text, "\"Fish & <chips> \"x\"\" from Lena");
    expect_contains(text, "Berlin");
    expect_contains(text, "snooze ended");
    expect_contains(text, "Priority: high");
    const char *html = str(&out, "result.html");
    expect_contains(html, "Fish &amp; &lt;chips&gt; &quot;x&quot;");
    assert_null(strstr(html, "<chips>"));
    assert_null(strstr(html, "&amp;amp;")); /* escaped once */
    expect_contains(html, "<html");
    expect_contains(html, "Hello Anna");
    bson_destroy(&out);
    bson_destroy(&args);

    /* An unknown type is an error naming the file and line. */
    bson_init(&args);
    BSON_APPEND_UTF8(&args, "0", "no.such.type");
    BSON_APPEND_DOCUMENT(&args, "1", ctx);
    bson_init(&out);
    struct sd_error err = {{0}};
    assert_int_equal(rules_call(shipped, "templates", "render", &args, &out, &err), -1);
    expect_contains(err.message, "no template for notification type no.such.type");
    expect_file_line(err.message, "templates.lua");
    bson_destroy(&out);
    bson_destroy(&args);
    bson_destroy(ctx);
}

static bson_t *room_doc(void)
{
    return BCON_NEW("members", "[",
                    "{", "user_id", BCON_UTF8("a1"), "name", BCON_UTF8("Anna"), "email",
                    BCON_UTF8("anna@x.example"), "role", BCON_UTF8("agent"), "}",
                    "{", "user_id", BCON_UTF8("a2"), "name", BCON_UTF8("Jonas"), "email",
                    BCON_UTF8("jonas@x.example"), "role", BCON_UTF8("agent"), "}",
                    "{", "user_id", BCON_UTF8("a3"), "name", BCON_UTF8("No Mail"), "role",
                    BCON_UTF8("agent"), "}",
                    "{", "user_id", BCON_UTF8("m1"), "name", BCON_UTF8("Petra"), "email",
                    BCON_UTF8("petra@x.example"), "role", BCON_UTF8("manager"), "}",
                    "]");
}

static void recipients(const char *type, const bson_t *conv, bson_t *out)
{
    bson_t *room = room_doc();
    bson_t args = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&args, "0", type);
    BSON_APPEND_DOCUMENT(&args, "1", conv);
    BSON_APPEND_DOCUMENT(&args, "2", room);
    call_ok(shipped, "notify", "recipients", &args, out);
    bson_destroy(&args);
    bson_destroy(room);
}

static void test_notify_recipients(void **state)
{
    (void)state;
    bson_t out;
    bson_t *conv = BCON_NEW("assignee_id", BCON_UTF8("a2"));
    recipients("ticket.unsnoozed", conv, &out);
    bson_iter_t it;
    find(&out, "result", &it);
    assert_true(BSON_ITER_HOLDS_ARRAY(&it));
    assert_int_equal(count_keys(&out, "result"), 1);
    assert_string_equal(str(&out, "result.0.user_id"), "a2");
    assert_string_equal(str(&out, "result.0.email"), "jonas@x.example");
    assert_string_equal(str(&out, "result.0.role"), "agent");
    assert_string_equal(str(&out, "result.0.via"), "email");
    bson_destroy(&out);
    bson_destroy(conv);

    /* Unassigned: every agent with an email. */
    conv = bson_new();
    recipients("ticket.customer_message", conv, &out);
    assert_int_equal(count_keys(&out, "result"), 2);
    assert_string_equal(str(&out, "result.0.user_id"), "a1");
    assert_string_equal(str(&out, "result.1.user_id"), "a2");
    bson_destroy(&out);

    /* Managers. */
    recipients("ticket.sla_breached", conv, &out);
    assert_int_equal(count_keys(&out, "result"), 1);
    assert_string_equal(str(&out, "result.0.user_id"), "m1");
    assert_string_equal(str(&out, "result.0.role"), "manager");
    bson_destroy(&out);

    /* Nobody: an empty Lua list comes back as an empty document (marshal.h). */
    recipients("ticket.resolved", conv, &out);
    find(&out, "result", &it);
    assert_true(BSON_ITER_HOLDS_DOCUMENT(&it));
    assert_int_equal(count_keys(&out, "result"), 0);
    bson_destroy(&out);
    bson_destroy(conv);

    /* The customer, by SMS on an SMS conversation. */
    conv = BCON_NEW("channel", BCON_UTF8("sms"), "contact", "{", "name", BCON_UTF8("Lena"),
                    "phone", BCON_UTF8("+4917012345"), "email", BCON_UTF8("lena@example.org"),
                    "}");
    recipients("ticket.status_changed", conv, &out);
    assert_int_equal(count_keys(&out, "result"), 1);
    assert_string_equal(str(&out, "result.0.role"), "customer");
    assert_string_equal(str(&out, "result.0.via"), "sms");
    assert_string_equal(str(&out, "result.0.phone"), "+4917012345");
    assert_false(has(&out, "result.0.email"));
    bson_destroy(&out);
    bson_destroy(conv);
}

static void decide(const char *provider, bson_t *errdoc, int attempts, bson_t *out)
{
    bson_t args = BSON_INITIALIZER;
    bson_t *msg = BCON_NEW("provider", BCON_UTF8(provider), "channel", BCON_UTF8("sms"));
    BSON_APPEND_DOCUMENT(&args, "0", msg);
    BSON_APPEND_DOCUMENT(&args, "1", errdoc);
    BSON_APPEND_INT32(&args, "2", attempts);
    call_ok(shipped, "retry", "decide", &args, out);
    bson_destroy(msg);
    bson_destroy(&args);
}

static void test_retry_decide(void **state)
{
    (void)state;
    bson_t out;
    bson_t *e = BCON_NEW("code", BCON_INT32(30003), "message", BCON_UTF8("Unreachable"));
    decide("twilio", e, 1, &out);
    assert_true(boolean(&out, "result.retry"));
    assert_false(boolean(&out, "result.final"));
    assert_true(num(&out, "result.delay_seconds") == 60);
    bson_destroy(&out);
    decide("twilio", e, 2, &out);
    assert_true(num(&out, "result.delay_seconds") == 120);
    bson_destroy(&out);
    decide("twilio", e, 4, &out); /* max_attempts */
    assert_false(boolean(&out, "result.retry"));
    assert_true(boolean(&out, "result.final"));
    expect_contains(str(&out, "result.reason"), "gave up after 4 attempts");
    bson_destroy(&out);
    bson_destroy(e);

    /* A code that comes as int64 or double is the same table key in Lua. */
    e = BCON_NEW("code", BCON_DOUBLE(30001.0));
    decide("twilio", e, 1, &out);
    assert_true(boolean(&out, "result.retry"));
    bson_destroy(&out);
    bson_destroy(e);

    e = BCON_NEW("code", BCON_INT64(30006));
    decide("twilio", e, 1, &out);
    assert_false(boolean(&out, "result.retry"));
    assert_true(boolean(&out, "result.final"));
    assert_string_equal(str(&out, "result.reason"), "not retryable: 30006");
    bson_destroy(&out);
    bson_destroy(e);

    e = BCON_NEW("code", BCON_UTF8("deferred"));
    decide("sendgrid", e, 3, &out);
    assert_true(boolean(&out, "result.retry"));
    assert_true(num(&out, "result.delay_seconds") == 240);
    bson_destroy(&out);
    bson_destroy(e);

    /* No error details: not retried. */
    e = bson_new();
    decide("smtp", e, 1, &out);
    assert_false(boolean(&out, "result.retry"));
    bson_destroy(&out);
    bson_destroy(e);
}

static void test_rules_get(void **state)
{
    (void)state;
    struct sd_error err = {{0}};
    bson_t out = BSON_INITIALIZER;
    assert_int_equal(rules_get(shipped, "notify", "snooze", &out, &err), 0);
    assert_true(boolean(&out, "result.wake_on_customer_message"));
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(rules_get(shipped, "health", "thresholds", &out, &err), 0);
    assert_true(num(&out, "result.consecutive_failures") == 2);
    assert_true(num(&out, "result.twilio_balance_warning") == 20.0);
    bson_destroy(&out);

    bson_init(&out);
    assert_int_equal(rules_get(shipped, "notify", "reminder", &out, &err), 0);
    assert_true(num(&out, "result.after_minutes") == 60);
    bson_destroy(&out);

    /* A missing field or module: nil, so no "result". */
    bson_init(&out);
    assert_int_equal(rules_get(shipped, "notify", "no_such_field", &out, &err), 0);
    assert_true(bson_empty(&out));
    assert_int_equal(rules_get(shipped, "nomodule", "snooze", &out, &err), 0);
    assert_true(bson_empty(&out));
    bson_destroy(&out);

    /* A function cannot leave the rules. */
    bson_init(&out);
    assert_int_equal(rules_get(shipped, "queue", "score", &out, &err), -1);
    expect_contains(err.message, "queue.lua");
    expect_contains(err.message, "function");
    bson_destroy(&out);
}

static void test_call_unknown_function(void **state)
{
    (void)state;
    struct sd_error err = {{0}};
    bson_t out = BSON_INITIALIZER;
    assert_int_equal(rules_call(shipped, "queue", "nope", NULL, &out, &err), -1);
    expect_contains(err.message, "queue.lua: no function nope");
    assert_int_equal(rules_call(shipped, "nomodule", "score", NULL, &out, &err), -1);
    expect_contains(err.message, "nomodule.lua: no function score");
    /* A table member is not a function either. */
    assert_int_equal(rules_call(shipped, "queue", "priority_rank", NULL, &out, &err), -1);
    assert_true(bson_empty(&out));
    bson_destroy(&out);
}

/* A rule's runtime error names queue.lua:<line>; the state stays usable. */
static void test_runtime_error_then_next_call(void **state)
{
    (void)state;
    struct sd_error err = {{0}};
    bson_t out = BSON_INITIALIZER;
    bson_t args = BSON_INITIALIZER; /* score(nil): indexes a nil conversation */
    assert_int_equal(rules_call(shipped, "queue", "score", &args, &out, &err), -1);
    expect_file_line(err.message, "queue.lua");
    expect_contains(err.message, "queue.score");
    expect_contains(err.message, "nil");
    assert_true(bson_empty(&out));
    bson_destroy(&out);

    /* created_at of the wrong type: arithmetic on a string. */
    bson_t *bad = BCON_NEW("0", "{", "created_at", BCON_UTF8("yesterday"), "}", "1", BCON_INT64(1));
    bson_init(&out);
    assert_int_equal(rules_call(shipped, "queue", "score", bad, &out, &err), -1);
    expect_file_line(err.message, "queue.lua");
    bson_destroy(&out);
    bson_destroy(bad);

    double first = score("high", 5000, 0, 9000);
    for (int i = 0; i < 3; i++)
        assert_true(score("high", 5000, 0, 9000) == first);
}

/* Job threads share one set; calls are serialized inside. */
struct hammer {
    int id;
    double want;
    int failures;
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    for (int i = 0; i < 200; i++) {
        bson_t *args = BCON_NEW("0", "{", "priority", BCON_UTF8("low"), "created_at",
                                BCON_DATE_TIME(h->id * 1000), "}", "1", BCON_DATE_TIME(99999));
        bson_t out = BSON_INITIALIZER;
        struct sd_error err;
        bson_iter_t it;
        if (rules_call(shipped, "queue", "score", args, &out, &err) != 0 ||
            !bson_iter_init_find(&it, &out, "result") ||
            bson_iter_as_double(&it) != h->want)
            h->failures++;
        bson_destroy(&out);
        bson_destroy(args);
    }
    return NULL;
}

static void test_concurrent_calls(void **state)
{
    (void)state;
    pthread_t th[4];
    struct hammer h[4];
    for (int i = 0; i < 4; i++) {
        h[i] = (struct hammer){.id = i + 1, .failures = 0};
        h[i].want = score("low", h[i].id * 1000, 0, 99999);
        assert_int_equal(pthread_create(&th[i], NULL, hammer_main, &h[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(h[i].failures, 0);
    }
}

/* ---- versions ------------------------------------------------------------- */

static void test_version_follows_content(void **state)
{
    const char *dir = *state;
    struct rules *a = load_ok(dir, NULL);
    struct rules *b = load_ok(dir, NULL);
    char va[16];
    snprintf(va, sizeof va, "%s", rules_version(a));
    assert_string_equal(rules_version(b), va);
    /* The copy has the shipped content, so the shipped version. */
    struct rules *s = load_ok(shipped_dir(), NULL);
    assert_string_equal(rules_version(s), va);
    rules_destroy(s);
    rules_destroy(b);

    edit(dir, "sla", NULL, NULL, NULL, "-- a comment changes the version\n");
    b = load_ok(dir, NULL);
    assert_int_equal(strlen(rules_version(b)), 12);
    if (strcmp(rules_version(b), va) == 0)
        fail_msg("version %s did not change with sla.lua", va);
    rules_destroy(b);
    rules_destroy(a);
}

/* ---- sandbox -------------------------------------------------------------- */

/* Prepends code (one line) to queue.lua: the load fails at queue.lua:1. */
static void expect_rejected_line1(const char *dir, const char *code, const char *detail)
{
    char line[512];
    snprintf(line, sizeof line, "%s\n", code);
    edit(dir, "queue", line, NULL, NULL, NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "queue.lua:1:");
    if (detail)
        expect_contains(msg, detail);
}

static void test_sandbox_io_open(void **state)
{
    expect_rejected_line1(*state, "local f = io.open('/etc/passwd')", "global 'io'");
}

static void test_sandbox_os_execute(void **state)
{
    expect_rejected_line1(*state, "os.execute('touch /tmp/supportd-pwned')", "'execute'");
    assert_int_equal(access("/tmp/supportd-pwned", F_OK), -1);
}

static void test_sandbox_os_getenv(void **state)
{
    expect_rejected_line1(*state, "local home = os.getenv('HOME')", "'getenv'");
}

static void test_sandbox_os_others(void **state)
{
    /* Only time, date and clock are left of os. */
    expect_rejected_line1(*state,
                          "assert(os.remove == nil and os.exit == nil and os.rename == nil and "
                          "os.tmpname == nil and os.time and os.date and os.clock) error('stop')",
                          "stop");
}

static void test_sandbox_require(void **state)
{
    expect_rejected_line1(*state, "local ffi = require('io')", "global 'require'");
}

static void test_sandbox_no_package_or_debug(void **state)
{
    expect_rejected_line1(*state, "local x = package.loaded", "global 'package'");
}

static void test_sandbox_debug(void **state)
{
    expect_rejected_line1(*state, "debug.sethook()", "global 'debug'");
}

static void test_sandbox_string_dump(void **state)
{
    expect_rejected_line1(*state, "local b = string.dump(function() return 1 end)", "'dump'");
}

static void test_sandbox_load_removed(void **state)
{
    expect_rejected_line1(*state, "local f = load('return 1')", "global 'load'");
}

static void test_sandbox_loadfile(void **state)
{
    expect_rejected_line1(*state, "local f = loadfile('/etc/passwd')", "global 'loadfile'");
}

static void test_sandbox_dofile(void **state)
{
    expect_rejected_line1(*state, "dofile('/etc/passwd')", "global 'dofile'");
}

static void test_sandbox_collectgarbage(void **state)
{
    expect_rejected_line1(*state, "collectgarbage('stop')", "global 'collectgarbage'");
}

static void test_sandbox_coroutine(void **state)
{
    /* Not opened: a coroutine would run without the instruction hook. */
    expect_rejected_line1(*state, "local co = coroutine.create(print)", "global 'coroutine'");
}

struct chunk {
    char *data;
    size_t len;
};

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
    (void)L;
    struct chunk *c = ud;
    c->data = realloc(c->data, c->len + sz);
    memcpy(c->data + c->len, p, sz);
    c->len += sz;
    return 0;
}

/* A precompiled (bytecode) queue.lua that would otherwise be valid: refused,
 * and the error names the file ("Errors name file:line", engine.h). */
static void test_sandbox_bytecode_file(void **state)
{
    const char *dir = *state;
    char path[512];
    file_path(path, sizeof path, dir, "queue");
    lua_State *L = luaL_newstate();
    assert_int_equal(luaL_loadfile(L, path), LUA_OK);
    struct chunk c = {NULL, 0};
    assert_int_equal(lua_dump(L, dump_writer, &c, 0), 0);
    lua_close(L);
    assert_true(c.len > 4 && c.data[0] == 0x1b && memcmp(c.data + 1, "Lua", 3) == 0);
    write_bytes(path, c.data, c.len);
    free(c.data);

    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "binary chunk");
    expect_contains(msg, "queue.lua");
}

static void test_sandbox_memory_bomb_rep(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", "local s = string.rep('x', 1 << 30)\n", NULL, NULL, NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "queue.lua");
    expect_contains(msg, "memory cap"); /* engine.h: exceeding the cap is an error naming it */
}

static void test_sandbox_memory_bomb_concat(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", "local s = 'x' for i = 1, 40 do s = s .. s end\n", NULL, NULL, NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "queue.lua");
    expect_contains(msg, "memory cap of 64 MiB exceeded");
}

static void test_sandbox_endless_loop(void **state)
{
    expect_rejected_line1(*state, "while true do end", "instruction budget");
}

/* pcall cannot swallow the budget error and loop on. */
static void test_sandbox_pcall_cannot_swallow_budget(void **state)
{
    const char *dir = *state;
    edit(dir, "queue",
         "local function spin() while true do end end\n"
         "local swallowed = 0\n"
         "for i = 1, 1000 do\n"
         "  local ok = pcall(spin)\n"
         "  if not ok then swallowed = swallowed + 1 end\n"
         "end\n"
         "while true do swallowed = swallowed + 1 end\n",
         NULL, NULL, NULL);
    time_t start = time(NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "instruction budget");
    expect_contains(msg, "queue.lua");
    assert_true(time(NULL) - start < 20);
}

/* ---- checks that may hang or abort: run in a child with a deadline ------- */

typedef int (*child_fn)(const char *dir, char *msg, size_t n);

/* Runs fn(dir) in a forked child; fails when it does not exit 0 within
 * timeout_s seconds (killed then), or dies of a signal. */
static void run_isolated(const char *dir, child_fn fn, int timeout_s, const char *what)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        char msg[700] = "";
        int rc = fn(dir, msg, sizeof msg);
        (void)!write(pfd[1], msg, strlen(msg));
        _exit(rc);
    }
    close(pfd[1]);
    int status = 0;
    bool done = false;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            done = true;
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= timeout_s)
            break;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    char msg[700] = "";
    ssize_t n = read(pfd[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = '\0';
    close(pfd[0]);
    if (!done)
        fail_msg("%s: still running after %d s, killed (the instruction budget did not stop it)",
                 what, timeout_s);
    if (WIFSIGNALED(status))
        fail_msg("%s: the process died of signal %d (%s)", what, WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    if (WEXITSTATUS(status) != 0)
        fail_msg("%s: %s", what, msg);
}

static const struct rules_limits quick = {.instructions = 1000000, .memory_bytes = 0};

static int child_load_fails(const char *dir, char *msg, size_t n)
{
    struct sd_error err = {{0}};
    struct rules *r = rules_load(dir, &quick, &err);
    if (r) {
        rules_destroy(r);
        snprintf(msg, n, "rules_load succeeded; an error was expected");
        return 1;
    }
    if (!strstr(err.message, "queue.lua")) {
        snprintf(msg, n, "error \"%s\" does not name queue.lua", err.message);
        return 1;
    }
    return 0;
}

/* An xpcall message handler runs for an error raised inside the count hook,
 * where Lua has hooks switched off: an endless loop there must still end. */
static void test_sandbox_xpcall_handler_cannot_loop(void **state)
{
    const char *dir = *state;
    edit(dir, "queue",
         "xpcall(function() while true do end end, function(e) while true do end end)\n",
         NULL, NULL, NULL);
    run_isolated(dir, child_load_fails, 5, "xpcall handler looping after the budget error");
}

/* Also after pcall swallowed it, with the handler set up in advance. */
static void test_sandbox_xpcall_cannot_swallow_budget(void **state)
{
    const char *dir = *state;
    edit(dir, "queue",
         "local function spin() while true do end end\n"
         "while true do xpcall(spin, function(e) return e end) end\n",
         NULL, NULL, NULL);
    run_isolated(dir, child_load_fails, 5, "xpcall in a loop");
}

static int child_load_call_destroy(const char *dir, char *msg, size_t n)
{
    struct sd_error err = {{0}};
    struct rules *r = rules_load(dir, &quick, &err);
    if (r) {
        bson_t *args = BCON_NEW("0", "{", "priority", BCON_UTF8("low"), "}", "1", BCON_INT64(1));
        for (int i = 0; i < 3; i++) {
            bson_t out = BSON_INITIALIZER;
            rules_call(r, "queue", "score", args, &out, &err);
            bson_destroy(&out);
        }
        bson_destroy(args);
        rules_destroy(r);
    }
    (void)msg;
    (void)n;
    return 0;
}

/* A __gc finalizer runs with hooks off (during any collection, and in
 * lua_close from rules_destroy): an endless loop there must not hang. */
static void test_sandbox_gc_finalizer_cannot_loop(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", "setmetatable({}, { __gc = function() while true do end end })\n", NULL,
         NULL, NULL);
    run_isolated(dir, child_load_call_destroy, 5, "__gc finalizer with an endless loop");
}

/* ---- issue 22: hostile rules --------------------------------------------- */

/* table.remove / table.insert shift from #t in C; a __len of 2^62 made them
 * loop for ever (nil assignments allocate nothing, the hook never runs). */
static void test_sandbox_table_remove_huge_len(void **state)
{
    const char *dir = *state;
    edit(dir, "queue",
         "table.remove(setmetatable({}, {__len = function() return 1 << 62 end}), 1)\n", NULL,
         NULL, NULL);
    run_isolated(dir, child_load_fails, 5, "table.remove with a __len of 2^62");
}

static void test_sandbox_table_insert_huge_len(void **state)
{
    const char *dir = *state;
    edit(dir, "queue",
         "table.insert(setmetatable({}, {__len = function() return 1 << 62 end}), 1, 1)\n", NULL,
         NULL, NULL);
    run_isolated(dir, child_load_fails, 5, "table.insert with a __len of 2^62");
}

/* The shipped semantics stay: insert in the middle, remove from it. */
static void test_sandbox_table_insert_remove_still_work(void **state)
{
    const char *dir = *state;
    edit(dir, "queue",
         "do local t = {1, 2, 4}; table.insert(t, 3, 3); table.insert(t, 5)\n"
         "  assert(table.concat(t, ',') == '1,2,3,4,5', table.concat(t, ','))\n"
         "  assert(table.remove(t, 1) == 1 and table.remove(t) == 5)\n"
         "  assert(table.concat(t, ',') == '2,3,4', table.concat(t, ','))\n"
         "  assert(not pcall(table.insert, t, 9, 1)) end\n",
         NULL, NULL, NULL);
    struct sd_error err = {{0}};
    struct rules *r = rules_load(dir, NULL, &err);
    if (!r)
        fail_msg("%s", err.message);
    rules_destroy(r);
}

/* The __gc ban read the metatable with lua_getfield, which runs the
 * metatable's own __index: that could rawset __gc and answer nil. */
static void test_sandbox_gc_through_index_cannot_loop(void **state)
{
    const char *dir = *state;
    edit(dir, "queue",
         "local mt = setmetatable({}, {__index = function(t, k)\n"
         "  rawset(t, '__gc', function() while true do end end) return nil end})\n"
         "local keep = {}\n"
         "for i = 1, 100 do keep[i] = setmetatable({}, mt) end\n"
         "keep = nil\n"
         "local junk = {} for i = 1, 100000 do junk[i] = {i} end\n",
         NULL, NULL, NULL);
    run_isolated(dir, child_load_call_destroy, 5, "__gc installed through __index");
}

/* A step per pattern item: "a?" that does not match moved on uncounted. */
static void test_sandbox_pattern_optional_items(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", "string.find(('b'):rep(5000), ('a?'):rep(1000000) .. 'c')\n", NULL, NULL,
         NULL);
    run_isolated(dir, child_load_fails, 5, "a million optional pattern items");
}

/* Results are read raw, within a cap: a result's metatable never runs (an
 * __index that throws reached abort(), one that loops hung), and a table
 * repeated inside itself (2^40 values) fails at once. */
static const char hostile_results[] =
    "\nM.throws = function() return setmetatable({[2] = 'x', [5] = 'y'},\n"
    "  {__index = function() error('boom') end}) end\n"
    "M.loops = function() return setmetatable({[2] = 'x', [5] = 'y'},\n"
    "  {__index = function() while true do end end}) end\n"
    "M.huge = function() local t = {} for i = 1, 40 do t = {t, t} end return t end\n"
    "return M\n";

static int child_hostile_results(const char *dir, char *msg, size_t n)
{
    struct sd_error err = {{0}};
    static const struct rules_limits limits = {.timeout_ms = 1000};
    struct rules *r = rules_load(dir, &limits, &err);
    if (!r) {
        snprintf(msg, n, "rules_load: %s", err.message);
        return 1;
    }
    bson_t args = BSON_INITIALIZER;
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        bson_t out = BSON_INITIALIZER;
        const char *fn = i == 0 ? "throws" : "loops";
        bson_iter_t it;
        if (rules_call(r, "queue", fn, &args, &out, &err) != 0) {
            snprintf(msg, n, "%s: %s", fn, err.message);
            rc = 1;
        } else if (!bson_iter_init_find(&it, &out, "result") ||
                   !BSON_ITER_HOLDS_DOCUMENT(&it)) {
            snprintf(msg, n, "%s: no result document", fn);
            rc = 1;
        }
        bson_destroy(&out);
    }
    bson_t out = BSON_INITIALIZER;
    if (rc == 0 && rules_call(r, "queue", "huge", &args, &out, &err) == 0) {
        snprintf(msg, n, "huge: a 2^40-value result was accepted");
        rc = 1;
    } else if (rc == 0 && !strstr(err.message, "more than")) {
        snprintf(msg, n, "huge: unexpected error %s", err.message);
        rc = 1;
    }
    bson_destroy(&out);
    bson_destroy(&args);
    rules_destroy(r);
    return rc;
}

static void test_results_read_raw_and_bounded(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", NULL, "\nreturn M\n", hostile_results, NULL);
    run_isolated(dir, child_hostile_results, 10, "hostile rule results");
}

static void test_load_syntax_error(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", "local x = = 1\n", NULL, NULL, NULL);
    const char *msg = load_error(dir, NULL);
    assert_int_equal(expect_file_line(msg, "queue.lua"), 1);
    expect_contains(msg, "near '='");
}

static void test_load_syntax_error_later_line(void **state)
{
    const char *dir = *state;
    edit(dir, "sla", "\n\n\nlocal x = 1 +\nlocal y = 2\n", NULL, NULL, NULL);
    const char *msg = load_error(dir, NULL);
    assert_int_equal(expect_file_line(msg, "sla.lua"), 5);
}

static void test_load_missing_function(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", NULL, "function M.score(", "function M.scores(", NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "queue.lua");
    expect_contains(msg, "`score`");
}

static void test_load_missing_table(void **state)
{
    const char *dir = *state;
    edit(dir, "health", NULL, "M.thresholds", "M.limits", NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "health.lua");
    expect_contains(msg, "table `thresholds`");
}

static void test_load_not_a_table(void **state)
{
    const char *dir = *state;
    edit(dir, "retry", NULL, "\nreturn M\n", "\nreturn 42\n", NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "retry.lua");
    expect_contains(msg, "must return a table");
}

static void test_load_missing_file(void **state)
{
    const char *dir = *state;
    char path[512];
    file_path(path, sizeof path, dir, "notify");
    assert_int_equal(unlink(path), 0);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "notify.lua");
}

static void test_load_failing_self_test(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", NULL, "\nreturn M\n",
         "\nM.tests[#M.tests + 1] = { name = \"deliberately wrong\", fn = \"score\",\n"
         "  args = { { priority = \"urgent\", created_at = 1 }, 2 }, expect = -12345 }\n"
         "return M\n",
         NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "queue.lua");
    expect_contains(msg, "self-test deliberately wrong failed");
    expect_contains(msg, "-12345");
}

static void test_load_self_test_error(void **state)
{
    const char *dir = *state;
    /* A self-test naming a function that does not exist. */
    edit(dir, "queue", NULL, "\nreturn M\n",
         "\nM.tests[#M.tests + 1] = { name = \"ghost\", fn = \"nothing\" }\nreturn M\n", NULL);
    const char *msg = load_error(dir, NULL);
    expect_contains(msg, "queue.lua");
    expect_contains(msg, "ghost");
}

/* ---- limits --------------------------------------------------------------- */

static void test_custom_limits(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", NULL, "\nreturn M\n",
         "\nfunction M.spin(n) local x = 0 for i = 1, n do x = x + i end return x end\n"
         "function M.grow(n) return #string.rep('x', n) end\n"
         "function M.fill(n) local t = {} for i = 1, n do t[i] = i end return #t end\n"
         "return M\n",
         NULL);
    struct rules_limits lim = {.instructions = 100000, .memory_bytes = 8u << 20};
    struct rules *r = load_ok(dir, &lim);
    struct sd_error err = {{0}};
    bson_t out;

    bson_t *small = BCON_NEW("0", BCON_INT64(10000));
    call_ok(r, "queue", "spin", small, &out);
    assert_true(num(&out, "result") == 50005000);
    bson_destroy(&out);

    bson_t *many = BCON_NEW("0", BCON_INT64(1000000));
    bson_init(&out);
    assert_int_equal(rules_call(r, "queue", "spin", many, &out, &err), -1);
    expect_contains(err.message, "instruction budget of 100000 exceeded");
    expect_file_line(err.message, "queue.lua");
    bson_destroy(&out);
    /* The budget is per call: the next call starts afresh. */
    call_ok(r, "queue", "spin", small, &out);
    bson_destroy(&out);

    /* The default budget would have allowed it. */
    struct rules *d = load_ok(dir, NULL);
    call_ok(d, "queue", "spin", many, &out);
    bson_destroy(&out);

    bson_t *mib = BCON_NEW("0", BCON_INT64(1 << 20));
    call_ok(r, "queue", "grow", mib, &out);
    assert_true(num(&out, "result") == 1 << 20);
    bson_destroy(&out);

    bson_t *lots = BCON_NEW("0", BCON_INT64(16 << 20));
    bson_init(&out);
    assert_int_equal(rules_call(r, "queue", "grow", lots, &out, &err), -1);
    expect_contains(err.message, "memory");
    bson_destroy(&out);
    call_ok(d, "queue", "grow", lots, &out); /* fine under 64 MiB */
    bson_destroy(&out);

    /* A table growing past 8 MiB: a memory error raised by the Lua core. */
    bson_t *rows = BCON_NEW("0", BCON_INT64(20000));
    call_ok(r, "queue", "fill", rows, &out);
    bson_destroy(&out);
    struct rules_limits roomy = {.instructions = 100000000, .memory_bytes = 8u << 20};
    struct rules *big = load_ok(dir, &roomy);
    bson_t *huge = BCON_NEW("0", BCON_INT64(2000000));
    bson_init(&out);
    assert_int_equal(rules_call(big, "queue", "fill", huge, &out, &err), -1);
    expect_contains(err.message, "memory cap of 8 MiB exceeded");
    bson_destroy(&out);

    /* After both errors the sets still work. */
    call_ok(r, "queue", "grow", mib, &out);
    bson_destroy(&out);
    call_ok(big, "queue", "fill", rows, &out);
    bson_destroy(&out);

    bson_destroy(huge);
    bson_destroy(rows);
    bson_destroy(lots);
    bson_destroy(mib);
    bson_destroy(many);
    bson_destroy(small);
    rules_destroy(big);
    rules_destroy(d);
    rules_destroy(r);
}

/* The shipped rules must fit well inside tight limits (self-tests included). */
static void test_shipped_fit_small_limits(void **state)
{
    (void)state;
    struct rules_limits lim = {.instructions = 100000, .memory_bytes = 8u << 20};
    rules_destroy(load_ok(shipped_dir(), &lim));
}

/* ---- deadline (issue #15) ------------------------------------------------ */

static double elapsed_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Time spent inside C (Lua's pattern matcher) is invisible to the instruction
 * budget; the deadline stops it, pcall cannot swallow it, and the set stays
 * usable. */
static void test_deadline_stops_c_level_work(void **state)
{
    const char *dir = *state;
    edit(dir, "queue", NULL, "\nreturn M\n",
         "\nfunction M.find() return string.find(string.rep('a', 20000), '.-.-.-.-b') end\n"
         "function M.gsub() return (('a'):rep(20000):gsub('.-.-.-.-b', 'x')) end\n"
         "function M.swallow()\n"
         "  for i = 1, 1000 do pcall(string.find, ('a'):rep(20000), '.-.-.-.-b') end\n"
         "  return 'survived'\n"
         "end\n"
         "function M.spin() local x = 0 while true do x = x + 1 end end\n"
         "function M.rep_empty() return #string.rep('', 1e15) + #string.rep('', 1e15, '') end\n"
         "function M.rep_huge() return #string.format('%s%s', ('ab'):rep(1e9), 'x') end\n"
         "function M.move() return #table.move({}, 1, 1e15, 1, {}) end\n"
         "return M\n",
         NULL);
    /* An instruction budget out of reach: the deadline must stop "spin". */
    struct rules_limits lim = {.instructions = 1000000000000LL, .timeout_ms = 100};
    struct rules *r = load_ok(dir, &lim);
    static const char *const slow[] = {"find", "gsub", "swallow", "spin"};
    for (size_t i = 0; i < sizeof slow / sizeof *slow; i++) {
        struct sd_error err = {{0}};
        bson_t out = BSON_INITIALIZER;
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        assert_int_equal(rules_call(r, "queue", slow[i], NULL, &out, &err), -1);
        double took = elapsed_since(&t0);
        expect_contains(err.message, "exceeded its time budget of 100 ms");
        char fn[64];
        snprintf(fn, sizeof fn, "queue.%s", slow[i]);
        expect_contains(err.message, fn);
        expect_file_line(err.message, "queue.lua");
        /* Bounded, not fast: the point is that it returns at all. */
        assert_true(took < 5.0);
        bson_destroy(&out);
    }
    bson_t out;
    call_ok(r, "queue", "rep_empty", NULL, &out);
    assert_true(num(&out, "result") == 0);
    bson_destroy(&out);
    struct sd_error err = {{0}};
    bson_init(&out);
    assert_int_equal(rules_call(r, "queue", "rep_huge", NULL, &out, &err), -1);
    expect_contains(err.message, "memory cap of 64 MiB exceeded");
    expect_contains(err.message, "queue.lua");
    bson_destroy(&out);
    bson_init(&out);
    assert_int_equal(rules_call(r, "queue", "move", NULL, &out, &err), -1);
    expect_contains(err.message, "table.move: more than");
    bson_destroy(&out);
    /* Each call has its own deadline: the next one runs normally. */
    bson_t *args = BCON_NEW("0", "{", "priority", "urgent", "created_at", BCON_INT64(2000), "}",
                            "1", BCON_INT64(5000));
    call_ok(r, "queue", "score", args, &out);
    assert_true(num(&out, "result") == 2000);
    bson_destroy(&out);
    bson_destroy(args);
    rules_destroy(r);
}

/* A self-test over the deadline rejects the set, naming the file, the test
 * and the function it called. */
static void test_self_test_deadline(void **state)
{
    const char *dir = *state;
    edit(dir, "sla", NULL, "\nreturn M\n",
         "\nfunction M.slow() return (('a'):rep(20000):find('.-.-.-.-b')) end\n"
         "M.tests[#M.tests + 1] = { name = \"slow one\", fn = \"slow\" }\n"
         "return M\n",
         NULL);
    struct rules_limits lim = {.timeout_ms = 100};
    const char *msg = load_error(dir, &lim);
    expect_contains(msg, "sla.lua: self-test slow one calling slow");
    expect_contains(msg, "exceeded its time budget of 100 ms");
}

static void test_tiny_budget_fails_self_tests(void **state)
{
    const char *dir = *state;
    struct rules_limits lim = {.instructions = 1000, .memory_bytes = 0};
    const char *msg = load_error(dir, &lim);
    expect_contains(msg, "instruction budget of 1000 exceeded");
}

static int child_tiny_memory(const char *dir, char *msg, size_t n)
{
    static const size_t caps[] = {1024, 8192, 12000, 20000, 40000, 65536};
    for (size_t i = 0; i < sizeof caps / sizeof *caps; i++) {
        struct rules_limits lim = {.instructions = 0, .memory_bytes = caps[i]};
        struct sd_error err = {{0}};
        struct rules *r = rules_load(dir, &lim, &err);
        if (r || !err.message[0]) {
            rules_destroy(r);
            snprintf(msg, n, "cap %zu: rules_load did not fail", caps[i]);
            return 1;
        }
    }
    return 0;
}

/* A memory cap too small for the sandbox itself is an error, not abort(). */
static void test_tiny_memory_fails_cleanly(void **state)
{
    run_isolated(*state, child_tiny_memory, 20, "rules_load under a tiny memory cap");
}

static int child_big_argument(const char *dir, char *msg, size_t n)
{
    struct rules_limits lim = {.instructions = 0, .memory_bytes = 8u << 20};
    struct sd_error err = {{0}};
    struct rules *r = rules_load(dir, &lim, &err);
    if (!r) {
        snprintf(msg, n, "rules_load: %s", err.message);
        return 1;
    }
    size_t len = 10u << 20;
    char *big = malloc(len + 1);
    memset(big, 'a', len);
    big[len] = '\0';
    bson_t conv = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&conv, "priority", big);
    free(big);
    bson_t args = BSON_INITIALIZER;
    BSON_APPEND_DOCUMENT(&args, "0", &conv);
    BSON_APPEND_INT64(&args, "1", 1);
    bson_t out = BSON_INITIALIZER;
    int rc = rules_call(r, "queue", "score", &args, &out, &err);
    bson_destroy(&out);
    bson_destroy(&args);
    bson_destroy(&conv);
    if (rc != -1 || !strstr(err.message, "memory")) {
        snprintf(msg, n, "rules_call returned %d (%s); want -1 and a memory error", rc,
                 rc ? err.message : "");
        rules_destroy(r);
        return 1;
    }
    bson_t *ok = BCON_NEW("0", "{", "priority", BCON_UTF8("low"), "}", "1", BCON_INT64(7));
    bson_init(&out);
    rc = rules_call(r, "queue", "score", ok, &out, &err);
    bson_destroy(&out);
    bson_destroy(ok);
    rules_destroy(r);
    if (rc) {
        snprintf(msg, n, "the next call failed: %s", err.message);
        return 1;
    }
    return 0;
}

/* Arguments bigger than the cap: an error from rules_call, not abort(). */
static void test_call_argument_over_memory_cap(void **state)
{
    run_isolated(*state, child_big_argument, 20, "rules_call with a 10 MiB argument, 8 MiB cap");
}

/* ---- live reload ---------------------------------------------------------- */

static void render_subject(struct rules *r, char *buf, size_t n)
{
    bson_t *ctx = sample_ctx();
    bson_t args = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&args, "0", "ticket.unsnoozed");
    BSON_APPEND_DOCUMENT(&args, "1", ctx);
    bson_t out;
    call_ok(r, "templates", "render", &args, &out);
    snprintf(buf, n, "%s", str(&out, "result.subject"));
    bson_destroy(&out);
    bson_destroy(&args);
    bson_destroy(ctx);
}

static void test_live_reload(void **state)
{
    const char *dir = *state;
    struct sd_error err = {{0}};
    struct rules_live *live = rules_live_new(dir, NULL, &err);
    if (!live)
        fail_msg("rules_live_new: %s", err.message);

    struct rules *a = rules_live_acquire(live);
    char va[16], vb[16], subject[256];
    snprintf(va, sizeof va, "%s", rules_version(a));
    render_subject(a, subject, sizeof subject);
    assert_string_equal(subject, "Back from snooze: Fish & <chips> \"x\"");

    /* Nothing changed: 0, and the same set stays. */
    assert_int_equal(rules_live_reload(live, &err), 0);
    struct rules *same = rules_live_acquire(live);
    assert_ptr_equal(same, a);
    rules_live_release(live, same);

    /* Template and its self-test both change. */
    edit(dir, "templates", NULL, "Back from snooze:", "Awake again:", NULL);
    if (rules_live_reload(live, &err) != 0)
        fail_msg("reload: %s", err.message);
    struct rules *b = rules_live_acquire(live);
    assert_ptr_not_equal(b, a);
    snprintf(vb, sizeof vb, "%s", rules_version(b));
    assert_string_not_equal(vb, va);
    render_subject(b, subject, sizeof subject);
    assert_string_equal(subject, "Awake again: Fish & <chips> \"x\"");

    /* The tick that holds the old set keeps it until it lets go. */
    assert_string_equal(rules_version(a), va);
    render_subject(a, subject, sizeof subject);
    assert_string_equal(subject, "Back from snooze: Fish & <chips> \"x\"");
    rules_live_release(live, a);

    /* A broken file: the last good set stays. */
    edit(dir, "templates", "local broken = = 1\n", NULL, NULL, NULL);
    memset(&err, 0, sizeof err);
    assert_int_equal(rules_live_reload(live, &err), -1);
    assert_int_equal(expect_file_line(err.message, "templates.lua"), 1);
    struct rules *c = rules_live_acquire(live);
    assert_ptr_equal(c, b);
    assert_string_equal(rules_version(c), vb);
    render_subject(c, subject, sizeof subject);
    assert_string_equal(subject, "Awake again: Fish & <chips> \"x\"");
    rules_live_release(live, c);
    rules_live_release(live, b);

    /* A rejected self-test keeps the last good set too. */
    edit(dir, "templates", NULL, "local broken = = 1\n", "", NULL);
    edit(dir, "templates", NULL, "\"Awake again: {{conversation.subject}}\"",
         "\"Changed: {{conversation.subject}}\"", NULL);
    edit(dir, "templates", NULL, "\nreturn M\n",
         "\nM.tests[#M.tests + 1] = { name = \"pinned subject\", fn = \"render\",\n"
         "  args = { \"ticket.unsnoozed\", { conversation = { subject = \"s\" } } },\n"
         "  expect = { subject = \"Awake again: s\" } }\nreturn M\n",
         NULL);
    assert_int_equal(rules_live_reload(live, &err), -1);
    expect_contains(err.message, "templates.lua");
    expect_contains(err.message, "pinned subject");
    c = rules_live_acquire(live);
    assert_string_equal(rules_version(c), vb);
    rules_live_release(live, c);

    rules_live_destroy(live);
}

/* The set in use when the manager goes away is freed with it, even if a
 * retired one is still referenced (ASan would report a leak otherwise). */
static void test_live_destroy_with_retired(void **state)
{
    const char *dir = *state;
    struct sd_error err = {{0}};
    struct rules_live *live = rules_live_new(dir, NULL, &err);
    assert_non_null(live);
    struct rules *a = rules_live_acquire(live);
    edit(dir, "queue", NULL, NULL, NULL, "-- v2\n");
    assert_int_equal(rules_live_reload(live, &err), 0);
    struct rules *b = rules_live_acquire(live);
    assert_ptr_not_equal(a, b);
    rules_live_release(live, b);
    (void)a; /* still held */
    rules_live_destroy(live);
}

static void test_live_new_fails_on_bad_dir(void **state)
{
    const char *dir = *state;
    struct sd_error err = {{0}};
    edit(dir, "retry", "}\n", NULL, NULL, NULL);
    assert_null(rules_live_new(dir, NULL, &err));
    assert_int_equal(expect_file_line(err.message, "retry.lua"), 1);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_live_watch(void **state)
{
    const char *dir = *state;
    struct sd_error err = {{0}};
    struct rules_live *live = rules_live_new(dir, NULL, &err);
    if (!live)
        fail_msg("rules_live_new: %s", err.message);
    struct rules *a = rules_live_acquire(live);
    char va[16];
    snprintf(va, sizeof va, "%s", rules_version(a));
    rules_live_release(live, a);
    if (rules_live_watch(live, &err) != 0)
        fail_msg("rules_live_watch: %s", err.message);
    sleep_ms(100); /* let the watcher set up its inotify watch */

    edit(dir, "templates", NULL, "Back from snooze:", "Watched:", NULL);
    bool changed = false;
    char subject[256] = "";
    for (int i = 0; i < 100 && !changed; i++) { /* up to 5 s */
        sleep_ms(50);
        struct rules *r = rules_live_acquire(live);
        if (strcmp(rules_version(r), va) != 0) {
            changed = true;
            render_subject(r, subject, sizeof subject);
        }
        rules_live_release(live, r);
    }
    rules_live_destroy(live);
    assert_true(changed);
    assert_string_equal(subject, "Watched: Fish & <chips> \"x\"");
}

#define COPY_TEST(f) cmocka_unit_test_setup_teardown(f, copy_setup, copy_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_format),
        cmocka_unit_test(test_queue_score_order),
        cmocka_unit_test(test_templates_render_unsnoozed),
        cmocka_unit_test(test_notify_recipients),
        cmocka_unit_test(test_retry_decide),
        cmocka_unit_test(test_rules_get),
        cmocka_unit_test(test_call_unknown_function),
        cmocka_unit_test(test_runtime_error_then_next_call),
        cmocka_unit_test(test_concurrent_calls),
        COPY_TEST(test_version_follows_content),
        COPY_TEST(test_sandbox_io_open),
        COPY_TEST(test_sandbox_os_execute),
        COPY_TEST(test_sandbox_os_getenv),
        COPY_TEST(test_sandbox_os_others),
        COPY_TEST(test_sandbox_require),
        COPY_TEST(test_sandbox_no_package_or_debug),
        COPY_TEST(test_sandbox_debug),
        COPY_TEST(test_sandbox_string_dump),
        COPY_TEST(test_sandbox_load_removed),
        COPY_TEST(test_sandbox_loadfile),
        COPY_TEST(test_sandbox_dofile),
        COPY_TEST(test_sandbox_collectgarbage),
        COPY_TEST(test_sandbox_coroutine),
        COPY_TEST(test_sandbox_bytecode_file),
        COPY_TEST(test_sandbox_memory_bomb_rep),
        COPY_TEST(test_sandbox_memory_bomb_concat),
        COPY_TEST(test_sandbox_endless_loop),
        COPY_TEST(test_sandbox_pcall_cannot_swallow_budget),
        COPY_TEST(test_sandbox_xpcall_handler_cannot_loop),
        COPY_TEST(test_sandbox_xpcall_cannot_swallow_budget),
        COPY_TEST(test_sandbox_gc_finalizer_cannot_loop),
        COPY_TEST(test_sandbox_table_remove_huge_len),
        COPY_TEST(test_sandbox_table_insert_huge_len),
        COPY_TEST(test_sandbox_table_insert_remove_still_work),
        COPY_TEST(test_sandbox_gc_through_index_cannot_loop),
        COPY_TEST(test_sandbox_pattern_optional_items),
        COPY_TEST(test_results_read_raw_and_bounded),
        COPY_TEST(test_load_syntax_error),
        COPY_TEST(test_load_syntax_error_later_line),
        COPY_TEST(test_load_missing_function),
        COPY_TEST(test_load_missing_table),
        COPY_TEST(test_load_not_a_table),
        COPY_TEST(test_load_missing_file),
        COPY_TEST(test_load_failing_self_test),
        COPY_TEST(test_load_self_test_error),
        COPY_TEST(test_custom_limits),
        cmocka_unit_test(test_shipped_fit_small_limits),
        COPY_TEST(test_deadline_stops_c_level_work),
        COPY_TEST(test_self_test_deadline),
        COPY_TEST(test_tiny_budget_fails_self_tests),
        COPY_TEST(test_tiny_memory_fails_cleanly),
        COPY_TEST(test_call_argument_over_memory_cap),
        COPY_TEST(test_live_reload),
        COPY_TEST(test_live_destroy_with_retired),
        COPY_TEST(test_live_new_fails_on_bad_dir),
        COPY_TEST(test_live_watch),
    };
    return cmocka_run_group_tests_name("rules", tests, shipped_setup, shipped_teardown);
}
