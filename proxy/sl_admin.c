/*
 * sl_admin — see sl_admin.h.
 *
 * A request for /status or /metrics asks worker 0's store for a snapshot.
 * The memory store answers before sl_store_snapshot() returns; Redis
 * answers later, so the connection is suspended and resumed from the
 * snapshot's callback (both on worker 0's thread).  When the shared store
 * cannot answer, the figures are those of this instance's memory store
 * (the local fallback's view), and say so ("figures": "local").
 *
 * GET /history reads the usage history (sl_history.h) of the rate rules
 * asked for: with Redis, the fleet's, one script run per rule on worker
 * 0's connection, answered asynchronously like a snapshot; with the memory
 * store, or when Redis cannot answer, this process's own rings, copied a
 * ring at a time under its mutex and formatted outside it ("figures":
 * "local" when Redis should have answered).
 *
 * Everything an admin request reads besides the snapshot is either
 * configuration (immutable), a process-wide atomic (queue depths, the
 * Redis outage flag), or a worker's counters read with relaxed loads.
 */
#include "sl_auth.h"
#include "sl_login_cache.h"
#include "sl_admin.h"

#include "sl_admin_ops.h"
#include "sl_buf.h"
#include "sl_alerts.h"
#include "sl_apps.h"
#include "sl_duration.h"
#include "sl_history.h"
#include "sl_log.h"
#include "sl_proxy.h"
#include "sl_time.h"
#include "sl_json.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "0.0.0"
#endif

/* The usage page, embedded at build time (cmake/embed.cmake). */
extern const unsigned char sl_admin_page[];
extern const unsigned long sl_admin_page_len;

enum sl_admin_what {
    SL_ADMIN_STATUS,
    SL_ADMIN_METRICS,
    SL_ADMIN_HISTORY,
    SL_ADMIN_OP,            /* an operator action (sl_admin_ops) */
};

/* An admin request waiting for (or answered by) a snapshot. */
struct sl_admin_req {
    struct sl_admin_req *prev, *next;   /* a->reqs */
    struct sl_admin *a;
    struct MHD_Connection *conn;
    enum sl_admin_what what;
    bool waiting;                       /* the store's callback is due */
    bool suspended;
    bool gone;                          /* MHD finished with it first */
    bool local;                         /* the memory store's figures */
    struct MHD_Response *resp;          /* the answer, once built */
    unsigned status;
    /* SL_ADMIN_HISTORY: the rules asked for, in CONFIG (referenced). */
    const struct sl_config *config;
    const struct sl_rule **rules;       /* owned array */
    const struct sl_upstream_conf **ups;    /* owned: each rule's upstream */
    size_t nrules;
    struct sl_admin_op *op;             /* SL_ADMIN_OP: owned */
    bool receiving;                     /* ... its body is coming in */
};

static void sl_admin_req_free(struct sl_admin_req *ar)
{
    if (ar->config != NULL)
        sl_config_unref(ar->config);
    free(ar->rules);
    free(ar->ups);
    sl_admin_op_free(ar->op);
    free(ar);
}

struct sl_admin {
    struct sl_worker *w;                /* its configuration is w->config */
    struct MHD_Daemon *mhd;
    struct sl_watch *watch;             /* on the daemon's epoll fd */
    struct sl_timer timer;              /* MHD_get_timeout() after a run */
    struct sl_timer tick;               /* the guard's deadlines */
    bool kick;                          /* run the daemon in this pass */
    struct sl_admin_req *reqs;
    struct sl_guard guard;              /* header deadlines, connection bounds */
};

/*
 * Connections: MHD's hard limit, and the guard's bounds below it (see
 * sl_guard.c).  Past SL_ADMIN_SOFT_LIMIT each new connection closes the
 * oldest one waiting for its request, so the spare slots always take a
 * probe in; one client address may keep SL_ADMIN_PER_ADDRESS waiting (a
 * browser opens 6, Prometheus and the kubelet 1 or 2).
 */
#define SL_ADMIN_CONNECTIONS 64u
#define SL_ADMIN_SOFT_LIMIT 56u
#define SL_ADMIN_PER_ADDRESS 16u

static const char *const sl_kind_names[] = {"rate", "concurrency", "pause"};

/* ---- small helpers ---- */

static const char *sl_band(const struct sl_config *c, double utilization)
{
    if (utilization >= c->critical_at)
        return "critical";
    if (utilization >= c->warn_at)
        return "warn";
    return "ok";
}

static double sl_ratio(uint64_t used, uint64_t limit)
{
    if (limit == 0)
        return used > 0 ? 1.0 : 0.0;
    return (double)used / (double)limit;
}

/* Seconds, rounded to the millisecond. */
static double sl_secs(int64_t us)
{
    return round((double)us / 1000.0) / 1000.0;
}

/* Constant-time comparison of A (LEN bytes) with the NUL-terminated B. */
static bool sl_token_equal(const char *a, size_t len, const char *b)
{
    size_t blen = strlen(b);
    unsigned char diff = (unsigned char)(len != blen);

    for (size_t i = 0; i < blen; i++)
        diff |= (unsigned char)((i < len ? a[i] : 0) ^ b[i]);
    return diff == 0;
}

/* Decode standard base64 S (LEN bytes) into OUT (CAP bytes).  Returns the
 * decoded length, or -1. */
static long sl_base64_decode(const char *s, size_t len, char *out, size_t cap)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned acc = 0;
    int bits = 0;
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        const char *p;
        if (s[i] == '=')
            break;
        p = memchr(tab, s[i], 64);
        if (p == NULL || s[i] == '\0')
            return -1;
        acc = (acc << 6) | (unsigned)(p - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n + 1 >= cap)
                return -1;
            out[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[n] = '\0';
    return (long)n;
}

/* Does the request carry the admin token (Bearer, or Basic password)? */
static bool sl_admin_authorized(const struct sl_admin *a,
                                struct MHD_Connection *conn)
{
    const char *h, *token = a->w->config->admin_token;
    char dec[600];
    long n;

    if (token == NULL)
        return true;
    h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (h == NULL)
        return false;
    if (strncasecmp(h, "Bearer ", 7) == 0) {
        h += 7;
        while (*h == ' ')
            h++;
        return sl_token_equal(h, strlen(h), token);
    }
    if (strncasecmp(h, "Basic ", 6) == 0) {
        const char *colon;
        h += 6;
        while (*h == ' ')
            h++;
        n = sl_base64_decode(h, strlen(h), dec, sizeof(dec));
        if (n < 0 || (colon = memchr(dec, ':', (size_t)n)) == NULL)
            return false;
        return sl_token_equal(colon + 1, (size_t)(dec + n - colon - 1), token);
    }
    return false;
}

/* ---- who may ask ---- */

/* Is SA a loopback address (127.0.0.0/8, ::1, 127/8 mapped into IPv6)? */
static bool sl_addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a6) ||
               (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
    }
    return false;
}

/* Does the address literal TEXT equal SA (IPv4 also when SA maps it)? */
static bool sl_addr_equals(const char *text, const struct sockaddr *sa)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (inet_pton(AF_INET, text, &a4) == 1) {
        if (sa->sa_family == AF_INET)
            return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == a4.s_addr;
        if (sa->sa_family == AF_INET6) {
            const struct in6_addr *l = &((const struct sockaddr_in6 *)sa)->sin6_addr;
            return IN6_IS_ADDR_V4MAPPED(l) && memcmp(l->s6_addr + 12, &a4, 4) == 0;
        }
        return false;
    }
    if (inet_pton(AF_INET6, text, &a6) == 1 && sa->sa_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)sa)->sin6_addr, &a6,
                      sizeof(a6)) == 0;
    return false;
}

/*
 * Does the request's Host name this listener?  A page on another site can
 * make a browser send requests here, and with DNS rebinding read the
 * answers, but its Host is then that site's name.  So the host part must
 * be the address the connection came in on (as ip, or [ipv6]), "localhost"
 * when that address is loopback, or a name in admin.hosts ("*": any).  The
 * port is not compared: port-forwards and published container ports
 * change it, and a rebinding page cannot choose the name.  No Host at all
 * (HTTP/1.0; MHD refuses HTTP/1.1 without one) is no browser's request.
 */
static bool sl_admin_host_ok(const struct sl_admin *a, struct MHD_Connection *conn)
{
    const struct sl_config *c = a->w->config;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");
    const union MHD_ConnectionInfo *ci;
    struct sockaddr_storage local;
    socklen_t llen = sizeof(local);
    const char *end, *port;
    char host[256];
    size_t n;

    if (h == NULL)
        return true;
    if (h[0] == '[') {
        end = strchr(h, ']');
        if (end == NULL)
            return false;
        port = end + 1;
        h++;
    } else {
        end = strchr(h, ':');
        port = end != NULL ? end : h + strlen(h);
        end = port;
    }
    if (*port != '\0' && (*port != ':' || strspn(port + 1, "0123456789") !=
                                               strlen(port + 1)))
        return false;
    n = (size_t)(end - h);
    if (n > 0 && h[n - 1] == '.')
        n--;  /* "localhost." is "localhost" */
    if (n == 0 || n >= sizeof(host))
        return false;
    for (size_t i = 0; i < n; i++)
        host[i] = (char)tolower((unsigned char)h[i]);
    host[n] = '\0';
    for (size_t i = 0; i < c->nadmin_hosts; i++)
        if (strcmp(c->admin_hosts[i], "*") == 0 || strcmp(c->admin_hosts[i], host) == 0)
            return true;
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL || getsockname(ci->connect_fd, (struct sockaddr *)&local, &llen) != 0)
        return false;
    if (strcmp(host, "localhost") == 0)
        return sl_addr_is_loopback((struct sockaddr *)&local);
    return sl_addr_equals(host, (struct sockaddr *)&local);
}

