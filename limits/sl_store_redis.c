/*
 * sl_store_redis — one quota shared exactly by every sluice instance.
 *
 * Each worker thread owns one of these: a connection (the main link) and
 * a second one subscribed to room notices (the subscriber link), each an
 * sl_redis_link (sl_redis_link.h: the socket, TLS, AUTH and SELECT, its
 * own deadline) driven by the worker's event loop through struct sl_loop,
 * so every reply is handled on the thread that asked.  Many commands are
 * in flight on the main link at once (pipelining); replies arrive in
 * order, so the FIFO of pending operations below is the bookkeeping
 * (batches, undos, setup) and the store's own deadline: when the oldest
 * pending operation is older than `store_timeout`, the store gives the
 * link up itself, writing an undo behind every unanswered batch first,
 * then frees it (every pending operation is answered with a NULL reply
 * and falls back), and connects again with backoff.  The link's deadline,
 * a millisecond later, only bounds connecting and backs the store's up.
 *
 * Decisions.  All rules a call matches go to one Lua script run (the
 * scripts are files in limits/lua/, see sl_redis_lua.h); calls
 * decided in one loop pass are batched per upstream into one run (one round
 * trip per decision, however many calls share it).  Phase one looks at
 * every bucket and writes nothing; phase two takes room in all of them.
 * A run reads each bucket once: the calls after the first to a bucket
 * reuse what the run learnt of it (only the run writes meanwhile, and its
 * TIME is fixed), and commits to one bucket are one LPUSH.
 * Time is Redis's TIME inside the scripts: instances' clocks never matter.
 * On a Redis Cluster an upstream whose rules all count `per` one header is
 * split into tenant groups (sl_redis_groups.h), each a slot of its own:
 * batches, commits, heartbeats and repairs are then kept per unit (a
 * group, or an upstream whole) instead of per upstream.
 *
 * Rate buckets, three keys with the upstream's hash tag:
 *   r  LIST of send times (µs of Redis time), newest at the head, at most
 *      `limit` long (but after a reload that lowered the limit under calls
 *      already admitted), ordered (a stamp is never earlier than the head);
 *   v  ZSET of reservations: member = the call, score = when it lapses;
 *   s  HASH, rules with `sync` only: the provider's last usage report.
 * An allowed call gets a *reservation* (ZADD v), not a log entry: it counts
 * from the decision on, and is logged only when its request is actually
 * sent (ops->commit, at libcurl's PREREQFUNCTION), so the window runs on the
 * clock that counts, the provider's.  A call fits iff the entries in
 * (now - span, now] plus the live reservations are fewer than `limit`
 * (span = window + the upstream's margin): with m = limit - reservations,
 * iff the list is shorter than m or its m-th newest entry has left the
 * span; O(1) (ZCARD, LLEN, LINDEX).  Commits made in one loop pass are
 * written together, inside the upstream's decision batch of that pass if
 * there is one: each removes its reservation and, only if it was still
 * there, LPUSHes its stamp -- Redis TIME minus the local delay between
 * sl_store_commit() and the moment the batch was written, so never earlier
 * than the real send (decisions pop stale entries from the tail).  A
 * reservation whose time lapses uncommitted (its instance died between
 * decision and send, or the commit was lost) is
 * turned, by the next script that sees it, into a log entry stamped then:
 * it counts as sent, the safe side.  The lapse time is connect_timeout +
 * 2 store_timeout + 1 s after the decision: the proxy sends within
 * connect_timeout (+ 1 s) of the decision or not at all, and the commit
 * reaches Redis within one store_timeout after that or the link is
 * declared dead.
 *
 * Concurrency buckets (c) are sorted sets of leases whose score is their
 * expiry, renewed by the holder every concurrency_lease/3, so the slots of
 * an instance that died come back by themselves.  The pause bucket (p) is a
 * string holding the time until which the provider (or an operator) asked
 * us to stop; w says why, marked when an operator set it.
 * Every key has a TTL set by the scripts, so idle keys disappear.
 *
 * Given-up decisions are never recorded.  A batch carries a deadline in
 * Redis time: (local time it is written + store_timeout) + offset_low,
 * where offset_low is a lower bound of (Redis clock - local monotonic
 * clock), learned from TIME at connect and from the `now` every script
 * returns (offset_low = redis_now - local time the reply was received,
 * aged by 1 ms per second for clock drift).  The deadline is therefore never
 * later, in Redis time, than the moment this instance gives the batch up;
 * a script that runs past it (Redis was stopped, busy, or the network
 * stalled) writes nothing and answers "expired".  The last gap -- a script
 * that ran in time but whose reply comes back too late -- is closed by an
 * undo: when the link is given up, every unanswered batch's members are
 * removed again by a script written behind it on the same connection
 * (Redis runs a connection's commands in order, so the undo runs after the
 * decision, if that ever runs).  Pause and sync compute their effect from
 * min(TIME, deadline), so running late neither stretches a pause nor moves
 * a report's cutoff past the real send.  Commit and release are safe late:
 * a commit stamped late keeps its call in the window longer (stricter), and
 * a commit that finds its reservation already turned into an entry logs
 * nothing more; a release only removes this call's own members, so running
 * late only holds room longer.  Commits, releases and pauses that could
 * not be sent while Redis was unusable are owed and sent when it answers
 * again (bounded; past the bound, reservations and leases lapse by
 * themselves, on the safe side).
 *
 * Sync.  ops->sync stores the report (left = reported room minus the calls
 * logged after the reporting call, `sent` = calls committed since, `until`
 * = its send time + span, `probe`); decisions subtract `sent` and the live
 * reservations from `left`: O(1) whatever the limit.  Counting the calls
 * logged after the reporting call walks only the list entries newer than
 * the cutoff, which is the send time minus store_timeout (one call counted
 * twice is the safe side).  While a report leaves no room, one call per
 * sync_probe goes through to learn the provider's count again.
 *
 * Room notices.  When a release frees a concurrency slot of a full bucket,
 * cancels a reservation, a report gives room back, or an operator ends a
 * pause sooner (its p key is published), the script PUBLISHes
 * the bucket's key on `<store_prefix>room`; every worker of every instance
 * is subscribed and tells its proxy (sl_loop.room), so calls held for that
 * bucket ask again at once instead of polling.  The subscriber link's
 * failures never affect decisions.
 *
 * The usage history.  Every instance counts the calls it sends per rule,
 * minute and app in the process's sl_history; one worker per process (the
 * one given it by sl_store_redis_history) writes what is new there every
 * SL_REDIS_HISTORY_EVERY_MS, one script run per rule with new counts
 * (never a round trip per call), into a hash per rule and minute (key type
 * y, the minute as the per value, fields app names, TTL 25 hours) with
 * HINCRBY, so every instance's calls add up in one history.  A hash keeps
 * at most SL_REDIS_HISTORY_FIELDS app names; further apps' calls count
 * under "other".  Minutes are on this worker's estimate of Redis's clock
 * (sl_redis_est_now), so instances' clocks do not matter.  Counts stay in
 * the process's history while Redis is away and are written when it
 * answers; a write lost with its connection is lost (a history, not a
 * limit).  The page reads one rule with one script run that walks its
 * 1,440 minute hashes (keys built in the script from the rule's base key,
 * which carries the upstream's hash tag).
 *
 * When Redis cannot answer, on_store_error decides: "local" enforces the
 * same rules in this process's memory store, "deny" answers UNAVAILABLE,
 * "allow" forwards uncounted.  The outage is logged once per process (not
 * per call, not per worker), and so is the recovery.
 *
 * What "local" guarantees.  Every call this instance sends through Redis is
 * also recorded in the memory store (at commit, on the local clock), and
 * the memory store grants each limit times local_share (rounded down)
 * while it stands in for Redis.  So, while an instance cannot use Redis, a
 * call it decides locally fits only if its own calls in the span before it
 * -- sent through Redis or locally -- are fewer than
 * f = floor(local_share x limit): in any window, an instance that is in an
 * outage sends at most f calls, counting the calls it sent through Redis in
 * that window (one that already sent more than f through Redis sends
 * nothing more until they leave the window).  With N instances and
 * local_share <= 1/N, the fleet stays within the limit in every window
 * that lies inside the outage (N x f <= limit).  A window that spans the
 * outage's start may also hold the other instances' calls made through
 * Redis before it: at most limit + (N - 1) x f < 2 x limit in all.  Calls
 * sent locally are logged in Redis once it answers again, stamped at their
 * send (or at the list's newest entry, if later): each instance writes its
 * owed entries on its first answer from Redis (within about a second of
 * Redis answering again, the reconnection backoff), so windows that span
 * the outage's end are exact from then on for the calls Redis decides.
 * Owed entries are best effort: an instance that dies before Redis comes
 * back, or owes more than SL_REDIS_OWED_MAX, loses them.  (The memory log
 * is kept whatever on_store_error says: it is also what is put back when
 * Redis loses data, see below.)  Instances cut off
 * from Redis while others are not (a partition) each add up to f per window
 * on top of what Redis grants.  "deny" sends nothing while Redis is away;
 * "allow" sends without counting, in Redis or locally.
 *
 * When Redis loses data (a flush, a restart without persistence, a
 * failover, eviction), sl_redis_repair.c's fleet puts every instance's
 * calls back before anything is decided again: each decision run reads
 * the upstream's marker (the last KEYS) and answers "lost" without it or
 * during a repair phase; the calls then wait in r->waiting until this
 * worker's heartbeat (SL_OP_FLEET) sees the phase over.  A worker that
 * sees a phase sends its repair (SL_OP_REPAIR).  A new connection's
 * decisions wait for its first heartbeat, which sees a new run_id.
 */
#include "sl_store.h"

#include "sl_apps.h"
#include "sl_buf.h"
#include "sl_duration.h"
#include "sl_history.h"
#include "sl_log.h"
#include "sl_redis_cluster.h"
#include "sl_redis_groups.h"
#include "sl_redis_link.h"
#include "sl_redis_lua.h"
#include "sl_redis_repair.h"
#include "sl_redis_sentinel.h"
#include "sl_time.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define SL_REDIS_BACKOFF_MIN_MS 50
#define SL_REDIS_BACKOFF_MAX_MS 1000
/* At shutdown, what is queued (commits, releases, undos) gets this long to
 * be written before the link is closed. */
#define SL_REDIS_CLOSE_WAIT_MS 100
#define SL_REDIS_BATCH_MAX 32       /* calls decided by one script run */
#define SL_REDIS_OWED_MAX 10000     /* leases kept for owed commits/releases */
/* Commits wait for the next decision batch of their upstream to ride in,
 * for at most this long (and at most store_timeout), or until this many
 * wait: a run of its own costs Redis as much as a decision (see
 * sl_redis_flush_all). */
#define SL_REDIS_COMMIT_HOLD_US 10000
#define SL_REDIS_COMMIT_HOLD_MAX 256
#define SL_REDIS_UNDO_MAX 1000      /* batches to undo on the next connection */
#define SL_REDIS_SNAP_CANDIDATES 1000 /* `per` buckets a snapshot looks at */
#define SL_REDIS_MEMBER_MAX 160     /* base:n|app */
#define SL_REDIS_CLOCK_REFRESH_US (2 * SL_USEC_PER_SEC)
/* The usage history (see above): how often a worker writes it, how long a
 * minute's hash lives (24 h shown, plus an hour of slack for clock
 * estimates), app names per minute hash, and counts written per run. */
#define SL_REDIS_HISTORY_EVERY_MS 2000
#define SL_REDIS_HISTORY_TTL_MS (25LL * 3600 * 1000)
#define SL_REDIS_HISTORY_FIELDS 12
#define SL_REDIS_HISTORY_BATCH 1024
/* Bound on the drift between Redis's clock and ours: 1 ms per second. */
#define SL_REDIS_DRIFT_DIV 1000

/* ---- Lua ----
 *
 * The scripts are files under limits/lua/ (sl_redis_lua.h): each opens
 * with its KEYS, ARGV and reply; sl_redis_lua[] holds them whole. */

/* ---- types ---- */

enum sl_redis_state {
    SL_REDIS_DOWN,          /* no link; reconnect at reconnect_at_ms */
    SL_REDIS_RESOLVING,     /* no link; the Sentinels are asked for the primary */
    SL_REDIS_CONNECTING,    /* a link, not yet through its handshake */
    SL_REDIS_UP,            /* the link answered its handshake */
};

enum sl_redis_op_kind {
    SL_OP_SETUP,            /* SCRIPT LOAD */
    SL_OP_CLOCK,            /* TIME */
    SL_OP_ROLE,             /* ROLE: a Sentinel's primary is one */
    SL_OP_DECIDE,
    SL_OP_SCRIPT,           /* commit, release, renew, pause, sync */
    SL_OP_SNAPSHOT,         /* one upstream of a usage snapshot */
    SL_OP_HISTORY,          /* one rule of a history read */
    SL_OP_SET_PAUSE,        /* an operator's action on a pause */
    SL_OP_FLEET,            /* a heartbeat of one upstream (fleet.lua) */
    SL_OP_REPAIR,           /* putting calls back (repair.lua) */
    SL_OP_COMMAND,          /* a plain command on one key (its first argument) */
};

struct sl_redis;

/* Arguments of a command, copied into one buffer. */
struct sl_args {
    struct sl_buf bytes;    /* the arguments, end to end */
    struct sl_buf ends;     /* size_t each: argument i ends at ends[i] */
    size_t n;               /* arguments */
    bool unbuildable;       /* one could not be built (too long, too many
                             * rules): do not send; memory is the buffers' */
};

/* One connection: the main link or the subscriber.  The link (socket,
 * TLS, AUTH, SELECT, its own deadline) is sl_redis_link's; this is what
 * the store keeps around it. */
struct sl_redis_conn {
    struct sl_redis *r;
    bool sub;               /* the subscriber link */
    struct sl_redis_link *link;     /* owned; NULL while down */
    /* redis-cluster://, the main connection: a link per primary and the
     * slot map (sl_redis_cluster.h) instead of LINK; owned, NULL while
     * down.  The sl_conn_* functions below use whichever there is. */
    struct sl_redis_cluster *cl;
    size_t seed_at;         /* cluster: the seed to try first next time */
    enum sl_redis_state state;
    /* Inside sl_redis_link_free(): the NULL replies it hands out are for
     * commands this store gave up itself (their undo, if any, is written). */
    bool freeing;
    /* Inside sl_redis_fail(): a cluster link that dies while it writes
     * the undos calls it again, which has nothing more to do. */
    bool failing;
    int64_t reconnect_at_ms;
    int backoff_ms;
    bool resolved;          /* main, Sentinel: connect to r->primary now */
};

/* One command in flight on the main link.  Owned by the FIFO until its
 * reply. */
struct sl_redis_op {
    struct sl_redis_op *next;       /* FIFO, or a chain of pending batches */
    struct sl_redis *r;
    enum sl_redis_op_kind kind;
    int64_t deadline_us;            /* local give-up time */
    char *sha_dst;                  /* SL_OP_SETUP: where SCRIPT LOAD's SHA goes */
    int script;                     /* SL_LUA_*, for script ops */
    bool eval;                      /* sent with the script body */
    struct sl_args keys, args;      /* kept for a resend after NOSCRIPT */
    struct sl_redis_snap *snap;     /* SL_OP_SNAPSHOT: what it fills */
    size_t upstream;                /* ... for this upstream's unit (below) */
    struct sl_redis_hist *hist;     /* SL_OP_HISTORY: what it fills */
    size_t index;                   /* ... its view */
    int64_t since;                  /* SL_OP_REPAIR: the phase it answers */
    size_t group;                   /* fleet and snapshot ops: the tenant group */
    /* SL_OP_SET_PAUSE: one group's run of an operator's action (FAN:
     * the action, told once every group's run answered) */
    struct sl_redis_fan *fan;
    /* SL_OP_SCRIPT of a sync or pause: told once the script has run (or
     * was given up), when the op is freed (sl_redis_op_free) */
    sl_store_done_cb done;
    void *done_arg;
};

/* A script sent to every tenant group of an upstream (a pause), told once
 * when the last run is done: DONE, or (an operator's action) PAUSE_CB
 * with the groups' answers merged in CH, or ERROR if any run failed. */
struct sl_redis_fan {
    size_t left;                    /* runs not yet done */
    sl_store_done_cb done;
    void *arg;
    /* an operator's action: its answer merged over the groups (changed
     * in any; the longest pause before and after), told to PAUSE_CB and
     * followed by the local store once every group answered */
    struct sl_redis *r;
    sl_pause_cb pause_cb;
    void *pause_arg;
    const char *error;
    bool partial;                   /* some group's run was not written */
    struct sl_pause_change ch;
    const struct sl_upstream_conf *up;
    enum sl_pause_action action;
    int64_t us;
    char reason[96];                /* marked, as stored */
};

/* A history read being gathered: one script run per rule. */
struct sl_redis_hist {
    struct sl_hist_view *views;     /* owned until handed to cb */
    size_t n;
    size_t pending;                 /* runs not yet answered */
    const char *error;              /* the first failure, or NULL */
    sl_history_cb cb;
    void *arg;
};

/* A usage snapshot being gathered: one script run per unit (an upstream
 * with tenant groups: one per group, merged). */
struct sl_redis_snap {
    struct sl_snapshot *snap;       /* owned until handed to cb */
    unsigned top;                   /* busiest buckets kept per rule */
    size_t pending;                 /* runs not yet answered */
    const char *error;              /* the first failure, or NULL */
    sl_snapshot_cb cb;
    void *arg;
};

/* One call of a decision batch. */
struct sl_redis_call {
    const struct sl_check *check;   /* the caller's until cb */
    sl_decide_cb cb;
    void *arg;
};

/* A call waiting for a repair phase to end (sl_redis_repair.c). */
struct sl_redis_waiting {
    struct sl_redis_waiting *next;
    struct sl_redis_call call;
    int64_t since_us;               /* local µs: when it began to wait */
};

/* The calls of one upstream decided by one script run. */
struct sl_redis_batch {
    struct sl_redis_op op;          /* first: a batch is an op */
    const struct sl_upstream_conf *up;
    bool grouped;                   /* UP has tenant groups: keys of GROUP */
    size_t group;
    size_t ncalls;
    struct sl_redis_call calls[SL_REDIS_BATCH_MAX];
    char base[48];                  /* members are base:1, base:2, ... */
};

/*
 * What one allowed call holds (a struct sl_lease to callers).  It copies
 * the call's rate and concurrency hits (the caller's check may be freed
 * first) for commits, releases, renewals and the local mirror.  Owned by
 * the caller until sl_store_release(); then by the store while it still
 * owes Redis a commit or a release, else freed.
 */
struct sl_redis_lease {
    struct sl_redis_lease *prev, *next;   /* r->leases, or r->owed */
    bool listed;                          /* on one of them */
    bool released;                        /* on r->owed: the store's */
    struct sl_lease *local;               /* decided locally: its lease */
    const struct sl_upstream_conf *up;
    bool grouped;                         /* its keys are tenant group GROUP's */
    size_t group;
    bool committed;                       /* sl_store_commit() was called */
    bool commit_owed;                     /* ... not yet written to Redis */
    bool in_batch;                        /* in r->commits[its unit] */
    bool release_owed;                    /* release not yet written */
    bool has_rate, has_conc;
    uint64_t settled;                     /* hits settled (bit = index) */
    int64_t commit_us;                    /* local time of the commit */
    char member[SL_REDIS_MEMBER_MAX];     /* "" when decided locally */
    char app[SL_APP_NAME_MAX + 1];        /* the caller's app */
    uint16_t app_id;                      /* ... its id, for the mirror */
    size_t nhits;
    struct sl_hit hits[];                 /* keys stored after the array */
};

/* Commits made in this loop pass, per upstream. */
struct sl_redis_commits {
    struct sl_redis_lease **leases;       /* owned array, not the leases */
    size_t n, cap;
    int64_t since_us;                     /* when the first of them came */
};

struct sl_redis {
    struct sl_store base;
    const struct sl_config *config;
    struct sl_store *local;               /* shared memory store, not owned */
    struct sl_loop loop;
    int worker_id;
    struct sl_redis_conn main;            /* decisions and updates */
    struct sl_redis_conn sub;             /* SUBSCRIBE <prefix>room */
    /* redis-sentinel://: who finds the primary, and where it was found
     * (both links go there; the main link asks again each time it
     * connects) */
    struct sl_redis_sentinel *sentinel;
    char primary_host[256];               /* "" until found */
    int primary_port;
    char sub_host[256];                   /* where the subscriber connected */
    int sub_port;
    char switch_host[256];                /* +switch-master's new primary, */
    int switch_port;                      /* until an ask names it (0: none) */
    bool not_primary;                     /* ROLE or READONLY said "replica" */
    bool switched;                        /* +switch-master for our primary */
    char switched_to[300];
    bool outage;                          /* this worker counts as down */
    size_t setup_left;                    /* connection set-up replies to come */
    struct sl_redis_op *fifo_head, *fifo_tail;
    char sha[SL_LUA_COUNT][41];           /* "" unknown */
    char channel[128];                    /* <prefix>room */
    /* offset_low: (Redis µs - local µs) is at least
     * off_value - (now - off_at) / SL_REDIS_DRIFT_DIV */
    bool have_offset;
    int64_t off_value, off_at;
    int64_t last_sample_us;
    bool clock_asked;                     /* a TIME is in flight */
    uint64_t counter;                     /* for unique members */
    char instance[24];
    struct sl_redis_lease *leases;        /* the callers' leases */
    struct sl_redis_lease *owed;          /* released, still owing Redis */
    size_t nowed;                         /* leases that owe something */
    struct sl_redis_op *undo;             /* undos for the next connection */
    size_t nundo;
    /* What this worker keeps per upstream is kept per unit: an upstream
     * with tenant groups (sl_redis_groups.h) is SL_REDIS_GROUPS units,
     * each decided, committed, beaten and repaired on its own; index
     * u * stride + g (stride: SL_REDIS_GROUPS + 1 on a cluster, the last
     * for an upstream without groups; else 1). */
    size_t stride;
    bool *grouped;                        /* per upstream of CONFIG */
    struct sl_redis_batch **pending;      /* per unit: batches being built */
    /* Units with a batch or commits to write at the end of the pass
     * (two lists swapped while flushing; is_dirty says who is on one). */
    size_t *dirty, *dirty_spare, ndirty;
    bool *is_dirty;
    struct sl_redis_commits *commits;     /* per unit */
    int64_t *owed_pause_until;            /* per upstream, local µs; 0: none */
    int64_t next_renew_ms;
    int64_t last_error_log_ms;
    uint64_t expired;                     /* batches Redis answered "expired" */
    bool flush_now;                       /* a slot was released: write now */
    bool flushing, flush_again, flush_force;  /* sl_redis_flush_all running */
    size_t nlive;                         /* leases on r->leases */
    struct sl_history *history;           /* the process's, to write; or NULL */
    const struct sl_apps *apps;           /* ... naming its app ids */
    int64_t next_history_ms;              /* the next write */
    struct sl_fleet fleet;                /* heartbeats, repair phases, per unit */
    /* Calls waiting for their upstream's repair phase to end, oldest
     * first (owned entries; the checks are the callers'). */
    struct sl_redis_waiting *waiting, **waiting_tail;
};

