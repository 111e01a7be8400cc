/* Unit tests: rule path patterns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sl_pattern.h"

static int m(const char *pat, const char *path)
{
    const char *err;
    struct sl_pattern *p = sl_pattern_compile(pat, &err);
    int r;

    assert_non_null(p);
    r = sl_pattern_match(p, path, strlen(path), NULL);
    sl_pattern_free(p);
    return r;
}

static void test_literal(void **state)
{
    (void)state;
    assert_true(m("/api/v2/login", "/api/v2/login"));
    assert_false(m("/api/v2/login", "/api/v2/login/"));
    assert_false(m("/api/v2/login", "/api/v2/logi"));
    assert_false(m("/api/v2/login", "/api/v2/loginx"));
}

static void test_star(void **state)
{
    (void)state;
    assert_true(m("/api/v2*/login", "/api/v2/login"));
    assert_true(m("/api/v2*/login", "/api/v2.1/login"));
    assert_false(m("/api/v2*/login", "/api/v2/x/login"));
    assert_true(m("/files/*.json", "/files/a.json"));
    assert_false(m("/files/*.json", "/files/a/b.json"));
    assert_true(m("/a/*", "/a/"));
    assert_false(m("/a/*", "/a/b/c"));
}

static void test_double_star(void **state)
{
    (void)state;
    assert_true(m("/a/**", "/a/b/c/d"));
    assert_true(m("/a/**", "/a/"));
    assert_true(m("/a/**", "/a"));      /* trailing "/" "**" also matches the bare path */
    assert_false(m("/a/**", "/ab"));
    assert_true(m("/**/end", "/x/y/end"));
    assert_true(m("/**", "/anything/at/all"));
    assert_true(m("/a/**/z", "/a/b/c/z"));
    assert_false(m("/a/**/z", "/a/b/c/y"));
}

static void test_captures(void **state)
{
    const char *err;
    struct sl_pattern *p;
    struct sl_capture caps[SL_PATTERN_MAX_CAPTURES];
    const char *path = "/api/v2.3/publisher/pub-7/lead-result/991";
    (void)state;

    p = sl_pattern_compile("/api/v2*/publisher/{publisher}/lead-result/{lead}", &err);
    assert_non_null(p);
    assert_true(sl_pattern_match(p, path, strlen(path), caps));
    assert_int_equal(sl_pattern_capture_index(p, "publisher"), 0);
    assert_int_equal(sl_pattern_capture_index(p, "lead"), 1);
    assert_int_equal(sl_pattern_capture_index(p, "nope"), -1);
    assert_int_equal(caps[0].len, 5);
    assert_memory_equal(caps[0].ptr, "pub-7", 5);
    assert_int_equal(caps[1].len, 3);
    assert_memory_equal(caps[1].ptr, "991", 3);
    /* A capture is one non-empty segment. */
    assert_false(sl_pattern_match(p, "/api/v2/publisher//lead-result/1", 32, caps));
    assert_false(sl_pattern_match(p, "/api/v2/publisher/a/b/lead-result/1", 35, caps));
    assert_string_equal(sl_pattern_text(p),
                        "/api/v2*/publisher/{publisher}/lead-result/{lead}");
    sl_pattern_free(p);
}

static void test_compile_errors(void **state)
{
    const char *err;
    (void)state;
    const char *bad[] = {"", "api", "/a/{x", "/a/x}", "/a/{}", "/a/{x}{y}",
                         "/a/b{x}", "/a/{x}/{x}", "/***", "/a/***", "/{a b}", "/a/*{x}",
                         "/*/*/*/*/*", NULL};
    for (int i = 0; bad[i]; i++) {
        assert_null(sl_pattern_compile(bad[i], &err));
        assert_non_null(err);
    }
}

static void test_adversarial_path_is_fast(void **state)
{
    static char path[8194];
    (void)state;
    /* "/a/a/a/.../a": every "/a" is a place a wildcard could stop. */
    for (size_t i = 0; i < 8192; i += 2) {
        path[i] = '/';
        path[i + 1] = 'a';
    }
    path[8192] = '\0';
    /* Four wildcards that can never all fit: must finish, and not match. */
    assert_false(m("/**/a/**/a/**/a/**/b", path));
    assert_true(m("/**/a/**/a/**/a/**", path));
    /* Over the length cap nothing matches. */
    path[8192] = 'a';
    path[8193] = '\0';
    assert_true(m("/**", "/x"));
    assert_false(m("/**", path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal),
        cmocka_unit_test(test_star),
        cmocka_unit_test(test_double_star),
        cmocka_unit_test(test_captures),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_adversarial_path_is_fast),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
