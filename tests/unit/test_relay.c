/*
 * Unit tests: the relay's byte buffers and its idea of an idempotent
 * method (proxy/sl_relay.c, included to reach its statics).
 *
 * A buffer holds at most SL_PIPE_MAX bytes per direction, so a slow reader
 * bounds the memory a call takes; an empty buffer takes any one piece
 * whole (a piece is never split for lack of room in an empty buffer).
 * Bytes come out in the order they went in, across compactions and
 * growth.  retry_on_limit sends a call again only if its method is
 * idempotent (RFC 9110, 9.2.2): never a POST or a PATCH.  A settlement
 * reads the provider's word on a call's cost from a header or the
 * body's start, and guesses nothing.
 *
 * sl_relay.c calls into libcurl and the rest of the proxy from functions
 * these tests do not reach; the test is linked with unused sections
 * dropped (tests/CMakeLists.txt).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../proxy/sl_relay.c"

/* N bytes of a pattern that differs at every offset (mod 251). */
static char *pattern(size_t from, size_t n)
{
    char *p = malloc(n ? n : 1);

    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)((from + i) % 251);
    return p;
}

static void test_bytes_come_out_in_order(void **state)
{
    struct sl_pipe b = {0};
    char out[100];
    char *in = pattern(0, 300);
    (void)state;

    assert_int_equal(sl_pipe_len(&b), 0);
    assert_int_equal(sl_pipe_put(&b, in, 100), 100);
    assert_int_equal(sl_pipe_put(&b, in + 100, 200), 200);
    assert_int_equal(sl_pipe_len(&b), 300);
    for (size_t done = 0; done < 300; done += 100) {
        assert_int_equal(sl_pipe_take(&b, out, sizeof(out)), 100);
        assert_memory_equal(out, in + done, 100);
    }
    assert_int_equal(sl_pipe_len(&b), 0);
    assert_int_equal(sl_pipe_take(&b, out, sizeof(out)), 0);
    /* Emptied: it starts over at the front. */
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 0);
    free(in);
    sl_pipe_free(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
}

static void test_at_most_buf_max_unless_empty(void **state)
{
    struct sl_pipe b = {0};
    char *in = pattern(0, SL_PIPE_MAX + 5000);
    char *out = malloc(SL_PIPE_MAX + 5000);
    (void)state;

    /* Partly full: only up to SL_PIPE_MAX is taken. */
    assert_int_equal(sl_pipe_put(&b, in, 1000), 1000);
    assert_true(sl_pipe_fits(&b, SL_PIPE_MAX - 1000));
    assert_false(sl_pipe_fits(&b, SL_PIPE_MAX - 999));
    assert_int_equal(sl_pipe_put(&b, in + 1000, SL_PIPE_MAX), SL_PIPE_MAX - 1000);
    assert_int_equal(sl_pipe_len(&b), SL_PIPE_MAX);
    assert_int_equal(sl_pipe_put(&b, in, 1), 0);
    assert_false(sl_pipe_fits(&b, 1));
    assert_int_equal(sl_pipe_take(&b, out, SL_PIPE_MAX + 5000), SL_PIPE_MAX);
    assert_memory_equal(out, in, SL_PIPE_MAX);

    /* Empty: one piece larger than SL_PIPE_MAX goes in whole. */
    assert_true(sl_pipe_fits(&b, SL_PIPE_MAX + 5000));
    assert_int_equal(sl_pipe_put(&b, in, SL_PIPE_MAX + 5000), SL_PIPE_MAX + 5000);
    assert_int_equal(sl_pipe_put(&b, in, 1), 0);
    assert_int_equal(sl_pipe_take(&b, out, SL_PIPE_MAX + 5000), SL_PIPE_MAX + 5000);
    assert_memory_equal(out, in, SL_PIPE_MAX + 5000);
    free(in);
    free(out);
    sl_pipe_free(&b);
}

/* Reading from the front then writing past the end moves what is left to
 * the front instead of growing: the bytes stay in order. */
static void test_compaction_keeps_the_order(void **state)
{
    struct sl_pipe b = {0};
    char out[16384];
    char *in = pattern(0, 16384 + 8000);
    size_t cap;
    (void)state;

    assert_int_equal(sl_pipe_put(&b, in, 16000), 16000);
    cap = b.cap;
    assert_int_equal(sl_pipe_take(&b, out, 10000), 10000);
    assert_memory_equal(out, in, 10000);
    assert_int_equal(sl_pipe_put(&b, in + 16000, 8000), 8000);
    assert_int_equal(b.cap, cap);  /* 14000 held: fits after moving */
    assert_int_equal(b.rpos, 0);
    assert_int_equal(sl_pipe_take(&b, out, sizeof(out)), 14000);
    assert_memory_equal(out, in + 10000, 14000);
    free(in);
    sl_pipe_free(&b);
}

