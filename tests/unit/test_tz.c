#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/tz.h"

/* A TZif v2 file built here: a v1 block with no transitions, then the v2
 * block with two (CET → CEST on 2026-03-29T01:00Z, back on 2026-10-25T01:00Z)
 * and two types (+3600 CET, +7200 CEST). */
static size_t put32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
    return 4;
}

static size_t header(unsigned char *p, uint32_t timecnt, uint32_t typecnt, uint32_t charcnt)
{
    memset(p, 0, 44);
    memcpy(p, "TZif2", 5);
    put32(p + 20, 0);        /* isutcnt */
    put32(p + 24, 0);        /* isstdcnt */
    put32(p + 28, 0);        /* leapcnt */
    put32(p + 32, timecnt);
    put32(p + 36, typecnt);
    put32(p + 40, charcnt);
    return 44;
}

static size_t build(unsigned char *buf)
{
    size_t n = header(buf, 0, 1, 4);
    n += put32(buf + n, 3600), buf[n++] = 0, buf[n++] = 0;   /* one type */
    memcpy(buf + n, "CET", 4), n += 4;
    n += header(buf + n, 2, 2, 9);
    int64_t t[2] = {1774746000, 1792890000};
    for (int i = 0; i < 2; i++) {
        n += put32(buf + n, (uint32_t)((uint64_t)t[i] >> 32));
        n += put32(buf + n, (uint32_t)t[i]);
    }
    buf[n++] = 1, buf[n++] = 0;                                /* indices */
    n += put32(buf + n, 3600), buf[n++] = 0, buf[n++] = 0;     /* CET */
    n += put32(buf + n, 7200), buf[n++] = 1, buf[n++] = 4;     /* CEST */
    memcpy(buf + n, "CET\0CEST", 9), n += 9;
    return n;
}

static void test_offsets(void **state)
{
    (void)state;
    unsigned char buf[256];
    size_t len = build(buf);
    struct tz_zone *z = tz_parse(buf, len);
    assert_non_null(z);
    assert_int_equal(tz_offset_at(z, 1774746000 - 1), 3600);
    assert_int_equal(tz_offset_at(z, 1774746000), 7200);
    assert_int_equal(tz_offset_at(z, 1792890000 - 1), 7200);
    assert_int_equal(tz_offset_at(z, 1792890000), 3600);
    assert_int_equal(tz_offset_at(z, 4000000000LL), 3600); /* last type holds */
    int64_t at[8];
    int32_t off[8];
    size_t n = tz_changes(z, 1767225600, 1798761600, at, off, 8); /* 2026 */
    assert_int_equal(n, 3);
    assert_int_equal(at[0], 1767225600);
    assert_int_equal(off[0], 3600);
    assert_int_equal(at[1], 1774746000);
    assert_int_equal(off[1], 7200);
    assert_int_equal(off[2], 3600);
    tz_free(z);
}

static void test_rejects_garbage(void **state)
{
    (void)state;
    unsigned char buf[256];
    size_t len = build(buf);
    assert_null(tz_parse((const unsigned char *)"not a zone file at all, really not", 34));
    assert_null(tz_parse(buf, len - 20)); /* truncated */
    buf[44 + 10 + 44 + 16] = 9;            /* a transition naming a type that does not exist */
    assert_null(tz_parse(buf, len));
}

static void test_names(void **state)
{
    (void)state;
    assert_null(tz_get("../../etc/passwd"));
    assert_null(tz_get("/etc/localtime"));
    assert_null(tz_get("Mars/Olympus_Mons"));
    assert_null(tz_get(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offsets),
        cmocka_unit_test(test_rejects_garbage),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
