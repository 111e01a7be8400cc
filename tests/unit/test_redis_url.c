/* Unit tests: store URLs read into servers and credentials, good and bad
 * spellings, and the write-back that reads back the same. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sl_redis_url.h"

static struct sl_redis_url parse_ok(const char *url)
{
    struct sl_redis_url u;
    const char *why = NULL;

    if (sl_redis_url_parse(url, &u, &why) != 0)
        fail_msg("%s: %s", url, why);
    return u;
}

static const char *parse_bad(const char *url)
{
    struct sl_redis_url u;
    const char *why = NULL;

    if (sl_redis_url_parse(url, &u, &why) == 0)
        fail_msg("%s was accepted", url);
    assert_non_null(why);
    /* Nothing is left allocated, nothing is left set. */
    assert_null(u.user);
    assert_null(u.password);
    assert_null(u.master);
    assert_int_equal(u.naddrs, 0);
    return why;
}

static void expect_bad(const char *url, const char *fragment)
{
    const char *why = parse_bad(url);

    if (strstr(why, fragment) == NULL)
        fail_msg("%s: \"%s\" does not say \"%s\"", url, why, fragment);
}

/* Every spelling sl_config.c's parser has accepted keeps its meaning. */
static void test_single_as_before(void **state)
{
    struct sl_redis_url u;
    (void)state;

    u = parse_ok("redis://localhost");
    assert_int_equal(u.kind, SL_REDIS_URL_SINGLE);
    assert_false(u.tls);
    assert_int_equal(u.naddrs, 1);
    assert_string_equal(u.addrs[0].host, "localhost");
    assert_int_equal(u.addrs[0].port, 6379);
    assert_int_equal(u.db, 0);
    assert_null(u.user);
    assert_null(u.password);
    assert_null(u.master);
    sl_redis_url_clear(&u);

    u = parse_ok("redis://10.0.0.5:6380/3");
    assert_string_equal(u.addrs[0].host, "10.0.0.5");
    assert_int_equal(u.addrs[0].port, 6380);
    assert_int_equal(u.db, 3);
    sl_redis_url_clear(&u);

    u = parse_ok("redis://h/");
    assert_int_equal(u.db, 0);
    sl_redis_url_clear(&u);

    u = parse_ok("redis://:secret@h:1");
    assert_null(u.user);
    assert_string_equal(u.password, "secret");
    assert_int_equal(u.addrs[0].port, 1);
    sl_redis_url_clear(&u);

    u = parse_ok("redis://app:p%40ss%3Aw%2Frd@h:65535/1000000");
    assert_string_equal(u.user, "app");
    assert_string_equal(u.password, "p@ss:w/rd");
    assert_int_equal(u.addrs[0].port, 65535);
    assert_int_equal(u.db, 1000000);
    sl_redis_url_clear(&u);

    /* The password is everything after the first ':' of the credentials. */
    u = parse_ok("redis://u:a:b@h");
    assert_string_equal(u.user, "u");
    assert_string_equal(u.password, "a:b");
    sl_redis_url_clear(&u);

    /* An empty password is a password (AUTH user ""). */
    u = parse_ok("redis://u:@h");
    assert_string_equal(u.user, "u");
    assert_string_equal(u.password, "");
    sl_redis_url_clear(&u);

    u = parse_ok("redis://:@h");
    assert_null(u.user);
    assert_string_equal(u.password, "");
    sl_redis_url_clear(&u);

    /* A '%' that starts no escape stays a '%'; raw '?', '#', ' ' in a
     * password are the password's. */
    u = parse_ok("redis://:50%off%4@h");
    assert_string_equal(u.password, "50%off%4");
    sl_redis_url_clear(&u);
    u = parse_ok("redis://:a?b#c d@h");
    assert_string_equal(u.password, "a?b#c d");
    sl_redis_url_clear(&u);

    u = parse_ok("redis://[::1]:7000/2");
    assert_string_equal(u.addrs[0].host, "::1");
    assert_int_equal(u.addrs[0].port, 7000);
    assert_int_equal(u.db, 2);
    sl_redis_url_clear(&u);

    u = parse_ok("redis://[fe80::1%eth0]");
    assert_string_equal(u.addrs[0].host, "fe80::1%eth0");
    assert_int_equal(u.addrs[0].port, 6379);
    sl_redis_url_clear(&u);

    u = parse_ok("redis://redis-0.redis_svc.default.svc.cluster.local:6379");
    assert_string_equal(u.addrs[0].host, "redis-0.redis_svc.default.svc.cluster.local");
    sl_redis_url_clear(&u);

    /* The scheme is read as any case, as URL schemes are. */
    u = parse_ok("REDIS://h");
    assert_int_equal(u.kind, SL_REDIS_URL_SINGLE);
    sl_redis_url_clear(&u);
}

