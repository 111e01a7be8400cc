/* Unit tests: duration and size parsing, duration printing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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
    assert_int_equal(sl_duration_parse("0s", &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(sl_duration_parse("007s", &d), 0);
    assert_int_equal(d, 7 * SL_USEC_PER_SEC);
}

/* Fractions are exact, whatever their length, and never overflow. */
static void test_fractions_exact(void **state)
{
    int64_t d;
    (void)state;
    /* Used to overflow int64 (frac * 86400e6 with 9 digits): UBSan. */
    assert_int_equal(sl_duration_parse("0.250000000d", &d), 0);
    assert_int_equal(d, INT64_C(21600000000));
    assert_int_equal(sl_duration_parse("0.25d", &d), 0);
    assert_int_equal(d, INT64_C(21600000000));
    /* 0.123456789 * 86400e6 = 10666666569.6 exactly: rounds to ...570. */
    assert_int_equal(sl_duration_parse("0.123456789d", &d), 0);
    assert_int_equal(d, INT64_C(10666666570));
    /* Digits past the tenth stopped counting before; now they all do. */
    assert_int_equal(sl_duration_parse("0.1234567891234s", &d), 0);
    assert_int_equal(d, 123457);
    assert_int_equal(sl_duration_parse("1.99999999999999999999999999999999s", &d), 0);
    assert_int_equal(d, 2 * SL_USEC_PER_SEC);
    assert_int_equal(sl_duration_parse("0.000000499999999999999999999999s", &d), 0);
    assert_int_equal(d, 0);
    /* Halves round up. */
    assert_int_equal(sl_duration_parse("0.0000005s", &d), 0);
    assert_int_equal(d, 1);
    assert_int_equal(sl_duration_parse("0.0005ms", &d), 0);
    assert_int_equal(d, 1);
    assert_int_equal(sl_duration_parse("0.0004999ms", &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(sl_duration_parse("1.0000000000000000000000000000000000000000000001d", &d), 0);
    assert_int_equal(d, 86400 * SL_USEC_PER_SEC);
    /* One third of a day has no exact microsecond count: nearest. */
    assert_int_equal(sl_duration_parse("0.333333333333333333d", &d), 0);
    assert_int_equal(d, INT64_C(28800000000));
    assert_int_equal(sl_duration_parse("1.5h", &d), 0);
    assert_int_equal(d, 5400 * SL_USEC_PER_SEC);
    assert_int_equal(sl_duration_parse("0.001ms", &d), 0);
    assert_int_equal(d, 1);
    /* A thousand fractional digits. */
    char longfrac[1100] = "0.";
    memset(longfrac + 2, '9', 1000);
    strcpy(longfrac + 1002, "d");
    assert_int_equal(sl_duration_parse(longfrac, &d), 0);
    assert_int_equal(d, 86400 * SL_USEC_PER_SEC);
}

static void test_too_large(void **state)
{
    int64_t d;
    (void)state;
    /* 2^53 us is the bound; just above it is "too long", not garbage. */
    assert_int_equal(sl_duration_parse("9007199254740.993ms", &d), -2);
    assert_int_equal(sl_duration_parse("9007199254.740992s", &d), 0);
    assert_int_equal(d, SL_DURATION_MAX);
    assert_int_equal(sl_duration_parse("9007199254.7409921s", &d), 0);  /* rounds down */
    assert_int_equal(d, SL_DURATION_MAX);
    assert_int_equal(sl_duration_parse("9007199254.7409925s", &d), -2); /* rounds up */
    assert_int_equal(sl_duration_parse("104249d", &d), 0);
    assert_int_equal(sl_duration_parse("104250d", &d), -2);
    assert_int_equal(sl_duration_parse("99999999999999999999d", &d), -2);
    assert_int_equal(sl_duration_parse("99999999999999999999999999999999999999ms", &d), -2);
    assert_int_equal(sl_duration_parse("9223372036854775807s", &d), -2);
    assert_int_equal(sl_duration_parse("18446744073709551616d", &d), -2);
}

static void test_rejects(void **state)
{
    int64_t d;
    (void)state;
    const char *bad[] = {"", "5x", "s", "5", "-5s", "-1s", "+1s", "5 s", " 5s",
                         "5s ", "5S", "5Ms", "1.s5", ".s", "1e3s", "1E3s", "1.s",
                         ".5s", "1..5s", "1.5.5s", "0x10s", "5sec", "5ss",
                         "1,5s", "\xef\xbc\x95s", "inf s", "nans", NULL};
    for (int i = 0; bad[i]; i++) {
        print_message("%s\n", bad[i]);
        assert_int_equal(sl_duration_parse(bad[i], &d), -1);
    }
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

/* Seconds as JSON numbers: read as the decimal that was written. */
static void test_seconds_exact(void **state)
{
    int64_t d;
    (void)state;
    assert_int_equal(sl_duration_from_seconds(0.1, &d), 0);
    assert_int_equal(d, 100000);
    assert_int_equal(sl_duration_from_seconds(0.3, &d), 0);
    assert_int_equal(d, 300000);
    assert_int_equal(sl_duration_from_seconds(1.000001, &d), 0);
    assert_int_equal(d, 1000001);
    /* 4.35 * 1e6 is 4349999.999999999 in doubles. */
    assert_int_equal(sl_duration_from_seconds(4.35, &d), 0);
    assert_int_equal(d, 4350000);
    assert_int_equal(sl_duration_from_seconds(0.0000005, &d), 0);
    assert_int_equal(d, 1);
    assert_int_equal(sl_duration_from_seconds(0.0000004, &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(sl_duration_from_seconds(1e-300, &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(sl_duration_from_seconds(5e-324, &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(sl_duration_from_seconds(86400 * 366.0, &d), 0);
    assert_int_equal(d, INT64_C(31622400000000));
    assert_int_equal(sl_duration_from_seconds(1e3, &d), 0);
    assert_int_equal(d, 1000 * SL_USEC_PER_SEC);
    assert_int_equal(sl_duration_from_seconds(9007199254.740992, &d), 0);
    assert_int_equal(d, SL_DURATION_MAX);
    assert_int_equal(sl_duration_from_seconds(9007199254.741, &d), -1);
    assert_int_equal(sl_duration_from_seconds(-1.5, &d), 0);
    assert_int_equal(d, -1500000);
    assert_int_equal(sl_duration_from_seconds(-0.0, &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(sl_duration_from_seconds(-1e300, &d), -1);
    assert_int_equal(sl_duration_from_seconds(INFINITY, &d), -1);
    assert_int_equal(sl_duration_from_seconds(NAN, &d), -1);
    assert_int_equal(sl_duration_from_seconds(9.2233720368547758e18, &d), -1);
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
    assert_int_equal(sl_size_parse("1.5k", &s), 0);
    assert_int_equal(s, 1536);
    assert_int_equal(sl_size_parse("0.0001k", &s), 0);  /* 0.1024 bytes */
    assert_int_equal(s, 0);
    assert_int_equal(sl_size_parse("12 MB", &s), -1);
    assert_int_equal(sl_size_parse("lots", &s), -1);
    assert_int_equal(sl_size_parse(".5g", &s), -1);
    assert_int_equal(sl_size_parse("99999999999999999999g", &s), -2);
}

static void expect_format(int64_t us, const char *want)
{
    char buf[SL_DURATION_FORMAT_MAX];
    int n = sl_duration_format(us, buf, sizeof(buf));

    print_message("%lld -> %s (want %s)\n", (long long)us, buf, want);
    assert_string_equal(buf, want);
    assert_int_equal(n, (int)strlen(want));
}

static void test_format(void **state)
{
    (void)state;
    expect_format(0, "0s");
    expect_format(1, "0.001ms");
    expect_format(999, "0.999ms");
    expect_format(1000, "1ms");
    expect_format(1500, "1.5ms");
    expect_format(100000, "100ms");            /* not "0.1s" */
    expect_format(250000, "250ms");
    expect_format(1500000, "1.5s");
    expect_format(10 * SL_USEC_PER_SEC, "10s");
    expect_format(90 * SL_USEC_PER_SEC, "90s");        /* not "1.5m" */
    expect_format(300 * SL_USEC_PER_SEC, "5m");
    expect_format(5400 * SL_USEC_PER_SEC, "90m");
    expect_format(86400 * SL_USEC_PER_SEC, "1d");      /* was "8.64e+04s" */
    expect_format(36 * 3600 * SL_USEC_PER_SEC, "36h");
    expect_format(7 * 86400 * SL_USEC_PER_SEC, "7d");
    expect_format(INT64_C(21600000000), "6h");
    expect_format(INT64_C(10666666570), "10666.66657s");
    expect_format(3600 * SL_USEC_PER_SEC + 1, "3600.000001s");
    expect_format(60 * SL_USEC_PER_SEC + 500, "60.0005s");
    expect_format(-1500000, "-1.5s");
    expect_format(SL_DURATION_MAX, "9007199254.740992s");
    expect_format(INT64_MAX, "9223372036854.775807s");
    expect_format(INT64_MIN, "-9223372036854.775808s");
}

static void test_format_buffer(void **state)
{
    char buf[8];
    (void)state;
    assert_int_equal(sl_duration_format(250000, buf, 6), 5);
    assert_string_equal(buf, "250ms");
    assert_int_equal(sl_duration_format(250000, buf, 5), -1);
    assert_string_equal(buf, "");
    assert_int_equal(sl_duration_format(250000, NULL, 0), -1);
}

/* format then parse gives the same microseconds back. */
static void test_format_round_trip(void **state)
{
    char buf[SL_DURATION_FORMAT_MAX];
    uint64_t x = 0x9e3779b97f4a7c15u;
    (void)state;
    for (int i = 0; i < 200000; i++) {
        int64_t us, back;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* Every magnitude up to 2^53, and round values often. */
        us = (int64_t)(x >> (11 + x % 53));
        if (i % 3 == 0)
            us -= us % (i % 2 ? SL_USEC_PER_SEC : SL_USEC_PER_MSEC);
        assert_true(sl_duration_format(us, buf, sizeof(buf)) > 0);
        assert_int_equal(sl_duration_parse(buf, &back), 0);
        assert_int_equal(back, us);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_fractions_exact),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_seconds_and_ceil),
        cmocka_unit_test(test_seconds_exact),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_buffer),
        cmocka_unit_test(test_format_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
