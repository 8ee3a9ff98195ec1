/* job.c — the job file: YAML text to a validated fl_job, with every problem reported at once.
 *
 * Two passes. The first reads libyaml's events into a small tree of scalars, lists and mappings
 * that keeps each node's line; it stops at the first YAML syntax error, an alias, a second
 * document or nesting deeper than FL_JOB_MAX_DEPTH (libyaml's scanner is quadratic in flow
 * nesting, so a hostile "[[[[..." must be cut short while it is read, not after). The second walks
 * the tree along the schema, section by section, filling the fl_job and collecting problems
 * ("FILE:LINE: key.path: what was expected") instead of stopping at the first; at the end they are
 * sorted by line so that the user reads them in file order. The walk only ever descends into keys
 * the schema knows, so its depth is fixed whatever the file holds.
 *
 * Sizes: the file is at most FL_JOB_MAX_BYTES, so the tree has at most about as many nodes as the
 * file has bytes; problems beyond MAX_KEPT_PROBLEMS are only counted. */
#define _GNU_SOURCE
#include "fedllm/job.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "fedllm/config.h"
#include "fedllm/data.h"
#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/train.h"

#define MAX_KEPT_PROBLEMS 10000 /* problems kept for sorting; the rest are counted */
#define IPC_PATH_MAX      107   /* sun_path holds 108 bytes with its NUL */
#define KEY_SUFFIX_BYTES  4     /* ".pub" / ".key" after a key prefix */

/* ---- the tree ------------------------------------------------------------------------------ */

typedef enum { YN_SCALAR = 0, YN_SEQ, YN_MAP } yn_kind;

typedef struct ynode {
    yn_kind kind;
    int line;     /* 1-based */
    int key_line; /* a mapping's value: its key's line (where a missing key is reported) */
    int plain;    /* scalar written without quotes or a str tag: it may be a number, bool or null */
    char *text;   /* scalar value, NUL-terminated */
    size_t len;   /* bytes in text (differs from strlen when the YAML had a "\0" escape) */
    int *kids;    /* list items, or mapping keys and values alternating */
    int n_kids, cap_kids;
} ynode;

typedef struct ydoc {
    ynode *nodes;
    int n, cap;
    int root; /* -1: the file holds no document or an empty one */
} ydoc;

/* ---- problems ------------------------------------------------------------------------------ */

typedef struct problem {
    int line; /* 0: not tied to a line */
    int seq;  /* order of reporting, to keep the sort stable */
    char *text;
} problem;

typedef struct job_ctx {
    const char *file; /* the job file, as named in messages */
    const ydoc *doc;
    char dir[FL_JOB_PATH_MAX]; /* the job file's folder, "" for the working directory */
    problem *list;
    int n, cap;
    long dropped; /* problems past MAX_KEPT_PROBLEMS */
    int oom;
} job_ctx;

static void report(job_ctx *c, int line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(job_ctx *c, int line, const char *key, const char *fmt, ...) {
    if (c->n == MAX_KEPT_PROBLEMS) {
        c->dropped++;
        return;
    }
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 16;
        problem *grown = realloc(c->list, (size_t)cap * sizeof *grown);
        if (!grown) {
            c->oom = 1;
            return;
        }
        c->list = grown, c->cap = cap;
    }
    char msg[768], text[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *sep = key && *key ? ": " : "";
    if (line > 0)
        snprintf(text, sizeof text, "%s:%d: %s%s%s", c->file, line, key ? key : "", sep, msg);
    else
        snprintf(text, sizeof text, "%s: %s%s%s", c->file, key ? key : "", sep, msg);
    for (char *t = text; *t; t++) /* one line, whatever the file held */
        if ((unsigned char)*t < 0x20 || *t == 0x7f) *t = '?';
    char *copy = strdup(text);
    if (!copy) {
        c->oom = 1;
        return;
    }
    c->list[c->n] = (problem){line, c->n, copy};
    c->n++;
}

static int problem_cmp(const void *a, const void *b) {
    const problem *x = a, *y = b;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorts the problems into file order and hands them over: FL_OK when there are none, else
 * FL_EINPUT (FL_ENOMEM if memory ran out) with the first in err and all in *out. */
static int finish_problems(job_ctx *c, char **out, fl_err *err) {
    if (out) *out = NULL;
    int rc = c->oom ? FL_ENOMEM : c->n ? FL_EINPUT : FL_OK;
    if (rc == FL_ENOMEM)
        fl_err_set(err, FL_ENOMEM, "%s: out of memory validating the job", c->file);
    if (c->n) {
        qsort(c->list, (size_t)c->n, sizeof *c->list, problem_cmp);
        if (rc == FL_EINPUT) fl_err_set(err, FL_EINPUT, "%s", c->list[0].text);
        long more = c->dropped + (c->n > FL_JOB_MAX_PROBLEMS ? c->n - FL_JOB_MAX_PROBLEMS : 0);
        int shown = c->n < FL_JOB_MAX_PROBLEMS ? c->n : FL_JOB_MAX_PROBLEMS;
        size_t bytes = 128 + strlen(c->file);
        for (int i = 0; i < shown; i++)
            bytes += strlen(c->list[i].text) + 1;
        char *all = out ? malloc(bytes) : NULL;
        if (all) {
            size_t used = 0;
            for (int i = 0; i < shown; i++)
                used += (size_t)sprintf(all + used, "%s\n", c->list[i].text);
            if (more) sprintf(all + used, "%s: ... and %ld more problems\n", c->file, more);
            *out = all;
        }
    }
    for (int i = 0; i < c->n; i++)
        free(c->list[i].text);
    free(c->list);
    c->list = NULL, c->n = c->cap = 0;
    return rc;
}

/* ---- reading YAML into the tree ------------------------------------------------------------- */

static void ydoc_free(ydoc *d) {
    for (int i = 0; i < d->n; i++) {
        free(d->nodes[i].text);
        free(d->nodes[i].kids);
    }
    free(d->nodes);
    *d = (ydoc){.root = -1};
}

static int ydoc_add(ydoc *d, yn_kind kind, int line) {
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 64;
        ynode *grown = realloc(d->nodes, (size_t)cap * sizeof *grown);
        if (!grown) return -1;
        d->nodes = grown, d->cap = cap;
    }
    d->nodes[d->n] = (ynode){.kind = kind, .line = line};
    return d->n++;
}

static int ynode_append(ynode *parent, int kid) {
    if (parent->n_kids == parent->cap_kids) {
        int cap = parent->cap_kids ? parent->cap_kids * 2 : 4;
        int *grown = realloc(parent->kids, (size_t)cap * sizeof *grown);
        if (!grown) return -1;
        parent->kids = grown, parent->cap_kids = cap;
    }
    parent->kids[parent->n_kids++] = kid;
    return 0;
}

/* The 1-based line of byte offset in text (for reader errors, which carry no mark). */
static int line_of_offset(const char *text, size_t len, size_t offset) {
    int line = 1;
    for (size_t i = 0; i < offset && i < len; i++)
        line += text[i] == '\n';
    return line;
}

static int line_has_tab(const char *text, size_t len, int line) {
    size_t i = 0;
    for (int l = 1; l < line && i < len; i++)
        l += text[i] == '\n';
    for (; i < len && text[i] != '\n'; i++)
        if (text[i] == '\t') return 1;
    return 0;
}

static void report_syntax(job_ctx *c, const yaml_parser_t *p, const char *text, size_t len) {
    const char *problem = p->problem ? p->problem : "unreadable YAML";
    if (p->error == YAML_READER_ERROR) {
        report(c, line_of_offset(text, len, p->problem_offset), NULL,
               "not valid UTF-8 text: %s at byte %zu", problem, p->problem_offset);
        return;
    }
    int line = (int)p->problem_mark.line + 1;
    const char *tab =
        line_has_tab(text, len, line) ? " (tabs are not allowed for indentation)" : "";
    if (p->context)
        report(c, line, NULL, "YAML syntax error: %s (%s at line %d)%s", problem, p->context,
               (int)p->context_mark.line + 1, tab);
    else
        report(c, line, NULL, "YAML syntax error: %s%s", problem, tab);
}

/* Builds the tree of the file's one document. Returns 0, or -1 after reporting why the file
 * cannot be walked (syntax, alias, depth, a second document, memory). */
static int ydoc_read(ydoc *d, job_ctx *c, const char *text, size_t len) {
    *d = (ydoc){.root = -1};
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        c->oom = 1;
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int stack[FL_JOB_MAX_DEPTH], depth = 0, documents = 0, rc = 0, done = 0;
    while (!done && rc == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            report_syntax(c, &p, text, len);
            rc = -1;
            break;
        }
        int line = (int)ev.start_mark.line + 1, node = -2;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_DOCUMENT_START_EVENT:
            if (++documents > 1) {
                report(c, line, NULL, "a second YAML document (after ---): a job file holds one");
                rc = -1;
            }
            break;
        case YAML_ALIAS_EVENT:
            report(c, line, NULL,
                   "YAML alias *%s: aliases are not supported in a job file; write "
                   "the value out",
                   (const char *)ev.data.alias.anchor);
            rc = -1;
            break;
        case YAML_SCALAR_EVENT: {
            node = ydoc_add(d, YN_SCALAR, line);
            if (node < 0) break;
            ynode *n = &d->nodes[node];
            const char *tag = (const char *)ev.data.scalar.tag;
            n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                       !(tag && strcmp(tag, YAML_STR_TAG) == 0);
            n->len = ev.data.scalar.length;
            n->text = malloc(n->len + 1);
            if (!n->text) {
                node = -1;
                break;
            }
            memcpy(n->text, ev.data.scalar.value, n->len);
            n->text[n->len] = 0;
            break;
        }
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (depth == FL_JOB_MAX_DEPTH) {
                report(c, line, NULL, "nested deeper than %d levels (a job file needs 4)",
                       FL_JOB_MAX_DEPTH);
                rc = -1;
                break;
            }
            node = ydoc_add(d, ev.type == YAML_SEQUENCE_START_EVENT ? YN_SEQ : YN_MAP, line);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0) depth--;
            break;
        default: break;
        }
        if (node == -1) {
            c->oom = 1;
            rc = -1;
        } else if (node >= 0) {
            ynode *parent = depth ? &d->nodes[stack[depth - 1]] : NULL;
            if (parent && parent->kind == YN_MAP && parent->n_kids % 2 == 1)
                d->nodes[node].key_line = d->nodes[parent->kids[parent->n_kids - 1]].line;
            if (!parent)
                d->root = node;
            else if (ynode_append(parent, node) != 0) {
                c->oom = 1;
                rc = -1;
            }
            if (rc == 0 && d->nodes[node].kind != YN_SCALAR) stack[depth++] = node;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return rc;
}

