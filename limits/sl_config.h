/*
 * sl_config — the JSON configuration: parsed, validated, immutable.
 *
 * sl_config_load() reads the whole file with jansson, walks it once and
 * reports every problem it finds, each as "JSON.PATH: sentence", so an
 * operator fixes a config in one pass.  The result is read-only and shared
 * by every thread for the life of the process.
 */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sl_bucket.h"
#include "sl_calendar.h"

struct sl_pattern;
struct sl_redis_tls;
struct sl_config;
struct sl_errors;

/* Upstreams one configuration may name (per-upstream arrays that other
 * threads read are sized once for this many, so a reload never moves
 * them). */
#define SL_MAX_UPSTREAMS 4096

enum sl_rule_kind {
    /* at most `limit` per `window_us`; or, with `leaky`, a leaky bucket of
     * `limit` calls: reserved, sent and released as a window's calls are */
    SL_RULE_RATE,
    SL_RULE_CONCURRENCY,  /* at most `limit` in flight */
    SL_RULE_PAUSE,        /* the upstream asked us to stop until a time */
};

/* Where a rule reads the provider's own count of what is left. */
enum sl_sync_kind {
    SL_SYNC_NONE,
    SL_SYNC_SFORCE,       /* Sforce-Limit-Info: api-usage=USED/MAX */
    SL_SYNC_XRATELIMIT,   /* X-RateLimit-Remaining */
    SL_SYNC_RATELIMIT,    /* RateLimit (draft 11) or RateLimit-Remaining */
    SL_SYNC_SHOPIFY,      /* X-Shopify-Shop-Api-Call-Limit: USED/MAX */
};

/* What one call costs in a rule ("cost"): a number, a request header's
 * value, or a number per method. */
enum sl_cost_kind {
    SL_COST_FIXED,        /* `cost` units (1 by default) */
    SL_COST_HEADER,       /* the value of request header `cost_header` */
    SL_COST_METHOD,       /* `cost_methods`, else `cost` (the "*" entry) */
};

/* Where the provider says what a call really cost ("settle"). */
enum sl_settle_kind {
    SL_SETTLE_NONE,
    SL_SETTLE_HEADER,     /* a response header's value */
    SL_SETTLE_GRAPHQL,    /* extensions.cost.actualQueryCost in a JSON body */
};

struct sl_method_cost {
    char *method;                 /* upper case */
    uint32_t cost;
};

/* A response that means "over the limit" although it is not a 429. */
struct sl_limit_signal {
    unsigned status;
    char *body_contains;          /* NULL: the status alone */
    int64_t pause_us;             /* when no Retry-After comes with it */
};

enum sl_per_kind {
    SL_PER_NONE,
    SL_PER_CAPTURE,       /* one bucket per value of a path capture */
    SL_PER_HEADER,        /* one bucket per value of a request header */
};

enum sl_on_limit {
    SL_ON_LIMIT_REJECT,     /* 429 at once */
    SL_ON_LIMIT_QUEUE,      /* hold the call until there is room */
};

enum sl_store_kind {
    SL_STORE_MEMORY,
    SL_STORE_REDIS,
};

/* What a call gets while the shared store cannot answer. */
enum sl_on_store_error {
    SL_STORE_ERROR_LOCAL,   /* the same rules, enforced per instance */
    SL_STORE_ERROR_DENY,    /* 503 */
    SL_STORE_ERROR_ALLOW,   /* forwarded, uncounted */
};

/* Which app a call comes from (see sl_apps.h). */
enum sl_app_kind {
    SL_APP_UNSET,         /* upstream: as the top level says */
    SL_APP_NOBODY,        /* every call counts as app "-" */
    SL_APP_HEADER,        /* the value of a request header */
    SL_APP_CLIENT_IP,     /* the peer address */
};

enum sl_log_format {
    SL_LOG_FORMAT_TEXT,   /* one key=value line per call */
    SL_LOG_FORMAT_JSON,   /* one JSON object per line */
};

