#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const char overview[] =
    "supportd — the conversations & support processing worker\n"
    "\n"
    "Usage: supportd COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  run                      run every enabled job on its schedule until SIGTERM/SIGINT\n"
    "  once JOB [--now TIME]    run one tick of one job, then exit\n"
    "  status                   show each job's schedule, last run and lease holder;\n"
    "                           exits 1 when an enabled job has not succeeded lately\n"
    "  dry-run --fixtures DIR   plan the jobs' actions on JSON fixtures, touching nothing\n"
    "  dry-run --live           plan the next tick on the live database, writing nothing\n"
    "  explain ID               why a conversation was (or was not) notified; a message's status\n"
    "  rules check [DIR]        load and validate the rule files (exit 1 with file:line)\n"
    "  version                  print the version\n"
    "\n"
    "Jobs: snooze, message-status, notification, communication-check, and the\n"
    "diagnostic jobs probe and outbox (delivers pending notifications only).\n"
    "Each runs only when its flag is true, e.g.\n"
    "QM_SUPPORT_SNOOZE=true. Configuration is read from the environment; see\n"
    "README.md or `supportd run --help`.\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.\n";

static const char env_help[] =
    "Environment:\n"
    "  MONGO_DB_URL             MongoDB connection string, database in the path (required);\n"
    "                           user:password, tls=true, tlsCAFile, tlsCertificateKeyFile,\n"
    "                           authSource, replicaSet, mongodb+srv:// as the driver reads them\n"
    "  MONGO_DB_NAME            overrides the database of the URL\n"
    "  REDIS_URL                redis[s]://[[user]:password@]host[:port][/db] (rediss: TLS);\n"
    "                           or the split form below, not both\n"
    "  REDIS_HOST REDIS_PORT    Redis (localhost 6379)\n"
    "  REDIS_PASSWORD REDIS_DB  Redis AUTH password (none), database number (0)\n"
    "  REDIS_USERNAME           ACL user (AUTH user password; needs REDIS_PASSWORD)\n"
    "  REDIS_TLS                true: TLS, the certificate and host name verified (false)\n"
    "  REDIS_TLS_CA_FILE        CA of the Redis server's certificate (the system's bundle)\n"
    "  REDIS_TLS_CERT_FILE REDIS_TLS_KEY_FILE  client certificate and key (none)\n"
    "  QM_SUPPORT_<JOB>         true to run the job: SNOOZE, MESSAGE_STATUS, NOTIFICATION,\n"
    "                           COMMUNICATION_CHECK, PROBE, OUTBOX (default false)\n"
    "  QM_SUPPORT_<JOB>_CRON    5- or 6-field cron (UTC) overriding the job's schedule\n"
    "  QM_SUPPORT_RULES_DIR     rule files (./rules)\n"
    "  QM_SUPPORT_RULES_TIMEOUT_MS  wall-clock deadline of one rule call or self-test (2000)\n"
    "  QM_SUPPORT_REDIS_PREFIX  prefix of every Redis key (qm:support:)\n"
    "  QM_SUPPORT_LEASE_TTL     seconds a job's lease lives without renewal (60)\n"
    "  QM_SUPPORT_HTTP_TIMEOUT_MS  per attempt of a provider request (15000)\n"
    "  QM_SUPPORT_HTTP_LISTEN   host:port of the HTTP server: webhooks, /healthz,\n"
    "                           /readyz, /metrics (unset: no server)\n"
    "  QM_SUPPORT_PUBLIC_URL    the URL providers call, e.g. https://hooks.example.com\n"
    "  QM_SUPPORT_HTTP_THREADS QM_SUPPORT_HTTP_MAX_CONNECTIONS  (4, 256)\n"
    "  QM_SUPPORT_HTTP_IDLE_TIMEOUT QM_SUPPORT_HTTP_REQUEST_TIMEOUT  seconds (10, 10)\n"
    "  QM_SUPPORT_EMAIL_PROVIDER  sendgrid or smtp (sendgrid)\n"
    "  QM_SUPPORT_EMAIL_FROM    default From address\n"
    "  TWILIO_ACCOUNT_SID TWILIO_AUTH_TOKEN TWILIO_API_BASE\n"
    "  SENDGRID_API_KEY SENDGRID_API_BASE SENDGRID_WEBHOOK_PUBLIC_KEY\n"
    "  QM_SUPPORT_WEBHOOK_TOLERANCE  seconds a SendGrid webhook's timestamp may differ\n"
    "                           from its received_at (21600)\n"
    "  SMTP_URL SMTP_USER SMTP_PASSWORD\n"
    "  LOG_LEVEL                debug, info, warn, error (info)\n"
    "  LOG_FORMAT               json or text (json); logs go to stderr\n";

