#!/usr/bin/env bash
# cli_train.sh — the fedllm command as a user runs it: init-model and train (full and LoRA, text
# and prompt/response), and bad input: each case must exit 2 with one clear line on stderr and
# leave no output directory behind.
# usage: cli_train.sh FEDLLM_BINARY SCRATCH_DIR
set -u
bin=$1
dir=$2
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*" >&2; }

# expect_error NAME EXPECTED_SUBSTRING OUTDIR -- command...
expect_error() {
  local name=$1 want=$2 out=$3
  shift 4
  "$@" >stdout.txt 2>stderr.txt
  local rc=$?
  local lines
  lines=$(wc -l <stderr.txt)
  if [ "$rc" -ne 2 ]; then bad "$name: exit $rc, expected 2 ($(head -c 300 stderr.txt))"; return; fi
  if [ "$lines" -ne 1 ]; then bad "$name: $lines lines on stderr, expected 1: $(cat stderr.txt)"; return; fi
  if ! grep -q -- "$want" stderr.txt; then bad "$name: stderr lacks '$want': $(cat stderr.txt)"; return; fi
  if [ -n "$out" ] && ls -d "$out"* >/dev/null 2>&1; then bad "$name: left $out behind"; return; fi
  ok
}

for arch in gpt2 llama qwen2; do
  if "$bin" init-model --arch $arch --preset tiny --out m-$arch >/dev/null &&
     [ -s m-$arch/config.json ] && [ -s m-$arch/model.safetensors ] && [ -s m-$arch/tokenizer.json ] &&
     grep -q "\"model_type\":[[:space:]]*\"$arch\"" m-$arch/config.json; then ok; else bad "init-model $arch"; fi
done

# Real text: a few lines of the committed paragraph, repeated into a small corpus.
text=$(sed -e 's/.*"text": *"\([^"]*\)".*/\1/' "$OLDPWD/tests/fixtures/psalm23.jsonl" 2>/dev/null)
[ -n "$text" ] || text="He maketh me to lie down in green pastures: he leadeth me beside the still waters."
for i in $(seq 1 20); do printf '{"text": "%s %d"}\n' "$text" "$i"; done >text.jsonl
for i in $(seq 1 20); do printf '{"prompt": "Line %d of the psalm:", "response": " %s"}\n' "$i" "${text:0:60}"; done >pr.jsonl

for arch in gpt2 llama qwen2; do
  if "$bin" train --model m-$arch --data text.jsonl --steps 6 --batch 2 --seq 64 --lr 1e-3 \
       --out full-$arch >/dev/null 2>train.log &&
     [ -s full-$arch/model.safetensors ] && [ -s full-$arch/config.json ] &&
     [ "$(grep -c '"loss"' full-$arch/metrics.jsonl)" -ge 2 ]; then ok; else bad "train full $arch: $(tail -2 train.log)"; fi
  if "$bin" train --model m-$arch --data pr.jsonl --lora 4 --lora-targets attn_q,attn_v,mlp_down \
       --steps 4 --batch 2 --seq 96 --out lora-$arch >/dev/null 2>train.log &&
     [ -s lora-$arch/adapter_model.safetensors ] && grep -q '"peft_type"' lora-$arch/adapter_config.json &&
     grep -q '"r":[[:space:]]*4' lora-$arch/adapter_config.json; then ok; else bad "train lora $arch: $(tail -2 train.log)"; fi
done
# LoRA with the norm layers trained too: PEFT's modules_to_save in the adapter.
if "$bin" train --model m-llama --data text.jsonl --lora 4 --lora-train-base norms --steps 2 --batch 2 \
     --seq 32 --out loranorm >/dev/null 2>&1 && grep -q '"modules_to_save"' loranorm/adapter_config.json; then ok
else bad "--lora-train-base norms"; fi
# Only some blocks train (offsite-tuning's adapter blocks): the whole model comes out, the log says so.
if "$bin" train --model m-llama --data text.jsonl --train-layers 1 --steps 2 --batch 2 --seq 32 \
     --out blocks >/dev/null 2>blocks.log && [ -s blocks/model.safetensors ] &&
   grep -q "chosen blocks" blocks.log; then ok
