/*
 * sl_redis_link — one non-blocking connection to one Redis server, with
 * TLS, AUTH (ACL users) and SELECT, pipelined commands answered in order,
 * a deadline, and a subscriber mode; driven by a worker's struct sl_loop.
 *
 * The link speaks RESP2 through hiredis's reader and formatter only; the
 * socket, TLS (OpenSSL), the queue of unanswered commands and the
 * deadline are its own.  The design, its state machine and its rules on
 * callbacks are in sl_redis_link.c's opening comment and in
 * docs/internals/redis-link.md.
 *
 * Callback rules (as libuv's):
 *   - a function that fails (returns -1 or NULL) never calls, and never
 *     will call, the callback it was given;
 *   - a command accepted by sl_redis_link_command() has its callback
 *     called exactly once: with Redis's reply, or with NULL when the link
 *     died or was freed first;
 *   - no callback runs after sl_redis_link_free() has returned; every
 *     command still unanswered is called back with NULL inside it;
 *   - callbacks run from the loop's I/O callback and from
 *     sl_redis_link_check(), sl_redis_link_read(), sl_redis_link_flush(),
 *     sl_redis_link_uncork(),
 *     sl_redis_link_flush_wait() and sl_redis_link_free() only, never
 *     from sl_redis_link_new() or sl_redis_link_command().  A callback may
 *     send commands on the link and may free it.
 */
#ifndef SL_REDIS_LINK_H
#define SL_REDIS_LINK_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sl_loop;               /* sl_store.h */
struct redisReply;            /* hiredis */
struct sl_redis_link;
struct sl_redis_tls;

/* Status codes given to the connect and disconnect callbacks. */
enum {
    SL_REDIS_LINK_OK = 0,
    SL_REDIS_LINK_ERR_IO = -1,        /* refused, reset, closed by the server */
    SL_REDIS_LINK_ERR_TIMEOUT = -2,   /* the deadline passed */
    SL_REDIS_LINK_ERR_TLS = -3,       /* TLS handshake or certificate */
    SL_REDIS_LINK_ERR_REFUSED = -4,   /* AUTH or SELECT answered an error */
    SL_REDIS_LINK_ERR_PROTOCOL = -5,  /* a reply hiredis cannot read */
    SL_REDIS_LINK_ERR_NOMEM = -6,
};

/* Where a link is (one variable; see sl_redis_link.c). */
enum sl_redis_link_state {
    SL_REDIS_LINK_CONNECTING,   /* TCP connect in progress */
    SL_REDIS_LINK_TLS,          /* TLS handshake in progress */
    SL_REDIS_LINK_HANDSHAKE,    /* AUTH / SELECT / PING sent, not yet answered */
    SL_REDIS_LINK_UP,           /* Redis answered the handshake */
    SL_REDIS_LINK_DEAD,         /* closed; only sl_redis_link_free() is left */
};

/* ---- TLS: built once per configuration, shared by its links ---- */

struct sl_redis_tls_conf {
    const char *ca_file;      /* PEM CA bundle; NULL: the system's */
    const char *cert_file;    /* client certificate (mutual TLS), or NULL */
    const char *key_file;     /* its key; required with cert_file */
    /* SNI and the name verified in the server's certificate; NULL: the
     * host each link connects to (an IP address is verified as one). */
    const char *server_name;
    bool no_verify;           /* accept any certificate (tests only) */
};

/*
 * A TLS client context for CONF: files read, client key checked against
 * its certificate, TLS 1.2 at least, verification on unless no_verify.
 * Returns it, or NULL with a sentence in WHY (WHY_LEN bytes) naming the
 * file and OpenSSL's reason.
 */
struct sl_redis_tls *sl_redis_tls_new(const struct sl_redis_tls_conf *conf,
                                      char *why, size_t why_len);

/* Free TLS.  Links made with it keep what they need: free it whenever. */
void sl_redis_tls_free(struct sl_redis_tls *tls);

/* ---- links ---- */

struct sl_redis_link_conf {
    const char *host;         /* name, IPv4 or IPv6 address (no brackets) */
    int port;
    const char *user;         /* NULL: AUTH with the password alone */
    const char *password;     /* NULL: no AUTH */
    int db;                   /* SELECT it when not 0 */
    struct sl_redis_tls *tls; /* NULL: plain TCP; referenced, not owned */
    /* Connecting (TCP, TLS, handshake) must finish within it, and the
     * oldest unanswered command must be answered within it.  > 0. */
    int64_t timeout_ms;
};

/* REPLY is the link's: valid until the callback returns.  NULL: the
 * command got no answer (the link died, timed out or was freed). */
typedef void (*sl_redis_reply_fn)(struct sl_redis_link *link,
                                  struct redisReply *reply, void *privdata);

/* STATUS is SL_REDIS_LINK_OK or an SL_REDIS_LINK_ERR_*; REASON a sentence
 * (NULL with OK), valid until the callback returns. */
