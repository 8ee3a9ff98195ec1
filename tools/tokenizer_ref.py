#!/usr/bin/env python3
"""Reference tokenizers for fedllm's C tokenizer: trained on real Debian text, checked on other real text.

Run through tools/tokenizer_ref.sh, which fetches and unpacks the Debian packages first.

    tokenizer_ref.py --root ROOT --kjv KJV.txt --out OUT --fixtures tests/fixtures/tokenizers
        Trains four tokenizers, each in its family's exact Hugging Face configuration, on a TRAINING
        corpus (fortunes, fortunes-min, fortunes-de/-es/-it/-ru/-zh, dict-gcide), then encodes an
        EVALUATION corpus from other packages (dict-jargon, wordnet-base, bible-kjv-text,
        debian-handbook in ten languages) with the `tokenizers` library and writes:
          OUT/tok/<name>/                tokenizer.json, tokenizer_config.json (+ sp.model for sp)
          OUT/big/<name>.jsonl           {"src", "text", "ids"[, "decoded"]} per text unit
          OUT/big/<name>.txt             the units joined by "\\n" (the whole file)
          OUT/big/<name>.ids             tokenizers' ids of the whole .txt, as `fedllm tokenize` prints them
          OUT/big/<name>.decoded         tokenizers' decode of those ids (== .txt except for qwen2,
                                         whose NFC normalizer reorders marks in some Arabic units)
          OUT/report.json                sizes, vocab sizes, sentencepiece agreement, HF quirks measured
          FIXTURES/<name>/               tokenizer.json, tokenizer_config.json, sample.jsonl, chat.jsonl
        "ids" is tokenizer.encode(text, add_special_tokens=False).ids; "decoded" is present only where
        tokenizer.decode(ids, skip_special_tokens=False) differs from "text" (sp units holding special
        tokens, qwen2 units that NFC changes).

    tokenizer_ref.py --check FEDLLM --out OUT --fixtures tests/fixtures/tokenizers
        Runs `FEDLLM tokenize` on the files above and compares with the reference: per-unit ids of the
        big set and of sample.jsonl, the ids of the whole .txt, decode(encode(.txt)) byte for byte, and
        the encoding speed of the whole .txt against `tokenizers` on one thread (fedllm runs with
        OMP_NUM_THREADS=1), and fedllm's decode of each sample's ids against its "decoded" (or "text").
        Exit status 1 on any mismatch.

Everything is deterministic: inputs are read in sorted order, units are selected by CRC-32 of stable
keys, the `tokenizers` BPE trainer breaks ties by pair ids (its result does not depend on the thread
count) and sentencepiece trains on one thread with a fixed seed, so a rerun rewrites identical fixtures
(the run prints their SHA-256).
"""
import argparse
import glob
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

NAMES = ("gpt2", "llama3", "qwen2", "sp")
VOCAB = {"gpt2": 8000, "llama3": 8000, "qwen2": 8000, "sp": 8000}

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

