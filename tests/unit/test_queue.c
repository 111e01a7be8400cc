/*
 * Unit tests: the wait lists (proxy/sl_queue.c, included to reach its
 * statics).  A wake-up must never be lost: room that appears while a call
 * is on its way into a wait list changes the room sequence the call read
 * before asking, and a wake-up a leaving call did not use goes to the next
 * in line.  The order of a wait list is higher priority first, then
 * arrival, with aging lifting a call one level per aging period waited; a
 * newcomer is held up by the first waiter ahead of it that is not waiting
 * for another app's share; and the counts the admin listener reads follow
 * every join and departure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../proxy/sl_queue.c"

static int woken[4];

static void fake_wake(void *arg, int worker)
{
    (void)arg;
    woken[worker]++;
}

struct fixture {
    struct sl_waitlists *wl;
    struct sl_queue q;
    struct sl_rule rule, other;
    struct sl_check check, other_check;
    struct sl_held a, b;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    memset(woken, 0, sizeof(woken));
    f->wl = sl_waitlists_new(1, 4, fake_wake, NULL);
    assert_non_null(f->wl);
    assert_int_equal(sl_queue_init(&f->q, 1, 0, f->wl), 0);
    f->check.nhits = 1;
    f->check.hits[0] = (struct sl_hit){.rule = &f->rule, .key = "k", .key_len = 1};
    f->other_check.nhits = 1;
    f->other_check.hits[0] = (struct sl_hit){.rule = &f->other, .key = "z", .key_len = 1};
    /* The two buckets must not share a hash slot for the tests below. */
    assert_int_not_equal(sl_whash(&f->rule, "k", 1), sl_whash(&f->other, "z", 1));
    for (int i = 0; i < 2; i++) {
        struct sl_held *h = i == 0 ? &f->a : &f->b;
        h->upstream = 0;
        h->check = &f->check;
        h->waiting = &f->check.hits[0];
        h->deadline_ms = INT64_MAX;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    sl_queue_free(&f->q);
    sl_waitlists_free(f->wl);
    free(f);
    return 0;
}

/* Room with nobody held wakes nobody, but a call that asked before it
 * and joins after it sees the sequence moved. */
static void test_room_before_the_join_moves_the_sequence(void **state)
{
    struct fixture *f = *state;
    uint64_t before = sl_waitlists_seq(f->wl, &f->check);
    uint64_t other = sl_waitlists_seq(f->wl, &f->other_check);

    sl_waitlists_room(f->wl, &f->rule, "k", 1);
    assert_int_equal(woken[0], 0);
    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_true(sl_waitlists_seq(f->wl, &f->check) != before);
    /* Another bucket's room is not this call's. */
    assert_int_equal(sl_waitlists_seq(f->wl, &f->other_check), other);
    sl_waitlists_room(f->wl, &f->other, "z", 1);
    assert_int_equal(woken[0], 0);
    sl_queue_remove(&f->q, &f->a);
}

/* Room after the join: the first in line is kicked and its worker woken. */
static void test_room_after_the_join_kicks_the_first(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_int_equal(sl_queue_add(&f->q, &f->b), 0);
    sl_waitlists_room(f->wl, &f->rule, "k", 1);
    assert_true(atomic_load(&f->a.kicked));
    assert_false(atomic_load(&f->b.kicked));
    assert_int_equal(woken[0], 1);
    assert_true(sl_queue_is_head(&f->q, &f->a));
    assert_false(sl_queue_is_head(&f->q, &f->b));
    sl_queue_remove(&f->q, &f->b);
    sl_queue_remove(&f->q, &f->a);
}

/* A call seen ahead that leaves moves the sequence too: a newcomer that
 * decided to wait behind it and had not joined yet asks itself. */
static void test_a_departure_moves_the_sequence(void **state)
{
    struct fixture *f = *state;
    uint64_t before;

    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    before = sl_waitlists_seq(f->wl, &f->check);
    sl_queue_remove(&f->q, &f->a);
    assert_true(sl_waitlists_seq(f->wl, &f->check) != before);
}

/* The first in line was kicked and leaves without asking (its client
 * left): the room is still there, so the kick goes to the next. */
static void test_an_unused_kick_is_passed_on(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_int_equal(sl_queue_add(&f->q, &f->b), 0);
    sl_waitlists_room(f->wl, &f->rule, "k", 1);
    assert_true(atomic_load(&f->a.kicked));
    sl_queue_remove(&f->q, &f->a);
    assert_true(atomic_load(&f->b.kicked));
    assert_int_equal(woken[0], 2);
    assert_true(sl_queue_is_head(&f->q, &f->b));
    sl_queue_remove(&f->q, &f->b);
}

