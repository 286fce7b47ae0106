#include "core/config.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <mongoc/mongoc.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/redis_url.h"

const struct job_spec job_specs[JOB_COUNT] = {
    [JOB_SNOOZE] = {"snooze", "QM_SUPPORT_SNOOZE", "QM_SUPPORT_SNOOZE_CRON", "*/5 * * * *"},
    [JOB_MESSAGE_STATUS] = {"message-status", "QM_SUPPORT_MESSAGE_STATUS",
                            "QM_SUPPORT_MESSAGE_STATUS_CRON", "*/30 * * * * *"},
    [JOB_NOTIFICATION] = {"notification", "QM_SUPPORT_NOTIFICATION",
                          "QM_SUPPORT_NOTIFICATION_CRON", "*/1 * * * *"},
    [JOB_COMMUNICATION_CHECK] = {"communication-check", "QM_SUPPORT_COMMUNICATION_CHECK",
                                 "QM_SUPPORT_COMMUNICATION_CHECK_CRON", "*/10 * * * *"},
    [JOB_PROBE] = {"probe", "QM_SUPPORT_PROBE", "QM_SUPPORT_PROBE_CRON", "*/1 * * * *"},
    [JOB_OUTBOX] = {"outbox", "QM_SUPPORT_OUTBOX", "QM_SUPPORT_OUTBOX_CRON", "*/1 * * * *"},
};

int job_find(const char *name)
{
    for (int i = 0; i < JOB_COUNT; i++)
        if (strcmp(job_specs[i].name, name) == 0)
            return i;
    return -1;
}

const char *config_getenv_process(const char *name, void *ud)
{
    (void)ud;
    return getenv(name);
}

/* An empty variable counts as unset: `FOO= supportd run` must not mean FOO="". */
static const char *get(config_getenv_fn fn, void *ud, const char *name)
{
    const char *v = fn(name, ud);
    return v && *v ? v : NULL;
}

static int dup_or(char **dst, const char *value, const char *fallback)
{
    const char *v = value ? value : fallback;
    *dst = v ? strdup(v) : NULL;
    return 0;
}

static int parse_bool(const char *name, const char *v, bool *out, struct sd_error *err)
{
    if (!v) {
        *out = false;
        return 0;
    }
    if (strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0) {
        *out = true;
        return 0;
    }
    if (strcasecmp(v, "false") == 0 || strcmp(v, "0") == 0) {
        *out = false;
        return 0;
    }
    return sd_error_set(err, "%s: \"%s\" is not a boolean (use true or false)", name, v);
}

static int parse_int(const char *name, const char *v, long lo, long hi, int *out,
                     struct sd_error *err)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0')
        return sd_error_set(err, "%s: \"%s\" is not an integer", name, v);
    if (n < lo || n > hi)
        return sd_error_set(err, "%s: %ld is out of range %ld-%ld", name, n, lo, hi);
    *out = (int)n;
    return 0;
}

static int check_url_scheme(const char *name, const char *v, const char *const *schemes,
                            struct sd_error *err)
{
    for (int i = 0; schemes[i]; i++)
        if (strncasecmp(v, schemes[i], strlen(schemes[i])) == 0 && v[strlen(schemes[i])])
            return 0;
    char *clean = log_redact_dup(v);
    sd_error_set(err, "%s: \"%s\" must start with %s%s%s", name, clean ? clean : "", schemes[0],
                 schemes[1] ? " or " : "", schemes[1] ? schemes[1] : "");
    free(clean);
    return -1;
}

