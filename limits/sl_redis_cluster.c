/*
 * sl_redis_cluster — the store's connection to a Redis Cluster.
 *
 * Every key the store writes carries its upstream's name as a hash tag
 * ("<prefix>{<upstream>}:..."), so all of one upstream's keys live in one
 * slot, on one primary, and each script run (a decision over every rule
 * a call matches) stays one atomic run on one node.  Upstreams spread
 * over the primaries by their slots.  This module turns that into
 * routing: the store hands it a command and the index of its first key;
 * it sends it on the link (sl_redis_link.h) to the primary owning that
 * key's slot, from a slot map read with CLUSTER SLOTS.
 *
 * Connecting.  The seeds are tried in turn (a link each) until one
 * answers CLUSTER SLOTS with a map; that link is then closed, and the
 * cluster connection is UP.  A link per primary is made when a command
 * first needs it, behind its own AUTH/SELECT handshake.  Commands given
 * before the map is read wait in a list and go when it arrives.
 *
 * Redirections.  A slot that moved answers MOVED <slot> <host>:<port>:
 * the map takes the new owner for that slot at once, a fresh CLUSTER
 * SLOTS is asked for (once at a time), and the command is sent there.  A
 * slot being migrated answers ASK for a key already moved: ASKING and the
 * command go, in that order, on the target's link, and the map is not
 * changed.  TRYAGAIN (a multi-key command during a migration) and
 * CLUSTERDOWN (no primary for the slot yet: a failover in progress) are
 * retried after 10 ms, doubling to 200 ms; the owner's own deadline
 * (store_timeout) bounds how long.  Redis cannot tell a key not yet
 * written from one moved, so a script naming one (a pause never set, a
 * new tenant's log) is answered TRYAGAIN or ASK-then-TRYAGAIN for the
 * whole of its slot's move: decisions wait the move out.  At most
 * SL_CL_HOPS redirections per attempt (a retry starts again): past that,
 * the error is its reply.  Redirections never make a script run twice: a
 * node that answers MOVED, ASK, TRYAGAIN or CLUSTERDOWN did not run it.
 *
 * Failure.  One link dying (reset, refused, its deadline) takes the whole
 * connection down: on_disconnect (or on_connect, while connecting) with
 * the node and the reason.  The owner then does what it does for its one
 * link: it writes an undo behind each unanswered decision (they are
 * routed as the decisions were, so each lands behind its decision on the
 * same link), frees the connection and connects again, reading the map
 * anew -- which, after a failover, names the promoted replica.  Coarser
 * than keeping the other primaries' upstreams going, but the same rules
 * as one Redis: every command is answered exactly once, and what was
 * given up is undone behind itself.
 *
 * Keyless commands (ROLE, TIME, SCRIPT LOAD) go to the first primary of
 * the map.  SCRIPT LOAD is also sent to every other primary with a link,
 * and remembered: a link made later loads every script first, so
 * EVALSHA finds them on every node (NOSCRIPT stays the fallback).
 *
 * Lifetime.  Callbacks may free the connection; `depth` counts this
 * module's frames on the stack, and a connection freed inside them is
 * destroyed when the outermost returns (`free_asked` stops loops).
 */
#include "sl_redis_cluster.h"

#include "sl_redis_block.h"
#include "sl_store.h"
#include "sl_time.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SL_CL_NODES_MAX 128
#define SL_CL_HOPS 5
#define SL_CL_RETRIES 200
#define SL_CL_RETRY_MIN_MS 10
#define SL_CL_RETRY_MAX_MS 200
#define SL_CL_SCRIPTS_MAX 64

/* ---- the slot of a key ---- */

/* CRC16, polynomial 0x1021, initial 0 (XMODEM): Redis Cluster's. */
static uint16_t sl_crc16(const unsigned char *p, size_t n)
{
    uint16_t crc = 0;

    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned sl_redis_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);

    if (open != NULL) {
        size_t at = (size_t)(open - key) + 1;
        const char *close = memchr(key + at, '}', len - at);
        /* "{}" is no tag: the whole key is hashed. */
        if (close != NULL && close > key + at)
            return sl_crc16((const unsigned char *)key + at, (size_t)(close - (key + at))) &
                   (SL_REDIS_CLUSTER_SLOTS - 1);
    }
    return sl_crc16((const unsigned char *)key, len) & (SL_REDIS_CLUSTER_SLOTS - 1);
}

/* ---- types ---- */

struct sl_redis_cluster;

struct sl_cl_node {
    struct sl_redis_cluster *cl;
    char host[256];
    int port;
    struct sl_redis_link *link;     /* owned; NULL until a command needs it */
};

/* A command, kept whole until its final reply (a redirection sends it
 * again). */
