/*
 * sl_request.h — the request, as the files of one call's life share it.
 *
 * A call's life is split by phase, one file each:
 *   sl_request.c  accept and decide: MHD's callbacks, routing, matching,
 *                 the store's decision, synthetic answers, suspension;
 *   sl_framing.c  what a request head must look like before it is trusted;
 *   sl_relay.c    the upstream exchange: libcurl's callbacks, bodies both
 *                 ways, the response, the provider's feedback and retries;
 *   sl_hold.c     queue mode: holding a call, asking again, expiring.
 * Everything here is internal to proxy/ (sl_proxy.h is the worker's view).
 * All of it runs on the worker thread that owns the connection.
 */
#ifndef SL_REQUEST_H
#define SL_REQUEST_H

#include "sl_assert.h"
#include "sl_buf.h"
#include "sl_login_cache.h"
#include "sl_metrics.h"
#include "sl_proxy.h"

#define SL_PIPE_MAX (256 * 1024)     /* per direction, per call */
#define SL_SIGNAL_PEEK (64 * 1024)  /* body bytes searched for limit signals */
#define SL_SAVE_MAX (64 * 1024)     /* request body kept for a retry */
/* libcurl's receive and upload buffers, allocated per transfer: 16 KiB
 * (curl's default) rather than 64 KiB, which made every transfer allocate
 * and free 128 KiB, past the heap's trim threshold
 * (docs/internals/benchmark-log.md). */
#define SL_CURL_BUFSIZE (16 * 1024)
/*
 * A client connection's memory (libmicrohttpd's per-connection pool, set
 * once, not grown): the request head stays in it, parsed in place, with a
 * header record per line taken from its other end, and the response head
 * is built in what is left.  So every request head sluice accepts must
 * leave room for the largest response head it relays: upstream headers up
 * to SL_RESP_HEADERS_MAX (NGINX's proxy_buffer_size is 4-8 KiB) and
 * sluice's own, within SL_RESP_HEAD_SLACK.  A larger head is refused with
 * 431 before it is forwarded (sl_req_begin); one too large for the pool
 * itself gets libmicrohttpd's own 431.
 */
#define SL_CONN_MEMORY (48 * 1024)
#define SL_RESP_HEADERS_MAX (16 * 1024)
#define SL_RESP_HEAD_SLACK (2 * 1024)
#define SL_HEAD_LINE_COST 64        /* a header record: 56 bytes, aligned */
#define SL_REQ_HEAD_MAX (SL_CONN_MEMORY - SL_RESP_HEADERS_MAX - SL_RESP_HEAD_SLACK)

/* A bounded byte queue between the client and libcurl: [rpos, wpos) of
 * data holds unread bytes. */
struct sl_pipe {
    char *data;
    size_t cap, rpos, wpos;
};

/*
 * Where a call is in its life as the store and the queue see it: one
 * variable, changed only by sl_req_set_phase(), which checks (SL_ASSERT)
 * that the step is one of these:
 *
 *   NEW -> ACTIVE                      headers handled (routed or refused)
 *   ACTIVE -> DECIDING -> ACTIVE       the store asked, and its answer
 *   ACTIVE -> HELD -> ACTIVE           queue mode: held, then let go
 *   HELD -> HELD_DECIDING -> HELD      a held call asks again
 *   HELD_DECIDING -> DECIDING          let go while its answer is out
 *   DECIDING -> ORPHANED               MHD finished with it meanwhile: the
 *                                      store's answer frees it
 *
 * What the upstream exchange and the connection do (body sent, headers in,
 * transfer done, suspended, client gone) are separate facts, kept in the
 * flags below: they move on their own, in either order.
 */
enum sl_phase {
    SL_PHASE_NEW,           /* request line seen, headers not yet handled */
    SL_PHASE_ACTIVE,        /* past the headers; nothing outstanding */
    SL_PHASE_DECIDING,      /* the store's answer is outstanding */
    SL_PHASE_HELD,          /* queue mode: waiting for room */
    SL_PHASE_HELD_DECIDING, /* held, its renewed decision outstanding */
    SL_PHASE_ORPHANED,      /* completed while deciding; freed by the answer */
};

