#!/usr/bin/env bash
# The whole Hugging Face parity check, end to end: tools/hf_parity.py writes fresh fixtures
# (transformers saves tiny GPT-2, LLaMA, Qwen2 and Mistral models, peft writes an adapter, fedllm
# trains one with `fedllm train --lora`, and transformers/peft compute the reference logits), then
# test_hf_parity checks fedllm's logits against those fresh files, and they are compared byte for
# byte with the committed tests/fixtures/hf (which ctest checks without Python).
# usage: tools/hf_parity.sh [--update]   (after make build; needs torch, transformers, peft)
#   PYTHON (default .venv-tools/bin/python) has torch, transformers 4.40 and peft 0.10;
#   BUILD (default build) is the build folder holding fedllm and test_hf_parity;
#   --update writes the fixtures into tests/fixtures/hf instead of a temporary folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${BUILD:-$root/build}" && pwd)
python=${PYTHON:-$root/.venv-tools/bin/python}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
if [ "${1:-}" = --update ]; then
  "$python" "$root/tools/hf_parity.py" --fedllm "$build/fedllm" --out "$root/tests/fixtures/hf"
  cd "$root" && "$build/test_hf_parity"
  exit
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tests/fixtures"
"$python" "$root/tools/hf_parity.py" --fedllm "$build/fedllm" --out "$work/tests/fixtures/hf"
(cd "$work" && "$build/test_hf_parity") # it reads tests/fixtures/hf under its working directory
if diff -r -q "$work/tests/fixtures/hf" "$root/tests/fixtures/hf"; then
  echo "the fresh fixtures are byte-identical to tests/fixtures/hf"
else
  echo "the fresh fixtures differ from tests/fixtures/hf (other library versions, or another" \
    "tokenizer.json from fedllm init-model?): tools/hf_parity.sh --update replaces them"
fi
