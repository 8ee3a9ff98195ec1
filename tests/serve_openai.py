"""serve_openai.py — checks a running `fedllm serve` with the official openai package (run by
tests/cli_serve_openai.sh, which starts the server of models/base with --api-key and
--max-tokens 480 and writes the expected texts into DIR).

usage: serve_openai.py BASE_URL API_KEY DIR

Log-probs are compared with a tolerance of 1e-4 between a stream and the whole answer of the same
request (the same one-row decodes of the same binary: fp32 logits of size ~10, which a different
summation order would move by ~1e-5 at most), and 1e-6 between a token's log-prob and the first
alternative's under greedy decoding (the same float, printed twice).
"""

import math
import os
import sys

import openai

base_url, api_key, scratch = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
passed = 0
failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAILED: {name} {detail}", file=sys.stderr)


def expected(name):
    with open(os.path.join(scratch, name)) as f:
        return f.read().rstrip("\n")


def raises(name, exc_type, call):
    """Runs call; returns the exception of exc_type it raised, or None (a failed check)."""
    try:
        call()
    except exc_type as e:
        check(name, True)
        return e
    except Exception as e:  # the wrong class: say which
        check(name, False, f"raised {type(e).__name__}: {e}")
        return None
    check(name, False, f"did not raise {exc_type.__name__}")
    return None


PROMPT = "It was a dark and stormy"
CHAT = [{"role": "user", "content": "Hello there"}]

# ---- models, completions, usage ----------------------------------------------------------------
check("models", "base" in [m.id for m in client.models.list().data])
r = client.completions.create(model="base", prompt=PROMPT, max_tokens=24, temperature=0)
text = r.choices[0].text
check("greedy completion equals fedllm generate", text == expected("want_completion.txt"),
      f"{text!r} against {expected('want_completion.txt')!r}")
check("usage", r.usage.prompt_tokens == int(expected("want_prompt_tokens.txt")) and
      r.usage.completion_tokens == 24 and r.usage.total_tokens == r.usage.prompt_tokens + 24 and
      r.choices[0].finish_reason == "length", str(r.usage))
check("completion object", r.object == "text_completion" and r.id.startswith("cmpl-"), r.id)

# ---- chat ------------------------------------------------------------------------------------------
c = client.chat.completions.create(model="base", messages=CHAT, max_tokens=24, temperature=0)
answer = c.choices[0].message.content
check("greedy chat equals fedllm generate --chat", answer == expected("want_chat.txt"),
      f"{answer!r} against {expected('want_chat.txt')!r}")
check("chat object", c.object == "chat.completion" and c.choices[0].message.role == "assistant"
      and c.choices[0].finish_reason in ("stop", "length"), str(c))

# ---- streams add up to the whole answer -------------------------------------------------------------
parts, finishes, usage = [], [], None
for chunk in client.completions.create(model="base", prompt=PROMPT, max_tokens=24, temperature=0,
                                       stream=True, stream_options={"include_usage": True}):
    if chunk.usage:
        usage = chunk.usage
    for ch in chunk.choices:
        parts.append(ch.text)
        if ch.finish_reason:
            finishes.append(ch.finish_reason)
check("completion stream", "".join(parts) == text and finishes == ["length"],
      f"{''.join(parts)!r} {finishes}")
check("stream usage", usage is not None and usage.completion_tokens == 24, str(usage))
parts, finishes = [], []
for chunk in client.chat.completions.create(model="base", messages=CHAT, max_tokens=24,
                                            temperature=0, stream=True):
    for ch in chunk.choices:
        parts.append(ch.delta.content or "")
        if ch.finish_reason:
            finishes.append(ch.finish_reason)
check("chat stream", "".join(parts) == answer and finishes == [c.choices[0].finish_reason],
      f"{''.join(parts)!r} {finishes}")

# ---- n, seeds -------------------------------------------------------------------------------------
kw = dict(model="base", prompt="In the morning", max_tokens=12, temperature=1, seed=11, n=3)
a, b = client.completions.create(**kw), client.completions.create(**kw)
all_length = all(ch.finish_reason == "length" for ch in a.choices)
check("n 3", sorted(ch.index for ch in a.choices) == [0, 1, 2] and
      (a.usage.completion_tokens == 36 if all_length else a.usage.completion_tokens < 36), str(a))
