/*
 * sl_duration — parsing of durations and sizes (see sl_duration.h).
 *
 * The grammar is deliberately small: digits, an optional fraction, one
 * unit.  Arithmetic is integral: the fraction is scaled digit by digit so
 * "0.1s" is exactly 100000 us, never 99999 from a float round trip.
 */
#include "sl_duration.h"

#include <ctype.h>
#include <math.h>
#include <string.h>

/* Upper bound that keeps every later sum of timestamps far from overflow. */
#define SL_DURATION_MAX (INT64_C(1) << 53)

struct sl_unit {
    const char *suffix;
    int64_t scale;
};

static const struct sl_unit sl_duration_units[] = {
    {"ms", SL_USEC_PER_MSEC},
    {"s", SL_USEC_PER_SEC},
    {"m", 60 * SL_USEC_PER_SEC},
    {"h", 3600 * SL_USEC_PER_SEC},
    {"d", 86400 * SL_USEC_PER_SEC},
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

/*
 * Parse "DIGITS[.DIGITS]" followed by one of the units.  The value is
 * computed as integer * scale + fraction * scale / 10^k, all in int64.
 */
static int sl_parse_scaled(const char *text, const struct sl_unit *units,
                           int case_insensitive, int64_t *out)
{
    const char *p = text;
    int64_t whole = 0, frac_num = 0, frac_den = 1;
    int digits = 0;

    if (text == NULL)
        return -1;
    while (isdigit((unsigned char)*p)) {
        if (whole > SL_DURATION_MAX / 10)
            return -1;
        whole = whole * 10 + (*p - '0');
        p++;
        digits++;
    }
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p)) {
            if (frac_den < INT64_C(1000000000)) {
                frac_num = frac_num * 10 + (*p - '0');
                frac_den *= 10;
            }
            p++;
            digits++;
        }
    }
    if (digits == 0)
        return -1;
    for (const struct sl_unit *u = units; u->suffix != NULL; u++) {
        int same = case_insensitive ? strcasecmp(p, u->suffix) == 0
                                    : strcmp(p, u->suffix) == 0;
        if (!same)
            continue;
        if (whole > SL_DURATION_MAX / u->scale)
            return -1;
        *out = whole * u->scale + frac_num * u->scale / frac_den;
        return 0;
    }
    return -1;
}

int sl_duration_parse(const char *text, int64_t *out)
{
    return sl_parse_scaled(text, sl_duration_units, 0, out);
}

int sl_duration_from_seconds(double seconds, int64_t *out)
{
    double us = seconds * 1e6;

    if (isnan(us) || us > (double)SL_DURATION_MAX || us < -(double)SL_DURATION_MAX)
        return -1;
    *out = (int64_t)llround(us);
    return 0;
}

int sl_size_parse(const char *text, uint64_t *out)
{
    int64_t v;

    if (sl_parse_scaled(text, sl_size_units, 1, &v) != 0)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int64_t sl_duration_ceil_seconds(int64_t usec)
{
    if (usec <= 0)
        return 0;
    return (usec + SL_USEC_PER_SEC - 1) / SL_USEC_PER_SEC;
}
