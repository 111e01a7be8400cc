/*
 * sl_guard — the slow-client guard of one listener: the proxy's port (one
 * per worker) and the admin listener (worker 0) each have one.
 *
 * libmicrohttpd's connection timeout is an idle timeout: every byte
 * received resets it, so a client trickling one header byte every few
 * seconds holds its connection (and its 32 KiB) forever.  The guard adds
 * deadlines of its own, as NGINX's client_header_timeout does: from
 * accepting a connection, and from a request line, the headers must be
 * complete within header_timeout; after a completed request, the next
 * request line must come within client_timeout.  A connection past its
 * deadline is shut down (shutdown(2), not close: the descriptor stays
 * libmicrohttpd's, which sees the end of the stream and closes it).
 *
 * Deadlines alone still let a client that keeps opening connections hold
 * every slot of a small listener: each one lives header_timeout, and a
 * new one takes the place of each that goes.  A guard with bounds
 * (soft_limit, per_address) therefore also closes connections that are
 * *waiting* (on a deadline list: no request in progress) to make room, as
 * NGINX drains its reusable connections and HAProxy its idle ones when
 * out of slots:
 *   - one client address (an IPv6 client's /64, which it usually holds
 *     whole) may keep at most per_address connections waiting; its next
 *     one closes its own oldest waiting one, never another client's;
 *   - past soft_limit connections, each new one closes the oldest waiting
 *     one of any client: idle kept-alive connections first (they have
 *     been answered and lose nothing), then the one that has been sending
 *     its headers longest.
 * So a connection that sends its request at once (a probe, a scrape) is
 * read before any trickler can push it out, however many slots those
 * fill.  A connection with a request in progress is never closed here.
 *
 * Data structure: two FIFOs per guard (header deadlines, idle deadlines);
 * each list's deadlines are set as now + one constant, so each is sorted
 * by deadline and by arrival at once.  The per-address count walks the
 * two lists, which is meant for small listeners (the admin one, 64
 * connections); the proxy's guard has no bounds and never walks.
 *
 * Ownership and threads: a guard and its sl_conn records belong to one
 * worker's thread (the one that runs the daemon); MHD's connection
 * notification creates and retires the records.  A guard that watches
 * hang-ups gives each record a watch on the worker's loop (EPOLLRDHUP,
 * edge-triggered) for the connection's life.
 */
#include "sl_proxy.h"

#include "sl_log.h"
#include "sl_request.h"
#include "sl_time.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

static void sl_conn_unlist(struct sl_guard *g, struct sl_conn *c)
{
    if (c->dlist == SL_DL_NONE)
        return;
    if (c->dprev != NULL)
        c->dprev->dnext = c->dnext;
    else
        g->dl_head[c->dlist] = c->dnext;
    if (c->dnext != NULL)
        c->dnext->dprev = c->dprev;
    else
        g->dl_tail[c->dlist] = c->dprev;
    c->dprev = c->dnext = NULL;
    c->dlist = SL_DL_NONE;
}

void sl_conn_deadline(struct sl_worker *w, struct sl_conn *c, int list)
{
    const struct sl_config *cf = w->config;
    struct sl_guard *g;

    if (c == NULL)
        return;
    g = c->guard;
    sl_conn_unlist(g, c);
    if (list == SL_DL_NONE || c->closing)
        return;
    c->dlist = list;
    c->deadline_ms = sl_time_mono_ms() + (list == SL_DL_HEADERS ? cf->header_timeout_us
                                                          : cf->client_timeout_us) / 1000;
    c->dnext = NULL;
    c->dprev = g->dl_tail[list];
    if (c->dprev != NULL)
        c->dprev->dnext = c;
    else
        g->dl_head[list] = c;
    g->dl_tail[list] = c;
}

struct sl_conn *sl_conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return ci != NULL ? ci->socket_context : NULL;
}

/* Close C's connection now (its request, if any, sees the end). */
static void sl_guard_close(struct sl_guard *g, struct sl_conn *c)
{
    sl_conn_unlist(g, c);
    shutdown(c->fd, SHUT_RDWR);
    c->closing = true;
    g->nclosing++;
}

/* Log what the guard closed, at most every 10 s. */
static void sl_guard_report(struct sl_guard *g, int64_t now)
{
    if ((g->slow_closed == 0 && g->evicted == 0) || now - g->logged_ms < 10000)
        return;
    if (g->slow_closed > 0)
        sl_warn("%s: closed %lu connection%s that did not send a request's "
                "headers in time (header_timeout / client_timeout)", g->name,
                g->slow_closed, g->slow_closed == 1 ? "" : "s");
    if (g->evicted > 0)
        sl_warn("%s: closed %lu waiting connection%s to make room for new ones "
                "(too many from one address, or the listener nearly full)",
                g->name, g->evicted, g->evicted == 1 ? "" : "s");
    g->logged_ms = now;
    g->slow_closed = 0;
    g->evicted = 0;
}

