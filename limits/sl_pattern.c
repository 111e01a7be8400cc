/*
 * sl_pattern — compile a rule's path pattern into tokens and match paths.
 *
 * A pattern is a short array of tokens (literal, star, double star,
 * capture).  Matching is a backtracking walk over tokens and path bytes.
 * Backtracking alone is exponential in the number of wildcards on a
 * hostile path, so every failure "the tokens after wildcard k cannot match
 * from byte i" is remembered in a bitmap (at most 4 wildcards, paths of at
 * most SL_PATTERN_MAX_PATH bytes): each (k, i) is tried once, which bounds
 * a match at O(wildcards * len^2) bit tests in the worst case and O(len)
 * in practice.  Captures are slices into the caller's path,
 * so matching allocates nothing and a compiled pattern is shared by all
 * worker threads read-only.
 */
#include "sl_pattern.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SL_PATTERN_MAX_STARS 4

enum sl_tok_kind {
    SL_TOK_LITERAL,
    SL_TOK_STAR,     /* any run without '/' */
    SL_TOK_DSTAR,    /* any run, '/' included */
    SL_TOK_CAPTURE,  /* one non-empty segment */
};

struct sl_tok {
    enum sl_tok_kind kind;
    int star;         /* wildcard number, for SL_TOK_STAR / SL_TOK_DSTAR */
    const char *lit;  /* literal bytes (into pattern->text) */
    const char *lit_fold; /* the same, lower-cased (into pattern->folded) */
    size_t lit_len;
    int capture;      /* capture slot for SL_TOK_CAPTURE */
};

struct sl_pattern {
    char *text;                                  /* owned copy of the source */
    char *folded;                                /* text, ASCII lower-cased */
    struct sl_tok *toks;                         /* owned */
    size_t ntoks;
    int ncaptures;
    char *names[SL_PATTERN_MAX_CAPTURES];        /* owned capture names */
    int bare_tail;                               /* ends in "/" then "**" */
};

#define SL_MEMO_WORDS ((SL_PATTERN_MAX_PATH + 1 + 63) / 64)

/* Per-match scratch: failed (wildcard, end) pairs, and the case rule. */
struct sl_memo {
    int fold;                 /* compare literals lower-cased */
    uint64_t dead[SL_PATTERN_MAX_STARS][SL_MEMO_WORDS];
};

static int sl_match_from(const struct sl_pattern *p, size_t ti,
                         const char *s, size_t pos, size_t len,
                         struct sl_capture *caps, int bare_tail,
                         struct sl_memo *memo);

void sl_pattern_free(struct sl_pattern *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < p->ncaptures; i++)
        free(p->names[i]);
    free(p->toks);
    free(p->text);
    free(p->folded);
    free(p);
}

struct sl_pattern *sl_pattern_compile(const char *text, const char **error)
{
    struct sl_pattern *p;
    size_t n = strlen(text), i = 0;
    int stars = 0;

