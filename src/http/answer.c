/* answer — the handlers' answer helpers (see answer.h). */
#include "http/answer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"

void http_answer_text(struct http_answer *ans, int status, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    /* Errors of Redis or MongoDB may name a URL: answer as the logs would. */
    char *clean = log_redact_dup(buf);
    ans->status = status;
    ans->content_type = "text/plain; charset=utf-8";
    ans->body = bson_string_new(clean ? clean : "");
    free(clean);
}
