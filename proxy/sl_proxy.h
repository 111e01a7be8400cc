/*
 * sl_proxy — the HTTP side of sluice: workers, their event loops, requests.
 *
 * One worker per core, sharing nothing on the hot path (as NGINX does).
 * Each worker thread owns an event loop (common/sl_loop), its own
 * libmicrohttpd daemon (external polling, its own SO_REUSEPORT listening
 * socket), its own libcurl multi handle (socket interface, keep-alive pool), and every
 * request accepted on its daemon.  All callbacks for a request therefore
 * run on the thread that owns it; the only structure shared by workers is
 * the limit store, which does its own locking.
 *
 * Headers only; no libmicrohttpd or libcurl types leak into limits/.
 */
#ifndef SL_PROXY_H
#define SL_PROXY_H

#include <curl/curl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "sl_config.h"
#include "sl_loop.h"
#include "sl_metrics.h"
#include "sl_queue.h"
#include "sl_store.h"

struct sl_worker;
struct sl_guard;
struct sl_request;
struct sl_apps;
struct sl_admin;
struct sl_alerts;
struct sl_auth;
struct sl_login_cache;

#define SL_STORE_WATCHES 4  /* sockets a store may watch at once */
#define SL_TICK_MS 100      /* how often the guards look at deadlines */

/* Reload outcomes, as sluice_config_reloads_total{result} counts them. */
enum sl_reload_result {
    SL_RELOAD_OK,           /* the new configuration serves */
    SL_RELOAD_INVALID,      /* the file has errors: nothing changed */
    SL_RELOAD_REFUSED,      /* it changes what needs a restart: nothing changed */
    SL_RELOAD_RESULTS,
};
extern const char *const sl_reload_result_names[SL_RELOAD_RESULTS];

/* Names behind the metric ids of upstreams and rules (sl_reload.c): ids
 * are given by name and never reused, so a counter keeps its value
 * across reloads for as long as its upstream and rule keep their names. */
struct sl_metric_ids {
    char **ups;                   /* upstream names, by id */
    size_t nups, capups;
    char **slots;                 /* "upstream\nkind\nrule", by slot */
    size_t nslots, capslots;
};

/* The process: config and store, shared by workers. */
struct sl_proxy {
    /* The configuration in force (its newest generation), referenced by
     * the proxy; read it with sl_proxy_config(), which takes a reference
     * under config_lock.  Workers keep their own reference (w->config) and
     * move to a new generation at the start of a loop pass. */
    const struct sl_config *config;
    pthread_mutex_t config_lock;
    _Atomic uint64_t generation;  /* config->generation, readable lock-free */
    const char *config_path;      /* what a reload reads */
    pthread_mutex_t reload_lock;  /* one reload at a time (SIGHUP, /reload) */
    struct sl_metric_ids ids;     /* under reload_lock */
    _Atomic uint64_t reloads[SL_RELOAD_RESULTS];
    /* Workers' metric arrays grow (write) while /metrics reads them. */
    pthread_rwlock_t metrics_lock;
    /* The memory store: the store itself with "store": "memory", the local
     * fallback with Redis.  Shared by all workers. */
    struct sl_store *memory;
    struct sl_worker *workers;    /* owned array */
    int nworkers;
    struct sl_waitlists *waitlists; /* queue mode, shared by workers */
    struct sl_apps *apps;         /* app names seen, shared by workers */
    /* Calls sent per rule, minute and app over the last 24 hours (by the
     * rules' metric slots), fed at send time by every worker. */
    struct sl_history *history;
    int64_t started_ms;           /* wall clock, for uptime */
    /* Token brokers, one per upstream with "auth" (sl_auth.c), made at
     * start; owned. */
    struct sl_auth **auth;
    size_t nauth;
    /* Token answers kept for identical logins (rules' "login_cache"),
     * shared by every worker; owned; NULL if it could not be made. */
    struct sl_login_cache *login_cache;
};

/* A socket the store asked the loop to watch (struct sl_loop, the store's
 * view of the worker's loop). */
struct sl_store_sock {
    int fd;
    struct sl_watch *watch;       /* NULL: slot free */
    sl_io_cb cb;                  /* the store's handler */
    void *arg;
};

/* A socket libcurl asked the loop to watch (CURLMOPT_SOCKETFUNCTION). */
struct sl_curl_sock {
    struct sl_watch *watch;       /* NULL: not in the loop */
    uint32_t wanted;              /* events libcurl asks for now, 0: none */
};

