/*
 * Unit tests: the wait lists' wake-ups (proxy/sl_queue.c, included to reach
 * its statics).  A wake-up must never be lost: room that appears while a
 * call is on its way into a wait list changes the room sequence the call
 * read before asking, and a wake-up a leaving call did not use goes to the
 * next in line.
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
