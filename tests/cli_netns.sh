#!/usr/bin/env bash
# cli_netns.sh — a federated job across network namespaces: the server and each client in its own
# namespace, joined by veth links to a bridge in the server's (real addresses, real TCP, no
# loopback). Needs root and `ip netns`; elsewhere it exits 77 (skipped) and says why.
# usage: cli_netns.sh FEDLLM_BINARY SCRATCH_DIR   (from the repository root)
set -u
bin=$1
dir=$2
repo=$PWD
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null; then
  echo "cli_netns: SKIPPED: needs root and iproute2 (ip netns) to build network namespaces"
  exit 77
fi
tag=fl$$
srv=$tag-srv
if ! ip netns add "$srv" 2>/dev/null; then
  echo "cli_netns: SKIPPED: cannot create network namespaces here (ip netns add failed)"
  exit 77
fi
names=(alice bob carol)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  for c in "${names[@]}"; do ip netns del "$tag-$c" 2>/dev/null; done
  ip netns del "$srv" 2>/dev/null
}
trap cleanup EXIT
fail=0
bad() { fail=$((fail + 1)); echo "FAILED: $*" >&2; }

ip -n "$srv" link set lo up
ip -n "$srv" link add br0 type bridge
ip -n "$srv" addr add 10.77.0.1/24 dev br0
ip -n "$srv" link set br0 up
i=2
for c in "${names[@]}"; do
  ns=$tag-$c
  ip netns add "$ns" || { bad "netns $ns"; exit 1; }
  ip -n "$ns" link set lo up
  ip link add "v$tag$i" netns "$srv" type veth peer name eth0 netns "$ns" || { bad "veth $c"; exit 1; }
  ip -n "$srv" link set "v$tag$i" master br0 up
  ip -n "$ns" addr add 10.77.0.$i/24 dev eth0
  ip -n "$ns" link set eth0 up
  i=$((i + 1))
done
# each namespace has only its own loopback: the clients reach 10.77.0.1 over the veth links alone

rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
"$bin" init-model --arch gpt2 --preset tiny --out model >/dev/null
"$bin" keygen --out keys/server >/dev/null
text=$(sed -e 's/.*"text": *"\([^"]*\)".*/\1/' "$repo/tests/fixtures/psalm23.jsonl" | head -c 300)
{
  echo "job: netns"
  echo "model: {path: model}"
  echo "peft: {method: lora, r: 4, alpha: 8, targets: [attn_q, attn_v]}"
  echo "train: {rounds: 2, local_steps: 5, batch: 2, seq: 32, lr: 0.01}"
  echo "aggregation: {method: fedavg, min_clients: 3, round_deadline_s: 60}"
  echo "server: {address: \"tcp://10.77.0.1:7611\", key: keys/server, heartbeat_s: 0.3}"
  echo "clients:"
  for c in "${names[@]}"; do
    "$bin" keygen --out keys/$c >/dev/null
    for k in $(seq 1 10); do printf '{"text": "%s %s %d"}\n' "$c" "$text" "$k"; done >$c.jsonl
    echo "  - {name: $c, key: keys/$c, train: $c.jsonl, eval: $c.jsonl}"
  done
  echo "output: runs/netns"
} >job.yaml
ip netns exec "$srv" "$bin" server job.yaml >server.out 2>&1 &
pids+=($!)
spid=$!
for c in "${names[@]}"; do
  ip netns exec "$tag-$c" "$bin" client job.yaml --name $c >$c.out 2>&1 &
  pids+=($!)
done
if timeout 120 tail --pid=$spid -f /dev/null; wait $spid; then :; else bad "server: $(tail -3 server.out)"; fi
for p in "${pids[@]:1}"; do wait "$p" || bad "a client failed: $(tail -2 ./*.out)"; done
if [ "$(grep -c '"final_eval_loss":[[:space:]]*[0-9]' runs/netns/summary.json 2>/dev/null)" -eq 3 ]; then :; else
  bad "summary: $(cat runs/netns/summary.json 2>/dev/null)"; fi
echo "cli_netns: $((fail == 0 ? 1 : 0)) run with 3 clients in 3 namespaces, $fail failed"
[ "$fail" -eq 0 ]
