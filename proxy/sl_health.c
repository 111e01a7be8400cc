/*
 * sl_health — `sluice health`: is the sluice of this configuration up?
 *
 * For container health checks (Docker's HEALTHCHECK, Podman's) that must
 * not need curl or wget in the image.  It reads the same configuration the
 * server does (the same environment overrides), and asks the admin
 * listener's /healthz (with --ready, its /readyz: serving *and* its store
 * answering, for a readiness probe) when there is one; otherwise it only
 * checks that the
 * proxy's port accepts a connection.  A wildcard listen address is probed
 * on loopback.  Exit status 0 when healthy, 1 otherwise, with one line
 * saying what was asked and what came back.  Plain sockets, a 3 s bound on
 * every step: a hung sluice is unhealthy, not a hung check.
 */
#include "sl_proxy.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SL_HEALTH_TIMEOUT_MS 3000

/* Connect to HOST:PORT within the timeout.  The fd, or -1 with WHY set. */
static int sl_health_connect(const char *host, int port, char *why, size_t len)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
    char service[16];
    int fd = -1, rc;

    if (host == NULL || *host == '\0' || strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        host = "::1";
    snprintf(service, sizeof(service), "%d", port);
    rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(why, len, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        struct pollfd p;
        int err = 0;
        socklen_t elen = sizeof(err);
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            snprintf(why, len, "cannot connect to %s:%d: %s", host, port, strerror(errno));
            close(fd);
            fd = -1;
            continue;
        }
        p = (struct pollfd){.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, SL_HEALTH_TIMEOUT_MS) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
            snprintf(why, len, "cannot connect to %s:%d: %s", host, port,
                     err ? strerror(err) : "timed out");
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* GET PATH on FD (Host: HOST:PORT): 0 on a 200, else -1 with WHY. */
static int sl_health_get(int fd, const char *host, int port, const char *path,
                         char *why, size_t len)
{
    char req[512], buf[256];
    size_t got = 0;
    int n;

    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n",
                 path, host != NULL && *host && strcmp(host, "0.0.0.0") != 0 ? host : "127.0.0.1",
                 port);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        snprintf(why, len, "cannot send the request: %s", strerror(errno));
        return -1;
    }
    while (got < sizeof(buf) - 1 && memchr(buf, '\n', got) == NULL) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t r;
        if (poll(&p, 1, SL_HEALTH_TIMEOUT_MS) != 1) {
            snprintf(why, len, "no answer within %d ms", SL_HEALTH_TIMEOUT_MS);
            return -1;
        }
        r = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (r <= 0) {
            snprintf(why, len, "the connection closed without an answer");
            return -1;
        }
        got += (size_t)r;
    }
    buf[got] = '\0';
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0 && strncmp(buf, "HTTP/1.0 200", 12) != 0) {
        buf[strcspn(buf, "\r\n")] = '\0';
        snprintf(why, len, "%s answered \"%.80s\"", path, buf);
        return -1;
    }
    return 0;
}

int sl_health_main(const char *config_path, bool ready)
{
    const char *path = ready ? "/readyz" : "/healthz";
    struct sl_errors errs = {0};
    struct sl_config *c = NULL;
    char why[300] = "";
    int fd, rc = 1;

    if (sl_config_load(config_path, true, &c, &errs) != 0) {
        fprintf(stderr, "sluice health: %s: %s\n", config_path,
                errs.count > 0 ? errs.lines[0] : "cannot load the configuration");
        sl_errors_free(&errs);
        return 1;
    }
    if (c->admin_listen != NULL && c->admin_port > 0) {
        fd = sl_health_connect(c->admin_host, c->admin_port, why, sizeof(why));
        if (fd >= 0) {
            rc = sl_health_get(fd, c->admin_host, c->admin_port, path, why,
                               sizeof(why)) == 0 ? 0 : 1;
            close(fd);
        }
        if (rc == 0)
            printf("sluice health: %s%s: ok\n", c->admin_listen, path);
        else
            fprintf(stderr, "sluice health: %s%s: %s\n", c->admin_listen, path, why);
    } else {
        fd = sl_health_connect(c->listen_host, c->listen_port, why, sizeof(why));
        if (fd >= 0) {
            close(fd);
            rc = 0;
            printf("sluice health: %s accepts connections (no admin listener "
                   "configured: a port check only)\n", c->listen);
        } else {
            fprintf(stderr, "sluice health: %s: %s\n", c->listen, why);
        }
    }
    sl_config_free(c);
    return rc;
}
