/*
 * sl_redis_block — a blocking Redis client over one sl_redis_link; what
 * it promises is in sl_redis_block.h.
 *
 * The link asks its loop to watch one descriptor; here the "loop" is the
 * client itself: it keeps that one watch and, while the caller waits,
 * polls it (and the caller's cancel descriptor) and hands the readiness to
 * the link, which reads, writes and calls back as on a worker.  The link
 * reads until the socket (and TLS) has nothing more, so a level-triggered
 * poll misses nothing.  The link's deadline (sl_redis_link_check) bounds
 * connecting and every command; a reply is copied out of the callback,
 * since the link's is valid only during it.
 */
#include "sl_redis_block.h"

#include "sl_redis_link.h"
#include "sl_store.h"
#include "sl_time.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sl_redis_block {
    struct sl_redis_link *link;
    /* the link's one watch */
    int fd;
    bool watched, want_read, want_write;
    sl_io_cb cb;
    void *cb_arg;
    /* what the callbacks tell */
    bool connected, dead;
    char why[256];
    redisReply *reply;              /* a command's, copied */
    bool answered;
    unsigned messages;              /* pushed and not yet consumed */
    bool until_message;             /* a wait ends at a message too */
};

static int sl_block_watch(void *ctx, int fd, bool want_read, bool want_write, sl_io_cb cb,
                          void *arg)
{
    struct sl_redis_block *b = ctx;

    b->fd = fd;
    b->want_read = want_read;
    b->want_write = want_write;
    b->cb = cb;
    b->cb_arg = arg;
    b->watched = true;
    return 0;
}

static void sl_block_unwatch(void *ctx, int fd)
{
    struct sl_redis_block *b = ctx;

    (void)fd;
    b->watched = false;
}

/* A deep copy of R, freeable with freeReplyObject (hiredis frees with
 * free()).  NULL: out of memory. */
static redisReply *sl_block_copy(const redisReply *r)
{
    redisReply *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->type = r->type;
    c->integer = r->integer;
    if (r->str != NULL) {
        c->str = malloc(r->len + 1);
        if (c->str == NULL) {
            free(c);
            return NULL;
        }
        memcpy(c->str, r->str, r->len);
        c->str[r->len] = '\0';
        c->len = r->len;
    }
    if (r->element != NULL && r->elements > 0) {
        c->element = calloc(r->elements, sizeof(*c->element));
        if (c->element == NULL) {
            freeReplyObject(c);
            return NULL;
        }
        c->elements = r->elements;
        for (size_t i = 0; i < r->elements; i++) {
            c->element[i] = sl_block_copy(r->element[i]);
            if (c->element[i] == NULL) {
                freeReplyObject(c);
                return NULL;
            }
        }
    }
    return c;
}

static void sl_block_status(struct sl_redis_link *link, int status, const char *reason,
                            void *arg)
{
    struct sl_redis_block *b = arg;

    (void)link;
    if (status == SL_REDIS_LINK_OK) {
        b->connected = true;
        return;
    }
    b->dead = true;
    snprintf(b->why, sizeof(b->why), "%s", reason != NULL ? reason : "connection failed");
}

static void sl_block_reply(struct sl_redis_link *link, redisReply *rep, void *privdata)
{
    struct sl_redis_block *b = privdata;

    (void)link;
    b->answered = true;
    b->reply = rep != NULL ? sl_block_copy(rep) : NULL;
}

static void sl_block_message(struct sl_redis_link *link, redisReply *rep, void *privdata)
{
    struct sl_redis_block *b = privdata;

    (void)link, (void)rep;
    b->messages++;
}

/*
 * Drive the link until *FLAG is set, the link dies, UNTIL_MS (sl_time_mono_ms;
 * -1: only the link's deadline) passes or CANCEL_FD is readable.
 * 1: *FLAG set; 0: time ran out or cancelled; -1: dead.
 */
