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
 * Every value echoed in an error line goes through sl_conf_quote(), so a
 * control character in a config never reaches a terminal or a log raw.
 *
 * Keys are described by tables (sl_config_table.h), one per JSON object,
 * each after the handlers of its compound keys: the row gives a key's
 * type, bounds, default, environment variable and doc, and the same rows
 * are the defaults, the allowed keys, `--print-reference` and `--help`'s
 * environment list.  A handler reads what one row cannot say: a value
 * checked against its siblings (a rule's kind, window and calendar), a
 * URL, a list, an environment override.
 *
 * Duplicate names and prefixes are found with hash sets (jansson objects
 * keyed by the name), so a config with 50,000 upstreams checks in linear
 * time.
 */
#include "sl_config.h"
#include "sl_config_table.h"

#include "sl_apps.h"

#include "sl_duration.h"
#include "sl_http.h"
#include "sl_pattern.h"
#include "sl_preset.h"
#include "sl_redis_link.h"
#include "sl_redis_url.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* An upstream's margin, unless it says: min(SL_MARGIN_DEFAULT, window / 20)
 * for each rule. */
#define SL_MARGIN_DEFAULT (100 * SL_USEC_PER_MSEC)

#define SL_SECONDS(n) ((int64_t)(n) * SL_USEC_PER_SEC)
#define SL_MINUTES(n) (SL_SECONDS(n) * 60)
#define SL_HOURS(n) (SL_MINUTES(n) * 60)
#define SL_DAYS(n) (SL_HOURS(n) * 24)

/* Longest reject body template. */
#define SL_REJECT_BODY_MAX 8192

/* The names a reject body template may use (sl_upstream_conf.reject_body). */
static const char *const sl_reject_placeholders[] = {
    "upstream", "rule", "limit", "window", "retry_after", "message", "app",
    "share", NULL,
};

static void sl_parse_app(json_t *v, const char *path, enum sl_app_kind *kind,
                         char **header, struct sl_errors *errs);
static void sl_check_named_apps(const struct sl_config *c, struct sl_errors *errs);
/* Handlers read sibling keys' rows (their bounds, defaults and words). */
static const struct sl_conf_table sl_rule_table;

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

static void sl_read_rule_name(json_t *obj, json_t *v, const char *at,
                              const char *sub, void *base,
                              const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    const char *s;
    char q[96];
    bool ok;

    (void)obj, (void)at, (void)k;
    if (v == NULL) {
        char def[32];
        snprintf(def, sizeof(def), "rule-%zu", r->index);
        r->name = strdup(def);
        r->unnamed = true;
        return;
    }
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    /* It goes into RateLimit headers and log lines: visible ASCII only. */
    ok = *s != '\0' && strlen(s) <= 64;
    for (const char *c = s; *c && ok; c++)
        if (*c < 0x21 || *c > 0x7e || strchr("\"\\;,=", *c) != NULL)
            ok = false;
    if (!ok)
        sl_errors_add(ctx->errs, "%s: %s must be 1 to 64 visible ASCII characters "
                      "(no spaces, control characters, quotes, backslashes, "
                      "';', ',' or '=')", sub, sl_conf_quote(s, q, sizeof(q)));
    else
        r->name = strdup(s);
}

static const struct sl_conf_handler sl_rule_name_handler = {
    sl_read_rule_name,
    "A rule's name is what refusals, `RateLimit` fields, `/status`, `/metrics` "
    "and alerts call it: 1 to 64 visible ASCII characters without quotes, "
    "backslashes, `;`, `,` or `=`.  Unnamed, a rule is `rule-INDEX` (its "
    "position), and a reload refuses to move an unnamed rule, since its "
    "counts follow the position.  Names are unique within an upstream.",
};

static void sl_read_methods(json_t *obj, json_t *v, const char *at, const char *sub,
                            void *base, const struct sl_conf_key *k,
                            struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    size_t i;
    json_t *m;
    const char *s;

    (void)obj, (void)at, (void)k;
    if (!json_is_array(v) || json_array_size(v) == 0) {
        sl_errors_add(ctx->errs, "%s: must be a non-empty array of method names", sub);
        return;
    }
    r->methods = calloc(json_array_size(v), sizeof(char *));
    json_array_foreach(v, i, m) {
        char msub[800], q[96];
        snprintf(msub, sizeof(msub), "%s[%zu]", sub, i);
        if (sl_conf_get_string(m, msub, &s, ctx->errs) != 0)
            continue;
        if (!sl_is_token(s) || strlen(s) > 32) {
            sl_errors_add(ctx->errs, "%s: %s is not a method name", msub,
                          sl_conf_quote(s, q, sizeof(q)));
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

static const struct sl_conf_handler sl_methods_handler = {sl_read_methods, NULL};

static void sl_read_path(json_t *obj, json_t *v, const char *at, const char *sub,
                         void *base, const struct sl_conf_key *k,
                         struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    const char *s, *flaw;
    char q[96], why[256];

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    r->path_text = strdup(s);
    r->path = sl_pattern_compile(s, &flaw);
    if (r->path == NULL)
        sl_errors_add(ctx->errs, "%s: %s %s", sub, sl_conf_quote(s, q, sizeof(q)),
                      flaw);
    else if ((flaw = sl_pattern_flaw(s, why, sizeof(why))) != NULL)
        sl_errors_add(ctx->errs, "%s: %s %s: the rule could never match", sub,
                      sl_conf_quote(s, q, sizeof(q)), flaw);
}

static const struct sl_conf_handler sl_path_handler = {
    sl_read_path,
    "A rule's path is matched against the request path after the upstream's "
    "prefix is removed, in its canonical form (percent-decoded, `\\` read as "
    "`/`, `;params` dropped, slashes merged, a trailing slash ignored, letter "
    "case ignored unless `path_case` is `\"sensitive\"`; dot segments are "
    "refused).  Literal characters match themselves; `*` matches any run of "
    "characters without `/` (possibly empty), `**` any run including `/`, "
    "`{name}` one whole non-empty segment and captures it (for `per`); a "
    "trailing `/**` also matches the path without it.  At most 4 wildcards "
    "and 8 captures per pattern.  Without `path` the rule counts "
    "every call of the upstream.  A pattern that no canonical path can equal "
    "(`//`, `.`, `..`, `%`, `\\`, `;`, `?`, `#`, spaces) is refused; one "
    "that starts with the upstream's prefix, or looks like a regular "
    "expression or a router's `:param`, is accepted with a warning.",
};

/* The sync words, from SL_SYNC_SFORCE on (SL_SYNC_NONE is "absent"). */
static const char *const sl_sync_words[] = {
    "sforce-limit-info", "x-ratelimit", "ratelimit", "shopify", NULL,
};

static void sl_read_sync(json_t *jr, json_t *v, const char *path, const char *sub,
                         void *base, const struct sl_conf_key *k,
                         struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    char psub[800];
    json_t *jp = json_object_get(jr, "sync_probe");
    const struct sl_conf_key *probe = sl_conf_key(&sl_rule_table, "sync_probe");
    int w;

    if (v != NULL && sl_conf_get_word(v, sub, k->words, &w, ctx->errs) == 0) {
        r->sync = (enum sl_sync_kind)(SL_SYNC_SFORCE + w);
        if (r->kind != SL_RULE_RATE)
            sl_errors_add(ctx->errs, "%s: only a rule with \"limit\" and \"window\" "
                          "can follow the provider's count", sub);
    }
    if (v != NULL)
        sl_duration_parse(probe->def, &r->sync_probe_us);
    if (jp != NULL) {
        snprintf(psub, sizeof(psub), "%s.sync_probe", path);
        if (v == NULL)
            sl_errors_add(ctx->errs, "%s: only a rule with \"sync\" probes the "
                          "provider's count", psub);
        else
            sl_conf_get_duration(jp, psub, probe->min, probe->max, true,
                                 &r->sync_probe_us, ctx->errs);
    }
    if (r->calendar && r->sync != SL_SYNC_NONE)
        sl_errors_add(ctx->errs, "%s: not available with a calendar window "
                      "(a provider report is read against a rolling window)", sub);
}

static const struct sl_conf_handler sl_sync_handler = {
    sl_read_sync,
    "With `sync` a rate rule follows the provider's own count of what is left, "
    "read from each response: `sforce-limit-info` (`Sforce-Limit-Info: "
    "api-usage=USED/MAX`), `x-ratelimit` (`X-RateLimit-Remaining`), "
    "`ratelimit` (the IETF `RateLimit` field, or `RateLimit-Remaining`), "
    "`shopify` (`X-Shopify-Shop-Api-Call-Limit: USED/MAX`).  Calls made "
    "outside sluice are then counted too.  While the provider's last report "
    "says nothing is left, one call goes through every `sync_probe` (60 s by "
    "default, 0: never) to learn the count again.  Not with a calendar "
    "window.",
};

static void sl_read_per(json_t *obj, json_t *v, const char *at, const char *sub,
                        void *base, const struct sl_conf_key *k,
                        struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    const char *s;
    char q[96];
    size_t len;

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
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
            sl_errors_add(ctx->errs, "%s: %s names no capture of this rule's path",
                          sub, sl_conf_quote(s, q, sizeof(q)));
    } else {
        sl_errors_add(ctx->errs, "%s: %s must be \"{capture}\" or \"header:NAME\"",
                      sub, sl_conf_quote(s, q, sizeof(q)));
    }
}

static const struct sl_conf_handler sl_per_handler = {
    sl_read_per,
    "`per` splits a rule into one bucket per value: `\"{name}\"` a capture "
    "of the rule's path (`/lead-result/{lead_id}`), `\"header:NAME\"` a "
    "request header.  Each bucket has the whole limit, and shares apply "
    "within each bucket.  A call without the header counts under the empty "
    "value.  Keys over 128 bytes are kept shortened with a hash.  The memory "
    "store holds at most `max_keys` keys of one rule at once.",
};

static void sl_read_max_keys(json_t *obj, json_t *v, const char *at,
                             const char *sub, void *base,
                             const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;

    (void)obj, (void)at;
    if (v == json_null())
        return;
    if (r->per_kind == SL_PER_NONE)
        sl_errors_add(ctx->errs, "%s: only a rule with \"per\" has more than one "
                      "key", sub);
    else if (!json_is_integer(v) || json_integer_value(v) < k->min ||
             json_integer_value(v) > k->max)
        sl_errors_add(ctx->errs, "%s: must be a whole number from %lld to %lld",
                      sub, k->min, k->max);
    else
        r->max_keys = (uint32_t)json_integer_value(v);
}

static const struct sl_conf_handler sl_max_keys_handler = {sl_read_max_keys, NULL};

/* "reset" and "timezone" of rate rule R (its window parsed); JR the rule,
 * PATH its path. */
static void sl_read_calendar(json_t *jr, const char *path, struct sl_rule *r,
                             struct sl_errors *errs)
{
    json_t *jreset = json_object_get(jr, "reset");
    json_t *jtz = json_object_get(jr, "timezone");
    const struct sl_conf_key *kreset = sl_conf_key(&sl_rule_table, "reset");
    char sub[768], q[96], why[256];
    const char *s;

    if (jreset != NULL) {
        int cal;
        snprintf(sub, sizeof(sub), "%s.reset", path);
        if (sl_conf_get_word(jreset, sub, kreset->words, &cal, errs) == 0) {
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
        if (sl_conf_get_string(jtz, sub, &s, errs) != 0)
            return;
    } else {
        s = sl_conf_key(&sl_rule_table, "timezone")->def;
    }
    r->timezone = strdup(s);
    r->tz = sl_tz_load(s, NULL, why, sizeof(why));
    if (r->tz == NULL) {
        sl_errors_add(errs, "%s.timezone: %s %s", path,
                      sl_conf_quote(s, q, sizeof(q)), why);
        return;
    }
    r->cal.tz = r->tz;
}

/*
 * A leaky bucket: "bucket" calls draining "leak".  Its margin comes off the
 * capacity (rate x margin), and the log of sends it keeps for sync covers
 * the time a full bucket takes to drain, plus the margin.
 */
static void sl_read_leaky(json_t *jr, json_t *jb, json_t *jleak, const char *path,
                          struct sl_rule *r, struct sl_conf_ctx *ctx)
{
    const struct sl_upstream_conf *u = ctx->u;
    const struct sl_conf_key *kb = sl_conf_key(&sl_rule_table, "bucket");
    struct sl_errors *errs = ctx->errs;
    char sub[768], q[96];
    const char *s;
    long long n;
    int64_t one, margin;

    r->kind = SL_RULE_RATE;
    r->leaky = true;
    if (jb == NULL || jleak == NULL) {
        sl_errors_add(errs, "%s: a leaky bucket needs both \"bucket\" (calls it "
                      "holds) and \"leak\" (how fast it drains, \"2/s\")", path);
        return;
    }
    snprintf(sub, sizeof(sub), "%s.bucket", path);
    if (sl_conf_get_int(jb, sub, kb->min, kb->max, &n, errs) != 0)
        return;
    r->limit = (uint64_t)n;
    snprintf(sub, sizeof(sub), "%s.leak", path);
    if (sl_conf_get_string(jleak, sub, &s, errs) != 0)
        return;
    if (sl_leak_parse(s, &r->leak) != 0) {
        sl_errors_add(errs, "%s: %s must be calls per second, minute or hour: "
                      "\"2/s\", \"40/m\", \"0.5/s\", \"3600/h\" (at most 6 "
                      "decimals, above 0)", sub, sl_conf_quote(s, q, sizeof(q)));
        return;
    }
    r->leak_text = strdup(s);
    if (r->leak.per_us > SL_BUCKET_MAX_UNITS / (int64_t)r->limit) {
        sl_errors_add(errs, "%s: a bucket of %llu calls draining %s is too fine to "
                      "count in integers; write the leak per second", sub,
                      (unsigned long long)r->limit, s);
        return;
    }
    if (json_object_get(jr, "reset") != NULL || json_object_get(jr, "timezone") != NULL)
        sl_errors_add(errs, "%s: a leaky bucket drains continuously; \"reset\" and "
                      "\"timezone\" belong to windows", path);
    /* One call's drain time; the auto margin is 5% of it, at most 100 ms. */
    one = (r->leak.per_us + r->leak.n - 1) / r->leak.n;
    margin = u->margin_us != SL_MARGIN_AUTO
                 ? u->margin_us
                 : (one / 20 < SL_MARGIN_DEFAULT ? one / 20 : SL_MARGIN_DEFAULT);
    r->window_us = ((int64_t)r->limit * r->leak.per_us + r->leak.n - 1) / r->leak.n;
    r->span_us = r->window_us + margin;
    r->bucket_cap = sl_bucket_cap(r->limit, &r->leak, margin);
    if (r->bucket_cap < r->leak.per_us)
        sl_errors_add(errs, "%s: the upstream's margin (%lld ms) drains more than "
                      "the whole bucket at %s: no call could ever fit", path,
                      (long long)(margin / SL_USEC_PER_MSEC), s);
}

/*
 * What kind of rule JR is: "concurrency", or "limit" per "window" (with
 * its calendar, "reset" and "timezone").  Then its span: the window plus
 * the upstream's margin.
 */
static void sl_read_rule_kind(json_t *jr, json_t *jl, const char *path,
                              const char *sub_limit, void *base,
                              const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    const struct sl_upstream_conf *u = ctx->u;
    const struct sl_conf_key *kw = sl_conf_key(&sl_rule_table, "window");
    const struct sl_conf_key *kc = sl_conf_key(&sl_rule_table, "concurrency");
    json_t *jw = json_object_get(jr, "window");
    json_t *jc = json_object_get(jr, "concurrency");
    json_t *jb = json_object_get(jr, "bucket");
    json_t *jleak = json_object_get(jr, "leak");
    struct sl_errors *errs = ctx->errs;
    char sub[768];
    long long n;
    int64_t d;

    if (jb != NULL || jleak != NULL) {
        sl_read_leaky(jr, jb, jleak, path, r, ctx);
        if (jc != NULL || jl != NULL || jw != NULL)
            sl_errors_add(errs, "%s: a leaky bucket (\"bucket\" and \"leak\") "
                          "has no \"limit\", \"window\" or \"concurrency\"", path);
        return;
    }
    if (jc != NULL) {
        r->kind = SL_RULE_CONCURRENCY;
        snprintf(sub, sizeof(sub), "%s.concurrency", path);
        if (sl_conf_get_int(jc, sub, kc->min, kc->max, &n, errs) == 0)
            r->limit = (uint64_t)n;
        if (jl != NULL || jw != NULL)
            sl_errors_add(errs, "%s: a rule has either \"concurrency\" or "
                          "\"limit\" with \"window\", not both", path);
        return;
    }
    r->kind = SL_RULE_RATE;
    if (jl == NULL || jw == NULL)
        sl_errors_add(errs, "%s: a rule needs \"limit\" and \"window\" "
                      "(or \"concurrency\")", path);
    /* The memory store logs one timestamp per call: keep it sane. */
    if (jl != NULL && sl_conf_get_int(jl, sub_limit, k->min, k->max, &n, errs) == 0)
        r->limit = (uint64_t)n;
    if (jw != NULL && json_is_string(jw) && strcmp(json_string_value(jw), "1mo") == 0) {
        /* A calendar month: 31 days at most (what keeps its calls). */
        r->calendar = true;
        r->cal.month = true;
        r->window_us = SL_DAYS(31);
    } else if (jw != NULL) {
        snprintf(sub, sizeof(sub), "%s.window", path);
        if (sl_conf_get_duration(jw, sub, kw->min, kw->max, false, &d, errs) == 0)
            r->window_us = d;
    }
    /* What people read (refusals, alerts, /status) says it as written:
     * "24h" stays "24h".  A number is seconds. */
    if (jw != NULL && json_is_string(jw))
        r->window_text = strndup(json_string_value(jw), 32);
    else if (jw != NULL && json_is_number(jw) &&
             asprintf(&r->window_text, "%gs", json_number_value(jw)) < 0)
        r->window_text = NULL;
    sl_read_calendar(jr, path, r, errs);
    /* Stamped when sent, counted by the provider on arrival: the margin
     * absorbs the jitter between the two (see "margin").  Unless the
     * upstream sets one: 100 ms, which ordinary network jitter stays
     * under, but never more than 5% of the window, so a short window
     * keeps most of its throughput. */
    r->span_us = r->window_us +
                 (u->margin_us != SL_MARGIN_AUTO
                      ? u->margin_us
                      : (r->window_us / 20 < SL_MARGIN_DEFAULT ? r->window_us / 20
                                                               : SL_MARGIN_DEFAULT));
}

static const struct sl_conf_handler sl_rule_kind_handler = {
    sl_read_rule_kind,
    "A rule is either a rate rule, `limit` calls in any `window` (a "
    "duration from 1 ms to 366 days such as `\"300ms\"`, `\"1.5s\"`, "
    "`\"5m\"`, `\"24h\"`, `300`, or `\"1mo\"`, a calendar month), or a "
    "concurrency rule, at most `concurrency` calls in "
    "flight at once; never both.  A rate window is rolling: in any interval "
    "of that length at most `limit` matching calls are forwarded, as the "
    "provider counts them (each rule's window is widened by the upstream's "
    "`margin` for that).  With `\"reset\": \"calendar\"` the window is a "
    "calendar period instead, for providers that reset on the calendar: "
    "the window must divide a day (`\"1d\"`, `\"1h\"`, `\"15m\"`...) or be "
    "`\"1mo\"` (always calendar), periods start at local midnight in "
    "`timezone` (`\"UTC\"` by default, a fixed offset such as `\"+05:30\"`, or "
    "a zone name such as `\"America/New_York\"` read from the system's zone "
    "files or `$TZDIR`, following daylight saving time), calls count from the "
    "last boundary and room comes back all at once at the next; "
    "`Retry-After` points at that boundary (bounded by `max_retry_after`).  "
    "Not with `sync`.",
};

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
    sl_conf_brief(v, brief, sizeof(brief));
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

/* "max" or "reserve" of a share (K says which). */
static void sl_read_share_value(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_share *sh = base;
    bool max = strcmp(k->key, "max") == 0;

    (void)obj, (void)at;
    if (sl_get_share_value(v, sub, max ? &sh->max : &sh->reserve,
                           max ? &sh->max_frac : &sh->reserve_frac, ctx->errs) == 0)
        *(max ? &sh->max_set : &sh->reserve_set) = true;
}

static const struct sl_conf_handler sl_share_value_handler = {
    sl_read_share_value,
    "`max` and `reserve` are a count of calls (an integer such as `600`) or a "
    "fraction of the rule's limit (a number above 0 and at most 1.0, such as "
    "`0.5`, rounded down to whole calls).  `max`: at most this many of the "
    "app's calls in any window.  `reserve`: this many are kept for the app; "
    "other apps cannot take the part it has not used (unless `lend`, while "
    "the app has no call in the window).  For `\"*\"` (every app not named) "
    "`max` applies to each such app and `reserve` to all of them together.  "
    "Reservations of one rule add up to at most its limit, and a reserve is "
    "at most its `max`.",
};

/* A rule's share cannot set a priority: say where it goes. */
static void sl_read_rule_priority(json_t *obj, json_t *v, const char *at,
                                  const char *sub, void *base,
                                  const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    (void)obj, (void)v, (void)at, (void)base, (void)k;
    sl_errors_add(ctx->errs, "%s: is set in the upstream's \"apps\" (a call has "
                  "one priority, whichever rules it counts in)", sub);
}

static const struct sl_conf_handler sl_rule_priority_handler = {
    sl_read_rule_priority, NULL,
};

#define SL_SHARE_KEYS                                                          \
    {.key = "max", .type = SL_CONF_ANY, .handler = &sl_share_value_handler,    \
     .doc = "At most this many of the app's calls per window (a count or a "   \
            "fraction of the limit)."},                                        \
    {.key = "reserve", .type = SL_CONF_ANY, .handler = &sl_share_value_handler, \
     .doc = "Calls kept for the app in every window (a count or a fraction of " \
            "the limit)."},                                                    \
    {.key = "lend", .type = SL_CONF_BOOL,                                      \
     SL_CONF_FIELD(struct sl_share, lend), .def = "false",                     \
     .doc = "Lend the reserve to other apps while this app has no call in "    \
            "the window."}

static const struct sl_conf_key sl_upstream_share_keys[] = {
    SL_SHARE_KEYS,
    {.key = "priority", .type = SL_CONF_INT, SL_CONF_FIELD(struct sl_share, priority),
     .min = 0, .max = SL_PRIORITY_LEVELS - 1, .def = "0", .flags = SL_CONF_SET,
     .set_offset = offsetof(struct sl_share, priority_set),
     .doc = "The app's queue lane: held calls of a higher priority are "
            "released first (`\"*\"`: every app not named)."},
};

static const struct sl_conf_key sl_rule_share_keys[] = {
    SL_SHARE_KEYS,
    {.key = "priority", .type = SL_CONF_ANY, .handler = &sl_rule_priority_handler,
     .doc = "Not here: a priority is set in the upstream's `apps`."},
};

static const struct sl_conf_table sl_upstream_share_table = SL_CONF_TABLE(
    "upstreams[].apps.APP",
    "An upstream's `apps` maps app names (or `\"*\"`, every app not named) to "
    "the default share of each of its rate rules (a rule's own `apps` "
    "replaces it) and to each app's queue priority.",
    sl_upstream_share_keys);

static const struct sl_conf_table sl_rule_share_table = SL_CONF_TABLE(
    "upstreams[].rules[].apps.APP",
    "A rate rule's own `apps`: app names (or `\"*\"`) mapped to their share "
    "of this rule's limit, instead of the upstream's `apps`.",
    sl_rule_share_keys);

/* Parse an "apps" object at PATH into *OUT (as written: fractions not
 * resolved).  ON_UPSTREAM: "priority" is allowed. */
static void sl_parse_shares(json_t *v, const char *path, bool on_upstream,
                            struct sl_share **out, size_t *nout,
                            struct sl_conf_ctx *ctx)
{
    struct sl_errors *errs = ctx->errs;
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
        snprintf(sub, sizeof(sub), "%.700s.%.100s", path, name);
        if (strcmp(name, "*") != 0 && !sl_apps_valid(name, strlen(name))) {
            sl_errors_add(errs, "%s: %s is not an app name (1 to %d letters, "
                          "digits or ._:@/+-), nor \"*\"", path,
                          sl_conf_quote(name, q, sizeof(q)), SL_APP_NAME_MAX);
            continue;
        }
        if (!json_is_object(je)) {
            sl_errors_add(errs, "%s: must be an object such as {\"max\": 0.5} or "
                          "{\"reserve\": 100}", sub);
            continue;
        }
        sh->app = strdup(name);
        sh->app_id = SL_APP_UNBOUND;
        sl_conf_read(on_upstream ? &sl_upstream_share_table : &sl_rule_share_table,
                     je, sub, sh, ctx);
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

/* A rule's "apps", or its upstream's when it has none. */
static void sl_read_rule_apps(json_t *obj, json_t *v, const char *at,
                              const char *sub, void *base,
                              const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    const struct sl_upstream_conf *u = ctx->u;

    (void)obj, (void)k;
    if (v != NULL && r->leaky) {
        /* A share is a count of calls in the window; a bucket has no
         * window whose calls could be counted per app. */
        sl_errors_add(ctx->errs, "%s: shares apply to windows (\"limit\" and "
                      "\"window\"), not to a leaky bucket; put the apps' shares "
                      "on a window rule beside it", sub);
    } else if (v != NULL && r->kind != SL_RULE_RATE) {
        sl_errors_add(ctx->errs, "%s: shares apply to rate rules (\"limit\" and "
                      "\"window\"), not to concurrency", sub);
    } else if (v != NULL) {
        struct sl_share *own;
        size_t nown;
        sl_parse_shares(v, sub, false, &own, &nown, ctx);
        if (r->limit > 0)
            sl_resolve_shares(r, own, nown, sub, ctx->errs);
        sl_shares_free(own, nown);
    } else if (u->napps > 0 && r->kind == SL_RULE_RATE && !r->leaky && r->limit > 0 &&
               r->cost_kind == SL_COST_FIXED && r->cost == 1 && r->settle == SL_SETTLE_NONE) {
        char usub[900];
        snprintf(usub, sizeof(usub), "%s (the upstream's \"apps\")", at);
        sl_resolve_shares(r, u->apps, u->napps, usub, ctx->errs);
    }
    /* Shares count calls: a weighted call has no place in them (the
     * upstream's apps then leave this rule alone). */
    if (r->nshares > 0 &&
        (r->cost_kind != SL_COST_FIXED || r->cost != 1 || r->settle != SL_SETTLE_NONE))
        sl_errors_add(ctx->errs, "%s: shares count calls; a rule with a \"cost\" "
                      "cannot have them (put the shares on a rule without a cost)",
                      sub);
}

static const struct sl_conf_handler sl_rule_apps_handler = {
    sl_read_rule_apps,
    "A rate rule's `apps` shares its limit between apps (see "
    "`upstreams[].rules[].apps.APP`); without it the rule takes the "
    "upstream's `apps`, and without either the limit is shared first come, "
    "first served.  Not for concurrency rules or leaky buckets (a bucket "
    "ignores the upstream's `apps`).",
};

static const struct sl_conf_key sl_login_cache_keys[] = {
    {.key = "max_entries", .type = SL_CONF_INT,
     SL_CONF_FIELD(struct sl_rule, login_cache_max), .min = 1, .max = 100000,
     .def = "1000",
     .doc = "Answers kept for this rule at most (one per set of credentials); "
            "the least recently used goes first."},
    {.key = "margin", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_rule, login_cache_margin_us), .min = SL_SECONDS(1),
     .max = SL_HOURS(24), .def = "60s", .flags = SL_CONF_ZERO_OK,
     .doc = "Taken off the answer's `expires_in`: an answer is served until "
            "then, so a cached token is never handed out in its last `margin`."},
};

static const struct sl_conf_table sl_login_cache_table = SL_CONF_TABLE(
    "upstreams[].rules[].login_cache",
    "`true` or an object: logins of this rule (a `POST` with a body of at most "
    "16 KiB and a `Content-Length`) that are identical to one already answered "
    "(same path, body, `Authorization` and `Content-Type`, compared by a keyed "
    "hash) get that answer from sluice while its token is valid, without a call "
    "to the provider and without counting against any rule.  Only a 2xx JSON "
    "answer with `access_token` and a numeric `expires_in` is kept (at most "
    "64 KiB), for `expires_in` minus `margin`; `authorization_code`, "
    "`refresh_token` and `device_code` grants are never cached.  Per process; "
    "off by default.  When it is safe: docs/guides/auth.md, \"Apps that log in "
    "themselves\".",
    sl_login_cache_keys);

static void sl_read_login_cache(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;

    (void)obj, (void)at, (void)k;
    sl_conf_defaults(&sl_login_cache_table, r);
    if (v == json_false())
        return;
    if (v != json_true() && !json_is_object(v)) {
        sl_errors_add(ctx->errs, "%s: must be true, false or an object: "
                      "{\"max_entries\": 1000, \"margin\": \"60s\"}", sub);
        return;
    }
    if (r->kind != SL_RULE_RATE) {
        /* A login is one call that is answered: it has a rate (the
         * provider's login budget), not a number in flight. */
        sl_errors_add(ctx->errs, "%s: a login cache belongs on the rate rule "
                      "(\"limit\" and \"window\") that matches the token "
                      "endpoint, not on a concurrency rule", sub);
        return;
    }
    if (json_is_object(v))
        sl_conf_read(&sl_login_cache_table, v, sub, r, ctx);
    r->login_cache = true;
}

static const struct sl_conf_handler sl_login_cache_handler = {sl_read_login_cache, NULL};

/* A cost of rule R: a whole number from 1 to the rule's limit. */
static int sl_get_cost(json_t *v, const char *sub, const struct sl_rule *r,
                       uint32_t *out, struct sl_errors *errs)
{
    long long most = r->kind == SL_RULE_RATE && r->limit > 0 && r->limit < UINT32_MAX
                         ? (long long)r->limit : UINT32_MAX;
    long long n;

    if (sl_conf_get_int(v, sub, 1, most, &n, errs) != 0)
        return -1;
    *out = (uint32_t)n;
    return 0;
}

static void sl_read_cost(json_t *obj, json_t *v, const char *at, const char *sub,
                         void *base, const struct sl_conf_key *k,
                         struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    char q[96], msub[800];
    const char *s, *m;
    json_t *jc;

    (void)obj, (void)at, (void)k;
    r->cost_kind = SL_COST_FIXED;
    r->cost = 1;
    if (v == NULL)
        return;
    if (json_is_string(v)) {
        s = json_string_value(v);
        if (strncasecmp(s, "header:", 7) == 0 && sl_is_token(s + 7)) {
            r->cost_kind = SL_COST_HEADER;
            r->cost_header = strdup(s + 7);
        } else {
            sl_errors_add(ctx->errs, "%s: %s must be a number of units, "
                          "\"header:NAME\" or an object of costs per method "
                          "({\"GET\": 1, \"POST\": 5, \"*\": 1})", sub,
                          sl_conf_quote(s, q, sizeof(q)));
        }
    } else if (json_is_object(v)) {
        r->cost_kind = SL_COST_METHOD;
        r->cost_methods = calloc(json_object_size(v), sizeof(*r->cost_methods));
        if (r->cost_methods == NULL)
            return;
        json_object_foreach(v, m, jc) {
            uint32_t c;
            /* The name is checked first: only a valid one is echoed raw. */
            if (strcmp(m, "*") != 0 && (!sl_is_token(m) || strlen(m) > 32)) {
                sl_errors_add(ctx->errs, "%s: %s is not a method name, nor \"*\"", sub,
                              sl_conf_quote(m, q, sizeof(q)));
                continue;
            }
            snprintf(msub, sizeof(msub), "%.700s.%s", sub, m);
            if (sl_get_cost(jc, msub, r, &c, ctx->errs) != 0)
                continue;
            if (strcmp(m, "*") == 0) {
                r->cost = c;
                continue;
            }
            struct sl_method_cost *mc = &r->cost_methods[r->ncost_methods++];
            mc->method = strdup(m);
            for (char *p = mc->method; p != NULL && *p; p++)
                *p = (char)toupper((unsigned char)*p);
            mc->cost = c;
        }
    } else {
        (void)sl_get_cost(v, sub, r, &r->cost, ctx->errs);
    }
}

static const struct sl_conf_handler sl_cost_handler = {
    sl_read_cost,
    "A call takes `cost` units from a rate rule (`cost` entries in its "
    "window) or a leaky bucket (`cost` calls' worth of level), and is admitted "
    "only when its whole cost fits in every rule it matches.  A number (1 by "
    "default, at most what the rule can ever admit: its `limit`, or a "
    "bucket's size less the margin's share, so a cost equal to the whole "
    "bucket is refused); `\"header:NAME\"`: the request says what it costs, "
    "a whole number from 1 to that most (a call without it, or with anything "
    "else, is answered 400 and "
    "never forwarded; the header is forwarded); or an object of costs per "
    "method, `\"*\"` for the others (1 when absent).  A concurrency rule "
    "counts calls in flight and ignores `cost` (--check warns).  Not with "
    "`apps` shares.",
};

static void sl_read_settle(json_t *obj, json_t *v, const char *at, const char *sub,
                           void *base, const struct sl_conf_key *k,
                           struct sl_conf_ctx *ctx)
{
    struct sl_rule *r = base;
    const char *s;
    char q[96];

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if (strcmp(s, "graphql-cost") == 0) {
        r->settle = SL_SETTLE_GRAPHQL;
    } else if (strncasecmp(s, "header:", 7) == 0 && sl_is_token(s + 7)) {
        r->settle = SL_SETTLE_HEADER;
        r->settle_header = strdup(s + 7);
    } else {
        sl_errors_add(ctx->errs, "%s: %s must be \"header:NAME\" or "
                      "\"graphql-cost\"", sub, sl_conf_quote(s, q, sizeof(q)));
        return;
    }
    if (r->kind != SL_RULE_RATE)
        sl_errors_add(ctx->errs, "%s: a concurrency rule counts calls in flight; "
                      "only a rate rule or a bucket settles a cost", sub);
}

static const struct sl_conf_handler sl_settle_handler = {
    sl_read_settle,
    "With `settle` the cost a call was admitted with (its `cost`) is an "
    "estimate, corrected once the response says what the call really cost: "
    "`\"header:NAME\"` reads a response header (a whole number), "
    "`\"graphql-cost\"` the provider's `extensions.cost.actualQueryCost` in "
    "a JSON body, read from the first 64 KiB of the body as it streams past "
    "(the body is never held back for it).  Lower, the difference is given "
    "back; higher, it is charged (even past the limit: the provider charged "
    "it); once per call, with Redis on every instance's count.  A response "
    "that says nothing, or says it unreadably, leaves the estimate.  Not "
    "with `apps` shares.",
};

static const char *const sl_on_limit_words[] = {"reject", "queue", NULL};

static const struct sl_conf_key sl_rule_keys[] = {
    {.key = "name", .type = SL_CONF_STRING, .handler = &sl_rule_name_handler,
     .flags = SL_CONF_ALWAYS | SL_CONF_PROSE, .def = "rule-INDEX",
     .doc = "The rule's name in refusals, headers, `/status`, `/metrics` and alerts."},
    {.key = "methods", .type = SL_CONF_ARRAY, .handler = &sl_methods_handler,
     .def = "every method", .flags = SL_CONF_PROSE,
     .doc = "HTTP methods the rule counts (any letter case), e.g. `[\"POST\"]`."},
    {.key = "path", .type = SL_CONF_STRING, .handler = &sl_path_handler,
     .def = "every path", .flags = SL_CONF_PROSE,
     .doc = "Pattern of request paths (after the prefix) the rule counts."},
    {.key = "limit", .type = SL_CONF_INT, .min = 1, .max = 100000000,
     .handler = &sl_rule_kind_handler, .flags = SL_CONF_ALWAYS,
     .doc = "Calls allowed in any `window` (with `window`; or `concurrency`)."},
    {.key = "window", .type = SL_CONF_DURATION, .min = SL_USEC_PER_MSEC,
     .max = SL_DAYS(366), .flags = SL_CONF_PART,
     .doc = "The rate window, a duration or `\"1mo\"` (a calendar month)."},
    {.key = "concurrency", .type = SL_CONF_INT, .min = 1, .max = 1000000000LL,
     .flags = SL_CONF_PART,
     .doc = "Instead of `limit` and `window`: calls in flight at once."},
    {.key = "bucket", .type = SL_CONF_INT, .min = 1, .max = 1000000,
     .flags = SL_CONF_PART,
     .doc = "Instead of `limit` and `window`: a leaky bucket of this many calls "
            "(with `leak`)."},
    {.key = "leak", .type = SL_CONF_STRING, .flags = SL_CONF_PART,
     .doc = "With `bucket`: how fast it drains, `\"2/s\"`, `\"40/m\"`, "
            "`\"0.5/s\"`, `\"3600/h\"`."},
    {.key = "reset", .type = SL_CONF_WORD,
     .words = (const char *const[]){"rolling", "calendar", NULL},
     .def = "rolling", .flags = SL_CONF_PART,
     .doc = "`\"calendar\"`: the window is a calendar period (see `limit`)."},
    {.key = "timezone", .type = SL_CONF_STRING, .def = "UTC", .flags = SL_CONF_PART,
     .doc = "With `\"reset\": \"calendar\"`: `\"UTC\"`, a fixed offset "
            "(`\"+02:00\"`, `\"-05:30\"`) or a zone name (`\"Europe/Berlin\"`)."},
    {.key = "on_limit", .type = SL_CONF_WORD, .words = sl_on_limit_words,
     SL_CONF_FIELD(struct sl_rule, on_limit), .def = "the upstream's",
     .flags = SL_CONF_PROSE | SL_CONF_SET,
     .set_offset = offsetof(struct sl_rule, on_limit_set),
     .doc = "Over this rule's limit: `reject` (429 at once) or `queue` (hold the call)."},
    {.key = "max_wait", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_rule, max_wait_us), .min = 0, .max = SL_HOURS(24),
     .def = "the upstream's", .flags = SL_CONF_PROSE | SL_CONF_SET,
     .set_offset = offsetof(struct sl_rule, max_wait_set),
     .doc = "Queue mode: the longest a call of this rule is held."},
    {.key = "mode", .type = SL_CONF_WORD,
     .words = (const char *const[]){"enforce", "shadow", NULL},
     SL_CONF_FIELD(struct sl_rule, shadow), .def = "enforce",
     .doc = "`shadow`: matched and counted, never denies, queues or delays a "
            "call (it reports what it would have denied)."},
    {.key = "sync", .type = SL_CONF_WORD, .words = sl_sync_words,
     .handler = &sl_sync_handler, .flags = SL_CONF_ALWAYS,
     .doc = "Follow the provider's own count, read from this response header."},
    {.key = "sync_probe", .type = SL_CONF_DURATION, .min = SL_SECONDS(1),
     .max = SL_DURATION_MAX, .def = "60s", .flags = SL_CONF_PART | SL_CONF_ZERO_OK,
     .doc = "With `sync`: while the provider says nothing is left, one call "
            "goes through this often (0: never)."},
    {.key = "per", .type = SL_CONF_STRING, .handler = &sl_per_handler,
     .doc = "A separate bucket for each value of `\"{capture}\"` (from `path`) or "
            "`\"header:NAME\"`."},
    {.key = "max_keys", .type = SL_CONF_INT, SL_CONF_FIELD(struct sl_rule, max_keys),
     .min = 1, .max = 100000000, .def = "10000", .handler = &sl_max_keys_handler,
     .doc = "With `per`: at most this many keys with calls in their window "
            "(memory store; one rule's keys never take another's room); a new key "
            "beyond it gets 503."},
    {.key = "cost", .type = SL_CONF_ANY, .handler = &sl_cost_handler,
     .def = "1", .flags = SL_CONF_ALWAYS,
     .doc = "Units one call takes: a number, `\"header:NAME\"`, or per method "
            "(`{\"GET\": 1, \"POST\": 5, \"*\": 1}`)."},
    {.key = "settle", .type = SL_CONF_STRING, .handler = &sl_settle_handler,
     .doc = "Correct the call's cost from its response: `\"header:NAME\"` or "
            "`\"graphql-cost\"`."},
    {.key = "apps", .type = SL_CONF_OBJECT, .handler = &sl_rule_apps_handler,
     .def = "the upstream's", .flags = SL_CONF_ALWAYS | SL_CONF_PROSE,
     .doc = "Rate rules: each app's share of the limit."},
    {.key = "login_cache", .type = SL_CONF_ANY, .handler = &sl_login_cache_handler,
     .def = "false",  .flags = SL_CONF_PROSE,
     .doc = "Rate rules matching a token endpoint: answer identical logins from "
            "a cache while the token is valid (see "
            "`upstreams[].rules[].login_cache`)."},
};

static const struct sl_conf_table sl_rule_table = SL_CONF_TABLE(
    "upstreams[].rules[]",
    "A rule of an upstream: the calls it counts (`methods`, `path`) and their "
    "limit.  A call is checked against every rule it matches in one atomic "
    "step, and a call that is refused, queued or cancelled consumes nothing "
    "from any rule.",
    sl_rule_keys);

/* A cost of COST written at AT.WHAT, above MOST (what rule R can ever
 * admit): an error saying so. */
static void sl_cost_over(const struct sl_rule *r, const char *at, const char *what,
                         uint32_t cost, uint64_t most, struct sl_errors *errs)
{
    if (cost > most)
        sl_errors_add(errs, "%s.%s: %u is more than the rule can ever admit (%llu%s): "
                      "lower it%s", at, what, cost, (unsigned long long)most,
                      r->leaky ? ", the bucket less what the upstream's margin takes" : "",
                      r->leaky ? ", or the margin" : "");
}

/*
 * The most one call of rule R can cost and still ever be admitted
 * (r->cost_max), and no cost written above it: a call costing more would
 * wait forever.  A bucket admits a call when its level plus the cost fits
 * the capacity less what the margin takes (bucket_cap), so a cost equal to
 * the bucket never fits.  Once every key of the rule is read.
 */
static void sl_rule_cost_bound(struct sl_rule *r, const char *at, struct sl_errors *errs)
{
    uint64_t most = r->limit;
    char what[96];

    if (r->kind != SL_RULE_RATE) {
        r->cost_max = 1;
        return;
    }
    if (r->leaky && r->leak.per_us > 0)
        most = (uint64_t)(r->bucket_cap / r->leak.per_us);
    if (most > UINT32_MAX)
        most = UINT32_MAX;
    r->cost_max = (uint32_t)most;
    if (most == 0)
        return;  /* reported with the bucket */
    if (r->cost_kind != SL_COST_HEADER)
        sl_cost_over(r, at, "cost", r->cost, most, errs);
    for (size_t i = 0; i < r->ncost_methods; i++) {
        snprintf(what, sizeof(what), "cost.%.80s", r->cost_methods[i].method);
        sl_cost_over(r, at, what, r->cost_methods[i].cost, most, errs);
    }
}

/* Parse rule JR of upstream ctx->u (whose margin and defaults are known). */
static void sl_parse_rule(json_t *jr, const char *path, struct sl_rule *r,
                          struct sl_conf_ctx *ctx)
{
    r->per_capture = -1;
    r->on_limit = ctx->u->on_limit;
    r->max_wait_us = ctx->u->max_wait_us;
    if (!json_is_object(jr)) {
        sl_errors_add(ctx->errs, "%s: a rule must be an object", path);
        return;
    }
    sl_conf_read(&sl_rule_table, jr, path, r, ctx);
    sl_rule_cost_bound(r, path, ctx->errs);
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
                                  "literal \"{\")", sub, sl_conf_quote(word, q, sizeof(q)));
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
                          "JSON", sub, sl_conf_escape(jerr.text, sizeof(jerr.text), false,
                                                 etext, sizeof(etext)),
                          jerr.position);
        json_decref(j);
    }
    free(filled);
}

