/*
 * sl_store_memory — the embedded store: exact limit state in this process.
 *
 * Layout: one table per upstream, each a chained hash of buckets keyed by
 * (rule index, per value), each guarded by the table's mutex.  A call only
 * ever touches its own upstream's rules, so the table lock is the whole
 * atomic step: look at every bucket, and only if all have room, record the
 * call in all of them.  Critical sections are a few hash lookups and ring
 * operations; workers on different upstreams never contend.
 *
 * Buckets: a rate bucket is a sliding log (sl_window), and for a leaky
 * bucket also a level (sl_bucket: the log then serves sync, settlement
 * and the state file); a call of cost n reserves, logs and gives back n
 * units (a lease slot keeps its cost and, once sent, its newest stamp, so
 * a settlement finds its entries); a concurrency bucket
 * is a counter of leases; the upstream's pause bucket holds the time until
 * which the provider (or an operator) asked us to stop.  A bucket is reclaimed by the
 * sweeper once its log is empty, no lease pins it and no pause runs, so
 * idle keys cost nothing.
 *
 * Memory bound: every byte of buckets and logs is accounted against
 * `memory_limit`.  When a *new* bucket would exceed it, the table is swept
 * at once; if there is still no room the call is answered UNAVAILABLE (the
 * proxy says 503) rather than evicting live state, because evicting a log
 * with calls in its window would let the quota overshoot.  Existing
 * buckets keep working.  So that one rule's keys cannot take the others'
 * room, a `per` rule holds at most its `max_keys` buckets (counted per
 * table and rule; a rule at its bound sweeps its table at most ten times
 * a second before refusing a new key), and `per` buckets may use only
 * memory_limit less a reserve (SL_MEM_RESERVE_DIV): a rule without `per`
 * has one bucket, and always finds room for it.  Keys are at most
 * SL_KEY_MAX bytes (sl_match shortens longer ones).
 *
 * Time: CLOCK_MONOTONIC, so wall-clock steps never shift a window.
 *
 * Reload (ops->adopt).  Tables are found through a layout (one per
 * configuration generation) that maps upstream indexes to tables.  A new
 * generation keeps the table of every upstream whose name survives, and in
 * it every bucket whose rule (name and kind) survives, renumbered and
 * rehashed under the table's lock; leases keep pointing at the same
 * buckets, so reservations and slots taken before the reload are given
 * back where they were taken.  A rate log whose limit fell keeps all its
 * entries: it is full until enough of them leave the window; a window that
 * changed keeps the entries logged, and one that shrank keeps a copy of
 * them aside for the old span (sl_mem_rewindow), so that growing it back
 * counts them again.  Buckets of removed rules
 * become orphans: nothing matches them again, leases on them are given
 * back normally, and the sweeper frees them.  A check matched under an
 * older generation is answered SL_VERDICT_STALE (match again); one from a
 * newer generation makes the store adopt that generation first.
 */
#include "sl_store.h"
#include "sl_assert.h"

#include "sl_bucket.h"
#include "sl_duration.h"
#include "sl_window.h"

#include "sl_apps.h"
#include "sl_time.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#define SL_MEM_INITIAL_SLOTS 64
#define SL_MEM_ORPHAN UINT32_MAX      /* a bucket whose rule was removed */
#define SL_MEM_SWEEP_SLOTS 4096   /* slots examined per table per tick, at most */
/* The timer's sweep goes once round a table in half its shortest window,
 * kept between these: an idle bucket is reclaimed within that plus its
 * window, and a live one is looked at a few times per window, not ten
 * times a second (with 10,000 buckets, that walk was most of sluice's
 * idle CPU). */
#define SL_MEM_SWEEP_ROUND_MIN (1 * SL_USEC_PER_SEC)
/* memory_limit / this is kept for buckets of rules without "per". */
#define SL_MEM_RESERVE_DIV 16
/* A rule at its max_keys sweeps its table at most this often. */
#define SL_MEM_FULL_SWEEP_EVERY (SL_USEC_PER_SEC / 10)
/* Slots a snapshot walks per hold of a table's lock. */
#define SL_MEM_SNAP_CHUNK 512
#define SL_MEM_SWEEP_ROUND_MAX (30 * SL_USEC_PER_SEC)

/* A rate log kept aside for a longer window than its rule's now. */
struct sl_mem_kept {
    struct sl_window win;
    int64_t span;                 /* the longest window it was logged for */
};

/* Calls in flight of one app, in a concurrency bucket. */
struct sl_mem_app_count {
    uint16_t app;
    uint32_t n;
};

struct sl_mem_bucket {
    struct sl_mem_bucket *next;   /* hash chain */
    uint32_t hash;
    uint32_t rule;                /* rule index within the upstream */
    uint64_t inflight;            /* concurrency: leases held */
    uint64_t reserved;            /* rate: admitted, not yet sent */
    uint64_t sent;                /* rate: calls logged, ever (for sync) */
    int64_t paused_until;         /* pause: calls wait until then */
    /* rate with sync: the provider's last report.  Room is at most
     * report_left - (sent - report_sent) - reserved until report_until. */
    bool report;                  /* a report is in force */
    int64_t report_left;          /* reported room, minus calls sent after
                                   * the reporting call and before the report */
    uint64_t report_sent;         /* `sent` when the report came */
    int64_t report_until;         /* one span after the reporting call */
    int64_t report_at;            /* when the report came (store clock) */
    uint64_t report_value;        /* the calls left, as reported */
    int64_t probe_at;             /* next call let through to learn more */
    unsigned alert_level;         /* alert thresholds reached, last looked */
    /* concurrency: who holds the `inflight` slots (owned, nin entries) */
    struct sl_mem_app_count *in_apps;
    uint32_t nin, capin;
    struct sl_window win;         /* rate: admission log */
    /* leaky bucket: its level, in units of LB_LEAK (the rule's leak when
     * it was last written: a reload may change the rule's) */
    struct sl_bucket lb;
    struct sl_leak lb_leak;
    /* rate: a copy of the log when a reload shrank the window, kept for
     * the longer one in case a reload grows it back (owned, NULL: none) */
    struct sl_mem_kept *kept;
    size_t key_len;
    char key[];                   /* per value, NUL-terminated */
};

struct sl_mem_table {
    pthread_mutex_t lock;
    const struct sl_upstream_conf *up;    /* NULL once its upstream is gone */
    struct sl_mem_table *all_next;        /* every table ever made */
    struct sl_mem_bucket **slots; /* owned */
    size_t nslots;                /* power of two */
    size_t count;
    size_t sweep_cursor;
    int64_t sweep_at;             /* when the timer's sweep last ran */
    double sweep_owed;            /* slots due to it, not yet examined */
    uint32_t rule_keys[SL_MAX_HITS];  /* buckets held per rule index */
    int64_t full_sweep_at;        /* when a rule at max_keys last swept */
    unsigned walking;             /* snapshots walking the slots: no grow */
    _Atomic unsigned waiters;     /* threads waiting for the lock */
    char pause_reason[96];        /* why the provider's pause was set */
    int64_t pause_set_at;         /* when the pause last changed (store clock) */
    int64_t pause_alerted_until;  /* the pause an alert was sent for */
};

/* Which table serves each upstream of one configuration generation.
 * Layouts are never freed before the store (a decision may still read an
 * old one); a reload adds one, a few pointers per upstream. */
struct sl_mem_layout {
    struct sl_mem_layout *prev;   /* older layouts */
    uint64_t generation;
    const struct sl_config *config;   /* referenced while current */
    size_t ntables;
    struct sl_mem_table *tables[];
};

struct sl_mem_store {
    struct sl_store base;
    _Atomic(struct sl_mem_layout *) layout;   /* the current one */
    pthread_mutex_t adopt_lock;   /* reloads, and name lookups in layouts */
    struct sl_mem_table *all;     /* every table, owned (all_next) */
    _Atomic uint64_t bytes;       /* accounted bytes of state */
    _Atomic size_t keys;
    uint64_t limit;               /* memory_limit */
    double share;                 /* of each limit this store may grant */
    sl_clock_fn clock;
    void *clock_arg;
    /* Told of every sent call, under its table's lock (the state file's
     * journal); NULL: nobody listens. */
    sl_mem_sent_fn on_sent;
    void *on_sent_arg;
};

/* One bucket a call holds something in: a reservation or a slot. */
struct sl_lease_slot {
    struct sl_mem_bucket *bucket;
    const struct sl_rule *rule;
    bool committed;               /* rate: logged (no longer reserved) */
    uint32_t cost;                /* rate: units reserved, then logged */
    bool settled;                 /* rate: its cost was settled ("settle") */
    int64_t last_stamp;           /* rate: its newest entry, once logged */
    bool app_held;                /* rate with shares: counted in in_apps */
};

/* What a call holds (pins its buckets against the sweeper). */
struct sl_lease {
    struct sl_mem_table *table;
    uint16_t app;                 /* the caller's app: tags its log entries */
    size_t n;
    struct sl_lease_slot slots[];
};

/* Take T's lock, counted among its waiters until it is ours (a snapshot's
 * walk lets waiters go first between its chunks). */
static void sl_mem_table_lock(struct sl_mem_table *t)
{
    atomic_fetch_add(&t->waiters, 1);
    pthread_mutex_lock(&t->lock);
    atomic_fetch_sub(&t->waiters, 1);
}

/*
 * Between two steps of a walk over T's slots (a snapshot, the state
 * file's export): give the lock up and take it again.  A mutex is not
 * fair: locking again at once would beat the calls woken by the unlock,
 * so those waiting go first (bounded).  Lock held on entry and return.
 */
static void sl_mem_walk_pause(struct sl_mem_table *t)
{
    pthread_mutex_unlock(&t->lock);
    for (int spin = 0; atomic_load(&t->waiters) > 0 && spin < 1000; spin++)
        sched_yield();
    sl_mem_table_lock(t);
}

static void sl_mem_sweep(struct sl_mem_store *s, struct sl_mem_table *t,
                         size_t max_slots, int64_t now);
static int64_t sl_mem_span(const struct sl_mem_store *s, const struct sl_rule *r,
                           int64_t now, int64_t *reset);
static struct sl_bucket *sl_mem_lb(struct sl_mem_bucket *b, const struct sl_rule *r);

int64_t sl_clock_monotonic(void *arg)
{
    (void)arg;
    return sl_time_mono_us();
}

static uint32_t sl_mem_hash(uint32_t rule, const char *key, size_t len)
{
    uint32_t h = 2166136261u ^ rule;

    h *= 16777619u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 16777619u;
    }
    return h;
}

static size_t sl_mem_bucket_bytes(const struct sl_mem_bucket *b)
{
    return sizeof(*b) + b->key_len + 1 + sl_window_bytes(&b->win) +
           b->capin * sizeof(*b->in_apps) +
           (b->kept != NULL ? sizeof(*b->kept) + sl_window_bytes(&b->kept->win) : 0);
}

static void sl_mem_kept_free(struct sl_mem_store *s, struct sl_mem_bucket *b)
{
    if (b->kept == NULL)
        return;
    atomic_fetch_sub(&s->bytes, sizeof(*b->kept) + sl_window_bytes(&b->kept->win));
    sl_window_free(&b->kept->win);
    free(b->kept);
    b->kept = NULL;
}

/* Does B still keep calls of a longer window than its rule's now?  Drops
 * those that left it.  Lock held. */
