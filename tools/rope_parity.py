"""Writes the RoPE parity fixtures tests/fixtures/rope/<case>/, which tests/test_rope.c checks
without Python: tiny LLaMA and Qwen2 models with each rotary scaling fedllm implements, as
transformers 5 saves them, and the logits, losses, frequencies and greedy generations transformers
computes from them in float32.

Each case folder holds:
  model/              transformers' save_pretrained of a tiny random model (config.json in
                      transformers 5's layout: rope_parameters {rope_theta, rope_type, ...} and no
                      top-level rope_theta; model.safetensors; generation_config.json)
  legacy-config.json  the same config in transformers 4's layout (top-level rope_theta, rope_scaling
                      {type|rope_type, factor, ...}); transformers 5 writes only the new layout, so
                      this one is written here from it, and checked to give transformers the very
                      same logits as the saved one
  expect.safetensors  for each pass k (k = 0, 1): input_ids.k (I32, (B, T)), logits.k (F32,
                      (B, T, V)), loss.k (F32, ()), inv_freq.k (F32, (HD/2,): the rotary embedding's
                      inv_freq after that pass) and attention_scaling.k (F32, ()); and a greedy
                      generation through the key/value cache: gen_prompt (I32, (1, P)), gen_tokens
                      (I32, (1, K)) and gen_logits (F32, (K, V)), the logits of each step

Pass 0 is short (B = 2, T = 12); pass 1 is one sequence longer than max_position_embeddings (or
original_max_position_embeddings) wherever the context allows it, so that dynamic NTK actually
rescales and the other scalings meet positions past the pre-training context. Every reference is
computed on a freshly loaded model: transformers' dynamic rotary embedding remembers the longest
pass it has seen, and fedllm's tables depend on the pass alone (docs/parity.md).

usage: tools/rope_parity.sh [--update]   (or .venv-rope/bin/python tools/rope_parity.py --out DIR)
Deterministic: torch.manual_seed per case; configs are built in code; nothing is downloaded.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHT_STD = 0.08  # as tools/hf_parity.py: every weight visibly moves the logits
SHAPE = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, bos_token_id=None, eos_token_id=None)
# head_dim 16: eight frequencies, enough for LLaMA 3's three bands and YaRN's ramp to show.

# family, seed, max_position_embeddings, rope_parameters, the legacy rope_scaling's type key,
# the long pass's length, the generation's prompt and new tokens.
CASES = {
    # the bug report's two cases: theta only in rope_parameters
    "llama-default": dict(family="llama", seed=21, max_pos=48,
                          rope={"rope_type": "default", "rope_theta": 500000.0},
                          type_key=None, long_T=48, gen=(8, 8)),
    "qwen2-default": dict(family="qwen2", seed=22, max_pos=48,
                          rope={"rope_type": "default", "rope_theta": 1000000.0},
                          type_key=None, long_T=48, gen=(8, 8)),
    "llama-linear": dict(family="llama", seed=23, max_pos=16,
                         rope={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                         type_key="type", long_T=56, gen=(10, 12)),
    # max_position 16, context 64: pass 1 (40) and the generation (10 + 14) cross 16
    "llama-dynamic": dict(family="llama", seed=24, max_pos=16,
                          rope={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
                          type_key="type", long_T=40, gen=(10, 14)),
    # wavelengths 6.3 (kept), 19.9 (ramp), 63 and up (divided by 8) against 32/4 and 32/1
    "llama-llama3": dict(family="llama", seed=25, max_pos=96,
                         rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                               "rope_theta": 10000.0},
                         type_key="rope_type", long_T=96, gen=(24, 12)),
    # Qwen2.5's long-context recipe in small: max_position == original, factor 4, defaults
    # (beta 32/1, truncate, attention_factor 0.1 ln 4 + 1); correction range 0..2
    "qwen2-yarn": dict(family="qwen2", seed=26, max_pos=64,
                       rope={"rope_type": "yarn", "factor": 4.0,
                             "original_max_position_embeddings": 64, "rope_theta": 1000000.0},
                       type_key="type", long_T=160, gen=(56, 16)),
    # every YaRN option: betas, mscale / mscale_all_dim, no truncation (ramp 0.81..2.62)
    "llama-yarn": dict(family="llama", seed=27, max_pos=2048,
                       rope={"rope_type": "yarn", "factor": 8.0,
                             "original_max_position_embeddings": 256, "beta_fast": 16.0,
                             "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                             "truncate": False, "rope_theta": 10000.0},
                       type_key="rope_type", long_T=300, gen=(250, 12)),
}
SHORT_B, SHORT_T = 2, 12


def make_config(case):
    cls = LlamaConfig if case["family"] == "llama" else Qwen2Config
    extra = {"tie_word_embeddings": case["family"] == "qwen2"}
    return cls(max_position_embeddings=case["max_pos"], rope_parameters=copy.deepcopy(case["rope"]),
               **SHAPE, **extra)


def randomize(model, std):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, std)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)


def load(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


def legacy_config(saved, case):
    """transformers 4's layout of the saved config: rope_theta at the top, the rest under
    rope_scaling (null for the default rope), the type under the case's key."""
    cfg = json.loads(saved)
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    rope_type = rope.pop("rope_type")
    cfg["rope_scaling"] = None if rope_type == "default" else dict(rope, **{case["type_key"]:
                                                                           rope_type})
    if case["family"] == "qwen2" and rope_type == "default":
        del cfg["rope_scaling"]  # Qwen2 checkpoints of transformers 4 often leave it out
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def forward(path, ids):
    """Logits, loss and the rotary state after one pass, on a fresh model."""
    model = load(path)
    with torch.no_grad():
        out = model(input_ids=ids.long(), labels=ids.long())
    rotary = model.model.rotary_emb
    return (out.logits.float().contiguous(), out.loss.float().reshape(()),
            rotary.inv_freq.float().clone(), torch.tensor(float(rotary.attention_scaling)))


