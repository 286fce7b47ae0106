/* The Twilio and SendGrid clients and the HTTP layer under them, against the
 * fake provider (tests/fakes/provider_fake.py, started here on a free port):
 * real paths, auth, payloads, and every injected fault ending in its
 * documented outcome. Needs python3 (the venv's if present); run from the
 * repository root (scripts/test and `zig build test` do). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
/* LeakSanitizer's entry point when linked in (ASan builds); NULL otherwise. */
extern void __lsan_do_leak_check(void) __attribute__((weak));

#include "core/clock.h"
#include "core/log.h"
#include "providers/http.h"
#include "providers/json.h"
#include "providers/sendgrid.h"
#include "providers/twilio.h"

#define SID "ACfake00000000000000000000000000"
#define TOKEN "fake-twilio-token-0000"
#define SGKEY "SG.fake-sendgrid-key-0000"

static pid_t fake_pid;
static char base[64];

/* ---- the fake ------------------------------------------------------------- */

static int start_fake(void **state)
{
    (void)state;
    const char *py = getenv("SUPPORTD_PYTHON");
    if (!py)
        py = access(".cache/venv/bin/python", X_OK) == 0 ? ".cache/venv/bin/python" : "python3";
    const char *script = "tests/fakes/provider_fake.py";
    if (access(script, R_OK) != 0) {
        fprintf(stderr, "test_clients: %s not found: run from the repository root\n", script);
        return -1;
    }
    int fds[2];
    if (pipe(fds))
        return -1;
    /* posix_spawn, not fork: a forked ASan process has been seen to deadlock
     * in libp11-kit's exit handler (glibc's locale lock). */
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    char *const args[] = {(char *)py, (char *)script, NULL};
    int rc = posix_spawnp(&fake_pid, py, &fa, NULL, args, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
        fprintf(stderr, "test_clients: cannot run %s: %s\n", py, strerror(rc));
        return -1;
    }
    FILE *f = fdopen(fds[0], "r");
    char line[64] = "";
    int port = 0;
    if (!fgets(line, sizeof line, f) || sscanf(line, "PORT %d", &port) != 1) {
        fprintf(stderr, "test_clients: the fake did not start (%s)\n", line);
        return -1;
    }
    fclose(f);
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    log_init(LOG_ERROR, true);
    log_add_secret(TOKEN);
    log_add_secret(SGKEY);
    return 0;
}

static int stop_fake(void **state)
{
    (void)state;
    if (fake_pid > 0) {
        kill(fake_pid, SIGTERM);
        waitpid(fake_pid, NULL, 0);
    }
    return 0;
}

static size_t collect(char *d, size_t s, size_t n, void *ud)
{
    char **buf = ud;
    size_t old = *buf ? strlen(*buf) : 0;
    char *p = realloc(*buf, old + s * n + 1);
    memcpy(p + old, d, s * n);
    p[old + s * n] = '\0';
    *buf = p;
    return s * n;
}

/* A control call; returns the answer parsed (caller destroys), or NULL. */
static bson_t *control(const char *method, const char *path, const char *json)
{
    CURL *h = curl_easy_init();
    char url[256], *body = NULL;
    snprintf(url, sizeof url, "%s%s", base, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    if (strcmp(method, "POST") == 0)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, json ? json : "");
    CURLcode rc = curl_easy_perform(h);
    curl_easy_cleanup(h);
    bson_error_t e;
    bson_t *doc = rc == CURLE_OK && body ? bson_new_from_json((uint8_t *)body, -1, &e) : NULL;
    free(body);
    return doc;
}

static void reset(void) { bson_destroy(control("POST", "/_fake/reset", NULL)); }
static void fault(const char *json) { bson_destroy(control("POST", "/_fake/faults", json)); }
static void set_state(const char *json) { bson_destroy(control("POST", "/_fake/state", json)); }

static int count_requests(const char *path_part)
{
    char p[200];
    snprintf(p, sizeof p, "/_fake/requests?path=%s", path_part);
    bson_t *doc = control("GET", p, NULL);
    int n = doc ? (int)bson_count_keys(doc) : -1;
    if (doc)
        bson_destroy(doc);
    return n;
}