/* ---- a connection's transport: one link, or a cluster's links ---- */

static bool sl_conn_live(const struct sl_redis_conn *c)
{
    return c->link != NULL || c->cl != NULL;
}

/* Which transport CONN has now (to tell whether it changed). */
static const void *sl_conn_id(const struct sl_redis_conn *c)
{
    return c->cl != NULL ? (const void *)c->cl : (const void *)c->link;
}

/* KEY: the index of the command's first key in ARGV (-1: none), which
 * chooses a cluster's node. */
static int sl_conn_command(struct sl_redis_conn *c, int argc, const char **argv,
                           const size_t *lens, int key, sl_redis_reply_fn cb, void *privdata)
{
    if (c->cl != NULL)
        return sl_redis_cluster_command(c->cl, argc, argv, lens, key, cb, privdata);
    return sl_redis_link_command(c->link, argc, argv, lens, cb, privdata);
}

static int sl_conn_flush(struct sl_redis_conn *c)
{
    return c->cl != NULL ? sl_redis_cluster_flush(c->cl) : sl_redis_link_flush(c->link);
}

static int sl_conn_read(struct sl_redis_conn *c)
{
    return c->cl != NULL ? sl_redis_cluster_read(c->cl) : sl_redis_link_read(c->link);
}

static void sl_conn_cork(struct sl_redis_conn *c)
{
    if (c->cl != NULL)
        sl_redis_cluster_cork(c->cl);
    else
        sl_redis_link_cork(c->link);
}

static int sl_conn_uncork(struct sl_redis_conn *c)
{
    return c->cl != NULL ? sl_redis_cluster_uncork(c->cl) : sl_redis_link_uncork(c->link);
}

static int sl_conn_flush_wait(struct sl_redis_conn *c, int wait_ms)
{
    return c->cl != NULL ? sl_redis_cluster_flush_wait(c->cl, wait_ms)
                         : sl_redis_link_flush_wait(c->link, wait_ms);
}

static int64_t sl_conn_check(struct sl_redis_conn *c, int64_t now_ms)
{
    return c->cl != NULL ? sl_redis_cluster_check(c->cl, now_ms)
                         : sl_redis_link_check(c->link, now_ms);
}

/* Free CONN's transport (its commands are answered with NULL now). */
static void sl_conn_free(struct sl_redis_conn *c)
{
    struct sl_redis_link *link = c->link;
    struct sl_redis_cluster *cl = c->cl;

    c->link = NULL;
    c->cl = NULL;
    if (cl != NULL)
        sl_redis_cluster_free(cl);
    else
        sl_redis_link_free(link);
}

/* Workers of this process currently in an outage (log once per outage). */
static _Atomic int sl_redis_down_workers;
/* Per unit (by index): a heartbeat of this process found its fleet's
 * marker in place, no phase running.  A phase opened after that is Redis
 * losing data; one opened before it, a Redis new to this upstream (or one
 * that lost data before this process first saw it). */
static _Atomic bool sl_redis_marker_seen[SL_MAX_UPSTREAMS * (SL_REDIS_GROUPS + 1)];

static void sl_redis_fail(struct sl_redis_conn *conn, const char *why);
static void sl_redis_load_scripts(struct sl_redis *r);
static void sl_redis_flush(struct sl_redis *r, size_t upstream);
static int64_t sl_redis_flush_all(struct sl_redis *r, bool force);
static void sl_redis_flush_commits(struct sl_redis *r, size_t upstream);
static void sl_redis_commit_args(struct sl_redis *r, size_t upstream,
                                 struct sl_args *keys, struct sl_args *args);
static void sl_redis_commits_written(struct sl_redis *r, size_t upstream,
                                     bool written);
static void sl_redis_settle_owed(struct sl_redis *r);
static void sl_redis_on_reply(struct sl_redis_link *link, redisReply *rep,
                              void *privdata);
static void sl_redis_set_pause_reply(struct sl_redis *r, struct sl_redis_op *op,
                                     const redisReply *rep);
static void sl_redis_log_error(struct sl_redis *r, const char *what,
                               const char *detail);

/*
 * One run of a read gathered from several (a snapshot per upstream, a
 * history per rule): true when REP is missing or an error (logged as
 * SCRIPT's), with *ERROR set to the first failure's sentence (REFUSED for
 * an error reply).  False: REP is a reply to read.
 */
static bool sl_redis_part_failed(struct sl_redis *r, const redisReply *rep,
                                 const char **error, const char *script,
                                 const char *refused)
{
    if (rep == NULL) {
        if (*error == NULL)
            *error = "redis did not answer";
        return true;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        sl_redis_log_error(r, script, rep->str);
        if (*error == NULL)
            *error = refused;
        return true;
    }
    return false;
}

static void sl_redis_snap_reply(struct sl_redis *r, struct sl_redis_op *op,
                                const redisReply *rep);
static void sl_redis_hist_reply(struct sl_redis *r, struct sl_redis_op *op,
                                const redisReply *rep);
static void sl_redis_write_history(struct sl_redis *r);
static void sl_redis_fallback(struct sl_redis *r, const struct sl_check *c,
                              sl_decide_cb cb, void *arg);
static void sl_redis_fleet_reply(struct sl_redis *r, struct sl_redis_op *op,
                                 const redisReply *rep);
static int sl_redis_decide(struct sl_store *store, const struct sl_check *c,
                           sl_decide_cb cb, void *arg);
static void sl_redis_wait(struct sl_redis *r, const struct sl_check *c,
                          sl_decide_cb cb, void *arg);
static bool sl_redis_usable(const struct sl_redis *r);
static bool sl_redis_finding_primary(const struct sl_redis *r);
static int sl_redis_adopt(struct sl_store *store, const struct sl_config *config);

static void sl_redis_mark_dirty(struct sl_redis *r, size_t unit)
{
    if (r->is_dirty[unit])
        return;
    r->is_dirty[unit] = true;
    r->dirty[r->ndirty++] = unit;
}

static int64_t sl_redis_now_us(void)
{
    return sl_time_mono_us();
}

static int64_t sl_redis_now_ms(void)
{
    return sl_redis_now_us() / 1000;
}

/* ---- Redis's clock ---- */

/* The lower bound of (Redis time - local time) at local time NOW. */
static int64_t sl_redis_offset(const struct sl_redis *r, int64_t now)
{
    return r->off_value - (now - r->off_at) / SL_REDIS_DRIFT_DIV;
}

/*
 * Redis said REDIS_NOW (before this reply was sent); it is now LOCAL_NOW
 * here, so REDIS_NOW - LOCAL_NOW is a lower bound of the offset.  A bound
 * much lower than the one kept means Redis's clock stepped back (or this
 * reply was slow): lowering it is always safe.
 */
static void sl_redis_learn_clock(struct sl_redis *r, int64_t redis_now,
                                 int64_t local_now)
{
    int64_t s = redis_now - local_now, cur;

    r->last_sample_us = local_now;
    if (!r->have_offset) {
        r->have_offset = true;
        r->off_value = s;
        r->off_at = local_now;
        return;
    }
    cur = sl_redis_offset(r, local_now);
    if (s > cur || s < cur - r->config->store_timeout_us) {
        r->off_value = s;
        r->off_at = local_now;
    }
}

/*
 * Calendar rule RULE's period at this worker's estimate of Redis's clock
 * (the wall clock until Redis has answered): its start and end, and the
 * next period's end, in µs.  The estimate is a lower bound: a script that
 * runs past *END moves on to [*END, *NEXT) itself.
 */
static int64_t sl_redis_est_now(const struct sl_redis *r)
{
    if (r->have_offset) {
        int64_t now = sl_redis_now_us();
        return now + sl_redis_offset(r, now);
    }
    return sl_time_wall_us();
}

static void sl_redis_period(const struct sl_redis *r, const struct sl_rule *rule,
                            int64_t *start, int64_t *end, int64_t *next)
{
    int64_t s2;

    sl_calendar_period(&rule->cal, sl_redis_est_now(r), start, end);
    sl_calendar_period(&rule->cal, *end, &s2, next);
}

/* How long rule RULE's entries must be kept from now: its span, or for a
 * calendar rule until the next period ends (plus the margin). */
static int64_t sl_redis_keep_us(const struct sl_redis *r, const struct sl_rule *rule)
{
    int64_t s, e, n;

    if (rule->kind != SL_RULE_RATE || !rule->calendar)
        return rule->span_us;
    sl_redis_period(r, rule, &s, &e, &n);
    return (n - s) + (rule->span_us - rule->window_us);
}

/* Deadline, in Redis time, for a command written now (0: none known). */
static int64_t sl_redis_deadline(const struct sl_redis *r, int64_t now)
{
    if (!r->have_offset)
        return 0;
    return now + r->config->store_timeout_us + sl_redis_offset(r, now);
}

/* The `now` a script reply starts with (integer, or an array's first). */
static void sl_redis_sample(struct sl_redis *r, const redisReply *rep)
{
    if (rep == NULL)
        return;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0)
        rep = rep->element[0];
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer > 0)
        sl_redis_learn_clock(r, rep->integer, sl_redis_now_us());
}

/* The answer to TIME: {seconds, microseconds}. */
static void sl_redis_sample_time(struct sl_redis *r, const redisReply *rep)
{
    int64_t t;

    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING)
        return;
    t = strtoll(rep->element[0]->str, NULL, 10) * SL_USEC_PER_SEC +
        strtoll(rep->element[1]->str, NULL, 10);
    sl_redis_learn_clock(r, t, sl_redis_now_us());
}

/* ---- outage bookkeeping ---- */

/* Failures seen talking to Redis, by every worker (for /metrics). */
static _Atomic uint64_t sl_redis_errors;

uint64_t sl_store_redis_errors(void)
{
    return atomic_load(&sl_redis_errors);
}

/* Wall-clock ms when this process's outage began (0: none). */
static _Atomic int64_t sl_redis_down_since_ms;

static int64_t sl_wall_ms(void)
{
    return sl_time_wall_us() / 1000;
}

bool sl_store_redis_down(int64_t *since_ms)
{
    int64_t since = atomic_load(&sl_redis_down_since_ms);

    if (since_ms != NULL)
        *since_ms = since;
    return atomic_load(&sl_redis_down_workers) > 0;
}

static void sl_redis_mark_down(struct sl_redis *r, const char *why)
{
    static const char *const policy[] = {
        "enforcing the same limits per instance in memory",
        "answering 503", "forwarding calls uncounted"};

    if (r->outage)
        return;
    r->outage = true;
    if (atomic_fetch_add(&sl_redis_down_workers, 1) == 0) {
        char addr[600];
        atomic_store(&sl_redis_down_since_ms, sl_wall_ms());
        sl_error("store: redis %s unreachable (%s); %s until it answers again",
                 sl_config_store_address(r->config, addr, sizeof(addr)), why,
                 policy[r->config->on_store_error]);
    }
}

static void sl_redis_mark_up(struct sl_redis *r)
{
    if (!r->outage)
        return;
    r->outage = false;
    if (atomic_fetch_sub(&sl_redis_down_workers, 1) == 1) {
        char addr[600];
        atomic_store(&sl_redis_down_since_ms, 0);
        sl_info("store: redis %s is back; limits are shared again",
                sl_config_store_address(r->config, addr, sizeof(addr)));
    }
}

/* ---- command arguments ---- */

static void sl_args_free(struct sl_args *a)
{
    sl_buf_free(&a->bytes);
    sl_buf_free(&a->ends);
    memset(a, 0, sizeof(*a));
}

/* Can A be sent: every argument built, no allocation failed? */
static bool sl_args_ok(const struct sl_args *a)
{
    return !a->unbuildable && sl_buf_result(&a->bytes) == 0 &&
           sl_buf_result(&a->ends) == 0;
}

/* Argument I of A (A is sl_args_ok) and its length. */
static const char *sl_args_at(const struct sl_args *a, size_t i, size_t *len)
{
    const size_t *ends = (const size_t *)(const void *)sl_buf_str(&a->ends);
    size_t start = i ? ends[i - 1] : 0;

    *len = ends[i] - start;
    return sl_buf_str(&a->bytes) + start;
}

/* Append one argument made of two pieces (P2 may be NULL). */
static void sl_args_add2(struct sl_args *a, const char *p1, size_t n1,
                         const char *p2, size_t n2)
{
    size_t end;

    sl_buf_add(&a->bytes, p1, n1);
    if (n2 > 0)
        sl_buf_add(&a->bytes, p2, n2);
    end = sl_buf_len(&a->bytes);
    sl_buf_add(&a->ends, &end, sizeof(end));
    a->n++;
}

static void sl_args_add(struct sl_args *a, const char *p, size_t n)
{
    sl_args_add2(a, p, n, NULL, 0);
}

static void sl_args_str(struct sl_args *a, const char *s)
{
    sl_args_add(a, s, strlen(s));
}

static void sl_args_int(struct sl_args *a, long long v)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%lld", v);
    sl_args_add(a, num, (size_t)n);
}

/* A leaky rule's leak, as the scripts read it: n calls per per_us µs. */
static void sl_args_leak(struct sl_args *a, const struct sl_rule *rule)
{
    sl_args_int(a, rule->leak.n);
    sl_args_int(a, rule->leak.per_us);
}

/* ---- units: an upstream, or one of its tenant groups ---- */

/* Does UP (of any generation) have tenant groups (sl_redis_groups.h)? */
static bool sl_redis_is_grouped(const struct sl_redis *r, const struct sl_upstream_conf *up)
{
    if (r->stride == 1)
        return false;
    if (up->config == r->config && up->index < r->config->nupstreams)
        return r->grouped[up->index];
    return sl_redis_groups(up, true) > 1;
}

/* UP's units: SL_REDIS_GROUPS with groups, else 1. */
static size_t sl_redis_ngroups(const struct sl_redis *r, const struct sl_upstream_conf *up)
{
    return sl_redis_is_grouped(r, up) ? SL_REDIS_GROUPS : 1;
}

/* The index of UP's unit: group G of UP when GROUPED, else UP whole. */
static size_t sl_redis_unit(const struct sl_redis *r, const struct sl_upstream_conf *up,
                            bool grouped, size_t g)
{
    return up->index * r->stride + (grouped ? g : r->stride - 1);
}

/* Is UNIT a tenant group (of whichever generation), not an upstream whole? */
static bool sl_redis_unit_is_group(const struct sl_redis *r, size_t unit)
{
    return r->stride > 1 && unit % r->stride != r->stride - 1;
}

/* The upstream index and the group of unit UNIT of CONFIG (false: no
 * such unit in it). */
static bool sl_redis_unit_of(const struct sl_redis *r, size_t unit, size_t *u, size_t *g)
{
    *u = unit / r->stride;
    *g = unit % r->stride;
    if (*u >= r->config->nupstreams)
        return false;
    return sl_redis_is_grouped(r, &r->config->upstreams[*u]) ==
           sl_redis_unit_is_group(r, unit);
}

/* The tenant group of call C's buckets: its first `per` value's (an
 * upstream with groups counts every rule per that one value); 0 when it
 * falls under no `per` rule (only the pause, in every group). */
static size_t sl_redis_check_group(const struct sl_check *c)
{
    for (size_t i = 0; i < c->nhits; i++)
        if (c->hits[i].rule->per_kind != SL_PER_NONE)
            return sl_redis_group_of(c->hits[i].key, c->hits[i].key_len);
    return 0;
}

/* The group of a key: derived from its per value (the key of a `per`
 * rule's bucket), or the upstream's whole tag (the usage history). */
#define SL_REDIS_DERIVE SIZE_MAX

/*
 * Append the key "<prefix><tag>:<type>:<len>:<rule>:<per>".  TYPE is
 * r (rate log), v (reservations), a (the apps of r's entries), s (sync
 * report), c (concurrency), p (pause), w (why paused) or, with an empty
 * per value, k (the index of a `per` rule's live buckets).  The tag is
 * the upstream's name in braces, a Redis Cluster hash tag, so all keys
 * of one upstream share a slot; or, for an upstream with tenant groups,
 * "{name#G}" (sl_redis_groups.h): G is the bucket's per value's group
 * (SL_REDIS_DERIVE), or given (the keys every group has: k, p, w, x and
 * the fleet's).  The rule's name carries its length, so a per value
 * cannot be mistaken for part of it.
 */
static void sl_args_key_g(struct sl_args *a, const struct sl_redis *r,
                          const struct sl_upstream_conf *up, size_t g,
                          const struct sl_rule *rule, char type, const char *per,
                          size_t per_len)
{
    char head[512], tag[96];
    bool grouped = sl_redis_is_grouped(r, up);
    int n;

    if (grouped && g == SL_REDIS_DERIVE) {
        if (rule->per_kind != SL_PER_NONE && type != 'y')
            g = sl_redis_group_of(per, per_len);
        else
            grouped = false;    /* the usage history: one tag */
    }
    if (sl_redis_tag(tag, sizeof(tag), up->name, grouped, g) < 0) {
        a->unbuildable = true;
        return;
    }
    n = snprintf(head, sizeof(head), "%s%s:%c:%zu:%s:", r->config->store_prefix, tag, type,
                 strlen(rule->name), rule->name);
    if (n < 0 || (size_t)n >= sizeof(head)) {
        a->unbuildable = true;
        return;
    }
    sl_args_add2(a, head, (size_t)n, per, per_len);
}

static void sl_args_key(struct sl_args *a, const struct sl_redis *r,
                        const struct sl_upstream_conf *up,
                        const struct sl_rule *rule, char type, const char *per,
                        size_t per_len)
{
    sl_args_key_g(a, r, up, SL_REDIS_DERIVE, rule, type, per, per_len);
}

/* Append the fleet's key "<prefix><tag>:<type>" of UP's group G
 * (sl_redis_repair.h: m the marker, f the members, k those that put
 * their calls back). */
static void sl_args_fleet_key(struct sl_args *a, const struct sl_redis *r,
                              const struct sl_upstream_conf *up, size_t g, char type)
{
    char key[512], tag[96];
    int n = sl_redis_tag(tag, sizeof(tag), up->name, sl_redis_is_grouped(r, up), g);

    if (n >= 0)
        n = snprintf(key, sizeof(key), "%s%s:%c", r->config->store_prefix, tag, type);
    if (n < 0 || (size_t)n >= sizeof(key)) {
        a->unbuildable = true;
        return;
    }
    sl_args_add(a, key, (size_t)n);
}

/* The bucket keys of HIT, in the order the scripts take them (G: the
 * call's tenant group, for the keys every group has). */
static size_t sl_args_hit_keys(struct sl_args *a, const struct sl_redis *r,
                               const struct sl_upstream_conf *up, size_t g,
                               const struct sl_hit *h)
{
    const struct sl_rule *rule = h->rule;

    switch (rule->kind) {
    case SL_RULE_RATE:
        sl_args_key(a, r, up, rule, 'r', h->key, h->key_len);
        sl_args_key(a, r, up, rule, 'v', h->key, h->key_len);
        sl_args_key(a, r, up, rule, 'a', h->key, h->key_len);
        if (rule->sync != SL_SYNC_NONE) {
            sl_args_key(a, r, up, rule, 's', h->key, h->key_len);
            return 4;
        }
        return 3;
    case SL_RULE_CONCURRENCY:
        sl_args_key(a, r, up, rule, 'c', h->key, h->key_len);
        if (rule->per_kind != SL_PER_NONE) {
            sl_args_key_g(a, r, up, g, rule, 'k', "", 0);
            return 2;
        }
        return 1;
    case SL_RULE_PAUSE:
        sl_args_key_g(a, r, up, g, rule, 'p', h->key, h->key_len);
        return 1;
    }
    return 0;
}

/* The h key (per-app counts) of HIT's rule when it has shares. */
static void sl_args_share_key(struct sl_args *k, const struct sl_redis *r,
                              const struct sl_upstream_conf *up,
                              const struct sl_hit *hit)
{
    if (hit->rule->nshares > 0)
        sl_args_key(k, r, up, hit->rule, 'h', hit->key, hit->key_len);
    if (hit->rule->leaky)   /* its level (never with shares) */
        sl_args_key(k, r, up, hit->rule, 'b', hit->key, hit->key_len);
}

/* A rate rule's shares for the decision script: the count, then app,
 * max, reserve per share. */
static void sl_args_shares(struct sl_args *a, const struct sl_rule *rule)
{
    sl_args_int(a, (long long)rule->nshares);
    for (size_t i = 0; i < rule->nshares; i++) {
        sl_args_str(a, rule->shares[i].app);
        sl_args_int(a, (long long)rule->shares[i].max);
        /* A reserve that is lent while its app is idle goes negative. */
        sl_args_int(a, rule->shares[i].lend ? -(long long)rule->shares[i].reserve
                                            : (long long)rule->shares[i].reserve);
    }
}

/* ---- FIFO of commands in flight ---- */

/* OP was written at local time NOW (µs). */
static void sl_redis_push(struct sl_redis *r, struct sl_redis_op *op, int64_t now)
{
    op->next = NULL;
    op->deadline_us = now + r->config->store_timeout_us;
    if (r->fifo_tail != NULL)
        r->fifo_tail->next = op;
    else
        r->fifo_head = op;
    r->fifo_tail = op;
}

static void sl_redis_pop(struct sl_redis *r, struct sl_redis_op *op)
{
    /* Replies come in order: OP is the head.  Be tolerant anyway. */
    struct sl_redis_op **pp = &r->fifo_head, *prev = NULL;

    while (*pp != NULL && *pp != op) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp == NULL)
        return;
    *pp = op->next;
    if (r->fifo_tail == op)
        r->fifo_tail = prev;
}

