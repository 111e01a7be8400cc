/*
 * sl_redis_url — the "store" URL, read into the servers to reach and the
 * credentials to present.
 *
 *   redis://[[user]:password@]host[:port][/db]            one server
 *   rediss://...                                           ... over TLS
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER[/db]
 *   rediss-sentinel://...                                  ... over TLS
 *   redis-cluster://[[user]:password@]host[:port][,host[:port]...][/0]
 *   rediss-cluster://...                                   ... over TLS
 *
 * Hosts are names, IPv4 addresses or bracketed IPv6 addresses ("[::1]").
 * The port defaults to 6379 (26379 for a Sentinel); the database to 0.
 * User, password and master name are percent-decoded ("%40" is '@'); a
 * '%' not followed by two hex digits is kept as it is, as sluice always
 * read it.  The credentials are the data servers' (the primary's, a
 * Cluster's nodes'); a Sentinel store's Sentinels have their own
 * (store_sentinel in the configuration).
 */
#ifndef SL_REDIS_URL_H
#define SL_REDIS_URL_H

#include <stdbool.h>
#include <stddef.h>

#define SL_REDIS_URL_MAX_HOSTS 16
#define SL_REDIS_URL_DB_MAX 1000000

enum sl_redis_url_kind {
    SL_REDIS_URL_SINGLE,      /* redis://, rediss:// */
    SL_REDIS_URL_SENTINEL,    /* redis-sentinel://: ask these for MASTER */
    SL_REDIS_URL_CLUSTER,     /* redis-cluster://: seed nodes */
};

struct sl_redis_addr {
    char *host;               /* owned; no brackets around IPv6 */
    int port;                 /* 1..65535 */
};

struct sl_redis_url {
    enum sl_redis_url_kind kind;
    bool tls;                 /* rediss*: */
    char *user;               /* owned; NULL: AUTH with the password alone */
    char *password;           /* owned; NULL: no AUTH */
    size_t naddrs;            /* 1 for SINGLE, 1.. for the others */
    struct sl_redis_addr addrs[SL_REDIS_URL_MAX_HOSTS];
    char *master;             /* owned; SENTINEL: the master's name, else NULL */
    int db;                   /* SELECT this (always 0 for CLUSTER) */
};

/*
 * Read URL into *OUT (overwritten; release with sl_redis_url_clear()).
 * Returns 0, or -1 with *WHY set to a static sentence that completes
 * "store <URL> ..." ("has no host") and never quotes the URL, which may
 * hold a password; *OUT is then empty.  Out of memory is -1 too.
 */
int sl_redis_url_parse(const char *url, struct sl_redis_url *out, const char **why);

/* Free what U owns and empty it.  Safe on an empty or cleared U. */
void sl_redis_url_clear(struct sl_redis_url *u);

/*
 * Write U back as a URL into BUF (CAP bytes, NUL-terminated): every
 * credential and the master name percent-encoded, so the result reads
 * back to the same U.  Without WITH_PASSWORD the password is written as
 * "***" (for logs).  Returns the length it needs (as snprintf: a result
 * >= CAP means BUF was too small and holds a truncated prefix).
 */
size_t sl_redis_url_format(const struct sl_redis_url *u, bool with_password,
                           char *buf, size_t cap);

#endif
