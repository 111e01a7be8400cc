/*
 * sl_loop — one thread's event loop: watches, one timer heap, a wake fd,
 * and the hooks that run every pass.  It knows no protocol.
 *
 * See sl_loop.c for the design.  Everything here is for the loop's own
 * thread, except sl_loop_wake(), which any thread may call.  The common
 * layer: includes nothing of limits/ or proxy/.
 */
#ifndef SL_LOOP_H
#define SL_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sl_evloop;
struct sl_watch;

/* A ready descriptor: EVENTS are epoll's (EPOLLIN, EPOLLOUT, EPOLLRDHUP,
 * EPOLLERR, EPOLLHUP); FD is the one watched. */
typedef void (*sl_watch_fn)(void *arg, int fd, uint32_t events);
/* A timer whose time has come (it is no longer in the heap).  May be NULL
 * in a timer that only bounds the poll: its owner's hook does the work. */
typedef void (*sl_timer_fn)(void *arg);
/* Work done on every pass (see enum sl_loop_phase). */
typedef void (*sl_hook_fn)(void *arg);

/*
 * A deadline.  The owner embeds it and keeps it alive while it is started;
 * the heap holds pointers.  Set up with sl_loop_timer_init() before use.
 */
struct sl_timer {
    int64_t at_ms;          /* when it fires, on the loop's clock */
    uint64_t seq;           /* start order: breaks ties, bounds one pass */
    size_t index;           /* its place in the heap, SL_TIMER_IDLE: none */
    sl_timer_fn fn;
    void *arg;
};
#define SL_TIMER_IDLE ((size_t)-1)

/* Where in a pass a hook runs. */
enum sl_loop_phase {
    /* Before the poll's timeout is computed: a hook that knows of work
     * due at once calls sl_loop_nowait(). */
    SL_LOOP_PREPARE,
    /* Right after the poll returns, before any watch's handler. */
    SL_LOOP_POLLED,
    /* After the watches' handlers and the due timers. */
    SL_LOOP_CHECK,
    SL_LOOP_PHASES,
};

/* A new loop reading CLOCK (NULL: sl_time_mono_ms), or NULL with errno. */
struct sl_evloop *sl_loop_new(int64_t (*clock)(void));
/* Free LOOP: every watch still held is dropped (the descriptors stay
 * open: they belong to their owners), started timers are forgotten. */
void sl_loop_free(struct sl_evloop *loop);

/* The loop's clock now (ms). */
int64_t sl_loop_now(const struct sl_evloop *loop);

/*
 * Watch FD for EVENTS (epoll's; EPOLLET may be added): FN(ARG, FD, got) is
 * called from sl_loop_run_once() while it is ready.  Returns the watch, or
 * NULL (errno set; nothing registered).  A descriptor closed without
 * sl_loop_unwatch() and reused is registered again in place.
 */
struct sl_watch *sl_loop_watch(struct sl_evloop *loop, int fd, uint32_t events,
                               sl_watch_fn fn, void *arg);
/* Change W's events.  0 or -1 (errno). */
int sl_loop_modify(struct sl_evloop *loop, struct sl_watch *w, uint32_t events);
/* W's events as registered. */
uint32_t sl_loop_watch_events(const struct sl_watch *w);
/*
 * Stop watching (call it before closing the descriptor, or after: both
 * are fine).  W's handler is never called again, even for an event of the
 * batch being dispatched, so its ARG may be freed at once; W itself is
 * the loop's and is recycled after the batch.
 */
void sl_loop_unwatch(struct sl_evloop *loop, struct sl_watch *w);

/* Set T up, stopped, to call FN(ARG). */
void sl_loop_timer_init(struct sl_timer *t, sl_timer_fn fn, void *arg);
/* (Re)start T to fire at AT_MS on the loop's clock (a time already past
 * fires on the next pass).  O(log n), no system call.  0, or -1 when the
 * heap cannot grow (T left as it was), which never happens while at most
 * 16 timers are started at once. */
int sl_loop_timer_start(struct sl_evloop *loop, struct sl_timer *t, int64_t at_ms);
/* The same, AFTER_MS from now. */
int sl_loop_timer_after(struct sl_evloop *loop, struct sl_timer *t, int64_t after_ms);
/* Stop T (nothing if stopped).  O(log n). */
void sl_loop_timer_stop(struct sl_evloop *loop, struct sl_timer *t);
static inline bool sl_loop_timer_active(const struct sl_timer *t)
{
    return t->index != SL_TIMER_IDLE;
}

/* Call FN(ARG) on every pass in PHASE, after the hooks added before it.
 * 0 or -1 (out of memory). */
int sl_loop_hook(struct sl_evloop *loop, enum sl_loop_phase phase, sl_hook_fn fn,
                 void *arg);

/* Remove the hook FN(ARG) of PHASE (nothing if absent). */
void sl_loop_unhook(struct sl_evloop *loop, enum sl_loop_phase phase, sl_hook_fn fn,
                    void *arg);

/* The next poll returns at once (work is due now).  Cleared by that poll. */
void sl_loop_nowait(struct sl_evloop *loop);

/* Passes the loop has begun, readable from any thread: a loop whose count
 * moves after sl_loop_wake() still turns (the service watchdog asks). */
uint64_t sl_loop_passes(const struct sl_evloop *loop);

/* Wake the loop from any thread: its poll returns.  0 or -1 (errno). */
int sl_loop_wake(struct sl_evloop *loop);

/*
 * One pass: PREPARE hooks; one epoll_wait, as long as the earliest timer
 * allows (not at all after sl_loop_nowait(), forever with no timer);
 * POLLED hooks; the ready watches' handlers; the due timers, earliest
 * first; CHECK hooks.  0, or -1 when the poll failed (errno; EINTR is not
 * a failure).
 */
int sl_loop_run_once(struct sl_evloop *loop);

#endif
