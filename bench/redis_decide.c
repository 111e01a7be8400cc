/*
 * redis_decide — how many decisions per second one Redis core sustains.
 *
 * Drives sluice's own Redis store (limits/sl_store_redis.c, the code the
 * proxy runs) without HTTP: each round decides BATCH calls, which the store
 * sends as one script run, exactly as the proxy does with the calls of one
 * event-loop pass.  Every allowed call is committed (its send time logged:
 * the commits ride in the next batch, as in the proxy) and then released.
 * Up to INFLIGHT batches are outstanding at once, so Redis is kept busy.
 *
 * The figure that says how many sidecars one Redis serves is Redis's CPU
 * per decision: redis-server's used_cpu_user + used_cpu_sys (INFO cpu)
 * over the measured seconds, divided by the decisions.  Its inverse is
 * the decisions per second one Redis core sustains.  Also printed: the
 * redis.call()s per decision (INFO commandstats) and the wall-clock rate
 * this one driver reached.
 *
 * usage: redis_decide HOST PORT BATCH SECONDS [INFLIGHT [RULES [UPSTREAMS]]]
 *   HOST PORT: one Redis; or a store URL and "-" ("redis-cluster://h:p,...":
 *          a Redis Cluster, whose primaries' CPU is summed);
 *   RULES: "rate" (one rate rule, the default: the bench's proxy config),
 *          "per" (one rate rule keyed per value, 10,000 values in turn;
 *          on a cluster, the upstream's tenant groups spread them over
 *          the primaries: limits/sl_redis_groups.h),
 *          "shares" (one rate rule split between two apps);
 *   UPSTREAMS: that many upstreams with those rules (default 1), the
 *          decisions spread over them in turn (a batch holds one
 *          upstream's calls, as in the proxy).
 * Prints one line:
 *   batch=B decisions=N secs=S redis_cpu_s=C us_per_decision=U
 *   per_core=D calls_per_decision=K runs_per_decision=E driver_rate=R
 * (E: script runs, decisions and commits that rode in none, per decision)
 * and, on a cluster, one more: primaries=P busiest_cpu_s=M capacity=X
 * (X = decisions per second at which the busiest primary fills its one
 * core: what the cluster sustains, to set against one Redis's per_core).
 * The keys it writes are under "rdbench:<pid>:" and expire by themselves.
 */
#include "sl_apps.h"
#include "sl_config.h"
#include "sl_store.h"
#include "sl_time.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 64
#define MAX_NODES 16

struct watch {
    int fd;
    bool rd, wr;
    sl_io_cb cb;
    void *arg;
};

static struct watch watches[MAX_FDS];
static size_t nwatches;

static int loop_watch(void *ctx, int fd, bool want_read, bool want_write,
                      sl_io_cb cb, void *arg)
{
    (void)ctx;
    for (size_t i = 0; i < nwatches; i++) {
        if (watches[i].fd == fd) {
            watches[i] = (struct watch){fd, want_read, want_write, cb, arg};
            return 0;
        }
    }
    if (nwatches == MAX_FDS)
        return -1;
    watches[nwatches++] = (struct watch){fd, want_read, want_write, cb, arg};
    return 0;
}

static void loop_unwatch(void *ctx, int fd)
{
    (void)ctx;
    for (size_t i = 0; i < nwatches; i++) {
        if (watches[i].fd == fd) {
            watches[i] = watches[--nwatches];
            return;
        }
    }
}

/* One pass of the loop: poll every watched descriptor for up to
 * TIMEOUT_MS and run the callbacks of those that are ready. */