static struct http_client *client(int timeout_ms, int attempts)
{
    struct http_options o = {.timeout_ms = timeout_ms, .max_attempts = attempts,
                             .backoff_base_ms = 10, .backoff_cap_ms = 50};
    struct http_client *c = http_client_new(&o, NULL);
    assert_non_null(c);
    return c;
}

/* ---- Twilio --------------------------------------------------------------- */

static const struct twilio_sms sms_ok = {.to = "+15551234567", .from = "+15557654321",
                                         .body = "Ticket #42 was updated",
                                         .status_callback = "https://hooks.example.com/twilio"};

static void test_twilio_send(void **state)
{
    (void)state;
    reset();
    struct http_client *c = client(2000, 3);
    struct twilio tw = {c, base, SID, TOKEN};
    struct twilio_message m;
    struct provider_status st;
    struct sd_error err;
    assert_int_equal(twilio_send_sms(&tw, &sms_ok, &m, &st, &err), 0);
    assert_int_equal(st.cls, PROVIDER_OK);
    assert_int_equal(st.http_status, 201);
    assert_true(strncmp(m.sid, "SM", 2) == 0 && strlen(m.sid) == 34);
    assert_string_equal(m.status, "queued");
    assert_true(m.date_created_ms > 0);

    bson_t *reqs = control("GET", "/_fake/requests?path=/Messages.json", NULL);
    char v[200];
    json_str(reqs, "0.method", v, sizeof v);
    assert_string_equal(v, "POST");
    json_str(reqs, "0.path", v, sizeof v);
    assert_string_equal(v, "/2010-04-01/Accounts/" SID "/Messages.json");
    json_str(reqs, "0.form.To", v, sizeof v);
    assert_string_equal(v, "+15551234567");
    json_str(reqs, "0.form.From", v, sizeof v);
    assert_string_equal(v, "+15557654321");
    json_str(reqs, "0.form.Body", v, sizeof v);
    assert_string_equal(v, "Ticket #42 was updated");
    json_str(reqs, "0.form.StatusCallback", v, sizeof v);
    assert_string_equal(v, "https://hooks.example.com/twilio");
    json_str(reqs, "0.headers.Authorization", v, sizeof v);
    assert_true(strncmp(v, "Basic ", 6) == 0);
    bson_destroy(reqs);

    /* Fetch it back, and find it by To/From/Body. */
    struct twilio_message f;
    assert_int_equal(twilio_fetch_message(&tw, NULL, m.sid, &f, &st, &err), 0);
    assert_string_equal(f.sid, m.sid);
    bool found = false;
    assert_int_equal(twilio_find_message(&tw, &sms_ok, clock_now_ms() - 1000, NULL, 0, &f,
                                         &found, &st, &err),
                     0);
    assert_true(found);
    assert_string_equal(f.sid, m.sid);
    struct twilio_sms other = sms_ok;
    other.body = "something else";
    assert_int_equal(twilio_find_message(&tw, &other, 0, NULL, 0, &f, &found, &st, &err), 0);
    assert_false(found);
    /* Created before `since` (a minute, or more than the clock skew): not this send. */
    assert_int_equal(twilio_find_message(&tw, &sms_ok, clock_now_ms() + 3600 * 1000, NULL, 0,
                                         &f, &found, &st, &err),
                     0);
    assert_false(found);
    assert_int_equal(twilio_find_message(&tw, &sms_ok, clock_now_ms() + 60 * 1000, NULL, 0, &f,
                                         &found, &st, &err),
                     0);
    assert_false(found);
    /* A SID known not to be the one looked for (a re-send's failed original). */
    const char *known[] = {"SM00000000000000000000000000000001", m.sid};
    assert_int_equal(twilio_find_message(&tw, &sms_ok, clock_now_ms() - 1000, known, 2, &f,
                                         &found, &st, &err),
                     0);
    assert_false(found);
    assert_int_equal(twilio_fetch_message(&tw, NULL, "SM00000000000000000000000000000000", &f,
                                          &st, &err),
                     -1);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    assert_int_equal(st.http_status, 404);
    http_client_destroy(c);
}

