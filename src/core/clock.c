#include "core/clock.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

int64_t clock_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t clock_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 1; /* never 0 */
}

/* Howard Hinnant's days_from_civil / civil_from_days: exact for any year and
 * free of the process's TZ, which a daemon must never depend on. */
int64_t clock_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void clock_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return -1;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int days_in_month(int y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return dm[m - 1];
}

int clock_parse_iso(const char *text, int64_t *out_ms, struct sd_error *err)
{
    const char *p = text;
    int y, mo, d, h = 0, mi = 0, s = 0, ms = 0;
    if (!text || digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' ||
        digits(&p, 2, &d))
        goto bad;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
        return sd_error_set(err, "\"%s\" is not a valid date", text ? text : "");
    int64_t offset_min = 0;
    if (*p == '\0')
        goto done;
    if (*p != 'T' && *p != 't' && *p != ' ')
        goto bad;
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi))
        goto bad;
    if (*p == ':') {
        p++;
        if (digits(&p, 2, &s))
            goto bad;
        if (*p == '.') {
            p++;
            int scale = 100, n = 0;
            while (isdigit((unsigned char)*p)) {
                if (n++ < 3) {
                    ms += (*p - '0') * scale;
                    scale /= 10;
                }
                p++;
            }
            if (n == 0)
                goto bad;
        }
    }
    if (h > 23 || mi > 59 || s > 60)
        return sd_error_set(err, "\"%s\" is not a valid time of day", text);
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om;
        if (digits(&p, 2, &oh))
            goto bad;
        if (*p == ':')
            p++;
        if (digits(&p, 2, &om) || oh > 23 || om > 59)
            goto bad;
        offset_min = sign * (oh * 60 + om);
    } else {
        return sd_error_set(err, "\"%s\" has no time zone; add Z or an offset such as +02:00",
                            text);
    }
    if (*p != '\0')
        goto bad;
done:
    *out_ms = ((clock_days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 +
                mi * 60 + s - offset_min * 60) *
               1000) +
              ms;
    return 0;
bad:
    return sd_error_set(err, "\"%s\" is not an ISO 8601 time (expected e.g. 2026-01-31T09:30:00Z)",
                        text ? text : "");
}

void clock_format_iso(int64_t ms, char *buf, size_t size)
{
    int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
    int64_t rem_ms = ms - secs * 1000;
    int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    int64_t sod = secs - days * 86400;
    int64_t y;
    unsigned m, d;
    clock_civil_from_days(days, &y, &m, &d);
    snprintf(buf, size, "%04lld-%02u-%02uT%02d:%02d:%02d.%03dZ", (long long)y, m, d,
             (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60), (int)rem_ms);
}

int clock_random_hex(char *buf, size_t nbytes, struct sd_error *err)
{
    unsigned char raw[64];
    buf[0] = '\0';
    if (nbytes > sizeof raw)
        return sd_error_set(err, "random id of %zu bytes is too long", nbytes);
    size_t got = 0;
    while (got < nbytes) {
        ssize_t n = getrandom(raw + got, nbytes - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return sd_error_set(err, "getrandom: %s", strerror(errno));
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < nbytes; i++)
        snprintf(buf + 2 * i, 3, "%02x", raw[i]);
    return 0;
}
