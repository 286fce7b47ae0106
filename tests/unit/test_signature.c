/* Webhook signatures (src/providers/signature.c): Twilio's HMAC-SHA1 and
 * SendGrid's ECDSA P-256, with published vectors and tampered copies. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>

#include "providers/signature.h"

/* reference/providers.md §2 [verified]. */
#define TW_URL "https://example.com/myapp.php?foo=1&bar=2"
#define TW_TOKEN "12345"
#define TW_SIG "L/OH5YylLD5NRKLltdqwSvS0BnU="
#define TW_FORM "CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1234" \
                "&From=%2B14158675310&To=%2B18005551212"

static const struct sig_param tw_params[] = {
    {"To", "+18005551212"}, /* deliberately unsorted */
    {"CallSid", "CA1234567890ABCDE"},
    {"Digits", "1234"},
    {"Caller", "+14158675310"},
    {"From", "+14158675310"},
};

static void test_twilio_vector(void **state)
{
    (void)state;
    char sig[64];
    assert_int_equal(signature_twilio_compute(TW_TOKEN, TW_URL, tw_params, 5, sig, sizeof sig,
                                              NULL),
                     0);
    assert_string_equal(sig, TW_SIG);
}

static void test_twilio_form_body(void **state)
{
    (void)state;
    struct sd_error err;
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN, TW_URL, TW_FORM, strlen(TW_FORM),
                                                  TW_SIG, &err),
                     0);
    /* '+' in a form body is a space, so the literal '+' numbers must be %2B:
     * the same body with raw '+' is a different message. */
    const char *plus = "CallSid=CA1234567890ABCDE&Caller=+14158675310&Digits=1234"
                       "&From=+14158675310&To=+18005551212";
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN, TW_URL, plus, strlen(plus), TW_SIG,
                                                  &err),
                     -1);
}

static void test_twilio_tampered(void **state)
{
    (void)state;
    struct sd_error err;
    const char *digits = "CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1235"
                         "&From=%2B14158675310&To=%2B18005551212";
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN, TW_URL, digits, strlen(digits),
                                                  TW_SIG, &err),
                     -1);
    assert_non_null(strstr(err.message, "does not match"));
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN, "https://example.com/myapp.php?foo=1",
                                                  TW_FORM, strlen(TW_FORM), TW_SIG, &err),
                     -1);
    assert_int_equal(signature_twilio_verify_form("54321", TW_URL, TW_FORM, strlen(TW_FORM),
                                                  TW_SIG, &err),
                     -1);
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN, TW_URL, TW_FORM, strlen(TW_FORM),
                                                  "L/OH5YylLD5NRKLltdqwSvS0BnV=", &err),
                     -1);
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN, TW_URL, TW_FORM, strlen(TW_FORM), "",
                                                  &err),
                     -1);
    /* A trailing space in a value is part of it: never trimmed. */
    const char *space = TW_FORM "%20";
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN, TW_URL, space, strlen(space), TW_SIG,
                                                  &err),
                     -1);
    /* The message never quotes the token. */
    assert_null(strstr(err.message, TW_TOKEN));
}

static void test_twilio_url_variants(void **state)
{
    (void)state;
    struct sd_error err;
    /* Signed without the port, received with :443 — and the reverse. */
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN,
                                                  "https://example.com:443/myapp.php?foo=1&bar=2",
                                                  TW_FORM, strlen(TW_FORM), TW_SIG, &err),
                     0);
    char sig[64];
    const char *with_port = "https://example.com:443/myapp.php?foo=1&bar=2";
    assert_int_equal(signature_twilio_compute(TW_TOKEN, with_port, tw_params, 5, sig, sizeof sig,
                                              NULL),
                     0);
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN, TW_URL, TW_FORM, strlen(TW_FORM), sig,
                                                  &err),
                     0);
    /* user:pass@ is dropped before signing. */
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN,
                                                  "https://u:p@example.com/myapp.php?foo=1&bar=2",
                                                  TW_FORM, strlen(TW_FORM), TW_SIG, &err),
                     0);
    /* Another port is another URL. */
    assert_int_equal(signature_twilio_verify_form(TW_TOKEN,
                                                  "https://example.com:8443/myapp.php?foo=1&bar=2",
                                                  TW_FORM, strlen(TW_FORM), TW_SIG, &err),
                     -1);
}

