/*
 * fuzz_state — libFuzzer target for the state file reader.
 *
 * Arbitrary bytes are read as a state file against a fixed configuration
 * and applied to a fresh memory store, so ASan and UBSan see every path of
 * the checker and the loader.  The reader promises: a file it accepts
 * restores no more calls per bucket than its rule's limit, and one it
 * refuses changes nothing (the store holds no bucket afterwards).
 *
 * The first byte chooses how the rest is read.  Bit 0: as a snapshot
 * whose header (length, checksum) is made valid first, so that the fuzzer
 * reaches the payload's times and records, which a forged file with a
 * good checksum would (a random checksum is never right).  Bit 1: as a
 * journal instead (records are checked one by one, never refused).  Bit
 * 2: on a clock of the same boot as the file (else another boot's).
 *
 *   CC=clang cmake -S . -B build-fuzz -DSLUICE_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_state
 *   build-fuzz/fuzz_state -max_total_time=60 NEW_DIR tests/fuzz/corpus/state
 */
#include "sl_apps.h"
#include "sl_config.h"
#include "sl_state.h"
#include "sl_store.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char sl_fuzz_config[] =
    "{\"upstreams\": [{\"name\": \"crm\", \"prefix\": \"/crm\", \"url\": \"http://x\","
    "\"rules\": [{\"name\": \"daily\", \"limit\": 5, \"window\": \"1d\"},"
    "{\"name\": \"per\", \"per\": \"header:X-A\", \"limit\": 3, \"window\": \"1h\"},"
    "{\"name\": \"c\", \"concurrency\": 2}]}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct sl_config *config;
    struct sl_errors errs = {0};
    struct sl_state_clock now = {{0}, 1800000000LL * 1000000, 1000000};
    struct sl_store *memory;
    struct sl_apps *apps;
    unsigned char *buf = NULL;
    unsigned mode;
    char err[512];
    int rc;

    if (config == NULL && sl_config_parse(sl_fuzz_config, "fuzz", false, &config,
                                          &errs) != 0)
        __builtin_trap();
    if (size < 1)
        return 0;
    mode = data[0];
    data++;
    size--;
    if (mode & 4)
        memset(now.boot_id, 0, sizeof(now.boot_id));  /* files say zero too */
    else
        memcpy(now.boot_id, "fuzzfuzzfuzzfuzz", 16);
    if ((mode & 3) == 1 && size >= 28) {
        buf = malloc(size);
        if (buf == NULL)
            return 0;
        sl_state_seal(buf, data + 28, size - 28);
        data = buf;
    }
    memory = sl_store_memory_new(config, NULL, NULL);
    apps = sl_apps_new(8);
    if (mode & 2) {
        rc = sl_state_apply(NULL, 0, data, size, memory, config, apps, &now, NULL,
                            err, sizeof(err));
        if (rc != 0)
            __builtin_trap();  /* a journal is never refused */
    } else {
        rc = sl_state_apply(data, size, NULL, 0, NULL, config, apps, &now, NULL, err,
                            sizeof(err));
        if (rc == 0)
            rc = sl_state_apply(data, size, NULL, 0, memory, config, apps, &now, NULL,
                                err, sizeof(err));
        if (rc != 0 && sl_store_memory_keys(memory) != 0)
            __builtin_trap();  /* refused, yet something was applied */
    }
    sl_store_destroy(memory);
    sl_apps_free(apps);
    free(buf);
    return 0;
}
