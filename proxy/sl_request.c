/*
 * sl_request — accepting a call and deciding it; MHD's callbacks.
 *
 *   uri_log     MHD saw the request line: allocate the request and keep the
 *               raw request target (byte-exact path and query); the headers
 *               now have header_timeout.
 *   handle #1   headers are in: check the head (sl_framing.c), route by
 *               prefix (404 if none), canonicalize the path (sl_path: 400
 *               for any spelling that leaves the base path), match rules,
 *               ask the store.  Allowed: start the upstream transfer at
 *               once, before the body has been read (sl_relay.c).  Denied:
 *               queue the 429 now (a client sending "Expect: 100-continue"
 *               never uploads its body), or, in queue mode, hold the call
 *               (sl_hold.c): the connection stays suspended inside this
 *               call, body unread.  After any suspension inside this call
 *               MHD repeats it once resumed.  The one exception: a login
 *               of a rule with "login_cache" (a POST of at most 16 KiB) is
 *               read whole first, then looked up in the cache and, if not
 *               answered from it, decided at the final call ("logins").
 *   handle #n   body bytes, towards the transfer (sl_relay.c).
 *   handle last the body is complete: answer (sl_relay.c).
 *   completed   MHD is done with the connection's request (relayed, client
 *               gone, or shutdown): abort the transfer if it still runs,
 *               give back what the call holds, write the access log line.
 *
 * Ownership: the request belongs to its MHD connection and is freed only in
 * the completion callback (or, if the store's answer is still outstanding
 * then, by the decision callback).  Every callback runs on the worker
 * thread that owns the connection.
 *
 * While suspended, MHD ignores the socket, so each client socket is
 * watched for EPOLLRDHUP for the life of its connection (sl_conn): a client
 * that hangs up while held or while waiting for its upstream is forgotten
 * at once, and its upstream transfer aborted.
 */
#include "sl_request.h"
#include "sl_auth.h"
#include "sl_assert.h"

#include "sl_apps.h"
#include "sl_duration.h"
#include "sl_log.h"
#include "sl_login_cache.h"
#include "sl_path.h"
#include "sl_pattern.h"
#include "sl_time.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <ctype.h>
#include <sys/random.h>
#include <string.h>

static void sl_req_free(struct sl_request *req);
static void sl_req_identify_app(struct sl_request *req);
static enum MHD_Result sl_req_admit(struct sl_request *req, bool at_headers);

/* ---- suspension and hang-up watching ---- */

/*
 * Suspend the connection.  The client's socket is already watched for
 * hang-ups (sl_conn); one that hung up before this point is handled now.
 */
void sl_req_suspend(struct sl_request *req, enum sl_susp why)
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

void sl_req_resume(struct sl_request *req)
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

void sl_req_set_pending(struct sl_request *req, unsigned status,
                               struct MHD_Response *resp, const char *outcome)
{
    if (req->pending != NULL)
        MHD_destroy_response(req->pending);
    req->pending = resp;
    req->pending_status = status;
    req->outcome = outcome;
}

/* Count the call's synthetic answer STATUS in the worker's metrics. */
static void sl_req_count_error(struct sl_request *req, unsigned status)
{
    sl_metrics_call(&req->w->metrics, req->up,
                    status >= 500 ? SL_OUT_ERROR : SL_OUT_INVALID);
}

void sl_req_error(struct sl_request *req, unsigned status,
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
    sl_req_count_error(req, status);
    sl_req_set_pending(req, status, sl_respond_error(&e), outcome);
}

/* The over-limit answer for decision D (the upstream's reject status). */
void sl_req_limited(struct sl_request *req, const struct sl_decision *d)
{
    unsigned status = req->up->reject_status ? req->up->reject_status
                                             : MHD_HTTP_TOO_MANY_REQUESTS;

    enum sl_outcome o = req->expired ? SL_OUT_EXPIRED
                        : d->rule != NULL && d->rule->kind == SL_RULE_PAUSE
                            ? SL_OUT_PAUSED : SL_OUT_REJECTED;

    req->decision = *d;
    sl_metrics_call(&req->w->metrics, req->up, o);
    /* Who was refused (answered over the limit), by which rule. */
    if (d->rule != NULL && req->check.app < req->w->metrics.napps)
        sl_metric_add(&req->w->metrics.app_denied[d->rule->metric_slot *
                                                      req->w->metrics.napps +
                                                  req->check.app], 1);
    sl_req_set_pending(req, status,
                       sl_respond_limited(req->config, req->up, d, req->check.app,
                                          req->check.app_name),
                       req->expired ? "expired" : o == SL_OUT_PAUSED ? "paused"
                                                                     : "rejected");
}

/* A request id: 32 hex digits from a per-thread generator seeded from the
 * kernel (unique, not a secret: splitmix64 over a random start). */
static void sl_req_make_id(char out[33])
{
    static _Thread_local uint64_t state;
    static _Thread_local bool seeded;
    uint64_t x[2];

    if (!seeded) {
        if (getrandom(&state, sizeof(state), 0) != (ssize_t)sizeof(state))
            state = (uint64_t)sl_time_wall_us() ^ (uint64_t)(uintptr_t)&state;
        seeded = true;
    }
    for (int i = 0; i < 2; i++) {
        uint64_t z = (state += UINT64_C(0x9e3779b97f4a7c15));
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        x[i] = z ^ (z >> 31);
    }
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)x[0],
             (unsigned long long)x[1]);
}

/* Is V a request id worth keeping: 1 to 64 of [A-Za-z0-9._:-]? */
static bool sl_req_id_ok(const char *v)
{
    size_t n = 0;

    for (; v[n] != '\0'; n++)
        if (n >= 64 || !(isalnum((unsigned char)v[n]) || strchr("._:-", v[n]) != NULL))
            return false;
    return n > 0;
}

