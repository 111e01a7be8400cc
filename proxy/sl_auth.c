/*
 * sl_auth — the token broker (see sl_auth.h; the user's view is in
 * docs/guides/auth.md).
 *
 * One broker per upstream with "auth", per process (shared by the fleet
 * through Redis, below), created at start from
 * the configuration in force (a reload that changes an "auth" object is
 * refused as needing a restart, so a broker's settings never change under
 * it; it keeps a reference to the generation it was made from).
 *
 * A thread of its own.  The login is an HTTP exchange with the token
 * endpoint, made with a libcurl easy handle on the broker's own thread,
 * blocking.  Logins are rare (one per token lifetime, one per revocation),
 * so a thread that sleeps on a condition variable between them costs
 * nothing, and it keeps the workers' loops untouched: no worker ever waits
 * for the token endpoint, and a slow or dead endpoint holds no loop.  The
 * thread is the only writer of a login's outcome; workers read the token
 * under the broker's mutex (a copy, a few dozen bytes, per call of such an
 * upstream; upstreams without "auth" never reach this file).
 *
 * State, under `lock`:
 *   token, serial   the token in use and its number (1, 2, ...): a call
 *                   remembers the number it sent, so sixty calls refused
 *                   with the same revoked token cause one login, not sixty
 *                   (sl_auth_rejected drops only the token it names);
 *   want            a call waits for a token: log in as soon as the rule
 *                   allows;
 *   renew_ms        when to renew a valid token (refresh_before ahead of
 *                   its expiry, at most half its life ahead); calls keep
 *                   using it meanwhile, so a renewal holds no call;
 *   failed, why     the last login failed: calls that arrive before
 *                   retry_ms get its reason at once (502 or 503); after,
 *                   a call asks for a new try and waits for it;
 *   charge          the next login's room in the login rule (below);
 *   log             this instance's own logins in the rule's span, for
 *                   /status only.
 *
 * The login rule.  A login is a call of its rule, decided by the store
 * like any call: with the memory store in the process's count, with
 * Redis in the fleet's, where every instance's apps' own logins through
 * sluice are counted too.  A store is driven by a worker's loop (a Redis
 * store is one worker's connection), so the broker hands the steps to
 * worker 0 through `charge`, a mailbox under the lock: ASK (worker 0
 * asks its store; the answer comes back to the broker, a reservation
 * with ALLOW), then COMMIT when the login's connection is up, just
 * before it is sent (CURLOPT_PREREQFUNCTION, as for a forwarded call: the
 * store logs it on the clock it keeps, never before the provider can see
 * it), or RELEASE when no login was sent (another instance's token came,
 * or the endpoint could not be reached), which gives the room back.
 * Without room the broker sleeps until the store says there is; calls
 * wait meanwhile, up to max_wait.  A step worker 0 has not served within
 * SL_AUTH_CHARGE_WAIT_MS is abandoned (its answer, when it comes, is
 * released) and the login is not sent.
 *
 * Waiting calls.  A call of such an upstream asks for the token before it
 * asks the store (sl_auth_gate): with none, it is suspended and counted in
 * its worker's nauth_wait.  When a login ends the broker sets every
 * worker's auth_kick and wakes its loop; the loop's pump (sl_auth_pump)
 * walks its waiting calls, so nothing is polled and a worker with no
 * waiting call does nothing.  Deadlines (max_wait) are checked on the
 * loop's tick.
 *
 * The fleet.  With the Redis store the broker shares its login with
 * every instance (limits/sl_auth_store.c keeps the keys): before logging
 * in it reads the fleet's token, encrypted in Redis, and takes it when a
 * newer login made it (its fencing token is higher than the one of our
 * own token); otherwise it takes the login lease (a fencing token and a
 * TTL of the login timeout plus 5 s, so a crashed holder's lease
 * expires), or, held by another, waits for that holder's announcement on
 * the channel and looks again.  The holder stores its result only while
 * it still holds the lease with its fencing token.  So sixty calls on
 * three instances refused with one revoked token cause one login for the
 * fleet, and a renewal is made by the first instance whose time comes
 * (the others renew half a second later, and find it).  A failed login
 * is written under the lease with the fleet's back-off (1 s, doubling to
 * 60 s, reset by a login that works); every instance reads it before
 * trying and answers its calls with it until the back-off ends, so the
 * fleet tries once per back-off.  When Redis cannot answer, each
 * instance logs in by itself (logged once).
 *
 * Stopping.  The login runs on a multi handle whose poll also watches
 * stop_fd (an eventfd written by sl_auth_stop), and the wait for another
 * instance's announcement polls it too, so stopping never waits for a
 * slow token endpoint (up to auth.timeout) or a lease (timeout + 5 s).
 *
 * Secrets.  The client secret, password, refresh token, JWT key and the
 * token itself live only here, in the configuration and in the header
 * line built for a call; no message prints them, and a provider's error
 * text is cleaned of any secret before it is logged or shown.
 */
#include "sl_auth.h"

#include "sl_apps.h"
#include "sl_auth_store.h"
#include "sl_buf.h"
#include "sl_log.h"
#include "sl_request.h"
#include "sl_time.h"

#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* The longest token answer read. */
#define SL_AUTH_ANSWER_MAX (1024 * 1024)
/* After a failed login: the first wait before the next try, and the most. */
#define SL_AUTH_BACKOFF_MIN_MS 1000
#define SL_AUTH_BACKOFF_MAX_MS 60000
/* A JWT assertion's life (RFC 7523 asks for a short one). */
#define SL_AUTH_JWT_LIFE_S 180
/* Longest wait for worker 0 to serve a charge step (it answers within a
 * loop pass; a Redis decision within the store's timeout and fallback). */
#define SL_AUTH_CHARGE_WAIT_MS 3000

/* A login's charge in the login rule, asked of worker 0's store (see the
 * design note "The login rule"): who acts next. */
enum sl_charge_state {
    SL_CHARGE_IDLE,           /* nothing asked, nothing held */
    SL_CHARGE_ASK,            /* worker 0 is to ask its store */
    SL_CHARGE_ASKED,          /* ... asked it: the answer is awaited */
    SL_CHARGE_ANSWERED,       /* verdict (and, ALLOW, the reservation) here */
    SL_CHARGE_COMMIT,         /* the login is being sent: commit, release */
    SL_CHARGE_RELEASE,        /* no login was sent: give the room back */
    SL_CHARGE_ABANDONED,      /* the broker stopped waiting: release on answer */
};

struct sl_auth_charge {
    enum sl_charge_state state;
    enum sl_verdict verdict;          /* ANSWERED */
    int64_t wait_us;                  /* ANSWERED, DENY: until room */
    struct sl_lease *lease;           /* ANSWERED, ALLOW: the reservation */
    struct sl_store *store;           /* the store it was asked of */
    const struct sl_config *config;   /* referenced while a lease may exist */
    struct sl_check check;            /* the login as a call of the rule */
};

