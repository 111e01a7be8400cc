/*
 * sl_store_redis — one quota shared exactly by every sluice instance.
 *
 * Each worker thread owns one of these: a hiredis asynchronous connection
 * driven by the worker's own event loop (through struct sl_loop), so every
 * reply is handled on the thread that asked.  Many decisions are in flight
 * on one connection at once (pipelining); replies arrive in order, which
 * is what makes the FIFO of pending operations below both the bookkeeping
 * and the timeout mechanism: hiredis 0.14 has no command timeouts, so when
 * the oldest pending operation is older than `store_timeout`, the
 * connection is declared dead, freed (every pending operation is answered
 * with a NULL reply and falls back), and re-established with backoff.
 *
 * One round trip per decision.  All rules a call matches go to one Lua
 * script run (EVALSHA; on NOSCRIPT, after a Redis restart or SCRIPT FLUSH,
 * the same operation is sent again as EVAL).  Phase one looks at every
 * bucket and writes nothing; phase two records the call in all of them.
 * Time is Redis's TIME inside the script: instances' clocks never matter.
 * A rate bucket is a LIST of admission times in microseconds, newest at
 * the head, holding at most `limit` entries: a call fits iff the list is
 * shorter than `limit` or its limit-th newest entry has left the window
 * (O(1): LLEN, LINDEX), which is the sliding log of the memory store
 * (docs/design.md) in Redis form.  Entries that left the window are popped
 * from the tail when a call is recorded, so LLEN is the count in the window
 * and every admission is its own entry (two calls in the same microsecond
 * both count).  About 10 bytes per logged call.  Concurrency buckets are
 * sorted sets of leases (unique members) whose score is their
 * expiry, renewed by the holder every concurrency_lease/3, so the slots of
 * an instance that died come back by themselves.  Every key gets its TTL
 * in the same script, so idle keys disappear.  All keys of one upstream
 * share a hash tag ({upstream}), so the script runs on one Redis Cluster
 * slot.
 *
 * When Redis cannot answer, on_store_error decides: "local" enforces the
 * same rules in this instance's memory store, "deny" answers UNAVAILABLE,
 * "allow" forwards uncounted.  The outage is logged once per process (not
 * per call, not per worker), and so is the recovery.
 */
#include "sl_store.h"

#include "sl_duration.h"
#include "sl_log.h"

#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define SL_REDIS_BACKOFF_MIN_MS 50
#define SL_REDIS_BATCH_MAX 32       /* calls decided by one script run */
#define SL_REDIS_BACKOFF_MAX_MS 1000

/*
 * The decision script.  One run decides a batch of calls (those that
 * arrived in one event-loop pass), each all-or-nothing, in order:
 *   KEYS    the buckets of call 1, then of call 2, ...
 *   ARGV    base, lease_us, ncalls, then per call: nrules, then per rule:
 *           kind ('r' rate, 'c' concurrency), limit, window_us
 * A call's unique member is base..':'..call_number.  The reply holds, per
 * call, {1, best_rule, remaining, reset_us} or {0, denying_rule, wait_us}.
 */
static const char sl_redis_decide_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local base, lease, ncalls = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local a, k, out = 4, 1, {}\n"
    "for c = 1, ncalls do\n"
    "  local n = tonumber(ARGV[a])\n"
    "  a = a + 1\n"
    "  local deny, wait = 0, 0\n"
    "  for i = 0, n - 1 do\n"
    "    local key, kind = KEYS[k + i], ARGV[a + 3 * i]\n"
    "    local limit, win = tonumber(ARGV[a + 3 * i + 1]), tonumber(ARGV[a + 3 * i + 2])\n"
    "    local w = 0\n"
    "    if kind == 'r' then\n"
    "      local len = redis.call('LLEN', key)\n"
    "      if len >= limit then\n"
    "        local idx = limit - 1\n"
    "        if len == limit then idx = -1 end\n"
    "        local e = tonumber(redis.call('LINDEX', key, idx))\n"
    "        if e > now - win then w = e + win - now end\n"
    "      end\n"
    "    elseif kind == 'p' then\n"
    "      local u = tonumber(redis.call('GET', key) or 0)\n"
    "      if u > now then w = u - now end\n"
    "    elseif redis.call('ZCOUNT', key, '(' .. now, '+inf') >= limit then\n"
    "      w = 1000000\n"
    "    end\n"
    "    if w > wait then deny, wait = i + 1, w end\n"
    "  end\n"
    "  if deny > 0 then\n"
    "    out[c] = {0, deny, wait}\n"
    "  else\n"
    "    local member = base .. ':' .. c\n"
    "    local best, rem, reset = 0, 0, 0\n"
    "    for i = 0, n - 1 do\n"
    "      local key, kind = KEYS[k + i], ARGV[a + 3 * i]\n"
    "      local limit, win = tonumber(ARGV[a + 3 * i + 1]), tonumber(ARGV[a + 3 * i + 2])\n"
    "      if kind == 'r' then\n"
    "        local tail = redis.call('LINDEX', key, -1)\n"
    "        while tail and tonumber(tail) <= now - win do\n"
    "          redis.call('RPOP', key)\n"
    "          tail = redis.call('LINDEX', key, -1)\n"
    "        end\n"
    "        local len = redis.call('LPUSH', key, now)\n"
    "        if len > limit then\n"
    "          redis.call('LTRIM', key, 0, limit - 1)\n"
    "          len = limit\n"
    "          tail = redis.call('LINDEX', key, -1)\n"
    "        end\n"
    "        redis.call('PEXPIRE', key, math.ceil(win / 1000) + 1000)\n"
    "        local left = limit - len\n"
    "        if best == 0 or left < rem then\n"
    "          best, rem, reset = i + 1, left, (tonumber(tail) or now) + win - now\n"
    "        end\n"
    "      elseif kind == 'c' then\n"
    "        redis.call('ZREMRANGEBYSCORE', key, '-inf', now)\n"
    "        redis.call('ZADD', key, now + lease, member)\n"
    "        redis.call('PEXPIRE', key, math.ceil(lease / 1000) * 2 + 1000)\n"
    "      end\n"
    "    end\n"
    "    out[c] = {1, best, rem, reset}\n"
    "  end\n"
    "  a, k = a + 3 * n, k + n\n"
    "end\n"
    "return out\n";

