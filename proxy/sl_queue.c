/*
 * sl_queue — see sl_queue.h.  The shared wait lists are a chained hash of
 * buckets keyed by (rule, per value), each a doubly linked list of held
 * calls sorted by ticket, under one mutex.  A bucket is freed when its
 * last waiter leaves.
 */
#include "sl_queue.h"
#include "sl_assert.h"

#include <stdlib.h>
#include <string.h>

#define SL_WAIT_SLOTS 1024

struct sl_wbucket {
    struct sl_wbucket *next;      /* hash chain */
    const struct sl_rule *rule;   /* identifies upstream and rule */
    struct sl_held *head, *tail;  /* waiters by ticket */
    unsigned n;                   /* waiters */
    size_t key_len;
    char key[];
};

struct sl_waitlists {
    pthread_mutex_t lock;
    struct sl_wbucket *slots[SL_WAIT_SLOTS];
    _Atomic unsigned *counts;     /* held calls per upstream */
    _Atomic unsigned *app_counts; /* held calls per app (all upstreams) */
    size_t napps;
    size_t nupstreams;
    _Atomic unsigned total;
    uint64_t next_ticket;
    /* Per hash slot: raised by every room notice and departure (see
     * sl_queue.h, "Wake-ups are never lost"). */
    _Atomic uint64_t seq[SL_WAIT_SLOTS];
    sl_wake_fn wake;
    void *wake_arg;
};

static size_t sl_whash(const struct sl_rule *rule, const char *key, size_t len)
{
    uint64_t h = (uint64_t)(uintptr_t)rule * 0x9E3779B97F4A7C15ull;

    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 0x100000001B3ull;
    return (size_t)(h ^ (h >> 29)) & (SL_WAIT_SLOTS - 1);
}

/* Lock held. */
static struct sl_wbucket **sl_wfind(struct sl_waitlists *wl,
                                    const struct sl_hit *hit)
{
    struct sl_wbucket **pp = &wl->slots[sl_whash(hit->rule, hit->key, hit->key_len)];

    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->rule == hit->rule && (*pp)->key_len == hit->key_len &&
            memcmp((*pp)->key, hit->key, hit->key_len) == 0)
            return pp;
    return pp;
}

/*
 * Does A go before B in a wait list?  Higher priority first, then arrival
 * (ticket).  With aging, a call's effective priority is priority +
 * waited / aging: the difference between two calls' effective priorities
 * does not change as time passes, so the order is by priority * aging -
 * since (a call aged upward ranks as if it had arrived one aging period
 * earlier per level), and a list sorted once stays sorted.
 */
static bool sl_held_before(const struct sl_held *a, const struct sl_held *b)
{
    if (a->aging_ms > 0 && a->aging_ms == b->aging_ms) {
        int64_t ka = (int64_t)a->priority * a->aging_ms - a->since_ms;
        int64_t kb = (int64_t)b->priority * b->aging_ms - b->since_ms;
        if (ka != kb)
            return ka > kb;
    } else if (a->priority != b->priority) {
        return a->priority > b->priority;
    }
    return a->ticket < b->ticket;
}

/* Every call ahead of H waits for its own app's share, none of H's app.
 * Lock held; H is in a list. */
static bool sl_held_may_ask(const struct sl_held *h)
{
    for (const struct sl_held *p = h->bucket->head; p != h; p = p->wnext)
        if (!p->app_blocked || p->app == h->app)
            return false;
    return true;
}

/* Wake (and with KICK, kick) the workers of B's waiters that may ask now:
 * from the head up to the first one not waiting for its app's share.  In
 * a bucket without shares, the head alone.  Lock held. */
static void sl_wake_askers(struct sl_waitlists *wl, struct sl_wbucket *b,
                           const struct sl_held *from, bool kick)
{
    for (struct sl_held *p = b->head; p != NULL; p = p->wnext) {
        if (from == NULL || p == from)
            from = NULL;
        if (from == NULL && sl_held_may_ask(p)) {
            if (kick)
                atomic_store(&p->kicked, true);
            wl->wake(wl->wake_arg, p->worker);
        }
        if (!p->app_blocked)
            break;
    }
}

