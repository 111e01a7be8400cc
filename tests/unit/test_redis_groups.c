/* Unit tests: which upstreams are split into tenant groups on a Redis
 * Cluster, a per value's group (FNV-1a: every instance must agree, so the
 * values are the published FNV-1a test vectors, modulo 16), and the hash
 * tags' two forms, written and read back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "sl_config.h"
#include "sl_redis_groups.h"

static struct sl_config *load(const char *rules)
{
    char text[2048];
    struct sl_errors e = {0};
    struct sl_config *c = NULL;

    snprintf(text, sizeof(text),
             "{\"upstreams\": [{\"name\": \"crm\", \"prefix\": \"/crm\", \"url\": \"http://x\","
             "\"rules\": [%s]}]}", rules);
    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    return c;
}

static size_t groups(const char *rules, bool cluster)
{
    struct sl_config *c = load(rules);
    size_t n = sl_redis_groups(&c->upstreams[0], cluster);

    sl_config_unref(c);
    return n;
}

static void test_which_upstreams_have_groups(void **state)
{
    (void)state;
    /* Every rule per one header (names are case-insensitive). */
    assert_int_equal(groups("{\"name\": \"a\", \"per\": \"header:X-Tenant\", \"limit\": 3, "
                            "\"window\": \"1m\"}, {\"name\": \"b\", \"per\": \"header:x-tenant\", "
                            "\"concurrency\": 2}", true), SL_REDIS_GROUPS);
    /* Turned off. */
    {
        struct sl_errors e = {0};
        struct sl_config *c = NULL;
        assert_int_equal(sl_config_parse(
            "{\"upstreams\": [{\"name\": \"crm\", \"prefix\": \"/crm\", \"url\": \"http://x\","
            "\"tenant_groups\": false, \"rules\": [{\"name\": \"a\", \"per\": \"header:X-T\", "
            "\"limit\": 3, \"window\": \"1m\"}]}]}", "t", false, &c, &e), 0);
        assert_int_equal(sl_redis_groups(&c->upstreams[0], true), 1);
        sl_config_unref(c);
    }
    /* Not on one Redis: groups would only cost heartbeats there. */
    assert_int_equal(groups("{\"name\": \"a\", \"per\": \"header:X-Tenant\", \"limit\": 3, "
                            "\"window\": \"1m\"}", false), 1);
    /* A rule without per puts every tenant in one decision. */
    assert_int_equal(groups("{\"name\": \"a\", \"per\": \"header:X-Tenant\", \"limit\": 3, "
                            "\"window\": \"1m\"}, {\"name\": \"all\", \"limit\": 9, "
                            "\"window\": \"1m\"}", true), 1);
    /* Two headers: a call's buckets would be in two groups. */
    assert_int_equal(groups("{\"name\": \"a\", \"per\": \"header:X-Tenant\", \"limit\": 3, "
                            "\"window\": \"1m\"}, {\"name\": \"b\", \"per\": \"header:X-App\", "
                            "\"limit\": 3, \"window\": \"1m\"}", true), 1);
    /* A capture, even of one path: a call is matched under every
     * reading of its path, and two readings may capture two values. */
    assert_int_equal(groups("{\"name\": \"a\", \"path\": \"/p/{p}/**\", \"per\": \"{p}\", "
                            "\"limit\": 3, \"window\": \"1m\"}, {\"name\": \"b\", \"path\": "
                            "\"/p/{p}/**\", \"per\": \"{p}\", \"limit\": 9, \"window\": \"1h\"}",
                            true), 1);
    /* A header and a capture. */
    assert_int_equal(groups("{\"name\": \"a\", \"path\": \"/p/{p}/**\", \"per\": \"{p}\", "
                            "\"limit\": 3, \"window\": \"1m\"}, {\"name\": \"b\", \"per\": "
                            "\"header:X-Tenant\", \"limit\": 9, \"window\": \"1h\"}", true), 1);
}

static void test_a_per_values_group(void **state)
{
    (void)state;
    /* FNV-1a 32: "" is the offset basis 0x811c9dc5, "a" 0xe40c292c,
     * "foobar" 0xbf9cf968. */
    assert_int_equal(sl_redis_group_of("", 0), 0x811c9dc5u % SL_REDIS_GROUPS);
    assert_int_equal(sl_redis_group_of("a", 1), 0xe40c292cu % SL_REDIS_GROUPS);
    assert_int_equal(sl_redis_group_of("foobar", 6), 0xbf9cf968u % SL_REDIS_GROUPS);
    /* Bytes, not a C string. */
    assert_int_not_equal(sl_redis_group_of("a\0b", 3), sl_redis_group_of("a", 1));
}

static void test_tags(void **state)
{
    char buf[32];
    size_t len, g;

    (void)state;
    assert_int_equal(sl_redis_tag(buf, sizeof(buf), "leads", false, 7), 7);
    assert_string_equal(buf, "{leads}");
    assert_int_equal(sl_redis_tag(buf, sizeof(buf), "leads", true, 15), 10);
    assert_string_equal(buf, "{leads#15}");
    assert_int_equal(sl_redis_tag(buf, 8, "leads", true, 1), -1);   /* does not fit */

    assert_true(sl_redis_tag_parse("leads", 5, &len, &g));
    assert_int_equal(len, 5);
    assert_true(g == SIZE_MAX);
    assert_true(sl_redis_tag_parse("leads#15", 8, &len, &g));
    assert_int_equal(len, 5);
    assert_int_equal(g, 15);
    assert_true(sl_redis_tag_parse("a.b-c#0", 7, &len, &g));
    assert_int_equal(len, 5);
    assert_int_equal(g, 0);
    /* Refused: no name, no group, not a number, out of range. */
    assert_false(sl_redis_tag_parse("#3", 2, &len, &g));
    assert_false(sl_redis_tag_parse("leads#", 6, &len, &g));
    assert_false(sl_redis_tag_parse("leads#x", 7, &len, &g));
    assert_false(sl_redis_tag_parse("leads#16", 8, &len, &g));
    assert_false(sl_redis_tag_parse("leads#0001", 10, &len, &g));
    assert_false(sl_redis_tag_parse("", 0, &len, &g));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_which_upstreams_have_groups),
        cmocka_unit_test(test_a_per_values_group),
        cmocka_unit_test(test_tags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
