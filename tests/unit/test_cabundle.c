#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cabundle.h"

/* A scratch folder per test with files a.pem and b.pem, and a subfolder dir.pem. */
struct scratch {
    char dir[64];
    char a[96], b[96], missing[96], subdir[96];
};

static void touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("-----BEGIN CERTIFICATE-----\n", f);
    fclose(f);
}

static int setup(void **state)
{
    struct scratch *s = calloc(1, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/test_cabundle.XXXXXX");
    if (!mkdtemp(s->dir))
        return -1;
    snprintf(s->a, sizeof s->a, "%s/a.pem", s->dir);
    snprintf(s->b, sizeof s->b, "%s/b.pem", s->dir);
    snprintf(s->missing, sizeof s->missing, "%s/missing.pem", s->dir);
    snprintf(s->subdir, sizeof s->subdir, "%s/dir.pem", s->dir);
    touch(s->a);
    touch(s->b);
    mkdir(s->subdir, 0700);
    unsetenv("SSL_CERT_FILE");
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    struct scratch *s = *state;
    unlink(s->a);
    unlink(s->b);
    rmdir(s->subdir);
    rmdir(s->dir);
    free(s);
    unsetenv("SSL_CERT_FILE");
    return 0;
}

static void env_wins_over_candidates(void **state)
{
    struct scratch *s = *state;
    const char *list[] = {s->a, NULL};
    setenv("SSL_CERT_FILE", s->b, 1);
    assert_string_equal(cabundle_path_from(list), s->b);
}

static void unusable_env_falls_back(void **state)
{
    struct scratch *s = *state;
    const char *list[] = {s->a, NULL};
    setenv("SSL_CERT_FILE", s->missing, 1);
    assert_string_equal(cabundle_path_from(list), s->a);
    setenv("SSL_CERT_FILE", s->subdir, 1); /* a folder is not a bundle */
    assert_string_equal(cabundle_path_from(list), s->a);
    setenv("SSL_CERT_FILE", "", 1);
    assert_string_equal(cabundle_path_from(list), s->a);
}

static void first_existing_candidate(void **state)
{
    struct scratch *s = *state;
    const char *list[] = {s->missing, s->subdir, s->b, s->a, NULL};
    assert_string_equal(cabundle_path_from(list), s->b);
}

static void none_found_is_null(void **state)
{
    struct scratch *s = *state;
    const char *list[] = {s->missing, s->subdir, NULL};
    assert_null(cabundle_path_from(list));
    const char *empty[] = {NULL};
    assert_null(cabundle_path_from(empty));
    setenv("SSL_CERT_FILE", s->missing, 1);
    assert_null(cabundle_path_from(list));
}

static void symlink_to_bundle_counts(void **state)
{
    struct scratch *s = *state;
    char link[128];
    snprintf(link, sizeof link, "%s/link.pem", s->dir);
    assert_int_equal(symlink(s->a, link), 0);
    const char *list[] = {link, NULL};
    assert_string_equal(cabundle_path_from(list), link);
    unlink(link);
}

/* The real list: the standard paths of Debian/Ubuntu, RHEL/Fedora and Alpine, Debian's first. */
static void standard_candidates(void **state)
{
    (void)state;
    const char *want[] = {
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/cert.pem",
    };
    size_t n = 0;
    while (cabundle_candidates[n])
        n++;
    assert_string_equal(cabundle_candidates[0], want[0]);
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        int found = 0;
        for (size_t j = 0; j < n; j++)
            found |= strcmp(cabundle_candidates[j], want[i]) == 0;
        if (!found)
            fail_msg("cabundle_candidates lacks %s", want[i]);
    }
    /* cabundle_path() is cabundle_path_from(cabundle_candidates) */
    const char *got = cabundle_path();
    const char *again = cabundle_path_from(cabundle_candidates);
    if (got || again)
        assert_string_equal(got, again);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(env_wins_over_candidates, setup, teardown),
        cmocka_unit_test_setup_teardown(unusable_env_falls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(first_existing_candidate, setup, teardown),
        cmocka_unit_test_setup_teardown(none_found_is_null, setup, teardown),
        cmocka_unit_test_setup_teardown(symlink_to_bundle_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(standard_candidates, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
