/*
 * sl_worker — one event loop per worker thread.
 *
 * The loop owns an epoll set holding:
 *   - libmicrohttpd's own epoll fd (the daemon runs with external polling:
 *     we call MHD_run() when it is readable, when its timeout expires, and
 *     after any connection was resumed);
 *   - every socket libcurl asks to watch (CURLMOPT_SOCKETFUNCTION), driven
 *     with curl_multi_socket_action(); curl's timer is a deadline folded
 *     into the epoll_wait timeout (CURLMOPT_TIMERFUNCTION);
 *   - an eventfd the main thread writes to ask for a graceful stop;
 *   - the sockets of suspended client connections, watched for EPOLLRDHUP,
 *     because libmicrohttpd does not notice a client that hangs up while
 *     its connection is suspended.
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
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define SL_EASY_POOL_MAX 256
#define SL_TICK_MS 100

/* ---- libcurl socket interface ---- */

/*
 * libcurl says which events a socket needs; it says CURL_POLL_REMOVE when a
 * transfer ends even though the connection stays in its keep-alive pool.
 * Removing and re-adding a pooled socket around every call would cost two
 * epoll_ctl calls per request, so a socket stays registered until libcurl
 * closes it (sl_worker_close_socket) or it turns readable while no
 * transfer wants it (the upstream closed an idle connection).
 */
static struct sl_watch *sl_curl_watch(struct sl_worker *w, curl_socket_t s)
{
    if (s < 0)
        return NULL;
    if (s >= w->ncurl_fds) {
        int n = w->ncurl_fds ? w->ncurl_fds : 256;
        struct sl_watch **t;
        while (n <= s)
            n *= 2;
        t = realloc(w->curl_fds, (size_t)n * sizeof(*t));
        if (t == NULL)
            return NULL;
        memset(t + w->ncurl_fds, 0, (size_t)(n - w->ncurl_fds) * sizeof(*t));
        w->curl_fds = t;
        w->ncurl_fds = n;
    }
    if (w->curl_fds[s] == NULL) {
        struct sl_watch *watch = calloc(1, sizeof(*watch));
        if (watch == NULL)
            return NULL;
        watch->kind = SL_WATCH_CURL;
        watch->fd = s;
        watch->obj = w;
        w->curl_fds[s] = watch;
    }
    return w->curl_fds[s];
}

static int sl_curl_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp,
                             void *socketp)
{
    struct sl_worker *w = userp;
    struct sl_watch *watch = sl_curl_watch(w, s);
    struct epoll_event ev = {0};

    (void)easy;
    (void)socketp;
    if (watch == NULL)
        return -1;
    if (what == CURL_POLL_REMOVE) {
        watch->wanted = 0;
        return 0;
    }
    watch->wanted = (what & CURL_POLL_IN ? EPOLLIN : 0) |
                    (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (watch->registered && watch->events == watch->wanted)
        return 0;
    ev.events = watch->wanted;
    ev.data.ptr = watch;
    if (epoll_ctl(w->epfd, watch->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s,
                  &ev) != 0) {
        /* The fd may have been closed and reused behind our back. */
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, s, &ev) != 0 &&
            epoll_ctl(w->epfd, EPOLL_CTL_MOD, s, &ev) != 0)
            return -1;
    }
    watch->registered = true;
    watch->events = watch->wanted;
    return 0;
}

int sl_worker_close_socket(void *clientp, curl_socket_t s)
{
    struct sl_worker *w = clientp;

    if (s >= 0 && s < w->ncurl_fds && w->curl_fds[s] != NULL) {
        struct sl_watch *watch = w->curl_fds[s];
        if (watch->registered)
            epoll_ctl(w->epfd, EPOLL_CTL_DEL, s, NULL);
        /* Events of the batch being dispatched may still point at it:
         * retire it, free it once the batch is done. */
        watch->kind = SL_WATCH_DEAD;
        watch->next_dead = w->dead;
        w->dead = watch;
        w->curl_fds[s] = NULL;
    }
    return close(s);
}

static int sl_curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct sl_worker *w = userp;

    (void)multi;
    w->curl_deadline_ms = timeout_ms < 0 ? -1 : sl_time_mono_ms() + timeout_ms;
    return 0;
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

