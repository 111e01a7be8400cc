/*
 * sl_duration — parsing and printing of durations and sizes (see
 * sl_duration.h).
 *
 * The grammar is deliberately small: digits, an optional fraction, one
 * unit.  Arithmetic is integral and exact for any number of digits.  The
 * whole part is accumulated with an overflow check before every step.  The
 * fraction 0.F times the unit's scale is computed the way one multiplies a
 * long number by a small one on paper: from the last digit to the first,
 * carrying.  What is carried out of the first digit is the whole
 * microseconds of the fraction, and the digit written there is the first
 * decimal of the exact product, which alone decides the rounding (>= 5:
 * the rest is at least one half).  Every intermediate value stays below
 * ten times the largest scale (8.64e11), so nothing can overflow however
 * long the input is: "0.250000000d" is exactly 21600000000 us.
 *
 * JSON numbers arrive as doubles; they are turned back into the shortest
 * decimal that reads as the same double (what the operator wrote) and
 * then go through the same digit arithmetic, so 0.1 is 100000 us, not
 * whatever 0.1 * 1e6 happens to round to.
 *
 * Printing goes the other way: every unit that gives an exact decimal is
 * tried and the shortest text is kept.
 */
#include "sl_duration.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct sl_unit {
    const char *suffix;
    int64_t scale;
};

/* Largest first: sl_duration_format() prefers the larger unit on a tie. */
static const struct sl_unit sl_duration_units[] = {
    {"d", 86400 * SL_USEC_PER_SEC},
    {"h", 3600 * SL_USEC_PER_SEC},
    {"m", 60 * SL_USEC_PER_SEC},
    {"s", SL_USEC_PER_SEC},
    {"ms", SL_USEC_PER_MSEC},
    {NULL, 0},
};

static const struct sl_unit sl_size_units[] = {
    {"", 1},
    {"b", 1},
    {"k", 1024},        {"kb", 1024},        {"kib", 1024},
    {"m", 1024 * 1024}, {"mb", 1024 * 1024}, {"mib", 1024 * 1024},
    {"g", INT64_C(1) << 30}, {"gb", INT64_C(1) << 30}, {"gib", INT64_C(1) << 30},
    {NULL, 0},
};

static bool sl_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/*
 * (WHOLE . FRAC) * SCALE, rounded to the nearest integer with halves
 * rounded up, where WHOLE and FRAC are runs of decimal digits (NWHOLE and
 * NFRAC long, either may be 0) and 1 <= SCALE <= 8.64e10.
 * Returns 0 and sets *out, or -2 when the result exceeds SL_DURATION_MAX.
 */
static int sl_scale_decimal(const char *whole, size_t nwhole, const char *frac,
                            size_t nfrac, int64_t scale, int64_t *out)
{
    int64_t w = 0, carry = 0, first = 0;

    for (size_t i = 0; i < nwhole; i++) {
        if (w > (SL_DURATION_MAX - 9) / 10)
            return -2;
        w = w * 10 + (whole[i] - '0');
    }
    if (w > SL_DURATION_MAX / scale)
        return -2;
    w *= scale;
    /* Paper multiplication from the last digit: carry < scale throughout. */
    for (size_t i = nfrac; i-- > 0;) {
        int64_t t = (frac[i] - '0') * scale + carry;
        first = t % 10;
        carry = t / 10;
    }
    if (first >= 5)
        carry++;
    if (carry > SL_DURATION_MAX - w)
        return -2;
    *out = w + carry;
    return 0;
}

/*
 * Parse "DIGITS[.DIGITS]UNIT" with UNIT from UNITS (compared ignoring
 * letter case when CASE_INSENSITIVE).  Returns 0, -1 (not this grammar)
 * or -2 (too large), as sl_duration_parse().
 */
static int sl_parse_scaled(const char *text, const struct sl_unit *units,
                           bool case_insensitive, int64_t *out)
{
    const char *p = text, *whole, *frac = NULL;
    size_t nwhole, nfrac = 0;

    if (text == NULL)
        return -1;
    whole = p;
    while (sl_is_digit(*p))
        p++;
    nwhole = (size_t)(p - whole);
    if (nwhole == 0)
        return -1;
    if (*p == '.') {
        frac = ++p;
        while (sl_is_digit(*p))
            p++;
        nfrac = (size_t)(p - frac);
        if (nfrac == 0)
            return -1;
    }
    for (const struct sl_unit *u = units; u->suffix != NULL; u++) {
        bool same = case_insensitive ? strcasecmp(p, u->suffix) == 0
                                     : strcmp(p, u->suffix) == 0;
        if (same)
            return sl_scale_decimal(whole, nwhole, frac, nfrac, u->scale, out);
    }
    return -1;
}

int sl_duration_parse(const char *text, int64_t *out)
{
    return sl_parse_scaled(text, sl_duration_units, false, out);
}

