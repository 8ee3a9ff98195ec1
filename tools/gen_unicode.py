#!/usr/bin/env python3
"""gen_unicode.py — compiles Python's unicodedata into fedllm's Unicode tables and test fixtures.

    python3 tools/gen_unicode.py              # writes src/base/unicode_tables.c
    python3 tools/gen_unicode.py --fixtures   # writes tests/fixtures/unicode/{classes,nfc}.txt
    python3 tools/gen_unicode.py --check      # exits 1 if either differs from what it would write

Run from anywhere; paths are relative to the repository root. The output depends only on the
Unicode version of unicodedata (Python 3.11: Unicode 14.0.0), so reruns are byte-identical.

What it derives, and how (see include/fedllm/unicode.h for the table formats):
  classes      \\p{L} = category L*, \\p{N} = category N*, \\s = the White_Space property
               (a fixed list, cross-checked against str.isspace).
  ccc          unicodedata.combining.
  decomposition  canonical mappings (decomposition() without a <tag>), expanded recursively.
  composition  a two-code-point canonical mapping c -> (a, b) is a primary composite unless
               NFC(a b) != c; that excludes exactly the composition exclusions and the non-starter
               decompositions of this Unicode version (singletons have one code point).
  NFC-unstable NFC_Quick_Check != Yes or ccc != 0: ccc != 0, or NFC(c) != c (Quick_Check No),
               or c is the second code point of a primary composite or a Hangul V / T jamo
               (Quick_Check Maybe).
"""
import argparse
import os
import random
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES_PATH = os.path.join(ROOT, "src", "base", "unicode_tables.c")
FIXTURE_DIR = os.path.join(ROOT, "tests", "fixtures", "unicode")

MAX_CP = 0x110000
LETTER, NUMBER, SPACE = 1, 2, 4  # FL_UNI_* in unicode.h
BLOCK_MIXED, BLOCK_UNSTABLE = 0x08, 0x10  # FL_UNI_BLOCK_* in unicode.h

# The White_Space property (PropList.txt), unchanged since Unicode 6.3.
WHITE_SPACE = frozenset(
    list(range(0x09, 0x0E)) + [0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B))
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

S_BASE, L_BASE, V_BASE, T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7
L_COUNT, V_COUNT, T_COUNT = 19, 21, 28
S_COUNT = L_COUNT * V_COUNT * T_COUNT


def nfc(cps):
    return [ord(ch) for ch in unicodedata.normalize("NFC", "".join(map(chr, cps)))]


def nfd(cps):
    return [ord(ch) for ch in unicodedata.normalize("NFD", "".join(map(chr, cps)))]


def class_flags(cp):
    category = unicodedata.category(chr(cp))
    flags = 0
    if category[0] == "L":
        flags |= LETTER
    if category[0] == "N":
        flags |= NUMBER
    if cp in WHITE_SPACE:
        flags |= SPACE
    return flags


def canonical_mapping(cp):
    text = unicodedata.decomposition(chr(cp))
    if not text or text.startswith("<"):
        return None
    return [int(part, 16) for part in text.split()]


class Data:
    """Everything the tables and fixtures are made of, computed once for all code points."""

    def __init__(self):
        self.flags = [class_flags(cp) for cp in range(MAX_CP)]
        self.ccc = [unicodedata.combining(chr(cp)) for cp in range(MAX_CP)]
        self.mapping = {}
        for cp in range(MAX_CP):
            m = canonical_mapping(cp)
            if m is not None:
                self.mapping[cp] = m
        assert not any(S_BASE <= cp < S_BASE + S_COUNT for cp in self.mapping)
        self.full = {cp: self.expand(cp) for cp in self.mapping}
        for cp, full in self.full.items():
            assert full == nfd([cp]), hex(cp)
        self.pairs = {}
        for cp, m in sorted(self.mapping.items()):
            if len(m) == 2 and nfc(m) == [cp]:
                assert tuple(m) not in self.pairs
                self.pairs[tuple(m)] = cp
        seconds = {b for (_, b) in self.pairs}
        seconds.update(range(V_BASE, V_BASE + V_COUNT))
        seconds.update(range(T_BASE + 1, T_BASE + T_COUNT))
        self.unstable = [0] * MAX_CP
        for cp in range(MAX_CP):
            if self.ccc[cp] or cp in seconds or (cp in self.mapping and nfc([cp]) != [cp]):
                self.unstable[cp] = 1
        self.check()

    def expand(self, cp):
        if cp not in self.mapping:
            return [cp]
        return [x for part in self.mapping[cp] for x in self.expand(part)]

    def check(self):
        """The facts unicode.c relies on."""
        for cp in range(MAX_CP):
            # A letter or number is never White_Space; \s agrees with str.isspace except U+1C..1F.
            assert self.flags[cp] in (0, LETTER, NUMBER, SPACE), hex(cp)
            if not 0xD800 <= cp < 0xE000 and cp not in range(0x1C, 0x20):
                assert (cp in WHITE_SPACE) == chr(cp).isspace(), hex(cp)
            # A stable code point (boundary before it) decomposes to a stable starter first.
            if not self.unstable[cp] and cp in self.full:
                first = self.full[cp][0]
                assert self.ccc[first] == 0 and not self.unstable[first], hex(cp)
        for (a, b), c in self.pairs.items():
            assert self.ccc[a] == 0 and self.ccc[c] == 0, hex(c)
        assert max(len(f) for f in self.full.values()) <= 4
        assert all(v < 0x100 for v in self.ccc)


