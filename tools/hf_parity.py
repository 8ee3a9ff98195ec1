"""Writes the Hugging Face parity fixtures tests/fixtures/hf/{gpt2,llama,qwen2,mistral}/, which
tests/test_hf_parity.c checks without Python.

Each family folder holds what the real libraries wrote, untouched apart from peft's README.md:
  model/             transformers' save_pretrained of a tiny random model (config.json,
                     generation_config.json, model.safetensors or shards + index), plus the
                     byte-level tokenizer.json that `fedllm init-model` writes (for fedllm train)
  peft-adapter/      peft's save_pretrained of a LoRA adapter with random nonzero lora_B and a
                     rank_pattern entry (GPT-2 with fan_in_fan_out on Conv1D)
  fedllm-adapter/    the adapter `fedllm train --lora` wrote after a few steps on
                     tests/fixtures/psalm23.jsonl (adapter_config.json, adapter_model.safetensors)
  fedllm-module-adapter/  GPT-2 only: the same with HF module names as targets (c_attn, c_proj,
                     c_fc), which fedllm trains as PEFT does: one adapter on the fused c_attn
  expect.safetensors input_ids (I32, (B, T)) and, all F32 (B, T, V) computed by transformers in
                     float32 from the files as saved: logits (the base model), peft_logits (peft's
                     adapter, loaded back by PeftModel.from_pretrained) and fedllm_adapter_logits
                     (fedllm's adapter, loaded by peft); GPT-2 also fedllm_module_adapter_logits
                     and peft_module_trainable_params (I32 (1,): the trainable parameter count of
                     peft's get_peft_model with the same LoraConfig, which fedllm's must equal)

What the families exercise between them: GPT-2 (tied head, Conv1D, shards), LLaMA (grouped-query
attention, untied head), Qwen2 (q/k/v biases, tied head, weights saved as BF16), Mistral (one
key/value head, untied head, sliding_window, shards of F16 weights). The references always come
from reloading the saved directory in float32, so rounded BF16/F16 weights are what both sides
compute with.

usage: HF_HUB_OFFLINE=1 .venv-tools/bin/python tools/hf_parity.py --fedllm build/fedllm
       [--out tests/fixtures/hf] [FAMILY ...]
Deterministic: rerunning writes the same bytes (torch.manual_seed per family, PYTHONHASHSEED=0 for
peft's target_modules order, fedllm train on one thread with a fixed seed). Nothing is downloaded;
configs are built in code.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

# peft saves target_modules from a set, whose order follows string hashing: fix the hash seed so
# that adapter_config.json comes out the same on every run.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable] + sys.argv,
              dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1"))
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)
from transformers.utils import logging as hf_logging  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, T = 2, 12
WEIGHT_STD = 0.08  # larger than HF's 0.02 init so that every weight visibly moves the logits
TRAIN_DATA = os.path.join(ROOT, "tests", "fixtures", "psalm23.jsonl")


def gpt2_config():
    return GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                      bos_token_id=256, eos_token_id=256)  # n_inner unset: 4 * n_embd


def llama_config():
    return LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=None,
                       eos_token_id=256)


def qwen2_config():
    return Qwen2Config(vocab_size=288, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=True, bos_token_id=None, eos_token_id=256)


def mistral_config():
    return MistralConfig(vocab_size=264, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                         sliding_window=32, tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=256)


# dtype: what save_pretrained writes; shard: its max_shard_size (None: one file);
# peft: LoraConfig arguments; fedllm: `fedllm train` LoRA arguments.
FAMILIES = {
    "gpt2": dict(
        config=gpt2_config, seed=11, dtype=torch.float32, shard="60KB",
        peft=dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                  rank_pattern={"c_attn": 6}, fan_in_fan_out=True),
        fedllm=["--lora", "4", "--lora-targets",
                "attn_q,attn_k,attn_v,attn_o,mlp_up,mlp_down"],
        # module names mean those modules, as in peft: this is LoraConfig(r=4, lora_alpha=8,
        # target_modules=["c_attn", "c_proj", "c_fc"]) trained by fedllm
        fedllm_module=["--lora", "4", "--lora-targets", "c_attn,c_proj,c_fc"],
        peft_module=dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                         fan_in_fan_out=True)),
    "llama": dict(
        config=llama_config, seed=12, dtype=torch.float32, shard=None,
        peft=dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                      "down_proj"],
                  rank_pattern={"k_proj": 2}, alpha_pattern={"o_proj": 4}),
        fedllm=["--lora", "4", "--lora-targets",
                "attn_q,attn_k,attn_v,attn_o,mlp_gate,mlp_up,mlp_down"]),
    "qwen2": dict(
        config=qwen2_config, seed=13, dtype=torch.bfloat16, shard=None,
        peft=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj"],
                  rank_pattern={"v_proj": 8}, use_rslora=True),
        fedllm=["--lora", "4", "--lora-targets", "attn_q,attn_v",
                "--lora-train-base", "norms,biases"]),
    "mistral": dict(
        config=mistral_config, seed=14, dtype=torch.float16, shard="40KB",
        peft=dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"],
                  rank_pattern={"down_proj": 3, "layers.1.self_attn.o_proj": 6}),
        fedllm=["--lora", "3", "--lora-alpha", "9", "--lora-targets", "q_proj,v_proj,down_proj"]),
}

TRAIN_ARGS = ["--data", TRAIN_DATA, "--steps", "8", "--batch", "2", "--seq", "16",
              "--lr", "1e-2", "--schedule", "constant", "--seed", "1", "--threads", "1",
              "--log-every", "8"]


def randomize(model, std):
    """Every parameter random: matrices N(0, std), biases N(0, std), norm scales 1 + N(0, std),
    so that no weight (bias, norm, head) can be skipped without moving the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name or ".ln_" in name
            p.normal_(0, std)
            if is_norm and name.endswith("weight"):
                p.add_(1.0)


