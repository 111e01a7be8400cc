/*
 * sl_redis_sentinel — finding the primary of a redis-sentinel:// store.
 * What it does and promises is in sl_redis_sentinel.h.
 *
 * An ask is one link at a time: to Sentinel i, the handshake (AUTH when
 * store_sentinel gives a password), then the one question.  Its reply
 * ends the ask (an address) or moves it to the next Sentinel (nil: this
 * one does not know MASTER; an error).  A link that dies first (refused,
 * timed out, TLS) moves it on from its connect or disconnect callback;
 * the question's NULL reply, which comes before those, does nothing.  So
 * exactly one of them moves the ask on, and it frees the link it had.
 * After every Sentinel had its turn, the ask fails with their reasons.
 *
 * The watch is a second link, subscribed to +switch-master.  It is made
 * when the first ask succeeds (to the Sentinel that answered), and again
 * SL_SENTINEL_WATCH_RETRY_MS after it fails (to the next one).
 */
#include "sl_redis_sentinel.h"

#include "sl_config.h"
#include "sl_log.h"
#include "sl_redis_block.h"
#include "sl_redis_link.h"
#include "sl_store.h"
#include "sl_time.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SL_SENTINEL_WATCH_RETRY_MS 500

struct sl_redis_sentinel {
    const struct sl_config *config;
    struct sl_loop loop;
    int64_t timeout_ms;
    size_t first;                   /* the Sentinel that answered last */
    /* the ask under way (cb != NULL) */
    struct sl_redis_link *ask;
    size_t ask_i, tried;
    sl_sentinel_found_fn cb;
    void *cb_arg;
    char why[512];                  /* the reasons so far */
    size_t why_len;
    /* the watch */
    sl_sentinel_switch_fn on_switch;
    void *arg;
    struct sl_redis_link *watch;
    size_t watch_i;
    bool watching;                  /* make and keep a watch */
    bool watch_refused_logged;
    int64_t watch_at_ms;            /* when to make it again (0: now) */
};

static struct sl_redis_link_conf sl_sentinel_conf(const struct sl_redis_sentinel *s,
                                                  size_t i)
{
    const struct sl_config *c = s->config;

    return (struct sl_redis_link_conf){
        .host = c->redis_sentinel_host[i],
        .port = c->redis_sentinel_port[i],
        .user = c->sentinel_user,
        .password = c->sentinel_password,
        .db = 0,
        .tls = c->redis_use_tls ? c->redis_tls : NULL,
        .timeout_ms = s->timeout_ms,
    };
}

/* Add "HOST:PORT WHAT" to the ask's reasons. */
static void sl_ask_reason(struct sl_redis_sentinel *s, size_t i, const char *what)
{
    const struct sl_config *c = s->config;
    int n;

    if (s->why_len >= sizeof(s->why) - 1)
        return;
    n = snprintf(s->why + s->why_len, sizeof(s->why) - s->why_len, "%s%s:%d %s",
                 s->why_len > 0 ? "; " : "", c->redis_sentinel_host[i],
                 c->redis_sentinel_port[i], what);
    if (n > 0)
        s->why_len += (size_t)n;
    if (s->why_len > sizeof(s->why) - 1)
        s->why_len = sizeof(s->why) - 1;
}

static void sl_ask_next(struct sl_redis_sentinel *s);

/* End the ask: tell its owner (HOST NULL: failed, with the reasons). */
static void sl_ask_done(struct sl_redis_sentinel *s, const char *host, int port)
{
    sl_sentinel_found_fn cb = s->cb;
    void *arg = s->cb_arg;
    char why[640];

    s->cb = NULL;
    if (host == NULL)
        snprintf(why, sizeof(why), "no Sentinel gave the primary \"%s\": %s",
                 s->config->redis_master, s->why);
    cb(arg, host, port, host == NULL ? why : NULL);
}