struct sl_cl_cmd {
    struct sl_cl_cmd *next;         /* the waiting or the retry list */
    struct sl_redis_cluster *cl;
    int argc;
    const char **argv;              /* into the same allocation */
    size_t *lens;
    int slot;                       /* -1: keyless */
    int hops, retries, backoff_ms;
    int64_t retry_at_ms;
    sl_redis_reply_fn cb;
    void *privdata;
};

struct sl_redis_cluster {
    struct sl_loop loop;
    struct sl_redis_link_cbs cbs;
    struct sl_redis_link_conf base;   /* user, password, TLS, timeout */
    char **seed_host;                 /* owned copies */
    int *seed_port;
    size_t nseeds, seed_at, seeds_tried;
    struct sl_redis_link *seed;       /* reading the map; NULL after */
    struct sl_cl_node nodes[SL_CL_NODES_MAX];
    size_t nnodes;
    int16_t slots[SL_REDIS_CLUSTER_SLOTS];    /* node index, -1: none */
    int home;                         /* keyless commands' node, -1: none */
    bool up, failing, refreshing, corked;
    struct sl_cl_cmd *wait_head, *wait_tail;  /* before the map */
    struct sl_cl_cmd *retry;                  /* TRYAGAIN, CLUSTERDOWN */
    char *scripts[SL_CL_SCRIPTS_MAX];         /* SCRIPT LOAD bodies, owned */
    size_t script_len[SL_CL_SCRIPTS_MAX], nscripts;
    char doomed[600];                 /* a node could not be tried: fail */
    int depth;
    bool free_asked;
    char error[512];
};

static void sl_cl_destroy(struct sl_redis_cluster *cl);

static void sl_cl_hold(struct sl_redis_cluster *cl)
{
    cl->depth++;
}

/* True when CL was destroyed: touch nothing of it. */
static bool sl_cl_release(struct sl_redis_cluster *cl)
{
    if (--cl->depth == 0 && cl->free_asked) {
        sl_cl_destroy(cl);
        return true;
    }
    return false;
}

static void sl_cl_ignore(struct sl_redis_link *link, redisReply *rep, void *privdata)
{
    (void)link, (void)rep, (void)privdata;
}

/* ---- the map ---- */

/*
 * Where a node of CLUSTER SLOTS (P: endpoint, port, id[, metadata]) is
 * reached: its endpoint; FROM (the answering node's host) for an empty
 * or nil one (cluster-preferred-endpoint-type unknown-endpoint: "the
 * host you asked, this port"); for "?" (a hostname was preferred but the
 * node has none) the "ip" of its metadata, else NULL.  NULL too for an
 * endpoint with a NUL inside.
 */
static const char *sl_cl_endpoint(const redisReply *p, const char *from)
{
    const redisReply *h = p->element[0];

    if (h->type == REDIS_REPLY_NIL || h->len == 0)
        return from;
    if (strlen(h->str) != h->len)
        return NULL;
    if (strcmp(h->str, "?") != 0)
        return h->str;
    if (p->elements >= 4 && p->element[3]->type == REDIS_REPLY_ARRAY) {
        const redisReply *m = p->element[3];
        for (size_t i = 0; i + 1 < m->elements; i += 2)
            if (m->element[i]->type == REDIS_REPLY_STRING &&
                strcmp(m->element[i]->str, "ip") == 0 &&
                m->element[i + 1]->type == REDIS_REPLY_STRING &&
                m->element[i + 1]->len > 0 &&
                strlen(m->element[i + 1]->str) == m->element[i + 1]->len)
                return m->element[i + 1]->str;
    }
    return NULL;
}

int sl_redis_cluster_parse_map(const redisReply *rep, const char *from, sl_redis_range_fn fn,
                               void *ctx)
{
    size_t ranges = 0;

    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i], *p;
        const char *host;
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER)
            return -1;
        p = e->element[2];
        if (p->type != REDIS_REPLY_ARRAY || p->elements < 2 ||
            (p->element[0]->type != REDIS_REPLY_STRING &&
             p->element[0]->type != REDIS_REPLY_NIL) ||
            p->element[1]->type != REDIS_REPLY_INTEGER)
            return -1;
        host = sl_cl_endpoint(p, from);
        if (host == NULL)
            return -1;
        if (e->element[0]->integer < 0 || e->element[1]->integer >= SL_REDIS_CLUSTER_SLOTS ||
            e->element[0]->integer > e->element[1]->integer ||
            p->element[1]->integer <= 0 || p->element[1]->integer > 65535)
            return -1;
        for (const char *c = host; *c; c++)
            if ((unsigned char)*c <= ' ' || *c == 0x7f)
                return -1;
        if (fn(ctx, e->element[0]->integer, e->element[1]->integer, host,
               (int)p->element[1]->integer) != 0)
            return -1;
        ranges++;
    }
    return ranges > 0 ? 0 : -1;
}