static void loop_pass(int timeout_ms)
{
    struct pollfd p[MAX_FDS];
    struct watch w[MAX_FDS];
    size_t n = nwatches;

    memcpy(w, watches, n * sizeof(*w));
    for (size_t i = 0; i < n; i++)
        p[i] = (struct pollfd){w[i].fd, (short)((w[i].rd ? POLLIN : 0) |
                                               (w[i].wr ? POLLOUT : 0)), 0};
    if (poll(p, n, timeout_ms) <= 0)
        return;
    for (size_t i = 0; i < n; i++) {
        bool rd = (p[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
        bool wr = (p[i].revents & POLLOUT) != 0;
        /* A callback may have unwatched a later descriptor. */
        bool still = false;
        for (size_t j = 0; j < nwatches; j++)
            still = still || (watches[j].fd == w[i].fd && watches[j].cb == w[i].cb);
        if ((rd || wr) && still)
            w[i].cb(w[i].arg, rd, wr);
    }
}

static struct sl_store *store;
static struct sl_lease **to_release;
static size_t nrelease, release_cap;
static uint64_t answered, allowed, outstanding;

static void on_decision(void *arg, const struct sl_decision *d,
                        struct sl_lease *lease)
{
    (void)arg;
    answered++;
    outstanding--;
    if (d->verdict == SL_VERDICT_ALLOW)
        allowed++;
    if (lease == NULL)
        return;
    /* Sent now: the commit rides in the next batch.  Released after that
     * batch is written, as the proxy releases when the exchange ends. */
    sl_store_commit(store, lease);
    if (nrelease == release_cap) {
        release_cap = release_cap ? 2 * release_cap : 256;
        to_release = realloc(to_release, release_cap * sizeof(*to_release));
        if (to_release == NULL) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    to_release[nrelease++] = lease;
}

/* redis-server's CPU seconds so far and, summed over every command,
 * the calls made (INFO cpu and commandstats). */
static int redis_counters1(redisContext *rc, double *cpu, unsigned long long *calls,
                           unsigned long long *runs)
{
    redisReply *rep = redisCommand(rc, "INFO everything");
    const char *p;
    double user = 0, sys = 0;

    if (rep == NULL || rep->type != REDIS_REPLY_STRING) {
        fprintf(stderr, "INFO failed: %s\n", rc->errstr);
        return -1;
    }
    if ((p = strstr(rep->str, "used_cpu_sys:")) != NULL)
        sys = atof(p + 13);
    if ((p = strstr(rep->str, "used_cpu_user:")) != NULL)
        user = atof(p + 14);
    *cpu = user + sys;
    *calls = 0;
    *runs = 0;
    for (p = rep->str; (p = strstr(p, "\ncmdstat_")) != NULL; p++) {
        const char *c = strstr(p, ":calls=");
        if (c == NULL)
            continue;
        /* EVALSHA itself and INFO are not calls a decision makes: the
         * script runs are counted apart. */
        if (strncmp(p, "\ncmdstat_evalsha:", 17) == 0 ||
            strncmp(p, "\ncmdstat_eval:", 15) == 0) {
            *runs += strtoull(c + 7, NULL, 10);
            continue;
        }
        if (strncmp(p, "\ncmdstat_info:", 14) == 0)
            continue;
        *calls += strtoull(c + 7, NULL, 10);
    }
    freeReplyObject(rep);
    return 0;
}

/* The Redis servers measured: one, or a cluster's primaries. */
static redisContext *nodes[MAX_NODES];
static size_t nnodes;

/* Summed over the servers; CPU[i] each. */
static int redis_counters(double *cpu, unsigned long long *calls, unsigned long long *runs,
                          double *each)
{
    *cpu = 0;
    *calls = 0;
    *runs = 0;
    for (size_t i = 0; i < nnodes; i++) {
        double c;
        unsigned long long k, n;
        if (redis_counters1(nodes[i], &c, &k, &n) != 0)
            return -1;
        each[i] = c;
        *cpu += c;
        *calls += k;
        *runs += n;
    }
    return 0;
}

/* The primaries of the cluster SEED (host:port) belongs to. */
static int connect_primaries(const char *host, int port)
{
    redisContext *seed = redisConnect(host, port);
    redisReply *rep;

    if (seed == NULL || seed->err)
        return -1;
    rep = redisCommand(seed, "CLUSTER SLOTS");
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t i = 0; i < rep->elements; i++) {
        redisReply *p = rep->element[i]->element[2];
        const char *h = p->element[0]->str[0] != '\0' ? p->element[0]->str : host;
        int pt = (int)p->element[1]->integer;
        bool seen = false;
        for (size_t j = 0; j < nnodes; j++)
            seen = seen || (nodes[j]->tcp.port == pt && strcmp(nodes[j]->tcp.host, h) == 0);
        if (seen || nnodes == MAX_NODES)
            continue;
        nodes[nnodes] = redisConnect(h, pt);
        if (nodes[nnodes] == NULL || nodes[nnodes]->err)
            return -1;
        nnodes++;
    }
    freeReplyObject(rep);
    redisFree(seed);
    return nnodes > 0 ? 0 : -1;
}

static const char *header_none(void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    return NULL;
}

int main(int argc, char **argv)
{
    char text[65536], store_url[1024], ups[60000];
    int nups = argc > 7 ? atoi(argv[7]) : 1;
    bool cluster = strstr(argv[1], "://") != NULL;
    double each0[MAX_NODES], each1[MAX_NODES];
    const char *rules = argc > 6 ? argv[6] : "rate";
    const char *rule_json;
    struct sl_config *config = NULL;
    struct sl_errors errs = {0};
    struct sl_apps *apps;
    struct sl_loop loop = {NULL, loop_watch, loop_unwatch, NULL};
    struct sl_check *checks;
    int batch, secs, inflight;
    uint16_t app_id;
    double cpu0, cpu1;
    unsigned long long calls0, calls1, runs0 = 0, runs1;
    int64_t start, until, warm_until;
    uint64_t decided0 = 0, n = 0, rounds = 0;
    size_t nchecks;

    if (argc < 5) {
        fprintf(stderr, "usage: %s HOST PORT BATCH SECONDS [INFLIGHT [rate|per|shares]]\n",
                argv[0]);
        return 2;
    }
    batch = atoi(argv[3]);
    secs = atoi(argv[4]);
    inflight = argc > 5 ? atoi(argv[5]) : 4;
    if (batch < 1 || batch > 32 || secs < 1 || inflight < 1 || nups < 1 || nups > 200) {
        fprintf(stderr, "BATCH 1..32, SECONDS >= 1, INFLIGHT >= 1, UPSTREAMS 1..200\n");
        return 2;
    }
    if (strcmp(rules, "rate") == 0)
        rule_json = "{\"name\": \"never\", \"limit\": 100000000, \"window\": \"1s\"}";
    else if (strcmp(rules, "per") == 0)
        rule_json = "{\"name\": \"per\", \"limit\": 100000000, \"window\": \"1s\", "
                    "\"per\": \"header:X-Key\"}";
    else if (strcmp(rules, "shares") == 0)
        rule_json = "{\"name\": \"never\", \"limit\": 100000000, \"window\": \"1s\", "
                    "\"apps\": {\"bench-app\": {\"max\": 0.5}, \"ui\": {\"reserve\": 0.1}}}";
    else {
        fprintf(stderr, "RULES: rate, per or shares\n");
        return 2;
    }
    if (cluster)
        snprintf(store_url, sizeof(store_url), "%s", argv[1]);
    else
        snprintf(store_url, sizeof(store_url), "redis://%s:%s", argv[1], argv[2]);
    ups[0] = '\0';
    for (int u = 0; u < nups; u++) {
        size_t at = strlen(ups);
        snprintf(ups + at, sizeof(ups) - at,
                 "%s{\"name\": \"up%d\", \"prefix\": \"/up%d\","
                 " \"url\": \"http://127.0.0.1:1\", \"rules\": [%s]}",
                 u > 0 ? ", " : "", u, u, rule_json);
    }
    snprintf(text, sizeof(text),
             "{\"listen\": \"127.0.0.1:1\", \"store\": \"%s\","
             " \"store_prefix\": \"rdbench:%d:\", \"app\": \"header:X-App\","
             " \"upstreams\": [%s]}",
             store_url, (int)getpid(), ups);
    if (sl_config_parse(text, "bench", false, &config, &errs) != 0) {
        for (size_t i = 0; i < errs.count; i++)
            fprintf(stderr, "%s\n", errs.lines[i]);
        return 1;
    }
    apps = sl_apps_new(config->max_apps);
    if (apps == NULL)
        return 1;
    { const char *bad; if (sl_config_bind_apps(config, apps, &bad) != 0) return 1; }
    app_id = sl_apps_id(apps, "bench-app", strlen("bench-app"));

    /* The checks, matched once: 10,000 buckets for "per", else one; per
     * upstream, in turn. */
    nchecks = (strcmp(rules, "per") == 0 ? 10000 : 1) * (size_t)nups;
    checks = calloc(nchecks, sizeof(*checks));
    if (checks == NULL)
        return 1;
    for (size_t i = 0; i < nchecks; i++) {
        char key[32];
        struct sl_call call = {.method = "GET", .path = "/x", .path_len = 2,
                               .header = header_none};
        const struct sl_upstream_conf *up = &config->upstreams[i % (size_t)nups];
        const struct sl_rule *per = &up->rules[0];
        if (sl_match(up, &call, &checks[i]) != 0)
            return 1;
        checks[i].app = app_id;
        checks[i].app_name = sl_apps_name(apps, app_id);
        if (nchecks > 1) {
            /* The per value, as the matcher would have taken it from the
             * call's header. */
            for (size_t h = 0; h < checks[i].nhits; h++) {
                if (checks[i].hits[h].rule != per)
                    continue;
                snprintf(key, sizeof(key), "k%zu", i);
                checks[i].hits[h].key = strdup(key);
                checks[i].hits[h].key_len = strlen(key);
            }
        }
    }

    store = sl_store_redis_new(config, NULL, &loop, 0);
    if (store == NULL)
        return 1;
    if (cluster ? connect_primaries(config->redis_host, config->redis_port) != 0
                : (nodes[0] = redisConnect(argv[1], atoi(argv[2]))) == NULL ||
                      nodes[nnodes++]->err) {
        fprintf(stderr, "cannot connect to Redis\n");
        return 1;
    }
    /* Connected, and Redis's clock learnt (a batch waits for it). */
    start = sl_time_mono_ms();
    while (!sl_store_ready(store) || nwatches == 0) {
        int64_t next = sl_store_timers(store, sl_time_mono_ms());
        loop_pass(next < 0 ? 10 : 1);
        if (sl_time_mono_ms() - start > 5000) {
            fprintf(stderr, "Redis did not answer\n");
            return 1;
        }
    }
    for (int i = 0; i < 50; i++) {
        sl_store_timers(store, sl_time_mono_ms());
        loop_pass(1);
    }

    /* One second of warm-up, then SECONDS measured. */
    warm_until = sl_time_mono_ms() + 1000;
    until = warm_until + (int64_t)secs * 1000;
    calls0 = 0;
    cpu0 = 0;
    for (bool measuring = false;;) {
        int64_t t = sl_time_mono_ms();
        if (!measuring && t >= warm_until) {
            measuring = true;
            decided0 = answered;
            if (redis_counters(&cpu0, &calls0, &runs0, each0) != 0)
                return 1;
        }
        if (t >= until)
            break;
        if (outstanding + (uint64_t)batch <= (uint64_t)batch * (uint64_t)inflight) {
            /* One upstream per round (its calls share a run), in turn. */
            size_t u = (size_t)(rounds++ % (uint64_t)nups), per_up = nchecks / (size_t)nups;
            for (int i = 0; i < batch; i++) {
                outstanding++;
                if (sl_store_decide(store, &checks[u + (size_t)nups * (n++ % per_up)],
                                    on_decision, NULL) != 0) {
                    fprintf(stderr, "decide failed\n");
                    return 1;
                }
            }
        }
        /* Ends the pass: writes the batch and the commits. */
        sl_store_timers(store, sl_time_mono_ms());
        for (size_t i = 0; i < nrelease; i++)
            sl_store_release(store, to_release[i]);
        nrelease = 0;
        loop_pass(outstanding + (uint64_t)batch <= (uint64_t)batch * (uint64_t)inflight
                  ? 0 : 5);
    }
    if (redis_counters(&cpu1, &calls1, &runs1, each1) != 0)
        return 1;
    {
        uint64_t d = answered - decided0;
        double cpu = cpu1 - cpu0;
        if (d == 0 || allowed == 0) {
            fprintf(stderr, "no decisions were answered\n");
            return 1;
        }
        printf("batch=%d decisions=%llu secs=%d redis_cpu_s=%.3f "
               "us_per_decision=%.2f per_core=%.0f calls_per_decision=%.2f "
               "runs_per_decision=%.2f driver_rate=%.0f allowed=%.3f\n",
               batch, (unsigned long long)d, secs, cpu, cpu * 1e6 / (double)d,
               (double)d / cpu, (double)(calls1 - calls0) / (double)d,
               (double)(runs1 - runs0) / (double)d,
               (double)d / secs, (double)allowed / (double)answered);
        if (cluster) {
            double busiest = 0;
            printf("primaries=%zu", nnodes);
            for (size_t i = 0; i < nnodes; i++) {
                double c = each1[i] - each0[i];
                busiest = c > busiest ? c : busiest;
                printf(" %s:%d=%.3f", nodes[i]->tcp.host, nodes[i]->tcp.port, c);
            }
            printf(" busiest_cpu_s=%.3f capacity=%.0f\n", busiest,
                   busiest > 0 ? (double)d / busiest : 0.0);
        }
    }
    /* Let the last commits and releases reach Redis. */
    for (int i = 0; i < 100 && outstanding > 0; i++) {
        sl_store_timers(store, sl_time_mono_ms());
        loop_pass(5);
    }
    for (size_t i = 0; i < nrelease; i++)
        sl_store_release(store, to_release[i]);
    for (int i = 0; i < 20; i++) {
        sl_store_timers(store, sl_time_mono_ms());
        loop_pass(2);
    }
    sl_store_destroy(store);
    for (size_t i = 0; i < nnodes; i++)
        redisFree(nodes[i]);
    return 0;
}
