/* Unit tests: the per-rule usage history (minutes x apps, 24 hours). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <cmocka.h>

#include "sl_apps.h"
#include "sl_history.h"

/* 2026-11-24T14:00:00Z, a minute boundary. */
#define T0 INT64_C(1795960800000)
#define MIN INT64_C(60000)

static uint64_t view_count(const struct sl_hist_view *v, int64_t minute,
                           const char *name)
{
    for (size_t i = 0; i < v->ncells; i++)
        if (v->cells[i].minute == minute &&
            strcmp(v->names[v->cells[i].name], name) == 0)
            return v->cells[i].n;
    return 0;
}

static void test_counts_per_minute_and_app(void **state)
{
    struct sl_history *h = sl_history_new(4);
    struct sl_apps *apps = sl_apps_new(10);
    uint16_t billing = sl_apps_id(apps, "billing", 7);
    uint16_t sync = sl_apps_id(apps, "crm-sync", 8);
    struct sl_hist_view v;
    (void)state;

    assert_int_equal(sl_history_add(h, 2, billing, T0, 1), 0);
    assert_int_equal(sl_history_add(h, 2, billing, T0 + 59999, 2), 0);
    assert_int_equal(sl_history_add(h, 2, sync, T0 + 1000, 1), 0);
    assert_int_equal(sl_history_add(h, 2, sync, T0 + MIN, 5), 0);
    /* Another ring is another rule. */
    assert_int_equal(sl_history_add(h, 0, sync, T0, 7), 0);
    /* Past max_rings: refused, nothing made. */
    assert_int_equal(sl_history_add(h, 4, sync, T0, 1), 1);
    /* Two rings made, each 1,440 slots and a small header. */
    assert_int_equal(sl_history_bytes(h) / (SL_HIST_MINUTES * sizeof(struct sl_hist_slot)), 2);

    assert_int_equal(sl_history_view(h, 2, T0 + 2 * MIN, apps, &v), 0);
    assert_int_equal(v.ncells, 3);
    assert_int_equal(view_count(&v, T0 / MIN, "billing"), 3);
    assert_int_equal(view_count(&v, T0 / MIN, "crm-sync"), 1);
    assert_int_equal(view_count(&v, T0 / MIN + 1, "crm-sync"), 5);
    assert_true(v.cells[0].minute <= v.cells[2].minute);
    sl_hist_view_clear(&v);

    assert_int_equal(sl_history_view(h, 0, T0, apps, &v), 0);
    assert_int_equal(v.ncells, 1);
    assert_int_equal(view_count(&v, T0 / MIN, "crm-sync"), 7);
    sl_hist_view_clear(&v);
    /* A ring never used reads empty. */
    assert_int_equal(sl_history_view(h, 1, T0, apps, &v), 0);
    assert_int_equal(v.ncells, 0);
    sl_hist_view_clear(&v);
    sl_history_free(h);
    sl_apps_free(apps);
}

static void test_bounded_memory(void **state)
{
    struct sl_history *h = sl_history_new(SL_HIST_RINGS_DEFAULT);
    (void)state;

    /* A slot is 72 bytes whatever the apps, a ring 1,440 of them: the
     * bound docs/guides/usage.md states (about 101 KiB a rule). */
    assert_int_equal(sizeof(struct sl_hist_slot), 72);
    assert_int_equal(sl_history_bytes(h), 0);
    for (int m = 0; m < 3 * SL_HIST_MINUTES; m++)
        for (uint16_t app = 2; app < 40; app++)
            sl_history_add(h, 5, app, T0 + m * MIN, 1);
    assert_true(sl_history_bytes(h) >= SL_HIST_MINUTES * sizeof(struct sl_hist_slot));
    assert_true(sl_history_bytes(h) < SL_HIST_MINUTES * sizeof(struct sl_hist_slot) + 4096);
    for (size_t r = 0; r < SL_HIST_RINGS_DEFAULT; r++)
        sl_history_add(h, r, 2, T0, 1);
    assert_true(sl_history_bytes(h) <= SL_HIST_RINGS_DEFAULT *
                                           (SL_HIST_MINUTES * sizeof(struct sl_hist_slot) + 4096));
    sl_history_free(h);
}

static void test_seventh_app_counts_as_other(void **state)
{
    struct sl_history *h = sl_history_new(1);
    struct sl_apps *apps = sl_apps_new(20);
    char name[8];
    struct sl_hist_view v;
    uint64_t total = 0;
    (void)state;

    for (int i = 0; i < 9; i++) {
        snprintf(name, sizeof(name), "app%d", i);
        sl_history_add(h, 0, sl_apps_id(apps, name, strlen(name)), T0, (uint32_t)(i + 1));
    }
    /* A known app keeps its column once others came. */
    sl_history_add(h, 0, sl_apps_id(apps, "app0", 4), T0, 10);
    assert_int_equal(sl_history_view(h, 0, T0, apps, &v), 0);
    assert_int_equal(v.ncells, SL_HIST_APPS + 1);
    assert_int_equal(view_count(&v, T0 / MIN, "app0"), 11);
    assert_int_equal(view_count(&v, T0 / MIN, "app5"), 6);
    assert_int_equal(view_count(&v, T0 / MIN, "app6"), 0);
    /* app6, app7, app8: 7 + 8 + 9 calls. */
    assert_int_equal(view_count(&v, T0 / MIN, "other"), 24);
    for (size_t i = 0; i < v.ncells; i++)
        total += v.cells[i].n;
    assert_int_equal(total, 45 + 10);
    sl_hist_view_clear(&v);
    sl_history_free(h);
    sl_apps_free(apps);
}

