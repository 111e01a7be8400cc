/*
 * sl_config — load and validate the JSON configuration (see sl_config.h).
 *
 * Validation never stops at the first problem: each checker appends an
 * error naming the JSON path ("upstreams[0].rules[2].window") and goes on,
 * so `sluice --check` lists everything wrong at once.  Unknown keys are
 * errors too: a typo such as "limt" must not silently disable a quota.
 * Syntax errors come from jansson with line and column.
 *
 * What is refused, beyond types and ranges, is what would make a rule
 * silently useless or the proxy unsafe:
 *   - a path pattern or prefix that can never equal a canonical request
 *     path (sl_path.h: decoded, '\' as '/', ";params" dropped, slashes
 *     merged, dot segments refused): "//", dot segments, '%', '\', ';'.
 *     Such a rule would look configured and count nothing;
 *   - an upstream URL whose host or base path another parser could read
 *     differently ("http://h%2F../x"): only plain host names, IPv4
 *     addresses and bracketed IPv6 literals, and plain path characters;
 *   - durations no one means (a 30-day connect timeout), a CA file with
 *     no certificate in it, names and messages with control characters;
 *   - a reject body template naming a placeholder that does not exist,
 *     or (for a JSON content type) not JSON once filled in.
 * Every value echoed in an error line goes through sl_quote(), so a
 * control character in a config never reaches a terminal or a log raw.
 *
 * Duplicate names and prefixes are found with hash sets (jansson objects
 * keyed by the name), so a config with 50,000 upstreams checks in linear
 * time.
 */
#include "sl_config.h"

#include "sl_apps.h"

#include "sl_duration.h"
#include "sl_http.h"
#include "sl_pattern.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define SL_DEFAULT_LISTEN "127.0.0.1:8080"
#define SL_DEFAULT_MEMORY_LIMIT (UINT64_C(64) << 20)
/* An upstream's margin, unless it says: min(SL_MARGIN_DEFAULT, window / 20)
 * for each rule. */
#define SL_MARGIN_DEFAULT (100 * SL_USEC_PER_MSEC)
/* A per rule's distinct keys held at once, unless it says "max_keys". */
#define SL_DEFAULT_MAX_KEYS 10000
/* A slow reader's response beyond the in-memory buffer, per call (as
 * NGINX's proxy_max_temp_file_size, which defaults to 1 GiB). */
#define SL_DEFAULT_RESPONSE_SPOOL (UINT64_C(64) << 20)

#define SL_SECONDS(n) ((int64_t)(n) * SL_USEC_PER_SEC)
#define SL_MINUTES(n) (SL_SECONDS(n) * 60)
#define SL_HOURS(n) (SL_MINUTES(n) * 60)
#define SL_DAYS(n) (SL_HOURS(n) * 24)

/* Longest reject body template, and longest echoed value in an error. */
#define SL_REJECT_BODY_MAX 8192
#define SL_QUOTE_MAX 60

/* The names a reject body template may use (sl_upstream_conf.reject_body). */
static const char *const sl_reject_placeholders[] = {
    "upstream", "rule", "limit", "window", "retry_after", "message", "app",
    "share", NULL,
};

static void sl_check_keys(json_t *obj, const char *path,
                          const char *const *allowed, struct sl_errors *errs);
static void sl_parse_upstream(json_t *ju, const char *path,
                              struct sl_upstream_conf *u, struct sl_errors *errs);
static void sl_parse_rule(json_t *jr, const char *path,
                          const struct sl_upstream_conf *u, struct sl_rule *r,
                          struct sl_errors *errs);
static void sl_parse_app(json_t *v, const char *path, enum sl_app_kind *kind,
                         char **header, struct sl_errors *errs);
static int sl_get_on_limit(json_t *v, const char *path, enum sl_on_limit *out,
                           struct sl_errors *errs);

/* ---- character classes (ASCII only, whatever the locale says) ---- */

static bool sl_is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool sl_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 9110 tchar. */
static bool sl_is_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!sl_http_tchar((unsigned char)*s))
            return false;
    return true;
}

/*
 * RFC 3986 pchar without percent-encoding and ';' (which sl_path drops
 * with what follows it): unreserved, the other sub-delims, ':' and '@'.
 * STAR says whether '*' is allowed too.
 */
static bool sl_is_plain_pchar(unsigned char c, bool star)
{
    if (sl_is_alnum(c) || (c != '\0' && strchr("-._~!$&'()+,=:@", c) != NULL))
        return true;
    return star && c == '*';
}

/*
 * The array grows to 8 lines, then doubles whenever COUNT reaches a power
 * of two: amortized O(1) per line without a capacity field.
 */
void sl_errors_add(struct sl_errors *errs, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (errs->count == 0 || (errs->count >= 8 &&
                             (errs->count & (errs->count - 1)) == 0)) {
        size_t cap = errs->count == 0 ? 8 : errs->count * 2;
        char **lines = realloc(errs->lines, cap * sizeof(*lines));
        if (lines == NULL)
            return;
        errs->lines = lines;
    }
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

/* ---- echoing values in error lines ---- */

/*
 * S for an error line, into BUF (LEN >= 16): '"' and '\\' escaped when
 * QUOTED (and the whole in double quotes), every byte outside printable
 * ASCII written as \\n, \\t or \\xHH, cut after MAX bytes of S (or when
 * BUF is full) with "...".  Returns BUF.
 */
static const char *sl_escape(const char *s, size_t max, bool quoted, char *buf,
                             size_t len)
{
    size_t o = 0, i;

    if (quoted)
        buf[o++] = '"';
    for (i = 0; s[i] != '\0' && i < max && o + 8 < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (quoted && (c == '"' || c == '\\'))
            o += (size_t)snprintf(buf + o, len - o, "\\%c", c);
        else if (c == '\n')
            o += (size_t)snprintf(buf + o, len - o, "\\n");
        else if (c == '\t')
            o += (size_t)snprintf(buf + o, len - o, "\\t");
        else if (c < 0x20 || c >= 0x7f)
            o += (size_t)snprintf(buf + o, len - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    if (s[i] != '\0')
        o += (size_t)snprintf(buf + o, len - o, "...");
    if (quoted)
        buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* S in double quotes, escaped and cut at SL_QUOTE_MAX bytes. */
static const char *sl_quote(const char *s, char *buf, size_t len)
{
    return sl_escape(s, SL_QUOTE_MAX, true, buf, len);
}

/* Render a JSON value briefly for an error message: "5x", 12, true. */
static void sl_json_brief(json_t *v, char *buf, size_t len)
{
    char *s;

    if (json_is_string(v)) {
        sl_quote(json_string_value(v), buf, len);
        return;
    }
    if (json_is_real(v)) {
        /* As written: the shortest form that reads back the same
         * (jansson would print 0.1 as 0.10000000000000001). */
        double d = json_real_value(v);
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, len, "%.*g", prec, d);
            if (strtod(buf, NULL) == d)
                break;
        }
        return;
    }
    s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII);
    if (s == NULL) {
        snprintf(buf, len, "(value)");
        return;
    }
    /* JSON leaves DEL (0x7f) raw: escape it like the rest. */
    sl_escape(s, SL_QUOTE_MAX, false, buf, len);
    free(s);
}

/* C as a reader would name it: "' '" is "a space", 0x0a is "byte 0x0a". */
static const char *sl_char_name(unsigned char c, char *buf, size_t len)
{
    if (c == ' ')
        snprintf(buf, len, "a space");
    else if (c > 0x20 && c < 0x7f)
        snprintf(buf, len, "'%c'", c);
    else
        snprintf(buf, len, "byte 0x%02x", c);
    return buf;
}

static void sl_check_keys(json_t *obj, const char *path,
                          const char *const *allowed, struct sl_errors *errs)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v) {
        bool known = false, plain = *key != '\0' && strlen(key) <= SL_QUOTE_MAX;
        char q[96];
        for (const char *const *a = allowed; *a != NULL; a++)
            if (strcmp(*a, key) == 0)
                known = true;
        if (known)
            continue;
        /* A plain key reads best as part of the path; others are quoted. */
        for (const char *c = key; *c; c++)
            if (!sl_is_alnum((unsigned char)*c) && *c != '_' && *c != '-')
                plain = false;
        if (plain)
            sl_errors_add(errs, "%s%s%s: unknown key", path, *path ? "." : "", key);
        else
            sl_errors_add(errs, "%s: unknown key %s", *path ? path : "(root)",
                          sl_quote(key, q, sizeof(q)));
    }
}

/* ---- typed values ---- */

/*
 * Read a duration from V (a string with a unit, or a number of seconds)
 * into *out.  It must lie in [MIN, MAX]; ZERO_OK also lets 0 through
 * below MIN (the settings where 0 means "none" or "never").
 * Returns 0, or adds an error and returns -1.
 */
static int sl_get_duration(json_t *v, const char *path, int64_t min, int64_t max,
                           bool zero_ok, int64_t *out, struct sl_errors *errs)
{
    char brief[96], bound[SL_DURATION_FORMAT_MAX];
    int rc = -1;

    sl_json_brief(v, brief, sizeof(brief));
    if (json_is_string(v)) {
        rc = sl_duration_parse(json_string_value(v), out);
    } else if (json_is_integer(v)) {
        /* Exact for every integer: no detour through a double. */
        json_int_t n = json_integer_value(v);
        rc = n > SL_DURATION_MAX / SL_USEC_PER_SEC ? -2 : 0;
        /* Any negative is refused below; its size does not matter. */
        if (rc == 0)
            *out = n < 0 ? -1 : (int64_t)n * SL_USEC_PER_SEC;
    } else if (json_is_real(v)) {
        rc = sl_duration_from_seconds(json_real_value(v), out) == 0 ? 0 : -2;
    }
    if (rc == -2 || (rc == 0 && *out > max)) {
        sl_duration_format(max, bound, sizeof(bound));
        sl_errors_add(errs, "%s: %s is too long: at most %s", path, brief, bound);
        return -1;
    }
    if (rc != 0) {
        sl_errors_add(errs,
                      "%s: %s is not a duration (write e.g. \"250ms\", \"10s\", "
                      "\"5m\", \"24h\", \"1d\" or a number of seconds)",
                      path, brief);
        return -1;
    }
    if (*out < 0 || (*out == 0 && !zero_ok)) {
        sl_errors_add(errs, "%s: %s must be %s", path, brief,
                      zero_ok ? "zero or more" : "more than zero");
        return -1;
    }
    if (*out < min && !(*out == 0 && zero_ok)) {
        sl_duration_format(min, bound, sizeof(bound));
        sl_errors_add(errs, "%s: %s is too short: at least %s%s", path, brief,
                      bound, zero_ok ? " (or 0)" : "");
        return -1;
    }
    return 0;
}

