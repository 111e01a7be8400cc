/*
 * sl_config — load and validate the JSON configuration (see sl_config.h).
 *
 * Validation never stops at the first problem: each checker appends an
 * error naming the JSON path ("upstreams[0].rules[2].window") and goes on,
 * so `sluice --check` lists everything wrong at once.  Unknown keys are
 * errors too: a typo such as "limt" must not silently disable a quota.
 * Syntax errors come from jansson with line and column.
 */
#include "sl_config.h"

#include "sl_duration.h"
#include "sl_pattern.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SL_DEFAULT_LISTEN "127.0.0.1:8080"
#define SL_DEFAULT_MEMORY_LIMIT (UINT64_C(64) << 20)

static void sl_check_keys(json_t *obj, const char *path,
                          const char *const *allowed, struct sl_errors *errs);
static void sl_parse_upstream(json_t *ju, const char *path,
                              struct sl_upstream_conf *u, struct sl_errors *errs);
static void sl_parse_rule(json_t *jr, const char *path, struct sl_rule *r,
                          struct sl_errors *errs);
static int sl_get_on_limit(json_t *v, const char *path, enum sl_on_limit *out,
                           struct sl_errors *errs);

void sl_errors_add(struct sl_errors *errs, const char *fmt, ...)
{
    char buf[1024];
    char **lines;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    lines = realloc(errs->lines, (errs->count + 1) * sizeof(*lines));
    if (lines == NULL)
        return;
    errs->lines = lines;
    errs->lines[errs->count] = strdup(buf);
    if (errs->lines[errs->count] != NULL)
        errs->count++;
}

void sl_errors_free(struct sl_errors *errs)
{
    for (size_t i = 0; i < errs->count; i++)
        free(errs->lines[i]);
    free(errs->lines);
    errs->lines = NULL;
    errs->count = 0;
}

/* Render a JSON value briefly for an error message: "5x", 12, true. */
static void sl_json_brief(json_t *v, char *buf, size_t len)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);

    if (s == NULL) {
        snprintf(buf, len, "(value)");
        return;
    }
    if (strlen(s) > 60)
        snprintf(buf, len, "%.57s...", s);
    else
        snprintf(buf, len, "%s", s);
    free(s);
}

static void sl_check_keys(json_t *obj, const char *path,
                          const char *const *allowed, struct sl_errors *errs)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a != NULL; a++)
            if (strcmp(*a, key) == 0)
                ok = 1;
        if (!ok)
            sl_errors_add(errs, "%s%s%s: unknown key", path, *path ? "." : "",
                          key);
    }
}

/*
 * Read a duration from V (string with unit, or number of seconds).
 * Returns 0 and sets *out, or adds an error and returns -1.
 */
static int sl_get_duration(json_t *v, const char *path, int allow_zero,
                           int64_t *out, struct sl_errors *errs)
{
    char brief[80];
    int rc = -1;

    if (json_is_string(v))
        rc = sl_duration_parse(json_string_value(v), out);
    else if (json_is_number(v))
        rc = sl_duration_from_seconds(json_number_value(v), out);
    sl_json_brief(v, brief, sizeof(brief));
    if (rc != 0) {
        sl_errors_add(errs,
                      "%s: %s is not a duration (write e.g. \"250ms\", \"10s\", "
                      "\"5m\", \"24h\", \"1d\" or a number of seconds)",
                      path, brief);
        return -1;
    }
    if (*out < 0 || (*out == 0 && !allow_zero)) {
        sl_errors_add(errs, "%s: %s must be %s", path, brief,
                      allow_zero ? "zero or more" : "more than zero");
        return -1;
    }
    return 0;
}

/* Integer in [min, max]; adds an error and returns -1 otherwise. */
static int sl_get_int(json_t *v, const char *path, long long min, long long max,
                      long long *out, struct sl_errors *errs)
{
    char brief[80];

    sl_json_brief(v, brief, sizeof(brief));
    if (!json_is_integer(v)) {
        sl_errors_add(errs, "%s: %s is not a whole number", path, brief);
        return -1;
    }
    *out = json_integer_value(v);
    if (*out < min || *out > max) {
        sl_errors_add(errs, "%s: %s must be between %lld and %lld", path, brief,
                      min, max);
        return -1;
    }
    return 0;
}

static int sl_get_string(json_t *v, const char *path, const char **out,
                         struct sl_errors *errs)
{
    char brief[80];

