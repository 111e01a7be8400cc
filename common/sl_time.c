/*
 * sl_time — see sl_time.h.  clock_gettime() is called here and nowhere
 * else; the offset is one relaxed atomic, read on every wall reading.
 */
#include "sl_time.h"

#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

static _Atomic int64_t sl_time_wall_offset;

int64_t sl_time_mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t sl_time_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sl_time_wall_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 +
           atomic_load_explicit(&sl_time_wall_offset, memory_order_relaxed);
}

double sl_time_wall(void)
{
    return (double)sl_time_wall_us() / 1e6;
}

void sl_time_set_wall_offset(int64_t us)
{
    atomic_store(&sl_time_wall_offset, us);
}

size_t sl_time_iso(double t, char *buf, size_t len)
{
    time_t s = (time_t)t;
    struct tm tm;

    gmtime_r(&s, &tm);
    return strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

size_t sl_time_iso_now_ms(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    size_t n;
    int m;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    if (n == 0)
        return 0;
    m = snprintf(buf + n, len - n, ".%03ld", ts.tv_nsec / 1000000L);
    if (m < 0 || (size_t)m >= len - n)
        return 0;
    return n + (size_t)m;
}
