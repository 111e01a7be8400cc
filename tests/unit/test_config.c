/* Unit tests: configuration parsing and validation messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
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
    assert_int_equal(sl_config_parse_redis_url("rediss://u:p@h:6380/3", &c, &why), 0);
    assert_true(c.redis_use_tls);
    assert_string_equal(c.redis_host, "h");
    assert_int_equal(c.redis_port, 6380);
    assert_int_equal(c.redis_db, 3);
    assert_string_equal(c.redis_user, "u");
    assert_string_equal(c.redis_password, "p");
    free(c.redis_host);
    free(c.redis_user);
    free(c.redis_password);

    /* A Sentinel URL names the Sentinels and the primary's name, never a
     * server to use as the primary. */
    memset(&c, 0, sizeof(c));
    assert_int_equal(sl_config_parse_redis_url("redis-sentinel://:pw@h1,h2:26380/mymaster/2",
                                               &c, &why), 0);
    assert_null(c.redis_host);
    assert_string_equal(c.redis_master, "mymaster");
    assert_int_equal(c.redis_nsentinels, 2);
    assert_string_equal(c.redis_sentinel_host[0], "h1");
    assert_int_equal(c.redis_sentinel_port[0], 26379);
    assert_string_equal(c.redis_sentinel_host[1], "h2");
    assert_int_equal(c.redis_sentinel_port[1], 26380);
    assert_int_equal(c.redis_db, 2);
    assert_string_equal(c.redis_password, "pw");
    char addr[128];
    assert_string_equal(sl_config_store_address(&c, addr, sizeof(addr)),
                        "mymaster via Sentinel h1:26379,h2:26380 db 2");
    free(c.redis_master);
    free(c.redis_sentinel_host[0]);
    free(c.redis_sentinel_host[1]);
    free(c.redis_password);
    /* A cluster's seeds, the first also as redis_host (for the
     * subscriber and the address shown). */
    memset(&c, 0, sizeof(c));
    assert_int_equal(sl_config_parse_redis_url("rediss-cluster://u:pw@h1:7000,h2", &c,
                                               &why), 0);
    assert_int_equal(c.redis_nseeds, 2);
    assert_string_equal(c.redis_seed_host[0], "h1");
    assert_int_equal(c.redis_seed_port[0], 7000);
    assert_string_equal(c.redis_seed_host[1], "h2");
    assert_int_equal(c.redis_seed_port[1], 6379);
    assert_string_equal(c.redis_host, "h1");
    assert_int_equal(c.redis_port, 7000);
    assert_true(c.redis_use_tls);
    assert_string_equal(c.redis_user, "u");
    assert_string_equal(sl_config_store_address(&c, addr, sizeof(addr)),
                        "cluster h1:7000,h2:6379");
    free(c.redis_host);
    free(c.redis_seed_host[0]);
    free(c.redis_seed_host[1]);
    free(c.redis_user);
    free(c.redis_password);
    /* A cluster has no database but 0: refused, saying so. */
    memset(&c, 0, sizeof(c));
    assert_int_equal(sl_config_parse_redis_url("redis-cluster://h1:7000/3", &c, &why), -1);
    assert_non_null(strstr(why, "Redis Cluster does not have"));
    assert_null(c.redis_host);
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


/* ---- helpers for one-upstream configs ---- */

/* Parse a config whose root holds ROOT_FIELDS (may be "") and one
 * upstream "u" holding UP_FIELDS (may be ""). */
static int parse_with(const char *root_fields, const char *up_fields,
                      struct sl_config **c, struct sl_errors *e)
{
    size_t n = strlen(root_fields) + strlen(up_fields) + 256;
    char *text = malloc(n);
    int rc;

    assert_non_null(text);
    snprintf(text, n, "{%s%s\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", "
             "\"url\": \"http://x\"%s%s}]}", root_fields, *root_fields ? "," : "",
             *up_fields ? "," : "", up_fields);
    rc = sl_config_parse(text, "t", false, c, e);
    free(text);
    return rc;
}

/* The config parses without errors; the caller frees *c. */
static struct sl_config *parse_ok(const char *root_fields, const char *up_fields)
{
    struct sl_errors e = {0};
    struct sl_config *c = NULL;

    if (parse_with(root_fields, up_fields, &c, &e) != 0) {
        for (size_t i = 0; i < e.count; i++)
            print_error("unexpected: %s\n", e.lines[i]);
        fail();
    }
    assert_int_equal(e.count, 0);
    return c;
}

/* Every error line is printable ASCII: values are escaped when echoed. */
static void assert_lines_printable(const struct sl_errors *e)
{
    for (size_t i = 0; i < e->count; i++)
        for (const char *p = e->lines[i]; *p; p++)
            if (*p < 0x20 || *p > 0x7e) {
                print_error("raw byte 0x%02x in: %s\n", (unsigned char)*p, e->lines[i]);
                fail();
            }
}

/* The config fails with an error line containing NEEDLE. */
static void parse_fails(const char *root_fields, const char *up_fields,
                        const char *needle)
{
    struct sl_errors e = {0};
    struct sl_config *c = NULL;

    assert_int_equal(parse_with(root_fields, up_fields, &c, &e), -1);
    assert_null(c);
    if (!has_error(&e, needle)) {
        print_error("wanted \"%s\" among:\n", needle);
        for (size_t i = 0; i < e.count; i++)
            print_error("  %s\n", e.lines[i]);
        fail();
    }
    assert_lines_printable(&e);
    sl_errors_free(&e);
}

/* Leaky buckets: the leak in integers, the margin off the capacity. */
static void test_leaky_bucket_keys(void **state)
{
    (void)state;
    struct sl_config *c = parse_ok("", "\"margin\": \"100ms\", \"rules\": ["
                                   "{\"name\": \"rest\", \"bucket\": 40, \"leak\": \"2/s\"}]");
    const struct sl_rule *r = &c->upstreams[0].rules[0];
    assert_true(r->leaky);
    assert_int_equal(r->kind, SL_RULE_RATE);
    assert_int_equal(r->limit, 40);
    assert_int_equal(r->leak.n, 1);
    assert_int_equal(r->leak.per_us, 500000);
    assert_int_equal(r->window_us, 20000000);          /* drains in 20 s */
    assert_int_equal(r->bucket_cap, 40 * 500000 - 100000);  /* 0.2 call off */
    sl_config_free(c);
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"bucket\": 40}]",
                "needs both \"bucket\"");
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"bucket\": 40, \"leak\": \"2/d\"}]",
                "must be calls per second, minute or hour");
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"bucket\": 40, \"leak\": \"2/s\", "
                "\"window\": \"1s\"}]", "has no \"limit\", \"window\"");
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"bucket\": 40, \"leak\": \"2/s\", "
                "\"apps\": {\"a\": {\"max\": 5}}}]", "not to a leaky bucket");
    parse_fails("", "\"margin\": \"10s\", \"rules\": [{\"name\": \"r\", \"bucket\": 2, "
                "\"leak\": \"1/s\"}]", "no call could ever fit");
}

