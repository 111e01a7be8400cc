/*
 * Unit tests: the answers sluice writes itself and its header rules
 * (proxy/sl_respond.c, included to reach its statics).
 *
 * A refusal is what a client sees of a limit: its status comes from the
 * caller, but Retry-After, RateLimit-Policy / RateLimit and the body are
 * made here, from the configuration and the decision alone.  The reject
 * template is filled by sl_render_reject (names replaced by JSON-escaped
 * values, "{{" and "}}" as braces); the JSON body itself is jansson's and
 * is checked through the binary (tests/integration/test_limits.py).  The
 * hop-by-hop rules decide which headers never cross the proxy, in either
 * direction.  Configurations are parsed from JSON as the binary does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../proxy/sl_respond.c"

/* A configuration parsed from TEXT; fails the test if it does not parse. */
static struct sl_config *parse(const char *text)
{
    struct sl_errors e = {0};
    struct sl_config *c = NULL;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    assert_int_equal(e.count, 0);
    return c;
}

/* ---- Retry-After ---- */

static void test_retry_after_rounds_up_and_is_at_least_one(void **state)
{
    (void)state;
    assert_int_equal(sl_retry_after(0), 1);
    assert_int_equal(sl_retry_after(1), 1);
    assert_int_equal(sl_retry_after(SL_USEC_PER_SEC), 1);
    assert_int_equal(sl_retry_after(SL_USEC_PER_SEC + 1), 2);
    assert_int_equal(sl_retry_after(30 * SL_USEC_PER_SEC + 100000), 31);
}

static void test_retry_after_is_bounded_by_max_retry_after(void **state)
{
    struct sl_config *c = parse(
        "{\"max_retry_after\": \"90m\", \"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\","
        " \"url\": \"http://127.0.0.1:1\"}]}");
    (void)state;

    assert_int_equal(sl_retry_after_bounded(c, 86400 * SL_USEC_PER_SEC), 5400);
    assert_int_equal(sl_retry_after_bounded(c, 10 * SL_USEC_PER_SEC), 10);
    assert_int_equal(sl_retry_after_bounded(c, 5400 * SL_USEC_PER_SEC + 1), 5400);
    sl_config_free(c);

    /* 0: no bound, the honest day-long wait. */
    c = parse("{\"max_retry_after\": 0, \"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\","
              " \"url\": \"http://127.0.0.1:1\"}]}");
    assert_int_equal(sl_retry_after_bounded(c, 86400 * SL_USEC_PER_SEC), 86400);
    sl_config_free(c);
}

/* ---- the reject template ---- */

static const char *const names[] = {"upstream", "rule", "limit", "window"};