static bool sl_mem_kept_any(struct sl_mem_store *s, struct sl_mem_bucket *b,
                            int64_t now)
{
    if (b->kept == NULL)
        return false;
    sl_window_prune(&b->kept->win, b->kept->span, now);
    if (b->kept->win.count > 0)
        return true;
    sl_mem_kept_free(s, b);
    return false;
}

/* Where APP's count is in B's in_apps, or nin when it has none. */
static uint32_t sl_mem_in_app_index(const struct sl_mem_bucket *b, uint16_t app)
{
    uint32_t i;

    for (i = 0; i < b->nin && b->in_apps[i].app != app; i++)
        ;
    return i;
}

/* One more (DELTA 1) or one less (-1) call of APP in B: in flight
 * (concurrency; the split is best effort: a count that cannot grow leaves
 * the call out of it, never out of `inflight`), or admitted and not yet
 * sent (rate rules with shares).  Returns 0, or -1 when out of memory.
 * Lock held. */
static int sl_mem_in_app(struct sl_mem_store *s, struct sl_mem_bucket *b,
                         uint16_t app, int delta)
{
    uint32_t i = sl_mem_in_app_index(b, app);

    if (delta < 0) {
        if (i < b->nin && --b->in_apps[i].n == 0)
            b->in_apps[i] = b->in_apps[--b->nin];
        return 0;
    }
    if (i == b->nin) {
        if (b->nin == b->capin) {
            uint32_t cap = b->capin ? b->capin * 2 : 4;
            struct sl_mem_app_count *na = realloc(b->in_apps, cap * sizeof(*na));
            if (na == NULL)
                return -1;
            atomic_fetch_add(&s->bytes, (cap - b->capin) * sizeof(*na));
            b->in_apps = na;
            b->capin = cap;
        }
        b->in_apps[b->nin].app = app;
        b->in_apps[b->nin++].n = 0;
    }
    b->in_apps[i].n++;
    return 0;
}

static struct sl_mem_bucket *sl_mem_find(struct sl_mem_table *t, uint32_t rule,
                                         const char *key, size_t len,
                                         uint32_t hash)
{
    struct sl_mem_bucket *b = t->slots[hash & (t->nslots - 1)];

    for (; b != NULL; b = b->next)
        if (b->hash == hash && b->rule == rule && b->key_len == len &&
            memcmp(b->key, key, len) == 0)
            return b;
    return NULL;
}

static void sl_mem_grow(struct sl_mem_table *t)
{
    size_t n = t->nslots * 2;
    struct sl_mem_bucket **slots = calloc(n, sizeof(*slots));

    if (slots == NULL)
        return;  /* longer chains, still correct */
    for (size_t i = 0; i < t->nslots; i++) {
        struct sl_mem_bucket *b = t->slots[i], *next;
        for (; b != NULL; b = next) {
            next = b->next;
            b->next = slots[b->hash & (n - 1)];
            slots[b->hash & (n - 1)] = b;
        }
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = n;
    t->sweep_cursor = 0;
}

/* Create a bucket, or NULL when over the memory limit or out of memory. */
static struct sl_mem_bucket *sl_mem_create(struct sl_mem_store *s,
                                           struct sl_mem_table *t, uint32_t rule,
                                           const char *key, size_t len,
                                           uint32_t hash)
{
    struct sl_mem_bucket *b;
    size_t need = sizeof(*b) + len + 1;
    uint64_t limit = s->limit;

    /* A per rule's bucket leaves the reserve to rules without "per". */
    if (rule != SL_MEM_ORPHAN && t->up != NULL &&
        sl_upstream_rule(t->up, rule)->per_kind != SL_PER_NONE)
        limit -= s->limit / SL_MEM_RESERVE_DIV;
    if (atomic_load(&s->bytes) + need > limit)
        return NULL;
    b = calloc(1, need);
    if (b == NULL)
        return NULL;
    b->hash = hash;
    b->rule = rule;
    b->key_len = len;
    memcpy(b->key, key, len);
    b->key[len] = '\0';
    if (t->count + 1 > t->nslots && t->walking == 0)
        sl_mem_grow(t);  /* else longer chains until the walk ends */
    b->next = t->slots[hash & (t->nslots - 1)];
    t->slots[hash & (t->nslots - 1)] = b;
    t->count++;
    if (rule < SL_MAX_HITS)
        t->rule_keys[rule]++;
    atomic_fetch_add(&s->bytes, need);
    atomic_fetch_add(&s->keys, 1);
    return b;
}

/* Reclaim idle buckets among MAX_SLOTS slots from the cursor. Lock held. */
static void sl_mem_sweep(struct sl_mem_store *s, struct sl_mem_table *t,
                         size_t max_slots, int64_t now)
{
    for (size_t n = 0; n < max_slots && n < t->nslots; n++) {
        struct sl_mem_bucket **pp = &t->slots[t->sweep_cursor];

        while (*pp != NULL) {
            struct sl_mem_bucket *b = *pp;
            const struct sl_rule *r = b->rule == SL_MEM_ORPHAN
                                          ? NULL : sl_upstream_rule(t->up, b->rule);
            int idle = b->inflight == 0 && b->reserved == 0;

            if (r == NULL)
                ;  /* an orphan lives only as long as leases pin it */
            else if (r->kind == SL_RULE_PAUSE)
                idle = b->paused_until <= now;
            else if (idle && r->kind == SL_RULE_RATE) {
                sl_window_prune(&b->win, sl_mem_span(s, r, now, NULL), now);
                idle = b->win.count == 0 && (!b->report || b->report_until <= now) &&
                       !sl_mem_kept_any(s, b, now) &&
                       (!r->leaky || sl_bucket_level(sl_mem_lb(b, r), &r->leak, now) == 0);
            }
            if (!idle) {
                pp = &b->next;
                continue;
            }
            *pp = b->next;
            if (b->rule < SL_MAX_HITS)
                t->rule_keys[b->rule]--;
            atomic_fetch_sub(&s->bytes, sl_mem_bucket_bytes(b));
            atomic_fetch_sub(&s->keys, 1);
            if (b->kept != NULL) {
                sl_window_free(&b->kept->win);
                free(b->kept);
            }
            sl_window_free(&b->win);
            free(b->in_apps);
            free(b);
            t->count--;
        }
        t->sweep_cursor = (t->sweep_cursor + 1) & (t->nslots - 1);
    }
}

/*
 * Rule R of T holds max_keys buckets: is it still full once idle buckets
 * are reclaimed?  The sweep runs at most every SL_MEM_FULL_SWEEP_EVERY, so
 * a client that keeps offering new keys to a full rule does not walk the
 * table on every call.  Lock held.
 */
static bool sl_mem_rule_full(struct sl_mem_store *s, struct sl_mem_table *t,
                             const struct sl_rule *r, int64_t now)
{
    if (now - t->full_sweep_at >= SL_MEM_FULL_SWEEP_EVERY) {
        t->full_sweep_at = now;
        sl_mem_sweep(s, t, t->nslots, now);
    }
    return t->rule_keys[r->index] >= r->max_keys;
}

/* A limit scaled by the store's share (the local fallback of Redis). */
static uint64_t sl_mem_limit(const struct sl_mem_store *s, uint64_t limit)
{
    if (s->share >= 1.0)
        return limit;
    return (uint64_t)((double)limit * s->share);
}

/* Leaky rule R's capacity in level units, scaled by the store's share. */
static int64_t sl_mem_cap(const struct sl_mem_store *s, const struct sl_rule *r)
{
    if (s->share >= 1.0)
        return r->bucket_cap;
    return (int64_t)((double)r->bucket_cap * s->share);
}

/* B's level, in units of leaky rule R's leak (rescaled first when a reload
 * changed it).  Lock held. */
static struct sl_bucket *sl_mem_lb(struct sl_mem_bucket *b, const struct sl_rule *r)
{
    if (b->lb_leak.per_us != r->leak.per_us || b->lb_leak.n != r->leak.n) {
        if (b->lb_leak.per_us > 0)
            sl_bucket_rescale(&b->lb, &b->lb_leak, &r->leak);
        b->lb_leak = r->leak;
    }
    return &b->lb;
}

/* Leaky rule R's bucket B: until its level and reservations drain
 * (RateLimit's reset).  Lock held. */
static int64_t sl_mem_lb_reset(struct sl_mem_bucket *b, const struct sl_rule *r,
                               int64_t now)
{
    return sl_bucket_empty_in(sl_mem_lb(b, r), &r->leak, now) +
           (int64_t)b->reserved * (r->leak.per_us / r->leak.n);
}

/* Microseconds to add to the store's clock to get the wall clock (UTC µs
 * since the epoch): calendar periods are wall-clock periods.  A test clock
 * is taken as wall time itself. */
static int64_t sl_mem_wall_offset(const struct sl_mem_store *s)
{
    if (s->clock != sl_clock_monotonic)
        return 0;
    return sl_time_wall_us() - sl_time_mono_us();
}

/*
 * How far back rate rule R counts at NOW: its span (window + margin), or,
 * for a calendar window, back to its period's start minus the margin (a
 * call sent just before the boundary may reach the provider after it).
 * *RESET (may be NULL): for a calendar window, until the next boundary;
 * else -1.
 */
static int64_t sl_mem_span(const struct sl_mem_store *s, const struct sl_rule *r,
                           int64_t now, int64_t *reset)
{
    int64_t wall, start, end;

    if (!r->calendar) {
        if (reset != NULL)
            *reset = -1;
        return r->span_us;
    }
    wall = now + sl_mem_wall_offset(s);
    sl_calendar_period(&r->cal, wall, &start, &end);
    if (reset != NULL)
        *reset = end - wall;
    return wall - start + (r->span_us - r->window_us);
}

/*
 * Room the provider's last report leaves in B (rate rule R with sync), or
 * INT64_MAX when no report is in force.  Lock held.
 */
static int64_t sl_mem_report_room(struct sl_mem_bucket *b, int64_t now)
{
    if (!b->report)
        return INT64_MAX;
    if (now >= b->report_until) {
        b->report = false;  /* all it counted has left the provider's window */
        return INT64_MAX;
    }
    return b->report_left - (int64_t)(b->sent - b->report_sent) -
           (int64_t)b->reserved;
}

/*
 * What rate rule R's bucket B holds as the provider would count it: OWN
 * (sluice's log and reservations), or, while a report is in force, the
 * reported use plus what went through sluice since (the limit less the
 * report's room), whichever is more.  Lock held.
 */
static uint64_t sl_mem_counted(struct sl_mem_bucket *b, const struct sl_rule *r,
                               uint64_t own, int64_t now)
{
    int64_t room = sl_mem_report_room(b, now);
    int64_t theirs;

    if (room == INT64_MAX)
        return own;
    theirs = (int64_t)r->limit - room;
    return theirs > 0 && (uint64_t)theirs > own ? (uint64_t)theirs : own;
}

/*
 * Phase one for one rate bucket: microseconds until a call of COST units
 * fits (0: now).  SPAN and RESET are sl_mem_span()'s for R at NOW.
 * *PROBE is set when the call fits only as the provider-count probe.
 */
static int64_t sl_mem_rate_wait(const struct sl_mem_store *s,
                                struct sl_mem_bucket *b, const struct sl_rule *r,
                                int64_t span, int64_t reset, int64_t now,
                                uint64_t cost, bool *probe)
{
    uint64_t limit = sl_mem_limit(s, r->limit);
    int64_t wait, room;

    *probe = false;
    if (limit < cost)
        return r->span_us;  /* this instance has no share of it that fits */
    if (b == NULL)
        return 0;
    if (r->leaky)
        return sl_bucket_wait(sl_mem_lb(b, r), &r->leak, sl_mem_cap(s, r),
                              b->reserved, cost, now);
    if (r->calendar) {
        /* Full until the next boundary, whatever the calls' ages. */
        sl_window_prune(&b->win, span, now);
        return b->win.count + b->reserved + cost <= limit ? 0 : reset;
    }
    /* COST units fit iff logged + reserved + cost - 1 < limit. */
    wait = sl_window_wait_reserved(&b->win, limit, b->reserved + cost - 1, span, now);
    room = sl_mem_report_room(b, now);
    if (wait == 0 && room < (int64_t)cost) {
        /* Our own log has room, the provider's report has none. */
        if (r->sync_probe_us > 0 && now >= b->probe_at) {
            *probe = true;
            return 0;
        }
        wait = b->report_until - now;
        if (r->sync_probe_us > 0 && b->probe_at - now < wait)
            wait = b->probe_at - now;
    }
    return wait;
}

/* ---- shares ("apps") ---- */

const char *sl_share_denial_name(enum sl_share_denial d)
{
    return d == SL_SHARE_MAX ? "max" : d == SL_SHARE_RESERVED ? "reserved" : NULL;
}

/* A share's count scaled like the limit (the local fallback of Redis). */
static uint64_t sl_mem_share_scaled(const struct sl_mem_store *s,
                                    const struct sl_rule *r, uint64_t x)
{
    if (s->share >= 1.0 || r->limit == 0)
        return x;
    return (uint64_t)((double)x * (double)sl_mem_limit(s, r->limit) /
                      (double)r->limit);
}

/* APP's use of rate bucket B: logged in the window (pruned) plus
 * admitted, not yet sent (kept in in_apps for rules with shares).  B may
 * be NULL (nothing used).  Lock held. */
static uint64_t sl_mem_app_used(const struct sl_mem_bucket *b, uint16_t app)
{
    uint32_t i;

    if (b == NULL)
        return 0;
    i = sl_mem_in_app_index(b, app);
    return sl_window_tag_count(&b->win, app) + (i < b->nin ? b->in_apps[i].n : 0);
}

/* Keep per-app counts in B's window from now on (a rule with shares),
 * with the bytes they take counted.  Returns 0, or -1 when out of
 * memory.  Lock held. */
static int sl_mem_count_tags(struct sl_mem_store *s, struct sl_mem_bucket *b)
{
    size_t before = sl_window_bytes(&b->win);

    if (b->win.tc != NULL)
        return 0;
    if (sl_window_count_tags(&b->win) != 0)
        return -1;
    atomic_fetch_add(&s->bytes, sl_window_bytes(&b->win) - before);
    return 0;
}

/*
 * The reservations other apps than APP have not used in B: for each named
 * app with a reserve, reserve - used (when positive); for "*", the pooled
 * reserve of every app not named, less their use together.  APP's own
 * (its entry, or the pool when it is not named) is left out.
 */
struct sl_mem_reserve_class {
    uint16_t app;       /* a named app, or SL_APP_UNBOUND for the pool */
    uint64_t reserve;   /* scaled */
    uint64_t used;
    bool lend;          /* lent while used is 0 */
};

/* What class C keeps from other apps now. */
static uint64_t sl_mem_kept(const struct sl_mem_reserve_class *c)
{
    if (c->used >= c->reserve || (c->lend && c->used == 0))
        return 0;
    return c->reserve - c->used;
}

static size_t sl_mem_reserve_classes(const struct sl_mem_store *s,
                                     const struct sl_mem_bucket *b,
                                     const struct sl_rule *r, uint16_t app,
                                     bool named, struct sl_mem_reserve_class *out)
{
    size_t n = 0;
    uint64_t named_used = 0;

    for (size_t i = 0; i < r->nshares; i++) {
        const struct sl_share *sh = &r->shares[i];
        if (sh == r->share_other)
            continue;
        uint64_t u = sl_mem_app_used(b, sh->app_id);
        named_used += u;
        if (sh->reserve == 0 || sh->app_id == app)
            continue;
        out[n].app = sh->app_id;
        out[n].reserve = sl_mem_share_scaled(s, r, sh->reserve);
        out[n].used = u;
        out[n].lend = sh->lend;
        n++;
    }
    if (named && r->share_other != NULL && r->share_other->reserve > 0) {
        uint64_t all = b != NULL ? (uint64_t)b->win.count + b->reserved : 0;
        out[n].app = SL_APP_UNBOUND;
        out[n].reserve = sl_mem_share_scaled(s, r, r->share_other->reserve);
        out[n].used = all > named_used ? all - named_used : 0;
        out[n].lend = r->share_other->lend;
        n++;
    }
    return n;
}

static uint64_t sl_mem_unused(const struct sl_mem_reserve_class *c, size_t n)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < n; i++)
        sum += sl_mem_kept(&c[i]);
    return sum;
}

