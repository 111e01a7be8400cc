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

/* The response headers for the lookups below: NAME, VALUE pairs, NULL
 * ended (a name may repeat: a field sent as several lines). */
static const char *const *hdrs;

static const char *some_header(void *ctx, const char *name, unsigned nth)
{
    (void)ctx;
    for (const char *const *h = hdrs; h != NULL && h[0] != NULL; h += 2)
        if (strcasecmp(name, h[0]) == 0 && nth-- == 0)
            return h[1];
    return NULL;
}

static long long remaining(enum sl_sync_kind k, const char *name, const char *value)
{
    const char *one[] = {name, value, NULL};
    hdrs = one;
    return sl_feedback_remaining(k, some_header, NULL, NULL);
}

/* Over the headers H (pairs, NULL ended); *BAD: copies unreadable. */
static long long remaining_of(enum sl_sync_kind k, const char *const *h, unsigned *bad)
{
    hdrs = h;
    return sl_feedback_remaining(k, some_header, NULL, bad);
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

/* A field said twice, as two lines or comma-joined: the fewest calls left
 * wins, in every report kind, wherever the lower copy comes. */
static void test_repeated_reports_the_lowest_wins(void **state)
{
    unsigned bad;
    (void)state;

    {
        const char *h[] = {"Sforce-Limit-Info", "api-usage=10/15000",
                           "Sforce-Limit-Info", "api-usage=14990/15000", NULL};
        assert_int_equal(remaining_of(SL_SYNC_SFORCE, h, &bad), 10);
        assert_int_equal(bad, 0);
    }
    {
        const char *h[] = {"Sforce-Limit-Info",
                           "api-usage=14990/15000, per-app-api-usage=1/10, api-usage=10/15000",
                           NULL};
        assert_int_equal(remaining_of(SL_SYNC_SFORCE, h, &bad), 10);
    }
    {
        const char *h[] = {"Sforce-Limit-Info", "api-usage=10/15000, api-usage=14999/15000",
                           NULL};
        assert_int_equal(remaining_of(SL_SYNC_SFORCE, h, &bad), 1);
    }
    {
        const char *h[] = {"X-RateLimit-Remaining", "500", "x-ratelimit-remaining", "3", NULL};
        assert_int_equal(remaining_of(SL_SYNC_XRATELIMIT, h, &bad), 3);
    }
    {
        const char *h[] = {"X-RateLimit-Remaining", "3, 500", NULL};
        assert_int_equal(remaining_of(SL_SYNC_XRATELIMIT, h, &bad), 3);
        const char *h2[] = {"X-RateLimit-Remaining", "500 ,, 7 ", NULL};
        assert_int_equal(remaining_of(SL_SYNC_XRATELIMIT, h2, &bad), 7);
        assert_int_equal(bad, 0);
    }
    {
        const char *h[] = {"RateLimit", "\"a\";r=50;t=1", "RateLimit", "\"b\";r=4;t=60", NULL};
        assert_int_equal(remaining_of(SL_SYNC_RATELIMIT, h, &bad), 4);
        /* Both the draft's field and the older one: whichever says less. */
        const char *h2[] = {"RateLimit", "\"a\";r=50;t=1", "RateLimit-Remaining", "6", NULL};
        assert_int_equal(remaining_of(SL_SYNC_RATELIMIT, h2, &bad), 6);
        const char *h3[] = {"RateLimit-Remaining", "9", "RateLimit-Remaining", "2, 8", NULL};
        assert_int_equal(remaining_of(SL_SYNC_RATELIMIT, h3, &bad), 2);
    }
    {
        const char *h[] = {"X-Shopify-Shop-Api-Call-Limit", "1/40",
                           "X-Shopify-Shop-Api-Call-Limit", "39/40", NULL};
        assert_int_equal(remaining_of(SL_SYNC_SHOPIFY, h, &bad), 1);
        const char *h2[] = {"X-Shopify-Shop-Api-Call-Limit", "39/40, 1/40", NULL};
        assert_int_equal(remaining_of(SL_SYNC_SHOPIFY, h2, &bad), 1);
    }
}

/* An unreadable copy is skipped and counted, never guessed at; the
 * readable ones still count (they can only lower the room). */
static void test_an_unreadable_copy_is_counted_not_trusted(void **state)
{
    unsigned bad;
    (void)state;

    {
        const char *h[] = {"X-RateLimit-Remaining", "lots", "X-RateLimit-Remaining", "5", NULL};
        assert_int_equal(remaining_of(SL_SYNC_XRATELIMIT, h, &bad), 5);
        assert_int_equal(bad, 1);
    }
    {
        const char *h[] = {"X-RateLimit-Remaining", "5, x", NULL};
        assert_int_equal(remaining_of(SL_SYNC_XRATELIMIT, h, &bad), 5);
        assert_int_equal(bad, 1);
    }
    {
        const char *h[] = {"X-RateLimit-Remaining", "x", "X-RateLimit-Remaining", "", NULL};
        assert_int_equal(remaining_of(SL_SYNC_XRATELIMIT, h, &bad), SL_FEEDBACK_MALFORMED);
        assert_int_equal(bad, 2);
    }
    {
        const char *h[] = {"Sforce-Limit-Info", "per-app-api-usage=1/10",
                           "Sforce-Limit-Info", "api-usage=7/10", NULL};
        assert_int_equal(remaining_of(SL_SYNC_SFORCE, h, &bad), 3);
        assert_int_equal(bad, 1);
    }
    {
        const char *h[] = {"RateLimit", "\"x\";r=abc", "RateLimit", "\"y\";r=9", NULL};
        assert_int_equal(remaining_of(SL_SYNC_RATELIMIT, h, &bad), 9);
        assert_int_equal(bad, 1);
    }
    {
        const char *h[] = {"Other", "1", NULL};
        assert_int_equal(remaining_of(SL_SYNC_SHOPIFY, h, &bad), SL_FEEDBACK_ABSENT);
        assert_int_equal(bad, 0);
    }
}

static int64_t retry_after_of(const char *const *h, time_t now)
{
    hdrs = h;
    return sl_feedback_retry_after_all(some_header, NULL, now);
}

/* Two Retry-After: the longer wait, as two lines or comma-joined, with
 * dates (whose own commas are not separators) and seconds mixed. */
static void test_repeated_retry_after_the_longest_wins(void **state)
{
    const time_t then = 784111777;  /* Sun, 06 Nov 1994 08:49:37 GMT */
    (void)state;

    {
        const char *h[] = {"Retry-After", "5", "Retry-After", "120", NULL};
        assert_int_equal(retry_after_of(h, 0), 120 * S);
        const char *h2[] = {"Retry-After", "120", "retry-after", "5", NULL};
        assert_int_equal(retry_after_of(h2, 0), 120 * S);
    }
    assert_int_equal(sl_feedback_retry_after_us("5, 120", 0), 120 * S);
    assert_int_equal(sl_feedback_retry_after_us("120,5", 0), 120 * S);
    assert_int_equal(sl_feedback_retry_after_us("Sun, 06 Nov 1994 08:49:37 GMT, 5", then - 30),
                     30 * S);
    assert_int_equal(sl_feedback_retry_after_us("5, Sun, 06 Nov 1994 08:49:37 GMT", then - 30),
                     30 * S);
    assert_int_equal(sl_feedback_retry_after_us("60, Sun, 06 Nov 1994 08:49:37 GMT", then - 30),
                     60 * S);
    assert_int_equal(sl_feedback_retry_after_us(
                         "Sunday, 06-Nov-94 08:49:37 GMT, Sun Nov  6 08:49:38 1994", then - 5),
                     6 * S);
    /* Unreadable elements are skipped; none readable is -1. */
    assert_int_equal(sl_feedback_retry_after_us("soon, 7", 0), 7 * S);
    assert_int_equal(sl_feedback_retry_after_us("soon, later", 0), -1);
    assert_int_equal(sl_feedback_retry_after_us(" , ", 0), -1);
    {
        const char *h[] = {"Retry-After", "soon", "Retry-After", "9", NULL};
        assert_int_equal(retry_after_of(h, 0), 9 * S);
        const char *h2[] = {"Other", "9", NULL};
        assert_int_equal(retry_after_of(h2, 0), -1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_reports),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_repeated_reports_the_lowest_wins),
        cmocka_unit_test(test_an_unreadable_copy_is_counted_not_trusted),
        cmocka_unit_test(test_repeated_retry_after_the_longest_wins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
