/*
 * sl_redis_cluster — one store connection to a Redis Cluster: a link per
 * primary (sl_redis_link.h), the slot map, and each command sent to the
 * primary that owns its key's slot, following MOVED and ASK and retrying
 * TRYAGAIN and CLUSTERDOWN.  Driven by a worker's struct sl_loop, like a
 * link; the store uses it in place of its one link (sl_store_redis.c).
 *
 * The design is in sl_redis_cluster.c's opening comment and in
 * docs/internals/redis-link.md ("Cluster").  Callback rules are the
 * link's (sl_redis_link.h): a command accepted is called back exactly
 * once, with its final reply (after redirections) or with NULL; no
 * callback runs from sl_redis_cluster_new() or _command(); callbacks may
 * free the cluster connection.
 */
#ifndef SL_REDIS_CLUSTER_H
#define SL_REDIS_CLUSTER_H

#include "sl_redis_link.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SL_REDIS_CLUSTER_SLOTS 16384

struct sl_redis_cluster;

/* The slot of KEY (LEN bytes): CRC16 (XMODEM) of its hash tag -- the
 * bytes between the first '{' and the next '}' when there are any --
 * else of the whole key, modulo 16384, as Redis Cluster computes it. */
unsigned sl_redis_key_slot(const char *key, size_t len);

struct sl_redis_cluster_conf {
    /* Where to read the slot map from, tried in turn; and, for every
     * node, the user, password, TLS and timeout (host and port ignored). */
    const struct sl_redis_link_conf *seed;
    const char *const *seed_host;
    const int *seed_port;
    size_t nseeds;
    size_t first_seed;        /* the one to try first (rotate on failures) */
};

/*
 * Connect to the first seed that answers, read its slot map (CLUSTER
 * SLOTS), and be UP: cbs->on_connect then says OK, or why no seed gave a
 * map (each seed's reason, the last one named).  A link to a primary is
 * made when a command first needs it.  A link that dies, or a node that
 * cannot be reached, takes the whole connection down (on_disconnect; or
 * on_connect with the reason while not yet UP): the owner connects
 * again, and the map is read again.  NULL with a sentence in WHY.
 */
struct sl_redis_cluster *sl_redis_cluster_new(const struct sl_redis_cluster_conf *conf,
                                              const struct sl_loop *loop,
                                              const struct sl_redis_link_cbs *cbs,
                                              char *why, size_t why_len);

/*
 * Queue ARGV[0..ARGC) (LENS as in sl_redis_link_command) for the
 * primary owning the slot of ARGV[KEY] (KEY < 0: a keyless command, sent
 * to the first primary of the map; "SCRIPT LOAD" is also sent to every
 * other primary, now and whenever a link to one is made, and its first
 * primary's reply is the one called back).  Commands given before the
 * map is read wait for it.  0, or -1 (dead, out of memory: CB is never
 * called).
 */
int sl_redis_cluster_command(struct sl_redis_cluster *cl, int argc, const char **argv,
                             const size_t *lens, int key, sl_redis_reply_fn cb,
                             void *privdata);

/* As the link's functions of those names, over every link. */
void sl_redis_cluster_cork(struct sl_redis_cluster *cl);
int sl_redis_cluster_uncork(struct sl_redis_cluster *cl);
int sl_redis_cluster_read(struct sl_redis_cluster *cl);
int sl_redis_cluster_flush(struct sl_redis_cluster *cl);
int sl_redis_cluster_flush_wait(struct sl_redis_cluster *cl, int wait_ms);
/* Also sends the commands whose TRYAGAIN/CLUSTERDOWN retry is due. */
int64_t sl_redis_cluster_check(struct sl_redis_cluster *cl, int64_t now_ms);
void sl_redis_cluster_free(struct sl_redis_cluster *cl);

/* ---- the parsers of Redis's answers (for the fuzzer and the tests) ---- */

/* Call FN for each range of CLUSTER SLOTS's reply REP: its first and last
 * slot and its primary (an empty or "?" host is FROM, the answering
 * node's).  FN returns 0, or -1 to stop.  0, or -1: not a map (no range,
 * a malformed one, or FN stopped). */
struct redisReply;
typedef int (*sl_redis_range_fn)(void *ctx, long long start, long long end, const char *host,
                                 int port);
int sl_redis_cluster_parse_map(const struct redisReply *rep, const char *from,
                               sl_redis_range_fn fn, void *ctx);

/* "<slot> <host>:<port>", what follows MOVED or ASK: true with the slot
 * (0..16383), the host (HOST_LEN bytes, NUL-terminated; an empty host is
 * FROM) and the port (1..65535); false when it is not that. */
bool sl_redis_cluster_parse_redirect(const char *s, const char *from, int *slot, char *host,
                                     size_t host_len, int *port);

/*
 * For a blocking client (the token broker's): ask the seeds in turn for
 * the slot map and give the primary owning KEY's slot: *HOST (malloc'd)
 * and *PORT.  0, or -1 with a sentence in WHY.
 */
int sl_redis_cluster_resolve(const struct sl_redis_cluster_conf *conf, const char *key,
                             char **host, int *port, char *why, size_t why_len);

#endif
