#!/usr/bin/env bash
# cli_tokenize.sh — `fedllm tokenize` and the tokenizer-dependent parts of init-model and generate,
# as a user runs them: encode and decode round trips with the reference tokenizers, JSONL mode, a
# model built around a BPE tokenizer, batched and chat generation; and bad input, each of which must
# exit 2 with one line on stderr and nothing on stdout.
# usage: cli_tokenize.sh FEDLLM_BINARY SCRATCH_DIR   (from the repository root)
set -u
bin=$1
dir=$2
fixtures=$PWD/tests/fixtures/tokenizers
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*" >&2; }

# expect_error NAME EXPECTED_SUBSTRING -- command...
expect_error() {
  local name=$1 want=$2
  shift 3
  "$@" >stdout.txt 2>stderr.txt
  local rc=$?
  if [ "$rc" -ne 2 ]; then bad "$name: exit $rc, expected 2 ($(head -c 300 stderr.txt))"; return; fi
  if [ "$(wc -l <stderr.txt)" -ne 1 ]; then bad "$name: stderr is not one line: $(cat stderr.txt)"; return; fi
  if ! grep -q -- "$want" stderr.txt; then bad "$name: stderr lacks '$want': $(cat stderr.txt)"; return; fi
  if [ -s stdout.txt ]; then bad "$name: wrote to stdout"; return; fi
  ok
}

# Text with the oddities tokenizers trip on: several scripts, digits, contractions, runs of spaces,
# tabs, CRLF, a special token written in the text.
printf 'The LORD is my shepherd; I shall not want.\r\nHe\x27S 12345 caf\xc3\xa9  \t na\xc3\xafve \xd0\x9c\xd0\xbe\xd1\x81\xd0\xba\xd0\xb2\xd0\xb0 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\n\n  end <|endoftext|> ' >text.txt
for name in gpt2 llama3 qwen2 sp; do
  if "$bin" tokenize --tokenizer "$fixtures/$name" --in text.txt >ids.txt &&
     "$bin" tokenize --tokenizer "$fixtures/$name" --in ids.txt --decode >back.txt &&
     cmp -s text.txt back.txt; then ok; else bad "$name: decode(encode(text)) differs"; fi
done
# the GPT-2 fixture has <|endoftext|> as a special token: its text is one id, and --skip-special drops it
printf '<|endoftext|>' >eot.txt
eot=$("$bin" tokenize --tokenizer "$fixtures/gpt2" --in eot.txt)
"$bin" tokenize --tokenizer "$fixtures/gpt2" --in text.txt >ids.txt
if [ -n "$eot" ] && [ "$eot" = "${eot%% *}" ] && grep -qw "$eot" ids.txt; then ok; else
  bad "special token not one id ($eot)"; fi
"$bin" tokenize --tokenizer "$fixtures/gpt2" --in ids.txt --decode --skip-special >skip.txt
if ! grep -q 'endoftext' skip.txt && grep -q shepherd skip.txt; then ok; else bad "--skip-special"; fi

# JSONL: one line of ids per record, equal to encoding each text alone
printf '{"text": "first record"}\n\n{"text": ""}\n{"text": "third, with caf\xc3\xa9"}\n' >recs.jsonl
"$bin" tokenize --tokenizer "$fixtures/sp/tokenizer.json" --in recs.jsonl --jsonl text >lines.txt
printf 'third, with caf\xc3\xa9' >third.txt
"$bin" tokenize --tokenizer "$fixtures/sp/tokenizer.json" --in third.txt >third.ids
if [ "$(wc -l <lines.txt)" -eq 3 ] && [ -z "$(sed -n 2p lines.txt)" ] &&
   [ "$(sed -n 3p lines.txt)" = "$(cat third.ids)" ]; then ok; else bad "--jsonl lines"; fi
# --bos adds the BOS that LLaMA-2's tokenizer_config asks for
"$bin" tokenize --tokenizer "$fixtures/sp" --in third.txt --bos >bos.ids
if [ "$(cat bos.ids)" = "1 $(cat third.ids)" ]; then ok; else bad "--bos: $(cat bos.ids)"; fi