enum sl_susp {
    SL_SUSP_NONE,
    SL_SUSP_DECIDE,     /* waiting for the store */
    SL_SUSP_UPLOAD,     /* upload buffer full */
    SL_SUSP_HEADERS,    /* body sent, waiting for response headers */
    SL_SUSP_BODY,       /* response buffer empty */
    SL_SUSP_HELD,       /* queue mode: waiting for room */
    SL_SUSP_SETTLE,     /* answer in, the store applying its report */
};

/* A call of a rule with "login_cache", as its X-Sluice-Login-Cache says. */
enum sl_login_state {
    SL_LOGIN_NONE,      /* no login_cache rule: no header */
    SL_LOGIN_READING,   /* its body is being read, nothing decided yet */
    SL_LOGIN_BYPASS,    /* not looked up (method, size, grant, headers) */
    SL_LOGIN_SENT,      /* a miss, sent: its answer may be kept ("miss") */
    SL_LOGIN_STORED,    /* its answer was kept ("stored") */
};

/* The store's word that an answer's usage reports and pause are in force
 * everywhere (sl_store_done_cb), counted down by each; detached from its
 * request if the request ends first. */
struct sl_settle {
    struct sl_request *req;     /* NULL: the request ended */
    unsigned pending;           /* reports and pauses not yet applied */
};

/* One upstream response header line, "Name: value" split in place. */
struct sl_hdr {
    struct sl_hdr *next;
    size_t name_len;
    char *value;        /* points into line */
    char line[];
};

/* Is FROM -> TO a step enum sl_phase allows? */
static inline bool sl_phase_step_ok(enum sl_phase from, enum sl_phase to)
{
    switch (from) {
    case SL_PHASE_NEW:
        return to == SL_PHASE_ACTIVE;
    case SL_PHASE_ACTIVE:  /* to ACTIVE: matched again after a reload */
        return to == SL_PHASE_ACTIVE || to == SL_PHASE_DECIDING || to == SL_PHASE_HELD;
    case SL_PHASE_DECIDING:
        return to == SL_PHASE_ACTIVE || to == SL_PHASE_ORPHANED;
    case SL_PHASE_HELD:
        return to == SL_PHASE_ACTIVE || to == SL_PHASE_HELD_DECIDING;
    case SL_PHASE_HELD_DECIDING:
        return to == SL_PHASE_HELD || to == SL_PHASE_DECIDING;
    case SL_PHASE_ORPHANED:
        return false;
    }
    return false;
}

struct sl_request {
    struct sl_request *prev, *next;   /* worker's list of live requests */
    struct sl_worker *w;
    struct MHD_Connection *conn;
    char *uri;                        /* raw request target (owned) */
    const char *raw_uri;              /* ... where MHD parsed it (its buffer) */
    const char *method;               /* MHD-owned, valid until completion */
    /* The configuration generation it was matched under (referenced):
     * up, check, decision and lease point into it. */
    const struct sl_config *config;
    const struct sl_upstream_conf *up;
    unsigned stale;                   /* STALE answers in a row (reloads) */
    /* Matched again after a reload while held: keep its place and its
     * max_wait clock (sl_req_hold). */
    bool rehold;
    uint64_t rehold_ticket;
    int64_t rehold_since_ms;
    /* Held when a reload moved its worker: matched again by the loop's
     * rematch phase (counted in the worker's nrematch).  A fact beside its
     * phase: a held call may or may not be marked. */
    bool rematch;
    /* The room sequence of its buckets when it last asked the store (or
     * looked for calls ahead of it): changed by the time it is held, it
     * asks again at once (sl_queue.h, "Wake-ups are never lost"). */
    uint64_t room_seq;
    enum sl_phase phase;              /* see enum sl_phase; sl_req_set_phase */

    bool suspended;                   /* MHD connection suspended (why: susp) */
    enum sl_susp susp;
    struct sl_conn *sconn;            /* the connection's watch, or NULL */
    bool client_gone;                 /* the client left: may happen in any phase */

