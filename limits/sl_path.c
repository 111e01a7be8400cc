/*
 * sl_path — canonical request paths (see sl_path.h for the form and why).
 *
 * Two passes over a buffer the caller provides, both in place and both
 * only ever shrinking the text: the first decodes escapes and folds '\'
 * into '/', the second walks segments, drops ";params" and empty
 * segments, refuses dot segments and lower-cases if asked.  The checks
 * that guard the upstream's base path (dot segments, double encoding) run
 * on the decoded text, so every spelling of "..", "%2e%2e", "%2E.",
 * "..;x", "..%5c" meets the same test.
 */
#include "sl_path.h"

#include <string.h>

static int sl_path_hex(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool sl_path_is_control(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* Pass one: decode escapes, '\' -> '/'.  Returns the length or a status. */
static long sl_path_decode(const char *path, size_t len, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)path[i];

        if (sl_path_is_control(c))
            return SL_PATH_CONTROL;
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= len)
                return SL_PATH_BAD_ESCAPE;
            hi = sl_path_hex((unsigned char)path[i + 1]);
            lo = sl_path_hex((unsigned char)path[i + 2]);
            if (hi < 0 || lo < 0)
                return SL_PATH_BAD_ESCAPE;
            c = (unsigned char)(hi * 16 + lo);
            if (sl_path_is_control(c))
                return SL_PATH_CONTROL;
            i += 2;
        }
        out[o++] = c == '\\' ? '/' : (char)c;
    }
    return (long)o;
}

/*
 * Does the decoded text still hold an escape ("%XX"), which a server that
 * decodes twice would read as another character ("le%2561d" is "lead" to
 * it, and could dodge a rule)?  Or an overlong UTF-8 lead byte (0xC0,
 * 0xC1: never valid UTF-8), which some old decoders read as '.' or '/'?
 */
static bool sl_path_double_encoded(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == 0xc0 || c == 0xc1)
            return true;
        if (c == '%' && i + 2 < len && sl_path_hex((unsigned char)p[i + 1]) >= 0 &&
            sl_path_hex((unsigned char)p[i + 2]) >= 0)
            return true;
    }
    return false;
}

/* A segment of dots (and spaces some servers trim), with at least one dot. */
static bool sl_path_dot_segment(const char *s, size_t n)
{
    bool dot = false;

    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.')
            dot = true;
        else if (s[i] != ' ')
            return false;
    }
    return dot;
}

void sl_path_fold(char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] >= 'A' && p[i] <= 'Z')
            p[i] = (char)(p[i] - 'A' + 'a');
}

int sl_path_canonical(const char *path, size_t len, unsigned flags, char *out,
                      size_t *out_len, bool *trailing)
{
    long dlen;
    size_t o = 0, i = 0, n;
    bool last_empty = false;

    if (len == 0) {
        memcpy(out, "/", 2);
        *out_len = 1;
        if (trailing != NULL)
            *trailing = false;
        return SL_PATH_OK;
    }
    if (path[0] != '/' && path[0] != '\\')
        return SL_PATH_NOT_ABSOLUTE;
    dlen = sl_path_decode(path, len, out);
    if (dlen < 0)
        return (int)dlen;
    n = (size_t)dlen;
    if (sl_path_double_encoded(out, n))
        return SL_PATH_DOUBLE_ENCODED;

    /* Pass two, in place: the write position never passes the read one. */
    while (i < n) {
        size_t start, end, keep;

        while (i < n && out[i] == '/')
            i++;
        if (i >= n) {
            last_empty = true;
            break;
        }
        start = i;
        while (i < n && out[i] != '/')
            i++;
        end = i;
        keep = start;
        while (keep < end && out[keep] != ';')
            keep++;
        if (keep == start) {
            last_empty = true;  /* ";x" alone: an empty segment */
            continue;
        }
        if (sl_path_dot_segment(out + start, keep - start))
            return SL_PATH_DOT_SEGMENT;
        out[o++] = '/';
        memmove(out + o, out + start, keep - start);
        o += keep - start;
        last_empty = false;
    }
    if (o == 0) {
        out[o++] = '/';
        last_empty = false;
    }
    out[o] = '\0';
    if (flags & SL_PATH_FOLD_CASE)
        sl_path_fold(out, o);
    *out_len = o;
    if (trailing != NULL)
        *trailing = last_empty;
    return SL_PATH_OK;
}

const char *sl_path_strerror(int status)
{
    switch (status) {
    case SL_PATH_OK:
        return "ok";
    case SL_PATH_BAD_ESCAPE:
        return "the path holds a malformed percent-escape";
    case SL_PATH_CONTROL:
        return "the path holds a control character (decoded or not)";
    case SL_PATH_DOT_SEGMENT:
        return "the path holds a \".\" or \"..\" segment (in some spelling)";
    case SL_PATH_DOUBLE_ENCODED:
        return "the path holds a double-encoded character (\"%25\" followed by "
               "an escape) or an overlong UTF-8 byte";
    case SL_PATH_NOT_ABSOLUTE:
        return "the path does not start with \"/\"";
    }
    return "the path is not acceptable";
}
