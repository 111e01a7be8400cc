/*
 * sl_http — HTTP grammar shared by configuration and proxy (see sl_http.h).
 */
#include "sl_http.h"

#include <string.h>

bool sl_http_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z') || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

int sl_http_content_length(const char *v, size_t n, int64_t *out)
{
    int64_t len = 0;

    while (n > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9' || len > (INT64_MAX - (v[i] - '0')) / 10)
            return -1;
        len = len * 10 + (v[i] - '0');
    }
    *out = len;
    return 0;
}
