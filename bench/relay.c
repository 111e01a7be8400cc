/*
 * relay — the floor under sluice's cost: a bare HTTP relay built from the
 * same two libraries, set up the same way, deciding nothing.
 *
 * bench/run.sh runs it beside sluice so that sluice's figures read as a
 * share of what this design can reach at all: whatever the relay costs is
 * the price of libmicrohttpd, libcurl, the kernel's loopback TCP and one
 * event loop per core; whatever sluice costs beyond it is the price of
 * deciding (matching, the store, the figures the operator sees).
 *
 * What it shares with sluice (proxy/sl_worker.c, proxy/sl_relay.c), on
 * purpose, option for option:
 *   - one worker thread per core, each with its own listening socket in a
 *     SO_REUSEPORT group (backlog 1024) and its own epoll loop;
 *   - a libmicrohttpd daemon per worker in external polling mode
 *     (MHD_USE_EPOLL | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME |
 *     MHD_USE_SUPPRESS_DATE_NO_CLOCK), 48 KiB of memory per connection,
 *     10,000 connections, a 60 s idle timeout, the raw request target
 *     taken from the URI log callback;
 *   - a libcurl multi handle per worker on the socket interface
 *     (CURLMOPT_SOCKETFUNCTION / TIMERFUNCTION folded into the same
 *     epoll_wait), a keep-alive pool of 512 connections, a socket staying
 *     registered in epoll while libcurl keeps it pooled;
 *   - easy handles reused without curl_easy_reset(), the upstream's origin
 *     parsed once per handle (CURLOPT_CURLU) and the request target sent
 *     byte for byte (CURLOPT_REQUEST_TARGET); HTTP/1.1, no signals, no
 *     proxy from the environment, 16 KiB transfer buffers, 5 s to connect,
 *     60 s for the exchange;
 *   - request headers copied minus the hop-by-hop ones (and those the
 *     client's Connection lists), X-Forwarded-For and X-Forwarded-Proto
 *     added; response headers relayed the same way; bodies streamed both
 *     ways through 256 KiB buffers, the transfer paused when one is full;
 *   - a call suspended while it waits for its upstream, resumed when the
 *     upstream's headers, a body chunk or the end arrive.
 *
 * What it leaves out, because sluice's extra work is what is measured:
 * rules, stores, queueing, provider feedback, metrics, access logs, the
 * framing and slow-client guards, the response spool, and the watch on a
 * suspended client's socket (a client that leaves while its call is
 * upstream is noticed when the call resumes).  It stops on SIGTERM or
 * SIGINT without draining: it is a measuring tool, not a server to run.
 *
 * Usage: relay HOST:PORT PREFIX URL [WORKERS]
 *   A call to PREFIX/rest goes to URL/rest (URL's path kept as a base);
 *   anything else gets 404.  WORKERS defaults to the number of CPUs.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RL_BUF_MAX (256 * 1024)        /* per direction, per call */
#define RL_CURL_BUFSIZE (16 * 1024)
#define RL_CONN_MEMORY (48 * 1024)
#define RL_POOL_MAX 256                /* idle easy handles per worker */

/* Where a suspended call waits. */
enum rl_susp { RL_RUNNING, RL_SUSP_HEADERS, RL_SUSP_UPLOAD, RL_SUSP_BODY };

/* A contiguous byte buffer of at most RL_BUF_MAX, read from rpos. */
struct rl_buf {
    char *data;
    size_t rpos, wpos, cap;
};

/* One socket libcurl asked to watch. */
struct rl_watch {
    int fd;
    uint32_t wanted;                   /* what libcurl wants now (0: idle) */
    uint32_t events;                   /* what epoll is told */
    bool registered;
    bool is_mhd;                       /* the daemon's own epoll fd */
    struct rl_watch *next_dead;
};

