/*
 * sl_loop — one thread's event loop, knowing no protocol.
 *
 * Shaped like nginx's src/event and libuv's uv_run: the loop holds three
 * kinds of registration and calls back whoever made them, never a module
 * by name.
 *
 *   - Watches: {fd, events, handler, arg} in one epoll set.  A watch is
 *     the loop's object (the caller gets a pointer); epoll's data points
 *     at it.  A handler may unwatch any descriptor, including one whose
 *     event sits later in the batch being dispatched: an unwatched watch
 *     is marked dead, skipped by the rest of the batch and only then put
 *     on a free list for reuse.  So after sl_loop_unwatch() its owner may
 *     free the handler's argument at once.
 *
 *   - Timers: owned and embedded by their modules, kept in one binary
 *     min-heap of pointers ordered by (at_ms, seq); each timer knows its
 *     heap index, so start, move and stop are O(log n) with no search and
 *     no system call.  seq, the start order, keeps ties in order and
 *     bounds a pass: a timer started during the timer phase (a handler
 *     re-arming itself at "now") waits for the next pass instead of
 *     spinning this one.  The heap's top gives the poll's timeout.
 *
 *   - Hooks: work that must run on every pass (libuv's prepare and check
 *     handles), in three phases: PREPARE before the timeout is computed
 *     (a hook that sees work due now calls sl_loop_nowait()), POLLED right
 *     after the poll, before any handler, and CHECK after the handlers and
 *     the due timers.  Within a phase, in the order they were added.
 *
 * The wake fd is an eventfd in the same epoll set, drained by the loop
 * itself; sl_loop_wake() is the one function another thread may call.
 *
 * One pass makes exactly one epoll_wait; the clock is read to compute the
 * timeout and once more before the timers run.  The invariants (heap
 * order, each timer's index) are checked with SL_ASSERT in the sanitizer
 * build.
 */
#include "sl_loop.h"

#include "sl_assert.h"
#include "sl_time.h"

#include <errno.h>
#include <stdatomic.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SL_LOOP_EVENTS 64       /* events taken per epoll_wait */
#define SL_LOOP_SPARE_MAX 256   /* watches kept for reuse */
/* Heap slots made with the loop: starting one of the first this many
 * timers never allocates, so it cannot fail. */
#define SL_LOOP_TIMERS 16

struct sl_watch {
    int fd;
    uint32_t events;            /* as registered in epoll */
    bool dead;                  /* unwatched: no more calls */
    sl_watch_fn fn;
    void *arg;
    struct sl_watch *next;      /* dead: the retired list; spare: free list */
    struct sl_watch *lprev, *lnext;  /* live: the loop's list of them */
};

struct sl_loop_hook {
    sl_hook_fn fn;
    void *arg;
};

struct sl_evloop {
    int epfd;
    int wake_fd;                /* eventfd: sl_loop_wake */
    struct sl_watch *wake;
    struct sl_watch *live;      /* every watch not unwatched */
    int64_t (*clock)(void);
    bool nowait;                /* the next poll does not block */
    bool dispatching;           /* a batch's handlers are running */
    struct sl_watch *dead;      /* retired during this batch */
    struct sl_watch *spare;     /* recycled watches */
    unsigned nspare;
    struct sl_timer **heap;     /* min-heap on (at_ms, seq) */
    size_t nheap, capheap;
    uint64_t seq;               /* the last seq given */
    struct sl_loop_hook *hooks[SL_LOOP_PHASES];
    size_t nhooks[SL_LOOP_PHASES];
    _Atomic uint64_t passes;    /* sl_loop_run_once calls begun */
};

/* ---- the timer heap ---- */

static bool sl_heap_less(const struct sl_timer *a, const struct sl_timer *b)
{
    return a->at_ms < b->at_ms || (a->at_ms == b->at_ms && a->seq < b->seq);
}

/* Every node no earlier than its parent, and where its index says
 * (O(n): only SL_ASSERT calls it, in the sanitizer build). */
static __attribute__((unused)) bool sl_heap_ok(const struct sl_evloop *loop)
{
    for (size_t i = 0; i < loop->nheap; i++) {
        if (loop->heap[i]->index != i)
            return false;
        if (i > 0 && sl_heap_less(loop->heap[i], loop->heap[(i - 1) / 2]))
            return false;
    }
    return true;
}