static int sl_block_run(struct sl_redis_block *b, const bool *flag, int64_t until_ms,
                        int cancel_fd)
{
    while (!*flag && !(b->until_message && b->messages > 0)) {
        struct pollfd pf[2];
        int64_t now, next;
        int n = 0, timeout;

        if (b->dead)
            return -1;
        now = sl_time_mono_ms();
        if (until_ms >= 0 && now >= until_ms)
            return 0;
        next = sl_redis_link_check(b->link, now);
        if (b->dead)
            return -1;
        if (*flag || (b->until_message && b->messages > 0))
            break;
        if (until_ms >= 0 && (next < 0 || until_ms < next))
            next = until_ms;
        timeout = next < 0 ? 1000 : next <= now ? 0 : (int)(next - now > 1000 ? 1000 : next - now);
        if (b->watched) {
            pf[n].fd = b->fd;
            pf[n].events = (short)((b->want_read ? POLLIN : 0) | (b->want_write ? POLLOUT : 0));
            pf[n].revents = 0;
            n++;
        }
        if (cancel_fd >= 0) {
            pf[n].fd = cancel_fd;
            pf[n].events = POLLIN;
            pf[n].revents = 0;
            n++;
        }
        if (poll(pf, (nfds_t)n, timeout) < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (cancel_fd >= 0 && (pf[n - 1].revents & POLLIN))
            return 0;
        if (b->watched && pf[0].revents != 0) {
            short ev = pf[0].revents;
            b->cb(b->cb_arg, (ev & (POLLIN | POLLHUP | POLLERR)) != 0,
                  (ev & (POLLOUT | POLLHUP | POLLERR)) != 0);
        }
    }
    return 1;
}

struct sl_redis_block *sl_redis_block_connect(const struct sl_redis_link_conf *conf,
                                              char *why, size_t why_len)
{
    struct sl_redis_block *b = calloc(1, sizeof(*b));
    struct sl_loop loop = {.watch = sl_block_watch, .unwatch = sl_block_unwatch};
    const struct sl_redis_link_cbs cbs = {
        .on_connect = sl_block_status,
        .on_disconnect = sl_block_status,
        .on_message = sl_block_message,
    };
    struct sl_redis_link_cbs c = cbs;

    if (b == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    b->fd = -1;
    loop.ctx = b;
    c.arg = b;
    b->link = sl_redis_link_new(conf, &loop, &c, why, why_len);
    if (b->link == NULL) {
        free(b);
        return NULL;
    }
    if (sl_block_run(b, &b->connected, -1, -1) != 1) {
        snprintf(why, why_len, "%s", b->dead ? b->why : "no answer");
        sl_redis_block_free(b);
        return NULL;
    }
    return b;
}

redisReply *sl_redis_block_command(struct sl_redis_block *b, const char *fmt, ...)
{
    va_list ap;
    int rc;

    if (b->dead)
        return NULL;
    b->answered = false;
    b->reply = NULL;
    va_start(ap, fmt);
    rc = sl_redis_link_commandv(b->link, sl_block_reply, b, fmt, ap);
    va_end(ap);
    if (rc != 0)
        return NULL;
    if (sl_block_run(b, &b->answered, -1, -1) != 1 || b->reply == NULL) {
        b->dead = true;
        if (b->reply != NULL)
            freeReplyObject(b->reply);
        b->reply = NULL;
        return NULL;
    }
    {
        redisReply *r = b->reply;
        b->reply = NULL;
        return r;
    }
}

int sl_redis_block_subscribe(struct sl_redis_block *b, const char *channel)
{
    const char *argv[] = {"SUBSCRIBE", channel};

    if (b->dead)
        return -1;
    b->answered = false;
    b->reply = NULL;
    if (sl_redis_link_command(b->link, 2, argv, NULL, sl_block_reply, b) != 0)
        return -1;
    if (sl_block_run(b, &b->answered, -1, -1) != 1 || b->reply == NULL ||
        b->reply->type == REDIS_REPLY_ERROR) {
        b->dead = true;
        if (b->reply != NULL)
            freeReplyObject(b->reply);
        b->reply = NULL;
        return -1;
    }
    freeReplyObject(b->reply);
    b->reply = NULL;
    return 0;
}

int sl_redis_block_wait_message(struct sl_redis_block *b, int64_t timeout_ms, int cancel_fd)
{
    if (b->messages == 0) {
        bool never = false;
        int rc;

        b->until_message = true;
        rc = sl_block_run(b, &never, sl_time_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0),
                          cancel_fd);
        b->until_message = false;
        if (b->messages == 0)
            return rc < 0 ? -1 : 0;
    }
    b->messages--;
    return 1;
}

void sl_redis_block_free(struct sl_redis_block *b)
{
    if (b == NULL)
        return;
    sl_redis_link_free(b->link);
    if (b->reply != NULL)
        freeReplyObject(b->reply);
    free(b);
}