static const char sl_redis_renew_lua[] =
    "local t = redis.call('TIME')\n"
    "local ttl = tonumber(ARGV[2])\n"
    "local exp = tonumber(t[1]) * 1000000 + tonumber(t[2]) + ttl\n"
    "for i = 1, #KEYS do\n"
    "  redis.call('ZADD', KEYS[i], 'XX', exp, ARGV[1])\n"
    "  redis.call('PEXPIRE', KEYS[i], math.ceil(ttl / 1000) * 2 + 1000)\n"
    "end\n"
    "return 1\n";

static const char sl_redis_pause_lua[] =
    "local t = redis.call('TIME')\n"
    "local d = tonumber(ARGV[1])\n"
    "local u = tonumber(t[1]) * 1000000 + tonumber(t[2]) + d\n"
    "if u > tonumber(redis.call('GET', KEYS[1]) or 0) then\n"
    "  redis.call('SET', KEYS[1], u, 'PX', math.ceil(d / 1000) + 1000)\n"
    "end\n"
    "return 1\n";

/* Pad a rate bucket with "now" entries until at most ARGV[3] calls fit. */
static const char sl_redis_sync_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local limit, win, remaining = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local key = KEYS[1]\n"
    "local tail = redis.call('LINDEX', key, -1)\n"
    "while tail and tonumber(tail) <= now - win do\n"
    "  redis.call('RPOP', key)\n"
    "  tail = redis.call('LINDEX', key, -1)\n"
    "end\n"
    "local add = limit - remaining - redis.call('LLEN', key)\n"
    "for i = 1, add do redis.call('LPUSH', key, now) end\n"
    "if add > 0 then redis.call('PEXPIRE', key, math.ceil(win / 1000) + 1000) end\n"
    "return add\n";

enum sl_redis_state {
    SL_REDIS_DOWN,          /* no context; reconnect at reconnect_at */
    SL_REDIS_CONNECTING,    /* context, connect(2) in progress */
    SL_REDIS_UP,            /* connected */
};

enum sl_redis_op_kind {
    SL_OP_SETUP,            /* AUTH, SELECT, SCRIPT LOAD */
    SL_OP_DECIDE,
    SL_OP_RENEW,
    SL_OP_RELEASE,
};

struct sl_redis;

/* One command in flight.  Owned by the FIFO until its reply. */
struct sl_redis_op {
    struct sl_redis_op *next;
    struct sl_redis *r;
    enum sl_redis_op_kind kind;
    int64_t deadline_ms;
    /* one call of a batch */
    const struct sl_check *check;   /* owned by the caller until cb */
    sl_decide_cb cb;
    void *arg;
    char member[64];
    /* SL_OP_DECIDE: a batch of calls of one upstream */
    bool eval;                      /* sent as EVAL (script body) */
    size_t ncalls;
    struct sl_redis_op *calls[SL_REDIS_BATCH_MAX];
    char base[48];
};

/* Slots of one call in concurrency buckets (a struct sl_lease to callers). */
struct sl_redis_lease {
    struct sl_redis_lease *prev, *next;   /* live list, for renewal */
    struct sl_lease *local;               /* decided locally: its lease */
    bool live;                            /* on the live list */
    char member[64];
    size_t nkeys;
    char *keys[SL_MAX_HITS];              /* owned */
    size_t key_lens[SL_MAX_HITS];
};

struct sl_redis {
    struct sl_store base;
    const struct sl_config *config;
    struct sl_store *local;               /* shared memory store, not owned */
    struct sl_loop loop;
    int worker_id;
    redisAsyncContext *ac;
    enum sl_redis_state state;
    bool freeing;                         /* inside redisAsyncFree */
    bool outage;                          /* this worker counts as down */
    bool want_read, want_write;
    int fd;
    int64_t reconnect_at_ms;
    int64_t connect_deadline_ms;
    int backoff_ms;
    struct sl_redis_op *fifo_head, *fifo_tail;
    char sha[41];                         /* of the decide script, "" unknown */
    char renew_sha[41];
    uint64_t counter;                     /* for unique members */
    char instance[24];
    struct sl_redis_lease *leases;        /* live leases (renewal list) */
    struct sl_redis_op **pending;         /* per upstream: batch being built */
    int64_t next_renew_ms;
    int64_t last_error_log_ms;
};

