/*
 * sl_cfgwatch — reloading the configuration when its file changes
 * (`sluice --watch-config`).
 *
 * See sl_cfgwatch.c for how a change is noticed. One thread per process,
 * started after the workers and stopped before them.
 */
#ifndef SL_CFGWATCH_H
#define SL_CFGWATCH_H

struct sl_proxy;
struct sl_cfgwatch;

/* Start watching P's configuration file. NULL with a logged reason when it
 * cannot be watched (the caller keeps serving: SIGHUP still reloads). */
struct sl_cfgwatch *sl_cfgwatch_start(struct sl_proxy *p);

/* Stop the thread and free W (NULL is fine). */
void sl_cfgwatch_stop(struct sl_cfgwatch *w);

#endif
