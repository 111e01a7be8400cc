/* Unit tests: the slot of a key, as Redis Cluster computes it (CRC16
 * XMODEM of the hash tag, else of the whole key, modulo 16384).  The
 * expected slots are what redis-server 7.0 answered to CLUSTER KEYSLOT
 * for the same keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sl_redis_cluster.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_slots),
        cmocka_unit_test(test_hash_tags),
        cmocka_unit_test(test_lengths_not_nul),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