/* ---- typed access to the tree --------------------------------------------------------------- */

static const ynode *at(const job_ctx *c, int node) { return &c->doc->nodes[node]; }

/* Where a mapping's missing keys are reported: the line of the key that holds it. */
static int map_line(const job_ctx *c, int map) {
    const ynode *m = at(c, map);
    return m->key_line ? m->key_line : m->line;
}

static int is_null(const ynode *n) {
    if (n->kind != YN_SCALAR || !n->plain) return 0;
    const char *t = n->text;
    return !*t || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL");
}

/* "a mapping", "a list" or the scalar quoted (at most 40 characters, control bytes as '?'). */
static void describe(const ynode *n, char *out, size_t size) {
    if (n->kind != YN_SCALAR) {
        snprintf(out, size, "%s", n->kind == YN_MAP ? "a mapping" : "a list");
        return;
    }
    char shown[48];
    size_t k = 0;
    for (size_t i = 0; i < n->len && k < 40; i++)
        shown[k++] = (unsigned char)n->text[i] < 0x20 || n->text[i] == 0x7f ? '?' : n->text[i];
    shown[k] = 0;
    snprintf(out, size, "'%s'%s", shown, n->len > 40 ? "..." : "");
}

static void key_path(char *out, size_t size, const char *path, const char *key) {
    snprintf(out, size, "%s%s%s", path, *path ? "." : "", key);
}

static void report_type(job_ctx *c, int node, const char *kp, const char *expect) {
    char got[64];
    describe(at(c, node), got, sizeof got);
    report(c, at(c, node)->line, kp, "expected %s, got %s", expect, got);
}

/* Levenshtein distance, for "did you mean" (both strings are short: keys of the schema). */
static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40 || la > lb + 2 || lb > la + 2) return 99; /* never a suggestion */
    int row[41];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up, row[j] = best;
        }
    }
    return row[lb];
}

static void join_names(char *out, size_t size, const char *const *names) {
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; names[i] && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%s", i ? ", " : "", names[i]);
}

/* Checks that node is a mapping whose keys are plain names from `allowed`, each at most once.
 * Returns 1 when it is a mapping (even with bad keys: its good keys are still read). */
static int check_map(job_ctx *c, int node, const char *path, const char *const *allowed,
                     const char *expect) {
    const ynode *m = at(c, node);
    if (m->kind != YN_MAP) {
        report_type(c, node, path, expect);
        return 0;
    }
    int first_line[32] = {0};
    for (int i = 0; i + 1 < m->n_kids; i += 2) {
        const ynode *k = at(c, m->kids[i]);
        if (k->kind != YN_SCALAR || is_null(k) || strlen(k->text) != k->len) {
            char got[64];
            describe(k, got, sizeof got);
            report(c, k->line, path, "a key must be a plain name, got %s", got);
            continue;
        }
        char kp[256];
        key_path(kp, sizeof kp, path, k->text);
        int found = -1, suggest = -1, best = 3;
        for (int a = 0; allowed[a]; a++) {
            if (!strcmp(k->text, allowed[a])) found = a;
            int dist = edit_distance(k->text, allowed[a]);
            if (dist < best && dist < (int)strlen(allowed[a])) best = dist, suggest = a;
        }
        if (found >= 0 && first_line[found])
            report(c, k->line, kp, "duplicate key (first at line %d)", first_line[found]);
        else if (found >= 0)
            first_line[found] = k->line;
        else if (suggest >= 0)
            report(c, k->line, kp, "unknown key (did you mean %s?)", allowed[suggest]);
        else {
            char names[512];
            join_names(names, sizeof names, allowed);
            report(c, k->line, kp, "unknown key (expected one of: %s)", names);
        }
    }
    return 1;
}

/* The value of key in mapping map (its first occurrence), or -1 when absent or null. A missing
 * required key is reported at the mapping's line, a null one at its own. */
static int value_of(job_ctx *c, int map, const char *path, const char *key, int required,
                    const char *expect) {
    const ynode *m = at(c, map);
    int value = -1;
    for (int i = 0; i + 1 < m->n_kids && value < 0; i += 2) {
        const ynode *k = at(c, m->kids[i]);
        if (k->kind == YN_SCALAR && !strcmp(k->text, key)) value = m->kids[i + 1];
    }
    char kp[256];
    key_path(kp, sizeof kp, path, key);
    if (value >= 0 && is_null(at(c, value))) {
        if (required) report(c, at(c, value)->line, kp, "missing value (expected %s)", expect);
        return -1;
    }
    if (value < 0 && required) report(c, map_line(c, map), kp, "missing (expected %s)", expect);
    return value;
}

static int present(job_ctx *c, int map, const char *key) {
    return value_of(c, map, "", key, 0, "") >= 0;
}

static int parse_integer(const ynode *n, long long *out) {
    if (n->kind != YN_SCALAR || !n->plain) return 0;
    const char *p = n->text + (n->text[0] == '+' || n->text[0] == '-');
    if (!*p || strspn(p, "0123456789") != strlen(p)) return 0;
    errno = 0;
    *out = strtoll(n->text, NULL, 10);
    return errno ? -1 : 1;
}

/* A plain decimal number: [+-] digits [. digits] [e [+-] digits] (at least one digit before the
 * exponent); YAML's .inf and .nan, hex and the like are not numbers here. */
static int parse_number(const ynode *n, double *out) {
    if (n->kind != YN_SCALAR || !n->plain) return 0;
    const char *p = n->text + (n->text[0] == '+' || n->text[0] == '-');
    size_t digits = strspn(p, "0123456789");
    p += digits;
    if (*p == '.') {
        size_t frac = strspn(p + 1, "0123456789");
        digits += frac, p += 1 + frac;
    }
    if (!digits) return 0;
    if (*p == 'e' || *p == 'E') {
        p += 1 + (p[1] == '+' || p[1] == '-');
        size_t exp = strspn(p, "0123456789");
        if (!exp) return 0;
        p += exp;
    }
    if (*p) return 0;
    *out = strtod(n->text, NULL);
    return isfinite(*out) ? 1 : -1;
}

static void int_expectation(char *out, size_t size, long long lo, long long hi) {
    if (hi >= INT_MAX)
        snprintf(out, size, "an integer >= %lld", lo);
    else
        snprintf(out, size, "an integer from %lld to %lld", lo, hi);
}

/* Reads an integer in [lo, hi]; 1 when stored in *out, 0 when absent or reported. */
static int get_int(job_ctx *c, int map, const char *path, const char *key, int required,
                   long long lo, long long hi, int *out) {
    char expect[96], kp[256];
    int_expectation(expect, sizeof expect, lo, hi);
    key_path(kp, sizeof kp, path, key);
    int v = value_of(c, map, path, key, required, expect);
    if (v < 0) return 0;
    long long value = 0;
    int ok = parse_integer(at(c, v), &value);
    if (ok == 0) {
        report_type(c, v, kp, expect);
        return 0;
    }
    if (ok < 0 || value < lo || value > hi) {
        report(c, at(c, v)->line, kp, "%s is out of range (expected %s)", at(c, v)->text, expect);
        return 0;
    }
    *out = (int)value;
    return 1;
}

static int get_u64(job_ctx *c, int map, const char *path, const char *key, uint64_t *out) {
    const char *expect = "an integer from 0 to 18446744073709551615";
    char kp[256];
    key_path(kp, sizeof kp, path, key);
    int v = value_of(c, map, path, key, 0, expect);
    if (v < 0) return 0;
    const ynode *n = at(c, v);
    const char *p = n->text + (n->text[0] == '+');
    if (n->kind != YN_SCALAR || !n->plain || !*p || strspn(p, "0123456789") != strlen(p)) {
        report_type(c, v, kp, expect);
        return 0;
    }
    errno = 0;
    unsigned long long value = strtoull(p, NULL, 10);
    if (errno) {
        report(c, n->line, kp, "%s is out of range (expected %s)", n->text, expect);
        return 0;
    }
    *out = value;
    return 1;
}

/* Interval flags for get_num. */
enum { LO_OPEN = 1, HI_OPEN = 2 };

/* Reads a number in the interval [lo, hi] (ends open per flags; hi = INFINITY: no bound). */
static int get_num(job_ctx *c, int map, const char *path, const char *key, int required, double lo,
                   double hi, unsigned flags, double *out) {
    char expect[96], kp[256];
    if (isinf(hi))
        snprintf(expect, sizeof expect, "a number %s %g", flags & LO_OPEN ? ">" : ">=", lo);
    else
        snprintf(expect, sizeof expect, "a number in %c%g, %g%c", flags & LO_OPEN ? '(' : '[', lo,
                 hi, flags & HI_OPEN ? ')' : ']');
    key_path(kp, sizeof kp, path, key);
    int v = value_of(c, map, path, key, required, expect);
    if (v < 0) return 0;
    double value = 0;
    int ok = parse_number(at(c, v), &value);
    if (ok == 0) {
        report_type(c, v, kp, expect);
        return 0;
    }
    int below = flags & LO_OPEN ? value <= lo : value < lo;
    int above = flags & HI_OPEN ? value >= hi : value > hi;
    if (ok < 0 || below || above) {
        report(c, at(c, v)->line, kp, "%s is out of range (expected %s)", at(c, v)->text, expect);
        return 0;
    }
    *out = value;
    return 1;
}

