/*
 * sl_reload — a new configuration while calls keep flowing.
 *
 * A reload (SIGHUP or POST /reload) reads and validates the whole file
 * first; a file with errors, or one that changes what a running process
 * cannot change (listeners, workers, the store), changes nothing.  A good
 * one becomes the next *generation*: the proxy's pointer moves to it under
 * config_lock and every worker is woken.  Nothing stops: each worker moves
 * at the start of its next loop pass (sl_worker_adopt), and calls already
 * matched keep the generation they were matched under (each holds a
 * reference) until they end.  The reload is answered (and logged) once
 * every worker serves the new generation, so a call made after the answer
 * is decided under it, whichever worker takes it.
 *
 * Counts carry over by name.  The memory store renumbers its buckets by
 * (upstream name, rule name) under each table's lock; Redis keys are named
 * that way already.  A call that reaches the store with a check matched
 * under an older generation than the store now serves is answered
 * SL_VERDICT_STALE and matched again (sl_req_redecide); held calls are
 * marked when their worker moves and matched and decided again by the
 * loop's rematch phase right after (sl_request_rematch), so a move never
 * decides and a decision's answer never nests a move inside a move.  So no
 * decision is ever taken with one generation's rules against another's
 * counts, and no call is dropped.
 *
 * Metric ids are given by name too (struct sl_metric_ids): a counter keeps
 * counting across reloads as long as its upstream and rule keep their
 * names.
 */
#include "sl_request.h"

#include "sl_assert.h"
#include "sl_log.h"
#include "sl_notify.h"
#include "sl_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const sl_reload_result_names[SL_RELOAD_RESULTS] = {
    "ok", "invalid", "refused",
};

const struct sl_config *sl_proxy_config(struct sl_proxy *p)
{
    const struct sl_config *c;

    pthread_mutex_lock(&p->config_lock);
    c = sl_config_ref(p->config);
    pthread_mutex_unlock(&p->config_lock);
    return c;
}

/* The id of NAME in *NAMES (added if new), or SIZE_MAX (out of memory). */
static size_t sl_metric_id(char ***names, size_t *n, size_t *cap, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*names)[i], name) == 0)
            return i;
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        char **nn = realloc(*names, ncap * sizeof(*nn));
        if (nn == NULL)
            return SIZE_MAX;
        *names = nn;
        *cap = ncap;
    }
    if (((*names)[*n] = strdup(name)) == NULL)
        return SIZE_MAX;
    return (*n)++;
}

int sl_proxy_metric_ids(struct sl_proxy *p, struct sl_config *c)
{
    struct sl_metric_ids *ids = &p->ids;

    for (size_t i = 0; i < c->nupstreams; i++) {
        struct sl_upstream_conf *u = &c->upstreams[i];
        u->metric_id = sl_metric_id(&ids->ups, &ids->nups, &ids->capups, u->name);
        if (u->metric_id == SIZE_MAX)
            return -1;
        for (size_t k = 0; k <= u->nrules; k++) {
            struct sl_rule *r = k < u->nrules ? &u->rules[k] : &u->pause_rule;
            char *key;
            if (asprintf(&key, "%s\n%d\n%s", u->name, (int)r->kind, r->name) < 0)
                return -1;
            r->metric_slot = sl_metric_id(&ids->slots, &ids->nslots, &ids->capslots,
                                          key);
            free(key);
            if (r->metric_slot == SIZE_MAX)
                return -1;
        }
    }
    return 0;
}

/* How long a reload waits for every worker to move (they move within a
 * loop pass: microseconds when idle, a pass's work when busy). */
#define SL_RELOAD_WAIT_MS 2000

/* Wait until every worker serves GENERATION (SELF moves here), at most
 * SL_RELOAD_WAIT_MS.  True when they all do. */
static bool sl_reload_wait(struct sl_proxy *p, struct sl_worker *self, uint64_t generation)
{
    int64_t until = sl_time_mono_ms() + SL_RELOAD_WAIT_MS;

    if (self != NULL)
        sl_worker_adopt(self);
    while (sl_proxy_serving(p) < generation) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 500000};
        if (sl_time_mono_ms() >= until)
            return false;
        nanosleep(&ts, NULL);
    }
    return true;
}

