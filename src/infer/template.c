/* template.c — the prompt-template subset of include/fedllm/template.h. An expression is parsed
 * and evaluated in one pass: a primary (a field path or a string literal), then filters left to
 * right. Values are a JSON node of the record or a string of our own. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/template.h"

typedef struct value {
    const cJSON *node; /* a node of the record, or NULL when text holds the value */
    fl_str text;
} value;

typedef struct parser {
    const char *p, *end; /* the expression between {{ and }} */
    const char *name;
    const cJSON *record; /* NULL: check only */
    fl_err *err;
} parser;

static void skip_space(parser *ps) {
    while (ps->p < ps->end && isspace((unsigned char)*ps->p))
        ps->p++;
}

static int fail(parser *ps, const char *what) {
    return fl_err_set(ps->err, FL_EINPUT, "%s: {{%.*s}}: %s", ps->name,
                      (int)(ps->end - ps->p < 80 ? ps->end - ps->p : 80), ps->p, what);
}

/* A string literal in single or double quotes (no escapes) into v->text. */
static int parse_literal(parser *ps, fl_str *out) {
    char q = *ps->p;
    const char *close = memchr(ps->p + 1, q, (size_t)(ps->end - ps->p - 1));
    if (!close) return fail(ps, "an unclosed string literal");
    int rc = fl_str_append(out, ps->p + 1, (size_t)(close - ps->p - 1), ps->err);
    if (!rc && !out->s) rc = fl_str_append(out, "", 0, ps->err);
    ps->p = close + 1;
    return rc;
}

/* A path a.b.0 looked up in the record. */
static int parse_path(parser *ps, value *v) {
    const cJSON *node = ps->record;
    int parts = 0;
    for (;;) {
        const char *start = ps->p;
        while (ps->p < ps->end && (isalnum((unsigned char)*ps->p) || *ps->p == '_'))
            ps->p++;
        if (ps->p == start) return fail(ps, "expected a field name, a.b path or \"literal\"");
        char key[128];
        size_t n = (size_t)(ps->p - start);
        if (n >= sizeof key) return fail(ps, "a field name over 127 bytes");
        memcpy(key, start, n);
        key[n] = 0;
        if (node) {
            const cJSON *next = NULL;
            if (cJSON_IsArray(node) && isdigit((unsigned char)key[0]))
                next = cJSON_GetArrayItem(node, atoi(key));
            else if (cJSON_IsObject(node))
                next = cJSON_GetObjectItemCaseSensitive(node, key);
            if (!next)
                return fl_err_set(ps->err, FL_EINPUT, "%s: the record has no field '%s'%s",
                                  ps->name, key, parts ? " at that path" : "");
            node = next;
        }
        parts++;
        if (ps->p < ps->end && *ps->p == '.') {
            ps->p++;
            continue;
        }
        break;
    }
    v->node = node;
    return FL_OK;
}

/* The text of a scalar node (a string as it is). */
static int scalar_text(parser *ps, const cJSON *node, fl_str *out) {
    if (cJSON_IsString(node))
        return fl_str_append(out, node->valuestring, strlen(node->valuestring), ps->err);
    if (cJSON_IsNull(node)) return fl_str_append(out, "", 0, ps->err);
    if (cJSON_IsArray(node) || cJSON_IsObject(node))
        return fl_err_set(ps->err, FL_EINPUT, "%s: a list or object rendered as text (use | join)",
                          ps->name);
    char *t = cJSON_PrintUnformatted(node);
    if (!t) return fl_err_set(ps->err, FL_ENOMEM, "out of memory");
    int rc = fl_str_append(out, t, strlen(t), ps->err);
    free(t);
    return rc;
}

/* v as text (v->node resolved into v->text). */
static int to_text(parser *ps, value *v) {
    if (!v->node) return FL_OK;
    int rc = scalar_text(ps, v->node, &v->text);
    if (!rc && !v->text.s) rc = fl_str_append(&v->text, "", 0, ps->err);
    v->node = NULL;
    return rc;
}

