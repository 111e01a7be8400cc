/* Unit tests: the exact sliding-log window, on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sl_window.h"

#define S 1000000   /* one second in microseconds */

static void test_admits_limit_then_waits_for_oldest(void **state)
{
    struct sl_window w = {0};
    (void)state;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(sl_window_wait(&w, 3, 10 * S, 100 * S + i * S), 0);
        assert_int_equal(sl_window_record(&w, 3, 100 * S + i * S), 0);
    }
    /* Full at t=102.5s: room when the call of t=100s leaves, at t=110s. */
    assert_int_equal(sl_window_wait(&w, 3, 10 * S, 102 * S + S / 2), 7 * S + S / 2);
    assert_int_equal(sl_window_remaining(&w, 3, 10 * S, 103 * S), 0);
    /* One microsecond early: still full.  On time: room for one. */
    assert_int_equal(sl_window_wait(&w, 3, 10 * S, 110 * S - 1), 1);
    assert_int_equal(sl_window_wait(&w, 3, 10 * S, 110 * S), 0);
    assert_int_equal(sl_window_remaining(&w, 3, 10 * S, 110 * S), 1);
    assert_int_equal(sl_window_next_expiry(&w, 10 * S, 110 * S), 1 * S);
    sl_window_free(&w);
}

/* Property: with random arrivals, no half-open interval of length W ever
 * holds more than N admissions. */
static void test_never_more_than_n_in_any_window(void **state)
{
    struct sl_window w = {0};
    int64_t admitted[5000];
    int n_adm = 0;
    const uint64_t N = 7;
    const int64_t W = 250000;
    int64_t t = 0;
    (void)state;
    srand(42);
    for (int i = 0; i < 20000 && n_adm < 5000; i++) {
        t += rand() % 20000;
        if (sl_window_wait(&w, N, W, t) == 0) {
            assert_int_equal(sl_window_record(&w, N, t), 0);
            admitted[n_adm++] = t;
        }
    }
    assert_true(n_adm > 100);
    for (int i = 0, j = 0; i < n_adm; i++) {
        while (admitted[j] <= admitted[i] - W)
            j++;
        assert_true((uint64_t)(i - j + 1) <= N);
    }
    sl_window_free(&w);
}

static void test_clock_step_back(void **state)
{
    struct sl_window w = {0};
    (void)state;
    assert_int_equal(sl_window_record(&w, 2, 50 * S), 0);
    assert_int_equal(sl_window_remaining(&w, 2, 10 * S, 52 * S), 1);
    /* A time before the newest entry is clamped to it: order is kept. */
    assert_int_equal(sl_window_record(&w, 2, 40 * S), 0);
    assert_int_equal(sl_window_newest(&w), 50 * S);
    sl_window_free(&w);
}

/* Reservations count against the limit; logged times are searched. */
static void test_reservations_and_count_after(void **state)
{
    struct sl_window w = {0};
    (void)state;
    assert_int_equal(sl_window_record(&w, 3, 10 * S), 0);
    assert_int_equal(sl_window_record(&w, 3, 11 * S), 0);
    /* One logged slot left: one reservation fills it. */
    assert_int_equal(sl_window_wait_reserved(&w, 3, 0, 10 * S, 12 * S), 0);
    assert_int_equal(sl_window_wait_reserved(&w, 3, 1, 10 * S, 12 * S), 8 * S);
    /* Two reservations: room when the second-oldest entry leaves. */
    assert_int_equal(sl_window_wait_reserved(&w, 3, 2, 10 * S, 12 * S), 9 * S);
    /* Reservations alone fill it: at most one window after they are sent. */
    assert_int_equal(sl_window_wait_reserved(&w, 3, 3, 10 * S, 12 * S), 10 * S);
    assert_int_equal(sl_window_ensure(&w, 3, 3), 0);
    assert_true(w.cap >= 3);
    assert_int_equal(sl_window_count_after(&w, 9 * S), 2);
    assert_int_equal(sl_window_count_after(&w, 10 * S), 1);
    assert_int_equal(sl_window_count_after(&w, 11 * S), 0);
    sl_window_free(&w);
}

