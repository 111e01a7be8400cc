/*
 * sl_redis_block — a blocking Redis client for a thread with no event
 * loop of its own (the token broker's): one sl_redis_link (so TLS, ACL
 * users and SELECT exactly as the store's links have them) driven by
 * poll() until what the caller waits for has happened.
 *
 * Every wait is bounded: connecting and each command by the link's
 * timeout_ms (the link's own deadline), a subscriber's wait by the
 * caller's.  A client whose link died answers NULL or -1 from then on:
 * free it and connect again.  One thread at a time.
 */
#ifndef SL_REDIS_BLOCK_H
#define SL_REDIS_BLOCK_H

#include <stddef.h>
#include <stdint.h>

struct redisReply;
struct sl_redis_link_conf;
struct sl_redis_block;

/* Connect to CONF's server and wait for its handshake.  NULL, with a
 * sentence in WHY (WHY_LEN bytes), when it failed. */
struct sl_redis_block *sl_redis_block_connect(const struct sl_redis_link_conf *conf,
                                              char *why, size_t why_len);

/* A command formatted as redisCommand() formats it, and its reply: owned
 * by the caller (freeReplyObject), or NULL when the link died or the
 * deadline passed (the client is then dead).  Not for SUBSCRIBE. */
struct redisReply *sl_redis_block_command(struct sl_redis_block *b, const char *fmt, ...);

/* SUBSCRIBE CHANNEL and wait for the confirmation.  0, or -1 (dead). */
int sl_redis_block_subscribe(struct sl_redis_block *b, const char *channel);

/* Wait, at most TIMEOUT_MS, for a message on the subscribed channel (one
 * that came earlier counts).  1: one came (it is consumed); 0: the time
 * ran out, or CANCEL_FD (-1: none) became readable; -1: the link died. */
int sl_redis_block_wait_message(struct sl_redis_block *b, int64_t timeout_ms, int cancel_fd);

/* Close and free B.  NULL is a no-op. */
void sl_redis_block_free(struct sl_redis_block *b);

#endif