static void sl_read_content_type(json_t *obj, json_t *v, const char *at,
                                 const char *sub, void *base,
                                 const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    const char *s;
    char q[96];

    (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) == 0) {
        if (!sl_valid_media_type(s))
            sl_errors_add(ctx->errs, "%s: %s is not a media type (\"type/subtype\", "
                          "e.g. \"application/json\" or \"text/plain; "
                          "charset=utf-8\")", sub, sl_conf_quote(s, q, sizeof(q)));
        else
            u->reject_content_type = strdup(s);
    }
    if (json_object_get(obj, "body") == NULL)
        sl_errors_add(ctx->errs, "%s: applies only with \"body\" (sluice's own "
                      "body is JSON)", sub);
}

static const struct sl_conf_handler sl_content_type_handler = {
    sl_read_content_type, NULL,
};

static void sl_read_reject_body(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    const char *s;
    /* JSON unless a valid content type says otherwise (an invalid one has
     * its own error: the body is not checked as JSON then). */
    bool json_body = json_object_get(obj, "content_type") == NULL ||
                     (u->reject_content_type != NULL &&
                      sl_media_is_json(u->reject_content_type));

    (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) == 0) {
        size_t before = ctx->errs->count;
        sl_check_reject_body(s, sub, json_body, ctx->errs);
        if (ctx->errs->count == before)
            u->reject_body = strdup(s);
    }
}

