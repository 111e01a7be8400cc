/*
 * sl_json — see sl_json.h.
 */
#include "sl_json.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

json_t *sl_json_text(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    json_t *j = json_string(s);
    size_t n = strlen(s);
    char *out;

    if (j != NULL)
        return j;
    /* Not UTF-8 (a per value decoded from %E9, say): its bytes above
     * 0x7f written as %XX, so the key is still shown and still unique. */
    out = malloc(3 * n + 1);
    if (out == NULL)
        return json_null();
    n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x80 && *p != '%') {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = '\0';
    j = json_string(out);
    free(out);
    return j != NULL ? j : json_null();
}