typedef void (*sl_redis_status_fn)(struct sl_redis_link *link, int status,
                                   const char *reason, void *arg);

struct sl_redis_link_cbs {
    /* Once: OK when Redis answered the handshake (the link is UP), or why
     * it never did.  May be NULL. */
    sl_redis_status_fn on_connect;
    /* Once, only for a link that was UP: why it went down.  Not called
     * for sl_redis_link_free().  May be NULL. */
    sl_redis_status_fn on_disconnect;
    /* Subscriber mode: every "message", "pmessage" and "smessage" pushed
     * after a (P|S)SUBSCRIBE, with ARG as privdata.  May be NULL. */
    sl_redis_reply_fn on_message;
    void *arg;
};

/*
 * Start connecting to CONF's server, driven by LOOP (copied; its ctx must
 * outlive the link).  The host is resolved here, blocking, as hiredis's
 * connect did.  AUTH and SELECT (or a PING when there is neither) are
 * queued first: commands sent before the link is UP are written behind
 * them, at once.  Returns the link, or NULL with a sentence in WHY
 * (WHY_LEN bytes; no address, no socket): CBS are then never called.
 */
struct sl_redis_link *sl_redis_link_new(const struct sl_redis_link_conf *conf,
                                        const struct sl_loop *loop,
                                        const struct sl_redis_link_cbs *cbs,
                                        char *why, size_t why_len);

/*
 * Queue the command ARGV[0..ARGC) (LENS[i] bytes each; LENS NULL: C
 * strings).  It is written when the socket takes it (or at
 * sl_redis_link_flush()).  SUBSCRIBE, PSUBSCRIBE and SSUBSCRIBE put the
 * link in subscriber mode; CB then gets the confirmation of the last
 * channel named.  (P|S)UNSUBSCRIBE must name its channels.  Returns 0 (CB will be
 * called exactly once) or -1 (dead link, out of memory, unnamed
 * UNSUBSCRIBE: CB is never called).
 */
int sl_redis_link_command(struct sl_redis_link *link, int argc, const char **argv,
                          const size_t *lens, sl_redis_reply_fn cb, void *privdata);

/*
 * The same for a command formatted as hiredis's redisCommand formats it
 * (FMT and AP: "SET %s %b", ...), expecting one reply: not for
 * (P|S)(UN)SUBSCRIBE (-1).
 */
int sl_redis_link_commandv(struct sl_redis_link *link, sl_redis_reply_fn cb, void *privdata,
                           const char *fmt, va_list ap);

/*
 * Queue many commands with one watch change: until sl_redis_link_uncork(),
 * sl_redis_link_command() leaves the loop's watch as it is (a batch of
 * commands would otherwise ask for writability with the first and give it
 * up after the write).  Uncorking writes what the socket takes now and sets
 * the watch once, as sl_redis_link_flush(), whose result it returns.  The
 * owner uncorks in the function that corked, with no callback in between.
 */
void sl_redis_link_cork(struct sl_redis_link *link);
int sl_redis_link_uncork(struct sl_redis_link *link);

/* Read what has already arrived and hand its replies out, without waiting
 * (an owner about to give a command up looks first).  Returns 0, or -1
 * (the link is dead, died now or was freed by a callback). */
int sl_redis_link_read(struct sl_redis_link *link);

/* Write what is queued now, as far as the socket takes it, rather than
 * when the loop next finds it writable.  Returns 0, or -1 (the link is
 * dead, or died now: its callbacks ran). */
int sl_redis_link_flush(struct sl_redis_link *link);

/*
 * For shutting down: write everything queued, waiting for the socket up
 * to WAIT_MS (blocking the thread; never on a request's path), so what
 * the owner must tell Redis before closing (releases, undos) is sent.
 * Replies are not waited for.  Returns 0 (all written), or -1 (not all:
 * time ran out, the link is not connected, or it died: its callbacks
 * ran).  Then sl_redis_link_free().
 */
int sl_redis_link_flush_wait(struct sl_redis_link *link, int wait_ms);

/*
 * The deadline, from the owner's timers.  NOW_MS is sl_time_mono_ms()
 * time.  A link that is not UP within timeout_ms of its creation, or
 * whose oldest unanswered command is older than timeout_ms (replies that
 * have already arrived are read first), dies here: SL_REDIS_LINK_ERR_TIMEOUT.
 * Returns when to call it again (ms), or -1 (nothing to watch).
 */
int64_t sl_redis_link_check(struct sl_redis_link *link, int64_t now_ms);

/* Close and free LINK: unanswered commands are called back with NULL
 * before it returns.  NULL is a no-op; a second call from inside one of
 * those callbacks is too. */
void sl_redis_link_free(struct sl_redis_link *link);

enum sl_redis_link_state sl_redis_link_state(const struct sl_redis_link *link);

/* Why the link died ("" while it lives). */
const char *sl_redis_link_error(const struct sl_redis_link *link);

/* Commands accepted and not yet answered. */
size_t sl_redis_link_pending(const struct sl_redis_link *link);

#endif
