/*
 * Unit tests: what the admin listener's operator actions accept before
 * they reach the store (proxy/sl_admin_ops.c, included to reach its
 * statics).
 *
 * The actions live under /upstreams (and only there); only POST and
 * DELETE act.  A duration is written as in the configuration ("30s",
 * "10m", "2h") or as seconds, a number not below zero; anything else is
 * refused with one sentence saying what is expected.  A pause is described
 * to the operator with the time left, who set it and why.
 *
 * sl_admin_ops.c calls into the worker and the store from functions these
 * tests do not reach; the test is linked with unused sections dropped
 * (tests/CMakeLists.txt).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../proxy/sl_admin_ops.c"

static void test_action_paths_and_methods(void **state)
{
    (void)state;
    assert_true(sl_admin_op_path("/upstreams"));
    assert_true(sl_admin_op_path("/upstreams/crm/pause"));
    assert_true(sl_admin_op_path("/upstreams/"));
    assert_false(sl_admin_op_path("/upstreamsx"));
    assert_false(sl_admin_op_path("/upstream/crm/pause"));
    assert_false(sl_admin_op_path("/status"));
    assert_false(sl_admin_op_path("/"));
    assert_false(sl_admin_op_path(""));
    assert_true(sl_admin_op_method_ok("POST"));
    assert_true(sl_admin_op_method_ok("DELETE"));
    assert_false(sl_admin_op_method_ok("GET"));
    assert_false(sl_admin_op_method_ok("PUT"));
    assert_false(sl_admin_op_method_ok("post"));
}

/* The duration in V (JSON text), or -1 with the refusal's sentence. */
static int64_t duration(const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &err);
    int64_t us = -1;
    const char *why = NULL;

    assert_non_null(v);
    if (sl_op_duration(v, &us, &why) != 0) {
        assert_non_null(why);
        assert_non_null(strstr(why, "must be a duration such as \"30s\""));
        us = -1;
    }
    json_decref(v);
    return us;
}

static void test_durations_as_text_or_seconds(void **state)
{
    (void)state;
    assert_int_equal(duration("\"30s\""), 30 * SL_USEC_PER_SEC);
    assert_int_equal(duration("\"10m\""), 600 * SL_USEC_PER_SEC);
    assert_int_equal(duration("\"2h\""), 7200 * SL_USEC_PER_SEC);
    assert_int_equal(duration("\"250ms\""), 250000);
    assert_int_equal(duration("90"), 90 * SL_USEC_PER_SEC);
    assert_int_equal(duration("1.5"), 1500000);
    assert_int_equal(duration("0"), 0);
    /* Refused, with a sentence. */
    assert_int_equal(duration("-1"), -1);
    assert_int_equal(duration("\"soon\""), -1);
    assert_int_equal(duration("\"\""), -1);
    assert_int_equal(duration("null"), -1);
    assert_int_equal(duration("true"), -1);
    assert_int_equal(duration("[30]"), -1);
    assert_int_equal(duration("{\"s\": 30}"), -1);
}

static void test_a_pause_is_described(void **state)
{
    char buf[160];
    (void)state;

    sl_op_describe(buf, sizeof(buf), 604799900000, false, "status 429, Retry-After");
    assert_string_equal(buf, "604799.9s left, set by the provider (status 429, Retry-After)");
    sl_op_describe(buf, sizeof(buf), 30 * SL_USEC_PER_SEC, true, "maintenance");
    assert_string_equal(buf, "30.0s left, set by an operator (maintenance)");
    sl_op_describe(buf, sizeof(buf), 1500000, true, "");
    assert_string_equal(buf, "1.5s left, set by an operator (no reason given)");
    sl_op_describe(buf, sizeof(buf), 1500000, false, NULL);
    assert_string_equal(buf, "1.5s left, set by the provider (no reason given)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_action_paths_and_methods),
        cmocka_unit_test(test_durations_as_text_or_seconds),
        cmocka_unit_test(test_a_pause_is_described),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