/* Integer in [min, max]; adds an error and returns -1 otherwise. */
static int sl_get_int(json_t *v, const char *path, long long min, long long max,
                      long long *out, struct sl_errors *errs)
{
    char brief[96];

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
    char brief[96];

    if (!json_is_string(v)) {
        sl_json_brief(v, brief, sizeof(brief));
        sl_errors_add(errs, "%s: %s is not a string", path, brief);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

/* One of two words: *OUT is false for NO, true for YES.  0 or -1 (an
 * error added, *OUT untouched). */
static int sl_get_either(json_t *v, const char *path, const char *no,
                         const char *yes, bool *out, struct sl_errors *errs)
{
    const char *s;
    char q[96];

    if (sl_get_string(v, path, &s, errs) != 0)
        return -1;
    if (strcmp(s, yes) == 0 || strcmp(s, no) == 0) {
        *out = strcmp(s, yes) == 0;
        return 0;
    }
    sl_errors_add(errs, "%s: %s must be \"%s\" or \"%s\"", path,
                  sl_quote(s, q, sizeof(q)), no, yes);
    return -1;
}

static int sl_get_bool(json_t *v, const char *path, bool *out,
                       struct sl_errors *errs)
{
    char brief[96];

    if (!json_is_boolean(v)) {
        sl_json_brief(v, brief, sizeof(brief));
        sl_errors_add(errs, "%s: %s is not true or false", path, brief);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

/*
 * The flaw of the path P (LEN bytes) that sl_path's canonical form would
 * erase or refuse: "//" (merged), a segment of dots (refused; DOTS_ONLY
 * refuses "..." too, as sl_path does, else only "." and "..").
 * Returns a sentence, or NULL.
 */
static const char *sl_segment_flaw(const char *p, size_t len, bool dots_only)
{
    size_t start = 0;

    for (size_t i = 0; i <= len; i++) {
        if (i < len && p[i] != '/')
            continue;
        size_t seg = i - start;
        if (i < len && i > 0 && seg == 0)
            return "holds \"//\" (an empty segment)";
        if (seg > 0) {
            size_t dots = 0;
            while (dots < seg && p[start + dots] == '.')
                dots++;
            if (dots == seg && (dots_only || seg <= 2))
                return dots_only ? "holds a segment of dots (\".\", \"..\")"
                                 : "holds a \".\" or \"..\" segment";
        }
        start = i + 1;
    }
    return NULL;
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
    /* Digits only: strtol alone would take " 80" and "+80". */
    if (!sl_is_digit((unsigned char)colon[1]))
        return -1;
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || errno != 0 || p < 1 || p > 65535)
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
    char q[96];

    if (sl_get_string(v, path, &s, errs) != 0)
        return -1;
    if (strcmp(s, "reject") == 0)
        *out = SL_ON_LIMIT_REJECT;
    else if (strcmp(s, "queue") == 0)
        *out = SL_ON_LIMIT_QUEUE;
    else {
        sl_errors_add(errs, "%s: %s must be \"reject\" or \"queue\"", path,
                      sl_quote(s, q, sizeof(q)));
        return -1;
    }
    return 0;
}

/* ---- rules ---- */

/*
 * The first flaw that keeps pattern TEXT from ever matching a canonical
 * path, or NULL.  (Syntax errors are sl_pattern_compile()'s to report.)
 */
static const char *sl_pattern_flaw(const char *text, char *buf, size_t len)
{
    char cn[24];

    for (const char *c = text; *c; c++) {
        unsigned char u = (unsigned char)*c;
        if (u <= 0x20 || u == 0x7f || strchr("\\;%?#", u) != NULL) {
            snprintf(buf, len, "holds %s, which no request path has once "
                     "canonical (decoded, '\\' as '/', \";params\" removed, "
                     "no query)", sl_char_name(u, cn, sizeof(cn)));
            return buf;
        }
    }
    return sl_segment_flaw(text, strlen(text), true);
}

static void sl_parse_rule_name(json_t *v, const char *sub, struct sl_rule *r,
                               struct sl_errors *errs)
{
    const char *s;
    char q[96];
    bool ok;

    if (v == NULL) {
        char def[32];
        snprintf(def, sizeof(def), "rule-%zu", r->index);
        r->name = strdup(def);
        r->unnamed = true;
        return;
    }
    if (sl_get_string(v, sub, &s, errs) != 0)
        return;
    /* It goes into RateLimit headers and log lines: visible ASCII only. */
    ok = *s != '\0' && strlen(s) <= 64;
    for (const char *c = s; *c && ok; c++)
        if (*c < 0x21 || *c > 0x7e || strchr("\"\\;,=", *c) != NULL)
            ok = false;
    if (!ok)
        sl_errors_add(errs, "%s: %s must be 1 to 64 visible ASCII characters "
                      "(no spaces, control characters, quotes, backslashes, "
                      "';', ',' or '=')", sub, sl_quote(s, q, sizeof(q)));
    else
        r->name = strdup(s);
}

static void sl_parse_methods(json_t *v, const char *sub, struct sl_rule *r,
                             struct sl_errors *errs)
{
    size_t i;
    json_t *m;
    const char *s;

    if (!json_is_array(v) || json_array_size(v) == 0) {
        sl_errors_add(errs, "%s: must be a non-empty array of method names", sub);
        return;
    }
    r->methods = calloc(json_array_size(v), sizeof(char *));
    json_array_foreach(v, i, m) {
        char msub[800], q[96];
        snprintf(msub, sizeof(msub), "%s[%zu]", sub, i);
        if (sl_get_string(m, msub, &s, errs) != 0)
            continue;
        if (!sl_is_token(s) || strlen(s) > 32) {
            sl_errors_add(errs, "%s: %s is not a method name", msub,
                          sl_quote(s, q, sizeof(q)));
            continue;
        }
        if (r->methods == NULL)
            continue;
        /* Matching is case-insensitive: the request's method is compared
         * upper-cased against these. */
        r->methods[r->nmethods] = strdup(s);
        for (char *c = r->methods[r->nmethods]; c && *c; c++)
            if (*c >= 'a' && *c <= 'z')
                *c = (char)(*c - 'a' + 'A');
        if (r->methods[r->nmethods] != NULL)
            r->nmethods++;
    }
}

static void sl_parse_sync(json_t *jr, const char *path, struct sl_rule *r,
                          struct sl_errors *errs)
{
    char sub[800], q[96];
    const char *s;
    json_t *v = json_object_get(jr, "sync");
    json_t *jp = json_object_get(jr, "sync_probe");

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
                sl_errors_add(errs, "%s: %s must be \"sforce-limit-info\", "
                              "\"x-ratelimit\", \"ratelimit\" or \"shopify\"", sub,
                              sl_quote(s, q, sizeof(q)));
            if (r->sync != SL_SYNC_NONE && r->kind != SL_RULE_RATE)
                sl_errors_add(errs, "%s: only a rule with \"limit\" and \"window\" "
                              "can follow the provider's count", sub);
        }
    }
    if (v != NULL)
        r->sync_probe_us = SL_SECONDS(60);
    if (jp != NULL) {
        snprintf(sub, sizeof(sub), "%s.sync_probe", path);
        if (v == NULL)
            sl_errors_add(errs, "%s: only a rule with \"sync\" probes the "
                          "provider's count", sub);
        else
            sl_get_duration(jp, sub, SL_SECONDS(1), SL_DURATION_MAX, true,
                            &r->sync_probe_us, errs);
    }
}

static void sl_parse_per(json_t *v, const char *sub, struct sl_rule *r,
                         struct sl_errors *errs)
{
    const char *s;
    char q[96];
    size_t len;

    if (sl_get_string(v, sub, &s, errs) != 0)
        return;
    len = strlen(s);
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
            sl_errors_add(errs, "%s: %s names no capture of this rule's path",
                          sub, sl_quote(s, q, sizeof(q)));
    } else {
        sl_errors_add(errs, "%s: %s must be \"{capture}\" or \"header:NAME\"",
                      sub, sl_quote(s, q, sizeof(q)));
    }
}

/* "reset" and "timezone" of rate rule R (its window parsed). */
static void sl_parse_calendar(json_t *jr, const char *path, struct sl_rule *r,
                              struct sl_errors *errs)
{
    json_t *jreset = json_object_get(jr, "reset");
    json_t *jtz = json_object_get(jr, "timezone");
    char sub[768], q[96], why[256];
    const char *s;

    if (jreset != NULL) {
        bool cal;
        snprintf(sub, sizeof(sub), "%s.reset", path);
        if (sl_get_either(jreset, sub, "rolling", "calendar", &cal, errs) == 0) {
            if (cal)
                r->calendar = true;
            else if (r->cal.month)
                sl_errors_add(errs, "%s: \"1mo\" is a calendar month; it "
                              "resets on the calendar (remove \"reset\" or "
                              "make it \"calendar\")", sub);
        }
    }
    if (jtz != NULL && !r->calendar) {
        sl_errors_add(errs, "%s.timezone: only calendar windows have a time zone "
                      "(add \"reset\": \"calendar\")", path);
        return;
    }
    if (!r->calendar)
        return;
    if (!r->cal.month) {
        /* Periods start at local midnight and every window after it. */
        if (r->window_us > 0 &&
            (r->window_us % SL_USEC_PER_SEC != 0 ||
             SL_DAYS(1) % r->window_us != 0)) {
            sl_errors_add(errs, "%s.window: a calendar window divides a day "
                          "(\"1d\", \"12h\", \"1h\", \"15m\", \"1s\"...) or is a "
                          "month (\"1mo\")", path);
            return;
        }
        r->cal.span_s = r->window_us / SL_USEC_PER_SEC;
    }
    if (jtz != NULL) {
        snprintf(sub, sizeof(sub), "%s.timezone", path);
        if (sl_get_string(jtz, sub, &s, errs) != 0)
            return;
    } else {
        s = "UTC";
    }
    r->timezone = strdup(s);
    r->tz = sl_tz_load(s, NULL, why, sizeof(why));
    if (r->tz == NULL) {
        sl_errors_add(errs, "%s.timezone: %s %s", path, sl_quote(s, q, sizeof(q)),
                      why);
        return;
    }
    r->cal.tz = r->tz;
}

/* Parse rule JR of upstream U (whose margin and defaults are known). */
/* ---- shares ("apps") ---- */

/* A share: a count of calls (a JSON integer) or a fraction of the limit (a
 * JSON real in (0, 1]).  Returns 0, or adds an error and returns -1. */
static int sl_get_share_value(json_t *v, const char *path, uint64_t *count,
                              double *frac, struct sl_errors *errs)
{
    char brief[96];

    if (json_is_integer(v) && json_integer_value(v) >= 0 &&
        json_integer_value(v) <= 100000000) {
        *count = (uint64_t)json_integer_value(v);
        *frac = 0.0;
        return 0;
    }
    if (json_is_real(v) && json_real_value(v) > 0.0 && json_real_value(v) <= 1.0) {
        *count = 0;
        *frac = json_real_value(v);
        return 0;
    }
    sl_json_brief(v, brief, sizeof(brief));
    sl_errors_add(errs, "%s: %s must be a count of calls (an integer such as "
                  "600) or a fraction of the limit (a number such as 0.5, "
                  "above 0 and at most 1.0)", path, brief);
    return -1;
}

static void sl_shares_free(struct sl_share *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].app);
    free(v);
}

/* Parse an "apps" object at PATH into *OUT (as written: fractions not
 * resolved).  ON_UPSTREAM: "priority" is allowed. */
static void sl_parse_shares(json_t *v, const char *path, bool on_upstream,
                            struct sl_share **out, size_t *nout,
                            struct sl_errors *errs)
{
    static const char *const keys[] = {"max", "reserve", "lend", "priority", NULL};
    static const char *const rule_keys[] = {"max", "reserve", "lend", NULL};
    char sub[900], q[96];
    const char *name;
    json_t *je;
    size_t n = 0;

    *out = NULL;
    *nout = 0;
    if (!json_is_object(v)) {
        sl_errors_add(errs, "%s: must be an object mapping app names (or \"*\", "
                      "every other app) to shares, e.g. {\"sync\": {\"max\": 0.5}}",
                      path);
        return;
    }
    if (json_object_size(v) > 256) {
        sl_errors_add(errs, "%s: at most 256 apps", path);
        return;
    }
    *out = calloc(json_object_size(v) + 1, sizeof(**out));
    if (*out == NULL) {
        sl_errors_add(errs, "%s: out of memory", path);
        return;
    }
    json_object_foreach(v, name, je) {
        struct sl_share *sh = &(*out)[n];
        json_t *x;
        snprintf(sub, sizeof(sub), "%.700s.%.100s", path, name);
        if (strcmp(name, "*") != 0 && !sl_apps_valid(name, strlen(name))) {
            sl_errors_add(errs, "%s: %s is not an app name (1 to %d letters, "
                          "digits or ._:@/+-), nor \"*\"", path,
                          sl_quote(name, q, sizeof(q)), SL_APP_NAME_MAX);
            continue;
        }
        if (!json_is_object(je)) {
            sl_errors_add(errs, "%s: must be an object such as {\"max\": 0.5} or "
                          "{\"reserve\": 100}", sub);
            continue;
        }
        if (!on_upstream && json_object_get(je, "priority") != NULL)
            sl_errors_add(errs, "%s.priority: is set in the upstream's \"apps\" "
                          "(a call has one priority, whichever rules it counts in)",
                          sub);
        else
            sl_check_keys(je, sub, on_upstream ? keys : rule_keys, errs);
        sh->app = strdup(name);
        sh->app_id = SL_APP_UNBOUND;
        char vsub[960];
        if ((x = json_object_get(je, "max")) != NULL) {
            snprintf(vsub, sizeof(vsub), "%s.max", sub);
            sh->max_set = sl_get_share_value(x, vsub, &sh->max, &sh->max_frac,
                                             errs) == 0;
        }
        if ((x = json_object_get(je, "reserve")) != NULL) {
            snprintf(vsub, sizeof(vsub), "%s.reserve", sub);
            sh->reserve_set = sl_get_share_value(x, vsub, &sh->reserve,
                                                 &sh->reserve_frac, errs) == 0;
        }
        if ((x = json_object_get(je, "lend")) != NULL) {
            snprintf(vsub, sizeof(vsub), "%s.lend", sub);
            sl_get_bool(x, vsub, &sh->lend, errs);
        }
        if (on_upstream && (x = json_object_get(je, "priority")) != NULL) {
            long long p;
            snprintf(vsub, sizeof(vsub), "%s.priority", sub);
            if (sl_get_int(x, vsub, 0, SL_PRIORITY_LEVELS - 1, &p, errs) == 0) {
                sh->priority = (int)p;
                sh->priority_set = true;
            }
        }
        n++;
    }
    *nout = n;
}

/* The count a share value stands for on a rule of LIMIT. */
static uint64_t sl_share_count(uint64_t count, double frac, uint64_t limit)
{
    if (frac > 0.0) {
        /* Rounded down, with a hair of slack for 0.3 * 10 = 2.9999... */
        double x = frac * (double)limit + 1e-9;
        return x >= (double)limit ? limit : (uint64_t)x;
    }
    return count;
}