/* Insert H into the wait list of HIT in its place.  Lock held. */
static int sl_wjoin(struct sl_waitlists *wl, struct sl_held *h,
                    const struct sl_hit *hit)
{
    struct sl_wbucket **pp = sl_wfind(wl, hit), *b = *pp;
    struct sl_held *after;

    if (b == NULL) {
        b = calloc(1, sizeof(*b) + hit->key_len);
        if (b == NULL)
            return -1;
        b->rule = hit->rule;
        b->key_len = hit->key_len;
        memcpy(b->key, hit->key, hit->key_len);
        *pp = b;
    }
    after = b->tail;
    while (after != NULL && sl_held_before(h, after))
        after = after->wprev;
    h->wprev = after;
    h->wnext = after != NULL ? after->wnext : b->head;
    if (h->wnext != NULL)
        h->wnext->wprev = h;
    else
        b->tail = h;
    if (after != NULL)
        after->wnext = h;
    else
        b->head = h;
    /* The list stays sorted by ticket (arrival order). */
    SL_ASSERT(h->wprev == NULL || sl_held_before(h->wprev, h));
    SL_ASSERT(h->wnext == NULL || sl_held_before(h, h->wnext));
    h->bucket = b;
    b->n++;
    return 0;
}

/*
 * Remove H from its wait list; wake the new head's worker.  A kick H had
 * not used yet (room appeared for it, and it leaves without asking: its
 * client left, max_wait ran out) is passed on to the new head, or that
 * room would wake nobody.  Lock held.
 */
static void sl_wleave(struct sl_waitlists *wl, struct sl_held *h)
{
    struct sl_wbucket *b = h->bucket;
    bool was_head = sl_held_may_ask(h);
    bool unused_kick = atomic_load(&h->kicked);

    if (h->wprev != NULL)
        h->wprev->wnext = h->wnext;
    else
        b->head = h->wnext;
    if (h->wnext != NULL)
        h->wnext->wprev = h->wprev;
    else
        b->tail = h->wprev;
    h->wprev = h->wnext = NULL;
    h->bucket = NULL;
    SL_ASSERT(b->n > 0);
    b->n--;
    SL_ASSERT((b->n == 0) == (b->head == NULL));
    /* The line moved: a call seen waiting behind H may be first now. */
    atomic_fetch_add(&wl->seq[sl_whash(b->rule, b->key, b->key_len)], 1);
    if (b->head == NULL) {
        struct sl_wbucket **pp = &wl->slots[sl_whash(b->rule, b->key, b->key_len)];
        while (*pp != b)
            pp = &(*pp)->next;
        *pp = b->next;
        free(b);
    } else if (was_head) {
        sl_wake_askers(wl, b, NULL, unused_kick);
    }
}

struct sl_waitlists *sl_waitlists_new(size_t nupstreams, size_t napps,
                                      sl_wake_fn wake, void *wake_arg)
{
    struct sl_waitlists *wl = calloc(1, sizeof(*wl));

    if (wl == NULL)
        return NULL;
    wl->counts = calloc(nupstreams, sizeof(*wl->counts));
    wl->app_counts = calloc(napps ? napps : 1, sizeof(*wl->app_counts));
    if (wl->counts == NULL || wl->app_counts == NULL) {
        free((void *)wl->counts);
        free((void *)wl->app_counts);
        free(wl);
        return NULL;
    }
    wl->napps = napps;
    pthread_mutex_init(&wl->lock, NULL);
    wl->nupstreams = nupstreams;
    wl->wake = wake;
    wl->wake_arg = wake_arg;
    return wl;
}

void sl_waitlists_free(struct sl_waitlists *wl)
{
    if (wl == NULL)
        return;
    for (size_t i = 0; i < SL_WAIT_SLOTS; i++) {
        while (wl->slots[i] != NULL) {
            struct sl_wbucket *b = wl->slots[i];
            wl->slots[i] = b->next;
            free(b);
        }
    }
    pthread_mutex_destroy(&wl->lock);
    free((void *)wl->counts);
    free((void *)wl->app_counts);
    free(wl);
}

int sl_queue_init(struct sl_queue *q, size_t nupstreams, int worker,
                  struct sl_waitlists *shared)
{
    memset(q, 0, sizeof(*q));
    q->heads = calloc(nupstreams, sizeof(*q->heads));
    q->tails = calloc(nupstreams, sizeof(*q->tails));
    q->oldest_ms = calloc(nupstreams, sizeof(*q->oldest_ms));
    q->nupstreams = nupstreams;
    q->worker = worker;
    q->shared = shared;
    if (q->heads == NULL || q->tails == NULL || q->oldest_ms == NULL) {
        sl_queue_free(q);
        return -1;
    }
    return 0;
}

