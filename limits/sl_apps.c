/*
 * sl_apps — see sl_apps.h.  The table has twice as many slots as names can
 * ever be added (both pools), so a probe sequence always ends at an empty
 * slot.  A slot
 * goes from NULL to a name exactly once, under the mutex, published with a
 * release store; readers probe with acquire loads and never lock.
 */
#include "sl_apps.h"

#include "sl_log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct sl_app_name {
    uint16_t id;
    uint32_t hash;
    size_t len;
    char name[];
};

struct sl_apps {
    pthread_mutex_t lock;
    unsigned max;                         /* each pool's bound (max_apps) */
    unsigned seen;                        /* names added by calls */
    unsigned named;                       /* names added by configurations */
    _Atomic unsigned count;               /* ids handed out */
    bool warned;                          /* "too many apps" logged */
    size_t nslots;                        /* power of two, > 2 * (max + 2) */
    _Atomic(struct sl_app_name *) *slots; /* owned, with their names */
    struct sl_app_name **byid;            /* owned array; names owned by slots */
};

static uint32_t sl_apps_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

int sl_apps_valid(const char *name, size_t len)
{
    if (len == 0 || len > SL_APP_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || strchr("._:@/+-", c) != NULL) || c == 0)
            return 0;
    }
    return 1;
}

/* Add NAME as the next id.  Lock held; the caller checked there is room. */
static struct sl_app_name *sl_apps_insert(struct sl_apps *a, const char *name,
                                          size_t len, uint32_t hash)
{
    struct sl_app_name *n = malloc(sizeof(*n) + len + 1);
    size_t i = hash & (a->nslots - 1);

    if (n == NULL)
        return NULL;
    n->id = (uint16_t)atomic_load(&a->count);
    n->hash = hash;
    n->len = len;
    memcpy(n->name, name, len);
    n->name[len] = '\0';
    while (atomic_load_explicit(&a->slots[i], memory_order_relaxed) != NULL)
        i = (i + 1) & (a->nslots - 1);
    a->byid[n->id] = n;
    atomic_store_explicit(&a->slots[i], n, memory_order_release);
    atomic_store_explicit(&a->count, n->id + 1u, memory_order_release);
    return n;
}

static struct sl_app_name *sl_apps_find(struct sl_apps *a, const char *name,
                                        size_t len, uint32_t hash)
{
    size_t i = hash & (a->nslots - 1);
    struct sl_app_name *n;

    while ((n = atomic_load_explicit(&a->slots[i], memory_order_acquire)) != NULL) {
        if (n->hash == hash && n->len == len && memcmp(n->name, name, len) == 0)
            return n;
        i = (i + 1) & (a->nslots - 1);
    }
    return NULL;
}

struct sl_apps *sl_apps_new(unsigned max_apps)
{
    struct sl_apps *a = calloc(1, sizeof(*a));
    size_t want;

    if (a == NULL)
        return NULL;
    if (max_apps > (UINT16_MAX - 2) / 2)
        max_apps = (UINT16_MAX - 2) / 2;
    a->max = max_apps;
    want = 2 * ((size_t)SL_APPS_CAPACITY(max_apps)) + 1;
    a->nslots = 16;
    while (a->nslots < want)
        a->nslots *= 2;
    a->slots = calloc(a->nslots, sizeof(*a->slots));
    a->byid = calloc(SL_APPS_CAPACITY(max_apps), sizeof(*a->byid));
    pthread_mutex_init(&a->lock, NULL);
    if (a->slots == NULL || a->byid == NULL ||
        sl_apps_insert(a, "-", 1, sl_apps_hash("-", 1)) == NULL ||
        sl_apps_insert(a, "other", 5, sl_apps_hash("other", 5)) == NULL) {
        sl_apps_free(a);
        return NULL;
    }
    return a;
}

void sl_apps_free(struct sl_apps *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; a->slots != NULL && i < a->nslots; i++)
        free(atomic_load(&a->slots[i]));
    free(a->slots);
    free(a->byid);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

uint16_t sl_apps_id(struct sl_apps *a, const char *name, size_t len)
{
    uint32_t hash;
    struct sl_app_name *n;

    if (name == NULL || len == 0)
        return SL_APP_NONE;
    if (!sl_apps_valid(name, len))
        return SL_APP_OTHER;
    hash = sl_apps_hash(name, len);
    n = sl_apps_find(a, name, len, hash);
    if (n != NULL)
        return n->id;
    pthread_mutex_lock(&a->lock);
    n = sl_apps_find(a, name, len, hash);
    if (n == NULL && a->seen < a->max) {
        n = sl_apps_insert(a, name, len, hash);
        a->seen += n != NULL;
    }
    if (n == NULL && !a->warned) {
        a->warned = true;
        sl_warn("more than %u distinct apps: calls of new apps count as "
                "\"other\" (raise max_apps)", a->max);
    }
    pthread_mutex_unlock(&a->lock);
    return n != NULL ? n->id : SL_APP_OTHER;
}

int sl_apps_configure(struct sl_apps *a, const char *name, size_t len)
{
    uint32_t hash;
    struct sl_app_name *n;

    if (!sl_apps_valid(name, len))
        return -1;
    hash = sl_apps_hash(name, len);
    pthread_mutex_lock(&a->lock);
    n = sl_apps_find(a, name, len, hash);
    if (n == NULL && a->named < a->max) {
        n = sl_apps_insert(a, name, len, hash);
        a->named += n != NULL;
    }
    pthread_mutex_unlock(&a->lock);
    return n != NULL ? n->id : -1;
}

unsigned sl_apps_capacity(const struct sl_apps *a)
{
    return SL_APPS_CAPACITY(a->max);
}

const char *sl_apps_name(const struct sl_apps *a, uint16_t id)
{
    if (id >= atomic_load_explicit(&((struct sl_apps *)a)->count,
                                   memory_order_acquire))
        return "other";
    return a->byid[id]->name;
}

unsigned sl_apps_count(const struct sl_apps *a)
{
    return atomic_load_explicit(&((struct sl_apps *)a)->count, memory_order_acquire);
}
