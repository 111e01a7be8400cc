/*
 * sl_alerts — see sl_alerts.h.
 *
 * A message is one POST to one receiver.  It waits in a FIFO (at most
 * SL_ALERT_QUEUE_MAX; past that new ones are dropped and counted), goes
 * out when fewer than SL_ALERT_INFLIGHT are in flight, and on a failure
 * (no 2xx, or no answer within SL_ALERT_TIMEOUT_MS) is tried again after
 * 1, 2 and 4 seconds before it is given up and counted as failed.  The
 * alert itself is logged when it is raised, whatever becomes of its POSTs.
 *
 * The "text" of an alert is read by people in a chat (Slack and its
 * look-alikes render it as mrkdwn), and part of it comes from outside: a
 * bucket's key is whatever a client put in the path or header a `per`
 * names, a pause's reason quotes the provider.  Every value put into a
 * text goes through sl_text_value(): Slack's escapes for & < > (so no key
 * can be a <!channel> ping, a <@U123> mention or a <https://...|link>),
 * control characters, bidirectional overrides and bytes that are not
 * UTF-8 written as \uXXXX or \xNN, and at most a bounded number of bytes
 * shown.  The JSON fields beside it keep the value whole (JSON-escaped).
 * A receiver's URL may be its secret (a Slack webhook's path is); the log
 * names a receiver by scheme://host:port only.
 */
#include "sl_alerts.h"

#include "sl_duration.h"
#include "sl_log.h"
#include "sl_proxy.h"
#include "sl_time.h"
#include "sl_json.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SL_ALERT_QUEUE_MAX 256
#define SL_ALERT_INFLIGHT 4
#define SL_ALERT_ATTEMPTS 4         /* the first try and three retries */
#define SL_ALERT_TIMEOUT_MS 5000
#define SL_ALERT_CHECK_MS 1000
#define SL_ALERT_KEY_SHOWN 64       /* bytes of a key or an app name in a text */
#define SL_ALERT_NAME_SHOWN 128     /* ... of a configured name, a reason */

const char *const sl_alert_result_names[SL_ALERT_RESULTS] = {"sent", "failed",
                                                             "dropped"};

struct sl_alert_msg {
    struct sl_alert_msg *next;
    const struct sl_alert_conf *to;
    const struct sl_config *config; /* TO's, referenced (reloads) */
    char *body;                     /* owned JSON text */
    int attempts;                   /* POSTs made */
    int64_t due_ms;                 /* next attempt */
    CURL *easy;                     /* in flight, or NULL */
    struct curl_slist *headers;
};

struct sl_alerts {
    struct sl_worker *w;                /* its configuration: w->config */
    struct sl_alert_msg *head, *tail;   /* waiting, FIFO */
    size_t nqueued;
    struct sl_alert_msg *inflight[SL_ALERT_INFLIGHT];
    int64_t next_check_ms;
    /* When sl_alerts_run() is next due: only bounds the loop's poll, since
     * the run itself is a per-pass hook (sl_alerts_pass). */
    struct sl_timer timer;
    bool checking;                  /* a snapshot is outstanding */
    bool thresholds;                /* some rule has thresholds */
    bool store_down;                /* as last seen */
    int64_t dropped_logged_ms;
    char instance[128];             /* host:pid, in every payload */
    _Atomic uint64_t counts[SL_ALERT_RESULTS];
};

/* An alert's text, built in place; anything past its end is dropped. */
struct sl_text {
    char buf[1024];
    size_t len;
};

