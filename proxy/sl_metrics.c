/*
 * sl_metrics — see sl_metrics.h.  Rendering lives in sl_admin.c, which
 * sums every worker's set at scrape time.
 */
#include "sl_metrics.h"

#include <stdlib.h>
#include <string.h>

const char *const sl_outcome_names[SL_OUT_COUNT] = {
    "forwarded", "rejected", "queued", "released",
    "expired", "paused", "error", "invalid",
};

const char *const sl_decision_names[SL_DECISION_RESULTS] = {
    "allowed", "denied", "shadow_denied",
};

/* Upstream exchanges: 5 ms to a minute. */
const double sl_hist_latency_bounds[SL_HIST_BOUNDS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60,
};

/* Time held in the queue: 10 ms to 10 minutes. */
const double sl_hist_held_bounds[SL_HIST_BOUNDS] = {
    0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
};

/* Grow array *P of N rows of SIZE bytes to NEW rows, zeroing the new. */
static int sl_rows(void *p, size_t size, size_t n, size_t new_n)
{
    void **pp = p;
    char *q;

    if (new_n <= n && *pp != NULL)
        return 0;
    q = realloc(*pp, (new_n ? new_n : 1) * size);
    if (q == NULL)
        return -1;
    memset(q + n * size, 0, (new_n - n) * size);
    *pp = q;
    return 0;
}

int sl_metrics_grow(struct sl_metrics *m, size_t nups, size_t nslots)
{
    if (nups < m->nups)
        nups = m->nups;
    if (nslots < m->nslots)
        nslots = m->nslots;
    if (sl_rows(&m->calls, SL_OUT_COUNT * sizeof(*m->calls),
                m->calls != NULL ? m->nups + 1 : 0, nups + 1) ||
        sl_rows(&m->latency, sizeof(*m->latency), m->nups, nups) ||
        sl_rows(&m->held, sizeof(*m->held), m->nups, nups) ||
        sl_rows(&m->pauses, sizeof(*m->pauses), m->nups, nups) ||
        sl_rows(&m->decisions, SL_DECISION_RESULTS * sizeof(*m->decisions),
                m->nslots, nslots) ||
        sl_rows(&m->app_calls, m->napps * sizeof(*m->app_calls), m->nslots, nslots) ||
        sl_rows(&m->app_denied, m->napps * sizeof(*m->app_denied), m->nslots, nslots))
        return -1;  /* arrays grown so far keep their old rows: still right */
    m->nups = nups;
    m->nslots = nslots;
    return 0;
}

int sl_metrics_init(struct sl_metrics *m, size_t nups, size_t nslots, size_t napps)
{
    memset(m, 0, sizeof(*m));
    m->napps = napps;
    return sl_metrics_grow(m, nups, nslots);
}

void sl_metrics_free(struct sl_metrics *m)
{
    free((void *)m->calls);
    free((void *)m->decisions);
    free((void *)m->app_calls);
    free((void *)m->app_denied);
    free(m->latency);
    free(m->held);
    free((void *)m->pauses);
    m->calls = m->decisions = m->app_calls = m->app_denied = m->pauses = NULL;
    m->latency = m->held = NULL;
}

void sl_metrics_call(struct sl_metrics *m, const struct sl_upstream_conf *up,
                     enum sl_outcome outcome)
{
    size_t u = up != NULL ? up->metric_id + 1 : 0;

    sl_metric_add(&m->calls[u * SL_OUT_COUNT + outcome], 1);
}

void sl_hist_observe(struct sl_hist *h, const double *bounds, int64_t us)
{
    size_t i = 0;
    double s = (double)us / 1e6;

    if (us < 0)
        us = 0;
    while (i < SL_HIST_BOUNDS && s > bounds[i])
        i++;
    sl_metric_add(&h->buckets[i], 1);
    sl_metric_add(&h->count, 1);
    sl_metric_add(&h->sum_us, (uint64_t)us);
}
