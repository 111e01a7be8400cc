/*
 * sl_redis_url — read a store URL (see sl_redis_url.h for the grammar).
 *
 * The URL is cut in three, in this order, because each cut decides how
 * the rest may be read:
 *   scheme     up to "://": which topology (one server, Sentinels, seed
 *              nodes of a Cluster) and whether TLS is spoken;
 *   authority  up to the first '/': credentials before the first '@',
 *              then the comma-separated hosts;
 *   path       after that '/': the database, or a Sentinel's master name
 *              and then the database.
 * The first '@' ends the credentials because that is how sluice has read
 * "redis://" URLs from the start: a password holding a raw '@' or '/'
 * must be written %40 or %2F, and the parser says so instead of reading
 * a host out of the password.  Credentials are otherwise taken as written
 * (a raw '?', '#' or ' ' in a password is the password's), and a '%' that
 * starts no escape is a literal '%', as before; only "%00" is refused,
 * since a NUL would silently cut the password short.
 *
 * Hosts are checked against what a host can be (letters, digits, '-',
 * '.', '_'; IPv6 in brackets, with an optional "%zone"), so a query
 * string, a stray bracket or an unbracketed IPv6 address is an error at
 * load time with a sentence saying what to write, not a connection
 * failure at run time.  No error sentence quotes the URL: it may hold a
 * password.  Everything *OUT holds is allocated here and freed by
 * sl_redis_url_clear(), also on every error path, so a caller never
 * frees half a result.
 */
#include "sl_redis_url.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SL_REDIS_PORT 6379
#define SL_SENTINEL_PORT 26379

static const struct {
    const char *name;
    enum sl_redis_url_kind kind;
    bool tls;
} sl_schemes[] = {
    {"redis", SL_REDIS_URL_SINGLE, false},
    {"rediss", SL_REDIS_URL_SINGLE, true},
    {"redis-sentinel", SL_REDIS_URL_SENTINEL, false},
    {"rediss-sentinel", SL_REDIS_URL_SENTINEL, true},
    {"redis-cluster", SL_REDIS_URL_CLUSTER, false},
    {"rediss-cluster", SL_REDIS_URL_CLUSTER, true},
};

static int sl_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool sl_is_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* S[0..LEN) percent-decoded into *OUT (malloc'd).  Returns 0, -1 (out of
 * memory) or -2 (it decodes to a NUL byte). */
static int sl_pct_decode(const char *s, size_t len, char **out)
{
    char *o = malloc(len + 1), *p = o;

    *out = NULL;
    if (o == NULL)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = sl_hex(s[i + 1])) >= 0 &&
            (lo = sl_hex(s[i + 2])) >= 0) {
            if (hi == 0 && lo == 0) {
                free(o);
                return -2;
            }
            *p++ = (char)(hi << 4 | lo);
            i += 2;
        } else {
            *p++ = s[i];
        }
    }
    *p = '\0';
    *out = o;
    return 0;
}

/* A decimal number of digits only, from P to END, at most MAX.  Returns
 * it, or -1 (empty, a sign, a space, too large). */
static long sl_plain_number(const char *p, const char *end, long max)
{
    long v = 0;

    if (p >= end)
        return -1;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9' || v > max)
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v > max ? -1 : v;
}

/* Could [P, END) be a host name or IPv4 address? */
static bool sl_plain_host(const char *p, const char *end)
{
    for (; p < end; p++)
        if (!sl_is_alnum(*p) && *p != '-' && *p != '.' && *p != '_')
            return false;
    return true;
}

/* Could [P, END) be an IPv6 address, with an optional "%zone"? */
static bool sl_v6_host(const char *p, const char *end)
{
    bool zone = false, colon = false;

    for (; p < end; p++) {
        if (zone) {
            if (!sl_is_alnum(*p) && *p != '-' && *p != '.' && *p != '_')
                return false;
        } else if (*p == '%') {
            zone = true;
        } else if (*p == ':') {
            colon = true;
        } else if (sl_hex(*p) < 0 && *p != '.') {
            return false;
        }
    }
    return colon;
}

/* One "host[:port]" of [P, END) into A.  Returns 0, or -1 with *WHY. */
static int sl_parse_addr(const char *p, const char *end, int default_port,
                         struct sl_redis_addr *a, const char **why)
{
    const char *host = p, *host_end, *colon;

