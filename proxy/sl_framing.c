/*
 * sl_framing — what a request head must be before sluice trusts it.
 *
 * RFC 9112 leaves a proxy no room for guessing about framing: a request
 * whose length or headers can be read two ways is how requests are
 * smuggled past a rule.  So a head is refused (400, or 501 for a transfer
 * coding sluice cannot decode) and the connection closed when its framing
 * is in doubt: two or unreadable Content-Length values, both
 * Content-Length and Transfer-Encoding, a Transfer-Encoding other than
 * exactly "chunked", a missing or repeated Host on HTTP/1.1, a header name
 * that is not a token, a control character in a value, a method that is
 * not a token.  And what libmicrohttpd 0.9.75 hides (a NUL byte, a folded
 * line) is found by walking its in-place parse byte by byte.
 */
#include "sl_request.h"

#include "sl_http.h"

#include <string.h>
#include <strings.h>

/* ---- request hygiene (RFC 9112) ---- */

struct sl_framing {
    unsigned hosts;                 /* Host header lines */
    unsigned te_lines;              /* Transfer-Encoding header lines */
    bool te_chunked;                /* ... and its value is "chunked" */
    unsigned cl_lines;
    bool cl_bad;                    /* not a plain decimal, or they differ */
    int64_t cl;
    const char *bad;                /* the first problem found, or NULL */
};

static enum MHD_Result sl_framing_header(void *cls, enum MHD_ValueKind kind,
                                         const char *key, size_t key_size,
                                         const char *value, size_t value_size)
{
    struct sl_framing *f = cls;
    const char *v = value != NULL ? value : "";
    size_t vn = value != NULL ? value_size : 0;

    (void)kind;
    if (key_size == 0 || strlen(key) != key_size) {
        f->bad = "a header name is empty or holds a NUL byte";
        return MHD_NO;
    }
    for (size_t i = 0; i < key_size; i++) {
        if (!sl_http_tchar((unsigned char)key[i])) {
            f->bad = "a header name holds a character that is not allowed "
                     "(whitespace, a control character or a separator)";
            return MHD_NO;
        }
    }
    for (size_t i = 0; i < vn; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            f->bad = c == '\r' || c == '\n'
                         ? "a header value holds a bare CR or LF (line folding "
                           "or a broken line ending)"
                         : "a header value holds a NUL or control character";
            return MHD_NO;
        }
    }
    if (strcasecmp(key, "Host") == 0) {
        f->hosts++;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        /* Exactly "chunked": libmicrohttpd decodes chunks only then (it
         * keeps trailing whitespace), and anything else would reach us as
         * an unframed body. */
        f->te_lines++;
        f->te_chunked = vn == 7 && strncasecmp(v, "chunked", 7) == 0;
    } else if (strcasecmp(key, "Content-Length") == 0) {
        int64_t n = -1;
        if (sl_http_content_length(v, vn, &n) != 0 ||
            (f->cl_lines > 0 && n != f->cl))
            f->cl_bad = true;
        f->cl = n;
        f->cl_lines++;
    }
    return MHD_YES;
}

/* Past one line terminator as libmicrohttpd leaves it in place (CRLF or a
 * bare LF, overwritten with NULs) when the next line starts at NEXT. */
static bool sl_raw_terminator(const char *p, const char *next)
{
    return (next == p + 1 && p[0] == '\0') ||
           (next == p + 2 && p[0] == '\0' && p[1] == '\0');
}

struct sl_raw_walk {
    const char *pos;                /* where the next header line must start */
    const char *end;                /* end of the request head */
    bool bad;
};

static enum MHD_Result sl_raw_header(void *cls, enum MHD_ValueKind kind,
                                     const char *key, size_t key_size,
                                     const char *value, size_t value_size)
{
    struct sl_raw_walk *wk = cls;
    const char *p;

    (void)kind;
    /* The line starts right after the previous one's terminator. */
    if (!sl_raw_terminator(wk->pos, key) || value == NULL) {
        wk->bad = true;
        return MHD_NO;
    }
    /* The name, its colon (now a NUL), optional whitespace, the value. */
    p = key + key_size;
    if (p >= wk->end || *p != '\0') {
        wk->bad = true;
        return MHD_NO;
    }
    for (p++; p < value && (*p == ' ' || *p == '\t'); p++)
        ;
    if (p != value || value + value_size > wk->end) {
        wk->bad = true;
        return MHD_NO;
    }
    wk->pos = value + value_size;
    return MHD_YES;
}

