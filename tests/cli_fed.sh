#!/usr/bin/env bash
# cli_fed.sh — federation end to end, with real processes on loopback: a full `fedllm run`; a client
# whose key is not in the job (refused, and told so); a client killed mid-round (the round
# completes with the rest, the client is marked dropped and rejoins later); the server killed and
# resumed (clients reconnect by themselves, no finished round is lost); an address already in use;
# a job file with several problems (all reported, with lines).
# usage: cli_fed.sh FEDLLM_BINARY SCRATCH_DIR   (from the repository root)
set -u
bin=$1
dir=$2
repo=$PWD
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*" >&2; }
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT

# wait_for SECONDS COMMAND...: polls until the command succeeds
wait_for() {
  local limit=$1
  shift
  local end=$((SECONDS + limit))
  while [ $SECONDS -lt $end ]; do
    "$@" && return 0
    sleep 0.2
  done
  return 1
}

"$bin" init-model --arch llama --preset tiny --out model >/dev/null || bad "init-model"
for k in server alice bob mallory; do "$bin" keygen --out keys/$k >/dev/null || bad "keygen $k"; done
if [ -s keys/alice.pub ] && [ "$(stat -c %a keys/alice.key)" = 600 ]; then ok; else bad "key files"; fi
text=$(sed -e 's/.*"text": *"\([^"]*\)".*/\1/' "$repo/tests/fixtures/psalm23.jsonl" | head -c 400)
for c in alice bob; do
  for i in $(seq 1 12); do printf '{"text": "%s %s %d"}\n' "$c" "$text" "$i"; done >$c.train.jsonl
  for i in 1 2; do printf '{"text": "%s %s"}\n' "$text" "$i"; done >$c.eval.jsonl
done
port=$((17000 + $$ % 2000))

# job NAME PORT MIN_CLIENTS LOCAL_STEPS DEADLINE_S [ALICE_KEY]
job() {
  cat >"$1.yaml" <<EOF
job: $1
model: {path: model}
peft: {method: lora, r: 4, alpha: 8, targets: [attn_q, attn_v]}
train: {rounds: ${7:-2}, local_steps: $4, batch: 2, seq: 32, lr: 0.01}
data: {format: text}
aggregation: {method: fedavg, min_clients: $3, round_deadline_s: $5}
server: {address: "tcp://127.0.0.1:$2", key: keys/server, heartbeat_s: 0.2}
clients:
  - {name: alice, key: ${6:-keys/alice}, train: alice.train.jsonl, eval: alice.eval.jsonl}
  - {name: bob, key: keys/bob, train: bob.train.jsonl, eval: bob.eval.jsonl}
output: runs/$1
EOF
}

# 1. the whole job in one command
job quick $port 2 3 60
if "$bin" run quick.yaml >run.out 2>&1; then ok; else bad "fedllm run: $(tail -5 run.out)"; fi
if [ "$(grep -c '"final_eval_loss":[[:space:]]*[0-9]' runs/quick/summary.json)" -eq 2 ]; then ok; else
  bad "summary.json: $(cat runs/quick/summary.json 2>/dev/null)"; fi
if [ "$(grep -c '"round"' runs/quick/server/metrics.jsonl)" -eq 2 ] &&
   grep -q '"bytes_sent"' runs/quick/alice/metrics.jsonl &&
   grep -q '"eval_perplexity"' runs/quick/alice/metrics.jsonl; then ok; else bad "metrics.jsonl"; fi
# the live view (run.out: not a terminal, a line per change) shows what is true: the server's last
# mean train loss when done, a dash for a count it does not have, never a made-up 0
last=$(tail -1 runs/quick/server/metrics.jsonl | sed 's/.*"train_loss":\([0-9.]*\).*/\1/')
if grep -q "^server  *round 2  *done .* loss $(printf %.4f "$last")\$" run.out &&
   ! grep -q "loss 0\.0000\| 0/0 " run.out && grep -q "^alice  *round 2  *done .* loss [1-9]" run.out; then ok; else
  bad "live view: $(cat run.out)"; fi