/*
 * Is this POST one a web page cannot send without asking first?  A form or
 * a no-cors fetch sends only "simple" requests (a Content-Type of
 * text/plain, a form's or multipart; no custom header); anything else
 * needs a CORS preflight, which this listener never grants.  So a
 * state-changing POST must carry Content-Type: application/json or
 * X-Sluice-Admin, and a cross-site page can then never make one.
 */
static bool sl_admin_post_ok(struct MHD_Connection *conn)
{
    const char *t = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    size_t n;

    if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Sluice-Admin") != NULL)
        return true;
    if (t == NULL)
        return false;
    while (*t == ' ' || *t == '\t')
        t++;
    n = strcspn(t, "; \t");
    return n == 16 && strncasecmp(t, "application/json", 16) == 0;
}

static struct MHD_Response *sl_text(const char *text, const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);

    if (r != NULL) {
        MHD_add_response_header(r, "Content-Type", type);
        MHD_add_response_header(r, "Cache-Control", "no-store");
    }
    return r;
}

/* Take ownership of BUF (LEN bytes, malloc'd). */
static struct MHD_Response *sl_owned(char *buf, size_t len, const char *type)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);

    if (r == NULL) {
        free(buf);
        return NULL;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    return r;
}

static enum MHD_Result sl_queue(struct MHD_Connection *conn, unsigned status,
                                struct MHD_Response *r)
{
    enum MHD_Result rc;