/*
 * One client connection.  Its socket is watched by the worker's loop for
 * its whole life, edge-triggered on EPOLLRDHUP only: no event while the
 * client behaves, one when it hangs up.  Watching once per connection (not
 * per suspension) keeps the hot path free of epoll_ctl calls.
 */
struct sl_conn {
    int fd;                       /* the client's socket (MHD's) */
    struct sl_watch *watch;       /* its hang-up watch, NULL: none */
    bool hung_up;                 /* the client closed its side */
    bool closing;                 /* shut down by its guard; MHD closes it */
    struct sl_request *req;       /* the request in progress, if any */
    struct sl_guard *guard;       /* its listener's */
    /* Slow-client deadline: the request line and headers must be in by
     * then (see sl_guard.c); on one of its guard's two deadline lists. */
    int dlist;                    /* SL_DL_NONE, SL_DL_HEADERS, SL_DL_IDLE */
    int64_t deadline_ms;
    struct sl_conn *dprev, *dnext;
    unsigned char addr[8];        /* the client: IPv4 address, IPv6 /64 */
    unsigned char addr_len;       /* 4, 8, or 0: unknown */
};

enum { SL_DL_NONE = -1, SL_DL_HEADERS = 0, SL_DL_IDLE = 1 };

/* One listener's slow-client deadlines and connection bounds (sl_guard.c). */
struct sl_guard {
    struct sl_worker *w;          /* the loop (and configuration) it runs on */
    char name[16];                /* for the log: "worker 0", "admin" */
    bool watch_hangups;           /* watch client sockets for hang-ups */
    unsigned soft_limit;          /* past this many, close the oldest waiting; 0: off */
    unsigned per_address;         /* waiting connections per client; 0: off */
    unsigned nconns;              /* open (MHD's count) */
    unsigned nclosing;            /* of which shut down, not yet closed */
    unsigned long closed;         /* connections closed, ever */
    /* Waiting connections by deadline, one FIFO per timeout (each list's
     * deadlines are set as now + one constant, so they are sorted). */
    struct sl_conn *dl_head[2], *dl_tail[2];
    unsigned long slow_closed;    /* cut for slow headers, since last logged */
    unsigned long evicted;        /* closed to make room, since last logged */
    int64_t logged_ms;
};

/* An idle easy handle in a worker's pool. */
struct sl_idle_easy {
    CURL *easy;
    CURLU *url;                   /* its parsed upstream URL (CURLOPT_CURLU) */
    size_t upstream;              /* the tag it was last used for */
};

struct sl_worker {
    int id;
    struct sl_proxy *proxy;
    /* The configuration generation this worker serves (referenced), and
     * its number for other threads (sl_proxy_serving). */
    const struct sl_config *config;
    _Atomic uint64_t serving;
    struct sl_store *store;       /* this worker's view of the limit store */
    struct sl_store_sock store_socks[SL_STORE_WATCHES]; /* the store's sockets */
    struct sl_timer store_timer;  /* the store's next deadline */
    pthread_t thread;
    struct sl_evloop *loop;       /* this thread's event loop (owned) */
    int listen_fd;                /* handed to MHD, which closes it */
    struct MHD_Daemon *mhd;
    struct sl_watch *mhd_watch;   /* the daemon's own epoll fd */
    struct sl_timer mhd_timer;    /* MHD_get_timeout() after its last run */
    CURLM *multi;
    struct sl_timer curl_timer;   /* CURLMOPT_TIMERFUNCTION's */
    bool mhd_kick;                /* a connection was resumed: run MHD now */
    _Atomic bool stop;            /* set by the main thread */
    bool quiesced;
    bool stop_expired;            /* shutdown_timeout is over */
    struct sl_timer stop_timer;   /* quiesced: shutdown_timeout */
    struct sl_timer tick_timer;   /* every SL_TICK_MS: slow clients, ... */
    struct sl_queue queue;        /* calls held in queue mode */
    bool queue_kick;              /* something freed room: pump now */
    _Atomic bool remote_kick;     /* set by another worker: pump now */
    _Atomic bool auth_kick;       /* set by a token broker: a login ended */
    unsigned long nauth_wait;     /* calls waiting for a token */
    /* The earliest retry or deadline of a held call (or earlier: one that
     * left costs a pump that finds nothing); fires a pump. */
    struct sl_timer queue_timer;
    struct sl_request *requests;  /* live requests (list head) */
    unsigned long malformed_reports;  /* provider usage reports ignored */
    int64_t malformed_logged_ms;
    unsigned long nrequests;
    /* Held calls a reload left matched under a replaced generation
     * (sl_request.rematch): matched and decided again by the loop's
     * rematch phase (sl_request_rematch), never from inside a move. */
    unsigned long nrematch;
    /* libmicrohttpd is the release whose in-place request parsing
     * sl_request.c checks byte by byte (0.9.75). */
    bool raw_head_check;
    struct sl_guard guard;        /* the proxy port's slow-client deadlines */
    struct sl_metrics metrics;    /* this worker's counters (/metrics) */
    /* Worker 0 only: the admin listener and the alert sender. */
    struct sl_admin *admin;
    struct sl_alerts *alerts;
    struct sl_idle_easy *easy_pool;   /* idle easy handles for reuse */
    int npool;
    struct sl_curl_sock *curl_socks;  /* by fd: libcurl's sockets (owned) */
    int ncurl_socks;
};