static const struct sl_conf_handler sl_reject_body_handler = {
    sl_read_reject_body,
    "The body of sluice's own over-limit answer is a template: `{upstream}`, "
    "`{rule}`, `{limit}`, `{window}`, `{retry_after}`, `{message}`, `{app}` "
    "and `{share}` are replaced (JSON-escaped), `{{` and `}}` are literal "
    "braces, and any other `{word}` is refused.  At most 8 KiB.  With a JSON "
    "`content_type` (the default) the body must be JSON once its "
    "placeholders are filled in.",
};

static const struct sl_conf_key sl_reject_keys[] = {
    {.key = "status", .type = SL_CONF_INT,
     SL_CONF_FIELD(struct sl_upstream_conf, reject_status), .min = 400, .max = 599,
     .def = "429", .doc = "The status of sluice's answer to an over-limit call."},
    {.key = "content_type", .type = SL_CONF_STRING,
     .handler = &sl_content_type_handler, .def = "application/json",
     .flags = SL_CONF_PROSE,
     .doc = "The media type of `body` (only with `body`)."},
    {.key = "body", .type = SL_CONF_STRING, .handler = &sl_reject_body_handler,
     .def = "sluice's JSON", .flags = SL_CONF_PROSE,
     .doc = "The body of the answer, a template."},
};

static const struct sl_conf_table sl_reject_table = SL_CONF_TABLE(
    "upstreams[].reject",
    "What a call over a limit gets from sluice (by default 429 with a JSON "
    "body naming the rule, and an honest `Retry-After`).",
    sl_reject_keys);

static void sl_read_reject(json_t *obj, json_t *v, const char *at,
                           const char *sub, void *base,
                           const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    (void)obj, (void)at, (void)k;
    if (!json_is_object(v)) {
        sl_errors_add(ctx->errs, "%s: must be an object: {\"status\": 429, \"body\": "
                      "\"...\", \"content_type\": \"application/json\"}", sub);
        return;
    }
    sl_conf_read(&sl_reject_table, v, sub, base, ctx);
}

static const struct sl_conf_handler sl_reject_handler = {sl_read_reject, NULL};

static void sl_read_body_contains(json_t *obj, json_t *v, const char *at,
                                  const char *sub, void *base,
                                  const struct sl_conf_key *k,
                                  struct sl_conf_ctx *ctx)
{
    struct sl_limit_signal *sg = base;
    const char *s;

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if (*s == '\0' || strlen(s) > 1024)
        sl_errors_add(ctx->errs, "%s: must be 1 to 1024 characters", sub);
    else
        sg->body_contains = strdup(s);
}

static const struct sl_conf_handler sl_body_contains_handler = {
    sl_read_body_contains, NULL,
};

static const struct sl_conf_key sl_signal_keys[] = {
    {.key = "status", .type = SL_CONF_INT,
     SL_CONF_FIELD(struct sl_limit_signal, status), .min = 100, .max = 599,
     .flags = SL_CONF_REQUIRED, .doc = "The response status that signals the limit."},
    {.key = "body_contains", .type = SL_CONF_STRING,
     .handler = &sl_body_contains_handler,
     .doc = "... only when the body holds this text (1 to 1024 characters, "
            "searched in the first 64 KiB), e.g. `\"REQUEST_LIMIT_EXCEEDED\"`."},
    {.key = "pause", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_limit_signal, pause_us), .min = 0, .max = SL_DAYS(7),
     .def = "the upstream's default_pause", .flags = SL_CONF_PROSE,
     .doc = "How long the upstream pauses when no `Retry-After` comes with it."},
};

static const struct sl_conf_table sl_signal_table = SL_CONF_TABLE(
    "upstreams[].limit_signals[]",
    "A response that means \"over the limit\" although it is not a 429 (a "
    "403 with `REQUEST_LIMIT_EXCEEDED`, say): every instance pauses the "
    "upstream, as for a 429.",
    sl_signal_keys);

static void sl_read_signals(json_t *obj, json_t *v, const char *at,
                            const char *sub, void *base,
                            const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    size_t i;
    json_t *js;

    (void)obj, (void)at, (void)k;
    if (!json_is_array(v) || json_array_size(v) > 16) {
        sl_errors_add(ctx->errs, "%s: must be an array of at most 16 signals", sub);
        return;
    }
    if (json_array_size(v) == 0)
        return;
    u->signals = calloc(json_array_size(v), sizeof(*u->signals));
    json_array_foreach(v, i, js) {
        char ssub[900];
        snprintf(ssub, sizeof(ssub), "%.200s[%zu]", sub, i);
        if (!json_is_object(js) || u->signals == NULL) {
            sl_errors_add(ctx->errs, "%s: a signal must be an object", ssub);
            continue;
        }
        struct sl_limit_signal *sg = &u->signals[u->nsignals++];
        sg->pause_us = -1;
        sl_conf_read(&sl_signal_table, js, ssub, sg, ctx);
    }
}

static const struct sl_conf_handler sl_signals_handler = {sl_read_signals, NULL};

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

static void sl_read_upstream_name(json_t *obj, json_t *v, const char *at,
                                  const char *sub, void *base,
                                  const struct sl_conf_key *k,
                                  struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    const char *s;
    char q[96];
    bool ok;

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    ok = *s != '\0' && strlen(s) <= 64;
    for (const char *c = s; *c; c++)
        if (!sl_is_alnum((unsigned char)*c) && !strchr("-_.", *c))
            ok = false;
    if (!ok)
        sl_errors_add(ctx->errs, "%s: %s must be 1 to 64 letters, digits, "
                      "'-', '_' or '.'", sub, sl_conf_quote(s, q, sizeof(q)));
    else
        u->name = strdup(s);
}

static const struct sl_conf_handler sl_upstream_name_handler = {
    sl_read_upstream_name, NULL,
};

static void sl_read_prefix(json_t *obj, json_t *v, const char *at, const char *sub,
                           void *base, const struct sl_conf_key *k,
                           struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    const char *s, *flaw;
    char q[96], why[320];

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if ((flaw = sl_prefix_flaw(s, why, sizeof(why))) != NULL) {
        sl_errors_add(ctx->errs, "%s: %s %s", sub, sl_conf_quote(s, q, sizeof(q)),
                      flaw);
        return;
    }
    u->prefix = strdup(s);
    u->prefix_len = strlen(s);
}

static const struct sl_conf_handler sl_prefix_handler = {
    sl_read_prefix,
    "An upstream's `prefix` is matched at a `/` boundary (`/leads` takes "
    "`/leads` and `/leads/...`, not `/leadsx`) and removed before the call "
    "is forwarded to `url` and before its rules match; `\"/\"` routes every "
    "call.  It is plain path characters (no `*`, escapes, `;`, `?`, `#`, "
    "spaces, empty or dot segments), starts with `/` and does not end with "
    "one.  Prefixes are unique.",
};

static void sl_read_url(json_t *obj, json_t *v, const char *at, const char *sub,
                        void *base, const struct sl_conf_key *k,
                        struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    const char *s, *flaw;
    char q[96], why[320];
    size_t len = 0;

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if ((flaw = sl_url_flaw(s, why, sizeof(why), &len)) != NULL)
        sl_errors_add(ctx->errs, "%s: %s %s", sub, sl_conf_quote(s, q, sizeof(q)),
                      flaw);
    else
        u->url = strndup(s, len);
}

static const struct sl_conf_handler sl_url_handler = {
    sl_read_url,
    "An upstream's `url` is an `http://` or `https://` URL with a plain host "
    "(a host name, an IPv4 address or a bracketed IPv6 literal), an optional "
    "port and an optional base path of plain characters; no credentials, "
    "query or fragment.  A call to `PREFIX/REST` goes to `URL/REST`.  Only "
    "configured upstreams are reachable.",
};