    if (r == NULL)
        return MHD_NO;
    rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* ---- the store's state ---- */

struct sl_store_state {
    bool shared_down;       /* Redis: this instance is in an outage */
    double down_since;      /* UNIX seconds, 0: not down */
    bool ready;
};

static void sl_admin_store_state(const struct sl_admin *a, struct sl_store_state *st)
{
    int64_t since = 0;

    memset(st, 0, sizeof(*st));
    st->ready = true;
    if (a->w->config->store_kind != SL_STORE_REDIS)
        return;
    st->shared_down = sl_store_redis_down(&since);
    st->down_since = since > 0 ? (double)since / 1000.0 : 0;
    st->ready = sl_store_ready(a->w->store);
}

static const char *const sl_policy_names[] = {"local", "deny", "allow"};

/* ---- /status ---- */

/* Sum of counter FIELD[IDX] over all workers (callers hold the proxy's
 * metrics_lock for reading).  A worker that has not moved to the newest
 * configuration yet may have fewer rows (ROWS, computed from its metrics
 * M): it has counted nothing there yet. */
#define SL_SUM(proxy, field, idx, rows)                                        \
    ({                                                                         \
        uint64_t _s = 0;                                                       \
        for (int _k = 0; _k < (proxy)->nworkers; _k++) {                       \
            struct sl_metrics *m = &(proxy)->workers[_k].metrics;              \
            if ((size_t)(idx) < (size_t)(rows))                                \
                _s += sl_metric_get(&m->field[idx]);                           \
        }                                                                      \
        _s;                                                                    \
    })
#define SL_CALLS_ROWS ((m->nups + 1) * SL_OUT_COUNT)
#define SL_DECISION_ROWS (m->nslots * SL_DECISION_RESULTS)
#define SL_APP_ROWS (m->nslots * m->napps)
#define SL_UP_ROWS (m->nups)

static json_t *sl_apps_json(const struct sl_usage *u)
{
    json_t *o = json_object();

    for (size_t i = 0; o != NULL && i < u->napps; i++)
        json_object_set_new(o, u->apps[i].name, json_integer((json_int_t)u->apps[i].calls));
    /* (App names are ASCII by construction: sl_apps.) */
    return o;
}

/* One share as configured: {max, reserve, lend, used}. */
static json_t *sl_share_json(const struct sl_share *sh, uint64_t used)
{
    json_t *e = json_object();

    json_object_set_new(e, "max", json_integer((json_int_t)sh->max));
    json_object_set_new(e, "reserve", json_integer((json_int_t)sh->reserve));
    json_object_set_new(e, "lend", json_boolean(sh->lend));
    json_object_set_new(e, "used", json_integer((json_int_t)used));
    return e;
}

/* Rule R's shares with each one's use in bucket U: app -> {max, reserve,
 * lend, used, left}; "*" counts every app not named, together. */
static json_t *sl_shares_json(const struct sl_rule *r, const struct sl_usage *u)
{
    json_t *o = json_object();
    uint64_t named = 0, all = 0;

    for (size_t i = 0; i < u->napps; i++)
        all += u->apps[i].calls;
    for (size_t k = 0; o != NULL && k < r->nshares; k++) {
        const struct sl_share *sh = &r->shares[k];
        uint64_t used = 0;
        json_t *e;
        if (sh == r->share_other)
            continue;
        for (size_t i = 0; i < u->napps; i++)
            if (strcmp(u->apps[i].name, sh->app) == 0)
                used = u->apps[i].calls;
        named += used;
        e = sl_share_json(sh, used);
        json_object_set_new(e, "left", json_integer((json_int_t)(
            used >= sh->max ? 0 : sh->max - used)));
        json_object_set_new(o, sh->app, e);
    }
    if (o != NULL && r->share_other != NULL)
        json_object_set_new(o, "*", sl_share_json(r->share_other,
                                                  all > named ? all - named : 0));
    return o;
}

/* The figures of bucket U of rule R into O (a rule or a bucket object). */
static void sl_usage_json(const struct sl_config *c, const struct sl_rule *r,
                          const struct sl_usage *u, json_t *o)
{
    double util = sl_ratio(u->used, r->limit);

    json_object_set_new(o, "used", json_integer((json_int_t)u->used));
    if (r->kind == SL_RULE_RATE)
        json_object_set_new(o, "reserved", json_integer((json_int_t)u->reserved));
    else
        json_object_set_new(o, "in_flight", json_integer((json_int_t)u->used));
    json_object_set_new(o, "remaining", json_integer((json_int_t)u->remaining));
    json_object_set_new(o, "utilization", json_real(round(util * 10000) / 10000));
    json_object_set_new(o, "band", json_string(sl_band(c, util)));
    json_object_set_new(o, "resets_in", u->resets_in_us >= 0
                                            ? json_real(sl_secs(u->resets_in_us))
                                            : json_null());
    json_object_set_new(o, "per_app", sl_apps_json(u));
    if (r->nshares > 0)
        json_object_set_new(o, "shares", sl_shares_json(r, u));
    if (r->kind == SL_RULE_RATE)
        json_object_set_new(o, "provider_remaining",
                            u->report_left >= 0 && !r->leaky ? json_integer(u->report_left)
                                                : json_null());
    /* Where "used" comes from: the provider's last report (plus the calls
     * sent since), or sluice's own count. */
    if (r->kind == SL_RULE_RATE && !r->leaky && r->sync != SL_SYNC_NONE)
        json_object_set_new(o, "source", json_string(u->from_provider ? "provider"
                                                                      : "sluice"));
    if (u->from_provider) {
        json_t *p = json_object();
        json_object_set_new(p, "reported_remaining", json_integer(u->report_value));
        json_object_set_new(p, "reported_used",
                            json_integer((json_int_t)r->limit - u->report_value));
        json_object_set_new(p, "age", u->report_age_us >= 0
                                          ? json_real(sl_secs(u->report_age_us))
                                          : json_null());
        json_object_set_new(p, "sent_since", json_integer((json_int_t)u->sent_since_report));
        json_object_set_new(o, "provider", p);
    }
}

/* Calls this instance answered over the limit of the rule (or pause) in
 * metric SLOT, by app: {app: n}, apps with none left out. */
static json_t *sl_refused_json(struct sl_proxy *proxy, size_t slot)
{
    json_t *o = json_object();
    unsigned napps = sl_apps_count(proxy->apps);
    size_t counted = proxy->nworkers > 0 ? proxy->workers[0].metrics.napps : 0;

    for (unsigned app = 0; o != NULL && app < napps && app < counted; app++) {
        uint64_t v = SL_SUM(proxy, app_denied, slot * counted + app, SL_APP_ROWS);
        if (v > 0)
            json_object_set_new(o, sl_apps_name(proxy->apps, (uint16_t)app),
                                json_integer((json_int_t)v));
    }
    return o;
}

static json_t *sl_rule_json(struct sl_admin *a, const struct sl_config *c,
                            const struct sl_rule_usage *ru)
{
    struct sl_proxy *proxy = a->w->proxy;
    size_t slot = ru->rule->metric_slot;
    const struct sl_rule *r = ru->rule;
    json_t *o = json_object();
    char win[SL_DURATION_FORMAT_MAX];
    static const struct sl_usage zero = {.key = "", .resets_in_us = -1,
                                         .report_left = -1};
    struct sl_usage none = zero;

    json_object_set_new(o, "name", json_string(r->name));
    json_object_set_new(o, "kind", json_string(r->leaky ? "bucket"
                                                        : sl_kind_names[r->kind]));
    json_object_set_new(o, "limit", json_integer((json_int_t)r->limit));
    if (r->leaky) {
        /* "window": the time a full bucket takes to drain. */
        sl_duration_format(r->window_us, win, sizeof(win));
        json_object_set_new(o, "bucket", json_integer((json_int_t)r->limit));
        json_object_set_new(o, "leak", json_string(r->leak_text));
        json_object_set_new(o, "window", json_string(win));
        json_object_set_new(o, "window_s", json_real(sl_secs(r->window_us)));
        json_object_set_new(o, "reset", json_string("leak"));
        json_object_set_new(o, "timezone", json_null());
        none.resets_in_us = 0;
        none.remaining = (uint64_t)(r->bucket_cap / r->leak.per_us);
    } else if (r->kind == SL_RULE_RATE) {
        sl_rule_window_text(r, win, sizeof(win));
        json_object_set_new(o, "window", json_string(win));
        json_object_set_new(o, "window_s", json_real(sl_secs(r->window_us)));
        json_object_set_new(o, "reset", json_string(r->calendar ? "calendar" : "rolling"));
        json_object_set_new(o, "timezone", r->calendar ? json_string(r->timezone)
                                                        : json_null());
        none.resets_in_us = 0;
    } else {
        json_object_set_new(o, "window", json_null());
        json_object_set_new(o, "window_s", json_null());
        json_object_set_new(o, "reset", json_null());
        json_object_set_new(o, "timezone", json_null());
    }
    if (!r->leaky)
        none.remaining = r->limit;
    json_object_set_new(o, "per", r->per_text ? json_string(r->per_text) : json_null());
    json_object_set_new(o, "mode", json_string(r->shadow ? "shadow" : "enforce"));
    if (r->shadow)
        json_object_set_new(o, "shadow_denied", json_integer((json_int_t)SL_SUM(
            proxy, decisions, slot * SL_DECISION_RESULTS + SL_DECISION_SHADOW_DENIED,
            SL_DECISION_ROWS)));
    /* A `per` rule's bar is its busiest bucket. */
    sl_usage_json(c, r, ru->n > 0 ? &ru->buckets[0] : &none, o);
    json_object_set_new(o, "refused_per_app", sl_refused_json(proxy, slot));
    if (r->per_kind != SL_PER_NONE) {
        json_t *list = json_array();
        for (size_t i = 0; i < ru->n && i < c->status_top; i++) {
            json_t *b = json_object();
            json_object_set_new(b, "key", sl_json_text(ru->buckets[i].key));
            sl_usage_json(c, r, &ru->buckets[i], b);
            json_array_append_new(list, b);
        }
        json_object_set_new(o, "buckets", list);
        json_object_set_new(o, "buckets_total", json_integer((json_int_t)ru->nbuckets));
    }
    return o;
}

static json_t *sl_status_json(struct sl_admin *a, const struct sl_snapshot *snap,
                              bool shared)
{
    /* The snapshot's generation: its upstreams and rules are these. */
    const struct sl_config *c = snap->config;
    struct sl_proxy *proxy = a->w->proxy;
    struct sl_store_state st;
    double now = sl_time_wall();
    int64_t mono = sl_time_mono_ms();
    json_t *root = json_object(), *store = json_object(), *ups = json_array();
    char iso[32];

    sl_admin_store_state(a, &st);
    sl_time_iso(now, iso, sizeof(iso));
    json_object_set_new(root, "version", json_string(SLUICE_VERSION));
    json_object_set_new(root, "now", json_string(iso));
    json_object_set_new(root, "now_unix", json_real(round(now * 1000) / 1000));
    json_object_set_new(root, "uptime_s",
                        json_real(round(now * 1000 - (double)proxy->started_ms) / 1000));
    {
        json_t *cf = json_object();
        char loaded[32];
        sl_time_iso((double)c->loaded_ms / 1000.0, loaded, sizeof(loaded));
        json_object_set_new(cf, "generation", json_integer((json_int_t)c->generation));
        json_object_set_new(cf, "serving", json_integer((json_int_t)sl_proxy_serving(proxy)));
        json_object_set_new(cf, "loaded_at", json_string(loaded));
        json_object_set_new(cf, "loaded_at_unix",
                            json_real((double)c->loaded_ms / 1000.0));
        json_object_set_new(cf, "file", proxy->config_path != NULL
                                            ? sl_json_text(proxy->config_path)
                                            : json_null());
        json_object_set_new(cf, "reloads", json_pack(
            "{s:I,s:I,s:I}",
            "ok", (json_int_t)atomic_load(&proxy->reloads[SL_RELOAD_OK]),
            "invalid", (json_int_t)atomic_load(&proxy->reloads[SL_RELOAD_INVALID]),
            "refused", (json_int_t)atomic_load(&proxy->reloads[SL_RELOAD_REFUSED])));
        json_object_set_new(root, "config", cf);
    }
    json_object_set_new(store, "kind", json_string(c->store_kind == SL_STORE_REDIS
                                                       ? "redis" : "memory"));
    json_object_set_new(store, "state", json_string(st.shared_down ? "down" : "up"));
    json_object_set_new(store, "ready", json_boolean(st.ready));
    if (c->store_kind == SL_STORE_REDIS) {
        char addr[600];
        if (c->redis_master == NULL && c->redis_nseeds == 0)
            snprintf(addr, sizeof(addr), "%s:%d/%d", c->redis_host, c->redis_port,
                     c->redis_db);
        else
            sl_config_store_address(c, addr, sizeof(addr));
        json_object_set_new(store, "address", json_string(addr));
        json_object_set_new(store, "on_store_error",
                            json_string(sl_policy_names[c->on_store_error]));
    } else {
        json_object_set_new(store, "address", json_null());
        json_object_set_new(store, "on_store_error", json_null());
    }
    if (st.shared_down) {
        sl_time_iso(st.down_since, iso, sizeof(iso));
        json_object_set_new(store, "down_since", json_string(iso));
        json_object_set_new(store, "down_since_unix", json_real(st.down_since));
        json_object_set_new(store, "fallback",
                            json_string(sl_policy_names[c->on_store_error]));
    } else {
        json_object_set_new(store, "down_since", json_null());
        json_object_set_new(store, "down_since_unix", json_null());
        json_object_set_new(store, "fallback", json_null());
    }
    json_object_set_new(store, "figures", json_string(shared ? "shared" : "local"));
    json_object_set_new(root, "store", store);
    json_object_set_new(root, "bands", json_pack("{s:f,s:f}", "warn", c->warn_at,
                                                 "critical", c->critical_at));
    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *up = &c->upstreams[i];
        const struct sl_upstream_usage *uu = &snap->ups[i];
        json_t *u = json_object(), *rules = json_array(), *queue = json_object();
        int64_t oldest = 0;

        json_object_set_new(u, "name", json_string(up->name));
        json_object_set_new(u, "prefix", json_string(up->prefix));
        if (uu->paused_us > 0) {
            double until = now + (double)uu->paused_us / 1e6;
            sl_time_iso(until + 0.999, iso, sizeof(iso));
            json_t *p = json_pack("{s:s,s:f,s:f}", "resumes_at", iso,
                                  "resumes_at_unix", round(until * 1000) / 1000,
                                  "resumes_in", sl_secs(uu->paused_us));
            json_object_set_new(p, "reason", sl_json_text(
                uu->pause_reason[0] ? uu->pause_reason : "the provider asked to stop"));
            json_object_set_new(p, "set_by", json_string(uu->pause_operator
                                                             ? "operator" : "provider"));
            json_object_set_new(u, "paused", p);
        } else {
            json_object_set_new(u, "paused", json_null());
        }
        for (int k = 0; k < proxy->nworkers; k++) {
            int64_t t = sl_queue_oldest_ms(&proxy->workers[k].queue, i);
            if (t > 0 && (oldest == 0 || t < oldest))
                oldest = t;
        }
        json_object_set_new(queue, "depth", json_integer(
            sl_queue_count(&a->w->queue, i)));
        json_object_set_new(queue, "oldest_wait", oldest > 0
            ? json_real((double)(mono - oldest) / 1000.0) : json_null());
        json_object_set_new(queue, "max_queue", json_integer(up->max_queue));
        json_object_set_new(u, "queue", queue);
        /* Calls refused while the upstream was paused, by app. */
        json_object_set_new(u, "paused_refused_per_app",
                            sl_refused_json(proxy, up->pause_rule.metric_slot));
        for (size_t k = 0; k < up->nrules; k++) {
            const struct sl_rule *r = uu->rules[k].rule;
            json_t *ro = sl_rule_json(a, c, &uu->rules[k]);
            if (ro != NULL && r->login_cache && proxy->login_cache != NULL) {
                /* Figures only: never a digest, a credential or a token. */
                struct sl_login_stats ls;
                json_t *lo = json_object();
                sl_login_cache_stats(proxy->login_cache,
                                     sl_login_cache_tag(up->name, r->name),
                                     sl_time_mono_ms(), &ls);
                json_object_set_new(lo, "entries", json_integer((json_int_t)ls.entries));
                json_object_set_new(lo, "hits", json_integer((json_int_t)ls.hits));
                json_object_set_new(lo, "misses", json_integer((json_int_t)ls.misses));
                json_object_set_new(lo, "stored", json_integer((json_int_t)ls.stored));
                json_object_set_new(lo, "max_entries",
                                    json_integer((json_int_t)r->login_cache_max));
                json_object_set_new(ro, "login_cache", lo);
            }
            json_array_append_new(rules, ro);
        }
        json_object_set_new(u, "rules", rules);
        if (up->auth != NULL) {
            /* The token broker's state: never a secret or the token. */
            struct sl_auth *ba = sl_auth_of(proxy, up);
            json_object_set_new(u, "auth", ba != NULL ? sl_auth_status(ba) : json_null());
        }
        json_array_append_new(ups, u);
    }
    json_object_set_new(root, "upstreams", ups);
    {
        /* Held calls by app, over every upstream (this instance). */
        json_t *q = json_object();
        unsigned napps = sl_apps_count(proxy->apps);
        for (unsigned app = 0; q != NULL && app < napps; app++) {
            unsigned held = sl_queue_app_count(&a->w->queue, (uint16_t)app);
            if (held > 0)
                json_object_set_new(q, sl_apps_name(proxy->apps, (uint16_t)app),
                                    json_integer(held));
        }
        json_object_set_new(root, "queue_by_app", q);
    }
    return root;
}

/* ---- /metrics ---- */