struct sl_auth {
    struct sl_proxy *proxy;
    const struct sl_config *config;   /* referenced: up and conf point into it */
    const struct sl_upstream_conf *up;
    const struct sl_auth_conf *conf;
    int nworkers;                     /* workers woken after a login */
    pthread_t thread;
    bool running;
    pthread_mutex_t lock;
    pthread_cond_t cond;              /* the thread waits on it (monotonic) */
    int stop_fd;                      /* eventfd, readable once stopping */
    /* Under lock. */
    bool stop;
    struct sl_auth_charge charge;     /* the next login's room in the rule */
    bool sent;                        /* the login under way was sent */
    char *token;                      /* secret; NULL: none valid */
    char *instance;                   /* "https://host[:port]" or NULL */
    char *refresh_token;              /* the refresh token in use (secret) */
    uint64_t serial;                  /* the token's number; 0: none yet */
    int64_t expires_ms, renew_ms;     /* monotonic */
    double valid_until;               /* wall clock, for /status */
    bool want;                        /* a call waits for a token */
    bool busy;                        /* a login is under way */
    bool failed;                      /* the last login failed */
    char why[SL_AUTH_WHY_MAX + 64];   /* ... why (no secret) */
    unsigned fail_status;             /* ... answered with this */
    int64_t retry_ms;                 /* no new try before (monotonic) */
    int64_t backoff_ms;
    int64_t limited_until_ms;         /* the rule has no room until then */
    int64_t *log;                     /* this instance's login times (monotonic
                                       * ms), oldest first, for /status */
    size_t nlog, caplog;
    uint64_t logins, failures;
    double last_login;                /* wall clock of the last login, or 0 */
    /* With Redis: the fleet's shared login (thread only), the fencing
     * token of the login our token came from, Redis unusable (logged). */
    struct sl_auth_store *fleet;
    uint64_t fleet_fence;
    bool fleet_down;
    bool fleet_foreign;               /* the fleet's token is sealed under
                                       * another key (logged once) */
    uint64_t adopted;                 /* tokens taken from the fleet */
};

/* What one login exchange gave. */
struct sl_login {
    char *token, *instance, *refresh_token;
    int64_t expires_in_ms;            /* -1: not said */
    unsigned status;                  /* on failure: 502 or 503 */
    bool cancelled;                   /* cut short: sluice is stopping */
    char why[SL_AUTH_WHY_MAX + 64];
};

static void *sl_auth_main(void *arg);
static void sl_secret_free(char *s);
static int sl_auth_settle(struct sl_auth *a, bool commit);

/* ---- the set of brokers (the proxy's) ---- */

int sl_auth_create(struct sl_proxy *p, const struct sl_config *c)
{
    size_t n = 0;

    for (size_t i = 0; i < c->nupstreams; i++)
        if (c->upstreams[i].auth != NULL)
            n++;
    if (n == 0)
        return 0;
    p->auth = calloc(n, sizeof(*p->auth));
    if (p->auth == NULL)
        return -1;
    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *up = &c->upstreams[i];
        struct sl_auth *a;
        pthread_condattr_t ca;

        if (up->auth == NULL)
            continue;
        a = calloc(1, sizeof(*a));
        if (a == NULL)
            return -1;
        a->proxy = p;
        a->config = sl_config_ref(c);
        a->up = up;
        a->conf = up->auth;
        a->want = true;               /* log in at start */
        a->backoff_ms = SL_AUTH_BACKOFF_MIN_MS;
        a->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (a->stop_fd < 0) {
            sl_config_unref(a->config);
            free(a);
            return -1;
        }
        pthread_mutex_init(&a->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&a->cond, &ca);
        pthread_condattr_destroy(&ca);
        if (up->auth->refresh_token != NULL)
            a->refresh_token = strdup(up->auth->refresh_token);
        if (c->store_kind == SL_STORE_REDIS && up->auth->has_token_key) {
            /* The key the fleet's token is sealed with, as configured. */
            a->fleet = sl_auth_store_new(c, up, up->auth->token_key);
        } else if (c->store_kind == SL_STORE_REDIS) {
            /* The key the fleet's token is sealed with: from the login's
             * own secret, so that only holders of it can read the token. */
            const struct sl_auth_conf *ac = up->auth;
            const char *secret = ac->client_secret != NULL ? ac->client_secret
                                 : ac->jwt_key != NULL ? ac->jwt_key
                                 : ac->password != NULL ? ac->password
                                 : ac->refresh_token;
            unsigned char key[32];
            char *material;

            if (asprintf(&material, "sluice auth token key\n%s\n%s", up->name,
                         secret != NULL ? secret : "") < 0)
                return -1;
            EVP_Digest(material, strlen(material), key, NULL, EVP_sha256(), NULL);
            sl_secret_free(material);
            a->fleet = sl_auth_store_new(c, up, key);
            memset(key, 0, sizeof(key));
        }
        p->auth[p->nauth++] = a;
    }
    return 0;
}

int sl_auth_start(struct sl_proxy *p, int nworkers)
{
    for (size_t i = 0; i < p->nauth; i++) {
        struct sl_auth *a = p->auth[i];
        a->nworkers = nworkers;
        if (pthread_create(&a->thread, NULL, sl_auth_main, a) != 0) {
            sl_error("upstream %s: cannot start the token broker's thread",
                     a->up->name);
            return -1;
        }
        a->running = true;
    }
    return 0;
}

