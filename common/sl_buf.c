/*
 * sl_buf — see sl_buf.h.  The capacity doubles from 256 bytes (enough for
 * most bodies and commands in one allocation), bounded by the cap plus the
 * terminating NUL.  A failure frees the memory at once: a buffer that can
 * never be used again should not hold on to megabytes meanwhile.
 */
#include "sl_buf.h"

#include "sl_assert.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SL_BUF_FIRST 256

void sl_buf_init(struct sl_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
    b->result = 0;
}

static int sl_buf_fail(struct sl_buf *b, int result)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->result = result;
    return result;
}

/* Room for N more bytes and the NUL.  Returns 0 or the failure. */
static int sl_buf_grow(struct sl_buf *b, size_t n)
{
    size_t need, cap;
    char *d;

    if (b->result != 0)
        return b->result;
    if (b->max != SL_BUF_UNCAPPED && (n > b->max || b->len > b->max - n))
        return sl_buf_fail(b, SL_BUF_TOOBIG);
    if (n >= SIZE_MAX - 1 - b->len)
        return sl_buf_fail(b, SL_BUF_NOMEM);
    need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : SL_BUF_FIRST;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (b->max != SL_BUF_UNCAPPED && cap > b->max + 1)
        cap = b->max + 1;
    d = realloc(b->data, cap);
    if (d == NULL)
        return sl_buf_fail(b, SL_BUF_NOMEM);
    b->data = d;
    b->cap = cap;
    return 0;
}

int sl_buf_add(struct sl_buf *b, const void *p, size_t n)
{
    if (sl_buf_grow(b, n) != 0)
        return b->result;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    SL_ASSERT(b->len < b->cap);
    SL_ASSERT(b->max == SL_BUF_UNCAPPED || b->len <= b->max);
    return 0;
}

int sl_buf_adds(struct sl_buf *b, const char *s)
{
    return sl_buf_add(b, s, strlen(s));
}

int sl_buf_printf(struct sl_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->result != 0)
        return b->result;
    /* First try in the room there is; most lines fit. */
    va_start(ap, fmt);
    n = vsnprintf(b->data != NULL ? b->data + b->len : NULL,
                  b->data != NULL ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return sl_buf_fail(b, SL_BUF_NOMEM);
    if (b->data != NULL && (size_t)n < b->cap - b->len) {
        if (b->max != SL_BUF_UNCAPPED && (size_t)n > b->max - b->len) {
            b->data[b->len] = '\0';
            return sl_buf_fail(b, SL_BUF_TOOBIG);
        }
        b->len += (size_t)n;
        return 0;
    }
    if (sl_buf_grow(b, (size_t)n) != 0)
        return b->result;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    SL_ASSERT(b->len < b->cap && b->data[b->len] == '\0');
    return 0;
}

void sl_buf_reset(struct sl_buf *b)
{
    b->len = 0;
    b->result = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

char *sl_buf_take(struct sl_buf *b, size_t *len)
{
    char *d = b->result == 0 ? b->data : NULL;

    if (len != NULL)
        *len = d != NULL ? b->len : 0;
    if (d == NULL)
        free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->result = 0;
    return d;
}

void sl_buf_free(struct sl_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->result = 0;
}