/* Workers of this process currently in an outage (log once per outage). */
static _Atomic int sl_redis_down_workers;

static void sl_redis_fail(struct sl_redis *r, const char *why);
static void sl_redis_load_scripts(struct sl_redis *r);
static void sl_redis_flush(struct sl_redis *r, size_t upstream);
static void sl_redis_on_reply(redisAsyncContext *ac, void *reply, void *privdata);

static int64_t sl_redis_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- outage bookkeeping ---- */

static void sl_redis_mark_down(struct sl_redis *r, const char *why)
{
    static const char *const policy[] = {
        "enforcing the same limits per instance in memory",
        "answering 503", "forwarding calls uncounted"};

    if (r->outage)
        return;
    r->outage = true;
    if (atomic_fetch_add(&sl_redis_down_workers, 1) == 0)
        sl_error("store: redis %s:%d unreachable (%s); %s until it answers again",
                 r->config->redis_host, r->config->redis_port, why,
                 policy[r->config->on_store_error]);
}

static void sl_redis_mark_up(struct sl_redis *r)
{
    if (!r->outage)
        return;
    r->outage = false;
    if (atomic_fetch_sub(&sl_redis_down_workers, 1) == 1)
        sl_info("store: redis %s:%d is back; limits are shared again",
                r->config->redis_host, r->config->redis_port);
}

/* ---- FIFO of commands in flight ---- */

static void sl_redis_push(struct sl_redis *r, struct sl_redis_op *op)
{
    op->next = NULL;
    op->deadline_ms = sl_redis_now_ms() + r->config->store_timeout_us / 1000;
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

/* ---- event loop adapter for hiredis ---- */

static void sl_redis_io(void *arg, bool readable, bool writable)
{
    struct sl_redis *r = arg;
    redisAsyncContext *ac = r->ac;

    if (ac == NULL)
        return;
    if (readable)
        redisAsyncHandleRead(ac);
    /* The read may have freed the context. */
    if (writable && r->ac == ac)
        redisAsyncHandleWrite(ac);
}

static void sl_redis_ev_update(struct sl_redis *r)
{
    if (r->fd < 0)
        return;
    if (r->want_read || r->want_write)
        r->loop.watch(r->loop.ctx, r->fd, r->want_read, r->want_write,
                      sl_redis_io, r);
    else
        r->loop.unwatch(r->loop.ctx, r->fd);
}

static void sl_redis_add_read(void *p) { struct sl_redis *r = p; r->want_read = true; sl_redis_ev_update(r); }
static void sl_redis_del_read(void *p) { struct sl_redis *r = p; r->want_read = false; sl_redis_ev_update(r); }
static void sl_redis_add_write(void *p) { struct sl_redis *r = p; r->want_write = true; sl_redis_ev_update(r); }
static void sl_redis_del_write(void *p) { struct sl_redis *r = p; r->want_write = false; sl_redis_ev_update(r); }

static void sl_redis_cleanup(void *p)
{
    struct sl_redis *r = p;

    r->want_read = r->want_write = false;
    if (r->fd >= 0)
        r->loop.unwatch(r->loop.ctx, r->fd);
    r->fd = -1;
}

/* ---- connection life ---- */

static void sl_redis_schedule_reconnect(struct sl_redis *r)
{
    r->ac = NULL;
    r->state = SL_REDIS_DOWN;
    r->reconnect_at_ms = sl_redis_now_ms() + r->backoff_ms;
    r->backoff_ms *= 2;
    if (r->backoff_ms > SL_REDIS_BACKOFF_MAX_MS)
        r->backoff_ms = SL_REDIS_BACKOFF_MAX_MS;
}

static void sl_redis_on_connect(const redisAsyncContext *ac, int status)
{
    struct sl_redis *r = ac->data;

    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns. */
        sl_redis_mark_down(r, ac->errstr[0] ? ac->errstr : "connection failed");
        sl_redis_schedule_reconnect(r);
        return;
    }
    r->state = SL_REDIS_UP;
    r->backoff_ms = SL_REDIS_BACKOFF_MIN_MS;
}

static void sl_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct sl_redis *r = ac->data;

    (void)status;
    if (r->freeing)
        return;  /* sl_redis_fail() is handling it */
    sl_redis_mark_down(r, ac->errstr[0] ? ac->errstr : "connection closed");
    sl_redis_schedule_reconnect(r);
}

/* Send a command; the reply reaches sl_redis_on_reply with OP. */
static int sl_redis_send(struct sl_redis *r, struct sl_redis_op *op, int argc,
                         const char **argv, const size_t *lens)
{
    if (redisAsyncCommandArgv(r->ac, sl_redis_on_reply, op, argc, argv, lens)
        != REDIS_OK)
        return -1;
    sl_redis_push(r, op);
    return 0;
}