static void test_twilio_rejections(void **state)
{
    (void)state;
    reset();
    struct http_client *c = client(2000, 3);
    struct twilio tw = {c, base, SID, TOKEN};
    struct twilio_message m;
    struct provider_status st;
    struct sd_error err;
    struct twilio_sms bad = sms_ok;
    bad.to = "12345";
    assert_int_equal(twilio_send_sms(&tw, &bad, &m, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    assert_string_equal(st.code, "twilio_21211");
    assert_non_null(strstr(err.message, "21211"));
    assert_non_null(strstr(err.message, "not a valid phone number"));

    struct twilio wrong = {c, base, SID, "not-the-token"};
    assert_int_equal(twilio_send_sms(&wrong, &sms_ok, &m, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    assert_int_equal(st.http_status, 401);
    assert_non_null(strstr(err.message, "rejected the credentials"));
    assert_null(strstr(err.message, "not-the-token"));
    assert_int_equal(count_requests("/Messages.json"), 2); /* no retries of a 4xx */
    http_client_destroy(c);
}

static void test_twilio_account_balance_number(void **state)
{
    (void)state;
    reset();
    set_state("{\"account_status\":\"suspended\","
              "\"subaccounts\":[\"ACsub0000000000000000000000000000\"],"
              "\"numbers\":[{\"sid\":\"PN1\",\"phone_number\":\"+15557654321\","
              "\"capabilities\":{\"sms\":true,\"mms\":false,\"voice\":true,\"fax\":false},"
              "\"sms_url\":\"https://hooks.example.com/twilio\",\"sms_application_sid\":\"\","
              "\"status\":\"in-use\"}]}");
    struct http_client *c = client(2000, 3);
    struct twilio tw = {c, base, SID, TOKEN};
    struct provider_status st;
    struct sd_error err;
    struct twilio_account a;
    assert_int_equal(twilio_fetch_account(&tw, NULL, &a, &st, &err), 0);
    assert_string_equal(a.sid, SID);
    assert_string_equal(a.status, "suspended");
    assert_string_equal(a.type, "Full");
    assert_int_equal(twilio_fetch_account(&tw, "ACunknown000000000000000000000000", &a, &st, &err),
                     -1);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);

    struct twilio_balance b;
    assert_int_equal(twilio_fetch_balance(&tw, NULL, &b, &st, &err), 0);
    assert_string_equal(b.balance, "12.34");
    assert_true(b.amount > 12.33 && b.amount < 12.35);
    assert_string_equal(b.currency, "USD");
    /* Child accounts carry no balance. */
    assert_int_equal(twilio_fetch_balance(&tw, "ACsub0000000000000000000000000000", &b, &st, &err),
                     -1);
    assert_int_equal(st.http_status, 404);

    struct twilio_number n;
    assert_int_equal(twilio_lookup_number(&tw, NULL, "+15557654321", &n, &st, &err), 0);
    assert_true(n.found);
    assert_true(n.sms);
    assert_false(n.mms);
    assert_string_equal(n.sms_url, "https://hooks.example.com/twilio");
    assert_string_equal(n.status, "in-use");
    bson_t *reqs = control("GET", "/_fake/requests?path=/IncomingPhoneNumbers.json", NULL);
    char q[128];
    json_str(reqs, "0.query", q, sizeof q);
    assert_string_equal(q, "PhoneNumber=%2B15557654321");
    bson_destroy(reqs);
    assert_int_equal(twilio_lookup_number(&tw, NULL, "+15550000000", &n, &st, &err), 0);
    assert_false(n.found);

    /* One client, one kept-alive connection: every request above came from
     * the same client port. */
    bson_t *all = control("GET", "/_fake/requests", NULL);
    char first[16], port[16], key[32];
    json_str(all, "0.client_port", first, sizeof first);
    for (uint32_t i = 1; i < bson_count_keys(all); i++) {
        snprintf(key, sizeof key, "%u.client_port", i);
        json_str(all, key, port, sizeof port);
        assert_string_equal(port, first);
    }
    bson_destroy(all);
    http_client_destroy(c);
}

/* A 5xx on a send is not retried (the message may exist) ... */
static void test_twilio_send_500_not_retried(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/Messages.json\",\"method\":\"POST\",\"status\":500,\"times\":0}");
    struct http_client *c = client(2000, 3);
    struct twilio tw = {c, base, SID, TOKEN};
    struct twilio_message m;
    struct provider_status st;
    struct sd_error err;
    assert_int_equal(twilio_send_sms(&tw, &sms_ok, &m, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_true(st.maybe_accepted);
    assert_int_equal(st.http_status, 500);
    assert_int_equal(count_requests("/Messages.json"), 1);
    http_client_destroy(c);
}

/* ... and when it did arrive, the lookup finds it. */
static void test_twilio_send_500_but_accepted(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/Messages.json\",\"method\":\"POST\",\"status\":500,\"accept\":true}");
    struct http_client *c = client(2000, 3);
    struct twilio tw = {c, base, SID, TOKEN};
    struct twilio_message m;
    struct provider_status st;
    struct sd_error err;
    int64_t before = clock_now_ms();
    assert_int_equal(twilio_send_sms(&tw, &sms_ok, &m, &st, &err), -1);
    assert_true(st.maybe_accepted);
    bool found = false;
    assert_int_equal(twilio_find_message(&tw, &sms_ok, before, NULL, 0, &m, &found, &st, &err), 0);
    assert_true(found);
    assert_true(strncmp(m.sid, "SM", 2) == 0);
    http_client_destroy(c);
}

/* The look-up compares the whole body (1,600 characters of Cyrillic are 3,200
 * bytes) and finds a Messaging Service's send by the service, not by From. */
static void test_twilio_find_long_body_and_messaging_service(void **state)
{
    (void)state;
    reset();
    set_state("{\"messaging_services\": {\"MG0123456789abcdef0123456789abcdef\": "
              "[\"+15557650001\"]}}");
    struct http_client *c = client(2000, 3);
    struct twilio tw = {c, base, SID, TOKEN};
    char body[1600 * 2 + 1] = "";
    for (int i = 0; i < 1600; i++)
        strcat(body, "Ж"); /* Ж: two bytes of UTF-8 */
    struct twilio_sms sms = sms_ok;
    sms.body = body;
    sms.from = "MG0123456789abcdef0123456789abcdef";
    struct twilio_message m, f;
    struct provider_status st;
    struct sd_error err;
    int64_t before = clock_now_ms();
    assert_int_equal(twilio_send_sms(&tw, &sms, &m, &st, &err), 0);
    assert_string_equal(m.from, "+15557650001");
    bool found = false;
    assert_int_equal(twilio_find_message(&tw, &sms, before, NULL, 0, &f, &found, &st, &err), 0);
    assert_true(found);
    assert_string_equal(f.sid, m.sid);
    /* the same text one character shorter is another message */
    body[strlen(body) - 2] = '\0';
    assert_int_equal(twilio_find_message(&tw, &sms, before, NULL, 0, &f, &found, &st, &err), 0);
    assert_false(found);
    /* nor is the same text through another service */
    body[strlen(body)] = '\xd0'; /* the last Ж whole again */
    sms.from = "MGffffffffffffffffffffffffffffffff";
    assert_int_equal(twilio_find_message(&tw, &sms, before, NULL, 0, &f, &found, &st, &err), 0);
    assert_false(found);
    http_client_destroy(c);
}

static void test_twilio_429_then_201(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/Messages.json\",\"status\":429,\"retry_after\":1}");
    struct http_client *c = client(2000, 3);
    struct twilio tw = {c, base, SID, TOKEN};
    struct twilio_message m;
    struct provider_status st;
    struct sd_error err;
    int64_t t0 = clock_now_ms();
    assert_int_equal(twilio_send_sms(&tw, &sms_ok, &m, &st, &err), 0);
    assert_true(clock_now_ms() - t0 >= 950); /* Retry-After: 1 honoured */
    assert_int_equal(st.attempts, 2);
    assert_int_equal(count_requests("/Messages.json"), 2);
    bson_t *sent = control("GET", "/_fake/sent", NULL);
    bson_t list;
    assert_true(json_child(sent, "twilio", &list));
    assert_int_equal(bson_count_keys(&list), 1);
    bson_destroy(sent);
    http_client_destroy(c);
}

/* 2xx with a body that is not JSON: accepted all the same. */
static void test_twilio_send_malformed_answer(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/Messages.json\",\"method\":\"POST\",\"body\":\"not json{\"}");
    struct http_client *c = client(2000, 3);
    struct twilio tw = {c, base, SID, TOKEN};
    struct twilio_message m;
    struct provider_status st;
    struct sd_error err;
    assert_int_equal(twilio_send_sms(&tw, &sms_ok, &m, &st, &err), 0);
    assert_int_equal(st.cls, PROVIDER_OK);
    assert_string_equal(st.code, "bad_answer");
    assert_string_equal(m.sid, "");
    http_client_destroy(c);
}

/* ---- SendGrid ------------------------------------------------------------- */

static const struct mail mail_ok = {.from = "support@example.com", .from_name = "Support",
                                    .to = "ann@example.org", .to_name = "Ann",
                                    .subject = "Ticket #42", .text = "Hello",
                                    .html = "<p>Hello</p>"};

static void test_sendgrid_send(void **state)
{
    (void)state;
    reset();
    struct http_client *c = client(2000, 3);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    char mid[128];
    assert_int_equal(sendgrid_send(&sg, &mail_ok, mid, sizeof mid, &st, &err), 0);
    assert_int_equal(st.http_status, 202);
    assert_true(strlen(mid) >= 16);
    bson_t *sent = control("GET", "/_fake/sent", NULL);
    char v[128];
    json_str(sent, "sendgrid.0.message_id", v, sizeof v);
    assert_string_equal(v, mid);
    json_str(sent, "sendgrid.0.json.personalizations.0.to.0.email", v, sizeof v);
    assert_string_equal(v, "ann@example.org");
    bson_destroy(sent);
    bson_t *reqs = control("GET", "/_fake/requests?path=/v3/mail/send", NULL);
    json_str(reqs, "0.headers.Authorization", v, sizeof v);
    assert_string_equal(v, "Bearer " SGKEY);
    json_str(reqs, "0.headers.Content-Type", v, sizeof v);
    assert_string_equal(v, "application/json");
    bson_destroy(reqs);
    http_client_destroy(c);
}

static void test_sendgrid_rejections(void **state)
{
    (void)state;
    reset();
    struct http_client *c = client(2000, 3);
    struct provider_status st;
    struct sd_error err;
    char mid[128];
    struct sendgrid wrong = {c, base, "SG.wrong-key-1234"};
    assert_int_equal(sendgrid_send(&wrong, &mail_ok, mid, sizeof mid, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    assert_non_null(strstr(err.message, "SendGrid rejected the API key (401 Unauthorized)"));
    assert_null(strstr(err.message, "wrong-key"));

    struct sendgrid sg = {c, base, SGKEY};
    struct mail bad = mail_ok;
    bad.from = "not-an-address";
    assert_int_equal(sendgrid_send(&sg, &bad, mid, sizeof mid, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    assert_int_equal(st.http_status, 400);
    assert_non_null(strstr(err.message, "from.email"));
    /* 400 with an unreadable body is still a readable error. */
    fault("{\"match\":\"/v3/mail/send\",\"status\":400,\"body\":\"not json{\"}");
    assert_int_equal(sendgrid_send(&sg, &mail_ok, mid, sizeof mid, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    assert_non_null(strstr(err.message, "400 Bad Request"));
    http_client_destroy(c);
}

static void test_sendgrid_scopes(void **state)
{
    (void)state;
    reset();
    struct http_client *c = client(2000, 3);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    struct sendgrid_scopes s;
    assert_int_equal(sendgrid_scopes(&sg, &s, &st, &err), 0);
    assert_true(s.mail_send);
    assert_int_equal(s.count, 2);
    set_state("{\"scopes\":[\"user.profile.read\"]}");
    assert_int_equal(sendgrid_scopes(&sg, &s, &st, &err), 0);
    assert_false(s.mail_send);
    char mid[128];
    assert_int_equal(sendgrid_send(&sg, &mail_ok, mid, sizeof mid, &st, &err), -1);
    assert_int_equal(st.http_status, 403);
    assert_int_equal(st.cls, PROVIDER_PERMANENT);
    struct sendgrid wrong = {c, base, "SG.revoked-0000"};
    assert_int_equal(sendgrid_scopes(&wrong, &s, &st, &err), -1);
    assert_int_equal(st.http_status, 401);
    http_client_destroy(c);
}

static void test_sendgrid_domains(void **state)
{
    (void)state;
    reset();
    set_state("{\"domains\":[{\"id\":7,\"domain\":\"example.com\",\"subdomain\":\"em\","
              "\"valid\":true,\"dns\":{\"mail_cname\":{\"valid\":false},\"dkim1\":{\"valid\":true},"
              "\"dkim2\":{\"valid\":true}}},{\"id\":8,\"domain\":\"other.org\",\"valid\":true,"
              "\"dns\":{}}]}");
    struct http_client *c = client(2000, 3);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    struct sendgrid_domain d;
    assert_int_equal(sendgrid_find_domain(&sg, "example.com", &d, &st, &err), 0);
    assert_true(d.found);
    assert_int_equal(d.id, 7);
    assert_true(d.valid);
    assert_string_equal(d.invalid_records, "mail_cname");
    assert_int_equal(sendgrid_find_domain(&sg, "missing.net", &d, &st, &err), 0);
    assert_false(d.found);
    /* valid:true overall but one record invalid: not valid for us. */
    struct sendgrid_validation v;
    assert_int_equal(sendgrid_validate_domain(&sg, 7, &v, &st, &err), 0);
    assert_false(v.valid);
    assert_non_null(strstr(v.problems, "mail_cname: record not found"));
    assert_int_equal(sendgrid_validate_domain(&sg, 8, &v, &st, &err), 0);
    assert_true(v.valid);
    assert_int_equal(sendgrid_validate_domain(&sg, 99, &v, &st, &err), -1);
    assert_int_equal(st.http_status, 404);
    http_client_destroy(c);
}

/* ---- the HTTP layer's faults ---------------------------------------------- */

static void test_get_500_retried(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/v3/scopes\",\"status\":500,\"times\":2}");
    struct http_client *c = client(2000, 3);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    struct sendgrid_scopes s;
    assert_int_equal(sendgrid_scopes(&sg, &s, &st, &err), 0);
    assert_int_equal(count_requests("/v3/scopes"), 3);
    /* Persistent 5xx: transient after the attempts are spent. */
    fault("{\"match\":\"/v3/scopes\",\"status\":503,\"times\":0}");
    assert_int_equal(sendgrid_scopes(&sg, &s, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_int_equal(st.attempts, 3);
    assert_non_null(strstr(err.message, "503"));
    http_client_destroy(c);
}

static void test_sendgrid_send_500_not_retried(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/v3/mail/send\",\"status\":500,\"times\":0}");
    struct http_client *c = client(2000, 3);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    char mid[128];
    assert_int_equal(sendgrid_send(&sg, &mail_ok, mid, sizeof mid, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_true(st.maybe_accepted);
    assert_int_equal(count_requests("/v3/mail/send"), 1);
    http_client_destroy(c);
}

static void test_timeout(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/v3/mail/send\",\"delay_ms\":1500}");
    struct http_client *c = client(500, 3);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    char mid[128];
    int64_t t0 = clock_now_ms();
    assert_int_equal(sendgrid_send(&sg, &mail_ok, mid, sizeof mid, &st, &err), -1);
    assert_true(clock_now_ms() - t0 < 1400); /* one attempt: a send is not retried on timeout */
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_string_equal(st.code, "timeout");
    assert_true(st.maybe_accepted);
    assert_non_null(strstr(err.message, "no answer within 500 ms"));
    /* A GET is retried after a timeout, and the next attempt succeeds. */
    fault("{\"match\":\"/v3/scopes\",\"delay_ms\":1000}");
    struct sendgrid_scopes s;
    assert_int_equal(sendgrid_scopes(&sg, &s, &st, &err), 0);
    assert_int_equal(st.attempts, 2);
    http_client_destroy(c);
}

static void test_malformed_json_on_get(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/v3/scopes\",\"body\":\"not json{\"}");
    struct http_client *c = client(2000, 3);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    struct sendgrid_scopes s;
    assert_int_equal(sendgrid_scopes(&sg, &s, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_string_equal(st.code, "bad_answer");
    assert_non_null(strstr(err.message, "not valid JSON"));
    http_client_destroy(c);
}

static void test_retry_after_too_long_goes_back(void **state)
{
    (void)state;
    reset();
    fault("{\"match\":\"/v3/mail/send\",\"status\":429,\"retry_after\":120}");
    struct http_client *c = client(2000, 3);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    char mid[128];
    int64_t t0 = clock_now_ms();
    assert_int_equal(sendgrid_send(&sg, &mail_ok, mid, sizeof mid, &st, &err), -1);
    assert_true(clock_now_ms() - t0 < 1000);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_false(st.maybe_accepted);
    assert_int_equal(st.retry_after_ms, 120000);
    assert_int_equal(count_requests("/v3/mail/send"), 1);
    http_client_destroy(c);
}

static void test_answer_too_large_and_refused(void **state)
{
    (void)state;
    reset();
    char big[4096] = "{\"scopes\":[";
    for (int i = 0; i < 100; i++)
        strcat(big, i ? ",\"scope.number.xx\"" : "\"scope.number.xx\"");
    strcat(big, "]}");
    set_state(big);
    struct http_options o = {.timeout_ms = 2000, .max_attempts = 1, .max_response_bytes = 256};
    struct http_client *c = http_client_new(&o, NULL);
    struct sendgrid sg = {c, base, SGKEY};
    struct provider_status st;
    struct sd_error err;
    struct sendgrid_scopes s;
    assert_int_equal(sendgrid_scopes(&sg, &s, &st, &err), -1);
    assert_string_equal(st.code, "answer_too_large");

    /* Nothing listens on port 1. */
    struct sendgrid nowhere = {c, "http://127.0.0.1:1", SGKEY};
    char mid[128];
    assert_int_equal(sendgrid_send(&nowhere, &mail_ok, mid, sizeof mid, &st, &err), -1);
    assert_int_equal(st.cls, PROVIDER_TRANSIENT);
    assert_string_equal(st.code, "connect");
    assert_false(st.maybe_accepted);
    assert_null(strstr(err.message, SGKEY));
    http_client_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_twilio_send),
        cmocka_unit_test(test_twilio_rejections),
        cmocka_unit_test(test_twilio_account_balance_number),
        cmocka_unit_test(test_twilio_send_500_not_retried),
        cmocka_unit_test(test_twilio_send_500_but_accepted),
        cmocka_unit_test(test_twilio_find_long_body_and_messaging_service),
        cmocka_unit_test(test_twilio_429_then_201),
        cmocka_unit_test(test_twilio_send_malformed_answer),
        cmocka_unit_test(test_sendgrid_send),
        cmocka_unit_test(test_sendgrid_rejections),
        cmocka_unit_test(test_sendgrid_scopes),
        cmocka_unit_test(test_sendgrid_domains),
        cmocka_unit_test(test_get_500_retried),
        cmocka_unit_test(test_sendgrid_send_500_not_retried),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_malformed_json_on_get),
        cmocka_unit_test(test_retry_after_too_long_goes_back),
        cmocka_unit_test(test_answer_too_large_and_refused),
    };
    int rc = cmocka_run_group_tests(tests, start_fake, stop_fake);
    /* Under AddressSanitizer (gcc 12's libasan, preloaded) a process that
     * has loaded Debian's libcurl (→ gnutls → p11-kit) and called
     * strerror — curl does on "connection refused" — deadlocks in
     * p11-kit's exit destructor (freelocale on glibc's locale lock). Check
     * for leaks now and leave without running library destructors. */
    fflush(stdout);
    fflush(stderr);
    if (__lsan_do_leak_check)
        __lsan_do_leak_check();
    _exit(rc);
}