static void sl_heap_set(struct sl_evloop *loop, size_t i, struct sl_timer *t)
{
    loop->heap[i] = t;
    t->index = i;
}

static void sl_heap_up(struct sl_evloop *loop, size_t i)
{
    struct sl_timer *t = loop->heap[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!sl_heap_less(t, loop->heap[parent]))
            break;
        sl_heap_set(loop, i, loop->heap[parent]);
        i = parent;
    }
    sl_heap_set(loop, i, t);
}

static void sl_heap_down(struct sl_evloop *loop, size_t i)
{
    struct sl_timer *t = loop->heap[i];

    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= loop->nheap)
            break;
        if (child + 1 < loop->nheap &&
            sl_heap_less(loop->heap[child + 1], loop->heap[child]))
            child++;
        if (!sl_heap_less(loop->heap[child], t))
            break;
        sl_heap_set(loop, i, loop->heap[child]);
        i = child;
    }
    sl_heap_set(loop, i, t);
}

/* Take the timer at I out of the heap. */
static void sl_heap_remove(struct sl_evloop *loop, size_t i)
{
    struct sl_timer *t = loop->heap[i];
    struct sl_timer *last = loop->heap[--loop->nheap];

    t->index = SL_TIMER_IDLE;
    if (i < loop->nheap) {
        sl_heap_set(loop, i, last);
        /* The last leaf may belong above or below I's old place. */
        if (i > 0 && sl_heap_less(last, loop->heap[(i - 1) / 2]))
            sl_heap_up(loop, i);
        else
            sl_heap_down(loop, i);
    }
    SL_ASSERT(sl_heap_ok(loop));
}

void sl_loop_timer_init(struct sl_timer *t, sl_timer_fn fn, void *arg)
{
    t->at_ms = 0;
    t->seq = 0;
    t->index = SL_TIMER_IDLE;
    t->fn = fn;
    t->arg = arg;
}

int sl_loop_timer_start(struct sl_evloop *loop, struct sl_timer *t, int64_t at_ms)
{
    if (t->index == SL_TIMER_IDLE) {
        if (loop->nheap == loop->capheap) {
            size_t cap = 2 * loop->capheap;
            struct sl_timer **h = realloc(loop->heap, cap * sizeof(*h));
            if (h == NULL)
                return -1;
            loop->heap = h;
            loop->capheap = cap;
        }
        t->at_ms = at_ms;
        t->seq = ++loop->seq;
        sl_heap_set(loop, loop->nheap++, t);
        sl_heap_up(loop, t->index);
    } else {
        bool earlier = at_ms < t->at_ms;
        t->at_ms = at_ms;
        t->seq = ++loop->seq;
        /* A later seq can only move it down, at the same time too. */
        if (earlier)
            sl_heap_up(loop, t->index);
        else
            sl_heap_down(loop, t->index);
    }
    SL_ASSERT(sl_heap_ok(loop));
    return 0;
}

int sl_loop_timer_after(struct sl_evloop *loop, struct sl_timer *t, int64_t after_ms)
{
    return sl_loop_timer_start(loop, t, loop->clock() + after_ms);
}

void sl_loop_timer_stop(struct sl_evloop *loop, struct sl_timer *t)
{
    if (t->index == SL_TIMER_IDLE)
        return;
    SL_ASSERT(t->index < loop->nheap && loop->heap[t->index] == t);
    sl_heap_remove(loop, t->index);
}

/* Fire the timers due at NOW, earliest first; not those started meanwhile. */
static void sl_loop_run_timers(struct sl_evloop *loop, int64_t now)
{
    uint64_t last = loop->seq;

    while (loop->nheap > 0) {
        struct sl_timer *t = loop->heap[0];
        if (t->at_ms > now || t->seq > last)
            break;
        sl_heap_remove(loop, 0);
        if (t->fn != NULL)
            t->fn(t->arg);
    }
}

/* ---- watches ---- */

static void sl_loop_drain_wake(void *arg, int fd, uint32_t events)
{
    uint64_t v;

    (void)arg;
    (void)events;
    /* Nonblocking: EAGAIN when another pass already drained it. */
    if (read(fd, &v, sizeof(v)) < 0)
        return;
}

