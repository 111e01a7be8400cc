/* Unit tests: duration and size parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "sl_duration.h"

static void test_units(void **state)
{
    int64_t d;
    (void)state;
    assert_int_equal(sl_duration_parse("250ms", &d), 0);
    assert_int_equal(d, 250000);
    assert_int_equal(sl_duration_parse("10s", &d), 0);
    assert_int_equal(d, 10000000);
    assert_int_equal(sl_duration_parse("5m", &d), 0);
    assert_int_equal(d, 300 * SL_USEC_PER_SEC);
    assert_int_equal(sl_duration_parse("24h", &d), 0);
    assert_int_equal(d, 86400 * SL_USEC_PER_SEC);
    assert_int_equal(sl_duration_parse("1d", &d), 0);
    assert_int_equal(d, 86400 * SL_USEC_PER_SEC);
    assert_int_equal(sl_duration_parse("1.5s", &d), 0);
    assert_int_equal(d, 1500000);
    assert_int_equal(sl_duration_parse("0.1s", &d), 0);
    assert_int_equal(d, 100000);
}

static void test_rejects(void **state)
{
    int64_t d;
    (void)state;
    const char *bad[] = {"", "5x", "s", "5", "-5s", "5 s", "5S", "1.s5", ".s",
                         "99999999999999999999d", NULL};
    for (int i = 0; bad[i]; i++)
        assert_int_equal(sl_duration_parse(bad[i], &d), -1);
    assert_int_equal(sl_duration_parse(NULL, &d), -1);
}

static void test_seconds_and_ceil(void **state)
{
    int64_t d;
    (void)state;
    assert_int_equal(sl_duration_from_seconds(300, &d), 0);
    assert_int_equal(d, 300 * SL_USEC_PER_SEC);
    assert_int_equal(sl_duration_from_seconds(0.25, &d), 0);
    assert_int_equal(d, 250000);
    assert_int_equal(sl_duration_from_seconds(1e300, &d), -1);
    assert_int_equal(sl_duration_ceil_seconds(1), 1);
    assert_int_equal(sl_duration_ceil_seconds(1000000), 1);
    assert_int_equal(sl_duration_ceil_seconds(1000001), 2);
    assert_int_equal(sl_duration_ceil_seconds(0), 0);
    assert_int_equal(sl_duration_ceil_seconds(-5), 0);
}

static void test_sizes(void **state)
{
    uint64_t s;
    (void)state;
    assert_int_equal(sl_size_parse("65536", &s), 0);
    assert_int_equal(s, 65536);
    assert_int_equal(sl_size_parse("64KB", &s), 0);
    assert_int_equal(s, 65536);
    assert_int_equal(sl_size_parse("16m", &s), 0);
    assert_int_equal(s, 16u << 20);
    assert_int_equal(sl_size_parse("1GiB", &s), 0);
    assert_int_equal(s, 1u << 30);
    assert_int_equal(sl_size_parse("12 MB", &s), -1);
    assert_int_equal(sl_size_parse("lots", &s), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_seconds_and_ceil),
        cmocka_unit_test(test_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
