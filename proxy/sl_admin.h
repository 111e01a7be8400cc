/*
 * sl_admin — the operator's side of sluice: a second HTTP listener, off
 * the proxy port, serving /healthz, /readyz, /status, /metrics and the
 * live usage page at /.
 *
 * It runs on worker 0's event loop: its own libmicrohttpd daemon (external
 * polling, epoll) whose descriptor that worker's loop watches, so an
 * admin request never blocks a proxied call and never needs a lock to
 * reach the worker's store.  Figures come from one place: the store's
 * snapshot (sl_store_snapshot), taken for each /status or /metrics
 * request; with Redis that is one script run per upstream on worker 0's
 * own connection, answered asynchronously (the admin connection is
 * suspended meanwhile).  Nothing here takes quota or reaches an upstream.
 *
 * With a token, every request needs it: "Authorization: Bearer TOKEN", or
 * HTTP Basic with TOKEN as the password (what a browser sends after its
 * login prompt, so the page works in a browser).
 */
#ifndef SL_ADMIN_H
#define SL_ADMIN_H

#include <stddef.h>
#include <stdint.h>

struct sl_worker;
struct sl_admin;
struct sl_snapshot;

/* Start the listener of W's config on W's loop, where it registers its
 * own watch, timers and per-pass hook.  NULL (logged) on error. */
struct sl_admin *sl_admin_new(struct sl_worker *w);
/* Stop: resume and close every admin connection, stop the daemon. */
void sl_admin_free(struct sl_admin *a);

#endif
