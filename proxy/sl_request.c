/*
 * sl_request — one call's life, from request line to last response byte.
 *
 *   uri_log     MHD saw the request line: allocate the request and keep the
 *               raw request target (byte-exact path and query).
 *   handle #1   headers are in: route by prefix (404 if none), refuse
 *               dot-segments (400), match rules, ask the store.  Allowed:
 *               start the upstream transfer at once, before the body has
 *               been read.  Denied: queue the 429 now (a client sending
 *               "Expect: 100-continue" never uploads its body), or, in
 *               queue mode, hold the call: the connection stays suspended
 *               inside this call, body unread, until sl_request_pump()
 *               has the store decide again (see sl_queue.h).  After any
 *               suspension inside this call MHD repeats it once resumed.
 *   handle #n   body bytes: copied into a bounded buffer that libcurl's
 *               read callback drains.  When the buffer is full the MHD
 *               connection is suspended; curl's read callback resumes it.
 *               When it is empty curl's send side is paused; new bytes
 *               unpause it.
 *   handle last the body is complete: if the upstream's response headers
 *               are in, read the provider's feedback (usage reports, limit
 *               signals: pause the upstream, maybe hold the call for a
 *               retry), then queue the response; otherwise suspend until
 *               they are (or the transfer failed: 502/504).
 *   response    the body streams through a second bounded buffer: curl's
 *               write callback fills it (pausing curl's receive side when
 *               full), MHD's content reader drains it (suspending the
 *               connection when empty).  A response that completed before
 *               it was queued is handed to MHD as one buffer.
 *   completed   MHD is done with the connection's request (relayed, client
 *               gone, or shutdown): abort the transfer if it still runs,
 *               give back concurrency slots, write the access log line.
 *
 * Ownership: the request belongs to its MHD connection and is freed only in
 * the completion callback (or, if the store's answer is still outstanding
 * then, by the decision callback).  The easy handle is owned by the request
 * while it is in the multi, and goes back to the worker's pool when the
 * transfer ends.  Every callback runs on the worker thread that owns the
 * connection.
 *
 * While suspended, MHD ignores the socket, so each client socket is
 * watched for EPOLLRDHUP for the life of its connection (sl_conn): a client
 * that hangs up while held or while waiting for its upstream is forgotten
 * at once, and its upstream transfer aborted.
 */
#include "sl_proxy.h"

#include "sl_duration.h"
#include "sl_feedback.h"
#include "sl_log.h"
#include "sl_path.h"
#include "sl_pattern.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SL_BUF_MAX (256 * 1024)     /* per direction, per call */
#define SL_SIGNAL_PEEK (64 * 1024)  /* body bytes searched for limit signals */
#define SL_SAVE_MAX (64 * 1024)     /* request body kept for a retry */
#define SL_CURL_BUFSIZE (64 * 1024)

/* A bounded byte queue: [rpos, wpos) of data holds unread bytes. */
struct sl_buf {
    char *data;
    size_t cap, rpos, wpos;
};

enum sl_phase {
    SL_PHASE_NEW,       /* request line seen, headers not yet handled */
    SL_PHASE_ACTIVE,    /* routed and decided */
};

enum sl_susp {
    SL_SUSP_NONE,
    SL_SUSP_DECIDE,     /* waiting for the store */
    SL_SUSP_UPLOAD,     /* upload buffer full */
    SL_SUSP_HEADERS,    /* body sent, waiting for response headers */
    SL_SUSP_BODY,       /* response buffer empty */
    SL_SUSP_HELD,       /* queue mode: waiting for room */
};

/* One upstream response header line, "Name: value" split in place. */
struct sl_hdr {
    struct sl_hdr *next;
    size_t name_len;
    char *value;        /* points into line */
    char line[];
};

struct sl_request {
    struct sl_request *prev, *next;   /* worker's list of live requests */
    struct sl_worker *w;
    struct MHD_Connection *conn;
    char *uri;                        /* raw request target (owned) */
    const char *raw_uri;              /* ... where MHD parsed it (its buffer) */
    const char *method;               /* MHD-owned, valid until completion */
    const struct sl_upstream_conf *up;
    enum sl_phase phase;

    bool suspended;
    enum sl_susp susp;
    struct sl_conn *sconn;            /* the connection's watch, or NULL */
    bool client_gone;

    struct sl_check check;            /* rules matched (owned keys) */
    struct sl_decision decision;
    struct sl_lease *lease;           /* owned, released when the upstream
                                       * exchange ends */
    bool committed;                   /* the lease's reservations are logged */
    int64_t decided_us;               /* when the store allowed it */
    int64_t sent_us;                  /* when its request went upstream */
    bool signalled;                   /* the response said "over the limit" */
    int64_t signal_pause_us;          /* ... and asked for this pause */
    bool deciding;                    /* store's answer outstanding */
    bool replay_headers;              /* MHD will repeat the headers call */
    struct sl_held held;              /* its place in the queue */
    bool is_held;
    struct sl_decision last_deny;     /* why it is held */
    bool feedback_done;               /* provider's signals read */
    bool want_body;                   /* a signal needs the body's start */
    char *saved;                      /* request body kept for a retry */
    size_t saved_len;
    bool saved_ok;                    /* the whole body is in `saved` */
    int retries;
    bool orphaned;                    /* completed while deciding */

    struct MHD_Response *pending;     /* synthetic response to queue */
    unsigned pending_status;

    CURL *easy;                       /* owned while the transfer runs */
    struct curl_slist *req_headers;
    bool has_body;
    bool up_done;                     /* client body fully received */
    bool up_paused;                   /* curl send side paused */
    struct sl_buf upload;             /* client body towards curl */

    long status;                      /* upstream status (final) */
    struct sl_hdr *hdrs, **hdrs_tail;
    size_t hdr_bytes;                 /* of the final response's headers */
    unsigned resp_cl_lines, resp_te_lines;
    bool resp_cl_bad;                 /* unreadable or differing lengths */
    const char *resp_error;           /* why sluice refused the response */
    bool headers_ready;
    int64_t content_length;           /* -1 unknown */
    struct sl_buf down;
    bool down_paused;                 /* curl receive side paused */
    bool xfer_done;
    CURLcode result;
    bool queued;
    char errbuf[CURL_ERROR_SIZE];

    int64_t start_ms;
    unsigned status_sent;
    const char *outcome;              /* for the access log */
    uint64_t bytes_out;
};

static void sl_req_decided(void *arg, const struct sl_decision *d,
                           struct sl_lease *lease);
static void sl_req_suspend(struct sl_request *req, enum sl_susp why);
static void sl_req_resume(struct sl_request *req);
static void sl_req_update_pause(struct sl_request *req);
static void sl_req_abort_transfer(struct sl_request *req);
static void sl_req_free(struct sl_request *req);
static void sl_req_error(struct sl_request *req, unsigned status,
                         const char *error, const char *message,
                         int64_t retry_after, const char *outcome);
static void sl_req_set_pending(struct sl_request *req, unsigned status,
                               struct MHD_Response *resp, const char *outcome);

/* ---- buffers ---- */

static size_t sl_buf_len(const struct sl_buf *b) { return b->wpos - b->rpos; }

/* Room for N more bytes within SL_BUF_MAX (an empty buffer always fits). */
static bool sl_buf_fits(const struct sl_buf *b, size_t n)
{
    return sl_buf_len(b) == 0 || sl_buf_len(b) + n <= SL_BUF_MAX;
}

