#!/usr/bin/python3
"""PyTorch twin of bench/generate: generation throughput with a key/value cache on the CPU.

For each preset (gpt2-124m, llama-110m) and batch B (1, 8): a prompt of --prompt random tokens per
row (prefill), then --new tokens chosen greedily (argmax of each row's last logits), all rows
advancing together. It reports generated tokens/s = B*new / seconds of the decode steps (prefill
excluded), prefill tokens/s = B*prompt / seconds of the prefill, and the peak RSS of the process
that ran the case (each case in a subprocess of its own; VmHWM from /proc).

tools/torch_models.py has no cache, so incremental decoding lives here: per layer, the keys and
values of the positions so far (new ones concatenated each step); the new positions attend over the
whole cache (causally within the new block); LLaMA's RoPE is applied at the absolute positions;
the vocabulary head runs on each row's last position only (as fl_model_decode does). Before any
timing, a child checks on tiny GPT-2 and LLaMA (GQA) configs that the cached greedy tokens equal a
no-cache recomputation with torch_models.forward.

Same measurement as the C side: one untimed prefill and two decode steps warm up, the cache is
dropped, then the prefill is timed and then the decode loop (argmax + one step per token, the last
token needing no step). fp32, torch.no_grad(), torch.set_num_threads(--threads). Run it with
Debian's torch on OpenBLAS (OpenMP build), as tools/bench_torch.sh does:

  LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp OMP_NUM_THREADS=2 \\
      /usr/bin/python3 tools/bench_torch_generate.py --json out.json
(the children get that LD_LIBRARY_PATH prepended anyway, see --blas-dir).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import (OPENBLAS_DIR, PRESETS, child_env, cpu_name, loaded_blas,  # noqa: E402
                         peak_rss_mb)


# ----------------------------------------------------------------------------------------------
# Incremental decoding
# ----------------------------------------------------------------------------------------------

class Decoder:
    """Greedy decoding with a per-layer key/value cache over torch_models' parameters."""

    def __init__(self, cfg, p, max_tokens):
        import torch
        import torch_models as tm
        self.torch, self.tm, self.cfg, self.p = torch, tm, cfg, p
        dtype = next(iter(p.values())).dtype
        if cfg.arch != "gpt2":
            self.cos, self.sin = tm._rope_cos_sin(max_tokens, cfg.head_dim, cfg.rope_theta, dtype,
                                                  "cpu")
        self.reset()

    def reset(self):
        self.cache = [None] * self.cfg.n_layer  # (k, v): (B, NKV, T, HD) each
        self.length = 0

    def _attend(self, i, q, k, v):
        """q: (B, NH, n, HD); k, v: (B, NKV, n, HD) of the new positions -> (B, NH, n, HD)."""
        torch = self.torch
        if self.cache[i] is not None:
            k = torch.cat((self.cache[i][0], k), dim=2)
            v = torch.cat((self.cache[i][1], v), dim=2)
        self.cache[i] = (k, v)
        rep = self.cfg.n_head // self.cfg.n_kv_head
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        n, Tk = q.shape[2], k.shape[2]
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        if n > 1:  # new position t (absolute Tk - n + t) sees keys 0 .. Tk - n + t
            mask = torch.arange(Tk)[None, :] > (Tk - n + torch.arange(n))[:, None]
            att = att.masked_fill(mask, float("-inf"))
        return torch.matmul(torch.softmax(att, dim=-1), v)

    def step(self, ids):
        """Appends ids (B, n) to the cache; returns the logits (B, V) of each row's last token."""
        torch, tm, cfg, p = self.torch, self.tm, self.cfg, self.p
        F = torch.nn.functional
        B, n = ids.shape
        t0 = self.length
        C, NH, NKV, HD = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        if cfg.arch == "gpt2":
            x = p["transformer.wte.weight"][ids] + p["transformer.wpe.weight"][t0:t0 + n]
            for i in range(cfg.n_layer):
                h = f"transformer.h.{i}."
                a_in = F.layer_norm(x, (C,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], cfg.norm_eps)
                qkv = torch.addmm(p[h + "attn.c_attn.bias"], a_in.reshape(B * n, C),
                                  p[h + "attn.c_attn.weight"]).view(B, n, 3 * C)
                q, k, v = (t.reshape(B, n, NH, HD).transpose(1, 2) for t in qkv.split(C, dim=-1))
                y = self._attend(i, q, k, v).transpose(1, 2).reshape(B * n, C)
                x = x + torch.addmm(p[h + "attn.c_proj.bias"], y,
                                    p[h + "attn.c_proj.weight"]).view(B, n, C)
                m_in = F.layer_norm(x, (C,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], cfg.norm_eps)
                u = tm._gelu_new(torch.addmm(p[h + "mlp.c_fc.bias"], m_in.reshape(B * n, C),
                                             p[h + "mlp.c_fc.weight"]))
                x = x + torch.addmm(p[h + "mlp.c_proj.bias"], u,
                                    p[h + "mlp.c_proj.weight"]).view(B, n, C)
            x = F.layer_norm(x[:, -1], (C,), p["transformer.ln_f.weight"],
                             p["transformer.ln_f.bias"], cfg.norm_eps)
            head = p["transformer.wte.weight"] if cfg.tie_embeddings else p["lm_head.weight"]
            self.length += n
            return torch.matmul(x, head.t())

        x = p["model.embed_tokens.weight"][ids]
        cos, sin = self.cos[t0:t0 + n], self.sin[t0:t0 + n]
        for i in range(cfg.n_layer):
            h = f"model.layers.{i}."
            a_in = tm._rms_norm(x, p[h + "input_layernorm.weight"], cfg.norm_eps)
            q = F.linear(a_in, p[h + "self_attn.q_proj.weight"], p.get(h + "self_attn.q_proj.bias"))
            k = F.linear(a_in, p[h + "self_attn.k_proj.weight"], p.get(h + "self_attn.k_proj.bias"))
            v = F.linear(a_in, p[h + "self_attn.v_proj.weight"], p.get(h + "self_attn.v_proj.bias"))
            q = q.view(B, n, NH, HD).transpose(1, 2)
            k = k.view(B, n, NKV, HD).transpose(1, 2)
            v = v.view(B, n, NKV, HD).transpose(1, 2)
            q = q * cos + tm._rotate_half(q) * sin
            k = k * cos + tm._rotate_half(k) * sin
            y = self._attend(i, q, k, v).transpose(1, 2).reshape(B, n, NH * HD)
            x = x + F.linear(y, p[h + "self_attn.o_proj.weight"])
            m_in = tm._rms_norm(x, p[h + "post_attention_layernorm.weight"], cfg.norm_eps)
            hmid = F.silu(F.linear(m_in, p[h + "mlp.gate_proj.weight"])) * \
                F.linear(m_in, p[h + "mlp.up_proj.weight"])
            x = x + F.linear(hmid, p[h + "mlp.down_proj.weight"])
        x = tm._rms_norm(x[:, -1], p["model.norm.weight"], cfg.norm_eps)
        head = p["model.embed_tokens.weight"] if cfg.tie_embeddings else p["lm_head.weight"]
        self.length += n
        return F.linear(x, head)


