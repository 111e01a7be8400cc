/*
 * sl_notify — telling the service manager what the process is doing.
 *
 * systemd's notify protocol (sd_notify(3)) is one datagram of
 * "KEY=VALUE\n" lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a
 * path, or an abstract name written with a leading '@'); no library is
 * needed. A unit with Type=notify is "started" at READY=1, shown
 * "reloading" between RELOADING=1 and the next READY=1, and "stopping"
 * after STOPPING=1. With WatchdogSec= it also sets $WATCHDOG_USEC (and
 * $WATCHDOG_PID): the process must send WATCHDOG=1 more often than that,
 * or it is killed and restarted.
 *
 * Outside systemd (no $NOTIFY_SOCKET) every call does nothing and returns
 * 0. A send that fails is reported by the result and changes nothing
 * else: the service manager's view is an aid, never a reason to stop
 * serving. Thread-safe: each call opens, sends on and closes its own
 * socket (they are rare: start, reload, stop, and a watchdog ping a few
 * times a minute).
 */
#ifndef SL_NOTIFY_H
#define SL_NOTIFY_H

#include <stdint.h>

/* Send STATE (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET. Returns 1
 * if sent, 0 when there is no service manager to tell, -errno on failure. */
int sl_notify(const char *state);

/* "READY=1" with a STATUS line. */
int sl_notify_ready(const char *status);

/* "RELOADING=1" with MONOTONIC_USEC (what systemd 253+ asks of
 * Type=notify-reload, harmless before). Follow with sl_notify_ready(). */
int sl_notify_reloading(void);

/* "STOPPING=1". */
int sl_notify_stopping(void);

/* The interval at which to send WATCHDOG=1, in microseconds: half of
 * $WATCHDOG_USEC, or 0 when no watchdog is asked of this process (unset,
 * malformed, or $WATCHDOG_PID names another process). */
int64_t sl_notify_watchdog_interval_us(void);

/* "WATCHDOG=1". */
int sl_notify_watchdog(void);

#endif