/* Costs: a number, a header, or per method; bounded by the limit. */
static void test_cost_keys(void **state)
{
    (void)state;
    struct sl_config *c = parse_ok("", "\"rules\": ["
        "{\"name\": \"a\", \"limit\": 10, \"window\": \"1s\"},"
        "{\"name\": \"b\", \"limit\": 10, \"window\": \"1s\", \"cost\": 3},"
        "{\"name\": \"c\", \"bucket\": 10, \"leak\": \"1/s\", \"cost\": \"header:X-Cost\"},"
        "{\"name\": \"d\", \"limit\": 10, \"window\": \"1s\", "
        "\"cost\": {\"post\": 5, \"*\": 2}}]");
    const struct sl_rule *r = c->upstreams[0].rules;
    assert_int_equal(r[0].cost_kind, SL_COST_FIXED);
    assert_int_equal(r[0].cost, 1);
    assert_int_equal(r[1].cost, 3);
    assert_int_equal(r[2].cost_kind, SL_COST_HEADER);
    assert_string_equal(r[2].cost_header, "X-Cost");
    assert_int_equal(r[3].cost_kind, SL_COST_METHOD);
    assert_int_equal(r[3].ncost_methods, 1);
    assert_string_equal(r[3].cost_methods[0].method, "POST");
    assert_int_equal(r[3].cost_methods[0].cost, 5);
    assert_int_equal(r[3].cost, 2);
    sl_config_free(c);
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"limit\": 10, \"window\": \"1s\", "
                "\"cost\": 11}]", "rules[0].cost");
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"limit\": 10, \"window\": \"1s\", "
                "\"cost\": 0}]", "rules[0].cost");
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"limit\": 10, \"window\": \"1s\", "
                "\"cost\": \"body\"}]", "\"header:NAME\" or an object");
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"limit\": 10, \"window\": \"1s\", "
                "\"cost\": {\"GET\": 20}}]", "rules[0].cost.GET");
    /* A bucket admits less than its size (the margin takes its share): a
     * cost of the whole bucket could never fit, fixed or per method. */
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"bucket\": 10, \"leak\": \"1/s\", "
                "\"cost\": 10}]", "rules[0].cost: 10 is more than the rule can ever admit (9");
    parse_fails("", "\"rules\": [{\"name\": \"r\", \"bucket\": 10, \"leak\": \"1/s\", "
                "\"cost\": {\"post\": 10}}]",
                "rules[0].cost.POST: 10 is more than the rule can ever admit (9");
    c = parse_ok("", "\"rules\": [{\"name\": \"r\", \"bucket\": 10, \"leak\": \"1/s\", "
                 "\"cost\": {\"post\": 9}}]");
    assert_int_equal(c->upstreams[0].rules[0].cost_max, 9);
    sl_config_free(c);
    /* A concurrency rule ignores its cost: a warning. */
    c = parse_ok("", "\"rules\": [{\"name\": \"r\", \"concurrency\": 2, \"cost\": 3}]");
    assert_int_equal(c->warnings.count, 1);
    assert_non_null(strstr(c->warnings.lines[0], "the cost is ignored"));
    sl_config_free(c);
}

static void test_new_key_defaults(void **state)
{
    (void)state;
    struct sl_config *c = parse_ok("",
        "\"rules\": [{\"name\": \"r\", \"limit\": 5, \"window\": \"1m\"},"
        "{\"name\": \"s\", \"limit\": 5, \"window\": \"1h\", \"sync\": \"x-ratelimit\"},"
        "{\"name\": \"c\", \"concurrency\": 3}]");
    const struct sl_upstream_conf *u = &c->upstreams[0];
    assert_int_equal(c->header_timeout_us, 10 * SL_USEC_PER_SEC);
    assert_int_equal(c->max_retry_after_us, 3600 * SL_USEC_PER_SEC);
    assert_true(c->local_share == 1.0);
    /* The margin: 100 ms, at most 5% of each rule's window. */
    assert_int_equal(u->margin_us, SL_MARGIN_AUTO);
    assert_int_equal(u->rules[0].span_us, 60 * SL_USEC_PER_SEC + 100000);
    assert_int_equal(u->rules[1].span_us, 3600 * SL_USEC_PER_SEC + 100000);
    assert_false(u->path_case_sensitive);
    assert_int_equal(u->reject_status, 429);
    assert_null(u->reject_body);
    assert_null(u->reject_content_type);
    assert_int_equal(u->rules[0].sync_probe_us, 0);
    assert_int_equal(u->rules[1].sync_probe_us, 60 * SL_USEC_PER_SEC);
    assert_int_equal(u->rules[2].span_us, 0);
    assert_int_equal(u->pause_rule.span_us, 0);
    sl_config_free(c);
}

static void test_new_keys_spellings(void **state)
{
    struct sl_config *c;
    (void)state;

    c = parse_ok("\"header_timeout\": \"250ms\", \"max_retry_after\": \"30m\","
                 "\"local_share\": 0.25",
                 "\"margin\": \"150ms\", \"path_case\": \"sensitive\","
                 "\"rules\": [{\"name\": \"r\", \"limit\": 5, \"window\": \"5m\"},"
                 "{\"name\": \"s\", \"limit\": 5, \"window\": 1.5, \"sync\": \"shopify\","
                 " \"sync_probe\": \"5m\"},"
                 "{\"name\": \"t\", \"limit\": 5, \"window\": \"1d\", \"sync\": \"ratelimit\","
                 " \"sync_probe\": 0}]");
    const struct sl_upstream_conf *u = &c->upstreams[0];
    assert_int_equal(c->header_timeout_us, 250000);
    assert_int_equal(c->max_retry_after_us, 1800 * SL_USEC_PER_SEC);
    assert_true(c->local_share == 0.25);
    assert_int_equal(u->margin_us, 150000);
    assert_true(u->path_case_sensitive);
    assert_int_equal(u->rules[0].window_us, 300 * SL_USEC_PER_SEC);
    assert_int_equal(u->rules[0].span_us, 300 * SL_USEC_PER_SEC + 150000);
    assert_int_equal(u->rules[1].span_us, 1500000 + 150000);
    assert_int_equal(u->rules[1].sync_probe_us, 300 * SL_USEC_PER_SEC);
    assert_int_equal(u->rules[2].sync_probe_us, 0);   /* never probe */
    assert_int_equal(u->rules[2].span_us, 86400 * SL_USEC_PER_SEC + 150000);
    sl_config_free(c);

    /* Numbers of seconds, integer local_share, 0 = no bound, the other case. */
    c = parse_ok("\"header_timeout\": 0.1, \"max_retry_after\": 0, \"local_share\": 1",
                 "\"margin\": 0.2, \"path_case\": \"insensitive\"");
    assert_int_equal(c->header_timeout_us, 100000);
    assert_int_equal(c->max_retry_after_us, 0);
    assert_true(c->local_share == 1.0);
    assert_int_equal(c->upstreams[0].margin_us, 200000);
    assert_false(c->upstreams[0].path_case_sensitive);
    sl_config_free(c);

    c = parse_ok("\"header_timeout\": \"1h\", \"max_retry_after\": \"0s\","
                 "\"local_share\": 1e-3", "\"margin\": \"10s\"");
    assert_int_equal(c->header_timeout_us, 3600 * SL_USEC_PER_SEC);
    assert_int_equal(c->max_retry_after_us, 0);
    assert_true(c->local_share == 0.001);
    assert_int_equal(c->upstreams[0].margin_us, 10 * SL_USEC_PER_SEC);
    sl_config_free(c);

    c = parse_ok("\"max_retry_after\": 1", "\"margin\": 0");
    assert_int_equal(c->max_retry_after_us, SL_USEC_PER_SEC);
    assert_int_equal(c->upstreams[0].margin_us, 0);
    sl_config_free(c);
}

