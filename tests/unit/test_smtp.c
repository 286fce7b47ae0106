/* Header building of src/providers/smtp.c: RFC 2047 encoded-words, the Date
 * header, address formatting. (Delivery through Mailpit is an integration
 * test: tests/integration/test_outbox_smtp.py.) */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "providers/curl_shared.h"
#include "providers/smtp.h"

/* Issue 22: only exact loopback hosts may skip STARTTLS, and the host
 * quoted in messages never carries userinfo. */
static void test_loopback_is_exact(void **state)
{
    (void)state;
    assert_true(curl_url_is_loopback("smtp://127.0.0.1:1025"));
    assert_true(curl_url_is_loopback("smtp://127.8.9.10"));
    assert_true(curl_url_is_loopback("smtp://localhost:25"));
    assert_true(curl_url_is_loopback("smtp://LOCALHOST"));
    assert_true(curl_url_is_loopback("smtp://[::1]:25"));
    assert_true(curl_url_is_loopback("smtp://bot:pw@127.0.0.1:25"));
    assert_false(curl_url_is_loopback("smtp://localhost.mail.example.com:25"));
    assert_false(curl_url_is_loopback("smtp://127.0.0.1.nip.io:25"));
    assert_false(curl_url_is_loopback("smtp://[::1].example.com"));
    assert_false(curl_url_is_loopback("smtp://localhost@mail.example.com"));
    assert_false(curl_url_is_loopback("smtp://mail.example.com/localhost"));
    char host[128];
    curl_url_host("https://u:p%40ss@hooks.example.com:8443/x?y=1", host, sizeof host);
    assert_string_equal(host, "hooks.example.com:8443");
    curl_url_host("https://hooks.example.com/a@b", host, sizeof host);
    assert_string_equal(host, "hooks.example.com");
    curl_url_host("https://u:p@ss@hooks.example.com/", host, sizeof host);
    assert_null(strstr(host, "ss"));
    assert_null(strstr(host, "p@"));
    char shown[256];
    curl_url_redacted("https://hook:pw-9@hooks.example.com/x", shown, sizeof shown);
    assert_string_equal(shown, "https://hook:***@hooks.example.com/x");
    curl_url_redacted("https://hooks.example.com/x?to=a@b", shown, sizeof shown);
    assert_string_equal(shown, "https://hooks.example.com/x?to=a@b");
    curl_url_redacted("ftp://u:p/w@files example", shown, sizeof shown);
    assert_null(strstr(shown, "p/w"));
    curl_url_redacted("support@acme.example", shown, sizeof shown);
    assert_string_equal(shown, "support@acme.example");
}

static void test_ascii_subject_unchanged(void **state)
{
    (void)state;
    char *s = smtp_encode_header("Ticket #42: new reply");
    assert_string_equal(s, "Ticket #42: new reply");
    free(s);
    s = smtp_encode_header("");
    assert_string_equal(s, "");
    free(s);
}

static void test_utf8_subject_encoded(void **state)
{
    (void)state;
    char *s = smtp_encode_header("Grüße aus Köln — Ticket #42 ✓");
    /* 35 bytes: one word. */
    assert_string_equal(s, "=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4g4oCUIFRpY2tldCAjNDIg4pyT?=");
    free(s);
}

/* Decodes a folded list of encoded-words back, checking each word's limits. */
static char *decode_words(const char *enc)
{
    char *out = calloc(1, strlen(enc) + 1);
    size_t o = 0;
    const char *p = enc;
    while (*p) {
        const char *start = strstr(p, "=?UTF-8?B?");
        assert_non_null(start);
        const char *end = strstr(start + 10, "?=");
        assert_non_null(end);
        assert_true(end + 2 - start <= 75); /* RFC 2047 §2 */
        size_t n = (size_t)(end - start - 10);
        unsigned char buf[128];
        char tmp[128];
        memcpy(tmp, start + 10, n);
        tmp[n] = '\0';
        int len = EVP_DecodeBlock(buf, (unsigned char *)tmp, (int)n);
        while (n && tmp[n - 1] == '=') {
            len--;
            n--;
        }
        memcpy(out + o, buf, (size_t)len);
        o += (size_t)len;
        p = end + 2;
        if (*p) {
            assert_memory_equal(p, "\r\n ", 3); /* folded */
            p += 3;
        }
    }
    out[o] = '\0';
    return out;
}

static void test_long_utf8_subject_split_on_characters(void **state)
{
    (void)state;
    /* 40 × "ä" (2 bytes) plus 10 × "€" (3 bytes) = 110 bytes. */
    char in[256] = "";
    for (int i = 0; i < 40; i++)
        strcat(in, "ä");
    for (int i = 0; i < 10; i++)
        strcat(in, "€");
    char *s = smtp_encode_header(in);
    assert_non_null(strstr(s, "\r\n "));
    /* Each word must decode to whole characters on its own. */
    const char *p = s;
    while ((p = strstr(p, "=?UTF-8?B?")) != NULL) {
        const char *end = strstr(p, "?=");
        char word[128];
        snprintf(word, sizeof word, "%.*s", (int)(end + 2 - p), p);
        char *one = decode_words(word);
        size_t n = strlen(one);
        unsigned char last = (unsigned char)one[n - 1];
        assert_true(last < 0x80 || (last & 0xc0) == 0x80); /* not a lead byte */
        free(one);
        p = end + 2;
    }
    char *back = decode_words(s);
    assert_string_equal(back, in);
    free(back);
    free(s);
}

static void test_header_injection_removed(void **state)
{
    (void)state;
    char *s = smtp_encode_header("Hi\r\nBcc: victim@example.com");
    assert_null(strchr(s, '\r'));
    assert_null(strchr(s, '\n'));
    free(s);
    /* A literal "=?" would be read as an encoded-word: encode it. */
    s = smtp_encode_header("=?UTF-8?B?Zm9v?=");
    assert_true(strncmp(s, "=?UTF-8?B?", 10) == 0);
    char *back = decode_words(s);
    assert_string_equal(back, "=?UTF-8?B?Zm9v?=");
    free(back);
    free(s);
}

static void test_date(void **state)
{
    (void)state;
    char buf[40];
    smtp_format_date(1772355600000LL, buf, sizeof buf); /* 2026-03-01T09:00:00Z */
    assert_string_equal(buf, "Sun, 01 Mar 2026 09:00:00 +0000");
    smtp_format_date(0, buf, sizeof buf);
    assert_string_equal(buf, "Thu, 01 Jan 1970 00:00:00 +0000");
}

static void test_addresses(void **state)
{
    (void)state;
    char *a = smtp_format_address(NULL, "a@example.com");
    assert_string_equal(a, "<a@example.com>");
    free(a);
    a = smtp_format_address("Ann \"The\" Agent", "a@example.com");
    assert_string_equal(a, "\"Ann \\\"The\\\" Agent\" <a@example.com>");
    free(a);
    a = smtp_format_address("Jürgen", "j@example.com");
    assert_string_equal(a, "=?UTF-8?B?SsO8cmdlbg==?= <j@example.com>");
    free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loopback_is_exact),
        cmocka_unit_test(test_ascii_subject_unchanged),
        cmocka_unit_test(test_utf8_subject_encoded),
        cmocka_unit_test(test_long_utf8_subject_split_on_characters),
        cmocka_unit_test(test_header_injection_removed),
        cmocka_unit_test(test_date),
        cmocka_unit_test(test_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
