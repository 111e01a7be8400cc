/*
 * sl_redis_repair — no count lost when Redis loses data.
 *
 * Redis forgets: FLUSHALL, a restart without persistence, a failover to a
 * replica that had not received the last writes, eviction under an
 * allkeys-* or volatile-* policy (every key of sluice has a TTL).  Each
 * time, the logs of calls already sent are gone, and an empty bucket would
 * grant the whole quota again.  What was sent is still known: every
 * instance logs each call it sends in its memory store (sl_store_redis.c,
 * sl_redis_mirror), and each worker knows the reservations and concurrency
 * leases it holds.  This file puts them back, and keeps the fleet from
 * deciding until every live instance has.
 *
 * Detection, cheapest first.  Each upstream has a marker key m
 * ("state|evicted_keys|run_id|since", its hash tag, so it stays in the
 * upstream's Cluster slot), read by every decision run (one GET: the last
 * KEYS of decide.lua).  A missing marker is a Redis that lost everything
 * (flush, restart, failover to an empty replica, the marker evicted): the
 * run decides nothing and answers "lost".  What the marker cannot see is
 * seen by the heartbeat (fleet.lua, every SL_FLEET_BEAT_US per worker and
 * upstream, and at once on every new connection, before any decision on
 * it): Redis's run_id differing from the one in the marker (a restart that
 * loaded an older snapshot, a failover to a replica that kept the marker
 * but not the last writes) and evicted_keys greater than when the marker
 * was set (eviction that spared the marker).  Between two heartbeats, a
 * decision that finds a rate log empty compares evicted_keys itself (one
 * INFO, only for an empty log, so the steady state pays nothing): a log
 * evicted under calls in its window is never read as an empty window.
 * The same for a leaky bucket's level (its own key) found missing.
 * Role changes need no check of their own: a new primary has its own
 * run_id, and a demoted one refuses the scripts (READONLY).
 *
 * The repair phase.  The first heartbeat that finds the marker missing or
 * stale sets it to "r" (repairing since now), empties the set k of
 * members that put their calls back, and each worker registers in the
 * hash f (member -> last seen) on every heartbeat.  While the marker says
 * "r", decisions answer "lost" and the call waits in its worker (neither
 * refused nor sent: a fallback to the local share would let an instance
 * that sent little before the loss grant its share on top of the others'
 * calls) until the worker's heartbeat sees the phase over, or by
 * on_store_error after SL_FLEET_PHASE_MAX_US and a second (the end is
 * also published on the room channel, as the pause key's: a call the
 * proxy holds for the pause asks again).  A worker that sees the
 * phase (heartbeats every SL_FLEET_PHASE_BEAT_US meanwhile) sends
 * repair.lua: every call of its process in the upstream's windows, its
 * own reservations and leases, the upstream's pause; the script adds the
 * member to k.  The phase ends, in the next heartbeat after it, when it
 * is SL_FLEET_PHASE_MIN_US old and every member seen within
 * SL_FLEET_EXPIRY_US is in k, or when it is SL_FLEET_PHASE_MAX_US old.
 * The minimum covers a FLUSHALL, which empties f as well: every live
 * worker heartbeats within SL_FLEET_BEAT_US (plus scheduling), so after
 * 1.2 s each has registered and is waited for.  The maximum bounds a
 * member that registered and cannot finish: service resumes within 5 s of
 * the loss being seen, about 1.3 s when every instance answers.
 *
 * What is put back.  After a flush, a restart without persistence or an
 * eviction: every call in the open windows, and a leaky bucket's level,
 * rebuilt from its merged log (repair.lua's refill: the replay, plus what
 * the bucket may have held before the oldest call kept, sl_bucket_refill;
 * never lowered).  When the marker survived on
 * a server with another run_id (a failover, a restart that loaded a
 * snapshot), only what that server may lack: a replica and a snapshot
 * hold a primary's writes in order, so every commit that ran before the
 * marker's last heartbeat is there, and a commit runs at most
 * store_timeout and its hold after its call was sent (or the link is
 * given up and the commit owed); calls sent from the last heartbeat less
 * that margin (and 50 ms for the servers' clocks) are put back.  The
 * calls sent just before the failover count twice then, the safe side.
 *
 * Idempotent.  A call is put back with an id: the process's random id,
 * its send time on the process's monotonic clock, and an ordinal among
 * calls of that bucket sent in the same microsecond.  repair.lua adds the
 * id to the bucket's set x, and only when it was new, the call's stamp to
 * the log: the workers of one process (which share the memory store), a
 * repair sent again, two repairs racing, all put a call back once.
 * Reservations and leases are sorted-set members, the same as before, so
 * writing them again changes nothing.  A stamp is Redis's TIME minus the
 * delay since the send measured when the script was built: never earlier
 * than the real send (the same rule as commits), merged into the log in
 * order.
 *
 * The provider's usage reports: each worker keeps the newest report per
 * bucket it passed to Redis (sl_fleet_report, at most SL_FLEET_REPORTS,
 * the oldest dropped first) and puts it back with its calls, written from
 * the merged log as sync.lua writes one, unless the bucket holds a newer
 * report.  The report keeps its cutoff; calls other members put back
 * after it, sent from the cutoff on, are added to its count, so each call
 * counts once against it, whichever order the repairs run in.  A leaky
 * bucket's report raises the rebuilt level as sync.lua's would.
 *
 * Calls go back with their apps (the memory store tags each with its app
 * id), so `apps` shares count them as before, and at their settled cost
 * when a settlement charged more than the estimate (sl_store_redis.c
 * mirrors the charge; a refund is not mirrored: the safe side).
 *
 * What is not put back: the index of a `per` rule's buckets (the status
 * page's list; limits do not read it).  Entries logged by commits carry no
 * id, so a repair after an eviction that spared some logs counts the
 * calls that were not lost twice, for at most one window: the safe side.
 * A commit held past store_timeout by a stall at the very moment of a
 * failover may be missed (its link is given up, the commit is not owed).
 */