static void sl_read_ca_file(json_t *obj, json_t *v, const char *at,
                            const char *sub, void *base,
                            const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    const char *s, *flaw;
    char q[96], why[256];

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    flaw = sl_ca_file_flaw(s, why, sizeof(why));
    if (flaw != NULL)
        sl_errors_add(ctx->errs, "%s: %s %s", sub, sl_conf_quote(s, q, sizeof(q)),
                      flaw);
    else
        u->ca_file = strdup(s);
}

static const struct sl_conf_handler sl_ca_file_handler = {sl_read_ca_file, NULL};

static void sl_read_upstream_app(json_t *obj, json_t *v, const char *at,
                                 const char *sub, void *base,
                                 const struct sl_conf_key *k,
                                 struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;

    (void)obj, (void)at, (void)k;
    sl_parse_app(v, sub, &u->app_kind, &u->app_header, ctx->errs);
}

/* The prose of "app", wherever it is set. */
#define SL_APP_DOC                                                             \
    "`app` says which app a call comes from, for shares, priorities, "         \
    "`/status` and `/metrics`: `\"header:NAME\"` the value of a request "      \
    "header (e.g. `\"header:X-App\"`), `\"client_ip\"` the peer address, "     \
    "`\"none\"` every call is app `-`.  An upstream's own `app` overrides the " \
    "top level's.  At most `max_apps` distinct names are tracked; the rest "   \
    "count as `other`.  The header is removed from the forwarded call unless " \
    "`forward_app_header` is true."

static const struct sl_conf_handler sl_upstream_app_handler = {
    sl_read_upstream_app, SL_APP_DOC,
};

static void sl_read_upstream_apps(json_t *obj, json_t *v, const char *at,
                                  const char *sub, void *base,
                                  const struct sl_conf_key *k,
                                  struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;

    (void)obj, (void)at, (void)k;
    sl_parse_shares(v, sub, true, &u->apps, &u->napps, ctx);
}

static const struct sl_conf_handler sl_upstream_apps_handler = {
    sl_read_upstream_apps, NULL,
};

static void sl_read_priority(json_t *obj, json_t *v, const char *at,
                             const char *sub, void *base,
                             const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    const char *s;
    char q[96];

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if (strncasecmp(s, "header:", 7) == 0 && sl_is_token(s + 7) && strlen(s + 7) <= 64)
        u->priority_header = strdup(s + 7);
    else
        sl_errors_add(ctx->errs, "%s: %s must be \"header:NAME\" (a header "
                      "whose value is a level from 0 to %d; the apps' "
                      "own priorities are set in \"apps\")", sub,
                      sl_conf_quote(s, q, sizeof(q)), SL_PRIORITY_LEVELS - 1);
}

static const struct sl_conf_handler sl_priority_handler = {
    sl_read_priority,
    "Held calls leave the queue by priority, 0 (lowest) to 9, then in "
    "arrival order.  An app's priority is set in the upstream's `apps`; "
    "`\"priority\": \"header:NAME\"` lets a call carry its own level in that "
    "header instead.  With `priority_aging` a held call goes up one level "
    "each time that much has passed, so low priorities are never starved.",
};

static void sl_read_rules(json_t *obj, json_t *v, const char *at, const char *sub,
                          void *base, const struct sl_conf_key *k,
                          struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    struct sl_errors *errs = ctx->errs;
    size_t i;
    json_t *jr, *names;
    char q[96];

    (void)obj, (void)at, (void)k;
    if (!json_is_array(v)) {
        sl_errors_add(errs, "%s: must be an array of rules", sub);
        return;
    }
    if (json_array_size(v) > 64) {
        sl_errors_add(errs, "%s: at most 64 rules per upstream", sub);
        return;
    }
    if (json_array_size(v) == 0)
        return;
    names = json_object();
    u->rules = calloc(json_array_size(v), sizeof(*u->rules));
    if (u->rules == NULL || names == NULL) {
        sl_errors_add(errs, "%s: out of memory", sub);
        json_decref(names);
        return;
    }
    u->nrules = json_array_size(v);
    ctx->u = u;
    json_array_foreach(v, i, jr) {
        char rsub[160];
        struct sl_rule *r = &u->rules[i];
        json_t *prev;
        snprintf(rsub, sizeof(rsub), "%.120s[%zu]", sub, i);
        r->index = i;
        sl_parse_rule(jr, rsub, r, ctx);
        if (r->name == NULL)
            continue;
        if ((prev = json_object_get(names, r->name)) != NULL)
            sl_errors_add(errs, "%s.name: %s is already the name "
                          "of rules[%lld]", rsub, sl_conf_quote(r->name, q, sizeof(q)),
                          (long long)json_integer_value(prev));
        else
            json_object_set_new(names, r->name, json_integer((json_int_t)i));
    }
    json_decref(names);
}

static const struct sl_conf_handler sl_rules_handler = {sl_read_rules, NULL};

/* ---- the token broker ("auth") ---- */

static const char *const sl_grant_words[] = {
    "client_credentials", "refresh_token", "password", "jwt_bearer", NULL,
};

/* Longest secret read from a file (a PEM key is a few KiB). */
#define SL_SECRET_FILE_MAX (64 * 1024)

/*
 * A secret as written: "env:NAME" (the variable's value), "file:PATH" (the
 * file's contents, one trailing newline dropped) or the literal.  Errors
 * name the variable or the file, never the value.  Returns an owned
 * string, or NULL with an error added.
 */
static char *sl_read_secret_text(const char *s, const char *path, struct sl_errors *errs)
{
    char q[96];

    if (strncmp(s, "env:", 4) == 0) {
        const char *v = getenv(s + 4);
        if (s[4] == '\0' || v == NULL || v[0] == '\0') {
            sl_errors_add(errs, "%s: the environment variable %s is not set", path,
                          sl_conf_quote(s + 4, q, sizeof(q)));
            return NULL;
        }
        return strdup(v);
    }
    if (strncmp(s, "file:", 5) == 0) {
        FILE *f = fopen(s + 5, "r");
        char *buf;
        size_t n;

        if (f == NULL) {
            sl_errors_add(errs, "%s: cannot read %s: %s", path,
                          sl_conf_quote(s + 5, q, sizeof(q)), strerror(errno));
            return NULL;
        }
        buf = malloc(SL_SECRET_FILE_MAX + 1);
        if (buf == NULL) {
            fclose(f);
            sl_errors_add(errs, "%s: out of memory", path);
            return NULL;
        }
        n = fread(buf, 1, SL_SECRET_FILE_MAX + 1, f);
        fclose(f);
        if (n > SL_SECRET_FILE_MAX || n == 0) {
            sl_errors_add(errs, "%s: %s is %s", path, sl_conf_quote(s + 5, q, sizeof(q)),
                          n == 0 ? "empty" : "larger than 64 KiB");
            free(buf);
            return NULL;
        }
        if (buf[n - 1] == '\n')
            n--;
        if (n > 0 && buf[n - 1] == '\r')
            n--;
        buf[n] = '\0';
        return buf;
    }
    return strdup(s);
}

static void sl_read_auth_secret(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    const char *s;

    (void)obj, (void)at;
    if (!json_is_string(v)) {
        sl_errors_add(ctx->errs, "%s: must be a string: \"env:NAME\", "
                      "\"file:PATH\" or the value itself", sub);
        return;
    }
    s = json_string_value(v);
    *(char **)((char *)base + k->offset) = sl_read_secret_text(s, sub, ctx->errs);
}

static const struct sl_conf_handler sl_auth_secret_handler = {
    sl_read_auth_secret,
    "A secret is written `\"env:NAME\"` (read from the environment at start "
    "and reload), `\"file:PATH\"` (the file's contents, a trailing newline "
    "dropped) or as the value itself.  No secret and no token is ever "
    "written to the log, `/status`, `/metrics`, the page, alerts, error "
    "bodies or the state file.",
};

static void sl_read_auth_key(json_t *obj, json_t *v, const char *at,
                             const char *sub, void *base,
                             const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_auth_conf *a = base;
    const char *s;
    char *pem, q[96];

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if (strncmp(s, "file:", 5) == 0)
        s += 5;
    if (asprintf(&pem, "file:%s", s) < 0)
        return;
    a->jwt_key = sl_read_secret_text(pem, sub, ctx->errs);
    free(pem);
    if (a->jwt_key != NULL && (strstr(a->jwt_key, "-----BEGIN") == NULL ||
                               strstr(a->jwt_key, "PRIVATE KEY-----") == NULL)) {
        sl_errors_add(ctx->errs, "%s: %s holds no PEM private key (-----BEGIN "
                      "PRIVATE KEY-----)", sub, sl_conf_quote(s, q, sizeof(q)));
        free(a->jwt_key);
        a->jwt_key = NULL;
    }
    a->jwt_key_file = strdup(s);
}

static const struct sl_conf_handler sl_auth_key_handler = {sl_read_auth_key, NULL};

/* PBKDF2 rounds that stretch a token_key passphrase (about 0.1 s once, at
 * load: a reader of Redis who guesses passphrases pays it per guess). */
#define SL_TOKEN_KEY_ROUNDS 200000
#define SL_TOKEN_KEY_MIN_PASSPHRASE 16

static int sl_hex_digit(int c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
           : -1;
}

/* "token_key": 64 hex digits or the base64 of 32 bytes (`openssl rand
 * -hex 32`, `-base64 32`) are the key; anything else is a passphrase of at
 * least 16 characters, stretched with PBKDF2-HMAC-SHA256. */
static void sl_read_token_key(json_t *obj, json_t *v, const char *at,
                              const char *sub, void *base,
                              const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_auth_conf *a = base;
    static const char salt[] = "sluice auth token_key";
    unsigned char dec[48];
    char *text;
    size_t n;
    bool hex = true;

    (void)obj, (void)at, (void)k;
    if (!json_is_string(v)) {
        sl_errors_add(ctx->errs, "%s: must be a string: \"env:NAME\", "
                      "\"file:PATH\" or the value itself", sub);
        return;
    }
    text = sl_read_secret_text(json_string_value(v), sub, ctx->errs);
    if (text == NULL)
        return;
    n = strlen(text);
    for (size_t i = 0; i < n && hex; i++)
        hex = sl_hex_digit((unsigned char)text[i]) >= 0;
    if (n == 64 && hex) {
        for (size_t i = 0; i < 32; i++)
            a->token_key[i] = (unsigned char)(sl_hex_digit((unsigned char)text[2 * i]) * 16 +
                                              sl_hex_digit((unsigned char)text[2 * i + 1]));
        a->has_token_key = true;
    } else if (n == 44 && text[43] == '=' && text[42] != '=' &&
               EVP_DecodeBlock(dec, (unsigned char *)text, 44) == 33) {
        /* 44 characters, one '=': 33 bytes decoded, the last is padding. */
        memcpy(a->token_key, dec, 32);
        a->has_token_key = true;
    } else if (n >= SL_TOKEN_KEY_MIN_PASSPHRASE) {
        a->has_token_key =
            PKCS5_PBKDF2_HMAC(text, (int)n, (const unsigned char *)salt,
                              (int)sizeof(salt) - 1, SL_TOKEN_KEY_ROUNDS, EVP_sha256(),
                              32, a->token_key) == 1;
        if (!a->has_token_key)
            sl_errors_add(ctx->errs, "%s: the passphrase could not be stretched "
                          "(OpenSSL)", sub);
    } else {
        sl_errors_add(ctx->errs, "%s: must be 64 hex digits, the base64 of 32 bytes, "
                      "or a passphrase of at least %d characters (the value is not "
                      "shown)", sub, SL_TOKEN_KEY_MIN_PASSPHRASE);
    }
    memset(dec, 0, sizeof(dec));
    memset(text, 0, n);
    free(text);
}

static const struct sl_conf_handler sl_token_key_handler = {sl_read_token_key, NULL};

static void sl_read_auth_url(json_t *obj, json_t *v, const char *at,
                             const char *sub, void *base,
                             const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_auth_conf *a = base;
    const char *s;
    char q[96];

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if ((strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0) ||
        strpbrk(s, " \t\r\n") != NULL || strchr(s, '@') != NULL) {
        sl_errors_add(ctx->errs, "%s: %s must be an http:// or https:// URL "
                      "without spaces or user information", sub,
                      sl_conf_quote(s, q, sizeof(q)));
        return;
    }
    a->token_url = strdup(s);
}

static const struct sl_conf_handler sl_auth_url_handler = {sl_read_auth_url, NULL};

static void sl_read_auth_params(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_auth_conf *a = base;
    const char *name;
    json_t *jv;

    (void)obj, (void)at, (void)k;
    if (!json_is_object(v)) {
        sl_errors_add(ctx->errs, "%s: must be an object of form fields: "
                      "{\"resource\": \"https://...\"}", sub);
        return;
    }
    a->params = calloc(json_object_size(v) + 1, sizeof(*a->params));
    if (a->params == NULL)
        return;
    json_object_foreach(v, name, jv) {
        char q[96];
        if (!json_is_string(jv)) {
            sl_errors_add(ctx->errs, "%s.%s: must be a string", sub,
                          sl_conf_escape(name, SL_QUOTE_MAX, false, q, sizeof(q)));
            continue;
        }
        a->params[a->nparams].name = strdup(name);
        a->params[a->nparams].value = strdup(json_string_value(jv));
        a->nparams++;
    }
}

static const struct sl_conf_handler sl_auth_params_handler = {sl_read_auth_params, NULL};

static const struct sl_conf_key sl_auth_keys[] = {
    {.key = "token_url", .type = SL_CONF_STRING, .handler = &sl_auth_url_handler,
     .flags = SL_CONF_REQUIRED,
     .doc = "The provider's token endpoint (`http://` or `https://`); the "
            "upstream's `tls_verify` and `ca_file` apply to it."},
    {.key = "grant", .type = SL_CONF_WORD, .words = sl_grant_words,
     SL_CONF_FIELD(struct sl_auth_conf, grant), .def = "client_credentials",
     .doc = "`client_credentials`, `refresh_token`, `password`, or "
            "`jwt_bearer` (RFC 7523: a JWT signed with `jwt_key_file`, RS256)."},
    {.key = "client_id", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_auth_conf, client_id),
     .doc = "Sent as `client_id` (for `jwt_bearer`, the JWT's issuer by default)."},
    {.key = "client_secret", .type = SL_CONF_STRING,
     .offset = offsetof(struct sl_auth_conf, client_secret),
     .handler = &sl_auth_secret_handler, .doc = "Sent as `client_secret`; a secret."},
    {.key = "scope", .type = SL_CONF_STRING, SL_CONF_FIELD(struct sl_auth_conf, scope),
     .doc = "Sent as `scope`."},
    {.key = "audience", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_auth_conf, audience), .doc = "Sent as `audience`."},
    {.key = "params", .type = SL_CONF_OBJECT, .handler = &sl_auth_params_handler,
     .doc = "Other form fields sent with every login, by name."},
    {.key = "refresh_token", .type = SL_CONF_STRING,
     .offset = offsetof(struct sl_auth_conf, refresh_token),
     .handler = &sl_auth_secret_handler,
     .doc = "`refresh_token` grant: the refresh token; a secret.  A new one "
            "in the answer replaces it until the next start."},
    {.key = "username", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_auth_conf, username), .doc = "`password` grant."},
    {.key = "password", .type = SL_CONF_STRING,
     .offset = offsetof(struct sl_auth_conf, password),
     .handler = &sl_auth_secret_handler, .doc = "`password` grant; a secret."},
    {.key = "jwt_key_file", .type = SL_CONF_STRING, .handler = &sl_auth_key_handler,
     .doc = "`jwt_bearer`: the PEM file of the RSA private key that signs the JWT."},
    {.key = "jwt_issuer", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_auth_conf, jwt_issuer), .def = "client_id",
     .flags = SL_CONF_PROSE, .doc = "`jwt_bearer`: the JWT's `iss`."},
    {.key = "jwt_subject", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_auth_conf, jwt_subject),
     .doc = "`jwt_bearer`: the JWT's `sub` (the integration user)."},
    {.key = "jwt_audience", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_auth_conf, jwt_audience), .def = "token_url",
     .flags = SL_CONF_PROSE, .doc = "`jwt_bearer`: the JWT's `aud`."},
    {.key = "refresh_before", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_auth_conf, refresh_before_us), .min = 0,
     .max = SL_HOURS(24), .def = "60s", .flags = SL_CONF_ZERO_OK,
     .doc = "Renew the token this long before it expires (at most half its "
            "life before)."},
    {.key = "lifetime", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_auth_conf, lifetime_us), .min = SL_SECONDS(1),
     .max = SL_DAYS(30), .def = "1h",
     .doc = "A token's life when the answer has no `expires_in`."},
    {.key = "timeout", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_auth_conf, timeout_us), .min = 100 * SL_USEC_PER_MSEC,
     .max = SL_MINUTES(5), .def = "10s",
     .doc = "One login exchange, at most; past it the login failed."},
    {.key = "rule", .type = SL_CONF_STRING, SL_CONF_FIELD(struct sl_auth_conf, rule_name),
     .doc = "The name of a rate rule of this upstream that sluice's own logins "
            "count against: it never logs in past it."},
    {.key = "reauth_on", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_auth_conf, reauth_on),
     .doc = "Text in a response body (status 401 or 403) that also means the "
            "token is no longer good, e.g. `\"INVALID_SESSION_ID\"`."},
    {.key = "token_key", .type = SL_CONF_STRING, .handler = &sl_token_key_handler,
     .def = "derived from the login's secret", .flags = SL_CONF_PROSE,
     .doc = "With Redis: the key the fleet's token is sealed with (AES-256-GCM), "
            "a secret (`\"env:NAME\"`, `\"file:PATH\"`): 64 hex digits or the "
            "base64 of 32 bytes (`openssl rand -hex 32`), or a passphrase of at "
            "least 16 characters (PBKDF2-HMAC-SHA256).  A token sealed under "
            "another key is treated as absent: rotating it makes one login "
            "under the lease."},
};