static void test_new_keys_errors(void **state)
{
    (void)state;
    parse_fails("\"header_timeout\": \"50ms\"", "",
                "header_timeout: \"50ms\" is too short: at least 100ms");
    parse_fails("\"header_timeout\": \"2h\"", "",
                "header_timeout: \"2h\" is too long: at most 1h");
    parse_fails("\"header_timeout\": 0", "", "header_timeout: 0 must be more than zero");
    parse_fails("\"header_timeout\": \"soon\"", "", "header_timeout: \"soon\" is not a duration");
    parse_fails("\"max_retry_after\": \"500ms\"", "",
                "max_retry_after: \"500ms\" is too short: at least 1s (or 0)");
    parse_fails("\"max_retry_after\": -5", "", "max_retry_after: -5 must be zero or more");
    parse_fails("\"local_share\": 0", "", "local_share: 0 must be a number more than 0 and at most 1");
    parse_fails("\"local_share\": 1.5", "", "local_share: 1.5 must be");
    parse_fails("\"local_share\": -0.1", "", "local_share: -0.1 must be");
    parse_fails("\"local_share\": \"0.5\"", "", "local_share: \"0.5\" must be");
    parse_fails("\"local_share\": true", "", "local_share: true must be");
    parse_fails("", "\"margin\": \"11s\"", "upstreams[0].margin: \"11s\" is too long: at most 10s");
    parse_fails("", "\"margin\": \"-1s\"", "upstreams[0].margin: \"-1s\" is not a duration");
    parse_fails("", "\"margin\": -1", "upstreams[0].margin: -1 must be zero or more");
    parse_fails("", "\"path_case\": \"Sensitive\"",
                "upstreams[0].path_case: \"Sensitive\" must be \"insensitive\" or \"sensitive\"");
    parse_fails("", "\"path_case\": false", "upstreams[0].path_case: false is not a string");
    /* An object echoed with a DEL byte inside (found by fuzz_config). */
    parse_fails("", "\"path_case\": {\"a\": \"\\u007f\"}",
                "upstreams[0].path_case: {\"a\":\"\\x7f\"} is not a string");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": \"1s\", \"sync_probe\": \"5s\"}]",
                "upstreams[0].rules[0].sync_probe: only a rule with \"sync\" probes");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": \"1s\", \"sync\": \"shopify\","
                "\"sync_probe\": \"500ms\"}]",
                "upstreams[0].rules[0].sync_probe: \"500ms\" is too short: at least 1s (or 0)");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": \"1s\", \"sync\": \"shopify\","
                "\"sync_probe\": \"never\"}]",
                "upstreams[0].rules[0].sync_probe: \"never\" is not a duration");
}

static void test_reject(void **state)
{
    struct sl_config *c;
    (void)state;

    /* The CRM's own answer, with the placeholders docs/guides/clients.md
     * lists. */
    c = parse_ok("", "\"reject\": {\"status\": 403, \"body\": "
                 "\"[{\\\"errorCode\\\":\\\"REQUEST_LIMIT_EXCEEDED\\\",\\\"message\\\":\\\"{message}\\\"}]\"}");
    assert_int_equal(c->upstreams[0].reject_status, 403);
    assert_string_equal(c->upstreams[0].reject_body,
        "[{\"errorCode\":\"REQUEST_LIMIT_EXCEEDED\",\"message\":\"{message}\"}]");
    assert_null(c->upstreams[0].reject_content_type);
    sl_config_free(c);

    c = parse_ok("", "\"reject\": {\"status\": 503, \"body\": \"{\\\"u\\\": \\\"{upstream}\\\","
                 " \\\"r\\\": \\\"{rule}\\\", \\\"l\\\": {limit}, \\\"w\\\": \\\"{window}\\\","
                 " \\\"after\\\": {retry_after}}\", \"content_type\": \"application/problem+json\"}");
    assert_int_equal(c->upstreams[0].reject_status, 503);
    assert_string_equal(c->upstreams[0].reject_content_type, "application/problem+json");
    sl_config_free(c);

    /* Not JSON: "{{" and "}}" are literal braces; parameters are allowed. */
    c = parse_ok("", "\"reject\": {\"body\": \"slow down {{{rule}}}: {message}\","
                 "\"content_type\": \"text/plain; charset=utf-8\"}");
    assert_int_equal(c->upstreams[0].reject_status, 429);
    assert_string_equal(c->upstreams[0].reject_content_type, "text/plain; charset=utf-8");
    sl_config_free(c);

    c = parse_ok("", "\"reject\": {\"body\": \"x\", \"content_type\": "
                 "\"text/plain;format=\\\"a b\\\"\"}");
    sl_config_free(c);

    /* Nested objects in JSON: "}}" must be doubled. */
    c = parse_ok("", "\"reject\": {\"body\": \"{\\\"e\\\": {\\\"m\\\": \\\"{message}\\\"}}}}\"}");
    sl_config_free(c);
    c = parse_ok("", "\"reject\": {\"status\": 429}");
    assert_null(c->upstreams[0].reject_body);
    sl_config_free(c);

    parse_fails("", "\"reject\": {\"body\": \"{\\\"e\\\": {\\\"m\\\": \\\"{message}\\\"}}\"}",
                "upstreams[0].reject.body: is not JSON once its placeholders are filled in");
    /* jansson's message quotes the bad byte: escaped (found by fuzz_config). */
    parse_fails("", "\"reject\": {\"body\": \"{\\\"a\\\": \\u007f}\"}",
                "upstreams[0].reject.body: is not JSON once");
    parse_fails("", "\"reject\": {\"body\": \"Too many requests\"}",
                "set \"content_type\" if the body is not JSON");
    parse_fails("", "\"reject\": {\"body\": \"{\\\"m\\\": \\\"{retry}\\\"}\"}",
                "upstreams[0].reject.body: \"{retry}\" is not a placeholder");
    parse_fails("", "\"reject\": {\"body\": \"{Message} {message} {retry_after_s}\","
                "\"content_type\": \"text/plain\"}",
                "upstreams[0].reject.body: \"{Message}\" is not a placeholder");
    parse_fails("", "\"reject\": {\"body\": \"{Message} {message} {retry_after_s}\","
                "\"content_type\": \"text/plain\"}",
                "upstreams[0].reject.body: \"{retry_after_s}\" is not a placeholder");
    parse_fails("", "\"reject\": {\"status\": 200}",
                "upstreams[0].reject.status: 200 must be between 400 and 599");
    parse_fails("", "\"reject\": {\"status\": 600}", "upstreams[0].reject.status: 600 must be");
    parse_fails("", "\"reject\": {\"status\": \"429\"}",
                "upstreams[0].reject.status: \"429\" is not a whole number");
    parse_fails("", "\"reject\": {\"status\": 429.5}", "upstreams[0].reject.status: 429.5 is not");
    parse_fails("", "\"reject\": 429", "upstreams[0].reject: must be an object");
    parse_fails("", "\"reject\": {\"code\": 429}", "upstreams[0].reject.code: unknown key");
    parse_fails("", "\"reject\": {\"body\": 5}", "upstreams[0].reject.body: 5 is not a string");
    parse_fails("", "\"reject\": {\"body\": \"x\", \"content_type\": \"text/plain\\r\\nX-Evil: 1\"}",
                "upstreams[0].reject.content_type: \"text/plain\\x0d\\nX-Evil: 1\" is not a media type");
    parse_fails("", "\"reject\": {\"body\": \"x\", \"content_type\": \"json\"}",
                "upstreams[0].reject.content_type: \"json\" is not a media type");
    parse_fails("", "\"reject\": {\"body\": \"x\", \"content_type\": \"text/\"}",
                "is not a media type");
    parse_fails("", "\"reject\": {\"body\": \"x\", \"content_type\": \"text/plain;\"}",
                "is not a media type");
    parse_fails("", "\"reject\": {\"body\": \"x\", \"content_type\": \"te xt/plain\"}",
                "is not a media type");
    parse_fails("", "\"reject\": {\"content_type\": \"text/plain\"}",
                "upstreams[0].reject.content_type: applies only with \"body\"");

    /* 8 KiB of body is the most. */
    char *up = malloc(9000 + 64);
    assert_non_null(up);
    strcpy(up, "\"reject\": {\"content_type\": \"text/plain\", \"body\": \"");
    size_t o = strlen(up);
    memset(up + o, 'x', 8192);
    strcpy(up + o + 8192, "\"}");
    c = parse_ok("", up);
    assert_int_equal(strlen(c->upstreams[0].reject_body), 8192);
    sl_config_free(c);
    memset(up + o, 'x', 8193);
    strcpy(up + o + 8193, "\"}");
    parse_fails("", up, "upstreams[0].reject.body: is 8193 bytes long: at most 8 KiB");
    free(up);
}

