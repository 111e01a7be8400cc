/* Unit tests: the growable buffer (common/sl_buf.c).  The .c is included
 * so that realloc can be made to fail on request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

/* realloc fails once this many more calls have succeeded (-1: never). */
static int realloc_left = -1;

static void *flaky_realloc(void *p, size_t n)
{
    if (realloc_left == 0)
        return NULL;
    if (realloc_left > 0)
        realloc_left--;
    return realloc(p, n);
}

#define realloc flaky_realloc
#include "../../common/sl_buf.c"
#undef realloc

static void test_add_and_take(void **state)
{
    struct sl_buf b;
    size_t len = 99;
    char *s;
    (void)state;

    sl_buf_init(&b, SL_BUF_UNCAPPED);
    assert_string_equal(sl_buf_str(&b), "");
    assert_int_equal(sl_buf_len(&b), 0);
    assert_int_equal(sl_buf_add(&b, "ab", 2), 0);
    assert_int_equal(sl_buf_adds(&b, "cd"), 0);
    assert_int_equal(sl_buf_add(&b, "", 0), 0);
    assert_string_equal(sl_buf_str(&b), "abcd");
    assert_int_equal(sl_buf_len(&b), 4);
    s = sl_buf_take(&b, &len);
    assert_non_null(s);
    assert_string_equal(s, "abcd");
    assert_int_equal(len, 4);
    free(s);
    /* Left empty and usable. */
    assert_int_equal(sl_buf_len(&b), 0);
    assert_null(sl_buf_take(&b, &len));
    assert_int_equal(len, 0);
    assert_int_equal(sl_buf_adds(&b, "x"), 0);
    assert_string_equal(sl_buf_str(&b), "x");
    sl_buf_free(&b);

    /* A zeroed buffer is an empty uncapped one. */
    memset(&b, 0, sizeof(b));
    assert_int_equal(sl_buf_printf(&b, "%s", "zero"), 0);
    assert_string_equal(sl_buf_str(&b), "zero");
    sl_buf_free(&b);
}

/* Binary bytes (NULs inside) are kept as they are, a NUL after them. */
static void test_binary(void **state)
{
    static const char bytes[] = {'a', '\0', 'b', '\0'};
    struct sl_buf b;
    (void)state;

    sl_buf_init(&b, SL_BUF_UNCAPPED);
    assert_int_equal(sl_buf_add(&b, bytes, sizeof(bytes)), 0);
    assert_int_equal(sl_buf_len(&b), 4);
    assert_memory_equal(b.data, bytes, 4);
    assert_int_equal(b.data[4], '\0');
    sl_buf_free(&b);
}

/* printf output that fits the room left, and output that needs growth:
 * both land whole, in order. */
static void test_printf_grows(void **state)
{
    struct sl_buf b;
    char want[64];
    (void)state;

    sl_buf_init(&b, SL_BUF_UNCAPPED);
    for (int i = 0; i < 5000; i++)
        assert_int_equal(sl_buf_printf(&b, "line %d\n", i), 0);
    assert_int_equal(sl_buf_result(&b), 0);
    assert_true(b.cap > SL_BUF_FIRST);
    assert_memory_equal(sl_buf_str(&b), "line 0\nline 1\n", 14);
    snprintf(want, sizeof(want), "line %d\n", 4999);
    assert_string_equal(sl_buf_str(&b) + sl_buf_len(&b) - strlen(want), want);
    /* One piece much longer than the first allocation. */
    sl_buf_reset(&b);
    assert_int_equal(sl_buf_printf(&b, "%2000s|", "x"), 0);
    assert_int_equal(sl_buf_len(&b), 2001);
    assert_int_equal(sl_buf_str(&b)[1999], 'x');
    assert_int_equal(sl_buf_str(&b)[2000], '|');
    sl_buf_free(&b);
}

/* Passing the cap fails the buffer for good: later appends, even small
 * ones, do nothing, and the result says why. */
static void test_cap_is_sticky(void **state)
{
    struct sl_buf b;
    (void)state;

    sl_buf_init(&b, 8);
    assert_int_equal(sl_buf_adds(&b, "12345678"), 0);  /* exactly the cap */
    assert_int_equal(sl_buf_len(&b), 8);
    assert_int_equal(sl_buf_adds(&b, "9"), SL_BUF_TOOBIG);
    assert_int_equal(sl_buf_adds(&b, ""), SL_BUF_TOOBIG);
    assert_int_equal(sl_buf_printf(&b, "%d", 1), SL_BUF_TOOBIG);
    assert_int_equal(sl_buf_result(&b), SL_BUF_TOOBIG);
    assert_int_equal(sl_buf_len(&b), 0);
    assert_null(sl_buf_take(&b, NULL));
    /* take clears the failure, as reset does. */
    assert_int_equal(sl_buf_adds(&b, "ok"), 0);
    sl_buf_free(&b);

    sl_buf_init(&b, 8);
    assert_int_equal(sl_buf_printf(&b, "%s", "123456789"), SL_BUF_TOOBIG);
    sl_buf_reset(&b);
    assert_int_equal(sl_buf_result(&b), 0);
    assert_int_equal(sl_buf_printf(&b, "%s", "1234"), 0);
    assert_int_equal(sl_buf_printf(&b, "%s", "56789"), SL_BUF_TOOBIG);
    sl_buf_free(&b);
}

/* An allocation failure is sticky too, and frees what was held. */
static void test_nomem_is_sticky(void **state)
{
    struct sl_buf b;
    (void)state;

    sl_buf_init(&b, SL_BUF_UNCAPPED);
    realloc_left = 1;
    assert_int_equal(sl_buf_adds(&b, "first"), 0);
    assert_int_equal(sl_buf_printf(&b, "%300s", "grow"), SL_BUF_NOMEM);
    realloc_left = -1;
    assert_int_equal(sl_buf_adds(&b, "after"), SL_BUF_NOMEM);
    assert_int_equal(sl_buf_result(&b), SL_BUF_NOMEM);
    assert_null(b.data);
    assert_string_equal(sl_buf_str(&b), "");
    assert_null(sl_buf_take(&b, NULL));
    sl_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_and_take),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_printf_grows),
        cmocka_unit_test(test_cap_is_sticky),
        cmocka_unit_test(test_nomem_is_sticky),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
