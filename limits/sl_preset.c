/*
 * sl_preset — provider presets, expanded into an upstream before it is
 * read (see sl_preset.h; the file format is presets/README.md).
 *
 * An upstream that says `"preset": "salesforce"` and gives
 * `"preset_params": {"org_type": "production", ...}` is rewritten, as
 * JSON, into the upstream the user would otherwise have typed, and that
 * object goes through the ordinary upstream table (sl_config.c).  So the
 * checks, the error paths ("upstreams[0].rules[1].window") and the
 * behaviour are those of a hand-written upstream; a preset that uses a
 * rule key sluice does not have is refused by the same "unknown key" line.
 *
 * Expansion, in order:
 *   1. the name is a plain file name (letters, digits, '-', '_', '.', no
 *      leading '.'), so "../x" or "a/b" never opens anything outside the
 *      presets directory;
 *   2. the file is read and its shape checked (a fault in it is reported
 *      against the file, not against the user's config);
 *   3. the user's parameters: unknown ones refused, each value checked
 *      against its `values` or `type`, required ones present;
 *   4. every string value that is exactly "$NAME" in the preset's
 *      `upstream` is replaced by a copy of the value, keeping its JSON
 *      type: the parameter if given, else NAME in the `choose` row a
 *      parameter's value selects, else the parameter's default.  No '$'
 *      inside longer strings, no arithmetic, so what a preset can say is
 *      plain to read;
 *   5. the user's keys on top (a JSON merge): a key the user writes
 *      replaces the preset's, `null` removes it; in `rules`, a user rule
 *      whose `name` is a preset rule's is merged into it key by key (so
 *      `{"name": "daily", "limit": 500}` changes one figure and keeps the
 *      rule's path, window and sync; `null` removes a key), other user
 *      rules are added after the preset's.
 * What the preset added and what the user overrode is kept as text for
 * `sluice --check`.
 *
 * Ownership: every function returns new references (or borrowed ones,
 * when its comment says so); the preset file is read once per upstream
 * per load and freed when the upstream has been expanded.  No globals, no
 * locking: configurations are loaded on one thread.
 */
#include "sl_preset.h"

#include "sl_buf.h"
#include "sl_calendar.h"
#include "sl_config.h"
#include "sl_config_table.h"
#include "sl_duration.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SLUICE_PRESETS_INSTALL_DIR
#define SLUICE_PRESETS_INSTALL_DIR "/usr/local/share/sluice/presets"
#endif

/* Longest preset name, parameter name or placeholder. */
#define SL_PRESET_NAME_MAX 64
/* Preset files larger than this are refused (the largest is ~10 KB). */
#define SL_PRESET_FILE_MAX (1024 * 1024)

/* A preset file, read and checked.  Borrowed members point into FILE. */
struct sl_preset {
    json_t *file;                 /* the whole file (owned) */
    json_t *params;               /* "parameters": an object, maybe empty */
    json_t *choose;               /* "choose": an object, maybe empty */
    json_t *upstream;             /* "upstream": the fragment */
    char name[SL_PRESET_NAME_MAX + 1];
    char path[PATH_MAX];          /* where it was read */
};

static const char *const sl_preset_types[] = {"integer", "rate", "timezone",
                                              "string", NULL};
/* Keys a preset's upstream fragment may not hold: the user's own. */
static const char *const sl_preset_user_keys[] = {"name", "prefix", "url", "preset",
                                                  "preset_params", NULL};

static bool sl_in_list(const char *s, const char *const *list)
{
    for (; *list != NULL; list++)
        if (strcmp(s, *list) == 0)
            return true;
    return false;
}

/* A plain name: 1 to 64 letters, digits, '-', '_' or '.', not starting
 * with '.' and without ".." (never a path). */
static bool sl_preset_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > SL_PRESET_NAME_MAX || s[0] == '.' || strstr(s, "..") != NULL)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
            return false;
    return true;
}

/* "$NAME" (the whole string) with NAME an identifier: NAME, else NULL. */
static const char *sl_placeholder(json_t *v)
{
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;

    if (s == NULL || s[0] != '$' || strlen(s) > SL_PRESET_NAME_MAX + 1)
        return NULL;
    for (const char *p = s + 1; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
              (p > s + 1 && *p >= '0' && *p <= '9')))
            return NULL;
    return s[1] != '\0' ? s + 1 : NULL;
}

/* Is S an identifier (a parameter's name, as "$NAME" can say it)? */
static bool sl_is_ident(const char *s)
{
    if (*s == '\0' || strlen(s) > SL_PRESET_NAME_MAX || (*s >= '0' && *s <= '9'))
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' ||
              (*s >= '0' && *s <= '9')))
            return false;
    return true;
}

/* Key S for an error line (control bytes escaped, cut), into BUF. */
static const char *sl_esc(const char *s, char *buf, size_t len)
{
    return sl_conf_escape(s, SL_PRESET_NAME_MAX, false, buf, len);
}

