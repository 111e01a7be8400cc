/*
 * sl_auth_store — the token broker's keys in Redis (see sl_auth_store.h).
 *
 * The token is stored as nonce (12 bytes) | tag (16) | ciphertext of
 * "INSTANCE\nTOKEN", AES-256-GCM with the key the broker derives from its
 * secrets, and the key name as additional data: a reader of Redis without
 * the secret cannot use the token, and a value moved to another key does
 * not decrypt.  Time is Redis's: the token's life is its key's TTL (PTTL
 * on read), never a timestamp from an instance's clock.
 *
 * A failed login is shared too: the lease holder writes the failure
 * (its status and cleaned reason, no secret) with a TTL of the fleet's
 * back-off, and the back-off itself (doubled at each failure, reset by a
 * login that works) in a key of its own, in one script under its lease.
 * Every instance that wants a token meanwhile reads the failure and
 * answers its calls with it until the TTL ends, so the fleet makes one
 * try per back-off, not one per instance.
 *
 * A token sealed under another key (token_key rotated, or another
 * secret) does not open: it is treated as absent, and the instance logs
 * in again under the lease; its token then replaces the other.
 *
 * Blocking clients (sl_redis_block: the store's own link, so TLS, the ACL
 * user and SELECT are the same, and ROLE is asked first) on the broker's
 * thread: a login is rare, and the thread blocks in the token endpoint
 * anyway.  A client that failed, or found a replica (READONLY), is dropped
 * and connected again at the next call (a Sentinel store asks the
 * Sentinels again).  On a Redis Cluster the keys carry the upstream's
 * name as their hash tag ("<prefix>auth:{<upstream>}:token"), so the
 * broker's scripts run on one primary: the seeds' slot map names it at
 * each connect, and a MOVED or ASK drops the client, so the next call
 * finds the slot's owner again.  The one long wait, for an announcement, polls the
 * subscribed link together with the broker's stop descriptor, so that
 * stopping never waits for it.
 */
#include "sl_auth_store.h"
#include "sl_redis_block.h"
#include "sl_redis_cluster.h"
#include "sl_redis_link.h"
#include "sl_redis_lua.h"
#include "sl_redis_sentinel.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define SL_AUTH_NONCE 12
#define SL_AUTH_TAG 16

struct sl_auth_store {
    const struct sl_config *config;   /* a reference: the Sentinels, if any */
    char *host, *user, *password;
    int port, db;
    int64_t timeout_ms;
    char *k_token, *k_lease, *k_fence, *k_fail, *k_backoff, *channel;
    unsigned char key[32];
    struct sl_redis_block *cmd;   /* commands */
    struct sl_redis_block *sub;   /* subscribed to the channel */
};

/* The scripts are limits/lua/auth_*.lua (sl_redis_lua.h). */
#define SL_SCRIPT(name) (sl_auth_lua[SL_AUTH_LUA_AUTH_##name])

static struct sl_redis_block *sl_connect(struct sl_auth_store *s)
{
    struct sl_redis_link_conf lc;
    struct sl_redis_block *c;
    redisReply *r;
    char why[512];

    /* A Sentinel store: ask the Sentinels each time (the primary may have
     * moved since). */
    if (s->config->redis_master != NULL) {
        free(s->host);
        s->host = NULL;
        if (sl_redis_sentinel_resolve(s->config, (int)s->timeout_ms, &s->host, &s->port, why,
                                      sizeof(why)) != 0)
            return NULL;
    }
    /* A Cluster: the primary that owns the keys' slot, from the map. */
    if (s->config->redis_nseeds > 0) {
        const struct sl_redis_link_conf seed = {
            .user = s->user,
            .password = s->password,
            .tls = s->config->redis_use_tls ? s->config->redis_tls : NULL,
            .timeout_ms = s->timeout_ms,
        };
        const struct sl_redis_cluster_conf cc = {
            .seed = &seed,
            .seed_host = (const char *const *)s->config->redis_seed_host,
            .seed_port = s->config->redis_seed_port,
            .nseeds = s->config->redis_nseeds,
        };
        free(s->host);
        s->host = NULL;
        if (sl_redis_cluster_resolve(&cc, s->k_token, &s->host, &s->port, why,
                                     sizeof(why)) != 0)
            return NULL;
    }
    /* The same link as the store's: TLS, the ACL user, SELECT. */
    lc = (struct sl_redis_link_conf){
        .host = s->host,
        .port = s->port,
        .user = s->user,
        .password = s->password,
        .db = s->db,
        .tls = s->config->redis_use_tls ? s->config->redis_tls : NULL,
        .timeout_ms = s->timeout_ms,
    };
    c = sl_redis_block_connect(&lc, why, sizeof(why));
    if (c == NULL)
        return NULL;
    /* Never a replica (a Sentinel's stale answer, a demoted primary); a
     * refused ROLE (an ACL without +role) tells nothing. */
    r = sl_redis_block_command(c, "ROLE");
    if (r == NULL || (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                      r->element[0]->type == REDIS_REPLY_STRING &&
                      strcmp(r->element[0]->str, "master") != 0)) {
        if (r != NULL)
            freeReplyObject(r);
        sl_redis_block_free(c);
        return NULL;
    }
    freeReplyObject(r);
    return c;
}

