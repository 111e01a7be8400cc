/*
 * fuzz_preset — libFuzzer target for preset expansion (sl_preset.c).
 *
 * An input is an upstream's own keys (a JSON object on the first line:
 * preset_params, rules, overrides) and, after the first newline, a preset
 * file.  The file is written to a scratch presets directory and the
 * upstream, with "preset" naming it, is expanded: whatever either holds,
 * the expansion must end in an object or in errors, never a crash or a
 * leak, and an expansion that succeeds must keep the user's name.
 *
 *   CC=clang cmake -S . -B build-fuzz -DSLUICE_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_preset
 *   build-fuzz/fuzz_preset -max_total_time=60 NEW_DIR tests/fuzz/corpus/preset
 */
#include "sl_config.h"
#include "sl_preset.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[64], path[128];
    const uint8_t *nl = memchr(data, '\n', size);
    size_t head = nl != NULL ? (size_t)(nl - data) : size;
    struct sl_errors errs = {0};
    char *report = NULL;
    json_t *u, *x;
    FILE *f;

    if (dir[0] == '\0') {
        snprintf(dir, sizeof(dir), "/tmp/fuzz_preset.XXXXXX");
        if (mkdtemp(dir) == NULL)
            abort();
        snprintf(path, sizeof(path), "%s/p.json", dir);
    }
    f = fopen(path, "w");
    if (f == NULL)
        abort();
    if (nl != NULL)
        fwrite(nl + 1, 1, size - head - 1, f);
    fclose(f);
    u = json_loadb((const char *)data, head, 0, NULL);
    if (!json_is_object(u)) {
        json_decref(u);
        u = json_object();
    }
    json_object_set_new(u, "name", json_string("u"));
    json_object_set_new(u, "preset", json_string("p"));
    x = sl_preset_expand(u, "upstreams[0]", dir, &report, &errs);
    if (x != NULL && errs.count == 0 &&
        (!json_is_object(x) ||
         !json_equal(json_object_get(x, "name"), json_object_get(u, "name"))))
        abort();
    free(report);
    json_decref(x);
    json_decref(u);
    sl_errors_free(&errs);
    return 0;
}