def load_base(path):
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    model.eval()
    return model


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids.long()).logits.float().contiguous()


def peft_logits(model_dir, adapter_dir, ids):
    """peft's logits of the base in model_dir with the adapter in adapter_dir, as a user gets them."""
    model = PeftModel.from_pretrained(load_base(model_dir), adapter_dir)
    model.eval()
    return logits_of(model, ids), sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))


def write_model(spec, tokenizer_json):
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_config(spec["config"](), torch_dtype=torch.float32)
    randomize(model, WEIGHT_STD)
    shutil.rmtree("model", ignore_errors=True)
    kwargs = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.to(spec["dtype"]).save_pretrained("model", **kwargs)
    shutil.copyfile(tokenizer_json, os.path.join("model", "tokenizer.json"))


def write_peft_adapter(spec):
    torch.manual_seed(spec["seed"] + 100)
    model = get_peft_model(load_base("model"), LoraConfig(bias="none", **spec["peft"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    shutil.rmtree("peft-adapter", ignore_errors=True)
    model.save_pretrained("peft-adapter")
    os.remove(os.path.join("peft-adapter", "README.md"))


def write_fedllm_adapter(args, fedllm, out="fedllm-adapter"):
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([fedllm, "train", "--model", "model", "--out", out] + TRAIN_ARGS + args,
                   check=True, env=env)
    os.remove(os.path.join(out, "metrics.jsonl"))  # timings differ between runs


def peft_trainable_params(lora_args):
    """What peft trains for this LoraConfig on the saved base: its trainable parameter count."""
    model = get_peft_model(load_base("model"), LoraConfig(bias="none", **lora_args))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def write_family(fam, out, fedllm, tokenizer_json):
    spec = FAMILIES[fam]
    folder = os.path.join(out, fam)
    os.makedirs(folder, exist_ok=True)
    os.chdir(folder)  # relative paths, so that adapter_config.json names the base "model"
    write_model(spec, tokenizer_json)
    base = load_base("model")
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(spec["seed"]))
    ids = ids.to(torch.int32)
    ref = logits_of(base, ids)
    write_peft_adapter(spec)
    peft_ref, n_peft = peft_logits("model", "peft-adapter", ids)
    write_fedllm_adapter(spec["fedllm"], fedllm)
    fedllm_ref, n_fedllm = peft_logits("model", "fedllm-adapter", ids)
    tensors = {"input_ids": ids, "logits": ref, "peft_logits": peft_ref,
               "fedllm_adapter_logits": fedllm_ref}
    if "fedllm_module" in spec:
        write_fedllm_adapter(spec["fedllm_module"], fedllm, "fedllm-module-adapter")
        tensors["fedllm_module_adapter_logits"], n_module = peft_logits(
            "model", "fedllm-module-adapter", ids)
        count = peft_trainable_params(spec["peft_module"])
        tensors["peft_module_trainable_params"] = torch.tensor([count], dtype=torch.int32)
        print(f"{fam}: fedllm's module-named adapter: {n_module} peft modules; peft trains "
              f"{count} values for {spec['peft_module']['target_modules']}")
    save_file(tensors, "expect.safetensors")
    moved = lambda x: float((x - ref).abs().max() / ref.abs().max())  # noqa: E731
    print(f"{fam}: max |logit| {float(ref.abs().max()):.3g}; peft adapter ({n_peft} modules) moves "
          f"the logits by {moved(peft_ref):.3g}, fedllm's ({n_fedllm} modules) by "
          f"{moved(fedllm_ref):.3g} (relative)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fedllm", default=os.path.join(ROOT, "build", "fedllm"),
                        help="the fedllm binary (trains the fedllm adapters)")
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "hf"))
    parser.add_argument("families", nargs="*", default=list(FAMILIES))
    args = parser.parse_args()
    fedllm, out = os.path.abspath(args.fedllm), os.path.abspath(args.out)
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Could not find a config file")  # peft, offline
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([fedllm, "init-model", "--arch", "llama", "--preset", "tiny", "--out",
                        os.path.join(tmp, "init")], check=True, stdout=subprocess.DEVNULL)
        tokenizer_json = os.path.join(tmp, "init", "tokenizer.json")
        for fam in args.families:
            if fam not in FAMILIES:
                sys.exit(f"unknown family {fam} (expected {', '.join(FAMILIES)})")
            write_family(fam, out, fedllm, tokenizer_json)


if __name__ == "__main__":
    main()