/* One webhook receiver of threshold and event alerts. */
struct sl_alert_conf {
    char *url;
    double *at;                   /* thresholds (0-1], ascending */
    size_t nat;
    char **rules;                 /* rule names; NULL = every rule */
    size_t nrules;
    bool on_pause;                /* the provider paused an upstream */
    bool on_store;                /* the shared store went down or came back */
    bool on_operator;             /* an operator changed an upstream's pause */
    char **headers;               /* "Name: value" lines sent with each POST */
    size_t nheaders;
};

/*
 * One app's part of a rate rule's limit ("apps": see
 * docs/guides/shares.md).  MAX: at most this many of the app's calls in any
 * window; RESERVE: this many are kept for it (other apps cannot take the
 * part it has not used).  For "*" (every app not named), MAX applies to
 * each such app and RESERVE to all of them together.  A value written as
 * a fraction is resolved against the rule's limit (rounded down).
 */
#define SL_PRIORITY_LEVELS 10     /* priorities 0 (lowest) .. 9 */
#define SL_APP_UNBOUND UINT16_MAX /* sl_share.app_id before binding */

struct sl_share {
    char *app;                    /* an app name, or "*" */
    uint16_t app_id;              /* its id (sl_config_bind_apps) */
    bool max_set, reserve_set, priority_set;
    bool lend;                    /* the reserve is lent while the app has
                                   * no call in the window ("lend": true) */
    uint64_t max, reserve;        /* calls; resolved on rules */
    double max_frac, reserve_frac;/* as written when a fraction, else 0 */
    int priority;                 /* upstream "apps" only: queue lane */
};

struct sl_rule {
    char *name;
    size_t index;                 /* position in its upstream's rules */
    char **methods;               /* upper-case method names; NULL = all */
    size_t nmethods;
    struct sl_pattern *path;      /* NULL = every path */
    enum sl_per_kind per_kind;
    char *per_text;               /* as written: "{publisher}", "header:X-App" */
    char *per_header;             /* header name for SL_PER_HEADER */
    int per_capture;              /* capture index for SL_PER_CAPTURE */
    /* A per rule's bound on distinct keys held at once (memory store):
     * one rule's keys never take another rule's room. */
    uint32_t max_keys;
    enum sl_rule_kind kind;
    uint64_t limit;               /* calls per window, or concurrent calls */
    int64_t window_us;            /* rate rules only, as configured */
    char *window_text;            /* ... as written ("24h"), or NULL */
    /* What admission uses: window_us plus the upstream's margin, so that
     * calls stamped when sent stay `window_us` apart at the provider even
     * with that much network jitter (see docs/guides/rules.md, "The
     * margin"). */
    int64_t span_us;
    /* "bucket" and "leak": a leaky bucket of `limit` calls draining LEAK
     * (sl_bucket.h).  window_us is then the time a full bucket takes to
     * drain (the log of sends that sync reads keeps that long), and
     * BUCKET_CAP the capacity in level units, the margin taken off. */
    bool leaky;
    struct sl_leak leak;
    char *leak_text;              /* as written ("2/s") */
    int64_t bucket_cap;
    /* "cost": units one call takes from a rate rule or a bucket (1 to
     * `limit`; a concurrency rule counts calls and ignores it). */
    enum sl_cost_kind cost_kind;
    uint32_t cost;                /* FIXED; METHOD: a method not listed */
    /* The most one call can cost and still ever be admitted: a window's
     * limit, a bucket's capacity less what the margin takes (in calls) */
    uint32_t cost_max;
    char *cost_header;            /* HEADER: its name */
    struct sl_method_cost *cost_methods;  /* METHOD: owned */
    size_t ncost_methods;
    /* "settle": the call's recorded cost becomes what the response says
     * it cost (refunded or charged once it is known). */
    enum sl_settle_kind settle;
    char *settle_header;          /* SL_SETTLE_HEADER: its name */
    enum sl_on_limit on_limit;    /* the upstream's unless overridden */
    int64_t max_wait_us;          /* queue mode: longest hold */
    bool on_limit_set, max_wait_set; /* given on the rule itself */
    enum sl_sync_kind sync;       /* follow the provider's usage report */
    /* sync: while the provider's last report says "nothing left", let one
     * call through this often to learn its count again (0: never). */
    int64_t sync_probe_us;
    /* "mode": "shadow": matched and counted like an enforced rule, but it
     * never denies, queues or delays a call (it reports what it would
     * have denied). */
    bool shadow;
    /* Alert thresholds on this rule: the union of every receiver's `at`
     * that names it, ascending (the store tracks which were crossed). */
    double *alert_at;
    size_t nalert_at;
    /* "reset": "calendar": the window is a calendar period (CAL, in time
     * zone TZ, owned) instead of a rolling one: calls count from the last
     * boundary (minus the margin) and room comes back at the next. */
    bool unnamed;                 /* "name" omitted: known as rule-INDEX */
    char *path_text;              /* `path` as written, or NULL */
    bool calendar;
    struct sl_calendar cal;
    struct sl_tz *tz;
    char *timezone;               /* as written ("UTC" by default) */
    /* Its counters in /metrics: an id given by name (upstream, rule) when
     * the configuration is installed, the same in every later generation
     * that keeps the name (see sl_metric_ids). */
    size_t metric_slot;
    /* "apps" (its own, or its upstream's): rate rules only.  NULL: the
     * limit is shared first come, first served. */
    struct sl_share *shares;      /* owned, nshares entries */
    size_t nshares;
    const struct sl_share *share_other;  /* the "*" entry, or NULL */
    uint64_t reserve_sum;         /* every entry's reserve */
    /* "login_cache" (rate rules): identical logins are answered from this
     * process's cache while their token is valid (proxy/sl_login_cache.c). */
    bool login_cache;
    uint32_t login_cache_max;     /* answers kept for this rule at most */
    int64_t login_cache_margin_us; /* taken off each answer's expires_in */
};

