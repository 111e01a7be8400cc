/*
 * fuzz_cluster — libFuzzer target for what a Redis Cluster node answers:
 * the slot map (CLUSTER SLOTS) and redirections (MOVED, ASK), and the
 * hash tag of a published room notice ("name" or "name#G").
 *
 * The first byte chooses.  Even: the rest, up to a NUL, is what follows
 * "MOVED " or "ASK ", and the inside of a tag.  Odd: the rest is RESP, read by hiredis's reader (as
 * a link reads it) into a reply, which is read as a slot map.  Beyond "no
 * crash, no leak", the properties routing relies on:
 *   - a redirection accepted has a slot 0..16383, a port 1..65535 and a
 *     host that fits, is not empty and has no space or control character;
 *   - a map accepted has ranges within 0..16383, first <= last, ports
 *     1..65535 and such hosts;
 *   - a tag accepted names an upstream (1 byte at least) and a group
 *     below SL_REDIS_GROUPS or none, and the tag written from those
 *     reads back the same.
 *
 *   CC=clang cmake -S . -B build-fuzz -DSLUICE_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_cluster
 *   build-fuzz/fuzz_cluster -max_total_time=60 NEW_DIR tests/fuzz/corpus/cluster
 */
#include "sl_redis_cluster.h"
#include "sl_redis_groups.h"

#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fz_check_host(const char *h)
{
    if (h == NULL || h[0] == '\0')
        abort();
    for (const char *p = h; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            abort();
}

static int fz_range(void *ctx, long long start, long long end, const char *host, int port)
{
    (void)ctx;
    if (start < 0 || end >= SL_REDIS_CLUSTER_SLOTS || start > end || port <= 0 || port > 65535)
        abort();
    fz_check_host(host);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if ((data[0] & 1) == 0) {
        char *s = malloc(size);
        char host[256];
        int slot = -1, port = -1;
        if (s == NULL)
            return 0;
        memcpy(s, data + 1, size - 1);
        s[size - 1] = '\0';
        if (sl_redis_cluster_parse_redirect(s, "seed.example", &slot, host, sizeof(host),
                                            &port)) {
            if (slot < 0 || slot >= SL_REDIS_CLUSTER_SLOTS || port <= 0 || port > 65535 ||
                strlen(host) >= sizeof(host))
                abort();
            fz_check_host(host);
        }
        size_t len = strlen(s), name_len, g;
        if (sl_redis_tag_parse(s, len, &name_len, &g)) {
            char tag[600], *name = strndup(s, name_len);
            size_t len2, g2;
            int n;
            if (name_len == 0 || name_len > len || (g != SIZE_MAX && g >= SL_REDIS_GROUPS) ||
                (g == SIZE_MAX) != (name_len == len) || name == NULL)
                abort();
            /* (-1: a name longer than TAG, refused as it should be) */
            n = sl_redis_tag(tag, sizeof(tag), name, g != SIZE_MAX, g);
            if (n >= 0 && name_len + 2 >= sizeof(tag))
                abort();
            if (n >= 0 && (n < 2 || tag[0] != '{' || tag[n - 1] != '}' ||
                !sl_redis_tag_parse(tag + 1, (size_t)n - 2, &len2, &g2) ||
                len2 != name_len || g2 != g))
                abort();
            free(name);
        }
        free(s);
        return 0;
    }
    /* hiredis 0.14's reader allocates an array's element pointers as the
     * header announces them, before any arrives: "*444444443" asks for
     * gigabytes.  A map is a few hundred elements; headers past 4096 are
     * not what is under test here (the parser is). */
    for (size_t i = 1; i + 1 < size; i++) {
        if ((data[i] == '*' || data[i] == '$') && data[i + 1] >= '0' && data[i + 1] <= '9') {
            unsigned long v = 0;
            for (size_t j = i + 1; j < size && data[j] >= '0' && data[j] <= '9' && v <= 4096; j++)
                v = v * 10 + (unsigned long)(data[j] - '0');
            if (v > 4096)
                return 0;
        }
    }
    redisReader *r = redisReaderCreate();
    void *rep = NULL;
    if (r == NULL)
        return 0;
    if (redisReaderFeed(r, (const char *)data + 1, size - 1) == REDIS_OK &&
        redisReaderGetReply(r, &rep) == REDIS_OK && rep != NULL) {
        (void)sl_redis_cluster_parse_map(rep, "seed.example", fz_range, NULL);
        freeReplyObject(rep);
    }
    redisReaderFree(r);
    return 0;
}