static int load_mongo(struct config *cfg, config_getenv_fn fn, void *ud, struct sd_error *err)
{
    const char *url = get(fn, ud, "MONGO_DB_URL");
    const char *name = get(fn, ud, "MONGO_DB_NAME");
    if (!url)
        return dup_or(&cfg->mongo_db, name, NULL);
    /* The password as written (between "user:" and the last '@' before any
     * '?') is a secret before mongoc sees the URL: mongoc splits at the first
     * '@' and may quote the rest in its errors. An unescaped '@' inside the
     * userinfo is refused, as the connection-string spec requires. */
    const char *auth = strstr(url, "://");
    const char *query = auth ? strchr(auth + 3, '?') : NULL;
    const char *last_at = NULL;
    for (const char *p = auth ? auth + 3 : url; *p && (!query || p < query); p++)
        if (*p == '@')
            last_at = p;
    if (auth && last_at) {
        const char *colon = memchr(auth + 3, ':', (size_t)(last_at - auth - 3));
        if (colon && last_at > colon + 1) {
            char *raw = strndup(colon + 1, (size_t)(last_at - colon - 1));
            log_add_secret(raw);
            free(raw);
        }
        if (memchr(auth + 3, '@', (size_t)(last_at - auth - 3)))
            return sd_error_set(err, "MONGO_DB_URL: the user name or password holds an unescaped "
                                     "'@' (write it as %%40)");
    }
    bson_error_t berr;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(url, &berr);
    if (!uri)
        /* mongoc's message may quote the URL; the redactor strips the password. */
        return sd_error_set(err, "MONGO_DB_URL: not a valid MongoDB connection string: %s",
                            berr.message);
    if (mongoc_uri_get_password(uri))
        log_add_secret(mongoc_uri_get_password(uri)); /* decoded form */
    const char *path_db = mongoc_uri_get_database(uri);
    cfg->mongo_url = strdup(url);
    dup_or(&cfg->mongo_db, name, path_db);
    mongoc_uri_destroy(uri);
    if (!cfg->mongo_db)
        return sd_error_set(err, "MONGO_DB_URL: names no database (add /<database> to the URL "
                                 "or set MONGO_DB_NAME)");
    return 0;
}

/* smtps://user:password@host: the password is a secret like SMTP_PASSWORD. */
static void register_url_password(const char *url);

/* Redis is set either by REDIS_URL or by the split variables, never both: a
 * half-overridden URL is a guess at what the operator meant. */
static const char *const redis_split_vars[] = {"REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD",
                                               "REDIS_DB", "REDIS_USERNAME", NULL};

static int load_redis_target(struct config *cfg, config_getenv_fn fn, void *ud,
                             struct sd_error *err)
{
    const char *v, *url = get(fn, ud, "REDIS_URL");
    if (url) {
        register_url_password(url); /* as written, before anything can quote it */
        for (int i = 0; redis_split_vars[i]; i++)
            if (get(fn, ud, redis_split_vars[i]))
                return sd_error_set(err, "REDIS_URL: cannot be combined with %s (set one or "
                                         "the other)", redis_split_vars[i]);
        struct redis_url u;
        if (redis_url_parse(url, &u, err)) {
            redis_url_free(&u);
            return -1;
        }
        log_add_secret(u.password); /* decoded form */
        cfg->redis_host = u.host;
        cfg->redis_port = u.port;
        cfg->redis_username = u.username;
        cfg->redis_password = u.password;
        cfg->redis_db = u.db;
        cfg->redis_tls = u.tls;
        cfg->redis_from_url = true;
        return 0;
    }
    dup_or(&cfg->redis_password, get(fn, ud, "REDIS_PASSWORD"), NULL);
    log_add_secret(cfg->redis_password);
    dup_or(&cfg->redis_host, get(fn, ud, "REDIS_HOST"), "localhost");
    cfg->redis_port = 6379;
    if ((v = get(fn, ud, "REDIS_PORT")) && parse_int("REDIS_PORT", v, 1, 65535, &cfg->redis_port, err))
        return -1;
    cfg->redis_db = 0;
    if ((v = get(fn, ud, "REDIS_DB")) && parse_int("REDIS_DB", v, 0, INT_MAX, &cfg->redis_db, err))
        return -1;
    dup_or(&cfg->redis_username, get(fn, ud, "REDIS_USERNAME"), NULL);
    if (cfg->redis_username && !cfg->redis_password)
        return sd_error_set(err, "REDIS_USERNAME: needs REDIS_PASSWORD (an ACL user "
                                 "authenticates with AUTH user password)");
    return 0;
}

