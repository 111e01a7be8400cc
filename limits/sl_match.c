/*
 * sl_match — find the rules a call falls under and their bucket keys.
 *
 * Rules are tried in config order; a rule matches when its method list (if
 * any) holds the method and its path pattern (if any) matches the whole
 * upstream path.  The bucket key is the "per" value: a captured segment or
 * a header's value ("" when the header is absent).  A path that servers
 * may read in more than one way (sl_path.h, "Readings") comes with every
 * reading: a rule is charged when any reading matches it, once per
 * distinct key, so no reading of the path escapes a rule.  A key longer
 * than SL_KEY_MAX is stored shortened, with a hash of the whole
 * (sl_key_store), so no client sizes a bucket by its header.  Keys are copied into
 * one buffer owned by the check, so the check outlives the request's
 * header storage (a networked store may answer later).  Each hit carries
 * the call's cost in its rule ("cost": fixed, per method, or a request
 * header, which must hold a whole number from 1 to the rule's limit: a
 * call that says it badly matches nothing and is refused, never guessed).
 */
#include "sl_store.h"

#include "sl_path.h"
#include "sl_pattern.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Methods are matched whatever their case: "get" must not dodge a GET rule
 * (the method is forwarded as the client wrote it). */
static int sl_rule_method_ok(const struct sl_rule *r, const char *method)
{
    if (r->methods == NULL)
        return 1;
    for (size_t i = 0; i < r->nmethods; i++)
        if (strcasecmp(r->methods[i], method) == 0)
            return 1;
    return 0;
}

/* Does R's path pattern match PATH, in either trailing form? */
static int sl_rule_path_ok(const struct sl_upstream_conf *up,
                           const struct sl_rule *r, const struct sl_reading *path,
                           struct sl_capture *caps)
{
    int fold = !up->path_case_sensitive;
    char with_slash[SL_PATTERN_MAX_PATH + 2];

    if (r->path == NULL)
        return 1;
    if (sl_pattern_match_fold(r->path, path->path, path->path_len, caps, fold))
        return 1;
    if (!path->trailing_slash || path->path_len + 1 > SL_PATTERN_MAX_PATH ||
        (path->path_len == 1 && path->path[0] == '/'))
        return 0;
    memcpy(with_slash, path->path, path->path_len);
    with_slash[path->path_len] = '/';
    if (!sl_pattern_match_fold(r->path, with_slash, path->path_len + 1, caps, fold))
        return 0;
    /* Captures point into the local copy: re-aim them at the caller's path
     * (a capture never holds the added '/', which ends the copy). */
    for (int i = 0; caps != NULL && i < SL_PATTERN_MAX_CAPTURES; i++)
        if (caps[i].ptr >= with_slash && caps[i].ptr < with_slash + path->path_len + 1)
            caps[i].ptr = path->path + (caps[i].ptr - with_slash);
    return 1;
}

/* 64-bit FNV-1a from SEED, finished with splitmix64's mixer. */
static uint64_t sl_key_hash(const char *p, size_t len, uint64_t seed)
{
    uint64_t h = seed;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= UINT64_C(0x100000001b3);
    }
    h ^= h >> 30;
    h *= UINT64_C(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h *= UINT64_C(0x94d049bb133111eb);
    return h ^ (h >> 31);
}

/*
 * Write key VAL (LEN bytes) at OUT, NUL-terminated, shortened when longer
 * than SL_KEY_MAX: its first SL_KEY_PREFIX bytes, '~', and 32 hex digits
 * of a 128-bit hash of the whole.  Two keys that shorten alike share a
 * bucket, which can only count more, never less; a client choosing its
 * key can name any bucket it likes anyway.  Returns the length written
 * (never more than LEN).
 */
static size_t sl_key_store(char *out, const char *val, size_t len)
{
    if (len <= SL_KEY_MAX) {
        memcpy(out, val, len);
        out[len] = '\0';
        return len;
    }
    memcpy(out, val, SL_KEY_PREFIX);
    snprintf(out + SL_KEY_PREFIX, 34, "~%016llx%016llx",
             (unsigned long long)sl_key_hash(val, len, UINT64_C(0xcbf29ce484222325)),
             (unsigned long long)sl_key_hash(val, len, UINT64_C(0x84222325cbf29ce4)));
    return SL_KEY_PREFIX + 33;
}

/*
 * What a call of METHOD costs in rule R (1 for a concurrency rule), or 0
 * when R takes its cost from a header the call lacks or gives badly: a
 * whole number from 1 to the rule's limit, digits only (no sign, space or
 * fraction: a cost is never guessed).
 */
static uint32_t sl_rule_cost(const struct sl_rule *r, const struct sl_call *call)
{
    const char *h;
    uint64_t v = 0;

    if (r->kind != SL_RULE_RATE)
        return 1;
    switch (r->cost_kind) {
    case SL_COST_HEADER:
        h = call->header(call->header_ctx, r->cost_header);
        if (h == NULL || *h == '\0' || strlen(h) > 10)
            return 0;
        for (; *h; h++) {
            if (*h < '0' || *h > '9')
                return 0;
            v = v * 10 + (uint64_t)(*h - '0');
        }
        return v >= 1 && v <= r->cost_max ? (uint32_t)v : 0;
    case SL_COST_METHOD:
        for (size_t i = 0; i < r->ncost_methods; i++)
            if (strcasecmp(r->cost_methods[i].method, call->method) == 0)
                return r->cost_methods[i].cost;
        return r->cost;
    default:
        return r->cost;
    }
}

