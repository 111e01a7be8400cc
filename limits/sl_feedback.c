/*
 * sl_feedback — the provider's usage reports and Retry-After, as numbers
 * (see sl_feedback.h).  Every parser here is strict about digits: "12abc"
 * is malformed, not 12, and numbers beyond 10^12 are refused rather than
 * overflowed.  HTTP-dates are read with strptime in the C locale (sluice
 * never calls setlocale) and timegm.
 *
 * A provider, or a proxy in front of it, may send a field twice: as two
 * lines, or joined into one with commas.  Every copy is read and the most
 * conservative wins (the fewest calls left, the longest Retry-After); the
 * first copy alone could be the one that says "plenty left".
 */
#include "sl_feedback.h"

#include "sl_duration.h"

#include <stdbool.h>
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

/* "USED/MAX" -> MAX - USED (0 when over), or -1.  What follows MAX in
 * its list element (after a space or ';') is not part of the count. */
static long long sl_fb_used_max(const char *s, const char *stop)
{
    const char *p;
    long long used = sl_fb_count(s, &p), max;

    if (used < 0 || *p != '/')
        return -1;
    max = sl_fb_count(p + 1, &p);
    if (max < 0 || (p != stop && *p != ' ' && *p != '\t' && *p != ';'))
        return -1;
    return used >= max ? 0 : max - used;
}