/* TLS: REDIS_TLS=true or a rediss:// URL. Certificates are always verified
 * (there is no switch to turn that off); the CA is REDIS_TLS_CA_FILE, else the
 * system's bundle found as for every other TLS connection (core/cabundle.h). */
static int load_redis_tls(struct config *cfg, config_getenv_fn fn, void *ud, struct sd_error *err)
{
    const char *v;
    if ((v = get(fn, ud, "REDIS_TLS"))) {
        bool tls;
        if (parse_bool("REDIS_TLS", v, &tls, err))
            return -1;
        if (get(fn, ud, "REDIS_URL") && tls != cfg->redis_tls)
            return sd_error_set(err, "REDIS_TLS: \"%s\" contradicts REDIS_URL's scheme (%s)", v,
                                cfg->redis_tls ? "rediss://" : "redis://");
        cfg->redis_tls = tls;
    }
    struct {
        const char *name;
        char **dst;
    } files[] = {{"REDIS_TLS_CA_FILE", &cfg->redis_tls_ca_file},
                 {"REDIS_TLS_CERT_FILE", &cfg->redis_tls_cert_file},
                 {"REDIS_TLS_KEY_FILE", &cfg->redis_tls_key_file}};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        if (!(v = get(fn, ud, files[i].name)))
            continue;
        if (!cfg->redis_tls)
            return sd_error_set(err, "%s: set, but TLS is off (REDIS_TLS=true or a rediss:// "
                                     "REDIS_URL turns it on)", files[i].name);
        if (access(v, R_OK) != 0)
            return sd_error_set(err, "%s: cannot read \"%s\": %s", files[i].name, v,
                                strerror(errno));
        *files[i].dst = strdup(v);
    }
    if (cfg->redis_tls_cert_file && !cfg->redis_tls_key_file)
        return sd_error_set(err, "REDIS_TLS_KEY_FILE: required with REDIS_TLS_CERT_FILE (the "
                                 "client certificate's private key)");
    if (cfg->redis_tls_key_file && !cfg->redis_tls_cert_file)
        return sd_error_set(err, "REDIS_TLS_CERT_FILE: required with REDIS_TLS_KEY_FILE (the "
                                 "client certificate)");
    return 0;
}

static int load_jobs(struct config *cfg, config_getenv_fn fn, void *ud, struct sd_error *err)
{
    for (int i = 0; i < JOB_COUNT; i++) {
        const struct job_spec *spec = &job_specs[i];
        struct job_config *job = &cfg->jobs[i];
        if (parse_bool(spec->flag_env, get(fn, ud, spec->flag_env), &job->enabled, err))
            return -1;
        const char *text = get(fn, ud, spec->cron_env);
        job->cron_text = strdup(text ? text : spec->default_cron);
        if (cron_parse(job->cron_text, &job->cron, err))
            return sd_error_prefix(err, "%s: \"%s\"", spec->cron_env, job->cron_text);
    }
    return 0;
}

/* The password as written: between the first ':' after "://" and the URL's
 * last '@' (generated passwords hold '/', '?', '#' unescaped; redis_url.c). */
static void register_url_password(const char *url)
{
    const char *p = url ? strstr(url, "://") : NULL;
    if (!p)
        return;
    p += 3;
    const char *at = strrchr(p, '@'), *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
    if (colon) {
        char *pw = strndup(colon + 1, (size_t)(at - colon - 1));
        log_add_secret(pw);
        /* and as libcurl and the server see it: percent-decoded */
        char *plain = curl_easy_unescape(NULL, pw, 0, NULL);
        log_add_secret(plain);
        curl_free(plain);
        free(pw);
    }
}