int sl_duration_from_seconds(double seconds, int64_t *out)
{
    /* "-d.ddddddddddddddddde-324": the longest %.*e form of a double. */
    char sci[48], whole[32], frac[64];
    const char *p;
    size_t nwhole = 0, nfrac = 0, ndig = 0;
    char digits[24];
    long exp10;
    bool negative;
    int64_t us;

    /* Beyond this many seconds the result exceeds SL_DURATION_MAX anyway. */
    if (!isfinite(seconds) || fabs(seconds) > 1e10)
        return -1;
    negative = signbit(seconds) != 0;
    seconds = fabs(seconds);
    /* The shortest mantissa that reads back as the same double. */
    for (int prec = 0; prec < 17; prec++) {
        snprintf(sci, sizeof(sci), "%.*e", prec, seconds);
        if (strtod(sci, NULL) == seconds)
            break;
    }
    /* sci is "D[<point>DDD]e<sign>XX"; the point may be locale's. */
    for (p = sci; *p != 'e' && *p != '\0'; p++)
        if (sl_is_digit(*p) && ndig < sizeof(digits))
            digits[ndig++] = *p;
    if (*p != 'e' || ndig == 0)
        return -1;
    exp10 = strtol(p + 1, NULL, 10);
    /* Value = 0.DIGITS * 10^(exp10 + 1): place the point. */
    long point = exp10 + 1;
    if (point > (long)sizeof(whole) - 1)
        return -1;
    if (point < -20) {
        *out = 0;               /* below 1e-20 s: rounds to nothing */
        return 0;
    }
    for (long i = 0; i < point; i++)
        whole[nwhole++] = i < (long)ndig ? digits[i] : '0';
    for (long i = point; i < 0; i++)
        frac[nfrac++] = '0';
    for (long i = point > 0 ? point : 0; i < (long)ndig; i++)
        frac[nfrac++] = digits[i];
    if (sl_scale_decimal(whole, nwhole, frac, nfrac, SL_USEC_PER_SEC, &us) != 0)
        return -1;
    *out = negative ? -us : us;
    return 0;
}

int sl_size_parse(const char *text, uint64_t *out)
{
    int64_t v;
    int rc = sl_parse_scaled(text, sl_size_units, true, &v);

    if (rc != 0)
        return rc;
    *out = (uint64_t)v;
    return 0;
}

int64_t sl_duration_ceil_seconds(int64_t usec)
{
    if (usec <= 0)
        return 0;
    return (usec + SL_USEC_PER_SEC - 1) / SL_USEC_PER_SEC;
}

/*
 * MAG / SCALE as an exact decimal into BUF (at least 40 bytes): the whole
 * part, then up to 12 decimals.  Returns the length, or 0 when the
 * quotient does not end within 12 decimals (not exact in this unit).
 */
static size_t sl_exact_quotient(uint64_t mag, uint64_t scale, char *buf)
{
    uint64_t rem = mag % scale;
    int n = snprintf(buf, 40, "%llu", (unsigned long long)(mag / scale));
    size_t len = (size_t)n;

    if (rem == 0)
        return len;
    buf[len++] = '.';
    /* rem < scale <= 8.64e10: rem * 10 never overflows. */
    for (int i = 0; i < 12 && rem != 0; i++) {
        rem *= 10;
        buf[len++] = (char)('0' + rem / scale);
        rem %= scale;
    }
    buf[len] = '\0';
    return rem == 0 ? len : 0;
}

int sl_duration_format(int64_t us, char *buf, size_t len)
{
    char best[56], cand[48];
    size_t best_len = 0;
    /* Magnitude without the UB of -INT64_MIN. */
    uint64_t mag = us < 0 ? (uint64_t)0 - (uint64_t)us : (uint64_t)us;
    const char *sign = us < 0 ? "-" : "";
    int n;

    if (mag == 0) {
        snprintf(best, sizeof(best), "0s");
        best_len = 2;
    }
    for (const struct sl_unit *u = sl_duration_units; mag && u->suffix; u++) {
        uint64_t scale = (uint64_t)u->scale;
        size_t l;
        /* A whole part of at least one: "100ms", never "0.1s"... */
        if (mag < scale && scale != SL_USEC_PER_MSEC)
            continue;
        /* ... except below a millisecond, where only "0.001ms" is exact. */
        l = sl_exact_quotient(mag, scale, cand);
        if (l == 0)
            continue;
        l += strlen(u->suffix);
        if (best_len == 0 || l < best_len) {
            snprintf(best, sizeof(best), "%s%s", cand, u->suffix);
            best_len = l;
        }
    }
    n = snprintf(buf, len, "%s%s", sign, best);
    if (n < 0 || (size_t)n >= len) {
        if (len > 0)
            buf[0] = '\0';
        return -1;
    }
    return n;
}