/* The node at HOST:PORT, added if new; -1 when the table is full. */
static int sl_cl_node(struct sl_redis_cluster *cl, const char *host, int port)
{
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].port == port && strcmp(cl->nodes[i].host, host) == 0)
            return (int)i;
    if (cl->nnodes == SL_CL_NODES_MAX || strlen(host) >= sizeof(cl->nodes[0].host))
        return -1;
    struct sl_cl_node *n = &cl->nodes[cl->nnodes];
    n->cl = cl;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    n->link = NULL;
    return (int)cl->nnodes++;
}

static int sl_cl_take_range(void *ctx, long long start, long long end, const char *host,
                            int port)
{
    struct sl_redis_cluster *cl = ctx;
    int n = sl_cl_node(cl, host, port);

    if (n < 0)
        return -1;
    for (long long s = start; s <= end; s++)
        cl->slots[s] = (int16_t)n;
    if (start == 0 || cl->home < 0)
        cl->home = n;
    return 0;
}

bool sl_redis_cluster_parse_redirect(const char *s, const char *from, int *slot, char *host,
                                     size_t host_len, int *port)
{
    char *end;
    long v, p;
    const char *colon;
    size_t n;

    if (*s < '0' || *s > '9')
        return false;
    v = strtol(s, &end, 10);
    if (*end != ' ' || v < 0 || v >= SL_REDIS_CLUSTER_SLOTS)
        return false;
    s = end + 1;
    colon = strrchr(s, ':');
    if (colon == NULL || colon[1] < '0' || colon[1] > '9')
        return false;
    p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p <= 0 || p > 65535)
        return false;
    if (colon == s)
        s = from, n = strlen(from);
    else
        n = (size_t)(colon - s);
    /* A host that does not fit, or that holds a space or a control
     * character, is not one. */
    if (n == 0 || n >= host_len)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            return false;
    memcpy(host, s, n);
    host[n] = '\0';
    *slot = (int)v;
    *port = (int)p;
    return true;
}

/* ---- failure ---- */

static void sl_cl_fail(struct sl_redis_cluster *cl, int status, const char *reason)
{
    bool was_up = cl->up;

    if (cl->failing || cl->free_asked)
        return;
    cl->failing = true;
    snprintf(cl->error, sizeof(cl->error), "%s", reason);
    sl_cl_hold(cl);
    if (was_up) {
        if (cl->cbs.on_disconnect != NULL)
            cl->cbs.on_disconnect(NULL, status, cl->error, cl->cbs.arg);
    } else if (cl->cbs.on_connect != NULL) {
        cl->cbs.on_connect(NULL, status, cl->error, cl->cbs.arg);
    }
    sl_cl_release(cl);
}

static void sl_cl_node_down(struct sl_redis_link *link, int status, const char *reason,
                            void *arg)
{
    struct sl_cl_node *n = arg;
    struct sl_redis_cluster *cl = n->cl;
    char why[512];

    if (status == SL_REDIS_LINK_OK)
        return;
    snprintf(why, sizeof(why), "cluster node %s:%d: %s", n->host, n->port,
             reason != NULL ? reason : "connection failed");
    n->link = NULL;
    sl_redis_link_free(link);   /* the link's rule: allowed in its callback */
    sl_cl_fail(cl, status, why);
}

/* ---- sending ---- */

static void sl_cl_on_reply(struct sl_redis_link *link, redisReply *rep, void *privdata);

static struct sl_redis_link *sl_cl_link(struct sl_redis_cluster *cl, int i)
{
    struct sl_cl_node *n = &cl->nodes[i];
    char why[256];

    if (n->link != NULL || cl->failing)
        return n->link;
    struct sl_redis_link_conf lc = cl->base;
    lc.host = n->host;
    lc.port = n->port;
    const struct sl_redis_link_cbs cbs = {
        .on_connect = sl_cl_node_down,
        .on_disconnect = sl_cl_node_down,
        .arg = n,
    };
    n->link = sl_redis_link_new(&lc, &cl->loop, &cbs, why, sizeof(why));
    if (n->link == NULL) {
        /* A primary that cannot even be tried (its name does not resolve,
         * no descriptor is left) takes the connection down, as one that
         * refuses: at the next sl_redis_cluster_check(), since this may be
         * inside sl_redis_cluster_command(), which calls nothing back. */
        if (cl->doomed[0] == '\0')
            snprintf(cl->doomed, sizeof(cl->doomed), "cluster node %.255s:%d: %.200s", n->host,
                     n->port, why);
        return NULL;
    }
    if (cl->corked)
        sl_redis_link_cork(n->link);
    for (size_t s = 0; s < cl->nscripts; s++) {
        const char *argv[] = {"SCRIPT", "LOAD", cl->scripts[s]};
        const size_t lens[] = {6, 4, cl->script_len[s]};
        (void)sl_redis_link_command(n->link, 3, argv, lens, sl_cl_ignore, NULL);
    }
    return n->link;
}