static bool sl_is_dir(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *sl_preset_dir(const char *dir, char *buf, size_t len)
{
    char exe[PATH_MAX];
    ssize_t n;

    if (dir != NULL && *dir != '\0') {
        snprintf(buf, len, "%s", dir);
        return sl_is_dir(buf) ? buf : NULL;
    }
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        char *slash;
        exe[n] = '\0';
        if ((slash = strrchr(exe, '/')) != NULL) {
            char rel[PATH_MAX + 32], *real;
            *slash = '\0';
            snprintf(rel, sizeof(rel), "%s/../share/sluice/presets", exe);
            if (sl_is_dir(rel) && (real = realpath(rel, NULL)) != NULL) {
                snprintf(buf, len, "%s", real);
                free(real);
                return buf;
            }
        }
    }
    snprintf(buf, len, "%s", SLUICE_PRESETS_INSTALL_DIR);
    if (sl_is_dir(buf))
        return buf;
#ifdef SLUICE_PRESETS_SOURCE_DIR
    snprintf(buf, len, "%s", SLUICE_PRESETS_SOURCE_DIR);
    if (sl_is_dir(buf))
        return buf;
#endif
    snprintf(buf, len, "%s", SLUICE_PRESETS_INSTALL_DIR);
    return NULL;
}

static int sl_strcmp_p(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The presets in DIR ("a, b, c", sorted), into B. */
static void sl_preset_list(const char *dir, struct sl_buf *b)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char *names[256];
    size_t n = 0;

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL && n < sizeof(names) / sizeof(names[0])) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".json") == 0 &&
            (names[n] = strndup(e->d_name, l - 5)) != NULL) {
            if (sl_preset_name_ok(names[n]))
                n++;
            else
                free(names[n]);
        }
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), sl_strcmp_p);
    for (size_t i = 0; i < n; i++) {
        sl_buf_printf(b, "%s%s", i > 0 ? ", " : "", names[i]);
        free(names[i]);
    }
}

/* A JSON value on one line, for a message or the report (owned). */
static char *sl_brief(json_t *v)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY);

    return s != NULL ? s : strdup("?");
}

/* ---- reading a preset file ---- */

/* Is the shape of P's file what the format says?  Errors against AT. */
static int sl_preset_check_file(struct sl_preset *p, const char *at,
                                struct sl_errors *errs)
{
    static const char *const top[] = {"name", "title", "sources", "parameters",
                                      "choose", "upstream", "notes", NULL};
    static const char *const pkeys[] = {"description", "required", "values", "type",
                                        "default", NULL};
    size_t before = errs->count;
    const char *k, *pk;
    json_t *v, *pv, *name = json_object_get(p->file, "name");
    char e1[96];

    json_object_foreach(p->file, k, v) if (!sl_in_list(k, top))
        sl_errors_add(errs, "%s.preset: %s: unknown key \"%s\"", at, p->path,
                      sl_esc(k, e1, sizeof(e1)));
    if (!json_is_string(name) || strcmp(json_string_value(name), p->name) != 0)
        sl_errors_add(errs, "%s.preset: %s: \"name\" must be \"%s\", the file's name",
                      at, p->path, p->name);
    p->params = json_object_get(p->file, "parameters");
    p->choose = json_object_get(p->file, "choose");
    p->upstream = json_object_get(p->file, "upstream");
    if (p->params != NULL && !json_is_object(p->params))
        sl_errors_add(errs, "%s.preset: %s: \"parameters\" must be an object", at,
                      p->path);
    if (p->choose != NULL && !json_is_object(p->choose))
        sl_errors_add(errs, "%s.preset: %s: \"choose\" must be an object", at, p->path);
    if (!json_is_object(p->upstream))
        sl_errors_add(errs, "%s.preset: %s: \"upstream\" must be an object", at,
                      p->path);
    if (errs->count > before)
        return -1;
    json_object_foreach(p->params, k, v) {
        json_t *values = json_object_get(v, "values"), *type = json_object_get(v, "type");
        size_t i;
        if (!sl_is_ident(k)) {
            sl_errors_add(errs, "%s.preset: %s: parameters: \"%s\" is not a name "
                          "(letters, digits and '_')", at, p->path, sl_esc(k, e1, sizeof(e1)));
            continue;
        }
        if (!json_is_object(v) || !json_is_string(json_object_get(v, "description"))) {
            sl_errors_add(errs, "%s.preset: %s: parameters.%s must be an object "
                          "with a \"description\"", at, p->path, k);
            continue;
        }
        json_object_foreach(v, pk, pv) if (!sl_in_list(pk, pkeys))
            sl_errors_add(errs, "%s.preset: %s: parameters.%s: unknown key \"%s\"",
                          at, p->path, k, sl_esc(pk, e1, sizeof(e1)));
        if (json_object_get(v, "required") != NULL &&
            !json_is_boolean(json_object_get(v, "required")))
            sl_errors_add(errs, "%s.preset: %s: parameters.%s.required must be true "
                          "or false", at, p->path, k);
        if (type != NULL && !(json_is_string(type) &&
                              sl_in_list(json_string_value(type), sl_preset_types)))
            sl_errors_add(errs, "%s.preset: %s: parameters.%s.type must be "
                          "\"integer\", \"rate\", \"timezone\" or \"string\"", at,
                          p->path, k);
        if (values != NULL && !json_is_array(values))
            values = NULL, sl_errors_add(errs, "%s.preset: %s: parameters.%s.values "
                                         "must be an array of words", at, p->path, k);
        json_array_foreach(values, i, pv) if (!json_is_string(pv))
            sl_errors_add(errs, "%s.preset: %s: parameters.%s.values must be an "
                          "array of words", at, p->path, k);
    }
    json_object_foreach(p->choose, k, v) {
        json_t *values = json_object_get(json_object_get(p->params, k), "values");
        if (values == NULL || !json_is_object(v)) {
            sl_errors_add(errs, "%s.preset: %s: choose.%s must be an object keyed by "
                          "the values of parameter %s", at, p->path,
                          sl_esc(k, e1, sizeof(e1)), e1);
            continue;
        }
        json_object_foreach(v, pk, pv) {
            bool known = false;
            size_t i;
            json_t *w;
            json_array_foreach(values, i, w) if (strcmp(json_string_value(w), pk) == 0)
                known = true;
            if (!known || !json_is_object(pv))
                sl_errors_add(errs, "%s.preset: %s: choose.%s.%s: must be an object "
                              "and a value of parameter %s", at, p->path, k,
                              sl_esc(pk, e1, sizeof(e1)), k);
        }
    }
    json_object_foreach(p->upstream, k, v) if (sl_in_list(k, sl_preset_user_keys))
        sl_errors_add(errs, "%s.preset: %s: upstream.%s is the user's to give, never "
                      "a preset's", at, p->path, k);
    return errs->count > before ? -1 : 0;
}

