/* Unit tests: the leaky bucket's integer arithmetic, on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sl_bucket.h"

#define S 1000000   /* one second in microseconds */

static void test_leak_parse(void **state)
{
    struct sl_leak l;
    (void)state;
    /* Reduced: 2 per second is 1 per 500 ms. */
    assert_int_equal(sl_leak_parse("2/s", &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.per_us, S / 2);
    assert_int_equal(sl_leak_parse("0.5/s", &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.per_us, 2 * S);
    assert_int_equal(sl_leak_parse("40/m", &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.per_us, 3 * S / 2);
    assert_int_equal(sl_leak_parse("3600/h", &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.per_us, S);
    assert_int_equal(sl_leak_parse("3/s", &l), 0);
    assert_int_equal(l.n, 3);
    assert_int_equal(l.per_us, S);
    assert_int_equal(sl_leak_parse("0.000001/s", &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.per_us, INT64_C(1000000000000));
    const char *bad[] = {"", "/s", "2", "2/", "2/d", "0/s", "0.0/s", "1./s", ".5/s",
                         "-1/s", "1.0000001/s", "2 /s", "2/s ", "1e3/s", NULL};
    for (int i = 0; bad[i] != NULL; i++)
        assert_int_equal(sl_leak_parse(bad[i], &l), -1);
}

/* A bucket of 40 draining 2/s: the burst of 40, then one call every
 * 500 ms; the wait is exact to the microsecond. */
static void test_burst_then_rate(void **state)
{
    struct sl_leak l = {2, S};
    struct sl_bucket b = {0, 0};
    int64_t cap = sl_bucket_cap(40, &l, 0);
    (void)state;
    for (int i = 0; i < 40; i++) {
        assert_int_equal(sl_bucket_wait(&b, &l, cap, 0, 1, 10 * S), 0);
        sl_bucket_add(&b, &l, 1, 10 * S);
    }
    assert_int_equal(sl_bucket_room(&b, &l, cap, 0, 10 * S), 0);
    assert_int_equal(sl_bucket_wait(&b, &l, cap, 0, 1, 10 * S), S / 2);
    assert_int_equal(sl_bucket_wait(&b, &l, cap, 0, 1, 10 * S + S / 2 - 1), 1);
    assert_int_equal(sl_bucket_wait(&b, &l, cap, 0, 1, 10 * S + S / 2), 0);
    /* Cost 5 waits for five calls' worth; reservations count. */
    assert_int_equal(sl_bucket_wait(&b, &l, cap, 0, 5, 10 * S), 5 * S / 2);
    assert_int_equal(sl_bucket_wait(&b, &l, cap, 2, 1, 10 * S), 3 * S / 2);
    assert_int_equal(sl_bucket_empty_in(&b, &l, 10 * S), 20 * S);
    /* More than the bucket ever holds: the drain time, at least one call. */
    assert_int_equal(sl_bucket_wait(&b, &l, cap, 40, 1, 10 * S), 20 * S);
    assert_int_equal(sl_bucket_room(&b, &l, cap, 0, 30 * S), 40);
    /* A clock that steps back drains nothing, adds at the last time. */
    sl_bucket_add(&b, &l, 1, 9 * S);
    assert_int_equal(b.at, 10 * S);
}

/* The margin comes off the capacity: rate x margin. */
static void test_margin(void **state)
{
    struct sl_leak l = {2, S};
    struct sl_bucket b = {0, 0};
    int64_t cap = sl_bucket_cap(40, &l, 50000);
    (void)state;
    assert_int_equal(cap, 40 * S - 100000);
    for (int i = 0; i < 39; i++)
        sl_bucket_add(&b, &l, 1, 0);
    /* The 40th waits for 0.1 call to drain: 50 ms. */
    assert_int_equal(sl_bucket_wait(&b, &l, cap, 0, 1, 0), 50000);
    assert_int_equal(sl_bucket_cap(1, &l, 10 * S), 0);
}

/* A report: the provider held USED when it answered; calls after it count
 * whole; lower or higher than ours. */
static void test_set_and_rescale(void **state)
{
    struct sl_leak l = {2, S}, l4 = {4, S}, half = {1, 2 * S};
    struct sl_bucket b = {0, 0};
    int64_t cap = sl_bucket_cap(40, &l, 0);
    (void)state;
    sl_bucket_add(&b, &l, 10, 0);
    sl_bucket_set(&b, &l, 32, 0, 0, 1 * S);   /* 32 at 0 s, drained 2 */
    assert_int_equal(sl_bucket_room(&b, &l, cap, 0, 1 * S), 10);
    sl_bucket_set(&b, &l, 4, S / 2, 3, 1 * S); /* 4 - 1 + 3 */
    assert_int_equal(sl_bucket_room(&b, &l, cap, 0, 1 * S), 34);
    /* The same 6 calls in units of another leak. */
    b.level = 6 * S;
    sl_bucket_rescale(&b, &l, &half);
    assert_int_equal(b.level, 12 * S);
    sl_bucket_rescale(&b, &half, &l4);
    assert_int_equal(b.level, 6 * S);
}

/* Property: random calls (costs 1-3) on a random clock, each admitted
 * when it fits and sent after a random delay; at the sends, no interval
 * [a, a + t] holds more than bucket + rate x t. */
static void test_never_more_than_bucket_plus_rate(void **state)
{
    enum { N = 4000 };
    struct sl_leak l = {3, S};    /* 3/s */
    struct sl_bucket b = {0, 0};
    const uint64_t bucket = 10;
    int64_t cap = sl_bucket_cap(bucket, &l, 0);
    int64_t sent_at[N], pend_at[N];
    uint64_t cost[N], pend_cost[N], reserved = 0;
    int nsent = 0, npend = 0;
    int64_t t = 0;
    (void)state;
    srand(7);
    for (int i = 0; i < 60000 && nsent < N - 8; i++) {
        t += rand() % 60000;
        /* Send the reservations whose time has come (in order). */
        for (int k = 0; k < npend;) {
            if (pend_at[k] <= t) {
                sl_bucket_add(&b, &l, pend_cost[k], pend_at[k]);
                sent_at[nsent] = pend_at[k];
                cost[nsent++] = pend_cost[k];
                reserved -= pend_cost[k];
                pend_at[k] = pend_at[npend - 1];
                pend_cost[k] = pend_cost[--npend];
            } else {
                k++;
            }
        }
        uint64_t c = 1 + (uint64_t)(rand() % 3);
        if (npend < 8 && sl_bucket_wait(&b, &l, cap, reserved, c, t) == 0) {
            reserved += c;
            pend_cost[npend] = c;
            pend_at[npend++] = t + rand() % 40000;
        }
    }
    assert_true(nsent > 500);
    /* Sends are in time order only per pending slot: sort. */
    for (int i = 1; i < nsent; i++)
        for (int j = i; j > 0 && sent_at[j] < sent_at[j - 1]; j--) {
            int64_t x = sent_at[j]; sent_at[j] = sent_at[j - 1]; sent_at[j - 1] = x;
            uint64_t y = cost[j]; cost[j] = cost[j - 1]; cost[j - 1] = y;
        }
    for (int i = 0; i < nsent; i++) {
        uint64_t units = 0;
        for (int j = i; j < nsent; j++) {
            units += cost[j];
            /* units <= bucket + 3 (t_j - t_i) / 1 s, in integers */
            __int128 lhs = (__int128)units * S;
            __int128 rhs = (__int128)bucket * S + (__int128)3 * (sent_at[j] - sent_at[i]);
            assert_true(lhs <= rhs);
        }
    }
}

/* A bucket rebuilt from one span of sends (a state file, or Redis's log
 * after it lost the level) plus sl_bucket_refill is never below the
 * bucket's real level: known cases, then random histories. */
static void test_refill_never_below_the_real_level(void **state)
{
    struct sl_leak l = {1, S / 2};            /* 2/s: one call drains in 500 ms */
    const uint64_t bucket = 10;
    const int64_t full = 10 * (S / 2), span = 5 * S;   /* span: a full drain */
    int64_t at[16];
    struct sl_bucket b;
    (void)state;
    /* Kept full: a call every 500 ms (the leak rate) for a whole span.
     * The replay alone ends at one call's level; the bucket was full. */
    b = (struct sl_bucket){0, 0};
    for (int i = 0; i < 10; i++) {
        at[i] = 100 * S + i * (S / 2);
        sl_bucket_add(&b, &l, 1, at[i]);
    }
    assert_int_equal(sl_bucket_level(&b, &l, at[9]), S / 2);
    sl_bucket_refill(&b, &l, bucket, at, 10, span, at[9]);
    assert_int_equal(sl_bucket_level(&b, &l, at[9]), full);
    /* Half the leak rate, 5 calls a second apart: a bucket full at the
     * span's start (1 s before the first) drained 10 calls' worth and
     * took 5: 5 of 10; full just after the first, 8 drained, 4 taken: 6.
     * The least: 5. */
    b = (struct sl_bucket){0, 0};
    for (int i = 0; i < 5; i++) {
        at[i] = 100 * S + i * S;
        sl_bucket_add(&b, &l, 1, at[i]);
    }
    sl_bucket_refill(&b, &l, bucket, at, 5, span, 104 * S);
    assert_int_equal(sl_bucket_level(&b, &l, 104 * S), full / 2);
    /* A burst of 7 at once, seen 1 s later: full at the span's start (4 s
     * before it) leaves 2 then, 9 with the burst, 7 now: as much as the
     * burst can prove; a drain time later, empty either way. */
    for (int i = 0; i < 7; i++)
        at[i] = 100 * S;
    b = (struct sl_bucket){0, 0};
    sl_bucket_add(&b, &l, 7, 100 * S);
    sl_bucket_refill(&b, &l, bucket, at, 7, span, 101 * S);
    assert_int_equal(sl_bucket_level(&b, &l, 101 * S), 7 * (S / 2));
    b = (struct sl_bucket){0, 0};
    sl_bucket_add(&b, &l, 7, 100 * S);
    sl_bucket_refill(&b, &l, bucket, at, 7, span, 100 * S + span);
    assert_int_equal(sl_bucket_level(&b, &l, 100 * S + span), 0);
    /* Nothing in the span: nothing to count. */
    b = (struct sl_bucket){0, 0};
    sl_bucket_refill(&b, &l, bucket, at, 0, span, 104 * S);
    assert_int_equal(sl_bucket_level(&b, &l, 104 * S), 0);

    /* Random histories: calls admitted when they fit; at random moments
     * the bucket is rebuilt from the sends of the last span. */
    enum { N = 40000 };
    static int64_t sent[N];
    int n = 0, checked = 0;
    int64_t t = 0, cap = sl_bucket_cap(bucket, &l, 0);
    b = (struct sl_bucket){0, 0};
    srand(11);
    for (int i = 0; i < 40000 && n < N; i++) {
        /* bursts and lulls: demand from far under to far over the leak */
        t += (i / 500) % 2 ? rand() % 1200000 : rand() % 150000;
        if (sl_bucket_wait(&b, &l, cap, 0, 1, t) == 0) {
            sl_bucket_add(&b, &l, 1, t);
            sent[n++] = t;
        }
        if (i % 37 == 0) {
            struct sl_bucket r = {0, 0};
            int k0 = n;
            while (k0 > 0 && sent[k0 - 1] > t - span)
                k0--;
            for (int k = k0; k < n; k++)
                sl_bucket_add(&r, &l, 1, sent[k]);
            sl_bucket_refill(&r, &l, bucket, sent + k0, (size_t)(n - k0), span, t);
            assert_true(sl_bucket_level(&r, &l, t) >= sl_bucket_level(&b, &l, t));
            assert_true(sl_bucket_level(&r, &l, t) <= full);
            checked++;
        }
    }
    assert_true(n > 1000 && checked > 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_leak_parse),
        cmocka_unit_test(test_burst_then_rate),
        cmocka_unit_test(test_margin),
        cmocka_unit_test(test_set_and_rescale),
        cmocka_unit_test(test_never_more_than_bucket_plus_rate),
        cmocka_unit_test(test_refill_never_below_the_real_level),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