enum sl_reload_result sl_proxy_reload(struct sl_proxy *p, struct sl_worker *self,
                                      const char *why, struct sl_errors *errs)
{
    struct sl_config *nc = NULL;
    const struct sl_config *cur, *old;
    enum sl_reload_result res = SL_RELOAD_OK;
    const char *bad_app = NULL;
    size_t before, nups = 0;
    uint64_t generation = 0;

    pthread_mutex_lock(&p->reload_lock);
    /* The service manager shows "reloading" until the READY=1 below. */
    sl_notify_reloading();
    cur = sl_proxy_config(p);
    before = errs->count;
    if (sl_config_load(p->config_path, true, &nc, errs) != 0) {
        res = SL_RELOAD_INVALID;
    } else if (sl_config_restart_diff(cur, nc, errs) +
               sl_config_reload_diff(cur, nc, errs) > 0) {
        res = SL_RELOAD_REFUSED;
    } else if (sl_proxy_metric_ids(p, nc) != 0) {
        sl_errors_add(errs, "out of memory");
        res = SL_RELOAD_INVALID;
    } else if (sl_config_bind_apps(nc, p->apps, &bad_app) != 0) {
        sl_errors_add(errs, "apps: \"%s\" finds no id: the configurations since "
                      "start have named more than max_apps (%u) apps; restart "
                      "sluice (or raise max_apps) to name new ones", bad_app,
                      cur->max_apps);
        res = SL_RELOAD_INVALID;
    }
    if (res != SL_RELOAD_OK) {
        sl_config_free(nc);
        if (res == SL_RELOAD_INVALID)
            sl_error("%s: %s has %zu error%s; the running configuration "
                     "(generation %llu) keeps serving:", why, p->config_path,
                     errs->count - before, errs->count - before == 1 ? "" : "s",
                     (unsigned long long)cur->generation);
        else
            sl_warn("%s: %s changes what a running sluice cannot change in "
                    "place; nothing was applied (generation %llu keeps serving):", why,
                    p->config_path, (unsigned long long)cur->generation);
        for (size_t i = before; i < errs->count; i++)
            sl_error("  %s", errs->lines[i]);
        goto out;
    }
    for (size_t i = 0; i < nc->warnings.count; i++)
        sl_warn("%s: %s", why, nc->warnings.lines[i]);
    nc->generation = cur->generation + 1;
    nc->loaded_ms = sl_time_wall_us() / 1000;
    pthread_mutex_lock(&p->config_lock);
    old = p->config;
    p->config = nc;
    atomic_store_explicit(&p->generation, nc->generation, memory_order_release);
    pthread_mutex_unlock(&p->config_lock);
    /* The memory store moves now (a worker's newer call would make it move
     * anyway): its snapshots and the state file follow the new names. */
    if (sl_store_adopt(p->memory, nc) != 0)
        sl_warn("%s: the memory store could not renumber its buckets yet (out of "
                "memory); it will on the next call", why);
    sl_log_set_json(nc->log_format == SL_LOG_FORMAT_JSON);
    for (int i = 0; i < p->nworkers; i++)
        sl_worker_wake(&p->workers[i]);
    generation = nc->generation;
    nups = nc->nupstreams;
    sl_config_unref(old);
out:
    atomic_fetch_add(&p->reloads[res], 1);
    {
        char status[160];
        snprintf(status, sizeof(status), res == SL_RELOAD_OK
                 ? "serving configuration generation %llu"
                 : "serving configuration generation %llu; the last reload was refused",
                 (unsigned long long)(res == SL_RELOAD_OK ? nc->generation : cur->generation));
        sl_notify_ready(status);
    }
    sl_config_unref(cur);
    pthread_mutex_unlock(&p->reload_lock);
    /* Outside the lock: a reload asked meanwhile (on worker 0, through
     * POST /reload) must not hold worker 0 while this waits for it. */
    if (res == SL_RELOAD_OK) {
        if (!sl_reload_wait(p, self, generation)) {
            char lag[128];
            size_t n = 0;
            lag[0] = '\0';
            for (int i = 0; i < p->nworkers && n < sizeof(lag); i++)
                if (atomic_load_explicit(&p->workers[i].serving, memory_order_acquire) <
                    generation)
                    n += (size_t)snprintf(lag + n, sizeof(lag) - n, "%s%d", n ? ", " : "", i);
            sl_warn("%s: worker %s has not moved to generation %llu within %d ms (busy); "
                    "it moves at its next loop pass", why, lag,
                    (unsigned long long)generation, SL_RELOAD_WAIT_MS);
        }
        sl_info("%s: configuration reloaded from %s: generation %llu, %zu upstream%s",
                why, p->config_path, (unsigned long long)generation, nups,
                nups == 1 ? "" : "s");
    }
    return res;
}