static int load_providers(struct config *cfg, config_getenv_fn fn, void *ud,
                          struct sd_error *err)
{
    static const char *const http[] = {"https://", "http://", NULL};
    static const char *const smtp[] = {"smtp://", "smtps://", NULL};
    const char *provider = get(fn, ud, "QM_SUPPORT_EMAIL_PROVIDER");
    if (!provider || strcasecmp(provider, "sendgrid") == 0)
        cfg->email_provider = EMAIL_SENDGRID;
    else if (strcasecmp(provider, "smtp") == 0)
        cfg->email_provider = EMAIL_SMTP;
    else
        return sd_error_set(err, "QM_SUPPORT_EMAIL_PROVIDER: \"%s\" is not sendgrid or smtp",
                            provider);

    /* Secrets first, so that any later message quoting them is redacted. */
    dup_or(&cfg->twilio_auth_token, get(fn, ud, "TWILIO_AUTH_TOKEN"), NULL);
    dup_or(&cfg->sendgrid_api_key, get(fn, ud, "SENDGRID_API_KEY"), NULL);
    dup_or(&cfg->smtp_password, get(fn, ud, "SMTP_PASSWORD"), NULL);
    log_add_secret(cfg->twilio_auth_token);
    log_add_secret(cfg->sendgrid_api_key);
    log_add_secret(cfg->smtp_password);

    dup_or(&cfg->email_from, get(fn, ud, "QM_SUPPORT_EMAIL_FROM"), NULL);
    if (cfg->email_from && !strchr(cfg->email_from, '@'))
        return sd_error_set(err, "QM_SUPPORT_EMAIL_FROM: \"%s\" is not an email address",
                            cfg->email_from);
    dup_or(&cfg->twilio_account_sid, get(fn, ud, "TWILIO_ACCOUNT_SID"), NULL);
    if (cfg->twilio_account_sid && strncmp(cfg->twilio_account_sid, "AC", 2) != 0)
        return sd_error_set(err, "TWILIO_ACCOUNT_SID: \"%s\" does not start with AC",
                            cfg->twilio_account_sid);
    dup_or(&cfg->twilio_api_base, get(fn, ud, "TWILIO_API_BASE"), "https://api.twilio.com");
    if (check_url_scheme("TWILIO_API_BASE", cfg->twilio_api_base, http, err))
        return -1;
    dup_or(&cfg->sendgrid_api_base, get(fn, ud, "SENDGRID_API_BASE"), "https://api.sendgrid.com");
    if (check_url_scheme("SENDGRID_API_BASE", cfg->sendgrid_api_base, http, err))
        return -1;
    dup_or(&cfg->sendgrid_webhook_public_key, get(fn, ud, "SENDGRID_WEBHOOK_PUBLIC_KEY"), NULL);
    dup_or(&cfg->smtp_url, get(fn, ud, "SMTP_URL"), NULL);
    register_url_password(cfg->smtp_url);
    if (cfg->smtp_url && check_url_scheme("SMTP_URL", cfg->smtp_url, smtp, err))
        return -1;
    dup_or(&cfg->smtp_user, get(fn, ud, "SMTP_USER"), NULL);
    if (cfg->email_provider == EMAIL_SMTP && !cfg->smtp_url)
        return sd_error_set(err, "SMTP_URL: required when QM_SUPPORT_EMAIL_PROVIDER=smtp");
    return 0;
}

/* QM_SUPPORT_HTTP_LISTEN is "host:port" ("[::1]:8080" for IPv6); unset = no
 * HTTP server. QM_SUPPORT_PUBLIC_URL is the scheme://host[:port][/prefix] the
 * providers call (Twilio signs that URL, not the one a proxy forwards to). */