    struct sl_check check;            /* rules matched (owned keys) */
    struct sl_decision decision;
    struct sl_lease *lease;           /* owned, released when the upstream
                                       * exchange ends */
    bool committed;                   /* the lease's reservations are logged */
    bool resend_refused;              /* libcurl wanted to send it twice */
    int64_t decided_us;               /* when the store allowed it */
    int64_t sent_us;                  /* when its request went upstream */
    bool signalled;                   /* the response said "over the limit" */
    int64_t signal_pause_us;          /* ... and asked for this pause */
    bool replay_headers;              /* MHD will repeat the headers call */
    struct sl_held held;              /* its place in the queue */
    int priority;                     /* its queue lane (0 .. 9) */
    struct sl_decision last_deny;     /* why it is held */
    bool feedback_done;               /* provider's signals read */
    struct sl_settle *settle;         /* its reports being applied, or NULL */
    bool want_body;                   /* a signal needs the body's start */
    struct sl_buf saved;              /* request body kept for a retry */
    bool saved_ok;                    /* the whole body is in `saved` */
    int retries;
    /* Upstreams with "auth" (sl_auth.c): the token line injected, its
     * number, the instance it names; waiting for a login (counted in the
     * worker's nauth_wait) until auth_deadline_ms; sent again once after
     * the provider refused the token. */
    char *auth_header;
    char *auth_base;
    uint64_t auth_serial;
    bool auth_wait;
    bool auth_retried;
    int64_t auth_deadline_ms;

    /* A call of a rule with "login_cache" (sl_request.c, "logins"): where
     * its lookup is; its rule's tag, bound and margin, and its digest. */
    enum sl_login_state login;
    bool login_body;                  /* its body was read before the
                                       * decision, into `saved` */
    uint64_t login_tag;
    uint32_t login_max;
    int64_t login_margin_ms;
    unsigned char login_key[SL_LOGIN_DIGEST];

    struct MHD_Response *pending;     /* synthetic response to queue */
    unsigned pending_status;

    CURL *easy;                       /* owned while the transfer runs */
    CURLU *easy_url;                  /* its parsed upstream URL (CURLOPT_CURLU) */
    struct curl_slist *req_headers;
    bool has_body;                    /* the client sends a body */
    bool up_done;                     /* client body fully received */
    bool up_paused;                   /* curl send side paused */
    struct sl_pipe upload;            /* client body towards curl */

    long status;                      /* upstream status (final) */
    struct sl_hdr *hdrs, **hdrs_tail;
    size_t hdr_bytes;                 /* of the final response's headers */
    unsigned resp_cl_lines, resp_te_lines;
    bool resp_cl_bad;                 /* unreadable or differing lengths */
    const char *resp_error;           /* why sluice refused the response */
    bool headers_ready;               /* the upstream's final headers are in */
    int64_t content_length;           /* -1 unknown */
    struct sl_pipe down;
    /* "settle": "graphql-cost" on a rule of the call: the response body's
     * first SL_SETTLE_PEEK bytes, copied as they pass (never held back),
     * and how many bytes the body had in all. */
    bool scan_body;
    struct sl_buf scan;
    uint64_t scan_total;
    /* The response's overflow, once `down` is full (sl_relay.c, "spool"):
     * an unlinked temporary file, bytes [spool_rpos, spool_wpos) unread,
     * all of them newer than what `down` holds. */
    bool spool_open;                  /* spool_fd is an open file */
    bool spool_failed;                /* could not open one: not tried again */
    int spool_fd;
    uint64_t spool_rpos, spool_wpos;
    bool down_paused;                 /* curl receive side paused */
    bool xfer_done;                   /* the upstream exchange ended (result) */
    CURLcode result;
    bool queued;                      /* a response is queued with MHD */
    char errbuf[CURL_ERROR_SIZE];

    int64_t start_ms;
    int64_t held_ms;                  /* time spent held in the queue */
    int64_t upstream_us;              /* send to the exchange's end */
    bool expired;                     /* held past max_wait */
    char client[48];                  /* the peer's address, for app/logs */
    /* X-Request-ID: the client's (if it is a plain token of at most 64
     * characters) or one made here; sent upstream, returned to the client,
     * logged.  "" until sl_req_request_id(). */
    char request_id[65];
    unsigned status_sent;
    const char *outcome;              /* for the access log */
    uint64_t bytes_out;
};

