/*
 * sl_calendar — windows that reset on the calendar, in a time zone.
 *
 * Providers reset some quotas at fixed moments rather than on a rolling
 * window: a daily quota at midnight in the account's time zone, a monthly
 * one on the 1st.  A calendar window is one of
 *   - a span that divides a day ("1d", "1h", "15m", "2s"): periods start at
 *     local midnight and every span after it;
 *   - a calendar month ("1mo"): from 00:00 on the 1st, local time.
 * Local time is UTC, a fixed offset ("+05:30"), or a zone from the
 * system's zone files (TZif, with the POSIX rule at their end for years
 * past their table), so periods follow daylight saving changes: a day
 * that loses an hour is 23 hours long.
 *
 * A period starts at the first instant whose local time is at or past its
 * local start (in a gap, the instant the clocks jump).  All times here are
 * UTC microseconds since the Unix epoch; nothing reads a clock.
 */
#ifndef SL_CALENDAR_H
#define SL_CALENDAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sl_tz;

/*
 * "UTC" (or "Z"), a fixed offset "+HH:MM" / "-HH:MM" / "+HH", or a zone
 * name under ZONEINFO (NULL: $TZDIR or /usr/share/zoneinfo).  NULL with a
 * sentence in WHY when it cannot be used.
 */
struct sl_tz *sl_tz_load(const char *name, const char *zoneinfo, char *why,
                         size_t why_len);
/* The same from a TZif file's bytes (tests, fuzzing). */
struct sl_tz *sl_tz_parse(const unsigned char *data, size_t len, char *why,
                          size_t why_len);
void sl_tz_free(struct sl_tz *tz);

/* Seconds east of UTC in force at T (UTC seconds). */
int32_t sl_tz_offset(const struct sl_tz *tz, int64_t t);

struct sl_calendar {
    const struct sl_tz *tz;       /* not owned */
    bool month;                   /* calendar months */
    int64_t span_s;               /* else: divides 86400 */
};

/* The period holding T: [*START, *END), UTC microseconds. */
void sl_calendar_period(const struct sl_calendar *cal, int64_t t_us,
                        int64_t *start_us, int64_t *end_us);

/* Days since 1970-01-01 of the civil date Y-M-D (proleptic Gregorian). */
int64_t sl_days_from_civil(int64_t y, unsigned m, unsigned d);
void sl_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);

#endif
