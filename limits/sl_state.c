/*
 * sl_state — see sl_state.h.
 *
 * Layout (all integers little-endian):
 *
 *   header   "SLUICEST" | u32 version (1) | u64 payload length
 *            | u64 FNV-1a 64 of the payload
 *   payload  i64 saved at (wall-clock µs)
 *            u32 napps, then per app: u16 length, bytes   (app id = index)
 *            u32 nrecords, then per record:
 *              u8 type (1: rate window, 2: pause)
 *              u16 length + bytes: upstream name
 *              u16 length + bytes: rule name (empty for a pause)
 *              u32 length + bytes: per value
 *              type 1: u32 n, then n x (i64 wall µs, u16 app id),
 *                      times ascending
 *              type 2: i64 until (wall µs), u16 length + bytes: reason
 *
 * Loading parses the whole payload twice: once to check every length,
 * bound and order without touching the store, then to apply it, so a file
 * that is refused changes nothing.
 */
#include "sl_state.h"

#include "sl_apps.h"
#include "sl_config.h"
#include "sl_store.h"
#include "sl_window.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SL_STATE_MAGIC "SLUICEST"
#define SL_STATE_VERSION 1u
#define SL_STATE_HEADER 28
#define SL_STATE_MAX (1ull << 31)   /* 2 GiB: far above any memory_limit */

enum { SL_REC_RATE = 1, SL_REC_PAUSE = 2 };

