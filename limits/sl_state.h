/*
 * sl_state — the memory store's windows and provider pauses in a file, so
 * that a restart, a crash or a redeploy never grants room the provider
 * would refuse ("state_file").
 *
 * The file is written whole, atomically (a temporary file beside it,
 * fsync, rename, fsync of the directory), so a crash leaves the previous
 * or the new file, never half of one.  It is self-checking: a magic and a
 * version, the payload's length and a 64-bit FNV-1a hash of it; anything
 * that does not check out is refused, never half-trusted.
 *
 * What is kept: every rate bucket's send times (wall-clock microseconds,
 * the only clock that means anything across a reboot) and their apps, and
 * each upstream's running pause with its reason.  Buckets are named by
 * (upstream name, rule name, per value): on loading, a rule that no longer
 * exists is forgotten, a window that shrank keeps only what is inside it,
 * a limit that fell keeps the newest `limit` calls.  Concurrency slots,
 * reservations and the provider's usage reports are not kept: their calls
 * ended with the process.
 */
#ifndef SL_STATE_H
#define SL_STATE_H

#include <stddef.h>
#include <stdint.h>

struct sl_store;
struct sl_config;
struct sl_apps;

/* Write MEMORY's state to PATH.  Returns 0, or -1 with a sentence in ERR. */
int sl_state_save(struct sl_store *memory, const struct sl_config *config,
                  const struct sl_apps *apps, const char *path, char *err,
                  size_t errlen);

/*
 * Read PATH into MEMORY (a store just created from CONFIG).  Returns 1
 * (loaded; *RESTORED calls), 0 (no such file: nothing to restore), or -1
 * with a sentence in ERR when the file cannot be read or trusted (then
 * MEMORY is unchanged).
 */
int sl_state_load(struct sl_store *memory, const struct sl_config *config,
                  struct sl_apps *apps, const char *path, size_t *restored,
                  char *err, size_t errlen);

/* The same for a file's bytes (the fuzzer's entry).  MEMORY may be NULL:
 * check only. */
int sl_state_parse(const unsigned char *buf, size_t len, struct sl_store *memory,
                   const struct sl_config *config, struct sl_apps *apps,
                   size_t *restored, char *err, size_t errlen);

#endif
