/*
 * sl_preset — provider presets: `"preset": "NAME"` on an upstream, with
 * `"preset_params"`, expanded into the upstream before it is read.
 *
 * A preset is presets/NAME.json (format: presets/README.md).  The loader
 * turns the upstream as written into the upstream sluice reads: the
 * preset's `upstream` fragment with its `$NAME` placeholders filled in,
 * then the user's own keys on top.  Nothing downstream knows a preset was
 * used, so a preset can do nothing a hand-written upstream cannot, and
 * every error in what it filled in is reported by the ordinary checks.
 * Internal to limits/ (sl_config.c and `sluice --print-preset`).
 */
#ifndef SL_PRESET_H
#define SL_PRESET_H

#include <stddef.h>
#include <stdio.h>

struct json_t;
struct sl_errors;

/*
 * The directory presets are read from, into BUF: DIR when given (the
 * `presets_dir` key or SLUICE_PRESETS_DIR), else the first of these that
 * is a directory: BINDIR/../share/sluice/presets beside the running
 * binary (an install moved with `cmake --install --prefix`), the
 * installed DATADIR/sluice/presets compiled in, and the source tree's
 * presets/ (a binary run from its build tree).  Returns BUF, or NULL when
 * none is a directory (BUF then names DIR, or the installed directory).
 */
const char *sl_preset_dir(const char *dir, char *buf, size_t len);

/*
 * Expand upstream JU (a JSON value at PATH, "upstreams[0]") when it has a
 * "preset" key; presets are read from sl_preset_dir(DIR).  Returns a new
 * reference to the object to read as the upstream: JU itself when it
 * names no preset; the expansion (the user's "preset" and
 * "preset_params" kept in it) when it does; when the preset cannot be
 * applied, errors are added to ERRS (each with its JSON path) and the
 * returned copy of JU has no "rules", so no error follows from a rule
 * written only to adjust a preset's.  NULL only when out of memory (an
 * error added).  *REPORT (owned by the caller, NULL unless a preset was
 * applied) says what the preset added and what the user overrode, for
 * `sluice --check`.
 */
struct json_t *sl_preset_expand(struct json_t *ju, const char *path,
                                const char *dir, char **report,
                                struct sl_errors *errs);

/*
 * `sluice --print-preset NAME`: the preset's parameters with their
 * descriptions, sources and notes, then, with PARAMS[0..NPARAMS)
 * ("name=value" each; a value of an integer parameter that is all digits
 * is a number) the expanded upstream as JSON, and whether sluice can load
 * it.  Presets are read from sl_preset_dir(DIR).  Returns 0, or 1 with
 * the reasons on ERR (a missing required parameter is named with the
 * values it takes).
 */
int sl_preset_print(const char *name, const char *dir, const char *const *params,
                    size_t nparams, FILE *out, FILE *err);

#endif