/* Read preset NAME from DIR into P.  Errors against AT. */
static int sl_preset_load(const char *name, const char *dir, const char *at,
                          struct sl_preset *p, struct sl_errors *errs)
{
    char q[320], where[PATH_MAX];
    json_error_t jerr;
    struct sl_buf b = {0};
    struct stat st;

    memset(p, 0, sizeof(*p));
    if (!sl_preset_name_ok(name)) {
        sl_errors_add(errs, "%s.preset: %s is not a preset name (1 to 64 letters, "
                      "digits, '-', '_' or '.'; no '/', no leading '.', no \"..\")", at,
                      sl_conf_quote(name, q, sizeof(q)));
        return -1;
    }
    snprintf(p->name, sizeof(p->name), "%s", name);
    if (sl_preset_dir(dir, where, sizeof(where)) == NULL) {
        sl_errors_add(errs, "%s.preset: no presets directory: %s is not a directory "
                      "(set \"presets_dir\" or SLUICE_PRESETS_DIR to the presets/ folder)",
                      at, sl_conf_escape(where, 300, true, q, sizeof(q)));
        return -1;
    }
    for (const char *c = where; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            sl_errors_add(errs, "%s.preset: the presets directory %s has control "
                          "characters in its path", at,
                          sl_conf_escape(where, 200, true, q, sizeof(q)));
            return -1;
        }
    if (strlen(where) > 3000) {
        sl_errors_add(errs, "%s.preset: the presets directory's path is too long", at);
        return -1;
    }
    snprintf(p->path, sizeof(p->path), "%.3000s/%s.json", where, name);
    if (stat(p->path, &st) != 0 || !S_ISREG(st.st_mode)) {
        sl_preset_list(where, &b);
        sl_errors_add(errs, "%s.preset: no preset \"%s\" in %s (there: %s)", at, name,
                      where, b.len > 0 ? b.data : "none");
        sl_buf_free(&b);
        return -1;
    }
    if (st.st_size > SL_PRESET_FILE_MAX) {
        sl_errors_add(errs, "%s.preset: %s is larger than 1 MiB", at, p->path);
        return -1;
    }
    p->file = json_load_file(p->path, JSON_REJECT_DUPLICATES, &jerr);
    if (p->file == NULL) {
        sl_errors_add(errs, "%s.preset: %s:%d:%d: %s", at, p->path, jerr.line,
                      jerr.column, jerr.text);
        return -1;
    }
    if (!json_is_object(p->file)) {
        sl_errors_add(errs, "%s.preset: %s: must be a JSON object", at, p->path);
        return -1;
    }
    return sl_preset_check_file(p, at, errs);
}

static void sl_preset_clear(struct sl_preset *p)
{
    json_decref(p->file);
    p->file = NULL;
}

/* ---- parameters ---- */

/* "N/UNIT": a positive whole number of calls per a duration ("2/s",
 * "100/10s"). */
