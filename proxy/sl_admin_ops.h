/*
 * sl_admin_ops — what an operator may change through the admin listener:
 * an upstream's pause.
 *
 *   POST   /upstreams/NAME/pause  {"for": "10m", "reason": "..."}  pause by hand
 *   POST   /upstreams/NAME/pause  {"resume_in": "30s"}             shorten
 *   POST   /upstreams/NAME/pause  {"clear": true}                  clear
 *   DELETE /upstreams/NAME/pause                                   clear
 *
 * sl_admin routes the request here once it has passed the listener's
 * checks (Host, token, and for POST and DELETE the header a cross-site
 * page cannot send), collects the body, and answers with what the action
 * gives back.  The action goes to the worker's store, which decides it
 * atomically against the pause running now, for every instance sharing
 * the store; the answer, one log line and one alert say what it changed.
 */
#ifndef SL_ADMIN_OPS_H
#define SL_ADMIN_OPS_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

struct sl_worker;
struct sl_admin_op;

/* The answer: RESP (owned by the callee; NULL when out of memory) with
 * STATUS. */
typedef void (*sl_admin_op_done_fn)(void *arg, struct MHD_Response *resp,
                                    unsigned status);

/* Is URL an operator action's ("/upstreams/...")? */
bool sl_admin_op_path(const char *url);

/* Does an operator action's path take METHOD (POST, DELETE)? */
bool sl_admin_op_method_ok(const char *method);

/* An action: METHOD on URL, by CONN's client, on W (worker 0).  NULL when
 * out of memory. */
struct sl_admin_op *sl_admin_op_new(struct sl_worker *w, struct MHD_Connection *conn,
                                    const char *url, const char *method);

/* LEN more bytes of the request's body (past a small bound they are
 * dropped, and the action is answered 413). */
void sl_admin_op_body(struct sl_admin_op *op, const char *data, size_t len);

/* The body is in: carry the action out.  DONE is called exactly once,
 * possibly before this returns (the memory store, a bad request), else
 * from the store's callback on W's thread.  OP stays the caller's; it
 * must outlive the call of DONE. */
void sl_admin_op_run(struct sl_admin_op *op, sl_admin_op_done_fn done, void *arg);

void sl_admin_op_free(struct sl_admin_op *op);

#endif