else bad "--train-layers: $(tail -2 blocks.log)"; fi
# LoRA on chosen layers: PEFT's layers_to_transform in the adapter.
if "$bin" train --model m-gpt2 --data text.jsonl --lora 4 --lora-layers 1 --steps 2 --batch 2 --seq 32 \
     --out loralayers >/dev/null 2>&1 &&
   tr -d ' \t\n' <loralayers/adapter_config.json | grep -q '"layers_to_transform":\[1\]'; then ok
else bad "--lora-layers: $(cat loralayers/adapter_config.json)"; fi
# The adapter names its base as given, tidied: "./x/../m-llama" is "m-llama".
mkdir -p x
if "$bin" train --model ./x/../m-llama --data text.jsonl --lora 4 --steps 1 --batch 2 --seq 32 \
     --out loratidy >/dev/null 2>&1 &&
   grep -q '"base_model_name_or_path":[[:space:]]*"m-llama"' loratidy/adapter_config.json; then ok
else bad "base_model_name_or_path not tidied: $(grep base_model loratidy/adapter_config.json)"; fi
# A trained model directory trains again (it is a complete HF model dir).
if "$bin" train --model full-llama --data text.jsonl --steps 2 --batch 2 --seq 32 --out again >/dev/null 2>&1 &&
   [ -s again/model.safetensors ]; then ok; else bad "retrain from a trained model"; fi
# Loss actually falls with more steps on the same data.
"$bin" train --model m-gpt2 --data text.jsonl --steps 40 --batch 4 --seq 64 --lr 3e-3 --log-every 1 --out fall >/dev/null 2>&1
first=$(head -1 fall/metrics.jsonl | sed 's/.*"loss": \([0-9.]*\).*/\1/')
last=$(tail -1 fall/metrics.jsonl | sed 's/.*"loss": \([0-9.]*\).*/\1/')
if awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1.0) }'; then ok; else bad "loss did not fall: $first -> $last"; fi

# --epochs with --grad-accum: steps = ceil(rows / (batch * accum)); the last line says so.
"$bin" train --model m-gpt2 --data text.jsonl --epochs 2 --batch 4 --grad-accum 2 --seq 64 \
  --log-every 1 --out epochs >/dev/null 2>epochs.log
rows=$(sed -n 's/.* on \([0-9]*\) rows .*/\1/p' epochs.log)
steps=$(grep -c '"loss"' epochs/metrics.jsonl)
last_epoch=$(tail -1 epochs/metrics.jsonl | sed 's/.*"epoch": \([0-9]*\).*/\1/')
if [ -n "$rows" ] && [ "$steps" -eq $((2 * ((rows + 7) / 8))) ] && [ "$last_epoch" = 1 ]; then ok
else bad "epochs: $steps steps for $rows rows, last epoch $last_epoch"; fi
# --eval reports held-out loss before and after.
"$bin" train --model m-llama --data text.jsonl --eval text.jsonl --steps 3 --batch 2 --seq 32 --out evalrun >/dev/null 2>&1
if [ "$(grep -c '"eval_loss"' evalrun/metrics.jsonl)" = 2 ]; then ok; else bad "--eval did not record before and after"; fi

# generate: the same seed gives the same text; a trained model continues its training text.
g1=$("$bin" generate --model full-gpt2 --prompt "The LORD is" --max-tokens 24 --seed 5 2>/dev/null)
g2=$("$bin" generate --model full-gpt2 --prompt "The LORD is" --max-tokens 24 --seed 5 2>/dev/null)
if [ -n "$g1" ] && [ "$g1" = "$g2" ]; then ok; else bad "generate is not reproducible: '$g1' vs '$g2'"; fi
"$bin" train --model m-llama --data text.jsonl --steps 300 --batch 8 --seq 64 --lr 5e-3 --out gen-model >/dev/null 2>&1
greedy=$("$bin" generate --model gen-model --prompt "He maketh me to lie down in" --max-tokens 12 --temperature 0 2>/dev/null)
case "$greedy" in *green*|*pastures*|*past*) ok ;; *) bad "greedy continuation of the trained text: '$greedy'" ;; esac

