#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <bson/bson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"
#include "core/log.h"

static int reset(void **state)
{
    (void)state;
    log_clear_secrets();
    log_init(LOG_INFO, true);
    return 0;
}

static void check_redact(const char *text, const char *want)
{
    char *got = log_redact_dup(text);
    assert_non_null(got);
    if (strcmp(got, want) != 0) {
        char copy[512];
        snprintf(copy, sizeof copy, "%s", got);
        free(got);
        fail_msg("log_redact_dup(\"%s\") = \"%s\", want \"%s\"", text, copy, want);
    }
    free(got);
}

/* ---- stderr capture ------------------------------------------------------ */

/* Points fd 2 at a temporary file while `run` logs, then returns what was
 * written (malloc'd, NUL-terminated). */
static char *capture_stderr(void (*run)(void *), void *arg)
{
    char path[] = "/tmp/supportd-test-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    run(arg);
    fflush(stderr);
    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);

    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    char *out = malloc((size_t)st.st_size + 1);
    assert_non_null(out);
    assert_int_equal(pread(fd, out, (size_t)st.st_size, 0), st.st_size);
    out[st.st_size] = '\0';
    close(fd);
    return out;
}

/* Parses one JSON line (without its newline) into a bson document. */
static bson_t *parse_line(const char *line)
{
    size_t len = strlen(line);
    if (len == 0 || line[len - 1] != '\n')
        fail_msg("not one newline-terminated line: \"%s\"", line);
    if (strchr(line, '\n') != line + len - 1)
        fail_msg("more than one line: \"%s\"", line);
    bson_error_t berr;
    bson_t *doc = bson_new_from_json((const uint8_t *)line, (ssize_t)len - 1, &berr);
    if (!doc)
        fail_msg("not JSON (%s): %s", berr.message, line);
    return doc;
}

static const char *utf8_member(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, key) || !BSON_ITER_HOLDS_UTF8(&it))
        return NULL;
    return bson_iter_utf8(&it, NULL);
}

static void assert_member(const bson_t *doc, const char *key, const char *want)
{
    const char *got = utf8_member(doc, key);
    if (!got || strcmp(got, want) != 0)
        fail_msg("member \"%s\" = %s%s%s, want \"%s\"", key, got ? "\"" : "",
                 got ? got : "(missing)", got ? "\"" : "", want);
}

/* ---- log_redact_dup ------------------------------------------------------ */

static void test_redact_without_secrets(void **state)
{
    (void)state;
    const char *text = "nothing to hide";
    char *got = log_redact_dup(text);
    assert_non_null(got);
    assert_ptr_not_equal(got, text); /* always a copy the caller frees */
    assert_string_equal(got, text);
    free(got);
    check_redact("", "");
}

static void test_redact_every_occurrence(void **state)
{
    (void)state;
    log_add_secret("hunter22");
    check_redact("hunter22", "[redacted]");
    check_redact("pw=hunter22 again hunter22, twice:hunter22hunter22",
                 "pw=[redacted] again [redacted], twice:[redacted][redacted]");
    check_redact("redis://:hunter22@localhost:6379/0", "redis://:[redacted]@localhost:6379/0");
    check_redact("hunter2 hunter2x Hunter22", "hunter2 hunter2x Hunter22"); /* near misses */
}

static void test_redact_multiple_secrets(void **state)
{
    (void)state;
    log_add_secret("alpha-111");
    log_add_secret("beta-2222");
    log_add_secret("gamma-33333");
    check_redact("a=alpha-111 b=beta-2222 g=gamma-33333 a=alpha-111",
                 "a=[redacted] b=[redacted] g=[redacted] a=[redacted]");
    check_redact("beta-2222alpha-111", "[redacted][redacted]");
    /* Registering a secret twice changes nothing. */
    log_add_secret("beta-2222");
    check_redact("beta-2222", "[redacted]");
}

static void test_redact_ignores_short_secrets(void **state)
{
    (void)state;
    log_add_secret("abc");
    log_add_secret("");
    log_add_secret(NULL);
    check_redact("abc abcabc cabc", "abc abcabc cabc");
    /* Four characters is long enough. */
    log_add_secret("abcd");
    check_redact("abc abcd", "abc [redacted]");
}

static void test_clear_secrets(void **state)
{
    (void)state;
    log_add_secret("s3cret-value");
    check_redact("s3cret-value", "[redacted]");
    log_clear_secrets();
    check_redact("s3cret-value", "s3cret-value");
}

