#include "providers/signature.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/core_names.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "providers/form.h"

/* ---- base64 -------------------------------------------------------------- */

int signature_base64_decode(const char *in, unsigned char *out, size_t out_size)
{
    size_t n = strlen(in);
    char *clean = malloc(n + 1);
    if (!clean)
        return -1;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (in[i] != ' ' && in[i] != '\t' && in[i] != '\r' && in[i] != '\n')
            clean[m++] = in[i];
    clean[m] = '\0';
    if (m == 0 || m % 4 != 0 || m / 4 * 3 > out_size) {
        free(clean);
        return -1;
    }
    int len = EVP_DecodeBlock(out, (const unsigned char *)clean, (int)m);
    /* EVP_DecodeBlock counts the bytes padding stands for: take them off. */
    if (len >= 0 && clean[m - 1] == '=')
        len -= clean[m - 2] == '=' ? 2 : 1;
    free(clean);
    return len;
}

/* ---- cached OpenSSL objects ------------------------------------------------
 * Fetching an algorithm, keying an HMAC and decoding a public key cost more
 * than the MAC or the verification itself (scripts/bench message-status:
 * two thirds of the job's CPU before these caches). The key material is the
 * same for every webhook of a process, so each is made once, under a mutex,
 * and reachable from here until exit. */

static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;
static EVP_MAC *hmac_alg;
static EVP_MD *sha256_md;

static void fetch_algorithms(void)
{
    hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char *token;
    EVP_MAC_CTX *keyed;     /* HMAC-SHA1 keyed with token; duplicated per use */
} hmac_cache;
static struct {
    char *key_b64;
    EVP_PKEY *pkey;
} pubkey_cache;

/* A fresh HMAC-SHA1 context keyed with token (caller frees), or NULL. */
static EVP_MAC_CTX *hmac_sha1_for(const char *token)
{
    pthread_once(&fetch_once, fetch_algorithms);
    if (!hmac_alg)
        return NULL;
    EVP_MAC_CTX *out = NULL;
    pthread_mutex_lock(&cache_mu);
    if (!hmac_cache.token || strcmp(hmac_cache.token, token) != 0) {
        EVP_MAC_CTX *c = EVP_MAC_CTX_new(hmac_alg);
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA1", 0),
                               OSSL_PARAM_construct_end()};
        char *copy = strdup(token);
        if (c && copy && EVP_MAC_init(c, (const unsigned char *)token, strlen(token), params) == 1) {
            EVP_MAC_CTX_free(hmac_cache.keyed);
            free(hmac_cache.token);
            hmac_cache.keyed = c;
            hmac_cache.token = copy;
        } else {
            EVP_MAC_CTX_free(c);
            free(copy);
        }
    }
    if (hmac_cache.token && strcmp(hmac_cache.token, token) == 0)
        out = EVP_MAC_CTX_dup(hmac_cache.keyed);
    pthread_mutex_unlock(&cache_mu);
    return out;
}

/* The public key of key_b64 with a reference for the caller, or NULL. */
static EVP_PKEY *public_key_for(const char *key_b64)
{
    EVP_PKEY *out = NULL;
    pthread_mutex_lock(&cache_mu);
    if (!pubkey_cache.key_b64 || strcmp(pubkey_cache.key_b64, key_b64) != 0) {
        unsigned char key[512];
        int klen = signature_base64_decode(key_b64, key, sizeof key);
        const unsigned char *kp = key;
        EVP_PKEY *pkey = klen > 0 ? d2i_PUBKEY(NULL, &kp, klen) : NULL;
        char *copy = strdup(key_b64);
        if (pkey && copy && EVP_PKEY_base_id(pkey) == EVP_PKEY_EC) {
            EVP_PKEY_free(pubkey_cache.pkey);
            free(pubkey_cache.key_b64);
            pubkey_cache.pkey = pkey;
            pubkey_cache.key_b64 = copy;
        } else {
            EVP_PKEY_free(pkey);
            free(copy);
            ERR_clear_error();
        }
    }
    if (pubkey_cache.key_b64 && strcmp(pubkey_cache.key_b64, key_b64) == 0 &&
        EVP_PKEY_up_ref(pubkey_cache.pkey) == 1)
        out = pubkey_cache.pkey;
    pthread_mutex_unlock(&cache_mu);
    return out;
}