/* Append up to N bytes; returns how many were taken. */
static size_t sl_buf_put(struct sl_buf *b, const char *src, size_t n)
{
    size_t len = sl_buf_len(b);
    size_t room = len >= SL_BUF_MAX ? 0 : SL_BUF_MAX - len;

    if (len == 0)
        room = n > SL_BUF_MAX ? n : SL_BUF_MAX;
    if (n > room)
        n = room;
    if (n == 0)
        return 0;
    if (b->rpos > 0 && b->wpos + n > b->cap) {
        memmove(b->data, b->data + b->rpos, len);
        b->rpos = 0;
        b->wpos = len;
    }
    if (b->wpos + n > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        char *d;
        while (cap < b->wpos + n)
            cap *= 2;
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

static size_t sl_buf_take(struct sl_buf *b, char *dst, size_t max)
{
    size_t n = sl_buf_len(b);

    if (n > max)
        n = max;
    if (n == 0)
        return 0;
    memcpy(dst, b->data + b->rpos, n);
    b->rpos += n;
    if (b->rpos == b->wpos)
        b->rpos = b->wpos = 0;
    return n;
}

static void sl_buf_free(struct sl_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ---- suspension and hang-up watching ---- */

/*
 * Suspend the connection.  The client's socket is already watched for
 * hang-ups (sl_conn); one that hung up before this point is handled now.
 */
static void sl_req_suspend(struct sl_request *req, enum sl_susp why)
{
    if (req->suspended) {
        req->susp = why;
        return;
    }
    MHD_suspend_connection(req->conn);
    req->suspended = true;
    req->susp = why;
    if (req->sconn != NULL && req->sconn->hung_up)
        sl_request_client_gone(req);
}

void sl_request_conn_closed(struct sl_conn *c)
{
    if (c->req != NULL && c->req->sconn == c)
        c->req->sconn = NULL;
    c->req = NULL;
}

void sl_request_conn_hung_up(struct sl_conn *c)
{
    c->hung_up = true;
    /* A running connection notices by itself; a suspended one cannot. */
    if (c->req != NULL && c->req->suspended)
        sl_request_client_gone(c->req);
}

static void sl_req_resume(struct sl_request *req)
{
    if (!req->suspended)
        return;
    req->suspended = false;
    req->susp = SL_SUSP_NONE;
    MHD_resume_connection(req->conn);
    req->w->mhd_kick = true;
}

void sl_request_client_gone(struct sl_request *req)
{
    if (req->client_gone)
        return;
    req->client_gone = true;
    if (req->outcome == NULL || strcmp(req->outcome, "forwarded") == 0)
        req->outcome = "client_gone";
    sl_req_abort_transfer(req);
    sl_req_resume(req);
}

void sl_request_abort_all(struct sl_worker *w)
{
    for (struct sl_request *r = w->requests; r != NULL; r = r->next) {
        if (!r->suspended)
            continue;
        r->client_gone = true;
        r->outcome = "shutdown";
        sl_req_abort_transfer(r);
        sl_req_resume(r);
    }
}

/* ---- synthetic responses ---- */

static void sl_req_set_pending(struct sl_request *req, unsigned status,
                               struct MHD_Response *resp, const char *outcome)
{
    if (req->pending != NULL)
        MHD_destroy_response(req->pending);
    req->pending = resp;
    req->pending_status = status;
    req->outcome = outcome;
}

static void sl_req_error(struct sl_request *req, unsigned status,
                         const char *error, const char *message,
                         int64_t retry_after, const char *outcome)
{
    struct sl_error_reply e = {
        .status = status,
        .error = error,
        .upstream = req->up ? req->up->name : NULL,
        .message = message,
        .retry_after_s = retry_after,
    };
    sl_req_set_pending(req, status, sl_respond_error(&e), outcome);
}

/* The over-limit answer for decision D (the upstream's reject status). */
static void sl_req_limited(struct sl_request *req, const struct sl_decision *d)
{
    unsigned status = req->up->reject_status ? req->up->reject_status
                                             : MHD_HTTP_TOO_MANY_REQUESTS;

    req->decision = *d;
    sl_req_set_pending(req, status,
                       sl_respond_limited(req->w->proxy->config, req->up, d),
                       "rejected");
}

/* Queue the pending synthetic response. */
static enum MHD_Result sl_req_queue_pending(struct sl_request *req)
{
    enum MHD_Result rc;

    if (req->pending == NULL)
        return MHD_NO;  /* could not even build it: drop the connection */
    rc = MHD_queue_response(req->conn, req->pending_status, req->pending);
    MHD_destroy_response(req->pending);
    req->pending = NULL;
    req->queued = true;
    req->status_sent = req->pending_status;
    return rc;
}

/* ---- upstream transfer: libcurl callbacks ---- */

/* Upstream response headers sluice relays at most (NGINX's default
 * proxy_buffer_size is 4-8 KiB); they must fit the client connection's
 * memory pool beside the request's. */
#define SL_RESP_HEADERS_MAX (16 * 1024)

/* Record a Content-Length value of the upstream's response. */
static void sl_resp_content_length(struct sl_request *req, const char *v)
{
    long long n = 0;
    const char *p = v;

    if (*p < '0' || *p > '9')
        req->resp_cl_bad = true;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > (INT64_MAX - 9) / 10) {
            req->resp_cl_bad = true;
            break;
        }
        n = n * 10 + (*p - '0');
    }
    if (*p != '\0')
        req->resp_cl_bad = true;
    if (req->resp_cl_lines > 0 && n != req->content_length)
        req->resp_cl_bad = true;
    req->resp_cl_lines++;
    req->content_length = n;
}

/*
 * One line of the upstream's response head.  Returning 0 aborts the
 * transfer; with resp_error set, the client gets 502 saying why: a
 * response whose framing is ambiguous (RFC 9112 6.3) or whose headers
 * could not be relayed is never passed on as if it were fine.
 */
static size_t sl_curl_header(char *line, size_t size, size_t nitems, void *ud)
{
    struct sl_request *req = ud;
    size_t len = size * nitems, n = len;
    struct sl_hdr *h;
    char *colon;

    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        const char *sp = memchr(line, ' ', n);
        /* A new status line: an interim (1xx) response's headers go away. */
        req->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        while (req->hdrs != NULL) {
            h = req->hdrs;
            req->hdrs = h->next;
            free(h);
        }
        req->hdrs_tail = &req->hdrs;
        req->content_length = -1;
        req->hdr_bytes = 0;
        req->resp_cl_lines = req->resp_te_lines = 0;
        req->resp_cl_bad = false;
        return len;
    }
    if (n == 0) {
        if (req->status >= 200) {
            if (req->resp_te_lines > 0 && req->resp_cl_lines > 0) {
                req->resp_error = "the upstream's response has both "
                                  "Content-Length and Transfer-Encoding";
                return 0;
            }
            if (req->resp_cl_bad) {
                req->resp_error = "the upstream's response has an invalid or "
                                  "conflicting Content-Length";
                return 0;
            }
            if (req->resp_te_lines > 0)
                req->content_length = -1;  /* libcurl decodes the chunks */
            req->headers_ready = true;
            if (req->susp == SL_SUSP_HEADERS)
                sl_req_resume(req);
        }
        return len;
    }
    if (req->status < 200)
        return len;
    req->hdr_bytes += n + 2;
    if (req->hdr_bytes > SL_RESP_HEADERS_MAX) {
        req->resp_error = "the upstream's response headers exceed 16 KiB";
        return 0;
    }
    if (memchr(line, '\0', n) != NULL) {
        req->resp_error = "the upstream's response headers hold a NUL byte";
        return 0;
    }
    if ((line[0] == ' ' || line[0] == '\t'))
        return len;  /* obsolete line folding: dropped, as RFC 9112 allows */
    colon = memchr(line, ':', n);
    if (colon == NULL || colon == line)
        return len;
    h = malloc(sizeof(*h) + n + 1);
    if (h == NULL) {
        req->resp_error = "sluice is out of memory";
        return 0;  /* aborts the transfer: 502 */
    }
    memcpy(h->line, line, n);
    h->line[n] = '\0';
    h->next = NULL;
    h->name_len = (size_t)(colon - line);
    h->value = h->line + h->name_len + 1;
    while (*h->value == ' ' || *h->value == '\t')
        h->value++;
    /* Trailing whitespace of the value is not part of it. */
    for (char *e = h->line + n; e > h->value && (e[-1] == ' ' || e[-1] == '\t');)
        *--e = '\0';
    if (h->name_len == 14 && strncasecmp(h->line, "Content-Length", 14) == 0)
        sl_resp_content_length(req, h->value);
    else if (h->name_len == 17 && strncasecmp(h->line, "Transfer-Encoding", 17) == 0)
        req->resp_te_lines++;
    *req->hdrs_tail = h;
    req->hdrs_tail = &h->next;
    return len;
}

/*
 * libcurl has a connection (set up, TLS done) and is about to write the
 * request: this is the moment the provider's clock starts for this call,
 * so the store logs the call's reservations now.  A call whose connection
 * took so long that its reservation may have lapsed is not sent at all.
 */
static int sl_curl_prereq(void *ud, char *primary_ip, char *local_ip,
                          int primary_port, int local_port)
{
    struct sl_request *req = ud;
    int64_t now = sl_clock_monotonic(NULL);

    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    if (req->committed)
        return CURL_PREREQFUNC_OK;  /* libcurl retried on a fresh connection */
    if (req->lease != NULL &&
        now - req->decided_us > req->up->connect_timeout_us + SL_USEC_PER_SEC) {
        req->resp_error = "the upstream connection took longer than "
                          "connect_timeout; the call was not sent";
        return CURL_PREREQFUNC_ABORT;
    }
    sl_store_commit(req->w->store, req->lease);
    req->committed = true;
    /* After the commit: the call's own log entry is not "sent after" the
     * moment its answer will be reported from (sl_store_sync). */
    req->sent_us = sl_clock_monotonic(NULL);
    return CURL_PREREQFUNC_OK;
}

