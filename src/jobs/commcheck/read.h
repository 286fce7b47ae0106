/* commcheck/read.h — what the commcheck files share: BSON readers,
 * the channel helpers (plan.c) and the observation of one check
 * (observe.c). Not for other modules: the job's interface is
 * model.h. Nothing here owns memory beyond what its comment says.
 */
#ifndef SD_JOBS_COMMCHECK_READ_H
#define SD_JOBS_COMMCHECK_READ_H

#include <bson/bson.h>
#include <stdio.h>
#include <string.h>

#include "jobs/commcheck/model.h"
#include "providers/json.h"

#define COMMCHECK_MAX_CHECKS 4

/* ---- small readers (missing or mistyped values read as absent) ----------- */

static inline const char *utf8_at(const bson_t *doc, const char *path)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_UTF8(&it))
        return bson_iter_utf8(&it, NULL);
    return NULL;
}

static inline bool has(const char *s) { return s && *s; }

static inline int64_t int_at(const bson_t *doc, const char *path, int64_t dflt)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_NUMBER(&it))
        return bson_iter_as_int64(&it);
    return dflt;
}

static inline bool oid_at(const bson_t *doc, const char *path, bson_oid_t *out)
{
    bson_iter_t it;
    if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &it) &&
        BSON_ITER_HOLDS_OID(&it)) {
        bson_oid_copy(bson_iter_oid(&it), out);
        return true;
    }
    return false;
}

static inline bool hex_at(const bson_t *doc, const char *path, char hex[25])
{
    bson_oid_t oid;
    if (!oid_at(doc, path, &oid)) {
        snprintf(hex, 25, "?");
        return false;
    }
    bson_oid_to_string(&oid, hex);
    return true;
}

/* A top-level key lookup that allows dots inside the key (URLs, domains). */
static inline bool entry_of(const bson_t *map, const char *key, bson_t *child)
{
    bson_iter_t it;
    uint32_t len;
    const uint8_t *data;
    if (!map || !bson_iter_init(&it, map))
        return false;
    while (bson_iter_next(&it)) {
        if (strcmp(bson_iter_key(&it), key) != 0)
            continue;
        if (!BSON_ITER_HOLDS_DOCUMENT(&it))
            return false;
        bson_iter_document(&it, &len, &data);
        return bson_init_static(child, data, len);
    }
    return false;
}

static inline int64_t map_int(const bson_t *map, const char *key)
{
    bson_iter_t it;
    if (!map || !bson_iter_init(&it, map))
        return 0;
    while (bson_iter_next(&it))
        if (strcmp(bson_iter_key(&it), key) == 0 && BSON_ITER_HOLDS_NUMBER(&it))
            return bson_iter_as_int64(&it);
    return 0;
}

static inline void idx(char *buf, size_t size, uint32_t i) { snprintf(buf, size, "%u", i); }

/* ---- channels (plan.c) ----------------------------------------------------- */

/* The channel's provider: `provider`, else twilio for sms, sendgrid for email. */
const char *commcheck_provider_of(const bson_t *ch);
/* The channel's authenticated domain: `domain`, else the from_email's. */
const char *commcheck_domain_of(const bson_t *ch);
/* "main" for the account the credentials belong to, else the SID. */
const char *commcheck_account_label(const char *sid, const struct commcheck_providers *p);
/* The real SID behind a label ("main" → TWILIO_ACCOUNT_SID when known). */
const char *commcheck_sid_of_label(const char *label, const struct commcheck_providers *p);
/* The number, domain or address the managers know the channel by (into buf). */
const char *commcheck_label_of(const bson_t *ch, char *buf, size_t size);
/* The checks that apply to a channel, with their probe ids ("" for the
 * balance, which depends on the account's answer). Returns how many. */
int commcheck_checks_of(const bson_t *ch, const struct commcheck_providers *p,
                        const char *checks[COMMCHECK_MAX_CHECKS],
                        char probe_ids[COMMCHECK_MAX_CHECKS][600]);
/* The billing account label of a Twilio channel, from round 1's answer. */
bool commcheck_billing_label(const struct commcheck_input *in, const bson_t *ch, char *out,
                             size_t size);
/* The channel's entry in round 1's domain listing (entry borrows the answer). */
bool commcheck_domain_entry(const struct commcheck_input *in, const bson_t *ch,
                            const char *probe_id, bson_t *entry);
bool commcheck_http_url(const char *u);

/* ---- one check's observation (observe.c) --------------------------------- */

/* One check's observation: the `result` table health.lua's assess() reads,
 * plus what the alert says. */
struct observation {
    bool unchecked;           /* no answer to judge (not configured, deadline, dependency) */
    bson_t result;            /* {ok, status, timeout, unreachable, definitive, ...} */
    char message[600];        /* what was seen */
    char cause[32];           /* channel_broken | provider_unreachable | endpoint_unreachable */
    char target[600];         /* the number, domain, account or URL checked */
    long http_status;
};

/* Reads the answers for one check of one channel into o (o->result is
 * initialised here; the caller destroys it). Pure. */
void commcheck_observe(const struct commcheck_input *in, const bson_t *ch, const char *check,
                       const char *probe_id, struct observation *o);

#endif