/* ---- Twilio -------------------------------------------------------------- */

static int cmp_param(const void *a, const void *b)
{
    const struct sig_param *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->value, y->value);
}

int signature_twilio_compute(const char *auth_token, const char *url,
                             const struct sig_param *params, size_t n, char *out, size_t size,
                             struct sd_error *err)
{
    if (!auth_token || !*auth_token)
        return sd_error_set(err, "TWILIO_AUTH_TOKEN is not set: cannot check signatures");
    if (size < 29)
        return sd_error_set(err, "signature buffer too small");
    struct sig_param *sorted = n ? malloc(n * sizeof *sorted) : NULL;
    if (n && !sorted)
        return sd_error_set(err, "out of memory");
    if (n)
        memcpy(sorted, params, n * sizeof *sorted);
    if (n)
        qsort(sorted, n, sizeof *sorted, cmp_param);
    size_t total = strlen(url) + 1;
    for (size_t i = 0; i < n; i++)
        total += strlen(sorted[i].name) + strlen(sorted[i].value);
    char *data = malloc(total);
    if (!data) {
        free(sorted);
        return sd_error_set(err, "out of memory");
    }
    size_t o = (size_t)snprintf(data, total, "%s", url);
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(data + o, total - o, "%s%s", sorted[i].name, sorted[i].value);
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t mac_len = 0;
    EVP_MAC_CTX *ctx = hmac_sha1_for(auth_token);
    bool ok = ctx && EVP_MAC_update(ctx, (unsigned char *)data, o) == 1 &&
              EVP_MAC_final(ctx, mac, &mac_len, sizeof mac) == 1;
    EVP_MAC_CTX_free(ctx);
    free(data);
    free(sorted);
    if (!ok)
        return sd_error_set(err, "HMAC-SHA1 failed");
    EVP_EncodeBlock((unsigned char *)out, mac, (int)mac_len);
    return 0;
}

/* The URL without "user:pass@" (Twilio drops it before signing). */
static char *strip_userinfo(const char *url)
{
    char *u = strdup(url);
    if (!u)
        return NULL;
    char *host = strstr(u, "://");
    if (!host)
        return u;
    host += 3;
    size_t auth_end = strcspn(host, "/?#");
    char *at = memchr(host, '@', auth_end);
    if (at)
        memmove(host, at + 1, strlen(at + 1) + 1);
    return u;
}

/* The same URL with the scheme's default port added (when absent) or
 * removed (when present); NULL when neither applies. */
static char *port_variant(const char *url)
{
    const char *port = strncasecmp(url, "https://", 8) == 0 ? "443"
                       : strncasecmp(url, "http://", 7) == 0 ? "80" : NULL;
    if (!port)
        return NULL;
    const char *host = strstr(url, "://") + 3;
    size_t hlen = strcspn(host, "/?#");
    const char *colon = memchr(host, ':', hlen);
    size_t n = strlen(url) + 8;
    char *v = malloc(n);
    if (!v)
        return NULL;
    if (!colon) {
        snprintf(v, n, "%.*s:%s%s", (int)(host - url + hlen), url, port, host + hlen);
        return v;
    }
    size_t plen = strlen(port);
    if ((size_t)(host + hlen - colon - 1) == plen && !strncmp(colon + 1, port, plen)) {
        snprintf(v, n, "%.*s%s", (int)(colon - url), url, host + hlen);
        return v;
    }
    free(v);
    return NULL;
}

static bool matches(const char *token, const char *url, const struct sig_param *p, size_t n,
                    const char *signature)
{
    char want[64];
    if (signature_twilio_compute(token, url, p, n, want, sizeof want, NULL))
        return false;
    size_t wl = strlen(want);
    return strlen(signature) == wl && CRYPTO_memcmp(want, signature, wl) == 0;
}

