"""Hand-written PyTorch twins of the model families fedllm trains (GPT-2, LLaMA, Qwen2).

They follow Hugging Face transformers' semantics and parameter names exactly, without depending on
transformers or peft, so that tools/golden.py and tools/bench_torch.py run on Debian's python3-torch.

    cfg = Config.from_dict(json.load(open("config.json")))
    params = init_params(cfg, torch.Generator().manual_seed(0))    # {hf_name: tensor}
    model = TorchModel(cfg, params)                                  # nn.Module, HF names kept
    logits = model(input_ids)                                        # (B, T, V)

LoRA follows fedllm's convention (not peft's module wrapping): a target is (layer, role), role one
of ROLES. For LLaMA/Qwen2 a role is a whole projection. For GPT-2, attn_q/attn_k/attn_v are the
column slices [0,C), [C,2C), [2C,3C) of c_attn's output, attn_o is attn.c_proj, mlp_up is mlp.c_fc
and mlp_down is mlp.c_proj (there is no mlp_gate). The adapter adds
    y[:, slice] += (alpha / r) * (x @ A^T) @ B^T,    A: (r, in_features), B: (out_slice, r)
to the module's output, x being the module's input. Its tensors are named lora.{i}.{role}.A/.B.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down")
IGNORE_INDEX = -100

# torch >= 2.0 has a fused causal attention; torch 1.13 has only matmul + softmax.
_HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


@dataclass
class Config:
    arch: str            # "gpt2" | "llama" | "qwen2" | "mistral"
    vocab_size: int
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    head_dim: int
    d_ff: int
    max_position: int
    norm_eps: float
    rope_theta: float
    tie_embeddings: bool
    qkv_bias: bool

    @staticmethod
    def from_dict(d):
        arch = d["model_type"]
        if arch == "gpt2":
            C, NH = d["n_embd"], d["n_head"]
            n_inner = d.get("n_inner")
            return Config(arch, d["vocab_size"], d["n_layer"], C, NH, NH, C // NH,
                          n_inner if n_inner is not None else 4 * C, d["n_positions"],
                          float(d.get("layer_norm_epsilon", 1e-5)), 0.0,
                          bool(d.get("tie_word_embeddings", True)), True)
        if arch in ("llama", "qwen2", "mistral"):
            C, NH = d["hidden_size"], d["num_attention_heads"]
            NKV = d.get("num_key_value_heads") or NH
            HD = d.get("head_dim") or C // NH
            return Config(arch, d["vocab_size"], d["num_hidden_layers"], C, NH, NKV, HD,
                          d["intermediate_size"], d.get("max_position_embeddings", 2048),
                          float(d.get("rms_norm_eps", 1e-6)), float(d.get("rope_theta", 10000.0)),
                          bool(d.get("tie_word_embeddings", False)), arch == "qwen2")
        raise ValueError(f"unknown model_type {arch!r}")


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------

def param_shapes(cfg):
    """{hf_name: shape} in a fixed order."""
    V, C, F_, L = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_layer
    s = {}
    if cfg.arch == "gpt2":
        s["transformer.wte.weight"] = (V, C)
        s["transformer.wpe.weight"] = (cfg.max_position, C)
        for i in range(L):
            h = f"transformer.h.{i}."
            s[h + "ln_1.weight"] = (C,)
            s[h + "ln_1.bias"] = (C,)
            s[h + "attn.c_attn.weight"] = (C, 3 * C)
            s[h + "attn.c_attn.bias"] = (3 * C,)
            s[h + "attn.c_proj.weight"] = (C, C)
            s[h + "attn.c_proj.bias"] = (C,)
            s[h + "ln_2.weight"] = (C,)
            s[h + "ln_2.bias"] = (C,)
            s[h + "mlp.c_fc.weight"] = (C, F_)
            s[h + "mlp.c_fc.bias"] = (F_,)
            s[h + "mlp.c_proj.weight"] = (F_, C)
            s[h + "mlp.c_proj.bias"] = (C,)
        s["transformer.ln_f.weight"] = (C,)
        s["transformer.ln_f.bias"] = (C,)
        if not cfg.tie_embeddings:
            s["lm_head.weight"] = (V, C)
    else:
        QD, KVD = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        s["model.embed_tokens.weight"] = (V, C)
        for i in range(L):
            h = f"model.layers.{i}."
            s[h + "input_layernorm.weight"] = (C,)
            s[h + "self_attn.q_proj.weight"] = (QD, C)
            s[h + "self_attn.k_proj.weight"] = (KVD, C)
            s[h + "self_attn.v_proj.weight"] = (KVD, C)
            if cfg.qkv_bias:
                s[h + "self_attn.q_proj.bias"] = (QD,)
                s[h + "self_attn.k_proj.bias"] = (KVD,)
                s[h + "self_attn.v_proj.bias"] = (KVD,)
            s[h + "self_attn.o_proj.weight"] = (C, QD)
            s[h + "post_attention_layernorm.weight"] = (C,)
            s[h + "mlp.gate_proj.weight"] = (F_, C)
            s[h + "mlp.up_proj.weight"] = (F_, C)
            s[h + "mlp.down_proj.weight"] = (C, F_)
        s["model.norm.weight"] = (C,)
        if not cfg.tie_embeddings:
            s["lm_head.weight"] = (V, C)
    return s


def is_norm_weight(name):
    return name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "layernorm.weight",
                          "model.norm.weight"))


def init_params(cfg, gen, dtype=torch.float32, std=0.15, norm_std=0.1, bias_std=0.05,
                gen_dtype=torch.float64):
    """Random parameters: weights N(0, std), norm weights 1 + norm_std*N, biases bias_std*N.
    Drawn in gen_dtype (float64 for the fixtures; pass float32 for big models to save memory)."""
    out = {}
    for name, shape in param_shapes(cfg).items():
        r = torch.randn(shape, generator=gen, dtype=gen_dtype)
        if is_norm_weight(name):
            t = 1.0 + norm_std * r
        elif name.endswith(".bias"):
            t = bias_std * r
        else:
            t = std * r
        out[name] = t.to(dtype)
    return out


def lora_features(cfg, role):
    """(in_features, out_features) of a LoRA target role."""
    C, F_, QD, KVD = cfg.d_model, cfg.d_ff, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    if cfg.arch == "gpt2":
        table = {"attn_q": (C, C), "attn_k": (C, C), "attn_v": (C, C), "attn_o": (C, C),
                 "mlp_up": (C, F_), "mlp_down": (F_, C)}
    else:
        table = {"attn_q": (C, QD), "attn_k": (C, KVD), "attn_v": (C, KVD), "attn_o": (QD, C),
                 "mlp_gate": (C, F_), "mlp_up": (C, F_), "mlp_down": (F_, C)}
    if role not in table:
        raise ValueError(f"LoRA role {role!r} does not exist for {cfg.arch}")
    return table[role]


def lora_shapes(cfg, targets, r):
    """{lora.{i}.{role}.A: (r, in), lora.{i}.{role}.B: (out, r)} for every layer and target role."""
    s = {}
    for i in range(cfg.n_layer):
        for role in targets:
            fin, fout = lora_features(cfg, role)
            s[f"lora.{i}.{role}.A"] = (r, fin)
            s[f"lora.{i}.{role}.B"] = (fout, r)
    return s


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

def _causal_attention(q, k, v):
    """q, k, v: (B, NH, T, HD) -> (B, NH, T, HD), causal, scaled 1/sqrt(HD)."""
    if _HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T, HD = q.shape[-2], q.shape[-1]
    att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(HD))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)
    att = att.masked_fill(mask, float("-inf"))
    att = torch.softmax(att, dim=-1)
    return torch.matmul(att, v)


def _gelu_new(x):
    # HF gelu_new == 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) == gelu(approximate="tanh")
    return F.gelu(x, approximate="tanh")


def _rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope_cos_sin(T, HD, theta, dtype, device):
    inv_freq = 1.0 / (theta ** (torch.arange(0, HD, 2, dtype=torch.float64) / HD))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype=dtype, device=device), emb.sin().to(dtype=dtype, device=device)


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(cfg, p, input_ids, lora=None, lora_scale=1.0):
    """Logits (B, T, V). p: {hf_name: tensor}; lora: {lora.{i}.{role}.A/B: tensor} or None;
    lora_scale: alpha / r."""
    def delta(i, role, x):
        if lora is None:
            return None
        a = lora.get(f"lora.{i}.{role}.A")
        if a is None:
            return None
        return torch.matmul(torch.matmul(x, a.t()), lora[f"lora.{i}.{role}.B"].t()) * lora_scale

    def add(y, d):
        return y if d is None else y + d

    B, T = input_ids.shape
    C, NH, NKV, HD = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    if cfg.arch == "gpt2":
        pos = torch.arange(T, device=input_ids.device)
        x = p["transformer.wte.weight"][input_ids] + p["transformer.wpe.weight"][pos]
        for i in range(cfg.n_layer):
            h = f"transformer.h.{i}."
            a_in = F.layer_norm(x, (C,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], cfg.norm_eps)
            qkv = torch.addmm(p[h + "attn.c_attn.bias"], a_in.reshape(B * T, C),
                              p[h + "attn.c_attn.weight"]).view(B, T, 3 * C)
            q, k, v = qkv.split(C, dim=-1)
            q, k, v = add(q, delta(i, "attn_q", a_in)), add(k, delta(i, "attn_k", a_in)), \
                add(v, delta(i, "attn_v", a_in))
            q, k, v = (t.reshape(B, T, NH, HD).transpose(1, 2) for t in (q, k, v))
            y = _causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
            o = torch.addmm(p[h + "attn.c_proj.bias"], y.reshape(B * T, C),
                            p[h + "attn.c_proj.weight"]).view(B, T, C)
            x = x + add(o, delta(i, "attn_o", y))
            m_in = F.layer_norm(x, (C,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], cfg.norm_eps)
            u = torch.addmm(p[h + "mlp.c_fc.bias"], m_in.reshape(B * T, C),
                            p[h + "mlp.c_fc.weight"]).view(B, T, cfg.d_ff)
            u = _gelu_new(add(u, delta(i, "mlp_up", m_in)))
            d = torch.addmm(p[h + "mlp.c_proj.bias"], u.reshape(B * T, cfg.d_ff),
                            p[h + "mlp.c_proj.weight"]).view(B, T, C)
            x = x + add(d, delta(i, "mlp_down", u))
        x = F.layer_norm(x, (C,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"],
                         cfg.norm_eps)
        head = p["transformer.wte.weight"] if cfg.tie_embeddings else p["lm_head.weight"]
        return torch.matmul(x, head.t())

    # LLaMA / Qwen2 / Mistral
    x = p["model.embed_tokens.weight"][input_ids]
    cos, sin = _rope_cos_sin(T, HD, cfg.rope_theta, x.dtype, x.device)
    rep = NH // NKV
    for i in range(cfg.n_layer):
        h = f"model.layers.{i}."
        a_in = _rms_norm(x, p[h + "input_layernorm.weight"], cfg.norm_eps)
        q = add(F.linear(a_in, p[h + "self_attn.q_proj.weight"], p.get(h + "self_attn.q_proj.bias")),
                delta(i, "attn_q", a_in))
        k = add(F.linear(a_in, p[h + "self_attn.k_proj.weight"], p.get(h + "self_attn.k_proj.bias")),
                delta(i, "attn_k", a_in))
        v = add(F.linear(a_in, p[h + "self_attn.v_proj.weight"], p.get(h + "self_attn.v_proj.bias")),
                delta(i, "attn_v", a_in))
        q = q.view(B, T, NH, HD).transpose(1, 2)
        k = k.view(B, T, NKV, HD).transpose(1, 2)
        v = v.view(B, T, NKV, HD).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if rep > 1:  # query head h uses kv head h // rep
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = _causal_attention(q, k, v).transpose(1, 2).reshape(B, T, NH * HD)
        x = x + add(F.linear(y, p[h + "self_attn.o_proj.weight"]), delta(i, "attn_o", y))
        m_in = _rms_norm(x, p[h + "post_attention_layernorm.weight"], cfg.norm_eps)
        g = add(F.linear(m_in, p[h + "mlp.gate_proj.weight"]), delta(i, "mlp_gate", m_in))
        u = add(F.linear(m_in, p[h + "mlp.up_proj.weight"]), delta(i, "mlp_up", m_in))
        hmid = F.silu(g) * u
        x = x + add(F.linear(hmid, p[h + "mlp.down_proj.weight"]), delta(i, "mlp_down", hmid))
    x = _rms_norm(x, p["model.norm.weight"], cfg.norm_eps)
    head = p["model.embed_tokens.weight"] if cfg.tie_embeddings else p["lm_head.weight"]
    return F.linear(x, head)


def loss_fn(logits, labels):
    """Mean cross-entropy over positions whose label != -100. labels[b, t] is the target of
    position t (already shifted)."""
    logits = logits.reshape(-1, logits.shape[-1])
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.cross_entropy(logits, labels.reshape(-1).long(), ignore_index=IGNORE_INDEX)


# ----------------------------------------------------------------------------------------------
# nn.Module wrapper
# ----------------------------------------------------------------------------------------------

class TorchModel(nn.Module):
    """Holds the parameters as nn.Parameters (registered under names with '.' -> '__'), keeping the
    HF names in self.p and the LoRA factors in self.lora. With copy=False the given tensors become
    the parameters' storage (no second copy of a large model)."""

    def __init__(self, cfg, params, lora=None, lora_alpha=None, lora_r=None, copy=True):
        super().__init__()
        self.cfg = cfg
        expected = param_shapes(cfg)
        missing = set(expected) - set(params)
        extra = set(params) - set(expected)
        if missing or extra:
            raise ValueError(f"parameter names: missing {sorted(missing)}, unexpected {sorted(extra)}")
        self.p = {}
        for name in expected:
            t = params[name]
            if tuple(t.shape) != tuple(expected[name]):
                raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {expected[name]}")
            prm = nn.Parameter(t.detach().clone() if copy else t.detach())
            self.register_parameter(name.replace(".", "__"), prm)
            self.p[name] = prm
        self.lora = None
        self.lora_scale = 1.0
        if lora:
            self.lora = {}
            for name, t in lora.items():
                prm = nn.Parameter(t.detach().clone() if copy else t.detach())
                self.register_parameter(name.replace(".", "__"), prm)
                self.lora[name] = prm
            self.lora_scale = float(lora_alpha) / float(lora_r)

    def forward(self, input_ids):
        return forward(self.cfg, self.p, input_ids, self.lora, self.lora_scale)

    def base_parameters(self):
        return list(self.p.values())

    def lora_parameters(self):
        return list(self.lora.values()) if self.lora else []


def build_model(config, tensors, lora=None, lora_alpha=None, lora_r=None, dtype=None, copy=True):
    """config: an HF-style config dict (or Config); tensors: {hf_name: tensor}. Returns TorchModel."""
    cfg = config if isinstance(config, Config) else Config.from_dict(config)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
        if lora:
            lora = {k: v.to(dtype) for k, v in lora.items()}
    return TorchModel(cfg, tensors, lora, lora_alpha, lora_r, copy=copy)