/* Send CMD to node I (ASKING first when ASK).  0, or -1. */
static int sl_cl_send(struct sl_redis_cluster *cl, struct sl_cl_cmd *cmd, int i, bool ask)
{
    struct sl_redis_link *link;

    if (i < 0 || (link = sl_cl_link(cl, i)) == NULL)
        return -1;
    if (ask) {
        const char *argv[] = {"ASKING"};
        if (sl_redis_link_command(link, 1, argv, NULL, sl_cl_ignore, NULL) != 0)
            return -1;
    }
    return sl_redis_link_command(link, cmd->argc, cmd->argv, cmd->lens, sl_cl_on_reply, cmd);
}

static int sl_cl_route(const struct sl_redis_cluster *cl, const struct sl_cl_cmd *cmd)
{
    return cmd->slot >= 0 ? cl->slots[cmd->slot] : cl->home;
}

/* CMD's final answer: REP (or NULL). */
static void sl_cl_answer(struct sl_redis_cluster *cl, struct sl_cl_cmd *cmd,
                         struct sl_redis_link *link, redisReply *rep)
{
    sl_redis_reply_fn cb = cmd->cb;
    void *privdata = cmd->privdata;

    free(cmd);
    sl_cl_hold(cl);
    cb(link, rep, privdata);
    sl_cl_release(cl);
}

/* An error reply made here (no primary for a slot). */
static void sl_cl_answer_error(struct sl_redis_cluster *cl, struct sl_cl_cmd *cmd,
                               const char *text)
{
    redisReply *rep = calloc(1, sizeof(*rep));

    if (rep != NULL) {
        rep->type = REDIS_REPLY_ERROR;
        rep->str = strdup(text);
        rep->len = rep->str != NULL ? strlen(rep->str) : 0;
        if (rep->str == NULL) {
            free(rep);
            rep = NULL;
        }
    }
    sl_cl_answer(cl, cmd, NULL, rep);
    if (rep != NULL)
        freeReplyObject(rep);
}

static void sl_cl_refresh(struct sl_redis_cluster *cl);

static void sl_cl_retry_later(struct sl_redis_cluster *cl, struct sl_cl_cmd *cmd)
{
    cmd->backoff_ms = cmd->backoff_ms == 0 ? SL_CL_RETRY_MIN_MS : cmd->backoff_ms * 2;
    if (cmd->backoff_ms > SL_CL_RETRY_MAX_MS)
        cmd->backoff_ms = SL_CL_RETRY_MAX_MS;
    cmd->retry_at_ms = sl_time_mono_ms() + cmd->backoff_ms;
    cmd->next = cl->retry;
    cl->retry = cmd;
}

static void sl_cl_on_reply(struct sl_redis_link *link, redisReply *rep, void *privdata)
{
    struct sl_cl_cmd *cmd = privdata;
    struct sl_redis_cluster *cl = cmd->cl;

    if (rep != NULL && rep->type == REDIS_REPLY_ERROR && !cl->failing && !cl->free_asked) {
        bool moved = strncmp(rep->str, "MOVED ", 6) == 0;
        bool ask = strncmp(rep->str, "ASK ", 4) == 0;
        char host[256];
        int slot, port, to;
        if ((moved || ask) && cmd->hops < SL_CL_HOPS) {
            const struct sl_cl_node *from = NULL;
            for (size_t i = 0; i < cl->nnodes; i++)
                if (cl->nodes[i].link == link)
                    from = &cl->nodes[i];
            if (sl_redis_cluster_parse_redirect(rep->str + (moved ? 6 : 4),
                                     from != NULL ? from->host : "", &slot, host,
                                     sizeof(host), &port) &&
                (to = sl_cl_node(cl, host, port)) >= 0) {
                cmd->hops++;
                if (moved) {
                    cl->slots[slot] = (int16_t)to;
                    sl_cl_refresh(cl);
                }
                if (sl_cl_send(cl, cmd, to, ask) == 0)
                    return;
            }
        } else if ((strncmp(rep->str, "TRYAGAIN", 8) == 0 ||
                    strncmp(rep->str, "CLUSTERDOWN", 11) == 0) &&
                   cmd->retries < SL_CL_RETRIES) {
            cmd->retries++;
            /* The retry starts from the map again, with its own
             * redirections: a script naming a key that does not exist
             * is answered ASK by the source of a slot whose keys all
             * moved and TRYAGAIN by the target, once per attempt, for as
             * long as the move is not final. */
            cmd->hops = 0;
            if (strncmp(rep->str, "CLUSTERDOWN", 11) == 0)
                sl_cl_refresh(cl);
            sl_cl_retry_later(cl, cmd);
            return;
        }
    }
    sl_cl_answer(cl, cmd, link, rep);
}