/* A plain count, nothing after it but spaces, up to STOP. */
static long long sl_fb_plain(const char *v, const char *stop)
{
    const char *end;
    long long n = sl_fb_count(v, &end);

    if (n < 0)
        return -1;
    while (end < stop && (*end == ' ' || *end == '\t'))
        end++;
    return end == stop ? n : -1;
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

/* How a report's list elements are read. */
enum sl_fb_form { SL_FB_PLAIN, SL_FB_USED_MAX, SL_FB_SFORCE };

/*
 * The lowest count left in one line V of a report in FORM, read element
 * by element (comma-separated; empty elements are skipped, RFC 9110 5.6.1):
 * >= 0, or -1 when no element is readable.  Unreadable elements are
 * counted in *BAD.  Sforce-Limit-Info's elements are "key=USED/MAX": only
 * "api-usage" counts (not "per-app-api-usage"), and a line without it is
 * unreadable.
 */
static long long sl_fb_line(enum sl_fb_form form, const char *v, unsigned *bad)
{
    long long best = -1;
    bool any = false;

    for (const char *p = v; *p != '\0';) {
        const char *stop = strchr(p, ',');
        long long n = -1;

        if (stop == NULL)
            stop = p + strlen(p);
        while (p < stop && (*p == ' ' || *p == '\t'))
            p++;
        if (p < stop) {
            switch (form) {
            case SL_FB_PLAIN:
                n = sl_fb_plain(p, stop);
                break;
            case SL_FB_USED_MAX:
                n = sl_fb_used_max(p, stop);
                break;
            case SL_FB_SFORCE:
                if ((size_t)(stop - p) < 10 || strncmp(p, "api-usage=", 10) != 0)
                    goto next;  /* another key: not ours to read */
                n = sl_fb_used_max(p + 10, stop);
                break;
            }
            any = true;
            if (n < 0)
                (*bad)++;
            else if (best < 0 || n < best)
                best = n;
        }
    next:
        p = *stop == ',' ? stop + 1 : stop;
    }
    if (!any)
        (*bad)++;  /* nothing to read in it at all */
    return best;
}

/*
 * The lowest count left over every line of header NAME and every element
 * of each line.  ABSENT: no such header; MALFORMED: nothing readable.
 */
static long long sl_fb_lowest(enum sl_fb_form form, const char *name,
                              sl_header_fn header, void *ctx, unsigned *bad)
{
    long long best = SL_FEEDBACK_ABSENT;
    const char *v;
    unsigned nth;

    for (nth = 0; (v = header(ctx, name, nth)) != NULL; nth++) {
        long long n = sl_fb_line(form, v, bad);
        if (n >= 0 && (best < 0 || n < best))
            best = n;
    }
    return nth > 0 && best < 0 ? SL_FEEDBACK_MALFORMED : best;
}

/* The lower of two results of sl_fb_lowest (a count beats ABSENT and
 * MALFORMED; MALFORMED beats ABSENT). */
static long long sl_fb_lower(long long a, long long b)
{
    if (a >= 0 && b >= 0)
        return a < b ? a : b;
    if (a >= 0 || b >= 0)
        return a >= 0 ? a : b;
    return a == SL_FEEDBACK_MALFORMED || b == SL_FEEDBACK_MALFORMED
               ? SL_FEEDBACK_MALFORMED : SL_FEEDBACK_ABSENT;
}

long long sl_feedback_remaining(enum sl_sync_kind sync, sl_header_fn header,
                                void *ctx, unsigned *unreadable)
{
    unsigned bad = 0;
    long long n = SL_FEEDBACK_ABSENT, r = SL_FEEDBACK_ABSENT;
    const char *v;

    switch (sync) {
    case SL_SYNC_SFORCE:
        n = sl_fb_lowest(SL_FB_SFORCE, "Sforce-Limit-Info", header, ctx, &bad);
        break;
    case SL_SYNC_XRATELIMIT:
        n = sl_fb_lowest(SL_FB_PLAIN, "X-RateLimit-Remaining", header, ctx, &bad);
        break;
    case SL_SYNC_RATELIMIT:
        /* The draft's RateLimit (a list of policies, the lowest r) and the
         * older RateLimit-Remaining: whichever says less, if both came. */
        for (unsigned nth = 0; (v = header(ctx, "RateLimit", nth)) != NULL; nth++) {
            long long x = sl_feedback_ratelimit_r(v);
            if (x < 0)
                bad++;
            r = sl_fb_lower(r, x < 0 ? SL_FEEDBACK_MALFORMED : x);
        }
        n = sl_fb_lower(r, sl_fb_lowest(SL_FB_PLAIN, "RateLimit-Remaining",
                                        header, ctx, &bad));
        break;
    case SL_SYNC_SHOPIFY:
        n = sl_fb_lowest(SL_FB_USED_MAX, "X-Shopify-Shop-Api-Call-Limit", header,
                         ctx, &bad);
        break;
    case SL_SYNC_NONE:
    default:
        break;
    }
    if (unreadable != NULL)
        *unreadable = bad;
    return n;
}

/*
 * One Retry-After element at V: its seconds from NOW (a date in the past
 * is 0) and *END after it, or -1.  An HTTP-date holds commas of its own
 * ("Sun, 06 Nov 1994 ..."), so elements are not split at commas first:
 * an element is read from its start, and must end at a comma or the end.
 */
static long long sl_fb_retry_item(const char *v, time_t now, const char **end)
{
    static const char *const forms[] = {
        "%a, %d %b %Y %H:%M:%S GMT",
        "%A, %d-%b-%y %H:%M:%S GMT",
        "%a %b %e %H:%M:%S %Y",
    };
    const char *e;
    long long s = sl_fb_count(v, &e);

    if (s >= 0) {
        while (*e == ' ' || *e == '\t')
            e++;
        if (*e == ',' || *e == '\0') {
            *end = e;
            return s;
        }
    }
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        struct tm tm;
        time_t when;
        memset(&tm, 0, sizeof(tm));
        e = strptime(v, forms[i], &tm);
        if (e == NULL)
            continue;
        while (*e == ' ' || *e == '\t')
            e++;
        if (*e != ',' && *e != '\0')
            continue;
        when = timegm(&tm);
        if (when == (time_t)-1)
            continue;
        *end = e;
        return when <= now ? 0 : (long long)(when - now);
    }
    return -1;
}

int64_t sl_feedback_retry_after_us(const char *v, time_t now)
{
    long long best = -1;

    if (v == NULL)
        return -1;
    for (const char *p = v; *p != '\0';) {
        const char *end;
        long long s;
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;  /* empty elements */
        if (*p == '\0')
            break;
        s = sl_fb_retry_item(p, now, &end);
        if (s < 0) {
            /* Unreadable: skipped up to the next comma. */
            end = strchr(p, ',');
            if (end == NULL)
                break;
        } else if (s > best) {
            best = s;
        }
        p = end;
    }
    if (best < 0)
        return -1;
    if (best > SL_FEEDBACK_MAX_PAUSE_S)
        best = SL_FEEDBACK_MAX_PAUSE_S;
    return best * SL_USEC_PER_SEC;
}

int64_t sl_feedback_retry_after_all(sl_header_fn header, void *ctx, time_t now)
{
    int64_t best = -1;
    const char *v;

    for (unsigned nth = 0; (v = header(ctx, "Retry-After", nth)) != NULL; nth++) {
        int64_t us = sl_feedback_retry_after_us(v, now);
        if (us > best)
            best = us;
    }
    return best;
}