static int sl_loop_watch(void *ctx, int fd, bool want_read, bool want_write,
                         sl_io_cb cb, void *arg)
{
    struct sl_worker *w = ctx;
    struct sl_watch *watch = NULL, *free_slot = NULL;
    struct epoll_event ev = {0};
    int op;

    for (int i = 0; i < SL_STORE_WATCHES; i++) {
        struct sl_watch *s = &w->store_watch[i];
        if (s->registered && s->fd == fd)
            watch = s;
        else if (!s->registered && free_slot == NULL)
            free_slot = s;
    }
    if (watch == NULL) {
        if (free_slot == NULL)
            return -1;
        watch = free_slot;
    }
    watch->kind = SL_WATCH_STORE;
    watch->fd = fd;
    watch->obj = w;
    watch->io_cb = cb;
    watch->io_arg = arg;
    ev.events = (want_read ? EPOLLIN : 0) | (want_write ? EPOLLOUT : 0);
    ev.data.ptr = watch;
    op = watch->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    /* The fd may have been closed and reused behind our back. */
    if (epoll_ctl(w->epfd, op, fd, &ev) != 0 &&
        epoll_ctl(w->epfd, op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd,
                  &ev) != 0)
        return -1;
    watch->registered = true;
    return 0;
}

static void sl_loop_room(void *ctx, const struct sl_upstream_conf *up,
                         const struct sl_rule *rule, const char *key, size_t len)
{
    struct sl_worker *w = ctx;

    (void)up;
    sl_waitlists_room(w->proxy->waitlists, rule, key, len);
}

static void sl_loop_unwatch(void *ctx, int fd)
{
    struct sl_worker *w = ctx;

    for (int i = 0; i < SL_STORE_WATCHES; i++) {
        struct sl_watch *s = &w->store_watch[i];
        if (s->registered && s->fd == fd) {
            epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);
            s->registered = false;
        }
    }
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