SPECIALS = {
    "gpt2": ["<|endoftext|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "sp": ["<unk>", "<s>", "</s>"],
}

# The chat templates exactly as the families' tokenizer_config.json files hold them (a backslash-n in the
# Jinja source is a newline in the output).
LLAMA3_CHAT_TEMPLATE = (
    r"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>'"
    r" + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0"
    r" == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt"
    r" %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2_CHAT_TEMPLATE = (
    r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou"
    r" are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    r" + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2_CHAT_TEMPLATE = (
    r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message ="
    r" messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif"
    r" %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{"
    r" raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if"
    r" loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message +"
    r" '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if"
    r" message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif"
    r" message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

HANDBOOK_LANGS = ("en-US", "de-DE", "fr-FR", "vi-VN", "el-GR", "ru-RU", "ar-MA", "fa-IR", "ja-JP", "zh-CN")
SAMPLE_TEXT_BYTES = 45000


def crc(s):
    return zlib.crc32(s.encode("utf-8"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def dump_jsonl(path, records):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---------------------------------------------------------------- Debian text readers
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64n(s):
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def dictd_entries(prefix, errors="strict"):
    """(headword, body) of a dictd database in index order; skips the 00-database-* entries and bodies
    already seen under another headword."""
    data = gzip.open(prefix + ".dict.dz").read()
    seen = set()
    for line in open(prefix + ".index", encoding="utf-8"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0].startswith(("00database", "00-database")):
            continue
        off, ln = _b64n(parts[1]), _b64n(parts[2])
        if (off, ln) in seen:
            continue
        seen.add((off, ln))
        yield parts[0], data[off:off + ln].decode("utf-8", errors)


_CTRL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def fortune_cookies(path):
    text = open(path, encoding="utf-8").read()
    text = _CTRL.sub("", text)  # ANSI colours and overstrike backspaces in a few files; \r of ru/ files too
    return [c.strip("\n") for c in re.split(r"\n%\n", text) if c.strip()]


def training_texts(root):
    """The training corpus as (package, text) in a fixed order."""
    fdir = os.path.join(root, "usr/share/games/fortunes")
    out = []
    skip_top = {"art", "ascii-art", "chinese", "song100", "tang300"}

    def files(d, skip=()):
        for n in sorted(os.listdir(d)):
            p = os.path.join(d, n)
            if (os.path.isfile(p) and not os.path.islink(p) and not n.endswith((".dat", ".u8"))
                    and n not in skip):
                yield p

    for p in files(fdir, skip_top):  # fortunes + fortunes-min (English)
        out += [("fortunes", c) for c in fortune_cookies(p)]
    for lang, skip in (("de", {"asciiart"}), ("es", ()), ("it", {"banner"}), ("ru", ())):
        for p in files(os.path.join(fdir, lang), skip):
            out += [(f"fortunes-{lang}", c) for c in fortune_cookies(p)]
    for n in ("chinese", "song100", "tang300"):  # fortunes-zh; the big `chinese` file thinned to 1 in 4
        cs = fortune_cookies(os.path.join(fdir, n))
        out += [("fortunes-zh", c) for i, c in enumerate(cs) if n != "chinese" or i % 4 == 0]
    # 1 entry in 8 of the 1913 Webster: 5 MB. A few entries hold cp1252 bytes: U+FFFD.
    for i, (_, body) in enumerate(dictd_entries(os.path.join(root, "usr/share/dictd/gcide"), "replace")):
        if i % 8 == 0:
            out.append(("dict-gcide", body))
    return out


def handbook_blocks(path):
    """The paragraphs (whitespace of the HTML source collapsed, no-break spaces kept; 1 in 23 with the
    newlines and tab indentation of the HTML source left in) and the verbatim screen/programlisting
    blocks of one handbook page, in page order."""
    s = open(path, encoding="utf-8").read()
    page = os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path)
    out = []
    for m in re.finditer(r'<div class="para">(.*?)</div>|<pre class="(?:screen|programlisting)">(.*?)</pre>', s,
                         flags=re.S):
        if m.group(1) is not None:
            raw = html.unescape(re.sub(r"<[^>]+>", "", m.group(1)))
            t = re.sub(r"[ \t\r\n]+", " ", raw).strip(" ")
            if t and crc(f"raw:{page}:{len(out)}") % 23 == 3:
                out.append(("para+htmlws", raw))
            elif t:
                out.append(("para", t))
        else:
            t = html.unescape(re.sub(r"<[^>]+>", "", m.group(2)))
            if t.strip():
                out.append(("pre", t))
    return out


def eval_units(root, kjv_path):
    """Evaluation text units as (src, key, text): natural paragraphs/entries/chapters of packages the
    tokenizers were not trained on. A few are transformed deterministically (CRLF line ends, upper case;
    handbook paragraphs marked +htmlws keep the whitespace of the HTML source)."""
    units = []
    # dict-jargon: every entry, as the dictd body (indented lines, blank-line runs, typographic quotes).
    for head, body in dictd_entries(os.path.join(root, "usr/share/dictd/jargon")):
        units.append(("dict-jargon", "jargon:" + head, body))
    # wordnet-base: 1 synset in 12 as its gloss (with the file's trailing double space), and 1 in 97 as the
    # whole data line (offsets, pointers: long digit runs).
    for pos in ("adj", "adv", "noun", "verb"):
        for line in open(os.path.join(root, f"usr/share/wordnet/data.{pos}"), encoding="utf-8"):
            if line.startswith("  "):
                continue
            line = line.rstrip("\n")
            key = f"wn:{pos}:{line[:8]}"
            h = crc(key)
            if h % 97 == 0:
                units.append(("wordnet-line", key, line))
            elif h % 12 == 0:
                units.append(("wordnet-gloss", key, line.split(" | ", 1)[1]))
    # bible-kjv-text: 1 chapter in 8, verses one per line with their references ("Ge1:1 In the ...").
    chapters = {}
    for line in open(kjv_path, encoding="utf-8"):
        m = re.match(r"([1-3]?[A-Za-z]+)(\d+):\d+ ", line)
        if m:
            chapters.setdefault(m.group(1) + m.group(2), []).append(line.rstrip("\n"))
    for ch, verses in chapters.items():
        if crc("kjv:" + ch) % 8 == 0:
            units.append(("bible-kjv", "kjv:" + ch, "\n".join(verses)))
    # debian-handbook: the same third of the pages in every language (a parallel set); a screen or program
    # listing joins the paragraph before it, with a blank line between them.
    base = os.path.join(root, "usr/share/doc/debian-handbook/html")
    pages = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(base, "en-US/*.html")))]
    pages = [p for p in pages if crc("page:" + p) % 3 == 0]
    for lang in HANDBOOK_LANGS:
        for page in pages:
            cur = None
            for i, (kind, t) in enumerate(handbook_blocks(os.path.join(base, lang, page))):
                if kind == "pre" and cur is not None:
                    cur[2] += "\n\n" + t
                    continue
                if cur is not None:
                    units.append(tuple(cur))
                cur = [f"handbook-{lang}" + ("+htmlws" if kind == "para+htmlws" else ""), f"hb:{lang}:{page}:{i}", t]
            if cur is not None:
                units.append(tuple(cur))
    out = []
    for src, key, text in units:
        h = crc("x:" + key)
        if "\n" in text and h % 29 == 5:
            src, text = src + "+crlf", text.replace("\n", "\r\n")
        elif src in ("dict-jargon", "wordnet-gloss", "bible-kjv", "handbook-en-US") and h % 31 == 7:
            src, text = src + "+upper", text.upper()
        out.append((src, key, text))
    return out


def edge_units(name):
    """Hand-made units for sample.jsonl: whitespace/digit/contraction corner cases, characters outside the
    training alphabet, and the family's special tokens inside text (HF splits those out as special ids)."""
    u = ["", " ", "  ", "\n", "\n\n\n", "\t", " \t \n", "\r\n", "a\r\nb\rc\n\rd", "  leading", "trailing  ",
         "a  b   c    d", "x \n y", "word\n\n\n\n  indented",
         "12 345 6789 1234567890 3.14159 1,000,000 2024-11-25 0x7fff 10^9",
         "IT'S He'S she'S we'RE THEY'VE I'M YOU'LL he'D Don'T can'T o'clock 'twas ''s 'S",
         "it's they're we've I'm you'll he'd don't",
         "O'Reilly O'Sullivan McDonald'S rock'N'roll 'Tis x'Tis 'TWAS IT'LL WE'VE'D",
         "(word \"Hello\" \tTab \u00a0nbsp .dot ,comma\n\nx.\n\n\ny !?\r\n\r\nz",
         "white space? fs\x1cgs\x1drs\x1eus\x1f nel\x85ls\u2028ps\u2029ogham\u1680x mvs\u180ex bom\ufeffx",
         "numbers: \u00b2 \u00bd \u2167 \u0663\u0664\u0665\u0666 \u3007 \u2460\u2461\u2462\u2463 \uff11\uff12\uff13\uff14",
         "marks split letter runs: \u0939\u093f\u0928\u094d\u0926\u0940 \u0645\u064f\u062d\u064e\u0645\u0651\u064e\u062f",
         "nbsp:\u00a0a\u00a0\u00a0b narrow\u202fnbsp ideographic\u3000space em\u2003space zwsp\u200bzwnj\u200czwj\u200d",
         "emoji 😀👍🏽 👩‍💻 🇩🇪 math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 gothic 𐌰𐌱 cuneiform 𒀀",
         "Hangul 한국어 Thai ภาษาไทย Hindi हिन्दी Hebrew עברית Armenian Հայերեն Georgian ქართული",
         "combining: e\u0301 a\u0308 n\u0303 \u1e9b\u0323 ﬁ ﬂ Å Ω ℃ ½ ²",
         "control \x1b[1mbold\x1b[0m bell\x07 formfeed\x0c vtab\x0b del\x7f",
         "the metaspace ▁ is a character too: ▁▁x ▁ y",
         "<0x41> <unk> [INST] <<SYS>> <|fake|> <|endoftext <|ENDOFTEXT|>"]
    u += OWN_MULTILINGUAL
    for s in SPECIALS[name]:
        u += [s, s + s, f"Text before{s}text after", f" {s} ", f"{s}\n", f"\n\n{s}Hello", f"it's{s}'s"]
    if name == "llama3":
        u.append("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is a gloss?<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n")
    if name == "qwen2":
        u.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nПривет<|im_end|>\n")
    if name == "sp":
        u.append("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST] Hi </s><s>[INST] Again [/INST]")
    return [("edge", f"edge:{i}", t) for i, t in enumerate(u)]


# ---------------------------------------------------------------- training
def byte_level_tokenizer(name, texts, vocab_size):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    tok = Tokenizer(models.BPE())
    if name == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
        tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    else:
        pattern = LLAMA3_PATTERN if name == "llama3" else QWEN2_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=name == "llama3", use_regex=False)])
        if name == "qwen2":
            tok.normalizer = normalizers.NFC()
            tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
            tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
        else:
            tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # The special tokens come after the learned vocabulary, as in the real files (GPT-2 50256, LLaMA-3 128000+,
    # Qwen2 151643+). GPT-2's <|endoftext|> is `normalized` in its file; LLaMA-3's and Qwen2's are not.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=name == "gpt2") for s in SPECIALS[name]])
    j = json.loads(tok.to_str())
    m = j["model"]
    if name == "llama3":
        m["ignore_merges"] = True
        m["merges"] = thin_merges(m["vocab"], m["merges"])
        bos = tok.token_to_id("<|begin_of_text|>")
        j["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos],
                                                      "tokens": ["<|begin_of_text|>"]}}}]}
    else:  # GPT-2's and Qwen2's files spell the empty affixes as "", LLaMA-3's as null
        m["continuing_subword_prefix"] = ""
        m["end_of_word_suffix"] = ""
    return Tokenizer.from_str(json.dumps(j))


