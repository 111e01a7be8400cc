/*
 * sl_metrics — see sl_metrics.h.  Rendering lives in sl_admin.c, which
 * sums every worker's set at scrape time; the families it writes, with
 * their help and labels, are described here once (sl_metric_families),
 * and the Markdown reference (docs/metrics.md) is printed from the same
 * rows, so the page and the scrape cannot disagree.
 */
#include "sl_metrics.h"

#include <stdlib.h>
#include <string.h>

const char *const sl_outcome_names[SL_OUT_COUNT] = {
    "forwarded", "rejected", "queued", "released",
    "expired", "paused", "error", "invalid", "login_cached",
};

const char *const sl_decision_names[SL_DECISION_RESULTS] = {
    "allowed", "denied", "shadow_denied",
};

const struct sl_metric_desc sl_metric_families[SL_MF_COUNT] = {
    [SL_MF_BUILD_INFO] = {"sluice_build_info", "gauge",
        "Version of this sluice (always 1).", "version"},
    [SL_MF_START_TIME] = {"sluice_start_time_seconds", "gauge",
        "When this sluice started, seconds since the Unix epoch.", ""},
    [SL_MF_CONFIG_RELOADS] = {"sluice_config_reloads_total", "counter",
        "Configuration reloads (SIGHUP, POST /reload) by result: ok, invalid "
        "(the file has errors), refused (it changes what needs a restart).",
        "result"},
    [SL_MF_CONFIG_GENERATION] = {"sluice_config_generation", "gauge",
        "Generation of the configuration in force (1 at start, +1 per reload "
        "that took effect).", ""},
    [SL_MF_CONFIG_LOADED] = {"sluice_config_loaded_timestamp_seconds", "gauge",
        "When the configuration in force was loaded, seconds since the Unix "
        "epoch.", ""},
    [SL_MF_CALLS] = {"sluice_calls_total", "counter",
        "Calls by upstream and outcome (forwarded and released went "
        "upstream; queued counts calls held, which end released or expired; "
        "login_cached counts logins answered from a rule's login_cache).",
        "upstream,outcome"},
    [SL_MF_DECISIONS] = {"sluice_decisions_total", "counter",
        "Store decisions by rule and result (a call counts in every rule "
        "it matched when allowed, in the rule that held it back when denied, "
        "and in a shadow rule that would have denied it).",
        "upstream,rule,result"},
    [SL_MF_APP_CALLS] = {"sluice_app_calls_total", "counter",
        "Calls allowed by app and rule, on this instance (apps are bounded "
        "by max_apps; the rest count as \"other\").", "upstream,rule,app"},
    [SL_MF_APP_DENIED] = {"sluice_app_denied_total", "counter",
        "Calls answered over the limit, by app and by the rule (or the "
        "upstream's pause) that refused them, on this instance.",
        "upstream,rule,app"},
    [SL_MF_RULE_LIMIT] = {"sluice_rule_limit", "gauge",
        "The rule's limit (calls per window, in flight, or a leaky bucket's "
        "size).", "upstream,rule"},
    [SL_MF_RULE_USED] = {"sluice_rule_used", "gauge",
        "Calls counted now (busiest bucket of a per rule; a leaky bucket: its "
        "level, rounded up, and the calls admitted not yet sent).", "upstream,rule"},
    [SL_MF_RULE_REMAINING] = {"sluice_rule_remaining", "gauge",
        "Calls that fit now.", "upstream,rule"},
    [SL_MF_RULE_UTILIZATION] = {"sluice_rule_utilization_ratio", "gauge",
        "Used over limit, 0 to 1.", "upstream,rule"},
    [SL_MF_RULE_RESET] = {"sluice_rule_reset_seconds", "gauge",
        "Until the oldest counted call leaves the window (a leaky bucket: "
        "until it is empty).", "upstream,rule"},
    [SL_MF_RULE_BUCKETS] = {"sluice_rule_buckets", "gauge",
        "Buckets (per values) the rule holds now.", "upstream,rule"},
    [SL_MF_RULE_APP_USED] = {"sluice_rule_app_used", "gauge",
        "Calls each app has in the rule's current window (busiest bucket of "
        "a per rule; shared figures with Redis).", "upstream,rule,app"},
    [SL_MF_RULE_APP_SHARE] = {"sluice_rule_app_share", "gauge",
        "An app's share of the rule (\"apps\"), in calls per window: its "
        "max, or its reserve; app \"*\" is every app not named.",
        "upstream,rule,app,kind"},
    [SL_MF_QUEUE_DEPTH] = {"sluice_queue_depth", "gauge",
        "Calls held in queue mode now.", "upstream"},
    [SL_MF_APP_QUEUE_DEPTH] = {"sluice_app_queue_depth", "gauge",
        "Calls of an app held in queue mode now, for any upstream.", "app"},
    [SL_MF_QUEUE_WAIT] = {"sluice_queue_wait_seconds", "histogram",
        "Time calls spent held in the queue (observed when they leave it).",
        "upstream"},
    [SL_MF_UPSTREAM_DURATION] = {"sluice_upstream_duration_seconds", "histogram",
        "Upstream exchanges, from sending the request to the last byte.",
        "upstream"},
    [SL_MF_PROVIDER_PAUSES] = {"sluice_provider_pauses_total", "counter",
        "Pauses the provider asked for (429/503 with Retry-After, limit "
        "signals).", "upstream"},
    [SL_MF_PROVIDER_PAUSE_REMAINING] = {"sluice_provider_pause_remaining_seconds",
        "gauge", "Time left in the provider's pause (0: not paused).", "upstream"},
    [SL_MF_STORE_UP] = {"sluice_store_up", "gauge",
        "1 when the limit store answers (always with the memory store).", "store"},
    [SL_MF_STORE_ERRORS] = {"sluice_store_errors_total", "counter",
        "Failures talking to Redis (lost links, timeouts, refused scripts).",
        "store"},
    [SL_MF_APPS] = {"sluice_apps", "gauge",
        "Distinct app names tracked (at most 2 x max_apps + 2: names from "
        "calls, configured names, \"-\" and \"other\").", ""},
    [SL_MF_ALERTS] = {"sluice_alerts_total", "counter",
        "Alert webhooks by result (sent: a 2xx answer; failed: no 2xx "
        "after every retry; dropped: the alert queue was full).", "result"},
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

/* S in a Markdown table cell: '|' escaped. */
static void sl_md_cell(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputc('\\', out);
        fputc(*s, out);
    }
}