# ----------------------------------------------------------------------------------------------
# Check (runs in a child process)
# ----------------------------------------------------------------------------------------------

TINY = {
    "gpt2": {"model_type": "gpt2", "vocab_size": 97, "n_layer": 2, "n_embd": 32, "n_head": 4,
             "n_inner": 64, "n_positions": 64, "layer_norm_epsilon": 1e-5,
             "tie_word_embeddings": True},
    "llama": {"model_type": "llama", "vocab_size": 97, "num_hidden_layers": 2, "hidden_size": 32,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
              "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": False},
}


def run_check():
    """Greedy tokens with the cache == greedy tokens recomputing the whole sequence each step."""
    import torch
    import torch_models as tm
    torch.set_num_threads(2)
    out = {}
    with torch.no_grad():
        for name, d in TINY.items():
            cfg = tm.Config.from_dict(d)
            gen = torch.Generator().manual_seed(1)
            p = tm.init_params(cfg, gen, torch.float64)
            B, P, N = 3, 7, 12
            prompt = torch.randint(0, cfg.vocab_size, (B, P), generator=gen)
            dec = Decoder(cfg, p, P + N)
            logits = dec.step(prompt)
            cached, max_diff = [], 0.0
            seq = prompt
            for s in range(N):
                ref = tm.forward(cfg, p, seq)[:, -1]
                max_diff = max(max_diff, (ref - logits).abs().max().item())
                nxt = logits.argmax(-1)
                cached.append(nxt)
                seq = torch.cat((seq, ref.argmax(-1)[:, None]), dim=1)
                if s + 1 < N:
                    logits = dec.step(nxt[:, None])
            cached = torch.stack(cached, dim=1)
            same = torch.equal(cached, seq[:, P:])
            out[name] = {"tokens_equal": same, "max_logit_diff": max_diff}
            if not same:
                raise SystemExit(f"check {name}: cached tokens differ from recomputation "
                                 f"{cached.tolist()} vs {seq[:, P:].tolist()}")
    return out


# ----------------------------------------------------------------------------------------------
# One case (runs in a child process)
# ----------------------------------------------------------------------------------------------