/* Append sluice's own words (a printf format). */
static void sl_text_add(struct sl_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sl_text_add(struct sl_text *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (t->len >= sizeof(t->buf) - 1)
        return;
    va_start(ap, fmt);
    n = vsnprintf(t->buf + t->len, sizeof(t->buf) - t->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        t->len += (size_t)n < sizeof(t->buf) - t->len ? (size_t)n
                                                       : sizeof(t->buf) - 1 - t->len;
}

/*
 * The length of the UTF-8 sequence at P (at most N bytes), 0 when it is
 * not one (a stray continuation, an overlong form, a surrogate, past
 * U+10FFFF, cut short); its code point in *CP.
 */
static size_t sl_utf8_seq(const unsigned char *p, size_t n, unsigned *cp)
{
    size_t len;
    unsigned min;

    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2, min = 0x80, *cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3, min = 0x800, *cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4, min = 0x10000, *cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        *cp = (*cp << 6) | (p[i] & 0x3f);
    }
    if (*cp < min || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff))
        return 0;
    return len;
}

/* Characters a reader cannot see, or that reorder what follows them. */
static bool sl_text_hidden(unsigned cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 ||
           cp == 0x2029 || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200e || cp == 0x200f ||
           cp == 0x061c || cp == 0xfeff;
}

/*
 * Append a value from outside (a key, an app name, a reason) to T as
 * chat-safe text: & < > as &amp; &lt; &gt; (Slack's escapes, which its
 * look-alikes share), a backslash doubled, hidden characters as \uXXXX,
 * bytes that are not UTF-8 as \xNN; at most MAX bytes written for it,
 * then "...(N bytes)" saying how long it was.
 */
static void sl_text_value(struct sl_text *t, const char *s, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), start = t->len;

    for (size_t i = 0; i < n;) {
        char esc[16];
        const char *out = esc;
        unsigned cp = 0;
        size_t len = sl_utf8_seq(p + i, n - i, &cp), olen;

        if (len == 0) {
            snprintf(esc, sizeof(esc), "\\x%02X", p[i]);
            len = 1;
        } else if (cp == '&') {
            out = "&amp;";
        } else if (cp == '<') {
            out = "&lt;";
        } else if (cp == '>') {
            out = "&gt;";
        } else if (cp == '\\') {
            out = "\\\\";
        } else if (sl_text_hidden(cp)) {
            snprintf(esc, sizeof(esc), "\\u%04X", cp);
        } else {
            memcpy(esc, p + i, len);
            esc[len] = '\0';
        }
        olen = strlen(out);
        if (t->len - start + olen > max || t->len + olen >= sizeof(t->buf) - 24) {
            sl_text_add(t, "...(%zu bytes)", n);
            return;
        }
        memcpy(t->buf + t->len, out, olen);
        t->len += olen;
        t->buf[t->len] = '\0';
        i += len;
    }
}

/*
 * URL as the log may show it: scheme://host:port, never its path, query
 * or user info (a Slack webhook's path is its secret).  Into BUF.
 */
static const char *sl_alerts_origin(const char *url, char *buf, size_t cap)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;

    snprintf(buf, cap, "(a receiver whose URL does not parse)");
    if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK)
        snprintf(buf, cap, "%s://%s:%s", scheme, host, port);
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return buf;
}

static void sl_alerts_count(struct sl_alerts *a, int result)
{
    atomic_fetch_add(&a->counts[result], 1);
}

/* Queue BODY (owned) for receiver TO. */
static void sl_alerts_enqueue(struct sl_alerts *a, const struct sl_alert_conf *to,
                              char *body)
{
    struct sl_alert_msg *m;

    if (body == NULL)
        return;
    if (a->nqueued >= SL_ALERT_QUEUE_MAX || (m = calloc(1, sizeof(*m))) == NULL) {
        int64_t now = sl_time_mono_ms();
        free(body);
        sl_alerts_count(a, SL_ALERT_DROPPED);
        if (now - a->dropped_logged_ms >= 60000) {
            char origin[300];
            a->dropped_logged_ms = now;
            sl_warn("alerts: queue full (%d waiting): alerts are being dropped; "
                    "is %s answering?", SL_ALERT_QUEUE_MAX,
                    sl_alerts_origin(to->url, origin, sizeof(origin)));
        }
        return;
    }
    m->to = to;
    m->config = sl_config_ref(a->w->config);
    m->body = body;
    m->due_ms = sl_time_mono_ms();
    if (a->tail != NULL)
        a->tail->next = m;
    else
        a->head = m;
    a->tail = m;
    a->nqueued++;
}

