/*
 * sl_apps — the bounded set of app names a process tracks.
 *
 * Every call is charged to an app: the value of the configured identifying
 * header, or the client's address, or "-" when the call names none.  App
 * names reach status, metrics and the store's per-app usage, so the set is
 * bounded three ways: a name longer than SL_APP_NAME_MAX, or with a byte
 * outside [A-Za-z0-9._:@/+-], counts as "other"; so does every new name
 * once `max_apps` distinct names have come with calls (a warning is logged
 * once).  Names a configuration gives shares to come from a pool of their
 * own, also `max_apps` large: calls with made-up names can never take a
 * configured app's id, so its reservation cannot go to "other".
 *
 * Ids are small integers, stable for the life of the process: 0 is "-",
 * 1 is "other", then names in order of first sight.  Lookups are lock-free
 * (an open-addressing table of atomic pointers, written once); adding a
 * name takes a mutex.  Names are never removed, so a name pointer returned
 * here is valid until sl_apps_free().
 */
#ifndef SL_APPS_H
#define SL_APPS_H

#include <stddef.h>
#include <stdint.h>

#define SL_APP_NAME_MAX 64
#define SL_APP_NONE 0       /* "-": the call named no app */
#define SL_APP_OTHER 1      /* "other": invalid, or past max_apps */

struct sl_apps;

/* Ids an sl_apps of MAX_APPS can hand out: "-", "other", both pools. */
#define SL_APPS_CAPACITY(max_apps) (2u * (unsigned)(max_apps) + 2u)

/* A set of at most MAX_APPS names seen in calls and MAX_APPS configured
 * names, besides "-" and "other".  NULL: OOM. */
struct sl_apps *sl_apps_new(unsigned max_apps);
void sl_apps_free(struct sl_apps *apps);

/* The id of NAME (LEN bytes; NULL or empty: "-"), adding it if there is
 * room.  Thread-safe.  Never fails: SL_APP_OTHER is the answer of last
 * resort. */
uint16_t sl_apps_id(struct sl_apps *apps, const char *name, size_t len);

/* The id of a configured app NAME (LEN bytes), adding it to the
 * configured pool if it is not known yet.  Thread-safe.  Returns the id,
 * or -1 when NAME is not a valid app name or the pool is full (the names
 * of every configuration since start count). */
int sl_apps_configure(struct sl_apps *apps, const char *name, size_t len);

/* Every id this set can hand out (ids are below it). */
unsigned sl_apps_capacity(const struct sl_apps *apps);

/* The name of ID ("other" for an unknown id). */
const char *sl_apps_name(const struct sl_apps *apps, uint16_t id);

/* Ids handed out so far (names 0 .. count-1 are valid). */
unsigned sl_apps_count(const struct sl_apps *apps);

/* Can NAME be an app name as it is? */
int sl_apps_valid(const char *name, size_t len);

#endif