static int load_http(struct config *cfg, config_getenv_fn fn, void *ud, struct sd_error *err)
{
    static const char *const http[] = {"https://", "http://", NULL};
    const char *v;
    cfg->http_threads = 4;
    cfg->http_max_connections = 256;
    cfg->http_idle_timeout_s = 10;
    cfg->http_request_timeout_s = 10;
    if ((v = get(fn, ud, "QM_SUPPORT_HTTP_THREADS")) &&
        parse_int("QM_SUPPORT_HTTP_THREADS", v, 1, 64, &cfg->http_threads, err))
        return -1;
    if ((v = get(fn, ud, "QM_SUPPORT_HTTP_MAX_CONNECTIONS")) &&
        parse_int("QM_SUPPORT_HTTP_MAX_CONNECTIONS", v, 4, 100000, &cfg->http_max_connections,
                  err))
        return -1;
    if ((v = get(fn, ud, "QM_SUPPORT_HTTP_IDLE_TIMEOUT")) &&
        parse_int("QM_SUPPORT_HTTP_IDLE_TIMEOUT", v, 1, 3600, &cfg->http_idle_timeout_s, err))
        return -1;
    if ((v = get(fn, ud, "QM_SUPPORT_HTTP_REQUEST_TIMEOUT")) &&
        parse_int("QM_SUPPORT_HTTP_REQUEST_TIMEOUT", v, 1, 3600, &cfg->http_request_timeout_s,
                  err))
        return -1;
    if ((v = get(fn, ud, "QM_SUPPORT_PUBLIC_URL"))) {
        if (check_url_scheme("QM_SUPPORT_PUBLIC_URL", v, http, err))
            return -1;
        if (strpbrk(v, "?#"))
            return sd_error_set(err, "QM_SUPPORT_PUBLIC_URL: \"%s\" must not hold a query or "
                                     "fragment (the request's path and query are appended)", v);
        cfg->public_url = strdup(v);
        size_t n = strlen(cfg->public_url);
        while (n > 0 && cfg->public_url[n - 1] == '/')
            cfg->public_url[--n] = '\0';
    }
    if (!(v = get(fn, ud, "QM_SUPPORT_HTTP_LISTEN")))
        return 0;
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return sd_error_set(err, "QM_SUPPORT_HTTP_LISTEN: \"%s\" is not host:port "
                                 "(e.g. 0.0.0.0:8080)", v);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 1 || port > 65535)
        return sd_error_set(err, "QM_SUPPORT_HTTP_LISTEN: \"%s\": the port must be 1-65535", v);
    cfg->http_port = (int)port;
    const char *host = v;
    size_t len = (size_t)(colon - v);
    if (host[0] == '[') { /* [v6]:port */
        if (len < 3 || host[len - 1] != ']')
            return sd_error_set(err, "QM_SUPPORT_HTTP_LISTEN: \"%s\": unbalanced [ ]", v);
        host++;
        len -= 2;
    }
    cfg->http_host = strndup(host, len);
    if (cfg->twilio_auth_token && !cfg->public_url)
        return sd_error_set(err, "QM_SUPPORT_PUBLIC_URL: required with QM_SUPPORT_HTTP_LISTEN "
                                 "and TWILIO_AUTH_TOKEN (Twilio signs the public URL it "
                                 "called, e.g. https://hooks.example.com)");
    return 0;
}