/* Give rule R its shares from SRC (N entries, as written), resolved
 * against its limit.  PATH names where they were written. */
static void sl_resolve_shares(struct sl_rule *r, const struct sl_share *src,
                              size_t n, const char *path, struct sl_errors *errs)
{
    size_t k = 0;

    r->shares = calloc(n + 1, sizeof(*r->shares));
    if (r->shares == NULL) {
        sl_errors_add(errs, "%s: out of memory", path);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct sl_share *sh = &r->shares[k];
        if (!src[i].max_set && !src[i].reserve_set)
            continue;  /* a priority only */
        *sh = src[i];
        sh->app = strdup(src[i].app);
        sh->priority_set = false;
        sh->max = src[i].max_set
                      ? sl_share_count(src[i].max, src[i].max_frac, r->limit)
                      : r->limit;
        if (sh->max > r->limit)
            sh->max = r->limit;
        sh->reserve = src[i].reserve_set
                          ? sl_share_count(src[i].reserve, src[i].reserve_frac,
                                           r->limit)
                          : 0;
        if (src[i].max_set && src[i].max_frac > 0.0 && sh->max == 0)
            sl_errors_add(errs, "%s.%s.max: %g of the limit (%llu) is less than "
                          "one call", path, sh->app, src[i].max_frac,
                          (unsigned long long)r->limit);
        if (src[i].reserve_set && src[i].reserve_frac > 0.0 && sh->reserve == 0)
            sl_errors_add(errs, "%s.%s.reserve: %g of the limit (%llu) is less "
                          "than one call", path, sh->app, src[i].reserve_frac,
                          (unsigned long long)r->limit);
        if (sh->reserve > sh->max)
            sl_errors_add(errs, "%s.%s: reserve (%llu calls) is more than max "
                          "(%llu calls)", path, sh->app,
                          (unsigned long long)sh->reserve,
                          (unsigned long long)sh->max);
        r->reserve_sum += sh->reserve;
        k++;
    }
    r->nshares = k;
    for (size_t i = 0; i < k; i++)
        if (strcmp(r->shares[i].app, "*") == 0)
            r->share_other = &r->shares[i];
    if (r->reserve_sum > r->limit)
        sl_errors_add(errs, "%s: reservations add up to %llu calls, more than "
                      "the rule's limit of %llu", path,
                      (unsigned long long)r->reserve_sum,
                      (unsigned long long)r->limit);
    if (k == 0) {
        free(r->shares);
        r->shares = NULL;
    }
}

const struct sl_share *sl_rule_share(const struct sl_rule *r, uint16_t app_id,
                                     bool *named)
{
    for (size_t i = 0; i < r->nshares; i++)
        if (r->shares[i].app_id == app_id) {
            *named = true;
            return &r->shares[i];
        }
    *named = false;
    return r->share_other;
}

int sl_upstream_priority(const struct sl_upstream_conf *u, uint16_t app_id)
{
    const struct sl_share *other = NULL;

    for (size_t i = 0; i < u->napps; i++) {
        if (!u->apps[i].priority_set)
            continue;
        if (u->apps[i].app_id == app_id)
            return u->apps[i].priority;
        if (strcmp(u->apps[i].app, "*") == 0)
            other = &u->apps[i];
    }
    return other != NULL ? other->priority : 0;
}

/* Bind each share's app to its configured id.  0, or -1 with *BAD set to
 * the name that found no room. */
static int sl_bind_shares(struct sl_share *v, size_t n, struct sl_apps *apps,
                          const char **bad)
{
    for (size_t i = 0; i < n; i++) {
        int id;
        if (strcmp(v[i].app, "*") == 0 || strcmp(v[i].app, "other") == 0 ||
            strcmp(v[i].app, "-") == 0) {
            v[i].app_id = strcmp(v[i].app, "*") == 0
                              ? SL_APP_UNBOUND
                              : sl_apps_id(apps, v[i].app, strlen(v[i].app));
            continue;
        }
        id = sl_apps_configure(apps, v[i].app, strlen(v[i].app));
        if (id < 0) {
            *bad = v[i].app;
            return -1;
        }
        v[i].app_id = (uint16_t)id;
    }
    return 0;
}

int sl_config_bind_apps(struct sl_config *c, struct sl_apps *apps, const char **bad)
{
    for (size_t i = 0; i < c->nupstreams; i++) {
        struct sl_upstream_conf *u = &c->upstreams[i];
        if (sl_bind_shares(u->apps, u->napps, apps, bad) != 0)
            return -1;
        for (size_t k = 0; k < u->nrules; k++)
            if (sl_bind_shares(u->rules[k].shares, u->rules[k].nshares, apps, bad) != 0)
                return -1;
    }
    return 0;
}

static void sl_parse_rule(json_t *jr, const char *path,
                          const struct sl_upstream_conf *u, struct sl_rule *r,
                          struct sl_errors *errs)
{
    static const char *const keys[] = {"name", "methods", "path", "per", "limit",
                                       "window", "concurrency", "on_limit",
                                       "max_wait", "sync", "sync_probe", "mode",
                                       "reset", "timezone", "apps", "max_keys", NULL};
    char sub[768], q[96], why[256];
    json_t *v;
    const char *s;
    long long n;
    int64_t d;

    r->per_capture = -1;
    r->on_limit = u->on_limit;
    r->max_wait_us = u->max_wait_us;
    if (!json_is_object(jr)) {
        sl_errors_add(errs, "%s: a rule must be an object", path);
        return;
    }
    sl_check_keys(jr, path, keys, errs);

    snprintf(sub, sizeof(sub), "%s.name", path);
    sl_parse_rule_name(json_object_get(jr, "name"), sub, r, errs);

    v = json_object_get(jr, "methods");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.methods", path);
        sl_parse_methods(v, sub, r, errs);
    }

    v = json_object_get(jr, "path");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.path", path);
        if (sl_get_string(v, sub, &s, errs) == 0) {
            const char *flaw;
            r->path_text = strdup(s);
            r->path = sl_pattern_compile(s, &flaw);
            if (r->path == NULL)
                sl_errors_add(errs, "%s: %s %s", sub, sl_quote(s, q, sizeof(q)),
                              flaw);
            else if ((flaw = sl_pattern_flaw(s, why, sizeof(why))) != NULL)
                sl_errors_add(errs, "%s: %s %s: the rule could never match", sub,
                              sl_quote(s, q, sizeof(q)), flaw);
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
        if (jw != NULL && json_is_string(jw) && strcmp(json_string_value(jw), "1mo") == 0) {
            /* A calendar month: 31 days at most (what keeps its calls). */
            r->calendar = true;
            r->cal.month = true;
            r->window_us = SL_DAYS(31);
        } else if (jw != NULL) {
            snprintf(sub, sizeof(sub), "%s.window", path);
            if (sl_get_duration(jw, sub, SL_USEC_PER_MSEC, SL_DAYS(366), false,
                                &d, errs) == 0)
                r->window_us = d;
        }
        /* What people read (refusals, alerts, /status) says it as written:
         * "24h" stays "24h".  A number is seconds. */
        if (jw != NULL && json_is_string(jw))
            r->window_text = strndup(json_string_value(jw), 32);
        else if (jw != NULL && json_is_number(jw) &&
                 asprintf(&r->window_text, "%gs", json_number_value(jw)) < 0)
            r->window_text = NULL;
        sl_parse_calendar(jr, path, r, errs);
        /* Stamped when sent, counted by the provider on arrival: the
         * margin absorbs the jitter between the two (README, "margin").
         * Unless the upstream sets one: 100 ms, which ordinary network
         * jitter stays under, but never more than 5% of the window, so a
         * short window keeps most of its throughput. */
        r->span_us = r->window_us +
                     (u->margin_us != SL_MARGIN_AUTO
                          ? u->margin_us
                          : (r->window_us / 20 < SL_MARGIN_DEFAULT ? r->window_us / 20
                                                                   : SL_MARGIN_DEFAULT));
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
        if (sl_get_duration(v, sub, 0, SL_HOURS(24), false, &r->max_wait_us,
                            errs) == 0)
            r->max_wait_set = true;
    }

    v = json_object_get(jr, "mode");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.mode", path);
        sl_get_either(v, sub, "enforce", "shadow", &r->shadow, errs);
    }

    sl_parse_sync(jr, path, r, errs);
    if (r->calendar && r->sync != SL_SYNC_NONE)
        sl_errors_add(errs, "%s.sync: not available with a calendar window "
                      "(a provider report is read against a rolling window)", path);

    v = json_object_get(jr, "per");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.per", path);
        sl_parse_per(v, sub, r, errs);
    }
    r->max_keys = SL_DEFAULT_MAX_KEYS;
    v = json_object_get(jr, "max_keys");
    if (v != NULL && v != json_null()) {
        if (r->per_kind == SL_PER_NONE)
            sl_errors_add(errs, "%s.max_keys: only a rule with \"per\" has more "
                          "than one key", path);
        else if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                 json_integer_value(v) > 100000000)
            sl_errors_add(errs, "%s.max_keys: must be a whole number from 1 to "
                          "100000000", path);
        else
            r->max_keys = (uint32_t)json_integer_value(v);
    }

    v = json_object_get(jr, "apps");
    snprintf(sub, sizeof(sub), "%s.apps", path);
    if (v != NULL && r->kind != SL_RULE_RATE) {
        sl_errors_add(errs, "%s: shares apply to rate rules (\"limit\" and "
                      "\"window\"), not to concurrency", sub);
    } else if (v != NULL) {
        struct sl_share *own;
        size_t nown;
        sl_parse_shares(v, sub, false, &own, &nown, errs);
        if (r->limit > 0)
            sl_resolve_shares(r, own, nown, sub, errs);
        sl_shares_free(own, nown);
    } else if (u->napps > 0 && r->kind == SL_RULE_RATE && r->limit > 0) {
        char usub[900];
        snprintf(usub, sizeof(usub), "%s (the upstream's \"apps\")", path);
        sl_resolve_shares(r, u->apps, u->napps, usub, errs);
    }
}

/* ---- upstreams ---- */

/* Is H (LEN bytes) a host name (labels of letters, digits, '-', '_'; an
 * optional final '.') or, when its last label is numeric, a plain IPv4
 * dotted quad (no "10.1", no "010.0.0.1": resolvers read those apart)? */
static bool sl_valid_host(const char *h, size_t len)
{
    size_t start = 0, labels = 0;
    bool numeric_last = false;

    if (len > 0 && h[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && h[i] != '.') {
            unsigned char c = (unsigned char)h[i];
            if (!sl_is_alnum(c) && c != '-' && c != '_')
                return false;
            continue;
        }
        size_t n = i - start;
        if (n == 0 || n > 63 || h[start] == '-' || h[i - 1] == '-')
            return false;
        numeric_last = true;
        for (size_t k = start; k < i; k++)
            if (!sl_is_digit((unsigned char)h[k]))
                numeric_last = false;
        labels++;
        start = i + 1;
    }
    if (!numeric_last)
        return true;
    char v4[16];
    struct in_addr a;
    if (len >= sizeof(v4) || h[len] == '.')
        return false;
    memcpy(v4, h, len);
    v4[len] = '\0';
    /* inet_pton takes exactly four decimal parts, each 0-255. */
    if (labels != 4 || inet_pton(AF_INET, v4, &a) != 1)
        return false;
    for (size_t i = 0; i < len; i++)
        if (h[i] == '0' && (i == 0 || h[i - 1] == '.') && i + 1 < len &&
            h[i + 1] != '.')
            return false;
    return true;
}

/*
 * Check upstream URL S.  Returns NULL, or a sentence (static or in BUF)
 * saying what is wrong.  *base is set to the length of S without its
 * trailing slashes.
 */
