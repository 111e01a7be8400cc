/*
 * Unit tests: the login cache (proxy/sl_login_cache.c, included to reach
 * its statics).  A digest tells apart every list of parts that differs in
 * any byte, in where parts begin, or in an absent part, and depends on the
 * process's key; an answer is served only before its expiry, copied out;
 * each rule keeps at most its bound, losing its least recently used entry
 * and never another rule's; expired slots are reused; and the figures
 * /status reads follow every lookup and store.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../proxy/sl_login_cache.c"

static void digest(const struct sl_login_cache *lc, const char *a, const char *b,
                   unsigned char out[SL_LOGIN_DIGEST])
{
    const char *parts[] = {a, b};
    size_t lens[] = {a ? strlen(a) : 0, b ? strlen(b) : 0};

    assert_int_equal(sl_login_cache_key(lc, parts, lens, 2, out), 0);
}

static void test_digests(void **state)
{
    struct sl_login_cache *lc = sl_login_cache_new(), *other = sl_login_cache_new();
    unsigned char x[SL_LOGIN_DIGEST], y[SL_LOGIN_DIGEST];

    (void)state;
    assert_non_null(lc);
    assert_non_null(other);
    digest(lc, "ab", "c", x);
    digest(lc, "ab", "c", y);
    assert_memory_equal(x, y, SL_LOGIN_DIGEST);
    digest(lc, "a", "bc", y);               /* the same bytes, split elsewhere */
    assert_memory_not_equal(x, y, SL_LOGIN_DIGEST);
    digest(lc, "ab", "d", y);
    assert_memory_not_equal(x, y, SL_LOGIN_DIGEST);
    digest(lc, "ab", NULL, x);              /* absent is not empty */
    digest(lc, "ab", "", y);
    assert_memory_not_equal(x, y, SL_LOGIN_DIGEST);
    digest(lc, "ab", "c", x);
    digest(other, "ab", "c", y);            /* another process's key */
    assert_memory_not_equal(x, y, SL_LOGIN_DIGEST);
    sl_login_cache_free(lc);
    sl_login_cache_free(other);
}

static void put(struct sl_login_cache *lc, uint64_t tag, uint32_t max, const char *k,
                int64_t now, int64_t until, const char *body)
{
    unsigned char key[SL_LOGIN_DIGEST];
    struct sl_login_answer a = {.status = 200, .content_type = "application/json",
                                .body = (char *)body, .len = strlen(body)};

    digest(lc, k, NULL, key);
    assert_int_equal(sl_login_cache_put(lc, tag, max, key, now, until, &a), 0);
}

/* The body served for K at NOW, or NULL (into BUF). */
static const char *get(struct sl_login_cache *lc, uint64_t tag, const char *k,
                       int64_t now, char *buf, size_t size)
{
    unsigned char key[SL_LOGIN_DIGEST];
    struct sl_login_answer a;
    int rc;

    digest(lc, k, NULL, key);
    rc = sl_login_cache_get(lc, tag, key, now, &a);
    assert_true(rc == 0 || rc == 1);
    if (rc == 0)
        return NULL;
    assert_int_equal(a.status, 200);
    assert_string_equal(a.content_type, "application/json");
    assert_true(a.len < size);
    memcpy(buf, a.body, a.len);
    buf[a.len] = '\0';
    free(a.body);
    free(a.content_type);
    return buf;
}

static void test_expiry_and_figures(void **state)
{
    struct sl_login_cache *lc = sl_login_cache_new();
    uint64_t tag = sl_login_cache_tag("leads", "logins");
    struct sl_login_stats st;
    char buf[64];

    (void)state;
    assert_null(get(lc, tag, "a", 1000, buf, sizeof(buf)));
    put(lc, tag, 10, "a", 1000, 5000, "{\"access_token\":\"t1\"}");
    assert_string_equal(get(lc, tag, "a", 4999, buf, sizeof(buf)),
                        "{\"access_token\":\"t1\"}");
    /* Another rule never sees it. */
    assert_null(get(lc, sl_login_cache_tag("leads", "other"), "a", 2000, buf,
                    sizeof(buf)));
    sl_login_cache_stats(lc, tag, 2000, &st);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.stored, 1);
    assert_null(get(lc, tag, "a", 5000, buf, sizeof(buf)));   /* expired */
    sl_login_cache_stats(lc, tag, 5000, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.misses, 2);
    /* Its slot is reused: the table does not grow. */
    put(lc, tag, 10, "b", 6000, 9000, "{}");
    assert_int_equal(lc->nentries, 1);
    sl_login_cache_free(lc);
}

static void test_each_rule_its_bound_lru(void **state)
{
    struct sl_login_cache *lc = sl_login_cache_new();
    uint64_t t1 = sl_login_cache_tag("leads", "logins");
    uint64_t t2 = sl_login_cache_tag("crm", "logins");
    char buf[64];

    (void)state;
    put(lc, t2, 5, "z", 0, 100000, "z");
    put(lc, t1, 2, "a", 0, 100000, "a");
    put(lc, t1, 2, "b", 0, 100000, "b");
    assert_non_null(get(lc, t1, "a", 10, buf, sizeof(buf)));  /* a: recently used */
    put(lc, t1, 2, "c", 20, 100000, "c");                     /* b goes */
    assert_null(get(lc, t1, "b", 30, buf, sizeof(buf)));
    assert_string_equal(get(lc, t1, "a", 30, buf, sizeof(buf)), "a");
    assert_string_equal(get(lc, t1, "c", 30, buf, sizeof(buf)), "c");
    assert_string_equal(get(lc, t2, "z", 30, buf, sizeof(buf)), "z");
    /* The same login answered again: the newer answer replaces it. */
    put(lc, t1, 2, "a", 40, 100000, "a2");
    assert_string_equal(get(lc, t1, "a", 50, buf, sizeof(buf)), "a2");
    assert_string_equal(get(lc, t1, "c", 50, buf, sizeof(buf)), "c");
    sl_login_cache_free(lc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_digests),
        cmocka_unit_test(test_expiry_and_figures),
        cmocka_unit_test(test_each_rule_its_bound_lru),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
