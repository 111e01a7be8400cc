/* Unit tests: the memory store's decisions, on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "sl_config.h"
#include "sl_duration.h"
#include "sl_apps.h"
#include "sl_store.h"

#define S SL_USEC_PER_SEC

static int64_t fake_now;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

struct result {
    struct sl_decision d;
    struct sl_lease *lease;
    int calls;
};

static void on_decision(void *arg, const struct sl_decision *d, struct sl_lease *l)
{
    struct result *r = arg;
    r->d = *d;
    r->lease = l;
    r->calls++;
}

struct fixture {
    struct sl_config *config;
    struct sl_store *store;
};

static const char *hdr_app;

static const char *lookup(void *ctx, const char *name)
{
    (void)ctx;
    return strcmp(name, "X-App") == 0 ? hdr_app : NULL;
}

/* Decide a call and keep what it holds (not sent yet: nothing logged). */
static struct result call_keep(struct fixture *f, const char *method, const char *path)
{
    struct sl_call c = {method, path, strlen(path), lookup, NULL, false, NULL, 0};
    struct sl_check chk;
    struct result r = {0};

    assert_int_equal(sl_match(&f->config->upstreams[0], &c, &chk), 0);
    assert_int_equal(sl_store_decide(f->store, &chk, on_decision, &r), 0);
    assert_int_equal(r.calls, 1);  /* the memory store answers at once */
    sl_check_clear(&chk);
    return r;
}

/* A whole call: decided, sent at once (logged now), finished. */
static struct result call(struct fixture *f, const char *method, const char *path)
{
    struct result r = call_keep(f, method, path);

    if (r.lease != NULL) {
        sl_store_commit(f->store, r.lease);
        sl_store_release(f->store, r.lease);
        r.lease = NULL;
    }
    return r;
}

static int setup(void **state, const char *json)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct sl_errors e = {0};
    char *exact = NULL;

    /* These tests check the window arithmetic to the microsecond: no
     * margin unless a test sets one (test_margin_widens_the_window). */
    if (strstr(json, "\"margin\"") == NULL) {
        const char *p = json;
        size_t n = 0;
        exact = malloc(strlen(json) * 2 + 1);
        for (exact[0] = '\0'; (p = strstr(json + n, "\"prefix\"")) != NULL;
             n = (size_t)(p - json) + 1) {
            strncat(exact, json + n, (size_t)(p - json) - n);
            strcat(exact, "\"margin\": 0, \"");
        }
        strcat(exact, json + n);
        json = exact;
    }
    if (sl_config_parse(json, "t", false, &f->config, &e) != 0) {
        for (size_t i = 0; i < e.count; i++)
            print_error("%s\n", e.lines[i]);
        free(exact);
        return -1;
    }
    free(exact);
    f->store = sl_store_memory_new(f->config, fake_clock, NULL);
    fake_now = 1000 * S;
    *state = f;
    return 0;
}

static int setup_leads(void **state)
{
    return setup(state,
        "{\"upstreams\": [{\"name\": \"leads\", \"prefix\": \"/l\", \"url\": \"http://x\","
        "\"rules\": ["
        "{\"name\": \"logins\", \"methods\": [\"POST\"], \"path\": \"/login\", \"limit\": 2, \"window\": \"1m\"},"
        "{\"name\": \"per-pub\", \"path\": \"/pub/{p}/**\", \"per\": \"{p}\", \"limit\": 1, \"window\": \"10s\"},"
        "{\"name\": \"per-app\", \"path\": \"/app\", \"per\": \"header:X-App\", \"limit\": 1, \"window\": \"10s\"},"
        "{\"name\": \"all\", \"limit\": 4, \"window\": \"1m\"},"
        "{\"name\": \"conc\", \"path\": \"/slow\", \"concurrency\": 1}]}]}");
}

/* A leaky bucket of 3 leaking 1 a second, whose calls say their cost in
 * X-App (the header the fixture's lookup serves), beside a window. */
static int setup_bucket(void **state)
{
    return setup(state,
        "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"rules\": [{\"name\": \"b\", \"bucket\": 3, \"leak\": \"1/s\","
        "\"cost\": \"header:X-App\"},"
        "{\"name\": \"w\", \"limit\": 10, \"window\": \"1h\", \"cost\": {\"POST\": 4}}]}]}");
}

static void test_bucket_burst_leak_and_cost(void **state)
{
    struct fixture *f = *state;
    struct result r;

    hdr_app = "1";
    for (int i = 0; i < 3; i++)
        assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_string_equal(r.d.rule->name, "b");
    assert_int_equal(r.d.wait_us, S);             /* one call leaks in 1 s */
    fake_now += S;
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    /* Cost 2 needs two calls' worth: 2 s from now. */
    hdr_app = "2";
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.wait_us, 2 * S);
    fake_now += 2 * S;
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(r.d.remaining, 0);   /* full again */
    /* A reserved call counts by its cost until sent; given back whole. */
    fake_now += 10 * S;
    hdr_app = "3";
    r = call_keep(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    hdr_app = "1";
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_DENY);
    sl_store_release(f->store, r.lease);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    /* The window counts a POST as 4 entries: 6 GETs so far + 4 = 10. */
    fake_now += 10 * S;
    r = call(f, "POST", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(r.d.remaining, 0);
    r = call(f, "POST", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_string_equal(r.d.rule->name, "w");
}

static void test_a_bad_cost_header_matches_nothing(void **state)
{
    struct fixture *f = *state;
    const char *bad[] = {NULL, "", "0", "4", "x", "-1", "1.0", "99999999999"};
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sl_call c = {"GET", "/x", 2, lookup, NULL, false, NULL, 0};
        struct sl_check chk;
        hdr_app = bad[i];
        assert_int_equal(sl_match(&f->config->upstreams[0], &c, &chk), SL_MATCH_BAD_COST);
        assert_string_equal(chk.bad_cost->name, "b");
        assert_int_equal(chk.nhits, 0);
    }
}

static int setup_tiny(void **state)
{
    return setup(state,
        "{\"memory_limit\": 65536, \"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\","
        "\"url\": \"http://x\", \"rules\": [{\"name\": \"per\", \"per\": \"header:X-App\","
        "\"limit\": 1, \"window\": \"10s\"}]}]}");
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    sl_store_destroy(f->store);
    sl_config_free(f->config);
    free(f);
    return 0;
}