static uint64_t sl_fnv64(const unsigned char *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void sl_err(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void sl_err(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* ---- writing ---- */

struct sl_out {
    unsigned char *buf;
    size_t len, cap;
    bool oom;
};

static void sl_put(struct sl_out *o, const void *p, size_t n)
{
    if (o->oom)
        return;
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 65536;
        unsigned char *nb;
        while (cap < o->len + n)
            cap *= 2;
        nb = realloc(o->buf, cap);
        if (nb == NULL) {
            o->oom = true;
            return;
        }
        o->buf = nb;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
}

static void sl_put_u(struct sl_out *o, uint64_t v, int bytes)
{
    unsigned char b[8];

    for (int i = 0; i < bytes; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    sl_put(o, b, (size_t)bytes);
}

static void sl_put_str(struct sl_out *o, const char *s, size_t n, int lenbytes)
{
    sl_put_u(o, n, lenbytes);
    sl_put(o, s, n);
}

struct sl_save {
    struct sl_out out;
    uint32_t nrecords;
    int64_t offset;                 /* wall µs - store clock µs */
};

static int sl_save_bucket(void *arg, const struct sl_upstream_conf *up,
                          const struct sl_rule *rule, const char *key,
                          size_t key_len, const struct sl_window *win,
                          int64_t paused_until, const char *reason)
{
    struct sl_save *sv = arg;
    struct sl_out *o = &sv->out;

    if (key_len > UINT32_MAX)
        return 0;
    sl_put_u(o, win != NULL ? SL_REC_RATE : SL_REC_PAUSE, 1);
    sl_put_str(o, up->name, strlen(up->name), 2);
    sl_put_str(o, win != NULL ? rule->name : "", win != NULL ? strlen(rule->name) : 0, 2);
    sl_put_str(o, key, key_len, 4);
    if (win != NULL) {
        sl_put_u(o, win->count, 4);
        for (uint32_t i = 0; i < win->count; i++) {
            uint32_t at = (win->head + i) % win->cap;
            sl_put_u(o, (uint64_t)(win->times[at] + sv->offset), 8);
            sl_put_u(o, win->tags[at], 2);
        }
    } else {
        size_t rl = strlen(reason);
        sl_put_u(o, (uint64_t)(paused_until + sv->offset), 8);
        sl_put_str(o, reason, rl > 0xffff ? 0xffff : rl, 2);
    }
    sv->nrecords++;
    return o->oom ? -1 : 0;
}

/* Write all of BUF to FD.  Returns 0 or -1 (errno). */
static int sl_write_all(int fd, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int sl_state_save(struct sl_store *memory, const struct sl_config *config,
                  const struct sl_apps *apps, const char *path, char *err,
                  size_t errlen)
{
    struct sl_save sv = {0};
    struct sl_out head = {0};
    unsigned napps = sl_apps_count(apps);
    size_t nrec_at;
    char tmp[4096], dir[4096];
    int fd = -1, rc = -1;

    (void)config;
    sv.offset = sl_clock_wall() - sl_store_memory_now(memory);
    sl_put_u(&sv.out, (uint64_t)sl_clock_wall(), 8);
    sl_put_u(&sv.out, napps, 4);
    for (unsigned i = 0; i < napps; i++) {
        const char *name = sl_apps_name(apps, (uint16_t)i);
        sl_put_str(&sv.out, name, strlen(name), 2);
    }
    nrec_at = sv.out.len;
    sl_put_u(&sv.out, 0, 4);  /* the record count, filled in below */
    if (sl_store_memory_export(memory, sl_save_bucket, &sv) != 0 || sv.out.oom) {
        sl_err(err, errlen, "out of memory");
        goto out;
    }
    for (int i = 0; i < 4; i++)
        sv.out.buf[nrec_at + (size_t)i] = (unsigned char)(sv.nrecords >> (8 * i));
    sl_put(&head, SL_STATE_MAGIC, 8);
    sl_put_u(&head, SL_STATE_VERSION, 4);
    sl_put_u(&head, sv.out.len, 8);
    sl_put_u(&head, sl_fnv64(sv.out.buf, sv.out.len), 8);
    if (head.oom) {
        sl_err(err, errlen, "out of memory");
        goto out;
    }
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        sl_err(err, errlen, "the path is too long");
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || sl_write_all(fd, head.buf, head.len) != 0 ||
        sl_write_all(fd, sv.out.buf, sv.out.len) != 0 || fsync(fd) != 0) {
        sl_err(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        goto out;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        sl_err(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    /* The rename itself is durable once the directory is. */
    snprintf(dir, sizeof(dir), "%s", path);
    fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    rc = 0;
out:
    free(sv.out.buf);
    free(head.buf);
    return rc;
}

/* ---- reading ---- */

struct sl_in {
    const unsigned char *p, *end;
    bool bad;
};

static uint64_t sl_get_u(struct sl_in *in, int bytes)
{
    uint64_t v = 0;

    if (in->bad || in->end - in->p < bytes) {
        in->bad = true;
        return 0;
    }
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)in->p[i] << (8 * i);
    in->p += bytes;
    return v;
}

/* A length-prefixed string: its start, *LEN set.  NULL when truncated. */
static const char *sl_get_str(struct sl_in *in, int lenbytes, size_t *len)
{
    const char *s;

    *len = (size_t)sl_get_u(in, lenbytes);
    if (in->bad || (size_t)(in->end - in->p) < *len) {
        in->bad = true;
        return NULL;
    }
    s = (const char *)in->p;
    in->p += *len;
    return s;
}

/*
 * One pass over the payload: check (APPLY false) or apply (true).
 * Returns 0 or -1 with ERR.
 */
static int sl_state_walk(const unsigned char *buf, size_t len, bool apply,
                         struct sl_store *memory, const struct sl_config *config,
                         struct sl_apps *apps, size_t *restored, char *err,
                         size_t errlen)
{
    struct sl_in in = {buf, buf + len, false};
    uint16_t *appmap = NULL;
    int64_t *times = NULL;
    uint16_t *tags = NULL;
    size_t cap = 0;
    uint32_t napps, nrec;
    int64_t offset = 0;
    int rc = -1;

    (void)sl_get_u(&in, 8);  /* saved at */
    napps = (uint32_t)sl_get_u(&in, 4);
    if (in.bad || napps > 65536) {
        sl_err(err, errlen, "its app table is damaged");
        goto out;
    }
    appmap = calloc(napps ? napps : 1, sizeof(*appmap));
    if (appmap == NULL) {
        sl_err(err, errlen, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < napps; i++) {
        size_t n;
        const char *name = sl_get_str(&in, 2, &n);
        if (name == NULL) {
            sl_err(err, errlen, "its app table is truncated");
            goto out;
        }
        if (apply)
            appmap[i] = (i == 0 || (n == 1 && name[0] == '-')) ? SL_APP_NONE
                                                                : sl_apps_id(apps, name, n);
    }
    nrec = (uint32_t)sl_get_u(&in, 4);
    if (apply)
        offset = sl_store_memory_now(memory) - sl_clock_wall();
    for (uint32_t r = 0; r < nrec; r++) {
        size_t ulen, rlen, klen;
        unsigned type = (unsigned)sl_get_u(&in, 1);
        const char *uname = sl_get_str(&in, 2, &ulen);
        const char *rname = sl_get_str(&in, 2, &rlen);
        const char *key = sl_get_str(&in, 4, &klen);
        const struct sl_upstream_conf *up;
        const struct sl_rule *rule;
        char keybuf[4096];

        if (in.bad || (type != SL_REC_RATE && type != SL_REC_PAUSE)) {
            sl_err(err, errlen, "record %u of %u is damaged", r + 1, nrec);
            goto out;
        }
        up = sl_config_upstream_n(config, uname, ulen);
        rule = sl_upstream_rule_named(up, rname, rlen);
        if (type == SL_REC_RATE) {
            uint32_t n = (uint32_t)sl_get_u(&in, 4);
            int64_t prev = INT64_MIN;
            if (in.bad || (size_t)(in.end - in.p) / 10 < n) {
                sl_err(err, errlen, "record %u of %u is truncated", r + 1, nrec);
                goto out;
            }
            if (apply && n > cap) {
                free(times);
                free(tags);
                cap = n;
                times = malloc(cap * sizeof(*times));
                tags = malloc(cap * sizeof(*tags));
                if (times == NULL || tags == NULL) {
                    sl_err(err, errlen, "out of memory");
                    goto out;
                }
            }
            for (uint32_t i = 0; i < n; i++) {
                int64_t t = (int64_t)sl_get_u(&in, 8);
                uint16_t app = (uint16_t)sl_get_u(&in, 2);
                if (t < prev || app >= napps) {
                    sl_err(err, errlen, "record %u of %u is out of order",
                           r + 1, nrec);
                    goto out;
                }
                prev = t;
                if (apply) {
                    times[i] = t + offset;
                    tags[i] = appmap[app];
                }
            }
            /* A rule gone, or no longer a rate rule: forgotten. */
            if (apply && rule != NULL && rule->kind == SL_RULE_RATE && n > 0) {
                int logged = sl_store_memory_import(memory, up, rule, key, klen,
                                                    times, tags, n);
                if (logged < 0) {
                    sl_err(err, errlen, "memory_limit reached while restoring "
                           "(raise memory_limit)");
                    goto out;
                }
                *restored += (size_t)logged;
            }
        } else {
            int64_t until = (int64_t)sl_get_u(&in, 8);
            size_t wl;
            const char *why = sl_get_str(&in, 2, &wl);
            if (why == NULL || klen != 0 || rlen != 0) {
                sl_err(err, errlen, "record %u of %u is damaged", r + 1, nrec);
                goto out;
            }
            if (apply && up != NULL && until + offset > sl_store_memory_now(memory)) {
                snprintf(keybuf, sizeof(keybuf), "%.*s", (int)(wl > 95 ? 95 : wl), why);
                sl_store_pause(memory, up, until + offset - sl_store_memory_now(memory),
                               keybuf);
            }
        }
    }
    if (in.bad || in.p != in.end) {
        sl_err(err, errlen, in.bad ? "it is truncated" : "it has bytes past its end");
        goto out;
    }
    rc = 0;
out:
    free(appmap);
    free(times);
    free(tags);
    return rc;
}

int sl_state_parse(const unsigned char *buf, size_t len, struct sl_store *memory,
                   const struct sl_config *config, struct sl_apps *apps,
                   size_t *restored, char *err, size_t errlen)
{
    uint64_t plen, hash, version;
    struct sl_in in = {buf, buf + len, false};
    size_t dummy = 0;

    if (restored == NULL)
        restored = &dummy;
    *restored = 0;
    if (len < 8 || memcmp(buf, SL_STATE_MAGIC, 8) != 0) {
        sl_err(err, errlen, "it is not a sluice state file");
        return -1;
    }
    in.p += 8;
    version = sl_get_u(&in, 4);
    plen = sl_get_u(&in, 8);
    hash = sl_get_u(&in, 8);
    if (in.bad) {
        sl_err(err, errlen, "it is truncated");
        return -1;
    }
    if (version != SL_STATE_VERSION) {
        sl_err(err, errlen, "its version is %llu, this sluice reads %u",
               (unsigned long long)version, SL_STATE_VERSION);
        return -1;
    }
    if (plen != len - SL_STATE_HEADER) {
        sl_err(err, errlen, "it is %s (%llu payload bytes announced, %zu there)",
               plen > len - SL_STATE_HEADER ? "truncated" : "longer than it says",
               (unsigned long long)plen, len - SL_STATE_HEADER);
        return -1;
    }
    if (sl_fnv64(buf + SL_STATE_HEADER, (size_t)plen) != hash) {
        sl_err(err, errlen, "its checksum does not match (damaged)");
        return -1;
    }
    if (sl_state_walk(buf + SL_STATE_HEADER, (size_t)plen, false, NULL, config,
                      apps, restored, err, errlen) != 0)
        return -1;
    if (memory == NULL)
        return 0;
    return sl_state_walk(buf + SL_STATE_HEADER, (size_t)plen, true, memory, config,
                         apps, restored, err, errlen);
}

int sl_state_load(struct sl_store *memory, const struct sl_config *config,
                  struct sl_apps *apps, const char *path, size_t *restored,
                  char *err, size_t errlen)
{
    struct stat st;
    unsigned char *buf = NULL;
    size_t got = 0;
    int fd, rc;

    *restored = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        sl_err(err, errlen, "cannot open it: %s", strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        (unsigned long long)st.st_size > SL_STATE_MAX) {
        sl_err(err, errlen, "it is not a regular file of a sane size");
        close(fd);
        return -1;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        sl_err(err, errlen, "out of memory");
        close(fd);
        return -1;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    rc = sl_state_parse(buf, got, memory, config, apps, restored, err, errlen);
    free(buf);
    return rc == 0 ? 1 : -1;
}
