/*
 * sl_snapshot — the container a store fills when an operator asks what it
 * holds (status, metrics, the usage page, alerts).  The stores own the
 * figures; this file only allocates, orders and frees them, so both
 * stores hand the proxy the same shape.
 */
#include "sl_store.h"

#include <stdlib.h>
#include <string.h>

struct sl_snapshot *sl_snapshot_new(const struct sl_config *config)
{
    struct sl_snapshot *snap = calloc(1, sizeof(*snap));

    if (snap == NULL)
        return NULL;
    snap->config = sl_config_ref(config);
    snap->ups = calloc(config->nupstreams, sizeof(*snap->ups));
    if (snap->ups == NULL)
        goto fail;
    snap->nups = config->nupstreams;
    for (size_t i = 0; i < config->nupstreams; i++) {
        const struct sl_upstream_conf *up = &config->upstreams[i];
        struct sl_upstream_usage *uu = &snap->ups[i];
        uu->up = up;
        uu->rules = calloc(up->nrules ? up->nrules : 1, sizeof(*uu->rules));
        if (uu->rules == NULL)
            goto fail;
        for (size_t k = 0; k < up->nrules; k++)
            uu->rules[k].rule = &up->rules[k];
    }
    return snap;
fail:
    sl_snapshot_free(snap);
    return NULL;
}

static void sl_usage_clear(struct sl_usage *u)
{
    free(u->key);
    for (size_t i = 0; i < u->napps; i++)
        free(u->apps[i].name);
    free(u->apps);
    memset(u, 0, sizeof(*u));
}

void sl_snapshot_free(struct sl_snapshot *snap)
{
    if (snap == NULL)
        return;
    for (size_t i = 0; snap->ups != NULL && i < snap->nups; i++) {
        struct sl_upstream_usage *uu = &snap->ups[i];
        for (size_t k = 0; uu->rules != NULL && k < uu->up->nrules; k++) {
            struct sl_rule_usage *ru = &uu->rules[k];
            for (size_t b = 0; b < ru->n; b++)
                sl_usage_clear(&ru->buckets[b]);
            free(ru->buckets);
        }
        free(uu->rules);
    }
    free(snap->ups);
    sl_config_unref(snap->config);
    free(snap);
}

static int sl_usage_cmp(const void *pa, const void *pb)
{
    const struct sl_usage *a = pa, *b = pb;

    if (a->used != b->used)
        return a->used > b->used ? -1 : 1;
    return strcmp(a->key, b->key);
}

void sl_snapshot_trim(struct sl_rule_usage *ru, unsigned top)
{
    size_t keep = 0;

    if (ru->n == 0)
        return;
    qsort(ru->buckets, ru->n, sizeof(*ru->buckets), sl_usage_cmp);
    for (size_t i = 0; i < ru->n; i++) {
        struct sl_usage *u = &ru->buckets[i];
        if (i < top || u->level != u->level_was) {
            if (keep != i)
                ru->buckets[keep] = *u;
            keep++;
        } else {
            sl_usage_clear(u);
        }
    }
    ru->n = keep;
}

static int sl_app_cmp(const void *pa, const void *pb)
{
    const struct sl_usage_app *a = pa, *b = pb;

    if (a->calls != b->calls)
        return a->calls > b->calls ? -1 : 1;
    return strcmp(a->name, b->name);
}

void sl_snapshot_sort_apps(struct sl_usage *u)
{
    if (u->napps > 1)
        qsort(u->apps, u->napps, sizeof(*u->apps), sl_app_cmp);
}

void sl_snapshot_pause_origin(struct sl_upstream_usage *uu)
{
    uu->pause_operator = uu->pause_reason[0] == SL_PAUSE_BY_OPERATOR;
    if (uu->pause_operator)
        memmove(uu->pause_reason, uu->pause_reason + 1, strlen(uu->pause_reason));
}
