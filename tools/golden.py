#!/usr/bin/python3
"""Writes the PyTorch reference fixtures tests/fixtures/golden/{gpt2,llama,qwen2}/.

Each folder holds
  config.json         the HF config of a tiny model (V 64, L 2, C 32)
  model.safetensors   its parameters (F32, HF names), random with a fixed seed
  golden.safetensors  input_ids, labels, logits, loss, grad.<name>, adamw_losses, and the LoRA
                      counterparts (lora.*, lora_logits, lora_loss, lora_grad.*, lora_adamw_losses),
                      hyper-parameters in __metadata__.

References are computed in float64 from the float32-rounded parameters and stored as float32.
Run with Debian's torch:  /usr/bin/python3 tools/golden.py [--out DIR]
Deterministic: the same bytes on every run.
"""

import argparse
import json
import math
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_models as tm  # noqa: E402

B, T = 2, 16
N_IGNORED = 5
STEPS, WARMUP = 20, 5
LR, LORA_LR = 1e-3, 1e-2
WEIGHT_DECAY = 0.1
BETAS, EPS = (0.9, 0.999), 1e-8
CLIP = 1.0
LORA_R, LORA_ALPHA = 4, 8
LORA_TARGETS = ("attn_q", "attn_v", "mlp_down")

CONFIGS = {
    "gpt2": {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 64,
        "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 32, "n_inner": None,
        "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
        "tie_word_embeddings": True,
    },
    "llama": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64,
        "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False,
    },
    "qwen2": {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 64,
        "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
        "tie_word_embeddings": True,
    },
}
SEEDS = {"gpt2": 1001, "llama": 1002, "qwen2": 1003}


# ----------------------------------------------------------------------------------------------
# safetensors, by hand (the safetensors package is not part of Debian's python3-torch)
# ----------------------------------------------------------------------------------------------

_DTYPES = {torch.float32: ("F32", "<f4"), torch.int32: ("I32", "<i4")}


