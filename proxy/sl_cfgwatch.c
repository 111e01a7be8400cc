/*
 * sl_cfgwatch — reload the configuration when its file changes.
 *
 * What must be noticed is not only a write to the file but every way a
 * deployment replaces it:
 *   - an editor or a configuration tool writes a new file beside it and
 *     renames it over (the old inode never changes);
 *   - Kubernetes mounts a ConfigMap as a directory in which the file is a
 *     symbolic link through "..data", itself a link to a timestamped
 *     directory; an update makes a new directory and swaps "..data" by a
 *     rename (the file's own link never changes);
 *   - a write in place (truncate and write: the file is briefly empty).
 * So the thread watches the file's *directory* with inotify (any entry
 * created, moved in, written and closed, removed or changed in attributes)
 * and, after each burst of events has been quiet for SL_CFGWATCH_SETTLE_MS,
 * compares what the path now resolves to (following every link) with what
 * it resolved to at the last load: its size and a hash of its bytes (a
 * touch, or the same bytes under a new inode, is no change). Only a
 * difference reloads; the reload is the
 * one SIGHUP runs (sl_proxy_reload), so a file that does not parse, or
 * changes what needs a restart, changes nothing and is logged, and the
 * next change is tried again. The directory is also checked every
 * SL_CFGWATCH_POLL_MS whatever inotify says, which covers file systems that
 * send no events (NFS, some overlay set-ups) and a directory that was
 * itself replaced.
 *
 * Threads: one watcher thread, which only reads the file and calls
 * sl_proxy_reload (serialised with SIGHUP and POST /reload by the proxy's
 * reload lock). sl_cfgwatch_stop wakes it through an eventfd and joins it.
 */
#include "sl_cfgwatch.h"

#include "sl_log.h"
#include "sl_proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#define SL_CFGWATCH_SETTLE_MS 200   /* quiet time after the last event */
#define SL_CFGWATCH_POLL_MS 5000    /* a check even when no event came */

/* What the configuration path resolved to when last looked at. */
struct sl_cfgwatch_id {
    bool exists;
    off_t size;
    uint64_t hash;               /* FNV-1a of the bytes */
};

struct sl_cfgwatch {
    struct sl_proxy *proxy;
    char *dir;                   /* the file's directory, as configured */
    int ino_fd;                  /* inotify, or -1 (polling only) */
    int stop_fd;                 /* eventfd: sl_cfgwatch_stop */
    pthread_t thread;
    struct sl_cfgwatch_id seen;     /* as of the last load or check */
};

/* Identify PATH's target now. */
static void sl_cfgwatch_identify(const char *path, struct sl_cfgwatch_id *id)
{
    struct stat st;
    unsigned char buf[8192];
    uint64_t h = 1469598103934665603ULL;
    ssize_t n;
    int fd;

    memset(id, 0, sizeof(*id));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return;
    }
    id->exists = true;
    id->size = st.st_size;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        for (ssize_t i = 0; i < n; i++)
            h = (h ^ buf[i]) * 1099511628211ULL;
    id->hash = h;
    close(fd);
}

/* The bytes decide: a touch, or the same bytes under a new inode (a
 * rename of an identical file, a ConfigMap update that changed another
 * key), is no change. */
static bool sl_cfgwatch_same(const struct sl_cfgwatch_id *a, const struct sl_cfgwatch_id *b)
{
    return a->exists == b->exists && a->size == b->size && a->hash == b->hash;
}

/* Reload if the file is not what it was. */
static void sl_cfgwatch_check(struct sl_cfgwatch *w)
{
    struct sl_cfgwatch_id now;
    struct sl_errors errs = {0};

    sl_cfgwatch_identify(w->proxy->config_path, &now);
    if (sl_cfgwatch_same(&now, &w->seen))
        return;
    w->seen = now;
    if (!now.exists) {
        /* Mid-swap, or removed: the running configuration keeps serving,
         * and the file's return is a change like any other. */
        sl_warn("config file %s: gone; the running configuration keeps serving",
                w->proxy->config_path);
        return;
    }
    sl_proxy_reload(w->proxy, NULL, "config file changed", &errs);
    sl_errors_free(&errs);
}

