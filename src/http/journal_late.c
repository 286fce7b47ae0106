/* journal_late.c — see journal_late.h.
 *
 * One thread writes the waiting copies, oldest first, one insert each, and
 * stops a round at the first failure (MongoDB still away: the rest would fail
 * the same way, each after the store's bound); it tries again a second later,
 * or at once when a copy arrives. A copy whose _id is there already (the door
 * or an earlier round wrote it after all) is done. The copies are written
 * without their entry's id: the repair sweep then appends them again once
 * they are old enough, whether or not their entry is still in the stream,
 * and message-status deletes them — a copy naming an entry that was already
 * acknowledged would otherwise stay until the stream is trimmed. */
#include "http/journal_late.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "core/log.h"
#include "store/mongo.h"

struct late_doc {
    bson_t *doc;
    struct late_doc *next;
};

struct journal_late {
    struct store *store;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct late_doc *head, *tail; /* oldest first; out of the list while a round writes it */
    size_t n, bytes;              /* everything waiting, the round's copies included */
    bool stop;
    pthread_t thread;
};

static void late_free(struct late_doc *d)
{
    bson_destroy(d->doc);
    free(d);
}

/* Written, or there already. */
static bool write_one(mongoc_client_t *client, const char *db, const bson_t *doc)
{
    mongoc_collection_t *coll = mongoc_client_get_collection(client, db, COLL_STATUS_INBOX);
    bson_error_t berr;
    bool ok = mongoc_collection_insert_one(coll, doc, NULL, NULL, &berr) ||
              berr.code == MONGOC_ERROR_DUPLICATE_KEY;
    mongoc_collection_destroy(coll);
    return ok;
}

/* One round; true when nothing it took is left. */
static bool write_round(struct journal_late *l)
{
    pthread_mutex_lock(&l->mu);
    struct late_doc *list = l->head;
    l->head = l->tail = NULL;
    pthread_mutex_unlock(&l->mu);
    if (!list)
        return true;

    mongoc_client_t *client = store_pop(l->store);
    size_t written = 0, bytes = 0;
    while (list && client && write_one(client, store_db(l->store), list->doc)) {
        struct late_doc *next = list->next;
        written++;
        bytes += list->doc->len;
        late_free(list);
        list = next;
    }
    if (client)
        store_push(l->store, client);

    pthread_mutex_lock(&l->mu);
    l->n -= written;
    l->bytes -= bytes;
    size_t left = l->n;
    if (list) { /* older than what arrived meanwhile: in front of it */
        struct late_doc *last = list;
        while (last->next)
            last = last->next;
        last->next = l->head;
        if (!l->head)
            l->tail = last;
        l->head = list;
    }
    pthread_mutex_unlock(&l->mu);
    if (written) {
        bson_t f = BSON_INITIALIZER;
        BSON_APPEND_INT64(&f, "written", (int64_t)written);
        BSON_APPEND_INT64(&f, "waiting", (int64_t)left);
        log_msg(LOG_INFO, NULL, "webhook.journal_late_written", &f,
                "wrote %zu webhook cop%s to %s that the door could not write when %s came "
                "(%zu still waiting)",
                written, written == 1 ? "y" : "ies", COLL_STATUS_INBOX,
                written == 1 ? "it" : "they", left);
        bson_destroy(&f);
    }
    return list == NULL;
}

static void *late_main(void *arg)
{
    struct journal_late *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        if (!l->head) {
            pthread_cond_wait(&l->cv, &l->mu);
            continue;
        }
        pthread_mutex_unlock(&l->mu);
        bool done = write_round(l);
        pthread_mutex_lock(&l->mu);
        if (!done && !l->stop) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            pthread_cond_timedwait(&l->cv, &l->mu, &until);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

struct journal_late *journal_late_start(struct store *journal)
{
    if (!journal)
        return NULL;
    struct journal_late *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->store = journal;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    if (pthread_create(&l->thread, NULL, late_main, l) != 0) {
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        free(l);
        return NULL;
    }
    return l;
}

bool journal_late_add(struct journal_late *l, const bson_t *doc)
{
    if (!l)
        return false;
    struct late_doc *d = malloc(sizeof *d);
    if (!d)
        return false;
    d->next = NULL;
    pthread_mutex_lock(&l->mu);
    bool ok = !l->stop && l->n < JOURNAL_LATE_MAX_DOCS &&
              l->bytes + doc->len <= JOURNAL_LATE_MAX_BYTES && (d->doc = bson_copy(doc));
    if (ok) {
        if (l->tail)
            l->tail->next = d;
        else
            l->head = d;
        l->tail = d;
        l->n++;
        l->bytes += doc->len;
        pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    if (!ok)
        free(d);
    return ok;
}

void journal_late_stop(struct journal_late *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    write_round(l); /* one last try */
    if (l->n) {
        bson_t f = BSON_INITIALIZER;
        BSON_APPEND_INT64(&f, "lost", (int64_t)l->n);
        log_msg(LOG_ERROR, NULL, "webhook.journal_late_lost", &f,
                "stopping with %zu accepted webhooks whose copy could not be written to %s: "
                "their status-events entries are their only copies",
                l->n, COLL_STATUS_INBOX);
        bson_destroy(&f);
    }
    for (struct late_doc *d = l->head, *next; d; d = next) {
        next = d->next;
        late_free(d);
    }
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
