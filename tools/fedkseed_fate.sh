#!/usr/bin/env bash
# FedKSeed beside FATE-LLM 2.2.0, end to end, on this machine (docs/performance.md, "FedKSeed beside
# FATE-LLM 2.2.0"): installs FATE-LLM 2.2.0 from PyPI into .venv-fate (once, about 3 minutes after
# the torch wheel is cached), makes a random-init GPT-2 with its own BPE tokenizer and the clients'
# data from Debian's text packages (scripts/fetch-text), then runs the same FedKSeed job through
# fedllm and through FATE-LLM's own FedKSeed classes (tools/fedkseed_fate.py), each at 1 and 2
# threads a client, in two timing passes, and evaluates every final model with `fedllm eval` and
# with transformers.
# usage: tools/fedkseed_fate.sh            (after make build; about 8 minutes on 2 idle cores)
#   WORK (default build/fedkseed-cmp) holds the model, the data, every run and results/;
#   BUILD (default build) is the build folder holding fedllm; VENV (default .venv-fate);
#   ROUNDS, STEPS, BATCH, SEQ, K, EPS, LR override the job (defaults 3, 30, 4, 64, 4096, 1e-3, 1e-4);
#   PASSES (default 2) timing passes; MAX_LOAD (default 1.5): a pass waits up to 5 minutes for the
#   1-minute load average to fall below it (the machine is shared) and records the load it ran at.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=${WORK:-build/fedkseed-cmp}
build=${BUILD:-build}
venv=${VENV:-.venv-fate}
rounds=${ROUNDS:-3} steps=${STEPS:-30} batch=${BATCH:-4} seq=${SEQ:-64}
k=${K:-4096} eps=${EPS:-1e-3} lr=${LR:-1e-4} passes=${PASSES:-2} max_load=${MAX_LOAD:-1.5}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0

. tools/fate_venv.sh   # the venv (once) and py
[ -x "$build/fedllm" ] || { cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release && cmake --build "$build" -j 2; }
fedllm=$root/$build/fedllm

mkdir -p "$work/text" "$work/results"
scripts/fetch-text --max-train 60000 --max-eval 16000 fortunes "$work/text"
scripts/fetch-text --max-train 60000 --max-eval 16000 kjv "$work/text"
"$py" tools/fedkseed_fate.py prepare --text "$work/text" --out "$work" --rows $((steps * batch)) --seq "$seq"

res=$work/results
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs"
  echo "fedllm: $(git rev-parse --short HEAD)"
  echo "python: $("$py" -c 'import sys, torch, transformers, fate_llm; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)')"
  "$venv/bin/pip" list 2>/dev/null | grep -E "^(pyfate|fate_llm|fate-llm) " || true
  echo "job: rounds $rounds, steps $steps, batch $batch, seq $seq, k $k, eps $eps, lr $lr"
} > "$res/machine.txt"
cat "$res/machine.txt"

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
  local waited=0
  while awk -v l="$(load1)" -v m="$max_load" 'BEGIN { exit !(l >= m) }' && [ $waited -lt 300 ]; do
    sleep 15; waited=$((waited + 15))
  done
}
job=(--dir "$work" --rounds "$rounds" --steps "$steps" --batch "$batch" --seq "$seq" --k "$k" --eps "$eps" --lr "$lr")
for pass in $(seq 1 "$passes"); do
  wait_quiet
  echo "pass $pass: load before $(uptime | sed 's/.*load average: //')" | tee -a "$res/machine.txt"
  for t in 1 2; do
    "$py" tools/fedkseed_fate.py fedllm "${job[@]}" --threads $t --tag "p$pass-t$t" \
      --fedllm "$fedllm" --port $((7840 + 2 * pass + t)) --out "$res/fedllm-p$pass-t$t.json"
    "$py" tools/fedkseed_fate.py fate "${job[@]}" --threads $t --tag "p$pass-t$t" \
      --out "$res/fate-p$pass-t$t.json" > "$res/fate-p$pass-t$t.log" 2>&1 ||
      { tail -40 "$res/fate-p$pass-t$t.log"; exit 1; }
    tail -1 "$res/fate-p$pass-t$t.log"
  done
  echo "pass $pass: load after $(uptime | sed 's/.*load average: //')" | tee -a "$res/machine.txt"
done
"$py" tools/fedkseed_fate.py eval --dir "$work" --fedllm "$fedllm" --seq "$seq" --out "$res/eval.json" \
  base="$work/model" "$res"/fedllm-p*.json "$res"/fate-p*.json > /dev/null
for pass in $(seq 1 "$passes"); do
  echo "## pass $pass"
  "$py" tools/fedkseed_fate.py report --eval "$res/eval.json" \
    --fedllm "$res"/fedllm-p$pass-t*.json --fate "$res"/fate-p$pass-t*.json
done | tee "$res/report.md"