check("the same seed, the same choices", [ch.text for ch in a.choices] == [ch.text for ch in b.choices])
check("choices draw apart", len({ch.text for ch in a.choices}) > 1, str([ch.text for ch in a.choices]))

# ---- errors as the client's exceptions ----------------------------------------------------------------
wrong = openai.OpenAI(base_url=base_url, api_key="not-" + api_key, max_retries=0, timeout=30)
e = raises("wrong key", openai.AuthenticationError,
           lambda: wrong.completions.create(model="base", prompt="a", max_tokens=2))
if e:
    check("wrong key: 401", e.status_code == 401, str(e))
e = raises("max_tokens over the limit", openai.BadRequestError,
           lambda: client.completions.create(model="base", prompt="a", max_tokens=481))
if e:
    check("max_tokens: the message", e.param == "max_tokens" and
          e.body["message"] == "'max_tokens' is 481: this server allows at most 480", str(e.body))
raises("another model", openai.NotFoundError,
       lambda: client.completions.create(model="gpt-4", prompt="a", max_tokens=2))
for name, call in [
    ("logprobs 6", lambda: client.completions.create(model="base", prompt="a", logprobs=6)),
    ("top_logprobs 21", lambda: client.chat.completions.create(
        model="base", messages=CHAT, logprobs=True, top_logprobs=21)),
    ("top_logprobs without logprobs", lambda: client.chat.completions.create(
        model="base", messages=CHAT, top_logprobs=2)),
]:
    e = raises(name, openai.BadRequestError, call)
    if e:
        check(name + ": param", e.param == name.split()[0], f"{e.param}: {e.message}")

# ---- log-probs ----------------------------------------------------------------------------------
r = client.completions.create(model="base", prompt=PROMPT, max_tokens=24, temperature=0, logprobs=3)
lp = r.choices[0].logprobs
n = len(lp.tokens)
check("completion log-probs: the text is unchanged", r.choices[0].text == text)
check("completion log-probs: one per token", n == r.usage.completion_tokens and
      len(lp.token_logprobs) == n and len(lp.top_logprobs) == n and len(lp.text_offset) == n)
check("completion log-probs: the tokens make the text", "".join(lp.tokens) == text, str(lp.tokens))
check("completion log-probs: offsets",
      lp.text_offset == [len("".join(lp.tokens[:k])) for k in range(n)], str(lp.text_offset))
check("completion log-probs: at most 0", all(x <= 0 for x in lp.token_logprobs) and
      all(v <= 0 for top in lp.top_logprobs for v in top.values()))
check("completion log-probs: a distribution",
      all(sum(math.exp(v) for v in top.values()) <= 1 + 1e-5 for top in lp.top_logprobs))
best = [max(top.items(), key=lambda kv: kv[1]) for top in lp.top_logprobs]
check("completion log-probs: greedy picks the first alternative",
      all(tok == lp.tokens[k] and abs(v - lp.token_logprobs[k]) < 1e-6
          for k, (tok, v) in enumerate(best)), f"{best} {lp.tokens}")

c = client.chat.completions.create(model="base", messages=CHAT, max_tokens=24, temperature=0,
                                   logprobs=True, top_logprobs=3)
content = c.choices[0].logprobs.content
check("chat log-probs: one per token", len(content) == c.usage.completion_tokens)
check("chat log-probs: the tokens make the answer",
      "".join(t.token for t in content) == c.choices[0].message.content == answer)
check("chat log-probs: bytes, order, greedy",
      all(bytes(t.bytes).decode() == t.token and len(t.top_logprobs) == 3 and
          t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6
          and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
          and t.logprob <= 0 for t in content))
streamed = []
for chunk in client.chat.completions.create(model="base", messages=CHAT, max_tokens=24,
                                            temperature=0, logprobs=True, top_logprobs=3,
                                            stream=True):
    for ch in chunk.choices:
        if ch.logprobs and ch.logprobs.content:
            streamed.extend(ch.logprobs.content)
check("chat log-probs streamed",
      [t.token for t in streamed] == [t.token for t in content] and
      all(abs(s.logprob - t.logprob) < 1e-4 for s, t in zip(streamed, content)),
      f"{[t.token for t in streamed]}")

print(f"serve_openai (openai {openai.__version__}): {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
