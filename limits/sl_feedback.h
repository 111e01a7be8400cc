/*
 * sl_feedback — reading what the provider says about its limits.
 *
 * Providers report usage and refusals in headers of their own making:
 * Retry-After (seconds or an HTTP-date), Sforce-Limit-Info's
 * "api-usage=USED/MAX", X-RateLimit-Remaining, the IETF RateLimit field
 * (draft 11, `"name";r=N;t=T`, possibly several policies) or the older
 * RateLimit-Remaining, Shopify's "USED/MAX".  This module turns those
 * strings into numbers; it is pure (no I/O, no clock but the `now` given),
 * so every format is unit-tested.  A value that does not parse is reported
 * as malformed, never guessed at: a proxy must not trust a count it
 * cannot read.
 */
#ifndef SL_FEEDBACK_H
#define SL_FEEDBACK_H

#include <stdint.h>
#include <time.h>

#include "sl_config.h"

/* Longest pause a Retry-After may ask for; longer values are cut to it. */
#define SL_FEEDBACK_MAX_PAUSE_S (7 * 86400)

/* The NTH line (from 0) of response header NAME (case-insensitive): its
 * value with surrounding whitespace removed, or NULL when there are fewer
 * lines.  A header may come as several lines or as one comma-joined line
 * (RFC 9110 5.3); the readers below take both. */
typedef const char *(*sl_header_fn)(void *ctx, const char *name, unsigned nth);

/*
 * Calls left according to the provider's report for SYNC: >= 0, or
 * SL_FEEDBACK_ABSENT when the header is not there, SL_FEEDBACK_MALFORMED
 * when it is there but nothing in it is readable.  When the report comes
 * more than once (repeated lines, or comma-joined values where the field's
 * grammar allows a list), the lowest count left wins: the most
 * conservative.  A copy that cannot be read is skipped, never guessed at,
 * and counted in *UNREADABLE (may be NULL); using the readable ones can
 * only lower the room sluice grants, since a report never raises it above
 * sluice's own count.
 */
#define SL_FEEDBACK_ABSENT (-1)
#define SL_FEEDBACK_MALFORMED (-2)
long long sl_feedback_remaining(enum sl_sync_kind sync, sl_header_fn header,
                                void *ctx, unsigned *unreadable);

/*
 * Retry-After VALUE (delta-seconds or an HTTP-date in any of RFC 9110's
 * three forms) as microseconds from NOW (Unix seconds), at most
 * SL_FEEDBACK_MAX_PAUSE_S; a date in the past is 0.  A comma-joined list
 * of them gives the longest.  -1 when VALUE is NULL or nothing in it is
 * readable.
 */
int64_t sl_feedback_retry_after_us(const char *value, time_t now);

/* The longest Retry-After over every line of the header (see above), or
 * -1: a provider that says "wait" twice is waited for the longer. */
int64_t sl_feedback_retry_after_all(sl_header_fn header, void *ctx, time_t now);

/* The lowest r= of a RateLimit field value (draft 11, a list of
 * policies), or -1. */
long long sl_feedback_ratelimit_r(const char *value);

#endif
