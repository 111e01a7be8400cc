/*
 * sl_store — where limit state lives, behind one small interface.
 *
 * The proxy matches a call against its upstream's rules (sl_match), which
 * yields an sl_check: the list of (rule, bucket key) the call falls under.
 * A store decides the whole check in one atomic step: either every rule has
 * room and the call is recorded in all of them, or nothing is recorded and
 * the decision names the rule that will make the caller wait the longest.
 *
 * Decisions are delivered through a callback so that a networked store can
 * answer later; the memory store answers before sl_store_decide() returns.
 * A callback is never called when sl_store_decide() returned an error.
 *
 * An allowed call gets a lease: what it holds in the store.  For a rate
 * rule that is a *reservation*, not yet a logged call: the call counts
 * against the limit from the decision on, but its time is written only
 * when its request is actually sent upstream (sl_store_commit(), called
 * when the connection to the provider is ready), so windows are kept on
 * the clock that counts, the provider's, and not on admission times that
 * may precede the send by a connection set-up and a TLS handshake.  A
 * reservation that is never committed (the upstream could not be reached,
 * the client left first) is given back by sl_store_release() and costs
 * nothing.  For a concurrency rule the lease is the in-flight slot, held
 * until sl_store_release() when the upstream exchange ends.
 *
 * A call may cost more than one unit in a rule (sl_hit.cost): every
 * figure above is then in units, and a rule with "settle" corrects the
 * units once the response says what the call cost (sl_store_settle()).
 */
#ifndef SL_STORE_H
#define SL_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_config.h"
#include "sl_time.h"

#define SL_MAX_HITS 65  /* 64 rules and the upstream's pause */
/* A per key longer than SL_KEY_MAX bytes is kept as its first
 * SL_KEY_PREFIX bytes, '~' and 32 hex digits of a hash of the whole. */
#define SL_KEY_MAX 128
#define SL_KEY_PREFIX 80

/* One rule a call falls under, and the bucket it counts in. */
struct sl_hit {
    const struct sl_rule *rule;
    const char *key;        /* per value (NUL-terminated), "" without "per" */
    size_t key_len;
    /* Units this call takes from a rate rule or bucket (the rule's
     * "cost", >= 1); 1 for a concurrency rule and the pause. */
    uint32_t cost;
};

/* H's cost, at least 1. */
static inline uint64_t sl_hit_cost(const struct sl_hit *h)
{
    return h->cost > 0 ? h->cost : 1;
}

/* Everything a store needs to decide one call. */
struct sl_check {
    const struct sl_upstream_conf *upstream;
    /* sl_match() returned SL_MATCH_BAD_COST: the rule whose cost header
     * was missing or not a whole number from 1 to its limit. */
    const struct sl_rule *bad_cost;
    uint16_t app;           /* the caller's app id (sl_apps) */
    const char *app_name;   /* ... and its name (owned by sl_apps) */
    size_t nhits;
    struct sl_hit hits[SL_MAX_HITS];
    char *keys;             /* owned storage behind hits[].key */
};

enum sl_verdict {
    SL_VERDICT_ALLOW,       /* forwarded; recorded in every rule */
    SL_VERDICT_DENY,        /* over a limit; nothing recorded */
    SL_VERDICT_UNAVAILABLE, /* the store cannot decide (full, down) */
    /* The check was matched under an older configuration than the store
     * now serves (a reload): match the call again and ask again. */
    SL_VERDICT_STALE,
};

struct sl_decision {
    enum sl_verdict verdict;
    /* DENY: the rule with the longest wait.  ALLOW: the rate rule with the
     * least room left (for RateLimit headers), or NULL. */
    const struct sl_rule *rule;
    int64_t wait_us;        /* DENY: until `rule` has room */
    uint64_t remaining;     /* calls left in `rule` after this one */
    int64_t reset_us;       /* until `rule` gets room back */
    const char *reason;     /* UNAVAILABLE: a static sentence */
    /* ALLOW: a shadow rule that would have denied the call (the one with
     * the longest wait), or NULL.  It took nothing from that rule. */
    const struct sl_rule *shadow;
    int64_t shadow_wait_us;
    uint64_t shadow_mask;   /* ALLOW: every such rule, bit = rule->index */
    /* DENY by a share of `rule` ("apps"): SL_SHARE_MAX when the app used
     * its max, SL_SHARE_RESERVED when what is left of the limit is kept
     * for other apps' reservations; SL_SHARE_NONE: the limit itself. */
    enum sl_share_denial {
        SL_SHARE_NONE,
        SL_SHARE_MAX,
        SL_SHARE_RESERVED,
    } share;
    /* DENY by a rate rule with sync because the provider's last report
     * leaves no room (sluice's own log may): the calls left as the
     * provider said, and how long ago it said so. */
    bool by_report;
    int64_t report_value;
    int64_t report_age_us;
    uint64_t report_sent_since;   /* calls sent through sluice since it */
};