def st_write(path, tensors, metadata=None):
    """tensors: {name: float32 or int32 tensor}. Names sorted; header padded with spaces to a
    multiple of 8 bytes (as the reference implementation does)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        dtype, np_dtype = _DTYPES[t.dtype]
        data = t.numpy().astype(np_dtype, copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def st_read(path):
    """{name: tensor}, metadata — for the self-check."""
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    np_types = {"F32": np.float32, "I32": np.int32}
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np_types[h["dtype"]]).reshape(h["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out, meta


# ----------------------------------------------------------------------------------------------
# Training references
# ----------------------------------------------------------------------------------------------

def lr_lambda(step):
    """transformers' get_cosine_schedule_with_warmup (num_cycles 0.5) for STEPS / WARMUP."""
    if step < WARMUP:
        return step / max(1, WARMUP)
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_losses(model, params, lr, weight_decay, input_ids, labels):
    """STEPS AdamW steps on one batch; the loss before each step."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = tm.loss_fn(model(input_ids), labels)
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
    return torch.tensor(losses, dtype=torch.float32)


def f32_round(t):
    return t.to(torch.float32).to(torch.float64)


def make_family(family, out_dir):
    cfg_dict = CONFIGS[family]
    cfg = tm.Config.from_dict(cfg_dict)
    gen = torch.Generator().manual_seed(SEEDS[family])

    params = {k: f32_round(v) for k, v in tm.init_params(cfg, gen, torch.float64).items()}
    input_ids = torch.randint(0, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
    labels = torch.randint(0, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
    ignored = torch.randperm(B * T, generator=gen)[:N_IGNORED]
    labels.view(-1)[ignored] = tm.IGNORE_INDEX

    lora = {}
    for name, shape in tm.lora_shapes(cfg, LORA_TARGETS, LORA_R).items():
        if name.endswith(".A"):
            bound = 1.0 / math.sqrt(shape[1])
            lora[name] = f32_round((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        else:
            lora[name] = f32_round(0.1 * torch.randn(shape, generator=gen, dtype=torch.float64))

    g = {"input_ids": input_ids.to(torch.int32), "labels": labels.to(torch.int32)}

    # Full model: logits, loss, gradients.
    model = tm.TorchModel(cfg, params)
    logits = model(input_ids)
    loss = tm.loss_fn(logits, labels)
    loss.backward()
    g["logits"] = logits.detach().float()
    g["loss"] = loss.detach().float().reshape(1)
    for name, p in model.p.items():
        g["grad." + name] = p.grad.float()

    model = tm.TorchModel(cfg, params)
    g["adamw_losses"] = train_losses(model, model.base_parameters(), LR, WEIGHT_DECAY,
                                     input_ids, labels)

    # LoRA: base frozen, gradients of the factors only.
    model = tm.TorchModel(cfg, params, lora, LORA_ALPHA, LORA_R)
    for p in model.base_parameters():
        p.requires_grad_(False)
    logits = model(input_ids)
    loss = tm.loss_fn(logits, labels)
    loss.backward()
    for name, t in lora.items():
        g[name] = t.float()
    g["lora_logits"] = logits.detach().float()
    g["lora_loss"] = loss.detach().float().reshape(1)
    for name, p in model.lora.items():
        g["lora_grad." + name[len("lora."):]] = p.grad.float()

    model = tm.TorchModel(cfg, params, lora, LORA_ALPHA, LORA_R)
    for p in model.base_parameters():
        p.requires_grad_(False)
    g["lora_adamw_losses"] = train_losses(model, model.lora_parameters(), LORA_LR, 0.0,
                                          input_ids, labels)

    meta = {
        "family": family, "B": B, "T": T, "seed": SEEDS[family], "reference": "float64",
        "lr": LR, "lora_lr": LORA_LR, "weight_decay": WEIGHT_DECAY, "lora_weight_decay": 0.0,
        "weight_decay_params": "ndim>=2", "betas": f"{BETAS[0]},{BETAS[1]}", "eps": EPS,
        "warmup": WARMUP, "steps": STEPS, "schedule": "cosine", "clip": CLIP,
        "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_targets": ",".join(LORA_TARGETS),
        "torch_version": torch.__version__,
    }

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
        f.write("\n")
    st_write(os.path.join(out_dir, "model.safetensors"),
             {k: v.float() for k, v in params.items()}, {"format": "pt"})
    st_write(os.path.join(out_dir, "golden.safetensors"), g, meta)
    return g


def self_check(family, out_dir, g):
    """Re-reads the files and recomputes the logits in float32 from them."""
    params, _ = st_read(os.path.join(out_dir, "model.safetensors"))
    gold, meta = st_read(os.path.join(out_dir, "golden.safetensors"))
    with open(os.path.join(out_dir, "config.json")) as f:
        cfg = json.load(f)
    model = tm.build_model(cfg, params)
    with torch.no_grad():
        logits = model(gold["input_ids"].long())
        loss = tm.loss_fn(logits, gold["labels"])
    err = (logits - gold["logits"]).abs().max().item()
    assert err < 1e-4, f"{family}: fp32 logits differ from the fp64 reference by {err}"
    assert abs(loss.item() - gold["loss"].item()) < 1e-5
    assert meta["lora_targets"] == ",".join(LORA_TARGETS)
    return err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "golden"))
    ap.add_argument("--families", default="gpt2,llama,qwen2")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # deterministic reduction order
    for family in args.families.split(","):
        d = os.path.join(args.out, family)
        g = make_family(family, d)
        err = self_check(family, d, g)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        al, ll = g["adamw_losses"], g["lora_adamw_losses"]
        print(f"{family:6s} loss {g['loss'].item():.5f}  adamw {al[0]:.4f} -> {al[-1]:.4f}  "
              f"lora_loss {g['lora_loss'].item():.5f}  lora_adamw {ll[0]:.4f} -> {ll[-1]:.4f}  "
              f"fp32 logit err {err:.1e}  {size / 1024:.0f} KB  {d}")


if __name__ == "__main__":
    main()