/* Send the event J (its "text" set) to every receiver WANTS accepts. */
static void sl_alerts_raise(struct sl_alerts *a, json_t *j,
                            bool (*wants)(const struct sl_alert_conf *, const void *),
                            const void *ctx)
{
    char iso[32];

    sl_time_iso(sl_time_wall(), iso, sizeof(iso));
    json_object_set_new(j, "time", json_string(iso));
    json_object_set_new(j, "instance", json_string(a->instance));
    sl_warn("alert: %s", json_string_value(json_object_get(j, "text")));
    for (size_t i = 0; i < a->w->config->nalerts; i++) {
        const struct sl_alert_conf *to = &a->w->config->alerts[i];
        if (wants(to, ctx))
            sl_alerts_enqueue(a, to, json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15)));
    }
    json_decref(j);
}

/* ---- events ---- */

struct sl_threshold_ctx {
    const struct sl_rule *rule;
    double at;
};

static bool sl_wants_threshold(const struct sl_alert_conf *to, const void *p)
{
    const struct sl_threshold_ctx *t = p;
    bool named = to->rules == NULL, at = false;

    for (size_t i = 0; !named && i < to->nrules; i++)
        named = strcmp(to->rules[i], t->rule->name) == 0;
    for (size_t i = 0; i < to->nat; i++)
        at = at || to->at[i] == t->at;
    return named && at;
}

static bool sl_wants_pause(const struct sl_alert_conf *to, const void *p)
{
    (void)p;
    return to->on_pause;
}

static bool sl_wants_operator(const struct sl_alert_conf *to, const void *p)
{
    (void)p;
    return to->on_operator;
}

static bool sl_wants_store(const struct sl_alert_conf *to, const void *p)
{
    (void)p;
    return to->on_store;
}

static void sl_alerts_threshold(struct sl_alerts *a, const struct sl_upstream_conf *up,
                                const struct sl_rule *r, const struct sl_usage *u,
                                double at)
{
    struct sl_threshold_ctx ctx = {r, at};
    json_t *j = json_object(), *apps = json_object();
    char win[SL_DURATION_FORMAT_MAX];
    struct sl_text text = {.len = 0};
    double util = r->limit ? (double)u->used / (double)r->limit : 1.0;

    if (r->leaky)   /* "40 calls in a bucket leaking 2/s" */
        snprintf(win, sizeof(win), "%s", r->leak_text);
    else if (r->kind == SL_RULE_RATE)
        sl_rule_window_text(r, win, sizeof(win));
    sl_text_add(&text, "sluice: ");
    sl_text_value(&text, up->name, SL_ALERT_NAME_SHOWN);
    sl_text_add(&text, " rule \"");
    sl_text_value(&text, r->name, SL_ALERT_NAME_SHOWN);
    sl_text_add(&text, "\"");
    if (u->key[0]) {
        sl_text_add(&text, " [");
        sl_text_value(&text, u->key, SL_ALERT_KEY_SHOWN);
        sl_text_add(&text, "]");
    }
    sl_text_add(&text, " reached %.0f%% of its limit: %llu of %llu %s%s", at * 100,
                (unsigned long long)u->used, (unsigned long long)r->limit,
                r->leaky ? "calls in a bucket leaking "
                : r->kind == SL_RULE_RATE ? "calls per " : "calls in flight",
                r->kind == SL_RULE_RATE ? win : "");
    for (size_t i = 0; i < u->napps; i++) {
        json_object_set_new(apps, u->apps[i].name,
                            json_integer((json_int_t)u->apps[i].calls));
        if (i < 5) {
            sl_text_add(&text, "%s", i ? ", " : "; by app: ");
            sl_text_value(&text, u->apps[i].name, SL_ALERT_KEY_SHOWN);
            sl_text_add(&text, " %llu", (unsigned long long)u->apps[i].calls);
        }
    }
    json_object_set_new(j, "event", json_string("threshold"));
    json_object_set_new(j, "upstream", json_string(up->name));
    json_object_set_new(j, "rule", json_string(r->name));
    json_object_set_new(j, "key", u->key[0] ? sl_json_text(u->key) : json_null());
    json_object_set_new(j, "threshold", json_real(at));
    json_object_set_new(j, "used", json_integer((json_int_t)u->used));
    json_object_set_new(j, "limit", json_integer((json_int_t)r->limit));
    json_object_set_new(j, "remaining", json_integer((json_int_t)u->remaining));
    json_object_set_new(j, "utilization", json_real(round(util * 10000) / 10000));
    json_object_set_new(j, "window", r->kind == SL_RULE_RATE && !r->leaky
                                         ? json_string(win) : json_null());
    if (r->leaky)
        json_object_set_new(j, "leak", json_string(r->leak_text));
    json_object_set_new(j, "resets_in", u->resets_in_us >= 0
        ? json_real(round((double)u->resets_in_us / 1000.0) / 1000.0) : json_null());
    json_object_set_new(j, "per_app", apps);
    json_object_set_new(j, "text", sl_json_text(text.buf));
    sl_alerts_raise(a, j, sl_wants_threshold, &ctx);
}