static void test_all_or_nothing(void **state)
{
    struct fixture *f = *state;
    struct result r;

    assert_int_equal(call(f, "POST", "/login").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "POST", "/login").d.verdict, SL_VERDICT_ALLOW);
    r = call(f, "POST", "/login");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_string_equal(r.d.rule->name, "logins");
    assert_int_equal(r.d.wait_us, 60 * S);
    /* The denied login took nothing from "all": two of four remain. */
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_string_equal(r.d.rule->name, "all");
    assert_int_equal(r.d.remaining, 1);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_string_equal(r.d.rule->name, "all");
}

static void test_longest_wait_names_the_rule(void **state)
{
    struct fixture *f = *state;
    struct result r;

    assert_int_equal(call(f, "POST", "/login").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "POST", "/login").d.verdict, SL_VERDICT_ALLOW);
    fake_now += 30 * S;
    assert_int_equal(call(f, "GET", "/a").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "GET", "/a").d.verdict, SL_VERDICT_ALLOW);
    /* Both "logins" (room in 30 s) and "all" (room in 30 s, after the
     * first login leaves) are full; the wait is the longer. */
    fake_now += 1 * S;
    r = call(f, "POST", "/login");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.wait_us, 29 * S);
    fake_now += 29 * S;
    r = call(f, "POST", "/login");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
}

static void test_per_buckets(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(call(f, "GET", "/pub/A/x").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "GET", "/pub/A/y").d.verdict, SL_VERDICT_DENY);
    assert_int_equal(call(f, "GET", "/pub/B/y").d.verdict, SL_VERDICT_ALLOW);
    hdr_app = "crm";
    assert_int_equal(call(f, "GET", "/app").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "GET", "/app").d.verdict, SL_VERDICT_DENY);
    hdr_app = NULL;  /* no header: the empty value is a bucket of its own */
    assert_int_equal(call(f, "GET", "/app").d.verdict, SL_VERDICT_ALLOW);
    hdr_app = "billing";  /* its bucket has room, but "all" (4) is full */
    struct result r = call(f, "GET", "/app");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_string_equal(r.d.rule->name, "all");
    hdr_app = NULL;
}

static void test_concurrency_leases(void **state)
{
    struct fixture *f = *state;
    struct result a, b;

    a = call_keep(f, "GET", "/slow");
    assert_int_equal(a.d.verdict, SL_VERDICT_ALLOW);
    assert_non_null(a.lease);
    sl_store_commit(f->store, a.lease);
    b = call_keep(f, "GET", "/slow");
    assert_int_equal(b.d.verdict, SL_VERDICT_DENY);
    assert_string_equal(b.d.rule->name, "conc");
    assert_null(b.lease);
    sl_store_release(f->store, a.lease);
    b = call_keep(f, "GET", "/slow");
    assert_int_equal(b.d.verdict, SL_VERDICT_ALLOW);
    sl_store_release(f->store, b.lease);
}

static void test_idle_keys_are_reclaimed(void **state)
{
    struct fixture *f = *state;
    char path[64];

    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "/pub/%d/x", i);
        call(f, "GET", path);
    }
    assert_true(sl_store_memory_keys(f->store) >= 4);
    fake_now += 120 * S;
    sl_store_tick(f->store);
    assert_int_equal(sl_store_memory_keys(f->store), 0);
    assert_int_equal(sl_store_memory_bytes(f->store), 0);
}

static void test_memory_bound_refuses_new_keys(void **state)
{
    struct fixture *f = *state;
    char app[32];
    int allowed = 0, unavailable = 0;

    for (int i = 0; i < 2000; i++) {
        struct result r;
        snprintf(app, sizeof(app), "app-%d", i);
        hdr_app = app;
        r = call(f, "GET", "/x");
        if (r.d.verdict == SL_VERDICT_ALLOW)
            allowed++;
        else if (r.d.verdict == SL_VERDICT_UNAVAILABLE)
            unavailable++;
    }
    hdr_app = NULL;
    assert_true(allowed > 100);
    assert_true(unavailable > 0);
    assert_true(sl_store_memory_bytes(f->store) <= 65536);
    /* Once the windows pass, the space comes back. */
    fake_now += 11 * S;
    hdr_app = "late";
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    hdr_app = NULL;
}

static void test_pause_denies_every_call_until_it_ends(void **state)
{
    struct fixture *f = *state;
    const struct sl_upstream_conf *up = &f->config->upstreams[0];
    struct result r;

    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    sl_store_pause(f->store, up, 5 * S, "test");
    fake_now += 2 * S;
    r = call(f, "GET", "/y");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_ptr_equal(r.d.rule, &up->pause_rule);
    assert_int_equal(r.d.wait_us, 3 * S);
    /* A shorter pause never shortens the running one. */
    sl_store_pause(f->store, up, 1 * S, "test");
    assert_int_equal(call(f, "GET", "/y").d.wait_us, 3 * S);
    fake_now += 3 * S;
    assert_int_equal(call(f, "GET", "/z").d.verdict, SL_VERDICT_ALLOW);
    /* The two paused calls recorded nothing: this is the third in "all"
     * (limit 4), so one is left. */
    assert_int_equal(call(f, "GET", "/z").d.remaining, 1);
}

static struct sl_pause_change last_change;

static void on_change(void *arg, const struct sl_pause_change *ch, const char *error)
{
    (void)arg;
    assert_null(error);
    last_change = *ch;
}

/* An operator's actions: shortening never lengthens, pausing by hand never
 * shortens, clearing ends it now; a pause set by hand carries the mark. */
