/*
 * sl_feedback — the provider's usage reports and Retry-After, as numbers
 * (see sl_feedback.h).  Every parser here is strict about digits: "12abc"
 * is malformed, not 12, and numbers beyond 10^12 are refused rather than
 * overflowed.  HTTP-dates are read with strptime in the C locale (sluice
 * never calls setlocale) and timegm.
 */
#include "sl_feedback.h"

#include "sl_duration.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SL_FEEDBACK_MAX_COUNT 1000000000000LL

/* A whole non-negative number after optional spaces, or -1. */
static long long sl_fb_count(const char *s, const char **end)
{
    long long v = 0;
    const char *p = s;

    while (*p == ' ' || *p == '\t')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > SL_FEEDBACK_MAX_COUNT)
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (end != NULL)
        *end = p;
    return v;
}

/* Only spaces left? */
static int sl_fb_blank(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '\0';
}

/* "USED/MAX" -> MAX - USED (0 when over), or -1. */
static long long sl_fb_used_max(const char *s)
{
    const char *p;
    long long used = sl_fb_count(s, &p), max;

    if (used < 0 || *p != '/')
        return -1;
    max = sl_fb_count(p + 1, &p);
    if (max < 0 || (*p != '\0' && *p != ',' && *p != ' ' && *p != ';'))
        return -1;
    return used >= max ? 0 : max - used;
}

/* A plain count, nothing after it. */
static long long sl_fb_plain(const char *v)
{
    const char *end;
    long long n = sl_fb_count(v, &end);

    return n < 0 || !sl_fb_blank(end) ? -1 : n;
}

long long sl_feedback_ratelimit_r(const char *v)
{
    long long best = -1;

    for (const char *p = v; (p = strstr(p, "r=")) != NULL; p += 2) {
        const char *end;
        long long r;
        if (p != v && p[-1] != ';' && p[-1] != ' ')
            continue;  /* "...ar=5" is another parameter */
        r = sl_fb_count(p + 2, &end);
        if (r < 0 || (*end != '\0' && *end != ';' && *end != ',' && *end != ' '))
            return -1;
        if (best < 0 || r < best)
            best = r;
    }
    return best;
}

long long sl_feedback_remaining(enum sl_sync_kind sync, sl_header_fn header,
                                void *ctx)
{
    const char *v, *p;
    long long n;

    switch (sync) {
    case SL_SYNC_SFORCE:
        if ((v = header(ctx, "Sforce-Limit-Info")) == NULL)
            return SL_FEEDBACK_ABSENT;
        for (p = v; (p = strstr(p, "api-usage=")) != NULL; p += 10)
            if (p == v || p[-1] == ' ' || p[-1] == ',')
                break;  /* not "per-app-api-usage=" */
        if (p == NULL)
            return SL_FEEDBACK_MALFORMED;
        n = sl_fb_used_max(p + 10);
        break;
    case SL_SYNC_XRATELIMIT:
        if ((v = header(ctx, "X-RateLimit-Remaining")) == NULL)
            return SL_FEEDBACK_ABSENT;
        n = sl_fb_plain(v);
        break;
    case SL_SYNC_RATELIMIT:
        if ((v = header(ctx, "RateLimit")) != NULL) {
            n = sl_feedback_ratelimit_r(v);
            break;
        }
        if ((v = header(ctx, "RateLimit-Remaining")) == NULL)
            return SL_FEEDBACK_ABSENT;
        n = sl_fb_plain(v);
        break;
    case SL_SYNC_SHOPIFY:
        if ((v = header(ctx, "X-Shopify-Shop-Api-Call-Limit")) == NULL)
            return SL_FEEDBACK_ABSENT;
        n = sl_fb_used_max(v);
        break;
    case SL_SYNC_NONE:
    default:
        return SL_FEEDBACK_ABSENT;
    }
    return n < 0 ? SL_FEEDBACK_MALFORMED : n;
}

/* RFC 9110 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms. */
static int sl_fb_http_date(const char *v, time_t *out)
{
    static const char *const forms[] = {
        "%a, %d %b %Y %H:%M:%S GMT",
        "%A, %d-%b-%y %H:%M:%S GMT",
        "%a %b %e %H:%M:%S %Y",
    };

    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        struct tm tm;
        const char *end;
        memset(&tm, 0, sizeof(tm));
        end = strptime(v, forms[i], &tm);
        if (end != NULL && sl_fb_blank(end)) {
            time_t t = timegm(&tm);
            if (t == (time_t)-1)
                return -1;
            *out = t;
            return 0;
        }
    }
    return -1;
}

int64_t sl_feedback_retry_after_us(const char *v, time_t now)
{
    const char *end;
    long long s;
    time_t when;

    if (v == NULL)
        return -1;
    s = sl_fb_count(v, &end);
    if (s < 0 || !sl_fb_blank(end)) {
        if (sl_fb_http_date(v, &when) != 0)
            return -1;
        s = when <= now ? 0 : (long long)(when - now);
    }
    if (s > SL_FEEDBACK_MAX_PAUSE_S)
        s = SL_FEEDBACK_MAX_PAUSE_S;
    return s * SL_USEC_PER_SEC;
}