const char *sl_req_request_id(struct sl_request *req)
{
    if (req->request_id[0] == '\0') {
        const char *v = req->conn != NULL
                            ? MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                          "X-Request-ID")
                            : NULL;
        if (v != NULL && sl_req_id_ok(v))
            snprintf(req->request_id, sizeof(req->request_id), "%s", v);
        else
            sl_req_make_id(req->request_id);
    }
    return req->request_id;
}

/* Queue the pending synthetic response. */
enum MHD_Result sl_req_queue_pending(struct sl_request *req)
{
    enum MHD_Result rc;

    if (req->pending == NULL)
        return MHD_NO;  /* could not even build it: drop the connection */
    MHD_add_response_header(req->pending, "X-Request-ID", sl_req_request_id(req));
    rc = MHD_queue_response(req->conn, req->pending_status, req->pending);
    MHD_destroy_response(req->pending);
    req->pending = NULL;
    req->queued = true;
    req->status_sent = req->pending_status;
    return rc;
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
const char *sl_req_rest(const struct sl_request *req)
{
    return req->uri + (req->up->prefix_len == 1 ? 0 : req->up->prefix_len);
}

static const char *sl_call_header(void *ctx, const char *name)
{
    return MHD_lookup_connection_value(ctx, MHD_HEADER_KIND, name);
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

/* Answer STATUS now and close the connection: its framing is in doubt. */
static enum MHD_Result sl_req_refuse(struct sl_request *req, unsigned status,
                                     const char *error, const char *message)
{
    sl_req_error(req, status, error, message, 0, "bad_request");
    if (req->pending != NULL)
        MHD_add_response_header(req->pending, MHD_HTTP_HEADER_CONNECTION, "close");
    return sl_req_queue_pending(req);
}

/*
 * Route the call and match its rules under req->config: req->up and
 * req->check.  Returns 0, or -1 with the answer set (404, 400, 503).
 */
static int sl_req_match(struct sl_request *req)
{
    const struct sl_config *c = req->config;
    const char *q = strchr(req->uri, '?');
    size_t plen = q ? (size_t)(q - req->uri) : strlen(req->uri);
    size_t canon_len, skip;
    char *canon = NULL;
    char msg[256];
    bool trailing;
    int rc;

    sl_check_clear(&req->check);
    req->up = NULL;
    canon = malloc(plen + 2);
    if (canon == NULL)
        goto oom;
    /* The whole path, canonical: it must route where the raw one does, or
     * some server could read the target as another upstream's. */
    rc = sl_path_canonical(req->uri, plen, 0, canon, &canon_len, &trailing);
    if (rc != SL_PATH_OK) {
        free(canon);
        sl_req_error(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                     sl_path_strerror(rc), 0, "bad_request");
        return -1;
    }
    req->up = sl_route(c, req->uri, plen);
    if (sl_route(c, canon, canon_len) != req->up) {
        free(canon);
        req->up = NULL;
        sl_req_error(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                     "the path routes differently once decoded and normalized "
                     "(encoded or doubled slashes, backslashes or \";\" around "
                     "the prefix)", 0, "bad_request");
        return -1;
    }
    if (req->up == NULL) {
        free(canon);
        snprintf(msg, sizeof(msg), "no upstream is configured for this path "
                 "(%.*s)", plen > 120 ? 120 : (int)plen, req->uri);
        sl_req_error(req, MHD_HTTP_NOT_FOUND, "no_route", msg, 0, "no_route");
        return -1;
    }
    /* Prefixes are canonical themselves (--check), and the raw path
     * routes where the canonical one does: so the raw path holds the
     * prefix verbatim, and what follows it is read on its own. */
    skip = req->up->prefix_len == 1 ? 0 : req->up->prefix_len;
    rc = sl_match_raw(req->up, req->method, req->uri + skip, plen - skip,
                      sl_call_header, req->conn, &req->check);
    free(canon);
    if (rc == -1)
        goto oom;
    if (rc == SL_MATCH_BAD_COST) {
        /* The call says what it costs, and says it badly: never guessed,
         * never forwarded. */
        const struct sl_rule *r = req->check.bad_cost;
        snprintf(msg, sizeof(msg), "rule \"%.64s\" takes its cost from the "
                 "request header %.64s: a whole number from 1 to %llu is "
                 "required", r->name, r->cost_header,
                 (unsigned long long)r->cost_max);
        sl_req_error(req, MHD_HTTP_BAD_REQUEST, "bad_cost", msg, 0, "bad_request");
        return -1;
    }
    if (rc != 0) {
        sl_req_error(req, MHD_HTTP_BAD_REQUEST, "bad_request",
                     rc == SL_MATCH_TOO_MANY
                         ? "the path reads as too many different endpoints "
                           "(escaped slashes, backslashes or \";\" in many segments)"
                         : "the path holds a dot segment or a malformed escape "
                           "in some reading", 0, "bad_request");
        return -1;
    }
    sl_req_identify_app(req);
    return 0;

oom:
    sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "out_of_memory",
                 "sluice is out of memory", 1, "out_of_memory");
    return -1;
}

/* sl_req_head_cost's walk: a record per value of any kind, and the copy
 * of every Cookie header. */
static enum MHD_Result sl_head_cost_value(void *cls, enum MHD_ValueKind kind,
                                          const char *key, size_t key_size,
                                          const char *value, size_t value_size)
{
    size_t *cost = cls;

    (void)value;
    *cost += SL_HEAD_LINE_COST;
    if (kind == MHD_HEADER_KIND && key_size == 6 && strncasecmp(key, "Cookie", 6) == 0)
        *cost += value_size + 1;
    return MHD_YES;
}

/*
 * What the request's head takes of its connection's memory, as
 * libmicrohttpd lays it out: the head itself, a record per header line,
 * query argument and cookie, and a copy of every Cookie header (which it
 * splits into cookies).  See SL_CONN_MEMORY.
 */
static size_t sl_req_head_cost(struct sl_request *req)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    size_t cost = ci != NULL ? ci->header_size : 0;