    if (!json_is_string(v)) {
        sl_json_brief(v, brief, sizeof(brief));
        sl_errors_add(errs, "%s: %s is not a string", path, brief);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static int sl_get_bool(json_t *v, const char *path, bool *out,
                       struct sl_errors *errs)
{
    char brief[80];

    if (!json_is_boolean(v)) {
        sl_json_brief(v, brief, sizeof(brief));
        sl_errors_add(errs, "%s: %s is not true or false", path, brief);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static int sl_is_token(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && strchr("!#$%&'*+-.^_`|~", *s) == NULL)
            return 0;
    return 1;
}

int sl_config_split_listen(const char *text, char **host, int *port)
{
    const char *colon;
    char *end;
    long p;
    size_t hlen;
    const char *hstart = text;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        hstart = text + 1;
        hlen = (size_t)(close - hstart);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return -1;
        hlen = (size_t)(colon - text);
        if (memchr(text, ':', hlen) != NULL)
            return -1;  /* bare IPv6 without brackets */
    }
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || p < 1 || p > 65535)
        return -1;
    *host = strndup(hstart, hlen);
    if (*host == NULL)
        return -1;
    *port = (int)p;
    return 0;
}

static int sl_get_on_limit(json_t *v, const char *path, enum sl_on_limit *out,
                           struct sl_errors *errs)
{
    const char *s;

    if (sl_get_string(v, path, &s, errs) != 0)
        return -1;
    if (strcmp(s, "reject") == 0)
        *out = SL_ON_LIMIT_REJECT;
    else if (strcmp(s, "queue") == 0)
        *out = SL_ON_LIMIT_QUEUE;
    else {
        sl_errors_add(errs, "%s: \"%s\" must be \"reject\" or \"queue\"", path, s);
        return -1;
    }
    return 0;
}

static void sl_parse_rule(json_t *jr, const char *path, struct sl_rule *r,
                          struct sl_errors *errs)
{
    static const char *const keys[] = {"name", "methods", "path", "per", "limit",
                                       "window", "concurrency", "on_limit",
                                       "max_wait", "sync", NULL};
    char sub[768];
    json_t *v;
    const char *s;
    long long n;
    int64_t d;

    r->per_capture = -1;
    if (!json_is_object(jr)) {
        sl_errors_add(errs, "%s: a rule must be an object", path);
        return;
    }
    sl_check_keys(jr, path, keys, errs);

    v = json_object_get(jr, "name");
    snprintf(sub, sizeof(sub), "%s.name", path);
    if (v == NULL) {
        char def[32];
        snprintf(def, sizeof(def), "rule-%zu", r->index);
        r->name = strdup(def);
    } else if (sl_get_string(v, sub, &s, errs) == 0) {
        if (*s == '\0' || strpbrk(s, "\"\\;,= ") != NULL ||
            strlen(s) > 64)
            sl_errors_add(errs, "%s: \"%s\" must be 1 to 64 characters without "
                          "quotes, backslashes, spaces, ';', ',' or '='", sub, s);
        else
            r->name = strdup(s);
    }

    v = json_object_get(jr, "methods");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.methods", path);
        if (!json_is_array(v) || json_array_size(v) == 0) {
            sl_errors_add(errs, "%s: must be a non-empty array of method names",
                          sub);
        } else {
            size_t i;
            json_t *m;
            r->methods = calloc(json_array_size(v), sizeof(char *));
            json_array_foreach(v, i, m) {
                char msub[800];
                snprintf(msub, sizeof(msub), "%s[%zu]", sub, i);
                if (sl_get_string(m, msub, &s, errs) != 0)
                    continue;
                if (!sl_is_token(s)) {
                    sl_errors_add(errs, "%s: \"%s\" is not a method name", msub, s);
                    continue;
                }
                if (r->methods == NULL)
                    continue;
                r->methods[r->nmethods] = strdup(s);
                for (char *c = r->methods[r->nmethods]; c && *c; c++)
                    *c = (char)toupper((unsigned char)*c);
                r->nmethods++;
            }
        }
    }

