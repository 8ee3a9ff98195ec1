#!/usr/bin/env bash
# Offsite-tuning through FATE-LLM 2.2.0's own classes on this machine's CPU (issue 13, item 5):
# installs FATE-LLM 2.2.0 from PyPI into .venv-fate (the venv and recipe of
# tools/fedkseed_fate.sh, shared with it; once, about 3 minutes after the torch wheel is cached),
# makes a random-init 12-layer GPT-2 (the config of `fedllm init-model --arch gpt2 --preset small`
# with n_layer 12, saved by transformers as safetensors, so fedllm loads the same folder) and the
# client's data from Debian's fortunes (scripts/fetch-text), then runs FATE-LLM's two-party
# offsite-tuning (GPT2LMHeadMainModel / GPT2LMHeadSubModel, OffsiteTuningTrainerServer /
# OffsiteTuningTrainerClient under FATE's multiprocess launcher; tools/offsite_fate.py) at 1 and
# 2 torch threads, and evaluates the full model zero-shot, the client's emulator + tuned adapters
# and the full model with the tuned adapters plugged in, with transformers and `fedllm eval`.
# usage: tools/offsite_fate.sh            (after make build; about 2 minutes on 2 idle cores
#                                          once the venv exists)
#   WORK (default build/offsite-cmp) holds the model, the data, each run and results/ (fate.json,
#   report.md); BUILD (default build) is the build folder holding fedllm; VENV (default .venv-fate);
#   LAYERS, EMULATOR, TOP, BOTTOM set the model and split (defaults 12, 4, 2, 2);
#   STEPS, BATCH, SEQ, LR override the job (defaults 30, 4, 64, 1e-4); SEED (default 0) seeds the
#   random init, TRAIN_SEED (default 42, transformers' default) the client trainer.
#   BASE_STEPS (default 0: the random-init model, as issue 13 asks) > 0 first trains the whole
#   model with `fedllm train` for that many steps (batch 8, seq SEQ, lr 2e-3 cosine, warmup 20,
#   clip 1) on nineteenth-century novels (`fetch-text novels`, no fortunes in it), so that the
#   emulator is a lossy copy of a model that knows something; about 0.5 s a step on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=${WORK:-build/offsite-cmp}
build=${BUILD:-build}
venv=${VENV:-.venv-fate}
layers=${LAYERS:-12} emulator=${EMULATOR:-4} top=${TOP:-2} bottom=${BOTTOM:-2}
steps=${STEPS:-30} batch=${BATCH:-4} seq=${SEQ:-64} lr=${LR:-1e-4}
seed=${SEED:-0} train_seed=${TRAIN_SEED:-42} base_steps=${BASE_STEPS:-0}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0

. tools/fate_venv.sh   # the venv (once) and py
[ -x "$build/fedllm" ] || { cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release && cmake --build "$build" -j 2; }
fedllm=$root/$build/fedllm

mkdir -p "$work/text" "$work/results"
scripts/fetch-text --max-train 60000 --max-eval 16000 fortunes "$work/text"
rm -rf "$work/init"
"$fedllm" init-model --arch gpt2 --preset small --tokenizer tests/fixtures/tokenizers/gpt2 --seed "$seed" \
  --out "$work/init" > /dev/null
"$py" tools/offsite_fate.py prepare --init "$work/init" --text "$work/text" --out "$work" \
  --layers "$layers" --rows $((steps * batch)) --seq "$seq" --seed "$seed"
if [ "$base_steps" -gt 0 ]; then
  scripts/fetch-text --max-train 2000000 --max-eval 50000 novels "$work/text"
  rm -rf "$work/base-train"
  "$fedllm" train --model "$work/model" --data "$work/text/novels.train.jsonl" \
    --eval "$work/text/novels.eval.jsonl" --steps "$base_steps" --batch 8 --seq "$seq" --lr 2e-3 \
    --schedule cosine --warmup 20 --clip 1.0 --seed 1 --threads "$(nproc)" --log-every 50 \
    --out "$work/base-train" | tail -3
  for f in config.json model.safetensors; do cp "$work/base-train/$f" "$work/model/$f"; done
fi

res=$work/results
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "fedllm: $(git rev-parse --short HEAD)"
  echo "python: $("$py" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)')"
  "$venv/bin/pip" list 2>/dev/null | grep -E "^(pyfate|fate_llm|fate-llm) " | tr -s ' ' || true
  echo "base: $([ "$base_steps" -gt 0 ] && echo "fedllm train, $base_steps steps on novels" || echo "random init, seed $seed")"
  echo "job: layers $layers, bottom $bottom, emulator $emulator, top $top, steps $steps, batch $batch, seq $seq, lr $lr, train seed $train_seed"
} > "$res/machine.txt"
cat "$res/machine.txt"

job=(--dir "$work" --emulator "$emulator" --top "$top" --bottom "$bottom" --steps "$steps" --batch "$batch"
     --seq "$seq" --lr "$lr" --seed "$train_seed")
for t in 1 2; do
  "$py" tools/offsite_fate.py fate "${job[@]}" --threads $t --tag "t$t" --out "$res/fate-t$t.json" \
    > "$res/fate-t$t.log" 2>&1 || { tail -40 "$res/fate-t$t.log"; exit 1; }
  tail -1 "$res/fate-t$t.log"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$res/machine.txt"
# The losses are of the 1-thread run's models; the 2-thread run's are evaluated beside them.
"$py" tools/offsite_fate.py eval --dir "$work" --seq "$seq" --fedllm "$fedllm" --out "$res/eval.json" \
  full="$work/model" submodel="$work/fate-t1/submodel" plugged="$work/fate-t1/plugged" \
  submodel_t2="$work/fate-t2/submodel" plugged_t2="$work/fate-t2/plugged"
"$py" tools/offsite_fate.py report --prepare "$work/prepare.json" --eval "$res/eval.json" \
  --machine "$res/machine.txt" --out "$res/fate.json" "$res/fate-t1.json" "$res/fate-t2.json" | tee "$res/report.md"