/* The class an entry tagged TAG counts in (index into C), or -1. */
static ssize_t sl_mem_class_of(const struct sl_rule *r,
                               const struct sl_mem_reserve_class *c, size_t n,
                               uint16_t tag)
{
    bool named = false;

    for (size_t i = 0; i < n; i++)
        if (c[i].app == tag)
            return (ssize_t)i;
    (void)sl_rule_share(r, tag, &named);
    if (!named && n > 0 && c[n - 1].app == SL_APP_UNBOUND)
        return (ssize_t)(n - 1);
    return -1;
}

/*
 * Phase one for a rate bucket with shares whose limit has room: the wait
 * until the call of app APP also fits its share (0: now).  *WHY says which
 * part denied it; *LEFT (when it fits) the calls the app has left after
 * this one.  SPAN and RESET as sl_mem_rate_wait's.  Lock held; B may be
 * NULL (nothing used yet), else it keeps per-app counts
 * (sl_mem_count_tags).
 */
static int64_t sl_mem_share_wait(const struct sl_mem_store *s,
                                 struct sl_mem_bucket *b, const struct sl_rule *r,
                                 uint16_t app, int64_t span, int64_t reset,
                                 int64_t now, enum sl_share_denial *why,
                                 uint64_t *left)
{
    struct sl_mem_reserve_class cls[258];
    uint64_t limit = sl_mem_limit(s, r->limit), max, used, all, unused;
    bool named = false;
    const struct sl_share *sh = sl_rule_share(r, app, &named);
    size_t ncls;

    *why = SL_SHARE_NONE;
    max = sh != NULL ? sl_mem_share_scaled(s, r, sh->max) : limit;
    if (b != NULL && b->win.tc == NULL) {
        *why = SL_SHARE_RESERVED;
        return SL_USEC_PER_SEC;  /* out of memory: cannot tell; deny briefly */
    }
    if (b != NULL)
        sl_window_prune(&b->win, span, now);
    used = sl_mem_app_used(b, app);
    all = b != NULL ? (uint64_t)b->win.count + b->reserved : 0;
    if (used + 1 > max) {
        /* Room when enough of the app's own calls leave the window: the
         * (used - max)-th oldest of them (held ones are not logged yet). */
        uint64_t k = used - max;
        int64_t t = b != NULL ? sl_window_tag_time(&b->win, app, (uint32_t)k)
                              : INT64_MIN;
        *why = SL_SHARE_MAX;
        if (r->calendar)
            return reset;
        return t == INT64_MIN ? span : (t + span - now > 0 ? t + span - now : 1);
    }
    ncls = sl_mem_reserve_classes(s, b, r, app, named, cls);
    unused = sl_mem_unused(cls, ncls);
    if (all + 1 + unused > limit) {
        /* Walk the log from its oldest entry: each one leaving frees a
         * call, unless it was part of a reservation still unused then. */
        *why = SL_SHARE_RESERVED;
        if (r->calendar)
            return reset;
        for (uint32_t i = 0; b != NULL && i < b->win.count; i++) {
            uint32_t j = (b->win.head + i) % b->win.cap;
            ssize_t c = sl_mem_class_of(r, cls, ncls, b->win.tags[j]);
            all--;
            if (c >= 0 && cls[c].used > 0) {
                uint64_t before = sl_mem_kept(&cls[c]);
                cls[c].used--;
                unused = unused - before + sl_mem_kept(&cls[c]);
            }
            if (all + 1 + unused <= limit) {
                int64_t t = b->win.times[j] + span - now;
                return t > 0 ? t : 1;
            }
        }
        return span;  /* held calls must be sent (logged) and leave first */
    }
    *left = max - used - 1;
    if (limit - all - 1 - unused < *left)
        *left = limit - all - 1 - unused;
    return 0;
}

/* Calls left in rate bucket B after this one (for RateLimit headers). */
static uint64_t sl_mem_rate_remaining(const struct sl_mem_store *s,
                                      struct sl_mem_bucket *b,
                                      const struct sl_rule *r, int64_t now)
{
    uint64_t limit = sl_mem_limit(s, r->limit);
    uint64_t used = b->win.count + b->reserved;
    int64_t room = sl_mem_report_room(b, now);
    uint64_t left = used >= limit ? 0 : limit - used;

    if (r->leaky)
        return sl_bucket_room(sl_mem_lb(b, r), &r->leak, sl_mem_cap(s, r),
                              b->reserved, now);

    if (room < (int64_t)left)
        left = room > 0 ? (uint64_t)room : 0;
    return left;
}

/* Give back slot I of LEASE (reservation or concurrency).  Lock held. */
static void sl_mem_unhold(struct sl_lease *lease, size_t i)
{
    struct sl_lease_slot *sl = &lease->slots[i];

    if (sl->rule->kind == SL_RULE_CONCURRENCY) {
        SL_ASSERT(sl->bucket->inflight > 0);
        sl->bucket->inflight--;
        sl_mem_in_app(NULL, sl->bucket, lease->app, -1);
    } else if (!sl->committed) {
        SL_ASSERT(sl->bucket->reserved >= sl->cost);
        sl->bucket->reserved -= sl->cost;
        if (sl->app_held)
            sl_mem_in_app(NULL, sl->bucket, lease->app, -1);
    }
}


/* ---- generations ---- */

static struct sl_mem_table *sl_mem_table_new(struct sl_mem_store *s,
                                             const struct sl_upstream_conf *up)
{
    struct sl_mem_table *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return NULL;
    t->slots = calloc(SL_MEM_INITIAL_SLOTS, sizeof(*t->slots));
    if (t->slots == NULL) {
        free(t);
        return NULL;
    }
    t->nslots = SL_MEM_INITIAL_SLOTS;
    t->up = up;
    t->sweep_at = s->clock(s->clock_arg);
    pthread_mutex_init(&t->lock, NULL);
    t->all_next = s->all;
    s->all = t;
    return t;
}

/*
 * Rate bucket B's window goes from span OLD to NEW (a reload).  A reload
 * never grants room: calls are remembered for the longest window their
 * rule has had since they were sent.  Shrunk: the log is copied aside
 * (kept) for the old span, while the rule counts only its new window;
 * grown: what was kept aside and is inside the new window comes back into
 * the log.  Out of memory, nothing is kept (a warning in docs/operations.md).
 * Lock held.
 */