def runs(values):
    """(first_cp << 8) | value at code point 0 and wherever the value changes."""
    out = []
    for cp, v in enumerate(values):
        if cp == 0 or v != values[cp - 1]:
            out.append(cp << 8 | v)
    return out


def c_array(ctype, name, values, per_line, fmt):
    lines = []
    for i in range(0, len(values), per_line):
        lines.append("    " + ", ".join(fmt.format(v) for v in values[i:i + per_line]) + ",")
    body = "\n".join(lines)
    return f"const {ctype} {name}[{len(values)}] = {{\n{body}\n}};\n"


def bmp_blocks(d):
    """One byte per 64 code points of the BMP: the block's class bits when all 64 share them, else
    BLOCK_MIXED; plus BLOCK_UNSTABLE when the block holds an NFC-unstable code point."""
    out = []
    for start in range(0, 0x10000, 64):
        classes = set(d.flags[start:start + 64])
        byte = classes.pop() if len(classes) == 1 else BLOCK_MIXED
        if any(d.unstable[start:start + 64]):
            byte |= BLOCK_UNSTABLE
        out.append(byte)
    return out


def tables_source(d):
    version = unicodedata.unidata_version
    latin1 = d.flags[:256]
    blocks = bmp_blocks(d)
    class_runs = runs(d.flags)
    ccc_runs = runs(d.ccc)
    unstable_runs = runs(d.unstable)
    first_unstable = d.unstable.index(1)
    keys = sorted(d.full)
    index, pool = [0], []
    for cp in keys:
        pool.extend(d.full[cp])
        index.append(len(pool))
    assert len(pool) < 0x10000
    comp = sorted(a << 42 | b << 21 | c for (a, b), c in d.pairs.items())
    max_len = max(len(f) for f in d.full.values())

    sizes = [
        ("fl_uni_latin1_flags", 256, 1),
        ("fl_uni_bmp_blocks", len(blocks), 1),
        ("fl_uni_class_runs", len(class_runs), 4),
        ("fl_uni_ccc_runs", len(ccc_runs), 4),
        ("fl_uni_nfc_unstable_runs", len(unstable_runs), 4),
        ("fl_uni_decomp_keys", len(keys), 4),
        ("fl_uni_decomp_index", len(index), 2),
        ("fl_uni_decomp_pool", len(pool), 4),
        ("fl_uni_comp_pairs", len(comp), 8),
    ]
    total = sum(n * w for _, n, w in sizes)
    size_lines = "\n".join(f" *   {name:<26} {n:5d} entries {n * w:6d} bytes"
                           for name, n, w in sizes)
    parts = [f"""/* unicode_tables.c — GENERATED by `python3 tools/gen_unicode.py` from Python's
 * unicodedata, Unicode {version}. Do not edit: change tools/gen_unicode.py and rerun it.
 *
 * The formats are described beside the declarations in include/fedllm/unicode.h. Sizes:
{size_lines}
 *   total                                    {total:6d} bytes
 */
#include "fedllm/unicode.h"

/* clang-format off */
const char fl_uni_version[] = "{version}";

""",
             c_array("uint8_t", "fl_uni_latin1_flags", latin1, 16, "{:d}"),
             "\n",
             c_array("uint8_t", "fl_uni_bmp_blocks", blocks, 16, "0x{:02x}"),
             "\n",
             c_array("uint32_t", "fl_uni_class_runs", class_runs, 8, "0x{:08x}"),
             f"const size_t fl_uni_class_runs_count = {len(class_runs)};\n\n",
             c_array("uint32_t", "fl_uni_ccc_runs", ccc_runs, 8, "0x{:08x}"),
             f"const size_t fl_uni_ccc_runs_count = {len(ccc_runs)};\n\n",
             c_array("uint32_t", "fl_uni_nfc_unstable_runs", unstable_runs, 8, "0x{:08x}"),
             f"const size_t fl_uni_nfc_unstable_runs_count = {len(unstable_runs)};\n",
             f"const uint32_t fl_uni_nfc_first_unstable = 0x{first_unstable:04x};\n\n",
             c_array("uint32_t", "fl_uni_decomp_keys", keys, 8, "0x{:05x}"),
             c_array("uint16_t", "fl_uni_decomp_index", index, 12, "{:d}"),
             c_array("uint32_t", "fl_uni_decomp_pool", pool, 8, "0x{:05x}"),
             f"const size_t fl_uni_decomp_count = {len(keys)};\n",
             f"const size_t fl_uni_decomp_max_len = {max_len};\n\n",
             c_array("uint64_t", "fl_uni_comp_pairs", comp, 4, "0x{:016x}u"),
             f"const size_t fl_uni_comp_pairs_count = {len(comp)};\n",
             "/* clang-format on */\n"]
    return "".join(parts)


