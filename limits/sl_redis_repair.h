/*
 * sl_redis_repair — internal to the Redis store: what sl_store_redis.c
 * shares with sl_redis_repair.c (the fleet's heartbeat and the repair
 * after Redis lost data).  Not a public header: only those two include it.
 */
#ifndef SL_REDIS_REPAIR_H
#define SL_REDIS_REPAIR_H

#include "sl_store.h"

#include <stdbool.h>
#include <stdint.h>

/* A member's heartbeat, outside and inside a repair phase (µs). */
#define SL_FLEET_BEAT_US (500 * 1000)
#define SL_FLEET_PHASE_BEAT_US (100 * 1000)
/* A member not seen for this long is not waited for. */
#define SL_FLEET_EXPIRY_US (3 * 1000 * 1000)
/* A repair phase lasts at least this (two heartbeats and margin: after
 * a FLUSHALL the registry is gone too, and every live member must have
 * registered again and put its calls back), at most this. */
#define SL_FLEET_PHASE_MIN_US (1200 * 1000)
#define SL_FLEET_PHASE_MAX_US (5 * 1000 * 1000)
/* "redis lost data" is logged at most once this often per upstream and
 * worker; the losses in between are counted in one line at its end. */
#define SL_FLEET_LOSS_LOG_US (10 * 1000 * 1000)

/* One worker's view of the fleet, per unit (an upstream, or one of its
 * tenant groups: sl_store_redis.c numbers them; arrays of UNITS, owned). */
/* A usage report this worker passed to Redis (sl_fleet_report), kept to
 * be put back when Redis loses it. */
struct sl_fleet_report {
    char *upstream, *rule, *per;  /* names, owned ("" per: no `per`) */
    size_t per_len;
    uint64_t remaining;           /* what the provider said was left */
    int64_t sent_us;              /* local µs: the reporting call's send */
};

struct sl_fleet {
    size_t units;
    int64_t *next_beat_us;        /* local µs: the next heartbeat */
    bool *beating;                /* a heartbeat is in flight */
    bool *phase;                  /* the last heartbeat saw a repair phase */
    int64_t *repaired;            /* the phase (its `since`) put back, or 0 */
    bool *repairing;              /* a repair is in flight */
    /* a heartbeat of this unit answered on this connection: its
     * decisions wait for one (on a cluster, units live on different
     * primaries, and one primary's answer says nothing of another's) */
    bool *seen;
    /* "redis lost data", per upstream (its first unit): when it was last
     * logged (local µs, 0: never) and the losses since, not logged one by
     * one (sl_store_redis.c: at most one line per SL_FLEET_LOSS_LOG_US) */
    int64_t *loss_logged_us;
    uint32_t *losses_unlogged;
    /* the newest report per bucket, at most SL_FLEET_REPORTS (the
     * oldest goes first) */
    struct sl_fleet_report *reports;
    size_t nreports;
};

#define SL_FLEET_REPORTS 64

/* Keep RULE's usage report for bucket PER of UP (REMAINING left, its call
 * sent at SENT_US, local µs), replacing an older one of that bucket. */
void sl_fleet_report(struct sl_fleet *f, const struct sl_upstream_conf *up,
                     const struct sl_rule *rule, const char *per, size_t per_len,
                     uint64_t remaining, int64_t sent_us);

int sl_fleet_init(struct sl_fleet *f, size_t units);
void sl_fleet_free(struct sl_fleet *f);
/* A new connection: every upstream's heartbeat is due now, and decisions
 * wait for the first answer (a restart that kept an older snapshot keeps
 * the marker, and only the heartbeat sees the new run_id). */
void sl_fleet_reset(struct sl_fleet *f);

/* Where a script's KEYS and ARGV go (sl_store_redis.c builds the keys:
 * RULE NULL names the upstream's fleet keys m, f, k; they, and the pause,
 * are the unit's).  WANTS (NULL: every bucket) says whether the bucket of
 * per value PER is the unit's: an upstream with tenant groups is repaired
 * one group at a time, each with its own buckets. */
struct sl_repair_out {
    void *ctx;
    void (*key)(void *ctx, const struct sl_upstream_conf *up,
                const struct sl_rule *rule, char type, const char *per,
                size_t per_len);
    void (*arg)(void *ctx, const char *s, size_t len);
    void (*num)(void *ctx, long long v);
    bool (*wants)(void *ctx, const char *per, size_t per_len);
};

/* Something this worker holds in Redis, to put back: a reservation (type
 * v) or a concurrency lease (type c) of MEMBER, for TTL_US from then. */
struct sl_repair_slot {
    const struct sl_rule *rule;
    const char *per;
    size_t per_len;
    char type;
    const char *member;
    int64_t ttl_us;
};

/* For putting usage reports back: the worker's local µs now; whether it
 * knows a lower bound of (Redis's clock - its own) at now, OFFSET_US, and
 * the clocks' drift bound (1 / DRIFT_DIV: the bound is lowered by the time
 * back to each report's call); without one, how much earlier than
 * measured a report's call may have been sent on Redis's clock
 * (ALLOWANCE_US: store_timeout). */
struct sl_repair_clock {
    int64_t now_us;
    bool have_offset;
    int64_t offset_us;
    int64_t drift_div;
    int64_t allowance_us;
};

/* fleet.lua's KEYS and ARGV for UP, as member MEMBER.  MARGIN_US: how
 * long after its call was sent a commit may still run (store_timeout and
 * the commit's hold, and the servers' clock skew).  CLUSTER: Redis is a
 * Cluster (the marker names the node; a slot that moved by migration is
 * told from a loss). */
void sl_fleet_beat_args(const struct sl_upstream_conf *up, const char *member,
                        const char *channel, int64_t margin_us, bool cluster,
                        const struct sl_repair_out *out);

/*
 * repair.lua's KEYS and ARGV for UP: every call MEMORY (the process's
 * memory store, which logs every call the process sent) has in UP's rate
 * windows, SLOTS, FLEET's usage reports still in force (CLOCK: when and
 * where their calls were sent on Redis's clock), and the pause left
 * (PAUSE_LEFT_US, 0: none), answering the phase SINCE as MEMBER.  Calls carry their apps'
 * names (APPS; NULL: "-").  Returns 0, or -1 (out of
 * memory: nothing usable was built).
 */
int sl_repair_args(struct sl_store *memory, const struct sl_upstream_conf *up,
                   const char *member, int64_t since,
                   const struct sl_repair_slot *slots, size_t nslots,
                   const struct sl_fleet *fleet, const struct sl_repair_clock *clock,
                   const struct sl_apps *apps, int64_t pause_left_us,
                   const struct sl_repair_out *out);

#endif
