/*
 * libFuzzer target: the request path as sluice reads it, from raw target
 * bytes to the rules a call falls under.
 *
 * Input: the request target (a '?' ends the path, as in the proxy).  The
 * target checks the properties the proxy relies on, not only "no crash":
 *   - the canonical form of an accepted path starts with '/', holds no
 *     empty, "." or ".." segment, no '\', no ';' and no control character;
 *   - canonicalizing is idempotent: the canonical form is its own form;
 *   - folding case never changes whether a path is accepted;
 *   - matching the canonical form against a fixed set of rules terminates
 *     and every capture lies inside the path;
 *   - no reading escapes a rule: for every one of the 64 readings a server
 *     may make of the path (sl_path.h), each (rule, key) it matches alone
 *     is charged by sl_match_raw(), which reads only the readings that
 *     sl_path_reading_bits() says can differ.  So no target matches no
 *     rule under one reading and a rule under another without sluice
 *     charging that rule.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sl_config.h"
#include "sl_path.h"
#include "sl_pattern.h"
#include "sl_store.h"

static struct sl_config *fz_config;

static const char fz_rules[] =
    "{\"upstreams\": [{\"name\": \"u\", \"prefix\": \"/u\", \"url\": \"http://x\","
    " \"rules\": ["
    "{\"name\": \"a\", \"methods\": [\"POST\"], \"path\": \"/api/v2*/login\", \"limit\": 1, \"window\": \"1s\"},"
    "{\"name\": \"b\", \"path\": \"/p/{pub}/lead-result/{id}\", \"per\": \"{pub}\", \"limit\": 1, \"window\": \"1s\"},"
    "{\"name\": \"c\", \"path\": \"/files/**\", \"limit\": 1, \"window\": \"1s\"},"
    "{\"name\": \"d\", \"path\": \"/*/*/*/x*y\", \"limit\": 1, \"window\": \"1s\"},"
    "{\"name\": \"e\", \"per\": \"header:X-App\", \"limit\": 1, \"window\": \"1s\"}]}]}";

static const char *fz_header(void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    return "app";
}

/* Every (rule, key) that READING alone matches is in ALL. */
static void fz_check_reading(const char *raw, size_t len, unsigned reading,
                             const struct sl_check *all)
{
    char *out = malloc(len + 2);
    struct sl_check one;
    size_t n;
    bool trailing;

    if (out == NULL)
        abort();
    if (sl_path_read(raw, len, reading, SL_PATH_FOLD_CASE, out, &n, &trailing) !=
        SL_PATH_OK)
        abort();  /* the canonical form accepted it: so does every reading */
    {
        struct sl_call call = {"POST", out, n, fz_header, NULL, trailing, NULL, 0};
        if (sl_match(&fz_config->upstreams[0], &call, &one) != 0)
            abort();
    }
    for (size_t i = 0; i < one.nhits; i++) {
        bool found = false;
        for (size_t k = 0; k < all->nhits && !found; k++)
            found = all->hits[k].rule == one.hits[i].rule &&
                    all->hits[k].key_len == one.hits[i].key_len &&
                    memcmp(all->hits[k].key, one.hits[i].key, one.hits[i].key_len) == 0;
        if (!found)
            abort();
    }
    sl_check_clear(&one);
    free(out);
}

static void fz_check_canonical(const char *c, size_t n)
{
    if (n == 0 || c[0] != '/')
        abort();
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)c[i];
        if (ch < 0x20 || ch == 0x7f || ch == '\\' || ch == ';')
            abort();
        if (ch == '/' && i + 1 < n && c[i + 1] == '/')
            abort();
    }
    if (n > 1 && c[n - 1] == '/')
        abort();
    for (size_t i = 0; i < n; i++) {
        size_t s, e;
        bool only = true, dot = false;
        if (c[i] != '/' || i + 1 >= n)
            continue;
        s = i + 1;
        for (e = s; e < n && c[e] != '/'; e++) {
            if (c[e] == '.')
                dot = true;
            else if (c[e] != ' ')
                only = false;
        }
        if (only && dot)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *raw = (const char *)data;
    const char *q = memchr(raw, '?', size);
    size_t len = q != NULL ? (size_t)(q - raw) : size;
    char *out, *again;
    size_t n, n2;
    bool trailing;
    int rc, rc_fold;

    if (fz_config == NULL) {
        struct sl_errors e = {0};
        if (sl_config_parse(fz_rules, "fuzz", false, &fz_config, &e) != 0)
            abort();
    }
    if (len > SL_PATTERN_MAX_PATH)
        return 0;
    out = malloc(len + 2);
    again = malloc(len + 2);
    if (out == NULL || again == NULL)
        abort();
    rc_fold = sl_path_canonical(raw, len, SL_PATH_FOLD_CASE, out, &n, &trailing);
    rc = sl_path_canonical(raw, len, 0, out, &n, &trailing);
    if ((rc == SL_PATH_OK) != (rc_fold == SL_PATH_OK))
        abort();
    if (rc == SL_PATH_OK) {
        struct sl_call call = {"POST", out, n, fz_header, NULL, trailing, NULL, 0};
        struct sl_check chk;

        fz_check_canonical(out, n);
        /* The canonical form is a fixed point, unless it holds a '%'
         * (a decoded "%25"), which a second pass would decode again. */
        if (memchr(out, '%', n) == NULL) {
            if (sl_path_canonical(out, n, 0, again, &n2, NULL) != SL_PATH_OK ||
                n2 != n || memcmp(again, out, n) != 0)
                abort();
        }
        if (sl_match(&fz_config->upstreams[0], &call, &chk) != 0)
            abort();
        for (size_t i = 0; i < chk.nhits; i++)
            if (chk.hits[i].key == NULL)
                abort();
        sl_check_clear(&chk);
        /* The proxy matches past the prefix "/u"; the whole path stands in
         * for that rest here. */
        rc = sl_match_raw(&fz_config->upstreams[0], "POST", raw, len, fz_header, NULL, &chk);
        if (rc == SL_MATCH_BAD_PATH && len > 0 && raw[0] == '\\') {
            /* A target that starts with '\' is a path only to servers
             * that read '\' as '/': refused (the proxy answers 400). */
        } else if (rc == 0) {
            for (unsigned reading = 0; reading <= SL_READ_CANONICAL; reading++)
                fz_check_reading(raw, len, reading, &chk);
            sl_check_clear(&chk);
        } else if (rc != SL_MATCH_TOO_MANY) {
            abort();
        }
    }
    free(out);
    free(again);
    return 0;
}
