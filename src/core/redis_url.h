/* redis_url.h — REDIS_URL, the one-string form of the Redis settings:
 *
 *   redis://[[user]:password@]host[:port][/db]     plain TCP
 *   rediss://[[user]:password@]host[:port][/db]    TLS
 *
 * as the redis-cli, redis-py and the managed services write it. The user name
 * and password are percent-decoded; an IPv6 host is written [addr]. A query
 * string is refused (its options differ between clients; the REDIS_TLS_*
 * variables say the same thing once).
 *
 * Ownership: redis_url_parse fills a caller-owned struct redis_url whose strings
 * are heap copies; redis_url_free releases them (also after a failed parse).
 * Errors follow core/error.h; a message quotes the URL with its password
 * replaced by "***", so it never holds the secret.
 */
#ifndef SD_CORE_REDIS_URL_H
#define SD_CORE_REDIS_URL_H

#include <stdbool.h>

#include "core/error.h"

struct redis_url {
    bool tls;        /* rediss:// */
    char *host;      /* without [ ] */
    int port;        /* 6379 when absent */
    char *username;  /* NULL when absent or empty */
    char *password;  /* NULL when absent */
    int db;          /* 0 when absent */
};

int redis_url_parse(const char *url, struct redis_url *out, struct sd_error *err);
void redis_url_free(struct redis_url *u);

#endif
