/* twilio.h — the Twilio REST calls supportd makes (API 2010-04-01).
 *
 * Authentication is HTTP Basic with the main account's SID and AuthToken
 * (TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN). A channel may name a sub-account
 * SID: its resources are addressed as /Accounts/{sub}/… with the parent's
 * credentials, which Twilio allows. The account fetch always uses the main
 * credentials too — a standard API key cannot read /Accounts
 * (reference/providers.md §3).
 *
 * Sends are not retried by the HTTP layer on 5xx or timeouts: the message may
 * exist (providers.md §4). twilio_find_message looks a send up by To, sender
 * (number or Messaging Service), Body and time so a caller can check before
 * sending again.
 *
 * All results land in caller-owned structs (fixed-size fields, truncated if
 * longer); errors follow providers/provider.h: -1, err names the call and the
 * account, st classifies.
 */
#ifndef SD_PROVIDERS_TWILIO_H
#define SD_PROVIDERS_TWILIO_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "providers/http.h"
#include "providers/provider.h"

struct twilio {
    struct http_client *http; /* borrowed */
    const char *base;         /* TWILIO_API_BASE, e.g. https://api.twilio.com */
    const char *account_sid;  /* main account */
    const char *auth_token;   /* secret */
};

struct twilio_sms {
    const char *account_sid;     /* sub-account; NULL: the main account */
    const char *to;              /* E.164 */
    const char *from;            /* E.164 or a Messaging Service SID (MG…) */
    const char *body;
    const char *status_callback; /* NULL: none */
};

struct twilio_message {
    char sid[64];
    char status[32];
    char error_code[16];       /* "" when none */
    char error_message[256];
    char to[32], from[32];
    int64_t date_created_ms;   /* 0 when unknown */
};

struct twilio_account {
    char sid[64];
    char status[16];           /* active | suspended | closed */
    char type[16];             /* Trial | Full */
    char friendly_name[128];
};

struct twilio_balance {
    char balance[32];          /* as Twilio sends it: a decimal string */
    double amount;
    char currency[8];
};

struct twilio_number {
    bool found;
    char sid[64];
    char phone_number[32];
    bool sms, mms, voice;
    char sms_url[512];
    char sms_application_sid[64]; /* when set, it overrides sms_url */
    char status[32];
};

/* POST /2010-04-01/Accounts/{sid}/Messages.json → 201 {sid, status, …}.
 * A 2xx whose body cannot be read still means the message was accepted: the
 * call returns 0 with out->sid "" and st->code "bad_answer" (look it up with
 * twilio_find_message if the SID matters). */
int twilio_send_sms(const struct twilio *t, const struct twilio_sms *sms,
                    struct twilio_message *out, struct provider_status *st, struct sd_error *err);

/* GET …/Messages/{MessageSid}.json. account_sid NULL: the main account. */
int twilio_fetch_message(const struct twilio *t, const char *account_sid, const char *sid,
                         struct twilio_message *out, struct provider_status *st,
                         struct sd_error *err);

/* Our clock may be ahead of Twilio's by this much: a send that started at
 * since_ms may carry a date_created this much earlier. NTP keeps hosts within
 * milliseconds; a wider margin would take an identical message sent just
 * before for this one. */
#define TWILIO_CLOCK_SKEW_MS 2000

/* "Did this send reach Twilio?" Lists the most recent messages to sms->to
 * (one page of 50, newest first) — from sms->from, or, when that is a
 * Messaging Service SID (MG…), those whose messaging_service_sid is it — and
 * reports the newest whose body is byte-identical to sms->body, created no
 * earlier than the second since_ms falls in (less TWILIO_CLOCK_SKEW_MS), and
 * whose SID is not one of exclude[0..n_exclude) (the SIDs already known for
 * the message, e.g. the failed original of a re-send). since_ms is when the
 * send being looked for started (its marker, written before the request).
 * *found false is a definite "not there". */
int twilio_find_message(const struct twilio *t, const struct twilio_sms *sms, int64_t since_ms,
                        const char *const *exclude, size_t n_exclude, struct twilio_message *out,
                        bool *found, struct provider_status *st, struct sd_error *err);

/* GET /2010-04-01/Accounts/{sid}.json; sid NULL: the main account. */
int twilio_fetch_account(const struct twilio *t, const char *sid, struct twilio_account *out,
                         struct provider_status *st, struct sd_error *err);

/* GET …/Accounts/{sid}/Balance.json. Child accounts carry no balance: Twilio
 * answers 404 there, which comes back as a permanent failure. */
int twilio_fetch_balance(const struct twilio *t, const char *sid, struct twilio_balance *out,
                         struct provider_status *st, struct sd_error *err);

/* GET …/IncomingPhoneNumbers.json?PhoneNumber=… ; out->found false when the
 * account has no such number (not an error). */
int twilio_lookup_number(const struct twilio *t, const char *account_sid, const char *phone,
                         struct twilio_number *out, struct provider_status *st,
                         struct sd_error *err);

#endif
