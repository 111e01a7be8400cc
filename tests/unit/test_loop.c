/* Unit tests: the event loop (common/sl_loop.c).  The .c is included to
 * reach the heap.  Timers run on a fake clock, so nothing here depends on
 * how fast the machine is: order and "not before" are asserted, never a
 * duration. */
#ifndef SLUICE_ASSERT
#define SLUICE_ASSERT 1     /* the heap checks, whatever the build */
#endif
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <time.h>

#include "../../common/sl_loop.c"

#include <pthread.h>

static int64_t fake_now;

static int64_t fake_clock(void) { return fake_now; }

/* ---- the heap against a sorted reference ---- */

#define NTIMERS 200

static int cmp_timer(const void *a, const void *b)
{
    const struct sl_timer *x = *(struct sl_timer *const *)a;
    const struct sl_timer *y = *(struct sl_timer *const *)b;
    return sl_heap_less(x, y) ? -1 : sl_heap_less(y, x) ? 1 : 0;
}

static void never(void *arg) { (void)arg; fail(); }

/* Pop the heap empty: the order must be the reference's. */
static void check_against_reference(struct sl_evloop *loop, struct sl_timer *ts)
{
    struct sl_timer *ref[NTIMERS];
    size_t n = 0;

    for (size_t i = 0; i < NTIMERS; i++)
        if (sl_loop_timer_active(&ts[i]))
            ref[n++] = &ts[i];
    assert_int_equal(n, loop->nheap);
    assert_true(sl_heap_ok(loop));
    qsort(ref, n, sizeof(ref[0]), cmp_timer);
    for (size_t i = 0; i < n; i++) {
        struct sl_timer *top = loop->heap[0];
        assert_ptr_equal(top, ref[i]);
        sl_loop_timer_stop(loop, top);
        assert_false(sl_loop_timer_active(top));
        assert_true(sl_heap_ok(loop));
    }
    assert_int_equal(loop->nheap, 0);
}

static void test_heap_random(void **state)
{
    struct sl_evloop *loop = sl_loop_new(fake_clock);
    static struct sl_timer ts[NTIMERS];
    (void)state;

    assert_non_null(loop);
    srand(12345);
    for (int round = 0; round < 20; round++) {
        for (size_t i = 0; i < NTIMERS; i++)
            sl_loop_timer_init(&ts[i], never, NULL);
        for (int op = 0; op < 2000; op++) {
            struct sl_timer *t = &ts[rand() % NTIMERS];
            /* Few distinct times: many ties, broken by start order. */
            int64_t at = rand() % 50;
            if (rand() % 4 == 0)
                sl_loop_timer_stop(loop, t);
            else
                assert_int_equal(sl_loop_timer_start(loop, t, at), 0);
            if (op % 97 == 0)
                assert_true(sl_heap_ok(loop));
        }
        check_against_reference(loop, ts);
    }
    sl_loop_free(loop);
}

/* ---- timers firing ---- */

struct fired {
    int order[16];
    int64_t at[16];
    int n;
    struct sl_evloop *loop;
    struct sl_timer *rearm;       /* a timer its handler starts again */
};

static struct fired fired;

static void record(void *arg)
{
    int id = (int)(intptr_t)arg;

    fired.order[fired.n] = id;
    fired.at[fired.n] = fake_now;
    fired.n++;
    if (fired.rearm != NULL && id == 9)
        sl_loop_timer_start(fired.loop, fired.rearm, fake_now);
}

static void test_timers_in_order(void **state)
{
    struct sl_evloop *loop = sl_loop_new(fake_clock);
    struct sl_timer a, b, c, d;
    (void)state;

    memset(&fired, 0, sizeof(fired));
    fake_now = 1000;
    sl_loop_timer_init(&a, record, (void *)1);
    sl_loop_timer_init(&b, record, (void *)2);
    sl_loop_timer_init(&c, record, (void *)3);
    sl_loop_timer_init(&d, record, (void *)4);
    sl_loop_timer_start(loop, &a, 1030);
    sl_loop_timer_after(loop, &b, 10);       /* 1010 */
    sl_loop_timer_start(loop, &c, 1020);
    sl_loop_timer_start(loop, &d, 1020);     /* after c: started later */
    /* Moved later, then stopped: a never fires. */
    sl_loop_timer_start(loop, &a, 1050);
    sl_loop_timer_stop(loop, &a);

    /* Nothing is due: no timer fires early. */
    loop->nowait = true;
    assert_int_equal(sl_loop_run_once(loop), 0);
    assert_int_equal(fired.n, 0);
    fake_now = 1009;
    loop->nowait = true;
    sl_loop_run_once(loop);
    assert_int_equal(fired.n, 0);

    fake_now = 1025;
    loop->nowait = true;
    sl_loop_run_once(loop);
    assert_int_equal(fired.n, 3);
    assert_int_equal(fired.order[0], 2);
    assert_int_equal(fired.order[1], 3);
    assert_int_equal(fired.order[2], 4);
    assert_false(sl_loop_timer_active(&b));
    assert_int_equal(loop->nheap, 0);
    sl_loop_free(loop);
}

