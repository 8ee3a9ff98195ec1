"""InferDPT measured (docs/inferdpt.md): privacy and utility of fedllm's runs, and fedllm's
RANTEXT beside FATE-LLM 2.2.0's own (fate_llm.algo.inferdpt.utils.InferDPTKit.perturb) on the
same kit. Run by tools/inferdpt_measure.sh, which makes everything this reads.

usage: inferdpt_measure.py WORK FEDLLM_BINARY

WORK holds kit/ (fedllm's kit), docs.jsonl, ids-EPS-SEED.jsonl (`fedllm inferdpt perturb --ids`
of the docs) and run-EPS/results.jsonl (`fedllm inferdpt run`). Prints markdown tables and
writes WORK/results.json.
"""
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
from rouge_score import rouge_scorer
from transformers import PreTrainedTokenizerFast

from fate_llm.algo.inferdpt.utils import InferDPTKit  # FATE-LLM 2.2.0's own code

EPSILONS = ["1", "3", "6", "inf"]


def read_kit(path):
    """fedllm's kit.bin (src/infer/kit.c's layout)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"FLDPTKIT"
    version, n, dim, k, vocab, sbytes = struct.unpack_from("<6I", data, 8)
    at = 32
    ids = np.frombuffer(data, "<i4", n, at); at += 4 * n
    ends = np.frombuffer(data, "<u4", n, at); at += 4 * n
    block = data[at:at + sbytes]; at += sbytes
    strings, start = [], 0
    for e in ends:
        strings.append(block[start:e].decode("utf-8")); start = int(e)
    emb = np.frombuffer(data, "<f4", n * dim, at).reshape(n, dim); at += 4 * n * dim
    delta_f = np.frombuffer(data, "<f4", dim, at); at += 4 * dim
    return dict(n=n, dim=dim, k=k, vocab=vocab, ids=ids, strings=strings, emb=emb,
                delta_f=delta_f)


def unit_rows(emb):
    e = emb.astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-300)


def inversion(work, kit, eps, seeds):
    """Nearest-neighbour inversion: for each kit token of the docs, the attacker takes the kit
    tokens nearest (cosine) to the token it sees; recovered@1 when the nearest is the original
    (that is, the token was kept), @10 when the original is among the ten nearest."""
    slot = {int(t): i for i, t in enumerate(kit["ids"])}
    unit = unit_rows(kit["emb"])
    total = in_kit = kept = top10 = 0
    for seed in seeds:
        with open(os.path.join(work, f"ids-{eps}-{seed}.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                for a, b in zip(r["ids"], r["perturbed"]):
                    total += 1
                    if a not in slot:
                        continue
                    in_kit += 1
                    kept += a == b
                    sims = unit @ unit[slot[b]]
                    near = np.argpartition(-sims, 10)[:10]
                    top10 += slot[a] in near
    return dict(tokens=total, in_kit=in_kit, recovered1=kept / in_kit, recovered10=top10 / in_kit,
                all_tokens_recovered=(total - in_kit + kept) / total)


def rouge_l(work, field, eps, scorer):
    def load(e):
        with open(os.path.join(work, f"run-{e}", "results.jsonl")) as f:
            return [json.loads(l)[field] for l in f]
    ref, got = load("inf"), load(eps)
    # two empty texts agree (rouge-score scores them 0)
    return float(np.mean([1.0 if r.strip() == g.strip() == "" else
                          scorer.score(r, g)["rougeL"].fmeasure for r, g in zip(ref, got)]))


def rouge_shifted(work, field, scorer):
    """Chance level: each ε=∞ text against the next document's."""
    with open(os.path.join(work, "run-inf", "results.jsonl")) as f:
        texts = [json.loads(l)[field] for l in f]
    other = texts[1:] + texts[:1]
    return float(np.mean([scorer.score(a, b)["rougeL"].fmeasure for a, b in zip(texts, other)]))


def rouge_docs(work, eps, scorer):
    """The perturbed documents against the originals."""
    with open(os.path.join(work, f"run-{eps}", "results.jsonl")) as f:
        recs = [json.loads(l) for l in f]
    return float(np.mean([scorer.score(r["text"], r["perturbed_doc"])["rougeL"].fmeasure
                          for r in recs]))


def empty_share(work, field, eps):
    with open(os.path.join(work, f"run-{eps}", "results.jsonl")) as f:
        texts = [json.loads(l)[field] for l in f]
    return sum(1 for t in texts if not t.strip()) / len(texts)


