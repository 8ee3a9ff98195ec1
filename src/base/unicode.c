/* unicode.c — UTF-8 decoding, the \p{L} / \p{N} / \s classes and NFC normalization (unicode.h).
 *
 * The character data lives in unicode_tables.c, generated from Python's unicodedata. Properties
 * are "runs" tables (one uint32 per code point where the value changes), looked up by a branch-free
 * binary search; code points below U+0100 skip it through a 256-entry table, and most of the rest
 * of the BMP through a byte per 64 code points that says when the whole block agrees.
 *
 * NFC works stretch by stretch. A code point with NFC_Quick_Check=Yes and combining class 0 is
 * "stable": nothing before it can compose with it or reorder past it, and its own decomposition
 * begins with a stable starter (the generator checks both), so NFC(x y) = NFC(x) NFC(y) whenever y
 * begins with one. The scan copies stable code points through untouched; at the first unstable one
 * it backs up to the last stable code point, extends forward to the next stable one, and runs the
 * textbook algorithm (decompose, order, compose) on that stretch alone. A stretch is usually a few
 * code points; a hostile one (a million combining marks) costs linear time and memory. */
#include "fedllm/unicode.h"

#include <stdlib.h>
#include <string.h>

/* Hangul syllable arithmetic (Unicode Standard 3.12): S = S_BASE + (L * V_COUNT + V) * T_COUNT + T,
 * with L, V, T indices into the leading, vowel and trailing jamo; T = 0 means no trailing jamo. */
enum {
    S_BASE = 0xAC00,
    L_BASE = 0x1100,
    V_BASE = 0x1161,
    T_BASE = 0x11A7,
    L_COUNT = 19,
    V_COUNT = 21,
    T_COUNT = 28,
    N_COUNT = V_COUNT * T_COUNT,
    S_COUNT = L_COUNT * N_COUNT,
};

#define MAX_CP    0x10FFFFu
#define CP_MASK   0x1FFFFFu /* a code point inside a packed (ccc << 24) | cp word */
#define CCC_OF(w) ((w) >> 24)
/* Runs of combining marks longer than this are ordered by counting sort (linear) instead of
 * insertion sort (quadratic). */
#define INSERTION_SORT_MAX 32