/* A handler re-arming a timer at "now" does not spin the pass. */
static void test_timer_rearm_waits_a_pass(void **state)
{
    struct sl_evloop *loop = sl_loop_new(fake_clock);
    struct sl_timer t9, t5;
    (void)state;

    memset(&fired, 0, sizeof(fired));
    fake_now = 0;
    fired.loop = loop;
    fired.rearm = &t5;
    sl_loop_timer_init(&t9, record, (void *)9);
    sl_loop_timer_init(&t5, record, (void *)5);
    sl_loop_timer_start(loop, &t9, 0);
    loop->nowait = true;
    sl_loop_run_once(loop);
    assert_int_equal(fired.n, 1);
    assert_true(sl_loop_timer_active(&t5));
    /* Due now: the next poll does not block. */
    assert_int_equal(sl_loop_timeout(loop), 0);
    sl_loop_run_once(loop);
    assert_int_equal(fired.n, 2);
    assert_int_equal(fired.order[1], 5);
    sl_loop_free(loop);
}

/* Real time: a short timer fires, not before its time. */
static void test_timer_real_clock(void **state)
{
    struct sl_evloop *loop = sl_loop_new(NULL);
    struct sl_timer t;
    int64_t start = sl_time_mono_ms(), due;
    (void)state;

    memset(&fired, 0, sizeof(fired));
    sl_loop_timer_init(&t, record, (void *)7);
    sl_loop_timer_after(loop, &t, 20);
    due = t.at_ms;
    assert_true(due >= start + 20);
    while (fired.n == 0)
        assert_int_equal(sl_loop_run_once(loop), 0);
    assert_true(sl_time_mono_ms() >= due);
    sl_loop_free(loop);
}

/* ---- watches ---- */

struct io {
    int calls;
    uint32_t events;
    struct sl_evloop *loop;
    struct sl_watch *victim;      /* unwatched by the first handler */
    struct io *victim_io;
    int victim_fd;
};

static void on_io(void *arg, int fd, uint32_t events)
{
    struct io *io = arg;
    char buf[64];

    io->calls++;
    io->events = events;
    if (events & EPOLLIN)
        (void)!read(fd, buf, sizeof(buf));
    if (io->victim != NULL) {
        sl_loop_unwatch(io->loop, io->victim);
        close(io->victim_fd);
        /* Its argument may go at once: poison it. */
        io->victim_io->calls = 1000;
        io->victim = NULL;
    }
}

static void test_watch_pipe_and_eventfd(void **state)
{
    struct sl_evloop *loop = sl_loop_new(NULL);
    struct io pio = {0}, eio = {0};
    struct sl_watch *pw, *ew;
    int p[2], efd = eventfd(0, EFD_NONBLOCK);
    uint64_t one = 1;
    (void)state;

    assert_int_equal(pipe2(p, O_NONBLOCK), 0);
    pw = sl_loop_watch(loop, p[0], EPOLLIN, on_io, &pio);
    ew = sl_loop_watch(loop, efd, EPOLLIN, on_io, &eio);
    assert_non_null(pw);
    assert_non_null(ew);
    assert_int_equal(write(p[1], "x", 1), 1);
    sl_loop_nowait(loop);
    sl_loop_run_once(loop);
    assert_int_equal(pio.calls, 1);
    assert_true(pio.events & EPOLLIN);
    assert_int_equal(eio.calls, 0);
    assert_int_equal(write(efd, &one, sizeof(one)), sizeof(one));
    sl_loop_nowait(loop);
    sl_loop_run_once(loop);
    assert_int_equal(pio.calls, 1);
    assert_int_equal(eio.calls, 1);
    /* Changed to write interest: the pipe's write end is writable. */
    sl_loop_unwatch(loop, pw);
    pw = sl_loop_watch(loop, p[1], 0, on_io, &pio);
    assert_non_null(pw);
    assert_int_equal(sl_loop_modify(loop, pw, EPOLLOUT), 0);
    assert_int_equal(sl_loop_watch_events(pw), EPOLLOUT);
    sl_loop_nowait(loop);
    sl_loop_run_once(loop);
    assert_int_equal(pio.calls, 2);
    assert_true(pio.events & EPOLLOUT);
    sl_loop_unwatch(loop, pw);
    sl_loop_unwatch(loop, ew);
    /* Unwatched: no more calls. */
    assert_int_equal(write(efd, &one, sizeof(one)), sizeof(one));
    sl_loop_nowait(loop);
    sl_loop_run_once(loop);
    assert_int_equal(eio.calls, 1);
    sl_loop_free(loop);
    close(p[0]);
    close(p[1]);
    close(efd);
}