    v = json_object_get(jr, "path");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.path", path);
        if (sl_get_string(v, sub, &s, errs) == 0) {
            const char *why;
            r->path = sl_pattern_compile(s, &why);
            if (r->path == NULL)
                sl_errors_add(errs, "%s: \"%s\" %s", sub, s, why);
        }
    }

    json_t *jl = json_object_get(jr, "limit");
    json_t *jw = json_object_get(jr, "window");
    json_t *jc = json_object_get(jr, "concurrency");
    if (jc != NULL) {
        r->kind = SL_RULE_CONCURRENCY;
        snprintf(sub, sizeof(sub), "%s.concurrency", path);
        if (sl_get_int(jc, sub, 1, 1000000000LL, &n, errs) == 0)
            r->limit = (uint64_t)n;
        if (jl != NULL || jw != NULL)
            sl_errors_add(errs, "%s: a rule has either \"concurrency\" or "
                          "\"limit\" with \"window\", not both", path);
    } else {
        r->kind = SL_RULE_RATE;
        if (jl == NULL || jw == NULL) {
            sl_errors_add(errs, "%s: a rule needs \"limit\" and \"window\" "
                          "(or \"concurrency\")", path);
        }
        if (jl != NULL) {
            snprintf(sub, sizeof(sub), "%s.limit", path);
            /* The memory store logs one timestamp per call: keep it sane. */
            if (sl_get_int(jl, sub, 1, 100000000LL, &n, errs) == 0)
                r->limit = (uint64_t)n;
        }
        if (jw != NULL) {
            snprintf(sub, sizeof(sub), "%s.window", path);
            if (sl_get_duration(jw, sub, 0, &d, errs) == 0) {
                if (d > 366 * 86400 * SL_USEC_PER_SEC)
                    sl_errors_add(errs, "%s: a window longer than 366 days is "
                                  "not supported", sub);
                else if (d < SL_USEC_PER_MSEC)
                    sl_errors_add(errs, "%s: a window shorter than 1ms is not "
                                  "supported", sub);
                else
                    r->window_us = d;
            }
        }
    }

    v = json_object_get(jr, "on_limit");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.on_limit", path);
        sl_get_on_limit(v, sub, &r->on_limit, errs);
        r->on_limit_set = true;
    }
    v = json_object_get(jr, "max_wait");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.max_wait", path);
        if (sl_get_duration(v, sub, 0, &r->max_wait_us, errs) == 0)
            r->max_wait_set = true;
    }

    v = json_object_get(jr, "sync");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.sync", path);
        if (sl_get_string(v, sub, &s, errs) == 0) {
            if (strcmp(s, "sforce-limit-info") == 0)
                r->sync = SL_SYNC_SFORCE;
            else if (strcmp(s, "x-ratelimit") == 0)
                r->sync = SL_SYNC_XRATELIMIT;
            else if (strcmp(s, "ratelimit") == 0)
                r->sync = SL_SYNC_RATELIMIT;
            else if (strcmp(s, "shopify") == 0)
                r->sync = SL_SYNC_SHOPIFY;
            else
                sl_errors_add(errs, "%s: \"%s\" must be \"sforce-limit-info\", "
                              "\"x-ratelimit\", \"ratelimit\" or \"shopify\"", sub, s);
            if (r->sync != SL_SYNC_NONE && r->kind != SL_RULE_RATE)
                sl_errors_add(errs, "%s: only a rule with \"limit\" and \"window\" "
                              "can follow the provider's count", sub);
        }
    }

    v = json_object_get(jr, "per");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.per", path);
        if (sl_get_string(v, sub, &s, errs) == 0) {
            size_t len = strlen(s);
            r->per_text = strdup(s);
            if (strncasecmp(s, "header:", 7) == 0 && sl_is_token(s + 7)) {
                r->per_kind = SL_PER_HEADER;
                r->per_header = strdup(s + 7);
            } else if (len > 2 && s[0] == '{' && s[len - 1] == '}') {
                char name[128];
                snprintf(name, sizeof(name), "%.*s", (int)(len - 2), s + 1);
                r->per_kind = SL_PER_CAPTURE;
                if (r->path == NULL ||
                    (r->per_capture = sl_pattern_capture_index(r->path, name)) < 0)
                    sl_errors_add(errs, "%s: \"%s\" names no capture of this "
                                  "rule's path", sub, s);
            } else {
                sl_errors_add(errs, "%s: \"%s\" must be \"{capture}\" or "
                              "\"header:NAME\"", sub, s);
            }
        }
    }
}

static void sl_parse_upstream(json_t *ju, const char *path,
                              struct sl_upstream_conf *u, struct sl_errors *errs)
{
    static const char *const keys[] = {"name", "prefix", "url", "on_limit",
                                       "max_wait", "max_queue", "limit_signals",
                                       "default_pause", "retry_on_limit",
                                       "retry_unsafe",
                                       "tls_verify", "ca_file", "connect_timeout",
                                       "timeout", "rules", NULL};
    char sub[768];
    json_t *v;
    const char *s;

