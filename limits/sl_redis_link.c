/*
 * sl_redis_link — one connection to one Redis server, of sluice's own.
 *
 * hiredis 0.14 (Debian 12's) has no TLS, no command timeouts and an
 * asynchronous context whose callbacks run from inside redisAsyncFree().
 * Its RESP parts are sound, so this module keeps those (redisReader to
 * cut replies out of the bytes read, redisFormatCommandArgv to write
 * commands, freeReplyObject) and does the rest: the socket, TLS with
 * OpenSSL, the queue of commands awaiting replies, the deadline, and
 * callbacks with one set of rules (sl_redis_link.h).  It knows nothing of
 * quotas; the Redis store (sl_store_redis.c) and, later, Sentinel and
 * Cluster routing sit on top of it, one link per server.
 *
 * The state machine.  `state` is the only variable that says where the
 * link is, and sl_rl_fail() is the only way to DEAD:
 *
 *   CONNECTING --TCP up--> TLS --handshake done--> HANDSHAKE --all answered--> UP
 *        |   (plain: straight to HANDSHAKE)  |                |                 |
 *        +-----------------------------------+----------------+-----------------+--> DEAD
 *
 * CONNECTING tries each address getaddrinfo gave, in turn.  HANDSHAKE
 * is the wait for the replies to AUTH [user] password and SELECT db (or
 * one PING when there is neither: "connected" always means "Redis
 * answered"); they were queued at creation, ahead of anything the owner
 * sends, and go out pipelined with it in one write.  An error reply to
 * any of them is a connect failure carrying Redis's own text ("WRONGPASS
 * invalid username-password pair ...").  The owner hears of the outcome
 * once: on_connect (OK, or why not) for a link that never got UP,
 * on_disconnect for one that did.
 *
 * Commands and replies.  Every command accepted is formatted into the
 * output buffer and gets an entry at the tail of a FIFO; Redis answers a
 * connection's commands in order, so each reply read belongs to the head
 * entry.  A SUBSCRIBE of n channels is answered n times: its entry counts
 * them down and its callback gets the last.  After a SUBSCRIBE the link is
 * a subscriber: "message" and "pmessage" arrays go to on_message and are
 * never matched against the FIFO.  Every entry's callback is called
 * exactly once -- with its reply, or with NULL when the link dies -- and
 * the entry is taken off the FIFO before its callback runs, so a callback
 * that frees the link cannot have it called twice.
 *
 * The deadline.  hiredis never gives up on a command; this link does, in
 * sl_redis_link_check(), which the owner calls from its timers: a link
 * not UP within timeout_ms of its creation, or whose oldest unanswered
 * command was queued more than timeout_ms ago, dies with ERR_TIMEOUT
 * (after reading whatever replies have already arrived, so a reply that
 * is here is never given up on).  One stamp per command and a look at the
 * FIFO's head make it O(1).
 *
 * TLS.  SSL_read and SSL_write may each need the other direction of the
 * socket (a TLS 1.3 key update, a session ticket).  A write that wants to
 * read stops asking for writability (it would spin) and is retried when
 * the socket is readable; a read that wants to write asks for writability.
 * An SSL_write that must be retried is retried with the same length from
 * the same place in the output buffer (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER:
 * the buffer may have moved in a realloc, its bytes have not).  Reads drain
 * until OpenSSL wants more, so no decrypted record waits unseen.  The
 * thread's OpenSSL error queue is shared with libcurl on the worker
 * thread, so it is cleared before every SSL call and emptied after a
 * failure.  A certificate that fails verification is reported with
 * X509_verify_cert_error_string()'s reason ("unable to get local issuer
 * certificate", "hostname mismatch"); other TLS failures with the first
 * reason in the error queue ("tlsv13 alert certificate required").
 *
 * The output buffer is the link's own rather than an sl_buf: it is
 * consumed from the front as the socket takes bytes, and a failed append
 * must leave the commands already queued in it intact (an sl_buf that
 * fails empties itself), since each of them has an entry in the FIFO.
 *
 * Ownership.  The link owns its socket, its SSL (and a reference to the
 * shared SSL_CTX, so sl_redis_tls_free() may come first), its output
 * buffer, its reader and the FIFO entries; replies are the link's and are
 * freed when their callback returns.  The owner owns the link and frees it
 * with sl_redis_link_free(), also from inside a callback: `depth` counts
 * the link's functions on the stack, and a link freed while one is
 * running is destroyed when the outermost returns (`free_asked` stops
 * everything in between).  The loop's watch is keyed by fd: it is dropped
 * before the socket is closed.
 */
#include "sl_redis_link.h"

#include "sl_assert.h"
#include "sl_store.h"
#include "sl_time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define SL_RL_READ_CHUNK 16384
/* An empty output buffer bigger than this is given back. */
#define SL_RL_OBUF_KEEP (64 * 1024)

struct sl_redis_tls {
    SSL_CTX *ctx;
    char *server_name;      /* owned; NULL: each link's host */
    bool verify;
};

/* A command awaiting its reply.  Owned by the FIFO until popped. */
struct sl_rl_cmd {
    struct sl_rl_cmd *next;
    sl_redis_reply_fn cb;   /* NULL for the link's own handshake commands */
    void *privdata;
    const char *what;       /* handshake: "AUTH", "SELECT" or "PING" */
    int64_t at_ms;          /* queued at (the deadline runs from here) */
    unsigned replies;       /* replies still to come (SUBSCRIBE a b c: 3) */
};

