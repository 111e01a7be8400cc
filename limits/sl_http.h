/*
 * sl_http — pieces of HTTP's grammar (RFC 9110) that both sides of sluice
 * need: the configuration checks method and header names with them, the
 * proxy checks client request heads and upstream response heads.  Pure
 * functions on bytes, no HTTP library.
 */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Is C a token character (tchar: letters, digits, !#$%&'*+-.^_`|~)? */
bool sl_http_tchar(unsigned char c);

/*
 * A Content-Length value: the N bytes at V, optional spaces or tabs around
 * one decimal number no larger than INT64_MAX ("5, 6", "+5", "0x5", ""
 * are not).  Returns 0 and sets *OUT, or -1.
 */
int sl_http_content_length(const char *v, size_t n, int64_t *out);

#endif
