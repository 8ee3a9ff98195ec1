"""Offsite-tuning through FATE-LLM 2.2.0's own classes, on CPU, for fedllm's `algorithm:
offsite_tuning` to be compared with. One model owner (FATE's arbiter) and one data owner (FATE's
guest) run under FATE's multiprocess launcher, each a process of its own, with FATE-LLM's
GPT2LMHeadMainModel / GPT2LMHeadSubModel (fate_llm.model_zoo.offsite_tuning.gpt2) and its
OffsiteTuningTrainerServer / OffsiteTuningTrainerClient (fate_llm.algo.offsite_tuning) in
standard two-party mode (aggregate_model=False, what OTRunner builds by default). The client
trainer is FATE-LLM's own: a transformers Seq2SeqTrainer subclass, so its optimizer, clipping and
schedule are transformers' with FATE's defaults (FATE's TrainingArguments: constant schedule).
This file only drives and observes FATE-LLM: it wraps FATE's federation to count the bytes of
the messages and adds a transformers callback that times each step; it changes nothing they
compute. tools/offsite_fate.sh runs the whole measurement.

Subcommands (all paths under one work folder DIR):
  prepare  DIR/model: a random-init GPT-2 saved by transformers (safetensors) from the config of
           `fedllm init-model --arch gpt2 --preset small` with n_layer raised (default 12), with
           that model's tokenizer; DIR/data/{train,eval}.jsonl: the client's records
           (fedllm's `data: {format: text}`), enough for STEPS x BATCH rows of SEQ + 1 tokens
  fate     the job through FATE-LLM; the arbiter saves the full model with the tuned adapters
           plugged in by FATE-LLM's own path (OffsiteTuningTrainerServer.on_train_end:
           load_submodel_weights(..., with_emulator=False)), the client saves its submodel
           (emulator + tuned adapters, an 8-block GPT-2), both with save_pretrained
  eval     held-out loss of the full model zero-shot, the client's submodel and the plugged-in
           full model, on the client's eval split (transformers, and `fedllm eval` if given)
  report   the JSON result (DIR/results/fate.json) and a markdown table

Rows are cut as fedllm cuts text (src/train/data.c): every record's ids, then EOS, one stream,
windows of SEQ + 1 tokens that overlap by one, the tail dropped. FATE-LLM's trainer gets those
windows as input_ids with labels = input_ids (transformers shifts them), so the loss is the mean
over the SEQ targets of a row.
"""

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time

from fate_common import hf_eval, read_jsonl, rows_of, stream_of, write_json, write_jsonl


def load_json(path):
    with open(path) as f:
        return json.load(f)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def copy_tokenizer(src, dst):
    for n in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, n)):
            shutil.copy(os.path.join(src, n), dst)


# ---- prepare ---------------------------------------------------------------------------------