static const struct sl_conf_table sl_auth_table = SL_CONF_TABLE(
    "upstreams[].auth",
    "sluice logs in to the provider itself (once for the fleet with Redis, once per process with the memory store), injects "
    "`Authorization: Bearer TOKEN` into every forwarded call of the upstream "
    "(replacing what the app sent), renews the token before it expires, and "
    "on a 401 with the current token logs in again once and sends the call "
    "again once (idempotent methods, bodies up to 64 KiB).  An "
    "`instance_url` in the token answer sends the calls there.  Calls wait "
    "for a token up to the upstream's `max_wait`; a failed login answers "
    "them 502 or 503 saying why.  See docs/guides/auth.md.",
    sl_auth_keys);

static void sl_read_auth(json_t *obj, json_t *v, const char *at,
                         const char *sub, void *base,
                         const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    struct sl_auth_conf *a;

    (void)obj, (void)at, (void)k;
    if (!json_is_object(v)) {
        sl_errors_add(ctx->errs, "%s: must be an object: {\"token_url\": "
                      "\"https://...\", \"grant\": \"client_credentials\", ...}", sub);
        return;
    }
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return;
    u->auth = a;
    sl_conf_read(&sl_auth_table, v, sub, a, ctx);
    switch (a->grant) {
    case SL_GRANT_CLIENT_CREDENTIALS:
        if (a->client_id == NULL)
            sl_errors_add(ctx->errs, "%s: grant \"client_credentials\" needs "
                          "client_id", sub);
        break;
    case SL_GRANT_REFRESH_TOKEN:
        if (a->refresh_token == NULL && json_object_get(v, "refresh_token") == NULL)
            sl_errors_add(ctx->errs, "%s: grant \"refresh_token\" needs "
                          "refresh_token", sub);
        break;
    case SL_GRANT_PASSWORD:
        if ((a->username == NULL || json_object_get(v, "password") == NULL))
            sl_errors_add(ctx->errs, "%s: grant \"password\" needs username and "
                          "password", sub);
        break;
    case SL_GRANT_JWT_BEARER:
        if (json_object_get(v, "jwt_key_file") == NULL ||
            (a->jwt_issuer == NULL && a->client_id == NULL) || a->jwt_subject == NULL)
            sl_errors_add(ctx->errs, "%s: grant \"jwt_bearer\" needs jwt_key_file, "
                          "jwt_subject, and jwt_issuer or client_id", sub);
        break;
    }
}

static const struct sl_conf_handler sl_auth_handler = {sl_read_auth, NULL};

/* "auth.rule" names a rate rule of its upstream (read after the rules). */
static void sl_resolve_auth_rule(struct sl_upstream_conf *u, const char *path,
                                 struct sl_errors *errs)
{
    struct sl_auth_conf *a = u->auth;
    char q[96];

    if (a == NULL || a->rule_name == NULL)
        return;
    a->rule = sl_upstream_rule_named(u, a->rule_name, strlen(a->rule_name));
    if (a->rule == NULL || a->rule->kind != SL_RULE_RATE) {
        sl_errors_add(errs, "%s.auth.rule: %s is not a rate rule of this upstream",
                      path, sl_conf_quote(a->rule_name, q, sizeof(q)));
        a->rule = NULL;
    }
}

static void sl_auth_free(struct sl_auth_conf *a)
{
    if (a == NULL)
        return;
    free(a->token_url);
    free(a->client_id);
    free(a->client_secret);
    free(a->scope);
    free(a->audience);
    free(a->refresh_token);
    free(a->username);
    free(a->password);
    free(a->jwt_key);
    free(a->jwt_key_file);
    free(a->jwt_issuer);
    free(a->jwt_subject);
    free(a->jwt_audience);
    for (size_t i = 0; i < a->nparams; i++) {
        free(a->params[i].name);
        free(a->params[i].value);
    }
    free(a->params);
    free(a->rule_name);
    free(a->reauth_on);
    memset(a->token_key, 0, sizeof(a->token_key));
    free(a);
}

/* "preset" and "preset_params" were applied before the upstream was read
 * (sl_preset_expand); here the name is only kept for the operator. */
static void sl_read_preset(json_t *obj, json_t *v, const char *at, const char *sub,
                           void *base, const struct sl_conf_key *k,
                           struct sl_conf_ctx *ctx)
{
    struct sl_upstream_conf *u = base;
    const char *s;

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) == 0)
        u->preset = strdup(s);
}

static const struct sl_conf_handler sl_preset_handler = {
    sl_read_preset,
    "`preset` fills in a provider's published limits from `presets/NAME.json` "
    "(see presets/README.md for the presets and their figures): the "
    "preset's rules, `limit_signals`, `sync` and pause settings, with its "
    "`$NAME` placeholders taken from `preset_params`, from the row of its "
    "`choose` table a parameter selects, or from a parameter's default.  "
    "Unknown parameters, values outside a parameter's list or type, and "
    "missing required ones are errors.  Everything stays overridable: a key "
    "written on the upstream replaces the preset's (`null` removes it); in "
    "`rules`, a rule whose `name` is one of the preset's is merged into it key "
    "by key (`{\"name\": \"daily\", \"limit\": 500}` changes that figure "
    "only; `null` removes a key) and other rules are added.  `sluice "
    "--print-preset NAME --preset-param KEY=VALUE` prints the expansion; "
    "`sluice --check` lists what each preset added and what was overridden.",
};

static void sl_read_preset_params(json_t *obj, json_t *v, const char *at,
                                  const char *sub, void *base,
                                  const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    (void)obj, (void)v, (void)at, (void)sub, (void)base, (void)k, (void)ctx;
}

static const struct sl_conf_handler sl_preset_params_handler = {
    sl_read_preset_params, NULL,
};

static const struct sl_conf_key sl_upstream_keys[] = {
    {.key = "name", .type = SL_CONF_STRING, .handler = &sl_upstream_name_handler,
     .flags = SL_CONF_REQUIRED,
     .doc = "1 to 64 letters, digits, `-`, `_` or `.`; unique."},
    {.key = "prefix", .type = SL_CONF_STRING, .handler = &sl_prefix_handler,
     .flags = SL_CONF_REQUIRED,
     .doc = "Path prefix that routes to this upstream, e.g. `\"/leads\"`; the "
            "longest matching prefix wins; `\"/\"` routes everything not routed "
            "elsewhere."},
    {.key = "url", .type = SL_CONF_STRING, .handler = &sl_url_handler,
     .flags = SL_CONF_REQUIRED,
     .doc = "`http://` or `https://` base URL; a path in it is kept as a base "
            "(with `\"https://h/base\"`, `/leads/x?y=1` goes to "
            "`https://h/base/x?y=1`)."},
    {.key = "preset", .type = SL_CONF_STRING, .handler = &sl_preset_handler,
     .doc = "A provider preset's name, e.g. `\"salesforce\"`: its rules and "
            "settings are filled in before the upstream is read; every key "
            "written here overrides them."},
    {.key = "preset_params", .type = SL_CONF_OBJECT,
     .handler = &sl_preset_params_handler,
     .doc = "The preset's parameters, e.g. `{\"org_type\": \"production\", "
            "\"daily_allocation\": 115000}` (`sluice --print-preset NAME` lists "
            "them)."},
    {.key = "on_limit", .type = SL_CONF_WORD, .words = sl_on_limit_words,
     SL_CONF_FIELD(struct sl_upstream_conf, on_limit), .def = "reject",
     .doc = "Over a limit: `reject` (429 at once, with `Retry-After`) or "
            "`queue` (hold the call until there is room)."},
    {.key = "max_wait", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_upstream_conf, max_wait_us), .min = 0,
     .max = SL_HOURS(24), .def = "30s",
     .doc = "Queue mode: the longest a call is held; then it gets a 429."},
    {.key = "max_queue", .type = SL_CONF_INT,
     SL_CONF_FIELD(struct sl_upstream_conf, max_queue), .min = 0, .max = 10000000,
     .def = "10000",
     .doc = "Queue mode: calls held for this upstream by one instance; past it, 429."},
    {.key = "default_pause", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_upstream_conf, default_pause_us), .min = 0,
     .max = SL_DAYS(7), .def = "60s",
     .doc = "Pause after a 429 without `Retry-After`, and for signals without "
            "their own `pause`."},
    {.key = "retry_on_limit", .type = SL_CONF_BOOL,
     SL_CONF_FIELD(struct sl_upstream_conf, retry_on_limit), .def = "false",
     .doc = "After a limit response, hold the call and send it again when the "
            "pause is over, so the client sees one success (idempotent methods "
            "only; request bodies up to 64 KiB; at most 3 times)."},
    {.key = "retry_unsafe", .type = SL_CONF_BOOL,
     SL_CONF_FIELD(struct sl_upstream_conf, retry_unsafe), .def = "false",
     .doc = "With `retry_on_limit`: retry non-idempotent methods (POST, PATCH) too."},
    {.key = "limit_signals", .type = SL_CONF_ARRAY, .handler = &sl_signals_handler,
     .doc = "At most 16 responses that mean \"over the limit\" (see "
            "`upstreams[].limit_signals[]`)."},
    {.key = "tenant_groups", .type = SL_CONF_BOOL,
     SL_CONF_FIELD(struct sl_upstream_conf, tenant_groups), .def = "true",
     .doc = "With a Redis Cluster store: when every rule counts `per` one header, "
            "split the upstream into 16 tenant groups, each its own slot, so its "
            "tenants spread over the primaries (`false`: one slot, as every other "
            "upstream).  Each group costs heartbeats of its own (2 a second per "
            "worker, about 50 microseconds of Redis CPU each): turn it off for an "
            "upstream one primary carries easily (a Redis core decides 20,000 to "
            "40,000 calls a second)."},
    {.key = "tls_verify", .type = SL_CONF_BOOL,
     SL_CONF_FIELD(struct sl_upstream_conf, tls_verify), .def = "true",
     .doc = "Verify the upstream's certificate and host name."},
    {.key = "ca_file", .type = SL_CONF_STRING, .handler = &sl_ca_file_handler,
     .def = "the system's store", .flags = SL_CONF_PROSE,
     .doc = "PEM bundle to verify the upstream with: a file holding at least one "
            "`-----BEGIN CERTIFICATE-----` block (a directory or a key file is "
            "refused)."},
    {.key = "connect_timeout", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_upstream_conf, connect_timeout_us), .min = 0,
     .max = SL_MINUTES(10), .def = "5s",
     .doc = "Connecting to the upstream (502/504 past it)."},
    {.key = "timeout", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_upstream_conf, timeout_us), .min = 0,
     .max = SL_HOURS(24), .def = "60s", .flags = SL_CONF_ZERO_OK,
     .doc = "The whole upstream exchange; `0` for none.  Past it: 504 (or a cut "
            "response if it was already streaming)."},
    {.key = "margin", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_upstream_conf, margin_us), .min = 0,
     .max = SL_SECONDS(10), .def = "min(100ms, window / 20)",
     .flags = SL_CONF_ZERO_OK | SL_CONF_PROSE,
     .doc = "Allowance for network jitter: admission uses `window + margin`, "
            "calls are stamped when sent, and the provider, counting arrivals, "
            "sees at most `limit` per `window` while the one-way delay varies by "
            "less than `margin` (a 5-minute window gives up 0.03% of its "
            "throughput by default, a 1 s window 5%).  With `0` a saturated "
            "window overshoots by a call whenever a call reaches the provider "
            "faster than the one whose room it took; raise it for a provider far "
            "away or a shaky link."},
    {.key = "path_case", .type = SL_CONF_WORD,
     .words = (const char *const[]){"insensitive", "sensitive", NULL},
     SL_CONF_FIELD(struct sl_upstream_conf, path_case_sensitive),
     .def = "insensitive",
     .doc = "Rules match paths case-insensitively by default, so a rule cannot "
            "be dodged by letter case; `\"sensitive\"` when the upstream "
            "distinguishes case and rules need to."},
    {.key = "app", .type = SL_CONF_STRING, .handler = &sl_upstream_app_handler,
     .def = "the top level's", .flags = SL_CONF_PROSE,
     .doc = "Which app a call comes from, for this upstream."},
    {.key = "forward_app_header", .type = SL_CONF_BOOL,
     SL_CONF_FIELD(struct sl_upstream_conf, forward_app_header),
     .def = "the top level's", .flags = SL_CONF_PROSE | SL_CONF_SET,
     .set_offset = offsetof(struct sl_upstream_conf, forward_app_set),
     .doc = "Keep the `app` header on the forwarded call."},
    {.key = "reject", .type = SL_CONF_OBJECT, .handler = &sl_reject_handler,
     .doc = "sluice's answer to an over-limit call (see `upstreams[].reject`)."},
    {.key = "apps", .type = SL_CONF_OBJECT, .handler = &sl_upstream_apps_handler,
     .doc = "Default shares of the rate rules, and queue priorities, by app "
            "(see `upstreams[].apps.APP`)."},
    {.key = "priority", .type = SL_CONF_STRING, .handler = &sl_priority_handler,
     .doc = "`\"header:NAME\"`: a call's queue priority (a digit 0 to 9) is read "
            "from that header; without it (or with another value) the app's "
            "`priority` in `apps` applies, else 0."},
    {.key = "priority_aging", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_upstream_conf, priority_aging_us), .min = 0,
     .max = SL_HOURS(24), .def = "0", .flags = SL_CONF_ZERO_OK,
     .doc = "A held call goes up one priority level this often (0: never)."},
    {.key = "auth", .type = SL_CONF_OBJECT, .handler = &sl_auth_handler,
     .doc = "sluice logs in for every app and injects the token (see "
            "`upstreams[].auth`)."},
    {.key = "rules", .type = SL_CONF_ARRAY, .handler = &sl_rules_handler,
     .doc = "At most 64 rules (see `upstreams[].rules[]`); none: calls are only "
            "paused when the provider asks."},
};

static const struct sl_conf_table sl_upstream_table = SL_CONF_TABLE(
    "upstreams[]",
    "A provider sluice forwards to: calls to `prefix` go to `url`, within "
    "its `rules`.  When the provider itself signals a limit (429 or 503 with "
    "`Retry-After`, or a `limit_signals` match), every instance pauses the "
    "upstream.",
    sl_upstream_keys);

static void sl_parse_upstream(json_t *ju, const char *path,
                              struct sl_upstream_conf *u, struct sl_conf_ctx *ctx)
{
    size_t before;
    json_t *x;

    u->margin_us = SL_MARGIN_AUTO;
    sl_conf_defaults(&sl_reject_table, u);
    u->pause_rule.name = strdup("upstream-pause");
    u->pause_rule.kind = SL_RULE_PAUSE;
    u->pause_rule.limit = 1;
    u->pause_rule.per_capture = -1;
    if (!json_is_object(ju)) {
        sl_errors_add(ctx->errs, "%s: an upstream must be an object", path);
        return;
    }
    /* A preset is expanded into the upstream as JSON, then read as if the
     * user had written it all. */
    x = sl_preset_expand(ju, path, ctx->c->presets_dir, &u->preset_report, ctx->errs);
    if (x == NULL)
        return;
    before = ctx->errs->count;
    sl_conf_read(&sl_upstream_table, x, path, u, ctx);
    if (ctx->errs->count > before && u->preset_report != NULL)
        sl_errors_add(ctx->errs, "%s: the errors above may be in what preset \"%s\" "
                      "filled in (sluice --print-preset %s shows it)", path,
                      u->preset, u->preset);
    json_decref(x);
    sl_resolve_auth_rule(u, path, ctx->errs);
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

int sl_config_parse_redis_url(const char *url, struct sl_config *c,
                              const char **why)
{
    struct sl_redis_url u;
    const char *what = NULL;
    int rc = -1;

    if (sl_redis_url_parse(url, &u, &what) != 0) {
        *why = what != NULL ? what : "could not be read";
        return -1;
    }
    /* The URL's strings move into C. */
    if (u.kind == SL_REDIS_URL_SENTINEL) {
        c->redis_master = u.master;
        u.master = NULL;
        for (size_t i = 0; i < u.naddrs && i < SL_CONFIG_SENTINELS_MAX; i++) {
            c->redis_sentinel_host[i] = u.addrs[i].host;
            u.addrs[i].host = NULL;
            c->redis_sentinel_port[i] = u.addrs[i].port;
            c->redis_nsentinels = i + 1;
        }
    } else if (u.kind == SL_REDIS_URL_CLUSTER) {
        for (size_t i = 0; i < u.naddrs && i < SL_CONFIG_SENTINELS_MAX; i++) {
            c->redis_seed_host[i] = u.addrs[i].host;
            u.addrs[i].host = NULL;
            c->redis_seed_port[i] = u.addrs[i].port;
            c->redis_nseeds = i + 1;
        }
        c->redis_host = strdup(c->redis_seed_host[0]);
        c->redis_port = c->redis_seed_port[0];
        if (c->redis_host == NULL) {
            *why = "could not be read (out of memory)";
            goto out;
        }
    } else {
        c->redis_host = u.addrs[0].host;
        u.addrs[0].host = NULL;
        c->redis_port = u.addrs[0].port;
    }
    c->redis_user = u.user;
    u.user = NULL;
    c->redis_password = u.password;
    u.password = NULL;
    c->redis_db = u.db;
    c->redis_use_tls = u.tls;
    rc = 0;
out:
    sl_redis_url_clear(&u);
    return rc;
}

const char *sl_config_store_address(const struct sl_config *c, char *buf, size_t cap)
{
    size_t n;

    if (cap == 0)
        return buf;
    buf[0] = '\0';
    if (c->redis_nseeds > 0) {
        n = (size_t)snprintf(buf, cap, "cluster ");
        for (size_t i = 0; i < c->redis_nseeds && n < cap; i++)
            n += (size_t)snprintf(buf + n, cap - n, "%s%s:%d", i > 0 ? "," : "",
                                  c->redis_seed_host[i], c->redis_seed_port[i]);
        return buf;
    }
    if (c->redis_master == NULL) {
        if (c->redis_db != 0)
            snprintf(buf, cap, "%s:%d/%d", c->redis_host != NULL ? c->redis_host : "-",
                     c->redis_port, c->redis_db);
        else
            snprintf(buf, cap, "%s:%d", c->redis_host != NULL ? c->redis_host : "-",
                     c->redis_port);
        return buf;
    }
    n = (size_t)snprintf(buf, cap, "%s via Sentinel ", c->redis_master);
    for (size_t i = 0; i < c->redis_nsentinels && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s:%d", i > 0 ? "," : "",
                              c->redis_sentinel_host[i], c->redis_sentinel_port[i]);
    if (n < cap && c->redis_db != 0)
        snprintf(buf + n, cap - n, " db %d", c->redis_db);
    return buf;
}

/* ---- the whole file ---- */

/* " (from NAME)" when ENV, row K's environment variable, gave the value;
 * else "".  Into BUF. */
static const char *sl_from_env(const struct sl_conf_key *k, const char *env,
                               char *buf, size_t len)
{
    if (env == NULL || *env == '\0')
        return "";
    snprintf(buf, len, " (from %s)", k->env);
    return buf;
}

static void sl_read_listen(json_t *obj, json_t *v, const char *at, const char *sub,
                           void *base, const struct sl_conf_key *k,
                           struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    const char *s = k->def, *env = ctx->apply_env ? getenv(k->env) : NULL;
    char q[96], from[64];

    (void)obj, (void)at;
    if (v != NULL)
        sl_conf_get_string(v, sub, &s, ctx->errs);
    if (env != NULL && *env)
        s = env;
    c->listen = strdup(s);
    if (sl_config_split_listen(s, &c->listen_host, &c->listen_port) != 0)
        sl_errors_add(ctx->errs, "%s%s: %s is not HOST:PORT (e.g. "
                      "\"127.0.0.1:8080\", \"[::1]:8080\" or \":8080\")", sub,
                      sl_from_env(k, env, from, sizeof(from)),
                      sl_conf_quote(s, q, sizeof(q)));
}

static const struct sl_conf_handler sl_listen_handler = {
    sl_read_listen,
    "`listen` is `HOST:PORT`, `[IPV6]:PORT` or `:PORT` (every address).  "
    "Apps call sluice there instead of the provider "
    "(`https://api.provider.com` becomes `http://localhost:8080/PREFIX`).",
};

static void sl_read_store(json_t *obj, json_t *v, const char *at, const char *sub,
                          void *base, const struct sl_conf_key *k,
                          struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    const char *s = k->def, *env = ctx->apply_env ? getenv(k->env) : NULL;
    char q[96], from[64];

    (void)obj, (void)at;
    if (v != NULL)
        sl_conf_get_string(v, sub, &s, ctx->errs);
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
            sl_errors_add(ctx->errs, "%s%s: %s", sub,
                          sl_from_env(k, env, from, sizeof(from)), why);
            if (strncmp(s, "redis", 5) != 0 && strchr(s, '@') == NULL)
                sl_errors_add(ctx->errs, "%s: %s is neither \"memory\" nor a "
                              "redis:// or rediss:// URL", sub,
                              sl_conf_quote(s, q, sizeof(q)));
        }
    }
}