static const char *sl_url_flaw(const char *s, char *buf, size_t len, size_t *base)
{
    const char *rest, *host, *path, *end;
    size_t hlen;
    char cn[24];

    if (strncmp(s, "http://", 7) == 0)
        rest = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        rest = s + 8;
    else
        return "must be an http:// or https:// URL with a host and no query "
               "or fragment";
    path = rest + strcspn(rest, "/?#");
    if (*path == '?' || *path == '#' || strpbrk(path, "?#") != NULL)
        return "must be an http:// or https:// URL with a host and no query "
               "or fragment";
    if (memchr(rest, '@', (size_t)(path - rest)) != NULL)
        return "holds a user name or password ('@'): give credentials as "
               "request headers, not in the URL";
    /* Host: [v6], name or IPv4; then an optional port. */
    host = rest;
    if (*host == '[') {
        char v6[64];
        struct in6_addr a6;
        const char *close = memchr(host, ']', (size_t)(path - host));
        hlen = close ? (size_t)(close - host - 1) : 0;
        if (close == NULL || hlen == 0 || hlen >= sizeof(v6))
            return "has an IPv6 address that is not a bracketed literal "
                   "(\"http://[2001:db8::1]:8080\")";
        memcpy(v6, host + 1, hlen);
        v6[hlen] = '\0';
        if (inet_pton(AF_INET6, v6, &a6) != 1)
            return "has an IPv6 address that is not valid (zone IDs such as "
                   "%eth0 are not supported)";
        end = close + 1;
    } else {
        end = host;
        while (end < path && *end != ':')
            end++;
        if (end == host)
            return "must be an http:// or https:// URL with a host and no query "
                   "or fragment";
        if (!sl_valid_host(host, (size_t)(end - host)))
            return "has a host that is neither a host name (letters, digits, "
                   "'-', '.'), an IPv4 address nor a bracketed IPv6 address";
    }
    if (end < path) {
        long port = 0;
        const char *p = end + 1;
        if (*end != ':' || p == path || path - p > 5)
            return "has a port that is not a number from 1 to 65535";
        for (; p < path; p++) {
            if (!sl_is_digit((unsigned char)*p))
                return "has a port that is not a number from 1 to 65535";
            port = port * 10 + (*p - '0');
        }
        if (port < 1 || port > 65535)
            return "has a port that is not a number from 1 to 65535";
    }
    /* Base path: trailing slashes dropped, the rest plain. */
    *base = strlen(s);
    while (*base > (size_t)(path - s) && s[*base - 1] == '/')
        (*base)--;
    for (const char *c = path; c < s + *base; c++) {
        unsigned char u = (unsigned char)*c;
        if (u != '/' && !sl_is_plain_pchar(u, true)) {
            snprintf(buf, len, "has %s in its path: write the base path "
                     "plainly (letters, digits, - . _ ~ ! $ & ' ( ) * + , = "
                     ": @ /), without escapes, ';' or spaces",
                     sl_char_name(u, cn, sizeof(cn)));
            return buf;
        }
    }
    const char *flaw = sl_segment_flaw(path, (size_t)(s + *base - path), false);
    if (flaw != NULL) {
        snprintf(buf, len, "%s in its path", flaw);
        return buf;
    }
    return NULL;
}

/* Check prefix S (see docs/guides/rules.md: matched at a '/' boundary). */
static const char *sl_prefix_flaw(const char *s, char *buf, size_t len)
{
    size_t n = strlen(s);
    char cn[24];

    if (n == 0 || s[0] != '/')
        return "must start with \"/\"";
    if (n > 1 && s[n - 1] == '/')
        return "must not end with \"/\" (unless it is \"/\")";
    for (const char *c = s; *c; c++) {
        unsigned char u = (unsigned char)*c;
        if (u != '/' && !sl_is_plain_pchar(u, false)) {
            snprintf(buf, len, "holds %s: a prefix is plain path characters "
                     "(letters, digits, - . _ ~ ! $ & ' ( ) + , = : @ /), "
                     "without '*', escapes, ';', '?', '#' or spaces",
                     sl_char_name(u, cn, sizeof(cn)));
            return buf;
        }
    }
    return sl_segment_flaw(s, n, true);
}

/* Does CT (a valid media type) name JSON: "json" or "...+json" subtype? */
static bool sl_media_is_json(const char *ct)
{
    const char *slash = strchr(ct, '/');
    size_t n;

    if (slash == NULL)
        return false;
    n = strcspn(slash + 1, "; \t");
    return (n == 4 && strncasecmp(slash + 1, "json", 4) == 0) ||
           (n > 5 && strncasecmp(slash + 1 + n - 5, "+json", 5) == 0);
}

/*
 * Is S a media type a header can carry: token "/" token, then optional
 * parameters (; name=token or ; name="quoted"), nothing else (no CR/LF)?
 */
static bool sl_valid_media_type(const char *s)
{
    const char *p = s;

    if (strlen(s) > 256)
        return false;
    for (int part = 0; part < 2; part++) {
        const char *t = p;
        while (sl_http_tchar((unsigned char)*p))
            p++;
        if (p == t)
            return false;
        if (part == 0 && *p++ != '/')
            return false;
    }
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p++ != ';')
            return false;
        while (*p == ' ' || *p == '\t')
            p++;
        const char *t = p;
        while (sl_http_tchar((unsigned char)*p))
            p++;
        if (p == t || *p++ != '=')
            return false;
        if (*p == '"') {
            for (p++; *p != '"'; p++) {
                unsigned char c = (unsigned char)*p;
                if (c == '\\' && p[1] >= 0x20 && p[1] < 0x7f)
                    p++;
                else if (c == '\0' || (c < 0x20 && c != '\t') || c >= 0x7f)
                    return false;
            }
            p++;
        } else {
            t = p;
            while (sl_http_tchar((unsigned char)*p))
                p++;
            if (p == t)
                return false;
        }
    }
    return true;
}

/*
 * Check reject body template S at SUB: every {word} must be a known
 * placeholder ("{{" and "}}" are literal braces, as sl_respond renders
 * them).  When JSON_BODY, the body with every placeholder replaced by 0
 * (which reads as a number, or as text inside quotes) must be JSON.
 */
static void sl_check_reject_body(const char *s, const char *sub, bool json_body,
                                 struct sl_errors *errs)
{
    char *filled;
    size_t o = 0, n = strlen(s);
    int unknown = 0;
    char q[96];

    if (n > SL_REJECT_BODY_MAX) {
        sl_errors_add(errs, "%s: is %zu bytes long: at most 8 KiB", sub, n);
        return;
    }
    filled = malloc(n + 1);
    if (filled == NULL) {
        sl_errors_add(errs, "%s: out of memory", sub);
        return;
    }
    for (const char *p = s; *p;) {
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            filled[o++] = *p;
            p += 2;
            continue;
        }
        if (p[0] == '{') {
            size_t w = 1;
            while (sl_is_alnum((unsigned char)p[w]) || p[w] == '_')
                w++;
            if (w > 1 && p[w] == '}') {
                const char *const *ph = sl_reject_placeholders;
                while (*ph && (strlen(*ph) != w - 1 || strncmp(*ph, p + 1, w - 1)))
                    ph++;
                if (*ph == NULL && unknown++ < 5) {
                    char word[80];
                    snprintf(word, sizeof(word), "%.*s", (int)(w + 1 < 70 ? w + 1 : 70), p);
                    sl_errors_add(errs, "%s: %s is not a placeholder: use "
                                  "{upstream}, {rule}, {limit}, {window}, "
                                  "{retry_after}, {message}, {app} or {share} "
                                  "(\"{{\" for a "
                                  "literal \"{\")", sub, sl_quote(word, q, sizeof(q)));
                }
                filled[o++] = '0';
                p += w + 1;
                continue;
            }
        }
        filled[o++] = *p++;
    }
    filled[o] = '\0';
    if (json_body && unknown == 0) {
        json_error_t jerr;
        json_t *j = json_loads(filled, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES,
                               &jerr);
        char etext[4 * JSON_ERROR_TEXT_LENGTH];
        if (j == NULL)
            sl_errors_add(errs, "%s: is not JSON once its placeholders are filled "
                          "in (%s, at character %d); write a literal \"}}\" as "
                          "\"}}}}\", or set \"content_type\" if the body is not "
                          "JSON", sub, sl_escape(jerr.text, sizeof(jerr.text), false,
                                                 etext, sizeof(etext)),
                          jerr.position);
        json_decref(j);
    }
    free(filled);
}

static void sl_parse_reject(json_t *v, const char *path, struct sl_upstream_conf *u,
                            struct sl_errors *errs)
{
    static const char *const keys[] = {"status", "body", "content_type", NULL};
    char sub[800], q[96];
    const char *s;
    json_t *f;
    long long n;
    bool json_body = true;

    if (!json_is_object(v)) {
        sl_errors_add(errs, "%s: must be an object: {\"status\": 429, \"body\": "
                      "\"...\", \"content_type\": \"application/json\"}", path);
        return;
    }
    sl_check_keys(v, path, keys, errs);
    f = json_object_get(v, "status");
    if (f != NULL) {
        snprintf(sub, sizeof(sub), "%s.status", path);
        if (sl_get_int(f, sub, 400, 599, &n, errs) == 0)
            u->reject_status = (unsigned)n;
    }
    f = json_object_get(v, "content_type");
    if (f != NULL) {
        snprintf(sub, sizeof(sub), "%s.content_type", path);
        if (sl_get_string(f, sub, &s, errs) != 0) {
            json_body = false;
        } else if (!sl_valid_media_type(s)) {
            sl_errors_add(errs, "%s: %s is not a media type (\"type/subtype\", "
                          "e.g. \"application/json\" or \"text/plain; "
                          "charset=utf-8\")", sub, sl_quote(s, q, sizeof(q)));
            json_body = false;
        } else {
            u->reject_content_type = strdup(s);
            json_body = sl_media_is_json(s);
        }
        if (json_object_get(v, "body") == NULL)
            sl_errors_add(errs, "%s: applies only with \"body\" (sluice's own "
                          "body is JSON)", sub);
    }
    f = json_object_get(v, "body");
    if (f != NULL) {
        snprintf(sub, sizeof(sub), "%s.body", path);
        if (sl_get_string(f, sub, &s, errs) == 0) {
            size_t before = errs->count;
            sl_check_reject_body(s, sub, json_body, errs);
            if (errs->count == before)
                u->reject_body = strdup(s);
        }
    }
}

static void sl_parse_signals(json_t *v, const char *sub, struct sl_upstream_conf *u,
                             struct sl_errors *errs)
{
    static const char *const skeys[] = {"status", "body_contains", "pause", NULL};
    size_t i;
    json_t *js;
    const char *s;

    if (!json_is_array(v) || json_array_size(v) > 16) {
        sl_errors_add(errs, "%s: must be an array of at most 16 signals", sub);
        return;
    }
    if (json_array_size(v) == 0)
        return;
    u->signals = calloc(json_array_size(v), sizeof(*u->signals));
    json_array_foreach(v, i, js) {
        char ssub[900], fsub[960];
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
        snprintf(fsub, sizeof(fsub), "%s.status", ssub);
        if (f == NULL)
            sl_errors_add(errs, "%s: is required", fsub);
        else if (sl_get_int(f, fsub, 100, 599, &st, errs) == 0)
            sg->status = (unsigned)st;
        f = json_object_get(js, "body_contains");
        if (f != NULL) {
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
            snprintf(fsub, sizeof(fsub), "%s.pause", ssub);
            sl_get_duration(f, fsub, 0, SL_DAYS(7), false, &sg->pause_us, errs);
        }
    }
}

/*
 * Check that FILE is a readable regular file with at least one PEM
 * certificate in it.  Returns NULL, or a sentence in BUF.  Reads at most
 * 16 MiB; opened non-blocking so a FIFO or a device never stalls --check.
 */
static const char *sl_ca_file_flaw(const char *file, char *buf, size_t len)
{
    static const char begin[] = "-----BEGIN CERTIFICATE-----";
    const char *result = NULL;
    struct stat st;
    FILE *f = NULL;
    char *line = NULL;
    size_t cap = 0, total = 0;
    ssize_t n;
    int fd;

    fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        snprintf(buf, len, "cannot be read: %s", strerror(errno));
        result = buf;
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(buf, len, "cannot be read: %s", strerror(errno));
        result = buf;
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        result = "is a directory: name one PEM file (a bundle of certificates)";
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        result = "is not a regular file";
        goto out;
    }
    f = fdopen(fd, "r");
    if (f == NULL) {
        snprintf(buf, len, "cannot be read: %s", strerror(errno));
        result = buf;
        goto out;
    }
    fd = -1;
    result = "holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)";
    while (total < (16u << 20) && (n = getline(&line, &cap, f)) > 0) {
        total += (size_t)n;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' ||
                         line[n - 1] == ' ' || line[n - 1] == '\t'))
            line[--n] = '\0';
        if (strcmp(line, begin) == 0) {
            result = NULL;
            goto out;
        }
    }
    if (ferror(f)) {
        snprintf(buf, len, "cannot be read: %s", strerror(errno));
        result = buf;
    }
out:
    free(line);
    if (f != NULL)
        fclose(f);
    if (fd >= 0)
        close(fd);
    return result;
}

static void sl_parse_upstream_id(json_t *ju, const char *path,
                                 struct sl_upstream_conf *u, struct sl_errors *errs)
{
    char sub[768], q[96], why[320];
    const char *s, *flaw;
    json_t *v;

    snprintf(sub, sizeof(sub), "%s.name", path);
    v = json_object_get(ju, "name");
    if (v == NULL)
        sl_errors_add(errs, "%s: is required", sub);
    else if (sl_get_string(v, sub, &s, errs) == 0) {
        bool ok = *s != '\0' && strlen(s) <= 64;
        for (const char *c = s; *c; c++)
            if (!sl_is_alnum((unsigned char)*c) && !strchr("-_.", *c))
                ok = false;
        if (!ok)
            sl_errors_add(errs, "%s: %s must be 1 to 64 letters, digits, "
                          "'-', '_' or '.'", sub, sl_quote(s, q, sizeof(q)));
        else
            u->name = strdup(s);
    }