static void test_operator_pause_actions(void **state)
{
    struct fixture *f = *state;
    const struct sl_upstream_conf *up = &f->config->upstreams[0];

    assert_int_equal(sl_store_set_pause(f->store, up, SL_PAUSE_CLEAR, 0, NULL,
                                        on_change, NULL), 0);
    assert_false(last_change.changed);
    sl_store_pause(f->store, up, 600 * S, "status 429, Retry-After");
    sl_store_set_pause(f->store, up, SL_PAUSE_SHORTEN, 2 * S, NULL, on_change, NULL);
    assert_true(last_change.changed);
    assert_int_equal(last_change.was_us, 600 * S);
    assert_int_equal(last_change.left_us, 2 * S);
    assert_false(last_change.was_operator);
    assert_string_equal(last_change.was_reason, "status 429, Retry-After");
    sl_store_set_pause(f->store, up, SL_PAUSE_SHORTEN, 60 * S, NULL, on_change, NULL);
    assert_false(last_change.changed);
    assert_int_equal(call(f, "GET", "/y").d.wait_us, 2 * S);
    sl_store_set_pause(f->store, up, SL_PAUSE_SET, 1 * S, "ops", on_change, NULL);
    assert_false(last_change.changed);
    sl_store_set_pause(f->store, up, SL_PAUSE_SET, 10 * S, "ops", on_change, NULL);
    assert_true(last_change.changed);
    assert_int_equal(last_change.left_us, 10 * S);
    fake_now += 1 * S;
    sl_store_set_pause(f->store, up, SL_PAUSE_CLEAR, 0, NULL, on_change, NULL);
    assert_true(last_change.changed);
    assert_true(last_change.was_operator);
    assert_string_equal(last_change.was_reason, "ops");
    assert_int_equal(last_change.was_us, 9 * S);
    assert_int_equal(last_change.left_us, 0);
    assert_int_equal(call(f, "GET", "/z").d.verdict, SL_VERDICT_ALLOW);
}

/* The hit of rule NAME for a GET of PATH (the check is the caller's). */
static const struct sl_hit *hit_of(struct fixture *f, struct sl_check *chk,
                                   const char *path, const char *name)
{
    struct sl_call c = {"GET", path, strlen(path), lookup, NULL, false, NULL, 0};

    assert_int_equal(sl_match(&f->config->upstreams[0], &c, chk), 0);
    for (size_t i = 0; i < chk->nhits; i++)
        if (strcmp(chk->hits[i].rule->name, name) == 0)
            return &chk->hits[i];
    fail();
    return NULL;
}

static void test_sync_leaves_what_the_provider_reports(void **state)
{
    struct fixture *f = *state;
    const struct sl_upstream_conf *up = &f->config->upstreams[0];
    struct sl_check chk;
    const struct sl_hit *all = hit_of(f, &chk, "/x", "all");

    sl_store_sync(f->store, up, all, 1, 0);   /* the provider says: 1 left */
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_DENY);
    /* A newer report gives room back, but never more than our own count
     * leaves (4 per minute, 1 used). */
    sl_store_sync(f->store, up, all, 100, 0);
    assert_int_equal(call(f, "GET", "/x").d.remaining, 2);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_DENY);
    sl_check_clear(&chk);
}

/* Calls sent after the reporting call are not in the provider's count. */
static void test_sync_counts_calls_sent_after_the_report(void **state)
{
    struct fixture *f = *state;
    const struct sl_upstream_conf *up = &f->config->upstreams[0];
    struct sl_check chk;
    const struct sl_hit *all = hit_of(f, &chk, "/x", "all");

    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);  /* reporter */
    fake_now += 1 * S;
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);  /* after it */
    fake_now += 1 * S;
    /* The reporter's answer, 2 s after it was sent: "2 left" (it did not
     * see the second call): so 1 is left. */
    sl_store_sync(f->store, up, all, 2, 2 * S);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_DENY);
    sl_check_clear(&chk);
}

static int setup_sync(void **state)
{
    return setup(state,
        "{\"upstreams\": [{\"name\": \"crm\", \"prefix\": \"/c\", \"url\": \"http://x\","
        "\"rules\": [{\"name\": \"daily\", \"limit\": 50000000, \"window\": \"1d\","
        " \"sync\": \"x-ratelimit\", \"sync_probe\": \"10s\"}]}]}");
}

/* A report of "nothing left" on a huge limit costs O(1), a probe goes
 * through every sync_probe, and the provider's next word gives room back. */
static void test_sync_probe_and_o1(void **state)
{
    struct fixture *f = *state;
    const struct sl_upstream_conf *up = &f->config->upstreams[0];
    struct sl_check chk;
    const struct sl_hit *daily = hit_of(f, &chk, "/x", "daily");
    struct result r;

    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    sl_store_sync(f->store, up, daily, 0, 0);
    assert_true(sl_store_memory_bytes(f->store) < 4096);
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.wait_us, 10 * S);          /* the next probe */
    fake_now += 10 * S;
    r = call_keep(f, "GET", "/x");                  /* the probe */
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_DENY);
    sl_store_commit(f->store, r.lease);
    sl_store_release(f->store, r.lease);
    fake_now += 1 * S;
    sl_store_sync(f->store, up, daily, 500, 1 * S);  /* its answer */
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.remaining, 498);
    assert_true(sl_store_memory_bytes(f->store) < 4096);
    sl_check_clear(&chk);
}

/* Admitted calls count from the decision on; their time is the send. */
static void test_reservations(void **state)
{
    struct fixture *f = *state;
    struct result a, b, c;

    a = call_keep(f, "POST", "/login");
    b = call_keep(f, "POST", "/login");
    assert_int_equal(a.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(b.d.verdict, SL_VERDICT_ALLOW);
    c = call_keep(f, "POST", "/login");
    assert_int_equal(c.d.verdict, SL_VERDICT_DENY);  /* both reserved */
    /* B is never sent (no connection): it costs nothing. */
    sl_store_release(f->store, b.lease);
    fake_now += 10 * S;                               /* A's connection took 10 s */
    sl_store_commit(f->store, a.lease);
    sl_store_commit(f->store, a.lease);               /* idempotent */
    sl_store_release(f->store, a.lease);
    assert_int_equal(call(f, "POST", "/login").d.verdict, SL_VERDICT_ALLOW);
    c = call_keep(f, "POST", "/login");
    assert_int_equal(c.d.verdict, SL_VERDICT_DENY);
    /* Room comes one window after A was *sent*, not decided. */
    assert_int_equal(c.d.wait_us, 60 * S);
    fake_now += 60 * S - 1;
    assert_int_equal(call_keep(f, "POST", "/login").d.verdict, SL_VERDICT_DENY);
    fake_now += 1;
    assert_int_equal(call(f, "POST", "/login").d.verdict, SL_VERDICT_ALLOW);
}

static int setup_margin(void **state)
{
    return setup(state,
        "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"margin\": \"50ms\", \"rules\": [{\"name\": \"w\", \"limit\": 1, \"window\": \"1s\"}]}]}");
}

static void test_margin_widens_the_window(void **state)
{
    struct fixture *f = *state;
    struct result r;

    assert_int_equal(call(f, "GET", "/a").d.verdict, SL_VERDICT_ALLOW);
    r = call_keep(f, "GET", "/a");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.wait_us, S + 50000);
    fake_now += S;
    assert_int_equal(call_keep(f, "GET", "/a").d.verdict, SL_VERDICT_DENY);
    fake_now += 50000;
    assert_int_equal(call(f, "GET", "/a").d.verdict, SL_VERDICT_ALLOW);
}

