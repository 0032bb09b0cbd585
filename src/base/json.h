/* json.h: a strict JSON (RFC 8259) reader into an immutable tree. Used by tests (reference data) and
 * later by the HTTP API. Rejects trailing garbage, bad escapes, invalid UTF-8 in strings, nesting deeper
 * than 256, and input over the given size; numbers are parsed with correct rounding (strtod). */
#ifndef DUET_BASE_JSON_H
#define DUET_BASE_JSON_H

#include <stdbool.h>
#include <stddef.h>

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUM, JSON_STR, JSON_ARR, JSON_OBJ };

typedef struct json json;         /* a document: owns every value in it */
typedef struct json_val json_val; /* a value inside a document */

json *json_parse(const char *text, size_t len, char *err, size_t errlen);
json *json_load_file(const char *path, char *err, size_t errlen);
void json_free(json *doc);
const json_val *json_root(const json *doc);

int json_type_of(const json_val *v);
size_t json_len(const json_val *v);                       /* elements of an array/object, else 0 */
const json_val *json_at(const json_val *v, size_t i);     /* array element or object value; NULL if out of range */
const char *json_key_at(const json_val *v, size_t i);     /* object key; NULL if not an object */
const json_val *json_get(const json_val *obj, const char *key); /* NULL if absent or not an object */
double json_num(const json_val *v);                       /* 0 if not a number */
const char *json_str(const json_val *v, size_t *len);     /* NUL-terminated (may hold \u0000); NULL if not a string */
bool json_bool(const json_val *v);

#endif
