/*
 * sl_history — see sl_history.h.
 *
 * The ring of a minute M is slot M mod SL_HIST_MINUTES; the slot records
 * which minute it holds, so a slot left over from a day ago is recognised
 * and cleared by the first call of the minute that reuses it, and readers
 * skip it.  Rings are reached through an array of atomic pointers sized
 * once (max_rings): a ring is made under the history's mutex the first
 * time its rule sends a call, published with a release store, and never
 * moved or freed before sl_history_free(), so the hot path (a worker
 * committing a call) takes only its ring's mutex, for one slot.
 */
#include "sl_history.h"

#include "sl_apps.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct sl_hist_ring {
    pthread_mutex_t lock;
    bool dirty;                         /* counts not yet handed out */
    struct sl_hist_slot slots[SL_HIST_MINUTES];
};

struct sl_history {
    pthread_mutex_t lock;               /* making rings */
    size_t max_rings;
    _Atomic(struct sl_hist_ring *) *rings;  /* owned, max_rings of them */
    _Atomic size_t nrings;              /* rings made */
};

static int64_t sl_hist_minute_of(int64_t ms)
{
    /* Floor division: a negative time (a test's clock) still maps to one
     * minute. */
    return ms >= 0 ? ms / 60000 : -((-ms + 59999) / 60000);
}

static size_t sl_hist_index(int64_t minute)
{
    int64_t i = minute % SL_HIST_MINUTES;
    return (size_t)(i < 0 ? i + SL_HIST_MINUTES : i);
}

struct sl_history *sl_history_new(size_t max_rings)
{
    struct sl_history *h = calloc(1, sizeof(*h));

    if (h == NULL)
        return NULL;
    h->rings = calloc(max_rings ? max_rings : 1, sizeof(*h->rings));
    if (h->rings == NULL) {
        free(h);
        return NULL;
    }
    h->max_rings = max_rings;
    pthread_mutex_init(&h->lock, NULL);
    return h;
}

void sl_history_free(struct sl_history *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->max_rings; i++) {
        struct sl_hist_ring *r = atomic_load(&h->rings[i]);
        if (r != NULL) {
            pthread_mutex_destroy(&r->lock);
            free(r);
        }
    }
    pthread_mutex_destroy(&h->lock);
    free(h->rings);
    free(h);
}

size_t sl_history_bytes(const struct sl_history *h)
{
    return atomic_load(&((struct sl_history *)h)->nrings) * sizeof(struct sl_hist_ring);
}

/* Ring ID, or NULL when it was never used (and MAKE is false), is past
 * max_rings, or cannot be made. */
static struct sl_hist_ring *sl_hist_ring(struct sl_history *h, size_t id, bool make)
{
    struct sl_hist_ring *r;

    if (id >= h->max_rings)
        return NULL;
    r = atomic_load_explicit(&h->rings[id], memory_order_acquire);
    if (r != NULL || !make)
        return r;
    pthread_mutex_lock(&h->lock);
    r = atomic_load_explicit(&h->rings[id], memory_order_acquire);
    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r != NULL) {
            pthread_mutex_init(&r->lock, NULL);
            atomic_store_explicit(&h->rings[id], r, memory_order_release);
            atomic_fetch_add(&h->nrings, 1);
        }
    }
    pthread_mutex_unlock(&h->lock);
    return r;
}

