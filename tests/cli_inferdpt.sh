#!/usr/bin/env bash
# cli_inferdpt.sh — `fedllm inferdpt` end to end against `fedllm serve`: a kit from a model with a
# real BPE tokenizer, perturbation from the command line, a run whose every prompt is in the
# outbox (and is exactly what the server was sent, counted in tokens from the server's log), that
# sends no original text it changed, a killed run that --resume finishes with the results of an
# uninterrupted one, and the refusals: a wrong key, an unreachable endpoint, a kit for another
# tokenizer, a run directory in use, other settings on resume, bad templates — each one line and
# exit 2 with no results file.
# usage: cli_inferdpt.sh FEDLLM_BINARY SCRATCH_DIR   (from the repository root)
set -u
. "$(dirname "$0")/serve_lib.sh"
bin=$1
dir=$2
root=$PWD
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*" >&2; }
# refused NAME WANT_TEXT -- command...: exit 2 with one line on stderr containing WANT_TEXT
refused() {
  local name=$1 want=$2
  shift 3
  "$@" >out.txt 2>err.txt
  local rc=$?
  if [ $rc -ne 2 ]; then bad "$name: exit $rc, expected 2 ($(head -c 300 err.txt))"; return; fi
  if [ "$(wc -l <err.txt)" -ne 1 ] || ! grep -qF -- "$want" err.txt; then
    bad "$name: expected one line with '$want', got: $(head -c 400 err.txt)"; return
  fi
  ok
}

"$bin" init-model --arch gpt2 --preset tiny --tokenizer "$root/tests/fixtures/tokenizers/gpt2" \
  --out remote >/dev/null || { echo "FAILED: init-model" >&2; exit 1; }

# ---- the kit ------------------------------------------------------------------------------------
if "$bin" inferdpt kit --model remote --out kit >kit.txt 2>&1 && [ -s kit/kit.bin ] &&
  [ -s kit/tokenizer.json ] && grep -q "whole-word tokens of 8001" kit.txt; then ok; else
  bad "inferdpt kit: $(cat kit.txt)"; fi
refused "kit of a byte tokenizer" "no whole-word token" -- \
  "$bin" inferdpt kit --model "$root/models/base" --out kit-bytes
[ ! -e kit-bytes ] && ok || bad "a failed kit left kit-bytes behind"
refused "kit --neighbours 0" "--neighbours" -- "$bin" inferdpt kit --model remote --out k2 --neighbours 0

# ---- perturb ------------------------------------------------------------------------------------
text="The chapter tells of the king and his people, who lived near the river."
printf '%s' "$text" >doc.txt
[ "$("$bin" inferdpt perturb --kit kit --in doc.txt --epsilon inf 2>/dev/null)" = "$text" ] && ok ||
  bad "epsilon inf changed the text"
p1=$("$bin" inferdpt perturb --kit kit --in doc.txt --epsilon 1 --seed 4 2>/dev/null)
p2=$("$bin" inferdpt perturb --kit kit --in doc.txt --epsilon 1 --seed 4 2>/dev/null)
[ "$p1" != "$text" ] && [ "$p1" = "$p2" ] && ok || bad "epsilon 1: '$p1' / '$p2'"
refused "perturb with qwen2's tokenizer" "another tokenizer" -- "$bin" inferdpt perturb --kit kit \
  --in doc.txt --tokenizer "$root/tests/fixtures/tokenizers/qwen2"
refused "epsilon 0" "--epsilon" -- "$bin" inferdpt perturb --kit kit --in doc.txt --epsilon 0

# ---- a server ------------------------------------------------------------------------------------
serve_start "$bin" --model remote --api-key sekrit --threads 1
trap 'kill $server 2>/dev/null' EXIT
url=http://127.0.0.1:$port/v1

for i in $(seq 10); do
  printf '{"id":%d,"text":"Record %d: the patient from the northern village spoke with the doctor about his brother and the church."}\n' "$i" "$i"
