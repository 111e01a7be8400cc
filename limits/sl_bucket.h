/*
 * sl_bucket — the leaky bucket ("at most BUCKET + rate x t calls in any
 * interval of length t"), as pure integer arithmetic.
 *
 * A leak of N calls per P microseconds is kept as the two integers, so a
 * bucket's level is held in units of 1/P call: one call adds P, and every
 * microsecond drains N.  No rounding happens anywhere ("0.5/s" is 1 per
 * 2,000,000 µs; "3/s" drains 3 units a µs of a call worth 1,000,000).
 *
 * A call of cost c fits at time t iff
 *
 *     level(t) + (reserved + c) x P <= cap,   cap = BUCKET x P - N x margin
 *
 * where reserved counts calls admitted and not yet sent (they enter the
 * level when sent, sl_bucket_add).  Why this is exact, and why the margin
 * comes off the capacity: docs/internals/design.md, "Leaky buckets".  No
 * function here reads a clock: `now` is an argument.
 */
#ifndef SL_BUCKET_H
#define SL_BUCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A leak rate: N calls every PER_US microseconds (both > 0, reduced). */
struct sl_leak {
    int64_t n;
    int64_t per_us;
};

/* The level of one bucket.  LEVEL is in units of 1/PER call of the leak
 * it was last written with (a reload that changes the leak rescales it,
 * sl_bucket_rescale); AT is when it was last brought up to date. */
struct sl_bucket {
    int64_t level;
    int64_t at;
};

/* The largest BUCKET x PER a rule may have: Lua numbers (doubles) in the
 * Redis script hold every integer up to 2^53, and sums of a few levels
 * stay below it. */
#define SL_BUCKET_MAX_UNITS (INT64_C(1) << 50)

/*
 * Parse "2/s", "40/m", "0.5/s", "3600/h" (a number with at most 6
 * decimals, '/', one of s m h) into *LEAK, reduced.  Returns 0, or -1
 * with nothing set when TEXT is not such a rate or is 0.
 */
int sl_leak_parse(const char *text, struct sl_leak *leak);

/* The capacity in level units: BUCKET x PER less N x MARGIN_US (never
 * below 0). */
int64_t sl_bucket_cap(uint64_t bucket, const struct sl_leak *leak, int64_t margin_us);

/* B's level drained to NOW (B unchanged).  A NOW before B->at (a clock
 * that stepped back) drains nothing. */
int64_t sl_bucket_level(const struct sl_bucket *b, const struct sl_leak *leak,
                        int64_t now);

/*
 * Microseconds from NOW until COST more calls fit, with RESERVED calls
 * admitted and not yet sent counting as if in the level: 0 if they fit
 * now.  Honest: with nothing else happening, the call fits exactly then.
 * When COST + RESERVED calls could never fit (more than CAP), the time
 * for the whole level to drain, at least one call's worth.
 */
int64_t sl_bucket_wait(const struct sl_bucket *b, const struct sl_leak *leak,
                       int64_t cap, uint64_t reserved, uint64_t cost, int64_t now);

/* Whole calls that still fit at NOW (after RESERVED). */
uint64_t sl_bucket_room(const struct sl_bucket *b, const struct sl_leak *leak,
                        int64_t cap, uint64_t reserved, int64_t now);

/* Microseconds until B is empty (what RateLimit's reset says). */
int64_t sl_bucket_empty_in(const struct sl_bucket *b, const struct sl_leak *leak,
                           int64_t now);

/* COST calls were sent: drain B to NOW, then add them.  A NOW before
 * B->at adds them at B->at. */
void sl_bucket_add(struct sl_bucket *b, const struct sl_leak *leak, uint64_t cost,
                   int64_t now);

/*
 * B was replayed from the sends of the last SPAN_US only, AT[0..N) (oldest
 * first, none after NOW: a state file, or Redis's log after it lost the
 * level), as if empty before them.  Count what may have been in it: by
 * the queue's reflection formula, for any moment u the level now is at
 * most max(the replay, Q(u) + the sends after u - N x (NOW - u)), and
 * Q(u) is at most full = BUCKET x PER at the span's start and just after
 * each send (it was admitted).  B becomes the least of these bounds over
 * those moments if above its level, at most full: at most the burst,
 * undrained, for a bucket empty a drain time before one; full for one
 * kept full at the leak rate.  limits/lua/repair.lua has the same arithmetic.
 */
void sl_bucket_refill(struct sl_bucket *b, const struct sl_leak *leak, uint64_t bucket,
                      const int64_t *at, size_t n, int64_t span_us, int64_t now);

/* The provider says its bucket held USED calls when it answered the call
 * sent at SENT_AT, and AFTER calls were sent since (not in its count): B
 * becomes that, drained to NOW (each later call counted whole, the safe
 * side).  Lowers or raises B. */
void sl_bucket_set(struct sl_bucket *b, const struct sl_leak *leak, uint64_t used,
                   int64_t sent_at, uint64_t after, int64_t now);

/* B was written with leak FROM; express it in units of TO (rounded up:
 * a reload never grants room). */
void sl_bucket_rescale(struct sl_bucket *b, const struct sl_leak *from,
                       const struct sl_leak *to);

#endif