static int sl_by_ticket(const void *a, const void *b)
{
    const struct sl_request *x = *(struct sl_request *const *)a;
    const struct sl_request *y = *(struct sl_request *const *)b;

    return x->held.ticket < y->held.ticket ? -1 : x->held.ticket > y->held.ticket;
}

void sl_request_rematch(struct sl_worker *w)
{
    struct sl_request **list;
    size_t n = 0, want = w->nrematch;

    if (want == 0)
        return;
    list = calloc(want, sizeof(*list));
    if (list == NULL)
        return;  /* tried again on the next pass (the loop does not sleep) */
    for (struct sl_request *r = w->requests; r != NULL && n < want; r = r->next)
        if (r->rematch) {
            r->rematch = false;
            list[n++] = r;
        }
    SL_ASSERT(n == want);
    w->nrematch = 0;
    qsort(list, n, sizeof(*list), sl_by_ticket);
    /* Each asks the store again; an answer given at once (memory store)
     * may settle a call further down the list, or a STALE one move the
     * worker again, which marks the calls then held for the next pass. */
    for (size_t i = 0; i < n; i++)
        if (list[i]->phase == SL_PHASE_HELD && !list[i]->held.deciding)
            sl_req_redecide(list[i]);
    free(list);
}

uint64_t sl_proxy_serving(struct sl_proxy *p)
{
    uint64_t min = atomic_load_explicit(&p->generation, memory_order_acquire);

    for (int i = 0; i < p->nworkers; i++) {
        uint64_t g = atomic_load_explicit(&p->workers[i].serving, memory_order_acquire);
        if (g < min)
            min = g;
    }
    return min;
}

void sl_worker_adopt(struct sl_worker *w)
{
    struct sl_proxy *p = w->proxy;
    const struct sl_config *c, *old = w->config;
    size_t nups = 0, nslots = 0;

    if (atomic_load_explicit(&p->generation, memory_order_acquire) == old->generation)
        return;
    c = sl_proxy_config(p);
    if (c->generation <= old->generation) {
        sl_config_unref(c);
        return;
    }
    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *u = &c->upstreams[i];
        if (u->metric_id + 1 > nups)
            nups = u->metric_id + 1;
        for (size_t k = 0; k <= u->nrules; k++)
            if (sl_upstream_rule(u, k)->metric_slot + 1 > nslots)
                nslots = sl_upstream_rule(u, k)->metric_slot + 1;
    }
    pthread_rwlock_wrlock(&p->metrics_lock);
    if (sl_metrics_grow(&w->metrics, nups, nslots) != 0) {
        /* Counting into rows that do not exist is not an option: stay on
         * the old generation and try again on the next pass. */
        pthread_rwlock_unlock(&p->metrics_lock);
        sl_config_unref(c);
        sl_warn("worker %d: out of memory growing its metrics; the new "
                "configuration waits", w->id);
        return;
    }
    w->config = c;
    atomic_store_explicit(&w->serving, c->generation, memory_order_release);
    pthread_rwlock_unlock(&p->metrics_lock);
    /* The store moves after the metrics could (never ahead of the worker). */
    if (sl_store_adopt(w->store, c) != 0)
        sl_warn("worker %d: the store could not move to the new configuration "
                "yet (out of memory)", w->id);
    /* Held calls are decided again under the new rules by the loop's
     * rematch phase, in line order; one whose decision is out is matched
     * again when its answer comes back STALE. */
    for (size_t u = 0; u < w->queue.used; u++)
        for (struct sl_held *h = w->queue.heads[u]; h != NULL; h = h->next) {
            struct sl_request *req = h->owner;
            if (!h->deciding && !sl_req_deciding(req) && !req->rematch) {
                req->rematch = true;
                w->nrematch++;
            }
        }
    w->queue_kick = true;
    sl_config_unref(old);
}