struct sl_watch *sl_loop_watch(struct sl_evloop *loop, int fd, uint32_t events,
                               sl_watch_fn fn, void *arg)
{
    struct sl_watch *w = loop->spare;
    struct epoll_event ev = {0};

    if (w != NULL) {
        loop->spare = w->next;
        loop->nspare--;
    } else {
        w = malloc(sizeof(*w));
        if (w == NULL) {
            errno = ENOMEM;
            return NULL;
        }
    }
    w->fd = fd;
    w->events = events;
    w->dead = false;
    w->fn = fn;
    w->arg = arg;
    w->next = NULL;
    w->lprev = NULL;
    ev.events = events;
    ev.data.ptr = w;
    /* EEXIST: the descriptor was closed while watched and its number
     * reused, and the old registration outlived it (a dup of the file was
     * still open): take it over. */
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0 &&
        (errno != EEXIST || epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) != 0)) {
        int err = errno;
        w->next = loop->spare;
        loop->spare = w;
        loop->nspare++;
        errno = err;
        return NULL;
    }
    w->lnext = loop->live;
    if (loop->live != NULL)
        loop->live->lprev = w;
    loop->live = w;
    return w;
}

int sl_loop_modify(struct sl_evloop *loop, struct sl_watch *w, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = w};

    /* ENOENT: the descriptor was closed and reopened behind the owner's
     * back, which dropped the registration: register it again. */
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, w->fd, &ev) != 0 &&
        (errno != ENOENT || epoll_ctl(loop->epfd, EPOLL_CTL_ADD, w->fd, &ev) != 0))
        return -1;
    w->events = events;
    return 0;
}

uint32_t sl_loop_watch_events(const struct sl_watch *w) { return w->events; }

static void sl_loop_recycle(struct sl_evloop *loop, struct sl_watch *w)
{
    if (loop->nspare >= SL_LOOP_SPARE_MAX) {
        free(w);
        return;
    }
    w->next = loop->spare;
    loop->spare = w;
    loop->nspare++;
}

void sl_loop_unwatch(struct sl_evloop *loop, struct sl_watch *w)
{
    if (w == NULL || w->dead)
        return;
    /* Fails harmlessly when the descriptor is already closed. */
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    w->dead = true;
    if (w->lprev != NULL)
        w->lprev->lnext = w->lnext;
    else
        loop->live = w->lnext;
    if (w->lnext != NULL)
        w->lnext->lprev = w->lprev;
    if (loop->dispatching) {
        /* Events of this batch may still point at it. */
        w->next = loop->dead;
        loop->dead = w;
    } else {
        sl_loop_recycle(loop, w);
    }
}

/* ---- hooks, waking, the pass ---- */

int sl_loop_hook(struct sl_evloop *loop, enum sl_loop_phase phase, sl_hook_fn fn,
                 void *arg)
{
    size_t n = loop->nhooks[phase];
    struct sl_loop_hook *h = realloc(loop->hooks[phase], (n + 1) * sizeof(*h));

    if (h == NULL)
        return -1;
    h[n] = (struct sl_loop_hook){fn, arg};
    loop->hooks[phase] = h;
    loop->nhooks[phase] = n + 1;
    return 0;
}

void sl_loop_unhook(struct sl_evloop *loop, enum sl_loop_phase phase, sl_hook_fn fn,
                    void *arg)
{
    struct sl_loop_hook *h = loop->hooks[phase];
    size_t n = loop->nhooks[phase];

    for (size_t i = 0; i < n; i++) {
        if (h[i].fn == fn && h[i].arg == arg) {
            /* Shifted, not swapped: the others keep their order. */
            memmove(&h[i], &h[i + 1], (n - i - 1) * sizeof(*h));
            loop->nhooks[phase] = n - 1;
            return;
        }
    }
}

void sl_loop_nowait(struct sl_evloop *loop) { loop->nowait = true; }

