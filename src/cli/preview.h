/* preview.h — `dry-run --preview OUT`: the planned notifications of a dry-run
 * plan as files a browser opens. Every outbox entry found under the plan's
 * jobs (any document with string `key` and `via`, wherever a job puts its
 * notifications) becomes, for via "email", OUT/mail-NNN.html: the HTML part
 * exactly as rendered by templates.lua, with a header (job, From, To, Subject,
 * type, outbox key) inserted after its <body> tag and the text part before
 * </body>; OUT/index.html lists them by job and type, SMS with their text and
 * segment count. Every value the preview itself interpolates is HTML-escaped;
 * the HTML part is written as is (it is what the mail client would get), under
 * a Content-Security-Policy that blocks scripts, as mail clients do.
 *
 * Nothing is written outside OUT. Ownership: the plan stays the caller's.
 * Errors per core/error.h (the message names the file). */
#ifndef SD_CLI_PREVIEW_H
#define SD_CLI_PREVIEW_H

#include <bson/bson.h>
#include <stddef.h>

#include "core/error.h"

struct preview_counts {
    size_t mails, sms;
};

/* 0 when OUT is an existing, writable directory; else -1 with the reason. */
int preview_check_dir(const char *out_dir, struct sd_error *err);

/* Writes OUT/index.html and one file per planned email. */
int preview_write(const bson_t *plan, const char *out_dir, struct preview_counts *counts,
                  struct sd_error *err);

/* (cli/sms_segments.c) SMS segments of `text` (UTF-8) as the carriers count them: GSM-7 when every
 * character is in the GSM 03.38 alphabet or its extension table (which costs
 * two septets), 160 septets in one segment or 153 a segment when split;
 * otherwise UCS-2, 70 UTF-16 units or 67 a segment (a character outside the
 * BMP is two). Sets *ucs2 to which encoding applies. Empty text: 0. */
size_t preview_sms_segments(const char *text, int *ucs2);

#endif