static bool sl_rate_ok(const char *s)
{
    const char *slash = strchr(s, '/');
    char per[32];
    int64_t us;

    if (slash == NULL || slash == s || (size_t)(slash - s) > 12)
        return false;
    for (const char *p = s; p < slash; p++)
        if (*p < '0' || *p > '9')
            return false;
    if (strtoll(s, NULL, 10) <= 0 || strlen(slash + 1) + 2 > sizeof(per))
        return false;
    /* "s" alone reads as "1s". */
    snprintf(per, sizeof(per), "%s%s",
             slash[1] >= '0' && slash[1] <= '9' ? "" : "1", slash + 1);
    return sl_duration_parse(per, &us) == 0 && us > 0;
}

/* What parameter DEF takes, for a message: into BUF. */
static const char *sl_param_takes(json_t *def, char *buf, size_t len)
{
    json_t *values = json_object_get(def, "values"), *w;
    const char *type = json_string_value(json_object_get(def, "type"));
    size_t i, o = 0;

    if (values != NULL) {
        o += (size_t)snprintf(buf, len, "one of ");
        json_array_foreach(values, i, w) if (o < len)
            o += (size_t)snprintf(buf + o, len - o, "%s\"%s\"", i > 0 ? ", " : "",
                                  json_string_value(w));
    } else if (type != NULL && strcmp(type, "integer") == 0) {
        snprintf(buf, len, "a whole number");
    } else if (type != NULL && strcmp(type, "rate") == 0) {
        snprintf(buf, len, "a rate such as \"2/s\"");
    } else if (type != NULL && strcmp(type, "timezone") == 0) {
        snprintf(buf, len, "a time zone such as \"Europe/Berlin\" or \"+01:00\"");
    } else {
        snprintf(buf, len, "a value");
    }
    return buf;
}

/* Is V a value parameter DEF takes?  An error at SUB when not. */
static bool sl_param_value_ok(json_t *def, json_t *v, const char *sub,
                              struct sl_errors *errs)
{
    json_t *values = json_object_get(def, "values"), *w;
    const char *type = json_string_value(json_object_get(def, "type"));
    char brief[96], takes[512], why[256];
    char *s = sl_brief(v);
    bool ok = true;
    size_t i;

    sl_conf_escape(s, SL_QUOTE_MAX, false, brief, sizeof(brief));
    free(s);
    if (values != NULL) {
        ok = false;
        json_array_foreach(values, i, w) if (json_is_string(v) &&
                                             json_equal(v, w))
            ok = true;
    } else if (type != NULL && strcmp(type, "integer") == 0) {
        ok = json_is_integer(v) && json_integer_value(v) >= 0;
    } else if (type != NULL && strcmp(type, "rate") == 0) {
        ok = json_is_string(v) && sl_rate_ok(json_string_value(v));
    } else if (type != NULL && strcmp(type, "timezone") == 0) {
        struct sl_tz *tz = NULL;
        ok = json_is_string(v) &&
             (tz = sl_tz_load(json_string_value(v), NULL, why, sizeof(why))) != NULL;
        sl_tz_free(tz);
        if (json_is_string(v) && !ok) {
            sl_errors_add(errs, "%s: %s: %s", sub, brief, why);
            return false;
        }
    } else if (type != NULL && strcmp(type, "string") == 0) {
        ok = json_is_string(v);
    } else {
        ok = !json_is_object(v) && !json_is_array(v) && !json_is_null(v);
    }
    if (!ok)
        sl_errors_add(errs, "%s: %s is not %s", sub, brief,
                      sl_param_takes(def, takes, sizeof(takes)));
    return ok;
}

/* The value of parameter PARAM as given, else its default (borrowed). */
static json_t *sl_param_selected(const struct sl_preset *p, json_t *given,
                                 const char *param)
{
    json_t *v = json_object_get(given, param);

    return v != NULL ? v : json_object_get(json_object_get(p->params, param), "default");
}

/* The value "$NAME" stands for (borrowed), or NULL: see the essay, step 4. */
static json_t *sl_preset_value(const struct sl_preset *p, json_t *given,
                               const char *name)
{
    const char *param;
    json_t *v, *rows;

    if ((v = json_object_get(given, name)) != NULL)
        return v;
    json_object_foreach(p->choose, param, rows) {
        json_t *sel = sl_param_selected(p, given, param);
        if (json_is_string(sel) &&
            (v = json_object_get(json_object_get(rows, json_string_value(sel)), name)) != NULL)
            return v;
    }
    return json_object_get(json_object_get(p->params, name), "default");
}

/* A copy of V with every "$NAME" replaced; names with no value are added
 * to MISSING (and stand as null). */