static int setup_share(void **state)
{
    return setup(state,
        "{\"store\": \"redis://127.0.0.1:1\", \"local_share\": 0.5, \"upstreams\": [{"
        "\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"rules\": [{\"name\": \"w\", \"limit\": 10, \"window\": \"1m\"}]}]}");
}

/* As Redis's fallback, the memory store grants its share, counting what
 * this instance sent through Redis (mirrored with sl_store_memory_record). */
static void test_local_share_and_mirror(void **state)
{
    struct fixture *f = *state;
    struct sl_check chk;
    int allowed = 0;

    hit_of(f, &chk, "/a", "w");
    sl_store_memory_record(f->store, &chk);
    sl_store_memory_record(f->store, &chk);
    for (int i = 0; i < 10; i++)
        allowed += call(f, "GET", "/a").d.verdict == SL_VERDICT_ALLOW;
    assert_int_equal(allowed, 3);   /* 5 (half of 10) minus the 2 mirrored */
    sl_check_clear(&chk);
}

static int setup_snapshot(void **state)
{
    return setup(state,
        "{\"alerts\": [{\"url\": \"http://h\", \"at\": [0.5, 1.0]}],"
        "\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"rules\": [{\"name\": \"all\", \"limit\": 4, \"window\": \"10s\"},"
        "{\"name\": \"per\", \"path\": \"/p/{k}/**\", \"per\": \"{k}\", \"limit\": 2,"
        " \"window\": \"10s\"}, {\"name\": \"conc\", \"concurrency\": 3}]}]}");
}

static struct sl_snapshot *last_snap;

static void on_snapshot(void *arg, struct sl_snapshot *snap, const char *error)
{
    (void)arg;
    assert_null(error);
    last_snap = snap;
}

static struct sl_snapshot *snapshot(struct fixture *f, struct sl_apps *apps,
                                    unsigned flags)
{
    struct sl_snapshot_req req = {.top = 10, .flags = flags, .apps = apps};

    last_snap = NULL;
    assert_int_equal(sl_store_snapshot(f->store, &req, on_snapshot, NULL), 0);
    assert_non_null(last_snap);
    return last_snap;
}

/* A whole call by APP. */
static struct result app_call(struct fixture *f, struct sl_apps *apps,
                              const char *app, const char *path)
{
    struct sl_call c = {"GET", path, strlen(path), lookup, NULL, false, NULL, 0};
    struct sl_check chk;
    struct result r = {0};

    assert_int_equal(sl_match(&f->config->upstreams[0], &c, &chk), 0);
    chk.app = sl_apps_id(apps, app, strlen(app));
    chk.app_name = sl_apps_name(apps, chk.app);
    assert_int_equal(sl_store_decide(f->store, &chk, on_decision, &r), 0);
    sl_check_clear(&chk);
    if (r.lease != NULL) {
        sl_store_commit(f->store, r.lease);
        sl_store_release(f->store, r.lease);
    }
    return r;
}

static uint64_t app_calls(const struct sl_usage *u, const char *name)
{
    for (size_t i = 0; i < u->napps; i++)
        if (strcmp(u->apps[i].name, name) == 0)
            return u->apps[i].calls;
    return 0;
}