int fl_utf8_next(const char *s, size_t len, size_t *pos, uint32_t *cp) {
    size_t at = *pos;
    if (at >= len) return 0;
    const unsigned char *u = (const unsigned char *)s + at;
    unsigned lead = u[0];
    if (lead < 0x80) {
        *cp = lead;
        *pos = at + 1;
        return 1;
    }
    /* lo..hi bounds the second byte, which is where overlong forms, surrogates and values above
     * U+10FFFF show (Unicode Standard table 3-7). */
    unsigned lo = 0x80, hi = 0xBF;
    size_t n;
    uint32_t value;
    if (lead < 0xC2) return 0; /* a continuation byte, or an overlong 2-byte form */
    if (lead < 0xE0) {
        n = 2;
        value = lead & 0x1F;
    } else if (lead < 0xF0) {
        n = 3;
        value = lead & 0x0F;
        if (lead == 0xE0) lo = 0xA0;
        if (lead == 0xED) hi = 0x9F;
    } else if (lead < 0xF5) {
        n = 4;
        value = lead & 0x07;
        if (lead == 0xF0) lo = 0x90;
        if (lead == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (len - at < n || u[1] < lo || u[1] > hi) return 0;
    value = value << 6 | (u[1] & 0x3F);
    for (size_t i = 2; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80) return 0;
        value = value << 6 | (u[i] & 0x3F);
    }
    *cp = value;
    *pos = at + n;
    return 1;
}

/* The first offset at or after pos that holds a byte >= 0x80, or len; 8 bytes at a time. */
static size_t skip_ascii(const char *s, size_t len, size_t pos) {
    while (len - pos >= 8) {
        uint64_t word;
        memcpy(&word, s + pos, 8);
        if (word & 0x8080808080808080ull) break;
        pos += 8;
    }
    while (pos < len && (unsigned char)s[pos] < 0x80)
        pos++;
    return pos;
}

int fl_utf8_valid(const char *s, size_t len, size_t *bad) {
    size_t pos = 0;
    uint32_t cp;
    for (;;) {
        pos = skip_ascii(s, len, pos);
        if (pos == len) return 1;
        if (!fl_utf8_next(s, len, &pos, &cp)) {
            if (bad) *bad = pos;
            return 0;
        }
    }
}

int fl_utf8_put(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp > MAX_CP || (cp >= 0xD800 && cp < 0xE000)) cp = 0xFFFD;
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The value of cp (<= U+10FFFF) in a runs table: the low byte of the last entry whose code point,
 * entry >> 8, is <= cp. runs[0] starts at code point 0, so there always is one. Branch-free: the
 * candidate range halves each step whichever way the comparison goes. */
static unsigned run_value(const uint32_t *runs, size_t count, uint32_t cp) {
    const uint32_t key = cp << 8 | 0xFF;
    const uint32_t *base = runs;
    while (count > 1) {
        size_t half = count / 2;
        base = base[half] <= key ? base + half : base;
        count -= half;
    }
    return *base & 0xFF;
}

int fl_uni_class(uint32_t cp) {
    if (cp < 0x100) return fl_uni_latin1_flags[cp] & (FL_UNI_LETTER | FL_UNI_NUMBER | FL_UNI_SPACE);
    if (cp < 0x10000) {
        unsigned block = fl_uni_bmp_blocks[cp >> 6];
        if (!(block & FL_UNI_BLOCK_MIXED))
            return (int)(block & (FL_UNI_LETTER | FL_UNI_NUMBER | FL_UNI_SPACE));
    } else if (cp > MAX_CP) {
        return 0;
    }
    return (int)run_value(fl_uni_class_runs, fl_uni_class_runs_count, cp);
}

int fl_uni_is_letter(uint32_t cp) { return (fl_uni_class(cp) & FL_UNI_LETTER) != 0; }

int fl_uni_is_number(uint32_t cp) { return (fl_uni_class(cp) & FL_UNI_NUMBER) != 0; }

int fl_uni_is_space(uint32_t cp) { return (fl_uni_class(cp) & FL_UNI_SPACE) != 0; }

int fl_uni_ccc(uint32_t cp) {
    if (cp < fl_uni_nfc_first_unstable || cp > MAX_CP) return 0; /* ccc != 0 implies unstable */
    return (int)run_value(fl_uni_ccc_runs, fl_uni_ccc_runs_count, cp);
}

/* NFC_Quick_Check=Yes and combining class 0: a stretch boundary (see the top of the file). */
static int nfc_stable(uint32_t cp) {
    if (cp < fl_uni_nfc_first_unstable) return 1;
    if (cp < 0x10000 && !(fl_uni_bmp_blocks[cp >> 6] & FL_UNI_BLOCK_UNSTABLE)) return 1;
    return !run_value(fl_uni_nfc_unstable_runs, fl_uni_nfc_unstable_runs_count, cp);
}

/* Appends cp's full canonical decomposition to cps[count..], packed as (ccc << 24) | cp, and
 * returns the new count. Adds at most max(fl_uni_decomp_max_len, 3) entries. */
static size_t decompose(uint32_t cp, uint32_t *cps, size_t count) {
    uint32_t s_index = cp - S_BASE;
    if (s_index < S_COUNT) {
        cps[count++] = L_BASE + s_index / N_COUNT;
        cps[count++] = V_BASE + s_index % N_COUNT / T_COUNT;
        if (s_index % T_COUNT) cps[count++] = T_BASE + s_index % T_COUNT;
        return count;
    }
    size_t lo = 0, hi = fl_uni_decomp_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (fl_uni_decomp_keys[mid] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < fl_uni_decomp_count && fl_uni_decomp_keys[lo] == cp) {
        for (size_t i = fl_uni_decomp_index[lo]; i < fl_uni_decomp_index[lo + 1]; i++) {
            uint32_t part = fl_uni_decomp_pool[i];
            cps[count++] = (uint32_t)fl_uni_ccc(part) << 24 | part;
        }
        return count;
    }
    cps[count++] = (uint32_t)fl_uni_ccc(cp) << 24 | cp;
    return count;
}

/* Stable sort of one run of combining marks (all ccc > 0) by ccc; tmp holds n entries. */
static void order_marks(uint32_t *marks, size_t n, uint32_t *tmp) {
    if (n <= INSERTION_SORT_MAX) {
        for (size_t i = 1; i < n; i++) {
            uint32_t mark = marks[i];
            size_t j = i;
            for (; j > 0 && CCC_OF(marks[j - 1]) > CCC_OF(mark); j--)
                marks[j] = marks[j - 1];
            marks[j] = mark;
        }
        return;
    }
    size_t start[257] = {0};
    for (size_t i = 0; i < n; i++)
        start[CCC_OF(marks[i]) + 1]++;
    for (int c = 1; c <= 256; c++)
        start[c] += start[c - 1];
    for (size_t i = 0; i < n; i++)
        tmp[start[CCC_OF(marks[i])]++] = marks[i];
    memcpy(marks, tmp, n * sizeof *marks);
}

/* Canonical ordering: each maximal run of code points with ccc > 0, stably sorted by ccc. */
static void canonical_order(uint32_t *cps, size_t count, uint32_t *tmp) {
    size_t i = 0;
    while (i < count) {
        if (CCC_OF(cps[i]) == 0) {
            i++;
            continue;
        }
        size_t start = i;
        while (i < count && CCC_OF(cps[i]) != 0)
            i++;
        if (i - start > 1) order_marks(cps + start, i - start, tmp);
    }
}

/* The primary composite of starter a and b, or 0 when they do not compose. */
static uint32_t compose_pair(uint32_t a, uint32_t b) {
    uint32_t l_index = a - L_BASE, v_index = b - V_BASE, s_index = a - S_BASE;
    uint32_t t_index = b - T_BASE;
    if (l_index < L_COUNT && v_index < V_COUNT)
        return S_BASE + (l_index * V_COUNT + v_index) * T_COUNT;
    if (s_index < S_COUNT && s_index % T_COUNT == 0 && t_index - 1 < T_COUNT - 1)
        return a + t_index;
    uint64_t key = (uint64_t)a << 42 | (uint64_t)b << 21;
    size_t lo = 0, hi = fl_uni_comp_pairs_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (fl_uni_comp_pairs[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < fl_uni_comp_pairs_count && fl_uni_comp_pairs[lo] >> 21 == key >> 21)
        return (uint32_t)(fl_uni_comp_pairs[lo] & CP_MASK);
    return 0;
}

/* Canonical composition in place (UAX #15, section 3.11 / the Unicode sample code): each code
 * point joins the last starter when it is not blocked from it (nothing between with ccc 0 or with
 * ccc >= its own) and the pair is a primary composite. Returns the new count. */
static size_t compose(uint32_t *cps, size_t count) {
    size_t starter = 0, kept = 0;
    int have_starter = 0;
    unsigned last_ccc = 0; /* ccc of cps[kept - 1]; 0 means that one is the starter itself */
    for (size_t i = 0; i < count; i++) {
        uint32_t c = cps[i];
        unsigned ccc = CCC_OF(c);
        if (have_starter && (last_ccc == 0 || last_ccc < ccc)) {
            uint32_t composite = compose_pair(cps[starter] & CP_MASK, c & CP_MASK);
            if (composite) {
                cps[starter] = composite; /* a primary composite has ccc 0 */
                continue;
            }
        }
        if (ccc == 0) {
            starter = kept;
            have_starter = 1;
        }
        last_ccc = ccc;
        cps[kept++] = c;
    }
    return kept;
}

/* The result under construction, and scratch for one stretch. */
typedef struct nfc_buf {
    char *bytes; /* the normalized text so far, len of cap bytes used */
    size_t len, cap;
    uint32_t *cps; /* the stretch as (ccc << 24) | cp, then sort scratch: cps_cap entries */
    size_t cps_cap;
} nfc_buf;

static int reserve_bytes(nfc_buf *b, size_t more) {
    if (more > SIZE_MAX / 2 - b->len) return -1;
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap * 2 > b->len + more ? b->cap * 2 : b->len + more;
    char *grown = realloc(b->bytes, cap);
    if (!grown) return -1;
    b->bytes = grown;
    b->cap = cap;
    return 0;
}

static int append_bytes(nfc_buf *b, const char *s, size_t n) {
    if (reserve_bytes(b, n) != 0) return -1;
    memcpy(b->bytes + b->len, s, n);
    b->len += n;
    return 0;
}

/* Appends NFC of the stretch s[0..n) (valid UTF-8) to b. */
static int nfc_stretch(nfc_buf *b, const char *s, size_t n) {
    /* n bytes hold at most n code points, each decomposing to at most 4 (3 for Hangul); the
     * second half of the allocation is the counting sort's scratch. */
    size_t per_cp = fl_uni_decomp_max_len > 3 ? fl_uni_decomp_max_len : 3;
    if (n > SIZE_MAX / sizeof(uint32_t) / 2 / per_cp) return -1;
    size_t need = n * per_cp;
    if (need > b->cps_cap) {
        uint32_t *grown = realloc(b->cps, 2 * need * sizeof *grown);
        if (!grown) return -1;
        b->cps = grown;
        b->cps_cap = need;
    }
    size_t count = 0, pos = 0;
    uint32_t cp;
    while (pos < n) {
        if (!fl_utf8_next(s, n, &pos, &cp)) return -1;
        count = decompose(cp, b->cps, count);
    }
    canonical_order(b->cps, count, b->cps + b->cps_cap);
    count = compose(b->cps, count);
    if (reserve_bytes(b, 4 * count) != 0) return -1;
    for (size_t i = 0; i < count; i++)
        b->len += (size_t)fl_utf8_put(b->cps[i] & CP_MASK, b->bytes + b->len);
    return 0;
}

/* Scans s[*pos..len) over stable code points. Stops at the first unstable one, setting *pos to its
 * offset, or at len; *boundary becomes the offset of the last stable code point passed, if any.
 * Returns 0, or -1 on invalid UTF-8. */
static int scan_stable(const char *s, size_t len, size_t *pos, size_t *boundary) {
    size_t at = *pos;
    while (at < len) {
        if ((unsigned char)s[at] < 0x80) {
            at = skip_ascii(s, len, at);
            *boundary = at - 1;
            continue;
        }
        size_t next = at;
        uint32_t cp;
        if (!fl_utf8_next(s, len, &next, &cp)) return -1;
        if (!nfc_stable(cp)) break;
        *boundary = at;
        at = next;
    }
    *pos = at;
    return 0;
}

/* The offset of the first stable code point after the unstable one at s[at], or len. Returns 0, or
 * -1 on invalid UTF-8. */
static int stretch_end(const char *s, size_t len, size_t at, size_t *end) {
    uint32_t cp;
    if (!fl_utf8_next(s, len, &at, &cp)) return -1;
    while (at < len) {
        size_t next = at;
        if (!fl_utf8_next(s, len, &next, &cp)) return -1;
        if (nfc_stable(cp)) break;
        at = next;
    }
    *end = at;
    return 0;
}

int fl_uni_nfc(const char *s, size_t len, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    nfc_buf b = {0};
    size_t pos = 0, boundary = 0, copied = 0; /* s[0..copied) is accounted for in b */
    for (;;) {
        if (scan_stable(s, len, &pos, &boundary) != 0) goto fail;
        if (pos == len) break;
        size_t end;
        if (stretch_end(s, len, pos, &end) != 0) goto fail;
        if (!b.bytes && reserve_bytes(&b, len + len / 8 + 64) != 0) goto fail;
        if (append_bytes(&b, s + copied, boundary - copied) != 0) goto fail;
        if (nfc_stretch(&b, s + boundary, end - boundary) != 0) goto fail;
        copied = pos = boundary = end;
    }
    if (!b.bytes) { /* all stable: the text is its own NFC */
        if (len == SIZE_MAX || !(b.bytes = malloc(len + 1))) return -1;
        if (len) memcpy(b.bytes, s, len); /* s may be NULL when len is 0 */
        b.len = len;
    } else if (append_bytes(&b, s + copied, len - copied) != 0 || reserve_bytes(&b, 1) != 0) {
        goto fail;
    }
    b.bytes[b.len] = '\0';
    free(b.cps);
    *out = b.bytes;
    *out_len = b.len;
    return 0;
fail:
    free(b.bytes);
    free(b.cps);
    return -1;
}
