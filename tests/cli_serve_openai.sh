#!/usr/bin/env bash
# cli_serve_openai.sh — `fedllm serve` through the official `openai` Python package: the client
# that most users point at an OpenAI-compatible server. tests/serve_openai.py holds the checks
# (completions equal to `fedllm generate`, usage, chat, streams, n, errors as the client's
# exception classes, log-probs); this script makes the package's virtual environment, the
# expected texts and the server.
#
# The environment lives in testtmp/openai-venv of the build directory and is reused while it
# imports openai. Making it needs PyPI: without network (or without python3's venv module) the
# test says it was skipped, and why, and exits 77, which ctest counts as skipped, never passed.
# usage: cli_serve_openai.sh FEDLLM_BINARY SCRATCH_DIR   (from the repository root)
set -u
. "$(dirname "$0")/serve_lib.sh"
bin=$1
dir=$2
root=$PWD
model=$root/models/base
venv=$(dirname "$dir")/openai-venv
rm -rf "$dir" && mkdir -p "$dir" || exit 1

skip() {
  echo "cli_serve_openai: SKIPPED: $*"
  exit 77
}
if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  rm -rf "$venv"
  command -v python3 >/dev/null || skip "no python3 on this machine"
  python3 -m venv "$venv" >"$dir/venv.log" 2>&1 ||
    skip "python3 -m venv failed (Debian: apt-get install python3-venv): $(tail -n 1 "$dir/venv.log")"
  if ! timeout 300 "$venv/bin/pip" install --disable-pip-version-check -q --retries 1 \
    --timeout 15 openai >"$dir/pip.log" 2>&1; then
    rm -rf "$venv"
    skip "pip install openai failed (no network to PyPI?): $(tail -n 1 "$dir/pip.log" | cut -c 1-200)"
  fi
fi
cd "$dir" || exit 1

# what the server must give: `fedllm generate`'s greedy texts, and the prompts' token counts
gen() { "$bin" generate --model "$model" --max-tokens 24 --temperature 0 "$@" 2>/dev/null; }
gen --prompt "It was a dark and stormy" >want_completion.txt || exit 1
gen --chat --prompt "Hello there" >want_chat.txt || exit 1
printf '%s' "It was a dark and stormy" >prompt.txt
"$bin" tokenize --tokenizer "$model" --in prompt.txt --bos | wc -w >want_prompt_tokens.txt

serve_start "$bin" --model "$model" --max-batch 4 --api-key sekrit --max-tokens 480

timeout 120 "$venv/bin/python" "$root/tests/serve_openai.py" "http://127.0.0.1:$port/v1" sekrit "$dir"
rc=$?
kill -TERM "$server"
wait "$server"
[ "$rc" -eq 0 ] || echo "the server's log: $(tail -n 5 serve.log)" >&2
exit "$rc"
