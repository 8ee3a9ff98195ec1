#!/usr/bin/env bash
# InferDPT measured, end to end, on this machine (docs/inferdpt.md): a GPT-2-shaped "remote"
# model (8001-token BPE of tests/fixtures/tokenizers/gpt2) trained by fedllm on public-domain
# novels, its kit, `fedllm serve` of it, and `fedllm inferdpt run` over passages of the King James
# Bible at ε 1, 3, 6 and ∞; then tools/inferdpt_measure.py (in .venv-dpt: numpy, transformers
# 4.37.2, rouge-score and FATE-LLM 2.2.0's own InferDPT code) for the inversion rates, ROUGE-L and
# the comparison with FATE-LLM's perturbation on the same kit.
# usage: tools/inferdpt_measure.sh   (after make build; about 15 minutes on 2 cores, most of it
#   training the remote model once)
#   WORK (build/inferdpt-cmp), BUILD (build), VENV (.venv-dpt), STEPS (600: training steps of
#   16 x 128 tokens), DOCS (60 passages), SEEDS ("1 2 3": perturbations of the docs per ε for
#   the inversion rates).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=${WORK:-build/inferdpt-cmp}
build=${BUILD:-build}
venv=${VENV:-.venv-dpt}
steps=${STEPS:-600}
docs=${DOCS:-60}
export SEEDS=${SEEDS:-1 2 3}
F=$root/$build/fedllm
mkdir -p "$work"

if ! "$venv/bin/python" -c "import fate_llm.algo.inferdpt.utils, rouge_score" 2>/dev/null; then
  # FATE-LLM's InferDPT needs only numpy and a transformers tokenizer: no torch, no FATE.
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -U pip
  "$venv/bin/pip" install -q 'numpy<2' transformers==4.37.2 tokenizers rouge-score
  "$venv/bin/pip" install -q --no-deps fate_llm==2.2.0
fi

scripts/fetch-text novels "$work/data" >/dev/null
scripts/fetch-text kjv "$work/data" >/dev/null
if [ ! -f "$work/remote/model.safetensors" ]; then
  rm -rf "$work/remote0" "$work/remote"
  "$F" init-model --arch gpt2 --preset small --tokenizer tests/fixtures/tokenizers/gpt2 \
    --out "$work/remote0" --seed 1
  "$F" train --model "$work/remote0" --data "$work/data/novels.train.jsonl" --out "$work/remote" \
    --steps "$steps" --batch 16 --seq 128 --lr 1e-3 --warmup 30 --log-every 50 \
    --eval "$work/data/novels.eval.jsonl" 2>&1 | tee "$work/train.log"
fi
rm -rf "$work/kit"
"$F" inferdpt kit --model "$work/remote" --out "$work/kit"
# The documents: the first two thirds of the words of passages of at most 320 bytes (about 80
# tokens), cut mid-verse so that the models continue them rather than end them, and so that the
# local prompt (perturbed passage, continuation, passage, answer) fits the model's 512 positions.
jq -c 'select((.text | length) <= 320) | .text |= (split(" ") | .[0:((length * 2 / 3) | floor)]
  | join(" "))' "$work/data/kjv.eval.jsonl" | head -n "$docs" >"$work/docs.jsonl"

for eps in 1 3 6 inf; do
  for seed in $SEEDS; do
    "$F" inferdpt perturb --kit "$work/kit" --in "$work/docs.jsonl" --jsonl text --ids \
      --epsilon $eps --seed "$seed" >"$work/ids-$eps-$seed.jsonl" 2>/dev/null
  done
done

"$F" serve --model "$work/remote" --port 0 --max-batch 8 --threads 2 >/dev/null 2>"$work/serve.log" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
port=
for _ in $(seq 100); do
  port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$work/serve.log" 2>/dev/null | grep -o '[0-9]*$') || true
  [ -n "$port" ] && break
  sleep 0.1
done
# The task: the remote model continues each (perturbed) passage; the local model (a copy of the
# same small model: the client's own) reads the perturbed passage, the remote continuation and
# the original passage, and continues the original. ROUGE-L compares each ε's answers with ε=∞'s.
for eps in 1 3 6 inf; do
  rm -rf "$work/run-$eps"
  "$F" inferdpt run --kit "$work/kit" --data "$work/docs.jsonl" --endpoint "http://127.0.0.1:$port/v1" \
    --local-model "$work/remote" --out "$work/run-$eps" --epsilon $eps --seed 1 --batch 8 \
    --instruction-template '{{perturbed_doc}}' \
    --decode-template 'Passage: {{perturbed_doc}}{{perturbed_response}}

Passage: {{text}}' --remote-max-tokens 48 --local-max-tokens 48 --threads 2 | tail -1
done
# The local model alone (no remote help), for scale: its answers beside the ε = ∞ ones.
rm -rf "$work/run-local"
"$F" inferdpt run --kit "$work/kit" --data "$work/docs.jsonl" --endpoint "http://127.0.0.1:$port/v1" \
  --local-model "$work/remote" --out "$work/run-local" --epsilon inf --seed 1 --batch 8 \
  --decode-template 'Passage: {{text}}' --remote-max-tokens 1 --local-max-tokens 48 --threads 2 | tail -1
kill $server
"$venv/bin/python" tools/inferdpt_measure.py "$work" "$F" | tee "$work/report.md"
