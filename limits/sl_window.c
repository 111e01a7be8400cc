/*
 * sl_window — exact sliding-log window (see sl_window.h for the contract).
 *
 * Why it is exact: every admitted call is logged with its time, and a call
 * is admitted only if fewer than N logged calls are younger than W.  Take
 * any half-open interval [a, a + W) and the calls admitted in it, in order;
 * when the last of them was admitted at t < a + W, all the others were in
 * (t - W, t], so at most N - 1 of them existed: at most N in total.
 *
 * Memory: 8 bytes per call in the window, at most 8 * N per bucket; the
 * ring starts small and doubles, so a huge limit that is never approached
 * costs little.  Entries are pruned lazily on every access.
 */
#include "sl_window.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define SL_WINDOW_MIN_CAP 4

/* Count one more (DELTA 1) or one less (-1) logged entry of TAG, when
 * counts are kept.  Growing can fail only for a new tag; that entry then
 * goes uncounted (and the counts are dropped: see sl_window_count_tags). */
static void sl_window_tc(struct sl_window *w, uint16_t tag, int delta)
{
    uint32_t i;

    if (w->tc == NULL)
        return;
    for (i = 0; i < w->ntc && w->tc[i].tag != tag; i++)
        ;
    if (delta < 0) {
        if (i < w->ntc && --w->tc[i].n == 0)
            w->tc[i] = w->tc[--w->ntc];
        return;
    }
    if (i == w->ntc) {
        if (w->ntc == w->captc) {
            uint32_t cap = w->captc * 2;
            struct sl_tag_count *tc = realloc(w->tc, cap * sizeof(*tc));
            if (tc == NULL) {
                /* Out of memory: stop keeping counts rather than keep wrong
                 * ones; the next sl_window_count_tags() recounts. */
                free(w->tc);
                w->tc = NULL;
                w->ntc = w->captc = 0;
                return;
            }
            w->tc = tc;
            w->captc = cap;
        }
        w->tc[i].tag = tag;
        w->tc[i].n = 0;
        w->ntc++;
    }
    w->tc[i].n++;
}

/* Drop the oldest entry. */
static void sl_window_pop(struct sl_window *w)
{
    sl_window_tc(w, w->tags[w->head], -1);
    w->head = (w->head + 1) % w->cap;
    w->count--;
}

static int sl_window_grow(struct sl_window *w, uint64_t limit)
{
    uint64_t want = w->cap ? (uint64_t)w->cap * 2 : SL_WINDOW_MIN_CAP;
    int64_t *times;
    uint16_t *tags;

    if (want > limit)
        want = limit;
    if (want > UINT32_MAX)
        want = UINT32_MAX;
    if (want <= w->cap)
        return -1;
    /* One block: the times, then the tags. */
    times = malloc((size_t)want * (sizeof(*times) + sizeof(*tags)));
    if (times == NULL)
        return -1;
    tags = (uint16_t *)(times + want);
    /* Unroll the ring so the oldest entry lands at index 0. */
    for (uint32_t i = 0; i < w->count; i++) {
        times[i] = w->times[(w->head + i) % w->cap];
        tags[i] = w->tags[(w->head + i) % w->cap];
    }
    free(w->times);
    w->times = times;
    w->tags = tags;
    w->cap = (uint32_t)want;
    w->head = 0;
    return 0;
}

void sl_window_prune(struct sl_window *w, int64_t window_us, int64_t now)
{
    int64_t horizon = now - window_us;

    while (w->count > 0 && w->times[w->head] <= horizon)
        sl_window_pop(w);
    if (w->count == 0)
        w->head = 0;
}

int64_t sl_window_wait(struct sl_window *w, uint64_t limit, int64_t window_us,
                       int64_t now)
{
    return sl_window_wait_reserved(w, limit, 0, window_us, now);
}

int64_t sl_window_wait_reserved(struct sl_window *w, uint64_t limit,
                                uint64_t reserved, int64_t window_us,
                                int64_t now)
{
    uint64_t k;

    sl_window_prune(w, window_us, now);
    if (w->count + reserved < limit)
        return 0;
    /* Room when the (count + reserved - limit + 1)-th oldest entry leaves:
     * index k from the oldest, if it is a logged entry at all. */
    k = w->count + reserved - limit;
    if (k >= w->count)
        return window_us;
    return w->times[(w->head + k) % w->cap] + window_us - now;
}

uint32_t sl_window_count_after(const struct sl_window *w, int64_t t)
{
    uint32_t lo = 0, hi = w->count;

    /* First index (oldest = 0) whose time is > t; the log is ordered. */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (w->times[(w->head + mid) % w->cap] > t)
            hi = mid;
        else
            lo = mid + 1;
    }
    return w->count - lo;
}

int sl_window_ensure(struct sl_window *w, uint64_t limit, uint64_t need)
{
    if (need > limit)
        need = limit;
    while (w->cap < need)
        if (sl_window_grow(w, limit) != 0)
            return -1;
    return 0;
}

int sl_window_record(struct sl_window *w, uint64_t limit, int64_t now)
{
    return sl_window_record_tag(w, limit, now, 0);
}

void sl_window_tally(const struct sl_window *w, uint64_t *counts, size_t n)
{
    for (uint32_t i = 0; n > 0 && i < w->count; i++) {
        uint16_t t = w->tags[(w->head + i) % w->cap];
        counts[t < n ? t : n - 1]++;
    }
}

void sl_window_keep_newest(struct sl_window *w, uint64_t n)
{
    while (w->count > n)
        sl_window_pop(w);
    if (w->count == 0)
        w->head = 0;
}

