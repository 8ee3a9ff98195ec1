"""What tools/fedkseed_fate.py and tools/offsite_fate.py share: JSON(L) files, and the rows
fedllm cuts from text records (so that both systems train and evaluate on the same tokens),
evaluated with transformers."""
import json


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


def stream_of(tokenizer, texts):
    """The token stream fedllm builds from text records: each record's ids, then EOS."""
    eos = tokenizer.eos_token_id
    ids = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return ids


def rows_of(stream, seq):
    """Windows of seq + 1 tokens overlapping by one; the tail is dropped (as fedllm does)."""
    if len(stream) < seq + 1:
        raise SystemExit(f"a stream of {len(stream)} tokens is shorter than one row of {seq + 1}")
    return [stream[r * seq : r * seq + seq + 1] for r in range((len(stream) - 1) // seq)]


def hf_eval(model_dir, data, seq, batch=8):
    """transformers' mean next-token loss of a GPT-2 directory over data's rows."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    rows = rows_of(stream_of(tok, [r["text"] for r in read_jsonl(data)]), seq)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            ids = torch.tensor(rows[i : i + batch], dtype=torch.long)
            logits = model(ids[:, :-1]).logits.double()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total, count = total + loss.item(), count + ids[:, 1:].numel()
    return {"loss": total / count, "tokens": count, "rows": len(rows), "layers": model.config.n_layer}
