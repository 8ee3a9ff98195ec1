#!/usr/bin/env bash
# Reference tokenizers for fedllm's C tokenizer, trained and checked on real Debian text.
#
# usage: tools/tokenizer_ref.sh [OUT_DIR]
#          Fetches the Debian packages (apt-get download; unpacked with dpkg-deb, nothing installed) into
#          $FEDLLM_TEXT_CACHE (default /tmp/fedllm-text), trains four tokenizers (gpt2, llama3, qwen2,
#          sp = LLaMA-2-style sentencepiece converted by transformers) on fortunes, fortunes-min,
#          fortunes-de/-es/-it/-ru/-zh and dict-gcide, encodes other text (dict-jargon, wordnet-base,
#          bible-kjv-text, debian-handbook in ten languages) and writes
#            OUT_DIR/big/<name>.{jsonl,txt,ids,decoded}   the big evaluation sets (default OUT_DIR:
#                                                         $FEDLLM_TEXT_CACHE/tokref)
#            OUT_DIR/tok/<name>/                           the trained tokenizers (sp.model too)
#            OUT_DIR/report.json                           sizes, agreement, measured HF quirks
#            tests/fixtures/tokenizers/<name>/             tokenizer.json, tokenizer_config.json,
#                                                          sample.jsonl, chat.jsonl (committed)
#          Deterministic: a rerun rewrites identical fixtures (it prints their SHA-256).
#        tools/tokenizer_ref.sh --check FEDLLM_BINARY [OUT_DIR]
#          Compares `FEDLLM_BINARY tokenize` with the reference on the files above (per-unit ids of the
#          big sets and samples, whole-file ids, decode round trip) and times it against `tokenizers`
#          on one thread. Exits 1 on any mismatch. Needs a generated OUT_DIR. TOKREF_NAMES=gpt2,sp
#          limits it to some of the tokenizers.
# Needs the Python environment of .venv-tools (tokenizers 0.19.1, transformers 4.40.2, sentencepiece,
# protobuf); set PYTHON to use another interpreter.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${FEDLLM_TEXT_CACHE:-/tmp/fedllm-text}
py=${PYTHON:-$root/.venv-tools/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

check=
if [ "${1:-}" = --check ]; then
  check=${2:?usage: tokenizer_ref.sh --check FEDLLM_BINARY [OUT_DIR]}
  shift 2
fi
out=${1:-$cache/tokref}
fixtures=$root/tests/fixtures/tokenizers

if [ -n "$check" ]; then
  exec "$py" "$root/tools/tokenizer_ref.py" --check "$check" --out "$out" --fixtures "$fixtures" \
    --names "${TOKREF_NAMES:-gpt2,llama3,qwen2,sp}"
fi

# Training text, then evaluation text (bible-kjv holds the program that decompresses bible-kjv-text).
packages="fortunes fortunes-min fortunes-de fortunes-es fortunes-it fortunes-ru fortunes-zh dict-gcide
          dict-jargon wordnet-base bible-kjv bible-kjv-text debian-handbook"
mkdir -p "$cache/debs" "$cache/root"
missing=
for p in $packages; do
  ls "$cache"/debs/"${p}"_*.deb >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  (cd "$cache/debs" && apt-get download $missing >/dev/null 2>&1) ||
    { apt-get update -qq && (cd "$cache/debs" && apt-get download $missing >/dev/null); }
fi
for p in $packages; do
  deb=$(ls "$cache"/debs/"${p}"_*.deb | sort | tail -n 1)
  stamp="$cache/root/.unpacked-$(basename "$deb")"
  [ -e "$stamp" ] || { dpkg-deb -x "$deb" "$cache/root" && touch "$stamp"; }
done
for p in $packages; do ls "$cache"/debs/"${p}"_*.deb | sort | tail -n 1 | sed 's|.*/||'; done >&2
if [ ! -s "$cache/kjv.txt" ]; then
  # -f turns pretty-printing off: one verse per line, "Ge1:1 In the beginning ...".
  "$cache/root/usr/bin/bible" -f -p "$cache/root/usr/lib/" 'Gen1:1-Rev22:21' >"$cache/kjv.txt.tmp"
  mv "$cache/kjv.txt.tmp" "$cache/kjv.txt"
fi
mkdir -p "$fixtures"
exec "$py" "$root/tools/tokenizer_ref.py" --root "$cache/root" --kjv "$cache/kjv.txt" --out "$out" \
  --fixtures "$fixtures"