    u->tls_verify = true;
    u->connect_timeout_us = 5 * SL_USEC_PER_SEC;
    u->timeout_us = 60 * SL_USEC_PER_SEC;
    if (!json_is_object(ju)) {
        sl_errors_add(errs, "%s: an upstream must be an object", path);
        return;
    }
    sl_check_keys(ju, path, keys, errs);

    snprintf(sub, sizeof(sub), "%s.name", path);
    v = json_object_get(ju, "name");
    if (v == NULL)
        sl_errors_add(errs, "%s: is required", sub);
    else if (sl_get_string(v, sub, &s, errs) == 0) {
        int ok = *s != '\0' && strlen(s) <= 64;
        for (const char *c = s; *c; c++)
            if (!isalnum((unsigned char)*c) && !strchr("-_.", *c))
                ok = 0;
        if (!ok)
            sl_errors_add(errs, "%s: \"%s\" must be 1 to 64 letters, digits, "
                          "'-', '_' or '.'", sub, s);
        else
            u->name = strdup(s);
    }

    snprintf(sub, sizeof(sub), "%s.prefix", path);
    v = json_object_get(ju, "prefix");
    if (v == NULL)
        sl_errors_add(errs, "%s: is required", sub);
    else if (sl_get_string(v, sub, &s, errs) == 0) {
        size_t len = strlen(s);
        if (len == 0 || s[0] != '/' || strpbrk(s, "?#* \t") != NULL ||
            (len > 1 && s[len - 1] == '/'))
            sl_errors_add(errs, "%s: \"%s\" must start with \"/\", not end with "
                          "\"/\" (unless it is \"/\") and hold no '?', '#', '*' "
                          "or spaces", sub, s);
        else {
            u->prefix = strdup(s);
            u->prefix_len = len;
        }
    }

    snprintf(sub, sizeof(sub), "%s.url", path);
    v = json_object_get(ju, "url");
    if (v == NULL)
        sl_errors_add(errs, "%s: is required", sub);
    else if (sl_get_string(v, sub, &s, errs) == 0) {
        const char *rest = NULL;
        if (strncmp(s, "http://", 7) == 0)
            rest = s + 7;
        else if (strncmp(s, "https://", 8) == 0)
            rest = s + 8;
        if (rest == NULL || *rest == '\0' || *rest == '/' ||
            strpbrk(s, "?# \t\r\n") != NULL) {
            sl_errors_add(errs, "%s: \"%s\" must be an http:// or https:// URL "
                          "with a host and no query or fragment", sub, s);
        } else {
            size_t len = strlen(s);
            while (len > 0 && s[len - 1] == '/' && s + len - 1 > rest)
                len--;
            u->url = strndup(s, len);
        }
    }