/* Move REQ to phase TO (a step enum sl_phase lists).  Checked in the
 * sanitizer build; a plain store otherwise, so free on the decide path. */
static inline void sl_req_set_phase(struct sl_request *req, enum sl_phase to)
{
    SL_ASSERT(sl_phase_step_ok(req->phase, to));
    req->phase = to;
}

/* Is the store's answer for REQ outstanding? */
static inline bool sl_req_deciding(const struct sl_request *req)
{
    return req->phase == SL_PHASE_DECIDING || req->phase == SL_PHASE_HELD_DECIDING ||
           req->phase == SL_PHASE_ORPHANED;
}

/* Is REQ in its worker's queue (held)? */
static inline bool sl_req_is_held(const struct sl_request *req)
{
    return req->phase == SL_PHASE_HELD || req->phase == SL_PHASE_HELD_DECIDING;
}

/* Close the response's spool file, if any (sl_relay.c). */
void sl_req_spool_close(struct sl_request *req);

/* sl_request.c */
void sl_req_suspend(struct sl_request *req, enum sl_susp why);
void sl_req_resume(struct sl_request *req);
void sl_req_set_pending(struct sl_request *req, unsigned status,
                        struct MHD_Response *resp, const char *outcome);
void sl_req_error(struct sl_request *req, unsigned status, const char *error,
                  const char *message, int64_t retry_after, const char *outcome);
/* The over-limit answer for decision D (the upstream's reject status). */
void sl_req_limited(struct sl_request *req, const struct sl_decision *d);
enum MHD_Result sl_req_queue_pending(struct sl_request *req);
/* The call's request id (see request_id), made on first use. */
const char *sl_req_request_id(struct sl_request *req);
/* sl_decide_cb: the store's answer for a call (may run inside
 * sl_store_decide()). */
void sl_req_decided(void *arg, const struct sl_decision *d,
                    struct sl_lease *lease);
/* The peer's address as text into req->client, once ("" when unknown):
 * the app (client_ip), X-Forwarded-For and the access log share it. */
void sl_req_client_address(struct sl_request *req);
/* The raw request target past the upstream's prefix (path and query). */
const char *sl_req_rest(const struct sl_request *req);
/*
 * A reload made the call's match stale: match it again under the worker's
 * configuration and ask the store again (a held call keeps its place in
 * line).  A call that no longer routes gets the answer a new call would.
 */
void sl_req_redecide(struct sl_request *req);
/* Ask the store again for a call answered once before (held, or matched
 * again after a reload); if it cannot ask, the call gets the 503 a new
 * call would. */
void sl_req_ask_again(struct sl_request *req);

/* sl_framing.c: 0, or the status to answer (400, 501) with *WHY set. */
unsigned sl_req_check_framing(struct sl_request *req, const char *version,
                              const char **why);

/* sl_relay.c */
size_t sl_pipe_len(const struct sl_pipe *b);
void sl_pipe_free(struct sl_pipe *b);
/* Start the upstream transfer of request target TARGET (path and query).
 * Returns 0, or -1 (answer 503). */
int sl_req_start_transfer(struct sl_request *req, const char *target);
void sl_req_abort_transfer(struct sl_request *req);
void sl_req_update_pause(struct sl_request *req);
void sl_req_release_lease(struct sl_request *req);
/* Body bytes from the client towards the transfer. */
enum MHD_Result sl_req_upload(struct sl_request *req, const char *data,
                              size_t *size);
/* The body is complete (or none): answer now or wait for the upstream. */
enum MHD_Result sl_req_try_respond(struct sl_request *req);
/* The X-Sluice-Login-Cache value of REQ's answer, or NULL for none. */
const char *sl_req_login_word(const struct sl_request *req);

/* sl_hold.c */
#define SL_QUEUE_POLL_MS 50   /* safety-net retry for concurrency slots */
/* Hold the call denied by D (queue mode, or FORCE).  0 held, -1 answer
 * the 429 now (D's wait may have been raised to the honest one). */
int sl_req_hold(struct sl_request *req, struct sl_decision *d, bool force);
void sl_req_unhold(struct sl_request *req);

#endif