# rounds count from 1 in every file a user reads (2 rounds: 1 and 2, never 0)
if grep -q '"round":[[:space:]]*1,' runs/quick/server/metrics.jsonl && grep -q '"round":[[:space:]]*2,' runs/quick/alice/metrics.jsonl &&
   ! grep -q '"round":[[:space:]]*0,' runs/quick/server/metrics.jsonl runs/quick/alice/metrics.jsonl runs/quick/alice/outbox.jsonl runs/quick/server/outbox.jsonl &&
   grep -q "round 1: update from alice" runs/quick/server/log && grep -q "round 2 done" runs/quick/server/log &&
   ! grep -q "round 0" runs/quick/server/log runs/quick/alice/log &&
   grep -q '"rounds_completed":[[:space:]]*2' runs/quick/summary.json &&
   grep -q '"round": 2, "peer": "server"' runs/quick/alice/outbox.jsonl; then ok; else
  bad "rounds not counted from 1: $(cat runs/quick/server/metrics.jsonl) $(grep round runs/quick/server/log | head -3)"; fi
if grep -q '"peer": "server".*"sha256": "[0-9a-f]\{64\}".*"l2_norm"' runs/quick/alice/outbox.jsonl &&
   grep -q '"peer": "bob"' runs/quick/server/outbox.jsonl; then ok; else bad "outbox.jsonl"; fi
if [ -s runs/quick/server/adapter/adapter_config.json ] &&
   "$bin" eval --model model --adapter runs/quick/server/adapter --data alice.eval.jsonl --seq 32 \
     | grep -q perplexity; then ok; else bad "final adapter"; fi

# 1b. a party that fails makes `fedllm run` fail, naming it, while the others finish
sed -e 's/bob.train.jsonl/bad.train.jsonl/; s/min_clients: 2/min_clients: 1/; s/^job: quick/job: partial/; s|runs/quick|runs/partial|' \
  -e "s/:$port\"/:$((port + 5))\"/" quick.yaml >partial.yaml
printf '{"text": "fine"}\nnot json\n' >bad.train.jsonl
"$bin" run partial.yaml >partial.out 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "bob failed" partial.out && grep -q "bad.train.jsonl:2" runs/partial/bob/log &&
   [ -s runs/partial/summary.json ]; then ok; else bad "failed party: rc $rc $(tail -3 partial.out)"; fi

# 2. a key that is not in the job
job stranger $((port + 1)) 1 3 30
sed -e 's|keys/alice|keys/mallory|' stranger.yaml >stranger-client.yaml
"$bin" server stranger.yaml >stranger.server 2>&1 &
pids+=($!)
spid=$!
if timeout 30 "$bin" client stranger-client.yaml --name alice >stranger.client 2>&1; then
  bad "a client with an unlisted key was accepted"
elif grep -q "refused this client's key" stranger.client; then ok; else
  bad "unlisted key: $(tail -2 stranger.client)"; fi
# the server logs the refused key, in one line
mallory=$(cat keys/mallory.pub)
if wait_for 5 grep -qF "its key $mallory is not listed" runs/stranger/server/log &&
   [ "$(grep -cF "refused a connection from 127.0.0.1: its key $mallory" runs/stranger/server/log)" -eq 1 ]; then ok; else
  bad "the denied key is not logged once: $(grep -F "$mallory" runs/stranger/server/log)"; fi
kill -9 $spid 2>/dev/null

# 3. a client killed mid-round: the round completes with alice; bob is dropped, then rejoins
job drop $((port + 2)) 1 1500 20 keys/alice 4
"$bin" server drop.yaml >drop.server 2>&1 &
pids+=($!)
spid=$!
"$bin" client drop.yaml --name alice >drop.alice 2>&1 &
pids+=($!)
"$bin" client drop.yaml --name bob >drop.bob 2>&1 &
pids+=($!)
bpid=$!
if wait_for 30 grep -q '"state": "training"' runs/drop/bob/status.json; then
  kill -9 $bpid
  ok
else bad "bob never trained"; fi
if wait_for 30 grep -q '"dropped":[[:space:]]*1' runs/drop/server/metrics.jsonl; then ok; else
  bad "bob not marked dropped: $(cat runs/drop/server/metrics.jsonl 2>/dev/null)"; fi