static int get_float(job_ctx *c, int map, const char *path, const char *key, int required,
                     double lo, double hi, unsigned flags, float *out) {
    double value;
    if (!get_num(c, map, path, key, required, lo, hi, flags, &value)) return 0;
    *out = (float)value;
    return 1;
}

/* Reads a string (any non-null scalar) shorter than size bytes; *line gets its line. */
static int get_str(job_ctx *c, int map, const char *path, const char *key, int required, char *out,
                   size_t size, const char *expect, int *line) {
    char kp[256];
    key_path(kp, sizeof kp, path, key);
    int v = value_of(c, map, path, key, required, expect);
    if (v < 0) return 0;
    const ynode *n = at(c, v);
    if (n->kind != YN_SCALAR) {
        report_type(c, v, kp, expect);
        return 0;
    }
    if (strlen(n->text) != n->len) {
        report(c, n->line, kp, "contains a NUL character (expected %s)", expect);
        return 0;
    }
    if (n->len >= size) {
        report(c, n->line, kp, "longer than %zu characters (expected %s)", size - 1, expect);
        return 0;
    }
    memcpy(out, n->text, n->len + 1);
    if (line) *line = n->line;
    return 1;
}

/* Reads one of choices; *index gets its position. */
static int get_choice(job_ctx *c, int map, const char *path, const char *key,
                      const char *const *choices, int *index) {
    char names[256], expect[300], value[256], kp[256];
    join_names(names, sizeof names, choices);
    snprintf(expect, sizeof expect, "one of: %s", names);
    key_path(kp, sizeof kp, path, key);
    int line = 0;
    if (!get_str(c, map, path, key, 0, value, sizeof value, expect, &line)) return 0;
    for (int i = 0; choices[i]; i++)
        if (!strcmp(value, choices[i])) {
            *index = i;
            return 1;
        }
    char got[64];
    describe(at(c, value_of(c, map, path, key, 0, "")), got, sizeof got);
    report(c, line, kp, "expected %s, got %s", expect, got);
    return 0;
}

static int name_chars_ok(const char *s, const char *extra) {
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr(extra, *s)))
            return 0;
    return 1;
}

/* Joins the job file's folder and a path from the file. 0, or -1 when it does not fit. */
static int resolve_path(const job_ctx *c, const char *value, char *out, size_t size) {
    size_t dir_len = value[0] == '/' ? 0 : strlen(c->dir), len = strlen(value);
    size_t slash = dir_len && c->dir[dir_len - 1] != '/';
    if (dir_len + slash + len >= size) return -1;
    memcpy(out, c->dir, dir_len);
    if (slash) out[dir_len] = '/';
    memcpy(out + dir_len + slash, value, len + 1);
    fl_path_normalize(out);
    return 0;
}

/* Reads a path and makes it relative to the job file; reserve: bytes kept free at the end (for
 * a key prefix's suffix). */
static int get_path(job_ctx *c, int map, const char *path, const char *key, int required, char *out,
                    size_t size, size_t reserve, int *line) {
    char value[FL_JOB_PATH_MAX], kp[256];
    key_path(kp, sizeof kp, path, key);
    const char *expect = reserve ? "a key prefix (KEY.pub, KEY.key)" : "a path";
    int at_line = 0;
    if (!get_str(c, map, path, key, required, value, sizeof value, expect, &at_line)) return 0;
    if (!value[0]) {
        report(c, at_line, kp, "expected %s, got an empty string", expect);
        return 0;
    }
    size_t n = strlen(value);
    if (reserve && n > 4 && (!strcmp(value + n - 4, ".pub") || !strcmp(value + n - 4, ".key"))) {
        report(c, at_line, kp, "give the key prefix without .pub or .key, got '%s'", value);
        return 0;
    }
    if (resolve_path(c, value, out, size - reserve) != 0) {
        out[0] = 0;
        report(c, at_line, kp,
               "path too long once joined to the job file's folder (at most %zu bytes)",
               size - reserve - 1);
        return 0;
    }
    if (line) *line = at_line;
    return 1;
}

/* ---- the sections --------------------------------------------------------------------------- */

static const char *const TOP_KEYS[] = {"job",    "algorithm",   "model",   "peft",   "train",
                                       "data",   "aggregation", "privacy", "server", "clients",
                                       "output", "fedkseed",    "offsite", NULL};
static const char *const MODEL_KEYS[] = {"path", NULL};
static const char *const PEFT_KEYS[] = {"method",  "r",          "alpha", "dropout",
                                        "targets", "train_base", NULL};
static const char *const TRAIN_KEYS[] = {
    "rounds",       "local_steps", "local_epochs", "batch",         "seq",
    "grad_accum",   "lr",          "schedule",     "schedule_over", "warmup_steps",
    "weight_decay", "clip",        "precision",    "seed",          NULL};
static const char *const DATA_KEYS[] = {"format",   "text",     "prompt", "response",
                                        "template", "truncate", NULL};
static const char *const AGG_KEYS[] = {"method",          "mu",          "server_lr",
                                       "beta1",           "beta2",       "tau",
                                       "bias_correction", "min_clients", "round_deadline_s",
                                       "fraction",        "rule",        "trim_fraction",
                                       "byzantine",       "krum_select", "max_update_norm",
                                       "on_large_update", NULL};
static const char *const PRIVACY_KEYS[] = {"secure_aggregation", "dp", NULL};
static const char *const SERVER_KEYS[] = {"address", "bind", "key", "heartbeat_s", NULL};
static const char *const CLIENT_KEYS[] = {"name", "key", "train", "eval", NULL};

static const char *const ALGORITHMS[] = {"pellm", "fedkseed", "offsite_tuning", NULL};
static const char *const LATER_ALGORITHMS[] = {"fedipr", "fedmkt", "pdss", "fdkt", NULL};
static const char *const OFFSITE_KEYS[] = {"adapter_bottom", "adapter_top", "emulator_layers",
                                           "distill",        "aggregate",   "trainable",
                                           NULL};
static const char *const OFFSITE_TRAINABLE[] = {"full", "lora", NULL};
static const char *const FEDKSEED_KEYS[] = {
    "k",         "eps",          "lr", "steps_per_round", "pro", "bias_loss_clip",
    "grad_clip", "weight_decay", NULL};
/* the train keys FedKSeed reads; the others are PELLM's trainer's */
static const char *const FEDKSEED_TRAIN_KEYS[] = {"rounds", "batch", "seq", "seed", NULL};
static const char *const FEDKSEED_AGG_KEYS[] = {"min_clients", "round_deadline_s", "fraction",
                                                NULL};
static const char *const PEFT_METHODS[] = {"lora", NULL};
static const char *const SCHEDULES[] = {"constant", "cosine", NULL};
static const char *const SCHEDULE_SPANS[] = {"job", "round", NULL};
static const char *const PRECISIONS[] = {"fp32", "bf16", NULL};
static const char *const DATA_FORMATS[] = {"text", "prompt_response", NULL}; /* fl_data_format */
static const char *const TEMPLATES[] = {"plain", "chatml", "llama-2", "llama-3", NULL};
static const char *const AGG_METHODS[] = {"fedavg", "fedprox", "fedadam", "fedyogi", NULL};
static const char *const AGG_RULES[] = {"mean", "trimmed_mean", "median",
                                        "krum", "multi_krum",   NULL}; /* fl_agg_rule */
static const char *const LARGE_UPDATE_ACTIONS[] = {"reject", "clip", NULL};
static const char *const TRAIN_BASE[] = {"norms", "biases", NULL}; /* bit i: 1u << i */

static void parse_job_name(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a job name of letters, digits, '_', '.' and '-'";
    int line = 0;
    if (!get_str(c, root, "", "job", 1, job->name, sizeof job->name, expect, &line)) return;
    if (!job->name[0] || !name_chars_ok(job->name, "_.-") || !strcmp(job->name, ".") ||
        !strcmp(job->name, "..")) {
        report(c, line, "job", "expected %s, got '%s'", expect, job->name);
        job->name[0] = 0;
    }
}

static void parse_algorithm(job_ctx *c, int root, fl_job *job) {
    char value[64];
    int line = 0;
    if (!get_str(c, root, "", "algorithm", 0, value, sizeof value, "pellm", &line)) return;
    for (int i = 0; LATER_ALGORITHMS[i]; i++)
        if (!strcmp(value, LATER_ALGORITHMS[i])) {
            report(c, line, "algorithm",
                   "%s is not available yet (available: pellm, fedkseed, offsite_tuning)", value);
            return;
        }
    for (int i = 0; ALGORITHMS[i]; i++)
        if (!strcmp(value, ALGORITHMS[i])) {
            snprintf(job->algorithm, sizeof job->algorithm, "%s", ALGORITHMS[i]);
            job->fedkseed = !strcmp(value, "fedkseed");
            job->offsite = !strcmp(value, "offsite_tuning");
            return;
        }
    char later[256];
    join_names(later, sizeof later, LATER_ALGORITHMS);
    report(c, line, "algorithm",
           "unknown algorithm '%s' (available: pellm, fedkseed, offsite_tuning; later: %s)", value,
           later);
}

