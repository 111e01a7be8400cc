/*
 * sl_buf — one growable byte buffer (curl's dynbuf), for every text or
 * binary the code builds piece by piece: a /metrics page, a state file, a
 * Redis command's arguments, a reject body, an admin request's body.
 *
 * Appending never reports failure piece by piece.  The first allocation
 * that fails, or the first append that would pass the buffer's cap, makes
 * the buffer *failed*: it is emptied and freed, every later append is a
 * no-op, and sl_buf_result() says why.  So a caller appends everything it
 * has and checks once at the end:
 *
 *     struct sl_buf b;
 *     sl_buf_init(&b, SL_BUF_UNCAPPED);
 *     sl_buf_add(&b, head, n);
 *     sl_buf_printf(&b, "%s=%d\n", name, v);
 *     if (sl_buf_result(&b) != 0) { sl_buf_free(&b); return -1; }
 *     body = sl_buf_take(&b, &len);
 *
 * The bytes are kept NUL-terminated (one byte past sl_buf_len(), never
 * counted), so a buffer of text is a C string as it stands.  A buffer owns
 * its memory until sl_buf_take() hands it to the caller.  No locking: one
 * buffer, one thread.  The common layer: includes nothing of limits/ or
 * proxy/.
 */
#ifndef SL_BUF_H
#define SL_BUF_H

#include <stddef.h>
#include <stdint.h>

/* No cap but memory.  A zeroed struct sl_buf is an empty uncapped buffer,
 * so one inside a calloc'ed object needs no sl_buf_init. */
#define SL_BUF_UNCAPPED 0

/* sl_buf_result() values. */
#define SL_BUF_NOMEM (-1)   /* an allocation failed */
#define SL_BUF_TOOBIG (-2)  /* an append would have passed the cap */

struct sl_buf {
    char *data;   /* NULL until the first byte; NUL-terminated after */
    size_t len;   /* bytes held, the NUL not counted */
    size_t cap;   /* bytes allocated */
    size_t max;   /* the most LEN may reach; 0: no cap */
    int result;   /* 0, or the sticky SL_BUF_NOMEM / SL_BUF_TOOBIG */
};

/* An empty buffer that may hold up to MAX bytes (SL_BUF_UNCAPPED: any). */
void sl_buf_init(struct sl_buf *b, size_t max);

/* Append N bytes of P / the string S / printf's output.  Each returns the
 * buffer's result after the append: 0, or the sticky failure. */
int sl_buf_add(struct sl_buf *b, const void *p, size_t n);
int sl_buf_adds(struct sl_buf *b, const char *s);
int sl_buf_printf(struct sl_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* 0, or why an append failed (SL_BUF_NOMEM, SL_BUF_TOOBIG). */
static inline int sl_buf_result(const struct sl_buf *b)
{
    return b->result;
}

static inline size_t sl_buf_len(const struct sl_buf *b)
{
    return b->len;
}

/* The bytes ("" when empty); valid until the next append or free. */
static inline const char *sl_buf_str(const struct sl_buf *b)
{
    return b->data != NULL ? b->data : "";
}

/* Empty it and clear a failure; the memory is kept for reuse. */
void sl_buf_reset(struct sl_buf *b);

/* Hand the bytes to the caller, who frees them with free(): NULL when the
 * buffer failed or never allocated (an append of 0 bytes allocates, so
 * that "" can be handed over).  *LEN (if not NULL) gets their length.  The
 * buffer is left empty, as after sl_buf_init with the same cap. */
char *sl_buf_take(struct sl_buf *b, size_t *len);

/* Free the memory; the buffer is left empty and may be used again. */
void sl_buf_free(struct sl_buf *b);

#endif