    MHD_get_connection_values_n(req->conn,
                                MHD_HEADER_KIND | MHD_COOKIE_KIND | MHD_GET_ARGUMENT_KIND,
                                sl_head_cost_value, &cost);
    return cost;
}

/* A synthetic answer: at the headers call as sl_req_answer_early says, at
 * the final call at once. */
static enum MHD_Result sl_req_answer_now(struct sl_request *req, bool at_headers)
{
    return at_headers ? sl_req_answer_early(req) : sl_req_queue_pending(req);
}

/* ---- logins: a rule's "login_cache" (sl_login_cache.c) ----
 *
 * A call of a rule with "login_cache" that can be a login (a POST with a
 * Content-Length of at most SL_LOGIN_BODY_MAX, no other transfer coding)
 * is not decided at its headers: its body is read first, into req->saved
 * (sl_req_upload), and at the final call its digest is looked up.  A hit
 * is answered there, with nothing asked of the store: no rule counts it,
 * and the provider never sees it.  A miss is admitted as any call
 * (sl_req_admit at the final call), its body sent from req->saved
 * (sl_req_start_transfer), and its answer may be kept (sl_relay.c,
 * sl_req_login_capture).  Every other call of the upstream is decided at
 * its headers, as before.
 */

/* Grants whose answer must never be handed to a second caller: a code is
 * used once, and a refresh token may be rotated by each answer.  A signed
 * assertion (JWT bearer, a client assertion) differs on every login, so
 * its answers would only fill the cache. */
static const char *const sl_login_never[] = {
    "authorization_code", "refresh_token",
    "urn:ietf:params:oauth:grant-type:device_code", NULL};
/* ... and the fields that carry those. */
static const char *const sl_login_never_fields[] = {"code", "refresh_token",
                                                    "device_code", "assertion",
                                                    "client_assertion", NULL};

/* Does the login body B (N bytes, media type CT) name a grant in
 * sl_login_never, or carry a field of sl_login_never_fields?  Form fields
 * and JSON are read; a grant_type sluice cannot read counts as one (never
 * cached). */
static bool sl_login_grant_refused(const char *b, size_t n, const char *ct)
{
    const char *p = NULL, *end = b + n, *v;
    size_t vlen;

    if (ct != NULL && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0) {
        const char *vend = NULL;
        for (const char *f = b; f < end;) {
            const char *amp = memchr(f, '&', (size_t)(end - f));
            const char *fe = amp != NULL ? amp : end;
            size_t fl = (size_t)(fe - f);
            if (fl >= 11 && memcmp(f, "grant_type=", 11) == 0) {
                if (p != NULL)
                    return true;  /* named twice: which counts is the provider's */
                p = f + 11;
                vend = fe;
            } else if (fl >= 10 && memcmp(f, "grant_type", 10) == 0) {
                return true;  /* escaped or odd: not read, not cached */
            }
            /* A one-time code or a refresh token, whatever the grant says. */
            for (const char *const *w = sl_login_never_fields; *w != NULL; w++)
                if (fl > strlen(*w) && memcmp(f, *w, strlen(*w)) == 0 &&
                    f[strlen(*w)] == '=')
                    return true;
            f = fe + 1;
        }
        end = vend;
        if (p == NULL)
            return false;
        v = p;
        vlen = (size_t)(end - p);
        if (memchr(v, '%', vlen) != NULL || memchr(v, '+', vlen) != NULL)
            return true;  /* escaped: not read, not cached (a JWT bearer
                           * assertion differs on every login anyway) */
    } else {
        /* JSON (or anything else): the string after "grant_type" and ':'. */
        for (const char *const *w = sl_login_never_fields; *w != NULL; w++) {
            char quoted[24];
            int ql = snprintf(quoted, sizeof(quoted), "\"%s\"", *w);
            if (memmem(b, n, quoted, (size_t)ql) != NULL)
                return true;
        }
        p = memmem(b, n, "grant_type", 10);
        if (p == NULL)
            return false;
        p += 10;
        if (p < end && *p == '"')
            p++;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p >= end || *p != ':')
            return true;
        p++;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p >= end || *p != '"')
            return true;
        v = ++p;
        while (p < end && *p != '"' && *p != '\\')
            p++;
        if (p >= end || *p == '\\')
            return true;
        vlen = (size_t)(p - v);
        if (memmem(p, (size_t)(end - p), "grant_type", 10) != NULL)
            return true;  /* named twice: which one counts is the provider's */
    }
    for (const char *const *g = sl_login_never; *g != NULL; g++)
        if (vlen == strlen(*g) && memcmp(v, *g, vlen) == 0)
            return true;
    return false;
}

struct sl_login_scan {
    unsigned authorization, content_type;
    const char *app_header;   /* the upstream's app header, or NULL */
    bool other;     /* a header that could tell two callers apart */
};

/* sl_req_login_head's walk over the request's headers.  The key reads
 * Authorization, Content-Type and the body; every other header must be
 * one that says nothing about who logs in (an allow-list, not a list of
 * names that look secret: a DPoP proof, a tenant or a signature header
 * are named freely), or the call is not looked up. */
