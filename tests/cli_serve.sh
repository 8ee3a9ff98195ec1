#!/usr/bin/env bash
# cli_serve.sh — `fedllm serve` as an OpenAI client (curl) uses it: the models list, greedy
# completions equal to `fedllm generate`, chat, streaming whose chunks add up to the whole answer,
# eight concurrent streams (on four slots: they queue, join and leave) that each get exactly the
# text they get alone, log-probs (whole, streamed, chat), the API key, errors in OpenAI's shape
# with their status codes while the server keeps serving, a client that goes away mid-stream or
# while it waits for a whole answer, and SIGTERM.
# usage: cli_serve.sh FEDLLM_BINARY SCRATCH_DIR   (from the repository root)
set -u
. "$(dirname "$0")/serve_lib.sh"
bin=$1
dir=$2
model=$PWD/models/base
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*" >&2; }

serve_start "$bin" --model "$model" --max-batch 4 --api-key sekrit --max-tokens 480 --max-body 4096
url=http://127.0.0.1:$port
auth=(-H "Authorization: Bearer sekrit")

# post PATH JSON: the body to stdout, the status to status.txt
post() { curl -s -m 60 "${auth[@]}" -o body.json -w '%{http_code}' "$url$1" -d "$2" >status.txt; cat body.json; }

# expect_status NAME STATUS PARAM -- curl args: an OpenAI error object with that status
expect_status() {
  local name=$1 want=$2 param=$3
  shift 4
  local got
  got=$(curl -s -m 30 -o err.json -w '%{http_code}' "$@")
  if [ "$got" != "$want" ]; then bad "$name: status $got, expected $want ($(head -c 300 err.json))"; return; fi
  if ! jq -e '.error.message | type == "string"' err.json >/dev/null 2>&1; then
    bad "$name: not an OpenAI error object: $(head -c 300 err.json)"; return
  fi
  if [ -n "$param" ] && [ "$(jq -r .error.param err.json)" != "$param" ]; then
    bad "$name: error.param is $(jq -r .error.param err.json), expected $param"; return
  fi
  ok
}

# ---- the models list, and the key --------------------------------------------------------------
[ "$(curl -s "${auth[@]}" "$url/v1/models" | jq -r '.data[0].id')" = base ] && ok ||
  bad "/v1/models does not list 'base'"
expect_status "no key" 401 "" -- "$url/v1/models"
expect_status "wrong key" 401 "" -- -H "Authorization: Bearer sekrix" "$url/v1/models"
expect_status "wrong key, completion" 401 "" -- -H "Authorization: Bearer x" "$url/v1/completions" -d '{"prompt":"a"}'

# ---- greedy completions are `fedllm generate`'s --------------------------------------------------
prompts=("It was a dark and stormy" "The old man said" "In the morning" "She opened the door and"
         "There was once a" "My dear friend," "The ship sailed" "When the sun rose")
for i in 0 1 2; do
  p=${prompts[$i]}
  want=$("$bin" generate --model "$model" --prompt "$p" --max-tokens 24 --temperature 0 2>/dev/null)
  got=$(post /v1/completions "$(jq -nc --arg p "$p" '{model:"base",prompt:$p,max_tokens:24,temperature:0}')" | jq -r '.choices[0].text')
  [ "$got" = "$want" ] && ok || bad "completion of '$p': '$got', generate gives '$want'"
done
post /v1/completions '{"prompt":"The old man said","max_tokens":5,"temperature":0}' >/dev/null
jq -e '.object == "text_completion" and .usage.completion_tokens == 5 and
       .usage.total_tokens == .usage.prompt_tokens + 5 and .choices[0].finish_reason == "length"' \
  body.json >/dev/null && ok || bad "usage or finish_reason: $(cat body.json)"
# stop: the text ends before it
full=$(post /v1/completions '{"prompt":"It was a dark and stormy","max_tokens":24,"temperature":0}' | jq -r '.choices[0].text')
stop=${full:5:2}
cut=$(post /v1/completions "$(jq -nc --arg s "$stop" '{prompt:"It was a dark and stormy",max_tokens:24,temperature:0,stop:[$s]}')" | jq -r '.choices[0].text + "|" + .choices[0].finish_reason')
[ "$cut" = "${full%%"$stop"*}|stop" ] && ok || bad "stop '$stop': '$cut' from '$full'"
# seeded sampling: the same seed, the same text; n choices
a=$(post /v1/completions '{"prompt":"In the morning","max_tokens":16,"temperature":1,"seed":7}' | jq -r '.choices[0].text')
b=$(post /v1/completions '{"prompt":"In the morning","max_tokens":16,"temperature":1,"seed":7}' | jq -r '.choices[0].text')
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "seed 7 gave '$a' then '$b'"
[ "$(post /v1/completions '{"prompt":"In the morning","max_tokens":4,"n":3}' | jq '.choices | length')" = 3 ] && ok ||
  bad "n 3: $(cat body.json)"

