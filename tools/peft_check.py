"""Loads what tools/peft_check_driver.c wrote with transformers + peft and compares peft's logits
with fedllm's. Run by tools/peft_check.sh with a Python that has torch, transformers, peft and
safetensors (e.g. a venv: pip install torch transformers peft safetensors)."""
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel
for fam in sys.argv[1:]:
    ref = load_file(f"{fam}-logits.safetensors")
    base = AutoModelForCausalLM.from_pretrained(f"{fam}-base", torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, f"{fam}-adapter")
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ref["tokens"].long()).logits
    d = (out - ref["logits"]).abs().max() / ref["logits"].abs().max()
    print(fam, "peft vs fedllm logits, max rel diff", float(d), "lora modules", sum(1 for n, _ in model.named_modules() if n.endswith("lora_A")))
