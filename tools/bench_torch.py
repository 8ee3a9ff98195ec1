#!/usr/bin/python3
"""PyTorch twin of bench/engine: training and inference throughput of the same models on the CPU.

For each preset (gpt2-124m, llama-110m), batch shape (B, T) and mode:
  full     full fine-tuning: forward, loss, backward, AdamW step (weight decay on ndim >= 2)
  lora     LoRA r 8, alpha 16 on attn_q and attn_v of every layer, base frozen, AdamW on the factors
  forward  forward and loss under torch.no_grad()
it reports tokens/s = B*T*steps / seconds (after --warmup untimed steps) and the peak RSS of the
process that ran the case (each case runs in a subprocess of its own; VmHWM from /proc).

fp32 by default; --bf16 runs forward and loss under torch.autocast("cpu", dtype=torch.bfloat16).
Use tools/bench_torch.sh, which runs Debian's torch on OpenBLAS (OpenMP build) with 2 threads; the
BLAS that was actually loaded is read from /proc/self/maps and recorded in every row.

  tools/bench_torch.sh --models gpt2-124m --modes lora,full --T 256 --json out.json
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

PRESETS = {
    "gpt2-124m": {
        "model_type": "gpt2", "vocab_size": 50257, "n_layer": 12, "n_embd": 768, "n_head": 12,
        "n_inner": 3072, "n_positions": 1024, "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
    },
    "llama-110m": {
        "model_type": "llama", "vocab_size": 32000, "num_hidden_layers": 12, "hidden_size": 768,
        "num_attention_heads": 12, "num_key_value_heads": 12, "intermediate_size": 2048,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
}
MODES = ("full", "lora", "forward")
LORA_R, LORA_ALPHA, LORA_TARGETS = 8, 16, ("attn_q", "attn_v")
OPENBLAS_DIR = "/usr/lib/x86_64-linux-gnu/openblas-openmp"


# ----------------------------------------------------------------------------------------------
# What is loaded
# ----------------------------------------------------------------------------------------------

def loaded_blas():
    """The BLAS-like libraries mapped into this process, and OpenBLAS's own description."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                base = os.path.basename(path).lower()
                if any(k in base for k in ("blas", "mkl", "blis", "lapack", "dnnl", "atlas")):
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    desc = None
    for path in sorted(libs):
        if "openblas" in os.path.basename(path).lower() or "openblas" in path:
            try:
                import ctypes
                lib = ctypes.CDLL(path)
                lib.openblas_get_config.restype = ctypes.c_char_p
                desc = lib.openblas_get_config().decode()
                try:
                    desc += f" threads={lib.openblas_get_num_threads()}"
                except AttributeError:
                    pass
                break
            except (OSError, AttributeError):
                pass
    build = "?"
    try:
        import re
        import torch
        m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
        build = m.group(1) if m else "?"
    except Exception:  # noqa: BLE001 - informative only
        pass
    if desc is None:
        if build == "mkl":
            desc = "MKL (statically linked into libtorch)"
        elif any("mkl" in os.path.basename(p).lower() for p in libs):
            desc = "MKL"
        elif any("libblas.so" in p for p in libs):
            desc = "reference BLAS (libblas.so, not OpenBLAS)"
        else:
            desc = "no BLAS library found in /proc/self/maps"
    desc += f" [torch BLAS_INFO={build}]"
    return desc, sorted(libs)


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ----------------------------------------------------------------------------------------------
# One case (runs in a child process)
# ----------------------------------------------------------------------------------------------