def cmd_prepare(a):
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    model_dir = os.path.join(a.out, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    config = GPT2Config.from_pretrained(a.init)  # what fedllm init-model wrote (preset small)
    preset_layers = config.n_layer
    config.n_layer = a.layers
    torch.manual_seed(a.seed)
    GPT2LMHeadModel(config).save_pretrained(model_dir, safe_serialization=True)
    copy_tokenizer(a.init, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)

    data_dir = os.path.join(a.out, "data")
    os.makedirs(data_dir, exist_ok=True)
    train = [r["text"] for r in read_jsonl(os.path.join(a.text, f"{a.corpus}.train.jsonl"))]
    need = a.rows * a.seq + 1
    kept, ids = [], []
    for t in train:
        kept.append(t)
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        ids.append(tok.eos_token_id)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise SystemExit(f"offsite_fate: {a.corpus} has {len(ids)} tokens, {need} needed")
    write_jsonl(os.path.join(data_dir, "train.jsonl"), [{"text": t} for t in kept])
    evals = [{"text": r["text"]} for r in read_jsonl(os.path.join(a.text, f"{a.corpus}.eval.jsonl"))]
    write_jsonl(os.path.join(data_dir, "eval.jsonl"), evals)
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    summary = {
        "model": model_dir,
        "config": {k: getattr(config, k) for k in ("vocab_size", "n_layer", "n_embd", "n_head", "n_inner",
                                                    "n_positions", "activation_function", "resid_pdrop",
                                                    "embd_pdrop", "attn_pdrop", "tie_word_embeddings")},
        "init_model_preset_layers": preset_layers,
        "seed": a.seed,
        "parameters": sum(p.numel() for p in model.parameters()),  # tied lm_head counted once
        "corpus": a.corpus,
        "train": {"records": len(kept), "tokens": len(ids), "rows": (len(ids) - 1) // a.seq},
        "eval": {"records": len(evals), "rows": len(rows_of(stream_of(tok, [r["text"] for r in evals]), a.seq))},
    }
    write_json(os.path.join(a.out, "prepare.json"), summary)
    print(json.dumps(summary))


# ---- fate ------------------------------------------------------------------------------------


class _Count:
    """Bytes this party hands to, and takes from, FATE's standalone federation (the pickled
    messages FATE writes into and reads from its LMDB mailboxes), in call order."""

    events = []

    @classmethod
    def install(cls):
        from fate.arch.federation.backends.standalone._federation import StandaloneFederation

        push_bytes, pull_bytes = StandaloneFederation._push_bytes, StandaloneFederation._pull_bytes

        def size(v):
            # FATE pickles a message (numpy arrays and tensors as safetensors bytes,
            # fate.arch.federation.api._serdes); one over max_message_size (1 MiB) goes as a
            # table of 1 MiB slices, and the bytes pushed under the message's name are then a
            # header (first byte 1, then the pickle's total size as a big-endian u64).
            if v[:1] == b"\x01":
                return struct.unpack("!Q", v[1:9])[0], len(v)
            return len(v) - 1, len(v)

        def counted_push(self, v, name, tag, parties):
            pickled, pushed = size(v)
            cls.events.append({"dir": "out", "name": name, "tag": tag, "bytes": pickled * len(parties),
                               "split": v[:1] == b"\x01", "header": pushed, "t": time.time()})
            return push_bytes(self, v, name, tag, parties)

        def counted_pull(self, name, tag, parties):
            got = pull_bytes(self, name, tag, parties)
            total = sum(size(g)[0] if isinstance(g, (bytes, bytearray)) else -1 for g in got)
            cls.events.append({"dir": "in", "name": name, "tag": tag, "bytes": total, "t": time.time()})
            return got

        StandaloneFederation._push_bytes = counted_push
        StandaloneFederation._pull_bytes = counted_pull


def tensor_bytes(weights):
    """Bytes of the arrays in one of FATE-LLM's weight dicts ({group: {name: ndarray}} or
    {key: ndarray}), and their element count, per top-level key group."""
    import numpy as np

    out = {}
    for k, v in weights.items():
        arrays = list(v.values()) if isinstance(v, dict) else [v]
        group = k.rstrip("0123456789") if not isinstance(v, dict) else k  # wte0..wte9 -> wte
        g = out.setdefault(group, {"bytes": 0, "values": 0, "arrays": 0, "dtypes": set()})
        for x in arrays:
            x = np.asarray(x)
            g["bytes"] += x.nbytes
            g["values"] += x.size
            g["arrays"] += 1
            g["dtypes"].add(str(x.dtype))
    for g in out.values():
        g["dtypes"] = sorted(g["dtypes"])
    return out


def _fate_party(ctx):
    """Runs in each party process that FATE's launcher spawns."""
    import torch

    cfg = json.loads(os.environ["OFFSITE_CMP"])
    _Count.install()
    from fate_llm.algo.offsite_tuning.offsite_tuning import OffsiteTuningTrainerClient, OffsiteTuningTrainerServer
    from fate_llm.model_zoo.offsite_tuning.gpt2 import GPT2LMHeadMainModel, GPT2LMHeadSubModel

    torch.set_num_threads(cfg["threads"])
    split = dict(emulator_layer_num=cfg["emulator"], adapter_top_layer_num=cfg["top"],
                 adapter_bottom_layer_num=cfg["bottom"])
    out = {"party": None, "started": time.time()}
    if ctx.is_on_arbiter:
        out["party"] = "arbiter"
        t = time.perf_counter()
        main = GPT2LMHeadMainModel(cfg["model"], **split)
        out["build_main_s"] = time.perf_counter() - t
        blocks = list(main.model.transformer.h)
        out["layers"] = len(blocks)
        ident = lambda mods: [next(i for i, b in enumerate(blocks) if b is m) for m in mods]
        out["emulator_blocks"] = ident(main.get_emulator())
        out["adapter_bottom_blocks"] = ident(main.get_adapter_bottom())
        out["adapter_top_blocks"] = ident(main.get_adapter_top())
        down = main.get_submodel_weights()  # what on_train_begin puts as `sub_model_para`
        out["down_keys"] = {k: (sorted(v) if isinstance(v, dict) else list(v.shape)) for k, v in down.items()}
        out["down_tensors"] = tensor_bytes(down)
        del down
        seen = set()
        full = 0
        for p in main.model.parameters():  # the tied lm_head once
            if id(p) not in seen:
                seen.add(id(p))
                full += p.numel() * p.element_size()
        out["full_model_param_bytes"] = full
        server = OffsiteTuningTrainerServer(ctx=ctx, model=main, aggregate_model=False)
        t = time.perf_counter()
        server.train()  # on_train_begin: put `sub_model_para`; on_train_end: get and plug in
        out["server_train_s"] = time.perf_counter() - t
        plugged = os.path.join(cfg["work"], "plugged")
        main.model.save_pretrained(plugged, safe_serialization=True)
        copy_tokenizer(cfg["model"], plugged)
        out["plugged"] = plugged
    else:
        import transformers
        from fate.ml.nn.trainer.trainer_base import FedArguments
        from fate_llm.trainer.seq2seq_trainer import Seq2SeqTrainingArguments

        out["party"] = "client"
        tokenizer = transformers.AutoTokenizer.from_pretrained(cfg["model"])
        texts = [r["text"] for r in read_jsonl(cfg["train"])]
        rows = rows_of(stream_of(tokenizer, texts), cfg["seq"])
        dataset = [{"input_ids": torch.tensor(r, dtype=torch.long)} for r in rows]

        def collate(batch):
            ids = torch.stack([b["input_ids"] for b in batch])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

        t = time.perf_counter()
        sub = GPT2LMHeadSubModel(cfg["model"], **split)  # config only, random init
        out["build_sub_s"] = time.perf_counter() - t
        out["trainable"] = [n for n, p in sub.named_parameters() if p.requires_grad]
        out["frozen"] = [n for n, p in sub.named_parameters() if not p.requires_grad]
        # FATE's TrainingArguments defaults (fate.ml.nn.trainer.trainer_base._TrainingArguments):
        # lr_scheduler_type constant, save_strategy no, logging_strategy epoch, use_cpu true; the
        # rest are transformers 4.37.2's (optim adamw_torch, betas 0.9/0.999, eps 1e-8,
        # weight_decay 0, max_grad_norm 1.0, warmup 0, seed 42). Only what the job needs is set.
        args = Seq2SeqTrainingArguments(
            output_dir=os.path.join(cfg["work"], "hf-client"),
            max_steps=cfg["steps"],
            per_device_train_batch_size=cfg["batch"],
            learning_rate=cfg["lr"],
            logging_strategy="steps",  # every step, to keep the training loss of each
            logging_steps=1,
            report_to=[],
            log_level="warning",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=cfg["seed"],
        )
        step_s, t0 = [], [0.0]

        class StepTimer(transformers.TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                t0[0] = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                step_s.append(time.perf_counter() - t0[0])

        client = OffsiteTuningTrainerClient(
            ctx=ctx, model=sub, training_args=args, fed_args=FedArguments(), train_set=dataset,
            data_collator=collate, tokenizer=tokenizer, aggregate_model=False,
        )
        client.add_callback(StepTimer())
        t = time.perf_counter()
        client.train()  # on_train_begin gets `sub_model_para`, on_train_end puts the adapters
        out["client_train_s"] = time.perf_counter() - t
        opt = client.optimizer
        out["optimizer"] = {
            "class": type(opt).__module__ + "." + type(opt).__name__,
            "groups": [{k: v for k, v in g.items() if k != "params"} | {"tensors": len(g["params"])}
                       for g in opt.param_groups],
        }
        out["scheduler"] = type(client.lr_scheduler).__name__
        out["args"] = {k: getattr(args, k) for k in ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2",
                                                     "adam_epsilon", "max_grad_norm", "lr_scheduler_type",
                                                     "warmup_steps", "optim", "gradient_accumulation_steps",
                                                     "per_device_train_batch_size", "max_steps", "seed")}
        out["args"]["optim"] = str(out["args"]["optim"])
        out["args"]["lr_scheduler_type"] = str(out["args"]["lr_scheduler_type"])
        out["train_loss"] = [h["loss"] for h in client.state.log_history if "loss" in h]
        out["step_s"] = step_s
        out["rows"] = len(rows)
        up = sub.get_submodel_weights(with_emulator=False)  # what on_train_end puts
        out["up_keys"] = {k: (sorted(v) if isinstance(v, dict) else list(v.shape)) for k, v in up.items()}
        out["up_tensors"] = tensor_bytes(up)
        submodel = os.path.join(cfg["work"], "submodel")
        sub.model.save_pretrained(submodel, safe_serialization=True)
        copy_tokenizer(cfg["model"], submodel)
        out["submodel"] = submodel
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"], out["cpu_s"] = ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime
    out["federation"] = [{k: e[k] for k in ("dir", "name", "bytes", "split") if k in e} for e in _Count.events]
    out["finished"] = time.time()
    write_json(os.path.join(cfg["work"], f"party-{out['party']}.json"), out)


def cmd_fate(a):
    d = os.path.abspath(a.dir)
    work = os.path.join(d, f"fate-{a.tag}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    cfg = {
        "emulator": a.emulator, "top": a.top, "bottom": a.bottom, "lr": a.lr, "steps": a.steps,
        "batch": a.batch, "seq": a.seq, "threads": a.threads, "seed": a.seed, "work": work,
        "model": os.path.join(d, "model"), "train": os.path.join(d, "data", "train.jsonl"),
    }
    os.environ["OFFSITE_CMP"] = json.dumps(cfg)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(a.threads)
    sys.argv = [sys.argv[0], "--parties", "guest:9999", "arbiter:9999", "--data_dir", os.path.join(work, "lmdb"),
                "--log_level", "WARNING"]
    from fate.arch.launchers.multiprocess_launcher import launch

    start = time.time()
    code = 0
    try:
        launch(_fate_party)
    except SystemExit as e:  # the launcher ends with exit(code), after a 10 s grace sleep
        code = e.code or 0
    if code:
        raise SystemExit(f"offsite_fate: FATE's launcher exited {code}")
    parties = {p: load_json(os.path.join(work, f"party-{p}.json")) for p in ("arbiter", "client")}
    cl, ar = parties["client"], parties["arbiter"]
    steps = cl["step_s"]
    result = {
        "threads": a.threads, "cfg": cfg, "wall_s": max(p["finished"] for p in parties.values()) - start,
        "parties": parties,
        "s_per_step": sum(steps) / len(steps),
        "s_per_step_after_first": sum(steps[1:]) / max(1, len(steps) - 1),
        "messages": {"down": [e for e in ar["federation"] if e["dir"] == "out"],
                     "up": [e for e in cl["federation"] if e["dir"] == "out"]},
    }
    write_json(a.out, result)
    print(json.dumps({"threads": a.threads, "s_per_step": result["s_per_step"], "wall_s": result["wall_s"]}))


# ---- eval ------------------------------------------------------------------------------------


def cmd_eval(a):
    data = os.path.join(a.dir, "data", "eval.jsonl")
    result = {}
    for m in a.models:  # LABEL=MODEL_DIR
        label, model_dir = m.split("=", 1)
        result[label] = {"dir": model_dir, "transformers": hf_eval(model_dir, data, a.seq)}
        if a.fedllm:
            run = subprocess.run([a.fedllm, "eval", "--model", model_dir, "--data", data, "--seq", str(a.seq)],
                                 capture_output=True, text=True)
            if run.returncode == 0:
                result[label]["fedllm_eval"] = json.loads(run.stdout.strip().splitlines()[-1])
            else:
                result[label]["fedllm_eval_error"] = (run.stderr or run.stdout).strip()[-400:]
    write_json(a.out, result)
    print(json.dumps({k: v["transformers"]["loss"] for k, v in result.items()}))


# ---- report ----------------------------------------------------------------------------------


def cmd_report(a):
    runs = [load_json(p) for p in a.runs]
    best = min(runs, key=lambda r: r["s_per_step"])
    ev = load_json(a.eval)
    prep = load_json(a.prepare)
    cl, ar = best["parties"]["client"], best["parties"]["arbiter"]

    def total(groups):
        return sum(g["bytes"] for g in groups.values())

    down_msg = sum(e["bytes"] for e in best["messages"]["down"] if e["name"] == "sub_model_para")
    up_msg = sum(e["bytes"] for e in best["messages"]["up"] if e["name"] == "trained_sub_model_para")
    full_file = os.path.getsize(os.path.join(prep["model"], "model.safetensors"))
    result = {
        "system": "FATE-LLM 2.2.0 (fate_llm.model_zoo.offsite_tuning.gpt2, fate_llm.algo.offsite_tuning)",
        "model": prep,
        "split": {"layers": ar["layers"], "adapter_bottom": ar["adapter_bottom_blocks"],
                  "emulator": ar["emulator_blocks"], "adapter_top": ar["adapter_top_blocks"]},
        "job": {k: best["cfg"][k] for k in ("steps", "batch", "seq", "lr", "seed")} | {"optimizer": cl["optimizer"],
                "scheduler": cl["scheduler"], "training_args": cl["args"], "rows": cl["rows"]},
        "trainable": cl["trainable"],
        "frozen_count": len(cl["frozen"]),
        "bytes": {
            "down_message": down_msg,
            "down_tensors": total(ar["down_tensors"]),
            "down_tensors_by_group": ar["down_tensors"],
            "up_message": up_msg,
            "up_tensors": total(cl["up_tensors"]),
            "up_tensors_by_group": cl["up_tensors"],
            "full_model_param_bytes": ar["full_model_param_bytes"],
            "full_model_safetensors_file": full_file,
            "all_messages": best["messages"],
        },
        "s_per_step": {f"{r['threads']} thread(s)": r["s_per_step"] for r in runs},
        "s_per_step_after_first": {f"{r['threads']} thread(s)": r["s_per_step_after_first"] for r in runs},
        "fastest_threads": best["threads"],
        "train_loss": cl["train_loss"],
        "eval": ev,
        "peak_rss_mb": {"client": cl["peak_rss_mb"], "arbiter": ar["peak_rss_mb"]},
        "wall_s": best["wall_s"],
    }
    if a.machine and os.path.exists(a.machine):
        with open(a.machine) as f:
            result["machine"] = f.read().strip().splitlines()
    write_json(a.out, result)

    mb = lambda b: f"{b / 1e6:.2f} MB ({b} B)"
    lines = [
        "| FATE-LLM 2.2.0 offsite-tuning, GPT-2 "
        f"{ar['layers']} x {prep['config']['n_embd']} (vocab {prep['config']['vocab_size']}) | value |",
        "|---|---|",
        f"| split | bottom {ar['adapter_bottom_blocks']}, emulator {ar['emulator_blocks']}, top {ar['adapter_top_blocks']} |",
        f"| down once, `sub_model_para` (pickled message) | {mb(down_msg)} |",
        f"| down, tensor bytes | {mb(total(ar['down_tensors']))} |",
        f"| up once, `trained_sub_model_para` (pickled message) | {mb(up_msg)} |",
        f"| up, tensor bytes | {mb(total(cl['up_tensors']))} |",
        f"| full model, fp32 parameter bytes (tied head once) | {mb(ar['full_model_param_bytes'])} |",
    ]
    for r in runs:
        lines.append(f"| s / step, {r['threads']} thread(s) (mean of {len(r['parties']['client']['step_s'])}) "
                     f"| {r['s_per_step']:.4f} (after the first: {r['s_per_step_after_first']:.4f}) |")
    for label, name in (("full", "full model, zero-shot"), ("submodel", "emulator + tuned adapters"),
                        ("plugged", "full model + tuned adapters plugged in")):
        e = ev[label]
        fl = f"; fedllm eval {e['fedllm_eval']['loss']:.4f}" if "fedllm_eval" in e else ""
        lines.append(f"| eval loss, {name} | {e['transformers']['loss']:.4f}{fl} |")
    lines.append(f"| train loss, first / last step | {cl['train_loss'][0]:.4f} / {cl['train_loss'][-1]:.4f} |")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("prepare")
    q.add_argument("--init", required=True, help="a `fedllm init-model --arch gpt2` folder (config, tokenizer)")
    q.add_argument("--text", required=True)
    q.add_argument("--corpus", default="fortunes")
    q.add_argument("--out", required=True)
    q.add_argument("--layers", type=int, default=12)
    q.add_argument("--rows", type=int, default=120)
    q.add_argument("--seq", type=int, default=64)
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("fate")
    q.add_argument("--dir", required=True)
    q.add_argument("--emulator", type=int, default=4)
    q.add_argument("--top", type=int, default=2)
    q.add_argument("--bottom", type=int, default=2)
    q.add_argument("--steps", type=int, default=30)
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--seq", type=int, default=64)
    q.add_argument("--lr", type=float, default=1e-4)
    q.add_argument("--seed", type=int, default=42)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--tag", default="1")
    q.add_argument("--out", required=True)
    q = sub.add_parser("eval")
    q.add_argument("--dir", required=True)
    q.add_argument("--seq", type=int, default=64)
    q.add_argument("--fedllm")
    q.add_argument("--out", required=True)
    q.add_argument("models", nargs="+", help="LABEL=MODEL_DIR")
    q = sub.add_parser("report")
    q.add_argument("--prepare", required=True)
    q.add_argument("--eval", required=True)
    q.add_argument("--machine")
    q.add_argument("--out", required=True)
    q.add_argument("runs", nargs="+", help="results of `fate`, one a thread count")
    a = p.parse_args()
    {"prepare": cmd_prepare, "fate": cmd_fate, "eval": cmd_eval, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
