/* Unit tests: the state file, written and read back on fake clocks, and
 * every truncation and byte flip of it refused without touching a store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "sl_apps.h"
#include "sl_config.h"
#include "sl_duration.h"
#include "sl_state.h"
#include "sl_store.h"

#define S SL_USEC_PER_SEC

static int64_t clock_a, clock_b;

static int64_t fake_a(void *arg) { (void)arg; return clock_a; }
static int64_t fake_b(void *arg) { (void)arg; return clock_b; }

static const char *cfg_text =
    "{\"upstreams\": [{\"name\": \"crm\", \"margin\": 0, \"prefix\": \"/crm\", \"url\": \"http://x\","
    "\"rules\": [{\"name\": \"daily\", \"limit\": 5, \"window\": \"1h\"},"
    "{\"name\": \"per\", \"per\": \"header:X-A\", \"limit\": 3, \"window\": \"1h\"}]}]}";

static struct sl_config *load(const char *text)
{
    struct sl_errors e = {0};
    struct sl_config *c = NULL;

    assert_int_equal(sl_config_parse(text, "t", false, &c, &e), 0);
    return c;
}

static const char *hdr_a;

static const char *lookup(void *ctx, const char *name)
{
    (void)ctx;
    return strcmp(name, "X-A") == 0 ? hdr_a : NULL;
}

struct cap {
    struct sl_decision d;
    struct sl_lease *lease;
};

static void on_cap(void *arg, const struct sl_decision *d, struct sl_lease *l)
{
    struct cap *c = arg;
    c->d = *d;
    c->lease = l;
}

static enum sl_verdict sent(struct sl_store *st, struct sl_config *c,
                            struct sl_apps *apps, const char *app, const char *a)
{
    struct sl_call call = {"GET", "/x", 2, lookup, NULL, false, NULL, 0};
    struct sl_check chk;
    struct cap r = {0};

    hdr_a = a;
    assert_int_equal(sl_match(&c->upstreams[0], &call, &chk), 0);
    chk.app = sl_apps_id(apps, app, strlen(app));
    chk.app_name = sl_apps_name(apps, chk.app);
    assert_int_equal(sl_store_decide(st, &chk, on_cap, &r), 0);
    sl_check_clear(&chk);
    if (r.lease != NULL) {
        sl_store_commit(st, r.lease);
        sl_store_release(st, r.lease);
    }
    return r.d.verdict;
}

static void on_snap(void *arg, struct sl_snapshot *snap, const char *error)
{
    (void)error;
    *(struct sl_snapshot **)arg = snap;
}

static void test_round_trip_on_other_clocks(void **state)
{
    struct sl_config *c = load(cfg_text);
    struct sl_apps *apps = sl_apps_new(10), *apps2 = sl_apps_new(10);
    struct sl_store *a, *b;
    struct sl_snapshot *snap = NULL;
    struct sl_snapshot_req req = {.top = 10, .apps = apps2};
    char path[] = "/tmp/sluice-state-XXXXXX", err[256];
    size_t restored = 0;
    int fd = mkstemp(path);
    (void)state;

    close(fd);
    clock_a = 5000 * S;
    a = sl_store_memory_new(c, fake_a, NULL);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(sent(a, c, apps, i % 2 ? "billing" : "sync",
                              i % 2 ? "k1" : "k2"), SL_VERDICT_ALLOW);
        clock_a += S;
    }
    sl_store_pause(a, &c->upstreams[0], 30 * S, "status 429, Retry-After");
    assert_int_equal(sl_state_save(a, c, apps, path, err, sizeof(err)), 0);

    /* Another process: its monotonic clock is elsewhere entirely. */
    clock_b = 77 * S;
    b = sl_store_memory_new(c, fake_b, NULL);
    assert_int_equal(sl_state_load(b, c, apps2, path, &restored, err, sizeof(err)), 1);
    assert_int_equal(restored, 8);  /* 4 in daily, 2 + 2 in per "k1" and "k2" */
    assert_int_equal(sl_store_snapshot(b, &req, on_snap, &snap), 0);
    assert_non_null(snap);
    /* The same figures, apps and ages on the other clock. */
    const struct sl_usage *daily = &snap->ups[0].rules[0].buckets[0];
    assert_int_equal(daily->used, 4);
    assert_int_equal(daily->napps, 2);
    assert_int_equal(daily->apps[0].calls, 2);
    assert_int_equal(daily->apps[1].calls, 2);
    /* The oldest call was sent 4 s before the save: 1 h - 4 s to go. */
    assert_true(daily->resets_in_us > 3595 * S && daily->resets_in_us <= 3596 * S);
    assert_int_equal(snap->ups[0].rules[1].n, 2);
    assert_int_equal(snap->ups[0].rules[1].buckets[0].used, 2);
    assert_true(snap->ups[0].paused_us > 28 * S && snap->ups[0].paused_us <= 30 * S);
    assert_string_equal(snap->ups[0].pause_reason, "status 429, Retry-After");
    sl_snapshot_free(snap);
    /* Paused: the next call waits for the provider, not for a rule. */
    assert_int_equal(sent(b, c, apps2, "x", "k3"), SL_VERDICT_DENY);
    clock_b += 31 * S;
    assert_int_equal(sent(b, c, apps2, "x", "k3"), SL_VERDICT_ALLOW);
    assert_int_equal(sent(b, c, apps2, "x", "k3"), SL_VERDICT_DENY);  /* daily full */
    sl_store_destroy(a);
    sl_store_destroy(b);
    sl_apps_free(apps);
    sl_apps_free(apps2);
    unlink(path);
    sl_config_free(c);
}