static void test_old_minutes_leave_the_ring(void **state)
{
    struct sl_history *h = sl_history_new(1);
    struct sl_apps *apps = sl_apps_new(4);
    uint16_t a = sl_apps_id(apps, "a", 1);
    struct sl_hist_view v;
    (void)state;

    sl_history_add(h, 0, a, T0, 3);
    sl_history_add(h, 0, a, T0 + 10 * MIN, 4);
    /* 23 h 59 min later both are still in the last 1,440 minutes... */
    assert_int_equal(sl_history_view(h, 0, T0 + 1439 * MIN, apps, &v), 0);
    assert_int_equal(v.ncells, 2);
    sl_hist_view_clear(&v);
    /* ... a minute later the first is not, though its slot is untouched. */
    assert_int_equal(sl_history_view(h, 0, T0 + 1440 * MIN, apps, &v), 0);
    assert_int_equal(v.ncells, 1);
    assert_int_equal(view_count(&v, T0 / MIN + 10, "a"), 4);
    sl_hist_view_clear(&v);
    /* The minute that reuses the slot starts from zero. */
    sl_history_add(h, 0, a, T0 + 1440 * MIN, 1);
    assert_int_equal(sl_history_view(h, 0, T0 + 1440 * MIN, apps, &v), 0);
    assert_int_equal(view_count(&v, T0 / MIN + 1440, "a"), 1);
    sl_hist_view_clear(&v);
    /* A call stamped a day before what its slot holds is dropped. */
    sl_history_add(h, 0, a, T0, 100);
    assert_int_equal(sl_history_view(h, 0, T0 + 1440 * MIN, apps, &v), 0);
    assert_int_equal(view_count(&v, T0 / MIN + 1440, "a"), 1);
    assert_int_equal(view_count(&v, T0 / MIN, "a"), 0);
    sl_hist_view_clear(&v);
    sl_history_free(h);
    sl_apps_free(apps);
}

static void test_unsent_hands_each_call_out_once(void **state)
{
    struct sl_history *h = sl_history_new(1);
    struct sl_hist_delta d[16];
    size_t n;
    (void)state;

    assert_false(sl_history_dirty(h, 0));
    assert_int_equal(sl_history_unsent(h, 0, T0, d, 16), 0);
    for (uint16_t app = 2; app < 2 + SL_HIST_APPS + 2; app++)
        sl_history_add(h, 0, app, T0, 1);
    sl_history_add(h, 0, 2, T0 + MIN, 5);
    assert_true(sl_history_dirty(h, 0));
    /* A small buffer: what did not fit stays owed. */
    n = sl_history_unsent(h, 0, T0 + MIN, d, 4);
    assert_int_equal(n, 4);
    assert_true(sl_history_dirty(h, 0));
    n = sl_history_unsent(h, 0, T0 + MIN, d, 16);
    /* 6 columns + other in the first minute, 1 in the second: 8 in all. */
    assert_int_equal(n, 4);
    assert_int_equal(d[2].app, SL_HIST_OTHER_APP);
    assert_int_equal(d[2].n, 2);
    assert_int_equal(d[3].minute, T0 / MIN + 1);
    assert_int_equal(d[3].n, 5);
    assert_false(sl_history_dirty(h, 0));
    assert_int_equal(sl_history_unsent(h, 0, T0 + MIN, d, 16), 0);
    /* New calls in a minute already handed out: only the difference. */
    sl_history_add(h, 0, 2, T0 + MIN, 2);
    n = sl_history_unsent(h, 0, T0 + MIN, d, 16);
    assert_int_equal(n, 1);
    assert_int_equal(d[0].n, 2);
    sl_history_free(h);
}

static struct sl_history *shared;

static void *adder(void *arg)
{
    for (int i = 0; i < 10000; i++)
        sl_history_add(shared, 0, (uint16_t)(uintptr_t)arg, T0 + (i % 3) * MIN, 1);
    return NULL;
}

static void test_concurrent_adds_all_count(void **state)
{
    pthread_t t[4];
    struct sl_hist_slot out[SL_HIST_MINUTES];
    uint64_t total = 0;
    size_t n;
    (void)state;

    shared = sl_history_new(1);
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, adder, (void *)(uintptr_t)(2 + i));
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    n = sl_history_copy(shared, 0, T0 + 3 * MIN, out);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c <= SL_HIST_APPS; c++)
            total += out[i].n[c];
    assert_int_equal(total, 40000);
    sl_history_free(shared);
}

static void test_view_sort_and_merge(void **state)
{
    struct sl_hist_view v = {0};
    (void)state;

    /* A store's reply, minutes out of order. */
    assert_int_equal(sl_hist_view_add(&v, 20, "b", 2), 0);
    assert_int_equal(sl_hist_view_add(&v, 10, "a", 1), 0);
    assert_int_equal(sl_hist_view_add(&v, 10, "a", 4), 0);
    assert_int_equal(sl_hist_view_add(&v, 10, "zero", 0), 0);
    sl_hist_view_sort(&v);
    assert_int_equal(v.ncells, 2);
    assert_int_equal(v.nnames, 2);
    assert_int_equal(v.cells[0].minute, 10);
    assert_int_equal(v.cells[0].n, 5);
    assert_string_equal(v.names[v.cells[1].name], "b");
    sl_hist_view_clear(&v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_per_minute_and_app),
        cmocka_unit_test(test_bounded_memory),
        cmocka_unit_test(test_seventh_app_counts_as_other),
        cmocka_unit_test(test_old_minutes_leave_the_ring),
        cmocka_unit_test(test_unsent_hands_each_call_out_once),
        cmocka_unit_test(test_concurrent_adds_all_count),
        cmocka_unit_test(test_view_sort_and_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