/* A kick the first used (it asked and got the room) is not passed on:
 * the next is woken to look, not told there is room. */
static void test_a_used_kick_is_not_passed_on(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_int_equal(sl_queue_add(&f->q, &f->b), 0);
    sl_waitlists_room(f->wl, &f->rule, "k", 1);
    atomic_store(&f->a.kicked, false);  /* the pump took it and asked */
    sl_queue_remove(&f->q, &f->a);
    assert_false(atomic_load(&f->b.kicked));
    assert_int_equal(woken[0], 2);
    sl_queue_remove(&f->q, &f->b);
}

/* ---- order, who holds up a newcomer, counts ---- */

static struct sl_upstream_conf fixture_up;  /* index 0 */

/* Higher priority first, then arrival: a later call of a higher lane
 * goes to the head, and each joiner counts who is ahead of it. */
static void test_priority_then_arrival(void **state)
{
    struct fixture *f = *state;
    struct sl_held c = f->a;

    c.priority = 5;
    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_int_equal(sl_queue_add(&f->q, &f->b), 0);
    assert_int_equal(sl_queue_add(&f->q, &c), 0);
    assert_int_equal(f->a.ahead, 0);
    assert_int_equal(f->b.ahead, 1);
    assert_int_equal(c.ahead, 0);
    assert_true(sl_queue_is_head(&f->q, &c));
    assert_false(sl_queue_is_head(&f->q, &f->a));
    assert_true(f->a.ticket < f->b.ticket && f->b.ticket < c.ticket);
    /* Room goes to the head: the high lane's call. */
    sl_waitlists_room(f->wl, &f->rule, "k", 1);
    assert_true(atomic_load(&c.kicked));
    assert_false(atomic_load(&f->a.kicked));
    sl_queue_remove(&f->q, &c);
    assert_true(sl_queue_is_head(&f->q, &f->a));
    sl_queue_remove(&f->q, &f->a);
    assert_true(sl_queue_is_head(&f->q, &f->b));
    sl_queue_remove(&f->q, &f->b);
}

/* With aging, a call rises one level per aging period waited: one that
 * has waited five periods longer goes before a call one level up; ties
 * fall back to arrival. */
static void test_aging_lifts_a_long_wait(void **state)
{
    struct sl_held old = {.priority = 0, .aging_ms = 1000, .since_ms = 0, .ticket = 1};
    struct sl_held high = {.priority = 1, .aging_ms = 1000, .since_ms = 5000, .ticket = 2};
    struct sl_held fresh = {.priority = 1, .aging_ms = 1000, .since_ms = 500, .ticket = 3};
    struct sl_held tie = {.priority = 1, .aging_ms = 1000, .since_ms = 1000, .ticket = 4};
    (void)state;

    assert_true(sl_held_before(&old, &high));
    assert_false(sl_held_before(&high, &old));
    /* 500 ms is half a period: the higher lane still goes first. */
    assert_true(sl_held_before(&fresh, &old));
    /* Exactly one period: equal standing, arrival decides. */
    assert_true(sl_held_before(&old, &tie));
    assert_false(sl_held_before(&tie, &old));
    /* Without aging, priority alone, then arrival. */
    old.aging_ms = high.aging_ms = 0;
    assert_true(sl_held_before(&high, &old));
    high.priority = 0;
    assert_true(sl_held_before(&old, &high));
}

/* A newcomer is held up by a waiter of its own lane or above in one of
 * its buckets; not by one of a lower lane, nor by one that waits for
 * another app's share. */
static void test_blocks_sees_who_is_ahead(void **state)
{
    struct fixture *f = *state;
    struct sl_check me = f->check;
    int64_t retry;
    bool own;

    me.upstream = &fixture_up;
    me.app = 2;
    /* Nothing held. */
    assert_null(sl_queue_blocks(&f->q, &me, 0, 0, 100, &retry, &own));
    assert_int_equal(retry, -1);

    f->a.app = 1;
    f->a.since_ms = 50;
    atomic_store(&f->a.retry_at_ms, 1234);
    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_ptr_equal(sl_queue_blocks(&f->q, &me, 0, 0, 100, &retry, &own), &me.hits[0]);
    assert_int_equal(retry, 1234);
    assert_false(own);
    /* A higher lane goes past it. */
    assert_null(sl_queue_blocks(&f->q, &me, 1, 0, 100, &retry, &own));
    /* Another bucket is not held up. */
    me.hits[0] = f->other_check.hits[0];
    assert_null(sl_queue_blocks(&f->q, &me, 0, 0, 100, &retry, &own));
    me.hits[0] = f->check.hits[0];

    /* The waiter waits for its own app's share: other apps pass it, its
     * own app's calls do not (and learn why). */
    sl_queue_set_app_blocked(&f->q, &f->a, true);
    assert_null(sl_queue_blocks(&f->q, &me, 0, 0, 100, &retry, &own));
    me.app = 1;
    assert_ptr_equal(sl_queue_blocks(&f->q, &me, 0, 0, 100, &retry, &own), &me.hits[0]);
    assert_true(own);
    sl_queue_remove(&f->q, &f->a);
    assert_null(sl_queue_blocks(&f->q, &me, 0, 0, 100, &retry, &own));
}