static void parse_model(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping {path: DIR} naming a Hugging Face model directory";
    int model = value_of(c, root, "", "model", 1, expect);
    if (model < 0 || !check_map(c, model, "model", MODEL_KEYS, expect)) return;
    get_path(c, model, "model", "path", 1, job->model_path, sizeof job->model_path, 0,
             &job->model_path_line);
}

typedef int (*item_check)(job_ctx *c, int line, const char *kp, const char *item, unsigned *mask);

/* A LoRA target: a role, or a module name that fl_lora_parse_targets accepts for some family
 * (the model's own family is checked when the model is loaded). */
static int check_target(job_ctx *c, int line, const char *kp, const char *item, unsigned *mask) {
    unsigned roles = 0;
    if (item[0] && name_chars_ok(item, "_.") &&
        (fl_lora_parse_targets(item, FL_ARCH_LLAMA, &roles, NULL) == FL_OK ||
         fl_lora_parse_targets(item, FL_ARCH_GPT2, &roles, NULL) == FL_OK)) {
        *mask |= roles;
        return 1;
    }
    report(c, line, kp,
           "'%s' is neither a LoRA role (attn_q, attn_k, attn_v, attn_o, mlp_gate, mlp_up, "
           "mlp_down) nor a module name (q_proj, v_proj, c_attn, ...)",
           item);
    return 0;
}

static int check_train_base(job_ctx *c, int line, const char *kp, const char *item,
                            unsigned *mask) {
    for (int i = 0; TRAIN_BASE[i]; i++)
        if (!strcmp(item, TRAIN_BASE[i])) {
            *mask |= 1u << i;
            return 1;
        }
    report(c, line, kp, "expected norms or biases, got '%s'", item);
    return 0;
}

/* Appends item to the comma list out; 0 when it does not fit. */
static int list_append(char *out, size_t size, const char *item) {
    size_t used = strlen(out), n = strlen(item) + (used ? 1 : 0);
    if (used + n >= size) return 0;
    snprintf(out + used, size - used, "%s%s", used ? "," : "", item);
    return 1;
}

/* Reads a list of names, as a YAML list [a, b] or one string "a,b"; each is checked, the good
 * ones joined with commas into out. 1 when given and entirely good. */
static int get_list(job_ctx *c, int map, const char *path, const char *key, int min_items,
                    char *out, size_t size, item_check check, unsigned *mask) {
    const char *expect = "a list of names";
    char kp[256], joined[512] = "";
    key_path(kp, sizeof kp, path, key);
    int v = value_of(c, map, path, key, 0, expect);
    if (v < 0) return 0;
    const ynode *n = at(c, v);
    int good = 1, count = 0;
    if (n->kind == YN_MAP) {
        report_type(c, v, kp, expect);
        return 0;
    }
    int n_items = n->kind == YN_SEQ ? n->n_kids : 1;
    for (int i = 0; i < n_items; i++) {
        const ynode *item = n->kind == YN_SEQ ? at(c, n->kids[i]) : n;
        if (item->kind != YN_SCALAR || strlen(item->text) != item->len) {
            report_type(c, n->kind == YN_SEQ ? n->kids[i] : v, kp, "a name");
            good = 0;
            continue;
        }
        char buf[512];
        snprintf(buf, sizeof buf, "%s", item->text);
        for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
             tok = strtok_r(NULL, ", ", &save)) {
            count++;
            if (!check(c, item->line, kp, tok, mask))
                good = 0;
            else if (!list_append(joined, sizeof joined, tok) || strlen(joined) >= size) {
                report(c, item->line, kp, "list longer than %zu characters", size - 1);
                return 0;
            }
        }
    }
    if (good && count < min_items) {
        report(c, n->line, kp, "expected at least %d name%s", min_items, min_items > 1 ? "s" : "");
        return 0;
    }
    if (good) snprintf(out, size, "%s", joined);
    return good;
}

static void parse_peft(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping {method: lora, r, alpha, dropout, targets, train_base}";
    int peft = value_of(c, root, "", "peft", 0, expect);
    int alpha_given = 0;
    if (peft >= 0 && check_map(c, peft, "peft", PEFT_KEYS, expect)) {
        int method = 0;
        get_choice(c, peft, "peft", "method", PEFT_METHODS, &method);
        get_int(c, peft, "peft", "r", 0, 1, 4096, &job->lora_r);
        alpha_given =
            get_float(c, peft, "peft", "alpha", 0, 0, INFINITY, LO_OPEN, &job->lora_alpha);
        get_float(c, peft, "peft", "dropout", 0, 0, 1, HI_OPEN, &job->lora_dropout);
        unsigned roles = 0;
        get_list(c, peft, "peft", "targets", 1, job->lora_targets, sizeof job->lora_targets,
                 check_target, &roles);
        unsigned base = 0;
        if (get_list(c, peft, "peft", "train_base", 0, job->lora_train_base,
                     sizeof job->lora_train_base, check_train_base, &base))
            job->lora_train_base_mask = base;
    }
    if (!alpha_given) job->lora_alpha = 2.0f * (float)job->lora_r;
}

static void parse_train(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping with rounds, local_steps or local_epochs, lr, ...";
    int train = value_of(c, root, "", "train", 1, expect);
    if (train < 0 || !check_map(c, train, "train", TRAIN_KEYS, expect)) return;
    const char *p = "train";
    get_int(c, train, p, "rounds", 1, 1, 1000000, &job->rounds);
    int steps = present(c, train, "local_steps"), epochs = present(c, train, "local_epochs");
    if (job->fedkseed) /* its steps and learning rate are under fedkseed: (check_algorithm) */
        ;
    else if (steps && epochs)
        report(c, at(c, value_of(c, train, p, "local_epochs", 0, ""))->line, "train.local_epochs",
               "give local_steps or local_epochs, not both");
    else if (!steps && !epochs)
        report(c, map_line(c, train), "train.local_steps",
               "missing (expected local_steps or local_epochs, an integer >= 1)");
    else if (steps)
        get_int(c, train, p, "local_steps", 0, 1, INT_MAX, &job->local_steps);
    else
        get_int(c, train, p, "local_epochs", 0, 1, 1000000, &job->local_epochs);
    int batch_ok = get_int(c, train, p, "batch", 0, 1, 65536, &job->batch);
    int seq_ok = get_int(c, train, p, "seq", 0, 1, FL_MAX_PASS_TOKENS, &job->seq);
    if ((batch_ok || seq_ok) && (long long)job->batch * job->seq > FL_MAX_PASS_TOKENS)
        report(c, at(c, value_of(c, train, p, seq_ok ? "seq" : "batch", 0, ""))->line,
               seq_ok ? "train.seq" : "train.batch",
               "batch * seq = %lld tokens, more than the %d one pass may hold",
               (long long)job->batch * job->seq, FL_MAX_PASS_TOKENS);
    get_int(c, train, p, "grad_accum", 0, 1, 65536, &job->grad_accum);
    get_float(c, train, p, "lr", !job->fedkseed, 0, INFINITY, LO_OPEN, &job->lr);
    int index = 0;
    if (get_choice(c, train, p, "schedule", SCHEDULES, &index))
        snprintf(job->schedule, sizeof job->schedule, "%s", SCHEDULES[index]);
    if (get_choice(c, train, p, "schedule_over", SCHEDULE_SPANS, &index))
        job->schedule_per_round = index == 1;
    get_int(c, train, p, "warmup_steps", 0, 0, INT_MAX, &job->warmup_steps);
    get_float(c, train, p, "weight_decay", 0, 0, INFINITY, 0, &job->weight_decay);
    get_float(c, train, p, "clip", 0, 0, INFINITY, 0, &job->clip);
    if (get_choice(c, train, p, "precision", PRECISIONS, &index))
        snprintf(job->precision, sizeof job->precision, "%s", PRECISIONS[index]);
    get_u64(c, train, p, "seed", &job->seed);
}

/* A key that only one choice of a method or format uses: reported when given with another. */
static void only_with(job_ctx *c, int map, const char *path, const char *key, int allowed,
                      const char *which) {
    if (allowed || !present(c, map, key)) return;
    char kp[256];
    key_path(kp, sizeof kp, path, key);
    report(c, at(c, value_of(c, map, path, key, 0, ""))->line, kp, "only used with %s", which);
}