struct rl_worker {
    int epfd;
    int listen_fd;
    struct MHD_Daemon *mhd;
    struct rl_watch mhd_watch;
    CURLM *multi;
    int64_t curl_deadline_ms;          /* -1: none */
    bool mhd_kick;                     /* a connection was resumed */
    struct rl_watch **fds;             /* libcurl's sockets, by fd */
    int nfds;
    struct rl_watch *dead;             /* closed in this batch, freed after */
    struct rl_easy *pool[RL_POOL_MAX];
    int npool;
    pthread_t thread;
};

/* A pooled easy handle and the parsed origin it was given (CURLOPT_CURLU
 * keeps a pointer to it: it lives as long as the handle). */
struct rl_easy {
    CURL *e;
    CURLU *u;
};

/* A response header line from the upstream, "Name: value". */
struct rl_hdr {
    struct rl_hdr *next;
    size_t name_len;
    char line[];
};

/* One call, from its request line to its completion.  Owned by the MHD
 * connection (freed in rl_completed). */
struct rl_call {
    struct rl_worker *w;
    struct MHD_Connection *conn;
    char *uri;                         /* the raw request target */
    struct rl_easy *handle;            /* NULL until started */
    CURL *easy;                        /* handle->e */
    struct curl_slist *req_headers;
    struct rl_buf up, down;
    struct rl_hdr *hdrs, **hdrs_tail;
    long status;
    long long content_length;          /* -1: unknown */
    enum rl_susp susp;
    bool started, in_multi, has_body, is_head, up_done, up_paused, down_paused;
    bool headers_ready, xfer_done, responded;
    bool replay_headers;               /* the next call repeats the first */
    CURLcode result;
};

static const char *rl_prefix;
static size_t rl_prefix_len;
static const char *rl_origin;          /* scheme://host[:port] */
static char rl_base[1024];             /* URL's path, no trailing '/' */

static int64_t rl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- buffers ---- */

static size_t rl_buf_len(const struct rl_buf *b)
{
    return b->wpos - b->rpos;
}

/* Append up to N bytes of SRC, as many as fit under RL_BUF_MAX.  Returns
 * how many were taken (0 when full or out of memory). */
static size_t rl_buf_put(struct rl_buf *b, const char *src, size_t n)
{
    size_t room = RL_BUF_MAX - rl_buf_len(b);

    if (n > room)
        n = room;
    if (n == 0)
        return 0;
    if (b->rpos > 0 && b->wpos + n > b->cap) {
        memmove(b->data, b->data + b->rpos, rl_buf_len(b));
        b->wpos -= b->rpos;
        b->rpos = 0;
    }
    if (b->wpos + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *d;
        while (cap < b->wpos + n)
            cap *= 2;
        if (cap > RL_BUF_MAX)
            cap = RL_BUF_MAX;
        d = realloc(b->data, cap);
        if (d == NULL)
            return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->wpos, src, n);
    b->wpos += n;
    return n;
}

static size_t rl_buf_take(struct rl_buf *b, char *dst, size_t max)
{
    size_t n = rl_buf_len(b);

    if (n > max)
        n = max;
    memcpy(dst, b->data + b->rpos, n);
    b->rpos += n;
    if (b->rpos == b->wpos)
        b->rpos = b->wpos = 0;
    return n;
}

/* ---- suspending and resuming a call ---- */

static void rl_suspend(struct rl_call *c, enum rl_susp why)
{
    if (c->susp == RL_RUNNING)
        MHD_suspend_connection(c->conn);
    c->susp = why;
}

static void rl_resume(struct rl_call *c)
{
    if (c->susp == RL_RUNNING)
        return;
    c->susp = RL_RUNNING;
    MHD_resume_connection(c->conn);
    c->w->mhd_kick = true;
}

/* Tell libcurl what is paused; a transfer unpaused from outside its
 * callbacks is driven in this loop pass (libcurl 7.88 does not always
 * re-arm its timer then). */
static void rl_update_pause(struct rl_call *c)
{
    int mask = (c->up_paused ? CURLPAUSE_SEND : 0) |
               (c->down_paused ? CURLPAUSE_RECV : 0);

    if (c->easy == NULL || c->xfer_done)
        return;
    curl_easy_pause(c->easy, mask);
    if (mask != (CURLPAUSE_SEND | CURLPAUSE_RECV))
        c->w->curl_deadline_ms = rl_now_ms();
}