/* Is (R, VAL) already among the first N hits? */
static bool sl_hit_seen(const struct sl_check *check, const char *const *vals,
                        const size_t *lens, size_t n, const struct sl_rule *r,
                        const char *val, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (check->hits[i].rule == r && lens[i] == len && memcmp(vals[i], val, len) == 0)
            return true;
    return false;
}

int sl_match(const struct sl_upstream_conf *up, const struct sl_call *call,
             struct sl_check *check)
{
    struct sl_capture caps[SL_PATTERN_MAX_CAPTURES];
    struct sl_reading first = {call->path, call->path_len, call->trailing_slash};
    const char *vals[SL_MAX_HITS];
    size_t lens[SL_MAX_HITS];
    size_t total = 0, n = 0;
    char *p;

    memset(check, 0, sizeof(*check));
    check->upstream = up;
    for (size_t i = 0; i < up->nrules; i++) {
        const struct sl_rule *r = &up->rules[i];

        if (!sl_rule_method_ok(r, call->method))
            continue;
        for (size_t k = 0; k <= call->nmore; k++) {
            const struct sl_reading *rd = k == 0 ? &first : &call->more[k - 1];
            const char *val = "";
            size_t len = 0;

            if (!sl_rule_path_ok(up, r, rd, caps))
                continue;
            if (r->per_kind == SL_PER_CAPTURE) {
                val = caps[r->per_capture].ptr;
                len = caps[r->per_capture].len;
            } else if (r->per_kind == SL_PER_HEADER) {
                const char *h = call->header(call->header_ctx, r->per_header);
                if (h != NULL) {
                    val = h;
                    len = strlen(h);
                }
            }
            if (sl_hit_seen(check, vals, lens, n, r, val, len))
                continue;
            if (n == SL_MAX_HITS - 1) {
                memset(check->hits, 0, sizeof(check->hits));
                return SL_MATCH_TOO_MANY;
            }
            vals[n] = val;
            lens[n] = len;
            check->hits[n].rule = r;
            check->hits[n].cost = sl_rule_cost(r, call);
            if (check->hits[n].cost == 0) {
                memset(check->hits, 0, sizeof(check->hits));
                check->bad_cost = r;
                return SL_MATCH_BAD_COST;
            }
            total += len + 1;
            n++;
            /* Only a captured key can differ between readings. */
            if (r->per_kind != SL_PER_CAPTURE)
                break;
        }
    }
    /* Every call counts in its upstream's pause bucket. */
    vals[n] = "";
    lens[n] = 0;
    check->hits[n].rule = &up->pause_rule;
    check->hits[n].cost = 1;
    total += 1;
    n++;
    check->keys = malloc(total ? total : 1);
    if (check->keys == NULL)
        return -1;
    p = check->keys;
    for (size_t i = 0; i < n; i++) {
        size_t len = sl_key_store(p, vals[i], lens[i]);
        check->hits[i].key = p;
        check->hits[i].key_len = len;
        p += len + 1;
    }
    check->nhits = n;
    return 0;
}

int sl_match_raw(const struct sl_upstream_conf *up, const char *method,
                 const char *rest, size_t len,
                 const char *(*header)(void *ctx, const char *name), void *header_ctx,
                 struct sl_check *check)
{
    unsigned fold = up->path_case_sensitive ? 0 : SL_PATH_FOLD_CASE;
    unsigned bits = sl_path_reading_bits(rest, len);
    size_t nsub = (size_t)1 << __builtin_popcount(bits), n = 0;
    struct sl_reading more[SL_PATH_MAX_READINGS];
    struct sl_call call;
    char *buf;
    int rc = 0;

    memset(check, 0, sizeof(*check));
    buf = malloc(nsub * (len + 2));
    if (buf == NULL)
        return -1;
    /* Every subset of BITS, the full one (the canonical reading) first:
     * (sub - 1) & bits counts down through BITS' bits alone. */
    for (unsigned sub = bits, done = 0; !done; sub = (sub - 1) & bits) {
        unsigned reading = (SL_READ_CANONICAL & ~bits) | sub;
        struct sl_reading *rd = &more[n];
        char *out = buf + n * (len + 2);
        bool dup = false;

        done = sub == 0;
        rc = sl_path_read(rest, len, reading, fold, out, &rd->path_len,
                          &rd->trailing_slash);
        if (rc != SL_PATH_OK) {
            rc = SL_MATCH_BAD_PATH;
            goto out;
        }
        rd->path = out;
        for (size_t k = 0; k < n && !dup; k++)
            dup = more[k].path_len == rd->path_len &&
                  more[k].trailing_slash == rd->trailing_slash &&
                  memcmp(more[k].path, out, rd->path_len) == 0;
        if (!dup)
            n++;
    }
    call.method = method;
    call.path = more[0].path;
    call.path_len = more[0].path_len;
    call.trailing_slash = more[0].trailing_slash;
    call.header = header;
    call.header_ctx = header_ctx;
    call.more = more + 1;
    call.nmore = n - 1;
    rc = sl_match(up, &call, check);
out:
    free(buf);
    return rc;
}

void sl_check_clear(struct sl_check *check)
{
    free(check->keys);
    memset(check, 0, sizeof(*check));
}
