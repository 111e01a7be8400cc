/*
 * sl_match — find the rules a call falls under and their bucket keys.
 *
 * Rules are tried in config order; a rule matches when its method list (if
 * any) holds the method and its path pattern (if any) matches the whole
 * upstream path.  The bucket key is the "per" value: a captured segment or
 * a header's value ("" when the header is absent).  Keys are copied into
 * one buffer owned by the check, so the check outlives the request's
 * header storage (a networked store may answer later).
 */
#include "sl_store.h"

#include "sl_pattern.h"

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

/* Does R's path pattern match CALL's path, in either trailing form? */
static int sl_rule_path_ok(const struct sl_upstream_conf *up,
                           const struct sl_rule *r, const struct sl_call *call,
                           struct sl_capture *caps)
{
    int fold = !up->path_case_sensitive;
    char with_slash[SL_PATTERN_MAX_PATH + 2];

    if (r->path == NULL)
        return 1;
    if (sl_pattern_match_fold(r->path, call->path, call->path_len, caps, fold))
        return 1;
    if (!call->trailing_slash || call->path_len + 1 > SL_PATTERN_MAX_PATH ||
        (call->path_len == 1 && call->path[0] == '/'))
        return 0;
    memcpy(with_slash, call->path, call->path_len);
    with_slash[call->path_len] = '/';
    if (!sl_pattern_match_fold(r->path, with_slash, call->path_len + 1, caps, fold))
        return 0;
    /* Captures point into the local copy: re-aim them at the caller's path
     * (a capture never holds the added '/', which ends the copy). */
    for (int i = 0; caps != NULL && i < SL_PATTERN_MAX_CAPTURES; i++)
        if (caps[i].ptr >= with_slash && caps[i].ptr < with_slash + call->path_len + 1)
            caps[i].ptr = call->path + (caps[i].ptr - with_slash);
    return 1;
}

int sl_match(const struct sl_upstream_conf *up, const struct sl_call *call,
             struct sl_check *check)
{
    struct sl_capture caps[SL_PATTERN_MAX_CAPTURES];
    const char *vals[SL_MAX_HITS];
    size_t lens[SL_MAX_HITS];
    size_t total = 0, n = 0;
    char *p;

    memset(check, 0, sizeof(*check));
    check->upstream = up;
    for (size_t i = 0; i < up->nrules && n < SL_MAX_HITS - 1; i++) {
        const struct sl_rule *r = &up->rules[i];

        if (!sl_rule_method_ok(r, call->method))
            continue;
        if (!sl_rule_path_ok(up, r, call, caps))
            continue;
        vals[n] = "";
        lens[n] = 0;
        if (r->per_kind == SL_PER_CAPTURE) {
            vals[n] = caps[r->per_capture].ptr;
            lens[n] = caps[r->per_capture].len;
        } else if (r->per_kind == SL_PER_HEADER) {
            const char *h = call->header(call->header_ctx, r->per_header);
            if (h != NULL) {
                vals[n] = h;
                lens[n] = strlen(h);
            }
        }
        check->hits[n].rule = r;
        total += lens[n] + 1;
        n++;
    }
    /* Every call counts in its upstream's pause bucket. */
    vals[n] = "";
    lens[n] = 0;
    check->hits[n].rule = &up->pause_rule;
    total += 1;
    n++;
    check->keys = malloc(total ? total : 1);
    if (check->keys == NULL)
        return -1;
    p = check->keys;
    for (size_t i = 0; i < n; i++) {
        memcpy(p, vals[i], lens[i]);
        p[lens[i]] = '\0';
        check->hits[i].key = p;
        check->hits[i].key_len = lens[i];
        p += lens[i] + 1;
    }
    check->nhits = n;
    return 0;
}

void sl_check_clear(struct sl_check *check)
{
    free(check->keys);
    memset(check, 0, sizeof(*check));
}