int sl_loop_wake(struct sl_evloop *loop)
{
    uint64_t one = 1;

    /* EAGAIN: the counter is full, so a wake-up is pending anyway. */
    if (write(loop->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        return -1;
    return 0;
}

int64_t sl_loop_now(const struct sl_evloop *loop) { return loop->clock(); }

static void sl_loop_run_hooks(struct sl_evloop *loop, enum sl_loop_phase phase)
{
    /* Indexed, not by pointer: a hook may add another (or remove
     * itself, which makes the next one skip this pass). */
    for (size_t i = 0; i < loop->nhooks[phase]; i++)
        loop->hooks[phase][i].fn(loop->hooks[phase][i].arg);
}

/* Milliseconds the poll may block: -1 forever. */
static int sl_loop_timeout(struct sl_evloop *loop)
{
    int64_t t;

    if (loop->nowait)
        return 0;
    if (loop->nheap == 0)
        return -1;
    t = loop->heap[0]->at_ms - loop->clock();
    if (t <= 0)
        return 0;
    return t > INT_MAX ? INT_MAX : (int)t;
}

uint64_t sl_loop_passes(const struct sl_evloop *loop)
{
    return atomic_load_explicit(&((struct sl_evloop *)loop)->passes, memory_order_relaxed);
}

int sl_loop_run_once(struct sl_evloop *loop)
{
    struct epoll_event evs[SL_LOOP_EVENTS];
    int n, timeout;

    atomic_fetch_add_explicit(&loop->passes, 1, memory_order_relaxed);
    sl_loop_run_hooks(loop, SL_LOOP_PREPARE);
    timeout = sl_loop_timeout(loop);
    loop->nowait = false;
    n = epoll_wait(loop->epfd, evs, SL_LOOP_EVENTS, timeout);
    if (n < 0) {
        if (errno != EINTR)
            return -1;
        n = 0;
    }
    sl_loop_run_hooks(loop, SL_LOOP_POLLED);
    loop->dispatching = true;
    for (int i = 0; i < n; i++) {
        struct sl_watch *w = evs[i].data.ptr;
        if (!w->dead)
            w->fn(w->arg, w->fd, evs[i].events);
    }
    loop->dispatching = false;
    while (loop->dead != NULL) {
        struct sl_watch *w = loop->dead;
        loop->dead = w->next;
        sl_loop_recycle(loop, w);
    }
    sl_loop_run_timers(loop, loop->clock());
    sl_loop_run_hooks(loop, SL_LOOP_CHECK);
    return 0;
}

struct sl_evloop *sl_loop_new(int64_t (*clock)(void))
{
    struct sl_evloop *loop = calloc(1, sizeof(*loop));

    if (loop == NULL)
        return NULL;
    loop->clock = clock != NULL ? clock : sl_time_mono_ms;
    loop->epfd = -1;
    loop->wake_fd = -1;
    loop->heap = malloc(SL_LOOP_TIMERS * sizeof(*loop->heap));
    if (loop->heap == NULL) {
        errno = ENOMEM;
        goto fail;
    }
    loop->capheap = SL_LOOP_TIMERS;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0)
        goto fail;
    loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->wake_fd < 0)
        goto fail;
    loop->wake = sl_loop_watch(loop, loop->wake_fd, EPOLLIN, sl_loop_drain_wake, loop);
    if (loop->wake == NULL)
        goto fail;
    return loop;
fail: {
        int err = errno;
        sl_loop_free(loop);
        errno = err;
        return NULL;
    }
}

void sl_loop_free(struct sl_evloop *loop)
{
    if (loop == NULL)
        return;
    /* Watches still live go with the epoll set, closed below (their
     * descriptors stay open: they are their owners'). */
    while (loop->live != NULL) {
        struct sl_watch *w = loop->live;
        loop->live = w->lnext;
        free(w);
    }
    while (loop->dead != NULL) {
        struct sl_watch *w = loop->dead;
        loop->dead = w->next;
        free(w);
    }
    while (loop->spare != NULL) {
        struct sl_watch *w = loop->spare;
        loop->spare = w->next;
        free(w);
    }
    for (size_t i = 0; i < loop->nheap; i++)
        loop->heap[i]->index = SL_TIMER_IDLE;
    free(loop->heap);
    for (int p = 0; p < SL_LOOP_PHASES; p++)
        free(loop->hooks[p]);
    if (loop->wake_fd >= 0)
        close(loop->wake_fd);
    if (loop->epfd >= 0)
        close(loop->epfd);
    free(loop);
}