/* "max" or "reserved" (NULL for SL_SHARE_NONE). */
const char *sl_share_denial_name(enum sl_share_denial d);

struct sl_lease;
struct sl_store;
struct sl_apps;
struct sl_history;
struct sl_hist_view;

/* ---- usage snapshots: what an operator sees ---- */

struct sl_usage_app {
    char *name;             /* owned by the snapshot */
    uint64_t calls;         /* sent in the window (rate rules) */
};

/* One bucket as the store sees it now. */
struct sl_usage {
    char *key;              /* per value, "" without per (owned) */
    uint64_t used;          /* rate: sent in the span + reserved; concurrency:
                             * in flight */
    uint64_t reserved;      /* rate: admitted, not yet sent */
    uint64_t remaining;     /* calls that fit now (the provider's last report
                             * may leave fewer than limit - used) */
    int64_t resets_in_us;   /* rate: until the oldest counted call leaves the
                             * window (room comes back then); -1: n/a */
    int64_t report_left;    /* rate with sync: the report's room, -1: none */
    /* rate with sync, while a report is in force: `used` and `remaining`
     * are the provider's count (its report plus the calls sent since),
     * when that is more than sluice's own.  The report's age, the calls
     * left as it said, and the calls sluice sent since it. */
    bool from_provider;
    int64_t report_age_us;
    int64_t report_value;
    uint64_t sent_since_report;
    struct sl_usage_app *apps;  /* owned; busiest first */
    size_t napps;
    /* SL_SNAP_ALERTS: thresholds of rule->alert_at reached at the last
     * snapshot that tracked alerts (fleet-wide with Redis), and now. */
    unsigned level_was, level;
};

/* One rule: its busiest buckets (all of them without `per`: just one). */
struct sl_rule_usage {
    const struct sl_rule *rule;
    size_t nbuckets;        /* buckets live in the store */
    size_t n;               /* buckets below, busiest first */
    struct sl_usage *buckets;   /* owned */
};

struct sl_upstream_usage {
    const struct sl_upstream_conf *up;
    int64_t paused_us;      /* the provider's pause left, 0: none */
    char pause_reason[96];  /* why, when paused */
    bool pause_operator;    /* set by an operator (pause_reason is theirs) */
    /* SL_SNAP_ALERTS: this pause began since the last snapshot that
     * tracked alerts (fleet-wide with Redis): alert once for it. */
    bool pause_new;
    struct sl_rule_usage *rules; /* owned, one per rule (rule index) */
};

struct sl_snapshot {
    const struct sl_config *config;   /* referenced: ups point into it */
    size_t nups;
    struct sl_upstream_usage *ups; /* owned, one per upstream */
};

enum {
    SL_SNAP_ALERTS = 1,     /* update the alert levels (else read only) */
};

struct sl_snapshot_req {
    unsigned top;           /* buckets per `per` rule, busiest first */
    unsigned flags;         /* SL_SNAP_* */
    const struct sl_apps *apps; /* names for the memory store's app ids */
};

/* A stored pause reason that begins with this byte was set by an operator
 * (the rest is their reason).  Kept so in both stores and the state file,
 * so every instance, and a restart, show who set a pause. */
#define SL_PAUSE_BY_OPERATOR '\x01'

/* UU's pause_reason as stored: strip the operator's mark, if any, into
 * UU->pause_operator. */
void sl_snapshot_pause_origin(struct sl_upstream_usage *uu);

/* Ownership: SNAP (NULL when the store could not answer) passes to the
 * callee, which frees it with sl_snapshot_free(). */
typedef void (*sl_snapshot_cb)(void *arg, struct sl_snapshot *snap,
                               const char *error);

/* An empty snapshot for CONFIG's upstreams and rules, or NULL (OOM). */
struct sl_snapshot *sl_snapshot_new(const struct sl_config *config);
void sl_snapshot_free(struct sl_snapshot *snap);
/* Keep the TOP busiest of RU's buckets (by used, then key), freeing the
 * rest; buckets whose alert level moved are always kept. */
