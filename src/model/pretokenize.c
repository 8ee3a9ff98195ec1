/* pretokenize.c — the pre-tokenizer regexes of GPT-2, LLaMA-3 and Qwen2 as hand-written matchers.
 *
 * `tokenizers` runs these patterns with a backtracking regex engine (Oniguruma); each is an
 * ordered alternation, so at every position the first alternative that matches wins, and each
 * alternative is greedy. The matchers below walk the same alternatives in the same order over the
 * piece's code points, classified once into letter (\p{L}), number (\p{N}) and space (\s, the
 * White_Space property); "other" is everything else. Every code point belongs to some alternative,
 * so the matches tile the input, which is what the Split "isolated" behaviour then yields.
 *
 *   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   LLaMA-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   Qwen2:   as LLaMA-3 with \p{N} (one digit at a time)
 *
 * The backtracking that matters: `\s+(?!\S)` before a non-space gives back the run's last space
 * (which then starts the next word, " word"), and `\s*[\r\n]+` ends right after the run's last
 * line break. */
#include <stdlib.h>
#include <string.h>

#include "fedllm/unicode.h"
#include "model/tokenizer_internal.h"

enum { CL_LETTER = FL_UNI_LETTER, CL_NUMBER = FL_UNI_NUMBER, CL_SPACE = FL_UNI_SPACE };

static const char PATTERN_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char PATTERN_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char PATTERN_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

fl_pattern fl_pattern_from_text(const char *text) {
    if (strcmp(text, PATTERN_GPT2) == 0) return FL_PATTERN_GPT2;
    if (strcmp(text, PATTERN_LLAMA3) == 0) return FL_PATTERN_LLAMA3;
    if (strcmp(text, PATTERN_QWEN2) == 0) return FL_PATTERN_QWEN2;
    return FL_PATTERN_NONE;
}

void fl_split_scratch_free(fl_split_scratch *s) {
    free(s->cp);
    free(s->off);
    free(s->cls);
    memset(s, 0, sizeof *s);
}

static uint8_t classify(uint32_t c) {
    if (c < 0x80) {
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CL_LETTER;
        if (c >= '0' && c <= '9') return CL_NUMBER;
        return (c == ' ' || (c >= 0x09 && c <= 0x0D)) ? CL_SPACE : 0;
    }
    return (uint8_t)fl_uni_class(c);
}

/* The piece being matched: n code points with their classes. */
typedef struct piece {
    const uint32_t *cp;
    const uint8_t *cls;
    size_t n;
} piece;

static int is_other(const piece *p, size_t i) { return p->cls[i] == 0; }
static int is_newline(uint32_t c) { return c == '\r' || c == '\n'; }

static size_t run_of(const piece *p, size_t i, uint8_t cls) {
    while (i < p->n && p->cls[i] == cls)
        i++;
    return i;
}

static size_t run_of_other(const piece *p, size_t i) {
    while (i < p->n && p->cls[i] == 0)
        i++;
    return i;
}

/* Lowercases what (?i:...) folds onto the ASCII letters of the contractions: ASCII capitals, and
 * U+017F LATIN SMALL LETTER LONG S, whose case fold is 's'. */
static uint32_t fold(uint32_t c, int case_insensitive) {
    if (!case_insensitive) return c;
    if (c >= 'A' && c <= 'Z') return c + 32;
    return c == 0x17F ? 's' : c;
}

/* Length after the apostrophe at i of the first contraction that matches ('s 't 're 've 'm 'll
 * 'd, in that order), or 0. */
