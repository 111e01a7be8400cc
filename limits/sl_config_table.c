/*
 * sl_config_table — the reader that walks a configuration table, the
 * typed reads it and the handlers share, and the reference printed from
 * the tables (see sl_config_table.h).
 *
 * A row's default is written as the file would write it ("10s", "true",
 * "reject") and turned into a value by the same parsers that read the
 * file, so the reference shows exactly the value the struct gets.
 */
#include "sl_config_table.h"

#include "sl_duration.h"

#include <stdlib.h>
#include <string.h>

/* ---- echoing values in error lines ---- */

const char *sl_conf_escape(const char *s, size_t max, bool quoted, char *buf,
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

const char *sl_conf_quote(const char *s, char *buf, size_t len)
{
    return sl_conf_escape(s, SL_QUOTE_MAX, true, buf, len);
}

void sl_conf_brief(json_t *v, char *buf, size_t len)
{
    char *s;

    if (json_is_string(v)) {
        sl_conf_quote(json_string_value(v), buf, len);
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
    sl_conf_escape(s, SL_QUOTE_MAX, false, buf, len);
    free(s);
}

/* ---- typed values ---- */

int sl_conf_get_duration(json_t *v, const char *path, int64_t min, int64_t max,
                         bool zero_ok, int64_t *out, struct sl_errors *errs)
{
    char brief[96], bound[SL_DURATION_FORMAT_MAX];
    int rc = -1;

    sl_conf_brief(v, brief, sizeof(brief));
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

int sl_conf_get_int(json_t *v, const char *path, long long min, long long max,
                    long long *out, struct sl_errors *errs)
{
    char brief[96];

    sl_conf_brief(v, brief, sizeof(brief));
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

int sl_conf_get_string(json_t *v, const char *path, const char **out,
                       struct sl_errors *errs)
{
    char brief[96];

    if (!json_is_string(v)) {
        sl_conf_brief(v, brief, sizeof(brief));
        sl_errors_add(errs, "%s: %s is not a string", path, brief);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

int sl_conf_get_bool(json_t *v, const char *path, bool *out, struct sl_errors *errs)
{
    char brief[96];

    if (!json_is_boolean(v)) {
        sl_conf_brief(v, brief, sizeof(brief));
        sl_errors_add(errs, "%s: %s is not true or false", path, brief);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

int sl_conf_get_ratio(json_t *v, const char *path, double *out,
                      struct sl_errors *errs)
{
    char brief[96];

    if (!json_is_number(v) || !(json_number_value(v) > 0.0) ||
        json_number_value(v) > 1.0) {
        sl_conf_brief(v, brief, sizeof(brief));
        sl_errors_add(errs, "%s: %s must be a number above 0 and at most 1 "
                      "(a fraction of the limit)", path, brief);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

/* The choices of WORDS as a sentence: "a", "b" or "c". */
static void sl_conf_words(const char *const *words, char *buf, size_t len)
{
    size_t o = 0, n = 0;

    while (words[n] != NULL)
        n++;
    buf[0] = '\0';
    for (size_t i = 0; i < n && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s\"%s\"",
                              i == 0 ? "" : i + 1 < n ? ", " : " or ", words[i]);
}

int sl_conf_get_word(json_t *v, const char *path, const char *const *words,
                     int *out, struct sl_errors *errs)
{
    const char *s;
    char q[96], choices[256];

    if (sl_conf_get_string(v, path, &s, errs) != 0)
        return -1;
    for (int i = 0; words[i] != NULL; i++)
        if (strcmp(s, words[i]) == 0) {
            *out = i;
            return 0;
        }
    sl_conf_words(words, choices, sizeof(choices));
    sl_errors_add(errs, "%s: %s must be %s", path, sl_conf_quote(s, q, sizeof(q)),
                  choices);
    return -1;
}

/* ---- the reader ---- */

const struct sl_conf_key *sl_conf_key(const struct sl_conf_table *t, const char *key)
{
    for (size_t i = 0; i < t->nkeys; i++)
        if (strcmp(t->keys[i].key, key) == 0)
            return &t->keys[i];
    return NULL;
}

/* Store integer V in the field of SIZE bytes at P (bool, int, enum,
 * unsigned, uint32_t, int64_t or uint64_t). */
static void sl_conf_store(void *p, size_t size, long long v)
{
    if (size == sizeof(bool)) {
        bool b = v != 0;
        memcpy(p, &b, sizeof(b));
    } else if (size == sizeof(int32_t)) {
        int32_t x = (int32_t)v;
        memcpy(p, &x, sizeof(x));
    } else if (size == sizeof(int64_t)) {
        int64_t x = (int64_t)v;
        memcpy(p, &x, sizeof(x));
    }
}

void sl_conf_defaults(const struct sl_conf_table *t, void *base)
{
    for (size_t i = 0; i < t->nkeys; i++) {
        const struct sl_conf_key *k = &t->keys[i];
        char *p = (char *)base + k->offset;
        int64_t d;
        uint64_t n;
        double x;

        if (k->def == NULL || k->size == 0 || (k->flags & SL_CONF_PROSE))
            continue;
        switch (k->type) {
        case SL_CONF_BOOL:
            sl_conf_store(p, k->size, strcmp(k->def, "true") == 0);
            break;
        case SL_CONF_INT:
            sl_conf_store(p, k->size, strtoll(k->def, NULL, 10));
            break;
        case SL_CONF_DURATION:
            if (sl_duration_parse(k->def, &d) == 0)
                sl_conf_store(p, k->size, d);
            break;
        case SL_CONF_SIZE:
            if (sl_size_parse(k->def, &n) == 0)
                memcpy(p, &n, sizeof(n));
            break;
        case SL_CONF_RATIO:
            x = strtod(k->def, NULL);
            memcpy(p, &x, sizeof(x));
            break;
        case SL_CONF_WORD:
            for (int w = 0; k->words[w] != NULL; w++)
                if (strcmp(k->words[w], k->def) == 0)
                    sl_conf_store(p, k->size, w);
            break;
        case SL_CONF_STRING: {
            char **s = (char **)(void *)p;
            free(*s);
            *s = strdup(k->def);
            break;
        }
        default:
            break;
        }
    }
}

/* Refuse the keys of OBJ that no row of T names. */
static void sl_conf_check_keys(const struct sl_conf_table *t, json_t *obj,
                               const char *path, struct sl_errors *errs)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v) {
        bool plain = *key != '\0' && strlen(key) <= SL_QUOTE_MAX;
        char q[96];
        if (sl_conf_key(t, key) != NULL)
            continue;
        /* A plain key reads best as part of the path; others are quoted. */
        for (const char *c = key; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '_' || *c == '-'))
                plain = false;
        if (plain)
            sl_errors_add(errs, "%s%s%s: unknown key", path, *path ? "." : "", key);
        else
            sl_errors_add(errs, "%s: unknown key %s", *path ? path : "(root)",
                          sl_conf_quote(key, q, sizeof(q)));
    }
}

/* Read plain row K's value V at PATH into BASE.  0 or -1. */
static int sl_conf_value(const struct sl_conf_key *k, json_t *v, const char *path,
                         void *base, struct sl_errors *errs)
{
    char *p = (char *)base + k->offset;
    long long n;
    int64_t d;
    double x;
    bool b;
    int w;
    const char *s;

    switch (k->type) {
    case SL_CONF_BOOL:
        if (sl_conf_get_bool(v, path, &b, errs) != 0)
            return -1;
        sl_conf_store(p, k->size, b);
        return 0;
    case SL_CONF_INT:
        if (sl_conf_get_int(v, path, k->min, k->max, &n, errs) != 0)
            return -1;
        sl_conf_store(p, k->size, n);
        return 0;
    case SL_CONF_DURATION:
        if (sl_conf_get_duration(v, path, k->min, k->max,
                                 (k->flags & SL_CONF_ZERO_OK) != 0, &d, errs) != 0)
            return -1;
        sl_conf_store(p, k->size, d);
        return 0;
    case SL_CONF_RATIO:
        if (sl_conf_get_ratio(v, path, &x, errs) != 0)
            return -1;
        memcpy(p, &x, sizeof(x));
        return 0;
    case SL_CONF_WORD:
        if (sl_conf_get_word(v, path, k->words, &w, errs) != 0)
            return -1;
        sl_conf_store(p, k->size, w);
        return 0;
    case SL_CONF_STRING:
        if (sl_conf_get_string(v, path, &s, errs) != 0)
            return -1;
        free(*(char **)(void *)p);
        *(char **)(void *)p = strdup(s);
        return 0;
    default:
        sl_errors_add(errs, "%s: cannot be read", path);
        return -1;
    }
}

void sl_conf_read(const struct sl_conf_table *t, json_t *obj, const char *path,
                  void *base, struct sl_conf_ctx *ctx)
{
    sl_conf_defaults(t, base);
    sl_conf_check_keys(t, obj, path, ctx->errs);
    for (size_t i = 0; i < t->nkeys; i++) {
        const struct sl_conf_key *k = &t->keys[i];
        json_t *v = json_object_get(obj, k->key);
        char sub[800];

        if (k->flags & SL_CONF_PART)
            continue;
        snprintf(sub, sizeof(sub), "%s%s%s", path, *path ? "." : "", k->key);
        if (v == NULL && (k->flags & SL_CONF_REQUIRED)) {
            sl_errors_add(ctx->errs, "%s: is required", sub);
            continue;
        }
        if (v == NULL && !(k->handler != NULL && (k->flags & SL_CONF_ALWAYS)))
            continue;
        if (k->handler != NULL)
            k->handler->read(obj, v, path, sub, base, k, ctx);
        else if (sl_conf_value(k, v, sub, base, ctx->errs) == 0 &&
                 (k->flags & SL_CONF_SET))
            sl_conf_store((char *)base + k->set_offset, sizeof(bool), 1);
    }
}

/* ---- the reference ---- */

/* S in a Markdown table cell: '|' escaped. */
static void sl_conf_cell(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputc('\\', out);
        fputc(*s, out);
    }
}

static void sl_conf_type_text(const struct sl_conf_key *k, FILE *out)
{
    static const char *const names[] = {
        [SL_CONF_BOOL] = "boolean", [SL_CONF_INT] = "integer",
        [SL_CONF_DURATION] = "duration", [SL_CONF_RATIO] = "fraction",
        [SL_CONF_WORD] = "word", [SL_CONF_STRING] = "string",
        [SL_CONF_SIZE] = "size",
        [SL_CONF_OBJECT] = "object", [SL_CONF_ARRAY] = "array",
        [SL_CONF_ANY] = "see below",
    };

    if (k->type != SL_CONF_WORD) {
        fputs(names[k->type], out);
        return;
    }
    for (int w = 0; k->words[w] != NULL; w++)
        fprintf(out, "%s`\"%s\"`", w ? " \\| " : "", k->words[w]);
}

static void sl_conf_bounds_text(const struct sl_conf_key *k, FILE *out)
{
    char lo[SL_DURATION_FORMAT_MAX], hi[SL_DURATION_FORMAT_MAX];

    switch (k->type) {
    case SL_CONF_INT:
        fprintf(out, "%lld to %lld", k->min, k->max);
        break;
    case SL_CONF_DURATION:
        sl_duration_format(k->max, hi, sizeof(hi));
        sl_duration_format(k->min, lo, sizeof(lo));
        if ((k->flags & SL_CONF_ZERO_OK) && k->min > 0)
            fputs("0, or ", out);
        if (k->max >= SL_DURATION_MAX)
            fprintf(out, "at least %s", lo);
        else if (k->min > 0)
            fprintf(out, "%s to %s", lo, hi);
        else
            fprintf(out, "%s to %s", (k->flags & SL_CONF_ZERO_OK) ? "0" : "above 0", hi);
        break;
    case SL_CONF_SIZE:
        if (k->min >= 1024 && k->min % 1024 == 0)
            fprintf(out, "at least %lldKB", k->min / 1024);
        else if (k->min > 0)
            fprintf(out, "at least %lld bytes", k->min);
        break;
    case SL_CONF_RATIO:
        fputs("above 0, at most 1", out);
        break;
    default:
        break;
    }
}

static void sl_conf_row(const struct sl_conf_key *k, FILE *out)
{
    fprintf(out, "| `%s` | ", k->key);
    sl_conf_type_text(k, out);
    fputs(" | ", out);
    if (k->flags & SL_CONF_REQUIRED)
        fputs("required", out);
    else if (k->def != NULL && (k->flags & SL_CONF_PROSE))
        sl_conf_cell(out, k->def);
    else if (k->def != NULL && (k->type == SL_CONF_BOOL ||
                                strspn(k->def, "0123456789.") == strlen(k->def)))
        fprintf(out, "`%s`", k->def);  /* as JSON writes it: no quotes */
    else if (k->def != NULL)
        fprintf(out, "`\"%s\"`", k->def);
    else
        fputs("(none)", out);
    fputs(" | ", out);
    sl_conf_bounds_text(k, out);
    fputs(" | ", out);
    if (k->env != NULL)
        fprintf(out, "`%s`", k->env);
    fputs(" | ", out);
    sl_conf_cell(out, k->doc != NULL ? k->doc : "");
    fputs(" |\n", out);
}

void sl_conf_reference(const struct sl_conf_table *const *t, size_t n,
                       const char *intro, FILE *out)
{
    fputs(intro, out);
    for (size_t i = 0; i < n; i++) {
        if (*t[i]->name == '\0')
            fprintf(out, "\n## Top level\n\n%s\n\n", t[i]->doc);
        else
            fprintf(out, "\n## `%s`\n\n%s\n\n", t[i]->name, t[i]->doc);
        fputs("| key | type | default | bounds | environment | meaning |\n"
              "|---|---|---|---|---|---|\n", out);
        for (size_t k = 0; k < t[i]->nkeys; k++)
            sl_conf_row(&t[i]->keys[k], out);
        /* Each handler's prose once, under the first key it reads. */
        for (size_t k = 0; k < t[i]->nkeys; k++) {
            const struct sl_conf_handler *h = t[i]->keys[k].handler;
            bool first = h != NULL && h->doc != NULL;
            for (size_t j = 0; first && j < k; j++)
                first = t[i]->keys[j].handler != h;
            if (first)
                fprintf(out, "\n### `%s%s%s`\n\n%s\n", t[i]->name,
                        *t[i]->name ? "." : "", t[i]->keys[k].key, h->doc);
        }
    }
}

void sl_conf_env_help(const struct sl_conf_table *const *t, size_t n, FILE *out)
{
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < t[i]->nkeys; k++) {
            const struct sl_conf_key *r = &t[i]->keys[k];
            if (r->env == NULL)
                continue;
            if (*t[i]->name == '\0')
                fprintf(out, "  %-22s overrides \"%s\"\n", r->env, r->key);
            else
                fprintf(out, "  %-22s overrides \"%s.%s\"\n", r->env, t[i]->name,
                        r->key);
        }
}