static enum MHD_Result sl_login_scan_header(void *cls, enum MHD_ValueKind kind,
                                            const char *key, const char *value)
{
    struct sl_login_scan *s = cls;
    static const char *const neutral[] = {
        "Host", "User-Agent", "Accept", "Accept-Encoding", "Accept-Language",
        "Content-Length", "Connection", "Keep-Alive", "Expect", "Cache-Control",
        "Pragma", "X-Request-ID", "traceparent", "tracestate", "X-Forwarded-For",
        "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "Via", NULL};

    (void)kind, (void)value;
    if (strcasecmp(key, "Authorization") == 0) {
        s->authorization++;
        return MHD_YES;
    }
    if (strcasecmp(key, "Content-Type") == 0) {
        s->content_type++;
        return MHD_YES;
    }
    /* The app's name (it is the point to answer every app alike). */
    if (s->app_header != NULL && strcasecmp(key, s->app_header) == 0)
        return MHD_YES;
    for (const char *const *w = neutral; *w != NULL; w++)
        if (strcasecmp(key, *w) == 0)
            return MHD_YES;
    s->other = true;
    return MHD_YES;
}

/*
 * At the headers: is this call a login its rule's cache may answer?  True:
 * req->login is SL_LOGIN_READING (the body is read before any decision).
 * A call of a login_cache rule that cannot be looked up is marked
 * SL_LOGIN_BYPASS and goes on as any call.
 */
static bool sl_req_login_head(struct sl_request *req)
{
    const struct sl_rule *rule = NULL;
    struct sl_login_scan scan = {0};
    const char *cl, *te;
    char *endp;
    long long n;

    req->login = SL_LOGIN_NONE;
    for (size_t i = 0; i < req->check.nhits && rule == NULL; i++)
        if (req->check.hits[i].rule->login_cache)
            rule = req->check.hits[i].rule;
    if (rule == NULL || req->w->proxy->login_cache == NULL)
        return false;
    req->login = SL_LOGIN_BYPASS;
    if (strcmp(req->method, "POST") != 0)
        return false;
    cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Content-Length");
    te = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Transfer-Encoding");
    if (cl == NULL || te != NULL)
        return false;
    n = strtoll(cl, &endp, 10);
    if (*endp != '\0' || n <= 0 || n > SL_LOGIN_BODY_MAX)
        return false;
    /* Credentials only where the key reads them: one Authorization, the
     * body.  Any header the key does not read and that could tell two
     * callers apart (a cookie, a proof, a tenant) means: not looked up. */
    scan.app_header = req->up->app_kind == SL_APP_HEADER ? req->up->app_header : NULL;
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, sl_login_scan_header, &scan);
    if (scan.authorization > 1 || scan.content_type > 1 || scan.other)
        return false;
    req->login = SL_LOGIN_READING;
    req->login_tag = sl_login_cache_tag(req->up->name, rule->name);
    req->login_max = rule->login_cache_max;
    req->login_margin_ms = rule->login_cache_margin_us / 1000;
    req->login_body = true;
    req->saved_ok = true;  /* sl_req_upload keeps the body in req->saved */
    return true;
}

/* The login's answer from the cache, A: queued now.  Consumes A. */
static enum MHD_Result sl_req_login_hit(struct sl_request *req,
                                        struct sl_login_answer *a)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(a->len, a->body, MHD_RESPMEM_MUST_COPY);

    if (resp == NULL) {
        free(a->body);
        free(a->content_type);
        sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "out_of_memory",
                     "sluice is out of memory", 1, "out_of_memory");
        return sl_req_queue_pending(req);
    }
    if (a->content_type != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, a->content_type);
    /* RFC 6749 5.1: a token answer is never cached by anyone else. */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_PRAGMA, "no-cache");
    MHD_add_response_header(resp, "X-Sluice-Login-Cache", "hit");
    free(a->body);
    free(a->content_type);
    sl_metrics_call(&req->w->metrics, req->up, SL_OUT_LOGIN_CACHED);
    sl_req_set_pending(req, a->status, resp, "login_cached");
    return sl_req_queue_pending(req);
}

/*
 * The final call of a login being read (req->login SL_LOGIN_READING): the
 * body is in req->saved.  A hit is answered; anything else is admitted
 * now as any call (a miss as SL_LOGIN_SENT: its answer may be kept).
 */
static enum MHD_Result sl_req_login_final(struct sl_request *req)
{
    const char *body = sl_buf_len(&req->saved) > 0 ? sl_buf_str(&req->saved) : "";
    size_t blen = sl_buf_len(&req->saved);
    const char *ct = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                 "Content-Type");
    const char *authz = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                    "Authorization");
    struct sl_login_answer a;
    enum MHD_Result rc;
    int found;

    req->login = SL_LOGIN_BYPASS;
    if (req->pending == NULL && req->saved_ok &&
        !sl_login_grant_refused(body, blen, ct)) {
        /* What makes two logins the same one; the names come first, so a
         * rule's answers are never another's. */
        const char *parts[] = {req->up->name, req->up->url,
                               NULL /* rule: in the tag */, req->method,
                               sl_req_rest(req), body, authz, ct};
        size_t lens[8];
        char tag[24];
        snprintf(tag, sizeof(tag), "%016llx", (unsigned long long)req->login_tag);
        parts[2] = tag;
        for (size_t i = 0; i < 8; i++)
            lens[i] = parts[i] != NULL ? strlen(parts[i]) : 0;
        lens[5] = blen;
        if (sl_login_cache_key(req->w->proxy->login_cache, parts, lens, 8,
                               req->login_key) == 0) {
            found = sl_login_cache_get(req->w->proxy->login_cache, req->login_tag,
                                       req->login_key, sl_time_mono_ms(), &a);
            if (found == 1)
                return sl_req_login_hit(req, &a);
            if (found == 0)
                req->login = SL_LOGIN_SENT;
        }
    }
    if (req->pending != NULL)
        return sl_req_queue_pending(req);
    rc = sl_req_admit(req, false);
    if (req->suspended || req->queued)
        return rc;
    /* Decided at once (the memory store): wait for the answer. */
    return sl_req_try_respond(req);
}