static void sl_alerts_pause(struct sl_alerts *a, const struct sl_upstream_usage *uu)
{
    json_t *j = json_object();
    struct sl_text text = {.len = 0};
    char iso[32];

    /* Rounded up to the second: never earlier than the pause's end. */
    sl_time_iso(ceil(sl_time_wall() + (double)uu->paused_us / 1e6), iso, sizeof(iso));
    sl_text_add(&text, uu->pause_operator ? "sluice: an operator paused "
                                          : "sluice: the provider paused ");
    sl_text_value(&text, uu->up->name, SL_ALERT_NAME_SHOWN);
    sl_text_add(&text, " until %s (", iso);
    sl_text_value(&text, uu->pause_reason[0] ? uu->pause_reason : "it asked to stop",
                  SL_ALERT_NAME_SHOWN);
    sl_text_add(&text, "); calls wait or get 429 until then");
    json_object_set_new(j, "event", json_string("pause"));
    json_object_set_new(j, "set_by", json_string(uu->pause_operator ? "operator"
                                                                     : "provider"));
    json_object_set_new(j, "upstream", json_string(uu->up->name));
    json_object_set_new(j, "reason", sl_json_text(uu->pause_reason));
    json_object_set_new(j, "resumes_at", json_string(iso));
    json_object_set_new(j, "resumes_in",
                        json_real(round((double)uu->paused_us / 1000.0) / 1000.0));
    json_object_set_new(j, "text", sl_json_text(text.buf));
    sl_alerts_raise(a, j, sl_wants_pause, NULL);
}

/* A pause of US µs as an alert shows it: {resumes_at, resumes_in}. */
static json_t *sl_pause_json(int64_t us, char *iso, size_t len)
{
    /* Rounded up to the second: never earlier than the pause's end. */
    sl_time_iso(ceil(sl_time_wall() + (double)us / 1e6), iso, len);
    return json_pack("{s:s,s:f}", "resumes_at", iso, "resumes_in",
                     round((double)us / 1000.0) / 1000.0);
}