/* The share of rule R that applies to app APP_ID, or NULL (no cap, no
 * reservation).  *NAMED tells whether APP_ID has its own entry. */
const struct sl_share *sl_rule_share(const struct sl_rule *r, uint16_t app_id,
                                     bool *named);

/* How the token broker logs in (sl_auth_conf.grant). */
enum sl_auth_grant {
    SL_GRANT_CLIENT_CREDENTIALS,
    SL_GRANT_REFRESH_TOKEN,
    SL_GRANT_PASSWORD,
    SL_GRANT_JWT_BEARER,      /* RFC 7523: a JWT signed with jwt_key (RS256) */
};

/* A form field sent with every login ("params"). */
struct sl_auth_param {
    char *name;
    char *value;
};

/*
 * An upstream's "auth": sluice logs in itself and injects the token into
 * every forwarded call (proxy/sl_auth.c).  Secrets (client_secret,
 * refresh_token, password, jwt_key) hold the resolved value ("env:NAME"
 * and "file:PATH" are read at load) and are never printed or compared in
 * a message.
 */
struct sl_auth_conf {
    char *token_url;
    enum sl_auth_grant grant;
    char *client_id;              /* NULL: not sent */
    char *client_secret;          /* secret; NULL: not sent */
    char *scope;
    char *audience;
    char *refresh_token;          /* secret; grant refresh_token */
    char *username;
    char *password;               /* secret; grant password */
    char *jwt_key;                /* secret: the PEM private key's text */
    char *jwt_key_file;           /* where it was read (for messages) */
    char *jwt_issuer, *jwt_subject, *jwt_audience;
    struct sl_auth_param *params; /* extra form fields, owned */
    size_t nparams;
    int64_t refresh_before_us;    /* renew this long before expiry */
    int64_t lifetime_us;          /* when the answer has no expires_in */
    int64_t timeout_us;           /* one login exchange, at most */
    char *rule_name;              /* the rule logins count against, or NULL */
    const struct sl_rule *rule;   /* ... resolved (a rate rule), or NULL */
    /* A response that means "this token is no longer good" besides 401:
     * its body contains this text (the CRM's INVALID_SESSION_ID). */
    char *reauth_on;
    /* "token_key": the key the fleet's token is sealed with in Redis (32
     * bytes, as written or stretched from a passphrase); without it, a
     * key derived from the login's secret. */
    bool has_token_key;
    unsigned char token_key[32];  /* secret */
};

