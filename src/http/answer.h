/* answer.h — what an HTTP handler fills and the server sends: a status, a
 * content type and a body the answer owns (bson_string_t, freed by the
 * server after queueing), and the helpers that fill one (answer.c). */
#ifndef SD_HTTP_ANSWER_H
#define SD_HTTP_ANSWER_H

#include <bson/bson.h>

struct http_answer {
    int status;
    const char *content_type;
    bson_string_t *body;          /* owned; NULL = empty */
    const char *retry_after;      /* Retry-After header value, or NULL */
};

/* A plain-text answer, its text redacted as log lines are. */
void http_answer_text(struct http_answer *ans, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