def thin_merges(vocab, merges):
    """LLaMA-3's vocabulary holds words its merges do not build (it comes from tiktoken, which looks a whole
    word up before merging), so its tokenizer.json sets ignore_merges. A vocabulary trained by `tokenizers`
    is consistent with its merges and would not show the difference, so drop the last merge of twelve whole
    words that no other merge builds on: with ignore_merges those words still come out as one token, without
    it they stay split."""
    parts = set()
    for mg in merges:
        parts.update(mg.split(" "))
    leaves = sorted((i, t) for t, i in vocab.items()
                    if t not in parts and re.fullmatch(r"\u0120[a-z]{6,}", t))
    step = max(1, len(leaves) // 12)
    words = {t for _, t in leaves[step // 2::step][:12]}
    kept = [mg for mg in merges if mg.replace(" ", "", 1) not in words]
    assert len(kept) == len(merges) - len(words)
    return kept


def train_sentencepiece(lines, vocab_size, out_dir):
    import sentencepiece as spm
    spm.set_random_generator_seed(1234)
    path = os.path.join(out_dir, "sp_train.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for ln in lines:
            f.write(ln + "\n")
    prefix = os.path.join(out_dir, "sp")
    # LLaMA-2's trainer_spec (read from its tokenizer.model), scaled down in size.
    spm.SentencePieceTrainer.train(
        input=path, model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
        character_coverage=0.9995, byte_fallback=True, split_digits=True, split_by_unicode_script=True,
        split_by_whitespace=True, split_by_number=True, treat_whitespace_as_suffix=False,
        allow_whitespace_only_pieces=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", max_sentencepiece_length=16, max_sentence_length=4192,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_surface=" \u2047 ", vocabulary_output_piece_score=True,
        hard_vocab_limit=True, input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        minloglevel=2)
    os.remove(path)
    return prefix + ".model"


def convert_sentencepiece(model_path, out_dir):
    """tokenizer.json the way transformers converts LLaMA-2's tokenizer.model (LlamaConverter, legacy)."""
    from transformers import LlamaTokenizerFast
    fast = LlamaTokenizerFast(vocab_file=model_path, from_slow=True, legacy=True, add_bos_token=True,
                              add_eos_token=False)
    fast.backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))


def added_tokens_decoder(tok):
    out = {}
    for t in json.loads(tok.to_str())["added_tokens"]:
        out[str(t["id"])] = {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
    return out


def tokenizer_config(name, tok):
    big = 1000000000000000019884624838656
    if name == "gpt2":
        return {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added_tokens_decoder(tok),
                "bos_token": "<|endoftext|>", "clean_up_tokenization_spaces": True, "eos_token": "<|endoftext|>",
                "errors": "replace", "model_max_length": 1024, "pad_token": None,
                "tokenizer_class": "GPT2Tokenizer", "unk_token": "<|endoftext|>"}
    if name == "llama3":
        return {"added_tokens_decoder": added_tokens_decoder(tok), "bos_token": "<|begin_of_text|>",
                "chat_template": LLAMA3_CHAT_TEMPLATE, "clean_up_tokenization_spaces": True,
                "eos_token": "<|eot_id|>", "model_input_names": ["input_ids", "attention_mask"],
                "model_max_length": big, "tokenizer_class": "PreTrainedTokenizerFast"}
    if name == "qwen2":
        return {"add_prefix_space": False, "added_tokens_decoder": added_tokens_decoder(tok),
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
                "chat_template": QWEN2_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
                "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768,
                "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
                "unk_token": None}
    return {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added_tokens_decoder(tok),
            "bos_token": "<s>", "chat_template": LLAMA2_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
            "eos_token": "</s>", "legacy": True, "model_max_length": big, "pad_token": None,
            "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>", "use_default_system_prompt": False}


def train_all(args, out):
    texts = training_texts(args.root)
    stats = {}
    for pkg, t in texts:
        s = stats.setdefault(pkg, [0, 0])
        s[0] += 1
        s[1] += len(t.encode("utf-8"))
    log("training corpus:", {k: f"{v[0]} units, {v[1]} bytes" for k, v in stats.items()})
    plain = [t for _, t in texts]
    toks = {}
    for name in NAMES:
        d = os.path.join(out, "tok", name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        t0 = time.time()
        if name == "sp":
            lines = [ln for t in plain for ln in t.split("\n") if ln.strip()]
            model = train_sentencepiece(lines, VOCAB[name], d)
            tok = convert_sentencepiece(model, d)
        else:
            tok = byte_level_tokenizer(name, plain, VOCAB[name])
            tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_config(name, tok), f, ensure_ascii=False, indent=2)
            f.write("\n")
        toks[name] = tok
        log(f"trained {name}: vocab {tok.get_vocab_size()} in {time.time() - t0:.1f} s")
    return toks, {k: {"units": v[0], "bytes": v[1]} for k, v in stats.items()}


# ---------------------------------------------------------------- evaluation sets
def scripts_of(text):
    """The scripts of the non-ASCII letters (first word of their Unicode names) and the general categories
    of the other non-ASCII characters."""
    out = set()
    for c in set(text):
        if ord(c) < 128:
            continue
        cat = unicodedata.category(c)
        if cat.startswith("L"):
            w = unicodedata.name(c, "UNNAMED").split()[0]
            out.add("script:" + ("CJK" if w in ("CJK", "IDEOGRAPHIC") else w))
        else:
            out.add("cat:" + cat)
    return out


def features(text, ids, byte_ids):
    f = set()
    if "\t" in text: f.add("tab")
    if "\r\n" in text: f.add("crlf")
    if "\n\n\n" in text: f.add("blank-run")
    if re.search(r"^[ \t]+\S", text, flags=re.M): f.add("indent")
    if re.search(r"[ \t]+$", text, flags=re.M): f.add("trailing-ws")
    if re.search(r"\d{4,}", text): f.add("digits4+")
    if re.search(r"'(S|T|RE|VE|M|LL|D)\b", text): f.add("upper-contraction")
    if re.search(r"[a-z]'[a-z]", text): f.add("contraction")
    if "\u00a0" in text or "\u202f" in text: f.add("nbsp")
    if "\u3000" in text: f.add("ideographic-space")
    if "\u200c" in text or "\u200d" in text: f.add("zwnj/zwj")
    if unicodedata.normalize("NFC", text) != text: f.add("nfc-changes")
    if any(ord(c) > 0xFFFF for c in text): f.add("astral")
    if any(unicodedata.category(c).startswith("M") for c in text): f.add("combining")
    if byte_ids is not None and any(i in byte_ids for i in ids): f.add("byte-fallback")
    return f


def encode_records(tok, units):
    recs = []
    for src, key, text in units:
        ids = tok.encode(text, add_special_tokens=False).ids
        r = {"src": src, "text": text, "ids": ids}
        dec = tok.decode(ids, skip_special_tokens=False)
        if dec != text:
            r["decoded"] = dec
        recs.append(r)
    return recs


def write_big(name, tok, units, big_dir):
    recs = encode_records(tok, units)
    dump_jsonl(os.path.join(big_dir, f"{name}.jsonl"), recs)
    whole = "\n".join(r["text"] for r in recs)
    with open(os.path.join(big_dir, f"{name}.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(whole)
    ids = tok.encode(whole, add_special_tokens=False).ids
    with open(os.path.join(big_dir, f"{name}.ids"), "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    dec = tok.decode(ids, skip_special_tokens=False)
    with open(os.path.join(big_dir, f"{name}.decoded"), "w", encoding="utf-8", newline="") as f:
        f.write(dec)
    return recs, whole, ids, dec


# Committed fixtures hold only public-domain text (the Jargon File, the KJV) and the hand-made units
# below; the other evaluation sources (WordNet, the Debian handbook) are used in the big set, which is
# fetched and built at check time and never committed.
PUBLIC_DOMAIN_SOURCES = ("dict-jargon", "bible-kjv")

# Hand-written sentences in other scripts (our own text), so the committed samples still exercise
# \p{L} beyond Latin, combining marks and NFC.
OWN_MULTILINGUAL = [
    "Съешь ещё этих мягких французских булок, да выпей же чаю. Это тест токенизатора.",
    "日本語の文章を正しく分割できるかどうかを確かめるための短い例文です。数字は１２３。",
    "هذه جملة قصيرة باللغة العربية لاختبار التقطيع، مع أرقام ١٢٣ وعلامات تشكيل: مُحَمَّد.",
    "Αυτή είναι μια σύντομη πρόταση στα ελληνικά: ο τόνος πέφτει στη λήγουσα.",
    "यह हिन्दी में एक छोटा वाक्य है, जिसमें मात्राएँ और हलन्त्‌ हैं।",
    "这是一个用于测试分词器的中文句子，其中包含标点符号和数字2024。",
    "Tiếng Việt có nhiều dấu: người, được, những, trường học.",
    "Français : « déjà vu », où l’été commence ; naïveté, cœur, Noël.",
    "Deutsch: Straße, Größe, Übermäßig, „Anführungszeichen“ und Bindestrich-Wörter.",
    "decomposed Latin: Cafe\u0301 nai\u0308ve A\u030angstro\u0308m, Hangul jamo \u1112\u1161\u11ab",
]


def pick_sample(recs, units, byte_ids, extra_tags, budget):
    """A sample of big-set records covering every source, script and oddity, within about `budget` bytes
    of text: for each category up to two units (short ones first, in a fixed pseudo-random order)."""
    cats = {}
    for i, ((src, key, text), r) in enumerate(zip(units, recs)):
        n = len(text.encode("utf-8"))
        if n > 1800 or n == 0 or not src.startswith(PUBLIC_DOMAIN_SOURCES):
            continue
        tags = {"src:" + src} | scripts_of(text) | features(text, r["ids"], byte_ids) | extra_tags(text, r["ids"])
        for t in tags:
            cats.setdefault(t, []).append(i)
    chosen, total = [], 0
    for t in sorted(cats):
        idx = sorted(cats[t], key=lambda i: (crc(units[i][1]) % 1000, i))[:6]
        idx = sorted(idx, key=lambda i: len(units[i][2]))[:2]
        for i in idx:
            if i not in chosen:
                chosen.append(i)
                total += len(units[i][2].encode("utf-8"))
    # Fill up to the budget with more units of the natural sources, round robin.
    srcs = sorted({u[0] for u in units if u[0].startswith(PUBLIC_DOMAIN_SOURCES)})
    pools = {s: sorted((i for i, u in enumerate(units) if u[0] == s and 0 < len(u[2].encode()) <= 1200),
                       key=lambda i: (crc("fill:" + units[i][1]), i)) for s in srcs}
    while total < budget and any(pools.values()):
        for s in srcs:
            while pools[s]:
                i = pools[s].pop(0)
                if i not in chosen:
                    chosen.append(i)
                    total += len(units[i][2].encode("utf-8"))
                    break
            if total >= budget:
                break
    return sorted(chosen), sorted(cats)


def chat_conversations(units):
    """A few conversations whose contents are public-domain evaluation text (a jargon entry, a KJV
    chapter's opening) and our own Russian and Japanese sentences."""
    def first(src, maxlen=400):
        return next(t for s, _, t in units if s == src and 40 < len(t) < maxlen)
    jargon = first("dict-jargon")
    gloss = next(t for s, _, t in units if s == "bible-kjv" and 40 < len(t))[:300]
    ru = OWN_MULTILINGUAL[0]
    ja = OWN_MULTILINGUAL[1]
    en = first("dict-jargon", 1200)
    sys_msg = "You answer in one paragraph.\nQuote your sources."
    return [
        ([{"role": "system", "content": sys_msg}, {"role": "user", "content": "What does this mean?\n\n" + jargon}],
         True),
        ([{"role": "user", "content": "Define: " + gloss}], True),
        ([{"role": "user", "content": "Define: " + gloss}], False),
        ([{"role": "system", "content": sys_msg}, {"role": "user", "content": en},
          {"role": "assistant", "content": "  " + ru + "\n"}, {"role": "user", "content": ja}], True),
        ([{"role": "user", "content": "Translate:\t" + ja}, {"role": "assistant", "content": en}], False),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "it's 12345 o'clock"},
          {"role": "assistant", "content": "IT'S LATE."}], False),
        ([{"role": "user", "content": "  spaces around  "}, {"role": "assistant", "content": "\n\nok\n\n"},
          {"role": "user", "content": "and <|eot_id|> <|im_end|> </s> inside"}], True),
    ]


def write_chat(name, fixture_dir, convs):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(fixture_dir)
    tok = Tokenizer.from_file(os.path.join(fixture_dir, "tokenizer.json"))
    recs = []
    for messages, gen in convs:
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        recs.append({"messages": messages, "add_generation_prompt": gen, "text": text,
                     "ids": tok.encode(text, add_special_tokens=False).ids})
    dump_jsonl(os.path.join(fixture_dir, "chat.jsonl"), recs)
    return recs


def sp_agreement(model_path, recs):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_path)
    agree, diffs = 0, []
    for r in recs:
        got = sp.encode(r["text"], out_type=int)
        if got == r["ids"]:
            agree += 1
        else:
            diffs.append((r, got))
    return agree, diffs, sp


def without_ignore_merges(tok):
    from tokenizers import Tokenizer
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = False
    return Tokenizer.from_str(json.dumps(j))


def first_diff(a, b):
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def generate(args):
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    toks, train_stats = train_all(args, out)
    units = eval_units(args.root, args.kjv)
    big_dir = os.path.join(out, "big")
    os.makedirs(big_dir, exist_ok=True)
    src_stats = {}
    for s, _, t in units:
        e = src_stats.setdefault(s, [0, 0])
        e[0] += 1
        e[1] += len(t.encode("utf-8"))
    log("evaluation units:", {k: f"{v[0]} units, {v[1]} bytes" for k, v in sorted(src_stats.items())})
    report = {"training": train_stats, "evaluation": {k: {"units": v[0], "bytes": v[1]} for k, v in src_stats.items()},
              "vocab": {}, "big": {}, "fixtures": {}}
    convs = chat_conversations(units)
    for name in NAMES:
        tok = toks[name]
        t0 = time.time()
        recs, whole, ids, dec = write_big(name, tok, units, big_dir)
        nbytes = len(whole.encode("utf-8"))
        bad_rt = [r["src"] for r in recs if "decoded" in r]
        report["big"][name] = {"units": len(recs), "bytes": nbytes, "tokens": len(ids),
                               "bytes_per_token": round(nbytes / len(ids), 3),
                               "units_not_round_tripping": len(bad_rt), "whole_round_trips": dec == whole}
        log(f"{name}: big set {len(recs)} units, {nbytes} bytes, {len(ids)} tokens "
            f"({nbytes / len(ids):.2f} B/token), {len(bad_rt)} units whose decode differs, whole file "
            f"round-trips: {dec == whole} ({time.time() - t0:.1f} s)")
        # Fixtures.
        fx = os.path.join(args.fixtures, name)
        shutil.rmtree(fx, ignore_errors=True)
        os.makedirs(fx)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(out, "tok", name, f), os.path.join(fx, f))
        byte_ids = set(range(3, 259)) if name == "sp" else None
        if name == "llama3":  # units whose ids depend on ignore_merges
            nomerge = without_ignore_merges(tok)

            def extra(text, ids):
                return {"ignore_merges"} if nomerge.encode(text, add_special_tokens=False).ids != ids else set()
        else:
            def extra(text, ids):
                return set()
        chosen, cats = pick_sample(recs, units, byte_ids, extra, SAMPLE_TEXT_BYTES)
        sample = [recs[i] for i in chosen] + encode_records(tok, edge_units(name))
        dump_jsonl(os.path.join(fx, "sample.jsonl"), sample)
        if name != "gpt2":
            write_chat(name, fx, convs)
        report["vocab"][name] = tok.get_vocab_size()
        report["fixtures"][name] = {
            f: {"bytes": os.path.getsize(os.path.join(fx, f)), "sha256": sha256(os.path.join(fx, f))}
            for f in sorted(os.listdir(fx))}
        report["fixtures"][name]["sample_units"] = len(sample)
        report["fixtures"][name]["sample_text_bytes"] = sum(len(r["text"].encode()) for r in sample)
        report["fixtures"][name]["sample_categories"] = cats
    # sentencepiece itself against the converted tokenizer.json, on the big set and the natural sample units.
    recs = read_jsonl(os.path.join(big_dir, "sp.jsonl"))
    model = os.path.join(out, "tok", "sp", "sp.model")
    agree, diffs, sp = sp_agreement(model, recs)
    edge = encode_records(toks["sp"], edge_units("sp"))
    e_agree, e_diffs, _ = sp_agreement(model, edge)
    tok = toks["sp"]
    report["sp_agreement"] = {"big_units": len(recs), "big_agree": agree,
                              "big_rate": round(agree / len(recs), 6),
                              "edge_units": len(edge), "edge_agree": e_agree,
                              "edge_differences": [{"text": r["text"], "hf": tok.encode(r["text"],
                                                    add_special_tokens=False).tokens,
                                                    "sentencepiece": [sp.id_to_piece(i) for i in g]}
                                                   for r, g in e_diffs],
                              "big_differences": []}
    for r, g in diffs[:20]:
        k = first_diff(r["ids"], g)
        report["sp_agreement"]["big_differences"].append({
            "src": r["src"], "at_token": k,
            "hf": [tok.id_to_token(i) for i in r["ids"][max(0, k - 3):k + 5]],
            "sentencepiece": [sp.id_to_piece(i) for i in g[max(0, k - 3):k + 5]]})
    whole = open(os.path.join(big_dir, "sp.txt"), encoding="utf-8", newline="").read()
    whole_ids = [int(x) for x in open(os.path.join(big_dir, "sp.ids")).read().split()]
    report["sp_agreement"]["whole_file_agrees"] = sp.encode(whole, out_type=int) == whole_ids
    log(f"sp: sentencepiece == converted tokenizer.json on {agree}/{len(recs)} big units, "
        f"{e_agree}/{len(edge)} edge units, whole file: {report['sp_agreement']['whole_file_agrees']}")
    # How much LLaMA-3's ignore_merges matters on this text.
    nomerge = without_ignore_merges(toks["llama3"])
    l3 = read_jsonl(os.path.join(big_dir, "llama3.jsonl"))
    changed = [r for r in l3 if nomerge.encode(r["text"], add_special_tokens=False).ids != r["ids"]]
    report["llama3_ignore_merges"] = {"units_changed_if_false": len(changed), "examples": []}
    for r in changed[:5]:
        a = nomerge.encode(r["text"], add_special_tokens=False).ids
        k = first_diff(r["ids"], a)
        report["llama3_ignore_merges"]["examples"].append({
            "with": [toks["llama3"].id_to_token(i) for i in r["ids"][k:k + 2]],
            "without": [toks["llama3"].id_to_token(i) for i in a[k:k + 3]]})
    total = 0
    for name in NAMES:
        for f, v in report["fixtures"][name].items():
            if isinstance(v, dict):
                total += v["bytes"]
    report["fixtures_total_bytes"] = total
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)
        f.write("\n")
    log(f"fixtures: {total} bytes in {args.fixtures}; report in {out}/report.json")
    for name in NAMES:
        for f, v in report["fixtures"][name].items():
            if isinstance(v, dict):
                print(f"{v['sha256']}  {name}/{f}  {v['bytes']}")