done >docs.jsonl
common=(--kit kit --data docs.jsonl --endpoint "$url" --api-key sekrit --local-model "$root/models/base"
  --instruction-template 'Q: {{perturbed_doc}}
A:' --decode-template 'Text: {{perturbed_doc}} Answer: {{perturbed_response}} Question: {{text}}' \
  --remote-max-tokens 8 --remote-temperature 1 --seed 3)

# ---- a run ---------------------------------------------------------------------------------------
before=$(wc -l <serve.log)
if "$bin" inferdpt run "${common[@]}" --out run1 --batch 4 --local-max-tokens 8 >run1.txt 2>&1; then
  ok; else bad "run: $(cat run1.txt)"; fi
n_results=$(jq -s 'map(select((.perturbed_doc | type) == "string" and (.perturbed_response |
  type) == "string" and (.inferdpt_result | type) == "string" and .id != null)) | length' run1/results.jsonl)
[ "$n_results" = 10 ] && ok || bad "results.jsonl holds $n_results whole records of 10"
answered=$(jq -s 'map(select((.perturbed_response | length) > 0 and (.inferdpt_result | length) > 0)) | length' run1/results.jsonl)
[ "$answered" = 10 ] && ok || bad "only $answered of 10 records have a response and an answer"
[ "$(wc -l <run1/outbox.jsonl)" = 10 ] && ok || bad "outbox has $(wc -l <run1/outbox.jsonl) lines, expected 10"
# every outbox text is the instruction template over that record's perturbed text
mismatch=$(jq -rs '(.[0] | map({key: (.id - 1 | tostring), value: .perturbed_doc}) | from_entries) as $p
  | .[1] | map(select(.text != ("Q: " + $p[.doc | tostring] + "\nA:") or .bytes != (.text | utf8bytelength)))
  | length' <(jq -s . run1/results.jsonl) <(jq -s . run1/outbox.jsonl))
[ "$mismatch" = 0 ] && ok || bad "$mismatch outbox lines are not the prompt of their record"
changed=$(jq -s 'map(select(.perturbed_doc != .text)) | length' run1/results.jsonl)
[ "$changed" -ge 5 ] && ok || bad "epsilon 3 changed only $changed of 10 records"
leaked=$(jq -rs 'map(select(.perturbed_doc != .text) | .text) | .[]' run1/results.jsonl |
  while IFS= read -r t; do grep -cF -- "$t" run1/outbox.jsonl; done | awk '{s += $1} END {print s + 0}')
[ "$leaked" = 0 ] && ok || bad "$leaked original texts that were changed appear in the outbox"
# what the server received, in tokens, is what the outbox says was sent
sent_tokens=$(tail -n +$((before + 1)) serve.log | awk '/POST \/v1\/completions 200/ {split($4, a, "+"); s += a[1]} END {print s + 0}')
outbox_tokens=0
for i in $(seq 0 9); do
  jq -j ".text" <(sed -n "$((i + 1))p" run1/outbox.jsonl) >prompt.txt
  outbox_tokens=$((outbox_tokens + $("$bin" tokenize --tokenizer remote --in prompt.txt | wc -w)))
done
[ "$sent_tokens" -gt 0 ] && [ "$sent_tokens" = "$outbox_tokens" ] && ok ||
  bad "the server got $sent_tokens prompt tokens, the outbox holds $outbox_tokens"
[ "$(wc -l <run1/metrics.jsonl)" = 3 ] && jq -e '.bytes_sent > 0 and .replaced >= 0' \
  run1/metrics.jsonl >/dev/null && ok || bad "metrics.jsonl: $(cat run1/metrics.jsonl)"
jq -e '.records == 10 and .in_kit > 0 and .replaced > 0 and .epsilon == 3' run1/summary.json \
  >/dev/null && ok || bad "summary.json: $(cat run1/summary.json)"

# epsilon inf sends the text as it is
"$bin" inferdpt run "${common[@]}" --out run-inf --epsilon inf --local-max-tokens 2 >/dev/null 2>&1
[ "$(jq -s 'map(select(.perturbed_doc == .text)) | length' run-inf/results.jsonl)" = 10 ] && ok ||
  bad "epsilon inf changed some record"

# ---- killed, then resumed: the results of an uninterrupted run -----------------------------------
slow=(--batch 1 --local-max-tokens 200 --threads 1)
"$bin" inferdpt run "${common[@]}" "${slow[@]}" --out whole >/dev/null 2>&1 || bad "the uninterrupted run failed"
"$bin" inferdpt run "${common[@]}" "${slow[@]}" --out killed >killed.txt 2>&1 &
victim=$!
for _ in $(seq 400); do
  [ -f killed/progress.jsonl ] && [ "$(wc -l <killed/progress.jsonl)" -ge 3 ] && break
  sleep 0.02
done
kill -9 $victim 2>/dev/null
wait $victim 2>/dev/null
done_lines=$(wc -l <killed/progress.jsonl)
if [ "$done_lines" -ge 10 ] || [ -e killed/results.jsonl ]; then
  bad "the run finished before it was killed ($done_lines records): cannot check --resume"
else
  ok
  refused "resume with another epsilon" "other settings" -- \
    "$bin" inferdpt run "${common[@]}" "${slow[@]}" --out killed --resume --epsilon 1
  if "$bin" inferdpt run "${common[@]}" "${slow[@]}" --out killed --resume >resumed.txt 2>&1 &&
    grep -q "records were finished before" killed/log && cmp -s whole/results.jsonl killed/results.jsonl; then
    ok
  else
    bad "resumed after $done_lines records: $(tail -2 resumed.txt); results differ: $(diff whole/results.jsonl killed/results.jsonl | head -4)"
  fi
fi

# ---- refusals ------------------------------------------------------------------------------------
refused "run dir in use" "holds an earlier run" -- "$bin" inferdpt run "${common[@]}" --out run1
wrong=("${common[@]}")
wrong[7]=wrong
refused "wrong key" "HTTP 401" -- "$bin" inferdpt run "${wrong[@]}" --out run-key
[ ! -e run-key/outbox.jsonl ] && ok || bad "a refused key still wrote an outbox"
refused "unreachable endpoint" "127.0.0.1:1/v1/models" -- "$bin" inferdpt run "${common[@]}" \
  --endpoint http://127.0.0.1:1/v1 --out run-down
[ ! -e run-down ] && ok || bad "an unreachable endpoint left run-down behind"
refused "not an OpenAI endpoint" "HTTP 404" -- "$bin" inferdpt run "${common[@]}" \
  --endpoint "http://127.0.0.1:$port/nothing" --out run-404
refused "unknown model" "has no model 'gpt-9'" -- "$bin" inferdpt run "${common[@]}" \
  --remote-model gpt-9 --out run-model
refused "kit for another tokenizer" "another tokenizer" -- "$bin" inferdpt run "${common[@]}" \
  --tokenizer "$root/tests/fixtures/tokenizers/qwen2" --out run-tok
refused "unclosed template" "never closed" -- "$bin" inferdpt run "${common[@]}" \
  --encode-template '{{ text' --out run-tpl
refused "template field" "no field 'question'" -- "$bin" inferdpt run "${common[@]}" \
  --encode-template '{{question}}' --out run-field
[ ! -e run-field/results.jsonl ] && [ ! -s run-field/outbox.jsonl ] && ok ||
  bad "a template error sent something or wrote results"
printf '{"text":"fine"}\nnot json\n' >broken.jsonl
refused "broken data" "broken.jsonl:2" -- "$bin" inferdpt run "${common[@]}" --data broken.jsonl \
  --out run-data
kill -0 $server 2>/dev/null && ok || bad "the server died"

echo "cli_inferdpt: $((pass + fail)) checks: $pass passed, $fail failed"
[ $fail -eq 0 ]
