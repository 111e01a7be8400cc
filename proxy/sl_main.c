/*
 * sl_main — the sluice command: parse arguments, load the configuration,
 * build the store, start one worker per core, wait for a signal.
 *
 * Signals are blocked in every thread and taken synchronously by the main
 * thread with sigwait(), so no handler ever runs inside a library call.
 * SIGTERM/SIGINT ask each worker to stop accepting and drain; SIGHUP
 * reloads the configuration file (sl_reload.c); SIGPIPE is ignored (a
 * client that vanished is an error return, not a death).
 */
#include "sl_proxy.h"

#include "sl_apps.h"
#include "sl_auth.h"
#include "sl_duration.h"
#include "sl_history.h"
#include "sl_log.h"
#include "sl_login_cache.h"
#include "sl_loop.h"
#include "sl_notify.h"
#include "sl_preset.h"
#include "sl_state.h"
#include "sl_cfgwatch.h"
#include "sl_time.h"

#include <getopt.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "0.0.0"
#endif

static void sl_usage(FILE *out)
{
    fprintf(out,
            "usage: sluice -c FILE [--check] [--watch-config]\n"
            "       sluice health [-c FILE] [--ready]\n"
            "                     (FILE: $SLUICE_CONFIG, else /etc/sluice/sluice.json;\n"
            "                     asks /healthz, or /readyz with --ready)\n"
            "\n"
            "A caller-side API quota proxy: forwards HTTP calls to configured\n"
            "upstreams and enforces their rate, concurrency and quota limits.\n"
            "\n"
            "  -c, --config FILE   configuration file (JSON)\n"
            "      --check         validate the configuration and exit:\n"
            "                      0 if valid, 1 with every error found\n"
            "  -w, --watch-config  reload the configuration when its file changes\n"
            "                      (edits, renames over it, Kubernetes' ConfigMap\n"
            "                      updates); SIGHUP reloads it either way\n"
            "  -v, --verbose       log debug lines too\n"
            "  -V, --version       print the version and exit\n"
            "  -h, --help          print this help and exit\n"
            "      --print-metrics print the reference of /metrics (Markdown,\n"
            "                      docs/metrics.md) and exit\n"
            "      --print-reference\n"
            "                      print the configuration reference (Markdown,\n"
            "                      docs/configuration.md) and exit\n"
            "      --print-preset NAME\n"
            "                      print provider preset NAME (its parameters,\n"
            "                      sources, notes and, given its required\n"
            "                      parameters, the expanded upstream) and exit\n"
            "      --preset-param NAME=VALUE\n"
            "                      a parameter for --print-preset (repeatable)\n"
            "\n"
            "Environment (the overrides apply when set and not empty):\n");
    /* The overrides come from the configuration's own tables. */
    sl_config_env_help(out);
    fprintf(out,
            "  %-22s the file `sluice health` reads\n"
            "  %-22s where response_spool files go (default /tmp)\n"
            "  %-22s time zone files (default /usr/share/zoneinfo)\n"
            "  %-22s shifts the wall clock by this much (tests only)\n"
            "  %-22s systemd's notify socket: readiness, reloads, stopping\n"
            "  %-22s systemd's watchdog interval: pinged at half of it\n"
            "  %-22s the process the watchdog is meant for\n",
            "SLUICE_CONFIG", "TMPDIR", "TZDIR", "SLUICE_TEST_WALL_OFFSET_MS",
            "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID");
}

/* Failing state writes, for logging them without flooding the log. */
struct sl_save_log {
    unsigned failures;            /* in a row */
    int64_t logged_at;            /* wall µs of the last line about them */
};

/*
 * Write the state file (main thread).  A write that fails (a full disk,
 * EFBIG past a file size limit, EIO) is never fatal: the previous file and
 * the journal keep every call, and the failure is logged at once, then at
 * most once a minute, and its end when a write works again.
 */
static void sl_save_state(struct sl_proxy *proxy, struct sl_state *st,
                          struct sl_save_log *sl)
{
    const struct sl_config *c = sl_proxy_config(proxy);
    int64_t now = sl_time_wall_us();
    uint64_t jfail;
    int jerr = 0;
    char why[512];

