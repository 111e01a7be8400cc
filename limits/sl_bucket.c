/*
 * sl_bucket — leaky-bucket arithmetic in integers (see sl_bucket.h).
 *
 * Every quantity is an int64: levels are at most SL_BUCKET_MAX_UNITS
 * (2^50), a drain N x dt is only multiplied out once dt is known to be
 * below level / N + 1, and a count of calls is multiplied by PER only once
 * it is known to fit the capacity.
 */
#include "sl_bucket.h"

#include <stddef.h>
#include <string.h>

#include "sl_duration.h"

static int64_t sl_gcd(int64_t a, int64_t b)
{
    while (b != 0) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int sl_leak_parse(const char *text, struct sl_leak *leak)
{
    int64_t num = 0, scale = 1, unit;
    int digits = 0, decimals = -1;
    const char *p = text;

    if (text == NULL)
        return -1;
    for (; *p != '/'; p++) {
        if (*p >= '0' && *p <= '9') {
            if (digits >= 12)
                return -1;
            num = num * 10 + (*p - '0');
            digits++;
            if (decimals >= 0) {
                if (++decimals > 6)
                    return -1;
                scale *= 10;
            }
        } else if (*p == '.' && decimals < 0 && digits > 0) {
            decimals = 0;
        } else {
            return -1;
        }
    }
    if (digits == 0 || decimals == 0 || num == 0)
        return -1;  /* "/s", "1./s", "0/s" */
    p++;
    if (strcmp(p, "s") == 0)
        unit = SL_USEC_PER_SEC;
    else if (strcmp(p, "m") == 0)
        unit = 60 * SL_USEC_PER_SEC;
    else if (strcmp(p, "h") == 0)
        unit = 3600 * SL_USEC_PER_SEC;
    else
        return -1;
    /* NUM / SCALE calls per UNIT µs: NUM calls per UNIT x SCALE µs.  At
     * most 10^12 x 3.6 x 10^9 before reducing: too much for one int64
     * only when both are extreme, which the reduction then undoes. */
    {
        int64_t g = sl_gcd(num, unit);
        num /= g;
        unit /= g;
        g = sl_gcd(num, scale);
        num /= g;
        scale /= g;
        if (unit > INT64_MAX / scale)
            return -1;
        leak->n = num;
        leak->per_us = unit * scale;
    }
    return 0;
}

int64_t sl_bucket_cap(uint64_t bucket, const struct sl_leak *leak, int64_t margin_us)
{
    int64_t full = (int64_t)bucket * leak->per_us;

    if (margin_us <= 0)
        return full;
    if (margin_us >= full / leak->n + 1)
        return 0;
    return full - leak->n * margin_us > 0 ? full - leak->n * margin_us : 0;
}

int64_t sl_bucket_level(const struct sl_bucket *b, const struct sl_leak *leak,
                        int64_t now)
{
    int64_t dt = now - b->at;

    if (b->level <= 0)
        return 0;
    if (dt <= 0)
        return b->level;
    if (dt >= b->level / leak->n + 1)
        return 0;
    return b->level - leak->n * dt > 0 ? b->level - leak->n * dt : 0;
}

/* Ceiling of A / B for A >= 0, B > 0. */
static int64_t sl_div_up(int64_t a, int64_t b)
{
    return a / b + (a % b != 0);
}

int64_t sl_bucket_wait(const struct sl_bucket *b, const struct sl_leak *leak,
                       int64_t cap, uint64_t reserved, uint64_t cost, int64_t now)
{
    int64_t level = sl_bucket_level(b, leak, now);
    uint64_t calls = reserved + cost;
    int64_t need;

    if (calls > (uint64_t)(cap / leak->per_us)) {
        /* Never fits as things stand (the reservations must be sent and
         * drain first): the time the level takes, at least one call's. */
        int64_t one = sl_div_up(leak->per_us, leak->n);
        int64_t all = sl_div_up(level, leak->n);
        return all > one ? all : one;
    }
    need = level + (int64_t)calls * leak->per_us - cap;
    return need <= 0 ? 0 : sl_div_up(need, leak->n);
}

uint64_t sl_bucket_room(const struct sl_bucket *b, const struct sl_leak *leak,
                        int64_t cap, uint64_t reserved, int64_t now)
{
    int64_t free_units = cap - sl_bucket_level(b, leak, now);
    uint64_t calls = free_units > 0 ? (uint64_t)(free_units / leak->per_us) : 0;

    return calls > reserved ? calls - reserved : 0;
}

int64_t sl_bucket_empty_in(const struct sl_bucket *b, const struct sl_leak *leak,
                           int64_t now)
{
    return sl_div_up(sl_bucket_level(b, leak, now), leak->n);
}

void sl_bucket_add(struct sl_bucket *b, const struct sl_leak *leak, uint64_t cost,
                   int64_t now)
{
    if (now < b->at)
        now = b->at;
    b->level = sl_bucket_level(b, leak, now);
    b->at = now;
    if (cost > (uint64_t)((SL_BUCKET_MAX_UNITS - b->level) / leak->per_us))
        b->level = SL_BUCKET_MAX_UNITS;
    else
        b->level += (int64_t)cost * leak->per_us;
}

void sl_bucket_refill(struct sl_bucket *b, const struct sl_leak *leak, uint64_t bucket,
                      const int64_t *at, size_t n, int64_t span_us, int64_t now)
{
    /* Level units: PER a call, N drained a microsecond.  N is the sends
     * of one span, at most 2 x BUCKET + 64 (the logs' bound), and times
     * are clamped, so every product stays far below INT64_MAX. */
    int64_t full, least, level;
    size_t i = n;

    if (bucket > (uint64_t)(SL_BUCKET_MAX_UNITS / leak->per_us))
        full = SL_BUCKET_MAX_UNITS;
    else
        full = (int64_t)bucket * leak->per_us;
    if (span_us < 0)
        span_us = 0;
    if (span_us > SL_BUCKET_MAX_UNITS / leak->n)
        span_us = SL_BUCKET_MAX_UNITS / leak->n;
    /* the span's start: every send came after it */
    least = (int64_t)n * leak->per_us - leak->n * span_us;
    /* just after each send (sends at one moment are one anchor) */
    while (i > 0) {
        size_t j = i - 1;
        int64_t ago = now > at[j] ? now - at[j] : 0, term;
        while (j > 0 && at[j - 1] == at[i - 1])
            j--;
        if (ago > SL_BUCKET_MAX_UNITS / leak->n)
            ago = SL_BUCKET_MAX_UNITS / leak->n;
        term = (int64_t)(n - i) * leak->per_us - leak->n * ago;
        if (term < least)
            least = term;
        i = j;
    }
    if (least >= 0)
        least = 0;
    if (full + least <= 0)
        return;
    if (now < b->at)
        now = b->at;
    level = sl_bucket_level(b, leak, now);
    if (level >= full + least)
        return;
    b->level = full + least;
    b->at = now;
}

void sl_bucket_set(struct sl_bucket *b, const struct sl_leak *leak, uint64_t used,
                   int64_t sent_at, uint64_t after, int64_t now)
{
    struct sl_bucket theirs = {0, sent_at};

    sl_bucket_add(&theirs, leak, used, sent_at);
    b->level = sl_bucket_level(&theirs, leak, now);
    b->at = now;
    sl_bucket_add(b, leak, after, now);
}

void sl_bucket_rescale(struct sl_bucket *b, const struct sl_leak *from,
                       const struct sl_leak *to)
{
    __int128 l;

    if (from->per_us == to->per_us || b->level <= 0)
        return;
    l = ((__int128)b->level * to->per_us + from->per_us - 1) / from->per_us;
    b->level = l > SL_BUCKET_MAX_UNITS ? SL_BUCKET_MAX_UNITS : (int64_t)l;
}