def run_case(spec):
    import torch
    import torch_models as tm

    torch.set_num_threads(spec["threads"])
    gen = torch.Generator().manual_seed(0)
    cfg = tm.Config.from_dict(PRESETS[spec["model"]])
    p = tm.init_params(cfg, gen, torch.float32, std=0.02, norm_std=0.0, bias_std=0.0,
                       gen_dtype=torch.float32)
    B, P, N = spec["B"], spec["prompt"], spec["new"]
    prompt = torch.randint(0, cfg.vocab_size, (B, P), generator=gen)
    dec = Decoder(cfg, p, P + N)
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        logits = dec.step(prompt)  # warm-up, untimed
        for _ in range(min(2, N)):
            logits = dec.step(logits.argmax(-1)[:, None])
        dec.reset()

        t0 = time.perf_counter()
        logits = dec.step(prompt)
        t1 = time.perf_counter()
        checksum = 0
        for s in range(N):
            nxt = logits.argmax(-1)
            checksum += int(nxt.sum())
            if s + 1 == N:
                break
            logits = dec.step(nxt[:, None])
        t2 = time.perf_counter()
    blas, libs = loaded_blas()
    return {
        "engine": "torch", "model": spec["model"], "B": B, "prompt": P, "new": N,
        "gen_tokens_per_s": B * N / (t2 - t1), "prefill_tokens_per_s": B * P / (t1 - t0),
        "decode_s": t2 - t1, "prefill_s": t1 - t0, "peak_rss_mb": peak_rss_mb(),
        "checksum": checksum, "threads": torch.get_num_threads(), "precision": "fp32",
        "torch_version": torch.__version__, "blas": blas, "blas_libs": libs,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
    }


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def run_child(arg, env):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", arg], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_ROW ") and proc.returncode == 0:
            return json.loads(line[len("BENCH_ROW "):]), ""
    return None, f"rc {proc.returncode}\n{proc.stderr[-4000:]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=64, help="tokens generated per row")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", help="only this preset")
    ap.add_argument("--batch", type=int, help="only this batch size")
    ap.add_argument("--no-check", action="store_true", help="skip the cache-vs-recompute check")
    ap.add_argument("--blas-dir", default=OPENBLAS_DIR,
                    help="prepended to the children's LD_LIBRARY_PATH ('' to leave it alone)")
    ap.add_argument("--json", help="write one JSON object per row (per line) here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        spec = json.loads(args.child)
        row = run_check() if spec.get("check") else run_case(spec)
        print("BENCH_ROW " + json.dumps(row), flush=True)
        return 0

    env = child_env(args)
    if not args.no_check:
        res, why = run_child(json.dumps({"check": True}), env)
        if res is None:
            sys.stderr.write(f"cache check failed: {why}\n")
            return 1
        print("check (cached greedy == recomputed greedy): " +
              ", ".join(f"{k} ok (max |dlogit| {v['max_logit_diff']:.1e})" for k, v in res.items()),
              flush=True)

    models = [args.model] if args.model else list(PRESETS)
    batches = [args.batch] if args.batch else [1, 8]
    for m in models:
        if m not in PRESETS:
            ap.error(f"unknown model {m!r} (have {', '.join(PRESETS)})")
    json_f = open(args.json, "w") if args.json else None
    print(f"{'model':11s} {'B':>3s} {'prompt':>6s} {'new':>4s} {'gen tok/s':>12s} "
          f"{'prefill t/s':>12s} {'peak MB':>10s} {'load':>5s}   "
          f"(torch fp32, {args.threads} threads)",
          flush=True)
    rows = []
    for model in models:
        for B in batches:
            spec = {"model": model, "B": B, "prompt": args.prompt, "new": args.new,
                    "threads": args.threads}
            row, why = run_child(json.dumps(spec), env)
            if row is None:
                print(f"{model:11s} {B:3d} {args.prompt:6d} {args.new:4d} {'failed':>12s}",
                      flush=True)
                sys.stderr.write(f"{model} B={B}: {why}\n")
                continue
            rows.append(row)
            print(f"{model:11s} {B:3d} {args.prompt:6d} {args.new:4d} "
                  f"{row['gen_tokens_per_s']:12.1f} {row['prefill_tokens_per_s']:12.1f} "
                  f"{row['peak_rss_mb']:10.0f} {row['loadavg_after']:5.1f}", flush=True)
            if json_f:
                json_f.write(json.dumps(row) + "\n")
                json_f.flush()
    if rows:
        print(f"torch {rows[0]['torch_version']}, BLAS: {rows[0]['blas']}\n"
              f"CPU: {cpu_name()}")
    if json_f:
        json_f.close()
    return 0 if len(rows) == len(models) * len(batches) else 1


if __name__ == "__main__":
    sys.exit(main())
