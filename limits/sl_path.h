/*
 * sl_path — the one canonical form of a request path, for routing checks
 * and rule matching.
 *
 * A rule must not be dodged by spelling.  Servers and frameworks disagree
 * on what two paths are "the same endpoint": most decode percent-escapes
 * (some %2F too, a few twice), many treat a backslash as a slash, Java
 * servers drop ";params" from segments, nearly all merge repeated slashes,
 * many ignore a trailing slash or letter case.  So sluice matches rules on
 * a form in which every such spelling of one endpoint is the same string,
 * and refuses a path that any of these readings would resolve outside the
 * upstream's base path.  What is forwarded is the request target exactly
 * as the client sent it; only matching and refusing use this form.
 *
 * The canonical form of PATH (the part before '?'):
 *   1. percent-escapes decoded, all of them (%2F is a '/');
 *   2. '\' read as '/';
 *   3. in each segment, everything from the first ';' dropped;
 *   4. empty segments dropped (repeated slashes merged);
 *   5. a trailing '/' dropped (the root stays "/");
 *   6. with SL_PATH_FOLD_CASE, ASCII letters lower-cased.
 * Refused (the caller answers 400):
 *   - a malformed escape ('%' not followed by two hex digits);
 *   - a decoded NUL or other control character (0x00-0x1f, 0x7f);
 *   - a segment made only of dots ("." "..", "..."), after steps 1-3;
 *   - a decoded path that still holds an escape ("%252e", "le%2561d"): a
 *     server that decodes twice would read it as another character; and
 *     the overlong UTF-8 lead bytes 0xC0 and 0xC1 ("%c0%ae" is '.' to
 *     some old decoders).
 * Pure functions: no allocation, no I/O, thread-safe.
 */
#ifndef SL_PATH_H
#define SL_PATH_H

#include <stdbool.h>
#include <stddef.h>

#define SL_PATH_FOLD_CASE 0x1u

enum sl_path_status {
    SL_PATH_OK = 0,
    SL_PATH_BAD_ESCAPE = -1,      /* '%' without two hex digits */
    SL_PATH_CONTROL = -2,         /* a (decoded) control character */
    SL_PATH_DOT_SEGMENT = -3,     /* ".", ".." (in any spelling) */
    SL_PATH_DOUBLE_ENCODED = -4,  /* "%25XX", or an overlong UTF-8 byte */
    SL_PATH_NOT_ABSOLUTE = -5,    /* does not start with '/' */
};

/*
 * Canonicalize the LEN bytes at PATH (no query) into OUT, which must hold
 * at least LEN + 2 bytes; OUT is NUL-terminated and *OUT_LEN set.  When
 * TRAILING is not NULL it says whether the path ended in a separator
 * (before step 5), so a matcher can also try the form with a trailing '/'.
 * Returns SL_PATH_OK or a negative status (OUT is then unspecified).
 */
int sl_path_canonical(const char *path, size_t len, unsigned flags, char *out,
                      size_t *out_len, bool *trailing);

/*
 * Readings.  The canonical form is the most reduced reading of a path;
 * a provider may read less of it as structure.  Frameworks that route on
 * the raw path (Express, Go's ServeMux, Rails, ASP.NET) read "x%2Fy" as
 * one segment "x/y", some servers read '\' as a plain character, Tomcat
 * drops ";params" but not "%3B...", Express keeps empty segments.  A rule
 * that matches a path under one of these readings must be charged however
 * sluice itself would read it, or "lead-result/x%2Fy" (one segment to the
 * provider, two to the canonical form) dodges "lead-result/{lead}".  So
 * the proxy reads a path every way these choices combine and charges
 * every rule that any reading matches (sl_match).
 *
 * A reading is a set of the bits below; the canonical form is all of them.
 * Where a reading does not split at an escaped slash it keeps "%2F" in its
 * text (upper-case, so "%2f" reads the same); an unsplit '\' or "%5C" is
 * a '\'; an undropped ';' stays.  So no rule literal (decoded text) can
 * take an unsplit escape for a separator, and a capture holds one segment
 * as the provider sees it.
 */
#define SL_READ_ENC_SLASH  0x01u  /* "%2F" separates segments */
#define SL_READ_BACKSLASH  0x02u  /* a raw '\' separates segments */
#define SL_READ_ENC_BSLASH 0x04u  /* "%5C" separates segments */
#define SL_READ_PARAMS     0x08u  /* a raw ';' starts a dropped parameter */
#define SL_READ_ENC_PARAMS 0x10u  /* so does "%3B" */
#define SL_READ_MERGE      0x20u  /* empty segments are dropped */
#define SL_READ_CANONICAL  0x3fu
/* Every subset of the six bits: the most readings one path can have. */
#define SL_PATH_MAX_READINGS 64

/*
 * Read the LEN bytes at PATH (no query) under READING into OUT (at least
 * LEN + 2 bytes, NUL-terminated), folding case under SL_PATH_FOLD_CASE in
 * FLAGS.  TRAILING as for sl_path_canonical().  Returns SL_PATH_OK or the
 * same negative statuses, bar SL_PATH_DOUBLE_ENCODED, which only the
 * fully decoded form can show: call sl_path_canonical() first.
 * sl_path_read(..., SL_READ_CANONICAL, ...) is the canonical form.
 */
int sl_path_read(const char *path, size_t len, unsigned reading, unsigned flags,
                 char *out, size_t *out_len, bool *trailing);

/*
 * The reading bits that can change how PATH reads: the others make no
 * difference to it.  Reading under every subset of these (the others set)
 * gives every distinct reading; some may still coincide.
 */
unsigned sl_path_reading_bits(const char *path, size_t len);

/* Lower-case the ASCII letters of the LEN bytes at P (step 6 above). */
void sl_path_fold(char *p, size_t len);

/* A human sentence for a negative status. */
const char *sl_path_strerror(int status);

#endif
