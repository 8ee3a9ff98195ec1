/* unicode.h — the small Unicode layer the tokenizers need: UTF-8 decoding and validation, the
 * three character classes of the pre-tokenizer regexes (\p{L}, \p{N}, \s), and NFC normalization.
 *
 * The character data is Unicode 14.0.0 (what Python 3.11's unicodedata carries), compiled into
 * src/base/unicode_tables.c by tools/gen_unicode.py. Every function here is pure and thread-safe;
 * only fl_uni_nfc allocates, and it can fail only for want of memory or on invalid UTF-8.
 *
 * Cost: classifying a code point below U+0100 is one load from a 256-byte table; above it, a
 * branch-free binary search over about 1,500 runs (11 steps). fl_uni_nfc copies text made only of
 * code points that can never change under NFC (all of ASCII and Latin-1, most scripts) at
 * memcpy-like speed and runs the full algorithm only on the short stretches around the others. */
#ifndef FEDLLM_UNICODE_H
#define FEDLLM_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Decodes one UTF-8 code point of s[*pos..len) into *cp and advances *pos past it. Returns 1, or 0
 * on an invalid sequence (overlong form, surrogate, above U+10FFFF, truncated, stray continuation
 * byte, or *pos >= len), leaving *pos and *cp unchanged. */
int fl_utf8_next(const char *s, size_t len, size_t *pos, uint32_t *cp);
/* Returns 1 if all len bytes are valid UTF-8. Otherwise returns 0 and, when bad is not NULL, sets
 * *bad to the offset of the first byte that does not start a valid sequence (the lead byte of a
 * truncated or malformed sequence, or a stray continuation byte). */
int fl_utf8_valid(const char *s, size_t len, size_t *bad);
/* Writes cp's UTF-8 form (1..4 bytes) to out and returns its length. A surrogate or a value above
 * U+10FFFF, which UTF-8 cannot carry, is written as U+FFFD (3 bytes). Cannot fail. */
int fl_utf8_put(uint32_t cp, char out[4]);

/* Character classes, as bits of fl_uni_class. A code point is in at most one of them (no letter or
 * number is White_Space). Unassigned code points, surrogates and values above U+10FFFF are in
 * none. */
enum {
    FL_UNI_LETTER = 1, /* general category L*: Lu Ll Lt Lm Lo, regex \p{L} */
    FL_UNI_NUMBER = 2, /* general category N*: Nd Nl No, regex \p{N} */
    FL_UNI_SPACE = 4,  /* the White_Space property, regex \s */
};
/* The FL_UNI_* bits of cp, in one lookup; 0 when cp is in no class. */
int fl_uni_class(uint32_t cp);
/* General category L* (Lu Ll Lt Lm Lo) — regex \p{L}. Returns 1 or 0. */
int fl_uni_is_letter(uint32_t cp);
/* General category N* (Nd Nl No) — regex \p{N}. Returns 1 or 0. */
int fl_uni_is_number(uint32_t cp);
/* The White_Space property (regex \s in Oniguruma / Rust regex): U+0009..000D, 0020, 0085, 00A0,
 * 1680, 2000..200A, 2028, 2029, 202F, 205F, 3000. Returns 1 or 0. U+001C..001F, which Python's
 * str.isspace accepts, are not White_Space. */
int fl_uni_is_space(uint32_t cp);
/* Canonical combining class of cp (0..254; 0 for starters, unassigned code points and values above
 * U+10FFFF). */
int fl_uni_ccc(uint32_t cp);

/* Canonical composition (NFC, Unicode Standard Annex #15) of the UTF-8 text s[0..len): writes a
 * malloc'd, NUL-terminated result to *out and its length (without the NUL) to *out_len; the caller
 * frees *out. Returns 0, or -1 on allocation failure or invalid UTF-8, with *out = NULL and
 * *out_len = 0. s need not be NUL-terminated and may contain NUL bytes. The result is usually as
 * long as s, and at most 3 times longer (U+FB2C, U+1D160).
 *
 * Text whose every code point has NFC_Quick_Check=Yes and canonical combining class 0 is copied
 * unchanged. Elsewhere the text is cut before such code points (each starts a stretch that
 * normalizes independently), and each stretch that holds another code point goes through the full
 * algorithm: canonical decomposition (recursive, Hangul syllables algorithmically), stable
 * canonical ordering by combining class, and canonical composition without the composition
 * exclusions, singletons and non-starter decompositions, composing Hangul LV and LVT syllables. */
int fl_uni_nfc(const char *s, size_t len, char **out, size_t *out_len);

/* The tables generated into src/base/unicode_tables.c by tools/gen_unicode.py, for unicode.c and
 * its test; not an API. A "runs" table lists, in increasing order, every code point at which a
 * property changes, as (first_cp << 8) | value; entry 0 has first_cp 0, and the value of cp is
 * that of the last entry whose first_cp <= cp. */
extern const char fl_uni_version[];            /* "14.0.0" */
extern const uint8_t fl_uni_latin1_flags[256]; /* FL_UNI_* bits of U+0000..U+00FF */
/* One byte per 64 code points of the BMP (fl_uni_bmp_blocks[cp >> 6]): the block's FL_UNI_* bits
 * when all 64 share them, else FL_UNI_BLOCK_MIXED; FL_UNI_BLOCK_UNSTABLE when one of them is
 * NFC-unstable (below). A clear block spares the binary searches. */
enum { FL_UNI_BLOCK_MIXED = 0x08, FL_UNI_BLOCK_UNSTABLE = 0x10 };
extern const uint8_t fl_uni_bmp_blocks[1024];
extern const uint32_t fl_uni_class_runs[]; /* value: FL_UNI_* bits */
extern const size_t fl_uni_class_runs_count;
extern const uint32_t fl_uni_ccc_runs[]; /* value: canonical combining class */
extern const size_t fl_uni_ccc_runs_count;
/* Value 1 where NFC_Quick_Check is No or Maybe or the combining class is not 0: the code points
 * that NFC can change or that can change their neighbours. None is below
 * fl_uni_nfc_first_unstable. */
extern const uint32_t fl_uni_nfc_unstable_runs[];
extern const size_t fl_uni_nfc_unstable_runs_count;
extern const uint32_t fl_uni_nfc_first_unstable;
/* Full canonical decompositions, Hangul syllables excepted: the code points fl_uni_decomp_keys[i]
 * (increasing) decompose to fl_uni_decomp_pool[fl_uni_decomp_index[i] .. fl_uni_decomp_index[i+1]),
 * at most fl_uni_decomp_max_len code points, none of which decomposes further. */
extern const uint32_t fl_uni_decomp_keys[];
extern const uint16_t fl_uni_decomp_index[]; /* fl_uni_decomp_count + 1 entries */
extern const uint32_t fl_uni_decomp_pool[];
extern const size_t fl_uni_decomp_count;
extern const size_t fl_uni_decomp_max_len;
/* The primary composites, Hangul excepted: (first << 42) | (second << 21) | composite, increasing,
 * one entry per pair that canonical composition joins. */
extern const uint64_t fl_uni_comp_pairs[];
extern const size_t fl_uni_comp_pairs_count;

#endif