    v = json_object_get(ju, "on_limit");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.on_limit", path);
        sl_get_on_limit(v, sub, &u->on_limit, errs);
    }
    u->max_wait_us = 30 * SL_USEC_PER_SEC;
    v = json_object_get(ju, "max_wait");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.max_wait", path);
        sl_get_duration(v, sub, 0, &u->max_wait_us, errs);
    }
    u->max_queue = 10000;
    v = json_object_get(ju, "max_queue");
    if (v != NULL) {
        long long n;
        snprintf(sub, sizeof(sub), "%s.max_queue", path);
        if (sl_get_int(v, sub, 0, 10000000LL, &n, errs) == 0)
            u->max_queue = (unsigned)n;
    }
    u->default_pause_us = 60 * SL_USEC_PER_SEC;
    v = json_object_get(ju, "default_pause");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.default_pause", path);
        sl_get_duration(v, sub, 0, &u->default_pause_us, errs);
    }
    v = json_object_get(ju, "retry_on_limit");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.retry_on_limit", path);
        sl_get_bool(v, sub, &u->retry_on_limit, errs);
    }
    v = json_object_get(ju, "retry_unsafe");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.retry_unsafe", path);
        sl_get_bool(v, sub, &u->retry_unsafe, errs);
    }
    v = json_object_get(ju, "limit_signals");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.limit_signals", path);
        if (!json_is_array(v) || json_array_size(v) > 16) {
            sl_errors_add(errs, "%s: must be an array of at most 16 signals", sub);
        } else if (json_array_size(v) > 0) {
            size_t i;
            json_t *js;
            u->signals = calloc(json_array_size(v), sizeof(*u->signals));
            json_array_foreach(v, i, js) {
                static const char *const skeys[] = {"status", "body_contains", "pause",
                                                    NULL};
                char ssub[900];
                long long st;
                json_t *f;
                snprintf(ssub, sizeof(ssub), "%.200s[%zu]", sub, i);
                if (!json_is_object(js) || u->signals == NULL) {
                    sl_errors_add(errs, "%s: a signal must be an object", ssub);
                    continue;
                }
                sl_check_keys(js, ssub, skeys, errs);
                struct sl_limit_signal *sg = &u->signals[u->nsignals++];
                sg->pause_us = -1;
                f = json_object_get(js, "status");
                if (f == NULL)
                    sl_errors_add(errs, "%s.status: is required", ssub);
                else {
                    char fsub[960];
                    snprintf(fsub, sizeof(fsub), "%s.status", ssub);
                    if (sl_get_int(f, fsub, 100, 599, &st, errs) == 0)
                        sg->status = (unsigned)st;
                }
                f = json_object_get(js, "body_contains");
                if (f != NULL) {
                    char fsub[960];
                    snprintf(fsub, sizeof(fsub), "%s.body_contains", ssub);
                    if (sl_get_string(f, fsub, &s, errs) == 0) {
                        if (*s == '\0' || strlen(s) > 1024)
                            sl_errors_add(errs, "%s: must be 1 to 1024 characters", fsub);
                        else
                            sg->body_contains = strdup(s);
                    }
                }
                f = json_object_get(js, "pause");
                if (f != NULL) {
                    char fsub[960];
                    snprintf(fsub, sizeof(fsub), "%s.pause", ssub);
                    sl_get_duration(f, fsub, 0, &sg->pause_us, errs);
                }
            }
        }
    }

    v = json_object_get(ju, "tls_verify");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.tls_verify", path);
        sl_get_bool(v, sub, &u->tls_verify, errs);
    }
    v = json_object_get(ju, "ca_file");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.ca_file", path);
        if (sl_get_string(v, sub, &s, errs) == 0) {
            if (access(s, R_OK) != 0)
                sl_errors_add(errs, "%s: \"%s\" cannot be read: %s", sub, s,
                              strerror(errno));
            else
                u->ca_file = strdup(s);
        }
    }
    v = json_object_get(ju, "connect_timeout");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.connect_timeout", path);
        sl_get_duration(v, sub, 0, &u->connect_timeout_us, errs);
    }
    v = json_object_get(ju, "timeout");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.timeout", path);
        sl_get_duration(v, sub, 1, &u->timeout_us, errs);
    }

    v = json_object_get(ju, "rules");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.rules", path);
        if (!json_is_array(v)) {
            sl_errors_add(errs, "%s: must be an array of rules", sub);
        } else if (json_array_size(v) > 64) {
            sl_errors_add(errs, "%s: at most 64 rules per upstream", sub);
        } else if (json_array_size(v) > 0) {
            size_t i;
            json_t *jr;
            u->rules = calloc(json_array_size(v), sizeof(*u->rules));
            if (u->rules == NULL) {
                sl_errors_add(errs, "%s: out of memory", sub);
                return;
            }
            u->nrules = json_array_size(v);
            json_array_foreach(v, i, jr) {
                char rsub[160];
                snprintf(rsub, sizeof(rsub), "%.120s[%zu]", sub, i);
                u->rules[i].index = i;
                sl_parse_rule(jr, rsub, &u->rules[i], errs);
                if (!u->rules[i].on_limit_set)
                    u->rules[i].on_limit = u->on_limit;
                if (!u->rules[i].max_wait_set)
                    u->rules[i].max_wait_us = u->max_wait_us;
                u->rules[i].span_us = u->rules[i].window_us + u->margin_us;
                for (size_t k = 0; k < i; k++)
                    if (u->rules[i].name && u->rules[k].name &&
                        strcmp(u->rules[i].name, u->rules[k].name) == 0)
                        sl_errors_add(errs, "%s.name: \"%s\" is already the name "
                                      "of rules[%zu]", rsub, u->rules[i].name, k);
            }
        }
    }
    /* The implicit pause rule (after the rules: its index is nrules). */
    u->pause_rule.name = strdup("upstream-pause");
    u->pause_rule.index = u->nrules;
    u->pause_rule.kind = SL_RULE_PAUSE;
    u->pause_rule.limit = 1;
    u->pause_rule.per_capture = -1;
    u->pause_rule.on_limit = u->on_limit;
    u->pause_rule.max_wait_us = u->max_wait_us;
    for (size_t i = 0; i < u->nsignals; i++)
        if (u->signals[i].pause_us < 0)
            u->signals[i].pause_us = u->default_pause_us;
}