static size_t contraction(const piece *p, size_t i, int case_insensitive) {
    static const char *const forms[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    for (size_t f = 0; f < sizeof forms / sizeof *forms; f++) {
        size_t k = 0;
        while (forms[f][k] && i + 1 + k < p->n &&
               fold(p->cp[i + 1 + k], case_insensitive) == (uint32_t)forms[f][k])
            k++;
        if (!forms[f][k]) return k;
    }
    return 0;
}

/* \s+(?!\S) and then \s+, for a space run starting at i. */
static size_t space_run(const piece *p, size_t i) {
    size_t j = run_of(p, i, CL_SPACE);
    if (j == p->n || j - i < 2) return j;
    return j - 1;
}

static size_t match_gpt2(const piece *p, size_t i) {
    uint32_t c = p->cp[i];
    if (c == '\'') {
        size_t k = contraction(p, i, 0);
        if (k) return i + 1 + k;
    }
    size_t s = c == ' ' && i + 1 < p->n ? i + 1 : i; /* after the optional space */
    if (p->cls[s] == CL_LETTER) return run_of(p, s, CL_LETTER);
    if (p->cls[s] == CL_NUMBER) return run_of(p, s, CL_NUMBER);
    if (is_other(p, s)) return run_of_other(p, s);
    return space_run(p, i);
}

static size_t match_llama3(const piece *p, size_t i, size_t max_digits) {
    uint32_t c = p->cp[i];
    if (c == '\'') {
        size_t k = contraction(p, i, 1);
        if (k) return i + 1 + k;
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (!is_newline(c) && p->cls[i] != CL_LETTER && p->cls[i] != CL_NUMBER && i + 1 < p->n &&
        p->cls[i + 1] == CL_LETTER)
        return run_of(p, i + 1, CL_LETTER);
    if (p->cls[i] == CL_LETTER) return run_of(p, i, CL_LETTER);
    if (p->cls[i] == CL_NUMBER) {
        size_t j = i;
        while (j < p->n && p->cls[j] == CL_NUMBER && j - i < max_digits)
            j++;
        return j;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t s = c == ' ' && i + 1 < p->n && is_other(p, i + 1) ? i + 1 : i;
    if (is_other(p, s)) {
        size_t j = run_of_other(p, s);
        while (j < p->n && is_newline(p->cp[j]))
            j++;
        return j;
    }
    /* \s*[\r\n]+ ends after the last line break of the space run */
    size_t j = run_of(p, i, CL_SPACE);
    for (size_t k = j; k > i; k--)
        if (is_newline(p->cp[k - 1])) return k;
    return space_run(p, i);
}

static int reserve(fl_split_scratch *s, size_t n, fl_err *err) {
    if (n + 1 <= s->cap) return FL_OK;
    size_t cap = (n + 1) * 2;
    uint32_t *cp = realloc(s->cp, cap * sizeof *cp);
    if (cp) s->cp = cp;
    uint32_t *off = realloc(s->off, cap * sizeof *off);
    if (off) s->off = off;
    uint8_t *cls = realloc(s->cls, cap);
    if (cls) s->cls = cls;
    if (!cp || !off || !cls) return fl_err_set(err, FL_ENOMEM, "out of memory pre-tokenizing");
    s->cap = cap;
    return FL_OK;
}

int fl_pattern_split(fl_pattern pattern, const char *s, size_t len, fl_split_scratch *scratch,
                     int (*emit)(void *ctx, size_t start, size_t end), void *ctx, fl_err *err) {
    if (reserve(scratch, len, err)) return FL_ENOMEM;
    size_t n = 0, pos = 0;
    while (pos < len) {
        scratch->off[n] = (uint32_t)pos;
        uint32_t c = (unsigned char)s[pos];
        if (c < 0x80)
            pos++;
        else if (!fl_utf8_next(s, len, &pos, &c))
            return fl_err_set(err, FL_EINTERNAL, "pre-tokenizer given invalid UTF-8");
        scratch->cp[n] = c;
        scratch->cls[n] = classify(c);
        n++;
    }
    scratch->off[n] = (uint32_t)len;
    piece p = {scratch->cp, scratch->cls, n};
    for (size_t i = 0; i < n;) {
        size_t j = pattern == FL_PATTERN_GPT2     ? match_gpt2(&p, i)
                   : pattern == FL_PATTERN_LLAMA3 ? match_llama3(&p, i, 3)
                                                  : match_llama3(&p, i, 1);
        int rc = emit(ctx, scratch->off[i], scratch->off[j]);
        if (rc) return fl_err_set(err, rc, "out of memory pre-tokenizing");
        i = j;
    }
    return FL_OK;
}