/* Two ready descriptors; whichever handler runs first unwatches (and
 * closes) the other, whose event is already in the batch. */
static void test_unwatch_during_batch(void **state)
{
    struct sl_evloop *loop = sl_loop_new(NULL);
    struct io a = {0}, b = {0};
    int pa[2], pb[2];
    (void)state;

    assert_int_equal(pipe2(pa, O_NONBLOCK), 0);
    assert_int_equal(pipe2(pb, O_NONBLOCK), 0);
    a.loop = b.loop = loop;
    a.victim = sl_loop_watch(loop, pb[0], EPOLLIN, on_io, &b);
    a.victim_io = &b;
    a.victim_fd = pb[0];
    b.victim = sl_loop_watch(loop, pa[0], EPOLLIN, on_io, &a);
    b.victim_io = &a;
    b.victim_fd = pa[0];
    assert_int_equal(write(pa[1], "x", 1), 1);
    assert_int_equal(write(pb[1], "x", 1), 1);
    sl_loop_nowait(loop);
    sl_loop_run_once(loop);
    /* Exactly one handler ran; the other's watch was skipped (its io was
     * poisoned to 1000 and must not have been touched since). */
    assert_true((a.calls == 1 && b.calls == 1000) ||
                (b.calls == 1 && a.calls == 1000));
    /* The retired watch was recycled after the batch. */
    assert_null(loop->dead);
    assert_true(loop->nspare >= 1);
    sl_loop_free(loop);
    close(pa[1]);
    close(pb[1]);
}

/* ---- hooks and waking ---- */

static int trace[16], ntrace;

static void hook_mark(void *arg) { trace[ntrace++] = (int)(intptr_t)arg; }

static void test_hooks_order(void **state)
{
    struct sl_evloop *loop = sl_loop_new(fake_clock);
    struct sl_timer t;
    (void)state;

    ntrace = 0;
    fake_now = 0;
    sl_loop_hook(loop, SL_LOOP_CHECK, hook_mark, (void *)4);
    sl_loop_hook(loop, SL_LOOP_PREPARE, hook_mark, (void *)1);
    sl_loop_hook(loop, SL_LOOP_POLLED, hook_mark, (void *)2);
    sl_loop_hook(loop, SL_LOOP_CHECK, hook_mark, (void *)5);
    sl_loop_timer_init(&t, hook_mark, (void *)3);
    sl_loop_timer_start(loop, &t, 0);
    sl_loop_run_once(loop);
    assert_int_equal(ntrace, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(trace[i], i + 1);
    sl_loop_free(loop);
}

static void *waker(void *arg)
{
    struct timespec ts = {0, 20 * 1000 * 1000};

    nanosleep(&ts, NULL);
    assert_int_equal(sl_loop_wake(arg), 0);
    return NULL;
}

static void test_wake_from_thread(void **state)
{
    struct sl_evloop *loop = sl_loop_new(NULL);
    pthread_t th;
    (void)state;

    /* No timer, no watch but the wake fd: the poll blocks until woken. */
    assert_int_equal(sl_loop_timeout(loop), -1);
    assert_int_equal(pthread_create(&th, NULL, waker, loop), 0);
    assert_int_equal(sl_loop_run_once(loop), 0);
    pthread_join(th, NULL);
    /* Drained: a wake-up already consumed does not wake again. */
    assert_int_equal(sl_loop_wake(loop), 0);
    assert_int_equal(sl_loop_run_once(loop), 0);
    sl_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heap_random),
        cmocka_unit_test(test_timers_in_order),
        cmocka_unit_test(test_timer_rearm_waits_a_pass),
        cmocka_unit_test(test_timer_real_clock),
        cmocka_unit_test(test_watch_pipe_and_eventfd),
        cmocka_unit_test(test_unwatch_during_batch),
        cmocka_unit_test(test_hooks_order),
        cmocka_unit_test(test_wake_from_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