"$bin" client drop.yaml --name bob >drop.bob2 2>&1 &
pids+=($!)
if wait_for 90 test -s runs/drop/summary.json && grep -A3 '"bob"' runs/drop/summary.json |
   grep -q '"dropped_rounds":[[:space:]]*[1-9]'; then ok; else bad "drop summary: $(cat runs/drop/summary.json 2>/dev/null)"; fi
if grep -A2 '"bob"' runs/drop/summary.json | grep -q '"rounds":[[:space:]]*[1-9]' &&
   [ "$(grep -c '"final_eval_loss":[[:space:]]*[0-9]' runs/drop/summary.json)" -eq 2 ]; then ok; else
  bad "bob did not rejoin a later round"; fi

# 4. the server killed after round 1, resumed; the clients reconnect by themselves
job resume $((port + 3)) 2 2000 30 keys/alice 3
"$bin" server resume.yaml >resume.server 2>&1 &
spid=$!
pids+=($spid)
"$bin" client resume.yaml --name alice >resume.alice 2>&1 &
pids+=($!)
"$bin" client resume.yaml --name bob >resume.bob 2>&1 &
pids+=($!)
if wait_for 60 grep -q '"round":[[:space:]]*1' runs/resume/server/metrics.jsonl; then
  kill -9 $spid
  ok
else bad "round 1 never finished"; fi
"$bin" server resume.yaml --resume >resume.server2 2>&1 &
pids+=($!)
if wait_for 120 test -s runs/resume/summary.json; then ok; else bad "resumed job did not finish: $(tail -3 resume.server2)"; fi
# rounds count from 1 everywhere: the resumed server starts at round 2 and ends with round 3
if [ "$(grep -c '"round":[[:space:]]*1,' runs/resume/server/metrics.jsonl)" -eq 1 ] &&
   grep -q '"round":[[:space:]]*3,' runs/resume/server/metrics.jsonl && ! grep -q '"round":[[:space:]]*[04],' runs/resume/server/metrics.jsonl &&
   grep -q "3 rounds from round 2" resume.server2 && grep -q "round 3 done" resume.server2 &&
   grep -q '"rounds_completed":[[:space:]]*3' runs/resume/summary.json &&
   [ -s runs/resume/server/checkpoint/global-00003.safetensors ]; then ok; else
  bad "resume rounds: $(cat runs/resume/server/metrics.jsonl) $(grep -h 'rounds from' resume.server2)"; fi

# 4b. differential privacy: client level with a budget that stops the job cleanly before the
# round that would pass it, and a clip (0.001) hundreds of times below the updates' norms (about
# 0.8 here), which the server reports every round and warns about in its log and the live view;
# sample level (DP-SGD) with the noise calibrated from target_epsilon
job dpc $((port + 6)) 2 3 30 keys/alice 5
printf 'privacy: {dp: {level: client, clip: 0.001, noise_multiplier: 1.0, max_epsilon: 8}}\n' >>dpc.yaml
if "$bin" run dpc.yaml >dpc.out 2>&1 && [ "$(grep -c '"epsilon"' runs/dpc/server/metrics.jsonl)" -eq 2 ] &&
   grep -q '"stopped":.*privacy budget' runs/dpc/summary.json && grep -q "privacy budget is spent" runs/dpc/server/log &&
   [ -s runs/dpc/server/adapter/adapter_model.safetensors ]; then ok; else
  bad "client-level DP budget: $(tail -3 dpc.out) $(cat runs/dpc/server/metrics.jsonl 2>/dev/null)"; fi
job dps $((port + 7)) 2 3 30 keys/alice 2
printf 'privacy: {dp: {level: sample, clip: 1.0, target_epsilon: 20, delta: 1.0e-5}}\n' >>dps.yaml
if "$bin" run dps.yaml >dps.out 2>&1 && grep -q "DP: noise multiplier" runs/dps/server/log &&
   awk -F'"epsilon":' 'NF > 1 { split($2, a, ","); if (a[1] + 0 > 20 || a[1] + 0 <= 0) bad = 1; n++ }
     END { exit !(n == 2 && !bad) }' runs/dps/alice/metrics.jsonl; then ok; else
  bad "sample-level DP: $(tail -3 dps.out) $(cat runs/dps/alice/metrics.jsonl 2>/dev/null)"; fi