static void sl_mem_rewindow(struct sl_mem_store *s, struct sl_mem_bucket *b,
                            int64_t old, int64_t new, uint64_t limit, int64_t now)
{
    size_t before;

    if (new < old) {
        sl_window_prune(&b->win, old, now);
        if (b->kept == NULL && b->win.count > 0) {
            b->kept = calloc(1, sizeof(*b->kept));
            if (b->kept == NULL)
                return;
            atomic_fetch_add(&s->bytes, sizeof(*b->kept));
        }
        if (b->kept == NULL)
            return;
        before = sl_window_bytes(&b->kept->win);
        (void)sl_window_merge(&b->kept->win, &b->win, INT64_MIN, UINT32_MAX);
        atomic_fetch_add(&s->bytes, sl_window_bytes(&b->kept->win) - before);
        if (old > b->kept->span)
            b->kept->span = old;
    } else if (new > old && sl_mem_kept_any(s, b, now)) {
        before = sl_window_bytes(&b->win);
        (void)sl_window_merge(&b->win, &b->kept->win, now - new, limit);
        atomic_fetch_add(&s->bytes, sl_window_bytes(&b->win) - before);
        if (new >= b->kept->span)
            sl_mem_kept_free(s, b);
    }
}

/*
 * Renumber T's buckets for NU (the same upstream in the new generation;
 * NULL: it is gone).  Lock held; T->up is still the old upstream.
 */
static void sl_mem_remap(struct sl_mem_store *s, struct sl_mem_table *t,
                         const struct sl_upstream_conf *nu)
{
    const struct sl_upstream_conf *ou = t->up;
    struct sl_mem_bucket *list = NULL, *b, *next;
    int64_t now = s->clock(s->clock_arg);

    for (size_t k = 0; k < t->nslots; k++) {
        for (b = t->slots[k]; b != NULL; b = next) {
            next = b->next;
            b->next = list;
            list = b;
        }
        t->slots[k] = NULL;
    }
    memset(t->rule_keys, 0, sizeof(t->rule_keys));
    for (b = list; b != NULL; b = next) {
        const struct sl_rule *nr = NULL;
        next = b->next;
        if (b->rule != SL_MEM_ORPHAN && ou != NULL && nu != NULL)
            nr = sl_upstream_rule_like(nu, sl_upstream_rule(ou, b->rule));
        if (nr != NULL && nr->kind == SL_RULE_RATE)
            sl_mem_rewindow(s, b, sl_mem_span(s, sl_upstream_rule(ou, b->rule), now, NULL),
                            sl_mem_span(s, nr, now, NULL), nr->limit, now);
        b->rule = nr != NULL ? (uint32_t)nr->index : SL_MEM_ORPHAN;
        /* A rate log keeps every entry, even past a lowered limit: the
         * window is full until enough of them age out, and the operator
         * sees what the provider counts. */
        if (nr == NULL || nr->kind != SL_RULE_RATE)
            b->report = false;
        b->alert_level = 0;
        if (b->rule < SL_MAX_HITS)
            t->rule_keys[b->rule]++;
        b->hash = sl_mem_hash(b->rule, b->key, b->key_len);
        b->next = t->slots[b->hash & (t->nslots - 1)];
        t->slots[b->hash & (t->nslots - 1)] = b;
    }
    t->up = nu;
    t->sweep_cursor = 0;
    if (nu == NULL)
        t->pause_reason[0] = '\0';
}

/* Serve CONFIG (a newer generation than the current layout's).  0 or -1
 * (out of memory: the old layout stays). */
static int sl_mem_adopt_locked(struct sl_mem_store *s, const struct sl_config *config)
{
    struct sl_mem_layout *old = atomic_load(&s->layout), *nl;
    bool *kept;

    if (old != NULL && config->generation <= old->generation)
        return 0;
    nl = calloc(1, sizeof(*nl) + config->nupstreams * sizeof(nl->tables[0]));
    kept = calloc(old != NULL ? old->ntables + 1 : 1, sizeof(*kept));
    if (nl == NULL || kept == NULL) {
        free(nl);
        free(kept);
        return -1;
    }
    nl->generation = config->generation;
    nl->ntables = config->nupstreams;
    for (size_t i = 0; i < config->nupstreams; i++) {
        const struct sl_upstream_conf *nu = &config->upstreams[i];
        const struct sl_upstream_conf *ou =
            old != NULL ? sl_config_upstream(old->config, nu->name) : NULL;
        if (ou != NULL) {
            nl->tables[i] = old->tables[ou->index];
            kept[ou->index] = true;
        } else if ((nl->tables[i] = sl_mem_table_new(s, nu)) == NULL) {
            /* Tables made so far stay on s->all, empty; freed at the end. */
            free(nl);
            free(kept);
            return -1;
        }
    }
    for (size_t i = 0; i < config->nupstreams; i++) {
        struct sl_mem_table *t = nl->tables[i];
        sl_mem_table_lock(t);
        if (t->up != &config->upstreams[i])
            sl_mem_remap(s, t, &config->upstreams[i]);
        pthread_mutex_unlock(&t->lock);
    }
    for (size_t i = 0; old != NULL && i < old->ntables; i++) {
        struct sl_mem_table *t = old->tables[i];
        if (kept[i])
            continue;
        sl_mem_table_lock(t);
        sl_mem_remap(s, t, NULL);
        pthread_mutex_unlock(&t->lock);
    }
    free(kept);
    nl->config = sl_config_ref(config);
    nl->prev = old;
    atomic_store(&s->layout, nl);
    if (old != NULL) {
        sl_config_unref(old->config);
        old->config = NULL;
    }
    return 0;
}

static int sl_mem_adopt(struct sl_store *store, const struct sl_config *config)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    int rc;

    pthread_mutex_lock(&s->adopt_lock);
    rc = sl_mem_adopt_locked(s, config);
    pthread_mutex_unlock(&s->adopt_lock);
    return rc;
}

/*
 * Lock and return the table serving UP, whose generation must be the
 * store's (a newer one is adopted first).  NULL: UP belongs to an older
 * generation (the call must be matched again).
 */
static struct sl_mem_table *sl_mem_lock(struct sl_mem_store *s,
                                        const struct sl_upstream_conf *up)
{
    uint64_t g = up->config->generation;

    for (;;) {
        struct sl_mem_layout *l = atomic_load(&s->layout);
        struct sl_mem_table *t;

        if (g > l->generation) {
            if (sl_mem_adopt(&s->base, up->config) != 0)
                return NULL;
            continue;
        }
        if (g < l->generation || up->index >= l->ntables)
            return NULL;
        t = l->tables[up->index];
        sl_mem_table_lock(t);
        if (t->up == up)
            return t;
        pthread_mutex_unlock(&t->lock);
        /* Remapped for a newer generation since the layout was read. */
        if (atomic_load(&s->layout) == l)
            return NULL;
    }
}

/*
 * The same for a call of any generation: the table serving UP's name now,
 * locked, and in *RULE the rule there like *RULE.  NULL when the upstream
 * or the rule is gone.
 */
static struct sl_mem_table *sl_mem_lock_current(struct sl_mem_store *s,
                                                const struct sl_upstream_conf *up,
                                                const struct sl_rule **rule)
{
    struct sl_mem_table *t = sl_mem_lock(s, up);
    const struct sl_upstream_conf *nu;
    const struct sl_rule *nr;
    struct sl_mem_layout *l;

    if (t != NULL)
        return t;
    pthread_mutex_lock(&s->adopt_lock);
    l = atomic_load(&s->layout);
    nu = sl_config_upstream(l->config, up->name);
    nr = nu != NULL ? sl_upstream_rule_like(nu, *rule) : NULL;
    if (nr != NULL) {
        t = l->tables[nu->index];
        sl_mem_table_lock(t);
        *rule = nr;
    }
    pthread_mutex_unlock(&s->adopt_lock);
    return t;
}