static char *sl_pct_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len &&
            isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            *o++ = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

int sl_config_parse_redis_url(const char *url, struct sl_config *c,
                              const char **why)
{
    const char *p, *at, *slash, *host, *colon;
    size_t hlen;
    char *end;
    long v;

    if (strncmp(url, "rediss://", 9) == 0) {
        *why = "TLS to Redis (rediss://) is not supported: the hiredis 0.14 "
               "library sluice is built on has no TLS; use redis:// on a "
               "private network or a local TLS tunnel (e.g. stunnel)";
        return -1;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        *why = "is not a store: use \"memory\" or \"redis://[:password@]host:port[/db]\"";
        return -1;
    }
    p = url + 8;
    slash = strchr(p, '/');
    at = memchr(p, '@', slash ? (size_t)(slash - p) : strlen(p));
    if (at != NULL) {
        const char *cred_colon = memchr(p, ':', (size_t)(at - p));
        if (cred_colon == NULL) {
            *why = "has credentials without a ':' (write redis://:password@host or "
                   "redis://user:password@host)";
            return -1;
        }
        if (cred_colon > p)
            c->redis_user = sl_pct_decode(p, (size_t)(cred_colon - p));
        c->redis_password = sl_pct_decode(cred_colon + 1, (size_t)(at - cred_colon - 1));
        p = at + 1;
    }
    host = p;
    hlen = slash ? (size_t)(slash - p) : strlen(p);
    c->redis_port = 6379;
    if (hlen > 0 && host[0] == '[') {
        const char *close = memchr(host, ']', hlen);
        if (close == NULL) {
            *why = "has an unclosed IPv6 address";
            return -1;
        }
        c->redis_host = strndup(host + 1, (size_t)(close - host - 1));
        colon = close + 1 < host + hlen && close[1] == ':' ? close + 1 : NULL;
    } else {
        colon = memchr(host, ':', hlen);
        c->redis_host = strndup(host, colon ? (size_t)(colon - host) : hlen);
    }
    if (c->redis_host == NULL || c->redis_host[0] == '\0') {
        *why = "has no host";
        return -1;
    }
    if (colon != NULL) {
        v = strtol(colon + 1, &end, 10);
        if (end != host + hlen || v < 1 || v > 65535) {
            *why = "has a port that is not a number from 1 to 65535";
            return -1;
        }
        c->redis_port = (int)v;
    }
    if (slash != NULL && slash[1] != '\0') {
        v = strtol(slash + 1, &end, 10);
        if (*end != '\0' || v < 0 || v > 1000000) {
            *why = "has a database that is not a number (redis://host:port/0)";
            return -1;
        }
        c->redis_db = (int)v;
    }
    return 0;
}

static void sl_parse_root(json_t *root, bool apply_env, struct sl_config *c,
                          struct sl_errors *errs)
{
    static const char *const keys[] = {"listen", "store", "store_prefix",
                                       "on_store_error", "store_timeout",
                                       "concurrency_lease", "memory_limit", "workers",
                                       "access_log", "shutdown_timeout",
                                       "client_timeout", "max_connections",
                                       "upstreams", NULL};
    const char *s, *env;
    json_t *v;
    long long n;

    c->memory_limit = SL_DEFAULT_MEMORY_LIMIT;
    c->access_log = true;
    c->shutdown_timeout_us = 10 * SL_USEC_PER_SEC;
    c->client_timeout_us = 60 * SL_USEC_PER_SEC;
    c->max_connections = 10000;
    if (!json_is_object(root)) {
        sl_errors_add(errs, "(root): the configuration must be a JSON object");
        return;
    }
    sl_check_keys(root, "", keys, errs);

    s = SL_DEFAULT_LISTEN;
    v = json_object_get(root, "listen");
    if (v != NULL)
        sl_get_string(v, "listen", &s, errs);
    env = apply_env ? getenv("SLUICE_LISTEN") : NULL;
    if (env != NULL && *env)
        s = env;
    c->listen = strdup(s);
    if (sl_config_split_listen(s, &c->listen_host, &c->listen_port) != 0)
        sl_errors_add(errs, "listen%s: \"%s\" is not HOST:PORT (e.g. "
                      "\"127.0.0.1:8080\", \"[::1]:8080\" or \":8080\")",
                      env && *env ? " (from SLUICE_LISTEN)" : "", s);