void sl_alerts_operator(struct sl_alerts *a, const struct sl_operator_action *act)
{
    json_t *j, *was;
    struct sl_text text = {.len = 0};
    char iso[32];

    if (a == NULL)
        return;
    j = json_object();
    sl_text_add(&text, "sluice: an operator (");
    sl_text_value(&text, act->by, SL_ALERT_NAME_SHOWN);
    if (strcmp(act->action, "pause") == 0) {
        json_object_set_new(j, "paused", sl_pause_json(act->left_us, iso, sizeof(iso)));
        sl_text_add(&text, ") paused ");
        sl_text_value(&text, act->upstream, SL_ALERT_NAME_SHOWN);
        sl_text_add(&text, " until %s (", iso);
        sl_text_value(&text, act->reason != NULL && act->reason[0] ? act->reason
                                                                   : "no reason given",
                      SL_ALERT_NAME_SHOWN);
        sl_text_add(&text, "); calls wait or get 429 until then, on every instance");
    } else if (strcmp(act->action, "shorten") == 0) {
        json_object_set_new(j, "paused", sl_pause_json(act->left_us, iso, sizeof(iso)));
        sl_text_add(&text, ") shortened the pause of ");
        sl_text_value(&text, act->upstream, SL_ALERT_NAME_SHOWN);
        sl_text_add(&text, ": it now ends at %s (it had %.0f s left)", iso,
                    ceil((double)act->was_us / 1e6));
    } else {
        json_object_set_new(j, "paused", json_null());
        sl_text_add(&text, ") cleared the pause of ");
        sl_text_value(&text, act->upstream, SL_ALERT_NAME_SHOWN);
        sl_text_add(&text, " (it had %.0f s left); calls go through again, on "
                    "every instance", ceil((double)act->was_us / 1e6));
    }
    if (act->was_us > 0) {
        was = sl_pause_json(act->was_us, iso, sizeof(iso));
        json_object_set_new(was, "set_by", json_string(act->was_operator ? "operator"
                                                                         : "provider"));
        json_object_set_new(was, "reason", sl_json_text(act->was_reason != NULL
                                                            ? act->was_reason : ""));
    } else {
        was = json_null();
    }
    json_object_set_new(j, "event", json_string("operator"));
    json_object_set_new(j, "action", json_string(act->action));
    json_object_set_new(j, "upstream", json_string(act->upstream));
    json_object_set_new(j, "by", sl_json_text(act->by));
    json_object_set_new(j, "reason", act->reason != NULL ? sl_json_text(act->reason)
                                                         : json_null());
    json_object_set_new(j, "was", was);
    json_object_set_new(j, "text", sl_json_text(text.buf));
    sl_alerts_raise(a, j, sl_wants_operator, NULL);
}

static void sl_alerts_store(struct sl_alerts *a, bool down)
{
    const struct sl_config *c = a->w->config;
    static const char *const policy[] = {
        "each instance enforces its share of the limits locally",
        "calls get 503", "calls are forwarded uncounted"};
    json_t *j = json_object();
    struct sl_text text = {.len = 0};
    char addr[600], where[620];

    snprintf(where, sizeof(where), "redis %s", sl_config_store_address(c, addr, sizeof(addr)));
    sl_text_add(&text, "sluice: the shared limit store (");
    sl_text_value(&text, where, SL_ALERT_NAME_SHOWN);
    sl_text_add(&text, down ? ") is unreachable from " : ") answers ");
    sl_text_value(&text, a->instance, SL_ALERT_NAME_SHOWN);
    if (down)
        sl_text_add(&text, "; %s until it answers", policy[c->on_store_error]);
    else
        sl_text_add(&text, " again; limits are shared again");
    json_object_set_new(j, "event", json_string(down ? "store_down" : "store_up"));
    json_object_set_new(j, "store", sl_json_text(where));
    json_object_set_new(j, "text", sl_json_text(text.buf));
    sl_alerts_raise(a, j, sl_wants_store, NULL);
}

/* sl_snapshot_cb for the once-a-second check. */
static void sl_alerts_checked(void *arg, struct sl_snapshot *snap, const char *error)
{
    struct sl_alerts *a = arg;

    (void)error;
    a->checking = false;
    if (snap == NULL)
        return;  /* the store did not answer: store events say why */
    for (size_t i = 0; i < snap->nups; i++) {
        const struct sl_upstream_usage *uu = &snap->ups[i];
        if (uu->pause_new)
            sl_alerts_pause(a, uu);
        for (size_t k = 0; k < uu->up->nrules; k++) {
            const struct sl_rule_usage *ru = &uu->rules[k];
            for (size_t b = 0; b < ru->n; b++) {
                const struct sl_usage *u = &ru->buckets[b];
                for (unsigned lv = u->level_was + 1; lv <= u->level; lv++)
                    if (lv <= ru->rule->nalert_at)
                        sl_alerts_threshold(a, uu->up, ru->rule, u,
                                            ru->rule->alert_at[lv - 1]);
            }
        }
    }
    sl_snapshot_free(snap);
}

