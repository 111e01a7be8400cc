/*
 * sl_relay — the upstream exchange of an allowed call.
 *
 * The transfer starts as soon as the call is allowed, before the request
 * body has been read.  Body bytes go through a bounded buffer that
 * libcurl's read callback drains: when it is full the MHD connection is
 * suspended (curl's read callback resumes it); when it is empty curl's send
 * side is paused (new bytes unpause it).  The response streams through a
 * second bounded buffer the other way: curl's write callback fills it,
 * MHD's content reader drains it (suspending the connection when empty).
 * When that buffer is full, the rest of the response goes to a spool: an
 * unlinked temporary file of at most `response_spool` bytes, read back in
 * order after the buffer.  So a client that reads slowly, or not at all,
 * does not keep the upstream exchange open: the transfer ends when the
 * provider has sent its answer, and the call's concurrency slots are free
 * then (as NGINX's proxy_buffering does with its temporary files).  Only
 * when the spool is full too (or off, or unusable) is curl's receive side
 * paused until the client catches up.  A response that completed before
 * it was queued, all of it in memory, is handed to MHD as one buffer.
 *
 * libcurl's pre-request callback marks the moment the request is written
 * to a ready connection (after connect and TLS): the store logs the call's
 * reservations then, on the clock the provider counts by.  The response
 * head is checked as it arrives (ambiguous framing, oversized headers:
 * 502), and before it is relayed the provider's feedback is read: usage
 * reports (sync), limit signals that pause the upstream, and with
 * retry_on_limit the call may be held and sent again after the pause.
 * What the call holds in the store is given back when the transfer ends:
 * the provider is done with it, whatever the client still does.  Just
 * before, a rule with "settle" takes the cost the provider says the call
 * had: from a response header, or from the first 64 KiB of the body,
 * copied as they pass to the client (never held back for it).
 *
 * The easy handle is owned by the request while it is in the multi, and
 * goes back to the worker's pool when the transfer ends.
 */
#include "sl_request.h"
#include "sl_auth.h"

#include "sl_duration.h"
#include "sl_feedback.h"
#include "sl_history.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_time.h"

#include <errno.h>
#include <jansson.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static enum MHD_Result sl_req_respond(struct sl_request *req);
static const char *sl_resp_header_cb(void *ctx, const char *name, unsigned nth);

/* ---- buffers ---- */

size_t sl_pipe_len(const struct sl_pipe *b) { return b->wpos - b->rpos; }

/* Room for N more bytes within SL_PIPE_MAX (an empty buffer always fits). */
static bool sl_pipe_fits(const struct sl_pipe *b, size_t n)
{
    return sl_pipe_len(b) == 0 || sl_pipe_len(b) + n <= SL_PIPE_MAX;
}