static void test_rule_names_printable_ascii(void **state)
{
    struct sl_config *c;
    (void)state;
    c = parse_ok("", "\"rules\": [{\"name\": \"a-Z_0.9~!$&'()*+/:<>?@[]^`{|}\","
                 " \"limit\": 1, \"window\": \"1s\"}]");
    sl_config_free(c);
    static const char *const bad[] = {
        "caf\\u00e9", "tab\\there", "bell\\u0007", "del\\u007f", "new\\nline",
        "cr\\r", " lead", "sp ace", "semi;colon", "com,ma", "eq=", "quo\\\"te",
        "back\\\\slash", "", "x2345678901234567890123456789012345678901234567890123456789012345",
        "nul\\u0000", "\\u2028",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char up[256];
        snprintf(up, sizeof(up), "\"rules\": [{\"name\": \"%s\", \"limit\": 1,"
                 " \"window\": \"1s\"}]", bad[i]);
        print_message("%s\n", bad[i]);
        /* (A NUL in a string is a syntax error in jansson's strict mode.) */
        parse_fails("", up, strcmp(bad[i], "nul\\u0000") == 0 ? "t:1:"
                                                             : "upstreams[0].rules[0].name: ");
    }
    parse_fails("", "\"rules\": [{\"name\": \"caf\\u00e9\", \"limit\": 1, \"window\": \"1s\"}]",
                "upstreams[0].rules[0].name: \"caf\\xc3\\xa9\" must be 1 to 64 visible ASCII");
    parse_fails("", "\"rules\": [{\"name\": \"a\\u001b[31mred\", \"limit\": 1, \"window\": \"1s\"}]",
                "\"a\\x1b[31mred\" must be");
}

static void test_methods_any_case(void **state)
{
    struct sl_config *c;
    (void)state;
    c = parse_ok("", "\"rules\": [{\"methods\": [\"get\", \"Post\", \"pAtCh\", \"PROPFIND\"],"
                 " \"limit\": 1, \"window\": \"1s\"}]");
    const struct sl_rule *r = &c->upstreams[0].rules[0];
    assert_int_equal(r->nmethods, 4);
    assert_string_equal(r->methods[0], "GET");
    assert_string_equal(r->methods[1], "POST");
    assert_string_equal(r->methods[2], "PATCH");
    assert_string_equal(r->methods[3], "PROPFIND");
    sl_config_free(c);
    parse_fails("", "\"rules\": [{\"methods\": [\"GE T\"], \"limit\": 1, \"window\": \"1s\"}]",
                "upstreams[0].rules[0].methods[0]: \"GE T\" is not a method name");
    parse_fails("", "\"rules\": [{\"methods\": [\"G\\u00c9T\"], \"limit\": 1, \"window\": \"1s\"}]",
                "upstreams[0].rules[0].methods[0]: \"G\\xc3\\x89T\" is not a method name");
    parse_fails("", "\"rules\": [{\"methods\": [\"\"], \"limit\": 1, \"window\": \"1s\"}]",
                "upstreams[0].rules[0].methods[0]: \"\" is not a method name");
}