/* Send CMD where its slot is now, or answer it. */
static void sl_cl_dispatch(struct sl_redis_cluster *cl, struct sl_cl_cmd *cmd)
{
    int to = sl_cl_route(cl, cmd);

    if (to < 0) {
        sl_cl_answer_error(cl, cmd, "CLUSTERDOWN no primary serves this slot (sluice)");
        return;
    }
    if (sl_cl_send(cl, cmd, to, false) != 0)
        sl_cl_answer(cl, cmd, NULL, NULL);
}

/* ---- the map: reading it, and reading it again ---- */

static void sl_cl_on_refresh(struct sl_redis_link *link, redisReply *rep, void *privdata)
{
    struct sl_cl_node *n = privdata;
    struct sl_redis_cluster *cl = n->cl;
    int16_t old[SL_REDIS_CLUSTER_SLOTS];
    int old_home;

    (void)link;
    cl->refreshing = false;
    if (rep == NULL || cl->free_asked)
        return;
    memcpy(old, cl->slots, sizeof(old));
    old_home = cl->home;
    memset(cl->slots, 0xff, sizeof(cl->slots));
    cl->home = -1;
    if (sl_redis_cluster_parse_map(rep, n->host, sl_cl_take_range, cl) != 0) {
        memcpy(cl->slots, old, sizeof(old));   /* keep what was known */
        cl->home = old_home;
    }
}

/* Ask for the map again (after MOVED or CLUSTERDOWN), once at a time. */
static void sl_cl_refresh(struct sl_redis_cluster *cl)
{
    const char *argv[] = {"CLUSTER", "SLOTS"};
    struct sl_redis_link *link;

    if (cl->refreshing || cl->home < 0 || (link = sl_cl_link(cl, cl->home)) == NULL)
        return;
    if (sl_redis_link_command(link, 2, argv, NULL, sl_cl_on_refresh, &cl->nodes[cl->home]) == 0)
        cl->refreshing = true;
}

static void sl_cl_try_seed(struct sl_redis_cluster *cl, const char *last_why);

static void sl_cl_on_map(struct sl_redis_link *link, redisReply *rep, void *privdata)
{
    struct sl_redis_cluster *cl = privdata;
    char why[600];
    const char *from = cl->seed_host[cl->seed_at];

    if (rep == NULL || cl->free_asked)
        return;  /* the seed's link died: its disconnect callback moves on */
    if (rep->type == REDIS_REPLY_ERROR || sl_redis_cluster_parse_map(rep, from, sl_cl_take_range, cl) != 0) {
        /* What it gave before it failed is not kept for the next seed's
         * map (no link was made to those nodes yet). */
        memset(cl->slots, 0xff, sizeof(cl->slots));
        cl->home = -1;
        cl->nnodes = 0;
        snprintf(why, sizeof(why), "seed %s:%d gave no slot map (%s)", from,
                 cl->seed_port[cl->seed_at],
                 rep->type == REDIS_REPLY_ERROR ? rep->str : "unreadable CLUSTER SLOTS");
        cl->seed = NULL;
        sl_redis_link_free(link);
        sl_cl_try_seed(cl, why);
        return;
    }
    cl->seed = NULL;
    sl_redis_link_free(link);
    cl->up = true;
    sl_cl_hold(cl);
    if (cl->cbs.on_connect != NULL)
        cl->cbs.on_connect(NULL, SL_REDIS_LINK_OK, NULL, cl->cbs.arg);
    while (!cl->free_asked && !cl->failing && cl->wait_head != NULL) {
        struct sl_cl_cmd *cmd = cl->wait_head;
        cl->wait_head = cmd->next;
        if (cl->wait_head == NULL)
            cl->wait_tail = NULL;
        sl_cl_dispatch(cl, cmd);
    }
    sl_cl_release(cl);
}

static void sl_cl_seed_status(struct sl_redis_link *link, int status, const char *reason,
                              void *arg)
{
    struct sl_redis_cluster *cl = arg;
    const char *argv[] = {"CLUSTER", "SLOTS"};
    char why[600];

    if (status == SL_REDIS_LINK_OK) {
        if (sl_redis_link_command(link, 2, argv, NULL, sl_cl_on_map, cl) == 0)
            return;
        reason = "could not ask for the slot map";
    }
    snprintf(why, sizeof(why), "seed %s:%d: %s", cl->seed_host[cl->seed_at],
             cl->seed_port[cl->seed_at], reason != NULL ? reason : "connection failed");
    cl->seed = NULL;
    sl_redis_link_free(link);
    sl_cl_try_seed(cl, why);
}