    snprintf(sub, sizeof(sub), "%s.prefix", path);
    v = json_object_get(ju, "prefix");
    if (v == NULL)
        sl_errors_add(errs, "%s: is required", sub);
    else if (sl_get_string(v, sub, &s, errs) == 0) {
        if ((flaw = sl_prefix_flaw(s, why, sizeof(why))) != NULL)
            sl_errors_add(errs, "%s: %s %s", sub, sl_quote(s, q, sizeof(q)), flaw);
        else {
            u->prefix = strdup(s);
            u->prefix_len = strlen(s);
        }
    }

    snprintf(sub, sizeof(sub), "%s.url", path);
    v = json_object_get(ju, "url");
    if (v == NULL)
        sl_errors_add(errs, "%s: is required", sub);
    else if (sl_get_string(v, sub, &s, errs) == 0) {
        size_t base = 0;
        if ((flaw = sl_url_flaw(s, why, sizeof(why), &base)) != NULL)
            sl_errors_add(errs, "%s: %s %s", sub, sl_quote(s, q, sizeof(q)), flaw);
        else
            u->url = strndup(s, base);
    }
}

static void sl_parse_upstream(json_t *ju, const char *path,
                              struct sl_upstream_conf *u, struct sl_errors *errs)
{
    static const char *const keys[] = {"name", "prefix", "url", "on_limit",
                                       "max_wait", "max_queue", "limit_signals",
                                       "default_pause", "retry_on_limit",
                                       "retry_unsafe", "tls_verify", "ca_file",
                                       "connect_timeout", "timeout", "margin",
                                       "path_case", "reject", "rules", "app",
                                       "forward_app_header", "apps", "priority",
                                       "priority_aging", NULL};
    char sub[768], q[96], why[256];
    json_t *v;
    const char *s;

    u->tls_verify = true;
    u->connect_timeout_us = SL_SECONDS(5);
    u->timeout_us = SL_SECONDS(60);
    u->margin_us = SL_MARGIN_AUTO;
    u->max_wait_us = SL_SECONDS(30);
    u->max_queue = 10000;
    u->default_pause_us = SL_SECONDS(60);
    u->reject_status = 429;
    u->pause_rule.name = strdup("upstream-pause");
    u->pause_rule.kind = SL_RULE_PAUSE;
    u->pause_rule.limit = 1;
    u->pause_rule.per_capture = -1;
    if (!json_is_object(ju)) {
        sl_errors_add(errs, "%s: an upstream must be an object", path);
        return;
    }
    sl_check_keys(ju, path, keys, errs);
    sl_parse_upstream_id(ju, path, u, errs);

    v = json_object_get(ju, "on_limit");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.on_limit", path);
        sl_get_on_limit(v, sub, &u->on_limit, errs);
    }
    v = json_object_get(ju, "max_wait");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.max_wait", path);
        sl_get_duration(v, sub, 0, SL_HOURS(24), false, &u->max_wait_us, errs);
    }
    v = json_object_get(ju, "max_queue");
    if (v != NULL) {
        long long n;
        snprintf(sub, sizeof(sub), "%s.max_queue", path);
        if (sl_get_int(v, sub, 0, 10000000LL, &n, errs) == 0)
            u->max_queue = (unsigned)n;
    }
    v = json_object_get(ju, "default_pause");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.default_pause", path);
        sl_get_duration(v, sub, 0, SL_DAYS(7), false, &u->default_pause_us, errs);
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
        sl_parse_signals(v, sub, u, errs);
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
            const char *flaw = sl_ca_file_flaw(s, why, sizeof(why));
            if (flaw != NULL)
                sl_errors_add(errs, "%s: %s %s", sub, sl_quote(s, q, sizeof(q)),
                              flaw);
            else
                u->ca_file = strdup(s);
        }
    }
    v = json_object_get(ju, "connect_timeout");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.connect_timeout", path);
        sl_get_duration(v, sub, 0, SL_MINUTES(10), false, &u->connect_timeout_us,
                        errs);
    }
    v = json_object_get(ju, "timeout");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.timeout", path);
        sl_get_duration(v, sub, 0, SL_HOURS(24), true, &u->timeout_us, errs);
    }
    v = json_object_get(ju, "margin");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.margin", path);
        sl_get_duration(v, sub, 0, SL_SECONDS(10), true, &u->margin_us, errs);
    }
    v = json_object_get(ju, "path_case");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.path_case", path);
        sl_get_either(v, sub, "insensitive", "sensitive", &u->path_case_sensitive,
                      errs);
    }
    v = json_object_get(ju, "app");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.app", path);
        sl_parse_app(v, sub, &u->app_kind, &u->app_header, errs);
    }
    v = json_object_get(ju, "forward_app_header");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.forward_app_header", path);
        if (sl_get_bool(v, sub, &u->forward_app_header, errs) == 0)
            u->forward_app_set = true;
    }
    v = json_object_get(ju, "reject");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.reject", path);
        sl_parse_reject(v, sub, u, errs);
    }

    v = json_object_get(ju, "apps");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.apps", path);
        sl_parse_shares(v, sub, true, &u->apps, &u->napps, errs);
    }
    v = json_object_get(ju, "priority");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.priority", path);
        if (sl_get_string(v, sub, &s, errs) == 0) {
            if (strncasecmp(s, "header:", 7) == 0 && sl_is_token(s + 7) &&
                strlen(s + 7) <= 64)
                u->priority_header = strdup(s + 7);
            else
                sl_errors_add(errs, "%s: %s must be \"header:NAME\" (a header "
                              "whose value is a level from 0 to %d; the apps' "
                              "own priorities are set in \"apps\")", sub,
                              sl_quote(s, q, sizeof(q)), SL_PRIORITY_LEVELS - 1);
        }
    }
    v = json_object_get(ju, "priority_aging");
    if (v != NULL) {
        snprintf(sub, sizeof(sub), "%s.priority_aging", path);
        sl_get_duration(v, sub, 0, SL_HOURS(24), true, &u->priority_aging_us, errs);
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
            json_t *jr, *names = json_object();
            u->rules = calloc(json_array_size(v), sizeof(*u->rules));
            if (u->rules == NULL || names == NULL) {
                sl_errors_add(errs, "%s: out of memory", sub);
                json_decref(names);
                return;
            }
            u->nrules = json_array_size(v);
            json_array_foreach(v, i, jr) {
                char rsub[160];
                struct sl_rule *r = &u->rules[i];
                json_t *prev;
                snprintf(rsub, sizeof(rsub), "%.120s[%zu]", sub, i);
                r->index = i;
                sl_parse_rule(jr, rsub, u, r, errs);
                if (r->name == NULL)
                    continue;
                if ((prev = json_object_get(names, r->name)) != NULL)
                    sl_errors_add(errs, "%s.name: %s is already the name "
                                  "of rules[%lld]", rsub, sl_quote(r->name, q, sizeof(q)),
                                  (long long)json_integer_value(prev));
                else
                    json_object_set_new(names, r->name, json_integer((json_int_t)i));
            }
            json_decref(names);
        }
    }
    /* The implicit pause rule (after the rules: its index is nrules).  It
     * has no window, so no span. */
    u->pause_rule.index = u->nrules;
    u->pause_rule.on_limit = u->on_limit;
    u->pause_rule.max_wait_us = u->max_wait_us;
    for (size_t i = 0; i < u->nsignals; i++)
        if (u->signals[i].pause_us < 0)
            u->signals[i].pause_us = u->default_pause_us;
}

/* ---- the store ---- */

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

/* A decimal number of digits only (strtol alone takes " 5" and "+5"),
 * from P to END, at most MAX.  Returns it, or -1. */
static long sl_plain_number(const char *p, const char *end, long max)
{
    long v = 0;

    if (p >= end)
        return -1;
    for (; p < end; p++) {
        if (!sl_is_digit((unsigned char)*p) || v > max)
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v > max ? -1 : v;
}

int sl_config_parse_redis_url(const char *url, struct sl_config *c,
                              const char **why)
{
    const char *p, *at, *slash, *host, *colon;
    size_t hlen;
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
        colon = close + 1;
        if (colon < host + hlen && *colon != ':') {
            *why = "has something other than \":port\" after the IPv6 address";
            return -1;
        }
        if (colon == host + hlen)
            colon = NULL;
    } else {
        colon = memchr(host, ':', hlen);
        c->redis_host = strndup(host, colon ? (size_t)(colon - host) : hlen);
    }
    if (c->redis_host == NULL || c->redis_host[0] == '\0') {
        *why = "has no host";
        return -1;
    }
    if (colon != NULL) {
        v = sl_plain_number(colon + 1, host + hlen, 65535);
        if (v < 1) {
            *why = "has a port that is not a number from 1 to 65535";
            return -1;
        }
        c->redis_port = (int)v;
    }
    if (slash != NULL && slash[1] != '\0') {
        v = sl_plain_number(slash + 1, slash + strlen(slash), 1000000);
        if (v < 0) {
            *why = "has a database that is not a number (redis://host:port/0)";
            return -1;
        }
        c->redis_db = (int)v;
    }
    return 0;
}

/* ---- the whole file ---- */

static void sl_parse_store(json_t *root, bool apply_env, struct sl_config *c,
                           struct sl_errors *errs)
{
    const char *s, *env;
    char q[96];
    json_t *v;

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
            if (strncmp(s, "redis", 5) != 0 && strchr(s, '@') == NULL)
                sl_errors_add(errs, "store: %s is neither \"memory\" nor a "
                              "redis:// URL", sl_quote(s, q, sizeof(q)));
        }
    }

    c->store_prefix = strdup("sluice:");
    v = json_object_get(root, "store_prefix");
    if (v != NULL && sl_get_string(v, "store_prefix", &s, errs) == 0) {
        if (strpbrk(s, "{}") != NULL || strlen(s) > 64)
            sl_errors_add(errs, "store_prefix: %s must be at most 64 "
                          "characters without '{' or '}' (sluice adds its own "
                          "hash tags)", sl_quote(s, q, sizeof(q)));
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
            sl_errors_add(errs, "on_store_error: %s must be \"local\", "
                          "\"deny\" or \"allow\"", sl_quote(s, q, sizeof(q)));
    }
    v = json_object_get(root, "store_timeout");
    if (v != NULL)
        sl_get_duration(v, "store_timeout", SL_USEC_PER_MSEC, SL_SECONDS(60),
                        false, &c->store_timeout_us, errs);
    v = json_object_get(root, "concurrency_lease");
    if (v != NULL)
        sl_get_duration(v, "concurrency_lease", 300 * SL_USEC_PER_MSEC,
                        SL_HOURS(1), false, &c->lease_ttl_us, errs);
    v = json_object_get(root, "local_share");
    if (v != NULL) {
        char brief[96];
        sl_json_brief(v, brief, sizeof(brief));
        if (!json_is_number(v) || !(json_number_value(v) > 0.0) ||
            json_number_value(v) > 1.0)
            sl_errors_add(errs, "local_share: %s must be a number more than 0 "
                          "and at most 1 (the fraction of each limit one "
                          "instance uses while Redis is away)", brief);
        else
            c->local_share = json_number_value(v);
    }
}

/*
 * The upstreams, with duplicate names and prefixes found through two
 * hash sets (name -> index), not by comparing every pair.
 */
/* ---- app identity, the admin listener, alerts ---- */

/* "app": "header:NAME", "client_ip" or "none". */
static void sl_parse_app(json_t *v, const char *path, enum sl_app_kind *kind,
                         char **header, struct sl_errors *errs)
{
    const char *s;
    char q[96];

    if (sl_get_string(v, path, &s, errs) != 0)
        return;
    if (strcmp(s, "client_ip") == 0) {
        *kind = SL_APP_CLIENT_IP;
    } else if (strcmp(s, "none") == 0) {
        *kind = SL_APP_NOBODY;
    } else if (strncasecmp(s, "header:", 7) == 0 && sl_is_token(s + 7) &&
               strlen(s + 7) <= 64) {
        *kind = SL_APP_HEADER;
        free(*header);
        *header = strdup(s + 7);
    } else {
        sl_errors_add(errs, "%s: %s must be \"header:NAME\", \"client_ip\" or "
                      "\"none\"", path, sl_quote(s, q, sizeof(q)));
    }
}

/*
 * Is HOST (as in "listen") an address only this machine can reach?
 * Decided on the parsed address (127.0.0.0/8, ::1, and 127/8 mapped into
 * IPv6), never on how it is spelled: "127.0.0.1.example" is a name.  The
 * one name taken is "localhost"; the admin listener checks the address it
 * resolved to once it is bound (sl_admin.c).
 */
