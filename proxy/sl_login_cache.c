/*
 * sl_login_cache — token answers kept for identical logins.
 *
 * Apps that log in themselves spend the provider's login budget (the lead
 * platform's 100 logins per 5 minutes for the account) and, where the
 * provider keeps a few sessions per user (the CRM's five), log each other
 * out.  A rate rule with "login_cache" on the token endpoint answers a
 * login identical to one already answered with that answer, while its
 * token is valid: one login per set of credentials and process.
 *
 * What is kept: per login, the HMAC-SHA256 of what makes it that login
 * (upstream, its URL, rule, method, request target, body, Authorization
 * and Content-Type; see sl_req_login_key in sl_request.c) under a key drawn
 * from the kernel at start and never written anywhere, and the provider's
 * answer (status, Content-Type, body).  Nothing of the request is kept in
 * clear, and the digest cannot be checked against a guessed secret without
 * the key.  The answer holds the token, in this process's memory only, as
 * the provider sent it to the app that logged in first.
 *
 * The table: an array of entries, scanned under one mutex.  Logins are
 * rare (a few per hour per app), so a scan of at most the configured
 * entries (1000 by default per rule) costs less than the call it saves and
 * nothing on other calls, which never come here.  Each rule (its tag) has
 * its own bound: its expired entries go first, then its least recently
 * used, so one rule's logins never evict another's.  Entries of a rule a
 * reload removed are dropped as they expire (they are never served: the
 * rule is part of the key).  No answer is held past its expiry: a lookup
 * treats it as absent, and the next store of its rule reuses its slot.
 *
 * The per-rule figures (hits, misses, stored) live here too, by tag, so
 * /status reads them under the same lock.  No lock is held while a caller
 * builds a response: sl_login_cache_get copies the answer out.
 */
#include "sl_login_cache.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

struct sl_login_entry {
    uint64_t tag;                           /* its rule */
    unsigned char key[SL_LOGIN_DIGEST];     /* the login's digest */
    int64_t expires_ms;                     /* monotonic; 0: slot free */
    uint64_t used;                          /* last use, on the cache's clock */
    struct sl_login_answer answer;          /* owned */
};

struct sl_login_rule_stats {
    uint64_t tag;
    uint64_t hits, misses, stored;
};

struct sl_login_cache {
    unsigned char secret[32];               /* the HMAC key, this process only */
    pthread_mutex_t lock;                   /* guards everything below */
    struct sl_login_entry *entries;
    size_t nentries, cap;
    uint64_t clock;                         /* ticks on every use: LRU order */
    size_t bytes;                           /* kept answers' bytes, all rules */
    struct sl_login_rule_stats *stats;
    size_t nstats;
};

/* What answer A keeps in memory (its body and content type). */
static size_t sl_login_answer_size(const struct sl_login_answer *a)
{
    return a->len + (a->content_type != NULL ? strlen(a->content_type) : 0);
}

static void sl_login_answer_free(struct sl_login_answer *a)
{
    free(a->content_type);
    free(a->body);
    memset(a, 0, sizeof(*a));
}

/* Forget entry E's answer (expired, evicted or replaced).  Lock held. */
static void sl_login_entry_drop(struct sl_login_cache *lc, struct sl_login_entry *e)
{
    lc->bytes -= sl_login_answer_size(&e->answer);
    sl_login_answer_free(&e->answer);
    e->expires_ms = 0;
}

/* Copy A into *OUT.  0, or -1 (out of memory: *OUT empty). */
static int sl_login_answer_copy(struct sl_login_answer *out,
                                const struct sl_login_answer *a)
{
    memset(out, 0, sizeof(*out));
    out->status = a->status;
    out->len = a->len;
    out->body = malloc(a->len ? a->len : 1);
    if (out->body == NULL)
        return -1;
    memcpy(out->body, a->body, a->len);
    if (a->content_type != NULL) {
        out->content_type = strdup(a->content_type);
        if (out->content_type == NULL) {
            sl_login_answer_free(out);
            return -1;
        }
    }
    return 0;
}

struct sl_login_cache *sl_login_cache_new(void)
{
    struct sl_login_cache *lc = calloc(1, sizeof(*lc));