def run_case(spec):
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_models as tm

    torch.set_num_threads(spec["threads"])
    gen = torch.Generator().manual_seed(0)
    cfg = tm.Config.from_dict(PRESETS[spec["model"]])
    params = tm.init_params(cfg, gen, torch.float32, std=0.02, norm_std=0.0, bias_std=0.0,
                            gen_dtype=torch.float32)
    mode = spec["mode"]
    lora = None
    if mode == "lora":
        lora = {}
        for name, shape in tm.lora_shapes(cfg, LORA_TARGETS, LORA_R).items():
            if name.endswith(".A"):
                lora[name] = (torch.rand(shape, generator=gen) * 2 - 1) / shape[1] ** 0.5
            else:
                lora[name] = 0.01 * torch.randn(shape, generator=gen)
    model = tm.TorchModel(cfg, params, lora, LORA_ALPHA, LORA_R, copy=False)
    del params

    B, T = spec["B"], spec["T"]
    input_ids = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    labels = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)

    if mode == "lora":
        for p in model.base_parameters():
            p.requires_grad_(False)
        trainable = model.lora_parameters()
    else:
        trainable = model.base_parameters()
    opt = None
    if mode != "forward":
        groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": 0.1},
                  {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        kw = {"foreach": True} if "foreach" in torch.optim.AdamW.__init__.__code__.co_varnames else {}
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, **kw)

    def autocast():
        if spec["bf16"]:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        import contextlib
        return contextlib.nullcontext()

    def step():
        if mode == "forward":
            with torch.no_grad(), autocast():
                return tm.loss_fn(model(input_ids), labels).item()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = tm.loss_fn(model(input_ids), labels)
        loss.backward()
        if spec["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(trainable, spec["clip"])
        opt.step()
        return loss.item()

    load_before = os.getloadavg()[0]
    for _ in range(spec["warmup"]):
        step()
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        loss = step()
    dt = time.perf_counter() - t0

    blas, libs = loaded_blas()
    return {
        "model": spec["model"], "mode": mode, "B": B, "T": T,
        "tokens_per_s": B * T * spec["steps"] / dt,
        "peak_rss_mb": peak_rss_mb(),
        "torch_version": torch.__version__,
        "blas": blas,
        "blas_libs": libs,
        "dtype": "bf16-autocast" if spec["bf16"] else "fp32",
        "threads": torch.get_num_threads(),
        "steps": spec["steps"], "warmup": spec["warmup"], "seconds": dt,
        "step_s": dt / spec["steps"],
        "attention": "F.scaled_dot_product_attention" if tm._HAS_SDPA else "matmul+softmax",
        "clip": spec["clip"],
        "trainable_params": sum(p.numel() for p in trainable) if mode != "forward" else 0,
        "last_loss": loss,
        # The 1-minute load average before and after: other processes on the cores make OpenMP
        # barriers slow, so a loaded machine understates throughput (see the report).
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
        "nproc": os.cpu_count(),
    }


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def child_env(args):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.blas_dir and os.path.isdir(args.blas_dir):
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        if args.blas_dir not in parts:
            env["LD_LIBRARY_PATH"] = ":".join([args.blas_dir] + parts)
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2-124m,llama-110m")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", default="64,256", help="comma-separated sequence lengths")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="torch.autocast('cpu', dtype=bfloat16)")
    ap.add_argument("--clip", type=float, default=0.0,
                    help="clip gradients to this global norm before each step (0: off)")
    ap.add_argument("--blas-dir", default=OPENBLAS_DIR,
                    help="prepended to the children's LD_LIBRARY_PATH ('' to leave it alone)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print("BENCH_ROW " + json.dumps(run_case(json.loads(args.child))), flush=True)
        return 0

    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    Ts = [int(t) for t in args.T.split(",") if t]
    for m in models:
        if m not in PRESETS:
            ap.error(f"unknown model {m!r} (have {', '.join(PRESETS)})")
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (have {', '.join(MODES)})")

    env = child_env(args)
    rows = []
    hdr = (f"{'model':12s} {'mode':8s} {'B':>3s} {'T':>5s} {'tokens/s':>10s} {'step s':>8s} "
           f"{'peak RSS MB':>12s} {'load':>5s}")
    print(hdr, flush=True)
    print("-" * len(hdr), flush=True)
    for model in models:
        for T in Ts:
            for mode in modes:
                spec = {"model": model, "mode": mode, "B": args.B, "T": T, "steps": args.steps,
                        "warmup": args.warmup, "threads": args.threads, "bf16": args.bf16,
                        "clip": args.clip}
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                       json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
                row = None
                for line in proc.stdout.splitlines():
                    if line.startswith("BENCH_ROW "):
                        row = json.loads(line[len("BENCH_ROW "):])
                if proc.returncode != 0 or row is None:
                    sys.stderr.write(f"{model} {mode} T={T}: failed (rc {proc.returncode})\n"
                                     f"{proc.stderr[-4000:]}\n")
                    continue
                rows.append(row)
                print(f"{model:12s} {mode:8s} {args.B:3d} {T:5d} {row['tokens_per_s']:10.1f} "
                      f"{row['step_s']:8.3f} {row['peak_rss_mb']:12.0f} {row['loadavg_after']:5.1f}", flush=True)

    # Describe the environment the children ran in (same interpreter, same env).
    probe = subprocess.run([sys.executable, "-c",
                            "import sys, json, torch; sys.path.insert(0, %r);"
                            "import bench_torch as b; torch.ones(64, 64) @ torch.ones(64, 64);"
                            "print(json.dumps({'config': torch.__config__.show(),"
                            " 'parallel': torch.__config__.parallel_info(), 'blas': b.loaded_blas()}))"
                            % os.path.dirname(os.path.abspath(__file__))],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info = json.loads(probe.stdout) if probe.returncode == 0 else {}
    if rows:
        print(f"\ntorch {rows[0]['torch_version']}, {rows[0]['dtype']}, {rows[0]['threads']} threads, "
              f"attention {rows[0]['attention']}\nBLAS: {rows[0]['blas']}\n"
              f"      {', '.join(rows[0]['blas_libs']) or '-'}\nCPU: {cpu_name()}")
        if "OpenBLAS" not in rows[0]["blas"] and "MKL" not in rows[0]["blas"]:
            print("WARNING: not running on an optimised BLAS; use tools/bench_torch.sh", file=sys.stderr)

    if args.json:
        out = {
            "rows": rows,
            "python": sys.executable,
            "cpu": cpu_name(),
            "nproc": os.cpu_count(),
            "env": {k: env.get(k) for k in ("LD_LIBRARY_PATH", "OMP_NUM_THREADS",
                                             "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                                             "OPENBLAS_L2_SIZE")},
            "torch_config": info.get("config"),
            "torch_parallel_info": info.get("parallel"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