static void test_prefixes(void **state)
{
    (void)state;
    static const char *const good[] = {
        "/", "/a", "/a/b-c_d.e~f", "/v1:beta", "/@me", "/a!$&'()+,=", "/.well-known",
        "/a..b", "/A/B",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char text[256];
        struct sl_errors e = {0};
        struct sl_config *c;
        snprintf(text, sizeof(text), "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"%s\","
                 " \"url\": \"http://x\"}]}", good[i]);
        print_message("%s\n", good[i]);
        assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
        sl_config_free(c);
    }
    static const struct { const char *prefix, *why; } bad[] = {
        {"leads", "must start with \"/\""},
        {"", "must start with \"/\""},
        {"/a/", "must not end with \"/\""},
        {"/a%2Fb", "holds '%'"},
        {"/a%2e%2e", "holds '%'"},
        {"/a b", "holds a space"},
        {"/a\\\\b", "holds '\\'"},
        {"/a;b", "holds ';'"},
        {"/a?b", "holds '?'"},
        {"/a#b", "holds '#'"},
        {"/a*", "holds '*'"},
        {"/a\\tb", "holds byte 0x09"},
        {"/a\\r\\nb", "holds byte 0x0d"},
        {"/caf\\u00e9", "holds byte 0xc3"},
        {"/a//b", "holds \"//\""},
        {"//a", "holds \"//\""},
        {"/a/./b", "holds a segment of dots"},
        {"/a/..", "holds a segment of dots"},
        {"/..", "holds a segment of dots"},
        {"/.", "holds a segment of dots"},
        {"/a/...", "holds a segment of dots"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[256], want[128];
        struct sl_errors e = {0};
        struct sl_config *c;
        snprintf(text, sizeof(text), "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"%s\","
                 " \"url\": \"http://x\"}]}", bad[i].prefix);
        print_message("%s\n", bad[i].prefix);
        assert_int_equal(sl_config_parse(text, "t", false, &c, &e), -1);
        snprintf(want, sizeof(want), "upstreams[0].prefix: ");
        assert_true(has_error(&e, want));
        if (!has_error(&e, bad[i].why)) {
            print_error("%s\n", e.lines[0]);
            fail();
        }
        assert_lines_printable(&e);
        sl_errors_free(&e);
    }
}

static void test_dead_patterns(void **state)
{
    struct sl_config *c;
    (void)state;
    c = parse_ok("", "\"rules\": [{\"path\": \"/a/{x}/**\", \"limit\": 1, \"window\": \"1s\"},"
                 "{\"path\": \"/files/*\", \"limit\": 1, \"window\": \"1s\"},"
                 "{\"path\": \"/caf\\u00e9/x.json\", \"limit\": 1, \"window\": \"1s\"},"
                 "{\"path\": \"/v1.2/a..b/{id}\", \"limit\": 1, \"window\": \"1s\"},"
                 "{\"path\": \"/\", \"limit\": 1, \"window\": \"1s\"}]");
    sl_config_free(c);
    static const struct { const char *path, *why; } bad[] = {
        {"//a", "holds \"//\""},
        {"/a//b", "holds \"//\""},
        {"/a/**//b", "holds \"//\""},
        {"/a/./b", "holds a segment of dots"},
        {"/a/../b", "holds a segment of dots"},
        {"/..", "holds a segment of dots"},
        {"/a/...", "holds a segment of dots"},
        {"/a\\\\b", "holds '\\'"},
        {"/a;jsessionid=1", "holds ';'"},
        {"/a%2Fb", "holds '%'"},
        {"/a%20b", "holds '%'"},
        {"/a?x=1", "holds '?'"},
        {"/a#top", "holds '#'"},
        {"/a b", "holds a space"},
        {"/a\\tb", "holds byte 0x09"},
        {"/a\\u007f", "holds byte 0x7f"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char up[256], want[200];
        snprintf(up, sizeof(up), "\"rules\": [{\"path\": \"%s\", \"limit\": 1,"
                 " \"window\": \"1s\"}]", bad[i].path);
        print_message("%s\n", bad[i].path);
        snprintf(want, sizeof(want), "upstreams[0].rules[0].path: ");
        parse_fails("", up, want);
        parse_fails("", up, bad[i].why);
        parse_fails("", up, "the rule could never match");
    }
    parse_fails("", "\"rules\": [{\"path\": \"api/login\", \"limit\": 1, \"window\": \"1s\"}]",
                "upstreams[0].rules[0].path: \"api/login\" must start with \"/\"");
}

static void test_upstream_urls(void **state)
{
    (void)state;
    static const struct { const char *url, *stored; } good[] = {
        {"http://h", "http://h"},
        {"https://api.example.com/", "https://api.example.com"},
        {"http://127.0.0.1:9000", "http://127.0.0.1:9000"},
        {"http://[::1]:8080/base/", "http://[::1]:8080/base"},
        {"http://[2001:db8::a:1]", "http://[2001:db8::a:1]"},
        {"http://[::ffff:10.0.0.1]:1/x", "http://[::ffff:10.0.0.1]:1/x"},
        {"https://h.example./x", "https://h.example./x"},
        {"http://my_service:80", "http://my_service:80"},
        {"http://h/base/v1.2/x-y~z", "http://h/base/v1.2/x-y~z"},
        {"http://h:65535", "http://h:65535"},
        {"http://h/a@b/c:d/e*f", "http://h/a@b/c:d/e*f"},
        {"http://h/...x", "http://h/...x"},
        {"http://0.0.0.0", "http://0.0.0.0"},
        {"http://10.0.0.1.nip.io", "http://10.0.0.1.nip.io"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char up[256];
        struct sl_config *c;
        struct sl_errors e = {0};
        snprintf(up, sizeof(up), "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\","
                 " \"url\": \"%s\"}]}", good[i].url);
        print_message("%s\n", good[i].url);
        assert_int_equal(sl_config_parse(up, "t", false, &c, &e), 0);
        assert_string_equal(c->upstreams[0].url, good[i].stored);
        sl_config_free(c);
    }
    static const struct { const char *url, *why; } bad[] = {
        {"http://h%2F../x", "has a host that is neither"},
        {"http://h/%2e%2e/x", "has '%' in its path"},
        {"http://h/a/../x", "holds a \".\" or \"..\" segment in its path"},
        {"http://h/./x", "segment in its path"},
        {"http://h/a/..", "segment in its path"},
        {"http://h//x", "holds \"//\""},
        {"http://h/a\\\\b", "has '\\' in its path"},
        {"http://h/a;b", "has ';' in its path"},
        {"http://h/a b", "has a space in its path"},
        {"http://h/a\\tb", "has byte 0x09 in its path"},
        {"http://h/caf\\u00e9", "has byte 0xc3 in its path"},
        {"http://u:p@h/", "holds a user name or password"},
        {"http://u@h", "holds a user name or password"},
        {"http://h:0", "has a port that is not"},
        {"http://h:65536", "has a port that is not"},
        {"http://h:", "has a port that is not"},
        {"http://h:8o", "has a port that is not"},
        {"http://h:+80", "has a port that is not"},
        {"http://h:000080", "has a port that is not"},
        {"http://[::1", "IPv6"},
        {"http://[::1]x", "has a port that is not"},
        {"http://[fe80::1%25eth0]", "IPv6"},
        {"http://[zz::1]", "IPv6"},
        {"http://[]", "IPv6"},
        {"http://::1", "must be an http:// or https:// URL"},
        {"http://-h", "has a host that is neither"},
        {"http://h-.example", "has a host that is neither"},
        {"http://a..b", "has a host that is neither"},
        {"http://.a", "has a host that is neither"},
        {"http://1.2.3", "has a host that is neither"},
        {"http://256.1.1.1", "has a host that is neither"},
        {"http://010.0.0.1", "has a host that is neither"},
        {"http://1.2.3.4.", "has a host that is neither"},
        {"http://123", "has a host that is neither"},
        {"http://caf\\u00e9.example", "has a host that is neither"},
        {"http://h\\r\\nX: y", "has a host that is neither"},
        {"http://h\\\\evil", "has a host that is neither"},
        {"ftp://x", "must be an http:// or https:// URL"},
        {"HTTP://x", "must be an http:// or https:// URL"},
        {"http://", "must be an http:// or https:// URL"},
        {"http:///x", "must be an http:// or https:// URL"},
        {"http://h?q", "must be an http:// or https:// URL"},
        {"http://h/x#f", "must be an http:// or https:// URL"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[256];
        struct sl_errors e = {0};
        struct sl_config *c;
        snprintf(text, sizeof(text), "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\","
                 " \"url\": \"%s\"}]}", bad[i].url);
        print_message("%s\n", bad[i].url);
        assert_int_equal(sl_config_parse(text, "t", false, &c, &e), -1);
        assert_int_equal(e.count, 1);
        assert_non_null(strstr(e.lines[0], "upstreams[0].url: \""));
        if (strstr(e.lines[0], bad[i].why) == NULL) {
            print_error("%s\n", e.lines[0]);
            fail();
        }
        assert_lines_printable(&e);
        sl_errors_free(&e);
    }
}

static void test_duration_bounds(void **state)
{
    struct sl_config *c;
    (void)state;
    /* The longest accepted of each. */
    c = parse_ok("\"store_timeout\": \"60s\", \"concurrency_lease\": \"1h\","
                 "\"shutdown_timeout\": \"1h\", \"client_timeout\": \"24h\"",
                 "\"default_pause\": \"7d\", \"max_wait\": \"24h\", \"connect_timeout\": \"10m\","
                 "\"timeout\": \"24h\", \"limit_signals\": [{\"status\": 403, \"pause\": 604800}],"
                 "\"rules\": [{\"limit\": 1, \"window\": \"366d\", \"max_wait\": 86400}]");
    const struct sl_upstream_conf *u = &c->upstreams[0];
    assert_int_equal(c->store_timeout_us, 60 * SL_USEC_PER_SEC);
    assert_int_equal(c->lease_ttl_us, 3600 * SL_USEC_PER_SEC);
    assert_int_equal(c->shutdown_timeout_us, 3600 * SL_USEC_PER_SEC);
    assert_int_equal(c->client_timeout_us, 86400 * SL_USEC_PER_SEC);
    assert_int_equal(u->default_pause_us, 7 * 86400 * SL_USEC_PER_SEC);
    assert_int_equal(u->signals[0].pause_us, 7 * 86400 * SL_USEC_PER_SEC);
    assert_int_equal(u->max_wait_us, 86400 * SL_USEC_PER_SEC);
    assert_int_equal(u->rules[0].max_wait_us, 86400 * SL_USEC_PER_SEC);
    assert_int_equal(u->connect_timeout_us, 600 * SL_USEC_PER_SEC);
    assert_int_equal(u->timeout_us, 86400 * SL_USEC_PER_SEC);
    sl_config_free(c);

    c = parse_ok("\"shutdown_timeout\": 0", "\"timeout\": 0, "
                 "\"rules\": [{\"limit\": 1, \"window\": 0.001}, {\"limit\": 1, \"window\": 0.1}]");
    assert_int_equal(c->shutdown_timeout_us, 0);
    assert_int_equal(c->upstreams[0].timeout_us, 0);
    assert_int_equal(c->upstreams[0].rules[0].window_us, 1000);
    assert_int_equal(c->upstreams[0].rules[1].window_us, 100000);   /* exact */
    sl_config_free(c);

    parse_fails("", "\"default_pause\": \"8d\"", "upstreams[0].default_pause: \"8d\" is too long: at most 7d");
    parse_fails("", "\"limit_signals\": [{\"status\": 403, \"pause\": \"30d\"}]",
                "upstreams[0].limit_signals[0].pause: \"30d\" is too long: at most 7d");
    parse_fails("", "\"max_wait\": \"25h\"", "upstreams[0].max_wait: \"25h\" is too long: at most 1d");
    parse_fails("", "\"rules\": [{\"concurrency\": 1, \"max_wait\": \"2d\"}]",
                "upstreams[0].rules[0].max_wait: \"2d\" is too long: at most 1d");
    parse_fails("", "\"connect_timeout\": \"11m\"", "upstreams[0].connect_timeout: \"11m\" is too long: at most 10m");
    parse_fails("", "\"connect_timeout\": 601", "upstreams[0].connect_timeout: 601 is too long: at most 10m");
    parse_fails("", "\"timeout\": \"25h\"", "upstreams[0].timeout: \"25h\" is too long: at most 1d");
    parse_fails("\"store_timeout\": \"61s\"", "", "store_timeout: \"61s\" is too long: at most 1m");
    parse_fails("\"store_timeout\": \"0.5ms\"", "", "store_timeout: \"0.5ms\" is too short: at least 1ms");
    parse_fails("\"concurrency_lease\": \"2h\"", "", "concurrency_lease: \"2h\" is too long: at most 1h");
    parse_fails("\"concurrency_lease\": \"100ms\"", "", "concurrency_lease: \"100ms\" is too short: at least 300ms");
    parse_fails("\"shutdown_timeout\": \"61m\"", "", "shutdown_timeout: \"61m\" is too long: at most 1h");
    parse_fails("\"client_timeout\": \"2d\"", "", "client_timeout: \"2d\" is too long: at most 1d");
    parse_fails("\"client_timeout\": 0.5", "", "client_timeout: 0.5 is too short: at least 1s");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": \"367d\"}]",
                "upstreams[0].rules[0].window: \"367d\" is too long: at most 366d");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": \"0.5ms\"}]",
                "upstreams[0].rules[0].window: \"0.5ms\" is too short: at least 1ms");
    /* Beyond what sluice can count at all: still a clean sentence. */
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": \"99999999999999999999999d\"}]",
                "upstreams[0].rules[0].window: \"99999999999999999999999d\" is too long: at most 366d");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": 9223372036854775807}]",
                "upstreams[0].rules[0].window: 9223372036854775807 is too long");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": -9223372036854775807}]",
                "upstreams[0].rules[0].window: -9223372036854775807 must be more than zero");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": 1e300}]",
                "upstreams[0].rules[0].window: 1e+300 is too long");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": \"1e3s\"}]",
                "upstreams[0].rules[0].window: \"1e3s\" is not a duration");
    parse_fails("", "\"rules\": [{\"limit\": 1, \"window\": \".5s\"}]",
                "upstreams[0].rules[0].window: \".5s\" is not a duration");
}

