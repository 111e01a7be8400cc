/*
 * sl_worker — one worker thread: its HTTP daemon, its libcurl multi, its
 * view of the store, and the event loop (common/sl_loop) that drives them.
 *
 * The loop knows none of them.  Each source registers its own watches,
 * timers and per-pass hooks at init:
 *   - libmicrohttpd runs with external polling: its own epoll fd is a
 *     watch, its MHD_get_timeout() a timer re-armed after each run, and a
 *     resumed connection a kick (mhd_kick: run it in this pass);
 *   - every socket libcurl asks to watch (CURLMOPT_SOCKETFUNCTION) is a
 *     watch driven with curl_multi_socket_action(); curl's timer
 *     (CURLMOPT_TIMERFUNCTION) is a timer;
 *   - the store's sockets are watches made through struct sl_loop (the
 *     store's view of this loop), its deadline a timer;
 *   - the sockets of client connections are watched for EPOLLRDHUP by the
 *     guard (sl_guard.c), because libmicrohttpd does not notice a client
 *     that hangs up while its connection is suspended;
 *   - the admin listener and the alerts (worker 0) register their own;
 *   - the main thread and the other workers wake the loop through its
 *     wake fd (sl_loop_wake): a stop, a reload, room in a shared queue.
 *
 * A pass of the loop, as its phases run:
 *   POLLED   a newer configuration is adopted (one atomic load when none),
 *            and calls a move marked are matched again (rematch phase);
 *   watches  ready descriptors, each to its own handler;
 *   timers   due deadlines, earliest first;
 *   CHECK    serve: curl's due work, finished transfers, the store's
 *            releases, MHD's runs, repeated while work is due right now;
 *            then the rematch phase again and the queue pump; then the
 *            admin listener's and the alerts' hooks;
 *   PREPARE  (before the next poll) the store's timers, which also write
 *            the pass's batch of commands to Redis; then the kicks still
 *            unserved (a resume, room in the queue, calls to rematch)
 *            keep the poll from waiting.
 * sl_worker_main is only that pass, repeated, and the graceful stop.
 *
 * Nothing blocks: a request waiting for its upstream is a suspended MHD
 * connection plus an easy handle in the multi, nothing more.
 *
 * Graceful stop: the daemon is quiesced (its listening socket leaves the
 * kernel's SO_REUSEPORT group, so new connections go to nobody and the
 * other sockets close too), in-flight calls get `shutdown_timeout` to
 * finish, then every remaining suspended connection is resumed and closed
 * and the daemon stopped.
 */
#include "sl_proxy.h"

#include "sl_admin.h"
#include "sl_apps.h"
#include "sl_alerts.h"

#include "sl_log.h"
#include "sl_auth.h"
#include "sl_request.h"
#include "sl_time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define SL_EASY_POOL_MAX 256

/* ---- libcurl socket interface ---- */

/*
 * libcurl says which events a socket needs; it says CURL_POLL_REMOVE when a
 * transfer ends even though the connection stays in its keep-alive pool.
 * Removing and re-adding a pooled socket around every call would cost two
 * epoll_ctl calls per request, so a socket stays watched until libcurl
 * closes it (sl_worker_close_socket) or it turns readable while no
 * transfer wants it (the upstream closed an idle connection).
 */
static struct sl_curl_sock *sl_curl_sock(struct sl_worker *w, curl_socket_t s)
{
    if (s < 0)
        return NULL;
    if (s >= w->ncurl_socks) {
        int n = w->ncurl_socks ? w->ncurl_socks : 256;
        struct sl_curl_sock *t;
        while (n <= s)
            n *= 2;
        t = realloc(w->curl_socks, (size_t)n * sizeof(*t));
        if (t == NULL)
            return NULL;
        memset(t + w->ncurl_socks, 0, (size_t)(n - w->ncurl_socks) * sizeof(*t));
        w->curl_socks = t;
        w->ncurl_socks = n;
    }
    return &w->curl_socks[s];
}