/* A setup command; a SCRIPT LOAD stores the SHA it returns in SHA_DST. */
static void sl_redis_send_setup(struct sl_redis *r, int argc, const char **argv,
                                char *sha_dst)
{
    struct sl_redis_op *op = calloc(1, sizeof(*op));
    size_t lens[4];

    if (op == NULL)
        return;
    op->r = r;
    op->kind = SL_OP_SETUP;
    op->arg = sha_dst;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (sl_redis_send(r, op, argc, argv, lens) != 0)
        free(op);
}

static void sl_redis_load_scripts(struct sl_redis *r)
{
    const char *decide[] = {"SCRIPT", "LOAD", sl_redis_decide_lua};
    const char *renew[] = {"SCRIPT", "LOAD", sl_redis_renew_lua};

    sl_redis_send_setup(r, 3, decide, r->sha);
    sl_redis_send_setup(r, 3, renew, r->renew_sha);
}

static void sl_redis_connect(struct sl_redis *r)
{
    const struct sl_config *c = r->config;
    redisAsyncContext *ac;

    ac = redisAsyncConnect(c->redis_host, c->redis_port);
    if (ac == NULL || ac->err) {
        sl_redis_mark_down(r, ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        sl_redis_schedule_reconnect(r);
        return;
    }
    r->ac = ac;
    r->state = SL_REDIS_CONNECTING;
    r->connect_deadline_ms = sl_redis_now_ms() + c->store_timeout_us / 1000;
    r->fd = ac->c.fd;
    ac->data = r;
    ac->ev.data = r;
    ac->ev.addRead = sl_redis_add_read;
    ac->ev.delRead = sl_redis_del_read;
    ac->ev.addWrite = sl_redis_add_write;
    ac->ev.delWrite = sl_redis_del_write;
    ac->ev.cleanup = sl_redis_cleanup;
    redisAsyncSetConnectCallback(ac, sl_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, sl_redis_on_disconnect);
    /* Queued now, written as soon as the connection is up. */
    if (c->redis_password != NULL) {
        if (c->redis_user != NULL) {
            const char *argv[] = {"AUTH", c->redis_user, c->redis_password};
            sl_redis_send_setup(r, 3, argv, NULL);
        } else {
            const char *argv[] = {"AUTH", c->redis_password};
            sl_redis_send_setup(r, 2, argv, NULL);
        }
    }
    if (c->redis_db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", c->redis_db);
        const char *argv[] = {"SELECT", db};
        sl_redis_send_setup(r, 2, argv, NULL);
    }
    sl_redis_load_scripts(r);
}

/* Give up on the connection: every pending operation falls back. */
static void sl_redis_fail(struct sl_redis *r, const char *why)
{
    redisAsyncContext *ac = r->ac;

    sl_redis_mark_down(r, why);
    if (ac == NULL)
        return;
    r->freeing = true;
    redisAsyncFree(ac);  /* pending callbacks run now, with NULL replies */
    r->freeing = false;
    r->fd = -1;
    sl_redis_schedule_reconnect(r);
}

/* ---- decisions ---- */

/* Build "<prefix>{<upstream>}:<r|c>:<len>:<rule>:<per>" into a new buffer. */
static char *sl_redis_key(const struct sl_redis *r, const struct sl_check *c,
                          const struct sl_hit *h, size_t *len)
{
    const struct sl_rule *rule = h->rule;
    size_t cap = strlen(r->config->store_prefix) + strlen(c->upstream->name) +
                 strlen(rule->name) + h->key_len + 48;
    char *k = malloc(cap);
    int n;

    if (k == NULL)
        return NULL;
    n = snprintf(k, cap, "%s{%s}:%c:%zu:%s:", r->config->store_prefix,
                 c->upstream->name,
                 rule->kind == SL_RULE_RATE ? 'r'
                 : rule->kind == SL_RULE_PAUSE ? 'p' : 'c',
                 strlen(rule->name), rule->name);
    memcpy(k + n, h->key, h->key_len);
    *len = (size_t)n + h->key_len;
    return k;
}

/* Decide through the local fallback (or the configured policy). */
static void sl_redis_fallback(struct sl_redis *r, const struct sl_check *c,
                              sl_decide_cb cb, void *arg);

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
            lease = calloc(1, sizeof(*lease));
            if (lease == NULL) {
                sl_store_release(r->local, cap.lease);
                d.verdict = SL_VERDICT_UNAVAILABLE;
                d.reason = "out of memory";
            } else {
                lease->local = cap.lease;
            }
        }
        break;
    }
    cb(arg, &d, (struct sl_lease *)lease);
}

