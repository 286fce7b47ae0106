/* mail.h — one email as the outbox hands it to a provider (SendGrid or SMTP).
 * All strings are borrowed, UTF-8. At least one of text and html is set; when
 * both are, the message is multipart/alternative with the text part first.
 */
#ifndef SD_PROVIDERS_MAIL_H
#define SD_PROVIDERS_MAIL_H

struct mail {
    const char *from;      /* address, required */
    const char *from_name; /* display name, may be NULL */
    const char *to;        /* address, required */
    const char *to_name;   /* may be NULL */
    const char *subject;   /* may be NULL or "" */
    const char *text;      /* text/plain body, may be NULL */
    const char *html;      /* text/html body, may be NULL */
    const char *key;       /* outbox key, carried along for correlation; may be NULL */
};

#endif