static void render_is(const char *tpl, const char *const *values, const char *want)
{
    char *got = sl_render_reject(tpl, names, values, 4);

    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void test_template_names_are_replaced(void **state)
{
    const char *const v[] = {"crm", "daily", "15000", "86400"};
    (void)state;

    render_is("{\"u\":\"{upstream}\",\"r\":\"{rule}\",\"l\":{limit},\"w\":{window}}", v,
              "{\"u\":\"crm\",\"r\":\"daily\",\"l\":15000,\"w\":86400}");
    /* A name may repeat, and text around it is kept. */
    render_is("{rule}/{rule} of {upstream}", v, "daily/daily of crm");
    render_is("", v, "");
    render_is("no names at all", v, "no names at all");
}

static void test_template_double_braces_are_literal(void **state)
{
    const char *const v[] = {"crm", "daily", "1", "1"};
    (void)state;

    /* "{{" and "}}" are one brace each, and "{{rule}}" is not the name. */
    render_is("{{\"a\":{limit}}}", v, "{\"a\":1}");
    render_is("{{rule}}", v, "{rule}");
}

static void test_template_unknown_and_unclosed_names_stay(void **state)
{
    const char *const v[] = {"crm", "daily", "1", "1"};
    (void)state;

    /* The configuration refuses unknown names; the renderer still never
     * drops text it does not know. */
    render_is("{nope} {rule", v, "{nope} {rule");
    render_is("{ruler}", v, "{ruler}");
    render_is("{", v, "{");
    render_is("}", v, "}");
}

static void test_template_values_are_json_escaped(void **state)
{
    const char *const v[] = {"a\"b\\c", "line\nbreak\ttab", "1", "\x01"};
    (void)state;

    render_is("\"{upstream}\"", v, "\"a\\\"b\\\\c\"");
    render_is("\"{rule}\"", v, "\"line\\u000abreak\\u0009tab\"");
    render_is("{window}", v, "\\u0001");
}

/* ---- a refusal's headers ---- */

static struct sl_decision deny(const struct sl_rule *r, int64_t wait_us)
{
    struct sl_decision d;

    memset(&d, 0, sizeof(d));
    d.verdict = SL_VERDICT_DENY;
    d.rule = r;
    d.wait_us = wait_us;
    return d;
}

static void header_is(struct MHD_Response *resp, const char *name, const char *want)
{
    const char *got = MHD_get_response_header(resp, name);

    assert_non_null(got);
    assert_string_equal(got, want);
}

static void test_limited_rate_rule_headers(void **state)
{
    struct sl_config *c = parse(
        "{\"upstreams\": [{\"name\": \"leads\", \"prefix\": \"/leads\","
        " \"url\": \"http://127.0.0.1:1\","
        " \"rules\": [{\"name\": \"all\", \"limit\": 2, \"window\": \"30s\"}]}]}");
    const struct sl_upstream_conf *up = &c->upstreams[0];
    struct sl_decision d = deny(&up->rules[0], 30 * SL_USEC_PER_SEC + 100000);
    struct MHD_Response *resp;
    (void)state;

    resp = sl_respond_limited(c, up, &d, 0, NULL);
    assert_non_null(resp);
    /* The window and the margin, rounded up; RateLimit says none is left
     * until then, and the policy names the rule and its quota. */
    header_is(resp, "Retry-After", "31");
    header_is(resp, "RateLimit-Policy", "\"all\";q=2;w=30");
    header_is(resp, "RateLimit", "\"all\";r=0;t=31");
    header_is(resp, "Content-Type", "application/json");
    header_is(resp, "Cache-Control", "no-store");
    assert_non_null(MHD_get_response_header(resp, "Date"));
    MHD_destroy_response(resp);
    sl_config_free(c);
}

static void test_limited_concurrency_rule_has_no_ratelimit(void **state)
{
    struct sl_config *c = parse(
        "{\"upstreams\": [{\"name\": \"leads\", \"prefix\": \"/leads\","
        " \"url\": \"http://127.0.0.1:1\","
        " \"rules\": [{\"name\": \"in-flight\", \"concurrency\": 3}]}]}");
    const struct sl_upstream_conf *up = &c->upstreams[0];
    struct sl_decision d = deny(&up->rules[0], 0);
    struct MHD_Response *resp;
    (void)state;

    resp = sl_respond_limited(c, up, &d, 0, NULL);
    assert_non_null(resp);
    header_is(resp, "Retry-After", "1");
    assert_null(MHD_get_response_header(resp, "RateLimit"));
    assert_null(MHD_get_response_header(resp, "RateLimit-Policy"));
    MHD_destroy_response(resp);
    sl_config_free(c);
}

static void test_limited_pause_headers(void **state)
{
    struct sl_config *c = parse(
        "{\"upstreams\": [{\"name\": \"crm\", \"prefix\": \"/crm\","
        " \"url\": \"http://127.0.0.1:1\"}]}");
    const struct sl_upstream_conf *up = &c->upstreams[0];
    struct sl_decision d = deny(&up->pause_rule, 1500000);
    struct MHD_Response *resp;
    (void)state;

    resp = sl_respond_limited(c, up, &d, 0, NULL);
    assert_non_null(resp);
    header_is(resp, "Retry-After", "2");
    header_is(resp, "RateLimit", "\"upstream-pause\";r=0;t=2");
    assert_null(MHD_get_response_header(resp, "RateLimit-Policy"));
    MHD_destroy_response(resp);
    sl_config_free(c);
}

static void test_limited_with_a_template_takes_its_content_type(void **state)
{
    struct sl_config *c = parse(
        "{\"max_retry_after\": \"10s\", \"upstreams\": [{\"name\": \"crm\","
        " \"prefix\": \"/crm\", \"url\": \"http://127.0.0.1:1\","
        " \"reject\": {\"status\": 403, \"body\": \"limit {limit} of {rule}\","
        "              \"content_type\": \"text/plain; charset=utf-8\"},"
        " \"rules\": [{\"name\": \"daily\", \"limit\": 5, \"window\": \"1d\"}]}]}");
    const struct sl_upstream_conf *up = &c->upstreams[0];
    struct sl_decision d = deny(&up->rules[0], 86400 * SL_USEC_PER_SEC);
    struct MHD_Response *resp;
    (void)state;

    assert_int_equal(up->reject_status, 403);
    resp = sl_respond_limited(c, up, &d, 0, NULL);
    assert_non_null(resp);
    header_is(resp, "Content-Type", "text/plain; charset=utf-8");
    /* Retry-After is bounded by max_retry_after; RateLimit's t= still
     * says when room really comes back. */
    header_is(resp, "Retry-After", "10");
    header_is(resp, "RateLimit", "\"daily\";r=0;t=86400");
    MHD_destroy_response(resp);
    sl_config_free(c);
}

static void test_relayed_retry_after_is_bounded(void **state)
{
    struct sl_config *c = parse(
        "{\"max_retry_after\": \"10s\", \"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\","
        " \"url\": \"http://127.0.0.1:1\"}]}");
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    (void)state;

    assert_non_null(resp);
    sl_respond_relayed_retry_after(c, resp, 3600 * SL_USEC_PER_SEC);
    header_is(resp, "Retry-After", "10");
    MHD_destroy_response(resp);
    sl_config_free(c);
}

/* ---- hop-by-hop headers ---- */

static bool hop(const char *name)
{
    return sl_header_is_hop_by_hop(name, strlen(name));
}

static void test_hop_by_hop_names(void **state)
{
    (void)state;
    assert_true(hop("Connection"));
    assert_true(hop("keep-alive"));
    assert_true(hop("PROXY-CONNECTION"));
    assert_true(hop("Proxy-Authenticate"));
    assert_true(hop("Proxy-Authorization"));
    assert_true(hop("TE"));
    assert_true(hop("Trailer"));
    assert_true(hop("Transfer-Encoding"));
    assert_true(hop("Upgrade"));
    /* Framing is the proxy's own on each side. */
    assert_true(hop("content-length"));
    /* End-to-end headers cross. */
    assert_false(hop("Content-Type"));
    assert_false(hop("Authorization"));
    assert_false(hop("Trailers"));
    assert_false(hop("Connectio"));
    assert_false(hop(""));
    /* LEN counts, not the terminator: a prefix of a longer name. */
    assert_true(sl_header_is_hop_by_hop("Connection: close", 10));
    assert_false(sl_header_is_hop_by_hop("TEapot", 6));
}

static bool listed(const char *connection, const char *name)
{
    return sl_header_connection_lists(connection, name, strlen(name));
}

static void test_connection_lists_its_tokens(void **state)
{
    (void)state;
    assert_true(listed("X-Secret", "x-secret"));
    assert_true(listed("close, X-Secret", "X-Secret"));
    assert_true(listed("close,X-Secret ,  keep-alive", "X-Secret"));
    assert_true(listed(" \t,, X-Secret\t", "X-Secret"));
    assert_true(listed("keep-alive, x-a, x-b", "X-B"));
    assert_false(listed("close", "X-Secret"));
    assert_false(listed("X-Secrets", "X-Secret"));
    assert_false(listed("X-Secret-2, X", "X-Secret"));
    assert_false(listed("", "X-Secret"));
    assert_false(sl_header_connection_lists(NULL, "X", 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_after_rounds_up_and_is_at_least_one),
        cmocka_unit_test(test_retry_after_is_bounded_by_max_retry_after),
        cmocka_unit_test(test_template_names_are_replaced),
        cmocka_unit_test(test_template_double_braces_are_literal),
        cmocka_unit_test(test_template_unknown_and_unclosed_names_stay),
        cmocka_unit_test(test_template_values_are_json_escaped),
        cmocka_unit_test(test_limited_rate_rule_headers),
        cmocka_unit_test(test_limited_concurrency_rule_has_no_ratelimit),
        cmocka_unit_test(test_limited_pause_headers),
        cmocka_unit_test(test_limited_with_a_template_takes_its_content_type),
        cmocka_unit_test(test_relayed_retry_after_is_bounded),
        cmocka_unit_test(test_hop_by_hop_names),
        cmocka_unit_test(test_connection_lists_its_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
