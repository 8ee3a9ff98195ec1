#!/usr/bin/env bash
# Checks that transformers and peft load fedllm's model directories and LoRA adapter directories
# and compute fedllm's logits, and that fedllm loads peft's adapters and computes peft's logits: GPT-2 with adapters on every role (its q/k/v merged into one c_attn
# adapter with rank_pattern), LLaMA on every role, Qwen2 on q and v with its norms and biases
# trained too (modules_to_save).
# Then the same with adapters on one layer only (layers_to_transform).
# usage: PYTHON=.venv-tools/bin/python [FIXTURE=tests/fixtures/peft_layers] tools/peft_check.sh
#   (after make build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fixture=${FIXTURE:+$(realpath -m "$FIXTURE")}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -std=gnu11 -O2 -fopenmp -I"$root/include" -I"$root/src" "$root/tools/peft_check_driver.c" \
  "$root/build/libfedllm_core.a" -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -ldnnl \
  -lcjson -lm -o "$work/driver"
cd "$work"
./driver gpt2 attn_q,attn_k,attn_v,attn_o,mlp_up,mlp_down
./driver llama attn_q,attn_k,attn_v,attn_o,mlp_gate,mlp_up,mlp_down
./driver qwen2 attn_q,attn_v norms
HF_HUB_OFFLINE=1 "${PYTHON:-python3}" "$root/tools/peft_check.py" gpt2 llama qwen2
# And the other way: adapters peft wrote (rank_pattern, GPT-2's fan_in_fan_out) load into fedllm.
HF_HUB_OFFLINE=1 "${PYTHON:-python3}" "$root/tools/peft_check.py" --write-peft gpt2 llama qwen2
for fam in gpt2 llama qwen2; do ./driver load $fam; done
# Adapters on some layers only (PEFT's layers_to_transform), both ways, in a folder of their own.
# FIXTURE=DIR also keeps peft's adapters and logits there (tests/fixtures/peft_layers, which
# test_layers loads onto the driver's base, rebuilt from its seeds).
mkdir layers && cd layers
../driver gpt2 attn_q,attn_v,mlp_down layers=1
../driver llama attn_q,attn_v,mlp_down layers=1
HF_HUB_OFFLINE=1 "${PYTHON:-python3}" "$root/tools/peft_check.py" gpt2 llama
HF_HUB_OFFLINE=1 "${PYTHON:-python3}" "$root/tools/peft_check.py" --write-peft --layers 1 gpt2 llama
for fam in gpt2 llama; do ../driver load $fam; done
if [ -n "$fixture" ]; then
  mkdir -p "$fixture"
  for fam in gpt2 llama; do
    mkdir -p "$fixture/$fam-adapter"
    cp $fam-peft-adapter/adapter_config.json $fam-peft-adapter/adapter_model.safetensors "$fixture/$fam-adapter/"
    cp $fam-peft-logits.safetensors "$fixture/$fam-logits.safetensors"
  done
fi