static void sl_secret_free(char *s)
{
    if (s != NULL) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

void sl_auth_stop(struct sl_proxy *p)
{
    for (size_t i = 0; i < p->nauth; i++) {
        struct sl_auth *a = p->auth[i];
        if (!a->running)
            continue;
        pthread_mutex_lock(&a->lock);
        a->stop = true;
        pthread_cond_broadcast(&a->cond);
        pthread_mutex_unlock(&a->lock);
        /* Cuts a login exchange or a wait for the fleet short. */
        if (eventfd_write(a->stop_fd, 1) != 0)
            sl_warn("upstream %s: cannot wake the token broker", a->up->name);
        pthread_join(a->thread, NULL);
        a->running = false;
    }
}

void sl_auth_destroy(struct sl_proxy *p)
{
    sl_auth_stop(p);
    for (size_t i = 0; i < p->nauth; i++) {
        struct sl_auth *a = p->auth[i];
        sl_secret_free(a->token);
        sl_secret_free(a->refresh_token);
        free(a->instance);
        free(a->log);
        sl_auth_store_free(a->fleet);
        close(a->stop_fd);
        /* A step no worker served before they stopped (the memory store
         * outlives the brokers; a Redis store's leases went with it). */
        if (a->charge.lease != NULL && a->charge.store == p->memory)
            sl_store_release(p->memory, a->charge.lease);
        if (a->charge.config != NULL)
            sl_config_unref(a->charge.config);
        pthread_mutex_destroy(&a->lock);
        pthread_cond_destroy(&a->cond);
        sl_config_unref(a->config);
        free(a);
    }
    free(p->auth);
    p->auth = NULL;
    p->nauth = 0;
}

struct sl_auth *sl_auth_of(struct sl_proxy *p, const struct sl_upstream_conf *up)
{
    for (size_t i = 0; i < p->nauth; i++)
        if (strcmp(p->auth[i]->up->name, up->name) == 0)
            return p->auth[i];
    return NULL;
}

/* ---- what calls see ---- */

enum sl_auth_answer sl_auth_take(struct sl_auth *a, int worker, char **header,
                                 uint64_t *serial, char **base, char *why,
                                 size_t whylen, unsigned *status)
{
    enum sl_auth_answer ans;
    int64_t now = sl_time_mono_ms();

    (void)worker;
    pthread_mutex_lock(&a->lock);
    if (a->token != NULL && now >= a->expires_ms) {
        /* Expired before a renewal came: no call may use it. */
        sl_secret_free(a->token);
        a->token = NULL;
    }
    if (a->token != NULL) {
        *header = NULL;
        *base = NULL;
        if (asprintf(header, "Authorization: Bearer %s", a->token) < 0 ||
            (a->instance != NULL && (*base = strdup(a->instance)) == NULL)) {
            free(*header);
            *header = NULL;
            snprintf(why, whylen, "out of memory");
            *status = 503;
            ans = SL_AUTH_FAILED;
        } else {
            *serial = a->serial;
            ans = SL_AUTH_READY;
        }
    } else if (a->failed && !a->busy && now < a->retry_ms) {
        snprintf(why, whylen, "%s", a->why);
        *status = a->fail_status;
        ans = SL_AUTH_FAILED;
    } else {
        if (!a->want) {
            a->want = true;
            pthread_cond_signal(&a->cond);
        }
        if (a->limited_until_ms > now && a->conf->rule != NULL)
            snprintf(why, whylen, "the login rule \"%s\" allows the next login in "
                     "%lld s", a->conf->rule->name,
                     (long long)((a->limited_until_ms - now + 999) / 1000));
        else if (a->failed)
            snprintf(why, whylen, "logging in again after: %s", a->why);
        else
            snprintf(why, whylen, "logging in");
        *status = 503;
        ans = SL_AUTH_WAIT;
    }
    pthread_mutex_unlock(&a->lock);
    return ans;
}

void sl_auth_rejected(struct sl_auth *a, uint64_t serial)
{
    pthread_mutex_lock(&a->lock);
    if (a->token != NULL && a->serial == serial) {
        sl_secret_free(a->token);
        a->token = NULL;
        a->want = true;
        sl_info("upstream %s: the provider refused the token; logging in again",
                a->up->name);
        pthread_cond_signal(&a->cond);
    }
    pthread_mutex_unlock(&a->lock);
}

static json_t *sl_auth_time(double t)
{
    char iso[32];

    if (t <= 0)
        return json_null();
    sl_time_iso(t, iso, sizeof(iso));
    return json_string(iso);
}

/* Drop the login times that left the rule's span (lock held). */
static void sl_auth_prune(struct sl_auth *a, int64_t now)
{
    const struct sl_rule *r = a->conf->rule;
    size_t k = 0;

    if (r == NULL)
        return;
    while (k < a->nlog && now - a->log[k] >= r->span_us / 1000)
        k++;
    if (k == 0)
        return;
    memmove(a->log, a->log + k, (a->nlog - k) * sizeof(*a->log));
    a->nlog -= k;
}

json_t *sl_auth_status(struct sl_auth *a)
{
    static const char *const grants[] = {"client_credentials", "refresh_token",
                                         "password", "jwt_bearer"};
    json_t *o = json_object();
    int64_t now = sl_time_mono_ms();
    const char *state;

    pthread_mutex_lock(&a->lock);
    sl_auth_prune(a, now);
    state = a->token != NULL && now < a->expires_ms ? "valid"
            : a->busy ? "logging_in"
            : a->failed ? "failed"
            : "waiting";
    json_object_set_new(o, "state", json_string(state));
    json_object_set_new(o, "grant", json_string(grants[a->conf->grant]));
    json_object_set_new(o, "valid_until", a->token != NULL ? sl_auth_time(a->valid_until)
                                                           : json_null());
    json_object_set_new(o, "valid_until_unix", a->token != NULL
                        ? json_real(round(a->valid_until * 1000) / 1000) : json_null());
    json_object_set_new(o, "last_login", sl_auth_time(a->last_login));
    json_object_set_new(o, "last_login_unix", a->last_login > 0
                        ? json_real(round(a->last_login * 1000) / 1000) : json_null());
    json_object_set_new(o, "logins", json_integer((json_int_t)a->logins));
    json_object_set_new(o, "failures", json_integer((json_int_t)a->failures));
    if (a->conf->rule != NULL) {
        json_object_set_new(o, "rule", json_string(a->conf->rule->name));
        json_object_set_new(o, "logins_in_window", json_integer((json_int_t)a->nlog));
        json_object_set_new(o, "rule_limit", json_integer((json_int_t)a->conf->rule->limit));
    } else {
        json_object_set_new(o, "rule", json_null());
    }
    json_object_set_new(o, "instance_url", a->instance != NULL
                                               ? json_string(a->instance) : json_null());
    json_object_set_new(o, "last_error", a->failed ? json_string(a->why) : json_null());
    json_object_set_new(o, "shared", json_string(a->fleet == NULL ? "process"
                                                 : a->fleet_down ? "process (Redis down)"
                                                 : "redis"));
    json_object_set_new(o, "tokens_from_other_instances",
                        json_integer((json_int_t)a->adopted));
    pthread_mutex_unlock(&a->lock);
    return o;
}

/* ---- the login exchange (the broker's thread, no lock held) ---- */

/* Replace every copy of the secret S in TEXT by "[secret]" (in place). */
static void sl_scrub(char *text, size_t len, const char *s)
{
    size_t n;
    char *p;

    if (s == NULL || (n = strlen(s)) < 4)
        return;
    while ((p = strstr(text, s)) != NULL) {
        size_t rest = strlen(p + n);
        if (n >= 8) {
            memcpy(p, "[secret]", 8);
            memmove(p + 8, p + n, rest + 1);
        } else {
            memset(p, '*', n);
        }
    }
    text[len - 1] = '\0';
}

/* The provider's words for WHY: printable ASCII, at most MAX bytes. */
static void sl_clean_text(const char *in, char *out, size_t max)
{
    size_t o = 0;

    for (; *in != '\0' && o + 1 < max; in++)
        out[o++] = (*in >= 0x20 && *in < 0x7f) ? *in : ' ';
    out[o] = '\0';
}

static size_t sl_auth_write(char *data, size_t size, size_t n, void *ud)
{
    struct sl_buf *b = ud;

    return sl_buf_add(b, data, size * n) == 0 ? size * n : 0;
}

/* Base64url without padding, of N bytes of IN, into an owned string. */
static char *sl_b64url(const unsigned char *in, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    int len;

    if (out == NULL)
        return NULL;
    len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    return out;
}

/*
 * The RFC 7523 assertion: header.claims.signature, RS256 with the
 * configured key.  Returns an owned string, or NULL with WHY set.
 */
static char *sl_jwt(const struct sl_auth_conf *c, char *why, size_t whylen)
{
    json_t *claims;
    char *hj = NULL, *cj = NULL, *h64 = NULL, *c64 = NULL, *s64 = NULL;
    char *input = NULL, *jwt = NULL;
    unsigned char *sig = NULL;
    size_t siglen = 0;
    BIO *bio = NULL;
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *md = NULL;
    time_t now = time(NULL);

    claims = json_pack("{s:s,s:s,s:s,s:I,s:I}",
                       "iss", c->jwt_issuer != NULL ? c->jwt_issuer : c->client_id,
                       "sub", c->jwt_subject,
                       "aud", c->jwt_audience != NULL ? c->jwt_audience : c->token_url,
                       "iat", (json_int_t)now,
                       "exp", (json_int_t)now + SL_AUTH_JWT_LIFE_S);
    hj = strdup("{\"alg\":\"RS256\",\"typ\":\"JWT\"}");
    cj = claims != NULL ? json_dumps(claims, JSON_COMPACT) : NULL;
    json_decref(claims);
    if (hj == NULL || cj == NULL)
        goto oom;
    h64 = sl_b64url((unsigned char *)hj, strlen(hj));
    c64 = sl_b64url((unsigned char *)cj, strlen(cj));
    if (h64 == NULL || c64 == NULL || asprintf(&input, "%s.%s", h64, c64) < 0) {
        input = NULL;
        goto oom;
    }
    bio = BIO_new_mem_buf(c->jwt_key, -1);
    key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    if (key == NULL) {
        snprintf(why, whylen, "the JWT key in %s cannot be read as a PEM private "
                 "key (an encrypted key is not supported)", c->jwt_key_file);
        goto out;
    }
    md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, NULL, &siglen, (unsigned char *)input, strlen(input)) != 1 ||
        (sig = malloc(siglen)) == NULL ||
        EVP_DigestSign(md, sig, &siglen, (unsigned char *)input, strlen(input)) != 1) {
        snprintf(why, whylen, "the JWT could not be signed with the key in %s "
                 "(an RSA key is needed for RS256)", c->jwt_key_file);
        goto out;
    }
    s64 = sl_b64url(sig, siglen);
    if (s64 == NULL || asprintf(&jwt, "%s.%s", input, s64) < 0) {
        jwt = NULL;
        goto oom;
    }
    goto out;