/* sl_reload.c */
/* The configuration in force, referenced (the caller unrefs it). */
const struct sl_config *sl_proxy_config(struct sl_proxy *p);
/* Give C's upstreams and rules their metric ids (reload_lock held, or
 * before the workers start).  0 or -1 (out of memory). */
int sl_proxy_metric_ids(struct sl_proxy *p, struct sl_config *c);
/*
 * Re-read the configuration file (SIGHUP, POST /reload): validate it in
 * full, refuse what needs a restart, else install it as the next
 * generation, wake every worker, and return once every worker serves it
 * (each moves at its next loop pass; at most SL_RELOAD_WAIT_MS, then a
 * warning names who lags), so that a call made after the answer is
 * decided under it.  SELF: the worker whose thread this is (it moves here),
 * or NULL from any other thread.  WHY says who asked (for the log).
 * Errors, one per line, go to ERRS.
 */
enum sl_reload_result sl_proxy_reload(struct sl_proxy *p, struct sl_worker *self,
                                      const char *why, struct sl_errors *errs);
/* Move worker W to the configuration in force, if newer than its own:
 * its store and its metrics; its held calls are marked for the rematch
 * phase, not decided here (a decision's answer may itself move the worker).
 * W's thread only. */
void sl_worker_adopt(struct sl_worker *w);

/* The generation every worker serves: the oldest any of them still does
 * (a reload is in force for every new call once this reaches it). */
uint64_t sl_proxy_serving(struct sl_proxy *p);
/* The rematch phase: match again, and ask the store again for, the held
 * calls the last move marked, in line order (by ticket).  W's thread. */
void sl_request_rematch(struct sl_worker *w);

/* sl_worker.c */
int sl_worker_init(struct sl_worker *w, struct sl_proxy *proxy, int id);
/* Wake worker W's loop (any thread). */
void sl_worker_wake(struct sl_worker *w);
/* sl_wake_fn for the shared wait lists: wake worker ID to pump its queue. */
void sl_worker_wake_queue(void *proxy, int id);
int sl_worker_start(struct sl_worker *w);
void sl_worker_request_stop(struct sl_worker *w);
void sl_worker_join(struct sl_worker *w);
void sl_worker_cleanup(struct sl_worker *w);
int sl_listen_socket(const char *host, int port, bool reuseport, int backlog,
                     const char *what, const char *text);
/* libmicrohttpd's messages, into sluice's log (MHD_OPTION_EXTERNAL_LOGGER). */
void sl_worker_mhd_log(void *cls, const char *fmt, va_list ap);
/* The pool's tag for UP's handles: its upstream in its configuration
 * generation (a handle of another one, whose TLS settings may differ, is
 * reset before reuse). */
static inline size_t sl_easy_tag(const struct sl_upstream_conf *up)
{
    return (size_t)(up->config->generation << 24) ^ up->metric_id;
}
CURL *sl_worker_get_easy(struct sl_worker *w, size_t upstream, bool *fresh,
                         CURLU **url);
/* Drive W's multi in this pass, as if curl's timer were due (libcurl does
 * not always re-arm it when a transfer is unpaused from outside). */
void sl_worker_drive_curl(struct sl_worker *w);
/* A held call's retry or deadline at AT_MS: pump W's queue by then. */
void sl_worker_hold_until(struct sl_worker *w, int64_t at_ms);
/* CURLOPT_CLOSESOCKETFUNCTION: forget the socket's watch, then close it. */
int sl_worker_close_socket(void *clientp, curl_socket_t s);
void sl_worker_put_easy(struct sl_worker *w, CURL *easy, CURLU *url,
                        size_t upstream);

