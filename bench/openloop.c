/*
 * openloop: a fixed-rate (open-loop) HTTP/1.1 load for bench/run.sh.
 *
 * Request i is due at t0 + i / RATE whatever happened to the ones before
 * it, and its latency is measured from that due time, not from when a
 * connection was free to send it: a stall shows up in the latency of
 * every call it delayed, as a provider-facing caller would feel it (wrk
 * measures from the send, so a slow answer hides the calls it held
 * back).  CONNS keep-alive connections are opened first; a due call
 * waits for the first idle one.
 *
 *   openloop HOST PORT PATH RATE SECONDS CONNS ["Name: value"]
 *
 * Prints one line:
 *   sent=N ok=N bad=N p50_ms=.. p99_ms=.. p999_ms=.. max_ms=..
 * (ok: 2xx answers; bad: other answers, connection errors, calls still
 * unanswered 2 s after the last was due).  Exits non-zero on a setup
 * error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    int busy;                 /* a request is out on it */
    uint64_t due_ns;          /* the due time of that request */
    char buf[16384];
    size_t len;
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static int dial(const char *host, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/*
 * Length of the complete response at the start of BUF, 0 if incomplete,
 * -1 if unreadable.  *STATUS: its status code.  Content-Length and
 * chunked bodies.
 */
static long response_len(const char *buf, size_t len, int *status)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    const char *p, *eol;
    size_t head, body;
    long cl = -1;
    int chunked = 0;

    if (end == NULL)
        return 0;
    head = (size_t)(end - buf) + 4;
    if (sscanf(buf, "HTTP/1.%*d %d", status) != 1)
        return -1;
    for (p = buf; p < end; p = eol + 1) {
        eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        if (strncasecmp(p, "content-length:", 15) == 0)
            cl = strtol(p + 15, NULL, 10);
        else if (strncasecmp(p, "transfer-encoding:", 18) == 0 &&
                 memmem(p, (size_t)(eol - p), "chunked", 7) != NULL)
            chunked = 1;
    }
    if (!chunked)
        return cl < 0 ? -1 : (head + (size_t)cl <= len ? (long)(head + (size_t)cl) : 0);
    for (body = head;;) {
        char *e;
        const char *crlf = memmem(buf + body, len - body, "\r\n", 2);
        long n;

        if (crlf == NULL)
            return 0;
        n = strtol(buf + body, &e, 16);
        if (e == buf + body || n < 0)
            return -1;
        body = (size_t)(crlf - buf) + 2 + (size_t)n + 2;
        if (body > len)
            return 0;
        if (n == 0)
            return (long)body;
    }
}

int main(int argc, char **argv)
{
    const char *host, *path, *extra;
    int port, nconns, epfd, tfd;
    double rate, seconds;
    struct conn *conns;
    uint64_t *lat, t0, interval, stop_ns;
    size_t total, sent = 0, done = 0, ok = 0, nlat = 0;
    size_t queued_from = 0;   /* the first due call not yet sent */
    char req[1024];
    int reqlen;

    if (argc < 7) {
        fprintf(stderr, "usage: openloop HOST PORT PATH RATE SECONDS CONNS [HEADER]\n");
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    path = argv[3];
    rate = atof(argv[4]);
    seconds = atof(argv[5]);
    nconns = atoi(argv[6]);
    extra = argc > 7 ? argv[7] : NULL;
    if (port <= 0 || rate <= 0 || seconds <= 0 || nconns <= 0) {
        fprintf(stderr, "openloop: bad arguments\n");
        return 2;
    }
    reqlen = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s%s\r\n",
                      path, host, port, extra ? extra : "", extra ? "\r\n" : "");
    total = (size_t)(rate * seconds);
    interval = (uint64_t)(1e9 / rate);
    lat = calloc(total, sizeof(*lat));
    conns = calloc((size_t)nconns, sizeof(*conns));
    epfd = epoll_create1(0);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (lat == NULL || conns == NULL || epfd < 0 || tfd < 0)
        return 2;
    for (int i = 0; i < nconns; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};

        conns[i].fd = dial(host, port);
        if (conns[i].fd < 0) {
            fprintf(stderr, "openloop: cannot connect to %s:%d: %s\n", host, port,
                    strerror(errno));
            return 2;
        }
        epoll_ctl(epfd, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    }
    t0 = now_ns() + 10000000u;
    stop_ns = t0 + (uint64_t)(seconds * 1e9) + 2000000000u;
    for (;;) {
        struct epoll_event evs[64];
        uint64_t now = now_ns();
        size_t due = now < t0 ? 0 : (now - t0) / interval + 1;
        int n;

        if (due > total)
            due = total;
        /* Send every due call that has an idle connection. */
        for (int i = 0; i < nconns && queued_from < due; i++) {
            struct conn *c = &conns[i];

            if (c->busy || c->fd < 0)
                continue;
            if (send(c->fd, req, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
                close(c->fd);
                c->fd = -1;
                continue;
            }
            c->busy = 1;
            c->due_ns = t0 + queued_from * interval;
            c->len = 0;
            queued_from++;
            sent++;
        }
        if (done >= total || now >= stop_ns)
            break;
        if (queued_from < total) {
            struct itimerspec its = {0};
            uint64_t at = t0 + queued_from * interval;

            if (queued_from < due)
                at = now + 50000;   /* waiting for a connection */
            its.it_value.tv_sec = (time_t)(at / 1000000000u);
            its.it_value.tv_nsec = (long)(at % 1000000000u);
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        n = epoll_wait(epfd, evs, 64, 100);
        now = now_ns();
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            struct conn *c;
            ssize_t r;

            if (id == UINT32_MAX) {
                uint64_t v;
                if (read(tfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                    return 2;
                continue;
            }
            c = &conns[id];
            r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                if (c->busy) {
                    done++;
                    c->busy = 0;
                }
                continue;
            }
            c->len += (size_t)r;
            if (c->busy) {
                int status = 0;
                long l = response_len(c->buf, c->len, &status);

                if (l < 0 || (l == 0 && c->len == sizeof(c->buf))) {
                    done++;
                    c->busy = 0;
                    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->fd = -1;
                } else if (l > 0) {
                    if (status >= 200 && status < 300) {
                        ok++;
                        lat[nlat++] = now - c->due_ns;
                    }
                    done++;
                    c->busy = 0;
                    memmove(c->buf, c->buf + l, c->len - (size_t)l);
                    c->len -= (size_t)l;
                }
            }
        }
    }
    qsort(lat, nlat, sizeof(*lat), cmp_u64);
#define PCT(p) (nlat ? lat[(size_t)((double)(nlat - 1) * (p))] / 1e6 : 0.0)
    printf("sent=%zu ok=%zu bad=%zu p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f\n",
           sent, ok, total - ok, PCT(0.50), PCT(0.99), PCT(0.999), nlat ? lat[nlat - 1] / 1e6 : 0.0);
    return 0;
}