/* ---- hop-by-hop headers (RFC 9110 7.6.1) ---- */

static bool rl_hop_by_hop(const char *name, size_t len)
{
    static const char *const hop[] = {
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
        "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Content-Length", NULL,
    };
    for (const char *const *h = hop; *h; h++)
        if (strlen(*h) == len && strncasecmp(*h, name, len) == 0)
            return true;
    return false;
}

/* Whether CONNECTION (a Connection header's value, or NULL) lists NAME. */
static bool rl_connection_lists(const char *connection, const char *name, size_t len)
{
    const char *p = connection;

    if (connection == NULL)
        return false;
    while (*p) {
        const char *start, *end;
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        start = p;
        while (*p && *p != ',')
            p++;
        end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if ((size_t)(end - start) == len && strncasecmp(start, name, len) == 0)
            return true;
    }
    return false;
}

/* ---- libcurl's side of a call ---- */

static size_t rl_curl_header(char *line, size_t size, size_t nitems, void *ud)
{
    struct rl_call *c = ud;
    size_t len = size * nitems, n = len;
    struct rl_hdr *h;
    const char *colon;

    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        const char *sp = memchr(line, ' ', n);
        /* A new status line: an interim response's headers go away. */
        c->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        while (c->hdrs != NULL) {
            h = c->hdrs;
            c->hdrs = h->next;
            free(h);
        }
        c->hdrs_tail = &c->hdrs;
        c->content_length = -1;
        return len;
    }
    if (n == 0) {
        if (c->status >= 200) {
            c->headers_ready = true;
            if (c->susp == RL_SUSP_HEADERS)
                rl_resume(c);
        }
        return len;
    }
    if (c->status < 200)
        return len;
    colon = memchr(line, ':', n);
    if (colon == NULL)
        return len;
    h = malloc(sizeof(*h) + n + 1);
    if (h == NULL)
        return 0;
    h->next = NULL;
    h->name_len = (size_t)(colon - line);
    memcpy(h->line, line, n);
    h->line[n] = '\0';
    if (h->name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0)
        c->content_length = strtoll(colon + 1, NULL, 10);
    *c->hdrs_tail = h;
    c->hdrs_tail = &h->next;
    return len;
}

static size_t rl_curl_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct rl_call *c = ud;
    size_t n = size * nmemb;

    if (rl_buf_len(&c->down) + n > RL_BUF_MAX) {
        c->down_paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (rl_buf_put(&c->down, data, n) != n)
        return 0;  /* out of memory: abort rather than corrupt the body */
    if (c->susp == RL_SUSP_BODY)
        rl_resume(c);
    return n;
}

static size_t rl_curl_read(char *dst, size_t size, size_t nitems, void *ud)
{
    struct rl_call *c = ud;
    size_t n = rl_buf_take(&c->up, dst, size * nitems);

    if (n > 0) {
        if (c->susp == RL_SUSP_UPLOAD)
            rl_resume(c);
        return n;
    }
    if (c->up_done)
        return 0;
    c->up_paused = true;
    return CURL_READFUNC_PAUSE;
}

/* ---- libcurl's socket interface, as in proxy/sl_worker.c ---- */

static struct rl_watch *rl_curl_watch(struct rl_worker *w, curl_socket_t s)
{
    if (s < 0)
        return NULL;
    if (s >= w->nfds) {
        int n = w->nfds ? w->nfds : 256;
        struct rl_watch **t;
        while (n <= s)
            n *= 2;
        t = realloc(w->fds, (size_t)n * sizeof(*t));
        if (t == NULL)
            return NULL;
        memset(t + w->nfds, 0, (size_t)(n - w->nfds) * sizeof(*t));
        w->fds = t;
        w->nfds = n;
    }
    if (w->fds[s] == NULL) {
        w->fds[s] = calloc(1, sizeof(struct rl_watch));
        if (w->fds[s] == NULL)
            return NULL;
        w->fds[s]->fd = s;
    }
    return w->fds[s];
}