/* Connect to the next seed not yet tried, or fail with LAST_WHY. */
static void sl_cl_try_seed(struct sl_redis_cluster *cl, const char *last_why)
{
    char why[256];

    while (cl->seeds_tried < cl->nseeds) {
        if (cl->seeds_tried > 0)
            cl->seed_at = (cl->seed_at + 1) % cl->nseeds;
        cl->seeds_tried++;
        struct sl_redis_link_conf lc = cl->base;
        lc.host = cl->seed_host[cl->seed_at];
        lc.port = cl->seed_port[cl->seed_at];
        const struct sl_redis_link_cbs cbs = {
            .on_connect = sl_cl_seed_status,
            .on_disconnect = sl_cl_seed_status,
            .arg = cl,
        };
        cl->seed = sl_redis_link_new(&lc, &cl->loop, &cbs, why, sizeof(why));
        if (cl->seed != NULL)
            return;
        last_why = why;
    }
    sl_cl_fail(cl, SL_REDIS_LINK_ERR_IO, last_why != NULL ? last_why : "no seed answered");
}

/* ---- the public functions ---- */

struct sl_redis_cluster *sl_redis_cluster_new(const struct sl_redis_cluster_conf *conf,
                                              const struct sl_loop *loop,
                                              const struct sl_redis_link_cbs *cbs,
                                              char *why, size_t why_len)
{
    struct sl_redis_cluster *cl;

    if (conf->nseeds == 0) {
        snprintf(why, why_len, "no seed node");
        return NULL;
    }
    cl = calloc(1, sizeof(*cl));
    if (cl == NULL || (cl->seed_host = calloc(conf->nseeds, sizeof(char *))) == NULL ||
        (cl->seed_port = calloc(conf->nseeds, sizeof(int))) == NULL) {
        snprintf(why, why_len, "out of memory");
        if (cl != NULL) {
            free(cl->seed_host);
            free(cl);
        }
        return NULL;
    }
    cl->loop = *loop;
    cl->cbs = *cbs;
    cl->base = *conf->seed;
    cl->nseeds = conf->nseeds;
    cl->seed_at = conf->first_seed % conf->nseeds;
    cl->home = -1;
    memset(cl->slots, 0xff, sizeof(cl->slots));
    for (size_t i = 0; i < conf->nseeds; i++) {
        cl->seed_host[i] = strdup(conf->seed_host[i]);
        cl->seed_port[i] = conf->seed_port[i];
        if (cl->seed_host[i] == NULL) {
            snprintf(why, why_len, "out of memory");
            sl_cl_destroy(cl);
            return NULL;
        }
    }
    /* The first seed's link is made here (its failure is a callback, as a
     * link's is, except that no seed can be made at all). */
    cl->cbs.on_connect = cl->cbs.on_disconnect = NULL;   /* none from here */
    sl_cl_try_seed(cl, NULL);
    if (cl->failing) {
        snprintf(why, why_len, "%s", cl->error);
        sl_cl_destroy(cl);
        return NULL;
    }
    cl->cbs = *cbs;
    return cl;
}

static bool sl_cl_is_script_load(int argc, const char **argv, const size_t *lens)
{
    return argc == 3 && (lens == NULL || (lens[0] == 6 && lens[1] == 4)) &&
           strncmp(argv[0], "SCRIPT", 6) == 0 && strncmp(argv[1], "LOAD", 4) == 0;
}

/* Remember a SCRIPT LOAD body for links made later, and send it to every
 * primary with a link but HOME. */
static void sl_cl_script(struct sl_redis_cluster *cl, const char *body, size_t len)
{
    for (size_t s = 0; s < cl->nscripts; s++)
        if (cl->script_len[s] == len && memcmp(cl->scripts[s], body, len) == 0)
            goto send;
    if (cl->nscripts < SL_CL_SCRIPTS_MAX &&
        (cl->scripts[cl->nscripts] = malloc(len + 1)) != NULL) {
        memcpy(cl->scripts[cl->nscripts], body, len);
        cl->scripts[cl->nscripts][len] = '\0';
        cl->script_len[cl->nscripts++] = len;
    }
send:
    for (size_t i = 0; i < cl->nnodes; i++) {
        if ((int)i == cl->home || cl->nodes[i].link == NULL)
            continue;
        const char *argv[] = {"SCRIPT", "LOAD", body};
        const size_t lens[] = {6, 4, len};
        (void)sl_redis_link_command(cl->nodes[i].link, 3, argv, lens, sl_cl_ignore, NULL);
    }
}

