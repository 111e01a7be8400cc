/*
 * sl_redis_groups — how one upstream's keys spread over a Redis Cluster.
 *
 * Every key of an upstream carries a hash tag, so that one decision (all
 * the buckets a call falls under, the upstream's pause and the fleet's
 * marker) runs as one atomic script on one node.  The tag is the
 * upstream's name, "{name}": one slot, one primary per upstream.
 *
 * An upstream whose rules all count per one header (every rule has the
 * same `per`: "header:NAME") never puts two values' buckets in one
 * decision: a call falls under the buckets of its own value only.  (Not
 * a path capture: a call is matched under every reading of its path, and
 * two readings may capture two values.)  On a Redis Cluster such an upstream is split into
 * SL_REDIS_GROUPS tenant groups, "{name#G}", G a hash of the per value:
 * a bucket's keys are in its group's slot, and each group has its own
 * copy of what every decision reads besides (the pause, the fleet's
 * marker, heartbeat and repair phase), so the groups are independent
 * units on as many slots, spread over the primaries.  A pause is written
 * to every group; a snapshot reads every group and merges them.  Other
 * upstreams, and every upstream on one Redis or a Sentinel's primary,
 * keep the one tag.
 */
#ifndef SL_REDIS_GROUPS_H
#define SL_REDIS_GROUPS_H

#include "sl_config.h"

#include <stdbool.h>
#include <stddef.h>

#define SL_REDIS_GROUPS 16

/* UP's tenant groups on a cluster (CLUSTER: the store is one): 1 (keys
 * under "{name}"), or SL_REDIS_GROUPS when every rule counts per one
 * header and the upstream's `tenant_groups` is on. */
size_t sl_redis_groups(const struct sl_upstream_conf *up, bool cluster);

/* The tenant group of a bucket of per value PER (PER_LEN bytes). */
size_t sl_redis_group_of(const char *per, size_t per_len);

/* Write UP's hash tag for group G into BUF (SIZE bytes): "{name}" when
 * GROUPED is false, else "{name#G}".  Returns its length, or -1 when it
 * does not fit. */
int sl_redis_tag(char *buf, size_t size, const char *name, bool grouped, size_t g);

/* Read a tag's inside (the bytes between the braces): the upstream's name
 * (its length in *NAME_LEN) and its group (*G; SIZE_MAX without one).
 * Returns false when it is neither form. */
bool sl_redis_tag_parse(const char *in, size_t len, size_t *name_len, size_t *g);

#endif