    if (sl_state_write(st, c, why, sizeof(why)) != 0) {
        if (sl->failures++ == 0 || now - sl->logged_at >= 60 * SL_USEC_PER_SEC) {
            sl_error("state_file: %s (%u write%s failed in a row; the previous file "
                     "and the journal are kept, calls are still served)", why,
                     sl->failures, sl->failures == 1 ? "" : "s");
            sl->logged_at = now;
        }
    } else if (sl->failures > 0) {
        sl_info("state_file %s: written again after %u failed write%s", c->state_file,
                sl->failures, sl->failures == 1 ? "" : "s");
        sl->failures = 0;
    }
    jfail = sl_state_journal_failures(st, &jerr);
    if (jfail > 0)
        sl_debug("state_file journal: %llu append%s failed since the last write (%s)",
                 (unsigned long long)jfail, jfail == 1 ? "" : "s", strerror(jerr));
    sl_config_unref(c);
}

/*
 * systemd's watchdog (WatchdogSec=): ping only if every worker's loop has
 * made a pass since the last look, and wake them all so that an idle one
 * makes a pass before the next. A worker stuck in a handler (a deadlock, a
 * runaway loop) stops its count: the pings stop and systemd restarts the
 * service, which is what the watchdog is for. SEEN: each loop's count at
 * the last look (zero at first: any count is a pass).
 */
static void sl_watchdog(struct sl_proxy *p, uint64_t *seen)
{
    int stuck = -1;

    for (int i = 0; i < p->nworkers; i++) {
        uint64_t n = sl_loop_passes(p->workers[i].loop);
        if (n == seen[i] && stuck < 0)
            stuck = i;
        seen[i] = n;
        sl_worker_wake(&p->workers[i]);
    }
    if (stuck < 0)
        sl_notify_watchdog();
    else
        sl_error("worker %d has made no pass since the last watchdog look: "
                 "systemd's watchdog is not fed", stuck);
}