struct sl_redis_link {
    enum sl_redis_link_state state;
    struct sl_loop loop;            /* copied from the owner */
    struct sl_redis_link_cbs cbs;
    char name[300];                 /* "host:port", "[v6]:port" for sentences */
    int fd;                         /* -1 once closed */
    bool watched;                   /* the loop has fd; reg_* say how */
    bool reg_read, reg_write;
    struct addrinfo *ai_list;       /* owned; the addresses to try */
    struct addrinfo *ai_next;       /* ... the next one */
    SSL_CTX *ctx;                   /* a reference, or NULL: plain TCP */
    SSL *ssl;                       /* owned, during TLS and after */
    char *server_name;              /* owned: SNI and the name verified */
    bool verify;
    bool hs_want_read, hs_want_write;   /* what SSL_connect waits for */
    bool write_wants_read;          /* SSL_write said WANT_READ */
    bool read_wants_write;          /* SSL_read said WANT_WRITE */
    size_t ssl_retry_len;           /* an SSL_write to repeat: its length */
    char *obuf;                     /* owned; [opos, olen) not yet written */
    size_t opos, olen, ocap;
    redisReader *reader;            /* owned */
    struct sl_rl_cmd *head, *tail;  /* the FIFO */
    size_t npending;                /* the owner's commands in it */
    unsigned handshake_left;        /* handshake replies to come */
    bool subscribed;                /* a SUBSCRIBE was sent */
    bool corked;                    /* commands leave the watch alone */
    int64_t timeout_ms;
    int64_t start_ms;               /* creation: the connect deadline's base */
    int depth;                      /* the link's functions on the stack */
    bool free_asked;                /* sl_redis_link_free() was called */
    char errstr[256];               /* why it died; "" while alive */
};