/* A socket stays registered while libcurl keeps it pooled (CURL_POLL_REMOVE
 * only clears what it wants): two epoll_ctl calls fewer per call. */
static int rl_curl_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp,
                             void *socketp)
{
    struct rl_worker *w = userp;
    struct rl_watch *watch = rl_curl_watch(w, s);
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

static int rl_close_socket(void *clientp, curl_socket_t s)
{
    struct rl_worker *w = clientp;

    if (s >= 0 && s < w->nfds && w->fds[s] != NULL) {
        struct rl_watch *watch = w->fds[s];
        if (watch->registered)
            epoll_ctl(w->epfd, EPOLL_CTL_DEL, s, NULL);
        /* Events of the batch being dispatched may still point at it. */
        watch->next_dead = w->dead;
        w->dead = watch;
        watch->fd = -1;
        w->fds[s] = NULL;
    }
    return close(s);
}

static int rl_curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct rl_worker *w = userp;

    (void)multi;
    w->curl_deadline_ms = timeout_ms < 0 ? -1 : rl_now_ms() + timeout_ms;
    return 0;
}

static void rl_curl_done(struct rl_worker *w)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
        struct rl_call *c = NULL;
        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        if (c == NULL)
            continue;
        c->xfer_done = true;
        c->result = msg->data.result;
        curl_multi_remove_handle(w->multi, c->easy);
        c->in_multi = false;
        rl_resume(c);
    }
}

/* ---- the call's start ---- */

struct rl_hdr_ctx {
    struct rl_call *c;
    const char *connection;            /* the client's Connection header */
};

static enum MHD_Result rl_copy_header(void *cls, enum MHD_ValueKind kind,
                                      const char *name, const char *value)
{
    struct rl_hdr_ctx *ctx = cls;
    struct rl_call *c = ctx->c;
    const char *connection = ctx->connection;
    size_t nlen = strlen(name);
    struct curl_slist *l;
    char *line;

    (void)kind;
    if (rl_hop_by_hop(name, nlen) || rl_connection_lists(connection, name, nlen) ||
        strcasecmp(name, "Host") == 0 || strcasecmp(name, "Expect") == 0 ||
        strcasecmp(name, "X-Forwarded-For") == 0 ||
        strcasecmp(name, "X-Forwarded-Proto") == 0)
        return MHD_YES;
    if (asprintf(&line, value && *value ? "%s: %s" : "%s;", name, value ? value : "") < 0)
        return MHD_NO;
    l = curl_slist_append(c->req_headers, line);
    free(line);
    if (l == NULL)
        return MHD_NO;
    c->req_headers = l;
    return MHD_YES;
}

static int rl_add_header(struct rl_call *c, const char *line)
{
    struct curl_slist *l = curl_slist_append(c->req_headers, line);

    if (l == NULL)
        return -1;
    c->req_headers = l;
    return 0;
}

static int rl_build_headers(struct rl_call *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const char *xff = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
                                                  "X-Forwarded-For");
    struct rl_hdr_ctx ctx = {c, MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
                                                            "Connection")};
    char ip[INET6_ADDRSTRLEN] = "unknown", *line;
    int rc;

    MHD_get_connection_values(c->conn, MHD_HEADER_KIND, rl_copy_header, &ctx);
    if (ci != NULL && ci->client_addr != NULL) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof(ip));
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip));
    }
    if (xff != NULL && *xff)
        rc = asprintf(&line, "X-Forwarded-For: %s, %s", xff, ip);
    else
        rc = asprintf(&line, "X-Forwarded-For: %s", ip);
    if (rc < 0)
        return -1;
    rc = rl_add_header(c, line);
    free(line);
    if (rc != 0 || rl_add_header(c, "X-Forwarded-Proto: http") != 0 ||
        rl_add_header(c, "Expect:") != 0)
        return -1;
    if (MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "Accept") == NULL &&
        rl_add_header(c, "Accept:") != 0)
        return -1;
    return 0;
}