static const struct sl_conf_handler sl_store_handler = {
    sl_read_store,
    "`store` keeps the limits' state: `\"memory\"` in this process (one "
    "instance), or `\"redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]\"` (port "
    "6379 and database 0 by default; user and password percent-decoded, an "
    "IPv6 address in brackets), shared by every instance that names it, so "
    "they spend one budget exactly; time then comes from Redis.  "
    "`rediss://...` is the same over TLS (see `store_tls`).  "
    "`\"redis-sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]\"` "
    "asks those Sentinels (port 26379 by default), in turn, for the primary "
    "named MASTER, confirms it with `ROLE`, follows `+switch-master` and "
    "asks again after any failure (`rediss-sentinel://`: TLS to the Sentinels "
    "and the primary); the URL's user and password are the primary's, the "
    "Sentinels' own are `store_sentinel`.  "
    "`\"redis-cluster://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]\"` "
    "names seed nodes of a Redis Cluster (`rediss-cluster://`: TLS to every "
    "node): the slot map is read from the first that answers, each "
    "upstream's keys live in its own slot (its name is their hash tag; an "
    "upstream whose rules all count `per` one header is split into 16 tenant "
    "groups, each its own slot), and "
    "every script goes to the primary that owns it, following `MOVED` and "
    "`ASK` and retrying `TRYAGAIN` and `CLUSTERDOWN` within `store_timeout`.  "
    "An error never echoes the URL, which may hold a password.",
};

static const struct sl_conf_key sl_store_tls_keys[] = {
    {.key = "ca_file", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_config, tls_ca_file), .def = "the system's CAs",
     .flags = SL_CONF_PROSE,
     .doc = "PEM file of the CA (or CAs) that signed the Redis server's "
            "certificate."},
    {.key = "cert_file", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_config, tls_cert_file),
     .doc = "Mutual TLS: PEM file of sluice's client certificate (with "
            "`key_file`), for a Redis run with `--tls-auth-clients yes`."},
    {.key = "key_file", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_config, tls_key_file),
     .doc = "Mutual TLS: PEM file of the client certificate's private key "
            "(unencrypted); it must be the key of `cert_file`."},
    {.key = "server_name", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_config, tls_server_name), .def = "the URL's host",
     .flags = SL_CONF_PROSE,
     .doc = "The name sent in SNI and verified in the server's certificate "
            "(an IP address is verified as one)."},
    {.key = "verify", .type = SL_CONF_BOOL, SL_CONF_FIELD(struct sl_config, tls_verify),
     .def = "true",
     .doc = "Verify the server's certificate and name.  `false` accepts any "
            "certificate: encryption without knowing who answers (tests only)."},
};

static const struct sl_conf_table sl_store_tls_table = SL_CONF_TABLE(
    "store_tls",
    "TLS to Redis, for a `rediss://` store.  Every file is read, and the key "
    "checked against its certificate, when the configuration is loaded, so "
    "`--check` reports a missing or unreadable one.  A certificate Redis "
    "presents that does not verify is logged with the reason, and calls are "
    "decided by `on_store_error` until Redis can be reached.",
    sl_store_tls_keys);

/* Row KEY's file FILE (may be NULL) can be opened for reading; else an
 * error at SUB.KEY. */
static void sl_tls_file_readable(const char *sub, const char *key, const char *file,
                                 struct sl_errors *errs)
{
    char q[96];
    FILE *f;

    if (file == NULL)
        return;
    f = fopen(file, "r");
    if (f == NULL) {
        sl_errors_add(errs, "%s.%s: cannot read %s: %s", sub, key,
                      sl_conf_quote(file, q, sizeof(q)), strerror(errno));
        return;
    }
    fclose(f);
}

static void sl_read_store_tls(json_t *obj, json_t *v, const char *at, const char *sub,
                              void *base, const struct sl_conf_key *k,
                              struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    bool tls = c->store_kind == SL_STORE_REDIS && c->redis_use_tls;
    size_t before = ctx->errs->count;
    struct sl_redis_tls_conf tc;
    char why[512];

    (void)obj, (void)at, (void)k;
    if (v == NULL) {
        sl_conf_defaults(&sl_store_tls_table, c);
    } else if (!json_is_object(v)) {
        sl_errors_add(ctx->errs, "%s: must be an object such as "
                      "{\"ca_file\": \"/etc/sluice/redis-ca.pem\"}", sub);
        return;
    } else {
        sl_conf_read(&sl_store_tls_table, v, sub, c, ctx);
        if (!tls) {
            sl_errors_add(ctx->errs, "%s: applies to a rediss:// store only (store "
                          "is not one): remove it, or write rediss://", sub);
            return;
        }
    }
    if (!tls)
        return;
    if ((c->tls_cert_file != NULL) != (c->tls_key_file != NULL))
        sl_errors_add(ctx->errs, "%s: cert_file and key_file go together (a client "
                      "certificate needs its key)", sub);
    sl_tls_file_readable(sub, "ca_file", c->tls_ca_file, ctx->errs);
    sl_tls_file_readable(sub, "cert_file", c->tls_cert_file, ctx->errs);
    sl_tls_file_readable(sub, "key_file", c->tls_key_file, ctx->errs);
    if (ctx->errs->count != before)
        return;
    tc = (struct sl_redis_tls_conf){
        .ca_file = c->tls_ca_file,
        .cert_file = c->tls_cert_file,
        .key_file = c->tls_key_file,
        .server_name = c->tls_server_name,
        .no_verify = !c->tls_verify,
    };
    c->redis_tls = sl_redis_tls_new(&tc, why, sizeof(why));
    if (c->redis_tls == NULL)
        sl_errors_add(ctx->errs, "%s: %s", sub, why);
}

static const struct sl_conf_handler sl_store_tls_handler = {sl_read_store_tls, NULL};

static const struct sl_conf_key sl_store_sentinel_keys[] = {
    {.key = "user", .type = SL_CONF_STRING, SL_CONF_FIELD(struct sl_config, sentinel_user),
     .doc = "The ACL user sluice presents to the Sentinels (with `password`)."},
    {.key = "password", .type = SL_CONF_STRING,
     .offset = offsetof(struct sl_config, sentinel_password),
     .handler = &sl_auth_secret_handler,
     .doc = "The Sentinels' password (their `requirepass`, or the user's); a "
            "secret: `\"env:NAME\"`, `\"file:PATH\"` or the value."},
};

static const struct sl_conf_table sl_store_sentinel_table = SL_CONF_TABLE(
    "store_sentinel",
    "The Sentinels' own credentials, for a `redis-sentinel://` store whose "
    "Sentinels ask for one (without it sluice sends them no `AUTH`).  The "
    "URL's user and password are the primary's.",
    sl_store_sentinel_keys);

static void sl_read_store_sentinel(json_t *obj, json_t *v, const char *at,
                                   const char *sub, void *base,
                                   const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;

    (void)obj, (void)at, (void)k;
    if (v == NULL) {
        sl_conf_defaults(&sl_store_sentinel_table, c);
        return;
    }
    if (!json_is_object(v)) {
        sl_errors_add(ctx->errs, "%s: must be an object such as "
                      "{\"password\": \"env:SENTINEL_PASSWORD\"}", sub);
        return;
    }
    sl_conf_read(&sl_store_sentinel_table, v, sub, c, ctx);
    if (c->redis_master == NULL) {
        sl_errors_add(ctx->errs, "%s: applies to a redis-sentinel:// store only "
                      "(store is not one): remove it", sub);
        return;
    }
    if (c->sentinel_user != NULL && c->sentinel_password == NULL)
        sl_errors_add(ctx->errs, "%s: user needs a password", sub);
}

static const struct sl_conf_handler sl_store_sentinel_handler = {
    sl_read_store_sentinel, NULL};

static void sl_read_store_prefix(json_t *obj, json_t *v, const char *at,
                                 const char *sub, void *base,
                                 const struct sl_conf_key *k,
                                 struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    const char *s;
    char q[96];

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if (strpbrk(s, "{}") != NULL || strlen(s) > 64) {
        sl_errors_add(ctx->errs, "%s: %s must be at most 64 characters without "
                      "'{' or '}' (sluice adds its own hash tags)", sub,
                      sl_conf_quote(s, q, sizeof(q)));
        return;
    }
    free(c->store_prefix);
    c->store_prefix = strdup(s);
}

static const struct sl_conf_handler sl_store_prefix_handler = {
    sl_read_store_prefix, NULL,
};

static void sl_read_local_share(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k,
                                struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    char brief[96];

    (void)obj, (void)at, (void)k;
    sl_conf_brief(v, brief, sizeof(brief));
    if (!json_is_number(v) || !(json_number_value(v) > 0.0) ||
        json_number_value(v) > 1.0)
        sl_errors_add(ctx->errs, "%s: %s must be a number more than 0 and at most "
                      "1 (the fraction of each limit one instance uses while "
                      "Redis is away)", sub, brief);
    else
        c->local_share = json_number_value(v);
}

static const struct sl_conf_handler sl_local_share_handler = {
    sl_read_local_share, NULL,
};

/* A size: "64MB" or a number of bytes, into the uint64_t field of K. */
static void sl_read_size(json_t *obj, json_t *v, const char *at, const char *sub,
                         void *base, const struct sl_conf_key *k,
                         struct sl_conf_ctx *ctx)
{
    uint64_t *out = (uint64_t *)(void *)((char *)base + k->offset);
    bool memory = strcmp(k->key, "memory_limit") == 0;
    char brief[96];

    (void)obj, (void)at;
    if (json_is_integer(v) && json_integer_value(v) >= (memory ? 1 : 0))
        *out = (uint64_t)json_integer_value(v);
    else if (!json_is_string(v) || sl_size_parse(json_string_value(v), out) != 0 ||
             (memory && *out == 0)) {
        sl_conf_brief(v, brief, sizeof(brief));
        sl_errors_add(ctx->errs, "%s: %s is not a size (write e.g. \"64MB\"%s)",
                      sub, brief, memory ? " or a number of bytes"
                                         : ", or 0 to keep responses in memory only");
    }
    if (memory && *out < (uint64_t)k->min)
        sl_errors_add(ctx->errs, "%s: must be at least 64KB", sub);
}

static const struct sl_conf_handler sl_size_handler = {
    sl_read_size,
    "A size is a number of bytes or a string with a unit: `\"64KB\"`, "
    "`\"64MB\"`, `\"1GB\"` (K, M and G are powers of 1024; `KiB`, `MiB`, "
    "`GiB` too).",
};

/* ---- app identity, the admin listener, alerts ---- */

/* "app": "header:NAME", "client_ip" or "none". */
static void sl_parse_app(json_t *v, const char *path, enum sl_app_kind *kind,
                         char **header, struct sl_errors *errs)
{
    const char *s;
    char q[96];

    if (sl_conf_get_string(v, path, &s, errs) != 0)
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
                      "\"none\"", path, sl_conf_quote(s, q, sizeof(q)));
    }
}

/* The top level's "app", its default from the row when absent. */
static void sl_read_app(json_t *obj, json_t *v, const char *at, const char *sub,
                        void *base, const struct sl_conf_key *k,
                        struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    json_t *def = v == NULL ? json_string(k->def) : NULL;

    (void)obj, (void)at;
    sl_parse_app(v != NULL ? v : def, sub, &c->app_kind, &c->app_header, ctx->errs);
    json_decref(def);
}

static const struct sl_conf_handler sl_app_handler = {sl_read_app, SL_APP_DOC};

static void sl_read_admin_listen(json_t *obj, json_t *v, const char *at,
                                 const char *sub, void *base,
                                 const struct sl_conf_key *k,
                                 struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    const char *s, *env = ctx->apply_env ? getenv(k->env) : NULL;
    char q[96], from[64];

    (void)obj, (void)at;
    if (env != NULL && *env != '\0') {
        s = env;
    } else if (v == NULL) {
        sl_errors_add(ctx->errs, "%s: missing (e.g. \"127.0.0.1:9901\")", sub);
        return;
    } else if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0) {
        return;
    }
    c->admin_listen = strdup(s);
    if (sl_config_split_listen(s, &c->admin_host, &c->admin_port) != 0)
        sl_errors_add(ctx->errs, "%s%s: %s is not HOST:PORT (e.g. "
                      "\"127.0.0.1:9901\")", sub, sl_from_env(k, env, from, sizeof(from)),
                      sl_conf_quote(s, q, sizeof(q)));
}

static const struct sl_conf_handler sl_admin_listen_handler = {
    sl_read_admin_listen,
    "The admin listener serves `/status` (JSON), the usage page, `/metrics` "
    "(Prometheus), `/history`, `/reload` and the operator actions.  It is "
    "off unless `admin.listen` (or `SLUICE_ADMIN_LISTEN`, which opens it "
    "even when the file has no `admin`) names an address, which must differ "
    "from `listen`.  On an address other than loopback a `token` is "
    "required; requests then carry `Authorization: Bearer TOKEN`.  Only "
    "`Host` headers naming the listener's own address or one of `hosts` are "
    "answered.",
};

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

static void sl_read_admin_token(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k,
                                struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    const char *s, *env = ctx->apply_env ? getenv(k->env) : NULL;
    char q[96], from[64];
    bool ok;

    (void)obj;
    /* A secret kept out of the file (a Kubernetes Secret, say). */
    if (env != NULL && *env != '\0') {
        s = env;
    } else if (v == NULL) {
        if (c->admin_listen != NULL && c->admin_port > 0 &&
            !sl_host_is_loopback(c->admin_host))
            sl_errors_add(ctx->errs, "%s: required because %s.listen %s is not a "
                          "loopback address: anyone who can reach it could read "
                          "usage and app names (set a token of 16+ characters, or "
                          "listen on 127.0.0.1)", sub, at,
                          sl_conf_quote(c->admin_listen, q, sizeof(q)));
        return;
    } else if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0) {
        return;
    }
    ok = strlen(s) >= 16 && strlen(s) <= 256;
    for (const char *p = s; ok && *p; p++)
        ok = *p > 0x20 && *p < 0x7f;
    if (!ok)
        sl_errors_add(ctx->errs, "%s%s: must be 16 to 256 printable characters "
                      "without spaces", sub, sl_from_env(k, env, from, sizeof(from)));
    else
        c->admin_token = strdup(s);
}

static const struct sl_conf_handler sl_admin_token_handler = {
    sl_read_admin_token, NULL,
};

/* admin.hosts: names (or addresses) a Host header may give besides the
 * listener's own address; "*" turns the check off. */