static void sl_redis_op_free(struct sl_redis_op *op)
{
    if (op->done != NULL) {
        sl_store_done_cb done = op->done;
        op->done = NULL;
        done(op->done_arg);
    }
    sl_args_free(&op->keys);
    sl_args_free(&op->args);
    free(op);
}

/*
 * Write OP on the main link: a plain command (ARGS only) for setup ops, or
 * EVALSHA/EVAL of its script with KEYS and ARGS.  Returns 0 (OP is in the
 * FIFO; its reply reaches sl_redis_on_reply) or -1 (nothing sent).
 */
static int sl_redis_send(struct sl_redis *r, struct sl_redis_op *op)
{
    size_t argc = 0, n = op->args.n + op->keys.n + 3;
    const char **argv = NULL;
    size_t *lens = NULL;
    char nkeys[24];
    int64_t now = sl_redis_now_us();
    int rc = -1, key = -1;

    if (!sl_conn_live(&r->main) || r->main.freeing || !sl_args_ok(&op->keys) ||
        !sl_args_ok(&op->args))
        return -1;
    argv = malloc(n * sizeof(*argv));
    lens = malloc(n * sizeof(*lens));
    if (argv == NULL || lens == NULL)
        goto out;
    if (op->kind == SL_OP_DECIDE || op->kind == SL_OP_SCRIPT ||
        op->kind == SL_OP_SNAPSHOT || op->kind == SL_OP_HISTORY ||
        op->kind == SL_OP_SET_PAUSE || op->kind == SL_OP_FLEET ||
        op->kind == SL_OP_REPAIR) {
        op->eval = op->eval || r->sha[op->script][0] == '\0';
        argv[argc] = op->eval ? "EVAL" : "EVALSHA";
        lens[argc] = strlen(argv[argc]);
        argc++;
        argv[argc] = op->eval ? sl_redis_lua[op->script] : r->sha[op->script];
        lens[argc] = strlen(argv[argc]);
        argc++;
        snprintf(nkeys, sizeof(nkeys), "%zu", op->keys.n);
        argv[argc] = nkeys;
        lens[argc++] = strlen(nkeys);
        if (op->keys.n > 0)
            key = (int)argc;   /* a cluster sends it to this key's primary */
    } else if (op->kind == SL_OP_COMMAND) {
        key = 1;
    }
    for (size_t i = 0; i < op->keys.n; i++, argc++)
        argv[argc] = sl_args_at(&op->keys, i, &lens[argc]);
    for (size_t i = 0; i < op->args.n; i++, argc++)
        argv[argc] = sl_args_at(&op->args, i, &lens[argc]);
    if (sl_conn_command(&r->main, (int)argc, argv, lens, key, sl_redis_on_reply, op) != 0)
        goto out;
    /* Stamped before the link stamped it: the store's deadline comes first
     * (see sl_redis_connect). */
    sl_redis_push(r, op, now);
    rc = 0;
out:
    free(argv);
    free(lens);
    return rc;
}

/* Send a script op whose reply only needs logging; frees it on failure. */
static void sl_redis_send_script(struct sl_redis *r, struct sl_redis_op *op)
{
    if (sl_redis_send(r, op) != 0)
        sl_redis_op_free(op);
}

static struct sl_redis_op *sl_redis_script_op(struct sl_redis *r, int script)
{
    struct sl_redis_op *op = calloc(1, sizeof(*op));

    if (op == NULL)
        return NULL;
    op->r = r;
    op->kind = SL_OP_SCRIPT;
    op->script = script;
    return op;
}

/* ---- connection life ---- */

/* CONN has no link any more: connect again after the backoff. */
static void sl_redis_schedule_reconnect(struct sl_redis_conn *conn)
{
    conn->link = NULL;
    conn->cl = NULL;
    conn->seed_at++;    /* a cluster's next try starts at the next seed */
    conn->state = SL_REDIS_DOWN;
    conn->reconnect_at_ms = sl_redis_now_ms() + conn->backoff_ms;
    conn->backoff_ms *= 2;
    if (conn->backoff_ms > SL_REDIS_BACKOFF_MAX_MS)
        conn->backoff_ms = SL_REDIS_BACKOFF_MAX_MS;
}

/* The link answered its handshake (AUTH, SELECT or a PING), or never will:
 * STATUS and REASON say why (Redis's own text for a refused AUTH, the
 * certificate's fault for TLS).  Every command queued on it has already
 * been answered with NULL. */
static void sl_redis_on_connect(struct sl_redis_link *link, int status,
                                const char *reason, void *arg)
{
    struct sl_redis_conn *conn = arg;

    if (status == SL_REDIS_LINK_OK) {
        conn->state = SL_REDIS_UP;
        /* The main link's backoff is reset once its set-up is answered by
         * a primary (sl_redis_on_reply): a replica that answers the
         * handshake is dropped and tried again no faster than the backoff. */
        if (conn->sub)
            conn->backoff_ms = SL_REDIS_BACKOFF_MIN_MS;
        return;
    }
    if (!conn->sub)
        sl_redis_mark_down(conn->r, reason != NULL ? reason : "connection failed");
    /* Freed once its callback returns (the link's rule); a cluster's
     * commands never reached a node (they wait for the map): given up. */
    if (conn->cl != NULL) {
        conn->freeing = true;
        sl_conn_free(conn);
        conn->freeing = false;
    } else {
        sl_redis_link_free(link);
    }
    sl_redis_schedule_reconnect(conn);
}

/* A link that was up went down (closed, reset, its own deadline passed);
 * every command it carried has been answered with NULL. */
static void sl_redis_on_disconnect(struct sl_redis_link *link, int status,
                                   const char *reason, void *arg)
{
    struct sl_redis_conn *conn = arg;

    (void)status;
    if (conn->cl != NULL) {
        /* One primary's link died (its commands are answered with NULL:
         * they owe their undos to the next connection); the others' may
         * still run theirs, so they are given up as the store gives a link
         * up, each undone behind itself. */
        sl_redis_fail(conn, reason != NULL ? reason : "connection closed");
        return;
    }
    if (!conn->sub)
        sl_redis_mark_down(conn->r, reason != NULL ? reason : "connection closed");
    sl_redis_link_free(link);
    sl_redis_schedule_reconnect(conn);
}

/* A setup command (no script); SHA_DST receives SCRIPT LOAD's answer.
 * Returns 0 (written), or -1. */
static int sl_redis_send_setup(struct sl_redis *r, enum sl_redis_op_kind kind,
                               int argc, const char **argv, char *sha_dst)
{
    struct sl_redis_op *op = calloc(1, sizeof(*op));

    if (op == NULL)
        return -1;
    op->r = r;
    op->kind = kind;
    op->sha_dst = sha_dst;
    for (int i = 0; i < argc; i++)
        sl_args_str(&op->args, argv[i]);
    if (sl_redis_send(r, op) != 0) {
        sl_redis_op_free(op);
        return -1;
    }
    return 0;
}

static void sl_redis_load_scripts(struct sl_redis *r)
{
    for (int i = 0; i < SL_LUA_COUNT; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", sl_redis_lua[i]};
        sl_redis_send_setup(r, SL_OP_SETUP, 3, argv, r->sha[i]);
    }
}

static void sl_redis_ask_clock(struct sl_redis *r)
{
    const char *argv[] = {"TIME"};

    r->clock_asked = sl_redis_send_setup(r, SL_OP_CLOCK, 1, argv, NULL) == 0;
}

static void sl_redis_on_message(struct sl_redis_link *link, redisReply *rep, void *arg);

/* The subscriber's SUBSCRIBE was confirmed (or the link died first: its
 * disconnect callback deals with that). */
static void sl_redis_on_subscribed(struct sl_redis_link *link, redisReply *rep,
                                   void *privdata)
{
    (void)link, (void)rep, (void)privdata;
}

static void sl_redis_connect(struct sl_redis_conn *conn);

/* The Sentinels' answer to the main link's ask (sl_redis_sentinel_ask):
 * connect there, or wait the backoff and ask again. */
static void sl_redis_on_primary(void *arg, const char *host, int port, const char *why)
{
    struct sl_redis *r = arg;

    if (r->main.state != SL_REDIS_RESOLVING)
        return;
    if (host == NULL) {
        sl_redis_mark_down(r, why);
        sl_redis_log_error(r, "the Sentinels' question", why);
        sl_redis_schedule_reconnect(&r->main);
        return;
    }
    /* A switch was announced: a Sentinel still naming another server
     * has not heard of it yet (the old primary may not be demoted yet,
     * and would take writes that are then lost).  Ask again. */
    if (r->switch_port != 0 && (strcmp(host, r->switch_host) != 0 || port != r->switch_port)) {
        char why2[600];
        snprintf(why2, sizeof(why2), "a Sentinel still names %s:%d after the switch to %s:%d",
                 host, port, r->switch_host, r->switch_port);
        sl_redis_sentinel_distrust(r->sentinel);
        sl_redis_mark_down(r, why2);
        sl_redis_schedule_reconnect(&r->main);
        return;
    }
    r->switch_port = 0;
    if (r->worker_id == 0 && (strcmp(host, r->primary_host) != 0 || port != r->primary_port))
        sl_info("store: the Sentinels name %s:%d as the primary \"%s\"", host, port,
                r->config->redis_master);
    snprintf(r->primary_host, sizeof(r->primary_host), "%s", host);
    r->primary_port = port;
    r->main.resolved = true;
    sl_redis_connect(&r->main);
    /* The subscriber waits for an address: it has one now; one connected
     * elsewhere (the old primary) moves too. */
    if (r->sub.link != NULL && (strcmp(r->sub_host, host) != 0 || r->sub_port != port))
        sl_redis_fail(&r->sub, "the primary moved");
    if (r->sub.state == SL_REDIS_DOWN) {
        r->sub.reconnect_at_ms = 0;
        r->sub.backoff_ms = SL_REDIS_BACKOFF_MIN_MS;
    }
}

/* The Sentinels moved our primary: the links go, and the main one asks
 * again (sl_redis_timers acts on it, outside the watch's callback). */
static void sl_redis_on_switch(void *arg, const char *host, int port)
{
    struct sl_redis *r = arg;

    /* Already there (this worker asked after the switch). */
    if (r->main.link != NULL && strcmp(host, r->primary_host) == 0 && port == r->primary_port)
        return;
    snprintf(r->switched_to, sizeof(r->switched_to),
             "the Sentinels moved the primary to %s:%d", host, port);
    snprintf(r->switch_host, sizeof(r->switch_host), "%s", host);
    r->switch_port = port;
    r->switched = true;
}

/* Start connecting CONN: a new link and its first commands (for a
 * Sentinel store's main link, first the question to the Sentinels). */
static void sl_redis_connect(struct sl_redis_conn *conn)
{
    struct sl_redis *r = conn->r;
    const struct sl_config *c = r->config;
    const char *host = c->redis_host;
    int port = c->redis_port;

    /* A cluster's subscriber listens on any node (a PUBLISH reaches every
     * node's subscribers): the seeds in turn. */
    if (c->redis_nseeds > 0) {
        host = c->redis_seed_host[conn->seed_at % c->redis_nseeds];
        port = c->redis_seed_port[conn->seed_at % c->redis_nseeds];
    }

    if (r->sentinel != NULL) {
        if (!conn->sub && !conn->resolved) {
            conn->state = SL_REDIS_RESOLVING;
            if (sl_redis_sentinel_ask(r->sentinel, sl_redis_on_primary, r) != 0)
                sl_redis_schedule_reconnect(conn);
            return;
        }
        if (r->primary_host[0] == '\0') {
            sl_redis_schedule_reconnect(conn);  /* the subscriber waits */
            return;
        }
        conn->resolved = false;
        host = r->primary_host;
        port = r->primary_port;
        if (conn->sub) {
            snprintf(r->sub_host, sizeof(r->sub_host), "%s", host);
            r->sub_port = port;
        }
    }
    const struct sl_redis_link_cbs cbs = {
        .on_connect = sl_redis_on_connect,
        .on_disconnect = sl_redis_on_disconnect,
        .on_message = conn->sub ? sl_redis_on_message : NULL,
        .arg = conn,
    };
    /*
     * The link gives a command up timeout_ms after it queued it; the store
     * gives it up store_timeout after its own stamp, taken before the
     * link's (sl_redis_send).  One millisecond more for the link (its
     * stamps are whole ms, truncated) keeps the store's deadline first, so
     * the store is the one that gives a batch up, and writes its undo
     * behind it on the same connection (sl_redis_fail); the link's
     * deadline is the backstop, and the bound on connecting.
     */
    const struct sl_redis_link_conf lc = {
        .host = host,
        .port = port,
        .user = c->redis_user,
        .password = c->redis_password,
        .db = c->redis_db,
        .tls = c->redis_tls,
        .timeout_ms = c->store_timeout_us / 1000 + 1,
    };
    char why[600];

    if (c->redis_nseeds > 0 && !conn->sub) {
        /* redis-cluster://: the seeds give the map, a link per primary.
         * Each new connection starts at the next seed. */
        const struct sl_redis_cluster_conf cc = {
            .seed = &lc,
            .seed_host = (const char *const *)c->redis_seed_host,
            .seed_port = c->redis_seed_port,
            .nseeds = c->redis_nseeds,
            .first_seed = conn->seed_at % c->redis_nseeds,
        };
        conn->cl = sl_redis_cluster_new(&cc, &r->loop, &cbs, why, sizeof(why));
    } else {
        conn->link = sl_redis_link_new(&lc, &r->loop, &cbs, why, sizeof(why));
    }
    if (!sl_conn_live(conn)) {
        if (!conn->sub)
            sl_redis_mark_down(r, why);
        sl_redis_schedule_reconnect(conn);
        return;
    }
    conn->state = SL_REDIS_CONNECTING;

    if (conn->sub) {
        /* Nobody answers on a subscribed link but the messages: no FIFO. */
        const char *argv[] = {"SUBSCRIBE", r->channel};
        if (sl_redis_link_command(conn->link, 2, argv, NULL, sl_redis_on_subscribed,
                                  NULL) != 0) {
            sl_redis_link_free(conn->link);
            sl_redis_schedule_reconnect(conn);
        }
        return;
    }

    /* Queued now, written behind the link's AUTH and SELECT.  First ROLE:
     * a replica (a Sentinel's stale answer, a demoted primary, a URL naming
     * one) must never be taken for the primary; then the clock. */
    sl_fleet_reset(&r->fleet);
    r->not_primary = false;
    /* Another server (a failover, a restart elsewhere) has another clock:
     * batches wait for this connection's TIME before their deadlines are
     * reckoned in it. */
    r->have_offset = false;
    {
        const char *argv[] = {"ROLE"};
        sl_redis_send_setup(r, SL_OP_ROLE, 1, argv, NULL);
    }
    sl_redis_ask_clock(r);
    sl_redis_load_scripts(r);
    /* The link counts as working again only once every one of these is
     * answered: the set-up is ~30 KB, which Redis reads and answers over
     * several passes of its loop, so a first answer can come while the
     * last is still due.  Marking the link up on the first one would let a
     * link that then misses its deadline fall back into the outage right
     * after "is back". */
    r->setup_left = 0;
    for (struct sl_redis_op *op = r->fifo_head; op != NULL; op = op->next)
        r->setup_left++;  /* the FIFO held nothing else (a new connection) */
}
/* A script op removing every member batch B's decisions may have taken,
 * or NULL (out of memory, or nothing to remove). */
/* Call I's member in batch B's script: "base:I+1|app".  Its length. */
static int sl_redis_member(char *buf, const struct sl_redis_batch *b, size_t i)
{
    const char *app = b->calls[i].check->app_name;

    return snprintf(buf, SL_REDIS_MEMBER_MAX, "%s:%zu|%s", b->base, i + 1,
                    app != NULL ? app : "-");
}

/* Does rule R take other costs than 1 ("cost")?  Its reservations are
 * then weighed members (the decision script sums them). */
static bool sl_redis_weighted(const struct sl_rule *r)
{
    return r->cost_kind != SL_COST_FIXED || r->cost != 1;
}

/* MEMBER ("base:n|app") as the reservation of a call of COST units holds
 * it: "base:n*COST|app" when COST > 1 (as the scripts' weigh() writes it),
 * into BUF (SL_REDIS_MEMBER_MAX + 16). */
static const char *sl_redis_weigh(char *buf, const char *member, uint64_t cost)
{
    const char *bar = strrchr(member, '|');

    if (cost <= 1 || bar == NULL)
        return member;
    snprintf(buf, SL_REDIS_MEMBER_MAX + 16, "%.*s*%llu%s", (int)(bar - member), member,
             (unsigned long long)cost, bar);
    return buf;
}

static struct sl_redis_op *sl_redis_undo_op(struct sl_redis *r,
                                            const struct sl_redis_batch *b)
{
    struct sl_redis_op *op = sl_redis_script_op(r, SL_LUA_RELEASE);

    if (op == NULL)
        return NULL;
    sl_args_str(&op->args, r->channel);
    for (size_t i = 0; i < b->ncalls; i++) {
        const struct sl_check *c = b->calls[i].check;
        char member[SL_REDIS_MEMBER_MAX];
        int mlen = sl_redis_member(member, b, i);
        for (size_t h = 0; h < c->nhits; h++) {
            const struct sl_hit *hit = &c->hits[h];
            char type = hit->rule->kind == SL_RULE_RATE ? 'v'
                        : hit->rule->kind == SL_RULE_CONCURRENCY ? 'c' : 0;
            char wbuf[SL_REDIS_MEMBER_MAX + 16];
            const char *m = member;
            if (type == 0)
                continue;
            if (type == 'v')
                m = sl_redis_weigh(wbuf, member, sl_hit_cost(hit));
            sl_args_key(&op->keys, r, b->up, hit->rule, type, hit->key, hit->key_len);
            sl_args_add(&op->args, m, m == member ? (size_t)mlen : strlen(m));
            sl_args_int(&op->args, 0);
        }
    }
    if (op->keys.n == 0 || !sl_args_ok(&op->keys) || !sl_args_ok(&op->args)) {
        sl_redis_op_free(op);
        return NULL;
    }
    return op;
}

/*
 * Undo, behind batch B on the same connection, whatever B's decisions took:
 * Redis runs one connection's commands in order, so this runs after B if B
 * ever runs.  Nothing if B ran past its deadline (it wrote nothing).
 */
static void sl_redis_undo_batch(struct sl_redis *r, struct sl_redis_batch *b)
{
    struct sl_redis_op *op = sl_redis_undo_op(r, b);

    if (op != NULL)
        sl_redis_send_script(r, op);
}

/*
 * The connection dropped under batch B (Redis closed it, or the network
 * failed) before its answer: B may have run.  Redis drops what it had not
 * read from a closed connection, so B will not run later: undoing it on the
 * next connection, whenever that runs, is safe.  Bounded.
 */
static void sl_redis_owe_undo(struct sl_redis *r, struct sl_redis_batch *b)
{
    struct sl_redis_op *op;

    if (r->nundo >= SL_REDIS_UNDO_MAX || (op = sl_redis_undo_op(r, b)) == NULL)
        return;  /* its reservations lapse into entries, its slots expire */
    op->next = r->undo;
    r->undo = op;
    r->nundo++;
}

/* Free CONN's link: commands it still carries are answered with NULL now,
 * as given up by this store. */
static void sl_redis_close(struct sl_redis_conn *conn)
{
    if (!sl_conn_live(conn))
        return;
    conn->freeing = true;
    sl_conn_free(conn);
    conn->freeing = false;
}

/*
 * Give up on CONN.  For the main link: every unanswered decision batch is
 * undone behind itself, what can be written is written (without waiting),
 * and every pending operation is answered with a NULL reply (decisions
 * fall back).
 */
static void sl_redis_fail(struct sl_redis_conn *conn, const char *why)
{
    struct sl_redis *r = conn->r;

    if (conn->failing)
        return;
    atomic_fetch_add(&sl_redis_errors, 1);
    if (!conn->sub)
        sl_redis_mark_down(r, why);
    if (!sl_conn_live(conn))
        return;
    conn->failing = true;
    if (!conn->sub) {
        struct sl_redis_op *op, *last = r->fifo_tail;
        for (op = r->fifo_head; op != NULL; op = op->next) {
            if (op->kind == SL_OP_DECIDE)
                sl_redis_undo_batch(r, (struct sl_redis_batch *)op);
            if (op == last)
                break;
        }
        /* A write that fails here ends the link through its disconnect
         * callback: the batches then owe their undo to the next
         * connection (the link is NULL afterwards). */
        if (conn->state == SL_REDIS_UP)
            (void)sl_conn_flush(conn);
        if (!sl_conn_live(conn)) {
            conn->failing = false;
            return;
        }
    }
    sl_redis_close(conn);  /* pending callbacks run now, with NULL replies */
    conn->failing = false;
    sl_redis_schedule_reconnect(conn);
}
/* ---- decisions ---- */

/* Decide through the local fallback (or the configured policy). */

struct sl_capture_decision {
    struct sl_decision d;
    struct sl_lease *lease;
    int called;
};

static void sl_redis_capture(void *arg, const struct sl_decision *d,
                             struct sl_lease *lease)
{
    struct sl_capture_decision *cap = arg;
    cap->d = *d;
    cap->lease = lease;
    cap->called = 1;
}

static void sl_redis_list_add(struct sl_redis_lease **head, struct sl_redis_lease *l)
{
    l->prev = NULL;
    l->next = *head;
    if (*head != NULL)
        (*head)->prev = l;
    *head = l;
    l->listed = true;
}

static void sl_redis_unlist(struct sl_redis *r, struct sl_redis_lease *l)
{
    if (!l->listed)
        return;
    if (!l->released)
        r->nlive--;
    if (l->prev != NULL)
        l->prev->next = l->next;
    else if (l->released)
        r->owed = l->next;
    else
        r->leases = l->next;
    if (l->next != NULL)
        l->next->prev = l->prev;
    l->prev = l->next = NULL;
    l->listed = false;
}

/*
 * A lease for the rate and concurrency hits of C, with MEMBER ("" for a
 * local decision), on r->leases.  NULL when out of memory.
 */