/* Drain the inotify queue; true if anything was read. */
static bool sl_cfgwatch_drain(int fd)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool any = false;

    while (read(fd, buf, sizeof(buf)) > 0)
        any = true;
    return any;
}

static void *sl_cfgwatch_main(void *arg)
{
    struct sl_cfgwatch *w = arg;
    bool pending = false;

    for (;;) {
        struct pollfd fds[2] = {{.fd = w->stop_fd, .events = POLLIN},
                                {.fd = w->ino_fd, .events = POLLIN}};
        int n = poll(fds, w->ino_fd >= 0 ? 2 : 1,
                     pending ? SL_CFGWATCH_SETTLE_MS : SL_CFGWATCH_POLL_MS);

        if (n < 0 && errno == EINTR)
            continue;
        if (fds[0].revents != 0)
            break;
        if (n > 0 && w->ino_fd >= 0 && (fds[1].revents & POLLIN)) {
            /* More events: wait for the burst to settle. */
            pending = sl_cfgwatch_drain(w->ino_fd) || pending;
            continue;
        }
        /* Quiet (after a burst, or for a poll interval): look. */
        pending = false;
        sl_cfgwatch_check(w);
    }
    return NULL;
}

struct sl_cfgwatch *sl_cfgwatch_start(struct sl_proxy *p)
{
    struct sl_cfgwatch *w = calloc(1, sizeof(*w));
    const char *slash;

    if (w == NULL) {
        sl_error("config file %s: cannot watch it: out of memory", p->config_path);
        return NULL;
    }
    w->proxy = p;
    w->ino_fd = -1;
    slash = strrchr(p->config_path, '/');
    w->dir = slash == NULL ? strdup(".")
             : slash == p->config_path ? strdup("/")
             : strndup(p->config_path, (size_t)(slash - p->config_path));
    w->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->dir == NULL || w->stop_fd < 0) {
        sl_error("config file %s: cannot watch it: %s", p->config_path,
                 w->dir == NULL ? "out of memory" : strerror(errno));
        goto fail;
    }
    w->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->ino_fd >= 0 &&
        inotify_add_watch(w->ino_fd, w->dir,
                          IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE |
                          IN_DELETE | IN_ATTRIB | IN_MODIFY) < 0) {
        sl_warn("config file %s: no change events for %s (%s); checking every "
                "%d s instead", p->config_path, w->dir, strerror(errno),
                SL_CFGWATCH_POLL_MS / 1000);
        close(w->ino_fd);
        w->ino_fd = -1;
    }
    /* The baseline: the file as it is now, just after the start's load
     * (a change in the instant between the two is seen at the next one). */
    sl_cfgwatch_identify(p->config_path, &w->seen);
    if (pthread_create(&w->thread, NULL, sl_cfgwatch_main, w) != 0) {
        sl_error("config file %s: cannot start its watcher thread", p->config_path);
        goto fail;
    }
    sl_info("config file %s: watched; a change reloads it", p->config_path);
    return w;
fail:
    if (w->ino_fd >= 0)
        close(w->ino_fd);
    if (w->stop_fd >= 0)
        close(w->stop_fd);
    free(w->dir);
    free(w);
    return NULL;
}

void sl_cfgwatch_stop(struct sl_cfgwatch *w)
{
    uint64_t one = 1;

    if (w == NULL)
        return;
    if (write(w->stop_fd, &one, sizeof(one)) != sizeof(one))
        sl_warn("config file watcher: cannot wake it to stop: %s", strerror(errno));
    pthread_join(w->thread, NULL);
    if (w->ino_fd >= 0)
        close(w->ino_fd);
    close(w->stop_fd);
    free(w->dir);
    free(w);
}
