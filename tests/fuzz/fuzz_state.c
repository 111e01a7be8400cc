/*
 * fuzz_state — libFuzzer target for the state file reader.
 *
 * Arbitrary bytes are read as a state file against a fixed configuration
 * and applied to a fresh memory store, so ASan and UBSan see every path of
 * the checker and the loader.  The reader promises: a file it accepts
 * restores no more calls per bucket than its rule's limit, and one it
 * refuses changes nothing (the store holds no bucket afterwards).
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
    struct sl_store *memory;
    struct sl_apps *apps;
    size_t restored = 0;
    char err[512];
    int rc;

    if (config == NULL && sl_config_parse(sl_fuzz_config, "fuzz", false, &config,
                                          &errs) != 0)
        __builtin_trap();
    memory = sl_store_memory_new(config, NULL, NULL);
    apps = sl_apps_new(8);
    rc = sl_state_parse(data, size, memory, config, apps, &restored, err, sizeof(err));
    if (rc != 0 && sl_store_memory_keys(memory) != 0)
        __builtin_trap();  /* refused, yet something was applied */
    sl_store_destroy(memory);
    sl_apps_free(apps);
    return 0;
}