static struct sl_redis_lease *sl_redis_lease_new(struct sl_redis *r,
                                                 const struct sl_check *c,
                                                 const char *member)
{
    struct sl_redis_lease *l;
    size_t n = 0, bytes = 0;
    char *keys;

    for (size_t i = 0; i < c->nhits; i++) {
        if (c->hits[i].rule->kind == SL_RULE_PAUSE)
            continue;
        n++;
        bytes += c->hits[i].key_len + 1;
    }
    l = calloc(1, sizeof(*l) + n * sizeof(l->hits[0]) + bytes);
    if (l == NULL)
        return NULL;
    /* Its rules' names and limits are read until it is freed, possibly
     * after a reload retired its configuration. */
    l->up = c->upstream;
    l->grouped = sl_redis_is_grouped(r, l->up);
    l->group = l->grouped ? sl_redis_check_group(c) : 0;
    sl_config_ref(l->up->config);
    snprintf(l->member, sizeof(l->member), "%s", member);
    snprintf(l->app, sizeof(l->app), "%s", c->app_name != NULL ? c->app_name : "-");
    l->app_id = c->app;
    keys = (char *)&l->hits[n];
    for (size_t i = 0; i < c->nhits; i++) {
        const struct sl_hit *h = &c->hits[i];
        struct sl_hit *d;
        if (h->rule->kind == SL_RULE_PAUSE)
            continue;
        d = &l->hits[l->nhits++];
        d->rule = h->rule;
        d->cost = h->cost;
        memcpy(keys, h->key, h->key_len);
        keys[h->key_len] = '\0';
        d->key = keys;
        d->key_len = h->key_len;
        keys += h->key_len + 1;
        if (h->rule->kind == SL_RULE_RATE)
            l->has_rate = true;
        else
            l->has_conc = true;
    }
    sl_redis_list_add(&r->leases, l);
    r->nlive++;
    return l;
}

static void sl_redis_lease_free(struct sl_redis *r, struct sl_redis_lease *l)
{
    sl_redis_unlist(r, l);
    if (l->commit_owed || l->release_owed)
        r->nowed--;
    sl_config_unref(l->up->config);
    free(l);
}

static void sl_redis_fallback(struct sl_redis *r, const struct sl_check *c,
                              sl_decide_cb cb, void *arg)
{
    struct sl_decision d = {.verdict = SL_VERDICT_ALLOW};
    struct sl_capture_decision cap = {0};
    struct sl_redis_lease *lease = NULL;

    switch (r->config->on_store_error) {
    case SL_STORE_ERROR_ALLOW:
        break;
    case SL_STORE_ERROR_DENY:
        d.verdict = SL_VERDICT_UNAVAILABLE;
        d.reason = "the shared limit store (Redis) is unreachable";
        break;
    case SL_STORE_ERROR_LOCAL:
        /* The memory store answers before it returns. */
        if (r->local == NULL || sl_store_decide(r->local, c, sl_redis_capture, &cap)
            != 0 || !cap.called) {
            d.verdict = SL_VERDICT_UNAVAILABLE;
            d.reason = "the shared limit store (Redis) is unreachable";
            break;
        }
        d = cap.d;
        if (cap.lease != NULL) {
            lease = sl_redis_lease_new(r, c, "");
            if (lease == NULL) {
                sl_store_release(r->local, cap.lease);
                d.verdict = SL_VERDICT_UNAVAILABLE;
                d.rule = NULL;
                d.reason = "out of memory";
            } else {
                lease->local = cap.lease;
            }
        }
        break;
    }
    cb(arg, &d, (struct sl_lease *)lease);
}

/* Build batch B's script arguments (KEYS, ARGV) for writing now, with
 * the upstream's commits of this pass when WITH_COMMITS. */
static void sl_redis_batch_args(struct sl_redis *r, struct sl_redis_batch *b,
                                bool with_commits)
{
    const struct sl_upstream_conf *up = b->up;
    struct sl_args *k = &b->op.keys, *a = &b->op.args;
    int64_t reserve = up->connect_timeout_us + 2 * r->config->store_timeout_us +
                      SL_USEC_PER_SEC;
    /* The batch's distinct rules (all of one upstream: at most its rules
     * and its pause), and per call, per hit: the rule's index among them
     * and where its bucket's keys start in KEYS (1-based, as Lua counts). */
    const struct sl_rule *spec[SL_MAX_HITS];
    size_t nspec = 0, nhits = 0;
    struct { uint8_t spec; uint32_t key; } *ref;
    /* Each bucket once: its hit (for the rule and per value) and keys. */
    struct { const struct sl_hit *hit; uint32_t key; } *bucket;
    size_t nbucket = 0;

    sl_args_free(k);
    sl_args_free(a);
    for (size_t i = 0; i < b->ncalls; i++)
        nhits += b->calls[i].check->nhits;
    ref = malloc((nhits + 1) * sizeof(*ref));
    bucket = malloc((nhits + 1) * sizeof(*bucket));
    if (ref == NULL || bucket == NULL) {
        free(ref);
        free(bucket);
        a->unbuildable = true;
        return;
    }
    sl_args_str(a, b->base);
    sl_args_int(a, r->config->lease_ttl_us);
    sl_args_int(a, reserve);
    sl_args_int(a, sl_redis_deadline(r, sl_redis_now_us()));
    if (with_commits)
        sl_redis_commit_args(r, sl_redis_unit(r, up, b->grouped, b->group), k, a);
    else
        sl_args_int(a, 0);
    nhits = 0;
    for (size_t i = 0; i < b->ncalls; i++) {
        const struct sl_check *c = b->calls[i].check;
        for (size_t h = 0; h < c->nhits; h++, nhits++) {
            const struct sl_hit *hit = &c->hits[h];
            size_t j, m;
            for (j = 0; j < nspec && spec[j] != hit->rule; j++)
                ;
            if (j == nspec) {
                if (nspec == SL_MAX_HITS) {     /* not one upstream's rules */
                    a->unbuildable = true;
                    goto out;
                }
                spec[nspec++] = hit->rule;
            }
            /* A batch holds at most 32 calls: a linear search is cheap,
             * and most hits find their bucket at once. */
            for (m = 0; m < nbucket; m++) {
                const struct sl_hit *o = bucket[m].hit;
                if (o->rule == hit->rule && o->key_len == hit->key_len &&
                    memcmp(o->key, hit->key, hit->key_len) == 0)
                    break;
            }
            if (m == nbucket) {
                bucket[m].hit = hit;
                bucket[m].key = (uint32_t)k->n + 1;
                sl_args_hit_keys(k, r, up, b->group, hit);
                if (hit->rule->kind == SL_RULE_RATE)
                    sl_args_share_key(k, r, up, hit);
                nbucket++;
            }
            ref[nhits].spec = (uint8_t)(j + 1);
            ref[nhits].key = bucket[m].key;
        }
    }
    sl_args_fleet_key(k, r, up, b->group, 'm');   /* the last KEYS (decide.lua) */
    sl_args_int(a, (long long)nspec);
    for (size_t j = 0; j < nspec; j++) {
        const struct sl_rule *rule = spec[j];
        bool cal = rule->kind == SL_RULE_RATE && rule->calendar;
        sl_args_str(a, cal ? (rule->shadow ? "K" : "k")
                       : rule->leaky ? (rule->shadow ? "B" : "b")
                       : rule->kind == SL_RULE_RATE ? (rule->shadow ? "R" : "r")
                       : rule->kind == SL_RULE_PAUSE ? "p"
                       : rule->shadow ? "C" : "c");
        /* Negative: the rule has costs (reservations are weighed). */
        sl_args_int(a, sl_redis_weighted(rule) ? -(long long)rule->limit
                                               : (long long)rule->limit);
        sl_args_int(a, cal ? rule->span_us - rule->window_us   /* the margin */
                       : rule->kind == SL_RULE_RATE ? rule->span_us : 0);
        if (rule->kind == SL_RULE_RATE && rule->sync != SL_SYNC_NONE)
            sl_args_int(a, rule->sync_probe_us);
        else
            sl_args_int(a, rule->kind == SL_RULE_CONCURRENCY &&
                                   rule->per_kind != SL_PER_NONE ? -2 : -1);
        if (cal) {
            int64_t ps, pe, pn;
            sl_redis_period(r, rule, &ps, &pe, &pn);
            sl_args_int(a, ps);
            sl_args_int(a, pe);
            sl_args_int(a, pn);
        }
        if (rule->leaky) {
            sl_args_leak(a, rule);
            sl_args_int(a, rule->bucket_cap);
        }
        if (rule->kind == SL_RULE_RATE)
            sl_args_shares(a, rule);
    }
    sl_args_int(a, (long long)b->ncalls);
    nhits = 0;
    for (size_t i = 0; i < b->ncalls; i++) {
        const struct sl_check *c = b->calls[i].check;
        sl_args_str(a, c->app_name != NULL ? c->app_name : "-");
        sl_args_int(a, (long long)c->nhits);
        for (size_t h = 0; h < c->nhits; h++, nhits++) {
            sl_args_int(a, ref[nhits].spec);
            sl_args_int(a, ref[nhits].key);
            sl_args_int(a, (long long)sl_hit_cost(&c->hits[h]));
        }
    }
out:
    free(ref);
    free(bucket);
}

/* Do lease L's keys carry the tag of group G of UP (GROUPED)?  A reload
 * may leave, at one unit's index, leases of another upstream or of one
 * whose groups changed: their commits never ride in its batches (on a
 * cluster, they would be keys of another slot). */
static bool sl_redis_lease_in(const struct sl_redis_lease *l, const struct sl_upstream_conf *up,
                              bool grouped, size_t g)
{
    return l->grouped == grouped && (!grouped || l->group == g) &&
           (l->up == up || strcmp(l->up->name, up->name) == 0);
}

/* Send batch B as one script run, carrying its unit's commits of this
 * pass if any are waiting.  Returns 0, or -1 (nothing sent). */
static int sl_redis_send_batch(struct sl_redis *r, struct sl_redis_batch *b)
{
    size_t unit = sl_redis_unit(r, b->up, b->grouped, b->group);
    struct sl_redis_commits *cs = &r->commits[unit];
    bool with = cs->n > 0;

    if (with && !sl_redis_lease_in(cs->leases[0], b->up, b->grouped, b->group)) {
        sl_redis_flush_commits(r, unit);
        with = false;
    }
    sl_redis_batch_args(r, b, with);
    if (sl_redis_send(r, &b->op) != 0)
        return -1;
    if (with)
        sl_redis_commits_written(r, unit, true);
    return 0;
}

/* Every call of batch B falls back; B is freed. */
static void sl_redis_batch_fallback(struct sl_redis *r, struct sl_redis_batch *b)
{
    for (size_t i = 0; i < b->ncalls; i++)
        sl_redis_fallback(r, b->calls[i].check, b->calls[i].cb, b->calls[i].arg);
    sl_redis_op_free(&b->op);
}

/* A Sentinel store asking for its primary before it ever had an outage
 * (at start): decisions wait for the link, as they do while connecting. */
static bool sl_redis_finding_primary(const struct sl_redis *r)
{
    return r->main.state == SL_REDIS_RESOLVING && !r->outage;
}

static bool sl_redis_usable(const struct sl_redis *r)
{
    if (!sl_conn_live(&r->main) || r->main.freeing || r->not_primary)
        return false;
    /* While in an outage, calls do not wait on a reconnection attempt:
     * the link is used again once Redis has answered on it. */
    return !r->outage && (r->main.state == SL_REDIS_UP ||
                          r->main.state == SL_REDIS_CONNECTING);
}

/* Send the batches being built for unit UNIT (if any). */
static void sl_redis_flush(struct sl_redis *r, size_t unit)
{
    struct sl_redis_batch *b = r->pending[unit], *rev = NULL;
    size_t u, g;

    if (b == NULL)
        return;
    /* A deadline needs Redis's clock: wait for the TIME asked at connect
     * (bounded by store_timeout like any command), the first heartbeat,
     * which sees a Redis that lost data (sl_redis_repair.c; not for a
     * unit this generation has no more: none comes), and for a link: a
     * Sentinel store's first one waits for the Sentinels' answer (bounded
     * by store_timeout per Sentinel; then the outage decides). */
    if ((sl_redis_usable(r) &&
         (!r->have_offset || (!r->fleet.seen[unit] && sl_redis_unit_of(r, unit, &u, &g)))) ||
        sl_redis_finding_primary(r))
        return;
    r->pending[unit] = NULL;
    /* The chain is newest first: send the oldest first. */
    while (b != NULL) {
        struct sl_redis_batch *next = (struct sl_redis_batch *)b->op.next;
        b->op.next = rev != NULL ? &rev->op : NULL;
        rev = b;
        b = next;
    }
    while (rev != NULL) {
        struct sl_redis_batch *next = (struct sl_redis_batch *)rev->op.next;
        rev->op.next = NULL;
        if (!sl_redis_usable(r) || sl_redis_send_batch(r, rev) != 0)
            sl_redis_batch_fallback(r, rev);
        rev = next;
    }
}

/*
 * Write every unit's pending batches (those on the dirty list: a loop
 * pass costs nothing per idle unit), and their commits with them.
 * Commits with no batch to ride in wait for one: at moderate rates a
 * decision follows within a fraction of a millisecond, and a commit run
 * of its own would cost Redis as much as the decision.  They go alone
 * when FORCE; when no more calls of this store are in progress than
 * commits wait (nothing may follow soon, and a lone call's commit goes at
 * once, as an idle instance's status expects; not a tenant group's, whose
 * next batch comes with its own tenants' calls, not with the others in
 * progress: its commits wait, and a status shows them up to the hold
 * later, counted meanwhile as reservations); when the first has waited
 * SL_REDIS_COMMIT_HOLD_US; or when SL_REDIS_COMMIT_HOLD_MAX wait.  Waiting
 * changes no count: a call's reservation stands for it until its commit
 * turns it into an entry, stamped when the call was sent
 * (sl_redis_commit_args), and a reservation lasts more than a second
 * (sl_redis_batch_args).  Returns when the earliest waiting commits are
 * due (ms), or -1.
 */
static int64_t sl_redis_flush_all(struct sl_redis *r, bool force)
{
    int64_t due = -1;

    if (r->flushing) {
        /* Called back from inside a flush (a fallback's decision adopting
         * a reload): the running flush goes round again, so that its
         * dirty list is not swapped under it. */
        r->flush_again = true;
        r->flush_force = r->flush_force || force;
        return -1;
    }
    r->flushing = true;
    do {
        size_t *list = r->dirty, n = r->ndirty;
        int64_t now = sl_redis_now_us();
        /* At most store_timeout: a report (sl_redis_sync) counts every entry
         * stamped within store_timeout before its call as sent after it,
         * so a commit held no longer is never one the report already
         * counted (it would then be counted twice: on the safe side, but
         * wrong). */
        int64_t hold = r->config->store_timeout_us < SL_REDIS_COMMIT_HOLD_US
                           ? r->config->store_timeout_us : SL_REDIS_COMMIT_HOLD_US;

        force = force || r->flush_force;
        r->flush_again = r->flush_force = false;
        due = -1;
        /* Flushing may dirty units again (callbacks decide new calls,
         * a batch waits for the clock): they go on the other list. */
        r->dirty = r->dirty_spare;
        r->dirty_spare = list;
        r->ndirty = 0;
        for (size_t i = 0; i < n; i++)
            r->is_dirty[list[i]] = false;
        for (size_t i = 0; i < n; i++) {
            size_t u = list[i];
            struct sl_redis_commits *cs = &r->commits[u];
            sl_redis_flush(r, u);
            /* (a tenant group's commits wait for the group's next
             * batch whatever else is in progress: the other calls are
             * mostly other groups', and a commit that runs alone costs a
             * decision's run) */
            if (cs->n > 0 && (force || (r->nlive <= cs->n && !sl_redis_unit_is_group(r, u)) ||
                              cs->n >= SL_REDIS_COMMIT_HOLD_MAX ||
                              now - cs->since_us >= hold ||
                              !sl_redis_usable(r)))
                sl_redis_flush_commits(r, u);
            if (cs->n > 0) {
                int64_t t = (cs->since_us + hold + 999) / 1000;
                if (due < 0 || t < due)
                    due = t;
            }
            if (r->pending[u] != NULL || cs->n > 0)
                sl_redis_mark_dirty(r, u);
        }
    } while (r->flush_again);
    r->flushing = false;
    return due;
}

/*
 * Before adopting CONFIG: for each upstream that CONFIG splits into tenant
 * groups and the running configuration does not, or the other way round,
 * the fleet's member registry (f) of every unit of the layout being left
 * is deleted.  Its markers then read as kept by no instance (fleet.lua's
 * stale rule), so going back to that layout later opens a repair phase
 * that puts back every call sent since its last heartbeat -- the calls
 * decided under the other layout meanwhile.  Instances still on the old
 * layout write their registry again at their next heartbeat (and start
 * a repair phase there: the safe side).  Nothing is sent while Redis
 * cannot answer; the registry then lapses by itself in 2 x
 * SL_FLEET_EXPIRY_US.
 */
static void sl_redis_leave_layouts(struct sl_redis *r, const struct sl_config *config)
{
    if (r->stride == 1 || !sl_redis_usable(r))
        return;
    for (size_t i = 0; i < r->config->nupstreams; i++) {
        const struct sl_upstream_conf *up = &r->config->upstreams[i];
        const struct sl_upstream_conf *nu = sl_config_upstream(config, up->name);
        if (nu == NULL || (sl_redis_groups(nu, true) > 1) == r->grouped[i])
            continue;
        for (size_t g = 0; g < sl_redis_ngroups(r, up); g++) {
            struct sl_redis_op *op = sl_redis_script_op(r, 0);
            if (op == NULL)
                return;
            op->kind = SL_OP_COMMAND;
            sl_args_str(&op->args, "DEL");
            sl_args_fleet_key(&op->args, r, up, g, 'f');
            if (sl_redis_send(r, op) != 0)
                sl_redis_op_free(op);
        }
    }
}

/*
 * ops->adopt: serve CONFIG from now on.  Keys are named by upstream and
 * rule names, so every count in Redis carries over by itself, and the
 * scripts take each rule's limit and span from the call: a raised limit has
 * room at once, a lowered one is full until enough calls leave the window.
 * What this worker keeps per unit is sized for SL_MAX_UPSTREAMS upstreams
 * once, so leases and batches of the older generation keep their indexes
 * (a commit rides only with its own tag's: sl_redis_lease_in); only the
 * pauses owed to Redis are renumbered, and which upstreams have tenant
 * groups is read again.
 */
static int sl_redis_adopt(struct sl_store *store, const struct sl_config *config)
{
    struct sl_redis *r = (struct sl_redis *)store;
    const struct sl_config *old = r->config;
    int64_t owed[SL_MAX_UPSTREAMS] = {0};

    if (config->generation <= old->generation)
        return 0;
    sl_redis_flush_all(r, true);
    sl_redis_leave_layouts(r, config);
    for (size_t i = 0; i < old->nupstreams; i++) {
        const struct sl_upstream_conf *nu;
        if (r->owed_pause_until[i] == 0)
            continue;
        nu = sl_config_upstream(config, old->upstreams[i].name);
        if (nu != NULL && r->owed_pause_until[i] > owed[nu->index])
            owed[nu->index] = r->owed_pause_until[i];
    }
    memcpy(r->owed_pause_until, owed, sizeof(owed));
    for (size_t i = 0; r->stride > 1 && i < config->nupstreams; i++)
        r->grouped[i] = sl_redis_groups(&config->upstreams[i], true) > 1;
    r->config = sl_config_ref(config);
    sl_config_unref(old);
    return 0;
}

/*
 * The provider said stop (a 429, a limit signal) on some worker of this
 * process: the pause is written to Redis behind that worker's own queue,
 * so a call decided meanwhile by another worker, on its own connection,
 * could reach Redis first and be let through to a provider that has just
 * refused. The local store has the pause at once (sl_redis_pause sets it
 * there first), so for a while after it was set, the local pause refuses
 * here too. The while is two store_timeouts: by then the pause script has
 * run in Redis, or its link was declared dead and the pause is owed (and
 * decisions fall back to the local store meanwhile). Bounded so that an
 * operator's clear on another instance, which reaches this process only
 * through Redis, is not outlived here. True if the call was answered.
 */
/* When any worker of this process last paused an upstream (monotonic µs):
 * decisions look at the local store's table only shortly after one, so
 * the usual decision takes no lock for this. */
static _Atomic int64_t sl_redis_paused_at_us = INT64_MIN / 2;

static bool sl_redis_pause_fenced(struct sl_redis *r, const struct sl_check *c,
                                  sl_decide_cb cb, void *arg)
{
    int64_t ago, left;

    if (r->local == NULL ||
        sl_redis_now_us() - atomic_load(&sl_redis_paused_at_us) > 2 * r->config->store_timeout_us)
        return false;
    left = sl_store_memory_pause_left(r->local, c->upstream, &ago);
    if (left <= 0 || ago > 2 * r->config->store_timeout_us)
        return false;
    struct sl_decision d = {.verdict = SL_VERDICT_DENY, .rule = &c->upstream->pause_rule,
                            .wait_us = left, .reset_us = left};
    cb(arg, &d, NULL);
    return true;
}

/*
 * Calls are not sent one by one: those decided in one event-loop pass are
 * collected per upstream and sent as one script run when the pass ends
 * (sl_redis_timers), which divides Redis's per-command cost and sluice's
 * syscalls by the batch size at the price of nothing (the pass was going
 * to end before any reply could arrive anyway).
 */