/* First call: check, route, match, decide.  Returns what the handler returns. */
static enum MHD_Result sl_req_begin(struct sl_request *req, const char *version)
{
    const char *q = strchr(req->uri, '?');
    size_t plen = q ? (size_t)(q - req->uri) : strlen(req->uri);
    const char *why;
    unsigned status;

    sl_req_set_phase(req, SL_PHASE_ACTIVE);
    status = sl_req_check_framing(req, version, &why);
    if (status != 0)
        return sl_req_refuse(req, status,
                             status == MHD_HTTP_NOT_IMPLEMENTED
                                 ? "unsupported_transfer_coding" : "bad_request",
                             why);
    if (sl_req_head_cost(req) > SL_REQ_HEAD_MAX) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "the request head is too large: sluice accepts %u bytes, "
                 "counting %u more per header line, query argument and "
                 "cookie, and the Cookie header twice",
                 (unsigned)SL_REQ_HEAD_MAX, (unsigned)SL_HEAD_LINE_COST);
        return sl_req_refuse(req, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE,
                             "request_header_too_large", msg);
    }
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
    req->config = sl_config_ref(req->w->config);
    if (sl_req_match(req) != 0)
        return sl_req_answer_early(req);
    if (sl_req_login_head(req))
        return MHD_YES;  /* its body first: decided at the final call */
    return sl_req_admit(req, true);
}

/*
 * Admit a routed and matched call: behind held calls of its buckets, after
 * a token (upstreams with "auth"), then the store's decision.  AT_HEADERS:
 * in MHD's headers call (the usual case); false: at the final call, the
 * body read (a login its rule's cache did not answer, sl_req_login_final),
 * where a synthetic answer is queued at once and a suspension makes MHD
 * repeat the final call.  Returns what the handler returns.
 */
static enum MHD_Result sl_req_admit(struct sl_request *req, bool at_headers)
{
    /* Held calls wait for one of this call's buckets: queue behind them. */
    req->room_seq = sl_waitlists_seq(req->w->proxy->waitlists, &req->check);
    {
        int64_t head_retry, now_ms = sl_time_mono_ms();
        bool own_app;
        const struct sl_hit *blocked = sl_queue_blocks(
            &req->w->queue, &req->check, req->priority,
            req->up->priority_aging_us / 1000, now_ms, &head_retry, &own_app);
        if (blocked != NULL) {
            /* It waits at least as long as the first in line. */
            struct sl_decision d = {
                .verdict = SL_VERDICT_DENY, .rule = blocked->rule,
                .wait_us = head_retry > now_ms ? (head_retry - now_ms) * 1000 : 0,
                /* Behind its own app's calls waiting for that app's share:
                 * it waits for that share too, not for the bucket. */
                .share = own_app ? SL_SHARE_MAX : SL_SHARE_NONE};
            if (sl_req_hold(req, &d, false) == 0) {
                req->replay_headers = at_headers;
                sl_req_suspend(req, SL_SUSP_HELD);
                return MHD_YES;
            }
            if (blocked->rule->on_limit == SL_ON_LIMIT_QUEUE) {
                /* Its turn cannot come in time, or the queue is full. */
                if (d.wait_us <= 0)
                    d.wait_us = SL_USEC_PER_SEC;
                sl_req_limited(req, &d);
                return sl_req_answer_now(req, at_headers);
            }
        }
    }
    if (req->up->auth != NULL) {
        /* A token first: a call waiting for one consumes nothing. */
        int gate = sl_auth_gate(req);
        if (gate > 0) {
            req->replay_headers = at_headers;
            return MHD_YES;
        }
        if (gate < 0)
            return sl_req_answer_now(req, at_headers);
    }
    sl_req_set_phase(req, SL_PHASE_DECIDING);
    if (sl_store_decide(req->w->store, &req->check, sl_req_decided, req)
        != 0) {
        sl_req_set_phase(req, SL_PHASE_ACTIVE);
        sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "store_unavailable",
                     "the limit store cannot decide this call", 1,
                     "store_error");
        return sl_req_answer_now(req, at_headers);
    }
    if (sl_req_deciding(req) || sl_req_is_held(req)) {
        /* Suspended inside the headers call: after the resume MHD calls
         * the handler for the headers again before any body bytes (at the
         * final call: the final call again). */
        req->replay_headers = at_headers;
        sl_req_suspend(req, sl_req_deciding(req) ? SL_SUSP_DECIDE : SL_SUSP_HELD);
        return MHD_YES;
    }
    if (req->pending != NULL)
        return sl_req_answer_now(req, at_headers);
    return MHD_YES;
}

/* Count decision D by rule; an allowed call by app in each of its rules. */
static void sl_req_count_decision(struct sl_request *req,
                                  const struct sl_decision *d)
{
    struct sl_metrics *m = &req->w->metrics;

    if (d->verdict == SL_VERDICT_DENY && d->rule != NULL) {
        sl_metric_add(&m->decisions[d->rule->metric_slot * SL_DECISION_RESULTS +
                                    SL_DECISION_DENIED], 1);
        return;
    }
    if (d->verdict != SL_VERDICT_ALLOW)
        return;
    for (size_t i = 0; i < req->check.nhits; i++) {
        const struct sl_rule *r = req->check.hits[i].rule;
        size_t slot;
        if (r->kind == SL_RULE_PAUSE)
            continue;
        slot = r->metric_slot;
        if (d->shadow_mask & (UINT64_C(1) << r->index)) {
            sl_metric_add(&m->decisions[slot * SL_DECISION_RESULTS +
                                        SL_DECISION_SHADOW_DENIED], 1);
            continue;  /* it took nothing from that rule */
        }
        sl_metric_add(&m->decisions[slot * SL_DECISION_RESULTS + SL_DECISION_ALLOWED], 1);
        if (req->check.app < m->napps)
            sl_metric_add(&m->app_calls[slot * m->napps + req->check.app], 1);
    }
}