static void test_ring_grows_only_with_use(void **state)
{
    struct sl_window w = {0};
    (void)state;
    assert_int_equal(sl_window_record(&w, 100000000, 1), 0);
    assert_true(sl_window_bytes(&w) <= 64);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(sl_window_record(&w, 100000000, 2 + i), 0);
    assert_true(sl_window_bytes(&w) >= 1001 * 8);
    assert_true(sl_window_bytes(&w) <= 2048 * 8);
    /* Entries leave the window and the log empties. */
    sl_window_prune(&w, 10, 5000);
    assert_int_equal(w.count, 0);
    assert_int_equal(sl_window_newest(&w), INT64_MIN);
    sl_window_free(&w);
}

/* Each entry keeps its app tag through growth, wrap-around and pruning. */
static void test_tags_follow_their_entries(void **state)
{
    struct sl_window w = {0};
    uint64_t counts[4];
    (void)state;

    for (int i = 0; i < 6; i++)
        assert_int_equal(sl_window_record_tag(&w, 8, 100 + i, (uint16_t)(i % 3)), 0);
    memset(counts, 0, sizeof(counts));
    sl_window_tally(&w, counts, 4);
    assert_int_equal(counts[0], 2);
    assert_int_equal(counts[1], 2);
    assert_int_equal(counts[2], 2);
    /* Prune the three oldest (times 100..102: tags 0, 1, 2), wrap around. */
    sl_window_prune(&w, 10, 112);
    assert_int_equal(w.count, 3);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sl_window_record_tag(&w, 8, 120 + i, 3), 0);
    memset(counts, 0, sizeof(counts));
    sl_window_tally(&w, counts, 4);
    assert_int_equal(counts[0], 1);
    assert_int_equal(counts[1], 1);
    assert_int_equal(counts[2], 1);
    assert_int_equal(counts[3], 5);
    /* Tags beyond the array count in its last cell. */
    memset(counts, 0, sizeof(counts));
    sl_window_tally(&w, counts, 2);
    assert_int_equal(counts[0], 1);
    assert_int_equal(counts[1], 7);
    /* Plain records are tag 0. */
    sl_window_free(&w);
    assert_int_equal(sl_window_record(&w, 4, 1), 0);
    memset(counts, 0, sizeof(counts));
    sl_window_tally(&w, counts, 4);
    assert_int_equal(counts[0], 1);
    sl_window_free(&w);
}

/* A limit lowered under calls already admitted (a reload): the log keeps
 * them all, so raising the limit again grants nothing they used; twice the
 * limit (+ 64) bounds it. */
static void test_lowered_limit_keeps_every_call(void **state)
{
    struct sl_window w = {0};
    (void)state;
    for (int i = 0; i < 8; i++)
        assert_int_equal(sl_window_record(&w, 10, 100 * S + i), 0);
    /* Lowered to 5; a call admitted before the reload is sent now. */
    assert_int_equal(sl_window_record(&w, 5, 100 * S + 9), 0);
    assert_int_equal(w.count, 9);
    assert_true(sl_window_wait(&w, 5, 10 * S, 101 * S) > 0);
    /* Raised back to 10: one more fits, not six. */
    assert_int_equal(sl_window_remaining(&w, 10, 10 * S, 101 * S), 1);
    /* Bounded: at limit 1, at most 2 x 1 + 64 entries. */
    for (int i = 0; i < 200; i++)
        assert_int_equal(sl_window_record(&w, 1, 100 * S + 10 + i), 0);
    assert_int_equal(w.count, 66);
    sl_window_free(&w);
}

/* A log merged with a kept copy: each stamp once, ordered, the newest
 * MOST kept, tag counts right. */