static int sl_mem_decide(struct sl_store *store, const struct sl_check *c,
                         sl_decide_cb cb, void *arg)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    struct sl_mem_table *t;
    struct sl_mem_bucket *bk[SL_MAX_HITS];
    uint32_t hashes[SL_MAX_HITS];
    bool probe[SL_MAX_HITS];
    bool skip[SL_MAX_HITS];       /* a shadow rule that would deny: untouched */
    int64_t reset[SL_MAX_HITS];   /* rate: sl_mem_span()'s RESET (calendar) */
    enum sl_share_denial why[SL_MAX_HITS];  /* rate with shares */
    uint64_t share_left[SL_MAX_HITS];       /* ... the app's calls left */
    struct sl_decision d = {.verdict = SL_VERDICT_ALLOW};
    struct sl_lease *lease = NULL;
    const struct sl_rule *full = NULL;
    size_t nheld = 0;
    int64_t now;

    t = sl_mem_lock(s, c->upstream);
    if (t == NULL) {
        d.verdict = SL_VERDICT_STALE;
        d.reason = "the configuration was reloaded";
        cb(arg, &d, NULL);
        return 0;
    }
    now = s->clock(s->clock_arg);

    /* Near the memory bound: reclaim idle buckets of this table first (never
     * during the phases below, which hold pointers to buckets). */
    if (atomic_load(&s->bytes) + c->nhits * 512 + s->limit / SL_MEM_RESERVE_DIV > s->limit)
        sl_mem_sweep(s, t, t->nslots, now);

    /* Phase one: look, write nothing. */
    for (size_t i = 0; i < c->nhits; i++) {
        const struct sl_rule *r = c->hits[i].rule;
        int64_t wait = 0;

        probe[i] = false;
        skip[i] = false;
        hashes[i] = sl_mem_hash((uint32_t)r->index, c->hits[i].key,
                                c->hits[i].key_len);
        bk[i] = sl_mem_find(t, (uint32_t)r->index, c->hits[i].key,
                            c->hits[i].key_len, hashes[i]);
        if (bk[i] == NULL && r->per_kind != SL_PER_NONE &&
            t->rule_keys[r->index] >= r->max_keys && sl_mem_rule_full(s, t, r, now)) {
            full = r;
            goto unavailable;
        }
        if (r->kind == SL_RULE_PAUSE) {
            if (bk[i] != NULL && bk[i]->paused_until > now)
                wait = bk[i]->paused_until - now;
        } else if (r->kind == SL_RULE_CONCURRENCY) {
            uint64_t limit = sl_mem_limit(s, r->limit);
            nheld++;
            /* Nobody can say when a slot frees; one second is the hint. */
            if (limit == 0 || (bk[i] != NULL && bk[i]->inflight >= limit))
                wait = SL_USEC_PER_SEC;
        } else {
            nheld++;
            /* A calendar rule's period, found once per decision. */
            int64_t span = sl_mem_span(s, r, now, &reset[i]);
            wait = sl_mem_rate_wait(s, bk[i], r, span, reset[i], now,
                                    sl_hit_cost(&c->hits[i]), &probe[i]);
            why[i] = SL_SHARE_NONE;
            share_left[i] = UINT64_MAX;
            if (wait == 0 && r->nshares > 0) {
                if (bk[i] != NULL)
                    (void)sl_mem_count_tags(s, bk[i]);  /* else denied briefly */
                wait = sl_mem_share_wait(s, bk[i], r, c->app, span, reset[i], now,
                                         &why[i], &share_left[i]);
            }
        }
        if (wait > 0 && r->shadow) {
            /* Would deny: say so, take nothing from it, deny nothing. */
            skip[i] = true;
            nheld--;
            d.shadow_mask |= UINT64_C(1) << r->index;
            if (d.shadow == NULL || wait > d.shadow_wait_us) {
                d.shadow = r;
                d.shadow_wait_us = wait;
            }
            continue;
        }
        if (wait > 0 && (d.verdict != SL_VERDICT_DENY || wait > d.wait_us)) {
            d.verdict = SL_VERDICT_DENY;
            d.rule = r;
            d.wait_us = wait;
            d.remaining = 0;
            d.reset_us = wait;
            d.share = r->kind == SL_RULE_RATE ? why[i] : SL_SHARE_NONE;
            /* Refused by the provider's word rather than sluice's log. */
            d.by_report = r->kind == SL_RULE_RATE && bk[i] != NULL && bk[i]->report &&
                          sl_mem_report_room(bk[i], now) <
                              (int64_t)sl_hit_cost(&c->hits[i]);
            if (d.by_report) {
                d.report_value = (int64_t)bk[i]->report_value;
                d.report_age_us = now - bk[i]->report_at;
                d.report_sent_since = bk[i]->sent - bk[i]->report_sent;
            }
        }
    }
    if (d.verdict == SL_VERDICT_DENY)
        d.shadow = NULL;  /* denied anyway: nothing to report */
    if (d.verdict == SL_VERDICT_DENY)
        d.shadow_mask = 0;
    if (d.verdict == SL_VERDICT_DENY || nheld == 0)
        goto out;

    lease = malloc(sizeof(*lease) + nheld * sizeof(lease->slots[0]));
    if (lease == NULL)
        goto unavailable;
    lease->table = t;
    lease->app = c->app;
    lease->n = 0;

    /* Phase two: every rule has room; hold it in all of them. */
    for (size_t i = 0; i < c->nhits; i++) {
        const struct sl_rule *r = c->hits[i].rule;
        struct sl_lease_slot *sl;

        if (r->kind == SL_RULE_PAUSE || skip[i])
            continue;
        if (bk[i] == NULL) {
            bk[i] = sl_mem_create(s, t, (uint32_t)r->index, c->hits[i].key,
                                  c->hits[i].key_len, hashes[i]);
            if (bk[i] == NULL)
                goto rollback;
        }
        sl = &lease->slots[lease->n++];
        sl->bucket = bk[i];
        sl->rule = r;
        sl->committed = false;
        sl->app_held = false;
        sl->settled = false;
        sl->last_stamp = INT64_MIN;
        sl->cost = (uint32_t)sl_hit_cost(&c->hits[i]);
        if (r->kind == SL_RULE_CONCURRENCY) {
            bk[i]->inflight++;
            sl_mem_in_app(s, bk[i], c->app, 1);
        } else {
            size_t before = sl_window_bytes(&bk[i]->win);
            /* The log's slot for this call is taken now, so that logging
             * it when it is sent cannot fail. */
            if (sl_window_ensure(&bk[i]->win, r->limit,
                                 (uint64_t)bk[i]->win.count + bk[i]->reserved + sl->cost) != 0) {
                lease->n--;
                goto rollback;
            }
            atomic_fetch_add(&s->bytes, sl_window_bytes(&bk[i]->win) - before);
            if (r->nshares > 0) {
                /* The app's part of this bucket: exact, or no call. */
                if (sl_mem_count_tags(s, bk[i]) != 0 ||
                    sl_mem_in_app(s, bk[i], c->app, 1) != 0) {
                    lease->n--;
                    goto rollback;
                }
                sl->app_held = true;
            }
            bk[i]->reserved += sl->cost;
            if (probe[i])
                bk[i]->probe_at = now + r->sync_probe_us;
        }
    }

    /* Report the rate rule with the least room left. */
    for (size_t i = 0; i < c->nhits; i++) {
        const struct sl_rule *r = c->hits[i].rule;
        uint64_t rem;

        /* A shadow rule is not what a client runs into. */
        if (r->kind != SL_RULE_RATE || r->shadow)
            continue;
        rem = sl_mem_rate_remaining(s, bk[i], r, now);
        if (share_left[i] < rem)
            rem = share_left[i];  /* what this app has left */
        if (d.rule == NULL || rem < d.remaining) {
            d.rule = r;
            d.remaining = rem;
            if (r->calendar) {
                d.reset_us = reset[i];
            } else if (r->leaky) {
                d.reset_us = sl_mem_lb_reset(bk[i], r, now);
            } else {
                d.reset_us = sl_window_next_expiry(&bk[i]->win, r->span_us, now);
                if (d.reset_us == 0 && bk[i]->reserved > 0)
                    d.reset_us = r->span_us;
            }
        }
    }
    goto out;

rollback:
    for (size_t i = 0; i < lease->n; i++)
        sl_mem_unhold(lease, i);
unavailable:
    free(lease);
    lease = NULL;
    d.verdict = SL_VERDICT_UNAVAILABLE;
    d.rule = full;
    d.reason = full != NULL
                   ? "this rule holds max_keys keys with calls in their window; a "
                     "new key gets room when one empties (raise max_keys)"
                   : "the memory store is full (raise memory_limit)";
out:
    pthread_mutex_unlock(&t->lock);
    cb(arg, &d, lease);
    return 0;
}

/*
 * Log one call in rate bucket B at NOW (room was checked).  Returns the
 * stamp it got, or INT64_MIN when nothing was logged.  Stamps in one log
 * are strictly increasing (a call in the same microsecond as the last gets
 * the next one, 1 µs stricter), so a stamp names one call: the state
 * file's journal is matched against the snapshot by it.  Lock held.
 */
static int64_t sl_mem_log(struct sl_mem_store *s, struct sl_mem_bucket *b,
                          const struct sl_rule *r, int64_t now, uint16_t app)
{
    size_t before = sl_window_bytes(&b->win);
    int64_t newest;

    sl_window_prune(&b->win, sl_mem_span(s, r, now, NULL), now);
    newest = sl_window_newest(&b->win);
    if (newest >= now)
        now = newest + 1;
    /* A full log keeps its newest entries (sl_window_record_tag). */
    if (r->limit == 0 || sl_window_record_tag(&b->win, r->limit, now, app) != 0)
        return INT64_MIN;
    b->sent++;
    atomic_fetch_add(&s->bytes, sl_window_bytes(&b->win) - before);
    return now;
}

/* Log N sends of APP in bucket B of rule R at NOW (a call of cost n is n
 * entries, each its own stamp, a microsecond apart), adding each to the
 * journal's batch SENT (*NSENT of SL_MAX_HITS), which is handed over when
 * full; the caller hands over the rest.  Under T's lock.  Returns the
 * last stamp written, or INT64_MIN when none was (a full store). */
static int64_t sl_mem_log_sends(struct sl_mem_store *s, struct sl_mem_table *t,
                                struct sl_mem_bucket *b, const struct sl_rule *r,
                                int64_t now, uint16_t app, uint64_t n,
                                struct sl_mem_sent_slot *sent, size_t *nsent)
{
    int64_t last = INT64_MIN;

    for (uint64_t k = 0; k < n; k++) {
        int64_t at;
        if (*nsent == SL_MAX_HITS) {
            if (s->on_sent != NULL)
                s->on_sent(s->on_sent_arg, t->up, app, sent, *nsent);
            *nsent = 0;
        }
        at = sl_mem_log(s, b, r, now, app);
        if (at == INT64_MIN)
            break;
        last = at;
        sent[*nsent].at = at;
        sent[*nsent].rule = r;
        sent[*nsent].key = b->key;
        sent[(*nsent)++].key_len = b->key_len;
    }
    return last;
}

static void sl_mem_commit(struct sl_store *store, struct sl_lease *lease)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    struct sl_mem_table *t = lease->table;
    struct sl_mem_sent_slot sent[SL_MAX_HITS];
    size_t nsent = 0;
    int64_t now, last;

    sl_mem_table_lock(t);
    now = s->clock(s->clock_arg);
    for (size_t i = 0; i < lease->n; i++) {
        struct sl_lease_slot *sl = &lease->slots[i];
        const struct sl_rule *r;
        if (sl->rule->kind != SL_RULE_RATE || sl->committed)
            continue;
        sl->committed = true;
        sl->bucket->reserved -= sl->cost;
        if (sl->app_held)
            sl_mem_in_app(NULL, sl->bucket, lease->app, -1);
        /* Logged under the rule as it is now (a reload may have changed
         * its limit); a removed rule's bucket logs nothing. */
        if (sl->bucket->rule == SL_MEM_ORPHAN || t->up == NULL)
            continue;
        r = sl_upstream_rule(t->up, sl->bucket->rule);
        if (r->leaky)
            sl_bucket_add(sl_mem_lb(sl->bucket, r), &r->leak, sl->cost, now);
        last = sl_mem_log_sends(s, t, sl->bucket, r, now, lease->app, sl->cost,
                                sent, &nsent);
        if (last != INT64_MIN)
            sl->last_stamp = last;
    }
    /* Still under the lock: a snapshot that does not hold this call yet
     * is taken after the journal has it (sl_state.c's rotation relies on
     * it). */
    if (s->on_sent != NULL && nsent > 0)
        s->on_sent(s->on_sent_arg, t->up, lease->app, sent, nsent);
    pthread_mutex_unlock(&t->lock);
}

/* Leaky rule R's level replayed from W's log of sends (one drain time of
 * them: what is older has drained out), as it is at NOW. */
static int64_t sl_mem_replay(const struct sl_window *w, const struct sl_rule *r,
                             int64_t now)
{
    struct sl_bucket x = {0, 0};

    for (uint32_t i = 0; i < w->count; i++) {
        int64_t at = w->times[(w->head + i) % w->cap];
        if (i == 0)
            x.at = at;
        sl_bucket_add(&x, &r->leak, 1, at);
    }
    return sl_bucket_level(&x, &r->leak, now);
}

/*
 * The call's cost in one rule becomes ACTUAL (see struct sl_store_ops).
 * Charged: logged now, as a send would be.  Refunded: the call's own
 * newest entries leave the log (its stamps are consecutive, the newest
 * LAST_STAMP); a bucket's level drops by what the log's replay loses with
 * them, which is never more than the level owes them (a level raised by a
 * provider's report empties less often than the log's replay).  A refund
 * is not journaled: after a restart the state file still has the entries
 * (the safe side).
 */
static int sl_mem_settle(struct sl_store *store, struct sl_lease *lease,
                         const struct sl_hit *hit, uint64_t actual,
                         sl_store_done_cb done, void *arg)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    struct sl_mem_table *t = lease->table;
    struct sl_mem_sent_slot sent[SL_MAX_HITS];
    size_t nsent = 0;
    struct sl_lease_slot *sl = NULL;
    const struct sl_rule *r;
    int64_t now;

    sl_mem_table_lock(t);
    for (size_t i = 0; i < lease->n && sl == NULL; i++)
        if (lease->slots[i].rule == hit->rule &&
            lease->slots[i].bucket->key_len == hit->key_len &&
            memcmp(lease->slots[i].bucket->key, hit->key, hit->key_len) == 0)
            sl = &lease->slots[i];
    if (sl == NULL || !sl->committed || sl->settled || actual == sl->cost ||
        sl->last_stamp == INT64_MIN || sl->bucket->rule == SL_MEM_ORPHAN || t->up == NULL)
        goto out;
    sl->settled = true;
    r = sl_upstream_rule(t->up, sl->bucket->rule);
    now = s->clock(s->clock_arg);
    if (actual > sl->cost) {
        uint64_t more = actual - sl->cost;
        if (r->leaky)
            sl_bucket_add(sl_mem_lb(sl->bucket, r), &r->leak, more, now);
        (void)sl_mem_log_sends(s, t, sl->bucket, r, now, lease->app, more, sent, &nsent);
        if (s->on_sent != NULL && nsent > 0)
            s->on_sent(s->on_sent_arg, t->up, lease->app, sent, nsent);
    } else {
        uint32_t back = (uint32_t)(sl->cost - actual);
        struct sl_mem_bucket *b = sl->bucket;
        if (r->leaky) {
            struct sl_bucket *lb = sl_mem_lb(b, r);
            int64_t before = sl_mem_replay(&b->win, r, now), owed;
            (void)sl_window_remove(&b->win, sl->last_stamp, back);
            owed = before - sl_mem_replay(&b->win, r, now);
            lb->level = sl_bucket_level(lb, &r->leak, now) - owed;
            if (lb->level < 0)
                lb->level = 0;
            lb->at = now;
        } else {
            (void)sl_window_remove(&b->win, sl->last_stamp, back);
        }
    }
    sl->cost = (uint32_t)actual;
