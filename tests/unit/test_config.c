/* Unit tests: configuration parsing and validation messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sl_config.h"
#include "sl_duration.h"

static int has_error(const struct sl_errors *e, const char *needle)
{
    for (size_t i = 0; i < e->count; i++)
        if (strstr(e->lines[i], needle) != NULL)
            return 1;
    return 0;
}

static void test_full_example(void **state)
{
    const char *text =
        "{\"listen\": \"127.0.0.1:8080\", \"store\": \"memory\", \"upstreams\": [{"
        "\"name\": \"leads\", \"prefix\": \"/leads\", \"url\": \"https://api.leads.example/\","
        "\"on_limit\": \"reject\", \"rules\": ["
        "{\"name\": \"logins\", \"methods\": [\"post\"], \"path\": \"/api/v2/login\", \"limit\": 100, \"window\": \"5m\"},"
        "{\"name\": \"per\", \"path\": \"/p/{publisher}/**\", \"per\": \"{publisher}\", \"limit\": 50, \"window\": 60},"
        "{\"name\": \"app\", \"per\": \"header:X-App\", \"limit\": 5, \"window\": \"250ms\"},"
        "{\"name\": \"in-flight\", \"concurrency\": 10}]}]}";
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    assert_int_equal(e.count, 0);
    assert_int_equal(c->listen_port, 8080);
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->nupstreams, 1);
    const struct sl_upstream_conf *u = &c->upstreams[0];
    assert_string_equal(u->url, "https://api.leads.example");  /* trailing '/' dropped */
    assert_int_equal(u->prefix_len, 6);
    assert_true(u->tls_verify);
    assert_int_equal(u->nrules, 4);
    assert_string_equal(u->rules[0].methods[0], "POST");
    assert_int_equal(u->rules[0].window_us, 300 * SL_USEC_PER_SEC);
    assert_int_equal(u->rules[1].per_kind, SL_PER_CAPTURE);
    assert_int_equal(u->rules[1].per_capture, 0);
    assert_int_equal(u->rules[1].window_us, 60 * SL_USEC_PER_SEC);
    assert_int_equal(u->rules[2].per_kind, SL_PER_HEADER);
    assert_string_equal(u->rules[2].per_header, "X-App");
    assert_int_equal(u->rules[3].kind, SL_RULE_CONCURRENCY);
    assert_int_equal(u->rules[3].limit, 10);
    sl_config_free(c);
}

static void test_errors_carry_json_paths(void **state)
{
    const char *text =
        "{\"upstreams\": [{\"name\": \"a\", \"prefix\": \"/a\", \"url\": \"http://x\","
        "\"rules\": [{\"limit\": 1, \"window\": \"1s\"}, {\"limit\": 1, \"window\": \"1s\"},"
        "{\"name\": \"w\", \"limit\": 5, \"window\": \"5x\"}]},"
        "{\"name\": \"a\", \"prefix\": \"/a\", \"url\": \"http://y\"}]}";
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), -1);
    assert_null(c);
    assert_true(has_error(&e, "upstreams[0].rules[2].window: \"5x\" is not a duration"));
    assert_true(has_error(&e, "upstreams[1].name: \"a\" is already the name of upstreams[0]"));
    assert_true(has_error(&e, "upstreams[1].prefix: \"/a\" is already the prefix"));
    assert_false(has_error(&e, "rules[1].name"));  /* default names differ */
    sl_errors_free(&e);
}

static void test_syntax_error_position(void **state)
{
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;
    assert_int_equal(sl_config_parse("{\n\"listen\": ,\n}", "f.json", false, &c, &e), -1);
    assert_int_equal(e.count, 1);
    assert_true(strncmp(e.lines[0], "f.json:2:", 9) == 0);
    sl_errors_free(&e);
}

