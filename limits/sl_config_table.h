/*
 * sl_config_table — configuration keys described by tables, and the one
 * reader that walks them (internal to limits/sl_config*.c).
 *
 * As nginx's ngx_command_t: every JSON object of the configuration (the
 * top level, an upstream, a rule, a share, ...) has one table, and a row
 * says everything about one key: its type, where its value goes (offset
 * and size in the struct being filled), its bounds, its default (written
 * as in the file: "10s", "true", "reject"), the environment variable that
 * overrides it, and one line for the reader.  sl_conf_read() applies the
 * defaults, refuses keys no row names, and reads the plain rows itself;
 * a compound key (a rule's kind, a URL, shares, a calendar) names a
 * handler that reads it, and the handler's own prose goes into the
 * reference.  The same rows print the reference (sluice
 * --print-reference, docs/configuration.md) and the environment list of
 * --help, so neither can drift from what the parser does.
 *
 * Every error names its JSON path and the reader goes on, so one pass
 * reports everything wrong (see sl_config.c).
 */
#ifndef SL_CONFIG_TABLE_H
#define SL_CONFIG_TABLE_H

#include "sl_config.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

enum sl_conf_type {
    SL_CONF_BOOL,         /* true or false */
    SL_CONF_INT,          /* a whole number in [min, max] */
    SL_CONF_DURATION,     /* "250ms", "10s", "5m"... or seconds, in [min, max] µs */
    SL_CONF_RATIO,        /* a number above 0, at most 1 (a double) */
    SL_CONF_WORD,         /* one of `words`; the field gets its index */
    SL_CONF_STRING,       /* any string (an owned char *) */
    /* Read by handlers only; named for the reference. */
    SL_CONF_SIZE,         /* "64MB" or a number of bytes */
    SL_CONF_OBJECT,
    SL_CONF_ARRAY,
    SL_CONF_ANY,          /* the handler says what it takes */
};

/* sl_conf_key.flags */
#define SL_CONF_REQUIRED 0x01u  /* "PATH: is required" when absent */
#define SL_CONF_ALWAYS 0x02u    /* the handler is called when absent too */
#define SL_CONF_ZERO_OK 0x04u   /* duration: 0 ("none") allowed below min */
#define SL_CONF_PART 0x08u      /* read by another row's handler */
#define SL_CONF_SET 0x10u       /* set_offset: a bool made true once read */
#define SL_CONF_PROSE 0x20u     /* `def` describes, it is not applied */

/* What every reader of one configuration shares. */
struct sl_conf_ctx {
    struct sl_config *c;
    struct sl_upstream_conf *u;   /* the upstream whose rules are read */
    bool apply_env;               /* the environment overrides apply */
    struct sl_errors *errs;
};

struct sl_conf_key;

/*
 * Reads compound key K of object OBJ (at AT: "upstreams[0]", "" for the
 * top level) into BASE, the struct the table fills.  V is the key's value
 * (NULL when absent and the row says SL_CONF_ALWAYS), PATH its own path
 * ("upstreams[0].url").  Errors go to ctx->errs, each with a JSON path.
 */
typedef void sl_conf_read_fn(json_t *obj, json_t *v, const char *at,
                             const char *path, void *base,
                             const struct sl_conf_key *k, struct sl_conf_ctx *ctx);

struct sl_conf_handler {
    sl_conf_read_fn *read;
    const char *doc;              /* Markdown prose for the reference, or NULL */
};

struct sl_conf_key {
    const char *key;
    enum sl_conf_type type;
    size_t offset, size;          /* the field; size 0: the handler's own */
    long long min, max;           /* INT: the bounds; DURATION: in µs */
    const char *def;              /* default as written in the file, or NULL */
    const char *env;              /* the environment variable, or NULL */
    const struct sl_conf_handler *handler;  /* NULL: read by type */
    const char *const *words;     /* WORD: the choices, by value */
    size_t set_offset;            /* SL_CONF_SET: a bool field */
    unsigned flags;
    const char *doc;              /* one line of Markdown */
};

struct sl_conf_table {
    const char *name;             /* "upstreams[]": where the object is ("": the top) */
    const char *doc;              /* a paragraph before its keys */
    const struct sl_conf_key *keys;
    size_t nkeys;
};

#define SL_CONF_FIELD(type, field) \
    .offset = offsetof(type, field), .size = sizeof(((type *)0)->field)
#define SL_CONF_TABLE(name, doc, keys) \
    {name, doc, keys, sizeof(keys) / sizeof(keys[0])}

/*
 * Read object OBJ at PATH ("" for the top level) into BASE by table T:
 * defaults first, then unknown keys refused, then each row in order.
 * OBJ must be an object.
 */
void sl_conf_read(const struct sl_conf_table *t, json_t *obj, const char *path,
                  void *base, struct sl_conf_ctx *ctx);
/* Apply T's defaults to BASE (what sl_conf_read does first). */
void sl_conf_defaults(const struct sl_conf_table *t, void *base);
/* The row of T for KEY, or NULL. */
const struct sl_conf_key *sl_conf_key(const struct sl_conf_table *t, const char *key);

/* The Markdown reference of tables T[0..N) (docs/configuration.md). */
void sl_conf_reference(const struct sl_conf_table *const *t, size_t n,
                       const char *intro, FILE *out);
/* One line per row with an environment variable, for --help. */
void sl_conf_env_help(const struct sl_conf_table *const *t, size_t n, FILE *out);

/* ---- typed reads, for handlers: 0, or an error added and -1 ---- */

/* A duration in [MIN, MAX] µs; ZERO_OK also lets 0 through below MIN. */
int sl_conf_get_duration(json_t *v, const char *path, int64_t min, int64_t max,
                         bool zero_ok, int64_t *out, struct sl_errors *errs);
int sl_conf_get_int(json_t *v, const char *path, long long min, long long max,
                    long long *out, struct sl_errors *errs);
int sl_conf_get_string(json_t *v, const char *path, const char **out,
                       struct sl_errors *errs);
int sl_conf_get_bool(json_t *v, const char *path, bool *out, struct sl_errors *errs);
/* A number above 0 and at most 1. */
int sl_conf_get_ratio(json_t *v, const char *path, double *out,
                      struct sl_errors *errs);
/* One of WORDS (NULL-terminated): *OUT is its index. */
int sl_conf_get_word(json_t *v, const char *path, const char *const *words,
                     int *out, struct sl_errors *errs);

/* ---- echoing values in error lines ---- */

/* Longest echoed value in an error. */
#define SL_QUOTE_MAX 60

/*
 * S for an error line, into BUF (LEN >= 16): '"' and '\\' escaped when
 * QUOTED (and the whole in double quotes), every byte outside printable
 * ASCII written as \\n, \\t or \\xHH, cut after MAX bytes of S (or when
 * BUF is full) with "...".  Returns BUF.
 */
const char *sl_conf_escape(const char *s, size_t max, bool quoted, char *buf,
                           size_t len);
/* S in double quotes, escaped and cut at SL_QUOTE_MAX bytes. */
const char *sl_conf_quote(const char *s, char *buf, size_t len);
/* A JSON value briefly, for an error message: "5x", 12, true. */
void sl_conf_brief(json_t *v, char *buf, size_t len);

#endif
