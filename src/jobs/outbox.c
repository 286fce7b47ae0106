/* outbox — delivering pending outbox entries from a job's tick.
 *
 * job_deliver_outbox is what every sending job calls at the end of its tick
 * (SPEC §2: "the job that enqueues an entry attempts delivery in the same
 * tick; the notification job retries what is left"). job_outbox is the
 * diagnostic job `supportd once outbox`, which does only that; it runs
 * without a job lease (jobs/registry.c), because each entry is claimed on
 * its own and instances can share the work.
 *
 * Provider clients (one HTTP handle, one SMTP handle) live for one call, so
 * a tick's sends reuse their connections.
 */
#include "jobs/job.h"
#include "jobs/runner.h"
#include "outbox/outbox.h"
#include "providers/http.h"
#include "providers/smtp.h"

int job_deliver_outbox(struct job_env *env, struct sd_error *err)
{
    const struct config *cfg = env->cfg;
    struct http_options hopts = {.timeout_ms = cfg->http_timeout_ms, .stop = env->stop};
    struct http_client *http = http_client_new(&hopts, err);
    if (!http)
        return -1;
    struct smtp_client *smtp = NULL;
    if (cfg->email_provider == EMAIL_SMTP && cfg->smtp_url) {
        struct smtp_options sopts = {.url = cfg->smtp_url,
                                     .user = cfg->smtp_user,
                                     .password = cfg->smtp_password,
                                     .timeout_ms = 2 * cfg->http_timeout_ms,
                                     .stop = env->stop};
        if (!(smtp = smtp_client_new(&sopts, err))) {
            http_client_destroy(http);
            return -1;
        }
    }
    char owner[128];
    runner_instance_id(owner, sizeof owner);
    struct rds_options ropts;
    runner_redis_options(cfg, &ropts);
    struct outbox_ctx ctx = {.mongo = env->mongo,
                             .db = env->db,
                             .redis = env->redis,
                             .prefix = cfg->redis_prefix,
                             .cfg = cfg,
                             .http = http,
                             .smtp = smtp,
                             .log = env->log,
                             .stop = env->stop,
                             .owner = owner,
                             .redis_opts = &ropts,
                             .store = env->store};
    struct outbox_stats st = {0};
    int rc = outbox_deliver(&ctx, env->now_ms, JOB_OUTBOX_LIMIT, &st, err);
    BSON_APPEND_INT64(env->counts, "outbox_due", st.due);
    BSON_APPEND_INT64(env->counts, "outbox_sent", st.sent);
    BSON_APPEND_INT64(env->counts, "outbox_recovered", st.recovered);
    BSON_APPEND_INT64(env->counts, "outbox_retried", st.retried);
    BSON_APPEND_INT64(env->counts, "outbox_failed", st.failed);
    BSON_APPEND_INT64(env->counts, "outbox_skipped", st.skipped);
    BSON_APPEND_INT64(env->counts, "outbox_waiting", st.waiting);
    BSON_APPEND_INT64(env->counts, "outbox_handed_back", st.handed_back);
    smtp_client_destroy(smtp);
    http_client_destroy(http);
    return rc;
}

int job_outbox(struct job_env *env, struct sd_error *err)
{
    return job_deliver_outbox(env, err);
}
