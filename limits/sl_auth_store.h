/*
 * sl_auth_store — the token broker's state in Redis, for a fleet of
 * instances (the store side of proxy/sl_auth.c).
 *
 * Keys, under the store prefix and the upstream's name:
 *   PREFIXauth:UP:token   the token, encrypted (AES-256-GCM), with a TTL
 *                         ending when the token expires;
 *   PREFIXauth:UP:lease   the login lease: the holder's fencing token,
 *                         with a TTL (a crashed holder's lease expires);
 *   PREFIXauth:UP:fence   the counter fencing tokens come from;
 *   PREFIXauth:UP:failed  the last login failed: "STATUS\nWHY" (no secret),
 *                         with a TTL ending when the fleet may try again;
 *   PREFIXauth:UP:backoff the fleet's next back-off (ms), after a failure;
 *   channel PREFIXauth:UP the announcement that a login ended.
 * A login's result is written only while the writer still holds the lease
 * with its own fencing token (one Lua script), so a holder that stalled
 * past its lease cannot overwrite a newer token.
 *
 * One connection for commands and one subscribed to the channel, both
 * blocking, owned by the broker's thread (the only caller).
 */
#ifndef SL_AUTH_STORE_H
#define SL_AUTH_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_config.h"

struct sl_auth_store;

/* Connect for upstream UP of C (a Redis store), with the 32-byte KEY the
 * token is encrypted with.  NULL when out of memory (a store that cannot
 * be reached connects at the next call). */
struct sl_auth_store *sl_auth_store_new(const struct sl_config *c,
                                        const struct sl_upstream_conf *up,
                                        const unsigned char key[32]);
void sl_auth_store_free(struct sl_auth_store *s);

/* The fleet's token: 1 (*TOKEN, *INSTANCE owned, NULL when none; *TTL_MS
 * left; *FENCE the login that made it), 0 none (*FOREIGN: there is one,
 * sealed under another key), -1 Redis error. */
int sl_auth_store_get(struct sl_auth_store *s, char **token, char **instance,
                      int64_t *ttl_ms, uint64_t *fence, bool *foreign);
/* Take the login lease for TTL_MS: 1 taken (*FENCE), 0 another holds it,
 * -1 Redis error. */
int sl_auth_store_lease(struct sl_auth_store *s, int64_t ttl_ms, uint64_t *fence);
/* Under lease FENCE: store TOKEN (and INSTANCE, may be NULL) for TTL_MS,
 * drop the lease, announce.  1 stored, 0 the lease was lost, -1 error. */
int sl_auth_store_put(struct sl_auth_store *s, uint64_t fence, const char *token,
                      const char *instance, int64_t ttl_ms);
/* Under lease FENCE: no login was made after all; drop the lease, announce. */
void sl_auth_store_drop(struct sl_auth_store *s, uint64_t fence);
/* Under lease FENCE: the login failed with STATUS (502, 503) and WHY (no
 * secret).  The failure is in force for the fleet's back-off (MIN_MS at
 * the first failure, doubling up to MAX_MS, reset by a login that
 * works); the lease is dropped and the end announced.  Returns the
 * back-off in ms, 0 when the lease was lost, -1 on a Redis error. */
int64_t sl_auth_store_fail(struct sl_auth_store *s, uint64_t fence, unsigned status,
                           const char *why, int64_t min_ms, int64_t max_ms);
/* The fleet's failure in force: 1 (*LEFT_MS of back-off, *STATUS, WHY),
 * 0 none, -1 Redis error. */
int sl_auth_store_failure(struct sl_auth_store *s, int64_t *left_ms, unsigned *status,
                          char *why, size_t whylen);
/* Subscribe to the announcements (before taking the lease, so that none
 * is missed): 0 or -1. */
int sl_auth_store_listen(struct sl_auth_store *s);
/* Wait for an announcement, at most TIMEOUT_MS, or until CANCEL_FD (-1:
 * none) is readable: 1 one came, 0 none (timed out or cancelled), -1
 * Redis error. */
int sl_auth_store_wait(struct sl_auth_store *s, int64_t timeout_ms, int cancel_fd);

#endif