/* One secret inside another (say REDIS_PASSWORD "hunter22" and SMTP_PASSWORD
 * "hunter22-smtp"): the longer one must not leak its tail, whichever was
 * registered first. */
static void test_redact_nested_secrets(void **state)
{
    (void)state;
    log_add_secret("hunter22");
    log_add_secret("hunter22-smtp");
    check_redact("a hunter22-smtp b hunter22 c", "a [redacted] b [redacted] c");
    log_clear_secrets();
    log_add_secret("hunter22-smtp");
    log_add_secret("hunter22");
    check_redact("a hunter22-smtp b hunter22 c", "a [redacted] b [redacted] c");
}

/* Two secrets sharing characters ("abcd1234" and "1234wxyz") in
 * "abcd1234wxyz": both occurrences are secret, so no part of either may
 * remain. */
static void test_redact_overlapping_secrets(void **state)
{
    (void)state;
    log_add_secret("abcd1234");
    log_add_secret("1234wxyz");
    char *got = log_redact_dup("key=abcd1234wxyz;");
    assert_non_null(got);
    char copy[256];
    snprintf(copy, sizeof copy, "%s", got);
    free(got);
    if (strstr(copy, "abcd") || strstr(copy, "1234") || strstr(copy, "wxyz"))
        fail_msg("log_redact_dup(\"key=abcd1234wxyz;\") = \"%s\" leaks part of a secret", copy);
    assert_true(strncmp(copy, "key=[redacted]", 14) == 0);
}

/* A secret that also occurs inside the "[redacted]" mark (a password
 * "redacted", or "acted") must still be redacted once and return. Run in a
 * child with an alarm so a runaway loop fails the test instead of hanging it. */
static void test_redact_secret_matching_the_mark(void **state)
{
    (void)state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(3);
        log_add_secret("redacted");
        char *got = log_redact_dup("pw=redacted");
        _exit(got && strcmp(got, "pw=[redacted]") == 0 ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status))
        fail_msg("log_redact_dup(\"pw=redacted\") with secret \"redacted\" did not return "
                 "(killed by signal %d): the mark \"[redacted]\" matches the secret again",
                 WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- levels ----------------------------------------------------------------- */

static void test_parse_level(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        enum log_level want;
    } ok[] = {
        {"debug", LOG_DEBUG}, {"DEBUG", LOG_DEBUG}, {"info", LOG_INFO},  {"Info", LOG_INFO},
        {"warn", LOG_WARN},   {"WARN", LOG_WARN},   {"warning", LOG_WARN}, {"WaRnInG", LOG_WARN},
        {"error", LOG_ERROR}, {"ERROR", LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        enum log_level got = (enum log_level)-1;
        if (log_parse_level(ok[i].text, &got) != 0 || got != ok[i].want)
            fail_msg("log_parse_level(\"%s\") = %d, want %d", ok[i].text, got, ok[i].want);
    }
    static const char *const bad[] = {"", "trace", "fatal", "err", "warnings", "info ",
                                      " info", "0", "1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        enum log_level got = LOG_ERROR;
        if (log_parse_level(bad[i], &got) != -1)
            fail_msg("log_parse_level(\"%s\") accepted", bad[i]);
        assert_int_equal(got, LOG_ERROR); /* untouched */
    }
}

static void test_init_sets_min_level(void **state)
{
    (void)state;
    log_init(LOG_WARN, true);
    assert_int_equal(log_min_level(), LOG_WARN);
    log_init(LOG_DEBUG, false);
    assert_int_equal(log_min_level(), LOG_DEBUG);
}

/* ---- log_msg --------------------------------------------------------------------- */

static void log_with_secrets(void *arg)
{
    (void)arg;
    bson_t fields = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&fields, "url", "smtp://bot:Sup3r-s3cret@mail.example");
    BSON_APPEND_INT32(&fields, "attempt", 3);
    struct log_ctx ctx = {.job = "notification", .tick = "0f3a9c"};
    log_msg(LOG_WARN, &ctx, "tick.retry", &fields, "login with %s failed, retry %d",
            "Sup3r-s3cret", 3);
    bson_destroy(&fields);
}