# ---------------------------------------------------------------- --check against the C implementation
def run_fedllm(binary, args, stdin=None):
    """Runs `binary tokenize ARGS` on one thread; returns (stdout bytes, wall seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run([binary, "tokenize"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, input=stdin,
                       env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{binary} tokenize {' '.join(args)} exited {p.returncode}: "
                           f"{p.stderr.decode(errors='replace')[-2000:]}")
    return p.stdout, dt


def parse_id_lines(out):
    lines = out.decode().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [[int(x) for x in ln.split()] for ln in lines]


def show_mismatch(tok, rec, got, idx):
    k = first_diff(rec["ids"], got)
    want_toks = [tok.id_to_token(i) for i in rec["ids"][max(0, k - 3):k + 6]]
    got_toks = [tok.id_to_token(i) if i < tok.get_vocab_size(True) else f"<bad {i}>"
                for i in got[max(0, k - 3):k + 6]]
    # The text around the first differing token.
    pre = tok.decode(rec["ids"][:k], skip_special_tokens=False)
    at = len(pre)
    ctx = rec["text"][max(0, at - 40):at + 60]
    print(f"    unit {idx} ({rec.get('src', '?')}, {len(rec['text'])} chars): first difference at token {k} "
          f"of {len(rec['ids'])} (fedllm gave {len(got)})\n      context: {ctx!r}\n"
          f"      want ids {rec['ids'][max(0, k - 3):k + 6]} {want_toks}\n"
          f"      got  ids {got[max(0, k - 3):k + 6]} {got_toks}")


def check_jsonl(binary, tok, tok_dir, path, label, show=5):
    recs = read_jsonl(path)
    out, dt = run_fedllm(binary, ["--tokenizer", tok_dir, "--in", path, "--jsonl", "text"])
    got = parse_id_lines(out)
    bad = 0
    if len(got) != len(recs):
        print(f"  {label}: fedllm printed {len(got)} lines for {len(recs)} records")
        return len(recs), len(recs)
    for i, (r, g) in enumerate(zip(recs, got)):
        if g != r["ids"]:
            bad += 1
            if bad <= show:
                show_mismatch(tok, r, g, i)
    nbytes = sum(len(r["text"].encode()) for r in recs)
    print(f"  {label}: {len(recs)} units, {nbytes} bytes, {bad} mismatching units ({dt:.2f} s)")
    return len(recs), bad


def check_decode_units(binary, tok_dir, path, label, tmp, show=5):
    """fedllm's decode of each record's reference ids against the record's "decoded" (or "text")."""
    recs = read_jsonl(path)
    ids_path = os.path.join(tmp, "unit.ids")
    bad = 0
    for i, r in enumerate(recs):
        with open(ids_path, "w") as f:
            f.write(" ".join(map(str, r["ids"])) + "\n")
        got, _ = run_fedllm(binary, ["--tokenizer", tok_dir, "--decode", "--in", ids_path])
        want = r.get("decoded", r["text"]).encode("utf-8")
        if got != want:
            bad += 1
            if bad <= show:
                print(f"    unit {i} ({r.get('src', '?')}): decode gave {got[:120]!r}, want {want[:120]!r}")
    print(f"  {label} decode: {len(recs)} units, {bad} decoded differently")
    return bad