/* Append up to N bytes; returns how many were taken. */
static size_t sl_pipe_put(struct sl_pipe *b, const char *src, size_t n)
{
    size_t len = sl_pipe_len(b);
    size_t room = len >= SL_PIPE_MAX ? 0 : SL_PIPE_MAX - len;

    if (len == 0)
        room = n > SL_PIPE_MAX ? n : SL_PIPE_MAX;
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

static size_t sl_pipe_take(struct sl_pipe *b, char *dst, size_t max)
{
    size_t n = sl_pipe_len(b);

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

void sl_pipe_free(struct sl_pipe *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ---- spool: the response beyond the buffer ---- */

/* Bytes of the response in the spool not yet relayed? */
static bool sl_spool_unread(const struct sl_request *req)
{
    return req->spool_open && req->spool_rpos < req->spool_wpos;
}

/* An unlinked file in TMPDIR (or /tmp): O_TMPFILE, or where the file
 * system lacks it, a named file removed at once.  -1 on failure. */
static int sl_spool_open_file(void)
{
    const char *dir = getenv("TMPDIR");
    char path[4096];
    int fd;

    if (dir == NULL || *dir == '\0')
        dir = "/tmp";
    fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    if ((size_t)snprintf(path, sizeof(path), "%s/sluice-spool-XXXXXX", dir) >=
        sizeof(path))
        return -1;
    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0)
        unlink(path);
    return fd;
}

/*
 * Append N bytes of the response to REQ's spool, opening it on first use.
 * Returns true when all were taken; false when the spool is off, would
 * pass `response_spool`, or cannot be written (the caller then pauses
 * curl, as without a spool).  Blocking file I/O on the loop's thread, as
 * NGINX's temporary files are: writes land in the page cache.
 */
static bool sl_spool_put(struct sl_request *req, const char *data, size_t n)
{
    static atomic_bool warned;
    uint64_t max = req->config != NULL ? req->config->response_spool : 0;
    size_t done = 0;

    if (max == 0 || req->spool_failed || req->spool_wpos + n > max)
        return false;
    if (!req->spool_open) {
        req->spool_fd = sl_spool_open_file();
        if (req->spool_fd < 0) {
            req->spool_failed = true;
            if (!atomic_exchange(&warned, true))
                sl_warn("cannot open a response spool file in %s (%s): slow "
                        "clients hold their upstream calls open until they read",
                        getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", strerror(errno));
            return false;
        }
        req->spool_open = true;
        req->spool_rpos = req->spool_wpos = 0;
    }
    while (done < n) {
        ssize_t k = pwrite(req->spool_fd, data + done, n - done,
                           (off_t)(req->spool_wpos + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (!atomic_exchange(&warned, true))
                sl_warn("cannot write the response spool file (%s): slow "
                        "clients hold their upstream calls open until they read",
                        k < 0 ? strerror(errno) : "no progress");
            return false;  /* nothing counted: curl delivers them again */
        }
        done += (size_t)k;
    }
    req->spool_wpos += n;
    return true;
}

/* Up to MAX bytes from the spool into DST: how many, or -1 on a read
 * error.  A spool read to its end starts again at offset 0 (and gives its
 * disk space back). */
static ssize_t sl_spool_take(struct sl_request *req, char *dst, size_t max)
{
    uint64_t left = req->spool_wpos - req->spool_rpos;
    ssize_t k;

    if (max > left)
        max = (size_t)left;
    do
        k = pread(req->spool_fd, dst, max, (off_t)req->spool_rpos);
    while (k < 0 && errno == EINTR);
    if (k <= 0)
        return -1;
    req->spool_rpos += (uint64_t)k;
    if (req->spool_rpos == req->spool_wpos) {
        req->spool_rpos = req->spool_wpos = 0;
        if (ftruncate(req->spool_fd, 0) != 0)
            sl_debug("response spool: ftruncate: %s", strerror(errno));
    }
    return k;
}

void sl_req_spool_close(struct sl_request *req)
{
    if (!req->spool_open)
        return;
    close(req->spool_fd);
    req->spool_open = false;
    req->spool_rpos = req->spool_wpos = 0;
}

/* ---- upstream transfer: libcurl callbacks ---- */

/* Record a Content-Length value of the upstream's response. */
static void sl_resp_content_length(struct sl_request *req, const char *v)
{
    int64_t n = -1;

    if (sl_http_content_length(v, strlen(v), &n) != 0 ||
        (req->resp_cl_lines > 0 && n != req->content_length))
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
 *
 * libcurl calls this again for the same transfer only to send the request
 * a second time: when a reused keep-alive connection closed before any
 * byte of the answer came (Curl_retry_request), libcurl sends it again on
 * a fresh connection, up to five times.  The provider may well have read
 * and counted the first one (a provider that counts a call and then drops
 * the connection), so a resend is a second call it counts, one the store
 * never granted.  It is refused here: the transfer ends with
 * CURLE_ABORTED_BY_CALLBACK before anything is written, and the client
 * gets 502 saying the call was sent once and not answered.  Whether to
 * send it again is the client's call (its retry asks the store like any
 * call).  The same holds for every method, with or without a body.
 */
/*
 * The call is being sent: count it in the usage history of every rate rule
 * it falls under (once per rule, however many of its keys it is charged
 * in), stamped on the store's clock.  Both stores share this one feed.
 */
static void sl_req_record_history(struct sl_request *req)
{
    struct sl_history *h = req->w->proxy->history;
    int64_t now_ms;

    if (h == NULL)
        return;
    now_ms = sl_store_wall(req->w->store) / 1000;
    for (size_t i = 0; i < req->check.nhits; i++) {
        const struct sl_rule *rule = req->check.hits[i].rule;
        bool seen = false;
        if (rule->kind != SL_RULE_RATE)
            continue;
        for (size_t j = 0; j < i && !seen; j++)
            seen = req->check.hits[j].rule == rule;
        if (!seen)
            sl_history_add(h, rule->metric_slot, req->check.app, now_ms, 1);
    }
}

static int sl_curl_prereq(void *ud, char *primary_ip, char *local_ip,
                          int primary_port, int local_port)
{
    struct sl_request *req = ud;
    int64_t now = sl_time_mono_us();

    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    if (req->committed) {
        req->resend_refused = true;
        return CURL_PREREQFUNC_ABORT;
    }
    if (req->lease != NULL &&
        now - req->decided_us > req->up->connect_timeout_us + SL_USEC_PER_SEC) {
        req->resp_error = "the upstream connection took longer than "
                          "connect_timeout; the call was not sent";
        return CURL_PREREQFUNC_ABORT;
    }
    /* Just before the commit: every store stamps the call's own log entry
     * no earlier than this, so a report's sync finds it among the calls
     * from this moment on, and takes it off (sl_store_sync). */
    req->sent_us = sl_time_mono_us();
    sl_store_commit(req->w->store, req->lease);
    req->committed = true;
    sl_req_record_history(req);
    return CURL_PREREQFUNC_OK;
}

/* Bytes of a response body read for "settle": "graphql-cost". */
#define SL_SETTLE_PEEK (64 * 1024)

static size_t sl_curl_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct sl_request *req = ud;
    size_t n = size * nmemb;

    if (req->client_gone)
        return 0;  /* aborts the transfer */
    if (req->scan_body) {
        /* A copy of the body's start for the settlement; the bytes go on
         * to the client whatever happens to it. */
        size_t room = SL_SETTLE_PEEK - sl_buf_len(&req->scan);
        if (room > 0)
            (void)sl_buf_add(&req->scan, data, n < room ? n : room);
        req->scan_total += n;
    }
    if (!sl_spool_unread(req) && sl_pipe_fits(&req->down, n)) {
        if (sl_pipe_put(&req->down, data, n) != n)
            return 0;  /* out of memory: abort rather than corrupt the body */
    } else if (!sl_spool_put(req, data, n)) {
        /* Once bytes wait in the spool, newer ones follow them there. */
        req->down_paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (req->susp == SL_SUSP_BODY ||
        (req->want_body && sl_pipe_len(&req->down) >= SL_SIGNAL_PEEK))
        sl_req_resume(req);
    return n;
}

static size_t sl_curl_read(char *dst, size_t size, size_t nitems, void *ud)
{
    struct sl_request *req = ud;
    size_t n = sl_pipe_take(&req->upload, dst, size * nitems);

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
void sl_req_update_pause(struct sl_request *req)
{
    int mask = (req->up_paused ? CURLPAUSE_SEND : 0) |
               (req->down_paused ? CURLPAUSE_RECV : 0);

    if (req->easy != NULL && !req->xfer_done) {
        curl_easy_pause(req->easy, mask);
        /* libcurl 7.88 does not always re-arm the multi timer when a
         * transfer is unpaused from outside its callbacks: drive it in this
         * loop pass ourselves. */
        if (mask != (CURLPAUSE_SEND | CURLPAUSE_RECV))
            sl_worker_drive_curl(req->w);
    }
}

/* ---- waiting for the store before the client hears ---- */

/*
 * What a call's answer tells its client must be true for the client's next
 * call, wherever that is decided: a usage report or pause the answer
 * carried is in force, and the call's concurrency slots are free.  With a
 * shared store those writes land one round trip later, so the answer (or,
 * once streaming, its last byte) waits for the store's word, counted on a
 * ticket (struct sl_settle).
 */

/* sl_store_done_cb: one of the store's words on the ticket has come.  The
 * last lets the held answer go. */
static void sl_req_settled(void *arg)
{
    struct sl_settle *t = arg;
    struct sl_request *req = t->req;

    SL_ASSERT(t->pending > 0);
    if (--t->pending > 0)
        return;
    free(t);
    if (req == NULL)
        return;
    req->settle = NULL;
    if (req->susp == SL_SUSP_SETTLE)
        sl_req_resume(req);
}

/* Before asking the store for a word: REQ's ticket (made on first use),
 * counting one more, or NULL (out of memory: the answer is then not held). */
static struct sl_settle *sl_req_expect(struct sl_request *req)
{
    if (req->settle == NULL) {
        req->settle = calloc(1, sizeof(*req->settle));
        if (req->settle != NULL)
            req->settle->req = req;
    }
    if (req->settle != NULL)
        req->settle->pending++;
    return req->settle;
}

/* What the store is to tell when T's word comes (nothing without T). */
static sl_store_done_cb sl_req_tell(const struct sl_settle *t)
{
    return t != NULL ? sl_req_settled : NULL;
}

/* After asking: TOLD is the store's answer (0: in force already, it will
 * not tell), so the count sl_req_expect raised is taken back. */
static void sl_req_expected(struct sl_settle *t, int told)
{
    if (t != NULL && told == 0)
        t->pending--;
}

/* Is the answer to wait for the store (the ticket has words
 * outstanding)?  A ticket with none left is dropped. */
static bool sl_req_settling(struct sl_request *req)
{
    if (req->settle == NULL)
        return false;
    if (req->settle->pending > 0)
        return true;
    free(req->settle);
    req->settle = NULL;
    return false;
}

/*
 * Give back what the call holds in the store: its concurrency slots, and
 * its rate reservations if the request was never sent.  Held calls waiting
 * for those buckets ask again at once.
 */
static void sl_req_give_back(struct sl_request *req, bool wait)
{
    struct sl_worker *w = req->w;
    struct sl_settle *t;

    if (req->lease == NULL)
        return;
    t = wait ? sl_req_expect(req) : NULL;
    sl_req_expected(t, sl_store_release_then(w->store, req->lease, sl_req_tell(t), t));
    req->lease = NULL;
    for (size_t i = 0; i < req->check.nhits; i++) {
        const struct sl_hit *h = &req->check.hits[i];
        if (h->rule->kind == SL_RULE_CONCURRENCY ||
            (h->rule->kind == SL_RULE_RATE && !req->committed))
            sl_waitlists_room(w->proxy->waitlists, h->rule, h->key, h->key_len);
    }
    w->queue_kick = true;
}

void sl_req_release_lease(struct sl_request *req)
{
    sl_req_give_back(req, false);
}

/* Does REQ hold concurrency slots (its lease, once allowed)? */
static bool sl_req_holds_slots(const struct sl_request *req)
{
    if (req->lease == NULL)
        return false;
    for (size_t i = 0; i < req->check.nhits; i++)
        if (req->check.hits[i].rule->kind == SL_RULE_CONCURRENCY)
            return true;
    return false;
}

void sl_req_abort_transfer(struct sl_request *req)
{
    if (req->easy == NULL)
        return;
    curl_multi_remove_handle(req->w->multi, req->easy);
    sl_worker_put_easy(req->w, req->easy, req->easy_url, sl_easy_tag(req->up));
    req->easy = NULL;
    req->xfer_done = true;
    if (req->sent_us > 0) {
        req->upstream_us = sl_time_mono_us() - req->sent_us;
        sl_hist_observe(&req->w->metrics.latency[req->up->metric_id],
                        sl_hist_latency_bounds, req->upstream_us);
    }
    req->result = CURLE_ABORTED_BY_CALLBACK;
    sl_req_release_lease(req);
}

/* A whole number of at most 15 digits at S (after spaces), or -1. */
static long long sl_settle_number(const char *s, size_t len)
{
    long long v = 0;
    size_t i = 0, digits = 0;

    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    for (; i < len && s[i] >= '0' && s[i] <= '9' && digits < 15; i++, digits++)
        v = v * 10 + (s[i] - '0');
    if (digits == 0 || (i < len && s[i] >= '0' && s[i] <= '9'))
        return -1;
    return v;
}

/*
 * What the provider says the call cost in rule R, or -1: a response
 * header's value, or extensions.cost.actualQueryCost of a JSON body.  A
 * body that fitted the peek is parsed whole; one that did not is searched
 * for the key's last occurrence in its first SL_SETTLE_PEEK bytes (a
 * provider puts extensions after data; a longer body may not say it
 * there, and the estimate then stands).
 */
static long long sl_req_actual_cost(struct sl_request *req, const struct sl_rule *r)
{
    static const char key[] = "\"actualQueryCost\"";
    const char *body = sl_buf_str(&req->scan), *p, *last = NULL;
    size_t len = sl_buf_len(&req->scan);

    if (r->settle == SL_SETTLE_HEADER) {
        const char *v = sl_resp_header_cb(req, r->settle_header, 0);
        size_t vlen;
        if (v == NULL)
            return -1;
        /* Digits only, nothing after them: a cost is never guessed. */
        vlen = strlen(v);
        while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
            vlen--;
        if (vlen == 0 || strspn(v, " \t0123456789") < vlen ||
            strcspn(v, "0123456789") + strspn(v + strcspn(v, "0123456789"), "0123456789") != vlen)
            return -1;
        return sl_settle_number(v, vlen);
    }
    if (len == 0)
        return -1;
    if (req->scan_total == len) {
        json_t *j = json_loadb(body, len, 0, NULL);
        json_t *c = json_object_get(json_object_get(json_object_get(j, "extensions"),
                                                    "cost"), "actualQueryCost");
        long long n = json_is_integer(c) && json_integer_value(c) >= 0
                          ? (long long)json_integer_value(c) : -1;
        json_decref(j);
        return n;
    }
    for (p = body; (p = memmem(p, len - (size_t)(p - body), key, sizeof(key) - 1)) != NULL;
         p += sizeof(key) - 1)
        last = p;
    if (last == NULL)
        return -1;
    p = last + sizeof(key) - 1;
    while (p < body + len && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    if (p >= body + len || *p != ':')
        return -1;
    return sl_settle_number(p + 1, len - (size_t)(p + 1 - body));
}

/* The call was answered: each rule with "settle" takes the cost the
 * provider says (at most the rule's limit), once, before the lease goes;
 * the end of the answer waits on REQ's ticket until the store has it. */
static void sl_req_settle_costs(struct sl_request *req)
{
    if (req->lease == NULL || !req->committed || !req->headers_ready)
        return;
    for (size_t i = 0; i < req->check.nhits; i++) {
        const struct sl_hit *h = &req->check.hits[i];
        long long actual;
        if (h->rule->settle == SL_SETTLE_NONE)
            continue;
        actual = sl_req_actual_cost(req, h->rule);
        if (actual < 0)
            continue;
        if ((unsigned long long)actual > h->rule->limit)
            actual = (long long)h->rule->limit;
        /* The answer's end waits until the correction is in force. */
        struct sl_settle *t = sl_req_expect(req);
        sl_req_expected(t, sl_store_settle_then(req->w->store, req->lease, h,
                                                (uint64_t)actual, sl_req_tell(t), t));
    }
}

void sl_request_transfer_done(struct sl_request *req, CURLcode result)
{
    char msg[CURL_ERROR_SIZE + 512], sent[CURL_ERROR_SIZE + 256];
    const char *q = strchr(req->uri, '?');
    int plen = (int)(q ? q - req->uri : (long)strlen(req->uri));

    curl_multi_remove_handle(req->w->multi, req->easy);
    sl_worker_put_easy(req->w, req->easy, req->easy_url, sl_easy_tag(req->up));
    req->easy = NULL;
    req->xfer_done = true;
    if (req->sent_us > 0) {
        req->upstream_us = sl_time_mono_us() - req->sent_us;
        sl_hist_observe(&req->w->metrics.latency[req->up->metric_id],
                        sl_hist_latency_bounds, req->upstream_us);
    }
    req->result = result;
    if (result == CURLE_OK)
        sl_req_settle_costs(req);
    /* The provider is done with the call: concurrency slots free now, not
     * when a slow client has finished reading (or sending); the end of the
     * answer waits until they are free in the store (a ticket). */
    sl_req_give_back(req, true);
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
        else if (req->committed && req->status == 0 &&
                 result != CURLE_OPERATION_TIMEDOUT) {
            /* Written to the provider, no answer: it may have counted the
             * call, so it is not sent again (sl_curl_prereq); the client
             * hears exactly that.  libcurl's words say how it ended, unless
             * they are only about the resend that was refused (or that
             * libcurl gave up on, unable to rewind the body). */
            if (req->resend_refused || result == CURLE_SEND_FAIL_REWIND)
                snprintf(sent, sizeof(sent), "the connection closed after the "
                         "call was sent and before any answer; the call was not "
                         "sent again, since the provider may have counted it");
            else
                snprintf(sent, sizeof(sent), "the connection closed after the "
                         "call was sent and before any answer (%s); the call was "
                         "not sent again, since the provider may have counted it",
                         why);
            why = sent;
        }
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
    if (req->suspended && req->susp != SL_SUSP_DECIDE && req->susp != SL_SUSP_SETTLE)
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
        strcasecmp(name, "X-Forwarded-Proto") == 0 ||
        strcasecmp(name, "X-Request-ID") == 0)  /* sent as sluice keeps it */
        return MHD_YES;
    /* The app-identifying header is sluice's, not the provider's. */
    if (ctx->req->up->app_kind == SL_APP_HEADER && !ctx->req->up->forward_app_header &&
        strcasecmp(name, ctx->req->up->app_header) == 0)
        return MHD_YES;
    /* With "auth", sluice's token replaces whatever the app sent. */
    if (ctx->req->up->auth != NULL && strcasecmp(name, "Authorization") == 0)
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
    const char *ip;
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
    sl_req_client_address(req);
    ip = req->client[0] != '\0' ? req->client : "unknown";
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
    /* One id from the app's log through sluice's to the provider's. */
    if (asprintf(&line, "X-Request-ID: %s", sl_req_request_id(req)) < 0)
        return -1;
    rc = sl_add_header(req, line);
    free(line);
    if (rc != 0)
        return -1;
    if (req->auth_header != NULL && sl_add_header(req, req->auth_header) != 0)
        return -1;
    /* Keep libcurl from inventing headers the client did not send. */
    if (sl_add_header(req, "Expect:") != 0)
        return -1;
    if (!ctx.has_accept && sl_add_header(req, "Accept:") != 0)
        return -1;
    return 0;
}

/*
 * Start the upstream transfer of TARGET, the request target to send (the
 * upstream's base path and the client's path and query, byte for byte).
 * The handle's URL names only the upstream's origin, parsed once per
 * handle (CURLOPT_CURLU), and TARGET goes on the request line as it is
 * (CURLOPT_REQUEST_TARGET): no URL is parsed per call, and no byte of
 * the path is rewritten.  Returns 0, or -1 (caller answers 502/503).
 */
int sl_req_start_transfer(struct sl_request *req, const char *target)
{
    const struct sl_upstream_conf *up = req->up;
    const char *cl, *te;
    bool fresh;
    CURL *e;

    if (sl_req_build_headers(req) != 0)
        return -1;
    req->scan_body = false;
    for (size_t i = 0; i < req->check.nhits; i++)
        if (req->check.hits[i].rule->settle == SL_SETTLE_GRAPHQL)
            req->scan_body = true;
    e = sl_worker_get_easy(req->w, sl_easy_tag(up), &fresh, &req->easy_url);
    if (e == NULL)
        return -1;
    req->easy = e;
    req->content_length = -1;
    req->hdrs_tail = &req->hdrs;
    if (fresh && (curl_url_set(req->easy_url, CURLUPART_URL, up->url, 0) != CURLUE_OK ||
                  curl_easy_setopt(e, CURLOPT_CURLU, req->easy_url) != CURLE_OK)) {
        /* Not pooled: its options are half set. */
        curl_easy_cleanup(e);
        curl_url_cleanup(req->easy_url);
        req->easy = NULL;
        req->easy_url = NULL;
        return -1;
    }
    /* The instance the token answer named (the handle may have served
     * another, or none): only its origin, the base path stays this
     * upstream's. */
    if (up->auth != NULL &&
        curl_url_set(req->easy_url, CURLUPART_URL,
                     req->auth_base != NULL ? req->auth_base : up->url, 0) != CURLUE_OK) {
        sl_worker_put_easy(req->w, e, req->easy_url, sl_easy_tag(up));
        req->easy = NULL;
        return -1;
    }
    /* What varies per call. */
    curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, target);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)req);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, req);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->req_headers);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->errbuf);
    if (fresh) {
        /* What depends only on the worker and the upstream's settings: a
         * pooled handle of the same upstream and generation keeps it. */
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, sl_worker_close_socket);
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, req->w);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        /* Upstream traffic goes straight to the upstream: an http_proxy in
         * the environment must not reroute it (and is not looked up per
         * call). */
        curl_easy_setopt(e, CURLOPT_PROXY, "");
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, sl_curl_prereq);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, sl_curl_header);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sl_curl_write);
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)SL_CURL_BUFSIZE);
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, (long)SL_CURL_BUFSIZE);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(up->connect_timeout_us / 1000));
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(up->timeout_us / 1000));
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, up->tls_verify ? 1L : 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, up->tls_verify ? 2L : 0L);
        if (up->ca_file != NULL)
            curl_easy_setopt(e, CURLOPT_CAINFO, up->ca_file);
    }

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
    if (req->retries == 0 && !req->auth_retried && req->login_body) {
        /* A login read before its decision: its whole body is at hand. */
        req->upload.rpos = req->upload.wpos = 0;
        if (sl_buf_len(&req->saved) > 0 &&
            sl_pipe_put(&req->upload, sl_buf_str(&req->saved), sl_buf_len(&req->saved))
            != sl_buf_len(&req->saved)) {
            sl_worker_put_easy(req->w, e, req->easy_url, sl_easy_tag(up));
            req->easy = NULL;
            return -1;
        }
    } else if (req->retries == 0 && !req->auth_retried) {
        req->saved_ok = up->retry_on_limit || up->auth != NULL;
    }
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
        sl_worker_put_easy(req->w, e, req->easy_url, sl_easy_tag(up));
        req->easy = NULL;
        return -1;
    }
    return 0;
}