static void test_msg_json_line(void **state)
{
    (void)state;
    log_add_secret("Sup3r-s3cret");
    char *out = capture_stderr(log_with_secrets, NULL);
    bson_t *doc = parse_line(out);
    assert_null(strstr(out, "Sup3r-s3cret"));

    assert_non_null(utf8_member(doc, "ts"));
    assert_int_equal(strlen(utf8_member(doc, "ts")), 24); /* 2026-01-31T09:30:00.000Z */
    assert_member(doc, "level", "warn");
    assert_member(doc, "event", "tick.retry");
    assert_member(doc, "job", "notification");
    assert_member(doc, "tick", "0f3a9c");
    assert_member(doc, "msg", "login with [redacted] failed, retry 3");
    assert_member(doc, "url", "smtp://bot:[redacted]@mail.example");
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, doc, "attempt"));
    assert_int_equal(bson_iter_as_int64(&it), 3);
    bson_destroy(doc);
    free(out);
}

static void log_without_ctx(void *arg)
{
    (void)arg;
    log_msg(LOG_ERROR, NULL, NULL, NULL, "two\nlines \"quoted\" \\ tab\t");
}

static void test_msg_json_minimal_and_escaped(void **state)
{
    (void)state;
    char *out = capture_stderr(log_without_ctx, NULL);
    bson_t *doc = parse_line(out); /* one line even with a newline in msg */
    assert_member(doc, "level", "error");
    assert_member(doc, "msg", "two\nlines \"quoted\" \\ tab\t");
    bson_iter_t it;
    assert_false(bson_iter_init_find(&it, doc, "event"));
    assert_false(bson_iter_init_find(&it, doc, "job"));
    assert_false(bson_iter_init_find(&it, doc, "tick"));
    bson_destroy(doc);
    free(out);
}

/* A password with a quote or backslash appears JSON-escaped in the line
 * (pa\"ss); it must be redacted all the same. */
static void log_escaped_secret(void *arg)
{
    bson_t fields = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&fields, "password", arg);
    log_msg(LOG_ERROR, NULL, "auth.fail", &fields, "auth with %s failed", (const char *)arg);
    bson_destroy(&fields);
}

static void test_msg_json_redacts_escaped_secret(void **state)
{
    (void)state;
    const char *secret = "pa\"ss\\w0rd-9";
    log_add_secret(secret);
    char *out = capture_stderr(log_escaped_secret, (void *)secret);
    bson_t *doc = parse_line(out);
    char line[512], msg[256], pw[256];
    snprintf(line, sizeof line, "%s", out);
    snprintf(msg, sizeof msg, "%s", utf8_member(doc, "msg") ? utf8_member(doc, "msg") : "");
    snprintf(pw, sizeof pw, "%s",
             utf8_member(doc, "password") ? utf8_member(doc, "password") : "");
    bson_destroy(doc);
    free(out);
    if (strstr(line, "w0rd-9"))
        fail_msg("secret %s leaked: %s", secret, line);
    assert_string_equal(msg, "auth with [redacted] failed");
    assert_string_equal(pw, "[redacted]");
}

/* Issue 22: a secret across the length cut used to keep its start in the
 * message (cut first, then redacted: no longer recognisable). */
static void log_long_line_with_secret(void *arg)
{
    char pad[2100];
    memset(pad, 'x', sizeof pad - 1);
    pad[2040] = '\0'; /* the secret starts a few bytes before the 2 KiB cut */
    log_msg(LOG_ERROR, NULL, "e.long", NULL, "%s%s tail", pad, (const char *)arg);
}

static void test_secret_across_the_cut_never_leaks(void **state)
{
    (void)state;
    const char *secret = "Zq9-cut-s3cret-value-Zq9";
    log_add_secret(secret);
    char *out = capture_stderr(log_long_line_with_secret, (void *)secret);
    if (strstr(out, "Zq9-cut"))
        fail_msg("the start of a secret across the cut leaked: ...%s", out + strlen(out) - 80);
    free(out);
    char pad[600];
    memset(pad, 'y', sizeof pad - 1);
    pad[500] = '\0';
    struct sd_error err;
    sd_error_set(&err, "%s%s", pad, secret);
    if (strstr(err.message, "Zq9-cut"))
        fail_msg("sd_error_set kept the start of a secret: ...%s", err.message + 480);
    char big[300];
    memset(big, 'z', sizeof big - 1);
    big[250] = '\0';
    sd_error_set(&err, "inner");
    sd_error_prefix(&err, "%s%s", big, secret);
    if (strstr(err.message, "Zq9-cut"))
        fail_msg("sd_error_prefix kept the start of a secret: %s", err.message);
}

static void log_each_level(void *arg)
{
    (void)arg;
    log_msg(LOG_DEBUG, NULL, "e.debug", NULL, "d");
    log_msg(LOG_INFO, NULL, "e.info", NULL, "i");
    log_msg(LOG_WARN, NULL, "e.warn", NULL, "w");
    log_msg(LOG_ERROR, NULL, "e.error", NULL, "e");
}

