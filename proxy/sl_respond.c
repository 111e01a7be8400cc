/*
 * sl_respond — responses sluice writes itself, and header rules.
 *
 * Every synthetic response has a JSON body with a machine-readable "error"
 * and a human "message", Content-Type application/json, Cache-Control
 * no-store and a Date (the daemon runs with its own Date suppressed so an
 * upstream's Date passes through untouched).  Rate limit answers follow
 * draft-ietf-httpapi-ratelimit-headers-11: RateLimit-Policy names the rule
 * with its quota (q) and window in seconds (w); RateLimit gives what is
 * left (r) and the seconds until room comes back (t).
 */
#include "sl_proxy.h"

#include "sl_buf.h"

#include "sl_duration.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Date, Content-Type and Cache-Control of every answer sluice writes. */
static void sl_respond_common_headers(struct MHD_Response *resp,
                                      const char *content_type)
{
    char date[64];
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    MHD_add_response_header(resp, "Date", date);
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
}

static struct MHD_Response *sl_respond_json(json_t *body)
{
    struct MHD_Response *resp;
    char *text;

    text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (text == NULL)
        return NULL;
    size_t len = strlen(text);
    text[len] = '\n';  /* json_dumps leaves room: overwrite the NUL */
    resp = MHD_create_response_from_buffer(len + 1, text, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(text);
        return NULL;
    }
    sl_respond_common_headers(resp, "application/json");
    return resp;
}

struct MHD_Response *sl_respond_error(const struct sl_error_reply *e)
{
    json_t *body = json_object();
    struct MHD_Response *resp;
    char ra[32];

    if (body == NULL)
        return NULL;
    json_object_set_new(body, "error", json_string(e->error));
    if (e->upstream != NULL)
        json_object_set_new(body, "upstream", json_string(e->upstream));
    json_object_set_new(body, "message", json_string(e->message));
    if (e->retry_after_s > 0)
        json_object_set_new(body, "retry_after", json_integer(e->retry_after_s));
    resp = sl_respond_json(body);
    if (resp != NULL && e->retry_after_s > 0) {
        snprintf(ra, sizeof(ra), "%lld", (long long)e->retry_after_s);
        MHD_add_response_header(resp, "Retry-After", ra);
    }
    return resp;
}

/* Retry-After: whole seconds, rounded up, at least 1. */
static int64_t sl_retry_after_bounded(const struct sl_config *c, int64_t wait_us);

static int64_t sl_retry_after(int64_t wait_us)
{
    int64_t s = sl_duration_ceil_seconds(wait_us);
    return s < 1 ? 1 : s;
}

void sl_respond_ratelimit_headers(struct MHD_Response *resp,
                                  const struct sl_decision *d)
{
    char buf[256];
    const struct sl_rule *r = d->rule;

    if (r == NULL || r->kind != SL_RULE_RATE)
        return;
    snprintf(buf, sizeof(buf), "\"%s\";q=%llu;w=%lld", r->name,
             (unsigned long long)r->limit,
             (long long)sl_duration_ceil_seconds(r->window_us));
    MHD_add_response_header(resp, "RateLimit-Policy", buf);
    snprintf(buf, sizeof(buf), "\"%s\";r=%llu;t=%lld", r->name,
             (unsigned long long)d->remaining,
             (long long)sl_duration_ceil_seconds(d->reset_us));
    MHD_add_response_header(resp, "RateLimit", buf);
}

void sl_respond_pause_headers(struct MHD_Response *resp, int64_t pause_us)
{
    char buf[96];

    snprintf(buf, sizeof(buf), "\"upstream-pause\";r=0;t=%lld",
             (long long)sl_retry_after(pause_us));
    MHD_add_response_header(resp, "RateLimit", buf);
}

void sl_respond_relayed_retry_after(const struct sl_config *c, struct MHD_Response *resp,
                                    int64_t pause_us)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%lld", (long long)sl_retry_after_bounded(c, pause_us));
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, buf);
}

/* V as the inside of a JSON string: the template is usually JSON. */
static void sl_reject_put_escaped(struct sl_buf *b, const char *v)
{
    for (; *v; v++) {
        char e[8];
        if (*v == '"' || *v == '\\') {
            e[0] = '\\';
            e[1] = *v;
            sl_buf_add(b, e, 2);
        } else if ((unsigned char)*v < 0x20) {
            snprintf(e, sizeof(e), "\\u%04x", (unsigned char)*v);
            sl_buf_add(b, e, 6);
        } else {
            sl_buf_add(b, v, 1);
        }
    }
}

