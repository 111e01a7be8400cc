/*
 * sl_json — small helpers for writing JSON with jansson, shared by every
 * layer that answers in JSON (the admin API, the alert payloads).
 *
 * The common layer: includes nothing of limits/ or proxy/.
 */
#ifndef SL_JSON_H
#define SL_JSON_H

struct json_t;

/* S as a JSON string; bytes of S that are not UTF-8 become %XX.  Never
 * NULL: json_null() when out of memory.  The caller owns the reference. */
struct json_t *sl_json_text(const char *s);

#endif
