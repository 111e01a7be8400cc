/*
 * sl_state — the memory store's windows and provider pauses on disk, so
 * that no restart, crash, crash loop or clock step grants room the
 * provider would refuse ("state_file").
 *
 * Two files, side by side:
 *
 *  - the snapshot, STATE: every rate window and running pause, written
 *    whole every `state_interval` and at stop, atomically (a temporary
 *    file of an unpredictable name created exclusively beside it, fsync,
 *    rename, fsync of the directory), so a crash leaves the previous or
 *    the new file, never half of one.  Self-checking: a magic and a
 *    version, the payload's length and a 64-bit FNV-1a hash of it;
 *    anything that does not check out is refused, never half-trusted.
 *
 *  - the journal, STATE.journal: one small record per sent call (its
 *    buckets and their stamps), appended with one write(2) under a mutex
 *    at the moment the memory store logs the call, before its first byte
 *    goes upstream.  A write lands in the page cache, which outlives the
 *    process: a kill -9, an OOM kill or a crash loses nothing.  It is not
 *    fsynced: across a power loss what the kernel had not written back
 *    (by default up to ~30 s) is lost, and the snapshot (one interval) is
 *    what holds.
 *
 * A state write folds the journal into the snapshot: the live journal is
 * renamed STATE.journal.old and a fresh one put in its place (writers move
 * to it under the mutex), then the windows are exported and the snapshot
 * written, then STATE.journal.old is removed.  Every record in the old
 * journal was written, under its table's lock, after its call was logged
 * and before the export took that lock, so the snapshot has it; a record
 * in the new journal may be in the snapshot too.  Loading therefore
 * matches journal records against the snapshot by stamp (stamps within a
 * bucket are unique, see sl_store_memory.c) and counts each call once.  A
 * crash at any point of the rotation leaves files that load to every call
 * sent: old snapshot + old journal + new journal, or new snapshot + (old
 * journal, all matched) + new journal.
 *
 * Clocks.  Stamps are the store's CLOCK_MONOTONIC microseconds, saved
 * with the boot id (/proc/sys/kernel/random/boot_id) and the wall and
 * monotonic clocks read together.  Loaded in the same boot, a stamp is
 * used as it is: a step of the wall clock between save and load changes
 * nothing.  Across a reboot the wall clock is all there is: a stamp
 * becomes its wall time on the new monotonic clock, and one that lands in
 * the future (the clock went back) counts as sent now.  A time that is
 * out of any genuine range (more than SL_STATE_MAX_AGE before its save, a
 * pause longer than the provider may ask for) refuses the file.
 *
 * What is kept: every rate bucket's send times and their apps, and each
 * upstream's running pause with its reason.  Buckets are named by
 * (upstream name, rule name, per value): on loading, a rule that no longer
 * exists is forgotten, a window that shrank keeps only what is inside it,
 * a limit that fell keeps the newest `limit` calls.  Concurrency slots,
 * reservations and the provider's usage reports are not kept: their calls
 * ended with the process.
 */
#ifndef SL_STATE_H
#define SL_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sl_store;
struct sl_config;
struct sl_apps;

/* Oldest send time a genuine file can hold, before its save. */
#define SL_STATE_MAX_AGE (400ll * 86400 * 1000000)

/* The clocks a file is written or read on. */
struct sl_state_clock {
    unsigned char boot_id[16];  /* this boot's id; all zero: unknown (a
                                 * test clock, or no /proc) */
    int64_t wall;               /* wall-clock µs since the epoch */
    int64_t store;              /* the memory store's clock, µs */
};

/* The clocks now, for MEMORY (its boot id only if it runs on
 * CLOCK_MONOTONIC). */
void sl_state_clock_now(struct sl_store *memory, struct sl_state_clock *now);

/* What a load found. */
struct sl_state_stats {
    bool found;             /* a snapshot or a journal was there */
    size_t restored;        /* calls logged again */
    size_t journaled;       /* ... of which only the journal knew */
    size_t clamped;         /* send times after now, counted as now */
    size_t skipped;         /* journal bytes that were no record (a torn
                             * last write, damage) */
    bool unwritable;        /* the failure was writing beside the file (a
                             * missing or read-only directory), not its
                             * contents */
};

/* ---- the state file with its journal (the proxy's interface) ---- */

struct sl_state;

/*
 * Read PATH and its journals into MEMORY (a store just created from
 * CONFIG), then journal every call MEMORY logs from now on.  Returns the
 * state, or NULL with a sentence in ERR when a file cannot be read or
 * trusted (MEMORY is then unchanged).  Call before any worker starts.
 */
struct sl_state *sl_state_open(const char *path, struct sl_store *memory,
                               const struct sl_config *config, struct sl_apps *apps,
                               struct sl_state_stats *stats, char *err,
                               size_t errlen);

/*
 * Write the snapshot and fold the journal into it (main thread only).
 * Returns 0, or -1 with a sentence in ERR (the previous snapshot and every
 * journal are kept: nothing is lost, the journal just grows).
 */
int sl_state_write(struct sl_state *st, const struct sl_config *config, char *err,
                   size_t errlen);

/* Journal appends that failed since the last call (and the errno of the
 * last one); the failures themselves are logged as they happen, at most
 * once a minute. */
uint64_t sl_state_journal_failures(struct sl_state *st, int *last_errno);

/* Stop journaling and free ST (after the workers stopped). */
void sl_state_close(struct sl_state *st);

/* ---- one snapshot, without a journal (tests, tools) ---- */

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

/*
 * The pure core: a snapshot's bytes SNAP (NULL: none) and a journal's
 * JOURNAL (NULL: none) applied to MEMORY (NULL: check only) as of NOW.
 * Returns 0, or -1 with ERR when the snapshot is refused (MEMORY is then
 * unchanged).  Journal bytes that are no record are skipped and counted.
 */
int sl_state_apply(const unsigned char *snap, size_t snap_len,
                   const unsigned char *journal, size_t journal_len,
                   struct sl_store *memory, const struct sl_config *config,
                   struct sl_apps *apps, const struct sl_state_clock *now,
                   struct sl_state_stats *stats, char *err, size_t errlen);

/* A snapshot's bytes alone, on the clocks now (the fuzzer's old entry). */
int sl_state_parse(const unsigned char *buf, size_t len, struct sl_store *memory,
                   const struct sl_config *config, struct sl_apps *apps,
                   size_t *restored, char *err, size_t errlen);

/* ---- building blocks, exposed for tests and the fuzzer ---- */

/* Serialize one journal record into BUF (CAP bytes).  Returns its length,
 * or 0 when it does not fit. */
struct sl_mem_sent_slot;
size_t sl_state_journal_record(unsigned char *buf, size_t cap,
                               const struct sl_state_clock *at, const char *upstream,
                               const char *app, const struct sl_mem_sent_slot *slots,
                               size_t n);

/* Wrap PAYLOAD into a snapshot with a valid header (BUF has room for
 * len + 28 bytes). */
size_t sl_state_seal(unsigned char *buf, const unsigned char *payload, size_t len);

#endif