struct sl_upstream_conf {
    char *name;
    size_t index;                 /* position in the config's upstreams */
    const struct sl_config *config;   /* the configuration it belongs to */
    size_t metric_id;             /* its counters in /metrics (by name) */
    char *prefix;                 /* "/leads"; "/" routes everything */
    size_t prefix_len;
    char *url;                    /* base URL, no trailing '/' */
    enum sl_on_limit on_limit;
    int64_t max_wait_us;          /* queue mode: longest hold (default 30s) */
    unsigned max_queue;           /* queue mode: held calls per instance */
    bool tls_verify;
    char *ca_file;                /* NULL = system store */
    int64_t connect_timeout_us;
    int64_t timeout_us;           /* whole exchange; 0 = none */
    struct sl_rule *rules;
    size_t nrules;
    /* Implicit rule every call of the upstream counts in: the pause the
     * provider asked for (429/503 with Retry-After, limit signals). */
    struct sl_rule pause_rule;
    struct sl_limit_signal *signals;
    size_t nsignals;
    int64_t default_pause_us;     /* 429 without Retry-After */
    bool retry_on_limit;          /* resend after the pause */
    bool retry_unsafe;            /* ... even non-idempotent methods */
    /* On a Redis Cluster, split into tenant groups when every rule counts
     * per one header (sl_redis_groups.h) */
    bool tenant_groups;
    int64_t margin_us;            /* jitter allowance added to rate windows,
                                   * or SL_MARGIN_AUTO (each rule's own) */
    bool path_case_sensitive;     /* rules match letter case exactly */
    /* The answer to an over-limit call (default: 429 with sluice's JSON).
     * reject_body is a template: {upstream} {rule} {limit} {window}
     * {retry_after} {message} are replaced (JSON-escaped). */
    unsigned reject_status;
    char *reject_body;            /* NULL: sluice's JSON body */
    char *reject_content_type;    /* NULL: application/json */
    enum sl_app_kind app_kind;    /* never SL_APP_UNSET once loaded */
    char *app_header;             /* SL_APP_HEADER: its name */
    bool forward_app_header;      /* keep that header on the forwarded call */
    bool forward_app_set;         /* ... given on the upstream itself */
    /* "apps" on the upstream: the default shares of its rate rules (as
     * written: fractions unresolved) and each app's queue priority. */
    struct sl_share *apps;        /* owned, napps entries */
    size_t napps;
    char *priority_header;        /* "priority": "header:NAME", or NULL */
    int64_t priority_aging_us;    /* a held call goes up one level this often (0: never) */
    struct sl_auth_conf *auth;    /* "auth": the token broker, or NULL */
    char *preset;                 /* "preset": the provider preset applied, or NULL */
    /* What the preset added and what the user overrode, for --check
     * (sl_preset.h); NULL without a preset. */
    char *preset_report;
};

/* The queue priority of a call of app APP_ID on U (0 .. 9) when no header
 * gives one. */
int sl_upstream_priority(const struct sl_upstream_conf *u, uint16_t app_id);

/* Rule INDEX of U; INDEX == nrules is the pause rule. */
static inline const struct sl_rule *sl_upstream_rule(
    const struct sl_upstream_conf *u, size_t index)
{
    return index < u->nrules ? &u->rules[index] : &u->pause_rule;
}

#define SL_MARGIN_AUTO (-1)

/* Rate rule R's window as its configuration wrote it ("24h"), else as
 * sl_duration_format() writes it, into BUF (SL_DURATION_FORMAT_MAX). */
const char *sl_rule_window_text(const struct sl_rule *r, char *buf, size_t len);

/* Lines of a configuration's errors or warnings, each with its JSON path. */
struct sl_errors {
    char **lines;
    size_t count;
};

#define SL_CONFIG_SENTINELS_MAX 16   /* = SL_REDIS_URL_MAX_HOSTS */