static int sl_redis_decide(struct sl_store *store, const struct sl_check *c,
                           sl_decide_cb cb, void *arg)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_redis_batch *batch;
    bool grouped;
    size_t g, u;

    if (c->upstream->config->generation > r->config->generation)
        sl_redis_adopt(store, c->upstream->config);
    if (c->upstream->config->generation < r->config->generation) {
        struct sl_decision d = {.verdict = SL_VERDICT_STALE,
                                .reason = "the configuration was reloaded"};
        cb(arg, &d, NULL);
        return 0;
    }
    if (c->nhits == 0) {
        struct sl_decision d = {.verdict = SL_VERDICT_ALLOW};
        cb(arg, &d, NULL);
        return 0;
    }
    if (!sl_redis_usable(r) && !sl_redis_finding_primary(r)) {
        sl_redis_fallback(r, c, cb, arg);
        return 0;
    }
    if (sl_redis_pause_fenced(r, c, cb, arg))
        return 0;
    grouped = sl_redis_is_grouped(r, c->upstream);
    g = grouped ? sl_redis_check_group(c) : 0;
    u = sl_redis_unit(r, c->upstream, grouped, g);
    if (r->fleet.phase[u]) {
        sl_redis_wait(r, c, cb, arg);     /* Redis would answer "lost" */
        return 0;
    }
    batch = r->pending[u];
    /* A batch still waiting from before a reload may be another upstream's
     * at this index: never mix them. */
    if (batch == NULL || batch->ncalls == SL_REDIS_BATCH_MAX ||
        batch->up != c->upstream || batch->grouped != grouped || batch->group != g) {
        /* A full batch is still here only while Redis's clock is not known
         * yet: chain a new one in front of it. */
        struct sl_redis_batch *nb = calloc(1, sizeof(*nb));
        if (nb == NULL) {
            sl_redis_fallback(r, c, cb, arg);
            return 0;
        }
        nb->op.r = r;
        nb->op.kind = SL_OP_DECIDE;
        nb->op.script = SL_LUA_DECIDE;
        nb->op.next = batch != NULL ? &batch->op : NULL;
        nb->up = c->upstream;
        nb->grouped = grouped;
        nb->group = g;
        snprintf(nb->base, sizeof(nb->base), "%s:%d:%llu", r->instance,
                 r->worker_id, (unsigned long long)++r->counter);
        r->pending[u] = nb;
        batch = nb;
        sl_redis_mark_dirty(r, u);
    }
    batch->calls[batch->ncalls].check = c;
    batch->calls[batch->ncalls].cb = cb;
    batch->calls[batch->ncalls].arg = arg;
    batch->ncalls++;
    if (batch->ncalls == SL_REDIS_BATCH_MAX)
        sl_redis_flush(r, u);
    return 0;
}

static void sl_redis_log_error(struct sl_redis *r, const char *what,
                               const char *msg)
{
    atomic_fetch_add(&sl_redis_errors, 1);
    int64_t now = sl_redis_now_ms();

    /* At most one line per second per worker. */
    if (now - r->last_error_log_ms < 1000)
        return;
    r->last_error_log_ms = now;
    sl_warn("store: redis answered an error to %s: %.200s", what, msg);
}

static long long sl_reply_int(const redisReply *rep, size_t i)
{
    if (i >= rep->elements || rep->element[i]->type != REDIS_REPLY_INTEGER)
        return -1;
    return rep->element[i]->integer;
}

/* Turn call I of batch B's reply into its decision. */
static void sl_redis_decided(struct sl_redis *r, struct sl_redis_batch *b,
                             size_t i, redisReply *rep)
{
    const struct sl_redis_call *call = &b->calls[i];
    const struct sl_check *c = call->check;
    struct sl_decision d = {0};
    struct sl_redis_lease *lease = NULL;
    long long idx;

    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3) {
        sl_redis_log_error(r, "the decision script", "unexpected reply shape");
        sl_redis_fallback(r, c, call->cb, call->arg);
        return;
    }
    idx = sl_reply_int(rep, 1);
    if (sl_reply_int(rep, 0) == 0) {
        if (idx < 1 || (size_t)idx > c->nhits) {
            sl_redis_fallback(r, c, call->cb, call->arg);
            return;
        }
        d.verdict = SL_VERDICT_DENY;
        d.rule = c->hits[idx - 1].rule;
        d.wait_us = sl_reply_int(rep, 2);
        d.reset_us = d.wait_us;
        switch (sl_reply_int(rep, 3)) {
        case 1: d.share = SL_SHARE_MAX; break;
        case 2: d.share = SL_SHARE_RESERVED; break;
        default: d.share = SL_SHARE_NONE; break;
        }
        /* Refused by the provider's last report: what it said, when. */
        if (rep->elements >= 6 && sl_reply_int(rep, 4) >= 0) {
            d.by_report = true;
            d.report_value = sl_reply_int(rep, 4);
            d.report_age_us = sl_reply_int(rep, 5);
            d.report_sent_since = rep->elements >= 7 ? (uint64_t)sl_reply_int(rep, 6) : 0;
        }
    } else {
        char member[SL_REDIS_MEMBER_MAX];
        d.verdict = SL_VERDICT_ALLOW;
        if (idx >= 1 && (size_t)idx <= c->nhits && rep->elements >= 4) {
            d.rule = c->hits[idx - 1].rule;
            d.remaining = (uint64_t)sl_reply_int(rep, 2);
            d.reset_us = sl_reply_int(rep, 3);
        }
        idx = rep->elements >= 6 ? sl_reply_int(rep, 4) : 0;
        if (idx >= 1 && (size_t)idx <= c->nhits) {
            d.shadow = c->hits[idx - 1].rule;
            d.shadow_wait_us = sl_reply_int(rep, 5);
        }
        if (rep->elements >= 7 && rep->element[6]->type == REDIS_REPLY_ARRAY) {
            const redisReply *sh = rep->element[6];
            for (size_t k = 0; k < sh->elements; k++) {
                long long h = sl_reply_int(sh, k);
                if (h >= 1 && (size_t)h <= c->nhits)
                    d.shadow_mask |= UINT64_C(1) << c->hits[h - 1].rule->index;
            }
        }
        sl_redis_member(member, b, i);
        lease = sl_redis_lease_new(r, c, member);
        /* Out of memory: no lease; the reservation lapses into an entry and
         * the slot expires, both on the safe side. */
        if (lease != NULL && lease->nhits == 0) {
            sl_redis_lease_free(r, lease);
            lease = NULL;
        }
    }
    call->cb(call->arg, &d, (struct sl_lease *)lease);
}

/*
 * Hold call C until its upstream's repair phase ends (sl_redis_waited).
 * Out of memory: decided by on_store_error at once.
 */
static void sl_redis_wait(struct sl_redis *r, const struct sl_check *c,
                          sl_decide_cb cb, void *arg)
{
    struct sl_redis_waiting *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        sl_redis_fallback(r, c, cb, arg);
        return;
    }
    w->call = (struct sl_redis_call){.check = c, .cb = cb, .arg = arg};
    w->since_us = sl_redis_now_us();
    if (r->waiting == NULL)
        r->waiting_tail = &r->waiting;
    *r->waiting_tail = w;
    r->waiting_tail = &w->next;
}

/*
 * Decide again the waiting calls whose upstream's phase is over (its
 * heartbeat said so), whose Redis is away (on_store_error decides), or
 * that waited longer than a phase can last (SL_FLEET_PHASE_MAX_US and a
 * second: a heartbeat that cannot be answered; on_store_error decides).
 * With ALL, every one (the store is going away).
 */
static void sl_redis_waited(struct sl_redis *r, bool all)
{
    struct sl_redis_waiting *w = r->waiting, *keep = NULL, **tail = &keep;
    int64_t now = sl_redis_now_us();

    r->waiting = NULL;
    while (w != NULL) {
        struct sl_redis_waiting *next = w->next;
        const struct sl_check *c = w->call.check;
        bool grouped = sl_redis_is_grouped(r, c->upstream);
        size_t u = sl_redis_unit(r, c->upstream, grouped,
                                 grouped ? sl_redis_check_group(c) : 0);
        bool late = now - w->since_us > SL_FLEET_PHASE_MAX_US + SL_USEC_PER_SEC;
        w->next = NULL;
        if (all || late || !sl_redis_usable(r) ||
            (r->fleet.seen[u] && !r->fleet.phase[u])) {
            if (all || late)
                sl_redis_fallback(r, w->call.check, w->call.cb, w->call.arg);
            else
                sl_redis_decide(&r->base, w->call.check, w->call.cb, w->call.arg);
            free(w);
        } else {
            *tail = w;
            tail = &w->next;
        }
        w = next;
    }
    /* Deciding may have added waiting calls meanwhile: keep them after. */
    if (keep != NULL) {
        *tail = r->waiting;
        if (r->waiting == NULL)
            r->waiting_tail = tail;
        r->waiting = keep;
    }
}

/*
 * Batch B's run found that Redis lost data, or that the fleet is putting
 * its calls back (sl_redis_repair.c): it decided nothing.  What it may
 * have reserved before it found out (a rate log found empty mid-batch) is
 * undone behind it; each call is refused as if the upstream were paused
 * for a moment (a held call asks again then, or when the phase's end is
 * published); the upstream's heartbeat goes at once.  B is freed.
 */
static void sl_redis_lost(struct sl_redis *r, struct sl_redis_batch *b)
{
    size_t u = sl_redis_unit(r, b->up, b->grouped, b->group);

    sl_redis_undo_batch(r, b);
    r->fleet.next_beat_us[u] = 0;
    r->fleet.phase[u] = true;
    for (size_t i = 0; i < b->ncalls; i++)
        sl_redis_wait(r, b->calls[i].check, b->calls[i].cb, b->calls[i].arg);
    sl_redis_op_free(&b->op);
}

static void sl_redis_on_reply(struct sl_redis_link *link, redisReply *rep,
                              void *privdata)
{
    struct sl_redis_op *op = privdata;
    struct sl_redis *r = op->r;

    (void)link;
    sl_redis_pop(r, op);
    /* The set-up's replies come first on one link; on a cluster, other
     * primaries may answer before the set-up's (on the first primary) is
     * done, so only set-up replies count. */
    if (r->setup_left > 0 &&
        (op->kind == SL_OP_SETUP || op->kind == SL_OP_CLOCK || op->kind == SL_OP_ROLE))
        r->setup_left--;
    /* A replica (a demoted primary, or a URL naming one) takes no write:
     * the timers drop the link and find the primary again. */
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR && strstr(rep->str, "READONLY") != NULL)
        r->not_primary = true;
    /* ROLE refused (an ACL without +role) tells nothing: READONLY still
     * catches a replica at the first write. */
    if (op->kind == SL_OP_ROLE && rep != NULL && rep->type == REDIS_REPLY_ARRAY &&
        rep->elements > 0 && rep->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(rep->element[0]->str, "master") != 0)
        r->not_primary = true;
    if (rep != NULL && rep->type != REDIS_REPLY_ERROR && !r->not_primary) {
        if (r->setup_left == 0)
            r->main.backoff_ms = SL_REDIS_BACKOFF_MIN_MS;
        if (op->kind == SL_OP_CLOCK)
            sl_redis_sample_time(r, rep);
        else if (op->kind != SL_OP_COMMAND)     /* (its answer is no time) */
            sl_redis_sample(r, rep);
        if (r->outage && r->setup_left == 0) {
            /* Redis answers again: calls use it from now on, and what was
             * owed while it could not is written behind this. */
            sl_redis_mark_up(r);
            if (r->nowed > 0 || r->owed != NULL || r->undo != NULL)
                sl_redis_settle_owed(r);
        }
    }
    switch (op->kind) {
    case SL_OP_ROLE:
        break;
    case SL_OP_COMMAND:
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
            sl_redis_log_error(r, "a command", rep->str);
        break;
    case SL_OP_SETUP:
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
            /* AUTH or SELECT refused: nothing will work on this link. */
            sl_redis_mark_down(r, rep->str);
            sl_redis_log_error(r, "connection setup", rep->str);
        } else if (rep != NULL && rep->type == REDIS_REPLY_STRING && rep->len == 40 &&
                   op->sha_dst != NULL) {
            memcpy(op->sha_dst, rep->str, 40);
            op->sha_dst[40] = '\0';
        }
        break;
    case SL_OP_CLOCK:
        r->clock_asked = false;
        if (r->have_offset && rep != NULL && rep->type == REDIS_REPLY_ARRAY) {
            /* Batches waiting for the clock go now. */
            if (!r->main.freeing)
                sl_redis_flush_all(r, false);
        } else if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
            sl_redis_mark_down(r, rep->str);
            sl_redis_log_error(r, "connection setup", rep->str);
        }
        break;
    case SL_OP_DECIDE: {
        struct sl_redis_batch *b = (struct sl_redis_batch *)op;
        if (rep == NULL) {
            /* Not given up by us (sl_redis_fail() wrote the undo then):
             * the connection dropped. */
            if (!r->main.freeing)
                sl_redis_owe_undo(r, b);
            sl_redis_batch_fallback(r, b);
            return;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            if (!op->eval && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
                !r->main.freeing && sl_conn_live(&r->main)) {
                /* Script cache flushed (restart, SCRIPT FLUSH): resend this
                 * batch with the body, and learn the SHAs again. */
                if (r->sha[SL_LUA_DECIDE][0] != '\0') {
                    memset(r->sha, 0, sizeof(r->sha));
                    sl_redis_load_scripts(r);
                }
                /* The same arguments: its commits are in them, and its
                 * deadline only gets closer. */
                op->eval = true;
                if (sl_redis_send(r, op) == 0)
                    return;  /* the batch lives on */
            }
            sl_redis_log_error(r, "the decision script", rep->str);
            sl_redis_batch_fallback(r, b);
            return;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
            (sl_reply_int(rep, 1) == 1 && rep->elements != 2 + b->ncalls)) {
            sl_redis_log_error(r, "the decision script", "unexpected reply shape");
            sl_redis_batch_fallback(r, b);
            return;
        }
        if (sl_reply_int(rep, 1) == 2) {
            sl_redis_lost(r, b);
            return;
        }
        if (sl_reply_int(rep, 1) != 1) {
            /* Redis ran it past its deadline, having written nothing: we
             * may have given up on it, so it must not count. */
            r->expired++;
            if (sl_redis_now_ms() - r->last_error_log_ms >= 1000) {
                r->last_error_log_ms = sl_redis_now_ms();
                sl_warn("store: redis ran decisions past their deadline "
                        "(store_timeout; %llu batches so far on worker %d): "
                        "on_store_error decided them", (unsigned long long)r->expired,
                        r->worker_id);
            }
            sl_redis_batch_fallback(r, b);
            return;
        }
        if (sl_redis_now_us() > op->deadline_us) {
            /* The answer is in, but later than store_timeout (this process
             * was stalled: paused, throttled, swapped): the reservations it
             * granted may lapse before a call so late could be sent, so it
             * is treated as given up.  Undone behind itself; decided by
             * on_store_error. */
            sl_redis_undo_batch(r, b);
            sl_redis_batch_fallback(r, b);
            return;
        }
        for (size_t i = 0; i < b->ncalls; i++)
            sl_redis_decided(r, b, i, rep->element[2 + i]);
        sl_redis_op_free(op);
        return;
    }
    case SL_OP_SNAPSHOT:
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR && !op->eval &&
            strncmp(rep->str, "NOSCRIPT", 8) == 0 && !r->main.freeing &&
            sl_conn_live(&r->main)) {
            op->eval = true;
            if (sl_redis_send(r, op) == 0)
                return;
        }
        sl_redis_snap_reply(r, op, rep);
        break;
    case SL_OP_FLEET:
    case SL_OP_REPAIR:
    case SL_OP_HISTORY:
    case SL_OP_SET_PAUSE:
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR && !op->eval &&
            strncmp(rep->str, "NOSCRIPT", 8) == 0 && !r->main.freeing &&
            sl_conn_live(&r->main)) {
            op->eval = true;
            if (sl_redis_send(r, op) == 0)
                return;
        }
        if (op->kind == SL_OP_HISTORY)
            sl_redis_hist_reply(r, op, rep);
        else if (op->kind == SL_OP_SET_PAUSE)
            sl_redis_set_pause_reply(r, op, rep);
        else
            sl_redis_fleet_reply(r, op, rep);
        break;
    case SL_OP_SCRIPT:
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
            if (!op->eval && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
                !r->main.freeing && sl_conn_live(&r->main)) {
                if (r->sha[op->script][0] != '\0') {
                    memset(r->sha, 0, sizeof(r->sha));
                    sl_redis_load_scripts(r);
                }
                op->eval = true;
                if (sl_redis_send(r, op) == 0)
                    return;
            }
            sl_redis_log_error(r, "an update script", rep->str);
        }
        break;
    }
    sl_redis_op_free(op);
}

/* ---- leases: commit, release, renewal ---- */

/* Mark L as owing Redis something (counted once). */
static void sl_redis_owe(struct sl_redis *r, struct sl_redis_lease *l, bool commit,
                         bool release)
{
    bool before = l->commit_owed || l->release_owed;

    l->commit_owed = l->commit_owed || commit;
    l->release_owed = l->release_owed || release;
    if (!before && (l->commit_owed || l->release_owed))
        r->nowed++;
}

static void sl_redis_paid(struct sl_redis *r, struct sl_redis_lease *l, bool commit,
                          bool release)
{
    bool before = l->commit_owed || l->release_owed;

    if (commit)
        l->commit_owed = false;
    if (release)
        l->release_owed = false;
    if (before && !(l->commit_owed || l->release_owed))
        r->nowed--;
}

/* L's unit. */
static size_t sl_redis_lease_unit(const struct sl_redis *r, const struct sl_redis_lease *l)
{
    return sl_redis_unit(r, l->up, l->grouped, l->group);
}

/* Put L's commit into this pass's batch for its unit. */
static void sl_redis_queue_commit(struct sl_redis *r, struct sl_redis_lease *l)
{
    size_t unit = sl_redis_lease_unit(r, l);
    struct sl_redis_commits *cs = &r->commits[unit];

    if (l->in_batch)
        return;
    /* One run's commits are of one unit's tag (see sl_redis_lease_in). */
    if (cs->n > 0 && !sl_redis_lease_in(cs->leases[0], l->up, l->grouped, l->group))
        sl_redis_flush_commits(r, unit);
    if (cs->n == 0)
        cs->since_us = sl_redis_now_us();
    if (cs->n == cs->cap) {
        size_t cap = cs->cap ? cs->cap * 2 : 16;
        struct sl_redis_lease **p = realloc(cs->leases, cap * sizeof(*p));
        if (p == NULL)
            return;  /* stays owed */
        cs->leases = p;
        cs->cap = cap;
    }
    cs->leases[cs->n++] = l;
    l->in_batch = true;
    sl_redis_mark_dirty(r, unit);
}

/*
 * Append this pass's commits for UPSTREAM (the commit section of the
 * scripts).  The stamp of each is Redis's TIME minus the time since its
 * sl_store_commit(), measured now, when they are written: never earlier
 * than the real send.
 */
static void sl_redis_commit_args(struct sl_redis *r, size_t upstream,
                                 struct sl_args *keys, struct sl_args *args)
{
    struct sl_redis_commits *cs = &r->commits[upstream];
    int64_t now = sl_redis_now_us();

    sl_args_int(args, (long long)cs->n);
    for (size_t i = 0; i < cs->n; i++) {
        struct sl_redis_lease *l = cs->leases[i];
        size_t nrate = 0;
        for (size_t h = 0; h < l->nhits; h++)
            nrate += l->hits[h].rule->kind == SL_RULE_RATE;
        sl_args_str(args, l->member);
        sl_args_int(args, now - l->commit_us);
        sl_args_str(args, l->app);
        sl_args_int(args, (long long)nrate);
        for (size_t h = 0; h < l->nhits; h++) {
            const struct sl_rule *rule = l->hits[h].rule;
            bool per = rule->per_kind != SL_PER_NONE;
            if (rule->kind != SL_RULE_RATE)
                continue;
            sl_args_hit_keys(keys, r, l->up, l->group, &l->hits[h]);
            sl_args_share_key(keys, r, l->up, &l->hits[h]);
            if (rule->settle != SL_SETTLE_NONE)
                sl_args_key(keys, r, l->up, rule, 'z', l->hits[h].key, l->hits[h].key_len);
            if (per)
                sl_args_key_g(keys, r, l->up, l->group, rule, 'k', "", 0);
            sl_args_int(args, (long long)rule->limit);
            sl_args_int(args, sl_redis_keep_us(r, rule));
            sl_args_int(args, (rule->sync != SL_SYNC_NONE ? 1 : 0) | (per ? 2 : 0) |
                              (rule->nshares > 0 ? 4 : 0) | (rule->leaky ? 8 : 0) |
                              (sl_hit_cost(&l->hits[h]) > 1 ? 16 : 0) |
                              (rule->settle != SL_SETTLE_NONE ? 32 : 0));
            if (rule->leaky) {
                sl_args_leak(args, rule);
            }
            if (sl_hit_cost(&l->hits[h]) > 1)
                sl_args_int(args, (long long)sl_hit_cost(&l->hits[h]));
        }
    }
}

/* The commits appended by sl_redis_commit_args() were written (WRITTEN),
 * or stay owed. */
static void sl_redis_commits_written(struct sl_redis *r, size_t upstream,
                                     bool written)
{
    struct sl_redis_commits *cs = &r->commits[upstream];

    for (size_t i = 0; i < cs->n; i++) {
        struct sl_redis_lease *l = cs->leases[i];
        l->in_batch = false;
        if (written) {
            sl_redis_paid(r, l, true, false);
            if (l->released && !l->release_owed)
                sl_redis_lease_free(r, l);
        }
    }
    cs->n = 0;
}

/* Write this pass's commits for UPSTREAM as a script run of their own. */
static void sl_redis_flush_commits(struct sl_redis *r, size_t upstream)
{
    struct sl_redis_op *op = NULL;

    if (r->commits[upstream].n == 0)
        return;
    if (sl_redis_usable(r))
        op = sl_redis_script_op(r, SL_LUA_COMMIT);
    if (op != NULL) {
        sl_redis_commit_args(r, upstream, &op->keys, &op->args);
        if (sl_redis_send(r, op) != 0) {
            sl_redis_op_free(op);
            op = NULL;
        }
    }
    sl_redis_commits_written(r, upstream, op != NULL);
}

/* Record L's rate hits in the memory store (the local fallback's view of
 * what this instance sent, and what it puts back after Redis lost it). */
static void sl_redis_mirror(struct sl_redis *r, const struct sl_redis_lease *l)
{
    struct sl_check c;

    /* Whatever on_store_error says: the log is also what a repair puts
     * back after Redis lost data (sl_redis_repair.c). */
    if (r->local == NULL)
        return;
    c.upstream = l->up;
    c.app = l->app_id;
    c.app_name = l->app;
    c.nhits = 0;
    c.keys = NULL;
    for (size_t i = 0; i < l->nhits; i++)
        if (l->hits[i].rule->kind == SL_RULE_RATE)
            c.hits[c.nhits++] = l->hits[i];
    if (c.nhits > 0)
        sl_store_memory_record(r->local, &c);
}

/* A settlement that charges L's hit I more than its estimate (ACTUAL) is
 * mirrored too, logged at now as settle.lua logs it: a repair after Redis
 * lost data puts the call back at its real cost.  (A refund is not: the
 * estimate, counting more, is the safe side.) */