static void test_tls(void **state)
{
    struct sl_redis_url u;
    (void)state;

    u = parse_ok("rediss://default:pw@cache.example.com:6380/4");
    assert_true(u.tls);
    assert_int_equal(u.kind, SL_REDIS_URL_SINGLE);
    assert_string_equal(u.user, "default");
    assert_string_equal(u.password, "pw");
    assert_string_equal(u.addrs[0].host, "cache.example.com");
    assert_int_equal(u.addrs[0].port, 6380);
    assert_int_equal(u.db, 4);
    sl_redis_url_clear(&u);

    u = parse_ok("rediss-sentinel://s1,s2/m");
    assert_true(u.tls);
    assert_int_equal(u.kind, SL_REDIS_URL_SENTINEL);
    sl_redis_url_clear(&u);

    u = parse_ok("rediss-cluster://n1:7000");
    assert_true(u.tls);
    assert_int_equal(u.kind, SL_REDIS_URL_CLUSTER);
    sl_redis_url_clear(&u);
}

static void test_sentinel(void **state)
{
    struct sl_redis_url u;
    (void)state;

    u = parse_ok("redis-sentinel://u:p@s1:26380,[::1],s3/my%20master/5");
    assert_int_equal(u.kind, SL_REDIS_URL_SENTINEL);
    assert_false(u.tls);
    assert_string_equal(u.user, "u");
    assert_string_equal(u.password, "p");
    assert_int_equal(u.naddrs, 3);
    assert_string_equal(u.addrs[0].host, "s1");
    assert_int_equal(u.addrs[0].port, 26380);
    assert_string_equal(u.addrs[1].host, "::1");
    assert_int_equal(u.addrs[1].port, 26379);  /* Sentinel's own default */
    assert_string_equal(u.addrs[2].host, "s3");
    assert_int_equal(u.addrs[2].port, 26379);
    assert_string_equal(u.master, "my master");
    assert_int_equal(u.db, 5);
    sl_redis_url_clear(&u);

    u = parse_ok("redis-sentinel://s/mymaster");
    assert_int_equal(u.naddrs, 1);
    assert_string_equal(u.master, "mymaster");
    assert_int_equal(u.db, 0);
    sl_redis_url_clear(&u);

    u = parse_ok("redis-sentinel://s/mymaster/");
    assert_int_equal(u.db, 0);
    sl_redis_url_clear(&u);

    /* Sixteen hosts fit. */
    u = parse_ok("redis-sentinel://a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p/m");
    assert_int_equal(u.naddrs, 16);
    assert_string_equal(u.addrs[15].host, "p");
    sl_redis_url_clear(&u);
}

static void test_cluster(void **state)
{
    struct sl_redis_url u;
    (void)state;

    u = parse_ok("redis-cluster://:pw@n1:7000,n2:7001,[2001:db8::7]:7002");
    assert_int_equal(u.kind, SL_REDIS_URL_CLUSTER);
    assert_null(u.user);
    assert_string_equal(u.password, "pw");
    assert_int_equal(u.naddrs, 3);
    assert_string_equal(u.addrs[2].host, "2001:db8::7");
    assert_int_equal(u.addrs[2].port, 7002);
    assert_null(u.master);
    assert_int_equal(u.db, 0);
    sl_redis_url_clear(&u);

    u = parse_ok("redis-cluster://n1");
    assert_int_equal(u.addrs[0].port, 6379);
    sl_redis_url_clear(&u);
    u = parse_ok("redis-cluster://n1/");
    sl_redis_url_clear(&u);
    u = parse_ok("redis-cluster://n1/0");
    sl_redis_url_clear(&u);
}