struct sl_config {
    char *listen;                 /* "host:port" as written */
    char *listen_host;            /* NULL or "" = all addresses */
    int listen_port;
    char *store;                  /* as written: "memory", "redis://..." */
    enum sl_store_kind store_kind;
    char *redis_host;             /* SL_STORE_REDIS: host name or address */
    int redis_port;
    char *redis_user;             /* NULL: AUTH with the password only */
    char *redis_password;         /* NULL: no AUTH */
    int redis_db;
    bool redis_use_tls;           /* rediss:// */
    /* redis-sentinel:// (redis_master set): the Sentinels to ask for the
     * primary named redis_master (redis_host is NULL then), and their own
     * AUTH from store_sentinel (NULL: none) */
    char *redis_master;
    size_t redis_nsentinels;
    char *redis_sentinel_host[SL_CONFIG_SENTINELS_MAX];
    int redis_sentinel_port[SL_CONFIG_SENTINELS_MAX];
    char *sentinel_user, *sentinel_password;
    /* redis-cluster:// (redis_nseeds > 0): the nodes to read the slot
     * map from, in turn (redis_host and redis_port are the first) */
    size_t redis_nseeds;
    char *redis_seed_host[SL_CONFIG_SENTINELS_MAX];
    int redis_seed_port[SL_CONFIG_SENTINELS_MAX];
    /* store_tls, as written (owned; NULL: not given) */
    char *tls_ca_file;            /* NULL: the system's CAs */
    char *tls_cert_file, *tls_key_file;   /* mutual TLS, or NULL */
    char *tls_server_name;        /* NULL: the URL's host */
    bool tls_verify;
    /* rediss://: the TLS context built from the above when the file was
     * read (files checked then); owned, NULL for redis:// */
    struct sl_redis_tls *redis_tls;
    char *store_prefix;           /* key prefix, default "sluice:" */
    enum sl_on_store_error on_store_error;
    int64_t store_timeout_us;     /* one Redis round trip, at most */
    int64_t lease_ttl_us;         /* concurrency lease life without renewal */
    uint64_t memory_limit;        /* bytes of limit state, memory store */
    int workers;                  /* 0 = one per CPU */
    bool access_log;
    int64_t shutdown_timeout_us;  /* in-flight calls get this long at stop */
    int64_t client_timeout_us;    /* idle client connection timeout */
    unsigned max_connections;
    /* A client must send a request's whole header block within this long
     * after its request line (and the first request line within this long
     * after connecting); slow-header clients are disconnected. */
    int64_t header_timeout_us;
    int64_t max_retry_after_us;   /* bound on Retry-After sent; 0 = none */
    /* Per call: response bytes kept in a temporary file once the in-memory
     * buffer is full, so the upstream exchange ends (and its slots are
     * freed) while a slow client reads; 0 = never. */
    uint64_t response_spool;
    /* Redis store, on_store_error "local": the fraction of each limit this
     * instance may use on its own while Redis is away. */
    double local_share;
    /* "presets_dir" or SLUICE_PRESETS_DIR; NULL: the installed presets
     * (sl_preset.h) */
    char *presets_dir;
    struct sl_upstream_conf *upstreams;
    size_t nupstreams;
    enum sl_app_kind app_kind;    /* top level "app" */
    char *app_header;
    bool forward_app_header;
    unsigned max_apps;            /* distinct app names tracked */
    enum sl_log_format log_format;
    bool shadow;                  /* every rule in shadow mode */
    char *state_file;             /* memory store: windows kept here, or NULL */
    int64_t state_interval_us;    /* ... written this often (and at stop) */
    /* The admin listener (off when admin_listen is NULL). */
    char *admin_listen;
    char *admin_host;
    int admin_port;
    char *admin_token;            /* NULL: no token (loopback only) */
    /* Host names the admin listener answers to besides its own address
     * (lower case; "*": any Host), from admin.hosts. */
    char **admin_hosts;
    size_t nadmin_hosts;
    double warn_at, critical_at;  /* utilization bands */
    unsigned status_top;          /* busiest buckets shown per `per` rule */
    struct sl_alert_conf *alerts;
    size_t nalerts;
    /* Reload: configurations are reference counted.  Whoever keeps a
     * pointer into one (an upstream, a rule) past the current event-loop
     * pass holds a reference; the last one frees it.  GENERATION counts
     * loads, 1 at start; LOADED_MS is when it was installed (wall clock). */
    _Atomic long refs;
    /* What parses but is probably not what was meant (a rule that can
     * never match as written): --check prints these, start and reload log
     * them.  Owned. */
    struct sl_errors warnings;
    uint64_t generation;
    int64_t loaded_ms;
};

/* Take a reference to C (returns C). */
const struct sl_config *sl_config_ref(const struct sl_config *c);
/* Drop one; the last frees C.  NULL is ignored. */
void sl_config_unref(const struct sl_config *c);