/* The ask's link died before the question was answered: the next one. */
static void sl_ask_link_down(struct sl_redis_link *link, int status, const char *reason,
                             void *arg)
{
    struct sl_redis_sentinel *s = arg;

    if (status == SL_REDIS_LINK_OK || link != s->ask)
        return;
    sl_ask_reason(s, s->ask_i, reason != NULL ? reason : "failed");
    s->ask = NULL;
    sl_redis_link_free(link);
    s->ask_i = (s->ask_i + 1) % s->config->redis_nsentinels;
    sl_ask_next(s);
}

static void sl_watch_start(struct sl_redis_sentinel *s);

static void sl_ask_reply(struct sl_redis_link *link, redisReply *rep, void *privdata)
{
    struct sl_redis_sentinel *s = privdata;
    char host[256];
    long port = 0;

    if (rep == NULL || link != s->ask)
        return;  /* the link died: its connect or disconnect callback goes on */
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_STRING &&
        rep->element[1]->type == REDIS_REPLY_STRING &&
        rep->element[0]->len > 0 && rep->element[0]->len < sizeof(host)) {
        char *end;
        memcpy(host, rep->element[0]->str, rep->element[0]->len);
        host[rep->element[0]->len] = '\0';
        port = strtol(rep->element[1]->str, &end, 10);
        if (*end != '\0' || port < 1 || port > 65535)
            port = 0;
    }
    if (port == 0) {
        char what[200];
        if (rep->type == REDIS_REPLY_ERROR)
            snprintf(what, sizeof(what), "answered %.*s", (int)(rep->len < 150 ? rep->len : 150),
                     rep->str);
        else if (rep->type == REDIS_REPLY_NIL)
            snprintf(what, sizeof(what), "does not know it");
        else
            snprintf(what, sizeof(what), "gave no address");
        sl_ask_reason(s, s->ask_i, what);
    }
    s->ask = NULL;
    sl_redis_link_free(link);
    if (port == 0) {
        s->ask_i = (s->ask_i + 1) % s->config->redis_nsentinels;
        sl_ask_next(s);
        return;
    }
    /* The client rules: the Sentinel that answered is asked first next
     * time, and watched. */
    s->first = s->ask_i;
    if (s->on_switch != NULL && !s->watching) {
        s->watching = true;
        s->watch_i = s->first;
        sl_watch_start(s);
    }
    sl_ask_done(s, host, (int)port);
}

/* Ask Sentinel s->ask_i, unless every one had its turn. */
static void sl_ask_next(struct sl_redis_sentinel *s)
{
    const struct sl_redis_link_cbs cbs = {
        .on_connect = sl_ask_link_down,
        .on_disconnect = sl_ask_link_down,
        .arg = s,
    };
    struct sl_redis_link_conf lc;
    char why[256];

    while (s->tried < s->config->redis_nsentinels) {
        const char *argv[] = {"SENTINEL", "get-master-addr-by-name", s->config->redis_master};
        s->tried++;
        lc = sl_sentinel_conf(s, s->ask_i);
        s->ask = sl_redis_link_new(&lc, &s->loop, &cbs, why, sizeof(why));
        if (s->ask != NULL &&
            sl_redis_link_command(s->ask, 3, argv, NULL, sl_ask_reply, s) == 0)
            return;
        if (s->ask != NULL) {
            sl_redis_link_free(s->ask);
            s->ask = NULL;
            snprintf(why, sizeof(why), "out of memory");
        }
        sl_ask_reason(s, s->ask_i, why);
        s->ask_i = (s->ask_i + 1) % s->config->redis_nsentinels;
    }
    sl_ask_done(s, NULL, 0);
}

void sl_redis_sentinel_distrust(struct sl_redis_sentinel *s)
{
    s->first = (s->first + 1) % s->config->redis_nsentinels;
}