static bool sl_host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (host == NULL || *host == '\0')
        return false;  /* every address */
    if (strcasecmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) ||
               (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

/* admin.hosts: names (or addresses) a Host header may give besides the
 * listener's own address; "*" turns the check off. */
static void sl_parse_admin_hosts(json_t *v, struct sl_config *c,
                                 struct sl_errors *errs)
{
    size_t i;
    json_t *e;

    if (!json_is_array(v) || json_array_size(v) > 32) {
        sl_errors_add(errs, "admin.hosts: must be an array of at most 32 host "
                      "names such as [\"sluice.internal\"] (or [\"*\"]: any)");
        return;
    }
    c->admin_hosts = calloc(json_array_size(v) + 1, sizeof(char *));
    if (c->admin_hosts == NULL)
        return;
    json_array_foreach(v, i, e) {
        const char *s = json_is_string(e) ? json_string_value(e) : NULL;
        char path[48], brief[96];
        bool ok = s != NULL && *s && strlen(s) <= 253;
        for (const char *p = s; ok && *p; p++)
            ok = isalnum((unsigned char)*p) || strchr(".-_:", *p) != NULL ||
                 (*p == '*' && strcmp(s, "*") == 0);
        snprintf(path, sizeof(path), "admin.hosts[%zu]", i);
        if (!ok) {
            sl_json_brief(e, brief, sizeof(brief));
            sl_errors_add(errs, "%s: %s must be a host name or address without "
                          "port or brackets (e.g. \"sluice.internal\", \"::1\"), "
                          "or \"*\"", path, brief);
            continue;
        }
        c->admin_hosts[c->nadmin_hosts] = strdup(s);
        for (char *p = c->admin_hosts[c->nadmin_hosts]; p != NULL && *p; p++)
            *p = (char)tolower((unsigned char)*p);
        c->nadmin_hosts++;
    }
}

/* A threshold in (0, 1].  Returns 0, or adds an error and returns -1. */
static int sl_get_ratio(json_t *v, const char *path, double *out,
                        struct sl_errors *errs)
{
    char brief[96];

    if (!json_is_number(v) || !(json_number_value(v) > 0.0) ||
        json_number_value(v) > 1.0) {
        sl_json_brief(v, brief, sizeof(brief));
        sl_errors_add(errs, "%s: %s must be a number above 0 and at most 1 "
                      "(a fraction of the limit)", path, brief);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

static void sl_parse_admin(json_t *v, bool apply_env, struct sl_config *c,
                           struct sl_errors *errs)
{
    static const char *const keys[] = {"listen", "token", "warn", "critical",
                                       "top", "hosts", NULL};
    const char *s = NULL, *env;
    const char *listen_env = apply_env ? getenv("SLUICE_ADMIN_LISTEN") : NULL;
    char q[96];
    json_t *f;
    long long n;

    /* SLUICE_ADMIN_LISTEN opens (or moves) the admin listener without
     * editing the file: two instances on one host, one configuration. */
    if (listen_env != NULL && *listen_env == '\0')
        listen_env = NULL;
    if (v == NULL && listen_env == NULL)
        return;
    if (v != NULL && !json_is_object(v)) {
        sl_errors_add(errs, "admin: must be an object such as "
                      "{\"listen\": \"127.0.0.1:9901\"}");
        return;
    }
    if (v != NULL)
        sl_check_keys(v, "admin", keys, errs);
    f = v != NULL ? json_object_get(v, "listen") : NULL;
    if (listen_env != NULL) {
        c->admin_listen = strdup(listen_env);
        if (sl_config_split_listen(listen_env, &c->admin_host, &c->admin_port) != 0)
            sl_errors_add(errs, "admin.listen (from SLUICE_ADMIN_LISTEN): %s is not "
                          "HOST:PORT (e.g. \"127.0.0.1:9901\")",
                          sl_quote(listen_env, q, sizeof(q)));
    } else if (f == NULL) {
        sl_errors_add(errs, "admin.listen: missing (e.g. \"127.0.0.1:9901\")");
    } else if (sl_get_string(f, "admin.listen", &s, errs) == 0) {
        c->admin_listen = strdup(s);
        if (sl_config_split_listen(s, &c->admin_host, &c->admin_port) != 0)
            sl_errors_add(errs, "admin.listen: %s is not HOST:PORT (e.g. "
                          "\"127.0.0.1:9901\")", sl_quote(s, q, sizeof(q)));
    }
    if (v == NULL)
        v = json_object();  /* the env alone: every other key at its default */
    else
        json_incref(v);
    f = json_object_get(v, "token");
    env = apply_env ? getenv("SLUICE_ADMIN_TOKEN") : NULL;
    if (env != NULL && *env) {
        /* A secret kept out of the file (a Kubernetes Secret, say). */
        s = env;
        f = v;
    }
    if (f != NULL && (f == v || sl_get_string(f, "admin.token", &s, errs) == 0)) {
        bool ok = strlen(s) >= 16 && strlen(s) <= 256;
        for (const char *p = s; ok && *p; p++)
            ok = *p > 0x20 && *p < 0x7f;
        if (!ok)
            sl_errors_add(errs, "admin.token%s: must be 16 to 256 printable "
                          "characters without spaces",
                          f == v ? " (from SLUICE_ADMIN_TOKEN)" : "");
        else
            c->admin_token = strdup(s);
    }
    if (c->admin_listen != NULL && c->admin_port > 0 && c->admin_token == NULL &&
        f == NULL && !sl_host_is_loopback(c->admin_host))
        sl_errors_add(errs, "admin.token: required because admin.listen %s is "
                      "not a loopback address: anyone who can reach it could "
                      "read usage and app names (set a token of 16+ characters, "
                      "or listen on 127.0.0.1)", sl_quote(c->admin_listen, q,
                                                           sizeof(q)));
    if (c->admin_listen != NULL && c->listen != NULL &&
        c->admin_port == c->listen_port && c->admin_port > 0 &&
        strcmp(c->admin_host ? c->admin_host : "",
               c->listen_host ? c->listen_host : "") == 0)
        sl_errors_add(errs, "admin.listen: must differ from listen (%s)",
                      sl_quote(c->listen, q, sizeof(q)));
    f = json_object_get(v, "warn");
    if (f != NULL)
        sl_get_ratio(f, "admin.warn", &c->warn_at, errs);
    f = json_object_get(v, "critical");
    if (f != NULL)
        sl_get_ratio(f, "admin.critical", &c->critical_at, errs);
    if (c->warn_at >= c->critical_at)
        sl_errors_add(errs, "admin.warn: must be below admin.critical (%g >= %g)",
                      c->warn_at, c->critical_at);
    f = json_object_get(v, "top");
    if (f != NULL && sl_get_int(f, "admin.top", 1, 1000, &n, errs) == 0)
        c->status_top = (unsigned)n;
    f = json_object_get(v, "hosts");
    if (f != NULL)
        sl_parse_admin_hosts(f, c, errs);
    json_decref(v);
}

static int sl_double_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* Add the thresholds of A to every rule it names (after the upstreams). */
static int sl_alert_apply(struct sl_config *c, const struct sl_alert_conf *a)
{
    if (a->nat == 0)
        return 0;
    for (size_t i = 0; i < c->nupstreams; i++) {
        for (size_t k = 0; k < c->upstreams[i].nrules; k++) {
            struct sl_rule *r = &c->upstreams[i].rules[k];
            bool named = a->rules == NULL;
            double *at;
            /* A rule whose name was refused has none (the config fails). */
            if (r->name == NULL)
                continue;
            for (size_t j = 0; !named && j < a->nrules; j++)
                named = a->rules[j] != NULL && strcmp(a->rules[j], r->name) == 0;
            if (!named)
                continue;
            at = realloc(r->alert_at, (r->nalert_at + a->nat) * sizeof(*at));
            if (at == NULL)
                return -1;
            r->alert_at = at;
            for (size_t j = 0; j < a->nat; j++) {
                bool dup = false;
                for (size_t m = 0; m < r->nalert_at; m++)
                    dup = dup || r->alert_at[m] == a->at[j];
                if (!dup)
                    r->alert_at[r->nalert_at++] = a->at[j];
            }
            qsort(r->alert_at, r->nalert_at, sizeof(double), sl_double_cmp);
        }
    }
    return 0;
}

static bool sl_config_has_rule(const struct sl_config *c, const char *name)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        for (size_t k = 0; k < c->upstreams[i].nrules; k++)
            if (c->upstreams[i].rules[k].name != NULL &&
                strcmp(c->upstreams[i].rules[k].name, name) == 0)
                return true;
    return false;
}

static void sl_parse_alert(json_t *ja, const char *path, struct sl_config *c,
                           struct sl_alert_conf *a, struct sl_errors *errs)
{
    static const char *const keys[] = {"url", "at", "rules", "events", "headers",
                                       NULL};
    static const double defaults[] = {0.8, 0.9, 1.0};
    char sub[160], q[96], why[256];
    const char *s, *flaw, *key;
    size_t i, base;
    json_t *v, *e;

    a->on_pause = a->on_store = a->on_operator = true;
    if (!json_is_object(ja)) {
        sl_errors_add(errs, "%s: an alert must be an object such as "
                      "{\"url\": \"http://hooks.example/x\"}", path);
        return;
    }
    sl_check_keys(ja, path, keys, errs);
    snprintf(sub, sizeof(sub), "%s.url", path);
    v = json_object_get(ja, "url");
    if (v == NULL) {
        sl_errors_add(errs, "%s: missing (the webhook to POST to)", sub);
    } else if (sl_get_string(v, sub, &s, errs) == 0) {
        flaw = sl_url_flaw(s, why, sizeof(why), &base);
        if (flaw != NULL)
            sl_errors_add(errs, "%s: %s %s", sub, sl_quote(s, q, sizeof(q)), flaw);
        else
            a->url = strdup(s);
    }
    snprintf(sub, sizeof(sub), "%s.at", path);
    v = json_object_get(ja, "at");
    if (v == NULL) {
        a->at = malloc(sizeof(defaults));
        if (a->at != NULL) {
            memcpy(a->at, defaults, sizeof(defaults));
            a->nat = 3;
        }
    } else if (!json_is_array(v) || json_array_size(v) == 0 ||
               json_array_size(v) > 16) {
        sl_errors_add(errs, "%s: must be an array of 1 to 16 thresholds such "
                      "as [0.8, 0.9, 1.0]", sub);
    } else if ((a->at = calloc(json_array_size(v), sizeof(double))) != NULL) {
        json_array_foreach(v, i, e) {
            char esub[200];
            snprintf(esub, sizeof(esub), "%s[%zu]", sub, i);
            if (sl_get_ratio(e, esub, &a->at[a->nat], errs) == 0)
                a->nat++;
        }
        if (a->nat > 1)
            qsort(a->at, a->nat, sizeof(double), sl_double_cmp);
    }
    snprintf(sub, sizeof(sub), "%s.rules", path);
    v = json_object_get(ja, "rules");
    if (v != NULL) {
        if (!json_is_array(v) || json_array_size(v) == 0) {
            sl_errors_add(errs, "%s: must be a non-empty array of rule names "
                          "(omit it for every rule)", sub);
        } else if ((a->rules = calloc(json_array_size(v), sizeof(char *))) != NULL) {
            json_array_foreach(v, i, e) {
                char esub[200];
                snprintf(esub, sizeof(esub), "%s[%zu]", sub, i);
                if (sl_get_string(e, esub, &s, errs) != 0)
                    continue;
                if (!sl_config_has_rule(c, s))
                    sl_errors_add(errs, "%s: %s is not the name of any rule",
                                  esub, sl_quote(s, q, sizeof(q)));
                a->rules[a->nrules++] = strdup(s);
            }
        }
    }
    snprintf(sub, sizeof(sub), "%s.events", path);
    v = json_object_get(ja, "events");
    if (v != NULL) {
        a->on_pause = a->on_store = a->on_operator = false;
        if (!json_is_array(v)) {
            sl_errors_add(errs, "%s: must be an array of \"pause\", \"store\" "
                          "and \"operator\"", sub);
        } else {
            json_array_foreach(v, i, e) {
                char esub[200];
                snprintf(esub, sizeof(esub), "%s[%zu]", sub, i);
                if (sl_get_string(e, esub, &s, errs) != 0)
                    continue;
                if (strcmp(s, "pause") == 0)
                    a->on_pause = true;
                else if (strcmp(s, "store") == 0)
                    a->on_store = true;
                else if (strcmp(s, "operator") == 0)
                    a->on_operator = true;
                else
                    sl_errors_add(errs, "%s: %s must be \"pause\", \"store\" "
                                  "or \"operator\"", esub, sl_quote(s, q, sizeof(q)));
            }
        }
    }
    snprintf(sub, sizeof(sub), "%s.headers", path);
    v = json_object_get(ja, "headers");
    if (v != NULL) {
        if (!json_is_object(v)) {
            sl_errors_add(errs, "%s: must be an object of header names and "
                          "values", sub);
            return;
        }
        a->headers = calloc(json_object_size(v) + 1, sizeof(char *));
        json_object_foreach(v, key, e) {
            char line[1024];
            bool ok = json_is_string(e);
            if (a->headers == NULL)
                break;
            for (const char *p = ok ? json_string_value(e) : ""; ok && *p; p++)
                ok = (unsigned char)*p >= 0x20 && *p != 0x7f;
            if (!sl_is_token(key) || !ok ||
                strlen(key) + strlen(json_string_value(e)) + 3 > sizeof(line)) {
                sl_errors_add(errs, "%s.%s: must be a header name with a string "
                              "value (no control characters, under 1 KiB)",
                              sub, sl_quote(key, q, sizeof(q)));
                continue;
            }
            snprintf(line, sizeof(line), "%s: %s", key, json_string_value(e));
            a->headers[a->nheaders++] = strdup(line);
        }
    }
}

static void sl_parse_alerts(json_t *v, struct sl_config *c, struct sl_errors *errs)
{
    if (v == NULL)
        return;
    if (!json_is_array(v) || json_array_size(v) > 32) {
        sl_errors_add(errs, "alerts: must be an array of at most 32 receivers "
                      "such as [{\"url\": \"http://hooks.example/x\"}]");
        return;
    }
    c->alerts = calloc(json_array_size(v) + 1, sizeof(*c->alerts));
    if (c->alerts == NULL) {
        sl_errors_add(errs, "alerts: out of memory");
        return;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
        char path[32];
        snprintf(path, sizeof(path), "alerts[%zu]", i);
        sl_parse_alert(json_array_get(v, i), path, c, &c->alerts[i], errs);
        c->nalerts = i + 1;
        if (sl_alert_apply(c, &c->alerts[i]) != 0)
            sl_errors_add(errs, "%s: out of memory", path);
    }
}

static void sl_parse_upstreams(json_t *v, struct sl_config *c,
                               struct sl_errors *errs)
{
    json_t *names = NULL, *prefixes = NULL, *prev;
    char q[96];

    if (v == NULL || !json_is_array(v) || json_array_size(v) == 0) {
        sl_errors_add(errs, "upstreams: must be a non-empty array of upstreams");
        return;
    }
    c->upstreams = calloc(json_array_size(v), sizeof(*c->upstreams));
    names = json_object();
    prefixes = json_object();
    if (c->upstreams == NULL || names == NULL || prefixes == NULL) {
        sl_errors_add(errs, "upstreams: out of memory");
        goto out;
    }
    c->nupstreams = json_array_size(v);
    if (c->nupstreams > SL_MAX_UPSTREAMS)
        sl_errors_add(errs, "upstreams: %zu upstreams; at most %d", c->nupstreams,
                      SL_MAX_UPSTREAMS);
    for (size_t i = 0; i < c->nupstreams; i++) {
        char path[64];
        struct sl_upstream_conf *u = &c->upstreams[i];
        snprintf(path, sizeof(path), "upstreams[%zu]", i);
        u->index = i;
        u->config = c;
        sl_parse_upstream(json_array_get(v, i), path, u, errs);
        if (u->name != NULL) {
            if ((prev = json_object_get(names, u->name)) != NULL)
                sl_errors_add(errs, "%s.name: %s is already the name of "
                              "upstreams[%lld]", path, sl_quote(u->name, q, sizeof(q)),
                              (long long)json_integer_value(prev));
            else
                json_object_set_new(names, u->name, json_integer((json_int_t)i));
        }
        if (u->prefix != NULL) {
            if ((prev = json_object_get(prefixes, u->prefix)) != NULL)
                sl_errors_add(errs, "%s.prefix: %s is already the prefix of "
                              "upstreams[%lld]", path, sl_quote(u->prefix, q, sizeof(q)),
                              (long long)json_integer_value(prev));
            else
                json_object_set_new(prefixes, u->prefix, json_integer((json_int_t)i));
        }
    }
out:
    json_decref(names);
    json_decref(prefixes);
}

/* Is NAME one of the first N shares of V, or of any earlier list? */
static bool sl_named_before(const struct sl_share *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].app, name) == 0)
            return true;
    return false;
}