static void test_twilio_repeated_keys_sorted_by_value(void **state)
{
    (void)state;
    const struct sig_param a[] = {{"MediaUrl", "b"}, {"MediaUrl", "a"}, {"Body", "x"}};
    const struct sig_param b[] = {{"Body", "x"}, {"MediaUrl", "a"}, {"MediaUrl", "b"}};
    char s1[64], s2[64];
    assert_int_equal(signature_twilio_compute("tok0", "https://h/p", a, 3, s1, sizeof s1, NULL),
                     0);
    assert_int_equal(signature_twilio_compute("tok0", "https://h/p", b, 3, s2, sizeof s2, NULL),
                     0);
    assert_string_equal(s1, s2);
}

/* bodySHA256 from Twilio's docs (sha256 verified); the signature with token
 * 12345 computed independently with Python's hmac. */
#define TW_JSON_BODY "{\"CallSid\":\"CA1234567890ABCDE\",\"Caller\":\"+12349013030\"}"
#define TW_JSON_URL "https://example.com/myapp?bodySHA256=" \
                    "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9"
#define TW_JSON_SIG "hPXmLwIy3Fgqv1i9KPmH/HhQ6zo="

static void test_twilio_json_body(void **state)
{
    (void)state;
    struct sd_error err;
    assert_int_equal(signature_twilio_verify_json(TW_TOKEN, TW_JSON_URL, TW_JSON_BODY,
                                                  strlen(TW_JSON_BODY), TW_JSON_SIG, &err),
                     0);
    const char *tampered = "{\"CallSid\":\"CA1234567890ABCDE\",\"Caller\":\"+12349013031\"}";
    assert_int_equal(signature_twilio_verify_json(TW_TOKEN, TW_JSON_URL, tampered,
                                                  strlen(tampered), TW_JSON_SIG, &err),
                     -1);
    assert_non_null(strstr(err.message, "bodySHA256"));
    /* A URL without bodySHA256 cannot vouch for a JSON body. */
    char sig[64];
    assert_int_equal(signature_twilio_compute(TW_TOKEN, "https://example.com/myapp", NULL, 0, sig,
                                              sizeof sig, NULL),
                     0);
    assert_int_equal(signature_twilio_verify_json(TW_TOKEN, "https://example.com/myapp",
                                                  TW_JSON_BODY, strlen(TW_JSON_BODY), sig, &err),
                     -1);
}

/* SendGrid's own SDK fixture (sendgrid-python/-php/-ruby test suites), the one
 * reference/providers.md verified with OpenSSL: it verifies only with the
 * trailing CRLF. */
#define SG_KEY "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
#define SG_SIG "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
#define SG_TS "1600112502"
#define SG_BODY                                                                                 \
    "[{\"email\":\"hello@world.com\",\"event\":\"dropped\",\"reason\":\"Bounced Address\","     \
    "\"sg_event_id\":\"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA\","                  \
    "\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0\"," \
    "\"smtp-id\":\"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>\","                   \
    "\"timestamp\":1600112492}]\r\n"
/* The SDK fixture's FAILING_PUBLIC_KEY: a valid P-256 key, but another one. */
#define SG_OTHER_KEY "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA=="

static void test_sendgrid_vector(void **state)
{
    (void)state;
    struct sd_error err;
    assert_int_equal(signature_sendgrid_verify(SG_KEY, SG_TS, SG_BODY, strlen(SG_BODY), SG_SIG,
                                               &err),
                     0);
    /* Without the trailing CRLF it is another body. */
    assert_int_equal(signature_sendgrid_verify(SG_KEY, SG_TS, SG_BODY, strlen(SG_BODY) - 2,
                                               SG_SIG, &err),
                     -1);
    assert_int_equal(signature_sendgrid_verify(SG_KEY, "1600112503", SG_BODY, strlen(SG_BODY),
                                               SG_SIG, &err),
                     -1);
    assert_int_equal(signature_sendgrid_verify(SG_OTHER_KEY, SG_TS, SG_BODY, strlen(SG_BODY),
                                               SG_SIG, &err),
                     -1);
    char sig[] = SG_SIG;
    sig[10] = sig[10] == 'A' ? 'B' : 'A';
    assert_int_equal(signature_sendgrid_verify(SG_KEY, SG_TS, SG_BODY, strlen(SG_BODY), sig, &err),
                     -1);
    /* The key split over lines (as in the PHP SDK's fixture) still reads. */
    const char *wrapped = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIv\n"
                          "        IW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
    assert_int_equal(signature_sendgrid_verify(wrapped, SG_TS, SG_BODY, strlen(SG_BODY), SG_SIG,
                                               &err),
                     0);
}

