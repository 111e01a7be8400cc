/*
 * sl_state — see sl_state.h for what is kept and why.
 *
 * Snapshot layout (all integers little-endian):
 *
 *   header   "SLUICEST" | u32 version (2) | u64 payload length
 *            | u64 FNV-1a 64 of the payload
 *   payload  i64 saved at, wall clock µs | i64 saved at, store clock µs
 *            | 16 bytes boot id (zero: unknown)
 *            u32 napps, then per app: u16 length, bytes   (app id = index)
 *            u32 nrecords, then per record:
 *              u8 type (1: rate window, 2: pause)
 *              u16 length + bytes: upstream name
 *              u16 length + bytes: rule name (empty for a pause)
 *              u32 length + bytes: per value
 *              type 1: u32 n, then n x (i64 store µs, u16 app id),
 *                      times ascending
 *              type 2: i64 until (store µs), u16 length + bytes: reason
 *
 * Version 1 (still read) had no store clock or boot id, and wall-clock
 * times: it is version 2 with both saved clocks equal and no boot id.
 *
 * Journal record (a file is records back to back):
 *
 *   u32 magic "SLJ1" | u32 record length (all of it)
 *   | 16 bytes boot id | i64 store clock µs | i64 wall clock µs
 *   | u16 n | u16 + bytes: app | u16 + bytes: upstream
 *   | n x (u16 + bytes: rule, u32 + bytes: per value, i64 stamp)
 *   | u64 FNV-1a 64 of everything before it
 *
 * A reader looks for the magic, and takes a record only when its length
 * and hash check out; anything else is skipped a byte at a time, so a
 * torn last write (a kill in the middle of write(2), a full disk) or a
 * damaged page costs only the records it touched, and never a start.
 *
 * Loading checks the whole snapshot before touching the store (a file
 * that is refused changes nothing), then applies it bucket by bucket,
 * each merged with the journal's records of the same bucket.
 */
#include "sl_state.h"

#include "sl_apps.h"
#include "sl_config.h"
#include "sl_duration.h"
#include "sl_feedback.h"
#include "sl_log.h"
#include "sl_store.h"
#include "sl_window.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SL_STATE_MAGIC "SLUICEST"
#define SL_STATE_VERSION 2u
#define SL_STATE_HEADER 28
#define SL_STATE_MAX (1ull << 31)   /* 2 GiB: far above any memory_limit */
#define SL_JOURNAL_MAGIC 0x314a4c53u  /* "SLJ1" */
#define SL_JOURNAL_FIXED 54           /* a record without names or slots */
#define SL_JOURNAL_MAX (1u << 20)     /* a record's bytes, at most */
/* Every clock reading in a file lies within this of zero (2^60 µs is
 * 36,000 years), so sums of a few of them never overflow. */
#define SL_STATE_TIME_MAX (INT64_C(1) << 60)
/* A stamp may follow its save (or its record) by this much: calls logged
 * while the export ran, stamps pushed a microsecond apart. */
#define SL_STATE_AHEAD (86400ll * SL_USEC_PER_SEC)

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

/* ---- clocks ---- */

/* This boot's id, parsed from its 36-character text; zero when unknown. */
static void sl_boot_id(unsigned char id[16])
{
    static unsigned char cached[16];
    static _Atomic int state;   /* 0: not read, 1: read */
    char text[64];
    size_t n = 0;
    int fd;

    if (atomic_load(&state) == 1) {
        memcpy(id, cached, 16);
        return;
    }
    memset(id, 0, 16);
    fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r = read(fd, text, sizeof(text) - 1);
        close(fd);
        for (ssize_t i = 0; r > 0 && i < r && n < 32; i++) {
            int v = text[i] >= '0' && text[i] <= '9' ? text[i] - '0'
                    : text[i] >= 'a' && text[i] <= 'f' ? text[i] - 'a' + 10
                    : -1;
            if (v < 0)
                continue;
            id[n / 2] = (unsigned char)(id[n / 2] << 4 | v);
            n++;
        }
        if (n != 32)
            memset(id, 0, 16);
    }
    memcpy(cached, id, 16);
    atomic_store(&state, 1);
}

void sl_state_clock_now(struct sl_store *memory, struct sl_state_clock *now)
{
    memset(now->boot_id, 0, sizeof(now->boot_id));
    /* A test's clock is nobody else's: only wall time links it to others. */
    if (sl_store_memory_monotonic(memory))
        sl_boot_id(now->boot_id);
    now->wall = sl_clock_wall();
    now->store = sl_store_memory_now(memory);
}

static bool sl_known(const unsigned char id[16])
{
    static const unsigned char zero[16];

    return memcmp(id, zero, 16) != 0;
}

static bool sl_same_clock(const struct sl_state_clock *a, const struct sl_state_clock *b)
{
    return sl_known(a->boot_id) && memcmp(a->boot_id, b->boot_id, 16) == 0;
}

/*
 * Stamp T, taken on clock REF, on clock NOW.  In the same boot it is the
 * same clock; across a reboot, T's wall time (REF's wall and store clocks
 * were read together) on NOW's store clock.  Every input is within
 * SL_STATE_TIME_MAX (checked when read), so nothing overflows.
 */
static int64_t sl_translate(const struct sl_state_clock *ref, int64_t t,
                            const struct sl_state_clock *now)
{
    if (sl_same_clock(ref, now))
        return t;
    return ref->wall - (ref->store - t) - now->wall + now->store;
}

