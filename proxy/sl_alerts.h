/*
 * sl_alerts — webhooks when a rule's usage crosses a threshold upward,
 * when the provider pauses an upstream, when an operator sets, shortens or
 * clears a pause, and when the shared store goes down or comes back.
 *
 * Runs on worker 0's loop (its own hook and timer there).  Once a second it takes a snapshot of the
 * store with SL_SNAP_ALERTS: the store compares each bucket's usage with
 * its rule's thresholds and records which it has reached, atomically and,
 * with Redis, once for the whole fleet, so each upward crossing is
 * reported by exactly one snapshot of one instance and re-armed when
 * usage falls back below.  Messages are POSTed as JSON through worker 0's
 * libcurl multi (never blocking a proxied call), with retries and backoff,
 * from a bounded queue; each is also logged.
 */
#ifndef SL_ALERTS_H
#define SL_ALERTS_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>

struct sl_worker;
struct sl_alerts;

enum { SL_ALERT_SENT, SL_ALERT_FAILED, SL_ALERT_DROPPED, SL_ALERT_RESULTS };
extern const char *const sl_alert_result_names[SL_ALERT_RESULTS];

/* Alerts for W's config, registered on W's loop (a hook that runs every
 * pass, a timer for its next due time).  NULL when out of memory. */
struct sl_alerts *sl_alerts_new(struct sl_worker *w);
/* What an operator did to an upstream's pause (POST or DELETE
 * /upstreams/NAME/pause), for its one alert. */
struct sl_operator_action {
    const char *upstream;
    const char *action;         /* "pause", "shorten" or "clear" */
    const char *by;             /* the client's address */
    const char *reason;         /* "pause": the operator's reason, else NULL */
    int64_t was_us;             /* the pause left before, 0: none */
    bool was_operator;          /* ... set by an operator */
    const char *was_reason;     /* ... its reason */
    int64_t left_us;            /* the pause left now, 0: none */
};

/* Announce ACT to every receiver that wants "operator" events (A may be
 * NULL: no receivers).  Worker 0's thread. */
void sl_alerts_operator(struct sl_alerts *a, const struct sl_operator_action *act);
/* EASY finished: true if it was an alert's (then handled). */
bool sl_alerts_done(struct sl_alerts *a, CURL *easy, CURLcode result);
/* Counts by result (A may be NULL: zeros). */
void sl_alerts_counts(const struct sl_alerts *a, uint64_t out[SL_ALERT_RESULTS]);
/* Abort what is in flight and free everything. */
void sl_alerts_free(struct sl_alerts *a);

#endif