def fate_kit(kit, tok):
    """FATE-LLM's InferDPTKit over the same tokens: its three tables, with every token's complete
    sorted list (what FATE-LLM's JSON holds), made in memory rather than through its JSON."""
    unit = unit_rows(kit["emb"])
    sims = unit @ unit.T
    order = np.argsort(-sims, axis=1, kind="stable")
    strings = kit["strings"]
    token_to_vector = {s: kit["emb"][i].astype(np.float64).tolist() for i, s in enumerate(strings)}
    sorted_sims = {}
    for i, s in enumerate(strings):
        o = order[i]
        sorted_sims[s] = [[strings[j] for j in o], sims[i, o].tolist()]
    return InferDPTKit(token_to_vector, sorted_sims, kit["delta_f"].astype(np.float64), tok)


def rank_groups(kit, i, counts, groups=12):
    """A distribution over kit tokens grouped by similarity rank to token i (itself alone)."""
    unit = unit_rows(kit["emb"])
    sims = unit @ unit[i]
    sims[i] = 2.0
    rank = np.empty(kit["n"], int)
    rank[np.argsort(-sims, kind="stable")] = np.arange(kit["n"])
    per = (kit["n"] - 1 + groups - 2) // (groups - 1)
    out = np.zeros(groups)
    for j, c in counts.items():
        out[0 if rank[j] == 0 else 1 + (rank[j] - 1) // per] += c
    return out / max(out.sum(), 1)


def fedllm_counts(binary, work, kit, path, eps, seed):
    """How often `fedllm inferdpt perturb` turned each record of path into each kit token."""
    out = subprocess.run([binary, "inferdpt", "perturb", "--kit", os.path.join(work, "kit"),
                          "--in", path, "--jsonl", "text", "--ids", "--epsilon", eps,
                          "--seed", str(seed)], check=True, capture_output=True, text=True)
    counts = {}
    for line in out.stdout.splitlines():
        p = json.loads(line)["perturbed"]
        j = int(np.searchsorted(kit["ids"], p[0])) if len(p) == 1 else -1
        if 0 <= j < kit["n"] and kit["ids"][j] == p[0]:
            counts[j] = counts.get(j, 0) + 1
    return counts


def compare_distributions(work, binary, kit, fkit, tok, eps_list, draws=5000):
    """One kit token perturbed `draws` times by each implementation: total variation between
    the two output distributions (over 12 similarity-rank groups) and P(kept)."""
    rows = []
    picks = [kit["n"] // 5, kit["n"] // 2, (4 * kit["n"]) // 5]
    slot_of = {s: i for i, s in enumerate(kit["strings"])}
    for eps in eps_list:
        for i in picks:
            word = kit["strings"][i]
            text = tok.convert_tokens_to_string([word])
            path = os.path.join(work, "one-token.jsonl")
            with open(path, "w") as f:
                for _ in range(draws):
                    f.write(json.dumps({"text": text}) + "\n")
            ours = fedllm_counts(binary, work, kit, path, eps, 11)
            np.random.seed(11)
            theirs, lost = {}, 0
            for _ in range(draws):
                toks = tok.tokenize(fkit.perturb(text, float(eps)))
                if len(toks) == 1 and toks[0] in slot_of:
                    j = slot_of[toks[0]]
                    theirs[j] = theirs.get(j, 0) + 1
                else:
                    lost += 1  # decoded text that re-tokenizes into other tokens
            ours2 = fedllm_counts(binary, work, kit, path, eps, 12)
            a, b = rank_groups(kit, i, ours), rank_groups(kit, i, theirs)
            a2 = rank_groups(kit, i, ours2)
            rows.append(dict(epsilon=eps, token=word, tv=float(np.abs(a - b).sum() / 2),
                             tv_floor=float(np.abs(a - a2).sum() / 2),
                             kept_fedllm=a[0], kept_fate=b[0], fate_retokenized=lost / draws,
                             ours_counted=sum(ours.values()) / draws))
    return rows


def speed(work, binary, kit, fkit, docs, eps_list, repeat=20):
    """Kit tokens perturbed per second over the docs (repeat times), one thread each."""
    rows = []
    docs = docs * repeat
    path = os.path.join(work, "docs-repeated.jsonl")
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    slot = set(int(t) for t in kit["ids"])
    for eps in eps_list:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t0 = time.perf_counter()
        out = subprocess.run([binary, "inferdpt", "perturb", "--kit", os.path.join(work, "kit"),
                              "--in", path, "--jsonl", "text",
                              "--ids", "--epsilon", eps, "--seed", "1"], env=env, check=True,
                             capture_output=True, text=True)
        ours_s = time.perf_counter() - t0
        in_kit = sum(sum(1 for a in json.loads(l)["ids"] if a in slot)
                     for l in out.stdout.splitlines())
        np.random.seed(1)
        t0 = time.perf_counter()
        for d in docs:
            fkit.perturb(d, float(eps))
        fate_s = time.perf_counter() - t0
        rows.append(dict(epsilon=eps, kit_tokens=in_kit, fedllm_s=ours_s, fate_s=fate_s,
                         fedllm_per_s=in_kit / ours_s, fate_per_s=in_kit / fate_s))
    return rows


def main():
    work, binary = sys.argv[1], sys.argv[2]
    kit = read_kit(os.path.join(work, "kit", "kit.bin"))
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(work, "kit", "tokenizer.json"))
    with open(os.path.join(work, "docs.jsonl")) as f:
        docs = [json.loads(l)["text"] for l in f]
    seeds = [int(s) for s in os.environ.get("SEEDS", "1 2 3").split()]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    res = dict(kit=dict(n=kit["n"], dim=kit["dim"], k=kit["k"], vocab=kit["vocab"]), rows=[])
    print(f"kit: {kit['n']} whole-word tokens of {kit['vocab']}, {kit['dim']} dimensions; "
          f"{len(docs)} documents\n")
    print("| ε | kit tokens replaced | recovered @1 | recovered @10 | all tokens recovered "
          "| ROUGE-L perturbed doc vs doc | ROUGE-L answer vs ε=∞ | ROUGE-L remote response vs ε=∞ |")
    print("|---|---|---|---|---|---|---|---|")
    for eps in EPSILONS:
        inv = inversion(work, kit, eps, seeds)
        row = dict(epsilon=eps, **inv,
                   rouge_doc=rouge_docs(work, eps, scorer),
                   rouge_answer=rouge_l(work, "inferdpt_result", eps, scorer),
                   rouge_response=rouge_l(work, "perturbed_response", eps, scorer))
        res["rows"].append(row)
        print(f"| {eps} | {1 - inv['recovered1']:.3f} | {inv['recovered1']:.3f} | "
              f"{inv['recovered10']:.3f} | {inv['all_tokens_recovered']:.3f} | "
              f"{row['rouge_doc']:.3f} | {row['rouge_answer']:.3f} | {row['rouge_response']:.3f} |")
    res["local_alone_rouge"] = rouge_l(work, "inferdpt_result", "local", scorer)
    res["empty_answers_inf"] = empty_share(work, "inferdpt_result", "inf")
    res["empty_responses_inf"] = empty_share(work, "perturbed_response", "inf")
    res["chance_answer"] = rouge_shifted(work, "inferdpt_result", scorer)
    res["chance_response"] = rouge_shifted(work, "perturbed_response", scorer)
    print(f"| local model alone (no remote) | | | | | | {res['local_alone_rouge']:.3f} | |")
    print(f"| chance (another document's, ε=∞) | | | | | | {res['chance_answer']:.3f} | "
          f"{res['chance_response']:.3f} |")
    print(f"\nempty at ε=∞: {res['empty_answers_inf']:.2f} of answers, "
          f"{res['empty_responses_inf']:.2f} of remote responses")
    t0 = time.perf_counter()
    fkit = fate_kit(kit, tok)
    res["fate_kit_build_s"] = time.perf_counter() - t0
    fkit.save_to_path(os.path.join(work, "fate-kit"))  # FATE-LLM's own files, for their size
    fate_dir = os.path.join(work, "fate-kit", "inferdpt_kit")
    res["fate_kit_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                                os.walk(fate_dir) for f in fs)
    res["fedllm_kit_bytes"] = sum(os.path.getsize(os.path.join(work, "kit", f))
                                  for f in os.listdir(os.path.join(work, "kit")))
    print(f"\nFATE-LLM's InferDPTKit over the same {kit['n']} tokens "
          f"({kit['n'] ** 2:,} similarity pairs) built in {res['fate_kit_build_s']:.1f} s; "
          f"its files (save_to_path) {res['fate_kit_bytes']:,} bytes, fedllm's kit "
          f"{res['fedllm_kit_bytes']:,} bytes (tokenizer files included in both)\n")
    res["distribution"] = compare_distributions(work, binary, kit, fkit, tok, ["1", "3", "6"])
    print("| ε | token | TV(fedllm, FATE-LLM) | TV(fedllm, fedllm other seed) | P(kept) fedllm "
          "| P(kept) FATE-LLM | FATE outputs re-tokenized otherwise |")
    print("|---|---|---|---|---|---|---|")
    for r in res["distribution"]:
        print(f"| {r['epsilon']} | `{r['token']}` | {r['tv']:.3f} | {r['tv_floor']:.3f} | "
              f"{r['kept_fedllm']:.3f} | "
              f"{r['kept_fate']:.3f} | {r['fate_retokenized']:.3f} |")
    res["speed"] = speed(work, binary, kit, fkit, docs, ["1", "3", "6"])
    print("\n| ε | kit tokens | fedllm s (whole process) | FATE-LLM s | fedllm kit tokens/s | "
          "FATE-LLM kit tokens/s |")
    print("|---|---|---|---|---|---|")
    for r in res["speed"]:
        print(f"| {r['epsilon']} | {r['kit_tokens']} | {r['fedllm_s']:.3f} | {r['fate_s']:.3f} | "
              f"{r['fedllm_per_s']:.0f} | {r['fate_per_s']:.0f} |")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