static size_t sl_curl_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct sl_request *req = ud;
    size_t n = size * nmemb;

    if (req->client_gone)
        return 0;  /* aborts the transfer */
    if (!sl_buf_fits(&req->down, n)) {
        req->down_paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (sl_buf_put(&req->down, data, n) != n)
        return 0;  /* out of memory: abort rather than corrupt the body */
    if (req->susp == SL_SUSP_BODY ||
        (req->want_body && sl_buf_len(&req->down) >= SL_SIGNAL_PEEK))
        sl_req_resume(req);
    return n;
}

static size_t sl_curl_read(char *dst, size_t size, size_t nitems, void *ud)
{
    struct sl_request *req = ud;
    size_t n = sl_buf_take(&req->upload, dst, size * nitems);

    if (n > 0) {
        if (req->susp == SL_SUSP_UPLOAD)
            sl_req_resume(req);
        return n;
    }
    if (req->up_done)
        return 0;
    req->up_paused = true;
    return CURL_READFUNC_PAUSE;
}

/* Apply up_paused / down_paused to the easy handle. */
static void sl_req_update_pause(struct sl_request *req)
{
    int mask = (req->up_paused ? CURLPAUSE_SEND : 0) |
               (req->down_paused ? CURLPAUSE_RECV : 0);

    if (req->easy != NULL && !req->xfer_done) {
        curl_easy_pause(req->easy, mask);
        /* libcurl 7.88 does not always re-arm the multi timer when a
         * transfer is unpaused from outside its callbacks: drive it in this
         * loop pass ourselves. */
        if (mask != (CURLPAUSE_SEND | CURLPAUSE_RECV))
            req->w->curl_deadline_ms = sl_now_ms();
    }
}

/*
 * Give back what the call holds in the store: its concurrency slots, and
 * its rate reservations if the request was never sent.  Held calls waiting
 * for those buckets ask again at once.
 */
static void sl_req_release_lease(struct sl_request *req)
{
    struct sl_worker *w = req->w;

    if (req->lease == NULL)
        return;
    sl_store_release(w->store, req->lease);
    req->lease = NULL;
    for (size_t i = 0; i < req->check.nhits; i++) {
        const struct sl_hit *h = &req->check.hits[i];
        if (h->rule->kind == SL_RULE_CONCURRENCY ||
            (h->rule->kind == SL_RULE_RATE && !req->committed))
            sl_waitlists_room(w->proxy->waitlists, h->rule, h->key, h->key_len);
    }
    w->queue_kick = true;
}

static void sl_req_abort_transfer(struct sl_request *req)
{
    if (req->easy == NULL)
        return;
    curl_multi_remove_handle(req->w->multi, req->easy);
    sl_worker_put_easy(req->w, req->easy, req->up->index);
    req->easy = NULL;
    req->xfer_done = true;
    req->result = CURLE_ABORTED_BY_CALLBACK;
    sl_req_release_lease(req);
}

void sl_request_transfer_done(struct sl_request *req, CURLcode result)
{
    char msg[CURL_ERROR_SIZE + 256];
    const char *q = strchr(req->uri, '?');
    int plen = (int)(q ? q - req->uri : (long)strlen(req->uri));

    curl_multi_remove_handle(req->w->multi, req->easy);
    sl_worker_put_easy(req->w, req->easy, req->up->index);
    req->easy = NULL;
    req->xfer_done = true;
    req->result = result;
    /* The provider is done with the call: concurrency slots free now, not
     * when a slow client has finished reading (or sending). */
    sl_req_release_lease(req);
    if (!req->headers_ready) {
        const char *why = req->errbuf[0] ? req->errbuf : curl_easy_strerror(result);
        if (req->resp_error != NULL)
            why = req->resp_error;
        else if (result == CURLE_OK)
            why = "the upstream's response was not HTTP";
        else if (result == CURLE_OUT_OF_MEMORY && req->status > 0)
            /* libcurl refuses a header line over 100 KiB this way, before
             * sluice's own 16 KiB bound sees it. */
            why = "the upstream's response headers are too large "
                  "(a header line over 100 KiB)";
        if (result == CURLE_OPERATION_TIMEDOUT) {
            snprintf(msg, sizeof(msg), "upstream \"%s\" timed out: %s",
                     req->up->name, why);
            sl_req_error(req, MHD_HTTP_GATEWAY_TIMEOUT, "upstream_timeout", msg,
                         0, "upstream_timeout");
        } else {
            snprintf(msg, sizeof(msg), "upstream \"%s\" failed: %s",
                     req->up->name, why);
            sl_req_error(req, MHD_HTTP_BAD_GATEWAY, "upstream_error", msg, 0,
                         "upstream_error");
        }
        sl_warn("upstream %s: %s %.*s: %s", req->up->name, req->method,
                plen > 200 ? 200 : plen, req->uri, why);
    } else if (result != CURLE_OK) {
        req->outcome = "upstream_truncated";
        sl_warn("upstream %s: response cut short: %s", req->up->name,
                req->errbuf[0] ? req->errbuf : curl_easy_strerror(result));
    }
    if (req->suspended && req->susp != SL_SUSP_DECIDE)
        sl_req_resume(req);
}

/* ---- request headers towards the upstream ---- */

struct sl_hdr_ctx {
    struct sl_request *req;
    const char *connection;     /* the client's Connection header */
    const char *xff;            /* the client's X-Forwarded-For */
    bool has_accept;
    bool failed;
};

static enum MHD_Result sl_copy_req_header(void *cls, enum MHD_ValueKind kind,
                                          const char *name, const char *value)
{
    struct sl_hdr_ctx *ctx = cls;
    size_t nlen = strlen(name), vlen;
    struct curl_slist *l;
    char stack[1024], *line = stack;

    (void)kind;
    if (sl_header_is_hop_by_hop(name, nlen) ||
        sl_header_connection_lists(ctx->connection, name, nlen) ||
        strcasecmp(name, "Host") == 0 || strcasecmp(name, "Expect") == 0 ||
        strcasecmp(name, "X-Forwarded-For") == 0 ||
        strcasecmp(name, "X-Forwarded-Proto") == 0)
        return MHD_YES;
    if (strcasecmp(name, "Accept") == 0)
        ctx->has_accept = true;
    vlen = value != NULL ? strlen(value) : 0;
    if (nlen + vlen + 3 > sizeof(stack)) {
        line = malloc(nlen + vlen + 3);
        if (line == NULL) {
            ctx->failed = true;
            return MHD_NO;
        }
    }
    memcpy(line, name, nlen);
    if (vlen == 0) {
        /* curl sends "Name;" as a header with an empty value. */
        memcpy(line + nlen, ";", 2);
    } else {
        memcpy(line + nlen, ": ", 2);
        memcpy(line + nlen + 2, value, vlen + 1);
    }
    l = curl_slist_append(ctx->req->req_headers, line);
    if (line != stack)
        free(line);
    if (l == NULL) {
        ctx->failed = true;
        return MHD_NO;
    }
    ctx->req->req_headers = l;
    return MHD_YES;
}

static int sl_add_header(struct sl_request *req, const char *line)
{
    struct curl_slist *l = curl_slist_append(req->req_headers, line);

    if (l == NULL)
        return -1;
    req->req_headers = l;
    return 0;
}

static int sl_req_build_headers(struct sl_request *req)
{
    struct sl_hdr_ctx ctx = {.req = req};
    const union MHD_ConnectionInfo *ci;
    char ip[INET6_ADDRSTRLEN] = "unknown";
    char *line;
    int rc;

    ctx.connection = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                 "Connection");
    ctx.xff = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                          "X-Forwarded-For");
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, sl_copy_req_header,
                              &ctx);
    if (ctx.failed)
        return -1;
    ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci != NULL && ci->client_addr != NULL) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip,
                      sizeof(ip));
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip,
                      sizeof(ip));
    }
    if (ctx.xff != NULL && *ctx.xff)
        rc = asprintf(&line, "X-Forwarded-For: %s, %s", ctx.xff, ip);
    else
        rc = asprintf(&line, "X-Forwarded-For: %s", ip);
    if (rc < 0)
        return -1;
    rc = sl_add_header(req, line);
    free(line);
    if (rc != 0 || sl_add_header(req, "X-Forwarded-Proto: http") != 0)
        return -1;
    /* Keep libcurl from inventing headers the client did not send. */
    if (sl_add_header(req, "Expect:") != 0)
        return -1;
    if (!ctx.has_accept && sl_add_header(req, "Accept:") != 0)
        return -1;
    return 0;
}