static void test_idempotent_methods(void **state)
{
    (void)state;
    assert_true(sl_method_idempotent("GET"));
    assert_true(sl_method_idempotent("HEAD"));
    assert_true(sl_method_idempotent("OPTIONS"));
    assert_true(sl_method_idempotent("TRACE"));
    assert_true(sl_method_idempotent("PUT"));
    assert_true(sl_method_idempotent("DELETE"));
    assert_false(sl_method_idempotent("POST"));
    assert_false(sl_method_idempotent("PATCH"));
    assert_false(sl_method_idempotent("CONNECT"));
    /* Methods are case-sensitive (RFC 9110, 9.1). */
    assert_false(sl_method_idempotent("get"));
    assert_false(sl_method_idempotent(""));
}

/* A request whose response had header LINE (NAME_LEN bytes of name; NULL:
 * none) and whose body began with BODY (TOTAL bytes in all).  Free with
 * forget_answer(). */
static void fake_answer(struct sl_request *req, const char *line, size_t name_len,
                        const char *body, uint64_t total)
{
    memset(req, 0, sizeof(*req));
    if (line != NULL) {
        struct sl_hdr *h = calloc(1, sizeof(*h) + strlen(line) + 1);
        assert_non_null(h);
        strcpy(h->line, line);
        h->name_len = name_len;
        h->value = h->line + name_len + 2;
        req->hdrs = h;
    }
    if (body != NULL)
        assert_int_equal(sl_buf_add(&req->scan, body, strlen(body)), 0);
    req->scan_total = total;
}

static void forget_answer(struct sl_request *req)
{
    free(req->hdrs);
    sl_buf_free(&req->scan);
}

/* What a provider says a call cost: a header of digits only, or
 * extensions.cost.actualQueryCost of a JSON body (parsed whole when it
 * fitted the peek, else searched for in it). */
static void test_actual_costs(void **state)
{
    struct sl_rule hr = {.settle = SL_SETTLE_HEADER, .settle_header = "X-Cost"};
    struct sl_rule gr = {.settle = SL_SETTLE_GRAPHQL};
    struct sl_request req;
    static const struct {
        const char *line;
        long long want;
    } hdrs[] = {
        {"X-Cost: 12", 12}, {"X-Cost: 0", 0}, {"X-Cost: 12 ", 12}, {"X-Cost: 1.5", -1},
        {"X-Cost: -3", -1}, {"X-Cost: 12abc", -1}, {"X-Cost: ", -1},
        {"X-Cost: 9999999999999999", -1},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
        fake_answer(&req, hdrs[i].line, 6, NULL, 0);
        assert_int_equal(sl_req_actual_cost(&req, &hr), hdrs[i].want);
        forget_answer(&req);
    }
    fake_answer(&req, "Other: 3", 5, NULL, 0);
    assert_int_equal(sl_req_actual_cost(&req, &hr), -1);
    forget_answer(&req);

    const char *whole = "{\"data\": {\"actualQueryCost\": 99}, \"extensions\": "
                        "{\"cost\": {\"requestedQueryCost\": 50, \"actualQueryCost\": 7}}}";
    fake_answer(&req, NULL, 0, whole, strlen(whole));
    assert_int_equal(sl_req_actual_cost(&req, &gr), 7);     /* the path, not data's */
    forget_answer(&req);
    fake_answer(&req, NULL, 0, "{\"extensions\": {\"cost\": {\"actualQueryCost\": \"7\"}}}",
                60);
    assert_int_equal(sl_req_actual_cost(&req, &gr), -1);     /* complete, not a number */
    forget_answer(&req);
    /* Longer than the peek: the last occurrence in what was seen. */
    fake_answer(&req, NULL, 0, "{\"extensions\": {\"cost\": {\"actualQueryCost\" : 31,",
                1 << 20);
    assert_int_equal(sl_req_actual_cost(&req, &gr), 31);
    forget_answer(&req);
    fake_answer(&req, NULL, 0, "{\"data\": [1, 2, 3", 1 << 20);
    assert_int_equal(sl_req_actual_cost(&req, &gr), -1);
    forget_answer(&req);
    fake_answer(&req, NULL, 0, NULL, 0);
    assert_int_equal(sl_req_actual_cost(&req, &gr), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_come_out_in_order),
        cmocka_unit_test(test_at_most_buf_max_unless_empty),
        cmocka_unit_test(test_compaction_keeps_the_order),
        cmocka_unit_test(test_idempotent_methods),
        cmocka_unit_test(test_actual_costs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