void sl_snapshot_trim(struct sl_rule_usage *ru, unsigned top);
/* Sort U's apps busiest first. */
void sl_snapshot_sort_apps(struct sl_usage *u);

/* Ownership: VIEWS (NULL when the store could not answer), one per rule
 * asked for, passes to the callee, which clears each with
 * sl_hist_view_clear() and frees the array. */
typedef void (*sl_history_cb)(void *arg, struct sl_hist_view *views,
                              const char *error);

/*
 * Ownership: LEASE (may be NULL) passes to the callee, which must hand it
 * back with sl_store_release() exactly once.
 */
typedef void (*sl_decide_cb)(void *arg, const struct sl_decision *decision,
                             struct sl_lease *lease);

/* ---- operator actions on a pause ---- */

enum sl_pause_action {
    SL_PAUSE_SET,           /* pause for DURATION: extends, never shortens */
    SL_PAUSE_SHORTEN,       /* end within DURATION: never lengthens */
    SL_PAUSE_CLEAR,         /* end now */
};

/* What an action found and left (times: left from the store's now). */
struct sl_pause_change {
    bool changed;           /* false: the action would have changed nothing */
    int64_t was_us;         /* pause left before, 0: none */
    int64_t left_us;        /* ... after */
    bool was_operator;      /* the pause before was set by an operator */
    char was_reason[96];    /* ... its reason (mark stripped) */
};

/* ERROR (a static sentence) set: the store could not act; CH is NULL. */
typedef void (*sl_pause_cb)(void *arg, const struct sl_pause_change *ch,
                            const char *error);

/* A provider's report or pause has reached the shared store (or the store
 * gave up on it): every decision asked from now on, on any worker and any
 * instance, sees it.  Called once. */
typedef void (*sl_store_done_cb)(void *arg);