/* Start the upstream transfer.  Returns 0, or -1 (caller answers 502/503). */
static int sl_req_start_transfer(struct sl_request *req, const char *url)
{
    const struct sl_upstream_conf *up = req->up;
    const char *cl, *te;
    CURL *e;

    if (sl_req_build_headers(req) != 0)
        return -1;
    e = sl_worker_get_easy(req->w, up->index);
    if (e == NULL)
        return -1;
    req->easy = e;
    req->content_length = -1;
    req->hdrs_tail = &req->hdrs;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)req);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, sl_worker_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, req->w);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* Upstream traffic goes straight to the upstream: an http_proxy in the
     * environment must not reroute it (and is not looked up per call). */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, sl_curl_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, req);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, sl_curl_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sl_curl_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->req_headers);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)SL_CURL_BUFSIZE);
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, (long)SL_CURL_BUFSIZE);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(up->connect_timeout_us / 1000));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(up->timeout_us / 1000));
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, up->tls_verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, up->tls_verify ? 2L : 0L);
    if (up->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, up->ca_file);

    cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Content-Length");
    te = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                     "Transfer-Encoding");
    req->has_body = cl != NULL || te != NULL;
    /* The handle may come from the pool: restate the method from scratch
     * (HTTPGET clears UPLOAD and NOBODY). */
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, (char *)NULL);
    if (strcmp(req->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (strcmp(req->method, "GET") != 0 || req->has_body) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    if (req->retries == 0)
        req->saved_ok = up->retry_on_limit;
    if (req->has_body && strcmp(req->method, "HEAD") != 0) {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, sl_curl_read);
        curl_easy_setopt(e, CURLOPT_READDATA, req);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                         cl != NULL && te == NULL ? (curl_off_t)strtoll(cl, NULL, 10)
                                                  : (curl_off_t)-1);
    } else {
        req->up_done = true;
    }
    if (curl_multi_add_handle(req->w->multi, e) != CURLM_OK) {
        sl_worker_put_easy(req->w, e, up->index);
        req->easy = NULL;
        return -1;
    }
    return 0;
}

/* ---- routing ---- */

static const struct sl_upstream_conf *sl_route(const struct sl_config *c,
                                               const char *path, size_t len)
{
    const struct sl_upstream_conf *best = NULL;

    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *u = &c->upstreams[i];
        size_t pl = u->prefix_len;

        if (pl == 1) {  /* "/" routes everything */
            if (best == NULL)
                best = u;
            continue;
        }
        if (len < pl || memcmp(path, u->prefix, pl) != 0)
            continue;
        if (len > pl && path[pl] != '/')
            continue;
        if (best == NULL || pl > best->prefix_len)
            best = u;
    }
    return best;
}

/* The raw request target past the upstream's prefix (path and query). */
static const char *sl_req_rest(const struct sl_request *req)
{
    return req->uri + (req->up->prefix_len == 1 ? 0 : req->up->prefix_len);
}

static const char *sl_call_header(void *ctx, const char *name)
{
    return MHD_lookup_connection_value(ctx, MHD_HEADER_KIND, name);
}

/* ---- queue mode ---- */

#define SL_QUEUE_POLL_MS 50   /* retry interval for concurrency slots */

static void sl_req_unhold(struct sl_request *req)
{
    if (!req->is_held)
        return;
    sl_queue_remove(&req->w->queue, &req->held);
    req->is_held = false;
}

/*
 * D denied the call and its rule is in queue mode: hold it, or keep holding
 * it with a new retry time.  Returns 0 when held, -1 when it must get the
 * 429 now (queue full, shutting down, or no room before max_wait ends: then
 * D's wait is raised to the earliest time room can come, for Retry-After).
 */
static int sl_req_hold(struct sl_request *req, struct sl_decision *d, bool force)
{
    struct sl_worker *w = req->w;
    const struct sl_hit *waiting = NULL;
    const struct sl_rule *r = d->rule;
    int64_t now = sl_now_ms(), wait_ms;

    if (w->stop || r == NULL || (r->on_limit != SL_ON_LIMIT_QUEUE && !force))
        return -1;
    for (size_t i = 0; i < req->check.nhits; i++)
        if (req->check.hits[i].rule == r)
            waiting = &req->check.hits[i];
    if (waiting == NULL)
        return -1;
    /* Room in a rate window comes back at a known time; a concurrency slot
     * freed anywhere wakes the first waiter (sl_waitlists_room); the poll
     * is only a safety net. */
    wait_ms = r->kind != SL_RULE_CONCURRENCY ? (d->wait_us + 999) / 1000
                                             : SL_QUEUE_POLL_MS;
    if (wait_ms < 1)
        wait_ms = 1;
    if (!req->is_held) {
        if (sl_queue_count(&w->queue, req->up->index) >= req->up->max_queue)
            return -1;
        req->held.upstream = req->up->index;
        req->held.check = &req->check;
        req->held.waiting = waiting;
        req->held.owner = req;
        req->held.deadline_ms = now + r->max_wait_us / 1000;
        atomic_store(&req->held.kicked, false);
        if (sl_queue_add(&w->queue, &req->held) != 0)
            return -1;
        req->is_held = true;
        if (r->kind == SL_RULE_RATE) {
            /* Those ahead in its bucket go first, `limit` per span: its
             * turn cannot come before this.  Say so now, not at max_wait. */
            int64_t span_ms = (r->span_us + 999) / 1000;
            int64_t earliest = now + wait_ms +
                               (int64_t)(req->held.ahead / r->limit) * span_ms;
            if (earliest > req->held.deadline_ms) {
                sl_req_unhold(req);
                d->wait_us = (earliest - now) * 1000;
                return -1;
            }
        } else if (r->kind == SL_RULE_PAUSE && now + wait_ms > req->held.deadline_ms) {
            sl_req_unhold(req);
            return -1;
        }
    } else {
        if (r->kind != SL_RULE_CONCURRENCY && now + wait_ms > req->held.deadline_ms)
            return -1;
        if (sl_queue_rewait(&w->queue, &req->held, waiting) != 0)
            return -1;
    }
    req->held.retry_at_ms = now + wait_ms;
    req->held.deciding = false;
    req->held.parked = false;
    req->last_deny = *d;
    {
        int64_t due = req->held.retry_at_ms < req->held.deadline_ms
                          ? req->held.retry_at_ms : req->held.deadline_ms;
        if (w->queue_next_ms < 0 || due < w->queue_next_ms)
            w->queue_next_ms = due;
    }
    return 0;
}

/* Answer a held call that has waited max_wait: reject mode's 429. */
static void sl_req_expire(struct sl_request *req, int64_t now)
{
    struct sl_decision d = req->last_deny;
    int64_t left = req->held.retry_at_ms - now;

    sl_req_unhold(req);
    d.verdict = SL_VERDICT_DENY;
    d.wait_us = (left > 0 ? left : 1) * 1000;
    sl_req_limited(req, &d);
    sl_req_resume(req);
}

/*
 * Ask the store again for the held calls that are due and first in their
 * bucket's wait list (process-wide arrival order); answer the overdue.  A
 * due call that is not first parks: the worker holding the call before it
 * wakes this one when that call leaves.
 */
void sl_request_pump(struct sl_worker *w, int64_t now)
{
    for (size_t u = 0; u < w->queue.nupstreams; u++) {
        struct sl_held *h, *next;

        for (h = w->queue.heads[u]; h != NULL; h = next) {
            struct sl_request *req = h->owner;

            next = h->next;
            if (h->deciding)
                continue;
            if (now >= h->deadline_ms) {
                sl_req_expire(req, now);
                continue;
            }
            if (!h->parked && !atomic_load(&h->kicked) && now < h->retry_at_ms)
                continue;
            if (!sl_queue_is_head(&w->queue, h)) {
                h->parked = true;
                continue;
            }
            h->parked = false;
            atomic_store(&h->kicked, false);
            h->deciding = true;
            req->deciding = true;
            if (sl_store_decide(w->store, &req->check, sl_req_decided, req) != 0) {
                req->deciding = false;
                h->deciding = false;
                sl_req_unhold(req);
                sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "store_unavailable",
                             "the limit store cannot decide this call", 1,
                             "store_error");
                sl_req_resume(req);
            }
        }
    }
}

void sl_request_release_held(struct sl_worker *w)
{
    for (struct sl_request *r = w->requests; r != NULL; r = r->next) {
        if (!r->is_held || r->held.deciding)
            continue;
        sl_req_unhold(r);
        sl_req_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down",
                     "sluice is shutting down; retry the call", 1, "shutdown");
        sl_req_resume(r);
    }
}