static int filter_join(parser *ps, value *v) {
    skip_space(ps);
    if (ps->p >= ps->end || *ps->p != '(') return fail(ps, "join takes a separator: join(\", \")");
    ps->p++;
    skip_space(ps);
    fl_str sep = {0};
    int rc = ps->p < ps->end && (*ps->p == '"' || *ps->p == '\'')
                 ? parse_literal(ps, &sep)
                 : fail(ps, "join takes a string literal");
    skip_space(ps);
    if (!rc && (ps->p >= ps->end || *ps->p != ')'))
        rc = fail(ps, "expected ) after join's separator");
    if (!rc) ps->p++;
    if (!rc && ps->record) {
        if (!cJSON_IsArray(v->node))
            rc = fl_err_set(ps->err, FL_EINPUT,
                            "%s: join of something "
                            "that is not a list",
                            ps->name);
        fl_str joined = {0};
        const cJSON *item;
        int first = 1;
        const cJSON *list = rc ? NULL : v->node;
        cJSON_ArrayForEach(item, list) {
            if (!first) rc = fl_str_append(&joined, sep.s, sep.n, ps->err);
            if (!rc) rc = scalar_text(ps, item, &joined);
            if (rc) break;
            first = 0;
        }
        if (!rc && !joined.s) rc = fl_str_append(&joined, "", 0, ps->err);
        fl_str_free(&v->text);
        v->text = joined;
        v->node = NULL;
    }
    fl_str_free(&sep);
    return rc;
}

static int apply_filter(parser *ps, value *v) {
    skip_space(ps);
    const char *start = ps->p;
    while (ps->p < ps->end && isalpha((unsigned char)*ps->p))
        ps->p++;
    size_t n = (size_t)(ps->p - start);
    if (n == 4 && memcmp(start, "join", 4) == 0) return filter_join(ps, v);
    int which = n == 4 && memcmp(start, "trim", 4) == 0    ? 1
                : n == 5 && memcmp(start, "upper", 5) == 0 ? 2
                : n == 5 && memcmp(start, "lower", 5) == 0 ? 3
                                                           : 0;
    if (!which) return ps->p = start, fail(ps, "expected a filter: join(SEP), trim, upper, lower");
    if (!ps->record) return FL_OK;
    int rc = to_text(ps, v);
    if (rc) return rc;
    char *s = v->text.s;
    if (which == 1) {
        size_t a = 0, b = v->text.n;
        while (a < b && isspace((unsigned char)s[a]))
            a++;
        while (b > a && isspace((unsigned char)s[b - 1]))
            b--;
        memmove(s, s + a, b - a);
        s[v->text.n = b - a] = 0;
    } else {
        for (size_t i = 0; i < v->text.n; i++)
            s[i] = (char)(which == 2 ? toupper((unsigned char)s[i]) : tolower((unsigned char)s[i]));
    }
    return FL_OK;
}

static int expression(parser *ps, fl_str *out) {
    value v = {0};
    skip_space(ps);
    int rc;
    if (ps->p < ps->end && (*ps->p == '"' || *ps->p == '\''))
        rc = parse_literal(ps, &v.text);
    else
        rc = parse_path(ps, &v);
    for (;;) {
        if (rc) break;
        skip_space(ps);
        if (ps->p >= ps->end) break;
        if (*ps->p != '|') {
            rc = fail(ps, "expected | and a filter, or }}");
            break;
        }
        ps->p++;
        rc = apply_filter(ps, &v);
    }
    if (!rc && ps->record) rc = to_text(ps, &v);
    if (!rc && ps->record) rc = fl_str_append(out, v.text.s, v.text.n, ps->err);
    fl_str_free(&v.text);
    return rc;
}

/* The end of the expression that starts at p: its "}}" outside string literals, or NULL. */
static const char *closing(const char *p) {
    char q = 0;
    for (; *p; p++) {
        if (q) {
            if (*p == q) q = 0;
        } else if (*p == '"' || *p == '\'') {
            q = *p;
        } else if (p[0] == '}' && p[1] == '}') {
            return p;
        }
    }
    return NULL;
}

static int render(const char *template, const cJSON *record, const char *name, fl_str *out,
                  fl_err *err) {
    const char *p = template;
    int rc = FL_OK;
    while (!rc && *p) {
        const char *open = strstr(p, "{{");
        size_t lit = open ? (size_t)(open - p) : strlen(p);
        if (out && lit) rc = fl_str_append(out, p, lit, err);
        if (rc || !open) break;
        const char *close = closing(open + 2);
        if (!close)
            return fl_err_set(err, FL_EINPUT, "%s: a {{ at byte %zu is never closed by }}", name,
                              (size_t)(open - template));
        parser ps = {open + 2, close, name, record, err};
        rc = expression(&ps, out);
        p = close + 2;
    }
    if (!rc && out && !out->s) rc = fl_str_append(out, "", 0, err);
    return rc;
}

int fl_template_render(const char *template, const cJSON *record, const char *name, fl_str *out,
                       fl_err *err) {
    if (!cJSON_IsObject(record))
        return fl_err_set(err, FL_EINPUT, "%s: the record is not a JSON object", name);
    return render(template, record, name, out, err);
}

int fl_template_check(const char *template, const char *name, fl_err *err) {
    return render(template, NULL, name, NULL, err);
}
