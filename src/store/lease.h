/* lease.h — a per-job lease in Redis, so that across any number of instances
 * only one runs a given job's tick at a time.
 *
 * Acquire: SET key token NX PX ttl, with a token "<host>:<pid>/<160 random
 * bits>" unique to this acquisition. While held, a renewer thread (with its own
 * Redis connection) extends it every ttl/3 by compare-and-pexpire; release is
 * compare-and-delete on the server (reference/providers.md §9), so an instance
 * never deletes a lease that expired and was taken by another. A holder stuck
 * in a bounded call past its limit (core/stall.h) is not renewed for.
 *
 * The lease saves work; it does not keep data correct — a paused process can
 * outlive it. Every write a job makes must stay safe without it.
 *
 * Ownership: struct lease is caller-owned storage; lease_release stops the
 * renewer and frees what lease_acquire set up.
 */
#ifndef SD_STORE_LEASE_H
#define SD_STORE_LEASE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "core/error.h"
#include "core/stall.h"
#include "store/redis.h"

struct lease {
    char key[256];
    char token[192];
    int ttl_ms;
    atomic_bool lost;      /* renewal found the lease gone or taken */
    _Atomic int64_t valid_until; /* CLOCK_MONOTONIC ms: held at least until then */
    /* renewer */
    struct rds *conn;
    pthread_t thread;
    bool renewing;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    /* Set by the caller after lease_acquire: the holding thread's watch. The
     * renewer stops renewing once that thread is stuck (core/stall.h), so
     * another instance takes the job over after the TTL. NULL: always renew. */
    struct stall_watch *watch;
    bool abandoned;
};

/* Tries once. Returns 0 with *acquired telling whether we hold it (when not,
 * holder — if non-NULL, size holder_size — receives the holder's token), or -1
 * when Redis could not be asked. */
int lease_acquire(struct rds *r, const char *key, const char *owner, int ttl_ms,
                  struct lease *out, bool *acquired, char *holder, size_t holder_size,
                  struct sd_error *err);

/* Starts the renewer thread on its own connection made from opts. */
int lease_start_renewal(struct lease *l, const struct rds_options *opts, struct sd_error *err);

/* True once the renewer has seen the lease lost: the job should stop at its
 * next batch boundary. */
bool lease_is_lost(struct lease *l);

/* True when the lease is certainly still ours for margin_ms more: counted on
 * this process's monotonic clock from the moment the last successful acquire
 * or renewal was sent, so a pause (SIGSTOP, a stalled VM) that outlived the
 * TTL makes it false even before the renewer notices. A job checks it right
 * before a write that only one instance may make at a time (a fence on the
 * writer's side: FerretDB's updates are read-modify-write, reference/ferretdb.md). */
bool lease_valid_for(struct lease *l, int64_t margin_ms);

/* Stops the renewer and deletes the key if it still holds our token. Returns
 * -1 (err filled) when Redis could not be asked; the lease then expires by
 * itself after its TTL. */
int lease_release(struct rds *r, struct lease *l, struct sd_error *err);

/* The owner part ("<host>:<pid>") of a token, copied into buf. */
void lease_token_owner(const char *token, char *buf, size_t size);

#endif