/* Send a batch as one script run.  Returns 0, or -1 (nothing sent). */
static int sl_redis_send_batch(struct sl_redis *r, struct sl_redis_op *b)
{
    size_t nkeys_total = 0, argc, a = 0, k = 0, nnum = 0;
    const char **argv;
    size_t *lens;
    char *nums, nkeys[24], lease_ttl[24], ncalls[24];
    int rc = -1;

    for (size_t i = 0; i < b->ncalls; i++)
        nkeys_total += b->calls[i]->check->nhits;
    argc = 3 + nkeys_total + 3 + b->ncalls + 3 * nkeys_total;
    argv = calloc(argc, sizeof(*argv));
    lens = calloc(argc, sizeof(*lens));
    nums = calloc(b->ncalls + 2 * nkeys_total + 1, 24);
    if (argv == NULL || lens == NULL || nums == NULL)
        goto out;
    b->eval = b->eval || r->sha[0] == '\0';
    argv[a] = b->eval ? "EVAL" : "EVALSHA";
    lens[a] = strlen(argv[a]);
    a++;
    argv[a] = b->eval ? sl_redis_decide_lua : r->sha;
    lens[a] = strlen(argv[a]);
    a++;
    snprintf(nkeys, sizeof(nkeys), "%zu", nkeys_total);
    argv[a] = nkeys;
    lens[a++] = strlen(nkeys);
    for (size_t i = 0; i < b->ncalls; i++) {
        const struct sl_check *c = b->calls[i]->check;
        for (size_t h = 0; h < c->nhits; h++, k++) {
            argv[a] = sl_redis_key(r, c, &c->hits[h], &lens[a]);
            if (argv[a] == NULL)
                goto out;
            a++;
        }
    }
    argv[a] = b->base;
    lens[a++] = strlen(b->base);
    snprintf(lease_ttl, sizeof(lease_ttl), "%lld", (long long)r->config->lease_ttl_us);
    argv[a] = lease_ttl;
    lens[a++] = strlen(lease_ttl);
    snprintf(ncalls, sizeof(ncalls), "%zu", b->ncalls);
    argv[a] = ncalls;
    lens[a++] = strlen(ncalls);
    for (size_t i = 0; i < b->ncalls; i++) {
        const struct sl_check *c = b->calls[i]->check;
        char *num = nums + 24 * nnum++;
        snprintf(num, 24, "%zu", c->nhits);
        argv[a] = num;
        lens[a++] = strlen(num);
        for (size_t h = 0; h < c->nhits; h++) {
            const struct sl_rule *rule = c->hits[h].rule;
            char *lim = nums + 24 * nnum++, *win = nums + 24 * nnum++;
            argv[a] = rule->kind == SL_RULE_RATE ? "r"
                      : rule->kind == SL_RULE_PAUSE ? "p" : "c";
            lens[a++] = 1;
            snprintf(lim, 24, "%llu", (unsigned long long)rule->limit);
            argv[a] = lim;
            lens[a++] = strlen(lim);
            snprintf(win, 24, "%lld", (long long)rule->window_us);
            argv[a] = win;
            lens[a++] = strlen(win);
        }
    }
    rc = sl_redis_send(r, b, (int)a, argv, lens);
out:
    if (argv != NULL)
        for (size_t i = 0; i < k; i++)
            free((char *)argv[3 + i]);
    free(argv);
    free(lens);
    free(nums);
    return rc;
}

/* Every call of batch B falls back; B is freed. */
static void sl_redis_batch_fallback(struct sl_redis *r, struct sl_redis_op *b)
{
    for (size_t i = 0; i < b->ncalls; i++) {
        struct sl_redis_op *call = b->calls[i];
        sl_redis_fallback(r, call->check, call->cb, call->arg);
        free(call);
    }
    free(b);
}

static void sl_redis_batch_free(struct sl_redis_op *b)
{
    for (size_t i = 0; i < b->ncalls; i++)
        free(b->calls[i]);
    free(b);
}

static bool sl_redis_usable(const struct sl_redis *r)
{
    if (r->ac == NULL)
        return false;
    /* While in an outage, calls do not wait on a reconnection attempt. */
    return r->state == SL_REDIS_UP ||
           (r->state == SL_REDIS_CONNECTING && !r->outage);
}

/* Send the batch being built for UPSTREAM (if any). */
static void sl_redis_flush(struct sl_redis *r, size_t upstream)
{
    struct sl_redis_op *b = r->pending[upstream];

    if (b == NULL)
        return;
    r->pending[upstream] = NULL;
    if (!sl_redis_usable(r) || sl_redis_send_batch(r, b) != 0)
        sl_redis_batch_fallback(r, b);
}

static void sl_redis_flush_all(struct sl_redis *r)
{
    for (size_t i = 0; i < r->config->nupstreams; i++)
        sl_redis_flush(r, i);
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
    struct sl_redis_op *op, *batch;

    if (c->nhits == 0) {
        struct sl_decision d = {.verdict = SL_VERDICT_ALLOW};
        cb(arg, &d, NULL);
        return 0;
    }
    if (!sl_redis_usable(r)) {
        sl_redis_fallback(r, c, cb, arg);
        return 0;
    }
    batch = r->pending[c->upstream->index];
    if (batch == NULL) {
        batch = calloc(1, sizeof(*batch));
        if (batch == NULL) {
            sl_redis_fallback(r, c, cb, arg);
            return 0;
        }
        batch->r = r;
        batch->kind = SL_OP_DECIDE;
        snprintf(batch->base, sizeof(batch->base), "%s:%d:%llu", r->instance,
                 r->worker_id, (unsigned long long)++r->counter);
        r->pending[c->upstream->index] = batch;
    }
    op = calloc(1, sizeof(*op));
    if (op == NULL) {
        sl_redis_fallback(r, c, cb, arg);
        return 0;
    }
    op->r = r;
    op->check = c;
    op->cb = cb;
    op->arg = arg;
    batch->calls[batch->ncalls++] = op;
    snprintf(op->member, sizeof(op->member), "%s:%zu", batch->base, batch->ncalls);
    if (batch->ncalls == SL_REDIS_BATCH_MAX)
        sl_redis_flush(r, c->upstream->index);
    return 0;
}