    a->port = default_port;
    if (p < end && *p == '[') {
        const char *close = memchr(p, ']', (size_t)(end - p));
        if (close == NULL) {
            *why = "has an unclosed IPv6 address";
            return -1;
        }
        host = p + 1;
        host_end = close;
        colon = close + 1;
        if (colon < end && *colon != ':') {
            *why = "has something other than \":port\" after the IPv6 address";
            return -1;
        }
        if (colon == end)
            colon = NULL;
        if (host == host_end) {
            *why = "has no host";
            return -1;
        }
        if (!sl_v6_host(host, host_end)) {
            *why = "has something other than an IPv6 address in brackets";
            return -1;
        }
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        host_end = colon != NULL ? colon : end;
        if (colon != NULL && memchr(colon + 1, ':', (size_t)(end - colon - 1)) != NULL) {
            *why = "has an IPv6 address without brackets (write redis://[::1]:6379)";
            return -1;
        }
        if (host == host_end) {
            *why = "has no host";
            return -1;
        }
        if (!sl_plain_host(host, host_end)) {
            *why = memchr(host, '?', (size_t)(host_end - host)) != NULL ||
                           memchr(host, '#', (size_t)(host_end - host)) != NULL
                       ? "has a query or fragment ('?', '#'): sluice reads no "
                         "options from the store URL"
                       : "has a host with a character no host name has (letters, "
                         "digits, '-', '.' and '_'; IPv6 in brackets)";
            return -1;
        }
    }
    if (colon != NULL) {
        long v = sl_plain_number(colon + 1, end, 65535);
        if (v < 1) {
            *why = memchr(colon + 1, '?', (size_t)(end - colon - 1)) != NULL ||
                           memchr(colon + 1, '#', (size_t)(end - colon - 1)) != NULL
                       ? "has a query or fragment ('?', '#'): sluice reads no "
                         "options from the store URL"
                       : "has a port that is not a number from 1 to 65535";
            return -1;
        }
        a->port = (int)v;
    }
    a->host = strndup(host, (size_t)(host_end - host));
    if (a->host == NULL) {
        *why = "could not be read: out of memory";
        return -1;
    }
    return 0;
}

/* The database of [P, END) (empty: 0) into U.  Returns 0, or -1. */
static int sl_parse_db(const char *p, const char *end, struct sl_redis_url *u,
                       const char **why)
{
    long v;

    if (p == end)
        return 0;
    v = sl_plain_number(p, end, SL_REDIS_URL_DB_MAX);
    if (v < 0) {
        *why = memchr(p, '?', (size_t)(end - p)) != NULL ||
                       memchr(p, '#', (size_t)(end - p)) != NULL
                   ? "has a query or fragment ('?', '#'): sluice reads no "
                     "options from the store URL"
                   : "has a database that is not a number (redis://host:port/0)";
        return -1;
    }
    u->db = (int)v;
    return 0;
}

/* Decode [P, END) into *DST; -1 with *WHY on a NUL or out of memory. */
static int sl_decode_into(const char *p, const char *end, char **dst,
                          const char *what_nul, const char **why)
{
    int rc = sl_pct_decode(p, (size_t)(end - p), dst);

    if (rc == -2)
        *why = what_nul;
    else if (rc != 0)
        *why = "could not be read: out of memory";
    return rc == 0 ? 0 : -1;
}

static int sl_parse(const char *url, struct sl_redis_url *u, const char **why)
{
    const char *sep = strstr(url, "://"), *p, *end, *slash, *at;
    size_t i;

    for (i = 0; sep != NULL && i < sizeof(sl_schemes) / sizeof(sl_schemes[0]); i++)
        if (strlen(sl_schemes[i].name) == (size_t)(sep - url) &&
            strncasecmp(url, sl_schemes[i].name, (size_t)(sep - url)) == 0)
            break;
    if (sep == NULL || i == sizeof(sl_schemes) / sizeof(sl_schemes[0])) {
        *why = "is not a store: use \"memory\" or \"redis://[:password@]host:port[/db]\" "
               "(or rediss://, redis-sentinel://, redis-cluster://)";
        return -1;
    }
    u->kind = sl_schemes[i].kind;
    u->tls = sl_schemes[i].tls;
    p = sep + 3;
    end = p + strlen(p);
    slash = memchr(p, '/', (size_t)(end - p));
    if (slash == NULL)
        slash = end;

    at = memchr(p, '@', (size_t)(slash - p));
    if (at == NULL && slash < end && memchr(slash, '@', (size_t)(end - slash)) != NULL) {
        *why = "has an '@' after a '/' (write a '/' in a user name or password "
               "as %2F)";
        return -1;
    }
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL) {
            *why = "has credentials without a ':' (write redis://:password@host or "
                   "redis://user:password@host)";
            return -1;
        }
        if (memchr(at + 1, '@', (size_t)(slash - at - 1)) != NULL) {
            *why = "has two '@' (write an '@' in a user name or password as %40)";
            return -1;
        }
        if (colon > p &&
            sl_decode_into(p, colon, &u->user, "has a user name with %00 (a NUL byte)",
                           why) != 0)
            return -1;
        if (sl_decode_into(colon + 1, at, &u->password,
                           "has a password with %00 (a NUL byte)", why) != 0)
            return -1;
        p = at + 1;
    }

    /* The hosts. */
    if (p == slash) {
        *why = "has no host";
        return -1;
    }
    while (p <= slash) {
        const char *comma = memchr(p, ',', (size_t)(slash - p));
        const char *item_end = comma != NULL ? comma : slash;
        if (comma != NULL && u->kind == SL_REDIS_URL_SINGLE) {
            *why = "has several hosts: only redis-sentinel:// and redis-cluster:// "
                   "take a list";
            return -1;
        }
        if (item_end == p) {
            *why = "has an empty host in its list";
            return -1;
        }
        if (u->naddrs == SL_REDIS_URL_MAX_HOSTS) {
            *why = "lists more than 16 hosts";
            return -1;
        }
        if (sl_parse_addr(p, item_end,
                          u->kind == SL_REDIS_URL_SENTINEL ? SL_SENTINEL_PORT
                                                           : SL_REDIS_PORT,
                          &u->addrs[u->naddrs], why) != 0)
            return -1;
        u->naddrs++;
        p = item_end + 1;
    }

    /* The path. */
    p = slash < end ? slash + 1 : end;
    switch (u->kind) {
    case SL_REDIS_URL_SINGLE:
        return sl_parse_db(p, end, u, why);
    case SL_REDIS_URL_SENTINEL: {
        const char *mend = memchr(p, '/', (size_t)(end - p));
        if (mend == NULL)
            mend = end;
        if (mend == p) {
            *why = "has no master name (redis-sentinel://host:26379/mymaster)";
            return -1;
        }
        if (memchr(p, '?', (size_t)(mend - p)) != NULL ||
            memchr(p, '#', (size_t)(mend - p)) != NULL) {
            *why = "has a query or fragment ('?', '#'): sluice reads no options "
                   "from the store URL";
            return -1;
        }
        if (sl_decode_into(p, mend, &u->master,
                           "has a master name with %00 (a NUL byte)", why) != 0)
            return -1;
        return sl_parse_db(mend < end ? mend + 1 : end, end, u, why);
    }
    case SL_REDIS_URL_CLUSTER:
        if (sl_parse_db(p, end, u, why) != 0)
            return -1;
        if (u->db != 0) {
            *why = "selects a database other than 0, which Redis Cluster does not have";
            return -1;
        }
        return 0;
    }
    return 0;
}