/* Figures, per-app splits, `per` buckets, alert levels and pauses. */
static void test_snapshot_figures(void **state)
{
    struct fixture *f = *state;
    struct sl_apps *apps = sl_apps_new(10);
    struct sl_snapshot *s;
    const struct sl_rule_usage *all, *per, *conc;
    struct result held;

    s = snapshot(f, apps, 0);
    all = &s->ups[0].rules[0];
    assert_int_equal(all->n, 1);  /* a rule without per: its one bucket */
    assert_int_equal(all->buckets[0].used, 0);
    assert_int_equal(all->buckets[0].remaining, 4);
    assert_int_equal(s->ups[0].rules[1].n, 0);  /* no per bucket yet */
    sl_snapshot_free(s);

    app_call(f, apps, "billing", "/p/a/x");
    fake_now += 1 * S;
    app_call(f, apps, "sync", "/p/a/x");
    app_call(f, apps, "billing", "/p/b/x");
    held = call_keep(f, "GET", "/x");  /* reserved, not sent: counts, no app */
    assert_int_equal(held.d.verdict, SL_VERDICT_ALLOW);

    s = snapshot(f, apps, SL_SNAP_ALERTS);
    all = &s->ups[0].rules[0];
    per = &s->ups[0].rules[1];
    conc = &s->ups[0].rules[2];
    assert_int_equal(all->buckets[0].used, 4);
    assert_int_equal(all->buckets[0].reserved, 1);
    assert_int_equal(all->buckets[0].remaining, 0);
    assert_int_equal(all->buckets[0].resets_in_us, 9 * S);
    assert_int_equal(all->buckets[0].napps, 2);
    assert_string_equal(all->buckets[0].apps[0].name, "billing");  /* busiest */
    assert_int_equal(app_calls(&all->buckets[0], "billing"), 2);
    assert_int_equal(app_calls(&all->buckets[0], "sync"), 1);
    /* Alerts at 0.5 and 1.0: both crossed since the last look. */
    assert_int_equal(all->buckets[0].level_was, 0);
    assert_int_equal(all->buckets[0].level, 2);
    assert_int_equal(per->nbuckets, 2);
    assert_int_equal(per->n, 2);
    assert_string_equal(per->buckets[0].key, "a");
    assert_int_equal(per->buckets[0].used, 2);
    assert_string_equal(per->buckets[1].key, "b");
    assert_int_equal(per->buckets[1].used, 1);
    assert_int_equal(conc->buckets[0].used, 1);  /* the held call's slot */
    assert_int_equal(conc->buckets[0].resets_in_us, -1);
    sl_snapshot_free(s);

    /* Looked at again: nothing new to alert. */
    s = snapshot(f, apps, SL_SNAP_ALERTS);
    assert_int_equal(s->ups[0].rules[0].buckets[0].level_was, 2);
    assert_int_equal(s->ups[0].rules[0].buckets[0].level, 2);
    sl_snapshot_free(s);

    /* The window empties: the levels fall (re-armed). */
    sl_store_release(f->store, held.lease);
    /* Calls logged in one microsecond of the fake clock were stamped a
     * microsecond apart (stamps in a log are unique): the last leaves a
     * few microseconds after the first. */
    fake_now += 10 * S + 10;
    s = snapshot(f, apps, SL_SNAP_ALERTS);
    assert_int_equal(s->ups[0].rules[0].buckets[0].used, 0);
    assert_int_equal(s->ups[0].rules[0].buckets[0].level, 0);
    sl_snapshot_free(s);

    /* A pause is new once; extending it is the same pause. */
    sl_store_pause(f->store, &f->config->upstreams[0], 5 * S, "status 429, Retry-After");
    s = snapshot(f, apps, SL_SNAP_ALERTS);
    assert_int_equal(s->ups[0].paused_us, 5 * S);
    assert_string_equal(s->ups[0].pause_reason, "status 429, Retry-After");
    assert_true(s->ups[0].pause_new);
    sl_snapshot_free(s);
    sl_store_pause(f->store, &f->config->upstreams[0], 8 * S, "again");
    s = snapshot(f, apps, SL_SNAP_ALERTS);
    assert_false(s->ups[0].pause_new);
    sl_snapshot_free(s);
    /* A read-only snapshot never moves the levels. */
    fake_now += 20 * S;
    s = snapshot(f, apps, 0);
    assert_int_equal(s->ups[0].paused_us, 0);
    sl_snapshot_free(s);
    sl_apps_free(apps);
}

static int setup_shadow(void **state)
{
    return setup(state,
        "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"rules\": [{\"name\": \"shadow\", \"path\": \"/x\", \"limit\": 2, \"window\": \"10s\", \"mode\": \"shadow\"},"
        "{\"name\": \"sconc\", \"path\": \"/slow\", \"concurrency\": 1, \"mode\": \"shadow\"},"
        "{\"name\": \"real\", \"limit\": 4, \"window\": \"10s\"}]}]}");
}

/* A shadow rule counts what it would admit, reports what it would deny,
 * and denies nothing; an enforced rule still does. */
static void test_shadow_rules(void **state)
{
    struct fixture *f = *state;
    struct result r, held;

    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_null(r.d.shadow);
    /* RateLimit headers name the enforced rule, never the shadow one. */
    assert_string_equal(r.d.rule->name, "real");
    assert_null(call(f, "GET", "/x").d.shadow);
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_non_null(r.d.shadow);
    assert_string_equal(r.d.shadow->name, "shadow");
    assert_int_equal(r.d.shadow_wait_us, 10 * S);
    /* The enforced rule has had 3 of 4: one more, then 429. */
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_string_equal(r.d.rule->name, "real");
    assert_null(r.d.shadow);  /* denied anyway: nothing to report */
    /* Shadow concurrency: a second call in flight goes on, reported. */
    fake_now += 11 * S;
    held = call_keep(f, "GET", "/slow");
    assert_int_equal(held.d.verdict, SL_VERDICT_ALLOW);
    assert_null(held.d.shadow);
    r = call_keep(f, "GET", "/slow");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_string_equal(r.d.shadow->name, "sconc");
    sl_store_release(f->store, r.lease);
    sl_store_release(f->store, held.lease);
    /* The one it took back: free again. */
    r = call_keep(f, "GET", "/slow");
    assert_null(r.d.shadow);
    sl_store_release(f->store, r.lease);
}

/* ---- calendar windows (the fake clock is wall time) ---- */

static int setup_calendar(void **state)
{
    return setup(state,
        "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
        "\"margin\": \"1s\", \"rules\": ["
        "{\"name\": \"daily\", \"limit\": 3, \"window\": \"1d\", \"reset\": \"calendar\","
        "\"timezone\": \"+02:00\"}]}]}");
}

static void test_calendar_day(void **state)
{
    struct fixture *f = *state;
    /* 2026-11-24 23:59:50 at +02:00 = 21:59:50Z: ten seconds to midnight. */
    const int64_t midnight = INT64_C(1795989600) * S;   /* 2026-11-25T00:00+02:00 */
    struct result r;

    fake_now = midnight - 10 * S;
    for (int i = 0; i < 3; i++)
        assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    /* Room at the boundary, whatever the calls' ages. */
    assert_int_equal(r.d.wait_us, 10 * S);
    /* Just past midnight, the margin (1 s) still counts the calls sent in
     * the last second of the day before: none here, so all is free... */
    fake_now = midnight;
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(r.d.remaining, 2);
    assert_int_equal(r.d.reset_us, 86400 * S);
    /* ...and a call sent 0.5 s before the next midnight counts in both days. */
    fake_now = midnight + 86400 * S - S / 2;
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    fake_now = midnight + 86400 * S;
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(r.d.remaining, 1);
    /* It counts for the whole new day (the provider may have counted it
     * there): three calls now, none left until the next midnight. */
    fake_now = midnight + 86400 * S + 2 * S;
    r = call(f, "GET", "/x");
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(r.d.remaining, 0);
    assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_DENY);
}

/* ---- reload: counts carried by name ---- */