int sl_worker_init(struct sl_worker *w, struct sl_proxy *proxy, int id)
{
    const struct sl_config *c = proxy->config;
    const union MHD_DaemonInfo *info;
    struct epoll_event ev = {0};
    char name[16];
    int efd;

    memset(w, 0, sizeof(*w));
    w->id = id;
    w->proxy = proxy;
    w->config = sl_config_ref(c);
    w->curl_deadline_ms = -1;
    w->store_deadline_ms = -1;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->listen_fd = -1;
    if (w->epfd < 0)
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
        w->admin_watch.kind = SL_WATCH_ADMIN;
        w->admin_watch.fd = sl_admin_fd(w->admin);
        w->admin_watch.obj = w->admin;
        ev.events = EPOLLIN;
        ev.data.ptr = &w->admin_watch;
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->admin_watch.fd, &ev) != 0)
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
    w->mhd_watch.kind = SL_WATCH_MHD;
    w->mhd_watch.fd = info->epoll_fd;
    w->mhd_watch.obj = w;
    ev.events = EPOLLIN;
    ev.data.ptr = &w->mhd_watch;
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, info->epoll_fd, &ev) != 0)
        return -1;

    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0)
        return -1;
    w->wake_watch.kind = SL_WATCH_WAKE;
    w->wake_watch.fd = efd;
    w->wake_watch.obj = w;
    ev.events = EPOLLIN;
    ev.data.ptr = &w->wake_watch;
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, efd, &ev) != 0)
        return -1;

    w->raw_head_check = strcmp(MHD_get_version(), "0.9.75") == 0;
    if (!w->raw_head_check && id == 0)
        sl_warn("libmicrohttpd %s is not 0.9.75: the byte-by-byte check of "
                "request heads (NUL bytes, folded lines) is off; the other "
                "framing checks still apply", MHD_get_version());
    w->multi = curl_multi_init();
    if (w->multi == NULL)
        return -1;
    w->queue_next_ms = -1;
    /* Sized for any configuration a reload may bring. */
    if (sl_queue_init(&w->queue, SL_MAX_UPSTREAMS, id, proxy->waitlists) != 0)
        return -1;
    if (c->store_kind == SL_STORE_REDIS) {
        struct sl_loop loop = {w, sl_loop_watch, sl_loop_unwatch, sl_loop_room};
        w->store = sl_store_redis_new(c, proxy->memory, &loop, id);
        if (w->store == NULL)
            return -1;
        /* One writer of the process's history to Redis: worker 0. */
        if (id == 0)
            sl_store_redis_history(w->store, proxy->history, proxy->apps);
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

static int sl_worker_timeout(struct sl_worker *w, int64_t now)
{
    int64_t t = w->next_tick_ms - now;
    MHD_UNSIGNED_LONG_LONG mhd_ms;

    if (w->mhd_kick)
        return 0;
    if (w->curl_deadline_ms >= 0 && w->curl_deadline_ms - now < t)
        t = w->curl_deadline_ms - now;
    if (w->mhd != NULL && MHD_get_timeout(w->mhd, &mhd_ms) == MHD_YES &&
        (int64_t)mhd_ms < t)
        t = (int64_t)mhd_ms;
    if (w->stop && w->stop_deadline_ms - now < t)
        t = w->stop_deadline_ms - now;
    if (w->store_deadline_ms >= 0 && w->store_deadline_ms - now < t)
        t = w->store_deadline_ms - now;
    if (w->admin != NULL) {
        int64_t at = sl_admin_timeout(w->admin);
        if (at >= 0 && at < t)
            t = at;
    }
    if (w->alerts != NULL) {
        int64_t next = sl_alerts_next_ms(w->alerts);
        if (next - now < t)
            t = next - now;
    }
    if (w->queue_kick || w->nrematch > 0)
        t = 0;
    else if (w->queue_next_ms >= 0 && w->queue_next_ms - now < t)
        t = w->queue_next_ms - now;
    return t < 0 ? 0 : (int)t;
}

static void sl_worker_begin_stop(struct sl_worker *w)
{
    MHD_socket fd;

    if (w->quiesced)
        return;
    w->quiesced = true;
    w->stop_deadline_ms =
        sl_time_mono_ms() + w->config->shutdown_timeout_us / 1000;
    fd = MHD_quiesce_daemon(w->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    sl_request_release_held(w);
    if (w->id == 0)
        sl_info("stopping: no new connections; %lu calls in flight on worker 0",
                w->nrequests);
}

static void sl_worker_free_dead(struct sl_worker *w)
{
    while (w->dead != NULL) {
        struct sl_watch *d = w->dead;
        w->dead = d->next_dead;
        free(d);
    }
}

static void *sl_worker_main(void *arg)
{
    struct sl_worker *w = arg;
    struct epoll_event evs[64];
    int running;

    w->next_tick_ms = sl_time_mono_ms() + SL_TICK_MS;
    /* Connect the store (Redis) before the first call can arrive. */
    w->store_deadline_ms = sl_store_timers(w->store, sl_time_mono_ms());
    for (;;) {
        int64_t now = sl_time_mono_ms();
        int n = epoll_wait(w->epfd, evs, 64, sl_worker_timeout(w, now));
        bool run_mhd = w->mhd_kick;
        bool run_admin = false;

        if (n < 0 && errno != EINTR) {
            sl_error("worker %d: epoll_wait: %s", w->id, strerror(errno));
            break;
        }
        w->mhd_kick = false;
        /* A reload installed a newer configuration: serve it from this
         * pass on (one atomic load when nothing changed). */
        if (atomic_load_explicit(&w->proxy->generation, memory_order_acquire) !=
            w->config->generation)
            sl_worker_adopt(w);
        if (w->nrematch > 0)
            sl_request_rematch(w);
        for (int i = 0; i < n; i++) {
            struct sl_watch *watch = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            int flags = 0;

            switch (watch->kind) {
            case SL_WATCH_MHD:
                run_mhd = true;
                break;
            case SL_WATCH_CURL:
                if (watch->wanted == 0) {
                    /* An idle pooled connection stirred (closed by the
                     * upstream): stop watching until libcurl asks again. */
                    epoll_ctl(w->epfd, EPOLL_CTL_DEL, watch->fd, NULL);
                    watch->registered = false;
                    break;
                }
                if (e & EPOLLIN)
                    flags |= CURL_CSELECT_IN;
                if (e & EPOLLOUT)
                    flags |= CURL_CSELECT_OUT;
                if (e & (EPOLLERR | EPOLLHUP))
                    flags |= CURL_CSELECT_ERR;
                curl_multi_socket_action(w->multi, watch->fd, flags, &running);
                break;
            case SL_WATCH_WAKE: {
                uint64_t v;
                if (read(watch->fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                    sl_warn("worker %d: eventfd read: %s", w->id, strerror(errno));
                break;
            }
            case SL_WATCH_CLIENT:
                sl_request_conn_hung_up(watch->obj);
                break;
            case SL_WATCH_STORE:
                watch->io_cb(watch->io_arg, (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0,
                             (e & EPOLLOUT) != 0);
                break;
            case SL_WATCH_ADMIN:
                run_admin = true;
                break;
            case SL_WATCH_DEAD:
                break;  /* its socket was closed earlier in this batch */
            }
        }
        sl_worker_free_dead(w);
        /* Work that is due now (curl's zero timer after a new transfer, a
         * resumed MHD connection) is done in this pass, not after another
         * epoll_wait: a call crosses the loop fewer times. */
        for (int round = 0; round < 8; round++) {
            bool progress = false;
            MHD_UNSIGNED_LONG_LONG mhd_ms;

            now = sl_time_mono_ms();
            if (w->curl_deadline_ms >= 0 && now >= w->curl_deadline_ms) {
                w->curl_deadline_ms = -1;
                curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0,
                                         &running);
                progress = true;
            }
            sl_worker_curl_done(w);
            /* Released slots reach the store before their clients hear. */
            sl_store_flush(w->store);
            /* MHD keeps connections with pending work on an internal
             * ready list that neither its epoll fd nor MHD_get_timeout()
             * reflects: run it on the first round of every pass, and again
             * whenever a connection was resumed. */
            if (round == 0 || run_mhd || w->mhd_kick || w->stop) {
                run_mhd = false;
                w->mhd_kick = false;
                MHD_run(w->mhd);
                progress = true;
                /* A connection MHD still holds ready (a response just sent
                 * moves to its next request over more runs): run it again
                 * here, not after an epoll_wait that cannot block. */
                if (MHD_get_timeout(w->mhd, &mhd_ms) == MHD_YES && mhd_ms == 0)
                    w->mhd_kick = true;
            }
            /* Go round again only for work that is due right now. */
            now = sl_time_mono_ms();
            if (!progress || w->stop ||
                !(w->mhd_kick ||
                  (w->curl_deadline_ms >= 0 && w->curl_deadline_ms <= now)))
                break;
        }
        /* Held calls first: their renewed decisions join this pass's batch.
         * A move during this pass (a STALE answer) marked some for
         * matching again: before the pump, so they keep their turn. */
        if (w->nrematch > 0)
            sl_request_rematch(w);
        if (atomic_exchange(&w->remote_kick, false))
            w->queue_kick = true;
        /* Calls waiting for a token: a login ended, or a deadline may have. */
        if ((atomic_load(&w->auth_kick) && atomic_exchange(&w->auth_kick, false)) ||
            (w->nauth_wait > 0 && (now >= w->next_tick_ms || w->stop)))
            sl_auth_pump(w, now);
        /* The earliest retry or deadline is walked for only after a pump;
         * holding a call lowers it (sl_req_hold).  A value left early by a
         * call that went away costs one pump that finds nothing. */
        if (w->queue.total == 0) {
            w->queue_next_ms = -1;
            w->queue_kick = false;
        } else if (w->queue_kick ||
                   (w->queue_next_ms >= 0 && now >= w->queue_next_ms)) {
            /* Cleared before the pump: a call the pump holds again that
             * must ask at once (sl_req_hold) sets it for the next pass. */
            w->queue_kick = false;
            sl_request_pump(w, now);
            w->queue_next_ms = sl_queue_next_ms(&w->queue);
        }
        if (w->admin != NULL && (run_admin || sl_admin_timeout(w->admin) == 0))
            sl_admin_run(w->admin);
        if (w->alerts != NULL)
            sl_alerts_run(w->alerts, now);
        w->store_deadline_ms = sl_store_timers(w->store, now);
        if (now >= w->next_tick_ms) {
            w->next_tick_ms = now + SL_TICK_MS;
            sl_guard_expire(&w->guard, now);
            if (w->admin != NULL)
                sl_admin_tick(w->admin, now);
            if (w->id == 0)
                sl_store_tick(w->proxy->memory);
        }
        if (w->stop) {
            sl_worker_begin_stop(w);
            if (w->nrequests == 0 || now >= w->stop_deadline_ms)
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
    uint64_t one = 1;

    atomic_store(&w->remote_kick, true);
    if (write(w->wake_watch.fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        sl_warn("worker %d: cannot wake: %s", id, strerror(errno));
}

void sl_worker_wake(struct sl_worker *w)
{
    uint64_t one = 1;

    if (write(w->wake_watch.fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        sl_warn("worker %d: cannot wake: %s", w->id, strerror(errno));
}

void sl_worker_request_stop(struct sl_worker *w)
{
    uint64_t one = 1;

    w->stop = true;
    if (write(w->wake_watch.fd, &one, sizeof(one)) < 0)
        sl_warn("worker %d: cannot wake: %s", w->id, strerror(errno));
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
    if (w->multi != NULL)
        curl_multi_cleanup(w->multi);
    for (int i = 0; i < w->ncurl_fds; i++)
        free(w->curl_fds[i]);
    free(w->curl_fds);
    sl_worker_free_dead(w);
    for (int i = 0; i < w->npool; i++) {
        curl_easy_cleanup(w->easy_pool[i].easy);
        curl_url_cleanup(w->easy_pool[i].url);
    }
    free(w->easy_pool);
    sl_queue_free(&w->queue);
    sl_config_unref(w->config);
    w->config = NULL;
    if (w->wake_watch.fd > 0)
        close(w->wake_watch.fd);
    if (w->epfd >= 0)
        close(w->epfd);
}