static struct sl_redis_block *sl_cmd(struct sl_auth_store *s)
{
    if (s->cmd == NULL)
        s->cmd = sl_connect(s);
    return s->cmd;
}

/* A reply, or NULL (the connection is dropped; the next call connects
 * again). */
static redisReply *sl_reply(struct sl_auth_store *s, redisReply *r)
{
    /* A replica (a demoted primary) takes no write: leave it, and find
     * the primary again on the next call. */
    if (r != NULL && r->type == REDIS_REPLY_ERROR &&
        (strstr(r->str, "READONLY") != NULL || strncmp(r->str, "MOVED ", 6) == 0 ||
         strncmp(r->str, "ASK ", 4) == 0)) {
        freeReplyObject(r);
        r = NULL;
        sl_redis_block_free(s->sub);
        s->sub = NULL;
    }
    if (r == NULL && s->cmd != NULL) {
        sl_redis_block_free(s->cmd);
        s->cmd = NULL;
    }
    return r;
}

struct sl_auth_store *sl_auth_store_new(const struct sl_config *c,
                                        const struct sl_upstream_conf *up,
                                        const unsigned char key[32])
{
    struct sl_auth_store *s = calloc(1, sizeof(*s));
    const char *p = c->store_prefix != NULL ? c->store_prefix : "sluice:";
    /* On a Cluster, one hash tag for all of them (one slot). */
    const char *o = c->redis_nseeds > 0 ? "{" : "", *e = c->redis_nseeds > 0 ? "}" : "";

    if (s == NULL)
        return NULL;
    s->config = sl_config_ref(c);
    s->host = c->redis_host != NULL ? strdup(c->redis_host) : NULL;
    s->user = c->redis_user != NULL ? strdup(c->redis_user) : NULL;
    s->password = c->redis_password != NULL ? strdup(c->redis_password) : NULL;
    s->port = c->redis_port;
    s->db = c->redis_db;
    s->timeout_ms = c->store_timeout_us / 1000 > 0 ? c->store_timeout_us / 1000 : 200;
    memcpy(s->key, key, 32);
    if ((s->host == NULL && c->redis_master == NULL) ||
        asprintf(&s->k_token, "%sauth:%s%s%s:token", p, o, up->name, e) < 0 ||
        asprintf(&s->k_lease, "%sauth:%s%s%s:lease", p, o, up->name, e) < 0 ||
        asprintf(&s->k_fence, "%sauth:%s%s%s:fence", p, o, up->name, e) < 0 ||
        asprintf(&s->k_fail, "%sauth:%s%s%s:failed", p, o, up->name, e) < 0 ||
        asprintf(&s->k_backoff, "%sauth:%s%s%s:backoff", p, o, up->name, e) < 0 ||
        asprintf(&s->channel, "%sauth:%s", p, up->name) < 0) {
        sl_auth_store_free(s);
        return NULL;
    }
    return s;
}

void sl_auth_store_free(struct sl_auth_store *s)
{
    if (s == NULL)
        return;
    sl_redis_block_free(s->cmd);
    sl_redis_block_free(s->sub);
    free(s->host);
    if (s->config != NULL)
        sl_config_unref(s->config);
    free(s->user);
    free(s->password);
    free(s->k_token);
    free(s->k_lease);
    free(s->k_fence);
    free(s->k_fail);
    free(s->k_backoff);
    free(s->channel);
    memset(s->key, 0, sizeof(s->key));
    free(s);
}

/* AES-256-GCM of PLAIN (N bytes) into an owned blob (*LEN).  NULL on failure. */
static unsigned char *sl_seal(struct sl_auth_store *s, const char *plain, size_t n,
                              size_t *len)
{
    unsigned char *out = malloc(SL_AUTH_NONCE + SL_AUTH_TAG + n + 16);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int k = 0, f = 0, ok = 0;

    if (out != NULL && x != NULL && RAND_bytes(out, SL_AUTH_NONCE) == 1 &&
        EVP_EncryptInit_ex(x, EVP_aes_256_gcm(), NULL, s->key, out) == 1 &&
        EVP_EncryptUpdate(x, NULL, &k, (unsigned char *)s->k_token,
                          (int)strlen(s->k_token)) == 1 &&
        EVP_EncryptUpdate(x, out + SL_AUTH_NONCE + SL_AUTH_TAG, &k,
                          (const unsigned char *)plain, (int)n) == 1 &&
        EVP_EncryptFinal_ex(x, out + SL_AUTH_NONCE + SL_AUTH_TAG + k, &f) == 1 &&
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, SL_AUTH_TAG,
                            out + SL_AUTH_NONCE) == 1)
        ok = 1;
    EVP_CIPHER_CTX_free(x);
    if (!ok) {
        free(out);
        return NULL;
    }
    *len = SL_AUTH_NONCE + SL_AUTH_TAG + (size_t)(k + f);
    return out;
}