int sl_history_add(struct sl_history *h, size_t ring, uint16_t app,
                   int64_t now_ms, uint32_t n)
{
    int64_t m = sl_hist_minute_of(now_ms);
    struct sl_hist_ring *r;
    struct sl_hist_slot *s;
    size_t col;

    if (ring >= h->max_rings)
        return 1;
    r = sl_hist_ring(h, ring, true);
    if (r == NULL)
        return -1;
    pthread_mutex_lock(&r->lock);
    s = &r->slots[sl_hist_index(m)];
    if (s->minute > m) {
        /* A day older than what the slot holds now: out of the ring. */
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    if (s->minute != m) {
        memset(s, 0, sizeof(*s));
        s->minute = (int32_t)m;
    }
    for (col = 0; col < SL_HIST_APPS; col++) {
        if (s->n[col] == 0) {
            s->app[col] = app;
            break;
        }
        if (s->app[col] == app)
            break;
    }
    /* col == SL_HIST_OTHER when every column is another app's. */
    s->n[col] = s->n[col] > UINT32_MAX - n ? UINT32_MAX : s->n[col] + n;
    r->dirty = true;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static bool sl_hist_slot_used(const struct sl_hist_slot *s)
{
    for (size_t c = 0; c <= SL_HIST_APPS; c++)
        if (s->n[c] > 0)
            return true;
    return false;
}

size_t sl_history_copy(struct sl_history *h, size_t ring, int64_t now_ms,
                       struct sl_hist_slot *out)
{
    struct sl_hist_ring *r = sl_hist_ring(h, ring, false);
    int64_t last = sl_hist_minute_of(now_ms);
    size_t n = 0;

    if (r == NULL)
        return 0;
    pthread_mutex_lock(&r->lock);
    for (int64_t m = last - SL_HIST_MINUTES + 1; m <= last; m++) {
        const struct sl_hist_slot *s = &r->slots[sl_hist_index(m)];
        if (s->minute == m && sl_hist_slot_used(s))
            out[n++] = *s;
    }
    pthread_mutex_unlock(&r->lock);
    return n;
}

size_t sl_history_unsent(struct sl_history *h, size_t ring, int64_t now_ms,
                         struct sl_hist_delta *out, size_t max)
{
    struct sl_hist_ring *r = sl_hist_ring(h, ring, false);
    int64_t last = sl_hist_minute_of(now_ms);
    size_t n = 0;
    bool full = false;

    if (r == NULL || max == 0)
        return 0;
    pthread_mutex_lock(&r->lock);
    if (!r->dirty) {
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    for (int64_t m = last - SL_HIST_MINUTES + 1; m <= last && !full; m++) {
        struct sl_hist_slot *s = &r->slots[sl_hist_index(m)];
        if (s->minute != m)
            continue;
        for (size_t c = 0; c <= SL_HIST_APPS; c++) {
            if (s->n[c] == s->sent[c])
                continue;
            if (n == max) {
                full = true;
                break;
            }
            out[n].minute = m;
            out[n].app = c == SL_HIST_OTHER ? SL_HIST_OTHER_APP : s->app[c];
            out[n].n = s->n[c] - s->sent[c];
            s->sent[c] = s->n[c];
            n++;
        }
    }
    r->dirty = full;
    pthread_mutex_unlock(&r->lock);
    return n;
}

bool sl_history_dirty(struct sl_history *h, size_t ring)
{
    struct sl_hist_ring *r = sl_hist_ring(h, ring, false);
    bool d;

    if (r == NULL)
        return false;
    pthread_mutex_lock(&r->lock);
    d = r->dirty;
    pthread_mutex_unlock(&r->lock);
    return d;
}

/* ---- views ---- */

int sl_hist_view_add(struct sl_hist_view *v, int64_t minute, const char *name,
                     uint64_t n)
{
    size_t i;

    if (n == 0)
        return 0;
    for (i = 0; i < v->nnames; i++)
        if (strcmp(v->names[i], name) == 0)
            break;
    if (i == v->nnames) {
        if (v->nnames == v->capnames) {
            size_t cap = v->capnames ? 2 * v->capnames : 8;
            char **p = realloc(v->names, cap * sizeof(*p));
            if (p == NULL)
                return -1;
            v->names = p;
            v->capnames = cap;
        }
        v->names[i] = strdup(name);
        if (v->names[i] == NULL)
            return -1;
        v->nnames++;
    }
    /* The same app twice in one minute (an app id named "other" beside
     * the other column): one cell. */
    for (size_t c = v->ncells; c > 0 && v->cells[c - 1].minute == minute; c--) {
        if (v->cells[c - 1].name == i) {
            v->cells[c - 1].n += n;
            return 0;
        }
    }
    if (v->ncells == v->capcells) {
        size_t cap = v->capcells ? 2 * v->capcells : 64;
        struct sl_hist_cell *p = realloc(v->cells, cap * sizeof(*p));
        if (p == NULL)
            return -1;
        v->cells = p;
        v->capcells = cap;
    }
    v->cells[v->ncells].minute = minute;
    v->cells[v->ncells].name = i;
    v->cells[v->ncells].n = n;
    v->ncells++;
    return 0;
}

static int sl_hist_cell_cmp(const void *a, const void *b)
{
    const struct sl_hist_cell *x = a, *y = b;

    if (x->minute != y->minute)
        return x->minute < y->minute ? -1 : 1;
    return x->name < y->name ? -1 : x->name > y->name;
}

void sl_hist_view_sort(struct sl_hist_view *v)
{
    if (v->ncells > 1)
        qsort(v->cells, v->ncells, sizeof(*v->cells), sl_hist_cell_cmp);
}

void sl_hist_view_clear(struct sl_hist_view *v)
{
    for (size_t i = 0; i < v->nnames; i++)
        free(v->names[i]);
    free(v->names);
    free(v->cells);
    memset(v, 0, sizeof(*v));
}

int sl_history_view(struct sl_history *h, size_t ring, int64_t now_ms,
                    const struct sl_apps *apps, struct sl_hist_view *v)
{
    struct sl_hist_slot *copy = malloc(SL_HIST_MINUTES * sizeof(*copy));
    size_t n;
    int rc = -1;

    memset(v, 0, sizeof(*v));
    if (copy == NULL)
        return -1;
    /* Copied under the ring's lock; named and counted outside it. */
    n = sl_history_copy(h, ring, now_ms, copy);
    for (size_t i = 0; i < n; i++) {
        const struct sl_hist_slot *s = &copy[i];
        for (size_t c = 0; c <= SL_HIST_APPS; c++) {
            const char *name = c == SL_HIST_OTHER ? "other"
                               : apps != NULL     ? sl_apps_name(apps, s->app[c])
                                                  : "?";
            if (s->n[c] > 0 && sl_hist_view_add(v, s->minute, name, s->n[c]) != 0)
                goto out;
        }
    }
    rc = 0;
out:
    free(copy);
    if (rc != 0)
        sl_hist_view_clear(v);
    return rc;
}