static void test_adopt_carries_counts(void **state)
{
    struct fixture *f = *state;
    struct sl_errors e = {0};
    struct sl_config *next;
    struct result r, held;
    struct sl_call c = {"GET", "/x", 2, lookup, NULL, false, NULL, 0};
    struct sl_check old_check;

    /* Three of four "all", one slot of "conc" held across the reload. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(call(f, "GET", "/x").d.verdict, SL_VERDICT_ALLOW);
    held = call_keep(f, "GET", "/slow");
    assert_int_equal(held.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(sl_match(&f->config->upstreams[0], &c, &old_check), 0);
    assert_int_equal(sl_config_parse(
        "{\"upstreams\": [{\"name\": \"other\", \"prefix\": \"/o\", \"url\": \"http://x\"},"
        "{\"name\": \"leads\", \"prefix\": \"/l\", \"url\": \"http://x\", \"rules\": ["
        "{\"name\": \"conc\", \"path\": \"/slow\", \"concurrency\": 1},"
        "{\"name\": \"all\", \"limit\": 5, \"window\": \"1m\"}]}]}",
        "t", false, &next, &e), 0);
    next->generation = 2;
    assert_int_equal(sl_store_adopt(f->store, next), 0);
    /* A call matched under the old configuration: match again. */
    assert_int_equal(sl_store_decide(f->store, &old_check, on_decision, &r), 0);
    assert_int_equal(r.d.verdict, SL_VERDICT_STALE);
    sl_check_clear(&old_check);
    /* Under the new one: "all" keeps its 4 (3 + the slow call), raised to
     * 5: one more; the slot is still taken. */
    {
        struct sl_config *prev = f->config;
        f->config = next;
        next = prev;
    }
    /* f->config->upstreams[0] is "other" now: call "leads" by hand. */
    {
        struct sl_call cs = {"GET", "/slow", 5, lookup, NULL, false, NULL, 0};
        struct sl_check chk;
        struct sl_config *cfg = f->config;
        assert_int_equal(sl_match(&cfg->upstreams[1], &cs, &chk), 0);
        r = (struct result){0};
        sl_store_decide(f->store, &chk, on_decision, &r);
        assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
        assert_string_equal(r.d.rule->name, "conc");
        sl_check_clear(&chk);
        cs.path = "/x";
        cs.path_len = 2;
        assert_int_equal(sl_match(&cfg->upstreams[1], &cs, &chk), 0);
        r = (struct result){0};
        sl_store_decide(f->store, &chk, on_decision, &r);
        assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
        assert_int_equal(r.d.remaining, 0);
        sl_store_commit(f->store, r.lease);
        sl_store_release(f->store, r.lease);
        r = (struct result){0};
        sl_store_decide(f->store, &chk, on_decision, &r);
        assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
        sl_check_clear(&chk);
    }
    /* The slot taken before the reload is given back where it was taken. */
    sl_store_commit(f->store, held.lease);
    sl_store_release(f->store, held.lease);
    sl_config_unref(next);   /* the old one: the store dropped its own */
}


/* ---- shares ("apps"): the arithmetic on a fake clock ---- */

static struct sl_apps *share_apps;

static int setup_shares(void **state)
{
    int rc = setup(state,
        "{\"upstreams\": [{\"name\": \"crm\", \"prefix\": \"/c\", \"url\": \"http://x\","
        "\"rules\": [{\"name\": \"quota\", \"limit\": 10, \"window\": \"10s\","
        "\"apps\": {\"sync\": {\"max\": 0.5}, \"ui\": {\"reserve\": 4},"
        "          \"bulk\": {\"reserve\": 2, \"lend\": true},"
        "          \"*\": {\"max\": 3}}}]}]}");
    if (rc == 0) {
        share_apps = sl_apps_new(100);
        { const char *bad; assert_int_equal(sl_config_bind_apps(((struct fixture *)*state)->config, share_apps, &bad), 0); }
    }
    return rc;
}

static int teardown_shares(void **state)
{
    sl_apps_free(share_apps);
    share_apps = NULL;
    return teardown(state);
}

/* A call of APP, decided; committed (sent now) unless KEEP. */
static struct result share_call(struct fixture *f, const char *app, bool keep)
{
    struct sl_call c = {"GET", "/x", 2, lookup, NULL, false, NULL, 0};
    struct sl_check chk;
    struct result r = {0};

    assert_int_equal(sl_match(&f->config->upstreams[0], &c, &chk), 0);
    chk.app = sl_apps_id(share_apps, app, strlen(app));
    chk.app_name = sl_apps_name(share_apps, chk.app);
    assert_int_equal(sl_store_decide(f->store, &chk, on_decision, &r), 0);
    assert_int_equal(r.calls, 1);
    sl_check_clear(&chk);
    if (r.lease != NULL && !keep) {
        sl_store_commit(f->store, r.lease);
        sl_store_release(f->store, r.lease);
        r.lease = NULL;
    }
    return r;
}

static void test_share_max(void **state)
{
    struct fixture *f = *state;
    int64_t t0 = fake_now;
    struct result r;

    /* sync may use 5 of 10: one a second. */
    for (int i = 0; i < 5; i++) {
        r = share_call(f, "sync", false);
        assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
        /* What sync has left after this call. */
        assert_int_equal(r.d.remaining, 4 - i);
        fake_now += S;
    }
    r = share_call(f, "sync", false);
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.share, SL_SHARE_MAX);
    /* Its oldest call (t0) leaves at t0 + 10 s; it is t0 + 5 s. */
    assert_int_equal(r.d.wait_us, 5 * S);
    /* Others are not held back by sync's cap: ui takes the rest (unnamed
     * apps are capped at 3 each, and bulk's idle reserve is lent). */
    for (int i = 0; i < 5; i++)
        assert_int_equal(share_call(f, "ui", false).d.verdict, SL_VERDICT_ALLOW);
    r = share_call(f, "ui", false);
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.share, SL_SHARE_NONE);  /* the rule is full */
    /* The window moves on: sync's first call left. */
    fake_now = t0 + 10 * S + 1;
    r = share_call(f, "sync", false);
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(share_call(f, "sync", false).d.verdict, SL_VERDICT_DENY);
}