static json_t *sl_preset_fill(const struct sl_preset *p, json_t *given, json_t *v,
                              json_t *missing)
{
    const char *name = sl_placeholder(v), *k;
    json_t *out, *x;
    size_t i;

    if (name != NULL) {
        if ((x = sl_preset_value(p, given, name)) != NULL)
            return json_deep_copy(x);
        json_object_set_new(missing, name, json_true());
        return json_null();
    }
    if (json_is_object(v)) {
        out = json_object();
        json_object_foreach(v, k, x) json_object_set_new(out, k,
                                                          sl_preset_fill(p, given, x, missing));
        return out;
    }
    if (json_is_array(v)) {
        out = json_array();
        json_array_foreach(v, i, x) json_array_append_new(out,
                                                           sl_preset_fill(p, given, x, missing));
        return out;
    }
    return json_deep_copy(v);
}

/* Why "$NAME" has no value, at AT. */
static void sl_preset_missing(const struct sl_preset *p, json_t *given, const char *name,
                              const char *at, struct sl_errors *errs)
{
    json_t *def = json_object_get(p->params, name), *rows;
    char desc[640], with[256] = "", q[96];
    const char *param;
    size_t o = 0;

    if (def == NULL) {
        sl_errors_add(errs, "%s.preset: %s uses \"$%s\", which no parameter, choose row "
                      "or default gives (a fault in the preset)", at, p->path, name);
        return;
    }
    /* The choices whose row would have given it. */
    json_object_foreach(p->choose, param, rows) {
        json_t *sel = sl_param_selected(p, given, param);
        if (json_is_string(sel) && o < sizeof(with))
            o += (size_t)snprintf(with + o, sizeof(with) - o, " with %s %s", param,
                                  sl_conf_quote(json_string_value(sel), q, sizeof(q)));
    }
    sl_errors_add(errs, "%s.preset_params.%s: is required by preset \"%s\"%s: %s", at,
                  name, p->name, with,
                  sl_conf_escape(json_string_value(json_object_get(def, "description")),
                                 500, false, desc, sizeof(desc)));
}

/* Check GIVEN (the user's preset_params) against P: unknown names, values,
 * required ones.  0, or -1 with errors at AT. */
static int sl_preset_check_params(const struct sl_preset *p, json_t *given,
                                  const char *at, struct sl_errors *errs)
{
    size_t before = errs->count;
    const char *k;
    json_t *v;
    char sub[256], desc[640], takes[512], e1[96];

    json_object_foreach(given, k, v) {
        json_t *def = json_object_get(p->params, k);
        snprintf(sub, sizeof(sub), "%s.preset_params.%s", at, sl_esc(k, e1, sizeof(e1)));
        if (def == NULL) {
            struct sl_buf names = {0};
            const char *n;
            json_t *x;
            json_object_foreach(p->params, n, x)
                sl_buf_printf(&names, "%s%s", names.len > 0 ? ", " : "", n);
            sl_errors_add(errs, "%s: unknown parameter of preset \"%s\" (%s%s)", sub,
                          p->name, names.len > 0 ? "it takes " : "it takes none",
                          names.len > 0 ? names.data : "");
            sl_buf_free(&names);
            continue;
        }
        sl_param_value_ok(def, v, sub, errs);
    }
    json_object_foreach(p->params, k, v) {
        if (!json_is_true(json_object_get(v, "required")) ||
            json_object_get(given, k) != NULL)
            continue;
        sl_errors_add(errs, "%s.preset_params.%s: is required by preset \"%s\": %s (%s)",
                      at, k, p->name, sl_param_takes(v, takes, sizeof(takes)),
                      sl_conf_escape(json_string_value(json_object_get(v, "description")),
                                     400, false, desc, sizeof(desc)));
    }
    return errs->count > before ? -1 : 0;
}

/* ---- merging the user's keys ---- */

static const char *sl_rule_name(json_t *r)
{
    return json_is_object(r) ? json_string_value(json_object_get(r, "name")) : NULL;
}

/* "; " between the items of an overridden list. */
static void sl_sep(struct sl_buf *b)
{
    if (b->len > 0)
        sl_buf_adds(b, "; ");
}

/* Record in OVER that KEY went from OLD (NULL: unset) to NEW (null: removed). */
static void sl_note_override(struct sl_buf *over, const char *key, json_t *old, json_t *new)
{
    char *a = old != NULL ? sl_brief(old) : NULL;
    char *b = json_is_null(new) ? NULL : sl_brief(new);

    sl_sep(over);
    sl_buf_printf(over, "%s (preset: %s, yours: %s)", key, a != NULL ? a : "unset",
                  b != NULL ? b : "removed");
    free(a);
    free(b);
}

/* The preset's rules PRULES with the user's URULES merged in by name. */
static json_t *sl_merge_rules(json_t *prules, json_t *urules, struct sl_buf *over,
                              struct sl_buf *added)
{
    json_t *out = json_array(), *pr, *ur;
    size_t n = json_array_size(urules), i, j;
    bool *used = calloc(n + 1, sizeof(*used));