/* A unique temporary directory for ca_file tests. */
static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_ca_file(void **state)
{
    char dir[] = "/tmp/sl-test-ca-XXXXXX", pem[64], crlf[64], none[64], up[256];
    struct sl_config *c;
    (void)state;

    assert_non_null(mkdtemp(dir));
    snprintf(pem, sizeof(pem), "%s/ca.pem", dir);
    snprintf(crlf, sizeof(crlf), "%s/crlf.pem", dir);
    snprintf(none, sizeof(none), "%s/key.pem", dir);
    write_file(pem, "# bundle\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    write_file(crlf, "-----BEGIN CERTIFICATE-----\r\nMIIB\r\n-----END CERTIFICATE-----\r\n");
    write_file(none, "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n");

    snprintf(up, sizeof(up), "\"ca_file\": \"%s\"", pem);
    c = parse_ok("", up);
    assert_string_equal(c->upstreams[0].ca_file, pem);
    sl_config_free(c);
    snprintf(up, sizeof(up), "\"ca_file\": \"%s\"", crlf);
    c = parse_ok("", up);
    sl_config_free(c);

    snprintf(up, sizeof(up), "\"ca_file\": \"%s\"", none);
    parse_fails("", up, "holds no PEM certificate");
    snprintf(up, sizeof(up), "\"ca_file\": \"%s\"", dir);
    parse_fails("", up, "is a directory");
    snprintf(up, sizeof(up), "\"ca_file\": \"%s/missing.pem\"", dir);
    parse_fails("", up, "cannot be read: No such file or directory");
    parse_fails("", "\"ca_file\": \"/dev/null\"", "upstreams[0].ca_file: \"/dev/null\" is not a regular file");
    write_file(none, "");
    snprintf(up, sizeof(up), "\"ca_file\": \"%s\"", none);
    parse_fails("", up, "holds no PEM certificate");

    unlink(pem);
    unlink(crlf);
    unlink(none);
    rmdir(dir);
}

/* Values with control characters are echoed escaped, never raw. */
static void test_errors_never_echo_raw_bytes(void **state)
{
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;
    assert_int_equal(sl_config_parse(
        "{\"listen\": \"\\u001b]0;pwned\\u0007\", \"colo\\nr\": 1, \"upstreams\": [{"
        "\"name\": \"a\\rb\", \"prefix\": \"/\\u0000x\", \"url\": \"http://h/\\u009b\","
        "\"on_limit\": \"q\\tq\", \"rules\": [{\"per\": \"\\u00ff\", \"limit\": 1, \"window\": \"1\\ns\"}]}]}",
        "t", false, &c, &e), -1);
    assert_true(e.count >= 1);
    assert_lines_printable(&e);
    sl_errors_free(&e);

    assert_int_equal(sl_config_parse(
        "{\"colo\\nr\": 1, \"upstreams\": [{"
        "\"name\": \"a\\rb\", \"prefix\": \"/\\u0001x\", \"url\": \"http://h/\\u009b\","
        "\"on_limit\": \"q\\tq\", \"rules\": [{\"per\": \"\\u00ff\", \"limit\": 1, \"window\": \"1\\ns\"}]}]}",
        "t", false, &c, &e), -1);
    assert_true(has_error(&e, "(root): unknown key \"colo\\nr\""));
    assert_true(has_error(&e, "upstreams[0].name: \"a\\x0db\" must be"));
    assert_true(has_error(&e, "upstreams[0].prefix: \"/\\x01x\" holds byte 0x01"));
    assert_true(has_error(&e, "upstreams[0].url: \"http://h/\\xc2\\x9b\" has byte 0xc2"));
    assert_true(has_error(&e, "upstreams[0].on_limit: \"q\\tq\" must be"));
    assert_true(has_error(&e, "upstreams[0].rules[0].window: \"1\\ns\" is not a duration"));
    assert_lines_printable(&e);
    sl_errors_free(&e);

    /* jansson's own syntax messages quote the bad bytes: escaped too
     * (found by fuzz_config). */
    assert_int_equal(sl_config_parse("{\"name\"\x15\xf4\x1b[2J}", "f\x1b.json", false,
                                     &c, &e), -1);
    assert_int_equal(e.count, 1);
    assert_true(strncmp(e.lines[0], "f\\x1b.json:1:", 13) == 0);
    assert_lines_printable(&e);
    sl_errors_free(&e);
}

/* The most upstreams a configuration may have: duplicates are found
 * through hash sets, not pairs; one more is refused with its reason. */
static void test_many_upstreams(void **state)
{
    const size_t n = SL_MAX_UPSTREAMS;
    size_t cap = n * 96 + 256, o = 0;
    char *text = malloc(cap);
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;

    assert_non_null(text);
    o += (size_t)snprintf(text + o, cap - o, "{\"upstreams\": [");
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(text + o, cap - o,
                              "%s{\"name\": \"u%zu\", \"prefix\": \"/p/%zu\", "
                              "\"url\": \"http://h%zu\"}", i ? "," : "", i, i, i);
    snprintf(text + o, cap - o, "]}");
    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    assert_int_equal(c->nupstreams, n);
    assert_string_equal(c->upstreams[n - 1].prefix, "/p/4095");
    sl_config_free(c);

    /* The last two reuse a name and a prefix of early ones. */
    o -= 0;
    snprintf(text + o, cap - o, ",{\"name\": \"u7\", \"prefix\": \"/q\", \"url\": \"http://h\"},"
             "{\"name\": \"v\", \"prefix\": \"/p/12\", \"url\": \"http://h\"}]}");
    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), -1);
    assert_int_equal(e.count, 3);
    assert_true(has_error(&e, "upstreams: 4098 upstreams; at most 4096"));
    assert_true(has_error(&e, "upstreams[4096].name: \"u7\" is already the name of upstreams[7]"));
    assert_true(has_error(&e, "upstreams[4097].prefix: \"/p/12\" is already the prefix of upstreams[12]"));
    sl_errors_free(&e);
    free(text);
}

