/* SMS segment counting for the preview's index (declared in cli/preview.h):
 * GSM 03.38 septets or UTF-16 units, split as the carriers split. */
#include <stdbool.h>
#include <stdint.h>

#include "cli/preview.h"

/* Decodes one UTF-8 sequence; malformed bytes count as U+FFFD (UCS-2). */
static uint32_t next_cp(const unsigned char **p)
{
    const unsigned char *s = *p;
    uint32_t cp;
    int n;
    if (s[0] < 0x80)
        cp = s[0], n = 1;
    else if ((s[0] & 0xE0) == 0xC0)
        cp = s[0] & 0x1F, n = 2;
    else if ((s[0] & 0xF0) == 0xE0)
        cp = s[0] & 0x0F, n = 3;
    else if ((s[0] & 0xF8) == 0xF0)
        cp = s[0] & 0x07, n = 4;
    else {
        *p = s + 1;
        return 0xFFFD;
    }
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *p = s + i;
            return 0xFFFD;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    *p = s + n;
    return cp;
}

/* Septets of cp in GSM 03.38: 1 (basic), 2 (extension table), 0 (not in it). */
static int gsm_septets(uint32_t cp)
{
    static const uint32_t basic[] = {
        '\n', '\r', 0xA3, 0xA5, 0xE8, 0xE9, 0xF9, 0xEC, 0xF2, 0xC7, 0xD8, 0xF8, 0xC5, 0xE5,
        0x394, 0x3A6, 0x393, 0x39B, 0x3A9, 0x3A0, 0x3A8, 0x3A3, 0x398, 0x39E, 0xC6, 0xE6, 0xDF,
        0xC9, 0xA4, 0xA1, 0xC4, 0xD6, 0xD1, 0xDC, 0xA7, 0xBF, 0xE4, 0xF6, 0xF1, 0xFC, 0xE0};
    static const uint32_t ext[] = {'\f', '^', '{', '}', '\\', '[', '~', ']', '|', 0x20AC};
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
        if (cp == ext[i])
            return 2;
    if (cp >= 0x20 && cp <= 0x7E)
        return cp == '`' ? 0 : 1;
    for (size_t i = 0; i < sizeof basic / sizeof *basic; i++)
        if (cp == basic[i])
            return 1;
    return 0;
}

/* Segments of `units` split into parts of at most `part` units, a character
 * of `w` units never split (GSM's escape pairs, UTF-16's surrogate pairs). */
static size_t split(const char *text, bool gsm, size_t part)
{
    size_t segments = 1, used = 0;
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        uint32_t cp = next_cp(&p);
        size_t w = gsm ? (size_t)gsm_septets(cp) : (cp > 0xFFFF ? 2 : 1);
        if (used + w > part) {
            segments++;
            used = 0;
        }
        used += w;
    }
    return segments;
}

size_t preview_sms_segments(const char *text, int *ucs2)
{
    size_t septets = 0, units = 0;
    bool gsm = true;
    const unsigned char *p = (const unsigned char *)(text ? text : "");
    while (*p) {
        uint32_t cp = next_cp(&p);
        int s = gsm_septets(cp);
        if (!s)
            gsm = false;
        septets += (size_t)s;
        units += cp > 0xFFFF ? 2 : 1;
    }
    if (ucs2)
        *ucs2 = !gsm;
    if (!units)
        return 0;
    if (gsm)
        return septets <= 160 ? 1 : split(text, true, 153);
    return units <= 70 ? 1 : split(text, false, 67);
}