static int load_all(struct config *cfg, config_getenv_fn fn, void *ud, struct sd_error *err)
{
    const char *v;
    /* Log settings first: the rest may want to log. */
    cfg->log_level = LOG_INFO;
    if ((v = get(fn, ud, "LOG_LEVEL")) && log_parse_level(v, &cfg->log_level))
        return sd_error_set(err, "LOG_LEVEL: \"%s\" is not debug, info, warn or error", v);
    cfg->log_json = true;
    if ((v = get(fn, ud, "LOG_FORMAT"))) {
        if (strcasecmp(v, "text") == 0)
            cfg->log_json = false;
        else if (strcasecmp(v, "json") != 0)
            return sd_error_set(err, "LOG_FORMAT: \"%s\" is not json or text", v);
    }

    if (load_redis_target(cfg, fn, ud, err))
        return -1;
    if (load_mongo(cfg, fn, ud, err) || load_redis_tls(cfg, fn, ud, err))
        return -1;
    if (load_jobs(cfg, fn, ud, err))
        return -1;
    dup_or(&cfg->rules_dir, get(fn, ud, "QM_SUPPORT_RULES_DIR"), "./rules");
    dup_or(&cfg->redis_prefix, get(fn, ud, "QM_SUPPORT_REDIS_PREFIX"), "qm:support:");
    int ttl_s = 60;
    if ((v = get(fn, ud, "QM_SUPPORT_LEASE_TTL")) &&
        parse_int("QM_SUPPORT_LEASE_TTL", v, 1, 86400, &ttl_s, err))
        return -1;
    cfg->lease_ttl_ms = ttl_s * 1000;
    cfg->probe_hold_ms = 0;
    if ((v = get(fn, ud, "QM_SUPPORT_PROBE_HOLD_MS")) &&
        parse_int("QM_SUPPORT_PROBE_HOLD_MS", v, 0, 3600000, &cfg->probe_hold_ms, err))
        return -1;
    if (config_rules_timeout(fn, ud, &cfg->rules_timeout_ms, err))
        return -1;
    cfg->http_timeout_ms = 15000;
    if ((v = get(fn, ud, "QM_SUPPORT_HTTP_TIMEOUT_MS")) &&
        parse_int("QM_SUPPORT_HTTP_TIMEOUT_MS", v, 100, 300000, &cfg->http_timeout_ms, err))
        return -1;
    /* SPEC §7: judged against the entry's received_at; SendGrid retries for
     * 24 h and events are deduplicated anyway, so hours, not minutes. */
    cfg->webhook_tolerance_s = 6 * 3600;
    if ((v = get(fn, ud, "QM_SUPPORT_WEBHOOK_TOLERANCE")) &&
        parse_int("QM_SUPPORT_WEBHOOK_TOLERANCE", v, 60, 7 * 86400, &cfg->webhook_tolerance_s,
                  err))
        return -1;
    if (load_providers(cfg, fn, ud, err))
        return -1;
    return load_http(cfg, fn, ud, err);
}

int config_rules_timeout(config_getenv_fn fn, void *ud, int *ms, struct sd_error *err)
{
    *ms = CONFIG_RULES_TIMEOUT_MS;
    const char *v = get(fn, ud, "QM_SUPPORT_RULES_TIMEOUT_MS");
    return v ? parse_int("QM_SUPPORT_RULES_TIMEOUT_MS", v, 10, 600000, ms, err) : 0;
}

int config_load(struct config *cfg, config_getenv_fn fn, void *ud, struct sd_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    if (load_all(cfg, fn, ud, err) == 0)
        return 0;
    config_free(cfg);
    return -1;
}

int config_require_mongo(const struct config *cfg, struct sd_error *err)
{
    if (!cfg->mongo_url)
        return sd_error_set(err, "MONGO_DB_URL: required (a MongoDB connection string such as "
                                 "mongodb://host:27017/support)");
    return 0;
}

void config_free(struct config *cfg)
{
    char **strings[] = {&cfg->mongo_url, &cfg->mongo_db, &cfg->redis_host, &cfg->redis_password,
                        &cfg->redis_username, &cfg->redis_tls_ca_file, &cfg->redis_tls_cert_file,
                        &cfg->redis_tls_key_file,
                        &cfg->rules_dir, &cfg->redis_prefix, &cfg->email_from,
                        &cfg->twilio_account_sid, &cfg->twilio_auth_token, &cfg->twilio_api_base,
                        &cfg->sendgrid_api_key, &cfg->sendgrid_api_base,
                        &cfg->sendgrid_webhook_public_key, &cfg->smtp_url, &cfg->smtp_user,
                        &cfg->smtp_password, &cfg->http_host, &cfg->public_url};
    for (size_t i = 0; i < sizeof strings / sizeof *strings; i++) {
        free(*strings[i]);
        *strings[i] = NULL;
    }
    for (int i = 0; i < JOB_COUNT; i++) {
        free(cfg->jobs[i].cron_text);
        cfg->jobs[i].cron_text = NULL;
    }
}