/*
 * Settings a reload cannot change in a running process (listeners, worker
 * count, the store, ...): one line per difference between OLD and NEW
 * added to ERRS, "NAME: changed from A to B; needs a restart".  Returns
 * how many.
 */
size_t sl_config_restart_diff(const struct sl_config *old,
                              const struct sl_config *new_config,
                              struct sl_errors *errs);

/*
 * Changes a reload refuses because counts could not follow them: a rule
 * without a name is known by its position (rule-N), so a rule without a
 * name that moved, or a position that now holds another unnamed rule,
 * would carry one rule's counts into another.  One line per rule added to
 * ERRS; returns how many.
 */
size_t sl_config_reload_diff(const struct sl_config *old,
                             const struct sl_config *new_config,
                             struct sl_errors *errs);

/*
 * Give every app named in C's shares its app id in APPS (registering the
 * name in the configured pool: apps named in the configuration are never
 * lumped into "other", however many names calls made up).  Called once
 * on a new configuration, before it serves.  Returns 0, or -1 with *BAD
 * naming an app the configured pool (max_apps names since start) has no
 * room for: the configuration must not serve.
 */
struct sl_apps;
int sl_config_bind_apps(struct sl_config *c, struct sl_apps *apps, const char **bad);

/* The upstream of C named NAME, or NULL. */
const struct sl_upstream_conf *sl_config_upstream(const struct sl_config *c,
                                                  const char *name);
/* The same for a name of LEN bytes (not NUL-terminated); C may be NULL. */
const struct sl_upstream_conf *sl_config_upstream_n(const struct sl_config *c,
                                                    const char *name, size_t len);
/* The rule (not the pause) of U named NAME (LEN bytes), or NULL; U may be
 * NULL. */
const struct sl_rule *sl_upstream_rule_named(const struct sl_upstream_conf *u,
                                             const char *name, size_t len);
/* The rule of U named like R and of R's kind (U's pause rule for a pause
 * rule), or NULL. */
const struct sl_rule *sl_upstream_rule_like(const struct sl_upstream_conf *u,
                                            const struct sl_rule *r);

/* A list of human-readable error lines, each "path: sentence". */

void sl_errors_add(struct sl_errors *errs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sl_errors_free(struct sl_errors *errs);

/*
 * The configuration reference (Markdown: docs/configuration.md), printed
 * from the tables the parser reads by, to OUT.
 */
void sl_config_reference(FILE *out);
/* One line per environment variable that overrides a key, for --help. */
void sl_config_env_help(FILE *out);

/*
 * Load and validate the file at PATH.  Environment overrides
 * (sl_config_env_help) are applied when APPLY_ENV is true.
 * Returns 0 and sets *out (caller frees with sl_config_free), or -1 with
 * at least one line added to ERRS.
 */
int sl_config_load(const char *path, bool apply_env, struct sl_config **out,
                   struct sl_errors *errs);

/* The same from a string (NAME is used in syntax error messages). */
int sl_config_parse(const char *text, const char *name, bool apply_env,
                    struct sl_config **out, struct sl_errors *errs);

void sl_config_free(struct sl_config *config);

/*
 * Parse "redis[s]://[[user]:password@]host[:port][/db]" into C (redis_*
 * fields) with sl_redis_url_parse().  A Sentinel URL fills the
 * redis_master and redis_sentinel_* fields instead of redis_host and
 * redis_port; a Cluster URL fills redis_seed_* (and redis_host and
 * redis_port with the first seed).
 * Returns 0, or -1 with a sentence in *why that completes "store: " and
 * never quotes the URL.
 */
int sl_config_parse_redis_url(const char *url, struct sl_config *c,
                              const char **why);

/* Where the Redis store is, for people (no credentials): "HOST:PORT", or
 * "MASTER via Sentinel HOST:PORT,...", each followed by "/DB" (" db DB")
 * for a database other than 0.  Into BUF (CAP bytes). */
const char *sl_config_store_address(const struct sl_config *c, char *buf, size_t cap);

/* Split "host:port", "[v6]:port" or ":port".  Returns 0 or -1. */
int sl_config_split_listen(const char *text, char **host, int *port);

#endif