# generation_config.json sets the defaults: do_sample false is greedy; a malformed one is an error.
cp -r gen-model gen-cfg && printf '{"do_sample": false, "max_new_tokens": 12}\n' >gen-cfg/generation_config.json
from_cfg=$("$bin" generate --model gen-cfg --prompt "He maketh me to lie down in" --seed 9 2>/dev/null)
if [ "$from_cfg" = "$greedy" ]; then ok; else bad "generation_config.json defaults: '$from_cfg' vs '$greedy'"; fi
printf '{"top_p": "high"}' >gen-cfg/generation_config.json
expect_error "bad generation_config" "generation_config.json: top_p" "" -- "$bin" generate --model gen-cfg --prompt hi
# An adapter generates like the merged model it folds into (greedy: the same text).
with_adapter=$("$bin" generate --model m-llama --adapter lora-llama --prompt "He maketh" --max-tokens 16 --temperature 0 2>/dev/null)
"$bin" merge --model m-llama --adapter lora-llama --out merged >/dev/null 2>&1
from_merged=$("$bin" generate --model merged --prompt "He maketh" --max-tokens 16 --temperature 0 2>/dev/null)
if [ -s merged/model.safetensors ] && [ -n "$with_adapter" ] && [ "$with_adapter" = "$from_merged" ]; then ok
else bad "adapter vs merged: '$with_adapter' vs '$from_merged'"; fi

# ---- bad input ----
expect_error "unknown arch" "expected gpt2" newm -- "$bin" init-model --arch bert --preset tiny --out newm
expect_error "unknown preset" "preset" newm -- "$bin" init-model --arch gpt2 --preset huge --out newm
expect_error "unknown option" "unknown option" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --out out1 --bogus 1
expect_error "missing model" "config.json" out1 -- "$bin" train --model nowhere --data text.jsonl --out out1
expect_error "missing data" "nothere.jsonl" out1 -- "$bin" train --model m-gpt2 --data nothere.jsonl --out out1

cp -r m-gpt2 trunc && head -c 1000 m-gpt2/model.safetensors >trunc/model.safetensors
expect_error "truncated safetensors" "model.safetensors" out1 -- "$bin" train --model trunc --data text.jsonl --out out1
cp -r m-gpt2 garbage && printf 'not a safetensors file at all' >garbage/model.safetensors
expect_error "corrupt safetensors" "model.safetensors" out1 -- "$bin" train --model garbage --data text.jsonl --out out1
cp -r m-llama shape && sed -i 's/"intermediate_size":[[:space:]]*[0-9]*/"intermediate_size": 100/' shape/config.json
expect_error "wrong tensor shape" "shape" out1 -- "$bin" train --model shape --data text.jsonl --out out1
cp -r m-gpt2 mtype && sed -i 's/"model_type":[[:space:]]*"gpt2"/"model_type": "bert"/' mtype/config.json
expect_error "unknown model_type" "model_type" out1 -- "$bin" train --model mtype --data text.jsonl --out out1
printf '{"text": "fine"}\nthis is not json\n' >notjson.jsonl
expect_error "line not JSON" "notjson.jsonl:2" out1 -- "$bin" train --model m-gpt2 --data notjson.jsonl --out out1
printf '{"text": "fine"}\n{"body": "no text field"}\n' >nofield.jsonl
expect_error "missing field" "nofield.jsonl:2" out1 -- "$bin" train --model m-gpt2 --data nofield.jsonl --out out1
expect_error "seq over context" "context" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --seq 100000 --out out1
# A record longer than --seq + 1 is truncated and the log counts it; --no-truncate refuses it.
{ printf '{"prompt": "%s", "response": "%s"}\n' "$text" "$text"; head -3 pr.jsonl; } >long.jsonl
if "$bin" train --model m-gpt2 --data long.jsonl --seq 32 --steps 1 --batch 2 --out trunc-ok \
     >/dev/null 2>trunc.log && [ -s trunc-ok/model.safetensors ] &&
   grep -q "long.jsonl: 4 of 4 records are longer than --seq + 1 = 33 tokens and were truncated" trunc.log