static const char run_help[] =
    "Usage: supportd run\n"
    "\n"
    "Runs every enabled job on its schedule until SIGTERM or SIGINT, which let the\n"
    "running ticks finish their batch and exit 0. SIGHUP reloads the rules. Any\n"
    "number of instances may run against one MongoDB and Redis: a per-job lease in\n"
    "Redis lets one instance at a time run a job's tick. A slot missed while no\n"
    "instance was up runs once at start-up.\n"
    "\n"
    "With QM_SUPPORT_HTTP_LISTEN=host:port it also serves HTTP: POST\n"
    "/webhooks/twilio/status and /webhooks/sendgrid/events (verified, then appended\n"
    "to status-events), GET /healthz, /readyz and /metrics (Prometheus).\n\n";

static const char once_help[] =
    "Usage: supportd once JOB [--now TIME]\n"
    "\n"
    "Runs one tick of JOB against the configured MongoDB, Redis and providers, then\n"
    "exits: 0 when the tick succeeded, 1 when it failed or another instance held\n"
    "the job's lease, 2 on a usage or configuration error. The job's flag need not\n"
    "be set.\n"
    "\n"
    "  --now TIME   the tick's notion of now, ISO 8601 with a zone\n"
    "               (e.g. 2026-03-01T09:00:00Z)\n\n";

static const char status_help[] =
    "Usage: supportd status\n"
    "\n"
    "Prints, for each job: whether it is enabled, its schedule, its last run and\n"
    "result, its next run, and which instance holds its lease. Reads Redis only.\n"
    "Exits 1 when an enabled job has not succeeded within twice its interval (or\n"
    "Redis cannot be reached), so it can serve as a liveness probe; 0 otherwise.\n\n";

