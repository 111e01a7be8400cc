/* Unit tests: the slot of a key, as Redis Cluster computes it (CRC16
 * XMODEM of the hash tag, else of the whole key, modulo 16384).  The
 * expected slots are what redis-server 7.0 answered to CLUSTER KEYSLOT
 * for the same keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "sl_redis_cluster.h"

#include <hiredis/hiredis.h>

static unsigned slot(const char *key)
{
    return sl_redis_key_slot(key, strlen(key));
}

static void test_known_slots(void **state)
{
    (void)state;
    assert_int_equal(slot("123456789"), 12739);   /* CRC16's check value 0x31C3 */
    assert_int_equal(slot("foo"), 12182);
    assert_int_equal(slot(""), 0);
    assert_int_equal(slot("leads"), 4641);
}

static void test_hash_tags(void **state)
{
    (void)state;
    /* The bytes between the first '{' and the next '}'. */
    assert_int_equal(slot("{user1000}.following"), 3443);
    assert_int_equal(slot("{user1000}.followers"), slot("user1000"));
    assert_int_equal(slot("foo{bar}{zap}"), 5061);
    assert_int_equal(slot("foo{bar}{zap}"), slot("bar"));
    assert_int_equal(slot("foo{{bar}}zap"), 4015);
    assert_int_equal(slot("foo{{bar}}zap"), slot("{bar"));
    /* An empty tag is no tag: the whole key. */
    assert_int_equal(slot("foo{}{bar}"), 8363);
    /* An unclosed brace: the whole key. */
    assert_int_equal(slot("foo{bar"), sl_redis_key_slot("foo{bar", 7));
    /* Every key of an upstream is in its name's slot. */
    assert_int_equal(slot("sluice:{leads}:r:3:all:"), slot("leads"));
    assert_int_equal(slot("sluice:{leads}:m"), slot("leads"));
    assert_int_equal(slot("sluice:auth:{leads}:token"), slot("leads"));
}

static void test_lengths_not_nul(void **state)
{
    (void)state;
    /* A key is its bytes, NUL included, not a C string. */
    const char k[] = {'a', '\0', 'b'};
    assert_int_not_equal(sl_redis_key_slot(k, 3), sl_redis_key_slot(k, 1));
    assert_int_equal(sl_redis_key_slot("{x}\0{y}", 7), slot("x"));
}

static void test_redirects(void **state)
{
    char host[64];
    int slot, port;

    (void)state;
    assert_true(sl_redis_cluster_parse_redirect("3999 127.0.0.1:6381", "s", &slot, host,
                                                sizeof(host), &port));
    assert_int_equal(slot, 3999);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6381);
    /* IPv6, and Redis 7's unknown endpoint (the answering node's host). */
    assert_true(sl_redis_cluster_parse_redirect("0 ::1:7000", "s", &slot, host,
                                                sizeof(host), &port));
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7000);
    assert_true(sl_redis_cluster_parse_redirect("16383 :7001", "10.0.0.5", &slot, host,
                                                sizeof(host), &port));
    assert_string_equal(host, "10.0.0.5");
    assert_int_equal(slot, 16383);
    /* Not redirections. */
    const char *bad[] = {"", "x 1.2.3.4:5", "16384 h:1", "-1 h:1", "1 h", "1 h:", "1 h:0",
                         "1 h:65536", "1 h:70000000000", "1 h:12x", "1 :1", "1  h:1",
                         "1 h h:1", " 1 h:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(sl_redis_cluster_parse_redirect(bad[i], "", &slot, host, sizeof(host),
                                                     &port));
    /* A host longer than the buffer is refused, not cut. */
    assert_false(sl_redis_cluster_parse_redirect(
        "1 a-host-name-that-is-far-longer-than-sixty-four-bytes.example.org.internal:1",
        "", &slot, host, sizeof(host), &port));
}

struct ranges {
    long long start[8], end[8];
    char host[8][32];
    int port[8];
    int n;
};

static int take(void *ctx, long long start, long long end, const char *host, int port)
{
    struct ranges *r = ctx;
    r->start[r->n] = start;
    r->end[r->n] = end;
    snprintf(r->host[r->n], sizeof(r->host[0]), "%s", host);
    r->port[r->n++] = port;
    return 0;
}

static int map(const char *resp, struct ranges *r)
{
    redisReader *rd = redisReaderCreate();
    void *rep = NULL;
    int rc;

    memset(r, 0, sizeof(*r));
    assert_int_equal(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    assert_int_equal(redisReaderGetReply(rd, &rep), REDIS_OK);
    assert_non_null(rep);
    rc = sl_redis_cluster_parse_map(rep, "seed", take, r);
    freeReplyObject(rep);
    redisReaderFree(rd);
    return rc;
}

static void test_slot_map(void **state)
{
    struct ranges r;

    (void)state;
    /* Four ranges as Redis 7 writes them (ids, a replica, metadata): an
     * address; an empty endpoint and a nil one (unknown-endpoint: the
     * host asked); "?" (no hostname) with the node's ip in its metadata. */
    assert_int_equal(map("*4\r\n"
                         "*4\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$1\r\na\r\n"
                         "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$1\r\nb\r\n"
                         "*3\r\n:5461\r\n:9000\r\n*3\r\n$0\r\n\r\n:7001\r\n$1\r\nc\r\n"
                         "*3\r\n:9001\r\n:10922\r\n*3\r\n$-1\r\n:7004\r\n$1\r\ne\r\n"
                         "*3\r\n:10923\r\n:16383\r\n*4\r\n$1\r\n?\r\n:7002\r\n$1\r\nd\r\n"
                         "*2\r\n$2\r\nip\r\n$8\r\n10.1.2.3\r\n",
                         &r), 0);
    assert_int_equal(r.n, 4);
    assert_true(r.start[0] == 0 && r.end[0] == 5460 && r.port[0] == 7000);
    assert_string_equal(r.host[0], "127.0.0.1");
    assert_string_equal(r.host[1], "seed");
    assert_string_equal(r.host[2], "seed");
    assert_int_equal(r.port[2], 7004);
    assert_string_equal(r.host[3], "10.1.2.3");
    assert_true(r.start[3] == 10923 && r.end[3] == 16383);
    /* "?" and no ip to go by: not a map this client can use. */
    assert_int_equal(map("*1\r\n*3\r\n:0\r\n:1\r\n*4\r\n$1\r\n?\r\n:1\r\n$1\r\nd\r\n"
                         "*2\r\n$8\r\nhostname\r\n$0\r\n\r\n", &r), -1);
    /* Not maps: an error, no range, a range out of order or past the
     * last slot, a port out of range, a host with a space. */
    assert_int_equal(map("-ERR This instance has cluster support disabled\r\n", &r), -1);
    assert_int_equal(map("*0\r\n", &r), -1);
    assert_int_equal(map("*1\r\n*3\r\n:9\r\n:1\r\n*2\r\n$1\r\nh\r\n:1\r\n", &r), -1);
    assert_int_equal(map("*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n", &r), -1);
    assert_int_equal(map("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:0\r\n", &r), -1);
    assert_int_equal(map("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$3\r\nh h\r\n:1\r\n", &r), -1);
    assert_int_equal(map("*1\r\n*3\r\n:0\r\n:1\r\n:2\r\n", &r), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_slots),
        cmocka_unit_test(test_hash_tags),
        cmocka_unit_test(test_lengths_not_nul),
        cmocka_unit_test(test_redirects),
        cmocka_unit_test(test_slot_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