# ---- chat, and streams that add up to the whole answer --------------------------------------------
chat='{"model":"base","messages":[{"role":"user","content":"Hello there"}],"max_tokens":20,"temperature":0}'
whole=$(post /v1/chat/completions "$chat" | jq -r '.choices[0].message.content')
jq -e '.object == "chat.completion" and .choices[0].message.role == "assistant"' body.json >/dev/null &&
  ok || bad "chat answer: $(cat body.json)"
curl -sN -m 60 "${auth[@]}" "$url/v1/chat/completions" \
  -d "$(echo "$chat" | jq -c '. + {stream: true}')" >stream.txt
[ "$(tail -n 2 stream.txt | head -n 1)" = "data: [DONE]" ] && ok || bad "the stream does not end with [DONE]"
streamed=$(grep '^data: {' stream.txt | sed 's/^data: //' | jq -j '.choices[0].delta.content // ""')
[ "$streamed" = "$whole" ] && ok || bad "chat stream '$streamed', whole '$whole'"
[ "$(grep '^data: {' stream.txt | sed 's/^data: //' | jq -r 'select(.choices[0].finish_reason != null) | .choices[0].finish_reason')" = length ] &&
  ok || bad "the stream's last chunk has no finish_reason"

# ---- log-probs -------------------------------------------------------------------------------------
# Greedy: the chosen token is the most likely, so its log-prob is the first alternative's (the same
# float, computed once); the texts of the tokens make up the text (this model's tokens are bytes
# and its greedy text is ASCII); the stream's records are the whole answer's. Between the stream
# and the whole answer the logits come from the same one-row decodes of the same binary, so they
# agree to far better than 1e-4 (fp32 logits of size ~10: a different summation order moves them
# by ~1e-5 at most).
lp_req='{"prompt":"The old man said","max_tokens":12,"temperature":0,"logprobs":3}'
plain=$(post /v1/completions "$(echo "$lp_req" | jq -c 'del(.logprobs)')" | jq -r '.choices[0].text')
post /v1/completions "$lp_req" >lp.json
jq -e --arg plain "$plain" '.choices[0] as $c | $c.logprobs as $l | ($l.tokens | length) as $n |
  $c.text == $plain and $n == .usage.completion_tokens and ($l.tokens | join("")) == $c.text and
  ($l.token_logprobs | length) == $n and ($l.top_logprobs | length) == $n and
  ($l.text_offset | length) == $n and
  all($l.token_logprobs[]; . <= 0) and all($l.top_logprobs[][]; . <= 0) and
  all(range($n); $l.text_offset[.] == ($l.tokens[:.] | join("") | length)) and
  all($l.top_logprobs[]; (length >= 1 and length <= 3) and ([.[] | exp] | add) <= 1 + 1e-5) and
  all(range($n); . as $k | $l.top_logprobs[$k] | to_entries | max_by(.value) |
      .key == $l.tokens[$k] and (.value - $l.token_logprobs[$k] | fabs) < 1e-6)' lp.json >/dev/null &&
  ok || bad "completion log-probs: $(cat lp.json)"
curl -sN -m 60 "${auth[@]}" "$url/v1/completions" -d "$(echo "$lp_req" | jq -c '. + {stream: true}')" |
  grep '^data: {' | sed 's/^data: //' | jq -s '[.[].choices[0].logprobs] |
  {tokens: map(.tokens[]), token_logprobs: map(.token_logprobs[]), text_offset: map(.text_offset[])}' >lp_stream.json
jq -e --slurpfile s lp_stream.json '.choices[0].logprobs as $l | $s[0] as $s |
  $s.tokens == $l.tokens and $s.text_offset == $l.text_offset and
  all(range($l.tokens | length); ($s.token_logprobs[.] - $l.token_logprobs[.] | fabs) < 1e-4) and
  (($s.token_logprobs | add) - ($l.token_logprobs | add) | fabs) < 1e-3' lp.json >/dev/null &&
  ok || bad "streamed log-probs differ: $(cat lp_stream.json) against $(jq -c .choices[0].logprobs lp.json)"
chat_lp=$(echo "$chat" | jq -c '. + {logprobs: true, top_logprobs: 2}')
post /v1/chat/completions "$chat_lp" >chat_lp.json
jq -e --arg whole "$whole" '.choices[0] as $c | $c.logprobs.content as $t |
  $c.message.content == $whole and ($t | length) == .usage.completion_tokens and
  ([$t[].token] | join("")) == $whole and
  all($t[]; .logprob <= 0 and (.bytes | implode) == .token and (.top_logprobs | length) == 2 and
      .top_logprobs[0].token == .token and (.top_logprobs[0].logprob - .logprob | fabs) < 1e-6 and
      .top_logprobs[0].logprob >= .top_logprobs[1].logprob)' chat_lp.json >/dev/null &&
  ok || bad "chat log-probs: $(cat chat_lp.json)"