int cli_help(const char *command)
{
    if (!command) {
        fputs(overview, stdout);
        return 0;
    }
    if (!strcmp(command, "run"))
        fputs(run_help, stdout);
    else if (!strcmp(command, "once"))
        fputs(once_help, stdout);
    else if (!strcmp(command, "status"))
        fputs(status_help, stdout);
    else if (!strcmp(command, "dry-run"))
        fputs("Usage: supportd dry-run --fixtures DIR [--job JOB] [--now TIME] [--format json|text]\n"
              "                        [--rules DIR] [--preview OUT]\n"
              "       supportd dry-run --live [--job JOB] [--now TIME] [--rules DIR] [--against DIR]\n"
              "                        [--limit N] [--format json|text] [--preview OUT]\n\n"
              "Runs the jobs' decision logic (the same code as production) on JSON fixtures\n"
              "and prints the planned actions to stdout. No database, Redis or network is\n"
              "touched; the same input gives byte-identical output. DIR holds one Extended\n"
              "JSON array per collection (conversation-conversation.json,\n"
              "conversation-room.json, ...) and optionally meta.json {\"now\": ISO 8601},\n"
              "used when --now is not given. message-status also reads status-events.json\n"
              "(stream entries); message-status and communication-check read\n"
              "provider-answers.json (canned provider answers, see the README). Webhook\n"
              "keys come from the environment, else from meta.json. Rules come from\n"
              "$QM_SUPPORT_RULES_DIR (./rules). Jobs with a dry-run in this version: snooze,\n"
              "message-status, communication-check.\n"
              "Exits 2 when DIR is missing, unreadable or holds no fixture file (other files\n"
              "are named in a warning) or the rules are malformed; 1 when a rule fails while\n"
              "running, in its self-tests or on a document (an error, its time budget\n"
              "$QM_SUPPORT_RULES_TIMEOUT_MS, its memory cap).\n"
              "--preview OUT also writes every planned email as it would be sent, rendered\n"
              "by templates.lua (OUT/mail-NNN.html: a header with From, To, Subject, type\n"
              "and outbox key, the HTML part, the text part), and OUT/index.html listing\n"
              "them by job and type, SMS with their text and segment count. Nothing is\n"
              "written outside OUT, which must be an existing writable folder (else exit 2).\n"
              "--rules DIR plans with that rule set instead of $QM_SUPPORT_RULES_DIR (checked\n"
              "first, like a reload).\n\n"
              "--live plans what the next tick at --now (default: now) would do, on the\n"
              "database and Redis of the environment (as `run`), with the jobs' own queries\n"
              "and batches, and writes nothing: no document, index or Redis key, no mail.\n"
              "Planned: snooze and notification (those enabled, or --job); message-status\n"
              "and communication-check take their input from a consumer group and the\n"
              "providers, and are dry-run from fixtures only. A read-only database user and\n"
              "a Redis user with only read commands are enough. --against DIR plans again\n"
              "with a second rule set and adds \"diff\": the outbox entries planned by --rules\n"
              "only (added), by --against only (removed), and with the same key but another\n"
              "recipient, subject or body (changed), with counts per job and type. --limit N\n"
              "stops each job after the batch that reaches N items read. A progress line per\n"
              "job goes to stderr; Ctrl-C stops with exit 1 and no plan.\n\n",
              stdout);
    else if (!strcmp(command, "explain"))
        fputs("Usage: supportd explain CONVERSATION_ID|MESSAGE_ID [--now TIME] [--format text|json]\n\n"
              "Reads MongoDB and Redis as `run` does and writes nothing. For a conversation:\n"
              "the fields the jobs read and its room; every decision the snooze and\n"
              "notification jobs take on it at --now (default: now), with the jobs' own\n"
              "code, as would_send, already_sent (found in the outbox by its key, with its\n"
              "status, sent_at and provider id) or suppressed (with the reason); the\n"
              "outbox's earlier entries for it; its SLA (policy, deadlines, warned,\n"
              "breached, paused minutes); and every rule call made for it (file, function,\n"
              "arguments, result, time, error). For a message: its delivery fields and\n"
              "status history. Exits 1 when no conversation or message has the id, 2 when\n"
              "the id is not 24 hexadecimal digits.\n\n",
              stdout);
    else if (!strcmp(command, "rules"))
        fputs("Usage: supportd rules check [DIR]\n\n"
              "Loads every rule file of DIR (default $QM_SUPPORT_RULES_DIR, else ./rules) in\n"
              "the sandbox, checks the functions each must provide and runs their self-tests.\n"
              "Each call and self-test has $QM_SUPPORT_RULES_TIMEOUT_MS (2000) of wall-clock\n"
              "time. Exits 0 when valid, 1 with file:line messages when not.\n\n",
              stdout);
    else if (!strcmp(command, "version"))
        fputs("Usage: supportd version\n\n"
              "Prints supportd's version, where its time-zone data comes from, and one line\n"
              "per library it was built with: its version (asked of the library where it\n"
              "can say) and the Debian source package it was built from, or \"system\n"
              "library\" for the development build's system packages.\n",
              stdout);
    else
        return -1;
    if (strcmp(command, "version"))
        fputs(env_help, stdout);
    return 0;
}

int cli_wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return 1;
    return 0;
}

int cli_usage_error(const char *command, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "supportd %s: ", command);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see supportd %s --help)\n", command);
    return EXIT_USAGE;
}
