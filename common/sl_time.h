/*
 * sl_time — the process's clocks, read in one place.
 *
 * Two clocks, never mixed:
 *   - monotonic (CLOCK_MONOTONIC): deadlines, timers, durations.  It never
 *     steps, so a window or a timeout is never stretched or cut by an NTP
 *     correction;
 *   - wall (CLOCK_REALTIME): what is shown to people and what must mean
 *     the same thing to another process or after a restart (calendar
 *     windows, state files, Redis-side timestamps).  Tests may shift it by
 *     a fixed offset (sl_time_set_wall_offset) to play a step of the
 *     system clock.
 *
 * Nothing here allocates or locks; every function may be called from any
 * thread.  The common layer: includes nothing of limits/ or proxy/.
 */
#ifndef SL_TIME_H
#define SL_TIME_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic microseconds / milliseconds (arbitrary origin). */
int64_t sl_time_mono_us(void);
int64_t sl_time_mono_ms(void);

/* Wall-clock microseconds since the Unix epoch, plus the test offset. */
int64_t sl_time_wall_us(void);
/* The same, in seconds. */
double sl_time_wall(void);

/* For tests only: shift the wall clock by US, as a step of the system
 * clock would (SLUICE_TEST_WALL_OFFSET_MS). */
void sl_time_set_wall_offset(int64_t us);

/* "2026-11-24T14:32:05Z" for Unix seconds T (fraction dropped), into BUF
 * (LEN >= 21).  Returns the length written, 0 if it did not fit. */
size_t sl_time_iso(double t, char *buf, size_t len);

/* The unshifted wall clock now as "2026-11-24T14:32:05.123" (UTC, no zone
 * letter: the log appends its own), into BUF (LEN >= 24).  Returns the
 * length written, 0 if it did not fit.  For the log, which must show the
 * machine's real time even while a test shifts the wall clock. */
size_t sl_time_iso_now_ms(char *buf, size_t len);

#endif
