/*
 * sl_window — the exact rolling window ("at most N calls in any interval of
 * length W"), as pure arithmetic on a log of admission times.
 *
 * The log keeps the admission times still inside the window, oldest first,
 * in a ring that grows on demand up to N entries.  A call at time t may be
 * admitted iff fewer than N logged times lie in (t - W, t].  When the log is
 * full the next admission is possible exactly at oldest + W, which is the
 * honest Retry-After.  No function here reads a clock: `now` is always an
 * argument, in microseconds of any monotonic time base.
 */
#ifndef SL_WINDOW_H
#define SL_WINDOW_H

#include <stddef.h>
#include <stdint.h>

/* Logged entries of one tag (see sl_window_count_tags). */
struct sl_tag_count {
    uint16_t tag;
    uint32_t n;
};

struct sl_window {
    int64_t *times;     /* ring of admission times (owned), capacity `cap` */
    uint16_t *tags;     /* ring of the calls' app ids, in the same block */
    uint32_t cap;       /* allocated slots, <= limit */
    uint32_t head;      /* index of the oldest entry */
    uint32_t count;     /* entries logged (after the last prune) */
    /* Per-tag counts of the logged entries, kept by every function that
     * adds or removes one, once sl_window_count_tags() was called (owned;
     * NULL: not kept).  Few tags per window: a short array. */
    struct sl_tag_count *tc;
    uint32_t ntc, captc;
};

/* Forget entries that left the window at NOW (time <= now - window). */
void sl_window_prune(struct sl_window *w, int64_t window_us, int64_t now);

/*
 * Microseconds from NOW until one more call fits: 0 if it fits now.
 * Prunes first.  LIMIT >= 1.
 */
int64_t sl_window_wait(struct sl_window *w, uint64_t limit, int64_t window_us,
                       int64_t now);

/*
 * Like sl_window_wait(), with RESERVED calls admitted but not yet logged
 * counting against LIMIT: one more fits iff logged + reserved < limit.
 * When the reservations alone fill the limit, room comes back no later
 * than one window after they are logged; WINDOW_US is returned.
 */
int64_t sl_window_wait_reserved(struct sl_window *w, uint64_t limit,
                                uint64_t reserved, int64_t window_us,
                                int64_t now);

/* Logged times strictly later than T (binary search; no pruning). */
uint32_t sl_window_count_after(const struct sl_window *w, int64_t t);

/*
 * Log an admission at NOW.  The caller has checked sl_window_wait() == 0.
 * Returns 0, or -1 if the ring could not grow (out of memory; nothing
 * changed).
 */
int sl_window_record(struct sl_window *w, uint64_t limit, int64_t now);

/* Forget the oldest entries until at most N are left. */
void sl_window_keep_newest(struct sl_window *w, uint64_t n);

/* The same, tagging the entry with TAG (the call's app id).  A log may
 * hold more than LIMIT entries when the limit was lowered under calls
 * already admitted (up to 2 x LIMIT + 64; past that the oldest go). */
int sl_window_record_tag(struct sl_window *w, uint64_t limit, int64_t now,
                         uint16_t tag);

/* Add one to COUNTS[tag] for each logged entry (tags >= N count in
 * COUNTS[N - 1]).  No pruning. */
void sl_window_tally(const struct sl_window *w, uint64_t *counts, size_t n);

/*
 * Make room for NEED entries (at most LIMIT) without logging any: a
 * reservation gets its slot when it is granted, so logging it when its
 * call is sent cannot fail.  Returns 0, or -1 when out of memory.
 */
int sl_window_ensure(struct sl_window *w, uint64_t limit, uint64_t need);

/* Calls that still fit in the window at NOW (limit - logged). Prunes first. */
uint64_t sl_window_remaining(struct sl_window *w, uint64_t limit,
                             int64_t window_us, int64_t now);

/* Microseconds until the oldest logged call leaves the window (0 if none). */
int64_t sl_window_next_expiry(const struct sl_window *w, int64_t window_us,
                              int64_t now);

/* Newest logged time, or INT64_MIN when empty. */
int64_t sl_window_newest(const struct sl_window *w);

/*
 * Keep per-tag counts of the logged entries from now on (the entries
 * already logged are counted now).  Returns 0, or -1 when out of memory
 * (then nothing is kept).  Idempotent.
 */
int sl_window_count_tags(struct sl_window *w);

/* Logged entries tagged TAG (sl_window_count_tags() must have been
 * called; no pruning). */
uint32_t sl_window_tag_count(const struct sl_window *w, uint16_t tag);

/* The time of the K-th oldest (0: the oldest) logged entry tagged TAG, or
 * INT64_MIN when there are not that many.  A scan from the oldest. */
int64_t sl_window_tag_time(const struct sl_window *w, uint16_t tag, uint32_t k);

/*
 * Add to W the entries of FROM later than AFTER that W does not hold (a
 * stamp in both is one call: stamps in one bucket are unique), keeping the
 * newest MOST.  Both are ordered; W stays so.  Per-tag counts are kept if
 * W kept them.  Returns 0, or -1 when out of memory (W unchanged, or
 * only its per-tag counts dropped, as sl_window_tc does).
 */
int sl_window_merge(struct sl_window *w, const struct sl_window *from,
                    int64_t after, uint64_t most);

/*
 * Forget up to K of the newest entries stamped no later than T (a call's
 * cost refunded: its own entries, or, where they cannot be told apart,
 * entries sent before it, which keeps the later ones: the safe side).
 * Returns how many were forgotten.
 */
uint32_t sl_window_remove(struct sl_window *w, int64_t t, uint32_t k);

/* Bytes held by the ring. */
size_t sl_window_bytes(const struct sl_window *w);

void sl_window_free(struct sl_window *w);

#endif