static void sl_redis_log_error(struct sl_redis *r, const char *what,
                               const char *msg)
{
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

/* Turn one call's part of a batch reply into its decision. */
static void sl_redis_decided(struct sl_redis *r, struct sl_redis_op *op,
                             redisReply *rep)
{
    const struct sl_check *c = op->check;
    struct sl_decision d = {0};
    struct sl_redis_lease *lease = NULL;
    long long idx;

    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3) {
        sl_redis_log_error(r, "the decision script", "unexpected reply shape");
        sl_redis_fallback(r, c, op->cb, op->arg);
        return;
    }
    idx = sl_reply_int(rep, 1);
    if (sl_reply_int(rep, 0) == 0) {
        if (idx < 1 || (size_t)idx > c->nhits) {
            sl_redis_fallback(r, c, op->cb, op->arg);
            return;
        }
        d.verdict = SL_VERDICT_DENY;
        d.rule = c->hits[idx - 1].rule;
        d.wait_us = sl_reply_int(rep, 2);
        d.reset_us = d.wait_us;
    } else {
        d.verdict = SL_VERDICT_ALLOW;
        if (idx >= 1 && (size_t)idx <= c->nhits && rep->elements >= 4) {
            d.rule = c->hits[idx - 1].rule;
            d.remaining = (uint64_t)sl_reply_int(rep, 2);
            d.reset_us = sl_reply_int(rep, 3);
        }
        for (size_t i = 0; i < c->nhits; i++) {
            if (c->hits[i].rule->kind != SL_RULE_CONCURRENCY)
                continue;
            if (lease == NULL) {
                lease = calloc(1, sizeof(*lease));
                if (lease == NULL)
                    break;  /* the slot expires by itself */
                memcpy(lease->member, op->member, sizeof(lease->member));
            }
            lease->keys[lease->nkeys] =
                sl_redis_key(r, c, &c->hits[i], &lease->key_lens[lease->nkeys]);
            if (lease->keys[lease->nkeys] != NULL)
                lease->nkeys++;
        }
        if (lease != NULL) {
            lease->live = true;
            lease->next = r->leases;
            if (r->leases != NULL)
                r->leases->prev = lease;
            r->leases = lease;
        }
    }
    op->cb(op->arg, &d, (struct sl_lease *)lease);
}

static void sl_redis_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct sl_redis_op *op = privdata;
    struct sl_redis *r = op->r;
    redisReply *rep = reply;

    (void)ac;
    sl_redis_pop(r, op);
    if (rep != NULL && rep->type != REDIS_REPLY_ERROR)
        sl_redis_mark_up(r);
    switch (op->kind) {
    case SL_OP_SETUP:
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
            /* AUTH or SELECT refused: nothing will work on this link. */
            sl_redis_mark_down(r, rep->str);
            sl_redis_log_error(r, "connection setup", rep->str);
        } else if (rep != NULL && rep->type == REDIS_REPLY_STRING && rep->len == 40 &&
                   op->arg != NULL) {
            memcpy(op->arg, rep->str, 40);
            ((char *)op->arg)[40] = '\0';
        }
        break;
    case SL_OP_DECIDE:
        if (rep == NULL) {
            sl_redis_batch_fallback(r, op);
            return;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            if (!op->eval && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
                !r->freeing && r->ac != NULL) {
                /* Script cache flushed (restart, SCRIPT FLUSH): resend this
                 * batch with the body, and learn the SHA again for the rest. */
                if (r->sha[0] != '\0') {
                    r->sha[0] = '\0';
                    r->renew_sha[0] = '\0';
                    sl_redis_load_scripts(r);
                }
                op->eval = true;
                if (sl_redis_send_batch(r, op) == 0)
                    return;  /* the batch lives on */
            }
            sl_redis_log_error(r, "the decision script", rep->str);
            sl_redis_batch_fallback(r, op);
            return;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != op->ncalls) {
            sl_redis_log_error(r, "the decision script", "unexpected reply shape");
            sl_redis_batch_fallback(r, op);
            return;
        }
        for (size_t i = 0; i < op->ncalls; i++)
            sl_redis_decided(r, op->calls[i], rep->element[i]);
        sl_redis_batch_free(op);
        return;
    case SL_OP_RENEW:
    case SL_OP_RELEASE:
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
            if (strncmp(rep->str, "NOSCRIPT", 8) == 0)
                r->renew_sha[0] = '\0';
            sl_redis_log_error(r, op->kind == SL_OP_RENEW ? "a lease renewal"
                                                           : "a release, pause or sync",
                               rep->str);
        }
        break;
    }
    free(op);
}