then ok; else bad "long records truncated: $(cat trunc.log)"; fi
expect_error "record over seq, --no-truncate" "long.jsonl:1: record is" out1 -- "$bin" train --model m-gpt2 --data long.jsonl --seq 32 --no-truncate --out out1
expect_error "bad lora target" "mlp_gate" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --lora 4 --lora-targets mlp_gate --out out1
expect_error "bad train-base" "lora-train-base" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --lora 4 --lora-train-base heads --out out1
expect_error "lora option without --lora" "needs --lora" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --lora-alpha 8 --out out1
expect_error "train-layers outside the model" "layer 9: the model has layers 0..1" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --train-layers 0,9 --out out1
expect_error "train-layers with --lora" "--lora-layers" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --lora 4 --train-layers 1 --out out1
expect_error "lora-layers without --lora" "needs --lora" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --lora-layers 1 --out out1
expect_error "bad lora-layers" "--lora-layers: layer list '1,1': layer 1 twice" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --lora 4 --lora-layers 1,1 --out out1
cp -r m-gpt2 noweights && rm noweights/model.safetensors
expect_error "missing model.safetensors" "model.safetensors" out1 -- "$bin" train --model noweights --data text.jsonl --out out1

# --out never destroys what it should not: the model, the data, a directory fedllm did not write.
expect_error "--out is the model" "would replace the input" "" -- "$bin" train --model m-llama --data text.jsonl --lora 4 --out m-llama
if [ -s m-llama/model.safetensors ]; then ok; else bad "--out = --model damaged the model"; fi
mkdir -p inputs && cp text.jsonl inputs/ && touch inputs/metrics.jsonl # looks fedllm-made
expect_error "--out holds the data" "would replace the input" "" -- "$bin" train --model m-gpt2 --data inputs/text.jsonl --out inputs
if [ -s inputs/text.jsonl ]; then ok; else bad "--out holding the data removed it"; fi
mkdir -p precious && echo keep >precious/notes.txt
expect_error "--out not fedllm's" "not a fedllm output" "" -- "$bin" train --model m-gpt2 --data text.jsonl --out precious
if grep -q keep precious/notes.txt; then ok; else bad "a foreign --out directory was touched"; fi
expect_error "--out ." "expected a new" "" -- "$bin" init-model --arch gpt2 --preset tiny --out .
# --out under folders that do not exist yet: they are made, for init-model as for train.
if "$bin" init-model --arch llama --preset tiny --out new/parents/m >/dev/null 2>&1 &&
   [ -s new/parents/m/model.safetensors ] &&
   "$bin" train --model new/parents/m --data text.jsonl --steps 1 --batch 2 --seq 32 \
     --out new/runs/t1 >/dev/null 2>&1 && [ -s new/runs/t1/model.safetensors ]; then ok
else bad "--out with missing parents"; fi
touch plainfile
expect_error "--out under a file" "plainfile" "" -- "$bin" init-model --arch gpt2 --preset tiny --out plainfile/m
# A failed run leaves an earlier output as it was; a trailing slash is the same directory.
"$bin" train --model m-gpt2 --data text.jsonl --steps 1 --batch 2 --seq 32 --out keep/ >/dev/null 2>&1
before=$(md5sum keep/model.safetensors 2>/dev/null)
expect_error "failed run over an old output" "notjson.jsonl:2" "" -- "$bin" train --model m-gpt2 --data notjson.jsonl --out keep
if [ -n "$before" ] && [ "$before" = "$(md5sum keep/model.safetensors)" ] && ! ls -d keep.tmp* >/dev/null 2>&1; then ok
else bad "a failed run changed the earlier output"; fi
if "$bin" train --model m-gpt2 --data text.jsonl --steps 1 --batch 2 --seq 32 --out keep >/dev/null 2>&1 &&
   [ -s keep/model.safetensors ] && ! ls -d keep.old* >/dev/null 2>&1; then ok; else bad "rerun into a fedllm output"; fi
expect_error "generate without a model" "config.json" "" -- "$bin" generate --model nowhere --prompt hi
expect_error "generate bad option" "--top-p" "" -- "$bin" generate --model m-gpt2 --prompt hi --top-p 2
expect_error "adapter of another family" "does not have" "" -- "$bin" generate --model m-gpt2 --adapter lora-llama --prompt hi
expect_error "merge onto another family" "does not have" merged2 -- "$bin" merge --model m-gpt2 --adapter lora-llama --out merged2
expect_error "bad number" "--lr" out1 -- "$bin" train --model m-gpt2 --data text.jsonl --lr fast --out out1

echo "cli_train: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