int sl_window_record_tag(struct sl_window *w, uint64_t limit, int64_t now,
                         uint16_t tag)
{
    /* Past LIMIT only when the limit was lowered under calls already
     * admitted (a reload): they are all kept, so that raising the limit
     * again grants nothing they used; twice the limit bounds the ring. */
    uint64_t most = limit * 2 + 64;

    if (w->count >= most)
        sl_window_keep_newest(w, most - 1);
    if (w->count == w->cap &&
        sl_window_grow(w, w->count >= limit ? (uint64_t)w->count + 1 : limit) != 0)
        return -1;
    /* A clock that stepped back must not reorder the log: clamp. */
    if (w->count > 0) {
        int64_t newest = w->times[(w->head + w->count - 1) % w->cap];
        if (now < newest)
            now = newest;
    }
    w->times[(w->head + w->count) % w->cap] = now;
    w->tags[(w->head + w->count) % w->cap] = tag;
    w->count++;
    sl_window_tc(w, tag, 1);
    return 0;
}

int sl_window_count_tags(struct sl_window *w)
{
    if (w->tc != NULL)
        return 0;
    w->tc = malloc(4 * sizeof(*w->tc));
    if (w->tc == NULL)
        return -1;
    w->captc = 4;
    w->ntc = 0;
    for (uint32_t i = 0; i < w->count && w->tc != NULL; i++)
        sl_window_tc(w, w->tags[(w->head + i) % w->cap], 1);
    return w->tc != NULL ? 0 : -1;
}

uint32_t sl_window_tag_count(const struct sl_window *w, uint16_t tag)
{
    for (uint32_t i = 0; i < w->ntc; i++)
        if (w->tc[i].tag == tag)
            return w->tc[i].n;
    return 0;
}

int64_t sl_window_tag_time(const struct sl_window *w, uint16_t tag, uint32_t k)
{
    for (uint32_t i = 0; i < w->count; i++) {
        uint32_t j = (w->head + i) % w->cap;
        if (w->tags[j] == tag && k-- == 0)
            return w->times[j];
    }
    return INT64_MIN;
}

uint64_t sl_window_remaining(struct sl_window *w, uint64_t limit,
                             int64_t window_us, int64_t now)
{
    sl_window_prune(w, window_us, now);
    return w->count >= limit ? 0 : limit - w->count;
}

int64_t sl_window_next_expiry(const struct sl_window *w, int64_t window_us,
                              int64_t now)
{
    int64_t t;

    if (w->count == 0)
        return 0;
    t = w->times[w->head] + window_us - now;
    return t > 0 ? t : 0;
}

int64_t sl_window_newest(const struct sl_window *w)
{
    if (w->count == 0)
        return INT64_MIN;
    return w->times[(w->head + w->count - 1) % w->cap];
}

int sl_window_merge(struct sl_window *w, const struct sl_window *from,
                    int64_t after, uint64_t most)
{
    uint64_t n = 0, cap = (uint64_t)w->count + from->count;
    uint32_t i = 0, j = 0, skip;
    int64_t *times;
    uint16_t *tags;
    bool counted = w->tc != NULL;

    while (j < from->count && from->times[(from->head + j) % from->cap] <= after)
        j++;
    if (j == from->count)
        return 0;
    if (cap > UINT32_MAX)
        cap = UINT32_MAX;
    times = malloc((size_t)cap * (sizeof(*times) + sizeof(*tags)));
    if (times == NULL)
        return -1;
    tags = (uint16_t *)(times + cap);
    /* Both logs are ordered: one pass, a stamp in both taken once. */
    while ((i < w->count || j < from->count) && n < cap) {
        int64_t a = i < w->count ? w->times[(w->head + i) % w->cap] : INT64_MAX;
        int64_t b = j < from->count ? from->times[(from->head + j) % from->cap]
                                    : INT64_MAX;
        if (a <= b) {
            times[n] = a;
            tags[n++] = w->tags[(w->head + i++) % w->cap];
            if (a == b)
                j++;
        } else {
            times[n] = b;
            tags[n++] = from->tags[(from->head + j++) % from->cap];
        }
    }
    /* The newest MOST: the oldest beyond them decide nothing. */
    skip = n > most ? (uint32_t)(n - most) : 0;
    free(w->tc);
    free(w->times);
    w->tc = NULL;
    w->ntc = w->captc = 0;
    w->times = times;
    w->tags = tags;
    w->cap = (uint32_t)cap;
    w->head = skip;
    w->count = (uint32_t)n - skip;
    return counted ? sl_window_count_tags(w) : 0;
}

size_t sl_window_bytes(const struct sl_window *w)
{
    return (size_t)w->cap * (sizeof(int64_t) + sizeof(uint16_t)) +
           (size_t)w->captc * sizeof(struct sl_tag_count);
}

void sl_window_free(struct sl_window *w)
{
    free(w->tc);
    free(w->times);
    memset(w, 0, sizeof(*w));
}

uint32_t sl_window_remove(struct sl_window *w, int64_t t, uint32_t k)
{
    uint32_t end = w->count, m;

    /* Entries [end - m, end) go: the newest at or before T. */
    while (end > 0 && w->times[(w->head + end - 1) % w->cap] > t)
        end--;
    m = k < end ? k : end;
    if (m == 0)
        return 0;
    for (uint32_t j = end - m; j < end; j++)
        sl_window_tc(w, w->tags[(w->head + j) % w->cap], -1);
    for (uint32_t j = end; j < w->count; j++) {
        w->times[(w->head + j - m) % w->cap] = w->times[(w->head + j) % w->cap];
        w->tags[(w->head + j - m) % w->cap] = w->tags[(w->head + j) % w->cap];
    }
    w->count -= m;
    if (w->count == 0)
        w->head = 0;
    return m;
}