    if (lc == NULL)
        return NULL;
    if (getrandom(lc->secret, sizeof(lc->secret), 0) != (ssize_t)sizeof(lc->secret)) {
        free(lc);
        return NULL;
    }
    pthread_mutex_init(&lc->lock, NULL);
    return lc;
}

void sl_login_cache_free(struct sl_login_cache *lc)
{
    if (lc == NULL)
        return;
    for (size_t i = 0; i < lc->nentries; i++)
        sl_login_answer_free(&lc->entries[i].answer);
    free(lc->entries);
    free(lc->stats);
    pthread_mutex_destroy(&lc->lock);
    memset(lc->secret, 0, sizeof(lc->secret));
    free(lc);
}

uint64_t sl_login_cache_tag(const char *upstream, const char *rule)
{
    uint64_t h = UINT64_C(14695981039346656037);  /* FNV-1a */

    for (const char *p = upstream; *p; p++)
        h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
    h = (h ^ 0xffu) * UINT64_C(1099511628211);    /* a byte no name holds */
    for (const char *p = rule; *p; p++)
        h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
    return h;
}

int sl_login_cache_key(const struct sl_login_cache *lc, const char *const *parts,
                       const size_t *lens, size_t n,
                       unsigned char out[SL_LOGIN_DIGEST])
{
    HMAC_CTX *ctx = NULL;
    unsigned int len = 0;
    int rc = -1;

    /* HMAC_CTX is deprecated in OpenSSL 3 in favour of EVP_MAC; the
     * one-shot EVP_MAC API is not in 1.1.1, which sluice still builds on. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    ctx = HMAC_CTX_new();
    if (ctx == NULL ||
        HMAC_Init_ex(ctx, lc->secret, sizeof(lc->secret), EVP_sha256(), NULL) != 1)
        goto out;
    for (size_t i = 0; i < n; i++) {
        /* Each part framed by its length (all ones: absent). */
        uint64_t frame = parts[i] != NULL ? (uint64_t)lens[i] : UINT64_MAX;
        unsigned char b[8];
        for (int k = 0; k < 8; k++)
            b[k] = (unsigned char)(frame >> (8 * k));
        if (HMAC_Update(ctx, b, sizeof(b)) != 1 ||
            (parts[i] != NULL && lens[i] > 0 &&
             HMAC_Update(ctx, (const unsigned char *)parts[i], lens[i]) != 1))
            goto out;
    }
    if (HMAC_Final(ctx, out, &len) != 1 || len != SL_LOGIN_DIGEST)
        goto out;
    rc = 0;
out:
    HMAC_CTX_free(ctx);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    return rc;
}

/* TAG's figures, made on first use; NULL when out of memory.  Locked. */
static struct sl_login_rule_stats *sl_login_stats_of(struct sl_login_cache *lc,
                                                     uint64_t tag)
{
    struct sl_login_rule_stats *s;

    for (size_t i = 0; i < lc->nstats; i++)
        if (lc->stats[i].tag == tag)
            return &lc->stats[i];
    s = realloc(lc->stats, (lc->nstats + 1) * sizeof(*s));
    if (s == NULL)
        return NULL;
    lc->stats = s;
    s = &lc->stats[lc->nstats++];
    memset(s, 0, sizeof(*s));
    s->tag = tag;
    return s;
}

int sl_login_cache_get(struct sl_login_cache *lc, uint64_t tag,
                       const unsigned char key[SL_LOGIN_DIGEST], int64_t now_ms,
                       struct sl_login_answer *out)
{
    struct sl_login_rule_stats *s;
    int rc = 0;

    pthread_mutex_lock(&lc->lock);
    for (size_t i = 0; i < lc->nentries; i++) {
        struct sl_login_entry *e = &lc->entries[i];
        if (e->expires_ms == 0 || e->tag != tag ||
            memcmp(e->key, key, SL_LOGIN_DIGEST) != 0)
            continue;
        if (e->expires_ms <= now_ms) {
            sl_login_entry_drop(lc, e);
            break;
        }
        if (sl_login_answer_copy(out, &e->answer) != 0) {
            rc = -1;
            goto out;
        }
        e->used = ++lc->clock;
        rc = 1;
        break;
    }
    s = sl_login_stats_of(lc, tag);
    if (s != NULL) {
        if (rc == 1)
            s->hits++;
        else
            s->misses++;
    }
out:
    pthread_mutex_unlock(&lc->lock);
    return rc;
}