/* A label value with \, " and newline escaped (exposition format). */
static const char *sl_label(const char *s, char *buf, size_t len)
{
    size_t n = 0;

    for (; *s && n + 3 < len; s++) {
        if (*s == '\\' || *s == '"') {
            buf[n++] = '\\';
            buf[n++] = *s;
        } else if (*s == '\n') {
            buf[n++] = '\\';
            buf[n++] = 'n';
        } else {
            buf[n++] = *s;
        }
    }
    buf[n] = '\0';
    return buf;
}

enum sl_app_counter { SL_APP_CALLS, SL_APP_DENIED };

/* One per-app counter family (calls allowed, or refused) for every rule of
 * CONFIG -- and, for refusals, every upstream's pause -- with a line per
 * app that has any. */
static void sl_app_counters_text(struct sl_buf *t, struct sl_proxy *proxy,
                                 const struct sl_config *c, const char *name,
                                 enum sl_app_counter which, unsigned napps)
{
    size_t napps_counted = proxy->nworkers > 0 ? proxy->workers[0].metrics.napps : 0;
    char ul[256], rl[256], al[256];

    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *up = &c->upstreams[i];
        size_t nrules = up->nrules + (which == SL_APP_DENIED);
        sl_label(up->name, ul, sizeof(ul));
        for (size_t k = 0; k < nrules; k++) {
            const struct sl_rule *r = k < up->nrules ? &up->rules[k] : &up->pause_rule;
            size_t slot = r->metric_slot;
            sl_label(r->name, rl, sizeof(rl));
            for (unsigned app = 0; app < napps && app < napps_counted; app++) {
                uint64_t v = which == SL_APP_CALLS
                                 ? SL_SUM(proxy, app_calls, slot * napps_counted + app,
                                          SL_APP_ROWS)
                                 : SL_SUM(proxy, app_denied, slot * napps_counted + app,
                                          SL_APP_ROWS);
                if (v == 0)
                    continue;
                sl_buf_printf(t, "%s{upstream=\"%s\",rule=\"%s\",app=\"%s\"} %llu\n", name,
                           ul, rl, sl_label(sl_apps_name(proxy->apps, (uint16_t)app), al,
                                            sizeof(al)),
                           (unsigned long long)v);
            }
        }
    }
}

/* The HELP and TYPE lines of family F, from its row (sl_metrics.c). */
static void sl_help(struct sl_buf *t, enum sl_metric_family f)
{
    const struct sl_metric_desc *d = &sl_metric_families[f];

    sl_buf_printf(t, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name, d->type);
}


static void sl_hist_text(struct sl_buf *t, struct sl_proxy *proxy, const char *name,
                         const char *labels, size_t up, bool held,
                         const double *bounds)
{
    uint64_t cum = 0, count = 0, sum = 0;

    for (size_t b = 0; b <= SL_HIST_BOUNDS; b++) {
        for (int k = 0; k < proxy->nworkers; k++) {
            struct sl_metrics *m = &proxy->workers[k].metrics;
            struct sl_hist *h;
            if (up >= m->nups)
                continue;
            h = held ? &m->held[up] : &m->latency[up];
            cum += sl_metric_get(&h->buckets[b]);
            if (b == 0) {
                count += sl_metric_get(&h->count);
                sum += sl_metric_get(&h->sum_us);
            }
        }
        if (b < SL_HIST_BOUNDS)
            sl_buf_printf(t, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, bounds[b],
                       (unsigned long long)cum);
        else
            sl_buf_printf(t, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
                       (unsigned long long)cum);
    }
    sl_buf_printf(t, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels,
               (double)sum / 1e6, name, labels, (unsigned long long)count);
}

/* Histogram NAME of every upstream. */
static void sl_hists_text(struct sl_buf *t, struct sl_proxy *proxy,
                          const struct sl_config *c, const char *name, bool held,
                          const double *bounds)
{
    char ul[200], labels[300];

    for (size_t i = 0; i < c->nupstreams; i++) {
        snprintf(labels, sizeof(labels), "upstream=\"%s\"",
                 sl_label(c->upstreams[i].name, ul, sizeof(ul)));
        sl_hist_text(t, proxy, name, labels, c->upstreams[i].metric_id, held, bounds);
    }
}

static void sl_metrics_text(struct sl_admin *a, const struct sl_snapshot *snap,
                            struct sl_buf *t)
{
    /* The snapshot's generation (worker 0's when there is none). */
    const struct sl_config *c = snap != NULL ? snap->config : a->w->config;
    struct sl_proxy *proxy = a->w->proxy;
    struct sl_store_state st;
    char ul[200], rl[200], al[200], labels[700];
    unsigned napps = sl_apps_count(proxy->apps);

    sl_admin_store_state(a, &st);
    sl_help(t, SL_MF_BUILD_INFO);
    sl_buf_printf(t, "sluice_build_info{version=\"%s\"} 1\n", SLUICE_VERSION);
    sl_help(t, SL_MF_START_TIME);
    sl_buf_printf(t, "sluice_start_time_seconds %.3f\n", (double)proxy->started_ms / 1000.0);
    sl_help(t, SL_MF_CONFIG_RELOADS);
    for (int i = 0; i < SL_RELOAD_RESULTS; i++)
        sl_buf_printf(t, "sluice_config_reloads_total{result=\"%s\"} %llu\n",
                   sl_reload_result_names[i],
                   (unsigned long long)atomic_load(&proxy->reloads[i]));
    sl_help(t, SL_MF_CONFIG_GENERATION);
    sl_buf_printf(t, "sluice_config_generation %llu\n",
               (unsigned long long)atomic_load(&proxy->generation));
    sl_help(t, SL_MF_CONFIG_LOADED);
    sl_buf_printf(t, "sluice_config_loaded_timestamp_seconds %.3f\n",
               (double)c->loaded_ms / 1000.0);

    sl_help(t, SL_MF_CALLS);
    for (size_t i = 0; i <= c->nupstreams; i++) {
        size_t row = i < c->nupstreams ? c->upstreams[i].metric_id + 1 : 0;
        sl_label(i < c->nupstreams ? c->upstreams[i].name : "-", ul, sizeof(ul));
        for (int o = 0; o < SL_OUT_COUNT; o++)
            sl_buf_printf(t, "sluice_calls_total{upstream=\"%s\",outcome=\"%s\"} %llu\n",
                       ul, sl_outcome_names[o],
                       (unsigned long long)SL_SUM(proxy, calls,
                                                  row * SL_OUT_COUNT + (size_t)o,
                                                  SL_CALLS_ROWS));
    }

