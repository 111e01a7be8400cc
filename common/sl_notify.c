/*
 * sl_notify — the notify protocol's sending side; see sl_notify.h.
 *
 * The datagram is sent with MSG_NOSIGNAL on a fresh SOCK_CLOEXEC socket,
 * so no descriptor leaks into children and a vanished manager cannot
 * raise SIGPIPE. The socket address is built from $NOTIFY_SOCKET as
 * systemd defines it: a path, or '@' for the abstract namespace (the '@'
 * becomes a NUL byte and the length counts exactly the name).
 */
#include "sl_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int sl_notify(const char *state)
{
    const char *name = getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr;
    socklen_t len;
    size_t n;
    int fd, rc;

    if (name == NULL || name[0] == '\0')
        return 0;
    if (name[0] != '/' && name[0] != '@')
        return -EAFNOSUPPORT;  /* e.g. "vsock:": not for a host service */
    n = strlen(name);
    if (n >= sizeof(addr.sun_path))
        return -ENAMETOOLONG;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, name, n);
    if (name[0] == '@')
        addr.sun_path[0] = '\0';
    /* A path counts its NUL; an abstract name exactly its bytes. */
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (name[0] == '/'));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    rc = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr, len) < 0
             ? -errno : 1;
    close(fd);
    return rc;
}

int sl_notify_ready(const char *status)
{
    char msg[512];

    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status != NULL ? status : "");
    return sl_notify(msg);
}

int sl_notify_reloading(void)
{
    struct timespec ts;
    char msg[96];

    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%lld",
             (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
    return sl_notify(msg);
}

int sl_notify_stopping(void)
{
    return sl_notify("STOPPING=1\nSTATUS=draining calls in flight");
}

int64_t sl_notify_watchdog_interval_us(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    char *end;
    long long v;

    if (usec == NULL || usec[0] == '\0')
        return 0;
    if (pid != NULL && pid[0] != '\0') {
        long long p = strtoll(pid, &end, 10);
        if (*end != '\0' || p != (long long)getpid())
            return 0;
    }
    errno = 0;
    v = strtoll(usec, &end, 10);
    if (errno != 0 || *end != '\0' || v <= 0)
        return 0;
    return v / 2;
}

int sl_notify_watchdog(void)
{
    return sl_notify("WATCHDOG=1");
}
