/* http.h — supportd's HTTP surface (QM_SUPPORT_HTTP_LISTEN): the signed webhook
 * receiver that appends provider callbacks to `status-events` (SPEC §2), with
 * a copy in MongoDB's conversation-status-inbox until they are applied, the
 * /healthz and /readyz probes and the Prometheus /metrics endpoint.
 *
 * The server is libmicrohttpd with its own pool of QM_SUPPORT_HTTP_THREADS
 * threads (epoll), beside the scheduler's: a tick never waits for HTTP, nor
 * HTTP for a tick. Limits: 1 MiB request body, QM_SUPPORT_HTTP_MAX_CONNECTIONS
 * connections, QM_SUPPORT_HTTP_IDLE_TIMEOUT seconds of silence, and
 * QM_SUPPORT_HTTP_REQUEST_TIMEOUT seconds for a whole request to arrive (a
 * watchdog closes slow connections, so a slowloris client holds a slot for at
 * most that long). Each pool thread owns its Redis connection (hiredis
 * contexts are not thread-safe); the background checks take MongoDB clients
 * from the store's pool, the webhooks from a pool of the server's own whose
 * every wait is bounded (2 s).
 *
 * Ownership: http_server_start borrows cfg, store and rules for the server's
 * lifetime; http_server_stop joins every thread and frees everything.
 * Errors follow core/error.h.
 */
#ifndef SD_HTTP_HTTP_H
#define SD_HTTP_HTTP_H

#include "core/config.h"
#include "core/error.h"
#include "rules/reload.h"
#include "store/mongo.h"

/* Largest request body accepted; a bigger one is answered 413. */
#define HTTP_MAX_BODY (1024 * 1024)

struct http_server;

/* Binds cfg->http_host:cfg->http_port and starts serving. NULL + err when the
 * address cannot be bound. */
struct http_server *http_server_start(const struct config *cfg, struct store *store,
                                      struct rules_live *rules, struct sd_error *err);

/* Stops accepting, finishes or closes open connections, joins the threads. */
void http_server_stop(struct http_server *s);

#endif