int sl_redis_cluster_command(struct sl_redis_cluster *cl, int argc, const char **argv,
                             const size_t *lens, int key, sl_redis_reply_fn cb,
                             void *privdata)
{
    struct sl_cl_cmd *cmd;
    size_t bytes = 0, *l;
    char *p;

    /* A failing connection still takes commands for the links it has:
     * its owner writes undos behind what it gives up. */
    if (cl->free_asked || (cl->failing && !cl->up) || argc <= 0 || key >= argc)
        return -1;
    for (int i = 0; i < argc; i++)
        bytes += lens != NULL ? lens[i] : strlen(argv[i]);
    cmd = malloc(sizeof(*cmd) + (size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (cmd == NULL)
        return -1;
    memset(cmd, 0, sizeof(*cmd));
    cmd->cl = cl;
    cmd->argc = argc;
    cmd->argv = (const char **)(cmd + 1);
    cmd->lens = l = (size_t *)(cmd->argv + argc);
    p = (char *)(l + argc);
    for (int i = 0; i < argc; i++) {
        l[i] = lens != NULL ? lens[i] : strlen(argv[i]);
        memcpy(p, argv[i], l[i]);
        cmd->argv[i] = p;
        p += l[i];
    }
    cmd->slot = key >= 0 ? (int)sl_redis_key_slot(argv[key], l[key]) : -1;
    cmd->cb = cb;
    cmd->privdata = privdata;
    if (key < 0 && sl_cl_is_script_load(argc, argv, lens))
        sl_cl_script(cl, cmd->argv[2], l[2]);
    if (!cl->up) {
        if (cl->wait_tail != NULL)
            cl->wait_tail->next = cmd;
        else
            cl->wait_head = cmd;
        cl->wait_tail = cmd;
        return 0;
    }
    {
        int to = sl_cl_route(cl, cmd);
        if (to < 0) {
            /* No owner known: a CLUSTERDOWN of our own, retried while the
             * map is read again. */
            sl_cl_refresh(cl);
            sl_cl_retry_later(cl, cmd);
            return 0;
        }
        if (sl_cl_send(cl, cmd, to, false) != 0) {
            free(cmd);
            return -1;
        }
    }
    return 0;
}

void sl_redis_cluster_cork(struct sl_redis_cluster *cl)
{
    cl->corked = true;
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].link != NULL)
            sl_redis_link_cork(cl->nodes[i].link);
}

/* Run OP on every node's link; -1 when one failed or CL was freed.  True
 * in *GONE when CL is destroyed. */
static int sl_cl_each(struct sl_redis_cluster *cl, int (*op)(struct sl_redis_link *),
                      bool *gone)
{
    int rc = 0;

    sl_cl_hold(cl);
    for (size_t i = 0; i < cl->nnodes && !cl->free_asked; i++) {
        struct sl_redis_link *link = cl->nodes[i].link;
        if (link != NULL && op(link) != 0)
            rc = -1;
    }
    if (cl->free_asked || cl->failing)
        rc = -1;
    *gone = sl_cl_release(cl);
    return rc;
}

int sl_redis_cluster_uncork(struct sl_redis_cluster *cl)
{
    bool gone;

    cl->corked = false;
    return sl_cl_each(cl, sl_redis_link_uncork, &gone);
}

int sl_redis_cluster_read(struct sl_redis_cluster *cl)
{
    bool gone;

    return sl_cl_each(cl, sl_redis_link_read, &gone);
}

int sl_redis_cluster_flush(struct sl_redis_cluster *cl)
{
    bool gone;

    return sl_cl_each(cl, sl_redis_link_flush, &gone);
}

int sl_redis_cluster_flush_wait(struct sl_redis_cluster *cl, int wait_ms)
{
    int64_t until = sl_time_mono_ms() + wait_ms;
    int rc = 0;

    sl_cl_hold(cl);
    for (size_t i = 0; i < cl->nnodes && !cl->free_asked; i++) {
        struct sl_redis_link *link = cl->nodes[i].link;
        int64_t left = until - sl_time_mono_ms();
        if (link == NULL || sl_redis_link_state(link) != SL_REDIS_LINK_UP)
            continue;
        if (sl_redis_link_flush_wait(link, left > 0 ? (int)left : 0) != 0)
            rc = -1;
    }
    sl_cl_release(cl);
    return rc;
}

int64_t sl_redis_cluster_check(struct sl_redis_cluster *cl, int64_t now_ms)
{
    int64_t next = -1;

#define SL_CL_NEXT(t) do { int64_t t_ = (t); if (t_ >= 0 && (next < 0 || t_ < next)) next = t_; } while (0)
    sl_cl_hold(cl);
    if (cl->doomed[0] != '\0')
        sl_cl_fail(cl, SL_REDIS_LINK_ERR_IO, cl->doomed);
    /* Retries that are due, sent where their slot is now. */
    if (cl->up && !cl->failing) {
        struct sl_cl_cmd *due = NULL, **pp = &cl->retry;
        while (*pp != NULL) {
            struct sl_cl_cmd *c = *pp;
            if (c->retry_at_ms <= now_ms) {
                *pp = c->next;
                c->next = due;
                due = c;
            } else {
                pp = &c->next;
            }
        }
        while (due != NULL) {
            struct sl_cl_cmd *c = due;
            due = c->next;
            if (cl->free_asked || cl->failing) {
                sl_cl_answer(cl, c, NULL, NULL);
                continue;
            }
            sl_cl_dispatch(cl, c);
        }
    }
    for (struct sl_cl_cmd *c = cl->retry; c != NULL; c = c->next)
        SL_CL_NEXT(c->retry_at_ms);
    if (cl->seed != NULL && !cl->free_asked)
        SL_CL_NEXT(sl_redis_link_check(cl->seed, now_ms));
    for (size_t i = 0; i < cl->nnodes && !cl->free_asked; i++)
        if (cl->nodes[i].link != NULL)
            SL_CL_NEXT(sl_redis_link_check(cl->nodes[i].link, now_ms));
#undef SL_CL_NEXT
    if (sl_cl_release(cl))
        return -1;
    return next;
}