struct sl_store_ops {
    int (*decide)(struct sl_store *store, const struct sl_check *check,
                  sl_decide_cb cb, void *arg);
    /* The request is being sent now: log the lease's rate reservations
     * stamped now.  Idempotent; the lease stays the caller's. */
    void (*commit)(struct sl_store *store, struct sl_lease *lease);
    /* Give back what the lease holds: concurrency slots, and reservations
     * never committed.  Frees the lease.  Returns 1 when DONE (may be NULL)
     * has been or will be called once the freed concurrency slots are free
     * for every later decision (a shared store: when it has applied the
     * release, or given up), or 0 when they already are (DONE is not
     * called).  The proxy holds the end of the call's answer until then, so
     * that the client's next call never finds its own slot still taken. */
    int (*release)(struct sl_store *store, struct sl_lease *lease,
                   sl_store_done_cb done, void *arg);
    /* Stop every call of UPSTREAM for DURATION (the provider said so).
     * Returns 1 when DONE (may be NULL) has been or will be called once the
     * pause is in force for every later decision, or 0 when it already is
     * (DONE is not called), as with sync. */
    int (*pause)(struct sl_store *store, const struct sl_upstream_conf *upstream,
                 int64_t duration_us, const char *reason, sl_store_done_cb done,
                 void *arg);
    /*
     * An operator's ACTION on UPSTREAM's pause, decided atomically against
     * the pause running now (the provider's or another operator's), for
     * every instance sharing the store.  REASON (SL_PAUSE_SET) is the
     * operator's, stored marked SL_PAUSE_BY_OPERATOR.  A pause shortened
     * or cleared wakes the calls held for it, on every instance.  An
     * operator's action is announced by the caller: the snapshots' pause
     * alerts do not announce it again.  Returns 0 (CB has been or will be
     * called) or a negative code (CB is not called).
     */
    int (*set_pause)(struct sl_store *store, const struct sl_upstream_conf *upstream,
                     enum sl_pause_action action, int64_t duration_us,
                     const char *reason, sl_pause_cb cb, void *arg);
    /*
     * The provider reports REMAINING calls left for HIT's bucket, in its
     * answer to a call sent AGE_US ago (AGE_US counted from just before
     * that call's commit: its own entry is stamped no earlier, and is the
     * one call from then on that the report did count).  From then on the
     * bucket's room is
     * at most REMAINING minus the calls sent after that call (and minus
     * reservations), until a newer report replaces it or one span has
     * passed since that call was sent (everything the provider counted
     * then has left its window).  A later report may give room back.
     * While a report leaves no room, one call is let through every
     * rule->sync_probe_us to learn the provider's count again.  O(1) in
     * the limit.  Returns 1 when DONE (may be NULL) has been or will be
     * called once the report is in force for every later decision (a
     * shared store: when it has applied it, or given up), or 0 when it
     * already is (DONE is not called).  The proxy holds the reporting
     * call's answer until then, so that a call its client makes next is
     * decided on the report, wherever it is decided.
     */
    int (*sync)(struct sl_store *store, const struct sl_upstream_conf *upstream,
                const struct sl_hit *hit, uint64_t remaining, int64_t age_us,
                sl_store_done_cb done, void *arg);
    /*
     * The provider says the call of LEASE cost ACTUAL units in HIT's rule
     * (a rule with "settle"): the units it was recorded with become
     * ACTUAL, once.  Lower: the difference is given back (in a window, the
     * call's own newest entries, or entries sent before it where they
     * cannot be told apart: the later ones stay, the safe side); higher:
     * the difference is logged now.  A call never sent is not settled.
     * The lease stays the caller's.  Returns 1 when DONE (may be NULL)
     * has been or will be called once the settlement is in force for
     * every later decision (a shared store: when it has applied it, or
     * given up), or 0 when it already is (DONE is not called), as with
     * sync: the proxy holds the end of the call's answer until then.
     */
    int (*settle)(struct sl_store *store, struct sl_lease *lease,
                  const struct sl_hit *hit, uint64_t actual,
                  sl_store_done_cb done, void *arg);
    void (*tick)(struct sl_store *store);
    /* Run due timers; return the next deadline (ms, CLOCK_MONOTONIC) or -1.
     * May be NULL (no timers). */
    int64_t (*timers)(struct sl_store *store, int64_t now_ms);
    void (*destroy)(struct sl_store *store);
    /* Read every upstream's usage (see struct sl_snapshot).  Never takes
     * quota.  Returns 0 (CB has been or will be called) or a negative
     * code. */
    int (*snapshot)(struct sl_store *store, const struct sl_snapshot_req *req,
                    sl_snapshot_cb cb, void *arg);
    /* Is the store answering (Redis up, or its fallback in force)?  May be
     * NULL: always. */
    bool (*ready)(struct sl_store *store);
    /* Write now what must reach the store before the proxy answers a
     * client (a released concurrency slot: the client's next call, on
     * another worker's connection, must not be decided before it).  May be
     * NULL.  Call it between finishing transfers and answering clients. */
    void (*flush)(struct sl_store *store);
    /* Serve CONFIG, a newer generation of the configuration, from now on:
     * counts carry over for every upstream and rule whose name (and kind)
     * survive.  0, or -1 (out of memory: the old generation stays).  May
     * be NULL.  Calls matched under an older generation are answered
     * SL_VERDICT_STALE from then on. */
    int (*adopt)(struct sl_store *store, const struct sl_config *config);
    /* Now, in Unix µs, on the clock the store keeps time by: Redis's (as
     * estimated from its TIME) or the wall clock.  The usage history
     * stamps calls with it.  May be NULL: the wall clock. */
    int64_t (*wall)(struct sl_store *store);
    /* Read the usage history of the N rate rules RULES (sl_history.h) of
     * the last 24 hours as every instance sharing the store wrote it.
     * Returns 0 (CB has been or will be called) or a negative code.  May
     * be NULL: the store keeps no shared history (read the process's). */
    int (*history)(struct sl_store *store, const struct sl_rule *const *rules,
                   size_t n, sl_history_cb cb, void *arg);
};

struct sl_store {
    const struct sl_store_ops *ops;
};

/* Returns 0 (the callback has been or will be called) or a negative code. */
static inline int sl_store_decide(struct sl_store *s, const struct sl_check *c,
                                  sl_decide_cb cb, void *arg)
{
    return s->ops->decide(s, c, cb, arg);
}

static inline void sl_store_settle(struct sl_store *s, struct sl_lease *lease,
                                   const struct sl_hit *hit, uint64_t actual)
{
    if (lease != NULL && s->ops->settle != NULL)
        (void)s->ops->settle(s, lease, hit, actual, NULL, NULL);
}

/* sl_store_settle, telling DONE when the settlement is in force everywhere
 * (see struct sl_store_ops): 1, or 0 (in force now, DONE not called). */