#include "sl_redis_repair.h"

#include "sl_apps.h"
#include "sl_window.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* The process's id in the ids of calls put back: the same for all its
 * workers (they share the memory store), different for every process. */
static char sl_repair_pid[24];
static pthread_once_t sl_repair_pid_once = PTHREAD_ONCE_INIT;

static void sl_repair_make_pid(void)
{
    unsigned char rnd[6] = {0};

    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t t = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20);
        memcpy(rnd, &t, sizeof(rnd));
    }
    snprintf(sl_repair_pid, sizeof(sl_repair_pid), "%02x%02x%02x%02x%02x%02x",
             rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
}

int sl_fleet_init(struct sl_fleet *f, size_t units)
{
    memset(f, 0, sizeof(*f));
    f->units = units;
    f->next_beat_us = calloc(units, sizeof(*f->next_beat_us));
    f->beating = calloc(units, sizeof(*f->beating));
    f->phase = calloc(units, sizeof(*f->phase));
    f->repaired = calloc(units, sizeof(*f->repaired));
    f->repairing = calloc(units, sizeof(*f->repairing));
    f->seen = calloc(units, sizeof(*f->seen));
    f->loss_logged_us = calloc(units, sizeof(*f->loss_logged_us));
    f->losses_unlogged = calloc(units, sizeof(*f->losses_unlogged));
    if (f->next_beat_us == NULL || f->beating == NULL || f->phase == NULL ||
        f->repaired == NULL || f->repairing == NULL || f->seen == NULL ||
        f->loss_logged_us == NULL || f->losses_unlogged == NULL) {
        sl_fleet_free(f);
        return -1;
    }
    pthread_once(&sl_repair_pid_once, sl_repair_make_pid);
    return 0;
}

static void sl_fleet_report_free(struct sl_fleet_report *rp)
{
    free(rp->upstream);
    free(rp->rule);
    free(rp->per);
}

