/* config.h — supportd's configuration, read once from the environment and
 * validated up front (SPEC §1). A missing or malformed value is an error whose
 * message starts with the variable's name; the CLI turns it into exit code 2.
 *
 * Ownership: config_load fills a caller-owned struct config whose strings are
 * heap copies; config_free releases them. Secrets (REDIS_PASSWORD,
 * TWILIO_AUTH_TOKEN, SENDGRID_API_KEY, SMTP_PASSWORD, the passwords inside
 * MONGO_DB_URL, REDIS_URL and SMTP_URL, as written and decoded) are registered
 * with the log redactor as they are read.
 */
#ifndef SD_CORE_CONFIG_H
#define SD_CORE_CONFIG_H

#include <stdbool.h>

#include "core/cron.h"
#include "core/error.h"
#include "core/log.h"

/* The scheduled jobs. JOB_PROBE is a diagnostic job (connectivity check that
 * can hold its lease for a while); it is off unless QM_SUPPORT_PROBE=true.
 * JOB_OUTBOX is another: it only delivers pending outbox entries (what every
 * job does at the end of its tick), off unless QM_SUPPORT_OUTBOX=true. */
enum job_id {
    JOB_SNOOZE,
    JOB_MESSAGE_STATUS,
    JOB_NOTIFICATION,
    JOB_COMMUNICATION_CHECK,
    JOB_PROBE,
    JOB_OUTBOX,
    JOB_COUNT
};

struct job_spec {
    const char *name;         /* CLI name, e.g. "message-status" */
    const char *flag_env;     /* e.g. "QM_SUPPORT_MESSAGE_STATUS" */
    const char *cron_env;     /* e.g. "QM_SUPPORT_MESSAGE_STATUS_CRON" */
    const char *default_cron;
};

extern const struct job_spec job_specs[JOB_COUNT];

/* Returns the job whose CLI name is `name`, or -1. */
int job_find(const char *name);

enum email_provider { EMAIL_SENDGRID, EMAIL_SMTP };

struct job_config {
    bool enabled;
    char *cron_text;
    struct cron_expr cron;
};

struct config {
    char *mongo_url;      /* NULL when unset; required only by run/once */
    char *mongo_db;       /* from MONGO_DB_NAME, else the URL's path */
    /* Redis: REDIS_URL, or REDIS_HOST/PORT/PASSWORD/DB/USERNAME (never both). */
    char *redis_host;
    int redis_port;
    char *redis_username; /* NULL: AUTH password (or none); else AUTH user password (ACL) */
    char *redis_password; /* NULL when unset */
    int redis_db;
    bool redis_from_url;  /* the above came from REDIS_URL */
    bool redis_tls;       /* REDIS_TLS=true or rediss://: verified TLS, never unverified */
    char *redis_tls_ca_file;   /* NULL: the system's CA bundle (core/cabundle.h) */
    char *redis_tls_cert_file; /* client certificate and its key: both or neither */
    char *redis_tls_key_file;
    struct job_config jobs[JOB_COUNT];
    char *rules_dir;
    char *redis_prefix;
    enum email_provider email_provider;
    char *email_from;
    char *twilio_account_sid, *twilio_auth_token, *twilio_api_base;
    char *sendgrid_api_key, *sendgrid_api_base, *sendgrid_webhook_public_key;
    char *smtp_url, *smtp_user, *smtp_password;
    enum log_level log_level;
    bool log_json;
    int lease_ttl_ms;     /* QM_SUPPORT_LEASE_TTL (seconds) */
    int probe_hold_ms;    /* QM_SUPPORT_PROBE_HOLD_MS */
    int http_timeout_ms;  /* QM_SUPPORT_HTTP_TIMEOUT_MS: per provider request attempt */
    int rules_timeout_ms; /* QM_SUPPORT_RULES_TIMEOUT_MS: wall clock per rule call */
    int webhook_tolerance_s; /* QM_SUPPORT_WEBHOOK_TOLERANCE: SendGrid timestamp vs received_at */
    /* The HTTP surface (src/http/): off while http_host is NULL. */
    char *http_host;         /* QM_SUPPORT_HTTP_LISTEN host part (numeric or a name) */
    int http_port;           /* its port (1-65535) */
    char *public_url;        /* QM_SUPPORT_PUBLIC_URL, no trailing '/'; NULL when unset */
    int http_threads;        /* QM_SUPPORT_HTTP_THREADS */
    int http_max_connections;  /* QM_SUPPORT_HTTP_MAX_CONNECTIONS */
    int http_idle_timeout_s;   /* QM_SUPPORT_HTTP_IDLE_TIMEOUT: silence before a connection is closed */
    int http_request_timeout_s; /* QM_SUPPORT_HTTP_REQUEST_TIMEOUT: a whole request must arrive within it */
};

#define CONFIG_RULES_TIMEOUT_MS 2000

/* Looks a variable up; returns NULL when unset. `ud` is passed through. */
typedef const char *(*config_getenv_fn)(const char *name, void *ud);

/* The process environment, for config_load. */
const char *config_getenv_process(const char *name, void *ud);

/* QM_SUPPORT_RULES_TIMEOUT_MS alone (10-600000, default 2000), for commands
 * that need no other configuration (`rules check`). */
int config_rules_timeout(config_getenv_fn get, void *ud, int *ms, struct sd_error *err);

/* Reads and validates everything. On error, cfg holds nothing to free. */
int config_load(struct config *cfg, config_getenv_fn get, void *ud, struct sd_error *err);

/* run/once need MongoDB: fails naming MONGO_DB_URL when it is missing. */
int config_require_mongo(const struct config *cfg, struct sd_error *err);

void config_free(struct config *cfg);

#endif