    if (out == NULL || used == NULL) {
        free(used);
        json_decref(out);
        return NULL;
    }
    json_array_foreach(prules, i, pr) {
        const char *pname = sl_rule_name(pr);
        json_t *merged = json_deep_copy(pr);
        json_array_foreach(urules, j, ur) {
            const char *k;
            json_t *v;
            if (used[j] || pname == NULL || sl_rule_name(ur) == NULL ||
                strcmp(sl_rule_name(ur), pname) != 0)
                continue;
            used[j] = true;
            json_object_foreach(ur, k, v) {
                char key[200];
                if (strcmp(k, "name") == 0)
                    continue;
                snprintf(key, sizeof(key), "rules.%.64s.%.64s", pname, k);
                sl_note_override(over, key, json_object_get(pr, k), v);
                if (json_is_null(v))
                    json_object_del(merged, k);
                else
                    json_object_set(merged, k, v);
            }
            break;
        }
        json_array_append_new(out, merged);
    }
    json_array_foreach(urules, j, ur) {
        char idx[32];
        if (used[j])
            continue;
        json_array_append(out, ur);
        snprintf(idx, sizeof(idx), "rules[%zu]", json_array_size(out) - 1);
        sl_sep(added);
        sl_buf_adds(added, sl_rule_name(ur) != NULL ? sl_rule_name(ur) : idx);
    }
    free(used);
    return out;
}

/*
 * The upstream to read: USER's name, prefix, url and preset keys, then
 * FILLED (the preset's fragment, substituted) with USER's keys on top,
 * then USER's other keys.  What was overridden goes to OVER, the user's
 * added rules to ADDED.  NULL when out of memory.
 */
static json_t *sl_preset_merge(json_t *user, json_t *filled, struct sl_buf *over,
                               struct sl_buf *added)
{
    json_t *out = json_object(), *v, *mine;
    const char *k;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; sl_preset_user_keys[i] != NULL; i++)
        if ((v = json_object_get(user, sl_preset_user_keys[i])) != NULL)
            json_object_set(out, sl_preset_user_keys[i], v);
    json_object_foreach(filled, k, v) {
        mine = json_object_get(user, k);
        if (strcmp(k, "rules") == 0 && json_is_array(v) && json_is_array(mine)) {
            json_t *rules = sl_merge_rules(v, mine, over, added);
            if (rules == NULL) {
                json_decref(out);
                return NULL;
            }
            json_object_set_new(out, k, rules);
        } else if (mine == NULL) {
            json_object_set(out, k, v);
        } else {
            sl_note_override(over, k, v, mine);
            if (!json_is_null(mine))
                json_object_set(out, k, mine);
        }
    }
    json_object_foreach(user, k, v)
        if (json_object_get(out, k) == NULL && json_object_get(filled, k) == NULL &&
            !json_is_null(v))
            json_object_set(out, k, v);
    return out;
}

/* The report for --check: what FILLED added, what the user changed. */
static char *sl_preset_report(const struct sl_preset *p, json_t *user, json_t *given,
                              json_t *filled, const char *over, const char *added)
{
    struct sl_buf b = {0};
    const char *k, *name = json_string_value(json_object_get(user, "name"));
    json_t *v;
    char q[200];
    size_t i, n = 0;

    sl_buf_printf(&b, "upstream %s: preset \"%s\" (%s)\n  parameters: ",
                  name != NULL ? sl_conf_escape(name, 64, false, q, sizeof(q)) : "?",
                  p->name, p->path);
    json_object_foreach(given, k, v) {
        char *s = sl_brief(v);
        sl_buf_printf(&b, "%s%s=%s", n++ > 0 ? ", " : "", k, s);
        free(s);
    }
    sl_buf_adds(&b, n == 0 ? "none given\n" : "\n");
    json_object_foreach(filled, k, v) {
        if (strcmp(k, "rules") == 0 && json_is_array(v)) {
            json_t *r;
            json_array_foreach(v, i, r) {
                json_t *copy = json_deep_copy(r);
                char *s;
                json_object_del(copy, "name");
                s = sl_brief(copy);
                sl_buf_printf(&b, "  added rule %s: %s\n",
                              sl_rule_name(r) != NULL ? sl_rule_name(r) : "(unnamed)", s);
                free(s);
                json_decref(copy);
            }
        } else {
            char *s = sl_brief(v);
            sl_buf_printf(&b, "  added %s: %s\n", k, s);
            free(s);
        }
    }
    sl_buf_printf(&b, "  overridden by you: %s", *over ? over : "nothing");
    if (*added)
        sl_buf_printf(&b, "\n  your own rules: %s", added);
    if (sl_buf_result(&b) != 0) {
        sl_buf_free(&b);
        return NULL;
    }
    return sl_buf_take(&b, NULL);
}

/*
 * Expand USER (at AT) with preset P loaded: parameters checked, the
 * fragment filled and merged.  Returns the upstream to read (new
 * reference) or NULL with errors added.  *FILLED_OUT (when not NULL): the
 * filled fragment alone.
 */
