/*
 * sl_metrics — see sl_metrics.h.  Rendering lives in sl_admin.c, which
 * sums every worker's set at scrape time.
 */
#include "sl_metrics.h"

#include <stdlib.h>

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

int sl_metrics_init(struct sl_metrics *m, const struct sl_config *c)
{
    m->nups = c->nupstreams;
    m->napps = (size_t)c->max_apps + 2;
    m->slot_base = calloc(c->nupstreams + 1, sizeof(*m->slot_base));
    if (m->slot_base == NULL)
        return -1;
    for (size_t i = 0; i < c->nupstreams; i++) {
        m->slot_base[i] = m->nslots;
        m->nslots += c->upstreams[i].nrules + 1;
    }
    m->slot_base[c->nupstreams] = m->nslots;
    m->calls = calloc((m->nups + 1) * SL_OUT_COUNT, sizeof(*m->calls));
    m->decisions = calloc(m->nslots * SL_DECISION_RESULTS, sizeof(*m->decisions));
    m->app_calls = calloc(m->nslots * m->napps, sizeof(*m->app_calls));
    m->latency = calloc(m->nups, sizeof(*m->latency));
    m->held = calloc(m->nups, sizeof(*m->held));
    m->pauses = calloc(m->nups, sizeof(*m->pauses));
    if (m->calls == NULL || m->decisions == NULL || m->app_calls == NULL ||
        m->latency == NULL || m->held == NULL || m->pauses == NULL)
        return -1;
    return 0;
}

void sl_metrics_free(struct sl_metrics *m)
{
    free(m->slot_base);
    free((void *)m->calls);
    free((void *)m->decisions);
    free((void *)m->app_calls);
    free(m->latency);
    free(m->held);
    free((void *)m->pauses);
    m->slot_base = NULL;
    m->calls = m->decisions = m->app_calls = m->pauses = NULL;
    m->latency = m->held = NULL;
}

void sl_metrics_call(struct sl_metrics *m, const struct sl_upstream_conf *up,
                     enum sl_outcome outcome)
{
    size_t u = up != NULL ? up->index : m->nups;

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
