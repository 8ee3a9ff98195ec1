/* test_unicode.c — UTF-8 decoding against a naive reference decoder over every 1-, 2- and 3-byte
 * sequence, the character classes and NFC against Python's unicodedata (fixtures written by
 * `python3 tools/gen_unicode.py --fixtures`), and NFC's edge cases: already-normal text, invalid
 * input, NUL bytes, a hostile run of 100,000 combining marks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/unicode.h"
#include "testutil.h"

#define FIXTURES "tests/fixtures/unicode"

/* The reference decoder: the bit pattern, then the three rules (shortest form, no surrogate, at
 * most U+10FFFF) checked on the value. Returns the sequence length, or 0 when invalid. */
static size_t naive_decode(const unsigned char *u, size_t len, uint32_t *cp) {
    size_t n;
    uint32_t value;
    if (u[0] < 0x80)
        n = 1, value = u[0];
    else if ((u[0] & 0xE0) == 0xC0)
        n = 2, value = u[0] & 0x1F;
    else if ((u[0] & 0xF0) == 0xE0)
        n = 3, value = u[0] & 0x0F;
    else if ((u[0] & 0xF8) == 0xF0)
        n = 4, value = u[0] & 0x07;
    else
        return 0;
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80) return 0;
        value = value << 6 | (u[i] & 0x3F);
    }
    static const uint32_t shortest[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (n > 1 && value < shortest[n]) return 0;
    if ((value >= 0xD800 && value < 0xE000) || value > 0x10FFFF) return 0;
    *cp = value;
    return n;
}

/* fl_utf8_next and fl_utf8_valid agree with naive_decode on bytes[0..len). */
static int agrees_with_naive(const unsigned char *bytes, size_t len) {
    uint32_t want = 0, got = 0xDEAD;
    size_t n = naive_decode(bytes, len, &want), pos = 0, bad = 99;
    int ok = fl_utf8_next((const char *)bytes, len, &pos, &got);
    if (n == 0)
        return !ok && pos == 0 && got == 0xDEAD && !fl_utf8_valid((const char *)bytes, len, &bad) &&
               bad == 0;
    return ok && pos == n && got == want &&
           (n < len || fl_utf8_valid((const char *)bytes, len, NULL));
}

static void test_utf8_exhaustive(void) {
    unsigned char b[4];
    size_t disagree = 0;
    for (uint32_t x = 0; x < 1u << 24; x++) { /* every 1-, 2- and 3-byte string */
        b[0] = (unsigned char)(x >> 16), b[1] = (unsigned char)(x >> 8), b[2] = (unsigned char)x;
        if (x < 256 && !agrees_with_naive(b + 2, 1)) disagree++;
        if (x < 65536 && !agrees_with_naive(b + 1, 2)) disagree++;
        if (!agrees_with_naive(b, 3)) disagree++;
    }
    static const unsigned char tails[] = {0x00, 0x7F, 0x80, 0x8F, 0x90, 0xBF, 0xC0, 0xFF};
    for (unsigned lead = 0xF0; lead <= 0xFF; lead++) /* 4-byte leads, tails sampled */
        for (unsigned b1 = 0; b1 < 256; b1++)
            for (size_t i = 0; i < sizeof tails; i++)
                for (size_t j = 0; j < sizeof tails; j++) {
                    unsigned char four[4] = {(unsigned char)lead, (unsigned char)b1, tails[i],
                                             tails[j]};
                    if (!agrees_with_naive(four, 4)) disagree++;
                }
    CHECK(disagree == 0, "%zu byte strings decode differently from the reference", disagree);
}

