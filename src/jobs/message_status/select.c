/* msgstatus_select — which failed messages are sent again and which stale
 * ones are looked up at the provider (see model.h). Pure. */
#include <stdio.h>
#include <string.h>

#include "core/bson_field.h"
#include "jobs/message_status/model.h"

static void begin(bson_t *out, uint32_t *n, bson_t *item, const bson_t *doc)
{
    char idx[12];
    snprintf(idx, sizeof idx, "%u", (*n)++);
    BSON_APPEND_DOCUMENT_BEGIN(out, idx, item);
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, "_id")) {
        bson_append_iter(item, "message_id", -1, &it);
        if (BSON_ITER_HOLDS_OID(&it)) {
            char hex[25];
            bson_oid_to_string(bson_iter_oid(&it), hex);
            BSON_APPEND_UTF8(item, "target", hex);
        }
    }
    const char *keep[] = {"provider", "channel", "to", "status", "provider_message_id"};
    for (size_t i = 0; i < sizeof keep / sizeof *keep; i++)
        if (bson_iter_init_find(&it, doc, keep[i]))
            bson_append_iter(item, keep[i], -1, &it);
    if (bson_iter_init_find(&it, doc, "updated_at") && BSON_ITER_HOLDS_DATE_TIME(&it))
        BSON_APPEND_DATE_TIME(item, "read_updated_at", bson_iter_date_time(&it));
}

void msgstatus_plan_retries(const bson_t *const *messages, size_t n, int64_t now_ms,
                            bson_t *out, uint32_t *n_out)
{
    for (size_t i = 0; i < n; i++) {
        const bson_t *m = messages[i];
        const char *status = bson_field_utf8(m, "status"), *direction = bson_field_utf8(m, "direction");
        bson_iter_t it;
        bool final = bson_iter_init_find(&it, m, "final") && bson_iter_as_bool(&it);
        int64_t due = bson_field_date(m, "next_retry_at", -1);
        if (final || due < 0 || due > now_ms || !direction || strcmp(direction, "outbound") ||
            !status || (strcmp(status, "failed") && strcmp(status, "undelivered")))
            continue;
        int64_t attempts = bson_iter_init_find(&it, m, "attempts") && BSON_ITER_HOLDS_NUMBER(&it)
                               ? bson_iter_as_int64(&it)
                               : 1;
        bson_t item;
        begin(out, n_out, &item, m);
        BSON_APPEND_INT64(&item, "attempt", (attempts > 0 ? attempts : 1) + 1);
        bson_append_document_end(out, &item);
    }
}

/* retry.lua's reconcile table: after_seconds.<status>, max_per_tick. */
static int64_t reconcile_after(const bson_t *cfg, const char *status)
{
    bson_iter_t it, a;
    char path[64];
    snprintf(path, sizeof path, "result.after_seconds.%s", status);
    if (bson_iter_init(&it, cfg) && bson_iter_find_descendant(&it, path, &a) &&
        BSON_ITER_HOLDS_NUMBER(&a))
        return bson_iter_as_int64(&a);
    return -1;
}

int msgstatus_plan_polls(const bson_t *const *messages, size_t n, int64_t now_ms,
                         struct rules *rules, bson_t *out, uint32_t *n_out, struct sd_error *err)
{
    bson_t cfg = BSON_INITIALIZER;
    if (rules_get(rules, "retry", "reconcile", &cfg, err)) {
        bson_destroy(&cfg);
        return -1;
    }
    bson_iter_t it, f;
    int64_t max = 50;
    if (bson_iter_init(&it, &cfg) && bson_iter_find_descendant(&it, "result.max_per_tick", &f) &&
        BSON_ITER_HOLDS_NUMBER(&f))
        max = bson_iter_as_int64(&f);
    for (size_t i = 0; i < n && (int64_t)*n_out < max; i++) {
        const bson_t *m = messages[i];
        const char *status = bson_field_utf8(m, "status"), *provider = bson_field_utf8(m, "provider"),
                   *pmid = bson_field_utf8(m, "provider_message_id");
        if (!status || !provider || !pmid || !*pmid)
            continue;
        /* Only Twilio can be asked for free; SendGrid's Email Activity API is
         * a paid add-on (6 requests a minute) and not used. */
        if (strcmp(provider, "twilio"))
            continue;
        int64_t after = reconcile_after(&cfg, status);
        if (after < 0)
            continue;
        int64_t since = bson_field_date(m, "updated_at", 0);
        int64_t polled = bson_field_date(m, "supportd_polled_at", -1);
        if (now_ms - since < after * 1000 || (polled >= 0 && now_ms - polled < after * 1000))
            continue;
        bson_t item;
        begin(out, n_out, &item, m);
        bson_append_document_end(out, &item);
    }
    bson_destroy(&cfg);
    return 0;
}