static void sl_rl_fail(struct sl_redis_link *link, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void sl_rl_io(void *arg, bool readable, bool writable);

/* ---- TLS contexts ---- */

/* The first reason in this thread's OpenSSL error queue into BUF (and the
 * queue emptied), or DEFAULT when it holds none. */
static void sl_ssl_reason(char *buf, size_t len, const char *dflt)
{
    unsigned long e = ERR_get_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

    if (e != 0 && r == NULL) {
        ERR_error_string_n(e, buf, len);
    } else {
        snprintf(buf, len, "%s", r != NULL ? r : dflt);
    }
    ERR_clear_error();
}

struct sl_redis_tls *sl_redis_tls_new(const struct sl_redis_tls_conf *conf,
                                      char *why, size_t why_len)
{
    struct sl_redis_tls *tls = calloc(1, sizeof(*tls));
    char reason[200];

    ERR_clear_error();
    if (tls == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    tls->verify = !conf->no_verify;
    if ((conf->cert_file != NULL) != (conf->key_file != NULL)) {
        snprintf(why, why_len, "a client certificate needs both a certificate "
                 "file and a key file");
        goto fail;
    }
    if (conf->server_name != NULL &&
        (tls->server_name = strdup(conf->server_name)) == NULL) {
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    tls->ctx = SSL_CTX_new(TLS_client_method());
    if (tls->ctx == NULL) {
        sl_ssl_reason(reason, sizeof(reason), "unknown error");
        snprintf(why, why_len, "cannot set up TLS: %s", reason);
        goto fail;
    }
    SSL_CTX_set_min_proto_version(tls->ctx, TLS1_2_VERSION);
    if (conf->ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(tls->ctx, conf->ca_file, NULL) != 1) {
            sl_ssl_reason(reason, sizeof(reason), "no certificate in it");
            snprintf(why, why_len, "cannot read the CA file %s: %s", conf->ca_file,
                     reason);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(tls->ctx) != 1) {
        sl_ssl_reason(reason, sizeof(reason), "unknown error");
        snprintf(why, why_len, "cannot read the system's CA certificates: %s", reason);
        goto fail;
    }
    if (conf->cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(tls->ctx, conf->cert_file) != 1) {
            sl_ssl_reason(reason, sizeof(reason), "no certificate in it");
            snprintf(why, why_len, "cannot read the client certificate %s: %s",
                     conf->cert_file, reason);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(tls->ctx, conf->key_file, SSL_FILETYPE_PEM) != 1) {
            /* OpenSSL checks the key against the certificate here already. */
            unsigned long e = ERR_peek_error();
            bool mismatch = ERR_GET_LIB(e) == ERR_LIB_X509 &&
                            ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
            sl_ssl_reason(reason, sizeof(reason), "no key in it");
            if (mismatch)
                snprintf(why, why_len, "the client key %s is not the key of %s: %s",
                         conf->key_file, conf->cert_file, reason);
            else
                snprintf(why, why_len, "cannot read the client key %s: %s",
                         conf->key_file, reason);
            goto fail;
        }
        if (SSL_CTX_check_private_key(tls->ctx) != 1) {
            sl_ssl_reason(reason, sizeof(reason), "they do not match");
            snprintf(why, why_len, "the client key %s is not the key of %s: %s",
                     conf->key_file, conf->cert_file, reason);
            goto fail;
        }
    }
    SSL_CTX_set_verify(tls->ctx, tls->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return tls;
fail:
    sl_redis_tls_free(tls);
    return NULL;
}

void sl_redis_tls_free(struct sl_redis_tls *tls)
{
    if (tls == NULL)
        return;
    SSL_CTX_free(tls->ctx);
    free(tls->server_name);
    free(tls);
}

/* ---- the loop's watch ---- */

/* Tell the loop what the link waits for now, when that changed. */
static void sl_rl_watch(struct sl_redis_link *link)
{
    bool r = false, w = false;

    if (link->fd < 0)
        return;
    switch (link->state) {
    case SL_REDIS_LINK_CONNECTING:
        w = true;
        break;
    case SL_REDIS_LINK_TLS:
        r = link->hs_want_read;
        w = link->hs_want_write;
        break;
    case SL_REDIS_LINK_HANDSHAKE:
    case SL_REDIS_LINK_UP:
        r = true;
        w = (link->opos < link->olen && !link->write_wants_read) ||
            link->read_wants_write;
        break;
    case SL_REDIS_LINK_DEAD:
        return;
    }
    if (link->watched && r == link->reg_read && w == link->reg_write)
        return;
    if (!r && !w) {
        if (link->watched)
            link->loop.unwatch(link->loop.ctx, link->fd);
        link->watched = false;
        return;
    }
    if (link->loop.watch(link->loop.ctx, link->fd, r, w, sl_rl_io, link) != 0) {
        /* Not watched: the next change tries again, and the deadline
         * ends a link that stays unheard. */
        link->watched = false;
        return;
    }
    link->watched = true;
    link->reg_read = r;
    link->reg_write = w;
}

/* Drop the socket: the watch first (the loop keys it by fd). */
static void sl_rl_close_socket(struct sl_redis_link *link)
{
    if (link->fd < 0)
        return;
    if (link->watched)
        link->loop.unwatch(link->loop.ctx, link->fd);
    link->watched = false;
    if (link->ssl != NULL) {
        SSL_free(link->ssl);
        link->ssl = NULL;
    }
    close(link->fd);
    link->fd = -1;
}

/* ---- the FIFO ---- */

static struct sl_rl_cmd *sl_rl_pop(struct sl_redis_link *link)
{
    struct sl_rl_cmd *c = link->head;

    if (c == NULL)
        return NULL;
    link->head = c->next;
    if (link->head == NULL)
        link->tail = NULL;
    if (c->cb != NULL) {
        SL_ASSERT(link->npending > 0);
        link->npending--;
    }
    SL_ASSERT(link->head != NULL || link->npending == 0);
    return c;
}

static void sl_rl_push(struct sl_redis_link *link, struct sl_rl_cmd *c)
{
    c->next = NULL;
    if (link->tail != NULL)
        link->tail->next = c;
    else
        link->head = c;
    link->tail = c;
    if (c->cb != NULL)
        link->npending++;
}

/* Answer every unanswered command with NULL, oldest first.  Each is off
 * the FIFO before its callback runs. */
static void sl_rl_drain(struct sl_redis_link *link)
{
    struct sl_rl_cmd *c;

    while ((c = sl_rl_pop(link)) != NULL) {
        if (c->cb != NULL)
            c->cb(link, NULL, c->privdata);
        free(c);
    }
}

/*
 * The link is dead: close it, answer what it owed with NULL, then tell
 * the owner why (unless it is freeing the link).  The only way to DEAD.
 */
static void sl_rl_fail(struct sl_redis_link *link, int status, const char *fmt, ...)
{
    enum sl_redis_link_state was = link->state;
    va_list ap;

    if (was == SL_REDIS_LINK_DEAD)
        return;
    link->state = SL_REDIS_LINK_DEAD;
    va_start(ap, fmt);
    vsnprintf(link->errstr, sizeof(link->errstr), fmt, ap);
    va_end(ap);
    sl_rl_close_socket(link);
    link->opos = link->olen = 0;
    link->depth++;
    sl_rl_drain(link);
    if (!link->free_asked) {
        if (was != SL_REDIS_LINK_UP && link->cbs.on_connect != NULL)
            link->cbs.on_connect(link, status, link->errstr, link->cbs.arg);
        else if (was == SL_REDIS_LINK_UP && link->cbs.on_disconnect != NULL)
            link->cbs.on_disconnect(link, status, link->errstr, link->cbs.arg);
    }
    link->depth--;
}

/* ---- the output buffer ---- */

static int sl_rl_append(struct sl_redis_link *link, const char *p, size_t n)
{
    if (link->opos > 0 && link->opos >= link->ocap / 2) {
        /* Keep the unwritten bytes at the front.  Moving them is allowed
         * even while an SSL_write waits to be repeated (moving buffer). */
        memmove(link->obuf, link->obuf + link->opos, link->olen - link->opos);
        link->olen -= link->opos;
        link->opos = 0;
    }
    if (link->olen + n > link->ocap) {
        size_t cap = link->ocap ? link->ocap : 4096;
        char *nb;
        while (cap < link->olen + n)
            cap *= 2;
        nb = realloc(link->obuf, cap);
        if (nb == NULL)
            return -1;
        link->obuf = nb;
        link->ocap = cap;
    }
    memcpy(link->obuf + link->olen, p, n);
    link->olen += n;
    return 0;
}

/* Write what the socket takes now.  Returns 0, or -1 (the link died). */
static int sl_rl_write(struct sl_redis_link *link)
{
    while (link->opos < link->olen) {
        size_t left = link->olen - link->opos;
        if (link->ssl != NULL) {
            int len, n, err;
            if (link->ssl_retry_len != 0)
                len = (int)link->ssl_retry_len;
            else
                len = left > INT32_MAX ? INT32_MAX : (int)left;
            ERR_clear_error();
            n = SSL_write(link->ssl, link->obuf + link->opos, len);
            if (n > 0) {
                link->opos += (size_t)n;
                link->ssl_retry_len = 0;
                link->write_wants_read = false;
                continue;
            }
            err = SSL_get_error(link->ssl, n);
            if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
                link->ssl_retry_len = (size_t)len;
                link->write_wants_read = err == SSL_ERROR_WANT_READ;
                break;
            }
            if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
                int e = errno;
                sl_rl_fail(link, SL_REDIS_LINK_ERR_IO, "writing to %s failed: %s",
                           link->name, e ? strerror(e) : "the connection was closed");
            } else {
                char reason[160];
                sl_ssl_reason(reason, sizeof(reason), "unknown TLS error");
                sl_rl_fail(link, SL_REDIS_LINK_ERR_TLS, "TLS write to %s failed: %s",
                           link->name, reason);
            }
            return -1;
        } else {
            ssize_t n = send(link->fd, link->obuf + link->opos, left, MSG_NOSIGNAL);
            if (n > 0) {
                link->opos += (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            sl_rl_fail(link, SL_REDIS_LINK_ERR_IO, "writing to %s failed: %s",
                       link->name, n < 0 ? strerror(errno) : "nothing written");
            return -1;
        }
    }
    if (link->opos == link->olen) {
        link->opos = link->olen = 0;
        if (link->ocap > SL_RL_OBUF_KEEP) {
            free(link->obuf);
            link->obuf = NULL;
            link->ocap = 0;
        }
    }
    return 0;
}

/* ---- replies ---- */

/* Is REP a message pushed to a subscriber (not an answer to a command)? */
static bool sl_rl_is_push(const redisReply *rep)
{
    const redisReply *kind;

    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3)
        return false;
    kind = rep->element[0];
    if (kind->type != REDIS_REPLY_STRING)
        return false;
    return (rep->elements == 3 && kind->len == 7 && memcmp(kind->str, "message", 7) == 0) ||
           (rep->elements == 3 && kind->len == 8 && memcmp(kind->str, "smessage", 8) == 0) ||
           (rep->elements == 4 && kind->len == 8 && memcmp(kind->str, "pmessage", 8) == 0);
}

/* A reply to one of the link's own handshake commands. */
static void sl_rl_handshake_reply(struct sl_redis_link *link, const struct sl_rl_cmd *c,
                                  const redisReply *rep)
{
    if (rep->type == REDIS_REPLY_ERROR) {
        sl_rl_fail(link, SL_REDIS_LINK_ERR_REFUSED, "%s refused %s: %.*s", link->name,
                   c->what, (int)(rep->len < 200 ? rep->len : 200), rep->str);
        return;
    }
    SL_ASSERT(link->handshake_left > 0 && link->state == SL_REDIS_LINK_HANDSHAKE);
    if (--link->handshake_left > 0)
        return;
    link->state = SL_REDIS_LINK_UP;
    if (link->cbs.on_connect != NULL)
        link->cbs.on_connect(link, SL_REDIS_LINK_OK, NULL, link->cbs.arg);
}

/* Hand REP to whoever it is for, and free it. */
static void sl_rl_dispatch(struct sl_redis_link *link, redisReply *rep)
{
    struct sl_rl_cmd *c;

    if (link->subscribed && sl_rl_is_push(rep)) {
        if (link->cbs.on_message != NULL)
            link->cbs.on_message(link, rep, link->cbs.arg);
        freeReplyObject(rep);
        return;
    }
    c = link->head;
    if (c == NULL) {
        freeReplyObject(rep);
        sl_rl_fail(link, SL_REDIS_LINK_ERR_PROTOCOL,
                   "%s sent a reply to no command", link->name);
        return;
    }
    if (c->replies > 1) {
        /* An earlier channel of a multi-channel SUBSCRIBE. */
        c->replies--;
        freeReplyObject(rep);
        return;
    }
    c = sl_rl_pop(link);
    /* The link's own commands are answered before any of the owner's. */
    SL_ASSERT(c->cb != NULL || link->state == SL_REDIS_LINK_HANDSHAKE);
    if (c->cb == NULL)
        sl_rl_handshake_reply(link, c, rep);
    else
        c->cb(link, rep, c->privdata);
    freeReplyObject(rep);
    free(c);
}

/* Every whole reply the reader holds.  Returns 0, or -1 (the link died or
 * is being freed: stop). */
static int sl_rl_replies(struct sl_redis_link *link)
{
    while (link->state != SL_REDIS_LINK_DEAD && !link->free_asked) {
        void *rep = NULL;
        if (redisReaderGetReply(link->reader, &rep) != REDIS_OK) {
            sl_rl_fail(link, SL_REDIS_LINK_ERR_PROTOCOL, "%s sent what is not RESP: %s",
                       link->name, link->reader->errstr);
            return -1;
        }
        if (rep == NULL)
            return 0;
        sl_rl_dispatch(link, rep);
    }
    return -1;
}

/* Read what the socket holds and act on every reply.  Returns 0, or -1
 * (the link died or is being freed). */
static int sl_rl_read(struct sl_redis_link *link)
{
    char buf[SL_RL_READ_CHUNK];

    for (;;) {
        ssize_t n;
        if (link->ssl != NULL) {
            int r, err;
            ERR_clear_error();
            r = SSL_read(link->ssl, buf, sizeof(buf));
            if (r <= 0) {
                err = SSL_get_error(link->ssl, r);
                link->read_wants_write = err == SSL_ERROR_WANT_WRITE;
                if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
                    return 0;
                if (err == SSL_ERROR_ZERO_RETURN ||
                    (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
                    int e = errno;
                    sl_rl_fail(link, SL_REDIS_LINK_ERR_IO, "%s closed the connection%s%s",
                               link->name, err == SSL_ERROR_SYSCALL && e ? ": " : "",
                               err == SSL_ERROR_SYSCALL && e ? strerror(e) : "");
                } else {
                    char reason[160];
                    sl_ssl_reason(reason, sizeof(reason), "unknown TLS error");
                    sl_rl_fail(link, SL_REDIS_LINK_ERR_TLS, "TLS with %s failed: %s",
                               link->name, reason);
                }
                return -1;
            }
            n = r;
            link->read_wants_write = false;
        } else {
            n = recv(link->fd, buf, sizeof(buf), 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return 0;
            if (n <= 0) {
                sl_rl_fail(link, SL_REDIS_LINK_ERR_IO, "%s closed the connection%s%s",
                           link->name, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
                return -1;
            }
        }
        if (redisReaderFeed(link->reader, buf, (size_t)n) != REDIS_OK) {
            sl_rl_fail(link, SL_REDIS_LINK_ERR_NOMEM, "out of memory reading from %s",
                       link->name);
            return -1;
        }
        if (sl_rl_replies(link) != 0)
            return -1;
    }
}

/* ---- connecting ---- */

/* The SSL object for the socket: SNI, the name to verify, modes. */
static int sl_rl_tls_start(struct sl_redis_link *link)
{
    const char *name = link->server_name;
    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;

    ERR_clear_error();
    link->ssl = SSL_new(link->ctx);
    if (link->ssl == NULL || SSL_set_fd(link->ssl, link->fd) != 1)
        return -1;
    SSL_set_mode(link->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* SNI carries names only, never addresses (RFC 6066). */
    if (!is_ip && SSL_set_tlsext_host_name(link->ssl, name) != 1)
        return -1;
    if (link->verify) {
        if (is_ip) {
            if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(link->ssl), name) != 1)
                return -1;
        } else if (SSL_set1_host(link->ssl, name) != 1) {
            return -1;
        }
    }
    link->state = SL_REDIS_LINK_TLS;
    return 0;
}

/* Why the TLS handshake failed, into the link's death. */
static void sl_rl_tls_failed(struct sl_redis_link *link, int err)
{
    long v = link->verify ? SSL_get_verify_result(link->ssl) : X509_V_OK;
    char reason[160];

    if (v != X509_V_OK) {
        ERR_clear_error();
        sl_rl_fail(link, SL_REDIS_LINK_ERR_TLS,
                   "the certificate of %s was not accepted: %s", link->name,
                   X509_verify_cert_error_string(v));
    } else if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        int e = errno;
        sl_rl_fail(link, SL_REDIS_LINK_ERR_TLS, "%s closed the connection during "
                   "the TLS handshake%s%s (is it speaking TLS?)", link->name,
                   e ? ": " : "", e ? strerror(e) : "");
    } else {
        sl_ssl_reason(reason, sizeof(reason), "unknown TLS error");
        sl_rl_fail(link, SL_REDIS_LINK_ERR_TLS, "TLS handshake with %s failed: %s",
                   link->name, reason);
    }
}

/* One step of the TLS handshake.  Returns 0, or -1 (the link died). */
static int sl_rl_tls_step(struct sl_redis_link *link)
{
    int rc, err;

    ERR_clear_error();
    rc = SSL_connect(link->ssl);
    if (rc == 1) {
        link->hs_want_read = link->hs_want_write = false;
        link->state = SL_REDIS_LINK_HANDSHAKE;
        return sl_rl_write(link);
    }
    err = SSL_get_error(link->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        link->hs_want_read = err == SSL_ERROR_WANT_READ;
        link->hs_want_write = err == SSL_ERROR_WANT_WRITE;
        return 0;
    }
    sl_rl_tls_failed(link, err);
    return -1;
}

/*
 * Open a socket to the next address and start connecting.  Returns 0
 * (connecting), or -1 with *ERR the last address's errno (none left).
 */
static int sl_rl_try_next(struct sl_redis_link *link, int *err)
{
    *err = 0;
    while (link->ai_next != NULL) {
        struct addrinfo *ai = link->ai_next;
        int one = 1, fd;
        link->ai_next = ai->ai_next;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            *err = errno;
            continue;
        }
        /* Small commands go out at once; a peer that vanished without a
         * word is noticed even on an idle subscriber. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            *err = errno;
            close(fd);
            continue;
        }
        /* Even a connect that succeeded at once is reported by the loop
         * (the socket is writable), so no callback runs before the
         * function that started it has returned. */
        link->fd = fd;
        link->state = SL_REDIS_LINK_CONNECTING;
        return 0;
    }
    return -1;
}

/* The TCP connect finished (or failed): on to TLS, the handshake, or the
 * next address.  Returns 0, or -1 (the link died). */
static int sl_rl_connected(struct sl_redis_link *link)
{
    int soerr = 0, err;
    socklen_t len = sizeof(soerr);

    if (getsockopt(link->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
        soerr = errno;
    if (soerr == EINPROGRESS || soerr == EALREADY)
        return 0;
    if (soerr != 0) {
        sl_rl_close_socket(link);
        if (sl_rl_try_next(link, &err) == 0) {
            sl_rl_watch(link);
            return 0;
        }
        sl_rl_fail(link, SL_REDIS_LINK_ERR_IO, "cannot connect to %s: %s", link->name,
                   strerror(err ? err : soerr));
        return -1;
    }
    freeaddrinfo(link->ai_list);
    link->ai_list = link->ai_next = NULL;
    if (link->ctx != NULL) {
        if (sl_rl_tls_start(link) != 0) {
            char reason[160];
            sl_ssl_reason(reason, sizeof(reason), "out of memory");
            sl_rl_fail(link, SL_REDIS_LINK_ERR_TLS, "cannot start TLS with %s: %s",
                       link->name, reason);
            return -1;
        }
        return sl_rl_tls_step(link);
    }
    link->state = SL_REDIS_LINK_HANDSHAKE;
    return sl_rl_write(link);
}

/* ---- driving ---- */

static void sl_rl_enter(struct sl_redis_link *link)
{
    link->depth++;
}

static void sl_rl_destroy(struct sl_redis_link *link);

/* Leave a function of the link: the outermost one frees a link whose
 * free was asked meanwhile. */
static void sl_rl_leave(struct sl_redis_link *link)
{
    SL_ASSERT(link->depth > 0);
    if (--link->depth == 0 && link->free_asked)
        sl_rl_destroy(link);
}

static void sl_rl_io(void *arg, bool readable, bool writable)
{
    struct sl_redis_link *link = arg;

    sl_rl_enter(link);
    switch (link->state) {
    case SL_REDIS_LINK_CONNECTING:
        if ((readable || writable) && sl_rl_connected(link) != 0)
            goto out;
        break;
    case SL_REDIS_LINK_TLS:
        if (sl_rl_tls_step(link) != 0)
            goto out;
        break;
    case SL_REDIS_LINK_HANDSHAKE:
    case SL_REDIS_LINK_UP:
        /* A write that waited for the peer's bytes goes first. */
        if (readable && link->write_wants_read && sl_rl_write(link) != 0)
            goto out;
        if ((readable || (writable && link->read_wants_write)) && sl_rl_read(link) != 0)
            goto out;
        /* Callbacks may have queued more: write it now, not a loop
         * crossing later (the socket is most likely writable). */
        if (!link->write_wants_read && link->opos < link->olen && sl_rl_write(link) != 0)
            goto out;
        break;
    case SL_REDIS_LINK_DEAD:
        goto out;
    }
    if (!link->free_asked)
        sl_rl_watch(link);
out:
    sl_rl_leave(link);
}

int sl_redis_link_flush(struct sl_redis_link *link)
{
    int rc = 0;

    if (link->state == SL_REDIS_LINK_DEAD || link->free_asked)
        return -1;
    if (link->state != SL_REDIS_LINK_HANDSHAKE && link->state != SL_REDIS_LINK_UP)
        return 0;  /* written once connected */
    sl_rl_enter(link);
    if (!link->write_wants_read && sl_rl_write(link) != 0)
        rc = -1;
    else if (!link->free_asked)
        sl_rl_watch(link);
    sl_rl_leave(link);
    return rc;
}

int sl_redis_link_flush_wait(struct sl_redis_link *link, int wait_ms)
{
    int64_t end = sl_time_mono_ms() + wait_ms;
    int rc = 0;

    if (link->state != SL_REDIS_LINK_HANDSHAKE && link->state != SL_REDIS_LINK_UP)
        return -1;
    sl_rl_enter(link);
    for (;;) {
        struct pollfd pfd = {.fd = link->fd};
        int64_t left;
        if (!link->write_wants_read && sl_rl_write(link) != 0) {
            rc = -1;
            break;
        }
        left = end - sl_time_mono_ms();
        if (link->opos == link->olen || left <= 0)
            break;
        pfd.events = link->write_wants_read ? POLLIN : POLLOUT;
        if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR) {
            rc = -1;
            break;
        }
        if (link->write_wants_read && (pfd.revents & (POLLIN | POLLHUP | POLLERR)) &&
            sl_rl_write(link) != 0) {
            rc = -1;
            break;
        }
    }
    if (rc == 0 && link->opos < link->olen)
        rc = -1;
    if (link->state != SL_REDIS_LINK_DEAD && !link->free_asked)
        sl_rl_watch(link);
    sl_rl_leave(link);
    return rc;
}

int64_t sl_redis_link_check(struct sl_redis_link *link, int64_t now_ms)
{
    int64_t next = -1;

    if (link->state == SL_REDIS_LINK_DEAD || link->free_asked)
        return -1;
    sl_rl_enter(link);
    if (link->state != SL_REDIS_LINK_UP) {
        if (now_ms >= link->start_ms + link->timeout_ms) {
            const char *where = link->state == SL_REDIS_LINK_CONNECTING ? "connecting"
                                : link->state == SL_REDIS_LINK_TLS ? "in the TLS handshake"
                                : "waiting for its answer to AUTH/SELECT";
            sl_rl_fail(link, SL_REDIS_LINK_ERR_TIMEOUT,
                       "no connection to %s within %lld ms (%s)", link->name,
                       (long long)link->timeout_ms, where);
        } else {
            next = link->start_ms + link->timeout_ms;
        }
    } else if (link->head != NULL) {
        if (now_ms >= link->head->at_ms + link->timeout_ms) {
            /* Replies that are already here are not given up on. */
            if (sl_rl_read(link) == 0 && link->head != NULL &&
                now_ms >= link->head->at_ms + link->timeout_ms)
                sl_rl_fail(link, SL_REDIS_LINK_ERR_TIMEOUT,
                           "%s did not answer within %lld ms", link->name,
                           (long long)link->timeout_ms);
            else if (!link->free_asked && link->state != SL_REDIS_LINK_DEAD)
                sl_rl_watch(link);
        }
        if (link->state != SL_REDIS_LINK_DEAD && !link->free_asked && link->head != NULL)
            next = link->head->at_ms + link->timeout_ms;
    }
    sl_rl_leave(link);
    return next;
}

/* ---- life ---- */

/* Queue one of the link's own handshake commands. */
static int sl_rl_handshake_cmd(struct sl_redis_link *link, const char *what, int argc,
                               const char **argv)
{
    struct sl_rl_cmd *c = calloc(1, sizeof(*c));
    char *cmd = NULL;
    int n;

    if (c == NULL)
        return -1;
    n = redisFormatCommandArgv(&cmd, argc, argv, NULL);
    if (n < 0 || sl_rl_append(link, cmd, (size_t)n) != 0) {
        free(cmd);
        free(c);
        return -1;
    }
    free(cmd);
    c->what = what;
    c->at_ms = link->start_ms;
    c->replies = 1;
    sl_rl_push(link, c);
    link->handshake_left++;
    return 0;
}

struct sl_redis_link *sl_redis_link_new(const struct sl_redis_link_conf *conf,
                                        const struct sl_loop *loop,
                                        const struct sl_redis_link_cbs *cbs,
                                        char *why, size_t why_len)
{
    struct sl_redis_link *link = calloc(1, sizeof(*link));
    struct addrinfo hints = {0};
    char port[16];
    int rc, err;

    if (link == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    link->fd = -1;
    link->loop = *loop;
    if (cbs != NULL)
        link->cbs = *cbs;
    link->timeout_ms = conf->timeout_ms > 0 ? conf->timeout_ms : 1;
    link->start_ms = sl_time_mono_ms();
    snprintf(link->name, sizeof(link->name), strchr(conf->host, ':') ? "[%s]:%d" : "%s:%d",
             conf->host, conf->port);
    link->reader = redisReaderCreate();
    if (link->reader == NULL)
        goto oom;
    if (conf->tls != NULL) {
        const char *name = conf->tls->server_name ? conf->tls->server_name : conf->host;
        SSL_CTX_up_ref(conf->tls->ctx);
        link->ctx = conf->tls->ctx;
        link->verify = conf->tls->verify;
        if ((link->server_name = strdup(name)) == NULL)
            goto oom;
    }

    /* The handshake, first in the output buffer. */
    if (conf->password != NULL) {
        /* AUTH user password (an ACL user), or AUTH password. */
        const char *with_user[] = {"AUTH", conf->user, conf->password};
        const char *alone[] = {"AUTH", conf->password};
        if (conf->user != NULL ? sl_rl_handshake_cmd(link, "AUTH", 3, with_user) != 0
                               : sl_rl_handshake_cmd(link, "AUTH", 2, alone) != 0)
            goto oom;
    }
    if (conf->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", conf->db);
        if (sl_rl_handshake_cmd(link, "SELECT", 2, (const char *[]){"SELECT", db}) != 0)
            goto oom;
    }
    if (link->handshake_left == 0 &&
        sl_rl_handshake_cmd(link, "PING", 1, (const char *[]){"PING"}) != 0)
        goto oom;

    snprintf(port, sizeof(port), "%d", conf->port);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(conf->host, port, &hints, &link->ai_list);
    if (rc != 0) {
        snprintf(why, why_len, "cannot resolve %s: %s", conf->host,
                 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        goto fail;
    }
    link->ai_next = link->ai_list;
    if (sl_rl_try_next(link, &err) != 0) {
        snprintf(why, why_len, "cannot connect to %s: %s", link->name,
                 strerror(err ? err : EADDRNOTAVAIL));
        goto fail;
    }
    sl_rl_watch(link);
    if (!link->watched) {
        snprintf(why, why_len, "cannot watch the connection to %s", link->name);
        goto fail;
    }
    return link;
oom:
    snprintf(why, why_len, "out of memory");
fail:
    /* Nothing was promised yet: no callback, the FIFO holds only the
     * link's own handshake commands. */
    link->free_asked = true;
    sl_rl_destroy(link);
    return NULL;
}

/* 1: a command that subscribes, 2: one that unsubscribes, 0: neither.
 * Each is answered once per channel it names. */
static int sl_rl_subscribe_kind(const char *s, size_t n)
{
    static const char *const names[] = {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE",
                                        "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"};

    for (int i = 0; i < 6; i++)
        if (strlen(names[i]) == n && strncasecmp(s, names[i], n) == 0)
            return i < 3 ? 1 : 2;
    return 0;
}

/* Queue the command CMD (N bytes of RESP) expecting REPLIES replies;
 * SUB: sl_rl_subscribe_kind's.  0 or -1 (nothing queued). */
static int sl_rl_queue(struct sl_redis_link *link, const char *cmd, size_t n,
                       unsigned replies, int sub, sl_redis_reply_fn cb, void *privdata)
{
    struct sl_rl_cmd *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return -1;
    if (sl_rl_append(link, cmd, n) != 0) {
        free(c);
        return -1;
    }
    c->cb = cb;
    c->privdata = privdata;
    c->at_ms = sl_time_mono_ms();
    c->replies = replies;
    if (sub == 1)
        link->subscribed = true;
    sl_rl_push(link, c);
    return 0;
}

int sl_redis_link_commandv(struct sl_redis_link *link, sl_redis_reply_fn cb, void *privdata,
                           const char *fmt, va_list ap)
{
    char *cmd = NULL;
    int n, rc;

    if (link->state == SL_REDIS_LINK_DEAD || link->free_asked || cb == NULL)
        return -1;
    n = redisvFormatCommand(&cmd, fmt, ap);
    if (n < 0)
        return -1;
    /* One reply: (P|S)(UN)SUBSCRIBE are not for this entry.  The name is
     * the first bulk string: "*N\r\n$LEN\r\nNAME\r\n...". */
    {
        const char *p = strchr(cmd, '\n'), *name;
        long len = 0;
        if (p != NULL && p[1] == '$') {
            len = strtol(p + 2, NULL, 10);
            name = strchr(p + 1, '\n');
            if (name != NULL && len > 0 &&
                sl_rl_subscribe_kind(name + 1, (size_t)len) != 0) {
                free(cmd);
                return -1;
            }
        }
    }
    rc = sl_rl_queue(link, cmd, (size_t)n, 1, 0, cb, privdata);
    free(cmd);
    if (rc == 0 && link->depth == 0 && !link->corked)
        sl_rl_watch(link);
    return rc;
}

int sl_redis_link_command(struct sl_redis_link *link, int argc, const char **argv,
                          const size_t *lens, sl_redis_reply_fn cb, void *privdata)
{
    char *cmd = NULL;
    int n, sub, rc;

    if (link->state == SL_REDIS_LINK_DEAD || link->free_asked || argc < 1 || cb == NULL)
        return -1;
    sub = sl_rl_subscribe_kind(argv[0], lens != NULL ? lens[0] : strlen(argv[0]));
    if (sub != 0 && argc < 2)
        return -1;  /* its number of replies is unknown */
    n = redisFormatCommandArgv(&cmd, argc, argv, lens);
    rc = n < 0 ? -1
               : sl_rl_queue(link, cmd, (size_t)n, sub != 0 ? (unsigned)(argc - 1) : 1, sub,
                             cb, privdata);
    free(cmd);
    if (rc != 0)
        return -1;
    /* Inside the link's own functions the watch is set on the way out,
     * once for the whole batch. */
    if (link->depth == 0 && !link->corked)
        sl_rl_watch(link);
    return 0;
}

void sl_redis_link_cork(struct sl_redis_link *link)
{
    link->corked = true;
}

int sl_redis_link_uncork(struct sl_redis_link *link)
{
    link->corked = false;
    return sl_redis_link_flush(link);
}

int sl_redis_link_read(struct sl_redis_link *link)
{
    int rc = 0;

    if (link->state == SL_REDIS_LINK_DEAD || link->free_asked)
        return -1;
    if (link->state != SL_REDIS_LINK_HANDSHAKE && link->state != SL_REDIS_LINK_UP)
        return 0;  /* nothing can have been answered yet */
    sl_rl_enter(link);
    if (sl_rl_read(link) != 0)
        rc = -1;
    else if (!link->free_asked)
        sl_rl_watch(link);
    sl_rl_leave(link);
    return rc;
}

static void sl_rl_destroy(struct sl_redis_link *link)
{
    struct sl_rl_cmd *c;

    /* Every command the owner gave was answered before this. */
    SL_ASSERT(link->free_asked && link->depth == 0 && link->npending == 0);

    sl_rl_close_socket(link);
    while ((c = sl_rl_pop(link)) != NULL)
        free(c);  /* only ever the link's own: the owner's were answered */
    if (link->ai_list != NULL)
        freeaddrinfo(link->ai_list);
    if (link->reader != NULL)
        redisReaderFree(link->reader);
    SSL_CTX_free(link->ctx);
    free(link->server_name);
    free(link->obuf);
    free(link);
}

void sl_redis_link_free(struct sl_redis_link *link)
{
    if (link == NULL || link->free_asked)
        return;
    link->free_asked = true;
    link->depth++;
    if (link->state != SL_REDIS_LINK_DEAD)
        sl_rl_fail(link, SL_REDIS_LINK_OK, "closed");
    /* Inside a callback of a dying link, some may still be unanswered:
     * answer them now, before this returns. */
    sl_rl_drain(link);
    sl_rl_leave(link);
}

enum sl_redis_link_state sl_redis_link_state(const struct sl_redis_link *link)
{
    return link->state;
}

const char *sl_redis_link_error(const struct sl_redis_link *link)
{
    return link->errstr;
}

size_t sl_redis_link_pending(const struct sl_redis_link *link)
{
    return link->npending;
}
