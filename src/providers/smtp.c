#include "providers/smtp.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/cabundle.h"
#include "core/clock.h"
#include "core/log.h"
#include "providers/curl_shared.h"

struct smtp_client {
    CURL *curl;
    struct smtp_options opts;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static void global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

struct smtp_client *smtp_client_new(const struct smtp_options *opts, struct sd_error *err)
{
    if (!opts || !opts->url) {
        sd_error_set(err, "SMTP_URL: not set");
        return NULL;
    }
    pthread_once(&global_once, global_init);
    struct smtp_client *c = calloc(1, sizeof *c);
    if (!c || !(c->curl = curl_easy_init())) {
        free(c);
        sd_error_set(err, "libcurl: could not create a handle");
        return NULL;
    }
    c->opts = *opts;
    if (c->opts.connect_timeout_ms <= 0)
        c->opts.connect_timeout_ms = 5000;
    if (c->opts.timeout_ms <= 0)
        c->opts.timeout_ms = 30000;
    return c;
}

void smtp_client_destroy(struct smtp_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    free(c);
}

/* ---- header helpers ------------------------------------------------------ */

static bool plain_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return false;
    return true;
}

/* Length of the UTF-8 sequence starting with byte b (1 for stray bytes). */
static size_t utf8_len(unsigned char b)
{
    return b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
}