    sl_help(t, SL_MF_DECISIONS);
    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *up = &c->upstreams[i];
        sl_label(up->name, ul, sizeof(ul));
        for (size_t k = 0; k <= up->nrules; k++) {
            size_t slot = sl_upstream_rule(up, k)->metric_slot;
            sl_label(sl_upstream_rule(up, k)->name, rl, sizeof(rl));
            for (int res = 0; res < SL_DECISION_RESULTS; res++)
                sl_buf_printf(t, "sluice_decisions_total{upstream=\"%s\",rule=\"%s\","
                           "result=\"%s\"} %llu\n", ul, rl, sl_decision_names[res],
                           (unsigned long long)SL_SUM(proxy, decisions,
                                                      slot * SL_DECISION_RESULTS + (size_t)res,
                                                      SL_DECISION_ROWS));
        }
    }

    sl_help(t, SL_MF_APP_CALLS);
    sl_app_counters_text(t, proxy, c, sl_metric_families[SL_MF_APP_CALLS].name, SL_APP_CALLS, napps);
    sl_help(t, SL_MF_APP_DENIED);
    sl_app_counters_text(t, proxy, c, sl_metric_families[SL_MF_APP_DENIED].name, SL_APP_DENIED, napps);

    /* Gauges from the snapshot: per rule, the busiest bucket. */
    for (int g = SL_MF_RULE_LIMIT; g <= SL_MF_RULE_BUCKETS; g++) {
        sl_help(t, (enum sl_metric_family)g);
        for (size_t i = 0; snap != NULL && i < c->nupstreams; i++) {
            const struct sl_upstream_conf *up = &c->upstreams[i];
            sl_label(up->name, ul, sizeof(ul));
            for (size_t k = 0; k < up->nrules; k++) {
                const struct sl_rule_usage *ru = &snap->ups[i].rules[k];
                const struct sl_rule *r = ru->rule;
                const struct sl_usage *u = ru->n > 0 ? &ru->buckets[0] : NULL;
                uint64_t used = u ? u->used : 0;
                double v = 0;
                switch (g) {
                case SL_MF_RULE_LIMIT: v = (double)r->limit; break;
                case SL_MF_RULE_USED: v = (double)used; break;
                case SL_MF_RULE_REMAINING:
                    v = u ? (double)u->remaining : (double)r->limit;
                    break;
                case SL_MF_RULE_UTILIZATION: v = sl_ratio(used, r->limit); break;
                case SL_MF_RULE_RESET:
                    v = u && u->resets_in_us > 0 ? sl_secs(u->resets_in_us) : 0;
                    break;
                default: v = (double)(r->per_kind != SL_PER_NONE ? ru->nbuckets
                                                                  : u && used ? 1 : 0);
                }
                snprintf(labels, sizeof(labels), "upstream=\"%s\",rule=\"%s\"", ul,
                         sl_label(r->name, rl, sizeof(rl)));
                sl_buf_printf(t, "%s{%s} %.15g\n", sl_metric_families[g].name, labels, v);
            }
        }
    }
    sl_help(t, SL_MF_RULE_APP_USED);
    for (size_t i = 0; snap != NULL && i < c->nupstreams; i++) {
        const struct sl_upstream_conf *up = &c->upstreams[i];
        sl_label(up->name, ul, sizeof(ul));
        for (size_t k = 0; k < up->nrules; k++) {
            const struct sl_rule_usage *ru = &snap->ups[i].rules[k];
            if (ru->n == 0)
                continue;
            sl_label(up->rules[k].name, rl, sizeof(rl));
            for (size_t p = 0; p < ru->buckets[0].napps; p++)
                sl_buf_printf(t, "sluice_rule_app_used{upstream=\"%s\",rule=\"%s\","
                           "app=\"%s\"} %llu\n", ul, rl,
                           sl_label(ru->buckets[0].apps[p].name, al, sizeof(al)),
                           (unsigned long long)ru->buckets[0].apps[p].calls);
        }
    }

    sl_help(t, SL_MF_RULE_APP_SHARE);
    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *up = &c->upstreams[i];
        sl_label(up->name, ul, sizeof(ul));
        for (size_t k = 0; k < up->nrules; k++) {
            const struct sl_rule *r = &up->rules[k];
            sl_label(r->name, rl, sizeof(rl));
            for (size_t p = 0; p < r->nshares; p++) {
                sl_label(r->shares[p].app, al, sizeof(al));
                sl_buf_printf(t, "sluice_rule_app_share{upstream=\"%s\",rule=\"%s\","
                           "app=\"%s\",kind=\"max\"} %llu\n", ul, rl, al,
                           (unsigned long long)r->shares[p].max);
                sl_buf_printf(t, "sluice_rule_app_share{upstream=\"%s\",rule=\"%s\","
                           "app=\"%s\",kind=\"reserve\"} %llu\n", ul, rl, al,
                           (unsigned long long)r->shares[p].reserve);
            }
        }
    }

    sl_help(t, SL_MF_QUEUE_DEPTH);
    for (size_t i = 0; i < c->nupstreams; i++)
        sl_buf_printf(t, "sluice_queue_depth{upstream=\"%s\"} %u\n",
                   sl_label(c->upstreams[i].name, ul, sizeof(ul)),
                   sl_queue_count(&a->w->queue, i));
    sl_help(t, SL_MF_APP_QUEUE_DEPTH);
    for (unsigned app = 0; app < napps; app++) {
        unsigned held = sl_queue_app_count(&a->w->queue, (uint16_t)app);
        if (held > 0)
            sl_buf_printf(t, "sluice_app_queue_depth{app=\"%s\"} %u\n",
                       sl_label(sl_apps_name(proxy->apps, (uint16_t)app), al, sizeof(al)),
                       held);
    }
    sl_help(t, SL_MF_QUEUE_WAIT);
    sl_hists_text(t, proxy, c, sl_metric_families[SL_MF_QUEUE_WAIT].name, true, sl_hist_held_bounds);
    sl_help(t, SL_MF_UPSTREAM_DURATION);
    sl_hists_text(t, proxy, c, sl_metric_families[SL_MF_UPSTREAM_DURATION].name,
                  false,
                  sl_hist_latency_bounds);
    sl_help(t, SL_MF_PROVIDER_PAUSES);
    for (size_t i = 0; i < c->nupstreams; i++)
        sl_buf_printf(t, "sluice_provider_pauses_total{upstream=\"%s\"} %llu\n",
                   sl_label(c->upstreams[i].name, ul, sizeof(ul)),
                   (unsigned long long)SL_SUM(proxy, pauses, c->upstreams[i].metric_id,
                                              SL_UP_ROWS));
    sl_help(t, SL_MF_PROVIDER_PAUSE_REMAINING);
    for (size_t i = 0; snap != NULL && i < c->nupstreams; i++)
        sl_buf_printf(t, "sluice_provider_pause_remaining_seconds{upstream=\"%s\"} %.3f\n",
                   sl_label(c->upstreams[i].name, ul, sizeof(ul)),
                   sl_secs(snap->ups[i].paused_us));
    sl_help(t, SL_MF_STORE_UP);
    sl_buf_printf(t, "sluice_store_up{store=\"%s\"} %d\n",
               c->store_kind == SL_STORE_REDIS ? "redis" : "memory", !st.shared_down);
    sl_help(t, SL_MF_STORE_ERRORS);
    sl_buf_printf(t, "sluice_store_errors_total{store=\"%s\"} %llu\n",
               c->store_kind == SL_STORE_REDIS ? "redis" : "memory",
               (unsigned long long)(c->store_kind == SL_STORE_REDIS
                                        ? sl_store_redis_errors() : 0));
    sl_help(t, SL_MF_APPS);
    sl_buf_printf(t, "sluice_apps %u\n", napps);
    {
        uint64_t n[SL_ALERT_RESULTS] = {0};
        sl_alerts_counts(a->w->alerts, n);
        sl_help(t, SL_MF_ALERTS);
        for (int i = 0; i < SL_ALERT_RESULTS; i++)
            sl_buf_printf(t, "sluice_alerts_total{result=\"%s\"} %llu\n",
                       sl_alert_result_names[i], (unsigned long long)n[i]);
    }
}

/* ---- /history ---- */

/* One rule's history as JSON: totals per app (busiest first) and the
 * minutes that hold calls. */