/* Seconds from B to A, for a message: in floating point, so that the
 * times of a forged file cannot overflow it. */
static double sl_secs_apart(int64_t a, int64_t b)
{
    return ((double)a - (double)b) / SL_USEC_PER_SEC;
}

static bool sl_time_ok(int64_t t)
{
    return t > -SL_STATE_TIME_MAX && t < SL_STATE_TIME_MAX;
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

static void sl_le(unsigned char *b, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static void sl_put_u(struct sl_out *o, uint64_t v, int bytes)
{
    unsigned char b[8];

    sl_le(b, v, bytes);
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
            sl_put_u(o, (uint64_t)win->times[at], 8);
            sl_put_u(o, win->tags[at], 2);
        }
    } else {
        size_t rl = strlen(reason);
        sl_put_u(o, (uint64_t)paused_until, 8);
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

size_t sl_state_seal(unsigned char *buf, const unsigned char *payload, size_t len)
{
    memcpy(buf, SL_STATE_MAGIC, 8);
    sl_le(buf + 8, SL_STATE_VERSION, 4);
    sl_le(buf + 12, len, 8);
    sl_le(buf + 20, sl_fnv64(payload, len), 8);
    if (len > 0)
        memmove(buf + SL_STATE_HEADER, payload, len);
    return len + SL_STATE_HEADER;
}

/* The directory of PATH, fsynced: a rename in it is durable after this. */
static void sl_sync_dir(const char *path)
{
    char dir[4096];
    int fd;

    snprintf(dir, sizeof(dir), "%s", path);
    fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/*
 * A new file beside PATH named PATH + SUFFIX + six random characters,
 * created exclusively (O_EXCL never follows a link, and an unpredictable
 * name cannot be planted in advance), its name in TMP.  Returns the fd or
 * -1 (errno).
 */
static int sl_tmp_beside(const char *path, const char *suffix, char *tmp, size_t cap,
                         int flags)
{
    if (snprintf(tmp, cap, "%s%sXXXXXX", path, suffix) >= (int)cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return mkostemp(tmp, O_CLOEXEC | flags);
}

/* The snapshot of MEMORY, header included, in *OUT.  0 or -1 (OOM). */
static int sl_snapshot_bytes(struct sl_store *memory, const struct sl_apps *apps,
                             struct sl_out *out)
{
    struct sl_save sv = {0};
    struct sl_state_clock now;
    unsigned napps = sl_apps_count(apps);
    size_t nrec_at;

    sl_state_clock_now(memory, &now);
    sl_put(&sv.out, (unsigned char[SL_STATE_HEADER]){0}, SL_STATE_HEADER);
    sl_put_u(&sv.out, (uint64_t)now.wall, 8);
    sl_put_u(&sv.out, (uint64_t)now.store, 8);
    sl_put(&sv.out, now.boot_id, 16);
    sl_put_u(&sv.out, napps, 4);
    for (unsigned i = 0; i < napps; i++) {
        const char *name = sl_apps_name(apps, (uint16_t)i);
        sl_put_str(&sv.out, name, strlen(name), 2);
    }
    nrec_at = sv.out.len;
    sl_put_u(&sv.out, 0, 4);  /* the record count, filled in below */
    if (sl_store_memory_export(memory, sl_save_bucket, &sv) != 0 || sv.out.oom) {
        free(sv.out.buf);
        return -1;
    }
    sl_le(sv.out.buf + nrec_at, sv.nrecords, 4);
    sl_state_seal(sv.out.buf, sv.out.buf + SL_STATE_HEADER,
                  sv.out.len - SL_STATE_HEADER);
    *out = sv.out;
    return 0;
}

int sl_state_save(struct sl_store *memory, const struct sl_config *config,
                  const struct sl_apps *apps, const char *path, char *err,
                  size_t errlen)
{
    struct sl_out o = {0};
    char tmp[4096];
    int fd = -1, rc = -1;

    (void)config;
    if (sl_snapshot_bytes(memory, apps, &o) != 0) {
        sl_err(err, errlen, "out of memory");
        goto out;
    }
    fd = sl_tmp_beside(path, ".tmp.", tmp, sizeof(tmp), 0);
    if (fd < 0) {
        sl_err(err, errlen, "cannot create a temporary file beside %s: %s", path,
               strerror(errno));
        goto out;
    }
    if (fchmod(fd, 0600) != 0 || sl_write_all(fd, o.buf, o.len) != 0 ||
        fsync(fd) != 0) {
        sl_err(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
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
    sl_sync_dir(path);
    rc = 0;
out:
    free(o.buf);
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

/* One journal entry: a call's stamp in one bucket. */
struct sl_jent {
    const char *up, *rule, *key, *app;  /* into the journal's bytes */
    size_t ulen, rlen, klen, alen;
    int64_t at;                   /* its record's store clock */
    struct sl_state_clock ref;    /* its record's clocks */
    bool used;                    /* merged into a snapshot bucket */
};

/* Every record of a journal's bytes, one entry per slot. */
struct sl_journal_read {
    struct sl_jent *e;
    size_t n, cap;
};

static int sl_memcmp_len(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);

    return c != 0 ? c : al < bl ? -1 : al > bl;
}

static int sl_jent_bucket_cmp(const struct sl_jent *a, const char *up, size_t ulen,
                              const char *rule, size_t rlen, const char *key,
                              size_t klen)
{
    int c = sl_memcmp_len(a->up, a->ulen, up, ulen);

    if (c == 0)
        c = sl_memcmp_len(a->rule, a->rlen, rule, rlen);
    if (c == 0)
        c = sl_memcmp_len(a->key, a->klen, key, klen);
    return c;
}

static int sl_jent_cmp(const void *pa, const void *pb)
{
    const struct sl_jent *a = pa, *b = pb;
    int c = sl_jent_bucket_cmp(a, b->up, b->ulen, b->rule, b->rlen, b->key, b->klen);

    if (c != 0)
        return c;
    return a->at < b->at ? -1 : a->at > b->at;
}

/* Parse the record at IN (its magic and length already checked to fit):
 * its slots appended to JR.  0, or -1 when it is no record (JR keeps only
 * what it had), or -2 when out of memory. */
static int sl_journal_one(const unsigned char *rec, size_t len,
                          struct sl_journal_read *jr)
{
    struct sl_in in = {rec + 8, rec + len - 8, false};
    struct sl_state_clock ref;
    size_t alen, ulen, before = jr->n;
    const char *app, *up;
    unsigned n;

    if (sl_fnv64(rec, len - 8) != (sl_get_u(&(struct sl_in){rec + len - 8, rec + len,
                                                             false}, 8)))
        return -1;
    if (in.end - in.p < 16)
        return -1;
    memcpy(ref.boot_id, in.p, 16);
    in.p += 16;
    ref.store = (int64_t)sl_get_u(&in, 8);
    ref.wall = (int64_t)sl_get_u(&in, 8);
    n = (unsigned)sl_get_u(&in, 2);
    app = sl_get_str(&in, 2, &alen);
    up = sl_get_str(&in, 2, &ulen);
    if (in.bad || !sl_time_ok(ref.store) || !sl_time_ok(ref.wall))
        return -1;
    for (unsigned i = 0; i < n; i++) {
        struct sl_jent *e;
        size_t rlen, klen;
        const char *rule = sl_get_str(&in, 2, &rlen);
        const char *key = sl_get_str(&in, 4, &klen);
        int64_t at = (int64_t)sl_get_u(&in, 8);
        if (in.bad || at < ref.store - SL_STATE_MAX_AGE || at > ref.store + SL_STATE_AHEAD) {
            jr->n = before;
            return -1;
        }
        if (jr->n == jr->cap) {
            size_t cap = jr->cap ? jr->cap * 2 : 64;
            struct sl_jent *ne = realloc(jr->e, cap * sizeof(*ne));
            if (ne == NULL) {
                jr->n = before;
                return -2;
            }
            jr->e = ne;
            jr->cap = cap;
        }
        e = &jr->e[jr->n++];
        *e = (struct sl_jent){up, rule, key, app, ulen, rlen, klen, alen, at, ref, false};
    }
    if (in.p != in.end) {
        jr->n = before;
        return -1;
    }
    return 0;
}

/* Every record in BUF into JR (sorted by bucket, then stamp); bytes that
 * are no record are counted in *SKIPPED.  0, or -1 when out of memory. */
static int sl_journal_parse(const unsigned char *buf, size_t len,
                            struct sl_journal_read *jr, size_t *skipped)
{
    size_t p = 0;

    while (p < len) {
        uint64_t rl;
        int rc = -1;
        if (len - p >= SL_JOURNAL_FIXED) {
            struct sl_in in = {buf + p, buf + len, false};
            uint32_t magic = (uint32_t)sl_get_u(&in, 4);
            rl = sl_get_u(&in, 4);
            if (magic == SL_JOURNAL_MAGIC && rl >= SL_JOURNAL_FIXED &&
                rl <= SL_JOURNAL_MAX && rl <= len - p)
                rc = sl_journal_one(buf + p, (size_t)rl, jr);
        }
        if (rc == -2)
            return -1;
        if (rc == 0) {
            p += (size_t)rl;
        } else {
            (*skipped)++;
            p++;
        }
    }
    if (jr->n > 1)
        qsort(jr->e, jr->n, sizeof(*jr->e), sl_jent_cmp);
    return 0;
}

/* The first entry of bucket (UP, RULE, KEY) in JR, and *END past its last. */
static size_t sl_journal_find(const struct sl_journal_read *jr, const char *up,
                              size_t ulen, const char *rule, size_t rlen,
                              const char *key, size_t klen, size_t *end)
{
    size_t lo = 0, hi = jr->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sl_jent_bucket_cmp(&jr->e[mid], up, ulen, rule, rlen, key, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *end = lo;
    while (*end < jr->n &&
           sl_jent_bucket_cmp(&jr->e[*end], up, ulen, rule, rlen, key, klen) == 0)
        (*end)++;
    return lo;
}

/* A send time and its app, on the loading store's clock. */
struct sl_stamp {
    int64_t t;
    uint16_t app;
};

static int sl_stamp_cmp(const void *pa, const void *pb)
{
    const struct sl_stamp *a = pa, *b = pb;

    return a->t < b->t ? -1 : a->t > b->t;
}

/* What one apply pass works with. */
struct sl_apply {
    struct sl_store *memory;      /* NULL: check only */
    const struct sl_config *config;
    struct sl_apps *apps;
    const struct sl_state_clock *now;
    struct sl_state_clock saved;  /* the snapshot's clocks */
    struct sl_journal_read *jr;
    struct sl_state_stats *stats;
    /* scratch, grown as needed */
    struct sl_stamp *st;
    int64_t *times;
    uint16_t *tags;
    size_t cap;
};

static int sl_apply_grow(struct sl_apply *ap, size_t n)
{
    if (n <= ap->cap)
        return 0;
    free(ap->st);
    free(ap->times);
    free(ap->tags);
    ap->cap = n;
    ap->st = malloc(n * sizeof(*ap->st));
    ap->times = malloc(n * sizeof(*ap->times));
    ap->tags = malloc(n * sizeof(*ap->tags));
    if (ap->st == NULL || ap->times == NULL || ap->tags == NULL) {
        ap->cap = 0;
        return -1;
    }
    return 0;
}

/* The app id of a journal entry's name in this process. */
static uint16_t sl_jent_app(struct sl_apply *ap, const struct sl_jent *e)
{
    if (e->alen == 0 || (e->alen == 1 && e->app[0] == '-'))
        return SL_APP_NONE;
    return sl_apps_id(ap->apps, e->app, e->alen);
}

/*
 * Log bucket (UP, RULE, KEY): the snapshot's NS stamps in ST (on the
 * saved clock, ascending), merged with the journal's entries [J0, J1) of
 * the same bucket that the snapshot does not hold.  0 or -1 with ERR.
 */
static int sl_apply_bucket(struct sl_apply *ap, const struct sl_upstream_conf *up,
                           const struct sl_rule *rule, const char *key, size_t klen,
                           size_t ns, size_t j0, size_t j1, char *err, size_t errlen)
{
    size_t n = ns;
    int logged;

    for (size_t j = j0; j < j1; j++) {
        struct sl_jent *e = &ap->jr->e[j];
        e->used = true;
        if (sl_same_clock(&e->ref, &ap->saved)) {
            /* The snapshot holds the call when it holds its stamp: stamps
             * of one bucket are unique, and both are on one clock. */
            size_t lo = 0, hi = ns;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (ap->st[mid].t < e->at)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo < ns && ap->st[lo].t == e->at)
                continue;
        }
        ap->st[n].t = sl_translate(&e->ref, e->at, ap->now);
        ap->st[n].app = sl_jent_app(ap, e);
        ap->stats->journaled++;
        n++;
    }
    for (size_t i = 0; i < ns; i++)
        ap->st[i].t = sl_translate(&ap->saved, ap->st[i].t, ap->now);
    if (n > ns)
        qsort(ap->st, n, sizeof(*ap->st), sl_stamp_cmp);
    for (size_t i = 0; i < n; i++) {
        /* After now on this clock (the wall clock went back across a
         * reboot): sent now, as far as anyone can tell. */
        if (ap->st[i].t > ap->now->store) {
            ap->st[i].t = ap->now->store;
            ap->stats->clamped++;
        }
        ap->times[i] = ap->st[i].t;
        ap->tags[i] = ap->st[i].app;
    }
    if (rule == NULL || rule->kind != SL_RULE_RATE || n == 0)
        return 0;  /* a rule gone, or no longer a rate rule: forgotten */
    logged = sl_store_memory_import(ap->memory, up, rule, key, klen, ap->times,
                                    ap->tags, (uint32_t)n);
    if (logged < 0) {
        sl_err(err, errlen, "memory_limit reached while restoring (raise memory_limit)");
        return -1;
    }
    ap->stats->restored += (size_t)logged;
    return 0;
}

/*
 * One pass over the snapshot's payload: check (AP->memory NULL) or apply.
 * VERSION is the file's.  Returns 0 or -1 with ERR.
 */
static int sl_state_walk(const unsigned char *buf, size_t len, unsigned version,
                         struct sl_apply *ap, char *err, size_t errlen)
{
    struct sl_in in = {buf, buf + len, false};
    bool apply = ap->memory != NULL;
    uint16_t *appmap = NULL;
    uint32_t napps, nrec;
    int rc = -1;

    ap->saved.wall = (int64_t)sl_get_u(&in, 8);
    memset(ap->saved.boot_id, 0, 16);
    ap->saved.store = ap->saved.wall;
    if (version >= 2) {
        ap->saved.store = (int64_t)sl_get_u(&in, 8);
        if (!in.bad && in.end - in.p >= 16) {
            memcpy(ap->saved.boot_id, in.p, 16);
            in.p += 16;
        } else {
            in.bad = true;
        }
    }
    if (in.bad || !sl_time_ok(ap->saved.wall) || !sl_time_ok(ap->saved.store)) {
        sl_err(err, errlen, "its save time is damaged or out of range");
        goto out;
    }
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
                                                                : sl_apps_id(ap->apps, name, n);
    }
    nrec = (uint32_t)sl_get_u(&in, 4);
    for (uint32_t r = 0; r < nrec; r++) {
        size_t ulen, rlen, klen;
        unsigned type = (unsigned)sl_get_u(&in, 1);
        const char *uname = sl_get_str(&in, 2, &ulen);
        const char *rname = sl_get_str(&in, 2, &rlen);
        const char *key = sl_get_str(&in, 4, &klen);
        const struct sl_upstream_conf *up;
        const struct sl_rule *rule;

        if (in.bad || (type != SL_REC_RATE && type != SL_REC_PAUSE)) {
            sl_err(err, errlen, "record %u of %u is damaged", r + 1, nrec);
            goto out;
        }
        up = sl_config_upstream_n(ap->config, uname, ulen);
        rule = sl_upstream_rule_named(up, rname, rlen);
        if (type == SL_REC_RATE) {
            uint32_t n = (uint32_t)sl_get_u(&in, 4);
            int64_t prev = INT64_MIN;
            size_t j0 = 0, j1 = 0;
            if (in.bad || (size_t)(in.end - in.p) / 10 < n) {
                sl_err(err, errlen, "record %u of %u is truncated", r + 1, nrec);
                goto out;
            }
            if (apply) {
                j0 = sl_journal_find(ap->jr, uname, ulen, rname, rlen, key, klen, &j1);
                if (sl_apply_grow(ap, (size_t)n + (j1 - j0)) != 0) {
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
                /* A genuine file holds calls of the last SL_STATE_MAX_AGE
                 * (no window is longer) and none far after its save. */
                if (t < ap->saved.store - SL_STATE_MAX_AGE ||
                    t > ap->saved.store + SL_STATE_AHEAD) {
                    sl_err(err, errlen, "record %u of %u has a send time %.0f s "
                           "from its save, out of range", r + 1, nrec,
                           sl_secs_apart(t, ap->saved.store));
                    goto out;
                }
                prev = t;
                if (apply) {
                    ap->st[i].t = t;
                    ap->st[i].app = appmap[app];
                }
            }
            if (apply && sl_apply_bucket(ap, up, rule, key, klen, n, j0, j1, err,
                                         errlen) != 0)
                goto out;
        } else {
            int64_t until = (int64_t)sl_get_u(&in, 8), left;
            size_t wl;
            const char *why = sl_get_str(&in, 2, &wl);
            char reason[96];
            if (why == NULL || klen != 0 || rlen != 0) {
                sl_err(err, errlen, "record %u of %u is damaged", r + 1, nrec);
                goto out;
            }
            if (until < ap->saved.store - SL_STATE_MAX_AGE ||
                until > ap->saved.store + SL_FEEDBACK_MAX_PAUSE_S * SL_USEC_PER_SEC +
                            SL_STATE_AHEAD) {
                sl_err(err, errlen, "record %u of %u pauses its upstream until "
                       "%.0f s from its save, out of range", r + 1, nrec,
                       sl_secs_apart(until, ap->saved.store));
                goto out;
            }
            if (!apply || up == NULL)
                continue;
            left = sl_translate(&ap->saved, until, ap->now) - ap->now->store;
            /* Across a reboot whose clock went back, no longer than any
             * provider may ask. */
            if (left > SL_FEEDBACK_MAX_PAUSE_S * SL_USEC_PER_SEC)
                left = SL_FEEDBACK_MAX_PAUSE_S * SL_USEC_PER_SEC;
            if (left > 0) {
                snprintf(reason, sizeof(reason), "%.*s", (int)(wl > 95 ? 95 : wl), why);
                sl_store_pause(ap->memory, up, left, reason);
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
    return rc;
}

/* Check a snapshot's header: its payload in *PAYLOAD, *PLEN, *VERSION. */
static int sl_state_header(const unsigned char *buf, size_t len,
                           const unsigned char **payload, size_t *plen,
                           unsigned *version, char *err, size_t errlen)
{
    struct sl_in in = {buf, buf + len, false};
    uint64_t n, hash, v;

    if (len < 8 || memcmp(buf, SL_STATE_MAGIC, 8) != 0) {
        sl_err(err, errlen, "it is not a sluice state file");
        return -1;
    }
    in.p += 8;
    v = sl_get_u(&in, 4);
    n = sl_get_u(&in, 8);
    hash = sl_get_u(&in, 8);
    if (in.bad) {
        sl_err(err, errlen, "it is truncated");
        return -1;
    }
    if (v != 1 && v != SL_STATE_VERSION) {
        sl_err(err, errlen, "its version is %llu, this sluice reads 1 and %u",
               (unsigned long long)v, SL_STATE_VERSION);
        return -1;
    }
    if (n != len - SL_STATE_HEADER) {
        sl_err(err, errlen, "it is %s (%llu payload bytes announced, %zu there)",
               n > len - SL_STATE_HEADER ? "truncated" : "longer than it says",
               (unsigned long long)n, len - SL_STATE_HEADER);
        return -1;
    }
    if (sl_fnv64(buf + SL_STATE_HEADER, (size_t)n) != hash) {
        sl_err(err, errlen, "its checksum does not match (damaged)");
        return -1;
    }
    *payload = buf + SL_STATE_HEADER;
    *plen = (size_t)n;
    *version = (unsigned)v;
    return 0;
}

int sl_state_apply(const unsigned char *snap, size_t snap_len,
                   const unsigned char *journal, size_t journal_len,
                   struct sl_store *memory, const struct sl_config *config,
                   struct sl_apps *apps, const struct sl_state_clock *now,
                   struct sl_state_stats *stats, char *err, size_t errlen)
{
    struct sl_journal_read jr = {0};
    struct sl_apply ap = {0};
    struct sl_state_stats dummy;
    const unsigned char *payload = NULL;
    size_t plen = 0;
    unsigned version = 0;
    int rc = -1;

    if (stats == NULL)
        stats = &dummy;
    memset(stats, 0, sizeof(*stats));
    ap.config = config;
    ap.apps = apps;
    ap.now = now;
    ap.jr = &jr;
    ap.stats = stats;
    if (snap != NULL) {
        stats->found = true;
        if (sl_state_header(snap, snap_len, &payload, &plen, &version, err,
                            errlen) != 0 ||
            sl_state_walk(payload, plen, version, &ap, err, errlen) != 0)
            goto out;
    }
    if (journal != NULL && journal_len > 0) {
        stats->found = true;
        if (sl_journal_parse(journal, journal_len, &jr, &stats->skipped) != 0) {
            sl_err(err, errlen, "out of memory reading the journal");
            goto out;
        }
    }
    if (memory == NULL) {
        rc = 0;
        goto out;
    }
    ap.memory = memory;
    if (snap != NULL && sl_state_walk(payload, plen, version, &ap, err, errlen) != 0)
        goto out;
    /* Buckets only the journal knows: calls sent since the last write. */
    for (size_t j = 0; j < jr.n;) {
        size_t j1;
        const struct sl_jent *e = &jr.e[j];
        const struct sl_upstream_conf *up;
        (void)sl_journal_find(&jr, e->up, e->ulen, e->rule, e->rlen, e->key, e->klen,
                              &j1);
        if (!e->used) {
            up = sl_config_upstream_n(config, e->up, e->ulen);
            if (sl_apply_grow(&ap, j1 - j) != 0) {
                sl_err(err, errlen, "out of memory");
                goto out;
            }
            if (sl_apply_bucket(&ap, up, sl_upstream_rule_named(up, e->rule, e->rlen),
                                e->key, e->klen, 0, j, j1, err, errlen) != 0)
                goto out;
        }
        j = j1;
    }
    rc = 0;
out:
    free(jr.e);
    free(ap.st);
    free(ap.times);
    free(ap.tags);
    return rc;
}

int sl_state_parse(const unsigned char *buf, size_t len, struct sl_store *memory,
                   const struct sl_config *config, struct sl_apps *apps,
                   size_t *restored, char *err, size_t errlen)
{
    struct sl_state_stats stats;
    struct sl_state_clock now = {{0}, 0, 0};
    int rc;

    if (memory != NULL)
        sl_state_clock_now(memory, &now);
    else
        now.wall = sl_clock_wall();
    /* The check pass first: a refused file changes nothing. */
    rc = sl_state_apply(buf, len, NULL, 0, NULL, config, apps, &now, &stats, err,
                        errlen);
    if (rc == 0 && memory != NULL)
        rc = sl_state_apply(buf, len, NULL, 0, memory, config, apps, &now, &stats,
                            err, errlen);
    if (restored != NULL)
        *restored = rc == 0 ? stats.restored : 0;
    return rc;
}

/*
 * Read all of PATH into *BUF (NULL and *LEN 0 when there is no such file).
 * FOLLOW: whether a symbolic link at PATH is followed (the journals' never
 * are).  0 or -1 with ERR.
 */
static int sl_read_file(const char *path, bool follow, unsigned char **buf,
                        size_t *len, char *err, size_t errlen)
{
    struct stat st;
    size_t got = 0;
    int fd;

    *buf = NULL;
    *len = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        sl_err(err, errlen, "cannot open %s: %s", path,
               errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        (unsigned long long)st.st_size > SL_STATE_MAX) {
        sl_err(err, errlen, "%s is not a regular file of a sane size", path);
        close(fd);
        return -1;
    }
    *buf = malloc((size_t)st.st_size + 1);
    if (*buf == NULL) {
        sl_err(err, errlen, "out of memory");
        close(fd);
        return -1;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, *buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    *len = got;
    return 0;
}

int sl_state_load(struct sl_store *memory, const struct sl_config *config,
                  struct sl_apps *apps, const char *path, size_t *restored,
                  char *err, size_t errlen)
{
    unsigned char *buf;
    size_t len;
    int rc;

    *restored = 0;
    if (sl_read_file(path, true, &buf, &len, err, errlen) != 0)
        return -1;
    if (buf == NULL)
        return 0;
    rc = sl_state_parse(buf, len, memory, config, apps, restored, err, errlen);
    free(buf);
    return rc == 0 ? 1 : -1;
}

/* ---- the journal ---- */

size_t sl_state_journal_record(unsigned char *buf, size_t cap,
                               const struct sl_state_clock *at, const char *upstream,
                               const char *app, const struct sl_mem_sent_slot *slots,
                               size_t n)
{
    size_t ulen = strlen(upstream), alen = strlen(app), len = SL_JOURNAL_FIXED;
    unsigned char *p = buf;

    if (ulen > 0xffff || alen > 0xffff || n > 0xffff)
        return 0;
    len += ulen + alen;
    for (size_t i = 0; i < n; i++) {
        size_t rl = strlen(slots[i].rule->name);
        if (rl > 0xffff || slots[i].key_len > UINT32_MAX)
            return 0;
        len += 2 + rl + 4 + slots[i].key_len + 8;
    }
    if (len > cap || len > SL_JOURNAL_MAX)
        return len > SL_JOURNAL_MAX ? 0 : len;
    sl_le(p, SL_JOURNAL_MAGIC, 4);
    sl_le(p + 4, len, 4);
    memcpy(p + 8, at->boot_id, 16);
    sl_le(p + 24, (uint64_t)at->store, 8);
    sl_le(p + 32, (uint64_t)at->wall, 8);
    sl_le(p + 40, n, 2);
    p += 42;
    sl_le(p, alen, 2);
    memcpy(p + 2, app, alen);
    p += 2 + alen;
    sl_le(p, ulen, 2);
    memcpy(p + 2, upstream, ulen);
    p += 2 + ulen;
    for (size_t i = 0; i < n; i++) {
        size_t rl = strlen(slots[i].rule->name);
        sl_le(p, rl, 2);
        memcpy(p + 2, slots[i].rule->name, rl);
        p += 2 + rl;
        sl_le(p, slots[i].key_len, 4);
        memcpy(p + 4, slots[i].key, slots[i].key_len);
        p += 4 + slots[i].key_len;
        sl_le(p, (uint64_t)slots[i].at, 8);
        p += 8;
    }
    sl_le(p, sl_fnv64(buf, len - 8), 8);
    return len;
}

struct sl_state {
    char *path;                   /* the snapshot (owned) */
    char *jpath, *jold;           /* the live journal, the one being folded */
    struct sl_store *memory;
    struct sl_apps *apps;
    unsigned char boot_id[16];    /* this boot's, when the store's clock is */
    pthread_mutex_t lock;         /* fd, and every append */
    int fd;                       /* the live journal, -1: none (logged) */
    /* STATE.journal.old may hold calls the snapshot does not: it goes
     * only once a snapshot is written after it stopped growing. */
    bool old_pending;
    _Atomic uint64_t failures;    /* appends that failed, since last asked */
    _Atomic int last_errno;
    _Atomic int64_t logged_at;    /* wall µs of the last failure logged */
};

#define SL_STATE_LOG_EVERY (60ll * SL_USEC_PER_SEC)

static void sl_state_failed(struct sl_state *st, int e)
{
    int64_t now = sl_clock_wall(), last = atomic_load(&st->logged_at);

    atomic_fetch_add(&st->failures, 1);
    atomic_store(&st->last_errno, e);
    if ((last == 0 || now - last >= SL_STATE_LOG_EVERY) &&
        atomic_compare_exchange_strong(&st->logged_at, &last, now))
        sl_error("state_file journal %s: cannot append (%s): calls are still "
                 "served, but a crash now would forget those sent since the last "
                 "state write (logged again at most once a minute)", st->jpath,
                 strerror(e));
}

/* The memory store's hook: one record per sent call, one write(2). */
static void sl_state_on_sent(void *arg, const struct sl_upstream_conf *up,
                             uint16_t app, const struct sl_mem_sent_slot *slots,
                             size_t n)
{
    struct sl_state *st = arg;
    unsigned char stack[2048], *buf = stack;
    struct sl_state_clock at;
    size_t len;
    int e = 0;

    memcpy(at.boot_id, st->boot_id, 16);
    at.store = sl_store_memory_now(st->memory);
    at.wall = sl_clock_wall();
    len = sl_state_journal_record(buf, sizeof(stack), &at, up->name,
                                  sl_apps_name(st->apps, app), slots, n);
    if (len > sizeof(stack)) {
        buf = malloc(len);
        if (buf != NULL)
            len = sl_state_journal_record(buf, len, &at, up->name,
                                          sl_apps_name(st->apps, app), slots, n);
    }
    if (buf == NULL || len == 0) {
        sl_state_failed(st, buf == NULL ? ENOMEM : E2BIG);
        goto out;
    }
    pthread_mutex_lock(&st->lock);
    if (st->fd < 0)
        e = EBADF;
    else if (sl_write_all(st->fd, buf, len) != 0)
        e = errno;
    pthread_mutex_unlock(&st->lock);
    if (e != 0)
        sl_state_failed(st, e);
out:
    if (buf != stack)
        free(buf);
}

/* A fresh, empty journal at st->jpath (replacing whatever is there, a link
 * included, without following it).  The fd, or -1 with ERR. */
static int sl_journal_create(struct sl_state *st, char *err, size_t errlen)
{
    char tmp[4096];
    int fd = sl_tmp_beside(st->path, ".jtmp.", tmp, sizeof(tmp), O_APPEND);

    if (fd < 0) {
        sl_err(err, errlen, "cannot create a journal beside %s: %s", st->path,
               strerror(errno));
        return -1;
    }
    if (rename(tmp, st->jpath) != 0) {
        sl_err(err, errlen, "cannot rename %s to %s: %s", tmp, st->jpath,
               strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    return fd;
}

/* Make writers move to a fresh journal, the current one becoming
 * STATE.journal.old.  Skipped (the journal keeps growing) when an old one
 * is still pending or a step fails; nothing is lost either way. */
static void sl_journal_rotate(struct sl_state *st)
{
    char tmp[4096], why[512];
    int fd, old;

    if (st->fd < 0) {
        /* None yet (it could not be made): try again. */
        fd = sl_journal_create(st, why, sizeof(why));
        if (fd >= 0) {
            pthread_mutex_lock(&st->lock);
            st->fd = fd;
            pthread_mutex_unlock(&st->lock);
        }
        return;
    }
    if (st->old_pending)
        return;
    fd = sl_tmp_beside(st->path, ".jtmp.", tmp, sizeof(tmp), O_APPEND);
    if (fd < 0)
        return;
    if (rename(st->jpath, st->jold) != 0 && errno != ENOENT) {
        close(fd);
        unlink(tmp);
        return;
    }
    if (rename(tmp, st->jpath) != 0) {
        /* Put the live one back where a loader looks for it. */
        rename(st->jold, st->jpath);
        close(fd);
        unlink(tmp);
        return;
    }
    pthread_mutex_lock(&st->lock);
    old = st->fd;
    st->fd = fd;
    pthread_mutex_unlock(&st->lock);
    close(old);
    st->old_pending = true;
}

int sl_state_write(struct sl_state *st, const struct sl_config *config, char *err,
                   size_t errlen)
{
    /* Rotate first: every record in the old journal is then of a call the
     * export below sees logged. */
    sl_journal_rotate(st);
    if (sl_state_save(st->memory, config, st->apps, st->path, err, errlen) != 0)
        return -1;
    if (st->old_pending && (unlink(st->jold) == 0 || errno == ENOENT))
        st->old_pending = false;
    return 0;
}

uint64_t sl_state_journal_failures(struct sl_state *st, int *last_errno)
{
    if (last_errno != NULL)
        *last_errno = atomic_load(&st->last_errno);
    return atomic_exchange(&st->failures, 0);
}

/* Remove temporary files a crash left beside PATH (PATH.tmp.XXXXXX and
 * PATH.jtmp.XXXXXX); never follows a link (unlink removes the link). */
static void sl_state_tidy(const char *path)
{
    char dir[4096], base[4096];
    DIR *d;
    struct dirent *de;
    size_t bl;

    snprintf(dir, sizeof(dir), "%s", path);
    snprintf(base, sizeof(base), "%s", path);
    d = opendir(dirname(dir));
    if (d == NULL)
        return;
    snprintf(base, sizeof(base), "%s", strrchr(path, '/') ? strrchr(path, '/') + 1 : path);
    bl = strlen(base);
    while ((de = readdir(d)) != NULL) {
        const char *rest = de->d_name + bl;
        if (strncmp(de->d_name, base, bl) != 0)
            continue;
        if ((strncmp(rest, ".tmp.", 5) == 0 && strlen(rest) == 11) ||
            (strncmp(rest, ".jtmp.", 6) == 0 && strlen(rest) == 12))
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

struct sl_state *sl_state_open(const char *path, struct sl_store *memory,
                               const struct sl_config *config, struct sl_apps *apps,
                               struct sl_state_stats *stats, char *err,
                               size_t errlen)
{
    struct sl_state *st = calloc(1, sizeof(*st));
    unsigned char *snap = NULL, *j1 = NULL, *j2 = NULL, *jall = NULL;
    size_t slen = 0, l1 = 0, l2 = 0;
    struct sl_state_clock now;
    bool ok = false;

    if (st == NULL || (st->path = strdup(path)) == NULL ||
        asprintf(&st->jpath, "%s.journal", path) < 0 ||
        asprintf(&st->jold, "%s.journal.old", path) < 0) {
        sl_err(err, errlen, "out of memory");
        goto out;
    }
    st->fd = -1;
    pthread_mutex_init(&st->lock, NULL);
    st->memory = memory;
    st->apps = apps;
    sl_state_tidy(path);
    if (sl_read_file(path, true, &snap, &slen, err, errlen) != 0 ||
        sl_read_file(st->jold, false, &j1, &l1, err, errlen) != 0 ||
        sl_read_file(st->jpath, false, &j2, &l2, err, errlen) != 0) {
        /* The path, not the contents: no file to move aside. */
        stats->unwritable = errno == ENOTDIR || errno == EACCES;
        goto out;
    }
    /* Records are self-delimiting: the two journals read as one. */
    jall = malloc(l1 + l2 + 1);
    if (jall == NULL) {
        sl_err(err, errlen, "out of memory");
        goto out;
    }
    if (l1 > 0)
        memcpy(jall, j1, l1);
    if (l2 > 0)
        memcpy(jall + l1, j2, l2);
    sl_state_clock_now(memory, &now);
    memcpy(st->boot_id, now.boot_id, 16);
    if (sl_state_apply(snap, slen, jall, l1 + l2, NULL, config, apps, &now, stats,
                       err, errlen) != 0 ||
        sl_state_apply(snap, slen, jall, l1 + l2, memory, config, apps, &now, stats,
                       err, errlen) != 0)
        goto out;
    stats->found = snap != NULL || j1 != NULL || j2 != NULL;
    /* Keep appending to the journal there is: its records may not be in
     * any snapshot yet.  The first sl_state_write() folds it. */
    st->fd = j2 != NULL ? open(st->jpath, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC)
                        : sl_journal_create(st, err, errlen);
    if (st->fd < 0) {
        /* Serving without a journal would forget, at the next crash, every
         * call sent since the last snapshot, and one that cannot be made
         * now (a missing or read-only directory) will not be made later:
         * refuse at start, where the operator is looking. A write that
         * fails later (a full disk) is logged and served around. */
        if (j2 != NULL)
            sl_err(err, errlen, "cannot open the journal %s: %s", st->jpath,
                   strerror(errno));
        stats->unwritable = true;
        goto out;
    }
    st->old_pending = j1 != NULL;
    sl_store_memory_on_sent(memory, sl_state_on_sent, st);
    ok = true;
out:
    free(snap);
    free(j1);
    free(j2);
    free(jall);
    if (!ok && st != NULL) {
        free(st->path);
        free(st->jpath);
        free(st->jold);
        free(st);
        st = NULL;
    }
    return st;
}

void sl_state_close(struct sl_state *st)
{
    if (st == NULL)
        return;
    sl_store_memory_on_sent(st->memory, NULL, NULL);
    if (st->fd >= 0)
        close(st->fd);
    pthread_mutex_destroy(&st->lock);
    free(st->path);
    free(st->jpath);
    free(st->jold);
    free(st);
}