    s = "memory";
    v = json_object_get(root, "store");
    if (v != NULL)
        sl_get_string(v, "store", &s, errs);
    env = apply_env ? getenv("SLUICE_STORE") : NULL;
    if (env != NULL && *env)
        s = env;
    c->store = strdup(s);
    if (strcmp(s, "memory") == 0) {
        c->store_kind = SL_STORE_MEMORY;
    } else {
        const char *why = NULL;
        c->store_kind = SL_STORE_REDIS;
        if (sl_config_parse_redis_url(s, c, &why) != 0) {
            /* Never echo a URL that may hold a password. */
            sl_errors_add(errs, "store%s: %s", env && *env ? " (from SLUICE_STORE)" : "",
                          why);
            if (strncmp(s, "redis", 5) != 0)
                sl_errors_add(errs, "store: \"%.40s\" is neither \"memory\" nor a "
                              "redis:// URL", s);
        }
    }

    c->store_prefix = strdup("sluice:");
    v = json_object_get(root, "store_prefix");
    if (v != NULL && sl_get_string(v, "store_prefix", &s, errs) == 0) {
        if (strpbrk(s, "{}") != NULL || strlen(s) > 64)
            sl_errors_add(errs, "store_prefix: \"%s\" must be at most 64 "
                          "characters without '{' or '}' (sluice adds its own "
                          "hash tags)", s);
        else {
            free(c->store_prefix);
            c->store_prefix = strdup(s);
        }
    }
    c->on_store_error = SL_STORE_ERROR_LOCAL;
    v = json_object_get(root, "on_store_error");
    if (v != NULL && sl_get_string(v, "on_store_error", &s, errs) == 0) {
        if (strcmp(s, "local") == 0)
            c->on_store_error = SL_STORE_ERROR_LOCAL;
        else if (strcmp(s, "deny") == 0)
            c->on_store_error = SL_STORE_ERROR_DENY;
        else if (strcmp(s, "allow") == 0)
            c->on_store_error = SL_STORE_ERROR_ALLOW;
        else
            sl_errors_add(errs, "on_store_error: \"%s\" must be \"local\", "
                          "\"deny\" or \"allow\"", s);
    }
    c->store_timeout_us = 200 * SL_USEC_PER_MSEC;
    v = json_object_get(root, "store_timeout");
    if (v != NULL &&
        sl_get_duration(v, "store_timeout", 0, &c->store_timeout_us, errs) == 0 &&
        c->store_timeout_us < SL_USEC_PER_MSEC)
        sl_errors_add(errs, "store_timeout: must be at least 1ms");
    c->lease_ttl_us = 10 * SL_USEC_PER_SEC;
    v = json_object_get(root, "concurrency_lease");
    if (v != NULL &&
        sl_get_duration(v, "concurrency_lease", 0, &c->lease_ttl_us, errs) == 0 &&
        c->lease_ttl_us < 300 * SL_USEC_PER_MSEC)
        sl_errors_add(errs, "concurrency_lease: must be at least 300ms");

    v = json_object_get(root, "memory_limit");
    if (v != NULL) {
        if (json_is_integer(v) && json_integer_value(v) > 0)
            c->memory_limit = (uint64_t)json_integer_value(v);
        else if (!json_is_string(v) ||
                 sl_size_parse(json_string_value(v), &c->memory_limit) != 0 ||
                 c->memory_limit == 0) {
            char brief[80];
            sl_json_brief(v, brief, sizeof(brief));
            sl_errors_add(errs, "memory_limit: %s is not a size (write e.g. "
                          "\"64MB\" or a number of bytes)", brief);
        }
        if (c->memory_limit < 65536)
            sl_errors_add(errs, "memory_limit: must be at least 64KB");
    }
    v = json_object_get(root, "workers");
    if (v != NULL && sl_get_int(v, "workers", 0, 64, &n, errs) == 0)
        c->workers = (int)n;
    v = json_object_get(root, "access_log");
    if (v != NULL)
        sl_get_bool(v, "access_log", &c->access_log, errs);
    v = json_object_get(root, "shutdown_timeout");
    if (v != NULL)
        sl_get_duration(v, "shutdown_timeout", 1, &c->shutdown_timeout_us, errs);
    v = json_object_get(root, "client_timeout");
    if (v != NULL &&
        sl_get_duration(v, "client_timeout", 0, &c->client_timeout_us, errs) == 0 &&
        c->client_timeout_us < SL_USEC_PER_SEC)
        sl_errors_add(errs, "client_timeout: must be at least 1s");
    v = json_object_get(root, "max_connections");
    if (v != NULL && sl_get_int(v, "max_connections", 1, 1000000, &n, errs) == 0)
        c->max_connections = (unsigned)n;