curl -sN -m 60 "${auth[@]}" "$url/v1/chat/completions" -d "$(echo "$chat_lp" | jq -c '. + {stream: true}')" |
  grep '^data: {' | sed 's/^data: //' | jq -s '[.[].choices[0].logprobs.content[]?]' >chat_lp_stream.json
jq -e --slurpfile s chat_lp_stream.json '.choices[0].logprobs.content as $t | $s[0] as $s |
  ($s | map(.token)) == ($t | map(.token)) and
  all(range($t | length); ($s[.].logprob - $t[.].logprob | fabs) < 1e-4)' chat_lp.json >/dev/null &&
  ok || bad "streamed chat log-probs: $(cat chat_lp_stream.json)"
# sampled: the chosen token is any, never likelier than the most likely; top_logprobs 0: none
post /v1/chat/completions "$(echo "$chat" | jq -c '. + {temperature: 1, seed: 3, logprobs: true, top_logprobs: 0}')" >/dev/null
jq -e '.choices[0].logprobs.content | length > 0 and all(.[]; .logprob <= 0 and .top_logprobs == [])' \
  body.json >/dev/null && ok || bad "top_logprobs 0: $(cat body.json)"
post /v1/completions '{"prompt":"In the morning","max_tokens":16,"temperature":1,"seed":5,"logprobs":1}' >/dev/null
jq -e '.choices[0].logprobs as $l | all(range($l.tokens | length); . as $k |
  $l.token_logprobs[$k] <= ($l.top_logprobs[$k] | to_entries[0].value) + 1e-6)' body.json >/dev/null &&
  ok || bad "sampled log-probs: $(cat body.json)"

# ---- eight concurrent streams on four slots: each as alone --------------------------------------
for i in $(seq 0 7); do
  post /v1/completions "$(jq -nc --arg p "${prompts[$i]}" '{prompt:$p,max_tokens:32,temperature:0}')" |
    jq -r '.choices[0].text' >alone.$i
done
for i in $(seq 0 7); do
  curl -sN -m 120 "${auth[@]}" "$url/v1/completions" \
    -d "$(jq -nc --arg p "${prompts[$i]}" '{prompt:$p,max_tokens:32,temperature:0,stream:true}')" >conc.$i &
done
wait $(jobs -p | grep -v "^$server$") 2>/dev/null
for i in $(seq 0 7); do
  got=$(grep '^data: {' conc.$i | sed 's/^data: //' | jq -j '.choices[0].text')
  [ "$got" = "$(cat alone.$i)" ] && ok || bad "stream $i together: '$got', alone: '$(cat alone.$i)'"
done

# ---- bad requests: the right status, and the server keeps serving --------------------------------
c=(-H "Authorization: Bearer sekrit" "$url/v1/completions")
expect_status "malformed JSON" 400 "" -- "${c[@]}" -d '{"prompt": "a",'
expect_status "not an object" 400 "" -- "${c[@]}" -d '[1, 2]'
expect_status "temperature a string" 400 temperature -- "${c[@]}" -d '{"prompt":"a","temperature":"hot"}'
expect_status "max_tokens over the limit" 400 max_tokens -- "${c[@]}" -d '{"prompt":"a","max_tokens":481}'
expect_status "max_tokens 0" 400 max_tokens -- "${c[@]}" -d '{"prompt":"a","max_tokens":0}'
expect_status "no prompt" 400 prompt -- "${c[@]}" -d '{"max_tokens":3}'
long=$(head -c 600 /dev/zero | tr '\0' 'a')
expect_status "prompt longer than the context" 400 prompt -- "${c[@]}" -d "{\"prompt\":\"$long\",\"max_tokens\":4}"
expect_status "another model" 404 model -- "${c[@]}" -d '{"model":"gpt-4","prompt":"a"}'
expect_status "logprobs 6" 400 logprobs -- "${c[@]}" -d '{"prompt":"a","logprobs":6}'
expect_status "logprobs true, completion" 400 logprobs -- "${c[@]}" -d '{"prompt":"a","logprobs":true}'
hi='"messages":[{"role":"user","content":"hi"}]'
expect_status "top_logprobs 21" 400 top_logprobs -- "${auth[@]}" "$url/v1/chat/completions" \
  -d "{$hi,\"logprobs\":true,\"top_logprobs\":21}"