static void sl_redis_mirror_charge(struct sl_redis *r, const struct sl_redis_lease *l,
                                   size_t i, uint64_t actual)
{
    uint64_t cost = sl_hit_cost(&l->hits[i]), more;
    struct sl_check c;

    if (r->local == NULL || actual <= cost)
        return;
    more = actual - cost;
    if (more > l->hits[i].rule->limit)
        more = l->hits[i].rule->limit;
    c.upstream = l->up;
    c.app = l->app_id;
    c.app_name = l->app;
    c.keys = NULL;
    c.nhits = 1;
    c.hits[0] = l->hits[i];
    c.hits[0].cost = (uint32_t)(more > UINT32_MAX ? UINT32_MAX : more);
    sl_store_memory_record(r->local, &c);
}

static void sl_redis_commit(struct sl_store *store, struct sl_lease *lease)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_redis_lease *l = (struct sl_redis_lease *)lease;

    if (l->committed)
        return;
    l->committed = true;
    l->commit_us = sl_redis_now_us();
    if (l->local != NULL)
        sl_store_commit(r->local, l->local);
    else
        sl_redis_mirror(r, l);
    if (!l->has_rate)
        return;
    /* Decided by Redis: log it there.  Decided locally: log it there too,
     * once Redis answers, so windows that span the outage's end see it. */
    sl_redis_owe(r, l, true, false);
    if (sl_redis_usable(r))
        sl_redis_queue_commit(r, l);
}

/*
 * The provider says the call cost ACTUAL units in HIT's rule: once per
 * hit, settle.lua corrects the log (and a bucket's level) in Redis; the
 * call's commit goes first if it still waits for a batch (one link runs
 * its scripts in order).  A call decided locally settles in the memory
 * store.  Unwritable (Redis away): the estimate stands.
 */
static int sl_redis_settle(struct sl_store *store, struct sl_lease *lease,
                           const struct sl_hit *hit, uint64_t actual,
                           sl_store_done_cb done, void *arg)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_redis_lease *l = (struct sl_redis_lease *)lease;
    const struct sl_rule *rule = hit->rule;
    struct sl_redis_op *op;
    size_t i;

    for (i = 0; i < l->nhits; i++)
        if (l->hits[i].rule == rule && l->hits[i].key_len == hit->key_len &&
            memcmp(l->hits[i].key, hit->key, hit->key_len) == 0)
            break;
    if (i == l->nhits || i >= 64 || (l->settled & (UINT64_C(1) << i)) || !l->committed ||
        rule->kind != SL_RULE_RATE)
        return 0;
    l->settled |= UINT64_C(1) << i;
    if (l->local != NULL) {
        sl_store_settle(r->local, l->local, hit, actual);
        return 0;
    }
    sl_redis_mirror_charge(r, l, i, actual);
    if (l->member[0] == '\0' || actual == sl_hit_cost(&l->hits[i]) || !sl_redis_usable(r) ||
        !r->have_offset)
        return 0;
    sl_redis_flush_commits(r, sl_redis_lease_unit(r, l));
    op = sl_redis_script_op(r, SL_LUA_SETTLE);
    if (op == NULL)
        return 0;
    sl_args_key(&op->keys, r, l->up, rule, 'r', hit->key, hit->key_len);
    sl_args_key(&op->keys, r, l->up, rule, 'v', hit->key, hit->key_len);
    sl_args_key(&op->keys, r, l->up, rule, 'a', hit->key, hit->key_len);
    sl_args_key(&op->keys, r, l->up, rule, 'z', hit->key, hit->key_len);
    if (rule->leaky)
        sl_args_key(&op->keys, r, l->up, rule, 'b', hit->key, hit->key_len);
    sl_args_str(&op->args, l->member);
    sl_args_int(&op->args, (long long)sl_hit_cost(&l->hits[i]));
    sl_args_int(&op->args, (long long)actual);
    sl_args_int(&op->args, (long long)rule->limit);
    sl_args_int(&op->args, sl_redis_keep_us(r, rule));
    sl_args_str(&op->args, l->app);
    /* The call's send on the lower bound of Redis's clock: its entries
     * are stamped no earlier. */
    sl_args_int(&op->args, l->commit_us + sl_redis_offset(r, l->commit_us));
    if (rule->leaky) {
        sl_args_leak(&op->args, rule);
    }
    /* The answer's end waits for it, as for a report: the client's next
     * call, on any instance, is decided on the corrected count. */
    op->done = done;
    op->done_arg = arg;
    sl_redis_send_script(r, op);
    return done != NULL;
}

/* Write L's release: its concurrency slots, and its reservations if the
 * call was never sent.  Returns 0, or -1 (not written). */
/* 0 (sent, or nothing to send: *TOLD says whether DONE will be told when
 * Redis has run it), or -1 (not sent; DONE not told). */
static int sl_redis_send_release(struct sl_redis *r, struct sl_redis_lease *l,
                                 sl_store_done_cb done, void *arg, bool *told)
{
    struct sl_redis_op *op;

    if (!sl_redis_usable(r))
        return -1;
    op = sl_redis_script_op(r, SL_LUA_RELEASE);
    if (op == NULL)
        return -1;
    sl_args_str(&op->args, r->channel);
    for (size_t i = 0; i < l->nhits; i++) {
        const struct sl_hit *h = &l->hits[i];
        if (h->rule->kind == SL_RULE_CONCURRENCY) {
            sl_args_key(&op->keys, r, l->up, h->rule, 'c', h->key, h->key_len);
            sl_args_str(&op->args, l->member);
            sl_args_int(&op->args, (long long)h->rule->limit);
        } else if (h->rule->kind == SL_RULE_RATE && !l->committed) {
            char wbuf[SL_REDIS_MEMBER_MAX + 16];
            sl_args_key(&op->keys, r, l->up, h->rule, 'v', h->key, h->key_len);
            sl_args_str(&op->args, sl_redis_weigh(wbuf, l->member, sl_hit_cost(h)));
            sl_args_int(&op->args, 0);
        }
    }
    if (op->keys.n == 0) {
        sl_redis_op_free(op);
        return 0;
    }
    if (sl_redis_send(r, op) != 0) {
        sl_redis_op_free(op);
        return -1;
    }
    if (l->has_conc) {
        r->flush_now = true;
        /* Only slots are waited for: a rate reservation never sent is
         * given back, and nobody's next call depends on that at once. */
        op->done = done;
        op->done_arg = arg;
        *told = done != NULL;
    }
    return 0;
}

/* Write what the main link has queued now, rather than when the loop
 * next finds its socket writable (only while it is up). */
static void sl_redis_write_now(struct sl_redis *r)
{
    if (sl_conn_live(&r->main) && !r->main.freeing && r->main.state == SL_REDIS_UP)
        (void)sl_conn_flush(&r->main);
}

/* ops->flush: a released slot is written before its client is answered,
 * so a client's next call, decided on another worker's connection, never
 * finds the slot it just gave back still taken. */
static void sl_redis_flush_now(struct sl_store *store)
{
    struct sl_redis *r = (struct sl_redis *)store;

    if (!r->flush_now)
        return;
    r->flush_now = false;
    sl_redis_write_now(r);
}

/* Keep released lease L while it owes Redis something (bounded). */
static void sl_redis_keep_owed(struct sl_redis *r, struct sl_redis_lease *l)
{
    sl_redis_unlist(r, l);
    l->released = true;
    sl_redis_list_add(&r->owed, l);
    if (r->nowed > SL_REDIS_OWED_MAX) {
        /* Drop the oldest: its reservations and slots lapse by themselves
         * (on the safe side); a local call's entry is lost. */
        struct sl_redis_lease *o = r->owed;
        while (o != NULL && o->next != NULL)
            o = o->next;
        if (o != NULL && o != l && !o->in_batch)
            sl_redis_lease_free(r, o);
    }
}

/* Returns 1 when DONE is told once Redis has freed the lease's slots (the
 * release was sent; its op tells DONE when freed, whatever the outcome),
 * else 0: decided locally, nothing to wait for, or owed until Redis
 * answers again (calls are decided by on_store_error meanwhile). */
static int sl_redis_release(struct sl_store *store, struct sl_lease *lease,
                            sl_store_done_cb done, void *arg)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_redis_lease *l = (struct sl_redis_lease *)lease;
    bool told = false;

    /* A commit still waiting (in_batch) keeps L on the owed list until it
     * is written (sl_redis_commits_written frees it then). */
    if (l->local != NULL) {
        sl_store_release(r->local, l->local);
        l->local = NULL;
    } else if (sl_redis_send_release(r, l, done, arg, &told) != 0) {
        sl_redis_owe(r, l, false, true);
    }
    if (l->commit_owed || l->release_owed)
        sl_redis_keep_owed(r, l);
    else
        sl_redis_lease_free(r, l);
    return told;
}

/*
 * Redis answers again: write what could not be written while it did not
 * (commits, including locally decided calls, releases, the last pause).
 */
static void sl_redis_settle_owed(struct sl_redis *r)
{
    struct sl_redis_lease *l, *next;
    int64_t now = sl_redis_now_us();
    bool told;

    if (!sl_redis_usable(r))
        return;
    while (r->undo != NULL) {
        struct sl_redis_op *op = r->undo;
        r->undo = op->next;
        r->nundo--;
        sl_redis_send_script(r, op);
    }
    for (l = r->leases; l != NULL; l = l->next)
        if (l->commit_owed)
            sl_redis_queue_commit(r, l);
    for (l = r->owed; l != NULL; l = l->next)
        if (l->commit_owed)
            sl_redis_queue_commit(r, l);
    /* Leases of an older configuration generation sit at its indexes. */
    for (size_t i = 0; i < SL_MAX_UPSTREAMS * r->stride; i++)
        sl_redis_flush_commits(r, i);
    for (l = r->owed; l != NULL; l = next) {
        next = l->next;
        if (l->release_owed && sl_redis_send_release(r, l, NULL, NULL, &told) == 0)
            sl_redis_paid(r, l, false, true);
        if (!l->commit_owed && !l->release_owed)
            sl_redis_lease_free(r, l);
    }
    for (size_t i = 0; i < r->config->nupstreams; i++) {
        int64_t left = r->owed_pause_until[i] - now;
        r->owed_pause_until[i] = 0;
        if (left > 0)
            sl_store_pause(&r->base, &r->config->upstreams[i], left,
                           "the provider asked to stop (during a store outage)");
    }
}

static void sl_redis_renew(struct sl_redis *r, struct sl_redis_lease *l)
{
    struct sl_redis_op *op;

    if (!l->has_conc || l->local != NULL || !sl_redis_usable(r))
        return;  /* the lease expires by itself */
    op = sl_redis_script_op(r, SL_LUA_RENEW);
    if (op == NULL)
        return;
    for (size_t i = 0; i < l->nhits; i++) {
        const struct sl_hit *h = &l->hits[i];
        if (h->rule->kind == SL_RULE_CONCURRENCY)
            sl_args_key(&op->keys, r, l->up, h->rule, 'c', h->key, h->key_len);
    }
    sl_args_str(&op->args, l->member);
    sl_args_int(&op->args, r->config->lease_ttl_us);
    sl_redis_send_script(r, op);
}

/* ---- provider feedback ---- */

/* sl_store_done_cb of one run of FAN. */
static void sl_redis_fan_done(void *arg)
{
    struct sl_redis_fan *fan = arg;

    if (--fan->left > 0)
        return;
    fan->done(fan->arg);
    free(fan);
}

static void sl_redis_local_followed(void *arg, const struct sl_pause_change *ch,
                                    const char *error);

/* One run of an operator's FAN is answered (or was not sent).  The last
 * tells the operator; Redis decided, so the local store (which decides
 * while Redis cannot) is brought in line, and a pause this instance still
 * owed Redis is not sent after a clear. */
static void sl_redis_fan_pause_done(struct sl_redis_fan *fan)
{
    struct sl_redis *r = fan->r;

    if (--fan->left > 0)
        return;
    if (fan->ch.changed && fan->action != SL_PAUSE_SET)
        r->owed_pause_until[fan->up->index] = 0;
    if (fan->ch.changed && r->local != NULL &&
        r->local->ops->set_pause(r->local, fan->up, fan->action, fan->us,
                                 fan->reason[0] != '\0' ? fan->reason + 1 : NULL,
                                 sl_redis_local_followed, NULL) != 0)
        sl_debug("store: the local store has no upstream %s", fan->up->name);
    if (fan->error != NULL)
        fan->pause_cb(fan->pause_arg, NULL, fan->partial && fan->ch.changed
                      ? "the shared store (Redis) applied the action to some of the "
                        "upstream's tenant groups only; repeat it"
                      : fan->error);
    else
        fan->pause_cb(fan->pause_arg, &fan->ch, NULL);
    free(fan);
}

/* Returns 1 when DONE is told once Redis has the pause (the script was
 * sent; its op tells DONE when freed, whatever the outcome), else 0. */
static int sl_redis_pause(struct sl_store *store, const struct sl_upstream_conf *up,
                          int64_t duration_us, const char *reason,
                          sl_store_done_cb done, void *arg)
{
    struct sl_redis *r = (struct sl_redis *)store;
    int64_t now = sl_redis_now_us();
    struct sl_redis_op *op;

    /* The local store pauses too: it decides while Redis cannot, and
     * fences this process's decisions until Redis has the pause. */
    if (r->local != NULL) {
        sl_store_pause(r->local, up, duration_us, reason);
        atomic_store(&sl_redis_paused_at_us, now);
    }
    if (!sl_redis_usable(r)) {
        /* Tell the other instances once Redis answers again (by this
         * generation's index: a call of an older one maps by name). */
        if (up->config != r->config &&
            (up = sl_config_upstream(r->config, up->name)) == NULL)
            return 0;
        if (now + duration_us > r->owed_pause_until[up->index])
            r->owed_pause_until[up->index] = now + duration_us;
        return 0;
    }
    /* Every tenant group has its copy of the pause: DONE is told once
     * the last run is done.  Written where this generation's decisions
     * read it (a reload may have changed the upstream's groups). */
    const struct sl_upstream_conf *cur = up->config == r->config
                                             ? up : sl_config_upstream(r->config, up->name);
    if (cur != NULL)
        up = cur;
    size_t ngroups = sl_redis_ngroups(r, up), sent = 0;
    struct sl_redis_fan *fan = NULL;

    if (done != NULL) {
        fan = calloc(1, sizeof(*fan));
        if (fan == NULL)
            return 0;
        /* held until every run is written, so no run's end tells DONE early */
        *fan = (struct sl_redis_fan){.left = 1, .done = done, .arg = arg};
    }
    for (size_t g = 0; g < ngroups; g++) {
        op = sl_redis_script_op(r, SL_LUA_PAUSE);
        if (op == NULL)
            continue;
        sl_args_key_g(&op->keys, r, up, g, &up->pause_rule, 'p', "", 0);
        sl_args_key_g(&op->keys, r, up, g, &up->pause_rule, 'w', "", 0);
        sl_args_int(&op->args, duration_us);
        sl_args_int(&op->args, sl_redis_deadline(r, now));
        sl_args_str(&op->args, reason != NULL ? reason : "");
        if (fan != NULL) {
            fan->left++;
            op->done = sl_redis_fan_done;
            op->done_arg = fan;
        }
        sent++;
        sl_redis_send_script(r, op);
    }
    if (fan != NULL && sent == 0) {
        free(fan);      /* DONE is not told */
        return 0;
    }
    if (fan != NULL)
        sl_redis_fan_done(fan);     /* the hold */
    return done != NULL;
}

/*
 * An operator's action: one script run on the main link per tenant group
 * (one for most upstreams), answered through CB once Redis has replied to
 * every run (sl_redis_set_pause_reply, sl_redis_fan_pause_done: the
 * answers merged).  Nothing is done while Redis cannot answer: an action meant
 * for every instance is refused rather than applied to this one alone.
 */
static int sl_redis_set_pause(struct sl_store *store, const struct sl_upstream_conf *up,
                              enum sl_pause_action action, int64_t duration_us,
                              const char *reason, sl_pause_cb cb, void *arg)
{
    static const char *const names[] = {"set", "shorten", "clear"};
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_redis_fan *fan;
    size_t ngroups;

    if (up->config != r->config &&
        (up = sl_config_upstream(r->config, up->name)) == NULL)
        return -1;
    if (!sl_redis_usable(r)) {
        cb(arg, NULL, "the shared store (Redis) does not answer now");
        return 0;
    }
    ngroups = sl_redis_ngroups(r, up);
    fan = calloc(1, sizeof(*fan));
    if (fan == NULL)
        return -1;
    /* Held until every run is written, so no reply completes it early. */
    *fan = (struct sl_redis_fan){.left = 1, .r = r, .pause_cb = cb, .pause_arg = arg,
                                 .up = up, .action = action, .us = duration_us};
    if (action == SL_PAUSE_SET)
        snprintf(fan->reason, sizeof(fan->reason), "%c%s", SL_PAUSE_BY_OPERATOR,
                 reason != NULL ? reason : "");
    for (size_t g = 0; g < ngroups; g++) {
        struct sl_redis_op *op = sl_redis_script_op(r, SL_LUA_SET_PAUSE);
        if (op == NULL) {
            fan->error = "out of memory";
            fan->partial = true;
            continue;
        }
        op->kind = SL_OP_SET_PAUSE;
        op->fan = fan;
        op->group = g;
        sl_args_key_g(&op->keys, r, up, g, &up->pause_rule, 'p', "", 0);
        sl_args_key_g(&op->keys, r, up, g, &up->pause_rule, 'w', "", 0);
        sl_args_key_g(&op->keys, r, up, g, &up->pause_rule, 'x', "", 0);
        sl_args_str(&op->args, names[action]);
        sl_args_int(&op->args, duration_us);
        sl_args_str(&op->args, fan->reason);
        sl_args_str(&op->args, r->channel);
        /* (on a cluster, one group's primary may be the one that fails:
         * the others are still written) */
        if (sl_redis_send(r, op) != 0) {
            sl_redis_op_free(op);
            fan->error = "the shared store (Redis) does not answer now";
            fan->partial = true;
            continue;
        }
        fan->left++;
    }
    sl_redis_fan_pause_done(fan);
    return 0;
}

/* sl_pause_cb: the local store followed Redis; nobody waits for it. */
static void sl_redis_local_followed(void *arg, const struct sl_pause_change *ch,
                                    const char *error)
{
    (void)arg;
    (void)ch;
    (void)error;
}

/* sl_lua_set_pause's reply for one group (NULL: the link was lost), merged
 * into its FAN's answer (told, and followed by the local store, once
 * every group answered: sl_redis_fan_pause_done). */
static void sl_redis_set_pause_reply(struct sl_redis *r, struct sl_redis_op *op,
                                     const redisReply *rep)
{
    struct sl_redis_fan *fan = op->fan;
    struct sl_pause_change ch = {0};
    int64_t now, old, until;

    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 5 ||
        rep->element[2]->type != REDIS_REPLY_STRING) {
        if (rep != NULL)
            sl_redis_log_error(r, "the pause script", rep->type == REDIS_REPLY_ERROR
                                                          ? rep->str
                                                          : "unexpected reply shape");
        fan->error = "the shared store (Redis) did not answer";
        sl_redis_fan_pause_done(fan);
        return;
    }
    now = sl_reply_int(rep, 0);
    old = sl_reply_int(rep, 1);
    until = sl_reply_int(rep, 4);
    ch.changed = sl_reply_int(rep, 3) == 1;
    ch.was_us = old > now ? old - now : 0;
    ch.left_us = until > now ? until - now : 0;
    if (ch.was_us > 0) {
        const redisReply *w = rep->element[2];
        ch.was_operator = w->len > 0 && w->str[0] == SL_PAUSE_BY_OPERATOR;
        snprintf(ch.was_reason, sizeof(ch.was_reason), "%.*s",
                 (int)(w->len - (ch.was_operator ? 1 : 0)),
                 w->str + (ch.was_operator ? 1 : 0));
    }
    /* the groups' answers merged: changed in any, the longest pause
     * before (with its reason) and after */
    fan->ch.changed = fan->ch.changed || ch.changed;
    if (ch.was_us > fan->ch.was_us) {
        fan->ch.was_us = ch.was_us;
        fan->ch.was_operator = ch.was_operator;
        memcpy(fan->ch.was_reason, ch.was_reason, sizeof(ch.was_reason));
    }
    if (ch.left_us > fan->ch.left_us)
        fan->ch.left_us = ch.left_us;
    sl_redis_fan_pause_done(fan);
}

/* Returns 1 when DONE is told once Redis has applied the report (the
 * script was sent; its op tells DONE when freed, whatever the outcome),
 * else 0. */
static int sl_redis_sync(struct sl_store *store, const struct sl_upstream_conf *up,
                         const struct sl_hit *hit, uint64_t remaining,
                         int64_t age_us, sl_store_done_cb done, void *arg)
{
    struct sl_redis *r = (struct sl_redis *)store;
    const struct sl_rule *rule = hit->rule;
    struct sl_redis_op *op;

    if (rule->kind != SL_RULE_RATE)
        return 0;
    if (age_us < 0)
        age_us = 0;
    /* The local fallback learns the provider's count too; and the fleet
     * keeps it, to put it back if Redis loses it (sl_redis_repair.c). */
    if (r->local != NULL && r->config->on_store_error == SL_STORE_ERROR_LOCAL)
        sl_store_sync(r->local, up, hit, remaining, age_us);
    sl_fleet_report(&r->fleet, up, rule, hit->key, hit->key_len, remaining,
                    sl_redis_now_us() - age_us);
    if (!sl_redis_usable(r))
        return 0;
    /* The reporting call's commit, if it waits for a batch to ride in,
     * goes first: Redis runs a link's scripts in order, so the report then
     * finds the call in the log (or still reserved) and takes it off
     * once.  (Written after the report, it would count twice.) */
    {
        bool grouped = sl_redis_is_grouped(r, up);
        size_t unit = sl_redis_unit(r, up, grouped,
                                    grouped ? sl_redis_group_of(hit->key, hit->key_len) : 0);
        if (r->commits[unit].n > 0)
            sl_redis_flush_commits(r, unit);
    }
    op = sl_redis_script_op(r, SL_LUA_SYNC);
    if (op == NULL)
        return 0;
    sl_args_key(&op->keys, r, up, rule, 'r', hit->key, hit->key_len);
    sl_args_key(&op->keys, r, up, rule, 'v', hit->key, hit->key_len);
    sl_args_key(&op->keys, r, up, rule, 's', hit->key, hit->key_len);
    if (rule->leaky)
        sl_args_key(&op->keys, r, up, rule, 'b', hit->key, hit->key_len);
    sl_args_int(&op->args, remaining > (uint64_t)LLONG_MAX ? LLONG_MAX
                                                           : (long long)remaining);
    sl_args_int(&op->args, age_us);
    sl_args_int(&op->args, r->config->store_timeout_us);
    sl_args_int(&op->args, rule->span_us);
    sl_args_int(&op->args, (long long)rule->limit);
    sl_args_int(&op->args, rule->sync_probe_us);
    sl_args_int(&op->args, sl_redis_deadline(r, sl_redis_now_us()));
    sl_args_str(&op->args, r->channel);
    /* The reporting call's send, on the lower bound of Redis's clock. */
    if (r->have_offset) {
        int64_t now = sl_redis_now_us();
        sl_args_int(&op->args, now - age_us + sl_redis_offset(r, now));
    } else {
        sl_args_int(&op->args, 0);
    }
    if (rule->leaky) {
        sl_args_leak(&op->args, rule);
    }
    op->done = done;
    op->done_arg = arg;
    sl_redis_send_script(r, op);
    return done != NULL;
}

