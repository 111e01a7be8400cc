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

#include "sl_duration.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static struct MHD_Response *sl_respond_json(json_t *body)
{
    struct MHD_Response *resp;
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
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
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    MHD_add_response_header(resp, "Date", date);
    MHD_add_response_header(resp, "Content-Type", "application/json");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
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

struct MHD_Response *sl_respond_limited(const struct sl_upstream_conf *up,
                                        const struct sl_decision *d)
{
    const struct sl_rule *r = d->rule;
    int64_t retry = sl_retry_after(d->wait_us);
    json_t *body = json_object();
    struct MHD_Response *resp;
    char msg[512], ra[32];

    if (body == NULL)
        return NULL;
    json_object_set_new(body, "error", json_string("rate_limited"));
    json_object_set_new(body, "upstream", json_string(up->name));
    json_object_set_new(body, "rule", json_string(r->name));
    json_object_set_new(body, "limit", json_integer((json_int_t)r->limit));
    if (r->kind == SL_RULE_PAUSE) {
        json_object_set_new(body, "error", json_string("upstream_paused"));
        json_object_set_new(body, "window", json_null());
        snprintf(msg, sizeof(msg),
                 "upstream \"%s\" asked callers to pause (it signalled a limit); "
                 "retry in %llds", up->name, (long long)retry);
    } else if (r->kind == SL_RULE_RATE) {
        json_object_set_new(body, "window",
                            json_real((double)r->window_us / SL_USEC_PER_SEC));
        snprintf(msg, sizeof(msg),
                 "rule \"%s\" of upstream \"%s\" allows %llu calls per %.3gs; "
                 "retry in %llds",
                 r->name, up->name, (unsigned long long)r->limit,
                 (double)r->window_us / SL_USEC_PER_SEC, (long long)retry);
    } else {
        json_object_set_new(body, "window", json_null());
        json_object_set_new(body, "concurrency",
                            json_integer((json_int_t)r->limit));
        snprintf(msg, sizeof(msg),
                 "rule \"%s\" of upstream \"%s\" allows %llu calls in flight; "
                 "retry in %llds",
                 r->name, up->name, (unsigned long long)r->limit,
                 (long long)retry);
    }
    json_object_set_new(body, "retry_after", json_integer(retry));
    json_object_set_new(body, "message", json_string(msg));
    resp = sl_respond_json(body);
    if (resp == NULL)
        return NULL;
    snprintf(ra, sizeof(ra), "%lld", (long long)retry);
    MHD_add_response_header(resp, "Retry-After", ra);
    if (r->kind == SL_RULE_RATE) {
        struct sl_decision hd = *d;
        hd.remaining = 0;
        hd.reset_us = retry * SL_USEC_PER_SEC;
        sl_respond_ratelimit_headers(resp, &hd);
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