/* An easy handle from the worker's pool (its per-upstream options already
 * set), or a new one with them. */
static void rl_easy_free(struct rl_easy *h)
{
    if (h == NULL)
        return;
    curl_easy_cleanup(h->e);
    curl_url_cleanup(h->u);
    free(h);
}

static struct rl_easy *rl_easy(struct rl_worker *w)
{
    struct rl_easy *h;
    CURL *e;

    if (w->npool > 0)
        return w->pool[--w->npool];
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->e = e = curl_easy_init();
    h->u = curl_url();
    if (e == NULL || h->u == NULL ||
        curl_url_set(h->u, CURLUPART_URL, rl_origin, 0) != CURLUE_OK) {
        rl_easy_free(h);
        return NULL;
    }
    curl_easy_setopt(e, CURLOPT_CURLU, h->u);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, rl_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, w);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, rl_curl_header);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, rl_curl_write);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, rl_curl_read);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)RL_CURL_BUFSIZE);
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, (long)RL_CURL_BUFSIZE);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 60000L);
    return h;
}

static int rl_start(struct rl_call *c, const char *method, const char *rest)
{
    const char *cl = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
                                                 "Content-Length");
    const char *te = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
                                                 "Transfer-Encoding");
    char *target;
    CURL *e;

    if (rl_build_headers(c) != 0)
        return -1;
    c->handle = rl_easy(c->w);
    if (c->handle == NULL)
        return -1;
    c->easy = e = c->handle->e;
    if (asprintf(&target, "%s%s%s", rl_base, *rest == '/' ? "" : "/", rest) < 0)
        return -1;
    curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, target);
    free(target);  /* libcurl keeps its own copy */
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)c);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_READDATA, c);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->req_headers);
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, (char *)NULL);
    c->has_body = (cl != NULL && strtoll(cl, NULL, 10) > 0) || te != NULL;
    c->is_head = strcmp(method, "HEAD") == 0;
    if (c->is_head)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (c->has_body) {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                         te != NULL ? (curl_off_t)-1 : (curl_off_t)strtoll(cl, NULL, 10));
    }
    if (curl_multi_add_handle(c->w->multi, e) != CURLM_OK)
        return -1;
    c->in_multi = true;
    return 0;
}

/* ---- the response towards the client ---- */

static ssize_t rl_read_body(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct rl_call *c = cls;
    size_t n = rl_buf_take(&c->down, buf, max);

    (void)pos;
    if (n > 0) {
        if (c->down_paused && rl_buf_len(&c->down) + RL_CURL_BUFSIZE <= RL_BUF_MAX) {
            c->down_paused = false;
            rl_update_pause(c);
        }
        return (ssize_t)n;
    }
    if (c->xfer_done)
        return c->result == CURLE_OK ? MHD_CONTENT_READER_END_OF_STREAM
                                     : MHD_CONTENT_READER_END_WITH_ERROR;
    if (c->down_paused) {
        c->down_paused = false;
        rl_update_pause(c);
    }
    rl_suspend(c, RL_SUSP_BODY);
    return 0;
}

