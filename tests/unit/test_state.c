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

/* ---- the journal, the clocks, forged files ---- */

#define BOOT_A "AAAAAAAAAAAAAAAA"
#define BOOT_B "BBBBBBBBBBBBBBBB"
#define WALL0 (1800000000LL * S)   /* the wall clock when clock_a reads 0 */

/* The journal a running sluice on boot A would write (sl_state_on_sent's
 * record, on fake clocks). */
struct jbuf {
    unsigned char b[16384];
    size_t len;
    struct sl_apps *apps;
};

static void on_sent(void *arg, const struct sl_upstream_conf *up, uint16_t app,
                    const struct sl_mem_sent_slot *slots, size_t n)
{
    struct jbuf *j = arg;
    struct sl_state_clock at;
    size_t len;

    memcpy(at.boot_id, BOOT_A, 16);
    at.store = clock_a;
    at.wall = WALL0 + clock_a;
    len = sl_state_journal_record(j->b + j->len, sizeof(j->b) - j->len, &at,
                                  up->name, sl_apps_name(j->apps, app), slots, n);
    assert_true(len > 0 && j->len + len <= sizeof(j->b));
    j->len += len;
}

/* A snapshot of A as boot A would have written it: its clocks patched in
 * (sl_state_save reads the real ones), then sealed again. */
static size_t snapshot_on_boot_a(struct sl_store *a, struct sl_config *c,
                                 struct sl_apps *apps, unsigned char *buf, size_t cap)
{
    char path[] = "/tmp/sluice-state-XXXXXX", err[256];
    int fd = mkstemp(path);
    FILE *f;
    size_t len;

    close(fd);
    assert_int_equal(sl_state_save(a, c, apps, path, err, sizeof(err)), 0);
    f = fopen(path, "rb");
    len = fread(buf, 1, cap, f);
    fclose(f);
    unlink(path);
    for (int i = 0; i < 8; i++) {
        buf[28 + i] = (unsigned char)((uint64_t)(WALL0 + clock_a) >> (8 * i));
        buf[36 + i] = (unsigned char)((uint64_t)clock_a >> (8 * i));
    }
    memcpy(buf + 44, BOOT_A, 16);
    return sl_state_seal(buf, buf + 28, len - 28);
}

static size_t used_daily(struct sl_store *st, struct sl_apps *apps)
{
    struct sl_snapshot *snap = NULL;
    struct sl_snapshot_req req = {.top = 10, .apps = apps};
    size_t used;

    assert_int_equal(sl_store_snapshot(st, &req, on_snap, &snap), 0);
    used = snap->ups[0].rules[0].buckets[0].used;
    sl_snapshot_free(snap);
    return used;
}

/* Load SNAP and J into a fresh store on clock NOW: its stats. */
static struct sl_state_stats load_at(struct sl_config *c, const unsigned char *snap,
                                     size_t slen, const unsigned char *j, size_t jlen,
                                     const char *boot, int64_t store, int64_t wall,
                                     size_t *used)
{
    struct sl_state_clock now;
    struct sl_state_stats st;
    struct sl_apps *apps = sl_apps_new(10);
    struct sl_store *b;
    char err[256];

    memcpy(now.boot_id, boot, 16);
    now.store = store;
    now.wall = wall;
    clock_b = store;
    b = sl_store_memory_new(c, fake_b, NULL);
    assert_int_equal(sl_state_apply(snap, slen, j, jlen, NULL, c, apps, &now, &st,
                                    err, sizeof(err)), 0);
    assert_int_equal(sl_state_apply(snap, slen, j, jlen, b, c, apps, &now, &st, err,
                                    sizeof(err)), 0);
    *used = used_daily(b, apps);
    sl_store_destroy(b);
    sl_apps_free(apps);
    return st;
}

/* Calls in the snapshot and in the journal count once; calls only the
 * journal has count too; a journal cut anywhere costs only what it cut. */
