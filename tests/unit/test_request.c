/*
 * Unit tests: routing and request ids (proxy/sl_request.c, included to
 * reach its statics).
 *
 * Routing picks the upstream whose prefix is the longest that matches the
 * path at a '/' boundary ("/crm" takes "/crm" and "/crm/x", never
 * "/crmx"); an upstream at "/" takes what no other prefix does.  The
 * caller hands it the canonical path without the query.  A request id
 * the client sent is kept only if it is 1 to 64 of [A-Za-z0-9._:-] (it is
 * written into the access log and a response header); otherwise sluice
 * makes one of 32 hex digits, different each time.
 *
 * sl_request.c calls into the rest of the proxy (the worker, the relay,
 * the queue); the functions tested here do not, and the test is linked
 * with unused sections dropped (tests/CMakeLists.txt) so that those calls
 * need no definitions.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../proxy/sl_request.c"

static struct sl_config *parse(const char *text)
{
    struct sl_errors e = {0};
    struct sl_config *c = NULL;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    assert_int_equal(e.count, 0);
    return c;
}

/* The name of the upstream PATH routes to, or "-" for none. */
static const char *route(const struct sl_config *c, const char *path)
{
    const struct sl_upstream_conf *u = sl_route(c, path, strlen(path));

    return u != NULL ? u->name : "-";
}

#define UP(name, prefix) \
    "{\"name\": \"" name "\", \"prefix\": \"" prefix "\", \"url\": \"http://127.0.0.1:1\"}"

static void test_prefix_matches_at_a_slash_boundary(void **state)
{
    struct sl_config *c = parse("{\"upstreams\": [" UP("crm", "/crm") "," UP("leads", "/leads") "]}");
    (void)state;

    assert_string_equal(route(c, "/crm"), "crm");
    assert_string_equal(route(c, "/crm/"), "crm");
    assert_string_equal(route(c, "/crm/api/v2/x"), "crm");
    assert_string_equal(route(c, "/leads/x"), "leads");
    /* Not at a boundary, shorter, or elsewhere: no upstream. */
    assert_string_equal(route(c, "/crmx"), "-");
    assert_string_equal(route(c, "/crm.x/y"), "-");
    assert_string_equal(route(c, "/cr"), "-");
    assert_string_equal(route(c, "/"), "-");
    assert_string_equal(route(c, ""), "-");
    assert_string_equal(route(c, "/other/crm"), "-");
    /* Case counts: paths are case-sensitive. */
    assert_string_equal(route(c, "/CRM/x"), "-");
    sl_config_free(c);
}

static void test_longest_prefix_wins_whatever_the_order(void **state)
{
    struct sl_config *a = parse("{\"upstreams\": [" UP("crm", "/crm") "," UP("crm-v2", "/crm/v2") "]}");
    struct sl_config *b = parse("{\"upstreams\": [" UP("crm-v2", "/crm/v2") "," UP("crm", "/crm") "]}");
    (void)state;

    for (int i = 0; i < 2; i++) {
        const struct sl_config *c = i == 0 ? a : b;
        assert_string_equal(route(c, "/crm/v2"), "crm-v2");
        assert_string_equal(route(c, "/crm/v2/leads"), "crm-v2");
        assert_string_equal(route(c, "/crm/v2x"), "crm");
        assert_string_equal(route(c, "/crm/v1/leads"), "crm");
        assert_string_equal(route(c, "/crm"), "crm");
    }
    sl_config_free(a);
    sl_config_free(b);
}

static void test_root_prefix_takes_the_rest(void **state)
{
    struct sl_config *a = parse("{\"upstreams\": [" UP("all", "/") "," UP("crm", "/crm") "]}");
    struct sl_config *b = parse("{\"upstreams\": [" UP("crm", "/crm") "," UP("all", "/") "]}");
    (void)state;

    for (int i = 0; i < 2; i++) {
        const struct sl_config *c = i == 0 ? a : b;
        assert_string_equal(route(c, "/crm/x"), "crm");
        assert_string_equal(route(c, "/crmx"), "all");
        assert_string_equal(route(c, "/"), "all");
        assert_string_equal(route(c, "/anything/else"), "all");
    }
    sl_config_free(a);
    sl_config_free(b);
}

static void test_route_reads_only_len_bytes(void **state)
{
    struct sl_config *c = parse("{\"upstreams\": [" UP("crm", "/crm") "]}");
    (void)state;

    /* The query is not part of the path the caller passes. */
    assert_string_equal(sl_route(c, "/crm?x=/", 4)->name, "crm");
    assert_null(sl_route(c, "/crmx", 5));
    assert_string_equal(sl_route(c, "/crmx", 4)->name, "crm");
    sl_config_free(c);
}

/* ---- request ids ---- */

static void test_request_id_accepted_characters(void **state)
{
    char longest[65], too_long[66];
    (void)state;

    assert_true(sl_req_id_ok("a"));
    assert_true(sl_req_id_ok("8c5bba7bf3e30df404b6baff289ff6ec"));
    assert_true(sl_req_id_ok("req-1.2_3:4"));
    assert_true(sl_req_id_ok("ABCxyz0189"));
    memset(longest, 'x', 64);
    longest[64] = '\0';
    assert_true(sl_req_id_ok(longest));
    memset(too_long, 'x', 65);
    too_long[65] = '\0';
    assert_false(sl_req_id_ok(too_long));
    assert_false(sl_req_id_ok(""));
    /* Nothing that could split a log line or a header, or quote. */
    assert_false(sl_req_id_ok("a b"));
    assert_false(sl_req_id_ok("a\tb"));
    assert_false(sl_req_id_ok("a\r\nX-Injected: 1"));
    assert_false(sl_req_id_ok("id=1"));
    assert_false(sl_req_id_ok("\"quoted\""));
    assert_false(sl_req_id_ok("a/b"));
    assert_false(sl_req_id_ok("caf\xc3\xa9"));
}

static void test_made_request_ids_are_hex_and_differ(void **state)
{
    char a[33], b[33];
    (void)state;

    sl_req_make_id(a);
    sl_req_make_id(b);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strlen(b), 32);
    assert_int_equal(strspn(a, "0123456789abcdef"), 32);
    assert_int_equal(strspn(b, "0123456789abcdef"), 32);
    assert_string_not_equal(a, b);
    /* What sluice makes, it would also keep from a client. */
    assert_true(sl_req_id_ok(a));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_matches_at_a_slash_boundary),
        cmocka_unit_test(test_longest_prefix_wins_whatever_the_order),
        cmocka_unit_test(test_root_prefix_takes_the_rest),
        cmocka_unit_test(test_route_reads_only_len_bytes),
        cmocka_unit_test(test_request_id_accepted_characters),
        cmocka_unit_test(test_made_request_ids_are_hex_and_differ),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
