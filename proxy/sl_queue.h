/*
 * sl_queue — calls held in queue mode.
 *
 * Two structures.  Per worker, a FIFO per upstream of the calls that
 * worker holds (it owns their connections and their timers).  Per process,
 * shared by the workers under one mutex, a wait list per bucket (rule, per
 * value): the held calls waiting for room in that bucket, in arrival
 * order (a process-wide ticket).  Only the head of a bucket's wait list may
 * ask the store again, and a new call for a bucket with waiters joins the
 * end of the list instead of asking: so calls of one bucket are served in
 * arrival order within an instance, whichever worker accepted them.  When
 * a head leaves, the worker holding the next one is woken.
 *
 * The shared part is touched only when a call is held, released, or
 * arrives while calls are held: the hot path of an unlimited call only
 * reads one counter.
 *
 * Wake-ups are never lost.  Room can appear while a call is on its way
 * into a wait list: its decision is out (asynchronous with Redis, or on
 * one worker while another frees the slot), or it saw calls ahead of it
 * that have left since.  A wake-up for it then finds nobody, and it would
 * sit until its retry time (the 50 ms safety poll for a concurrency slot).
 * So every hash slot of the wait lists has a sequence number that each
 * room notice and each departure from a list raises; a call reads the sum
 * over its buckets before it asks (sl_waitlists_seq) and again after it
 * has joined its list, and if it moved, asks again at once.  The second
 * read follows the join, and a notice raises the number before it looks
 * for waiters: one side always sees the other.  Only a call that may ask
 * (first in line) acts on it; the others are woken as those ahead leave.
 * And a call that leaves its list with a wake-up it has not used (its
 * client left, max_wait ran out) passes it on to the next in line.
 */
#ifndef SL_QUEUE_H
#define SL_QUEUE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_store.h"

struct sl_waitlists;

/* A held call's place in the queues (embedded in the request). */
struct sl_held {
    struct sl_held *prev, *next;  /* the worker's FIFO of its upstream */
    struct sl_held *wprev, *wnext;/* its bucket's wait list (shared) */
    struct sl_wbucket *bucket;    /* the bucket it waits on (shared) */
    uint64_t ticket;              /* arrival order, process-wide */
    /* Queue lane: higher priorities go first; with AGING_MS > 0 a call
     * goes up one level per AGING_MS waited (see sl_held_before). */
    int priority;
    int64_t aging_ms;
    /* The call's app, and whether its last denial was its app's share of
     * the rule (its max, or other apps' reservations): such a waiter does
     * not hold up other apps' calls behind it (see sl_queue_is_head). */
    uint16_t app;
    bool app_blocked;             /* written under the wait lists' lock */
    size_t upstream;
    int worker;                   /* the worker that holds it */
    const struct sl_check *check; /* the buckets the call counts in */
    const struct sl_hit *waiting; /* the bucket it waits for (in check) */
    /* Ask the store again then (other workers read it as an estimate). */
    _Atomic int64_t retry_at_ms;
    int64_t deadline_ms;          /* max_wait runs out then */
    int64_t since_ms;             /* held since (CLOCK_MONOTONIC ms) */
    bool deciding;                /* a renewed decision is out */
    bool parked;                  /* due, but not first in its bucket */
    _Atomic bool kicked;          /* room appeared in its bucket: ask now */
    unsigned ahead;               /* waiters ahead of it when it joined */
    void *owner;                  /* the request */
};

/* Wakes worker ID (another thread) so it pumps its queue. */
typedef void (*sl_wake_fn)(void *arg, int worker);

struct sl_queue {
    struct sl_held **heads, **tails;  /* per upstream (owned arrays) */
    size_t nupstreams;                /* their size */
    size_t used;                      /* indexes below this were ever used */
    unsigned total;                   /* calls this worker holds */
    /* Per upstream: since when this worker's oldest held call waits (0:
     * none); read by the admin listener on another thread. */
    _Atomic int64_t *oldest_ms;
    int worker;
    struct sl_waitlists *shared;      /* not owned */
};

/* The process-wide part, for NUPSTREAMS upstreams and NAPPS app ids.
 * Returns NULL when out of memory. */
struct sl_waitlists *sl_waitlists_new(size_t nupstreams, size_t napps,
                                      sl_wake_fn wake, void *wake_arg);
void sl_waitlists_free(struct sl_waitlists *wl);

int sl_queue_init(struct sl_queue *q, size_t nupstreams, int worker,
                  struct sl_waitlists *shared);
void sl_queue_free(struct sl_queue *q);

/* Since when the oldest call Q holds for UPSTREAM waits (ms), or 0.
 * Any thread. */
int64_t sl_queue_oldest_ms(const struct sl_queue *q, size_t upstream);

/* Calls held for UPSTREAM by the whole process. */
unsigned sl_queue_count(const struct sl_queue *q, size_t upstream);
/* Calls of APP held by the whole process, for any upstream. */
unsigned sl_queue_app_count(const struct sl_queue *q, uint16_t app);

/* Hold H (upstream, check, waiting and times set).  0 or -1 (OOM). */
int sl_queue_add(struct sl_queue *q, struct sl_held *h);
void sl_queue_remove(struct sl_queue *q, struct sl_held *h);
/* H now waits on WAITING (keeping its place by arrival).  0 or -1 (OOM). */
int sl_queue_rewait(struct sl_queue *q, struct sl_held *h,
                    const struct sl_hit *waiting);
/* May H ask the store now?  When every call ahead of it in its bucket's
 * wait list waits for its own app's share (and none is of H's app): the
 * first in line, in the common case. */
bool sl_queue_is_head(const struct sl_queue *q, const struct sl_held *h);

/* H's last denial was (BLOCKED) or was not its app's share.  Calls behind
 * it that may ask now are woken. */
void sl_queue_set_app_blocked(struct sl_queue *q, struct sl_held *h, bool blocked);

/* A bucket of C in which a held call goes before a new call of
 * PRIORITY (with AGING_MS) arriving at NOW_MS, or NULL: a waiter of a
 * higher or equal lane that is not waiting for another app's share.
 * *HEAD_RETRY_MS is when it asks the store again (an estimate), or -1;
 * *OWN_APP: that waiter is of C's app and waits for their app's share
 * (the new call then waits for it too). */
const struct sl_hit *sl_queue_blocks(const struct sl_queue *q,
                                     const struct sl_check *c, int priority,
                                     int64_t aging_ms, int64_t now_ms,
                                     int64_t *head_retry_ms, bool *own_app);

/*
 * Room appeared in bucket (RULE, KEY) (a slot or reservation given back,
 * by this instance or, through the store, by another): the first call
 * waiting for it asks the store again at once.  For the upstream's pause
 * (an operator shortened or cleared it) every call waiting for it is due
 * at once, and they go in their order.  Any thread.
 */
void sl_waitlists_room(struct sl_waitlists *wl, const struct sl_rule *rule,
                       const char *key, size_t key_len);

/*
 * The room sequence of C's buckets: it changes whenever room may have
 * appeared in one of them (sl_waitlists_room, or a call leaving one of
 * their wait lists).  Any thread, no lock.
 */
uint64_t sl_waitlists_seq(struct sl_waitlists *wl, const struct sl_check *c);

/* Earliest retry or deadline among this worker's held calls, or -1. */
int64_t sl_queue_next_ms(const struct sl_queue *q);

#endif
