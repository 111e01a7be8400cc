/*
 * sl_duration — durations and byte sizes as written in the configuration.
 *
 * Durations are kept as signed 64-bit microseconds everywhere in sluice:
 * enough for a window of many years, fine enough for a 250 ms window.
 */
#ifndef SL_DURATION_H
#define SL_DURATION_H

#include <stddef.h>
#include <stdint.h>

#define SL_USEC_PER_SEC INT64_C(1000000)
#define SL_USEC_PER_MSEC INT64_C(1000)

/*
 * Parse "250ms", "10s", "5m", "24h", "1d" (an optional fraction is allowed:
 * "1.5s") into microseconds.  Returns 0 and sets *out, or -1 when the text
 * is not a duration.  Zero and negative durations are parsed; the caller
 * decides whether they are acceptable.
 */
int sl_duration_parse(const char *text, int64_t *out);

/* Convert a number of seconds (possibly fractional) to microseconds.
 * Returns -1 for NaN, infinities and values beyond ~290,000 years. */
int sl_duration_from_seconds(double seconds, int64_t *out);

/*
 * Parse a byte size: "65536", "64k", "64KB", "16m", "16MiB", "1g".
 * Units are powers of 1024.  Returns 0 and sets *out, or -1.
 */
int sl_size_parse(const char *text, uint64_t *out);

/* Whole seconds, rounded up, of a non-negative duration. */
int64_t sl_duration_ceil_seconds(int64_t usec);

#endif
