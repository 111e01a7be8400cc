/*
 * sl_auth — the token broker: sluice logs in to a provider for every app.
 *
 * One broker per upstream with an "auth" object, per process.  It obtains
 * a token from the upstream's token endpoint, hands it to the workers for
 * injection into every forwarded call, renews it before it expires, logs
 * in again when a call proves it revoked, and never logs in more often
 * than the upstream's login rule allows.  See sl_auth.c for the design,
 * docs/guides/auth.md for the user's view.
 */
#ifndef SL_AUTH_H
#define SL_AUTH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_config.h"

struct sl_auth;
struct sl_proxy;
struct sl_worker;
struct sl_request;

/* What a call gets from the broker (sl_auth_take). */
enum sl_auth_answer {
    SL_AUTH_READY,        /* a token: inject it */
    SL_AUTH_WAIT,         /* a login is due or under way: wait for it */
    SL_AUTH_FAILED,       /* the last login failed: answer the call with why */
};

/* Longest text of a login failure (the provider's words, cleaned). */
#define SL_AUTH_WHY_MAX 240

/*
 * Create a broker for every upstream of C with "auth" (their threads are
 * not running yet: sl_auth_start).  0, or -1 with the reason logged.
 * Main thread, before the workers start.
 */
int sl_auth_create(struct sl_proxy *p, const struct sl_config *c);
/* Start the brokers' threads; they wake the first NWORKERS workers.  0 or -1. */
int sl_auth_start(struct sl_proxy *p, int nworkers);
/* Stop the brokers' threads (no login starts or ends after); calls may
 * still ask them (main thread). */
void sl_auth_stop(struct sl_proxy *p);
/* Stop and free every broker (main thread, after the workers stopped). */
void sl_auth_destroy(struct sl_proxy *p);

/* The broker of upstream UP (which has "auth"), or NULL. */
struct sl_auth *sl_auth_of(struct sl_proxy *p, const struct sl_upstream_conf *up);

/*
 * Ask for A's token.  READY: *HEADER is an owned "Authorization: Bearer
 * ..." line, *SERIAL the token's number (for sl_auth_rejected), *BASE an
 * owned instance URL ("https://host", from the token answer) or NULL.
 * WAIT: a login is asked for; every worker is woken (its auth_kick set)
 * when it ends, since a login serves them all (WORKER names the caller);
 * WHY says what is awaited.  FAILED: WHY (SL_AUTH_WHY_MAX + 64 bytes) says
 * what went wrong and *STATUS is the status to answer with (502, 503).
 * Any thread.
 */
enum sl_auth_answer sl_auth_take(struct sl_auth *a, int worker, char **header,
                                 uint64_t *serial, char **base, char *why,
                                 size_t whylen, unsigned *status);
/* The provider refused token SERIAL: unless a newer one exists already,
 * drop it and log in again (once, whoever reports it first).  Any thread. */
void sl_auth_rejected(struct sl_auth *a, uint64_t serial);

/* A's state for /status (no secret, no token): a new object. */
json_t *sl_auth_status(struct sl_auth *a);

/*
 * Worker W's calls waiting for a token: those whose broker now answers
 * go on (to the store, then upstream) or get the failure; those past
 * their max_wait (or all, when W stops) get 503.  W's thread (its loop, on auth_kick or a tick).
 */
void sl_auth_pump(struct sl_worker *w, int64_t now_ms);

/*
 * Call REQ (of an upstream with "auth") before the store is asked: 0 a
 * token is there (go on), 1 the call waits (suspended; the pump goes on
 * with it), -1 answered with an error (pending set).  W's thread.
 */
int sl_auth_gate(struct sl_request *req);

/* REQ is freed: it waits no more, and its token line goes (sl_request.c). */
void sl_auth_forget(struct sl_request *req);

#endif
