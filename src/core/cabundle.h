/* cabundle.h — where the trusted CA certificates are.
 *
 * The static release binary carries no CA store and no distribution's compiled-in
 * default, so it looks where the distributions keep theirs. Callers hand the result
 * to libcurl (CURLOPT_CAINFO), libmongoc (tlsCAFile) and OpenSSL for Redis over TLS
 * (store/redis.c). With NULL they keep their
 * library's default (OpenSSL's OPENSSLDIR, /etc/ssl here), which is what the
 * development build against the system's libraries wants anyway.
 */
#ifndef SD_CORE_CABUNDLE_H
#define SD_CORE_CABUNDLE_H

/* Path of the PEM CA bundle to trust: $SSL_CERT_FILE when set and a readable
 * file, else the first readable file of cabundle_candidates, else NULL.
 * The string is borrowed (the environment's or a constant); it is looked up anew on
 * each call, so a bundle installed while supportd runs is picked up. Thread-safe as
 * long as nobody calls setenv meanwhile. */
const char *cabundle_path(void);

/* The standard locations, in order: Debian/Ubuntu/Alpine, RHEL/Fedora, openSUSE,
 * RHEL's extracted trust, Alpine/BSD cert.pem, FreeBSD. NULL-terminated. */
extern const char *const cabundle_candidates[];

/* cabundle_path with another NULL-terminated candidate list (for tests). */
const char *cabundle_path_from(const char *const *candidates);

#endif
