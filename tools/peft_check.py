"""Loads what tools/peft_check_driver.c wrote with transformers + peft and compares peft's logits
with fedllm's. Run by tools/peft_check.sh with a Python that has torch, transformers, peft and
safetensors (e.g. a venv: pip install torch transformers peft safetensors)."""
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel
for fam in ([] if len(sys.argv) > 1 and sys.argv[1] == "--write-peft" else sys.argv[1:]):
    ref = load_file(f"{fam}-logits.safetensors")
    base = AutoModelForCausalLM.from_pretrained(f"{fam}-base", torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, f"{fam}-adapter")
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ref["tokens"].long()).logits
    d = (out - ref["logits"]).abs().max() / ref["logits"].abs().max()
    print(fam, "peft vs fedllm logits, max rel diff", float(d), "lora modules", sum(1 for n, _ in model.named_modules() if n.endswith("lora_A")))


def write_peft_adapters(fams, layers=None):
    """peft's own adapters (random nonzero factors) and their logits, for the driver's "load";
    with layers (a list of indices) only those layers are adapted (layers_to_transform)."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    targets = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "k_proj", "o_proj", "down_proj"],
               "qwen2": ["v_proj", "gate_proj"]}
    for fam in fams:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(f"{fam}-base", torch_dtype=torch.float32)
        cfg = LoraConfig(r=4, lora_alpha=12, target_modules=targets[fam], bias="none",
                         rank_pattern={targets[fam][0]: 6}, fan_in_fan_out=(fam == "gpt2"),
                         layers_to_transform=layers)
        model = get_peft_model(base, cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        model.save_pretrained(f"{fam}-peft-adapter")
        tokens = torch.arange(32, dtype=torch.int32).reshape(2, 16) * 7 % 200
        with torch.no_grad():
            logits = model(input_ids=tokens.long()).logits.float().contiguous()
        save_file({"tokens": tokens, "logits": logits}, f"{fam}-peft-logits.safetensors")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--write-peft":
    args = sys.argv[2:]
    layers = None
    if args[:1] == ["--layers"]:  # --write-peft --layers 1,3 FAMILY...
        layers, args = [int(x) for x in args[1].split(",")], args[2:]
    write_peft_adapters(args, layers)