if awk -F'"clipped_fraction":' 'NF > 1 { split($2, a, ","); if (a[1] != 1) bad = 1; n++ } END { exit !(n == 2 && !bad) }' runs/dpc/server/metrics.jsonl &&
   grep -q '"clip_factor_median":[1-9][0-9][0-9]' runs/dpc/server/metrics.jsonl &&
   grep -q "round 1: DP clip 0.001: 2 of 2 updates clipped" runs/dpc/server/log &&
   [ "$(grep -c 'warning: DP clip 0.001 cuts most updates' runs/dpc/server/log)" -eq 1 ] &&
   grep -q "^server: warning: DP clip 0.001 cuts most updates" dpc.out &&
   grep -q '"name": "update.meta".*"clip_factor":[1-9]' runs/dpc/alice/outbox.jsonl &&
   grep -q "round 1: update norm .*, clipped to the DP clip 0.001" runs/dpc/alice/log; then ok; else
  bad "client-level DP clip report: $(grep -h 'clip' runs/dpc/server/log | head -3) $(tail -1 runs/dpc/server/metrics.jsonl)"; fi

# 4c. secure aggregation: the server sees only masked vectors, and the result is FedAvg's
job sa $((port + 8)) 2 3 30
sed -e 's/^job: sa/job: plain2/; s|runs/sa|runs/plain2|' -e "s/:$((port + 8))\"/:$((port + 9))\"/" sa.yaml >plain2.yaml
printf 'privacy: {secure_aggregation: {max_samples: 1000}}\n' >>sa.yaml
if "$bin" run sa.yaml >sa.out 2>&1 && "$bin" run plain2.yaml >plain2.out 2>&1 &&
   grep -q '"name": "masked"' runs/sa/alice/outbox.jsonl && ! grep -q '"name": "base_model' runs/sa/alice/outbox.jsonl &&
   ! grep -q '"samples"' runs/sa/server/log; then ok; else bad "secure aggregation run: $(tail -3 sa.out)"; fi
a=$("$bin" eval --model model --adapter runs/sa/server/adapter --data alice.eval.jsonl --seq 32 | sed 's/.*"loss": \([0-9.]*\).*/\1/')
b=$("$bin" eval --model model --adapter runs/plain2/server/adapter --data alice.eval.jsonl --seq 32 | sed 's/.*"loss": \([0-9.]*\).*/\1/')
if [ -n "$a" ] && awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-3) }'; then ok; else
  bad "secure aggregation differs from FedAvg: eval loss $a vs $b"; fi

# 4d. secure aggregation with client-level DP: the clients add the noise (distributed), the server
# accounts for it, and fedllm run prints the epsilon spent
job sadp $((port + 10)) 2 3 30 keys/alice 3
printf 'privacy: {secure_aggregation: true, dp: {level: client, clip: 0.5, noise_multiplier: 1.0}}\n' >>sadp.yaml
if "$bin" run sadp.yaml >sadp.out 2>&1 && grep -q "privacy spent: epsilon [0-9]" sadp.out &&
   grep -q "noise added by the clients" sadp.out && [ "$(grep -c '"epsilon"' runs/sadp/server/metrics.jsonl)" -eq 3 ]; then ok; else
  bad "secure aggregation with DP: $(tail -3 sadp.out)"; fi
# the server cannot see the norms under secure aggregation: the clients report their clip factor
# (recorded in their outbox), and with a clip near the norms there is nothing to warn about
if [ "$(grep -c '"clip_reports":2' runs/sadp/server/metrics.jsonl)" -eq 3 ] && grep -q '"clipped_fraction"' runs/sadp/server/metrics.jsonl &&
   [ "$(grep -c '"name": "masked.meta".*"clip_factor"' runs/sadp/bob/outbox.jsonl)" -eq 3 ] &&
   ! grep -q "warning" runs/sadp/server/log sadp.out; then ok; else
  bad "clip reports under secure aggregation: $(tail -1 runs/sadp/server/metrics.jsonl) $(grep -h warning runs/sadp/server/log)"; fi