oom:
    snprintf(why, whylen, "out of memory");
out:
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    BIO_free(bio);
    free(hj);
    free(cj);
    free(h64);
    free(c64);
    free(s64);
    free(input);
    free(sig);
    return jwt;
}

/* Append "&NAME=VALUE" (URL-encoded) to B when VALUE is set. */
static void sl_form_add(struct sl_buf *b, CURL *e, const char *name, const char *value)
{
    char *enc;

    if (value == NULL)
        return;
    enc = curl_easy_escape(e, value, 0);
    if (enc == NULL) {
        b->result = SL_BUF_NOMEM;
        return;
    }
    sl_buf_printf(b, "%s%s=%s", sl_buf_len(b) > 0 ? "&" : "", name, enc);
    memset(enc, 0, strlen(enc));
    curl_free(enc);
}

/* An instance URL's origin ("https://host[:port]"), owned, or NULL. */
static char *sl_instance_origin(const char *url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *user = NULL, *out = NULL;

    if (u == NULL)
        return NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_OK &&
        (strcmp(scheme, "https") == 0 || strcmp(scheme, "http") == 0)) {
        curl_url_get(u, CURLUPART_PORT, &port, 0);
        if (asprintf(&out, "%s://%s%s%s", scheme, host, port != NULL ? ":" : "",
                     port != NULL ? port : "") < 0)
            out = NULL;
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(user);
    curl_url_cleanup(u);
    return out;
}

/* Read the token answer in BODY (status HTTP) into L.  0 or -1 (L->why). */
static int sl_login_parse(struct sl_auth *a, long http, const struct sl_buf *body,
                          struct sl_login *l)
{
    json_t *root, *v;
    json_error_t jerr;
    char text[SL_AUTH_WHY_MAX];

    root = json_loadb(body->data != NULL ? body->data : "", body->len, 0, &jerr);
    if (http < 200 || http >= 300) {
        const char *err = NULL, *desc = NULL;
        if (json_is_object(root)) {
            err = json_string_value(json_object_get(root, "error"));
            desc = json_string_value(json_object_get(root, "error_description"));
        }
        snprintf(text, sizeof(text), "%s%s%s", err != NULL ? err : "",
                 err != NULL && desc != NULL ? ": " : "", desc != NULL ? desc : "");
        sl_clean_text(text, text, sizeof(text));
        snprintf(l->why, sizeof(l->why), "the token endpoint answered %ld%s%s", http,
                 text[0] ? ": " : "", text);
        l->status = 502;
        json_decref(root);
        return -1;
    }
    if (!json_is_object(root)) {
        snprintf(l->why, sizeof(l->why), "the token endpoint answered %ld with a "
                 "body that is not a JSON object", http);
        l->status = 502;
        json_decref(root);
        return -1;
    }
    v = json_object_get(root, "access_token");
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strpbrk(json_string_value(v), "\r\n") != NULL) {
        snprintf(l->why, sizeof(l->why), "the token endpoint's answer has no "
                 "usable access_token");
        l->status = 502;
        json_decref(root);
        return -1;
    }
    l->token = strdup(json_string_value(v));
    v = json_object_get(root, "expires_in");
    if (json_is_integer(v) && json_integer_value(v) > 0)
        l->expires_in_ms = (int64_t)json_integer_value(v) * 1000;
    else if (json_is_real(v) && json_real_value(v) > 0)
        l->expires_in_ms = (int64_t)(json_real_value(v) * 1000);
    else if (json_is_string(v) && atoll(json_string_value(v)) > 0)
        l->expires_in_ms = atoll(json_string_value(v)) * 1000;
    v = json_object_get(root, "instance_url");
    if (json_is_string(v)) {
        l->instance = sl_instance_origin(json_string_value(v));
        if (l->instance == NULL) {
            char itext[80];
            sl_clean_text(json_string_value(v), itext, sizeof(itext));
            snprintf(l->why, sizeof(l->why), "the token endpoint's instance_url "
                     "\"%s\" is not an http:// or https:// URL", itext);
            l->status = 502;
            json_decref(root);
            return -1;
        }
    }
    v = json_object_get(root, "refresh_token");
    if (a->conf->grant == SL_GRANT_REFRESH_TOKEN && json_is_string(v) &&
        json_string_length(v) > 0)
        l->refresh_token = strdup(json_string_value(v));
    json_decref(root);
    return l->token != NULL ? 0 : -1;
}

/* The login is about to be sent (its connection is up): its reservation
 * in the login rule is logged as sent now, on the provider's clock as the
 * store keeps it.  A login whose charge could not be committed is not
 * sent (it is counted all the same, on the safe side). */
static int sl_login_prereq(void *ud, char *primary_ip, char *local_ip,
                           int primary_port, int local_port)
{
    struct sl_auth *a = ud;
    int rc = 0;

    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    pthread_mutex_lock(&a->lock);
    if (a->sent)
        rc = -1;              /* libcurl would send it again: not counted */
    else if (a->charge.state == SL_CHARGE_ANSWERED)
        rc = sl_auth_settle(a, true);
    a->sent = rc == 0;
    pthread_mutex_unlock(&a->lock);
    return rc == 0 ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT;
}

/*
 * Run E to its end, or until sluice stops (A's stop_fd).  Returns libcurl's
 * result; *CANCELLED set when stopped.  A multi handle rather than
 * curl_easy_perform: its poll also watches stop_fd, so that stopping never
 * waits for a slow token endpoint (up to auth.timeout).
 */