static void test_utf8_put_roundtrip(void) {
    size_t wrong = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        if (cp == 0xD800) cp = 0xE000;
        char buf[4];
        int n = fl_utf8_put(cp, buf);
        int want = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        size_t pos = 0;
        uint32_t back = 0;
        if (n != want || !fl_utf8_next(buf, (size_t)n, &pos, &back) || back != cp ||
            pos != (size_t)n)
            wrong++;
    }
    CHECK(wrong == 0, "%zu code points do not survive fl_utf8_put then fl_utf8_next", wrong);
    char buf[4];
    CHECK(fl_utf8_put(0xD800, buf) == 3 && memcmp(buf, "\xEF\xBF\xBD", 3) == 0,
          "surrogate -> FFFD");
    CHECK(fl_utf8_put(0x110000, buf) == 3 && memcmp(buf, "\xEF\xBF\xBD", 3) == 0,
          "too big -> FFFD");
    CHECK(fl_utf8_put(0x10FFFF, buf) == 4 && memcmp(buf, "\xF4\x8F\xBF\xBF", 4) == 0, "U+10FFFF");
}

/* Each class of invalid sequence, inside "ab...cd": fl_utf8_next refuses at offset 2, leaving the
 * position alone, and fl_utf8_valid names offset 2. */
static void test_utf8_invalid(void) {
    static const struct {
        const char *what, *bytes;
    } cases[] = {
        {"overlong 2-byte C0", "\xC0\x80"},
        {"overlong 2-byte C1", "\xC1\xBF"},
        {"overlong 3-byte", "\xE0\x80\x80"},
        {"overlong 3-byte top", "\xE0\x9F\xBF"},
        {"overlong 4-byte", "\xF0\x80\x80\x80"},
        {"overlong 4-byte top", "\xF0\x8F\xBF\xBF"},
        {"surrogate D800", "\xED\xA0\x80"},
        {"surrogate DFFF", "\xED\xBF\xBF"},
        {"above U+10FFFF", "\xF4\x90\x80\x80"},
        {"lead F5", "\xF5\x80\x80\x80"},
        {"lead FF", "\xFF"},
        {"stray continuation 80", "\x80"},
        {"stray continuation BF", "\xBF"},
        {"bad second byte", "\xC3\x41"},
        {"bad third byte", "\xE2\x82\x41"},
        {"bad fourth byte", "\xF0\x9F\x98\x41"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char text[16];
        size_t n = (size_t)snprintf(text, sizeof text, "ab%scd", cases[i].bytes);
        size_t pos = 2, bad = 0;
        uint32_t cp = 7;
        CHECK(!fl_utf8_next(text, n, &pos, &cp) && pos == 2 && cp == 7, "%s: next", cases[i].what);
        CHECK(!fl_utf8_valid(text, n, &bad) && bad == 2, "%s: valid, bad = %zu", cases[i].what,
              bad);
    }
    static const char *truncated[] = {"\xC3", "\xE2\x82", "\xF0\x9F\x98", "\xF0"};
    for (size_t i = 0; i < sizeof truncated / sizeof *truncated; i++) {
        char text[16];
        size_t n = (size_t)snprintf(text, sizeof text, "abc%s", truncated[i]);
        size_t pos = 3, bad = 0;
        uint32_t cp = 7;
        CHECK(!fl_utf8_next(text, n, &pos, &cp) && pos == 3 && cp == 7, "truncated %zu: next", i);
        CHECK(!fl_utf8_valid(text, n, &bad) && bad == 3, "truncated %zu: bad = %zu", i, bad);
    }
    size_t pos = 3;
    uint32_t cp;
    CHECK(!fl_utf8_next("abc", 3, &pos, &cp) && pos == 3, "at the end");
    CHECK(fl_utf8_valid("", 0, NULL), "empty");
    const char *mixed = "na\xC3\xAFve \xE2\x82\xAC \xF0\x9F\x98\x80 \xE4\xB8\xAD\xE6\x96\x87";
    CHECK(fl_utf8_valid(mixed, strlen(mixed), NULL), "valid mixed text");
    uint32_t want[] = {'n', 'a', 0xEF, 'v', 'e', ' ', 0x20AC, ' ', 0x1F600, ' ', 0x4E2D, 0x6587};
    size_t count = 0, len = strlen(mixed);
    pos = 0;
    while (fl_utf8_next(mixed, len, &pos, &cp) && count < 12 && cp == want[count])
        count++;
    CHECK(count == 12 && pos == len, "decoded %zu of 12 code points", count);
}

static void test_classes_spot(void) {
    static const struct {
        uint32_t cp;
        int bits;
    } cases[] = {
        {'A', FL_UNI_LETTER},
        {'z', FL_UNI_LETTER},
        {'5', FL_UNI_NUMBER},
        {' ', FL_UNI_SPACE},
        {'\t', FL_UNI_SPACE},
        {'\r', FL_UNI_SPACE},
        {0x0B, FL_UNI_SPACE},
        {0x1C, 0},
        {0x1F, 0},
        {'_', 0},
        {'\'', 0},
        {0x85, FL_UNI_SPACE},
        {0xA0, FL_UNI_SPACE},
        {0xAA, FL_UNI_LETTER},
        {0xB2, FL_UNI_NUMBER},
        {0xBD, FL_UNI_NUMBER},
        {0xB5, FL_UNI_LETTER},
        {0xD7, 0},
        {0xDF, FL_UNI_LETTER},
        {0x01C5, FL_UNI_LETTER},
        {0x02B0, FL_UNI_LETTER},
        {0x0301, 0},
        {0x0345, 0},
        {0x0660, FL_UNI_NUMBER},
        {0x0E01, FL_UNI_LETTER},
        {0x1680, FL_UNI_SPACE},
        {0x200A, FL_UNI_SPACE},
        {0x200B, 0},
        {0x2028, FL_UNI_SPACE},
        {0x202F, FL_UNI_SPACE},
        {0x2167, FL_UNI_NUMBER},
        {0x3000, FL_UNI_SPACE},
        {0x3007, FL_UNI_NUMBER},
        {0x4E00, FL_UNI_LETTER},
        {0xAC00, FL_UNI_LETTER},
        {0xFEFF, 0},
        {0xFF10, FL_UNI_NUMBER},
        {0x1F600, 0},
        {0x20000, FL_UNI_LETTER},
        {0x10FFFF, 0},
        {0x110000, 0},
        {0xFFFFFFFF, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint32_t cp = cases[i].cp;
        int bits = cases[i].bits;
        CHECK(fl_uni_class(cp) == bits, "U+%04X: class %d, expected %d", cp, fl_uni_class(cp),
              bits);
        CHECK(fl_uni_is_letter(cp) == !!(bits & FL_UNI_LETTER) &&
                  fl_uni_is_number(cp) == !!(bits & FL_UNI_NUMBER) &&
                  fl_uni_is_space(cp) == !!(bits & FL_UNI_SPACE),
              "U+%04X: the three predicates", cp);
    }
    CHECK(fl_uni_ccc('a') == 0 && fl_uni_ccc(0x0301) == 230 && fl_uni_ccc(0x0323) == 220 &&
              fl_uni_ccc(0x0345) == 240 && fl_uni_ccc(0x1D165) == 216 && fl_uni_ccc(0x05B0) == 10 &&
              fl_uni_ccc(0x110000) == 0,
          "combining classes");
    CHECK(strcmp(fl_uni_version, "14.0.0") == 0, "Unicode version %s", fl_uni_version);
}

/* fl_uni_class and fl_uni_ccc at every code point against a linear walk of the runs tables, which
 * checks the Latin-1 and BMP block shortcuts and the binary search. */
static void test_tables_lockstep(void) {
    size_t class_run = 0, ccc_run = 0, wrong = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        while (class_run + 1 < fl_uni_class_runs_count &&
               fl_uni_class_runs[class_run + 1] >> 8 <= cp)
            class_run++;
        while (ccc_run + 1 < fl_uni_ccc_runs_count && fl_uni_ccc_runs[ccc_run + 1] >> 8 <= cp)
            ccc_run++;
        if (fl_uni_class(cp) != (int)(fl_uni_class_runs[class_run] & 0xFF) ||
            fl_uni_ccc(cp) != (int)(fl_uni_ccc_runs[ccc_run] & 0xFF)) {
            if (wrong++ < 10) fprintf(stderr, "U+%04X: lookup differs from the runs table\n", cp);
        }
    }
    CHECK(wrong == 0, "%zu code points", wrong);
}

/* Every "D" digit and "P" line of classes.txt: fl_uni_class against unicodedata. */
static void test_classes_fixture(void) {
    FILE *f = fopen(FIXTURES "/classes.txt", "r");
    CHECK(f != NULL, "cannot open " FIXTURES "/classes.txt");
    if (!f) return;
    char line[256];
    unsigned long step = 0, next_cp = 0, sampled = 0, points = 0, wrong = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == 'S') {
            step = strtoul(line + 2, NULL, 10);
            next_cp = 0;
        } else if (line[0] == 'D') {
            for (const char *d = line + 2; *d >= '0' && *d <= '9'; d++, next_cp += step) {
                sampled++;
                if (fl_uni_class((uint32_t)next_cp) != *d - '0' && wrong++ < 10)
                    fprintf(stderr, "U+%04lX: expected class %c\n", next_cp, *d);
            }
        } else if (line[0] == 'P') {
            char *rest;
            unsigned long cp = strtoul(line + 2, &rest, 16);
            long bits = strtol(rest, NULL, 10);
            points++;
            if (fl_uni_class((uint32_t)cp) != bits && wrong++ < 10)
                fprintf(stderr, "U+%04lX: expected class %ld\n", cp, bits);
        }
    }
    fclose(f);
    CHECK(wrong == 0, "%lu code points classified differently from unicodedata", wrong);
    CHECK(step == 97 && sampled == (0x10FFFF / 97) + 1 && points > 2000, "%lu sampled, %lu points",
          sampled, points);
}