/* ---- leases ---- */

static void sl_redis_unlink_lease(struct sl_redis *r, struct sl_redis_lease *l)
{
    if (!l->live)
        return;
    if (l->prev != NULL)
        l->prev->next = l->next;
    else
        r->leases = l->next;
    if (l->next != NULL)
        l->next->prev = l->prev;
    l->live = false;
}

static void sl_redis_lease_cmd(struct sl_redis *r, struct sl_redis_lease *l,
                               enum sl_redis_op_kind kind)
{
    const char *argv[SL_MAX_HITS + 5];
    size_t lens[SL_MAX_HITS + 5];
    char nkeys[24], ttl[24];
    struct sl_redis_op *op;
    int a = 0;

    if (!sl_redis_usable(r) || l->nkeys == 0)
        return;  /* the lease expires by itself */
    op = calloc(1, sizeof(*op));
    if (op == NULL)
        return;
    op->r = r;
    op->kind = kind;
    if (kind == SL_OP_RELEASE) {
        /* One key per ZREM; Cluster-safe since all share one hash tag. */
        for (size_t i = 0; i < l->nkeys; i++) {
            struct sl_redis_op *rop = i == 0 ? op : calloc(1, sizeof(*rop));
            const char *rv[3] = {"ZREM", l->keys[i], l->member};
            size_t rl[3] = {4, l->key_lens[i], strlen(l->member)};
            if (rop == NULL)
                return;
            rop->r = r;
            rop->kind = kind;
            if (sl_redis_send(r, rop, 3, rv, rl) != 0)
                free(rop);
        }
        return;
    }
    bool eval = r->renew_sha[0] == '\0';
    argv[a] = eval ? "EVAL" : "EVALSHA";
    lens[a] = strlen(argv[a]);
    a++;
    argv[a] = eval ? sl_redis_renew_lua : r->renew_sha;
    lens[a] = strlen(argv[a]);
    a++;
    snprintf(nkeys, sizeof(nkeys), "%zu", l->nkeys);
    argv[a] = nkeys;
    lens[a++] = strlen(nkeys);
    for (size_t i = 0; i < l->nkeys; i++) {
        argv[a] = l->keys[i];
        lens[a++] = l->key_lens[i];
    }
    argv[a] = l->member;
    lens[a++] = strlen(l->member);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)r->config->lease_ttl_us);
    argv[a] = ttl;
    lens[a++] = strlen(ttl);
    if (sl_redis_send(r, op, a, argv, lens) != 0)
        free(op);
}

static void sl_redis_release(struct sl_store *store, struct sl_lease *lease)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_redis_lease *l = (struct sl_redis_lease *)lease;

    if (l->local != NULL)
        sl_store_release(r->local, l->local);
    sl_redis_unlink_lease(r, l);
    sl_redis_lease_cmd(r, l, SL_OP_RELEASE);
    for (size_t i = 0; i < l->nkeys; i++)
        free(l->keys[i]);
    free(l);
}

/* Run a small script whose answer does not matter (errors are logged). */
static void sl_redis_fire(struct sl_redis *r, const char *script, const char *key,
                          size_t key_len, int nargs, const char **args)
{
    const char *argv[8];
    size_t lens[8];
    struct sl_redis_op *op = calloc(1, sizeof(*op));
    int a = 0;

    if (op == NULL)
        return;
    op->r = r;
    op->kind = SL_OP_RELEASE;
    argv[a] = "EVAL";
    lens[a++] = 4;
    argv[a] = script;
    lens[a] = strlen(script);
    a++;
    argv[a] = "1";
    lens[a++] = 1;
    argv[a] = key;
    lens[a++] = key_len;
    for (int i = 0; i < nargs; i++) {
        argv[a] = args[i];
        lens[a++] = strlen(args[i]);
    }
    if (sl_redis_send(r, op, a, argv, lens) != 0)
        free(op);
}

static void sl_redis_pause(struct sl_store *store, const struct sl_upstream_conf *up,
                           int64_t duration_us)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_check c = {.upstream = up};
    struct sl_hit hit = {.rule = &up->pause_rule, .key = "", .key_len = 0};
    char dur[24], *key;
    size_t len;

    /* The local store pauses too: it decides while Redis cannot. */
    if (r->local != NULL)
        sl_store_pause(r->local, up, duration_us);
    if (!sl_redis_usable(r))
        return;
    key = sl_redis_key(r, &c, &hit, &len);
    if (key == NULL)
        return;
    snprintf(dur, sizeof(dur), "%lld", (long long)duration_us);
    const char *args[] = {dur};
    sl_redis_fire(r, sl_redis_pause_lua, key, len, 1, args);
    free(key);
}

