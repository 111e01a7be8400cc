/* Unit tests: the usage reports a worker keeps to put back after Redis
 * lost data (sl_fleet_report), and the reports section of repair.lua's
 * arguments (sl_repair_args). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sl_config.h"
#include "sl_redis_repair.h"

#define S 1000000   /* one second in microseconds */

/* What sl_repair_args wrote: every key as "type:per", every argument. */
struct capture {
    char keys[64][64];
    size_t nkeys;
    char args[128][64];
    size_t nargs;
};

static void cap_key(void *ctx, const struct sl_upstream_conf *up, const struct sl_rule *rule,
                    char type, const char *per, size_t per_len)
{
    struct capture *c = ctx;
    (void)up, (void)rule;
    assert_true(c->nkeys < 64);
    snprintf(c->keys[c->nkeys++], 64, "%c:%.*s", type, (int)per_len, per);
}

static void cap_arg(void *ctx, const char *s, size_t len)
{
    struct capture *c = ctx;
    assert_true(c->nargs < 128);
    snprintf(c->args[c->nargs++], 64, "%.*s", (int)len, s);
}

static void cap_num(void *ctx, long long v)
{
    struct capture *c = ctx;
    assert_true(c->nargs < 128);
    snprintf(c->args[c->nargs++], 64, "%lld", v);
}

static struct sl_rule rule = {.name = "daily", .kind = SL_RULE_RATE, .sync = SL_SYNC_SFORCE,
                              .limit = 100, .span_us = 10 * S, .sync_probe_us = S};
static struct sl_upstream_conf up = {.name = "crm", .rules = &rule, .nrules = 1};

static void test_the_newest_report_of_each_bucket_is_kept(void **state)
{
    struct sl_fleet f;
    char per[16];
    (void)state;
    assert_int_equal(sl_fleet_init(&f, 4), 0);
    sl_fleet_report(&f, &up, &rule, "", 0, 10, 5 * S);
    sl_fleet_report(&f, &up, &rule, "", 0, 7, 6 * S);   /* newer: replaces */
    sl_fleet_report(&f, &up, &rule, "", 0, 50, 4 * S);  /* older: ignored */
    assert_int_equal(f.nreports, 1);
    assert_int_equal(f.reports[0].remaining, 7);
    assert_int_equal(f.reports[0].sent_us, 6 * S);
    /* Past SL_FLEET_REPORTS buckets, the oldest report goes first. */
    for (int i = 0; i < SL_FLEET_REPORTS; i++) {
        snprintf(per, sizeof(per), "t%d", i);
        sl_fleet_report(&f, &up, &rule, per, strlen(per), (uint64_t)i, 10 * S + i);
    }
    assert_int_equal(f.nreports, SL_FLEET_REPORTS);
    for (size_t i = 0; i < f.nreports; i++)
        assert_true(f.reports[i].sent_us >= 10 * S);   /* "" (6 s) was dropped */
    sl_fleet_free(&f);
}

static void test_reports_in_force_are_put_back_with_their_send(void **state)
{
    struct sl_fleet f;
    struct capture c = {0};
    struct sl_repair_out out = {&c, cap_key, cap_arg, cap_num, NULL};
    struct sl_repair_clock clock = {.now_us = 100 * S, .have_offset = true,
                                    .offset_us = 7 * S, .drift_div = 1000,
                                    .allowance_us = S / 2};
    (void)state;
    assert_int_equal(sl_fleet_init(&f, 4), 0);
    sl_fleet_report(&f, &up, &rule, "", 0, 9, 98 * S);        /* 2 s ago: in force */
    sl_fleet_report(&f, &up, &rule, "x", 1, 3, 80 * S);       /* 20 s ago: past the span */
    assert_int_equal(sl_repair_args(NULL, &up, "me", 1, NULL, 0, &f, &clock, NULL, 0, &out), 0);
    /* m, k; then the report's r and s */
    assert_int_equal(c.nkeys, 4);
    assert_string_equal(c.keys[2], "r:");
    assert_string_equal(c.keys[3], "s:");
    /* member, since, 0 buckets, 0 slots, 1 report: leaky 0, remaining 9,
     * 2 s ago, known send 98 s + 7 s less 2 ms of drift, allowance,
     * span, limit, probe; then no pause */
    const char *want[] = {"me", "1", "0", "0", "1", "0", "9", "2000000", "104998000",
                          "500000", "10000000", "100", "1000000", "0"};
    assert_int_equal(c.nargs, sizeof(want) / sizeof(*want));
    for (size_t i = 0; i < c.nargs; i++)
        assert_string_equal(c.args[i], want[i]);
    /* without a clock bound: 0, the script takes the allowance */
    memset(&c, 0, sizeof(c));
    clock.have_offset = false;
    assert_int_equal(sl_repair_args(NULL, &up, "me", 1, NULL, 0, &f, &clock, NULL, 0, &out), 0);
    assert_string_equal(c.args[8], "0");
    sl_fleet_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_newest_report_of_each_bucket_is_kept),
        cmocka_unit_test(test_reports_in_force_are_put_back_with_their_send),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