static void sl_md_bounds(FILE *out, const double *bounds)
{
    for (size_t i = 0; i < SL_HIST_BOUNDS; i++)
        fprintf(out, "%s%g", i ? ", " : "", bounds[i]);
}

void sl_metrics_reference(FILE *out)
{
    fprintf(out,
            "# Metrics\n"
            "\n"
            "<!-- Generated by `sluice --print-metrics > docs/metrics.md`; edit\n"
            "     proxy/sl_metrics.c (sl_metric_families), not this file. -->\n"
            "\n"
            "The admin listener serves these at `/metrics` in the Prometheus text\n"
            "format.  Counters count since this instance started; the rule gauges\n"
            "come from the same snapshot as `/status`.  Label values are bounded by\n"
            "the configuration (upstreams, rules, `max_apps`): no `per` value ever\n"
            "becomes a label.\n"
            "\n"
            "| metric | type | labels | meaning |\n"
            "|---|---|---|---|\n");
    for (size_t i = 0; i < SL_MF_COUNT; i++) {
        const struct sl_metric_desc *d = &sl_metric_families[i];
        fprintf(out, "| `%s` | %s | ", d->name, d->type);
        if (*d->labels == '\0')
            fputs("(none)", out);
        for (const char *l = d->labels; *l;) {
            size_t n = strcspn(l, ",");
            fprintf(out, "%s`%.*s`", l == d->labels ? "" : ", ", (int)n, l);
            l += n + (l[n] == ',');
        }
        fputs(" | ", out);
        sl_md_cell(out, d->help);
        fputs(" |\n", out);
    }
    fputs("\n`outcome` (sluice_calls_total) is one of ", out);
    for (int i = 0; i < SL_OUT_COUNT; i++)
        fprintf(out, "%s`%s`", i == 0 ? "" : i + 1 < SL_OUT_COUNT ? ", " : " or ",
                sl_outcome_names[i]);
    fputs(".\n`result` (sluice_decisions_total) is one of ", out);
    for (int i = 0; i < SL_DECISION_RESULTS; i++)
        fprintf(out, "%s`%s`", i == 0 ? "" : i + 1 < SL_DECISION_RESULTS ? ", " : " or ",
                sl_decision_names[i]);
    fputs(".\nThe `rule` label of an upstream's provider pause is "
          "`upstream-pause`.\n\nHistogram buckets (seconds): "
          "`sluice_upstream_duration_seconds` ", out);
    sl_md_bounds(out, sl_hist_latency_bounds);
    fputs("; `sluice_queue_wait_seconds` ", out);
    sl_md_bounds(out, sl_hist_held_bounds);
    fputs(".\n", out);
}