def generate(path, prompt, new_tokens):
    model = load(path)
    with torch.no_grad():
        # the mask is explicit: generate would otherwise take every pad_token_id in the prompt
        # for padding and shift the positions after it
        out = model.generate(prompt.long(), attention_mask=torch.ones_like(prompt.long()),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    tokens = out.sequences[:, prompt.shape[1]:].to(torch.int32)
    return tokens.contiguous(), torch.cat([x.float() for x in out.logits]).contiguous()


def write_case(name, out):
    case = CASES[name]
    folder = os.path.join(out, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    torch.manual_seed(case["seed"])
    model = AutoModelForCausalLM.from_config(make_config(case), dtype=torch.float32)
    randomize(model, WEIGHT_STD)
    model_dir = os.path.join(folder, "model")
    model.save_pretrained(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = f.read()
    saved_cfg = json.loads(saved)
    assert "rope_theta" not in saved_cfg and "rope_parameters" in saved_cfg, \
        "expected transformers 5's layout"
    with open(os.path.join(folder, "legacy-config.json"), "w") as f:
        f.write(legacy_config(saved, case))

    gen = torch.Generator().manual_seed(case["seed"])
    vocab = SHAPE["vocab_size"]
    passes = [torch.randint(0, vocab, (SHORT_B, SHORT_T), generator=gen),
              torch.randint(0, vocab, (1, case["long_T"]), generator=gen)]
    tensors = {}
    with tempfile.TemporaryDirectory() as legacy_dir:
        for f in os.listdir(model_dir):
            os.symlink(os.path.abspath(os.path.join(model_dir, f)), os.path.join(legacy_dir, f))
        os.remove(os.path.join(legacy_dir, "config.json"))
        shutil.copyfile(os.path.join(folder, "legacy-config.json"),
                        os.path.join(legacy_dir, "config.json"))
        for k, ids in enumerate(passes):
            ids = ids.to(torch.int32)
            logits, loss, inv_freq, scaling = forward(model_dir, ids)
            legacy_logits = forward(legacy_dir, ids)[0]
            assert torch.equal(logits, legacy_logits), f"{name}: the legacy layout reads otherwise"
            tensors.update({f"input_ids.{k}": ids, f"logits.{k}": logits, f"loss.{k}": loss,
                            f"inv_freq.{k}": inv_freq, f"attention_scaling.{k}": scaling})
            print(f"{name} pass {k}: T {ids.shape[1]}, loss {float(loss):.6f}, attention scaling "
                  f"{float(scaling):.6f}, max |logit| {float(logits.abs().max()):.3g}")
    prompt_len, new_tokens = case["gen"]
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=gen).to(torch.int32)
    tokens, step_logits = generate(model_dir, prompt, new_tokens)
    tensors.update({"gen_prompt": prompt, "gen_tokens": tokens, "gen_logits": step_logits})
    save_file(tensors, os.path.join(folder, "expect.safetensors"),
              # one key: safetensors writes a metadata map in no fixed order
              metadata={"made_by": f"transformers {transformers.__version__}, torch "
                                   f"{torch.__version__.split('+')[0]}"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "rope"))
    parser.add_argument("cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in args.cases:
        if name not in CASES:
            sys.exit(f"unknown case {name} (expected {', '.join(CASES)})")
        write_case(name, os.path.abspath(args.out))


if __name__ == "__main__":
    main()
