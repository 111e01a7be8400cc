/*
 * sl_hold — queue mode: calls held until their rules have room.
 *
 * A denied call whose denying rule is in queue mode is held: its MHD
 * connection stays suspended inside the headers call (so its body is not
 * read), and it joins the worker's queue and its bucket's process-wide wait
 * list (sl_queue.h).  It asks the store again when its wait is over (the
 * exact time for a rate rule), or at once when room is given back in its
 * bucket anywhere (sl_waitlists_room: a slot freed, a reservation never
 * sent, a provider report, or another instance through the store), and
 * only when it is first in its bucket, so arrival order holds.  A call
 * whose turn cannot come before max_wait (its rule's next room, or the
 * calls ahead of it, `limit` per span) gets the 429 at once.
 */
#include "sl_request.h"

#include "sl_log.h"
#include "sl_time.h"

#include <stdlib.h>

/* ---- queue mode ---- */


void sl_req_unhold(struct sl_request *req)
{
    if (!sl_req_is_held(req))
        return;
    sl_queue_remove(&req->w->queue, &req->held);
    sl_req_set_phase(req, req->phase == SL_PHASE_HELD_DECIDING ? SL_PHASE_DECIDING
                                                              : SL_PHASE_ACTIVE);
    req->held_ms += sl_time_mono_ms() - req->held.since_ms;
    sl_hist_observe(&req->w->metrics.held[req->up->metric_id], sl_hist_held_bounds,
                    (sl_time_mono_ms() - req->held.since_ms) * 1000);
}

/*
 * D denied the call and its rule is in queue mode: hold it, or keep holding
 * it with a new retry time.  Returns 0 when held, -1 when it must get the
 * 429 now (queue full, shutting down, or no room before max_wait ends: then
 * D's wait is raised to the earliest time room can come, for Retry-After).
 */
int sl_req_hold(struct sl_request *req, struct sl_decision *d, bool force)
{
    struct sl_worker *w = req->w;
    const struct sl_hit *waiting = NULL;
    const struct sl_rule *r = d->rule;
    int64_t now = sl_time_mono_ms(), wait_ms;

    if (w->stop || r == NULL || (r->on_limit != SL_ON_LIMIT_QUEUE && !force)) {
        req->rehold = false;
        return -1;
    }
    for (size_t i = 0; i < req->check.nhits; i++)
        if (req->check.hits[i].rule == r)
            waiting = &req->check.hits[i];
    if (waiting == NULL) {
        req->rehold = false;
        return -1;
    }
    /* Room in a rate window comes back at a known time; a concurrency slot
     * freed anywhere wakes the first waiter (sl_waitlists_room); the poll
     * is only a safety net. */
    wait_ms = r->kind != SL_RULE_CONCURRENCY ? (d->wait_us + 999) / 1000
                                             : SL_QUEUE_POLL_MS;
    if (wait_ms < 1)
        wait_ms = 1;
    if (!sl_req_is_held(req)) {
        /* Matched again after a reload: the same place in line, the same
         * max_wait clock, counted as queued once. */
        bool again = req->rehold;
        int64_t since = again ? req->rehold_since_ms : now;

        req->rehold = false;
        if (!again && sl_queue_count(&w->queue, req->up->index) >= req->up->max_queue)
            return -1;
        req->held.upstream = req->up->index;
        req->held.check = &req->check;
        req->held.waiting = waiting;
        req->held.owner = req;
        req->held.deadline_ms = since + r->max_wait_us / 1000;
        req->held.since_ms = since;
        req->held.ticket = again ? req->rehold_ticket : 0;
        req->held.priority = req->priority;
        req->held.aging_ms = req->up->priority_aging_us / 1000;
        req->held.app = req->check.app;
        req->held.app_blocked = d->share != SL_SHARE_NONE;
        atomic_store(&req->held.kicked, false);
        if (sl_queue_add(&w->queue, &req->held) != 0)
            return -1;
        sl_req_set_phase(req, SL_PHASE_HELD);
        if (!again)
            sl_metrics_call(&w->metrics, req->up, SL_OUT_QUEUED);
        if (r->kind == SL_RULE_RATE) {
            /* Those ahead in its bucket go first, `limit` per span: its
             * turn cannot come before this.  Say so now, not at max_wait. */
            int64_t span_ms = (r->span_us + 999) / 1000;
            int64_t earliest = now + wait_ms +
                               (int64_t)(req->held.ahead / r->limit) * span_ms;
            if (r->leaky)   /* a bucket lets them through at its leak */
                earliest = now + wait_ms + (int64_t)req->held.ahead *
                                               (r->leak.per_us / r->leak.n) / 1000;
            if (earliest > req->held.deadline_ms) {
                sl_req_unhold(req);
                d->wait_us = (earliest - now) * 1000;
                return -1;
            }
        } else if (r->kind == SL_RULE_PAUSE && now + wait_ms > req->held.deadline_ms) {
            sl_req_unhold(req);
            return -1;
        }
    } else {
        if (r->kind != SL_RULE_CONCURRENCY && now + wait_ms > req->held.deadline_ms)
            return -1;
        if (sl_queue_rewait(&w->queue, &req->held, waiting) != 0)
            return -1;
        sl_queue_set_app_blocked(&w->queue, &req->held, d->share != SL_SHARE_NONE);
    }
    req->held.retry_at_ms = now + wait_ms;
    req->held.deciding = false;
    req->held.parked = false;
    req->last_deny = *d;
    /* Room appeared in one of its buckets after it asked (a slot freed
     * while its decision was out, or the calls it saw ahead have left):
     * the wake-up for it found nobody, so it asks again now, not at its
     * retry time.  Read after joining the wait list (sl_queue.h).  Only
     * if it may ask: a call behind others is woken when they leave. */
    if (sl_waitlists_seq(w->proxy->waitlists, &req->check) != req->room_seq &&
        sl_queue_is_head(&w->queue, &req->held)) {
        atomic_store(&req->held.kicked, true);
        w->queue_kick = true;
    }
    {
        int64_t due = req->held.retry_at_ms < req->held.deadline_ms
                          ? req->held.retry_at_ms : req->held.deadline_ms;
        sl_worker_hold_until(w, due);
    }
    return 0;
}

