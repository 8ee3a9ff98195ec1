"""FedKSeed beside FATE-LLM 2.2.0: the same model directory, data, K, eps, lr, steps, batch, seq
and rounds through fedllm's `algorithm: fedkseed` and through FATE-LLM's own FedKSeed classes
(fate_llm.algo.fedkseed: ClientTrainer, the arbiter's Trainer, KSeedZOExtendedTrainer,
KSeedZerothOrderOptimizer) under FATE's multiprocess launcher, one process per party. This file
only drives and observes FATE-LLM: it imports and calls its classes and wraps a few of their
methods to time them and to count the bytes they hand to FATE's federation; it changes nothing
they compute. tools/fedkseed_fate.sh runs the whole comparison; docs/performance.md ("FedKSeed
beside FATE-LLM 2.2.0") has the results.

Subcommands (each writes JSON; all paths are under one work folder DIR):
  prepare  a byte-level BPE tokenizer (vocab 2048, the `tokenizers` library) trained on the
           clients' training text, a random-init GPT-2 (4 layers, 256 wide, 4 heads) saved by
           transformers with it into DIR/model, each client's training rows and one eval file
           for all (DIR/data/*.jsonl, fedllm's `data: {format: text}` records)
  fedllm   the job through `fedllm server` and one `fedllm client` per client, each a process of
           its own, so that each one's peak RSS comes from wait4
  fate     the job through FATE-LLM (1 arbiter, the clients as guest and hosts); the final
           global model is built as FATE-LLM's clients build theirs (a copy of the initial model,
           then fate_llm's directional_derivative_step for every seed's summed scalar) from the
           sums the arbiter ends with, and saved with save_pretrained
  eval     `fedllm eval` and a transformers evaluation of the same rows for each model given
  report   the markdown table of the results

Text rows are cut as fedllm cuts them (src/train/data.c): every record's ids followed by EOS,
one stream, windows of T + 1 tokens that overlap by one, the tail dropped. FATE-LLM's trainer
gets those same windows as input_ids with labels = input_ids (transformers shifts them), so both
systems compute the mean loss over the same T targets of a row.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

from fate_common import hf_eval, read_jsonl, rows_of, stream_of, write_json, write_jsonl


# ---- prepare ---------------------------------------------------------------------------------


def cmd_prepare(a):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    clients = a.clients.split(",")
    train = {c: [r["text"] for r in read_jsonl(os.path.join(a.text, f"{c}.train.jsonl"))] for c in clients}
    evals = {c: [r["text"] for r in read_jsonl(os.path.join(a.text, f"{c}.eval.jsonl"))] for c in clients}

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=a.vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([t for c in clients for t in train[c]], trainer=trainer)
    eot = "<|endoftext|>"
    hf_tok = GPT2TokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)

    model_dir = os.path.join(a.out, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    torch.manual_seed(a.seed)
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=max(128, a.seq + 1),
        n_embd=256,
        n_layer=4,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=hf_tok.eos_token_id,
        eos_token_id=hf_tok.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(model_dir, safe_serialization=True)
    hf_tok.save_pretrained(model_dir)

    data_dir = os.path.join(a.out, "data")
    os.makedirs(data_dir, exist_ok=True)
    need = a.rows * a.seq + 1  # tokens for `rows` rows
    summary = {"model": model_dir, "vocab": tok.get_vocab_size(), "clients": {}}
    for c in clients:
        kept, ids = [], []
        for t in train[c]:
            kept.append(t)
            ids.extend(hf_tok(t, add_special_tokens=False)["input_ids"])
            ids.append(hf_tok.eos_token_id)
            if len(ids) >= need:
                break
        if len(ids) < need:
            raise SystemExit(f"fedkseed_fate: {c} has {len(ids)} tokens, {need} needed")
        write_jsonl(os.path.join(data_dir, f"{c}.train.jsonl"), [{"text": t} for t in kept])
        summary["clients"][c] = {"records": len(kept), "tokens": len(ids), "rows": (len(ids) - 1) // a.seq}
    # One eval file for every client: the clients' eval records interleaved.
    mixed, longest = [], max(len(v) for v in evals.values())
    for i in range(longest):
        mixed.extend({"text": evals[c][i]} for c in clients if i < len(evals[c]))
    write_jsonl(os.path.join(data_dir, "eval.jsonl"), mixed)
    eval_ids = stream_of(hf_tok, [r["text"] for r in mixed])
    summary["eval"] = {"records": len(mixed), "rows": len(rows_of(eval_ids, a.seq))}
    summary["parameters"] = sum(p.numel() for p in GPT2LMHeadModel.from_pretrained(model_dir).parameters())
    write_json(os.path.join(a.out, "prepare.json"), summary)
    print(json.dumps(summary))


# ---- fedllm ----------------------------------------------------------------------------------


def cmd_fedllm(a):
    d = os.path.abspath(a.dir)
    clients = a.clients.split(",")
    # One job name for every run: the candidate seeds derive from it (and train.seed), so runs
    # differ only in their thread count; each run has its own output folder.
    name = "zo-cmp"
    keys = os.path.join(d, "keys")
    os.makedirs(keys, exist_ok=True)
    for party in ["server"] + clients:
        if not os.path.exists(os.path.join(keys, party + ".key")):
            subprocess.run([a.fedllm, "keygen", "--out", os.path.join(keys, party)], check=True,
                           stdout=subprocess.DEVNULL)
    lines = [
        f"job: {name}",
        "algorithm: fedkseed",
        "model: {path: model}",
        f"train: {{rounds: {a.rounds}, batch: {a.batch}, seq: {a.seq}, seed: 1}}",
        f"fedkseed: {{k: {a.k}, eps: {a.eps}, lr: {a.lr}, steps_per_round: {a.steps}, pro: true, "
        "bias_loss_clip: 1000, grad_clip: 0, weight_decay: 0}",
        "data: {format: text}",
        f"aggregation: {{min_clients: {len(clients)}, round_deadline_s: 600}}",
        f'server: {{address: "tcp://127.0.0.1:{a.port}", key: keys/server}}',
        "clients:",
    ]
    for c in clients:
        lines.append(f"  - {{name: {c}, key: keys/{c}, train: data/{c}.train.jsonl, eval: data/eval.jsonl}}")
    lines.append(f"output: runs/{name}-{a.tag}")
    job = os.path.join(d, f"{name}-{a.tag}.yaml")
    with open(job, "w") as f:
        f.write("\n".join(lines) + "\n")
    out = os.path.join(d, "runs", f"{name}-{a.tag}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    procs = {}
    start = time.time()
    for party in ["server"] + clients:
        argv = [a.fedllm, "server", job] if party == "server" else [a.fedllm, "client", job, "--name", party]
        log = open(os.path.join(out, f"{party}.console"), "w")
        procs[party] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    rss_kb, status, cpu_s = {}, {}, {}
    pending = {p.pid: party for party, p in procs.items()}
    while pending:
        pid, st, ru = os.wait4(-1, 0)
        if pid in pending:
            party = pending.pop(pid)
            rss_kb[party], status[party] = ru.ru_maxrss, os.waitstatus_to_exitcode(st)
            cpu_s[party] = ru.ru_utime + ru.ru_stime
            procs[party].returncode = status[party]
    wall = time.time() - start
    if any(status.values()):
        raise SystemExit(f"fedkseed_fate: fedllm parties exited {status} (see {out}/*.console)")

    result = {"system": "fedllm", "threads": a.threads, "wall_s": wall, "clients": {}}
    for c in clients:
        metrics = read_jsonl(os.path.join(out, c, "metrics.jsonl"))
        rounds = [m for m in metrics if "seconds_training" in m]
        per_round = {}
        for side, path in (("up", os.path.join(out, c, "outbox.jsonl")),
                           ("down", os.path.join(out, "server", "outbox.jsonl"))):
            for m in read_jsonl(path):
                if m.get("dtype") != "MESSAGE" or m.get("peer") != (c if side == "down" else "server"):
                    continue
                r = m.get("round", -1)
                key = str(r) if r >= 1 else "outside rounds"
                per_round.setdefault(key, {"up": 0, "down": 0})[side] += m["bytes"]
        steps = sum(m["steps"] for m in rounds)
        train_s = sum(m["seconds_training"] for m in rounds)
        result["clients"][c] = {
            "peak_rss_mb": rss_kb[c] / 1024,
            "cpu_s": cpu_s[c],
            "steps": steps,
            "seconds_training": [m["seconds_training"] for m in rounds],
            "s_per_step": train_s / steps,
            "bytes_per_round": per_round,
            "eval_loss_per_round": [m.get("eval_loss") for m in rounds],
        }
    result["server_peak_rss_mb"], result["server_cpu_s"] = rss_kb["server"] / 1024, cpu_s["server"]
    result["model"] = os.path.join(out, "server", "model")
    summary = os.path.join(out, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            result["summary"] = json.load(f)
    write_json(a.out, result)
    print(json.dumps({k: result[k] for k in ("system", "threads", "wall_s")}))


# ---- fate ------------------------------------------------------------------------------------


class _Count:
    """Bytes this party hands to, and takes from, FATE's standalone federation (the pickled
    messages FATE writes into and reads from its LMDB mailboxes), in call order."""

    events = []

    @classmethod
    def install(cls):
        from fate.arch.federation.backends.standalone._federation import StandaloneFederation

        push_bytes, pull_bytes = StandaloneFederation._push_bytes, StandaloneFederation._pull_bytes
        push_table, pull_table = StandaloneFederation._push_table, StandaloneFederation._pull_table

        def counted_push(self, v, name, tag, parties):
            cls.events.append({"dir": "up", "name": name, "tag": tag, "bytes": len(v) * len(parties)})
            return push_bytes(self, v, name, tag, parties)

        def counted_pull(self, name, tag, parties):
            got = pull_bytes(self, name, tag, parties)
            size = sum(len(g) if isinstance(g, (bytes, bytearray)) else -1 for g in got)
            cls.events.append({"dir": "down", "name": name, "tag": tag, "bytes": size})
            return got

        def flagged_push_table(self, table, name, tag, parties):
            cls.events.append({"dir": "up", "name": name, "tag": tag, "bytes": None, "table": True})
            return push_table(self, table, name, tag, parties)

        def flagged_pull_table(self, name, tag, parties, table_metas):
            cls.events.append({"dir": "down", "name": name, "tag": tag, "bytes": None, "table": True})
            return pull_table(self, name, tag, parties, table_metas)

        StandaloneFederation._push_bytes = counted_push
        StandaloneFederation._pull_bytes = counted_pull
        StandaloneFederation._push_table = flagged_push_table
        StandaloneFederation._pull_table = flagged_pull_table


class _Watched:
    """A client as the arbiter's Trainer sees it (ctx.guest / ctx.hosts[i]), passing put and get
    through and keeping what they carried, so the driver knows the sums the arbiter ends with."""

    def __init__(self, party, index, log):
        self._party, self._index, self._log = party, index, log

    def put(self, name, value):
        return self._party.put(name, value)

    def get(self, name):
        value = self._party.get(name)
        if name == "direction_derivative_history":
            self._log.append((self._index, {int(s): [float(g) for g in h] for s, h in value.items()}))
        return value


def _timed(cls, method, sink):
    original = getattr(cls, method)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - t)

    setattr(cls, method, wrapper)


def _fate_party(ctx):
    """Runs in each party process that FATE's launcher spawns."""
    import torch

    cfg = json.loads(os.environ["FEDKSEED_CMP"])
    _Count.install()
    from fate_llm.algo.fedkseed import fedkseed as fk
    from fate_llm.algo.fedkseed.zo_utils import build_seed_candidates

    fed_args = fk.FedKSeedTrainingArguments(
        k=cfg["k"], eps=cfg["eps"], grad_clip=-100.0, num_aggregations=cfg["rounds"], bias_loss_clip=1000.0
    )
    out = {"party": None, "started": time.time()}
    if ctx.is_on_arbiter:
        torch.set_num_threads(1)
        out["party"] = "arbiter"
        received = []

        class WatchedTrainer(fk.Trainer):
            def get_clients(self, sub_ctx):
                return [_Watched(p, i, received) for i, p in enumerate(fk.Trainer.get_clients(sub_ctx))]

        torch.manual_seed(cfg["seed"])
        candidates = build_seed_candidates(fed_args.k, low=0, high=2**32)
        server = WatchedTrainer(ctx=ctx, seed_candidates=candidates, args=None, fedkseed_args=fed_args)
        server.train()
        # The sums as the arbiter's loop forms them: per seed, in the candidates' order, each
        # client's sum(history) added in the order the arbiter read them.
        sums = {s.item(): 0.0 for s in candidates}
        for _, history in received:
            for s, h in history.items():
                sums[s] += sum(h)
        out["sums"] = [[s, g] for s, g in sums.items()]
        out["received"] = [[i, {str(s): h for s, h in hist.items() if h}] for i, hist in received]
        out["k_distinct"] = len(set(sums))
    else:
        import transformers

        torch.set_num_threads(cfg["threads"])
        # --parties lists guest, then the hosts, then the arbiter: rank i is client i, and the
        # arbiter's Trainer.get_clients lists them in the same order.
        rank = int(sys.argv[sys.argv.index("--rank") + 1])
        name = cfg["clients"][rank]
        out["party"] = name
        tokenizer = transformers.AutoTokenizer.from_pretrained(cfg["model"])
        with open(cfg["train"][rank], encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
        rows = rows_of(stream_of(tokenizer, texts), cfg["seq"])
        dataset = [{"input_ids": torch.tensor(r, dtype=torch.long)} for r in rows]

        def collate(batch):
            ids = torch.stack([b["input_ids"] for b in batch])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

        from fate_llm.trainer.seq2seq_trainer import Seq2SeqTrainingArguments
        from fate_llm.algo.fedkseed.optimizer import KSeedZerothOrderOptimizer

        args = Seq2SeqTrainingArguments(
            output_dir=os.path.join(cfg["work"], f"hf-{name}"),
            max_steps=cfg["steps"],
            per_device_train_batch_size=cfg["batch"],
            learning_rate=cfg["lr"],
            weight_decay=0.0,
            warmup_steps=0,
            max_grad_norm=0.0,  # no gradients exist to clip; 0 spares the Trainer the pass
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            log_level="warning",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=cfg["seed"],
        )
        model = transformers.GPT2LMHeadModel.from_pretrained(cfg["model"])
        timings = {"train_once": [], "hf_train": [], "zo_step": [], "replay_seed": []}
        _timed(fk.ClientTrainer, "train_once", timings["train_once"])
        _timed(fk.KSeedZOExtendedTrainer, "train", timings["hf_train"])
        _timed(KSeedZerothOrderOptimizer, "kseed_zeroth_order_step", timings["zo_step"])
        replay = fk.directional_derivative_step  # the name train_once's replay calls

        def timed_replay(*args, **kwargs):
            t = time.perf_counter()
            try:
                return replay(*args, **kwargs)
            finally:
                timings["replay_seed"].append(time.perf_counter() - t)

        fk.directional_derivative_step = timed_replay
        client = fk.ClientTrainer(
            ctx=ctx,
            model=model,
            fedkseed_args=fed_args,
            training_args=args,
            train_dataset=dataset,
            eval_dataset=None,
            data_collator=collate,
            tokenizer=tokenizer,
        )
        t = time.perf_counter()
        client.train()
        out["client_train_s"] = time.perf_counter() - t
        out["rows"] = len(rows)
        out["timings"] = timings
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"], out["cpu_s"] = ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime
    out["federation"] = _Count.events
    out["finished"] = time.time()
    write_json(os.path.join(cfg["work"], f"party-{out['party']}.json"), out)


def cmd_fate(a):
    import glob

    d = os.path.abspath(a.dir)
    work = os.path.join(d, f"fate-{a.tag}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    clients = a.clients.split(",")
    cfg = {
        "k": a.k, "eps": a.eps, "lr": a.lr, "steps": a.steps, "batch": a.batch, "seq": a.seq,
        "rounds": a.rounds, "threads": a.threads, "seed": 1, "work": work,
        "model": os.path.join(d, "model"), "clients": clients,
        "train": [os.path.join(d, "data", f"{c}.train.jsonl") for c in clients],
    }
    os.environ["FEDKSEED_CMP"] = json.dumps(cfg)
    # Each party's OpenMP/MKL team is sized before torch loads in the spawned processes.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(a.threads)
    parties = ["guest:9999"] + [f"host:{10000 + i}" for i in range(len(clients) - 1)] + ["arbiter:9999"]
    mailbox = os.path.join(work, "lmdb")
    sys.argv = [sys.argv[0], "--parties", *parties, "--data_dir", mailbox, "--log_level", "WARNING"]
    from fate.arch.launchers.multiprocess_launcher import launch

    start = time.time()
    code = 0
    try:
        launch(_fate_party)
    except SystemExit as e:  # the launcher ends with exit(code), after a 10 s grace sleep
        code = e.code or 0
    wall = time.time() - start
    if code:
        raise SystemExit(f"fedkseed_fate: FATE's launcher exited {code}")
    parties_out = {}
    for path in glob.glob(os.path.join(work, "party-*.json")):
        with open(path) as f:
            p = json.load(f)
        parties_out[p["party"]] = p

    # The final global model: what a FATE-LLM client would rebuild at the start of the next round.
    import torch
    import transformers
    from fate_llm.algo.fedkseed.pytorch_utils import get_optimizer_parameters_grouped_with_decay
    from fate_llm.algo.fedkseed.zo_utils import directional_derivative_step

    torch.set_num_threads(a.threads)
    arbiter = parties_out["arbiter"]
    model = transformers.GPT2LMHeadModel.from_pretrained(cfg["model"])
    groups = get_optimizer_parameters_grouped_with_decay(model, 0.0)
    applied = 0
    t = time.perf_counter()
    for seed, grad in arbiter["sums"]:
        if grad != 0.0:
            directional_derivative_step(groups, seed, grad, lr=a.lr, weight_decay=0.0)
            applied += 1
    final_replay_s = time.perf_counter() - t
    model_dir = os.path.join(work, "model")
    model.save_pretrained(model_dir, safe_serialization=True)
    for n in os.listdir(cfg["model"]):
        if n.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            shutil.copy(os.path.join(cfg["model"], n), model_dir)

    # The launcher sleeps 10 s after the last party returns before it exits: the job's own time
    # is start to the last party's end.
    wall_parties = max(p["finished"] for p in parties_out.values()) - start
    result = {"system": "FATE-LLM 2.2.0", "threads": a.threads, "wall_s": wall_parties, "launcher_exit_s": wall,
              "final_replay": {"seeds": applied, "s": final_replay_s},
              "model": model_dir, "arbiter_peak_rss_mb": arbiter["peak_rss_mb"],
              "arbiter_cpu_s": arbiter["cpu_s"], "clients": {}}
    # The seeds each client drew, per round (the arbiter's record of the histories).
    drawn = {}
    for i, hist in arbiter["received"]:
        drawn.setdefault(clients[i], []).append(sorted((int(s), len(h)) for s, h in hist.items()))
    result["same_seeds_drawn_by_all_clients"] = all(drawn[c] == drawn[clients[0]] for c in clients)
    result["distinct_seeds_per_round"] = {c: [len(r) for r in drawn[c]] for c in clients}
    result["distinct_seeds_in_job"] = {c: len({s for r in drawn[c] for s, _ in r}) for c in clients}
    result["distinct_seeds_in_job_all_clients"] = len({s for c in clients for r in drawn[c] for s, _ in r})
    for c in clients:
        p = parties_out[c]
        ups = [e for e in p["federation"] if e["dir"] == "up"]
        downs = [e for e in p["federation"] if e["dir"] == "down"]
        per_round = {str(r + 1): {"up": ups[r]["bytes"], "down": downs[r]["bytes"]} for r in range(a.rounds)}
        tm = p["timings"]
        steps = len(tm["zo_step"])
        result["clients"][c] = {
            "peak_rss_mb": p["peak_rss_mb"],
            "cpu_s": p["cpu_s"],
            "steps": steps,
            "rows": p["rows"],
            "hf_train_s": tm["hf_train"],
            "train_once_s": tm["train_once"],
            "s_per_step": sum(tm["hf_train"]) / steps,
            "s_per_zo_step_only": sum(tm["zo_step"]) / steps,
            "replay_seeds": len(tm["replay_seed"]),
            "replay_s": sum(tm["replay_seed"]),
            "bytes_per_round": per_round,
            "messages": [{k: e[k] for k in ("dir", "name", "bytes")} for e in p["federation"]],
        }
    write_json(a.out, result)
    print(json.dumps({k: result[k] for k in ("system", "threads", "wall_s", "same_seeds_drawn_by_all_clients")}))


# ---- eval ------------------------------------------------------------------------------------


def cmd_eval(a):
    data = os.path.join(a.dir, "data", "eval.jsonl")
    result = {}
    models = []
    for m in a.models:  # a result file of `fedllm` or `fate` (its final model), or LABEL=DIR
        if "=" in m:
            models.append(m.split("=", 1))
        else:
            with open(m) as f:
                models.append((os.path.basename(m)[: -len(".json")], json.load(f)["model"]))
    for label, model_dir in models:
        run = subprocess.run([a.fedllm, "eval", "--model", model_dir, "--data", data, "--seq", str(a.seq)],
                             check=True, capture_output=True, text=True)
        result[label] = {"fedllm_eval": json.loads(run.stdout.strip().splitlines()[-1]),
                         "transformers_eval": hf_eval(model_dir, data, a.seq, 8)}
    write_json(a.out, result)
    print(json.dumps(result))


# ---- report ----------------------------------------------------------------------------------


def cmd_report(a):
    """The table of docs/performance.md from one timing pass: each system at its fastest thread
    count (of the runs given), both final models evaluated by the same evaluators."""

    def load(path):
        with open(path) as f:
            return json.load(f)

    def mean(xs):
        return sum(xs) / len(xs)

    def fastest(paths):
        runs = [(load(p), os.path.basename(p)[: -len(".json")]) for p in paths]
        for r, tag in runs:
            r["tag"] = tag
        return min(runs, key=lambda rt: mean([c["s_per_step"] for c in rt[0]["clients"].values()]))[0], runs

    ev = load(a.eval)
    fl, fl_all = fastest(a.fedllm)
    ft, ft_all = fastest(a.fate)

    def per_client(r, key):
        return mean([c[key] for c in r["clients"].values()])

    def round_bytes(r, side):
        return [v[side] for c in r["clients"].values() for k, v in c["bytes_per_round"].items()
                if k != "outside rounds"]

    def loss(r, evaluator):
        return ev[r["tag"]][evaluator]["loss"]

    rows = [
        ("seconds per zeroth-order step, per client", per_client(ft, "s_per_step"), per_client(fl, "s_per_step"), "%.3f"),
        ("bytes per client per round, up (mean)", mean(round_bytes(ft, "up")), mean(round_bytes(fl, "up")), "%.0f"),
        ("bytes per client per round, down (mean)", mean(round_bytes(ft, "down")), mean(round_bytes(fl, "down")), "%.0f"),
        ("bytes per client per round, both ways (largest round)",
         max(u + d for u, d in zip(round_bytes(ft, "up"), round_bytes(ft, "down"))),
         max(u + d for u, d in zip(round_bytes(fl, "up"), round_bytes(fl, "down"))), "%.0f"),
        ("peak RSS per client, MB", per_client(ft, "peak_rss_mb"), per_client(fl, "peak_rss_mb"), "%.0f"),
        ("CPU seconds per client (whole job)", per_client(ft, "cpu_s"), per_client(fl, "cpu_s"), "%.1f"),
        ("eval loss of the final model, `fedllm eval`", loss(ft, "fedllm_eval"), loss(fl, "fedllm_eval"), "%.4f"),
        ("eval loss of the final model, transformers", loss(ft, "transformers_eval"), loss(fl, "transformers_eval"), "%.4f"),
        ("job wall time (start to exit), s", ft["wall_s"], fl["wall_s"], "%.1f"),
    ]
    print(f"| | FATE-LLM 2.2.0 ({ft['threads']} thread a client) | fedllm ({fl['threads']} thread a client) | FATE / fedllm |")
    print("|---|---|---|---|")
    for label, x, y, fmt in rows:
        print(f"| {label} | {fmt % x} | {fmt % y} | {x / y:.2f} |")
    print()
    for r, tag in fl_all + ft_all:
        print(f"- {tag}: {r['system']}, {r['threads']} thread(s) a client: "
              f"{per_client(r, 's_per_step'):.3f} s a step, wall {r['wall_s']:.1f} s, "
              f"final eval loss {loss(r, 'fedllm_eval'):.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def job_args(q):
        q.add_argument("--dir", required=True)
        q.add_argument("--clients", default="fortunes,kjv")
        q.add_argument("--rounds", type=int, default=3)
        q.add_argument("--steps", type=int, default=30)
        q.add_argument("--batch", type=int, default=4)
        q.add_argument("--seq", type=int, default=64)
        q.add_argument("--k", type=int, default=4096)
        q.add_argument("--eps", type=float, default=1e-3)
        q.add_argument("--lr", type=float, default=1e-4)
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--tag", default="1")
        q.add_argument("--out", required=True)

    q = sub.add_parser("prepare")
    q.add_argument("--text", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--clients", default="fortunes,kjv")
    q.add_argument("--rows", type=int, default=120)
    q.add_argument("--seq", type=int, default=64)
    q.add_argument("--vocab", type=int, default=2048)
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("fedllm")
    job_args(q)
    q.add_argument("--fedllm", required=True)
    q.add_argument("--port", type=int, default=7841)
    q = sub.add_parser("fate")
    job_args(q)
    q = sub.add_parser("eval")
    q.add_argument("--dir", required=True)
    q.add_argument("--fedllm", required=True)
    q.add_argument("--seq", type=int, default=64)
    q.add_argument("--out", required=True)
    q.add_argument("models", nargs="+", help="RESULT.json (its final model) or LABEL=MODEL_DIR")
    q = sub.add_parser("report")
    q.add_argument("--fedllm", nargs="+", required=True, help="fedllm result files")
    q.add_argument("--fate", nargs="+", required=True, help="FATE-LLM result files")
    q.add_argument("--eval", required=True)
    a = p.parse_args()
    {"prepare": cmd_prepare, "fedllm": cmd_fedllm, "fate": cmd_fate, "eval": cmd_eval, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