static inline int sl_store_settle_then(struct sl_store *s, struct sl_lease *lease,
                                       const struct sl_hit *hit, uint64_t actual,
                                       sl_store_done_cb done, void *arg)
{
    if (lease == NULL || s->ops->settle == NULL)
        return 0;
    return s->ops->settle(s, lease, hit, actual, done, arg);
}

static inline void sl_store_commit(struct sl_store *s, struct sl_lease *lease)
{
    if (lease != NULL)
        s->ops->commit(s, lease);
}

static inline void sl_store_release(struct sl_store *s, struct sl_lease *lease)
{
    if (lease != NULL)
        (void)s->ops->release(s, lease, NULL, NULL);
}

/* sl_store_release, telling DONE when the slots are free everywhere (see
 * struct sl_store_ops): 1, or 0 (free now, DONE not called). */
static inline int sl_store_release_then(struct sl_store *s, struct sl_lease *lease,
                                        sl_store_done_cb done, void *arg)
{
    return lease != NULL ? s->ops->release(s, lease, done, arg) : 0;
}

static inline void sl_store_pause(struct sl_store *s,
                                  const struct sl_upstream_conf *u, int64_t us,
                                  const char *reason)
{
    (void)s->ops->pause(s, u, us, reason, NULL, NULL);
}

/* sl_store_pause, telling DONE when the pause is in force everywhere
 * (see struct sl_store_ops): 1, or 0 (in force now, DONE not called). */
static inline int sl_store_pause_then(struct sl_store *s,
                                      const struct sl_upstream_conf *u, int64_t us,
                                      const char *reason, sl_store_done_cb done,
                                      void *arg)
{
    return s->ops->pause(s, u, us, reason, done, arg);
}

static inline int sl_store_set_pause(struct sl_store *s,
                                     const struct sl_upstream_conf *u,
                                     enum sl_pause_action action, int64_t us,
                                     const char *reason, sl_pause_cb cb, void *arg)
{
    return s->ops->set_pause(s, u, action, us, reason, cb, arg);
}

static inline int sl_store_adopt(struct sl_store *s, const struct sl_config *c)
{
    return s->ops->adopt != NULL ? s->ops->adopt(s, c) : 0;
}

static inline void sl_store_flush(struct sl_store *s)
{
    if (s->ops->flush != NULL)
        s->ops->flush(s);
}

static inline int sl_store_snapshot(struct sl_store *s,
                                    const struct sl_snapshot_req *req,
                                    sl_snapshot_cb cb, void *arg)
{
    return s->ops->snapshot(s, req, cb, arg);
}

static inline void sl_store_sync(struct sl_store *s,
                                 const struct sl_upstream_conf *u,
                                 const struct sl_hit *hit, uint64_t remaining,
                                 int64_t age_us)
{
    (void)s->ops->sync(s, u, hit, remaining, age_us, NULL, NULL);
}

/* sl_store_sync, telling DONE when the report is in force everywhere
 * (see struct sl_store_ops): 1, or 0 (in force now, DONE not called). */
static inline int sl_store_sync_then(struct sl_store *s,
                                     const struct sl_upstream_conf *u,
                                     const struct sl_hit *hit, uint64_t remaining,
                                     int64_t age_us, sl_store_done_cb done,
                                     void *arg)
{
    return s->ops->sync(s, u, hit, remaining, age_us, done, arg);
}

static inline int64_t sl_store_wall(struct sl_store *s)
{
    return s->ops->wall != NULL ? s->ops->wall(s) : sl_time_wall_us();
}

/* Returns 0 (the callback has been or will be called), or a negative code
 * (-1; SL_STORE_NO_HISTORY: the store keeps none, read the process's). */
#define SL_STORE_NO_HISTORY (-2)
static inline int sl_store_history(struct sl_store *s, const struct sl_rule *const *rules,
                                   size_t n, sl_history_cb cb, void *arg)
{
    return s->ops->history != NULL ? s->ops->history(s, rules, n, cb, arg)
                                   : SL_STORE_NO_HISTORY;
}

/* Housekeeping (reclaiming idle state); call about ten times a second. */
static inline void sl_store_tick(struct sl_store *s) { s->ops->tick(s); }

static inline int64_t sl_store_timers(struct sl_store *s, int64_t now_ms)
{
    return s->ops->timers != NULL ? s->ops->timers(s, now_ms) : -1;
}