/* Parses "0041 030A" (hex code points) from *p up to ';' or the end of line into UTF-8. */
static size_t parse_cps(const char **p, char *utf8, size_t cap) {
    size_t n = 0;
    for (;;) {
        while (**p == ' ')
            (*p)++;
        if (**p == ';' || **p == '\n' || **p == '\0') return n;
        char *end;
        unsigned long cp = strtoul(*p, &end, 16);
        if (end == *p || n + 4 > cap) return n;
        *p = end;
        n += (size_t)fl_utf8_put((uint32_t)cp, utf8 + n);
    }
}

static int nfc_equals(const char *in, size_t in_len, const char *want, size_t want_len) {
    char *out = NULL;
    size_t out_len = 99;
    int rc = fl_uni_nfc(in, in_len, &out, &out_len);
    int ok = rc == 0 && out && out_len == want_len && memcmp(out, want, want_len) == 0 &&
             out[out_len] == '\0';
    free(out);
    return ok;
}

/* Each line of nfc.txt: NFC(input) == expected, and NFC(expected) == expected. Also the whole
 * fixture as one text, cases joined by spaces, since a space is a stretch boundary. */
static void test_nfc_fixture(void) {
    char *text = NULL;
    size_t text_len = 0;
    fl_err err = {0};
    CHECK(fl_read_file(FIXTURES "/nfc.txt", &text, &text_len, 1 << 22, &err) == FL_OK, "%s",
          err.msg);
    if (!text) return;
    size_t cap = 4 * text_len, all_in_len = 0, all_want_len = 0, cases = 0, wrong = 0;
    char *all_in = malloc(cap), *all_want = malloc(cap);
    for (const char *p = text, *next; *p; p = next) {
        next = strchr(p, '\n');
        next = next ? next + 1 : p + strlen(p);
        if (*p == '#' || *p == '\n') continue;
        char in[1024], want[1024];
        const char *q = p;
        size_t in_len = parse_cps(&q, in, sizeof in);
        if (*q != ';') {
            CHECK(0, "nfc.txt: no ';' in line %.40s", p);
            break;
        }
        q++;
        size_t want_len = parse_cps(&q, want, sizeof want);
        cases++;
        if (!nfc_equals(in, in_len, want, want_len) ||
            !nfc_equals(want, want_len, want, want_len)) {
            if (wrong++ < 10) fprintf(stderr, "NFC differs from unicodedata: %.*s", 120, p);
        }
        memcpy(all_in + all_in_len, in, in_len);
        memcpy(all_want + all_want_len, want, want_len);
        all_in_len += in_len, all_want_len += want_len;
        all_in[all_in_len++] = ' ', all_want[all_want_len++] = ' ';
    }
    CHECK(wrong == 0, "%zu of %zu fixture lines normalize differently", wrong, cases);
    CHECK(cases > 4900, "only %zu cases in nfc.txt", cases);
    CHECK(nfc_equals(all_in, all_in_len, all_want, all_want_len), "the fixture as one text");
    free(all_in);
    free(all_want);
    free(text);
}