static void sl_curl_io(void *arg, int fd, uint32_t events)
{
    struct sl_worker *w = arg;
    struct sl_curl_sock *cs = &w->curl_socks[fd];
    int flags = 0, running;

    if (cs->wanted == 0) {
        /* An idle pooled connection stirred (closed by the upstream): stop
         * watching until libcurl asks again. */
        sl_loop_unwatch(w->loop, cs->watch);
        cs->watch = NULL;
        return;
    }
    if (events & EPOLLIN)
        flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT)
        flags |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP))
        flags |= CURL_CSELECT_ERR;
    curl_multi_socket_action(w->multi, fd, flags, &running);
}

static int sl_curl_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp,
                             void *socketp)
{
    struct sl_worker *w = userp;
    struct sl_curl_sock *cs = sl_curl_sock(w, s);

    (void)easy;
    (void)socketp;
    if (cs == NULL)
        return -1;
    if (what == CURL_POLL_REMOVE) {
        cs->wanted = 0;
        return 0;
    }
    cs->wanted = (what & CURL_POLL_IN ? EPOLLIN : 0) |
                 (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (cs->watch == NULL) {
        cs->watch = sl_loop_watch(w->loop, s, cs->wanted, sl_curl_io, w);
        return cs->watch != NULL ? 0 : -1;
    }
    if (sl_loop_watch_events(cs->watch) == cs->wanted)
        return 0;
    return sl_loop_modify(w->loop, cs->watch, cs->wanted);
}

int sl_worker_close_socket(void *clientp, curl_socket_t s)
{
    struct sl_worker *w = clientp;

    if (s >= 0 && s < w->ncurl_socks && w->curl_socks[s].watch != NULL) {
        /* An event of the batch being dispatched may still name it: the
         * loop skips it. */
        sl_loop_unwatch(w->loop, w->curl_socks[s].watch);
        w->curl_socks[s].watch = NULL;
        w->curl_socks[s].wanted = 0;
    }
    return close(s);
}

static int sl_curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct sl_worker *w = userp;

    (void)multi;
    if (timeout_ms < 0) {
        sl_loop_timer_stop(w->loop, &w->curl_timer);
        return 0;
    }
    return sl_loop_timer_after(w->loop, &w->curl_timer, timeout_ms);
}