static inline void sl_store_destroy(struct sl_store *s)
{
    if (s != NULL)
        s->ops->destroy(s);
}

/* ---- rule matching ---- */

/* What the matcher needs to know about a call; no HTTP library types. */
struct sl_call {
    const char *method;     /* matched case-insensitively */
    /* The upstream path in sl_path's canonical form (lower-cased unless
     * the upstream's path_case is "sensitive"), no query. */
    const char *path;
    size_t path_len;
    /* Value of request header NAME, or NULL when absent. */
    const char *(*header)(void *ctx, const char *name);
    void *header_ctx;
    /* The path ended in '/' before canonicalization: a rule matches when
     * it matches either form, so neither spelling dodges it. */
    bool trailing_slash;
    /* Other readings of the same path (sl_path_read), matched as PATH is:
     * a rule that any reading matches is charged, once per distinct key.
     * NULL and 0 when the path reads only one way. */
    const struct sl_reading *more;
    size_t nmore;
};

/* One reading of a call's path, in the same form as sl_call's. */
struct sl_reading {
    const char *path;
    size_t path_len;
    bool trailing_slash;
};

/*
 * Fill CHECK with every rule of UPSTREAM that CALL falls under, under any
 * of its readings.  Returns 0, -1 when out of memory, or
 * SL_MATCH_TOO_MANY when the readings' distinct (rule, key) pairs do not
 * fit a check (CHECK is then empty).  Free with sl_check_clear().
 */
#define SL_MATCH_TOO_MANY (-100)
int sl_match(const struct sl_upstream_conf *upstream, const struct sl_call *call,
             struct sl_check *check);

/*
 * Match the raw upstream path REST (LEN bytes past the prefix, no query)
 * under every reading a server may make of it (sl_path.h, "Readings"):
 * sl_match() over them all.  HEADER and HEADER_CTX as in sl_call.
 * Returns 0, -1 when out of memory, SL_MATCH_TOO_MANY, or
 * SL_MATCH_BAD_PATH when a reading is refused (a dot segment, a bad
 * escape: the canonical form, checked first, refuses every such path).
 */
#define SL_MATCH_BAD_PATH (-101)
/* A rule's "header:NAME" cost is missing or out of range (check->bad_cost). */
#define SL_MATCH_BAD_COST (-102)
int sl_match_raw(const struct sl_upstream_conf *upstream, const char *method,
                 const char *rest, size_t len,
                 const char *(*header)(void *ctx, const char *name), void *header_ctx,
                 struct sl_check *check);

void sl_check_clear(struct sl_check *check);

/* ---- memory store ---- */

/* Monotonic microseconds; replaceable for tests. */
typedef int64_t (*sl_clock_fn)(void *arg);

/* The default sl_clock_fn: sl_time_mono_us(), ARG unused. */
int64_t sl_clock_monotonic(void *arg);


/*
 * An in-process store shared by all worker threads.  MEMORY_LIMIT bounds
 * the bytes of limit state.  CLOCK may be NULL for the monotonic clock.
 * Returns NULL when out of memory.
 */
struct sl_store *sl_store_memory_new(const struct sl_config *config,
                                     sl_clock_fn clock, void *clock_arg);

/* ---- Redis store ---- */

/* The worker's event loop, as a store sees it. */
typedef void (*sl_io_cb)(void *arg, bool readable, bool writable);

struct sl_loop {
    void *ctx;
    /* Watch FD (add, or change interest).  Returns 0 or -1.  A store may
     * watch several descriptors at once; each is identified by its fd. */
    int (*watch)(void *ctx, int fd, bool want_read, bool want_write,
                 sl_io_cb cb, void *arg);
    void (*unwatch)(void *ctx, int fd);
    /* Another instance freed room in bucket (RULE of UPSTREAM, KEY): held
     * calls waiting for it may ask again now.  May be NULL. */
    void (*room)(void *ctx, const struct sl_upstream_conf *upstream,
                 const struct sl_rule *rule, const char *key, size_t key_len);
};

/*
 * A Redis store for one worker: its own connection, driven by LOOP, used
 * only from that worker's thread.  LOCAL (may be NULL) is the memory store
 * used while Redis is unreachable with on_store_error "local"; it is shared
 * and not owned.  Connecting starts at the first sl_store_timers() call.
 */
struct sl_store *sl_store_redis_new(const struct sl_config *config,
                                    struct sl_store *local,
                                    const struct sl_loop *loop, int worker_id);