static void test_nfc_edges(void) {
    const char *ascii = "The quick brown fox jumps over the lazy dog. 0123456789 !?#$%&";
    CHECK(nfc_equals(ascii, strlen(ascii), ascii, strlen(ascii)), "ASCII is unchanged");
    const char *nfc_text = "\u00C0 la fa\u00E7on d'un \u00E9t\u00E9 na\u00EFf, \u00FCber "
                           "Stra\u00DFe \u2014 \u4E2D\u6587 \uD55C\uAD6D\uC5B4 \u0915\u093C";
    CHECK(nfc_equals(nfc_text, strlen(nfc_text), nfc_text, strlen(nfc_text)),
          "NFC text is unchanged");
    CHECK(nfc_equals("", 0, "", 0), "empty text");
    CHECK(nfc_equals("A\0\u030AA\u030A", 7, "A\0\u030A\u00C5", 6), "NUL bytes");
    CHECK(nfc_equals("cafe\u0301", 6, "caf\u00E9", 5), "composition at the end");
    CHECK(nfc_equals("\u0301abc", 5, "\u0301abc", 5), "a mark at the start");

    static const char *invalid[] = {"abc\xFF", "\xC3", "e\xCC", "\xED\xA0\x80", "e\xCC\x81\x80"};
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++) {
        char *out = (char *)1;
        size_t out_len = 99;
        CHECK(fl_uni_nfc(invalid[i], strlen(invalid[i]), &out, &out_len) == -1 && !out &&
                  out_len == 0,
              "invalid UTF-8 %zu is refused", i);
    }

    /* 'a' then 50,000 pairs U+0301 (ccc 230) U+0316 (ccc 220): ordering moves every U+0316 first,
     * then the first U+0301 composes with 'a'. Quadratic ordering would take minutes. */
    size_t pairs = 50000, in_len = 1 + 4 * pairs;
    char *in = malloc(in_len), *want = malloc(in_len);
    in[0] = 'a';
    for (size_t i = 0; i < pairs; i++)
        memcpy(in + 1 + 4 * i, "\xCC\x81\xCC\x96", 4);
    memcpy(want, "\xC3\xA1", 2);
    for (size_t i = 0; i < pairs; i++)
        memcpy(want + 2 + 2 * i, "\xCC\x96", 2);
    for (size_t i = 1; i < pairs; i++)
        memcpy(want + 2 * pairs + 2 * i, "\xCC\x81", 2);
    CHECK(nfc_equals(in, in_len, want, in_len - 1), "100,000 combining marks");
    free(in);
    free(want);
}

int main(void) {
    test_utf8_exhaustive();
    test_utf8_put_roundtrip();
    test_utf8_invalid();
    test_classes_spot();
    test_tables_lockstep();
    test_classes_fixture();
    test_nfc_fixture();
    test_nfc_edges();
    return tu_finish("test_unicode");
}
