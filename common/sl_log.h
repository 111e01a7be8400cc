/*
 * sl_log — one line per event on stderr.
 *
 * Every line is "TIMESTAMP LEVEL message" with an ISO-8601 UTC timestamp to
 * the millisecond, written with a single write(2) so lines from different
 * worker threads never interleave.  Callers must never pass secrets
 * (Authorization, cookies, query strings) to these functions: the log is
 * meant to be shipped to shared systems.
 */
#ifndef SL_LOG_H
#define SL_LOG_H

#include <stddef.h>

enum sl_log_level {
    SL_LOG_DEBUG = 0,
    SL_LOG_INFO,
    SL_LOG_WARN,
    SL_LOG_ERROR,
};

/* Lines below this level are dropped.  Default: SL_LOG_INFO. */
void sl_log_set_level(enum sl_log_level level);

/* One JSON object per line instead of text ("log_format": "json"):
 * {"time": ..., "level": ..., "msg": ...}. */
void sl_log_set_json(int on);
int sl_log_is_json(void);

/* Write FIELDS (JSON members without braces, e.g. "\"a\":1") as one
 * JSON line with time and level first. */
void sl_log_json(enum sl_log_level level, const char *fields);

/* Append S (LEN bytes) JSON-escaped, without quotes, at *POS of BUF (CAP
 * bytes, kept NUL-terminated; truncated, never split inside an escape). */
void sl_log_json_escape(char *buf, size_t cap, size_t *pos, const char *s,
                        size_t len);

void sl_log(enum sl_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define sl_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)
#define sl_info(...) sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_warn(...) sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

#endif