static json_t *sl_history_rule_json(const struct sl_rule *r, const struct sl_hist_view *v)
{
    json_t *o = json_object(), *apps = json_object(), *mins = json_array();
    char win[SL_DURATION_FORMAT_MAX];
    uint64_t *tot = calloc(v->nnames ? v->nnames : 1, sizeof(*tot));
    size_t *order = calloc(v->nnames ? v->nnames : 1, sizeof(*order));
    uint64_t all = 0;

    if (o == NULL || apps == NULL || mins == NULL || tot == NULL || order == NULL) {
        json_decref(o);
        json_decref(apps);
        json_decref(mins);
        free(tot);
        free(order);
        return NULL;
    }
    json_object_set_new(o, "name", json_string(r->name));
    json_object_set_new(o, "limit", json_integer((json_int_t)r->limit));
    if (r->calendar && r->cal.month)
        snprintf(win, sizeof(win), "1mo");
    else
        sl_duration_format(r->window_us, win, sizeof(win));
    json_object_set_new(o, "window", json_string(win));
    json_object_set_new(o, "window_s", json_real(sl_secs(r->window_us)));
    json_object_set_new(o, "reset", json_string(r->calendar ? "calendar" : "rolling"));
    json_object_set_new(o, "per", r->per_text ? json_string(r->per_text) : json_null());
    for (size_t i = 0; i < v->ncells;) {
        json_t *m = json_object(), *ma = json_object();
        int64_t minute = v->cells[i].minute;
        uint64_t calls = 0;
        for (; i < v->ncells && v->cells[i].minute == minute; i++) {
            const struct sl_hist_cell *c = &v->cells[i];
            json_object_set_new(ma, v->names[c->name], json_integer((json_int_t)c->n));
            calls += c->n;
            tot[c->name] += c->n;
        }
        json_object_set_new(m, "t", json_integer((json_int_t)(minute * 60)));
        json_object_set_new(m, "calls", json_integer((json_int_t)calls));
        json_object_set_new(m, "apps", ma);
        json_array_append_new(mins, m);
        all += calls;
    }
    /* Busiest first (insertion sort: a few dozen names at most). */
    for (size_t i = 0; i < v->nnames; i++) {
        size_t j = i;
        for (; j > 0 && (tot[order[j - 1]] < tot[i] ||
                         (tot[order[j - 1]] == tot[i] &&
                          strcmp(v->names[order[j - 1]], v->names[i]) > 0)); j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    for (size_t i = 0; i < v->nnames; i++)
        json_object_set_new(apps, v->names[order[i]], json_integer((json_int_t)tot[order[i]]));
    json_object_set_new(o, "calls", json_integer((json_int_t)all));
    json_object_set_new(o, "apps", apps);
    json_object_set_new(o, "minutes", mins);
    free(tot);
    free(order);
    return o;
}

/* The /history document for AR's rules from VIEWS (one per rule). */
static struct MHD_Response *sl_history_render(struct sl_admin_req *ar,
                                              const struct sl_hist_view *views,
                                              bool shared)
{
    const struct sl_config *c = ar->config;
    json_t *root = json_object(), *ups = json_array(), *cur = NULL;
    const struct sl_upstream_conf *cur_up = NULL;
    double now = sl_time_wall();
    char iso[32], *text;

    sl_time_iso(now, iso, sizeof(iso));
    json_object_set_new(root, "now", json_string(iso));
    json_object_set_new(root, "now_unix", json_real(round(now * 1000.0) / 1000.0));
    json_object_set_new(root, "minutes", json_integer(SL_HIST_MINUTES));
    json_object_set_new(root, "figures", json_string(shared ? "shared" : "local"));
    json_object_set_new(root, "bands", json_pack("{s:f,s:f}", "warn", c->warn_at,
                                                 "critical", c->critical_at));
    for (size_t i = 0; i < ar->nrules; i++) {
        json_t *rj = sl_history_rule_json(ar->rules[i], &views[i]);
        if (rj == NULL) {
            json_decref(root);
            json_decref(ups);
            return NULL;
        }
        if (ar->ups[i] != cur_up) {
            json_t *u = json_object();
            cur_up = ar->ups[i];
            cur = json_array();
            json_object_set_new(u, "name", json_string(cur_up->name));
            json_object_set_new(u, "rules", cur);
            json_array_append_new(ups, u);
        }
        json_array_append_new(cur, rj);
    }
    json_object_set_new(root, "upstreams", ups);
    text = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(root);
    if (text == NULL)
        return NULL;
    return sl_owned(text, strlen(text), "application/json");
}

/* sl_history_cb: the fleet's history is in (or Redis could not answer:
 * this process's own, then). */
static void sl_admin_history_done(void *arg, struct sl_hist_view *views,
                                  const char *error)
{
    struct sl_admin_req *ar = arg;
    struct sl_admin *a = ar->a;
    struct sl_hist_view *own = NULL;
    bool shared = views != NULL;

    if (views == NULL && !ar->gone) {
        int64_t now_ms = sl_store_wall(a->w->store) / 1000;
        if (error != NULL)
            sl_debug("admin: the shared history is unavailable (%s): showing "
                     "this instance's", error);
        own = calloc(ar->nrules ? ar->nrules : 1, sizeof(*own));
        for (size_t i = 0; own != NULL && i < ar->nrules; i++)
            if (sl_history_view(a->w->proxy->history, ar->rules[i]->metric_slot,
                                now_ms, a->w->proxy->apps, &own[i]) != 0) {
                for (size_t k = 0; k < i; k++)
                    sl_hist_view_clear(&own[k]);
                free(own);
                own = NULL;
            }
        views = own;
        shared = a->w->config->store_kind != SL_STORE_REDIS;
    }
    if (!ar->gone) {
        ar->waiting = false;
        ar->resp = views != NULL ? sl_history_render(ar, views, shared) : NULL;
        ar->status = MHD_HTTP_OK;
        if (ar->resp == NULL) {
            ar->resp = sl_text("{\"error\":\"unavailable\",\"message\":\"sluice "
                               "could not read its usage history (out of memory)\"}\n",
                               "application/json");
            ar->status = MHD_HTTP_SERVICE_UNAVAILABLE;
        }
    }
    for (size_t i = 0; views != NULL && i < ar->nrules; i++)
        sl_hist_view_clear(&views[i]);
    free(views);
    if (ar->gone) {
        sl_admin_req_free(ar);
        return;
    }
    if (ar->suspended) {
        ar->suspended = false;
        MHD_resume_connection(ar->conn);
        a->kick = true;
    }
}

/* The query of a /history request. */
struct sl_history_query {
    const char *upstream, *rule;
    const char *bad;                    /* an unknown or repeated parameter */
    bool repeated;
};

static enum MHD_Result sl_history_arg(void *cls, enum MHD_ValueKind kind,
                                      const char *key, const char *value)
{
    struct sl_history_query *q = cls;
    const char **slot = NULL;

    (void)kind;
    if (strcmp(key, "upstream") == 0)
        slot = &q->upstream;
    else if (strcmp(key, "rule") == 0)
        slot = &q->rule;
    if (slot == NULL || *slot != NULL) {
        q->bad = key;
        q->repeated = slot != NULL;
        return MHD_NO;
    }
    *slot = value != NULL ? value : "";
    return MHD_YES;
}

/* A JSON error answer: {"error": CODE, "message": MESSAGE}. */
/* Answer J (taken) with STATUS as one JSON line. */
static enum MHD_Result sl_queue_json(struct MHD_Connection *conn, unsigned status,
                                     json_t *j)
{
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    size_t n;

    json_decref(j);
    if (text == NULL)
        return MHD_NO;
    n = strlen(text);
    text[n] = '\n';  /* json_dumps' NUL becomes the line's end */
    return sl_queue(conn, status, sl_owned(text, n + 1, "application/json"));
}

static enum MHD_Result sl_json_error(struct MHD_Connection *conn, unsigned status,
                                     const char *code, const char *message)
{
    return sl_queue_json(conn, status, json_pack("{s:s,s:o}", "error", code, "message",
                                                 sl_json_text(message)));
}

/*
 * GET /history[?upstream=NAME[&rule=NAME]]: the usage history of every rate
 * rule (of one upstream, or one rule).  400 for an unknown parameter or a
 * rule without its upstream, 404 for a name not configured, 400 for a rule
 * that keeps no history (concurrency).
 */
static enum MHD_Result sl_admin_history(struct sl_admin *a, struct MHD_Connection *conn,
                                        void **con_cls)
{
    const struct sl_config *c = a->w->config;
    struct sl_history_query q = {0};
    struct sl_admin_req *ar;
    char msg[256];
    size_t total = 0;
    int rc;

    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, sl_history_arg, &q);
    if (q.bad != NULL) {
        snprintf(msg, sizeof(msg), q.repeated
                     ? "/history takes \"%.64s\" once"
                     : "/history takes the parameters upstream and rule, not \"%.64s\"",
                 q.bad);
        return sl_json_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request", msg);
    }
    if (q.rule != NULL && q.upstream == NULL)
        return sl_json_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request",
                             "/history?rule= needs upstream= too (rule names are "
                             "per upstream)");
    ar = calloc(1, sizeof(*ar));
    if (ar == NULL)
        return MHD_NO;
    ar->a = a;
    ar->conn = conn;
    ar->what = SL_ADMIN_HISTORY;
    ar->config = sl_config_ref(c);
    for (size_t u = 0; u < c->nupstreams; u++)
        total += c->upstreams[u].nrules;
    ar->rules = calloc(total ? total : 1, sizeof(*ar->rules));
    ar->ups = calloc(total ? total : 1, sizeof(*ar->ups));
    if (ar->rules == NULL || ar->ups == NULL) {
        sl_admin_req_free(ar);
        return MHD_NO;
    }
    bool up_found = false, rule_found = false;
    for (size_t u = 0; u < c->nupstreams; u++) {
        const struct sl_upstream_conf *up = &c->upstreams[u];
        if (q.upstream != NULL && strcmp(up->name, q.upstream) != 0)
            continue;
        up_found = true;
        for (size_t i = 0; i < up->nrules; i++) {
            const struct sl_rule *r = &up->rules[i];
            if (q.rule != NULL && strcmp(r->name, q.rule) != 0)
                continue;
            rule_found = true;
            if (r->kind != SL_RULE_RATE)
                continue;
            ar->ups[ar->nrules] = up;
            ar->rules[ar->nrules++] = r;
        }
    }
    if (!up_found || (q.rule != NULL && !rule_found)) {
        snprintf(msg, sizeof(msg), !up_found ? "no upstream is named \"%.64s\""
                                             : "upstream \"%.64s\" has no rule named \"%.64s\"",
                 q.upstream != NULL ? q.upstream : "", q.rule != NULL ? q.rule : "");
        sl_admin_req_free(ar);
        return sl_json_error(conn, MHD_HTTP_NOT_FOUND, "not_found", msg);
    }
    if (q.rule != NULL && ar->nrules == 0) {
        snprintf(msg, sizeof(msg), "rule \"%.64s\" counts calls in flight "
                 "(concurrency): only rate rules keep a history", q.rule);
        sl_admin_req_free(ar);
        return sl_json_error(conn, MHD_HTTP_BAD_REQUEST, "bad_request", msg);
    }
    ar->waiting = true;
    ar->next = a->reqs;
    if (a->reqs != NULL)
        a->reqs->prev = ar;
    a->reqs = ar;
    *con_cls = ar;
    rc = sl_store_history(a->w->store, ar->rules, ar->nrules, sl_admin_history_done, ar);
    if (rc != 0)
        sl_admin_history_done(ar, NULL, rc == SL_STORE_NO_HISTORY ? NULL
                                        : "the store cannot answer now");
    if (ar->resp != NULL) {
        struct MHD_Response *r = ar->resp;
        ar->resp = NULL;
        return sl_queue(conn, ar->status, r);
    }
    ar->suspended = true;
    MHD_suspend_connection(conn);
    return MHD_YES;
}

/* ---- requests ---- */

static struct MHD_Response *sl_admin_render(struct sl_admin *a,
                                            enum sl_admin_what what,
                                            const struct sl_snapshot *snap,
                                            bool shared, unsigned *status)
{
    *status = MHD_HTTP_OK;
    if (what == SL_ADMIN_STATUS) {
        json_t *j;
        pthread_rwlock_rdlock(&a->w->proxy->metrics_lock);
        j = sl_status_json(a, snap, shared);
        pthread_rwlock_unlock(&a->w->proxy->metrics_lock);
        char *text = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
        json_decref(j);
        if (text == NULL)
            return NULL;
        return sl_owned(text, strlen(text), "application/json");
    } else {
        struct sl_buf t;
        size_t len;
        char *text;
        sl_buf_init(&t, SL_BUF_UNCAPPED);
        pthread_rwlock_rdlock(&a->w->proxy->metrics_lock);
        sl_metrics_text(a, snap, &t);
        pthread_rwlock_unlock(&a->w->proxy->metrics_lock);
        text = sl_buf_take(&t, &len);  /* NULL when out of memory */
        if (text == NULL)
            return NULL;
        return sl_owned(text, len, "text/plain; version=0.0.4; charset=utf-8");
    }
}

/* sl_snapshot_cb: the figures are in (or the store could not answer). */
static void sl_admin_snapshot_done(void *arg, struct sl_snapshot *snap,
                                   const char *error)
{
    struct sl_admin_req *ar = arg;
    struct sl_admin *a = ar->a;

    if (ar->gone) {
        sl_snapshot_free(snap);
        sl_admin_req_free(ar);
        return;
    }
    if (snap == NULL && !ar->local) {
        /* The shared store did not answer: this instance's own view (the
         * memory store answers before it returns). */
        struct sl_snapshot_req req = {.top = a->w->config->status_top,
                                      .apps = a->w->proxy->apps};
        if (error != NULL)
            sl_debug("admin: shared figures unavailable (%s): showing local ones",
                     error);
        ar->local = true;
        if (sl_store_snapshot(a->w->proxy->memory, &req, sl_admin_snapshot_done,
                              ar) == 0)
            return;
    }
    ar->waiting = false;
    ar->resp = snap != NULL ? sl_admin_render(a, ar->what, snap, !ar->local,
                                              &ar->status)
                            : NULL;
    if (ar->resp == NULL) {
        ar->resp = sl_text("{\"error\":\"unavailable\",\"message\":\"sluice "
                           "could not read its limit state (out of memory)\"}\n",
                           "application/json");
        ar->status = MHD_HTTP_SERVICE_UNAVAILABLE;
    }
    sl_snapshot_free(snap);
    if (ar->suspended) {
        ar->suspended = false;
        MHD_resume_connection(ar->conn);
        a->kick = true;
    }
}