static void sl_free_ids(struct sl_metric_ids *ids)
{
    for (size_t i = 0; i < ids->nups; i++)
        free(ids->ups[i]);
    for (size_t i = 0; i < ids->nslots; i++)
        free(ids->slots[i]);
    free(ids->ups);
    free(ids->slots);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'k'},
        {"watch-config", no_argument, NULL, 'w'},
        {"verbose", no_argument, NULL, 'v'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {"print-metrics", no_argument, NULL, 'M'},
        {"print-reference", no_argument, NULL, 'R'},
        {"print-preset", required_argument, NULL, 'P'},
        {"preset-param", required_argument, NULL, 'p'},
        {NULL, 0, NULL, 0},
    };
    const char *print_preset = NULL;
    const char *preset_params[64];
    size_t npreset_params = 0;
    const char *config_path = NULL;
    bool check_only = false, watch_config = false;
    int64_t watchdog_us, next_save_us, next_watchdog_us;
    uint64_t *passes_seen = NULL;   /* the watchdog's last look at each loop */
    struct sl_cfgwatch *watch = NULL;
    struct sl_errors errs = {0};
    struct sl_config *config = NULL;
    struct sl_proxy proxy = {0};
    const char *bad_app = NULL;
    sigset_t sigs;
    int opt, sig, started = 0, rc = 1;
    bool config_has_state = false;  /* state_file: a reload keeps it */
    struct sl_state *state = NULL;
    struct sl_save_log save_log = {0};
    const char *offset_ms;

    /* `sluice health`: a container's health check (sl_health.c). */
    if (argc >= 2 && strcmp(argv[1], "health") == 0) {
        const char *path = getenv("SLUICE_CONFIG");
        bool ready = false;
        for (int i = 2; i < argc; i++) {
            if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) &&
                i + 1 < argc) {
                path = argv[++i];
            } else if (strcmp(argv[i], "--ready") == 0) {
                ready = true;
            } else {
                sl_usage(stderr);
                return 2;
            }
        }
        return sl_health_main(path != NULL && *path ? path : "/etc/sluice/sluice.json",
                              ready);
    }
    while ((opt = getopt_long(argc, argv, "c:wvVh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'k':
            check_only = true;
            break;
        case 'w':
            watch_config = true;
            break;
        case 'v':
            sl_log_set_level(SL_LOG_DEBUG);
            break;
        case 'V':
            printf("sluice %s (libmicrohttpd %s, %s)\n", SLUICE_VERSION,
                   MHD_get_version(), curl_version());
            return 0;
        case 'h':
            sl_usage(stdout);
            return 0;
        case 'M':
            sl_metrics_reference(stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        case 'R':
            sl_config_reference(stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        case 'P':
            print_preset = optarg;
            break;
        case 'p':
            if (npreset_params == sizeof(preset_params) / sizeof(preset_params[0])) {
                fprintf(stderr, "sluice: at most 64 --preset-param\n");
                return 2;
            }
            preset_params[npreset_params++] = optarg;
            break;
        default:
            sl_usage(stderr);
            return 2;
        }
    }
    if (print_preset != NULL && optind == argc) {
        rc = sl_preset_print(print_preset, getenv("SLUICE_PRESETS_DIR"), preset_params,
                             npreset_params, stdout, stderr);
        return fflush(stdout) == 0 ? rc : 1;
    }
    if (npreset_params > 0 && print_preset == NULL) {
        fprintf(stderr, "sluice: --preset-param goes with --print-preset\n");
        return 2;
    }
    if (config_path == NULL || optind != argc) {
        sl_usage(stderr);
        return 2;
    }
    if (sl_config_load(config_path, true, &config, &errs) != 0) {
        fprintf(stderr, "sluice: %s: %zu error%s in the configuration:\n",
                config_path, errs.count, errs.count == 1 ? "" : "s");
        for (size_t i = 0; i < errs.count; i++)
            fprintf(stderr, "  %s\n", errs.lines[i]);
        sl_errors_free(&errs);
        return 1;
    }
    for (size_t i = 0; i < config->warnings.count; i++) {
        if (check_only)
            fprintf(stderr, "warning: %s\n", config->warnings.lines[i]);
        else
            sl_warn("%s: %s", config_path, config->warnings.lines[i]);
    }
    if (check_only) {
        for (size_t i = 0; i < config->nupstreams; i++)
            if (config->upstreams[i].preset_report != NULL)
                printf("%s\n", config->upstreams[i].preset_report);
        printf("%s: configuration is valid (%zu upstream%s%s)\n", config_path,
               config->nupstreams, config->nupstreams == 1 ? "" : "s",
               config->warnings.count > 0 ? "; see the warnings above" : "");
        sl_config_free(config);
        return 0;
    }

    /* Every thread created from here inherits this mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Past a file size limit (ulimit -f) a write fails with EFBIG and is
     * logged; the default action would end the process at every start. */
    signal(SIGXFSZ, SIG_IGN);
    /* For tests only: a wall clock stepped by this much (see
     * docs/operations.md). */
    offset_ms = getenv("SLUICE_TEST_WALL_OFFSET_MS");
    if (offset_ms != NULL && *offset_ms != '\0') {
        sl_time_set_wall_offset(strtoll(offset_ms, NULL, 10) * 1000);
        sl_warn("SLUICE_TEST_WALL_OFFSET_MS=%s: the wall clock is shifted (tests only)",
                offset_ms);
    }

    proxy.config = config;
    /* main()'s own reference: CONFIG stays readable here after reloads. */
    sl_config_ref(config);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        sl_error("cannot initialise libcurl");
        goto out;
    }
    proxy.config_path = config_path;
    pthread_mutex_init(&proxy.config_lock, NULL);
    pthread_mutex_init(&proxy.reload_lock, NULL);
    pthread_rwlock_init(&proxy.metrics_lock, NULL);
    sl_log_set_json(config->log_format == SL_LOG_FORMAT_JSON);
    proxy.started_ms = sl_time_wall_us() / 1000;
    config->loaded_ms = proxy.started_ms;
    atomic_store(&proxy.generation, config->generation);
    if (sl_proxy_metric_ids(&proxy, config) != 0) {
        sl_error("out of memory");
        goto out;
    }
    proxy.apps = sl_apps_new(config->max_apps);
    if (proxy.apps == NULL) {
        sl_error("out of memory");
        goto out;
    }
    if (sl_config_bind_apps(config, proxy.apps, &bad_app) != 0) {
        sl_error("apps: \"%s\" finds no id: the configuration names more than "
                 "max_apps (%u) apps", bad_app, config->max_apps);
        goto out;
    }
    proxy.history = sl_history_new(SL_HIST_RINGS_DEFAULT);
    if (proxy.history == NULL) {
        sl_error("out of memory");
        goto out;
    }
    proxy.login_cache = sl_login_cache_new();
    if (proxy.login_cache == NULL) {
        sl_error("the login cache could not be made (out of memory, or no "
                 "randomness from the kernel)");
        goto out;
    }
    proxy.memory = sl_store_memory_new(config, NULL, NULL);
    if (proxy.memory == NULL) {
        sl_error("cannot create the memory store");
        goto out;
    }
    if (config->state_file != NULL) {
        char why[512];
        struct sl_state_stats stats = {0};
        state = sl_state_open(config->state_file, proxy.memory, config, proxy.apps,
                              &stats, why, sizeof(why));
        if (state == NULL && stats.unwritable) {
            sl_error("state_file %s: %s; refusing to start: the windows could not "
                     "be kept (make its directory writable by sluice; under "
                     "systemd, StateDirectory= gives /var/lib/NAME)",
                     config->state_file, why);
            goto out;
        }
        if (state == NULL) {
            /* Starting empty would grant room the provider may refuse. */
            sl_error("state_file %s: %s; refusing to start with unknown counts "
                     "(move the file aside to start with empty windows)",
                     config->state_file, why);
            goto out;
        }
        if (stats.found)
            sl_info("state_file %s: restored %zu calls still inside their windows "
                    "(%zu from the journal)", config->state_file, stats.restored,
                    stats.journaled);
        else
            sl_info("state_file %s: none yet; starting with empty windows",
                    config->state_file);
        if (stats.clamped > 0)
            sl_warn("state_file %s: %zu send times lay after now (the wall clock "
                    "went back across a reboot?); counted as sent now",
                    config->state_file, stats.clamped);
        if (stats.skipped > 0)
            sl_warn("state_file %s: %zu journal bytes were no record (a write torn "
                    "by a crash, or damage) and were skipped", config->state_file,
                    stats.skipped);
        /* Fold the journals in before the first call. */
        sl_save_state(&proxy, state, &save_log);
    }
    config_has_state = config->state_file != NULL;
    proxy.nworkers = config->workers > 0 ? config->workers
                                         : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (proxy.nworkers < 1)
        proxy.nworkers = 1;
    proxy.workers = calloc((size_t)proxy.nworkers, sizeof(*proxy.workers));
    if (proxy.workers == NULL)
        goto out;
    /* Sized for any configuration a reload may bring. */
    proxy.waitlists = sl_waitlists_new(SL_MAX_UPSTREAMS, sl_apps_capacity(proxy.apps),
                                       sl_worker_wake_queue, &proxy);
    if (proxy.waitlists == NULL)
        goto out;
    if (sl_auth_create(&proxy, config) != 0) {
        sl_error("out of memory");
        goto out;
    }
    for (int i = 0; i < proxy.nworkers; i++) {
        if (sl_worker_init(&proxy.workers[i], &proxy, i) != 0) {
            sl_error("cannot start worker %d on %s", i, config->listen);
            sl_worker_cleanup(&proxy.workers[i]);
            goto stop;
        }
        if (sl_worker_start(&proxy.workers[i]) != 0) {
            sl_worker_cleanup(&proxy.workers[i]);
            goto stop;
        }
        started++;
    }
    if (sl_auth_start(&proxy, started) != 0)
        goto stop;
    if (config->store_kind == SL_STORE_REDIS) {
        char addr[600];
        sl_info("sluice %s listening on %s with %d worker%s, store redis%s %s "
                "(prefix \"%s\"), %zu upstream%s",
                SLUICE_VERSION, config->listen, proxy.nworkers,
                proxy.nworkers == 1 ? "" : "s",
                config->redis_use_tls ? " over TLS" : "",
                sl_config_store_address(config, addr, sizeof(addr)), config->store_prefix,
                config->nupstreams, config->nupstreams == 1 ? "" : "s");
    }
    else
        sl_info("sluice %s listening on %s with %d worker%s, store memory, "
                "%zu upstream%s",
                SLUICE_VERSION, config->listen, proxy.nworkers,
                proxy.nworkers == 1 ? "" : "s", config->nupstreams,
                config->nupstreams == 1 ? "" : "s");
    {
        char status[160];
        snprintf(status, sizeof(status), "serving on %s (configuration generation %llu)",
                 config->listen, (unsigned long long)config->generation);
        sl_notify_ready(status);
    }
    /* Without it (no inotify thread to be had), SIGHUP still reloads. */
    if (watch_config)
        watch = sl_cfgwatch_start(&proxy);
    /* The main thread keeps the state file (no worker ever waits for the
     * disk) and feeds systemd's watchdog; between the two it waits for
     * signals. */
    watchdog_us = sl_notify_watchdog_interval_us();
    if (watchdog_us > 0) {
        passes_seen = calloc((size_t)proxy.nworkers, sizeof(*passes_seen));
        if (passes_seen == NULL)
            watchdog_us = 0;
        else
            sl_info("systemd watchdog: pinged every %lld ms while every worker turns",
                    (long long)(watchdog_us / 1000));
    }
    next_watchdog_us = sl_time_mono_us();
    /* A snapshot was written just before the workers started. */
    next_save_us = next_watchdog_us + config->state_interval_us;
    for (;;) {
        /* A reload may change the interval (never the file). */
        const struct sl_config *cur = sl_proxy_config(&proxy);
        int64_t interval = cur->state_interval_us, now = sl_time_mono_us(), due = INT64_MAX;
        sl_config_unref(cur);
        if (config_has_state) {
            if (now >= next_save_us) {
                sl_save_state(&proxy, state, &save_log);
                next_save_us = now + interval;
            }
            due = next_save_us;
        }
        if (watchdog_us > 0) {
            if (now >= next_watchdog_us) {
                sl_watchdog(&proxy, passes_seen);
                next_watchdog_us = now + watchdog_us;
            }
            if (next_watchdog_us < due)
                due = next_watchdog_us;
        }
        if (due == INT64_MAX) {
            if (sigwait(&sigs, &sig) != 0)
                continue;
        } else {
            int64_t wait = due > now ? due - now : 0;
            struct timespec ts = {.tv_sec = wait / 1000000,
                                  .tv_nsec = (wait % 1000000) * 1000};
            sig = sigtimedwait(&sigs, NULL, &ts);
            if (sig < 0)
                continue;  /* something is due: the top of the loop does it */
        }
        if (sig == SIGHUP) {
            struct sl_errors errs = {0};
            sl_proxy_reload(&proxy, NULL, "SIGHUP", &errs);
            sl_errors_free(&errs);
            continue;
        }
        sl_info("%s received: finishing calls in flight",
                sig == SIGTERM ? "SIGTERM" : "SIGINT");
        sl_notify_stopping();
        break;
    }
    rc = 0;
stop:
    /* No reload may start while the workers stop. */
    sl_cfgwatch_stop(watch);
    /* No login starts or wakes a worker any more (calls still waiting for
     * one are answered as the workers stop). */
    sl_auth_stop(&proxy);
    for (int i = 0; i < started; i++)
        sl_worker_request_stop(&proxy.workers[i]);
    for (int i = 0; i < started; i++) {
        sl_worker_join(&proxy.workers[i]);
        sl_worker_cleanup(&proxy.workers[i]);
    }
    /* Every call has finished: the windows are complete. */
    if (config_has_state && started > 0)
        sl_save_state(&proxy, state, &save_log);
    if (rc == 0)
        sl_info("stopped");
out:
    sl_auth_destroy(&proxy);
    free(passes_seen);
    free(proxy.workers);
    sl_state_close(state);
    sl_waitlists_free(proxy.waitlists);
    sl_store_destroy(proxy.memory);
    sl_apps_free(proxy.apps);
    sl_history_free(proxy.history);
    sl_login_cache_free(proxy.login_cache);
    /* The proxy's reference and main()'s; every worker has dropped its own. */
    sl_config_unref(proxy.config);
    sl_config_unref(config);
    sl_free_ids(&proxy.ids);
    curl_global_cleanup();
    return rc;
}