int sl_redis_url_parse(const char *url, struct sl_redis_url *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    if (sl_parse(url, out, why) != 0) {
        sl_redis_url_clear(out);
        return -1;
    }
    return 0;
}

void sl_redis_url_clear(struct sl_redis_url *u)
{
    free(u->user);
    free(u->password);
    free(u->master);
    for (size_t i = 0; i < u->naddrs; i++)
        free(u->addrs[i].host);
    memset(u, 0, sizeof(*u));
}

/* ---- writing one back ---- */

struct sl_out {
    char *buf;
    size_t cap, len;
};

static void sl_out_putc(struct sl_out *o, char c)
{
    if (o->len + 1 < o->cap)
        o->buf[o->len] = c;
    o->len++;
}

static void sl_out_puts(struct sl_out *o, const char *s)
{
    while (*s)
        sl_out_putc(o, *s++);
}

/* S percent-encoded: everything but letters, digits and "-._~". */
static void sl_out_encoded(struct sl_out *o, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (sl_is_alnum((char)c) || c == '-' || c == '.' || c == '_' || c == '~') {
            sl_out_putc(o, (char)c);
        } else {
            sl_out_putc(o, '%');
            sl_out_putc(o, hex[c >> 4]);
            sl_out_putc(o, hex[c & 15]);
        }
    }
}

size_t sl_redis_url_format(const struct sl_redis_url *u, bool with_password,
                           char *buf, size_t cap)
{
    struct sl_out o = {buf, cap, 0};
    char num[16];

    sl_out_puts(&o, u->tls ? "rediss" : "redis");
    sl_out_puts(&o, u->kind == SL_REDIS_URL_SENTINEL  ? "-sentinel://"
                    : u->kind == SL_REDIS_URL_CLUSTER ? "-cluster://"
                                                      : "://");
    if (u->password != NULL) {
        if (u->user != NULL)
            sl_out_encoded(&o, u->user);
        sl_out_putc(&o, ':');
        if (with_password)
            sl_out_encoded(&o, u->password);
        else
            sl_out_puts(&o, "***");
        sl_out_putc(&o, '@');
    } else if (u->user != NULL) {
        /* A user with no password cannot be written (AUTH needs one):
         * the parser never makes one; write the user with an empty one. */
        sl_out_encoded(&o, u->user);
        sl_out_puts(&o, ":@");
    }
    for (size_t i = 0; i < u->naddrs; i++) {
        bool v6 = strchr(u->addrs[i].host, ':') != NULL;
        if (i > 0)
            sl_out_putc(&o, ',');
        if (v6)
            sl_out_putc(&o, '[');
        sl_out_puts(&o, u->addrs[i].host);
        if (v6)
            sl_out_putc(&o, ']');
        snprintf(num, sizeof(num), ":%d", u->addrs[i].port);
        sl_out_puts(&o, num);
    }
    if (u->kind == SL_REDIS_URL_SENTINEL) {
        sl_out_putc(&o, '/');
        sl_out_encoded(&o, u->master != NULL ? u->master : "");
    }
    if (u->kind != SL_REDIS_URL_CLUSTER) {
        snprintf(num, sizeof(num), "/%d", u->db);
        sl_out_puts(&o, num);
    }
    if (cap > 0)
        buf[o.len < cap ? o.len : cap - 1] = '\0';
    return o.len;
}