static void test_share_reserve_is_kept_and_lent(void **state)
{
    struct fixture *f = *state;
    int64_t t0 = fake_now;
    struct result r;

    /* ui (reserve 4, kept) makes one call; "x" is unnamed (max 3 each),
     * "bulk" (reserve 2, lent while idle) makes none. */
    assert_int_equal(share_call(f, "ui", false).d.verdict, SL_VERDICT_ALLOW);
    fake_now += S;
    for (int i = 0; i < 3; i++)
        assert_int_equal(share_call(f, "x", false).d.verdict, SL_VERDICT_ALLOW);
    r = share_call(f, "x", false);
    assert_int_equal(r.d.share, SL_SHARE_MAX);
    /* sync: 10 - 1 (ui) - 3 (x) - 3 (ui's unused reserve) = 3; bulk's
     * reserve is lent (bulk is idle). */
    for (int i = 0; i < 3; i++)
        assert_int_equal(share_call(f, "sync", false).d.verdict, SL_VERDICT_ALLOW);
    r = share_call(f, "sync", false);
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.share, SL_SHARE_RESERVED);
    /* Room for sync comes when enough calls leave: ui's at t0 leaves
     * (but frees nothing: ui's unused reserve grows back to 4), then x's
     * first at t0 + 1 s frees one. */
    assert_int_equal(r.d.wait_us, 1 * S + 10 * S - (fake_now - t0));
    /* ui still gets its 3, and then one more: the rule has room. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(share_call(f, "ui", false).d.verdict, SL_VERDICT_ALLOW);
    assert_int_equal(share_call(f, "sync", false).d.verdict, SL_VERDICT_DENY);
    assert_int_equal(share_call(f, "ui", false).d.verdict, SL_VERDICT_DENY);
    (void)t0;
}

static void test_share_lend_idle_only(void **state)
{
    struct fixture *f = *state;
    struct result r;

    /* bulk is active (one call): its reserve of 2 is kept, 1 unused. */
    assert_int_equal(share_call(f, "bulk", false).d.verdict, SL_VERDICT_ALLOW);
    /* sync: max 5; ui's 4 and bulk's 1 unused are kept: 10 - 1 - 5 = 4. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(share_call(f, "sync", false).d.verdict, SL_VERDICT_ALLOW);
    r = share_call(f, "sync", false);
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.share, SL_SHARE_RESERVED);
    assert_int_equal(share_call(f, "bulk", false).d.verdict, SL_VERDICT_ALLOW);
}

static void test_share_held_calls_count(void **state)
{
    struct fixture *f = *state;
    struct result held[5], r;

    /* Admitted, not sent yet: they count against sync's max all the same. */
    for (int i = 0; i < 5; i++) {
        held[i] = share_call(f, "sync", true);
        assert_int_equal(held[i].d.verdict, SL_VERDICT_ALLOW);
    }
    r = share_call(f, "sync", false);
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    assert_int_equal(r.d.share, SL_SHARE_MAX);
    /* Held calls are not logged yet: room only a window after they are. */
    assert_int_equal(r.d.wait_us, 10 * S);
    /* One is never sent (the client left): its room is back at once. */
    sl_store_release(f->store, held[0].lease);
    r = share_call(f, "sync", true);
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    sl_store_release(f->store, r.lease);
    for (int i = 1; i < 5; i++) {
        sl_store_commit(f->store, held[i].lease);
        sl_store_release(f->store, held[i].lease);
    }
    fake_now += 2 * S;
    r = share_call(f, "sync", false);
    assert_int_equal(r.d.verdict, SL_VERDICT_ALLOW);
    r = share_call(f, "sync", false);
    assert_int_equal(r.d.verdict, SL_VERDICT_DENY);
    /* The four sent 2 s ago leave 8 s from now. */
    assert_int_equal(r.d.wait_us, 8 * S);
}

static int setup_many(void **state)
{
    return setup(state,
        "{\"memory_limit\": \"1GB\", \"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\","
        "\"url\": \"http://x\", \"rules\": [{\"name\": \"per\", \"path\": \"/p/{k}/**\","
        "\"per\": \"{k}\", \"limit\": 2, \"window\": \"10s\", \"max_keys\": 1000000}]}]}");
}

struct walker {
    struct fixture *f;
    atomic_int done;
    struct sl_snapshot *snap;
};

/* The walk's progress, as the store's clock sees it: the walker reads the
 * clock each time it takes the table's lock, a call when it is decided. */
static _Thread_local bool is_walker;
static atomic_int walker_holds;   /* the walker's lock holds so far */
static atomic_int walk_over;      /* set by the snapshot's callback */
static atomic_int interleaved;    /* calls decided inside the walk */

static int64_t walk_clock(void *arg)
{
    (void)arg;
    if (is_walker)
        atomic_fetch_add(&walker_holds, 1);
    else if (atomic_load(&walker_holds) > 0 && !atomic_load(&walk_over))
        atomic_fetch_add(&interleaved, 1);
    return fake_now;
}

static void on_walked(void *arg, struct sl_snapshot *snap, const char *error)
{
    struct walker *w = arg;
    assert_null(error);
    atomic_store(&walk_over, 1);
    w->snap = snap;
}

static void *walk_thread(void *arg)
{
    struct walker *w = arg;
    struct sl_snapshot_req req = {.top = 10};

    is_walker = true;
    assert_int_equal(sl_store_snapshot(w->f->store, &req, on_walked, w), 0);
    atomic_store(&w->done, 1);
    return NULL;
}