static void test_merge(void **state)
{
    struct sl_window w = {0}, k = {0};
    (void)state;

    for (int i = 1; i <= 5; i++)
        assert_int_equal(sl_window_record_tag(&k, 100, i * S, (uint16_t)i), 0);
    /* W holds 4 and 5 (the same calls) and 7. */
    assert_int_equal(sl_window_record_tag(&w, 100, 4 * S, 4), 0);
    assert_int_equal(sl_window_record_tag(&w, 100, 5 * S, 5), 0);
    assert_int_equal(sl_window_record_tag(&w, 100, 7 * S, 7), 0);
    assert_int_equal(sl_window_count_tags(&w), 0);
    /* Only what is later than 1 s: 2, 3 come back. */
    assert_int_equal(sl_window_merge(&w, &k, 1 * S, 100), 0);
    assert_int_equal(w.count, 5);
    for (uint32_t i = 0; i < w.count; i++)
        assert_int_equal(w.times[(w.head + i) % w.cap], (int64_t)(i < 4 ? i + 2 : 7) * S);
    assert_int_equal(sl_window_tag_count(&w, 3), 1);
    assert_int_equal(sl_window_tag_count(&w, 7), 1);
    /* A limit of 3: the newest 3. */
    assert_int_equal(sl_window_merge(&w, &k, 0, 3), 0);
    assert_int_equal(w.count, 3);
    assert_int_equal(w.times[w.head], 4 * S);
    assert_int_equal(sl_window_tag_count(&w, 1), 0);
    /* Nothing later than AFTER: unchanged. */
    assert_int_equal(sl_window_merge(&w, &k, 10 * S, 3), 0);
    assert_int_equal(w.count, 3);
    sl_window_free(&w);
    sl_window_free(&k);
}

/* A refund forgets the newest entries at or before a time, wherever they
 * sit in the ring, and keeps the rest in order. */
static void test_remove(void **state)
{
    struct sl_window w = {0};
    (void)state;
    assert_int_equal(sl_window_count_tags(&w), 0);
    for (int i = 1; i <= 10; i++)
        assert_int_equal(sl_window_record_tag(&w, 100, i * S, (uint16_t)(i % 2)), 0);
    sl_window_prune(&w, 100 * S, 3 * S + 100 * S);  /* 1..3 go: head moves */
    for (int i = 11; i <= 12; i++)
        assert_int_equal(sl_window_record_tag(&w, 100, i * S, (uint16_t)(i % 2)), 0);
    /* 4..12 left; forget 2 at or before 8 s: 8 and 7. */
    assert_int_equal(sl_window_remove(&w, 8 * S, 2), 2);
    assert_int_equal(w.count, 7);
    int64_t want[] = {4, 5, 6, 9, 10, 11, 12};
    for (uint32_t i = 0; i < w.count; i++)
        assert_int_equal(w.times[(w.head + i) % w.cap], want[i] * S);
    assert_int_equal(sl_window_tag_count(&w, 0), 4);   /* 4 6 10 12 */
    assert_int_equal(sl_window_tag_count(&w, 1), 3);   /* 5 9 11 */
    /* Nothing at or before 3 s; at most what there is. */
    assert_int_equal(sl_window_remove(&w, 3 * S, 5), 0);
    assert_int_equal(sl_window_remove(&w, 100 * S, 50), 7);
    assert_int_equal(w.count, 0);
    sl_window_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lowered_limit_keeps_every_call),
        cmocka_unit_test(test_admits_limit_then_waits_for_oldest),
        cmocka_unit_test(test_never_more_than_n_in_any_window),
        cmocka_unit_test(test_clock_step_back),
        cmocka_unit_test(test_reservations_and_count_after),
        cmocka_unit_test(test_ring_grows_only_with_use),
        cmocka_unit_test(test_tags_follow_their_entries),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_remove),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
