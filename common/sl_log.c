/*
 * sl_log — see sl_log.h.  The line is formatted into a stack buffer and
 * emitted with one write(2); a line longer than the buffer is truncated
 * rather than split, so concurrent writers never interleave.
 */
#include "sl_log.h"
#include "sl_time.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum sl_log_level sl_log_min = SL_LOG_INFO;

static const char *const sl_log_names[] = {"debug", "info", "warn", "error"};

static int sl_log_json_on;

void sl_log_set_level(enum sl_log_level level) { sl_log_min = level; }

void sl_log_set_json(int on) { sl_log_json_on = on; }

int sl_log_is_json(void) { return sl_log_json_on; }

void sl_log_json_escape(char *buf, size_t cap, size_t *pos, const char *s,
                        size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t p = *pos;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t n = 0;
        if (c == '"' || c == '\\') {
            esc[n++] = '\\';
            esc[n++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            esc[n++] = '\\';
            esc[n++] = 'u';
            esc[n++] = '0';
            esc[n++] = '0';
            esc[n++] = hex[c >> 4];
            esc[n++] = hex[c & 15];
        } else {
            esc[n++] = (char)c;
        }
        if (p + n + 1 > cap)
            break;
        memcpy(buf + p, esc, n);
        p += n;
    }
    if (p < cap)
        buf[p] = '\0';
    *pos = p;
}

/* "TIME" and the level, as the start of a JSON line. */
static size_t sl_log_json_head(char *line, size_t cap, enum sl_log_level level)
{
    char now[32];
    int n;

    sl_time_iso_now_ms(now, sizeof(now));
    n = snprintf(line, cap, "{\"time\":\"%sZ\",\"level\":\"%s\",", now,
                 sl_log_names[level]);
    if (n < 0)
        return 0;
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

static void sl_log_write(char *line, size_t len, size_t cap, int json)
{
    if (len > cap - 3)
        len = cap - 3;
    if (json)
        line[len++] = '}';
    line[len++] = '\n';
    /* A failed log write has nowhere to be reported; ignore it. */
    if (write(STDERR_FILENO, line, len) < 0)
        return;
}

void sl_log_json(enum sl_log_level level, const char *fields)
{
    char line[4096];
    size_t len;

    if (level < sl_log_min)
        return;
    len = sl_log_json_head(line, sizeof(line), level);
    len += (size_t)snprintf(line + len, sizeof(line) - len, "%s", fields);
    if (len >= sizeof(line))
        return;  /* a truncated object would not parse: drop it */
    sl_log_write(line, len, sizeof(line), 1);
}

void sl_log(enum sl_log_level level, const char *fmt, ...)
{
    char line[2048];
    size_t len;
    int n;
    va_list ap;

    if (level < sl_log_min)
        return;
    if (sl_log_json_on) {
        char msg[1800];
        va_start(ap, fmt);
        n = vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        len = sl_log_json_head(line, sizeof(line), level);
        memcpy(line + len, "\"msg\":\"", 7);
        len += 7;
        sl_log_json_escape(line, sizeof(line) - 4, &len, msg,
                           n < 0 ? 0 : (size_t)n < sizeof(msg) ? (size_t)n
                                                              : sizeof(msg) - 1);
        line[len++] = '"';
        sl_log_write(line, len, sizeof(line), 1);
        return;
    }
    len = sl_time_iso_now_ms(line, sizeof(line));
    n = snprintf(line + len, sizeof(line) - len, "Z %s ", sl_log_names[level]);
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
