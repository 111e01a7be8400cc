/*
 * fuzz_config — libFuzzer target for the configuration parser.
 *
 * Arbitrary bytes are handed to sl_config_parse() as a configuration file
 * (a NUL-terminated copy: the parser takes a C string), and whatever comes
 * back is freed, so ASan and UBSan see every path the validator walks,
 * including the ones that fail half-way through an upstream.
 *
 * Beyond "no crash, no leak", the target checks what the parser promises:
 *   - every error line is printable ASCII (values are echoed escaped);
 *   - a valid config holds sane numbers: every rate rule's span is its
 *     window plus the upstream's margin, and every duration prints with
 *     sl_duration_format() and parses back to the same microseconds.
 * The same bytes are also tried as a bare duration ("0.25d"), which must
 * round-trip the same way when it parses.
 *
 * Build and run (clang only):
 *   CC=clang cmake -S . -B build-fuzz -DSLUICE_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_config
 *   build-fuzz/fuzz_config -max_total_time=60 NEW_DIR tests/fuzz/corpus/config
 * (new inputs go to NEW_DIR; the seed corpus stays as committed), or by hand:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE \
 *     -Ilimits -Icommon tests/fuzz/fuzz_config.c limits/sl_config.c \
 *     limits/sl_duration.c limits/sl_pattern.c -ljansson -lm -o fuzz_config
 */
#include "sl_config.h"
#include "sl_duration.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken promise: stop here so libFuzzer saves the input. */
static void sl_fuzz_check(int ok)
{
    if (!ok)
        __builtin_trap();
}

static void sl_fuzz_round_trip(int64_t us)
{
    char buf[SL_DURATION_FORMAT_MAX];
    int64_t back;

    if (us < 0)
        return;
    sl_fuzz_check(sl_duration_format(us, buf, sizeof(buf)) > 0);
    sl_fuzz_check(sl_duration_parse(buf, &back) == 0 && back == us);
}

static void sl_fuzz_valid_config(const struct sl_config *c)
{
    sl_fuzz_round_trip(c->header_timeout_us);
    sl_fuzz_round_trip(c->max_retry_after_us);
    sl_fuzz_check(c->local_share > 0.0 && c->local_share <= 1.0);
    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *u = &c->upstreams[i];
        sl_fuzz_check(u->name != NULL && u->prefix != NULL && u->url != NULL);
        sl_fuzz_check(u->reject_status >= 400 && u->reject_status <= 599);
        sl_fuzz_round_trip(u->margin_us);
        sl_fuzz_round_trip(u->default_pause_us);
        for (size_t k = 0; k <= u->nrules; k++) {
            const struct sl_rule *r = sl_upstream_rule(u, k);
            sl_fuzz_check(r->name != NULL);
            if (r->kind == SL_RULE_RATE && r->leaky) {
                /* A bucket: the margin is the upstream's, or min(100 ms,
                 * one call's leak / 20), and comes off the capacity. */
                int64_t one = (r->leak.per_us + r->leak.n - 1) / r->leak.n;
                int64_t m = u->margin_us != SL_MARGIN_AUTO ? u->margin_us
                            : one / 20 < 100000 ? one / 20 : 100000;
                sl_fuzz_check(r->leak.n > 0 && r->leak.per_us > 0);
                sl_fuzz_check(r->span_us == r->window_us + m);
                sl_fuzz_check(r->bucket_cap == sl_bucket_cap(r->limit, &r->leak, m));
                sl_fuzz_check(r->bucket_cap >= r->leak.per_us);
                sl_fuzz_check(r->cost >= 1 && r->cost <= r->limit);
            } else if (r->kind == SL_RULE_RATE) {
                sl_fuzz_check(r->window_us > 0);
                /* The margin: the upstream's, or min(100 ms, window / 20). */
                int64_t m = u->margin_us != SL_MARGIN_AUTO ? u->margin_us
                            : r->window_us / 20 < 100000 ? r->window_us / 20 : 100000;
                sl_fuzz_check(u->margin_us == SL_MARGIN_AUTO || u->margin_us >= 0);
                sl_fuzz_check(r->span_us == r->window_us + m);
                sl_fuzz_round_trip(r->window_us);
            }
            sl_fuzz_round_trip(r->sync_probe_us);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sl_errors errs = {0};
    struct sl_config *c = NULL;
    char *text = malloc(size + 1);
    int64_t us;

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    if (sl_config_parse(text, "fuzz", false, &c, &errs) == 0) {
        sl_fuzz_check(c != NULL && errs.count == 0);
        sl_fuzz_valid_config(c);
        sl_config_free(c);
    } else {
        sl_fuzz_check(c == NULL && errs.count > 0);
    }
    for (size_t i = 0; i < errs.count; i++)
        for (const char *p = errs.lines[i]; *p; p++)
            sl_fuzz_check(*p >= 0x20 && *p <= 0x7e);
    sl_errors_free(&errs);

    if (sl_duration_parse(text, &us) == 0)
        sl_fuzz_round_trip(us);

    free(text);
    return 0;
}