char *smtp_encode_header(const char *text)
{
    char *clean = strdup(text ? text : "");
    if (!clean)
        return NULL;
    for (char *p = clean; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    if (plain_ascii(clean) && !strstr(clean, "=?"))
        return clean;
    /* 45 input bytes → 60 base64 characters → 72 with "=?UTF-8?B?" and "?=",
     * under RFC 2047's 75. */
    enum { CHUNK = 45 };
    size_t n = strlen(clean);
    size_t cap = (n / 30 + 2) * 80 + 1;
    char *out = malloc(cap);
    if (!out) {
        free(clean);
        return NULL;
    }
    size_t o = 0, i = 0;
    while (i < n) {
        size_t take = 0;
        while (i + take < n) {
            size_t l = utf8_len((unsigned char)clean[i + take]);
            if (i + take + l > n)
                l = n - i - take;
            if (take + l > CHUNK)
                break;
            take += l;
        }
        if (take == 0)
            take = 1;
        if (o)
            o += (size_t)snprintf(out + o, cap - o, "\r\n ");
        o += (size_t)snprintf(out + o, cap - o, "=?UTF-8?B?");
        o += (size_t)EVP_EncodeBlock((unsigned char *)out + o, (const unsigned char *)clean + i,
                                     (int)take);
        o += (size_t)snprintf(out + o, cap - o, "?=");
        i += take;
    }
    out[o] = '\0';
    free(clean);
    return out;
}

void smtp_format_date(int64_t ms, char *buf, size_t size)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, size, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

char *smtp_format_address(const char *name, const char *addr)
{
    size_t cap = strlen(addr) * 2 + (name ? strlen(name) * 3 : 0) + 160;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    if (!name || !*name) {
        snprintf(out, cap, "<%s>", addr);
        return out;
    }
    if (plain_ascii(name)) {
        /* quoted-string: escape backslash and double quote */
        size_t o = 0;
        out[o++] = '"';
        for (const char *p = name; *p; p++) {
            if (*p == '"' || *p == '\\')
                out[o++] = '\\';
            out[o++] = *p;
        }
        snprintf(out + o, cap - o, "\" <%s>", addr);
        return out;
    }
    char *enc = smtp_encode_header(name);
    if (!enc) {
        free(out);
        return NULL;
    }
    size_t need = strlen(enc) + strlen(addr) + 8;
    if (need > cap) {
        char *p = realloc(out, need);
        if (!p) {
            free(out);
            free(enc);
            return NULL;
        }
        out = p;
        cap = need;
    }
    snprintf(out, cap, "%s <%s>", enc, addr);
    free(enc);
    return out;
}

/* An address usable in the envelope and headers: one '@', no spaces, angle
 * brackets or line breaks. */
static bool address_ok(const char *a)
{
    return a && *a && strchr(a, '@') && !strpbrk(a, " \t\r\n<>\"");
}

/* ---- sending -------------------------------------------------------------- */

static struct curl_slist *add_header(struct curl_slist *l, bool *ok, const char *fmt,
                                     const char *value)
{
    if (!*ok)
        return l;
    size_t n = strlen(fmt) + strlen(value) + 1;
    char *line = malloc(n);
    if (!line) {
        *ok = false;
        return l;
    }
    snprintf(line, n, fmt, value);
    struct curl_slist *nl = curl_slist_append(l, line);
    free(line);
    if (!nl)
        *ok = false;
    return nl ? nl : l;
}

/* Mail lines end in CRLF (RFC 5322 §2.3); a bare LF would be quoted-printable
 * encoded as "=0A", leaving one endless line. Returns a malloc'd copy. */
static char *crlf_lines(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++)
        n += *p == '\n' ? 2 : 1;
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (const char *p = s; *p; p++) {
        if (*p == '\r' && p[1] == '\n')
            continue; /* the LF that follows writes the pair */
        if (*p == '\n' || *p == '\r') {
            *o++ = '\r';
            *o++ = '\n';
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static curl_mimepart *add_text(curl_mime *mime, const char *data, const char *type)
{
    curl_mimepart *p = curl_mime_addpart(mime);
    char *text = p ? crlf_lines(data) : NULL;
    if (!text)
        return NULL;
    curl_mime_data(p, text, CURL_ZERO_TERMINATED); /* curl copies it */
    free(text);
    curl_mime_type(p, type);
    /* Quoted-printable keeps long lines and non-ASCII within SMTP's limits. */
    curl_mime_encoder(p, "quoted-printable");
    return p;
}

static curl_mime *build_body(CURL *h, const struct mail *m)
{
    static const char *const text_type = "text/plain; charset=utf-8";
    static const char *const html_type = "text/html; charset=utf-8";
    bool text = m->text && *m->text, html = m->html && *m->html;
    curl_mime *mime = curl_mime_init(h);
    if (!mime)
        return NULL;
    if (text && html) {
        curl_mime *alt = curl_mime_init(h);
        curl_mimepart *part = curl_mime_addpart(mime);
        if (!alt || !part || !add_text(alt, m->text, text_type) ||
            !add_text(alt, m->html, html_type)) {
            curl_mime_free(alt);
            curl_mime_free(mime);
            return NULL;
        }
        curl_mime_subparts(part, alt); /* part owns alt from here */
        curl_mime_type(part, "multipart/alternative");
    } else if (!add_text(mime, html ? m->html : (text ? m->text : ""),
                         html ? html_type : text_type)) {
        curl_mime_free(mime);
        return NULL;
    }
    return mime;
}

static void classify(CURLcode rc, long reply, bool data_sent, struct provider_status *st)
{
    provider_status_init(st);
    st->attempts = 1;
    if (rc == CURLE_OK)
        return;
    st->http_status = 0;
    switch (rc) {
    case CURLE_LOGIN_DENIED:
        st->cls = PROVIDER_PERMANENT;
        snprintf(st->code, sizeof st->code, "smtp_auth");
        return;
    case CURLE_USE_SSL_FAILED:
        st->cls = PROVIDER_PERMANENT;
        snprintf(st->code, sizeof st->code, "smtp_no_starttls");
        return;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
        st->cls = PROVIDER_TRANSIENT;
        snprintf(st->code, sizeof st->code, "connect");
        return;
    case CURLE_OPERATION_TIMEDOUT:
        st->cls = PROVIDER_TRANSIENT;
        st->maybe_accepted = data_sent;
        snprintf(st->code, sizeof st->code, "timeout");
        return;
    default:
        break;
    }
    if (reply >= 500 && reply < 600) {
        st->cls = PROVIDER_PERMANENT;
        snprintf(st->code, sizeof st->code, "smtp_%ld", reply);
    } else if (reply >= 400 && reply < 500) {
        st->cls = PROVIDER_TRANSIENT;
        snprintf(st->code, sizeof st->code, "smtp_%ld", reply);
    } else {
        st->cls = PROVIDER_TRANSIENT;
        st->maybe_accepted = data_sent;
        snprintf(st->code, sizeof st->code, "smtp_network");
    }
}

int smtp_send(struct smtp_client *c, const struct mail *m, int64_t now_ms, char *message_id,
              size_t size, struct provider_status *st, struct sd_error *err)
{
    provider_status_init(st);
    message_id[0] = '\0';
    if (!address_ok(m->from) || !address_ok(m->to)) {
        st->cls = PROVIDER_PERMANENT;
        snprintf(st->code, sizeof st->code, "bad_address");
        return sd_error_set(err, "SMTP: \"%s\" → \"%s\" is not a valid sender/recipient pair",
                            m->from ? m->from : "", m->to ? m->to : "");
    }
    /* Message-ID: random left part, the sender's domain on the right. */
    char rnd[33], date[40];
    if (clock_random_hex(rnd, 16, NULL))
        snprintf(rnd, sizeof rnd, "%016llx", (unsigned long long)now_ms);
    snprintf(message_id, size, "%s.supportd@%s", rnd, strchr(m->from, '@') + 1);
    smtp_format_date(now_ms, date, sizeof date);

    CURL *h = c->curl;
    curl_easy_reset(h);
    char errbuf[CURL_ERROR_SIZE] = "";
    char env_from[512], env_to[512], mid_hdr[256];
    snprintf(env_from, sizeof env_from, "<%s>", m->from);
    snprintf(env_to, sizeof env_to, "<%s>", m->to);
    snprintf(mid_hdr, sizeof mid_hdr, "<%s>", message_id);

    bool ok = true;
    char *from = smtp_format_address(m->from_name, m->from);
    char *to = smtp_format_address(m->to_name, m->to);
    char *subject = smtp_encode_header(m->subject ? m->subject : "");
    struct curl_slist *headers = NULL, *rcpt = NULL;
    ok = from && to && subject;
    headers = add_header(headers, &ok, "Date: %s", date);
    headers = add_header(headers, &ok, "From: %s", from ? from : "");
    headers = add_header(headers, &ok, "To: %s", to ? to : "");
    headers = add_header(headers, &ok, "Subject: %s", subject ? subject : "");
    headers = add_header(headers, &ok, "Message-ID: %s", mid_hdr);
    if (m->key && *m->key) {
        char *k = smtp_encode_header(m->key);
        headers = add_header(headers, &ok, "X-Supportd-Key: %s", k ? k : "");
        ok = ok && k;
        free(k);
    }
    rcpt = curl_slist_append(NULL, env_to);
    curl_mime *mime = ok && rcpt ? build_body(h, m) : NULL;
    free(from);
    free(to);
    free(subject);
    if (!mime) {
        curl_slist_free_all(headers);
        curl_slist_free_all(rcpt);
        st->cls = PROVIDER_TRANSIENT;
        return sd_error_set(err, "SMTP: out of memory building the message");
    }

    const struct smtp_options *o = &c->opts;
    curl_easy_setopt(h, CURLOPT_URL, o->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_SMTP | CURLPROTO_SMTPS));
#endif
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USE_SSL,
                     strncasecmp(o->url, "smtps://", 8) == 0 || !curl_url_is_loopback(o->url)
                         ? (long)CURLUSESSL_ALL
                         : (long)CURLUSESSL_TRY);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    const char *ca = cabundle_path();
    if (ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, ca);
    if (o->user && *o->user) {
        curl_easy_setopt(h, CURLOPT_USERNAME, o->user);
        curl_easy_setopt(h, CURLOPT_PASSWORD, o->password ? o->password : "");
    }
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_MAIL_FROM, env_from);
    curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, curl_stop_progress);
    /* A mail in flight is finished, not cut, on a stop: see http.c. */
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, NULL);

    CURLcode rc = curl_easy_perform(h);
    long reply = 0;
    curl_off_t uploaded = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &reply);
    curl_easy_getinfo(h, CURLINFO_SIZE_UPLOAD_T, &uploaded);
    classify(rc, reply, uploaded > 0, st);
    int result = 0;
    if (rc != CURLE_OK) {
        char *clean = log_redact_dup(errbuf[0] ? errbuf : curl_easy_strerror(rc));
        const char *why = clean ? clean : curl_easy_strerror(rc);
        if (rc == CURLE_LOGIN_DENIED)
            sd_error_set(err, "SMTP server rejected the login of user %s: %s",
                         o->user ? o->user : "(none)", why);
        else if (rc == CURLE_USE_SSL_FAILED)
            sd_error_set(err, "SMTP server does not offer STARTTLS; refusing to send in clear "
                              "text (use smtps:// or a server with STARTTLS): %s", why);
        else if (reply >= 400)
            sd_error_set(err, "SMTP server refused the mail to %s (reply %ld): %s", m->to, reply,
                         why);
        else
            sd_error_set(err, "SMTP delivery to %s failed: %s", m->to, why);
        free(clean);
        message_id[0] = '\0';
        result = -1;
    }
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(h, CURLOPT_MIMEPOST, NULL);
    curl_mime_free(mime);
    curl_slist_free_all(headers);
    curl_slist_free_all(rcpt);
    return result;
}