/* ---- room notices ---- */

/* Parse a published key "<prefix>{<up>}:<t>:<len>:<rule>:<per>" (or
 * "{<up>#<group>}") and tell the proxy which bucket has room. */
static void sl_redis_on_message(struct sl_redis_link *link, redisReply *rep, void *arg)
{
    struct sl_redis_conn *conn = arg;
    struct sl_redis *r = conn->r;
    const redisReply *msg;
    const char *p, *end, *close;
    size_t plen = strlen(r->config->store_prefix), rlen;
    const struct sl_upstream_conf *up = NULL;
    const struct sl_rule *rule = NULL;
    char *num_end, type;
    size_t name_len, group;

    (void)link;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(rep->element[0]->str, "message") != 0 ||
        rep->element[2]->type != REDIS_REPLY_STRING || r->loop.room == NULL)
        return;
    msg = rep->element[2];
    p = msg->str;
    end = msg->str + msg->len;
    if ((size_t)(end - p) < plen + 2 || memcmp(p, r->config->store_prefix, plen) != 0)
        return;
    p += plen;
    if (*p++ != '{' || (close = memchr(p, '}', (size_t)(end - p))) == NULL ||
        !sl_redis_tag_parse(p, (size_t)(close - p), &name_len, &group))
        return;
    up = sl_config_upstream_n(r->config, p, name_len);
    p = close + 1;
    /* ":<t>:" */
    if (up == NULL || end - p < 4 || p[0] != ':' || p[2] != ':')
        return;
    type = p[1];
    p += 3;
    errno = 0;
    rlen = strtoul(p, &num_end, 10);
    if (errno != 0 || num_end == p || num_end >= end || *num_end != ':')
        return;
    p = num_end + 1;
    if ((size_t)(end - p) < rlen + 1 || p[rlen] != ':')
        return;
    /* A pause an operator ended sooner: its key has its own type. */
    rule = type == 'p' ? &up->pause_rule : sl_upstream_rule_named(up, p, rlen);
    if (rule == NULL)
        return;  /* an instance with another config: nothing of ours */
    p += rlen + 1;
    r->loop.room(r->loop.ctx, up, rule, p, (size_t)(end - p));
}

/* ---- the fleet: heartbeats and repairs (sl_redis_repair.c) ---- */

static void sl_repair_out_key(void *ctx, const struct sl_upstream_conf *up,
                              const struct sl_rule *rule, char type, const char *per,
                              size_t per_len)
{
    struct sl_redis_op *op = ctx;

    if (rule == NULL)
        sl_args_fleet_key(&op->keys, op->r, up, op->group, type);
    else if (rule->per_kind == SL_PER_NONE)   /* the pause: the unit's own */
        sl_args_key_g(&op->keys, op->r, up, op->group, rule, type, per, per_len);
    else
        sl_args_key(&op->keys, op->r, up, rule, type, per, per_len);
}

/* A repair of a tenant group puts back its own buckets only. */
static bool sl_repair_out_wants(void *ctx, const char *per, size_t per_len)
{
    struct sl_redis_op *op = ctx;

    return sl_redis_group_of(per, per_len) == op->group;
}

static void sl_repair_out_arg(void *ctx, const char *s, size_t len)
{
    sl_args_add(&((struct sl_redis_op *)ctx)->args, s, len);
}

static void sl_repair_out_num(void *ctx, long long v)
{
    sl_args_int(&((struct sl_redis_op *)ctx)->args, v);
}

/* A heartbeat's or a repair's op for unit UNIT (group G of an upstream
 * with groups when GROUPED). */
static struct sl_redis_op *sl_redis_fleet_op(struct sl_redis *r, enum sl_redis_op_kind kind,
                                             int script, size_t unit, bool grouped,
                                             size_t g, struct sl_repair_out *out)
{
    struct sl_redis_op *op = sl_redis_script_op(r, script);

    if (op == NULL)
        return NULL;
    op->kind = kind;
    op->upstream = unit;
    op->group = g;
    *out = (struct sl_repair_out){.ctx = op, .key = sl_repair_out_key,
                                  .arg = sl_repair_out_arg, .num = sl_repair_out_num,
                                  .wants = grouped ? sl_repair_out_wants : NULL};
    return op;
}

/*
 * Put back, for unit UNIT and the phase SINCE, every call this process
 * has in its windows, this worker's reservations and leases, and the
 * pause it knows of (repair.lua): of its own buckets, when it is a
 * tenant group.
 */
static void sl_redis_send_repair(struct sl_redis *r, size_t unit, int64_t since)
{
    size_t u, g;
    const struct sl_upstream_conf *up;
    bool grouped;
    struct sl_repair_slot *slots = NULL;
    size_t nslots = 0, cap = 0;
    struct sl_repair_out out;
    struct sl_repair_clock clock;
    struct sl_redis_op *op;
    int64_t pause_left = 0, ago, now;
    int64_t reserve;

    if (!sl_redis_unit_of(r, unit, &u, &g))
        return;
    up = &r->config->upstreams[u];
    grouped = sl_redis_is_grouped(r, up);
    reserve = up->connect_timeout_us + 2 * r->config->store_timeout_us + SL_USEC_PER_SEC;
    for (struct sl_redis_lease *l = r->leases; l != NULL; l = l->next) {
        if (l->member[0] == '\0' || strcmp(l->up->name, up->name) != 0)
            continue;
        for (size_t i = 0; i < l->nhits; i++) {
            const struct sl_hit *h = &l->hits[i];
            const struct sl_rule *rule = sl_upstream_rule_named(up, h->rule->name,
                                                                strlen(h->rule->name));
            bool rate = h->rule->kind == SL_RULE_RATE;
            if (rule == NULL || rule->kind != h->rule->kind || (rate && l->committed) ||
                (grouped && (rule->per_kind == SL_PER_NONE ||
                             sl_redis_group_of(h->key, h->key_len) != g)))
                continue;
            if (nslots == cap) {
                size_t nc = cap != 0 ? 2 * cap : 16;
                struct sl_repair_slot *ns = realloc(slots, nc * sizeof(*ns));
                if (ns == NULL)
                    goto out;
                slots = ns;
                cap = nc;
            }
            slots[nslots++] = (struct sl_repair_slot){
                .rule = rule, .per = h->key, .per_len = h->key_len,
                .type = rate ? 'v' : 'c', .member = l->member,
                .ttl_us = rate ? reserve : r->config->lease_ttl_us};
        }
    }
    if (r->local != NULL)
        pause_left = sl_store_memory_pause_left(r->local, up, &ago);
    op = sl_redis_fleet_op(r, SL_OP_REPAIR, SL_LUA_REPAIR, unit, grouped, g, &out);
    if (op == NULL)
        goto out;
    op->since = since;
    now = sl_redis_now_us();
    clock = (struct sl_repair_clock){now, r->have_offset,
                                     r->have_offset ? sl_redis_offset(r, now) : 0,
                                     SL_REDIS_DRIFT_DIV, r->config->store_timeout_us};
    if (sl_repair_args(r->local, up, r->instance, since, slots, nslots, &r->fleet, &clock,
                       r->apps, pause_left, &out) != 0 || sl_redis_send(r, op) != 0) {
        sl_redis_op_free(op);
        goto out;
    }
    r->fleet.repairing[unit] = true;
out:
    free(slots);
}

/* A loss of UP's keys (the unit's GROUP: "" or its words), seen by this
 * worker's heartbeat.  The first is logged at once.  A Redis that keeps
 * evicting loses the keys its repairs write back, one loss every few
 * heartbeats: those that follow within SL_FLEET_LOSS_LOG_US are counted
 * and told in one line when that time is up (sl_redis_losses_due). */
static void sl_redis_tell_loss(struct sl_redis *r, const struct sl_upstream_conf *up,
                               const char *group, int64_t now)
{
    size_t slot = up->index * r->stride;    /* the upstream's first unit */

    if (r->fleet.loss_logged_us[slot] != 0 &&
        now - r->fleet.loss_logged_us[slot] < SL_FLEET_LOSS_LOG_US) {
        r->fleet.losses_unlogged[slot]++;
        return;
    }
    r->fleet.loss_logged_us[slot] = now;
    sl_warn("store: redis lost data (a flush, a restart, a failover or an "
            "eviction) under upstream %s%s; every instance puts its calls back "
            "before calls are decided again", up->name, group);
}

/* The losses of UP's keys counted and not logged, once their time is up. */
static void sl_redis_losses_due(struct sl_redis *r, const struct sl_upstream_conf *up,
                                int64_t now)
{
    size_t slot = up->index * r->stride;
    uint32_t n = r->fleet.losses_unlogged[slot];

    if (n == 0 || now - r->fleet.loss_logged_us[slot] < SL_FLEET_LOSS_LOG_US)
        return;
    sl_warn("store: redis lost data %u more time%s under upstream %s in the %d s "
            "after it was logged, each one repaired; a redis that keeps losing "
            "sluice's keys is evicting them (maxmemory-policy noeviction keeps them)",
            n, n == 1 ? "" : "s", up->name, SL_FLEET_LOSS_LOG_US / 1000000);
    r->fleet.losses_unlogged[slot] = 0;
    r->fleet.loss_logged_us[slot] = now;
}

/* A heartbeat's or a repair's answer (NULL: given up). */
static void sl_redis_fleet_reply(struct sl_redis *r, struct sl_redis_op *op,
                                 const redisReply *rep)
{
    size_t u = op->upstream, ui, g;     /* the unit; its upstream, group */
    int64_t now = sl_redis_now_us();
    bool ok = rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 3;
    const struct sl_upstream_conf *up;
    char group[48] = "";

    if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
        sl_redis_log_error(r, op->kind == SL_OP_FLEET ? "the heartbeat" : "a repair",
                           rep->str);
    if (op->kind == SL_OP_REPAIR) {
        r->fleet.repairing[u] = false;
        if (ok && sl_reply_int(rep, 2) == 1)
            r->fleet.repaired[u] = op->since;
        return;
    }
    r->fleet.beating[u] = false;
    /* This upstream's decisions waited for its first answer on this
     * connection; an error (an ACL without +info) must not hold them for
     * ever. */
    r->fleet.seen[u] = true;
    r->fleet.next_beat_us[u] = now + SL_FLEET_BEAT_US;
    if (!ok || rep->elements < 5 || !sl_redis_unit_of(r, u, &ui, &g))
        return;
    up = &r->config->upstreams[ui];
    if (sl_redis_unit_is_group(r, u))
        snprintf(group, sizeof(group), " (tenant group %zu of %d)", g, SL_REDIS_GROUPS);
    sl_redis_losses_due(r, up, now);
    if (sl_reply_int(rep, 4) == 0) {
        /* no phase opened by this heartbeat (another one's says so) */
        if (sl_reply_int(rep, 1) == 0)
            atomic_store(&sl_redis_marker_seen[u], true);
    } else if (sl_reply_int(rep, 4) == 2) {
        if (g == 0 || group[0] == '\0')
            sl_info("store: no instance kept upstream %s's keys in redis for a while "
                    "(the fleet was stopped, or a reload moved the keys: tenant groups); "
                    "every instance puts back the calls it sent since, about a second",
                    up->name);
    } else if (atomic_load(&sl_redis_marker_seen[u])) {
        sl_redis_tell_loss(r, up, group, now);
    } else if (g == 0 || group[0] == '\0') {
        /* (once for an upstream's groups: they all start so) */
        sl_info("store: redis holds no state for upstream %s yet (a new redis, or "
                "one that lost data); every instance puts its calls back before "
                "calls are decided, about a second", up->name);
    }
    if (sl_reply_int(rep, 1) == 1) {
        const redisReply *e = rep->element[2];
        int64_t since = e->type == REDIS_REPLY_STRING ? strtoll(e->str, NULL, 10)
                        : e->type == REDIS_REPLY_INTEGER ? e->integer : 0;
        r->fleet.phase[u] = true;
        r->fleet.next_beat_us[u] = now + SL_FLEET_PHASE_BEAT_US;
        if (sl_reply_int(rep, 3) != 1 && !r->fleet.repairing[u] && since > 0)
            sl_redis_send_repair(r, u, since);
    } else if (r->fleet.phase[u]) {
        r->fleet.phase[u] = false;
        if (r->worker_id == 0)
            sl_info("store: upstream %s%s is decided in redis again, every live "
                    "instance's calls put back", up->name, group);
    }
}

/* Heartbeats that are due.  Returns when the next is (ms), or -1. */
static int64_t sl_redis_fleet_timers(struct sl_redis *r, int64_t now_us)
{
    int64_t next = -1;

    if (!sl_redis_usable(r) || r->main.state != SL_REDIS_UP || r->setup_left > 0)
        return -1;
    for (size_t unit = 0; unit < r->config->nupstreams * r->stride; unit++) {
        struct sl_repair_out out;
        struct sl_redis_op *op;
        size_t ui, g, u = unit;
        if (!sl_redis_unit_of(r, unit, &ui, &g) || r->fleet.beating[u])
            continue;
        if (now_us < r->fleet.next_beat_us[u]) {
            int64_t t = (r->fleet.next_beat_us[u] + 999) / 1000;
            if (next < 0 || t < next)
                next = t;
            continue;
        }
        op = sl_redis_fleet_op(r, SL_OP_FLEET, SL_LUA_FLEET, u, sl_redis_unit_is_group(r, u),
                               g, &out);
        if (op == NULL)
            continue;
        sl_fleet_beat_args(&r->config->upstreams[ui], r->instance, r->channel,
                           r->config->store_timeout_us + SL_REDIS_COMMIT_HOLD_US +
                               SL_USEC_PER_SEC / 20,
                           r->config->redis_nseeds > 0, &out);
        if (sl_redis_send(r, op) != 0) {
            sl_redis_op_free(op);
            continue;
        }
        r->fleet.beating[u] = true;
    }
    return next;
}

/* ---- timers ---- */

/* CONN's reconnection and its link's deadline (connecting, and the
 * backstop for commands).  Returns when to look again (ms), or -1. */
static int64_t sl_redis_conn_timers(struct sl_redis_conn *conn, int64_t now_ms)
{
    int64_t next = -1;

    if (conn->state == SL_REDIS_DOWN && now_ms >= conn->reconnect_at_ms)
        sl_redis_connect(conn);
    if (conn->state == SL_REDIS_RESOLVING)
        return -1;  /* the Sentinels' timers */
    if (sl_conn_live(conn))
        next = sl_conn_check(conn, sl_redis_now_ms());
    if (conn->state == SL_REDIS_DOWN)
        return conn->reconnect_at_ms;
    return next;
}

static int64_t sl_redis_timers(struct sl_store *store, int64_t now)
{
    struct sl_redis *r = (struct sl_redis *)store;
    const void *corked;
    int64_t next = -1, t;
    int64_t renew_every = r->config->lease_ttl_us / 3000;
    int64_t now_us = sl_redis_now_us();

#define SL_NEXT(x) do { if ((x) >= 0 && (next < 0 || (x) < next)) next = (x); } while (0)
    /* Not the primary (any more), before anything is written to it: both
     * links go at once.  After a switch the main link asks again without
     * waiting a backoff; a replica a Sentinel named is distrusted (the next
     * ask starts with another Sentinel), and tried again after the
     * backoff. */
    if (r->switched || r->not_primary) {
        const char *why = r->switched ? r->switched_to
                                      : "the server is a replica, not the primary";
        if (r->switched) {
            r->main.backoff_ms = SL_REDIS_BACKOFF_MIN_MS;
            r->sub.backoff_ms = SL_REDIS_BACKOFF_MIN_MS;
        } else if (r->sentinel != NULL) {
            sl_redis_sentinel_distrust(r->sentinel);
        }
        if (sl_conn_live(&r->main))
            sl_redis_fail(&r->main, why);
        if (r->switched && r->main.state == SL_REDIS_DOWN)
            r->main.reconnect_at_ms = now;
        r->switched = r->not_primary = false;
        if (r->sub.link != NULL)
            sl_redis_fail(&r->sub, why);
    }
    /* The pass's batches are written now, not after an epoll_wait that
     * reports the socket writable: one loop crossing and the two watch
     * changes (write on, write off) fewer per batch.  What cannot be
     * written at once stays asked for, and the loop finishes it. */
    if (r->waiting != NULL) {
        sl_redis_waited(r, false);
        if (r->waiting != NULL)
            SL_NEXT(sl_redis_now_ms() + SL_FLEET_PHASE_BEAT_US / 1000);
    }
    corked = sl_conn_id(&r->main);
    if (corked != NULL)
        sl_conn_cork(&r->main);
    t = sl_redis_flush_all(r, false);
    SL_NEXT(t);
    /* Still the same link: nothing in flush_all ends one.  Before the
     * handshake is done, the link writes it all once connected. */
    if (corked != NULL && sl_conn_id(&r->main) == corked)
        (void)sl_conn_uncork(&r->main);
    /* The store's deadline before the link's (see sl_redis_connect), so
     * that a batch given up is undone behind itself.  Before the link is
     * up, its own connect deadline (as long) ends it, with a reason that
     * says where connecting stopped. */
    if (r->main.state == SL_REDIS_UP && r->fifo_head != NULL &&
        now_us >= r->fifo_head->deadline_us) {
        /* Replies that are already here are not given up on. */
        if (sl_conn_live(&r->main))
            (void)sl_conn_read(&r->main);
        if (r->fifo_head != NULL && sl_redis_now_us() >= r->fifo_head->deadline_us)
            sl_redis_fail(&r->main, "no answer within store_timeout");
    }
    /* The Sentinels first: an answer connects the main link (whose
     * deadline is then watched below), a failed ask schedules its retry. */
    if (r->sentinel != NULL) {
        t = sl_redis_sentinel_timers(r->sentinel, sl_redis_now_ms());
        SL_NEXT(t);
    }
    t = sl_redis_conn_timers(&r->main, now);
    SL_NEXT(t);
    if (r->loop.room != NULL) {
        t = sl_redis_conn_timers(&r->sub, now);
        SL_NEXT(t);
    }
    t = sl_redis_fleet_timers(r, now_us);
    SL_NEXT(t);
    /* An ask the main link began just now starts in this pass. */
    if (r->sentinel != NULL && r->main.state == SL_REDIS_RESOLVING) {
        t = sl_redis_sentinel_timers(r->sentinel, sl_redis_now_ms());
        SL_NEXT(t);
    }
    if (now >= r->next_renew_ms) {
        r->next_renew_ms = now + (renew_every > 0 ? renew_every : 1);
        for (struct sl_redis_lease *l = r->leases; l != NULL; l = l->next)
            sl_redis_renew(r, l);
    }
    /* Keep the clock bound fresh while idle (it loosens by drift). */
    if (sl_redis_usable(r) && r->main.state == SL_REDIS_UP && !r->clock_asked &&
        now_us - r->last_sample_us >= SL_REDIS_CLOCK_REFRESH_US)
        sl_redis_ask_clock(r);
    if (r->history != NULL && now >= r->next_history_ms) {
        r->next_history_ms = now + SL_REDIS_HISTORY_EVERY_MS;
        if (sl_redis_usable(r) && r->main.state == SL_REDIS_UP)
            sl_redis_write_history(r);
    }
    if (r->history != NULL)
        SL_NEXT(r->next_history_ms);
    if (r->main.state == SL_REDIS_UP && r->fifo_head != NULL)
        SL_NEXT((r->fifo_head->deadline_us + 999) / 1000);
    if (r->leases != NULL)
        SL_NEXT(r->next_renew_ms);
    if (sl_redis_usable(r) && r->main.state == SL_REDIS_UP && !r->clock_asked)
        SL_NEXT((r->last_sample_us + SL_REDIS_CLOCK_REFRESH_US) / 1000 + 1);
#undef SL_NEXT
    return next;
}

static void sl_redis_tick(struct sl_store *store)
{
    struct sl_redis *r = (struct sl_redis *)store;

    if (r->local != NULL)
        sl_store_tick(r->local);
}

static void sl_redis_free_arrays(struct sl_redis *r)
{
    free(r->grouped);
    free(r->pending);
    free(r->commits);
    free(r->owed_pause_until);
    free(r->dirty);
    free(r->dirty_spare);
    free(r->is_dirty);
}

static void sl_redis_destroy(struct sl_store *store)
{
    struct sl_redis *r = (struct sl_redis *)store;

    sl_redis_waited(r, true);
    for (size_t i = 0; i < SL_MAX_UPSTREAMS * r->stride; i++) {
        while (r->pending[i] != NULL) {
            struct sl_redis_batch *b = r->pending[i];
            r->pending[i] = (struct sl_redis_batch *)b->op.next;
            sl_redis_batch_fallback(r, b);
        }
        sl_redis_flush_commits(r, i);
    }
    /* Write what is queued (commits, releases) for a moment, then close. */
    if (sl_conn_live(&r->main) && r->main.state == SL_REDIS_UP)
        (void)sl_conn_flush_wait(&r->main, SL_REDIS_CLOSE_WAIT_MS);
    sl_redis_close(&r->main);
    sl_redis_close(&r->sub);
    sl_redis_sentinel_free(r->sentinel);
    r->sentinel = NULL;
    while (r->leases != NULL)
        sl_redis_lease_free(r, r->leases);
    while (r->owed != NULL)
        sl_redis_lease_free(r, r->owed);
    while (r->undo != NULL) {
        struct sl_redis_op *op = r->undo;
        r->undo = op->next;
        sl_redis_op_free(op);
    }
    sl_redis_mark_up(r);  /* keep the process-wide count right */
    for (size_t i = 0; i < SL_MAX_UPSTREAMS * r->stride; i++)
        free(r->commits[i].leases);
    sl_redis_free_arrays(r);
    sl_fleet_free(&r->fleet);
    sl_config_unref(r->config);
    free(r);
}