/*
 * Write HISTORY's calls (the process's, sl_history.h) to Redis, where the
 * calls of every instance sharing it add up: at most one script run per
 * rate rule every SL_REDIS_HISTORY_EVERY_MS, off any call's path; APPS
 * names the app ids (for the history, and for calls put back after Redis
 * lost data).  HISTORY on one worker's store only (one writer per
 * process; NULL on the others); both stay the caller's and must outlive
 * STORE.
 */
void sl_store_redis_history(struct sl_store *store, struct sl_history *history,
                            const struct sl_apps *apps);

/* Is this process's Redis store in an outage (any worker)?  *SINCE_MS
 * (may be NULL): wall-clock ms when it began. */
bool sl_store_redis_down(int64_t *since_ms);

/* Redis failures (link losses, refused scripts) since the process began. */
uint64_t sl_store_redis_errors(void);

static inline bool sl_store_ready(struct sl_store *s)
{
    return s->ops->ready == NULL || s->ops->ready(s);
}

/*
 * Log the call of CHECK in every rate bucket of MEMORY (a memory store)
 * at its clock's now, without deciding: a Redis store mirrors the calls
 * its instance sends, so that its local fallback starts from what this
 * instance really spent.  A full bucket is left as it is.
 */
void sl_store_memory_record(struct sl_store *memory, const struct sl_check *check);

/* ---- the memory store's state, for the state file (sl_state.c) ---- */

struct sl_window;

/* One bucket handed out by sl_store_memory_export(): a rate bucket (WIN
 * its log, PAUSED_UNTIL 0) or the upstream's pause (WIN NULL).  Called
 * with the table's lock held: copy what is needed and return 0 (or -1 to
 * stop). */
typedef int (*sl_mem_export_cb)(void *arg, const struct sl_upstream_conf *up,
                                const struct sl_rule *rule, const char *key,
                                size_t key_len, const struct sl_window *win,
                                int64_t paused_until, const char *reason);

/* Every non-empty rate window and running pause of MEMORY.  Returns 0 or
 * the callback's -1. */
int sl_store_memory_export(struct sl_store *memory, sl_mem_export_cb cb, void *arg);

/*
 * Log N calls sent at TIMES (the store's clock, ascending), of apps TAGS,
 * in bucket (RULE, KEY) of MEMORY: those still inside the rule's span, at
 * most its limit (the newest).  Returns how many were logged, or -1
 * (memory_limit, OOM).
 */
int sl_store_memory_import(struct sl_store *memory, const struct sl_upstream_conf *up,
                           const struct sl_rule *rule, const char *key,
                           size_t key_len, const int64_t *times,
                           const uint16_t *tags, uint32_t n);

/* One rate bucket a sent call was logged in, and the stamp it got. */
struct sl_mem_sent_slot {
    const struct sl_rule *rule;
    const char *key;
    size_t key_len;
    int64_t at;             /* the store's clock */
};

/* A call of APP to UP was sent and logged in N rate buckets.  Called
 * under the table's lock, from any worker thread: be quick, take no
 * store lock. */
typedef void (*sl_mem_sent_fn)(void *arg, const struct sl_upstream_conf *up,
                               uint16_t app, const struct sl_mem_sent_slot *slots,
                               size_t n);

/* Tell FN (NULL: nobody) of every call MEMORY logs as sent from now on.
 * Set it before workers start, clear it after they stopped. */
void sl_store_memory_on_sent(struct sl_store *memory, sl_mem_sent_fn fn, void *arg);

/* Does MEMORY run on CLOCK_MONOTONIC (not a test's clock)?  Its stamps
 * then mean the same in every process of this boot. */
bool sl_store_memory_monotonic(struct sl_store *memory);

/* UPSTREAM's pause in MEMORY: the time left (0: none) and, when there is
 * one, how long ago it was last set or changed (*SET_AGO_US; else
 * INT64_MAX).  Any worker thread. */
int64_t sl_store_memory_pause_left(struct sl_store *memory, const struct sl_upstream_conf *up,
                                   int64_t *set_ago_us);

/* The memory store's clock now (µs). */
int64_t sl_store_memory_now(struct sl_store *memory);

/* Bytes of limit state held now (for tests and stats). */
uint64_t sl_store_memory_bytes(struct sl_store *store);

/* Buckets held now (for tests and stats). */
size_t sl_store_memory_keys(struct sl_store *store);

#endif