static void sl_read_admin_hosts(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k,
                                struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    size_t i;
    json_t *e;

    (void)obj, (void)at, (void)k;
    if (!json_is_array(v) || json_array_size(v) > 32) {
        sl_errors_add(ctx->errs, "%s: must be an array of at most 32 host names "
                      "such as [\"sluice.internal\"] (or [\"*\"]: any)", sub);
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
        snprintf(path, sizeof(path), "%s[%zu]", sub, i);
        if (!ok) {
            sl_conf_brief(e, brief, sizeof(brief));
            sl_errors_add(ctx->errs, "%s: %s must be a host name or address "
                          "without port or brackets (e.g. \"sluice.internal\", "
                          "\"::1\"), or \"*\"", path, brief);
            continue;
        }
        c->admin_hosts[c->nadmin_hosts] = strdup(s);
        for (char *p = c->admin_hosts[c->nadmin_hosts]; p != NULL && *p; p++)
            *p = (char)tolower((unsigned char)*p);
        c->nadmin_hosts++;
    }
}

static const struct sl_conf_handler sl_admin_hosts_handler = {
    sl_read_admin_hosts, NULL,
};

static const struct sl_conf_key sl_admin_keys[] = {
    {.key = "listen", .type = SL_CONF_STRING, .handler = &sl_admin_listen_handler,
     .env = "SLUICE_ADMIN_LISTEN", .flags = SL_CONF_ALWAYS,
     .doc = "`HOST:PORT` of the admin listener, e.g. `\"127.0.0.1:9901\"` (required "
            "with `admin`)."},
    {.key = "token", .type = SL_CONF_STRING, .handler = &sl_admin_token_handler,
     .env = "SLUICE_ADMIN_TOKEN", .flags = SL_CONF_ALWAYS,
     .doc = "16 to 256 printable characters without spaces, asked as "
            "`Authorization: Bearer TOKEN`; required off loopback."},
    {.key = "warn", .type = SL_CONF_RATIO, SL_CONF_FIELD(struct sl_config, warn_at),
     .def = "0.8", .doc = "Utilization from which a rule shows as warning (below `critical`)."},
    {.key = "critical", .type = SL_CONF_RATIO,
     SL_CONF_FIELD(struct sl_config, critical_at), .def = "0.9",
     .doc = "Utilization from which a rule shows as critical."},
    {.key = "top", .type = SL_CONF_INT, SL_CONF_FIELD(struct sl_config, status_top),
     .min = 1, .max = 1000, .def = "20",
     .doc = "Busiest buckets shown for each `per` rule in `/status`."},
    {.key = "hosts", .type = SL_CONF_ARRAY, .handler = &sl_admin_hosts_handler,
     .doc = "At most 32 host names a `Host` header may give besides the "
            "listener's address (`[\"*\"]`: any)."},
};

static const struct sl_conf_table sl_admin_table = SL_CONF_TABLE(
    "admin",
    "The admin listener: live usage per rule and per app, metrics, reloads "
    "and operator actions.  Off unless `listen` is set here or in "
    "`SLUICE_ADMIN_LISTEN`.",
    sl_admin_keys);

static void sl_read_admin(json_t *obj, json_t *v, const char *at, const char *sub,
                          void *base, const struct sl_conf_key *k,
                          struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    const struct sl_conf_key *kl = sl_conf_key(&sl_admin_table, "listen");
    const char *listen_env = ctx->apply_env ? getenv(kl->env) : NULL;
    char q[96];

    (void)obj, (void)at, (void)k;
    /* SLUICE_ADMIN_LISTEN opens (or moves) the admin listener without
     * editing the file: two instances on one host, one configuration. */
    if (v == NULL && (listen_env == NULL || *listen_env == '\0'))
        return;
    if (v != NULL && !json_is_object(v)) {
        sl_errors_add(ctx->errs, "%s: must be an object such as "
                      "{\"listen\": \"127.0.0.1:9901\"}", sub);
        return;
    }
    if (v == NULL)
        v = json_object();  /* the env alone: every other key at its default */
    else
        json_incref(v);
    sl_conf_read(&sl_admin_table, v, sub, c, ctx);
    if (c->admin_listen != NULL && c->listen != NULL &&
        c->admin_port == c->listen_port && c->admin_port > 0 &&
        strcmp(c->admin_host ? c->admin_host : "",
               c->listen_host ? c->listen_host : "") == 0)
        sl_errors_add(ctx->errs, "%s.listen: must differ from listen (%s)", sub,
                      sl_conf_quote(c->listen, q, sizeof(q)));
    if (c->warn_at >= c->critical_at)
        sl_errors_add(ctx->errs, "%s.warn: must be below %s.critical (%g >= %g)",
                      sub, sub, c->warn_at, c->critical_at);
    json_decref(v);
}

static const struct sl_conf_handler sl_admin_handler = {sl_read_admin, NULL};

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

static void sl_read_alert_url(json_t *obj, json_t *v, const char *at,
                              const char *sub, void *base,
                              const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_alert_conf *a = base;
    const char *s, *flaw;
    char q[96], why[256];
    size_t len;

    (void)obj, (void)at, (void)k;
    if (v == NULL) {
        sl_errors_add(ctx->errs, "%s: missing (the webhook to POST to)", sub);
        return;
    }
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    flaw = sl_url_flaw(s, why, sizeof(why), &len);
    if (flaw != NULL)
        sl_errors_add(ctx->errs, "%s: %s %s", sub, sl_conf_quote(s, q, sizeof(q)),
                      flaw);
    else
        a->url = strdup(s);
}

static const struct sl_conf_handler sl_alert_url_handler = {
    sl_read_alert_url,
    "An alert fires when a rule's usage crosses one of `at` upward, once per "
    "crossing (re-armed when usage falls back below it); `per` rules alert "
    "per bucket.  Usage is checked once a second, off the path of any call; "
    "with Redis the check runs in Redis for the whole fleet, which sends one "
    "alert per crossing, not one per instance.  `events` adds the provider "
    "pausing an upstream (`pause`), the shared store going down or coming "
    "back (`store`, per instance) and an operator pausing, shortening or "
    "clearing a pause (`operator`); `[]`: thresholds only.  Each `POST` has "
    "5 s; a failure is retried after 1, 2 and 4 s; at most 256 wait, past "
    "that new ones are dropped and counted.  A slow or dead receiver delays "
    "no call.",
};

/* "at": thresholds, ascending; the row's default when absent. */
static void sl_read_alert_at(json_t *obj, json_t *v, const char *at,
                             const char *sub, void *base,
                             const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_alert_conf *a = base;
    json_t *def = NULL, *e;
    size_t i;

    (void)obj, (void)at;
    if (v == NULL)
        v = def = json_loads(k->def, 0, NULL);
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 16) {
        sl_errors_add(ctx->errs, "%s: must be an array of 1 to 16 thresholds such "
                      "as [0.8, 0.9, 1.0]", sub);
    } else if ((a->at = calloc(json_array_size(v), sizeof(double))) != NULL) {
        json_array_foreach(v, i, e) {
            char esub[200];
            snprintf(esub, sizeof(esub), "%s[%zu]", sub, i);
            if (sl_conf_get_ratio(e, esub, &a->at[a->nat], ctx->errs) == 0)
                a->nat++;
        }
        if (a->nat > 1)
            qsort(a->at, a->nat, sizeof(double), sl_double_cmp);
    }
    json_decref(def);
}

static const struct sl_conf_handler sl_alert_at_handler = {sl_read_alert_at, NULL};

static bool sl_config_has_rule(const struct sl_config *c, const char *name)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        for (size_t k = 0; k < c->upstreams[i].nrules; k++)
            if (c->upstreams[i].rules[k].name != NULL &&
                strcmp(c->upstreams[i].rules[k].name, name) == 0)
                return true;
    return false;
}

static void sl_read_alert_rules(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k,
                                struct sl_conf_ctx *ctx)
{
    struct sl_alert_conf *a = base;
    const char *s;
    char q[96];
    json_t *e;
    size_t i;

    (void)obj, (void)at, (void)k;
    if (!json_is_array(v) || json_array_size(v) == 0) {
        sl_errors_add(ctx->errs, "%s: must be a non-empty array of rule names "
                      "(omit it for every rule)", sub);
        return;
    }
    if ((a->rules = calloc(json_array_size(v), sizeof(char *))) == NULL)
        return;
    json_array_foreach(v, i, e) {
        char esub[200];
        snprintf(esub, sizeof(esub), "%s[%zu]", sub, i);
        if (sl_conf_get_string(e, esub, &s, ctx->errs) != 0)
            continue;
        if (!sl_config_has_rule(ctx->c, s))
            sl_errors_add(ctx->errs, "%s: %s is not the name of any rule", esub,
                          sl_conf_quote(s, q, sizeof(q)));
        a->rules[a->nrules++] = strdup(s);
    }
}

static const struct sl_conf_handler sl_alert_rules_handler = {
    sl_read_alert_rules, NULL,
};

static const char *const sl_event_words[] = {"pause", "store", "operator", NULL};

static void sl_read_alert_events(json_t *obj, json_t *v, const char *at,
                                 const char *sub, void *base,
                                 const struct sl_conf_key *k,
                                 struct sl_conf_ctx *ctx)
{
    struct sl_alert_conf *a = base;
    bool *on[] = {&a->on_pause, &a->on_store, &a->on_operator};
    json_t *e;
    size_t i;
    int w;

    (void)obj, (void)at;
    a->on_pause = a->on_store = a->on_operator = false;
    if (!json_is_array(v)) {
        sl_errors_add(ctx->errs, "%s: must be an array of \"pause\", \"store\" "
                      "and \"operator\"", sub);
        return;
    }
    json_array_foreach(v, i, e) {
        char esub[200];
        snprintf(esub, sizeof(esub), "%s[%zu]", sub, i);
        if (sl_conf_get_word(e, esub, k->words, &w, ctx->errs) == 0)
            *on[w] = true;
    }
}

static const struct sl_conf_handler sl_alert_events_handler = {
    sl_read_alert_events, NULL,
};

static void sl_read_alert_headers(json_t *obj, json_t *v, const char *at,
                                  const char *sub, void *base,
                                  const struct sl_conf_key *k,
                                  struct sl_conf_ctx *ctx)
{
    struct sl_alert_conf *a = base;
    const char *key;
    char q[96];
    json_t *e;

    (void)obj, (void)at, (void)k;
    if (!json_is_object(v)) {
        sl_errors_add(ctx->errs, "%s: must be an object of header names and "
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
            sl_errors_add(ctx->errs, "%s.%s: must be a header name with a string "
                          "value (no control characters, under 1 KiB)",
                          sub, sl_conf_quote(key, q, sizeof(q)));
            continue;
        }
        snprintf(line, sizeof(line), "%s: %s", key, json_string_value(e));
        a->headers[a->nheaders++] = strdup(line);
    }
}

static const struct sl_conf_handler sl_alert_headers_handler = {
    sl_read_alert_headers, NULL,
};

static const struct sl_conf_key sl_alert_keys[] = {
    {.key = "url", .type = SL_CONF_STRING, .handler = &sl_alert_url_handler,
     .flags = SL_CONF_ALWAYS,
     .doc = "The webhook to `POST` to (required; `http://` or `https://`)."},
    {.key = "at", .type = SL_CONF_ARRAY, .handler = &sl_alert_at_handler,
     .def = "[0.8, 0.9, 1.0]", .flags = SL_CONF_ALWAYS | SL_CONF_PROSE,
     .doc = "1 to 16 utilization thresholds, each above 0 and at most 1."},
    {.key = "rules", .type = SL_CONF_ARRAY, .handler = &sl_alert_rules_handler,
     .def = "every rule", .flags = SL_CONF_PROSE,
     .doc = "Rule names (of any upstream) whose thresholds this receiver wants."},
    {.key = "events", .type = SL_CONF_ARRAY, .handler = &sl_alert_events_handler,
     .words = sl_event_words, .def = "[\"pause\", \"store\", \"operator\"]",
     .flags = SL_CONF_PROSE,
     .doc = "Events posted besides thresholds: `pause`, `store`, `operator`."},
    {.key = "headers", .type = SL_CONF_OBJECT, .handler = &sl_alert_headers_handler,
     .doc = "Headers sent with each `POST`, e.g. `{\"Authorization\": \"Bearer ...\"}`."},
};

static const struct sl_conf_table sl_alert_table = SL_CONF_TABLE(
    "alerts[]",
    "A webhook receiver of threshold and event alerts (at most 32).",
    sl_alert_keys);

static void sl_read_alerts(json_t *obj, json_t *v, const char *at, const char *sub,
                           void *base, const struct sl_conf_key *k,
                           struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;

    (void)obj, (void)at, (void)k;
    if (!json_is_array(v) || json_array_size(v) > 32) {
        sl_errors_add(ctx->errs, "%s: must be an array of at most 32 receivers "
                      "such as [{\"url\": \"http://hooks.example/x\"}]", sub);
        return;
    }
    c->alerts = calloc(json_array_size(v) + 1, sizeof(*c->alerts));
    if (c->alerts == NULL) {
        sl_errors_add(ctx->errs, "%s: out of memory", sub);
        return;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
        struct sl_alert_conf *a = &c->alerts[i];
        json_t *ja = json_array_get(v, i);
        char path[32];
        snprintf(path, sizeof(path), "%s[%zu]", sub, i);
        c->nalerts = i + 1;
        a->on_pause = a->on_store = a->on_operator = true;
        if (!json_is_object(ja)) {
            sl_errors_add(ctx->errs, "%s: an alert must be an object such as "
                          "{\"url\": \"http://hooks.example/x\"}", path);
            continue;
        }
        sl_conf_read(&sl_alert_table, ja, path, a, ctx);
        if (sl_alert_apply(c, a) != 0)
            sl_errors_add(ctx->errs, "%s: out of memory", path);
    }
}

static const struct sl_conf_handler sl_alerts_handler = {sl_read_alerts, NULL};

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

/*
 * The upstreams, with duplicate names and prefixes found through two
 * hash sets (name -> index), not by comparing every pair.  Then what each
 * upstream takes from the top level, and the apps the shares name.
 */
static void sl_read_upstreams(json_t *obj, json_t *v, const char *at,
                              const char *sub, void *base,
                              const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    struct sl_errors *errs = ctx->errs;
    json_t *names = NULL, *prefixes = NULL, *prev;
    char q[96];

    (void)obj, (void)at, (void)k;
    if (v == NULL || !json_is_array(v) || json_array_size(v) == 0) {
        sl_errors_add(errs, "%s: must be a non-empty array of upstreams", sub);
        return;
    }
    c->upstreams = calloc(json_array_size(v), sizeof(*c->upstreams));
    names = json_object();
    prefixes = json_object();
    if (c->upstreams == NULL || names == NULL || prefixes == NULL) {
        sl_errors_add(errs, "%s: out of memory", sub);
        goto out;
    }
    c->nupstreams = json_array_size(v);
    if (c->nupstreams > SL_MAX_UPSTREAMS)
        sl_errors_add(errs, "%s: %zu upstreams; at most %d", sub, c->nupstreams,
                      SL_MAX_UPSTREAMS);
    for (size_t i = 0; i < c->nupstreams; i++) {
        char path[64];
        struct sl_upstream_conf *u = &c->upstreams[i];
        snprintf(path, sizeof(path), "%s[%zu]", sub, i);
        u->index = i;
        u->config = c;
        sl_parse_upstream(json_array_get(v, i), path, u, ctx);
        if (u->name != NULL) {
            if ((prev = json_object_get(names, u->name)) != NULL)
                sl_errors_add(errs, "%s.name: %s is already the name of "
                              "upstreams[%lld]", path,
                              sl_conf_quote(u->name, q, sizeof(q)),
                              (long long)json_integer_value(prev));
            else
                json_object_set_new(names, u->name, json_integer((json_int_t)i));
        }
        if (u->prefix != NULL) {
            if ((prev = json_object_get(prefixes, u->prefix)) != NULL)
                sl_errors_add(errs, "%s.prefix: %s is already the prefix of "
                              "upstreams[%lld]", path,
                              sl_conf_quote(u->prefix, q, sizeof(q)),
                              (long long)json_integer_value(prev));
            else
                json_object_set_new(prefixes, u->prefix, json_integer((json_int_t)i));
        }
    }
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
out:
    json_decref(names);
    json_decref(prefixes);
}

static const struct sl_conf_handler sl_upstreams_handler = {sl_read_upstreams, NULL};

