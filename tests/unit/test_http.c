/* Unit tests: HTTP grammar shared by configuration and proxy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sl_http.h"

static int length(const char *v, int64_t *out)
{
    return sl_http_content_length(v, strlen(v), out);
}

static void test_content_length(void **state)
{
    static const char *const bad[] = {"", " ", "5, 6", "5,5", "+5", "-5", "0x5",
                                      "5.0", "abc", "5 5", "9223372036854775808",
                                      "18446744073709551615", "99999999999999999999"};
    int64_t n = -1;
    (void)state;

    assert_int_equal(length("0", &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(length(" 42\t", &n), 0);
    assert_int_equal(n, 42);
    assert_int_equal(length("9223372036854775807", &n), 0);
    assert_int_equal(n, INT64_MAX);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(length(bad[i], &n), -1);
    /* Only the N bytes given count. */
    assert_int_equal(sl_http_content_length("12abc", 2, &n), 0);
    assert_int_equal(n, 12);
}

static void test_tchar(void **state)
{
    (void)state;
    for (const char *c = "azAZ09!#$%&'*+-.^_`|~"; *c; c++)
        assert_true(sl_http_tchar((unsigned char)*c));
    for (const char *c = " \t\"(),/:;<=>?@[\\]{}"; *c; c++)
        assert_false(sl_http_tchar((unsigned char)*c));
    assert_false(sl_http_tchar(0));
    assert_false(sl_http_tchar(0x7f));
    assert_false(sl_http_tchar(0xc3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_tchar),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