static CURLcode sl_login_run(struct sl_auth *a, CURL *e, bool *cancelled)
{
    CURLM *m = curl_multi_init();
    CURLcode rc = CURLE_OUT_OF_MEMORY;
    int running = 1;

    *cancelled = false;
    if (m == NULL || curl_multi_add_handle(m, e) != CURLM_OK)
        goto out;
    while (running) {
        struct curl_waitfd stop = {.fd = a->stop_fd, .events = CURL_WAIT_POLLIN};
        CURLMsg *msg;
        int left;

        if (curl_multi_perform(m, &running) != CURLM_OK)
            break;
        while ((msg = curl_multi_info_read(m, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE)
                rc = msg->data.result;
        if (!running)
            break;
        if (curl_multi_poll(m, &stop, 1, 1000, NULL) != CURLM_OK)
            break;
        if (stop.revents != 0) {
            *cancelled = true;
            rc = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
    }
    curl_multi_remove_handle(m, e);
out:
    curl_multi_cleanup(m);
    return rc;
}

/* One login exchange with REFRESH (the refresh token in use, or NULL). */
static int sl_login(struct sl_auth *a, const char *refresh, struct sl_login *l)
{
    static const char *const grant_types[] = {
        "client_credentials", "refresh_token", "password",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    };
    const struct sl_auth_conf *c = a->conf;
    const struct sl_upstream_conf *up = a->up;
    struct sl_buf form, body;
    struct curl_slist *hdrs = NULL;
    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *e;
    CURLcode rc;
    long http = 0;
    int result = -1;

    l->expires_in_ms = -1;
    l->status = 503;
    sl_buf_init(&form, 64 * 1024);
    sl_buf_init(&body, SL_AUTH_ANSWER_MAX);
    e = curl_easy_init();
    if (e == NULL) {
        snprintf(l->why, sizeof(l->why), "out of memory");
        goto out;
    }
    sl_form_add(&form, e, "grant_type", grant_types[c->grant]);
    if (c->grant == SL_GRANT_JWT_BEARER) {
        char *jwt = sl_jwt(c, l->why, sizeof(l->why));
        if (jwt == NULL) {
            l->status = 503;
            goto out;
        }
        sl_form_add(&form, e, "assertion", jwt);
        free(jwt);
    }
    sl_form_add(&form, e, "client_id", c->client_id);
    sl_form_add(&form, e, "client_secret", c->client_secret);
    sl_form_add(&form, e, "scope", c->scope);
    sl_form_add(&form, e, "audience", c->audience);
    if (c->grant == SL_GRANT_REFRESH_TOKEN)
        sl_form_add(&form, e, "refresh_token", refresh);
    if (c->grant == SL_GRANT_PASSWORD) {
        sl_form_add(&form, e, "username", c->username);
        sl_form_add(&form, e, "password", c->password);
    }
    for (size_t i = 0; i < c->nparams; i++)
        sl_form_add(&form, e, c->params[i].name, c->params[i].value);
    if (sl_buf_result(&form) != 0 ||
        (hdrs = curl_slist_append(NULL, "Accept: application/json")) == NULL) {
        snprintf(l->why, sizeof(l->why), "out of memory");
        goto out;
    }
    curl_easy_setopt(e, CURLOPT_URL, c->token_url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, sl_buf_str(&form));
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)sl_buf_len(&form));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sl_auth_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(c->timeout_us / 1000));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(up->connect_timeout_us / 1000));
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, up->tls_verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, up->tls_verify ? 2L : 0L);
    if (up->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, up->ca_file);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, sl_login_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, a);
    rc = sl_login_run(a, e, &l->cancelled);
    if (l->cancelled) {
        snprintf(l->why, sizeof(l->why), "sluice is stopping");
        l->status = 503;
        goto out;
    }
    if (rc == CURLE_ABORTED_BY_CALLBACK) {
        snprintf(l->why, sizeof(l->why), "the login could not be counted in the "
                 "login rule in time; it was not sent");
        l->status = 503;
        goto out;
    }
    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && sl_buf_result(&body) != 0)) {
        char text[SL_AUTH_WHY_MAX];
        sl_clean_text(errbuf[0] ? errbuf : curl_easy_strerror(rc), text, sizeof(text));
        snprintf(l->why, sizeof(l->why), "%s: %s",
                 rc == CURLE_OPERATION_TIMEDOUT
                     ? "the token endpoint did not answer in time"
                     : "the token endpoint could not be reached", text);
        l->status = 503;
        goto out;
    }
    if (rc != CURLE_OK) {
        snprintf(l->why, sizeof(l->why), "the token endpoint's answer is larger "
                 "than 1 MiB");
        l->status = 502;
        goto out;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &http);
    result = sl_login_parse(a, http, &body, l);
out:
    /* The provider's words may quote what it was sent. */
    sl_scrub(l->why, sizeof(l->why), c->client_secret);
    sl_scrub(l->why, sizeof(l->why), c->password);
    sl_scrub(l->why, sizeof(l->why), refresh);
    if (form.data != NULL)
        memset(form.data, 0, form.len);
    if (body.data != NULL)
        memset(body.data, 0, body.len);
    sl_buf_free(&form);
    sl_buf_free(&body);
    curl_slist_free_all(hdrs);
    if (e != NULL)
        curl_easy_cleanup(e);
    return result;
}

/* ---- the broker's thread ---- */

/* Wake worker 0, which serves the brokers' charges (any thread). */
static void sl_auth_kick_charger(struct sl_auth *a)
{
    struct sl_worker *w = &a->proxy->workers[0];

    atomic_store(&w->auth_kick, true);
    sl_worker_wake(w);
}

/* Wait until the charge leaves state FROM, for at most
 * SL_AUTH_CHARGE_WAIT_MS or until stopping.  0 it left, -1 not.  Lock held. */
static int sl_auth_charge_wait(struct sl_auth *a, enum sl_charge_state from)
{
    int64_t until = sl_time_mono_ms() + SL_AUTH_CHARGE_WAIT_MS;

    while (a->charge.state == from && !a->stop && sl_time_mono_ms() < until) {
        struct timespec ts = {.tv_sec = (time_t)(until / 1000),
                              .tv_nsec = (long)(until % 1000) * 1000000L};
        pthread_cond_timedwait(&a->cond, &a->lock, &ts);
    }
    return a->charge.state == from ? -1 : 0;
}

/*
 * Room for a login in the login rule, asked of the store as a call of
 * that rule would be (worker 0 asks its own store: the memory store, or
 * Redis, where every instance's calls and logins of the rule are
 * counted).  0: room reserved (commit it as the login is sent,
 * sl_auth_settle); 1: no room for *WAIT_MS (or the store cannot say:
 * ask again then); -1: stopping.  Lock held (released while waiting).
 */
static int sl_auth_charge(struct sl_auth *a, int64_t *wait_ms)
{
    struct sl_auth_charge *ch = &a->charge;

    if (a->conf->rule == NULL)
        return 0;
    /* A step abandoned earlier is still to be served: wait for it. */
    while (ch->state != SL_CHARGE_IDLE && sl_auth_charge_wait(a, ch->state) == 0)
        ;
    if (ch->state != SL_CHARGE_IDLE) {
        *wait_ms = 1000;
        return a->stop ? -1 : 1;
    }
    ch->state = SL_CHARGE_ASK;
    sl_auth_kick_charger(a);
    while (sl_auth_charge_wait(a, SL_CHARGE_ASK) == 0 &&
           sl_auth_charge_wait(a, SL_CHARGE_ASKED) == 0 &&
           ch->state != SL_CHARGE_ANSWERED)
        ;
    if (ch->state != SL_CHARGE_ANSWERED) {
        /* Not asked yet: withdrawn.  Asked: released when answered. */
        ch->state = ch->state == SL_CHARGE_ASK ? SL_CHARGE_IDLE : SL_CHARGE_ABANDONED;
        *wait_ms = 1000;
        return a->stop ? -1 : 1;
    }
    if (ch->verdict == SL_VERDICT_ALLOW)
        return 0;
    ch->state = SL_CHARGE_IDLE;
    if (ch->verdict == SL_VERDICT_DENY) {
        *wait_ms = (ch->wait_us + 999) / 1000;
        if (*wait_ms < 1)
            *wait_ms = 1;
    } else {
        /* STALE (a reload in between): ask again soon; UNAVAILABLE (the
         * store refuses calls): as calls would be, later. */
        *wait_ms = ch->verdict == SL_VERDICT_STALE ? 50 : 1000;
    }
    return 1;
}

/*
 * The reservation the last sl_auth_charge made: COMMIT (the login is
 * being sent) or give back.  0 done (or nothing held), -1 worker 0 did
 * not serve it in time (it will).  Lock held (released while waiting).
 */
static int sl_auth_settle(struct sl_auth *a, bool commit)
{
    if (a->charge.state != SL_CHARGE_ANSWERED)
        return 0;
    a->charge.state = commit ? SL_CHARGE_COMMIT : SL_CHARGE_RELEASE;
    sl_auth_kick_charger(a);
    return sl_auth_charge_wait(a, a->charge.state);
}

