/*
 * sl_metrics — the counters behind /metrics, one set per worker.
 *
 * Each worker writes only its own set, so an increment is a relaxed load
 * and store (no locked instruction on the hot path); the admin listener
 * sums the sets of all workers when it is scraped, with relaxed loads:
 * a scrape may miss an increment made during it, never tear one.
 *
 * Label cardinality is bounded by the configuration: upstreams, rules
 * (each upstream's rules plus its provider pause), outcomes, and apps
 * (max_apps + "-" and "other").  No `per` value ever becomes a label.
 *
 * Every family /metrics writes is described once, by a row of
 * sl_metric_families (name, type, help, labels): the admin listener writes
 * its HELP and TYPE lines from the row, and `sluice --print-metrics`
 * prints the table docs/metrics.md is.
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "sl_config.h"

/* The metric families of /metrics, in the order it writes them. */
enum sl_metric_family {
    SL_MF_BUILD_INFO,
    SL_MF_START_TIME,
    SL_MF_CONFIG_RELOADS,
    SL_MF_CONFIG_GENERATION,
    SL_MF_CONFIG_LOADED,
    SL_MF_CALLS,
    SL_MF_DECISIONS,
    SL_MF_APP_CALLS,
    SL_MF_APP_DENIED,
    SL_MF_RULE_LIMIT,
    SL_MF_RULE_USED,
    SL_MF_RULE_REMAINING,
    SL_MF_RULE_UTILIZATION,
    SL_MF_RULE_RESET,
    SL_MF_RULE_BUCKETS,
    SL_MF_RULE_APP_USED,
    SL_MF_RULE_APP_SHARE,
    SL_MF_QUEUE_DEPTH,
    SL_MF_APP_QUEUE_DEPTH,
    SL_MF_QUEUE_WAIT,
    SL_MF_UPSTREAM_DURATION,
    SL_MF_PROVIDER_PAUSES,
    SL_MF_PROVIDER_PAUSE_REMAINING,
    SL_MF_STORE_UP,
    SL_MF_STORE_ERRORS,
    SL_MF_APPS,
    SL_MF_ALERTS,
    SL_MF_COUNT,
};

/* One family: what a scraper and the reference say about it. */
struct sl_metric_desc {
    const char *name;             /* "sluice_calls_total" */
    const char *type;             /* "counter", "gauge" or "histogram" */
    const char *help;             /* the HELP line: one sentence or two */
    const char *labels;           /* "upstream,outcome"; "" for none */
};

extern const struct sl_metric_desc sl_metric_families[SL_MF_COUNT];

/* Print the Markdown reference of every family (docs/metrics.md) to OUT. */
void sl_metrics_reference(FILE *out);

/* What happened to a call, as /metrics counts it. */
enum sl_outcome {
    SL_OUT_FORWARDED,   /* sent upstream (the provider's answer relayed) */
    SL_OUT_REJECTED,    /* answered 429 by sluice: over a limit */
    SL_OUT_QUEUED,      /* held in queue mode (counted when held) */
    SL_OUT_RELEASED,    /* a held call that got room and went upstream */
    SL_OUT_EXPIRED,     /* a held call that waited max_wait: 429 */
    SL_OUT_PAUSED,      /* answered 429: the provider paused the upstream */
    SL_OUT_ERROR,       /* 5xx from sluice: store, upstream or memory failure */
    SL_OUT_INVALID,     /* 4xx from sluice: bad request, no route */
    SL_OUT_LOGIN_CACHED, /* a login answered from its rule's login_cache */
    SL_OUT_COUNT,
};

extern const char *const sl_outcome_names[SL_OUT_COUNT];

/* A store decision as one rule saw it. */
enum {
    SL_DECISION_ALLOWED,
    SL_DECISION_DENIED,
    SL_DECISION_SHADOW_DENIED,  /* a shadow rule would have denied it */
    SL_DECISION_RESULTS,
};
extern const char *const sl_decision_names[SL_DECISION_RESULTS];

/* Histogram bounds (seconds); one more bucket counts everything. */
#define SL_HIST_BOUNDS 14
extern const double sl_hist_latency_bounds[SL_HIST_BOUNDS];
extern const double sl_hist_held_bounds[SL_HIST_BOUNDS];

struct sl_hist {
    _Atomic uint64_t buckets[SL_HIST_BOUNDS + 1];  /* not cumulative */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
};

/*
 * Rows are metric ids (sl_proxy.h, struct sl_metric_ids), not positions in
 * one configuration: a reload that keeps an upstream's or a rule's name
 * keeps its counters.  The arrays grow when a reload brings new names
 * (sl_metrics_grow, under the proxy's metrics_lock).
 */
struct sl_metrics {
    size_t nups;                  /* upstream ids covered */
    size_t nslots;                /* rule slots covered */
    size_t napps;                 /* app ids counted (sl_apps_capacity) */
    _Atomic uint64_t *calls;      /* [1 + upstream id][outcome]; row 0: no route */
    _Atomic uint64_t *decisions;  /* [slot][SL_DECISION_*] */
    _Atomic uint64_t *app_calls;  /* [slot][app]: calls forwarded */
    _Atomic uint64_t *app_denied; /* [slot][app]: calls refused by the rule */
    struct sl_hist *latency;      /* [upstream id]: send to last byte */
    struct sl_hist *held;         /* [upstream id]: time held in the queue */
    _Atomic uint64_t *pauses;     /* [upstream id]: provider pauses started */
};

int sl_metrics_init(struct sl_metrics *m, size_t nups, size_t nslots, size_t napps);
/* Cover at least NUPS upstream ids and NSLOTS rule slots (new rows
 * zero).  0, or -1 (out of memory: M unchanged). */
int sl_metrics_grow(struct sl_metrics *m, size_t nups, size_t nslots);
void sl_metrics_free(struct sl_metrics *m);

/* Single writer (the owning worker): no locked instruction. */
static inline void sl_metric_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t sl_metric_get(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

void sl_metrics_call(struct sl_metrics *m, const struct sl_upstream_conf *up,
                     enum sl_outcome outcome);
void sl_hist_observe(struct sl_hist *h, const double *bounds, int64_t us);

#endif