def hex_cps(cps):
    return " ".join(f"{cp:04X}" for cp in cps)


def fixture_banner():
    return (f"# GENERATED by `python3 tools/gen_unicode.py --fixtures`"
            f" (Unicode {unicodedata.unidata_version}).")


def classes_fixture(d):
    step = 97
    lines = [
        fixture_banner(),
        "# Expected FL_UNI_* bits: 1 letter (category L*), 2 number (N*), 4 White_Space.",
        "# 'S <step>' starts the sample: each 'D' line holds the bits of the next 64 code points",
        "# 0, step, 2*step, ... as decimal digits. 'P <hex code point> <bits>' checks one code",
        "# point: the first of each run of equal bits, the one before it, and a few more.",
        f"S {step}",
    ]
    sample = [str(d.flags[cp]) for cp in range(0, MAX_CP, step)]
    for i in range(0, len(sample), 64):
        lines.append("D " + "".join(sample[i:i + 64]))
    points = {0, 0x7F, 0x80, 0xFF, 0x100, 0x10FFFF, 0xD800, 0xDFFF, 0x1C, 0x1F, 0x85, 0x3000}
    for entry in runs(d.flags):
        cp = entry >> 8
        points.update((cp, max(cp - 1, 0)))
    for cp in sorted(points):
        lines.append(f"P {cp:04X} {d.flags[cp]}")
    return "\n".join(lines) + "\n"


def tricky_strings():
    """Hand-picked NFC cases, as Python strings."""
    nfd = lambda text: unicodedata.normalize("NFD", text)  # noqa: E731
    latin = ["", "A", "abc", "Ça été très über Straße — naïve façade",
             "A\u030A", "\u212B", "\u2126", "\u212A", "A\u0323\u0302", "A\u0302\u0323",
             "e\u0301\u0300", "a\u0305\u0301", "a\u0315\u0301", "a\u0301\u0315", "\u0301a",
             "\u0301\u0300", "a\u0328\u0301\u0323\u0302\u0308\u031B", "\u00C5\u0301", "\u01FA",
             "A\u030A\u0301", "\u1E08", "C\u0327\u0301", "C\u0301\u0327", "s\u0323\u0307",
             "s\u0307\u0323", "\u1E69", "s\u0323\u0307\u0301", "A\u0000\u030A", "x\u034F\u0301"]
    vietnamese = ["Ti\u00EA\u0301ng Vi\u00EA\u0323t", "Tie\u0302\u0301ng Vie\u0323\u0302t",
                  "o\u031B\u0323", "o\u0323\u031B", "u\u031B\u0300",
                  nfd("Tiếng Việt có dấu: ơ ư ờ ữ ặ")]
    greek = ["\u03B1\u0301", "\u1F71", "\u0387", "\u037E", "\u0344", "\u0340", "\u0341",
             "\u0343", "\u03B1\u0313\u0300\u0345", "\u03C9\u0345\u0314\u0342", "\u1FB7",
             nfd("Ἄλφα ᾯ ῼ")]
    indic = ["\u0958", "\u0915\u093C", "\u0928\u093C", "\u0929", "\u09DC", "\u09A1\u09BC",
             "\u09C7\u09BE", "\u09CB", "\u0B47\u0B3E", "\u0B47\u0B56\u0B3E",
             "\u0DD9\u0DCF\u0DCA", "\u0DD9\u0DCA\u0DCF", "\u1025\u102E", "\u0F73",
             "\u0F71\u0F72", "\u0F75", "\u0F81", "\u0FB2\u0F80", "\u0F77",
             "\U000110A5\U000110BA", "\U00011131\U00011127", "\U00011347\U0001133E",
             "\U000114B9\U000114BA", "\U00011935\U00011930", "\U00011938"]
    hebrew_arabic_symbols = ["\uFB2C", "\u05E9\u05BC\u05C1", "\u05D0\u05B8\u05B7\u05BC",
                             "\uFB1D", "\u0627\u0653", "\u0627\u0654\u0655", "\u0648\u0654",
                             "\u06C1\u0654", "\U0001D15E", "\U0001D160", "\u2ADC",
                             "\u2ADD\u0338", "\u2260", "=\u0338"]
    hangul = ["\u1100\u1161\u11A8", "\u1100\u1161", "\uAC00\u11A8", "\uAC01\u11A8",
              "\u1100\u1161\u1161", "\u11A8", "\u1161", "\u1100\uAC00\u11A8",
              "\u1100\u1161\u0301\u11A8", "\u1112\u1175\u11C2", "\u1100\u11A8",
              "\u1100\u1161\u11A7", "\u1100\u1161\u11C3", "\u1113\u1161",
              nfd("한국어 텍스트와 훈민정음")]
    cjk_kana = ["\uF900", "\uFA10", "\U0002F800", "\U0002FA1D", "\uF9FF\uFA2D",
                "\u304B\u3099", "\u304C", "\u30AB\u3099\u309A", "\u3099"]
    return latin + vietnamese + greek + indic + hebrew_arabic_symbols + hangul + cjk_kana