static void test_sendgrid_bad_inputs(void **state)
{
    (void)state;
    struct sd_error err;
    assert_int_equal(signature_sendgrid_verify(NULL, SG_TS, SG_BODY, strlen(SG_BODY), SG_SIG,
                                               &err),
                     -1);
    assert_non_null(strstr(err.message, "SENDGRID_WEBHOOK_PUBLIC_KEY"));
    assert_int_equal(signature_sendgrid_verify("not base64!", SG_TS, SG_BODY, strlen(SG_BODY),
                                               SG_SIG, &err),
                     -1);
    assert_int_equal(signature_sendgrid_verify("AAAA", SG_TS, SG_BODY, strlen(SG_BODY), SG_SIG,
                                               &err),
                     -1);
    assert_int_equal(signature_sendgrid_verify(SG_KEY, "", SG_BODY, strlen(SG_BODY), SG_SIG, &err),
                     -1);
    assert_int_equal(signature_sendgrid_verify(SG_KEY, SG_TS, SG_BODY, strlen(SG_BODY), "", &err),
                     -1);
    assert_int_equal(signature_sendgrid_verify(SG_KEY, SG_TS, SG_BODY, strlen(SG_BODY), "AAAA",
                                               &err),
                     -1);
}

/* A fresh key pair: sign as SendGrid does, verify, then tamper. */
static void test_sendgrid_generated_key(void **state)
{
    (void)state;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    unsigned char *der = NULL;
    int dlen = i2d_PUBKEY(key, &der);
    assert_true(dlen > 0);
    char pub[256];
    EVP_EncodeBlock((unsigned char *)pub, der, dlen);
    OPENSSL_free(der);

    const char *ts = "1700000000", *body = "[{\"event\":\"delivered\",\"email\":\"a@b.com\"}]\r\n";
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char sig[128];
    size_t slen = sizeof sig;
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSignUpdate(ctx, ts, strlen(ts)), 1);
    assert_int_equal(EVP_DigestSignUpdate(ctx, body, strlen(body)), 1);
    assert_int_equal(EVP_DigestSignFinal(ctx, sig, &slen), 1);
    EVP_MD_CTX_free(ctx);
    char sig64[256];
    EVP_EncodeBlock((unsigned char *)sig64, sig, (int)slen);

    struct sd_error err;
    assert_int_equal(signature_sendgrid_verify(pub, ts, body, strlen(body), sig64, &err), 0);
    assert_int_equal(signature_sendgrid_verify(pub, "1700000001", body, strlen(body), sig64, &err),
                     -1);
    char *tampered = strdup(body);
    tampered[12] = 'D';
    assert_int_equal(signature_sendgrid_verify(pub, ts, tampered, strlen(tampered), sig64, &err),
                     -1);
    free(tampered);
    assert_int_equal(signature_sendgrid_verify(SG_KEY, ts, body, strlen(body), sig64, &err), -1);
    EVP_PKEY_free(key);
}

static void test_base64_decode(void **state)
{
    (void)state;
    unsigned char out[16];
    assert_int_equal(signature_base64_decode("aGk=", out, sizeof out), 2);
    assert_memory_equal(out, "hi", 2);
    assert_int_equal(signature_base64_decode("aGkh", out, sizeof out), 3);
    assert_int_equal(signature_base64_decode("aA==", out, sizeof out), 1);
    assert_int_equal(signature_base64_decode("aGk", out, sizeof out), -1);
    assert_int_equal(signature_base64_decode("", out, sizeof out), -1);
    assert_int_equal(signature_base64_decode("a*k=", out, sizeof out), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_twilio_vector),
        cmocka_unit_test(test_twilio_form_body),
        cmocka_unit_test(test_twilio_tampered),
        cmocka_unit_test(test_twilio_url_variants),
        cmocka_unit_test(test_twilio_repeated_keys_sorted_by_value),
        cmocka_unit_test(test_twilio_json_body),
        cmocka_unit_test(test_sendgrid_vector),
        cmocka_unit_test(test_sendgrid_bad_inputs),
        cmocka_unit_test(test_sendgrid_generated_key),
        cmocka_unit_test(test_base64_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