void sl_req_client_address(struct sl_request *req)
{
    const union MHD_ConnectionInfo *ci;

    if (req->client[0] != '\0' || req->conn == NULL)
        return;
    ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci == NULL || ci->client_addr == NULL)
        return;
    if (ci->client_addr->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr,
                  req->client, sizeof(req->client));
    else if (ci->client_addr->sa_family == AF_INET6)
        inet_ntop(AF_INET6,
                  &((const struct sockaddr_in6 *)ci->client_addr)->sin6_addr,
                  req->client, sizeof(req->client));
}

/* Which app the call comes from (its upstream's "app" setting). */
static void sl_req_identify_app(struct sl_request *req)
{
    struct sl_apps *apps = req->w->proxy->apps;
    const char *v = NULL;
    uint16_t id = SL_APP_NONE;

    switch (req->up->app_kind) {
    case SL_APP_HEADER:
        v = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                        req->up->app_header);
        id = sl_apps_id(apps, v, v != NULL ? strlen(v) : 0);
        break;
    case SL_APP_CLIENT_IP:
        sl_req_client_address(req);
        id = sl_apps_id(apps, req->client, strlen(req->client));
        break;
    default:
        break;
    }
    req->check.app = id;
    req->check.app_name = sl_apps_name(apps, id);

    /* Its queue lane: the priority header when it holds a level, else
     * the app's priority in the upstream's "apps". */
    req->priority = sl_upstream_priority(req->up, id);
    if (req->up->priority_header != NULL) {
        const char *p = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                    req->up->priority_header);
        if (p != NULL && p[0] >= '0' && p[0] < '0' + SL_PRIORITY_LEVELS && p[1] == '\0')
            req->priority = p[0] - '0';
    }
}

/* The store's answer.  May run inside sl_store_decide(). */
void sl_req_decided(void *arg, const struct sl_decision *d,
                    struct sl_lease *lease)
{
    struct sl_request *req = arg;
    const struct sl_upstream_conf *up = req->up;
    char *target = NULL;
    bool released;

    req->held.deciding = false;
    req->lease = lease;
    req->committed = false;
    req->resend_refused = false;
    req->decided_us = sl_time_mono_us();
    req->decision = *d;
    if (req->phase == SL_PHASE_ORPHANED) {
        /* MHD finished with the connection while the store was deciding. */
        sl_req_release_lease(req);
        sl_req_free(req);
        return;
    }
    sl_req_set_phase(req, req->phase == SL_PHASE_HELD_DECIDING ? SL_PHASE_HELD
                                                              : SL_PHASE_ACTIVE);
    if (req->client_gone) {
        /* Nothing will be sent: give back what the store just granted. */
        sl_req_release_lease(req);
        sl_req_unhold(req);
        sl_req_resume(req);
        return;
    }
    if (d->verdict == SL_VERDICT_STALE) {
        /* Matched under a configuration a reload replaced. */
        sl_req_redecide(req);
        return;
    }
    req->stale = 0;
    sl_req_count_decision(req, d);
    switch (d->verdict) {
    case SL_VERDICT_STALE:
        break;
    case SL_VERDICT_DENY: {
        /* Queue mode holds; so does a call already held for a retry. */
        struct sl_decision dd = *d;
        bool again = (sl_req_is_held(req) || req->rehold) && req->retries > 0;
        if (sl_req_hold(req, &dd, again) == 0)
            break;
        sl_req_unhold(req);
        sl_req_limited(req, &dd);
        break;
    }
    case SL_VERDICT_UNAVAILABLE: {
        char msg[320];
        req->rehold = false;
        sl_req_unhold(req);
        /* A rule named: its own bound (max_keys), not the store's. */
        if (d->rule != NULL)
            snprintf(msg, sizeof(msg), "rule \"%s\": %s", d->rule->name, d->reason);
        sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "limit_state_unavailable",
                     d->rule != NULL ? msg : d->reason, 1, "store_error");
        break;
    }
    case SL_VERDICT_ALLOW:
        released = sl_req_is_held(req) || req->rehold;
        req->rehold = false;
        if (sl_req_is_held(req)) {
            /* Released: the next held call of its bucket may fit too. */
            sl_req_unhold(req);
            req->w->queue_kick = true;
        }
        {
            const char *rest = sl_req_rest(req);
            bool empty = rest[0] == '\0' || rest[0] == '?';
            const char *base_path = strchr(strstr(up->url, "://") + 3, '/');
            /* The request target: the upstream's base path, then the rest
             * of the client's; "/leads" alone maps to the base path, or to
             * "/" without one. */
            if (asprintf(&target, "%s%s%s", base_path != NULL ? base_path : "",
                         empty && base_path == NULL ? "/" : "", rest) < 0)
                target = NULL;
        }
        if (target == NULL || sl_req_start_transfer(req, target) != 0) {
            sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "out_of_memory",
                         "sluice could not start the upstream call", 1,
                         "out_of_memory");
        } else {
            req->outcome = "forwarded";
            sl_metrics_call(&req->w->metrics, up,
                            released ? SL_OUT_RELEASED : SL_OUT_FORWARDED);
        }
        free(target);
        break;
    }
    if (sl_req_is_held(req)) {
        if (req->susp == SL_SUSP_DECIDE)
            req->susp = SL_SUSP_HELD;  /* stays suspended, body unread */
        return;
    }
    if ((req->susp == SL_SUSP_DECIDE || req->susp == SL_SUSP_HELD) &&
        req->easy != NULL && !req->has_body && req->pending == NULL &&
        !req->headers_ready && !req->xfer_done) {
        /* Forwarded, and no body to read: nothing for the connection to do
         * until the upstream's headers arrive, which resume it (as does the
         * transfer's end).  Resuming now would cost a pass of MHD over it,
         * two handler calls and a suspension again. */
        req->susp = SL_SUSP_HEADERS;
        return;
    }
    if (req->susp == SL_SUSP_DECIDE || req->susp == SL_SUSP_HELD)
        sl_req_resume(req);
}