/* sl_guard.c: slow clients and connection bounds, per listener. */
/* A guard on W's loop named NAME (for the log); WATCH_HANGUPS: watch each
 * client socket for EPOLLRDHUP.  SOFT_LIMIT and
 * PER_ADDRESS as in struct sl_guard (0: no bound). */
void sl_guard_init(struct sl_guard *g, struct sl_worker *w, const char *name,
                   bool watch_hangups, unsigned soft_limit, unsigned per_address);
/* MHD_OPTION_NOTIFY_CONNECTION, with the guard as CLS: a connection's
 * sl_conn is its socket context, on the header deadline from its accept. */
void sl_guard_notify(void *cls, struct MHD_Connection *connection,
                     void **socket_context, enum MHD_ConnectionNotificationCode toe);
/* Close the connections past their deadline (W's thread, every tick). */
void sl_guard_expire(struct sl_guard *g, int64_t now_ms);
/* CONN's sl_conn (NULL when it has none: out of memory at accept). */
struct sl_conn *sl_conn_of(struct MHD_Connection *conn);
/* Give C's client until now + the timeout of LIST (header_timeout for
 * SL_DL_HEADERS, client_timeout for SL_DL_IDLE) to send its next request
 * line and headers; SL_DL_NONE: no deadline (headers are in).  C may be
 * NULL (nothing done). */
void sl_conn_deadline(struct sl_worker *w, struct sl_conn *c, int list);

/* sl_request.c: the MHD callbacks, and curl completion. */
void *sl_request_uri_log(void *cls, const char *uri, struct MHD_Connection *c);
enum MHD_Result sl_request_handle(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls);
void sl_request_completed(void *cls, struct MHD_Connection *conn,
                          void **con_cls, enum MHD_RequestTerminationCode toe);
void sl_request_transfer_done(struct sl_request *req, CURLcode result);
void sl_request_client_gone(struct sl_request *req);
/* The client of connection C hung up (its watch, on the worker's loop). */
void sl_request_conn_hung_up(struct sl_conn *c);
/* Connection C is going away: its request must not reach it any more. */
void sl_request_conn_closed(struct sl_conn *c);
/* Worker shutting down: resume every suspended request so it can close. */
void sl_request_abort_all(struct sl_worker *w);
/* Ask the store again for held calls that are due; expire overdue ones. */
void sl_request_pump(struct sl_worker *w, int64_t now_ms);
/* Shutting down: answer every held call 503. */
void sl_request_release_held(struct sl_worker *w);

/* sl_respond.c: synthetic responses and header helpers. */
struct sl_error_reply {
    unsigned status;
    const char *error;            /* machine code: "no_route", ... */
    const char *upstream;         /* NULL when none */
    const char *message;          /* human sentence */
    int64_t retry_after_s;        /* > 0 adds Retry-After */
};

struct MHD_Response *sl_respond_error(const struct sl_error_reply *e);

/* `sluice health`: probe the sluice configured in CONFIG_PATH (its admin
 * listener's /healthz, or /readyz when READY, else its port).  The exit
 * status: 0 healthy (ready), 1 not. */
int sl_health_main(const char *config_path, bool ready);
/* A provider's refusal relayed while sluice holds its upstream paused, and
 * which came without Retry-After: the pause's, as the only field common
 * client libraries (urllib3's Retry, got, axios-retry) read. */
void sl_respond_relayed_retry_after(const struct sl_config *c, struct MHD_Response *resp,
                                    int64_t pause_us);
/* The over-limit answer: the upstream's reject template or sluice's JSON,
 * with Retry-After (bounded by max_retry_after) and RateLimit fields.
 * APP_ID and APP name the caller's app (APP may be NULL). */
struct MHD_Response *sl_respond_limited(const struct sl_config *c,
                                        const struct sl_upstream_conf *up,
                                        const struct sl_decision *d,
                                        uint16_t app_id, const char *app);
/* RateLimit saying "nothing left for PAUSE_US" (the provider said stop). */
void sl_respond_pause_headers(struct MHD_Response *resp, int64_t pause_us);
/* Add RateLimit-Policy / RateLimit for decision D to RESP. */
void sl_respond_ratelimit_headers(struct MHD_Response *resp,
                                  const struct sl_decision *d);
/* Hop-by-hop per RFC 9110 7.6.1 (plus framing headers we regenerate). */
bool sl_header_is_hop_by_hop(const char *name, size_t len);
/* Does the comma-separated Connection header value name NAME? */
bool sl_header_connection_lists(const char *connection, const char *name,
                                size_t len);

#endif