def random_strings(d, count, seed):
    rng = random.Random(seed)
    marks = [cp for cp in range(MAX_CP) if d.ccc[cp]]
    seconds = sorted({b for (_, b) in d.pairs} | set(range(V_BASE, V_BASE + V_COUNT))
                     | set(range(T_BASE + 1, T_BASE + T_COUNT)))
    firsts = sorted({a for (a, _) in d.pairs} | set(range(L_BASE, L_BASE + L_COUNT)))
    quick_no = [cp for cp in d.mapping if nfc([cp]) != [cp]]
    syllables = [S_BASE + rng.randrange(S_COUNT) for _ in range(64)]
    pools = [(marks, 30), (seconds, 20), (firsts, 20), (quick_no, 10), (syllables, 5),
             (list(range(0x20, 0x7F)), 10), (None, 5)]
    total = sum(w for _, w in pools)
    out = []
    for _ in range(count):
        cps = []
        for _ in range(rng.randint(1, 12)):
            pick = rng.randrange(total)
            for pool, w in pools:
                if pick < w:
                    break
                pick -= w
            if pool is None:
                cp = rng.randrange(MAX_CP - 0x800)
                cps.append(cp + 0x800 if cp >= 0xD800 else cp)
            else:
                cps.append(rng.choice(pool))
        out.append(cps)
    return out


def nfc_fixture(d):
    lines = [
        fixture_banner(),
        "# <input code points> ; <unicodedata.normalize('NFC', input)>, in hex. Cases:",
        "# hand-picked strings, every code point with a canonical decomposition and its NFD, a",
        "# sample of Hangul syllables in NFD, and random strings of combining marks, composable",
        "# pairs and other code points.",
    ]
    cases = [[ord(ch) for ch in s] for s in tricky_strings()]
    for cp in sorted(d.mapping):
        cases.append([cp])
        cases.append(d.full[cp])
    for s in range(S_BASE, S_BASE + S_COUNT, 97):
        cases.append(nfd([s]))
    cases.extend(random_strings(d, 600, 20240514))
    for cps in cases:
        lines.append(f"{hex_cps(cps)} ; {hex_cps(nfc(cps))}".strip())
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixtures", action="store_true", help="write the test fixtures instead")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    d = Data()
    outputs = {TABLES_PATH: lambda: tables_source(d),
               os.path.join(FIXTURE_DIR, "classes.txt"): lambda: classes_fixture(d),
               os.path.join(FIXTURE_DIR, "nfc.txt"): lambda: nfc_fixture(d)}
    if args.check:
        stale = []
        for path, make in outputs.items():
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != make():
                        stale.append(path)
            except FileNotFoundError:
                stale.append(path)
        for path in stale:
            print(f"{os.path.relpath(path, ROOT)}: differs from the generator's output",
                  file=sys.stderr)
        return 1 if stale else 0
    wanted = [p for p in outputs if (p == TABLES_PATH) != args.fixtures]
    for path in wanted:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = outputs[path]()
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print(f"{os.path.relpath(path, ROOT)}: {len(text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