expect_status "top_logprobs without logprobs" 400 top_logprobs -- "${auth[@]}" "$url/v1/chat/completions" \
  -d "{$hi,\"top_logprobs\":2}"
expect_status "logprobs 2, chat" 400 logprobs -- "${auth[@]}" "$url/v1/chat/completions" \
  -d "{$hi,\"logprobs\":2}"
expect_status "body over the limit" 413 "" -- "${c[@]}" -d "{\"prompt\":\"$(head -c 5000 /dev/zero | tr '\0' 'a')\"}"
expect_status "unknown path" 404 "" -- "${auth[@]}" "$url/v1/embeddings" -d '{}'
expect_status "GET a POST path" 405 "" -- "${auth[@]}" "$url/v1/completions"
expect_status "chat without messages" 400 messages -- "${auth[@]}" "$url/v1/chat/completions" -d '{"messages":[]}'
expect_status "chat with an image part" 400 messages -- "${auth[@]}" "$url/v1/chat/completions" \
  -d '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}'

# ---- clients that go away mid-stream free their slots ---------------------------------------------
# each reads its first event and hangs up; 4 x 480 tokens each would keep the 4 slots busy
for i in 1 2 3 4 5; do
  (curl -sN -m 60 "${auth[@]}" "$url/v1/completions" \
    -d '{"prompt":"a","max_tokens":480,"n":4,"temperature":1,"stream":true}' 2>/dev/null | head -c 200 >/dev/null) &
done
wait $(jobs -p | grep -v "^$server$") 2>/dev/null
sleep 0.5
again=$(post /v1/completions '{"prompt":"It was a dark and stormy","max_tokens":24,"temperature":0}' | jq -r '.choices[0].text')
[ "$again" = "$full" ] && ok || bad "after clients went away: '$again', expected '$full'"
gone=$(grep -c "(the client went away)" serve.log)
[ "$gone" -eq 5 ] && ok || bad "$gone of 5 clients that hung up are logged as gone"
# they left early: fewer tokens than 4 x 480 each
grep "(the client went away)" serve.log | awk '{split($4, t, "+"); if (t[2] >= 1920) exit 1}' && ok ||
  bad "a client that hung up was served to the end: $(grep 'went away' serve.log)"
[ "$(grep -c '^POST /v1/completions 200 ' serve.log)" -ge 20 ] && ok || bad "one log line per request: $(tail -3 serve.log)"

# ---- a client that gives up on a whole (non-stream) answer frees its slots ------------------------
# 16 x 480 tokens on 4 slots: seconds of work (minutes under ASan) that nobody waits for
curl -s -m 1 "${auth[@]}" "$url/v1/completions" \
  -d '{"prompt":"a","max_tokens":480,"n":16,"temperature":1}' >/dev/null 2>&1
t0=$(date +%s.%N)
again=$(post /v1/completions '{"prompt":"It was a dark and stormy","max_tokens":24,"temperature":0}' | jq -r '.choices[0].text')
t1=$(date +%s.%N)
[ "$again" = "$full" ] && ok || bad "after a client gave up: '$again', expected '$full'"
# noticed within the poll (0.1 s) after curl's 1 s: the log line's ms; cancelled: its tokens
line=$(grep '^POST /v1/completions 499 ' serve.log)
echo "$line" | awk '/\(the client went away\)$/ {split($4, t, "+"); if (t[2] < 7680 && $6 < 3000) ok = 1}
  END {exit !ok}' && ok || bad "the client that gave up is not logged as gone early: '$line'"
awk -v a="$t0" -v b="$t1" 'BEGIN {exit !(b - a < 5)}' && ok ||
  bad "the request after a client gave up took $(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}') s"

kill -TERM "$server"
wait "$server"
rc=$?
[ "$rc" -eq 0 ] && grep -q "stopping (SIGTERM)" serve.log && ok || bad "SIGTERM: exit $rc: $(tail -2 serve.log)"
[ -s serve.out ] && bad "the server wrote to stdout" || ok

# ---- bad command lines -----------------------------------------------------------------------------
"$bin" serve --model "$model" --port 70000 >out.txt 2>err.txt
[ $? -eq 2 ] && grep -q -- "--port" err.txt && ok || bad "--port 70000: $(cat err.txt)"
"$bin" serve --model "$model" --host localhost >out.txt 2>err.txt
[ $? -eq 2 ] && grep -q -- "--host" err.txt && ok || bad "--host localhost: $(cat err.txt)"
"$bin" serve --model "$dir/nothing" >out.txt 2>err.txt
[ $? -eq 2 ] && [ "$(wc -l <err.txt)" -eq 1 ] && ok || bad "a missing model: $(cat err.txt)"

echo "cli_serve: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