void sl_guard_expire(struct sl_guard *g, int64_t now)
{
    for (int l = 0; l < 2; l++) {
        struct sl_conn *c;
        while ((c = g->dl_head[l]) != NULL && c->deadline_ms <= now) {
            sl_guard_close(g, c);
            g->slow_closed++;
        }
    }
    sl_guard_report(g, now);
}

static bool sl_conn_same_client(const struct sl_conn *a, const struct sl_conn *b)
{
    return a->addr_len > 0 && a->addr_len == b->addr_len &&
           memcmp(a->addr, b->addr, a->addr_len) == 0;
}

/* The client's address as the per-address bound counts it: IPv4 (also
 * when mapped into IPv6) in full, IPv6 by its /64. */
static void sl_conn_set_client(struct sl_conn *c, const struct sockaddr *sa)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    c->addr_len = 0;
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET) {
        memcpy(c->addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        c->addr_len = 4;
    } else if (sa->sa_family == AF_INET6) {
        const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (memcmp(b, mapped, 12) == 0) {
            memcpy(c->addr, b + 12, 4);
            c->addr_len = 4;
        } else {
            memcpy(c->addr, b, 8);
            c->addr_len = 8;
        }
    }
}

/* The oldest waiting connection (idle ones first), of C's client when
 * C is given; NULL when none.  *N counts C's client's waiting ones. */
static struct sl_conn *sl_guard_oldest(struct sl_guard *g, const struct sl_conn *c,
                                       unsigned *n)
{
    struct sl_conn *found = NULL;

    *n = 0;
    for (int l = SL_DL_IDLE; l >= SL_DL_HEADERS; l--) {
        for (struct sl_conn *o = g->dl_head[l]; o != NULL; o = o->dnext) {
            if (c != NULL && !sl_conn_same_client(o, c))
                continue;
            if (found == NULL)
                found = o;
            if (c == NULL)
                return found;
            (*n)++;
        }
    }
    return found;
}

/* The new connection C is listed: apply the guard's bounds. */
static void sl_guard_make_room(struct sl_guard *g, struct sl_conn *c)
{
    struct sl_conn *victim;
    unsigned n;

    if (g->per_address > 0 && c->addr_len > 0) {
        victim = sl_guard_oldest(g, c, &n);
        if (n > g->per_address && victim != NULL && victim != c) {
            sl_guard_close(g, victim);
            g->evicted++;
        }
    }
    if (g->soft_limit > 0 && g->nconns - g->nclosing > g->soft_limit) {
        victim = sl_guard_oldest(g, NULL, &n);
        if (victim != NULL) {
            sl_guard_close(g, victim);
            g->evicted++;
        }
    }
    sl_guard_report(g, sl_time_mono_ms());
}

/* The client's socket reported EPOLLRDHUP (a watch on the worker's loop). */
static void sl_guard_hung_up(void *arg, int fd, uint32_t events)
{
    (void)fd;
    (void)events;
    sl_request_conn_hung_up(arg);
}

void sl_guard_notify(void *cls, struct MHD_Connection *connection,
                     void **socket_context, enum MHD_ConnectionNotificationCode toe)
{
    struct sl_guard *g = cls;
    struct sl_worker *w = g->w;
    struct sl_conn *c = *socket_context;
    const union MHD_ConnectionInfo *ci;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        g->nconns++;
        ci = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
        c = calloc(1, sizeof(*c));
        if (c == NULL || ci == NULL) {
            /* No deadline nor hang-up detection for this one; still
             * served, and still counted (closing it counts it out). */
            free(c);
            return;
        }
        c->guard = g;
        c->fd = ci->connect_fd;
        c->dlist = SL_DL_NONE;
        ci = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        sl_conn_set_client(c, ci != NULL ? ci->client_addr : NULL);
        if (g->watch_hangups) {
            c->watch = sl_loop_watch(w->loop, c->fd, EPOLLRDHUP | EPOLLET,
                                     sl_guard_hung_up, c);
            if (c->watch == NULL) {
                free(c);
                return;
            }
        }
        *socket_context = c;
        sl_conn_deadline(w, c, SL_DL_HEADERS);
        sl_guard_make_room(g, c);
        return;
    }
    g->nconns--;
    g->closed++;
    if (c == NULL)
        return;
    if (c->closing)
        g->nclosing--;
    if (c->req != NULL)
        sl_request_conn_closed(c);
    sl_conn_unlist(g, c);
    /* The loop never calls an unwatched watch's handler, not even for an
     * event of the batch it is dispatching: C may go at once. */
    sl_loop_unwatch(w->loop, c->watch);
    free(c);
    *socket_context = NULL;
}

void sl_guard_init(struct sl_guard *g, struct sl_worker *w, const char *name,
                   bool watch_hangups, unsigned soft_limit, unsigned per_address)
{
    memset(g, 0, sizeof(*g));
    g->w = w;
    snprintf(g->name, sizeof(g->name), "%s", name);
    g->watch_hangups = watch_hangups;
    g->soft_limit = soft_limit;
    g->per_address = per_address;
}