/* The plain text of BLOB (owned, NUL-terminated), or NULL (not ours). */
static char *sl_open(struct sl_auth_store *s, const unsigned char *blob, size_t len)
{
    EVP_CIPHER_CTX *x;
    char *out;
    int k = 0, f = 0, ok = 0;

    if (len < SL_AUTH_NONCE + SL_AUTH_TAG)
        return NULL;
    out = malloc(len + 1);
    x = EVP_CIPHER_CTX_new();
    if (out != NULL && x != NULL &&
        EVP_DecryptInit_ex(x, EVP_aes_256_gcm(), NULL, s->key, blob) == 1 &&
        EVP_DecryptUpdate(x, NULL, &k, (unsigned char *)s->k_token,
                          (int)strlen(s->k_token)) == 1 &&
        EVP_DecryptUpdate(x, (unsigned char *)out, &k,
                          blob + SL_AUTH_NONCE + SL_AUTH_TAG,
                          (int)(len - SL_AUTH_NONCE - SL_AUTH_TAG)) == 1 &&
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, SL_AUTH_TAG,
                            (void *)(blob + SL_AUTH_NONCE)) == 1 &&
        EVP_DecryptFinal_ex(x, (unsigned char *)out + k, &f) == 1)
        ok = 1;
    EVP_CIPHER_CTX_free(x);
    if (!ok) {
        free(out);
        return NULL;
    }
    out[k + f] = '\0';
    return out;
}

int sl_auth_store_get(struct sl_auth_store *s, char **token, char **instance,
                      int64_t *ttl_ms, uint64_t *fence, bool *foreign)
{
    struct sl_redis_block *c = sl_cmd(s);
    redisReply *r;
    char *plain, *nl;
    int rc = 0;

    *token = *instance = NULL;
    *foreign = false;
    if (c == NULL)
        return -1;
    r = sl_reply(s, sl_redis_block_command(c, "EVAL %s 1 %s", SL_SCRIPT(GET), s->k_token));
    if (r == NULL)
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        rc = r->type == REDIS_REPLY_ERROR ? -1 : 0;
        freeReplyObject(r);
        return rc;
    }
    plain = sl_open(s, (unsigned char *)r->element[0]->str, r->element[0]->len);
    *ttl_ms = r->element[1]->type == REDIS_REPLY_INTEGER ? r->element[1]->integer : 0;
    freeReplyObject(r);
    /* Sealed under another key: as if absent (a login replaces it). */
    *foreign = plain == NULL;
    /* "FENCE\nINSTANCE\nTOKEN" */
    if (plain == NULL || (nl = strchr(plain, '\n')) == NULL ||
        strchr(nl + 1, '\n') == NULL) {
        free(plain);
        return 0;
    }
    *fence = strtoull(plain, NULL, 10);
    {
        char *inst = nl + 1, *nl2 = strchr(inst, '\n');
        *nl2 = '\0';
        *instance = inst[0] != '\0' ? strdup(inst) : NULL;
        *token = strdup(nl2 + 1);
    }
    memset(plain, 0, strlen(plain));
    free(plain);
    return *token != NULL && *ttl_ms > 0 ? 1 : 0;
}

int sl_auth_store_lease(struct sl_auth_store *s, int64_t ttl_ms, uint64_t *fence)
{
    struct sl_redis_block *c = sl_cmd(s);
    redisReply *r;
    int rc;

    if (c == NULL)
        return -1;
    r = sl_reply(s, sl_redis_block_command(c, "INCR %s", s->k_fence));
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        if (r != NULL)
            freeReplyObject(r);
        return -1;
    }
    *fence = (uint64_t)r->integer;
    freeReplyObject(r);
    r = sl_reply(s, sl_redis_block_command(c, "SET %s %llu NX PX %lld", s->k_lease,
                                 (unsigned long long)*fence, (long long)ttl_ms));
    if (r == NULL)
        return -1;
    rc = r->type == REDIS_REPLY_STATUS ? 1 : r->type == REDIS_REPLY_NIL ? 0 : -1;
    freeReplyObject(r);
    return rc;
}