int sl_redis_sentinel_ask(struct sl_redis_sentinel *s, sl_sentinel_found_fn cb, void *arg)
{
    if (s->cb != NULL)
        return -1;
    s->cb = cb;
    s->cb_arg = arg;
    s->tried = 0;
    s->ask_i = s->first;
    s->why_len = 0;
    s->why[0] = '\0';
    /* Begun by the next sl_redis_sentinel_timers(), from the loop: a
     * Sentinel that cannot even be tried (no address) would otherwise be
     * told from inside this call. */
    return 0;
}

/* ---- the watch ---- */

static void sl_watch_down(struct sl_redis_link *link, int status, const char *reason,
                          void *arg)
{
    struct sl_redis_sentinel *s = arg;

    (void)reason;
    if (status == SL_REDIS_LINK_OK || link != s->watch)
        return;
    s->watch = NULL;
    sl_redis_link_free(link);
    s->watch_i = (s->watch_i + 1) % s->config->redis_nsentinels;
    s->watch_at_ms = sl_time_mono_ms() + SL_SENTINEL_WATCH_RETRY_MS;
}

/* "+switch-master" carries "MASTER OLD-IP OLD-PORT NEW-IP NEW-PORT". */
static void sl_watch_message(struct sl_redis_link *link, redisReply *rep, void *arg)
{
    struct sl_redis_sentinel *s = arg;
    const redisReply *payload;
    char text[512], name[256], oldh[256], newh[256];
    int oldp, newp;

    (void)link;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3)
        return;
    payload = rep->element[rep->elements - 1];
    if (payload->type != REDIS_REPLY_STRING || payload->len >= sizeof(text))
        return;
    memcpy(text, payload->str, payload->len);
    text[payload->len] = '\0';
    if (sscanf(text, "%255s %255s %d %255s %d", name, oldh, &oldp, newh, &newp) != 5 ||
        strcmp(name, s->config->redis_master) != 0)
        return;
    if (s->on_switch != NULL)
        s->on_switch(s->arg, newh, newp);
}

/* The watch's SUBSCRIBE answered.  Refused (an ACL without the channel):
 * logged once, and the next Sentinel is tried after the backoff. */
static void sl_watch_subscribed(struct sl_redis_link *link, redisReply *rep, void *arg)
{
    struct sl_redis_sentinel *s = arg;

    if (rep == NULL || rep->type != REDIS_REPLY_ERROR || link != s->watch)
        return;
    if (!s->watch_refused_logged) {
        s->watch_refused_logged = true;
        sl_warn("store: Sentinel %s:%d refused SUBSCRIBE +switch-master (%.200s): "
                "failovers are then noticed only when the old primary's link fails",
                s->config->redis_sentinel_host[s->watch_i],
                s->config->redis_sentinel_port[s->watch_i], rep->str);
    }
    s->watch = NULL;
    sl_redis_link_free(link);
    s->watch_i = (s->watch_i + 1) % s->config->redis_nsentinels;
    s->watch_at_ms = sl_time_mono_ms() + SL_SENTINEL_WATCH_RETRY_MS;
}

static void sl_watch_start(struct sl_redis_sentinel *s)
{
    const struct sl_redis_link_cbs cbs = {
        .on_connect = sl_watch_down,
        .on_disconnect = sl_watch_down,
        .on_message = sl_watch_message,
        .arg = s,
    };
    const char *argv[] = {"SUBSCRIBE", "+switch-master"};
    struct sl_redis_link_conf lc = sl_sentinel_conf(s, s->watch_i);
    char why[256];

    s->watch = sl_redis_link_new(&lc, &s->loop, &cbs, why, sizeof(why));
    if (s->watch != NULL &&
        sl_redis_link_command(s->watch, 2, argv, NULL, sl_watch_subscribed, s) != 0) {
        sl_redis_link_free(s->watch);
        s->watch = NULL;
    }
    if (s->watch == NULL) {
        s->watch_i = (s->watch_i + 1) % s->config->redis_nsentinels;
        s->watch_at_ms = sl_time_mono_ms() + SL_SENTINEL_WATCH_RETRY_MS;
    }
}

/* ---- life ---- */