/* Worker 0's store answered the charge (worker 0's thread). */
static void sl_auth_charged(void *arg, const struct sl_decision *d, struct sl_lease *lease)
{
    struct sl_auth *a = arg;
    struct sl_auth_charge *ch = &a->charge;
    struct sl_store *store = ch->store;
    const struct sl_config *unref = NULL;

    pthread_mutex_lock(&a->lock);
    if (ch->state == SL_CHARGE_ASKED) {
        ch->verdict = d->verdict;
        ch->wait_us = d->wait_us;
        ch->state = SL_CHARGE_ANSWERED;
        if (d->verdict == SL_VERDICT_ALLOW) {
            ch->lease = lease;
            lease = NULL;
        } else {
            unref = ch->config;
            ch->config = NULL;
        }
        pthread_cond_broadcast(&a->cond);
    } else {
        /* The broker stopped waiting: nothing is sent on this answer. */
        ch->state = SL_CHARGE_IDLE;
        unref = ch->config;
        ch->config = NULL;
    }
    pthread_mutex_unlock(&a->lock);
    sl_store_release(store, lease);
    if (unref != NULL)
        sl_config_unref(unref);
}

/* Serve A's charge step, if any (worker W's thread). */
static void sl_auth_serve_one(struct sl_worker *w, struct sl_auth *a)
{
    struct sl_auth_charge *ch = &a->charge;
    const struct sl_upstream_conf *up;
    const struct sl_rule *r;
    struct sl_lease *lease;
    const struct sl_config *unref;
    bool commit;

    pthread_mutex_lock(&a->lock);
    switch (ch->state) {
    case SL_CHARGE_ASK:
        /* The rule as the worker's configuration has it (a reload may
         * have changed its limit; the store answers STALE to an older one). */
        up = sl_config_upstream(w->config, a->up->name);
        r = up != NULL ? sl_upstream_rule_named(up, a->conf->rule_name,
                                                strlen(a->conf->rule_name)) : NULL;
        if (r == NULL || r->kind != SL_RULE_RATE) {
            /* A reload removed the rule: the login is not held back. */
            ch->verdict = SL_VERDICT_ALLOW;
            ch->lease = NULL;
            ch->state = SL_CHARGE_ANSWERED;
            pthread_cond_broadcast(&a->cond);
            pthread_mutex_unlock(&a->lock);
            return;
        }
        memset(&ch->check, 0, sizeof(ch->check));
        ch->check.upstream = up;
        ch->check.app = SL_APP_NONE;
        ch->check.app_name = "-";
        ch->check.nhits = 1;
        ch->check.hits[0].rule = r;
        ch->check.hits[0].key = "";
        ch->check.hits[0].key_len = 0;
        ch->check.hits[0].cost = 1;
        ch->store = w->store;
        ch->config = sl_config_ref(w->config);
        ch->state = SL_CHARGE_ASKED;
        pthread_mutex_unlock(&a->lock);
        if (sl_store_decide(w->store, &ch->check, sl_auth_charged, a) != 0) {
            struct sl_decision d = {.verdict = SL_VERDICT_UNAVAILABLE};
            sl_auth_charged(a, &d, NULL);
        }
        return;
    case SL_CHARGE_COMMIT:
    case SL_CHARGE_RELEASE:
        commit = ch->state == SL_CHARGE_COMMIT;
        lease = ch->lease;
        unref = ch->config;
        ch->lease = NULL;
        ch->config = NULL;
        pthread_mutex_unlock(&a->lock);
        if (commit)
            sl_store_commit(ch->store, lease);
        sl_store_release(ch->store, lease);
        if (unref != NULL)
            sl_config_unref(unref);
        pthread_mutex_lock(&a->lock);
        ch->state = SL_CHARGE_IDLE;
        pthread_cond_broadcast(&a->cond);
        pthread_mutex_unlock(&a->lock);
        return;
    default:
        pthread_mutex_unlock(&a->lock);
        return;
    }
}

/* Tell every worker a login ended (its waiting calls go on). */
static void sl_auth_wake_workers(struct sl_auth *a)
{
    for (int i = 0; i < a->nworkers; i++) {
        struct sl_worker *w = &a->proxy->workers[i];
        atomic_store(&w->auth_kick, true);
        sl_worker_wake(w);
    }
}

/* Apply login L's outcome (lock held). */
static void sl_auth_apply(struct sl_auth *a, int rc, struct sl_login *l, bool renewal)
{
    int64_t now = sl_time_mono_ms();

    a->busy = false;
    if (rc == 0) {
        int64_t life = l->expires_in_ms > 0 ? l->expires_in_ms
                                             : a->conf->lifetime_us / 1000;
        int64_t ahead = a->conf->refresh_before_us / 1000;
        bool was_failed = a->failed;

        if (ahead > life / 2)
            ahead = life / 2;
        sl_secret_free(a->token);
        a->token = l->token;
        l->token = NULL;
        free(a->instance);
        a->instance = l->instance;
        l->instance = NULL;
        if (l->refresh_token != NULL) {
            sl_secret_free(a->refresh_token);
            a->refresh_token = l->refresh_token;
            l->refresh_token = NULL;
        }
        a->serial++;
        a->expires_ms = now + life;
        a->renew_ms = now + life - ahead;
        a->valid_until = sl_time_wall() + (double)life / 1000.0;
        a->want = false;
        a->failed = false;
        a->backoff_ms = SL_AUTH_BACKOFF_MIN_MS;
        sl_info("upstream %s: %s at the token endpoint (token %llu, valid for %lld s)%s",
                a->up->name, renewal ? "renewed the login" : "logged in",
                (unsigned long long)a->serial, (long long)(life / 1000),
                was_failed ? "; logins work again" : "");
        return;
    }
    a->failures++;
    if (!a->failed || strcmp(a->why, l->why) != 0)
        sl_warn("upstream %s: login failed: %s (calls of this upstream get %u "
                "until a login works; next try in %lld s at the earliest)",
                a->up->name, l->why, l->status, (long long)(a->backoff_ms / 1000));
    a->failed = true;
    snprintf(a->why, sizeof(a->why), "%s", l->why);
    a->fail_status = l->status;
    a->retry_ms = now + a->backoff_ms;
    a->want = false;
    if (renewal && a->token != NULL) {
        /* The token still serves: renew again after the back-off. */
        a->renew_ms = a->retry_ms < a->expires_ms ? a->retry_ms : a->expires_ms;
    }
    a->backoff_ms = a->backoff_ms * 2 > SL_AUTH_BACKOFF_MAX_MS ? SL_AUTH_BACKOFF_MAX_MS
                                                              : a->backoff_ms * 2;
}

/* Wait on the condition until monotonic time UNTIL_MS (-1: a signal). */
static void sl_auth_sleep(struct sl_auth *a, int64_t until_ms)
{
    struct timespec ts;

    if (until_ms < 0) {
        pthread_cond_wait(&a->cond, &a->lock);
        return;
    }
    ts.tv_sec = (time_t)(until_ms / 1000);
    ts.tv_nsec = (long)(until_ms % 1000) * 1000000L;
    pthread_cond_timedwait(&a->cond, &a->lock, &ts);
}

/* Take the fleet's TOKEN (owned; INSTANCE owned, may be NULL), made by
 * login FENCE, with TTL_MS left.  Lock held; released to wake workers. */
