#!/usr/bin/env bash
# fedllm's offsite-tuning on the model and data tools/offsite_fate.sh made (run that first; it
# leaves them in WORK), with FATE-LLM's settings: one data owner (offsite.aggregate: false, as
# FATE-LLM's two-party run), adapters of 2 + 2 blocks trained whole, an emulator of EMULATOR
# middle blocks, STEPS steps of batch BATCH, seq SEQ, AdamW lr LR (weight decay 0, clip 1.0,
# constant schedule); then the three held-out losses with `fedllm eval` — the full model
# zero-shot, the emulator with the tuned adapters (the client's final eval), the full model with
# them plugged in — the bytes each way from the outboxes, and seconds per step from the client's
# metrics. Writes WORK/results/fedllm.json and prints a table.
# usage: tools/offsite_fedllm.sh   (after make build and tools/offsite_fate.sh; under a minute)
#   WORK (build/offsite-cmp), BUILD (build); EMULATOR, TOP, BOTTOM, STEPS, BATCH, SEQ, LR as
#   tools/offsite_fate.sh (defaults 4, 2, 2, 30, 4, 64, 1e-4); THREADS (1 and 2 are run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=${WORK:-build/offsite-cmp}
F=$root/${BUILD:-build}/fedllm
emulator=${EMULATOR:-4} top=${TOP:-2} bottom=${BOTTOM:-2}
steps=${STEPS:-30} batch=${BATCH:-4} seq=${SEQ:-64} lr=${LR:-1e-4}
[ -f "$work/model/config.json" ] && [ -f "$work/data/train.jsonl" ] ||
  { echo "offsite_fedllm: run tools/offsite_fate.sh first (no $work/model or $work/data)" >&2; exit 2; }
w=$(cd "$work" && pwd)
mkdir -p "$w/fedllm/keys" "$w/results"
for k in server alice; do [ -f "$w/fedllm/keys/$k.key" ] || "$F" keygen --out "$w/fedllm/keys/$k" >/dev/null; done
results=()
for threads in 1 2; do
  name=ot-t$threads
  cat >"$w/fedllm/$name.yaml" <<EOF
job: $name
algorithm: offsite_tuning
model: {path: ../model}
offsite: {adapter_bottom: $bottom, adapter_top: $top, emulator_layers: $emulator, aggregate: false}
train: {rounds: 1, local_steps: $steps, batch: $batch, seq: $seq, lr: $lr, clip: 1.0, seed: 42}
server: {address: "ipc://$w/fedllm/$name.ipc", key: keys/server}
clients:
  - {name: alice, key: keys/alice, train: ../data/train.jsonl, eval: ../data/eval.jsonl}
output: runs/$name
EOF
  rm -rf "$w/fedllm/runs/$name"
  OMP_NUM_THREADS=$threads "$F" run "$w/fedllm/$name.yaml" >"$w/fedllm/$name.out" 2>&1
  results+=("$w/fedllm/runs/$name")
done
run=${results[0]}
full=$("$F" eval --model "$w/model" --data "$w/data/eval.jsonl" --seq "$seq" | jq .loss)
plugged=$("$F" eval --model "$run/server/model" --data "$w/data/eval.jsonl" --seq "$seq" | jq .loss)
emulated=$(jq .clients.alice.final_eval_loss "$run/summary.json")
down=$(jq -s 'map(select(.peer == "alice" and .dtype == "MESSAGE")) | map(.bytes) | add' "$run/server/outbox.jsonl")
down_tensors=$(jq -s 'map(select(.peer == "alice" and .dtype != "MESSAGE" and .round == 1)) | map(.bytes) | add' "$run/server/outbox.jsonl")
up=$(jq -s 'map(select(.dtype == "MESSAGE")) | map(.bytes) | add' "$run/alice/outbox.jsonl")
up_tensors=$(jq -s 'map(select(.dtype != "MESSAGE")) | map(.bytes) | add' "$run/alice/outbox.jsonl")
full_bytes=$(stat -c %s "$w/model/model.safetensors")
sps() { jq -s 'map(select(.seconds_training != null)) | .[0] | .seconds_training / .steps' "$1/alice/metrics.jsonl"; }
s1=$(sps "${results[0]}") s2=$(sps "${results[1]}")
jq -n --argjson full "$full" --argjson emulated "$emulated" --argjson plugged "$plugged" \
  --argjson down "$down" --argjson down_tensors "$down_tensors" --argjson up "$up" \
  --argjson up_tensors "$up_tensors" --argjson full_bytes "$full_bytes" --argjson s1 "$s1" \
  --argjson s2 "$s2" '{eval_loss: {full_zero_shot: $full, emulator_adapters: $emulated,
  plugged: $plugged}, bytes: {down_messages: $down, down_round1_tensors: $down_tensors,
  up_messages: $up, up_tensors: $up_tensors, full_model_file: $full_bytes},
  seconds_per_step: {"1": $s1, "2": $s2}}' | tee "$w/results/fedllm.json"
