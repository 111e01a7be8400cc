/*
 * sl_redis_sentinel — finding the primary of a redis-sentinel:// store,
 * as a Sentinel client should, on a worker's event loop.
 *
 * sl_redis_sentinel_ask() asks the Sentinels in turn, starting with the
 * one that answered last, `SENTINEL get-master-addr-by-name MASTER`, and
 * calls back with the first address one gives (the caller then connects
 * and confirms with ROLE: a Sentinel's view can be stale).  A Sentinel
 * that is down, refuses, or does not know MASTER is skipped, its reason
 * kept for the one sentence given when none answered.
 *
 * The watch: a subscriber link to one Sentinel, on `+switch-master`.  A
 * switch of MASTER is told at once (the owner drops its links to the old
 * primary and asks again); a watch that fails moves to the next Sentinel
 * after a backoff.  The Sentinels reconfigure the old primary themselves
 * and close its clients' connections, so an owner that missed the message
 * still learns it from its link, and ROLE keeps it from staying on a
 * demoted one.
 *
 * Each link is an sl_redis_link (TLS with rediss-sentinel://, the
 * Sentinels' own AUTH from store_sentinel, never SELECT), with the
 * store's store_timeout as its deadline; sl_redis_sentinel_timers() drives
 * the deadlines and the watch's reconnection.  Used from one thread.
 *
 * sl_redis_sentinel_resolve() is the blocking form, for a thread of its
 * own (the token broker's), over sl_redis_block (TLS and AUTH the same).
 */
#ifndef SL_REDIS_SENTINEL_H
#define SL_REDIS_SENTINEL_H

#include <stddef.h>
#include <stdint.h>

struct sl_config;
struct sl_loop;
struct sl_redis_sentinel;

/* HOST (valid until the callback returns) and PORT of the primary, or
 * HOST NULL and WHY a sentence ("no Sentinel knows ...: 127.0.0.1:26379
 * refused: ..."). */
typedef void (*sl_sentinel_found_fn)(void *arg, const char *host, int port,
                                     const char *why);
/* The Sentinels moved the primary (to HOST:PORT). */
typedef void (*sl_sentinel_switch_fn)(void *arg, const char *host, int port);

/* For CONFIG (its redis_master set; must outlive it), on LOOP (copied).
 * ON_SWITCH (may be NULL: no watch) is called with ARG.  NULL: out of
 * memory. */
struct sl_redis_sentinel *sl_redis_sentinel_new(const struct sl_config *config,
                                                const struct sl_loop *loop,
                                                sl_sentinel_switch_fn on_switch,
                                                void *arg);

/* Ask for the primary; CB is called exactly once, never from inside this
 * call, unless this returns -1 (an ask is already under way). */
int sl_redis_sentinel_ask(struct sl_redis_sentinel *s, sl_sentinel_found_fn cb,
                          void *arg);

/* The address the last ask gave was not the primary (ROLE said replica):
 * the next ask starts with the next Sentinel, not that one (its view is
 * stale, and would be given again). */
void sl_redis_sentinel_distrust(struct sl_redis_sentinel *s);

/* Deadlines and the watch.  NOW_MS: sl_time_mono_ms().  Returns when to
 * call it again (ms), or -1. */
int64_t sl_redis_sentinel_timers(struct sl_redis_sentinel *s, int64_t now_ms);

/* Free S; an ask under way is never called back.  NULL is a no-op. */
void sl_redis_sentinel_free(struct sl_redis_sentinel *s);

/* Blocking: the primary's address as the first Sentinel that knows it
 * says, into *HOST (owned) and *PORT; each Sentinel within TIMEOUT_MS.
 * The caller confirms with ROLE.  Returns 0, or -1 with a sentence in
 * WHY. */
int sl_redis_sentinel_resolve(const struct sl_config *config, int timeout_ms,
                              char **host, int *port, char *why, size_t why_len);

#endif