/* curl's timer fired (or is due now): let it do its work. */
static void sl_curl_timeout(void *arg)
{
    struct sl_worker *w = arg;
    int running;

    curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

void sl_worker_drive_curl(struct sl_worker *w)
{
    sl_loop_timer_start(w->loop, &w->curl_timer, sl_loop_now(w->loop));
}

/*
 * Easy handles are reused without curl_easy_reset(), which would rebuild
 * the handle's state on every call: a handle last used for the same
 * upstream (and configuration generation) keeps the options that depend
 * only on them, and the caller sets again those that vary per call
 * (sl_req_start_transfer); one from another upstream (other TLS settings)
 * is reset first.  *FRESH: the handle is new or reset (every option must
 * be set).  *URL: the handle's own parsed URL (CURLOPT_CURLU), which goes
 * back to the pool with it; on a fresh handle it must be set again.
 */
CURL *sl_worker_get_easy(struct sl_worker *w, size_t upstream, bool *fresh,
                         CURLU **url)
{
    CURL *e;

    *fresh = true;
    if (w->npool == 0) {
        e = curl_easy_init();
        *url = e != NULL ? curl_url() : NULL;
        if (e != NULL && *url == NULL) {
            curl_easy_cleanup(e);
            e = NULL;
        }
        return e;
    }
    e = w->easy_pool[--w->npool].easy;
    *url = w->easy_pool[w->npool].url;
    if (w->easy_pool[w->npool].upstream != upstream)
        curl_easy_reset(e);
    else
        *fresh = false;
    return e;
}

/* Ownership: EASY and URL pass to the pool (EASY must not be in the multi). */
void sl_worker_put_easy(struct sl_worker *w, CURL *easy, CURLU *url,
                        size_t upstream)
{
    if (w->npool < SL_EASY_POOL_MAX && w->easy_pool != NULL) {
        w->easy_pool[w->npool++] = (struct sl_idle_easy){easy, url, upstream};
    } else {
        curl_easy_cleanup(easy);
        curl_url_cleanup(url);
    }
}

/* ---- the event loop as the store sees it ---- */

static void sl_store_io(void *arg, int fd, uint32_t events)
{
    struct sl_store_sock *ss = arg;

    (void)fd;
    ss->cb(ss->arg, (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0,
           (events & EPOLLOUT) != 0);
}

static int sl_store_watch(void *ctx, int fd, bool want_read, bool want_write,
                          sl_io_cb cb, void *arg)
{
    struct sl_worker *w = ctx;
    struct sl_store_sock *ss = NULL, *free_slot = NULL;
    uint32_t events = (want_read ? EPOLLIN : 0) | (want_write ? EPOLLOUT : 0);

    for (int i = 0; i < SL_STORE_WATCHES; i++) {
        struct sl_store_sock *s = &w->store_socks[i];
        if (s->watch != NULL && s->fd == fd)
            ss = s;
        else if (s->watch == NULL && free_slot == NULL)
            free_slot = s;
    }
    if (ss == NULL) {
        if (free_slot == NULL)
            return -1;
        ss = free_slot;
        ss->fd = fd;
        ss->cb = cb;
        ss->arg = arg;
        ss->watch = sl_loop_watch(w->loop, fd, events, sl_store_io, ss);
        return ss->watch != NULL ? 0 : -1;
    }
    ss->cb = cb;
    ss->arg = arg;
    /* Asked again even when unchanged: the fd may have been closed and
     * reused behind our back, which only a registration brings back. */
    return sl_loop_modify(w->loop, ss->watch, events);
}

static void sl_store_room(void *ctx, const struct sl_upstream_conf *up,
                          const struct sl_rule *rule, const char *key, size_t len)
{
    struct sl_worker *w = ctx;

    (void)up;
    sl_waitlists_room(w->proxy->waitlists, rule, key, len);
}

static void sl_store_unwatch(void *ctx, int fd)
{
    struct sl_worker *w = ctx;

    for (int i = 0; i < SL_STORE_WATCHES; i++) {
        struct sl_store_sock *s = &w->store_socks[i];
        if (s->watch != NULL && s->fd == fd) {
            sl_loop_unwatch(w->loop, s->watch);
            s->watch = NULL;
        }
    }
}

/*
 * Before each poll: the store's due timers, which also write the commands
 * the pass queued (one batch per pass with Redis), and its next deadline.
 * In the PREPARE phase, so whatever any phase of the pass asked of the
 * store leaves before the loop sleeps.
 */
static void sl_store_prepare(void *arg)
{
    struct sl_worker *w = arg;
    int64_t at = sl_store_timers(w->store, sl_loop_now(w->loop));

    if (at < 0)
        sl_loop_timer_stop(w->loop, &w->store_timer);
    else
        sl_loop_timer_start(w->loop, &w->store_timer, at);
}

/* ---- listening socket ---- */

/*
 * A non-blocking listening socket on HOST ("" or NULL: every address) and
 * PORT; REUSEPORT lets every worker bind its own.  Errors are logged as
 * "WHAT TEXT: reason" (e.g. "listen 127.0.0.1:8080: ...").  Returns the
 * descriptor or -1.
 */
int sl_listen_socket(const char *host, int port, bool reuseport, int backlog,
                     const char *what, const char *text)
{
    struct addrinfo hints = {0}, *res = NULL;
    char sport[16];
    int fd = -1, one = 1, rc;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(sport, sizeof(sport), "%d", port);
    rc = getaddrinfo(host && *host ? host : NULL, sport, &hints, &res);
    if (rc != 0) {
        sl_error("%s %s: %s", what, text, gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
        goto fail;
    if (res->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0)
        goto fail;
    if (listen(fd, backlog) != 0)
        goto fail;
    freeaddrinfo(res);
    return fd;
fail:
    sl_error("%s %s: %s", what, text, strerror(errno));
    if (fd >= 0)
        close(fd);
    freeaddrinfo(res);
    return -1;
}

void sl_worker_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    size_t n;

    (void)cls;
    vsnprintf(buf, sizeof(buf), fmt, ap);
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    /* MHD's words for a connection sluice closed on purpose (its client
     * left mid-call, shutdown, or a slow-client guard cut it): the access
     * log or the guard's own count already says so. */
    if (strstr(buf, "Application reported internal error") != NULL ||
        strstr(buf, "closed by remote side with incomplete request") != NULL ||
        strstr(buf, "detected connection closure") != NULL) {
        sl_debug("http: %s", buf);
        return;
    }
    sl_warn("http: %s", buf);
}

/* ---- the worker's own watches, timers and phases ---- */

static void sl_mhd_io(void *arg, int fd, uint32_t events)
{
    struct sl_worker *w = arg;

    (void)fd;
    (void)events;
    w->mhd_kick = true;
}

/* MHD's timeout: the serve phase runs the daemon on every pass anyway; the
 * timer only keeps the poll from sleeping past it. */
static void sl_mhd_due(void *arg)
{
    struct sl_worker *w = arg;

    w->mhd_kick = true;
}

/* Collect finished transfers. */
static void sl_worker_curl_done(struct sl_worker *w)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
        struct sl_request *req = NULL;
        if (msg->msg != CURLMSG_DONE)
            continue;
        if (sl_alerts_done(w->alerts, msg->easy_handle, msg->data.result))
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
        if (req != NULL)
            sl_request_transfer_done(req, msg->data.result);
    }
}

/*
 * POLLED: a reload installed a newer configuration: serve it from this
 * pass on (one atomic load when nothing changed); the held calls the move
 * marked are decided again before any event of the pass.
 */
static void sl_worker_polled(void *arg)
{
    struct sl_worker *w = arg;

    if (atomic_load_explicit(&w->proxy->generation, memory_order_acquire) !=
        w->config->generation)
        sl_worker_adopt(w);
    if (w->nrematch > 0)
        sl_request_rematch(w);
}

/*
 * CHECK, first: serve.  Work that is due now (curl's zero timer after a new
 * transfer, a resumed MHD connection) is done in this pass, not after
 * another epoll_wait: a call crosses the loop fewer times.
 */
static void sl_worker_serve(void *arg)
{
    struct sl_worker *w = arg;

    for (int round = 0; round < 8; round++) {
        bool progress = false;
        MHD_UNSIGNED_LONG_LONG mhd_ms;
        int64_t now = sl_loop_now(w->loop);

        if (sl_loop_timer_active(&w->curl_timer) && now >= w->curl_timer.at_ms) {
            sl_loop_timer_stop(w->loop, &w->curl_timer);
            sl_curl_timeout(w);
            progress = true;
        }
        sl_worker_curl_done(w);
        /* Released slots reach the store before their clients hear. */
        sl_store_flush(w->store);
        /* MHD keeps connections with pending work on an internal ready
         * list that neither its epoll fd nor MHD_get_timeout() reflects:
         * run it on the first round of every pass, and again whenever a
         * connection was resumed. */
        if (round == 0 || w->mhd_kick || w->stop) {
            w->mhd_kick = false;
            MHD_run(w->mhd);
            progress = true;
            /* A connection MHD still holds ready (a response just sent
             * moves to its next request over more runs): run it again
             * here, not after an epoll_wait that cannot block. */
            if (MHD_get_timeout(w->mhd, &mhd_ms) != MHD_YES)
                sl_loop_timer_stop(w->loop, &w->mhd_timer);
            else if (mhd_ms == 0)
                w->mhd_kick = true;
            else
                sl_loop_timer_start(w->loop, &w->mhd_timer,
                                    sl_loop_now(w->loop) + (int64_t)mhd_ms);
        }
        /* Go round again only for work that is due right now. */
        now = sl_loop_now(w->loop);
        if (!progress || w->stop ||
            !(w->mhd_kick || (sl_loop_timer_active(&w->curl_timer) &&
                              w->curl_timer.at_ms <= now)))
            break;
    }
}

/* The queue's timer: a held call's retry or deadline is due. */
static void sl_queue_due(void *arg)
{
    struct sl_worker *w = arg;

    w->queue_kick = true;
}

/*
 * CHECK, after serve: held calls first: their renewed decisions join this
 * pass's batch.  A move during this pass (a STALE answer) marked some for
 * matching again: before the pump, so they keep their turn.
 */
static void sl_worker_pump(void *arg)
{
    struct sl_worker *w = arg;
    int64_t next;

    if (w->nrematch > 0)
        sl_request_rematch(w);
    if (atomic_exchange(&w->remote_kick, false))
        w->queue_kick = true;
    /* Calls waiting for a token: a login ended (a broker's kick, with a
     * wake), or the worker stops; their deadlines are the tick's. */
    if ((atomic_load(&w->auth_kick) && atomic_exchange(&w->auth_kick, false)) ||
        (w->nauth_wait > 0 && w->stop))
        sl_auth_pump(w, sl_loop_now(w->loop));
    if (w->queue.total == 0) {
        sl_loop_timer_stop(w->loop, &w->queue_timer);
        w->queue_kick = false;
    } else if (w->queue_kick) {
        /* Cleared before the pump: a call the pump holds again that must
         * ask at once (sl_req_hold) kicks the next pass. */
        w->queue_kick = false;
        sl_request_pump(w, sl_loop_now(w->loop));
        /* The earliest retry or deadline is walked for only after a pump;
         * holding a call moves the timer earlier (sl_req_hold). */
        next = sl_queue_next_ms(&w->queue);
        if (next < 0)
            sl_loop_timer_stop(w->loop, &w->queue_timer);
        else
            sl_loop_timer_start(w->loop, &w->queue_timer, next);
    }
}

/*
 * PREPARE, after the store's hook (whose answers may resume connections or
 * free room): work left for right now keeps the poll from waiting.  Read
 * here, not latched when set: a kick the same pass already served (a
 * resume, then MHD_run) costs no extra epoll_wait.
 */
static void sl_worker_prepare(void *arg)
{
    struct sl_worker *w = arg;

    if (w->mhd_kick || w->queue_kick || w->nrematch > 0)
        sl_loop_nowait(w->loop);
}

void sl_worker_hold_until(struct sl_worker *w, int64_t at_ms)
{
    if (!sl_loop_timer_active(&w->queue_timer) || at_ms < w->queue_timer.at_ms)
        sl_loop_timer_start(w->loop, &w->queue_timer, at_ms);
}

/* Every SL_TICK_MS: slow clients on the proxy port, the memory store's
 * housekeeping (once per process: worker 0). */
static void sl_worker_tick(void *arg)
{
    struct sl_worker *w = arg;
    int64_t now = sl_loop_now(w->loop);

    sl_loop_timer_start(w->loop, &w->tick_timer, now + SL_TICK_MS);
    sl_guard_expire(&w->guard, now);
    if (w->id == 0)
        sl_store_tick(w->proxy->memory);
    if (w->nauth_wait > 0)
        sl_auth_pump(w, now);
}

static void sl_worker_stop_due(void *arg)
{
    struct sl_worker *w = arg;

    w->stop_expired = true;
}

/* The loop, and the worker's own registrations on it, before any module
 * adds its own: the hooks of a phase run in the order they were added. */
static int sl_worker_loop_init(struct sl_worker *w)
{
    w->loop = sl_loop_new(NULL);
    if (w->loop == NULL)
        return -1;
    sl_loop_timer_init(&w->curl_timer, sl_curl_timeout, w);
    sl_loop_timer_init(&w->mhd_timer, sl_mhd_due, w);
    sl_loop_timer_init(&w->store_timer, NULL, w);
    sl_loop_timer_init(&w->queue_timer, sl_queue_due, w);
    sl_loop_timer_init(&w->tick_timer, sl_worker_tick, w);
    sl_loop_timer_init(&w->stop_timer, sl_worker_stop_due, w);
    if (sl_loop_hook(w->loop, SL_LOOP_POLLED, sl_worker_polled, w) != 0 ||
        sl_loop_hook(w->loop, SL_LOOP_CHECK, sl_worker_serve, w) != 0 ||
        sl_loop_hook(w->loop, SL_LOOP_CHECK, sl_worker_pump, w) != 0 ||
        sl_loop_hook(w->loop, SL_LOOP_PREPARE, sl_store_prepare, w) != 0 ||
        sl_loop_hook(w->loop, SL_LOOP_PREPARE, sl_worker_prepare, w) != 0)
        return -1;
    return sl_loop_timer_after(w->loop, &w->tick_timer, SL_TICK_MS);
}

int sl_worker_init(struct sl_worker *w, struct sl_proxy *proxy, int id)
{
    const struct sl_config *c = proxy->config;
    const union MHD_DaemonInfo *info;
    char name[16];

    memset(w, 0, sizeof(*w));
    w->id = id;
    w->proxy = proxy;
    w->config = sl_config_ref(c);
    atomic_store_explicit(&w->serving, c->generation, memory_order_release);
    w->listen_fd = -1;
    if (sl_worker_loop_init(w) != 0)
        return -1;
    w->easy_pool = calloc(SL_EASY_POOL_MAX, sizeof(*w->easy_pool));
    if (w->easy_pool == NULL)
        return -1;

    /* The admin listener before the proxy's port: once that port accepts
     * connections, every listener is up (one readiness check is enough). */
    if (id == 0 && c->admin_listen != NULL) {
        w->admin = sl_admin_new(w);
        if (w->admin == NULL)
            return -1;
    }

    /* The proxy's port: deadlines, no bounds (its clients are apps, often
     * all on one address; max_connections bounds them). */
    snprintf(name, sizeof(name), "worker %d", id);
    sl_guard_init(&w->guard, w, name, true, 0, 0);
    w->listen_fd = sl_listen_socket(c->listen_host, c->listen_port, true, 1024,
                                    "listen", c->listen);
    if (w->listen_fd < 0)
        return -1;
    w->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME |
            MHD_USE_SUPPRESS_DATE_NO_CLOCK | MHD_USE_ERROR_LOG,
        0, NULL, NULL, sl_request_handle, w,
        MHD_OPTION_EXTERNAL_LOGGER, sl_worker_mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, w->listen_fd,
        MHD_OPTION_URI_LOG_CALLBACK, sl_request_uri_log, w,
        MHD_OPTION_NOTIFY_COMPLETED, sl_request_completed, w,
        MHD_OPTION_NOTIFY_CONNECTION, sl_guard_notify, &w->guard,
        MHD_OPTION_CONNECTION_LIMIT, c->max_connections,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)SL_CONN_MEMORY,
        MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)(c->client_timeout_us / 1000000),
        MHD_OPTION_END);
    if (w->mhd == NULL) {
        sl_error("worker %d: cannot start the HTTP daemon", id);
        close(w->listen_fd);
        w->listen_fd = -1;
        return -1;
    }
    info = MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL)
        return -1;
    w->mhd_watch = sl_loop_watch(w->loop, info->epoll_fd, EPOLLIN, sl_mhd_io, w);
    if (w->mhd_watch == NULL)
        return -1;

    w->raw_head_check = strcmp(MHD_get_version(), "0.9.75") == 0;
    if (!w->raw_head_check && id == 0)
        sl_warn("libmicrohttpd %s is not 0.9.75: the byte-by-byte check of "
                "request heads (NUL bytes, folded lines) is off; the other "
                "framing checks still apply", MHD_get_version());
    w->multi = curl_multi_init();
    if (w->multi == NULL)
        return -1;
    /* Sized for any configuration a reload may bring. */
    if (sl_queue_init(&w->queue, SL_MAX_UPSTREAMS, id, proxy->waitlists) != 0)
        return -1;
    if (c->store_kind == SL_STORE_REDIS) {
        struct sl_loop view = {w, sl_store_watch, sl_store_unwatch, sl_store_room};
        w->store = sl_store_redis_new(c, proxy->memory, &view, id);
        if (w->store == NULL)
            return -1;
        /* One writer of the process's history to Redis: worker 0; every
         * worker names apps (a repair puts calls back with theirs). */
        sl_store_redis_history(w->store, id == 0 ? proxy->history : NULL, proxy->apps);
    } else {
        w->store = proxy->memory;
    }
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, sl_curl_socket_cb);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, sl_curl_timer_cb);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    /* The keep-alive pool towards upstreams. */
    curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, 512L);
    if (sl_metrics_init(&w->metrics, proxy->ids.nups, proxy->ids.nslots,
                        sl_apps_capacity(proxy->apps)) != 0)
        return -1;
    /* Worker 0 keeps the alerts, even without receivers: a reload may
     * add some. */
    if (id == 0) {
        w->alerts = sl_alerts_new(w);
        if (w->alerts == NULL)
            return -1;
    }
    return 0;
}