static void test_msg_level_filter(void **state)
{
    (void)state;
    log_init(LOG_INFO, true);
    char *out = capture_stderr(log_each_level, NULL);
    assert_null(strstr(out, "e.debug"));
    assert_non_null(strstr(out, "e.info"));
    assert_non_null(strstr(out, "e.warn"));
    assert_non_null(strstr(out, "e.error"));
    free(out);

    log_init(LOG_ERROR, true);
    out = capture_stderr(log_each_level, NULL);
    assert_null(strstr(out, "e.info"));
    assert_null(strstr(out, "e.warn"));
    assert_non_null(strstr(out, "e.error"));
    free(out);

    log_init(LOG_DEBUG, true);
    out = capture_stderr(log_each_level, NULL);
    /* Four lines, each valid JSON. */
    char *line = out;
    int n = 0;
    for (char *nl; (nl = strchr(line, '\n')); line = nl + 1, n++) {
        char saved = nl[1];
        nl[1] = '\0';
        bson_destroy(parse_line(line));
        nl[1] = saved;
    }
    assert_int_equal(n, 4);
    assert_string_equal(line, "");
    free(out);
}

static void test_msg_text_format(void **state)
{
    (void)state;
    log_add_secret("Sup3r-s3cret");
    log_init(LOG_INFO, false);
    char *out = capture_stderr(log_with_secrets, NULL);
    assert_null(strstr(out, "Sup3r-s3cret"));
    assert_int_equal(out[strlen(out) - 1], '\n');
    assert_true(out[0] != '{');
    assert_non_null(strstr(out, " warn "));
    assert_non_null(strstr(out, "notification/0f3a9c"));
    assert_non_null(strstr(out, "tick.retry"));
    assert_non_null(strstr(out, "login with [redacted] failed, retry 3"));
    assert_non_null(strstr(out, "smtp://bot:[redacted]@mail.example"));
    free(out);
}

static void log_one_field(void *arg)
{
    (void)arg;
    struct log_ctx ctx = {.job = "snooze", .tick = "dry-run"};
    log_field(LOG_WARN, &ctx, "snooze.bad_document", "conversation_id", "65e2f0000000000000000106",
              "conversation %s: %s", "65e2f0000000000000000106", "password Sup3r-s3cret");
    log_field(LOG_DEBUG, &ctx, "e.debug", "k", "v", "filtered out");
}

/* log_field: log_msg with one string member, the message formatted and
 * redacted the same way; below the level, nothing. */
static void test_field_json_line(void **state)
{
    (void)state;
    log_add_secret("Sup3r-s3cret");
    log_init(LOG_INFO, true);
    char *out = capture_stderr(log_one_field, NULL);
    assert_null(strstr(out, "e.debug"));
    bson_t *doc = parse_line(out);
    assert_member(doc, "level", "warn");
    assert_member(doc, "event", "snooze.bad_document");
    assert_member(doc, "job", "snooze");
    assert_member(doc, "tick", "dry-run");
    assert_member(doc, "msg", "conversation 65e2f0000000000000000106: password [redacted]");
    assert_member(doc, "conversation_id", "65e2f0000000000000000106");
    bson_destroy(doc);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_redact_without_secrets, reset),
        cmocka_unit_test_teardown(test_redact_every_occurrence, reset),
        cmocka_unit_test_teardown(test_redact_multiple_secrets, reset),
        cmocka_unit_test_teardown(test_redact_ignores_short_secrets, reset),
        cmocka_unit_test_teardown(test_clear_secrets, reset),
        cmocka_unit_test_teardown(test_redact_nested_secrets, reset),
        cmocka_unit_test_teardown(test_redact_overlapping_secrets, reset),
        cmocka_unit_test_teardown(test_redact_secret_matching_the_mark, reset),
        cmocka_unit_test_teardown(test_parse_level, reset),
        cmocka_unit_test_teardown(test_init_sets_min_level, reset),
        cmocka_unit_test_teardown(test_msg_json_line, reset),
        cmocka_unit_test_teardown(test_field_json_line, reset),
        cmocka_unit_test_teardown(test_msg_json_minimal_and_escaped, reset),
        cmocka_unit_test_teardown(test_msg_json_redacts_escaped_secret, reset),
        cmocka_unit_test_teardown(test_secret_across_the_cut_never_leaks, reset),
        cmocka_unit_test_teardown(test_msg_level_filter, reset),
        cmocka_unit_test_teardown(test_msg_text_format, reset),
    };
    reset(NULL);
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
