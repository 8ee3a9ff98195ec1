#!/usr/bin/env bash
# The RoPE parity check, end to end: tools/rope_parity.py writes fresh fixtures (transformers 5
# saves tiny LLaMA / Qwen2 models with each rope type and computes the reference logits, losses,
# frequencies and generations), test_rope checks fedllm against those fresh files, and they are
# compared byte for byte with the committed tests/fixtures/rope (which ctest checks without Python).
# usage: tools/rope_parity.sh [--update]   (after make build)
#   PYTHON (default .venv-rope/bin/python, made here on first use with torch 2.15.0 and
#   transformers 5.25.0 from PyPI: transformers 5 is what writes the new rope_parameters layout,
#   so this is not the transformers 4.40 of .venv-tools);
#   BUILD (default build) is the build folder holding test_rope;
#   --update writes the fixtures into tests/fixtures/rope instead of a temporary folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${BUILD:-$root/build}" && pwd)
python=${PYTHON:-$root/.venv-rope/bin/python}
if [ -z "${PYTHON:-}" ] && [ ! -x "$python" ]; then
  python3 -m venv "$root/.venv-rope"
  "$python" -m pip install -q torch==2.15.0 transformers==5.25.0 safetensors
fi
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
if [ "${1:-}" = --update ]; then
  "$python" "$root/tools/rope_parity.py" --out "$root/tests/fixtures/rope"
  cd "$root" && "$build/test_rope"
  exit
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tests/fixtures"
"$python" "$root/tools/rope_parity.py" --out "$work/tests/fixtures/rope"
(cd "$work" && "$build/test_rope") # it reads tests/fixtures/rope under its working directory
if diff -r -q "$work/tests/fixtures/rope" "$root/tests/fixtures/rope"; then
  echo "the fresh fixtures are byte-identical to tests/fixtures/rope"
else
  echo "the fresh fixtures differ from tests/fixtures/rope (other library versions?):" \
    "tools/rope_parity.sh --update replaces them"
fi