static void test_duplicate_rule_names(void **state)
{
    (void)state;
    parse_fails("", "\"rules\": [{\"name\": \"x\", \"concurrency\": 1},"
                "{\"name\": \"y\", \"concurrency\": 1}, {\"name\": \"x\", \"concurrency\": 2}]",
                "upstreams[0].rules[2].name: \"x\" is already the name of rules[0]");
    /* A default name taken by hand counts too. */
    parse_fails("", "\"rules\": [{\"concurrency\": 1}, {\"name\": \"rule-0\", \"concurrency\": 1}]",
                "upstreams[0].rules[1].name: \"rule-0\" is already the name of rules[0]");
}

static void test_store_and_listen_numbers_are_digits(void **state)
{
    struct sl_config cf;
    const char *why;
    char *host;
    int port;
    (void)state;
    assert_int_equal(sl_config_split_listen("h: 80", &host, &port), -1);
    assert_int_equal(sl_config_split_listen("h:+80", &host, &port), -1);
    assert_int_equal(sl_config_split_listen("h:", &host, &port), -1);
    static const char *const bad[] = {"redis://h: 1", "redis://h:+1", "redis://h:1/ 2",
                                      "redis://h:1/+2", "redis://[::1]x", "redis://h:99999999999999999999", NULL};
    for (int i = 0; bad[i]; i++) {
        memset(&cf, 0, sizeof(cf));
        print_message("%s\n", bad[i]);
        assert_int_equal(sl_config_parse_redis_url(bad[i], &cf, &why), -1);
        free(cf.redis_host);
    }
}

#define UP1 "\"upstreams\": [{\"name\": \"a\", \"prefix\": \"/a\", " \
            "\"url\": \"http://x\", \"rules\": [{\"name\": \"daily\", " \
            "\"limit\": 10, \"window\": \"1d\"}, {\"name\": \"c\", " \
            "\"concurrency\": 2}]}]"

