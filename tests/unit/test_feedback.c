/* Unit tests: reading the provider's usage reports and Retry-After. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <cmocka.h>

#include "sl_duration.h"
#include "sl_feedback.h"

#define S SL_USEC_PER_SEC

/* One response header for the lookups below. */
static const char *hname, *hvalue;

static const char *one_header(void *ctx, const char *name)
{
    (void)ctx;
    return hname != NULL && strcasecmp(name, hname) == 0 ? hvalue : NULL;
}

static long long remaining(enum sl_sync_kind k, const char *name, const char *value)
{
    hname = name;
    hvalue = value;
    return sl_feedback_remaining(k, one_header, NULL);
}

static void test_usage_reports(void **state)
{
    (void)state;
    assert_int_equal(remaining(SL_SYNC_SFORCE, "Sforce-Limit-Info", "api-usage=14990/15000"), 10);
    assert_int_equal(remaining(SL_SYNC_SFORCE, "sforce-limit-info",
                               "per-app-api-usage=1/10, api-usage=5/15000"), 14995);
    assert_int_equal(remaining(SL_SYNC_SFORCE, "Sforce-Limit-Info", "api-usage=16000/15000"), 0);
    assert_int_equal(remaining(SL_SYNC_SFORCE, "Sforce-Limit-Info", "per-app-api-usage=1/10"),
                     SL_FEEDBACK_MALFORMED);
    assert_int_equal(remaining(SL_SYNC_SFORCE, "Sforce-Limit-Info", "api-usage=x/15000"),
                     SL_FEEDBACK_MALFORMED);
    assert_int_equal(remaining(SL_SYNC_SFORCE, "Other", "api-usage=1/2"), SL_FEEDBACK_ABSENT);
    assert_int_equal(remaining(SL_SYNC_XRATELIMIT, "X-RateLimit-Remaining", "42"), 42);
    assert_int_equal(remaining(SL_SYNC_XRATELIMIT, "X-RateLimit-Remaining", " 0 "), 0);
    assert_int_equal(remaining(SL_SYNC_XRATELIMIT, "X-RateLimit-Remaining", "12abc"),
                     SL_FEEDBACK_MALFORMED);
    assert_int_equal(remaining(SL_SYNC_XRATELIMIT, "X-RateLimit-Remaining", "-3"),
                     SL_FEEDBACK_MALFORMED);
    assert_int_equal(remaining(SL_SYNC_XRATELIMIT, "X-RateLimit-Remaining",
                               "99999999999999999999999"), SL_FEEDBACK_MALFORMED);
    assert_int_equal(remaining(SL_SYNC_RATELIMIT, "RateLimit", "\"default\";r=7;t=30"), 7);
    assert_int_equal(remaining(SL_SYNC_RATELIMIT, "RateLimit",
                               "\"burst\";r=9;t=1, \"daily\";r=3;t=3600"), 3);
    assert_int_equal(remaining(SL_SYNC_RATELIMIT, "RateLimit", "\"x\";r=abc"),
                     SL_FEEDBACK_MALFORMED);
    assert_int_equal(remaining(SL_SYNC_RATELIMIT, "RateLimit-Remaining", "5"), 5);
    assert_int_equal(remaining(SL_SYNC_SHOPIFY, "X-Shopify-Shop-Api-Call-Limit", "32/40"), 8);
    assert_int_equal(remaining(SL_SYNC_SHOPIFY, "X-Shopify-Shop-Api-Call-Limit", "32-40"),
                     SL_FEEDBACK_MALFORMED);
    assert_int_equal(sl_feedback_ratelimit_r("\"a\";car=5;r=2"), 2);
}

static void test_retry_after(void **state)
{
    /* Sun, 06 Nov 1994 08:49:37 GMT */
    const time_t then = 784111777;
    (void)state;

    assert_int_equal(sl_feedback_retry_after_us("120", 0), 120 * S);
    assert_int_equal(sl_feedback_retry_after_us(" 0", 0), 0);
    assert_int_equal(sl_feedback_retry_after_us("86400000", 0),
                     (int64_t)SL_FEEDBACK_MAX_PAUSE_S * S);
    assert_int_equal(sl_feedback_retry_after_us("Sun, 06 Nov 1994 08:49:37 GMT", then - 30), 30 * S);
    assert_int_equal(sl_feedback_retry_after_us("Sunday, 06-Nov-94 08:49:37 GMT", then - 5), 5 * S);
    assert_int_equal(sl_feedback_retry_after_us("Sun Nov  6 08:49:37 1994", then - 1), 1 * S);
    assert_int_equal(sl_feedback_retry_after_us("Sun, 06 Nov 1994 08:49:37 GMT", then + 100), 0);
    assert_int_equal(sl_feedback_retry_after_us("soon", 0), -1);
    assert_int_equal(sl_feedback_retry_after_us("12s", 0), -1);
    assert_int_equal(sl_feedback_retry_after_us("-5", 0), -1);
    assert_int_equal(sl_feedback_retry_after_us(NULL, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_reports),
        cmocka_unit_test(test_retry_after),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
