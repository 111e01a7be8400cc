/*
 * sl_redis_groups — which upstreams spread over a cluster's slots, and how
 * a bucket finds its tenant group (see the header).
 */
#include "sl_redis_groups.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Do A and B count per the same value of every call they both match?
 * One header (names are case-insensitive): its value, the same for every
 * rule.  Never a path capture: a call is matched under more than one
 * reading of its path (sl_match.c), and each reading may capture another
 * value, so one call could fall under buckets of two groups. */
static bool sl_same_per(const struct sl_rule *a, const struct sl_rule *b)
{
    return a->per_kind == SL_PER_HEADER && b->per_kind == SL_PER_HEADER &&
           a->per_header != NULL && b->per_header != NULL &&
           strcasecmp(a->per_header, b->per_header) == 0;
}

size_t sl_redis_groups(const struct sl_upstream_conf *up, bool cluster)
{
    if (!cluster || !up->tenant_groups || up->nrules == 0)
        return 1;
    for (size_t i = 0; i < up->nrules; i++)
        if (!sl_same_per(&up->rules[0], &up->rules[i]))
            return 1;
    return SL_REDIS_GROUPS;
}

size_t sl_redis_group_of(const char *per, size_t per_len)
{
    /* FNV-1a: every instance must agree, whatever its build. */
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < per_len; i++) {
        h ^= (unsigned char)per[i];
        h *= 16777619u;
    }
    return h % SL_REDIS_GROUPS;
}

int sl_redis_tag(char *buf, size_t size, const char *name, bool grouped, size_t g)
{
    int n = grouped ? snprintf(buf, size, "{%s#%zu}", name, g)
                    : snprintf(buf, size, "{%s}", name);

    return n < 0 || (size_t)n >= size ? -1 : n;
}

bool sl_redis_tag_parse(const char *in, size_t len, size_t *name_len, size_t *g)
{
    const char *hash = memchr(in, '#', len);
    size_t v = 0;

    *g = SIZE_MAX;
    if (hash == NULL) {
        *name_len = len;
        return len > 0;
    }
    *name_len = (size_t)(hash - in);
    if (*name_len == 0 || hash + 1 == in + len || in + len - hash > 4)
        return false;
    for (const char *p = hash + 1; p < in + len; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (size_t)(*p - '0');
    }
    if (v >= SL_REDIS_GROUPS)
        return false;
    *g = v;
    return true;
}