/*
 * A synthetic answer is ready at the first call.  Queueing it now makes MHD
 * close the connection (the body is unread), so when the body is absent or
 * small and already on its way, answer at the final call instead and keep
 * the connection alive.  A client that asked "Expect: 100-continue" is
 * answered at once and never sends its body.
 */
static enum MHD_Result sl_req_answer_early(struct sl_request *req)
{
    const char *cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                 "Content-Length");
    const char *te = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                 "Transfer-Encoding");
    const char *ex = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                 "Expect");

    if (te == NULL && ex == NULL &&
        (cl == NULL || strtoll(cl, NULL, 10) <= 65536))
        return MHD_YES;  /* sl_req_try_respond() queues it at the final call */
    return sl_req_queue_pending(req);
}

/* ---- request hygiene (RFC 9112) ---- */

struct sl_framing {
    unsigned hosts;                 /* Host header lines */
    unsigned te_lines;              /* Transfer-Encoding header lines */
    bool te_chunked;                /* ... and its value is "chunked" */
    unsigned cl_lines;
    bool cl_bad;                    /* not a plain decimal, or they differ */
    unsigned long long cl;
    const char *bad;                /* the first problem found, or NULL */
};

static bool sl_is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z') || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Trim spaces and tabs around [*s, *s + *n). */
static void sl_trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

static enum MHD_Result sl_framing_header(void *cls, enum MHD_ValueKind kind,
                                         const char *key, size_t key_size,
                                         const char *value, size_t value_size)
{
    struct sl_framing *f = cls;
    const char *v = value != NULL ? value : "";
    size_t vn = value != NULL ? value_size : 0;

    (void)kind;
    if (key_size == 0 || strlen(key) != key_size) {
        f->bad = "a header name is empty or holds a NUL byte";
        return MHD_NO;
    }
    for (size_t i = 0; i < key_size; i++) {
        if (!sl_is_tchar((unsigned char)key[i])) {
            f->bad = "a header name holds a character that is not allowed "
                     "(whitespace, a control character or a separator)";
            return MHD_NO;
        }
    }
    for (size_t i = 0; i < vn; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            f->bad = c == '\r' || c == '\n'
                         ? "a header value holds a bare CR or LF (line folding "
                           "or a broken line ending)"
                         : "a header value holds a NUL or control character";
            return MHD_NO;
        }
    }
    if (strcasecmp(key, "Host") == 0) {
        f->hosts++;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        /* Exactly "chunked": libmicrohttpd decodes chunks only then (it
         * keeps trailing whitespace), and anything else would reach us as
         * an unframed body. */
        f->te_lines++;
        f->te_chunked = vn == 7 && strncasecmp(v, "chunked", 7) == 0;
    } else if (strcasecmp(key, "Content-Length") == 0) {
        unsigned long long n = 0;
        sl_trim(&v, &vn);
        if (vn == 0 || vn > 19)
            f->cl_bad = true;
        for (size_t i = 0; i < vn && !f->cl_bad; i++) {
            if (v[i] < '0' || v[i] > '9')
                f->cl_bad = true;
            else
                n = n * 10 + (unsigned)(v[i] - '0');
        }
        if (f->cl_lines > 0 && n != f->cl)
            f->cl_bad = true;
        f->cl = n;
        f->cl_lines++;
    }
    return MHD_YES;
}

/* Past one line terminator as libmicrohttpd leaves it in place (CRLF or a
 * bare LF, overwritten with NULs) when the next line starts at NEXT. */
static bool sl_raw_terminator(const char *p, const char *next)
{
    return (next == p + 1 && p[0] == '\0') ||
           (next == p + 2 && p[0] == '\0' && p[1] == '\0');
}

struct sl_raw_walk {
    const char *pos;                /* where the next header line must start */
    const char *end;                /* end of the request head */
    bool bad;
};

static enum MHD_Result sl_raw_header(void *cls, enum MHD_ValueKind kind,
                                     const char *key, size_t key_size,
                                     const char *value, size_t value_size)
{
    struct sl_raw_walk *wk = cls;
    const char *p;

    (void)kind;
    /* The line starts right after the previous one's terminator. */
    if (!sl_raw_terminator(wk->pos, key) || value == NULL) {
        wk->bad = true;
        return MHD_NO;
    }
    /* The name, its colon (now a NUL), optional whitespace, the value. */
    p = key + key_size;
    if (p >= wk->end || *p != '\0') {
        wk->bad = true;
        return MHD_NO;
    }
    for (p++; p < value && (*p == ' ' || *p == '\t'); p++)
        ;
    if (p != value || value + value_size > wk->end) {
        wk->bad = true;
        return MHD_NO;
    }
    wk->pos = value + value_size;
    return MHD_YES;
}

/*
 * libmicrohttpd 0.9.75 reads a request head in place: the request line and
 * header lines stay where they arrived, their separators overwritten with
 * NULs, and every name and value points into that block.  Some of what it
 * tolerates is invisible in the strings it hands over: a NUL byte cuts a
 * target, method or value short (the rest is silently dropped), and a
 * folded (obs-fold) line is glued onto the header *name*.  Walking the
 * block, every byte must be accounted for by the strings and their
 * separators; anything left over is one of those and the request is
 * refused.  Returns NULL when the head is clean, or why it is not.  Only
 * for the libmicrohttpd release whose parser this describes.
 */
static const char *sl_req_check_raw_head(struct sl_request *req,
                                         const char *version)
{
    const union MHD_ConnectionInfo *ci;
    struct sl_raw_walk wk;
    const char *p, *start = req->method;
    size_t n;

    if (!req->w->raw_head_check || version == NULL || req->raw_uri == NULL)
        return NULL;
    ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (ci == NULL)
        return NULL;
    wk.end = start + ci->header_size;
    /* "METHOD" NUL [spaces] "target" NUL "version" */
    p = start + strlen(start);
    if (p >= wk.end || *p != '\0')
        return "the request line is malformed";
    for (p++; p < wk.end && *p == ' '; p++)
        ;
    if (p != req->raw_uri)
        return "the method holds a NUL byte";
    if (req->raw_uri + strlen(req->uri) != version - 1)
        return "the request target holds a NUL byte";
    wk.pos = version + strlen(version);
    wk.bad = false;
    MHD_get_connection_values_n(req->conn, MHD_HEADER_KIND, sl_raw_header, &wk);
    if (wk.bad)
        return "the request head holds a NUL byte, a folded (obs-fold) line "
               "or a malformed header line";
    /* The last line's terminator and the empty line, and nothing else. */
    n = (size_t)(wk.end - wk.pos);
    if (n < 2 || n > 4)
        return "the request head holds a NUL byte or a malformed line";
    for (p = wk.pos; p < wk.end; p++)
        if (*p != '\0')
            return "the request head holds a NUL byte or a malformed line";
    return NULL;
}

/*
 * Is the request framed beyond doubt, and its header block clean?  Returns
 * 0, or the status to answer (400, 501) with *WHY set; such an answer
 * closes the connection, since what follows on it cannot be trusted.
 */
static unsigned sl_req_check_framing(struct sl_request *req, const char *version,
                                     const char **why)
{
    struct sl_framing f = {0};

    if (strlen(req->method) == 0) {
        *why = "the request has no method";
        return MHD_HTTP_BAD_REQUEST;
    }
    for (const char *m = req->method; *m; m++) {
        if (!sl_is_tchar((unsigned char)*m)) {
            *why = "the method holds a character that is not allowed";
            return MHD_HTTP_BAD_REQUEST;
        }
    }
    if ((*why = sl_req_check_raw_head(req, version)) != NULL)
        return MHD_HTTP_BAD_REQUEST;
    MHD_get_connection_values_n(req->conn, MHD_HEADER_KIND, sl_framing_header, &f);
    if (f.bad != NULL) {
        *why = f.bad;
        return MHD_HTTP_BAD_REQUEST;
    }
    if (version != NULL && strcmp(version, "HTTP/1.0") != 0 && f.hosts != 1) {
        *why = f.hosts == 0 ? "an HTTP/1.1 request needs a Host header"
                            : "the request has more than one Host header";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.hosts > 1) {
        *why = "the request has more than one Host header";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.te_lines > 0 && f.cl_lines > 0) {
        *why = "the request has both Transfer-Encoding and Content-Length";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.te_lines > 1 || (f.te_lines == 1 && !f.te_chunked)) {
        *why = "sluice accepts only \"Transfer-Encoding: chunked\" request bodies";
        return MHD_HTTP_NOT_IMPLEMENTED;
    }
    if (f.cl_bad) {
        *why = "the request's Content-Length is not one decimal number";
        return MHD_HTTP_BAD_REQUEST;
    }
    return 0;
}