out:
    pthread_mutex_unlock(&t->lock);
    (void)done;  /* in force on return: never called */
    (void)arg;
    return 0;
}

/* Free for every later decision on return: DONE is never called. */
static int sl_mem_release(struct sl_store *store, struct sl_lease *lease,
                          sl_store_done_cb done, void *arg)
{
    (void)store;
    (void)done;
    (void)arg;
    sl_mem_table_lock(lease->table);
    for (size_t i = 0; i < lease->n; i++)
        sl_mem_unhold(lease, i);
    pthread_mutex_unlock(&lease->table->lock);
    free(lease);
    return 0;
}

/* Find or create the bucket of HIT.  Lock held.  NULL when full. */
static struct sl_mem_bucket *sl_mem_bucket_for(struct sl_mem_store *s,
                                               struct sl_mem_table *t,
                                               const struct sl_rule *r,
                                               const char *key, size_t len)
{
    uint32_t hash = sl_mem_hash((uint32_t)r->index, key, len);
    struct sl_mem_bucket *b = sl_mem_find(t, (uint32_t)r->index, key, len, hash);

    return b != NULL ? b : sl_mem_create(s, t, (uint32_t)r->index, key, len, hash);
}

/* In force for every later decision on return: DONE is never called. */
static int sl_mem_pause(struct sl_store *store, const struct sl_upstream_conf *up,
                        int64_t duration_us, const char *reason,
                        sl_store_done_cb done, void *arg)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    const struct sl_rule *pr = &up->pause_rule;
    struct sl_mem_table *t = sl_mem_lock_current(s, up, &pr);
    struct sl_mem_bucket *b;
    int64_t now;

    (void)done;
    (void)arg;
    if (t == NULL)
        return 0;  /* the upstream was removed by a reload */
    now = s->clock(s->clock_arg);
    b = sl_mem_bucket_for(s, t, pr, "", 0);
    if (b != NULL && now + duration_us > b->paused_until) {
        b->paused_until = now + duration_us;
        t->pause_set_at = now;
        snprintf(t->pause_reason, sizeof(t->pause_reason), "%s",
                 reason != NULL ? reason : "");
    }
    pthread_mutex_unlock(&t->lock);
    return 0;
}

int64_t sl_store_memory_pause_left(struct sl_store *store, const struct sl_upstream_conf *up,
                                   int64_t *set_ago_us)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    const struct sl_rule *pr = &up->pause_rule;
    struct sl_mem_table *t = sl_mem_lock_current(s, up, &pr);
    struct sl_mem_bucket *b;
    int64_t now, left = 0;

    *set_ago_us = INT64_MAX;
    if (t == NULL)
        return 0;
    now = s->clock(s->clock_arg);
    b = sl_mem_find(t, (uint32_t)pr->index, "", 0, sl_mem_hash((uint32_t)pr->index, "", 0));
    if (b != NULL && b->paused_until > now) {
        left = b->paused_until - now;
        *set_ago_us = now - t->pause_set_at;
    }
    pthread_mutex_unlock(&t->lock);
    return left;
}

/*
 * An operator's action, under the table's lock: the same step as a
 * decision, so no call sees half of it.  The alert bookkeeping follows
 * (see sl_mem_snapshot): a pause an operator set or cleared counts as
 * announced (the operator's alert says it), one shortened keeps whether it
 * was.  Calls held for the pause are woken by the caller (the memory store
 * knows no wait lists).
 */
static int sl_mem_set_pause(struct sl_store *store, const struct sl_upstream_conf *up,
                            enum sl_pause_action action, int64_t duration_us,
                            const char *reason, sl_pause_cb cb, void *arg)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    const struct sl_rule *pr = &up->pause_rule;
    struct sl_mem_table *t = sl_mem_lock_current(s, up, &pr);
    struct sl_pause_change ch = {0};
    struct sl_mem_bucket *b;
    int64_t now, old, until;

    if (t == NULL)
        return -1;  /* the upstream was removed by a reload */
    now = s->clock(s->clock_arg);
    b = sl_mem_bucket_for(s, t, pr, "", 0);
    if (b == NULL) {
        pthread_mutex_unlock(&t->lock);
        cb(arg, NULL, "the memory store is full (memory_limit)");
        return 0;
    }
    old = b->paused_until > now ? b->paused_until : 0;
    until = old;
    if (action == SL_PAUSE_SET && now + duration_us > old)
        until = now + duration_us;
    else if (action == SL_PAUSE_SHORTEN && old > now + duration_us)
        until = now + duration_us;
    else if (action == SL_PAUSE_CLEAR)
        until = 0;
    ch.was_us = old > 0 ? old - now : 0;
    ch.left_us = until > 0 ? until - now : 0;
    ch.changed = until != old;
    if (old > 0) {
        ch.was_operator = t->pause_reason[0] == SL_PAUSE_BY_OPERATOR;
        snprintf(ch.was_reason, sizeof(ch.was_reason), "%s",
                 t->pause_reason + (ch.was_operator ? 1 : 0));
    }
    if (ch.changed) {
        if (action == SL_PAUSE_SET)
            snprintf(t->pause_reason, sizeof(t->pause_reason), "%c%s",
                     SL_PAUSE_BY_OPERATOR, reason != NULL ? reason : "");
        if (action != SL_PAUSE_SHORTEN || t->pause_alerted_until == b->paused_until)
            t->pause_alerted_until = until;
        b->paused_until = until;
        t->pause_set_at = now;
    }
    pthread_mutex_unlock(&t->lock);
    cb(arg, &ch, NULL);
    return 0;
}

/*
 * The provider's report replaces the last one: O(log n) here (calls sent
 * after the reporting call are found by binary search in the log), O(1)
 * per decision after.  Whatever the limit, nothing is padded.
 */
static int sl_mem_sync(struct sl_store *store, const struct sl_upstream_conf *up,
                       const struct sl_hit *hit, uint64_t remaining,
                       int64_t age_us, sl_store_done_cb done, void *arg)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    struct sl_mem_table *t;
    const struct sl_rule *r = hit->rule;
    struct sl_mem_bucket *b;
    int64_t now, sent_at;

    (void)done;  /* in force on return: never called */
    (void)arg;
    if (r->kind != SL_RULE_RATE)
        return 0;
    if (age_us < 0)
        age_us = 0;
    t = sl_mem_lock_current(s, up, &r);
    if (t == NULL)
        return 0;  /* the rule was removed by a reload */
    if (remaining > r->limit)
        remaining = r->limit;
    now = s->clock(s->clock_arg);
    b = sl_mem_bucket_for(s, t, r, hit->key, hit->key_len);
    if (b != NULL && r->leaky) {
        /* The provider's level when it answered, which held the reporting
         * call, drained since; each call sent after it counted whole (the
         * safe side).  It replaces sluice's own level, up or down. */
        uint32_t from;
        sent_at = now - age_us;
        sl_window_prune(&b->win, r->span_us, now);
        from = sl_window_count_after(&b->win, sent_at - 1);
        sl_bucket_set(sl_mem_lb(b, r), &r->leak, r->limit - remaining, sent_at,
                      from > 0 ? from - 1 : 0, now);
    } else if (b != NULL) {
        sent_at = now - age_us;
        sl_window_prune(&b->win, r->span_us, now);
        b->report = true;
        /* Calls sent after the reporting call were not in its count.  The
         * reporting call itself was: its entry is stamped no earlier than
         * SENT_AT (taken just before its commit), so it is among those
         * from SENT_AT on, and is taken off. */
        {
            uint32_t from = sl_window_count_after(&b->win, sent_at - 1);
            b->report_left = (int64_t)remaining - (from > 0 ? (int64_t)from - 1 : 0);
        }
        b->report_sent = b->sent;
        b->report_until = sent_at + r->span_us;
        b->report_at = now;
        b->report_value = remaining;
        /* The next probe comes one interval after the latest word. */
        b->probe_at = now + r->sync_probe_us;
    }
    pthread_mutex_unlock(&t->lock);
    return 0;
}

void sl_store_memory_record(struct sl_store *store, const struct sl_check *c)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    struct sl_mem_table *t;
    int64_t now;

    for (size_t i = 0; i < c->nhits; i++) {
        const struct sl_rule *r = c->hits[i].rule;
        struct sl_mem_bucket *b;
        if (r->kind != SL_RULE_RATE)
            continue;
        /* Per hit: a call of an older generation maps by name. */
        t = sl_mem_lock_current(s, c->upstream, &r);
        if (t == NULL)
            continue;
        now = s->clock(s->clock_arg);
        b = sl_mem_bucket_for(s, t, r, c->hits[i].key, c->hits[i].key_len);
        if (b != NULL) {
            /* A mirror keeps the newest `limit` calls at most: only those
             * decide when this instance's next call fits. */
            if (b->win.count >= r->limit)
                sl_window_keep_newest(&b->win, r->limit - 1);
            if (r->leaky)
                sl_bucket_add(sl_mem_lb(b, r), &r->leak, sl_hit_cost(&c->hits[i]), now);
            for (uint64_t k = 0; k < sl_hit_cost(&c->hits[i]); k++)
                sl_mem_log(s, b, r, now, c->app);
        }
        pthread_mutex_unlock(&t->lock);
    }
}

/* How long the timer's sweep takes to go once round T.  Lock held. */
static int64_t sl_mem_sweep_round(const struct sl_mem_store *s,
                                  const struct sl_mem_table *t, int64_t now)
{
    int64_t round = SL_MEM_SWEEP_ROUND_MAX;

    if (t->up == NULL)
        return SL_MEM_SWEEP_ROUND_MIN;
    for (size_t i = 0; i < t->up->nrules; i++) {
        const struct sl_rule *r = &t->up->rules[i];
        if (r->kind == SL_RULE_RATE) {
            int64_t half = sl_mem_span(s, r, now, NULL) / 2;
            if (half < round)
                round = half;
        }
    }
    return round < SL_MEM_SWEEP_ROUND_MIN ? SL_MEM_SWEEP_ROUND_MIN : round;
}

static void sl_mem_tick(struct sl_store *store)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    int64_t now = s->clock(s->clock_arg);

    /* Tables are never freed before the store: the list is stable. */
    for (struct sl_mem_table *t = s->all; t != NULL; t = t->all_next) {
        size_t n;

        sl_mem_table_lock(t);
        if (now > t->sweep_at)
            t->sweep_owed += (double)t->nslots * (double)(now - t->sweep_at) /
                             (double)sl_mem_sweep_round(s, t, now);
        t->sweep_at = now;
        if (t->sweep_owed > SL_MEM_SWEEP_SLOTS)
            t->sweep_owed = SL_MEM_SWEEP_SLOTS;
        n = (size_t)t->sweep_owed;
        if (n > 0) {
            t->sweep_owed -= (double)n;
            sl_mem_sweep(s, t, n, now);
        }
        pthread_mutex_unlock(&t->lock);
    }
}

