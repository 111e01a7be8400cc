/* Unit tests: the bounded set of app names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <pthread.h>
#include <string.h>
#include <cmocka.h>

#include "sl_apps.h"

static void test_ids_are_stable_and_bounded(void **state)
{
    struct sl_apps *a = sl_apps_new(3);
    (void)state;

    assert_non_null(a);
    assert_int_equal(sl_apps_id(a, NULL, 0), SL_APP_NONE);
    assert_int_equal(sl_apps_id(a, "", 0), SL_APP_NONE);
    assert_string_equal(sl_apps_name(a, SL_APP_NONE), "-");
    assert_string_equal(sl_apps_name(a, SL_APP_OTHER), "other");
    uint16_t billing = sl_apps_id(a, "billing", 7);
    assert_int_equal(billing, 2);
    assert_int_equal(sl_apps_id(a, "billing", 7), billing);
    assert_string_equal(sl_apps_name(a, billing), "billing");
    /* A prefix is another name. */
    assert_int_equal(sl_apps_id(a, "billing", 4), 3);
    assert_string_equal(sl_apps_name(a, 3), "bill");
    assert_int_equal(sl_apps_id(a, "sync", 4), 4);
    /* Past max_apps: "other", and known names keep their ids. */
    assert_int_equal(sl_apps_id(a, "late", 4), SL_APP_OTHER);
    assert_int_equal(sl_apps_id(a, "sync", 4), 4);
    assert_int_equal(sl_apps_count(a), 5);
    assert_string_equal(sl_apps_name(a, 999), "other");
    /* "-" and "other" as names are themselves. */
    assert_int_equal(sl_apps_id(a, "-", 1), SL_APP_NONE);
    assert_int_equal(sl_apps_id(a, "other", 5), SL_APP_OTHER);
    sl_apps_free(a);
}

static void test_invalid_names_count_as_other(void **state)
{
    struct sl_apps *a = sl_apps_new(100);
    char long_name[66];
    (void)state;

    memset(long_name, 'x', sizeof(long_name));
    assert_int_equal(sl_apps_id(a, long_name, 65), SL_APP_OTHER);
    assert_int_not_equal(sl_apps_id(a, long_name, 64), SL_APP_OTHER);
    assert_int_equal(sl_apps_id(a, "a b", 3), SL_APP_OTHER);
    assert_int_equal(sl_apps_id(a, "<b>", 3), SL_APP_OTHER);
    assert_int_equal(sl_apps_id(a, "a\"b", 3), SL_APP_OTHER);
    assert_int_equal(sl_apps_id(a, "a\0b", 3), SL_APP_OTHER);
    assert_int_equal(sl_apps_id(a, "caf\xc3\xa9", 5), SL_APP_OTHER);
    assert_int_not_equal(sl_apps_id(a, "svc-1.prod_eu:8080/x@y+z", 24), SL_APP_OTHER);
    assert_int_not_equal(sl_apps_id(a, "2001:db8::1", 11), SL_APP_OTHER);
    /* None of the refused ones took a slot. */
    assert_int_equal(sl_apps_count(a), 5);
    sl_apps_free(a);
}

static struct sl_apps *shared;

static void *adder(void *arg)
{
    char name[16];
    (void)arg;
    for (int round = 0; round < 200; round++)
        for (int i = 0; i < 50; i++) {
            int n = snprintf(name, sizeof(name), "app%d", i);
            uint16_t id = sl_apps_id(shared, name, (size_t)n);
            if (strcmp(sl_apps_name(shared, id), name) != 0)
                return (void *)1;
        }
    return NULL;
}

static void test_concurrent_adds_agree(void **state)
{
    pthread_t t[4];
    void *rc;
    (void)state;

    shared = sl_apps_new(50);
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, adder, NULL);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], &rc);
        assert_null(rc);
    }
    assert_int_equal(sl_apps_count(shared), 52);
    sl_apps_free(shared);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_are_stable_and_bounded),
        cmocka_unit_test(test_invalid_names_count_as_other),
        cmocka_unit_test(test_concurrent_adds_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
