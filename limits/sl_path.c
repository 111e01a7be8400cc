/*
 * sl_path — canonical request paths (see sl_path.h for the form and why).
 *
 * A reading walks the raw path once, unit by unit (a byte or an escape),
 * and writes segments into a buffer the caller provides, never longer
 * than the input: what the reading's bits make a separator ends a
 * segment, a parameter start drops the rest of it, and a segment of dots
 * is refused.  The canonical form is the reading with every bit set, after
 * a first pass that decodes everything to look for a second layer of
 * escapes.  So every spelling of "..", "%2e%2e", "%2E.", "..;x", "..%5c"
 * meets the same test, and every reading a provider may make of a path
 * comes from the same walk.
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

/* What one unit of a raw path is under a reading. */
enum sl_unit {
    SL_UNIT_BYTES,  /* text of the segment (emitted) */
    SL_UNIT_SEP,    /* a segment separator */
    SL_UNIT_PARAM,  /* the start of a dropped ";param" */
};

/*
 * Read the unit at PATH[*I] under READING and step past it: a separator,
 * a parameter start, or 1 to 3 bytes to emit into EMIT (*NEMIT).
 * Returns SL_PATH_OK or a negative status.
 */
static int sl_path_unit(const char *path, size_t len, size_t *i, unsigned reading,
                        char emit[3], size_t *nemit, enum sl_unit *kind)
{
    unsigned char c = (unsigned char)path[*i];
    bool escaped = false;

    *kind = SL_UNIT_BYTES;
    *nemit = 1;
    if (sl_path_is_control(c))
        return SL_PATH_CONTROL;
    if (c == '%') {
        int hi, lo;
        if (*i + 2 >= len)
            return SL_PATH_BAD_ESCAPE;
        hi = sl_path_hex((unsigned char)path[*i + 1]);
        lo = sl_path_hex((unsigned char)path[*i + 2]);
        if (hi < 0 || lo < 0)
            return SL_PATH_BAD_ESCAPE;
        c = (unsigned char)(hi * 16 + lo);
        if (sl_path_is_control(c))
            return SL_PATH_CONTROL;
        escaped = true;
        *i += 3;
    } else {
        *i += 1;
    }
    if (c == '/' && (!escaped || (reading & SL_READ_ENC_SLASH))) {
        *kind = SL_UNIT_SEP;
    } else if (c == '/') {
        memcpy(emit, "%2F", 3);
        *nemit = 3;
        return SL_PATH_OK;
    } else if (c == '\\' &&
               (reading & (escaped ? SL_READ_ENC_BSLASH : SL_READ_BACKSLASH))) {
        *kind = SL_UNIT_SEP;
    } else if (c == ';' &&
               (reading & (escaped ? SL_READ_ENC_PARAMS : SL_READ_PARAMS))) {
        *kind = SL_UNIT_PARAM;
    }
    emit[0] = (char)c;
    return SL_PATH_OK;
}

int sl_path_read(const char *path, size_t len, unsigned reading, unsigned flags,
                 char *out, size_t *out_len, bool *trailing)
{
    size_t i = 0, o = 0, mark = 0;
    bool in_param = false, last_empty = false;
    char emit[3];
    size_t nemit;
    enum sl_unit kind;
    int rc;

    if (len == 0) {
        memcpy(out, "/", 2);
        *out_len = 1;
        if (trailing != NULL)
            *trailing = false;
        return SL_PATH_OK;
    }
    rc = sl_path_unit(path, len, &i, reading, emit, &nemit, &kind);
    if (rc != SL_PATH_OK)
        return rc;
    if (kind != SL_UNIT_SEP)
        return SL_PATH_NOT_ABSOLUTE;
    /* A segment is written as '/' and its text from MARK on; it is taken
     * back when it ends empty and empties are merged, or ends the path. */
    out[o++] = '/';
    for (;;) {
        bool end = i >= len;

        if (!end) {
            rc = sl_path_unit(path, len, &i, reading, emit, &nemit, &kind);
            if (rc != SL_PATH_OK)
                return rc;
        }
        if (end || kind == SL_UNIT_SEP) {
            size_t seg = o - mark - 1;

            if (sl_path_dot_segment(out + mark + 1, seg))
                return SL_PATH_DOT_SEGMENT;
            last_empty = seg == 0;
            if (seg == 0 && (end || (reading & SL_READ_MERGE)))
                o = mark;
            if (end)
                break;
            mark = o;
            out[o++] = '/';
            in_param = false;
            continue;
        }
        if (in_param)
            continue;
        if (kind == SL_UNIT_PARAM) {
            in_param = true;
            continue;
        }
        memcpy(out + o, emit, nemit);
        o += nemit;
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

int sl_path_canonical(const char *path, size_t len, unsigned flags, char *out,
                      size_t *out_len, bool *trailing)
{
    long dlen;

    if (len > 0 && path[0] != '/' && path[0] != '\\')
        return SL_PATH_NOT_ABSOLUTE;
    /* The fully decoded text first: only it shows a second layer of
     * escapes.  It is then overwritten by the canonical reading. */
    dlen = sl_path_decode(path, len, out);
    if (dlen < 0)
        return (int)dlen;
    if (sl_path_double_encoded(out, (size_t)dlen))
        return SL_PATH_DOUBLE_ENCODED;
    return sl_path_read(path, len, SL_READ_CANONICAL, flags, out, out_len, trailing);
}

/* Does PATH hold the escape of C ("%2F" or "%2f" for '/')? */
static bool sl_path_has_escape(const char *path, size_t len, unsigned char c)
{
    for (size_t i = 0; i + 2 < len; i++)
        if (path[i] == '%' && sl_path_hex((unsigned char)path[i + 1]) == c / 16 &&
            sl_path_hex((unsigned char)path[i + 2]) == c % 16)
            return true;
    return false;
}

unsigned sl_path_reading_bits(const char *path, size_t len)
{
    unsigned bits = 0;

    if (memchr(path, '\\', len) != NULL)
        bits |= SL_READ_BACKSLASH;
    if (memchr(path, ';', len) != NULL)
        bits |= SL_READ_PARAMS;
    if (sl_path_has_escape(path, len, '/'))
        bits |= SL_READ_ENC_SLASH;
    if (sl_path_has_escape(path, len, '\\'))
        bits |= SL_READ_ENC_BSLASH;
    if (sl_path_has_escape(path, len, ';'))
        bits |= SL_READ_ENC_PARAMS;
    /* Any of those can leave an empty segment, and so can "//". */
    if (bits != 0 || memmem(path, len, "//", 2) != NULL)
        bits |= SL_READ_MERGE;
    return bits;
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