void sl_queue_free(struct sl_queue *q)
{
    free(q->heads);
    free(q->tails);
    free((void *)q->oldest_ms);
    q->heads = q->tails = NULL;
    q->oldest_ms = NULL;
}

int64_t sl_queue_oldest_ms(const struct sl_queue *q, size_t upstream)
{
    return q->oldest_ms != NULL ? atomic_load(&q->oldest_ms[upstream]) : 0;
}

static void sl_queue_publish_oldest(struct sl_queue *q, size_t upstream)
{
    struct sl_held *h = q->heads[upstream];

    atomic_store(&q->oldest_ms[upstream], h != NULL ? h->since_ms : 0);
}

unsigned sl_queue_count(const struct sl_queue *q, size_t upstream)
{
    return atomic_load(&q->shared->counts[upstream]);
}

unsigned sl_queue_app_count(const struct sl_queue *q, uint16_t app)
{
    return app < q->shared->napps ? atomic_load(&q->shared->app_counts[app]) : 0;
}

int sl_queue_add(struct sl_queue *q, struct sl_held *h)
{
    struct sl_waitlists *wl = q->shared;
    int rc;

    h->worker = q->worker;
    pthread_mutex_lock(&wl->lock);
    /* A call matched again after a reload keeps its ticket (its place).
     * Count who is ahead (a higher lane, or earlier in its own). */
    if (h->ticket == 0)
        h->ticket = ++wl->next_ticket;
    rc = sl_wjoin(wl, h, h->waiting);
    h->ahead = 0;
    for (const struct sl_held *p = rc == 0 ? h->wprev : NULL; p != NULL; p = p->wprev)
        h->ahead++;
    pthread_mutex_unlock(&wl->lock);
    if (rc != 0)
        return -1;
    atomic_fetch_add(&wl->counts[h->upstream], 1);
    if (h->app < wl->napps)
        atomic_fetch_add(&wl->app_counts[h->app], 1);
    atomic_fetch_add(&wl->total, 1);
    if (h->upstream >= q->used)
        q->used = h->upstream + 1;
    h->next = NULL;
    h->prev = q->tails[h->upstream];
    if (h->prev != NULL)
        h->prev->next = h;
    else
        q->heads[h->upstream] = h;
    q->tails[h->upstream] = h;
    q->total++;
    sl_queue_publish_oldest(q, h->upstream);
    return 0;
}

int sl_queue_rewait(struct sl_queue *q, struct sl_held *h,
                    const struct sl_hit *waiting)
{
    struct sl_waitlists *wl = q->shared;
    const struct sl_hit *old = h->waiting;
    int rc = 0;

    if (waiting == old)
        return 0;
    pthread_mutex_lock(&wl->lock);
    sl_wleave(wl, h);
    h->waiting = waiting;
    if (sl_wjoin(wl, h, waiting) != 0) {
        h->waiting = old;
        rc = sl_wjoin(wl, h, old);  /* its old bucket may be gone: re-create */
        if (rc == 0)
            rc = -1;
    }
    pthread_mutex_unlock(&wl->lock);
    return rc;
}

void sl_queue_remove(struct sl_queue *q, struct sl_held *h)
{
    struct sl_waitlists *wl = q->shared;

    pthread_mutex_lock(&wl->lock);
    if (h->bucket != NULL)
        sl_wleave(wl, h);
    pthread_mutex_unlock(&wl->lock);
    SL_ASSERT(atomic_load(&wl->counts[h->upstream]) > 0);
    atomic_fetch_sub(&wl->counts[h->upstream], 1);
    if (h->app < wl->napps) {
        SL_ASSERT(atomic_load(&wl->app_counts[h->app]) > 0);
        atomic_fetch_sub(&wl->app_counts[h->app], 1);
    }
    SL_ASSERT(atomic_load(&wl->total) > 0);
    atomic_fetch_sub(&wl->total, 1);
    if (h->prev != NULL)
        h->prev->next = h->next;
    else
        q->heads[h->upstream] = h->next;
    if (h->next != NULL)
        h->next->prev = h->prev;
    else
        q->tails[h->upstream] = h->prev;
    h->prev = h->next = NULL;
    SL_ASSERT(q->total > 0);
    q->total--;
    sl_queue_publish_oldest(q, h->upstream);
}