void sl_fleet_report(struct sl_fleet *f, const struct sl_upstream_conf *up,
                     const struct sl_rule *rule, const char *per, size_t per_len,
                     uint64_t remaining, int64_t sent_us)
{
    struct sl_fleet_report *rp = NULL, nr;

    for (size_t i = 0; i < f->nreports; i++) {
        struct sl_fleet_report *e = &f->reports[i];
        if (strcmp(e->upstream, up->name) == 0 && strcmp(e->rule, rule->name) == 0 &&
            e->per_len == per_len && memcmp(e->per, per, per_len) == 0) {
            if (e->sent_us > sent_us)
                return;         /* a newer report of this bucket is kept */
            e->remaining = remaining;
            e->sent_us = sent_us;
            return;
        }
    }
    if (f->reports == NULL) {
        f->reports = calloc(SL_FLEET_REPORTS, sizeof(*f->reports));
        if (f->reports == NULL)
            return;
    }
    nr = (struct sl_fleet_report){
        .upstream = strdup(up->name), .rule = strdup(rule->name), .per = malloc(per_len + 1),
        .per_len = per_len, .remaining = remaining, .sent_us = sent_us};
    if (nr.upstream == NULL || nr.rule == NULL || nr.per == NULL) {
        sl_fleet_report_free(&nr);
        return;
    }
    memcpy(nr.per, per, per_len);
    nr.per[per_len] = '\0';
    if (f->nreports < SL_FLEET_REPORTS) {
        rp = &f->reports[f->nreports++];
    } else {
        rp = &f->reports[0];
        for (size_t i = 1; i < f->nreports; i++)
            if (f->reports[i].sent_us < rp->sent_us)
                rp = &f->reports[i];
        sl_fleet_report_free(rp);
    }
    *rp = nr;
}

void sl_fleet_free(struct sl_fleet *f)
{
    for (size_t i = 0; i < f->nreports; i++)
        sl_fleet_report_free(&f->reports[i]);
    free(f->reports);
    free(f->next_beat_us);
    free(f->beating);
    free(f->phase);
    free(f->repaired);
    free(f->repairing);
    free(f->seen);
    free(f->loss_logged_us);
    free(f->losses_unlogged);
    memset(f, 0, sizeof(*f));
}

void sl_fleet_reset(struct sl_fleet *f)
{
    /* Heartbeats and repairs in flight were answered NULL with their link. */
    memset(f->next_beat_us, 0, f->units * sizeof(*f->next_beat_us));
    memset(f->phase, 0, f->units * sizeof(*f->phase));
    memset(f->seen, 0, f->units * sizeof(*f->seen));
}

void sl_fleet_beat_args(const struct sl_upstream_conf *up, const char *member,
                        const char *channel, int64_t margin_us, bool cluster,
                        const struct sl_repair_out *out)
{
    out->key(out->ctx, up, NULL, 'm', "", 0);
    out->key(out->ctx, up, NULL, 'f', "", 0);
    out->key(out->ctx, up, NULL, 'k', "", 0);
    out->key(out->ctx, up, &up->pause_rule, 'p', "", 0);
    out->arg(out->ctx, member, strlen(member));
    out->num(out->ctx, SL_FLEET_EXPIRY_US);
    out->num(out->ctx, SL_FLEET_PHASE_MIN_US);
    out->num(out->ctx, SL_FLEET_PHASE_MAX_US);
    out->arg(out->ctx, channel, strlen(channel));
    out->num(out->ctx, margin_us);
    out->num(out->ctx, cluster ? 1 : 0);
}

/* One rate bucket of the memory store, copied out of its lock. */
struct sl_repair_bucket {
    const struct sl_rule *rule;
    char *per;
    size_t per_len;
    int64_t *times;               /* oldest first, the memory store's clock */
    uint16_t *tags;               /* ... each call's app id */
    uint32_t n;
};

struct sl_repair_walk {
    const struct sl_upstream_conf *up;    /* the worker's */
    const struct sl_repair_out *out;      /* its wants() */
    struct sl_repair_bucket *b;
    size_t n, cap;
    bool oom;
};

/* sl_mem_export_cb: keep UP's rate buckets (matched by name: the memory
 * store may serve another generation of the configuration). */