/* Every prefix and every one-byte flip of a good file is refused, and the
 * store it was to be read into stays empty. */
static void test_every_truncation_and_flip_is_refused(void **state)
{
    struct sl_config *c = load(cfg_text);
    struct sl_apps *apps = sl_apps_new(10);
    struct sl_store *a;
    char path[] = "/tmp/sluice-state-XXXXXX", err[256];
    unsigned char buf[8192];
    size_t len, restored;
    FILE *f;
    int fd = mkstemp(path);
    (void)state;

    close(fd);
    clock_a = 9000 * S;
    a = sl_store_memory_new(c, fake_a, NULL);
    for (int i = 0; i < 3; i++)
        sent(a, c, apps, "app", i ? "k1" : "k2");
    sl_store_pause(a, &c->upstreams[0], 10 * S, "why");
    assert_int_equal(sl_state_save(a, c, apps, path, err, sizeof(err)), 0);
    f = fopen(path, "rb");
    len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    assert_true(len > 28 && len < sizeof(buf));
    assert_int_equal(sl_state_parse(buf, len, NULL, c, apps, &restored, err,
                                     sizeof(err)), 0);
    for (size_t cut = 0; cut < len; cut++) {
        struct sl_store *m = sl_store_memory_new(c, fake_a, NULL);
        assert_int_equal(sl_state_parse(buf, cut, m, c, apps, &restored, err,
                                        sizeof(err)), -1);
        assert_int_equal(sl_store_memory_keys(m), 0);
        sl_store_destroy(m);
    }
    for (size_t at = 0; at < len; at++) {
        struct sl_store *m = sl_store_memory_new(c, fake_a, NULL);
        buf[at] ^= 0x10;
        assert_int_equal(sl_state_parse(buf, len, m, c, apps, &restored, err,
                                        sizeof(err)), -1);
        assert_int_equal(sl_store_memory_keys(m), 0);
        buf[at] ^= 0x10;
        sl_store_destroy(m);
    }
    sl_store_destroy(a);
    sl_apps_free(apps);
    unlink(path);
    sl_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_on_other_clocks),
        cmocka_unit_test(test_every_truncation_and_flip_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