static void test_rule_shape_errors(void **state)
{
    const char *text =
        "{\"upstreams\": [{\"name\": \"a\", \"prefix\": \"/a/\", \"url\": \"http://x?q\","
        "\"tls_verify\": \"yes\", \"rules\": ["
        "{\"name\": \"r0\", \"limit\": 5},"
        "{\"name\": \"r1\", \"concurrency\": 2, \"window\": \"1s\"},"
        "{\"name\": \"r2\", \"limit\": 1.5, \"window\": \"1s\"},"
        "{\"name\": \"r3\", \"per\": \"cookie:x\", \"limit\": 1, \"window\": \"1s\"},"
        "{\"name\": \"bad name\", \"limit\": 1, \"window\": \"0s\"}]}]}";
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;
    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), -1);
    assert_true(has_error(&e, "upstreams[0].prefix"));
    assert_true(has_error(&e, "upstreams[0].url"));
    assert_true(has_error(&e, "upstreams[0].tls_verify: \"yes\" is not true or false"));
    assert_true(has_error(&e, "upstreams[0].rules[0]: a rule needs \"limit\" and \"window\""));
    assert_true(has_error(&e, "upstreams[0].rules[1]: a rule has either"));
    assert_true(has_error(&e, "upstreams[0].rules[2].limit: 1.5 is not a whole number"));
    assert_true(has_error(&e, "upstreams[0].rules[3].per: \"cookie:x\" must be"));
    assert_true(has_error(&e, "upstreams[0].rules[4].name"));
    assert_true(has_error(&e, "upstreams[0].rules[4].window: \"0s\" must be more than zero"));
    sl_errors_free(&e);
}

