/*
 * sl_log — see sl_log.h.  The line is formatted into a stack buffer and
 * emitted with one write(2); a line longer than the buffer is truncated
 * rather than split, so concurrent writers never interleave.
 */
#include "sl_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum sl_log_level sl_log_min = SL_LOG_INFO;

static const char *const sl_log_names[] = {"debug", "info", "warn", "error"};

void sl_log_set_level(enum sl_log_level level) { sl_log_min = level; }

void sl_log(enum sl_log_level level, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t len;
    int n;
    va_list ap;

    if (level < sl_log_min)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    len = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(line + len, sizeof(line) - len, ".%03ldZ %s ",
                 ts.tv_nsec / 1000000L, sl_log_names[level]);
    if (n > 0)
        len += (size_t)n;
    va_start(ap, fmt);
    n = vsnprintf(line + len, sizeof(line) - len - 1, fmt, ap);
    va_end(ap);
    if (n > 0)
        len += (size_t)n < sizeof(line) - len - 1 ? (size_t)n
                                                  : sizeof(line) - len - 2;
    line[len++] = '\n';
    /* A failed log write has nowhere to be reported; ignore it. */
    if (write(STDERR_FILENO, line, len) < 0)
        return;
}