static int sl_repair_collect(void *arg, const struct sl_upstream_conf *up,
                             const struct sl_rule *rule, const char *key,
                             size_t key_len, const struct sl_window *win,
                             int64_t paused_until, const char *reason)
{
    struct sl_repair_walk *w = arg;
    struct sl_repair_bucket *b;
    const struct sl_rule *mine = NULL;

    (void)paused_until, (void)reason;
    if (win == NULL || win->count == 0 || up == NULL || strcmp(up->name, w->up->name) != 0)
        return 0;
    if (w->out->wants != NULL && !w->out->wants(w->out->ctx, key, key_len))
        return 0;           /* another tenant group's */
    for (size_t i = 0; i < w->up->nrules; i++)
        if (w->up->rules[i].kind == SL_RULE_RATE &&
            strcmp(w->up->rules[i].name, rule->name) == 0)
            mine = &w->up->rules[i];
    if (mine == NULL)
        return 0;           /* not a rule of the configuration this worker runs */
    if (w->n == w->cap) {
        size_t cap = w->cap != 0 ? 2 * w->cap : 16;
        struct sl_repair_bucket *nb = realloc(w->b, cap * sizeof(*nb));
        if (nb == NULL) {
            w->oom = true;
            return -1;
        }
        w->b = nb;
        w->cap = cap;
    }
    b = &w->b[w->n];
    b->rule = mine;
    b->per = malloc(key_len + 1);
    b->times = malloc(win->count * sizeof(*b->times));
    b->tags = malloc(win->count * sizeof(*b->tags));
    if (b->per == NULL || b->times == NULL || b->tags == NULL) {
        free(b->per);
        free(b->times);
        free(b->tags);
        w->oom = true;
        return -1;
    }
    memcpy(b->per, key, key_len);
    b->per[key_len] = '\0';
    b->per_len = key_len;
    for (uint32_t i = 0; i < win->count; i++) {
        b->times[i] = win->times[(win->head + i) % win->cap];
        b->tags[i] = win->tags[(win->head + i) % win->cap];
    }
    b->n = win->count;
    w->n++;
    return 0;
}

/* UP's rule of a kept report, if it still follows reports. */
static const struct sl_rule *sl_repair_report_rule(const struct sl_upstream_conf *up,
                                                   const struct sl_fleet_report *rp)
{
    if (strcmp(rp->upstream, up->name) != 0)
        return NULL;
    for (size_t i = 0; i < up->nrules; i++)
        if (up->rules[i].kind == SL_RULE_RATE && up->rules[i].sync != SL_SYNC_NONE &&
            strcmp(up->rules[i].name, rp->rule) == 0)
            return &up->rules[i];
    return NULL;
}

/* The reports section of repair.lua: FLEET's reports of UP still in force
 * at NOW_US. */
static void sl_repair_reports(const struct sl_fleet *fleet, const struct sl_upstream_conf *up,
                              const struct sl_repair_clock *clock,
                              const struct sl_repair_out *out)
{
    size_t n = 0;

    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            out->num(out->ctx, (long long)n);
        for (size_t i = 0; fleet != NULL && i < fleet->nreports; i++) {
            const struct sl_fleet_report *rp = &fleet->reports[i];
            const struct sl_rule *rule = sl_repair_report_rule(up, rp);
            int64_t ago = clock->now_us > rp->sent_us ? clock->now_us - rp->sent_us : 0;
            if (rule == NULL || ago >= rule->span_us ||
                (out->wants != NULL && !out->wants(out->ctx, rp->per, rp->per_len)))
                continue;
            if (pass == 0) {
                n++;
                continue;
            }
            out->key(out->ctx, up, rule, 'r', rp->per, rp->per_len);
            out->key(out->ctx, up, rule, rule->leaky ? 'b' : 's', rp->per, rp->per_len);
            out->num(out->ctx, rule->leaky ? 1 : 0);
            out->num(out->ctx, rp->remaining > (uint64_t)LLONG_MAX ? LLONG_MAX
                                                                   : (long long)rp->remaining);
            out->num(out->ctx, ago);
            out->num(out->ctx, clock->have_offset
                                   ? rp->sent_us + clock->offset_us - ago / clock->drift_div
                                   : 0);
            out->num(out->ctx, clock->allowance_us);
            out->num(out->ctx, rule->span_us);
            out->num(out->ctx, (long long)rule->limit);
            out->num(out->ctx, rule->sync_probe_us);
            if (rule->leaky) {
                out->num(out->ctx, rule->leak.n);
                out->num(out->ctx, rule->leak.per_us);
            }
        }
    }
}

