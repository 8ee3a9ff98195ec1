# fate_venv.sh — sourced by tools/fedkseed_fate.sh and tools/offsite_fate.sh: makes (once) the venv
# $venv holding FATE-LLM 2.2.0 for the CPU and sets py to its python. FATE-LLM's own requirement
# list pulls deepspeed (an sdist that needs CUDA to build), fastchat and more that neither tool
# imports: FATE (pyfate) with constraints, then fate_llm alone.
py=$venv/bin/python
if ! "$py" -c "import fate_llm.algo.offsite_tuning.offsite_tuning, fate_llm.algo.fedkseed.fedkseed, psutil" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -U pip setuptools wheel
  constraints=$(mktemp)
  printf '%s\n' torch==2.3.1 transformers==4.37.2 accelerate==0.27.2 peft==0.8.2 \
    datasets==2.18.0 'numpy<2' 'pyarrow<21' 'pandas<3' > "$constraints"
  # PyPI's only Linux torch 2.3.1 wheel is the CUDA build: it needs the nvidia-* wheels to import
  # (about 2.5 GB) and runs on the CPU.
  "$venv/bin/pip" install -q -c "$constraints" torch==2.3.1
  "$venv/bin/pip" install -q -c "$constraints" pyfate==2.2.0
  "$venv/bin/pip" install -q --no-deps fate_llm==2.2.0
  "$venv/bin/pip" install -q -c "$constraints" peft==0.8.2 datasets==2.18.0 transformers==4.37.2 \
    tokenizers psutil safetensors
  rm -f "$constraints"
fi