/* Answer a held call that has waited max_wait: reject mode's 429. */
static void sl_req_expire(struct sl_request *req, int64_t now)
{
    struct sl_decision d = req->last_deny;
    int64_t left = req->held.retry_at_ms - now;

    sl_req_unhold(req);
    d.verdict = SL_VERDICT_DENY;
    d.wait_us = (left > 0 ? left : 1) * 1000;
    req->expired = true;
    sl_req_limited(req, &d);
    sl_req_resume(req);
}

/*
 * Ask the store again for the held calls that are due and first in their
 * bucket's wait list (process-wide arrival order); answer the overdue.  A
 * due call that is not first parks: the worker holding the call before it
 * wakes this one when that call leaves.
 */
void sl_request_pump(struct sl_worker *w, int64_t now)
{
    for (size_t u = 0; u < w->queue.used; u++) {
        struct sl_held *h, *next;

        for (h = w->queue.heads[u]; h != NULL; h = next) {
            struct sl_request *req = h->owner;

            next = h->next;
            if (h->deciding)
                continue;
            if (now >= h->deadline_ms) {
                sl_req_expire(req, now);
                continue;
            }
            if (!h->parked && !atomic_load(&h->kicked) && now < h->retry_at_ms)
                continue;
            if (!sl_queue_is_head(&w->queue, h)) {
                h->parked = true;
                continue;
            }
            h->parked = false;
            atomic_store(&h->kicked, false);
            sl_req_ask_again(req);
        }
    }
}

void sl_request_release_held(struct sl_worker *w)
{
    for (struct sl_request *r = w->requests; r != NULL; r = r->next) {
        if (!sl_req_is_held(r) || r->held.deciding)
            continue;
        sl_req_unhold(r);
        sl_req_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down",
                     "sluice is shutting down; retry the call", 1, "shutdown");
        sl_req_resume(r);
    }
}