/*
 * Every app a share names gets an id of its own, from a pool of max_apps
 * (sl_apps): a configuration naming more could not serve.  Counts the
 * distinct names ("*", "other" and "-" are not names of their own).
 */
static void sl_check_named_apps(const struct sl_config *c, struct sl_errors *errs)
{
    size_t named = 0;

    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *u = &c->upstreams[i];
        for (size_t k = 0; k <= u->nrules; k++) {
            const struct sl_share *v = k < u->nrules ? u->rules[k].shares : u->apps;
            size_t n = k < u->nrules ? u->rules[k].nshares : u->napps;
            for (size_t j = 0; j < n; j++) {
                bool seen = sl_named_before(v, j, v[j].app);
                const char *a = v[j].app;
                if (seen || strcmp(a, "*") == 0 || strcmp(a, "other") == 0 ||
                    strcmp(a, "-") == 0)
                    continue;
                /* Earlier lists of this and earlier upstreams. */
                for (size_t ui = 0; ui <= i && !seen; ui++) {
                    const struct sl_upstream_conf *w = &c->upstreams[ui];
                    size_t kmax = ui < i ? w->nrules + 1 : k;
                    for (size_t kk = 0; kk < kmax && !seen; kk++)
                        seen = kk < w->nrules
                                   ? sl_named_before(w->rules[kk].shares,
                                                     w->rules[kk].nshares, a)
                                   : sl_named_before(w->apps, w->napps, a);
                }
                named += !seen;
            }
        }
    }
    if (named > c->max_apps)
        sl_errors_add(errs, "max_apps: the shares name %zu distinct apps, more than "
                      "max_apps (%u); each named app needs an id of its own "
                      "(raise max_apps)", named, c->max_apps);
}

static void sl_parse_root(json_t *root, bool apply_env, struct sl_config *c,
                          struct sl_errors *errs)
{
    static const char *const keys[] = {"listen", "store", "store_prefix",
                                       "on_store_error", "store_timeout",
                                       "concurrency_lease", "local_share",
                                       "memory_limit", "workers", "access_log",
                                       "shutdown_timeout", "client_timeout",
                                       "header_timeout", "max_retry_after",
                                       "max_connections", "upstreams", "app",
                                       "forward_app_header", "max_apps",
                                       "log_format", "admin", "alerts", "shadow",
                                       "state_file", "state_interval",
                                       "response_spool", NULL};
    const char *s, *env;
    char q[96];
    json_t *v;
    long long n;

    c->memory_limit = SL_DEFAULT_MEMORY_LIMIT;
    c->access_log = true;
    c->shutdown_timeout_us = SL_SECONDS(10);
    c->client_timeout_us = SL_SECONDS(60);
    c->header_timeout_us = SL_SECONDS(10);
    c->max_retry_after_us = SL_HOURS(1);
    c->response_spool = SL_DEFAULT_RESPONSE_SPOOL;
    c->local_share = 1.0;
    c->max_connections = 10000;
    c->store_timeout_us = 200 * SL_USEC_PER_MSEC;
    c->lease_ttl_us = SL_SECONDS(10);
    c->app_kind = SL_APP_NOBODY;
    c->max_apps = 100;
    c->warn_at = 0.8;
    c->critical_at = 0.9;
    c->status_top = 20;
    c->state_interval_us = SL_SECONDS(10);
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
        sl_errors_add(errs, "listen%s: %s is not HOST:PORT (e.g. "
                      "\"127.0.0.1:8080\", \"[::1]:8080\" or \":8080\")",
                      env && *env ? " (from SLUICE_LISTEN)" : "",
                      sl_quote(s, q, sizeof(q)));

    sl_parse_store(root, apply_env, c, errs);

    v = json_object_get(root, "memory_limit");
    if (v != NULL) {
        if (json_is_integer(v) && json_integer_value(v) > 0)
            c->memory_limit = (uint64_t)json_integer_value(v);
        else if (!json_is_string(v) ||
                 sl_size_parse(json_string_value(v), &c->memory_limit) != 0 ||
                 c->memory_limit == 0) {
            char brief[96];
            sl_json_brief(v, brief, sizeof(brief));
            sl_errors_add(errs, "memory_limit: %s is not a size (write e.g. "
                          "\"64MB\" or a number of bytes)", brief);
        }
        if (c->memory_limit < 65536)
            sl_errors_add(errs, "memory_limit: must be at least 64KB");
    }
    v = json_object_get(root, "response_spool");
    if (v != NULL) {
        if (json_is_integer(v) && json_integer_value(v) >= 0)
            c->response_spool = (uint64_t)json_integer_value(v);
        else if (!json_is_string(v) ||
                 sl_size_parse(json_string_value(v), &c->response_spool) != 0) {
            char brief[96];
            sl_json_brief(v, brief, sizeof(brief));
            sl_errors_add(errs, "response_spool: %s is not a size (write e.g. "
                          "\"64MB\", or 0 to keep responses in memory only)", brief);
        }
    }
    v = json_object_get(root, "workers");
    if (v != NULL && sl_get_int(v, "workers", 0, 64, &n, errs) == 0)
        c->workers = (int)n;
    v = json_object_get(root, "access_log");
    if (v != NULL)
        sl_get_bool(v, "access_log", &c->access_log, errs);
    v = json_object_get(root, "shutdown_timeout");
    if (v != NULL)
        sl_get_duration(v, "shutdown_timeout", 0, SL_HOURS(1), true,
                        &c->shutdown_timeout_us, errs);
    v = json_object_get(root, "client_timeout");
    if (v != NULL)
        sl_get_duration(v, "client_timeout", SL_SECONDS(1), SL_HOURS(24), false,
                        &c->client_timeout_us, errs);
    v = json_object_get(root, "header_timeout");
    if (v != NULL)
        sl_get_duration(v, "header_timeout", 100 * SL_USEC_PER_MSEC, SL_HOURS(1),
                        false, &c->header_timeout_us, errs);
    v = json_object_get(root, "max_retry_after");
    if (v != NULL)
        sl_get_duration(v, "max_retry_after", SL_SECONDS(1), SL_DURATION_MAX, true,
                        &c->max_retry_after_us, errs);
    v = json_object_get(root, "max_connections");
    if (v != NULL && sl_get_int(v, "max_connections", 1, 1000000, &n, errs) == 0)
        c->max_connections = (unsigned)n;

    v = json_object_get(root, "app");
    if (v != NULL)
        sl_parse_app(v, "app", &c->app_kind, &c->app_header, errs);
    v = json_object_get(root, "forward_app_header");
    if (v != NULL)
        sl_get_bool(v, "forward_app_header", &c->forward_app_header, errs);
    v = json_object_get(root, "max_apps");
    if (v != NULL && sl_get_int(v, "max_apps", 1, 10000, &n, errs) == 0)
        c->max_apps = (unsigned)n;
    v = json_object_get(root, "log_format");
    if (v != NULL && sl_get_string(v, "log_format", &s, errs) == 0) {
        if (strcmp(s, "json") == 0)
            c->log_format = SL_LOG_FORMAT_JSON;
        else if (strcmp(s, "text") != 0)
            sl_errors_add(errs, "log_format: %s must be \"text\" or \"json\"",
                          sl_quote(s, q, sizeof(q)));
    }
    sl_parse_admin(json_object_get(root, "admin"), apply_env, c, errs);

    sl_parse_upstreams(json_object_get(root, "upstreams"), c, errs);
    for (size_t i = 0; i < c->nupstreams; i++) {
        struct sl_upstream_conf *u = &c->upstreams[i];
        if (u->app_kind == SL_APP_UNSET) {
            u->app_kind = c->app_kind;
            if (c->app_header != NULL)
                u->app_header = strdup(c->app_header);
        }
        if (!u->forward_app_set)
            u->forward_app_header = c->forward_app_header;
    }
    sl_check_named_apps(c, errs);
    sl_parse_alerts(json_object_get(root, "alerts"), c, errs);
    v = json_object_get(root, "state_file");
    if (v != NULL && sl_get_string(v, "state_file", &s, errs) == 0) {
        if (*s == '\0' || strlen(s) > 4000)
            sl_errors_add(errs, "state_file: must be a file path");
        else if (c->store_kind == SL_STORE_REDIS)
            sl_errors_add(errs, "state_file: keeps the memory store's windows; "
                          "with a Redis store they live in Redis (remove it)");
        else
            c->state_file = strdup(s);
    }
    v = json_object_get(root, "state_interval");
    if (v != NULL)
        sl_get_duration(v, "state_interval", SL_SECONDS(1), SL_HOURS(1), false,
                        &c->state_interval_us, errs);
    v = json_object_get(root, "shadow");
    if (v != NULL && sl_get_bool(v, "shadow", &c->shadow, errs) == 0 && c->shadow)
        for (size_t i = 0; i < c->nupstreams; i++)
            for (size_t k = 0; k < c->upstreams[i].nrules; k++)
                c->upstreams[i].rules[k].shadow = true;
}