/* Answer STATUS now and close the connection: its framing is in doubt. */
static enum MHD_Result sl_req_refuse(struct sl_request *req, unsigned status,
                                     const char *error, const char *message)
{
    sl_req_error(req, status, error, message, 0, "bad_request");
    if (req->pending != NULL)
        MHD_add_response_header(req->pending, MHD_HTTP_HEADER_CONNECTION, "close");
    return sl_req_queue_pending(req);
}

/* First call: check, route, match, decide.  Returns what the handler returns. */
static enum MHD_Result sl_req_begin(struct sl_request *req, const char *version)
{
    const struct sl_config *c = req->w->proxy->config;
    const char *q = strchr(req->uri, '?');
    size_t plen = q ? (size_t)(q - req->uri) : strlen(req->uri);
    const char *rest, *why;
    size_t rest_len, canon_len;
    char *canon = NULL;
    char msg[256];
    struct sl_call call;
    bool trailing;
    unsigned status;
    int rc;

    req->phase = SL_PHASE_ACTIVE;
    status = sl_req_check_framing(req, version, &why);
    if (status != 0)
        return sl_req_refuse(req, status,
                             status == MHD_HTTP_NOT_IMPLEMENTED
                                 ? "unsupported_transfer_coding" : "bad_request",
                             why);
    for (const char *p = req->uri; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return sl_req_refuse(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                                 "the request target holds control characters "
                                 "or spaces");
        /* A fragment is never sent to a server: what a client put after
         * '#' would not be forwarded, yet could sway matching. */
        if (*p == '#')
            return sl_req_refuse(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                                 "the request target holds a fragment ('#')");
    }
    if (req->uri[0] != '/') {
        sl_req_error(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                     "sluice is a reverse proxy: the request target must be a "
                     "path starting with \"/\"", 0, "bad_request");
        return sl_req_answer_early(req);
    }
    if (plen > SL_PATTERN_MAX_PATH) {
        sl_req_error(req, MHD_HTTP_URI_TOO_LONG, "uri_too_long",
                     "the request path is longer than 8192 bytes", 0,
                     "bad_request");
        return sl_req_answer_early(req);
    }
    canon = malloc(plen + 2);
    if (canon == NULL)
        goto oom;
    /* The whole path, canonical: it must route where the raw one does, or
     * some server could read the target as another upstream's. */
    rc = sl_path_canonical(req->uri, plen, 0, canon, &canon_len, NULL);
    if (rc != SL_PATH_OK) {
        free(canon);
        sl_req_error(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                     sl_path_strerror(rc), 0, "bad_request");
        return sl_req_answer_early(req);
    }
    req->up = sl_route(c, req->uri, plen);
    if (sl_route(c, canon, canon_len) != req->up) {
        free(canon);
        req->up = NULL;
        sl_req_error(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                     "the path routes differently once decoded and normalized "
                     "(encoded or doubled slashes, backslashes or \";\" around "
                     "the prefix)", 0, "bad_request");
        return sl_req_answer_early(req);
    }
    if (req->up == NULL) {
        free(canon);
        snprintf(msg, sizeof(msg), "no upstream is configured for this path "
                 "(%.*s)", plen > 120 ? 120 : (int)plen, req->uri);
        sl_req_error(req, MHD_HTTP_NOT_FOUND, "no_route", msg, 0, "no_route");
        return sl_req_answer_early(req);
    }
    rest = sl_req_rest(req);
    rest_len = plen - (size_t)(rest - req->uri);
    rc = sl_path_canonical(rest, rest_len,
                           req->up->path_case_sensitive ? 0 : SL_PATH_FOLD_CASE,
                           canon, &canon_len, &trailing);
    if (rc != SL_PATH_OK) {
        free(canon);
        sl_req_error(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                     sl_path_strerror(rc), 0, "bad_request");
        return sl_req_answer_early(req);
    }
    call.method = req->method;
    call.path = canon;
    call.path_len = canon_len;
    call.header = sl_call_header;
    call.header_ctx = req->conn;
    call.trailing_slash = trailing;
    rc = sl_match(req->up, &call, &req->check);
    free(canon);
    if (rc != 0)
        goto oom;

    /* Held calls wait for one of this call's buckets: queue behind them. */
    {
        int64_t head_retry, now_ms = sl_now_ms();
        const struct sl_hit *blocked = sl_queue_blocks(&req->w->queue, &req->check,
                                                       &head_retry);
        if (blocked != NULL) {
            /* It waits at least as long as the first in line. */
            struct sl_decision d = {
                .verdict = SL_VERDICT_DENY, .rule = blocked->rule,
                .wait_us = head_retry > now_ms ? (head_retry - now_ms) * 1000 : 0};
            if (sl_req_hold(req, &d, false) == 0) {
                req->replay_headers = true;
                sl_req_suspend(req, SL_SUSP_HELD);
                return MHD_YES;
            }
            if (blocked->rule->on_limit == SL_ON_LIMIT_QUEUE) {
                /* Its turn cannot come in time, or the queue is full. */
                if (d.wait_us <= 0)
                    d.wait_us = SL_USEC_PER_SEC;
                sl_req_limited(req, &d);
                return sl_req_answer_early(req);
            }
        }
    }
    req->deciding = true;
    if (sl_store_decide(req->w->store, &req->check, sl_req_decided, req)
        != 0) {
        req->deciding = false;
        sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "store_unavailable",
                     "the limit store cannot decide this call", 1,
                     "store_error");
        return sl_req_answer_early(req);
    }
    if (req->deciding || req->is_held) {
        /* Suspended inside the headers call: after the resume MHD calls
         * the handler for the headers again before any body bytes. */
        req->replay_headers = true;
        sl_req_suspend(req, req->deciding ? SL_SUSP_DECIDE : SL_SUSP_HELD);
        return MHD_YES;
    }
    if (req->pending != NULL)
        return sl_req_answer_early(req);
    return MHD_YES;

oom:
    sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "out_of_memory",
                 "sluice is out of memory", 1, "out_of_memory");
    return sl_req_answer_early(req);
}

/* The store's answer.  May run inside sl_store_decide(). */
static void sl_req_decided(void *arg, const struct sl_decision *d,
                           struct sl_lease *lease)
{
    struct sl_request *req = arg;
    const struct sl_upstream_conf *up = req->up;
    char *url = NULL;

    req->deciding = false;
    req->held.deciding = false;
    req->lease = lease;
    req->committed = false;
    req->decided_us = sl_clock_monotonic(NULL);
    req->decision = *d;
    if (req->orphaned) {
        /* MHD finished with the connection while the store was deciding. */
        sl_req_release_lease(req);
        sl_req_free(req);
        return;
    }
    if (req->client_gone) {
        sl_req_resume(req);
        return;
    }
    switch (d->verdict) {
    case SL_VERDICT_DENY: {
        /* Queue mode holds; so does a call already held for a retry. */
        struct sl_decision dd = *d;
        if (sl_req_hold(req, &dd, req->is_held && req->retries > 0) == 0)
            break;
        sl_req_unhold(req);
        sl_req_limited(req, &dd);
        break;
    }
    case SL_VERDICT_UNAVAILABLE:
        sl_req_unhold(req);
        sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "limit_state_unavailable",
                     d->reason, 1, "store_error");
        break;
    case SL_VERDICT_ALLOW:
        if (req->is_held) {
            /* Released: the next held call of its bucket may fit too. */
            sl_req_unhold(req);
            req->w->queue_kick = true;
        }
        {
            const char *rest = sl_req_rest(req);
            bool empty = rest[0] == '\0' || rest[0] == '?';
            const char *base_path = strchr(strstr(up->url, "://") + 3, '/');
            /* "/leads" alone maps to the base URL, or "/" without a path. */
            if (asprintf(&url, "%s%s%s", up->url,
                         empty && base_path == NULL ? "/" : "", rest) < 0)
                url = NULL;
        }
        if (url == NULL || sl_req_start_transfer(req, url) != 0) {
            sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "out_of_memory",
                         "sluice could not start the upstream call", 1,
                         "out_of_memory");
        } else {
            req->outcome = "forwarded";
        }
        free(url);
        break;
    }
    if (req->is_held) {
        if (req->susp == SL_SUSP_DECIDE)
            req->susp = SL_SUSP_HELD;  /* stays suspended, body unread */
        return;
    }
    if (req->susp == SL_SUSP_DECIDE || req->susp == SL_SUSP_HELD)
        sl_req_resume(req);
}