static void test_journal_replay_counts_each_call_once(void **state)
{
    struct sl_config *c = load(cfg_text);
    struct jbuf *j = calloc(1, sizeof(*j));
    unsigned char snap[8192];
    struct sl_state_stats st;
    struct sl_store *a;
    size_t slen, used;
    (void)state;

    j->apps = sl_apps_new(10);
    clock_a = 5000 * S;
    a = sl_store_memory_new(c, fake_a, NULL);
    sl_store_memory_on_sent(a, on_sent, j);
    /* Two in the same microsecond: stamped apart, so both count. */
    assert_int_equal(sent(a, c, j->apps, "sync", "k1"), SL_VERDICT_ALLOW);
    assert_int_equal(sent(a, c, j->apps, "sync", "k1"), SL_VERDICT_ALLOW);
    slen = snapshot_on_boot_a(a, c, j->apps, snap, sizeof(snap));
    clock_a += S;
    assert_int_equal(sent(a, c, j->apps, "billing", "k2"), SL_VERDICT_ALLOW);

    /* Same boot, a second later: 2 from the snapshot, 1 from the journal. */
    st = load_at(c, snap, slen, j->b, j->len, BOOT_A, clock_a + S,
                 WALL0 + clock_a + S, &used);
    assert_int_equal(st.restored, 3 + 3);  /* daily 3, per k1 2 and k2 1 */
    assert_int_equal(st.journaled, 2);     /* daily and per k2 */
    assert_int_equal(used, 3);
    /* The journal twice over (a crash between rotation steps, in the worst
     * case): records the snapshot holds are matched; the others are
     * double counted, the safe side. */
    memcpy(j->b + j->len, j->b, j->len);
    st = load_at(c, snap, slen, j->b, 2 * j->len, BOOT_A, clock_a + S,
                 WALL0 + clock_a + S, &used);
    assert_int_equal(used, 4);
    /* No snapshot at all (a crash before the first write): the journal. */
    st = load_at(c, NULL, 0, j->b, j->len, BOOT_A, clock_a + S, WALL0 + clock_a + S,
                 &used);
    assert_int_equal(used, 3);
    /* Every cut of the journal tears its last record (the third call's;
     * the first two are in the snapshot): that call alone is lost, and
     * nothing is counted twice or refused. */
    for (size_t cut = 0; cut < j->len; cut++) {
        st = load_at(c, snap, slen, j->b, cut, BOOT_A, clock_a + S,
                     WALL0 + clock_a + S, &used);
        assert_int_equal(used, 2);
    }
    sl_store_destroy(a);
    sl_apps_free(j->apps);
    free(j);
    sl_config_free(c);
}

/* In one boot the monotonic stamps hold whatever the wall clock says;
 * across a reboot wall time is all there is, and a stamp it puts in the
 * future counts as sent now. */
static void test_clock_steps(void **state)
{
    struct sl_config *c = load(cfg_text);
    struct jbuf *j = calloc(1, sizeof(*j));
    unsigned char snap[8192];
    struct sl_state_stats st;
    struct sl_store *a;
    size_t slen, used;
    (void)state;

    j->apps = sl_apps_new(10);
    clock_a = 5000 * S;
    a = sl_store_memory_new(c, fake_a, NULL);
    sl_store_memory_on_sent(a, on_sent, j);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sent(a, c, j->apps, "sync", "k1"), SL_VERDICT_ALLOW);
    slen = snapshot_on_boot_a(a, c, j->apps, snap, sizeof(snap));

    /* Same boot, 10 s later, the wall clock stepped 2 h forward: all 3
     * still in their 1 h window. */
    st = load_at(c, snap, slen, j->b, j->len, BOOT_A, clock_a + 10 * S,
                 WALL0 + clock_a + 7210 * S, &used);
    assert_int_equal(used, 3);
    /* ... or 2 h back: the same, nothing clamped. */
    st = load_at(c, snap, slen, j->b, j->len, BOOT_A, clock_a + 10 * S,
                 WALL0 + clock_a - 7190 * S, &used);
    assert_int_equal(used, 3);
    assert_int_equal(st.clamped, 0);
    /* Another boot, 10 s later by the wall clock: found by wall time. */
    st = load_at(c, snap, slen, j->b, j->len, BOOT_B, 3 * S, WALL0 + clock_a + 10 * S,
                 &used);
    assert_int_equal(used, 3);
    /* Another boot, 2 h later by the wall clock: aged out, as it must. */
    st = load_at(c, snap, slen, j->b, j->len, BOOT_B, 3 * S,
                 WALL0 + clock_a + 7200 * S, &used);
    assert_int_equal(st.restored, 0);
    /* Another boot whose wall clock went back a day: counted as now. */
    st = load_at(c, snap, slen, j->b, j->len, BOOT_B, 3 * S,
                 WALL0 + clock_a - 86400 * S, &used);
    assert_int_equal(used, 3);
    assert_true(st.clamped >= 3);
    sl_store_destroy(a);
    sl_apps_free(j->apps);
    free(j);
    sl_config_free(c);
}

