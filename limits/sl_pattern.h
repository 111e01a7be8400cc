/*
 * sl_pattern — path patterns of rules.
 *
 * Syntax: literal characters; "*" matches any run (possibly empty) of
 * characters other than "/"; "**" matches any run including "/"; "{name}"
 * matches one whole non-empty segment and captures it.  The whole path must
 * match.  A trailing "/" + "**" also matches the path without it
 * (pattern "/a/" "**" matches "/a"), as in Ant/Spring path patterns.
 */
#ifndef SL_PATTERN_H
#define SL_PATTERN_H

#include <stddef.h>

#define SL_PATTERN_MAX_CAPTURES 8
/* Longer paths never match (the proxy answers 414 before matching). */
#define SL_PATTERN_MAX_PATH 8192

struct sl_pattern;

/* One captured segment: a slice of the matched path (not NUL-terminated). */
struct sl_capture {
    const char *ptr;
    size_t len;
};

/*
 * Compile TEXT.  Returns the pattern, or NULL with *error set to a static
 * sentence explaining what is wrong (or "out of memory").
 * Ownership: the caller frees the result with sl_pattern_free().
 */
struct sl_pattern *sl_pattern_compile(const char *text, const char **error);

void sl_pattern_free(struct sl_pattern *pattern);

/*
 * Match PATH (LEN bytes) against PATTERN.  Returns 1 on a match and fills
 * CAPTURES (at least SL_PATTERN_MAX_CAPTURES slots, may be NULL), 0 otherwise.
 * No allocation; thread-safe on a shared pattern.
 */
int sl_pattern_match(const struct sl_pattern *pattern, const char *path,
                     size_t len, struct sl_capture *captures);

/*
 * The same with FOLD set: the pattern's literals are compared lower-cased
 * (ASCII), for a PATH that the caller lower-cased (sl_path's
 * SL_PATH_FOLD_CASE).  Captures keep the path's bytes.
 */
int sl_pattern_match_fold(const struct sl_pattern *pattern, const char *path,
                          size_t len, struct sl_capture *captures, int fold);

/* Index of capture NAME, or -1. */
int sl_pattern_capture_index(const struct sl_pattern *pattern, const char *name);

/* The source text the pattern was compiled from. */
const char *sl_pattern_text(const struct sl_pattern *pattern);

#endif
