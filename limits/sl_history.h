/*
 * sl_history — calls per minute per app over the last 24 hours, per rule.
 *
 * The operator's question is "who burned the quota, and when".  The store
 * answers "how much is left now"; this module keeps what it forgets: for
 * every rate rule, a ring of SL_HIST_MINUTES minute slots, each holding
 * the calls sent in that minute split by app.  A slot has columns for the
 * first SL_HIST_APPS apps that sent a call in its minute and one more,
 * "other", for the rest, so a slot is a fixed 72 bytes whatever the number
 * of apps, and a ring is 1,440 x 72 = 103,680 bytes.  Rings are made on a
 * rule's first call, for at most max_rings rules (ids at or past it are
 * not recorded), so the whole history is at most max_rings x 101 KiB
 * (SL_HIST_RINGS_DEFAULT: 128 rules, 12.7 MiB; three rules: 304 KiB).
 * A `per` rule's ring counts every call of the rule, whatever its key:
 * the rule's total, which is what the provider's account spends.
 *
 * Time is a number of whole minutes since the Unix epoch, taken from the
 * `now` every function is given (Unix ms): the module reads no clock and
 * does no I/O.  A slot whose minute is older than the last 1,440 is reused
 * by the minute that maps onto it, so old minutes vanish by themselves.
 *
 * Each slot also remembers how much of each column was handed out by
 * sl_history_unsent() (to be written to a store shared by several
 * instances, where every instance's calls add up in one history), so each
 * call is handed out once.
 *
 * Locking: one mutex per ring, held for one slot update, one 101 KiB copy
 * (sl_history_copy) or one scan of unsent counts; never while formatting.
 * Every function is thread-safe.
 */
#ifndef SL_HISTORY_H
#define SL_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SL_HIST_MINUTES 1440        /* 24 hours of minute slots */
#define SL_HIST_APPS 6              /* app columns per minute, besides other */
#define SL_HIST_OTHER SL_HIST_APPS  /* the column of every further app */
#define SL_HIST_RINGS_DEFAULT 128   /* rules with a history, at most */

struct sl_apps;
struct sl_history;

/* One minute of one rule. */
struct sl_hist_slot {
    int32_t minute;                   /* Unix minute held (fits until 6053); 0: never */
    uint16_t app[SL_HIST_APPS];       /* column i's app id (sl_apps) */
    uint32_t n[SL_HIST_APPS + 1];     /* calls per column, [SL_HIST_OTHER]: other */
    uint32_t sent[SL_HIST_APPS + 1];  /* of which handed out as unsent */
};

/* A history of at most MAX_RINGS rings (ids 0 .. MAX_RINGS - 1).  NULL:
 * out of memory. */
struct sl_history *sl_history_new(size_t max_rings);
void sl_history_free(struct sl_history *h);

/* Bytes held by rings now (for tests and stats). */
size_t sl_history_bytes(const struct sl_history *h);

/*
 * Count N calls of app APP (an sl_apps id) sent at NOW_MS (Unix ms) in
 * ring RING.  Returns 0, 1 when RING is past max_rings (not recorded), or
 * -1 when out of memory (not recorded).
 */
int sl_history_add(struct sl_history *h, size_t ring, uint16_t app,
                   int64_t now_ms, uint32_t n);

/*
 * Copy ring RING's minutes of the last SL_HIST_MINUTES at NOW_MS that hold
 * calls into OUT (room for SL_HIST_MINUTES), oldest first.  Returns how
 * many (0 for a ring never used).
 */
size_t sl_history_copy(struct sl_history *h, size_t ring, int64_t now_ms,
                       struct sl_hist_slot *out);

/* Calls of one app in one minute not yet handed out. */
struct sl_hist_delta {
    int64_t minute;
    uint16_t app;                     /* sl_apps id; SL_HIST_OTHER_APP: other */
    uint32_t n;
};
#define SL_HIST_OTHER_APP UINT16_MAX

/*
 * Hand out up to MAX of ring RING's counts not handed out before (within
 * the last SL_HIST_MINUTES at NOW_MS), marking them handed out.  Returns
 * how many were written to OUT.  Counts of minutes that left the ring
 * before being handed out are lost.
 */
size_t sl_history_unsent(struct sl_history *h, size_t ring, int64_t now_ms,
                         struct sl_hist_delta *out, size_t max);

/* Does ring RING hold counts not yet handed out? */
bool sl_history_dirty(struct sl_history *h, size_t ring);

/* ---- a history as the operator reads it: minutes x app names ---- */

struct sl_hist_cell {
    int64_t minute;
    size_t name;                      /* index into names */
    uint64_t n;
};

/* One rule's history, from a ring or from the shared store. */
struct sl_hist_view {
    char **names;                     /* owned, distinct app names */
    size_t nnames, capnames;
    struct sl_hist_cell *cells;       /* owned, minute ascending */
    size_t ncells, capcells;
};

/* Add N calls of app NAME in MINUTE (minutes ascending, or equal to the
 * last one's).  Returns 0 or -1 (out of memory). */
int sl_hist_view_add(struct sl_hist_view *v, int64_t minute, const char *name,
                     uint64_t n);
/* Sort V's cells by minute (for a store that answers out of order). */
void sl_hist_view_sort(struct sl_hist_view *v);
void sl_hist_view_clear(struct sl_hist_view *v);

/*
 * Ring RING's last SL_HIST_MINUTES at NOW_MS into V (empty), app ids named
 * by APPS ("other" for the other column).  Returns 0 or -1 (out of
 * memory; V is then cleared).
 */
int sl_history_view(struct sl_history *h, size_t ring, int64_t now_ms,
                    const struct sl_apps *apps, struct sl_hist_view *v);

#endif