int sl_auth_store_put(struct sl_auth_store *s, uint64_t fence, const char *token,
                      const char *instance, int64_t ttl_ms)
{
    struct sl_redis_block *c = sl_cmd(s);
    redisReply *r;
    char *plain, fs[24];
    unsigned char *blob;
    size_t len = 0;
    int rc;

    if (c == NULL)
        return -1;
    if (asprintf(&plain, "%llu\n%s\n%s", (unsigned long long)fence,
                 instance != NULL ? instance : "", token) < 0)
        return -1;
    blob = sl_seal(s, plain, strlen(plain), &len);
    memset(plain, 0, strlen(plain));
    free(plain);
    if (blob == NULL)
        return -1;
    snprintf(fs, sizeof(fs), "%llu", (unsigned long long)fence);
    r = sl_reply(s, sl_redis_block_command(c, "EVAL %s 4 %s %s %s %s %s %b %lld %s", SL_SCRIPT(PUT),
                                 s->k_token, s->k_lease, s->k_fail, s->k_backoff,
                                 fs, blob, len,
                                 (long long)(ttl_ms > 0 ? ttl_ms : 1), s->channel));
    free(blob);
    if (r == NULL)
        return -1;
    rc = r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
    freeReplyObject(r);
    return rc;
}

void sl_auth_store_drop(struct sl_auth_store *s, uint64_t fence)
{
    struct sl_redis_block *c = sl_cmd(s);
    redisReply *r;

    if (c == NULL)
        return;
    r = sl_reply(s, sl_redis_block_command(c, "EVAL %s 1 %s %llu %s", SL_SCRIPT(DROP), s->k_lease,
                                 (unsigned long long)fence, s->channel));
    if (r != NULL)
        freeReplyObject(r);
}

int sl_auth_store_listen(struct sl_auth_store *s)
{
    if (s->sub != NULL)
        return 0;
    s->sub = sl_connect(s);
    if (s->sub == NULL)
        return -1;
    if (sl_redis_block_subscribe(s->sub, s->channel) != 0) {
        sl_redis_block_free(s->sub);
        s->sub = NULL;
        return -1;
    }
    return 0;
}

int64_t sl_auth_store_fail(struct sl_auth_store *s, uint64_t fence, unsigned status,
                           const char *why, int64_t min_ms, int64_t max_ms)
{
    struct sl_redis_block *c = sl_cmd(s);
    redisReply *r;
    char *value;
    int64_t rc;

    if (c == NULL)
        return -1;
    if (asprintf(&value, "%u\n%s", status, why) < 0)
        return -1;
    r = sl_reply(s, sl_redis_block_command(c, "EVAL %s 3 %s %s %s %llu %s %s %lld %lld",
                                 SL_SCRIPT(FAIL), s->k_lease, s->k_fail, s->k_backoff,
                                 (unsigned long long)fence, value, s->channel,
                                 (long long)min_ms, (long long)max_ms));
    free(value);
    if (r == NULL)
        return -1;
    rc = r->type == REDIS_REPLY_INTEGER ? (int64_t)r->integer : -1;
    freeReplyObject(r);
    return rc;
}

int sl_auth_store_failure(struct sl_auth_store *s, int64_t *left_ms, unsigned *status,
                          char *why, size_t whylen)
{
    struct sl_redis_block *c = sl_cmd(s);
    redisReply *r;
    const char *v, *nl;
    int rc = 0;

    if (c == NULL)
        return -1;
    r = sl_reply(s, sl_redis_block_command(c, "EVAL %s 1 %s", SL_SCRIPT(GET), s->k_fail));
    if (r == NULL)
        return -1;
    if (r->type == REDIS_REPLY_ERROR)
        rc = -1;
    else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
             r->element[0]->type == REDIS_REPLY_STRING &&
             r->element[1]->type == REDIS_REPLY_INTEGER && r->element[1]->integer > 0 &&
             (nl = memchr(v = r->element[0]->str, '\n', r->element[0]->len)) != NULL) {
        *left_ms = r->element[1]->integer;
        *status = (unsigned)strtoul(v, NULL, 10);
        if (*status != 502 && *status != 503)
            *status = 502;
        snprintf(why, whylen, "%.*s", (int)(r->element[0]->len - (size_t)(nl + 1 - v)),
                 nl + 1);
        rc = 1;
    }
    freeReplyObject(r);
    return rc;
}

int sl_auth_store_wait(struct sl_auth_store *s, int64_t timeout_ms, int cancel_fd)
{
    int rc;

    if (sl_auth_store_listen(s) != 0)
        return -1;
    rc = sl_redis_block_wait_message(s->sub, timeout_ms, cancel_fd);
    if (rc < 0) {
        /* Subscribe afresh next time. */
        sl_redis_block_free(s->sub);
        s->sub = NULL;
    }
    return rc;
}