# A model around a BPE tokenizer: vocabulary and special ids from the tokenizer
if "$bin" init-model --arch llama --preset tiny --tokenizer "$fixtures/sp" --out m-sp >/dev/null &&
   [ -s m-sp/tokenizer.json ] && [ -s m-sp/tokenizer_config.json ] &&
   grep -q '"eos_token_id":[[:space:]]*2' m-sp/config.json; then ok; else bad "init-model --tokenizer"; fi
vocab=$(grep -o '"vocab_size":[[:space:]]*[0-9]*' m-sp/config.json | grep -o '[0-9]*$')
if [ "${vocab:-0}" -gt 1000 ]; then ok; else bad "init-model vocabulary $vocab"; fi

# Batched generation: each prompt's greedy continuation equals generating it alone
printf 'The LORD is my shepherd\nI\nA somewhat longer prompt about green pastures and still waters\n' >prompts.txt
"$bin" generate --model m-sp --prompts prompts.txt --max-tokens 12 --temperature 0 >batch.jsonl 2>/dev/null
if [ "$(wc -l <batch.jsonl)" -eq 3 ]; then ok; else bad "batch: $(cat batch.jsonl)"; fi
i=0
while IFS= read -r prompt; do
  i=$((i + 1))
  printf '%s\n' "$prompt" >one.txt
  alone=$("$bin" generate --model m-sp --prompts one.txt --max-tokens 12 --temperature 0 2>/dev/null)
  if [ -n "$alone" ] && [ "$(sed -n "${i}p" batch.jsonl)" = "$alone" ]; then ok; else
    bad "batch row $i differs from alone: $(sed -n "${i}p" batch.jsonl) vs $alone"; fi
done <prompts.txt
# same seed, same text
a=$("$bin" generate --model m-sp --prompt "He leadeth me" --max-tokens 16 --seed 7 2>/dev/null)
b=$("$bin" generate --model m-sp --prompt "He leadeth me" --max-tokens 16 --seed 7 2>/dev/null)
if [ -n "$a" ] && [ "$a" = "$b" ]; then ok; else bad "seeded generation not reproducible"; fi
# chat: LLaMA-2's template is recognised and renders; plain forced by name works too
if "$bin" generate --model m-sp --prompt "Hi" --chat --system "Be brief." --max-tokens 4 >/dev/null 2>&1 &&
   "$bin" generate --model m-sp --prompt "Hi" --chat --chat-template plain --max-tokens 4 >/dev/null 2>&1
then ok; else bad "chat generation"; fi

# Bad input
printf 'caf\xe9\n' >latin1.txt
printf '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [' >truncated.json
printf '5 x 7\n' >badids.txt
printf '5 999999\n' >bigid.txt
expect_error "no --in" "--tokenizer and --in are required" -- "$bin" tokenize --tokenizer "$fixtures/sp"
expect_error "missing tokenizer" "nowhere: not found" -- "$bin" tokenize --tokenizer nowhere --in text.txt
expect_error "truncated tokenizer.json" "truncated.json: not valid JSON" -- "$bin" tokenize --tokenizer truncated.json --in text.txt
expect_error "invalid UTF-8" "latin1.txt: text is not valid UTF-8 (byte offset 3)" -- "$bin" tokenize --tokenizer "$fixtures/sp" --in latin1.txt
expect_error "not an id" "badids.txt: id 2: expected a non-negative integer, got 'x" -- "$bin" tokenize --tokenizer "$fixtures/sp" --in badids.txt --decode
expect_error "id outside" "token id 999999 is not in the vocabulary" -- "$bin" tokenize --tokenizer "$fixtures/sp" --in bigid.txt --decode
expect_error "jsonl field" "recs.jsonl:1: field 'body' missing or not a string" -- "$bin" tokenize --tokenizer "$fixtures/sp" --in recs.jsonl --jsonl body
"$bin" init-model --arch llama --preset tiny --out m-bytes >/dev/null
cp "$fixtures/sp/tokenizer.json" m-bytes/tokenizer.json
rm -f m-bytes/tokenizer_config.json
expect_error "vocabulary larger than the model" "the tokenizer has" -- "$bin" generate --model m-bytes --prompt hi
expect_error "unknown chat template name" "'zephyr': expected plain, chatml, llama-2 or llama-3" -- "$bin" generate --model m-sp --prompt hi --chat --chat-template zephyr
expect_error "--system without --chat" "--system and --chat-template go with --chat" -- "$bin" generate --model m-sp --prompt hi --system x

echo "cli_tokenize: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