void sl_req_redecide(struct sl_request *req)
{
    struct sl_worker *w = req->w;
    bool held;

    /* The store serves a newer generation than the worker may have seen.
     * The move only marks the held calls; this one is matched here. */
    sl_worker_adopt(w);
    if (req->rematch) {
        req->rematch = false;
        SL_ASSERT(w->nrematch > 0);
        w->nrematch--;
    }
    held = sl_req_is_held(req);
    if (++req->stale > 4) {
        /* Reloads faster than a decision: say so rather than loop. */
        sl_req_unhold(req);
        sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "reloading",
                     "the configuration is being reloaded; retry the call", 1,
                     "store_error");
        sl_req_resume(req);
        return;
    }
    if (held) {
        req->rehold = true;
        req->rehold_ticket = req->held.ticket;
        req->rehold_since_ms = req->held.since_ms;
        sl_queue_remove(&w->queue, &req->held);
        sl_req_set_phase(req, SL_PHASE_ACTIVE);
    }
    if (req->config != w->config) {
        sl_config_unref(req->config);
        req->config = sl_config_ref(w->config);
    }
    if (sl_req_match(req) != 0) {
        req->rehold = false;
        sl_req_resume(req);
        return;
    }
    sl_req_ask_again(req);
}

void sl_req_ask_again(struct sl_request *req)
{
    req->room_seq = sl_waitlists_seq(req->w->proxy->waitlists, &req->check);
    bool held = sl_req_is_held(req);

    req->held.deciding = held || req->rehold;
    sl_req_set_phase(req, held ? SL_PHASE_HELD_DECIDING : SL_PHASE_DECIDING);
    if (sl_store_decide(req->w->store, &req->check, sl_req_decided, req) != 0) {
        sl_req_set_phase(req, held ? SL_PHASE_HELD : SL_PHASE_ACTIVE);
        req->held.deciding = false;
        req->rehold = false;
        sl_req_unhold(req);
        sl_req_error(req, MHD_HTTP_SERVICE_UNAVAILABLE, "store_unavailable",
                     "the limit store cannot decide this call", 1, "store_error");
        sl_req_resume(req);
    }
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
    sl_buf_init(&req->saved, SL_SAVE_MAX);
    req->start_ms = sl_time_mono_ms();
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
    if (req->login == SL_LOGIN_READING)
        return sl_req_login_final(req);
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
    SL_ASSERT(w->nrequests > 0);
    w->nrequests--;
    if (req->rematch) {
        SL_ASSERT(w->nrematch > 0);
        w->nrematch--;
    }
    if (req->up != NULL && req->up->auth != NULL)
        sl_auth_forget(req);
    if (req->settle != NULL) {
        if (req->settle->pending > 0)
            req->settle->req = NULL;  /* the store's last word frees it */
        else
            free(req->settle);
    }
    while (req->hdrs != NULL) {
        struct sl_hdr *h = req->hdrs;
        req->hdrs = h->next;
        free(h);
    }
    if (req->pending != NULL)
        MHD_destroy_response(req->pending);
    curl_slist_free_all(req->req_headers);
    sl_check_clear(&req->check);
    sl_pipe_free(&req->upload);
    sl_pipe_free(&req->down);
    sl_req_spool_close(req);
    sl_buf_free(&req->saved);
    sl_buf_free(&req->scan);
    free(req->uri);
    sl_config_unref(req->config);
    free(req);
}

/*
 * The access line: who called (client address, app), what (upstream,
 * method, path without its query), what came of it, the `per` bucket and
 * the room left in the tightest rule, and where the time went (held in the
 * queue, upstream, total).  Never a query string, header or body.
 */