int sl_login_cache_put(struct sl_login_cache *lc, uint64_t tag, uint32_t max,
                       const unsigned char key[SL_LOGIN_DIGEST], int64_t now_ms,
                       int64_t expires_ms, const struct sl_login_answer *a)
{
    struct sl_login_entry *slot = NULL, *oldest = NULL, *expired = NULL;
    struct sl_login_answer copy;
    struct sl_login_rule_stats *s;
    size_t live = 0;

    if (sl_login_answer_copy(&copy, a) != 0)
        return -1;
    pthread_mutex_lock(&lc->lock);
    for (size_t i = 0; i < lc->nentries; i++) {
        struct sl_login_entry *e = &lc->entries[i];
        if (e->expires_ms != 0 && e->expires_ms <= now_ms)
            sl_login_entry_drop(lc, e);  /* no token past its time */
        if (e->expires_ms == 0) {
            if (expired == NULL)
                expired = e;
            continue;
        }
        if (e->tag != tag)
            continue;
        if (memcmp(e->key, key, SL_LOGIN_DIGEST) == 0) {
            slot = e;  /* an identical login answered meanwhile: the newer wins */
            break;
        }
        live++;
        if (oldest == NULL || e->used < oldest->used)
            oldest = e;
    }
    if (slot == NULL && live >= max && oldest != NULL)
        slot = oldest;  /* the rule's bound: its least recently used goes */
    if (slot == NULL)
        slot = expired;
    if (slot == NULL) {
        if (lc->nentries == lc->cap) {
            size_t cap = lc->cap ? lc->cap * 2 : 16;
            struct sl_login_entry *v = realloc(lc->entries, cap * sizeof(*v));
            if (v == NULL) {
                pthread_mutex_unlock(&lc->lock);
                sl_login_answer_free(&copy);
                return -1;
            }
            lc->entries = v;
            lc->cap = cap;
        }
        slot = &lc->entries[lc->nentries++];
        memset(slot, 0, sizeof(*slot));
    }
    if (slot->expires_ms != 0)
        sl_login_entry_drop(lc, slot);
    /* The process's byte budget: the least recently used answers go. */
    while (lc->bytes + sl_login_answer_size(&copy) > SL_LOGIN_CACHE_BYTES) {
        struct sl_login_entry *lru = NULL;
        for (size_t i = 0; i < lc->nentries; i++) {
            struct sl_login_entry *e = &lc->entries[i];
            if (e->expires_ms != 0 && e != slot && (lru == NULL || e->used < lru->used))
                lru = e;
        }
        if (lru == NULL)
            break;
        sl_login_entry_drop(lc, lru);
    }
    slot->tag = tag;
    memcpy(slot->key, key, SL_LOGIN_DIGEST);
    slot->expires_ms = expires_ms;
    slot->used = ++lc->clock;
    slot->answer = copy;
    lc->bytes += sl_login_answer_size(&copy);
    s = sl_login_stats_of(lc, tag);
    if (s != NULL)
        s->stored++;
    pthread_mutex_unlock(&lc->lock);
    return 0;
}

void sl_login_cache_stats(struct sl_login_cache *lc, uint64_t tag, int64_t now_ms,
                          struct sl_login_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&lc->lock);
    for (size_t i = 0; i < lc->nentries; i++) {
        struct sl_login_entry *e = &lc->entries[i];
        if (e->tag == tag && e->expires_ms > now_ms)
            out->entries++;
    }
    for (size_t i = 0; i < lc->nstats; i++) {
        if (lc->stats[i].tag != tag)
            continue;
        out->hits = lc->stats[i].hits;
        out->misses = lc->stats[i].misses;
        out->stored = lc->stats[i].stored;
    }
    pthread_mutex_unlock(&lc->lock);
}