    v = json_object_get(root, "upstreams");
    if (v == NULL || !json_is_array(v) || json_array_size(v) == 0) {
        sl_errors_add(errs, "upstreams: must be a non-empty array of upstreams");
        return;
    }
    c->upstreams = calloc(json_array_size(v), sizeof(*c->upstreams));
    if (c->upstreams == NULL) {
        sl_errors_add(errs, "upstreams: out of memory");
        return;
    }
    c->nupstreams = json_array_size(v);
    for (size_t i = 0; i < c->nupstreams; i++) {
        char path[64];
        struct sl_upstream_conf *u = &c->upstreams[i];
        snprintf(path, sizeof(path), "upstreams[%zu]", i);
        u->index = i;
        sl_parse_upstream(json_array_get(v, i), path, u, errs);
        for (size_t k = 0; k < i; k++) {
            if (u->name && c->upstreams[k].name &&
                strcmp(u->name, c->upstreams[k].name) == 0)
                sl_errors_add(errs, "%s.name: \"%s\" is already the name of "
                              "upstreams[%zu]", path, u->name, k);
            if (u->prefix && c->upstreams[k].prefix &&
                strcmp(u->prefix, c->upstreams[k].prefix) == 0)
                sl_errors_add(errs, "%s.prefix: \"%s\" is already the prefix of "
                              "upstreams[%zu]", path, u->prefix, k);
        }
    }
}

int sl_config_parse(const char *text, const char *name, bool apply_env,
                    struct sl_config **out, struct sl_errors *errs)
{
    json_error_t jerr;
    json_t *root;
    struct sl_config *c;
    size_t before = errs->count;

    *out = NULL;
    root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        sl_errors_add(errs, "%s:%d:%d: %s", name, jerr.line, jerr.column,
                      jerr.text);
        return -1;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        json_decref(root);
        sl_errors_add(errs, "out of memory");
        return -1;
    }
    sl_parse_root(root, apply_env, c, errs);
    json_decref(root);
    if (errs->count > before) {
        sl_config_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

int sl_config_load(const char *path, bool apply_env, struct sl_config **out,
                   struct sl_errors *errs)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc;

    *out = NULL;
    if (f == NULL) {
        sl_errors_add(errs, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *t;
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                sl_errors_add(errs, "%s: larger than 16 MiB", path);
                goto fail;
            }
            t = realloc(text, cap);
            if (t == NULL) {
                sl_errors_add(errs, "%s: out of memory", path);
                goto fail;
            }
            text = t;
        }
        size_t n = fread(text + len, 1, 4096, f);
        len += n;
        if (n < 4096)
            break;
    }
    if (ferror(f)) {
        sl_errors_add(errs, "%s: read error: %s", path, strerror(errno));
        goto fail;
    }
    text[len] = '\0';
    fclose(f);
    rc = sl_config_parse(text, path, apply_env, out, errs);
    free(text);
    return rc;
fail:
    fclose(f);
    free(text);
    return -1;
}

static void sl_rule_free(struct sl_rule *r)
{
    free(r->name);
    for (size_t i = 0; i < r->nmethods; i++)
        free(r->methods[i]);
    free(r->methods);
    sl_pattern_free(r->path);
    free(r->per_text);
    free(r->per_header);
}

void sl_config_free(struct sl_config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nupstreams; i++) {
        struct sl_upstream_conf *u = &c->upstreams[i];
        free(u->name);
        free(u->prefix);
        free(u->url);
        free(u->ca_file);
        for (size_t k = 0; k < u->nrules; k++)
            sl_rule_free(&u->rules[k]);
        free(u->rules);
        free(u->pause_rule.name);
        for (size_t k = 0; k < u->nsignals; k++)
            free(u->signals[k].body_contains);
        free(u->signals);
    }
    free(c->upstreams);
    free(c->listen);
    free(c->listen_host);
    free(c->store);
    free(c->redis_host);
    free(c->redis_user);
    free(c->redis_password);
    free(c->store_prefix);
    free(c);
}