static void sl_req_access_log(struct sl_request *req)
{
    const struct sl_decision *d = &req->decision;
    const struct sl_rule *rule = d->rule;
    const char *q = strchr(req->uri, '?');
    size_t plen = q ? (size_t)(q - req->uri) : strlen(req->uri);
    const char *per = "-";
    char remaining[24] = "-", up_ms[24] = "-";
    int64_t total = sl_time_mono_ms() - req->start_ms;
    char shadows[512] = "", trace[33] = "-";
    size_t sn = 0;
    const char *share = d->verdict == SL_VERDICT_DENY && rule != NULL &&
                                rule->kind == SL_RULE_RATE
                            ? sl_share_denial_name(d->share) : NULL;

    sl_req_client_address(req);
    /* Shadow rules that would have denied it, comma-separated. */
    for (size_t i = 0; d->verdict == SL_VERDICT_ALLOW && d->shadow_mask &&
                       i < req->check.nhits; i++) {
        const struct sl_rule *r = req->check.hits[i].rule;
        if (r->kind != SL_RULE_PAUSE && (d->shadow_mask & (UINT64_C(1) << r->index)) &&
            sn + strlen(r->name) + 2 < sizeof(shadows))
            sn += (size_t)snprintf(shadows + sn, sizeof(shadows) - sn, "%s%s",
                                   sn ? "," : "", r->name);
    }
    if (rule != NULL && rule->kind != SL_RULE_PAUSE) {
        for (size_t i = 0; i < req->check.nhits; i++)
            if (req->check.hits[i].rule == rule && rule->per_kind != SL_PER_NONE)
                per = req->check.hits[i].key;
        if (d->verdict == SL_VERDICT_ALLOW && rule->kind == SL_RULE_RATE)
            snprintf(remaining, sizeof(remaining), "%llu",
                     (unsigned long long)d->remaining);
        else if (d->verdict == SL_VERDICT_DENY)
            snprintf(remaining, sizeof(remaining), "0");
    }
    if (req->sent_us > 0)
        snprintf(up_ms, sizeof(up_ms), "%.1f", (double)req->upstream_us / 1000.0);
    if (plen > 1024)
        plen = 1024;
    /* W3C trace context: the trace id of a well-formed traceparent
     * ("00-<32 hex>-<16 hex>-<2 hex>"), passed upstream untouched. */
    {
        const char *tp = req->conn != NULL
                             ? MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                           "traceparent")
                             : NULL;
        bool ok = tp != NULL && strlen(tp) >= 55 && tp[2] == '-' && tp[35] == '-' &&
                  tp[52] == '-';
        for (int i = 3; ok && i < 35; i++)
            ok = isxdigit((unsigned char)tp[i]) != 0;
        if (ok)
            snprintf(trace, sizeof(trace), "%.32s", tp + 3);
    }
    if (sl_log_is_json()) {
        char f[3072];
        size_t n = 0;
#define SL_F_STR(name, s, len)                                                  \
        do {                                                                    \
            n += (size_t)snprintf(f + n, sizeof(f) - n, "%s\"" name "\":\"",   \
                                  n ? "," : "");                                \
            sl_log_json_escape(f, sizeof(f) - 8, &n, (s), (len));               \
            n += (size_t)snprintf(f + n, sizeof(f) - n, "\"");                  \
        } while (0)
        n += (size_t)snprintf(f, sizeof(f), "\"msg\":\"access\"");
        SL_F_STR("request_id", sl_req_request_id(req), strlen(sl_req_request_id(req)));
        SL_F_STR("trace_id", trace, strlen(trace));
        SL_F_STR("client", req->client[0] ? req->client : "-",
                 strlen(req->client[0] ? req->client : "-"));
        SL_F_STR("app", req->check.app_name ? req->check.app_name : "-",
                 strlen(req->check.app_name ? req->check.app_name : "-"));
        SL_F_STR("upstream", req->up ? req->up->name : "-",
                 strlen(req->up ? req->up->name : "-"));
        SL_F_STR("method", req->method ? req->method : "-",
                 strlen(req->method ? req->method : "-"));
        SL_F_STR("path", req->uri, plen);
        n += (size_t)snprintf(f + n, sizeof(f) - n, ",\"status\":%u",
                              req->status_sent);
        SL_F_STR("outcome", req->outcome ? req->outcome : "-",
                 strlen(req->outcome ? req->outcome : "-"));
        SL_F_STR("rule", rule ? rule->name : "-", strlen(rule ? rule->name : "-"));
        SL_F_STR("per", per, strlen(per));
        if (shadows[0] != '\0')
            SL_F_STR("shadow_denied", shadows, strlen(shadows));
        if (share != NULL)
            SL_F_STR("share", share, strlen(share));
        n += (size_t)snprintf(f + n, sizeof(f) - n,
                              ",\"remaining\":%s,\"held_ms\":%lld,"
                              "\"upstream_ms\":%s,\"ms\":%lld,\"bytes_out\":%llu",
                              strcmp(remaining, "-") ? remaining : "null",
                              (long long)req->held_ms,
                              strcmp(up_ms, "-") ? up_ms : "null", (long long)total,
                              (unsigned long long)req->bytes_out);
#undef SL_F_STR
        if (n < sizeof(f))
            sl_log_json(SL_LOG_INFO, f);
        return;
    }
    sl_info("access client=%s app=%s upstream=%s method=%s path=%.*s status=%u "
            "outcome=%s rule=%s per=%s remaining=%s held_ms=%lld upstream_ms=%s "
            "ms=%lld bytes_out=%llu request_id=%s trace_id=%s%s%s%s%s",
            req->client[0] ? req->client : "-",
            req->check.app_name ? req->check.app_name : "-",
            req->up ? req->up->name : "-", req->method ? req->method : "-",
            (int)plen, req->uri, req->status_sent,
            req->outcome ? req->outcome : "-", rule ? rule->name : "-", per,
            remaining, (long long)req->held_ms, up_ms, (long long)total,
            (unsigned long long)req->bytes_out, sl_req_request_id(req), trace,
            shadows[0] ? " shadow_denied=" : "", shadows,
            share != NULL ? " share=" : "", share != NULL ? share : "");
}

void sl_request_completed(void *cls, struct MHD_Connection *conn,
                          void **con_cls, enum MHD_RequestTerminationCode toe)
{
    struct sl_request *req = *con_cls;
    struct sl_worker *w = cls;

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
    if (w->config->access_log && req->phase != SL_PHASE_NEW)
        sl_req_access_log(req);
    if (sl_req_deciding(req)) {
        /* The store still holds a pointer: its callback frees the lease. */
        sl_req_set_phase(req, SL_PHASE_ORPHANED);
        return;
    }
    sl_req_free(req);
}