/*
 * POST /reload: the same as SIGHUP, answered with the result.  200 when the
 * new configuration serves, 400 when the file has errors, 409 when it
 * changes what needs a restart; in both failures the running one stays.
 */
static enum MHD_Result sl_admin_reload(struct sl_admin *a, struct MHD_Connection *conn)
{
    struct sl_proxy *proxy = a->w->proxy;
    struct sl_errors errs = {0};
    enum sl_reload_result res = sl_proxy_reload(proxy, a->w, "POST /reload", &errs);
    const struct sl_config *c = sl_proxy_config(proxy);
    json_t *j = json_object(), *list = json_array();
    unsigned status = res == SL_RELOAD_OK ? MHD_HTTP_OK
                      : res == SL_RELOAD_INVALID ? MHD_HTTP_BAD_REQUEST
                                                 : MHD_HTTP_CONFLICT;

    for (size_t i = 0; i < errs.count; i++)
        json_array_append_new(list, sl_json_text(errs.lines[i]));
    sl_errors_free(&errs);
    json_object_set_new(j, "result", json_string(sl_reload_result_names[res]));
    json_object_set_new(j, "generation", json_integer((json_int_t)c->generation));
    json_object_set_new(j, "serving", json_integer((json_int_t)sl_proxy_serving(proxy)));
    json_object_set_new(j, "errors", list);
    sl_config_unref(c);
    return sl_queue_json(conn, status, j);
}

/* ---- operator actions (sl_admin_ops) ---- */

/* sl_admin_op_done_fn: the action's answer is in (as the snapshot's). */
static void sl_admin_op_finished(void *arg, struct MHD_Response *resp,
                                 unsigned status)
{
    struct sl_admin_req *ar = arg;

    if (ar->gone) {
        if (resp != NULL)
            MHD_destroy_response(resp);
        sl_admin_req_free(ar);
        return;
    }
    ar->waiting = false;
    ar->resp = resp;
    ar->status = status;
    if (ar->resp == NULL) {
        ar->resp = sl_text("{\"error\":\"unavailable\",\"message\":\"sluice "
                           "is out of memory\"}\n", "application/json");
        ar->status = MHD_HTTP_SERVICE_UNAVAILABLE;
    }
    if (ar->suspended) {
        ar->suspended = false;
        MHD_resume_connection(ar->conn);
        ar->a->kick = true;
    }
}

/* An operator action's request, past the listener's checks: collect its
 * body, then run it (suspended while the store acts). */
static enum MHD_Result sl_admin_op_step(struct sl_admin *a, struct sl_admin_req *ar,
                                        struct MHD_Connection *conn,
                                        const char *upload, size_t *upload_size)
{
    struct MHD_Response *r;

    (void)a;
    if (*upload_size > 0) {
        sl_admin_op_body(ar->op, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    ar->receiving = false;
    ar->waiting = true;
    sl_admin_op_run(ar->op, sl_admin_op_finished, ar);
    if (ar->resp != NULL) {
        r = ar->resp;
        ar->resp = NULL;
        return sl_queue(conn, ar->status, r);
    }
    ar->suspended = true;
    MHD_suspend_connection(conn);
    return MHD_YES;
}

static enum MHD_Result sl_admin_handle(void *cls, struct MHD_Connection *conn,
                                       const char *url, const char *method,
                                       const char *version, const char *upload,
                                       size_t *upload_size, void **con_cls)
{
    struct sl_admin *a = cls;
    struct sl_admin_req *ar = *con_cls;
    struct MHD_Response *r;
    struct sl_snapshot_req req;
    enum sl_admin_what what;

    (void)version;
    if (ar != NULL && ar->receiving)
        return sl_admin_op_step(a, ar, conn, upload, upload_size);
    if (ar != NULL) {
        /* Resumed (or called again): answer when the figures are in. */
        if (ar->resp == NULL)
            return MHD_YES;
        r = ar->resp;
        ar->resp = NULL;
        return sl_queue(conn, ar->status, r);
    }
    if (*upload_size > 0) {
        *upload_size = 0;  /* no admin endpoint takes a body */
        return MHD_YES;
    }
    /* The headers are in: no deadline while the request is answered. */
    sl_conn_deadline(a->w, sl_conn_of(conn), SL_DL_NONE);
    if (strcmp(url, "/reload") == 0 && strcmp(method, "POST") != 0) {
        r = sl_text("{\"error\":\"method_not_allowed\",\"message\":\"/reload "
                    "takes POST\"}\n", "application/json");
        if (r != NULL)
            MHD_add_response_header(r, "Allow", "POST");
        return sl_queue(conn, MHD_HTTP_METHOD_NOT_ALLOWED, r);
    }
    if (sl_admin_op_path(url) && !sl_admin_op_method_ok(method)) {
        r = sl_text("{\"error\":\"method_not_allowed\",\"message\":\"operator "
                    "actions take POST or DELETE (the pause is shown in GET "
                    "/status)\"}\n", "application/json");
        if (r != NULL)
            MHD_add_response_header(r, "Allow", "POST, DELETE");
        return sl_queue(conn, MHD_HTTP_METHOD_NOT_ALLOWED, r);
    }
    if (strcmp(url, "/reload") != 0 && !sl_admin_op_path(url) &&
        strcmp(method, "GET") != 0 &&
        strcmp(method, "HEAD") != 0) {
        r = sl_text("{\"error\":\"method_not_allowed\",\"message\":\"the admin "
                    "listener answers GET and HEAD (and POST /reload)\"}\n",
                    "application/json");
        if (r != NULL)
            MHD_add_response_header(r, "Allow", "GET, HEAD");
        return sl_queue(conn, MHD_HTTP_METHOD_NOT_ALLOWED, r);
    }
    /* The probes say only "ok" or "ready": open, so that a kubelet (which
     * cannot send a secret header) can ask them. */
    if (strcmp(url, "/healthz") == 0)
        return sl_queue(conn, MHD_HTTP_OK, sl_text("ok\n", "text/plain; charset=utf-8"));
    if (strcmp(url, "/readyz") == 0) {
        struct sl_store_state st;
        sl_admin_store_state(a, &st);
        if (st.ready)
            return sl_queue(conn, MHD_HTTP_OK, sl_text("ready\n",
                                                       "text/plain; charset=utf-8"));
        return sl_queue(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                        sl_text(a->w->config->on_store_error == SL_STORE_ERROR_DENY
                                    ? "not ready: the shared limit store (Redis) does "
                                      "not answer and on_store_error is \"deny\"\n"
                                    : "not ready: the shared limit store (Redis) has "
                                      "not answered yet\n",
                                "text/plain; charset=utf-8"));
    }
    if (!sl_admin_host_ok(a, conn))
        return sl_queue(conn, MHD_HTTP_MISDIRECTED_REQUEST,
                        sl_text("{\"error\":\"misdirected\",\"message\":\"this "
                                "admin listener answers only requests whose Host is "
                                "its own address (or localhost on loopback); add "
                                "other names to admin.hosts\"}\n",
                                "application/json"));
    if ((strcmp(method, "POST") == 0 || strcmp(method, "DELETE") == 0) &&
        !sl_admin_post_ok(conn))
        return sl_queue(conn, MHD_HTTP_FORBIDDEN,
                        sl_text("{\"error\":\"forbidden\",\"message\":\"a POST to "
                                "the admin listener needs the header Content-Type: "
                                "application/json or X-Sluice-Admin: 1 (a web page "
                                "cannot send those to another site, so a cross-site "
                                "form cannot reload sluice)\"}\n", "application/json"));
    if (!sl_admin_authorized(a, conn)) {
        r = sl_text("{\"error\":\"unauthorized\",\"message\":\"this admin listener "
                    "needs its token: Authorization: Bearer TOKEN\"}\n",
                    "application/json");
        if (r != NULL) {
            MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"sluice\"");
            MHD_add_response_header(r, "WWW-Authenticate",
                                    "Basic realm=\"sluice admin\", charset=\"UTF-8\"");
        }
        return sl_queue(conn, MHD_HTTP_UNAUTHORIZED, r);
    }
    if (strcmp(url, "/reload") == 0)
        return sl_admin_reload(a, conn);
    if (sl_admin_op_path(url)) {
        ar = calloc(1, sizeof(*ar));
        if (ar == NULL || (ar->op = sl_admin_op_new(a->w, conn, url, method)) == NULL) {
            free(ar);
            return MHD_NO;
        }
        what = SL_ADMIN_OP;
        ar->receiving = true;
        goto listed;
    }
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
        r = MHD_create_response_from_buffer(sl_admin_page_len, (void *)sl_admin_page,
                                            MHD_RESPMEM_PERSISTENT);
        if (r != NULL) {
            MHD_add_response_header(r, "Content-Type", "text/html; charset=utf-8");
            MHD_add_response_header(r, "Cache-Control", "no-store");
            MHD_add_response_header(r, "Content-Security-Policy",
                                    "default-src 'none'; script-src 'unsafe-inline'; "
                                    "style-src 'unsafe-inline'; connect-src 'self'; "
                                    "img-src 'self' data:");
            MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
        }
        return sl_queue(conn, MHD_HTTP_OK, r);
    }
    if (strcmp(url, "/history") == 0)
        return sl_admin_history(a, conn, con_cls);
    if (strcmp(url, "/status") == 0)
        what = SL_ADMIN_STATUS;
    else if (strcmp(url, "/metrics") == 0)
        what = SL_ADMIN_METRICS;
    else
        return sl_queue(conn, MHD_HTTP_NOT_FOUND,
                        sl_text("{\"error\":\"not_found\",\"message\":\"the admin "
                                "listener serves /, /status, /history, /metrics, /healthz and "
                                "/readyz\"}\n", "application/json"));

    ar = calloc(1, sizeof(*ar));
    if (ar == NULL)
        return MHD_NO;
listed:
    ar->a = a;
    ar->conn = conn;
    ar->what = what;
    ar->waiting = what != SL_ADMIN_OP;
    ar->next = a->reqs;
    if (a->reqs != NULL)
        a->reqs->prev = ar;
    a->reqs = ar;
    *con_cls = ar;
    if (what == SL_ADMIN_OP)
        return MHD_YES;  /* the body, then sl_admin_op_step */
    req.top = a->w->config->status_top;
    req.flags = 0;
    req.apps = a->w->proxy->apps;
    if (sl_store_snapshot(a->w->store, &req, sl_admin_snapshot_done, ar) != 0)
        sl_admin_snapshot_done(ar, NULL, "the store cannot answer now");
    if (ar->resp != NULL) {
        r = ar->resp;
        ar->resp = NULL;
        return sl_queue(conn, ar->status, r);
    }
    ar->suspended = true;
    MHD_suspend_connection(conn);
    return MHD_YES;
}