static void test_operator_view_keys(void **state)
{
    const char *text =
        "{\"app\": \"header:X-Sluice-App\", \"max_apps\": 7, \"log_format\": \"json\","
        "\"admin\": {\"listen\": \"0.0.0.0:9901\", \"token\": \"0123456789abcdef\","
        "  \"warn\": 0.7, \"critical\": 0.95, \"top\": 5},"
        "\"alerts\": [{\"url\": \"http://hooks.example/x\"},"
        "  {\"url\": \"https://h/y\", \"at\": [1.0, 0.5], \"rules\": [\"daily\"],"
        "   \"events\": [\"store\"], \"headers\": {\"X-Key\": \"k\"}}],"
        "\"upstreams\": [{\"name\": \"a\", \"prefix\": \"/a\", \"url\": \"http://x\","
        "  \"rules\": [{\"name\": \"daily\", \"limit\": 10, \"window\": \"1d\"},"
        "               {\"name\": \"c\", \"concurrency\": 2}]},"
        " {\"name\": \"b\", \"prefix\": \"/b\", \"url\": \"http://x\", \"app\": \"client_ip\","
        "  \"forward_app_header\": true}]}";
    struct sl_errors e = {0};
    struct sl_config *c;
    (void)state;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    assert_int_equal(c->app_kind, SL_APP_HEADER);
    assert_string_equal(c->app_header, "X-Sluice-App");
    assert_int_equal(c->max_apps, 7);
    assert_int_equal(c->log_format, SL_LOG_FORMAT_JSON);
    assert_int_equal(c->admin_port, 9901);
    assert_string_equal(c->admin_token, "0123456789abcdef");
    assert_true(c->warn_at == 0.7 && c->critical_at == 0.95);
    assert_int_equal(c->status_top, 5);
    /* The upstream inherits the top level's app; b has its own. */
    assert_int_equal(c->upstreams[0].app_kind, SL_APP_HEADER);
    assert_string_equal(c->upstreams[0].app_header, "X-Sluice-App");
    assert_false(c->upstreams[0].forward_app_header);
    assert_int_equal(c->upstreams[1].app_kind, SL_APP_CLIENT_IP);
    assert_true(c->upstreams[1].forward_app_header);
    /* Receivers: defaults, sorted thresholds, events, headers. */
    assert_int_equal(c->nalerts, 2);
    assert_int_equal(c->alerts[0].nat, 3);
    assert_true(c->alerts[0].on_pause && c->alerts[0].on_store);
    assert_true(c->alerts[1].at[0] == 0.5 && c->alerts[1].at[1] == 1.0);
    assert_false(c->alerts[1].on_pause);
    assert_true(c->alerts[1].on_store);
    assert_string_equal(c->alerts[1].headers[0], "X-Key: k");
    /* The rules' thresholds: the union of the receivers naming them. */
    const struct sl_rule *daily = &c->upstreams[0].rules[0];
    assert_int_equal(daily->nalert_at, 4);
    assert_true(daily->alert_at[0] == 0.5 && daily->alert_at[1] == 0.8 &&
                daily->alert_at[2] == 0.9 && daily->alert_at[3] == 1.0);
    assert_int_equal(c->upstreams[0].rules[1].nalert_at, 3);
    sl_config_free(c);

    /* Loopback needs no token; no admin key, no listener. */
    assert_int_equal(sl_config_parse("{\"admin\": {\"listen\": \"127.0.0.1:9901\"}," UP1 "}",
                                     "t", false, &c, &e), 0);
    assert_null(c->admin_token);
    assert_int_equal(c->nadmin_hosts, 0);
    sl_config_free(c);
    assert_int_equal(sl_config_parse("{\"admin\": {\"listen\": \"127.9.8.7:9901\", "
                                     "\"hosts\": [\"Sluice.Internal\", \"*\"]}," UP1 "}",
                                     "t", false, &c, &e), 0);
    assert_int_equal(c->nadmin_hosts, 2);
    assert_string_equal(c->admin_hosts[0], "sluice.internal");
    assert_string_equal(c->admin_hosts[1], "*");
    sl_config_free(c);
    assert_int_equal(sl_config_parse("{\"admin\": {\"listen\": \"[::1]:9901\"}," UP1 "}",
                                     "t", false, &c, &e), 0);
    assert_int_equal(c->upstreams[0].app_kind, SL_APP_NOBODY);
    sl_config_free(c);
    assert_int_equal(sl_config_parse("{" UP1 "}", "t", false, &c, &e), 0);
    assert_null(c->admin_listen);
    assert_int_equal(c->nalerts, 0);
    sl_config_free(c);
}

static void test_operator_view_errors(void **state)
{
    static const struct {
        const char *json, *error;
    } cases[] = {
        {"\"admin\": {\"listen\": \"0.0.0.0:9901\"}", "admin.token: required because"},
        {"\"admin\": {\"listen\": \"[::]:9901\"}", "admin.token: required because"},
        /* Loopback by address, not by a name that starts like one. */
        {"\"admin\": {\"listen\": \"127.0.0.1.example:9901\"}",
         "admin.token: required because"},
        {"\"admin\": {\"listen\": \"127.1:9901\"}", "admin.token: required because"},
        {"\"admin\": {\"listen\": \"[::ffff:10.0.0.1]:9901\"}",
         "admin.token: required because"},
        {"\"admin\": {\"listen\": \"127.0.0.1:1\", \"hosts\": \"x\"}",
         "admin.hosts: must be an array"},
        {"\"admin\": {\"listen\": \"127.0.0.1:1\", \"hosts\": [\"a b\"]}",
         "admin.hosts[0]: \"a b\" must be a host name"},
        {"\"admin\": {\"listen\": \"10.0.0.1:9901\", \"token\": \"short\"}",
         "admin.token: must be 16 to 256"},
        {"\"admin\": {}", "admin.listen: missing"},
        {"\"admin\": {\"listen\": \"nope\"}", "admin.listen: \"nope\" is not HOST:PORT"},
        {"\"admin\": {\"listen\": \"127.0.0.1:1\", \"warn\": 0.9, \"critical\": 0.8}",
         "admin.warn: must be below admin.critical"},
        {"\"admin\": {\"listen\": \"127.0.0.1:1\", \"warn\": 1.5}", "admin.warn: 1.5 must be"},
        {"\"admin\": {\"listen\": \"127.0.0.1:8080\"}", "admin.listen: must differ from listen"},
        {"\"admin\": {\"listen\": \"127.0.0.1:1\", \"tokn\": \"x\"}", "admin.tokn: unknown key"},
        {"\"app\": \"cookie:x\"", "app: \"cookie:x\" must be"},
        {"\"app\": \"header:\"", "app: \"header:\" must be"},
        {"\"log_format\": \"xml\"", "log_format: \"xml\" must be"},
        {"\"max_apps\": 0", "max_apps: 0 must be between"},
        {"\"alerts\": {}", "alerts: must be an array"},
        {"\"alerts\": [{}]", "alerts[0].url: missing"},
        {"\"alerts\": [{\"url\": \"ftp://x\"}]", "alerts[0].url:"},
        {"\"alerts\": [{\"url\": \"http://h\", \"at\": [0]}]", "alerts[0].at[0]: 0 must be"},
        {"\"alerts\": [{\"url\": \"http://h\", \"at\": []}]", "alerts[0].at: must be an array"},
        {"\"alerts\": [{\"url\": \"http://h\", \"rules\": [\"nope\"]}]",
         "alerts[0].rules[0]: \"nope\" is not the name of any rule"},
        {"\"alerts\": [{\"url\": \"http://h\", \"events\": [\"fire\"]}]",
         "alerts[0].events[0]: \"fire\" must be"},
        {"\"alerts\": [{\"url\": \"http://h\", \"headers\": {\"X\": \"a\\nb\"}}]",
         "alerts[0].headers.\"X\": must be a header name"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[1024];
        struct sl_errors e = {0};
        struct sl_config *c = NULL;
        snprintf(text, sizeof(text), "{%s, " UP1 "}", cases[i].json);
        if (sl_config_parse(text, "t", false, &c, &e) == 0 || !has_error(&e, cases[i].error)) {
            print_error("case %zu (%s): expected \"%s\", got:\n", i, cases[i].json,
                        cases[i].error);
            for (size_t k = 0; k < e.count; k++)
                print_error("  %s\n", e.lines[k]);
            fail();
        }
        sl_errors_free(&e);
    }
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
        cmocka_unit_test(test_new_key_defaults),
        cmocka_unit_test(test_new_keys_spellings),
        cmocka_unit_test(test_new_keys_errors),
        cmocka_unit_test(test_reject),
        cmocka_unit_test(test_rule_names_printable_ascii),
        cmocka_unit_test(test_methods_any_case),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_dead_patterns),
        cmocka_unit_test(test_upstream_urls),
        cmocka_unit_test(test_leaky_bucket_keys),
        cmocka_unit_test(test_cost_keys),
        cmocka_unit_test(test_duration_bounds),
        cmocka_unit_test(test_ca_file),
        cmocka_unit_test(test_errors_never_echo_raw_bytes),
        cmocka_unit_test(test_many_upstreams),
        cmocka_unit_test(test_duplicate_rule_names),
        cmocka_unit_test(test_store_and_listen_numbers_are_digits),
        cmocka_unit_test(test_operator_view_keys),
        cmocka_unit_test(test_operator_view_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