static void sl_read_state_file(json_t *obj, json_t *v, const char *at,
                               const char *sub, void *base,
                               const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    const char *s;

    (void)obj, (void)at, (void)k;
    if (sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if (*s == '\0' || strlen(s) > 4000)
        sl_errors_add(ctx->errs, "%s: must be a file path", sub);
    else if (c->store_kind == SL_STORE_REDIS)
        sl_errors_add(ctx->errs, "%s: keeps the memory store's windows; with a "
                      "Redis store they live in Redis (remove it)", sub);
    else
        c->state_file = strdup(s);
}

static const struct sl_conf_handler sl_state_file_handler = {
    sl_read_state_file,
    "With the memory store, `state_file` keeps every window across restarts: "
    "the file is rewritten every `state_interval` and at stop, and each "
    "call is appended to a journal beside it in between, so a crash or "
    "restart never grants room the provider would not.  With Redis the "
    "windows live in Redis (no `state_file`).",
};

static const char *const sl_store_error_words[] = {"local", "deny", "allow", NULL};

static bool sl_dir_exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void sl_read_presets_dir(json_t *obj, json_t *v, const char *at,
                                const char *sub, void *base,
                                const struct sl_conf_key *k, struct sl_conf_ctx *ctx)
{
    struct sl_config *c = base;
    const char *s = NULL, *env = ctx->apply_env ? getenv(k->env) : NULL;
    char q[96], from[64];

    (void)obj, (void)at;
    if (v != NULL && sl_conf_get_string(v, sub, &s, ctx->errs) != 0)
        return;
    if (env != NULL && *env)
        s = env;
    if (s == NULL)
        return;
    if (*s == '\0' || strlen(s) > 4000 || !sl_dir_exists(s))
        sl_errors_add(ctx->errs, "%s%s: %s is not a directory", sub,
                      sl_from_env(k, env, from, sizeof(from)),
                      sl_conf_escape(s, 200, true, q, sizeof(q)));
    else
        c->presets_dir = strdup(s);
}

static const struct sl_conf_handler sl_presets_dir_handler = {
    sl_read_presets_dir,
    "Presets (`upstreams[].preset`) are read from `presets_dir` when it is "
    "given (or `SLUICE_PRESETS_DIR`, which wins), else from the first of "
    "these that exists: `share/sluice/presets` beside the binary's `bin/` "
    "(an install moved with `cmake --install --prefix`), the installed "
    "`DATADIR/sluice/presets` (`/usr/share/sluice/presets` in the Debian "
    "package, `/usr/local/share/sluice/presets` in the container image), "
    "and the source tree's `presets/` for a binary run from its build tree.",
};

static const struct sl_conf_key sl_root_keys[] = {
    {.key = "listen", .type = SL_CONF_STRING, .handler = &sl_listen_handler,
     .def = "127.0.0.1:8080", .env = "SLUICE_LISTEN", .flags = SL_CONF_ALWAYS,
     .doc = "Where apps call sluice: `HOST:PORT`."},
    {.key = "store", .type = SL_CONF_STRING, .handler = &sl_store_handler,
     .def = "memory", .env = "SLUICE_STORE", .flags = SL_CONF_ALWAYS,
     .doc = "Where limit state lives: `\"memory\"`, or a `redis://`, `rediss://` or "
            "`redis-sentinel://` URL."},
    {.key = "store_tls", .type = SL_CONF_OBJECT, .handler = &sl_store_tls_handler,
     .flags = SL_CONF_ALWAYS,
     .doc = "With a `rediss://` store: the CA, client certificate and name to "
            "verify (see `store_tls`)."},
    {.key = "store_sentinel", .type = SL_CONF_OBJECT,
     .handler = &sl_store_sentinel_handler, .flags = SL_CONF_ALWAYS,
     .doc = "With a `redis-sentinel://` store: the Sentinels' own user and "
            "password (see `store_sentinel`)."},
    {.key = "store_prefix", .type = SL_CONF_STRING,
     SL_CONF_FIELD(struct sl_config, store_prefix), .def = "sluice:",
     .handler = &sl_store_prefix_handler,
     .doc = "Redis key prefix (at most 64 characters, no `{` or `}`): deployments "
            "sharing one Redis use different prefixes."},
    {.key = "on_store_error", .type = SL_CONF_WORD, .words = sl_store_error_words,
     SL_CONF_FIELD(struct sl_config, on_store_error), .def = "local",
     .doc = "While Redis cannot answer: `local` enforces the same rules per "
            "instance in memory (with `local_share` of each limit), `deny` "
            "answers 503 with `Retry-After: 1`, `allow` forwards calls uncounted."},
    {.key = "store_timeout", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_config, store_timeout_us), .min = SL_USEC_PER_MSEC,
     .max = SL_SECONDS(60), .def = "200ms",
     .doc = "Longest wait for a Redis answer (and for connecting); past it the "
            "connection is dropped and re-established, and calls are decided by "
            "`on_store_error`."},
    {.key = "concurrency_lease", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_config, lease_ttl_us), .min = 300 * SL_USEC_PER_MSEC,
     .max = SL_HOURS(1), .def = "10s",
     .doc = "Redis: a concurrency slot expires this long after its holder "
            "stopped renewing it (every third of it while the call runs), so a "
            "crashed instance's slots come back by themselves."},
    {.key = "local_share", .type = SL_CONF_RATIO,
     SL_CONF_FIELD(struct sl_config, local_share), .def = "1",
     .handler = &sl_local_share_handler,
     .doc = "With `on_store_error` `local`: the fraction of each limit (above 0, "
            "at most 1) one instance uses while Redis is away."},
    {.key = "memory_limit", .type = SL_CONF_SIZE,
     SL_CONF_FIELD(struct sl_config, memory_limit), .min = 65536, .def = "64MB",
     .handler = &sl_size_handler,
     .doc = "Bound on the memory store's state (at least `64KB`); see the "
            "size format below."},
    {.key = "response_spool", .type = SL_CONF_SIZE,
     SL_CONF_FIELD(struct sl_config, response_spool), .def = "64MB",
     .handler = &sl_size_handler,
     .doc = "Per call: how much of a response a slow client has not read yet "
            "is kept in a temporary file (unlinked, in `$TMPDIR` or `/tmp`) "
            "beyond the 256 KiB in memory, so the upstream exchange ends and its "
            "concurrency slot is freed (as NGINX's `proxy_max_temp_file_size`).  "
            "`0`: memory only (the upstream transfer then waits for the client)."},
    {.key = "workers", .type = SL_CONF_INT, SL_CONF_FIELD(struct sl_config, workers),
     .min = 0, .max = 64, .def = "0",
     .doc = "Event-loop threads (0: one per CPU)."},
    {.key = "access_log", .type = SL_CONF_BOOL,
     SL_CONF_FIELD(struct sl_config, access_log), .def = "true",
     .doc = "Log one line per call."},
    {.key = "shutdown_timeout", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_config, shutdown_timeout_us), .min = 0,
     .max = SL_HOURS(1), .def = "10s", .flags = SL_CONF_ZERO_OK,
     .doc = "How long calls in flight may take to finish after `SIGTERM`."},
    {.key = "client_timeout", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_config, client_timeout_us), .min = SL_SECONDS(1),
     .max = SL_HOURS(24), .def = "60s",
     .doc = "Idle client connections are closed after this."},
    {.key = "header_timeout", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_config, header_timeout_us),
     .min = 100 * SL_USEC_PER_MSEC, .max = SL_HOURS(1), .def = "10s",
     .doc = "A client must send a request's whole header block within this long "
            "of its request line (and its first request line within this long "
            "of connecting); slower clients are disconnected."},
    {.key = "max_retry_after", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_config, max_retry_after_us), .min = SL_SECONDS(1),
     .max = SL_DURATION_MAX, .def = "1h", .flags = SL_CONF_ZERO_OK,
     .doc = "sluice never tells a client to wait longer than this "
            "(`Retry-After`, `retry_after`); a client retrying then gets a fresh "
            "answer.  `0`: no bound."},
    {.key = "max_connections", .type = SL_CONF_INT,
     SL_CONF_FIELD(struct sl_config, max_connections), .min = 1, .max = 1000000,
     .def = "10000", .doc = "Client connections per worker."},
    {.key = "app", .type = SL_CONF_STRING, .handler = &sl_app_handler,
     .def = "none", .flags = SL_CONF_ALWAYS,
     .doc = "Which app a call comes from: `\"header:NAME\"`, `\"client_ip\"` or `\"none\"`."},
    {.key = "forward_app_header", .type = SL_CONF_BOOL,
     SL_CONF_FIELD(struct sl_config, forward_app_header), .def = "false",
     .doc = "Keep the app header on the forwarded call (by default it is "
            "removed: it is sluice's, not the provider's)."},
    {.key = "max_apps", .type = SL_CONF_INT, SL_CONF_FIELD(struct sl_config, max_apps),
     .min = 1, .max = 10000, .def = "100",
     .doc = "Distinct app names tracked; past it new names seen in calls count "
            "as `other` (a warning is logged once).  Apps named in shares have a "
            "pool of their own of the same size, so made-up names never take a "
            "configured app's id; shares naming more apps are refused."},
    {.key = "log_format", .type = SL_CONF_WORD,
     .words = (const char *const[]){"text", "json", NULL},
     SL_CONF_FIELD(struct sl_config, log_format), .def = "text",
     .doc = "Log lines as `key=value` text or one JSON object per line."},
    {.key = "admin", .type = SL_CONF_OBJECT, .handler = &sl_admin_handler,
     .flags = SL_CONF_ALWAYS, .doc = "The admin listener (see `admin`)."},
    {.key = "presets_dir", .type = SL_CONF_STRING, .handler = &sl_presets_dir_handler,
     .env = "SLUICE_PRESETS_DIR", .def = "the installed presets",
     .flags = SL_CONF_ALWAYS | SL_CONF_PROSE,
     .doc = "The directory `preset` names are looked up in (`NAME.json`)."},
    {.key = "upstreams", .type = SL_CONF_ARRAY, .handler = &sl_upstreams_handler,
     .flags = SL_CONF_ALWAYS,
     .doc = "The providers, at least one (see `upstreams[]`; required)."},
    {.key = "alerts", .type = SL_CONF_ARRAY, .handler = &sl_alerts_handler,
     .doc = "Webhook receivers (see `alerts[]`)."},
    {.key = "state_file", .type = SL_CONF_STRING, .handler = &sl_state_file_handler,
     .doc = "Memory store: keep the windows in this file so a restart never "
            "grants room the provider would refuse (not with Redis)."},
    {.key = "state_interval", .type = SL_CONF_DURATION,
     SL_CONF_FIELD(struct sl_config, state_interval_us), .min = SL_SECONDS(1),
     .max = SL_HOURS(1), .def = "10s",
     .doc = "How often the state file is written (and at every stop)."},
    {.key = "shadow", .type = SL_CONF_BOOL, SL_CONF_FIELD(struct sl_config, shadow),
     .def = "false",
     .doc = "Every rule in shadow mode: counted and reported, never enforced."},
};

static const struct sl_conf_table sl_root_table = SL_CONF_TABLE(
    "",
    "The configuration file is one JSON object.  Only `upstreams` is required.",
    sl_root_keys);

/* Every table, in the order the reference shows them. */
static const struct sl_conf_table *const sl_tables[] = {
    &sl_root_table, &sl_store_tls_table, &sl_store_sentinel_table, &sl_admin_table, &sl_upstream_table, &sl_reject_table,
    &sl_signal_table, &sl_upstream_share_table, &sl_rule_table,
    &sl_rule_share_table, &sl_login_cache_table, &sl_alert_table, &sl_auth_table,
};

static void sl_parse_root(json_t *root, bool apply_env, struct sl_config *c,
                          struct sl_errors *errs)
{
    struct sl_conf_ctx ctx = {c, NULL, apply_env, errs};

    /* The admin table's defaults hold without an admin listener too. */
    sl_conf_defaults(&sl_admin_table, c);
    if (!json_is_object(root)) {
        sl_conf_defaults(&sl_root_table, c);
        sl_errors_add(errs, "(root): the configuration must be a JSON object");
        return;
    }
    sl_conf_read(&sl_root_table, root, "", c, &ctx);
    /* The token broker's Redis connection (sl_auth_store.c) is hiredis's
     * own, which has no TLS. */
    if (c->shadow)
        for (size_t i = 0; i < c->nupstreams; i++)
            for (size_t k = 0; k < c->upstreams[i].nrules; k++)
                c->upstreams[i].rules[k].shadow = true;
}

void sl_config_reference(FILE *out)
{
    sl_conf_reference(sl_tables, sizeof(sl_tables) / sizeof(sl_tables[0]),
                      "# Configuration reference\n"
                      "\n"
                      "<!-- Generated by `sluice --print-reference > "
                      "docs/configuration.md`; edit\n"
                      "     the tables in limits/sl_config.c, not this file. -->\n"
                      "\n"
                      "sluice reads one JSON file (`sluice -c FILE`; `sluice -c FILE "
                      "--check` validates it and lists every error, each with its "
                      "JSON path).  Unknown keys are errors: a typo must not "
                      "silently disable a quota.  A reload (`SIGHUP` or `POST "
                      "/reload`) takes a new file without dropping counts; what "
                      "needs a restart (listeners, workers, the store) is refused.\n"
                      "\n"
                      "A **duration** is a string with a unit, `\"250ms\"`, `\"10s\"`, "
                      "`\"5m\"`, `\"24h\"`, `\"1d\"`, or a number of seconds.  A "
                      "**fraction** is a number above 0 and at most 1.  A "
                      "**word** is one of the strings listed.  Bounds are "
                      "inclusive.\n",
                      out);
}

void sl_config_env_help(FILE *out)
{
    sl_conf_env_help(sl_tables, sizeof(sl_tables) / sizeof(sl_tables[0]), out);
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
            if (r->login_cache && t == NULL)
                sl_errors_add(&c->warnings, "upstreams[%zu].rules[%zu].login_cache: "
                              "the rule has no \"path\", so every POST of the "
                              "upstream with a small body is looked up as a login; "
                              "give it the token endpoint's path", i, k);
            if (r->kind == SL_RULE_CONCURRENCY &&
                (r->cost_kind != SL_COST_FIXED || r->cost != 1))
                sl_errors_add(&c->warnings, "upstreams[%zu].rules[%zu].cost: a "
                              "concurrency rule counts calls in flight; the cost is "
                              "ignored", i, k);
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
                      sl_conf_escape(name, 400, false, ename, sizeof(ename)),
                      jerr.line, jerr.column,
                      sl_conf_escape(jerr.text, sizeof(jerr.text), false, etext,
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

/* Do two "auth" objects log in differently (secrets compared, never shown)? */
static bool sl_auth_differ(const struct sl_auth_conf *a, const struct sl_auth_conf *b)
{
    if (a == NULL || b == NULL)
        return a != b;
    if (a->grant != b->grant || a->refresh_before_us != b->refresh_before_us ||
        a->lifetime_us != b->lifetime_us || a->timeout_us != b->timeout_us ||
        a->nparams != b->nparams)
        return true;
    {
        const char *const sa[] = {a->token_url, a->client_id, a->client_secret, a->scope,
                                  a->audience, a->refresh_token, a->username,
                                  a->password, a->jwt_key, a->jwt_issuer,
                                  a->jwt_subject, a->jwt_audience, a->rule_name,
                                  a->reauth_on};
        const char *const sb[] = {b->token_url, b->client_id, b->client_secret, b->scope,
                                  b->audience, b->refresh_token, b->username,
                                  b->password, b->jwt_key, b->jwt_issuer,
                                  b->jwt_subject, b->jwt_audience, b->rule_name,
                                  b->reauth_on};
        for (size_t i = 0; i < sizeof(sa) / sizeof(sa[0]); i++)
            if (sl_str_differ(sa[i], sb[i]))
                return true;
    }
    if (a->has_token_key != b->has_token_key ||
        memcmp(a->token_key, b->token_key, sizeof(a->token_key)) != 0)
        return true;
    for (size_t i = 0; i < a->nparams; i++)
        if (sl_str_differ(a->params[i].name, b->params[i].name) ||
            sl_str_differ(a->params[i].value, b->params[i].value))
            return true;
    return false;
}

static bool sl_str_differ(const char *a, const char *b);
static bool sl_auth_differ(const struct sl_auth_conf *a, const struct sl_auth_conf *b);

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
        if (u->rules[i].kind == r->kind && u->rules[i].leaky == r->leaky &&
            strcmp(u->rules[i].name, r->name) == 0)
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
    SL_DIFF_STR(tls_ca_file, "store_tls.ca_file")
    SL_DIFF_STR(tls_cert_file, "store_tls.cert_file")
    SL_DIFF_STR(tls_key_file, "store_tls.key_file")
    SL_DIFF_STR(tls_server_name, "store_tls.server_name")
    if (a->tls_verify != b->tls_verify)
        sl_restart_line(errs, &n, "store_tls.verify", a->tls_verify ? "true" : "false",
                        b->tls_verify ? "true" : "false");
    SL_DIFF_STR(sentinel_user, "store_sentinel.user")
    if (sl_str_differ(a->sentinel_password, b->sentinel_password))
        sl_restart_line(errs, &n, "store_sentinel.password", "one", "another");
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
    /* The token broker starts with the process: secrets are never printed. */
    for (size_t i = 0; i < b->nupstreams; i++) {
        const struct sl_upstream_conf *ub = &b->upstreams[i];
        const struct sl_upstream_conf *ua = sl_config_upstream(a, ub->name);
        if ((ua != NULL || ub->auth != NULL) &&
            sl_auth_differ(ua != NULL ? ua->auth : NULL, ub->auth)) {
            char what[96];
            snprintf(what, sizeof(what), "upstreams \"%s\" auth", ub->name);
            sl_restart_line(errs, &n, what, "one login", "another");
        }
    }
    for (size_t i = 0; i < a->nupstreams; i++)
        if (a->upstreams[i].auth != NULL &&
            sl_config_upstream(b, a->upstreams[i].name) == NULL) {
            char what[96];
            snprintf(what, sizeof(what), "upstreams \"%s\" auth", a->upstreams[i].name);
            sl_restart_line(errs, &n, what, "one login", "none");
        }
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
    sl_conf_escape(path, 400, false, epath, sizeof(epath));
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
    free(r->leak_text);
    free(r->cost_header);
    free(r->settle_header);
    for (size_t i = 0; i < r->ncost_methods; i++)
        free(r->cost_methods[i].method);
    free(r->cost_methods);
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
        sl_auth_free(u->auth);
        free(u->preset);
        free(u->preset_report);
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
    free(c->presets_dir);
    free(c->upstreams);
    free(c->listen);
    free(c->listen_host);
    free(c->store);
    free(c->redis_host);
    free(c->redis_user);
    free(c->redis_password);
    free(c->redis_master);
    for (size_t i = 0; i < c->redis_nsentinels; i++)
        free(c->redis_sentinel_host[i]);
    for (size_t i = 0; i < c->redis_nseeds; i++)
        free(c->redis_seed_host[i]);
    free(c->sentinel_user);
    free(c->sentinel_password);
    free(c->tls_ca_file);
    free(c->tls_cert_file);
    free(c->tls_key_file);
    free(c->tls_server_name);
    sl_redis_tls_free(c->redis_tls);
    free(c->store_prefix);
    free(c);
}