/* Answer every command not on a link with NULL. */
static void sl_cl_drop_lists(struct sl_redis_cluster *cl)
{
    while (cl->wait_head != NULL || cl->retry != NULL) {
        struct sl_cl_cmd *c;
        if (cl->wait_head != NULL) {
            c = cl->wait_head;
            cl->wait_head = c->next;
            if (cl->wait_head == NULL)
                cl->wait_tail = NULL;
        } else {
            c = cl->retry;
            cl->retry = c->next;
        }
        sl_cl_answer(cl, c, NULL, NULL);
    }
}

void sl_redis_cluster_free(struct sl_redis_cluster *cl)
{
    if (cl == NULL || cl->free_asked)
        return;
    cl->free_asked = true;
    sl_cl_hold(cl);
    if (cl->seed != NULL) {
        struct sl_redis_link *s = cl->seed;
        cl->seed = NULL;
        sl_redis_link_free(s);
    }
    for (size_t i = 0; i < cl->nnodes; i++) {
        struct sl_redis_link *link = cl->nodes[i].link;
        cl->nodes[i].link = NULL;
        sl_redis_link_free(link);   /* its commands: NULL replies, now */
    }
    sl_cl_drop_lists(cl);
    sl_cl_release(cl);
}

static void sl_cl_destroy(struct sl_redis_cluster *cl)
{
    for (size_t i = 0; i < cl->nnodes; i++)
        sl_redis_link_free(cl->nodes[i].link);
    sl_redis_link_free(cl->seed);
    for (size_t i = 0; i < cl->nseeds; i++)
        free(cl->seed_host[i]);
    free(cl->seed_host);
    free(cl->seed_port);
    for (size_t s = 0; s < cl->nscripts; s++)
        free(cl->scripts[s]);
    free(cl);
}

/* ---- a blocking look-up (the token broker's) ---- */

struct sl_cl_find {
    unsigned slot;
    char *host;
    int port;
};

static int sl_cl_find_range(void *ctx, long long start, long long end, const char *host,
                            int port)
{
    struct sl_cl_find *f = ctx;

    if ((long long)f->slot >= start && (long long)f->slot <= end && f->host == NULL) {
        f->host = strdup(host);
        f->port = port;
        if (f->host == NULL)
            return -1;
    }
    return 0;
}

int sl_redis_cluster_resolve(const struct sl_redis_cluster_conf *conf, const char *key,
                             char **host, int *port, char *why, size_t why_len)
{
    snprintf(why, why_len, "no seed node");
    for (size_t k = 0; k < conf->nseeds; k++) {
        size_t i = (conf->first_seed + k) % conf->nseeds;
        struct sl_redis_link_conf lc = *conf->seed;
        struct sl_cl_find f = {sl_redis_key_slot(key, strlen(key)), NULL, 0};
        struct sl_redis_block *b;
        redisReply *rep;
        char w[256];

        lc.host = conf->seed_host[i];
        lc.port = conf->seed_port[i];
        b = sl_redis_block_connect(&lc, w, sizeof(w));
        if (b == NULL) {
            snprintf(why, why_len, "seed %s:%d: %s", lc.host, lc.port, w);
            continue;
        }
        rep = sl_redis_block_command(b, "CLUSTER SLOTS");
        if (rep != NULL && sl_redis_cluster_parse_map(rep, lc.host, sl_cl_find_range, &f) == 0 &&
            f.host != NULL) {
            freeReplyObject(rep);
            sl_redis_block_free(b);
            *host = f.host;
            *port = f.port;
            return 0;
        }
        snprintf(why, why_len, "seed %s:%d gave no owner for slot %u (%s)", lc.host, lc.port,
                 f.slot, rep == NULL ? "no answer"
                         : rep->type == REDIS_REPLY_ERROR ? rep->str : "no primary for it");
        free(f.host);
        if (rep != NULL)
            freeReplyObject(rep);
        sl_redis_block_free(b);
    }
    return -1;
}