static enum MHD_Result rl_answer(struct MHD_Connection *conn, unsigned status,
                                 const char *body)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result rc;

    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result rl_respond(struct rl_call *c)
{
    const char *connection = NULL;
    struct MHD_Response *resp;
    enum MHD_Result rc;

    c->responded = true;
    if (!c->headers_ready)
        return rl_answer(c->conn, 502, "{\"error\":\"upstream_error\"}\n");
    for (struct rl_hdr *h = c->hdrs; h; h = h->next)
        if (h->name_len == 10 && strncasecmp(h->line, "Connection", 10) == 0)
            connection = h->line + 11;
    if (c->xfer_done && c->result == CURLE_OK && !c->is_head)
        resp = MHD_create_response_from_buffer(rl_buf_len(&c->down),
                                               c->down.data ? c->down.data + c->down.rpos : (char *)"",
                                               MHD_RESPMEM_MUST_COPY);
    else
        resp = MHD_create_response_from_callback(
            c->content_length >= 0 ? (uint64_t)c->content_length : MHD_SIZE_UNKNOWN,
            32 * 1024, rl_read_body, c, NULL);
    if (resp == NULL)
        return MHD_NO;
    for (struct rl_hdr *h = c->hdrs; h; h = h->next) {
        const char *v = h->line + h->name_len + 1;
        if (rl_hop_by_hop(h->line, h->name_len) ||
            rl_connection_lists(connection, h->line, h->name_len))
            continue;
        while (*v == ' ' || *v == '\t')
            v++;
        h->line[h->name_len] = '\0';
        MHD_add_response_header(resp, h->line, v);
        h->line[h->name_len] = ':';
    }
    rc = MHD_queue_response(c->conn, (unsigned)c->status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* ---- libmicrohttpd's side of a call ---- */

/* The raw request target (with its query) arrives here first; the call
 * begins with it. */
static void *rl_uri_log(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct rl_call *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->w = cls;
    c->conn = conn;
    c->uri = strdup(uri);
    c->hdrs_tail = &c->hdrs;
    c->content_length = -1;
    return c;
}

static enum MHD_Result rl_handle(void *cls, struct MHD_Connection *conn,
                                 const char *url, const char *method,
                                 const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    struct rl_call *c = *con_cls;

    (void)cls;
    (void)url;
    (void)version;
    if (c == NULL || c->uri == NULL)
        return MHD_NO;  /* out of memory: close */
    if (!c->started) {
        const char *rest = c->uri + rl_prefix_len;
        c->started = true;
        if (strncmp(c->uri, rl_prefix, rl_prefix_len) != 0 ||
            (*rest != '\0' && *rest != '/' && *rest != '?'))
            return rl_answer(conn, 404, "{\"error\":\"no_route\"}\n");
        if (rl_start(c, method, rest) != 0)
            return rl_answer(conn, 503, "{\"error\":\"out_of_memory\"}\n");
        if (!c->has_body) {
            rl_suspend(c, RL_SUSP_HEADERS);
            c->replay_headers = true;
        }
        return MHD_YES;
    }
    if (c->replay_headers && *upload_data_size == 0) {
        /* libmicrohttpd repeats the headers call after a resume; an answer
         * queued then, before the (empty) body is read, would close the
         * connection.  The next call is the body's end. */
        c->replay_headers = false;
        return MHD_YES;
    }
    c->replay_headers = false;
    if (*upload_data_size > 0 && c->xfer_done) {
        *upload_data_size = 0;  /* the upstream answered already: drop it */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = rl_buf_put(&c->up, upload_data, *upload_data_size);
        *upload_data_size -= n;
        if (n > 0 && c->up_paused) {
            c->up_paused = false;
            rl_update_pause(c);
        }
        if (*upload_data_size > 0)
            rl_suspend(c, RL_SUSP_UPLOAD);  /* full: libcurl drains it */
        return MHD_YES;
    }
    if (c->has_body && !c->up_done) {
        c->up_done = true;
        if (c->up_paused) {
            c->up_paused = false;
            rl_update_pause(c);
        }
    }
    if (c->responded)
        return MHD_YES;
    if (!c->headers_ready && !c->xfer_done) {
        rl_suspend(c, RL_SUSP_HEADERS);
        return MHD_YES;
    }
    return rl_respond(c);
}

static void rl_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct rl_worker *w = cls;
    struct rl_call *c = *con_cls;

    (void)conn;
    (void)toe;
    if (c == NULL)
        return;
    *con_cls = NULL;
    if (c->handle != NULL) {
        if (c->in_multi)
            curl_multi_remove_handle(w->multi, c->easy);
        /* The headers are freed below; the next call sets its own. */
        curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
        curl_easy_setopt(c->easy, CURLOPT_PRIVATE, (char *)NULL);
        if (w->npool < RL_POOL_MAX)
            w->pool[w->npool++] = c->handle;
        else
            rl_easy_free(c->handle);
    }
    curl_slist_free_all(c->req_headers);
    while (c->hdrs != NULL) {
        struct rl_hdr *h = c->hdrs;
        c->hdrs = h->next;
        free(h);
    }
    free(c->up.data);
    free(c->down.data);
    free(c->uri);
    free(c);
}

/* ---- the worker ---- */

static int rl_listen(const char *host, const char *port)
{
    struct addrinfo hints = {0}, *res = NULL;
    int fd, one = 1;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (getaddrinfo(*host ? host : NULL, port, &hints, &res) != 0)
        return -1;
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 &&
        (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
         setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
         bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0)) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int rl_worker_init(struct rl_worker *w, const char *host, const char *port)
{
    const union MHD_DaemonInfo *info;
    struct epoll_event ev = {0};

    w->curl_deadline_ms = -1;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->listen_fd = rl_listen(host, port);
    if (w->epfd < 0 || w->listen_fd < 0)
        return -1;
    w->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME |
            MHD_USE_SUPPRESS_DATE_NO_CLOCK | MHD_USE_ERROR_LOG,
        0, NULL, NULL, rl_handle, w,
        MHD_OPTION_LISTEN_SOCKET, w->listen_fd,
        MHD_OPTION_URI_LOG_CALLBACK, rl_uri_log, w,
        MHD_OPTION_NOTIFY_COMPLETED, rl_completed, w,
        MHD_OPTION_CONNECTION_LIMIT, 10000u,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)RL_CONN_MEMORY,
        MHD_OPTION_CONNECTION_TIMEOUT, 60u,
        MHD_OPTION_END);
    if (w->mhd == NULL)
        return -1;
    info = MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL)
        return -1;
    w->mhd_watch.fd = info->epoll_fd;
    w->mhd_watch.is_mhd = true;
    ev.events = EPOLLIN;
    ev.data.ptr = &w->mhd_watch;
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, info->epoll_fd, &ev) != 0)
        return -1;
    w->multi = curl_multi_init();
    if (w->multi == NULL)
        return -1;
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, rl_curl_socket_cb);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, rl_curl_timer_cb);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, 512L);
    return 0;
}