/* ---- the response towards the client ---- */

static ssize_t sl_req_read_body(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sl_request *req = cls;
    size_t n;

    (void)pos;
    if (req->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    n = sl_buf_take(&req->down, buf, max);
    if (n > 0) {
        req->bytes_out += n;
        if (req->down_paused && sl_buf_fits(&req->down, SL_CURL_BUFSIZE)) {
            req->down_paused = false;
            sl_req_update_pause(req);
        }
        return (ssize_t)n;
    }
    if (req->xfer_done)
        return req->result == CURLE_OK ? MHD_CONTENT_READER_END_OF_STREAM
                                       : MHD_CONTENT_READER_END_WITH_ERROR;
    if (req->down_paused) {
        req->down_paused = false;
        sl_req_update_pause(req);
        if (sl_buf_len(&req->down) > 0)
            return (ssize_t)sl_buf_take(&req->down, buf, max);
    }
    sl_req_suspend(req, SL_SUSP_BODY);
    return 0;
}

static enum MHD_Result sl_req_respond(struct sl_request *req)
{
    const char *connection = NULL;
    struct MHD_Response *resp;
    bool is_head = strcmp(req->method, "HEAD") == 0;
    /* Never advertise room on the answer that says stop. */
    bool ours = req->decision.rule != NULL &&
                req->decision.rule->kind == SL_RULE_RATE && !req->signalled;
    bool theirs = false;
    enum MHD_Result rc;

    for (struct sl_hdr *h = req->hdrs; h; h = h->next) {
        if (h->name_len == 10 && strncasecmp(h->line, "Connection", 10) == 0)
            connection = h->value;
        if (h->name_len == 9 && strncasecmp(h->line, "RateLimit", 9) == 0) {
            long long r = sl_feedback_ratelimit_r(h->value);
            theirs = true;
            /* The upstream's own report wins when it is stricter than ours. */
            if (ours && r >= 0 && (unsigned long long)r <= req->decision.remaining)
                ours = false;
        }
    }
    if (req->xfer_done && req->result == CURLE_OK && !is_head) {
        resp = MHD_create_response_from_buffer(sl_buf_len(&req->down),
                                               req->down.data + req->down.rpos,
                                               MHD_RESPMEM_MUST_COPY);
        req->bytes_out = sl_buf_len(&req->down);
    } else {
        uint64_t size = req->content_length >= 0 ? (uint64_t)req->content_length
                                                 : MHD_SIZE_UNKNOWN;
        resp = MHD_create_response_from_callback(size, 32 * 1024,
                                                 sl_req_read_body, req, NULL);
    }
    if (resp == NULL)
        return MHD_NO;
    for (struct sl_hdr *h = req->hdrs; h; h = h->next) {
        char save = h->line[h->name_len];
        if (sl_header_is_hop_by_hop(h->line, h->name_len) ||
            sl_header_connection_lists(connection, h->line, h->name_len))
            continue;
        if (ours && ((h->name_len == 9 && strncasecmp(h->line, "RateLimit", 9) == 0) ||
                     (h->name_len == 16 &&
                      strncasecmp(h->line, "RateLimit-Policy", 16) == 0)))
            continue;
        h->line[h->name_len] = '\0';
        if (MHD_add_response_header(resp, h->line, h->value) != MHD_YES)
            sl_debug("upstream %s: header %s not relayed", req->up->name, h->line);
        h->line[h->name_len] = save;
    }
    if (ours)
        sl_respond_ratelimit_headers(resp, &req->decision);
    else if (req->signalled && !theirs)
        sl_respond_pause_headers(resp, req->signal_pause_us);
    rc = MHD_queue_response(req->conn, (unsigned)req->status, resp);
    MHD_destroy_response(resp);
    if (rc != MHD_YES) {
        /* MHD could not take it (its per-connection memory): close rather
         * than leave the client without an answer it can trust. */
        sl_warn("upstream %s: its response could not be relayed (headers too "
                "large for the connection)", req->up->name);
        return MHD_NO;
    }
    req->queued = true;
    req->status_sent = (unsigned)req->status;
    return rc;
}

/* ---- what the provider says: limit signals and usage reports ---- */

static const char *sl_resp_header(const struct sl_request *req, const char *name)
{
    size_t len = strlen(name);

    for (const struct sl_hdr *h = req->hdrs; h != NULL; h = h->next)
        if (h->name_len == len && strncasecmp(h->line, name, len) == 0)
            return h->value;
    return NULL;
}

/* sl_header_fn over the upstream's response headers. */
static const char *sl_resp_header_cb(void *ctx, const char *name)
{
    return sl_resp_header(ctx, name);
}

static bool sl_method_idempotent(const char *m)
{
    static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT",
                                       "DELETE", NULL};
    for (const char *const *i = idem; *i; i++)
        if (strcmp(*i, m) == 0)
            return true;
    return false;
}

enum sl_feedback { SL_FEEDBACK_DONE, SL_FEEDBACK_WAIT, SL_FEEDBACK_RETRY };

/*
 * The response headers are in: follow the provider's usage reports, and
 * pause the upstream if the response says "over the limit".  WAIT: a
 * signal needs the start of the body first.  RETRY: hold the call and send
 * it again after the pause (retry_on_limit).
 */
static enum sl_feedback sl_req_feedback(struct sl_request *req, int64_t *pause_out)
{
    const struct sl_upstream_conf *up = req->up;
    const char *ra_text = sl_resp_header(req, "Retry-After");
    int64_t ra = sl_feedback_retry_after_us(ra_text, time(NULL)), pause = -1;
    const char *why = NULL;

    for (size_t i = 0; i < up->nsignals; i++) {
        const struct sl_limit_signal *sg = &up->signals[i];
        if (sg->status != (unsigned)req->status)
            continue;
        if (sg->body_contains != NULL) {
            size_t have = sl_buf_len(&req->down);
            if (!req->xfer_done && have < SL_SIGNAL_PEEK) {
                req->want_body = true;
                return SL_FEEDBACK_WAIT;
            }
            if (have == 0 || memmem(req->down.data + req->down.rpos,
                                    have < SL_SIGNAL_PEEK ? have : SL_SIGNAL_PEEK,
                                    sg->body_contains, strlen(sg->body_contains)) == NULL)
                continue;
        }
        pause = ra >= 0 ? ra : sg->pause_us;
        why = "a configured limit signal";
        break;
    }
    req->want_body = false;
    req->feedback_done = true;

    for (size_t i = 0; i < req->check.nhits; i++) {
        const struct sl_rule *r = req->check.hits[i].rule;
        long long left;
        if (r->sync == SL_SYNC_NONE)
            continue;
        left = sl_feedback_remaining(r->sync, sl_resp_header_cb, req);
        if (left == SL_FEEDBACK_MALFORMED) {
            req->w->malformed_reports++;
            if (sl_now_ms() - req->w->malformed_logged_ms > 10000) {
                req->w->malformed_logged_ms = sl_now_ms();
                sl_warn("upstream %s: ignored a malformed usage report for rule "
                        "\"%s\" (%lu on this worker so far)", up->name, r->name,
                        req->w->malformed_reports);
            }
        } else if (left >= 0) {
            const struct sl_hit *hit = &req->check.hits[i];
            int64_t age = req->sent_us > 0 ? sl_clock_monotonic(NULL) - req->sent_us : 0;
            sl_store_sync(req->w->store, up, hit, (uint64_t)left, age);
            /* A report may give room back: the first waiter asks again. */
            sl_waitlists_room(req->w->proxy->waitlists, hit->rule, hit->key,
                              hit->key_len);
        }
    }

    if (pause < 0 && (req->status == 429 || req->status == 503) && ra >= 0) {
        pause = ra;
        why = "Retry-After";
    } else if (pause < 0 && req->status == 429) {
        pause = up->default_pause_us;
        why = "429 without Retry-After";
    }
    if (pause <= 0)
        return SL_FEEDBACK_DONE;
    req->signalled = true;
    req->signal_pause_us = pause;
    sl_store_pause(req->w->store, up, pause);
    sl_warn("upstream %s signalled a limit (status %ld, %s): calls paused for %.1fs",
            up->name, req->status, why, (double)pause / SL_USEC_PER_SEC);
    *pause_out = pause;
    if (up->retry_on_limit && req->retries < 3 && req->up_done &&
        (!req->has_body || req->saved_ok) &&
        (up->retry_unsafe || sl_method_idempotent(req->method)) &&
        pause <= up->max_wait_us &&
        sl_queue_count(&req->w->queue, up->index) < up->max_queue)
        return SL_FEEDBACK_RETRY;
    return SL_FEEDBACK_DONE;
}