int sl_repair_args(struct sl_store *memory, const struct sl_upstream_conf *up,
                   const char *member, int64_t since,
                   const struct sl_repair_slot *slots, size_t nslots,
                   const struct sl_fleet *fleet, const struct sl_repair_clock *clock,
                   const struct sl_apps *apps, int64_t pause_left_us,
                   const struct sl_repair_out *out)
{
    struct sl_repair_walk w = {.up = up, .out = out};
    const char *app;
    int64_t now = 0;
    int rc = -1;
    char id[96];

    if (memory != NULL) {
        (void)sl_store_memory_export(memory, sl_repair_collect, &w);
        if (w.oom)
            goto out;
        /* Taken before the script is written, so before it runs: a stamp
         * of TIME - (now - sent) is never earlier than the send. */
        now = sl_store_memory_now(memory);
    }
    out->key(out->ctx, up, NULL, 'm', "", 0);
    out->key(out->ctx, up, NULL, 'k', "", 0);
    out->arg(out->ctx, member, strlen(member));
    out->num(out->ctx, since);
    out->num(out->ctx, (long long)w.n);
    for (size_t i = 0; i < w.n; i++) {
        const struct sl_repair_bucket *b = &w.b[i];
        bool h = b->rule->nshares > 0, leaky = b->rule->leaky;
        bool sync = !leaky && b->rule->sync != SL_SYNC_NONE;
        out->key(out->ctx, up, b->rule, 'r', b->per, b->per_len);
        out->key(out->ctx, up, b->rule, 'a', b->per, b->per_len);
        out->key(out->ctx, up, b->rule, 'x', b->per, b->per_len);
        if (h)
            out->key(out->ctx, up, b->rule, 'h', b->per, b->per_len);
        if (leaky)
            out->key(out->ctx, up, b->rule, 'b', b->per, b->per_len);
        if (sync)
            out->key(out->ctx, up, b->rule, 's', b->per, b->per_len);
        out->num(out->ctx, (long long)b->rule->limit);
        out->num(out->ctx, b->rule->span_us);
        out->num(out->ctx, (h ? 1 : 0) | (leaky ? 2 : 0) | (sync ? 4 : 0));
        if (leaky) {
            out->num(out->ctx, b->rule->leak.n);
            out->num(out->ctx, b->rule->leak.per_us);
        }
        out->num(out->ctx, b->n);
        for (uint32_t j = 0, same = 0; j < b->n; j++) {
            int len;
            same = j > 0 && b->times[j] == b->times[j - 1] ? same + 1 : 0;
            len = snprintf(id, sizeof(id), "%s:%lld:%u", sl_repair_pid,
                           (long long)b->times[j], same);
            out->arg(out->ctx, id, (size_t)len);
            out->num(out->ctx, now > b->times[j] ? now - b->times[j] : 0);
            app = apps != NULL ? sl_apps_name(apps, b->tags[j]) : "-";
            out->arg(out->ctx, app, strlen(app));
        }
    }
    out->num(out->ctx, (long long)nslots);
    for (size_t i = 0; i < nslots; i++) {
        const struct sl_repair_slot *s = &slots[i];
        out->key(out->ctx, up, s->rule, s->type, s->per, s->per_len);
        out->arg(out->ctx, s->member, strlen(s->member));
        out->num(out->ctx, s->ttl_us);
    }
    sl_repair_reports(fleet, up, clock, out);
    if (pause_left_us > 0)
        out->key(out->ctx, up, &up->pause_rule, 'p', "", 0);
    out->num(out->ctx, pause_left_us > 0 ? pause_left_us : 0);
    rc = 0;
out:
    for (size_t i = 0; i < w.n; i++) {
        free(w.b[i].per);
        free(w.b[i].times);
        free(w.b[i].tags);
    }
    free(w.b);
    return rc;
}