/*
 * libmicrohttpd 0.9.75 reads a request head in place: the request line and
 * header lines stay where they arrived, their separators overwritten with
 * NULs, and every name and value points into that block.  Some of what it
 * tolerates is invisible in the strings it hands over: a NUL byte cuts a
 * target, method or value short (the rest is silently dropped), and a
 * folded (obs-fold) line is glued onto the header *name*.  Walking the
 * block, every byte must be accounted for by the strings and their
 * separators; anything left over is one of those and the request is
 * refused.  Returns NULL when the head is clean, or why it is not.  Only
 * for the libmicrohttpd release whose parser this describes.
 */
static const char *sl_req_check_raw_head(struct sl_request *req,
                                         const char *version)
{
    const union MHD_ConnectionInfo *ci;
    struct sl_raw_walk wk;
    const char *p, *start = req->method;
    size_t n;

    if (!req->w->raw_head_check || version == NULL || req->raw_uri == NULL)
        return NULL;
    ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (ci == NULL)
        return NULL;
    wk.end = start + ci->header_size;
    /* "METHOD" NUL [spaces] "target" NUL "version" */
    p = start + strlen(start);
    if (p >= wk.end || *p != '\0')
        return "the request line is malformed";
    for (p++; p < wk.end && *p == ' '; p++)
        ;
    if (p != req->raw_uri)
        return "the method holds a NUL byte";
    if (req->raw_uri + strlen(req->uri) != version - 1)
        return "the request target holds a NUL byte";
    wk.pos = version + strlen(version);
    wk.bad = false;
    MHD_get_connection_values_n(req->conn, MHD_HEADER_KIND, sl_raw_header, &wk);
    if (wk.bad)
        return "the request head holds a NUL byte, a folded (obs-fold) line "
               "or a malformed header line";
    /* The last line's terminator and the empty line, and nothing else. */
    n = (size_t)(wk.end - wk.pos);
    if (n < 2 || n > 4)
        return "the request head holds a NUL byte or a malformed line";
    for (p = wk.pos; p < wk.end; p++)
        if (*p != '\0')
            return "the request head holds a NUL byte or a malformed line";
    return NULL;
}

/*
 * Is the request framed beyond doubt, and its header block clean?  Returns
 * 0, or the status to answer (400, 501) with *WHY set; such an answer
 * closes the connection, since what follows on it cannot be trusted.
 */
unsigned sl_req_check_framing(struct sl_request *req, const char *version,
                                     const char **why)
{
    struct sl_framing f = {0};

    if (strlen(req->method) == 0) {
        *why = "the request has no method";
        return MHD_HTTP_BAD_REQUEST;
    }
    for (const char *m = req->method; *m; m++) {
        if (!sl_http_tchar((unsigned char)*m)) {
            *why = "the method holds a character that is not allowed";
            return MHD_HTTP_BAD_REQUEST;
        }
    }
    if ((*why = sl_req_check_raw_head(req, version)) != NULL)
        return MHD_HTTP_BAD_REQUEST;
    MHD_get_connection_values_n(req->conn, MHD_HEADER_KIND, sl_framing_header, &f);
    if (f.bad != NULL) {
        *why = f.bad;
        return MHD_HTTP_BAD_REQUEST;
    }
    if (version != NULL && strcmp(version, "HTTP/1.0") != 0 && f.hosts != 1) {
        *why = f.hosts == 0 ? "an HTTP/1.1 request needs a Host header"
                            : "the request has more than one Host header";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.hosts > 1) {
        *why = "the request has more than one Host header";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.te_lines > 0 && version != NULL && strcmp(version, "HTTP/1.0") == 0) {
        /* RFC 9112 6.1: faulty framing from an HTTP/1.0 client. */
        *why = "an HTTP/1.0 request cannot use Transfer-Encoding";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.te_lines > 0 && f.cl_lines > 0) {
        *why = "the request has both Transfer-Encoding and Content-Length";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.te_lines > 1 || (f.te_lines == 1 && !f.te_chunked)) {
        *why = "sluice accepts only \"Transfer-Encoding: chunked\" request bodies";
        return MHD_HTTP_NOT_IMPLEMENTED;
    }
    if (f.cl_bad) {
        *why = "the request's Content-Length is not one decimal number";
        return MHD_HTTP_BAD_REQUEST;
    }
    return 0;
}