/* ---- the response towards the client ---- */

static ssize_t sl_req_read_body(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sl_request *req = cls;
    size_t n;

    (void)pos;
    if (req->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (req->xfer_done && req->settle != NULL && !sl_spool_unread(req) &&
        sl_req_settling(req)) {
        /* The last byte tells the client the answer is whole: it waits for
         * the store (the call's slots free everywhere).  A spooled answer
         * is read long after the release and is not held. */
        size_t have = sl_pipe_len(&req->down);
        if (have <= 1) {
            sl_req_suspend(req, SL_SUSP_SETTLE);
            return 0;
        }
        if (max > have - 1)
            max = have - 1;
    }
    n = sl_pipe_take(&req->down, buf, max);
    if (n == 0 && sl_spool_unread(req)) {
        /* The buffer's bytes are older than the spool's: it goes second. */
        ssize_t k = sl_spool_take(req, buf, max);
        if (k < 0) {
            sl_warn("upstream %s: the response spool file could not be read "
                    "(%s); the response is cut short", req->up->name,
                    strerror(errno));
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        n = (size_t)k;
    }
    if (n > 0) {
        req->bytes_out += n;
        if (req->down_paused && !sl_spool_unread(req) &&
            sl_pipe_fits(&req->down, SL_CURL_BUFSIZE)) {
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
        if (sl_pipe_len(&req->down) > 0)
            return (ssize_t)sl_pipe_take(&req->down, buf, max);
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
    bool theirs = false, has_retry_after = false, has_id = false;
    enum MHD_Result rc;

    for (struct sl_hdr *h = req->hdrs; h; h = h->next) {
        if (h->name_len == 10 && strncasecmp(h->line, "Connection", 10) == 0)
            connection = h->value;
        if (h->name_len == 11 && strncasecmp(h->line, "Retry-After", 11) == 0)
            has_retry_after = true;
        if (h->name_len == 12 && strncasecmp(h->line, "X-Request-ID", 12) == 0)
            has_id = true;
        if (h->name_len == 9 && strncasecmp(h->line, "RateLimit", 9) == 0) {
            long long r = sl_feedback_ratelimit_r(h->value);
            theirs = true;
            /* The upstream's own report wins when it is stricter than ours. */
            if (ours && r >= 0 && (unsigned long long)r <= req->decision.remaining)
                ours = false;
        }
    }
    if (req->xfer_done && req->result == CURLE_OK && !is_head &&
        !sl_spool_unread(req)) {
        resp = MHD_create_response_from_buffer(sl_pipe_len(&req->down),
                                               req->down.data + req->down.rpos,
                                               MHD_RESPMEM_MUST_COPY);
        req->bytes_out = sl_pipe_len(&req->down);
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
    if (req->signalled && !has_retry_after)
        sl_respond_relayed_retry_after(req->config, resp, req->signal_pause_us);
    if (!has_id)
        MHD_add_response_header(resp, "X-Request-ID", sl_req_request_id(req));
    if (sl_req_login_word(req) != NULL)
        MHD_add_response_header(resp, "X-Sluice-Login-Cache", sl_req_login_word(req));
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

/* The NTH line (from 0) of the upstream's response header NAME, or NULL
 * (sl_header_fn: the feedback readers take every copy of a field). */
static const char *sl_resp_header_cb(void *ctx, const char *name, unsigned nth)
{
    const struct sl_request *req = ctx;
    size_t len = strlen(name);

    for (const struct sl_hdr *h = req->hdrs; h != NULL; h = h->next)
        if (h->name_len == len && strncasecmp(h->line, name, len) == 0 && nth-- == 0)
            return h->value;
    return NULL;
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
    /* Said twice, the longer wait holds. */
    int64_t ra = sl_feedback_retry_after_all(sl_resp_header_cb, req, time(NULL));
    int64_t pause = -1;
    const char *why = NULL;

    for (size_t i = 0; i < up->nsignals; i++) {
        const struct sl_limit_signal *sg = &up->signals[i];
        if (sg->status != (unsigned)req->status)
            continue;
        if (sg->body_contains != NULL) {
            size_t have = sl_pipe_len(&req->down);
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
        unsigned unreadable = 0;
        if (r->sync == SL_SYNC_NONE)
            continue;
        /* Every copy of the report is read; the fewest calls left wins. */
        left = sl_feedback_remaining(r->sync, sl_resp_header_cb, req, &unreadable);
        if (unreadable > 0) {
            req->w->malformed_reports++;
            if (sl_time_mono_ms() - req->w->malformed_logged_ms > 10000) {
                req->w->malformed_logged_ms = sl_time_mono_ms();
                sl_warn("upstream %s: ignored a malformed usage report for rule "
                        "\"%s\" (%lu on this worker so far)", up->name, r->name,
                        req->w->malformed_reports);
            }
        }
        if (left >= 0) {
            const struct sl_hit *hit = &req->check.hits[i];
            int64_t age = req->sent_us > 0 ? sl_time_mono_us() - req->sent_us : 0;
            struct sl_settle *t = sl_req_expect(req);
            sl_req_expected(t, sl_store_sync_then(req->w->store, up, hit, (uint64_t)left,
                                                  age, sl_req_tell(t), t));
            /* This answer's RateLimit fields say what the provider just
             * said, when it leaves fewer calls than the decision did. */
            if (req->decision.rule != NULL && req->decision.rule->kind == SL_RULE_RATE &&
                (uint64_t)left < req->decision.remaining) {
                if (req->decision.rule != r)
                    req->decision.reset_us = r->window_us;
                req->decision.rule = r;
                req->decision.remaining = (uint64_t)left;
            }
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
    {
        char reason[96];
        struct sl_settle *t;
        snprintf(reason, sizeof(reason), "status %ld, %s", req->status, why);
        t = sl_req_expect(req);
        sl_req_expected(t, sl_store_pause_then(req->w->store, up, pause, reason,
                                               sl_req_tell(t), t));
    }
    sl_metric_add(&req->w->metrics.pauses[up->metric_id], 1);
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

/* Drop the exchange so far (the response, the lease), keeping the saved
 * body for the next send.  0, or -1 (out of memory). */
static int sl_req_reset_exchange(struct sl_request *req)
{
    sl_req_abort_transfer(req);
    while (req->hdrs != NULL) {
        struct sl_hdr *h = req->hdrs;
        req->hdrs = h->next;
        free(h);
    }
    req->hdrs_tail = &req->hdrs;
    req->down.rpos = req->down.wpos = 0;
    sl_req_spool_close(req);
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
    sl_buf_reset(&req->scan);
    req->scan_total = 0;
    if (sl_buf_len(&req->saved) > 0 &&
        sl_pipe_put(&req->upload, sl_buf_str(&req->saved), sl_buf_len(&req->saved))
        != sl_buf_len(&req->saved))
        return -1;
    return 0;
}

/* Drop the signal response and hold the call until the pause is over. */
static enum MHD_Result sl_req_retry(struct sl_request *req, int64_t pause)
{
    struct sl_decision d = {.verdict = SL_VERDICT_DENY,
                            .rule = &req->up->pause_rule, .wait_us = pause};

    if (sl_req_reset_exchange(req) != 0)
        return MHD_NO;
    req->retries++;
    req->room_seq = sl_waitlists_seq(req->w->proxy->waitlists, &req->check);
    if (sl_req_hold(req, &d, true) != 0) {
        /* Cannot hold it (queue full, stopping): the provider's word still
         * reaches the client, as sluice's own "paused" answer. */
        sl_req_limited(req, &d);
        return sl_req_queue_pending(req);
    }
    sl_info("upstream %s: call held for a retry after the pause (retry %d)",
            req->up->name, req->retries);
    sl_req_suspend(req, SL_SUSP_HELD);
    return MHD_YES;
}

enum sl_reauth { SL_REAUTH_NO, SL_REAUTH_WAIT, SL_REAUTH_YES };

/*
 * With "auth": did the provider refuse the token this call carried (401,
 * or 401/403 with `reauth_on` in the body), and may the call be sent
 * again (once; the rules of retry_on_limit)?  WAIT: the body's start is
 * needed first.
 */
static enum sl_reauth sl_req_wants_reauth(struct sl_request *req)
{
    const struct sl_auth_conf *ac = req->up->auth;
    bool refused = req->status == 401 && ac->reauth_on == NULL;

    if (req->auth_retried || req->auth_header == NULL ||
        (req->status != 401 && req->status != 403))
        return SL_REAUTH_NO;
    if (ac->reauth_on != NULL) {
        size_t have = sl_pipe_len(&req->down);
        if (!req->xfer_done && have < SL_SIGNAL_PEEK) {
            req->want_body = true;
            return SL_REAUTH_WAIT;
        }
        refused = req->status == 401 ||
                  (have > 0 && memmem(req->down.data + req->down.rpos,
                                      have < SL_SIGNAL_PEEK ? have : SL_SIGNAL_PEEK,
                                      ac->reauth_on, strlen(ac->reauth_on)) != NULL);
    }
    req->want_body = false;
    if (!refused)
        return SL_REAUTH_NO;
    /* The token is bad whether or not this call may go again. */
    sl_auth_rejected(sl_auth_of(req->w->proxy, req->up), req->auth_serial);
    if (!req->up_done || (req->has_body && !req->saved_ok) ||
        !(req->up->retry_unsafe || sl_method_idempotent(req->method)))
        return SL_REAUTH_NO;
    return SL_REAUTH_YES;
}

/* Drop the refused answer, wait for the new token, send the call again. */
static enum MHD_Result sl_req_reauth(struct sl_request *req)
{
    int gate;

    if (sl_req_reset_exchange(req) != 0)
        return MHD_NO;
    req->auth_retried = true;
    sl_info("upstream %s: the provider refused the token; the call is sent "
            "again with a new one", req->up->name);
    gate = sl_auth_gate(req);
    if (gate < 0)
        return sl_req_queue_pending(req);
    if (gate == 0) {
        sl_req_suspend(req, SL_SUSP_DECIDE);
        sl_req_ask_again(req);
    }
    return MHD_YES;
}

const char *sl_req_login_word(const struct sl_request *req)
{
    switch (req->login) {
    case SL_LOGIN_SENT:
        return "miss";
    case SL_LOGIN_STORED:
        return "stored";
    case SL_LOGIN_BYPASS:
        return "bypass";
    default:
        return NULL;
    }
}

/* The whole of a login's answer is needed before it is relayed. */
enum sl_capture { SL_CAPTURE_DONE, SL_CAPTURE_WAIT };

/*
 * A login its rule's cache missed (req->login SL_LOGIN_SENT), its answer's
 * headers in: keep the answer if it is a token a second caller may have.
 * Only a 2xx JSON object with a non-empty string `access_token` and an
 * `expires_in` (a number, or a string of digits) above the rule's margin,
 * all of it within SL_LOGIN_ANSWER_MAX, is kept, for `expires_in` minus the
 * margin from now.  An answer without `expires_in` is not kept: how long
 * its token lives is unknown.  WAIT: the rest of the body is on its way
 * (the transfer's end resumes the call).
 */
static enum sl_capture sl_req_login_capture(struct sl_request *req)
{
    struct sl_login_answer a = {0};
    json_t *doc, *tok, *exp;
    int64_t ttl_ms = -1, now_ms;
    size_t len = sl_pipe_len(&req->down);

    if (req->status < 200 || req->status > 299 || req->signalled ||
        (req->content_length > SL_LOGIN_ANSWER_MAX) || sl_spool_unread(req) ||
        req->spool_open || len > SL_LOGIN_ANSWER_MAX) {
        req->want_body = false;
        return SL_CAPTURE_DONE;
    }
    if (!req->xfer_done) {
        req->want_body = true;  /* resumed at SL_SIGNAL_PEEK bytes or the end */
        return SL_CAPTURE_WAIT;
    }
    req->want_body = false;
    if (req->result != CURLE_OK || len == 0)
        return SL_CAPTURE_DONE;
    doc = json_loadb(req->down.data + req->down.rpos, len, JSON_REJECT_DUPLICATES, NULL);
    if (doc == NULL)
        return SL_CAPTURE_DONE;
    tok = json_object_get(doc, "access_token");
    exp = json_object_get(doc, "expires_in");
    if (json_is_integer(exp) && json_integer_value(exp) > 0 &&
        json_integer_value(exp) < INT32_MAX)
        ttl_ms = (int64_t)json_integer_value(exp) * 1000;
    else if (json_is_real(exp) && json_real_value(exp) > 0 &&
             json_real_value(exp) < INT32_MAX)
        ttl_ms = (int64_t)(json_real_value(exp) * 1000.0);
    else if (json_is_string(exp) && json_string_length(exp) > 0 &&
             json_string_length(exp) < 10 &&
             strspn(json_string_value(exp), "0123456789") == json_string_length(exp))
        ttl_ms = strtoll(json_string_value(exp), NULL, 10) * 1000;
    ttl_ms -= req->login_margin_ms;
    /* An answer with a refresh token (which the provider may rotate with
     * each answer) or an identity token (whose nonce and audience are one
     * caller's) is never another caller's. */
    if (json_is_string(tok) && json_string_length(tok) > 0 && ttl_ms > 0 &&
        json_object_get(doc, "refresh_token") == NULL &&
        json_object_get(doc, "id_token") == NULL) {
        now_ms = sl_time_mono_ms();
        a.status = (unsigned)req->status;
        a.content_type = (char *)sl_resp_header_cb(req, "Content-Type", 0);
        a.body = req->down.data + req->down.rpos;
        a.len = len;
        if (sl_login_cache_put(req->w->proxy->login_cache, req->login_tag,
                               req->login_max, req->login_key, now_ms,
                               now_ms + ttl_ms, &a) == 0)
            req->login = SL_LOGIN_STORED;
    }
    json_decref(doc);
    return SL_CAPTURE_DONE;
}

/* Body complete (or never expected): answer now or wait for the upstream. */
enum MHD_Result sl_req_try_respond(struct sl_request *req)
{
    if (req->queued)
        return MHD_YES;
    if (sl_req_settling(req)) {
        /* What the answer tells its client (a report or pause in force,
         * the call's slots free) is not yet in the shared store: a call
         * the client makes next must be decided on it, so the answer,
         * sluice's own error included, waits (at most store_timeout: the
         * store gives up). */
        sl_req_suspend(req, SL_SUSP_SETTLE);
        return MHD_YES;
    }
    if (req->pending != NULL)
        return sl_req_queue_pending(req);
    if (req->headers_ready && !req->feedback_done && req->up->auth != NULL) {
        switch (sl_req_wants_reauth(req)) {
        case SL_REAUTH_WAIT:
            sl_req_suspend(req, SL_SUSP_HEADERS);
            return MHD_YES;
        case SL_REAUTH_YES:
            return sl_req_reauth(req);
        case SL_REAUTH_NO:
            break;
        }
    }
    if (req->headers_ready && !req->feedback_done) {
        int64_t pause = 0;
        switch (sl_req_feedback(req, &pause)) {
        case SL_FEEDBACK_WAIT:
            sl_req_suspend(req, SL_SUSP_HEADERS);
            return MHD_YES;
        case SL_FEEDBACK_RETRY:
            /* The ticket stays: if the call cannot be held for its
             * retry, the answer it then gets waits for the pause too. */
            return sl_req_retry(req, pause);
        case SL_FEEDBACK_DONE:
            if (sl_req_settling(req)) {
                sl_req_suspend(req, SL_SUSP_SETTLE);
                return MHD_YES;
            }
            break;
        }
    }
    if (req->headers_ready && req->login == SL_LOGIN_SENT &&
        sl_req_login_capture(req) == SL_CAPTURE_WAIT) {
        sl_req_suspend(req, SL_SUSP_HEADERS);
        return MHD_YES;
    }
    if (req->headers_ready && !req->xfer_done && sl_req_holds_slots(req) &&
        (req->content_length == 0 || strcmp(req->method, "HEAD") == 0 ||
         req->status == 204 || req->status == 304)) {
        /* An answer complete with its headers: its slots must be free
         * before they go, so it waits for the transfer's end (moments
         * after), which releases them. */
        sl_req_suspend(req, SL_SUSP_HEADERS);
        return MHD_YES;
    }
    if (req->headers_ready)
        return sl_req_respond(req);
    if (req->xfer_done || req->easy == NULL)
        return MHD_NO;  /* no transfer and no answer to give: close */
    sl_req_suspend(req, SL_SUSP_HEADERS);
    return MHD_YES;
}

enum MHD_Result sl_req_upload(struct sl_request *req, const char *data,
                                     size_t *size)
{
    if (req->login == SL_LOGIN_READING) {
        /* A login: its body is read before it is decided (sl_request.c,
         * "logins"), within its Content-Length (at most 16 KiB). */
        if (req->pending == NULL && sl_buf_add(&req->saved, data, *size) != 0)
            sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "out_of_memory",
                         "sluice is out of memory", 1, "out_of_memory");
        *size = 0;
        return MHD_YES;
    }
    /* Nothing to forward to (answered already, or the upstream finished):
     * read and drop the body so the connection stays usable. */
    if (req->easy == NULL || req->xfer_done || req->pending != NULL) {
        *size = 0;
        return MHD_YES;
    }
    while (*size > 0) {
        size_t n = sl_pipe_put(&req->upload, data, *size);
        if (n == 0)
            break;
        if (req->saved_ok) {
            /* Keep a copy for a retry after a pause; big bodies (past the
             * buffer's cap, SL_SAVE_MAX) are not. */
            if (sl_buf_add(&req->saved, data, n) != 0) {
                sl_buf_free(&req->saved);
                req->saved_ok = false;
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

