/*
 * fuzz_redis_url — libFuzzer target for the store URL reader.
 *
 * Arbitrary bytes (up to the first NUL) are read as a store URL.  Beyond
 * "no crash, no leak", the properties the store relies on:
 *   - a refused URL leaves nothing set and gives a sentence;
 *   - an accepted one has 1..16 hosts (exactly 1 for redis://), each a
 *     non-empty host without '/', '@', '?', '#', '[', ']' or a control
 *     character, ports 1..65535, a master name exactly for Sentinels, a
 *     database 0 for Clusters and within bounds otherwise;
 *   - written back (sl_redis_url_format) it reads back to the same thing.
 *
 *   CC=clang cmake -S . -B build-fuzz -DSLUICE_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_redis_url
 *   build-fuzz/fuzz_redis_url -max_total_time=60 NEW_DIR tests/fuzz/corpus/redis_url
 */
#include "sl_redis_url.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool fz_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void fz_check_host(const char *h)
{
    if (h == NULL || h[0] == '\0')
        abort();
    for (const char *p = h; *p; p++)
        if ((unsigned char)*p < 0x21 || *p == 0x7f || strchr("/@?#[]", *p) != NULL)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = malloc(size + 1);
    struct sl_redis_url u, back;
    const char *why = NULL;

    if (url == NULL)
        abort();
    memcpy(url, data, size);
    url[size] = '\0';
    if (sl_redis_url_parse(url, &u, &why) != 0) {
        if (why == NULL || u.user != NULL || u.password != NULL || u.master != NULL ||
            u.naddrs != 0)
            abort();
        free(url);
        return 0;
    }
    if (u.naddrs < 1 || u.naddrs > SL_REDIS_URL_MAX_HOSTS ||
        (u.kind == SL_REDIS_URL_SINGLE && u.naddrs != 1))
        abort();
    for (size_t i = 0; i < u.naddrs; i++) {
        fz_check_host(u.addrs[i].host);
        if (u.addrs[i].port < 1 || u.addrs[i].port > 65535)
            abort();
    }
    if ((u.kind == SL_REDIS_URL_SENTINEL) != (u.master != NULL) ||
        (u.master != NULL && u.master[0] == '\0'))
        abort();
    if (u.db < 0 || u.db > SL_REDIS_URL_DB_MAX || (u.kind == SL_REDIS_URL_CLUSTER && u.db != 0))
        abort();
    if (u.user != NULL && u.password == NULL)
        abort();

    {
        size_t n = sl_redis_url_format(&u, true, NULL, 0);
        char *buf = malloc(n + 1);
        if (buf == NULL)
            abort();
        if (sl_redis_url_format(&u, true, buf, n + 1) != n || strlen(buf) != n)
            abort();
        if (sl_redis_url_parse(buf, &back, &why) != 0)
            abort();
        if (back.kind != u.kind || back.tls != u.tls || back.db != u.db ||
            back.naddrs != u.naddrs || !fz_same(back.user, u.user) ||
            !fz_same(back.password, u.password) || !fz_same(back.master, u.master))
            abort();
        for (size_t i = 0; i < u.naddrs; i++)
            if (strcmp(back.addrs[i].host, u.addrs[i].host) != 0 ||
                back.addrs[i].port != u.addrs[i].port)
                abort();
        sl_redis_url_clear(&back);
        free(buf);
    }
    sl_redis_url_clear(&u);
    free(url);
    return 0;
}