static void test_bad(void **state)
{
    (void)state;

    /* Not a store URL at all. */
    expect_bad("", "is not a store");
    expect_bad("memory", "is not a store");
    expect_bad("http://h", "is not a store");
    expect_bad("redis:/h", "is not a store");
    expect_bad("redis:h:6379", "is not a store");
    expect_bad("redis-sentinels://h/m", "is not a store");
    expect_bad("://h", "is not a store");

    /* Hosts. */
    expect_bad("redis://", "has no host");
    expect_bad("redis:///0", "has no host");
    expect_bad("redis://:6379", "has no host");
    expect_bad("redis://:pw@", "has no host");
    expect_bad("redis://:pw@/1", "has no host");
    expect_bad("redis://[]:6379", "has no host");
    expect_bad("redis://[::1", "unclosed IPv6");
    expect_bad("redis://[::1]6379", "other than \":port\"");
    expect_bad("redis://[::1]x:1", "other than \":port\"");
    expect_bad("redis://[hostname]", "IPv6 address in brackets");
    expect_bad("redis://[1.2.3.4]", "IPv6 address in brackets");
    expect_bad("redis://::1", "IPv6 address without brackets");
    expect_bad("redis://fe80::1:6379", "IPv6 address without brackets");
    expect_bad("redis://ho st", "character no host name has");
    expect_bad("redis://h\tx", "character no host name has");
    expect_bad("redis://h%41", "character no host name has");
    expect_bad("redis://h]", "character no host name has");
    expect_bad("redis://h?timeout=1", "query or fragment");
    expect_bad("redis://h#x", "query or fragment");
    expect_bad("redis://h,g", "several hosts");
    expect_bad("redis-cluster://a,,b", "empty host");
    expect_bad("redis-cluster://a,", "empty host");
    expect_bad("redis-cluster://,a", "empty host");
    expect_bad("redis-sentinel://a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q/m", "more than 16");

    /* Ports. */
    expect_bad("redis://h:", "port that is not a number");
    expect_bad("redis://h:0", "port that is not a number");
    expect_bad("redis://h:65536", "port that is not a number");
    expect_bad("redis://h:99999999999999999999", "port that is not a number");
    expect_bad("redis://h:+1", "port that is not a number");
    expect_bad("redis://h: 1", "port that is not a number");
    expect_bad("redis://h:-1", "port that is not a number");
    expect_bad("redis://h:63x", "port that is not a number");
    expect_bad("redis://h:6379?db=1", "query or fragment");
    expect_bad("redis://[::1]:", "port that is not a number");
    expect_bad("redis-cluster://a:1,b:x", "port that is not a number");

    /* Databases. */
    expect_bad("redis://h/x", "database that is not a number");
    expect_bad("redis://h/-1", "database that is not a number");
    expect_bad("redis://h/1000001", "database that is not a number");
    expect_bad("redis://h/0/", "database that is not a number");
    expect_bad("redis://h/ 1", "database that is not a number");
    expect_bad("redis://h/0?x=1", "query or fragment");
    expect_bad("redis-cluster://a/1", "Redis Cluster does not have");
    expect_bad("redis-cluster://a/m", "database that is not a number");

    /* Credentials. */
    expect_bad("redis://pw@h", "credentials without a ':'");
    expect_bad("redis://@h", "credentials without a ':'");
    expect_bad("redis://u:p@ss@h", "two '@'");
    expect_bad("redis://u:p/ss@h", "'@' after a '/'");
    expect_bad("redis://:p%00@h", "%00");
    expect_bad("redis://u%00:p@h", "%00");

    /* Sentinels. */
    expect_bad("redis-sentinel://s", "no master name");
    expect_bad("redis-sentinel://s/", "no master name");
    expect_bad("redis-sentinel://s//0", "no master name");
    expect_bad("redis-sentinel://s/m/x", "database that is not a number");
    expect_bad("redis-sentinel://s/m%00", "%00");
    expect_bad("redis-sentinel://s/m?x", "query or fragment");
}

/* No sentence quotes the URL: it may hold a password. */
static void test_errors_never_echo(void **state)
{
    static const char *bad[] = {
        "redis://user:hunter2@h:0", "redis://:hunter2@h/x", "redis://:hunter2@[::1",
        "rediss://:hunter2@h,g", "redis-sentinel://:hunter2@s",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_null(strstr(parse_bad(bad[i]), "hunter2"));
}

/* Writing a URL back reads back the same; without the password, "***". */
static void test_format_round_trip(void **state)
{
    static const char *urls[] = {
        "redis://h", "rediss://u:p%40ss@[::1]:7000/9", "redis://:a%2Fb%25c@h/3",
        "redis-sentinel://x:y@s1,s2:1,[fe80::1%eth0]:2/name%20with%2Fslash/4",
        "rediss-cluster://n1:7000,n2", "redis://u:@h", "redis://:50%off@h",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        struct sl_redis_url a = parse_ok(urls[i]), b;
        char buf[512], small[8];
        size_t n = sl_redis_url_format(&a, true, buf, sizeof(buf));

        assert_true(n < sizeof(buf));
        assert_int_equal(strlen(buf), n);
        b = parse_ok(buf);
        assert_int_equal(a.kind, b.kind);
        assert_int_equal(a.tls, b.tls);
        assert_int_equal(a.db, b.db);
        assert_int_equal(a.naddrs, b.naddrs);
        for (size_t k = 0; k < a.naddrs; k++) {
            assert_string_equal(a.addrs[k].host, b.addrs[k].host);
            assert_int_equal(a.addrs[k].port, b.addrs[k].port);
        }
        assert_true((a.user == NULL) == (b.user == NULL));
        if (a.user != NULL)
            assert_string_equal(a.user, b.user);
        assert_true((a.password == NULL) == (b.password == NULL));
        if (a.password != NULL)
            assert_string_equal(a.password, b.password);
        assert_true((a.master == NULL) == (b.master == NULL));
        if (a.master != NULL)
            assert_string_equal(a.master, b.master);
        /* Truncated as snprintf would. */
        assert_int_equal(sl_redis_url_format(&a, true, small, sizeof(small)), n);
        assert_int_equal(strlen(small), sizeof(small) - 1);
        sl_redis_url_clear(&b);
        sl_redis_url_clear(&a);
    }
    {
        struct sl_redis_url a = parse_ok("rediss://app:hunter2@h:6380/1");
        char buf[128];
        sl_redis_url_format(&a, false, buf, sizeof(buf));
        assert_string_equal(buf, "rediss://app:***@h:6380/1");
        sl_redis_url_clear(&a);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_as_before),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_sentinel),
        cmocka_unit_test(test_cluster),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_errors_never_echo),
        cmocka_unit_test(test_format_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