static void sl_auth_adopt(struct sl_auth *a, char *token, char *instance,
                          int64_t ttl, uint64_t fence)
{
    int64_t now = sl_time_mono_ms();
    int64_t ahead = a->conf->refresh_before_us / 1000;

    if (ahead > ttl / 2)
        ahead = ttl / 2;
    sl_secret_free(a->token);
    a->token = token;
    free(a->instance);
    a->instance = instance;
    a->serial++;
    a->fleet_fence = fence;
    a->expires_ms = now + ttl;
    /* Spread the fleet's renewals: the holder renews first. */
    a->renew_ms = now + ttl - ahead + 500;
    a->valid_until = sl_time_wall() + (double)ttl / 1000.0;
    a->want = false;
    a->failed = false;
    a->adopted++;
    sl_info("upstream %s: using the token another instance logged in for "
            "(valid for %lld s)", a->up->name, (long long)(ttl / 1000));
    pthread_mutex_unlock(&a->lock);
    sl_auth_wake_workers(a);
    pthread_mutex_lock(&a->lock);
}

/* The fleet's token if a newer login than ours made it: 1 taken, 0 not,
 * -1 Redis error.  Lock held (released around Redis). */
static int sl_auth_take_newer(struct sl_auth *a)
{
    char *token = NULL, *instance = NULL;
    int64_t ttl = 0;
    uint64_t their = 0;
    bool foreign = false;
    int rc;

    pthread_mutex_unlock(&a->lock);
    rc = sl_auth_store_get(a->fleet, &token, &instance, &ttl, &their, &foreign);
    pthread_mutex_lock(&a->lock);
    if (foreign && !a->fleet_foreign)
        sl_warn("upstream %s: the fleet's token in Redis is sealed under another "
                "key (token_key or the login's secret differs between instances); "
                "this instance logs in again under the lease", a->up->name);
    a->fleet_foreign = foreign;
    if (rc == 1 && their > a->fleet_fence && ttl > 1000) {
        sl_auth_adopt(a, token, instance, ttl, their);
        return 1;
    }
    sl_secret_free(token);
    free(instance);
    return rc < 0 ? -1 : 0;
}

/* Another instance's login failed and its back-off is in force: calls get
 * its reason until it ends, and no login is tried meanwhile.  1 taken, 0
 * none, -1 Redis error.  Lock held (released around Redis and to wake
 * the workers). */
static int sl_auth_take_failure(struct sl_auth *a)
{
    char why[SL_AUTH_WHY_MAX + 64];
    int64_t left = 0;
    unsigned status = 502;
    int rc;

    pthread_mutex_unlock(&a->lock);
    rc = sl_auth_store_failure(a->fleet, &left, &status, why, sizeof(why));
    pthread_mutex_lock(&a->lock);
    if (rc != 1)
        return rc;
    if (!a->failed || strcmp(a->why, why) != 0)
        sl_warn("upstream %s: the fleet's last login failed: %s (calls of this "
                "upstream get %u; the fleet tries again in %lld ms)", a->up->name,
                why, status, (long long)left);
    a->failed = true;
    snprintf(a->why, sizeof(a->why), "%s", why);
    a->fail_status = status;
    a->retry_ms = sl_time_mono_ms() + left;
    a->want = false;
    if (a->token != NULL)
        a->renew_ms = a->retry_ms < a->expires_ms ? a->retry_ms : a->expires_ms;
    pthread_mutex_unlock(&a->lock);
    sl_auth_wake_workers(a);
    pthread_mutex_lock(&a->lock);
    return 1;
}

/* Redis cannot share the login: this instance logs in by itself (logged
 * once).  Lock held. */
static void sl_auth_fleet_down(struct sl_auth *a)
{
    if (!a->fleet_down)
        sl_warn("upstream %s: Redis cannot share the login; this instance logs "
                "in by itself until it can", a->up->name);
    a->fleet_down = true;
}

/*
 * With Redis, before asking for room: the fleet's token if newer than
 * ours, or the fleet's failure in force.  1: taken, look again; 0: go on.
 * Lock held (released around Redis).
 */
static int sl_auth_fleet_look(struct sl_auth *a)
{
    int rc;

    if (a->fleet == NULL)
        return 0;
    rc = sl_auth_take_newer(a);
    if (rc == 0)
        rc = sl_auth_take_failure(a);
    if (rc < 0) {
        sl_auth_fleet_down(a);
        return 0;
    }
    a->fleet_down = false;
    return rc;
}

/*
 * With Redis, with room for a login: take the login lease.  0: log in now
 * (*FENCE: the lease, 0 without Redis); 1: another holder's token or
 * failure came meanwhile, look again; 2: another instance holds the
 * lease, wait for its announcement (sl_auth_await).  Lock held (released
 * around Redis).
 */
static int sl_auth_fleet(struct sl_auth *a, uint64_t *fence)
{
    int64_t lease_ms = a->conf->timeout_us / 1000 + 5000;
    int rc, lr;

    *fence = 0;
    if (a->fleet == NULL)
        return 0;
    pthread_mutex_unlock(&a->lock);
    lr = sl_auth_store_listen(a->fleet) == 0
             ? sl_auth_store_lease(a->fleet, lease_ms, fence) : -1;
    pthread_mutex_lock(&a->lock);
    if (lr < 0)
        goto down;
    a->fleet_down = false;
    if (lr == 0)
        return 2;
    /* The previous holder may have stored its token (or its failure)
     * between our look and our lease: look again, now that no one else
     * can log in. */
    rc = sl_auth_take_newer(a);
    if (rc == 0)
        rc = sl_auth_take_failure(a);
    if (rc != 0) {
        uint64_t f = *fence;
        pthread_mutex_unlock(&a->lock);
        sl_auth_store_drop(a->fleet, f);
        pthread_mutex_lock(&a->lock);
        *fence = 0;
        if (rc < 0)
            goto down;
        return 1;
    }
    return 0;
down:
    sl_auth_fleet_down(a);
    *fence = 0;
    return 0;
}

/* Wait for the lease holder's announcement (at most its lease), or until
 * sluice stops.  Lock held (released while waiting). */
static void sl_auth_await(struct sl_auth *a)
{
    int64_t lease_ms = a->conf->timeout_us / 1000 + 5000;

    pthread_mutex_unlock(&a->lock);
    sl_auth_store_wait(a->fleet, lease_ms, a->stop_fd);
    pthread_mutex_lock(&a->lock);
}

/* Note a login made now in this instance's log (for /status).  Lock held. */
static void sl_auth_note_login(struct sl_auth *a, int64_t now)
{
    if (a->conf->rule == NULL)
        return;
    sl_auth_prune(a, now);
    if (a->nlog == a->caplog) {
        size_t cap = a->caplog ? a->caplog * 2 : 8;
        int64_t *g = realloc(a->log, cap * sizeof(*g));
        if (g == NULL)
            return;
        a->log = g;
        a->caplog = cap;
    }
    a->log[a->nlog++] = now;
}