static void sl_worker_begin_stop(struct sl_worker *w)
{
    MHD_socket fd;

    if (w->quiesced)
        return;
    w->quiesced = true;
    sl_loop_timer_after(w->loop, &w->stop_timer,
                        w->config->shutdown_timeout_us / 1000);
    fd = MHD_quiesce_daemon(w->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    sl_request_release_held(w);
    if (w->id == 0)
        sl_info("stopping: no new connections; %lu calls in flight on worker 0",
                w->nrequests);
}

static void *sl_worker_main(void *arg)
{
    struct sl_worker *w = arg;

    /* Connect the store (Redis) before the first call can arrive: the
     * first pass's PREPARE phase starts it. */
    for (;;) {
        if (sl_loop_run_once(w->loop) != 0) {
            sl_error("worker %d: epoll_wait: %s", w->id, strerror(errno));
            break;
        }
        if (w->stop) {
            sl_worker_begin_stop(w);
            if (w->nrequests == 0 || w->stop_expired)
                break;
        }
    }
    if (w->nrequests > 0)
        sl_warn("worker %d: shutdown_timeout reached; closing %lu calls in flight",
                w->id, w->nrequests);
    /* Resume every held connection (MHD forbids stopping with any suspended)
     * and let the daemon close them. */
    sl_request_abort_all(w);
    MHD_run(w->mhd);
    sl_worker_curl_done(w);
    sl_loop_unwatch(w->loop, w->mhd_watch);
    w->mhd_watch = NULL;
    MHD_stop_daemon(w->mhd);
    w->mhd = NULL;
    sl_admin_free(w->admin);
    w->admin = NULL;
    /* A Redis store belongs to this thread: close it here (its pending
     * snapshots are answered now, while the alerts still exist). */
    if (w->store != w->proxy->memory)
        sl_store_destroy(w->store);
    w->store = NULL;
    sl_alerts_free(w->alerts);
    w->alerts = NULL;
    return NULL;
}

int sl_worker_start(struct sl_worker *w)
{
    return pthread_create(&w->thread, NULL, sl_worker_main, w) == 0 ? 0 : -1;
}

void sl_worker_wake_queue(void *arg, int id)
{
    struct sl_proxy *proxy = arg;
    struct sl_worker *w = &proxy->workers[id];

    atomic_store(&w->remote_kick, true);
    sl_worker_wake(w);
}

void sl_worker_wake(struct sl_worker *w)
{
    if (w->loop != NULL && sl_loop_wake(w->loop) != 0)
        sl_warn("worker %d: cannot wake: %s", w->id, strerror(errno));
}

void sl_worker_request_stop(struct sl_worker *w)
{
    w->stop = true;
    sl_worker_wake(w);
}

void sl_worker_join(struct sl_worker *w) { pthread_join(w->thread, NULL); }

void sl_worker_cleanup(struct sl_worker *w)
{
    if (w->mhd != NULL)
        MHD_stop_daemon(w->mhd);
    sl_admin_free(w->admin);
    w->admin = NULL;
    if (w->store != NULL && w->store != w->proxy->memory)
        sl_store_destroy(w->store);
    w->store = NULL;
    sl_alerts_free(w->alerts);
    w->alerts = NULL;
    sl_metrics_free(&w->metrics);
    /* Before the loop: closing pooled connections unwatches them. */
    if (w->multi != NULL)
        curl_multi_cleanup(w->multi);
    for (int i = 0; i < w->npool; i++) {
        curl_easy_cleanup(w->easy_pool[i].easy);
        curl_url_cleanup(w->easy_pool[i].url);
    }
    free(w->easy_pool);
    free(w->curl_socks);
    sl_queue_free(&w->queue);
    sl_config_unref(w->config);
    w->config = NULL;
    sl_loop_free(w->loop);
    w->loop = NULL;
}