static void sl_mem_destroy(struct sl_store *store)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;

    struct sl_mem_table *t, *tn;
    struct sl_mem_layout *l, *ln;

    for (t = s->all; t != NULL; t = tn) {
        tn = t->all_next;
        for (size_t k = 0; k < t->nslots; k++) {
            struct sl_mem_bucket *b = t->slots[k], *next;
            for (; b != NULL; b = next) {
                next = b->next;
                sl_mem_kept_free(s, b);
                sl_window_free(&b->win);
                free(b->in_apps);
                free(b);
            }
        }
        free(t->slots);
        pthread_mutex_destroy(&t->lock);
        free(t);
    }
    for (l = atomic_load(&s->layout); l != NULL; l = ln) {
        ln = l->prev;
        sl_config_unref(l->config);
        free(l);
    }
    pthread_mutex_destroy(&s->adopt_lock);
    free(s);
}

/* Thresholds of R's alert_at that USED reaches. */
static unsigned sl_mem_level(const struct sl_rule *r, uint64_t used)
{
    unsigned level = 0;

    for (size_t i = 0; i < r->nalert_at; i++)
        /* used / limit >= at, in integers where it matters: at 1.0 the
         * limit itself must be reached, never a rounding below it. */
        if ((double)used >= r->alert_at[i] * (double)r->limit - 1e-9)
            level = (unsigned)i + 1;
    return level;
}

static const char *sl_mem_app_name(const struct sl_snapshot_req *req, uint16_t id)
{
    return req->apps != NULL ? sl_apps_name(req->apps, id) : "-";
}

/* Fill U from bucket B of rule R (B may be NULL: nothing held).  Lock held. */
static int sl_mem_usage(const struct sl_mem_store *s, struct sl_mem_bucket *b,
                        const struct sl_rule *r, int64_t now,
                        const struct sl_snapshot_req *req, uint64_t *tally,
                        size_t ntally, struct sl_usage *u)
{
    uint64_t limit = sl_mem_limit(s, r->limit);

    u->key = strdup(b != NULL ? b->key : "");
    if (u->key == NULL)
        return -1;
    u->resets_in_us = -1;
    u->report_left = -1;
    if (r->kind == SL_RULE_CONCURRENCY) {
        u->used = b != NULL ? b->inflight : 0;
        if (b != NULL && b->nin > 0) {
            u->apps = calloc(b->nin, sizeof(*u->apps));
            if (u->apps == NULL)
                return -1;
            for (uint32_t i = 0; i < b->nin; i++) {
                u->apps[u->napps].name = strdup(sl_mem_app_name(req, b->in_apps[i].app));
                u->apps[u->napps].calls = b->in_apps[i].n;
                if (u->apps[u->napps++].name == NULL)
                    return -1;
            }
            sl_snapshot_sort_apps(u);
        }
    } else if (b != NULL && r->leaky) {
        /* A bucket: its level in whole calls (rounded up) and the calls
         * admitted, not yet sent; what fits now, after both.  Its log is
         * sends of one drain time, not what the level holds: no per-app
         * split. */
        struct sl_bucket *lb = sl_mem_lb(b, r);
        int64_t level = sl_bucket_level(lb, &r->leak, now);
        u->used = (uint64_t)((level + r->leak.per_us - 1) / r->leak.per_us) + b->reserved;
        u->reserved = b->reserved;
        u->resets_in_us = sl_mem_lb_reset(b, r, now);
        u->remaining = sl_bucket_room(lb, &r->leak, sl_mem_cap(s, r), b->reserved, now);
        goto levels;
    } else if (b != NULL) {
        int64_t room;
        int64_t reset, span = sl_mem_span(s, r, now, &reset);
        sl_window_prune(&b->win, span, now);
        u->used = b->win.count + b->reserved;
        u->reserved = b->reserved;
        u->resets_in_us = sl_window_next_expiry(&b->win, r->span_us, now);
        if (b->win.count == 0)
            u->resets_in_us = b->reserved > 0 ? r->span_us : 0;
        if (r->calendar)
            u->resets_in_us = u->used > 0 ? reset : 0;
        room = sl_mem_report_room(b, now);
        if (room != INT64_MAX) {
            u->report_left = room > 0 ? room : 0;
            /* One figure: the provider's, when it counts more. */
            u->used = sl_mem_counted(b, r, u->used, now);
            u->from_provider = true;
            u->report_age_us = now - b->report_at;
            u->report_value = (int64_t)b->report_value;
            u->sent_since_report = b->sent - b->report_sent;
        }
        if (ntally > 0 && b->win.count > 0) {
            size_t napps = 0;
            memset(tally, 0, ntally * sizeof(*tally));
            sl_window_tally(&b->win, tally, ntally);
            for (size_t i = 0; i < ntally; i++)
                napps += tally[i] > 0;
            u->apps = calloc(napps, sizeof(*u->apps));
            if (u->apps == NULL)
                return -1;
            for (size_t i = 0; i < ntally; i++) {
                if (tally[i] == 0)
                    continue;
                u->apps[u->napps].name = strdup(sl_mem_app_name(req, (uint16_t)i));
                u->apps[u->napps].calls = tally[i];
                if (u->apps[u->napps++].name == NULL)
                    return -1;
            }
            sl_snapshot_sort_apps(u);
        }
    } else {
        u->resets_in_us = 0;
    }
    u->remaining = u->used >= limit ? 0 : limit - u->used;
    if (u->report_left >= 0 && (uint64_t)u->report_left < u->remaining)
        u->remaining = (uint64_t)u->report_left;
    if (r->leaky && b == NULL)
        u->remaining = (uint64_t)(sl_mem_cap(s, r) / r->leak.per_us);
levels:
    u->level = sl_mem_level(r, u->used);
    u->level_was = u->level;
    if (b != NULL) {
        u->level_was = b->alert_level;
        if (req->flags & SL_SNAP_ALERTS)
            b->alert_level = u->level;
    }
    return 0;
}

/* Append a bucket to RU.  NULL when out of memory. */
static struct sl_usage *sl_mem_push_usage(struct sl_rule_usage *ru, size_t *cap)
{
    if (ru->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        struct sl_usage *nb = realloc(ru->buckets, ncap * sizeof(*nb));
        if (nb == NULL)
            return NULL;
        ru->buckets = nb;
        *cap = ncap;
    }
    memset(&ru->buckets[ru->n], 0, sizeof(ru->buckets[0]));
    return &ru->buckets[ru->n++];
}

/* A `per` bucket competing for its rule's top: its cheap count and key. */
struct sl_mem_cand {
    uint64_t used;
    char *key;                    /* owned copy */
};

/* A rule's busiest buckets so far: a min-heap (the least busy on top). */
struct sl_mem_top {
    struct sl_mem_cand *heap;     /* owned, cap entries */
    size_t n, cap;
};

/* Is A busier than B (more used; the lower key on a tie)? */
static bool sl_mem_cand_above(const struct sl_mem_cand *a, const struct sl_mem_cand *b)
{
    if (a->used != b->used)
        return a->used > b->used;
    return strcmp(a->key, b->key) < 0;
}

static void sl_mem_top_sift(struct sl_mem_top *t, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        struct sl_mem_cand tmp;
        if (l < t->n && sl_mem_cand_above(&t->heap[m], &t->heap[l]))
            m = l;
        if (r < t->n && sl_mem_cand_above(&t->heap[m], &t->heap[r]))
            m = r;
        if (m == i)
            return;
        tmp = t->heap[i];
        t->heap[i] = t->heap[m];
        t->heap[m] = tmp;
        i = m;
    }
}

/* Offer bucket B (USED) to T.  0, or -1 when out of memory. */
static int sl_mem_top_offer(struct sl_mem_top *t, const struct sl_mem_bucket *b,
                            uint64_t used)
{
    struct sl_mem_cand c = {used, (char *)b->key};
    char *key;

    if (t->cap == 0 || (t->n == t->cap && !sl_mem_cand_above(&c, &t->heap[0])))
        return 0;
    key = strdup(b->key);
    if (key == NULL)
        return -1;
    if (t->n < t->cap) {
        /* Sift up. */
        size_t i = t->n++;
        t->heap[i] = (struct sl_mem_cand){used, key};
        while (i > 0 && sl_mem_cand_above(&t->heap[(i - 1) / 2], &t->heap[i])) {
            struct sl_mem_cand tmp = t->heap[i];
            t->heap[i] = t->heap[(i - 1) / 2];
            t->heap[(i - 1) / 2] = tmp;
            i = (i - 1) / 2;
        }
        return 0;
    }
    free(t->heap[0].key);
    t->heap[0] = (struct sl_mem_cand){used, key};
    sl_mem_top_sift(t, 0);
    return 0;
}

/* Cheap: buckets used now (no tally, no allocation).  Lock held. */
static uint64_t sl_mem_used(const struct sl_mem_store *s, struct sl_mem_bucket *b,
                            const struct sl_rule *r, int64_t now)
{
    if (r->kind == SL_RULE_CONCURRENCY)
        return b->inflight;
    sl_window_prune(&b->win, sl_mem_span(s, r, now, NULL), now);
    return sl_mem_counted(b, r, b->win.count + b->reserved, now);
}

/*
 * Walk slots [*K, *K + SL_MEM_SNAP_CHUNK) of T under its lock: count
 * buckets, note a pause, give rules without `per` (and any bucket whose
 * alert level moved) their full figures, and offer `per` buckets to their
 * rule's top.  0 or -1 (out of memory).  Lock held.
 */
static int sl_mem_snapshot_chunk(struct sl_mem_store *s, struct sl_mem_table *t,
                                 const struct sl_snapshot_req *req,
                                 struct sl_upstream_usage *uu, size_t *cap,
                                 struct sl_mem_top *tops, uint64_t *tally,
                                 size_t ntally, size_t *k, int64_t now)
{
    const struct sl_upstream_conf *up = t->up;
    size_t end = *k + SL_MEM_SNAP_CHUNK;

    for (; *k < t->nslots && *k < end; (*k)++) {
        for (struct sl_mem_bucket *b = t->slots[*k]; b != NULL; b = b->next) {
            const struct sl_rule *r;
            uint64_t used;
            if (b->rule == SL_MEM_ORPHAN)
                continue;
            r = sl_upstream_rule(up, b->rule);
            if (r->kind == SL_RULE_PAUSE) {
                if (b->paused_until > now) {
                    uu->paused_us = b->paused_until - now;
                    snprintf(uu->pause_reason, sizeof(uu->pause_reason), "%s",
                             t->pause_reason);
                    sl_snapshot_pause_origin(uu);
                    /* A pause extended while it runs is the same pause. */
                    if ((req->flags & SL_SNAP_ALERTS) &&
                        t->pause_alerted_until != b->paused_until) {
                        uu->pause_new = t->pause_alerted_until <= now;
                        t->pause_alerted_until = b->paused_until;
                    }
                }
                continue;
            }
            uu->rules[b->rule].nbuckets++;
            used = sl_mem_used(s, b, r, now);
            /* Without `per`: its one bucket.  A level that moved: always
             * (alerts must see it, and it is recorded now). */
            if (r->per_kind == SL_PER_NONE ||
                ((req->flags & SL_SNAP_ALERTS) && sl_mem_level(r, used) != b->alert_level)) {
                struct sl_usage *u = sl_mem_push_usage(&uu->rules[b->rule], &cap[b->rule]);
                if (u == NULL || sl_mem_usage(s, b, r, now, req, tally, ntally, u) != 0)
                    return -1;
            } else if (used > 0 && sl_mem_top_offer(&tops[b->rule], b, used) != 0) {
                return -1;
            }
        }
    }
    return 0;
}