    *error = NULL;
    if (n == 0 || text[0] != '/') {
        *error = "must start with \"/\"";
        return NULL;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        goto oom;
    p->text = strdup(text);
    p->folded = strdup(text);
    p->toks = calloc(n + 1, sizeof(*p->toks));
    if (p->text == NULL || p->folded == NULL || p->toks == NULL)
        goto oom;
    for (char *c = p->folded; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');

    while (i < n) {
        struct sl_tok *t = &p->toks[p->ntoks];
        char c = p->text[i];

        if (c == '*') {
            if (i + 1 < n && p->text[i + 1] == '*') {
                if (i + 2 < n && p->text[i + 2] == '*') {
                    *error = "\"***\" is not a pattern; use \"*\" or \"**\"";
                    goto fail;
                }
                t->kind = SL_TOK_DSTAR;
                i += 2;
            } else {
                t->kind = SL_TOK_STAR;
                i += 1;
            }
            t->star = stars;
            if (++stars > SL_PATTERN_MAX_STARS) {
                *error = "has more than 4 wildcards";
                goto fail;
            }
            if (p->ntoks > 0 && p->toks[p->ntoks - 1].kind != SL_TOK_LITERAL &&
                p->toks[p->ntoks - 1].kind != SL_TOK_CAPTURE) {
                *error = "has two wildcards in a row";
                goto fail;
            }
            p->ntoks++;
        } else if (c == '{') {
            const char *close = strchr(p->text + i, '}');
            size_t name_len;

            if (close == NULL) {
                *error = "has a \"{\" without a closing \"}\"";
                goto fail;
            }
            name_len = (size_t)(close - (p->text + i + 1));
            if (name_len == 0) {
                *error = "has an empty capture name \"{}\"";
                goto fail;
            }
            for (size_t k = 0; k < name_len; k++) {
                char ch = p->text[i + 1 + k];
                if (!isalnum((unsigned char)ch) && ch != '_' && ch != '-') {
                    *error = "has a capture name with characters other than "
                             "letters, digits, \"_\" and \"-\"";
                    goto fail;
                }
            }
            if (p->text[i - 1] != '/' || (close[1] != '\0' && close[1] != '/')) {
                *error = "has a capture that is not a whole segment "
                         "(write \"/{name}/\")";
                goto fail;
            }
            if (p->ncaptures == SL_PATTERN_MAX_CAPTURES) {
                *error = "has more than 8 captures";
                goto fail;
            }
            for (int k = 0; k < p->ncaptures; k++) {
                if (strlen(p->names[k]) == name_len &&
                    memcmp(p->names[k], p->text + i + 1, name_len) == 0) {
                    *error = "uses the same capture name twice";
                    goto fail;
                }
            }
            p->names[p->ncaptures] = strndup(p->text + i + 1, name_len);
            if (p->names[p->ncaptures] == NULL)
                goto oom;
            t->kind = SL_TOK_CAPTURE;
            t->capture = p->ncaptures++;
            p->ntoks++;
            i = (size_t)(close - p->text) + 1;
        } else if (c == '}') {
            *error = "has a \"}\" without an opening \"{\"";
            goto fail;
        } else {
            size_t start = i;
            while (i < n && p->text[i] != '*' && p->text[i] != '{' &&
                   p->text[i] != '}')
                i++;
            t->kind = SL_TOK_LITERAL;
            t->lit = p->text + start;
            t->lit_fold = p->folded + start;
            t->lit_len = i - start;
            p->ntoks++;
        }
    }
    p->bare_tail = p->ntoks >= 2 && p->toks[p->ntoks - 1].kind == SL_TOK_DSTAR &&
                   p->toks[p->ntoks - 2].kind == SL_TOK_LITERAL &&
                   p->toks[p->ntoks - 2].lit[p->toks[p->ntoks - 2].lit_len - 1] == '/';
    return p;

oom:
    *error = "out of memory";
fail:
    sl_pattern_free(p);
    return NULL;
}

/* Try to match tokens [ti..] against s[pos..len). */
static int sl_match_from(const struct sl_pattern *p, size_t ti,
                         const char *s, size_t pos, size_t len,
                         struct sl_capture *caps, int bare_tail,
                         struct sl_memo *memo)
{
    while (ti < p->ntoks) {
        const struct sl_tok *t = &p->toks[ti];

        switch (t->kind) {
        case SL_TOK_LITERAL: {
            size_t want = t->lit_len;

            /* Second pass for a trailing "/" "**" matching "/a": drop the final '/'
             * of the literal before the trailing "**" and stop there. */
            if (bare_tail && ti + 2 == p->ntoks)
                want--;
            if (len - pos < want ||
                memcmp(s + pos, memo->fold ? t->lit_fold : t->lit, want) != 0)
                return 0;
            if (bare_tail && ti + 2 == p->ntoks)
                return pos + want == len;
            pos += want;
            ti++;
            break;
        }
        case SL_TOK_CAPTURE: {
            size_t end = pos;
            while (end < len && s[end] != '/')
                end++;
            if (end == pos)
                return 0;
            if (caps != NULL) {
                caps[t->capture].ptr = s + pos;
                caps[t->capture].len = end - pos;
            }
            pos = end;
            ti++;
            break;
        }
        case SL_TOK_STAR:
        case SL_TOK_DSTAR: {
            /* Last token: the rest must be acceptable as a whole. */
            if (ti + 1 == p->ntoks) {
                if (t->kind == SL_TOK_DSTAR)
                    return 1;
                return memchr(s + pos, '/', len - pos) == NULL;
            }
            for (size_t end = pos; end <= len; end++) {
                uint64_t *word = &memo->dead[t->star][end / 64];
                uint64_t bit = UINT64_C(1) << (end % 64);
                if (!(*word & bit)) {
                    if (sl_match_from(p, ti + 1, s, end, len, caps, bare_tail,
                                      memo))
                        return 1;
                    *word |= bit;
                }
                if (end < len && s[end] == '/' && t->kind == SL_TOK_STAR)
                    return 0;
            }
            return 0;
        }
        }
    }
    return pos == len;
}

int sl_pattern_match_fold(const struct sl_pattern *p, const char *path,
                          size_t len, struct sl_capture *captures, int fold)
{
    struct sl_memo memo;

    if (len > SL_PATTERN_MAX_PATH)
        return 0;
    memset(&memo, 0, sizeof(memo));
    memo.fold = fold;
    if (sl_match_from(p, 0, path, 0, len, captures, 0, &memo))
        return 1;
    if (!p->bare_tail)
        return 0;
    memset(&memo, 0, sizeof(memo));
    memo.fold = fold;
    return sl_match_from(p, 0, path, 0, len, captures, 1, &memo);
}

int sl_pattern_match(const struct sl_pattern *p, const char *path, size_t len,
                     struct sl_capture *captures)
{
    return sl_pattern_match_fold(p, path, len, captures, 0);
}

int sl_pattern_capture_index(const struct sl_pattern *p, const char *name)
{
    for (int i = 0; i < p->ncaptures; i++)
        if (strcmp(p->names[i], name) == 0)
            return i;
    return -1;
}

const char *sl_pattern_text(const struct sl_pattern *p) { return p->text; }