def check(args):
    # `tokenizers` on one thread, for the timing (set before it is imported).
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["RAYON_RS_NUM_CPUS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    binary = os.path.abspath(args.check)
    out = os.path.abspath(args.out)
    big_dir = os.path.join(out, "big")
    failures = 0
    summary = []
    for name in args.names.split(","):
        if not os.path.exists(os.path.join(big_dir, f"{name}.jsonl")):
            sys.exit(f"no {big_dir}/{name}.jsonl: generate it first (tools/tokenizer_ref.sh {out})")
        ours = os.path.join(args.fixtures, name, "tokenizer.json")
        theirs = os.path.join(out, "tok", name, "tokenizer.json")
        if sha256(ours) != sha256(theirs):
            sys.exit(f"{ours} is not the tokenizer {out}/big was made with ({theirs}): regenerate")
    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "empty.txt")
        open(empty, "w").close()
        for name in args.names.split(","):
            try:
                failures += check_one(binary, name, args.fixtures, big_dir, empty, tmp, summary)
            except RuntimeError as e:  # fedllm failed: count it, go on with the next tokenizer
                print(f"  {e}")
                failures += 1
    print("\n".join(["== speed"] + summary))
    print("PASS" if failures == 0 else f"FAIL: {failures} mismatches")
    return 0 if failures == 0 else 1