static void put(unsigned char **p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        *(*p)++ = (unsigned char)(v >> (8 * i));
}

static void put_str(unsigned char **p, const char *s, int lenbytes)
{
    put(p, strlen(s), lenbytes);
    memcpy(*p, s, strlen(s));
    *p += strlen(s);
}

/* A version 2 file with one record, checksum valid: a rate record with
 * the send time T, or (PAUSE) a pause until T.  Saved at SAVED. */
static size_t forge(unsigned char *buf, int64_t saved, int64_t t, int pause)
{
    unsigned char payload[512], *p = payload;

    put(&p, (uint64_t)saved, 8);
    put(&p, (uint64_t)saved, 8);
    memset(p, 0, 16);
    p += 16;
    put(&p, 1, 4);
    put_str(&p, "-", 2);
    put(&p, 1, 4);
    put(&p, pause ? 2 : 1, 1);
    put_str(&p, "crm", 2);
    put_str(&p, pause ? "" : "daily", 2);
    put_str(&p, "", 4);
    if (pause) {
        put(&p, (uint64_t)t, 8);
        put_str(&p, "forged", 2);
    } else {
        put(&p, 1, 4);
        put(&p, (uint64_t)t, 8);
        put(&p, 0, 2);
    }
    return sl_state_seal(buf, payload, (size_t)(p - payload));
}

/* Forged files with valid checksums: times at the ends of int64 are
 * refused with a reason, never computed with (UBSan watches). */
static void test_forged_times_are_refused(void **state)
{
    struct sl_config *c = load(cfg_text);
    struct sl_apps *apps = sl_apps_new(10);
    struct sl_state_clock now = {{0}, WALL0, 100 * S};
    unsigned char buf[1024];
    char err[256];
    size_t len;
    const struct {
        int64_t saved, t;
        int pause;
        const char *why;
    } cases[] = {
        {WALL0, INT64_MIN, 0, "out of range"},
        {WALL0, INT64_MAX, 0, "out of range"},
        {WALL0, WALL0 - 401 * 86400 * S, 0, "out of range"},
        {WALL0, INT64_MAX, 1, "out of range"},
        {WALL0, INT64_MIN, 1, "out of range"},
        {WALL0, WALL0 + 9 * 86400 * S, 1, "out of range"},
        {INT64_MIN, INT64_MIN, 0, "save time"},
        {INT64_MAX, INT64_MAX, 1, "save time"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sl_store *m = sl_store_memory_new(c, fake_b, NULL);
        len = forge(buf, cases[i].saved, cases[i].t, cases[i].pause);
        assert_int_equal(sl_state_apply(buf, len, NULL, 0, m, c, apps, &now, NULL,
                                        err, sizeof(err)), -1);
        assert_non_null(strstr(err, cases[i].why));
        assert_int_equal(sl_store_memory_keys(m), 0);
        sl_store_destroy(m);
    }
    /* In range, they load: a pause of the longest a provider may ask. */
    {
        struct sl_store *m = sl_store_memory_new(c, fake_b, NULL);
        len = forge(buf, WALL0, WALL0 + 7 * 86400 * S, 1);
        assert_int_equal(sl_state_apply(buf, len, NULL, 0, m, c, apps, &now, NULL,
                                        err, sizeof(err)), 0);
        sl_store_destroy(m);
    }
    /* A journal record with extreme times is skipped, not computed with. */
    {
        struct sl_state_clock at = {{0}, INT64_MIN, INT64_MAX};
        struct sl_mem_sent_slot slot = {&c->upstreams[0].rules[0], "", 0, INT64_MIN};
        struct sl_state_stats st;
        struct sl_store *m = sl_store_memory_new(c, fake_b, NULL);
        len = sl_state_journal_record(buf, sizeof(buf), &at, "crm", "-", &slot, 1);
        assert_true(len > 0);
        assert_int_equal(sl_state_apply(NULL, 0, buf, len, m, c, apps, &now, &st,
                                        err, sizeof(err)), 0);
        assert_int_equal(st.restored, 0);
        assert_true(st.skipped > 0);
        sl_store_destroy(m);
    }
    sl_apps_free(apps);
    sl_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_on_other_clocks),
        cmocka_unit_test(test_every_truncation_and_flip_is_refused),
        cmocka_unit_test(test_journal_replay_counts_each_call_once),
        cmocka_unit_test(test_clock_steps),
        cmocka_unit_test(test_forged_times_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