static json_t *sl_preset_apply(const struct sl_preset *p, json_t *user, const char *at,
                               char **report, json_t **filled_out,
                               struct sl_errors *errs)
{
    json_t *given = json_object_get(user, "preset_params");
    json_t *missing = NULL, *filled = NULL, *out = NULL, *empty = NULL;
    struct sl_buf over = {0}, added = {0};
    const char *k;
    json_t *v;

    if (given == NULL)
        given = empty = json_object();
    if (sl_preset_check_params(p, given, at, errs) != 0)
        goto out;
    missing = json_object();
    filled = sl_preset_fill(p, given, p->upstream, missing);
    if (missing == NULL || filled == NULL) {
        sl_errors_add(errs, "%s.preset: out of memory", at);
        goto out;
    }
    if (json_object_size(missing) > 0) {
        json_object_foreach(missing, k, v) sl_preset_missing(p, given, k, at, errs);
        goto out;
    }
    out = sl_preset_merge(user, filled, &over, &added);
    if (out == NULL || sl_buf_result(&over) != 0 || sl_buf_result(&added) != 0) {
        json_decref(out);
        out = NULL;
        sl_errors_add(errs, "%s.preset: out of memory", at);
        goto out;
    }
    if (report != NULL)
        *report = sl_preset_report(p, user, given, filled, over.len > 0 ? over.data : "",
                                   added.len > 0 ? added.data : "");
    if (filled_out != NULL)
        *filled_out = json_incref(filled);
out:
    sl_buf_free(&over);
    sl_buf_free(&added);
    json_decref(missing);
    json_decref(filled);
    json_decref(empty);
    return out;
}

json_t *sl_preset_expand(json_t *ju, const char *path, const char *dir, char **report,
                         struct sl_errors *errs)
{
    json_t *name = json_object_get(ju, "preset");
    json_t *given = json_object_get(ju, "preset_params");
    json_t *out = NULL;
    struct sl_preset p = {0};
    size_t before = errs->count;

    *report = NULL;
    if (!json_is_object(ju) || (name == NULL && given == NULL))
        return json_incref(ju);
    if (name == NULL)
        sl_errors_add(errs, "%s.preset_params: given without \"preset\"", path);
    else if (!json_is_string(name))
        sl_errors_add(errs, "%s.preset: must be the name of a preset (a string, e.g. "
                      "\"salesforce\")", path);
    if (given != NULL && !json_is_object(given))
        sl_errors_add(errs, "%s.preset_params: must be an object of the preset's "
                      "parameters, e.g. {\"plan\": \"plus\"}", path);
    if (errs->count == before &&
        sl_preset_load(json_string_value(name), dir, path, &p, errs) == 0)
        out = sl_preset_apply(&p, ju, path, report, NULL, errs);
    sl_preset_clear(&p);
    if (out == NULL) {
        /* Read the rest (name, prefix, url: duplicates are still found),
         * but not rules written to adjust a preset's. */
        out = json_copy(ju);
        if (out == NULL) {
            sl_errors_add(errs, "%s: out of memory", path);
            return NULL;
        }
        json_object_del(out, "rules");
    }
    return out;
}

/* ---- sluice --print-preset ---- */

/* "k=v" arguments into an object: a value of an integer parameter that is
 * all digits becomes a number.  0, or -1 with a line on ERR. */
static int sl_preset_cli_params(const struct sl_preset *p, const char *const *kv,
                                size_t n, json_t *given, FILE *err)
{
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(kv[i], '=');
        char key[SL_PRESET_NAME_MAX + 1];
        json_t *def, *v;
        const char *val, *type;
        bool digits;

        if (eq == NULL || eq == kv[i] || (size_t)(eq - kv[i]) > SL_PRESET_NAME_MAX) {
            fprintf(err, "sluice: --preset-param %s: must be NAME=VALUE\n", kv[i]);
            return -1;
        }
        snprintf(key, sizeof(key), "%.*s", (int)(eq - kv[i]), kv[i]);
        if (json_object_get(given, key) != NULL) {
            fprintf(err, "sluice: --preset-param %s: given twice\n", key);
            return -1;
        }
        val = eq + 1;
        def = json_object_get(p->params, key);
        type = json_string_value(json_object_get(def, "type"));
        digits = *val != '\0' && strlen(val) <= 15;
        for (const char *c = val; *c; c++)
            if (*c < '0' || *c > '9')
                digits = false;
        if (type != NULL && strcmp(type, "integer") == 0 && digits)
            v = json_integer(strtoll(val, NULL, 10));
        else
            v = json_string(val);
        if (v == NULL) {
            fprintf(err, "sluice: --preset-param %s: not UTF-8 text\n", key);
            return -1;
        }
        json_object_set_new(given, key, v);
    }
    return 0;
}