static int rl_worker_timeout(struct rl_worker *w)
{
    int64_t now = rl_now_ms(), t = 1000;
    MHD_UNSIGNED_LONG_LONG mhd_ms;

    if (w->mhd_kick)
        return 0;
    if (w->curl_deadline_ms >= 0 && w->curl_deadline_ms - now < t)
        t = w->curl_deadline_ms - now;
    if (MHD_get_timeout(w->mhd, &mhd_ms) == MHD_YES && (int64_t)mhd_ms < t)
        t = (int64_t)mhd_ms;
    return t < 0 ? 0 : (int)t;
}

/* The loop of proxy/sl_worker.c without the store, queue, admin and
 * alerts: dispatch the batch, then do what is due now in the same pass. */
static void *rl_worker_main(void *arg)
{
    struct rl_worker *w = arg;
    struct epoll_event evs[64];
    int running;

    for (;;) {
        int n = epoll_wait(w->epfd, evs, 64, rl_worker_timeout(w));
        bool run_mhd = w->mhd_kick;

        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "relay: epoll_wait: %s\n", strerror(errno));
            break;
        }
        w->mhd_kick = false;
        for (int i = 0; i < n; i++) {
            struct rl_watch *watch = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            int flags = 0;

            if (watch->is_mhd) {
                run_mhd = true;
                continue;
            }
            if (watch->fd < 0)
                continue;  /* closed earlier in this batch */
            if (watch->wanted == 0) {
                /* An idle pooled connection stirred (closed by the
                 * upstream): stop watching until libcurl asks again. */
                epoll_ctl(w->epfd, EPOLL_CTL_DEL, watch->fd, NULL);
                watch->registered = false;
                continue;
            }
            if (e & EPOLLIN)
                flags |= CURL_CSELECT_IN;
            if (e & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
            if (e & (EPOLLERR | EPOLLHUP))
                flags |= CURL_CSELECT_ERR;
            curl_multi_socket_action(w->multi, watch->fd, flags, &running);
        }
        while (w->dead != NULL) {
            struct rl_watch *d = w->dead;
            w->dead = d->next_dead;
            free(d);
        }
        for (int round = 0; round < 8; round++) {
            bool progress = false;
            MHD_UNSIGNED_LONG_LONG mhd_ms;
            int64_t now = rl_now_ms();

            if (w->curl_deadline_ms >= 0 && now >= w->curl_deadline_ms) {
                w->curl_deadline_ms = -1;
                curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
                progress = true;
            }
            rl_curl_done(w);
            if (round == 0 || run_mhd || w->mhd_kick) {
                run_mhd = false;
                w->mhd_kick = false;
                MHD_run(w->mhd);
                progress = true;
                if (MHD_get_timeout(w->mhd, &mhd_ms) == MHD_YES && mhd_ms == 0)
                    w->mhd_kick = true;
            }
            now = rl_now_ms();
            if (!progress ||
                !(w->mhd_kick || (w->curl_deadline_ms >= 0 && w->curl_deadline_ms <= now)))
                break;
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    static char origin[1024];
    const char *url, *p, *colon;
    char host[256];
    long workers = sysconf(_SC_NPROCESSORS_ONLN);
    struct rl_worker *ws;
    size_t hlen;

    if (argc < 4 || argc > 5 || argv[2][0] != '/' ||
        (strncmp(argv[3], "http://", 7) != 0 && strncmp(argv[3], "https://", 8) != 0)) {
        fprintf(stderr, "usage: relay HOST:PORT PREFIX URL [WORKERS]\n"
                        "  e.g. relay 127.0.0.1:8090 /up http://127.0.0.1:9000 2\n");
        return 2;
    }
    colon = strrchr(argv[1], ':');
    if (colon == NULL || (hlen = (size_t)(colon - argv[1])) >= sizeof(host)) {
        fprintf(stderr, "relay: %s is not HOST:PORT\n", argv[1]);
        return 2;
    }
    memcpy(host, argv[1], hlen);
    host[hlen] = '\0';
    if (argc == 5)
        workers = strtol(argv[4], NULL, 10);
    if (workers < 1)
        workers = 1;
    rl_prefix = argv[2];
    rl_prefix_len = strlen(rl_prefix);
    while (rl_prefix_len > 1 && rl_prefix[rl_prefix_len - 1] == '/')
        rl_prefix_len--;
    /* URL's origin goes in each handle's CURLU; its path is a base. */
    url = argv[3];
    p = strchr(strstr(url, "://") + 3, '/');
    if (p == NULL)
        p = url + strlen(url);
    if ((size_t)(p - url) >= sizeof(origin)) {
        fprintf(stderr, "relay: URL too long\n");
        return 2;
    }
    memcpy(origin, url, (size_t)(p - url));
    rl_origin = origin;
    if (strlen(p) >= sizeof(rl_base)) {
        fprintf(stderr, "relay: URL too long\n");
        return 2;
    }
    strcpy(rl_base, p);
    for (size_t n = strlen(rl_base); n > 0 && rl_base[n - 1] == '/'; n--)
        rl_base[n - 1] = '\0';
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    ws = calloc((size_t)workers, sizeof(*ws));
    if (ws == NULL)
        return 1;
    for (long i = 0; i < workers; i++) {
        if (rl_worker_init(&ws[i], host, colon + 1) != 0) {
            fprintf(stderr, "relay: worker %ld cannot listen on %s: %s\n", i,
                    argv[1], strerror(errno));
            return 1;
        }
    }
    for (long i = 0; i < workers; i++)
        if (pthread_create(&ws[i].thread, NULL, rl_worker_main, &ws[i]) != 0)
            return 1;
    fprintf(stderr, "relay: %s%s -> %s, %ld workers\n", argv[1], rl_prefix, url, workers);
    for (long i = 0; i < workers; i++)
        pthread_join(ws[i].thread, NULL);
    return 1;
}