static void *sl_auth_main(void *arg)
{
    struct sl_auth *a = arg;

    pthread_mutex_lock(&a->lock);
    while (!a->stop) {
        int64_t now = sl_time_mono_ms(), wake = -1, wait_ms = 0;
        bool renewal = a->token != NULL && now < a->expires_ms;
        bool due;
        struct sl_login l;
        uint64_t fence = 0;
        char *refresh;
        int rc;

        if (renewal)
            due = now >= a->renew_ms;
        else
            due = a->want && (!a->failed || now >= a->retry_ms);
        if (!due) {
            if (renewal)
                wake = a->renew_ms;
            else if (a->want)
                wake = a->retry_ms;
            sl_auth_sleep(a, wake);
            continue;
        }
        /* The fleet's newer token, or its failure's back-off. */
        if (sl_auth_fleet_look(a) != 0)
            continue;
        /* Room in the login rule, whoever asks, counted where the apps'
         * own logins through sluice are (the store: the fleet's count
         * with Redis). */
        rc = sl_auth_charge(a, &wait_ms);
        if (rc < 0)
            break;
        if (rc > 0) {
            if (a->limited_until_ms <= now)
                sl_warn("upstream %s: the login rule \"%s\" has no room in the "
                        "store; the next login in %lld ms", a->up->name,
                        a->conf->rule_name, (long long)wait_ms);
            a->limited_until_ms = now + wait_ms;
            sl_auth_sleep(a, now + wait_ms);
            continue;
        }
        a->limited_until_ms = 0;
        rc = sl_auth_fleet(a, &fence);
        if (rc != 0) {
            /* Another instance's token, or its login to wait for: this one
             * makes no login, and gives its room back first. */
            sl_auth_settle(a, false);
            if (rc == 2)
                sl_auth_await(a);
            continue;
        }
        a->busy = true;
        a->sent = false;
        refresh = a->refresh_token != NULL ? strdup(a->refresh_token) : NULL;
        pthread_mutex_unlock(&a->lock);

        memset(&l, 0, sizeof(l));
        rc = sl_login(a, refresh, &l);
        sl_secret_free(refresh);

        pthread_mutex_lock(&a->lock);
        /* Not sent (never connected, or stopped): the room goes back. */
        sl_auth_settle(a, false);
        pthread_mutex_unlock(&a->lock);
        if (fence != 0 && l.cancelled) {
            /* Stopping: no token and no failure for the fleet. */
            sl_auth_store_drop(a->fleet, fence);
        } else if (fence != 0 && rc == 0) {
            /* The fleet's result: stored under our lease and announced. */
            int64_t life = l.expires_in_ms > 0 ? l.expires_in_ms
                                                : a->conf->lifetime_us / 1000;
            if (sl_auth_store_put(a->fleet, fence, l.token, l.instance, life) != 1)
                sl_auth_store_drop(a->fleet, fence);
        } else if (fence != 0) {
            /* The fleet's failure: one try per back-off for every instance. */
            int64_t b = sl_auth_store_fail(a->fleet, fence, l.status, l.why,
                                           SL_AUTH_BACKOFF_MIN_MS,
                                           SL_AUTH_BACKOFF_MAX_MS);
            pthread_mutex_lock(&a->lock);
            if (b > 0)
                a->backoff_ms = b;
            pthread_mutex_unlock(&a->lock);
        }
        pthread_mutex_lock(&a->lock);
        if (l.cancelled) {
            a->busy = false;
            sl_secret_free(l.token);
            sl_secret_free(l.refresh_token);
            free(l.instance);
            break;
        }
        a->logins++;
        a->last_login = sl_time_wall();
        sl_auth_note_login(a, sl_time_mono_ms());
        if (fence != 0 && rc == 0)
            a->fleet_fence = fence;
        sl_auth_apply(a, rc, &l, renewal);
        sl_secret_free(l.token);
        sl_secret_free(l.refresh_token);
        free(l.instance);
        pthread_mutex_unlock(&a->lock);
        sl_auth_wake_workers(a);
        pthread_mutex_lock(&a->lock);
    }
    /* A reservation still held gives its room back. */
    if (a->charge.state == SL_CHARGE_ANSWERED)
        sl_auth_settle(a, false);
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

/* ---- waiting calls (a worker's thread) ---- */

/* REQ waits no more (it was counted in its worker's nauth_wait). */
static void sl_auth_unwait(struct sl_request *req)
{
    if (!req->auth_wait)
        return;
    req->auth_wait = false;
    SL_ASSERT(req->w->nauth_wait > 0);
    req->w->nauth_wait--;
}

/* Answer REQ with the login's failure WHY (STATUS: 502 or 503). */
static void sl_auth_fail(struct sl_request *req, unsigned status, const char *error,
                         const char *what, const char *why)
{
    char msg[SL_AUTH_WHY_MAX + 256];

    snprintf(msg, sizeof(msg), "%s upstream %s: %s", what, req->up->name, why);
    sl_req_error(req, status, error, msg, status == 503 ? 1 : 0, "login_failed");
}

int sl_auth_gate(struct sl_request *req)
{
    struct sl_auth *a = sl_auth_of(req->w->proxy, req->up);
    char why[SL_AUTH_WHY_MAX + 64];
    unsigned status = 503;

    if (a == NULL) {
        sl_req_error(req, 503, "login_unavailable",
                     "this upstream's auth was added by a reload; it starts with "
                     "the next restart", 1, "login_failed");
        return -1;
    }
    free(req->auth_header);
    free(req->auth_base);
    req->auth_header = req->auth_base = NULL;
    switch (sl_auth_take(a, req->w->id, &req->auth_header, &req->auth_serial,
                         &req->auth_base, why, sizeof(why), &status)) {
    case SL_AUTH_READY:
        return 0;
    case SL_AUTH_FAILED:
        sl_auth_fail(req, status, "login_failed", "sluice could not log in to", why);
        return -1;
    case SL_AUTH_WAIT:
        break;
    }
    req->auth_wait = true;
    req->auth_deadline_ms = sl_time_mono_ms() + req->up->max_wait_us / 1000;
    req->w->nauth_wait++;
    sl_req_suspend(req, SL_SUSP_DECIDE);
    return 1;
}

void sl_auth_pump(struct sl_worker *w, int64_t now_ms)
{
    struct sl_request *req, *next;

    /* Worker 0 serves the brokers' charges in their login rules. */
    if (w->id == 0)
        for (size_t i = 0; i < w->proxy->nauth; i++)
            sl_auth_serve_one(w, w->proxy->auth[i]);

    for (req = w->requests; req != NULL && w->nauth_wait > 0; req = next) {
        struct sl_auth *a;
        char why[SL_AUTH_WHY_MAX + 64];
        unsigned status = 503;

        next = req->next;
        if (!req->auth_wait)
            continue;
        if (req->client_gone) {
            sl_auth_unwait(req);
            continue;
        }
        a = sl_auth_of(w->proxy, req->up);
        if (a == NULL) {
            /* Only a broker made at start serves (a reload cannot add one). */
            sl_auth_unwait(req);
            sl_req_error(req, 503, "login_unavailable",
                         "this upstream's auth starts with the next restart", 1,
                         "login_failed");
            sl_req_resume(req);
            continue;
        }
        free(req->auth_header);
        free(req->auth_base);
        req->auth_header = req->auth_base = NULL;
        switch (sl_auth_take(a, w->id, &req->auth_header, &req->auth_serial,
                             &req->auth_base, why, sizeof(why), &status)) {
        case SL_AUTH_READY:
            sl_auth_unwait(req);
            sl_req_ask_again(req);
            break;
        case SL_AUTH_FAILED:
            sl_auth_unwait(req);
            sl_auth_fail(req, status, "login_failed", "sluice could not log in to", why);
            sl_req_resume(req);
            break;
        case SL_AUTH_WAIT:
            if (now_ms < req->auth_deadline_ms && !w->stop)
                break;
            sl_auth_unwait(req);
            if (w->stop)
                sl_req_error(req, 503, "shutting_down",
                             "sluice is shutting down; retry the call", 1, "shutdown");
            else
                sl_auth_fail(req, 503, "login_pending",
                             "no token within max_wait for", why);
            sl_req_resume(req);
            break;
        }
    }
}

/* Called when REQ is freed (sl_request.c). */
void sl_auth_forget(struct sl_request *req)
{
    sl_auth_unwait(req);
    free(req->auth_header);
    free(req->auth_base);
    req->auth_header = req->auth_base = NULL;
}
