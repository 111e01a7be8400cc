/* Unit tests: calendar periods in UTC, fixed offsets and zone files
 * (expected instants computed independently with Python's zoneinfo). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sl_calendar.h"

#define S INT64_C(1000000)

static struct sl_tz *tz(const char *name)
{
    char why[256] = "";
    struct sl_tz *z = sl_tz_load(name, NULL, why, sizeof(why));
    if (z == NULL)
        print_error("%s: %s\n", name, why);
    assert_non_null(z);
    return z;
}

static void period(const char *zone, int month, int64_t span_s, int64_t t,
                   int64_t want_start, int64_t want_end)
{
    struct sl_tz *z = tz(zone);
    struct sl_calendar cal = {.tz = z, .month = month, .span_s = span_s};
    int64_t s, e;

    sl_calendar_period(&cal, t * S + 123, &s, &e);
    assert_int_equal(s, want_start * S);
    assert_int_equal(e, want_end * S);
    sl_tz_free(z);
}

static void test_civil_days(void **state)
{
    int64_t y;
    unsigned m, d;
    (void)state;
    assert_int_equal(sl_days_from_civil(1970, 1, 1), 0);
    assert_int_equal(sl_days_from_civil(2026, 11, 24), 20781);
    assert_int_equal(sl_days_from_civil(2000, 3, 1), 11017);
    sl_civil_from_days(20781, &y, &m, &d);
    assert_true(y == 2026 && m == 11 && d == 24);
    sl_civil_from_days(-1, &y, &m, &d);
    assert_true(y == 1969 && m == 12 && d == 31);
}

static void test_utc_and_offsets(void **state)
{
    (void)state;
    /* 2026-11-24T15:03:00Z: the UTC day, then the day at +02:00. */
    period("UTC", 0, 86400, 1795532580, 1795478400, 1795478400 + 86400);
    period("+02:00", 0, 86400, 1795532580, 1795478400 - 7200, 1795478400 + 86400 - 7200);
    period("-05:30", 0, 86400, 1795532580, 1795478400 + 19800, 1795478400 + 86400 + 19800);
    /* An hour at +05:30 starts at :30 UTC: 15:03Z is local 20:33. */
    period("+05:30", 0, 3600, 1795532580, 1795530600, 1795534200);
}

static void test_zone_days_across_dst(void **state)
{
    (void)state;
    /* Berlin, 2026-03-29: 23 hours (CET to CEST at 02:00). */
    period("Europe/Berlin", 0, 86400, 1774785600, 1774738800, 1774821600);
    /* 2026-10-25: 25 hours. */
    period("Europe/Berlin", 0, 86400, 1792929600, 1792879200, 1792969200);
    /* Santiago skips midnight (00:00 -04 -> 01:00 -03) on 2026-09-06: the
     * day starts the instant the clocks jump, 04:00Z. */
    period("America/Santiago", 0, 86400, 1788696000, 1788667200, 1788750000);
}

static void test_months(void **state)
{
    (void)state;
    /* New York, March 2026: from EST midnight to EDT midnight. */
    period("America/New_York", 1, 0, 1773576000, 1772341200, 1775016000);
    /* December in UTC ends with the year. */
    period("UTC", 1, 0, 1796083200 + 86400 * 10, 1796083200, 1798761600);
}

static void test_posix_rule_past_the_table(void **state)
{
    struct sl_tz *z = tz("Europe/Berlin");
    (void)state;
    /* 2050-07-01 and 2050-01-01 (past a fat file's 2037 table). */
    assert_int_equal(sl_tz_offset(z, 2540246400), 7200);
    assert_int_equal(sl_tz_offset(z, 2524608000), 3600);
    sl_tz_free(z);
}

static void test_bad_zones(void **state)
{
    char why[256];
    static const char *const bad[] = {"Mars/Olympus", "../etc/passwd", "/etc/localtime",
                                      "+2", "+02:0", "+15:00", "02:00", "", "Europe//Berlin"};
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why[0] = '\0';
        assert_null(sl_tz_load(bad[i], NULL, why, sizeof(why)));
        assert_true(why[0] != '\0');
    }
    /* Not a zone file at all. */
    assert_null(sl_tz_parse((const unsigned char *)"TZif2 but short", 15, why, sizeof(why)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_civil_days),
        cmocka_unit_test(test_utc_and_offsets),
        cmocka_unit_test(test_zone_days_across_dst),
        cmocka_unit_test(test_months),
        cmocka_unit_test(test_posix_rule_past_the_table),
        cmocka_unit_test(test_bad_zones),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