/* Drop the signal response and hold the call until the pause is over. */
static enum MHD_Result sl_req_retry(struct sl_request *req, int64_t pause)
{
    struct sl_decision d = {.verdict = SL_VERDICT_DENY,
                            .rule = &req->up->pause_rule, .wait_us = pause};

    sl_req_abort_transfer(req);
    while (req->hdrs != NULL) {
        struct sl_hdr *h = req->hdrs;
        req->hdrs = h->next;
        free(h);
    }
    req->hdrs_tail = &req->hdrs;
    req->down.rpos = req->down.wpos = 0;
    req->headers_ready = false;
    req->xfer_done = false;
    req->down_paused = false;
    req->up_paused = false;
    req->result = CURLE_OK;
    req->status = 0;
    req->content_length = -1;
    req->feedback_done = false;
    req->errbuf[0] = '\0';
    curl_slist_free_all(req->req_headers);
    req->req_headers = NULL;
    req->hdr_bytes = 0;
    req->resp_cl_lines = req->resp_te_lines = 0;
    req->resp_cl_bad = false;
    req->resp_error = NULL;
    req->signalled = false;
    sl_req_release_lease(req);
    req->upload.rpos = req->upload.wpos = 0;
    if (req->saved_len > 0 && sl_buf_put(&req->upload, req->saved, req->saved_len)
        != req->saved_len)
        return MHD_NO;
    req->retries++;
    if (sl_req_hold(req, &d, true) != 0)
        return MHD_NO;
    sl_info("upstream %s: call held for a retry after the pause (retry %d)",
            req->up->name, req->retries);
    sl_req_suspend(req, SL_SUSP_HELD);
    return MHD_YES;
}

/* Body complete (or never expected): answer now or wait for the upstream. */
static enum MHD_Result sl_req_try_respond(struct sl_request *req)
{
    if (req->queued)
        return MHD_YES;
    if (req->pending != NULL)
        return sl_req_queue_pending(req);
    if (req->headers_ready && !req->feedback_done) {
        int64_t pause = 0;
        switch (sl_req_feedback(req, &pause)) {
        case SL_FEEDBACK_WAIT:
            sl_req_suspend(req, SL_SUSP_HEADERS);
            return MHD_YES;
        case SL_FEEDBACK_RETRY:
            return sl_req_retry(req, pause);
        case SL_FEEDBACK_DONE:
            break;
        }
    }
    if (req->headers_ready)
        return sl_req_respond(req);
    if (req->xfer_done || req->easy == NULL)
        return MHD_NO;  /* no transfer and no answer to give: close */
    sl_req_suspend(req, SL_SUSP_HEADERS);
    return MHD_YES;
}

static enum MHD_Result sl_req_upload(struct sl_request *req, const char *data,
                                     size_t *size)
{
    /* Nothing to forward to (answered already, or the upstream finished):
     * read and drop the body so the connection stays usable. */
    if (req->easy == NULL || req->xfer_done || req->pending != NULL) {
        *size = 0;
        return MHD_YES;
    }
    while (*size > 0) {
        size_t n = sl_buf_put(&req->upload, data, *size);
        if (n == 0)
            break;
        if (req->saved_ok) {
            /* Keep a copy for a retry after a pause; big bodies are not. */
            char *s = req->saved_len + n <= SL_SAVE_MAX
                          ? realloc(req->saved, req->saved_len + n) : NULL;
            if (s == NULL) {
                free(req->saved);
                req->saved = NULL;
                req->saved_len = 0;
                req->saved_ok = false;
            } else {
                memcpy(s + req->saved_len, data, n);
                req->saved = s;
                req->saved_len += n;
            }
        }
        data += n;
        *size -= n;
        if (req->up_paused) {
            req->up_paused = false;
            sl_req_update_pause(req);  /* may drain the buffer at once */
        }
    }
    if (*size > 0)
        sl_req_suspend(req, SL_SUSP_UPLOAD);
    return MHD_YES;
}

/* ---- MHD callbacks ---- */

void *sl_request_uri_log(void *cls, const char *uri, struct MHD_Connection *c)
{
    struct sl_worker *w = cls;
    struct sl_request *req = calloc(1, sizeof(*req));

    if (req == NULL)
        return NULL;
    req->uri = strdup(uri);
    if (req->uri == NULL) {
        free(req);
        return NULL;
    }
    req->w = w;
    req->conn = c;
    req->raw_uri = uri;
    req->start_ms = sl_now_ms();
    {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        req->sconn = ci != NULL ? ci->socket_context : NULL;
        if (req->sconn != NULL)
            req->sconn->req = req;
        /* The request line is in: the headers have header_timeout. */
        sl_conn_deadline(w, req->sconn, SL_DL_HEADERS);
    }
    req->content_length = -1;
    req->next = w->requests;
    if (w->requests != NULL)
        w->requests->prev = req;
    w->requests = req;
    w->nrequests++;
    return req;
}

enum MHD_Result sl_request_handle(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct sl_request *req = *con_cls;

    (void)cls;
    (void)url;
    if (req == NULL)
        return MHD_NO;  /* out of memory when the request line came in */
    if (req->phase == SL_PHASE_NEW) {
        req->method = method;
        req->conn = conn;
        sl_conn_deadline(req->w, req->sconn, SL_DL_NONE);
        return sl_req_begin(req, version);
    }
    if (req->client_gone)
        return MHD_NO;
    if (req->replay_headers && *upload_data_size == 0) {
        /* The repeated headers call: answer a denial now (or after a small
         * body), or let the body flow towards the started transfer. */
        req->replay_headers = false;
        if (req->pending != NULL)
            return sl_req_answer_early(req);
        if (req->easy == NULL && !req->xfer_done)
            return MHD_NO;
        return MHD_YES;
    }
    req->replay_headers = false;
    if (*upload_data_size > 0)
        return sl_req_upload(req, upload_data, upload_data_size);
    if (!req->up_done) {
        req->up_done = true;
        if (req->up_paused) {
            req->up_paused = false;
            sl_req_update_pause(req);
        }
    }
    return sl_req_try_respond(req);
}

static void sl_req_free(struct sl_request *req)
{
    struct sl_worker *w = req->w;

    if (req->prev != NULL)
        req->prev->next = req->next;
    else
        w->requests = req->next;
    if (req->next != NULL)
        req->next->prev = req->prev;
    w->nrequests--;
    while (req->hdrs != NULL) {
        struct sl_hdr *h = req->hdrs;
        req->hdrs = h->next;
        free(h);
    }
    if (req->pending != NULL)
        MHD_destroy_response(req->pending);
    curl_slist_free_all(req->req_headers);
    sl_check_clear(&req->check);
    sl_buf_free(&req->upload);
    sl_buf_free(&req->down);
    free(req->saved);
    free(req->uri);
    free(req);
}

void sl_request_completed(void *cls, struct MHD_Connection *conn,
                          void **con_cls, enum MHD_RequestTerminationCode toe)
{
    struct sl_request *req = *con_cls;
    struct sl_worker *w = cls;
    const char *q;

    (void)conn;
    if (req == NULL)
        return;
    *con_cls = NULL;
    if (req->sconn != NULL && req->sconn->req == req) {
        req->sconn->req = NULL;
        /* Keep-alive: the next request line within client_timeout. */
        sl_conn_deadline(w, req->sconn, SL_DL_IDLE);
    }
    req->sconn = NULL;
    sl_req_abort_transfer(req);
    sl_req_unhold(req);
    sl_req_release_lease(req);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && req->outcome != NULL &&
        strcmp(req->outcome, "forwarded") == 0)
        req->outcome = "client_gone";
    if (w->proxy->config->access_log && req->phase != SL_PHASE_NEW) {
        q = strchr(req->uri, '?');
        sl_info("access upstream=%s method=%s path=%.*s status=%u outcome=%s "
                "rule=%s bytes_out=%llu ms=%lld",
                req->up ? req->up->name : "-", req->method ? req->method : "-",
                (int)(q ? q - req->uri : (long)strlen(req->uri)), req->uri,
                req->status_sent, req->outcome ? req->outcome : "-",
                req->decision.verdict == SL_VERDICT_DENY && req->decision.rule
                    ? req->decision.rule->name : "-",
                (unsigned long long)req->bytes_out,
                (long long)(sl_now_ms() - req->start_ms));
    }
    if (req->deciding) {
        /* The store still holds a pointer: its callback frees the lease. */
        req->orphaned = true;
        return;
    }
    sl_req_free(req);
}