/* Counts per upstream and per app, the oldest wait, and the next time
 * the worker must look at its queue follow joins and departures. */
static void test_counts_oldest_and_next_time(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(sl_queue_next_ms(&f->q), -1);
    f->a.app = 3;
    f->a.since_ms = 100;
    f->a.deadline_ms = 9000;
    atomic_store(&f->a.retry_at_ms, 700);
    f->b.app = 3;
    f->b.since_ms = 200;
    f->b.deadline_ms = 600;
    atomic_store(&f->b.retry_at_ms, 300);
    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_int_equal(sl_queue_add(&f->q, &f->b), 0);
    assert_int_equal(sl_queue_count(&f->q, 0), 2);
    assert_int_equal(sl_queue_app_count(&f->q, 3), 2);
    assert_int_equal(sl_queue_app_count(&f->q, 1), 0);
    assert_int_equal(sl_queue_app_count(&f->q, 4000), 0);  /* beyond the ids */
    assert_int_equal(sl_queue_oldest_ms(&f->q, 0), 100);
    /* The earlier of each call's retry and deadline, over all calls. */
    assert_int_equal(sl_queue_next_ms(&f->q), 300);
    /* A call parked behind another (or deciding) waits for its deadline
     * only. */
    f->b.parked = true;
    assert_int_equal(sl_queue_next_ms(&f->q), 600);
    f->b.deadline_ms = 900;
    assert_int_equal(sl_queue_next_ms(&f->q), 700);
    sl_queue_remove(&f->q, &f->a);
    assert_int_equal(sl_queue_count(&f->q, 0), 1);
    assert_int_equal(sl_queue_oldest_ms(&f->q, 0), 200);
    assert_int_equal(sl_queue_next_ms(&f->q), 900);
    sl_queue_remove(&f->q, &f->b);
    assert_int_equal(sl_queue_count(&f->q, 0), 0);
    assert_int_equal(sl_queue_app_count(&f->q, 3), 0);
    assert_int_equal(sl_queue_oldest_ms(&f->q, 0), 0);
    assert_int_equal(sl_queue_next_ms(&f->q), -1);
}

/* A pause that ends sooner (an operator's action) ends for every waiter:
 * all are kicked, not the head alone. */
static void test_a_shortened_pause_kicks_everyone(void **state)
{
    struct fixture *f = *state;

    f->rule.kind = SL_RULE_PAUSE;
    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_int_equal(sl_queue_add(&f->q, &f->b), 0);
    sl_waitlists_room(f->wl, &f->rule, "k", 1);
    assert_true(atomic_load(&f->a.kicked));
    assert_true(atomic_load(&f->b.kicked));
    assert_int_equal(woken[0], 2);
    sl_queue_remove(&f->q, &f->a);
    sl_queue_remove(&f->q, &f->b);
}

/* Moving to another bucket leaves the first: its next room is not this
 * call's, the new bucket's is. */
static void test_rewait_moves_to_another_bucket(void **state)
{
    struct fixture *f = *state;

    f->a.check = &f->other_check;  /* counts in both: waits on one */
    assert_int_equal(sl_queue_add(&f->q, &f->a), 0);
    assert_int_equal(sl_queue_rewait(&f->q, &f->a, &f->other_check.hits[0]), 0);
    sl_waitlists_room(f->wl, &f->rule, "k", 1);
    assert_false(atomic_load(&f->a.kicked));
    sl_waitlists_room(f->wl, &f->other, "z", 1);
    assert_true(atomic_load(&f->a.kicked));
    sl_queue_remove(&f->q, &f->a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_room_before_the_join_moves_the_sequence,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_room_after_the_join_kicks_the_first,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_departure_moves_the_sequence, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_an_unused_kick_is_passed_on, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_used_kick_is_not_passed_on, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_priority_then_arrival, setup, teardown),
        cmocka_unit_test(test_aging_lifts_a_long_wait),
        cmocka_unit_test_setup_teardown(test_blocks_sees_who_is_ahead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counts_oldest_and_next_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_shortened_pause_kicks_everyone, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rewait_moves_to_another_bucket, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