static void sl_admin_completed(void *cls, struct MHD_Connection *conn,
                               void **con_cls, enum MHD_RequestTerminationCode toe)
{
    struct sl_admin *a = cls;
    struct sl_admin_req *ar = *con_cls;

    /* Keep-alive: the next request line within client_timeout (a closing
     * connection is taken off its list when MHD closes it). */
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        sl_conn_deadline(a->w, sl_conn_of(conn), SL_DL_IDLE);
    if (ar == NULL)
        return;
    *con_cls = NULL;
    if (ar->prev != NULL)
        ar->prev->next = ar->next;
    else
        a->reqs = ar->next;
    if (ar->next != NULL)
        ar->next->prev = ar->prev;
    if (ar->resp != NULL)
        MHD_destroy_response(ar->resp);
    ar->resp = NULL;
    if (ar->waiting) {
        ar->gone = true;  /* the snapshot's (or action's) callback frees it */
        return;
    }
    sl_admin_req_free(ar);
}

/* MHD_OPTION_URI_LOG_CALLBACK: a request line is in.  A connection that
 * was idle now has header_timeout for its headers; one still on its
 * header deadline keeps it (the deadline is for the whole head, counted
 * from the accept). */
static void *sl_admin_uri_log(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct sl_admin *a = cls;
    struct sl_conn *c = sl_conn_of(conn);

    (void)uri;
    if (c != NULL && c->dlist != SL_DL_HEADERS)
        sl_conn_deadline(a->w, c, SL_DL_HEADERS);
    return NULL;
}

/*
 * The listener must be reachable only from this machine when it has no
 * token.  The configuration checked the address as written; this checks
 * the one bound (a name such as "localhost" resolves at start).  FD is
 * the listening socket.  0, or -1 (logged).
 */
static int sl_admin_check_bound(const struct sl_config *c, int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (c->admin_token != NULL)
        return 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
        sl_addr_is_loopback((struct sockaddr *)&ss))
        return 0;
    sl_error("admin.listen %s: bound to an address that is not loopback; "
             "without admin.token the admin listener must be reachable only "
             "from this machine (listen on 127.0.0.1 or [::1], or set a token)",
             c->admin_listen);
    return -1;
}

/* ---- on worker 0's loop ---- */

/* PREPARE: a run still asked for (a connection resumed by a store answer,
 * a close, MHD's zero timeout) keeps the poll from waiting. */
static void sl_admin_prepare(void *arg)
{
    struct sl_admin *a = arg;

    if (a->kick)
        sl_loop_nowait(a->w->loop);
}

/* The daemon's epoll fd is ready. */
static void sl_admin_ready(void *arg, int fd, uint32_t events)
{
    struct sl_admin *a = arg;

    (void)fd;
    (void)events;
    a->kick = true;
}

/* The daemon's timeout came. */
static void sl_admin_due(void *arg)
{
    struct sl_admin *a = arg;

    a->kick = true;
}

/* Every SL_TICK_MS: close connections past their header or idle deadline. */
static void sl_admin_tick(void *arg)
{
    struct sl_admin *a = arg;
    int64_t now = sl_loop_now(a->w->loop);

    sl_loop_timer_start(a->w->loop, &a->tick, now + SL_TICK_MS);
    sl_guard_expire(&a->guard, now);
}

/* CHECK phase (after the proxy's own work): run the daemon if anything
 * asked, then keep its timeout as a timer. */
static void sl_admin_pass(void *arg)
{
    struct sl_admin *a = arg;
    unsigned long closed = a->guard.closed;
    MHD_UNSIGNED_LONG_LONG ms;

    if (!a->kick)
        return;
    a->kick = false;
    MHD_run(a->mhd);
    /* A daemon at its connection limit takes its listening socket out of
     * its epoll set and puts it back only in a later run, which nothing
     * else may cause soon (the connections waiting in the backlog signal
     * nothing): after any close, run it again. */
    if (a->guard.closed != closed)
        a->kick = true;
    if (MHD_get_timeout(a->mhd, &ms) != MHD_YES)
        sl_loop_timer_stop(a->w->loop, &a->timer);
    else if (ms == 0)
        a->kick = true;
    else
        sl_loop_timer_start(a->w->loop, &a->timer,
                            sl_loop_now(a->w->loop) + (int64_t)ms);
}

struct sl_admin *sl_admin_new(struct sl_worker *w)
{
    const struct sl_config *c = w->config;
    struct sl_admin *a = calloc(1, sizeof(*a));
    const union MHD_DaemonInfo *info;
    int fd;

    if (a == NULL)
        return NULL;
    a->w = w;
    /* A backlog well above the connection limit: under a flood of new
     * connections a probe's SYN waits in the queue (the guard makes room
     * as fast as the loop accepts) instead of being dropped and resent a
     * second later. */
    fd = sl_listen_socket(c->admin_host, c->admin_port, false, 1024, "admin.listen",
                          c->admin_listen);
    if (fd < 0 || sl_admin_check_bound(c, fd) != 0) {
        if (fd >= 0)
            close(fd);
        free(a);
        return NULL;
    }
    /* No hang-up watch: an admin request is suspended only for a store
     * snapshot, which the store's timeout bounds. */
    sl_guard_init(&a->guard, w, "admin", false, SL_ADMIN_SOFT_LIMIT,
                  SL_ADMIN_PER_ADDRESS);
    a->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        sl_admin_handle, a,
        MHD_OPTION_EXTERNAL_LOGGER, sl_worker_mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_NOTIFY_COMPLETED, sl_admin_completed, a,
        MHD_OPTION_NOTIFY_CONNECTION, sl_guard_notify, &a->guard,
        MHD_OPTION_URI_LOG_CALLBACK, sl_admin_uri_log, a,
        MHD_OPTION_CONNECTION_LIMIT, SL_ADMIN_CONNECTIONS,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u,
        MHD_OPTION_END);
    if (a->mhd == NULL) {
        sl_error("admin.listen %s: cannot start the HTTP daemon", c->admin_listen);
        close(fd);
        free(a);
        return NULL;
    }
    info = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL) {
        MHD_stop_daemon(a->mhd);
        free(a);
        return NULL;
    }
    sl_loop_timer_init(&a->timer, sl_admin_due, a);
    sl_loop_timer_init(&a->tick, sl_admin_tick, a);
    a->watch = sl_loop_watch(w->loop, info->epoll_fd, EPOLLIN, sl_admin_ready, a);
    if (a->watch == NULL ||
        sl_loop_hook(w->loop, SL_LOOP_CHECK, sl_admin_pass, a) != 0 ||
        sl_loop_hook(w->loop, SL_LOOP_PREPARE, sl_admin_prepare, a) != 0 ||
        sl_loop_timer_after(w->loop, &a->tick, SL_TICK_MS) != 0) {
        sl_loop_unwatch(w->loop, a->watch);
        sl_loop_unhook(w->loop, SL_LOOP_CHECK, sl_admin_pass, a);
        sl_loop_unhook(w->loop, SL_LOOP_PREPARE, sl_admin_prepare, a);
        sl_loop_timer_stop(w->loop, &a->tick);
        MHD_stop_daemon(a->mhd);
        free(a);
        return NULL;
    }
    /* One run on the first pass. */
    a->kick = true;
    sl_info("admin listener on %s%s", c->admin_listen,
            c->admin_token ? " (token required)" : "");
    return a;
}

void sl_admin_free(struct sl_admin *a)
{
    if (a == NULL)
        return;
    sl_loop_unhook(a->w->loop, SL_LOOP_CHECK, sl_admin_pass, a);
    sl_loop_unhook(a->w->loop, SL_LOOP_PREPARE, sl_admin_prepare, a);
    sl_loop_unwatch(a->w->loop, a->watch);
    sl_loop_timer_stop(a->w->loop, &a->timer);
    sl_loop_timer_stop(a->w->loop, &a->tick);
    /* MHD refuses to stop with suspended connections: resume them all. */
    for (struct sl_admin_req *ar = a->reqs; ar != NULL; ar = ar->next) {
        if (ar->suspended) {
            ar->suspended = false;
            MHD_resume_connection(ar->conn);
        }
    }
    MHD_run(a->mhd);
    MHD_stop_daemon(a->mhd);
    free(a);
}