static int verify(const char *token, const char *url, const struct sig_param *p, size_t n,
                  const char *signature, struct sd_error *err)
{
    if (!signature || !*signature)
        return sd_error_set(err, "no X-Twilio-Signature");
    if (!token || !*token)
        return sd_error_set(err, "TWILIO_AUTH_TOKEN is not set: cannot check signatures");
    char *clean = strip_userinfo(url);
    char *alt = clean ? port_variant(clean) : NULL;
    bool ok = clean && (matches(token, clean, p, n, signature) ||
                        (alt && matches(token, alt, p, n, signature)));
    free(clean);
    free(alt);
    return ok ? 0 : sd_error_set(err, "X-Twilio-Signature does not match");
}

int signature_twilio_verify_params(const char *auth_token, const char *url,
                                   const struct sig_param *params, size_t n,
                                   const char *signature, struct sd_error *err)
{
    return verify(auth_token, url, params, n, signature, err);
}

int signature_twilio_verify_form(const char *auth_token, const char *url, const char *body,
                                 size_t len, const char *signature, struct sd_error *err)
{
    struct form_param *fp = NULL;
    size_t n = 0;
    if (form_parse(body, len, &fp, &n, err))
        return -1;
    struct sig_param *p = calloc(n + 1, sizeof *p);
    if (!p) {
        form_free(fp, n);
        return sd_error_set(err, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (struct sig_param){fp[i].name, fp[i].value};
    int rc = verify(auth_token, url, p, n, signature, err);
    free(p);
    form_free(fp, n);
    return rc;
}

int signature_twilio_verify_json(const char *auth_token, const char *url, const char *body,
                                 size_t len, const char *signature, struct sd_error *err)
{
    if (verify(auth_token, url, NULL, 0, signature, err))
        return -1;
    const char *q = strchr(url, '?');
    const char *hit = NULL;
    for (const char *s = q; s && (s = strstr(s, "bodySHA256=")) != NULL; s++) {
        if (s[-1] == '?' || s[-1] == '&') {
            hit = s + strlen("bodySHA256=");
            break;
        }
    }
    if (!hit)
        return sd_error_set(err, "JSON webhook URL has no bodySHA256 parameter");
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)body, len, digest);
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    size_t hl = strcspn(hit, "&#");
    char given[2 * SHA256_DIGEST_LENGTH + 1];
    if (hl != sizeof hex - 1)
        return sd_error_set(err, "bodySHA256 does not match the body");
    for (size_t i = 0; i < hl; i++)
        given[i] = (char)((hit[i] >= 'A' && hit[i] <= 'F') ? hit[i] + 32 : hit[i]);
    given[hl] = '\0';
    if (CRYPTO_memcmp(given, hex, hl) != 0)
        return sd_error_set(err, "bodySHA256 does not match the body");
    return 0;
}

/* ---- SendGrid ------------------------------------------------------------ */

int signature_sendgrid_verify(const char *public_key_b64, const char *timestamp,
                              const char *body, size_t len, const char *signature_b64,
                              struct sd_error *err)
{
    if (!public_key_b64 || !*public_key_b64)
        return sd_error_set(err, "SENDGRID_WEBHOOK_PUBLIC_KEY is not set: cannot check "
                                 "signatures");
    if (!signature_b64 || !*signature_b64 || !timestamp || !*timestamp)
        return sd_error_set(err, "no signature or timestamp header");
    unsigned char sig[256];
    int slen = signature_base64_decode(signature_b64, sig, sizeof sig);
    if (slen <= 0)
        return sd_error_set(err, "signature is not base64");
    EVP_PKEY *pkey = public_key_for(public_key_b64);
    if (!pkey)
        return sd_error_set(err, "SENDGRID_WEBHOOK_PUBLIC_KEY is not a base64 DER EC public key");
    pthread_once(&fetch_once, fetch_algorithms);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && sha256_md && EVP_DigestVerifyInit(ctx, NULL, sha256_md, NULL, pkey) == 1 &&
             EVP_DigestVerifyUpdate(ctx, timestamp, strlen(timestamp)) == 1 &&
             EVP_DigestVerifyUpdate(ctx, body, len) == 1 &&
             EVP_DigestVerifyFinal(ctx, sig, (size_t)slen) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    ERR_clear_error(); /* a failed verify leaves entries nobody else should see */
    return ok ? 0 : sd_error_set(err, "SendGrid event webhook signature does not match");
}
