#!/usr/bin/env bash
# cli_serve_tokenizer.sh — `fedllm serve` with a real BPE tokenizer (tests/fixtures/tokenizers/gpt2,
# whose encoder keeps a word cache) under requests that all arrive at once: 48 prompts, sent by one
# curl in parallel, are each counted as many tokens as alone, and the server is still up.
# (Before the encoder took a lock, concurrent requests corrupted the heap and each other's ids.)
# The server runs with --threads 1, fewer than this machine's CPUs where it has two or more: the
# engine's thread computes with them (it used to start from every CPU, and every decode failed).
# usage: cli_serve_tokenizer.sh FEDLLM_BINARY SCRATCH_DIR   (from the repository root)
set -u
. "$(dirname "$0")/serve_lib.sh"
bin=$1
dir=$2
fixture=$PWD/tests/fixtures/tokenizers/gpt2
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
"$bin" init-model --arch llama --preset tiny --tokenizer "$fixture" --out model >/dev/null || exit 1
serve_start "$bin" --model model --max-batch 16 --threads 1
url=http://127.0.0.1:$port/v1/completions
# 48 prompts of 16 KB from the fixture's texts (each from its own offset): longer than the context,
# so each is answered 400 with its token count, and encoding them takes long enough to overlap
jq -r '.text' "$fixture/sample.jsonl" | jq -Rsc '. as $t | range(48) |
  {prompt: $t[(. * 1000):(. * 1000 + 16000)], max_tokens: 1, temperature: 0}' >requests.jsonl
n=$(wc -l <requests.jsonl)
fail=0
args=()
for i in $(seq 0 $((n - 1))); do
  sed -n "$((i + 1))p" requests.jsonl >req.$i
  curl -s -m 60 "$url" -d @req.$i | jq -r '.error.message' >alone.$i
  args+=(--next "$url" -s -m 120 -d @req.$i -o together.$i)
done
curl -sZ --parallel-immediate --parallel-max "$n" "${args[@]:1}" 2>/dev/null
for i in $(seq 0 $((n - 1))); do
  got=$(jq -r '.error.message' together.$i 2>/dev/null)
  [ "$got" = "$(cat alone.$i)" ] || {
    fail=$((fail + 1))
    echo "FAILED: request $i together: '$got', alone: '$(cat alone.$i)'" >&2
  }
done
answer=$(curl -s -m 60 "$url" -d '{"prompt":"Hello","max_tokens":4,"temperature":0}')
echo "$answer" | jq -e '.choices[0].finish_reason == "stop" or .usage.completion_tokens == 4' >/dev/null || {
  fail=$((fail + 1))
  echo "FAILED: 4 tokens at --threads 1: $answer" >&2
}
kill -0 "$server" 2>/dev/null || { fail=$((fail + 1)); echo "FAILED: the server died: $(tail -3 serve.log)" >&2; }
kill "$server" 2>/dev/null
wait "$server"
echo "cli_serve_tokenizer: $n concurrent prompts, $fail failed"
[ "$fail" -eq 0 ] && [ "$n" -ge 32 ]