/*
 * Render the upstream's reject template: "{name}" replaced by its value
 * (JSON-escaped), "{{" and "}}" as braces.  The configuration check has
 * refused unknown names.  Returns a malloc'ed string or NULL.
 */
static char *sl_render_reject(const char *tpl, const char *const *names,
                              const char *const *values, size_t n)
{
    struct sl_buf b;

    sl_buf_init(&b, SL_BUF_UNCAPPED);
    sl_buf_add(&b, "", 0);  /* an empty template renders as "", not NULL */
    for (const char *p = tpl; *p && sl_buf_result(&b) == 0;) {
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            sl_buf_add(&b, p, 1);
            p += 2;
            continue;
        }
        if (p[0] == '{') {
            size_t i;
            for (i = 0; i < n; i++) {
                size_t nl = strlen(names[i]);
                if (strncmp(p + 1, names[i], nl) == 0 && p[1 + nl] == '}') {
                    sl_reject_put_escaped(&b, values[i]);
                    p += nl + 2;
                    break;
                }
            }
            if (i < n)
                continue;
        }
        sl_buf_add(&b, p, 1);
        p++;
    }
    return sl_buf_take(&b, NULL);
}

/* Retry-After for WAIT, bounded by max_retry_after (0: no bound). */
static int64_t sl_retry_after_bounded(const struct sl_config *c, int64_t wait_us)
{
    int64_t retry = sl_retry_after(wait_us);
    int64_t max = c->max_retry_after_us > 0
                      ? sl_duration_ceil_seconds(c->max_retry_after_us) : 0;

    return max > 0 && retry > max ? max : retry;
}

