/*
 * fuzz_tz — libFuzzer target for the zone file (TZif) reader and its
 * POSIX TZ rule.
 *
 * Arbitrary bytes are read as a zone file; one that is accepted must give
 * offsets within a day of UTC everywhere, and calendar periods that hold
 * the instant asked for (start <= t < end), at times across the table and
 * far past it (where the POSIX rule decides).
 *
 *   CC=clang cmake -S . -B build-fuzz -DSLUICE_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_tz
 *   build-fuzz/fuzz_tz -max_total_time=60 NEW_DIR tests/fuzz/corpus/tz
 */
#include "sl_calendar.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int64_t at[] = {-2208988800, 0, 1774785600, 1792929600,
                                 2147483647, 2540246400, 4102444800};
    char why[256];
    struct sl_tz *z = sl_tz_parse(data, size, why, sizeof(why));

    if (z == NULL)
        return 0;
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        int32_t off = sl_tz_offset(z, at[i]);
        if (off < -26 * 3600 || off > 26 * 3600)
            abort();
        for (int month = 0; month < 2; month++) {
            struct sl_calendar cal = {.tz = z, .month = month, .span_s = 3600};
            int64_t s, e, t = at[i] * 1000000;
            sl_calendar_period(&cal, t, &s, &e);
            if (!(s <= t && t < e))
                abort();
        }
    }
    sl_tz_free(z);
    return 0;
}