static void sl_preset_print_about(const struct sl_preset *p, FILE *out)
{
    const char *k;
    json_t *v, *x;
    size_t i;
    char takes[512];

    fprintf(out, "preset %s: %s\nfile: %s\n\nparameters (--preset-param NAME=VALUE):\n",
            p->name, json_string_value(json_object_get(p->file, "title")) != NULL
                          ? json_string_value(json_object_get(p->file, "title")) : "",
            p->path);
    if (json_object_size(p->params) == 0)
        fprintf(out, "  none\n");
    json_object_foreach(p->params, k, v) {
        json_t *def = json_object_get(v, "default");
        char *d = def != NULL ? sl_brief(def) : NULL;
        fprintf(out, "  %s (%s%s%s): %s\n      %s\n", k,
                json_is_true(json_object_get(v, "required")) ? "required" : "optional",
                d != NULL ? ", default " : "", d != NULL ? d : "",
                sl_param_takes(v, takes, sizeof(takes)),
                json_string_value(json_object_get(v, "description")));
        free(d);
    }
    fprintf(out, "\nsources:\n");
    json_array_foreach(json_object_get(p->file, "sources"), i, x)
        fprintf(out, "  %s (checked %s)\n", json_string_value(json_object_get(x, "url")),
                json_string_value(json_object_get(x, "checked")) != NULL
                    ? json_string_value(json_object_get(x, "checked")) : "?");
    if (json_array_size(json_object_get(p->file, "notes")) > 0) {
        fprintf(out, "\nnotes:\n");
        json_array_foreach(json_object_get(p->file, "notes"), i, x)
            if (json_is_string(x))
                fprintf(out, "  - %s\n", json_string_value(x));
    }
}

/* Would sluice load FILLED as an upstream?  Errors, without the
 * "upstreams[0]." sluice would put before them, on OUT. */
static bool sl_preset_loadable(const char *name, json_t *filled, FILE *out)
{
    json_t *root = json_object(), *up = json_deep_copy(filled), *ups = json_array();
    struct sl_errors e = {0};
    struct sl_config *c = NULL;
    char *text;
    bool ok;

    json_object_set_new(up, "name", json_string(name));
    json_object_set_new(up, "prefix", json_string("/preset"));
    json_object_set_new(up, "url", json_string("https://provider.example"));
    json_array_append_new(ups, up);
    json_object_set_new(root, "upstreams", ups);
    text = json_dumps(root, 0);
    json_decref(root);
    ok = text != NULL && sl_config_parse(text, "preset", false, &c, &e) == 0;
    free(text);
    sl_config_free(c);
    if (!ok) {
        fprintf(out, "\nsluice cannot load this preset yet:\n");
        for (size_t i = 0; i < e.count; i++) {
            const char *l = e.lines[i];
            if (strncmp(l, "upstreams[0].", 13) == 0)
                l += 13;
            fprintf(out, "  %s\n", l);
        }
    }
    sl_errors_free(&e);
    return ok;
}

int sl_preset_print(const char *name, const char *dir, const char *const *params,
                    size_t nparams, FILE *out, FILE *err)
{
    struct sl_preset p = {0};
    struct sl_errors e = {0};
    json_t *user = json_object(), *given = json_object(), *filled = NULL, *x = NULL;
    char *text;
    int rc = 1;

    if (user == NULL || given == NULL) {
        fprintf(err, "sluice: out of memory\n");
        goto out;
    }
    if (sl_preset_load(name, dir, "--print-preset", &p, &e) != 0)
        goto errors;
    sl_preset_print_about(&p, out);
    if (sl_preset_cli_params(&p, params, nparams, given, err) != 0)
        goto out;
    json_object_set_new(user, "preset", json_string(name));
    json_object_set(user, "preset_params", given);
    x = sl_preset_apply(&p, user, "--print-preset", NULL, &filled, &e);
    if (x == NULL)
        goto errors;
    text = json_dumps(filled, JSON_INDENT(2));
    fprintf(out, "\nexpanded upstream (add \"name\", \"prefix\" and \"url\"):\n%s\n",
            text != NULL ? text : "(out of memory)");
    free(text);
    if (sl_preset_loadable(name, filled, out))
        fprintf(out, "\nsluice loads it as it stands.\n");
    rc = 0;
    goto out;
errors:
    for (size_t i = 0; i < e.count; i++) {
        const char *l = e.lines[i];
        /* "--print-preset.preset_params.x" reads better as "--preset-param x". */
        if (strncmp(l, "--print-preset.preset_params.", 29) == 0)
            fprintf(err, "sluice: --preset-param %s\n", l + 29);
        else if (strncmp(l, "--print-preset.preset: ", 23) == 0)
            fprintf(err, "sluice: --print-preset: %s\n", l + 23);
        else
            fprintf(err, "sluice: %s\n", l);
    }
out:
    sl_errors_free(&e);
    sl_preset_clear(&p);
    json_decref(x);
    json_decref(filled);
    json_decref(user);
    json_decref(given);
    return rc;
}