struct MHD_Response *sl_respond_limited(const struct sl_config *c,
                                        const struct sl_upstream_conf *up,
                                        const struct sl_decision *d,
                                        uint16_t app_id, const char *app)
{
    const struct sl_rule *r = d->rule;
    int64_t retry = sl_retry_after_bounded(c, d->wait_us);
    json_t *body;
    struct MHD_Response *resp;
    char msg[640], ra[32], lim[32], win[SL_DURATION_FORMAT_MAX], rs[32];
    const char *share = r->kind == SL_RULE_RATE ? sl_share_denial_name(d->share) : NULL;
    const struct sl_share *sh = NULL;
    bool named = false;

    if (app == NULL)
        app = "-";
    if (share != NULL)
        sh = sl_rule_share(r, app_id, &named);

    if (r->kind == SL_RULE_PAUSE) {
        snprintf(msg, sizeof(msg),
                 "upstream \"%s\" asked callers to pause (it signalled a limit); "
                 "retry in %llds", up->name, (long long)retry);
        win[0] = lim[0] = '\0';
    } else if (r->kind == SL_RULE_RATE) {
        sl_rule_window_text(r, win, sizeof(win));
        snprintf(lim, sizeof(lim), "%llu", (unsigned long long)r->limit);
        if (d->share == SL_SHARE_MAX && sh != NULL)
            snprintf(msg, sizeof(msg),
                     "app \"%s\" used its share of rule \"%s\" of upstream "
                     "\"%s\": at most %llu of its %llu calls per %s; retry in %llds",
                     app, r->name, up->name, (unsigned long long)sh->max,
                     (unsigned long long)r->limit, win, (long long)retry);
        else if (d->share == SL_SHARE_RESERVED)
            snprintf(msg, sizeof(msg),
                     "rule \"%s\" of upstream \"%s\" allows %llu calls per %s, "
                     "and what is left is reserved for other apps than \"%s\"; "
                     "retry in %llds",
                     r->name, up->name, (unsigned long long)r->limit, win, app,
                     (long long)retry);
        else if (d->by_report) {
            /* The provider's own words: its count, and when it said so. */
            char when[32];
            time_t at = time(NULL) - (time_t)(d->report_age_us / SL_USEC_PER_SEC);
            struct tm tm;
            gmtime_r(&at, &tm);
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
            char since[64] = "";
            if (d->report_sent_since > 0)
                snprintf(since, sizeof(since), ", and %llu sent through sluice since",
                         (unsigned long long)d->report_sent_since);
            snprintf(msg, sizeof(msg),
                     "the provider reports %lld of %llu calls per %s used (as of %s)%s: "
                     "rule \"%s\" of upstream \"%s\" follows its count; retry in %llds",
                     (long long)r->limit - (long long)d->report_value,
                     (unsigned long long)r->limit, win, when, since, r->name, up->name,
                     (long long)retry);
        } else if (r->leaky)
            snprintf(msg, sizeof(msg),
                     "rule \"%s\" of upstream \"%s\" is a bucket of %llu calls "
                     "draining %s; retry in %llds",
                     r->name, up->name, (unsigned long long)r->limit, r->leak_text,
                     (long long)retry);
        else
            snprintf(msg, sizeof(msg),
                     "rule \"%s\" of upstream \"%s\" allows %llu calls per %s; "
                     "retry in %llds",
                     r->name, up->name, (unsigned long long)r->limit, win,
                     (long long)retry);
    } else {
        snprintf(lim, sizeof(lim), "%llu", (unsigned long long)r->limit);
        win[0] = '\0';
        snprintf(msg, sizeof(msg),
                 "rule \"%s\" of upstream \"%s\" allows %llu calls in flight; "
                 "retry in %llds",
                 r->name, up->name, (unsigned long long)r->limit,
                 (long long)retry);
    }
    snprintf(rs, sizeof(rs), "%lld", (long long)retry);

    if (up->reject_body != NULL) {
        static const char *const names[] = {"upstream", "rule", "limit",
                                            "window", "retry_after", "message",
                                            "app", "share"};
        /* A pause has no limit or window, a concurrency rule no window:
         * "null" keeps a JSON template valid. */
        char secs[48] = "null";
        if (r->kind == SL_RULE_RATE) {
            /* {window} in seconds, a JSON number ("300", "0.25"). */
            int n = snprintf(secs, sizeof(secs), "%lld.%06lld",
                             (long long)(r->window_us / SL_USEC_PER_SEC),
                             (long long)(r->window_us % SL_USEC_PER_SEC));
            while (n > 0 && secs[n - 1] == '0')
                secs[--n] = '\0';
            if (n > 0 && secs[n - 1] == '.')
                secs[--n] = '\0';
        }
        const char *values[] = {up->name, r->name, lim[0] ? lim : "null", secs,
                                rs, msg, app, share != NULL ? share : ""};
        char *text = sl_render_reject(up->reject_body, names, values, 8);
        if (text == NULL)
            return NULL;
        resp = MHD_create_response_from_buffer(strlen(text), text,
                                               MHD_RESPMEM_MUST_FREE);
        if (resp == NULL) {
            free(text);
            return NULL;
        }
        sl_respond_common_headers(resp, up->reject_content_type != NULL
                                            ? up->reject_content_type
                                            : "application/json");
    } else {
        body = json_object();
        if (body == NULL)
            return NULL;
        json_object_set_new(body, "error", json_string(r->kind == SL_RULE_PAUSE
                                                           ? "upstream_paused"
                                                           : "rate_limited"));
        json_object_set_new(body, "upstream", json_string(up->name));
        json_object_set_new(body, "rule", json_string(r->name));
        if (r->kind == SL_RULE_RATE) {
            json_object_set_new(body, "limit", json_integer((json_int_t)r->limit));
            json_object_set_new(body, "window",
                                json_real((double)r->window_us / SL_USEC_PER_SEC));
            if (r->leaky) {
                json_object_set_new(body, "bucket", json_integer((json_int_t)r->limit));
                json_object_set_new(body, "leak", json_string(r->leak_text));
            }
        } else if (r->kind == SL_RULE_CONCURRENCY) {
            json_object_set_new(body, "limit", json_integer((json_int_t)r->limit));
            json_object_set_new(body, "window", json_null());
            json_object_set_new(body, "concurrency",
                                json_integer((json_int_t)r->limit));
        }
        if (share != NULL) {
            json_object_set_new(body, "app", json_string(app));
            json_object_set_new(body, "share", json_string(share));
            if (d->share == SL_SHARE_MAX && sh != NULL)
                json_object_set_new(body, "app_max", json_integer((json_int_t)sh->max));
        }
        json_object_set_new(body, "retry_after", json_integer(retry));
        json_object_set_new(body, "message", json_string(msg));
        resp = sl_respond_json(body);
        if (resp == NULL)
            return NULL;
    }
    snprintf(ra, sizeof(ra), "%lld", (long long)retry);
    MHD_add_response_header(resp, "Retry-After", ra);
    if (r->kind == SL_RULE_RATE) {
        struct sl_decision hd = *d;
        hd.remaining = 0;
        hd.reset_us = d->wait_us;
        sl_respond_ratelimit_headers(resp, &hd);
    } else if (r->kind == SL_RULE_PAUSE) {
        sl_respond_pause_headers(resp, d->wait_us);
    }
    return resp;
}

bool sl_header_is_hop_by_hop(const char *name, size_t len)
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

bool sl_header_connection_lists(const char *connection, const char *name,
                                size_t len)
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