static void parse_data(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping {format: text | prompt_response, text, prompt, response, "
                         "template, truncate}";
    int data = value_of(c, root, "", "data", 0, expect);
    if (data < 0 || !check_map(c, data, "data", DATA_KEYS, expect)) return;
    const char *p = "data";
    if (present(c, data, "format") &&
        !get_choice(c, data, p, "format", DATA_FORMATS, &job->data_format))
        return; /* which keys belong is unknown: the bad format is the one problem */
    int text = job->data_format == FL_DATA_TEXT;
    const char *field = "a JSON field name";
    only_with(c, data, p, "text", text, "format: text");
    only_with(c, data, p, "prompt", !text, "format: prompt_response");
    only_with(c, data, p, "response", !text, "format: prompt_response");
    only_with(c, data, p, "template", !text, "format: prompt_response");
    only_with(c, data, p, "truncate", !text, "format: prompt_response");
    int truncate = present(c, data, "truncate") ? value_of(c, data, p, "truncate", 0, "") : -1;
    const ynode *tn = truncate >= 0 ? at(c, truncate) : NULL;
    if (tn && tn->kind == YN_SCALAR && tn->plain && !strcmp(tn->text, "false"))
        job->data_refuse_long = 1;
    else if (tn && !(tn->kind == YN_SCALAR && tn->plain && !strcmp(tn->text, "true")))
        report_type(c, truncate, "data.truncate", "true or false");
    char *fields[3] = {job->text_field, job->prompt_field, job->response_field};
    const char *keys[3] = {"text", "prompt", "response"};
    for (int i = 0; i < 3; i++) {
        if ((i == 0) != text) continue;
        char value[64];
        int line = 0;
        if (!get_str(c, data, p, keys[i], 0, value, sizeof value, field, &line)) continue;
        char kp[64];
        key_path(kp, sizeof kp, p, keys[i]);
        if (!value[0])
            report(c, line, kp, "expected %s, got an empty string", field);
        else
            memcpy(fields[i], value, sizeof value);
    }
    int index = 0;
    if (!text && get_choice(c, data, p, "template", TEMPLATES, &index))
        snprintf(job->template_name, sizeof job->template_name, "%s", TEMPLATES[index]);
}

/* Reads true or false; 1 when stored in *out. */
static int get_bool(job_ctx *c, int map, const char *path, const char *key, int *out) {
    int v = value_of(c, map, path, key, 0, "true or false");
    if (v < 0) return 0;
    const ynode *n = at(c, v);
    int is_true = n->kind == YN_SCALAR && n->plain && !strcmp(n->text, "true");
    int is_false = n->kind == YN_SCALAR && n->plain && !strcmp(n->text, "false");
    if (!is_true && !is_false) {
        char kp[256];
        key_path(kp, sizeof kp, path, key);
        report_type(c, v, kp, "true or false");
        return 0;
    }
    *out = is_true;
    return 1;
}

/* aggregation.{rule, trim_fraction, byzantine, krum_select, max_update_norm, on_large_update}. */
static void parse_robust(job_ctx *c, int agg, fl_job *job) {
    const char *p = "aggregation";
    int rule = 0;
    int rule_ok = !present(c, agg, "rule") || get_choice(c, agg, p, "rule", AGG_RULES, &rule);
    job->agg_rule = (fl_agg_rule)rule;
    int krum = job->agg_rule == FL_RULE_KRUM || job->agg_rule == FL_RULE_MULTI_KRUM;
    only_with(c, agg, p, "trim_fraction", job->agg_rule == FL_RULE_TRIMMED_MEAN || !rule_ok,
              "rule: trimmed_mean");
    only_with(c, agg, p, "byzantine", krum || !rule_ok, "rule: krum or multi_krum");
    only_with(c, agg, p, "krum_select", job->agg_rule == FL_RULE_MULTI_KRUM || !rule_ok,
              "rule: multi_krum");
    if (job->agg_rule == FL_RULE_TRIMMED_MEAN)
        get_num(c, agg, p, "trim_fraction", 0, 0, 0.5, LO_OPEN | HI_OPEN, &job->trim_fraction);
    if (krum) get_int(c, agg, p, "byzantine", 0, 1, FL_JOB_MAX_CLIENTS, &job->byzantine);
    if (job->agg_rule == FL_RULE_MULTI_KRUM)
        get_int(c, agg, p, "krum_select", 0, 1, FL_JOB_MAX_CLIENTS, &job->krum_select);
    get_num(c, agg, p, "max_update_norm", 0, 0, INFINITY, LO_OPEN, &job->max_update_norm);
    only_with(c, agg, p, "on_large_update", present(c, agg, "max_update_norm"), "max_update_norm");
    int action = 0;
    if (get_choice(c, agg, p, "on_large_update", LARGE_UPDATE_ACTIONS, &action))
        job->clip_large_updates = action == 1;
}

/* The line of aggregation.KEY, or the mapping's when it is absent. */
static int agg_line(job_ctx *c, int agg, const char *key) {
    int v = value_of(c, agg, "", key, 0, "");
    return v >= 0 ? at(c, v)->line : map_line(c, agg);
}

/* A robust rule needs enough updates in every applied round, that is at min_clients. */
static void check_rule_clients(job_ctx *c, int agg, fl_job *job) {
    int n = job->min_clients, f = job->byzantine;
    if (n <= 0) return;
    if (job->agg_rule == FL_RULE_TRIMMED_MEAN && floor(job->trim_fraction * n + 1e-3) < 1)
        report(c, agg_line(c, agg, "trim_fraction"), "aggregation.trim_fraction",
               "%g cuts no update at min_clients %d (expected at least 1 / min_clients, %.4g)",
               job->trim_fraction, n, 1.0 / n);
    else if (job->agg_rule == FL_RULE_MEDIAN && n < 3)
        report(c, agg_line(c, agg, "rule"), "aggregation.rule",
               "median needs min_clients >= 3 (a median of %d updates is their mean)", n);
    else if ((job->agg_rule == FL_RULE_KRUM || job->agg_rule == FL_RULE_MULTI_KRUM) &&
             n < 2 * f + 3)
        report(c, agg_line(c, agg, "byzantine"), "aggregation.byzantine",
               "%d needs min_clients >= %d (2f + 3), got %d", f, 2 * f + 3, n);
    else if (job->agg_rule == FL_RULE_MULTI_KRUM && job->krum_select > n - f)
        report(c, agg_line(c, agg, "krum_select"), "aggregation.krum_select",
               "%d is more than min_clients - byzantine = %d", job->krum_select, n - f);
}

/* After privacy: a robust rule needs each update, which secure aggregation hides and client-level
 * DP's accounting (calibrated to the sum) does not cover; secure aggregation also hides each
 * update's norm. */
static void check_aggregation_privacy(job_ctx *c, int root, fl_job *job) {
    int agg = value_of(c, root, "", "aggregation", 0, "");
    if (agg < 0 || at(c, agg)->kind != YN_MAP) return;
    if (job->agg_rule != FL_RULE_MEAN && job->secure_aggregation)
        report(c, agg_line(c, agg, "rule"), "aggregation.rule",
               "%s needs every client's update, but under privacy.secure_aggregation the server "
               "sees only their sum (expected rule: mean)",
               AGG_RULES[job->agg_rule]);
    else if (job->agg_rule != FL_RULE_MEAN && job->dp == FL_DP_CLIENT)
        report(c, agg_line(c, agg, "rule"), "aggregation.rule",
               "%s cannot be combined with privacy.dp.level: client (its noise is calibrated to a "
               "sum of clipped updates; expected rule: mean, or dp level: sample)",
               AGG_RULES[job->agg_rule]);
    if (job->max_update_norm > 0 && job->secure_aggregation)
        report(c, agg_line(c, agg, "max_update_norm"), "aggregation.max_update_norm",
               "cannot be checked under privacy.secure_aggregation, where the server sees only "
               "the sum (each value is bounded by secure_aggregation.clip_range instead)");
}

static void parse_aggregation(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping {method, min_clients, round_deadline_s, fraction, ...}";
    int agg = value_of(c, root, "", "aggregation", 0, expect);
    int map_ok = agg >= 0 && check_map(c, agg, "aggregation", AGG_KEYS, expect);
    const char *p = "aggregation";
    if (map_ok) {
        int method = 0;
        int method_ok =
            !present(c, agg, "method") || get_choice(c, agg, p, "method", AGG_METHODS, &method);
        job->agg = (fl_agg_method)method;
        int prox = job->agg == FL_AGG_FEDPROX;
        int adaptive = job->agg == FL_AGG_FEDADAM || job->agg == FL_AGG_FEDYOGI;
        only_with(c, agg, p, "mu", prox || !method_ok, "method: fedprox");
        if (prox && !present(c, agg, "mu"))
            report(c, map_line(c, agg), "aggregation.mu",
                   "missing (method fedprox needs mu, a number > 0)");
        else if (prox)
            get_float(c, agg, p, "mu", 1, 0, INFINITY, LO_OPEN, &job->prox_mu);
        const char *adam_keys[5] = {"server_lr", "beta1", "beta2", "tau", "bias_correction"};
        for (int i = 0; i < 5; i++)
            only_with(c, agg, p, adam_keys[i], adaptive || !method_ok,
                      "method: fedadam or fedyogi");
        if (adaptive) {
            get_float(c, agg, p, "server_lr", 0, 0, INFINITY, LO_OPEN, &job->server_lr);
            get_float(c, agg, p, "beta1", 0, 0, 1, HI_OPEN, &job->beta1);
            get_float(c, agg, p, "beta2", 0, 0, 1, HI_OPEN, &job->beta2);
            get_float(c, agg, p, "tau", 0, 0, INFINITY, LO_OPEN, &job->tau);
            get_bool(c, agg, p, "bias_correction", &job->bias_correction);
        }
        get_num(c, agg, p, "round_deadline_s", 0, 0, 1e6, LO_OPEN, &job->round_deadline_s);
        get_num(c, agg, p, "fraction", 0, 0, 1, LO_OPEN, &job->fraction);
        parse_robust(c, agg, job);
    }
    if (job->n_clients > 0) {
        job->clients_per_round = fl_job_sample_count(job->fraction, job->n_clients);
    }
    job->min_clients = job->clients_per_round;
    int min_clients = 0;
    if (map_ok && get_int(c, agg, p, "min_clients", 0, 1,
                          job->n_clients > 0 ? job->n_clients : INT_MAX, &min_clients)) {
        if (job->n_clients > 0 && min_clients > job->clients_per_round)
            report(c, at(c, value_of(c, agg, p, "min_clients", 0, ""))->line,
                   "aggregation.min_clients",
                   "%d is more than the %d clients sampled per round (fraction %g of %d)",
                   min_clients, job->clients_per_round, job->fraction, job->n_clients);
        else
            job->min_clients = min_clients;
    }
    if (map_ok) check_rule_clients(c, agg, job);
}

static const char *const DP_KEYS[] = {
    "level", "clip", "noise_multiplier", "target_epsilon", "delta", "max_epsilon", NULL};
static const char *const DP_LEVELS[] = {"client", "sample", NULL};

/* privacy.dp: {level: client | sample, clip, noise_multiplier | target_epsilon, delta,
 * max_epsilon}, or false. */
static void parse_dp(job_ctx *c, int privacy, fl_job *job) {
    const char *expect = "false or a mapping {level, clip, noise_multiplier | target_epsilon, "
                         "delta, max_epsilon}";
    int v = value_of(c, privacy, "privacy", "dp", 0, expect);
    if (v < 0) return;
    const ynode *n = at(c, v);
    if (n->kind == YN_SCALAR && n->plain && !strcmp(n->text, "false")) return;
    if (!check_map(c, v, "privacy.dp", DP_KEYS, expect)) return;
    const char *p = "privacy.dp";
    int level = 0;
    if (!present(c, v, "level"))
        report(c, map_line(c, v), "privacy.dp.level", "missing (expected client or sample)");
    else if (get_choice(c, v, p, "level", DP_LEVELS, &level))
        job->dp = level == 0 ? FL_DP_CLIENT : FL_DP_SAMPLE;
    get_num(c, v, p, "clip", 1, 0, INFINITY, LO_OPEN, &job->dp_clip);
    int noise = present(c, v, "noise_multiplier"), target = present(c, v, "target_epsilon");
    if (noise == target)
        report(c, map_line(c, v), "privacy.dp",
               noise ? "give noise_multiplier or target_epsilon, not both"
                     : "missing noise_multiplier or target_epsilon");
    if (noise) get_num(c, v, p, "noise_multiplier", 1, 0, INFINITY, LO_OPEN, &job->dp_noise);
    if (target)
        get_num(c, v, p, "target_epsilon", 1, 0, INFINITY, LO_OPEN, &job->dp_target_epsilon);
    get_num(c, v, p, "delta", 0, 0, 1, LO_OPEN | HI_OPEN, &job->dp_delta);
    get_num(c, v, p, "max_epsilon", 0, 0, INFINITY, LO_OPEN, &job->dp_max_epsilon);
}

/* privacy: {secure_aggregation: false (true: not yet), dp: false | {...}}. */
static void parse_privacy(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping {secure_aggregation, dp}";
    int privacy = value_of(c, root, "", "privacy", 0, expect);
    if (privacy < 0 || !check_map(c, privacy, "privacy", PRIVACY_KEYS, expect)) return;
    parse_dp(c, privacy, job);
    int v = value_of(c, privacy, "privacy", "secure_aggregation", 0, "");
    if (v < 0) return;
    const ynode *n = at(c, v);
    if (n->kind == YN_SCALAR && n->plain && !strcmp(n->text, "false")) return;
    if (n->kind == YN_SCALAR && n->plain && !strcmp(n->text, "true")) {
        job->secure_aggregation = 1;
    } else if (n->kind == YN_MAP) {
        static const char *const keys[] = {"threshold",  "clip_range",  "bits",
                                           "neighbours", "max_samples", NULL};
        const char *p = "privacy.secure_aggregation";
        if (!check_map(c, v, p, keys,
                       "true or a mapping {threshold, clip_range, bits, "
                       "neighbours, max_samples}"))
            return;
        job->secure_aggregation = 1;
        get_int(c, v, p, "threshold", 0, 2, 65535, &job->sa_threshold);
        get_int(c, v, p, "bits", 0, 1, 31, &job->sa_bits);
        get_int(c, v, p, "neighbours", 0, 0, 65535, &job->sa_neighbours);
        get_num(c, v, p, "clip_range", 0, 0, INFINITY, LO_OPEN, &job->sa_clip_range);
        get_num(c, v, p, "max_samples", 0, 1, 1e15, 0, &job->sa_max_samples);
    } else {
        report_type(c, v, "privacy.secure_aggregation", "true, false or a mapping");
        return;
    }
    /* with client-level DP the clients add the noise, so the clip range must hold it */
    if (job->dp == FL_DP_CLIENT && !present(c, v, "clip_range"))
        job->sa_clip_range = job->dp_clip * (1 + 8 * (job->dp_noise > 0 ? job->dp_noise : 4));
}

/* Checks an address and writes it, resolved, into out; with_wildcard: the host may be "*". */
static int check_address(job_ctx *c, int line, const char *kp, const char *value, int with_wildcard,
                         char *out, size_t size, char *bind, size_t bind_size) {
    const char *expect = with_wildcard ? "tcp://HOST:PORT (HOST may be *) or ipc://PATH"
                                       : "tcp://HOST:PORT or ipc://PATH";
    if (!strncmp(value, "ipc://", 6)) {
        const char *path = value + 6;
        char resolved[FL_JOB_PATH_MAX];
        if (!path[0]) {
            report(c, line, kp, "expected %s, got an empty ipc path", expect);
            return 0;
        }
        if (path[0] == '@') /* Linux abstract socket: no file */
            snprintf(resolved, sizeof resolved, "%s", path);
        else if (resolve_path(c, path, resolved, sizeof resolved) != 0)
            resolved[0] = 0;
        if (!resolved[0] || strlen(resolved) > IPC_PATH_MAX) {
            report(c, line, kp,
                   "ipc path longer than %d bytes once joined to the job file's "
                   "folder (the socket address limit)",
                   IPC_PATH_MAX);
            return 0;
        }
        snprintf(out, size, "ipc://%s", resolved);
        if (bind) snprintf(bind, bind_size, "%s", out);
        return 1;
    }
    if (strncmp(value, "tcp://", 6) != 0) {
        report(c, line, kp, "expected %s, got '%s'", expect, value);
        return 0;
    }
    const char *host = value + 6, *colon = strrchr(host, ':');
    char host_buf[256] = "";
    int ipv6 = host[0] == '[';
    const char *host_end = ipv6 ? strchr(host, ']') : colon;
    if (!colon || !host_end || (ipv6 && host_end + 1 != colon)) {
        report(c, line, kp, "expected %s, got '%s' (no port)", expect, value);
        return 0;
    }
    size_t host_len = (size_t)(host_end - host) - (size_t)ipv6;
    if (host_len >= sizeof host_buf) host_len = 0;
    memcpy(host_buf, host + ipv6, host_len);
    host_buf[host_len] = 0;
    unsigned char addr[16];
    int v4 = inet_pton(AF_INET, host_buf, addr) == 1;
    int host_ok = ipv6 ? inet_pton(AF_INET6, host_buf, addr) == 1
                       : host_buf[0] && (name_chars_ok(host_buf, ".-_") ||
                                         (with_wildcard && !strcmp(host_buf, "*")));
    const char *port = colon + 1;
    long port_value = strspn(port, "0123456789") == strlen(port) && strlen(port) <= 5
                          ? strtol(port, NULL, 10)
                          : 0;
    if (!host_ok || !port[0] || port_value < 1 || port_value > 65535) {
        report(c, line, kp, "expected %s with a port from 1 to 65535, got '%s'", expect, value);
        return 0;
    }
    snprintf(out, size, "%s", value);
    if (bind) {
        if (v4 || ipv6)
            snprintf(bind, bind_size, "%s", value);
        else if (!strcmp(host_buf, "localhost"))
            snprintf(bind, bind_size, "tcp://127.0.0.1:%ld", port_value);
        else
            snprintf(bind, bind_size, "tcp://*:%ld", port_value);
    }
    return 1;
}

static void parse_server(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping {address, key}";
    int server = value_of(c, root, "", "server", 1, expect);
    if (server < 0 || !check_map(c, server, "server", SERVER_KEYS, expect)) return;
    const char *p = "server";
    char value[256];
    int line = 0;
    if (get_str(c, server, p, "address", 1, value, sizeof value, "tcp://HOST:PORT or ipc://PATH",
                &line))
        check_address(c, line, "server.address", value, 0, job->server_address,
                      sizeof job->server_address, job->server_bind, sizeof job->server_bind);
    char bind[256];
    if (get_str(c, server, p, "bind", 0, value, sizeof value, "tcp://HOST:PORT or ipc://PATH",
                &line) &&
        check_address(c, line, "server.bind", value, 1, bind, sizeof bind, NULL, 0))
        memcpy(job->server_bind, bind, sizeof bind);
    get_path(c, server, p, "key", 1, job->server_key, sizeof job->server_key, KEY_SUFFIX_BYTES,
             &job->server_key_line);
    get_num(c, server, p, "heartbeat_s", 0, 0, 3600, LO_OPEN, &job->heartbeat_s);
}

static void parse_client(job_ctx *c, int node, int index, fl_job *job) {
    fl_job_client *cl = &job->clients[index];
    char p[32], kp[64];
    snprintf(p, sizeof p, "clients[%d]", index);
    cl->line = at(c, node)->line;
    if (!check_map(c, node, p, CLIENT_KEYS, "a mapping {name, key, train, eval}")) return;
    const char *expect = "a client name of letters, digits, '_' and '-'";
    int line = 0;
    key_path(kp, sizeof kp, p, "name");
    if (get_str(c, node, p, "name", 1, cl->name, sizeof cl->name, expect, &line)) {
        if (!cl->name[0] || !name_chars_ok(cl->name, "_-"))
            report(c, line, kp, "expected %s, got '%s'", expect, cl->name);
        else if (!strcmp(cl->name, "server"))
            report(c, line, kp, "'server' names the server; a client needs another name");
        else
            for (int i = 0; i < index; i++)
                if (!strcmp(job->clients[i].name, cl->name)) {
                    report(c, line, kp, "duplicate client name '%s' (first at line %d)", cl->name,
                           job->clients[i].line);
                    break;
                }
    }
    key_path(kp, sizeof kp, p, "key");
    if (get_path(c, node, p, "key", 1, cl->key, sizeof cl->key, KEY_SUFFIX_BYTES, &cl->key_line)) {
        if (!strcmp(cl->key, job->server_key))
            report(c, cl->key_line, kp,
                   "same key as server.key (line %d): every party needs "
                   "its own key pair",
                   job->server_key_line);
        else
            for (int i = 0; i < index; i++)
                if (!strcmp(job->clients[i].key, cl->key)) {
                    report(c, cl->key_line, kp,
                           "same key as clients[%d] (line %d): every party "
                           "needs its own key pair",
                           i, job->clients[i].key_line);
                    break;
                }
    }
    get_path(c, node, p, "train", 1, cl->train, sizeof cl->train, 0, &cl->train_line);
    get_path(c, node, p, "eval", 0, cl->eval, sizeof cl->eval, 0, &cl->eval_line);
}

static void parse_clients(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a list of clients, each {name, key, train, eval}";
    int list = value_of(c, root, "", "clients", 1, expect);
    if (list < 0) return;
    const ynode *n = at(c, list);
    if (n->kind != YN_SEQ) {
        report_type(c, list, "clients", expect);
        return;
    }
    if (n->n_kids == 0 || n->n_kids > FL_JOB_MAX_CLIENTS) {
        report(c, n->line, "clients", "%d clients (expected 1 to %d)", n->n_kids,
               FL_JOB_MAX_CLIENTS);
        return;
    }
    job->clients = calloc((size_t)n->n_kids, sizeof *job->clients);
    if (!job->clients) {
        c->oom = 1;
        return;
    }
    job->n_clients = n->n_kids;
    for (int i = 0; i < n->n_kids; i++)
        parse_client(c, n->kids[i], i, job);
}

static void parse_output(job_ctx *c, int root, fl_job *job) {
    if (get_path(c, root, "", "output", 0, job->output, sizeof job->output, 0, NULL)) return;
    if (present(c, root, "output") || !job->name[0]) return;
    char value[128];
    snprintf(value, sizeof value, "runs/%s", job->name);
    resolve_path(c, value, job->output, sizeof job->output);
}

static void set_defaults(fl_job *job) {
    snprintf(job->algorithm, sizeof job->algorithm, "pellm");
    job->lora_r = 8;
    snprintf(job->lora_targets, sizeof job->lora_targets, "attn_q,attn_v");
    job->batch = 4, job->seq = 128, job->grad_accum = 1;
    snprintf(job->schedule, sizeof job->schedule, "constant");
    job->clip = 1.0f;
    snprintf(job->precision, sizeof job->precision, "fp32");
    job->seed = 1;
    job->data_format = FL_DATA_TEXT;
    snprintf(job->text_field, sizeof job->text_field, "text");
    snprintf(job->prompt_field, sizeof job->prompt_field, "prompt");
    snprintf(job->response_field, sizeof job->response_field, "response");
    job->agg = FL_AGG_FEDAVG;
    /* FedAdam/FedYogi: measured on the demo's data and model (docs/aggregation.md) */
    job->server_lr = 1e-1f, job->beta1 = 0.0f, job->beta2 = 0.99f, job->tau = 8e-2f;
    job->bias_correction = 1;
    job->trim_fraction = 0.2, job->byzantine = 1;
    job->round_deadline_s = 600, job->fraction = 1;
    job->heartbeat_s = 1;
    job->dp_delta = 1e-5;
    job->sa_clip_range = 1, job->sa_max_samples = 1e6;
    job->ot_bottom = 2, job->ot_top = 2, job->ot_aggregate = 1;
    job->zo_k = 4096, job->zo_eps = 5e-4f, job->zo_pro = 1, job->zo_bias_loss_clip = 1000;
}

static int key_in(const char *key, const char *const *keys) {
    for (int i = 0; keys[i]; i++)
        if (!strcmp(key, keys[i])) return 1;
    return 0;
}

/* fedkseed: {k, eps, lr, steps_per_round, pro, bias_loss_clip, grad_clip, weight_decay} */
static void parse_fedkseed(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping with lr and steps_per_round (and k, eps, pro, ...)";
    int zo = value_of(c, root, "", "fedkseed", job->fedkseed, expect);
    if (zo < 0) return;
    if (!job->fedkseed) {
        report(c, at(c, zo)->line, "fedkseed",
               "only used with algorithm: fedkseed (the job's is %s)", job->algorithm);
        return;
    }
    if (!check_map(c, zo, "fedkseed", FEDKSEED_KEYS, expect)) return;
    const char *p = "fedkseed";
    get_int(c, zo, p, "k", 0, 1, FL_JOB_MAX_SEEDS, &job->zo_k);
    get_float(c, zo, p, "eps", 0, 0, INFINITY, LO_OPEN, &job->zo_eps);
    get_float(c, zo, p, "lr", 1, 0, INFINITY, LO_OPEN, &job->zo_lr);
    get_int(c, zo, p, "steps_per_round", 1, 1, 1000000, &job->zo_steps);
    get_bool(c, zo, p, "pro", &job->zo_pro);
    get_float(c, zo, p, "bias_loss_clip", 0, 0, INFINITY, LO_OPEN, &job->zo_bias_loss_clip);
    get_float(c, zo, p, "grad_clip", 0, 0, INFINITY, 0, &job->zo_grad_clip);
    get_float(c, zo, p, "weight_decay", 0, 0, INFINITY, 0, &job->zo_weight_decay);
}

/* offsite: {adapter_bottom, adapter_top, emulator_layers, distill, aggregate, trainable} */
static void parse_offsite(job_ctx *c, int root, fl_job *job) {
    const char *expect = "a mapping with emulator_layers (and adapter_bottom, adapter_top, ...)";
    int ot = value_of(c, root, "", "offsite", job->offsite, expect);
    if (ot < 0) return;
    if (!job->offsite) {
        report(c, at(c, ot)->line, "offsite",
               "only used with algorithm: offsite_tuning (the job's is %s)", job->algorithm);
        return;
    }
    job->ot_line = at(c, ot)->line;
    if (!check_map(c, ot, "offsite", OFFSITE_KEYS, expect)) return;
    const char *p = "offsite";
    get_int(c, ot, p, "adapter_bottom", 0, 1, 1024, &job->ot_bottom);
    get_int(c, ot, p, "adapter_top", 0, 1, 1024, &job->ot_top);
    get_int(c, ot, p, "emulator_layers", 1, 1, 1024, &job->ot_emulator);
    if (get_int(c, ot, p, "distill", 0, 0, 1000000, &job->ot_distill) && job->ot_distill > 0) {
        report(c, at(c, value_of(c, ot, p, "distill", 0, ""))->line, "offsite.distill",
               "emulator distillation is not available yet (0 sends the emulator as it is "
               "dropped; docs/offsite.md)");
    }
    get_bool(c, ot, p, "aggregate", &job->ot_aggregate);
    char trainable[16] = "full";
    int line = 0;
    if (get_str(c, ot, p, "trainable", 0, trainable, sizeof trainable, "full or lora", &line)) {
        int known = 0;
        for (int i = 0; OFFSITE_TRAINABLE[i]; i++) known |= !strcmp(trainable, OFFSITE_TRAINABLE[i]);
        if (!known)
            report(c, line, "offsite.trainable",
                   "expected full (every weight of the adapter blocks) or lora (LoRA of peft: on "
                   "them), got '%s'",
                   trainable);
        job->ot_lora = !strcmp(trainable, "lora");
    }
}

/* What offsite-tuning cannot use: peft: without trainable: lora, and aggregate: false with more
 * than one data owner. */
static void check_offsite(job_ctx *c, int root, fl_job *job) {
    if (!job->offsite) return;
    int peft = value_of(c, root, "", "peft", 0, "");
    if (peft >= 0 && !job->ot_lora)
        report(c, at(c, peft)->line, "peft",
               "not used by offsite_tuning with offsite.trainable: full (every weight of the "
               "adapter blocks trains); set trainable: lora to tune LoRA of peft: on them");
    if (!job->ot_aggregate && (job->secure_aggregation || job->dp == FL_DP_CLIENT ||
                               job->agg != FL_AGG_FEDAVG))
        report(c, job->ot_line, "offsite.aggregate",
               "false (one data owner, whose adapters come back once) takes no secure "
               "aggregation, client-level DP or server optimizer: there is nothing to combine");
    if (!job->ot_aggregate && job->n_clients != 1)
        report(c, job->ot_line, "offsite.aggregate",
               "false means one data owner, but the job has %d clients (aggregate: true is OT+, "
               "FedAvg of the adapters among them)",
               job->n_clients);
}

/* What the job's algorithm cannot use: FedKSeed tunes every parameter by zeroth-order steps
 * with its own keys, and its server sums scalars per seed. */
static void check_algorithm(job_ctx *c, int root, fl_job *job) {
    if (!job->fedkseed) return;
    int peft = value_of(c, root, "", "peft", 0, "");
    if (peft >= 0)
        report(c, at(c, peft)->line, "peft",
               "not used by algorithm fedkseed, which tunes every parameter of the model "
               "(remove peft:, or use algorithm: pellm for LoRA)");
    const struct {
        const char *section, *const *allowed, *why;
    } sections[] = {
        {"train", FEDKSEED_TRAIN_KEYS,
         "fedkseed takes its steps, learning rate and weight decay from fedkseed: "
         "(steps_per_round, lr, weight_decay); train: gives rounds, batch, seq and seed"},
        {"aggregation", FEDKSEED_AGG_KEYS,
         "the fedkseed server sums the clients' scalars per seed; aggregation: gives "
         "min_clients, round_deadline_s and fraction"},
    };
    for (size_t i = 0; i < sizeof sections / sizeof *sections; i++) {
        int map = value_of(c, root, "", sections[i].section, 0, "");
        if (map < 0 || at(c, map)->kind != YN_MAP) continue;
        for (int k = 0; k < at(c, map)->n_kids; k += 2) {
            const ynode *key = at(c, at(c, map)->kids[k]);
            if (key->kind != YN_SCALAR || key_in(key->text, sections[i].allowed)) continue;
            char kp[256];
            key_path(kp, sizeof kp, sections[i].section, key->text);
            report(c, key->line, kp, "not used by algorithm fedkseed (%s)", sections[i].why);
        }
    }
    int privacy = value_of(c, root, "", "privacy", 0, "");
    if (privacy >= 0 && job->secure_aggregation)
        report(c, at(c, privacy)->line, "privacy.secure_aggregation",
               "not supported by algorithm fedkseed (masking each client's per-seed scalars "
               "could be built, but is not; what a client sends is its seed indices and scalars, "
               "never a tensor of the model: docs/fedkseed.md)");
    if (privacy >= 0 && job->dp)
        report(c, at(c, privacy)->line, "privacy.dp",
               "not supported by algorithm fedkseed (its scalars are neither clipped nor noised; "
               "use algorithm: pellm for differential privacy)");
}

static void parse_root(job_ctx *c, fl_job *job) {
    const ydoc *d = c->doc;
    const char *expect = "a mapping with job, model, train, server and clients";
    if (d->root < 0 || is_null(at(c, d->root))) {
        report(c, 1, NULL, "empty job file (expected %s)", expect);
        return;
    }
    if (!check_map(c, d->root, "", TOP_KEYS, expect)) return;
    int root = d->root;
    parse_job_name(c, root, job);
    parse_algorithm(c, root, job);
    parse_model(c, root, job);
    parse_peft(c, root, job);
    parse_train(c, root, job);
    parse_data(c, root, job);
    parse_server(c, root, job); /* before the clients, whose keys must differ from its key */
    parse_clients(c, root, job);
    parse_aggregation(c, root, job); /* after the clients: min_clients is bounded by them */
    parse_privacy(c, root, job);
    check_aggregation_privacy(c, root, job);
    parse_fedkseed(c, root, job);
    check_algorithm(c, root, job);
    parse_offsite(c, root, job);
    check_offsite(c, root, job);
    parse_output(c, root, job);
}

/* ---- file checks ---------------------------------------------------------------------------- */

/* The offsite split against the model's blocks: bottom and top adapters apart, and at most the
 * middle's blocks in the emulator. */
static void check_offsite_split(job_ctx *c, const fl_job *job) {
    fl_config cfg;
    fl_err err = {0};
    if (fl_config_load(&cfg, job->model_path, &err)) {
        report(c, job->model_path_line, "model.path", "%s", err.msg);
        return;
    }
    int L = cfg.n_layer, middle = L - job->ot_bottom - job->ot_top;
    if (middle < 1)
        report(c, job->ot_line, "offsite",
               "adapter_bottom %d + adapter_top %d leave no middle block of the model's %d (the "
               "adapters must not overlap, and the emulator needs a middle to stand in for)",
               job->ot_bottom, job->ot_top, L);
    else if (job->ot_emulator > middle)
        report(c, job->ot_line, "offsite.emulator_layers",
               "%d is more than the %d middle blocks of the model (%d blocks, %d + %d adapters)",
               job->ot_emulator, middle, L, job->ot_bottom, job->ot_top);
}

static void check_model_dir(job_ctx *c, const fl_job *job) {
    if (!job->model_path[0]) return;
    struct stat st;
    char config[FL_JOB_PATH_MAX + 16];
    snprintf(config, sizeof config, "%s/config.json", job->model_path);
    if (stat(job->model_path, &st) != 0)
        report(c, job->model_path_line, "model.path",
               "%s does not exist (expected a Hugging Face model directory with config.json)",
               job->model_path);
    else if (!S_ISDIR(st.st_mode))
        report(c, job->model_path_line, "model.path", "%s is not a directory", job->model_path);
    else if (stat(config, &st) != 0 || !S_ISREG(st.st_mode))
        report(c, job->model_path_line, "model.path",
               "%s has no config.json (expected a Hugging Face model directory)", job->model_path);
    else if (job->offsite)
        check_offsite_split(c, job);
}

static void check_file(job_ctx *c, int line, const char *kp, const char *path) {
    if (!path[0]) return;
    struct stat st;
    if (stat(path, &st) != 0)
        report(c, line, kp, "%s does not exist", path);
    else if (!S_ISREG(st.st_mode))
        report(c, line, kp, "%s is not a file", path);
    else if (access(path, R_OK) != 0)
        report(c, line, kp, "%s is not readable", path);
}

static void check_key(job_ctx *c, int line, const char *kp, const char *prefix,
                      const char *suffix) {
    if (!prefix[0]) return;
    char path[FL_JOB_PATH_MAX + 8];
    snprintf(path, sizeof path, "%s%s", prefix, suffix);
    struct stat st;
    if (stat(path, &st) != 0)
        report(c, line, kp, "%s does not exist (make the pair with: fedllm keygen --out %s)", path,
               prefix);
    else
        check_file(c, line, kp, path);
}

static void check_client_files(job_ctx *c, const fl_job *job, int index, int with_secret,
                               int with_data) {
    const fl_job_client *cl = &job->clients[index];
    char kp[64];
    snprintf(kp, sizeof kp, "clients[%d].key", index);
    check_key(c, cl->key_line, kp, cl->key, ".pub");
    if (with_secret) check_key(c, cl->key_line, kp, cl->key, ".key");
    if (!with_data) return;
    snprintf(kp, sizeof kp, "clients[%d].train", index);
    check_file(c, cl->train_line, kp, cl->train);
    snprintf(kp, sizeof kp, "clients[%d].eval", index);
    check_file(c, cl->eval_line, kp, cl->eval);
}

/* Reports the missing files party needs (NULL: all parties). 0, or -1 for an unknown party. */
static int check_files(job_ctx *c, const fl_job *job, const char *party) {
    int server = !party || !strcmp(party, "server");
    const fl_job_client *client = party && !server ? fl_job_client_find(job, party) : NULL;
    if (party && !server && !client) {
        char names[512] = "";
        size_t used = 0;
        for (int i = 0; i < job->n_clients && used < sizeof names - 8; i++)
            used += (size_t)snprintf(names + used, sizeof names - 8 - used, "%s%s", i ? ", " : "",
                                     job->clients[i].name);
        if (used >= sizeof names - 8) strcpy(names + sizeof names - 8, ", ...");
        report(c, 0, NULL, "no client named '%s' in the job (clients: %s)", party, names);
        return -1;
    }
    check_model_dir(c, job);
    check_key(c, job->server_key_line, "server.key", job->server_key, ".pub");
    if (server) check_key(c, job->server_key_line, "server.key", job->server_key, ".key");
    for (int i = 0; i < job->n_clients; i++)
        if (!party || server || &job->clients[i] == client)
            check_client_files(c, job, i, !party || client, !server || !party);
    return 0;
}

/* ---- public --------------------------------------------------------------------------------- */

int fl_job_load(fl_job *job, const char *path, int check_files_too, char **problems, fl_err *err) {
    memset(job, 0, sizeof *job);
    if (problems) *problems = NULL;
    job_ctx c = {.file = path};
    if (strlen(path) >= sizeof job->path) {
        report(&c, 0, NULL, "job file path longer than %d bytes", FL_JOB_PATH_MAX - 1);
        return finish_problems(&c, problems, err);
    }
    snprintf(job->path, sizeof job->path, "%s", path);
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(c.dir, sizeof c.dir, "%.*s", (int)(slash - path) + (slash == path), path);

    char *text = NULL;
    size_t len = 0;
    fl_err read_err = {0};
    int rc = fl_read_file(path, &text, &len, FL_JOB_MAX_BYTES, &read_err);
    if (rc != FL_OK) {
        if (problems && (*problems = malloc(strlen(read_err.msg) + 2)) != NULL)
            sprintf(*problems, "%s\n", read_err.msg); /* one line, as every problem list */
        if (err) *err = read_err;
        memset(job, 0, sizeof *job);
        return rc;
    }
    set_defaults(job);
    ydoc doc;
    if (ydoc_read(&doc, &c, text, len) == 0) {
        c.doc = &doc;
        parse_root(&c, job);
        if (check_files_too && !c.oom) check_files(&c, job, NULL);
    }
    ydoc_free(&doc);
    free(text);
    rc = finish_problems(&c, problems, err);
    if (rc != FL_OK) fl_job_free(job);
    return rc;
}

int fl_job_check_files(const fl_job *job, const char *party, char **problems, fl_err *err) {
    job_ctx c = {.file = job->path};
    check_files(&c, job, party);
    return finish_problems(&c, problems, err);
}

const fl_job_client *fl_job_client_find(const fl_job *job, const char *name) {
    for (int i = 0; i < job->n_clients; i++)
        if (!strcmp(job->clients[i].name, name)) return &job->clients[i];
    return NULL;
}

void fl_job_free(fl_job *job) {
    free(job->clients);
    memset(job, 0, sizeof *job);
}

void fl_job_round_schedule(const fl_job *job, int round, long n_rows, fl_optim_spec *optim) {
    optim->warmup_steps = job->warmup_steps;
    optim->schedule_offset = 0;
    optim->total_steps = 0; /* the trainer's own count: this round's steps */
    if (job->schedule_per_round) return;
    long per_round = job->local_steps;
    if (per_round <= 0) { /* local epochs: this client's own steps per round */
        long rows_per_step = (long)job->batch * (job->grad_accum > 1 ? job->grad_accum : 1);
        per_round = (n_rows + rows_per_step - 1) / rows_per_step * job->local_epochs;
    }
    long long total = (long long)per_round * job->rounds, offset = (long long)per_round * round;
    if (total > INT_MAX || offset > INT_MAX) return; /* beyond int steps: per round */
    optim->total_steps = (int)total;
    optim->schedule_offset = (int)offset;
}

int fl_job_sample_count(double fraction, int n) {
    /* less a hair, so that 0.28 of 25 samples 7 clients, not 8 (0.28 * 25 is 7.000000000000001) */
    int sampled = (int)ceil(fraction * n - 1e-9);
    return sampled < 1 ? 1 : sampled;
}
