#include "core/redis_url.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The URL as it may be quoted: the password (between the first ':' of the
 * userinfo and the last '@' of the URL) becomes "***". Generated passwords
 * hold '/', '?', '#' and '@' unescaped; a Redis URL has no other place for an
 * '@', so the last one ends the userinfo whatever stands before it. */
static void masked(const char *url, char *buf, size_t size)
{
    const char *auth = strstr(url, "://");
    const char *start = auth ? auth + 3 : url;
    const char *at = strrchr(start, '@');
    const char *colon = at ? memchr(start, ':', (size_t)(at - start)) : NULL;
    if (!colon) {
        snprintf(buf, size, "%s", url);
        return;
    }
    snprintf(buf, size, "%.*s***%s", (int)(colon + 1 - url), url, at);
}

/* Percent-decodes [s, s+n) into a new string; NULL on a bad escape. */
static char *decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
            !isxdigit((unsigned char)s[i + 2])) {
            free(out);
            return NULL;
        }
        char hex[3] = {s[i + 1], s[i + 2], 0};
        *o++ = (char)strtol(hex, NULL, 16);
        i += 2;
    }
    *o = '\0';
    return out;
}

static int fail(struct sd_error *err, const char *url, const char *why)
{
    char shown[512];
    masked(url, shown, sizeof shown);
    return sd_error_set(err, "REDIS_URL: \"%s\": %s", shown, why);
}

int redis_url_parse(const char *url, struct redis_url *out, struct sd_error *err)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    const char *p;
    if (strncasecmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncasecmp(url, "rediss://", 9) == 0) {
        p = url + 9;
        out->tls = true;
    } else {
        return fail(err, url, "must start with redis:// or rediss:// (TLS)");
    }
    /* The userinfo ends at the last '@' (see masked): a password may hold
     * '/', '?' and '#' as generated. */
    const char *at = strrchr(p, '@');
    const char *rest = at ? at + 1 : p;
    if (strpbrk(rest, "?#"))
        return fail(err, url, "query strings and fragments are not supported (set REDIS_TLS_* "
                              "for the TLS options)");
    const char *path = rest + strcspn(rest, "/");
    const char *hostport = p;
    if (at) {
        if (memchr(p, '@', (size_t)(at - p)))
            return fail(err, url, "the user name or password holds an unescaped '@' "
                                  "(write it as %40)");
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *user_end = colon ? colon : at;
        if (user_end > p && !(out->username = decode(p, (size_t)(user_end - p))))
            return fail(err, url, "bad %-escape in the user name");
        if (colon && !(out->password = decode(colon + 1, (size_t)(at - colon - 1))))
            return fail(err, url, "bad %-escape in the password");
        if (out->password && !*out->password) {
            free(out->password);
            out->password = NULL;
        }
        if (out->username && !out->password)
            return fail(err, url, "a user name needs a password (user:password@host)");
        hostport = at + 1;
    }
    size_t hp_len = (size_t)(path - hostport);
    const char *host = hostport, *port = NULL;
    size_t host_len = hp_len;
    if (hp_len && host[0] == '[') {
        const char *close = memchr(host, ']', hp_len);
        if (!close)
            return fail(err, url, "unbalanced [ ] around the IPv6 address");
        host++;
        host_len = (size_t)(close - host);
        if (close + 1 < path) {
            if (close[1] != ':')
                return fail(err, url, "expected :port after the IPv6 address");
            port = close + 2;
        }
    } else {
        const char *colon = memchr(host, ':', hp_len);
        if (colon) {
            host_len = (size_t)(colon - host);
            port = colon + 1;
        }
    }
    if (host_len == 0)
        return fail(err, url, "names no host");
    out->host = strndup(host, host_len);
    if (port) {
        char *end;
        errno = 0;
        long n = strtol(port, &end, 10);
        if (port == path || end != path || errno || n < 1 || n > 65535)
            return fail(err, url, "the port must be 1-65535");
        out->port = (int)n;
    }
    if (*path == '/' && path[1]) {
        char *end;
        errno = 0;
        long n = strtol(path + 1, &end, 10);
        if (*end || errno || n < 0 || n > INT_MAX || !isdigit((unsigned char)path[1]))
            return fail(err, url, "the path must be a database number (/0, /1, ...)");
        out->db = (int)n;
    }
    return 0;
}

void redis_url_free(struct redis_url *u)
{
    free(u->host);
    free(u->username);
    free(u->password);
    memset(u, 0, sizeof *u);
}
