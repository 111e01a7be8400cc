/*
 * sl_login_cache.h — token answers kept for identical logins (a rule's
 * "login_cache"); see sl_login_cache.c.
 */
#ifndef SL_LOGIN_CACHE_H
#define SL_LOGIN_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define SL_LOGIN_DIGEST 32              /* HMAC-SHA256 */
#define SL_LOGIN_BODY_MAX (16 * 1024)   /* a login's body, looked up */
#define SL_LOGIN_ANSWER_MAX (64 * 1024) /* an answer's body, kept */
/* Every kept answer of the process together: past it, the least recently
 * used answers (of any rule) go first. */
#define SL_LOGIN_CACHE_BYTES (16 * 1024 * 1024)

struct sl_login_cache;

/* One rule's figures, for /status. */
struct sl_login_stats {
    uint64_t entries;   /* answers held now (expired ones not counted) */
    uint64_t hits;      /* logins answered from the cache */
    uint64_t misses;    /* logins sent to the provider */
    uint64_t stored;    /* answers kept */
};

/* An answer found by sl_login_cache_get (owned by the caller: free
 * content_type and body). */
struct sl_login_answer {
    unsigned status;
    char *content_type;  /* NULL: the provider sent none */
    char *body;
    size_t len;
};

/* A cache with a fresh random key.  NULL: out of memory or no randomness. */
struct sl_login_cache *sl_login_cache_new(void);
void sl_login_cache_free(struct sl_login_cache *lc);

/*
 * The digest of a login: HMAC-SHA256 under the cache's key of the N parts
 * PARTS[i] (LENS[i] bytes each; a NULL part is hashed apart from an empty
 * one), each framed by its length so no two lists collide.  Returns 0, or
 * -1 (OpenSSL failed).  Lock-free: the key never changes.
 */
int sl_login_cache_key(const struct sl_login_cache *lc, const char *const *parts,
                       const size_t *lens, size_t n,
                       unsigned char out[SL_LOGIN_DIGEST]);

/*
 * The rule tagged TAG (sl_login_cache_tag) looks up KEY at NOW_MS
 * (monotonic): 1 and *OUT filled (a hit, counted), 0 a miss (counted), -1
 * out of memory (not counted).  Takes the cache's lock.
 */
int sl_login_cache_get(struct sl_login_cache *lc, uint64_t tag,
                       const unsigned char key[SL_LOGIN_DIGEST], int64_t now_ms,
                       struct sl_login_answer *out);

/*
 * Keep answer A for KEY from NOW_MS until EXPIRES_MS (monotonic), within MAX entries
 * for TAG: the rule's expired entries go first, then its least recently
 * used.  Returns 0, or -1 (out of memory: nothing kept).  Takes the lock.
 */
int sl_login_cache_put(struct sl_login_cache *lc, uint64_t tag, uint32_t max,
                       const unsigned char key[SL_LOGIN_DIGEST], int64_t now_ms,
                       int64_t expires_ms, const struct sl_login_answer *a);

/* TAG's figures at NOW_MS.  Takes the lock (a scan of the entries). */
void sl_login_cache_stats(struct sl_login_cache *lc, uint64_t tag, int64_t now_ms,
                          struct sl_login_stats *out);

/* The tag of rule RULE of upstream UPSTREAM: the same across reloads that
 * keep both names. */
uint64_t sl_login_cache_tag(const char *upstream, const char *rule);

#endif
