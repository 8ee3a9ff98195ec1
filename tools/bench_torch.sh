#!/bin/sh
# Runs tools/bench_torch.py with PyTorch at its best on this machine: Debian's python3-torch on
# OpenBLAS (OpenMP build) instead of whatever libblas.so.3 the alternatives system points at, with
# 2 OpenMP threads. Arguments are passed on, e.g.
#   tools/bench_torch.sh --models gpt2-124m --modes lora,full --T 256 --json bench_torch.json
# PYTHON=... selects another interpreter (e.g. a venv with a newer torch from PyPI, which carries
# its own MKL and ignores LD_LIBRARY_PATH's BLAS).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
blas_dir=/usr/lib/x86_64-linux-gnu/openblas-openmp
if [ -d "$blas_dir" ]; then
    LD_LIBRARY_PATH="$blas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
else
    echo "bench_torch.sh: $blas_dir missing (apt-get install libopenblas0-openmp)" >&2
fi
OMP_NUM_THREADS=2
export OMP_NUM_THREADS
# Tuning overrides meant for other programs would skew OpenBLAS's kernel choice.
if [ -n "${OPENBLAS_CORETYPE+x}" ]; then echo "bench_torch.sh: unsetting OPENBLAS_CORETYPE" >&2; unset OPENBLAS_CORETYPE; fi
if [ -n "${OPENBLAS_L2_SIZE+x}" ]; then echo "bench_torch.sh: unsetting OPENBLAS_L2_SIZE" >&2; unset OPENBLAS_L2_SIZE; fi
exec "${PYTHON:-/usr/bin/python3}" "$here/bench_torch.py" --threads 2 "$@"
