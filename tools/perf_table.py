#!/usr/bin/python3
"""Joins bench/engine's JSONL rows and tools/bench_torch.py's JSON into one markdown table:
fedllm and PyTorch tokens/s and peak RSS per (model, mode, T), with the ratio fedllm / PyTorch.

usage: perf_table.py FEDLLM.jsonl TORCH.json [--title TEXT]
"""
import json
import sys


def main():
    args = sys.argv[1:]
    title = None
    if "--title" in args:
        i = args.index("--title")
        title = args[i + 1]
        del args[i:i + 2]
    fed_path, torch_path = args
    fed = {}
    with open(fed_path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                fed[(r["model"], r["mode"], r["T"])] = r
    with open(torch_path) as f:
        doc = json.load(f)
    torch_rows = {(r["model"], r["mode"], r["T"]): r for r in doc["rows"]}
    if title:
        print(f"#### {title}\n")
    print("| model | mode | B | T | fedllm tok/s | PyTorch tok/s | ratio | fedllm peak MB | PyTorch peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(set(fed) | set(torch_rows)):
        a, b = fed.get(key), torch_rows.get(key)
        ftps = f"{a['tokens_per_s']:.1f}" if a else "–"
        ttps = f"{b['tokens_per_s']:.1f}" if b else "–"
        ratio = f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}×" if a and b else "–"
        frss = f"{a['peak_rss_mb']:.0f}" if a else "–"
        trss = f"{b['peak_rss_mb']:.0f}" if b else "–"
        B = (a or b)["B"]
        print(f"| {key[0]} | {key[1]} | {B} | {key[2]} | {ftps} | {ttps} | {ratio} | {frss} | {trss} |")
    if doc["rows"]:
        r = doc["rows"][0]
        print(f"\nPyTorch {r.get('torch_version')} ({r.get('dtype')}), BLAS: {r.get('blas')}")


if __name__ == "__main__":
    main()