static void test_listen_forms(void **state)
{
    char *host;
    int port;
    (void)state;
    assert_int_equal(sl_config_split_listen("[::1]:9000", &host, &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9000);
    free(host);
    assert_int_equal(sl_config_split_listen(":8080", &host, &port), 0);
    assert_string_equal(host, "");
    free(host);
    assert_int_equal(sl_config_split_listen("::1:80", &host, &port), -1);
    assert_int_equal(sl_config_split_listen("host:0", &host, &port), -1);
    assert_int_equal(sl_config_split_listen("host:99999", &host, &port), -1);
    assert_int_equal(sl_config_split_listen("host", &host, &port), -1);
}

static void test_redis_urls(void **state)
{
    struct sl_config c;
    const char *why;
    (void)state;

    memset(&c, 0, sizeof(c));
    assert_int_equal(sl_config_parse_redis_url("redis://10.0.0.5:6380/2", &c, &why), 0);
    assert_string_equal(c.redis_host, "10.0.0.5");
    assert_int_equal(c.redis_port, 6380);
    assert_int_equal(c.redis_db, 2);
    assert_null(c.redis_password);
    free(c.redis_host);

    memset(&c, 0, sizeof(c));
    assert_int_equal(sl_config_parse_redis_url("redis://:s%40cret@cache", &c, &why), 0);
    assert_string_equal(c.redis_host, "cache");
    assert_int_equal(c.redis_port, 6379);
    assert_null(c.redis_user);
    assert_string_equal(c.redis_password, "s@cret");
    free(c.redis_host);
    free(c.redis_password);

    memset(&c, 0, sizeof(c));
    assert_int_equal(sl_config_parse_redis_url("redis://app:pw@[::1]:7000", &c, &why), 0);
    assert_string_equal(c.redis_host, "::1");
    assert_int_equal(c.redis_port, 7000);
    assert_string_equal(c.redis_user, "app");
    assert_string_equal(c.redis_password, "pw");
    free(c.redis_host);
    free(c.redis_user);
    free(c.redis_password);

    memset(&c, 0, sizeof(c));
    assert_int_equal(sl_config_parse_redis_url("rediss://h:6379", &c, &why), -1);
    assert_non_null(strstr(why, "TLS"));
    const char *bad[] = {"redis://", "redis://h:0", "redis://h:99999", "redis://h/x",
                         "redis://user@h", "http://h", NULL};
    for (int i = 0; bad[i]; i++) {
        memset(&c, 0, sizeof(c));
        assert_int_equal(sl_config_parse_redis_url(bad[i], &c, &why), -1);
        free(c.redis_host);
        free(c.redis_user);
        free(c.redis_password);
    }
}

static void test_store_settings(void **state)
{
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;
    assert_int_equal(sl_config_parse(
        "{\"store\": \"redis://127.0.0.1:6379\", \"store_prefix\": \"prod:\","
        "\"on_store_error\": \"deny\", \"store_timeout\": \"50ms\","
        "\"concurrency_lease\": \"3s\", \"upstreams\": [{\"name\": \"a\","
        "\"prefix\": \"/a\", \"url\": \"http://x\"}]}", "t", false, &c, &e), 0);
    assert_int_equal(c->store_kind, SL_STORE_REDIS);
    assert_string_equal(c->store_prefix, "prod:");
    assert_int_equal(c->on_store_error, SL_STORE_ERROR_DENY);
    assert_int_equal(c->store_timeout_us, 50000);
    assert_int_equal(c->lease_ttl_us, 3000000);
    sl_config_free(c);
    assert_int_equal(sl_config_parse(
        "{\"store\": \"redis://:hunter2@h:1/x\", \"store_prefix\": \"{x}\","
        "\"on_store_error\": \"maybe\", \"upstreams\": [{\"name\": \"a\","
        "\"prefix\": \"/a\", \"url\": \"http://x\"}]}", "t", false, &c, &e), -1);
    assert_true(has_error(&e, "store: has a database that is not a number"));
    assert_true(has_error(&e, "store_prefix"));
    assert_true(has_error(&e, "on_store_error: \"maybe\""));
    for (size_t i = 0; i < e.count; i++)
        assert_null(strstr(e.lines[i], "hunter2"));  /* never echo a password */
    sl_errors_free(&e);
}

static void test_queue_and_feedback_settings(void **state)
{
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;
    assert_int_equal(sl_config_parse(
        "{\"upstreams\": [{\"name\": \"crm\", \"prefix\": \"/crm\", \"url\": \"http://x\","
        "\"on_limit\": \"queue\", \"max_wait\": \"5s\", \"max_queue\": 7,"
        "\"default_pause\": \"2s\", \"retry_on_limit\": true,"
        "\"limit_signals\": [{\"status\": 403, \"body_contains\": \"LIMIT\"},"
        "                    {\"status\": 420, \"pause\": \"9s\"}],"
        "\"rules\": [{\"name\": \"d\", \"limit\": 10, \"window\": \"1d\", \"sync\": \"sforce-limit-info\","
        "             \"on_limit\": \"reject\"},"
        "            {\"name\": \"c\", \"concurrency\": 2, \"max_wait\": \"1s\"}]}]}",
        "t", false, &c, &e), 0);
    const struct sl_upstream_conf *u = &c->upstreams[0];
    assert_int_equal(u->on_limit, SL_ON_LIMIT_QUEUE);
    assert_int_equal(u->max_wait_us, 5 * SL_USEC_PER_SEC);
    assert_int_equal(u->max_queue, 7);
    assert_true(u->retry_on_limit);
    assert_int_equal(u->nsignals, 2);
    assert_string_equal(u->signals[0].body_contains, "LIMIT");
    assert_int_equal(u->signals[0].pause_us, 2 * SL_USEC_PER_SEC);  /* default_pause */
    assert_int_equal(u->signals[1].pause_us, 9 * SL_USEC_PER_SEC);
    assert_int_equal(u->rules[0].on_limit, SL_ON_LIMIT_REJECT);     /* overridden */
    assert_int_equal(u->rules[0].sync, SL_SYNC_SFORCE);
    assert_int_equal(u->rules[1].on_limit, SL_ON_LIMIT_QUEUE);      /* inherited */
    assert_int_equal(u->rules[1].max_wait_us, SL_USEC_PER_SEC);
    assert_int_equal(u->pause_rule.kind, SL_RULE_PAUSE);
    assert_int_equal(u->pause_rule.index, 2);
    assert_ptr_equal(sl_upstream_rule(u, 2), &u->pause_rule);
    sl_config_free(c);

    assert_int_equal(sl_config_parse(
        "{\"upstreams\": [{\"name\": \"crm\", \"prefix\": \"/crm\", \"url\": \"http://x\","
        "\"on_limit\": \"wait\", \"limit_signals\": [{\"body_contains\": \"\"}],"
        "\"rules\": [{\"concurrency\": 2, \"sync\": \"shopify\"},"
        "            {\"limit\": 1, \"window\": \"1s\", \"sync\": \"github\"}]}]}",
        "t", false, &c, &e), -1);
    assert_true(has_error(&e, "upstreams[0].on_limit: \"wait\" must be \"reject\" or \"queue\""));
    assert_true(has_error(&e, "upstreams[0].limit_signals[0].status: is required"));
    assert_true(has_error(&e, "upstreams[0].limit_signals[0].body_contains: must be"));
    assert_true(has_error(&e, "upstreams[0].rules[0].sync: only a rule with"));
    assert_true(has_error(&e, "upstreams[0].rules[1].sync: \"github\" must be"));
    sl_errors_free(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_example),
        cmocka_unit_test(test_errors_carry_json_paths),
        cmocka_unit_test(test_syntax_error_position),
        cmocka_unit_test(test_rule_shape_errors),
        cmocka_unit_test(test_listen_forms),
        cmocka_unit_test(test_redis_urls),
        cmocka_unit_test(test_store_settings),
        cmocka_unit_test(test_queue_and_feedback_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