# 4e. secure aggregation with a client killed mid-round: the survivors' sum still comes out
"$bin" keygen --out keys/carol >/dev/null
cp bob.train.jsonl carol.train.jsonl
job sadrop $((port + 11)) 2 1500 20 keys/alice 3
sed -i -e 's/^  - {name: bob, key: keys\/bob, train: bob.train.jsonl, eval: bob.eval.jsonl}/&\n  - {name: carol, key: keys\/carol, train: carol.train.jsonl}/' sadrop.yaml
printf 'privacy: {secure_aggregation: {max_samples: 1000}}\n' >>sadrop.yaml
"$bin" server sadrop.yaml >sadrop.server 2>&1 &
pids+=($!)
for c in alice bob carol; do
  "$bin" client sadrop.yaml --name $c >sadrop.$c 2>&1 &
  pids+=($!)
  [ $c = carol ] && cpid=$!
done
if wait_for 60 grep -q '"state": "training"' runs/sadrop/carol/status.json; then kill -9 $cpid; ok; else
  bad "carol never trained under secure aggregation"; fi
if wait_for 120 test -s runs/sadrop/summary.json && grep -q "masked sum of 2 of 3" runs/sadrop/server/log &&
   grep -q '"dropped":[[:space:]]*1' runs/sadrop/server/metrics.jsonl; then ok; else
  bad "secure aggregation with a dropout: $(grep -E 'secure|masked|refused' runs/sadrop/server/log | tail -4)"; fi

# 4f. a healthy secure-aggregation run of four clients (threshold 3): each round one unmask arrives
# after the sum is complete; that is expected and dropped quietly, so no log says "refused"
"$bin" keygen --out keys/dave >/dev/null
cp alice.train.jsonl dave.train.jsonl
job sa4 $((port + 12)) 4 3 30 keys/alice 3
sed -i -e 's/^  - {name: bob, key: keys\/bob, train: bob.train.jsonl, eval: bob.eval.jsonl}/&\n  - {name: carol, key: keys\/carol, train: carol.train.jsonl}\n  - {name: dave, key: keys\/dave, train: dave.train.jsonl}/' sa4.yaml
printf 'privacy: {secure_aggregation: {max_samples: 1000}}\n' >>sa4.yaml
if FEDLLM_DEBUG=1 "$bin" run sa4.yaml >sa4.out 2>&1 && [ "$(grep -c '"round"' runs/sa4/server/metrics.jsonl)" -eq 3 ] &&
   ! grep -q "refused" runs/sa4/*/log sa4.out && grep -q "debug: .*unmask for round [1-3] came after" runs/sa4/server/log; then ok; else
  bad "healthy secure aggregation: $(grep -h -E 'refused|debug' runs/sa4/*/log | head -4) $(tail -2 sa4.out)"; fi

# 5. an address already in use, and a job file with several problems
job busy $((port + 4)) 1 3 30
"$bin" server busy.yaml >busy.1 2>&1 &
pids+=($!)
sleep 1
"$bin" server busy.yaml >busy.2 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "address already in use" busy.2; then ok; else bad "address in use: rc $rc $(cat busy.2)"; fi
cat >broken.yaml <<EOF
job: broken
model: {path: model}
train: {rounds: 0, local_step: 3, lr: 0.01}
server: {address: "tcp://127.0.0.1:$port", key: keys/server}
clients:
  - {name: alice, key: keys/alice, train: missing.jsonl}
EOF
"$bin" run broken.yaml >broken.out 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "broken.yaml:3:.*rounds" broken.out && grep -q "broken.yaml:3:.*local_step" broken.out &&
   [ ! -d runs/broken ]; then ok; else bad "broken job: rc $rc $(cat broken.out)"; fi
sed -e 's/rounds: 0, local_step: 3/rounds: 1, local_steps: 3/' broken.yaml >missing.yaml
"$bin" run missing.yaml >missing.out 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "missing.yaml:6:.*missing.jsonl" missing.out && [ ! -d runs/broken ]; then ok; else
  bad "missing data file: rc $rc $(cat missing.out)"; fi

"$bin" client quick.yaml --name carol >carol.out 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "no client named 'carol'" carol.out && [ "$(wc -l <carol.out)" -eq 1 ]; then ok; else
  bad "unknown client name: rc $rc $(cat carol.out)"; fi
"$bin" keygen --out keys/alice >again.out 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "alice.key" again.out; then ok; else bad "keygen over a key: rc $rc $(cat again.out)"; fi

echo "cli_fed: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