static void sl_redis_sync(struct sl_store *store, const struct sl_upstream_conf *up,
                          const struct sl_hit *hit, uint64_t remaining)
{
    struct sl_redis *r = (struct sl_redis *)store;
    struct sl_check c = {.upstream = up};
    char lim[24], win[24], rem[24], *key;
    size_t len;

    if (hit->rule->kind != SL_RULE_RATE)
        return;
    if (!sl_redis_usable(r)) {
        if (r->local != NULL && r->config->on_store_error == SL_STORE_ERROR_LOCAL)
            sl_store_sync(r->local, up, hit, remaining);
        return;
    }
    key = sl_redis_key(r, &c, hit, &len);
    if (key == NULL)
        return;
    snprintf(lim, sizeof(lim), "%llu", (unsigned long long)hit->rule->limit);
    snprintf(win, sizeof(win), "%lld", (long long)hit->rule->window_us);
    snprintf(rem, sizeof(rem), "%llu", (unsigned long long)remaining);
    const char *args[] = {lim, win, rem};
    sl_redis_fire(r, sl_redis_sync_lua, key, len, 3, args);
    free(key);
}

/* ---- timers ---- */

static int64_t sl_redis_timers(struct sl_store *store, int64_t now)
{
    struct sl_redis *r = (struct sl_redis *)store;
    int64_t next = -1;
    int64_t renew_every = r->config->lease_ttl_us / 3000;

#define SL_NEXT(t) do { if (next < 0 || (t) < next) next = (t); } while (0)
    sl_redis_flush_all(r);
    if (r->state == SL_REDIS_DOWN && now >= r->reconnect_at_ms)
        sl_redis_connect(r);
    if (r->state == SL_REDIS_CONNECTING && now >= r->connect_deadline_ms)
        sl_redis_fail(r, "connect timed out");
    if (r->fifo_head != NULL && now >= r->fifo_head->deadline_ms)
        sl_redis_fail(r, "no answer within store_timeout");
    if (now >= r->next_renew_ms) {
        r->next_renew_ms = now + (renew_every > 0 ? renew_every : 1);
        for (struct sl_redis_lease *l = r->leases; l != NULL; l = l->next)
            sl_redis_lease_cmd(r, l, SL_OP_RENEW);
    }
    if (r->state == SL_REDIS_DOWN)
        SL_NEXT(r->reconnect_at_ms);
    if (r->state == SL_REDIS_CONNECTING)
        SL_NEXT(r->connect_deadline_ms);
    if (r->fifo_head != NULL)
        SL_NEXT(r->fifo_head->deadline_ms);
    if (r->leases != NULL)
        SL_NEXT(r->next_renew_ms);
#undef SL_NEXT
    return next;
}

static void sl_redis_tick(struct sl_store *store)
{
    struct sl_redis *r = (struct sl_redis *)store;

    if (r->local != NULL)
        sl_store_tick(r->local);
}

static void sl_redis_destroy(struct sl_store *store)
{
    struct sl_redis *r = (struct sl_redis *)store;

    for (size_t i = 0; i < r->config->nupstreams; i++) {
        if (r->pending[i] != NULL) {
            struct sl_redis_op *b = r->pending[i];
            r->pending[i] = NULL;
            sl_redis_batch_fallback(r, b);
        }
    }

    if (r->ac != NULL) {
        /* Flush what is queued (lease releases) for a moment, then close. */
        int done = 0;
        for (int i = 0; i < 20 && r->state == SL_REDIS_UP && !done; i++) {
            struct pollfd pfd = {.fd = r->ac->c.fd, .events = POLLOUT};
            if (redisBufferWrite(&r->ac->c, &done) != REDIS_OK)
                break;
            if (!done)
                poll(&pfd, 1, 5);
        }
        r->freeing = true;
        redisAsyncFree(r->ac);
        r->ac = NULL;
    }
    while (r->leases != NULL) {
        struct sl_redis_lease *l = r->leases;
        sl_redis_unlink_lease(r, l);
        for (size_t i = 0; i < l->nkeys; i++)
            free(l->keys[i]);
        free(l);
    }
    sl_redis_mark_up(r);  /* keep the process-wide count right */
    free(r->pending);
    free(r);
}

static const struct sl_store_ops sl_redis_ops = {
    .decide = sl_redis_decide,
    .release = sl_redis_release,
    .pause = sl_redis_pause,
    .sync = sl_redis_sync,
    .tick = sl_redis_tick,
    .timers = sl_redis_timers,
    .destroy = sl_redis_destroy,
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
    r->config = config;
    r->local = local;
    r->loop = *loop;
    r->worker_id = worker_id;
    r->fd = -1;
    r->state = SL_REDIS_DOWN;
    r->backoff_ms = SL_REDIS_BACKOFF_MIN_MS;
    r->pending = calloc(config->nupstreams, sizeof(*r->pending));
    if (r->pending == NULL) {
        free(r);
        return NULL;
    }
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        uint64_t t = (uint64_t)sl_redis_now_ms() ^ ((uint64_t)getpid() << 20);
        memcpy(rnd, &t, sizeof(rnd));
    }
    snprintf(r->instance, sizeof(r->instance), "%02x%02x%02x%02x%02x%02x-%d", rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], (int)getpid());
    return &r->base;
}