struct sl_redis_sentinel *sl_redis_sentinel_new(const struct sl_config *config,
                                                const struct sl_loop *loop,
                                                sl_sentinel_switch_fn on_switch,
                                                void *arg)
{
    struct sl_redis_sentinel *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->config = sl_config_ref(config);
    s->loop = *loop;
    s->timeout_ms = config->store_timeout_us / 1000 + 1;
    s->on_switch = on_switch;
    s->arg = arg;
    return s;
}

int64_t sl_redis_sentinel_timers(struct sl_redis_sentinel *s, int64_t now_ms)
{
    int64_t next = -1, t;

    /* An ask begun by sl_redis_sentinel_ask() starts here, from the loop,
     * so that its callback never runs inside the ask. */
    if (s->cb != NULL && s->ask == NULL && s->tried == 0)
        sl_ask_next(s);
    if (s->ask != NULL) {
        t = sl_redis_link_check(s->ask, now_ms);
        if (t >= 0)
            next = t;
    }
    if (s->watching && s->watch == NULL && now_ms >= s->watch_at_ms)
        sl_watch_start(s);
    if (s->watch != NULL) {
        t = sl_redis_link_check(s->watch, now_ms);
        if (t >= 0 && (next < 0 || t < next))
            next = t;
    } else if (s->watching && (next < 0 || s->watch_at_ms < next)) {
        next = s->watch_at_ms;
    }
    return next;
}

void sl_redis_sentinel_free(struct sl_redis_sentinel *s)
{
    if (s == NULL)
        return;
    s->cb = NULL;
    if (s->ask != NULL) {
        struct sl_redis_link *l = s->ask;
        s->ask = NULL;
        sl_redis_link_free(l);
    }
    if (s->watch != NULL) {
        struct sl_redis_link *l = s->watch;
        s->watch = NULL;
        sl_redis_link_free(l);
    }
    sl_config_unref(s->config);
    free(s);
}

/* ---- blocking ---- */

int sl_redis_sentinel_resolve(const struct sl_config *c, int timeout_ms,
                              char **host, int *port, char *why, size_t why_len)
{
    struct sl_redis_sentinel probe = {.config = c, .timeout_ms = timeout_ms};
    size_t n = 0;

    why[0] = '\0';
    for (size_t i = 0; i < c->redis_nsentinels; i++) {
        struct sl_redis_link_conf lc = sl_sentinel_conf(&probe, i);
        char what[300] = "does not know it";
        struct sl_redis_block *b = sl_redis_block_connect(&lc, what, sizeof(what));
        redisReply *r = NULL;

        if (b != NULL) {
            r = sl_redis_block_command(b, "SENTINEL get-master-addr-by-name %s",
                                       c->redis_master);
            if (r == NULL) {
                snprintf(what, sizeof(what), "did not answer");
            } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                       r->element[0]->type == REDIS_REPLY_STRING &&
                       r->element[1]->type == REDIS_REPLY_STRING) {
                char *end;
                long p = strtol(r->element[1]->str, &end, 10);
                if (*end == '\0' && p >= 1 && p <= 65535 &&
                    (*host = strdup(r->element[0]->str)) != NULL) {
                    *port = (int)p;
                    freeReplyObject(r);
                    sl_redis_block_free(b);
                    return 0;
                }
                snprintf(what, sizeof(what), "gave no address");
            } else if (r->type == REDIS_REPLY_ERROR) {
                snprintf(what, sizeof(what), "answered %.200s", r->str);
            } else if (r->type != REDIS_REPLY_NIL) {
                snprintf(what, sizeof(what), "gave no address");
            }
        }
        if (n < why_len)
            n += (size_t)snprintf(why + n, why_len - n, "%s%s:%d %s", n > 0 ? "; " : "",
                                  c->redis_sentinel_host[i], c->redis_sentinel_port[i], what);
        if (r != NULL)
            freeReplyObject(r);
        sl_redis_block_free(b);
    }
    return -1;
}