def check_one(binary, name, fixtures, big_dir, empty, tmp, summary):
    """Checks one tokenizer; returns the number of mismatches."""
    from tokenizers import Tokenizer
    failures = 0
    tok_dir = os.path.join(fixtures, name)
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    print(f"== {name} ({tok_dir})")
    _, bad = check_jsonl(binary, tok, tok_dir, os.path.join(tok_dir, "sample.jsonl"), "sample.jsonl")
    failures += bad
    failures += check_decode_units(binary, tok_dir, os.path.join(tok_dir, "sample.jsonl"), "sample.jsonl",
                                   tmp)
    _, bad = check_jsonl(binary, tok, tok_dir, os.path.join(big_dir, f"{name}.jsonl"), "big set")
    failures += bad
    # The whole file: ids, decode round trip, speed.
    txt_path = os.path.join(big_dir, f"{name}.txt")
    txt = open(txt_path, "rb").read()
    want_ids = open(os.path.join(big_dir, f"{name}.ids")).read().split()
    want_ids = [int(x) for x in want_ids]
    times = []
    for _ in range(3):
        o, dt = run_fedllm(binary, ["--tokenizer", tok_dir, "--in", txt_path])
        times.append(dt)
    got_ids = [int(x) for x in o.split()]
    if got_ids != want_ids:
        failures += 1
        k = first_diff(want_ids, got_ids)
        print(f"  whole file: ids differ at token {k} of {len(want_ids)} (fedllm gave {len(got_ids)}): "
              f"want {want_ids[max(0, k - 3):k + 5]} got {got_ids[max(0, k - 3):k + 5]}")
    else:
        print(f"  whole file: {len(want_ids)} ids identical")
    ids_path = os.path.join(tmp, f"{name}.ids")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, got_ids)) + "\n")
    dec, _ = run_fedllm(binary, ["--tokenizer", tok_dir, "--decode", "--in", ids_path])
    # tokenizers' own decode(encode(.txt)) is .txt itself except for qwen2, whose NFC normalizer
    # reorders the marks of some Arabic words: there the reference is tokenizers' decode.
    want_dec = open(os.path.join(big_dir, f"{name}.decoded"), "rb").read()
    if dec != want_dec:
        failures += 1
        k = first_diff(dec, want_dec)
        print(f"  decode(encode(.txt)) differs from tokenizers' at byte {k} of {len(want_dec)} "
              f"(fedllm wrote {len(dec)}): want {want_dec[max(0, k - 30):k + 30]!r} got "
              f"{dec[max(0, k - 30):k + 30]!r}")
    elif dec == txt:
        print(f"  decode(encode(.txt)) == .txt, {len(txt)} bytes")
    else:
        print(f"  decode(encode(.txt)) == tokenizers' decode, {len(dec)} bytes: .txt in NFC "
              f"(differs from .txt from byte {first_diff(dec, txt)}, as in tokenizers)")
    # Speed: fedllm's wall time less that of an empty input (start-up and loading), against tokenizers.
    e_times = [run_fedllm(binary, ["--tokenizer", tok_dir, "--in", empty])[1] for _ in range(3)]
    text = txt.decode("utf-8")
    hf_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        tok.encode(text, add_special_tokens=False)
        hf_times.append(time.perf_counter() - t0)
    mb = len(txt) / 1e6
    f_net = max(min(times) - min(e_times), 1e-9)
    line = (f"{name}: {mb:.2f} MB, fedllm {mb / min(times):.2f} MB/s wall ({mb / f_net:.2f} MB/s less "
            f"{min(e_times) * 1000:.0f} ms start-up and loading), tokenizers 1 thread "
            f"{mb / min(hf_times):.2f} MB/s: fedllm runs at {min(hf_times) / f_net:.2f}x tokenizers' speed")
    print("  " + line)
    summary.append(line)
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="folder the Debian packages are unpacked under")
    ap.add_argument("--kjv", help="the KJV text as `bible -f 'Gen1:1-Rev22:21'` prints it")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--check", metavar="FEDLLM_BINARY")
    ap.add_argument("--names", default=",".join(NAMES), help="with --check: which tokenizers (default: all)")
    args = ap.parse_args()
    if args.check:
        sys.exit(check(args))
    if not args.root or not args.kjv:
        ap.error("--root and --kjv are needed to generate")
    generate(args)


if __name__ == "__main__":
    main()