/* ---- sending ---- */

static size_t sl_alerts_discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static int sl_alerts_start(struct sl_alerts *a, struct sl_alert_msg *m)
{
    CURL *e = curl_easy_init();

    if (e == NULL)
        return -1;
    m->headers = curl_slist_append(NULL, "Content-Type: application/json");
    for (size_t i = 0; i < m->to->nheaders; i++)
        m->headers = curl_slist_append(m->headers, m->to->headers[i]);
    curl_easy_setopt(e, CURLOPT_URL, m->to->url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, m->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(m->body));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, m->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice-alerts");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)SL_ALERT_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sl_alerts_discard);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
    if (curl_multi_add_handle(a->w->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        curl_slist_free_all(m->headers);
        m->headers = NULL;
        return -1;
    }
    m->easy = e;
    m->attempts++;
    return 0;
}

static void sl_alerts_msg_free(struct sl_alert_msg *m)
{
    curl_slist_free_all(m->headers);
    free(m->body);
    sl_config_unref(m->config);
    free(m);
}

/* Start the due messages while there is room in flight. */
static void sl_alerts_pump(struct sl_alerts *a, int64_t now)
{
    struct sl_alert_msg **pp = &a->head, *prev = NULL;

    while (*pp != NULL) {
        struct sl_alert_msg *m = *pp;
        int slot = -1;
        for (int i = 0; i < SL_ALERT_INFLIGHT && slot < 0; i++)
            if (a->inflight[i] == NULL)
                slot = i;
        if (slot < 0)
            return;
        if (m->due_ms > now) {
            prev = m;
            pp = &m->next;
            continue;
        }
        *pp = m->next;
        if (a->tail == m)
            a->tail = prev;
        a->nqueued--;
        m->next = NULL;
        if (sl_alerts_start(a, m) != 0) {
            sl_alerts_count(a, SL_ALERT_FAILED);
            sl_alerts_msg_free(m);
            continue;
        }
        a->inflight[slot] = m;
    }
}

bool sl_alerts_done(struct sl_alerts *a, CURL *easy, CURLcode result)
{
    struct sl_alert_msg *m = NULL;
    long code = 0;

    if (a == NULL)
        return false;
    for (int i = 0; i < SL_ALERT_INFLIGHT && m == NULL; i++) {
        if (a->inflight[i] != NULL && a->inflight[i]->easy == easy) {
            m = a->inflight[i];
            a->inflight[i] = NULL;
        }
    }
    if (m == NULL)
        return false;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    curl_multi_remove_handle(a->w->multi, easy);
    curl_easy_cleanup(easy);
    curl_slist_free_all(m->headers);
    m->headers = NULL;
    m->easy = NULL;
    if (result == CURLE_OK && code >= 200 && code < 300) {
        sl_alerts_count(a, SL_ALERT_SENT);
        sl_alerts_msg_free(m);
    } else if (m->attempts >= SL_ALERT_ATTEMPTS) {
        sl_alerts_count(a, SL_ALERT_FAILED);
        char origin[300];
        sl_warn("alerts: %s: giving up after %d attempts (%s)",
                sl_alerts_origin(m->to->url, origin, sizeof(origin)),
                m->attempts, result != CURLE_OK ? curl_easy_strerror(result)
                                                : "no 2xx answer");
        sl_alerts_msg_free(m);
    } else {
        /* Back off 1, 2, 4 s; to the front of the line (it is the oldest). */
        m->due_ms = sl_time_mono_ms() + (1000LL << (m->attempts - 1));
        m->next = a->head;
        a->head = m;
        if (a->tail == NULL)
            a->tail = m;
        a->nqueued++;
    }
    return true;
}

/* Do what is due (a check, a send, a retry).  NOW in CLOCK_MONOTONIC ms. */
static void sl_alerts_run(struct sl_alerts *a, int64_t now)
{
    if (now >= a->next_check_ms) {
        a->next_check_ms = now + SL_ALERT_CHECK_MS;
        if (a->w->config->store_kind == SL_STORE_REDIS && a->w->config->nalerts > 0) {
            bool down = sl_store_redis_down(NULL);
            if (down != a->store_down) {
                a->store_down = down;
                sl_alerts_store(a, down);
            }
        }
        /* Thresholds and pauses are looked for only when someone listens
         * (a reload may add or remove receivers). */
        if (!a->checking && a->w->config->nalerts > 0) {
            struct sl_snapshot_req req = {
                .top = a->w->config->status_top, .flags = SL_SNAP_ALERTS,
                .apps = a->w->proxy->apps};
            a->checking = true;
            if (sl_store_snapshot(a->w->store, &req, sl_alerts_checked, a) != 0)
                a->checking = false;
        }
    }
    sl_alerts_pump(a, now);
}

/* When sl_alerts_run() is next due (ms). */
static int64_t sl_alerts_next_ms(const struct sl_alerts *a)
{
    int64_t next;
    bool room = false;

    next = a->next_check_ms;
    for (int i = 0; i < SL_ALERT_INFLIGHT; i++)
        room = room || a->inflight[i] == NULL;
    for (const struct sl_alert_msg *m = a->head; room && m != NULL; m = m->next)
        if (m->due_ms < next)
            next = m->due_ms;
    return next;
}

/* CHECK phase of worker 0's loop, every pass (a message queued by any
 * phase goes out in the same pass, as an operator's alert must). */
static void sl_alerts_pass(void *arg)
{
    struct sl_alerts *a = arg;

    sl_alerts_run(a, sl_loop_now(a->w->loop));
    sl_loop_timer_start(a->w->loop, &a->timer, sl_alerts_next_ms(a));
}

void sl_alerts_counts(const struct sl_alerts *a, uint64_t out[SL_ALERT_RESULTS])
{
    for (int i = 0; i < SL_ALERT_RESULTS; i++)
        out[i] = a != NULL ? atomic_load(&((struct sl_alerts *)a)->counts[i]) : 0;
}

struct sl_alerts *sl_alerts_new(struct sl_worker *w)
{
    struct sl_alerts *a;
    char host[64] = "sluice";

    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->w = w;
    gethostname(host, sizeof(host) - 1);
    snprintf(a->instance, sizeof(a->instance), "%s:%d", host, (int)getpid());
    a->next_check_ms = sl_time_mono_ms() + SL_ALERT_CHECK_MS;
    sl_loop_timer_init(&a->timer, NULL, a);
    if (sl_loop_hook(w->loop, SL_LOOP_CHECK, sl_alerts_pass, a) != 0) {
        free(a);
        return NULL;
    }
    return a;
}

void sl_alerts_free(struct sl_alerts *a)
{
    if (a == NULL)
        return;
    sl_loop_unhook(a->w->loop, SL_LOOP_CHECK, sl_alerts_pass, a);
    sl_loop_timer_stop(a->w->loop, &a->timer);
    for (int i = 0; i < SL_ALERT_INFLIGHT; i++) {
        struct sl_alert_msg *m = a->inflight[i];
        if (m == NULL)
            continue;
        curl_multi_remove_handle(a->w->multi, m->easy);
        curl_easy_cleanup(m->easy);
        sl_alerts_msg_free(m);
    }
    while (a->head != NULL) {
        struct sl_alert_msg *m = a->head;
        a->head = m->next;
        sl_alerts_msg_free(m);
    }
    free(a);
}