/*
 * Does pattern TEXT look like a regular expression or a router's
 * ":param", copied from a provider's documentation?  In sluice's syntax
 * those are literal characters, so the rule would miss what was meant.
 * Writes the advice into BUF.
 */
static const char *sl_pattern_foreign(const char *text, char *buf, size_t len)
{
    const char *p;

    if ((p = strstr(text, ".*")) != NULL || (p = strstr(text, ".+")) != NULL) {
        snprintf(buf, len, "looks like a regular expression: in a rule's path "
                 "\"%.2s\" is a literal '%c' then %s, so \"%.*s%.2s\" does not match "
                 "\"%.*s\"; write \"%.*s*\" for the prefix and anything after it",
                 p, p[0], p[1] == '*' ? "any run without '/'" : "a literal '+'",
                 (int)(p - text), text, p, (int)(p - text), text, (int)(p - text), text);
        return buf;
    }
    for (p = text; *p; p++) {
        if (strchr("^$()[]|+", *p) != NULL) {
            snprintf(buf, len, "holds '%c', a literal character in a rule's path "
                     "(it looks like a regular expression): \"*\" matches a run "
                     "without '/', \"**\" any run, \"{name}\" one segment", *p);
            return buf;
        }
        if (*p == ':' && p > text && p[-1] == '/') {
            size_t n = strcspn(p + 1, "/");
            snprintf(buf, len, "has a segment \"%.*s\", which matches only that text; "
                     "a router's parameter is written \"{%.*s}\" here", (int)n + 1, p,
                     (int)n, p + 1);
            return buf;
        }
    }
    return NULL;
}

/*
 * Warnings: rules that parse but would not match what they seem to say.
 * The prefix is removed before matching, so a path that starts with it
 * again matches only targets that repeat it ("/leads/leads/..."); and
 * patterns copied from regular expressions or routers match literally.
 */
static void sl_config_lint(struct sl_config *c)
{
    char why[512];

    for (size_t i = 0; i < c->nupstreams; i++) {
        const struct sl_upstream_conf *u = &c->upstreams[i];
        for (size_t k = 0; k < u->nrules; k++) {
            const struct sl_rule *r = &u->rules[k];
            const char *t = r->path_text;
            size_t pl = u->prefix_len;
            if (t == NULL)
                continue;
            if (pl > 1 && strncasecmp(t, u->prefix, pl) == 0 &&
                (t[pl] == '/' || t[pl] == '\0'))
                sl_errors_add(&c->warnings, "upstreams[%zu].rules[%zu].path: \"%.200s\" "
                              "starts with the upstream's prefix \"%s\", which is removed "
                              "before rules match: it matches %s%.200s, not %.200s "
                              "(write \"%.200s\" if that is what you mean)",
                              i, k, t, u->prefix, u->prefix, t, t,
                              t[pl] == '\0' ? "/" : t + pl);
            if (sl_pattern_foreign(t, why, sizeof(why)) != NULL)
                sl_errors_add(&c->warnings, "upstreams[%zu].rules[%zu].path: \"%.200s\" %s",
                              i, k, t, why);
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
        /* jansson quotes the offending bytes ("near '\x15'") raw. */
        char ename[512], etext[4 * JSON_ERROR_TEXT_LENGTH];
        sl_errors_add(errs, "%s:%d:%d: %s",
                      sl_escape(name, 400, false, ename, sizeof(ename)),
                      jerr.line, jerr.column,
                      sl_escape(jerr.text, sizeof(jerr.text), false, etext,
                                sizeof(etext)));
        return -1;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        json_decref(root);
        sl_errors_add(errs, "out of memory");
        return -1;
    }
    atomic_init(&c->refs, 1);
    c->generation = 1;
    sl_parse_root(root, apply_env, c, errs);
    json_decref(root);
    if (errs->count > before) {
        sl_config_free(c);
        return -1;
    }
    sl_config_lint(c);
    *out = c;
    return 0;
}

const struct sl_config *sl_config_ref(const struct sl_config *c)
{
    atomic_fetch_add(&((struct sl_config *)c)->refs, 1);
    return c;
}

void sl_config_unref(const struct sl_config *c)
{
    if (c != NULL && atomic_fetch_sub(&((struct sl_config *)c)->refs, 1) == 1)
        sl_config_free((struct sl_config *)c);
}

static bool sl_str_differ(const char *a, const char *b);

/* Do A and B match the same calls (kind, methods, path, per)? */
static bool sl_rule_same_calls(const struct sl_rule *a, const struct sl_rule *b)
{
    if (a->kind != b->kind || a->nmethods != b->nmethods ||
        sl_str_differ(a->path_text, b->path_text) ||
        sl_str_differ(a->per_text, b->per_text))
        return false;
    for (size_t i = 0; i < a->nmethods; i++)
        if (strcmp(a->methods[i], b->methods[i]) != 0)
            return false;
    return true;
}

size_t sl_config_reload_diff(const struct sl_config *a, const struct sl_config *b,
                             struct sl_errors *errs)
{
    size_t n = 0;

    for (size_t i = 0; i < b->nupstreams; i++) {
        const struct sl_upstream_conf *nu = &b->upstreams[i];
        const struct sl_upstream_conf *ou = sl_config_upstream(a, nu->name);
        if (ou == NULL)
            continue;
        for (size_t k = 0; k < nu->nrules; k++) {
            const struct sl_rule *nr = &nu->rules[k];
            const struct sl_rule *same = sl_upstream_rule_like(ou, nr);
            const struct sl_rule *moved = NULL;
            if (!nr->unnamed)
                continue;
            for (size_t j = 0; j < ou->nrules && moved == NULL; j++)
                if (ou->rules[j].unnamed && sl_rule_same_calls(&ou->rules[j], nr) &&
                    strcmp(ou->rules[j].name, nr->name) != 0)
                    moved = &ou->rules[j];
            if (moved != NULL || (same != NULL && !sl_rule_same_calls(same, nr))) {
                sl_errors_add(errs, "upstreams[%zu].rules[%zu]: a rule without a "
                              "\"name\" is known by its position (%s), and %s; give "
                              "the rules names so that their counts follow them "
                              "(the running configuration is kept)", i, k, nr->name,
                              moved != NULL ? "this one was another position's before"
                                            : "that position held another rule before");
                n++;
            }
        }
    }
    return n;
}

const struct sl_upstream_conf *sl_config_upstream_n(const struct sl_config *c,
                                                    const char *name, size_t len)
{
    for (size_t i = 0; c != NULL && i < c->nupstreams; i++)
        if (strlen(c->upstreams[i].name) == len &&
            memcmp(c->upstreams[i].name, name, len) == 0)
            return &c->upstreams[i];
    return NULL;
}

const struct sl_upstream_conf *sl_config_upstream(const struct sl_config *c,
                                                  const char *name)
{
    return sl_config_upstream_n(c, name, strlen(name));
}

const struct sl_rule *sl_upstream_rule_named(const struct sl_upstream_conf *u,
                                             const char *name, size_t len)
{
    for (size_t i = 0; u != NULL && i < u->nrules; i++)
        if (strlen(u->rules[i].name) == len && memcmp(u->rules[i].name, name, len) == 0)
            return &u->rules[i];
    return NULL;
}

const struct sl_rule *sl_upstream_rule_like(const struct sl_upstream_conf *u,
                                            const struct sl_rule *r)
{
    if (r->kind == SL_RULE_PAUSE)
        return &u->pause_rule;
    for (size_t i = 0; i < u->nrules; i++)
        if (u->rules[i].kind == r->kind && strcmp(u->rules[i].name, r->name) == 0)
            return &u->rules[i];
    return NULL;
}

static bool sl_str_differ(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a != b;
    return strcmp(a, b) != 0;
}

static void sl_restart_line(struct sl_errors *errs, size_t *n, const char *what,
                            const char *was, const char *now)
{
    sl_errors_add(errs, "%s: changed from %s to %s; applying it needs a restart "
                  "(the running configuration is kept)", what, was, now);
    (*n)++;
}

size_t sl_config_restart_diff(const struct sl_config *a, const struct sl_config *b,
                              struct sl_errors *errs)
{
    char x[64], y[64];
    size_t n = 0;

#define SL_DIFF_STR(field, name)                                               \
    if (sl_str_differ(a->field, b->field))                                     \
        sl_restart_line(errs, &n, name, a->field ? a->field : "(none)",       \
                        b->field ? b->field : "(none)");
#define SL_DIFF_NUM(field, name, fmt, conv)                                    \
    if (a->field != b->field) {                                                \
        snprintf(x, sizeof(x), fmt, conv(a->field));                           \
        snprintf(y, sizeof(y), fmt, conv(b->field));                           \
        sl_restart_line(errs, &n, name, x, y);                                 \
    }
#define SL_ID(v) (v)
#define SL_MS(v) ((long long)((v) / 1000))
    SL_DIFF_STR(listen, "listen")
    SL_DIFF_NUM(workers, "workers", "%d", SL_ID)
    /* The URL may hold a password: never printed. */
    if (sl_str_differ(a->store, b->store))
        sl_restart_line(errs, &n, "store", "one store", "another");
    SL_DIFF_STR(store_prefix, "store_prefix")
    if (a->on_store_error != b->on_store_error)
        sl_restart_line(errs, &n, "on_store_error", "one policy", "another");
    SL_DIFF_NUM(store_timeout_us, "store_timeout (ms)", "%lld", SL_MS)
    SL_DIFF_NUM(lease_ttl_us, "concurrency_lease (ms)", "%lld", SL_MS)
    SL_DIFF_NUM(memory_limit, "memory_limit", "%llu", (unsigned long long))
    SL_DIFF_NUM(local_share, "local_share", "%g", (double))
    SL_DIFF_NUM(max_connections, "max_connections", "%u", SL_ID)
    SL_DIFF_NUM(client_timeout_us, "client_timeout (ms)", "%lld", SL_MS)
    SL_DIFF_NUM(max_apps, "max_apps", "%u", SL_ID)
    SL_DIFF_STR(state_file, "state_file")
    SL_DIFF_STR(admin_listen, "admin.listen")
#undef SL_DIFF_STR
#undef SL_DIFF_NUM
#undef SL_ID
#undef SL_MS
    return n;
}

int sl_config_load(const char *path, bool apply_env, struct sl_config **out,
                   struct sl_errors *errs)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc = -1;
    char epath[512];

    *out = NULL;
    sl_escape(path, 400, false, epath, sizeof(epath));
    if (f == NULL) {
        sl_errors_add(errs, "%s: cannot open: %s", epath, strerror(errno));
        return -1;
    }
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *t;
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                sl_errors_add(errs, "%s: larger than 16 MiB", epath);
                goto out;
            }
            t = realloc(text, cap);
            if (t == NULL) {
                sl_errors_add(errs, "%s: out of memory", epath);
                goto out;
            }
            text = t;
        }
        size_t n = fread(text + len, 1, 4096, f);
        len += n;
        if (n < 4096)
            break;
    }
    if (ferror(f)) {
        sl_errors_add(errs, "%s: read error: %s", epath, strerror(errno));
        goto out;
    }
    text[len] = '\0';
    rc = sl_config_parse(text, path, apply_env, out, errs);
out:
    fclose(f);
    free(text);
    return rc;
}

const char *sl_rule_window_text(const struct sl_rule *r, char *buf, size_t len)
{
    if (r->window_text != NULL) {
        snprintf(buf, len, "%s", r->window_text);
        return buf;
    }
    sl_duration_format(r->window_us, buf, len);
    return buf;
}

static void sl_rule_free(struct sl_rule *r)
{
    free(r->name);
    free(r->window_text);
    for (size_t i = 0; i < r->nmethods; i++)
        free(r->methods[i]);
    free(r->methods);
    sl_pattern_free(r->path);
    free(r->per_text);
    free(r->per_header);
    free(r->alert_at);
    free(r->timezone);
    sl_tz_free(r->tz);
    free(r->path_text);
    sl_shares_free(r->shares, r->nshares);
}

void sl_config_free(struct sl_config *c)
{
    if (c == NULL)
        return;
    sl_errors_free(&c->warnings);
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
        free(u->reject_body);
        free(u->reject_content_type);
        free(u->app_header);
        sl_shares_free(u->apps, u->napps);
        free(u->priority_header);
    }
    for (size_t i = 0; i < c->nalerts; i++) {
        struct sl_alert_conf *a = &c->alerts[i];
        free(a->url);
        free(a->at);
        for (size_t k = 0; k < a->nrules; k++)
            free(a->rules[k]);
        free(a->rules);
        for (size_t k = 0; k < a->nheaders; k++)
            free(a->headers[k]);
        free(a->headers);
    }
    free(c->alerts);
    free(c->app_header);
    free(c->admin_listen);
    free(c->admin_host);
    free(c->admin_token);
    for (size_t i = 0; i < c->nadmin_hosts; i++)
        free(c->admin_hosts[i]);
    free(c->admin_hosts);
    free(c->state_file);
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
