/*
 * sl_duration — durations and byte sizes as written in the configuration.
 *
 * Durations are kept as signed 64-bit microseconds everywhere in sluice:
 * enough for a window of many years, fine enough for a 250 ms window.
 * Every duration a parser here returns is at most SL_DURATION_MAX, so the
 * sum of a timestamp and a few durations never comes near INT64_MAX.
 */
#ifndef SL_DURATION_H
#define SL_DURATION_H

#include <stddef.h>
#include <stdint.h>

#define SL_USEC_PER_SEC INT64_C(1000000)
#define SL_USEC_PER_MSEC INT64_C(1000)

/* The longest duration (and largest size) accepted: 2^53 us, ~285 years. */
#define SL_DURATION_MAX (INT64_C(1) << 53)

/* A buffer this long holds any sl_duration_format() result. */
#define SL_DURATION_FORMAT_MAX 32

/*
 * Parse "250ms", "10s", "5m", "24h", "1d" into microseconds.
 *
 * Grammar: DIGITS [ "." DIGITS ] UNIT, UNIT one of ms s m h d (lower case),
 * nothing before or after.  A point needs a digit on both sides, as in a
 * JSON number: "0.5s" and "1.0s", never ".5s" or "1.s" (a lone point is
 * more often a lost digit than shorthand).  No sign ("-1s", "+1s"), no
 * exponent ("1e3s"), no spaces.
 *
 * Exact: the value is computed digit by digit in integers, with any number
 * of fractional digits, and rounded once, to the nearest microsecond with
 * halves rounded up: "0.0000005s" is 1 us, "0.123456789d" is
 * 10666666570 us (10666666569.6 exactly).
 *
 * Returns 0 and sets *out (>= 0); -1 when TEXT is not a duration (or NULL);
 * -2 when it is one but longer than SL_DURATION_MAX.  Zero parses; the
 * caller decides whether it is acceptable.
 */
int sl_duration_parse(const char *text, int64_t *out);

/*
 * Convert a number of seconds (a JSON number, possibly fractional) to
 * microseconds.  The number is read as the shortest decimal that prints
 * back to the same double, i.e. as written in the file, so 0.1 is exactly
 * 100000 us; then rounded as sl_duration_parse() does (halves away from
 * zero).  Negative values convert (the caller refuses them with a better
 * sentence).  Returns 0, or -1 for NaN, infinities and magnitudes beyond
 * SL_DURATION_MAX.
 */
int sl_duration_from_seconds(double seconds, int64_t *out);

/*
 * Write US as the shortest exact form sl_duration_parse() reads back:
 * "250ms", "10s", "5m", "1d", "1.5s", "36h" (not "1.5d": shorter), "0s".
 * Among the units that give an exact decimal with a whole part of at least
 * one, the shortest text wins (the larger unit on a tie); below 1 ms it is
 * a fraction of a millisecond ("0.001ms").  A negative US gets a '-' (not
 * parseable back; sluice only formats them in diagnostics).
 * Returns the length written (without the NUL), or -1 when LEN bytes are
 * not enough (BUF then holds "" if LEN > 0).  SL_DURATION_FORMAT_MAX
 * bytes always suffice.
 */
int sl_duration_format(int64_t us, char *buf, size_t len);

/*
 * Parse a byte size: "65536", "64k", "64KB", "16m", "16MiB", "1g", "1.5g".
 * Units are powers of 1024, letter case is ignored; the same digit rules
 * and rounding as durations (to the nearest byte).  Returns 0 and sets
 * *out, -1 when TEXT is not a size, -2 when it is above SL_DURATION_MAX.
 */
int sl_size_parse(const char *text, uint64_t *out);

/* Whole seconds, rounded up, of a non-negative duration. */
int64_t sl_duration_ceil_seconds(int64_t usec);

#endif
