#!/usr/bin/env bash
# cli_hub_eos.sh — a GPT-2 folder laid out as the hub has it: tokenizer_config.json is only
# {"model_max_length": 1024}, so the end-of-text token comes from the tokenizer class's default
# (<|endoftext|>, as transformers' GPT2Tokenizer has it) and config.json's eos_token_id.
# train and eval must run, and generate must stop at the end-of-text token: a model trained on
# "ab<|endoftext|>" repeated answers "ab" with end-of-text at once. Without the tokenizer's EOS,
# generate still stops at config.json's eos_token_id; a generation_config.json eos_token_id takes
# its place (as in transformers).
# usage: cli_hub_eos.sh FEDLLM_BINARY SCRATCH_DIR
set -u
bin=$1
dir=$2
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*" >&2; }

"$bin" init-model --arch gpt2 --preset tiny --out m >/dev/null || bad "init-model"
echo '{"model_max_length": 1024}' >m/tokenizer_config.json
for i in $(seq 1 30); do echo '{"text": "ab"}'; done >ab.jsonl

if "$bin" train --model m --data ab.jsonl --steps 60 --batch 4 --seq 32 --lr 3e-3 --seed 1 \
     --threads 1 --out t >/dev/null 2>train.log && [ -s t/model.safetensors ]; then ok
else bad "train with the hub's tokenizer_config.json: $(tail -1 train.log)"; fi
echo '{"model_max_length": 1024}' >t/tokenizer_config.json
if "$bin" eval --model t --data ab.jsonl --seq 32 >eval.json 2>eval.log && grep -q '"loss"' eval.json
then ok; else bad "eval: $(tail -1 eval.log)"; fi

# generate: stdout is the continuation (empty: it stopped at once), stderr counts the steps
gen() { "$bin" generate --model t --prompt ab --temperature 0 --max-tokens 30 >gen.out 2>gen.err; }
if gen && [ "$(cat gen.out)" = "" ] && grep -q "1 steps" gen.err; then ok
else bad "generate did not stop at <|endoftext|>: '$(head -c 80 gen.out)' $(cat gen.err)"; fi

echo '{"model_max_length": 1024, "eos_token": null}' >t/tokenizer_config.json
if gen && [ "$(cat gen.out)" = "" ] && grep -q "1 steps" gen.err; then ok
else bad "generate did not stop at config.json's eos_token_id: $(cat gen.err)"; fi

echo '{"eos_token_id": [5]}' >t/generation_config.json
if gen && grep -q "30 steps" gen.err && grep -q "^abab" gen.out; then ok
else bad "generation_config.json's eos_token_id [5] should replace config.json's: $(cat gen.err)"; fi
echo '{"eos_token_id": "x"}' >t/generation_config.json
if ! gen && grep -q "generation_config.json: eos_token_id: expected an integer" gen.err; then ok
else bad "a bad generation_config.json eos_token_id: $(cat gen.err)"; fi

echo "cli_hub_eos: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