/*
 * One upstream's figures, without holding its table's lock for long: the
 * table is walked SL_MEM_SNAP_CHUNK slots a lock hold, each `per` rule
 * keeping a heap of its `top` busiest keys (copies), and only those then
 * get their full figures (the per-app tally walks a window), found again
 * by key in one more short hold.  A proxied call waits for one chunk at
 * most, never for a walk or a sort of every bucket.  The table does not
 * grow while it is walked (t->walking), so no bucket moves between slots
 * and none is seen twice; buckets made or reclaimed meanwhile are seen or
 * not, as a call made a moment later or earlier would be.
 */
static int sl_mem_snapshot_table(struct sl_mem_store *s, struct sl_mem_table *t,
                                 const struct sl_snapshot_req *req,
                                 struct sl_upstream_usage *uu)
{
    const struct sl_upstream_conf *up = t->up;
    size_t ntally = req->apps != NULL ? sl_apps_count(req->apps) : 1;
    uint64_t *tally = calloc(ntally, sizeof(*tally));
    size_t *cap = calloc(up->nrules + 1, sizeof(*cap));
    struct sl_mem_top *tops = calloc(up->nrules + 1, sizeof(*tops));
    size_t k = 0;
    int64_t now;
    int rc = -1;

    if (tally == NULL || cap == NULL || tops == NULL)
        goto out;
    for (size_t r = 0; r < up->nrules; r++) {
        if (up->rules[r].per_kind == SL_PER_NONE)
            continue;
        tops[r].cap = req->top;
        tops[r].heap = calloc(req->top ? req->top : 1, sizeof(*tops[r].heap));
        if (tops[r].heap == NULL)
            goto out;
    }
    sl_mem_table_lock(t);
    t->walking++;
    now = s->clock(s->clock_arg);
    for (;;) {
        rc = sl_mem_snapshot_chunk(s, t, req, uu, cap, tops, tally, ntally, &k, now);
        if (rc != 0 || k >= t->nslots)
            break;
        sl_mem_walk_pause(t);
        now = s->clock(s->clock_arg);
    }
    t->walking--;
    /* The tops' full figures, found by key (a bucket reclaimed since it
     * was counted is left out, as it would be a moment later). */
    for (size_t r = 0; rc == 0 && r < up->nrules; r++) {
        for (size_t i = 0; i < tops[r].n; i++) {
            const char *key = tops[r].heap[i].key;
            size_t len = strlen(key);
            struct sl_mem_bucket *b =
                sl_mem_find(t, (uint32_t)r, key, len, sl_mem_hash((uint32_t)r, key, len));
            struct sl_usage *u;
            if (b == NULL)
                continue;
            u = sl_mem_push_usage(&uu->rules[r], &cap[r]);
            if (u == NULL || sl_mem_usage(s, b, &up->rules[r], now, req, tally,
                                          ntally, u) != 0) {
                rc = -1;
                break;
            }
        }
    }
    /* A rule without `per` always shows its one bucket, used or not. */
    for (size_t r = 0; rc == 0 && r < up->nrules; r++) {
        struct sl_usage *u;
        if (up->rules[r].per_kind != SL_PER_NONE || uu->rules[r].n > 0)
            continue;
        u = sl_mem_push_usage(&uu->rules[r], &cap[r]);
        if (u == NULL || sl_mem_usage(s, NULL, &up->rules[r], now, req, tally,
                                      ntally, u) != 0)
            rc = -1;
    }
    pthread_mutex_unlock(&t->lock);
    /* Sorting and trimming need no lock. */
    for (size_t r = 0; r < up->nrules; r++)
        sl_snapshot_trim(&uu->rules[r], up->rules[r].per_kind != SL_PER_NONE
                                            ? req->top : 1);
out:
    for (size_t r = 0; tops != NULL && r < up->nrules; r++) {
        for (size_t i = 0; i < tops[r].n; i++)
            free(tops[r].heap[i].key);
        free(tops[r].heap);
    }
    free(tops);
    free(tally);
    free(cap);
    return rc;
}

static int sl_mem_snapshot(struct sl_store *store, const struct sl_snapshot_req *req,
                           sl_snapshot_cb cb, void *arg)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    struct sl_snapshot *snap;
    struct sl_mem_layout *l;
    int rc = 0;

    /* The layout's tables serve its configuration's upstreams as long as
     * no reload runs: hold reloads off while reading. */
    pthread_mutex_lock(&s->adopt_lock);
    l = atomic_load(&s->layout);
    snap = sl_snapshot_new(l->config);
    if (snap == NULL)
        rc = -1;
    for (size_t i = 0; rc == 0 && i < l->ntables; i++) {
        if (sl_mem_snapshot_table(s, l->tables[i], req, &snap->ups[i]) != 0) {
            sl_snapshot_free(snap);
            rc = -1;
        }
    }
    pthread_mutex_unlock(&s->adopt_lock);
    if (rc == 0)
        cb(arg, snap, NULL);
    return rc;
}

static const struct sl_store_ops sl_mem_ops = {
    .decide = sl_mem_decide,
    .commit = sl_mem_commit,
    .settle = sl_mem_settle,
    .release = sl_mem_release,
    .pause = sl_mem_pause,
    .set_pause = sl_mem_set_pause,
    .sync = sl_mem_sync,
    .tick = sl_mem_tick,
    .destroy = sl_mem_destroy,
    .snapshot = sl_mem_snapshot,
    .adopt = sl_mem_adopt,
};

struct sl_store *sl_store_memory_new(const struct sl_config *config,
                                     sl_clock_fn clock, void *clock_arg)
{
    struct sl_mem_store *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->base.ops = &sl_mem_ops;
    s->limit = config->memory_limit;
    /* As Redis's fallback, each instance grants only its share. */
    s->share = config->store_kind == SL_STORE_REDIS ? config->local_share : 1.0;
    if (s->share <= 0.0 || s->share > 1.0)
        s->share = 1.0;
    s->clock = clock ? clock : sl_clock_monotonic;
    s->clock_arg = clock_arg;
    pthread_mutex_init(&s->adopt_lock, NULL);
    if (sl_mem_adopt_locked(s, config) != 0) {
        sl_mem_destroy(&s->base);
        return NULL;
    }
    return &s->base;
}

uint64_t sl_store_memory_bytes(struct sl_store *store)
{
    return atomic_load(&((struct sl_mem_store *)store)->bytes);
}

size_t sl_store_memory_keys(struct sl_store *store)
{
    return atomic_load(&((struct sl_mem_store *)store)->keys);
}

/* ---- state file support (sl_state.c) ---- */

void sl_store_memory_on_sent(struct sl_store *store, sl_mem_sent_fn fn, void *arg)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;

    s->on_sent = fn;
    s->on_sent_arg = arg;
}

bool sl_store_memory_monotonic(struct sl_store *store)
{
    return ((struct sl_mem_store *)store)->clock == sl_clock_monotonic;
}

int64_t sl_store_memory_now(struct sl_store *store)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;

    return s->clock(s->clock_arg);
}

int sl_store_memory_export(struct sl_store *store, sl_mem_export_cb cb, void *arg)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    int rc = 0;

    struct sl_mem_layout *l;

    pthread_mutex_lock(&s->adopt_lock);
    l = atomic_load(&s->layout);
    for (size_t i = 0; i < l->ntables && rc == 0; i++) {
        struct sl_mem_table *t = l->tables[i];
        int64_t now;
        sl_mem_table_lock(t);
        t->walking++;
        now = s->clock(s->clock_arg);
        for (size_t k = 0; k < t->nslots && rc == 0; k++) {
            /* In steps, as a snapshot walks (sl_mem_snapshot_table).  A
             * call logged before the walk began is in its bucket when the
             * walk reaches it; one logged during it is in the new journal
             * (sl_state.c matches it there by its stamp). */
            if (k > 0 && k % SL_MEM_SNAP_CHUNK == 0) {
                sl_mem_walk_pause(t);
                now = s->clock(s->clock_arg);
            }
            for (struct sl_mem_bucket *b = t->slots[k]; b != NULL && rc == 0;
                 b = b->next) {
                const struct sl_rule *r;
                if (b->rule == SL_MEM_ORPHAN)
                    continue;
                r = sl_upstream_rule(t->up, b->rule);
                if (r->kind == SL_RULE_PAUSE) {
                    if (b->paused_until > now)
                        rc = cb(arg, t->up, r, b->key, b->key_len, NULL,
                                b->paused_until, t->pause_reason);
                } else if (r->kind == SL_RULE_RATE) {
                    sl_window_prune(&b->win, sl_mem_span(s, r, now, NULL), now);
                    if (b->win.count > 0)
                        rc = cb(arg, t->up, r, b->key, b->key_len, &b->win, 0, NULL);
                }
            }
        }
        t->walking--;
        pthread_mutex_unlock(&t->lock);
    }
    pthread_mutex_unlock(&s->adopt_lock);
    return rc;
}

int sl_store_memory_import(struct sl_store *store, const struct sl_upstream_conf *up,
                           const struct sl_rule *r, const char *key, size_t key_len,
                           const int64_t *times, const uint16_t *tags, uint32_t n)
{
    struct sl_mem_store *s = (struct sl_mem_store *)store;
    struct sl_mem_table *t;
    struct sl_mem_bucket *b;
    uint32_t first = 0;
    uint64_t most;
    int64_t now;
    int rc = 0, logged = 0;

    if (r->kind != SL_RULE_RATE || r->limit == 0)
        return 0;
    t = sl_mem_lock_current(s, up, &r);
    if (t == NULL)
        return 0;
    now = s->clock(s->clock_arg);
    /* Only what is still inside the span, and at most `limit` (the
     * newest: a lowered limit keeps the most recent calls). */
    while (first < n && times[first] <= now - sl_mem_span(s, r, now, NULL))
        first++;
    /* A leaky bucket's log holds every send of one drain time (up to
     * twice the bucket): its level is replayed from them. */
    most = r->leaky ? 2 * r->limit + 64 : r->limit;
    if (n - first > most)
        first = n - (uint32_t)most;
    if (first < n) {
        b = sl_mem_bucket_for(s, t, r, key, key_len);
        if (b == NULL) {
            rc = -1;
        } else {
            for (uint32_t i = first; i < n && rc == 0; i++) {
                size_t before = sl_window_bytes(&b->win);
                int64_t at = times[i] > now ? now : times[i];
                if (b->win.count >= most)
                    break;
                rc = sl_window_record_tag(&b->win, r->limit, at, tags[i]);
                atomic_fetch_add(&s->bytes, sl_window_bytes(&b->win) - before);
                if (rc == 0 && r->leaky)
                    sl_bucket_add(sl_mem_lb(b, r), &r->leak, 1, at);
                if (rc == 0) {
                    b->sent++;
                    logged++;
                }
            }
            /* The replay saw one span of sends: what was in the bucket
             * before them counts too (sl_bucket_refill). */
            if (rc == 0 && r->leaky && logged > 0)
                sl_bucket_refill(sl_mem_lb(b, r), &r->leak, r->limit, times + first,
                                 (size_t)logged, sl_mem_span(s, r, now, NULL), now);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return rc != 0 ? -1 : logged;
}
