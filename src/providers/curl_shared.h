/* curl_shared.h — what every libcurl user here (http.c, smtp.c,
 * endpoint_probe.c) does alike: abort on the stop flag, sort curl's errors
 * into enum http_failure, name a URL's host in messages without its
 * userinfo, and tell loopback URLs apart. No ownership; no errors. */
#ifndef SD_PROVIDERS_CURL_SHARED_H
#define SD_PROVIDERS_CURL_SHARED_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>

#include "providers/http.h"

/* CURLOPT_XFERINFOFUNCTION with an atomic_bool * (or NULL) as its data:
 * aborts the transfer once it turns true. */
int curl_stop_progress(void *stop, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow);

enum http_failure curl_failure(CURLcode rc, bool too_large);

/* Host (and port, when the URL names one) of url as curl's URL parser reads
 * it, for messages: never userinfo, path or query; "(an unparseable URL)"
 * when curl cannot read it (then nothing of it is quoted). */
void curl_url_host(const char *url, char *out, size_t size);

/* url for quoting in alerts, mails and logs: a password in its userinfo
 * (https://user:password@host/…, common in webhook URLs) becomes "***". */
void curl_url_redacted(const char *url, char *out, size_t size);

/* Exactly localhost, an address in 127.0.0.0/8 or [::1] (such hosts may skip
 * STARTTLS); never a name that merely starts like one. */
bool curl_url_is_loopback(const char *url);

#endif
