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
 *     and every capture lies inside the path.
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
        struct sl_call call = {"POST", out, n, fz_header, NULL, trailing};
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
    }
    free(out);
    free(again);
    return 0;
}