/* ---- usage snapshots ---- */

/* One run of the snapshot script for UPSTREAM (see sl_lua_snapshot). */
/* The snapshot run of group G of UP (any G without groups). */
static struct sl_redis_op *sl_redis_snap_op(struct sl_redis *r,
                                            const struct sl_upstream_conf *up, size_t g,
                                            const struct sl_snapshot_req *req)
{
    struct sl_redis_op *op = sl_redis_script_op(r, SL_LUA_SNAPSHOT);
    struct sl_args *k, *a;
    int64_t maxspan = 0;

    if (op == NULL)
        return NULL;
    op->kind = SL_OP_SNAPSHOT;
    op->upstream = up->index;
    op->group = g;
    k = &op->keys;
    a = &op->args;
    sl_args_key_g(k, r, up, g, &up->pause_rule, 'x', "", 0);
    sl_args_key_g(k, r, up, g, &up->pause_rule, 'p', "", 0);
    sl_args_key_g(k, r, up, g, &up->pause_rule, 'w', "", 0);
    for (size_t i = 0; i < up->nrules; i++) {
        int64_t keep = sl_redis_keep_us(r, &up->rules[i]);
        if (keep > maxspan)
            maxspan = keep;
    }
    sl_args_str(a, req->flags & SL_SNAP_ALERTS ? "1" : "0");
    sl_args_int(a, req->top);
    sl_args_int(a, SL_REDIS_SNAP_CANDIDATES);
    /* Alert levels outlive the longest window by ten minutes. */
    sl_args_int(a, maxspan / 1000 + 600000);
    sl_args_int(a, (long long)up->nrules);
    for (size_t i = 0; i < up->nrules; i++) {
        const struct sl_rule *rule = &up->rules[i];
        bool per = rule->per_kind != SL_PER_NONE;
        bool rate = rule->kind == SL_RULE_RATE;
        static const char types[] = "rvasc";
        if (per) {
            sl_args_key_g(k, r, up, g, rule, 'k', "", 0);
        } else {
            struct sl_hit h = {.rule = rule, .key = "", .key_len = 0};
            sl_args_hit_keys(k, r, up, g, &h);
            if (rule->leaky)
                sl_args_key(k, r, up, rule, 'b', "", 0);
        }
        int64_t span = rate ? rule->span_us : 0, pend = 0;
        if (rate && rule->calendar) {
            /* Back to the period's start, minus the margin. */
            int64_t ps, pn;
            sl_redis_period(r, rule, &ps, &pend, &pn);
            span = sl_redis_est_now(r) - ps + (rule->span_us - rule->window_us);
        }
        sl_args_str(a, rule->leaky ? "b" : rate ? "r" : "c");
        sl_args_str(a, per ? "1" : "0");
        sl_args_int(a, (long long)rule->limit);
        sl_args_int(a, span);
        sl_args_str(a, rate && rule->sync != SL_SYNC_NONE ? "1" : "0");
        sl_args_str(a, rule->name);
        sl_args_int(a, pend);
        sl_args_int(a, (long long)rule->nalert_at);
        for (size_t j = 0; j < rule->nalert_at; j++) {
            char num[32];
            snprintf(num, sizeof(num), "%.6f", rule->alert_at[j]);
            sl_args_str(a, num);
        }
        /* the heads of the keys: a per rule's are its group's */
        for (size_t t = 0; t < 5; t++)
            sl_args_key_g(a, r, up, per ? g : SL_REDIS_DERIVE, rule, types[t], "", 0);
        if (rule->leaky) {
            sl_args_leak(a, rule);
            sl_args_int(a, rule->bucket_cap);
            sl_args_key_g(a, r, up, per ? g : SL_REDIS_DERIVE, rule, 'b', "", 0);
        }
    }
    return op;
}

static char *sl_reply_strdup(const redisReply *rep)
{
    char *s;

    if (rep == NULL || (rep->type != REDIS_REPLY_STRING &&
                        rep->type != REDIS_REPLY_STATUS))
        return strdup("");
    s = malloc(rep->len + 1);
    if (s != NULL) {
        memcpy(s, rep->str, rep->len);
        s[rep->len] = '\0';
    }
    return s;
}

/* Fill U from the script's bucket reply E.  Returns 0 or -1. */
static int sl_redis_snap_bucket(const redisReply *e, struct sl_usage *u)
{
    const redisReply *apps;

    if (e->type != REDIS_REPLY_ARRAY || e->elements != 13)
        return -1;
    u->key = sl_reply_strdup(e->element[0]);
    u->used = (uint64_t)sl_reply_int(e, 1);
    u->reserved = (uint64_t)sl_reply_int(e, 2);
    u->remaining = (uint64_t)sl_reply_int(e, 3);
    u->resets_in_us = sl_reply_int(e, 4);
    u->report_left = sl_reply_int(e, 5);
    u->level_was = (unsigned)sl_reply_int(e, 6);
    u->level = (unsigned)sl_reply_int(e, 7);
    u->from_provider = sl_reply_int(e, 9) == 1;
    u->report_value = sl_reply_int(e, 10);
    u->sent_since_report = (uint64_t)sl_reply_int(e, 11);
    u->report_age_us = sl_reply_int(e, 12);
    apps = e->element[8];
    if (u->key == NULL || apps->type != REDIS_REPLY_ARRAY)
        return -1;
    if (apps->elements >= 2) {
        u->apps = calloc(apps->elements / 2, sizeof(*u->apps));
        if (u->apps == NULL)
            return -1;
        for (size_t i = 0; i + 1 < apps->elements; i += 2) {
            u->apps[u->napps].name = sl_reply_strdup(apps->element[i]);
            u->apps[u->napps].calls = (uint64_t)sl_reply_int(apps, i + 1);
            if (u->apps[u->napps++].name == NULL)
                return -1;
        }
        sl_snapshot_sort_apps(u);
    }
    return 0;
}

/* Read one unit's reply into the snapshot: added to what the upstream's
 * other groups' replies put there.  Returns 0 or -1. */
static int sl_redis_snap_fill(struct sl_redis *r, struct sl_upstream_usage *uu,
                              const redisReply *rep)
{
    const struct sl_upstream_conf *up = uu->up;
    int64_t now, until;

    if (rep->type != REDIS_REPLY_ARRAY ||
        (rep->elements != 4 + up->nrules && rep->elements != 4))
        return -1;
    uu->pause_new = uu->pause_new || sl_reply_int(rep, 3) == 1;
    now = sl_reply_int(rep, 0);
    until = sl_reply_int(rep, 1);
    /* every group holds the same pause: the longest seen is told */
    if (until > now && until - now > uu->paused_us) {
        const redisReply *w = rep->element[2];
        uu->paused_us = until - now;
        if (w->type == REDIS_REPLY_STRING)
            snprintf(uu->pause_reason, sizeof(uu->pause_reason), "%.*s",
                     (int)w->len, w->str);
        sl_snapshot_pause_origin(uu);
    }
    (void)r;
    /* Only the header: another instance ran this second's alert check. */
    for (size_t i = 0; rep->elements > 4 && i < up->nrules; i++) {
        const redisReply *ru = rep->element[4 + i], *list;
        struct sl_rule_usage *out = &uu->rules[i];
        if (ru->type != REDIS_REPLY_ARRAY || ru->elements != 2 ||
            ru->element[1]->type != REDIS_REPLY_ARRAY)
            return -1;
        list = ru->element[1];
        out->nbuckets += (size_t)sl_reply_int(ru, 0);
        if (list->elements == 0)
            continue;
        struct sl_usage *nb = realloc(out->buckets,
                                      (out->n + list->elements) * sizeof(*out->buckets));
        if (nb == NULL)
            return -1;
        out->buckets = nb;
        memset(&nb[out->n], 0, list->elements * sizeof(*nb));
        for (size_t b = 0; b < list->elements; b++) {
            if (sl_redis_snap_bucket(list->element[b], &out->buckets[out->n++]) != 0)
                return -1;
        }
    }
    return 0;
}

/* Every run of RS answered: the groups' buckets are merged (the busiest
 * TOP of each rule over all its groups, and those whose alert level
 * moved), and the snapshot handed over; RS is freed. */
static void sl_redis_snap_done(struct sl_redis *r, struct sl_redis_snap *rs)
{
    if (rs->error != NULL) {
        sl_snapshot_free(rs->snap);
        rs->snap = NULL;
    }
    for (size_t i = 0; rs->snap != NULL && i < rs->snap->nups; i++) {
        struct sl_upstream_usage *uu = &rs->snap->ups[i];
        if (!sl_redis_is_grouped(r, uu->up))
            continue;
        for (size_t k = 0; uu->rules != NULL && k < uu->up->nrules; k++)
            sl_snapshot_trim(&uu->rules[k], rs->top);
    }
    rs->cb(rs->arg, rs->snap, rs->error);
    free(rs);
}

static void sl_redis_snap_reply(struct sl_redis *r, struct sl_redis_op *op,
                                const redisReply *rep)
{
    struct sl_redis_snap *rs = op->snap;

    if (sl_redis_part_failed(r, rep, &rs->error, "the snapshot script",
                             "redis refused the snapshot script"))
        ;
    else if (rs->error == NULL &&
             sl_redis_snap_fill(r, &rs->snap->ups[op->upstream], rep) != 0)
        rs->error = "unexpected snapshot reply (or out of memory)";
    if (--rs->pending > 0)
        return;
    sl_redis_snap_done(r, rs);
}

static int sl_redis_snapshot(struct sl_store *store, const struct sl_snapshot_req *req,
                             sl_snapshot_cb cb, void *arg)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_redis_snap *rs;
    size_t n = r->config->nupstreams;

    if (!sl_redis_usable(r) || r->main.state != SL_REDIS_UP)
        return -1;
    rs = calloc(1, sizeof(*rs));
    if (rs == NULL)
        return -1;
    rs->snap = sl_snapshot_new(r->config);
    if (rs->snap == NULL) {
        free(rs);
        return -1;
    }
    rs->cb = cb;
    rs->arg = arg;
    rs->top = req->top;
    /* Held until every run is written, so no reply completes it early. */
    rs->pending = 1;
    for (size_t i = 0; i < n && rs->error == NULL; i++) {
        const struct sl_upstream_conf *up = &r->config->upstreams[i];
        for (size_t g = 0; g < sl_redis_ngroups(r, up); g++) {
            struct sl_redis_op *op = sl_redis_snap_op(r, up, g, req);
            if (op == NULL) {
                rs->error = "out of memory";
                break;
            }
            op->snap = rs;
            if (sl_redis_send(r, op) != 0) {
                sl_redis_op_free(op);
                rs->error = "redis is unreachable";
                break;
            }
            rs->pending++;
        }
    }
    if (rs->pending == 1 && rs->error != NULL) {
        /* Nothing was written: fail without a callback. */
        sl_snapshot_free(rs->snap);
        free(rs);
        return -1;
    }
    /* Drop the hold: the callback runs when the last reply is in. */
    if (--rs->pending == 0)
        sl_redis_snap_done(r, rs);
    return 0;
}

/* ---- the usage history ---- */

/*
 * Write what is new in the process's history, one script run per rate rule
 * (see sl_lua_hist_add).  Counts are taken from the history as they are
 * written: a run that fails loses them (the history is a picture, not a
 * limit); a run that cannot be built (out of memory) too.
 */
static void sl_redis_write_history(struct sl_redis *r)
{
    struct sl_hist_delta *d = malloc(SL_REDIS_HISTORY_BATCH * sizeof(*d));
    int64_t now_ms = sl_redis_est_now(r) / 1000;

    if (d == NULL)
        return;
    for (size_t u = 0; u < r->config->nupstreams; u++) {
        const struct sl_upstream_conf *up = &r->config->upstreams[u];
        for (size_t i = 0; i < up->nrules; i++) {
            const struct sl_rule *rule = &up->rules[i];
            struct sl_redis_op *op;
            size_t n;
            if (rule->kind != SL_RULE_RATE ||
                !sl_history_dirty(r->history, rule->metric_slot))
                continue;
            n = sl_history_unsent(r->history, rule->metric_slot, now_ms, d,
                                  SL_REDIS_HISTORY_BATCH);
            if (n == 0 || (op = sl_redis_script_op(r, SL_LUA_HIST_ADD)) == NULL)
                continue;
            sl_args_int(&op->args, SL_REDIS_HISTORY_TTL_MS);
            sl_args_int(&op->args, SL_REDIS_HISTORY_FIELDS);
            /* Deltas come minute by minute: one key and one field count
             * per minute, then its pairs. */
            for (size_t j = 0; j < n;) {
                size_t end = j;
                char minute[24];
                while (end < n && d[end].minute == d[j].minute)
                    end++;
                snprintf(minute, sizeof(minute), "%lld", (long long)d[j].minute);
                sl_args_key(&op->keys, r, up, rule, 'y', minute, strlen(minute));
                sl_args_int(&op->args, (long long)(end - j));
                for (; j < end; j++) {
                    sl_args_str(&op->args, d[j].app == SL_HIST_OTHER_APP || r->apps == NULL
                                               ? "other"
                                               : sl_apps_name(r->apps, d[j].app));
                    sl_args_int(&op->args, (long long)d[j].n);
                }
            }
            sl_redis_send_script(r, op);
        }
    }
    free(d);
}

void sl_store_redis_history(struct sl_store *store, struct sl_history *history,
                            const struct sl_apps *apps)
{
    struct sl_redis *r = (struct sl_redis *)store;

    r->history = history;
    r->apps = apps;
    r->next_history_ms = 0;
}

static int64_t sl_redis_wall(struct sl_store *store)
{
    return sl_redis_est_now((struct sl_redis *)store);
}

/* Fill V from one rule's reply (see sl_lua_hist_read).  0 or -1. */
static int sl_redis_hist_fill(struct sl_hist_view *v, const redisReply *rep)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || rep->elements % 2 != 1)
        return -1;
    for (size_t i = 1; i + 1 < rep->elements; i += 2) {
        const redisReply *m = rep->element[i], *f = rep->element[i + 1];
        if (m->type != REDIS_REPLY_INTEGER || f->type != REDIS_REPLY_ARRAY)
            return -1;
        for (size_t j = 0; j + 1 < f->elements; j += 2) {
            char *name = sl_reply_strdup(f->element[j]);
            char *end = NULL;
            long long calls = 0;
            int rc = -1;
            if (f->element[j + 1]->type == REDIS_REPLY_STRING)
                calls = strtoll(f->element[j + 1]->str, &end, 10);
            if (name != NULL && calls >= 0)
                rc = sl_hist_view_add(v, m->integer, name, (uint64_t)calls);
            free(name);
            if (rc != 0)
                return -1;
        }
    }
    return 0;
}

static void sl_redis_hist_done(struct sl_redis_hist *rh)
{
    if (rh->error != NULL) {
        for (size_t i = 0; i < rh->n; i++)
            sl_hist_view_clear(&rh->views[i]);
        free(rh->views);
        rh->views = NULL;
    }
    rh->cb(rh->arg, rh->views, rh->error);
    free(rh);
}

static void sl_redis_hist_reply(struct sl_redis *r, struct sl_redis_op *op,
                                const redisReply *rep)
{
    struct sl_redis_hist *rh = op->hist;

    if (sl_redis_part_failed(r, rep, &rh->error, "the history script",
                             "redis refused the history script"))
        ;
    else if (rh->error == NULL &&
             sl_redis_hist_fill(&rh->views[op->index], rep) != 0)
        rh->error = "unexpected history reply (or out of memory)";
    if (--rh->pending == 0)
        sl_redis_hist_done(rh);
}

static int sl_redis_history(struct sl_store *store, const struct sl_rule *const *rules,
                            size_t n, sl_history_cb cb, void *arg)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_redis_hist *rh;
    int64_t last = sl_redis_est_now(r) / 1000 / 60000;

    if (!sl_redis_usable(r) || r->main.state != SL_REDIS_UP)
        return -1;
    rh = calloc(1, sizeof(*rh));
    if (rh == NULL)
        return -1;
    rh->views = calloc(n ? n : 1, sizeof(*rh->views));
    if (rh->views == NULL) {
        free(rh);
        return -1;
    }
    rh->n = n;
    rh->cb = cb;
    rh->arg = arg;
    /* Held until every run is written, so no reply completes it early. */
    rh->pending = 1;
    for (size_t i = 0; i < n; i++) {
        const struct sl_rule *rule = rules[i];
        const struct sl_upstream_conf *up = NULL;
        struct sl_redis_op *op;
        /* The rule's upstream in this store's configuration. */
        for (size_t u = 0; u < r->config->nupstreams && up == NULL; u++)
            for (size_t k = 0; k < r->config->upstreams[u].nrules; k++)
                if (&r->config->upstreams[u].rules[k] == rule)
                    up = &r->config->upstreams[u];
        if (up == NULL) {
            rh->error = "the configuration changed; ask again";
            break;
        }
        op = sl_redis_script_op(r, SL_LUA_HIST_READ);
        if (op == NULL) {
            rh->error = "out of memory";
            break;
        }
        op->kind = SL_OP_HISTORY;
        op->hist = rh;
        op->index = i;
        sl_args_key(&op->keys, r, up, rule, 'y', "", 0);
        sl_args_int(&op->args, (long long)(last - SL_HIST_MINUTES + 1));
        sl_args_int(&op->args, SL_HIST_MINUTES);
        if (sl_redis_send(r, op) != 0) {
            sl_redis_op_free(op);
            rh->error = "redis is unreachable";
            break;
        }
        rh->pending++;
    }
    if (rh->pending == 1 && rh->error != NULL) {
        /* Nothing was written: fail without a callback. */
        for (size_t i = 0; i < rh->n; i++)
            sl_hist_view_clear(&rh->views[i]);
        free(rh->views);
        free(rh);
        return -1;
    }
    if (--rh->pending == 0)
        sl_redis_hist_done(rh);
    return 0;
}

static bool sl_redis_ready(struct sl_store *store)
{
    struct sl_redis *r = (struct sl_redis *)store;

    if (!r->outage && r->main.state == SL_REDIS_UP)
        return true;
    /* The configured fallback decides calls while Redis is away; "deny"
     * answers every call 503, so the instance is not ready. */
    return r->outage && r->config->on_store_error != SL_STORE_ERROR_DENY;
}

static const struct sl_store_ops sl_redis_ops = {
    .decide = sl_redis_decide,
    .commit = sl_redis_commit,
    .settle = sl_redis_settle,
    .release = sl_redis_release,
    .pause = sl_redis_pause,
    .set_pause = sl_redis_set_pause,
    .sync = sl_redis_sync,
    .tick = sl_redis_tick,
    .timers = sl_redis_timers,
    .destroy = sl_redis_destroy,
    .snapshot = sl_redis_snapshot,
    .ready = sl_redis_ready,
    .flush = sl_redis_flush_now,
    .adopt = sl_redis_adopt,
    .wall = sl_redis_wall,
    .history = sl_redis_history,
};

struct sl_store *sl_store_redis_new(const struct sl_config *config,
                                    struct sl_store *local,
                                    const struct sl_loop *loop, int worker_id)
{
    struct sl_redis *r = calloc(1, sizeof(*r));
    unsigned char rnd[6] = {0};

    if (r == NULL)
        return NULL;
    r->base.ops = &sl_redis_ops;
    r->config = sl_config_ref(config);
    r->local = local;
    r->loop = *loop;
    r->worker_id = worker_id;
    r->main.r = r;
    r->main.state = SL_REDIS_DOWN;
    r->main.backoff_ms = SL_REDIS_BACKOFF_MIN_MS;
    r->sub = r->main;
    r->sub.sub = true;
    snprintf(r->channel, sizeof(r->channel), "%sroom", config->store_prefix);
    /* (a store is a cluster or not for its life: changing it needs a
     * restart) */
    r->stride = config->redis_nseeds > 0 ? SL_REDIS_GROUPS + 1 : 1;
    r->grouped = calloc(SL_MAX_UPSTREAMS, sizeof(*r->grouped));
    r->pending = calloc(SL_MAX_UPSTREAMS * r->stride, sizeof(*r->pending));
    r->commits = calloc(SL_MAX_UPSTREAMS * r->stride, sizeof(*r->commits));
    r->owed_pause_until = calloc(SL_MAX_UPSTREAMS, sizeof(*r->owed_pause_until));
    r->dirty = calloc(SL_MAX_UPSTREAMS * r->stride, sizeof(*r->dirty));
    r->dirty_spare = calloc(SL_MAX_UPSTREAMS * r->stride, sizeof(*r->dirty_spare));
    r->is_dirty = calloc(SL_MAX_UPSTREAMS * r->stride, sizeof(*r->is_dirty));
    if (r->grouped == NULL || r->pending == NULL || r->commits == NULL ||
        r->owed_pause_until == NULL || r->dirty == NULL || r->dirty_spare == NULL ||
        r->is_dirty == NULL || sl_fleet_init(&r->fleet, SL_MAX_UPSTREAMS * r->stride) != 0) {
        sl_redis_free_arrays(r);
        sl_config_unref(r->config);
        free(r);
        return NULL;
    }
    for (size_t i = 0; r->stride > 1 && i < config->nupstreams; i++)
        r->grouped[i] = sl_redis_groups(&config->upstreams[i], true) > 1;
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        uint64_t t = (uint64_t)sl_redis_now_us() ^ ((uint64_t)getpid() << 20);
        memcpy(rnd, &t, sizeof(rnd));
    }
    snprintf(r->instance, sizeof(r->instance), "%02x%02x%02x%02x%02x%02x-%d", rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], (int)getpid());
    if (config->redis_master != NULL) {
        r->sentinel = sl_redis_sentinel_new(config, loop, sl_redis_on_switch, r);
        if (r->sentinel == NULL) {
            sl_redis_free_arrays(r);
            sl_config_unref(r->config);
            free(r);
            return NULL;
        }
    }
    return &r->base;
}