static void test_snapshot_does_not_stall_calls(void **state)
{
    struct fixture *f = *state;
    struct walker w = {.f = f};
    pthread_t th;
    char path[64];
    int during = 0;
    const struct sl_rule_usage *ru;

    /* The same store, now on a clock that watches the walk. */
    sl_store_destroy(f->store);
    f->store = sl_store_memory_new(f->config, walk_clock, NULL);
    for (int i = 0; i < 200000; i++) {
        snprintf(path, sizeof(path), "/p/k%d/x", i);
        assert_int_equal(call(f, "GET", path).d.verdict, SL_VERDICT_ALLOW);
    }
    for (int i = 0; i < 10; i++) {
        snprintf(path, sizeof(path), "/p/k%d/x", i * 1000);
        assert_int_equal(call(f, "GET", path).d.verdict, SL_VERDICT_ALLOW);
    }
    assert_int_equal(pthread_create(&th, NULL, walk_thread, &w), 0);
    while (!atomic_load(&w.done)) {
        snprintf(path, sizeof(path), "/p/n%d/x", during);
        assert_int_equal(call(f, "GET", path).d.verdict, SL_VERDICT_ALLOW);
        during++;
    }
    pthread_join(th, NULL);
    print_message("walker's lock holds: %d, calls decided inside the walk: %d\n",
                  atomic_load(&walker_holds), atomic_load(&interleaved));
    /* 200,000 buckets in 512-slot holds, the waiting call let in between
     * each: hundreds of calls.  A walk in one hold lets in none until it
     * ends (at most one slips in between its unlock and its callback). */
    assert_true(atomic_load(&walker_holds) >= 100);
    assert_true(atomic_load(&interleaved) >= 20);
    ru = &w.snap->ups[0].rules[0];
    assert_true(ru->nbuckets >= 200000);
    assert_int_equal(ru->n, 10);
    for (size_t i = 0; i < ru->n; i++) {
        assert_int_equal(ru->buckets[i].used, 2);
        assert_int_equal(strncmp(ru->buckets[i].key, "k", 1), 0);
        assert_int_equal(atoi(ru->buckets[i].key + 1) % 1000, 0);
    }
    sl_snapshot_free(w.snap);
}

/* One call under CFG's only upstream: its verdict (committed if allowed). */
static enum sl_verdict call_in(struct sl_store *st, struct sl_config *cfg)
{
    struct sl_call c = {"GET", "/x", 2, lookup, NULL, false, NULL, 0};
    struct sl_check chk;
    struct result r = {0};

    assert_int_equal(sl_match(&cfg->upstreams[0], &c, &chk), 0);
    assert_int_equal(sl_store_decide(st, &chk, on_decision, &r), 0);
    sl_check_clear(&chk);
    if (r.lease != NULL) {
        sl_store_commit(st, r.lease);
        sl_store_release(st, r.lease);
    }
    return r.d.verdict;
}

static struct sl_config *window_cfg(const char *window, uint64_t generation)
{
    struct sl_errors e = {0};
    struct sl_config *c = NULL;
    char text[256];

    snprintf(text, sizeof(text),
             "{\"upstreams\": [{\"name\": \"u\", \"margin\": 0, \"prefix\": \"/u\", \"url\": "
             "\"http://x\", \"rules\": [{\"name\": \"w\", \"limit\": 5, "
             "\"window\": \"%s\"}]}]}", window);
    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    c->generation = generation;
    return c;
}

/* 5 per 20 s, shrunk by a reload to 5 per 2 s, grown back to 20 s: the
 * calls of the last 20 s count again, and the short window in between
 * counted only its own 2 s. */
static void test_a_window_shrunk_and_grown_back(void **state)
{
    struct sl_config *c20 = window_cfg("20s", 1), *c2 = window_cfg("2s", 2),
                     *back = window_cfg("20s", 3);
    struct sl_store *st;
    (void)state;

    fake_now = 1000 * S;
    st = sl_store_memory_new(c20, fake_clock, NULL);
    for (int i = 0; i < 5; i++)
        assert_int_equal(call_in(st, c20), SL_VERDICT_ALLOW);
    assert_int_equal(call_in(st, c20), SL_VERDICT_DENY);
    assert_int_equal(sl_store_adopt(st, c2), 0);
    fake_now += 3 * S;
    /* The 2 s window is empty: exact, the kept copy does not count. */
    assert_int_equal(call_in(st, c2), SL_VERDICT_ALLOW);
    fake_now += S / 2;
    assert_int_equal(sl_store_adopt(st, back), 0);
    /* 6 calls in the last 20 s: nothing until the first 5 leave. */
    assert_int_equal(call_in(st, back), SL_VERDICT_DENY);
    fake_now = 1000 * S + 20 * S + 1000;
    for (int i = 0; i < 4; i++)
        assert_int_equal(call_in(st, back), SL_VERDICT_ALLOW);
    assert_int_equal(call_in(st, back), SL_VERDICT_DENY);
    sl_store_destroy(st);
    sl_config_free(c20);
    sl_config_free(c2);
    sl_config_free(back);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_all_or_nothing, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_bucket_burst_leak_and_cost, setup_bucket, teardown),
        cmocka_unit_test_setup_teardown(test_a_bad_cost_header_matches_nothing, setup_bucket,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_longest_wait_names_the_rule, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_per_buckets, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_leases, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_idle_keys_are_reclaimed, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_memory_bound_refuses_new_keys, setup_tiny, teardown),
        cmocka_unit_test_setup_teardown(test_operator_pause_actions, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_pause_denies_every_call_until_it_ends, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_sync_leaves_what_the_provider_reports, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_sync_counts_calls_sent_after_the_report, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_sync_probe_and_o1, setup_sync, teardown),
        cmocka_unit_test_setup_teardown(test_reservations, setup_leads, teardown),
        cmocka_unit_test_setup_teardown(test_margin_widens_the_window, setup_margin, teardown),
        cmocka_unit_test_setup_teardown(test_local_share_and_mirror, setup_share, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_figures, setup_snapshot, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_does_not_stall_calls, setup_many,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_shadow_rules, setup_shadow, teardown),
        cmocka_unit_test_setup_teardown(test_calendar_day, setup_calendar, teardown),
        cmocka_unit_test_setup_teardown(test_adopt_carries_counts, setup_leads, teardown),
        cmocka_unit_test(test_a_window_shrunk_and_grown_back),
        cmocka_unit_test_setup_teardown(test_share_max, setup_shares, teardown_shares),
        cmocka_unit_test_setup_teardown(test_share_reserve_is_kept_and_lent, setup_shares,
                                        teardown_shares),
        cmocka_unit_test_setup_teardown(test_share_lend_idle_only, setup_shares,
                                        teardown_shares),
        cmocka_unit_test_setup_teardown(test_share_held_calls_count, setup_shares,
                                        teardown_shares),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