bool sl_queue_is_head(const struct sl_queue *q, const struct sl_held *h)
{
    struct sl_waitlists *wl = q->shared;
    bool head;

    pthread_mutex_lock(&wl->lock);
    head = h->bucket != NULL && sl_held_may_ask(h);
    pthread_mutex_unlock(&wl->lock);
    return head;
}

void sl_queue_set_app_blocked(struct sl_queue *q, struct sl_held *h, bool blocked)
{
    struct sl_waitlists *wl = q->shared;

    pthread_mutex_lock(&wl->lock);
    if (h->app_blocked != blocked) {
        h->app_blocked = blocked;
        if (blocked && h->bucket != NULL && h->wnext != NULL)
            sl_wake_askers(wl, h->bucket, h->wnext, false);
    }
    pthread_mutex_unlock(&wl->lock);
}

const struct sl_hit *sl_queue_blocks(const struct sl_queue *q,
                                     const struct sl_check *c, int priority,
                                     int64_t aging_ms, int64_t now_ms,
                                     int64_t *head_retry_ms, bool *own_app)
{
    struct sl_waitlists *wl = q->shared;
    const struct sl_hit *found = NULL;
    struct sl_held me = {.priority = priority, .aging_ms = aging_ms,
                         .since_ms = now_ms, .ticket = UINT64_MAX, .app = c->app};

    *head_retry_ms = -1;
    *own_app = false;
    if (atomic_load(&wl->counts[c->upstream->index]) == 0)
        return NULL;  /* the common case: nothing held, no lock */
    pthread_mutex_lock(&wl->lock);
    for (size_t i = 0; i < c->nhits && found == NULL; i++) {
        struct sl_wbucket *b = *sl_wfind(wl, &c->hits[i]);
        /* Ahead of it: the waiters that sort before it (a higher lane,
         * or its own and earlier); the first that is not waiting for
         * another app's share holds it up. */
        for (struct sl_held *p = b != NULL ? b->head : NULL; p != NULL; p = p->wnext) {
            if (!sl_held_before(p, &me))
                break;
            if (!p->app_blocked || p->app == c->app) {
                found = &c->hits[i];
                /* Another worker's field, read as an estimate only. */
                *head_retry_ms = p->retry_at_ms;
                *own_app = p->app_blocked;
                break;
            }
        }
    }
    pthread_mutex_unlock(&wl->lock);
    return found;
}

void sl_waitlists_room(struct sl_waitlists *wl, const struct sl_rule *rule,
                       const char *key, size_t key_len)
{
    struct sl_hit hit = {.rule = rule, .key = key, .key_len = key_len};
    struct sl_wbucket *b;

    /* Before looking for waiters: a call joining now sees the raise. */
    atomic_fetch_add(&wl->seq[sl_whash(rule, key, key_len)], 1);
    if (atomic_load(&wl->total) == 0)
        return;  /* nobody is held: no lock */
    pthread_mutex_lock(&wl->lock);
    b = *sl_wfind(wl, &hit);
    if (b != NULL && b->head != NULL && rule->kind == SL_RULE_PAUSE) {
        /* A pause that ends sooner than it said (an operator's action)
         * ends for every waiter, and each one's timer is set for the old
         * end: all are due now.  Those behind the head park, and follow
         * it one by one as each leaves. */
        for (struct sl_held *p = b->head; p != NULL; p = p->wnext) {
            atomic_store(&p->kicked, true);
            wl->wake(wl->wake_arg, p->worker);
        }
    } else if (b != NULL && b->head != NULL) {
        sl_wake_askers(wl, b, NULL, true);
    }
    pthread_mutex_unlock(&wl->lock);
}

uint64_t sl_waitlists_seq(struct sl_waitlists *wl, const struct sl_check *c)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < c->nhits; i++)
        sum += atomic_load(&wl->seq[sl_whash(c->hits[i].rule, c->hits[i].key,
                                             c->hits[i].key_len)]);
    return sum;
}

int64_t sl_queue_next_ms(const struct sl_queue *q)
{
    int64_t next = -1;

    if (q->total == 0)
        return -1;
    for (size_t u = 0; u < q->used; u++) {
        for (const struct sl_held *h = q->heads[u]; h != NULL; h = h->next) {
            int64_t t = h->deciding || h->parked ? h->deadline_ms
                        : h->retry_at_ms < h->deadline_ms ? h->retry_at_ms
                                                          : h->deadline_ms;
            if (next < 0 || t < next)
                next = t;
        }
    }
    return next;
}
